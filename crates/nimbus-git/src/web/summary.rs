//! A repository's front page: clone URL, latest commit, root tree and README.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use gix::bstr::ByteSlice;
use maud::html;

use crate::AppState;
use crate::web::tree::{list_tree, tree_table};
use crate::web::*;

pub(super) async fn summary(
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
