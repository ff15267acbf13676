//! Nimbus domain types: tenants, providers, forges, machines, their specs and state machine,
//! telemetry event names, and the JSON shapes the REST API speaks.
//!
//! This crate is plain data and pure functions. It must not do I/O, spawn tasks or know about
//! HTTP, SQL or any provider SDK: the daemon, the CLI and the Git server all depend on it.

pub mod api;
pub mod cost;
pub mod demand;
pub mod event;
mod ids;
mod machine;
mod pool;
mod secret;
mod spec;
mod tenant;

pub use ids::{MachineId, PoolId, ProviderId, TenantId};
pub use machine::{
    CanTerminate, Image, ImageState, Machine, MachineState, ProviderMetadata, RunnerUsage,
    SetupProgress, SetupStep, StepStatus, TransitionError,
};
pub use pool::{
    CompiledSchedule, DEFAULT_IDLE_TIMEOUT_SECS, MAX_POOL_SIZE, Pool, PoolSettings, Schedule,
    labels_conflict, normalise_labels,
};
pub use secret::Secret;
pub use spec::{Arch, ImageType, MachineSpec, Os, SpecError, validate_label, validate_name};
pub use tenant::{ForgeConfig, ForgeType, ProviderConfig, ProviderType, Tenant};

/// Current wall-clock time, truncated to microseconds so that it survives a round trip through
/// either store backend unchanged.
pub fn now() -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}
