//! History pages: commits reachable from a revision, or those that changed a path (with git's
//! own history simplification, done by `git log` in a child process so its commit-graph and
//! Bloom filters apply), paginated.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use gix::bstr::ByteSlice;
use maud::{Markup, html};
use serde::Deserialize;

use crate::AppState;
use crate::web::*;

/// A path's history page gives up after this long (a path deep in a huge history).
const PATH_LOG_BUDGET: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
pub(super) struct LogQuery {
    page: Option<usize>,
}

struct Row {
    id: String,
    subject: String,
    author: String,
    time: i64,
}

pub(super) async fn log(
    state: State<AppState>,
    Path((name, rev)): Path<(String, String)>,
    query: Query<LogQuery>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    log_path(state, Path((name, rev, String::new())), query, headers).await
}

pub(super) async fn log_path(
    State(state): State<AppState>,
    Path((name, rev, path)): Path<(String, String, String)>,
    Query(query): Query<LogQuery>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let (entry, refs) = open(&state, &headers, &name).await?;
    let path = clean_path(&path)?;
    let page_no = query.page.unwrap_or(1).clamp(1, 100_000);
    let (repo_name, rev2) = (entry.name.clone(), rev.clone());
    let git_dir = entry.path.clone();
    let path_is_empty = path.is_empty();
    let (commit_id, mut commits, mut more) = with_repo(entry, move |repo, _| {
        let head = resolve_commit(repo, &rev2)?;
        if !path_is_empty {
            return Ok((head.id.to_string(), Vec::new(), false));
        }
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
            let subject = commit
                .message()
                .map(|m| m.summary().to_str_lossy().into_owned())
                .unwrap_or_default();
            let time = commit.author().map(|a| a.seconds()).unwrap_or_default();
            commits.push(Row {
                id: commit.id.to_string(),
                subject,
                author,
                time,
            });
        }
        Ok((head.id.to_string(), commits, more))
    })
    .await?;
    if !path.is_empty() {
        (commits, more) = path_log(&git_dir, &commit_id, &path, page_no).await?;
    }
    let etag = etag_for(&[
        "log",
        &repo_name,
        &commit_id,
        &rev,
        &path,
        &page_no.to_string(),
    ]);
    let at = At {
        rev: &rev,
        kind: "log",
        path: &path,
        refs: &refs,
    };
    let here = if path.is_empty() {
        format!("/{repo_name}/log/{}", enc_rev(&rev))
    } else {
        format!("/{repo_name}/log/{}/{}", enc_rev(&rev), enc(&path))
    };
    let body = page(
        &format!("history · {repo_name}"),
        Some(&Nav {
            repo: &repo_name,
            at: None,
        }),
        html! {
            div.bar {
                (switcher(&repo_name, &at))
                @if path.is_empty() { span { "Commits" } } @else { span { "History of " } (crumbs(&repo_name, &rev, &path)) }
            }
            @if commits.is_empty() { p.notice { "No commits changed this path." } }
            (commit_table(&repo_name, &commits))
            div.pager {
                @if page_no > 1 { a href={ (here) "?page=" (page_no - 1) } { "« Newer" } }
                @if more { a href={ (here) "?page=" (page_no + 1) } { "Older »" } }
            }
        },
    );
    Ok(respond(&headers, Some(etag), body))
}

fn commit_table(repo: &str, commits: &[Row]) -> Markup {
    html! {
        div.box {
            table.files {
                tbody {
                    @for row in commits {
                        tr {
                            td.name style="width:auto" { a href={ "/" (repo) "/commit/" (row.id) } { (row.subject) } }
                            td.hide-narrow.muted { (row.author) }
                            td.age.muted { (age(row.time)) }
                            td.size { a.mono href={ "/" (repo) "/commit/" (row.id) } { (short(&row.id)) } }
                        }
                    }
                }
            }
        }
    }
}

/// One page of `git log` for `path`; true when there are more.
async fn path_log(
    git_dir: &std::path::Path,
    commit: &str,
    path: &str,
    page_no: usize,
) -> Result<(Vec<Row>, bool), WebError> {
    let mut cmd = crate::refs::git_command(Some(git_dir));
    cmd.args([
        "log",
        "--format=%H%x1f%an%x1f%at%x1f%s%x1e",
        &format!("--skip={}", (page_no - 1) * LOG_PAGE),
        &format!("--max-count={}", LOG_PAGE + 1),
        commit,
        "--",
        path,
    ])
    .stdin(std::process::Stdio::null());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let output = tokio::time::timeout(PATH_LOG_BUDGET, cmd.output())
        .await
        .map_err(|_| {
            WebError(crate::error::ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "too_slow",
                format!(
                    "the history of '{path}' took more than {} seconds",
                    PATH_LOG_BUDGET.as_secs()
                ),
            ))
        })?
        .map_err(git_err)?;
    if !output.status.success() {
        return Err(git_err(String::from_utf8_lossy(&output.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut rows: Vec<Row> = text
        .split('\x1e')
        .filter_map(|record| {
            let mut fields = record.trim_start_matches('\n').split('\x1f');
            let id = fields.next()?.to_owned();
            let author = fields.next()?.to_owned();
            let time = fields.next()?.parse().ok()?;
            let subject = fields.next()?.to_owned();
            Some(Row {
                id,
                subject,
                author,
                time,
            })
        })
        .collect();
    let more = rows.len() > LOG_PAGE;
    rows.truncate(LOG_PAGE);
    Ok((rows, more))
}
