//! `WorkerOptions -> build() -> run()`: register, then four loops sharing
//! one shutdown signal. Acquire (a long poll, woken early when a local job
//! frees resources), heartbeat, the memory-floor guard, and one task per
//! running job.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ffleet_core::Resources;
use ffleet_core::report::{Progress, ResourceUsage};
use ffleet_core::resources::format_size;
use ffleet_core::state::{Failure, FailureKind};
use ffleet_proto::convert::leased_spec;
use ffleet_proto::v1::{self, worker_service_client::WorkerServiceClient};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};
use tracing::Instrument;

use crate::breaker::Breaker;
use crate::capacity;
use crate::cgroup::{CgroupMode, Cgroups};
use crate::error::{Error, Result};
use crate::executor::{self, ExecConfig, JobRun, RunOutcome, StopReason};
use crate::host::Host;
use crate::ledger::Ledger;
use crate::metrics::{self, Metrics};

/// How long one AcquireJobs call may wait at the master.
const ACQUIRE_WAIT: Duration = Duration::from_secs(30);
/// Progress goes to the master at most this often per job.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
/// Unary calls give up after this.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// While the host, not the ledger, limits what the worker offers (or it is
/// quarantined), it looks again this often: host memory and disk change
/// without any local job ending.
const HOST_RECHECK: Duration = Duration::from_secs(1);
/// How often the memory-floor guard reads the host's free memory.
const MEMORY_GUARD_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Masters to talk to, in order of preference; the worker fails over to
    /// the next when one stops answering.
    pub masters: Vec<String>,
    pub name: String,
    pub work_dir: PathBuf,
    pub cpu_millis: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
    /// The longest SIGTERM-to-SIGKILL grace a job may ask for.
    pub max_grace: Duration,
    pub drain_timeout: Duration,
    pub max_download_bytes: u64,
    pub download_timeout: Duration,
    pub max_jobs: u32,
    /// Benchmarks only: complete jobs without running FFmpeg.
    pub noop_executor: bool,
    pub cgroups: CgroupMode,
    /// Job cgroups live under this path in each hierarchy.
    pub cgroup_parent: String,
    /// Most processes and threads one job may have.
    pub pids_limit: u32,
    /// Host memory kept free: admission offers only what lies above it, and
    /// below it the newest job is stopped. 0 turns both off.
    pub memory_floor: u64,
    /// Quarantine after this many worker-side failures in a row (0: never).
    pub quarantine_after: u32,
    pub quarantine_cooldown: Duration,
    /// Where `/metrics` is served; `None`: nowhere.
    pub metrics_listen: Option<String>,
}

impl WorkerOptions {
    pub async fn build(self, shutdown: CancellationToken) -> Result<Worker> {
        let jobs_dir = self.work_dir.join("jobs");
        tokio::fs::create_dir_all(&jobs_dir)
            .await
            .map_err(|e| Error::WorkDir(self.work_dir.clone(), e))?;
        let cgroups = match self.cgroups {
            CgroupMode::Off => None,
            // Per worker name, so a restarted worker cleans up its own past
            // and never another worker's jobs on the same host.
            mode => match Cgroups::open(
                &cgroup_parent(&self.cgroup_parent, &self.name),
                self.pids_limit,
            ) {
                Ok(cgroups) => {
                    let removed = cgroups.remove_leftovers();
                    if !removed.is_empty() {
                        tracing::warn!(
                            ?removed,
                            "killed and removed job cgroups left by a previous run"
                        );
                    }
                    tracing::info!(
                        version = cgroups.version(),
                        parent = cgroups.parent(),
                        "jobs run in per-job cgroups"
                    );
                    Some(cgroups)
                }
                Err(reason) if mode == CgroupMode::Required => return Err(Error::Cgroups(reason)),
                Err(reason) => {
                    tracing::warn!(%reason, "cgroups unavailable: jobs run unconfined");
                    None
                }
            },
        };
        remove_leftovers(&jobs_dir).await;
        let capacity = capacity::detect(
            &self.work_dir,
            self.cpu_millis,
            self.memory_bytes,
            self.disk_bytes,
        )?;
        let ffmpeg_version = capacity::ffmpeg_version(&self.ffmpeg).await?;
        if self.masters.is_empty() {
            return Err(Error::MasterAddress(
                String::new(),
                "no master given".into(),
            ));
        }
        let masters = self
            .masters
            .iter()
            .map(|m| master_client(m))
            .collect::<Result<Vec<_>>>()?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(3))
            .connect_timeout(Duration::from_secs(10))
            .timeout(self.download_timeout)
            .build()?;
        let metrics_listener = match &self.metrics_listen {
            Some(addr) => Some(ffleet_telemetry::metrics::bind(addr).await?),
            None => None,
        };
        let metrics = Metrics::new(ffleet_telemetry::metrics::registry());
        let exec = ExecConfig {
            confine_exe: std::env::current_exe()?,
            ffmpeg: self.ffmpeg.clone(),
            ffprobe: self.ffprobe.clone(),
            max_grace: self.max_grace,
            probe_timeout: Duration::from_secs(30),
            max_download_bytes: self.max_download_bytes,
            http,
            noop: self.noop_executor,
            metrics: Some(metrics.clone()),
        };
        Ok(Worker {
            shared: Arc::new(Shared {
                masters,
                current_master: AtomicUsize::new(0),
                ledger: Ledger::new(capacity),
                host: Host::detect(&self.work_dir),
                breaker: Mutex::new(Breaker::new(
                    self.quarantine_after,
                    self.quarantine_cooldown,
                )),
                exec,
                cgroups,
                jobs_dir,
                running: Mutex::new(HashMap::new()),
                pending_acquire: AtomicU64::new(0),
                identity: Mutex::new(Identity::default()),
                master_sees_quarantine: AtomicBool::new(false),
                metrics,
                metrics_listener: Mutex::new(metrics_listener),
                ffmpeg_version,
                options: self,
                shutdown,
                draining: CancellationToken::new(),
            }),
        })
    }
}

/// `ffleet/<name>`, with the name reduced to characters safe in a path.
fn cgroup_parent(root: &str, name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{}/{}",
        root.trim_matches('/'),
        safe.trim_start_matches('.')
    )
}

fn master_client(address: &str) -> Result<WorkerServiceClient<Channel>> {
    let url = ffleet_proto::master_url(address);
    let channel = Endpoint::from_shared(url.clone())
        .map_err(|e| Error::MasterAddress(url.clone(), e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(WorkerServiceClient::new(channel))
}

/// Scratch directories of a previous life (a crash) are garbage now, and
/// so are the temporary outputs they name.
async fn remove_leftovers(jobs_dir: &std::path::Path) {
    let Ok(mut entries) = tokio::fs::read_dir(jobs_dir).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let note = entry.path().join(executor::TEMP_OUTPUT_NOTE);
        if let Ok(temp) = tokio::fs::read_to_string(&note).await {
            tracing::info!(path = %temp, "removing leftover temporary output");
            let _ = tokio::fs::remove_file(temp.trim()).await;
        }
        tracing::info!(path = %entry.path().display(), "removing leftover scratch dir");
        let _ = tokio::fs::remove_dir_all(entry.path()).await;
    }
}

#[derive(Debug, Default, Clone)]
struct Identity {
    worker_id: String,
    heartbeat_interval: Duration,
}

struct RunningJob {
    token: u64,
    stop: watch::Sender<Option<StopReason>>,
    /// The memory guard stops the newest job first.
    started: Instant,
}

/// What the worker offers the master right now.
#[derive(Debug, Clone, Default, PartialEq)]
struct Offer {
    free: Resources,
    quarantined: bool,
    /// For operators: what cut the offer below the ledger's free
    /// resources, or why the worker is quarantined. Empty when nothing did.
    note: String,
}

struct Shared {
    masters: Vec<WorkerServiceClient<Channel>>,
    /// Index into `masters` of the one in use.
    current_master: AtomicUsize,
    ledger: Ledger,
    host: Host,
    breaker: Mutex<Breaker>,
    exec: ExecConfig,
    cgroups: Option<Cgroups>,
    jobs_dir: PathBuf,
    running: Mutex<HashMap<String, RunningJob>>,
    /// The sequence number of the AcquireJobs in flight, 0 when none: a
    /// heartbeat speaks for that call only. (One that said the next call's
    /// number while the worker was full told the master "nothing free" for
    /// a call that had room, and a slot idled until the next job ended.)
    pending_acquire: AtomicU64,
    identity: Mutex<Identity>,
    /// The last heartbeat told the master we are quarantined.
    master_sees_quarantine: AtomicBool,
    metrics: Metrics,
    /// Taken by `run`.
    metrics_listener: Mutex<Option<tokio::net::TcpListener>>,
    ffmpeg_version: String,
    options: WorkerOptions,
    /// SIGTERM: stop acquiring, drain.
    shutdown: CancellationToken,
    /// Cancelled once the drain is over: heartbeats stop.
    draining: CancellationToken,
}

#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
}

fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// `request` carrying the current span's context, so the master's handling
/// of it joins the job's trace.
fn traced<T>(mut request: Request<T>) -> Request<T> {
    let parent = ffleet_telemetry::trace::traceparent(&tracing::Span::current());
    if !parent.is_empty()
        && let Ok(value) = parent.parse()
    {
        request
            .metadata_mut()
            .insert(ffleet_telemetry::trace::TRACEPARENT, value);
    }
    request
}

/// Errors worth retrying: the master is restarting or unreachable.
fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Internal
    )
}

impl Worker {
    pub fn capacity(&self) -> Resources {
        self.shared.ledger.capacity()
    }

    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        let listener = self.shared.metrics_listener.lock().expect("metrics lock");
        listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Reads what is read, not counted, into the metrics before a scrape.
    fn refresh_metrics(&self) {
        let s = &self.shared;
        let m = &s.metrics;
        m.set_ledger(s.ledger.capacity(), s.ledger.free());
        if let Some(available) = s.host.available_memory() {
            m.memory_available.set(available as i64);
        }
        if let Some((free, size)) = s.host.disk_space() {
            m.scratch_free.set(free as i64);
            m.scratch_size.set(size as i64);
        }
        m.running_jobs
            .set(s.running.lock().expect("running lock").len() as i64);
        m.zombies.set(metrics::count_zombies());
        let quarantined = s
            .breaker
            .lock()
            .expect("breaker lock")
            .open_until(Instant::now())
            .is_some();
        m.quarantined.set(quarantined as i64);
    }

    /// The master in use: its index (for [`Worker::failed`]) and a client.
    fn master(&self) -> (usize, WorkerServiceClient<Channel>) {
        let i = self.shared.current_master.load(Ordering::SeqCst) % self.shared.masters.len();
        (i, self.shared.masters[i].clone())
    }

    /// Notes a call to master `index` that failed; a transient failure
    /// moves the worker on to the next master (all masters share one
    /// database, so any can serve it).
    fn failed(&self, index: usize, status: &tonic::Status) {
        let n = self.shared.masters.len();
        if n > 1
            && transient(status)
            && self
                .shared
                .current_master
                .compare_exchange(index, (index + 1) % n, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            tracing::warn!(from = index, to = (index + 1) % n, error = %status.message(), "failing over to the next master");
        }
    }

    /// Runs until shutdown, then drains and returns.
    pub async fn run(self) -> Result<()> {
        let s = &self.shared;
        self.register_until_done().await?;
        let tracker = TaskTracker::new();
        let heartbeat = tokio::spawn(self.clone().heartbeat_loop());
        let guard = tokio::spawn(self.clone().memory_guard_loop());
        let listener = s.metrics_listener.lock().expect("metrics lock").take();
        let metrics = listener.map(|l| {
            let worker = self.clone();
            let refresh: ffleet_telemetry::metrics::Refresh = Arc::new(move || {
                worker.refresh_metrics();
                Box::pin(async {})
            });
            tokio::spawn(ffleet_telemetry::metrics::serve(
                l,
                s.metrics.registry().clone(),
                refresh,
                s.draining.clone(),
            ))
        });
        self.acquire_loop(&tracker).await;

        // Drain: let running jobs finish up to the deadline, then hand back
        // the rest.
        tracker.close();
        let running = s.running.lock().expect("running lock").len();
        tracing::info!(
            running,
            deadline_s = s.options.drain_timeout.as_secs(),
            "draining"
        );
        if tokio::time::timeout(s.options.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            for job in s.running.lock().expect("running lock").values() {
                let _ = job.stop.send(Some(StopReason::Drain));
            }
            tracker.wait().await;
        }
        s.draining.cancel();
        let _ = heartbeat.await;
        let _ = guard.await;
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        tracing::info!("worker stopped");
        Ok(())
    }

    async fn register_until_done(&self) -> Result<()> {
        let mut backoff = Backoff::default();
        loop {
            match self.register().await {
                Ok(()) => return Ok(()),
                Err(Error::Rpc(status)) if transient(&status) => {
                    tracing::warn!(error = %status.message(), "master unreachable; retrying registration");
                    if !backoff.wait(&self.shared.shutdown).await {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn register(&self) -> Result<()> {
        let s = &self.shared;
        let previous = s.identity.lock().expect("identity lock").worker_id.clone();
        let request = v1::RegisterRequest {
            worker_id: previous,
            name: s.options.name.clone(),
            capacity: Some(s.ledger.capacity().into()),
            labels: s.options.labels.clone().into_iter().collect(),
            ffmpeg_version: s.ffmpeg_version.clone(),
        };
        let (master, mut client) = self.master();
        let reply = match client.register(with_timeout(request, RPC_TIMEOUT)).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                self.failed(master, &status);
                return Err(status.into());
            }
        };
        tracing::info!(worker_id = %reply.worker_id, capacity = %s.ledger.capacity(), "registered");
        *s.identity.lock().expect("identity lock") = Identity {
            worker_id: reply.worker_id,
            heartbeat_interval: Duration::from_millis(reply.heartbeat_interval_ms.max(100)),
        };
        Ok(())
    }

    fn identity(&self) -> Identity {
        self.shared.identity.lock().expect("identity lock").clone()
    }

    async fn acquire_loop(&self, tracker: &TaskTracker) {
        let s = &self.shared;
        let mut backoff = Backoff::default();
        let mut drain_announced = false;
        let mut next_seq: u64 = 1;
        while !s.shutdown.is_cancelled() {
            let released = s.ledger.next_release();
            tokio::pin!(released);
            released.as_mut().enable();
            let offer = self.offer();
            // Coming out of quarantine, the master must hear it before it
            // places anything here again.
            if s.master_sees_quarantine.load(Ordering::SeqCst) && !offer.quarantined {
                tracing::info!("quarantine over; taking jobs again");
                self.heartbeat_once(false).await;
            }
            let free = offer.free;
            let host_limited = offer.quarantined || !offer.note.is_empty();
            let slots = s.options.max_jobs as usize
                - s.running
                    .lock()
                    .expect("running lock")
                    .len()
                    .min(s.options.max_jobs as usize);
            if free.zero_axis().is_some() || slots == 0 {
                // Full: nothing can fit until a job ends, or, when the host
                // or the quarantine is what limits us, until that changes.
                tokio::select! {
                    _ = &mut released => continue,
                    _ = tokio::time::sleep(HOST_RECHECK), if host_limited => continue,
                    _ = s.shutdown.cancelled() => break,
                }
            }
            let seq = next_seq;
            next_seq += 1;
            s.pending_acquire.store(seq, Ordering::SeqCst);
            let request = v1::AcquireJobsRequest {
                worker_id: self.identity().worker_id,
                free: Some(free.into()),
                max_jobs: slots as u32,
                wait_ms: ACQUIRE_WAIT.as_millis() as u64,
                acquire_seq: seq,
            };
            let (master, mut client) = self.master();
            let call = client.acquire_jobs(with_timeout(request, ACQUIRE_WAIT + RPC_TIMEOUT));
            tokio::pin!(call);
            // A pending call is never abandoned: its reply may carry leases.
            let reply = loop {
                tokio::select! {
                    reply = &mut call => break reply,
                    // More room now: tell the master, which places with it.
                    _ = &mut released => {
                        released.set(s.ledger.next_release());
                        released.as_mut().enable();
                        self.heartbeat_once(false).await;
                    }
                    // Draining: tell the master, which ends the poll; take
                    // what it already leased (it runs within the drain).
                    _ = s.shutdown.cancelled(), if !drain_announced => {
                        drain_announced = true;
                        self.heartbeat_once(false).await;
                    }
                }
            };
            match reply {
                Ok(reply) => {
                    backoff.reset();
                    for lease in reply.into_inner().leases {
                        self.start_job(tracker, lease);
                    }
                }
                Err(status) if status.code() == Code::FailedPrecondition => {
                    tracing::warn!(error = %status.message(), "master does not know this worker; registering again");
                    if let Err(e) = self.register().await {
                        tracing::warn!(error = %e, "registration failed");
                        backoff.wait(&s.shutdown).await;
                    }
                }
                Err(status) => {
                    tracing::warn!(error = %status.message(), "acquire failed");
                    self.failed(master, &status);
                    backoff.wait(&s.shutdown).await;
                }
            }
            // The call is over (its leases reserved above): heartbeats speak
            // for none until the next one.
            s.pending_acquire.store(0, Ordering::SeqCst);
        }
    }

    fn start_job(&self, tracker: &TaskTracker, lease: v1::Lease) {
        let s = &self.shared;
        let job_id = lease.job_id.clone();
        let token = lease.token;
        let spec = match lease.spec.map(leased_spec) {
            Some(Ok(spec)) => spec,
            other => {
                let reason = match other {
                    Some(Err(e)) => e,
                    _ => "lease without a spec".into(),
                };
                tracing::error!(job_id, reason, "unusable lease");
                return self.hand_back(tracker, job_id, token, reason);
            }
        };
        if let Err(e) = s.ledger.reserve(&job_id, spec.resources) {
            tracing::error!(job_id, error = %e, "leased job does not fit; handing it back");
            return self.hand_back(tracker, job_id, token, e.to_string());
        }
        let (stop_tx, stop_rx) = watch::channel(None);
        s.running.lock().expect("running lock").insert(
            job_id.clone(),
            RunningJob {
                token,
                stop: stop_tx,
                started: Instant::now(),
            },
        );
        tracing::info!(
            job_id,
            token,
            attempt = lease.attempt,
            preset = spec.preset.name(),
            "job started"
        );
        // The run joins the job's trace: a child of the master's lease span.
        let run_span =
            tracing::info_span!("job.run", job_id = %job_id, token, attempt = lease.attempt);
        ffleet_telemetry::trace::set_parent(&run_span, &lease.trace_parent);
        let worker = self.clone();
        let run = async move {
            let scratch = worker.shared.jobs_dir.join(format!("{job_id}-{token}"));
            let (progress_tx, progress_rx) = watch::channel(None);
            let finished = CancellationToken::new();
            let reporter = tokio::spawn(worker.clone().progress_loop(
                job_id.clone(),
                token,
                progress_rx,
                finished.clone(),
            ));
            let cgroup = match &worker.shared.cgroups {
                Some(cgroups) if !worker.shared.exec.noop => {
                    let started = std::time::Instant::now();
                    match cgroups.create(&format!("job-{job_id}-{token}"), &spec.resources) {
                        Ok(cgroup) => {
                            tracing::debug!(
                                job_id,
                                setup_us = started.elapsed().as_micros() as u64,
                                "cgroup ready"
                            );
                            worker
                                .shared
                                .metrics
                                .observe_phase("cgroup_setup", started.elapsed());
                            Some(cgroup)
                        }
                        Err(reason) => {
                            tracing::error!(job_id, %reason, "cannot create the job's cgroup");
                            None
                        }
                    }
                }
                _ => None,
            };
            let outcome = if worker.shared.cgroups.is_some()
                && cgroup.is_none()
                && !worker.shared.exec.noop
            {
                RunOutcome::Failed(Failure {
                    kind: FailureKind::Infrastructure,
                    code: "cgroup_setup_failed".into(),
                    reason: "the worker could not create the job's cgroup".into(),
                    stderr_tail: vec![],
                })
            } else {
                let run = JobRun {
                    job_id: &job_id,
                    token,
                    spec: &spec,
                    scratch: &scratch,
                    cgroup: cgroup.as_ref(),
                };
                executor::execute(&worker.shared.exec, run, stop_rx, progress_tx)
                    .instrument(tracing::info_span!("ffmpeg"))
                    .await
            };
            let cleaning = std::time::Instant::now();
            finished.cancel();
            let _ = reporter.await;
            let usage = cgroup.as_ref().map(|c| {
                let u = c.usage();
                ResourceUsage {
                    cpu_time_ms: u.cpu_time_ns / 1_000_000,
                    peak_memory_bytes: u.peak_memory_bytes,
                }
            });
            if let Some(cgroup) = cgroup
                && let Err(e) = tokio::task::spawn_blocking(move || cgroup.remove())
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            {
                tracing::warn!(job_id, error = %e, "removing the job's cgroup");
            }
            if let Err(e) = tokio::fs::remove_dir_all(&scratch).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(job_id, error = %e, "removing scratch dir");
            }
            worker
                .shared
                .running
                .lock()
                .expect("running lock")
                .remove(&job_id);
            worker.shared.ledger.release(&job_id);
            worker
                .shared
                .metrics
                .observe_phase("cleanup", cleaning.elapsed());
            worker.shared.metrics.observe_outcome(&job_id, &outcome);
            worker.count_for_quarantine(&outcome).await;
            worker.report(&job_id, token, outcome, usage).await;
        };
        tracker.spawn(run.instrument(run_span));
    }

    /// Returns a lease the worker cannot run: an infrastructure failure, so
    /// the master requeues the job.
    fn hand_back(&self, tracker: &TaskTracker, job_id: String, token: u64, reason: String) {
        let failure = Failure {
            kind: FailureKind::Infrastructure,
            code: "cannot_run".into(),
            reason,
            stderr_tail: vec![],
        };
        let worker = self.clone();
        tracker.spawn(async move {
            worker
                .report(&job_id, token, RunOutcome::Failed(failure), None)
                .await
        });
    }

    /// Sends progress, at most every [`PROGRESS_INTERVAL`] (the first
    /// sample, which moves the job to running, at once); stops the job if
    /// the master says it was cancelled or the lease is no longer ours.
    /// Ends as soon as the run is `finished`, never waiting out a throttle.
    async fn progress_loop(
        self,
        job_id: String,
        token: u64,
        mut progress: watch::Receiver<Option<Progress>>,
        finished: CancellationToken,
    ) {
        let mut next_send = tokio::time::Instant::now();
        loop {
            tokio::select! {
                changed = progress.changed() => if changed.is_err() { return },
                _ = finished.cancelled() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next_send) => {}
                _ = finished.cancelled() => return,
            }
            let Some(sample) = progress.borrow_and_update().clone() else {
                continue;
            };
            self.shared.metrics.observe_progress(&job_id, &sample);
            next_send = tokio::time::Instant::now() + PROGRESS_INTERVAL;
            let request = v1::ReportProgressRequest {
                lease: Some(v1::LeaseRef {
                    job_id: job_id.clone(),
                    token,
                }),
                progress: Some(sample.into()),
            };
            let (master, mut client) = self.master();
            match client
                .report_progress(with_timeout(request, RPC_TIMEOUT))
                .await
            {
                Ok(reply) if reply.get_ref().cancel => self.stop_job(&job_id, StopReason::Revoked),
                Ok(_) => {}
                Err(status)
                    if status.code() == Code::FailedPrecondition
                        || status.code() == Code::NotFound =>
                {
                    tracing::warn!(job_id, error = %status.message(), "lease lost; stopping job");
                    self.stop_job(&job_id, StopReason::Revoked);
                }
                Err(status) => {
                    tracing::debug!(job_id, error = %status.message(), "progress report failed");
                    self.failed(master, &status);
                }
            }
        }
    }

    fn stop_job(&self, job_id: &str, reason: StopReason) {
        if let Some(job) = self
            .shared
            .running
            .lock()
            .expect("running lock")
            .get(job_id)
        {
            job.stop.send_if_modified(|current| {
                let first = current.is_none();
                if first {
                    *current = Some(reason);
                }
                first
            });
        }
    }

    /// Reports a job's outcome, retrying while the master is unreachable.
    /// A stale lease ends the attempt: the job is someone else's now.
    async fn report(
        &self,
        job_id: &str,
        token: u64,
        outcome: RunOutcome,
        usage: Option<ResourceUsage>,
    ) {
        let lease = Some(v1::LeaseRef {
            job_id: job_id.to_owned(),
            token,
        });
        let mut backoff = Backoff::default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let reporting = std::time::Instant::now();
        loop {
            let (master, mut client) = self.master();
            let sent = match &outcome {
                RunOutcome::Succeeded(bandwidth) => {
                    let request = v1::CompleteJobRequest {
                        lease: lease.clone(),
                        bandwidth: Some(bandwidth.clone().into()),
                        usage: usage.map(Into::into),
                    };
                    client
                        .complete_job(traced(with_timeout(request, RPC_TIMEOUT)))
                        .await
                        .map(|_| ())
                }
                RunOutcome::Failed(failure) => {
                    let request = v1::FailJobRequest {
                        lease: lease.clone(),
                        failure: Some(failure.clone().into()),
                        bandwidth: None,
                        usage: usage.map(Into::into),
                    };
                    client
                        .fail_job(traced(with_timeout(request, RPC_TIMEOUT)))
                        .await
                        .map(|_| ())
                }
            };
            match sent {
                Ok(()) => {
                    self.shared
                        .metrics
                        .observe_phase("report", reporting.elapsed());
                    match &outcome {
                        RunOutcome::Succeeded(b) => tracing::info!(
                            job_id,
                            output_bytes = b.output_bytes,
                            speed = b.speed,
                            "job succeeded"
                        ),
                        RunOutcome::Failed(f) => {
                            tracing::info!(job_id, kind = f.kind.as_str(), code = %f.code, reason = %f.reason, "job failed")
                        }
                    }
                    return;
                }
                Err(status) if transient(&status) && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(job_id, error = %status.message(), "report failed; retrying");
                    self.failed(master, &status);
                    backoff.wait(&CancellationToken::new()).await;
                }
                Err(status) => {
                    tracing::warn!(job_id, code = ?status.code(), error = %status.message(), "report refused");
                    return;
                }
            }
        }
    }

    /// What to offer the master: the ledger's free resources cut to what
    /// the host really has (memory above the floor, free scratch disk), and
    /// nothing while quarantined.
    fn offer(&self) -> Offer {
        let s = &self.shared;
        let now = Instant::now();
        {
            let breaker = s.breaker.lock().expect("breaker lock");
            if let Some(until) = breaker.open_until(now) {
                let left = Duration::from_secs((until - now).as_secs() + 1);
                return Offer {
                    free: Resources::ZERO,
                    quarantined: true,
                    note: format!(
                        "{}; taking jobs again in {}",
                        breaker.reason(),
                        humantime::format_duration(left)
                    ),
                };
            }
        }
        let mut free = s.ledger.free();
        let capacity = s.ledger.capacity();
        let mut notes = vec![];
        // The cut always applies; the note only when it is more than noise
        // (MemAvailable and free space move by megabytes all the time, and
        // the default capacity is the host's total).
        let noticeable = |ledger: u64, host: u64, capacity: u64| {
            ledger.saturating_sub(host) > (capacity / 20).max(64 << 20)
        };
        if let Some(available) = s.host.available_memory() {
            let floor = s.options.memory_floor;
            let usable = available.saturating_sub(floor);
            if noticeable(free.memory_bytes, usable, capacity.memory_bytes) {
                notes.push(format!(
                    "host memory: {} available above the {} floor",
                    format_size(usable),
                    format_size(floor)
                ));
            }
            free.memory_bytes = free.memory_bytes.min(usable);
        }
        if let Some(disk) = s.host.free_disk() {
            if noticeable(free.disk_bytes, disk, capacity.disk_bytes) {
                notes.push(format!("scratch disk: {} free", format_size(disk)));
            }
            free.disk_bytes = free.disk_bytes.min(disk);
        }
        Offer {
            free,
            quarantined: false,
            note: notes.join("; "),
        }
    }

    /// Feeds a finished job to the circuit breaker; when it opens, the
    /// master hears at once (ending any pending AcquireJobs).
    async fn count_for_quarantine(&self, outcome: &RunOutcome) {
        let failure = match outcome {
            RunOutcome::Succeeded(_) => None,
            RunOutcome::Failed(f) => Some(f),
        };
        let opened = {
            let mut breaker = self.shared.breaker.lock().expect("breaker lock");
            breaker
                .record(failure, Instant::now())
                .then(|| breaker.reason())
        };
        if let Some(reason) = opened {
            tracing::warn!(
                %reason,
                cooldown_s = self.shared.options.quarantine_cooldown.as_secs(),
                "worker quarantined: not taking jobs for the cool-down"
            );
            self.heartbeat_once(false).await;
        }
    }

    /// The OOM guard: when the host's available memory falls below the
    /// floor anyway (something outside the ledger grew), stop the newest
    /// job and say why. One at a time: the next only once the last is gone
    /// and memory is still short.
    async fn memory_guard_loop(self) {
        let s = &self.shared;
        let floor = s.options.memory_floor;
        if floor == 0 {
            return;
        }
        loop {
            tokio::select! {
                _ = s.draining.cancelled() => return,
                _ = tokio::time::sleep(MEMORY_GUARD_INTERVAL) => {}
            }
            let Some(available) = s.host.available_memory() else {
                continue;
            };
            if available >= floor {
                continue;
            }
            let running = s.running.lock().expect("running lock");
            let guard_stop_pending = running
                .values()
                .any(|job| matches!(*job.stop.borrow(), Some(StopReason::MemoryGuard { .. })));
            if guard_stop_pending {
                continue;
            }
            let newest = running
                .iter()
                .filter(|(_, job)| job.stop.borrow().is_none())
                .max_by_key(|(_, job)| job.started);
            if let Some((job_id, job)) = newest {
                tracing::warn!(
                    job_id,
                    available_bytes = available,
                    floor_bytes = floor,
                    "host memory below the floor: stopping the newest job"
                );
                let _ = job
                    .stop
                    .send(Some(StopReason::MemoryGuard { available, floor }));
                s.metrics.memory_guard_stops.inc();
            }
        }
    }

    async fn heartbeat_loop(self) {
        loop {
            let interval = self.identity().heartbeat_interval;
            tokio::select! {
                _ = self.shared.draining.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            self.heartbeat_once(true).await;
        }
    }

    /// One heartbeat: renews our leases (with `renew`), stops the revoked
    /// ones, registers again if the master forgot us. Without `renew` it
    /// only tells the master our free resources and draining state, which
    /// is all a pending AcquireJobs needs, at a fraction of the cost.
    async fn heartbeat_once(&self, renew: bool) {
        let s = &self.shared;
        let leases: Vec<v1::LeaseRef> = if !renew {
            vec![]
        } else {
            s.running
                .lock()
                .expect("running lock")
                .iter()
                .map(|(job_id, job)| v1::LeaseRef {
                    job_id: job_id.clone(),
                    token: job.token,
                })
                .collect()
        };
        let offer = self.offer();
        let request = v1::HeartbeatRequest {
            worker_id: self.identity().worker_id,
            leases,
            free: Some(offer.free.into()),
            draining: s.shutdown.is_cancelled(),
            acquire_seq: s.pending_acquire.load(Ordering::SeqCst),
            quarantined: offer.quarantined,
            note: offer.note,
        };
        let (master, mut client) = self.master();
        let started = Instant::now();
        let reply = client.heartbeat(with_timeout(request, RPC_TIMEOUT)).await;
        s.metrics
            .heartbeat_duration
            .observe(started.elapsed().as_secs_f64());
        match reply {
            Ok(reply) => {
                s.master_sees_quarantine
                    .store(offer.quarantined, Ordering::SeqCst);
                let reply = reply.into_inner();
                for lease in reply.revoked {
                    tracing::info!(job_id = %lease.job_id, token = lease.token, "lease revoked by master");
                    self.stop_job(&lease.job_id, StopReason::Revoked);
                }
                if reply.reregister
                    && !s.shutdown.is_cancelled()
                    && let Err(e) = self.register().await
                {
                    tracing::warn!(error = %e, "registering again failed");
                }
            }
            Err(status) => {
                s.metrics.heartbeat_failures.inc();
                tracing::warn!(error = %status.message(), "heartbeat failed");
                self.failed(master, &status);
            }
        }
    }
}

/// Exponential backoff for the error paths (never for polling).
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// Waits the current delay (false if shutdown came first) and doubles it.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}
