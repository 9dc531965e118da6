//! Many workers against one master: simulated workers (in this process,
//! over a few shared HTTP/2 connections) register and heartbeat at 1 Hz;
//! the master's CPU and RSS are sampled from /proc.

use std::path::Path;
use std::time::{Duration, Instant};

use ffleet_proto::v1;
use ffleet_proto::v1::worker_service_client::WorkerServiceClient;
use serde::Serialize;

use crate::cluster::{self, Backend};
use crate::progress::Bar;

#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub backend: String,
    pub workers: usize,
    pub seconds: f64,
    pub heartbeats: u64,
    pub heartbeat_failures: u64,
    /// Master CPU used while they heartbeat, as a share of one core.
    pub master_cpu_cores: f64,
    pub master_rss_bytes: u64,
}

pub async fn run(
    dir: &Path,
    backend: &Backend,
    workers: usize,
    duration: Duration,
    bar: &Bar,
) -> anyhow::Result<Scale> {
    let tag = format!("scale-{}-{workers}", backend.name());
    let run_dir = dir.join(&tag);
    std::fs::create_dir_all(&run_dir)?;
    let database = backend.fresh(&run_dir, &tag.replace('-', "_")).await?;
    let master = cluster::spawn_master(&run_dir, &database, "master").await?;
    let pid = master.pid().unwrap_or(0);
    let mut channels = vec![];
    for _ in 0..8 {
        channels.push(WorkerServiceClient::connect(master.url.clone()).await?);
    }
    let capacity = Some(v1::Resources {
        cpu_millis: 8000,
        memory_bytes: 16 << 30,
        disk_bytes: 100 << 30,
    });

    bar.start(
        &format!("scale: registering {workers} workers"),
        workers as u64,
    );
    let mut ids = vec![];
    for i in 0..workers {
        let mut client = channels[i % channels.len()].clone();
        let reply = client
            .register(v1::RegisterRequest {
                worker_id: String::new(),
                name: format!("sim-{i:04}"),
                capacity,
                labels: Default::default(),
                ffmpeg_version: "simulated".into(),
            })
            .await?
            .into_inner();
        ids.push(reply.worker_id);
        bar.inc(1);
    }
    bar.finish();

    bar.start(
        &format!("scale: {workers} workers heartbeating"),
        duration.as_secs(),
    );
    let cpu_before = cluster::cpu_seconds(pid);
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let mut tasks = vec![];
    for (i, id) in ids.into_iter().enumerate() {
        let mut client = channels[i % channels.len()].clone();
        tasks.push(tokio::spawn(async move {
            // Spread the beats over the second.
            let offset = Duration::from_millis((i * 997 % 1000) as u64);
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + offset,
                Duration::from_secs(1),
            );
            let (mut ok, mut failed) = (0u64, 0u64);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = tokio::time::sleep_until(deadline) => break,
                }
                let beat = client
                    .heartbeat(v1::HeartbeatRequest {
                        worker_id: id.clone(),
                        free: capacity,
                        ..Default::default()
                    })
                    .await;
                if beat.is_ok() {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            (ok, failed)
        }));
    }
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_secs(1)).await;
                bar.inc(1);
            }
        })
    };
    let (mut heartbeats, mut failures) = (0, 0);
    for t in tasks {
        let (ok, failed) = t.await?;
        heartbeats += ok;
        failures += failed;
    }
    let _ = ticker.await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cluster::cpu_seconds(pid) - cpu_before;
    bar.finish();
    Ok(Scale {
        backend: backend.name().into(),
        workers,
        seconds,
        heartbeats,
        heartbeat_failures: failures,
        master_cpu_cores: cpu / seconds,
        master_rss_bytes: cluster::rss_bytes(pid),
    })
}
