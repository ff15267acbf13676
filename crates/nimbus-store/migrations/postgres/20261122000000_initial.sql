-- Nimbus store, PostgreSQL. Ids are UUID text, timestamps unix microseconds, JSON documents text,
-- credentials sealed blobs (see src/seal.rs). Keep in step with ../sqlite.

CREATE TABLE tenants (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

-- SHA-256 of tenant tokens; the tokens themselves are never stored.
CREATE TABLE tenant_tokens (
    token_sha256 BYTEA PRIMARY KEY NOT NULL,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL
);
CREATE INDEX tenant_tokens_tenant ON tenant_tokens (tenant_id);

CREATE TABLE providers (
    id            TEXT PRIMARY KEY NOT NULL,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    provider_type TEXT NOT NULL,
    credentials   BYTEA,
    config        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE forge_configs (
    tenant_id   TEXT PRIMARY KEY NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    forge_type  TEXT NOT NULL,
    org         TEXT NOT NULL,
    credentials BYTEA,
    config      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Machine intent and what Nimbus last knew of it. provider_id has no foreign key on purpose:
-- terminated machines stay as history after their provider is deleted.
CREATE TABLE machines (
    id                TEXT PRIMARY KEY NOT NULL,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id),
    provider_id       TEXT NOT NULL,
    os                TEXT NOT NULL,
    arch              TEXT NOT NULL,
    state             TEXT NOT NULL,
    ip_address        TEXT,
    ssh_public_key    TEXT,
    labels            TEXT NOT NULL,
    instance_type     TEXT,
    image             TEXT NOT NULL,
    provider_metadata TEXT NOT NULL,
    error             TEXT,
    setup_progress    TEXT,
    spec              TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX machines_tenant ON machines (tenant_id, created_at, id);
CREATE INDEX machines_provider ON machines (provider_id, state);
CREATE INDEX machines_order ON machines (created_at, id);

CREATE TABLE machine_history (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    machine_id TEXT NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    state      TEXT NOT NULL,
    at         BIGINT NOT NULL,
    reason     TEXT
);
CREATE INDEX machine_history_machine ON machine_history (machine_id, seq);

-- The event log. No foreign keys: events outlive what they describe.
CREATE TABLE events (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       TEXT NOT NULL,
    at         BIGINT NOT NULL,
    tenant_id  TEXT,
    machine_id TEXT,
    duration   DOUBLE PRECISION,
    error      TEXT,
    metadata   TEXT NOT NULL
);
CREATE INDEX events_tenant ON events (tenant_id, seq);
CREATE INDEX events_machine ON events (machine_id, seq);
