//! A tenant's forge: its configuration (`GET`/`PUT /v1/tenants/{tenant}/forge`) and the endpoint
//! the forge delivers webhooks to (`POST /v1/tenants/{tenant}/forge/webhook`).
//!
//! The webhook route carries no bearer token: the forge signs each delivery with the tenant's
//! webhook secret, and [`nimbus_forge::WebhookReceiver`] checks that signature over the raw body
//! before anything else. An unknown tenant, a forge without a webhook secret and a bad signature
//! all answer the same 401, so the endpoint does not reveal which tenants exist. Its body limit
//! is its own ([`WEBHOOK_BODY_LIMIT`]): `workflow_job` payloads can be larger than API requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use nimbus_forge::nimbus_git;
use nimbus_forge::webhook::{Accepted, WebhookError, http_response};
use nimbus_forge::{Forge, WebhookReceiver, WebhookVerifier};
use nimbus_types::api::{ForgeView, SetForge};
use nimbus_types::{ForgeConfig, ForgeType, Secret, TenantId};
use serde::{Deserialize, Serialize};
use tower_http::limit::RequestBodyLimitLayer;

use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::http::json::ApiJson;

/// Largest webhook delivery accepted (GitHub caps payloads at 25 MB).
pub const WEBHOOK_BODY_LIMIT: usize = 25 * 1024 * 1024;

/// Configuration routes: bearer-authenticated, under the API's body limit.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/tenants/{tenant}/forge", get(show).put(set))
}

/// The webhook route, with its own body limit (the API's limit must not apply to it).
pub fn webhook_router() -> Router<AppState> {
    Router::new()
        .route("/v1/tenants/{tenant}/forge/webhook", post(webhook))
        .layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT))
        .layer(RequestBodyLimitLayer::new(WEBHOOK_BODY_LIMIT))
}

/// A tenant's forge as the API shows it: never its credentials.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForgeResponse {
    #[serde(flatten)]
    pub forge: ForgeView,
    /// Where the forge delivers webhooks, relative to the daemon's URL (GitHub, GitLab and
    /// Nimbus Git).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_path: Option<String>,
}

impl ForgeResponse {
    fn new(forge: &ForgeConfig) -> Self {
        ForgeResponse {
            forge: ForgeView::from(forge),
            webhook_path: matches!(
                forge.forge_type,
                ForgeType::Github | ForgeType::Gitlab | ForgeType::NimbusGit
            )
            .then(|| nimbus_forge::github::webhook_path(forge.tenant_id)),
        }
    }
}

/// Show the tenant's forge configuration (credentials are never returned) and its webhook path.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/forge", tag = "forge", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id")),
    responses((status = 200, body = ForgeResponse), (status = 404, body = nimbus_types::api::ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<ForgeResponse>, ApiError> {
    let tenant = caller.tenant(&state, &tenant).await?;
    let forge = state
        .store
        .get_tenant_forge_config(tenant.id)
        .await?
        .ok_or_else(|| ApiError::not_found("forge configuration"))?;
    Ok(Json(ForgeResponse::new(&forge)))
}

/// Set (replace) the tenant's forge configuration. It is checked before it is stored (422 names
/// the offending field); credentials are sealed at rest and never shown again.
///
/// GitHub: `config` is `{"api_url"?, "repo"?, "app_id"?, "installation_id"?}`, `credentials`
/// `{"private_key"? | "token"?, "webhook_secret"?}`. GitLab: `config` is `{"url"? (or
/// "api_url"), "runner_type"?, "group_id"?, "project_id"?, "projects"?}`, `credentials`
/// `{"token", "webhook_secret"?}`. Forgejo: `org` the organization (or the repository's owner),
/// `config` `{"url", "api_url"?, "repo"?, "registration"? (auto|direct|token),
/// "poll_interval_secs"?}`, `credentials` `{"token"}` (no webhook: demand is polled).
/// Nimbus Git: `config` is `{"url"}`, `credentials` `{"token", "webhook_secret"}` (an
/// owner API token; `nimbusd` runs the jobs itself).
#[utoipa::path(put, path = "/v1/tenants/{tenant}/forge", tag = "forge", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant name or id")),
    request_body = SetForge,
    responses(
        (status = 200, body = ForgeResponse),
        (status = 404, body = nimbus_types::api::ErrorBody),
        (status = 422, description = "invalid configuration; `field` names the setting", body = nimbus_types::api::ErrorBody),
    ))]
pub async fn set(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    ApiJson(body): ApiJson<SetForge>,
) -> Result<Json<ForgeResponse>, ApiError> {
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
        Some(_) => {
            return Err(ApiError::invalid_field(
                "credentials",
                "must be a JSON object",
            ));
        }
    };
    let forge = ForgeConfig {
        tenant_id: tenant.id,
        forge_type: body.forge_type,
        org: body.org,
        credentials,
        config,
        updated_at: nimbus_types::now(),
    };
    nimbus_fleet::forges::Forges::validate(&forge)
        .map_err(|err| ApiError::invalid_field(err.field, err.message))?;
    state.store.set_tenant_forge_config(&forge).await?;
    Ok(Json(ForgeResponse::new(&forge)))
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

/// Receive a forge webhook delivery (GitHub `workflow_job`, `ping`; GitLab `Job Hook`). No
/// bearer token: a GitHub delivery must carry a valid `X-Hub-Signature-256` made with the
/// tenant's webhook secret, a GitLab one the secret itself in `X-Gitlab-Token`. Replayed
/// deliveries (same `X-GitHub-Delivery` / `X-Gitlab-Event-UUID`) and events Nimbus does not act
/// on are accepted and ignored.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/forge/webhook", tag = "forge",
    params(("tenant" = String, Path, description = "tenant id")),
    request_body(content = Object, description = "the forge's event payload, signed", content_type = "application/json"),
    responses(
        (status = 200, description = "accepted: recorded, stale, replay, ping or ignored", body = Object),
        (status = 400, description = "signed but unreadable", body = nimbus_types::api::ErrorBody),
        (status = 401, description = "missing or wrong signature", body = nimbus_types::api::ErrorBody),
        (status = 413, description = "larger than 25 MiB"),
        (status = 503, description = "not recorded; the forge may redeliver", body = nimbus_types::api::ErrorBody),
    ))]
pub async fn webhook(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if headers.contains_key(nimbus_git::EVENT_HEADER) {
        return nimbus_git_webhook(&state, &tenant, &headers, &body).await;
    }
    let receiver = match tenant.parse::<TenantId>() {
        Ok(tenant_id) => state.webhooks.receiver(&state, tenant_id).await,
        Err(_) => Ok(None),
    };
    let result = match receiver {
        Ok(Some(receiver)) => receiver.receive(&headers, &body).await,
        // Answer exactly as a tenant whose secret does not match would.
        Ok(None) => Err(state
            .webhooks
            .decoy
            .verify(&headers, &body)
            .err()
            .unwrap_or(WebhookError::Unauthorized("signature does not match"))),
        Err(err) => {
            tracing::warn!(error = %err, "webhook delivery not recorded: forge lookup failed");
            Err(WebhookError::Unavailable(
                "the forge configuration cannot be read".into(),
            ))
        }
    };
    if let (Ok(Accepted::Recorded { .. }), Ok(tenant_id)) = (&result, tenant.parse::<TenantId>()) {
        state.fleet.demand_changed(tenant_id);
    }
    let (status, body) = http_response(&result);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body)).into_response()
}

/// A Nimbus Git delivery (`X-Nimbus-Event`): pushes start CI runs, cancel and re-run requests
/// act on them. Unknown tenants and tenants whose forge is not Nimbus Git answer like a wrong
/// signature.
async fn nimbus_git_webhook(
    state: &AppState,
    tenant: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let refuse = |error: WebhookError| {
        let (status, body) = http_response(&Err(error));
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
        (status, Json(body)).into_response()
    };
    let client = match tenant.parse::<TenantId>() {
        Ok(tenant_id) => match state.fleet.ci_client(tenant_id).await {
            Ok(Some(client)) => Some((tenant_id, client)),
            Ok(None) | Err(nimbus_fleet::Error::Conflict(_)) => None,
            Err(err) => {
                tracing::warn!(error = %err, "nimbus-git delivery not handled: forge lookup failed");
                return refuse(WebhookError::Unavailable(
                    "the forge configuration cannot be read".into(),
                ));
            }
        },
        Err(_) => None,
    };
    let Some((tenant_id, client)) = client else {
        let decoy = crate::secrets::new_token("decoy_");
        let error = nimbus_git::verify_delivery(&decoy, headers, body)
            .err()
            .unwrap_or(WebhookError::Unauthorized("signature does not match"));
        return refuse(error);
    };
    let delivery = match nimbus_git::verify_delivery(&client.config().webhook_secret, headers, body)
    {
        Ok(delivery) => delivery,
        Err(error) => {
            tracing::warn!(%error, tenant.id = %tenant_id, "nimbus-git delivery refused");
            return refuse(error);
        }
    };
    match state.fleet.ci_delivery(tenant_id, delivery).await {
        Ok(accepted) => (StatusCode::OK, Json(accepted)).into_response(),
        Err(err) => ApiError::from(err).into_response(),
    }
}

/// Each tenant's receiver and the forge client it was built from.
type ReceiverMap = HashMap<TenantId, (Arc<dyn Forge>, Arc<WebhookReceiver>)>;

/// One [`WebhookReceiver`] per tenant, kept while the tenant's forge client is the same one
/// (building the verifier per request would be wasted work; delivery ids live in the store).
pub struct WebhookReceivers {
    receivers: Mutex<ReceiverMap>,
    /// Verifies deliveries for tenants without a usable webhook secret, with a random secret
    /// nobody knows, so they are refused with the same answers as a wrong signature.
    decoy: nimbus_forge::github::GithubWebhooks,
}

impl Default for WebhookReceivers {
    fn default() -> Self {
        WebhookReceivers {
            receivers: Mutex::new(HashMap::new()),
            decoy: nimbus_forge::github::GithubWebhooks::new(crate::secrets::new_token("decoy_")),
        }
    }
}

impl WebhookReceivers {
    /// The tenant's receiver; `None` when the tenant has no GitHub or GitLab forge with a
    /// webhook secret.
    async fn receiver(
        &self,
        state: &AppState,
        tenant_id: TenantId,
    ) -> nimbus_fleet::Result<Option<Arc<WebhookReceiver>>> {
        let forge = match state.fleet.forges().get(tenant_id).await {
            Ok(Some(forge))
                if matches!(forge.forge_type(), ForgeType::Github | ForgeType::Gitlab) =>
            {
                forge
            }
            Ok(_) => {
                self.lock().remove(&tenant_id);
                return Ok(None);
            }
            // A stored configuration that no longer builds: nothing can verify the delivery.
            Err(nimbus_fleet::Error::Conflict(_)) => return Ok(None),
            Err(err) => return Err(err),
        };
        let mut receivers = self.lock();
        if let Some((cached, receiver)) = receivers.get(&tenant_id)
            && std::ptr::addr_eq(Arc::as_ptr(cached), Arc::as_ptr(&forge))
        {
            return Ok(Some(receiver.clone()));
        }
        let Some(verifier) = forge.webhook_verifier() else {
            receivers.remove(&tenant_id);
            return Ok(None);
        };
        let receiver = Arc::new(WebhookReceiver::new(
            tenant_id,
            verifier,
            state.demand.clone(),
        ));
        receivers.insert(tenant_id, (forge, receiver.clone()));
        Ok(Some(receiver))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReceiverMap> {
        self.receivers.lock().unwrap_or_else(|e| e.into_inner())
    }
}
