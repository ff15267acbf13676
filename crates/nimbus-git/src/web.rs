//! The server-rendered web UI: repository list, tree, blob, log, commit with diff, refs.
//! No JavaScript; reads go through the repository's cached `gix` handle on the blocking pool.
//! Pages whose content is fixed by a commit id carry an ETag derived from it.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use gix::bstr::ByteSlice;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::auth::{Perm, Principal};
use crate::error::ApiError;
use crate::repos::RepoEntry;

const LOG_PAGE: usize = 50;
const BLOB_LIMIT: usize = 1 << 20;
const DIFF_FILE_LIMIT: usize = 256 << 10;
const DIFF_TOTAL_LIMIT: usize = 1 << 20;
const DIFF_MAX_FILES: usize = 300;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/login", get(login))
        .route("/{repo}", get(summary))
        .route("/{repo}/tree/{rev}", get(tree_root))
        .route("/{repo}/tree/{rev}/{*path}", get(tree))
        .route("/{repo}/blob/{rev}/{*path}", get(blob))
        .route("/{repo}/log/{rev}", get(log))
        .route("/{repo}/commit/{rev}", get(commit))
        .route("/{repo}/refs", get(refs))
}

/// Errors rendered as small HTML pages.
pub struct WebError(ApiError);

impl From<ApiError> for WebError {
    fn from(err: ApiError) -> Self {
        WebError(err)
    }
}

impl From<crate::error::Error> for WebError {
    fn from(err: crate::error::Error) -> Self {
        WebError(err.into())
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let err = self.0;
        let body = page(
            &err.status.to_string(),
            None,
            html! { p.error { (err.message) } },
        );
        let mut response = (err.status, Html(body.into_string())).into_response();
        if err.www_authenticate {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"nimbus-git\""),
            );
        }
        response
    }
}

const CSS: &str = "body{font-family:system-ui,sans-serif;max-width:70rem;margin:1rem auto;padding:0 1rem;color:#222}\
a{color:#0550ae;text-decoration:none}a:hover{text-decoration:underline}\
table{border-collapse:collapse;width:100%}td,th{padding:.2rem .5rem;border-bottom:1px solid #eee;text-align:left;vertical-align:top}\
pre{background:#f6f8fa;padding:.5rem;overflow:auto;font-size:.85rem}code,.mono{font-family:ui-monospace,monospace}\
.add{background:#e6ffec}.del{background:#ffebe9}.hunk{color:#6e7781}.muted{color:#6e7781}.error{color:#b00}\
nav a{margin-right:1rem}header{border-bottom:1px solid #ddd;margin-bottom:1rem;padding-bottom:.5rem}";

fn page(title: &str, repo: Option<&str>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Nimbus Git" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    nav {
                        a href="/" { b { "Nimbus Git" } }
                        @if let Some(repo) = repo {
                            a href={ "/" (repo) } { (repo) }
                            a href={ "/" (repo) "/log/HEAD" } { "log" }
                            a href={ "/" (repo) "/refs" } { "branches & tags" }
                        }
                    }
                }
                (content)
            }
        }
    }
}

async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Principal, WebError> {
    Ok(state.auth.principal(headers).await?)
}

fn visible(
    state: &AppState,
    principal: &Principal,
    name: &str,
) -> Result<std::sync::Arc<RepoEntry>, WebError> {
    let not_found = || {
        WebError(ApiError::not_found(format!(
            "repository '{name}' not found"
        )))
    };
    let entry = state.repos.get(name).ok_or_else(|| {
        if principal.user.is_none() {
            WebError(ApiError::unauthorized())
        } else {
            not_found()
        }
    })?;
    match entry.permission(principal) {
        Some(perm) if perm >= Perm::Read => Ok(entry),
        _ if principal.user.is_none() => Err(WebError(ApiError::unauthorized())),
        _ => Err(not_found()),
    }
}

/// Run a gix read on the blocking pool.
async fn with_repo<T: Send + 'static>(
    entry: std::sync::Arc<RepoEntry>,
    f: impl FnOnce(&gix::Repository) -> Result<T, WebError> + Send + 'static,
) -> Result<T, WebError> {
    tokio::task::spawn_blocking(move || {
        let repo = entry.gix()?;
        f(&repo)
    })
    .await
    .map_err(|e| WebError(crate::error::Error::Internal(e.to_string()).into()))?
}

fn git_err(err: impl std::fmt::Display) -> WebError {
    WebError(crate::error::Error::git(err).into())
}

fn resolve_commit<'r>(repo: &'r gix::Repository, rev: &str) -> Result<gix::Commit<'r>, WebError> {
    let not_found = || WebError(ApiError::not_found(format!("revision '{rev}' not found")));
    if rev.is_empty()
        || rev.len() > 256
        || rev.starts_with('-')
        || rev.contains("..")
        || rev.contains('@')
    {
        return Err(not_found());
    }
    let id = repo.rev_parse_single(rev).map_err(|_| not_found())?;
    id.object()
        .map_err(|_| not_found())?
        .peel_to_commit()
        .map_err(|_| not_found())
}

fn etag_for(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    for part in parts {
        hasher.update([0]);
        hasher.update(part.as_bytes());
    }
    format!("\"{}\"", hex::encode(&hasher.finalize()[..16]))
}

/// A page, with an ETag when it is fixed by an object id; 304 when the client has it.
fn respond(headers: &HeaderMap, etag: Option<String>, body: Markup) -> Response {
    if let Some(etag) = &etag
        && headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response
            .headers_mut()
            .insert(header::ETAG, HeaderValue::from_str(etag).expect("hex etag"));
        return response;
    }
    let mut response = Html(body.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(etag) = etag {
        headers.insert(
            header::ETAG,
            HeaderValue::from_str(&etag).expect("hex etag"),
        );
    }
    response
}

fn when(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]"
            ))
            .ok()
        })
        .unwrap_or_default()
}

fn enc(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

async fn index(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, WebError> {
    let principal = caller(&state, &headers).await?;
    let repos: Vec<_> = state
        .repos
        .all()
        .into_iter()
        .filter(|e| e.permission(&principal).is_some())
        .collect();
    let body = page(
        "Repositories",
        None,
        html! {
            h1 { "Repositories" }
            p.muted {
                @if let Some(user) = &principal.user { "Signed in as " (user.username) }
                @else { a href="/login" { "Sign in" } " to see private repositories." }
            }
            @if repos.is_empty() { p { "No repositories yet." } }
            table {
                @for entry in &repos {
                    @let meta = entry.meta();
                    tr {
                        td { a href={ "/" (entry.name) } { (entry.name) } }
                        td { @if meta.private { "private" } @else { "public" } }
                        td.muted { (meta.description) }
                    }
                }
            }
        },
    );
    Ok(Html(body.into_string()).into_response())
}

/// Asks the browser for credentials (HTTP Basic), then goes home.
async fn login(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, WebError> {
    let principal = caller(&state, &headers).await?;
    if principal.user.is_none() {
        return Err(WebError(ApiError::unauthorized()));
    }
    Ok(Redirect::to("/").into_response())
}

struct TreeRow {
    name: String,
    is_dir: bool,
    mode: String,
}

fn list_tree(
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

fn tree_table(repo: &str, rev: &str, path: &str, rows: &[TreeRow]) -> Markup {
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

async fn summary(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    if let Some(stripped) = name.strip_suffix(".git") {
        return Ok(Redirect::to(&format!("/{stripped}")).into_response());
    }
    let principal = caller(&state, &headers).await?;
    let entry = visible(&state, &principal, &name)?;
    let meta = entry.meta();
    let clone_url = format!("{}/{}.git", state.base_url, entry.name);
    let repo_name = entry.name.clone();
    let content = with_repo(entry.clone(), move |repo| {
        let head = match repo.head_id() {
            Ok(id) => id.detach(),
            Err(_) => return Ok(None),
        };
        let commit = repo.find_commit(head).map_err(git_err)?;
        let rows = list_tree(repo, &commit, "")?.unwrap_or_default();
        let readme = rows
            .iter()
            .find(|r| !r.is_dir && r.name.to_ascii_lowercase().starts_with("readme"))
            .and_then(|r| {
                let entry = commit.tree().ok()?.lookup_entry_by_path(&r.name).ok()??;
                let blob = entry.object().ok()?;
                let data = &blob.data[..blob.data.len().min(64 << 10)];
                std::str::from_utf8(data).ok().map(str::to_owned)
            });
        let summary = commit
            .message()
            .map(|m| m.summary().to_str_lossy().into_owned())
            .unwrap_or_default();
        Ok(Some((head.to_string(), summary, rows, readme)))
    })
    .await?;
    let body = page(
        &repo_name,
        Some(&repo_name),
        html! {
            h1 { (repo_name) @if meta.private { " " small.muted { "(private)" } } }
            @if !meta.description.is_empty() { p { (meta.description) } }
            p { "Clone: " code { "git clone " (clone_url) } }
            @match &content {
                None => p { "This repository is empty. Push to it:" pre { "git remote add origin " (clone_url) "\ngit push origin main" } },
                Some((head, summary, rows, readme)) => {
                    p.muted { "Latest commit " a.mono href={ "/" (repo_name) "/commit/" (head) } { (&head[..12]) } " " (summary) }
                    (tree_table(&repo_name, "HEAD", "", rows))
                    @if let Some(readme) = readme { h2 { "README" } pre { (readme) } }
                }
            }
        },
    );
    Ok(Html(body.into_string()).into_response())
}

async fn tree_root(
    state: State<AppState>,
    Path((name, rev)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    tree(state, Path((name, rev, String::new())), headers).await
}

async fn tree(
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

async fn blob(
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

#[derive(Deserialize)]
pub struct LogQuery {
    page: Option<usize>,
}

async fn log(
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

async fn commit(
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

async fn refs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let principal = caller(&state, &headers).await?;
    let entry = visible(&state, &principal, &name)?;
    let snapshot = crate::repos::snapshot(&entry, &state.caps).await?;
    let repo_name = entry.name.clone();
    let branches: Vec<_> = snapshot
        .refs
        .iter()
        .filter_map(|r| r.name.strip_prefix("refs/heads/").map(|b| (b, r)))
        .collect();
    let tags: Vec<_> = snapshot
        .refs
        .iter()
        .filter_map(|r| r.name.strip_prefix("refs/tags/").map(|t| (t, r)))
        .collect();
    let body = page(
        &format!("refs · {repo_name}"),
        Some(&repo_name),
        html! {
            h2 { "Branches" }
            table {
                @for (branch, r) in &branches {
                    tr {
                        td { a href={ "/" (repo_name) "/tree/" (enc(branch)) } { (branch) }
                             @if snapshot.head_target.as_deref() == Some(r.name.as_str()) { " " small.muted { "(default)" } } }
                        td.mono { a href={ "/" (repo_name) "/commit/" (r.oid) } { (&r.oid[..12]) } }
                        td { a href={ "/" (repo_name) "/log/" (enc(branch)) } { "log" } }
                    }
                }
            }
            h2 { "Tags" }
            table {
                @for (tag, r) in &tags {
                    @let target = r.peeled.as_ref().unwrap_or(&r.oid);
                    tr {
                        td { a href={ "/" (repo_name) "/tree/" (enc(tag)) } { (tag) } }
                        td.mono { a href={ "/" (repo_name) "/commit/" (target) } { (&target[..12]) } }
                    }
                }
            }
        },
    );
    Ok(Html(body.into_string()).into_response())
}
