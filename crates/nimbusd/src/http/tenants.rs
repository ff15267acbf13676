//! Tenants, their tokens and their forge configuration.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use nimbus_types::api::{CreateTenant, ForgeView, SetForge, TenantToken};
use nimbus_types::{ForgeConfig, Secret, Tenant, validate_name};

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
        .route("/v1/tenants/{tenant}/forge", get(show_forge).put(set_forge))
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

/// Show the tenant's forge configuration (credentials are never returned).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/forge", tag = "forge", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id")),
    responses((status = 200, body = ForgeView), (status = 404, body = nimbus_types::api::ErrorBody)))]
pub async fn show_forge(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<ForgeView>, ApiError> {
    let tenant = caller.tenant(&state, &tenant).await?;
    let forge = state
        .store
        .get_tenant_forge_config(tenant.id)
        .await?
        .ok_or_else(|| ApiError::not_found("forge configuration"))?;
    Ok(Json(ForgeView::from(&forge)))
}

/// Set (replace) the tenant's forge configuration. Credentials are sealed at rest.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/forge", tag = "forge", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id")),
    request_body = SetForge,
    responses((status = 200, body = ForgeView), (status = 422, body = nimbus_types::api::ErrorBody)))]
pub async fn set_forge(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    ApiJson(body): ApiJson<SetForge>,
) -> Result<Json<ForgeView>, ApiError> {
    let tenant = caller.tenant(&state, &tenant).await?;
    validate_org(&body.org)?;
    let config = match body.config {
        None | Some(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
        Some(value @ serde_json::Value::Object(_)) => value,
        Some(_) => return Err(ApiError::invalid_field("config", "must be a JSON object")),
    };
    let credentials = match body.credentials {
        None | Some(serde_json::Value::Null) => None,
        Some(value @ serde_json::Value::Object(_)) => Some(Secret::new(value.to_string())),
        Some(_) => return Err(ApiError::invalid_field("credentials", "must be a JSON object")),
    };
    let forge = ForgeConfig {
        tenant_id: tenant.id,
        forge_type: body.forge_type,
        org: body.org,
        credentials,
        config,
        updated_at: nimbus_types::now(),
    };
    state.store.set_tenant_forge_config(&forge).await?;
    Ok(Json(ForgeView::from(&forge)))
}

/// Organization, group or owner names: what GitHub, GitLab (with subgroups) and Forgejo accept.
fn validate_org(org: &str) -> Result<(), ApiError> {
    let ok = !org.is_empty()
        && org.len() <= 255
        && !org.starts_with(['/', '.', '-'])
        && !org.contains("..")
        && org
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            "org",
            "must be 1-255 characters of letters, digits, '-', '_', '.' and '/'",
        ))
    }
}
