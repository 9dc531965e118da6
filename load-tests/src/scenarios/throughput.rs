//! The control plane alone: workers with the no-op executor complete every
//! job at once, so submissions/s, leases/s and full lifecycles/s measure
//! the master and its database, nothing else.

use std::path::Path;
use std::time::{Duration, Instant};

use ffleet_proto::v1;
use futures::StreamExt;
use serde::Serialize;

use crate::cluster::{self, Backend};
use crate::progress::Bar;

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub backend: String,
    pub masters: usize,
    pub workers: usize,
    pub jobs: usize,
    pub submit_seconds: f64,
    pub submissions_per_sec: f64,
    /// Every job leased at least once (the queue emptied).
    pub leases_per_sec: f64,
    pub lifecycles_per_sec: f64,
    pub master_cpu_seconds: f64,
    pub master_rss_bytes: u64,
}

/// Noop workers: all the CPU and memory they could want, many slots.
pub const NOOP_WORKER: &[&str] = &[
    "--noop-executor",
    "--cpu",
    "64",
    "--memory",
    "256G",
    "--disk",
    "10T",
    "--max-jobs",
    "64",
    "--cgroups",
    "off",
    "--memory-floor",
    "0",
];

pub async fn run(
    dir: &Path,
    backend: &Backend,
    masters: usize,
    workers: usize,
    jobs: usize,
    bar: &Bar,
) -> anyhow::Result<Run> {
    let tag = format!("tp-{}-{masters}m-{workers}w", backend.name());
    let run_dir = dir.join(&tag);
    std::fs::create_dir_all(&run_dir)?;
    let input = run_dir.join("in.mp4");
    std::fs::write(&input, b"not read by the no-op executor")?;
    let database = backend.fresh(&run_dir, &tag.replace('-', "_")).await?;
    let mut master_procs = vec![];
    for i in 0..masters {
        master_procs.push(cluster::spawn_master(&run_dir, &database, &format!("master{i}")).await?);
    }
    let urls: Vec<String> = master_procs.iter().map(|m| m.url.clone()).collect();
    let mut worker_procs = vec![];
    for i in 0..workers {
        worker_procs
            .push(cluster::spawn_worker(&run_dir, &format!("w{i}"), &urls, NOOP_WORKER).await?);
    }
    // Let them register.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let master_pid = master_procs[0].pid().unwrap_or(0);
    let cpu_before = cluster::cpu_seconds(master_pid);

    bar.start(&format!("throughput {tag}"), jobs as u64);
    let mut clients = vec![];
    for url in &urls {
        clients.push(cluster::client(url).await?);
    }
    let started = Instant::now();
    let submitters = 32;
    let input = input.to_string_lossy().into_owned();
    futures::stream::iter(0..jobs)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let input = input.clone();
            async move {
                client
                    .submit_job(v1::SubmitJobRequest {
                        spec: Some(v1::JobSpec {
                            input,
                            output: format!("o/{i}.mp4"),
                            preset: "h264-480p".into(),
                            ..Default::default()
                        }),
                        idempotency_key: String::new(),
                    })
                    .await
            }
        })
        .buffer_unordered(submitters)
        .for_each(|r| {
            if let Err(e) = r {
                eprintln!("submit failed: {e}");
            }
            bar.inc(1);
            async {}
        })
        .await;
    let submitted = started.elapsed();

    let metrics = &master_procs[0].metrics_url;
    let mut all_leased = None;
    loop {
        let queued = cluster::scrape(metrics, "ffleet_jobs", "state=\"queued\"").await?;
        if all_leased.is_none() && queued == 0.0 {
            all_leased = Some(started.elapsed());
        }
        let done = cluster::scrape(metrics, "ffleet_jobs", "state=\"succeeded\"").await?;
        if done as usize >= jobs {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("{tag}: only {done} of {jobs} jobs succeeded in 10 minutes");
        }
        // Each scrape counts the jobs table: poll gently, or the
        // measurement becomes the load.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finished = started.elapsed();
    let all_leased = all_leased.unwrap_or(finished);
    bar.finish();
    let run = Run {
        backend: backend.name().into(),
        masters,
        workers,
        jobs,
        submit_seconds: submitted.as_secs_f64(),
        submissions_per_sec: jobs as f64 / submitted.as_secs_f64(),
        leases_per_sec: jobs as f64 / all_leased.as_secs_f64(),
        lifecycles_per_sec: jobs as f64 / finished.as_secs_f64(),
        master_cpu_seconds: cluster::cpu_seconds(master_pid) - cpu_before,
        master_rss_bytes: cluster::rss_bytes(master_pid),
    };
    drop(worker_procs);
    drop(master_procs);
    Ok(run)
}
