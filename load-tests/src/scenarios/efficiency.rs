//! How close the cluster gets to running FFmpeg directly: the same
//! transcodes (the exact argument vector the worker builds) run (a) by
//! FFmpeg at the same parallelism and (b) through a local master and one
//! real worker with cgroups; efficiency = (a) / (b).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ffleet_core::JobState;
use ffleet_core::spec::{SpecPolicy, SubmittedSpec, validate};
use ffleet_proto::convert::job_state_from_wire;
use ffleet_proto::v1;
use futures::StreamExt;
use serde::Serialize;

use crate::cluster::{self, Backend};
use crate::progress::Bar;

#[derive(Debug, Clone, Serialize)]
pub struct Efficiency {
    pub clips: usize,
    pub clip_seconds: u32,
    pub size: String,
    pub preset: String,
    pub parallelism: usize,
    pub direct_seconds: f64,
    pub cluster_seconds: f64,
    /// direct / cluster: 1.0 means no overhead.
    pub efficiency: f64,
    /// Mean per job, from the master's history (ms).
    pub queue_wait_ms: f64,
    /// Leased to running: the worker's start (cgroup, probe, spawn).
    pub start_ms: f64,
    pub run_ms: f64,
    /// The worker's own per-job phases, mean ms: cgroup_setup, probe,
    /// spawn, first_progress, report (ffleet_worker_job_phase_seconds).
    pub worker_phases_ms: Vec<(String, f64)>,
}

/// Makes (once) `n` clips of `seconds` at `size` under `dir`.
pub fn clips(dir: &Path, n: usize, seconds: u32, size: &str) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let master = dir.join(format!("clip-{seconds}s-{size}.mp4"));
    if !master.exists() {
        let status = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-y"])
            .args([
                "-f",
                "lavfi",
                "-i",
                &format!("testsrc2=size={size}:rate=30"),
            ])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
            .args([
                "-t",
                &seconds.to_string(),
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
            ])
            .args(["-c:a", "aac", "-shortest"])
            .arg(&master)
            .status()?;
        anyhow::ensure!(status.success(), "making the clip failed");
    }
    // Distinct files, so neither side reads one from a warmer cache.
    (0..n)
        .map(|i| {
            let copy = dir.join(format!("clip-{seconds}s-{size}-{i}.mp4"));
            if !copy.exists() {
                std::fs::copy(&master, &copy)?;
            }
            Ok(copy)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    dir: &Path,
    clip_dir: &Path,
    n: usize,
    seconds: u32,
    size: &str,
    preset: &str,
    parallelism: usize,
    bar: &Bar,
) -> anyhow::Result<Efficiency> {
    let run_dir = dir.join("efficiency");
    std::fs::create_dir_all(&run_dir)?;
    let inputs = clips(clip_dir, n, seconds, size)?;
    let cpu_millis = 1000;

    // (a) FFmpeg directly, `parallelism` at a time.
    let direct_out = run_dir.join("direct");
    std::fs::create_dir_all(&direct_out)?;
    let policy = SpecPolicy::new(direct_out.clone());
    let mut commands = vec![];
    for (i, input) in inputs.iter().enumerate() {
        let spec = validate(
            SubmittedSpec {
                input: input.to_string_lossy().into_owned(),
                output: format!("{i}.mp4"),
                preset: preset.into(),
                resources: Some(ffleet_core::Resources::new(cpu_millis, 1 << 30, 1 << 30)),
                ..SubmittedSpec::default()
            },
            &policy,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        commands.push(ffleet_core::ffmpeg::build_args(
            &spec,
            &input.to_string_lossy(),
            &spec.output,
        ));
    }
    bar.start("efficiency: ffmpeg directly", n as u64);
    let started = Instant::now();
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(parallelism));
    let mut tasks = vec![];
    for args in commands {
        let permit = semaphore.clone().acquire_owned().await?;
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let status = tokio::process::Command::new("ffmpeg")
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await;
            drop(permit);
            bar.inc(1);
            status
        }));
    }
    for t in tasks {
        anyhow::ensure!(t.await??.success(), "a direct ffmpeg run failed");
    }
    let direct = started.elapsed();
    bar.finish();

    // (b) Through a master and one worker offering `parallelism` cores.
    let database = Backend::Sqlite.fresh(&run_dir, "efficiency").await?;
    let master = cluster::spawn_master(&run_dir, &database, "master").await?;
    let cpu = parallelism.to_string();
    let worker = cluster::spawn_worker(
        &run_dir,
        "w0",
        std::slice::from_ref(&master.url),
        &["--cpu", &cpu, "--memory", "8G", "--disk", "50G"],
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut client = cluster::client(&master.url).await?;
    bar.start("efficiency: through ffleet", n as u64);
    let started = Instant::now();
    let mut ids = vec![];
    for (i, input) in inputs.iter().enumerate() {
        let job = client
            .submit_job(v1::SubmitJobRequest {
                spec: Some(v1::JobSpec {
                    input: input.to_string_lossy().into_owned(),
                    output: format!("eff/{i}.mp4"),
                    preset: preset.into(),
                    resources: Some(v1::Resources {
                        cpu_millis,
                        memory_bytes: 1 << 30,
                        disk_bytes: 1 << 30,
                    }),
                    ..Default::default()
                }),
                idempotency_key: String::new(),
            })
            .await?
            .into_inner();
        ids.push(job.id);
    }
    // Watched, not polled: polling would take CPU from the encodes.
    let mut jobs = vec![];
    for id in &ids {
        let mut updates = client
            .watch_job(v1::WatchJobRequest { id: id.clone() })
            .await?
            .into_inner();
        loop {
            let job = updates
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("watch of {id} ended early"))??;
            match job_state_from_wire(job.state) {
                Some(JobState::Succeeded) => {
                    jobs.push(job);
                    bar.inc(1);
                    break;
                }
                Some(s) if s.is_final() => anyhow::bail!("job {id} ended {s:?}: {:?}", job.failure),
                _ => {}
            }
        }
    }
    let through = started.elapsed();
    bar.finish();
    let mut worker_phases_ms = vec![];
    for phase in ffleet_worker::metrics::JOB_PHASES {
        let label = format!("phase=\"{phase}\"");
        let sum = cluster::scrape(
            &worker.metrics_url,
            "ffleet_worker_job_phase_seconds_sum",
            &label,
        )
        .await?;
        let count = cluster::scrape(
            &worker.metrics_url,
            "ffleet_worker_job_phase_seconds_count",
            &label,
        )
        .await?;
        worker_phases_ms.push((phase.to_string(), 1000.0 * sum / count.max(1.0)));
    }

    let at = |job: &v1::Job, state: JobState| {
        job.history
            .iter()
            .find(|t| job_state_from_wire(t.to) == Some(state))
            .map_or(0, |t| t.at_ms)
    };
    let mean = |f: &dyn Fn(&v1::Job) -> i64| {
        jobs.iter().map(|j| f(j) as f64).sum::<f64>() / jobs.len().max(1) as f64
    };
    Ok(Efficiency {
        clips: n,
        clip_seconds: seconds,
        size: size.into(),
        preset: preset.into(),
        parallelism,
        direct_seconds: direct.as_secs_f64(),
        cluster_seconds: through.as_secs_f64(),
        efficiency: direct.as_secs_f64() / through.as_secs_f64(),
        queue_wait_ms: mean(&|j| at(j, JobState::Leased) - j.created_at_ms),
        start_ms: mean(&|j| at(j, JobState::Running) - at(j, JobState::Leased)),
        run_ms: mean(&|j| at(j, JobState::Succeeded) - at(j, JobState::Running)),
        worker_phases_ms,
    })
}
