//! A [`Store`] that times every operation into
//! `ffleet_db_query_duration_seconds` (and counts failures) and otherwise
//! passes it through: the one place query latency is measured, for both
//! backends.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use ffleet_core::state::{JobState, Outcome, RetryPolicy};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::{
    ApplyRequest, Change, Each, Heartbeat, JobCounts, JobRecord, LeaseRef, LeaseRequest,
    LeaseStatus, PoolStats, ProgressReport, Store, SubmitRequest, Submitted, TransitionRecord,
    WorkerRecord, WorkerState,
};
use crate::error::Result;
use crate::metrics::Metrics;

pub struct Metered {
    inner: Arc<dyn Store>,
    metrics: Metrics,
}

impl Metered {
    pub fn new(inner: Arc<dyn Store>, metrics: Metrics) -> Metered {
        Metered { inner, metrics }
    }

    async fn timed<T>(&self, operation: &str, call: impl Future<Output = Result<T>>) -> Result<T> {
        let started = Instant::now();
        let result = call.await;
        self.metrics
            .observe_query(operation, started.elapsed(), result.is_ok());
        result
    }
}

#[async_trait]
impl Store for Metered {
    async fn submit_many(
        &self,
        requests: &[SubmitRequest],
        now_ms: i64,
    ) -> Result<Each<Submitted>> {
        let call = self.inner.submit_many(requests, now_ms);
        self.timed("submit", call).await
    }

    async fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        self.timed("job", self.inner.job(id)).await
    }

    async fn history(&self, id: &str) -> Result<Vec<TransitionRecord>> {
        self.timed("history", self.inner.history(id)).await
    }

    async fn list_jobs(
        &self,
        state: Option<JobState>,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Vec<JobRecord>> {
        let call = self.inner.list_jobs(state, limit, before_id);
        self.timed("list_jobs", call).await
    }

    async fn apply_many(
        &self,
        requests: &[ApplyRequest],
        now_ms: i64,
        retry: &RetryPolicy,
    ) -> Result<Each<(JobRecord, Outcome)>> {
        let call = self.inner.apply_many(requests, now_ms, retry);
        self.timed("apply", call).await
    }

    async fn lease_many(
        &self,
        requests: &[LeaseRequest<'_>],
        now_ms: i64,
    ) -> Result<Vec<Vec<JobRecord>>> {
        self.timed("lease", self.inner.lease_many(requests, now_ms))
            .await
    }

    async fn record_progress_many(
        &self,
        reports: &[ProgressReport],
        now_ms: i64,
    ) -> Result<Vec<Option<LeaseStatus>>> {
        let call = self.inner.record_progress_many(reports, now_ms);
        self.timed("record_progress", call).await
    }

    async fn renew(
        &self,
        worker_id: &str,
        leases: &[LeaseRef],
        expires_at_ms: i64,
    ) -> Result<Vec<LeaseRef>> {
        let call = self.inner.renew(worker_id, leases, expires_at_ms);
        self.timed("renew", call).await
    }

    async fn next_retry_at(&self, now_ms: i64) -> Result<Option<i64>> {
        self.timed("next_retry_at", self.inner.next_retry_at(now_ms))
            .await
    }

    async fn expired_leases(&self, now_ms: i64) -> Result<Vec<LeaseRef>> {
        self.timed("expired_leases", self.inner.expired_leases(now_ms))
            .await
    }

    async fn lease_history(&self, job_id: &str) -> Result<Vec<(u64, String)>> {
        self.timed("lease_history", self.inner.lease_history(job_id))
            .await
    }

    async fn register_worker(&self, worker: &WorkerRecord) -> Result<()> {
        self.timed("register_worker", self.inner.register_worker(worker))
            .await
    }

    async fn heartbeat_workers(
        &self,
        beats: &[Heartbeat],
        now_ms: i64,
    ) -> Result<Vec<Option<WorkerState>>> {
        let call = self.inner.heartbeat_workers(beats, now_ms);
        self.timed("heartbeat_worker", call).await
    }

    async fn mark_lost_workers(&self, cutoff_ms: i64) -> Result<Vec<String>> {
        let call = self.inner.mark_lost_workers(cutoff_ms);
        self.timed("mark_lost_workers", call).await
    }

    async fn worker(&self, id: &str) -> Result<Option<WorkerRecord>> {
        self.timed("worker", self.inner.worker(id)).await
    }

    async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        self.timed("workers", self.inner.workers()).await
    }

    async fn held_jobs(&self) -> Result<BTreeMap<String, Vec<String>>> {
        self.timed("held_jobs", self.inner.held_jobs()).await
    }

    async fn listen(
        &self,
        sink: UnboundedSender<Change>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        self.inner.listen(sink, shutdown).await
    }

    async fn job_counts(&self, now_ms: i64) -> Result<JobCounts> {
        self.timed("job_counts", self.inner.job_counts(now_ms))
            .await
    }

    fn pool_stats(&self) -> PoolStats {
        self.inner.pool_stats()
    }
}
