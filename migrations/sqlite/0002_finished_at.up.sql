-- When a job reached a final state: for retention sweeps and for job
-- duration, without scanning the transition history.
ALTER TABLE jobs ADD COLUMN finished_at_ms BIGINT;
CREATE INDEX jobs_finished ON jobs (finished_at_ms) WHERE finished_at_ms IS NOT NULL;
