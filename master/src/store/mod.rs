//! The one narrow interface through which the master reads and writes its
//! state. Only implementations of [`Store`] touch SQL.
//!
//! Every change of a job's state goes through [`Store::apply_many`], which
//! loads the jobs, runs the pure state machine (`ffleet_core::state::step`)
//! and persists the outcomes in one transaction: fencing and transitions
//! are decided in one place, whatever the backend. Writes take slices so
//! that many callers' requests share a transaction (the master's
//! `batch` module gathers them); the one-job forms are thin wrappers.

pub mod dialect;
mod listen;
mod metered;
pub(crate) mod sql;

use std::collections::BTreeMap;

use async_trait::async_trait;
use ffleet_core::Resources;
use ffleet_core::report::{Bandwidth, Progress, ResourceUsage};
use ffleet_core::spec::JobSpec;
use ffleet_core::state::{Event, JobState, JobStatus, Outcome, RetryPolicy};

use crate::error::{Error, Result};

pub use dialect::{DbOptions, Dialect};
pub use metered::Metered;
pub use sql::SqlStore;

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub idempotency_key: Option<String>,
    pub spec: JobSpec,
    pub status: JobStatus,
    /// The holder of the current lease, or of the last one.
    pub worker_id: Option<String>,
    pub progress: Option<Progress>,
    pub bandwidth: Option<Bandwidth>,
    pub usage: Option<ResourceUsage>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// The W3C traceparent of the job's submit span ("" without traces).
    pub trace_parent: String,
}

/// One entry of a job's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRecord {
    pub from: JobState,
    pub to: JobState,
    pub at_ms: i64,
    pub reason: String,
    pub worker_id: Option<String>,
    pub lease_token: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Ready,
    Draining,
    /// Its circuit breaker is open: it takes no work for a cool-down.
    Quarantined,
    Lost,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
            WorkerState::Quarantined => "quarantined",
            WorkerState::Lost => "lost",
        }
    }

    pub const ALL: [WorkerState; 4] = [
        WorkerState::Ready,
        WorkerState::Draining,
        WorkerState::Quarantined,
        WorkerState::Lost,
    ];

    pub fn parse(s: &str) -> Option<WorkerState> {
        WorkerState::ALL.into_iter().find(|w| w.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRecord {
    pub id: String,
    pub name: String,
    pub capacity: Resources,
    pub labels: BTreeMap<String, String>,
    pub ffmpeg_version: String,
    pub state: WorkerState,
    pub registered_at_ms: i64,
    pub last_heartbeat_ms: i64,
    /// What the worker last said about its health; empty when all is well.
    pub note: String,
}

/// What a worker says of itself in a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    pub draining: bool,
    pub quarantined: bool,
    pub note: String,
}

impl WorkerReport {
    /// The state this report puts a live worker in. Draining is final:
    /// only a new registration makes a draining worker ready again.
    pub fn state_after(&self, before: WorkerState) -> WorkerState {
        match before {
            WorkerState::Lost | WorkerState::Draining => before,
            _ if self.draining => WorkerState::Draining,
            _ if self.quarantined => WorkerState::Quarantined,
            _ => WorkerState::Ready,
        }
    }
}

/// What a worker's report brings along with a state event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attachments {
    pub progress: Option<Progress>,
    pub bandwidth: Option<Bandwidth>,
    pub usage: Option<ResourceUsage>,
}

/// The result of a submission.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    Created(JobRecord),
    /// The idempotency key was seen before: this is that job.
    Existing(JobRecord),
}

/// Something another process sharing the database changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// A job may have become leasable.
    WorkAvailable,
    /// This job changed.
    Job(String),
    /// Notifications may have been lost: anything may have changed.
    Everything,
}

/// Connection pool figures, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub in_use: u32,
    /// Acquisitions that had to wait for a connection.
    pub acquire_waits: u64,
    pub acquire_wait_seconds: f64,
}

/// A lease to check or renew: the job and the fencing token the worker holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRef {
    pub job_id: String,
    pub token: u64,
}

/// A progress sample under a lease, for [`Store::record_progress_many`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressReport {
    pub lease: LeaseRef,
    pub progress: Progress,
}

/// What a progress report learns of its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseStatus {
    pub state: JobState,
    pub cancel_requested: bool,
}

/// One worker's heartbeat, for [`Store::heartbeat_workers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub worker_id: String,
    pub report: WorkerReport,
}

/// One event for [`Store::apply_many`].
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyRequest {
    pub id: String,
    pub event: Event,
    pub attachments: Attachments,
}

/// One new job for [`Store::submit_many`].
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitRequest {
    pub id: String,
    pub idempotency_key: Option<String>,
    pub spec: JobSpec,
    /// The W3C traceparent of the submit span ("" without traces).
    pub trace_parent: String,
}

impl TransitionRecord {
    /// The entry every job's history starts with.
    pub fn submitted(at_ms: i64) -> TransitionRecord {
        TransitionRecord {
            from: JobState::Queued,
            to: JobState::Queued,
            at_ms,
            reason: "submitted".into(),
            worker_id: None,
            lease_token: None,
        }
    }
}

/// A worker asking for work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest<'a> {
    pub worker_id: &'a str,
    pub free: Resources,
    pub max_jobs: usize,
    pub ttl_ms: i64,
}

/// The outcome of each request of a batch, in request order. A request
/// that fails on its own (unknown job, stale lease, idempotency conflict)
/// fails alone; the others still commit.
pub type Each<T> = Vec<Result<T>>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts new queued jobs in one transaction; for each, returns the
    /// job, or the job its idempotency key already names (an error if its
    /// spec differs). The outer error is the database's: nothing committed.
    async fn submit_many(&self, requests: &[SubmitRequest], now_ms: i64)
    -> Result<Each<Submitted>>;

    /// [`Store::submit_many`] for one job.
    async fn submit(
        &self,
        id: &str,
        idempotency_key: Option<&str>,
        spec: &JobSpec,
        trace_parent: &str,
        now_ms: i64,
    ) -> Result<Submitted> {
        let request = SubmitRequest {
            id: id.to_owned(),
            idempotency_key: idempotency_key.map(str::to_owned),
            spec: spec.clone(),
            trace_parent: trace_parent.to_owned(),
        };
        only(self.submit_many(&[request], now_ms).await?)
    }

    async fn job(&self, id: &str) -> Result<Option<JobRecord>>;

    async fn history(&self, id: &str) -> Result<Vec<TransitionRecord>>;

    /// Newest first; `before_id` continues a previous page.
    async fn list_jobs(
        &self,
        state: Option<JobState>,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Vec<JobRecord>>;

    /// For each request in order: loads the job (as the requests before it
    /// left it), steps the state machine, and persists every outcome in one
    /// transaction.
    async fn apply_many(
        &self,
        requests: &[ApplyRequest],
        now_ms: i64,
        retry: &RetryPolicy,
    ) -> Result<Each<(JobRecord, Outcome)>>;

    /// [`Store::apply_many`] for one event.
    async fn apply(
        &self,
        id: &str,
        event: Event,
        attachments: Attachments,
        now_ms: i64,
        retry: &RetryPolicy,
    ) -> Result<(JobRecord, Outcome)> {
        let request = ApplyRequest {
            id: id.to_owned(),
            event,
            attachments,
        };
        only(self.apply_many(&[request], now_ms, retry).await?)
    }

    /// Leases queued jobs to the asking workers, atomically: one scan of
    /// the queue, one `ffleet_core::placement::place` over all their free
    /// resources. Returns each request's jobs, in request order. A worker
    /// named twice gets nothing the second time.
    async fn lease_many(
        &self,
        requests: &[LeaseRequest<'_>],
        now_ms: i64,
    ) -> Result<Vec<Vec<JobRecord>>>;

    /// [`Store::lease_many`] for one worker.
    async fn lease(&self, request: LeaseRequest<'_>, now_ms: i64) -> Result<Vec<JobRecord>> {
        let mut each = self.lease_many(&[request], now_ms).await?;
        Ok(each.pop().unwrap_or_default())
    }

    /// Stores progress for current leases, in one transaction. For each
    /// report: `None` when its lease is stale; otherwise the job's state
    /// (leased or running) and whether its cancellation was requested.
    async fn record_progress_many(
        &self,
        reports: &[ProgressReport],
        now_ms: i64,
    ) -> Result<Vec<Option<LeaseStatus>>>;

    /// [`Store::record_progress_many`] for one report: whether the job's
    /// cancellation was requested.
    async fn record_progress(
        &self,
        lease: &LeaseRef,
        progress: &Progress,
        now_ms: i64,
    ) -> Result<Option<bool>> {
        let report = ProgressReport {
            lease: lease.clone(),
            progress: progress.clone(),
        };
        let mut each = self.record_progress_many(&[report], now_ms).await?;
        Ok(each.pop().flatten().map(|s| s.cancel_requested))
    }

    /// Extends the leases the worker still holds; returns those it must stop
    /// (stale, or whose jobs were cancelled).
    async fn renew(
        &self,
        worker_id: &str,
        leases: &[LeaseRef],
        expires_at_ms: i64,
    ) -> Result<Vec<LeaseRef>>;

    /// The earliest retry time, after `now_ms`, of a queued job.
    async fn next_retry_at(&self, now_ms: i64) -> Result<Option<i64>>;

    /// Leases past their expiry.
    async fn expired_leases(&self, now_ms: i64) -> Result<Vec<LeaseRef>>;

    /// Every lease ever granted for a job, oldest first: (token, worker).
    async fn lease_history(&self, job_id: &str) -> Result<Vec<(u64, String)>>;

    /// Inserts or refreshes a worker; it becomes ready.
    async fn register_worker(&self, worker: &WorkerRecord) -> Result<()>;

    /// Records heartbeats and what each worker reports of itself, in one
    /// transaction; returns each worker's state before its heartbeat,
    /// `None` for a worker the master does not know. A lost worker stays
    /// lost until it registers again.
    async fn heartbeat_workers(
        &self,
        beats: &[Heartbeat],
        now_ms: i64,
    ) -> Result<Vec<Option<WorkerState>>>;

    /// [`Store::heartbeat_workers`] for one worker.
    async fn heartbeat_worker(
        &self,
        id: &str,
        report: &WorkerReport,
        now_ms: i64,
    ) -> Result<Option<WorkerState>> {
        let beat = Heartbeat {
            worker_id: id.to_owned(),
            report: report.clone(),
        };
        let mut each = self.heartbeat_workers(&[beat], now_ms).await?;
        Ok(each.pop().flatten())
    }

    /// Marks workers silent since `cutoff_ms` as lost; returns their ids.
    async fn mark_lost_workers(&self, cutoff_ms: i64) -> Result<Vec<String>>;

    async fn worker(&self, id: &str) -> Result<Option<WorkerRecord>>;

    /// All workers, by name.
    async fn workers(&self) -> Result<Vec<WorkerRecord>>;

    /// The ids of the jobs each worker holds a lease on, by worker id.
    async fn held_jobs(&self) -> Result<BTreeMap<String, Vec<String>>>;

    /// Pushes changes made by other processes sharing the database to
    /// `sink` until shutdown. Returns at once for a backend only one
    /// process uses.
    async fn listen(
        &self,
        sink: tokio::sync::mpsc::UnboundedSender<Change>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<()>;

    /// Jobs by state and priority, and since when the longest-waiting
    /// runnable queued job has waited: the gauges of `/metrics`.
    async fn job_counts(&self, now_ms: i64) -> Result<JobCounts>;

    fn pool_stats(&self) -> PoolStats;
}

/// The one result of a batch of one.
pub(crate) fn only<T>(each: Each<T>) -> Result<T> {
    each.into_iter()
        .next()
        .unwrap_or_else(|| Err(Error::Corrupt("a batch of one came back empty".into())))
}

/// One row of [`Store::job_counts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCount {
    pub state: JobState,
    pub priority: i32,
    pub count: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobCounts {
    pub rows: Vec<JobCount>,
    /// The smallest `not_before_ms` (submission or retry time) of a queued
    /// job that may run now.
    pub oldest_runnable_ms: Option<i64>,
}

/// Opens the store `options.url` names. With `migrate`, pending migrations
/// are applied; without, a database behind this build is refused. A
/// database ahead of this build is always refused.
pub async fn open(options: &DbOptions, migrate: bool) -> Result<std::sync::Arc<dyn Store>> {
    let store = SqlStore::connect(options).await?;
    crate::migrate::check_and_apply(store.pool(), store.dialect(), migrate).await?;
    Ok(std::sync::Arc::new(store))
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("domain types serialize")
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}
