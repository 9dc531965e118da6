//! Failure paths: cancellation, timeouts, dead workers, a restarted master,
//! bad input, draining.

use std::time::{Duration, Instant};

use ffleet_core::JobState;
use ffleet_proto::convert::job_state_from_wire;
use ffleet_proto::v1;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::helpers::*;

fn running(job: &v1::Job) -> bool {
    state_of(job) == JobState::Running
}

/// The temp file name a job's FFmpeg writes to (see the worker's executor).
fn temp_name(output: &str, token: u64) -> String {
    format!(".{output}.ffleet-{token}.tmp")
}

#[tokio::test]
async fn cancelling_a_running_job_stops_ffmpeg_and_leaves_no_output() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(MasterConfig::default()).await?;
    cluster.spawn_worker("w1", &[]).await?;
    let mut client = cluster.client().await?;
    // A minute of video upscaled to 1080p: long enough to still be running.
    let job = submit(
        &mut client,
        spec(&clip(60, "320x240"), "cancel.mp4", "h264-1080p"),
    )
    .await?;
    let live = watch_until(&mut client, &job.id, Duration::from_secs(30), |j| {
        running(j) && j.progress.is_some_and(|p| p.out_time_us > 0)
    })
    .await?;
    let temp = temp_name("cancel.mp4", live.lease_token);
    assert!(
        !processes_mentioning(&temp).is_empty(),
        "ffmpeg runs before the cancel"
    );

    let asked = Instant::now();
    client
        .cancel_job(v1::CancelJobRequest { id: job.id.clone() })
        .await?;
    let done = wait_final(&mut client, &job.id, Duration::from_secs(20)).await?;
    let took = asked.elapsed();
    assert_eq!(state_of(&done), JobState::Cancelled, "{done:?}");
    // Within the worker's 5 s grace, plus one progress interval of delivery.
    assert!(took < Duration::from_secs(7), "cancel took {took:?}");
    assert!(
        processes_mentioning(&temp).is_empty(),
        "ffmpeg still running"
    );
    let out = cluster.master.output_root.clone();
    assert!(!out.join("cancel.mp4").exists());
    assert!(!out.join(&temp).exists(), "partial output left behind");
    // Cancelling again is refused: the job is final.
    let again = client
        .cancel_job(v1::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    Ok(())
}

#[tokio::test]
async fn a_job_past_its_timeout_ends_timed_out() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(MasterConfig::default()).await?;
    cluster.spawn_worker("w1", &[]).await?;
    let mut client = cluster.client().await?;
    let mut s = spec(&clip(60, "320x240"), "slow.mp4", "h264-1080p");
    s.timeout_ms = 1_000;
    let job = submit(&mut client, s).await?;
    let done = wait_final(&mut client, &job.id, Duration::from_secs(30)).await?;
    assert_eq!(state_of(&done), JobState::TimedOut, "{done:?}");
    assert_eq!(done.attempt, 1, "a timeout is not retried");
    assert!(done.failure.unwrap().reason.contains("timeout"));
    assert!(!cluster.master.output_root.join("slow.mp4").exists());
    assert!(processes_mentioning(&temp_name("slow.mp4", done.lease_token)).is_empty());
    Ok(())
}

#[tokio::test]
async fn a_killed_worker_loses_its_lease_and_its_late_report_is_refused() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(MasterConfig {
        lease_ttl: "2s",
        ..MasterConfig::default()
    })
    .await?;
    cluster.spawn_worker("doomed", &[]).await?;
    let mut client = cluster.client().await?;
    let job = submit(
        &mut client,
        spec(&clip(20, "320x240"), "survivor.mp4", "h264-480p"),
    )
    .await?;
    let live = watch_until(&mut client, &job.id, Duration::from_secs(30), running).await?;
    let old_token = live.lease_token;

    // The node dies: the worker and its FFmpeg, all at once. (Without
    // per-job cgroups, killing the worker alone would orphan FFmpeg; the
    // process group stands in for the node here.)
    let worker_pid = cluster.workers[0].child.id().expect("worker runs") as i32;
    kill(Pid::from_raw(worker_pid), Signal::SIGKILL)?;
    for pid in processes_mentioning(&temp_name("survivor.mp4", old_token)) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    cluster.workers[0].child.wait().await?;

    cluster.spawn_worker("rescuer", &[]).await?;
    let done = wait_final(&mut client, &job.id, Duration::from_secs(60)).await?;
    assert_eq!(
        state_of(&done),
        JobState::Succeeded,
        "{done:?}\n{}",
        cluster.logs()
    );
    assert_eq!(done.attempt, 2);
    assert_ne!(done.lease_token, old_token);
    let requeue = done.history.iter().find(|t| {
        job_state_from_wire(t.to) == Some(JobState::Queued) && t.reason.contains("lease expired")
    });
    assert!(
        requeue.is_some(),
        "history shows the lease loss: {:?}",
        done.history
    );

    // The dead worker's report arrives late, with the old token: refused,
    // and nothing changes.
    let before = client
        .get_job(v1::GetJobRequest { id: job.id.clone() })
        .await?
        .into_inner();
    let mut workers = cluster.worker_client().await?;
    let late = workers
        .complete_job(v1::CompleteJobRequest {
            lease: Some(v1::LeaseRef {
                job_id: job.id.clone(),
                token: old_token,
            }),
            bandwidth: Some(v1::Bandwidth {
                output_bytes: 1,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition, "{late:?}");
    let late_progress = workers
        .report_progress(v1::ReportProgressRequest {
            lease: Some(v1::LeaseRef {
                job_id: job.id.clone(),
                token: old_token,
            }),
            progress: Some(v1::Progress::default()),
        })
        .await
        .unwrap_err();
    assert_eq!(late_progress.code(), tonic::Code::FailedPrecondition);
    let after = client
        .get_job(v1::GetJobRequest { id: job.id.clone() })
        .await?
        .into_inner();
    assert_eq!(before, after);
    Ok(())
}

#[tokio::test]
async fn a_restarted_master_loses_no_job() -> anyhow::Result<()> {
    let config = MasterConfig::default();
    let mut cluster = Cluster::start(MasterConfig::default()).await?;
    // One job at a time, so some are queued while one runs.
    cluster.spawn_worker("w1", &["--cpu", "1"]).await?;
    let mut client = cluster.client().await?;
    let input = clip(5, "320x240");
    let mut ids = vec![];
    for i in 0..4 {
        ids.push(
            submit(
                &mut client,
                spec(&input, &format!("r/{i}.mp4"), "h264-480p"),
            )
            .await?
            .id,
        );
    }
    watch_until(&mut client, &ids[0], Duration::from_secs(30), running).await?;

    cluster.restart_master(&config).await?;
    let mut client = cluster.client().await?;
    for id in &ids {
        let done = wait_final(&mut client, id, Duration::from_secs(90)).await?;
        assert_eq!(
            state_of(&done),
            JobState::Succeeded,
            "{done:?}\n{}",
            cluster.logs()
        );
    }
    let listed = client
        .list_jobs(v1::ListJobsRequest::default())
        .await?
        .into_inner();
    assert_eq!(listed.jobs.len(), 4);
    Ok(())
}

#[tokio::test]
async fn unreadable_input_fails_at_once_and_is_not_retried() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(MasterConfig::default()).await?;
    cluster.spawn_worker("w1", &[]).await?;
    let mut client = cluster.client().await?;
    let junk = cluster.dir().join("not-video.mp4");
    std::fs::write(&junk, b"this is not a video file")?;
    let job = submit(&mut client, spec(&junk, "junk.mp4", "h264-480p")).await?;
    let done = wait_final(&mut client, &job.id, Duration::from_secs(30)).await?;
    assert_eq!(state_of(&done), JobState::Failed);
    assert_eq!(done.attempt, 1);
    let failure = done.failure.expect("failure recorded");
    assert_eq!(failure.kind, v1::FailureKind::Input as i32);
    assert!(
        !failure.stderr_tail.is_empty(),
        "ffprobe's complaint is kept"
    );

    // A missing file is an input error too.
    let gone = submit(
        &mut client,
        spec(&cluster.dir().join("missing.mp4"), "gone.mp4", "h264-480p"),
    )
    .await?;
    let done = wait_final(&mut client, &gone.id, Duration::from_secs(30)).await?;
    assert_eq!((state_of(&done), done.attempt), (JobState::Failed, 1));

    // Retry puts it back in the queue (it fails the same way again).
    let retried = client
        .retry_job(v1::RetryJobRequest {
            id: gone.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(state_of(&retried), JobState::Queued);
    Ok(())
}

#[tokio::test]
async fn a_draining_worker_finishes_its_job_and_exits_cleanly() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(MasterConfig::default()).await?;
    cluster.spawn_worker("w1", &[]).await?;
    let mut client = cluster.client().await?;
    let job = submit(
        &mut client,
        spec(&clip(10, "320x240"), "drain.mp4", "h264-480p"),
    )
    .await?;
    watch_until(&mut client, &job.id, Duration::from_secs(30), running).await?;
    let queued_after = submit(
        &mut client,
        spec(&clip(1, "160x120"), "later.mp4", "h264-480p"),
    )
    .await?;

    let pid = cluster.workers[0].child.id().expect("worker runs") as i32;
    kill(Pid::from_raw(pid), Signal::SIGTERM)?;
    let exit =
        tokio::time::timeout(Duration::from_secs(60), cluster.workers[0].child.wait()).await??;
    assert!(exit.success(), "worker exit: {exit:?}");
    let done = client
        .get_job(v1::GetJobRequest { id: job.id.clone() })
        .await?
        .into_inner();
    assert_eq!(
        state_of(&done),
        JobState::Succeeded,
        "the running job finished during the drain"
    );
    // Whether the draining worker had already taken the second job or not,
    // it is not lost: it is done or back in the queue.
    let later = client
        .get_job(v1::GetJobRequest {
            id: queued_after.id.clone(),
        })
        .await?
        .into_inner();
    assert!(
        matches!(state_of(&later), JobState::Queued | JobState::Succeeded),
        "{later:?}"
    );
    Ok(())
}
