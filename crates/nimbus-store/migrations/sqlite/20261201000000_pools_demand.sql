-- Elastic fleets: pools, which pool a machine belongs to and how its runner was used, and the
-- demand book (jobs and webhook delivery ids) that used to live in memory.

-- The pool that asked for a machine (NULL for machines provisioned by hand). No foreign key:
-- terminated machines keep the id as history after their pool is deleted.
ALTER TABLE machines ADD COLUMN pool_id TEXT;
-- RunnerUsage as JSON.
ALTER TABLE machines ADD COLUMN usage TEXT NOT NULL DEFAULT '{}';
CREATE INDEX machines_pool ON machines (pool_id, state);
-- What changed since the autoscaler's last pass.
CREATE INDEX machines_changed ON machines (tenant_id, updated_at);

-- A pool's settings (PoolSettings) are one JSON document: they are validated as a whole and
-- never queried by field.
CREATE TABLE pools (
    id          TEXT PRIMARY KEY NOT NULL,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    provider_id TEXT NOT NULL REFERENCES providers (id),
    settings    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE INDEX pools_provider ON pools (provider_id);

-- The demand book: what each tenant's forge said about each job. status_rank orders statuses
-- (queued/waiting 0, in_progress 1, completed 2) so an upsert can refuse to move a job back.
CREATE TABLE jobs (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    job_id      BIGINT NOT NULL,
    run_id      BIGINT NOT NULL,
    repository  TEXT NOT NULL,
    labels      TEXT NOT NULL,
    status      TEXT NOT NULL,
    status_rank BIGINT NOT NULL,
    runner_name TEXT,
    first_seen  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    source      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, job_id)
);
CREATE INDEX jobs_finished ON jobs (status_rank, updated_at);
CREATE INDEX jobs_changed ON jobs (tenant_id, updated_at);

-- Webhook delivery ids already counted, per tenant, so a redelivery is not counted twice.
CREATE TABLE webhook_deliveries (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    delivery_id TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, delivery_id)
);
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);
