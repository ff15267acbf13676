//! Builds provider implementations from stored configurations and caches them per provider.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nimbus_provider::Provider;
use nimbus_types::{ProviderConfig, ProviderId, ProviderType};

/// Builds a provider for one stored configuration.
pub type Builder =
    Arc<dyn Fn(&ProviderConfig) -> nimbus_provider::Result<Arc<dyn Provider>> + Send + Sync>;

/// Validates a configuration before it is stored.
pub type Validator = Arc<dyn Fn(&ProviderConfig) -> nimbus_provider::Result<()> + Send + Sync>;

/// The provider types this daemon can run, and the live provider per stored configuration.
///
/// A configuration is immutable once stored, so a cached provider never goes stale; deleting a
/// provider evicts it.
#[derive(Clone, Default)]
pub struct ProviderRegistry {
    kinds: HashMap<ProviderType, (Builder, Validator)>,
    live: Arc<Mutex<HashMap<ProviderId, Arc<dyn Provider>>>>,
}

impl ProviderRegistry {
    pub fn new() -> Self {
        ProviderRegistry::default()
    }

    pub fn register(&mut self, kind: ProviderType, builder: Builder, validator: Validator) {
        self.kinds.insert(kind, (builder, validator));
    }

    pub fn supports(&self, kind: ProviderType) -> bool {
        self.kinds.contains_key(&kind)
    }

    pub fn validate(&self, config: &ProviderConfig) -> nimbus_provider::Result<()> {
        match self.kinds.get(&config.provider_type) {
            Some((_, validate)) => validate(config),
            None => Err(unsupported(config.provider_type)),
        }
    }

    pub fn get(&self, config: &ProviderConfig) -> nimbus_provider::Result<Arc<dyn Provider>> {
        if let Some(provider) = self.live.lock().expect("registry lock").get(&config.id) {
            return Ok(provider.clone());
        }
        let (build, _) = self
            .kinds
            .get(&config.provider_type)
            .ok_or_else(|| unsupported(config.provider_type))?;
        let provider = build(config)?;
        self.live
            .lock()
            .expect("registry lock")
            .insert(config.id, provider.clone());
        Ok(provider)
    }

    pub fn evict(&self, id: ProviderId) {
        self.live.lock().expect("registry lock").remove(&id);
    }
}

fn unsupported(kind: ProviderType) -> nimbus_provider::Error {
    nimbus_provider::Error::InvalidConfig {
        field: "type".into(),
        message: format!("provider type {kind} is not available in this build"),
    }
}
