//! `/user` (the caller) and `/users` (accounts for collaborators; the owner manages them).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{self, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::{ApiJson, Caller, iso8601};
use crate::auth::Scope;
use crate::error::ApiError;
use crate::{auth, db, names};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/user", get(me))
        .route("/users", get(list).post(create))
        .route("/users/{username}", routing::delete(delete))
}

#[derive(Serialize, ToSchema)]
pub struct User {
    username: String,
    owner: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_scope: Option<Scope>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    username: String,
    password: String,
}

#[utoipa::path(get, path = "/api/v1/user", tag = "users", responses((status = 200, body = User), (status = 401, body = crate::error::ErrorBody)))]
pub async fn me(caller: Caller) -> Result<Json<User>, ApiError> {
    let user = caller.user()?;
    Ok(Json(User {
        username: user.username.clone(),
        owner: user.is_owner,
        created_at: None,
        token_scope: caller.0.token_scope,
    }))
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users", responses((status = 200, body = Vec<User>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<User>>, ApiError> {
    caller.require_owner()?;
    let rows = db::users(&state.db).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| User {
                username: r.username,
                owner: r.is_owner != 0,
                created_at: Some(iso8601(r.created_at)),
                token_scope: None,
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = CreateUser,
    responses((status = 201, body = User), (status = 409, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    caller.require_owner()?;
    names::check_username(&body.username).map_err(|e| ApiError::invalid("username", e))?;
    if body.password.len() < 8 || body.password.len() > 1024 {
        return Err(ApiError::invalid(
            "password",
            "must be 8 to 1024 characters",
        ));
    }
    if body.password.starts_with(auth::TOKEN_PREFIX) {
        return Err(ApiError::invalid(
            "password",
            format!("must not start with '{}'", auth::TOKEN_PREFIX),
        ));
    }
    if db::user_by_name(&state.db, &body.username).await?.is_some() {
        return Err(ApiError::conflict(format!(
            "username: '{}' already exists",
            body.username
        )));
    }
    let password = body.password.clone();
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| crate::error::Error::Internal(e.to_string()))??;
    let row = db::insert_user(&state.db, &body.username, &hash, false).await?;
    Ok((
        StatusCode::CREATED,
        Json(User {
            username: row.username,
            owner: false,
            created_at: Some(iso8601(row.created_at)),
            token_scope: None,
        }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/users/{username}", tag = "users", params(("username" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_owner()?;
    let user = db::user_by_name(&state.db, &username)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("username: no user '{username}'")))?;
    if user.is_owner != 0 {
        return Err(ApiError::invalid("username", "the owner cannot be deleted"));
    }
    db::delete_user(&state.db, &user.id).await?;
    state.repos.forget_user(&user.id);
    state.auth.forget_all();
    Ok(StatusCode::NO_CONTENT)
}
