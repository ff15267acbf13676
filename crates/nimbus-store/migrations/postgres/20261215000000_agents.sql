-- Bare-metal agents (`nimbusd agent`). An agent enrols once with a one-time enrolment token and
-- from then on authenticates with its own credential; only SHA-256 hashes of both are stored.
-- Operations are what the control plane asks an agent to do to a BMC it reaches; the agent
-- pulls pending ones and reports each result.
CREATE TABLE agent_enrolment_tokens (
    id           TEXT PRIMARY KEY NOT NULL,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- The name the agent enrols under.
    agent_name   TEXT NOT NULL,
    token_sha256 BYTEA NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT
);

CREATE TABLE agents (
    id                TEXT PRIMARY KEY NOT NULL,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name              TEXT NOT NULL,
    credential_sha256 BYTEA NOT NULL UNIQUE,
    enrolled_at       BIGINT NOT NULL,
    last_seen_at      BIGINT,
    -- The last heartbeat's report (health, capacity, BMCs), JSON.
    report            TEXT,
    UNIQUE (tenant_id, name)
);

CREATE TABLE agent_operations (
    id          TEXT PRIMARY KEY NOT NULL,
    agent_id    TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    bmc         TEXT NOT NULL,
    op          TEXT NOT NULL,
    state       TEXT NOT NULL,
    outcome     TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX agent_operations_pending ON agent_operations (agent_id, state, created_at);
