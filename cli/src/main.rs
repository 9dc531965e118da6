//! `ffleet`: the command line for an ffleet cluster. Every failure prints
//! one line starting with `error:` and exits non-zero.

mod render;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ffleet_core::JobState;
use ffleet_core::resources::{parse_cpu, parse_size};
use ffleet_core::spec::{InputSource, classify_input};
use ffleet_proto::convert::job_state_from_wire;
use ffleet_proto::v1::{self, job_service_client::JobServiceClient};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug)]
#[command(
    name = "ffleet",
    version,
    about = "Submit and follow transcodes on an ffleet cluster"
)]
struct Cli {
    /// The master's address.
    #[arg(
        long,
        global = true,
        env = "FFLEET_MASTER",
        default_value = "http://127.0.0.1:7700"
    )]
    master: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Submit a transcode.
    Submit(Box<SubmitArgs>),
    /// Show one job: state, progress, failure, bandwidth, history.
    Get {
        id: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        format: Format,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (queued, leased, running, succeeded, failed, cancelled, timed_out).
        #[arg(long, value_parser = parse_state)]
        state: Option<JobState>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue from a previous page.
        #[arg(long)]
        page_token: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        format: Format,
    },
    /// Follow a job with a progress bar until it ends.
    Watch { id: String },
    /// Cancel a job (a running one is stopped gracefully).
    Cancel {
        id: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        format: Format,
    },
    /// Run a failed, cancelled or timed-out job again.
    Retry {
        id: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        format: Format,
    },
    /// List workers and what they run.
    Workers {
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(clap::Args, Debug)]
struct SubmitArgs {
    /// An input file, or an http/https URL.
    input: String,
    /// The output path, inside the master's output root.
    #[arg(short = 'o', long = "output")]
    output: String,
    /// h264-480p, h264-720p, h264-1080p, hevc-1080p, aac or remux.
    #[arg(long, default_value = "h264-720p")]
    preset: String,
    #[arg(long)]
    crf: Option<u32>,
    /// Video bitrate, e.g. 2500k or 4M (bits/s).
    #[arg(long, value_parser = parse_bitrate)]
    video_bitrate: Option<u64>,
    /// Output height in pixels; width keeps the aspect ratio.
    #[arg(long)]
    height: Option<u32>,
    /// Audio bitrate, e.g. 128k.
    #[arg(long, value_parser = parse_bitrate)]
    audio_bitrate: Option<u64>,
    /// mp4, mkv, mov, webm, m4a or ts.
    #[arg(long)]
    container: Option<String>,
    /// CPU to reserve, in cores (1.5) or millicores (1500m).
    #[arg(long, value_parser = parse_cpu)]
    cpu: Option<u32>,
    /// Memory to reserve, e.g. 512M.
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// Scratch disk to reserve, e.g. 2G.
    #[arg(long, value_parser = parse_size)]
    disk: Option<u64>,
    /// e.g. 90s, 10m.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL when the job is cancelled or times out
    /// (default 10s; the worker caps it at its --max-grace).
    #[arg(long, value_parser = humantime::parse_duration)]
    grace: Option<Duration>,
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Resubmitting with the same key returns the same job.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// A label KEY=VALUE (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Follow the job and exit non-zero unless it succeeds.
    #[arg(long)]
    wait: bool,
    /// How to print the submitted job.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::parse(s).ok_or_else(|| {
        format!(
            "unknown state {s:?}; one of {}",
            JobState::ALL.map(JobState::as_str).join(", ")
        )
    })
}

/// Bits per second: decimal units, as bitrates are quoted.
fn parse_bitrate(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let (number, multiplier) = match lower.strip_suffix('k') {
        Some(n) => (n, 1e3),
        None => match lower.strip_suffix('m') {
            Some(n) => (n, 1e6),
            None => (lower.as_str(), 1.0),
        },
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid bitrate {s:?}: e.g. 2500k or 4M"))?;
    if value <= 0.0 || !value.is_finite() {
        return Err(format!("invalid bitrate {s:?}: must be positive"));
    }
    Ok((value * multiplier).round() as u64)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {}", render::one_line(&e));
        std::process::exit(1);
    }
}

async fn connect(master: &str) -> anyhow::Result<JobServiceClient<Channel>> {
    let url = ffleet_proto::master_url(master);
    let channel = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid master address {master:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach master at {url}: {}",
                render::transport_cause(&e)
            )
        })?;
    Ok(JobServiceClient::new(channel))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut client = connect(&cli.master).await?;
    match cli.command {
        Command::Submit(args) => submit(&mut client, *args).await,
        Command::Get { id, format } => {
            let job = client
                .get_job(v1::GetJobRequest { id })
                .await
                .map_err(render::status)?
                .into_inner();
            render::job(&job, format == Format::Json);
            Ok(())
        }
        Command::List {
            state,
            limit,
            page_token,
            format,
        } => {
            let request = v1::ListJobsRequest {
                state: state.map_or(0, |s| v1::JobState::from(s) as i32),
                page_size: limit,
                page_token: page_token.unwrap_or_default(),
            };
            let page = client
                .list_jobs(request)
                .await
                .map_err(render::status)?
                .into_inner();
            render::job_list(&page, format == Format::Json);
            Ok(())
        }
        Command::Watch { id } => {
            let job = render::watch(&mut client, &id).await?;
            finished_ok(&job)
        }
        Command::Cancel { id, format } => {
            let job = client
                .cancel_job(v1::CancelJobRequest { id })
                .await
                .map_err(render::status)?
                .into_inner();
            render::job_brief(&job, format == Format::Json);
            Ok(())
        }
        Command::Retry { id, format } => {
            let job = client
                .retry_job(v1::RetryJobRequest { id })
                .await
                .map_err(render::status)?
                .into_inner();
            render::job_brief(&job, format == Format::Json);
            Ok(())
        }
        Command::Workers { format } => {
            let workers = client
                .list_workers(v1::ListWorkersRequest {})
                .await
                .map_err(render::status)?
                .into_inner();
            render::workers(&workers, format == Format::Json);
            Ok(())
        }
    }
}

async fn submit(client: &mut JobServiceClient<Channel>, args: SubmitArgs) -> anyhow::Result<()> {
    // Relative local inputs mean "here": the master needs absolute paths.
    let input = match classify_input(&args.input) {
        Err(_) if !args.input.contains(':') => std::path::absolute(Path::new(&args.input))
            .with_context(|| format!("resolving input {:?}", args.input))?
            .to_string_lossy()
            .into_owned(),
        Ok(InputSource::Local(p)) => p.to_string_lossy().into_owned(),
        _ => args.input.clone(),
    };
    let mut labels = HashMap::new();
    for label in &args.labels {
        let Some((k, v)) = label.split_once('=') else {
            bail!("invalid label {label:?}: expected KEY=VALUE");
        };
        labels.insert(k.to_owned(), v.to_owned());
    }
    let resources = match (args.cpu, args.memory, args.disk) {
        (None, None, None) => None,
        (cpu, memory, disk) => {
            // Fill unspecified axes from the preset's defaults.
            let defaults = ffleet_core::Preset::parse(&args.preset)
                .map(|p| p.default_resources())
                .unwrap_or_default();
            Some(v1::Resources {
                cpu_millis: cpu.unwrap_or(defaults.cpu_millis),
                memory_bytes: memory.unwrap_or(defaults.memory_bytes),
                disk_bytes: disk.unwrap_or(defaults.disk_bytes),
            })
        }
    };
    let spec = v1::JobSpec {
        input,
        output: args.output,
        preset: args.preset,
        overrides: Some(v1::Overrides {
            crf: args.crf,
            video_bitrate: args.video_bitrate,
            height: args.height,
            audio_bitrate: args.audio_bitrate,
            container: args.container,
        }),
        resources,
        timeout_ms: args.timeout.map_or(0, |t| t.as_millis() as u64),
        grace_ms: args.grace.map_or(0, |g| (g.as_millis() as u64).max(1)),
        priority: args.priority,
        max_attempts: args.max_attempts.unwrap_or(0),
        labels,
    };
    let request = v1::SubmitJobRequest {
        spec: Some(spec),
        idempotency_key: args.idempotency_key.unwrap_or_default(),
    };
    let job = client
        .submit_job(request)
        .await
        .map_err(render::status)?
        .into_inner();
    if !args.wait {
        render::job_brief(&job, args.format == Format::Json);
        return Ok(());
    }
    if args.format == Format::Table {
        eprintln!("submitted {}", job.id);
    }
    let job = render::watch(client, &job.id).await?;
    if args.format == Format::Json {
        render::job(&job, true);
    }
    finished_ok(&job)
}

/// Ok for a succeeded job; the failure as the error otherwise.
fn finished_ok(job: &v1::Job) -> anyhow::Result<()> {
    match job_state_from_wire(job.state) {
        Some(JobState::Succeeded) => Ok(()),
        state => {
            let state = state.map_or("unknown", JobState::as_str);
            let reason = job
                .failure
                .as_ref()
                .map(|f| f.reason.as_str())
                .unwrap_or("no reason recorded");
            bail!("job {} {state}: {reason}", job.id)
        }
    }
}
