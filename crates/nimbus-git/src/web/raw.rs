//! Raw file bytes (`?download=1` for an attachment). Served so a browser can never run them
//! in the forge's origin: a sandboxing Content-Security-Policy, `nosniff`, and a content type
//! chosen from a short list (images by extension, text as `text/plain`, the rest as bytes).

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;
use crate::web::*;

#[derive(Deserialize)]
pub(super) struct RawQuery {
    download: Option<String>,
}

fn content_type(path: &str, data: &[u8]) -> &'static str {
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "bmp" => "image/bmp",
        "avif" => "image/avif",
        "pdf" => "application/pdf",
        _ if !data[..data.len().min(8000)].contains(&0) => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

pub(super) async fn raw(
    State(state): State<AppState>,
    Path((name, rev, path)): Path<(String, String, String)>,
    Query(query): Query<RawQuery>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let principal = caller(&state, &headers).await?;
    let entry = visible(&state, &principal, &name)?;
    let path = clean_path(&path)?;
    let (rev2, path2) = (rev.clone(), path.clone());
    let (blob_id, data) = with_repo(entry, move |repo, _| {
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
        Ok((object.id.to_string(), object.detach().data))
    })
    .await?;
    let etag = format!("\"{blob_id}\"");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return Ok(axum::http::StatusCode::NOT_MODIFIED.into_response());
    }
    let file_name = path.rsplit('/').next().unwrap_or("file");
    let mut response = Response::new(Body::from(data.clone()));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&path, &data)),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex etag"),
    );
    if query.download.is_some_and(|d| d != "0") {
        // RFC 6266: an ASCII fallback plus the exact UTF-8 name.
        let ascii: String = file_name
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() && c != '"' && c != '\\' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let value = format!(
            "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
            enc(file_name)
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            h.insert(header::CONTENT_DISPOSITION, value);
        }
    }
    Ok(response)
}
