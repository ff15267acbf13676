//! `/repos/{name}/runs`: CI runs created and driven by nimbusd (the owner's credentials), read
//! by anyone who may read the repository; cancel and rerun need write access.
//!
//! A run's state is derived from its jobs (`ci::derive`); every change and the events it
//! causes (RunStarted, RunCompleted, RunCancelRequested, RunRerunRequested) are written in one
//! transaction under `Ci::lock`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::api::repos::find;
use crate::api::statuses::{bad, commit_sha};
use crate::api::{ApiJson, Caller, iso8601};
use crate::auth::{self, Perm};
use crate::ci::store::{self, JobRow, JobUpdate, NewJob, NewRun, Outcome, Refused, RunRow};
use crate::ci::{self, Conclusion, State as JobState};
use crate::error::ApiError;
use crate::events;
use crate::repos::RepoEntry;

/// Largest log chunk one request may carry.
pub const LOG_CHUNK_LIMIT: usize = 8 << 20;
pub const MAX_JOBS: usize = 1000;
pub const MAX_STEPS: usize = 1000;
pub const MAX_LABELS: usize = 32;
/// Longest a job token lives.
pub const TOKEN_TTL_MAX: u64 = 6 * 3600;
pub const TOKEN_TTL_DEFAULT: u64 = 3600;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/repos/{name}/runs", get(list).post(create))
        .route("/repos/{name}/runs/{number}", get(show))
        .route("/repos/{name}/runs/{number}/cancel", post(cancel))
        .route("/repos/{name}/runs/{number}/rerun", post(rerun))
        .route("/repos/{name}/runs/{number}/jobs/{key}", patch(update_job))
        .route(
            "/repos/{name}/runs/{number}/jobs/{key}/steps/{index}",
            patch(update_step),
        )
        .route(
            "/repos/{name}/runs/{number}/jobs/{key}/logs",
            get(read_log)
                .post(append_log)
                .layer(DefaultBodyLimit::max(LOG_CHUNK_LIMIT)),
        )
        .route("/repos/{name}/runs/{number}/jobs/{key}/token", post(token))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// full commit id
    sha: String,
    #[serde(rename = "ref")]
    ref_name: String,
    /// the workflow file, e.g. `.nimbus/workflows/ci.yml`
    workflow: String,
    name: String,
    /// e.g. push
    event: String,
    /// username of who pushed
    pusher: String,
    /// the jobs; absent when `error` is set
    jobs: Option<Vec<CreateJob>>,
    /// why the workflow could not be run (`file:line:col: key: message`); the run is created
    /// finished in state `error`, without jobs
    error: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    key: String,
    name: String,
    #[serde(default)]
    needs: Vec<String>,
    #[serde(default)]
    runs_on: Vec<String>,
    /// step names, in order
    #[serde(default)]
    steps: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Step {
    index: i64,
    name: String,
    state: JobState,
    exit_code: Option<i64>,
    started_at: Option<String>,
    finished_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Job {
    key: String,
    name: String,
    needs: Vec<String>,
    runs_on: Vec<String>,
    state: JobState,
    attempt: i64,
    machine: Option<String>,
    exit_code: Option<i64>,
    error: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
    log_bytes: i64,
    log_truncated: bool,
    steps: Vec<Step>,
}

#[derive(Serialize, ToSchema)]
pub struct Run {
    number: i64,
    sha: String,
    #[serde(rename = "ref")]
    ref_name: String,
    workflow: String,
    name: String,
    event: String,
    pusher: String,
    /// queued, running, or the conclusion once finished
    state: String,
    conclusion: Option<Conclusion>,
    error: Option<String>,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    cancel_requested: bool,
    /// the run's page
    web_url: String,
    jobs: Vec<Job>,
}

fn step_view(row: store::StepRow) -> Step {
    Step {
        state: row.state(),
        index: row.idx,
        name: row.name,
        exit_code: row.exit_code,
        started_at: row.started_at.map(iso8601),
        finished_at: row.finished_at.map(iso8601),
    }
}

fn job_view(row: JobRow, steps: Vec<Step>) -> Job {
    Job {
        state: row.state(),
        needs: row.needs(),
        runs_on: row.runs_on(),
        key: row.job_key,
        name: row.name,
        attempt: row.attempt,
        machine: row.machine,
        exit_code: row.exit_code,
        error: row.error,
        started_at: row.started_at.map(iso8601),
        finished_at: row.finished_at.map(iso8601),
        log_bytes: row.log_bytes,
        log_truncated: row.log_truncated != 0,
        steps,
    }
}

/// A run with its jobs and their steps, as the API shows it.
pub(crate) async fn run_view(
    state: &AppState,
    entry: &RepoEntry,
    row: RunRow,
) -> Result<Run, ApiError> {
    let jobs = store::jobs_of(&state.db, &row.id).await?;
    let mut steps: HashMap<String, Vec<Step>> = HashMap::new();
    for step in store::steps_of(&state.db, &row.id).await? {
        steps
            .entry(step.job_key.clone())
            .or_default()
            .push(step_view(step));
    }
    let jobs = jobs
        .into_iter()
        .map(|job| {
            let job_steps = steps.remove(&job.job_key).unwrap_or_default();
            job_view(job, job_steps)
        })
        .collect();
    Ok(Run {
        web_url: format!("{}/{}/runs/{}", state.base_url, entry.name, row.number),
        conclusion: row.conclusion.as_deref().and_then(Conclusion::parse),
        number: row.number,
        sha: row.sha,
        ref_name: row.ref_name,
        workflow: row.workflow,
        name: row.name,
        event: row.event,
        pusher: row.pusher,
        state: row.state,
        error: row.error,
        created_at: iso8601(row.created_at),
        started_at: row.started_at.map(iso8601),
        finished_at: row.finished_at.map(iso8601),
        cancel_requested: row.cancel_requested != 0,
        jobs,
    })
}

pub(crate) fn parse_number(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
        ApiError::invalid(
            "number",
            format!(
                "'{}' is not a run number (1, 2, …)",
                text.chars().take(40).collect::<String>()
            ),
        )
    })
}

pub(crate) async fn load_run(
    state: &AppState,
    entry: &RepoEntry,
    number: &str,
) -> Result<RunRow, ApiError> {
    let number = parse_number(number)?;
    store::run_by_number(&state.db, &entry.id, number)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("number: '{}' has no run {number}", entry.name)))
}

async fn load_job(state: &AppState, run: &RunRow, key: &str) -> Result<JobRow, ApiError> {
    store::jobs_of(&state.db, &run.id)
        .await?
        .into_iter()
        .find(|j| j.job_key == key)
        .ok_or_else(|| ApiError::not_found(format!("key: run {} has no job '{key}'", run.number)))
}

/// The repository for an owner-only call (nimbusd): 404 if invisible, 403 for anyone else.
fn owner_repo(state: &AppState, caller: &Caller, name: &str) -> Result<Arc<RepoEntry>, ApiError> {
    let (entry, _) = find(state, caller, name, Perm::Read)?;
    caller.require_owner()?;
    Ok(entry)
}

fn event_of(
    state: &AppState,
    entry: &RepoEntry,
) -> impl Fn(&'static str, &RunRow) -> crate::db::NewEvent + Sync + use<> {
    let url = format!("{}/{}", state.base_url, entry.name);
    let repo = entry.name.clone();
    move |kind, run| events::run_event(kind, &repo, &url, run, &[])
}

fn check_create(body: &CreateRun) -> Result<(), ApiError> {
    ci::check_text("ref", &body.ref_name, 1, 255, false).map_err(bad)?;
    ci::check_text("workflow", &body.workflow, 1, 255, false).map_err(bad)?;
    ci::check_text("name", &body.name, 1, 255, false).map_err(bad)?;
    ci::check_text("event", &body.event, 1, 64, false).map_err(bad)?;
    ci::check_text("pusher", &body.pusher, 1, 100, false).map_err(bad)?;
    match (&body.jobs, &body.error) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "jobs",
                "must be absent when error is set (a run that failed to parse has no jobs)",
            ));
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "jobs",
                "required (or error, for a workflow that failed to parse)",
            ));
        }
        (None, Some(error)) => {
            ci::check_text("error", error, 1, 4000, true).map_err(bad)?;
        }
        (Some(jobs), None) => check_jobs(jobs)?,
    }
    Ok(())
}

fn check_jobs(jobs: &[CreateJob]) -> Result<(), ApiError> {
    if jobs.is_empty() || jobs.len() > MAX_JOBS {
        return Err(ApiError::invalid(
            "jobs",
            format!("must hold 1 to {MAX_JOBS} jobs (got {})", jobs.len()),
        ));
    }
    let mut keys = HashSet::new();
    for (idx, job) in jobs.iter().enumerate() {
        let at = format!("jobs[{idx}]");
        ci::check_job_key(&format!("{at}.key"), &job.key).map_err(bad)?;
        if !keys.insert(job.key.as_str()) {
            return Err(bad(format!("{at}.key: '{}' appears twice", job.key)));
        }
        ci::check_text(&format!("{at}.name"), &job.name, 1, 255, false).map_err(bad)?;
        if job.runs_on.len() > MAX_LABELS {
            return Err(bad(format!(
                "{at}.runs_on: at most {MAX_LABELS} labels (got {})",
                job.runs_on.len()
            )));
        }
        for label in &job.runs_on {
            ci::check_text(&format!("{at}.runs_on"), label, 1, 100, false).map_err(bad)?;
        }
        if job.steps.len() > MAX_STEPS {
            return Err(bad(format!(
                "{at}.steps: at most {MAX_STEPS} steps (got {})",
                job.steps.len()
            )));
        }
        for (step_idx, step) in job.steps.iter().enumerate() {
            ci::check_text(&format!("{at}.steps[{step_idx}]"), step, 1, 255, false).map_err(bad)?;
        }
    }
    for (idx, job) in jobs.iter().enumerate() {
        for need in &job.needs {
            if !keys.contains(need.as_str()) {
                return Err(bad(format!(
                    "jobs[{idx}].needs: no job '{}' in this run",
                    need.chars().take(100).collect::<String>()
                )));
            }
        }
    }
    let graph: Vec<(&str, Vec<&str>)> = jobs
        .iter()
        .map(|j| (j.key.as_str(), j.needs.iter().map(String::as_str).collect()))
        .collect();
    ci::check_acyclic(&graph).map_err(|key| {
        bad(format!(
            "jobs: '{key}' needs itself (the needs form a cycle)"
        ))
    })?;
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/repos/{name}/runs", tag = "runs", params(("name" = String, Path)),
    request_body = CreateRun,
    responses((status = 201, body = Run), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<CreateRun>,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    let entry = owner_repo(&state, &caller, &name)?;
    check_create(&body)?;
    let sha = commit_sha(&entry, &body.sha).await?;
    let failed = body.error.is_some();
    let run = NewRun {
        repo_id: entry.id.clone(),
        sha,
        ref_name: body.ref_name,
        workflow: body.workflow,
        name: body.name,
        event: body.event,
        pusher: body.pusher,
        error: body.error,
        jobs: body
            .jobs
            .unwrap_or_default()
            .into_iter()
            .map(|j| NewJob {
                key: j.key,
                name: j.name,
                needs: j.needs,
                runs_on: j.runs_on,
                steps: j.steps,
            })
            .collect(),
    };
    let event = event_of(&state, &entry);
    let row = {
        let _lock = state.ci.lock.lock().await;
        store::insert_run(&state.db, run, |row| {
            if failed {
                vec![event(events::RUN_COMPLETED, row)]
            } else {
                Vec::new()
            }
        })
        .await?
    };
    if failed {
        state.webhook_wake.notify_one();
    }
    tracing::info!(repo.name = %entry.name, run.number = row.number, run.sha = %row.sha, "run created");
    Ok((
        StatusCode::CREATED,
        Json(run_view(&state, &entry, row).await?),
    ))
}

#[derive(Deserialize, IntoParams)]
pub struct RunsQuery {
    /// only runs of this commit (full id)
    sha: Option<String>,
    /// only runs of this ref
    #[serde(rename = "ref")]
    ref_name: Option<String>,
    /// at most this many, newest first (default 50, max 200)
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/repos/{name}/runs", tag = "runs", params(("name" = String, Path), RunsQuery),
    responses((status = 200, body = Vec<Run>), (status = 422, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<RunsQuery>,
) -> Result<Json<Vec<Run>>, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Read)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 200"));
    }
    let sha = match query.sha.as_deref().filter(|s| !s.is_empty()) {
        Some(sha) => Some(
            ci::full_sha(sha)
                .ok_or_else(|| ApiError::invalid("sha", "must be a full 40-character commit id"))?,
        ),
        None => None,
    };
    if let Some(ref_name) = &query.ref_name {
        ci::check_text("ref", ref_name, 0, 255, false).map_err(bad)?;
    }
    let rows = store::runs_of(
        &state.db,
        &entry.id,
        sha.as_deref(),
        query.ref_name.as_deref(),
        limit,
    )
    .await?;
    let mut runs = Vec::with_capacity(rows.len());
    for row in rows {
        runs.push(run_view(&state, &entry, row).await?);
    }
    Ok(Json(runs))
}

#[utoipa::path(get, path = "/api/v1/repos/{name}/runs/{number}", tag = "runs",
    params(("name" = String, Path), ("number" = i64, Path)),
    responses((status = 200, body = Run), (status = 404, body = crate::error::ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, number)): Path<(String, String)>,
) -> Result<Json<Run>, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Read)?;
    let row = load_run(&state, &entry, &number).await?;
    Ok(Json(run_view(&state, &entry, row).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateJob {
    state: JobState,
    /// which machine runs it (at most 255 bytes)
    machine: Option<String>,
    exit_code: Option<i64>,
    /// why it errored (at most 4000 bytes)
    error: Option<String>,
}

fn check_exit_code(exit_code: Option<i64>) -> Result<(), ApiError> {
    if let Some(code) = exit_code
        && i32::try_from(code).is_err()
    {
        return Err(ApiError::invalid(
            "exit_code",
            format!("{code} is out of range for an exit code"),
        ));
    }
    Ok(())
}

fn refused(refused: Refused) -> ApiError {
    match refused {
        Refused::NotFound(message) => ApiError::not_found(message),
        Refused::Conflict(message) => ApiError::conflict(message),
    }
}

#[utoipa::path(patch, path = "/api/v1/repos/{name}/runs/{number}/jobs/{key}", tag = "runs",
    params(("name" = String, Path), ("number" = i64, Path), ("key" = String, Path)),
    request_body = UpdateJob,
    responses((status = 200, body = Job), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "an illegal move, e.g. out of a finished state", body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub async fn update_job(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, number, key)): Path<(String, String, String)>,
    ApiJson(body): ApiJson<UpdateJob>,
) -> Result<Json<Job>, ApiError> {
    let entry = owner_repo(&state, &caller, &name)?;
    if let Some(machine) = &body.machine {
        ci::check_text("machine", machine, 1, 255, false).map_err(bad)?;
    }
    check_exit_code(body.exit_code)?;
    if let Some(error) = &body.error {
        ci::check_text("error", error, 0, 4000, true).map_err(bad)?;
    }
    let event = event_of(&state, &entry);
    {
        let _lock = state.ci.lock.lock().await;
        let run = load_run(&state, &entry, &number).await?;
        let update = JobUpdate {
            state: body.state,
            machine: body.machine,
            exit_code: body.exit_code,
            error: body.error,
        };
        if let Outcome::Refused(why) =
            store::update_job(&state.db, &run, &key, update, &event).await?
        {
            return Err(refused(why));
        }
    }
    state.webhook_wake.notify_one();
    job_response(&state, &entry, &number, &key).await
}

async fn job_response(
    state: &AppState,
    entry: &RepoEntry,
    number: &str,
    key: &str,
) -> Result<Json<Job>, ApiError> {
    let run = load_run(state, entry, number).await?;
    let job = load_job(state, &run, key).await?;
    let steps = store::steps_of(&state.db, &run.id)
        .await?
        .into_iter()
        .filter(|s| s.job_key == key)
        .map(step_view)
        .collect();
    Ok(Json(job_view(job, steps)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateStep {
    state: JobState,
    exit_code: Option<i64>,
}

#[utoipa::path(patch, path = "/api/v1/repos/{name}/runs/{number}/jobs/{key}/steps/{index}", tag = "runs",
    params(("name" = String, Path), ("number" = i64, Path), ("key" = String, Path), ("index" = i64, Path)),
    request_body = UpdateStep,
    responses((status = 200, body = Job), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn update_step(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, number, key, index)): Path<(String, String, String, String)>,
    ApiJson(body): ApiJson<UpdateStep>,
) -> Result<Json<Job>, ApiError> {
    let entry = owner_repo(&state, &caller, &name)?;
    let index: i64 = index
        .parse()
        .ok()
        .filter(|i| *i >= 0)
        .ok_or_else(|| ApiError::invalid("index", "must be a step index (0, 1, …)"))?;
    check_exit_code(body.exit_code)?;
    {
        let _lock = state.ci.lock.lock().await;
        let run = load_run(&state, &entry, &number).await?;
        load_job(&state, &run, &key).await?;
        if let Outcome::Refused(why) =
            store::update_step(&state.db, &run, &key, index, body.state, body.exit_code).await?
        {
            return Err(refused(why));
        }
    }
    job_response(&state, &entry, &number, &key).await
}

#[derive(Deserialize, IntoParams)]
pub struct LogQuery {
    /// a step index; absent for output outside any step (append) or the whole log (read)
    step: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Appended {
    /// bytes of this chunk that were stored
    stored: usize,
    /// the job's log size now
    log_bytes: i64,
    log_truncated: bool,
}

fn parse_step(
    step: Option<&str>,
    job: &JobRow,
    steps: &[store::StepRow],
) -> Result<Option<i64>, ApiError> {
    let Some(text) = step else {
        return Ok(None);
    };
    let index: i64 = text
        .parse()
        .ok()
        .filter(|i| *i >= 0)
        .ok_or_else(|| ApiError::invalid("step", "must be a step index (0, 1, …)"))?;
    if !steps
        .iter()
        .any(|s| s.job_key == job.job_key && s.idx == index)
    {
        return Err(ApiError::not_found(format!(
            "step: job '{}' has no step {index}",
            job.job_key
        )));
    }
    Ok(Some(index))
}

#[utoipa::path(post, path = "/api/v1/repos/{name}/runs/{number}/jobs/{key}/logs", tag = "runs",
    params(("name" = String, Path), ("number" = i64, Path), ("key" = String, Path), LogQuery),
    request_body(content = String, content_type = "text/plain", description = "log output, already masked"),
    responses((status = 200, body = Appended), (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "the job is finished", body = crate::error::ErrorBody),
        (status = 413, description = "one request carries at most 8 MiB")))]
pub async fn append_log(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, number, key)): Path<(String, String, String)>,
    Query(query): Query<LogQuery>,
    body: Bytes,
) -> Result<Json<Appended>, ApiError> {
    let entry = owner_repo(&state, &caller, &name)?;
    let run = load_run(&state, &entry, &number).await?;
    let _lock = state.ci.lock.lock().await;
    let job = load_job(&state, &run, &key).await?;
    let steps = store::steps_of(&state.db, &run.id).await?;
    let step = parse_step(query.step.as_deref(), &job, &steps)?;
    if job.state().is_terminal() {
        return Err(ApiError::conflict(format!(
            "key: job '{key}' is finished ({}); its log is closed",
            job.state
        )));
    }
    let appended = store::append_log(
        &state.db,
        &run.id,
        &key,
        step.unwrap_or(-1),
        &body,
        state.ci.log_limit,
    )
    .await?;
    Ok(Json(Appended {
        stored: appended.stored,
        log_bytes: job.log_bytes + appended.stored as i64,
        log_truncated: appended.truncated,
    }))
}

#[utoipa::path(get, path = "/api/v1/repos/{name}/runs/{number}/jobs/{key}/logs", tag = "runs",
    params(("name" = String, Path), ("number" = i64, Path), ("key" = String, Path), LogQuery),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = crate::error::ErrorBody)))]
pub async fn read_log(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, number, key)): Path<(String, String, String)>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Read)?;
    let run = load_run(&state, &entry, &number).await?;
    let job = load_job(&state, &run, &key).await?;
    let steps = store::steps_of(&state.db, &run.id).await?;
    let step = parse_step(query.step.as_deref(), &job, &steps)?;
    let data = store::read_log(&state.db, &run.id, &key, step).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], data).into_response())
}

#[utoipa::path(post, path = "/api/v1/repos/{name}/runs/{number}/cancel", tag = "runs",
    params(("name" = String, Path), ("number" = i64, Path)),
    responses((status = 200, body = Run), (status = 403, body = crate::error::ErrorBody),
        (status = 409, description = "the run is finished", body = crate::error::ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, number)): Path<(String, String)>,
) -> Result<Json<Run>, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Write)?;
    let url = format!("{}/{}", state.base_url, entry.name);
    let run = {
        let _lock = state.ci.lock.lock().await;
        let run = load_run(&state, &entry, &number).await?;
        if run.is_finished() {
            return Err(ApiError::conflict(format!(
                "number: run {} is finished ({})",
                run.number, run.state
            )));
        }
        let event = events::run_event(events::RUN_CANCEL_REQUESTED, &entry.name, &url, &run, &[]);
        if store::request_cancel(&state.db, &run, event).await? {
            tracing::info!(repo.name = %entry.name, run.number = run.number, user.name = %caller.0.name(), "run cancel requested");
        }
        load_run(&state, &entry, &number).await?
    };
    state.webhook_wake.notify_one();
    Ok(Json(run_view(&state, &entry, run).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunBody {
    /// job keys; these and the jobs that need them run again (all jobs when absent)
    jobs: Option<Vec<String>>,
}

#[utoipa::path(post, path = "/api/v1/repos/{name}/runs/{number}/rerun", tag = "runs",
    params(("name" = String, Path), ("number" = i64, Path)),
    request_body(content = Option<RerunBody>, description = "optional"),
    responses((status = 200, body = Run), (status = 403, body = crate::error::ErrorBody),
        (status = 409, description = "the run has not finished", body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub async fn rerun(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, number)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Run>, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Write)?;
    let body: RerunBody = optional_json(&body)?.unwrap_or(RerunBody { jobs: None });
    let url = format!("{}/{}", state.base_url, entry.name);
    let run = {
        let _lock = state.ci.lock.lock().await;
        let run = load_run(&state, &entry, &number).await?;
        if !run.is_finished() {
            return Err(ApiError::conflict(format!(
                "number: run {} is {}; rerun it once it has finished (or cancel it)",
                run.number, run.state
            )));
        }
        let jobs = store::jobs_of(&state.db, &run.id).await?;
        if jobs.is_empty() {
            return Err(ApiError::conflict(format!(
                "number: run {} has no jobs (its workflow did not parse); push a fix instead",
                run.number
            )));
        }
        let keys = rerun_set(&jobs, body.jobs.as_deref())?;
        let event = events::run_event(events::RUN_RERUN_REQUESTED, &entry.name, &url, &run, &keys);
        store::rerun(&state.db, &run, &keys, event).await?;
        tracing::info!(repo.name = %entry.name, run.number = run.number, n_jobs = keys.len(), "run rerun requested");
        load_run(&state, &entry, &number).await?
    };
    state.webhook_wake.notify_one();
    Ok(Json(run_view(&state, &entry, run).await?))
}

/// An optional JSON body: empty means `None`.
fn optional_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<Option<T>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body).map(Some).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("body: {e}"),
        )
    })
}

/// The asked jobs and, transitively, the jobs that need them, in run order.
fn rerun_set(jobs: &[JobRow], asked: Option<&[String]>) -> Result<Vec<String>, ApiError> {
    let Some(asked) = asked else {
        return Ok(jobs.iter().map(|j| j.job_key.clone()).collect());
    };
    if asked.is_empty() {
        return Err(ApiError::invalid(
            "jobs",
            "must name at least one job (leave it out to rerun all)",
        ));
    }
    let mut chosen: HashSet<String> = HashSet::new();
    for key in asked {
        if !jobs.iter().any(|j| &j.job_key == key) {
            return Err(ApiError::invalid(
                "jobs",
                format!(
                    "no job '{}' in this run",
                    key.chars().take(100).collect::<String>()
                ),
            ));
        }
        chosen.insert(key.clone());
    }
    loop {
        let before = chosen.len();
        for job in jobs {
            if job.needs().iter().any(|n| chosen.contains(n)) {
                chosen.insert(job.job_key.clone());
            }
        }
        if chosen.len() == before {
            break;
        }
    }
    Ok(jobs
        .iter()
        .filter(|j| chosen.contains(&j.job_key))
        .map(|j| j.job_key.clone())
        .collect())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// lifetime in seconds, 1 to 21600 (default 3600); the token also ends with its job
    ttl_seconds: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct JobToken {
    /// read-only, this repository only; use as the HTTP Basic password or a Bearer token
    token: String,
    expires_at: String,
}

#[utoipa::path(post, path = "/api/v1/repos/{name}/runs/{number}/jobs/{key}/token", tag = "runs",
    params(("name" = String, Path), ("number" = i64, Path), ("key" = String, Path)),
    request_body(content = Option<TokenRequest>, description = "optional"),
    responses((status = 201, body = JobToken), (status = 403, body = crate::error::ErrorBody),
        (status = 409, description = "the job is finished", body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub async fn token(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, number, key)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<JobToken>), ApiError> {
    let entry = owner_repo(&state, &caller, &name)?;
    let body: TokenRequest = optional_json(&body)?.unwrap_or(TokenRequest { ttl_seconds: None });
    let ttl = body.ttl_seconds.unwrap_or(TOKEN_TTL_DEFAULT);
    if !(1..=TOKEN_TTL_MAX).contains(&ttl) {
        return Err(ApiError::invalid(
            "ttl_seconds",
            format!("must be 1 to {TOKEN_TTL_MAX} (6 hours), got {ttl}"),
        ));
    }
    let _lock = state.ci.lock.lock().await;
    let run = load_run(&state, &entry, &number).await?;
    let job = load_job(&state, &run, &key).await?;
    if job.state().is_terminal() {
        return Err(ApiError::conflict(format!(
            "key: job '{key}' is finished ({}); tokens are only for queued or running jobs",
            job.state
        )));
    }
    let token = format!("{}{}", auth::JOB_TOKEN_PREFIX, auth::generate_secret(30));
    let expires_at = crate::db::now_ms() + (ttl as i64) * 1000;
    store::insert_job_token(&state.db, &auth::token_hash(&token), &run, &key, expires_at).await?;
    Ok((
        StatusCode::CREATED,
        Json(JobToken {
            token,
            expires_at: iso8601(expires_at),
        }),
    ))
}
