//! The SQL of CI: statuses, runs, jobs, steps, log chunks, job tokens and sealed secrets (the
//! tables are in `db::SCHEMA`). Writes that change a run take a transaction from [`begin`],
//! which on SQLite takes the write lock up front so a read-then-write never fails on a busy
//! snapshot. Callers hold `Ci::lock` around them.

use sqlx::{Any, FromRow, Transaction};

use crate::ci::{self, RunState, State};
use crate::db::{self, Db, NewEvent, new_id, now_ms};
use crate::error::Error;

pub type Tx = Transaction<'static, Any>;

/// A write transaction: `BEGIN IMMEDIATE` on SQLite, `BEGIN` elsewhere.
pub async fn begin(db: &Db) -> Result<Tx, Error> {
    let is_sqlite = db
        .connect_options()
        .database_url
        .scheme()
        .starts_with("sqlite");
    Ok(if is_sqlite {
        db.begin_with("BEGIN IMMEDIATE").await?
    } else {
        db.begin().await?
    })
}

#[derive(Debug, Clone, FromRow)]
pub struct StatusRow {
    pub id: String,
    pub repo_id: String,
    pub sha: String,
    pub context: String,
    pub state: String,
    pub description: Option<String>,
    pub target_url: Option<String>,
    pub creator: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct RunRow {
    pub id: String,
    pub repo_id: String,
    pub number: i64,
    pub sha: String,
    pub ref_name: String,
    pub workflow: String,
    pub name: String,
    pub event: String,
    pub pusher: String,
    pub state: String,
    pub conclusion: Option<String>,
    pub error: Option<String>,
    pub cancel_requested: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl RunRow {
    pub fn is_finished(&self) -> bool {
        self.finished_at.is_some()
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct JobRow {
    pub run_id: String,
    pub job_key: String,
    pub pos: i64,
    pub name: String,
    /// JSON array of job keys
    pub needs: String,
    /// JSON array of labels
    pub runs_on: String,
    pub state: String,
    pub attempt: i64,
    pub machine: Option<String>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub log_bytes: i64,
    pub log_truncated: i64,
}

impl JobRow {
    pub fn state(&self) -> State {
        State::parse(&self.state).unwrap_or(State::Error)
    }
    pub fn needs(&self) -> Vec<String> {
        serde_json::from_str(&self.needs).unwrap_or_default()
    }
    pub fn runs_on(&self) -> Vec<String> {
        serde_json::from_str(&self.runs_on).unwrap_or_default()
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct StepRow {
    pub run_id: String,
    pub job_key: String,
    pub idx: i64,
    pub name: String,
    pub state: String,
    pub exit_code: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl StepRow {
    pub fn state(&self) -> State {
        State::parse(&self.state).unwrap_or(State::Error)
    }
}

/// What a job token grants: read access to one repository while its job runs.
#[derive(Debug, Clone, FromRow)]
pub struct JobGrant {
    pub repo_id: String,
    pub run_id: String,
    pub job_key: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct SecretRow {
    pub name: String,
    pub updated_at: i64,
}

/// A sealed secret as stored; the value is opened only by `GET runs/{n}/secrets`.
#[derive(Clone, FromRow)]
pub struct SealedSecret {
    pub name: String,
    /// base64 of the sealed bytes
    pub sealed: String,
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSecret")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

// ---- statuses

pub async fn insert_status(db: &Db, row: &StatusRow) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO ci_statuses (id, repo_id, sha, context, state, description, target_url, creator, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&row.id)
    .bind(&row.repo_id)
    .bind(&row.sha)
    .bind(&row.context)
    .bind(&row.state)
    .bind(&row.description)
    .bind(&row.target_url)
    .bind(&row.creator)
    .bind(row.created_at)
    .execute(db)
    .await?;
    Ok(())
}

/// The latest status per context of one commit, sorted by context.
pub async fn latest_statuses(db: &Db, repo_id: &str, sha: &str) -> Result<Vec<StatusRow>, Error> {
    let rows: Vec<StatusRow> = sqlx::query_as(
        "SELECT * FROM ci_statuses WHERE repo_id = $1 AND sha = $2 ORDER BY context, created_at, id",
    )
    .bind(repo_id)
    .bind(sha)
    .fetch_all(db)
    .await?;
    let mut latest: Vec<StatusRow> = Vec::new();
    for row in rows {
        match latest.last_mut() {
            Some(last) if last.context == row.context => *last = row,
            _ => latest.push(row),
        }
    }
    Ok(latest)
}

// ---- runs

pub struct NewJob {
    pub key: String,
    pub name: String,
    pub needs: Vec<String>,
    pub runs_on: Vec<String>,
    pub steps: Vec<String>,
}

pub struct NewRun {
    pub repo_id: String,
    pub sha: String,
    pub ref_name: String,
    pub workflow: String,
    pub name: String,
    pub event: String,
    pub pusher: String,
    /// a workflow that failed to parse: the run is created finished in state `error`
    pub error: Option<String>,
    pub jobs: Vec<NewJob>,
}

/// Insert a run with its jobs and steps; `events` builds the events of its creation from the
/// stored row (RunCompleted for a run that failed to parse) and they are written with it.
pub async fn insert_run(
    db: &Db,
    run: NewRun,
    events: impl FnOnce(&RunRow) -> Vec<NewEvent>,
) -> Result<RunRow, Error> {
    let mut tx = begin(db).await?;
    let (number,): (i64,) =
        sqlx::query_as("SELECT COALESCE(MAX(number), 0) + 1 FROM ci_runs WHERE repo_id = $1")
            .bind(&run.repo_id)
            .fetch_one(&mut *tx)
            .await?;
    let now = now_ms();
    let failed = run.error.is_some();
    let row = RunRow {
        id: new_id(),
        repo_id: run.repo_id,
        number,
        sha: run.sha,
        ref_name: run.ref_name,
        workflow: run.workflow,
        name: run.name,
        event: run.event,
        pusher: run.pusher,
        state: if failed { "error" } else { "queued" }.to_owned(),
        conclusion: failed.then(|| "error".to_owned()),
        error: run.error,
        cancel_requested: 0,
        created_at: now,
        started_at: None,
        finished_at: failed.then_some(now),
    };
    sqlx::query(
        "INSERT INTO ci_runs (id, repo_id, number, sha, ref_name, workflow, name, event, pusher, state,
         conclusion, error, cancel_requested, created_at, started_at, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, $13, NULL, $14)",
    )
    .bind(&row.id)
    .bind(&row.repo_id)
    .bind(row.number)
    .bind(&row.sha)
    .bind(&row.ref_name)
    .bind(&row.workflow)
    .bind(&row.name)
    .bind(&row.event)
    .bind(&row.pusher)
    .bind(&row.state)
    .bind(&row.conclusion)
    .bind(&row.error)
    .bind(row.created_at)
    .bind(row.finished_at)
    .execute(&mut *tx)
    .await?;
    for (pos, job) in run.jobs.iter().enumerate() {
        sqlx::query(
            "INSERT INTO ci_jobs (run_id, job_key, pos, name, needs, runs_on, state, attempt, machine,
             exit_code, error, started_at, finished_at, log_bytes, log_truncated)
             VALUES ($1, $2, $3, $4, $5, $6, 'queued', 1, NULL, NULL, NULL, NULL, NULL, 0, 0)",
        )
        .bind(&row.id)
        .bind(&job.key)
        .bind(pos as i64)
        .bind(&job.name)
        .bind(serde_json::to_string(&job.needs).expect("json of strings"))
        .bind(serde_json::to_string(&job.runs_on).expect("json of strings"))
        .execute(&mut *tx)
        .await?;
        for (idx, step) in job.steps.iter().enumerate() {
            sqlx::query(
                "INSERT INTO ci_steps (run_id, job_key, idx, name, state, exit_code, started_at, finished_at)
                 VALUES ($1, $2, $3, $4, 'queued', NULL, NULL, NULL)",
            )
            .bind(&row.id)
            .bind(&job.key)
            .bind(idx as i64)
            .bind(step)
            .execute(&mut *tx)
            .await?;
        }
    }
    for event in events(&row) {
        db::insert_event(&mut tx, &row.repo_id, &event).await?;
    }
    tx.commit().await?;
    Ok(row)
}

pub async fn run_by_number(db: &Db, repo_id: &str, number: i64) -> Result<Option<RunRow>, Error> {
    Ok(
        sqlx::query_as("SELECT * FROM ci_runs WHERE repo_id = $1 AND number = $2")
            .bind(repo_id)
            .bind(number)
            .fetch_optional(db)
            .await?,
    )
}

pub async fn run_by_id(db: &Db, id: &str) -> Result<Option<RunRow>, Error> {
    Ok(sqlx::query_as("SELECT * FROM ci_runs WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?)
}

/// Runs of a repository, newest first, optionally of one commit and/or one ref.
pub async fn runs_of(
    db: &Db,
    repo_id: &str,
    sha: Option<&str>,
    ref_name: Option<&str>,
    limit: i64,
) -> Result<Vec<RunRow>, Error> {
    Ok(sqlx::query_as(
        "SELECT * FROM ci_runs WHERE repo_id = $1 AND ($2 = '' OR sha = $2) AND ($3 = '' OR ref_name = $3)
         ORDER BY number DESC LIMIT $4",
    )
    .bind(repo_id)
    .bind(sha.unwrap_or(""))
    .bind(ref_name.unwrap_or(""))
    .bind(limit)
    .fetch_all(db)
    .await?)
}

pub async fn jobs_of(db: &Db, run_id: &str) -> Result<Vec<JobRow>, Error> {
    Ok(
        sqlx::query_as("SELECT * FROM ci_jobs WHERE run_id = $1 ORDER BY pos")
            .bind(run_id)
            .fetch_all(db)
            .await?,
    )
}

pub async fn steps_of(db: &Db, run_id: &str) -> Result<Vec<StepRow>, Error> {
    Ok(
        sqlx::query_as("SELECT * FROM ci_steps WHERE run_id = $1 ORDER BY job_key, idx")
            .bind(run_id)
            .fetch_all(db)
            .await?,
    )
}

async fn jobs_in(tx: &mut Tx, run_id: &str) -> Result<Vec<JobRow>, Error> {
    Ok(
        sqlx::query_as("SELECT * FROM ci_jobs WHERE run_id = $1 ORDER BY pos")
            .bind(run_id)
            .fetch_all(&mut **tx)
            .await?,
    )
}

/// What a job report changes (`PATCH runs/{n}/jobs/{key}`).
pub struct JobUpdate {
    pub state: State,
    pub machine: Option<String>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
}

/// Why a job or step update was refused.
#[derive(Debug)]
pub enum Refused {
    NotFound(String),
    Conflict(String),
}

pub enum Outcome<T> {
    Done(T),
    Refused(Refused),
}

/// Apply a job report and what follows from it in one transaction: the run's derived state,
/// RunStarted/RunCompleted, and revoking the job's tokens when it finishes. `events` builds
/// an event payload from the run row.
pub async fn update_job(
    db: &Db,
    run: &RunRow,
    key: &str,
    update: JobUpdate,
    events: &(dyn Fn(&'static str, &RunRow) -> NewEvent + Sync),
) -> Result<Outcome<()>, Error> {
    let mut tx = begin(db).await?;
    let mut jobs = jobs_in(&mut tx, &run.id).await?;
    let Some(job) = jobs.iter_mut().find(|j| j.job_key == key) else {
        return Ok(Outcome::Refused(Refused::NotFound(format!(
            "key: run {} has no job '{key}'",
            run.number
        ))));
    };
    let from = job.state();
    let changed = match ci::check_move(from, update.state) {
        Ok(changed) => changed,
        Err(why) => {
            return Ok(Outcome::Refused(Refused::Conflict(format!(
                "state: job '{key}' {why}"
            ))));
        }
    };
    if from.is_terminal() {
        // A repeated final report: nothing to change.
        return Ok(Outcome::Done(()));
    }
    let now = now_ms();
    if update.state == State::Running && job.started_at.is_none() {
        job.started_at = Some(now);
    }
    if update.state.is_terminal() {
        job.finished_at = Some(now);
    }
    if update.machine.is_some() {
        job.machine = update.machine;
    }
    if update.exit_code.is_some() {
        job.exit_code = update.exit_code;
    }
    if update.error.is_some() {
        job.error = update.error;
    }
    job.state = update.state.as_str().to_owned();
    sqlx::query(
        "UPDATE ci_jobs SET state = $1, machine = $2, exit_code = $3, error = $4, started_at = $5,
         finished_at = $6 WHERE run_id = $7 AND job_key = $8",
    )
    .bind(&job.state)
    .bind(&job.machine)
    .bind(job.exit_code)
    .bind(&job.error)
    .bind(job.started_at)
    .bind(job.finished_at)
    .bind(&run.id)
    .bind(key)
    .execute(&mut *tx)
    .await?;
    if update.state.is_terminal() {
        sqlx::query("DELETE FROM ci_job_tokens WHERE run_id = $1 AND job_key = $2")
            .bind(&run.id)
            .bind(key)
            .execute(&mut *tx)
            .await?;
    }
    if changed {
        let states: Vec<State> = jobs.iter().map(JobRow::state).collect();
        let started = update.state == State::Running;
        settle_run(&mut tx, run, &states, started, now, events).await?;
    }
    tx.commit().await?;
    Ok(Outcome::Done(()))
}

/// Store the run's derived state and write RunStarted (`started`: a job just began and the run
/// had not started) and RunCompleted (it just finished).
async fn settle_run(
    tx: &mut Tx,
    run: &RunRow,
    states: &[State],
    started: bool,
    now: i64,
    events: &(dyn Fn(&'static str, &RunRow) -> NewEvent + Sync),
) -> Result<(), Error> {
    let current: RunRow = sqlx::query_as("SELECT * FROM ci_runs WHERE id = $1")
        .bind(&run.id)
        .fetch_one(&mut **tx)
        .await?;
    let derived = ci::derive(states);
    let mut next = current.clone();
    next.state = derived.as_str().to_owned();
    let mut emit = Vec::new();
    if started && current.started_at.is_none() {
        next.started_at = Some(now);
        emit.push(crate::events::RUN_STARTED);
    }
    match derived {
        RunState::Finished(conclusion) => {
            if current.finished_at.is_none() {
                next.finished_at = Some(now);
                next.conclusion = Some(conclusion.as_str().to_owned());
                emit.push(crate::events::RUN_COMPLETED);
            }
        }
        _ => {
            next.finished_at = None;
            next.conclusion = None;
        }
    }
    sqlx::query(
        "UPDATE ci_runs SET state = $1, conclusion = $2, started_at = $3, finished_at = $4 WHERE id = $5",
    )
    .bind(&next.state)
    .bind(&next.conclusion)
    .bind(next.started_at)
    .bind(next.finished_at)
    .bind(&run.id)
    .execute(&mut **tx)
    .await?;
    for kind in emit {
        db::insert_event(tx, &run.repo_id, &events(kind, &next)).await?;
    }
    Ok(())
}

/// What a step report changes (`PATCH runs/{n}/jobs/{key}/steps/{index}`).
pub async fn update_step(
    db: &Db,
    run: &RunRow,
    key: &str,
    index: i64,
    state: State,
    exit_code: Option<i64>,
) -> Result<Outcome<()>, Error> {
    let mut tx = begin(db).await?;
    let step: Option<StepRow> =
        sqlx::query_as("SELECT * FROM ci_steps WHERE run_id = $1 AND job_key = $2 AND idx = $3")
            .bind(&run.id)
            .bind(key)
            .bind(index)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(mut step) = step else {
        return Ok(Outcome::Refused(Refused::NotFound(format!(
            "index: job '{key}' of run {} has no step {index}",
            run.number
        ))));
    };
    let from = step.state();
    if let Err(why) = ci::check_move(from, state) {
        return Ok(Outcome::Refused(Refused::Conflict(format!(
            "state: step {index} of job '{key}' {why}"
        ))));
    }
    if from.is_terminal() {
        return Ok(Outcome::Done(()));
    }
    let now = now_ms();
    if state == State::Running && step.started_at.is_none() {
        step.started_at = Some(now);
    }
    if state.is_terminal() {
        step.finished_at = Some(now);
    }
    if exit_code.is_some() {
        step.exit_code = exit_code;
    }
    sqlx::query(
        "UPDATE ci_steps SET state = $1, exit_code = $2, started_at = $3, finished_at = $4
         WHERE run_id = $5 AND job_key = $6 AND idx = $7",
    )
    .bind(state.as_str())
    .bind(step.exit_code)
    .bind(step.started_at)
    .bind(step.finished_at)
    .bind(&run.id)
    .bind(key)
    .bind(index)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Outcome::Done(()))
}

/// Set `cancel_requested` and write RunCancelRequested, once; `false` if it was already set.
pub async fn request_cancel(db: &Db, run: &RunRow, event: NewEvent) -> Result<bool, Error> {
    let mut tx = begin(db).await?;
    let done = sqlx::query(
        "UPDATE ci_runs SET cancel_requested = 1 WHERE id = $1 AND cancel_requested = 0",
    )
    .bind(&run.id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    db::insert_event(&mut tx, &run.repo_id, &event).await?;
    tx.commit().await?;
    Ok(true)
}

/// Reset `keys` for another attempt: queued, attempt + 1, steps queued, logs and tokens gone;
/// the run loses its conclusion and cancel request and takes its derived state again.
pub async fn rerun(db: &Db, run: &RunRow, keys: &[String], event: NewEvent) -> Result<(), Error> {
    let mut tx = begin(db).await?;
    for key in keys {
        sqlx::query(
            "UPDATE ci_jobs SET state = 'queued', attempt = attempt + 1, machine = NULL, exit_code = NULL,
             error = NULL, started_at = NULL, finished_at = NULL, log_bytes = 0, log_truncated = 0
             WHERE run_id = $1 AND job_key = $2",
        )
        .bind(&run.id)
        .bind(key)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE ci_steps SET state = 'queued', exit_code = NULL, started_at = NULL, finished_at = NULL
             WHERE run_id = $1 AND job_key = $2",
        )
        .bind(&run.id)
        .bind(key)
        .execute(&mut *tx)
        .await?;
        for table in ["ci_logs", "ci_job_tokens"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE run_id = $1 AND job_key = $2"
            ))
            .bind(&run.id)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        }
    }
    let states: Vec<State> = jobs_in(&mut tx, &run.id)
        .await?
        .iter()
        .map(JobRow::state)
        .collect();
    sqlx::query(
        "UPDATE ci_runs SET state = $1, conclusion = NULL, cancel_requested = 0, started_at = NULL,
         finished_at = NULL WHERE id = $2",
    )
    .bind(ci::derive(&states).as_str())
    .bind(&run.id)
    .execute(&mut *tx)
    .await?;
    db::insert_event(&mut tx, &run.repo_id, &event).await?;
    tx.commit().await?;
    Ok(())
}

// ---- logs

/// What happened to an appended chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub stored: usize,
    pub truncated: bool,
}

/// Append `data` to a job's log (for `step`, or -1 for the job itself) up to `limit` bytes per
/// job; beyond it the log is marked truncated and the rest dropped.
pub async fn append_log(
    db: &Db,
    run_id: &str,
    key: &str,
    step: i64,
    data: &[u8],
    limit: u64,
) -> Result<Appended, Error> {
    let mut tx = begin(db).await?;
    let (log_bytes, truncated): (i64, i64) = sqlx::query_as(
        "SELECT log_bytes, log_truncated FROM ci_jobs WHERE run_id = $1 AND job_key = $2",
    )
    .bind(run_id)
    .bind(key)
    .fetch_one(&mut *tx)
    .await?;
    let room = (limit as i64).saturating_sub(log_bytes).max(0) as usize;
    let stored = data.len().min(room);
    let now_truncated = truncated != 0 || stored < data.len();
    if stored > 0 {
        sqlx::query(
            "INSERT INTO ci_logs (run_id, job_key, offset_bytes, step, data, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(run_id)
        .bind(key)
        .bind(log_bytes)
        .bind(step)
        .bind(&data[..stored])
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
    }
    if stored > 0 || now_truncated != (truncated != 0) {
        sqlx::query(
            "UPDATE ci_jobs SET log_bytes = $1, log_truncated = $2 WHERE run_id = $3 AND job_key = $4",
        )
        .bind(log_bytes + stored as i64)
        .bind(i64::from(now_truncated))
        .bind(run_id)
        .bind(key)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Appended {
        stored,
        truncated: now_truncated,
    })
}

/// A job's log, all of it or one step's (`Some(-1)`: what was logged outside any step).
pub async fn read_log(
    db: &Db,
    run_id: &str,
    key: &str,
    step: Option<i64>,
) -> Result<Vec<u8>, Error> {
    let chunks: Vec<(Vec<u8>,)> = sqlx::query_as(
        "SELECT data FROM ci_logs WHERE run_id = $1 AND job_key = $2 AND ($3 = 0 OR step = $4)
         ORDER BY offset_bytes",
    )
    .bind(run_id)
    .bind(key)
    .bind(i64::from(step.is_some()))
    .bind(step.unwrap_or(0))
    .fetch_all(db)
    .await?;
    Ok(chunks.into_iter().flat_map(|(data,)| data).collect())
}

/// A job's log split by step (-1 first: output outside any step), in order.
pub async fn log_by_step(db: &Db, run_id: &str, key: &str) -> Result<Vec<(i64, Vec<u8>)>, Error> {
    let chunks: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT step, data FROM ci_logs WHERE run_id = $1 AND job_key = $2 ORDER BY offset_bytes",
    )
    .bind(run_id)
    .bind(key)
    .fetch_all(db)
    .await?;
    let mut by_step: std::collections::BTreeMap<i64, Vec<u8>> = Default::default();
    for (step, data) in chunks {
        by_step.entry(step).or_default().extend_from_slice(&data);
    }
    Ok(by_step.into_iter().collect())
}

// ---- job tokens

pub async fn insert_job_token(
    db: &Db,
    token_hash: &str,
    run: &RunRow,
    key: &str,
    expires_at: i64,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO ci_job_tokens (token_hash, repo_id, run_id, job_key, expires_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(token_hash)
    .bind(&run.repo_id)
    .bind(&run.id)
    .bind(key)
    .bind(expires_at)
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(())
}

/// The grant behind a job token, if it exists, has not expired and its job still runs.
pub async fn job_token(db: &Db, token_hash: &str, now: i64) -> Result<Option<JobGrant>, Error> {
    Ok(sqlx::query_as(
        "SELECT t.repo_id, t.run_id, t.job_key FROM ci_job_tokens t
         JOIN ci_jobs j ON j.run_id = t.run_id AND j.job_key = t.job_key
         WHERE t.token_hash = $1 AND t.expires_at > $2 AND j.state IN ('queued', 'running')",
    )
    .bind(token_hash)
    .bind(now)
    .fetch_optional(db)
    .await?)
}

// ---- secrets

pub async fn put_secret(db: &Db, repo_id: &str, name: &str, sealed: &str) -> Result<(), Error> {
    let mut tx = begin(db).await?;
    sqlx::query("DELETE FROM ci_secrets WHERE repo_id = $1 AND name = $2")
        .bind(repo_id)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO ci_secrets (repo_id, name, sealed, updated_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(repo_id)
    .bind(name)
    .bind(sealed)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn secrets_of(db: &Db, repo_id: &str) -> Result<Vec<SecretRow>, Error> {
    Ok(
        sqlx::query_as("SELECT name, updated_at FROM ci_secrets WHERE repo_id = $1 ORDER BY name")
            .bind(repo_id)
            .fetch_all(db)
            .await?,
    )
}

pub async fn sealed_secrets(db: &Db, repo_id: &str) -> Result<Vec<SealedSecret>, Error> {
    Ok(
        sqlx::query_as("SELECT name, sealed FROM ci_secrets WHERE repo_id = $1 ORDER BY name")
            .bind(repo_id)
            .fetch_all(db)
            .await?,
    )
}

pub async fn delete_secret(db: &Db, repo_id: &str, name: &str) -> Result<bool, Error> {
    let done = sqlx::query("DELETE FROM ci_secrets WHERE repo_id = $1 AND name = $2")
        .bind(repo_id)
        .bind(name)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Remove everything CI holds for a repository (inside the repository's deletion).
pub async fn delete_repo_ci(tx: &mut Transaction<'_, Any>, repo_id: &str) -> Result<(), Error> {
    for table in ["ci_logs", "ci_steps", "ci_jobs", "ci_job_tokens"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE run_id IN (SELECT id FROM ci_runs WHERE repo_id = $1)"
        ))
        .bind(repo_id)
        .execute(&mut **tx)
        .await?;
    }
    for table in ["ci_runs", "ci_statuses", "ci_secrets"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE repo_id = $1"))
            .bind(repo_id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
