//! A long run of mixed real jobs (successes, bad inputs, cancellations)
//! through one master and one worker with cgroups, sampling both
//! services' RSS and open fds, the worker's zombies and the database size.
//! Pass criteria are checked at the end.

use std::path::Path;
use std::time::{Duration, Instant};

use ffleet_core::JobState;
use ffleet_proto::convert::job_state_from_wire;
use ffleet_proto::v1;
use serde::Serialize;

use crate::cluster::{self, Backend};
use crate::progress::Bar;
use crate::scenarios::efficiency::clips;

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at_seconds: f64,
    pub master_rss_bytes: u64,
    pub worker_rss_bytes: u64,
    pub master_fds: usize,
    pub worker_fds: usize,
    pub zombies: f64,
    pub db_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Soak {
    pub seconds: f64,
    pub submitted: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub cancelled: usize,
    pub lost: usize,
    pub master_rss_growth_bytes: i64,
    pub worker_rss_growth_bytes: i64,
    pub max_zombies: f64,
    pub services_alive: bool,
    pub samples: Vec<Sample>,
    pub passed: bool,
    pub verdicts: Vec<String>,
}

const RSS_GROWTH_LIMIT: i64 = 200 << 20;

pub async fn run(
    dir: &Path,
    clip_dir: &Path,
    duration: Duration,
    bar: &Bar,
) -> anyhow::Result<Soak> {
    let run_dir = dir.join("soak");
    std::fs::create_dir_all(&run_dir)?;
    let clip = clips(clip_dir, 1, 2, "320x240")?.remove(0);
    let long = clips(clip_dir, 1, 60, "320x240")?.remove(0);
    let database = Backend::Sqlite.fresh(&run_dir, "soak").await?;
    let db_file = run_dir.join("soak.db");
    let mut master = cluster::spawn_master(&run_dir, &database, "master").await?;
    let mut worker = cluster::spawn_worker(
        &run_dir,
        "w0",
        std::slice::from_ref(&master.url),
        &[
            "--cpu",
            "2",
            "--memory",
            "4G",
            "--disk",
            "20G",
            "--max-grace",
            "5s",
        ],
    )
    .await?;
    let (mpid, wpid) = (master.pid().unwrap_or(0), worker.pid().unwrap_or(0));
    let mut client = cluster::client(&master.url).await?;
    let spec = |input: &Path, output: String| v1::JobSpec {
        input: input.to_string_lossy().into_owned(),
        output,
        preset: "h264-480p".into(),
        resources: Some(v1::Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            disk_bytes: 1 << 30,
        }),
        ..Default::default()
    };

    bar.start("soak", duration.as_secs());
    let started = Instant::now();
    let mut ids = vec![];
    let mut samples = vec![];
    let mut round = 0usize;
    while started.elapsed() < duration {
        let mut submit = async |s: v1::JobSpec| -> anyhow::Result<String> {
            Ok(client
                .submit_job(v1::SubmitJobRequest {
                    spec: Some(s),
                    idempotency_key: String::new(),
                })
                .await?
                .into_inner()
                .id)
        };
        for k in 0..2 {
            ids.push(submit(spec(&clip, format!("soak/ok-{round}-{k}.mp4"))).await?);
        }
        ids.push(
            submit(spec(
                Path::new("/nonexistent.mp4"),
                format!("soak/bad-{round}.mp4"),
            ))
            .await?,
        );
        let doomed = submit(spec(&long, format!("soak/cancel-{round}.mp4"))).await?;
        ids.push(doomed.clone());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = client.cancel_job(v1::CancelJobRequest { id: doomed }).await;
        if round.is_multiple_of(3) {
            let zombies =
                cluster::scrape(&worker.metrics_url, "ffleet_worker_zombie_processes", "")
                    .await
                    .unwrap_or(0.0);
            samples.push(Sample {
                at_seconds: started.elapsed().as_secs_f64(),
                master_rss_bytes: cluster::rss_bytes(mpid),
                worker_rss_bytes: cluster::rss_bytes(wpid),
                master_fds: cluster::open_fds(mpid),
                worker_fds: cluster::open_fds(wpid),
                zombies,
                db_bytes: std::fs::metadata(&db_file).map_or(0, |m| m.len()),
            });
        }
        round += 1;
        bar.set(started.elapsed().as_secs());
    }
    bar.finish();

    // Every job must end: none may be lost.
    let settle = Instant::now() + Duration::from_secs(180);
    let (mut succeeded, mut failed, mut cancelled, mut lost) = (0, 0, 0, 0);
    for id in &ids {
        loop {
            let job = client
                .get_job(v1::GetJobRequest { id: id.clone() })
                .await?
                .into_inner();
            match job_state_from_wire(job.state) {
                Some(JobState::Succeeded) => succeeded += 1,
                Some(JobState::Cancelled) => cancelled += 1,
                Some(s) if s.is_final() => failed += 1,
                _ if Instant::now() < settle => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                _ => lost += 1,
            }
            break;
        }
    }
    let services_alive = master.child.try_wait()?.is_none() && worker.child.try_wait()?.is_none();
    let growth = |f: &dyn Fn(&Sample) -> u64| {
        let first = samples.first().map_or(0, f) as i64;
        samples.iter().map(|s| f(s) as i64).max().unwrap_or(first) - first
    };
    let master_growth = growth(&|s| s.master_rss_bytes);
    let worker_growth = growth(&|s| s.worker_rss_bytes);
    let max_zombies = samples.iter().map(|s| s.zombies).fold(0.0, f64::max);
    let checks = [
        (
            master_growth <= RSS_GROWTH_LIMIT,
            format!("master RSS growth {} MiB <= 200 MiB", master_growth >> 20),
        ),
        (
            worker_growth <= RSS_GROWTH_LIMIT,
            format!("worker RSS growth {} MiB <= 200 MiB", worker_growth >> 20),
        ),
        (
            max_zombies == 0.0,
            format!("zombies: at most {max_zombies} (want 0)"),
        ),
        (
            services_alive,
            format!("master and worker alive at the end: {services_alive}"),
        ),
        (
            lost == 0,
            format!("lost jobs: {lost} of {} (want 0)", ids.len()),
        ),
    ];
    let passed = checks.iter().all(|(ok, _)| *ok);
    let verdicts = checks
        .iter()
        .map(|(ok, text)| format!("{} {text}", if *ok { "PASS" } else { "FAIL" }))
        .collect();
    Ok(Soak {
        seconds: started.elapsed().as_secs_f64(),
        submitted: ids.len(),
        succeeded,
        failed,
        cancelled,
        lost,
        master_rss_growth_bytes: master_growth,
        worker_rss_growth_bytes: worker_growth,
        max_zombies,
        services_alive,
        samples,
        passed,
        verdicts,
    })
}
