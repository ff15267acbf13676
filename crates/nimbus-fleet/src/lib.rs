//! The machine lifecycle: provisioning, setup, termination and the reconcile loop, over the
//! store (intent and history) and the providers (what exists).
//!
//! Rules this crate keeps:
//! - Intent is written to the store before any side effect at a provider; the machine id is the
//!   intent id providers derive idempotency tokens from.
//! - Every state change goes through `MachineState::transition` (the store enforces it) with an
//!   optimistic check of the previous state, so two actors never both move a machine.
//! - One operation at a time per machine (a per-machine lock); the reconciler skips machines
//!   with an operation in flight, and otherwise converges store and provider on every pass.
//!
//! This crate does not know about HTTP; `nimbusd` maps [`Error`] to status codes.

pub mod autoscale;
pub mod ci;
pub mod costs;
pub mod demand;
pub mod forges;
pub mod host_keys;
mod lifecycle;
mod pools;
mod reconcile;
pub mod registry;
pub mod runners;
pub mod telemetry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_store::Storage;
use nimbus_types::{MachineId, SpecError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::reconcile::Action;
pub use crate::registry::ProviderRegistry;
pub use crate::telemetry::{EventSink, Telemetry};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("invalid request: {0}")]
    Invalid(#[from] SpecError),
    #[error("{0}")]
    Conflict(String),
    #[error("provider error: {0}")]
    Provider(#[from] nimbus_provider::Error),
    #[error("store error: {0}")]
    Store(nimbus_store::Error),
    #[error("forge error: {0}")]
    Forge(String),
    #[error("nimbusd is shutting down")]
    ShuttingDown,
}

impl From<nimbus_store::Error> for Error {
    fn from(err: nimbus_store::Error) -> Self {
        match err {
            nimbus_store::Error::NotFound { entity } => Error::NotFound(entity),
            nimbus_store::Error::Conflict { entity } => {
                Error::Conflict(format!("{entity} already exists"))
            }
            other => Error::Store(other),
        }
    }
}

/// Timings of the lifecycle.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Longest a machine's whole setup may take.
    pub setup_timeout: Duration,
    /// How often each provider is reconciled when all is well.
    pub reconcile_interval: Duration,
    /// How old a resource no intent knows about must be before the reconciler removes it.
    pub orphan_grace: Duration,
    /// How long shutdown waits for in-flight operations before cancelling them.
    pub shutdown_timeout: Duration,
    /// Runner downloads: versions, checksums and mirrors.
    pub installers: nimbus_setup::installers::Installers,
    /// The autoscaler's timings and policy knobs.
    pub autoscale: autoscale::AutoscaleConfig,
    /// What machines cost, by provider type and instance type.
    pub prices: nimbus_types::cost::PriceTable,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            setup_timeout: Duration::from_secs(30 * 60),
            reconcile_interval: Duration::from_secs(30),
            orphan_grace: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            installers: nimbus_setup::installers::Installers::default(),
            autoscale: autoscale::AutoscaleConfig::default(),
            prices: nimbus_types::cost::PriceTable::default(),
        }
    }
}

/// The lifecycle API used by the server. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Storage>,
    providers: ProviderRegistry,
    telemetry: Telemetry,
    config: FleetConfig,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    slots: Mutex<HashMap<MachineId, Arc<Slot>>>,
    forges: forges::Forges,
    /// Live machines a provider's listing lacked, by consecutive passes (listings are
    /// eventually consistent: a new EC2 instance can be missing for a few seconds).
    missing: Mutex<HashMap<MachineId, u32>>,
    autoscale: autoscale::State,
    ci: ci::CiRuntime,
}

/// Serializes operations on one machine and lets terminate interrupt a running setup.
#[derive(Default)]
struct Slot {
    lock: tokio::sync::Mutex<()>,
    cancel: CancellationToken,
}

impl Fleet {
    pub fn new(
        store: Arc<dyn Storage>,
        providers: ProviderRegistry,
        telemetry: Telemetry,
        config: FleetConfig,
    ) -> Fleet {
        Fleet {
            inner: Arc::new(Inner {
                store: store.clone(),
                providers,
                telemetry,
                config,
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                slots: Mutex::new(HashMap::new()),
                forges: forges::Forges::new(store.clone()),
                missing: Mutex::new(HashMap::new()),
                autoscale: autoscale::State::default(),
                ci: ci::CiRuntime::default(),
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn Storage> {
        &self.inner.store
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.telemetry
    }

    /// The tenants' forge clients.
    pub fn forges(&self) -> &forges::Forges {
        &self.inner.forges
    }

    pub fn providers(&self) -> &ProviderRegistry {
        &self.inner.providers
    }

    /// Stops the reconciler and new operations, waits up to `shutdown_timeout` for in-flight
    /// ones, then cancels what is left. Cancelled work leaves machines in a state the reconciler
    /// resumes from on the next start.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(self.inner.config.shutdown_timeout, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.inner.tasks.len(),
                "in-flight operations did not finish in time; cancelling them"
            );
            for slot in self.inner.slots.lock().expect("slots lock").values() {
                slot.cancel.cancel();
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), self.inner.tasks.wait()).await;
        }
    }

    fn slot(&self, id: MachineId) -> Arc<Slot> {
        self.inner
            .slots
            .lock()
            .expect("slots lock")
            .entry(id)
            .or_default()
            .clone()
    }

    /// Drops the slot when nobody else holds it.
    fn release_slot(&self, id: MachineId, slot: Arc<Slot>) {
        let mut slots = self.inner.slots.lock().expect("slots lock");
        // One reference in the map, one here: nobody else can reach it without the map lock.
        if Arc::strong_count(&slot) == 2 {
            slots.remove(&id);
        }
    }

    /// Whether an operation on the machine is running right now.
    fn is_busy(&self, id: MachineId) -> bool {
        let slots = self.inner.slots.lock().expect("slots lock");
        slots
            .get(&id)
            .is_some_and(|slot| slot.lock.try_lock().is_err())
    }
}
