//! File pages: a blob at a revision. Code gets line numbers with anchors (`#L10`, and a marked
//! range with `?lines=10-20#L10`) and server-side highlighting; Markdown is rendered (`?plain=1`
//! shows its source); images are shown through the raw route; binary and large files get a
//! notice with raw and download links instead of their bytes.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;
use crate::web::highlight::escape_into;
use crate::web::markdown::{self, IMAGE_EXTENSIONS, LinkBase};
use crate::web::tree::is_markdown;
use crate::web::*;

/// Files larger than this are not shown inline.
pub(super) const BLOB_LIMIT: u64 = 1 << 20;

#[derive(Deserialize)]
pub(super) struct BlobQuery {
    plain: Option<String>,
    lines: Option<String>,
}

enum Content {
    /// One HTML fragment per line.
    Code(Arc<Vec<String>>),
    Markdown(String),
    Image,
    Binary,
    TooLarge,
    Link(String),
    Submodule(String),
}

/// `10-20` or `10` → an inclusive range of lines.
fn parse_lines(lines: Option<&str>) -> Result<Option<(usize, usize)>, WebError> {
    let Some(lines) = lines.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let bad = || {
        WebError(ApiError::bad_request(format!(
            "lines: expected a line number or a range like 10-20, got '{lines}'"
        )))
    };
    let (a, b) = lines.split_once('-').unwrap_or((lines, lines));
    let a: usize = a.trim_start_matches('L').parse().map_err(|_| bad())?;
    let b: usize = b.trim_start_matches('L').parse().map_err(|_| bad())?;
    if a == 0 || b == 0 {
        return Err(bad());
    }
    Ok(Some((a.min(b), a.max(b))))
}

pub(super) async fn blob(
    State(state): State<AppState>,
    Path((name, rev, path)): Path<(String, String, String)>,
    Query(query): Query<BlobQuery>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let (entry, refs) = open(&state, &headers, &name).await?;
    let path = clean_path(&path)?;
    let selected = parse_lines(query.lines.as_deref())?;
    let plain = query.plain.is_some_and(|p| p != "0");
    let (repo_name, rev2, path2) = (entry.name.clone(), rev.clone(), path.clone());
    let (state2, repo_name2) = (state.clone(), repo_name.clone());
    let found = with_repo(entry, move |repo, _| {
        let commit = resolve_commit(repo, &rev2)?;
        let not_found = || WebError(ApiError::not_found(format!("no file '{path2}' at {rev2}")));
        let tree = commit.tree().map_err(git_err)?;
        let file = tree
            .lookup_entry_by_path(&path2)
            .map_err(git_err)?
            .ok_or_else(not_found)?;
        let commit_id = commit.id.to_string();
        let mode = file.mode();
        if mode.is_tree() {
            return Ok(None);
        }
        if mode.is_commit() {
            return Ok(Some((
                commit_id,
                0,
                Content::Submodule(file.object_id().to_string()),
            )));
        }
        let header = repo.find_header(file.object_id()).map_err(git_err)?;
        let size = header.size();
        let ext = path2
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        if mode.is_link() {
            let object = file.object().map_err(git_err)?;
            let target = String::from_utf8_lossy(&object.data).into_owned();
            return Ok(Some((commit_id, size, Content::Link(target))));
        }
        if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            return Ok(Some((commit_id, size, Content::Image)));
        }
        if size > BLOB_LIMIT {
            return Ok(Some((commit_id, size, Content::TooLarge)));
        }
        let object = file.object().map_err(git_err)?;
        let data = &object.data;
        if data[..data.len().min(8000)].contains(&0) {
            return Ok(Some((commit_id, size, Content::Binary)));
        }
        let text = String::from_utf8_lossy(data);
        if is_markdown(&path2) && !plain {
            let dir = path2.rsplit_once('/').map_or("", |(d, _)| d);
            let html = markdown::render(
                &text,
                &LinkBase {
                    repo: &repo_name2,
                    rev: &rev2,
                    dir,
                },
            );
            return Ok(Some((commit_id, size, Content::Markdown(html))));
        }
        let content = match state2.web.highlights.lines(object.id, &path2, &text) {
            Some(lines) => Content::Code(lines),
            None => {
                let lines = text
                    .lines()
                    .map(|line| {
                        let mut html = String::with_capacity(line.len());
                        escape_into(&mut html, line);
                        html
                    })
                    .collect();
                Content::Code(Arc::new(lines))
            }
        };
        Ok(Some((commit_id, size, content)))
    })
    .await?;
    let Some((commit_id, size, content)) = found else {
        return Ok(Redirect::to(&format!(
            "/{repo_name}/tree/{}/{}",
            enc_rev(&rev),
            enc(&path)
        ))
        .into_response());
    };
    let etag = etag_for(&[
        "blob",
        &repo_name,
        &commit_id,
        &rev,
        &path,
        if plain { "plain" } else { "" },
        query.lines.as_deref().unwrap_or(""),
    ]);
    let at = At {
        rev: &rev,
        kind: "blob",
        path: &path,
        refs: &refs,
    };
    let raw = format!("/{repo_name}/raw/{}/{}", enc_rev(&rev), enc(&path));
    let body = page(
        &format!("{path} · {repo_name}"),
        Some(&Nav {
            repo: &repo_name,
            at: None,
        }),
        html! {
            div.bar { (switcher(&repo_name, &at)) (crumbs(&repo_name, &rev, &path)) }
            div.box {
                div.head {
                    @if let Content::Code(lines) = &content { span { (plural(lines.len() as i64, "line", "lines")) } }
                    span.muted { (human_size(size)) }
                    span.muted { "at " a.mono href={ "/" (repo_name) "/commit/" (commit_id) } { (short(&commit_id)) } }
                    a href=(raw) { "Raw" }
                    a href={ (raw) "?download=1" } { "Download" }
                    a href={ "/" (repo_name) "/blame/" (enc_rev(&rev)) "/" (enc(&path)) } { "Blame" }
                    a href={ "/" (repo_name) "/log/" (enc_rev(&rev)) "/" (enc(&path)) } { "History" }
                    @if is_markdown(&path) {
                        @if plain { a href={ "/" (repo_name) "/blob/" (enc_rev(&rev)) "/" (enc(&path)) } { "Rendered" } }
                        @else { a href={ "/" (repo_name) "/blob/" (enc_rev(&rev)) "/" (enc(&path)) "?plain=1" } { "Source" } }
                    }
                }
                (render_content(&content, &raw, size, selected))
            }
        },
    );
    Ok(respond(&headers, Some(etag), body))
}

fn render_content(
    content: &Content,
    raw: &str,
    size: u64,
    selected: Option<(usize, usize)>,
) -> Markup {
    html! {
        @match content {
            Content::Code(lines) => (code_table(lines, selected)),
            Content::Markdown(html) => div.markdown { (PreEscaped(html)) },
            Content::Image => img.shown src=(raw) alt="image file";
            Content::Binary => p.notice { "Binary file (" (human_size(size)) "), not shown. " a href={ (raw) "?download=1" } { "Download it" } "." },
            Content::TooLarge => p.notice {
                "This file is " (human_size(size)) ", more than the " (human_size(BLOB_LIMIT)) " a page shows. "
                a href=(raw) { "View it raw" } " or " a href={ (raw) "?download=1" } { "download it" } "."
            },
            Content::Link(target) => p.notice { "Symbolic link to " code { (target) } },
            Content::Submodule(id) => p.notice { "Submodule at commit " code { (id) } },
        }
    }
}

/// Lines with numbered anchors; `selected` lines are marked.
pub(super) fn code_table(lines: &[String], selected: Option<(usize, usize)>) -> Markup {
    let is_selected = |n: usize| selected.is_some_and(|(a, b)| (a..=b).contains(&n));
    html! {
        div.scroll {
            table.code {
                tbody {
                    @for (idx, line) in lines.iter().enumerate() {
                        @let n = idx + 1;
                        tr id={ "L" (n) } class=[is_selected(n).then_some("sel")] {
                            td.ln { a href={ "#L" (n) } { (n) } }
                            td { (PreEscaped(line)) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ranges() {
        assert_eq!(parse_lines(None).ok(), Some(None));
        assert_eq!(parse_lines(Some("10-20")).ok(), Some(Some((10, 20))));
        assert_eq!(parse_lines(Some("L20-L10")).ok(), Some(Some((10, 20))));
        assert_eq!(parse_lines(Some("7")).ok(), Some(Some((7, 7))));
        for bad in ["0", "x", "1-", "-3"] {
            assert!(parse_lines(Some(bad)).is_err(), "{bad}");
        }
    }
}
