//! The store, written once for both backends over sqlx's `Any` driver.
//! Dialect differences come from [`Dialect`]; nothing else here knows which
//! database it talks to.
//!
//! SQLite: writes go through a pool of exactly one connection, so write
//! transactions are serialized in the process and never hit SQLite's
//! lock-upgrade deadlock; reads use their own pool (WAL).
//! Postgres: one pool; row locks (`FOR UPDATE`, `SKIP LOCKED`) serialize
//! what must be serialized across masters, and `NOTIFY` inside each
//! transaction tells the other masters what changed when it commits.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use ffleet_core::Resources;
use ffleet_core::placement::{self, Candidate, Slot};
use ffleet_core::state::{self, Event, JobState, JobStatus, Lease, Outcome, RetryPolicy};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, Row, Transaction};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::dialect::{DbOptions, Dialect};
use super::{
    ApplyRequest, Attachments, Change, Each, Heartbeat, JobCount, JobCounts, JobRecord, LeaseRef,
    LeaseRequest, LeaseStatus, PoolStats, ProgressReport, Store, SubmitRequest, Submitted,
    TransitionRecord, WorkerRecord, WorkerState, from_json, json,
};
use crate::error::{Error, Result};

/// How many queued jobs one lease call considers.
const SCAN_LIMIT: i64 = 256;
/// Rows per multi-row statement: far below both databases' limits on
/// placeholders (SQLite 32,766; Postgres 65,535) at 15 columns a row.
const ROWS_PER_STATEMENT: usize = 256;
/// NOTIFY channels (Postgres).
pub const WORK_CHANNEL: &str = "ffleet_work";
pub const JOB_CHANNEL: &str = "ffleet_job";

const JOB_COLUMNS: &str = "id, idempotency_key, spec, state, attempt, max_attempts, worker_id, \
    lease_token, lease_expires_at_ms, cancel_requested, not_before_ms, failure, progress, \
    bandwidth, usage, created_at_ms, updated_at_ms, finished_at_ms, trace_parent";

pub struct SqlStore {
    dialect: Dialect,
    url: String,
    writer: AnyPool,
    reader: AnyPool,
    acquire_waits: AtomicU64,
    acquire_wait_micros: AtomicU64,
}

/// Opens pools for `options.url` with each connection set up for its
/// dialect. Does not migrate.
pub async fn connect_pools(options: &DbOptions) -> Result<(Dialect, AnyPool, AnyPool)> {
    sqlx::any::install_default_drivers();
    let dialect = Dialect::of(&options.url)?;
    let url = dialect.connect_url(&options.url);
    let pool = |max: u32| {
        AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(options.acquire_timeout)
            .idle_timeout(options.idle_timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    for statement in dialect.session_setup() {
                        sqlx::query(statement).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
    };
    match dialect {
        Dialect::Sqlite => {
            let writer = pool(1).connect(&url).await?;
            let reader = pool(options.max_connections.max(1)).connect(&url).await?;
            Ok((dialect, writer, reader))
        }
        Dialect::Postgres => {
            let shared = pool(options.max_connections.max(2)).connect(&url).await?;
            Ok((dialect, shared.clone(), shared))
        }
    }
}

impl SqlStore {
    pub async fn connect(options: &DbOptions) -> Result<Self> {
        let (dialect, writer, reader) = connect_pools(options).await?;
        Ok(SqlStore {
            dialect,
            url: options.url.clone(),
            writer,
            reader,
            acquire_waits: AtomicU64::new(0),
            acquire_wait_micros: AtomicU64::new(0),
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn pool(&self) -> &AnyPool {
        &self.writer
    }

    fn record_wait(&self, started: Instant) {
        let waited = started.elapsed();
        if waited.as_micros() >= 100 {
            self.acquire_waits.fetch_add(1, Ordering::Relaxed);
        }
        self.acquire_wait_micros
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
    }

    async fn begin(&self) -> Result<Transaction<'static, Any>> {
        let started = Instant::now();
        let tx = self.writer.begin_with(self.dialect.begin_write()).await?;
        self.record_wait(started);
        Ok(tx)
    }

    async fn read(&self) -> Result<PoolConnection<Any>> {
        let started = Instant::now();
        let conn = self.reader.acquire().await?;
        self.record_wait(started);
        Ok(conn)
    }

    async fn write(&self) -> Result<PoolConnection<Any>> {
        let started = Instant::now();
        let conn = self.writer.acquire().await?;
        self.record_wait(started);
        Ok(conn)
    }

    /// Tells other masters, at commit, that these jobs changed and, with
    /// `wake_acquirers`, that work may be waiting: one notification each,
    /// all in one statement.
    async fn notify(
        &self,
        tx: &mut Transaction<'static, Any>,
        job_ids: &[&str],
        wake_acquirers: bool,
    ) -> Result<()> {
        if !self.dialect.is_shared() {
            return Ok(());
        }
        let mut sent: Vec<(&str, &str)> = job_ids.iter().map(|id| (JOB_CHANNEL, *id)).collect();
        if wake_acquirers {
            sent.push((WORK_CHANNEL, ""));
        }
        let statement = |n| {
            format!(
                "SELECT 1 FROM (SELECT pg_notify(v.column1, v.column2) FROM (VALUES {}) AS v) \
                 AS sent",
                value_rows(self.dialect, 1, n, 2)
            )
        };
        per_chunk(tx, &sent, statement, |q, (channel, payload)| {
            q.bind(channel.to_string()).bind(payload.to_string())
        })
        .await?;
        Ok(())
    }

    /// The jobs `ids` names, locked for update in id order.
    async fn load_jobs<'a>(
        &self,
        tx: &mut Transaction<'static, Any>,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<HashMap<String, JobRecord>> {
        let select = format!("SELECT {JOB_COLUMNS} FROM jobs");
        let rows = self.rows_where_in(tx, &select, "id", ids, true).await?;
        let mut jobs = HashMap::with_capacity(rows.len());
        for row in &rows {
            let job = job_from_row(row)?;
            jobs.insert(job.id.clone(), job);
        }
        Ok(jobs)
    }

    /// The rows of `select` whose `column` is one of `keys`, in `column`
    /// order; with `lock`, locked for update in that order (so two
    /// transactions locking overlapping sets cannot deadlock).
    async fn rows_where_in<'a>(
        &self,
        tx: &mut Transaction<'static, Any>,
        select: &str,
        column: &str,
        keys: impl IntoIterator<Item = &'a str>,
        lock: bool,
    ) -> Result<Vec<AnyRow>> {
        let keys: Vec<&str> = keys
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let statement = |n| {
            format!(
                "{select} WHERE {column} IN ({}) ORDER BY {column}{}",
                params(self.dialect, 1, n),
                if lock { self.dialect.for_update() } else { "" }
            )
        };
        per_chunk(tx, &keys, statement, |q, key| q.bind(key.to_string())).await
    }

    /// The jobs that hold these idempotency keys.
    async fn jobs_by_key<'a>(
        &self,
        tx: &mut Transaction<'static, Any>,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<HashMap<String, JobRecord>> {
        let select = format!("SELECT {JOB_COLUMNS} FROM jobs");
        let rows = self
            .rows_where_in(tx, &select, "idempotency_key", keys, false)
            .await?;
        let mut jobs = HashMap::with_capacity(rows.len());
        for row in &rows {
            let job = job_from_row(row)?;
            if let Some(key) = job.idempotency_key.clone() {
                jobs.insert(key, job);
            }
        }
        Ok(jobs)
    }

    /// Inserts new jobs, skipping any whose idempotency key another
    /// transaction took first; returns the ids inserted.
    async fn insert_jobs(
        &self,
        tx: &mut Transaction<'static, Any>,
        jobs: &[JobRecord],
    ) -> Result<HashSet<String>> {
        let statement = |n| {
            format!(
                "INSERT INTO jobs (id, idempotency_key, spec, state, priority, cpu_millis, \
                 memory_bytes, disk_bytes, attempt, max_attempts, cancel_requested, \
                 not_before_ms, created_at_ms, updated_at_ms, trace_parent) VALUES {} \
                 ON CONFLICT DO NOTHING RETURNING id",
                value_rows(self.dialect, 1, n, 15)
            )
        };
        let rows = per_chunk(tx, jobs, statement, |q, job| {
            let (spec, status) = (&job.spec, &job.status);
            q.bind(job.id.clone())
                .bind(job.idempotency_key.clone())
                .bind(json(spec))
                .bind(status.state.as_str())
                .bind(spec.priority as i64)
                .bind(spec.resources.cpu_millis as i64)
                .bind(spec.resources.memory_bytes as i64)
                .bind(spec.resources.disk_bytes as i64)
                .bind(status.attempt as i64)
                .bind(status.max_attempts as i64)
                .bind(status.cancel_requested as i64)
                .bind(status.not_before_ms)
                .bind(job.created_at_ms)
                .bind(job.updated_at_ms)
                .bind(job.trace_parent.clone())
        })
        .await?;
        rows.iter().map(|row| Ok(row.try_get("id")?)).collect()
    }

    /// Writes the jobs' current status, their transitions, and the
    /// notifications other masters need, with a few statements however
    /// many jobs there are.
    async fn write_outcomes(
        &self,
        tx: &mut Transaction<'static, Any>,
        jobs: &[&JobRecord],
        transitions: &[TransitionRow],
        wake_acquirers: bool,
    ) -> Result<()> {
        // `column1`, `column2`, ... are what both databases call the
        // columns of a VALUES list. Integers are cast so a column that is
        // NULL in every row still has a type on Postgres.
        let statement = |n| {
            format!(
                "UPDATE jobs SET state = v.column2, attempt = CAST(v.column3 AS BIGINT), \
                 worker_id = v.column4, lease_token = CAST(v.column5 AS BIGINT), \
                 lease_expires_at_ms = CAST(v.column6 AS BIGINT), \
                 cancel_requested = CAST(v.column7 AS BIGINT), \
                 not_before_ms = CAST(v.column8 AS BIGINT), failure = v.column9, \
                 progress = v.column10, bandwidth = v.column11, \
                 updated_at_ms = CAST(v.column12 AS BIGINT), \
                 finished_at_ms = CAST(v.column13 AS BIGINT), usage = v.column14 \
                 FROM (VALUES {}) AS v WHERE jobs.id = v.column1",
                value_rows(self.dialect, 1, n, 14)
            )
        };
        per_chunk(tx, jobs, statement, |q, job| {
            let status = &job.status;
            q.bind(job.id.clone())
                .bind(status.state.as_str())
                .bind(status.attempt as i64)
                .bind(job.worker_id.clone())
                .bind(status.lease.as_ref().map(|l| l.token as i64))
                .bind(status.lease.as_ref().map(|l| l.expires_at_ms))
                .bind(status.cancel_requested as i64)
                .bind(status.not_before_ms)
                .bind(status.failure.as_ref().map(json))
                .bind(job.progress.as_ref().map(json))
                .bind(job.bandwidth.as_ref().map(json))
                .bind(job.updated_at_ms)
                .bind(job.finished_at_ms)
                .bind(job.usage.as_ref().map(json))
        })
        .await?;
        insert_transitions(tx, self.dialect, transitions).await?;
        let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        self.notify(tx, &ids, wake_acquirers).await?;
        Ok(())
    }
}

/// A submitted job as its row will read back.
fn new_job(request: &SubmitRequest, now_ms: i64) -> JobRecord {
    JobRecord {
        id: request.id.clone(),
        idempotency_key: request.idempotency_key.clone(),
        status: JobStatus::new_queued(request.spec.max_attempts, now_ms),
        spec: request.spec.clone(),
        worker_id: None,
        progress: None,
        bandwidth: None,
        usage: None,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        finished_at_ms: None,
        trace_parent: request.trace_parent.clone(),
    }
}

/// A history entry to insert.
struct TransitionRow {
    job_id: String,
    record: TransitionRecord,
}

/// Carries an outcome of the state machine into the job as stored: its new
/// status, what the worker reported with it, its timestamps. Returns the
/// history entry to write, if the state changed.
fn settle(
    job: &mut JobRecord,
    outcome: &Outcome,
    attachments: Attachments,
    now_ms: i64,
) -> Option<TransitionRow> {
    let status = &outcome.status;
    // A transition out of a leased state drops the lease; its history
    // entry still names the token that ended.
    let token = status
        .lease
        .as_ref()
        .or(job.status.lease.as_ref())
        .map(|l| l.token);
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
    if let Some(u) = attachments.usage {
        job.usage = Some(u);
    }
    job.finished_at_ms = if status.state.is_final() {
        job.finished_at_ms.or(Some(now_ms))
    } else {
        None
    };
    job.status = status.clone();
    job.updated_at_ms = now_ms;
    outcome.transition.as_ref().map(|t| TransitionRow {
        job_id: job.id.clone(),
        record: TransitionRecord {
            from: t.from,
            to: t.to,
            at_ms: now_ms,
            reason: t.reason.clone(),
            worker_id: job.worker_id.clone(),
            lease_token: token,
        },
    })
}

async fn insert_transitions(
    tx: &mut Transaction<'static, Any>,
    dialect: Dialect,
    rows: &[TransitionRow],
) -> Result<()> {
    let statement = |n| {
        format!(
            "INSERT INTO job_transitions (job_id, from_state, to_state, at_ms, reason, \
             worker_id, lease_token) VALUES {}",
            value_rows(dialect, 1, n, 7)
        )
    };
    per_chunk(tx, rows, statement, |q, row| {
        let t = &row.record;
        q.bind(row.job_id.clone())
            .bind(t.from.as_str())
            .bind(t.to.as_str())
            .bind(t.at_ms)
            .bind(t.reason.clone())
            .bind(t.worker_id.clone())
            .bind(t.lease_token.map(|t| t as i64))
    })
    .await?;
    Ok(())
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;

/// Runs a multi-row statement over `items`, [`ROWS_PER_STATEMENT`] at a
/// time: `statement(n)` is its text for `n` items, `bind` binds one item's
/// values in placeholder order. Returns every row the statements return.
async fn per_chunk<T>(
    tx: &mut Transaction<'static, Any>,
    items: &[T],
    statement: impl Fn(usize) -> String,
    bind: impl for<'q> Fn(AnyQuery<'q>, &T) -> AnyQuery<'q>,
) -> Result<Vec<AnyRow>> {
    let mut rows = Vec::new();
    for chunk in items.chunks(ROWS_PER_STATEMENT) {
        let sql = statement(chunk.len());
        let query = chunk.iter().fold(sqlx::query(&sql), &bind);
        rows.extend(query.fetch_all(&mut **tx).await?);
    }
    Ok(rows)
}

/// `n` placeholders, numbered from `first` (see [`Dialect::placeholder`]).
fn params(dialect: Dialect, first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| dialect.placeholder(i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `(p1, p2), (p3, p4), ...`: `rows` rows of `columns` placeholders.
fn value_rows(dialect: Dialect, first: usize, rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", params(dialect, first + r * columns, columns)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn int(row: &AnyRow, column: &str) -> Result<i64> {
    Ok(row.try_get::<i64, _>(column)?)
}

fn opt_int(row: &AnyRow, column: &str) -> Result<Option<i64>> {
    Ok(row.try_get::<Option<i64>, _>(column)?)
}

fn job_from_row(row: &AnyRow) -> Result<JobRecord> {
    let id: String = row.try_get("id")?;
    let state_name: String = row.try_get("state")?;
    let state = JobState::parse(&state_name)
        .ok_or_else(|| Error::Corrupt(format!("job {id}: unknown state {state_name:?}")))?;
    let worker_id: Option<String> = row.try_get("worker_id")?;
    let lease = match (opt_int(row, "lease_token")?, state.is_leased()) {
        (Some(token), true) => Some(Lease {
            token: token as u64,
            worker_id: worker_id.clone().unwrap_or_default(),
            expires_at_ms: opt_int(row, "lease_expires_at_ms")?.unwrap_or(0),
        }),
        _ => None,
    };
    let failure: Option<String> = row.try_get("failure")?;
    let progress: Option<String> = row.try_get("progress")?;
    let bandwidth: Option<String> = row.try_get("bandwidth")?;
    let usage: Option<String> = row.try_get("usage")?;
    Ok(JobRecord {
        spec: from_json("spec", &row.try_get::<String, _>("spec")?)?,
        idempotency_key: row.try_get("idempotency_key")?,
        status: JobStatus {
            state,
            attempt: int(row, "attempt")? as u32,
            max_attempts: int(row, "max_attempts")? as u32,
            lease,
            cancel_requested: int(row, "cancel_requested")? != 0,
            not_before_ms: int(row, "not_before_ms")?,
            failure: failure.map(|f| from_json("failure", &f)).transpose()?,
        },
        worker_id,
        progress: progress.map(|p| from_json("progress", &p)).transpose()?,
        bandwidth: bandwidth.map(|b| from_json("bandwidth", &b)).transpose()?,
        usage: usage.map(|u| from_json("usage", &u)).transpose()?,
        created_at_ms: int(row, "created_at_ms")?,
        updated_at_ms: int(row, "updated_at_ms")?,
        finished_at_ms: opt_int(row, "finished_at_ms")?,
        trace_parent: row.try_get("trace_parent")?,
        id,
    })
}

fn worker_from_row(row: &AnyRow) -> Result<WorkerRecord> {
    let state: String = row.try_get("state")?;
    Ok(WorkerRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        capacity: Resources::new(
            int(row, "cpu_millis")? as u32,
            int(row, "memory_bytes")? as u64,
            int(row, "disk_bytes")? as u64,
        ),
        labels: from_json("labels", &row.try_get::<String, _>("labels")?)?,
        ffmpeg_version: row.try_get("ffmpeg_version")?,
        state: WorkerState::parse(&state)
            .ok_or_else(|| Error::Corrupt(format!("unknown worker state {state:?}")))?,
        registered_at_ms: int(row, "registered_at_ms")?,
        last_heartbeat_ms: int(row, "last_heartbeat_ms")?,
        note: row.try_get("note")?,
    })
}

fn lease_ref_from_row(row: &AnyRow) -> Result<LeaseRef> {
    Ok(LeaseRef {
        job_id: row.try_get("id")?,
        token: int(row, "lease_token")? as u64,
    })
}

const WORKER_COLUMNS: &str = "id, name, cpu_millis, memory_bytes, disk_bytes, labels, \
    ffmpeg_version, state, registered_at_ms, last_heartbeat_ms, note";

#[async_trait]
impl Store for SqlStore {
    async fn submit_many(
        &self,
        requests: &[SubmitRequest],
        now_ms: i64,
    ) -> Result<Each<Submitted>> {
        if requests.is_empty() {
            return Ok(vec![]);
        }
        let mut tx = self.begin().await?;
        let mut by_key = self
            .jobs_by_key(
                &mut tx,
                requests.iter().filter_map(|r| r.idempotency_key.as_deref()),
            )
            .await?;
        // New jobs, each key once: a key repeated in the batch names the
        // job its first request creates.
        let mut fresh: Vec<JobRecord> = Vec::new();
        for r in requests {
            let job = new_job(r, now_ms);
            if let Some(key) = &r.idempotency_key {
                if by_key.contains_key(key) {
                    continue;
                }
                by_key.insert(key.clone(), job.clone());
            }
            fresh.push(job);
        }
        // Keys inserted in key order: two masters inserting overlapping
        // keys then wait for each other in one order, never in a cycle.
        fresh.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
        let inserted = self.insert_jobs(&mut tx, &fresh).await?;
        if inserted.len() < fresh.len() {
            // Another master inserted some of these keys meanwhile (the
            // conflicts were skipped): their jobs are the ones to return.
            let raced = fresh
                .iter()
                .filter(|j| !inserted.contains(&j.id))
                .filter_map(|j| j.idempotency_key.as_deref());
            let raced = self.jobs_by_key(&mut tx, raced).await?;
            by_key.extend(raced);
        }
        let created: Vec<&JobRecord> = fresh.iter().filter(|j| inserted.contains(&j.id)).collect();
        let transitions: Vec<TransitionRow> = created
            .iter()
            .map(|j| TransitionRow {
                job_id: j.id.clone(),
                record: TransitionRecord::submitted(now_ms),
            })
            .collect();
        insert_transitions(&mut tx, self.dialect, &transitions).await?;
        let ids: Vec<&str> = created.iter().map(|j| j.id.as_str()).collect();
        self.notify(&mut tx, &ids, !ids.is_empty()).await?;
        tx.commit().await?;
        let created: HashMap<&str, &JobRecord> =
            created.into_iter().map(|j| (j.id.as_str(), j)).collect();
        Ok(requests
            .iter()
            .map(|r| match (&r.idempotency_key, created.get(r.id.as_str())) {
                (_, Some(job)) => Ok(Submitted::Created((*job).clone())),
                (Some(key), None) => match by_key.get(key) {
                    Some(job) if job.spec == r.spec => Ok(Submitted::Existing(job.clone())),
                    Some(_) => Err(Error::IdempotencyConflict(key.clone())),
                    None => Err(Error::Corrupt(format!("key {key} vanished"))),
                },
                (None, None) => Err(Error::Corrupt(format!("job {} was not inserted", r.id))),
            })
            .collect())
    }

    async fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let mut conn = self.read().await?;
        sqlx::query(&sql)
            .bind(id.to_owned())
            .fetch_optional(&mut *conn)
            .await?
            .map(|row| job_from_row(&row))
            .transpose()
    }

    async fn history(&self, id: &str) -> Result<Vec<TransitionRecord>> {
        let mut conn = self.read().await?;
        let rows = sqlx::query(
            "SELECT from_state, to_state, at_ms, reason, worker_id, lease_token \
             FROM job_transitions WHERE job_id = $1 ORDER BY id",
        )
        .bind(id.to_owned())
        .fetch_all(&mut *conn)
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
                    at_ms: int(row, "at_ms")?,
                    reason: row.try_get("reason")?,
                    worker_id: row.try_get("worker_id")?,
                    lease_token: opt_int(row, "lease_token")?.map(|t| t as u64),
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
        // Two filters that may each be absent: four static queries would
        // say the same; instead the absent ones bind a value that matches
        // everything ('' sorts before any id; '*' is no state).
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1 = '*' OR state = $1) \
             AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let mut conn = self.read().await?;
        let rows = sqlx::query(&sql)
            .bind(state.map_or("*", JobState::as_str))
            .bind(before_id.unwrap_or("").to_owned())
            .bind(limit as i64)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn apply_many(
        &self,
        requests: &[ApplyRequest],
        now_ms: i64,
        retry: &RetryPolicy,
    ) -> Result<Each<(JobRecord, Outcome)>> {
        if requests.is_empty() {
            return Ok(vec![]);
        }
        let mut tx = self.begin().await?;
        let mut jobs = self
            .load_jobs(&mut tx, requests.iter().map(|r| r.id.as_str()))
            .await?;
        let mut changed: BTreeSet<&str> = BTreeSet::new();
        let mut transitions = Vec::new();
        let mut wake_acquirers = false;
        let mut results = Vec::with_capacity(requests.len());
        for r in requests {
            let Some(job) = jobs.get_mut(&r.id) else {
                results.push(Err(Error::JobNotFound(r.id.clone())));
                continue;
            };
            let outcome = match state::step(&job.status, r.event.clone(), now_ms, retry) {
                Ok(outcome) => outcome,
                Err(e) => {
                    results.push(Err(e.into()));
                    continue;
                }
            };
            transitions.extend(settle(job, &outcome, r.attachments.clone(), now_ms));
            wake_acquirers |= outcome.actions.contains(&state::Action::WakeAcquirers);
            changed.insert(&r.id);
            results.push(Ok((job.clone(), outcome)));
        }
        let changed: Vec<&JobRecord> = changed.iter().map(|id| &jobs[*id]).collect();
        self.write_outcomes(&mut tx, &changed, &transitions, wake_acquirers)
            .await?;
        tx.commit().await?;
        Ok(results)
    }

    async fn lease_many(
        &self,
        requests: &[LeaseRequest<'_>],
        now_ms: i64,
    ) -> Result<Vec<Vec<JobRecord>>> {
        let mut each: Vec<Vec<JobRecord>> = vec![Vec::new(); requests.len()];
        let mut seen = HashSet::new();
        let slots: Vec<Slot> = requests
            .iter()
            .map(|r| Slot {
                free: r.free,
                max_jobs: if seen.insert(r.worker_id) {
                    r.max_jobs
                } else {
                    0
                },
            })
            .collect();
        if slots.iter().all(|s| s.max_jobs == 0) {
            return Ok(each);
        }
        let mut tx = self.begin().await?;
        // Placement needs only these columns: the full rows (and their JSON)
        // are read for the jobs it picks, not for every candidate.
        let sql = format!(
            "SELECT id, priority, created_at_ms, cpu_millis, memory_bytes, disk_bytes FROM jobs \
             WHERE state = 'queued' AND not_before_ms <= $1 \
             ORDER BY priority DESC, created_at_ms, id LIMIT $2{}",
            self.dialect.for_update_skip_locked()
        );
        let rows = sqlx::query(&sql)
            .bind(now_ms)
            .bind(SCAN_LIMIT)
            .fetch_all(&mut *tx)
            .await?;
        let candidates = rows
            .iter()
            .map(|r| {
                Ok(Candidate {
                    id: r.try_get("id")?,
                    priority: int(r, "priority")? as i32,
                    created_at_ms: int(r, "created_at_ms")?,
                    request: Resources::new(
                        int(r, "cpu_millis")? as u32,
                        int(r, "memory_bytes")? as u64,
                        int(r, "disk_bytes")? as u64,
                    ),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let assignments = placement::place(&candidates, &slots);
        if assignments.is_empty() {
            tx.commit().await?;
            return Ok(each);
        }
        // (job id, index of the request it goes to)
        let picked: Vec<(&str, usize)> = assignments
            .iter()
            .map(|a| (candidates[a.job].id.as_str(), a.worker))
            .collect();
        let mut jobs = self
            .load_jobs(&mut tx, picked.iter().map(|(id, _)| *id))
            .await?;
        let mut tokens: HashMap<String, i64> = HashMap::with_capacity(picked.len());
        // (job id, worker, attempt) of each new lease.
        let grants = picked
            .iter()
            .map(|(id, to)| {
                let job = jobs
                    .get(*id)
                    .ok_or_else(|| Error::Corrupt(format!("queued job {id} vanished")))?;
                Ok((*id, requests[*to].worker_id, job.status.attempt as i64 + 1))
            })
            .collect::<Result<Vec<_>>>()?;
        let statement = |n| {
            format!(
                "INSERT INTO leases (job_id, worker_id, attempt, granted_at_ms) VALUES {} \
                 RETURNING job_id, token",
                value_rows(self.dialect, 1, n, 4)
            )
        };
        let rows = per_chunk(&mut tx, &grants, statement, |q, (id, worker, attempt)| {
            q.bind(id.to_string())
                .bind(worker.to_string())
                .bind(*attempt)
                .bind(now_ms)
        })
        .await?;
        for row in &rows {
            tokens.insert(row.try_get("job_id")?, int(row, "token")?);
        }
        let mut transitions = Vec::with_capacity(picked.len());
        for (id, to) in &picked {
            let job = jobs.get_mut(*id).expect("checked above");
            let token = tokens
                .get(*id)
                .ok_or_else(|| Error::Corrupt(format!("no lease token returned for {id}")))?;
            let event = Event::Lease {
                token: *token as u64,
                worker_id: requests[*to].worker_id.to_owned(),
                expires_at_ms: now_ms + requests[*to].ttl_ms,
            };
            let outcome = state::step(&job.status, event, now_ms, &RetryPolicy::default())?;
            transitions.extend(settle(job, &outcome, Attachments::default(), now_ms));
        }
        let leased: Vec<&JobRecord> = picked.iter().map(|(id, _)| &jobs[*id]).collect();
        self.write_outcomes(&mut tx, &leased, &transitions, false)
            .await?;
        tx.commit().await?;
        for (id, to) in &picked {
            each[*to].push(jobs[*id].clone());
        }
        Ok(each)
    }

    async fn record_progress_many(
        &self,
        reports: &[ProgressReport],
        now_ms: i64,
    ) -> Result<Vec<Option<LeaseStatus>>> {
        if reports.is_empty() {
            return Ok(vec![]);
        }
        // Fenced like a state event: only the current lease may write, so
        // of a job's reports only those with its current token match. The
        // same lease reported twice is written once, with its last report.
        let mut last: BTreeMap<(&str, u64), &ProgressReport> = BTreeMap::new();
        for r in reports {
            last.insert((&r.lease.job_id, r.lease.token), r);
        }
        let last: Vec<&ProgressReport> = last.into_values().collect();
        let mut tx = self.begin().await?;
        let mut current: HashMap<String, (u64, LeaseStatus)> = HashMap::new();
        let statement = |n| {
            format!(
                "UPDATE jobs SET progress = v.column3, updated_at_ms = CAST(v.column4 AS BIGINT) \
                 FROM (VALUES {}) AS v WHERE jobs.id = v.column1 \
                 AND jobs.lease_token = CAST(v.column2 AS BIGINT) \
                 AND jobs.state IN ('leased', 'running') \
                 RETURNING jobs.id AS id, jobs.lease_token AS lease_token, \
                 jobs.state AS state, jobs.cancel_requested AS cancel_requested",
                value_rows(self.dialect, 1, n, 4)
            )
        };
        let rows = per_chunk(&mut tx, &last, statement, |q, r| {
            q.bind(r.lease.job_id.clone())
                .bind(r.lease.token as i64)
                .bind(json(&r.progress))
                .bind(now_ms)
        })
        .await?;
        for row in &rows {
            let state: String = row.try_get("state")?;
            let status = LeaseStatus {
                state: JobState::parse(&state)
                    .ok_or_else(|| Error::Corrupt(format!("job state {state:?}")))?,
                cancel_requested: int(row, "cancel_requested")? != 0,
            };
            let token = int(row, "lease_token")? as u64;
            current.insert(row.try_get("id")?, (token, status));
        }
        let ids: Vec<&str> = current.keys().map(String::as_str).collect();
        self.notify(&mut tx, &ids, false).await?;
        tx.commit().await?;
        Ok(reports
            .iter()
            .map(|r| match current.get(&r.lease.job_id) {
                Some((token, status)) if *token == r.lease.token => Some(*status),
                _ => None,
            })
            .collect())
    }

    async fn renew(
        &self,
        worker_id: &str,
        leases: &[LeaseRef],
        expires_at_ms: i64,
    ) -> Result<Vec<LeaseRef>> {
        if leases.is_empty() {
            return Ok(vec![]);
        }
        let sql = format!(
            "UPDATE jobs SET lease_expires_at_ms = {}(lease_expires_at_ms, $1) \
             WHERE id = $2 AND lease_token = $3 AND worker_id = $4 \
             AND state IN ('leased', 'running') RETURNING cancel_requested",
            self.dialect.greatest()
        );
        let mut tx = self.begin().await?;
        // Locked in id order, as every transaction that locks several jobs
        // does; answered in the order asked.
        let mut order: Vec<usize> = (0..leases.len()).collect();
        order.sort_by(|a, b| leases[*a].job_id.cmp(&leases[*b].job_id));
        let mut revoke = vec![false; leases.len()];
        for i in order {
            let lease = &leases[i];
            let cancel: Option<i64> = sqlx::query_scalar(&sql)
                .bind(expires_at_ms)
                .bind(lease.job_id.clone())
                .bind(lease.token as i64)
                .bind(worker_id.to_owned())
                .fetch_optional(&mut *tx)
                .await?;
            revoke[i] = cancel != Some(0);
        }
        tx.commit().await?;
        Ok(leases
            .iter()
            .zip(revoke)
            .filter(|(_, revoke)| *revoke)
            .map(|(lease, _)| lease.clone())
            .collect())
    }

    async fn next_retry_at(&self, now_ms: i64) -> Result<Option<i64>> {
        let mut conn = self.read().await?;
        Ok(sqlx::query_scalar(
            "SELECT MIN(not_before_ms) FROM jobs WHERE state = 'queued' AND not_before_ms > $1",
        )
        .bind(now_ms)
        .fetch_one(&mut *conn)
        .await?)
    }

    async fn expired_leases(&self, now_ms: i64) -> Result<Vec<LeaseRef>> {
        let mut conn = self.read().await?;
        let rows = sqlx::query(
            "SELECT id, lease_token FROM jobs WHERE lease_token IS NOT NULL \
             AND lease_expires_at_ms < $1 AND state IN ('leased', 'running')",
        )
        .bind(now_ms)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(lease_ref_from_row).collect()
    }

    async fn lease_history(&self, job_id: &str) -> Result<Vec<(u64, String)>> {
        let mut conn = self.read().await?;
        let rows =
            sqlx::query("SELECT token, worker_id FROM leases WHERE job_id = $1 ORDER BY token")
                .bind(job_id.to_owned())
                .fetch_all(&mut *conn)
                .await?;
        rows.iter()
            .map(|r| Ok((int(r, "token")? as u64, r.try_get("worker_id")?)))
            .collect()
    }

    async fn register_worker(&self, w: &WorkerRecord) -> Result<()> {
        let mut conn = self.write().await?;
        sqlx::query(
            "INSERT INTO workers (id, name, cpu_millis, memory_bytes, disk_bytes, labels, \
             ffmpeg_version, state, registered_at_ms, last_heartbeat_ms, note) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'ready', $8, $9, '') \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
             cpu_millis = excluded.cpu_millis, memory_bytes = excluded.memory_bytes, \
             disk_bytes = excluded.disk_bytes, labels = excluded.labels, \
             ffmpeg_version = excluded.ffmpeg_version, state = 'ready', \
             registered_at_ms = excluded.registered_at_ms, note = '', \
             last_heartbeat_ms = excluded.last_heartbeat_ms",
        )
        .bind(w.id.clone())
        .bind(w.name.clone())
        .bind(w.capacity.cpu_millis as i64)
        .bind(w.capacity.memory_bytes as i64)
        .bind(w.capacity.disk_bytes as i64)
        .bind(json(&w.labels))
        .bind(w.ffmpeg_version.clone())
        .bind(w.registered_at_ms)
        .bind(w.last_heartbeat_ms)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn heartbeat_workers(
        &self,
        beats: &[Heartbeat],
        now_ms: i64,
    ) -> Result<Vec<Option<WorkerState>>> {
        if beats.is_empty() {
            return Ok(vec![]);
        }
        let mut tx = self.begin().await?;
        // The workers' states, locked in id order; each beat then sees what
        // the ones before it in this batch made of its worker.
        let ids = beats.iter().map(|b| b.worker_id.as_str());
        let rows = self
            .rows_where_in(&mut tx, "SELECT id, state FROM workers", "id", ids, true)
            .await?;
        let mut states: HashMap<String, WorkerState> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let state: String = row.try_get("state")?;
            let state = WorkerState::parse(&state)
                .ok_or_else(|| Error::Corrupt(format!("worker state {state:?}")))?;
            states.insert(row.try_get("id")?, state);
        }
        let mut befores = Vec::with_capacity(beats.len());
        // The last report of each live worker is what gets written.
        let mut latest: BTreeMap<&str, (WorkerState, &str)> = BTreeMap::new();
        for beat in beats {
            let before = states.get(&beat.worker_id).copied();
            if let Some(before) = before
                && before != WorkerState::Lost
            {
                let after = beat.report.state_after(before);
                states.insert(beat.worker_id.clone(), after);
                latest.insert(&beat.worker_id, (after, &beat.report.note));
            }
            befores.push(before);
        }
        let latest: Vec<_> = latest.into_iter().collect();
        let statement = |n| {
            format!(
                "UPDATE workers SET last_heartbeat_ms = CAST(v.column2 AS BIGINT), \
                 state = v.column3, note = v.column4 \
                 FROM (VALUES {}) AS v WHERE workers.id = v.column1",
                value_rows(self.dialect, 1, n, 4)
            )
        };
        per_chunk(&mut tx, &latest, statement, |q, (id, (state, note))| {
            q.bind(id.to_string())
                .bind(now_ms)
                .bind(state.as_str())
                .bind(note.to_string())
        })
        .await?;
        tx.commit().await?;
        Ok(befores)
    }

    async fn mark_lost_workers(&self, cutoff_ms: i64) -> Result<Vec<String>> {
        let mut conn = self.write().await?;
        Ok(sqlx::query_scalar(
            "UPDATE workers SET state = 'lost' WHERE state <> 'lost' AND last_heartbeat_ms < $1 \
             RETURNING id",
        )
        .bind(cutoff_ms)
        .fetch_all(&mut *conn)
        .await?)
    }

    async fn worker(&self, id: &str) -> Result<Option<WorkerRecord>> {
        let sql = format!("SELECT {WORKER_COLUMNS} FROM workers WHERE id = $1");
        let mut conn = self.read().await?;
        sqlx::query(&sql)
            .bind(id.to_owned())
            .fetch_optional(&mut *conn)
            .await?
            .map(|row| worker_from_row(&row))
            .transpose()
    }

    async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        let sql = format!("SELECT {WORKER_COLUMNS} FROM workers ORDER BY name, id");
        let mut conn = self.read().await?;
        let rows = sqlx::query(&sql).fetch_all(&mut *conn).await?;
        rows.iter().map(worker_from_row).collect()
    }

    async fn held_jobs(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let mut conn = self.read().await?;
        let held = sqlx::query(
            "SELECT worker_id, id FROM jobs WHERE state IN ('leased', 'running') ORDER BY id",
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut by_worker: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &held {
            let worker: Option<String> = r.try_get("worker_id")?;
            by_worker
                .entry(worker.unwrap_or_default())
                .or_default()
                .push(r.try_get("id")?);
        }
        Ok(by_worker)
    }

    async fn listen(
        &self,
        sink: mpsc::UnboundedSender<Change>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        if !self.dialect.is_shared() {
            return Ok(());
        }
        super::listen::postgres(&self.url, sink, shutdown).await
    }

    async fn job_counts(&self, now_ms: i64) -> Result<JobCounts> {
        let mut conn = self.read().await?;
        let rows =
            sqlx::query("SELECT state, priority, COUNT(*) AS n FROM jobs GROUP BY state, priority")
                .fetch_all(&mut *conn)
                .await?;
        let rows = rows
            .iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                Ok(JobCount {
                    state: JobState::parse(&state)
                        .ok_or_else(|| Error::Corrupt(format!("job state {state:?}")))?,
                    priority: row.try_get::<i32, _>("priority")?,
                    count: row.try_get("n")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let oldest_runnable_ms = sqlx::query_scalar(
            "SELECT MIN(not_before_ms) FROM jobs WHERE state = 'queued' AND not_before_ms <= $1",
        )
        .bind(now_ms)
        .fetch_one(&mut *conn)
        .await?;
        Ok(JobCounts {
            rows,
            oldest_runnable_ms,
        })
    }

    fn pool_stats(&self) -> PoolStats {
        let size = self.writer.size()
            + if self.dialect.is_shared() {
                0
            } else {
                self.reader.size()
            };
        let idle = self.writer.num_idle()
            + if self.dialect.is_shared() {
                0
            } else {
                self.reader.num_idle()
            };
        PoolStats {
            size,
            idle: idle as u32,
            in_use: size.saturating_sub(idle as u32),
            acquire_waits: self.acquire_waits.load(Ordering::Relaxed),
            acquire_wait_seconds: self.acquire_wait_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}
