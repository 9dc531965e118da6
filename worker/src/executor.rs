//! Runs one leased job: fetch the input, probe it, run FFmpeg in the job's
//! cgroup under its timeout and stop signal, measure what moved, put the
//! output in place. Every path cleans up after itself, and every failure
//! carries a kind (what happens next) and a code (what happened).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use ffleet_core::ffmpeg::{self, ProbeStream, ProbeSummary, ProgressParser};
use ffleet_core::report::{Bandwidth, Progress};
use ffleet_core::resources::format_size;
use ffleet_core::spec::{InputSource, JobSpec};
use ffleet_core::state::{Failure, FailureKind};
use futures::StreamExt;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cgroup::JobCgroup;

/// How many of FFmpeg's last stderr lines a failure keeps.
const STDERR_TAIL: usize = 20;
/// What the `confine` trampoline prints before failing, so its failure is
/// not taken for FFmpeg's.
pub const CONFINE_ERROR_PREFIX: &str = "ffleet-worker confine:";

#[derive(Debug, Clone)]
pub struct ExecConfig {
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
    /// This worker's own executable, run as the `confine` trampoline.
    pub confine_exe: PathBuf,
    /// The longest grace between SIGTERM and SIGKILL any job may ask for.
    pub max_grace: Duration,
    pub probe_timeout: Duration,
    /// Largest http/https input the worker downloads.
    pub max_download_bytes: u64,
    pub http: reqwest::Client,
    /// Benchmarks only: report a start and succeed at once, without FFmpeg,
    /// to measure the control plane alone.
    pub noop: bool,
    /// Where the time of each phase goes.
    pub metrics: Option<crate::metrics::Metrics>,
}

impl ExecConfig {
    fn phase(&self, phase: &str, since: Instant) {
        if let Some(m) = &self.metrics {
            m.observe_phase(phase, since.elapsed());
        }
    }

    /// The job's own grace period, capped by the worker's maximum.
    pub fn grace_for(&self, spec: &JobSpec) -> Duration {
        Duration::from_millis(spec.grace_ms).min(self.max_grace)
    }
}

/// Why a job is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The master revoked the lease (cancelled, or no longer ours).
    Revoked,
    /// The worker is shutting down and hands the job back.
    Drain,
    /// The host fell below the worker's memory floor; the newest job goes.
    MemoryGuard { available: u64, floor: u64 },
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    Succeeded(Bandwidth),
    Failed(Failure),
}

/// Why a phase ended early.
#[derive(Debug, Clone, Copy)]
enum Interrupted {
    Stop(StopReason),
    Timeout,
}

/// How FFmpeg went when it was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// It exited on SIGTERM within the grace period.
    Gracefully,
    /// It ignored SIGTERM and was killed.
    Forcibly,
    /// It had not started (download, probe).
    BeforeStart,
}

fn failure(
    kind: FailureKind,
    code: &str,
    reason: impl Into<String>,
    stderr_tail: Vec<String>,
) -> RunOutcome {
    RunOutcome::Failed(Failure {
        kind,
        code: code.to_owned(),
        reason: reason.into(),
        stderr_tail,
    })
}

/// An I/O error's failure: a full disk is named as such.
fn io_failure(what: String, e: &std::io::Error) -> RunOutcome {
    let code = if e.raw_os_error() == Some(nix::libc::ENOSPC) {
        "disk_full"
    } else {
        "worker_io"
    };
    failure(
        FailureKind::Infrastructure,
        code,
        format!("{what}: {e}"),
        vec![],
    )
}

fn interrupted(why: Interrupted, how: Stopped, timeout: Duration, grace: Duration) -> RunOutcome {
    let how_text = match how {
        Stopped::Gracefully => "; ffmpeg stopped on SIGTERM".to_owned(),
        Stopped::Forcibly => format!(
            "; ffmpeg ignored SIGTERM and was killed after the {} grace",
            humantime::format_duration(grace)
        ),
        Stopped::BeforeStart => String::new(),
    };
    match why {
        Interrupted::Timeout => failure(
            FailureKind::Timeout,
            "timed_out",
            format!(
                "ran past its timeout of {}{how_text}",
                humantime::format_duration(timeout)
            ),
            vec![],
        ),
        Interrupted::Stop(StopReason::Revoked) => failure(
            FailureKind::Cancelled,
            if how == Stopped::Forcibly {
                "cancelled_forced"
            } else {
                "cancelled_graceful"
            },
            format!("stopped: the master revoked the lease{how_text}"),
            vec![],
        ),
        Interrupted::Stop(StopReason::Drain) => failure(
            FailureKind::Infrastructure,
            "worker_draining",
            format!("worker shutting down; job handed back{how_text}"),
            vec![],
        ),
        Interrupted::Stop(StopReason::MemoryGuard { available, floor }) => failure(
            FailureKind::Infrastructure,
            "memory_guard",
            format!(
                "the host's available memory ({}) fell below the worker's memory floor ({}); \
                 the newest job was stopped{how_text}",
                format_size(available),
                format_size(floor)
            ),
            vec![],
        ),
    }
}

/// Resolves when a stop is asked for or the deadline passes.
async fn stopped(stop: &mut watch::Receiver<Option<StopReason>>, deadline: Instant) -> Interrupted {
    let asked = async {
        // Copy the reason out at once: the borrow must not live across awaits.
        let reason = stop.wait_for(Option::is_some).await.map(|r| *r);
        match reason {
            Ok(Some(reason)) => reason,
            // The sender is gone: nobody can stop us; only the deadline can.
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        reason = asked => Interrupted::Stop(reason),
        _ = tokio::time::sleep_until(deadline) => Interrupted::Timeout,
    }
}

/// Runs `fut` unless a stop or the deadline comes first.
async fn guarded<T>(
    fut: impl std::future::Future<Output = T>,
    stop: &mut watch::Receiver<Option<StopReason>>,
    deadline: Instant,
) -> Result<T, Interrupted> {
    tokio::select! {
        out = fut => Ok(out),
        why = stopped(stop, deadline) => Err(why),
    }
}

pub struct JobRun<'a> {
    pub job_id: &'a str,
    pub token: u64,
    pub spec: &'a JobSpec,
    /// The job's own scratch directory; created here, removed by the caller.
    pub scratch: &'a Path,
    /// The job's cgroup, when the worker confines jobs.
    pub cgroup: Option<&'a JobCgroup>,
}

/// The file in a job's scratch directory that names its temporary output,
/// so a worker restarted after a crash can remove it.
pub const TEMP_OUTPUT_NOTE: &str = "temp-output";

/// Runs the job to an outcome. Progress samples go to `progress`.
pub async fn execute(
    config: &ExecConfig,
    run: JobRun<'_>,
    mut stop: watch::Receiver<Option<StopReason>>,
    progress: watch::Sender<Option<Progress>>,
) -> RunOutcome {
    if config.noop {
        let _ = progress.send(Some(Progress::default()));
        return RunOutcome::Succeeded(Bandwidth::default());
    }
    let timeout = Duration::from_millis(run.spec.timeout_ms);
    let deadline = Instant::now() + timeout;
    let grace = config.grace_for(run.spec);
    let stop_early = |why| interrupted(why, Stopped::BeforeStart, timeout, grace);
    if let Err(e) = tokio::fs::create_dir_all(run.scratch).await {
        return io_failure(
            format!("creating scratch dir {}", run.scratch.display()),
            &e,
        );
    }

    // 1. A local file to read: the given path, or a download.
    let input = match run.spec.input_source() {
        InputSource::Local(path) => match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => path,
            Ok(_) => {
                let reason = format!("input {} is not a file", path.display());
                return failure(FailureKind::Input, "input_not_found", reason, vec![]);
            }
            Err(e) => {
                let reason = format!("input {}: {e}", path.display());
                return failure(FailureKind::Input, "input_not_found", reason, vec![]);
            }
        },
        InputSource::Http(url) => {
            let target = run.scratch.join("input");
            match guarded(download(config, &url, &target), &mut stop, deadline).await {
                Ok(Ok(())) => target,
                Ok(Err(outcome)) => return outcome,
                Err(why) => return stop_early(why),
            }
        }
    };
    let input_str = input.to_string_lossy().into_owned();

    // 2. Probe before encoding: refuse what could steer FFmpeg elsewhere.
    let probing = Instant::now();
    let probed = guarded(probe(config, &input_str), &mut stop, deadline).await;
    config.phase("probe", probing);
    let summary = match probed {
        Ok(Ok(summary)) => summary,
        Ok(Err(outcome)) => return outcome,
        Err(why) => return stop_early(why),
    };
    if let Err(reason) = ffmpeg::check_probe(&summary, run.spec.preset) {
        return failure(FailureKind::Input, "input_refused", reason, vec![]);
    }

    // 3. Encode into a temporary file beside the target.
    let output = PathBuf::from(&run.spec.output);
    let temp = temp_output(&output, run.token);
    if let Some(parent) = output.parent()
        && let Err(e) = tokio::fs::create_dir_all(parent).await
    {
        return io_failure(format!("creating output dir {}", parent.display()), &e);
    }
    let note = run.scratch.join(TEMP_OUTPUT_NOTE);
    if let Err(e) = tokio::fs::write(&note, temp.to_string_lossy().as_bytes()).await {
        return io_failure(format!("writing {}", note.display()), &e);
    }
    let outcome = encode(
        config, &run, &input_str, &temp, &summary, &mut stop, deadline, progress,
    )
    .await;
    let outcome = match outcome {
        Ok((measure, stderr_tail)) => finish(&input, &temp, &output, measure, stderr_tail).await,
        Err(outcome) => outcome,
    };
    if !matches!(outcome, RunOutcome::Succeeded(_)) {
        let _ = tokio::fs::remove_file(&temp).await;
    }
    outcome
}

/// `/out/dir/.name.mp4.ffleet-<token>.tmp`: hidden, unique per lease, and
/// on the target's filesystem so the final rename is atomic.
pub fn temp_output(output: &Path, token: u64) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(".{name}.ffleet-{token}.tmp"))
}

struct EncodeMeasure {
    media_duration_us: u64,
    wall: Duration,
}

/// FFmpeg's command: through the `confine` trampoline into the job's
/// cgroup when there is one, directly otherwise.
fn ffmpeg_command(config: &ExecConfig, cgroup: Option<&JobCgroup>, args: &[String]) -> Command {
    match cgroup {
        Some(cgroup) => {
            let mut command = Command::new(&config.confine_exe);
            command
                .args(["confine", "--cgroup", cgroup.rel_path(), "--"])
                .arg(&config.ffmpeg)
                .args(args);
            command
        }
        None => {
            let mut command = Command::new(&config.ffmpeg);
            command.args(args);
            command
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn encode(
    config: &ExecConfig,
    run: &JobRun<'_>,
    input: &str,
    temp: &Path,
    summary: &ProbeSummary,
    stop: &mut watch::Receiver<Option<StopReason>>,
    deadline: Instant,
    progress: watch::Sender<Option<Progress>>,
) -> Result<(EncodeMeasure, Vec<String>), RunOutcome> {
    let timeout = Duration::from_millis(run.spec.timeout_ms);
    let args = ffmpeg::build_args(run.spec, input, &temp.to_string_lossy());
    tracing::debug!(job_id = run.job_id, ?args, "spawning ffmpeg");
    let started = Instant::now();
    let mut child = ffmpeg_command(config, run.cgroup, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a stop reaches every process it starts.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            let reason = format!("spawning {}: {e}", config.ffmpeg.display());
            failure(FailureKind::Infrastructure, "spawn_failed", reason, vec![])
        })?;
    config.phase("spawn", started);
    let pid = child.id().map(|id| Pid::from_raw(id as i32));

    let duration_us = summary.duration_us.unwrap_or(0);
    // Report "started" at once, then every sample.
    let _ = progress.send(Some(Progress {
        duration_us,
        ..Progress::default()
    }));
    let stdout = child.stdout.take().expect("piped stdout");
    let phase_config = config.clone();
    let progress_task = tokio::spawn(async move {
        let mut parser = ProgressParser::default();
        let mut lines = BufReader::new(stdout).lines();
        let mut last_out_time = 0;
        let mut first = true;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(sample) = parser.feed(&line) {
                if std::mem::take(&mut first) {
                    phase_config.phase("first_progress", started);
                }
                last_out_time = sample.out_time_us;
                let _ = progress.send(Some(Progress {
                    out_time_us: sample.out_time_us,
                    fps: sample.fps,
                    speed: sample.speed,
                    total_size: sample.total_size,
                    bitrate_bps: sample.bitrate_bps,
                    duration_us,
                    frame: sample.frame,
                }));
            }
        }
        last_out_time
    });
    let stderr = child.stderr.take().expect("piped stderr");
    let stderr_task = tokio::spawn(async move {
        let mut tail = std::collections::VecDeque::with_capacity(STDERR_TAIL);
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        Vec::from(tail)
    });

    let exit = tokio::select! {
        status = child.wait() => Ok(status),
        why = stopped(stop, deadline) => Err(why),
    };
    let exit = match exit {
        Ok(status) => status,
        Err(why) => {
            let grace = config.grace_for(run.spec);
            let how = terminate(&mut child, pid, grace, run.job_id).await;
            let _ = progress_task.await;
            let _ = stderr_task.await;
            return Err(interrupted(why, how, timeout, grace));
        }
    };
    let wall = started.elapsed();
    // FFmpeg is gone; whatever it left in its group would hold the pipes
    // open (and outlive the job).
    if let Some(pid) = pid {
        let _ = killpg(pid, Signal::SIGKILL);
    }
    let out_time_us = progress_task.await.unwrap_or(0);
    let stderr_tail = stderr_task.await.unwrap_or_default();
    let status = exit.map_err(|e| {
        failure(
            FailureKind::Infrastructure,
            "worker_io",
            format!("waiting for ffmpeg: {e}"),
            vec![],
        )
    })?;
    if !status.success() {
        return Err(classify_exit(status, stderr_tail, run));
    }
    Ok((
        EncodeMeasure {
            media_duration_us: if out_time_us > 0 {
                out_time_us
            } else {
                duration_us
            },
            wall,
        },
        stderr_tail,
    ))
}

/// Why FFmpeg failed on its own. The kernel's counters speak first (an OOM
/// kill, a refused fork); then the signs that the worker is to blame (a
/// signal, a full disk); anything else is FFmpeg rejecting the input.
fn classify_exit(status: ExitStatus, stderr_tail: Vec<String>, run: &JobRun<'_>) -> RunOutcome {
    use std::os::unix::process::ExitStatusExt;
    let usage = run.cgroup.map(|c| c.usage()).unwrap_or_default();
    let memory = run.spec.resources.memory_bytes;
    if usage.oom_kills > 0 {
        let reason = format!(
            "ffmpeg exceeded its memory limit of {} and was killed by the kernel's OOM killer",
            format_size(memory)
        );
        return failure(
            FailureKind::ResourceLimit,
            "oom_killed",
            reason,
            stderr_tail,
        );
    }
    if usage.pids_refused > 0 {
        let reason = format!(
            "the job's processes hit their pids limit ({} forks refused)",
            usage.pids_refused
        );
        return failure(
            FailureKind::ResourceLimit,
            "pids_limit",
            reason,
            stderr_tail,
        );
    }
    let text = stderr_tail.join("\n");
    if let Some(line) = stderr_tail
        .iter()
        .find(|l| l.starts_with(CONFINE_ERROR_PREFIX))
    {
        return failure(
            FailureKind::Infrastructure,
            "confine_failed",
            line.clone(),
            stderr_tail.clone(),
        );
    }
    if let Some(signal) = status.signal() {
        let reason = format!("ffmpeg killed by signal {signal}");
        return failure(
            FailureKind::Infrastructure,
            "killed_by_signal",
            reason,
            stderr_tail,
        );
    }
    if text.contains("No space left on device") {
        return failure(
            FailureKind::Infrastructure,
            "disk_full",
            "ffmpeg failed: no space left on device",
            stderr_tail,
        );
    }
    let worker_side = ["Cannot allocate memory", "Input/output error"];
    if let Some(sign) = worker_side.iter().find(|s| text.contains(*s)) {
        return failure(
            FailureKind::Infrastructure,
            "worker_io",
            format!("ffmpeg failed: {sign}"),
            stderr_tail,
        );
    }
    let code = status.code().unwrap_or(-1);
    let reason = format!("ffmpeg rejected the input (exit status {code})");
    failure(FailureKind::Input, "ffmpeg_failed", reason, stderr_tail)
}

/// SIGTERM to the process group, the grace period, then SIGKILL.
async fn terminate(child: &mut Child, pid: Option<Pid>, grace: Duration, job_id: &str) -> Stopped {
    let Some(pid) = pid else {
        return Stopped::Gracefully;
    };
    let _ = killpg(pid, Signal::SIGTERM);
    let how = match tokio::time::timeout(grace, child.wait()).await {
        Ok(_) => {
            tracing::info!(job_id, "ffmpeg stopped gracefully");
            Stopped::Gracefully
        }
        Err(_) => {
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = child.wait().await;
            tracing::warn!(
                job_id,
                grace_ms = grace.as_millis() as u64,
                "ffmpeg ignored SIGTERM; killed"
            );
            Stopped::Forcibly
        }
    };
    // Anything left in the group (children FFmpeg started) goes too.
    let _ = killpg(pid, Signal::SIGKILL);
    how
}

async fn finish(
    input: &Path,
    temp: &Path,
    output: &Path,
    measure: EncodeMeasure,
    stderr_tail: Vec<String>,
) -> RunOutcome {
    let input_bytes = tokio::fs::metadata(input)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let output_bytes = match tokio::fs::metadata(temp).await {
        Ok(m) => m.len(),
        Err(e) => {
            let reason = format!("ffmpeg left no output: {e}");
            return failure(
                FailureKind::Infrastructure,
                "worker_io",
                reason,
                stderr_tail,
            );
        }
    };
    if let Err(e) = tokio::fs::rename(temp, output).await {
        return io_failure(
            format!("moving output into place at {}", output.display()),
            &e,
        );
    }
    RunOutcome::Succeeded(Bandwidth::measure(
        input_bytes,
        output_bytes,
        measure.media_duration_us,
        measure.wall.as_millis() as u64,
    ))
}

/// Downloads an http/https input into `target`, capped in size.
async fn download(config: &ExecConfig, url: &str, target: &Path) -> Result<(), RunOutcome> {
    let cap = config.max_download_bytes;
    let unreachable = |e: reqwest::Error| {
        failure(
            FailureKind::Infrastructure,
            "download_failed",
            format!("downloading {url}: {e}"),
            vec![],
        )
    };
    let response = config.http.get(url).send().await.map_err(unreachable)?;
    let status = response.status();
    if status.is_client_error() {
        let reason = format!("downloading {url}: HTTP {status}");
        return Err(failure(
            FailureKind::Input,
            "download_refused",
            reason,
            vec![],
        ));
    }
    if !status.is_success() {
        let reason = format!("downloading {url}: HTTP {status}");
        return Err(failure(
            FailureKind::Infrastructure,
            "download_failed",
            reason,
            vec![],
        ));
    }
    let too_large = || {
        let reason = format!("input at {url} exceeds the download cap of {cap} bytes");
        failure(FailureKind::Input, "download_too_large", reason, vec![])
    };
    if response.content_length().is_some_and(|len| len > cap) {
        return Err(too_large());
    }
    let write_failed = |e: std::io::Error| io_failure(format!("writing {}", target.display()), &e);
    let mut file = tokio::fs::File::create(target)
        .await
        .map_err(write_failed)?;
    let mut body = response.bytes_stream();
    let mut written: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(unreachable)?;
        written += chunk.len() as u64;
        if written > cap {
            return Err(too_large());
        }
        file.write_all(&chunk).await.map_err(write_failed)?;
    }
    file.flush().await.map_err(write_failed)?;
    tracing::info!(url, bytes = written, "input downloaded");
    Ok(())
}

/// A time-limited ffprobe of a local file.
async fn probe(config: &ExecConfig, input: &str) -> Result<ProbeSummary, RunOutcome> {
    let run = Command::new(&config.ffprobe)
        .args(ffmpeg::probe_args(input))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(config.probe_timeout, run).await {
        Err(_) => {
            let reason = format!(
                "ffprobe took longer than {} s",
                config.probe_timeout.as_secs()
            );
            return Err(failure(
                FailureKind::Input,
                "input_unreadable",
                reason,
                vec![],
            ));
        }
        Ok(Err(e)) => {
            let reason = format!("running ffprobe: {e}");
            return Err(failure(
                FailureKind::Infrastructure,
                "spawn_failed",
                reason,
                vec![],
            ));
        }
        Ok(Ok(out)) => out,
    };
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    let stderr: Vec<String> = lines[lines.len().saturating_sub(STDERR_TAIL)..]
        .iter()
        .map(|l| l.to_string())
        .collect();
    if !out.status.success() {
        return Err(failure(
            FailureKind::Input,
            "input_unreadable",
            "ffprobe could not read the input",
            stderr,
        ));
    }
    parse_probe(&out.stdout).map_err(|e| {
        failure(
            FailureKind::Input,
            "input_unreadable",
            format!("unreadable ffprobe report: {e}"),
            stderr,
        )
    })
}

fn parse_probe(json: &[u8]) -> Result<ProbeSummary, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_slice(json)?;
    let format = &v["format"];
    let streams = v["streams"]
        .as_array()
        .map(|streams| {
            streams
                .iter()
                .map(|s| ProbeStream {
                    codec_type: s["codec_type"].as_str().unwrap_or("").to_owned(),
                    width: s["width"].as_u64().unwrap_or(0),
                    height: s["height"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ProbeSummary {
        format_name: format["format_name"].as_str().unwrap_or("").to_owned(),
        duration_us: format["duration"]
            .as_str()
            .and_then(|d| d.parse::<f64>().ok())
            .map(|secs| (secs * 1e6) as u64),
        streams,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffprobe_json_is_summarized() {
        let json = br#"{"streams":[{"codec_type":"video","width":320,"height":240},{"codec_type":"audio"}],
            "format":{"format_name":"mov,mp4,m4a,3gp,3g2,mj2","duration":"5.000000"}}"#;
        let s = parse_probe(json).unwrap();
        assert_eq!(s.format_name, "mov,mp4,m4a,3gp,3g2,mj2");
        assert_eq!(s.duration_us, Some(5_000_000));
        assert_eq!(s.streams.len(), 2);
        assert_eq!((s.streams[0].width, s.streams[0].height), (320, 240));
    }

    #[test]
    fn temp_output_sits_beside_the_target() {
        let t = temp_output(Path::new("/out/a/b.mp4"), 42);
        assert_eq!(t, Path::new("/out/a/.b.mp4.ffleet-42.tmp"));
    }
}
