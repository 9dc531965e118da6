//! Submit-to-start latency as a client sees it: from sending SubmitJob to
//! the WatchJob stream showing the job started (running or beyond), on an
//! idle cluster and while other clients flood it with jobs. Workers use
//! the no-op executor, so "start" is the worker's first report.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ffleet_core::JobState;
use ffleet_proto::convert::job_state_from_wire;
use ffleet_proto::v1;
use futures::StreamExt;
use serde::Serialize;

use crate::cluster::{self, Backend};
use crate::progress::Bar;
use crate::scenarios::throughput::NOOP_WORKER;

#[derive(Debug, Clone, Serialize)]
pub struct Distribution {
    pub samples: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Distribution {
    pub fn of(mut samples: Vec<f64>) -> Distribution {
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i]
        };
        Distribution {
            samples: samples.len(),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: samples.last().copied().unwrap_or(0.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub backend: String,
    pub idle: Distribution,
    pub under_load: Distribution,
    /// Jobs per second the background clients pushed meanwhile.
    pub background_jobs_per_sec: f64,
}

fn spec(input: &str, output: String) -> v1::JobSpec {
    v1::JobSpec {
        input: input.to_owned(),
        output,
        preset: "h264-480p".into(),
        ..Default::default()
    }
}

/// One sample: submit, then watch until started.
async fn one(
    client: &mut ffleet_proto::v1::job_service_client::JobServiceClient<tonic::transport::Channel>,
    input: &str,
    output: String,
) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let job = client
        .submit_job(v1::SubmitJobRequest {
            spec: Some(spec(input, output)),
            idempotency_key: String::new(),
        })
        .await?
        .into_inner();
    let mut stream = client
        .watch_job(v1::WatchJobRequest { id: job.id })
        .await?
        .into_inner();
    while let Some(update) = stream.next().await {
        let state = job_state_from_wire(update?.state);
        if matches!(state, Some(s) if s != JobState::Queued && s != JobState::Leased) {
            return Ok(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    anyhow::bail!("watch ended before the job started")
}

/// `samples` samples in a row, under a progress bar named `what`.
async fn sample(
    client: &mut ffleet_proto::v1::job_service_client::JobServiceClient<tonic::transport::Channel>,
    input: &str,
    samples: usize,
    what: &str,
    tag: &str,
    bar: &Bar,
) -> anyhow::Result<Vec<f64>> {
    bar.start(&format!("latency {tag} {what}"), samples as u64);
    let mut taken = Vec::with_capacity(samples);
    for i in 0..samples {
        let output = format!("{}/{i}.mp4", what.replace(' ', "-"));
        taken.push(one(client, input, output).await?);
        bar.inc(1);
    }
    bar.finish();
    Ok(taken)
}

pub async fn run(
    dir: &Path,
    backend: &Backend,
    samples: usize,
    bar: &Bar,
) -> anyhow::Result<Latency> {
    let tag = format!("lat-{}", backend.name());
    let run_dir = dir.join(&tag);
    std::fs::create_dir_all(&run_dir)?;
    let input = run_dir.join("in.mp4");
    std::fs::write(&input, b"-")?;
    let input = input.to_string_lossy().into_owned();
    let database = backend.fresh(&run_dir, &tag.replace('-', "_")).await?;
    let master = cluster::spawn_master(&run_dir, &database, "master").await?;
    let _worker = cluster::spawn_worker(
        &run_dir,
        "w0",
        std::slice::from_ref(&master.url),
        NOOP_WORKER,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut client = cluster::client(&master.url).await?;

    let idle = sample(&mut client, &input, samples, "idle", &tag, bar).await?;

    // Under load: a steady 100 jobs/s from 4 other clients meanwhile, a
    // rate both backends sustain (an unbounded flood would only measure
    // the queue it builds up ahead of each sample).
    let stop = Arc::new(AtomicBool::new(false));
    let mut background = vec![];
    let load_started = Instant::now();
    for c in 0..4 {
        let mut client = client.clone();
        let stop = stop.clone();
        let input = input.clone();
        background.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(40));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let _ = client
                    .submit_job(v1::SubmitJobRequest {
                        spec: Some(spec(&input, format!("bg/{c}-{n}.mp4"))),
                        idempotency_key: String::new(),
                    })
                    .await;
                n += 1;
            }
            n
        }));
    }
    let loaded = sample(&mut client, &input, samples, "under load", &tag, bar).await?;
    stop.store(true, Ordering::Relaxed);
    let mut pushed = 0;
    for b in background {
        pushed += b.await.unwrap_or(0);
    }
    Ok(Latency {
        backend: backend.name().into(),
        idle: Distribution::of(idle),
        under_load: Distribution::of(loaded),
        background_jobs_per_sec: pushed as f64 / load_started.elapsed().as_secs_f64(),
    })
}
