//! Tree pages: a directory at a revision, each entry with its type, size and the last commit
//! that touched it (see `crate::lastcommit`), and the directory's README rendered below.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use gix::bstr::{BString, ByteSlice};
use maud::{Markup, PreEscaped, html};

use crate::AppState;
use crate::error::ApiError;
use crate::lastcommit::{CommitInfo, EntryKind, TreeEntry};
use crate::repos::RepoEntry;
use crate::web::markdown::{self, LinkBase};
use crate::web::*;

/// How long a tree page may spend finding last commits before it shows what it has.
const LAST_COMMIT_BUDGET: Duration = Duration::from_secs(5);
/// READMEs larger than this are not rendered on tree pages.
const README_LIMIT: usize = 512 << 10;

pub(super) struct Listing {
    pub commit: Arc<CommitInfo>,
    pub entries: Arc<Vec<TreeEntry>>,
    pub last: Vec<Option<Arc<CommitInfo>>>,
    pub complete: bool,
    /// (file name, text) of the directory's README.
    pub readme: Option<(String, String)>,
}

/// Read a directory for its page (blocking): entries with sizes (cached per tree id), last
/// commits (cached per commit and directory), and the README. `None` when `path` is no directory.
pub(super) fn listing(
    repo: &gix::Repository,
    entry: &RepoEntry,
    commit: &gix::Commit<'_>,
    path: &str,
) -> Result<Option<Listing>, WebError> {
    let root = commit.tree_id().map_err(git_err)?.detach();
    let tree_id = if path.is_empty() {
        root
    } else {
        let tree = commit.tree().map_err(git_err)?;
        match tree.lookup_entry_by_path(path).map_err(git_err)? {
            Some(e) if e.mode().is_tree() => e.object_id(),
            _ => return Ok(None),
        }
    };
    let entries = entry.history.entries(repo, tree_id)?;
    let names: Vec<BString> = entries.iter().map(|e| e.name.clone()).collect();
    let deadline = Instant::now() + LAST_COMMIT_BUDGET;
    let last = entry
        .history
        .last_commits(repo, commit.id, path, &names, deadline)?;
    let readme = entries
        .iter()
        .filter(|e| e.kind == EntryKind::File && is_readme(&e.name.to_str_lossy()))
        .min_by_key(|e| readme_rank(&e.name.to_str_lossy()))
        .and_then(|e| {
            let blob = repo.find_object(e.id).ok()?;
            let data = &blob.data[..blob.data.len().min(README_LIMIT)];
            let text = std::str::from_utf8(data).ok()?.to_owned();
            Some((e.name.to_str_lossy().into_owned(), text))
        });
    Ok(Some(Listing {
        commit: Arc::new(crate::lastcommit::commit_info(repo, commit.id)?),
        entries,
        last: last.entries.clone(),
        complete: last.complete,
        readme,
    }))
}

fn is_readme(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == "readme" || lower.starts_with("readme.")
}

/// Prefer README.md over README.txt over the rest.
fn readme_rank(name: &str) -> u8 {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".md") || lower.ends_with(".markdown") {
        0
    } else if lower == "readme" || lower.ends_with(".txt") {
        1
    } else {
        2
    }
}

pub(super) fn is_markdown(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.ends_with(".md") || lower.ends_with(".markdown") || lower.ends_with(".mdown")
}

/// The file table and README of a listing.
pub(super) fn render_listing(repo: &str, rev: &str, path: &str, listing: &Listing) -> Markup {
    let base = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let commit = &listing.commit;
    let id = commit.id.to_string();
    html! {
        div.box {
            div.head {
                span { (commit.author) }
                a href={ "/" (repo) "/commit/" (id) } { (commit.subject) }
                span.muted { a.mono href={ "/" (repo) "/commit/" (id) } { (short(&id)) } " · " (age(commit.time)) }
                a href={ "/" (repo) "/log/" (enc_rev(rev)) @if !path.is_empty() { "/" (enc(path)) } } { "History" }
            }
            table.files {
                thead.hide-narrow style="display:none" {
                    tr { th { "Name" } th.msg { "Last commit" } th { "Age" } th { "Size" } }
                }
                tbody {
                    @if !path.is_empty() {
                        @let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                        tr {
                            td.name colspan="4" {
                                a href={ "/" (repo) "/tree/" (enc_rev(rev)) @if !parent.is_empty() { "/" (enc(parent)) } } { span.kind aria-hidden="true" { "↰" } ".." }
                            }
                        }
                    }
                    @for (idx, entry) in listing.entries.iter().enumerate() {
                        @let name = entry.name.to_str_lossy();
                        @let full = format!("{base}{name}");
                        tr {
                            td.name {
                                @match entry.kind {
                                    EntryKind::Dir => a href={ "/" (repo) "/tree/" (enc_rev(rev)) "/" (enc(&full)) } { span.kind title="directory" { "▸" } (name) "/" },
                                    EntryKind::Submodule => span { span.kind title="submodule" { "◆" } (name) " @ " span.mono.muted { (short(&entry.id.to_string())) } },
                                    EntryKind::Link => a href={ "/" (repo) "/blob/" (enc_rev(rev)) "/" (enc(&full)) } { span.kind title="symbolic link" { "↪" } (name) },
                                    EntryKind::File | EntryKind::Exec => a href={ "/" (repo) "/blob/" (enc_rev(rev)) "/" (enc(&full)) } {
                                        span.kind title=(if entry.kind == EntryKind::Exec { "executable file" } else { "file" }) { "·" } (name)
                                    },
                                }
                            }
                            @match listing.last.get(idx).and_then(|l| l.as_ref()) {
                                Some(last) => {
                                    td.msg { a href={ "/" (repo) "/commit/" (last.id.to_string()) } title=(last.author) { (last.subject) } }
                                    td.age.muted { (age(last.time)) }
                                }
                                None => { td.msg { } td.age.muted { } }
                            }
                            td.size.muted { @if let Some(size) = entry.size { (human_size(size)) } }
                        }
                    }
                }
            }
        }
        @if !listing.complete {
            p.notice { "Finding the last commit of every entry took too long; the missing ones are left blank. Reload in a moment: the answer is cached once complete." }
        }
        @if let Some((name, text)) = &listing.readme {
            div.box {
                div.head { strong { (name) } }
                @if is_markdown(name) {
                    div.markdown { (PreEscaped(markdown::render(text, &LinkBase { repo, rev, dir: path }))) }
                } @else {
                    pre style="border:0;margin:0" { (text) }
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
    let (entry, refs) = open(&state, &headers, &name).await?;
    let path = clean_path(&path)?;
    let (repo_name, rev2, path2) = (entry.name.clone(), rev.clone(), path.clone());
    let found = with_repo(entry, move |repo, entry| {
        let commit = resolve_commit(repo, &rev2)?;
        if let Some(listing) = listing(repo, entry, &commit, &path2)? {
            return Ok(Ok(listing));
        }
        // A file's tree URL leads to its page.
        let tree = commit.tree().map_err(git_err)?;
        match tree.lookup_entry_by_path(&path2).map_err(git_err)? {
            Some(_) => Ok(Err(())),
            None => Err(WebError(ApiError::not_found(format!(
                "no directory '{path2}' at {rev2}"
            )))),
        }
    })
    .await?;
    let listing = match found {
        Ok(listing) => listing,
        Err(()) => {
            return Ok(Redirect::to(&format!(
                "/{repo_name}/blob/{}/{}",
                enc_rev(&rev),
                enc(&path)
            ))
            .into_response());
        }
    };
    let commit_id = listing.commit.id.to_string();
    let etag = etag_for(&["tree", &repo_name, &commit_id, &rev, &path]);
    let at = At {
        rev: &rev,
        kind: "tree",
        path: &path,
        refs: &refs,
    };
    let body = page(
        &if path.is_empty() {
            repo_name.clone()
        } else {
            format!("{path} · {repo_name}")
        },
        Some(&Nav {
            repo: &repo_name,
            at: None,
        }),
        html! {
            div.bar { (switcher(&repo_name, &at)) (crumbs(&repo_name, &rev, &path)) }
            (render_listing(&repo_name, &rev, &path, &listing))
        },
    );
    Ok(respond(&headers, Some(etag), body))
}
