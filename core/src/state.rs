//! The job state machine: `step(status, event, now) -> Outcome`.
//!
//! ```text
//!             lease             start              complete
//!   queued ─────────▶ leased ─────────▶ running ─────────────▶ succeeded
//!     ▲  ▲               │                 │  fail(input) ───────▶ failed
//!     │  │  lease lost / │ infra failure   │  fail(timeout) ─────▶ timed_out
//!     │  └── (attempts ──┴─────────────────┘  fail(cancelled) ───▶ cancelled
//!     │       left)        no attempts left ─────────────────────▶ failed
//!     └── retry (from failed, cancelled, timed_out)
//! ```
//!
//! Every event that speaks for a lease carries its fencing token; a token
//! that is not the job's current one is refused ([`StepError::StaleLease`])
//! and changes nothing. The store persists the outcome; the shell carries out
//! the actions.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Leased,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Leased,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Leased => "leased",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::TimedOut => "timed_out",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// A final state: nothing happens to the job unless a user retries it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::TimedOut
        )
    }

    /// Whether a worker holds a lease on the job.
    pub fn is_leased(self) -> bool {
        matches!(self, JobState::Leased | JobState::Running)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Unreadable or invalid media, FFmpeg rejecting the input: never retried.
    Input,
    /// Worker lost, worker-side I/O error, killed by a resource guard: retried.
    Infrastructure,
    /// The job exceeded what it reserved (its memory limit, its pids limit):
    /// terminal, since the same request would fail the same way again.
    ResourceLimit,
    Timeout,
    Cancelled,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Input => "input",
            FailureKind::Infrastructure => "infrastructure",
            FailureKind::ResourceLimit => "resource_limit",
            FailureKind::Timeout => "timeout",
            FailureKind::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<FailureKind> {
        [
            FailureKind::Input,
            FailureKind::Infrastructure,
            FailureKind::ResourceLimit,
            FailureKind::Timeout,
            FailureKind::Cancelled,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    /// A short, stable cause for dashboards and scripts: `oom_killed`,
    /// `disk_full`, `timed_out`, `cancelled_forced` …
    #[serde(default)]
    pub code: String,
    pub reason: String,
    #[serde(default)]
    pub stderr_tail: Vec<String>,
}

/// A worker's claim on a job, fenced by its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub token: u64,
    pub worker_id: String,
    pub expires_at_ms: i64,
}

/// The part of a job the state machine reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    pub state: JobState,
    /// Leases granted so far in this run of attempts.
    pub attempt: u32,
    pub max_attempts: u32,
    pub lease: Option<Lease>,
    pub cancel_requested: bool,
    /// Retry backoff: the job is not leased before this instant.
    pub not_before_ms: i64,
    pub failure: Option<Failure>,
}

impl JobStatus {
    pub fn new_queued(max_attempts: u32, now_ms: i64) -> Self {
        JobStatus {
            state: JobState::Queued,
            attempt: 0,
            max_attempts,
            lease: None,
            cancel_requested: false,
            not_before_ms: now_ms,
            failure: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The scheduler grants a lease.
    Lease {
        token: u64,
        worker_id: String,
        expires_at_ms: i64,
    },
    /// The worker started FFmpeg.
    Start {
        token: u64,
    },
    /// A heartbeat keeps the lease alive.
    Renew {
        token: u64,
        expires_at_ms: i64,
    },
    Complete {
        token: u64,
    },
    Fail {
        token: u64,
        failure: Failure,
    },
    /// The lease ran past its expiry without renewal.
    LeaseExpired {
        token: u64,
    },
    /// A user asked to cancel.
    Cancel,
    /// A user asked to run a finished, unsuccessful job again.
    Retry,
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Lease { .. } => "lease",
            Event::Start { .. } => "start",
            Event::Renew { .. } => "renew",
            Event::Complete { .. } => "complete",
            Event::Fail { .. } => "fail",
            Event::LeaseExpired { .. } => "lease_expired",
            Event::Cancel => "cancel",
            Event::Retry => "retry",
        }
    }

    fn token(&self) -> Option<u64> {
        match self {
            Event::Start { token }
            | Event::Renew { token, .. }
            | Event::Complete { token }
            | Event::Fail { token, .. }
            | Event::LeaseExpired { token } => Some(*token),
            Event::Lease { .. } | Event::Cancel | Event::Retry => None,
        }
    }
}

/// What the shell must do after persisting an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A job became leasable: wake workers waiting in AcquireJobs.
    WakeAcquirers,
    /// Tell the lease's holder to stop the job.
    RevokeLease { token: u64, worker_id: String },
    /// The job reached a final state: wake its watchers, free what it held.
    Finished,
}

/// A change of state, recorded in the job's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: JobState,
    pub to: JobState,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: JobStatus,
    pub transition: Option<Transition>,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("stale lease token {presented}; the job's current lease is {current:?}")]
    StaleLease {
        presented: u64,
        current: Option<u64>,
    },
    #[error("cannot {event} a job that is {state}")]
    NotAllowed {
        state: JobState,
        event: &'static str,
    },
}

/// How infrastructure failures back off before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base_ms: i64,
    pub max_ms: i64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_ms: 1_000,
            max_ms: 5 * 60 * 1_000,
        }
    }
}

impl RetryPolicy {
    /// The delay before the attempt after `attempt`: base, 2·base, 4·base …
    pub fn backoff_ms(&self, attempt: u32) -> i64 {
        let doublings = attempt.saturating_sub(1).min(30);
        self.base_ms
            .saturating_mul(1i64 << doublings)
            .min(self.max_ms)
    }
}

/// Applies `event` to a job. Pure: the same inputs give the same outcome.
pub fn step(
    status: &JobStatus,
    event: Event,
    now_ms: i64,
    retry: &RetryPolicy,
) -> Result<Outcome, StepError> {
    use JobState::*;

    let not_allowed = || StepError::NotAllowed {
        state: status.state,
        event: event.name(),
    };
    // Fencing: any event speaking for a lease must hold the current one.
    if let Some(token) = event.token() {
        let current = status.lease.as_ref().map(|l| l.token);
        if !status.state.is_leased() || current != Some(token) {
            return Err(StepError::StaleLease {
                presented: token,
                current,
            });
        }
    }
    let mut next = status.clone();
    let lease_holder = status.lease.as_ref().map(|l| l.worker_id.clone());
    let outcome = |next: JobStatus, to: Option<(JobState, String)>, actions: Vec<Action>| Outcome {
        transition: to.map(|(to, reason)| Transition {
            from: status.state,
            to,
            reason,
        }),
        status: next,
        actions,
    };

    match (status.state, event.clone()) {
        (
            Queued,
            Event::Lease {
                token,
                worker_id,
                expires_at_ms,
            },
        ) => {
            next.state = Leased;
            next.attempt += 1;
            let reason = format!("leased to {worker_id} (attempt {})", next.attempt);
            next.lease = Some(Lease {
                token,
                worker_id,
                expires_at_ms,
            });
            Ok(outcome(next, Some((Leased, reason)), vec![]))
        }
        (Leased, Event::Start { .. }) => {
            next.state = Running;
            Ok(outcome(
                next,
                Some((Running, "ffmpeg started".into())),
                vec![],
            ))
        }
        // A repeated start (a retried RPC) is harmless.
        (Running, Event::Start { .. }) => Ok(outcome(next, None, vec![])),
        (Leased | Running, Event::Renew { expires_at_ms, .. }) => {
            if let Some(lease) = next.lease.as_mut() {
                lease.expires_at_ms = lease.expires_at_ms.max(expires_at_ms);
            }
            Ok(outcome(next, None, vec![]))
        }
        (Leased | Running, Event::Complete { .. }) => {
            next.state = Succeeded;
            next.lease = None;
            next.failure = None;
            Ok(outcome(
                next,
                Some((Succeeded, "completed".into())),
                vec![Action::Finished],
            ))
        }
        (Leased | Running, Event::Fail { failure, .. }) => {
            let final_state = match failure.kind {
                FailureKind::Input | FailureKind::ResourceLimit => Some(Failed),
                FailureKind::Timeout => Some(TimedOut),
                FailureKind::Cancelled => Some(Cancelled),
                // A job whose cancellation was asked for ends cancelled,
                // whatever stopped it.
                FailureKind::Infrastructure if status.cancel_requested => Some(Cancelled),
                FailureKind::Infrastructure => None,
            };
            match final_state {
                Some(to) => {
                    let reason = format!("{}: {}", failure.kind.as_str(), failure.reason);
                    next.state = to;
                    next.lease = None;
                    next.failure = Some(failure);
                    Ok(outcome(next, Some((to, reason)), vec![Action::Finished]))
                }
                None => Ok(requeue_or_fail(status, next, failure, now_ms, retry)),
            }
        }
        (Leased | Running, Event::LeaseExpired { .. }) => {
            let holder = lease_holder.unwrap_or_default();
            if status.cancel_requested {
                next.state = Cancelled;
                next.lease = None;
                return Ok(outcome(
                    next,
                    Some((Cancelled, format!("cancelled; lease of {holder} expired"))),
                    vec![Action::Finished],
                ));
            }
            let failure = Failure {
                kind: FailureKind::Infrastructure,
                code: "lease_expired".into(),
                reason: format!("lease expired: worker {holder} stopped heartbeating"),
                stderr_tail: vec![],
            };
            Ok(requeue_or_fail(status, next, failure, now_ms, retry))
        }
        (Queued, Event::Cancel) => {
            next.state = Cancelled;
            next.cancel_requested = true;
            Ok(outcome(
                next,
                Some((Cancelled, "cancelled while queued".into())),
                vec![Action::Finished],
            ))
        }
        (Leased | Running, Event::Cancel) => {
            if status.cancel_requested {
                return Ok(outcome(next, None, vec![]));
            }
            next.cancel_requested = true;
            let lease = status.lease.as_ref().expect("a leased job has a lease");
            Ok(outcome(
                next,
                None,
                vec![Action::RevokeLease {
                    token: lease.token,
                    worker_id: lease.worker_id.clone(),
                }],
            ))
        }
        (Failed | Cancelled | TimedOut, Event::Retry) => {
            next.state = Queued;
            next.attempt = 0;
            next.lease = None;
            next.cancel_requested = false;
            next.failure = None;
            next.not_before_ms = now_ms;
            Ok(outcome(
                next,
                Some((Queued, "retried by user".into())),
                vec![Action::WakeAcquirers],
            ))
        }
        _ => Err(not_allowed()),
    }
}

/// An infrastructure failure: queue the job again after a backoff if it has
/// attempts left, else fail it for good.
fn requeue_or_fail(
    status: &JobStatus,
    mut next: JobStatus,
    failure: Failure,
    now_ms: i64,
    retry: &RetryPolicy,
) -> Outcome {
    next.lease = None;
    let (to, reason, actions) = if status.attempt < status.max_attempts {
        let delay = retry.backoff_ms(status.attempt);
        next.not_before_ms = now_ms + delay;
        (
            JobState::Queued,
            format!(
                "requeued after attempt {} of {} ({}), retry in {} ms",
                status.attempt, status.max_attempts, failure.reason, delay
            ),
            vec![Action::WakeAcquirers],
        )
    } else {
        (
            JobState::Failed,
            format!(
                "gave up after {} attempts: {}",
                status.attempt, failure.reason
            ),
            vec![Action::Finished],
        )
    };
    next.state = to;
    next.failure = Some(failure);
    Outcome {
        status: next,
        transition: Some(Transition {
            from: status.state,
            to,
            reason,
        }),
        actions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RETRY: RetryPolicy = RetryPolicy {
        base_ms: 1000,
        max_ms: 8000,
    };

    fn lease(status: &JobStatus, token: u64) -> JobStatus {
        let event = Event::Lease {
            token,
            worker_id: "w1".into(),
            expires_at_ms: 15_000,
        };
        step(status, event, 0, &RETRY).unwrap().status
    }

    fn failure(kind: FailureKind) -> Failure {
        Failure {
            kind,
            code: String::new(),
            reason: "boom".into(),
            stderr_tail: vec![],
        }
    }

    #[test]
    fn happy_path_visits_every_state() {
        let s0 = JobStatus::new_queued(3, 0);
        let s1 = lease(&s0, 7);
        assert_eq!((s1.state, s1.attempt), (JobState::Leased, 1));
        let s2 = step(&s1, Event::Start { token: 7 }, 1, &RETRY).unwrap();
        assert_eq!(s2.status.state, JobState::Running);
        let s3 = step(&s2.status, Event::Complete { token: 7 }, 2, &RETRY).unwrap();
        assert_eq!(s3.status.state, JobState::Succeeded);
        assert_eq!(s3.status.lease, None);
        assert_eq!(s3.actions, vec![Action::Finished]);
    }

    #[test]
    fn a_stale_token_changes_nothing() {
        let s = lease(&JobStatus::new_queued(3, 0), 7);
        for event in [
            Event::Start { token: 6 },
            Event::Complete { token: 6 },
            Event::Fail {
                token: 8,
                failure: failure(FailureKind::Infrastructure),
            },
            Event::LeaseExpired { token: 6 },
            Event::Renew {
                token: 6,
                expires_at_ms: 99,
            },
        ] {
            let err = step(&s, event.clone(), 1, &RETRY).unwrap_err();
            assert!(
                matches!(
                    err,
                    StepError::StaleLease {
                        current: Some(7),
                        ..
                    }
                ),
                "{event:?} gave {err:?}"
            );
        }
        // A token for a job no longer leased is stale too.
        let done = step(&s, Event::Complete { token: 7 }, 1, &RETRY)
            .unwrap()
            .status;
        let err = step(&done, Event::Complete { token: 7 }, 2, &RETRY).unwrap_err();
        assert_eq!(
            err,
            StepError::StaleLease {
                presented: 7,
                current: None
            }
        );
    }

    #[test]
    fn input_failures_are_terminal_and_infrastructure_failures_retry() {
        let s = lease(&JobStatus::new_queued(3, 0), 1);
        let input = Event::Fail {
            token: 1,
            failure: failure(FailureKind::Input),
        };
        assert_eq!(
            step(&s, input, 5, &RETRY).unwrap().status.state,
            JobState::Failed
        );

        let infra = Event::Fail {
            token: 1,
            failure: failure(FailureKind::Infrastructure),
        };
        let out = step(&s, infra, 5, &RETRY).unwrap();
        assert_eq!(out.status.state, JobState::Queued);
        assert_eq!(out.status.not_before_ms, 5 + 1000);
        assert_eq!(out.actions, vec![Action::WakeAcquirers]);
    }

    #[test]
    fn lease_loss_requeues_until_attempts_run_out() {
        let mut s = JobStatus::new_queued(3, 0);
        let mut delays = vec![];
        for token in 1..=3 {
            s = lease(&s, token);
            let out = step(&s, Event::LeaseExpired { token }, 100, &RETRY).unwrap();
            s = out.status;
            delays.push(s.not_before_ms - 100);
        }
        assert_eq!(s.state, JobState::Failed);
        assert!(s.failure.unwrap().reason.contains("stopped heartbeating"));
        // Two requeues with doubling backoff, then the give-up.
        assert_eq!(&delays[..2], &[1000, 2000]);
    }

    #[test]
    fn timeout_and_cancel_end_in_their_own_states() {
        let s = lease(&JobStatus::new_queued(3, 0), 1);
        let timed_out = Event::Fail {
            token: 1,
            failure: failure(FailureKind::Timeout),
        };
        assert_eq!(
            step(&s, timed_out, 1, &RETRY).unwrap().status.state,
            JobState::TimedOut
        );

        let asked = step(&s, Event::Cancel, 1, &RETRY).unwrap();
        assert_eq!(asked.status.state, JobState::Leased);
        assert!(asked.status.cancel_requested);
        assert_eq!(
            asked.actions,
            vec![Action::RevokeLease {
                token: 1,
                worker_id: "w1".into()
            }]
        );
        // The worker's infrastructure-looking stop of a cancelled job is a cancel.
        let stopped = Event::Fail {
            token: 1,
            failure: failure(FailureKind::Infrastructure),
        };
        let out = step(&asked.status, stopped, 2, &RETRY).unwrap();
        assert_eq!(out.status.state, JobState::Cancelled);
        // And a cancelled job whose worker vanished ends cancelled, not requeued.
        let expired = step(&asked.status, Event::LeaseExpired { token: 1 }, 2, &RETRY).unwrap();
        assert_eq!(expired.status.state, JobState::Cancelled);
    }

    #[test]
    fn retry_requeues_only_unsuccessful_final_jobs() {
        let s = lease(&JobStatus::new_queued(1, 0), 1);
        let failed = step(
            &s,
            Event::Fail {
                token: 1,
                failure: failure(FailureKind::Input),
            },
            1,
            &RETRY,
        )
        .unwrap()
        .status;
        let again = step(&failed, Event::Retry, 9, &RETRY).unwrap().status;
        assert_eq!(
            (again.state, again.attempt, again.failure),
            (JobState::Queued, 0, None)
        );

        let succeeded = step(&s, Event::Complete { token: 1 }, 1, &RETRY)
            .unwrap()
            .status;
        assert!(matches!(
            step(&succeeded, Event::Retry, 2, &RETRY),
            Err(StepError::NotAllowed { .. })
        ));
        assert!(matches!(
            step(&succeeded, Event::Cancel, 2, &RETRY),
            Err(StepError::NotAllowed { .. })
        ));
    }

    fn any_event() -> impl Strategy<Value = Event> {
        let token = 0u64..4;
        let kind = prop_oneof![
            Just(FailureKind::Input),
            Just(FailureKind::Infrastructure),
            Just(FailureKind::ResourceLimit),
            Just(FailureKind::Timeout),
            Just(FailureKind::Cancelled),
        ];
        prop_oneof![
            token.clone().prop_map(|t| Event::Lease {
                token: t,
                worker_id: "w".into(),
                expires_at_ms: 10
            }),
            token.clone().prop_map(|t| Event::Start { token: t }),
            token.clone().prop_map(|t| Event::Complete { token: t }),
            (token.clone(), kind).prop_map(|(t, k)| Event::Fail {
                token: t,
                failure: failure(k)
            }),
            token.prop_map(|t| Event::LeaseExpired { token: t }),
            Just(Event::Cancel),
            Just(Event::Retry),
        ]
    }

    proptest! {
        /// Whatever events arrive, in whatever order: a job holds a lease
        /// exactly when it is leased or running, never exceeds its attempts,
        /// and a refused event leaves it as it was (the caller keeps the old
        /// status, so this is about `step` never panicking and staying
        /// consistent).
        #[test]
        fn invariants_hold_under_any_event_sequence(
            max_attempts in 1u32..4,
            events in proptest::collection::vec(any_event(), 0..40),
        ) {
            let mut s = JobStatus::new_queued(max_attempts, 0);
            for (now, event) in events.into_iter().enumerate() {
                if let Ok(out) = step(&s, event, now as i64, &RETRY) {
                    if let Some(t) = &out.transition {
                        prop_assert_eq!(t.from, s.state);
                        prop_assert_eq!(t.to, out.status.state);
                        prop_assert_ne!(t.from, t.to);
                    } else {
                        prop_assert_eq!(out.status.state, s.state);
                    }
                    s = out.status;
                }
                prop_assert_eq!(s.lease.is_some(), s.state.is_leased());
                prop_assert!(s.attempt <= s.max_attempts);
                if s.state == JobState::Succeeded {
                    prop_assert!(s.failure.is_none());
                }
            }
        }
    }
}
