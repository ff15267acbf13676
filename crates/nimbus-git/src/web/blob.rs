//! File pages: a blob at a revision.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::html;

use crate::AppState;
use crate::error::ApiError;
use crate::web::*;

pub(super) async fn blob(
    State(state): State<AppState>,
    Path((name, rev, path)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let principal = caller(&state, &headers).await?;
    let entry = visible(&state, &principal, &name)?;
    let (repo_name, rev2, path2) = (entry.name.clone(), rev.clone(), path.clone());
    let (commit_id, size, text) = with_repo(entry, move |repo| {
        let commit = resolve_commit(repo, &rev2)?;
        let not_found = || WebError(ApiError::not_found(format!("no file '{path2}' at {rev2}")));
        let tree = commit.tree().map_err(git_err)?;
        let file = tree
            .lookup_entry_by_path(&path2)
            .map_err(git_err)?
            .ok_or_else(not_found)?;
        if !file.mode().is_blob() && !file.mode().is_link() {
            return Err(not_found());
        }
        let object = file.object().map_err(git_err)?;
        let size = object.data.len();
        let data = &object.data[..size.min(BLOB_LIMIT)];
        let text = if data.contains(&0) {
            None
        } else {
            Some(String::from_utf8_lossy(data).into_owned())
        };
        Ok((commit.id.to_string(), size, text))
    })
    .await?;
    let etag = etag_for(&["blob", &repo_name, &commit_id, &rev, &path]);
    let body = page(
        &format!("{repo_name}/{path}"),
        Some(&repo_name),
        html! {
            h2.mono { (path) }
            p.muted { (size) " bytes at " a.mono href={ "/" (repo_name) "/commit/" (commit_id) } { (&commit_id[..12]) } }
            @match &text {
                Some(text) => {
                    pre.blob {
                        @for (idx, line) in text.lines().enumerate() {
                            span.muted { (format!("{:>5} ", idx + 1)) } (line) "\n"
                        }
                    }
                    @if size > BLOB_LIMIT { p.muted { "(truncated at " (BLOB_LIMIT) " bytes)" } }
                }
                None => p { "Binary file, " (size) " bytes." },
            }
        },
    );
    Ok(respond(&headers, Some(etag), body))
}
