//! The AWS EC2 provider: Linux machines are plain instances; macOS machines are EC2 Mac
//! instances on dedicated hosts that Nimbus allocates, reuses while it holds them, and releases
//! only after their 24-hour minimum allocation period.
//!
//! It lives in its own crate because `aws-sdk-ec2` is about half of a cold build: nothing else
//! waits on it. Like every provider it does not touch the store; the lifecycle layer records
//! intent and calls [`AwsProvider::find_orphans`] / [`AwsProvider::reconcile_hosts`] from its
//! reconcilers. Every EC2 request goes through `api::Ec2::call` (events, backoff, error kinds).

mod api;
mod clock;
mod config;
mod events;
mod hosts;
mod provider;
mod tags;

use std::sync::Arc;

use nimbus_provider::Provider;
use nimbus_types::{ProviderConfig, ProviderType};

pub use api::{ErrorKind, RetryPolicy, classify};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{
    AwsConfig, AwsCredentials, ImageIds, KNOWN_MAC_INSTANCE_TYPES, is_mac_instance_type,
    mac_arch, split_config_file,
};
pub use events::{CollectingSink, EventSink, TracingSink};
pub use hosts::{Host, HostState};
pub use provider::{
    AwsProvider, HostReconcileReport, Orphan, OrphanReason, host_client_token, run_client_token,
};

/// Tag names Nimbus puts on EC2 resources.
pub mod tag {
    pub use crate::tags::{ARCH, MACHINE, MANAGED_BY, MANAGED_BY_VALUE, OS, PROVIDER, SCRUB_UNTIL, TENANT};
}

/// Builds the provider for a stored configuration of type `aws` (registry entry for `nimbusd`).
pub fn build(
    config: &ProviderConfig,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn Provider>, nimbus_provider::Error> {
    Ok(Arc::new(AwsProvider::new(config, clock)?))
}

/// Like [`build`], with the daemon's event bus, keeping the concrete type so the reconciler can
/// call [`AwsProvider::reconcile_hosts`] and [`AwsProvider::terminate_orphans`].
pub fn build_aws(
    config: &ProviderConfig,
    clock: Arc<dyn Clock>,
    events: Arc<dyn EventSink>,
) -> Result<Arc<AwsProvider>, nimbus_provider::Error> {
    Ok(Arc::new(AwsProvider::new(config, clock)?.with_events(events)))
}

/// Checks an `aws` provider's config and credentials before they are stored.
pub fn validate_config(config: &ProviderConfig) -> Result<(), nimbus_provider::Error> {
    if config.provider_type != ProviderType::Aws {
        return Err(nimbus_provider::Error::InvalidConfig {
            field: "type".into(),
            message: format!("expected aws, got {}", config.provider_type),
        });
    }
    AwsConfig::from_json(&config.config)?;
    AwsCredentials::from_secret(config.credentials.as_ref())?;
    Ok(())
}
