//! A tenant's pools: the runner labels each serves, where its machines come from, and how it
//! scales. `GET` of one pool adds its live status (what the autoscaler sees and last did).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use nimbus_types::api::{CreatePool, PoolList, PoolPlan, PoolView, UpdatePool};
use nimbus_types::{Pool, PoolId, Tenant};

use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::http::json::ApiJson;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tenants/{tenant}/pools", get(list).post(create))
        .route(
            "/v1/tenants/{tenant}/pools/{pool}",
            get(show).patch(update).delete(delete),
        )
        .route("/v1/tenants/{tenant}/pools/{pool}/plan", get(plan))
}

/// Resolves a pool of `tenant` by name or id.
async fn find(state: &AppState, tenant: &Tenant, name_or_id: &str) -> Result<Pool, ApiError> {
    let found = match name_or_id.parse::<PoolId>() {
        Ok(id) => state.store.get_pool(tenant.id, id).await,
        Err(_) => state.store.get_pool_by_name(tenant.id, name_or_id).await,
    };
    found.map_err(|err| match err {
        nimbus_store::Error::NotFound { .. } => ApiError::not_found("pool"),
        other => other.into(),
    })
}

async fn view(state: &AppState, pool: Pool, with_status: bool) -> Result<PoolView, ApiError> {
    let provider = state
        .store
        .get_provider(pool.tenant_id, pool.provider_id)
        .await?
        .name;
    let status = if with_status {
        Some(state.fleet.pool_status(&pool).await?)
    } else {
        None
    };
    Ok(PoolView {
        pool,
        provider,
        status,
    })
}

/// Create a pool. Its warm runners (`min_idle`) start right away.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/pools", tag = "pools",
    security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id")),
    request_body = CreatePool,
    responses(
        (status = 201, body = PoolView),
        (status = 409, description = "the tenant has a pool with this name", body = nimbus_types::api::ErrorBody),
        (status = 422, description = "an invalid field, named in `field`: an unknown provider, min_idle above max, a bad schedule, labels another pool serves", body = nimbus_types::api::ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    ApiJson(body): ApiJson<CreatePool>,
) -> Result<(StatusCode, Json<PoolView>), ApiError> {
    let tenant = caller.tenant(&state, &tenant).await?;
    let provider = crate::http::providers::find(&state, tenant.id, &body.provider)
        .await
        .map_err(|err| {
            if err.status == StatusCode::NOT_FOUND {
                ApiError::invalid_field(
                    "provider",
                    format!("the tenant has no provider {:?}", body.provider),
                )
            } else {
                err
            }
        })?;
    let pool = state
        .fleet
        .create_pool(tenant.id, &body.name, &provider, body.settings())
        .await?;
    Ok((StatusCode::CREATED, Json(view(&state, pool, false).await?)))
}

/// List a tenant's pools.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/pools", tag = "pools",
    security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id")),
    responses((status = 200, body = PoolList)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<PoolList>, ApiError> {
    let tenant = caller.tenant(&state, &tenant).await?;
    let providers = state.store.list_tenant_providers(tenant.id).await?;
    let pools = state
        .store
        .list_pools(Some(tenant.id))
        .await?
        .into_iter()
        .map(|pool| PoolView {
            provider: providers
                .iter()
                .find(|provider| provider.id == pool.provider_id)
                .map(|provider| provider.name.clone())
                .unwrap_or_default(),
            pool,
            status: None,
        })
        .collect();
    Ok(Json(PoolList { pools }))
}

/// Show one pool by name or id, with its status: desired, idle, busy, booting and failed
/// machines, queued jobs, the warm target in force, backoff and budget, and the last decisions.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/pools/{pool}", tag = "pools",
    security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id"),
           ("pool" = String, Path, description = "pool name or id")),
    responses((status = 200, body = PoolView), (status = 404, body = nimbus_types::api::ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, pool)): Path<(String, String)>,
) -> Result<Json<PoolView>, ApiError> {
    let tenant = caller.tenant(&state, &tenant).await?;
    let pool = find(&state, &tenant, &pool).await?;
    Ok(Json(view(&state, pool, true).await?))
}

/// What the autoscaler would do for the pool now, and why — a dry run that changes nothing.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/pools/{pool}/plan", tag = "pools",
    security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id"),
           ("pool" = String, Path, description = "pool name or id")),
    responses((status = 200, body = PoolPlan), (status = 404, body = nimbus_types::api::ErrorBody)))]
pub async fn plan(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, pool)): Path<(String, String)>,
) -> Result<Json<PoolPlan>, ApiError> {
    let tenant = caller.tenant(&state, &tenant).await?;
    let pool = find(&state, &tenant, &pool).await?;
    Ok(Json(state.fleet.pool_plan(&pool).await?))
}

/// Change a pool's settings: fields present change (`null` clears an optional one), the rest
/// stay. The name and provider do not change.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}/pools/{pool}", tag = "pools",
    security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id"),
           ("pool" = String, Path, description = "pool name or id")),
    request_body = UpdatePool,
    responses(
        (status = 200, body = PoolView),
        (status = 404, body = nimbus_types::api::ErrorBody),
        (status = 422, description = "an invalid field, named in `field`", body = nimbus_types::api::ErrorBody),
    ))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, pool)): Path<(String, String)>,
    ApiJson(body): ApiJson<UpdatePool>,
) -> Result<Json<PoolView>, ApiError> {
    let tenant = caller.tenant(&state, &tenant).await?;
    let pool = find(&state, &tenant, &pool).await?;
    let settings = body.apply(&pool.settings);
    let pool = state.fleet.update_pool(&pool, settings).await?;
    Ok(Json(view(&state, pool, false).await?))
}

/// Delete a pool without live machines (lower its `max` to 0 first to drain it).
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/pools/{pool}", tag = "pools",
    security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id"),
           ("pool" = String, Path, description = "pool name or id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, body = nimbus_types::api::ErrorBody),
        (status = 409, description = "the pool still has live machines", body = nimbus_types::api::ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, pool)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.tenant(&state, &tenant).await?;
    let pool = find(&state, &tenant, &pool).await?;
    state.fleet.delete_pool(&tenant.name, &pool).await?;
    Ok(StatusCode::NO_CONTENT)
}
