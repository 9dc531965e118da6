//! Worker isolation with real cgroups and real FFmpeg. On a machine without
//! a writable cgroup hierarchy these tests say so and return early.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;

use ffleet_core::JobState;
use ffleet_proto::convert::job_state_from_wire;
use ffleet_proto::v1;
use ffleet_proto::v1::job_service_client::JobServiceClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::Channel;

use crate::helpers::*;

/// Whether job cgroups can be made here; prints why not.
fn cgroups_usable() -> bool {
    // A name of its own: tests run in parallel.
    let name = format!("ffleet-it-probe-{}", uuid::Uuid::now_v7().simple());
    let root = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
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
    // The job's own grace, under the worker's 5 s maximum.
    let mut stuck = spec(&clip(60, "320x240"), "stuck.mp4", "h264-1080p");
    stuck.grace_ms = 2000;
    let job = submit(&mut client, stuck).await?;
    let live = wait_encoding(&mut client, &job.id).await?;
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
    eprintln!(
        "figure: a SIGSTOPped ffmpeg with a 2 s grace was cancelled_forced {took:?} after the cancel"
    );
    assert!(
        took >= Duration::from_secs(2),
        "killed before the job's 2 s grace: {took:?}"
    );
    // The job's grace, not the worker's maximum: at most one heartbeat
    // (1 s here) for the cancel to arrive, plus the 2 s grace.
    assert!(
        took < Duration::from_millis(4500),
        "the job's 2 s grace was not used: {took:?}"
    );
    assert!(
        done.failure.as_ref().unwrap().reason.contains("2s grace"),
        "{done:?}"
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
        // From FFmpeg's start to the recorded success. (Not from the lease:
        // the worker frees a job's reservation once its processes are gone,
        // and may be leased the next job a moment before the master has
        // recorded the last one's success.)
        spans.push((at(JobState::Running), at(JobState::Succeeded)));
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
    let live = wait_encoding(&mut client, &job.id).await?;
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
    // (The master may still list the killed w1 as ready, so the new one
    // can be mid-cleanup here: it removes each cgroup right after killing
    // what is in it.)
    let jobs_cgroup = job_cgroup(&cluster, &job.id, live.lease_token);
    eventually(Duration::from_secs(10), || {
        let gone = !jobs_cgroup.exists();
        async move { Ok(gone) }
    })
    .await
    .with_context(|| format!("leftover cgroup {}", jobs_cgroup.display()))?;
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

/// A small tmpfs mounted by the test, unmounted when dropped. Declare it
/// after the cluster whose files it holds, so it goes first.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// `None`, with the reason printed, where mounting is not allowed.
    fn mount(path: PathBuf, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(&path).ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "ffleet-it"])
            .arg(&path)
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs { path }),
            other => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs at {} ({other:?}); disk guards are not tested here",
                    path.display()
                );
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a worker being killed may still hold a file open.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Where worker w1 of `cluster` puts the cgroup of one run of a job (the
/// memory hierarchy's copy on v1).
fn job_cgroup(cluster: &Cluster, job_id: &str, token: u64) -> PathBuf {
    Path::new(CGROUP_ROOT)
        .join(if cgroup_v2() { "" } else { "memory" })
        .join(cluster.cgroup_parent())
        .join("w1")
        .join(format!("job-{job_id}-{token}"))
}

fn cgroup_v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// A cgroup with a memory limit standing in for a container: the worker
/// runs in its `worker` leaf, jobs under `jobs`, a memory hog in `hog`
/// (leaves only, as cgroup v2 requires). The cluster's Drop removes it.
struct Container {
    rel: String,
}

impl Container {
    fn create(rel: String, memory_limit: u64) -> anyhow::Result<Container> {
        if cgroup_v2() {
            let root = Path::new(CGROUP_ROOT);
            for leaf in ["worker", "jobs", "hog"] {
                std::fs::create_dir_all(root.join(&rel).join(leaf))?;
            }
            // Controllers must be enabled on the way down.
            let mut dir = root.to_path_buf();
            for part in rel.split('/') {
                std::fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory +pids")?;
                dir = dir.join(part);
            }
            std::fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory +pids")?;
            std::fs::write(dir.join("memory.max"), memory_limit.to_string())?;
        } else {
            for hierarchy in ["cpu", "cpuacct", "memory", "pids"] {
                for leaf in ["worker", "jobs", "hog"] {
                    std::fs::create_dir_all(
                        Path::new(CGROUP_ROOT).join(hierarchy).join(&rel).join(leaf),
                    )?;
                }
            }
            std::fs::write(
                Path::new(CGROUP_ROOT)
                    .join("memory")
                    .join(&rel)
                    .join("memory.limit_in_bytes"),
                memory_limit.to_string(),
            )?;
        }
        Ok(Container { rel })
    }

    fn leaf(&self, name: &str) -> String {
        format!("{}/{name}", self.rel)
    }

    /// Memory charged to the container now, page cache included.
    fn usage(&self) -> anyhow::Result<u64> {
        let file = if cgroup_v2() {
            Path::new(CGROUP_ROOT)
                .join(&self.rel)
                .join("memory.current")
        } else {
            Path::new(CGROUP_ROOT)
                .join("memory")
                .join(&self.rel)
                .join("memory.usage_in_bytes")
        };
        Ok(std::fs::read_to_string(file)?.trim().parse()?)
    }
}

async fn job(client: &mut JobServiceClient<Channel>, id: &str) -> anyhow::Result<v1::Job> {
    Ok(client
        .get_job(v1::GetJobRequest { id: id.to_owned() })
        .await?
        .into_inner())
}

/// Waits until the master gives `id` a pending reason containing `needle`.
async fn wait_pending_reason(
    client: &JobServiceClient<Channel>,
    id: &str,
    needle: &str,
) -> anyhow::Result<String> {
    let seen = std::sync::Arc::new(Mutex::new(String::new()));
    let result = eventually(Duration::from_secs(15), || {
        let mut client = client.clone();
        let seen = seen.clone();
        async move {
            let j = job(&mut client, id).await?;
            *seen.lock().unwrap() = j.pending_reason.clone();
            Ok(state_of(&j) == JobState::Queued && j.pending_reason.contains(needle))
        }
    })
    .await;
    let reason = seen.lock().unwrap().clone();
    result.with_context(|| format!("pending reason {reason:?} never mentioned {needle:?}"))?;
    Ok(reason)
}

#[tokio::test]
async fn memory_admission_and_the_floor_guard_follow_the_container_limit() -> anyhow::Result<()> {
    if !cgroups_usable() {
        return Ok(());
    }
    let mut cluster = Cluster::start(MasterConfig::default()).await?;
    const LIMIT: u64 = 1 << 30;
    let container = Container::create(format!("{}/container", cluster.cgroup_parent()), LIMIT)?;
    // The worker advertises 4 GiB; the container holds it to 1 GiB.
    cluster
        .spawn_worker_in_cgroup(
            "w1",
            &container.leaf("worker"),
            &[
                "--memory-floor",
                "300M",
                "--cgroup-parent",
                &container.leaf("jobs"),
            ],
        )
        .await?;
    let mut client = cluster.client().await?;

    // Admission: 1.5 GiB fits the ledger, not the container.
    let mut big = spec(&clip(1, "160x120"), "big.mp4", "h264-480p");
    big.resources = resources(500, 1536 << 20);
    let big = submit(&mut client, big).await?;
    let reason = wait_pending_reason(&client, &big.id, "host memory").await?;
    assert!(reason.contains("w1"), "{reason}");

    // The guard: a job runs, then something else in the container eats
    // memory until less than the floor is left.
    let mut long = spec(&clip(60, "320x240"), "long.mp4", "h264-480p");
    long.resources = resources(1000, 256 << 20);
    let long = submit(&mut client, long).await?;
    let live = wait_encoding(&mut client, &long.id).await?;
    let temp = format!(".long.mp4.ffleet-{}.tmp", live.lease_token);
    let hog_bytes = LIMIT - container.usage()? - (100 << 20);
    let _hog = tokio::process::Command::new(bin("ffleet-worker"))
        .args(["confine", "--cgroup", &container.leaf("hog"), "--"])
        .args([
            "python3",
            "-c",
            &format!("import time\nb = b'x' * {hog_bytes}\ntime.sleep(120)"),
        ])
        .kill_on_drop(true)
        .spawn()?;
    let stopped = watch_until(&mut client, &long.id, Duration::from_secs(30), |j| {
        failure_code(j) == "memory_guard"
    })
    .await
    .with_context(|| cluster.logs())?;
    let reason = &stopped.failure.as_ref().unwrap().reason;
    assert!(reason.contains("memory floor (300.0 MiB)"), "{reason}");
    assert_eq!(
        stopped.failure.as_ref().unwrap().kind,
        v1::FailureKind::Infrastructure as i32,
        "the worker's fault, so the job is retried"
    );
    assert!(
        processes_mentioning(&temp).is_empty(),
        "the stopped job's ffmpeg still runs"
    );
    assert!(
        cluster.workers[0].child.try_wait()?.is_none(),
        "the worker survived\n{}",
        cluster.logs()
    );
    for id in [&big.id, &long.id] {
        let _ = client
            .cancel_job(v1::CancelJobRequest { id: id.clone() })
            .await;
    }
    Ok(())
}

#[tokio::test]
async fn a_full_scratch_disk_fails_jobs_disk_full_and_quarantines_the_worker() -> anyhow::Result<()>
{
    // Outputs and scratch space on one small disk. Declared before the
    // cluster, so the cluster (and its workers) go first.
    let base = tempfile::tempdir()?;
    let Some(small) = Tmpfs::mount(base.path().join("small"), "256k") else {
        return Ok(());
    };
    let out = small.path.join("out");
    let work = small.path.join("work");
    std::fs::create_dir_all(&out)?;
    let mut cluster = Cluster::start(MasterConfig {
        extra: vec!["--output-root".into(), out.display().to_string()],
        ..MasterConfig::default()
    })
    .await?;
    cluster
        .spawn_worker(
            "w1",
            &[
                "--work-dir",
                &work.display().to_string(),
                "--quarantine-after",
                "2",
                "--quarantine-cooldown",
                "60s",
            ],
        )
        .await?;
    let mut client = cluster.client().await?;

    // Admission: the disk the job asks for is not really there.
    let mut roomy = spec(&clip(1, "160x120"), "roomy.mp4", "h264-480p");
    roomy.resources = resources(500, 128 << 20);
    let roomy = submit(&mut client, roomy).await?;
    wait_pending_reason(&client, &roomy.id, "scratch disk").await?;

    // A job that asks for little but writes more than the disk holds.
    let mut filler = spec(&clip(10, "320x240"), "filler.mp4", "h264-1080p");
    filler.resources = Some(v1::Resources {
        cpu_millis: 1000,
        memory_bytes: 512 << 20,
        disk_bytes: 64 << 10,
    });
    filler.max_attempts = 2;
    let filler = submit(&mut client, filler).await?;
    let done = wait_final(&mut client, &filler.id, Duration::from_secs(60)).await?;
    assert_eq!(
        (state_of(&done), failure_code(&done), done.attempt),
        (JobState::Failed, "disk_full".to_owned(), 2),
        "{done:?}\n{}",
        cluster.logs()
    );
    let left: Vec<_> = std::fs::read_dir(&out)?
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "partial output left: {left:?}");
    let scratch: Vec<_> = std::fs::read_dir(work.join("jobs"))?
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(scratch.is_empty(), "scratch dirs left: {scratch:?}");

    // Two worker-side failures in a row: the worker quarantines itself,
    // and says so.
    eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let list = client
                .list_workers(v1::ListWorkersRequest {})
                .await?
                .into_inner();
            Ok(list
                .workers
                .iter()
                .any(|w| w.state == "quarantined" && w.note.contains("disk_full, disk_full")))
        }
    })
    .await
    .with_context(|| cluster.logs())?;
    let reason = wait_pending_reason(&client, &roomy.id, "quarantined").await?;
    assert!(reason.contains("w1"), "{reason}");
    let _ = client
        .cancel_job(v1::CancelJobRequest { id: roomy.id })
        .await;
    Ok(())
}

#[tokio::test]
async fn cancel_during_startup_and_twice_in_a_row_leave_nothing_behind() -> anyhow::Result<()> {
    // An input server that sends a little and then stalls: the job stays
    // in its download, before FFmpeg ever starts.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stall = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut held = vec![];
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let head =
                "HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: 50000000\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&[0u8; 65536]).await;
            held.push(socket);
        }
    });
    let (cluster, mut client) = Cluster::with_worker().await?;
    let scratch_of = |j: &v1::Job| {
        cluster.workers[0]
            .work_dir
            .join("jobs")
            .join(format!("{}-{}", j.id, j.lease_token))
    };

    // During startup.
    let mut slow = spec(Path::new("/unused"), "slow.mp4", "h264-480p");
    slow.input = format!("http://{addr}/slow.mp4");
    let slow = submit(&mut client, slow).await?;
    let leased = watch_until(&mut client, &slow.id, Duration::from_secs(30), |j| {
        state_of(j) == JobState::Leased
    })
    .await?;
    let scratch = scratch_of(&leased);
    eventually(Duration::from_secs(10), || {
        let partial = scratch.join("input");
        async move { Ok(partial.exists()) }
    })
    .await
    .context("the download never started")?;
    client
        .cancel_job(v1::CancelJobRequest {
            id: slow.id.clone(),
        })
        .await?;
    let done = wait_final(&mut client, &slow.id, Duration::from_secs(20)).await?;
    assert_eq!(state_of(&done), JobState::Cancelled, "{done:?}");
    assert!(
        !scratch.exists(),
        "scratch dir with the partial download left"
    );

    // During encoding, twice in a row.
    let twice = submit(
        &mut client,
        spec(&clip(60, "320x240"), "twice.mp4", "h264-1080p"),
    )
    .await?;
    let live = wait_encoding(&mut client, &twice.id).await?;
    let temp = format!(".twice.mp4.ffleet-{}.tmp", live.lease_token);
    let scratch = scratch_of(&live);
    assert!(scratch.exists());
    let cancel = || {
        let mut client = client.clone();
        let id = twice.id.clone();
        async move { client.cancel_job(v1::CancelJobRequest { id }).await }
    };
    let (first, second) = tokio::join!(cancel(), cancel());
    for answer in [first, second] {
        // Accepted, or refused because the job already ended: never lost.
        if let Err(status) = answer {
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");
        }
    }
    let done = wait_final(&mut client, &twice.id, Duration::from_secs(20)).await?;
    assert_eq!(state_of(&done), JobState::Cancelled, "{done:?}");
    let cancellations = done
        .history
        .iter()
        .filter(|t| job_state_from_wire(t.to) == Some(JobState::Cancelled))
        .count();
    assert_eq!(cancellations, 1, "{:?}", done.history);
    assert!(
        processes_mentioning(&temp).is_empty(),
        "ffmpeg left running"
    );
    assert!(!scratch.exists(), "scratch dir left");
    assert!(!cluster.master.output_root.join(&temp).exists());
    let cgroup = job_cgroup(&cluster, &twice.id, live.lease_token);
    assert!(!cgroup.exists(), "{}", cgroup.display());
    stall.abort();
    Ok(())
}
