//! `/repos/{name}/collaborators`: grant, list and revoke per-repository permissions.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::repos::find;
use crate::api::{ApiJson, Caller};
use crate::auth::Perm;
use crate::db;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/repos/{name}/collaborators", get(list))
        .route(
            "/repos/{name}/collaborators/{username}",
            put(grant).delete(revoke),
        )
}

#[derive(Serialize, ToSchema)]
pub struct Collaborator {
    username: String,
    permission: Perm,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    permission: Perm,
}

#[utoipa::path(get, path = "/api/v1/repos/{name}/collaborators", tag = "collaborators",
    params(("name" = String, Path)), responses((status = 200, body = Vec<Collaborator>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<Collaborator>>, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Admin)?;
    let mut out: Vec<Collaborator> = entry
        .meta()
        .collaborators
        .into_values()
        .map(|(username, permission)| Collaborator {
            username,
            permission,
        })
        .collect();
    out.sort_by(|a, b| a.username.cmp(&b.username));
    Ok(Json(out))
}

#[utoipa::path(put, path = "/api/v1/repos/{name}/collaborators/{username}", tag = "collaborators",
    params(("name" = String, Path), ("username" = String, Path)), request_body = Grant,
    responses((status = 200, body = Collaborator), (status = 404, body = crate::error::ErrorBody)))]
pub async fn grant(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, username)): Path<(String, String)>,
    ApiJson(body): ApiJson<Grant>,
) -> Result<Json<Collaborator>, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Admin)?;
    let user = db::user_by_name(&state.db, &username)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("username: no user '{username}'")))?;
    if user.is_owner != 0 {
        return Err(ApiError::invalid(
            "username",
            "the owner has admin access everywhere already",
        ));
    }
    db::upsert_collaborator(&state.db, &entry.id, &user.id, body.permission.as_str()).await?;
    entry.update_meta(|m| {
        m.collaborators
            .insert(user.id.clone(), (user.username.clone(), body.permission));
    });
    Ok(Json(Collaborator {
        username: user.username,
        permission: body.permission,
    }))
}

#[utoipa::path(delete, path = "/api/v1/repos/{name}/collaborators/{username}", tag = "collaborators",
    params(("name" = String, Path), ("username" = String, Path)), responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, username)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Admin)?;
    let user = db::user_by_name(&state.db, &username)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("username: no user '{username}'")))?;
    if !db::delete_collaborator(&state.db, &entry.id, &user.id).await? {
        return Err(ApiError::not_found(format!(
            "username: '{username}' is not a collaborator"
        )));
    }
    entry.update_meta(|m| {
        m.collaborators.remove(&user.id);
    });
    Ok(StatusCode::NO_CONTENT)
}
