//! Job demand: `GET /v1/demand` shows the jobs that wait for runners per tenant and label set,
//! and [`reconcile_loop`] keeps the book honest against each forge's own job list.
//!
//! Webhook deliveries (see `forge.rs`) fill the book as jobs are queued, started and finished.
//! A forge never redelivers a webhook it failed to send, so the loop re-reads every GitHub and
//! Forgejo tenant's open jobs at start and then every [`Forge::demand_poll_period`] ([`DEFAULT_RECONCILE_PERIOD`]
//! for forges that push webhooks; Forgejo, which sends none, is polled every 15 s by default); a
//! failed read is retried after [`requeue_after`], doubled per consecutive failure up to
//! [`MAX_BACKOFF`], and leaves the book untouched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use nimbus_forge::Forge;
#[cfg(doc)]
use nimbus_forge::demand::DEFAULT_RECONCILE_PERIOD;
use nimbus_forge::demand::{reconcile_demand, requeue_after};
use nimbus_types::{ForgeType, TenantId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/demand", get(list))
}

/// Open jobs of one tenant that ask for the same labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DemandRow {
    pub tenant_id: TenantId,
    /// The labels the jobs ask for: lowercase, sorted.
    pub labels: Vec<String>,
    pub queued: u64,
    /// Waiting for something other than a runner (an approval, a concurrency group).
    pub waiting: u64,
    pub in_progress: u64,
    /// When the longest-waiting queued job was first seen.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub oldest_queued_at: Option<OffsetDateTime>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DemandQuery {
    /// Tenant name or id; a tenant token sees only its own tenant either way.
    pub tenant: Option<String>,
}

/// List job demand per tenant and label set: queued, waiting and in-progress jobs.
#[utoipa::path(get, path = "/v1/demand", tag = "forge", security(("bearer" = [])),
    params(DemandQuery),
    responses((status = 200, body = Vec<DemandRow>), (status = 404, body = nimbus_types::api::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<DemandQuery>,
) -> Result<Json<Vec<DemandRow>>, ApiError> {
    let tenant_ids: Vec<TenantId> = match (query.tenant.as_deref(), caller) {
        (Some(tenant), _) => vec![caller.tenant(&state, tenant).await?.id],
        (None, Caller::Tenant(own)) => vec![own],
        (None, Caller::Admin) => state
            .store
            .list_tenants()
            .await?
            .into_iter()
            .map(|t| t.id)
            .collect(),
    };
    let mut rows = Vec::new();
    for tenant_id in tenant_ids {
        let summary = state
            .demand
            .summary(tenant_id)
            .await
            .map_err(|err| ApiError::internal(&err))?;
        rows.extend(summary.into_iter().map(|demand| DemandRow {
            tenant_id,
            labels: demand.labels.labels().to_vec(),
            queued: demand.queued,
            waiting: demand.waiting,
            in_progress: demand.in_progress,
            oldest_queued_at: demand.oldest_queued_at,
        }));
    }
    Ok(Json(rows))
}

/// How often the loop looks for tenants whose forge appeared, changed or is due.
const TICK: Duration = Duration::from_secs(5);
/// Tenants reconciled at the same time.
const CONCURRENCY: usize = 4;

/// Longest wait after consecutive failed reads.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// When a tenant's demand is next re-read, and from which forge client (a new client, after a
/// configuration change, is read at once).
struct Due {
    forge: Arc<dyn Forge>,
    at: Instant,
    /// Reads that failed in a row.
    failures: u32,
}

/// Re-reads every GitHub and Forgejo tenant's open jobs into the demand book until `state.shutdown` is
/// cancelled: at start, then every [`Forge::demand_poll_period`], sooner after a configuration
/// change, later after an error (see [`backoff`]).
pub async fn reconcile_loop(state: AppState) {
    let mut due: HashMap<TenantId, Due> = HashMap::new();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = reconcile_due(&state, &mut due) => {}
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
    tracing::debug!("demand reconcile loop stopped");
}

/// Reconciles every tenant with a GitHub forge once, now (what the loop does at start).
pub async fn reconcile_once(state: &AppState) {
    reconcile_due(state, &mut HashMap::new()).await;
}

/// One pass: reconciles the tenants that are due.
async fn reconcile_due(state: &AppState, due: &mut HashMap<TenantId, Due>) {
    let tenants = match state.store.list_tenants().await {
        Ok(tenants) => tenants,
        Err(err) => {
            tracing::warn!(error = %err, "demand reconcile: cannot list tenants");
            return;
        }
    };
    let now = Instant::now();
    let mut work = Vec::new();
    let mut seen = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        seen.push(tenant.id);
        let forge = match state.fleet.forges().get(tenant.id).await {
            // GitLab's job list covers only the configured projects, while its group hooks
            // report every project's jobs: a reconcile would close jobs it cannot see.
            Ok(Some(forge)) if forge.forge_type() != ForgeType::Gitlab => forge,
            Ok(_) => {
                due.remove(&tenant.id);
                continue;
            }
            Err(err) => {
                tracing::warn!(tenant.id = %tenant.id, error = %err, "demand reconcile: no usable forge");
                due.remove(&tenant.id);
                continue;
            }
        };
        let (is_due, failures) = match due.get(&tenant.id) {
            Some(entry) if std::ptr::addr_eq(Arc::as_ptr(&entry.forge), Arc::as_ptr(&forge)) => {
                (entry.at <= now, entry.failures)
            }
            // A new client (changed configuration) starts afresh.
            Some(_) | None => (true, 0),
        };
        if is_due {
            work.push((tenant.id, forge, failures));
        }
    }
    due.retain(|tenant_id, _| seen.contains(tenant_id));
    // Owned tasks (not borrowed futures): the loop runs on a spawned task.
    let mut results: Vec<(TenantId, Arc<dyn Forge>, Duration, u32)> =
        Vec::with_capacity(work.len());
    for chunk in work.chunks(CONCURRENCY) {
        let mut tasks = tokio::task::JoinSet::new();
        for (tenant_id, forge, failures) in chunk {
            tasks.spawn(reconcile_one(
                state.clone(),
                *tenant_id,
                forge.clone(),
                *failures,
            ));
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(result) => results.push(result),
                Err(err) => tracing::error!(error = %err, "demand reconcile task failed"),
            }
        }
    }
    let finished = Instant::now();
    for (tenant_id, forge, wait, failures) in results {
        due.insert(
            tenant_id,
            Due {
                forge,
                at: finished + wait,
                failures,
            },
        );
    }
}

/// The wait after the `failures`-th failed read in a row: what [`requeue_after`] says, doubled
/// per earlier failure up to [`MAX_BACKOFF`]; a rate limit's reset is kept as the forge said.
pub fn backoff(error: &nimbus_forge::Error, failures: u32) -> Duration {
    let base = requeue_after(error);
    if matches!(error, nimbus_forge::Error::RateLimited { .. }) {
        return base;
    }
    let doubled = base.saturating_mul(1u32 << failures.saturating_sub(1).min(8));
    doubled.min(MAX_BACKOFF).max(base.min(MAX_BACKOFF))
}

/// Reconciles one tenant and says when to do it again.
async fn reconcile_one(
    state: AppState,
    tenant_id: TenantId,
    forge: Arc<dyn Forge>,
    failures: u32,
) -> (TenantId, Arc<dyn Forge>, Duration, u32) {
    let (wait, failures) = match reconcile_demand(&*forge, &*state.demand, tenant_id).await {
        Ok(report) => {
            if report != Default::default() {
                state.fleet.demand_changed(tenant_id);
            }
            (forge.demand_poll_period(), 0)
        }
        Err(err) => {
            let failures = failures.saturating_add(1);
            let wait = backoff(&err, failures);
            tracing::warn!(
                tenant.id = %tenant_id,
                error = %err,
                retry_in_secs = wait.as_secs(),
                "demand reconcile failed; the book is left as it was"
            );
            (wait, failures)
        }
    };
    (tenant_id, forge, wait, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_reads_back_off_up_to_a_bound() {
        let transient = nimbus_forge::Error::Retryable("502".into());
        assert_eq!(backoff(&transient, 1), Duration::from_secs(30));
        assert_eq!(backoff(&transient, 2), Duration::from_secs(60));
        assert_eq!(backoff(&transient, 3), Duration::from_secs(120));
        assert_eq!(backoff(&transient, 50), MAX_BACKOFF);
        let reset = nimbus_types::now() + time::Duration::seconds(90);
        let limited = nimbus_forge::Error::RateLimited { reset };
        let wait = backoff(&limited, 6);
        assert!(
            wait <= Duration::from_secs(90) && wait >= Duration::from_secs(88),
            "{wait:?}"
        );
    }
}
