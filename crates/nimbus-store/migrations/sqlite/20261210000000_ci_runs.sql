-- Nimbus Git CI: the runs nimbusd executes and their jobs. The forge (Nimbus Git) shows them;
-- these rows are what nimbusd needs to carry a run through a restart.

-- One row per workflow run. (tenant, delivery, workflow) makes a redelivered push a no-op.
-- `number` is the forge's run number, NULL until the run exists there.
CREATE TABLE ci_runs (
    id                TEXT PRIMARY KEY NOT NULL,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    delivery_id       TEXT NOT NULL,
    repository        TEXT NOT NULL,
    workflow          TEXT NOT NULL,
    name              TEXT NOT NULL,
    number            BIGINT,
    sha               TEXT NOT NULL,
    git_ref           TEXT NOT NULL,
    pusher            TEXT NOT NULL,
    concurrency_group TEXT,
    -- Why the workflow could not run (it does not parse); such a run has no jobs.
    error             TEXT,
    active            BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    UNIQUE (tenant_id, delivery_id, workflow)
);
CREATE INDEX ci_runs_active ON ci_runs (active, tenant_id);
CREATE INDEX ci_runs_number ON ci_runs (tenant_id, repository, number);

-- One row per job attempt. `id` is also the job's id in the demand book (jobs.job_id), so pools
-- scale for it like for any forge's job. `plan` is the planned job (steps, env, timeout) as JSON.
CREATE TABLE ci_jobs (
    id         BIGINT PRIMARY KEY NOT NULL,
    run_id     TEXT NOT NULL REFERENCES ci_runs (id) ON DELETE CASCADE,
    tenant_id  TEXT NOT NULL,
    job_key    TEXT NOT NULL,
    attempt    BIGINT NOT NULL,
    plan       TEXT NOT NULL,
    labels     TEXT NOT NULL,
    state      TEXT NOT NULL,
    machine_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (run_id, job_key)
);
CREATE INDEX ci_jobs_state ON ci_jobs (state);
