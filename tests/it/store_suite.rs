//! The store conformance suite: every test here runs unchanged against
//! SQLite and Postgres (see `store_suite!` at the bottom).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ffleet_core::Resources;
use ffleet_core::spec::{SpecPolicy, SubmittedSpec, validate};
use ffleet_core::state::{Event, Failure, FailureKind, JobState, RetryPolicy, StepError};
use ffleet_master::Error;
use ffleet_master::migrate::{self, MigrationState};
use ffleet_master::store::{
    self, ApplyRequest, Attachments, Change, DbOptions, JobCount, JobCounts, LeaseRef,
    LeaseRequest, SqlStore, Store, SubmitRequest, Submitted, TransitionRecord, WorkerRecord,
    WorkerReport, WorkerState,
};

use crate::helpers::{Backend, fresh_database};

const RETRY: RetryPolicy = RetryPolicy {
    base_ms: 1_000,
    max_ms: 60_000,
};

/// One test's database.
pub struct TestDb {
    url: String,
    backend: Backend,
    _dir: tempfile::TempDir,
}

impl TestDb {
    async fn new(backend: Backend) -> anyhow::Result<TestDb> {
        let dir = tempfile::tempdir()?;
        let url = fresh_database(backend, dir.path()).await?;
        Ok(TestDb {
            url,
            backend,
            _dir: dir,
        })
    }

    /// A store on this database, migrated: each call is another "master".
    async fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        Ok(store::open(&DbOptions::new(self.url.clone()), true).await?)
    }

    async fn raw(&self) -> anyhow::Result<SqlStore> {
        Ok(SqlStore::connect(&DbOptions::new(self.url.clone())).await?)
    }
}

fn spec(output: &str, priority: i32, cpu_millis: u32) -> ffleet_core::JobSpec {
    let raw = SubmittedSpec {
        input: "/media/in.mp4".into(),
        output: output.into(),
        preset: "h264-480p".into(),
        resources: Some(Resources::new(cpu_millis, 1 << 20, 1 << 20)),
        priority,
        ..SubmittedSpec::default()
    };
    validate(raw, &SpecPolicy::new("/out".into())).expect("valid spec")
}

async fn submit(
    store: &dyn Store,
    id: &str,
    priority: i32,
    cpu: u32,
    now: i64,
) -> anyhow::Result<()> {
    store
        .submit(
            id,
            None,
            &spec(&format!("{id}.mp4"), priority, cpu),
            "",
            now,
        )
        .await?;
    Ok(())
}

fn lease_request(worker_id: &str, cpu_millis: u32, max_jobs: usize) -> LeaseRequest<'_> {
    LeaseRequest {
        worker_id,
        free: Resources::new(cpu_millis, 1 << 40, 1 << 40),
        max_jobs,
        ttl_ms: 10_000,
    }
}

/// Jobs "a" and "b", submitted and leased to "w1": their lease tokens.
async fn two_leased(store: &dyn Store) -> anyhow::Result<(u64, u64)> {
    submit(store, "a", 0, 100, 1).await?;
    submit(store, "b", 0, 100, 2).await?;
    let leased = store.lease(lease_request("w1", 1000, 2), 10).await?;
    Ok((token_of(&leased[0]), token_of(&leased[1])))
}

fn token_of(store_job: &ffleet_master::store::JobRecord) -> u64 {
    store_job.status.lease.as_ref().expect("leased").token
}

pub async fn submit_is_idempotent_per_key(db: &TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let s = spec("a.mp4", 0, 1000);
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let first = store.submit("j1", Some("key"), &s, trace, 1).await?;
    assert!(matches!(first, Submitted::Created(ref j) if j.status.state == JobState::Queued));
    let again = store.submit("j2", Some("key"), &s, "", 2).await?;
    // The job keeps the trace it was submitted in (a resubmission's is not
    // taken).
    assert!(matches!(again, Submitted::Existing(ref j) if j.id == "j1" && j.trace_parent == trace));
    let other = store
        .submit("j3", Some("key"), &spec("b.mp4", 0, 1000), "", 3)
        .await;
    assert!(
        matches!(other, Err(Error::IdempotencyConflict(_))),
        "{other:?}"
    );
    assert!(store.job("j2").await?.is_none());
    assert_eq!(store.history("j1").await?.len(), 1);
    Ok(())
}

pub async fn apply_steps_the_state_machine_and_fences_tokens(db: &TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    submit(store.as_ref(), "j1", 0, 1000, 10).await?;
    let leased = store.lease(lease_request("w1", 1000, 1), 20).await?;
    let token = token_of(&leased[0]);
    store
        .apply(
            "j1",
            Event::Start { token },
            Attachments::default(),
            30,
            &RETRY,
        )
        .await?;
    let stale = store
        .apply(
            "j1",
            Event::Complete { token: token + 1 },
            Attachments::default(),
            40,
            &RETRY,
        )
        .await;
    assert!(
        matches!(stale, Err(Error::Step(StepError::StaleLease { .. }))),
        "{stale:?}"
    );
    let unchanged = store.job("j1").await?.unwrap();
    assert_eq!(unchanged.status.state, JobState::Running);
    let (done, _) = store
        .apply(
            "j1",
            Event::Complete { token },
            Attachments::default(),
            50,
            &RETRY,
        )
        .await?;
    assert_eq!(done.status.state, JobState::Succeeded);
    let stored = store.job("j1").await?.unwrap();
    assert_eq!(stored.status, done.status);
    assert_eq!(stored.finished_at_ms, Some(50));
    let history = store.history("j1").await?;
    let states: Vec<JobState> = history.iter().map(|t| t.to).collect();
    assert_eq!(
        states,
        [
            JobState::Queued,
            JobState::Leased,
            JobState::Running,
            JobState::Succeeded
        ]
    );
    assert_eq!(history.last().unwrap().lease_token, Some(token));
    assert!(matches!(
        store
            .apply("missing", Event::Cancel, Attachments::default(), 60, &RETRY)
            .await,
        Err(Error::JobNotFound(_))
    ));
    Ok(())
}

fn apply_request(id: &str, event: Event) -> ApplyRequest {
    ApplyRequest {
        id: id.into(),
        event,
        attachments: Attachments::default(),
    }
}

/// Group commit: one transaction carries many callers' events, each seeing
/// what the ones before it did, each failing alone.
pub async fn a_batch_of_events_applies_in_order_and_each_fails_alone(
    db: &TestDb,
) -> anyhow::Result<()> {
    let store = db.open().await?;
    let (a, b) = two_leased(store.as_ref()).await?;
    let batch = [
        apply_request("a", Event::Start { token: a }),
        apply_request("b", Event::Start { token: b + 7 }),
        apply_request("a", Event::Complete { token: a }),
        apply_request("missing", Event::Cancel),
        apply_request("b", Event::Start { token: b }),
        apply_request("a", Event::Cancel),
    ];
    let results = store.apply_many(&batch, 20, &RETRY).await?;
    assert_eq!(results.len(), batch.len());
    let state = |i: usize| -> Option<JobState> {
        results[i].as_ref().ok().map(|(job, _)| job.status.state)
    };
    assert_eq!(state(0), Some(JobState::Running));
    assert!(
        matches!(results[1], Err(Error::Step(StepError::StaleLease { .. }))),
        "{:?}",
        results[1]
    );
    // The third event sees the job the first one started.
    assert_eq!(state(2), Some(JobState::Succeeded));
    assert!(matches!(results[3], Err(Error::JobNotFound(_))));
    assert_eq!(state(4), Some(JobState::Running));
    assert!(
        matches!(results[5], Err(Error::Step(StepError::NotAllowed { .. }))),
        "{:?}",
        results[5]
    );
    // What was returned is what was stored, histories included.
    for (id, i) in [("a", 2), ("b", 4)] {
        let stored = store.job(id).await?.unwrap();
        assert_eq!(&stored, &results[i].as_ref().unwrap().0, "job {id}");
    }
    let a_states: Vec<JobState> = store.history("a").await?.iter().map(|t| t.to).collect();
    assert_eq!(
        a_states,
        [
            JobState::Queued,
            JobState::Leased,
            JobState::Running,
            JobState::Succeeded
        ]
    );
    let b_history = store.history("b").await?;
    assert_eq!(b_history.len(), 3, "the stale start left no trace");
    assert_eq!(b_history[2].lease_token, Some(b));
    assert!(store.apply_many(&[], 30, &RETRY).await?.is_empty());
    Ok(())
}

/// Group commit of submissions: keys repeated within a batch or already
/// stored resolve to one job; a created job reads back as returned.
pub async fn a_batch_of_submissions_resolves_keys_and_reads_back(
    db: &TestDb,
) -> anyhow::Result<()> {
    let store = db.open().await?;
    store
        .submit("old", Some("k-old"), &spec("old.mp4", 0, 100), "", 1)
        .await?;
    let request = |id: &str, key: Option<&str>, output: &str| SubmitRequest {
        id: id.into(),
        idempotency_key: key.map(Into::into),
        spec: spec(output, 0, 100),
        trace_parent: String::new(),
    };
    let batch = [
        request("j1", Some("k1"), "one.mp4"),
        request("j2", Some("k1"), "one.mp4"),
        request("j3", Some("k1"), "other.mp4"),
        request("j4", None, "four.mp4"),
        request("j5", Some("k-old"), "old.mp4"),
        request("j6", Some("k-old"), "changed.mp4"),
    ];
    let results = store.submit_many(&batch, 5).await?;
    let id_of = |i: usize| match &results[i] {
        Ok(Submitted::Created(j)) => ("created", j.id.clone()),
        Ok(Submitted::Existing(j)) => ("existing", j.id.clone()),
        Err(e) => ("error", e.to_string()),
    };
    assert_eq!(id_of(0), ("created", "j1".into()));
    assert_eq!(id_of(1), ("existing", "j1".into()));
    assert!(matches!(results[2], Err(Error::IdempotencyConflict(_))));
    assert_eq!(id_of(3), ("created", "j4".into()));
    assert_eq!(id_of(4), ("existing", "old".into()));
    assert!(matches!(results[5], Err(Error::IdempotencyConflict(_))));
    for i in [0, 3] {
        let Ok(Submitted::Created(job)) = &results[i] else {
            unreachable!()
        };
        assert_eq!(store.job(&job.id).await?.as_ref(), Some(job));
        assert_eq!(
            store.history(&job.id).await?,
            [TransitionRecord::submitted(5)]
        );
    }
    for id in ["j2", "j3", "j5", "j6"] {
        assert!(store.job(id).await?.is_none(), "{id} was not inserted");
    }
    Ok(())
}

/// Workers asking at the same moment are placed together, each on what
/// it has free; a worker asking twice in one batch is served once.
pub async fn a_batch_of_leases_places_over_every_asking_worker(db: &TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    for (i, cpu) in [800, 300, 300, 300].into_iter().enumerate() {
        submit(store.as_ref(), &format!("j{i}"), 0, cpu, i as i64).await?;
    }
    let requests = [
        lease_request("small", 600, 4),
        lease_request("big", 1000, 4),
        lease_request("small", 600, 4),
    ];
    let each = store.lease_many(&requests, 10).await?;
    let ids = |i: usize| -> Vec<&str> { each[i].iter().map(|j| j.id.as_str()).collect() };
    assert_eq!(ids(1), ["j0"], "only big fits the 800m job");
    assert_eq!(ids(0), ["j1", "j2"], "small takes what fits its 600m");
    assert!(ids(2).is_empty(), "a worker named twice is served once");
    for (i, worker) in [(0, "small"), (1, "big")] {
        for job in &each[i] {
            let stored = store.job(&job.id).await?.unwrap();
            assert_eq!(&stored, job);
            assert_eq!(stored.worker_id.as_deref(), Some(worker));
            assert_eq!(stored.status.state, JobState::Leased);
        }
    }
    assert_eq!(
        store.job("j3").await?.unwrap().status.state,
        JobState::Queued
    );
    let tokens: HashSet<u64> = each.iter().flatten().map(token_of).collect();
    assert_eq!(tokens.len(), 3, "each lease has its own token");
    Ok(())
}

/// Heartbeats batched in one transaction: each sees the state the ones
/// before it left; unknown and lost workers are answered, not written.
pub async fn a_batch_of_heartbeats_applies_in_order(db: &TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    for id in ["w1", "w2"] {
        let worker = WorkerRecord {
            id: id.into(),
            name: id.into(),
            capacity: Resources::new(1000, 1 << 30, 1 << 30),
            labels: Default::default(),
            ffmpeg_version: String::new(),
            state: WorkerState::Ready,
            registered_at_ms: 1,
            last_heartbeat_ms: 1,
            note: String::new(),
        };
        store.register_worker(&worker).await?;
    }
    assert_eq!(store.mark_lost_workers(2).await?.len(), 2);
    let mut w1 = store.workers().await?[0].clone();
    w1.state = WorkerState::Ready;
    store.register_worker(&w1).await?;
    let beat = |id: &str, quarantined: bool, note: &str| store::Heartbeat {
        worker_id: id.into(),
        report: WorkerReport {
            quarantined,
            note: note.into(),
            ..WorkerReport::default()
        },
    };
    let befores = store
        .heartbeat_workers(
            &[
                beat("w1", true, "tired"),
                beat("w2", false, ""),
                beat("nobody", false, ""),
                beat("w1", false, "better"),
            ],
            50,
        )
        .await?;
    assert_eq!(
        befores,
        [
            Some(WorkerState::Ready),
            Some(WorkerState::Lost),
            None,
            Some(WorkerState::Quarantined)
        ]
    );
    let w1 = store.worker("w1").await?.unwrap();
    assert_eq!(
        (w1.state, w1.note.as_str(), w1.last_heartbeat_ms),
        (WorkerState::Ready, "better", 50)
    );
    let w2 = store.worker("w2").await?.unwrap();
    assert_eq!((w2.state, w2.last_heartbeat_ms), (WorkerState::Lost, 1));
    Ok(())
}

/// Progress batched in one transaction: fenced by token per report, and
/// each report learns its job's state and whether it was cancelled.
pub async fn a_batch_of_progress_reports_is_fenced_per_report(db: &TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let (a, b) = two_leased(store.as_ref()).await?;
    store
        .apply(
            "a",
            Event::Start { token: a },
            Attachments::default(),
            20,
            &RETRY,
        )
        .await?;
    store
        .apply("a", Event::Cancel, Attachments::default(), 25, &RETRY)
        .await?;
    let at = |out_time_us: u64| ffleet_core::report::Progress {
        out_time_us,
        ..Default::default()
    };
    let report = |job_id: &str, token: u64, out: u64| store::ProgressReport {
        lease: LeaseRef {
            job_id: job_id.into(),
            token,
        },
        progress: at(out),
    };
    let answers = store
        .record_progress_many(
            &[
                report("a", a, 100),
                report("b", b, 200),
                report("a", a + 50, 300),
                report("missing", 1, 400),
                report("b", b, 500),
            ],
            30,
        )
        .await?;
    let running_cancelled = store::LeaseStatus {
        state: JobState::Running,
        cancel_requested: true,
    };
    let leased_only = store::LeaseStatus {
        state: JobState::Leased,
        cancel_requested: false,
    };
    assert_eq!(
        answers,
        [
            Some(running_cancelled),
            Some(leased_only),
            None,
            None,
            Some(leased_only)
        ]
    );
    let a_job = store.job("a").await?.unwrap();
    assert_eq!(
        a_job.progress.map(|p| p.out_time_us),
        Some(100),
        "the stale report wrote nothing"
    );
    let b_job = store.job("b").await?.unwrap();
    assert_eq!(
        b_job.progress.map(|p| p.out_time_us),
        Some(500),
        "the last report counts"
    );
    assert_eq!(b_job.updated_at_ms, 30);
    Ok(())
}

pub async fn lease_follows_priority_fit_and_backoff(db: &TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    submit(store.as_ref(), "low", 0, 500, 1).await?;
    submit(store.as_ref(), "high", 5, 1500, 2).await?;
    submit(store.as_ref(), "big", 9, 4000, 3).await?;
    // 2 CPUs: "big" fits nowhere, "high" goes first, "low" fits beside it.
    let leased = store.lease(lease_request("w1", 2000, 8), 10).await?;
    let ids: Vec<&str> = leased.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["high", "low"]);
    assert!(
        store
            .lease(lease_request("w1", 2000, 8), 11)
            .await?
            .is_empty()
    );
    // An infrastructure failure requeues with backoff: not leasable before.
    let token = token_of(&leased[1]);
    let failure = Failure {
        kind: FailureKind::Infrastructure,
        code: "disk_full".into(),
        reason: "disk".into(),
        stderr_tail: vec![],
    };
    let (requeued, _) = store
        .apply(
            "low",
            Event::Fail { token, failure },
            Attachments::default(),
            100,
            &RETRY,
        )
        .await?;
    assert_eq!(
        (requeued.status.state, requeued.status.not_before_ms),
        (JobState::Queued, 1_100)
    );
    assert_eq!(store.next_retry_at(100).await?, Some(1_100));
    assert!(
        store
            .lease(lease_request("w1", 1000, 8), 1_099)
            .await?
            .is_empty()
    );
    let again = store.lease(lease_request("w1", 1000, 8), 1_100).await?;
    assert_eq!(again[0].id, "low");
    assert_eq!(again[0].status.attempt, 2);
    assert!(token_of(&again[0]) > token, "tokens only grow");
    Ok(())
}

pub async fn concurrent_masters_never_lease_a_job_twice(db: &TestDb) -> anyhow::Result<()> {
    let masters = [db.open().await?, db.open().await?];
    for i in 0..200 {
        submit(masters[0].as_ref(), &format!("j{i:03}"), 0, 100, i).await?;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let store = masters[t % 2].clone();
        tasks.spawn(async move {
            let worker = format!("w{t}");
            let mut mine = vec![];
            loop {
                let got = store.lease(lease_request(&worker, 1000, 5), 1_000).await?;
                if got.is_empty() {
                    return Ok::<_, anyhow::Error>(mine);
                }
                mine.extend(got.into_iter().map(|j| j.id));
            }
        });
    }
    let mut all = vec![];
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 200, "every job leased");
    assert_eq!(unique.len(), 200, "no job leased twice");
    for id in ["j000", "j123", "j199"] {
        assert_eq!(masters[1].lease_history(id).await?.len(), 1);
    }
    // The pools report what they hold, for the metrics.
    let stats = masters[0].pool_stats();
    assert!(stats.size >= 1 && stats.idle <= stats.size, "{stats:?}");
    assert_eq!(stats.in_use, stats.size - stats.idle);
    Ok(())
}

pub async fn renew_extends_live_leases_and_revokes_the_rest(db: &TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let (a, b) = two_leased(store.as_ref()).await?;
    store
        .apply("b", Event::Cancel, Attachments::default(), 20, &RETRY)
        .await?;
    let asked = [
        LeaseRef {
            job_id: "a".into(),
            token: a,
        },
        LeaseRef {
            job_id: "b".into(),
            token: b,
        },
        LeaseRef {
            job_id: "a".into(),
            token: a + 100,
        },
    ];
    let revoked = store.renew("w1", &asked, 50_000).await?;
    assert_eq!(
        revoked,
        asked[1..].to_vec(),
        "cancelled and stale leases are revoked"
    );
    let job = store.job("a").await?.unwrap();
    assert_eq!(job.status.lease.unwrap().expires_at_ms, 50_000);
    // Another worker cannot renew w1's lease.
    assert_eq!(store.renew("w2", &asked[..1], 90_000).await?.len(), 1);
    // Progress is fenced the same way.
    let progress = ffleet_core::report::Progress::default();
    assert_eq!(
        store.record_progress(&asked[0], &progress, 60).await?,
        Some(false)
    );
    assert_eq!(
        store.record_progress(&asked[1], &progress, 60).await?,
        Some(true)
    );
    assert_eq!(store.record_progress(&asked[2], &progress, 60).await?, None);
    Ok(())
}

pub async fn an_expired_lease_is_requeued_exactly_once(db: &TestDb) -> anyhow::Result<()> {
    let masters = [db.open().await?, db.open().await?];
    submit(masters[0].as_ref(), "j", 0, 100, 1).await?;
    let mut request = lease_request("w1", 1000, 1);
    request.ttl_ms = 100;
    let token = token_of(&masters[0].lease(request, 1_000).await?[0]);
    assert!(masters[1].expired_leases(1_050).await?.is_empty());
    let expired = masters[1].expired_leases(1_200).await?;
    assert_eq!(
        expired,
        vec![LeaseRef {
            job_id: "j".into(),
            token
        }]
    );
    // Both masters' reapers see it; exactly one requeues it.
    let reap = |i: usize| {
        let store = masters[i].clone();
        async move {
            store
                .apply(
                    "j",
                    Event::LeaseExpired { token },
                    Attachments::default(),
                    1_200,
                    &RETRY,
                )
                .await
        }
    };
    let (first, second) = tokio::join!(reap(0), reap(1));
    let outcomes = [first.is_ok(), second.is_ok()];
    assert_eq!(
        outcomes.iter().filter(|ok| **ok).count(),
        1,
        "{first:?} {second:?}"
    );
    let job = masters[0].job("j").await?.unwrap();
    assert_eq!(
        (job.status.state, job.status.attempt),
        (JobState::Queued, 1)
    );
    let requeues = masters[0]
        .history("j")
        .await?
        .iter()
        .filter(|t| t.from == JobState::Leased && t.to == JobState::Queued)
        .count();
    assert_eq!(requeues, 1);
    Ok(())
}

pub async fn workers_register_heartbeat_and_get_lost(db: &TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let worker = WorkerRecord {
        id: "w1".into(),
        name: "node-a".into(),
        capacity: Resources::new(2000, 4 << 30, 10 << 30),
        labels: [("zone".to_owned(), "a".to_owned())].into(),
        ffmpeg_version: "ffmpeg version 5.1".into(),
        state: WorkerState::Ready,
        registered_at_ms: 1,
        last_heartbeat_ms: 1,
        note: String::new(),
    };
    let ready = WorkerReport::default();
    let quarantined = WorkerReport {
        quarantined: true,
        note: "quarantined: disk_full x3".into(),
        ..WorkerReport::default()
    };
    let draining = WorkerReport {
        draining: true,
        ..WorkerReport::default()
    };
    store.register_worker(&worker).await?;
    assert_eq!(store.worker("w1").await?.unwrap(), worker);
    assert_eq!(
        store.heartbeat_worker("w1", &ready, 100).await?,
        Some(WorkerState::Ready)
    );
    assert_eq!(store.heartbeat_worker("nobody", &ready, 100).await?, None);

    // Quarantine comes and goes with the reports, note and all.
    assert_eq!(
        store.heartbeat_worker("w1", &quarantined, 110).await?,
        Some(WorkerState::Ready)
    );
    let w = store.worker("w1").await?.unwrap();
    assert_eq!(
        (w.state, w.note.as_str()),
        (WorkerState::Quarantined, "quarantined: disk_full x3")
    );
    assert_eq!(
        store.heartbeat_worker("w1", &ready, 120).await?,
        Some(WorkerState::Quarantined)
    );
    let w = store.worker("w1").await?.unwrap();
    assert_eq!((w.state, w.note.as_str()), (WorkerState::Ready, ""));

    assert_eq!(store.mark_lost_workers(50).await?, Vec::<String>::new());
    assert_eq!(store.mark_lost_workers(200).await?, vec!["w1".to_owned()]);
    // Lost stays lost, whatever it says, until it registers again.
    assert_eq!(
        store.heartbeat_worker("w1", &ready, 300).await?,
        Some(WorkerState::Lost)
    );
    assert_eq!(store.worker("w1").await?.unwrap().state, WorkerState::Lost);
    store.register_worker(&worker).await?;
    assert_eq!(
        store.heartbeat_worker("w1", &draining, 400).await?,
        Some(WorkerState::Ready)
    );
    assert_eq!(
        store.worker("w1").await?.unwrap().state,
        WorkerState::Draining
    );
    // Draining is final until it registers again, quarantine or not.
    store.heartbeat_worker("w1", &quarantined, 410).await?;
    assert_eq!(
        store.worker("w1").await?.unwrap().state,
        WorkerState::Draining
    );
    submit(store.as_ref(), "j", 0, 100, 1).await?;
    store.lease(lease_request("w1", 1000, 1), 10).await?;
    let listed = store.workers().await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "w1");
    let held = store.held_jobs().await?;
    assert_eq!(held.get("w1"), Some(&vec!["j".to_owned()]));
    assert_eq!(held.len(), 1);
    Ok(())
}

pub async fn list_pages_newest_first_and_filters_by_state(db: &TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    for i in 0..5 {
        submit(store.as_ref(), &format!("j{i}"), 0, 100, i).await?;
    }
    store
        .apply("j2", Event::Cancel, Attachments::default(), 10, &RETRY)
        .await?;
    let page1 = store.list_jobs(None, 2, None).await?;
    let page2 = store.list_jobs(None, 2, Some(&page1[1].id)).await?;
    let ids: Vec<&str> = page1.iter().chain(&page2).map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["j4", "j3", "j2", "j1"]);
    let queued: Vec<String> = store
        .list_jobs(Some(JobState::Queued), 10, None)
        .await?
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(queued, ["j4", "j3", "j1", "j0"]);
    assert_eq!(
        store
            .list_jobs(Some(JobState::Cancelled), 10, None)
            .await?
            .len(),
        1
    );
    Ok(())
}

pub async fn migrations_go_down_and_up_keeping_data(db: &TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    submit(store.as_ref(), "kept", 3, 100, 1).await?;
    drop(store);
    let status = |url: String| async move {
        let rows = migrate::status(&url).await?;
        Ok::<_, anyhow::Error>(
            rows.iter()
                .map(|m| (m.version, m.state))
                .collect::<Vec<_>>(),
        )
    };
    use MigrationState::{Applied, Pending};
    assert_eq!(
        migrate::down(&db.url, None).await?,
        vec![5],
        "down reverts the latest"
    );
    assert_eq!(migrate::down(&db.url, Some(1)).await?, vec![4, 3, 2]);
    assert_eq!(
        status(db.url.clone()).await?,
        [
            (1, Applied),
            (2, Pending),
            (3, Pending),
            (4, Pending),
            (5, Pending)
        ]
    );
    assert_eq!(migrate::up(&db.url).await?, vec![2, 3, 4, 5]);
    let store = db.open().await?;
    let kept = store
        .job("kept")
        .await?
        .expect("data survives the later migrations' down and up");
    assert_eq!(kept.spec.priority, 3);
    drop(store);
    assert_eq!(migrate::down(&db.url, Some(0)).await?, vec![5, 4, 3, 2, 1]);
    assert_eq!(
        status(db.url.clone()).await?,
        [
            (1, Pending),
            (2, Pending),
            (3, Pending),
            (4, Pending),
            (5, Pending)
        ]
    );
    let store = db.open().await?;
    assert!(
        store.job("kept").await?.is_none(),
        "down to zero drops everything"
    );
    Ok(())
}

pub async fn schema_mismatches_are_refused(db: &TestDb) -> anyhow::Result<()> {
    // Behind: --no-migrate refuses a database that lacks migrations.
    let behind = store::open(&DbOptions::new(db.url.clone()), false).await;
    assert!(
        matches!(behind, Err(Error::SchemaBehind { ref pending }) if pending == &[1, 2, 3, 4, 5]),
        "{:?}",
        behind.err()
    );
    // Ahead: a migration this build does not know.
    db.open().await?;
    let raw = db.raw().await?;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(9_999i64)
    .bind("from the future")
    .bind(true)
    .bind(vec![0u8])
    .bind(0i64)
    .execute(raw.pool())
    .await?;
    let ahead = store::open(&DbOptions::new(db.url.clone()), true).await;
    assert!(
        matches!(
            ahead,
            Err(Error::SchemaTooNew {
                database: 9_999,
                known: 5
            })
        ),
        "{:?}",
        ahead.err()
    );
    assert!(matches!(
        migrate::up(&db.url).await,
        Err(Error::SchemaTooNew { .. })
    ));
    Ok(())
}

pub async fn other_masters_hear_of_changes_when_the_database_is_shared(
    db: &TestDb,
) -> anyhow::Result<()> {
    let listener = db.open().await?;
    let writer = db.open().await?;
    let (sink, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listening = {
        let (listener, shutdown) = (listener.clone(), shutdown.clone());
        tokio::spawn(async move { listener.listen(sink, shutdown).await })
    };
    if db.backend == Backend::Sqlite {
        // One process per SQLite file: nothing to hear, and listen says so
        // by returning at once.
        tokio::time::timeout(Duration::from_secs(5), listening).await???;
        return Ok(());
    }
    // Postgres: LISTEN is set up asynchronously; submit until heard.
    let mut heard = HashSet::new();
    for i in 0..50 {
        submit(writer.as_ref(), &format!("n{i}"), 0, 100, i).await?;
        while let Ok(Some(change)) =
            tokio::time::timeout(Duration::from_millis(100), changes.recv()).await
        {
            heard.insert(change);
        }
        if heard.contains(&Change::WorkAvailable) && heard.contains(&Change::Job(format!("n{i}"))) {
            shutdown.cancel();
            listening.await??;
            return Ok(());
        }
    }
    anyhow::bail!("no notification heard: {heard:?}")
}

pub async fn job_counts_group_by_state_and_priority(db: &TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    assert_eq!(store.job_counts(100).await?, JobCounts::default());
    submit(store.as_ref(), "a", 5, 100, 10).await?;
    submit(store.as_ref(), "b", 5, 100, 20).await?;
    submit(store.as_ref(), "c", 0, 100, 30).await?;
    // Not runnable before 1000: it does not count as waiting yet.
    submit(store.as_ref(), "later", 0, 100, 1000).await?;
    // The highest priority first: "a" is leased.
    assert_eq!(store.lease(lease_request("w1", 100, 1), 40).await?.len(), 1);
    let mut counts = store.job_counts(100).await?;
    counts.rows.sort_by_key(|r| (r.state.as_str(), r.priority));
    let row = |state, priority, count| JobCount {
        state,
        priority,
        count,
    };
    assert_eq!(
        counts.rows,
        vec![
            row(JobState::Leased, 5, 1),
            row(JobState::Queued, 0, 2),
            row(JobState::Queued, 5, 1),
        ]
    );
    assert_eq!(counts.oldest_runnable_ms, Some(20));
    Ok(())
}

macro_rules! store_suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $test() -> anyhow::Result<()> {
                    super::$test(&TestDb::new(Backend::Sqlite).await?).await
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test]
                async fn $test() -> anyhow::Result<()> {
                    super::$test(&TestDb::new(Backend::Postgres).await?).await
                }
            )*
        }
    };
}

store_suite!(
    submit_is_idempotent_per_key,
    apply_steps_the_state_machine_and_fences_tokens,
    a_batch_of_events_applies_in_order_and_each_fails_alone,
    a_batch_of_submissions_resolves_keys_and_reads_back,
    a_batch_of_leases_places_over_every_asking_worker,
    a_batch_of_heartbeats_applies_in_order,
    a_batch_of_progress_reports_is_fenced_per_report,
    lease_follows_priority_fit_and_backoff,
    concurrent_masters_never_lease_a_job_twice,
    renew_extends_live_leases_and_revokes_the_rest,
    an_expired_lease_is_requeued_exactly_once,
    workers_register_heartbeat_and_get_lost,
    list_pages_newest_first_and_filters_by_state,
    migrations_go_down_and_up_keeping_data,
    schema_mismatches_are_refused,
    other_masters_hear_of_changes_when_the_database_is_shared,
    job_counts_group_by_state_and_priority,
);
