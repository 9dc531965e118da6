//! Every metric the master exports, defined in one place. `docs/METRICS.md`
//! lists them; the alert rules and dashboards use only these (a test
//! checks).
//!
//! Counters count what this master did; gauges read from the database
//! (jobs by state, workers by state) describe the whole cluster, so with
//! several masters take `max`, not `sum`, of them.

use std::time::Duration;

use ffleet_core::JobState;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use ffleet_core::state::Transition;

use crate::store::{JobCounts, JobRecord, PoolStats, WorkerState};

/// Seconds, from 5 ms to about 3 hours: queue waits and job durations.
const LONG_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 10800.0,
];
/// Seconds, from 100 µs to 10 s: RPCs, queries, scheduling.
const SHORT_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Requests per transaction, from 1 to the batcher's cap (128).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// The store operations whose requests are batched (group commit).
pub const BATCHED_OPERATIONS: &[&str] = &["submit", "apply", "lease", "heartbeat", "progress"];

/// The store operations timed in `ffleet_db_query_duration_seconds`.
pub const DB_OPERATIONS: &[&str] = &[
    "submit",
    "job",
    "history",
    "list_jobs",
    "apply",
    "lease",
    "record_progress",
    "renew",
    "next_retry_at",
    "expired_leases",
    "lease_history",
    "register_worker",
    "heartbeat_worker",
    "mark_lost_workers",
    "worker",
    "workers",
    "held_jobs",
    "job_counts",
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub jobs: IntGaugeVec,
    pub queue_depth: IntGaugeVec,
    pub queue_oldest_age: prometheus::Gauge,
    pub submissions: IntCounter,
    pub finished: IntCounterVec,
    pub job_duration: HistogramVec,
    pub queue_wait: Histogram,
    pub lease_expiries: IntCounter,
    pub requeues: IntCounter,
    pub retries: IntCounter,
    pub workers: IntGaugeVec,
    pub workers_lost: IntCounter,
    pub scheduling_decisions: IntCounterVec,
    pub scheduling_duration: Histogram,
    pub grpc_requests: IntCounterVec,
    pub grpc_duration: HistogramVec,
    pub db_connections: IntGaugeVec,
    pub db_pool_size: IntGauge,
    pub db_acquire_waits: prometheus::Counter,
    pub db_acquire_wait_seconds: prometheus::Counter,
    pub db_query_duration: HistogramVec,
    pub db_errors: IntCounterVec,
    pub db_batch_size: HistogramVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(buckets.to_vec())
}

impl Metrics {
    pub fn new(registry: Registry) -> Metrics {
        let m = Metrics {
            jobs: IntGaugeVec::new(
                opts("ffleet_jobs", "Jobs in the database by state."),
                &["state"],
            )
            .unwrap(),
            queue_depth: IntGaugeVec::new(
                opts("ffleet_queue_depth", "Queued jobs by priority."),
                &["priority"],
            )
            .unwrap(),
            queue_oldest_age: prometheus::Gauge::with_opts(opts(
                "ffleet_queue_oldest_job_age_seconds",
                "Age of the oldest queued job (0 when none is queued).",
            ))
            .unwrap(),
            submissions: IntCounter::with_opts(opts(
                "ffleet_job_submissions_total",
                "Jobs submitted (idempotent resubmissions not counted).",
            ))
            .unwrap(),
            finished: IntCounterVec::new(
                opts(
                    "ffleet_jobs_finished_total",
                    "Jobs that reached a final state, by state and failure code.",
                ),
                &["state", "code"],
            )
            .unwrap(),
            job_duration: HistogramVec::new(
                histogram(
                    "ffleet_job_duration_seconds",
                    "From submission to a final state, by final state.",
                    LONG_BUCKETS,
                ),
                &["state"],
            )
            .unwrap(),
            queue_wait: Histogram::with_opts(histogram(
                "ffleet_job_queue_wait_seconds",
                "From becoming runnable (submission or retry time) to being leased.",
                LONG_BUCKETS,
            ))
            .unwrap(),
            lease_expiries: IntCounter::with_opts(opts(
                "ffleet_lease_expiries_total",
                "Leases that expired without renewal (their worker went silent).",
            ))
            .unwrap(),
            requeues: IntCounter::with_opts(opts(
                "ffleet_job_requeues_total",
                "Jobs put back in the queue after a lease (expiry or worker-side failure).",
            ))
            .unwrap(),
            retries: IntCounter::with_opts(opts(
                "ffleet_job_retries_total",
                "Final jobs queued again on request (ffleet retry).",
            ))
            .unwrap(),
            workers: IntGaugeVec::new(
                opts("ffleet_workers", "Registered workers by state."),
                &["state"],
            )
            .unwrap(),
            workers_lost: IntCounter::with_opts(opts(
                "ffleet_workers_lost_total",
                "Workers this master declared lost (no heartbeat within the lease TTL).",
            ))
            .unwrap(),
            scheduling_decisions: IntCounterVec::new(
                opts(
                    "ffleet_scheduling_decisions_total",
                    "Placement rounds for a polling worker, by result (leased, empty).",
                ),
                &["result"],
            )
            .unwrap(),
            scheduling_duration: Histogram::with_opts(histogram(
                "ffleet_scheduling_duration_seconds",
                "Time to place jobs onto one worker (one lease transaction).",
                SHORT_BUCKETS,
            ))
            .unwrap(),
            grpc_requests: IntCounterVec::new(
                opts(
                    "ffleet_grpc_requests_total",
                    "gRPC requests served, by method and status code.",
                ),
                &["method", "code"],
            )
            .unwrap(),
            grpc_duration: HistogramVec::new(
                histogram(
                    "ffleet_grpc_request_duration_seconds",
                    "gRPC request latency to the response headers, by method (long polls included).",
                    SHORT_BUCKETS,
                ),
                &["method"],
            )
            .unwrap(),
            db_connections: IntGaugeVec::new(
                opts(
                    "ffleet_db_pool_connections",
                    "Database connections by state (in_use, idle).",
                ),
                &["state"],
            )
            .unwrap(),
            db_pool_size: IntGauge::with_opts(opts(
                "ffleet_db_pool_size",
                "Open database connections.",
            ))
            .unwrap(),
            db_acquire_waits: prometheus::Counter::with_opts(opts(
                "ffleet_db_pool_acquire_waits_total",
                "Connection acquisitions that had to wait for a free connection.",
            ))
            .unwrap(),
            db_acquire_wait_seconds: prometheus::Counter::with_opts(opts(
                "ffleet_db_pool_acquire_wait_seconds_total",
                "Time spent waiting for a free connection.",
            ))
            .unwrap(),
            db_query_duration: HistogramVec::new(
                histogram(
                    "ffleet_db_query_duration_seconds",
                    "Store operation latency (one or more statements), by operation.",
                    SHORT_BUCKETS,
                ),
                &["operation"],
            )
            .unwrap(),
            db_errors: IntCounterVec::new(
                opts(
                    "ffleet_db_errors_total",
                    "Store operations that failed, by operation.",
                ),
                &["operation"],
            )
            .unwrap(),
            db_batch_size: HistogramVec::new(
                histogram(
                    "ffleet_db_batch_size",
                    "Requests written in one transaction by group commit, by operation.",
                    BATCH_BUCKETS,
                ),
                &["operation"],
            )
            .unwrap(),
            registry,
        };
        m.register_all();
        m.initialize_series();
        m
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.jobs.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.queue_oldest_age.clone()),
            Box::new(self.submissions.clone()),
            Box::new(self.finished.clone()),
            Box::new(self.job_duration.clone()),
            Box::new(self.queue_wait.clone()),
            Box::new(self.lease_expiries.clone()),
            Box::new(self.requeues.clone()),
            Box::new(self.retries.clone()),
            Box::new(self.workers.clone()),
            Box::new(self.workers_lost.clone()),
            Box::new(self.scheduling_decisions.clone()),
            Box::new(self.scheduling_duration.clone()),
            Box::new(self.grpc_requests.clone()),
            Box::new(self.grpc_duration.clone()),
            Box::new(self.db_connections.clone()),
            Box::new(self.db_pool_size.clone()),
            Box::new(self.db_acquire_waits.clone()),
            Box::new(self.db_acquire_wait_seconds.clone()),
            Box::new(self.db_query_duration.clone()),
            Box::new(self.db_errors.clone()),
            Box::new(self.db_batch_size.clone()),
        ];
        for c in collectors {
            self.registry
                .register(c)
                .expect("each master metric registers once");
        }
    }

    /// Series that exist from the start, at zero, so rates and ratios over
    /// them are defined before the first event (and alerts can fire on the
    /// first one).
    fn initialize_series(&self) {
        for state in &JobState::ALL {
            self.jobs.with_label_values(&[state.as_str()]).set(0);
        }
        for state in &WorkerState::ALL {
            self.workers.with_label_values(&[state.as_str()]).set(0);
        }
        for state in [
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
            JobState::TimedOut,
        ] {
            self.finished.with_label_values(&[state.as_str(), ""]);
            self.job_duration.with_label_values(&[state.as_str()]);
        }
        for result in ["leased", "empty"] {
            self.scheduling_decisions.with_label_values(&[result]);
        }
        for method in GRPC_METHODS {
            self.grpc_requests.with_label_values(&[method, "OK"]);
            self.grpc_duration.with_label_values(&[method]);
        }
        for op in DB_OPERATIONS {
            self.db_query_duration.with_label_values(&[op]);
            self.db_errors.with_label_values(&[op]);
        }
        for op in BATCHED_OPERATIONS {
            self.db_batch_size.with_label_values(&[op]);
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Sets the gauges read from the database at scrape time.
    pub fn set_counts(&self, counts: &JobCounts, workers: &[WorkerState], now_ms: i64) {
        for state in &JobState::ALL {
            let n: i64 = counts
                .rows
                .iter()
                .filter(|r| r.state == *state)
                .map(|r| r.count)
                .sum();
            self.jobs.with_label_values(&[state.as_str()]).set(n);
        }
        // Priorities come and go: only those queued now are shown.
        self.queue_depth.reset();
        for row in counts.rows.iter().filter(|r| r.state == JobState::Queued) {
            self.queue_depth
                .with_label_values(&[&row.priority.to_string()])
                .set(row.count);
        }
        let age = counts
            .oldest_runnable_ms
            .map_or(0.0, |at| (now_ms - at).max(0) as f64 / 1000.0);
        self.queue_oldest_age.set(age);
        for state in &WorkerState::ALL {
            let n = workers.iter().filter(|s| *s == state).count();
            self.workers
                .with_label_values(&[state.as_str()])
                .set(n as i64);
        }
    }

    pub fn set_pool(&self, pool: &PoolStats) {
        self.db_pool_size.set(pool.size as i64);
        self.db_connections
            .with_label_values(&["in_use"])
            .set(pool.in_use as i64);
        self.db_connections
            .with_label_values(&["idle"])
            .set(pool.idle as i64);
        // The store keeps running totals; counters only move forward.
        let waits = pool.acquire_waits as f64 - self.db_acquire_waits.get();
        if waits > 0.0 {
            self.db_acquire_waits.inc_by(waits);
        }
        let waited = pool.acquire_wait_seconds - self.db_acquire_wait_seconds.get();
        if waited > 0.0 {
            self.db_acquire_wait_seconds.inc_by(waited);
        }
    }

    /// Counts what one state-machine transition means: a requeue, an
    /// expiry, a retry, a finished job (with its duration since submission).
    pub fn observe_transition(&self, event: &str, t: &Transition, job: &JobRecord, now_ms: i64) {
        if event == "lease_expired" {
            self.lease_expiries.inc();
        }
        if event == "retry" {
            self.retries.inc();
        }
        if t.to == JobState::Queued && matches!(t.from, JobState::Leased | JobState::Running) {
            self.requeues.inc();
        }
        if t.to.is_final() {
            let code = job.status.failure.as_ref().map_or("", |f| f.code.as_str());
            self.finished
                .with_label_values(&[t.to.as_str(), code])
                .inc();
            self.job_duration
                .with_label_values(&[t.to.as_str()])
                .observe((now_ms - job.created_at_ms).max(0) as f64 / 1000.0);
        }
    }

    /// One placement round for a polling worker.
    pub fn observe_scheduling(&self, took: Duration, leased: &[JobRecord], now_ms: i64) {
        self.scheduling_duration.observe(took.as_secs_f64());
        let result = if leased.is_empty() { "empty" } else { "leased" };
        self.scheduling_decisions.with_label_values(&[result]).inc();
        for job in leased {
            self.queue_wait
                .observe((now_ms - job.status.not_before_ms).max(0) as f64 / 1000.0);
        }
    }

    pub fn observe_query(&self, operation: &str, took: Duration, ok: bool) {
        self.db_query_duration
            .with_label_values(&[operation])
            .observe(took.as_secs_f64());
        if !ok {
            self.db_errors.with_label_values(&[operation]).inc();
        }
    }
}

/// The methods the master serves: the only values of the `method` label
/// (anything else a client sends is counted as `other`).
pub const GRPC_METHODS: &[&str] = &[
    "SubmitJob",
    "GetJob",
    "ListJobs",
    "CancelJob",
    "RetryJob",
    "WatchJob",
    "ListWorkers",
    "Register",
    "Heartbeat",
    "AcquireJobs",
    "ReportProgress",
    "CompleteJob",
    "FailJob",
];

/// Counts and times every gRPC request: a tower layer on the server, so
/// no handler has to remember.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Metrics,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Metrics) -> GrpcMetricsLayer {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Metrics,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let name = request.uri().path().rsplit('/').next().unwrap_or("");
        let method = GRPC_METHODS
            .iter()
            .find(|m| **m == name)
            .copied()
            .unwrap_or("other");
        let metrics = self.metrics.clone();
        let started = std::time::Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            // An error status comes in the headers (trailers-only); success
            // comes in trailers after the body, so no status header means OK.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from),
                Err(_) => tonic::Code::Unknown,
            };
            metrics
                .grpc_requests
                .with_label_values(&[method, code_name(code)])
                .inc();
            metrics
                .grpc_duration
                .with_label_values(&[method])
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// gRPC's own names for status codes, as other exporters label them.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}
