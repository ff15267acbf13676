//! The server-rendered web UI: repository list, tree, blob, log, commit with diff, refs.
//! No JavaScript; reads go through the repository's cached `gix` handle on the blocking pool.
//! One module per page; this one holds what they share (layout, access checks, revision
//! lookup, ETags, URL encoding).
//! Pages whose content is fixed by a commit id carry an ETag derived from it.

use std::fmt::Write as _;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::auth::{Perm, Principal};
use crate::error::ApiError;
use crate::repos::RepoEntry;

mod blob;
mod commit;
mod index;
mod log;
mod refs;
mod summary;
mod tree;

pub(super) const LOG_PAGE: usize = 50;
pub(super) const BLOB_LIMIT: usize = 1 << 20;
pub(super) const DIFF_FILE_LIMIT: usize = 256 << 10;
pub(super) const DIFF_TOTAL_LIMIT: usize = 1 << 20;
pub(super) const DIFF_MAX_FILES: usize = 300;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index::index))
        .route("/login", get(index::login))
        .route("/{repo}", get(summary::summary))
        .route("/{repo}/tree/{rev}", get(tree::tree_root))
        .route("/{repo}/tree/{rev}/{*path}", get(tree::tree))
        .route("/{repo}/blob/{rev}/{*path}", get(blob::blob))
        .route("/{repo}/log/{rev}", get(log::log))
        .route("/{repo}/commit/{rev}", get(commit::commit))
        .route("/{repo}/refs", get(refs::refs))
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

pub(super) fn page(title: &str, repo: Option<&str>, content: Markup) -> Markup {
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

pub(super) async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Principal, WebError> {
    Ok(state.auth.principal(headers).await?)
}

pub(super) fn visible(
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
pub(super) async fn with_repo<T: Send + 'static>(
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

pub(super) fn git_err(err: impl std::fmt::Display) -> WebError {
    WebError(crate::error::Error::git(err).into())
}

pub(super) fn resolve_commit<'r>(
    repo: &'r gix::Repository,
    rev: &str,
) -> Result<gix::Commit<'r>, WebError> {
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

pub(super) fn etag_for(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    for part in parts {
        hasher.update([0]);
        hasher.update(part.as_bytes());
    }
    format!("\"{}\"", hex::encode(&hasher.finalize()[..16]))
}

/// A page, with an ETag when it is fixed by an object id; 304 when the client has it.
pub(super) fn respond(headers: &HeaderMap, etag: Option<String>, body: Markup) -> Response {
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

pub(super) fn when(seconds: i64) -> String {
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

pub(super) fn enc(segment: &str) -> String {
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
