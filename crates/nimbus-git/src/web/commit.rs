//! Commit pages: message, author, parents, a diffstat with per-file `+/-`, and the diff against
//! the first parent with context that plain links widen (`?context=N`).
//!
//! The page is built from sections (`header`, `diffstat`, `file_diffs`) so further sections
//! (CI runs of the commit, …) slot in without touching the diff code.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use gix::bstr::ByteSlice;
use maud::{Markup, html};
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;
use crate::web::*;

const DIFF_FILE_LIMIT: usize = 256 << 10;
const DIFF_TOTAL_LIMIT: usize = 1 << 20;
const DIFF_MAX_FILES: usize = 300;
const DEFAULT_CONTEXT: usize = 3;
const MAX_CONTEXT: usize = 100_000;

#[derive(Deserialize)]
pub(super) struct CommitQuery {
    context: Option<String>,
}

pub(super) struct FileDiff {
    pub path: String,
    pub status: &'static str,
    pub added: usize,
    pub removed: usize,
    /// Unified diff text; None when the file is binary or too large to show.
    pub text: Option<String>,
    pub binary: bool,
}

pub(super) struct CommitView {
    pub id: String,
    pub message: String,
    pub author: String,
    pub author_time: i64,
    pub committer: String,
    pub parents: Vec<String>,
    pub files: Vec<FileDiff>,
    /// True when files or hunks were left out (too many, too large).
    pub capped: bool,
}

fn diff_commit(
    repo: &gix::Repository,
    commit: &gix::Commit<'_>,
    context: usize,
) -> Result<(Vec<FileDiff>, bool), WebError> {
    let new_tree = commit.tree().map_err(git_err)?;
    let old_tree = match commit.parent_ids().next() {
        Some(parent) => repo
            .find_commit(parent)
            .map_err(git_err)?
            .tree()
            .map_err(git_err)?,
        None => repo.empty_tree(),
    };
    let mut recorder = gix::diff::tree::Recorder::default();
    gix::diff::tree(
        gix::objs::TreeRefIter::from_bytes(&old_tree.data, old_tree.id.kind()),
        gix::objs::TreeRefIter::from_bytes(&new_tree.data, new_tree.id.kind()),
        &mut gix::diff::tree::State::default(),
        &repo.objects,
        &mut recorder,
    )
    .map_err(git_err)?;
    let mut files = Vec::new();
    let mut total = 0usize;
    let mut capped = false;
    let load = |id: gix::ObjectId| -> Option<Vec<u8>> {
        repo.find_object(id).ok().map(|o| o.data.clone())
    };
    for change in recorder.records {
        use gix::diff::tree::recorder::Change;
        let (path, status, old, new, is_blob) = match change {
            Change::Addition {
                entry_mode,
                oid,
                path,
                ..
            } => (path, "added", None, Some(oid), entry_mode.is_blob()),
            Change::Deletion {
                entry_mode,
                oid,
                path,
                ..
            } => (path, "deleted", Some(oid), None, entry_mode.is_blob()),
            Change::Modification {
                previous_oid,
                oid,
                path,
                entry_mode,
                ..
            } => (
                path,
                "modified",
                Some(previous_oid),
                Some(oid),
                entry_mode.is_blob(),
            ),
        };
        if !is_blob {
            continue;
        }
        if files.len() >= DIFF_MAX_FILES {
            capped = true;
            break;
        }
        let path = path.to_str_lossy().into_owned();
        let old = old.and_then(load).unwrap_or_default();
        let new = new.and_then(load).unwrap_or_default();
        let binary =
            old[..old.len().min(8000)].contains(&0) || new[..new.len().min(8000)].contains(&0);
        let mut file = FileDiff {
            path,
            status,
            added: 0,
            removed: 0,
            text: None,
            binary,
        };
        if !binary && old.len() + new.len() <= DIFF_FILE_LIMIT * 16 {
            let old = String::from_utf8_lossy(&old);
            let new = String::from_utf8_lossy(&new);
            let diff = similar::TextDiff::from_lines(old.as_ref(), new.as_ref());
            for op in diff.ops() {
                for change in diff.iter_changes(op) {
                    match change.tag() {
                        similar::ChangeTag::Insert => file.added += 1,
                        similar::ChangeTag::Delete => file.removed += 1,
                        similar::ChangeTag::Equal => {}
                    }
                }
            }
            if total < DIFF_TOTAL_LIMIT && old.len() + new.len() <= DIFF_FILE_LIMIT {
                let rendered = diff.unified_diff().context_radius(context).to_string();
                total += rendered.len();
                file.text = Some(rendered);
            } else {
                capped = true;
            }
        }
        files.push(file);
    }
    Ok((files, capped))
}

fn parse_context(context: Option<&str>) -> Result<usize, WebError> {
    match context {
        None | Some("") => Ok(DEFAULT_CONTEXT),
        Some("all") => Ok(MAX_CONTEXT),
        Some(n) => n.parse::<usize>().map(|n| n.min(MAX_CONTEXT)).map_err(|_| {
            WebError(ApiError::bad_request(format!(
                "context: expected a number of lines or 'all', got '{n}'"
            )))
        }),
    }
}

pub(super) async fn commit(
    State(state): State<AppState>,
    Path((name, rev)): Path<(String, String)>,
    Query(query): Query<CommitQuery>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let context = parse_context(query.context.as_deref())?;
    let (entry, _refs) = open(&state, &headers, &name).await?;
    let (repo_name, rev2) = (entry.name.clone(), rev.clone());
    let ci_entry = entry.clone();
    let view = with_repo(entry, move |repo, _| {
        let commit = resolve_commit(repo, &rev2)?;
        let message = commit.message_raw_sloppy().to_str_lossy().into_owned();
        let author = commit.author().map_err(git_err)?;
        let committer = commit
            .committer()
            .map(|c| c.name.to_str_lossy().into_owned())
            .unwrap_or_default();
        let parents: Vec<String> = commit.parent_ids().map(|p| p.to_string()).collect();
        let (files, capped) = diff_commit(repo, &commit, context)?;
        Ok(CommitView {
            id: commit.id.to_string(),
            message,
            author: format!("{} <{}>", author.name, author.email),
            author_time: author.seconds(),
            committer,
            parents,
            files,
            capped,
        })
    })
    .await?;
    let checks = crate::web::ci::commit_checks(&state, &ci_entry, &view.id).await?;
    let etag = etag_for(&[
        "commit",
        &repo_name,
        &view.id,
        &context.to_string(),
        &checks.version,
    ]);
    let body = page(
        &format!("{} · {repo_name}", short(&view.id)),
        Some(&Nav {
            repo: &repo_name,
            at: None,
        }),
        html! {
            (header(&repo_name, &view))
            (checks.markup)
            (diffstat(&view))
            (file_diffs(&repo_name, &view, context))
        },
    );
    Ok(respond(&headers, Some(etag), body))
}

/// Subject, message body, author, committer and parents.
pub(super) fn header(repo: &str, view: &CommitView) -> Markup {
    let (subject, body) = view
        .message
        .split_once('\n')
        .map_or((view.message.as_str(), ""), |(s, b)| (s, b.trim()));
    html! {
        h1 { (subject) }
        @if !body.is_empty() { pre { (body) } }
        p.muted {
            (view.author) " authored " (age(view.author_time))
            @if !view.author.starts_with(&format!("{} <", view.committer)) { " · committed by " (view.committer) }
        }
        p.muted {
            "Commit " span.mono { (view.id) }
            @if !view.parents.is_empty() {
                " · " (if view.parents.len() == 1 { "parent" } else { "parents" }) " "
                @for parent in &view.parents { a.mono href={ "/" (repo) "/commit/" (parent) } { (short(parent)) } " " }
            }
            " · " a href={ "/" (repo) "/tree/" (view.id) } { "Browse files" }
        }
    }
}

/// "3 files changed, 10 insertions(+), 2 deletions(-)" and a row per file.
pub(super) fn diffstat(view: &CommitView) -> Markup {
    let added: usize = view.files.iter().map(|f| f.added).sum();
    let removed: usize = view.files.iter().map(|f| f.removed).sum();
    html! {
        h2 {
            (plural(view.files.len() as i64, "file changed", "files changed")) ", "
            span.plus { (plural(added as i64, "insertion(+)", "insertions(+)")) } ", "
            span.minus { (plural(removed as i64, "deletion(-)", "deletions(-)")) }
        }
        div.box {
            table.files {
                tbody {
                    @for (idx, file) in view.files.iter().enumerate() {
                        tr {
                            td.name style="width:auto" { a.mono href={ "#diff-" (idx) } { (file.path) } " " span.muted { (file.status) } }
                            td.size {
                                @if file.binary { span.muted { "binary" } }
                                @else {
                                    span.plus { "+" (file.added) } " " span.minus { "−" (file.removed) } " "
                                    (bars(file.added, file.removed))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Five blocks split between additions and deletions, like git's diffstat graph.
fn bars(added: usize, removed: usize) -> Markup {
    let total = added + removed;
    let (plus, minus) = if total == 0 {
        (0, 0)
    } else if total <= 5 {
        (added, removed)
    } else {
        let plus = (added * 5).div_ceil(total).min(5);
        (plus, 5 - plus)
    };
    html! {
        span.bars aria-hidden="true" {
            span.plus { (("■").repeat(plus)) }
            span.minus { (("■").repeat(minus)) }
            span.muted { (("□").repeat(5 - plus - minus)) }
        }
    }
}

/// Each file's diff, with links that reload the page with more context.
pub(super) fn file_diffs(repo: &str, view: &CommitView, context: usize) -> Markup {
    let more = (context * 4).clamp(10, MAX_CONTEXT);
    html! {
        @for (idx, file) in view.files.iter().enumerate() {
            div.box id={ "diff-" (idx) } {
                div.head {
                    strong.mono { (file.path) }
                    span.muted { (file.status) }
                    @if file.status != "deleted" {
                        a href={ "/" (repo) "/blob/" (view.id) "/" (enc(&file.path)) } { "View file" }
                    }
                    @if file.text.is_some() && context < MAX_CONTEXT {
                        a href={ "?context=" (more) "#diff-" (idx) } { "More context" }
                        a href={ "?context=all#diff-" (idx) } { "Whole file" }
                    }
                }
                @match &file.text {
                    Some(text) => pre style="margin:0;border:0;border-radius:0" {
                        @for line in text.lines() {
                            @if line.starts_with("@@") { span.hunk { (line) } "\n" }
                            @else if line.starts_with("+++") || line.starts_with("---") { }
                            @else if line.starts_with('+') { span.add { (line) } "\n" }
                            @else if line.starts_with('-') { span.del { (line) } "\n" }
                            @else { (line) "\n" }
                        }
                    },
                    None => p.muted style="margin:.5rem .75rem" {
                        @if file.binary { "Binary file, not shown." } @else { "Diff not shown: the change is too large." }
                    },
                }
            }
        }
        @if view.capped { p.notice { "Some diffs are not shown: the commit changes too many files or too many lines." } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_values() {
        assert_eq!(parse_context(None).ok(), Some(DEFAULT_CONTEXT));
        assert_eq!(parse_context(Some("10")).ok(), Some(10));
        assert_eq!(parse_context(Some("all")).ok(), Some(MAX_CONTEXT));
        assert_eq!(parse_context(Some("99999999")).ok(), Some(MAX_CONTEXT));
        assert!(parse_context(Some("lots")).is_err());
    }
}
