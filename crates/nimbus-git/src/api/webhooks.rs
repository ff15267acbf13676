//! `/repos/{name}/webhooks`: webhook subscriptions and their delivery log.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::repos::find;
use crate::api::{ApiJson, Caller, iso8601};
use crate::auth::Perm;
use crate::error::ApiError;
use crate::{db, events};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/repos/{name}/webhooks", get(list).post(create))
        .route("/repos/{name}/webhooks/{id}", get(show).delete(delete))
        .route("/repos/{name}/webhooks/{id}/deliveries", get(deliveries))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    url: String,
    /// HMAC-SHA256 key for `X-Nimbus-Signature-256`
    secret: String,
    /// event kinds to deliver; empty or absent means all
    #[serde(default)]
    events: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Webhook {
    id: String,
    url: String,
    events: Vec<String>,
    active: bool,
    created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct Delivery {
    id: String,
    event_id: String,
    /// pending, delivered or failed
    status: String,
    attempts: i64,
    last_status_code: Option<i64>,
    last_error: Option<String>,
    created_at: String,
    delivered_at: Option<String>,
    next_attempt_at: Option<String>,
}

fn view(row: db::WebhookRow) -> Webhook {
    Webhook {
        id: row.id,
        url: row.url,
        events: row
            .events
            .split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect(),
        active: row.active != 0,
        created_at: iso8601(row.created_at),
    }
}

#[utoipa::path(get, path = "/api/v1/repos/{name}/webhooks", tag = "webhooks", params(("name" = String, Path)),
    responses((status = 200, body = Vec<Webhook>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<Webhook>>, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Admin)?;
    Ok(Json(
        db::webhooks_of(&state.db, &entry.id)
            .await?
            .into_iter()
            .map(view)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/repos/{name}/webhooks", tag = "webhooks", params(("name" = String, Path)),
    request_body = CreateWebhook, responses((status = 201, body = Webhook), (status = 422, body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<CreateWebhook>,
) -> Result<(StatusCode, Json<Webhook>), ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Admin)?;
    if body.url.len() > 2000 {
        return Err(ApiError::invalid("url", "must be at most 2000 characters"));
    }
    crate::webhooks::check_target(&body.url, state.settings.webhooks.allow_private)
        .await
        .map_err(|e| ApiError::invalid("url", e))?;
    if body.secret.is_empty() || body.secret.len() > 256 {
        return Err(ApiError::invalid("secret", "must be 1 to 256 characters"));
    }
    if let Some(bad) = body
        .events
        .iter()
        .find(|e| !events::ALL.contains(&e.as_str()))
    {
        return Err(ApiError::invalid(
            "events",
            format!("unknown event '{bad}'; known: {}", events::ALL.join(", ")),
        ));
    }
    let row = db::insert_webhook(
        &state.db,
        &entry.id,
        &body.url,
        &body.secret,
        &body.events.join(","),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view(row))))
}

async fn hook_of(
    state: &AppState,
    caller: &Caller,
    name: &str,
    id: &str,
) -> Result<db::WebhookRow, ApiError> {
    let (entry, _) = find(state, caller, name, Perm::Admin)?;
    match db::webhook(&state.db, id).await? {
        Some(row) if row.repo_id == entry.id => Ok(row),
        _ => Err(ApiError::not_found(format!(
            "id: no webhook '{id}' on '{name}'"
        ))),
    }
}

#[utoipa::path(get, path = "/api/v1/repos/{name}/webhooks/{id}", tag = "webhooks",
    params(("name" = String, Path), ("id" = String, Path)), responses((status = 200, body = Webhook)))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Webhook>, ApiError> {
    Ok(Json(view(hook_of(&state, &caller, &name, &id).await?)))
}

#[utoipa::path(delete, path = "/api/v1/repos/{name}/webhooks/{id}", tag = "webhooks",
    params(("name" = String, Path), ("id" = String, Path)), responses((status = 204)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let hook = hook_of(&state, &caller, &name, &id).await?;
    db::delete_webhook(&state.db, &hook.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/repos/{name}/webhooks/{id}/deliveries", tag = "webhooks",
    params(("name" = String, Path), ("id" = String, Path)), responses((status = 200, body = Vec<Delivery>)))]
pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Vec<Delivery>>, ApiError> {
    let hook = hook_of(&state, &caller, &name, &id).await?;
    let rows = db::deliveries_of(&state.db, &hook.id).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| Delivery {
                next_attempt_at: (r.status == "pending").then(|| iso8601(r.next_attempt_at)),
                id: r.id,
                event_id: r.event_id,
                status: r.status,
                attempts: r.attempts,
                last_status_code: r.last_status_code,
                last_error: r.last_error,
                created_at: iso8601(r.created_at),
                delivered_at: r.delivered_at.map(iso8601),
            })
            .collect(),
    ))
}
