//! One forge client per tenant, built from the stored configuration and kept while it is
//! unchanged: a client holds the App token cache and the API rate budget, so building one per
//! call would undo both. A changed configuration (a newer `updated_at`, also when another replica
//! wrote it) replaces the client on the next lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nimbus_forge::Forge;
use nimbus_store::Storage;
use nimbus_types::{ForgeConfig, ForgeType, TenantId};
use time::OffsetDateTime;

/// A built client and the `updated_at` of the configuration it was built from.
type Cached = (OffsetDateTime, Arc<dyn Forge>);

pub struct Forges {
    store: Arc<dyn Storage>,
    clients: Mutex<HashMap<TenantId, Cached>>,
}

impl Forges {
    pub fn new(store: Arc<dyn Storage>) -> Forges {
        Forges {
            store,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant's forge client, or `None` when the tenant has no forge configured or its
    /// forge registers no runners (Nimbus Git: `nimbusd` runs the jobs itself, see `ci`).
    pub async fn get(&self, tenant_id: TenantId) -> crate::Result<Option<Arc<dyn Forge>>> {
        let config = self.store.get_tenant_forge_config(tenant_id).await?;
        let Some(config) = config.filter(|c| c.forge_type != ForgeType::NimbusGit) else {
            self.clients.lock().expect("forges lock").remove(&tenant_id);
            return Ok(None);
        };
        if let Some((updated_at, client)) =
            self.clients.lock().expect("forges lock").get(&tenant_id)
            && *updated_at == config.updated_at
        {
            return Ok(Some(client.clone()));
        }
        let client = nimbus_forge::build(&config).map_err(|err| {
            crate::Error::Conflict(format!(
                "the tenant's forge configuration cannot be used: {err}"
            ))
        })?;
        self.clients
            .lock()
            .expect("forges lock")
            .insert(tenant_id, (config.updated_at, client.clone()));
        Ok(Some(client))
    }

    /// Every cached client, for the rate-limit gauge.
    pub fn cached(&self) -> Vec<(TenantId, Arc<dyn Forge>)> {
        self.clients
            .lock()
            .expect("forges lock")
            .iter()
            .map(|(tenant, (_, client))| (*tenant, client.clone()))
            .collect()
    }

    /// Checks a configuration before it is stored: the client must build from it.
    pub fn validate(config: &ForgeConfig) -> Result<(), nimbus_types::SpecError> {
        let built = match config.forge_type {
            ForgeType::NimbusGit => {
                nimbus_forge::nimbus_git::NimbusGitConfig::from_forge_config(config).map(drop)
            }
            _ => nimbus_forge::build(config).map(drop),
        };
        match built {
            Ok(_) => Ok(()),
            Err(nimbus_forge::Error::InvalidConfig { field, message }) => {
                Err(nimbus_types::SpecError::new(field, message))
            }
            Err(other) => Err(nimbus_types::SpecError::new("type", other.to_string())),
        }
    }
}
