//! `GET /v1/costs`: what the fleet cost since a date, per tenant and pool, with this month's
//! spend and a month-end forecast; `GET /v1/costs/jobs`: each finished job's share of the
//! machine its runner ran on. Prices come from the pool's `hourly_cost` or the price table
//! (defaults, overridable with `[[prices]]` in the configuration file).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use nimbus_fleet::costs::CostQuery;
use nimbus_types::PoolId;
use nimbus_types::api::{CostReport, JobCostReport};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/costs", get(costs))
        .route("/v1/costs/jobs", get(jobs))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostParams {
    tenant: Option<String>,
    pool: Option<String>,
    since: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobCostParams {
    tenant: Option<String>,
    pool: Option<String>,
    since: Option<String>,
    job: Option<u64>,
}

/// `2026-12-01` (midnight UTC) or an RFC 3339 time.
fn parse_since(text: &str) -> Result<OffsetDateTime, ApiError> {
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &format)
        .map(|date| date.midnight().assume_utc())
        .map_err(|_| {
            ApiError::invalid_field(
                "since",
                format!("{text:?} is not a date (2026-12-01) or an RFC 3339 time"),
            )
        })
}

/// Costs per tenant and pool since `since` (default: the start of this month, UTC).
#[utoipa::path(get, path = "/v1/costs", tag = "pools", security(("bearer" = [])),
    params(("tenant" = Option<String>, Query, description = "tenant name or id"),
           ("pool" = Option<String>, Query, description = "pool name or id (needs tenant)"),
           ("since" = Option<String>, Query, description = "a date (2026-12-01) or an RFC 3339 time")),
    responses((status = 200, body = CostReport),
              (status = 422, description = "a bad parameter, named in `field`", body = nimbus_types::api::ErrorBody)))]
pub async fn costs(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<CostParams>, QueryRejection>,
) -> Result<Json<CostReport>, ApiError> {
    let Query(params) = query.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let query = cost_query(&state, caller, &params.tenant, &params.pool, &params.since).await?;
    Ok(Json(state.fleet.costs(&query).await?))
}

/// Jobs that finished since `since` (default: the start of this month, UTC), each with its
/// share of the machine its runner ran on (tied by the runner name of the forge's job events).
#[utoipa::path(get, path = "/v1/costs/jobs", tag = "pools", security(("bearer" = [])),
    params(("tenant" = Option<String>, Query, description = "tenant name or id"),
           ("pool" = Option<String>, Query, description = "pool name or id (needs tenant)"),
           ("since" = Option<String>, Query, description = "a date (2026-12-01) or an RFC 3339 time"),
           ("job" = Option<u64>, Query, description = "only this job (the forge's job id)")),
    responses((status = 200, body = JobCostReport),
              (status = 422, description = "a bad parameter, named in `field`", body = nimbus_types::api::ErrorBody)))]
pub async fn jobs(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<JobCostParams>, QueryRejection>,
) -> Result<Json<JobCostReport>, ApiError> {
    let Query(params) = query.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let mut query = cost_query(&state, caller, &params.tenant, &params.pool, &params.since).await?;
    query.job_id = params.job;
    Ok(Json(state.fleet.job_costs(&query).await?))
}

/// What a cost query names: the tenant (given, else the caller's own; every tenant for the
/// admin), the pool and the start of the window.
async fn cost_query(
    state: &AppState,
    caller: Caller,
    tenant: &Option<String>,
    pool: &Option<String>,
    since: &Option<String>,
) -> Result<CostQuery, ApiError> {
    let tenant = match (tenant, caller) {
        (Some(name), _) => Some(caller.tenant(state, name).await?),
        (None, Caller::Tenant(id)) => Some(state.store.get_tenant(id).await?),
        (None, Caller::Admin) => None,
    };
    let pool_id = match (pool, &tenant) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(ApiError::invalid_field("pool", "a pool needs its tenant"));
        }
        (Some(name), Some(tenant)) => {
            let found = match name.parse::<PoolId>() {
                Ok(id) => state.store.get_pool(tenant.id, id).await,
                Err(_) => state.store.get_pool_by_name(tenant.id, name).await,
            };
            Some(
                found
                    .map_err(|err| match err {
                        nimbus_store::Error::NotFound { .. } => ApiError::not_found("pool"),
                        other => other.into(),
                    })?
                    .id,
            )
        }
    };
    let since = since.as_deref().map(parse_since).transpose()?;
    if since.is_some_and(|since| since > nimbus_types::now()) {
        return Err(ApiError::invalid_field("since", "is in the future"));
    }
    Ok(CostQuery {
        tenant_id: tenant.map(|tenant| tenant.id),
        pool_id,
        since,
        job_id: None,
    })
}
