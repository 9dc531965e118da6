//! The gRPC edge: wire messages in, [`Cluster`] calls, wire messages out.
//! Errors become `tonic::Status` here and nowhere else ([`status`]).

use std::pin::Pin;
use std::time::Duration;

use ffleet_core::state::{Event, Failure};
use ffleet_proto::convert::{failure_kind_from_wire, job_state_from_wire};
use ffleet_proto::v1::{
    self, job_service_server::JobService, worker_service_server::WorkerService,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use tracing::field::Empty;

use crate::cluster::Cluster;
use crate::error::Error;
use crate::store::{
    Attachments, JobRecord, LeaseRef, TransitionRecord, WorkerRecord, WorkerReport,
};

/// `span`, as a child of the span the caller's `traceparent` metadata
/// names, if any.
fn traced<T>(request: &Request<T>, span: tracing::Span) -> tracing::Span {
    if let Some(parent) = request
        .metadata()
        .get(ffleet_telemetry::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
    {
        ffleet_telemetry::trace::set_parent(&span, parent);
    }
    span
}

/// The one conversion from master errors to gRPC statuses.
pub fn status(err: Error) -> Status {
    let message = err.to_string();
    match err {
        Error::InvalidSpec(_) | Error::InvalidArgument { .. } => Status::invalid_argument(message),
        Error::JobNotFound(_) => Status::not_found(message),
        Error::UnknownWorker(_) | Error::Step(_) => Status::failed_precondition(message),
        Error::IdempotencyConflict(_) => Status::already_exists(message),
        Error::ShuttingDown => Status::unavailable(message),
        Error::Database(_)
        | Error::Migrate(_)
        | Error::Corrupt(_)
        | Error::UnsupportedDatabase(_)
        | Error::SchemaTooNew { .. }
        | Error::SchemaBehind { .. }
        | Error::Io(_) => {
            tracing::error!(error = %message, "internal error");
            Status::internal(message)
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn required<T>(field: &'static str, value: Option<T>) -> Result<T, Status> {
    value.ok_or_else(|| {
        status(Error::InvalidArgument {
            field,
            message: "required".into(),
        })
    })
}

fn lease_ref(lease: Option<v1::LeaseRef>) -> Result<LeaseRef, Status> {
    let lease = required("lease", lease)?;
    Ok(LeaseRef {
        job_id: lease.job_id,
        token: lease.token,
    })
}

pub fn job_to_wire(job: JobRecord, history: Vec<TransitionRecord>) -> v1::Job {
    let lease_token = job.status.lease.as_ref().map_or(0, |l| l.token);
    v1::Job {
        id: job.id,
        spec: Some(job.spec.into()),
        state: v1::JobState::from(job.status.state) as i32,
        attempt: job.status.attempt,
        created_at_ms: job.created_at_ms,
        updated_at_ms: job.updated_at_ms,
        worker_id: job.worker_id.unwrap_or_default(),
        lease_token,
        cancel_requested: job.status.cancel_requested,
        failure: job.status.failure.map(Into::into),
        progress: job.progress.map(Into::into),
        bandwidth: job.bandwidth.map(Into::into),
        history: history
            .into_iter()
            .map(|t| v1::Transition {
                from: v1::JobState::from(t.from) as i32,
                to: v1::JobState::from(t.to) as i32,
                at_ms: t.at_ms,
                reason: t.reason,
                worker_id: t.worker_id.unwrap_or_default(),
                lease_token: t.lease_token.unwrap_or(0),
            })
            .collect(),
        idempotency_key: job.idempotency_key.unwrap_or_default(),
        not_before_ms: job.status.not_before_ms,
        finished_at_ms: job.finished_at_ms.unwrap_or(0),
        usage: job.usage.map(Into::into),
        pending_reason: String::new(),
    }
}

fn worker_to_wire(w: WorkerRecord, jobs: Vec<String>) -> v1::Worker {
    v1::Worker {
        id: w.id,
        name: w.name,
        capacity: Some(w.capacity.into()),
        labels: w.labels.into_iter().collect(),
        ffmpeg_version: w.ffmpeg_version,
        state: w.state.as_str().into(),
        registered_at_ms: w.registered_at_ms,
        last_heartbeat_ms: w.last_heartbeat_ms,
        running_jobs: jobs,
        note: w.note,
    }
}

#[tonic::async_trait]
impl JobService for Cluster {
    async fn submit_job(&self, request: Request<v1::SubmitJobRequest>) -> Reply<v1::Job> {
        // The root of the job's trace (or a child of the caller's).
        let span = traced(&request, tracing::info_span!("job.submit", job_id = Empty));
        let req = request.into_inner();
        let spec = required("spec", req.spec)?;
        let key = Some(req.idempotency_key).filter(|k| !k.is_empty());
        let trace_parent = ffleet_telemetry::trace::traceparent(&span);
        let job = self
            .submit(spec.into(), key, &trace_parent)
            .instrument(span.clone())
            .await
            .map_err(status)?;
        span.record("job_id", job.id.as_str());
        Ok(Response::new(job))
    }

    async fn get_job(&self, request: Request<v1::GetJobRequest>) -> Reply<v1::Job> {
        let job = self
            .job_with_history(&request.into_inner().id)
            .await
            .map_err(status)?;
        Ok(Response::new(job))
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Reply<v1::ListJobsResponse> {
        let req = request.into_inner();
        let state = match req.state {
            0 => None,
            n => Some(job_state_from_wire(n).ok_or_else(|| {
                status(Error::InvalidArgument {
                    field: "state",
                    message: format!("unknown state {n}"),
                })
            })?),
        };
        let page_size = match req.page_size {
            0 => 50,
            n => n.min(1000),
        };
        let before = Some(req.page_token).filter(|t| !t.is_empty());
        let jobs = self
            .store()
            .list_jobs(state, page_size, before.as_deref())
            .await
            .map_err(status)?;
        let next_page_token = if jobs.len() == page_size as usize {
            jobs.last().map(|j| j.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(v1::ListJobsResponse {
            jobs: jobs.into_iter().map(|j| job_to_wire(j, vec![])).collect(),
            next_page_token,
        }))
    }

    async fn cancel_job(&self, request: Request<v1::CancelJobRequest>) -> Reply<v1::Job> {
        let id = request.into_inner().id;
        self.apply(&id, Event::Cancel, Attachments::default())
            .await
            .map_err(status)?;
        Ok(Response::new(
            self.job_with_history(&id).await.map_err(status)?,
        ))
    }

    async fn retry_job(&self, request: Request<v1::RetryJobRequest>) -> Reply<v1::Job> {
        let id = request.into_inner().id;
        self.apply(&id, Event::Retry, Attachments::default())
            .await
            .map_err(status)?;
        Ok(Response::new(
            self.job_with_history(&id).await.map_err(status)?,
        ))
    }

    type WatchJobStream = Pin<Box<dyn Stream<Item = Result<v1::Job, Status>> + Send>>;

    async fn watch_job(
        &self,
        request: Request<v1::WatchJobRequest>,
    ) -> Reply<Self::WatchJobStream> {
        let rx = self.watch(request.into_inner().id).await.map_err(status)?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_workers(
        &self,
        _request: Request<v1::ListWorkersRequest>,
    ) -> Reply<v1::ListWorkersResponse> {
        let workers = self.store().workers().await.map_err(status)?;
        let mut held = self.store().held_jobs().await.map_err(status)?;
        Ok(Response::new(v1::ListWorkersResponse {
            workers: workers
                .into_iter()
                .map(|w| {
                    let jobs = held.remove(&w.id).unwrap_or_default();
                    worker_to_wire(w, jobs)
                })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl WorkerService for Cluster {
    async fn register(&self, request: Request<v1::RegisterRequest>) -> Reply<v1::RegisterResponse> {
        let req = request.into_inner();
        let capacity = required("capacity", req.capacity)?;
        let id = self
            .register(
                req.worker_id,
                req.name,
                capacity.into(),
                req.labels.into_iter().collect(),
                req.ffmpeg_version,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(v1::RegisterResponse {
            worker_id: id,
            lease_ttl_ms: self.config().lease_ttl.as_millis() as u64,
            heartbeat_interval_ms: self.config().heartbeat_interval().as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Reply<v1::HeartbeatResponse> {
        let req = request.into_inner();
        let leases: Vec<LeaseRef> = req
            .leases
            .into_iter()
            .map(|l| LeaseRef {
                job_id: l.job_id,
                token: l.token,
            })
            .collect();
        let report = WorkerReport {
            draining: req.draining,
            quarantined: req.quarantined,
            note: req.note,
        };
        let pending =
            (req.acquire_seq != 0).then(|| (req.acquire_seq, req.free.unwrap_or_default().into()));
        let (revoked, reregister) = self
            .heartbeat(&req.worker_id, &leases, &report, pending)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::HeartbeatResponse {
            revoked: revoked
                .into_iter()
                .map(|l| v1::LeaseRef {
                    job_id: l.job_id,
                    token: l.token,
                })
                .collect(),
            reregister,
        }))
    }

    async fn acquire_jobs(
        &self,
        request: Request<v1::AcquireJobsRequest>,
    ) -> Reply<v1::AcquireJobsResponse> {
        let req = request.into_inner();
        let free = required("free", req.free)?.into();
        let wait = Duration::from_millis(req.wait_ms);
        let jobs = self
            .acquire(
                &req.worker_id,
                free,
                req.acquire_seq,
                req.max_jobs.max(1) as usize,
                wait,
            )
            .await
            .map_err(status)?;
        let ttl_ms = self.config().lease_ttl.as_millis() as u64;
        Ok(Response::new(v1::AcquireJobsResponse {
            leases: jobs
                .into_iter()
                .map(|j| {
                    let token = j.status.lease.as_ref().map_or(0, |l| l.token);
                    let span = tracing::info_span!(
                        "job.lease",
                        job_id = %j.id,
                        worker_id = %req.worker_id,
                        token,
                        attempt = j.status.attempt
                    );
                    ffleet_telemetry::trace::set_parent(&span, &j.trace_parent);
                    v1::Lease {
                        token,
                        attempt: j.status.attempt,
                        trace_parent: ffleet_telemetry::trace::traceparent(&span),
                        job_id: j.id,
                        spec: Some(j.spec.into()),
                        ttl_ms,
                    }
                })
                .collect(),
        }))
    }

    async fn report_progress(
        &self,
        request: Request<v1::ReportProgressRequest>,
    ) -> Reply<v1::ReportProgressResponse> {
        let req = request.into_inner();
        let lease = lease_ref(req.lease)?;
        let progress = req.progress.unwrap_or_default().into();
        let cancel = self.progress(&lease, progress).await.map_err(status)?;
        Ok(Response::new(v1::ReportProgressResponse { cancel }))
    }

    async fn complete_job(
        &self,
        request: Request<v1::CompleteJobRequest>,
    ) -> Reply<v1::CompleteJobResponse> {
        let span = traced(&request, tracing::info_span!("job.complete"));
        async move {
            let req = request.into_inner();
            let lease = lease_ref(req.lease)?;
            let attachments = Attachments {
                progress: None,
                bandwidth: req.bandwidth.map(Into::into),
                usage: req.usage.map(Into::into),
            };
            self.apply(
                &lease.job_id,
                Event::Complete { token: lease.token },
                attachments,
            )
            .await
            .map_err(status)?;
            Ok(Response::new(v1::CompleteJobResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn fail_job(&self, request: Request<v1::FailJobRequest>) -> Reply<v1::FailJobResponse> {
        let span = traced(&request, tracing::info_span!("job.fail"));
        async move {
            let req = request.into_inner();
            let lease = lease_ref(req.lease)?;
            let failure = required("failure", req.failure)?;
            let kind = failure_kind_from_wire(failure.kind).ok_or_else(|| {
                status(Error::InvalidArgument {
                    field: "failure.kind",
                    message: "required".into(),
                })
            })?;
            let event = Event::Fail {
                token: lease.token,
                failure: Failure {
                    kind,
                    code: failure.code,
                    reason: failure.reason,
                    stderr_tail: failure.stderr_tail,
                },
            };
            let attachments = Attachments {
                progress: None,
                bandwidth: req.bandwidth.map(Into::into),
                usage: req.usage.map(Into::into),
            };
            self.apply(&lease.job_id, event, attachments)
                .await
                .map_err(status)?;
            Ok(Response::new(v1::FailJobResponse {}))
        }
        .instrument(span)
        .await
    }
}
