DROP INDEX jobs_finished;
ALTER TABLE jobs DROP COLUMN finished_at_ms;
