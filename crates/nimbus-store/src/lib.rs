//! Nimbus storage: what was asked and when (tenants, providers, forge configuration, machine
//! intent and state history), sealed credentials, tenant tokens, bare-metal agents and the event
//! log.
//!
//! The store holds intent and history, not the truth about what exists: providers are the
//! source of truth for machines (DESIGN.md, "Lean state"). One [`Storage`] trait, implemented by
//! [`SqlStore`] over SQLite (default, embedded) and PostgreSQL (scale-out).
//!
//! This crate must not call providers, forges or the network, and must never log a credential.

pub mod agents;
pub mod ci;
mod seal;
mod sql;

use async_trait::async_trait;
use nimbus_types::api::StateChange;
use nimbus_types::demand::{Applied, FinishedJob, JobRecord};
use nimbus_types::event::Event;
use nimbus_types::{
    ForgeConfig, Machine, MachineId, MachineSpec, MachineState, Pool, PoolId, ProviderConfig,
    ProviderId, Tenant, TenantId,
};
use time::OffsetDateTime;

pub use agents::{
    AgentOpState, AgentOperation, AgentRecord, AgentStore, Enrolment, EnrolmentToken,
};
pub use ci::{CiJob, CiJobState, CiRun, CiStore};
pub use seal::{KeyError, SealKey, Sealer};
pub use sql::{SqlStore, StoreOptions};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{entity} not found")]
    NotFound { entity: &'static str },
    /// A uniqueness rule was violated, e.g. a duplicate tenant or provider name.
    #[error("{entity} already exists")]
    Conflict { entity: &'static str },
    /// The stored state changed underneath a conditional update, or a transition is illegal.
    #[error(transparent)]
    Transition(#[from] nimbus_types::TransitionError),
    /// The machine's state is not the one the caller expected (someone else moved it).
    #[error("machine {id} is {actual}, expected {expected}")]
    StaleState {
        id: MachineId,
        expected: MachineState,
        actual: MachineState,
    },
    /// A sealed credential could not be opened: wrong key or tampered data.
    #[error("sealed credentials could not be opened (wrong NIMBUS_SECRET_KEY?)")]
    Unseal,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A machine as recorded: the intent (its spec) and what Nimbus last knew of it.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineRecord {
    pub machine: Machine,
    pub spec: MachineSpec,
}

/// Which machines to list.
#[derive(Clone, Debug, Default)]
pub struct MachineFilter {
    pub tenant_id: Option<TenantId>,
    pub provider_id: Option<ProviderId>,
    pub pool_id: Option<PoolId>,
    /// Include machines in the `terminated` state (history); off by default.
    pub include_terminated: bool,
    /// Also include terminated machines last updated at or after this instant (what a pool
    /// spent this month), whatever `include_terminated` says.
    pub terminated_since: Option<OffsetDateTime>,
}

/// What the autoscaler reads of each pool machine: a narrow row, so a pass over thousands of
/// machines does not decode their specs and provider metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolMachine {
    pub id: MachineId,
    pub pool_id: PoolId,
    pub state: MachineState,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub usage: nimbus_types::RunnerUsage,
}

/// Which events to list.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub tenant_id: Option<TenantId>,
    pub machine_id: Option<MachineId>,
    /// Only events with `seq` greater than this.
    pub after_seq: Option<i64>,
    pub limit: Option<u32>,
}

/// The storage contract. The first four methods are the seeds' contract; the rest hold machine
/// intent and history, tokens and the event log.
#[async_trait]
pub trait Storage: CiStore + AgentStore + Send + Sync + 'static {
    async fn get_tenant(&self, id: TenantId) -> Result<Tenant>;
    async fn list_tenant_providers(&self, tenant_id: TenantId) -> Result<Vec<ProviderConfig>>;
    /// A provider of the given tenant; another tenant's provider is `NotFound`.
    async fn get_provider(&self, tenant_id: TenantId, id: ProviderId) -> Result<ProviderConfig>;
    async fn get_tenant_forge_config(&self, tenant_id: TenantId) -> Result<Option<ForgeConfig>>;

    async fn create_tenant(&self, name: &str) -> Result<Tenant>;
    async fn get_tenant_by_name(&self, name: &str) -> Result<Tenant>;
    async fn list_tenants(&self) -> Result<Vec<Tenant>>;

    /// Stores the SHA-256 hash of a tenant token (the token itself is never stored).
    async fn add_tenant_token(&self, tenant_id: TenantId, token_sha256: &[u8]) -> Result<()>;
    async fn tenant_for_token(&self, token_sha256: &[u8]) -> Result<Option<TenantId>>;

    /// Creates a provider; `Conflict` when the tenant already has one with that name.
    async fn create_provider(&self, provider: &ProviderConfig) -> Result<()>;
    async fn get_provider_by_name(&self, tenant_id: TenantId, name: &str)
    -> Result<ProviderConfig>;
    /// Every provider of every tenant, for reconcilers.
    async fn list_all_providers(&self) -> Result<Vec<ProviderConfig>>;
    /// Deletes a provider; `Conflict` while it still has live machines.
    async fn delete_provider(&self, tenant_id: TenantId, id: ProviderId) -> Result<()>;

    async fn set_tenant_forge_config(&self, forge: &ForgeConfig) -> Result<()>;

    /// Records the intent to create a machine, before any side effect. The machine's state is
    /// recorded as the first entry of its history.
    async fn insert_machine(&self, machine: &Machine, spec: &MachineSpec) -> Result<()>;
    /// Looks a machine up; with `tenant_id`, another tenant's machine is `NotFound`.
    async fn get_machine(
        &self,
        tenant_id: Option<TenantId>,
        id: MachineId,
    ) -> Result<MachineRecord>;
    async fn list_machines(&self, filter: &MachineFilter) -> Result<Vec<MachineRecord>>;
    /// Saves what is known of a machine (address, metadata, image, error). When `state`
    /// differs from the stored one, the move must be legal (`MachineState::transition`) and is
    /// appended to the history with `reason`; the update only applies if the stored state is
    /// still `machine`'s previous state `expected` (optimistic concurrency), else `StaleState`.
    async fn update_machine(
        &self,
        machine: &Machine,
        expected: MachineState,
        reason: Option<&str>,
    ) -> Result<()>;
    async fn machine_history(&self, id: MachineId) -> Result<Vec<StateChange>>;

    /// A number that changes after every machine write, when the store can tell (a SQLite file
    /// written only by this process); `None` when it cannot (PostgreSQL with other replicas).
    /// Read it before a listing to cache the listing until it changes.
    fn machines_version(&self) -> Option<u64> {
        None
    }

    /// The SSH host key pinned for `host_id` within the tenant, if any.
    async fn get_host_key(&self, tenant_id: TenantId, host_id: &str) -> Result<Option<String>>;
    /// Pins `public_key` for `host_id` unless a key is pinned already (the first pin wins);
    /// returns the key that is pinned afterwards.
    async fn pin_host_key(
        &self,
        tenant_id: TenantId,
        host_id: &str,
        public_key: &str,
    ) -> Result<String>;

    /// Sets (or with `None` removes) a tenant's monthly budget in USD.
    async fn set_tenant_budget(&self, tenant_id: TenantId, monthly_usd: Option<f64>) -> Result<()>;
    /// A tenant's monthly budget in USD, if it has one.
    async fn get_tenant_budget(&self, tenant_id: TenantId) -> Result<Option<f64>>;

    /// Creates a pool; `Conflict` when the tenant already has a pool with that name.
    async fn create_pool(&self, pool: &Pool) -> Result<()>;
    /// A pool of the given tenant; another tenant's pool is `NotFound`.
    async fn get_pool(&self, tenant_id: TenantId, id: PoolId) -> Result<Pool>;
    async fn get_pool_by_name(&self, tenant_id: TenantId, name: &str) -> Result<Pool>;
    /// The pools of one tenant, or of every tenant with `None`, ordered by tenant and name.
    async fn list_pools(&self, tenant_id: Option<TenantId>) -> Result<Vec<Pool>>;
    /// Saves a pool's settings and `updated_at` (its id, tenant, name and provider never
    /// change); `NotFound` when it does not exist.
    async fn update_pool(&self, pool: &Pool) -> Result<()>;
    /// Deletes a pool; `Conflict` while machines of the pool are live (not `terminated` or
    /// `failed`). Its terminated machines keep the pool id as history.
    async fn delete_pool(&self, tenant_id: TenantId, id: PoolId) -> Result<()>;

    /// The tenant's machines that belong to a pool: live ones, and terminated ones last updated
    /// at or after `terminated_since` (what the pools spent this month). Ordered by creation.
    async fn list_pool_machines(
        &self,
        tenant_id: TenantId,
        terminated_since: OffsetDateTime,
    ) -> Result<Vec<PoolMachine>>;
    /// The tenant's pool machines last updated at or after `since`, whatever their state: what
    /// changed since an earlier [`list_pool_machines`](Self::list_pool_machines).
    async fn list_pool_machines_changed(
        &self,
        tenant_id: TenantId,
        since: OffsetDateTime,
    ) -> Result<Vec<PoolMachine>>;

    /// Records one webhook delivery's news about a job, in one transaction with the delivery
    /// id: an id recorded before is `Replay` and changes nothing; a job the store knows further
    /// along is `Stale` (jobs move `queued`/`waiting` → `in_progress` → `completed` only).
    /// Otherwise the job is inserted or updated: `first_seen` is kept, `runner_name` is kept
    /// when the new record has none. `delivery_id` `None` records without de-duplication.
    async fn record_job(
        &self,
        tenant_id: TenantId,
        delivery_id: Option<&str>,
        record: &JobRecord,
    ) -> Result<Applied>;
    /// Writes a demand reconcile's correction only if the job has not changed since it was
    /// read: `expected` is the `updated_at` that was read, `None` to insert a job the store did
    /// not have. True when written.
    async fn correct_job(
        &self,
        tenant_id: TenantId,
        record: &JobRecord,
        expected: Option<OffsetDateTime>,
    ) -> Result<bool>;
    /// The tenant's jobs (open ones and finished ones not yet pruned), ordered by job id.
    async fn list_jobs(&self, tenant_id: TenantId) -> Result<Vec<JobRecord>>;
    /// The tenant's jobs last updated at or after `since`, ordered by job id.
    async fn list_jobs_changed(
        &self,
        tenant_id: TenantId,
        since: OffsetDateTime,
    ) -> Result<Vec<JobRecord>>;
    /// Forgets finished jobs last updated before `finished_before` and delivery ids recorded
    /// before `deliveries_before`, for every tenant.
    async fn prune_demand(
        &self,
        finished_before: OffsetDateTime,
        deliveries_before: OffsetDateTime,
    ) -> Result<()>;

    /// The tenant's finished jobs that ended at or after `since`, oldest end first. A job
    /// enters the history in the transaction that records its completion (through
    /// [`record_job`](Self::record_job) or [`correct_job`](Self::correct_job)) and stays after
    /// [`prune_demand`](Self::prune_demand) forgets it, until
    /// [`prune_job_history`](Self::prune_job_history).
    async fn list_job_history(
        &self,
        tenant_id: TenantId,
        since: OffsetDateTime,
    ) -> Result<Vec<FinishedJob>>;
    /// Forgets finished jobs of every tenant that ended before `before`.
    async fn prune_job_history(&self, before: OffsetDateTime) -> Result<u64>;

    /// Appends an event and returns its sequence number.
    async fn append_event(&self, event: &Event) -> Result<i64>;
    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<Event>>;
}
