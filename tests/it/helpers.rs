//! The harness: real `ffleet-master` and `ffleet-worker` processes on
//! 127.0.0.1, a fresh SQLite file per test, clips made with `ffmpeg -f lavfi`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use ffleet_core::JobState;
use ffleet_proto::convert::job_state_from_wire;
use ffleet_proto::v1::{
    self, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// The directory holding the workspace's binaries (target/debug).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/..");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`; scripts/test.sh does)",
        path.display()
    );
    path
}

/// Which database the masters of a test use. `FFLEET_IT_BACKEND=postgres`
/// runs the suite on Postgres; SQLite otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_env() -> Backend {
        match std::env::var("FFLEET_IT_BACKEND").as_deref() {
            Ok("postgres") => Backend::Postgres,
            _ => Backend::Sqlite,
        }
    }
}

/// The test Postgres server's admin URL: `FFLEET_TEST_POSTGRES` (set by
/// scripts/test.sh), or a throwaway server this test run starts with
/// scripts/pg.sh and that stops when the run ends.
pub fn postgres_admin_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("FFLEET_TEST_POSTGRES") {
            return url;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg.sh");
        let dir = std::env::temp_dir().join(format!("ffleet-pg-{}", std::process::id()));
        let out = std::process::Command::new(script)
            .arg("start")
            .arg(&dir)
            .arg(std::process::id().to_string())
            .output()
            .expect("run scripts/pg.sh");
        assert!(
            out.status.success(),
            "starting Postgres: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8 URL")
            .trim()
            .to_owned()
    })
    .clone()
}

/// A database of its own for one test: a SQLite file in `dir`, or a new
/// database on the test Postgres server.
pub async fn fresh_database(backend: Backend, dir: &Path) -> anyhow::Result<String> {
    match backend {
        Backend::Sqlite => Ok(format!("sqlite://{}", dir.join("master.db").display())),
        Backend::Postgres => {
            use sqlx::Connection;
            let admin = postgres_admin_url();
            let name = format!("ffleet_{}", uuid::Uuid::now_v7().simple());
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await?;
            let base = admin
                .rsplit_once('/')
                .map_or(admin.as_str(), |(base, _)| base);
            Ok(format!("{base}/{name}"))
        }
    }
}

pub struct MasterConfig {
    pub lease_ttl: &'static str,
    pub retry_backoff: &'static str,
    pub extra: Vec<String>,
    /// Environment for the cluster's masters and workers alike.
    pub env: Vec<(String, String)>,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            lease_ttl: "3s",
            retry_backoff: "100ms",
            extra: vec![],
            env: vec![],
        }
    }
}

/// A running master process; killed when dropped.
pub struct Master {
    pub child: Child,
    pub addr: String,
    pub url: String,
    /// Its Prometheus endpoint.
    pub metrics_url: String,
    pub database: String,
    pub output_root: PathBuf,
}

/// One test's world: its temp dir, its master (and any more sharing its
/// database), its workers.
pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub master: Master,
    pub other_masters: Vec<Master>,
    pub workers: Vec<Worker>,
    config: MasterConfig,
}

pub struct Worker {
    pub child: Child,
    pub work_dir: PathBuf,
    /// Its Prometheus endpoint.
    pub metrics_url: String,
}

impl Cluster {
    /// A master on the backend `FFLEET_IT_BACKEND` names.
    pub async fn start(config: MasterConfig) -> anyhow::Result<Cluster> {
        Cluster::start_on(Backend::from_env(), config).await
    }

    pub async fn start_on(backend: Backend, config: MasterConfig) -> anyhow::Result<Cluster> {
        let tmp = tempfile::tempdir()?;
        let database = fresh_database(backend, tmp.path()).await?;
        let master = spawn_master(tmp.path(), &config, "127.0.0.1:0", &database, "master").await?;
        Ok(Cluster {
            tmp,
            master,
            other_masters: vec![],
            workers: vec![],
            config,
        })
    }

    /// Another master on the same database (Postgres).
    pub async fn spawn_another_master(&mut self) -> anyhow::Result<String> {
        let name = format!("master{}", self.other_masters.len() + 2);
        let database = self.master.database.clone();
        let master = spawn_master(
            self.tmp.path(),
            &self.config,
            "127.0.0.1:0",
            &database,
            &name,
        )
        .await?;
        let url = master.url.clone();
        self.other_masters.push(master);
        Ok(url)
    }

    /// The common case: default master, one worker `w1`, a client.
    pub async fn with_worker() -> anyhow::Result<(Cluster, JobServiceClient<Channel>)> {
        let mut cluster = Cluster::start(MasterConfig::default()).await?;
        cluster.spawn_worker("w1", &[]).await?;
        let client = cluster.client().await?;
        Ok((cluster, client))
    }

    /// This test's own cgroup parent, so parallel tests' workers (all
    /// named alike) never clean up each other's job cgroups.
    pub fn cgroup_parent(&self) -> String {
        let dir = self
            .tmp
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        format!("ffleet-it/{}", dir.unwrap_or_default())
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Kills the master (SIGKILL) and starts it again on the same address
    /// and database.
    pub async fn restart_master(&mut self) -> anyhow::Result<()> {
        self.master.child.kill().await?;
        let addr = self.master.addr.clone();
        let database = self.master.database.clone();
        self.master =
            spawn_master(self.tmp.path(), &self.config, &addr, &database, "master").await?;
        Ok(())
    }

    /// Starts a worker of the (first) master and waits until it is ready.
    pub async fn spawn_worker(&mut self, name: &str, extra: &[&str]) -> anyhow::Result<usize> {
        let masters = [self.master.url.clone()];
        self.spawn_worker_for(name, &masters, extra).await
    }

    /// Starts a worker that talks to `masters` (in order of preference).
    pub async fn spawn_worker_for(
        &mut self,
        name: &str,
        masters: &[String],
        extra: &[&str],
    ) -> anyhow::Result<usize> {
        self.launch_worker(name, masters, extra, None).await
    }

    /// Starts a worker of the (first) master inside the cgroup at
    /// `cgroup` (relative to the hierarchy roots), as if in a container:
    /// it enters through the worker's own `confine` trampoline.
    pub async fn spawn_worker_in_cgroup(
        &mut self,
        name: &str,
        cgroup: &str,
        extra: &[&str],
    ) -> anyhow::Result<usize> {
        let masters = [self.master.url.clone()];
        self.launch_worker(name, &masters, extra, Some(cgroup))
            .await
    }

    async fn launch_worker(
        &mut self,
        name: &str,
        masters: &[String],
        extra: &[&str],
        cgroup: Option<&str>,
    ) -> anyhow::Result<usize> {
        let work_dir = self.dir().join(format!("work-{name}"));
        let log = std::fs::File::create(self.dir().join(format!("worker-{name}.log")))?;
        let out_path = self.dir().join(format!("worker-{name}.out"));
        let out = std::fs::File::create(&out_path)?;
        let mut command = Command::new(bin("ffleet-worker"));
        if let Some(cgroup) = cgroup {
            command
                .args(["confine", "--cgroup", cgroup, "--"])
                .arg(bin("ffleet-worker"));
        }
        let child = command
            .args(["--master", &masters.join(","), "--name", name])
            .arg("--work-dir")
            .arg(&work_dir)
            .args([
                "--cpu",
                "2",
                "--memory",
                "4G",
                "--disk",
                "20G",
                "--max-grace",
                "5s",
            ])
            .args(["--cgroup-parent", &self.cgroup_parent()])
            .args(extra)
            .env("RUST_LOG", "info,ffleet_worker=debug")
            .args(["--metrics-listen", "127.0.0.1:0"])
            .envs(self.config.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawning ffleet-worker")?;
        // Printed once it is built, before it registers.
        let metrics_line = || {
            let printed = std::fs::read_to_string(&out_path).unwrap_or_default();
            printed
                .lines()
                .find_map(|l| l.strip_prefix("ffleet-worker metrics on "))
                .map(str::to_owned)
        };
        eventually(Duration::from_secs(15), || {
            let found = metrics_line().is_some();
            async move { Ok(found) }
        })
        .await
        .with_context(|| format!("worker {name} printed no metrics address"))?;
        let metrics = metrics_line().unwrap_or_default();
        self.wait_worker_ready(name).await?;
        self.workers.push(Worker {
            child,
            work_dir,
            metrics_url: format!("http://{metrics}/metrics"),
        });
        Ok(self.workers.len() - 1)
    }

    /// Waits until the master lists worker `name` as ready.
    pub async fn wait_worker_ready(&self, name: &str) -> anyhow::Result<()> {
        let client = self.client().await?;
        eventually(Duration::from_secs(15), || {
            let mut client = client.clone();
            async move {
                let workers = client
                    .list_workers(v1::ListWorkersRequest {})
                    .await?
                    .into_inner();
                Ok(workers
                    .workers
                    .iter()
                    .any(|w| w.name == name && w.state == "ready"))
            }
        })
        .await
        .with_context(|| format!("worker {name} is not ready"))
    }

    pub async fn client(&self) -> anyhow::Result<JobServiceClient<Channel>> {
        Ok(JobServiceClient::connect(self.master.url.clone()).await?)
    }

    pub async fn worker_client(&self) -> anyhow::Result<WorkerServiceClient<Channel>> {
        Ok(WorkerServiceClient::connect(self.master.url.clone()).await?)
    }

    /// The master's database, for checking what the API does not show
    /// (the lease history).
    pub async fn store(&self) -> anyhow::Result<ffleet_master::store::SqlStore> {
        let options = ffleet_master::store::DbOptions::new(self.master.database.clone());
        Ok(ffleet_master::store::SqlStore::connect(&options).await?)
    }

    /// The master's and workers' logs, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                out += &format!(
                    "--- {name}\n{}\n",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        out
    }
}

impl Drop for Cluster {
    /// Removes this test's cgroup directories, which workers the test
    /// killed could not.
    fn drop(&mut self) {
        for worker in &mut self.workers {
            let _ = worker.child.start_kill();
        }
        let parent = self.cgroup_parent();
        for hierarchy in ["cpu", "cpuacct", "memory", "pids", ""] {
            remove_cgroup_tree(&Path::new("/sys/fs/cgroup").join(hierarchy).join(&parent));
        }
    }
}

/// Removes a cgroup directory tree, leaves first (cgroup directories go
/// with rmdir, never recursively).
fn remove_cgroup_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            remove_cgroup_tree(&entry.path());
        }
    }
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

async fn spawn_master(
    dir: &Path,
    config: &MasterConfig,
    listen: &str,
    database: &str,
    name: &str,
) -> anyhow::Result<Master> {
    let output_root = dir.join("out");
    std::fs::create_dir_all(&output_root)?;
    let database = database.to_owned();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    let mut child = Command::new(bin("ffleet-master"))
        .args(["--listen", listen, "--database", &database])
        .arg("--output-root")
        .arg(&output_root)
        .args([
            "--lease-ttl",
            config.lease_ttl,
            "--retry-backoff",
            config.retry_backoff,
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(&config.extra)
        .envs(config.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("spawning ffleet-master")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .context("master did not start within 20 s")??
        .context("master exited before listening")?;
    let addr = line
        .strip_prefix("ffleet-master listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_owned();
    let line = lines
        .next_line()
        .await?
        .context("master exited before serving metrics")?;
    let metrics = line
        .strip_prefix("ffleet-master metrics on ")
        .with_context(|| format!("unexpected second line {line:?}"))?;
    Ok(Master {
        child,
        url: format!("http://{addr}"),
        metrics_url: format!("http://{metrics}/metrics"),
        addr,
        database,
        output_root,
    })
}

/// Polls `check` until it returns true or `limit` passes. Only the tests
/// poll; the product never does.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if matches!(check().await, Ok(true)) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("condition not met within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A test clip made once per test run: `seconds` of testsrc at `size`,
/// with a sine tone, as H.264/AAC in MP4.
pub fn clip(seconds: u32, size: &str) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static MADE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("clip dir"));
    let made = MADE.get_or_init(Default::default);
    let mut made = made.lock().expect("clip lock");
    let key = format!("{seconds}s-{size}");
    if let Some(path) = made.get(&key) {
        return path.clone();
    }
    let path = dir.path().join(format!("clip-{key}.mp4"));
    let status = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", &format!("testsrc=size={size}:rate=25")])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-t",
            &seconds.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
            "-shortest",
        ])
        .arg(&path)
        .status()
        .expect("ffmpeg runs (install it: apt-get install ffmpeg)");
    assert!(status.success(), "making the test clip failed");
    made.insert(key, path.clone());
    path
}

/// A job's resource request with 1 GiB of scratch disk.
pub fn resources(cpu_millis: u32, memory_bytes: u64) -> Option<v1::Resources> {
    Some(v1::Resources {
        cpu_millis,
        memory_bytes,
        disk_bytes: 1 << 30,
    })
}

pub fn spec(input: &Path, output: &str, preset: &str) -> v1::JobSpec {
    v1::JobSpec {
        input: input.to_string_lossy().into_owned(),
        output: output.to_owned(),
        preset: preset.to_owned(),
        ..Default::default()
    }
}

pub async fn submit(
    client: &mut JobServiceClient<Channel>,
    spec: v1::JobSpec,
) -> anyhow::Result<v1::Job> {
    let request = v1::SubmitJobRequest {
        spec: Some(spec),
        idempotency_key: String::new(),
    };
    Ok(client.submit_job(request).await?.into_inner())
}

pub fn state_of(job: &v1::Job) -> JobState {
    job_state_from_wire(job.state).expect("a job has a state")
}

/// Follows a job through WatchJob until `done(job)` holds; returns that view.
pub async fn watch_until(
    client: &mut JobServiceClient<Channel>,
    id: &str,
    limit: Duration,
    done: impl Fn(&v1::Job) -> bool,
) -> anyhow::Result<v1::Job> {
    let follow = async {
        let mut stream = client
            .watch_job(v1::WatchJobRequest { id: id.to_owned() })
            .await?
            .into_inner();
        while let Some(job) = stream.message().await? {
            if done(&job) {
                return Ok(job);
            }
        }
        bail!("watch of {id} ended before the condition held")
    };
    tokio::time::timeout(limit, follow)
        .await
        .with_context(|| format!("job {id}: condition not met within {limit:?}"))?
}

/// Waits until FFmpeg is encoding `id`: running, with progress made.
pub async fn wait_encoding(
    client: &mut JobServiceClient<Channel>,
    id: &str,
) -> anyhow::Result<v1::Job> {
    watch_until(client, id, Duration::from_secs(30), |j| {
        state_of(j) == JobState::Running && j.progress.is_some_and(|p| p.out_time_us > 0)
    })
    .await
}

pub async fn wait_final(
    client: &mut JobServiceClient<Channel>,
    id: &str,
    limit: Duration,
) -> anyhow::Result<v1::Job> {
    watch_until(client, id, limit, |j| state_of(j).is_final()).await
}

/// Processes whose command line mentions `needle` (e.g. a job's temp file).
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut pids = vec![];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) && pid != std::process::id() as i32 {
            pids.push(pid);
        }
    }
    pids
}

/// Output height and video codec, from ffprobe.
pub fn probe_video(path: &Path) -> (String, u32) {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,height",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (codec, height) = text.split_once(',').unwrap_or((&text, "0"));
    (codec.to_owned(), height.parse().unwrap_or(0))
}
