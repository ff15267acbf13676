//! `/tokens`: the caller's personal access tokens (read or write scope). The token value is
//! shown once at creation; only its SHA-256 is stored.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{self, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::{ApiJson, Caller, iso8601};
use crate::auth::{self, Scope};
use crate::db;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tokens", get(list).post(create))
        .route("/tokens/{id}", routing::delete(delete))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    scope: Scope,
}

#[derive(Serialize, ToSchema)]
pub struct Token {
    id: String,
    name: String,
    scope: Scope,
    created_at: String,
    /// only in the response to its creation
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

fn scope_of(s: &str) -> Scope {
    if s == "write" {
        Scope::Write
    } else {
        Scope::Read
    }
}

fn password_or_write_token(caller: &Caller) -> Result<&crate::auth::User, ApiError> {
    let user = caller.user()?;
    if caller.0.token_scope == Some(Scope::Read) {
        return Err(ApiError::forbidden(
            "a read-only token cannot manage tokens",
        ));
    }
    Ok(user)
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", responses((status = 200, body = Vec<Token>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Token>>, ApiError> {
    let user = caller.user()?;
    let rows = db::tokens_of(&state.db, &user.id).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| Token {
                scope: scope_of(&r.scope),
                id: r.id,
                name: r.name,
                created_at: iso8601(r.created_at),
                token: None,
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = Token), (status = 422, body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<Token>), ApiError> {
    let user = password_or_write_token(&caller)?;
    if body.name.trim().is_empty() || body.name.len() > 100 {
        return Err(ApiError::invalid("name", "must be 1 to 100 characters"));
    }
    let token = auth::new_token();
    let scope = match body.scope {
        Scope::Read => "read",
        Scope::Write => "write",
    };
    let row = db::insert_token(
        &state.db,
        &user.id,
        &body.name,
        scope,
        &auth::token_hash(&token),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Token {
            id: row.id,
            name: row.name,
            scope: body.scope,
            created_at: iso8601(row.created_at),
            token: Some(token),
        }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let user = password_or_write_token(&caller)?;
    if !db::delete_token(&state.db, &user.id, &id).await? {
        return Err(ApiError::not_found(format!("id: no token '{id}'")));
    }
    state.auth.forget_all();
    Ok(StatusCode::NO_CONTENT)
}
