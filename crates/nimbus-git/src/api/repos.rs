//! `/repos`: create, list, show, update, delete repositories, and list their events.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::api::{ApiJson, Caller, iso8601};
use crate::auth::Perm;
use crate::error::{ApiError, Error};
use crate::repos::RepoEntry;
use crate::{db, events, names, refs};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/repos", get(list).post(create))
        .route("/repos/{name}", get(show).patch(update).delete(delete))
        .route("/repos/{name}/events", get(events))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRepo {
    /// letters, digits, '-', '_', '.'; becomes the URL
    name: String,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRepo {
    private: Option<bool>,
    description: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Repo {
    id: String,
    name: String,
    private: bool,
    description: String,
    clone_url: String,
    web_url: String,
    created_at: String,
    /// the caller's permission
    permission: Perm,
    maintenance_runs: u64,
}

pub(crate) fn view(state: &AppState, entry: &RepoEntry, permission: Perm) -> Repo {
    let meta = entry.meta();
    Repo {
        id: entry.id.clone(),
        name: entry.name.clone(),
        private: meta.private,
        description: meta.description,
        clone_url: format!("{}/{}.git", state.base_url, entry.name),
        web_url: format!("{}/{}", state.base_url, entry.name),
        created_at: iso8601(meta.created_at),
        permission,
        maintenance_runs: entry.maintenance.runs(),
    }
}

/// The repository if the caller may see it with at least `need`; 404 when they may not see it.
pub(crate) fn find(
    state: &AppState,
    caller: &Caller,
    name: &str,
    need: Perm,
) -> Result<(Arc<RepoEntry>, Perm), ApiError> {
    let entry = state
        .repos
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("repository '{name}' not found")))?;
    match entry.permission(&caller.0) {
        None => Err(if caller.0.user.is_none() {
            ApiError::unauthorized()
        } else {
            ApiError::not_found(format!("repository '{name}' not found"))
        }),
        Some(_) if caller.0.user.is_none() && need > Perm::Read => Err(ApiError::unauthorized()),
        Some(perm) if perm < need => Err(ApiError::forbidden(format!(
            "needs {} access to '{name}', caller has {}",
            need.as_str(),
            perm.as_str()
        ))),
        Some(perm) => Ok((entry, perm)),
    }
}

#[utoipa::path(get, path = "/api/v1/repos", tag = "repos", responses((status = 200, body = Vec<Repo>)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Json<Vec<Repo>> {
    Json(
        state
            .repos
            .all()
            .iter()
            .filter_map(|e| e.permission(&caller.0).map(|p| view(&state, e, p)))
            .collect(),
    )
}

#[utoipa::path(post, path = "/api/v1/repos", tag = "repos", request_body = CreateRepo,
    responses((status = 201, body = Repo), (status = 409, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateRepo>,
) -> Result<(StatusCode, Json<Repo>), ApiError> {
    caller.require_owner()?;
    names::check_repo_name(&body.name).map_err(|e| ApiError::invalid("name", e))?;
    if body.description.len() > 1000 {
        return Err(ApiError::invalid(
            "description",
            "must be at most 1000 bytes",
        ));
    }
    if state.repos.get(&body.name).is_some() {
        return Err(ApiError::conflict(format!(
            "name: repository '{}' already exists",
            body.name
        )));
    }
    let path = state.repos.path_for(&body.name);
    if path.exists() {
        return Err(ApiError::conflict(format!(
            "name: a directory for '{}' already exists on disk",
            body.name
        )));
    }
    let init_path = path.clone();
    tokio::task::spawn_blocking(move || init_bare(&init_path))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    let url = format!("{}/{}", state.base_url, body.name);
    let event = events::repository_created(&body.name, body.private, &url);
    let row = match db::insert_repo(
        &state.db,
        &body.name,
        body.private,
        &body.description,
        event,
    )
    .await
    {
        Ok(row) => row,
        Err(err) => {
            let _ = std::fs::remove_dir_all(&path);
            if let Error::Db(sqlx::Error::Database(db_err)) = &err
                && db_err.is_unique_violation()
            {
                return Err(ApiError::conflict(format!(
                    "name: repository '{}' already exists",
                    body.name
                )));
            }
            return Err(err.into());
        }
    };
    let entry = state.repos.insert(&row, &[]);
    state.webhook_wake.notify_one();
    tracing::info!(repo.name = %row.name, repo.private = body.private, "repository created");
    Ok((StatusCode::CREATED, Json(view(&state, &entry, Perm::Admin))))
}

fn init_bare(path: &std::path::Path) -> Result<(), Error> {
    let out = refs::git_command(None)
        .args(["init", "--bare", "-q", "-b", "main"])
        .arg(path)
        .output()?;
    if !out.status.success() {
        return Err(Error::Git(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    for kv in refs::GIT_CONFIG {
        let (key, value) = kv.split_once('=').expect("key=value");
        let out = refs::git_command(Some(path))
            .args(["config", key, value])
            .output()?;
        if !out.status.success() {
            return Err(Error::Git(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/repos/{name}", tag = "repos", params(("name" = String, Path)),
    responses((status = 200, body = Repo), (status = 404, body = crate::error::ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Repo>, ApiError> {
    let (entry, perm) = find(&state, &caller, &name, Perm::Read)?;
    Ok(Json(view(&state, &entry, perm)))
}

#[utoipa::path(patch, path = "/api/v1/repos/{name}", tag = "repos", params(("name" = String, Path)), request_body = UpdateRepo,
    responses((status = 200, body = Repo), (status = 403, body = crate::error::ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<UpdateRepo>,
) -> Result<Json<Repo>, ApiError> {
    let (entry, perm) = find(&state, &caller, &name, Perm::Admin)?;
    let meta = entry.meta();
    let private = body.private.unwrap_or(meta.private);
    let description = body.description.unwrap_or(meta.description);
    if description.len() > 1000 {
        return Err(ApiError::invalid(
            "description",
            "must be at most 1000 bytes",
        ));
    }
    db::update_repo(&state.db, &entry.id, private, &description).await?;
    entry.update_meta(|m| {
        m.private = private;
        m.description = description;
    });
    Ok(Json(view(&state, &entry, perm)))
}

#[utoipa::path(delete, path = "/api/v1/repos/{name}", tag = "repos", params(("name" = String, Path)),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_owner()?;
    let (entry, _) = find(&state, &caller, &name, Perm::Admin)?;
    let _push = entry.push_lock.lock().await;
    db::delete_repo(&state.db, &entry.id).await?;
    state.repos.remove(&entry.name);
    let path = entry.path.clone();
    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(path))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(Error::from)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
pub struct EventQuery {
    /// at most this many, newest first (default 50, max 500)
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct Event {
    id: String,
    kind: String,
    payload: serde_json::Value,
    created_at: String,
}

#[utoipa::path(get, path = "/api/v1/repos/{name}/events", tag = "repos", params(("name" = String, Path), EventQuery),
    responses((status = 200, body = Vec<Event>)))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<EventQuery>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Read)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 500"));
    }
    let rows = db::events_of(&state.db, &entry.id, limit).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| Event {
                id: r.id,
                kind: r.kind,
                payload: serde_json::from_str(&r.payload).unwrap_or_default(),
                created_at: iso8601(r.created_at),
            })
            .collect(),
    ))
}
