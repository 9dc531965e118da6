//! Conversions between wire messages and core types. Both master and worker
//! use these, so a field is mapped in exactly one place.

use ffleet_core::Resources;
use ffleet_core::report::{Bandwidth, Progress, ResourceUsage};
use ffleet_core::spec::{Container, JobSpec, Preset, SubmittedSpec};
use ffleet_core::state::{Failure, FailureKind, JobState};

use crate::v1;

impl From<Resources> for v1::Resources {
    fn from(r: Resources) -> Self {
        v1::Resources {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            disk_bytes: r.disk_bytes,
        }
    }
}

impl From<v1::Resources> for Resources {
    fn from(r: v1::Resources) -> Self {
        Resources::new(r.cpu_millis, r.memory_bytes, r.disk_bytes)
    }
}

impl From<JobState> for v1::JobState {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Queued => v1::JobState::Queued,
            JobState::Leased => v1::JobState::Leased,
            JobState::Running => v1::JobState::Running,
            JobState::Succeeded => v1::JobState::Succeeded,
            JobState::Failed => v1::JobState::Failed,
            JobState::Cancelled => v1::JobState::Cancelled,
            JobState::TimedOut => v1::JobState::TimedOut,
        }
    }
}

/// `None` for UNSPECIFIED (and for numbers this build does not know).
pub fn job_state_from_wire(value: i32) -> Option<JobState> {
    match v1::JobState::try_from(value).ok()? {
        v1::JobState::Unspecified => None,
        v1::JobState::Queued => Some(JobState::Queued),
        v1::JobState::Leased => Some(JobState::Leased),
        v1::JobState::Running => Some(JobState::Running),
        v1::JobState::Succeeded => Some(JobState::Succeeded),
        v1::JobState::Failed => Some(JobState::Failed),
        v1::JobState::Cancelled => Some(JobState::Cancelled),
        v1::JobState::TimedOut => Some(JobState::TimedOut),
    }
}

/// The wire name users see and type: `queued`, `timed_out` …
pub fn job_state_name(value: i32) -> &'static str {
    job_state_from_wire(value).map_or("unspecified", JobState::as_str)
}

impl From<FailureKind> for v1::FailureKind {
    fn from(k: FailureKind) -> Self {
        match k {
            FailureKind::Input => v1::FailureKind::Input,
            FailureKind::Infrastructure => v1::FailureKind::Infrastructure,
            FailureKind::ResourceLimit => v1::FailureKind::ResourceLimit,
            FailureKind::Timeout => v1::FailureKind::Timeout,
            FailureKind::Cancelled => v1::FailureKind::Cancelled,
        }
    }
}

pub fn failure_kind_from_wire(value: i32) -> Option<FailureKind> {
    match v1::FailureKind::try_from(value).ok()? {
        v1::FailureKind::Unspecified => None,
        v1::FailureKind::Input => Some(FailureKind::Input),
        v1::FailureKind::Infrastructure => Some(FailureKind::Infrastructure),
        v1::FailureKind::ResourceLimit => Some(FailureKind::ResourceLimit),
        v1::FailureKind::Timeout => Some(FailureKind::Timeout),
        v1::FailureKind::Cancelled => Some(FailureKind::Cancelled),
    }
}

impl From<Failure> for v1::Failure {
    fn from(f: Failure) -> Self {
        v1::Failure {
            kind: v1::FailureKind::from(f.kind) as i32,
            code: f.code,
            reason: f.reason,
            stderr_tail: f.stderr_tail,
        }
    }
}

impl From<Progress> for v1::Progress {
    fn from(p: Progress) -> Self {
        v1::Progress {
            out_time_us: p.out_time_us,
            fps: p.fps,
            speed: p.speed,
            total_size: p.total_size,
            bitrate_bps: p.bitrate_bps,
            duration_us: p.duration_us,
            frame: p.frame,
        }
    }
}

impl From<v1::Progress> for Progress {
    fn from(p: v1::Progress) -> Self {
        Progress {
            out_time_us: p.out_time_us,
            fps: p.fps,
            speed: p.speed,
            total_size: p.total_size,
            bitrate_bps: p.bitrate_bps,
            duration_us: p.duration_us,
            frame: p.frame,
        }
    }
}

impl From<ResourceUsage> for v1::ResourceUsage {
    fn from(u: ResourceUsage) -> Self {
        v1::ResourceUsage {
            cpu_time_ms: u.cpu_time_ms,
            peak_memory_bytes: u.peak_memory_bytes,
        }
    }
}

impl From<v1::ResourceUsage> for ResourceUsage {
    fn from(u: v1::ResourceUsage) -> Self {
        ResourceUsage {
            cpu_time_ms: u.cpu_time_ms,
            peak_memory_bytes: u.peak_memory_bytes,
        }
    }
}

impl From<Bandwidth> for v1::Bandwidth {
    fn from(b: Bandwidth) -> Self {
        v1::Bandwidth {
            input_bytes: b.input_bytes,
            output_bytes: b.output_bytes,
            media_duration_us: b.media_duration_us,
            wall_time_ms: b.wall_time_ms,
            avg_bitrate_bps: b.avg_bitrate_bps,
            speed: b.speed,
            read_bytes_per_sec: b.read_bytes_per_sec,
            write_bytes_per_sec: b.write_bytes_per_sec,
        }
    }
}

impl From<v1::Bandwidth> for Bandwidth {
    fn from(b: v1::Bandwidth) -> Self {
        Bandwidth {
            input_bytes: b.input_bytes,
            output_bytes: b.output_bytes,
            media_duration_us: b.media_duration_us,
            wall_time_ms: b.wall_time_ms,
            avg_bitrate_bps: b.avg_bitrate_bps,
            speed: b.speed,
            read_bytes_per_sec: b.read_bytes_per_sec,
            write_bytes_per_sec: b.write_bytes_per_sec,
        }
    }
}

/// A spec as a client sent it, for the master to validate.
impl From<v1::JobSpec> for SubmittedSpec {
    fn from(s: v1::JobSpec) -> Self {
        let o = s.overrides.unwrap_or_default();
        SubmittedSpec {
            input: s.input,
            output: s.output,
            preset: s.preset,
            crf: o.crf,
            video_bitrate: o.video_bitrate,
            height: o.height,
            audio_bitrate: o.audio_bitrate,
            container: o.container,
            resources: s.resources.map(Into::into),
            timeout_ms: s.timeout_ms,
            grace_ms: s.grace_ms,
            priority: s.priority,
            max_attempts: s.max_attempts,
            labels: s.labels.into_iter().collect(),
        }
    }
}

impl From<JobSpec> for v1::JobSpec {
    fn from(s: JobSpec) -> Self {
        v1::JobSpec {
            input: s.input,
            output: s.output,
            preset: s.preset.name().into(),
            overrides: Some(v1::Overrides {
                crf: s.overrides.crf,
                video_bitrate: s.overrides.video_bitrate,
                height: s.overrides.height,
                audio_bitrate: s.overrides.audio_bitrate,
                container: s.overrides.container.map(|c| c.name().into()),
            }),
            resources: Some(s.resources.into()),
            timeout_ms: s.timeout_ms,
            grace_ms: s.grace_ms,
            priority: s.priority,
            max_attempts: s.max_attempts,
            labels: s.labels.into_iter().collect(),
        }
    }
}

/// A spec as the master leased it: already validated, so this only fails on
/// a master and worker that disagree about the contract.
pub fn leased_spec(s: v1::JobSpec) -> Result<JobSpec, String> {
    let preset =
        Preset::parse(&s.preset).ok_or_else(|| format!("unknown preset {:?}", s.preset))?;
    let o = s.overrides.unwrap_or_default();
    let container = match o.container.as_deref() {
        None | Some("") => None,
        Some(name) => {
            Some(Container::parse(name).ok_or_else(|| format!("unknown container {name:?}"))?)
        }
    };
    Ok(JobSpec {
        input: s.input,
        output: s.output,
        preset,
        overrides: ffleet_core::spec::Overrides {
            crf: o.crf,
            video_bitrate: o.video_bitrate,
            height: o.height,
            audio_bitrate: o.audio_bitrate,
            container,
        },
        resources: s
            .resources
            .map(Into::into)
            .unwrap_or_else(|| preset.default_resources()),
        timeout_ms: s.timeout_ms,
        grace_ms: s.grace_ms,
        priority: s.priority,
        max_attempts: s.max_attempts,
        labels: s.labels.into_iter().collect(),
    })
}
