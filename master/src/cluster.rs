//! What the master does, independent of the wire: submit, lease, report,
//! watch, reap. A [`Cluster`] is a cheap, cloneable handle.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ffleet_core::Resources;
use ffleet_core::report::Progress;
use ffleet_core::spec::{self, SpecPolicy, SubmittedSpec};
use ffleet_core::state::{Action, Event, Outcome, RetryPolicy, StepError};
use ffleet_proto::v1;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch::{BatchWrite, Batcher, WriteThread};
use crate::error::{Error, Result};
use crate::grpc::{job_to_wire, status};
use crate::metrics::Metrics;
use crate::store::{
    ApplyRequest, Attachments, Change, Each, Heartbeat, JobRecord, LeaseRef, LeaseRequest,
    LeaseStatus, ProgressReport, Store, SubmitRequest, Submitted, TransitionRecord, WorkerRecord,
    WorkerReport, WorkerState,
};

/// Sent on `job_changes` when any job may have changed.
const EVERY_JOB: &str = "*";

/// How long the workers read for pending reasons are reused. Submissions
/// would otherwise read every worker each; a change this master makes
/// (a registration, a heartbeat that changes a worker's state or note, a
/// lost worker) drops the copy at once; a change made through another
/// master shows within the TTL.
const WORKERS_SEEN_TTL: Duration = Duration::from_secs(1);

/// The longest an AcquireJobs call is held open.
const MAX_ACQUIRE_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub policy: SpecPolicy,
    pub lease_ttl: Duration,
    pub retry: RetryPolicy,
}

impl ClusterConfig {
    /// Workers heartbeat three times per TTL, so one lost heartbeat never
    /// costs a lease.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease_ttl / 3
    }
}

struct Inner {
    store: Arc<dyn Store>,
    config: ClusterConfig,
    /// Signalled when a job may have become leasable.
    work_available: Notify,
    /// The id of every job that changed, for WatchJob.
    job_changes: broadcast::Sender<String>,
    /// Free resources a worker reported (by heartbeat) for its pending
    /// AcquireJobs, keyed by worker: (acquire_seq, free).
    pending_free: Mutex<HashMap<String, (u64, Resources)>>,
    /// Every write on the hot path, by group commit (`batch`): what
    /// arrives while a transaction of its kind runs goes in the next one.
    /// The workers that one submission wakes are leased to together.
    submits: Batcher<Submits>,
    applies: Batcher<Applies>,
    leases: Batcher<Leases>,
    heartbeats: Batcher<Heartbeats>,
    progress_reports: Batcher<ProgressReports>,
    /// Where the batchers run; declared after them so that it stops after
    /// their queues close.
    _write_thread: WriteThread,
    /// The workers as last read, and when: see [`WORKERS_SEEN_TTL`].
    workers_seen: Mutex<Option<(Instant, Arc<Vec<WorkerRecord>>)>>,
    metrics: Metrics,
    shutdown: CancellationToken,
}

#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

impl Cluster {
    pub fn new(
        store: Arc<dyn Store>,
        config: ClusterConfig,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        let (job_changes, _) = broadcast::channel(1024);
        let thread = WriteThread::start().expect("starting the write thread");
        let sizes = |op: &str| metrics.db_batch_size.with_label_values(&[op]);
        let submits = Batcher::spawn(
            Submits {
                store: store.clone(),
            },
            sizes("submit"),
            &thread,
        );
        let applies = Batcher::spawn(
            Applies {
                store: store.clone(),
                retry: config.retry,
            },
            sizes("apply"),
            &thread,
        );
        let leases = Batcher::spawn(
            Leases {
                store: store.clone(),
            },
            sizes("lease"),
            &thread,
        );
        let heartbeats = Batcher::spawn(
            Heartbeats {
                store: store.clone(),
            },
            sizes("heartbeat"),
            &thread,
        );
        let progress_reports = Batcher::spawn(
            ProgressReports {
                store: store.clone(),
            },
            sizes("progress"),
            &thread,
        );
        Cluster {
            inner: Arc::new(Inner {
                store,
                config,
                work_available: Notify::new(),
                job_changes,
                pending_free: Mutex::new(HashMap::new()),
                submits,
                applies,
                leases,
                heartbeats,
                progress_reports,
                _write_thread: thread,
                workers_seen: Mutex::new(None),
                metrics,
                shutdown,
            }),
        }
    }

    pub fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Reads the gauges that describe the database (jobs and workers by
    /// state, the pool) into the metrics, before a scrape.
    pub async fn refresh_metrics(&self) {
        let now = now_ms();
        let metrics = &self.inner.metrics;
        match (
            self.store().job_counts(now).await,
            self.store().workers().await,
        ) {
            (Ok(counts), Ok(workers)) => {
                let states: Vec<WorkerState> = workers.iter().map(|w| w.state).collect();
                metrics.set_counts(&counts, &states, now);
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "reading job and worker counts for metrics");
            }
        }
        metrics.set_pool(&self.store().pool_stats());
    }

    /// Validates and stores a job; `trace_parent` (the submit span's) is
    /// kept with it so its lease and run join the same trace.
    pub async fn submit(
        &self,
        raw: SubmittedSpec,
        key: Option<String>,
        trace_parent: &str,
    ) -> Result<v1::Job> {
        let spec = spec::validate(raw, &self.inner.config.policy)?;
        let request = SubmitRequest {
            id: uuid::Uuid::now_v7().to_string(),
            idempotency_key: key,
            spec,
            trace_parent: trace_parent.to_owned(),
        };
        let preset = request.spec.preset;
        match self.inner.submits.call(request).await? {
            Submitted::Created(job) => {
                tracing::info!(job_id = %job.id, preset = preset.name(), "job submitted");
                self.inner.metrics.submissions.inc();
                self.inner.work_available.notify_waiters();
                // A new job's history is known without asking.
                let history = vec![TransitionRecord::submitted(job.created_at_ms)];
                self.to_wire(job, history).await
            }
            Submitted::Existing(job) => {
                tracing::info!(job_id = %job.id, "idempotent resubmission");
                self.with_history(job).await
            }
        }
    }

    async fn with_history(&self, job: JobRecord) -> Result<v1::Job> {
        let history = self.store().history(&job.id).await?;
        self.to_wire(job, history).await
    }

    async fn to_wire(&self, job: JobRecord, history: Vec<TransitionRecord>) -> Result<v1::Job> {
        let pending_reason = self.pending_reason(&job).await?;
        let mut wire = job_to_wire(job, history);
        wire.pending_reason = pending_reason;
        Ok(wire)
    }

    /// Why a queued job waits, when no live worker could run it now for a
    /// reason other than being busy: none is big enough, or each big enough
    /// one is quarantined, draining or short of host memory or disk (as its
    /// note says). Computed when asked, from the registered workers, so
    /// there is nothing to keep in sync.
    async fn pending_reason(&self, job: &JobRecord) -> Result<String> {
        if job.status.state != ffleet_core::JobState::Queued {
            return Ok(String::new());
        }
        let workers = self.workers_seen().await?;
        let live: Vec<&WorkerRecord> = workers
            .iter()
            .filter(|w| w.state != WorkerState::Lost)
            .collect();
        let request = job.spec.resources;
        if live.is_empty() {
            return Ok("no live worker is registered".into());
        }
        let big_enough: Vec<&&WorkerRecord> =
            live.iter().filter(|w| w.capacity.fits(&request)).collect();
        if !big_enough.is_empty() {
            let hindered: Vec<String> = big_enough
                .iter()
                .filter(|w| w.state != WorkerState::Ready || !w.note.is_empty())
                .map(|w| match (w.state, w.note.as_str()) {
                    (WorkerState::Ready, note) => format!("{}: {note}", w.name),
                    (state, "") => format!("{}: {}", w.name, state.as_str()),
                    (state, note) => format!("{}: {} ({note})", w.name, state.as_str()),
                })
                .collect();
            if hindered.len() < big_enough.len() {
                return Ok(String::new());
            }
            return Ok(format!(
                "the workers big enough for this job cannot take it now: {}",
                hindered.join("; ")
            ));
        }
        let live: Vec<Resources> = live.iter().map(|w| w.capacity).collect();
        let largest = live.iter().fold(Resources::ZERO, |acc, c| Resources {
            cpu_millis: acc.cpu_millis.max(c.cpu_millis),
            memory_bytes: acc.memory_bytes.max(c.memory_bytes),
            disk_bytes: acc.disk_bytes.max(c.disk_bytes),
        });
        Ok(format!(
            "no live worker can fit this job: it asks for {request}; the largest worker offers {largest}"
        ))
    }

    /// The registered workers, read at most once per [`WORKERS_SEEN_TTL`].
    async fn workers_seen(&self) -> Result<Arc<Vec<WorkerRecord>>> {
        if let Some((at, workers)) = &*self.inner.workers_seen.lock().expect("workers_seen lock")
            && at.elapsed() < WORKERS_SEEN_TTL
        {
            return Ok(workers.clone());
        }
        let workers = Arc::new(self.store().workers().await?);
        *self.inner.workers_seen.lock().expect("workers_seen lock") =
            Some((Instant::now(), workers.clone()));
        Ok(workers)
    }

    /// Drops the workers read for pending reasons if this heartbeat changed
    /// what they say of the worker.
    fn note_heartbeat(&self, worker_id: &str, state: WorkerState, note: &str) {
        let mut seen = self.inner.workers_seen.lock().expect("workers_seen lock");
        let stale = seen.as_ref().is_some_and(|(_, workers)| {
            workers
                .iter()
                .find(|w| w.id == worker_id)
                .is_none_or(|w| w.state != state || w.note != note)
        });
        if stale {
            *seen = None;
        }
    }

    fn forget_workers_seen(&self) {
        *self.inner.workers_seen.lock().expect("workers_seen lock") = None;
    }

    pub async fn job_with_history(&self, id: &str) -> Result<v1::Job> {
        let job = self
            .store()
            .job(id)
            .await?
            .ok_or_else(|| Error::JobNotFound(id.to_owned()))?;
        self.with_history(job).await
    }

    /// Applies an event and carries out the actions it produced.
    pub async fn apply(
        &self,
        id: &str,
        event: Event,
        attachments: Attachments,
    ) -> Result<(JobRecord, Outcome)> {
        let event_name = event.name();
        let request = ApplyRequest {
            id: id.to_owned(),
            event,
            attachments,
        };
        let (job, outcome) = self.inner.applies.call(request).await?;
        let now = job.updated_at_ms;
        if let Some(t) = &outcome.transition {
            tracing::info!(job_id = %id, event = event_name, from = %t.from, to = %t.to, reason = %t.reason, "job transition");
            self.inner
                .metrics
                .observe_transition(event_name, t, &job, now);
        }
        for action in &outcome.actions {
            match action {
                Action::WakeAcquirers => self.inner.work_available.notify_waiters(),
                // Revocations reach the worker in its next heartbeat or
                // progress reply; nothing to push.
                Action::RevokeLease { token, worker_id } => {
                    tracing::info!(job_id = %id, token, worker_id, "lease revoked");
                }
                Action::Finished => {}
            }
        }
        let _ = self.inner.job_changes.send(id.to_owned());
        Ok((job, outcome))
    }

    /// The job now, then each change, until it is final or the client goes.
    pub async fn watch(
        &self,
        id: String,
    ) -> Result<mpsc::Receiver<Result<v1::Job, tonic::Status>>> {
        let mut changes = self.inner.job_changes.subscribe();
        let first = self.job_with_history(&id).await?;
        let (tx, rx) = mpsc::channel(16);
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut last = first.clone();
            if tx.send(Ok(first)).await.is_err() || job_is_final(&last) {
                return;
            }
            loop {
                let changed = tokio::select! {
                    _ = cluster.inner.shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    changed = changes.recv() => changed,
                };
                match changed {
                    Ok(changed) if changed != id && changed != EVERY_JOB => continue,
                    // Lagged: we may have missed ours; read it again.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                let job = match cluster.job_with_history(&id).await {
                    Ok(job) => job,
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                };
                if job == last {
                    continue;
                }
                last = job.clone();
                if tx.send(Ok(job)).await.is_err() || job_is_final(&last) {
                    return;
                }
            }
        });
        Ok(rx)
    }

    pub async fn register(
        &self,
        id: String,
        name: String,
        capacity: Resources,
        labels: BTreeMap<String, String>,
        ffmpeg_version: String,
    ) -> Result<String> {
        if let Some(axis) = capacity.zero_axis() {
            return Err(Error::InvalidArgument {
                field: "capacity",
                message: format!("{axis} must be positive"),
            });
        }
        let id = if id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            id
        };
        let now = now_ms();
        let worker = WorkerRecord {
            id: id.clone(),
            name,
            capacity,
            labels,
            ffmpeg_version,
            state: WorkerState::Ready,
            registered_at_ms: now,
            last_heartbeat_ms: now,
            note: String::new(),
        };
        self.store().register_worker(&worker).await?;
        self.forget_workers_seen();
        tracing::info!(worker_id = %id, name = %worker.name, capacity = %capacity, "worker registered");
        self.inner.work_available.notify_waiters();
        Ok(id)
    }

    /// Renews what the worker still rightly holds; returns the leases it
    /// must stop, and whether it must register again.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        leases: &[LeaseRef],
        report: &WorkerReport,
        pending_acquire: Option<(u64, Resources)>,
    ) -> Result<(Vec<LeaseRef>, bool)> {
        if let Some((seq, free)) = pending_acquire {
            let mut pending = self.inner.pending_free.lock().expect("pending_free lock");
            let entry = pending.entry(worker_id.to_owned()).or_insert((seq, free));
            if seq >= entry.0 {
                *entry = (seq, free);
            }
            drop(pending);
            self.inner.work_available.notify_waiters();
        }
        let now = now_ms();
        let beat = Heartbeat {
            worker_id: worker_id.to_owned(),
            report: report.clone(),
        };
        let before = self.inner.heartbeats.call(beat).await?;
        let expires = now + self.inner.config.lease_ttl.as_millis() as i64;
        let revoked = self.store().renew(worker_id, leases, expires).await?;
        let reregister = matches!(before, None | Some(WorkerState::Lost));
        if let Some(before) = before {
            self.note_heartbeat(worker_id, report.state_after(before), &report.note);
        }
        let stops_taking_work = report.draining || report.quarantined;
        if stops_taking_work && before == Some(WorkerState::Ready) {
            if report.draining {
                tracing::info!(worker_id, "worker draining");
            } else {
                tracing::warn!(worker_id, note = %report.note, "worker quarantined itself");
            }
            // End its pending AcquireJobs now rather than at the deadline.
            self.inner.work_available.notify_waiters();
        }
        if !report.quarantined && before == Some(WorkerState::Quarantined) {
            tracing::info!(worker_id, "worker out of quarantine");
        }
        if reregister {
            tracing::info!(
                worker_id,
                revoked = revoked.len(),
                "heartbeat from unknown or lost worker"
            );
        }
        Ok((revoked, reregister))
    }

    /// The AcquireJobs long poll: leases what fits now, or waits for a
    /// submission, a requeue or a retry time, up to `wait`.
    pub async fn acquire(
        &self,
        worker_id: &str,
        free: Resources,
        seq: u64,
        max_jobs: usize,
        wait: Duration,
    ) -> Result<Vec<JobRecord>> {
        // What heartbeats said before this call began is older than what
        // the call says itself: only reports made while it waits count.
        self.forget_pending_free(worker_id, seq);
        let result = self
            .acquire_inner(worker_id, free, seq, max_jobs, wait)
            .await;
        self.forget_pending_free(worker_id, seq);
        result
    }

    fn forget_pending_free(&self, worker_id: &str, seq: u64) {
        let mut pending = self.inner.pending_free.lock().expect("pending_free lock");
        if pending.get(worker_id).is_some_and(|(s, _)| *s <= seq) {
            pending.remove(worker_id);
        }
    }

    /// What the worker has free for call `seq`: what it said when calling,
    /// or what it reported since for this same call.
    fn current_free(&self, worker_id: &str, seq: u64, initial: Resources) -> Resources {
        let pending = self.inner.pending_free.lock().expect("pending_free lock");
        match pending.get(worker_id) {
            Some((s, free)) if *s == seq && seq != 0 => *free,
            _ => initial,
        }
    }

    async fn acquire_inner(
        &self,
        worker_id: &str,
        initial_free: Resources,
        seq: u64,
        max_jobs: usize,
        wait: Duration,
    ) -> Result<Vec<JobRecord>> {
        let deadline = Instant::now() + wait.min(MAX_ACQUIRE_WAIT);
        let ttl_ms = self.inner.config.lease_ttl.as_millis() as i64;
        loop {
            // Register interest before looking, so a submission between the
            // look and the wait is not missed.
            let notified = self.inner.work_available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Checked every round: a worker that starts draining while it
            // waits here gets its answer at once (its heartbeat wakes us).
            match self.store().worker(worker_id).await? {
                Some(w) if w.state == WorkerState::Ready => {}
                Some(w) if matches!(w.state, WorkerState::Draining | WorkerState::Quarantined) => {
                    return Ok(vec![]);
                }
                _ => return Err(Error::UnknownWorker(worker_id.to_owned())),
            }
            let now = now_ms();
            let request = OwnedLeaseRequest {
                worker_id: worker_id.to_owned(),
                free: self.current_free(worker_id, seq, initial_free),
                max_jobs,
                ttl_ms,
            };
            let started = Instant::now();
            let leased = self.inner.leases.call(request).await?;
            self.inner
                .metrics
                .observe_scheduling(started.elapsed(), &leased, now);
            if !leased.is_empty() {
                for job in &leased {
                    tracing::info!(job_id = %job.id, worker_id, attempt = job.status.attempt, "job leased");
                    let _ = self.inner.job_changes.send(job.id.clone());
                }
                return Ok(leased);
            }
            let retry_at = self
                .store()
                .next_retry_at(now)
                .await?
                .map(|at| Instant::now() + Duration::from_millis((at - now).max(0) as u64));
            let wake_at = retry_at.map_or(deadline, |at| at.min(deadline));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake_at) => {
                    if Instant::now() >= deadline {
                        return Ok(vec![]);
                    }
                }
                _ = self.inner.shutdown.cancelled() => return Ok(vec![]),
            }
        }
    }

    /// Records progress; the first report moves the job to running. Returns
    /// whether the job's cancellation was requested.
    pub async fn progress(&self, lease: &LeaseRef, progress: Progress) -> Result<bool> {
        let report = ProgressReport {
            lease: lease.clone(),
            progress,
        };
        let attachments = Attachments {
            progress: Some(report.progress.clone()),
            ..Attachments::default()
        };
        match self.inner.progress_reports.call(report).await? {
            Some(status) if status.state == ffleet_core::JobState::Leased => {
                let event = Event::Start { token: lease.token };
                let (job, _) = self.apply(&lease.job_id, event, attachments).await?;
                Ok(job.status.cancel_requested)
            }
            Some(status) => {
                let _ = self.inner.job_changes.send(lease.job_id.clone());
                Ok(status.cancel_requested)
            }
            // Stale: say which lease is current, if the job exists.
            None => {
                let job = self
                    .store()
                    .job(&lease.job_id)
                    .await?
                    .ok_or_else(|| Error::JobNotFound(lease.job_id.clone()))?;
                Err(Error::Step(StepError::StaleLease {
                    presented: lease.token,
                    current: job.status.lease.map(|l| l.token),
                }))
            }
        }
    }

    /// One sweep: workers silent for a TTL are lost; expired leases are
    /// requeued (or failed, or cancelled) through the state machine.
    pub async fn reap(&self) -> Result<()> {
        let now = now_ms();
        let ttl = self.inner.config.lease_ttl.as_millis() as i64;
        for worker_id in self.store().mark_lost_workers(now - ttl).await? {
            tracing::warn!(worker_id, "worker lost: no heartbeat within the lease ttl");
            self.inner.metrics.workers_lost.inc();
            self.forget_workers_seen();
        }
        for lease in self.store().expired_leases(now).await? {
            let event = Event::LeaseExpired { token: lease.token };
            match self
                .apply(&lease.job_id, event, Attachments::default())
                .await
            {
                Ok(_) => {}
                // Renewed, completed or reaped by someone else meanwhile.
                Err(Error::Step(StepError::StaleLease { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Feeds what other masters sharing the database changed into this
    /// master's wakeups, until shutdown.
    pub async fn follow_other_masters(self) {
        let (sink, mut changes) = tokio::sync::mpsc::unbounded_channel();
        let store = self.inner.store.clone();
        let shutdown = self.inner.shutdown.clone();
        let listening = tokio::spawn(async move { store.listen(sink, shutdown).await });
        while let Some(change) = changes.recv().await {
            match change {
                Change::WorkAvailable => self.inner.work_available.notify_waiters(),
                Change::Job(id) => {
                    let _ = self.inner.job_changes.send(id);
                }
                Change::Everything => {
                    self.inner.work_available.notify_waiters();
                    let _ = self.inner.job_changes.send(EVERY_JOB.to_owned());
                }
            }
        }
        match listening.await {
            Ok(Err(e)) => tracing::error!(error = %e, "cannot follow other masters' changes"),
            Err(e) => tracing::error!(error = %e, "change listener panicked"),
            Ok(Ok(())) => {}
        }
    }

    /// Runs [`Cluster::reap`] every quarter TTL until shutdown.
    pub async fn run_reaper(self) {
        let period = (self.inner.config.lease_ttl / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(2));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.reap().await {
                tracing::error!(error = %e, "reaper sweep failed");
            }
        }
    }
}

/// Submissions, many to a transaction.
struct Submits {
    store: Arc<dyn Store>,
}

#[async_trait::async_trait]
impl BatchWrite for Submits {
    type Request = SubmitRequest;
    type Response = Submitted;

    async fn write(&self, requests: &[SubmitRequest]) -> Result<Each<Submitted>> {
        self.store.submit_many(requests, now_ms()).await
    }
}

/// State events, many to a transaction.
struct Applies {
    store: Arc<dyn Store>,
    retry: RetryPolicy,
}

#[async_trait::async_trait]
impl BatchWrite for Applies {
    type Request = ApplyRequest;
    type Response = (JobRecord, Outcome);

    async fn write(&self, requests: &[ApplyRequest]) -> Result<Each<(JobRecord, Outcome)>> {
        self.store.apply_many(requests, now_ms(), &self.retry).await
    }
}

/// Heartbeats, many workers' to a transaction.
struct Heartbeats {
    store: Arc<dyn Store>,
}

#[async_trait::async_trait]
impl BatchWrite for Heartbeats {
    type Request = Heartbeat;
    type Response = Option<WorkerState>;

    async fn write(&self, beats: &[Heartbeat]) -> Result<Each<Option<WorkerState>>> {
        let each = self.store.heartbeat_workers(beats, now_ms()).await?;
        Ok(each.into_iter().map(Ok).collect())
    }
}

/// Progress reports, many jobs' to a transaction.
struct ProgressReports {
    store: Arc<dyn Store>,
}

#[async_trait::async_trait]
impl BatchWrite for ProgressReports {
    type Request = ProgressReport;
    type Response = Option<LeaseStatus>;

    async fn write(&self, reports: &[ProgressReport]) -> Result<Each<Option<LeaseStatus>>> {
        let each = self.store.record_progress_many(reports, now_ms()).await?;
        Ok(each.into_iter().map(Ok).collect())
    }
}

/// A [`LeaseRequest`] that can wait in a queue.
struct OwnedLeaseRequest {
    worker_id: String,
    free: Resources,
    max_jobs: usize,
    ttl_ms: i64,
}

/// Leases, the workers asking at the same moment placed together.
struct Leases {
    store: Arc<dyn Store>,
}

#[async_trait::async_trait]
impl BatchWrite for Leases {
    type Request = OwnedLeaseRequest;
    type Response = Vec<JobRecord>;

    async fn write(&self, requests: &[OwnedLeaseRequest]) -> Result<Each<Vec<JobRecord>>> {
        let borrowed: Vec<LeaseRequest<'_>> = requests
            .iter()
            .map(|r| LeaseRequest {
                worker_id: &r.worker_id,
                free: r.free,
                max_jobs: r.max_jobs,
                ttl_ms: r.ttl_ms,
            })
            .collect();
        let each = self.store.lease_many(&borrowed, now_ms()).await?;
        Ok(each.into_iter().map(Ok).collect())
    }
}

fn job_is_final(job: &v1::Job) -> bool {
    ffleet_proto::convert::job_state_from_wire(job.state).is_some_and(|s| s.is_final())
}
