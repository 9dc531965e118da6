//! The `ffleet` binary as a user runs it.

use std::process::Output;

use crate::helpers::*;

async fn ffleet(master: &str, args: &[&str]) -> anyhow::Result<Output> {
    Ok(tokio::process::Command::new(bin("ffleet"))
        .arg("--master")
        .arg(master)
        .args(args)
        .output()
        .await?)
}

#[tokio::test]
async fn submit_wait_and_get_print_the_job_with_bandwidth() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(MasterConfig::default()).await?;
    cluster.spawn_worker("w1", &[]).await?;
    let url = cluster.master.url.clone();
    let input = clip(1, "160x120");
    let out = ffleet(
        &url,
        &[
            "submit",
            input.to_str().unwrap(),
            "-o",
            "cli.mp4",
            "--preset",
            "h264-480p",
            "--cpu",
            "0.5",
            "--wait",
            "--format",
            "json",
        ],
    )
    .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["spec"]["resources"]["cpu_millis"], 500);
    assert!(job["bandwidth"]["output_bytes"].as_u64().unwrap() > 0);

    let id = job["id"].as_str().unwrap();
    let got = ffleet(&url, &["get", id, "-o", "json"]).await?;
    let got: serde_json::Value = serde_json::from_slice(&got.stdout)?;
    assert_eq!(got["id"], id);
    assert_eq!(got["history"].as_array().unwrap().len(), 4, "{got:#}");

    let listed = ffleet(&url, &["list", "--state", "succeeded", "-o", "json"]).await?;
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);

    let workers = ffleet(&url, &["workers", "-o", "json"]).await?;
    let workers: serde_json::Value = serde_json::from_slice(&workers.stdout)?;
    assert_eq!(workers["workers"][0]["name"], "w1");
    assert_eq!(workers["workers"][0]["capacity"]["cpu_millis"], 2000);
    Ok(())
}

#[tokio::test]
async fn errors_are_one_line_and_exit_non_zero() -> anyhow::Result<()> {
    let cluster = Cluster::start(MasterConfig::default()).await?;
    let url = cluster.master.url.clone();
    let input = clip(1, "160x120");

    let bad = ffleet(
        &url,
        &["submit", input.to_str().unwrap(), "-o", "../escape.mp4"],
    )
    .await?;
    assert!(!bad.status.success());
    let stderr = String::from_utf8(bad.stderr)?;
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("output:"),
        "{stderr}"
    );

    let unknown = ffleet(&url, &["get", "no-such-job"]).await?;
    assert!(!unknown.status.success());
    assert!(String::from_utf8(unknown.stderr)?.contains("not found"));

    // Port 1 on loopback: nothing listens there.
    let down = ffleet("http://127.0.0.1:1", &["list"]).await?;
    assert!(!down.status.success());
    let stderr = String::from_utf8(down.stderr)?;
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot reach master"), "{stderr}");

    // A job that fails under --wait exits non-zero with its reason.
    let junk = cluster.dir().join("junk.mp4");
    std::fs::write(&junk, b"junk")?;
    let mut cluster = cluster;
    cluster.spawn_worker("w1", &[]).await?;
    let failed = ffleet(
        &url,
        &[
            "submit",
            junk.to_str().unwrap(),
            "-o",
            "junk-out.mp4",
            "--wait",
        ],
    )
    .await?;
    assert!(!failed.status.success());
    let stderr = String::from_utf8(failed.stderr)?;
    assert!(
        stderr.lines().last().unwrap().contains("failed"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn migrate_status_shows_pending_then_applied() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let database = fresh_database(Backend::from_env(), dir.path()).await?;
    let migrate = |action: &'static str| {
        let database = database.clone();
        async move {
            tokio::process::Command::new(bin("ffleet-master"))
                .args(["migrate", action, "--database", &database])
                .output()
                .await
        }
    };
    let before = migrate("status").await?;
    assert!(
        before.status.success(),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );
    let text = String::from_utf8(before.stdout)?;
    assert!(
        text.lines()
            .any(|l| l.starts_with('1') && l.contains("pending") && l.contains("init")),
        "{text}"
    );
    assert!(migrate("up").await?.status.success());
    let after = String::from_utf8(migrate("status").await?.stdout)?;
    assert!(
        after
            .lines()
            .any(|l| l.starts_with('1') && l.contains("applied")),
        "{after}"
    );
    Ok(())
}
