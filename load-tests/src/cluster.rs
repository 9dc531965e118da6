//! Real processes for the scenarios: masters and workers started from the
//! binaries built beside this one, on 127.0.0.1, with a fresh database each.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use ffleet_proto::v1::job_service_client::JobServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// A binary built beside `ffleet-load` (`cargo build --workspace --bins`).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("ffleet-load has a directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first (cargo build --workspace --bins, same profile)",
            path.display()
        );
    }
    Ok(path)
}

#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    /// An admin URL of a Postgres server; each run makes its own database.
    Postgres(String),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// A fresh, empty database for one run.
    pub async fn fresh(&self, dir: &Path, tag: &str) -> anyhow::Result<String> {
        match self {
            Backend::Sqlite => Ok(format!(
                "sqlite://{}",
                dir.join(format!("{tag}.db")).display()
            )),
            Backend::Postgres(admin) => {
                let name = format!(
                    "ffleet_load_{tag}_{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)?
                        .as_micros()
                );
                let out = Command::new("psql")
                    .args([
                        admin.as_str(),
                        "-q",
                        "-c",
                        &format!("CREATE DATABASE {name}"),
                    ])
                    .output()
                    .await
                    .context("running psql (install postgresql-client)")?;
                if !out.status.success() {
                    bail!("creating {name}: {}", String::from_utf8_lossy(&out.stderr));
                }
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                Ok(format!("{base}/{name}"))
            }
        }
    }
}

pub struct Proc {
    pub child: Child,
    /// gRPC URL (masters) and metrics URL.
    pub url: String,
    pub metrics_url: String,
}

impl Proc {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Starts a master on `database`; returns once it listens.
pub async fn spawn_master(dir: &Path, database: &str, name: &str) -> anyhow::Result<Proc> {
    let out_root = dir.join("out");
    std::fs::create_dir_all(&out_root)?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut child = Command::new(bin("ffleet-master")?)
        .args(["--listen", "127.0.0.1:0", "--database", database])
        .arg("--output-root")
        .arg(&out_root)
        .args(["--metrics-listen", "127.0.0.1:0", "--lease-ttl", "10s"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("spawning ffleet-master")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut next = async || -> anyhow::Result<String> {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("master did not start in 30 s")??
            .context("master exited; see its log")
    };
    let addr = next().await?;
    let metrics = next().await?;
    Ok(Proc {
        child,
        url: format!(
            "http://{}",
            addr.trim_start_matches("ffleet-master listening on ")
        ),
        metrics_url: format!(
            "http://{}/metrics",
            metrics.trim_start_matches("ffleet-master metrics on ")
        ),
    })
}

/// Starts a worker of `masters` with `extra` flags.
pub async fn spawn_worker(
    dir: &Path,
    name: &str,
    masters: &[String],
    extra: &[&str],
) -> anyhow::Result<Proc> {
    let log = std::fs::File::create(dir.join(format!("worker-{name}.log")))?;
    let out = dir.join(format!("worker-{name}.out"));
    let child = Command::new(bin("ffleet-worker")?)
        .args(["--master", &masters.join(","), "--name", name])
        .arg("--work-dir")
        .arg(dir.join(format!("work-{name}")))
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--cgroup-parent",
            "ffleet-load",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("spawning ffleet-worker")?;
    for _ in 0..300 {
        if let Some(line) = std::fs::read_to_string(&out)?
            .lines()
            .find_map(|l| l.strip_prefix("ffleet-worker metrics on "))
        {
            return Ok(Proc {
                child,
                url: String::new(),
                metrics_url: format!("http://{line}/metrics"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("worker {name} did not start; see its log")
}

pub async fn client(url: &str) -> anyhow::Result<JobServiceClient<Channel>> {
    Ok(JobServiceClient::connect(url.to_owned()).await?)
}

/// One value from a Prometheus text page: the sum of the series of
/// `name` whose labels contain `labels` (e.g. `state="succeeded"`).
pub async fn scrape(url: &str, name: &str, labels: &str) -> anyhow::Result<f64> {
    let page = http_get(url).await?;
    Ok(page
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name && series.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum())
}

/// A minimal HTTP/1.1 GET over loopback (the metrics endpoints).
async fn http_get(url: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(
            format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned()))
}

/// Resident memory of a process, from /proc.
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ")".
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}
