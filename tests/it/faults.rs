//! Failure paths: cancellation, timeouts, dead workers, a restarted master,
//! bad input, draining.

use std::time::{Duration, Instant};

use ffleet_core::JobState;
use ffleet_proto::convert::job_state_from_wire;
use ffleet_proto::v1::{self, job_service_client::JobServiceClient};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::Channel;

use crate::helpers::*;

fn running(job: &v1::Job) -> bool {
    state_of(job) == JobState::Running
}

/// The lease that ended a final job, from its history (a final job holds
/// no lease).
fn ending_token(job: &v1::Job) -> u64 {
    let last = job.history.last().expect("a job has history");
    assert!(
        last.lease_token != 0,
        "the final transition names its lease: {last:?}"
    );
    last.lease_token
}

/// A cluster with a 2 s lease TTL and one worker, running a 20 s transcode
/// to `output`: the job as submitted and as seen running.
async fn running_on(
    worker: &str,
    output: &str,
) -> anyhow::Result<(Cluster, JobServiceClient<Channel>, v1::Job, v1::Job)> {
    let mut cluster = Cluster::start(MasterConfig {
        lease_ttl: "2s",
        ..MasterConfig::default()
    })
    .await?;
    cluster.spawn_worker(worker, &[]).await?;
    let mut client = cluster.client().await?;
    let job = submit(&mut client, spec(&clip(20, "320x240"), output, "h264-480p")).await?;
    let live = watch_until(&mut client, &job.id, Duration::from_secs(30), running).await?;
    Ok((cluster, client, job, live))
}

/// The temp file name a job's FFmpeg writes to (see the worker's executor).
fn temp_name(output: &str, token: u64) -> String {
    format!(".{output}.ffleet-{token}.tmp")
}

#[tokio::test]
async fn cancelling_a_running_job_stops_ffmpeg_and_leaves_no_output() -> anyhow::Result<()> {
    let (cluster, mut client) = Cluster::with_worker().await?;
    // A minute of video upscaled to 1080p: long enough to still be running.
    let job = submit(
        &mut client,
        spec(&clip(60, "320x240"), "cancel.mp4", "h264-1080p"),
    )
    .await?;
    let live = wait_encoding(&mut client, &job.id).await?;
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
    // Within the worker's 5 s maximum grace, plus one progress interval of delivery.
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
    let (cluster, mut client) = Cluster::with_worker().await?;
    let mut s = spec(&clip(60, "320x240"), "slow.mp4", "h264-1080p");
    s.timeout_ms = 1_000;
    let job = submit(&mut client, s).await?;
    let done = wait_final(&mut client, &job.id, Duration::from_secs(30)).await?;
    assert_eq!(state_of(&done), JobState::TimedOut, "{done:?}");
    assert_eq!(done.attempt, 1, "a timeout is not retried");
    assert!(done.failure.as_ref().unwrap().reason.contains("timeout"));
    assert!(!cluster.master.output_root.join("slow.mp4").exists());
    assert!(processes_mentioning(&temp_name("slow.mp4", ending_token(&done))).is_empty());
    Ok(())
}

#[tokio::test]
async fn a_killed_worker_loses_its_lease_and_its_late_report_is_refused() -> anyhow::Result<()> {
    let (mut cluster, mut client, job, live) = running_on("doomed", "survivor.mp4").await?;
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
    assert_ne!(ending_token(&done), old_token);
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
            usage: None,
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

    cluster.restart_master().await?;
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
    let (cluster, mut client) = Cluster::with_worker().await?;
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
    let (mut cluster, mut client) = Cluster::with_worker().await?;
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

#[tokio::test]
async fn a_lost_worker_that_returns_kills_its_stale_run_and_registers_again() -> anyhow::Result<()>
{
    let (mut cluster, mut client, job, live) = running_on("partitioned", "returned.mp4").await?;
    let old_temp = temp_name("returned.mp4", live.lease_token);

    // Freeze the worker (a real stall: it sends nothing, reads nothing, so
    // its FFmpeg soon blocks on the full progress pipe).
    let pid = Pid::from_raw(cluster.workers[0].child.id().expect("worker runs") as i32);
    kill(pid, Signal::SIGSTOP)?;
    cluster.spawn_worker("rescuer", &[]).await?;
    let moved = watch_until(&mut client, &job.id, Duration::from_secs(30), |j| {
        j.lease_token != live.lease_token && j.lease_token != 0
    })
    .await?;
    assert_eq!(moved.attempt, 2);

    kill(pid, Signal::SIGCONT)?;
    // Its next heartbeat or progress report is refused: it kills the stale run
    // and registers again.
    eventually(Duration::from_secs(15), || async {
        Ok(processes_mentioning(&old_temp).is_empty())
    })
    .await?;
    cluster.wait_worker_ready("partitioned").await?;
    let done = wait_final(&mut client, &job.id, Duration::from_secs(60)).await?;
    assert_eq!(
        state_of(&done),
        JobState::Succeeded,
        "{done:?}\n{}",
        cluster.logs()
    );
    assert_eq!(
        ending_token(&done),
        moved.lease_token,
        "the rescuer's lease finished it"
    );
    assert!(!cluster.master.output_root.join(&old_temp).exists());
    Ok(())
}

#[tokio::test]
async fn playlist_inputs_are_refused_before_encoding() -> anyhow::Result<()> {
    let (cluster, mut client) = Cluster::with_worker().await?;
    // An HLS playlist whose segment is a real local file: FFmpeg would follow
    // it, so the probe must refuse it.
    let dir = cluster.dir().join("hls");
    std::fs::create_dir_all(&dir)?;
    let segment = dir.join("seg0.ts");
    let made = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-i"])
        .arg(clip(1, "160x120"))
        .args(["-c", "copy", "-f", "mpegts"])
        .arg(&segment)
        .status()?;
    assert!(made.success());
    let playlist = dir.join("list.m3u8");
    std::fs::write(
        &playlist,
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\nseg0.ts\n#EXT-X-ENDLIST\n",
    )?;
    let job = submit(&mut client, spec(&playlist, "hls.mp4", "h264-480p")).await?;
    let done = wait_final(&mut client, &job.id, Duration::from_secs(30)).await?;
    assert_eq!((state_of(&done), done.attempt), (JobState::Failed, 1));
    let failure = done.failure.unwrap();
    assert_eq!(failure.kind, v1::FailureKind::Input as i32);
    assert!(failure.reason.contains("hls"), "{}", failure.reason);
    assert!(!cluster.master.output_root.join("hls.mp4").exists());
    Ok(())
}

/// The protocol, spoken by hand: a heartbeat the worker sent while full
/// (nothing free) and before its next AcquireJobs must not stand for that
/// call. It once did: the call, which had room, leased nothing, and one
/// of two slots sat idle until the other job ended.
#[tokio::test]
async fn a_heartbeat_from_before_an_acquire_does_not_shrink_its_offer() -> anyhow::Result<()> {
    let cluster = Cluster::start(MasterConfig::default()).await?;
    let mut workers = cluster.worker_client().await?;
    let room = v1::Resources {
        cpu_millis: 2000,
        memory_bytes: 8 << 30,
        disk_bytes: 50 << 30,
    };
    let worker_id = workers
        .register(v1::RegisterRequest {
            name: "by-hand".into(),
            capacity: Some(room),
            ..Default::default()
        })
        .await?
        .into_inner()
        .worker_id;
    let mut client = cluster.client().await?;
    let input = cluster.dir().join("in.mp4");
    let job = submit(&mut client, spec(&input, "by-hand.m4a", "aac")).await?;
    // Full a moment ago, and the next call will be number 7.
    workers
        .heartbeat(v1::HeartbeatRequest {
            worker_id: worker_id.clone(),
            free: Some(v1::Resources::default()),
            acquire_seq: 7,
            ..Default::default()
        })
        .await?;
    let leases = workers
        .acquire_jobs(v1::AcquireJobsRequest {
            worker_id,
            free: Some(room),
            max_jobs: 1,
            wait_ms: 3_000,
            acquire_seq: 7,
        })
        .await?
        .into_inner()
        .leases;
    let leased: Vec<&str> = leases.iter().map(|l| l.job_id.as_str()).collect();
    assert_eq!(
        leased,
        [job.id.as_str()],
        "the call's own offer fits the job"
    );
    Ok(())
}
