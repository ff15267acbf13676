//! [`SqlStore`]: the [`Storage`] implementation over SQLite and PostgreSQL through sqlx's `Any`
//! driver, so one set of queries serves both backends (`$N` placeholders work on both).
//!
//! Representation: ids are UUID text, timestamps BIGINT unix microseconds, JSON documents TEXT,
//! credentials sealed BLOB/BYTEA bound to their row (see `seal.rs`).
//!
//! SQLite allows one writer at a time. Instead of letting writers race into "database is
//! locked", every write on SQLite takes one async mutex for its whole duration (readers are not
//! blocked: WAL). On PostgreSQL the mutex is skipped and row locks do that work.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nimbus_types::api::StateChange;
use nimbus_types::demand::{Applied, FinishedJob, ForgeJob, JobRecord, JobStatus, Source};
use nimbus_types::event::Event;
use nimbus_types::{
    ForgeConfig, Image, Machine, MachineId, MachineSpec, MachineState, Pool, PoolId,
    ProviderConfig, ProviderId, ProviderMetadata, Secret, SetupProgress, Tenant, TenantId,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Row};
use time::OffsetDateTime;
use tokio::sync::{Mutex, MutexGuard};

use crate::{
    Error, EventFilter, MachineFilter, MachineRecord, PoolMachine, Result, Sealer, Storage,
};

mod agents;
mod ci;

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Events returned by [`Storage::list_events`] when the filter sets no limit.
pub const DEFAULT_EVENT_LIMIT: u32 = 1000;

/// Connection settings of a [`SqlStore`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Upper bound of the connection pool.
    pub max_connections: u32,
    /// How long SQLite waits for a lock held by another process before giving up.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 8,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// The SQL store. Cheap to clone: clones share the pool, the write lock and the sealer.
#[derive(Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    write_lock: Arc<Mutex<()>>,
    sealer: Sealer,
    /// Bumped after every machine write on SQLite (see `Storage::machines_version`).
    machines_version: Arc<std::sync::atomic::AtomicU64>,
}

impl fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl SqlStore {
    /// Opens the store at `url` and brings its schema up to date.
    ///
    /// `sqlite:PATH` (or `sqlite://PATH`) creates the file and its directory when missing;
    /// `postgres://…` and `postgresql://…` connect to an existing database.
    pub async fn connect(url: &str, options: StoreOptions, sealer: Sealer) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(Error::Database(sqlx::Error::Configuration(
                format!(
                    "unsupported database URL scheme in {:?}: expected sqlite:PATH or postgres://…",
                    redact_url(url)
                )
                .into(),
            )));
        };
        let mut pool_options =
            AnyPoolOptions::new().max_connections(options.max_connections.max(1));
        let busy_ms = options.busy_timeout.as_millis().min(i32::MAX as u128) as u32;
        let url = match backend {
            Backend::Sqlite => {
                pool_options = pool_options
                    .after_connect(move |conn, _meta| Box::pin(sqlite_pragmas(conn, busy_ms)));
                let (url, in_memory) = prepare_sqlite_file(url)?;
                if in_memory {
                    // Every new connection would open its own empty in-memory database: keep
                    // exactly one, forever.
                    pool_options = pool_options
                        .max_connections(1)
                        .min_connections(1)
                        .idle_timeout(None)
                        .max_lifetime(None);
                }
                url
            }
            Backend::Postgres => url.to_owned(),
        };
        // The pool retries failed connections until its timeout; one direct attempt first
        // reports a wrong address, a refused connection or a file that is not a database at once.
        let mut probe = AnyConnection::connect(&url).await?;
        if backend == Backend::Sqlite {
            sqlite_pragmas(&mut probe, busy_ms).await?;
        }
        probe.close().await?;
        let pool = pool_options.connect(&url).await?;
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        };
        migrator.run(&pool).await?;
        Ok(SqlStore {
            pool,
            backend,
            write_lock: Arc::new(Mutex::new(())),
            machines_version: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            sealer,
        })
    }

    /// The `sqlite:` URL of a database file, e.g. `$XDG_DATA_HOME/nimbus/nimbus.db`.
    pub fn sqlite_path_url(path: &Path) -> String {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let mut url = String::from("sqlite://");
        for byte in path.as_os_str().as_encoded_bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                    url.push(*byte as char)
                }
                _ => url.push_str(&format!("%{byte:02X}")),
            }
        }
        url.push_str("?mode=rwc");
        url
    }

    /// `"sqlite"` or `"postgres"`.
    fn bump_machines_version(&self) {
        self.machines_version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        let row = sqlx::query("SELECT 1 AS one").fetch_one(&self.pool).await?;
        let one: i64 = row.try_get("one")?;
        if one != 1 {
            return Err(Error::Corrupt(format!("SELECT 1 returned {one}")));
        }
        Ok(())
    }

    /// Closes every connection; later calls fail. Waits for checked-out connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Serializes writes on SQLite; nothing to do on PostgreSQL.
    async fn write_guard(&self) -> Option<MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.write_lock.lock().await),
            Backend::Postgres => None,
        }
    }

    /// Starts a write transaction. On SQLite it takes the write lock up front (`BEGIN
    /// IMMEDIATE`), waiting up to the busy timeout for another process's writer, instead of
    /// failing when a read turns into a write under a concurrent commit.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Row-lock clause for reads that guard a later write in the same transaction. SQLite
    /// needs none: its writes are serialized by `write_guard`.
    fn lock_clause(&self, mode: &str) -> String {
        match self.backend {
            Backend::Sqlite => String::new(),
            Backend::Postgres => format!(" FOR {mode}"),
        }
    }

    fn seal(&self, secret: &Option<Secret>, aad: &str) -> Option<Vec<u8>> {
        secret
            .as_ref()
            .map(|secret| self.sealer.seal(secret.expose().as_bytes(), aad.as_bytes()))
    }

    fn open(&self, sealed: Option<Vec<u8>>, aad: &str) -> Result<Option<Secret>> {
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let plain = self.sealer.open(&sealed, aad.as_bytes())?;
        let text = String::from_utf8(plain)
            .map_err(|_| Error::Corrupt(format!("credentials of {aad} are not UTF-8")))?;
        Ok(Some(Secret::new(text)))
    }

    fn provider_from_row(&self, row: &AnyRow) -> Result<ProviderConfig> {
        let id: ProviderId = parse(row, "id")?;
        Ok(ProviderConfig {
            id,
            tenant_id: parse(row, "tenant_id")?,
            name: row.try_get("name")?,
            provider_type: parse(row, "provider_type")?,
            credentials: self.open(row.try_get("credentials")?, &provider_aad(id))?,
            config: json(row, "config")?,
            created_at: timestamp(row, "created_at")?,
        })
    }

    async fn insert_machine_locked(&self, machine: &Machine, spec: &MachineSpec) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT id FROM providers WHERE id = $1 AND tenant_id = $2{}",
            self.lock_clause("SHARE")
        );
        let provider = sqlx::query(&sql)
            .bind(machine.provider_id.to_string())
            .bind(machine.tenant_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if provider.is_none() {
            return Err(Error::NotFound { entity: "provider" });
        }
        let result = sqlx::query(
            "INSERT INTO machines (id, tenant_id, provider_id, os, arch, state, ip_address, \
             ssh_public_key, labels, instance_type, image, provider_metadata, error, \
             setup_progress, spec, created_at, updated_at, pool_id, usage) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19)",
        )
        .bind(machine.id.to_string())
        .bind(machine.tenant_id.to_string())
        .bind(machine.provider_id.to_string())
        .bind(machine.os.as_str())
        .bind(machine.arch.as_str())
        .bind(machine.state.as_str())
        .bind(machine.ip_address.clone())
        .bind(machine.ssh_public_key.clone())
        .bind(to_json(&machine.labels)?)
        .bind(machine.instance_type.clone())
        .bind(to_json(&machine.image)?)
        .bind(to_json(&machine.provider_metadata)?)
        .bind(machine.error.clone())
        .bind(machine.setup_progress.as_ref().map(to_json).transpose()?)
        .bind(to_json(spec)?)
        .bind(micros(machine.created_at))
        .bind(micros(machine.updated_at))
        .bind(machine.pool_id.map(|id| id.to_string()))
        .bind(to_json(&machine.usage)?)
        .execute(&mut *tx)
        .await;
        result.map_err(|err| conflict(err, "machine"))?;
        insert_history(&mut tx, machine.id, machine.state, None).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_machine_locked(
        &self,
        machine: &Machine,
        expected: MachineState,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result = sqlx::query(
            "UPDATE machines SET state = $3, ip_address = $4, ssh_public_key = $5, labels = $6, \
             instance_type = $7, image = $8, provider_metadata = $9, error = $10, \
             setup_progress = $11, created_at = $12, updated_at = $13, usage = $15 \
             WHERE id = $1 AND tenant_id = $2 AND state = $14",
        )
        .bind(machine.id.to_string())
        .bind(machine.tenant_id.to_string())
        .bind(machine.state.as_str())
        .bind(machine.ip_address.clone())
        .bind(machine.ssh_public_key.clone())
        .bind(to_json(&machine.labels)?)
        .bind(machine.instance_type.clone())
        .bind(to_json(&machine.image)?)
        .bind(to_json(&machine.provider_metadata)?)
        .bind(machine.error.clone())
        .bind(machine.setup_progress.as_ref().map(to_json).transpose()?)
        .bind(micros(machine.created_at))
        .bind(micros(machine.updated_at))
        .bind(expected.as_str())
        .bind(to_json(&machine.usage)?)
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() == 0 {
            let row = sqlx::query("SELECT state FROM machines WHERE id = $1 AND tenant_id = $2")
                .bind(machine.id.to_string())
                .bind(machine.tenant_id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                return Err(Error::NotFound { entity: "machine" });
            };
            return Err(Error::StaleState {
                id: machine.id,
                expected,
                actual: parse(&row, "state")?,
            });
        }
        if machine.state != expected {
            insert_history(&mut tx, machine.id, machine.state, reason).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete_provider_locked(&self, tenant_id: TenantId, id: ProviderId) -> Result<()> {
        let mut tx = self.begin_write().await?;
        // Locking the provider row waits for machine inserts that hold it (FOR SHARE) to
        // commit, so the count below sees them.
        let sql = format!(
            "SELECT id FROM providers WHERE id = $1 AND tenant_id = $2{}",
            self.lock_clause("UPDATE")
        );
        let found = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(tenant_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Err(Error::NotFound { entity: "provider" });
        }
        let row = sqlx::query(
            "SELECT COUNT(*) AS live FROM machines WHERE provider_id = $1 AND state <> 'terminated'",
        )
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let live: i64 = row.try_get("live")?;
        if live > 0 {
            return Err(Error::Conflict {
                entity: "live machines of provider",
            });
        }
        let row = sqlx::query("SELECT COUNT(*) AS pools FROM pools WHERE provider_id = $1")
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        let pools: i64 = row.try_get("pools")?;
        if pools > 0 {
            return Err(Error::Conflict {
                entity: "pools of provider",
            });
        }
        sqlx::query("DELETE FROM providers WHERE id = $1 AND tenant_id = $2")
            .bind(id.to_string())
            .bind(tenant_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

const MACHINE_COLUMNS: &str = "id, tenant_id, provider_id, os, arch, state, ip_address, \
     ssh_public_key, labels, instance_type, image, provider_metadata, error, setup_progress, \
     spec, created_at, updated_at, pool_id, usage";
const POOL_COLUMNS: &str = "id, tenant_id, name, provider_id, settings, created_at, updated_at";
const JOB_COLUMNS: &str = "job_id, run_id, repository, labels, status, runner_name, first_seen, \
     updated_at, source";
const PROVIDER_COLUMNS: &str =
    "id, tenant_id, name, provider_type, credentials, config, created_at";
const EVENT_COLUMNS: &str = "seq, name, at, tenant_id, machine_id, duration, error, metadata";

#[async_trait]
impl Storage for SqlStore {
    async fn get_tenant(&self, id: TenantId) -> Result<Tenant> {
        let row = sqlx::query("SELECT id, name, created_at FROM tenants WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound { entity: "tenant" })?;
        tenant_from_row(&row)
    }

    async fn list_tenant_providers(&self, tenant_id: TenantId) -> Result<Vec<ProviderConfig>> {
        let sql =
            format!("SELECT {PROVIDER_COLUMNS} FROM providers WHERE tenant_id = $1 ORDER BY name");
        let rows = sqlx::query(&sql)
            .bind(tenant_id.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| self.provider_from_row(row)).collect()
    }

    async fn get_provider(&self, tenant_id: TenantId, id: ProviderId) -> Result<ProviderConfig> {
        let sql =
            format!("SELECT {PROVIDER_COLUMNS} FROM providers WHERE id = $1 AND tenant_id = $2");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(tenant_id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound { entity: "provider" })?;
        self.provider_from_row(&row)
    }

    async fn get_tenant_forge_config(&self, tenant_id: TenantId) -> Result<Option<ForgeConfig>> {
        let row = sqlx::query(
            "SELECT tenant_id, forge_type, org, credentials, config, updated_at \
             FROM forge_configs WHERE tenant_id = $1",
        )
        .bind(tenant_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let tenant_id: TenantId = parse(&row, "tenant_id")?;
        Ok(Some(ForgeConfig {
            tenant_id,
            forge_type: parse(&row, "forge_type")?,
            org: row.try_get("org")?,
            credentials: self.open(row.try_get("credentials")?, &forge_aad(tenant_id))?,
            config: json(&row, "config")?,
            updated_at: timestamp(&row, "updated_at")?,
        }))
    }

    async fn create_tenant(&self, name: &str) -> Result<Tenant> {
        let tenant = Tenant {
            id: TenantId::new(),
            name: name.to_owned(),
            created_at: nimbus_types::now(),
        };
        let _guard = self.write_guard().await;
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(tenant.id.to_string())
            .bind(tenant.name.clone())
            .bind(micros(tenant.created_at))
            .execute(&self.pool)
            .await
            .map_err(|err| conflict(err, "tenant"))?;
        Ok(tenant)
    }

    async fn get_tenant_by_name(&self, name: &str) -> Result<Tenant> {
        let row = sqlx::query("SELECT id, name, created_at FROM tenants WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound { entity: "tenant" })?;
        tenant_from_row(&row)
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query("SELECT id, name, created_at FROM tenants ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tenant_from_row).collect()
    }

    async fn add_tenant_token(&self, tenant_id: TenantId, token_sha256: &[u8]) -> Result<()> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let tenant = sqlx::query("SELECT id FROM tenants WHERE id = $1")
            .bind(tenant_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if tenant.is_none() {
            return Err(Error::NotFound { entity: "tenant" });
        }
        sqlx::query(
            "INSERT INTO tenant_tokens (token_sha256, tenant_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(token_sha256.to_vec())
        .bind(tenant_id.to_string())
        .bind(micros(nimbus_types::now()))
        .execute(&mut *tx)
        .await
        .map_err(|err| conflict(err, "tenant token"))?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_host_key(&self, tenant_id: TenantId, host_id: &str) -> Result<Option<String>> {
        let row =
            sqlx::query("SELECT public_key FROM host_keys WHERE tenant_id = $1 AND host_id = $2")
                .bind(tenant_id.to_string())
                .bind(host_id.to_owned())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|row| row.get::<String, _>("public_key")))
    }

    async fn pin_host_key(
        &self,
        tenant_id: TenantId,
        host_id: &str,
        public_key: &str,
    ) -> Result<String> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO host_keys (tenant_id, host_id, public_key, pinned_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, host_id) DO NOTHING",
        )
        .bind(tenant_id.to_string())
        .bind(host_id.to_owned())
        .bind(public_key.to_owned())
        .bind(micros(nimbus_types::now()))
        .execute(&mut *tx)
        .await
        .map_err(|err| match &err {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                Error::NotFound { entity: "tenant" }
            }
            _ => Error::Database(err),
        })?;
        let row =
            sqlx::query("SELECT public_key FROM host_keys WHERE tenant_id = $1 AND host_id = $2")
                .bind(tenant_id.to_string())
                .bind(host_id.to_owned())
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(row.get::<String, _>("public_key"))
    }

    async fn tenant_for_token(&self, token_sha256: &[u8]) -> Result<Option<TenantId>> {
        let row = sqlx::query("SELECT tenant_id FROM tenant_tokens WHERE token_sha256 = $1")
            .bind(token_sha256.to_vec())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| parse(&row, "tenant_id")).transpose()
    }

    async fn create_provider(&self, provider: &ProviderConfig) -> Result<()> {
        let credentials = self.seal(&provider.credentials, &provider_aad(provider.id));
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let tenant = sqlx::query("SELECT id FROM tenants WHERE id = $1")
            .bind(provider.tenant_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if tenant.is_none() {
            return Err(Error::NotFound { entity: "tenant" });
        }
        sqlx::query(
            "INSERT INTO providers (id, tenant_id, name, provider_type, credentials, config, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(provider.id.to_string())
        .bind(provider.tenant_id.to_string())
        .bind(provider.name.clone())
        .bind(provider.provider_type.as_str())
        .bind(credentials)
        .bind(to_json(&provider.config)?)
        .bind(micros(provider.created_at))
        .execute(&mut *tx)
        .await
        .map_err(|err| conflict(err, "provider"))?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_provider_by_name(
        &self,
        tenant_id: TenantId,
        name: &str,
    ) -> Result<ProviderConfig> {
        let sql =
            format!("SELECT {PROVIDER_COLUMNS} FROM providers WHERE tenant_id = $1 AND name = $2");
        let row = sqlx::query(&sql)
            .bind(tenant_id.to_string())
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound { entity: "provider" })?;
        self.provider_from_row(&row)
    }

    async fn list_all_providers(&self) -> Result<Vec<ProviderConfig>> {
        let sql = format!("SELECT {PROVIDER_COLUMNS} FROM providers ORDER BY tenant_id, name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(|row| self.provider_from_row(row)).collect()
    }

    async fn delete_provider(&self, tenant_id: TenantId, id: ProviderId) -> Result<()> {
        let _guard = self.write_guard().await;
        self.delete_provider_locked(tenant_id, id).await
    }

    async fn set_tenant_forge_config(&self, forge: &ForgeConfig) -> Result<()> {
        let credentials = self.seal(&forge.credentials, &forge_aad(forge.tenant_id));
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let tenant = sqlx::query("SELECT id FROM tenants WHERE id = $1")
            .bind(forge.tenant_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if tenant.is_none() {
            return Err(Error::NotFound { entity: "tenant" });
        }
        sqlx::query(
            "INSERT INTO forge_configs (tenant_id, forge_type, org, credentials, config, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant_id) DO UPDATE SET forge_type = excluded.forge_type, \
             org = excluded.org, credentials = excluded.credentials, config = excluded.config, \
             updated_at = excluded.updated_at",
        )
        .bind(forge.tenant_id.to_string())
        .bind(forge.forge_type.as_str())
        .bind(forge.org.clone())
        .bind(credentials)
        .bind(to_json(&forge.config)?)
        .bind(micros(forge.updated_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_machine(&self, machine: &Machine, spec: &MachineSpec) -> Result<()> {
        let _guard = self.write_guard().await;
        let result = self.insert_machine_locked(machine, spec).await;
        self.bump_machines_version();
        result
    }

    fn machines_version(&self) -> Option<u64> {
        match self.backend {
            // This process is the only writer of its SQLite file.
            Backend::Sqlite => Some(
                self.machines_version
                    .load(std::sync::atomic::Ordering::Acquire),
            ),
            // Other replicas write too; their writes would not show here.
            Backend::Postgres => None,
        }
    }

    async fn get_machine(
        &self,
        tenant_id: Option<TenantId>,
        id: MachineId,
    ) -> Result<MachineRecord> {
        let row = match tenant_id {
            Some(tenant_id) => {
                let sql = format!(
                    "SELECT {MACHINE_COLUMNS} FROM machines WHERE id = $1 AND tenant_id = $2"
                );
                sqlx::query(&sql)
                    .bind(id.to_string())
                    .bind(tenant_id.to_string())
                    .fetch_optional(&self.pool)
                    .await?
            }
            None => {
                let sql = format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE id = $1");
                sqlx::query(&sql)
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        machine_from_row(&row.ok_or(Error::NotFound { entity: "machine" })?)
    }

    async fn list_machines(&self, filter: &MachineFilter) -> Result<Vec<MachineRecord>> {
        let mut sql = format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE 1 = 1");
        let mut binds = Vec::new();
        if let Some(tenant_id) = filter.tenant_id {
            binds.push(tenant_id.to_string());
            sql.push_str(&format!(" AND tenant_id = ${}", binds.len()));
        }
        if let Some(provider_id) = filter.provider_id {
            binds.push(provider_id.to_string());
            sql.push_str(&format!(" AND provider_id = ${}", binds.len()));
        }
        if let Some(pool_id) = filter.pool_id {
            binds.push(pool_id.to_string());
            sql.push_str(&format!(" AND pool_id = ${}", binds.len()));
        }
        match (filter.include_terminated, filter.terminated_since) {
            (true, _) => {}
            (false, None) => sql.push_str(" AND state <> 'terminated'"),
            (false, Some(since)) => sql.push_str(&format!(
                " AND (state <> 'terminated' OR updated_at >= {})",
                micros(since)
            )),
        }
        sql.push_str(" ORDER BY created_at, id");
        let mut query = sqlx::query(&sql);
        for bind in binds {
            query = query.bind(bind);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(machine_from_row).collect()
    }

    async fn update_machine(
        &self,
        machine: &Machine,
        expected: MachineState,
        reason: Option<&str>,
    ) -> Result<()> {
        if machine.state != expected {
            expected.transition(machine.state)?;
        }
        let _guard = self.write_guard().await;
        let result = self.update_machine_locked(machine, expected, reason).await;
        self.bump_machines_version();
        result
    }

    async fn machine_history(&self, id: MachineId) -> Result<Vec<StateChange>> {
        let exists = sqlx::query("SELECT id FROM machines WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            return Err(Error::NotFound { entity: "machine" });
        }
        let rows = sqlx::query(
            "SELECT state, at, reason FROM machine_history WHERE machine_id = $1 ORDER BY seq",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StateChange {
                    state: parse(row, "state")?,
                    at: timestamp(row, "at")?,
                    reason: row.try_get("reason")?,
                })
            })
            .collect()
    }

    async fn set_tenant_budget(&self, tenant_id: TenantId, monthly_usd: Option<f64>) -> Result<()> {
        let _guard = self.write_guard().await;
        let result = sqlx::query("UPDATE tenants SET monthly_budget = $2 WHERE id = $1")
            .bind(tenant_id.to_string())
            .bind(monthly_usd)
            .execute(&self.pool)
            .await?;
        if result.rows_affected() == 0 {
            return Err(Error::NotFound { entity: "tenant" });
        }
        Ok(())
    }

    async fn get_tenant_budget(&self, tenant_id: TenantId) -> Result<Option<f64>> {
        let row = sqlx::query("SELECT monthly_budget FROM tenants WHERE id = $1")
            .bind(tenant_id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound { entity: "tenant" })?;
        Ok(row.try_get("monthly_budget")?)
    }

    async fn create_pool(&self, pool: &Pool) -> Result<()> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT id FROM providers WHERE id = $1 AND tenant_id = $2{}",
            self.lock_clause("SHARE")
        );
        let provider = sqlx::query(&sql)
            .bind(pool.provider_id.to_string())
            .bind(pool.tenant_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if provider.is_none() {
            return Err(Error::NotFound { entity: "provider" });
        }
        sqlx::query(
            "INSERT INTO pools (id, tenant_id, name, provider_id, settings, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(pool.id.to_string())
        .bind(pool.tenant_id.to_string())
        .bind(pool.name.clone())
        .bind(pool.provider_id.to_string())
        .bind(to_json(&pool.settings)?)
        .bind(micros(pool.created_at))
        .bind(micros(pool.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(|err| conflict(err, "pool"))?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_pool(&self, tenant_id: TenantId, id: PoolId) -> Result<Pool> {
        let sql = format!("SELECT {POOL_COLUMNS} FROM pools WHERE id = $1 AND tenant_id = $2");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(tenant_id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound { entity: "pool" })?;
        pool_from_row(&row)
    }

    async fn get_pool_by_name(&self, tenant_id: TenantId, name: &str) -> Result<Pool> {
        let sql = format!("SELECT {POOL_COLUMNS} FROM pools WHERE tenant_id = $1 AND name = $2");
        let row = sqlx::query(&sql)
            .bind(tenant_id.to_string())
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound { entity: "pool" })?;
        pool_from_row(&row)
    }

    async fn list_pools(&self, tenant_id: Option<TenantId>) -> Result<Vec<Pool>> {
        let rows = match tenant_id {
            Some(tenant_id) => {
                let sql = format!(
                    "SELECT {POOL_COLUMNS} FROM pools WHERE tenant_id = $1 ORDER BY name, id"
                );
                sqlx::query(&sql)
                    .bind(tenant_id.to_string())
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!("SELECT {POOL_COLUMNS} FROM pools ORDER BY tenant_id, name, id");
                sqlx::query(&sql).fetch_all(&self.pool).await?
            }
        };
        rows.iter().map(pool_from_row).collect()
    }

    async fn update_pool(&self, pool: &Pool) -> Result<()> {
        let _guard = self.write_guard().await;
        let result = sqlx::query(
            "UPDATE pools SET settings = $3, updated_at = $4 WHERE id = $1 AND tenant_id = $2",
        )
        .bind(pool.id.to_string())
        .bind(pool.tenant_id.to_string())
        .bind(to_json(&pool.settings)?)
        .bind(micros(pool.updated_at))
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(Error::NotFound { entity: "pool" });
        }
        Ok(())
    }

    async fn delete_pool(&self, tenant_id: TenantId, id: PoolId) -> Result<()> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT id FROM pools WHERE id = $1 AND tenant_id = $2{}",
            self.lock_clause("UPDATE")
        );
        let found = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(tenant_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Err(Error::NotFound { entity: "pool" });
        }
        let row = sqlx::query(
            "SELECT COUNT(*) AS live FROM machines WHERE pool_id = $1 \
             AND state NOT IN ('terminated', 'failed')",
        )
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let live: i64 = row.try_get("live")?;
        if live > 0 {
            return Err(Error::Conflict {
                entity: "live machines of pool",
            });
        }
        sqlx::query("DELETE FROM pools WHERE id = $1 AND tenant_id = $2")
            .bind(id.to_string())
            .bind(tenant_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_pool_machines(
        &self,
        tenant_id: TenantId,
        terminated_since: OffsetDateTime,
    ) -> Result<Vec<PoolMachine>> {
        let rows = sqlx::query(
            "SELECT id, pool_id, state, created_at, updated_at, usage FROM machines \
             WHERE tenant_id = $1 AND pool_id IS NOT NULL \
             AND (state <> 'terminated' OR updated_at >= $2) ORDER BY created_at, id",
        )
        .bind(tenant_id.to_string())
        .bind(micros(terminated_since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(pool_machine_from_row).collect()
    }

    async fn list_pool_machines_changed(
        &self,
        tenant_id: TenantId,
        since: OffsetDateTime,
    ) -> Result<Vec<PoolMachine>> {
        let rows = sqlx::query(
            "SELECT id, pool_id, state, created_at, updated_at, usage FROM machines \
             WHERE tenant_id = $1 AND pool_id IS NOT NULL AND updated_at >= $2 \
             ORDER BY created_at, id",
        )
        .bind(tenant_id.to_string())
        .bind(micros(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(pool_machine_from_row).collect()
    }

    async fn list_jobs_changed(
        &self,
        tenant_id: TenantId,
        since: OffsetDateTime,
    ) -> Result<Vec<JobRecord>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND updated_at >= $2 \
             ORDER BY job_id"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant_id.to_string())
            .bind(micros(since))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn record_job(
        &self,
        tenant_id: TenantId,
        delivery_id: Option<&str>,
        record: &JobRecord,
    ) -> Result<Applied> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        if let Some(delivery_id) = delivery_id {
            let inserted = sqlx::query(
                "INSERT INTO webhook_deliveries (tenant_id, delivery_id, received_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (tenant_id, delivery_id) DO NOTHING",
            )
            .bind(tenant_id.to_string())
            .bind(delivery_id.to_owned())
            .bind(micros(record.updated_at))
            .execute(&mut *tx)
            .await
            .map_err(tenant_missing)?;
            if inserted.rows_affected() == 0 {
                return Ok(Applied::Replay);
            }
        }
        // Forward only: the update applies when the news is at least as far along as what the
        // store has. A stale delivery's id stays recorded, so its redelivery is a replay.
        let sql = format!(
            "{JOB_INSERT} ON CONFLICT (tenant_id, job_id) DO UPDATE SET run_id = excluded.run_id, \
             repository = excluded.repository, labels = excluded.labels, \
             status = excluded.status, status_rank = excluded.status_rank, \
             runner_name = COALESCE(excluded.runner_name, jobs.runner_name), \
             updated_at = excluded.updated_at, source = excluded.source, \
             started_at = COALESCE(jobs.started_at, excluded.started_at) \
             WHERE excluded.status_rank >= jobs.status_rank"
        );
        let written = bind_job(sqlx::query(&sql), tenant_id, record)?
            .execute(&mut *tx)
            .await
            .map_err(tenant_missing)?;
        if written.rows_affected() > 0 && record.job.status == JobStatus::Completed {
            record_history(&mut tx, tenant_id, record.job.job_id).await?;
        }
        tx.commit().await?;
        Ok(if written.rows_affected() == 0 {
            Applied::Stale
        } else {
            Applied::Recorded
        })
    }

    async fn correct_job(
        &self,
        tenant_id: TenantId,
        record: &JobRecord,
        expected: Option<OffsetDateTime>,
    ) -> Result<bool> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let written = match expected {
            None => {
                let sql = format!("{JOB_INSERT} ON CONFLICT (tenant_id, job_id) DO NOTHING");
                bind_job(sqlx::query(&sql), tenant_id, record)?
                    .execute(&mut *tx)
                    .await
                    .map_err(tenant_missing)?
            }
            Some(expected) => {
                sqlx::query(
                    "UPDATE jobs SET run_id = $3, repository = $4, labels = $5, status = $6, \
                 status_rank = $7, runner_name = $8, updated_at = $9, source = $10, \
                 started_at = COALESCE(started_at, $12) \
                 WHERE tenant_id = $1 AND job_id = $2 AND updated_at = $11",
                )
                .bind(tenant_id.to_string())
                .bind(job_key(record.job.job_id)?)
                .bind(job_key(record.job.run_id)?)
                .bind(record.job.repository.clone())
                .bind(to_json(&record.job.labels)?)
                .bind(record.job.status.as_str())
                .bind(i64::from(record.job.status.rank()))
                .bind(record.runner_name.clone())
                .bind(micros(record.updated_at))
                .bind(source_str(record.source))
                .bind(micros(expected))
                .bind(started_at(record))
                .execute(&mut *tx)
                .await?
            }
        };
        let written = written.rows_affected() == 1;
        if written && record.job.status == JobStatus::Completed {
            record_history(&mut tx, tenant_id, record.job.job_id).await?;
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn list_jobs(&self, tenant_id: TenantId) -> Result<Vec<JobRecord>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 ORDER BY job_id");
        let rows = sqlx::query(&sql)
            .bind(tenant_id.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn prune_demand(
        &self,
        finished_before: OffsetDateTime,
        deliveries_before: OffsetDateTime,
    ) -> Result<()> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM jobs WHERE status_rank = $1 AND updated_at < $2")
            .bind(i64::from(JobStatus::Completed.rank()))
            .bind(micros(finished_before))
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < $1")
            .bind(micros(deliveries_before))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_job_history(
        &self,
        tenant_id: TenantId,
        since: OffsetDateTime,
    ) -> Result<Vec<FinishedJob>> {
        let rows = sqlx::query(
            "SELECT job_id, run_id, repository, labels, runner_name, queued_at, started_at, \
             finished_at FROM job_history WHERE tenant_id = $1 AND finished_at >= $2 \
             ORDER BY finished_at, job_id",
        )
        .bind(tenant_id.to_string())
        .bind(micros(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(finished_job_from_row).collect()
    }

    async fn prune_job_history(&self, before: OffsetDateTime) -> Result<u64> {
        let _guard = self.write_guard().await;
        let done = sqlx::query("DELETE FROM job_history WHERE finished_at < $1")
            .bind(micros(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn append_event(&self, event: &Event) -> Result<i64> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            // Sequence numbers are handed out at insert but become visible at commit; taking
            // the table lock makes both orders agree, so a reader following `after_seq` never
            // skips an event that commits late.
            sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query(
            "INSERT INTO events (name, at, tenant_id, machine_id, duration, error, metadata) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
        )
        .bind(event.name.clone())
        .bind(micros(event.at))
        .bind(event.tenant_id.map(|id| id.to_string()))
        .bind(event.machine_id.map(|id| id.to_string()))
        .bind(event.duration)
        .bind(event.error.clone())
        .bind(to_json(&event.metadata)?)
        .fetch_one(&mut *tx)
        .await?;
        let seq: i64 = row.try_get("seq")?;
        tx.commit().await?;
        Ok(seq)
    }

    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1");
        let mut texts = Vec::new();
        if let Some(tenant_id) = filter.tenant_id {
            texts.push(tenant_id.to_string());
            sql.push_str(&format!(" AND tenant_id = ${}", texts.len()));
        }
        if let Some(machine_id) = filter.machine_id {
            texts.push(machine_id.to_string());
            sql.push_str(&format!(" AND machine_id = ${}", texts.len()));
        }
        let after_seq = filter.after_seq.unwrap_or(0);
        let limit = i64::from(filter.limit.unwrap_or(DEFAULT_EVENT_LIMIT));
        sql.push_str(&format!(
            " AND seq > ${} ORDER BY seq LIMIT ${}",
            texts.len() + 1,
            texts.len() + 2
        ));
        let mut query = sqlx::query(&sql);
        for text in texts {
            query = query.bind(text);
        }
        let rows = query
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Event {
                    seq: row.try_get("seq")?,
                    name: row.try_get("name")?,
                    at: timestamp(row, "at")?,
                    tenant_id: parse_opt(row, "tenant_id")?,
                    machine_id: parse_opt(row, "machine_id")?,
                    duration: row.try_get("duration")?,
                    error: row.try_get("error")?,
                    metadata: json(row, "metadata")?,
                })
            })
            .collect()
    }
}

async fn insert_history(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: MachineId,
    state: MachineState,
    reason: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO machine_history (machine_id, state, at, reason) VALUES ($1, $2, $3, $4)",
    )
    .bind(id.to_string())
    .bind(state.as_str())
    .bind(micros(nimbus_types::now()))
    .bind(reason.map(str::to_owned))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn tenant_from_row(row: &AnyRow) -> Result<Tenant> {
    Ok(Tenant {
        id: parse(row, "id")?,
        name: row.try_get("name")?,
        created_at: timestamp(row, "created_at")?,
    })
}

fn machine_from_row(row: &AnyRow) -> Result<MachineRecord> {
    let setup_progress: Option<String> = row.try_get("setup_progress")?;
    let machine = Machine {
        id: parse(row, "id")?,
        tenant_id: parse(row, "tenant_id")?,
        provider_id: parse(row, "provider_id")?,
        os: parse(row, "os")?,
        arch: parse(row, "arch")?,
        state: parse(row, "state")?,
        ip_address: row.try_get("ip_address")?,
        ssh_public_key: row.try_get("ssh_public_key")?,
        labels: json(row, "labels")?,
        instance_type: row.try_get("instance_type")?,
        image: json::<Image>(row, "image")?,
        created_at: timestamp(row, "created_at")?,
        updated_at: timestamp(row, "updated_at")?,
        provider_metadata: json::<ProviderMetadata>(row, "provider_metadata")?,
        error: row.try_get("error")?,
        setup_progress: setup_progress
            .map(|text| from_json::<SetupProgress>(&text, "setup_progress"))
            .transpose()?,
        pool_id: parse_opt(row, "pool_id")?,
        usage: json(row, "usage")?,
    };
    Ok(MachineRecord {
        machine,
        spec: json(row, "spec")?,
    })
}

/// The columns of a job row, in the order [`bind_job`] binds them.
const JOB_INSERT: &str = "INSERT INTO jobs (tenant_id, job_id, run_id, repository, labels, \
     status, status_rank, runner_name, first_seen, updated_at, source, started_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// Copies a job that just completed into the history (`$1` tenant, `$2` job id); a job already
/// there stays as first written.
const JOB_HISTORY_INSERT: &str = "INSERT INTO job_history (tenant_id, job_id, run_id, \
     repository, labels, runner_name, queued_at, started_at, finished_at) \
     SELECT tenant_id, job_id, run_id, repository, labels, runner_name, first_seen, started_at, \
     updated_at FROM jobs WHERE tenant_id = $1 AND job_id = $2 AND status_rank = $3 \
     ON CONFLICT (tenant_id, job_id) DO NOTHING";

/// When a record says the job started: the time of its `in_progress` news (a job first seen
/// completed has no known start).
fn started_at(record: &JobRecord) -> Option<i64> {
    (record.job.status == JobStatus::InProgress).then(|| micros(record.updated_at))
}

/// Binds a job record to [`JOB_INSERT`]'s twelve parameters.
fn bind_job<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    tenant_id: TenantId,
    record: &JobRecord,
) -> Result<sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>> {
    Ok(query
        .bind(tenant_id.to_string())
        .bind(job_key(record.job.job_id)?)
        .bind(job_key(record.job.run_id)?)
        .bind(record.job.repository.clone())
        .bind(to_json(&record.job.labels)?)
        .bind(record.job.status.as_str())
        .bind(i64::from(record.job.status.rank()))
        .bind(record.runner_name.clone())
        .bind(micros(record.first_seen))
        .bind(micros(record.updated_at))
        .bind(source_str(record.source))
        .bind(started_at(record)))
}

fn pool_machine_from_row(row: &AnyRow) -> Result<PoolMachine> {
    Ok(PoolMachine {
        id: parse(row, "id")?,
        pool_id: parse(row, "pool_id")?,
        state: parse(row, "state")?,
        created_at: timestamp(row, "created_at")?,
        updated_at: timestamp(row, "updated_at")?,
        usage: json(row, "usage")?,
    })
}

fn pool_from_row(row: &AnyRow) -> Result<Pool> {
    Ok(Pool {
        id: parse(row, "id")?,
        tenant_id: parse(row, "tenant_id")?,
        name: row.try_get("name")?,
        provider_id: parse(row, "provider_id")?,
        settings: json(row, "settings")?,
        created_at: timestamp(row, "created_at")?,
        updated_at: timestamp(row, "updated_at")?,
    })
}

/// Copies a job that completed in this transaction into the job history.
async fn record_history(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant_id: TenantId,
    job_id: u64,
) -> Result<()> {
    sqlx::query(JOB_HISTORY_INSERT)
        .bind(tenant_id.to_string())
        .bind(job_key(job_id)?)
        .bind(i64::from(JobStatus::Completed.rank()))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn finished_job_from_row(row: &AnyRow) -> Result<FinishedJob> {
    let job_id: i64 = row.try_get("job_id")?;
    let run_id: i64 = row.try_get("run_id")?;
    let started_at: Option<i64> = row.try_get("started_at")?;
    Ok(FinishedJob {
        job_id: job_id as u64,
        run_id: run_id as u64,
        repository: row.try_get("repository")?,
        labels: json(row, "labels")?,
        runner_name: row.try_get("runner_name")?,
        queued_at: timestamp(row, "queued_at")?,
        started_at: started_at
            .map(|us| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).map_err(|err| {
                    Error::Corrupt(format!("column started_at holds timestamp {us}: {err}"))
                })
            })
            .transpose()?,
        finished_at: timestamp(row, "finished_at")?,
    })
}

fn job_from_row(row: &AnyRow) -> Result<JobRecord> {
    let job_id: i64 = row.try_get("job_id")?;
    let run_id: i64 = row.try_get("run_id")?;
    let status: String = row.try_get("status")?;
    let source: String = row.try_get("source")?;
    Ok(JobRecord {
        job: ForgeJob {
            job_id: job_id as u64,
            run_id: run_id as u64,
            repository: row.try_get("repository")?,
            labels: json(row, "labels")?,
            status: match status.as_str() {
                "queued" => JobStatus::Queued,
                "waiting" => JobStatus::Waiting,
                "in_progress" => JobStatus::InProgress,
                "completed" => JobStatus::Completed,
                other => return Err(Error::Corrupt(format!("column status holds {other:?}"))),
            },
        },
        runner_name: row.try_get("runner_name")?,
        first_seen: timestamp(row, "first_seen")?,
        updated_at: timestamp(row, "updated_at")?,
        source: match source.as_str() {
            "webhook" => Source::Webhook,
            "reconcile" => Source::Reconcile,
            other => return Err(Error::Corrupt(format!("column source holds {other:?}"))),
        },
    })
}

fn source_str(source: Source) -> &'static str {
    match source {
        Source::Webhook => "webhook",
        Source::Reconcile => "reconcile",
    }
}

/// Job and run ids are `u64` at the forge and BIGINT in SQL; forges hand out far fewer.
fn job_key(id: u64) -> Result<i64> {
    i64::try_from(id).map_err(|_| Error::Corrupt(format!("job or run id {id} exceeds BIGINT")))
}

/// A foreign-key violation on a per-tenant row means the tenant does not exist.
fn tenant_missing(err: sqlx::Error) -> Error {
    match err.as_database_error() {
        Some(db) if db.is_foreign_key_violation() => Error::NotFound { entity: "tenant" },
        _ => Error::Database(err),
    }
}

fn provider_aad(id: ProviderId) -> String {
    format!("provider:{id}")
}

fn forge_aad(tenant_id: TenantId) -> String {
    format!("forge:{tenant_id}")
}

/// Maps a uniqueness violation to `Conflict`; other errors pass through.
fn conflict(err: sqlx::Error, entity: &'static str) -> Error {
    match err.as_database_error() {
        Some(db) if db.is_unique_violation() => Error::Conflict { entity },
        _ => Error::Database(err),
    }
}

fn parse<T>(row: &AnyRow, column: &str) -> Result<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    let text: String = row.try_get(column)?;
    text.parse()
        .map_err(|err| Error::Corrupt(format!("column {column} holds {text:?}: {err}")))
}

fn parse_opt<T>(row: &AnyRow, column: &str) -> Result<Option<T>>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    let text: Option<String> = row.try_get(column)?;
    text.map(|text| {
        text.parse()
            .map_err(|err| Error::Corrupt(format!("column {column} holds {text:?}: {err}")))
    })
    .transpose()
}

fn json<T: DeserializeOwned>(row: &AnyRow, column: &str) -> Result<T> {
    let text: String = row.try_get(column)?;
    from_json(&text, column)
}

fn from_json<T: DeserializeOwned>(text: &str, column: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|err| Error::Corrupt(format!("column {column} is not the expected JSON: {err}")))
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|err| Error::Corrupt(format!("cannot encode JSON: {err}")))
}

fn micros(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000) as i64
}

fn timestamp(row: &AnyRow, column: &str) -> Result<OffsetDateTime> {
    let us: i64 = row.try_get(column)?;
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .map_err(|err| Error::Corrupt(format!("column {column} holds timestamp {us}: {err}")))
}

/// Per-connection SQLite settings. `busy_timeout` first: the others may have to wait for a lock.
async fn sqlite_pragmas(conn: &mut AnyConnection, busy_ms: u32) -> sqlx::Result<()> {
    sqlx::query(&format!("PRAGMA busy_timeout = {busy_ms}"))
        .execute(&mut *conn)
        .await?;
    for pragma in [
        "PRAGMA journal_mode = WAL",
        "PRAGMA foreign_keys = ON",
        "PRAGMA synchronous = NORMAL",
    ] {
        sqlx::query(pragma).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Creates a SQLite database file (0600) and its directory when missing, and returns the URL
/// to connect with and whether the database lives in memory.
fn prepare_sqlite_file(url: &str) -> Result<(String, bool)> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
    let path = options.get_filename();
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    if in_memory {
        return Ok((url.to_owned(), true));
    }
    let io_err = |what: &str, err: std::io::Error| {
        Error::Database(sqlx::Error::Configuration(
            format!("{what} {}: {err}", path.display()).into(),
        ))
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|err| io_err("cannot create the directory of", err))?;
    }
    // The file holds sealed credentials and token hashes: private to the daemon's user.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(io_err("cannot create the database file", err)),
    }
    Ok((url.to_owned(), false))
}

/// A database URL without its password, for error messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://[redacted]{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}
