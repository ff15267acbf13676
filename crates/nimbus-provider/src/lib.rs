//! Machine providers: where machines come from.
//!
//! The [`Provider`] trait keeps the seeds' operations (`provision`, `terminate`,
//! `can_terminate`, `list_machines`, `get_machine`, plus `exec` to reach the machine) and
//! learns from GitLab's fleeting interface: the provider reports what exists through a listing
//! filtered by Nimbus's tags, and errors say whether retrying can help.
//!
//! Providers are the source of truth for what exists. They must not touch the store: the
//! lifecycle layer (`nimbus-fleet`) records intent and reconciles.

pub mod baremetal;
pub mod hetzner;
pub mod local;
pub mod ssh;

use std::sync::Arc;

use async_trait::async_trait;
use nimbus_setup::exec::Exec;
use nimbus_types::{
    CanTerminate, Machine, MachineId, MachineSpec, ProviderConfig, ProviderId, ProviderMetadata,
    ProviderType, TenantId,
};
use time::OffsetDateTime;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Worth retrying later: throttling, capacity, timeouts, a machine still booting.
    #[error("{0} (retryable)")]
    Retryable(String),
    /// Retrying will not help: bad credentials, a spec the provider cannot satisfy.
    #[error("{0}")]
    Permanent(String),
    /// The provider's configuration is invalid; `field` names the offending setting.
    #[error("invalid provider config: {field}: {message}")]
    InvalidConfig { field: String, message: String },
    #[error("machine {0} not found at the provider")]
    NotFound(MachineId),
}

impl Error {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Retryable(_))
    }
}

/// Everything a provider needs to create one machine. `machine_id` is the intent id: providers
/// tag resources with it and derive idempotency tokens from it.
#[derive(Clone, Debug)]
pub struct ProvisionRequest {
    pub machine_id: MachineId,
    pub tenant_id: TenantId,
    pub provider_id: ProviderId,
    pub spec: MachineSpec,
}

/// What the provider reports of a machine it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderMachine {
    /// From the resource's `nimbus:machine` tag; `None` for resources Nimbus did not tag.
    pub machine_id: Option<MachineId>,
    pub tenant_id: Option<TenantId>,
    pub status: ProviderStatus,
    pub ip_address: Option<String>,
    pub ssh_public_key: Option<String>,
    pub created_at: OffsetDateTime,
    pub metadata: ProviderMetadata,
}

/// The provider's own view of a machine's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderStatus {
    Pending,
    Running,
    Stopping,
    Stopped,
}

/// A dedicated host the provider holds for its machines (an EC2 Mac host): billed from
/// allocation for at least a minimum period, one machine at a time, scrubbed after each before
/// it takes the next.
#[derive(Clone, Debug, PartialEq)]
pub struct DedicatedHost {
    /// The provider's id for the host.
    pub id: String,
    pub allocated_at: OffsetDateTime,
    /// The end of the minimum allocation period: the host cannot be released before.
    pub releasable_at: OffsetDateTime,
    /// The machine on the host now; `None` when nothing runs on it.
    pub machine_id: Option<MachineId>,
    /// Until when the host scrubs after its last machine; `None` when it does not.
    pub scrubbing_until: Option<OffsetDateTime>,
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn provider_type(&self) -> ProviderType;

    /// Creates the machine. Idempotent per `request.machine_id`: a retry after a crash returns
    /// the machine created by the first attempt instead of creating a second one.
    async fn provision(&self, request: &ProvisionRequest) -> Result<ProviderMachine>;

    /// Destroys the machine and everything it runs. Idempotent: a machine that is already gone
    /// is not an error.
    async fn terminate(&self, machine: &Machine) -> Result<()>;

    /// Whether terminating now is allowed (e.g. dedicated hosts' minimum allocation period).
    async fn can_terminate(&self, machine: &Machine) -> Result<CanTerminate>;

    /// Every resource this provider holds for the tenant, found by Nimbus's tags. One machine id
    /// may appear more than once when a provider ended up with a second resource for it (a
    /// create retried against a cloud that ignored its idempotency token); the reconciler keeps
    /// one and removes the others with [`remove_duplicate`](Self::remove_duplicate).
    async fn list_machines(&self, tenant_id: TenantId) -> Result<Vec<ProviderMachine>>;

    /// One machine, or `None` when the provider has no such machine.
    async fn get_machine(&self, id: MachineId) -> Result<Option<ProviderMachine>>;

    /// A way to run commands on the machine, for setup.
    async fn exec(&self, machine: &Machine) -> Result<Arc<dyn Exec>>;

    /// The dedicated hosts that machines of `spec` run on, as the provider holds them now
    /// (allocated and not released; hosts that cannot take a machine at all are left out), so
    /// the autoscaler can plan around their minimum allocation and scrubbing. `None` when such
    /// machines do not run on dedicated hosts, which is the default: providers without
    /// dedicated hosts (local, SSH) keep it.
    async fn dedicated_hosts(&self, _spec: &MachineSpec) -> Result<Option<Vec<DedicatedHost>>> {
        Ok(None)
    }

    /// Stops what an interrupted setup left running on the machine (the daemon died mid-step),
    /// so that the resumed setup does not race it. The machine itself stays.
    async fn interrupt_setup(&self, _machine: &Machine) -> Result<()> {
        Ok(())
    }

    /// Removes exactly one resource from [`list_machines`](Self::list_machines) that duplicates
    /// a live machine, and nothing else: unlike [`terminate`](Self::terminate), which removes
    /// every resource of a machine, the machine's own resource (the one its record names) keeps
    /// running.
    ///
    /// The caller decides which resource is the duplicate and passes it as listed; the
    /// implementation identifies it by its own handle in `resource.metadata` (never by the
    /// machine id alone), removes it only if it carries this provider's tags, and must refuse
    /// (with [`Error::Permanent`]) when it is the machine's only resource. Idempotent: a
    /// duplicate that is already gone is not an error.
    ///
    /// Providers whose resources are unique per machine id (a directory or a claim named after
    /// it, as the local and SSH providers have) never list duplicates and keep this default,
    /// which refuses.
    async fn remove_duplicate(&self, resource: &ProviderMachine) -> Result<()> {
        Err(Error::Permanent(format!(
            "{} provider cannot remove a single duplicate resource (machine {})",
            self.provider_type(),
            resource
                .machine_id
                .map_or_else(|| "unknown".to_owned(), |id| id.to_string())
        )))
    }
}

/// The pinned SSH host keys of one tenant.
pub type HostKeysFor =
    Arc<dyn Fn(TenantId) -> Arc<dyn nimbus_setup::ssh::HostKeyStore> + Send + Sync>;

/// Settings that apply to providers of every tenant, resolved by the daemon at start-up.
#[derive(Clone)]
pub struct ProviderEnv {
    /// Where local machines live: `$XDG_STATE_HOME/nimbus/machines`.
    pub local_machines_dir: std::path::PathBuf,
    /// Where SSH host keys are pinned, per tenant; `None` keeps pins in memory for the life of
    /// the process (tests, one-off runs).
    pub host_keys: Option<HostKeysFor>,
    /// Where SSH connection and command events go; `None` drops them.
    pub events: Option<Arc<dyn nimbus_types::event::EventSink>>,
    /// Carries BMC operations to enrolled agents (`nimbusd server`); `None`: bare-metal hosts
    /// whose BMC is reached through an agent cannot be driven.
    pub agents: Option<Arc<dyn baremetal::AgentRelay>>,
}

impl ProviderEnv {
    /// Local machines under `dir`, in-memory host key pins, no events.
    pub fn new(local_machines_dir: impl Into<std::path::PathBuf>) -> Self {
        ProviderEnv {
            local_machines_dir: local_machines_dir.into(),
            host_keys: None,
            events: None,
            agents: None,
        }
    }
}

impl std::fmt::Debug for ProviderEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderEnv")
            .field("local_machines_dir", &self.local_machines_dir)
            .field("stored_host_keys", &self.host_keys.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds the provider implementation for a stored configuration.
pub fn build(env: &ProviderEnv, config: &ProviderConfig) -> Result<Arc<dyn Provider>> {
    match config.provider_type {
        ProviderType::Local => Ok(Arc::new(local::LocalProvider::new(
            env.local_machines_dir.clone(),
            config.id,
            local::LocalConfig::from_json(&config.config)?,
        ))),
        ProviderType::Ssh => {
            let pool = match &env.host_keys {
                Some(host_keys) => ssh::SshPool::new(
                    host_keys(config.tenant_id),
                    match &env.events {
                        Some(sink) => nimbus_setup::events::Events::new(sink.clone()),
                        None => nimbus_setup::events::Events::none(),
                    },
                    nimbus_setup::ssh::SshOptions::default(),
                ),
                None => ssh::SshPool::shared(config.id),
            };
            Ok(Arc::new(ssh::SshProvider::from_provider(config, pool)?))
        }
        ProviderType::Baremetal => {
            let pool = match &env.host_keys {
                Some(host_keys) => ssh::SshPool::new(
                    host_keys(config.tenant_id),
                    match &env.events {
                        Some(sink) => nimbus_setup::events::Events::new(sink.clone()),
                        None => nimbus_setup::events::Events::none(),
                    },
                    nimbus_setup::ssh::SshOptions::default(),
                ),
                None => ssh::SshPool::shared(config.id),
            };
            Ok(Arc::new(baremetal::BaremetalProvider::from_provider(
                config,
                pool,
                env.agents.clone(),
            )?))
        }
        ProviderType::Hetzner => {
            let mut provider = hetzner::HetznerProvider::new(config)?;
            if let Some(host_keys) = &env.host_keys {
                provider = provider.with_ssh(
                    host_keys(config.tenant_id),
                    nimbus_setup::ssh::SshOptions::default(),
                );
            }
            if let Some(sink) = &env.events {
                provider = provider.with_events(sink.clone());
            }
            Ok(Arc::new(provider))
        }
        other => Err(Error::Permanent(format!(
            "provider type {other} is not available in this build"
        ))),
    }
}

/// Checks a provider's settings before they are stored, so a bad config is a 4xx at creation
/// rather than a failure at the first provision.
pub fn validate_config(config: &ProviderConfig) -> Result<()> {
    match config.provider_type {
        ProviderType::Local => local::LocalConfig::from_json(&config.config).map(drop),
        ProviderType::Ssh => ssh::SshConfig::from_provider(config).map(drop),
        ProviderType::Baremetal => baremetal::BaremetalConfig::from_provider(config).map(drop),
        ProviderType::Hetzner => hetzner::validate_config(config),
        other => Err(Error::InvalidConfig {
            field: "type".into(),
            message: format!("provider type {other} is not available in this build"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn providers_without_duplicates_refuse_to_remove_one() {
        let dir = tempfile::tempdir().unwrap();
        let provider = local::LocalProvider::new(
            dir.path().to_owned(),
            ProviderId::new(),
            local::LocalConfig::default(),
        );
        let machine_id = MachineId::new();
        let resource = ProviderMachine {
            machine_id: Some(machine_id),
            tenant_id: Some(TenantId::new()),
            status: ProviderStatus::Running,
            ip_address: None,
            ssh_public_key: None,
            created_at: nimbus_types::now(),
            metadata: ProviderMetadata::default(),
        };
        let err = provider.remove_duplicate(&resource).await.unwrap_err();
        assert!(
            matches!(&err, Error::Permanent(message) if message.contains("duplicate") && message.contains(&machine_id.to_string())),
            "{err}"
        );
    }
}
