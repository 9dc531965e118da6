//! Several masters sharing one Postgres, and the control plane under load.
//! These use Postgres (or SQLite for the single-master baseline) whatever
//! `FFLEET_IT_BACKEND` says.

use std::time::{Duration, Instant};

use ffleet_proto::v1::{self, job_service_client::JobServiceClient};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::Channel;

use crate::helpers::*;

/// A count from the masters' database.
async fn count(cluster: &Cluster, sql: &str) -> anyhow::Result<i64> {
    let store = cluster.store().await?;
    Ok(sqlx::query_scalar(sql).fetch_one(store.pool()).await?)
}

/// Submits `n` jobs, spread over the clients, 8 at a time.
async fn submit_many(
    clients: &[JobServiceClient<Channel>],
    n: usize,
    input: &std::path::Path,
    preset: &str,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let mut client = clients[t % clients.len()].clone();
        let input = input.to_path_buf();
        let preset = preset.to_owned();
        tasks.spawn(async move {
            for i in (t..n).step_by(8) {
                submit(&mut client, spec(&input, &format!("many/{i}.m4a"), &preset)).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

async fn wait_succeeded(cluster: &Cluster, n: i64, limit: Duration) -> anyhow::Result<()> {
    let query = "SELECT COUNT(*) FROM jobs WHERE state = 'succeeded'";
    eventually(limit, || async { Ok(count(cluster, query).await? == n) })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))
}

/// Every job succeeded once, was leased once, and the leases spread over
/// `workers` workers.
async fn assert_exactly_once(cluster: &Cluster, n: i64, workers: i64) -> anyhow::Result<()> {
    let doubled =
        "SELECT COUNT(*) FROM (SELECT job_id FROM leases GROUP BY job_id HAVING COUNT(*) > 1) AS d";
    if count(cluster, doubled).await? > 0 {
        let store = cluster.store().await?;
        let reasons: Vec<String> = sqlx::query_scalar(
            "SELECT reason FROM job_transitions WHERE from_state <> 'queued' AND to_state = 'queued'",
        )
        .fetch_all(store.pool())
        .await?;
        panic!("a job was leased twice; requeues: {reasons:?}");
    }
    assert_eq!(count(cluster, "SELECT COUNT(*) FROM leases").await?, n);
    let successes = "SELECT COUNT(*) FROM job_transitions WHERE to_state = 'succeeded'";
    assert_eq!(count(cluster, successes).await?, n);
    assert_eq!(
        count(cluster, "SELECT COUNT(DISTINCT worker_id) FROM leases").await?,
        workers
    );
    Ok(())
}

/// 2,000 short jobs with `masters` masters and four no-op workers split
/// between them; returns (submit time, submit-to-all-done time).
async fn two_thousand_jobs(backend: Backend, masters: usize) -> anyhow::Result<()> {
    const JOBS: usize = 2_000;
    // The production TTL: a lease that expires under a test's artificial
    // overload is the protocol working, not the double lease hunted here.
    let config = MasterConfig {
        lease_ttl: "15s",
        ..MasterConfig::default()
    };
    let mut cluster = Cluster::start_on(backend, config).await?;
    let mut urls = vec![cluster.master.url.clone()];
    for _ in 1..masters {
        urls.push(cluster.spawn_another_master().await?);
    }
    for w in 0..4 {
        let mine = urls[w % urls.len()].clone();
        let noop = ["--noop-executor", "--cpu", "8", "--max-jobs", "32"];
        cluster
            .spawn_worker_for(&format!("w{w}"), &[mine], &noop)
            .await?;
    }
    let mut clients = vec![];
    for url in &urls {
        clients.push(JobServiceClient::connect(url.clone()).await?);
    }
    let input = cluster.dir().join("in.mp4");
    let started = Instant::now();
    submit_many(&clients, JOBS, &input, "aac").await?;
    let submitted = started.elapsed();
    wait_succeeded(&cluster, JOBS as i64, Duration::from_secs(300)).await?;
    let done = started.elapsed();
    eprintln!(
        "{JOBS} jobs, {backend:?}, {masters} master(s), 4 no-op workers: submitted in {submitted:.2?}, \
         all succeeded {done:.2?} after the first submission ({:.0} lifecycles/s)",
        JOBS as f64 / done.as_secs_f64()
    );
    assert_exactly_once(&cluster, JOBS as i64, 4).await
}

#[tokio::test]
async fn two_thousand_jobs_on_sqlite_run_exactly_once() -> anyhow::Result<()> {
    two_thousand_jobs(Backend::Sqlite, 1).await
}

#[tokio::test]
async fn two_thousand_jobs_on_two_masters_sharing_postgres_run_exactly_once() -> anyhow::Result<()>
{
    two_thousand_jobs(Backend::Postgres, 2).await
}

/// Group commit meets idempotency across masters: 16 clients submit the
/// same 40 keys, each in its own order, half through each master, so the
/// batches of both masters race on the same keys. Each key must make one
/// job, and every client must be told that job's id.
#[tokio::test]
async fn the_same_keys_submitted_through_two_masters_at_once_make_one_job_each()
-> anyhow::Result<()> {
    const KEYS: usize = 40;
    const CLIENTS: usize = 16;
    let mut cluster = Cluster::start_on(Backend::Postgres, MasterConfig::default()).await?;
    let urls = [
        cluster.master.url.clone(),
        cluster.spawn_another_master().await?,
    ];
    let input = cluster.dir().join("in.mp4");
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let mut client = JobServiceClient::connect(urls[c % 2].clone()).await?;
        let input = input.clone();
        tasks.spawn(async move {
            let mut seen = vec![];
            for i in 0..KEYS {
                // A different order per client: forward, backward, rotated.
                let k = if c % 2 == 0 {
                    (i + c) % KEYS
                } else {
                    KEYS - 1 - (i + c) % KEYS
                };
                let request = v1::SubmitJobRequest {
                    spec: Some(spec(&input, &format!("keys/{k}.m4a"), "aac")),
                    idempotency_key: format!("key-{k}"),
                };
                let job = client.submit_job(request).await?.into_inner();
                seen.push((k, job.id));
            }
            Ok::<_, anyhow::Error>(seen)
        });
    }
    let mut ids: std::collections::BTreeMap<usize, std::collections::BTreeSet<String>> =
        Default::default();
    while let Some(done) = tasks.join_next().await {
        for (k, id) in done?? {
            ids.entry(k).or_default().insert(id);
        }
    }
    assert_eq!(ids.len(), KEYS);
    for (k, set) in &ids {
        assert_eq!(set.len(), 1, "key-{k} answered with several jobs: {set:?}");
    }
    assert_eq!(
        count(&cluster, "SELECT COUNT(*) FROM jobs").await?,
        KEYS as i64
    );
    let submitted = "SELECT COUNT(*) FROM job_transitions WHERE reason = 'submitted'";
    assert_eq!(count(&cluster, submitted).await?, KEYS as i64);
    Ok(())
}

#[tokio::test]
async fn killing_one_of_two_masters_loses_no_job() -> anyhow::Result<()> {
    const JOBS: usize = 200;
    let mut cluster = Cluster::start_on(Backend::Postgres, MasterConfig::default()).await?;
    let doomed = cluster.master.url.clone();
    let survivor = cluster.spawn_another_master().await?;
    for (name, order) in [
        ("a1", [&doomed, &survivor]),
        ("a2", [&doomed, &survivor]),
        ("b1", [&survivor, &doomed]),
        ("b2", [&survivor, &doomed]),
    ] {
        let masters = order.map(|m| m.to_owned());
        cluster.spawn_worker_for(name, &masters, &[]).await?;
    }
    let clients = [
        JobServiceClient::connect(doomed.clone()).await?,
        JobServiceClient::connect(survivor.clone()).await?,
    ];
    // Real FFmpeg work (one-second clips to AAC), so the kill lands mid-run.
    submit_many(&clients, JOBS, &clip(1, "160x120"), "aac").await?;
    let query = "SELECT COUNT(*) FROM jobs WHERE state = 'succeeded'";
    eventually(Duration::from_secs(120), || async {
        Ok(count(&cluster, query).await? >= 40)
    })
    .await?;

    let killed_at = ffleet_master::cluster::now_ms();
    kill(
        Pid::from_raw(cluster.master.child.id().expect("master runs") as i32),
        Signal::SIGKILL,
    )?;
    wait_succeeded(&cluster, JOBS as i64, Duration::from_secs(180)).await?;

    let successes = "SELECT COUNT(*) FROM job_transitions WHERE to_state = 'succeeded'";
    assert_eq!(
        count(&cluster, successes).await?,
        JOBS as i64,
        "each job succeeded once"
    );
    let unfinished = "SELECT COUNT(*) FROM jobs WHERE state <> 'succeeded'";
    assert_eq!(count(&cluster, unfinished).await?, 0);
    // The doomed master's workers went on through the survivor.
    let failed_over = format!(
        "SELECT COUNT(*) FROM leases l JOIN workers w ON w.id = l.worker_id \
         WHERE w.name IN ('a1', 'a2') AND l.granted_at_ms > {killed_at}"
    );
    assert!(
        count(&cluster, &failed_over).await? > 0,
        "a1/a2 took no work after the kill\n{}",
        cluster.logs()
    );
    let mut survivor_client = clients[1].clone();
    let workers = survivor_client
        .list_workers(v1::ListWorkersRequest {})
        .await?
        .into_inner();
    assert!(
        workers.workers.iter().all(|w| w.state == "ready"),
        "{workers:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_long_poll_on_one_master_wakes_for_a_job_submitted_to_another() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_on(Backend::Postgres, MasterConfig::default()).await?;
    let other = cluster.spawn_another_master().await?;
    // The only worker polls the other master, which holds its AcquireJobs
    // for 30 s unless told that work arrived.
    cluster.spawn_worker_for("w", &[other], &[]).await?;
    let mut client = cluster.client().await?;
    // Let the worker's long poll settle in before submitting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let submitted = Instant::now();
    let job = submit(&mut client, spec(&clip(1, "160x120"), "woken.m4a", "aac")).await?;
    let leased = watch_until(&mut client, &job.id, Duration::from_secs(10), |j| {
        j.attempt > 0
    })
    .await;
    let waited = submitted.elapsed();
    assert!(
        leased.is_ok(),
        "not leased within 10 s: the other master's poll never woke\n{}",
        cluster.logs()
    );
    eprintln!("cross-master wake: submit to lease in {waited:?}");
    Ok(())
}
