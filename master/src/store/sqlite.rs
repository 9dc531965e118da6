//! The embedded default: one SQLite file in WAL mode.
//!
//! Writes go through a pool of exactly one connection, so write transactions
//! are serialized inside the process and never hit SQLite's lock-upgrade
//! deadlock; reads use a separate pool and run concurrently (WAL).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use ffleet_core::Resources;
use ffleet_core::placement::{self, Candidate, Slot};
use ffleet_core::report::Progress;
use ffleet_core::spec::JobSpec;
use ffleet_core::state::{self, Event, JobState, JobStatus, Lease, Outcome, RetryPolicy};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::{
    Attachments, JobRecord, LeaseRef, LeaseRequest, Store, Submitted, TransitionRecord,
    WorkerRecord, WorkerState, from_json, json,
};
use crate::error::{Error, Result};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

pub fn migrator() -> &'static sqlx::migrate::Migrator {
    &MIGRATOR
}

/// How many queued jobs one lease call considers.
const SCAN_LIMIT: i64 = 256;

const JOB_COLUMNS: &str = "id, idempotency_key, spec, state, attempt, max_attempts, worker_id, \
    lease_token, lease_expires_at_ms, cancel_requested, not_before_ms, failure, progress, \
    bandwidth, created_at_ms, updated_at_ms";

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database and applies pending
    /// migrations.
    pub async fn open(url: &str) -> Result<Self> {
        let store = Self::connect(url).await?;
        MIGRATOR.run(&store.writer).await?;
        Ok(store)
    }

    /// Opens without migrating (for `migrate status`).
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore { writer, reader })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.writer
    }
}

fn job_from_row(row: &SqliteRow) -> Result<JobRecord> {
    let id: String = row.try_get("id")?;
    let state_name: String = row.try_get("state")?;
    let state = JobState::parse(&state_name)
        .ok_or_else(|| Error::Corrupt(format!("job {id}: unknown state {state_name:?}")))?;
    let worker_id: Option<String> = row.try_get("worker_id")?;
    let token: Option<i64> = row.try_get("lease_token")?;
    let lease = match (token, state.is_leased()) {
        (Some(token), true) => Some(Lease {
            token: token as u64,
            worker_id: worker_id.clone().unwrap_or_default(),
            expires_at_ms: row
                .try_get::<Option<i64>, _>("lease_expires_at_ms")?
                .unwrap_or(0),
        }),
        _ => None,
    };
    let failure: Option<String> = row.try_get("failure")?;
    let progress: Option<String> = row.try_get("progress")?;
    let bandwidth: Option<String> = row.try_get("bandwidth")?;
    Ok(JobRecord {
        spec: from_json("spec", &row.try_get::<String, _>("spec")?)?,
        idempotency_key: row.try_get("idempotency_key")?,
        status: JobStatus {
            state,
            attempt: row.try_get::<i64, _>("attempt")? as u32,
            max_attempts: row.try_get::<i64, _>("max_attempts")? as u32,
            lease,
            cancel_requested: row.try_get("cancel_requested")?,
            not_before_ms: row.try_get("not_before_ms")?,
            failure: failure.map(|f| from_json("failure", &f)).transpose()?,
        },
        worker_id,
        progress: progress.map(|p| from_json("progress", &p)).transpose()?,
        bandwidth: bandwidth.map(|b| from_json("bandwidth", &b)).transpose()?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        id,
    })
}

fn worker_from_row(row: &SqliteRow) -> Result<WorkerRecord> {
    let state: String = row.try_get("state")?;
    Ok(WorkerRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        capacity: Resources::new(
            row.try_get::<i64, _>("cpu_millis")? as u32,
            row.try_get::<i64, _>("memory_bytes")? as u64,
            row.try_get::<i64, _>("disk_bytes")? as u64,
        ),
        labels: from_json("labels", &row.try_get::<String, _>("labels")?)?,
        ffmpeg_version: row.try_get("ffmpeg_version")?,
        state: WorkerState::parse(&state)
            .ok_or_else(|| Error::Corrupt(format!("unknown worker state {state:?}")))?,
        registered_at_ms: row.try_get("registered_at_ms")?,
        last_heartbeat_ms: row.try_get("last_heartbeat_ms")?,
    })
}

async fn load_job(tx: &mut Transaction<'_, Sqlite>, id: &str) -> Result<Option<JobRecord>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?");
    sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .map(|row| job_from_row(&row))
        .transpose()
}

/// Writes a job's new status, and its transition if there was one.
async fn persist(
    tx: &mut Transaction<'_, Sqlite>,
    job: &mut JobRecord,
    outcome: &Outcome,
    attachments: Attachments,
    now_ms: i64,
) -> Result<()> {
    let status = &outcome.status;
    // A transition out of a leased state drops the lease; its history entry
    // still names the token that ended.
    let token = status
        .lease
        .as_ref()
        .or(job.status.lease.as_ref())
        .map(|l| l.token as i64);
    if let Some(lease) = &status.lease {
        job.worker_id = Some(lease.worker_id.clone());
    }
    if status.state == JobState::Queued {
        job.progress = None;
    }
    if let Some(p) = attachments.progress {
        job.progress = Some(p);
    }
    if let Some(b) = attachments.bandwidth {
        job.bandwidth = Some(b);
    }
    job.status = status.clone();
    job.updated_at_ms = now_ms;
    sqlx::query(
        "UPDATE jobs SET state = ?, attempt = ?, worker_id = ?, lease_token = ?, \
         lease_expires_at_ms = ?, cancel_requested = ?, not_before_ms = ?, failure = ?, \
         progress = ?, bandwidth = ?, updated_at_ms = ? WHERE id = ?",
    )
    .bind(status.state.as_str())
    .bind(status.attempt as i64)
    .bind(&job.worker_id)
    .bind(status.lease.as_ref().map(|l| l.token as i64))
    .bind(status.lease.as_ref().map(|l| l.expires_at_ms))
    .bind(status.cancel_requested)
    .bind(status.not_before_ms)
    .bind(status.failure.as_ref().map(json))
    .bind(job.progress.as_ref().map(json))
    .bind(job.bandwidth.as_ref().map(json))
    .bind(now_ms)
    .bind(&job.id)
    .execute(&mut **tx)
    .await?;
    if let Some(t) = &outcome.transition {
        sqlx::query(
            "INSERT INTO job_transitions (job_id, from_state, to_state, at_ms, reason, \
             worker_id, lease_token) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&job.id)
        .bind(t.from.as_str())
        .bind(t.to.as_str())
        .bind(now_ms)
        .bind(&t.reason)
        .bind(&job.worker_id)
        .bind(token)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn submit(
        &self,
        id: &str,
        idempotency_key: Option<&str>,
        spec: &JobSpec,
        now_ms: i64,
    ) -> Result<Submitted> {
        let mut tx = self.writer.begin().await?;
        if let Some(key) = idempotency_key {
            let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?");
            if let Some(row) = sqlx::query(&sql).bind(key).fetch_optional(&mut *tx).await? {
                let existing = job_from_row(&row)?;
                if existing.spec != *spec {
                    return Err(Error::IdempotencyConflict(key.to_owned()));
                }
                return Ok(Submitted::Existing(existing));
            }
        }
        let status = JobStatus::new_queued(spec.max_attempts, now_ms);
        sqlx::query(
            "INSERT INTO jobs (id, idempotency_key, spec, state, priority, cpu_millis, \
             memory_bytes, disk_bytes, attempt, max_attempts, cancel_requested, not_before_ms, \
             created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, 0, ?, ?, ?)",
        )
        .bind(id)
        .bind(idempotency_key)
        .bind(json(spec))
        .bind(status.state.as_str())
        .bind(spec.priority)
        .bind(spec.resources.cpu_millis as i64)
        .bind(spec.resources.memory_bytes as i64)
        .bind(spec.resources.disk_bytes as i64)
        .bind(spec.max_attempts as i64)
        .bind(now_ms)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO job_transitions (job_id, from_state, to_state, at_ms, reason) \
             VALUES (?, 'queued', 'queued', ?, 'submitted')",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let job = load_job(&mut tx, id).await?.expect("inserted above");
        tx.commit().await?;
        Ok(Submitted::Created(job))
    }

    async fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?");
        sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?
            .map(|row| job_from_row(&row))
            .transpose()
    }

    async fn history(&self, id: &str) -> Result<Vec<TransitionRecord>> {
        let rows = sqlx::query(
            "SELECT from_state, to_state, at_ms, reason, worker_id, lease_token \
             FROM job_transitions WHERE job_id = ? ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let state = |col: &str| -> Result<JobState> {
                    let s: String = row.try_get(col)?;
                    JobState::parse(&s).ok_or_else(|| Error::Corrupt(format!("state {s:?}")))
                };
                Ok(TransitionRecord {
                    from: state("from_state")?,
                    to: state("to_state")?,
                    at_ms: row.try_get("at_ms")?,
                    reason: row.try_get("reason")?,
                    worker_id: row.try_get("worker_id")?,
                    lease_token: row
                        .try_get::<Option<i64>, _>("lease_token")?
                        .map(|t| t as u64),
                })
            })
            .collect()
    }

    async fn list_jobs(
        &self,
        state: Option<JobState>,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Vec<JobRecord>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) \
             AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3"
        );
        let rows = sqlx::query(&sql)
            .bind(state.map(JobState::as_str))
            .bind(before_id)
            .bind(limit as i64)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn apply(
        &self,
        id: &str,
        event: Event,
        attachments: Attachments,
        now_ms: i64,
        retry: &RetryPolicy,
    ) -> Result<(JobRecord, Outcome)> {
        let mut tx = self.writer.begin().await?;
        let mut job = load_job(&mut tx, id)
            .await?
            .ok_or_else(|| Error::JobNotFound(id.to_owned()))?;
        let outcome = state::step(&job.status, event, now_ms, retry)?;
        persist(&mut tx, &mut job, &outcome, attachments, now_ms).await?;
        tx.commit().await?;
        Ok((job, outcome))
    }

    async fn lease(&self, request: LeaseRequest<'_>, now_ms: i64) -> Result<Vec<JobRecord>> {
        if request.max_jobs == 0 {
            return Ok(vec![]);
        }
        let mut tx = self.writer.begin().await?;
        let sql = format!(
            "SELECT {JOB_COLUMNS}, priority, cpu_millis, memory_bytes, disk_bytes FROM jobs \
             WHERE state = 'queued' AND not_before_ms <= ? \
             ORDER BY priority DESC, created_at_ms, id LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(now_ms)
            .bind(SCAN_LIMIT)
            .fetch_all(&mut *tx)
            .await?;
        let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        let candidates: Vec<Candidate> = jobs
            .iter()
            .map(|j| Candidate {
                priority: j.spec.priority,
                created_at_ms: j.created_at_ms,
                id: j.id.clone(),
                request: j.spec.resources,
            })
            .collect();
        let slots = [Slot {
            free: request.free,
            max_jobs: request.max_jobs,
        }];
        let assignments = placement::place(&candidates, &slots);
        let mut leased = Vec::with_capacity(assignments.len());
        for a in assignments {
            let job = &mut jobs[a.job];
            let token: i64 = sqlx::query_scalar(
                "INSERT INTO leases (job_id, worker_id, attempt, granted_at_ms) \
                 VALUES (?, ?, ?, ?) RETURNING token",
            )
            .bind(&job.id)
            .bind(request.worker_id)
            .bind(job.status.attempt as i64 + 1)
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await?;
            let event = Event::Lease {
                token: token as u64,
                worker_id: request.worker_id.to_owned(),
                expires_at_ms: now_ms + request.ttl_ms,
            };
            let outcome = state::step(&job.status, event, now_ms, &RetryPolicy::default())?;
            persist(&mut tx, job, &outcome, Attachments::default(), now_ms).await?;
            leased.push(job.clone());
        }
        tx.commit().await?;
        Ok(leased)
    }

    async fn record_progress(
        &self,
        lease: &LeaseRef,
        progress: &Progress,
        now_ms: i64,
    ) -> Result<Option<bool>> {
        // Fenced like a state event: only the current lease may write.
        let cancel: Option<bool> = sqlx::query_scalar(
            "UPDATE jobs SET progress = ?, updated_at_ms = ? \
             WHERE id = ? AND lease_token = ? AND state IN ('leased', 'running') \
             RETURNING cancel_requested",
        )
        .bind(json(progress))
        .bind(now_ms)
        .bind(&lease.job_id)
        .bind(lease.token as i64)
        .fetch_optional(&self.writer)
        .await?;
        Ok(cancel)
    }

    async fn renew(
        &self,
        worker_id: &str,
        leases: &[LeaseRef],
        expires_at_ms: i64,
    ) -> Result<Vec<LeaseRef>> {
        let mut revoked = Vec::new();
        if leases.is_empty() {
            return Ok(revoked);
        }
        let mut tx = self.writer.begin().await?;
        for lease in leases {
            let cancel: Option<bool> = sqlx::query_scalar(
                "UPDATE jobs SET lease_expires_at_ms = MAX(lease_expires_at_ms, ?) \
                 WHERE id = ? AND lease_token = ? AND worker_id = ? \
                 AND state IN ('leased', 'running') RETURNING cancel_requested",
            )
            .bind(expires_at_ms)
            .bind(&lease.job_id)
            .bind(lease.token as i64)
            .bind(worker_id)
            .fetch_optional(&mut *tx)
            .await?;
            if cancel != Some(false) {
                revoked.push(lease.clone());
            }
        }
        tx.commit().await?;
        Ok(revoked)
    }

    async fn next_retry_at(&self, now_ms: i64) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(not_before_ms) FROM jobs WHERE state = 'queued' AND not_before_ms > ?",
        )
        .bind(now_ms)
        .fetch_one(&self.reader)
        .await?)
    }

    async fn expired_leases(&self, now_ms: i64) -> Result<Vec<LeaseRef>> {
        let rows = sqlx::query(
            "SELECT id, lease_token FROM jobs WHERE lease_token IS NOT NULL \
             AND lease_expires_at_ms < ? AND state IN ('leased', 'running')",
        )
        .bind(now_ms)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LeaseRef {
                    job_id: r.try_get("id")?,
                    token: r.try_get::<i64, _>("lease_token")? as u64,
                })
            })
            .collect()
    }

    async fn lease_history(&self, job_id: &str) -> Result<Vec<(u64, String)>> {
        let rows =
            sqlx::query("SELECT token, worker_id FROM leases WHERE job_id = ? ORDER BY token")
                .bind(job_id)
                .fetch_all(&self.reader)
                .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("token")? as u64,
                    r.try_get("worker_id")?,
                ))
            })
            .collect()
    }

    async fn register_worker(&self, w: &WorkerRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO workers (id, name, cpu_millis, memory_bytes, disk_bytes, labels, \
             ffmpeg_version, state, registered_at_ms, last_heartbeat_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, 'ready', ?, ?) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
             cpu_millis = excluded.cpu_millis, memory_bytes = excluded.memory_bytes, \
             disk_bytes = excluded.disk_bytes, labels = excluded.labels, \
             ffmpeg_version = excluded.ffmpeg_version, state = 'ready', \
             registered_at_ms = excluded.registered_at_ms, \
             last_heartbeat_ms = excluded.last_heartbeat_ms",
        )
        .bind(&w.id)
        .bind(&w.name)
        .bind(w.capacity.cpu_millis as i64)
        .bind(w.capacity.memory_bytes as i64)
        .bind(w.capacity.disk_bytes as i64)
        .bind(json(&w.labels))
        .bind(&w.ffmpeg_version)
        .bind(w.registered_at_ms)
        .bind(w.last_heartbeat_ms)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn heartbeat_worker(
        &self,
        id: &str,
        draining: bool,
        now_ms: i64,
    ) -> Result<Option<WorkerState>> {
        let mut tx = self.writer.begin().await?;
        let before: Option<String> = sqlx::query_scalar("SELECT state FROM workers WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(before) = before else {
            return Ok(None);
        };
        let before = WorkerState::parse(&before)
            .ok_or_else(|| Error::Corrupt(format!("worker state {before:?}")))?;
        if before != WorkerState::Lost {
            let state = if draining {
                WorkerState::Draining
            } else {
                before
            };
            sqlx::query("UPDATE workers SET last_heartbeat_ms = ?, state = ? WHERE id = ?")
                .bind(now_ms)
                .bind(state.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(before))
    }

    async fn mark_lost_workers(&self, cutoff_ms: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "UPDATE workers SET state = 'lost' WHERE state != 'lost' AND last_heartbeat_ms < ? \
             RETURNING id",
        )
        .bind(cutoff_ms)
        .fetch_all(&self.writer)
        .await?)
    }

    async fn worker(&self, id: &str) -> Result<Option<WorkerRecord>> {
        sqlx::query("SELECT * FROM workers WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
            .await?
            .map(|row| worker_from_row(&row))
            .transpose()
    }

    async fn workers(&self) -> Result<Vec<(WorkerRecord, Vec<String>)>> {
        let rows = sqlx::query("SELECT * FROM workers ORDER BY name, id")
            .fetch_all(&self.reader)
            .await?;
        let held = sqlx::query(
            "SELECT worker_id, id FROM jobs WHERE state IN ('leased', 'running') ORDER BY id",
        )
        .fetch_all(&self.reader)
        .await?;
        let mut by_worker: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &held {
            let worker: Option<String> = r.try_get("worker_id")?;
            by_worker
                .entry(worker.unwrap_or_default())
                .or_default()
                .push(r.try_get("id")?);
        }
        rows.iter()
            .map(|row| {
                let w = worker_from_row(row)?;
                let jobs = by_worker.remove(&w.id).unwrap_or_default();
                Ok((w, jobs))
            })
            .collect()
    }
}
