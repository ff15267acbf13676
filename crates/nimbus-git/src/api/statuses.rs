//! `/repos/{name}/statuses/{sha}`: commit statuses per context and their combined state.

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
use crate::ci::store::{self, StatusRow};
use crate::ci::{self, StatusState};
use crate::db::{new_id, now_ms};
use crate::error::{ApiError, Error};
use crate::repos::RepoEntry;

pub fn router() -> Router<AppState> {
    Router::new().route("/repos/{name}/statuses/{sha}", get(list).post(create))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStatus {
    state: StatusState,
    /// default "default"; at most 255 bytes
    context: Option<String>,
    /// at most 1000 bytes
    description: Option<String>,
    /// http or https, at most 2048 bytes
    target_url: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CommitStatus {
    id: String,
    sha: String,
    context: String,
    state: StatusState,
    description: Option<String>,
    target_url: Option<String>,
    creator: String,
    created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct CombinedStatus {
    sha: String,
    /// failure, error or cancelled if any is; else running or pending if any is; else success
    state: StatusState,
    /// the latest status of each context, sorted by context
    statuses: Vec<CommitStatus>,
}

pub(crate) fn view(row: StatusRow) -> CommitStatus {
    CommitStatus {
        state: StatusState::parse(&row.state).unwrap_or(StatusState::Error),
        id: row.id,
        sha: row.sha,
        context: row.context,
        description: row.description,
        target_url: row.target_url,
        creator: row.creator,
        created_at: iso8601(row.created_at),
    }
}

/// The full commit id in the path, checked to be a commit of the repository (404 if not).
pub(crate) async fn commit_sha(
    entry: &std::sync::Arc<RepoEntry>,
    sha: &str,
) -> Result<String, ApiError> {
    let full = ci::full_sha(sha).ok_or_else(|| {
        ApiError::invalid(
            "sha",
            format!(
                "'{}' is not a full 40-character commit id",
                sha.chars().take(64).collect::<String>()
            ),
        )
    })?;
    let repo_name = entry.name.clone();
    let entry = entry.clone();
    let id = full.clone();
    let exists = tokio::task::spawn_blocking(move || -> Result<bool, Error> {
        let repo = entry.gix()?;
        let oid = gix::ObjectId::from_hex(id.as_bytes()).map_err(Error::git)?;
        Ok(repo
            .try_find_object(oid)
            .map_err(Error::git)?
            .is_some_and(|object| object.kind == gix::object::Kind::Commit))
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))??;
    if !exists {
        return Err(ApiError::not_found(format!(
            "sha: no commit {full} in '{repo_name}'"
        )));
    }
    Ok(full)
}

#[utoipa::path(post, path = "/api/v1/repos/{name}/statuses/{sha}", tag = "statuses",
    params(("name" = String, Path), ("sha" = String, Path, description = "full commit id")),
    request_body = CreateStatus,
    responses((status = 201, body = CommitStatus), (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, sha)): Path<(String, String)>,
    ApiJson(body): ApiJson<CreateStatus>,
) -> Result<(StatusCode, Json<CommitStatus>), ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Write)?;
    let context = body.context.unwrap_or_else(|| "default".to_owned());
    ci::check_text("context", &context, 1, 255, false).map_err(bad)?;
    if let Some(description) = &body.description {
        ci::check_text("description", description, 0, 1000, true).map_err(bad)?;
    }
    if let Some(url) = &body.target_url {
        check_url(url)?;
    }
    let sha = commit_sha(&entry, &sha).await?;
    let row = StatusRow {
        id: new_id(),
        repo_id: entry.id.clone(),
        sha,
        context,
        state: body.state.as_str().to_owned(),
        description: body.description,
        target_url: body.target_url,
        creator: caller.0.name().to_owned(),
        created_at: now_ms(),
    };
    store::insert_status(&state.db, &row).await?;
    Ok((StatusCode::CREATED, Json(view(row))))
}

/// A 422 from a message that starts with the field name.
pub(crate) fn bad(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
}

fn check_url(url: &str) -> Result<(), ApiError> {
    if url.len() > 2048 {
        return Err(ApiError::invalid(
            "target_url",
            format!("must be at most 2048 bytes (got {})", url.len()),
        ));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ApiError::invalid("target_url", format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ApiError::invalid(
            "target_url",
            "must be an http or https URL with a host",
        ));
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/repos/{name}/statuses/{sha}", tag = "statuses",
    params(("name" = String, Path), ("sha" = String, Path, description = "full commit id")),
    responses((status = 200, body = CombinedStatus), (status = 404, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, sha)): Path<(String, String)>,
) -> Result<Json<CombinedStatus>, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Read)?;
    let sha = commit_sha(&entry, &sha).await?;
    let rows = store::latest_statuses(&state.db, &entry.id, &sha).await?;
    let statuses: Vec<CommitStatus> = rows.into_iter().map(view).collect();
    let states: Vec<StatusState> = statuses.iter().map(|s| s.state).collect();
    Ok(Json(CombinedStatus {
        sha,
        state: ci::combine(&states),
        statuses,
    }))
}
