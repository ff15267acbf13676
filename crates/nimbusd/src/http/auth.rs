//! Bearer authentication: the admin token (from the config directory) or a tenant token (its
//! SHA-256 in the store). A tenant caller sees only its own tenant; anything else is a 404, so
//! existence is not leaked.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use nimbus_types::{Tenant, TenantId};

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::secrets::sha256;

/// Who is calling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Tenant(TenantId),
}

impl Caller {
    /// The tenant the caller is confined to; `None` for the admin.
    pub fn scope(&self) -> Option<TenantId> {
        match self {
            Caller::Admin => None,
            Caller::Tenant(id) => Some(*id),
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant(_) => Err(ApiError::forbidden("this operation needs the admin token")),
        }
    }

    /// Resolves a tenant given by name or id, as this caller may see it.
    pub async fn tenant(&self, state: &AppState, name_or_id: &str) -> Result<Tenant, ApiError> {
        let found = match name_or_id.parse::<TenantId>() {
            Ok(id) => state.store.get_tenant(id).await,
            Err(_) => state.store.get_tenant_by_name(name_or_id).await,
        };
        let tenant = found.map_err(|err| match err {
            nimbus_store::Error::NotFound { .. } => ApiError::not_found("tenant"),
            other => other.into(),
        })?;
        match self {
            Caller::Tenant(own) if *own != tenant.id => Err(ApiError::not_found("tenant")),
            _ => Ok(tenant),
        }
    }

    /// The tenant a request acts for: the named one, or the caller's own when unnamed.
    pub async fn tenant_or_own(
        &self,
        state: &AppState,
        name_or_id: Option<&str>,
    ) -> Result<Tenant, ApiError> {
        match (name_or_id, self) {
            (Some(name), _) => self.tenant(state, name).await,
            (None, Caller::Tenant(id)) => Ok(state.store.get_tenant(*id).await?),
            (None, Caller::Admin) => Err(ApiError::invalid_field(
                "tenant",
                "is required with the admin token",
            )),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("missing bearer token (Authorization: Bearer …)")
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("malformed Authorization header; expected `Bearer <token>`")
            })?;
        let digest = sha256(token.as_bytes());
        // Comparing digests: timing reveals nothing about the token itself.
        if digest == state.admin_token_sha256 {
            return Ok(Caller::Admin);
        }
        match state.store.tenant_for_token(&digest).await? {
            Some(tenant_id) => Ok(Caller::Tenant(tenant_id)),
            None => Err(ApiError::unauthorized("invalid token")),
        }
    }
}
