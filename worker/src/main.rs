use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ffleet_core::resources::{parse_cpu, parse_size};
use ffleet_telemetry::LogFormat;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;

use ffleet_worker::WorkerOptions;
use ffleet_worker::cgroup::CgroupMode;
use ffleet_worker::executor::CONFINE_ERROR_PREFIX;

/// The ffleet worker: runs FFmpeg for jobs the master leases to it.
#[derive(Parser, Debug)]
#[command(name = "ffleet-worker", version, args_override_self = true)]
struct Args {
    /// A master's gRPC address, e.g. http://127.0.0.1:7700. Repeat it (or
    /// give a comma-separated list) for masters sharing one Postgres; the
    /// worker fails over between them.
    #[arg(
        long = "master",
        env = "FFLEET_MASTER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7700"
    )]
    masters: Vec<String>,
    /// Scratch space for downloads and per-job files.
    #[arg(long, default_value = "ffleet-work")]
    work_dir: PathBuf,
    /// This worker's name in listings (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// CPU to offer, in cores (1.5) or millicores (1500m). Default: all cores.
    #[arg(long, value_parser = parse_cpu)]
    cpu: Option<u32>,
    /// Memory to offer, e.g. 4G. Default: the host's total.
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// Scratch disk to offer, e.g. 20G. Default: free space of --work-dir.
    #[arg(long, value_parser = parse_size)]
    disk: Option<u64>,
    /// A label KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    #[arg(long, default_value = "ffmpeg")]
    ffmpeg: PathBuf,
    #[arg(long, default_value = "ffprobe")]
    ffprobe: PathBuf,
    /// The longest grace between SIGTERM and SIGKILL a job may ask for
    /// (each job sets its own, 10 s by default).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    max_grace: Duration,
    /// On SIGTERM, how long running jobs may finish before they are handed back.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Largest http/https input to download.
    #[arg(long, default_value = "20G", value_parser = parse_size)]
    max_download: u64,
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    download_timeout: Duration,
    /// At most this many jobs at once, whatever fits.
    #[arg(long, default_value_t = 16)]
    max_jobs: u32,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Benchmarks and control-plane tests only: complete every job at once
    /// without running FFmpeg.
    #[arg(long, hide = true)]
    noop_executor: bool,
    /// Confine each job in its own cgroup (CPU quota, memory limit, pids
    /// limit): auto, required or off.
    #[arg(long, value_enum, default_value_t = CgroupMode::Auto)]
    cgroups: CgroupMode,
    /// Where job cgroups live, relative to each hierarchy's root (under a
    /// directory named after the worker).
    #[arg(long, default_value = "ffleet")]
    cgroup_parent: String,
    /// Most processes and threads one job may have (its pids limit).
    #[arg(long, default_value_t = 512)]
    pids_limit: u32,
    /// Host memory to keep free (cgroup-aware): jobs are accepted only into
    /// memory above it, and when the host drops below it anyway the newest
    /// job is stopped. 0 turns the guard off.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    memory_floor: u64,
    /// Stop taking jobs after this many worker-side failures in a row
    /// (disk full, spawn or cgroup failures; not bad input). 0: never.
    #[arg(long, default_value_t = 3)]
    quarantine_after: u32,
    /// How long a quarantine lasts before the worker tries again.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    quarantine_cooldown: Duration,
    /// Address of the Prometheus `/metrics` listener; `off` disables it.
    #[arg(long, env = "FFLEET_METRICS_LISTEN", default_value = "127.0.0.1:7702")]
    metrics_listen: String,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// `ffleet-worker confine --cgroup PATH -- PROGRAM ARGS…`: the trampoline
/// the worker starts FFmpeg through. It joins the job's cgroup, then
/// becomes PROGRAM (exec, same pid), so PROGRAM never runs unconfined.
fn confine(args: &[OsString]) -> ! {
    let fail = |message: String| -> ! {
        eprintln!("{CONFINE_ERROR_PREFIX} {message}");
        std::process::exit(121)
    };
    let (cgroup, program) = match args {
        [flag, cgroup, sep, program @ ..]
            if flag == "--cgroup" && sep == "--" && !program.is_empty() =>
        {
            (cgroup.to_string_lossy().into_owned(), program)
        }
        _ => fail("usage: ffleet-worker confine --cgroup PATH -- PROGRAM ARGS...".into()),
    };
    if let Err(e) = ffleet_worker::cgroup::join(&cgroup) {
        fail(e);
    }
    let argv: Vec<CString> = program
        .iter()
        .map(|a| {
            CString::new(a.as_bytes()).unwrap_or_else(|_| fail("argument with a NUL byte".into()))
        })
        .collect();
    let e = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
    fail(format!("exec {}: {e}", argv[0].to_string_lossy()))
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "confine") {
        confine(&argv[2..]);
    }
    run()
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = ffleet_telemetry::init(args.log_format, "ffleet-worker");
    let shutdown = ffleet_telemetry::shutdown_on_signals();
    let name = args.name.unwrap_or_else(|| {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "worker".into())
    });
    let options = WorkerOptions {
        masters: args.masters.clone(),
        name,
        work_dir: args.work_dir,
        cpu_millis: args.cpu,
        memory_bytes: args.memory,
        disk_bytes: args.disk,
        labels: args.labels.into_iter().collect(),
        ffmpeg: args.ffmpeg,
        ffprobe: args.ffprobe,
        max_grace: args.max_grace,
        drain_timeout: args.drain_timeout,
        max_download_bytes: args.max_download,
        download_timeout: args.download_timeout,
        max_jobs: args.max_jobs.max(1),
        noop_executor: args.noop_executor,
        cgroups: args.cgroups,
        cgroup_parent: args.cgroup_parent,
        pids_limit: args.pids_limit,
        memory_floor: args.memory_floor,
        quarantine_after: args.quarantine_after,
        quarantine_cooldown: args.quarantine_cooldown,
        metrics_listen: ffleet_telemetry::metrics::listen_addr(args.metrics_listen),
    };
    let worker = options
        .build(shutdown)
        .await
        .with_context(|| format!("starting worker for masters {}", args.masters.join(", ")))?;
    if let Some(addr) = worker.metrics_addr() {
        // Scripts and tests read this line to learn the bound port.
        println!("ffleet-worker metrics on {addr}");
    }
    worker.run().await?;
    Ok(())
}
