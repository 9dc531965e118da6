//! How the CLI shows things: tables for people, JSON for scripts, a progress
//! bar for watching, one line for errors.

use std::time::Duration;

use ffleet_core::report::Progress;
use ffleet_core::resources::{format_cpu, format_size};
use ffleet_proto::convert::{job_state_from_wire, job_state_name};
use ffleet_proto::v1::{self, job_service_client::JobServiceClient};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tonic::transport::Channel;

/// A gRPC error as the one line the user reads.
pub fn status(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unavailable => anyhow::anyhow!("master unavailable: {}", s.message()),
        _ => anyhow::anyhow!("{}", s.message()),
    }
}

/// The innermost cause of a transport error (e.g. "Connection refused").
pub fn transport_cause(e: &tonic::transport::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

pub fn one_line(e: &anyhow::Error) -> String {
    e.to_string().replace('\n', " ")
}

fn kind_name(kind: i32) -> &'static str {
    ffleet_proto::convert::failure_kind_from_wire(kind).map_or("unspecified", |k| k.as_str())
}

fn resources_json(r: &Option<v1::Resources>) -> Value {
    let r = r.unwrap_or_default();
    json!({"cpu_millis": r.cpu_millis, "memory_bytes": r.memory_bytes, "disk_bytes": r.disk_bytes})
}

pub fn job_json(job: &v1::Job) -> Value {
    let spec = job.spec.clone().unwrap_or_default();
    let o = spec.overrides.clone().unwrap_or_default();
    json!({
        "id": job.id,
        "state": job_state_name(job.state),
        "attempt": job.attempt,
        "max_attempts": spec.max_attempts,
        "worker_id": job.worker_id,
        "lease_token": job.lease_token,
        "cancel_requested": job.cancel_requested,
        "created_at_ms": job.created_at_ms,
        "updated_at_ms": job.updated_at_ms,
        "not_before_ms": job.not_before_ms,
        "idempotency_key": job.idempotency_key,
        "spec": {
            "input": spec.input,
            "output": spec.output,
            "preset": spec.preset,
            "overrides": {
                "crf": o.crf, "video_bitrate": o.video_bitrate, "height": o.height,
                "audio_bitrate": o.audio_bitrate, "container": o.container,
            },
            "resources": resources_json(&spec.resources),
            "timeout_ms": spec.timeout_ms,
            "grace_ms": spec.grace_ms,
            "priority": spec.priority,
            "labels": spec.labels,
        },
        "failure": job.failure.as_ref().map(|f| json!({
            "kind": kind_name(f.kind),
            "reason": f.reason,
            "stderr_tail": f.stderr_tail,
        })),
        "progress": job.progress.as_ref().map(|p| json!({
            "out_time_us": p.out_time_us, "duration_us": p.duration_us, "fps": p.fps,
            "speed": p.speed, "total_size": p.total_size, "bitrate_bps": p.bitrate_bps, "frame": p.frame,
            "percent": Progress::from(*p).percent(),
        })),
        "bandwidth": job.bandwidth.as_ref().map(|b| json!({
            "input_bytes": b.input_bytes,
            "output_bytes": b.output_bytes,
            "media_duration_us": b.media_duration_us,
            "wall_time_ms": b.wall_time_ms,
            "avg_bitrate_bps": b.avg_bitrate_bps,
            "speed": b.speed,
            "read_bytes_per_sec": b.read_bytes_per_sec,
            "write_bytes_per_sec": b.write_bytes_per_sec,
        })),
        "history": job.history.iter().map(|t| json!({
            "from": job_state_name(t.from),
            "to": job_state_name(t.to),
            "at_ms": t.at_ms,
            "reason": t.reason,
            "worker_id": t.worker_id,
            "lease_token": t.lease_token,
        })).collect::<Vec<_>>(),
    })
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("json values serialize")
    );
}

/// The id and state, for submit, cancel and retry.
pub fn job_brief(job: &v1::Job, as_json: bool) {
    if as_json {
        print_json(&job_json(job));
    } else {
        println!("{}\t{}", job.id, job_state_name(job.state));
    }
}

pub fn job(job: &v1::Job, as_json: bool) {
    if as_json {
        return print_json(&job_json(job));
    }
    let spec = job.spec.clone().unwrap_or_default();
    println!("id:        {}", job.id);
    println!(
        "state:     {}{}",
        job_state_name(job.state),
        if job.cancel_requested {
            " (cancel requested)"
        } else {
            ""
        }
    );
    println!("preset:    {}", spec.preset);
    println!("input:     {}", spec.input);
    println!("output:    {}", spec.output);
    let r = spec.resources.unwrap_or_default();
    println!(
        "resources: cpu {} memory {} disk {}",
        format_cpu(r.cpu_millis),
        format_size(r.memory_bytes),
        format_size(r.disk_bytes)
    );
    println!("attempt:   {} of {}", job.attempt, spec.max_attempts);
    if !job.worker_id.is_empty() {
        println!("worker:    {}", job.worker_id);
    }
    if let Some(p) = &job.progress {
        let p = Progress::from(*p);
        let pct = p.percent().map_or("?".into(), |x| format!("{x:.1}%"));
        println!("progress:  {pct} fps {:.1} speed {:.2}x", p.fps, p.speed);
    }
    if let Some(f) = &job.failure {
        println!("failure:   {} ({})", f.reason, kind_name(f.kind));
        for line in &f.stderr_tail {
            println!("  | {line}");
        }
    }
    if let Some(b) = &job.bandwidth {
        println!("bandwidth:");
        print_bandwidth(b);
    }
    println!("history:");
    for t in &job.history {
        println!(
            "  {}  {:>9} -> {:<9} {}",
            timestamp(t.at_ms),
            job_state_name(t.from),
            job_state_name(t.to),
            t.reason
        );
    }
}

fn timestamp(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

pub fn print_bandwidth(b: &v1::Bandwidth) {
    println!(
        "  input bytes:      {} ({})",
        b.input_bytes,
        format_size(b.input_bytes)
    );
    println!(
        "  output bytes:     {} ({})",
        b.output_bytes,
        format_size(b.output_bytes)
    );
    println!(
        "  media duration:   {:.3} s",
        b.media_duration_us as f64 / 1e6
    );
    println!("  wall time:        {:.3} s", b.wall_time_ms as f64 / 1e3);
    println!(
        "  avg bitrate:      {:.1} kbit/s",
        b.avg_bitrate_bps as f64 / 1e3
    );
    println!("  speed:            {:.2}x realtime", b.speed);
    println!(
        "  read throughput:  {}/s",
        format_size(b.read_bytes_per_sec)
    );
    println!(
        "  write throughput: {}/s",
        format_size(b.write_bytes_per_sec)
    );
}

pub fn job_list(page: &v1::ListJobsResponse, as_json: bool) {
    if as_json {
        return print_json(&json!({
            "jobs": page.jobs.iter().map(job_json).collect::<Vec<_>>(),
            "next_page_token": page.next_page_token,
        }));
    }
    println!(
        "{:<36}  {:<10}  {:<10}  {:>7}  output",
        "id", "state", "preset", "attempt"
    );
    for job in &page.jobs {
        let spec = job.spec.clone().unwrap_or_default();
        println!(
            "{:<36}  {:<10}  {:<10}  {:>7}  {}",
            job.id,
            job_state_name(job.state),
            spec.preset,
            job.attempt,
            spec.output
        );
    }
    if !page.next_page_token.is_empty() {
        println!("(more: --page-token {})", page.next_page_token);
    }
}

pub fn workers(list: &v1::ListWorkersResponse, as_json: bool) {
    if as_json {
        return print_json(&json!({"workers": list.workers.iter().map(|w| json!({
            "id": w.id,
            "name": w.name,
            "state": w.state,
            "capacity": resources_json(&w.capacity),
            "labels": w.labels,
            "ffmpeg_version": w.ffmpeg_version,
            "registered_at_ms": w.registered_at_ms,
            "last_heartbeat_ms": w.last_heartbeat_ms,
            "running_jobs": w.running_jobs,
            "note": w.note,
        })).collect::<Vec<_>>()}));
    }
    println!(
        "{:<36}  {:<16}  {:<11}  {:>6}  {:>10}  {:>10}  jobs  note",
        "id", "name", "state", "cpu", "memory", "disk"
    );
    for w in &list.workers {
        let c = w.capacity.unwrap_or_default();
        println!(
            "{:<36}  {:<16}  {:<11}  {:>6}  {:>10}  {:>10}  {:>4}  {}",
            w.id,
            w.name,
            w.state,
            format_cpu(c.cpu_millis),
            format_size(c.memory_bytes),
            format_size(c.disk_bytes),
            w.running_jobs.len(),
            w.note
        );
    }
}

/// Follows a job with a progress bar (% done, fps, speed, ETA) until it
/// reaches a final state; returns that last view of it.
pub async fn watch(client: &mut JobServiceClient<Channel>, id: &str) -> anyhow::Result<v1::Job> {
    let mut stream = client
        .watch_job(v1::WatchJobRequest { id: id.to_owned() })
        .await
        .map_err(status)?
        .into_inner();
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {percent:>3}% {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut last = None;
    while let Some(job) = stream.message().await.map_err(status)? {
        bar.set_prefix(job_state_name(job.state).to_owned());
        if let Some(p) = job.progress {
            let p = Progress::from(p);
            if let Some(pct) = p.percent() {
                bar.set_position((pct * 10.0) as u64);
            }
            let eta = p.eta_seconds().map_or("?".into(), |s| format!("{s:.0}s"));
            bar.set_message(format!("fps {:.1} speed {:.2}x eta {eta}", p.fps, p.speed));
        }
        let done = job_state_from_wire(job.state).is_some_and(|s| s.is_final());
        last = Some(job);
        if done {
            break;
        }
    }
    let job = last.ok_or_else(|| anyhow::anyhow!("watch of job {id} ended with no update"))?;
    if job_state_from_wire(job.state) == Some(ffleet_core::JobState::Succeeded) {
        bar.set_position(1000);
    }
    bar.finish();
    Ok(job)
}
