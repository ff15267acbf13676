//! `/repos/{name}/contents[/{path}]?ref=REV`: directories and files at a revision, read
//! through the repository's `gix` handle (how nimbusd reads `.nimbus/workflows/`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use gix::bstr::ByteSlice;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::api::Caller;
use crate::api::repos::find;
use crate::auth::Perm;
use crate::error::{ApiError, Error};

/// Files above this size are refused with 413 `too_large`.
pub const FILE_LIMIT: u64 = 10 << 20;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/repos/{name}/contents", get(root))
        .route("/repos/{name}/contents/{*path}", get(show))
}

#[derive(Deserialize, IntoParams)]
pub struct ContentsQuery {
    /// a commit id, branch or tag (default HEAD)
    #[serde(rename = "ref")]
    rev: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DirEntry {
    name: String,
    path: String,
    /// file, dir, symlink or submodule
    #[serde(rename = "type")]
    kind: &'static str,
    /// bytes; 0 for anything but files
    size: u64,
}

/// A directory (`entries`) or a file (`size`, `sha`, `encoding`, `content`). A symlink is
/// returned like a file whose content is its target; a submodule has only `sha` (the commit).
#[derive(Serialize, ToSchema)]
pub struct Contents {
    /// dir, file, symlink or submodule
    #[serde(rename = "type")]
    kind: &'static str,
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<Vec<DirEntry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    /// the blob id (the commit id for a submodule)
    #[serde(skip_serializing_if = "Option::is_none")]
    sha: Option<String>,
    /// always base64
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/repos/{name}/contents", tag = "contents",
    params(("name" = String, Path), ContentsQuery),
    responses((status = 200, body = Contents), (status = 404, body = crate::error::ErrorBody)))]
pub async fn root(
    state: State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    query: Query<ContentsQuery>,
) -> Result<Json<Contents>, ApiError> {
    show(state, caller, Path((name, String::new())), query).await
}

#[utoipa::path(get, path = "/api/v1/repos/{name}/contents/{path}", tag = "contents",
    params(("name" = String, Path), ("path" = String, Path, description = "a path inside the tree"), ContentsQuery),
    responses((status = 200, body = Contents), (status = 404, body = crate::error::ErrorBody),
        (status = 413, description = "the file is larger than 10 MiB", body = crate::error::ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, path)): Path<(String, String)>,
    Query(query): Query<ContentsQuery>,
) -> Result<Json<Contents>, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Read)?;
    let rev = query.rev.unwrap_or_else(|| "HEAD".to_owned());
    let path = path.trim_matches('/').to_owned();
    if path.len() > 4096 {
        return Err(ApiError::invalid("path", "must be at most 4096 bytes"));
    }
    tokio::task::spawn_blocking(move || {
        let repo = entry.gix()?;
        read(&repo, &rev, &path)
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
    .map(Json)
}

/// The commit `rev` names, or 404 naming the ref.
pub(crate) fn resolve<'r>(
    repo: &'r gix::Repository,
    rev: &str,
) -> Result<gix::Commit<'r>, ApiError> {
    let not_found = || ApiError::not_found(format!("ref: no commit '{rev}' in this repository"));
    if rev.is_empty()
        || rev.len() > 256
        || rev.starts_with('-')
        || rev.contains("..")
        || rev.contains('@')
        || rev.contains(':')
    {
        return Err(not_found());
    }
    let id = repo.rev_parse_single(rev).map_err(|_| not_found())?;
    id.object()
        .map_err(|_| not_found())?
        .peel_to_commit()
        .map_err(|_| not_found())
}

fn git(err: impl std::fmt::Display) -> ApiError {
    Error::git(err).into()
}

fn read(repo: &gix::Repository, rev: &str, path: &str) -> Result<Contents, ApiError> {
    let commit = resolve(repo, rev)?;
    let root = commit.tree().map_err(git)?;
    let no_path = || ApiError::not_found(format!("path: no '{path}' at {rev}"));
    if path.is_empty() {
        return dir(repo, root, path);
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(no_path());
    }
    let item = root
        .lookup_entry_by_path(path)
        .map_err(git)?
        .ok_or_else(no_path)?;
    let mode = item.mode();
    if mode.is_tree() {
        return dir(repo, item.object().map_err(git)?.into_tree(), path);
    }
    if mode.is_commit() {
        return Ok(Contents {
            kind: "submodule",
            path: path.to_owned(),
            entries: None,
            size: Some(0),
            sha: Some(item.oid().to_string()),
            encoding: None,
            content: None,
        });
    }
    let size = repo.find_header(item.oid()).map_err(git)?.size();
    if size > FILE_LIMIT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("path: '{path}' is {size} bytes, over the {FILE_LIMIT}-byte (10 MiB) limit"),
        ));
    }
    let blob = item.object().map_err(git)?;
    Ok(Contents {
        kind: if mode.is_link() { "symlink" } else { "file" },
        path: path.to_owned(),
        entries: None,
        size: Some(size),
        sha: Some(item.oid().to_string()),
        encoding: Some("base64"),
        content: Some(base64::engine::general_purpose::STANDARD.encode(&blob.data)),
    })
}

fn dir(repo: &gix::Repository, tree: gix::Tree<'_>, path: &str) -> Result<Contents, ApiError> {
    let mut entries = Vec::new();
    for item in tree.iter() {
        let item = item.map_err(git)?;
        let name = item.filename().to_str_lossy().into_owned();
        let mode = item.mode();
        let (kind, size) = if mode.is_tree() {
            ("dir", 0)
        } else if mode.is_commit() {
            ("submodule", 0)
        } else if mode.is_link() {
            ("symlink", 0)
        } else {
            ("file", repo.find_header(item.oid()).map_err(git)?.size())
        };
        entries.push(DirEntry {
            path: if path.is_empty() {
                name.clone()
            } else {
                format!("{path}/{name}")
            },
            name,
            kind,
            size,
        });
    }
    Ok(Contents {
        kind: "dir",
        path: path.to_owned(),
        entries: Some(entries),
        size: None,
        sha: None,
        encoding: None,
        content: None,
    })
}
