//! Blame pages: who last changed each line of a file at a revision. `git blame --incremental`
//! does the work in a child process (git keeps its own optimisations, the commit-graph and
//! Bloom filters among them); its output is read as it comes until a time cap, after which the
//! child is killed and the page says which lines are not attributed yet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{PreEscaped, html};
use tokio::io::AsyncBufReadExt as _;

use crate::AppState;
use crate::error::ApiError;
use crate::web::blob::BLOB_LIMIT;
use crate::web::highlight::escape_into;
use crate::web::*;

/// How long a blame may run before the page is shown with what is known.
pub const BLAME_BUDGET: Duration = Duration::from_secs(8);

#[derive(Clone, Default)]
struct BlameCommit {
    author: String,
    time: i64,
    summary: String,
}

/// One run of lines attributed to a commit.
struct Group {
    commit: String,
    start: usize,
    len: usize,
}

/// Parse `git blame --incremental` output, line by line.
#[derive(Default)]
struct Parser {
    commits: HashMap<String, BlameCommit>,
    groups: Vec<Group>,
    current: Option<String>,
}

impl Parser {
    fn line(&mut self, line: &str) {
        let mut words = line.splitn(2, ' ');
        let first = words.next().unwrap_or("");
        let rest = words.next().unwrap_or("");
        if first.len() == 40 && first.bytes().all(|b| b.is_ascii_hexdigit()) {
            let nums: Vec<usize> = rest.split(' ').filter_map(|n| n.parse().ok()).collect();
            if let [_, final_line, len] = nums[..] {
                self.groups.push(Group {
                    commit: first.to_owned(),
                    start: final_line,
                    len,
                });
                self.commits.entry(first.to_owned()).or_default();
                self.current = Some(first.to_owned());
            }
            return;
        }
        let Some(current) = self.current.as_ref() else {
            return;
        };
        let commit = self.commits.entry(current.clone()).or_default();
        match first {
            "author" => commit.author = rest.to_owned(),
            "author-time" => commit.time = rest.parse().unwrap_or(0),
            "summary" => commit.summary = rest.to_owned(),
            "filename" => self.current = None,
            _ => {}
        }
    }
}

pub(super) async fn blame(
    State(state): State<AppState>,
    Path((name, rev, path)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let (entry, refs) = open(&state, &headers, &name).await?;
    let path = clean_path(&path)?;
    let (repo_name, rev2, path2) = (entry.name.clone(), rev.clone(), path.clone());
    let state2 = state.clone();
    let git_dir = entry.path.clone();
    let (commit_id, lines) = with_repo(entry, move |repo, _| {
        let commit = resolve_commit(repo, &rev2)?;
        let not_found = || WebError(ApiError::not_found(format!("no file '{path2}' at {rev2}")));
        let tree = commit.tree().map_err(git_err)?;
        let file = tree
            .lookup_entry_by_path(&path2)
            .map_err(git_err)?
            .ok_or_else(not_found)?;
        if !file.mode().is_blob() {
            return Err(not_found());
        }
        let object = file.object().map_err(git_err)?;
        if object.data.len() as u64 > BLOB_LIMIT
            || object.data[..object.data.len().min(8000)].contains(&0)
        {
            return Err(WebError(ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "not_blamable",
                format!(
                    "'{path2}' is binary or larger than {}: no blame",
                    human_size(BLOB_LIMIT)
                ),
            )));
        }
        let text = String::from_utf8_lossy(&object.data);
        let lines = match state2.web.highlights.lines(object.id, &path2, &text) {
            Some(lines) => lines,
            None => Arc::new(
                text.lines()
                    .map(|l| {
                        let mut html = String::new();
                        escape_into(&mut html, l);
                        html
                    })
                    .collect(),
            ),
        };
        Ok((commit.id.to_string(), lines))
    })
    .await?;

    let (parser, complete) = run_blame(&git_dir, &commit_id, &path, BLAME_BUDGET).await?;
    let mut owner: Vec<Option<usize>> = vec![None; lines.len()];
    for (idx, group) in parser.groups.iter().enumerate() {
        for n in group.start..group.start + group.len {
            if let Some(slot) = owner.get_mut(n.wrapping_sub(1)) {
                *slot = Some(idx);
            }
        }
    }
    let missing = owner.iter().filter(|o| o.is_none()).count();
    let at = At {
        rev: &rev,
        kind: "blame",
        path: &path,
        refs: &refs,
    };
    let etag = complete.then(|| etag_for(&["blame", &repo_name, &commit_id, &rev, &path]));
    let body = page(
        &format!("blame {path} · {repo_name}"),
        Some(&Nav {
            repo: &repo_name,
            at: None,
        }),
        html! {
            div.bar { (switcher(&repo_name, &at)) (crumbs(&repo_name, &rev, &path)) span.muted { "blame" } }
            @if !complete {
                p.notice {
                    "Blame stopped after " (BLAME_BUDGET.as_secs()) " seconds: "
                    (plural(missing as i64, "line is", "lines are")) " not attributed yet (left blank). "
                    "Blame an older revision or a shorter file for a full answer."
                }
            }
            div.box {
                div.head {
                    a href={ "/" (repo_name) "/blob/" (enc_rev(&rev)) "/" (enc(&path)) } { "View file" }
                    a href={ "/" (repo_name) "/log/" (enc_rev(&rev)) "/" (enc(&path)) } { "History" }
                }
                div.scroll {
                    table.code.blame {
                        tbody {
                            @for (idx, line) in lines.iter().enumerate() {
                                @let n = idx + 1;
                                @let group = owner[idx];
                                @let first = group.is_some_and(|g| parser.groups[g].start == n) || (group.is_none() && (idx == 0 || owner[idx - 1].is_some()));
                                tr id={ "L" (n) } class=[first.then_some("first")] {
                                    td.who {
                                        @if first {
                                            @if let Some(g) = group {
                                                @let id = &parser.groups[g].commit;
                                                @let info = parser.commits.get(id).cloned().unwrap_or_default();
                                                a.mono href={ "/" (repo_name) "/commit/" (id) } title=(info.summary) { (short(id)) }
                                                " " (info.author) " · " span.muted { (age(info.time)) }
                                            } @else {
                                                span.muted { "not attributed" }
                                            }
                                        }
                                    }
                                    td.ln { a href={ "#L" (n) } { (n) } }
                                    td { (PreEscaped(line)) }
                                }
                            }
                        }
                    }
                }
            }
        },
    );
    Ok(respond(&headers, etag, body))
}

/// Run `git blame --incremental` until it ends or `budget` passes; true when it ended.
async fn run_blame(
    git_dir: &std::path::Path,
    commit: &str,
    path: &str,
    budget: Duration,
) -> Result<(Parser, bool), WebError> {
    let mut cmd = crate::refs::git_command(Some(git_dir));
    cmd.args(["blame", "--incremental", commit, "--", path])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().map_err(git_err)?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut parser = Parser::default();
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            parser.line(&line);
        }
    };
    let complete = tokio::time::timeout(budget, read).await.is_ok();
    if complete {
        let status = child.wait().await.map_err(git_err)?;
        if !status.success() {
            return Err(git_err(format!("git blame exited with {status}")));
        }
    } else {
        let _ = child.kill().await;
    }
    Ok((parser, complete))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_output() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let mut parser = Parser::default();
        for line in [
            format!("{a} 1 1 2"),
            "author Ada".into(),
            "author-time 100".into(),
            "summary first one".into(),
            "filename f.txt".into(),
            format!("{b} 3 3 1"),
            "author Bob".into(),
            "author-time 200".into(),
            "summary second".into(),
            "previous cccc f.txt".into(),
            "filename f.txt".into(),
            format!("{a} 2 4 1"),
            "filename f.txt".into(),
        ] {
            parser.line(&line);
        }
        assert_eq!(parser.groups.len(), 3);
        assert_eq!((parser.groups[2].start, parser.groups[2].len), (4, 1));
        assert_eq!(parser.commits[&a].author, "Ada");
        assert_eq!(parser.commits[&b].summary, "second");
        assert_eq!(parser.commits[&b].time, 200);
    }
}
