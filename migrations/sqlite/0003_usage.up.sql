-- What a job's processes used (CPU time, peak memory), from its cgroup.
ALTER TABLE jobs ADD COLUMN usage TEXT;
