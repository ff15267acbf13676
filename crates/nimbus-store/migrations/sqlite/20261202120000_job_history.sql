-- When a job started running (its in_progress news), so a finished job's run time is known.
ALTER TABLE jobs ADD COLUMN started_at BIGINT;

-- Finished jobs, kept after the demand book forgets them (an hour after they end) for as long
-- as the daemon's history retention: the autoscaler learns each pool's demand per hour of the
-- week from them, and the cost report prices each job's share of its runner's machine. One row
-- per job, written in the transaction that records the job's completion.
CREATE TABLE job_history (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    job_id      BIGINT NOT NULL,
    run_id      BIGINT NOT NULL,
    repository  TEXT NOT NULL,
    labels      TEXT NOT NULL,
    runner_name TEXT,
    queued_at   BIGINT NOT NULL,
    started_at  BIGINT,
    finished_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, job_id)
);
CREATE INDEX job_history_finished ON job_history (tenant_id, finished_at);
