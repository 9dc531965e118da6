DROP TABLE workers;
DROP TABLE job_transitions;
DROP TABLE leases;
DROP INDEX IF EXISTS jobs_lease_expiry;
DROP INDEX IF EXISTS jobs_queue;
DROP TABLE jobs;
