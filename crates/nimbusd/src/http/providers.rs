//! A tenant's providers. Configurations are validated by the provider type before they are
//! stored; credentials are sealed and never returned.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use nimbus_types::ProviderId;
use nimbus_types::api::{CreateProvider, ProviderView};
use serde::Deserialize;

use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::http::json::ApiJson;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/providers", get(list_all))
        .route("/v1/tenants/{tenant}/providers", get(list).post(create))
        .route(
            "/v1/tenants/{tenant}/providers/{provider}",
            get(show).delete(delete),
        )
}

/// Resolves a provider of `tenant` by name or id.
pub async fn find(
    state: &AppState,
    tenant: nimbus_types::TenantId,
    name_or_id: &str,
) -> Result<nimbus_types::ProviderConfig, ApiError> {
    let found = match name_or_id.parse::<ProviderId>() {
        Ok(id) => state.store.get_provider(tenant, id).await,
        Err(_) => state.store.get_provider_by_name(tenant, name_or_id).await,
    };
    found.map_err(|err| match err {
        nimbus_store::Error::NotFound { .. } => ApiError::not_found("provider"),
        other => other.into(),
    })
}

/// Add a provider to a tenant.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/providers", tag = "providers",
    security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id")),
    request_body = CreateProvider,
    responses(
        (status = 201, body = ProviderView),
        (status = 409, description = "the tenant has a provider with this name", body = nimbus_types::api::ErrorBody),
        (status = 422, description = "invalid name, type or config", body = nimbus_types::api::ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    ApiJson(body): ApiJson<CreateProvider>,
) -> Result<(StatusCode, Json<ProviderView>), ApiError> {
    let tenant = caller.tenant(&state, &tenant).await?;
    crate::http::registry::check_provider(&state, body.provider_type, body.config.as_ref())?;
    let provider = state
        .fleet
        .create_provider(
            tenant.id,
            &body.name,
            body.provider_type,
            body.config,
            body.credentials,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(ProviderView::from(&provider))))
}

/// List a tenant's providers.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/providers", tag = "providers",
    security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id")),
    responses((status = 200, body = Vec<ProviderView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<Vec<ProviderView>>, ApiError> {
    let tenant = caller.tenant(&state, &tenant).await?;
    let providers = state.store.list_tenant_providers(tenant.id).await?;
    Ok(Json(providers.iter().map(ProviderView::from).collect()))
}

#[derive(Debug, Deserialize)]
pub struct ListAllQuery {
    tenant: Option<String>,
}

/// List every provider the caller can see, optionally of one tenant.
#[utoipa::path(get, path = "/v1/providers", tag = "providers", security(("bearer" = [])),
    params(("tenant" = Option<String>, Query, description = "tenant name or id")),
    responses((status = 200, body = Vec<ProviderView>)))]
pub async fn list_all(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListAllQuery>,
) -> Result<Json<Vec<ProviderView>>, ApiError> {
    let providers = match (&query.tenant, caller) {
        (Some(tenant), _) => {
            let tenant = caller.tenant(&state, tenant).await?;
            state.store.list_tenant_providers(tenant.id).await?
        }
        (None, Caller::Tenant(id)) => state.store.list_tenant_providers(id).await?,
        (None, Caller::Admin) => state.store.list_all_providers().await?,
    };
    Ok(Json(providers.iter().map(ProviderView::from).collect()))
}

/// Show one provider by name or id.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/providers/{provider}", tag = "providers",
    security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id"),
           ("provider" = String, Path, description = "provider name or id")),
    responses((status = 200, body = ProviderView), (status = 404, body = nimbus_types::api::ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, provider)): Path<(String, String)>,
) -> Result<Json<ProviderView>, ApiError> {
    let tenant = caller.tenant(&state, &tenant).await?;
    let provider = find(&state, tenant.id, &provider).await?;
    Ok(Json(ProviderView::from(&provider)))
}

/// Delete a provider that has no live machines.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/providers/{provider}", tag = "providers",
    security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id"),
           ("provider" = String, Path, description = "provider name or id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, body = nimbus_types::api::ErrorBody),
        (status = 409, description = "the provider still has live machines", body = nimbus_types::api::ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, provider)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.tenant(&state, &tenant).await?;
    let provider = find(&state, tenant.id, &provider).await?;
    state.fleet.delete_provider(tenant.id, provider.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
