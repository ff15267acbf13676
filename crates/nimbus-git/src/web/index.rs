//! The repository list and the sign-in redirect.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;

use crate::AppState;
use crate::error::ApiError;
use crate::web::*;

pub(super) async fn index(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
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
pub(super) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let principal = caller(&state, &headers).await?;
    if principal.user.is_none() {
        return Err(WebError(ApiError::unauthorized()));
    }
    Ok(Redirect::to("/").into_response())
}
