//! Commit pages: message, parents and the diff against the first parent.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use gix::bstr::ByteSlice;
use maud::html;

use crate::AppState;
use crate::web::*;

struct FileDiff {
    path: String,
    status: &'static str,
    /// None when the file is binary or too large to show
    text: Option<String>,
}

fn diff_commit(
    repo: &gix::Repository,
    commit: &gix::Commit<'_>,
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
        let mut text = None;
        if total < DIFF_TOTAL_LIMIT {
            let old = old.and_then(load).unwrap_or_default();
            let new = new.and_then(load).unwrap_or_default();
            if old.len() + new.len() <= DIFF_FILE_LIMIT && !old.contains(&0) && !new.contains(&0) {
                let old = String::from_utf8_lossy(&old);
                let new = String::from_utf8_lossy(&new);
                let diff = similar::TextDiff::from_lines(old.as_ref(), new.as_ref());
                let rendered = diff.unified_diff().context_radius(3).to_string();
                total += rendered.len();
                text = Some(rendered);
            }
        } else {
            capped = true;
        }
        files.push(FileDiff { path, status, text });
    }
    Ok((files, capped))
}

pub(super) async fn commit(
    State(state): State<AppState>,
    Path((name, rev)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let principal = caller(&state, &headers).await?;
    let entry = visible(&state, &principal, &name)?;
    let (repo_name, rev2) = (entry.name.clone(), rev.clone());
    let (id, message, author, seconds, parents, files, capped) = with_repo(entry, move |repo| {
        let commit = resolve_commit(repo, &rev2)?;
        let message = commit.message_raw_sloppy().to_str_lossy().into_owned();
        let author = commit
            .author()
            .map(|a| format!("{} <{}>", a.name, a.email))
            .unwrap_or_default();
        let seconds = commit.time().map(|t| t.seconds).unwrap_or_default();
        let parents: Vec<String> = commit.parent_ids().map(|p| p.to_string()).collect();
        let (files, capped) = diff_commit(repo, &commit)?;
        Ok((
            commit.id.to_string(),
            message,
            author,
            seconds,
            parents,
            files,
            capped,
        ))
    })
    .await?;
    let etag = etag_for(&["commit", &repo_name, &id]);
    let body = page(
        &format!("{} · {repo_name}", &id[..12]),
        Some(&repo_name),
        html! {
            h2 { "Commit " span.mono { (id) } }
            p.muted { (author) " · " (when(seconds)) }
            p.muted {
                "Parents: "
                @for parent in &parents { a.mono href={ "/" (repo_name) "/commit/" (parent) } { (&parent[..12]) } " " }
                " · " a href={ "/" (repo_name) "/tree/" (id) } { "browse files" }
            }
            pre { (message) }
            h3 { (files.len()) " files changed" }
            @for file in &files {
                h4.mono { (file.status) " " (file.path) }
                @match &file.text {
                    Some(text) => pre {
                        @for line in text.lines() {
                            @if line.starts_with("@@") { span.hunk { (line) } "\n" }
                            @else if line.starts_with('+') { span.add { (line) } "\n" }
                            @else if line.starts_with('-') { span.del { (line) } "\n" }
                            @else { (line) "\n" }
                        }
                    },
                    None => p.muted { "Diff not shown (binary or too large)." },
                }
            }
            @if capped { p.muted { "Diff truncated: too many or too large changes." } }
        },
    );
    Ok(respond(&headers, Some(etag), body))
}
