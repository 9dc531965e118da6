-- A job's W3C traceparent: its submit span, parent of its lease and run.
ALTER TABLE jobs ADD COLUMN trace_parent TEXT NOT NULL DEFAULT '';
