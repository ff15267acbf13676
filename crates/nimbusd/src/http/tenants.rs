//! Tenants and their tokens (the forge configuration is in `forge.rs`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use nimbus_types::api::{BudgetView, CreateTenant, SetBudget, TenantToken};
use nimbus_types::{Tenant, validate_name};

use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::http::json::ApiJson;
use crate::secrets::{new_token, sha256};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tenants", post(create).get(list))
        .route("/v1/tenants/{tenant}", get(show))
        .route("/v1/tenants/{tenant}/tokens", post(create_token))
        .route("/v1/tenants/{tenant}/budget", get(budget).put(set_budget))
}

async fn budget_view(state: &AppState, tenant: &Tenant) -> Result<BudgetView, ApiError> {
    let report = state
        .fleet
        .costs(&nimbus_fleet::costs::CostQuery {
            tenant_id: Some(tenant.id),
            ..Default::default()
        })
        .await?;
    Ok(BudgetView {
        monthly_usd: state.store.get_tenant_budget(tenant.id).await?,
        spent_this_month_usd: report.month_to_date_usd,
        forecast_month_end_usd: report.forecast_month_end_usd,
    })
}

/// A tenant's monthly budget, this month's spend and the month-end forecast.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/budget", tag = "tenants", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id")),
    responses((status = 200, body = BudgetView), (status = 404, body = nimbus_types::api::ErrorBody)))]
pub async fn budget(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<BudgetView>, ApiError> {
    let tenant = caller.tenant(&state, &tenant).await?;
    Ok(Json(budget_view(&state, &tenant).await?))
}

/// Set or remove a tenant's monthly budget (admin only): the autoscaler scales none of the
/// tenant's pools past it, counting this month's spend and an hour ahead of every machine.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/budget", tag = "tenants", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id")),
    request_body = SetBudget,
    responses((status = 200, body = BudgetView),
              (status = 403, description = "needs the admin token", body = nimbus_types::api::ErrorBody),
              (status = 422, description = "not a positive amount", body = nimbus_types::api::ErrorBody)))]
pub async fn set_budget(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    ApiJson(body): ApiJson<SetBudget>,
) -> Result<Json<BudgetView>, ApiError> {
    caller.require_admin()?;
    let tenant = caller.tenant(&state, &tenant).await?;
    if let Some(usd) = body.monthly_usd
        && !(usd.is_finite() && usd > 0.0)
    {
        return Err(ApiError::invalid_field(
            "monthly_usd",
            "must be a positive number of dollars, or null to remove the budget",
        ));
    }
    state
        .store
        .set_tenant_budget(tenant.id, body.monthly_usd)
        .await?;
    state.fleet.demand_changed(tenant.id);
    Ok(Json(budget_view(&state, &tenant).await?))
}

/// Create a tenant (admin only).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = CreateTenant,
    security(("bearer" = [])),
    responses(
        (status = 201, body = Tenant),
        (status = 409, description = "a tenant with this name exists", body = nimbus_types::api::ErrorBody),
        (status = 422, description = "invalid name", body = nimbus_types::api::ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    caller.require_admin()?;
    validate_name(&body.name).map_err(|message| ApiError::invalid_field("name", message))?;
    let tenant = state.store.create_tenant(&body.name).await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// List tenants: all of them for the admin, its own for a tenant token.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, body = Vec<Tenant>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Tenant>>, ApiError> {
    let tenants = match caller {
        Caller::Admin => state.store.list_tenants().await?,
        Caller::Tenant(id) => vec![state.store.get_tenant(id).await?],
    };
    Ok(Json(tenants))
}

/// Show a tenant by name or id.
#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenants", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id")),
    responses((status = 200, body = Tenant), (status = 404, body = nimbus_types::api::ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    Ok(Json(caller.tenant(&state, &tenant).await?))
}

/// Issue a new token for a tenant (admin only). The token is shown once; only its hash is kept.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/tokens", tag = "tenants", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id")),
    responses((status = 201, body = TenantToken), (status = 404, body = nimbus_types::api::ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<(StatusCode, Json<TenantToken>), ApiError> {
    caller.require_admin()?;
    let tenant = caller.tenant(&state, &tenant).await?;
    let token = new_token("nimbus_t_");
    state
        .store
        .add_tenant_token(tenant.id, &sha256(token.expose().as_bytes()))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TenantToken {
            tenant_id: tenant.id,
            token: token.expose().to_owned(),
        }),
    ))
}
