//! `/repos/{name}/compare/{base}...{head}`: the paths that differ between two commits' trees
//! (how nimbusd applies a workflow's `paths` filters to a push).

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::api::Caller;
use crate::api::contents::resolve;
use crate::api::repos::find;
use crate::auth::Perm;
use crate::error::{ApiError, Error};

/// Most paths listed; a larger difference is cut (and says so).
pub const MAX_FILES: usize = 10_000;

pub fn router() -> Router<AppState> {
    Router::new().route("/repos/{name}/compare/{range}", get(compare))
}

#[derive(Serialize, ToSchema)]
pub struct Comparison {
    base: String,
    head: String,
    /// Every path added, deleted or modified, in tree order (renames are a deletion and an
    /// addition).
    files: Vec<String>,
    /// More than `MAX_FILES` paths differ; `files` holds the first ones.
    truncated: bool,
}

#[utoipa::path(get, path = "/api/v1/repos/{name}/compare/{range}", tag = "contents",
    params(("name" = String, Path), ("range" = String, Path, description = "BASE...HEAD (commit ids, branches or tags)")),
    responses((status = 200, body = Comparison), (status = 404, body = crate::error::ErrorBody),
        (status = 422, description = "the range is not BASE...HEAD", body = crate::error::ErrorBody)))]
pub async fn compare(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, range)): Path<(String, String)>,
) -> Result<Json<Comparison>, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Read)?;
    let Some((base, head)) = range.split_once("...") else {
        return Err(ApiError::invalid("range", "must be BASE...HEAD"));
    };
    if base.is_empty() || head.is_empty() {
        return Err(ApiError::invalid("range", "must be BASE...HEAD"));
    }
    let (base, head) = (base.to_owned(), head.to_owned());
    tokio::task::spawn_blocking(move || {
        let repo = entry.gix()?;
        let base_commit = resolve(&repo, &base)?;
        let head_commit = resolve(&repo, &head)?;
        let git = |e: &dyn std::fmt::Display| ApiError::from(Error::Internal(e.to_string()));
        let old = base_commit.tree().map_err(|e| git(&e))?;
        let new = head_commit.tree().map_err(|e| git(&e))?;
        let mut recorder = gix::diff::tree::Recorder::default();
        gix::diff::tree(
            gix::objs::TreeRefIter::from_bytes(&old.data, old.id.kind()),
            gix::objs::TreeRefIter::from_bytes(&new.data, new.id.kind()),
            &mut gix::diff::tree::State::default(),
            &repo.objects,
            &mut recorder,
        )
        .map_err(|e| git(&e))?;
        let mut files = Vec::new();
        let mut truncated = false;
        for change in recorder.records {
            use gix::diff::tree::recorder::Change;
            let (path, mode) = match change {
                Change::Addition {
                    path, entry_mode, ..
                }
                | Change::Deletion {
                    path, entry_mode, ..
                }
                | Change::Modification {
                    path, entry_mode, ..
                } => (path, entry_mode),
            };
            if mode.is_tree() {
                continue;
            }
            if files.len() == MAX_FILES {
                truncated = true;
                break;
            }
            files.push(path.to_string());
        }
        Ok(Comparison {
            base: base_commit.id.to_string(),
            head: head_commit.id.to_string(),
            files,
            truncated,
        })
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
    .map(Json)
}
