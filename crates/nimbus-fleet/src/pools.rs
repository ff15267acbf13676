//! Pools: creating, changing and deleting them, with the checks that need the store (the
//! provider exists, no other pool of the tenant has the same labels). The settings' own checks
//! are `PoolSettings::validate`.

use nimbus_types::{
    Pool, PoolId, PoolSettings, ProviderConfig, SpecError, TenantId, labels_conflict, validate_name,
};

use crate::{Error, Fleet, Result};

impl Fleet {
    /// Validates and stores a new pool of `provider`, then wakes the autoscaler so its warm
    /// runners start now.
    pub async fn create_pool(
        &self,
        tenant_id: TenantId,
        name: &str,
        provider: &ProviderConfig,
        mut settings: PoolSettings,
    ) -> Result<Pool> {
        validate_name(name).map_err(|message| SpecError::new("name", message))?;
        if provider.tenant_id != tenant_id {
            return Err(SpecError::new("provider", "no such provider in this tenant").into());
        }
        settings.validate()?;
        self.check_budget_priced(provider.provider_type, &settings)?;
        // A name taken is the first thing to say (a repeated request), before label clashes.
        match self.inner.store.get_pool_by_name(tenant_id, name).await {
            Ok(_) => {
                return Err(Error::Conflict(format!(
                    "the tenant already has a pool named {name:?}"
                )));
            }
            Err(nimbus_store::Error::NotFound { .. }) => {}
            Err(err) => return Err(err.into()),
        }
        self.check_labels(tenant_id, None, &settings).await?;
        let now = nimbus_types::now();
        let pool = Pool {
            id: PoolId::new(),
            tenant_id,
            name: name.to_owned(),
            provider_id: provider.id,
            settings,
            created_at: now,
            updated_at: now,
        };
        self.inner
            .store
            .create_pool(&pool)
            .await
            .map_err(|err| match err {
                nimbus_store::Error::Conflict { .. } => {
                    Error::Conflict(format!("the tenant already has a pool named {name:?}"))
                }
                nimbus_store::Error::NotFound { entity: "provider" } => {
                    SpecError::new("provider", "no such provider in this tenant").into()
                }
                other => other.into(),
            })?;
        self.demand_changed(tenant_id);
        Ok(pool)
    }

    /// Replaces a pool's settings with `settings` (validated as a whole), then wakes the
    /// autoscaler: a lower `max` or warm target takes effect on the next pass.
    pub async fn update_pool(&self, pool: &Pool, mut settings: PoolSettings) -> Result<Pool> {
        settings.validate()?;
        let provider = self
            .inner
            .store
            .get_provider(pool.tenant_id, pool.provider_id)
            .await?;
        self.check_budget_priced(provider.provider_type, &settings)?;
        self.check_labels(pool.tenant_id, Some(pool.id), &settings)
            .await?;
        let mut updated = pool.clone();
        updated.settings = settings;
        updated.updated_at = nimbus_types::now();
        self.inner.store.update_pool(&updated).await?;
        self.demand_changed(pool.tenant_id);
        Ok(updated)
    }

    /// Deletes a pool that has no live machines (set `max` to 0 first to drain it).
    pub async fn delete_pool(&self, tenant_name: &str, pool: &Pool) -> Result<()> {
        match self.inner.store.delete_pool(pool.tenant_id, pool.id).await {
            Ok(()) => {
                self.forget_pool(tenant_name, pool);
                Ok(())
            }
            Err(nimbus_store::Error::Conflict { .. }) => Err(Error::Conflict(
                "the pool still has live machines; set its max to 0 and wait for them to go".into(),
            )),
            Err(err) => Err(err.into()),
        }
    }

    /// Refuses a monthly budget nothing prices: neither the pool's `hourly_cost` nor the price
    /// table's entry for its provider type and instance type.
    fn check_budget_priced(
        &self,
        provider_type: nimbus_types::ProviderType,
        settings: &PoolSettings,
    ) -> Result<()> {
        if settings.monthly_budget.is_some()
            && self
                .price(
                    settings.hourly_cost,
                    provider_type,
                    settings.instance_type.as_deref(),
                )
                .is_none()
        {
            return Err(SpecError::new(
                "monthly_budget",
                format!(
                    "needs hourly_cost, or an instance_type the price table has for {provider_type}                      providers, to estimate what the pool spends"
                ),
            )
            .into());
        }
        Ok(())
    }

    /// Refuses labels that another pool of the tenant already serves exactly: every job either
    /// pool could take would tie, and one of them would never get work.
    async fn check_labels(
        &self,
        tenant_id: TenantId,
        except: Option<PoolId>,
        settings: &PoolSettings,
    ) -> Result<()> {
        let pools = self.inner.store.list_pools(Some(tenant_id)).await?;
        if let Some(other) = pools.iter().find(|other| {
            Some(other.id) != except && labels_conflict(&other.settings.labels, &settings.labels)
        }) {
            return Err(SpecError::new(
                "labels",
                format!(
                    "pool {:?} already serves exactly these labels; jobs could match either \
                     pool with equal specificity — add a label that tells them apart",
                    other.name
                ),
            )
            .into());
        }
        Ok(())
    }
}
