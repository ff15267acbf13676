//! Branches and tags.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use maud::html;

use crate::AppState;
use crate::web::*;

pub(super) async fn refs(
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
        Some(&Nav {
            repo: &repo_name,
            at: None,
        }),
        html! {
            h2 { "Branches" }
            table {
                @for (branch, r) in &branches {
                    tr {
                        td { a href={ "/" (repo_name) "/tree/" (enc_rev(branch)) } { (branch) }
                             @if snapshot.head_target.as_deref() == Some(r.name.as_str()) { " " small.muted { "(default)" } } }
                        td.mono { a href={ "/" (repo_name) "/commit/" (r.oid) } { (&r.oid[..12]) } }
                        td { a href={ "/" (repo_name) "/log/" (enc_rev(branch)) } { "log" } }
                    }
                }
            }
            h2 { "Tags" }
            table {
                @for (tag, r) in &tags {
                    @let target = r.peeled.as_ref().unwrap_or(&r.oid);
                    tr {
                        td { a href={ "/" (repo_name) "/tree/" (enc_rev(tag)) } { (tag) } }
                        td.mono { a href={ "/" (repo_name) "/commit/" (target) } { (&target[..12]) } }
                    }
                }
            }
        },
    );
    Ok(Html(body.into_string()).into_response())
}
