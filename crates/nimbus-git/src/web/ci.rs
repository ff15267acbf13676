//! The CI pages: a repository's runs, one run with its jobs and steps, one job's log per step,
//! and the checks part of the commit page. Server-rendered and readable without JavaScript;
//! while something runs a page refreshes itself every 3 seconds (`<meta http-equiv=refresh>`).
//! The commit page (`web/commit.rs`) calls [`commit_checks`] for its part.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use maud::{Markup, PreEscaped, html};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::api::runs::parse_number;
use crate::ci::store::{self, JobRow, RunRow, StepRow};
use crate::ci::{self, State as JobState, StatusState};
use crate::error::ApiError;
use crate::repos::RepoEntry;
use crate::web::{Nav, WebError, caller, enc, page, visible};

/// The most of one step's log a page shows; the whole log is in the API.
const PAGE_LOG_LIMIT: usize = 1 << 20;
const RUNS_PAGE: i64 = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/{repo}/runs", get(runs))
        .route("/{repo}/runs/{number}", get(run))
        .route("/{repo}/runs/{number}/jobs/{key}", get(job))
}

const CI_CSS: &str = ".state{display:inline-block;padding:0 .4rem;border-radius:.6rem;font-size:.85rem;border:1px solid #ccc}\
.s-success{background:#dafbe1;border-color:#4ac26b}.s-failure,.s-error{background:#ffebe9;border-color:#ff8182}\
.s-running{background:#fff8c5;border-color:#d4a72c}.s-queued,.s-pending{background:#f6f8fa}\
.s-cancelled,.s-skipped{background:#eaeef2;color:#57606a}ul.steps{margin:.2rem 0;padding-left:1.2rem}";

fn badge(state: &str) -> Markup {
    html! { span class={ "state s-" (state) } { (state) } }
}

fn refresh() -> Markup {
    html! { meta http-equiv="refresh" content="3"; }
}

fn style() -> Markup {
    html! { style { (PreEscaped(CI_CSS)) } }
}

fn duration(start: Option<i64>, end: Option<i64>) -> String {
    let Some(start) = start else {
        return String::new();
    };
    let end = end.unwrap_or_else(crate::db::now_ms);
    let secs = (end - start).max(0) / 1000;
    if secs >= 3600 {
        format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

fn when(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .unwrap_or_default()
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn run_link(repo: &str, run: &RunRow) -> String {
    format!("/{repo}/runs/{}", run.number)
}

fn job_link(repo: &str, run: &RunRow, key: &str) -> String {
    format!("/{repo}/runs/{}/jobs/{}", run.number, enc(key))
}

fn web(err: crate::error::Error) -> WebError {
    WebError::from(err)
}

/// The checks part of a commit page, and a version string that changes whenever it does (for
/// the page's ETag).
pub struct CommitChecks {
    pub markup: Markup,
    pub version: String,
}

/// Statuses and runs of commit `sha` (full id) for the commit page.
pub async fn commit_checks(
    state: &AppState,
    entry: &RepoEntry,
    sha: &str,
) -> Result<CommitChecks, WebError> {
    let statuses = store::latest_statuses(&state.db, &entry.id, sha)
        .await
        .map_err(web)?;
    let runs = store::runs_of(&state.db, &entry.id, Some(sha), None, 20)
        .await
        .map_err(web)?;
    let mut run_jobs = Vec::with_capacity(runs.len());
    for run in runs {
        let jobs = store::jobs_of(&state.db, &run.id).await.map_err(web)?;
        run_jobs.push((run, jobs));
    }
    let live = run_jobs.iter().any(|(run, _)| !run.is_finished())
        || statuses
            .iter()
            .any(|s| s.state == "pending" || s.state == "running");
    let states: Vec<StatusState> = statuses
        .iter()
        .filter_map(|s| StatusState::parse(&s.state))
        .collect();
    let combined = ci::combine(&states);
    let repo = &entry.name;
    let markup = if statuses.is_empty() && run_jobs.is_empty() {
        html! {}
    } else {
        html! {
            (style())
            @if live { (refresh()) }
            section.checks {
                h3 { "Checks " (badge(combined.as_str())) }
                @if !statuses.is_empty() {
                    table {
                        @for status in &statuses {
                            tr {
                                td { (badge(&status.state)) }
                                td.mono { (status.context) }
                                td { (status.description.as_deref().unwrap_or("")) }
                                td { @if let Some(url) = &status.target_url { a href=(url) rel="nofollow" { "details" } } }
                            }
                        }
                    }
                }
                @for (run, jobs) in &run_jobs {
                    p {
                        (badge(&run.state)) " "
                        a href=(run_link(repo, run)) { (run.name) " #" (run.number) }
                        span.muted { " · " (run.workflow) " · " (run.event) " by " (run.pusher) }
                    }
                    @if let Some(error) = &run.error { pre.error { (error) } }
                    @if !jobs.is_empty() {
                        ul.steps {
                            @for job in jobs {
                                li { (badge(&job.state)) " " a href=(job_link(repo, run, &job.job_key)) { (job.name) }
                                     span.muted { " " (duration(job.started_at, job.finished_at)) } }
                            }
                        }
                    }
                }
            }
        }
    };
    let version = hex::encode(&Sha256::digest(markup.0.as_bytes())[..8]);
    // A running duration changes every second; the refresh makes the browser ask again anyway.
    let version = if live {
        format!("live-{}", crate::db::now_ms())
    } else {
        version
    };
    Ok(CommitChecks { markup, version })
}

async fn runs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let principal = caller(&state, &headers).await?;
    let entry = visible(&state, &principal, &name)?;
    let runs = store::runs_of(&state.db, &entry.id, None, None, RUNS_PAGE)
        .await
        .map_err(web)?;
    let live = runs.iter().any(|r| !r.is_finished());
    let repo = entry.name.clone();
    let body = page(
        &format!("runs · {repo}"),
        Some(&Nav {
            repo: &repo,
            at: None,
        }),
        html! {
            (style())
            @if live { (refresh()) }
            h2 { "Runs" }
            @if runs.is_empty() { p.muted { "No runs yet. Runs appear here when nimbusd runs a workflow from " code { ".nimbus/workflows/" } "." } }
            table {
                @if !runs.is_empty() {
                    tr { th { "run" } th { "state" } th { "commit" } th { "ref" } th { "event" } th { "created" } th { "duration" } }
                }
                @for run in &runs {
                    tr {
                        td { a href=(run_link(&repo, run)) { (run.name) " #" (run.number) } br; span.muted.mono { (run.workflow) } }
                        td { (badge(&run.state)) @if run.cancel_requested != 0 && !run.is_finished() { " " span.muted { "cancelling" } } }
                        td.mono { a href={ "/" (repo) "/commit/" (run.sha) } { (short(&run.sha)) } }
                        td.mono { (run.ref_name) }
                        td { (run.event) " by " (run.pusher) }
                        td.muted { (when(run.created_at)) }
                        td.muted { (duration(run.started_at, run.finished_at)) }
                    }
                }
            }
        },
    );
    Ok(Html(body.into_string()).into_response())
}

async fn load(state: &AppState, entry: &Arc<RepoEntry>, number: &str) -> Result<RunRow, WebError> {
    let number = parse_number(number)?;
    store::run_by_number(&state.db, &entry.id, number)
        .await
        .map_err(web)?
        .ok_or_else(|| {
            WebError::from(ApiError::not_found(format!(
                "'{}' has no run {number}",
                entry.name
            )))
        })
}

fn steps_of_job<'a>(steps: &'a [StepRow], key: &str) -> Vec<&'a StepRow> {
    steps.iter().filter(|s| s.job_key == key).collect()
}

fn run_header(repo: &str, run: &RunRow) -> Markup {
    html! {
        h2 { (run.name) " #" (run.number) " " (badge(&run.state)) }
        p.muted {
            (run.workflow) " · " (run.event) " by " (run.pusher) " · "
            a.mono href={ "/" (repo) "/commit/" (run.sha) } { (short(&run.sha)) } " on " span.mono { (run.ref_name) }
            " · created " (when(run.created_at))
            @if run.started_at.is_some() { " · " (duration(run.started_at, run.finished_at)) }
        }
        @if run.cancel_requested != 0 && !run.is_finished() { p { "Cancellation requested." } }
        @if let Some(error) = &run.error { pre.error { (error) } }
    }
}

async fn run(
    State(state): State<AppState>,
    Path((name, number)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let principal = caller(&state, &headers).await?;
    let entry = visible(&state, &principal, &name)?;
    let run = load(&state, &entry, &number).await?;
    let jobs = store::jobs_of(&state.db, &run.id).await.map_err(web)?;
    let steps = store::steps_of(&state.db, &run.id).await.map_err(web)?;
    let repo = entry.name.clone();
    let body = page(
        &format!("{} #{} · {repo}", run.name, run.number),
        Some(&Nav {
            repo: &repo,
            at: None,
        }),
        html! {
            (style())
            @if !run.is_finished() { (refresh()) }
            p { a href={ "/" (repo) "/runs" } { "« all runs" } }
            (run_header(&repo, &run))
            @if !jobs.is_empty() {
                table {
                    tr { th { "job" } th { "state" } th { "runs on" } th { "needs" } th { "machine" } th { "duration" } }
                    @for job in &jobs {
                        (job_row(&repo, &run, job, &steps_of_job(&steps, &job.job_key)))
                    }
                }
            }
        },
    );
    Ok(Html(body.into_string()).into_response())
}

fn job_row(repo: &str, run: &RunRow, job: &JobRow, steps: &[&StepRow]) -> Markup {
    html! {
        tr {
            td {
                a href=(job_link(repo, run, &job.job_key)) { (job.name) }
                @if job.attempt > 1 { span.muted { " (attempt " (job.attempt) ")" } }
                @if !steps.is_empty() {
                    ul.steps {
                        @for step in steps {
                            li { (badge(&step.state)) " " (step.name)
                                 span.muted { " " (duration(step.started_at, step.finished_at))
                                    @if let Some(code) = step.exit_code { " exit " (code) } } }
                        }
                    }
                }
                @if let Some(error) = &job.error { p.error { (error) } }
            }
            td { (badge(&job.state)) @if let Some(code) = job.exit_code { " " span.muted { "exit " (code) } } }
            td.mono { (job.runs_on().join(", ")) }
            td.mono { (job.needs().join(", ")) }
            td.mono { (job.machine.as_deref().unwrap_or("")) }
            td.muted { (duration(job.started_at, job.finished_at)) }
        }
    }
}

async fn job(
    State(state): State<AppState>,
    Path((name, number, key)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let principal = caller(&state, &headers).await?;
    let entry = visible(&state, &principal, &name)?;
    let run = load(&state, &entry, &number).await?;
    let job = store::jobs_of(&state.db, &run.id)
        .await
        .map_err(web)?
        .into_iter()
        .find(|j| j.job_key == key)
        .ok_or_else(|| {
            WebError::from(ApiError::not_found(format!(
                "run {} has no job '{key}'",
                run.number
            )))
        })?;
    let steps = store::steps_of(&state.db, &run.id).await.map_err(web)?;
    let steps = steps_of_job(&steps, &key);
    let logs = store::log_by_step(&state.db, &run.id, &key)
        .await
        .map_err(web)?;
    let repo = entry.name.clone();
    let api_log = format!(
        "/api/v1/repos/{repo}/runs/{}/jobs/{}/logs",
        run.number,
        enc(&key)
    );
    let log_of = |idx: i64| logs.iter().find(|(step, _)| *step == idx).map(|(_, d)| d);
    let running = !JobState::parse(&job.state).is_some_and(JobState::is_terminal);
    let body = page(
        &format!("{} · {} #{} · {repo}", job.name, run.name, run.number),
        Some(&Nav {
            repo: &repo,
            at: None,
        }),
        html! {
            (style())
            @if running { (refresh()) }
            p { a href=(run_link(&repo, &run)) { "« " (run.name) " #" (run.number) } }
            h2 { (job.name) " " (badge(&job.state)) }
            p.muted {
                "attempt " (job.attempt)
                @if let Some(machine) = &job.machine { " · on " span.mono { (machine) } }
                @if job.started_at.is_some() { " · " (duration(job.started_at, job.finished_at)) }
                @if let Some(code) = job.exit_code { " · exit " (code) }
                " · " a href=(api_log) { "raw log" }
            }
            @if let Some(error) = &job.error { p.error { (error) } }
            @if job.log_truncated != 0 { p.error { "The log reached its size limit; later output was dropped." } }
            @if let Some(data) = log_of(-1) {
                h3 { "Job output" }
                (log_block(data))
            }
            @for step in &steps {
                h3 id={ "step-" (step.idx) } {
                    (badge(&step.state)) " " (step.name)
                    span.muted { " " (duration(step.started_at, step.finished_at))
                        @if let Some(code) = step.exit_code { " · exit " (code) } }
                }
                @match log_of(step.idx) {
                    Some(data) => (log_block(data)),
                    None => p.muted { "No output." },
                }
            }
        },
    );
    Ok(Html(body.into_string()).into_response())
}

fn log_block(data: &[u8]) -> Markup {
    let (shown, cut) = if data.len() > PAGE_LOG_LIMIT {
        (&data[data.len() - PAGE_LOG_LIMIT..], true)
    } else {
        (data, false)
    };
    let text = String::from_utf8_lossy(shown);
    html! {
        @if cut { p.muted { "Showing the last " (PAGE_LOG_LIMIT) " of " (data.len()) " bytes; the raw log has all of it." } }
        pre { (text) }
    }
}
