//! Git smart HTTP, protocol v0 and v2.
//!
//! Ref advertisements and v2 `ls-refs` are answered in-process from the repository's ref
//! snapshot. Pack work goes to `git upload-pack`/`git receive-pack --stateless-rpc` children,
//! with the request streamed into the child (checked for pkt-line framing on the way) and the
//! child's output streamed back; neither side is buffered whole. A request whose framing is
//! broken gets 400 before any response byte is sent.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;

use async_compression::tokio::bufread::GzipDecoder;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::AppState;
use crate::admission::PackPermit;
use crate::auth::{Perm, Principal, Scope};
use crate::db;
use crate::error::ApiError;
use crate::events::{self, PushContext};
use crate::pktline::{self, Pkt, ValidateError, Validator};
use crate::refs::{Snapshot, git_command};
use crate::repos::{self, RepoEntry};

/// Largest pkt-line section we check before passing the rest through.
const SECTION_LIMIT: usize = 64 << 20;
/// Largest v2 `ls-refs` request we read.
const LS_REFS_LIMIT: usize = 1 << 20;

#[derive(Deserialize)]
pub struct ServiceQuery {
    service: Option<String>,
}

fn git_error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError::new(status, "git", message).plain()
}

/// Find the repository and check that `principal` may `need` it. Git-facing errors are plain
/// text, which `git` prints to the user as `remote: …`.
pub(crate) async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    segment: &str,
    need: Perm,
) -> Result<(Arc<RepoEntry>, Principal), ApiError> {
    let name = segment.strip_suffix(".git").unwrap_or(segment);
    let not_found = || {
        git_error(
            StatusCode::NOT_FOUND,
            format!("repository '{name}' not found"),
        )
    };
    let principal = state
        .auth
        .principal(headers)
        .await
        .map_err(ApiError::plain)?;
    let Some(entry) = state.repos.get(name) else {
        return Err(if principal.user.is_none() {
            ApiError::unauthorized().plain()
        } else {
            not_found()
        });
    };
    match entry.permission(&principal) {
        Some(perm) if perm >= need => Ok((entry, principal)),
        _ if principal.user.is_none() => Err(ApiError::unauthorized().plain()),
        None => Err(not_found()),
        Some(perm) => {
            let how = if principal.token_scope == Some(Scope::Read) {
                "a read-only token".to_owned()
            } else {
                format!("{} access", perm.as_str())
            };
            Err(git_error(
                StatusCode::FORBIDDEN,
                format!(
                    "nimbus-git: {} may not push to '{}': they have {how}, pushing needs write",
                    principal.name(),
                    name
                ),
            ))
        }
    }
}

fn wants_v2(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("git-protocol")?.to_str().ok()?;
    if value.len() > 256
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":=._-".contains(&b))
    {
        return None;
    }
    Some(value.to_owned())
}

fn is_v2(protocol: &Option<String>) -> bool {
    protocol
        .as_deref()
        .is_some_and(|p| p.split(':').any(|kv| kv == "version=2"))
}

fn git_response(content_type: &'static str, body: Body) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, max-age=0, must-revalidate"),
    );
    response
}

/// `GET /{repo}.git/info/refs?service=…`
pub async fn info_refs(
    State(state): State<AppState>,
    Path(segment): Path<String>,
    Query(query): Query<ServiceQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let upload = match query.service.as_deref() {
        Some("git-upload-pack") => true,
        Some("git-receive-pack") => false,
        Some(other) => {
            return Err(git_error(
                StatusCode::BAD_REQUEST,
                format!("service: unknown service '{other}'"),
            ));
        }
        None => {
            return Err(git_error(
                StatusCode::FORBIDDEN,
                "the dumb HTTP protocol is not supported",
            ));
        }
    };
    let (entry, _) = authorize(
        &state,
        &headers,
        &segment,
        if upload { Perm::Read } else { Perm::Write },
    )
    .await?;
    if upload && is_v2(&wants_v2(&headers)) {
        return Ok(git_response(
            "application/x-git-upload-pack-advertisement",
            Body::from(state.caps.upload_v2.clone()),
        ));
    }
    let snapshot = repos::snapshot(&entry, &state.caps).await?;
    Ok(if upload {
        git_response(
            "application/x-git-upload-pack-advertisement",
            Body::from(snapshot.upload_v0.clone()),
        )
    } else {
        git_response(
            "application/x-git-receive-pack-advertisement",
            Body::from(snapshot.receive_v0.clone()),
        )
    })
}

type ByteStream = BoxStream<'static, io::Result<Bytes>>;

fn request_stream(headers: &HeaderMap, body: Body) -> Result<ByteStream, ApiError> {
    let stream = body.into_data_stream().map_err(io::Error::other);
    match headers.get(header::CONTENT_ENCODING).map(|v| v.as_bytes()) {
        None | Some(b"identity") => Ok(stream.boxed()),
        Some(b"gzip") | Some(b"x-gzip") => {
            Ok(ReaderStream::new(GzipDecoder::new(StreamReader::new(stream))).boxed())
        }
        Some(other) => Err(git_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content-encoding: '{}' is not supported",
                String::from_utf8_lossy(other)
            ),
        )),
    }
}

fn bad_body(err: impl std::fmt::Display) -> ApiError {
    git_error(StatusCode::BAD_REQUEST, format!("bad request body: {err}"))
}

/// `POST /{repo}.git/git-upload-pack`
pub async fn upload_pack(
    State(state): State<AppState>,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (entry, _) = authorize(&state, &headers, &segment, Perm::Read).await?;
    let protocol = wants_v2(&headers);
    let mut stream = request_stream(&headers, body)?;
    let mut prefix = Vec::new();
    if is_v2(&protocol) {
        // Read the first pkt-line to learn the command.
        let first_len = loop {
            match pktline::parse(&prefix).map_err(bad_body)? {
                Some((_, used)) => break used,
                None => match stream.next().await {
                    Some(chunk) => prefix.extend_from_slice(&chunk.map_err(bad_body)?),
                    None => return Err(bad_body("ends before the command")),
                },
            }
        };
        let is_ls_refs = matches!(pktline::parse(&prefix[..first_len]), Ok(Some((Pkt::Data(d), _))) if pktline::text(d) == b"command=ls-refs");
        if is_ls_refs {
            while prefix.len() <= LS_REFS_LIMIT {
                match stream.next().await {
                    Some(chunk) => prefix.extend_from_slice(&chunk.map_err(bad_body)?),
                    None => break,
                }
            }
            if prefix.len() > LS_REFS_LIMIT {
                return Err(bad_body("ls-refs request too large"));
            }
            let pkts = pktline::parse_all(&prefix).map_err(bad_body)?;
            if pkts.last() != Some(&Pkt::Flush) {
                return Err(bad_body("ls-refs request does not end with a flush-pkt"));
            }
            let args: Vec<&[u8]> = pkts
                .iter()
                .skip_while(|p| **p != Pkt::Delim)
                .filter_map(|p| match p {
                    Pkt::Data(d) => Some(pktline::text(d)),
                    _ => None,
                })
                .collect();
            let snapshot = repos::snapshot(&entry, &state.caps).await?;
            return Ok(git_response(
                "application/x-git-upload-pack-result",
                Body::from(snapshot.ls_refs(&args)),
            ));
        }
    }
    let permit = state.admission.acquire(&entry.pack_slots).await?;
    let job = PackJob {
        service: "upload-pack",
        entry,
        protocol,
        prefix: Bytes::from(prefix),
        body: stream,
        validator: Validator::new(usize::MAX, SECTION_LIMIT),
        permit,
        after: None,
    };
    run_pack(job).await
}

/// `POST /{repo}.git/git-receive-pack`
pub async fn receive_pack(
    State(state): State<AppState>,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (entry, principal) = authorize(&state, &headers, &segment, Perm::Write).await?;
    let stream = request_stream(&headers, body)?;
    let permit = state.admission.acquire(&entry.pack_slots).await?;
    let push_guard = entry.push_lock.clone().lock_owned().await;
    // Every ref change goes through a push under this lock and re-reads the snapshot after it,
    // so the cached snapshot is exactly the state before this push.
    let old = repos::snapshot(&entry, &state.caps).await?;
    let after = {
        let state = state.clone();
        let entry = entry.clone();
        let pusher = principal.name().to_owned();
        async move {
            let _push_guard = push_guard;
            if let Err(err) = after_push(&state, &entry, &old, &pusher).await {
                tracing::error!(repo.name = %entry.name, error = %err, "recording push events failed");
            }
        }
    };
    let job = PackJob {
        service: "receive-pack",
        entry,
        protocol: None,
        prefix: Bytes::new(),
        body: stream,
        validator: Validator::new(1, SECTION_LIMIT),
        permit,
        after: Some(Box::pin(after)),
    };
    run_pack(job).await
}

/// Invalidate the snapshot, write the events of the ref diff to the outbox, wake the webhook
/// deliverer and schedule maintenance.
async fn after_push(
    state: &AppState,
    entry: &Arc<RepoEntry>,
    old: &Snapshot,
    pusher: &str,
) -> Result<(), crate::error::Error> {
    let started = std::time::Instant::now();
    let new = repos::fresh_snapshot(entry, &state.caps).await?;
    tracing::debug!(repo.name = %entry.name, elapsed_ms = started.elapsed().as_millis() as u64, "ref snapshot after push");
    let url = format!("{}/{}", state.base_url, entry.name);
    let ctx = PushContext {
        repo: &entry.name,
        pusher,
        url: &url,
    };
    let events = events::from_ref_diff(old, &new, &ctx);
    if events.is_empty() {
        return Ok(());
    }
    db::insert_events(&state.db, &entry.id, &events).await?;
    tracing::debug!(repo.name = %entry.name, elapsed_ms = started.elapsed().as_millis() as u64, "push events written");
    state.webhook_wake.notify_one();
    state.maintainer.schedule(entry.clone());
    tracing::info!(repo.name = %entry.name, user.name = %pusher, n_events = events.len(), "push recorded");
    Ok(())
}

struct PackJob {
    service: &'static str,
    entry: Arc<RepoEntry>,
    protocol: Option<String>,
    prefix: Bytes,
    body: ByteStream,
    validator: Validator,
    permit: PackPermit,
    after: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error(transparent)]
    Invalid(#[from] ValidateError),
    #[error("cannot read request body: {0}")]
    Body(io::Error),
}

async fn run_pack(job: PackJob) -> Result<Response, ApiError> {
    let PackJob {
        service,
        entry,
        protocol,
        prefix,
        mut body,
        mut validator,
        permit,
        after,
    } = job;
    let mut cmd = tokio::process::Command::from(git_command(None));
    cmd.args([service, "--stateless-rpc"])
        .arg(&entry.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(protocol) = &protocol {
        cmd.env("GIT_PROTOCOL", protocol);
    }
    let mut child = cmd.spawn().map_err(crate::error::Error::from)?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let require_flush = service == "upload-pack";

    let mut writer = tokio::spawn(async move {
        let mut write_ok = true;
        validator.feed(&prefix)?;
        if !prefix.is_empty() {
            write_ok = stdin.write_all(&prefix).await.is_ok();
        }
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(FeedError::Body)?;
            validator.feed(&chunk)?;
            if write_ok && stdin.write_all(&chunk).await.is_err() {
                // The child stopped reading (it finished or failed); keep checking the body.
                write_ok = false;
            }
        }
        validator.finish(require_flush)?;
        drop(stdin);
        Ok::<(), FeedError>(())
    });
    let stderr_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(16 << 10).read_to_end(&mut buf).await;
        buf
    });

    let mut first = vec![0u8; 32 << 10];
    let mut fed: Option<Result<(), FeedError>> = None;
    let n = loop {
        tokio::select! {
            read = stdout.read(&mut first) => break read.map_err(crate::error::Error::from)?,
            result = &mut writer, if fed.is_none() => {
                let result = result.unwrap_or(Ok(()));
                if let Err(err) = result {
                    let _ = child.kill().await;
                    return Err(bad_body(err));
                }
                fed = Some(Ok(()));
            }
        }
    };
    if n == 0 {
        let status = child.wait().await.map_err(crate::error::Error::from)?;
        if fed.is_none() {
            if let Ok(Err(err)) = writer.await {
                return Err(bad_body(err));
            }
        }
        if let Some(after) = after {
            after.await;
        }
        if !status.success() {
            let stderr = stderr_task.await.unwrap_or_default();
            let message = first_error_line(&stderr, &entry);
            tracing::info!(repo.name = %entry.name, service, %message, "git child failed");
            return Err(git_error(StatusCode::BAD_REQUEST, message));
        }
        drop(permit);
        return Ok(git_response(content_type(service), Body::empty()));
    }
    first.truncate(n);

    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    tokio::spawn(async move {
        let _permit = permit;
        let mut child = child;
        // A push whose client went away still finishes, so its ref changes are recorded; a
        // fetch whose client went away is killed (on drop) to save the work.
        let finish_anyway = after.is_some();
        let mut client_gone = tx.send(Ok(Bytes::from(first))).await.is_err();
        if client_gone && !finish_anyway {
            return;
        }
        loop {
            let mut buf = vec![0u8; 64 << 10];
            match stdout.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if !client_gone && tx.send(Ok(Bytes::from(buf))).await.is_err() {
                        client_gone = true;
                        if !finish_anyway {
                            return;
                        }
                    }
                }
                Err(err) => {
                    let _ = tx.send(Err(err)).await;
                    if !finish_anyway {
                        return;
                    }
                    break;
                }
            }
        }
        let status = child.wait().await;
        if fed.is_none() {
            if let Ok(Err(err)) = writer.await {
                tracing::info!(repo.name = %entry.name, service, error = %err, "request body problem after response started");
            }
        }
        if let Ok(status) = status
            && !status.success()
        {
            let stderr = stderr_task.await.unwrap_or_default();
            tracing::info!(repo.name = %entry.name, service, message = %first_error_line(&stderr, &entry), "git child failed");
        }
        if let Some(after) = after {
            // The client's next request must see the new refs; the ref diff, the outbox write
            // and the next push (which waits for the push lock) can come after the response.
            entry.invalidate();
            drop(tx);
            after.await;
        }
    });
    Ok(git_response(
        content_type(service),
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    ))
}

fn content_type(service: &str) -> &'static str {
    if service == "upload-pack" {
        "application/x-git-upload-pack-result"
    } else {
        "application/x-git-receive-pack-result"
    }
}

/// The first `fatal:`/`error:` line of a child's stderr, without server paths.
fn first_error_line(stderr: &[u8], entry: &RepoEntry) -> String {
    let text = String::from_utf8_lossy(stderr);
    let path = entry.path.display().to_string();
    text.lines()
        .find(|l| l.starts_with("fatal:") || l.starts_with("error:"))
        .map(|l| l.replace(&path, &entry.name))
        .unwrap_or_else(|| "git could not process the request".to_owned())
}
