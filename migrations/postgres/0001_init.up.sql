-- Jobs, their lease history, their state history, and workers.
-- Integers are BIGINT throughout so both backends decode them as i64.
CREATE TABLE jobs (
    id                  TEXT PRIMARY KEY NOT NULL,
    idempotency_key     TEXT UNIQUE,
    spec                TEXT NOT NULL,            -- JSON JobSpec, validated
    state               TEXT NOT NULL,
    priority            BIGINT NOT NULL,
    cpu_millis          BIGINT NOT NULL,
    memory_bytes        BIGINT NOT NULL,
    disk_bytes          BIGINT NOT NULL,
    attempt             BIGINT NOT NULL DEFAULT 0,
    max_attempts        BIGINT NOT NULL,
    worker_id           TEXT,
    lease_token         BIGINT,
    lease_expires_at_ms BIGINT,
    cancel_requested    BIGINT NOT NULL DEFAULT 0,
    not_before_ms       BIGINT NOT NULL,
    failure             TEXT,                     -- JSON Failure
    progress            TEXT,                     -- JSON Progress
    bandwidth           TEXT,                     -- JSON Bandwidth
    created_at_ms       BIGINT NOT NULL,
    updated_at_ms       BIGINT NOT NULL
);

-- The scheduler's scan: queued jobs by priority, then age.
CREATE INDEX jobs_queue ON jobs (state, priority DESC, created_at_ms, id);
-- The reaper's scan: leases by expiry.
CREATE INDEX jobs_lease_expiry ON jobs (lease_expires_at_ms) WHERE lease_token IS NOT NULL;

-- Every lease ever granted. The token is the fencing token: it only grows.
CREATE TABLE leases (
    token          BIGSERIAL PRIMARY KEY,
    job_id         TEXT NOT NULL REFERENCES jobs (id),
    worker_id      TEXT NOT NULL,
    attempt        BIGINT NOT NULL,
    granted_at_ms  BIGINT NOT NULL
);
CREATE INDEX leases_job ON leases (job_id);

CREATE TABLE job_transitions (
    id           BIGSERIAL PRIMARY KEY,
    job_id       TEXT NOT NULL REFERENCES jobs (id),
    from_state   TEXT NOT NULL,
    to_state     TEXT NOT NULL,
    at_ms        BIGINT NOT NULL,
    reason       TEXT NOT NULL,
    worker_id    TEXT,
    lease_token  BIGINT
);
CREATE INDEX job_transitions_job ON job_transitions (job_id, id);

CREATE TABLE workers (
    id                 TEXT PRIMARY KEY NOT NULL,
    name               TEXT NOT NULL,
    cpu_millis         BIGINT NOT NULL,
    memory_bytes       BIGINT NOT NULL,
    disk_bytes         BIGINT NOT NULL,
    labels             TEXT NOT NULL,             -- JSON object
    ffmpeg_version     TEXT NOT NULL,
    state              TEXT NOT NULL,             -- ready, draining, lost
    registered_at_ms   BIGINT NOT NULL,
    last_heartbeat_ms  BIGINT NOT NULL
);
