//! The AWS EC2 provider: Linux machines are plain instances; macOS machines are EC2 Mac
//! instances on dedicated hosts that Nimbus allocates, reuses while it holds them, and releases
//! only after their 24-hour minimum allocation period.
//!
//! It lives in its own crate because `aws-sdk-ec2` is about half of a cold build: nothing else
//! waits on it. Like every provider it does not touch the store; the lifecycle layer records
//! intent and its reconciler removes what no intent accounts for through the `Provider` trait
//! (`list_machines`, then `terminate` for unknown machines and `remove_duplicate` for a second
//! instance of a live one). Dedicated hosts have their own reconciler,
//! [`AwsProvider::reconcile_hosts`]. Every EC2 request goes through `api::Ec2::call` (events,
//! backoff, error kinds).

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
    AwsConfig, AwsCredentials, ImageIds, KNOWN_MAC_INSTANCE_TYPES, is_mac_instance_type, mac_arch,
    split_config_file,
};
pub use events::{CollectingSink, EventSink, TracingSink};
pub use hosts::{Host, HostState};
pub use provider::{
    AwsProvider, HostReconcileReport, default_key_name, host_client_token, run_client_token,
    run_client_token_at,
};

/// Tag names Nimbus puts on EC2 resources.
pub mod tag {
    pub use crate::tags::{
        ARCH, MACHINE, MANAGED_BY, MANAGED_BY_VALUE, OS, PROVIDER, SCRUB_UNTIL, TENANT,
    };
}

/// Builds the provider for a stored configuration of type `aws` (registry entry for `nimbusd`).
///
/// Called inside a tokio runtime, it also starts the provider's host reconciler (see
/// [`spawn_host_reconciler`]), which stops when the provider is dropped.
pub fn build(
    config: &ProviderConfig,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn Provider>, nimbus_provider::Error> {
    let provider = Arc::new(AwsProvider::new(config, clock)?);
    spawn_host_reconciler(&provider);
    Ok(provider)
}

/// Like [`build`], with the daemon's event bus, keeping the concrete type so that a reconciler
/// can call [`AwsProvider::reconcile_hosts`] itself.
pub fn build_aws(
    config: &ProviderConfig,
    clock: Arc<dyn Clock>,
    events: Arc<dyn EventSink>,
) -> Result<Arc<AwsProvider>, nimbus_provider::Error> {
    let provider = Arc::new(AwsProvider::new(config, clock)?.with_events(events));
    spawn_host_reconciler(&provider);
    Ok(provider)
}

/// Every `host_reconcile_interval_secs`, releases the provider's idle dedicated hosts that are
/// past their minimum allocation period ([`AwsProvider::reconcile_hosts`]). Holds the provider
/// weakly: the loop ends once the provider is dropped. `None` outside a tokio runtime.
pub fn spawn_host_reconciler(provider: &Arc<AwsProvider>) -> Option<tokio::task::JoinHandle<()>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let weak = Arc::downgrade(provider);
    let interval = std::time::Duration::from_secs(provider.config().host_reconcile_interval_secs);
    let provider_id = provider.provider_id();
    Some(runtime.spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(provider) = weak.upgrade() else {
                break;
            };
            match provider.reconcile_hosts().await {
                Ok(report) if !report.released.is_empty() || !report.failed.is_empty() => {
                    tracing::info!(
                        provider.id = %provider_id,
                        released = ?report.released,
                        failed = report.failed.len(),
                        "host reconcile"
                    );
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(provider.id = %provider_id, error = %err, "host reconcile failed");
                }
            }
        }
    }))
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
