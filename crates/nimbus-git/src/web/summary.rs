//! A repository's front page: description, clone URL, and the root tree of the default branch
//! with its last-commit column and rendered README.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use crate::AppState;
use crate::web::tree::{listing, render_listing};
use crate::web::*;

pub(super) async fn summary(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    if let Some(stripped) = name.strip_suffix(".git") {
        return Ok(Redirect::to(&format!("/{stripped}")).into_response());
    }
    let (entry, refs) = open(&state, &headers, &name).await?;
    let meta = entry.meta();
    let clone_url = format!("{}/{}.git", state.base_url, entry.name);
    let repo_name = entry.name.clone();
    let head_branch = refs
        .head_target
        .as_deref()
        .and_then(|t| t.strip_prefix("refs/heads/"))
        .unwrap_or("HEAD")
        .to_owned();
    let rev = head_branch.clone();
    let content = with_repo(entry, move |repo, entry| {
        let Ok(head) = repo.head_id() else {
            return Ok(None);
        };
        let commit = repo.find_commit(head.detach()).map_err(git_err)?;
        listing(repo, entry, &commit, "")
    })
    .await?;
    let at = At {
        rev: &rev,
        kind: "tree",
        path: "",
        refs: &refs,
    };
    let body = page(
        &repo_name,
        Some(&Nav {
            repo: &repo_name,
            at: None,
        }),
        html! {
            h1 { (repo_name) @if meta.private { " " small.muted { "(private)" } } }
            @if !meta.description.is_empty() { p { (meta.description) } }
            div.bar {
                @if content.is_some() { (switcher(&repo_name, &at)) }
                span { "Clone: " code { "git clone " (clone_url) } }
            }
            @match &content {
                None => {
                    p { "This repository is empty. Push to it:" }
                    pre { "git remote add origin " (clone_url) "\ngit push origin main" }
                }
                Some(listing) => (render_listing(&repo_name, &rev, "", listing)),
            }
        },
    );
    Ok(respond(&headers, None, body))
}
