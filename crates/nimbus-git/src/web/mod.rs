//! The server-rendered web UI: repository list, tree, blob, raw, blame, log, commit with diff,
//! refs. No JavaScript; reads go through the repository's cached `gix` handle on the blocking
//! pool. One module per page; this one holds what they share (layout, the repository header
//! with its branch/tag switcher, access checks, revision lookup, ETags, formatting).
//! Pages whose content is fixed by a commit id carry an ETag derived from it.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::auth::{Perm, Principal};
use crate::error::ApiError;
use crate::refs::Snapshot;
use crate::repos::RepoEntry;

mod blame;
mod blob;
mod ci;
mod commit;
pub mod highlight;
mod index;
mod log;
pub mod markdown;
mod raw;
mod refs;
mod summary;
mod tree;

pub(super) const LOG_PAGE: usize = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index::index))
        .route("/login", get(index::login))
        .route("/{repo}", get(summary::summary))
        .route("/{repo}/tree/{rev}", get(tree::tree_root))
        .route("/{repo}/tree/{rev}/{*path}", get(tree::tree))
        .route("/{repo}/blob/{rev}/{*path}", get(blob::blob))
        .route("/{repo}/raw/{rev}/{*path}", get(raw::raw))
        .route("/{repo}/blame/{rev}/{*path}", get(blame::blame))
        .route("/{repo}/log/{rev}", get(log::log))
        .route("/{repo}/log/{rev}/{*path}", get(log::log_path))
        .route("/{repo}/commit/{rev}", get(commit::commit))
        .route("/{repo}/refs", get(refs::refs))
        .merge(ci::router())
}

/// Caches the web pages share across repositories (content-addressed, so never stale).
#[derive(Default)]
pub struct Caches {
    highlights: highlight::HighlightCache,
}

impl Caches {
    /// Forget everything (benchmarks measure cold pages this way).
    pub fn clear(&self) {
        self.highlights.clear();
    }
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
            html! { h1 { (err.status.canonical_reason().unwrap_or("Error")) } p.error { (err.message) } },
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

const CSS: &str = include_str!("style.css");

/// What a page at a revision tells the header: where the switcher's links lead.
pub(super) struct At<'a> {
    pub rev: &'a str,
    /// The page kind the switcher keeps: "tree", "blob", "log", "blame".
    pub kind: &'static str,
    pub path: &'a str,
    pub refs: &'a Snapshot,
}

/// The repository part of the header.
pub(super) struct Nav<'a> {
    pub repo: &'a str,
    pub at: Option<At<'a>>,
}

pub(super) fn page(title: &str, nav: Option<&Nav<'_>>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · Nimbus Git" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header.top {
                    a.brand href="/" { "Nimbus Git" }
                    @if let Some(nav) = nav {
                        nav.tabs aria-label="repository" {
                            a href={ "/" (nav.repo) } { b { (nav.repo) } }
                            @let rev = nav.at.as_ref().map_or("HEAD", |at| at.rev);
                            a href={ "/" (nav.repo) "/tree/" (enc_rev(rev)) } { "Files" }
                            a href={ "/" (nav.repo) "/log/" (enc_rev(rev)) } { "Commits" }
                            a href={ "/" (nav.repo) "/refs" } { "Branches & tags" }
                        }
                    }
                }
                main { (content) }
            }
        }
    }
}

/// The branch/tag switcher: a `<details>` list of links to the same page at another ref.
pub(super) fn switcher(repo: &str, at: &At<'_>) -> Markup {
    let target = |name: &str| {
        let mut url = format!("/{repo}/{}/{}", at.kind, enc_rev(name));
        if !at.path.is_empty() {
            url.push('/');
            url.push_str(&enc(at.path));
        }
        url
    };
    let shown = if at.rev.len() == 40 && at.rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        &at.rev[..12]
    } else {
        at.rev
    };
    let branches: Vec<&str> = at
        .refs
        .refs
        .iter()
        .filter_map(|r| r.name.strip_prefix("refs/heads/"))
        .take(300)
        .collect();
    let tags: Vec<&str> = at
        .refs
        .refs
        .iter()
        .filter_map(|r| r.name.strip_prefix("refs/tags/"))
        .rev()
        .take(300)
        .collect();
    html! {
        details.switch {
            summary aria-label="switch branch or tag" { "⎇ " span.mono { (shown) } " ▾" }
            div {
                strong { "Branches" }
                ul { @for b in &branches { li { a.mono href=(target(b)) { (b) } } } }
                @if !tags.is_empty() {
                    strong { "Tags" }
                    ul { @for t in &tags { li { a.mono href=(target(t)) { (t) } } } }
                }
            }
        }
    }
}

/// `repo / dir / file` with each directory linked to its tree page.
pub(super) fn crumbs(repo: &str, rev: &str, path: &str) -> Markup {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    html! {
        span.crumbs {
            a href={ "/" (repo) "/tree/" (enc_rev(rev)) } { (repo) }
            @for (idx, part) in parts.iter().enumerate() {
                " / "
                @if idx + 1 == parts.len() { strong { (part) } }
                @else { a href={ "/" (repo) "/tree/" (enc_rev(rev)) "/" (enc(&parts[..=idx].join("/"))) } { (part) } }
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
) -> Result<Arc<RepoEntry>, WebError> {
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

/// The caller's repository and its ref snapshot (for the switcher).
pub(super) async fn open(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
) -> Result<(Arc<RepoEntry>, Arc<Snapshot>), WebError> {
    let principal = caller(state, headers).await?;
    let entry = visible(state, &principal, name)?;
    let snapshot = crate::repos::snapshot(&entry, &state.caps).await?;
    Ok((entry, snapshot))
}

/// Run a gix read on the blocking pool.
pub(super) async fn with_repo<T: Send + 'static>(
    entry: Arc<RepoEntry>,
    f: impl FnOnce(&gix::Repository, &RepoEntry) -> Result<T, WebError> + Send + 'static,
) -> Result<T, WebError> {
    tokio::task::spawn_blocking(move || {
        let repo = entry.gix()?;
        f(&repo, &entry)
    })
    .await
    .map_err(|e| WebError(crate::error::Error::Internal(e.to_string()).into()))?
}

pub(super) fn git_err(err: impl std::fmt::Display) -> WebError {
    WebError(crate::error::Error::git(err).into())
}

/// A revision from a URL (branch, tag or commit id) as a commit; 404 for anything else,
/// including rev-parse syntax a URL has no business using (`..`, `@{…}`, options).
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
        || rev.contains(':')
    {
        return Err(not_found());
    }
    let id = repo.rev_parse_single(rev).map_err(|_| not_found())?;
    id.object()
        .map_err(|_| not_found())?
        .peel_to_commit()
        .map_err(|_| not_found())
}

/// A path from a URL, without leading/trailing slashes; `..`, `.` and empty segments never
/// name anything in a tree, so they are a 404 rather than a lookup.
pub(super) fn clean_path(path: &str) -> Result<String, WebError> {
    let path = path.trim_matches('/');
    if path
        .split('/')
        .any(|part| part.is_empty() && !path.is_empty() || part == "." || part == "..")
    {
        return Err(WebError(ApiError::not_found(format!(
            "no path '{path}' in this repository"
        ))));
    }
    Ok(path.to_owned())
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
                "[year]-[month]-[day] [hour]:[minute] UTC"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// "3 days ago", with the exact time in the title.
pub(super) fn age(seconds: i64) -> Markup {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    html! { time datetime=(seconds) title=(when(seconds)) { (age_text(now - seconds)) } }
}

pub(super) fn age_text(delta: i64) -> String {
    const UNITS: [(i64, &str, &str); 6] = [
        (365 * 86400, "year", "years"),
        (30 * 86400, "month", "months"),
        (7 * 86400, "week", "weeks"),
        (86400, "day", "days"),
        (3600, "hour", "hours"),
        (60, "minute", "minutes"),
    ];
    if delta < 60 {
        return "just now".to_owned();
    }
    for (unit, one, many) in UNITS {
        if delta >= unit {
            return format!("{} ago", plural(delta / unit, one, many));
        }
    }
    "just now".to_owned()
}

/// "1 file", "2 files", "0 files".
pub(super) fn plural(n: impl Into<i64>, one: &str, many: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

pub(super) fn human_size(bytes: u64) -> String {
    if bytes < 1024 {
        return plural(bytes as i64, "byte", "bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    for unit in ["KiB", "MiB", "GiB"] {
        if value < 1024.0 {
            return format!("{value:.1} {unit}");
        }
        value /= 1024.0;
    }
    format!("{value:.1} TiB")
}

/// Percent-encode a path for a URL (keeps `/`).
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

/// Percent-encode a revision for one URL segment: a branch `feature/x` must not read as a
/// path (axum decodes `%2F` back after routing).
pub(super) fn enc_rev(rev: &str) -> String {
    enc(rev).replace('/', "%2F")
}

pub(super) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_and_ages() {
        assert_eq!(plural(0, "file", "files"), "0 files");
        assert_eq!(plural(1, "file", "files"), "1 file");
        assert_eq!(plural(2, "file", "files"), "2 files");
        assert_eq!(age_text(5), "just now");
        assert_eq!(age_text(60), "1 minute ago");
        assert_eq!(age_text(2 * 3600 + 5), "2 hours ago");
        assert_eq!(age_text(86400), "1 day ago");
        assert_eq!(age_text(400 * 86400), "1 year ago");
        assert_eq!(human_size(1), "1 byte");
        assert_eq!(human_size(1000), "1000 bytes");
        assert_eq!(human_size(1536), "1.5 KiB");
    }

    #[test]
    fn paths_from_urls() {
        assert_eq!(clean_path("/a b/ü.rs/").ok().as_deref(), Some("a b/ü.rs"));
        assert_eq!(clean_path("").ok().as_deref(), Some(""));
        for bad in ["a/../b", "..", "a/./b", "a//b"] {
            assert!(clean_path(bad).is_err(), "{bad}");
        }
        assert_eq!(enc("a b/ü"), "a%20b/%C3%BC");
        assert_eq!(enc_rev("feature/x"), "feature%2Fx");
    }
}
