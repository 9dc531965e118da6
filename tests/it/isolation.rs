//! Worker isolation with real cgroups and real FFmpeg. On a machine without
//! a writable cgroup hierarchy these tests say so and return early.

use std::time::{Duration, Instant};

use ffleet_core::JobState;
use ffleet_proto::convert::job_state_from_wire;
use ffleet_proto::v1;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::helpers::*;

/// Whether job cgroups can be made here; prints why not.
fn cgroups_usable() -> bool {
    // A name of its own: tests run in parallel.
    let name = format!("ffleet-it-probe-{}", uuid::Uuid::now_v7().simple());
    let root = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        std::path::PathBuf::from("/sys/fs/cgroup")
    } else {
        std::path::PathBuf::from("/sys/fs/cgroup/memory")
    };
    let probe = root.join(name);
    let writable = std::fs::create_dir(&probe).is_ok() && std::fs::remove_dir(&probe).is_ok();
    if !writable {
        eprintln!(
            "SKIPPED: no writable cgroup hierarchy on this machine; isolation is not tested here"
        );
    }
    writable
}

fn resources(cpu_millis: u32, memory_bytes: u64) -> Option<v1::Resources> {
    Some(v1::Resources {
        cpu_millis,
        memory_bytes,
        disk_bytes: 1 << 30,
    })
}

fn failure_code(job: &v1::Job) -> String {
    job.failure
        .as_ref()
        .map(|f| f.code.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_job_over_its_memory_limit_is_oom_killed_and_the_worker_goes_on() -> anyhow::Result<()> {
    if !cgroups_usable() {
        return Ok(());
    }
    let (cluster, mut client) = Cluster::with_worker().await?;
    let mut greedy = spec(&clip(10, "320x240"), "greedy.mp4", "h264-1080p");
    greedy.resources = resources(1000, 24 << 20);
    let job = submit(&mut client, greedy).await?;
    let done = wait_final(&mut client, &job.id, Duration::from_secs(60)).await?;
    assert_eq!(
        state_of(&done),
        JobState::Failed,
        "{done:?}\n{}",
        cluster.logs()
    );
    assert_eq!(failure_code(&done), "oom_killed", "{done:?}");
    assert_eq!(
        done.failure.as_ref().unwrap().kind,
        v1::FailureKind::ResourceLimit as i32
    );
    assert_eq!(
        done.attempt, 1,
        "an OOM under the job's own limit is not retried"
    );
    assert!(!cluster.master.output_root.join("greedy.mp4").exists());
    // The worker survived and runs the next job.
    let next = submit(
        &mut client,
        spec(&clip(1, "160x120"), "after.mp4", "h264-480p"),
    )
    .await?;
    let done = wait_final(&mut client, &next.id, Duration::from_secs(60)).await?;
    assert_eq!(state_of(&done), JobState::Succeeded, "{done:?}");
    let usage = done.usage.expect("usage measured from the cgroup");
    assert!(
        usage.cpu_time_ms > 0 && usage.peak_memory_bytes > 0,
        "{usage:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_half_cpu_job_stays_within_its_quota() -> anyhow::Result<()> {
    if !cgroups_usable() {
        return Ok(());
    }
    let (cluster, mut client) = Cluster::with_worker().await?;
    let mut half = spec(&clip(10, "320x240"), "half.mp4", "h264-720p");
    half.resources = resources(500, 1 << 30);
    let job = submit(&mut client, half).await?;
    let done = wait_final(&mut client, &job.id, Duration::from_secs(120)).await?;
    assert_eq!(
        state_of(&done),
        JobState::Succeeded,
        "{done:?}\n{}",
        cluster.logs()
    );
    let usage = done.usage.expect("usage");
    let wall_ms = done.bandwidth.expect("bandwidth").wall_time_ms;
    let share = usage.cpu_time_ms as f64 / wall_ms as f64;
    eprintln!(
        "0.5 CPU job: {} ms CPU over {wall_ms} ms wall = {share:.3} CPU",
        usage.cpu_time_ms
    );
    assert!(share <= 0.55, "used {share:.3} CPU on a 0.5 quota");
    assert!(
        share >= 0.25,
        "a CPU-bound encode should use most of its quota, used {share:.3}"
    );
    Ok(())
}

#[tokio::test]
async fn a_fork_bomb_is_stopped_by_the_pids_limit() -> anyhow::Result<()> {
    if !cgroups_usable() {
        return Ok(());
    }
    let mut cluster = Cluster::start(MasterConfig::default()).await?;
    // An "FFmpeg" that tries to start 64 processes: a fork bomb in miniature.
    let bomb = cluster.dir().join("fork-bomb.sh");
    // Python's fork fails at once when refused (bash would retry for seconds).
    std::fs::write(
        &bomb,
        "#!/usr/bin/env python3\nimport os, sys, time\nif '-version' in sys.argv:\n    \
         print('ffmpeg version fork-bomb'); sys.exit(0)\nfor _ in range(64):\n    \
         try:\n        if os.fork() == 0:\n            time.sleep(30); os._exit(0)\n    \
         except OSError as e:\n        print(f'fork refused: {e}', file=sys.stderr); sys.exit(1)\n",
    )?;
    std::fs::set_permissions(&bomb, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let bomb_arg = bomb.to_string_lossy().into_owned();
    cluster
        .spawn_worker("w1", &["--ffmpeg", &bomb_arg, "--pids-limit", "16"])
        .await?;
    let mut client = cluster.client().await?;
    let job = submit(
        &mut client,
        spec(&clip(1, "160x120"), "bomb.mp4", "h264-480p"),
    )
    .await?;
    let done = wait_final(&mut client, &job.id, Duration::from_secs(60)).await?;
    assert_eq!(
        failure_code(&done),
        "pids_limit",
        "{done:?}\n{}",
        cluster.logs()
    );
    // The bomb's own processes (the worker's command line names the script
    // too, as its --ffmpeg).
    let bomb_processes = format!("python3\0{bomb_arg}");
    assert!(
        processes_mentioning(&bomb_processes).is_empty(),
        "bomb processes left"
    );
    Ok(())
}

#[tokio::test]
async fn ffmpeg_that_ignores_sigterm_is_killed_after_the_grace() -> anyhow::Result<()> {
    if !cgroups_usable() {
        return Ok(());
    }
    let (cluster, mut client) = Cluster::with_worker().await?;
    let job = submit(
        &mut client,
        spec(&clip(60, "320x240"), "stuck.mp4", "h264-1080p"),
    )
    .await?;
    let live = watch_until(&mut client, &job.id, Duration::from_secs(30), |j| {
        state_of(j) == JobState::Running && j.progress.is_some_and(|p| p.out_time_us > 0)
    })
    .await?;
    let temp = format!(".stuck.mp4.ffleet-{}.tmp", live.lease_token);
    // A stopped process cannot act on SIGTERM; only SIGKILL ends it.
    for pid in processes_mentioning(&temp) {
        kill(Pid::from_raw(pid), Signal::SIGSTOP)?;
    }
    let asked = Instant::now();
    client
        .cancel_job(v1::CancelJobRequest { id: job.id.clone() })
        .await?;
    let done = wait_final(&mut client, &job.id, Duration::from_secs(30)).await?;
    let took = asked.elapsed();
    assert_eq!(state_of(&done), JobState::Cancelled);
    assert_eq!(
        failure_code(&done),
        "cancelled_forced",
        "{done:?}\n{}",
        cluster.logs()
    );
    assert!(
        took >= Duration::from_secs(5),
        "killed before the 5 s grace: {took:?}"
    );
    assert!(processes_mentioning(&temp).is_empty());
    Ok(())
}

#[tokio::test]
async fn admission_runs_big_jobs_one_at_a_time_and_says_why_a_job_waits() -> anyhow::Result<()> {
    let (cluster, mut client) = Cluster::with_worker().await?;
    let mut ids = vec![];
    for i in 0..3 {
        let mut s = spec(&clip(5, "320x240"), &format!("big{i}.mp4"), "h264-480p");
        s.resources = resources(1500, 1 << 30);
        ids.push(submit(&mut client, s).await?.id);
    }
    let mut too_big = spec(&clip(1, "160x120"), "huge.mp4", "h264-480p");
    too_big.resources = resources(4000, 1 << 30);
    let huge = submit(&mut client, too_big).await?;

    let mut spans = vec![];
    for id in &ids {
        let done = wait_final(&mut client, id, Duration::from_secs(120)).await?;
        assert_eq!(
            state_of(&done),
            JobState::Succeeded,
            "{done:?}\n{}",
            cluster.logs()
        );
        let at = |state| {
            done.history
                .iter()
                .find(|t| job_state_from_wire(t.to) == Some(state))
                .map(|t| t.at_ms)
                .unwrap()
        };
        spans.push((at(JobState::Leased), at(JobState::Succeeded)));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "1.5-CPU jobs overlapped on a 2-CPU worker: {spans:?}"
        );
    }
    let waiting = client
        .get_job(v1::GetJobRequest {
            id: huge.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (state_of(&waiting), waiting.attempt),
        (JobState::Queued, 0),
        "never leased"
    );
    assert!(
        waiting.pending_reason.contains("cpu 4.00"),
        "{}",
        waiting.pending_reason
    );
    Ok(())
}

#[tokio::test]
async fn a_worker_killed_mid_job_leaves_nothing_behind_after_restart() -> anyhow::Result<()> {
    if !cgroups_usable() {
        return Ok(());
    }
    let (mut cluster, mut client) = Cluster::with_worker().await?;
    let job = submit(
        &mut client,
        spec(&clip(60, "320x240"), "orphan.mp4", "h264-1080p"),
    )
    .await?;
    let live = watch_until(&mut client, &job.id, Duration::from_secs(30), |j| {
        state_of(j) == JobState::Running && j.progress.is_some_and(|p| p.out_time_us > 0)
    })
    .await?;
    let temp = format!(".orphan.mp4.ffleet-{}.tmp", live.lease_token);
    let pid = cluster.workers[0].child.id().expect("worker runs") as i32;
    kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    cluster.workers[0].child.wait().await?;
    assert!(
        !processes_mentioning(&temp).is_empty(),
        "FFmpeg outlives its killed worker"
    );

    // The same worker starts again: it finds its leftovers by its cgroups.
    cluster.spawn_worker("w1", &[]).await?;
    eventually(Duration::from_secs(10), || async {
        Ok(processes_mentioning(&temp).is_empty())
    })
    .await?;
    let jobs_cgroup = std::path::Path::new("/sys/fs/cgroup/memory")
        .join(cluster.cgroup_parent())
        .join("w1")
        .join(format!("job-{}-{}", job.id, live.lease_token));
    assert!(
        !jobs_cgroup.exists(),
        "leftover cgroup {}",
        jobs_cgroup.display()
    );
    let scratch = cluster.workers[1]
        .work_dir
        .join("jobs")
        .join(format!("{}-{}", job.id, live.lease_token));
    assert!(!scratch.exists(), "leftover scratch dir");
    assert!(
        !cluster.master.output_root.join(&temp).exists(),
        "leftover temporary output"
    );
    // Cancel the requeued run so the test ends quickly.
    let _ = client
        .cancel_job(v1::CancelJobRequest { id: job.id.clone() })
        .await;
    Ok(())
}
