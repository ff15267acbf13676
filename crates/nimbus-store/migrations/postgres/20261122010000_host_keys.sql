-- SSH host keys pinned on first use, per tenant (one tenant's pins never affect another's).
-- A key here is an OpenSSH public key line without comment; a changed key is refused, never
-- replaced by Nimbus.
CREATE TABLE host_keys (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    host_id    TEXT NOT NULL,
    public_key TEXT NOT NULL,
    pinned_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, host_id)
);
