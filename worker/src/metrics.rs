//! Every metric the worker exports, defined in one place; `docs/METRICS.md`
//! lists them.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use ffleet_core::Resources;
use ffleet_core::report::{Bandwidth, Progress};

use crate::executor::RunOutcome;

/// The values of `ffleet_worker_ffmpeg_exits_total{reason}`.
pub const EXIT_REASONS: &[&str] = &[
    "succeeded",
    "failed",
    "oom_killed",
    "timed_out",
    "cancelled_graceful",
    "cancelled_forced",
];

/// The values of `ffleet_worker_job_phase_seconds{phase}`: where a job's
/// overhead goes, for the efficiency load test and the worker dashboard.
pub const JOB_PHASES: &[&str] = &[
    "cgroup_setup",
    "probe",
    "spawn",
    "first_progress",
    "cleanup",
    "report",
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub cpu_capacity: Gauge,
    pub cpu_reserved: Gauge,
    pub memory_capacity: IntGauge,
    pub memory_reserved: IntGauge,
    pub disk_capacity: IntGauge,
    pub disk_reserved: IntGauge,
    pub memory_available: IntGauge,
    pub scratch_free: IntGauge,
    pub scratch_size: IntGauge,
    pub running_jobs: IntGauge,
    pub ffmpeg_exits: IntCounterVec,
    pub job_failures: IntCounterVec,
    pub input_bytes: IntCounter,
    pub output_bytes: IntCounter,
    pub job_bitrate: GaugeVec,
    pub job_speed: GaugeVec,
    pub encode_speed: Histogram,
    pub read_throughput: Histogram,
    pub heartbeat_duration: Histogram,
    pub heartbeat_failures: IntCounter,
    pub zombies: IntGauge,
    pub quarantined: IntGauge,
    pub memory_guard_stops: IntCounter,
    pub job_phases: prometheus::HistogramVec,
}

fn gauge(name: &str, help: &str) -> Gauge {
    Gauge::with_opts(Opts::new(name, help)).unwrap()
}

fn int_gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::with_opts(Opts::new(name, help)).unwrap()
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::with_opts(Opts::new(name, help)).unwrap()
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).unwrap()
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(registry: Registry) -> Metrics {
        let m = Metrics {
            cpu_capacity: gauge("ffleet_worker_cpu_capacity_cores", "CPU this worker offers."),
            cpu_reserved: gauge(
                "ffleet_worker_cpu_reserved_cores",
                "CPU reserved by running jobs.",
            ),
            memory_capacity: int_gauge(
                "ffleet_worker_memory_capacity_bytes",
                "Memory this worker offers.",
            ),
            memory_reserved: int_gauge(
                "ffleet_worker_memory_reserved_bytes",
                "Memory reserved by running jobs.",
            ),
            disk_capacity: int_gauge(
                "ffleet_worker_disk_capacity_bytes",
                "Scratch disk this worker offers.",
            ),
            disk_reserved: int_gauge(
                "ffleet_worker_disk_reserved_bytes",
                "Scratch disk reserved by running jobs.",
            ),
            memory_available: int_gauge(
                "ffleet_worker_memory_available_bytes",
                "Memory the host (or the enclosing cgroup) really has available.",
            ),
            scratch_free: int_gauge(
                "ffleet_worker_scratch_free_bytes",
                "Free space of the scratch filesystem.",
            ),
            scratch_size: int_gauge(
                "ffleet_worker_scratch_size_bytes",
                "Size of the scratch filesystem.",
            ),
            running_jobs: int_gauge("ffleet_worker_running_jobs", "Jobs running now."),
            ffmpeg_exits: IntCounterVec::new(
                Opts::new(
                    "ffleet_worker_ffmpeg_exits_total",
                    "Finished runs by how they ended (succeeded, failed, oom_killed, timed_out, cancelled_graceful, cancelled_forced).",
                ),
                &["reason"],
            )
            .unwrap(),
            job_failures: IntCounterVec::new(
                Opts::new(
                    "ffleet_worker_job_failures_total",
                    "Failed runs by failure code.",
                ),
                &["code"],
            )
            .unwrap(),
            input_bytes: counter(
                "ffleet_worker_input_bytes_total",
                "Input bytes of succeeded runs.",
            ),
            output_bytes: counter(
                "ffleet_worker_output_bytes_total",
                "Output bytes of succeeded runs.",
            ),
            job_bitrate: GaugeVec::new(
                Opts::new(
                    "ffleet_worker_job_bitrate_bits_per_second",
                    "Output bitrate of each running job, from FFmpeg's progress.",
                ),
                &["job_id"],
            )
            .unwrap(),
            job_speed: GaugeVec::new(
                Opts::new(
                    "ffleet_worker_job_speed_ratio",
                    "Encode speed of each running job (media seconds per second).",
                ),
                &["job_id"],
            )
            .unwrap(),
            encode_speed: histogram(
                "ffleet_worker_encode_speed_ratio",
                "Encode speed of succeeded runs (media seconds per second).",
                &[0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
            ),
            read_throughput: histogram(
                "ffleet_worker_read_throughput_bytes_per_second",
                "Input bytes per wall second of succeeded runs.",
                &[1e5, 1e6, 5e6, 1e7, 5e7, 1e8, 5e8, 1e9],
            ),
            heartbeat_duration: histogram(
                "ffleet_worker_heartbeat_duration_seconds",
                "Heartbeat round trips to the master.",
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0],
            ),
            heartbeat_failures: counter(
                "ffleet_worker_heartbeat_failures_total",
                "Heartbeats that failed.",
            ),
            zombies: int_gauge(
                "ffleet_worker_zombie_processes",
                "Exited children of the worker not yet reaped.",
            ),
            quarantined: int_gauge(
                "ffleet_worker_quarantined",
                "1 while the worker's circuit breaker keeps it from taking jobs.",
            ),
            memory_guard_stops: counter(
                "ffleet_worker_memory_guard_stops_total",
                "Jobs stopped because host memory fell below the floor.",
            ),
            job_phases: prometheus::HistogramVec::new(
                HistogramOpts::new(
                    "ffleet_worker_job_phase_seconds",
                    "The worker's own time per job, by phase (cgroup_setup, probe, spawn, first_progress, cleanup, report).",
                )
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
                &["phase"],
            )
            .unwrap(),
            registry,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.cpu_capacity.clone()),
            Box::new(m.cpu_reserved.clone()),
            Box::new(m.memory_capacity.clone()),
            Box::new(m.memory_reserved.clone()),
            Box::new(m.disk_capacity.clone()),
            Box::new(m.disk_reserved.clone()),
            Box::new(m.memory_available.clone()),
            Box::new(m.scratch_free.clone()),
            Box::new(m.scratch_size.clone()),
            Box::new(m.running_jobs.clone()),
            Box::new(m.ffmpeg_exits.clone()),
            Box::new(m.job_failures.clone()),
            Box::new(m.input_bytes.clone()),
            Box::new(m.output_bytes.clone()),
            Box::new(m.job_bitrate.clone()),
            Box::new(m.job_speed.clone()),
            Box::new(m.encode_speed.clone()),
            Box::new(m.read_throughput.clone()),
            Box::new(m.heartbeat_duration.clone()),
            Box::new(m.heartbeat_failures.clone()),
            Box::new(m.zombies.clone()),
            Box::new(m.quarantined.clone()),
            Box::new(m.memory_guard_stops.clone()),
            Box::new(m.job_phases.clone()),
        ];
        for c in collectors {
            m.registry
                .register(c)
                .expect("each worker metric registers once");
        }
        for reason in EXIT_REASONS {
            m.ffmpeg_exits.with_label_values(&[reason]);
        }
        for phase in JOB_PHASES {
            m.job_phases.with_label_values(&[phase]);
        }
        m
    }

    pub fn observe_phase(&self, phase: &str, took: std::time::Duration) {
        self.job_phases
            .with_label_values(&[phase])
            .observe(took.as_secs_f64());
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn set_ledger(&self, capacity: Resources, free: Resources) {
        let reserved = Resources {
            cpu_millis: capacity.cpu_millis.saturating_sub(free.cpu_millis),
            memory_bytes: capacity.memory_bytes.saturating_sub(free.memory_bytes),
            disk_bytes: capacity.disk_bytes.saturating_sub(free.disk_bytes),
        };
        self.cpu_capacity.set(capacity.cpu_millis as f64 / 1000.0);
        self.cpu_reserved.set(reserved.cpu_millis as f64 / 1000.0);
        self.memory_capacity.set(capacity.memory_bytes as i64);
        self.memory_reserved.set(reserved.memory_bytes as i64);
        self.disk_capacity.set(capacity.disk_bytes as i64);
        self.disk_reserved.set(reserved.disk_bytes as i64);
    }

    pub fn observe_progress(&self, job_id: &str, progress: &Progress) {
        self.job_bitrate
            .with_label_values(&[job_id])
            .set(progress.bitrate_bps as f64);
        self.job_speed
            .with_label_values(&[job_id])
            .set(progress.speed);
    }

    /// Counts a finished run and drops its per-job series.
    pub fn observe_outcome(&self, job_id: &str, outcome: &RunOutcome) {
        let _ = self.job_bitrate.remove_label_values(&[job_id]);
        let _ = self.job_speed.remove_label_values(&[job_id]);
        match outcome {
            RunOutcome::Succeeded(bandwidth) => {
                self.ffmpeg_exits.with_label_values(&["succeeded"]).inc();
                self.observe_bandwidth(bandwidth);
            }
            RunOutcome::Failed(failure) => {
                let code = failure.code.as_str();
                let reason = if EXIT_REASONS.contains(&code) {
                    code
                } else {
                    "failed"
                };
                self.ffmpeg_exits.with_label_values(&[reason]).inc();
                self.job_failures.with_label_values(&[code]).inc();
            }
        }
    }

    fn observe_bandwidth(&self, b: &Bandwidth) {
        self.input_bytes.inc_by(b.input_bytes);
        self.output_bytes.inc_by(b.output_bytes);
        if b.speed > 0.0 {
            self.encode_speed.observe(b.speed);
        }
        if b.wall_time_ms > 0 {
            self.read_throughput.observe(b.read_bytes_per_sec as f64);
        }
    }
}

/// Children of this process that exited and were not reaped: zombies.
pub fn count_zombies() -> i64 {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid …; comm may hold spaces and parentheses.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            fields.next() == Some("Z") && fields.next() == Some(me.as_str())
        })
        .count() as i64
}
