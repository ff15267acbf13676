//! SSH host keys pinned on first use, kept in the store per tenant, so a pin survives restarts
//! and every replica sees it.

use std::sync::Arc;

use async_trait::async_trait;
use nimbus_setup::exec;
use nimbus_setup::ssh::HostKeyStore;
use nimbus_store::Storage;
use nimbus_types::TenantId;

pub struct StoredHostKeys {
    store: Arc<dyn Storage>,
    tenant_id: TenantId,
}

impl StoredHostKeys {
    pub fn new(store: Arc<dyn Storage>, tenant_id: TenantId) -> Self {
        StoredHostKeys { store, tenant_id }
    }
}

fn unavailable(err: nimbus_store::Error) -> exec::Error {
    // Retryable: the store may be back on the next attempt.
    exec::Error::Unreachable(format!("host key store unavailable: {err}"))
}

#[async_trait]
impl HostKeyStore for StoredHostKeys {
    async fn get(&self, host_id: &str) -> Result<Option<String>, exec::Error> {
        self.store
            .get_host_key(self.tenant_id, host_id)
            .await
            .map_err(unavailable)
    }

    async fn pin(&self, host_id: &str, key: &str) -> Result<(), exec::Error> {
        let pinned = self
            .store
            .pin_host_key(self.tenant_id, host_id, key)
            .await
            .map_err(unavailable)?;
        if pinned == key {
            Ok(())
        } else {
            // Someone pinned a different key between our lookup and our pin.
            Err(exec::Error::Denied(format!(
                "host {host_id} presented a key other than the one pinned for it"
            )))
        }
    }
}
