//! Tree pages: the entries of a directory at a revision.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use gix::bstr::ByteSlice;
use maud::html;

use crate::AppState;
use crate::error::ApiError;
use crate::web::*;

pub(super) struct TreeRow {
    pub(super) name: String,
    pub(super) is_dir: bool,
    mode: String,
}

pub(super) fn list_tree(
    repo: &gix::Repository,
    commit: &gix::Commit<'_>,
    path: &str,
) -> Result<Option<Vec<TreeRow>>, WebError> {
    let root = commit.tree().map_err(git_err)?;
    let tree = if path.is_empty() {
        root
    } else {
        let Some(entry) = root.lookup_entry_by_path(path).map_err(git_err)? else {
            return Ok(None);
        };
        if !entry.mode().is_tree() {
            return Ok(None);
        }
        entry.object().map_err(git_err)?.into_tree()
    };
    let _ = repo;
    let mut rows = Vec::new();
    for entry in tree.iter() {
        let entry = entry.map_err(git_err)?;
        rows.push(TreeRow {
            name: entry.filename().to_str_lossy().into_owned(),
            is_dir: entry.mode().is_tree(),
            mode: format!("{:o}", entry.mode().value()),
        });
    }
    rows.sort_by(|a, b| b.is_dir.cmp(&a.is_dir).then(a.name.cmp(&b.name)));
    Ok(Some(rows))
}

pub(super) fn tree_table(repo: &str, rev: &str, path: &str, rows: &[TreeRow]) -> Markup {
    let base = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    html! {
        table {
            @for row in rows {
                tr {
                    td.mono.muted { (row.mode) }
                    td.mono {
                        @if row.is_dir {
                            a href={ "/" (repo) "/tree/" (enc(rev)) "/" (enc(&base)) (enc(&row.name)) } { (row.name) "/" }
                        } @else {
                            a href={ "/" (repo) "/blob/" (enc(rev)) "/" (enc(&base)) (enc(&row.name)) } { (row.name) }
                        }
                    }
                }
            }
        }
    }
}

pub(super) async fn tree_root(
    state: State<AppState>,
    Path((name, rev)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    tree(state, Path((name, rev, String::new())), headers).await
}

pub(super) async fn tree(
    State(state): State<AppState>,
    Path((name, rev, path)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let principal = caller(&state, &headers).await?;
    let entry = visible(&state, &principal, &name)?;
    let path = path.trim_matches('/').to_owned();
    let (repo_name, rev2, path2) = (entry.name.clone(), rev.clone(), path.clone());
    let (commit_id, rows) = with_repo(entry, move |repo| {
        let commit = resolve_commit(repo, &rev2)?;
        let rows = list_tree(repo, &commit, &path2)?.ok_or_else(|| {
            WebError(ApiError::not_found(format!(
                "no directory '{path2}' at {rev2}"
            )))
        })?;
        Ok((commit.id.to_string(), rows))
    })
    .await?;
    let etag = etag_for(&["tree", &repo_name, &commit_id, &rev, &path]);
    let body = page(
        &format!("{repo_name}/{path}"),
        Some(&repo_name),
        html! {
            h2.mono { a href={ "/" (repo_name) "/tree/" (enc(&rev)) } { (repo_name) } "/" (path) }
            p.muted { "at " a.mono href={ "/" (repo_name) "/commit/" (commit_id) } { (&commit_id[..12]) } }
            (tree_table(&repo_name, &rev, &path, &rows))
        },
    );
    Ok(respond(&headers, Some(etag), body))
}
