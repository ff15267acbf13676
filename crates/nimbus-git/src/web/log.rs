//! History pages: commits reachable from a revision, paginated.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use gix::bstr::ByteSlice;
use maud::html;
use serde::Deserialize;

use crate::AppState;
use crate::web::*;

#[derive(Deserialize)]
pub struct LogQuery {
    page: Option<usize>,
}

pub(super) async fn log(
    State(state): State<AppState>,
    Path((name, rev)): Path<(String, String)>,
    Query(query): Query<LogQuery>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let principal = caller(&state, &headers).await?;
    let entry = visible(&state, &principal, &name)?;
    let page_no = query.page.unwrap_or(1).clamp(1, 100_000);
    let (repo_name, rev2) = (entry.name.clone(), rev.clone());
    let (commit_id, commits, more) = with_repo(entry, move |repo| {
        let head = resolve_commit(repo, &rev2)?;
        let walk = repo
            .rev_walk([head.id])
            .sorting(gix::revision::walk::Sorting::ByCommitTime(
                Default::default(),
            ))
            .all()
            .map_err(git_err)?;
        let mut commits = Vec::new();
        let mut more = false;
        for (idx, info) in walk.enumerate().skip((page_no - 1) * LOG_PAGE) {
            if idx >= page_no * LOG_PAGE {
                more = true;
                break;
            }
            let info = info.map_err(git_err)?;
            let commit = info.object().map_err(git_err)?;
            let author = commit
                .author()
                .map(|a| a.name.to_str_lossy().into_owned())
                .unwrap_or_default();
            let summary = commit
                .message()
                .map(|m| m.summary().to_str_lossy().into_owned())
                .unwrap_or_default();
            let seconds = commit.time().map(|t| t.seconds).unwrap_or_default();
            commits.push((commit.id.to_string(), summary, author, seconds));
        }
        Ok((head.id.to_string(), commits, more))
    })
    .await?;
    let etag = etag_for(&["log", &repo_name, &commit_id, &rev, &page_no.to_string()]);
    let body = page(
        &format!("log · {repo_name}"),
        Some(&repo_name),
        html! {
            h2 { "Log of " span.mono { (rev) } }
            table {
                @for (id, summary, author, seconds) in &commits {
                    tr {
                        td.mono { a href={ "/" (repo_name) "/commit/" (id) } { (&id[..12]) } }
                        td { (summary) }
                        td.muted { (author) }
                        td.muted { (when(*seconds)) }
                    }
                }
            }
            p {
                @if page_no > 1 { a href={ "/" (repo_name) "/log/" (enc(&rev)) "?page=" (page_no - 1) } { "« newer" } " " }
                @if more { a href={ "/" (repo_name) "/log/" (enc(&rev)) "?page=" (page_no + 1) } { "older »" } }
            }
        },
    );
    Ok(respond(&headers, Some(etag), body))
}
