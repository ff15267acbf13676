//! Nimbus Git CI: a push runs its workflows on pool machines, and the results go back to the
//! commit.
//!
//! The flow, and who holds what:
//!
//! 1. **Intake** ([`Fleet::ci_delivery`]): a signed `CommitPushed`/`TagCreated` delivery names
//!    a commit. The workflows under `.nimbus/workflows/` at that commit are read through Nimbus
//!    Git's contents API, parsed and planned by `nimbus-ci` (matrix expanded, expressions
//!    checked), and stored as a [`CiRun`] with one [`CiJob`] per planned job, keyed by the
//!    delivery id so a redelivery does nothing. A workflow that does not parse becomes a run in
//!    state `error` whose message names the file, line and key.
//! 2. **The pass** ([`Fleet::ci_pass`], woken by intake and job ends, else every
//!    [`PASS_INTERVAL`]): creates each new run at the forge (run number, pending status),
//!    queues jobs whose `needs` succeeded (skips those whose needs did not), holds runs behind an
//!    older run of the same `concurrency` group, finishes runs whose jobs all ended (final
//!    status), and places queued jobs on ready machines of the pool that serves their labels.
//!    A queued job is also a job in the demand book, so pools scale up for it like for any
//!    forge's job.
//! 3. **A job on a machine**: the machine's slot lock is held for the whole job (the autoscaler
//!    and terminate leave a locked machine alone; a terminate waits for the job), the machine
//!    goes `ready → running` and the demand book says `in_progress` on its runner name; the
//!    job checks out the commit with a short-lived read-only token, runs its steps over the
//!    machine's [`Exec`] (each in its own process group; a timeout or a cancel kills it),
//!    streams masked output to the forge, and reports each step's and the job's state. Then the
//!    machine is `ready` again with one more job run; an ephemeral pool recycles it.
//!
//! A restart finds jobs stored as `running` that no task runs: they are reported as errored
//! (never left running) and their machines are terminated, since what ran on them is unknown.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nimbus_ci::{Limits, PlannedJob, PushEvent, StepIf, WORKFLOW_DIR};
use nimbus_forge::nimbus_git::{
    CiState, Contents, GitDelivery, GitEvent, JobUpdate, NewJob, NewRun, NewStatus,
    NimbusGitClient, NimbusGitConfig,
};
use nimbus_setup::exec::{Command, Exec, Stream};
use nimbus_store::{CiJob, CiJobState, CiRun};
use nimbus_types::demand::{ForgeJob, JobRecord, JobStatus, LabelSet, Source};
use nimbus_types::event::{self, Event};
use nimbus_types::{ForgeType, Machine, MachineId, MachineState, TenantId};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::runners::runner_name;
use crate::{Error, Fleet, Result};

/// How often the CI pass runs when nothing wakes it.
pub const PASS_INTERVAL: Duration = Duration::from_secs(2);
/// Where jobs work on a machine, under its `$HOME`; each job gets `<id>/src` and `<id>/steps`.
const WORK_ROOT: &str = "nimbus-ci";
/// Output is sent to the forge in pieces of at most this many bytes, or after [`LOG_FLUSH`].
const LOG_BATCH: usize = 256 * 1024;
const LOG_FLUSH: Duration = Duration::from_millis(200);
/// Budget for the checkout and for the workspace clean-up.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The CI part of the fleet's state.
#[derive(Default)]
pub(crate) struct CiRuntime {
    wake: Notify,
    started: AtomicBool,
    clients: Mutex<HashMap<TenantId, (OffsetDateTime, NimbusGitClient)>>,
    /// Jobs running in this process, by job id.
    running: Mutex<HashMap<u64, Running>>,
}

struct Running {
    machine: MachineId,
    cancel: CancellationToken,
}

/// What a delivery did: the webhook's answer (shown in Nimbus Git's delivery log).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CiAccepted {
    /// A push: the runs it started (workflow files), those it had started before (a
    /// redelivery) and the workflows whose triggers it does not match.
    Push {
        created: Vec<String>,
        replayed: Vec<String>,
        not_triggered: Vec<String>,
    },
    Cancelled {
        run: u64,
    },
    Rerun {
        run: u64,
        jobs: Vec<String>,
    },
    Ignored {
        event: String,
    },
}

/// A push, as its delivery names it.
#[derive(Clone, Copy)]
struct Push<'a> {
    repository: &'a str,
    git_ref: &'a str,
    before: &'a str,
    sha: &'a str,
    pusher: &'a str,
}

/// How a job ended.
#[derive(Debug)]
struct Outcome {
    state: CiJobState,
    exit_code: Option<i32>,
    error: Option<String>,
}

impl Fleet {
    /// Starts the CI pass loop (once). It first reports jobs a previous process left running.
    pub fn start_ci(&self) {
        if self.inner.ci.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let fleet = self.clone();
        self.inner.tasks.spawn(async move {
            if let Err(err) = fleet.ci_recover().await {
                tracing::warn!(error = %err, "interrupted CI jobs not reported yet; the pass retries");
            }
            loop {
                if let Err(err) = fleet.ci_pass().await {
                    tracing::warn!(error = %err, "CI pass failed; retrying");
                }
                tokio::select! {
                    _ = fleet.inner.shutdown.cancelled() => break,
                    _ = fleet.inner.ci.wake.notified() => {}
                    _ = tokio::time::sleep(PASS_INTERVAL) => {}
                }
            }
            // Shutdown: running jobs are cancelled and reported, machines returned.
            let running: Vec<CancellationToken> = fleet.ci_running()
                .values()
                .map(|r| r.cancel.clone())
                .collect();
            for cancel in running {
                cancel.cancel();
            }
        });
    }

    /// The jobs running in this process, by job id.
    fn ci_running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Running>> {
        self.inner.ci.running.lock().expect("ci lock")
    }

    /// Runs the CI pass soon.
    pub fn ci_wake(&self) {
        self.inner.ci.wake.notify_one();
    }

    /// Whether a CI job runs on the machine in this process.
    pub fn ci_busy(&self, machine: MachineId) -> bool {
        self.ci_running().values().any(|r| r.machine == machine)
    }

    /// The tenant's Nimbus Git client, `None` when the tenant's forge is something else.
    pub async fn ci_client(&self, tenant_id: TenantId) -> Result<Option<NimbusGitClient>> {
        let config = self
            .inner
            .store
            .get_tenant_forge_config(tenant_id)
            .await?
            .filter(|c| c.forge_type == ForgeType::NimbusGit);
        let mut clients = self.inner.ci.clients.lock().expect("ci lock");
        let Some(config) = config else {
            clients.remove(&tenant_id);
            return Ok(None);
        };
        if let Some((at, client)) = clients.get(&tenant_id)
            && *at == config.updated_at
        {
            return Ok(Some(client.clone()));
        }
        let client = NimbusGitConfig::from_forge_config(&config)
            .and_then(NimbusGitClient::new)
            .map_err(|err| {
                Error::Conflict(format!(
                    "the tenant's forge configuration cannot be used: {err}"
                ))
            })?;
        clients.insert(tenant_id, (config.updated_at, client.clone()));
        Ok(Some(client))
    }

    /// Acts on a verified Nimbus Git delivery.
    pub async fn ci_delivery(
        &self,
        tenant_id: TenantId,
        delivery: GitDelivery,
    ) -> Result<CiAccepted> {
        let accepted = match delivery.event {
            GitEvent::Push {
                repository,
                git_ref,
                before,
                after,
                pusher,
            } => {
                let push = Push {
                    repository: &repository,
                    git_ref: &git_ref,
                    before: &before,
                    sha: &after,
                    pusher: &pusher,
                };
                self.ci_push(tenant_id, &delivery.id, &push).await?
            }
            GitEvent::CancelRequested { repository, run } => {
                let stored = self
                    .inner
                    .store
                    .find_ci_run(tenant_id, &repository, run)
                    .await?
                    .ok_or(Error::NotFound("ci run"))?;
                self.ci_cancel_run(&stored, "cancelled on request").await?;
                CiAccepted::Cancelled { run }
            }
            GitEvent::RerunRequested {
                repository,
                run,
                jobs,
            } => {
                let stored = self
                    .inner
                    .store
                    .find_ci_run(tenant_id, &repository, run)
                    .await?
                    .ok_or(Error::NotFound("ci run"))?;
                let jobs = self.ci_rerun(&stored, &jobs).await?;
                CiAccepted::Rerun { run, jobs }
            }
            GitEvent::Ignored(event) => CiAccepted::Ignored { event },
        };
        self.ci_wake();
        Ok(accepted)
    }

    async fn ci_push(
        &self,
        tenant_id: TenantId,
        delivery_id: &str,
        push: &Push<'_>,
    ) -> Result<CiAccepted> {
        let Push {
            repository,
            git_ref,
            before,
            sha,
            pusher,
        } = *push;
        let mut accepted = (Vec::new(), Vec::new(), Vec::new());
        if sha.bytes().all(|b| b == b'0') {
            return Ok(CiAccepted::Ignored {
                event: "deleted ref".into(),
            });
        }
        let client = self
            .ci_client(tenant_id)
            .await?
            .ok_or_else(|| Error::Conflict("the tenant's forge is not nimbus-git".into()))?;
        let listing = client
            .contents(repository, WORKFLOW_DIR, sha)
            .await
            .map_err(forge_error)?;
        let mut files: Vec<_> = match listing {
            Some(Contents::Dir { entries, .. }) => entries
                .into_iter()
                .filter(|e| {
                    e.kind == "file" && (e.name.ends_with(".yml") || e.name.ends_with(".yaml"))
                })
                .collect(),
            _ => Vec::new(),
        };
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let limits = Limits::default();
        // Path filters need the paths the push changed; only asked for when some workflow
        // exists, and unknown (a new branch) means every path filter matches.
        let changed = if files.is_empty() {
            None
        } else {
            client
                .changed_paths(repository, before, sha)
                .await
                .map_err(forge_error)?
        };
        let ref_name = git_ref
            .strip_prefix("refs/heads/")
            .or_else(|| git_ref.strip_prefix("refs/tags/"))
            .unwrap_or(git_ref);
        for file in files {
            let run_id = uuid::Uuid::now_v7().to_string();
            let planned: std::result::Result<(String, nimbus_ci::RunPlan), String> =
                if file.size as usize > limits.max_file_bytes {
                    Err(format!(
                        "{}: the file is {} bytes; the limit is {} bytes",
                        file.path, file.size, limits.max_file_bytes
                    ))
                } else {
                    let Some(bytes) = client
                        .file(repository, &file.path, sha)
                        .await
                        .map_err(forge_error)?
                    else {
                        continue;
                    };
                    match String::from_utf8(bytes) {
                        Err(_) => Err(format!("{}: the file is not UTF-8 text", file.path)),
                        Ok(text) => match nimbus_ci::parse(&file.path, &text, &limits) {
                            Err(err) => Err(err.to_string()),
                            Ok(workflow) => {
                                if !workflow.triggered_by(&PushEvent {
                                    git_ref,
                                    changed_paths: changed.as_deref(),
                                }) {
                                    accepted.2.push(file.path.clone());
                                    continue;
                                }
                                let context = nimbus_ci::Context {
                                    sha: sha.to_owned(),
                                    git_ref: git_ref.to_owned(),
                                    ref_name: ref_name.to_owned(),
                                    repository: repository.to_owned(),
                                    run_id: run_id.clone(),
                                    actor: pusher.to_owned(),
                                };
                                nimbus_ci::plan_run(&workflow, &context, &limits)
                                    .map(|plan| (workflow.name.clone(), plan))
                                    .map_err(|err| err.to_string())
                            }
                        },
                    }
                };
            let now = nimbus_types::now();
            let stem = file
                .name
                .trim_end_matches(".yml")
                .trim_end_matches(".yaml")
                .to_owned();
            let (name, group, error, jobs) = match planned {
                Ok((name, plan)) => {
                    let mut jobs = Vec::with_capacity(plan.jobs.len());
                    for job in &plan.jobs {
                        jobs.push(CiJob {
                            id: new_job_id(),
                            run_id: run_id.clone(),
                            tenant_id,
                            key: job.key.clone(),
                            attempt: 1,
                            plan: serde_json::to_value(job).map_err(|e| {
                                Error::Conflict(format!("job {} cannot be stored: {e}", job.key))
                            })?,
                            labels: job.runs_on.clone(),
                            state: CiJobState::Pending,
                            machine_id: None,
                            created_at: now,
                            updated_at: now,
                        });
                    }
                    (name, plan.concurrency, None, jobs)
                }
                Err(error) => (stem, None, Some(error), Vec::new()),
            };
            let cancel_others = group.as_ref().is_some_and(|(_, cancel)| *cancel);
            let run = CiRun {
                id: run_id,
                tenant_id,
                delivery_id: delivery_id.to_owned(),
                repository: repository.to_owned(),
                workflow: file.path.clone(),
                name,
                number: None,
                sha: sha.to_owned(),
                git_ref: git_ref.to_owned(),
                pusher: pusher.to_owned(),
                concurrency_group: group.map(|(g, _)| g),
                error,
                active: true,
                created_at: now,
                updated_at: now,
            };
            if !self.inner.store.insert_ci_run(&run, &jobs).await? {
                accepted.1.push(file.path);
                continue;
            }
            self.emit(
                Event::new(event::CI_RUN_CREATED)
                    .tenant(tenant_id)
                    .meta("repository", repository)
                    .meta("workflow", run.workflow.as_str())
                    .meta("sha", sha)
                    .meta("jobs", jobs.len()),
            );
            if cancel_others {
                self.ci_cancel_group(&run).await?;
            }
            accepted.0.push(file.path);
        }
        Ok(CiAccepted::Push {
            created: accepted.0,
            replayed: accepted.1,
            not_triggered: accepted.2,
        })
    }

    /// Cancels the older active runs of the run's concurrency group (`cancel-in-progress`).
    async fn ci_cancel_group(&self, newer: &CiRun) -> Result<()> {
        let Some(group) = &newer.concurrency_group else {
            return Ok(());
        };
        for run in self.inner.store.list_active_ci_runs().await? {
            if run.id != newer.id
                && run.tenant_id == newer.tenant_id
                && run.repository == newer.repository
                && run.concurrency_group.as_deref() == Some(group)
                && run.created_at <= newer.created_at
            {
                self.ci_cancel_run(&run, "cancelled by a newer run in its concurrency group")
                    .await?;
            }
        }
        Ok(())
    }

    /// Cancels a run: running jobs are stopped (their task reports them), the others end now.
    pub async fn ci_cancel_run(&self, run: &CiRun, reason: &str) -> Result<()> {
        for job in self.inner.store.list_ci_jobs(&run.id).await? {
            match job.state {
                CiJobState::Running => {
                    if let Some(running) = self.ci_running().get(&job.id) {
                        running.cancel.cancel();
                    }
                }
                CiJobState::Pending | CiJobState::Queued => {
                    match (run.number, self.ci_client(run.tenant_id).await?) {
                        (Some(number), Some(client)) => {
                            self.ci_cancel_job(&client, run, number, &job, reason)
                                .await?
                        }
                        _ => {
                            let mut ended = job.clone();
                            ended.state = CiJobState::Cancelled;
                            ended.updated_at = nimbus_types::now();
                            self.inner.store.update_ci_job(&ended, job.state).await?;
                        }
                    }
                }
                _ => {}
            }
        }
        self.ci_wake();
        Ok(())
    }

    /// Ends one job as cancelled: a running one is stopped by its task (which reports it),
    /// a waiting one ends here and is reported to the forge.
    async fn ci_cancel_job(
        &self,
        client: &NimbusGitClient,
        run: &CiRun,
        number: u64,
        job: &CiJob,
        reason: &str,
    ) -> Result<()> {
        if job.state == CiJobState::Running {
            if let Some(running) = self.ci_running().get(&job.id) {
                running.cancel.cancel();
            }
            return Ok(());
        }
        let mut ended = job.clone();
        ended.state = CiJobState::Cancelled;
        ended.updated_at = nimbus_types::now();
        if !self.inner.store.update_ci_job(&ended, job.state).await? {
            return Ok(());
        }
        if job.state == CiJobState::Queued {
            self.ci_demand(run, job, JobStatus::Completed, None).await;
        }
        if let Err(err) = client
            .set_job(
                &run.repository,
                number,
                &job.key,
                &JobUpdate::new(CiState::Cancelled).error(Some(reason)),
            )
            .await
        {
            tracing::warn!(error = %err, job = %job.key, "cancelled job not reported to the forge");
        }
        Ok(())
    }

    /// Starts the given jobs of a finished run again (all when `keys` is empty), with the jobs
    /// that need them. Returns the keys started again.
    async fn ci_rerun(&self, run: &CiRun, keys: &[String]) -> Result<Vec<String>> {
        let jobs = self.inner.store.list_ci_jobs(&run.id).await?;
        if jobs.iter().any(|j| !j.state.is_terminal()) {
            return Err(Error::Conflict("the run is still running".into()));
        }
        let mut chosen: HashSet<String> = if keys.is_empty() {
            jobs.iter().map(|j| j.key.clone()).collect()
        } else {
            keys.iter().cloned().collect()
        };
        // The jobs that need a chosen job run again too.
        loop {
            let before = chosen.len();
            for job in &jobs {
                if plan_of(job).is_ok_and(|p| p.needs.iter().any(|n| chosen.contains(n))) {
                    chosen.insert(job.key.clone());
                }
            }
            if chosen.len() == before {
                break;
            }
        }
        let now = nimbus_types::now();
        let mut started = Vec::new();
        for job in jobs.into_iter().filter(|j| chosen.contains(&j.key)) {
            let next = CiJob {
                id: new_job_id(),
                attempt: job.attempt + 1,
                state: CiJobState::Pending,
                machine_id: None,
                created_at: now,
                updated_at: now,
                ..job.clone()
            };
            self.inner.store.replace_ci_job(job.id, &next).await?;
            started.push(job.key);
        }
        self.inner.store.set_ci_run_active(&run.id, true).await?;
        Ok(started)
    }

    /// Reports jobs stored as running that no task of this process runs (the previous process
    /// died): errored, machine terminated.
    async fn ci_recover(&self) -> Result<()> {
        let orphans = self
            .inner
            .store
            .list_ci_jobs_in(&[CiJobState::Running])
            .await?;
        for job in orphans {
            if self.ci_running().contains_key(&job.id) {
                continue;
            }
            let run = self.inner.store.get_ci_run(&job.run_id).await?;
            let outcome = Outcome {
                state: CiJobState::Error,
                exit_code: None,
                error: Some("nimbusd restarted while the job ran".into()),
            };
            self.ci_report_end(&run, &job, &outcome).await;
            let mut ended = job.clone();
            ended.state = CiJobState::Error;
            ended.updated_at = nimbus_types::now();
            self.inner
                .store
                .update_ci_job(&ended, CiJobState::Running)
                .await?;
            self.ci_demand(&run, &job, JobStatus::Completed, job.machine_id)
                .await;
            if let Some(machine) = job.machine_id
                && let Err(err) = self.terminate_machine(None, machine).await
            {
                tracing::warn!(machine.id = %machine, error = %err, "machine of an interrupted CI job not terminated; the reconciler retries");
            }
        }
        Ok(())
    }

    /// One pass over active runs and queued jobs; see the module documentation.
    pub async fn ci_pass(&self) -> Result<()> {
        let runs = self.inner.store.list_active_ci_runs().await?;
        let mut live: HashMap<String, CiRun> = HashMap::new();
        for run in &runs {
            match self.ci_advance_run(run, &runs).await {
                Ok(Some(run)) => {
                    live.insert(run.id.clone(), run);
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(run = %run.id, repository = %run.repository, error = %err, "CI run not advanced; the next pass retries")
                }
            }
        }
        self.ci_place(&live).await
    }

    /// Moves one run along; returns it (with its number) while it has work left.
    async fn ci_advance_run(&self, run: &CiRun, active: &[CiRun]) -> Result<Option<CiRun>> {
        let Some(client) = self.ci_client(run.tenant_id).await? else {
            return Ok(None);
        };
        let mut run = run.clone();
        let mut jobs = self.inner.store.list_ci_jobs(&run.id).await?;
        let number = match run.number {
            Some(number) => number,
            None => {
                let number = self.ci_open_run(&client, &run, &jobs).await?;
                run.number = Some(number);
                number
            }
        };
        if run.error.is_some() {
            self.inner.store.set_ci_run_active(&run.id, false).await?;
            return Ok(None);
        }
        // An older active run of the same concurrency group goes first.
        let held = run.concurrency_group.as_ref().is_some_and(|group| {
            active.iter().any(|other| {
                other.id != run.id
                    && other.tenant_id == run.tenant_id
                    && other.repository == run.repository
                    && other.concurrency_group.as_ref() == Some(group)
                    && (other.created_at, &other.id) < (run.created_at, &run.id)
            })
        });
        // `strategy.fail-fast`: a failed matrix instance cancels its unfinished siblings.
        let plans: HashMap<String, PlannedJob> = jobs
            .iter()
            .filter_map(|j| plan_of(j).ok().map(|p| (j.key.clone(), p)))
            .collect();
        let failed_fast: HashSet<String> = jobs
            .iter()
            .filter(|j| j.state == CiJobState::Failure)
            .filter_map(|j| plans.get(&j.key))
            .filter(|p| p.fail_fast && !p.matrix.is_empty())
            .map(|p| p.job_id.clone())
            .collect();
        if !failed_fast.is_empty() {
            let siblings: Vec<&CiJob> = jobs
                .iter()
                .filter(|j| !j.state.is_terminal())
                .filter(|j| {
                    plans
                        .get(&j.key)
                        .is_some_and(|p| failed_fast.contains(&p.job_id))
                })
                .collect();
            for job in siblings {
                self.ci_cancel_job(
                    &client,
                    &run,
                    number,
                    job,
                    "a sibling matrix job failed (fail-fast)",
                )
                .await?;
            }
            jobs = self.inner.store.list_ci_jobs(&run.id).await?;
        }
        let states: HashMap<String, CiJobState> =
            jobs.iter().map(|j| (j.key.clone(), j.state)).collect();
        // `strategy.max-parallel`: instances of one job queued or running at once.
        let mut in_flight: HashMap<String, u32> = HashMap::new();
        for job in &jobs {
            if matches!(job.state, CiJobState::Queued | CiJobState::Running)
                && let Some(plan) = plans.get(&job.key)
            {
                *in_flight.entry(plan.job_id.clone()).or_default() += 1;
            }
        }
        for job in jobs.iter_mut().filter(|j| j.state == CiJobState::Pending) {
            if held {
                continue;
            }
            let plan = plans.get(&job.key);
            if let Some(plan) = plan
                && let Some(max) = plan.max_parallel
                && in_flight.get(&plan.job_id).copied().unwrap_or(0) >= max.max(1)
            {
                continue;
            }
            let needs = plan.map(|p| p.needs.clone()).unwrap_or_default();
            let needed: Vec<CiJobState> = needs
                .iter()
                .map(|n| states.get(n).copied().unwrap_or(CiJobState::Error))
                .collect();
            if needed.iter().any(|s| !s.is_terminal()) {
                continue;
            }
            let next = if needed.iter().all(|s| *s == CiJobState::Success) {
                CiJobState::Queued
            } else {
                CiJobState::Skipped
            };
            let mut moved = job.clone();
            moved.state = next;
            moved.updated_at = nimbus_types::now();
            if !self
                .inner
                .store
                .update_ci_job(&moved, CiJobState::Pending)
                .await?
            {
                continue;
            }
            if next == CiJobState::Queued {
                if let Some(plan) = plan {
                    *in_flight.entry(plan.job_id.clone()).or_default() += 1;
                }
                self.ci_demand(&run, &moved, JobStatus::Queued, None).await;
            } else if let Err(err) = client
                .set_job(
                    &run.repository,
                    number,
                    &job.key,
                    &JobUpdate::new(CiState::Skipped).error(Some("a job it needs did not succeed")),
                )
                .await
            {
                tracing::warn!(error = %err, job = %job.key, "skipped job not reported to the forge");
            }
            *job = moved;
        }
        if jobs.iter().all(|j| j.state.is_terminal()) {
            self.ci_finish_run(&client, &run, number, &jobs).await?;
            return Ok(None);
        }
        Ok(Some(run))
    }

    /// Creates the run at the forge, with a pending status on the commit.
    async fn ci_open_run(
        &self,
        client: &NimbusGitClient,
        run: &CiRun,
        jobs: &[CiJob],
    ) -> Result<u64> {
        let new_jobs = if run.error.is_some() {
            None
        } else {
            let mut out = Vec::with_capacity(jobs.len());
            for job in jobs {
                let plan = plan_of(job)?;
                let mut steps = vec![format!("Check out {}", short(&run.sha))];
                steps.extend(plan.steps.iter().map(|s| s.name.clone()));
                out.push(NewJob {
                    key: job.key.clone(),
                    name: plan.name.clone(),
                    needs: plan.needs.clone(),
                    runs_on: plan.runs_on.clone(),
                    steps,
                });
            }
            Some(out)
        };
        let info = client
            .create_run(
                &run.repository,
                &NewRun {
                    sha: run.sha.clone(),
                    git_ref: run.git_ref.clone(),
                    workflow: run.workflow.clone(),
                    name: run.name.clone(),
                    event: "push".into(),
                    pusher: run.pusher.clone(),
                    jobs: new_jobs,
                    error: run.error.clone(),
                },
            )
            .await
            .map_err(forge_error)?;
        self.inner
            .store
            .set_ci_run_number(&run.id, info.number)
            .await?;
        let (state, description) = match &run.error {
            Some(error) => ("error", truncate(error, 1000)),
            None => ("pending", "waiting for a machine".to_owned()),
        };
        self.ci_status(client, run, info.number, state, &description)
            .await;
        Ok(info.number)
    }

    async fn ci_finish_run(
        &self,
        client: &NimbusGitClient,
        run: &CiRun,
        number: u64,
        jobs: &[CiJob],
    ) -> Result<()> {
        let has = |state: CiJobState| jobs.iter().any(|j| j.state == state);
        let conclusion = if has(CiJobState::Failure) {
            "failure"
        } else if has(CiJobState::Error) {
            "error"
        } else if has(CiJobState::Cancelled) {
            "cancelled"
        } else {
            "success"
        };
        let failed: Vec<&str> = jobs
            .iter()
            .filter(|j| {
                matches!(
                    j.state,
                    CiJobState::Failure | CiJobState::Error | CiJobState::Cancelled
                )
            })
            .map(|j| j.key.as_str())
            .collect();
        let description = if failed.is_empty() {
            format!("{} {} succeeded", jobs.len(), plural(jobs.len(), "job"))
        } else {
            truncate(&format!("{conclusion}: {}", failed.join(", ")), 1000)
        };
        self.ci_status(client, run, number, conclusion, &description)
            .await;
        self.inner.store.set_ci_run_active(&run.id, false).await?;
        self.emit(
            Event::new(event::CI_RUN_FINISHED)
                .tenant(run.tenant_id)
                .meta("repository", run.repository.as_str())
                .meta("run", number)
                .meta("conclusion", conclusion),
        );
        Ok(())
    }

    async fn ci_status(
        &self,
        client: &NimbusGitClient,
        run: &CiRun,
        number: u64,
        state: &str,
        description: &str,
    ) {
        let status = NewStatus {
            state: state.to_owned(),
            context: format!("nimbus/{}", run.name),
            description: description.to_owned(),
            target_url: Some(client.run_url(&run.repository, number)),
        };
        if let Err(err) = client.post_status(&run.repository, &run.sha, &status).await {
            tracing::warn!(error = %err, repository = %run.repository, "commit status not posted");
        }
    }

    /// Puts queued jobs on ready machines of the pools that serve them.
    async fn ci_place(&self, live: &HashMap<String, CiRun>) -> Result<()> {
        let queued = self
            .inner
            .store
            .list_ci_jobs_in(&[CiJobState::Queued])
            .await?;
        if queued.is_empty() {
            return Ok(());
        }
        let mut taken: HashSet<MachineId> = self.ci_running().values().map(|r| r.machine).collect();
        let mut tenants: HashMap<
            TenantId,
            (Vec<nimbus_types::Pool>, Vec<nimbus_store::PoolMachine>),
        > = HashMap::new();
        for job in queued {
            let Some(run) = live.get(&job.run_id) else {
                continue;
            };
            if self.ci_running().contains_key(&job.id) {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(entry) = tenants.entry(job.tenant_id) {
                let pools = self.inner.store.list_pools(Some(job.tenant_id)).await?;
                let machines = self
                    .inner
                    .store
                    .list_pool_machines(job.tenant_id, nimbus_types::now())
                    .await?;
                entry.insert((pools, machines));
            }
            let (pools, machines) = &tenants[&job.tenant_id];
            let labels = LabelSet::new(&job.labels);
            let Some(pool) = nimbus_autoscale::matching::best_pool(pools, &labels) else {
                continue;
            };
            // The machine idle longest first: it is the one the autoscaler would remove next.
            let Some(machine) = machines
                .iter()
                .filter(|m| {
                    m.pool_id == pool.id
                        && m.state == MachineState::Ready
                        && !taken.contains(&m.id)
                        && !self.is_busy(m.id)
                })
                .min_by_key(|m| (m.usage.idle_since, m.id))
            else {
                continue;
            };
            taken.insert(machine.id);
            let cancel = CancellationToken::new();
            self.ci_running().insert(
                job.id,
                Running {
                    machine: machine.id,
                    cancel: cancel.clone(),
                },
            );
            let fleet = self.clone();
            let run = run.clone();
            let machine_id = machine.id;
            self.inner.tasks.spawn(async move {
                fleet.ci_job_task(job, run, machine_id, cancel).await;
            });
        }
        Ok(())
    }

    /// Runs one job on one machine, holding the machine's slot for the whole job.
    async fn ci_job_task(
        &self,
        job: CiJob,
        run: CiRun,
        machine_id: MachineId,
        cancel: CancellationToken,
    ) {
        let slot = self.slot(machine_id);
        {
            let _guard = slot.lock.lock().await;
            if let Err(err) = self
                .ci_job_on_machine(job.clone(), &run, machine_id, &cancel)
                .await
            {
                tracing::warn!(job = %job.key, machine.id = %machine_id, error = %err, "CI job not carried out; the pass retries");
            }
        }
        self.release_slot(machine_id, slot);
        self.ci_running().remove(&job.id);
        self.ci_wake();
    }

    async fn ci_job_on_machine(
        &self,
        job: CiJob,
        run: &CiRun,
        machine_id: MachineId,
        cancel: &CancellationToken,
    ) -> Result<()> {
        // Claim: ready → running, checked against the stored state.
        let mut machine = self
            .inner
            .store
            .get_machine(None, machine_id)
            .await?
            .machine;
        if machine.state != MachineState::Ready {
            return Ok(());
        }
        let reason = format!(
            "CI job {} of {} #{}",
            job.key,
            run.repository,
            run.number.unwrap_or(0)
        );
        machine.state = MachineState::Running;
        machine.usage.idle_since = None;
        machine.updated_at = nimbus_types::now();
        match self
            .inner
            .store
            .update_machine(&machine, MachineState::Ready, Some(&reason))
            .await
        {
            Ok(()) => {}
            Err(nimbus_store::Error::StaleState { .. }) => return Ok(()),
            Err(err) => return Err(err.into()),
        }
        let mut started = job.clone();
        started.state = CiJobState::Running;
        started.machine_id = Some(machine_id);
        started.updated_at = nimbus_types::now();
        if !self
            .inner
            .store
            .update_ci_job(&started, CiJobState::Queued)
            .await?
        {
            // Cancelled while the machine was claimed: give it back.
            self.ci_release_machine(run.tenant_id, machine_id, false)
                .await;
            return Ok(());
        }
        self.ci_demand(run, &job, JobStatus::InProgress, Some(machine_id))
            .await;
        self.emit(job_event(event::CI_JOB_STARTED, run, &job, machine_id));
        let outcome = match self.ci_client(run.tenant_id).await {
            Ok(Some(client)) => self.ci_execute(&client, run, &job, &machine, cancel).await,
            Ok(None) => Outcome {
                state: CiJobState::Error,
                exit_code: None,
                error: Some("the tenant's forge is no longer nimbus-git".into()),
            },
            Err(err) => Outcome {
                state: CiJobState::Error,
                exit_code: None,
                error: Some(err.to_string()),
            },
        };
        self.ci_report_end(run, &job, &outcome).await;
        let mut ended = started.clone();
        ended.state = outcome.state;
        ended.updated_at = nimbus_types::now();
        self.inner
            .store
            .update_ci_job(&ended, CiJobState::Running)
            .await?;
        self.ci_demand(run, &job, JobStatus::Completed, Some(machine_id))
            .await;
        self.ci_release_machine(run.tenant_id, machine_id, true)
            .await;
        self.emit(
            job_event(event::CI_JOB_FINISHED, run, &job, machine_id)
                .meta("state", outcome.state.as_str()),
        );
        Ok(())
    }

    /// Tells the forge how a job ended (retrying a few times: a lost report would leave the
    /// job running there).
    async fn ci_report_end(&self, run: &CiRun, job: &CiJob, outcome: &Outcome) {
        let (Some(number), Ok(Some(client))) = (run.number, self.ci_client(run.tenant_id).await)
        else {
            return;
        };
        let state = forge_state(outcome.state);
        for attempt in 0..5u32 {
            match client
                .set_job(
                    &run.repository,
                    number,
                    &job.key,
                    &JobUpdate::new(state)
                        .exit_code(outcome.exit_code)
                        .error(outcome.error.as_deref()),
                )
                .await
            {
                Ok(()) => return,
                Err(err) if err.is_retryable() && attempt < 4 => {
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Err(err) => {
                    tracing::warn!(job = %job.key, error = %err, "job end not reported to the forge");
                    return;
                }
            }
        }
    }

    /// A machine whose job ended goes back to its pool: `ready`, idle from now, one more job.
    async fn ci_release_machine(&self, tenant_id: TenantId, machine_id: MachineId, ran_job: bool) {
        let result = async {
            let mut machine = self
                .inner
                .store
                .get_machine(None, machine_id)
                .await?
                .machine;
            if machine.state != MachineState::Running {
                return Ok::<_, Error>(());
            }
            machine.state = MachineState::Ready;
            if ran_job {
                machine.usage.jobs_run += 1;
            }
            machine.usage.idle_since = Some(nimbus_types::now());
            machine.updated_at = nimbus_types::now();
            self.inner
                .store
                .update_machine(&machine, MachineState::Running, Some("the CI job ended"))
                .await?;
            Ok(())
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(machine.id = %machine_id, error = %err, "machine not returned to its pool");
        }
        self.demand_changed(tenant_id);
    }

    /// Records the job's news in the demand book, where the autoscaler reads it.
    async fn ci_demand(
        &self,
        run: &CiRun,
        job: &CiJob,
        status: JobStatus,
        machine: Option<MachineId>,
    ) {
        let now = nimbus_types::now();
        let record = JobRecord {
            job: ForgeJob {
                job_id: job.id,
                run_id: run.number.unwrap_or(0),
                repository: run.repository.clone(),
                labels: LabelSet::new(&job.labels),
                status,
            },
            runner_name: machine.map(runner_name),
            first_seen: job.created_at,
            updated_at: now,
            source: Source::Webhook,
        };
        if let Err(err) = self
            .inner
            .store
            .record_job(run.tenant_id, None, &record)
            .await
        {
            tracing::warn!(job = %job.key, error = %err, "CI job not recorded in the demand book");
        }
        self.demand_changed(run.tenant_id);
    }

    /// Carries out a job's checkout and steps on the machine.
    async fn ci_execute(
        &self,
        client: &NimbusGitClient,
        run: &CiRun,
        job: &CiJob,
        machine: &Machine,
        cancel: &CancellationToken,
    ) -> Outcome {
        let error = |message: String| Outcome {
            state: CiJobState::Error,
            exit_code: None,
            error: Some(message),
        };
        let Some(number) = run.number else {
            return error("the run has no number at the forge".into());
        };
        let plan = match plan_of(job) {
            Ok(plan) => plan,
            Err(err) => return error(err.to_string()),
        };
        if let Err(err) = client
            .set_job(
                &run.repository,
                number,
                &job.key,
                &JobUpdate::new(CiState::Running).machine(machine.id.to_string()),
            )
            .await
        {
            tracing::warn!(job = %job.key, error = %err, "job start not reported to the forge");
        }
        let exec = match self.provider_of(machine).await {
            Ok((_, provider)) => match provider.exec(machine).await {
                Ok(exec) => exec,
                Err(err) => return error(format!("cannot reach the machine: {err}")),
            },
            Err(err) => return error(format!("cannot reach the machine: {err}")),
        };
        let job_timeout = Duration::from_secs(u64::from(plan.timeout_minutes.max(1)) * 60);
        let deadline = Instant::now() + job_timeout;
        let token = match client
            .job_token(&run.repository, number, &job.key, job_timeout)
            .await
        {
            Ok(token) => token,
            Err(err) => return error(format!("no checkout token from the forge: {err}")),
        };
        let mut notices = Vec::new();
        let secrets: BTreeMap<String, String> = if plan.secrets.is_empty() {
            BTreeMap::new()
        } else {
            match client.run_secrets(&run.repository, number).await {
                Ok(answer) if answer.withheld => {
                    notices.push(format!(
                        "secrets withheld: {} does not have write access to {}",
                        run.pusher, run.repository
                    ));
                    BTreeMap::new()
                }
                Ok(answer) => answer.secrets,
                Err(err) => return error(format!("secrets not available: {err}")),
            }
        };
        let mut mask: Vec<String> = secrets.values().cloned().collect();
        mask.push(token.expose().to_owned());

        // Paths are absolute from here: arguments are data, never expanded by a shell.
        let home = match exec
            .run(
                &Command::new(r#"printf '%s' "$HOME""#)
                    .timeout(Duration::from_secs(60))
                    .label("ci-home"),
            )
            .await
        {
            Ok(out) if out.success() && out.stdout.starts_with(b"/") => {
                String::from_utf8_lossy(&out.stdout)
                    .trim_end_matches('/')
                    .to_owned()
            }
            Ok(out) => {
                return error(format!(
                    "the machine has no usable $HOME (exit {})",
                    out.exit_code
                ));
            }
            Err(err) => return error(format!("cannot reach the machine: {err}")),
        };
        let root = format!("{home}/{WORK_ROOT}/{}", job.id);
        let base_env = ci_env(run, job, number, &root);
        let log = LogTarget {
            client,
            repository: &run.repository,
            number,
            key: &job.key,
            mask: &mask,
        };

        // Step 0: the checkout.
        let checkout = Command::new(CHECKOUT_SCRIPT)
            .arg(format!("{root}/src"))
            .arg(client.clone_url(&run.repository))
            .arg(run.sha.clone())
            .arg(run.git_ref.clone())
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env(
                "GIT_CONFIG_VALUE_0",
                format!("Authorization: Bearer {}", token.expose()),
            )
            .timeout(CHECKOUT_TIMEOUT.min(job_timeout))
            .label("ci-checkout");
        let _ = client
            .set_step(&run.repository, number, &job.key, 0, CiState::Running, None)
            .await;
        for notice in &notices {
            log.send(0, format!("{notice}\n").into_bytes()).await;
        }
        let step = run_step(exec.as_ref(), &checkout, &log, 0, cancel).await;
        let _ = client
            .set_step(
                &run.repository,
                number,
                &job.key,
                0,
                step.state,
                step.exit_code,
            )
            .await;
        let mut failed = step.state != CiState::Success;
        let mut cancelled = step.state == CiState::Cancelled;
        let mut last_error = step.error.clone();
        let mut last_code = step.exit_code;

        for (i, planned) in plan.steps.iter().enumerate() {
            let index = i + 1;
            let wanted = match planned.condition {
                StepIf::Success => !failed && !cancelled,
                StepIf::Failure => failed && !cancelled,
                StepIf::Always => true,
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if !wanted || remaining.is_zero() {
                let _ = client
                    .set_step(
                        &run.repository,
                        number,
                        &job.key,
                        index,
                        CiState::Skipped,
                        None,
                    )
                    .await;
                continue;
            }
            let script = match nimbus_ci::render_secrets(&planned.run, &secrets) {
                Ok(script) => script,
                Err(missing) => {
                    log.send(
                        index,
                        format!("secret {missing} is not set; the step cannot run\n").into_bytes(),
                    )
                    .await;
                    let _ = client
                        .set_step(
                            &run.repository,
                            number,
                            &job.key,
                            index,
                            CiState::Failure,
                            None,
                        )
                        .await;
                    failed = true;
                    continue;
                }
            };
            let steps_dir = format!("{root}/steps");
            let file = format!("{index}.sh");
            let write = Command::new(r#"mkdir -p "$1" && cat > "$1/$2""#)
                .arg(steps_dir.clone())
                .arg(file.clone())
                .stdin(script.into_bytes())
                .timeout(Duration::from_secs(60))
                .label("ci-script");
            if let Err(err) = exec.run(&write).await {
                last_error = Some(format!("cannot write the step's script: {err}"));
                let _ = client
                    .set_step(
                        &run.repository,
                        number,
                        &job.key,
                        index,
                        CiState::Error,
                        None,
                    )
                    .await;
                failed = true;
                continue;
            }
            let cwd = match &planned.working_directory {
                Some(dir) => format!("{root}/src/{dir}"),
                None => format!("{root}/src"),
            };
            let mut command = Command::new(r#"cd "$1" || exit 1; shift; exec "$@""#)
                .arg(cwd)
                .timeout(
                    planned
                        .timeout_minutes
                        .map(|m| Duration::from_secs(u64::from(m) * 60))
                        .unwrap_or(remaining)
                        .min(remaining),
                )
                .label("ci-step");
            for arg in planned.shell.command(&format!("{steps_dir}/{file}")) {
                command = command.arg(arg);
            }
            let workflow_env = plan.env.iter().chain(planned.env.iter());
            for (key, value) in base_env.iter().map(|(k, v)| (k, v)).chain(workflow_env) {
                let value = nimbus_ci::render_secrets(value, &secrets).unwrap_or_default();
                command = command.env(key.clone(), value);
            }
            for (name, value) in &secrets {
                if plan.secrets.contains(name) {
                    command = command.env(name.clone(), value.clone());
                }
            }
            let _ = client
                .set_step(
                    &run.repository,
                    number,
                    &job.key,
                    index,
                    CiState::Running,
                    None,
                )
                .await;
            let step = run_step(exec.as_ref(), &command, &log, index, cancel).await;
            let _ = client
                .set_step(
                    &run.repository,
                    number,
                    &job.key,
                    index,
                    step.state,
                    step.exit_code,
                )
                .await;
            match step.state {
                CiState::Success => {}
                CiState::Cancelled => cancelled = true,
                _ => {
                    failed = true;
                    last_code = step.exit_code;
                    last_error = step.error.clone().or(last_error);
                }
            }
        }

        let cleanup = Command::new(r#"rm -rf "$1""#)
            .arg(root.clone())
            .timeout(CLEANUP_TIMEOUT)
            .label("ci-cleanup");
        if let Err(err) = exec.run(&cleanup).await {
            tracing::debug!(job = %job.key, error = %err, "CI workspace not removed");
        }
        let timed_out = Instant::now() >= deadline;
        if cancelled || cancel.is_cancelled() {
            Outcome {
                state: CiJobState::Cancelled,
                exit_code: None,
                error: Some("cancelled".into()),
            }
        } else if failed {
            Outcome {
                state: CiJobState::Failure,
                exit_code: last_code,
                error: if timed_out {
                    Some(format!(
                        "the job timed out after {} minutes",
                        plan.timeout_minutes
                    ))
                } else {
                    last_error
                },
            }
        } else {
            Outcome {
                state: CiJobState::Success,
                exit_code: Some(0),
                error: None,
            }
        }
    }
}

/// The checkout: `$1` directory, `$2` clone URL, `$3` commit, `$4` ref. The
/// token arrives in the environment (`GIT_CONFIG_*`), never on a command line.
const CHECKOUT_SCRIPT: &str = r#"set -e
dir="$1"
rm -rf "$dir"
mkdir -p "$dir"
cd "$dir"
git init -q
if ! git fetch -q --depth=1 --no-tags "$2" "$3" 2>/dev/null; then
  git fetch -q --no-tags "$2" "$4"
fi
git checkout -q --detach "$3"
git log -1 --format='Checked out %H (%s)'
"#;

/// The environment every step gets besides the workflow's.
fn ci_env(run: &CiRun, job: &CiJob, number: u64, root: &str) -> Vec<(String, String)> {
    vec![
        ("CI".into(), "true".into()),
        ("NIMBUS_CI".into(), "true".into()),
        ("NIMBUS_REPOSITORY".into(), run.repository.clone()),
        ("NIMBUS_SHA".into(), run.sha.clone()),
        ("NIMBUS_REF".into(), run.git_ref.clone()),
        ("NIMBUS_RUN_NUMBER".into(), number.to_string()),
        ("NIMBUS_JOB".into(), job.key.clone()),
        ("NIMBUS_WORKSPACE".into(), format!("{root}/src")),
    ]
}

/// Where a job's output goes.
struct LogTarget<'a> {
    client: &'a NimbusGitClient,
    repository: &'a str,
    number: u64,
    key: &'a str,
    mask: &'a [String],
}

impl LogTarget<'_> {
    async fn send(&self, step: usize, text: Vec<u8>) {
        let mut masker = nimbus_ci::Masker::new(self.mask.iter().cloned());
        let mut masked = masker.push(&text);
        masked.extend(masker.finish());
        if let Err(err) = self
            .client
            .append_log(self.repository, self.number, self.key, step, masked)
            .await
        {
            tracing::debug!(error = %err, "log piece not sent");
        }
    }
}

struct StepEnd {
    state: CiState,
    exit_code: Option<i32>,
    error: Option<String>,
}

/// Runs one command, streaming its masked output to the step's log as it comes.
async fn run_step(
    exec: &dyn Exec,
    command: &Command,
    log: &LogTarget<'_>,
    step: usize,
    cancel: &CancellationToken,
) -> StepEnd {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let sink = move |_stream: Stream, line: &str| {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let _ = tx.send(bytes);
    };
    let forward = async {
        let mut masker = nimbus_ci::Masker::new(log.mask.iter().cloned());
        let mut batch: Vec<u8> = Vec::new();
        let mut flush_at = tokio::time::Instant::now() + LOG_FLUSH;
        loop {
            let next = tokio::time::timeout_at(flush_at, rx.recv()).await;
            let closed = matches!(next, Ok(None));
            if let Ok(Some(bytes)) = next {
                batch.extend(masker.push(&bytes));
            }
            if closed {
                batch.extend(masker.finish());
            }
            let due = tokio::time::Instant::now() >= flush_at;
            if !batch.is_empty()
                && (closed || due || batch.len() >= LOG_BATCH)
                && let Err(err) = log
                    .client
                    .append_log(
                        log.repository,
                        log.number,
                        log.key,
                        step,
                        std::mem::take(&mut batch),
                    )
                    .await
            {
                tracing::debug!(error = %err, "log piece not sent");
            }
            if due {
                flush_at = tokio::time::Instant::now() + LOG_FLUSH;
            }
            if closed {
                break;
            }
        }
    };
    let work = async {
        let result = tokio::select! {
            result = exec.run_streaming(command, &sink) => Some(result),
            _ = cancel.cancelled() => None,
        };
        drop(sink);
        result
    };
    let (result, ()) = tokio::join!(work, forward);
    match result {
        None => StepEnd {
            state: CiState::Cancelled,
            exit_code: None,
            error: Some("cancelled".into()),
        },
        Some(Ok(output)) if output.success() => StepEnd {
            state: CiState::Success,
            exit_code: Some(0),
            error: None,
        },
        Some(Ok(output)) => StepEnd {
            state: CiState::Failure,
            exit_code: Some(output.exit_code),
            error: Some(format!("exited with code {}", output.exit_code)),
        },
        Some(Err(nimbus_setup::exec::Error::Timeout(after))) => StepEnd {
            state: CiState::Failure,
            exit_code: None,
            error: Some(format!("timed out after {}s", after.as_secs())),
        },
        Some(Err(err)) => StepEnd {
            state: CiState::Error,
            exit_code: None,
            error: Some(err.to_string()),
        },
    }
}

/// A job's telemetry event: tenant, machine, repository, run number and job key.
fn job_event(name: &str, run: &CiRun, job: &CiJob, machine: MachineId) -> Event {
    Event::new(name)
        .tenant(run.tenant_id)
        .machine(machine)
        .meta("repository", run.repository.as_str())
        .meta("run", run.number.unwrap_or(0))
        .meta("job", job.key.as_str())
}

fn plan_of(job: &CiJob) -> Result<PlannedJob> {
    serde_json::from_value(job.plan.clone())
        .map_err(|e| Error::Conflict(format!("stored plan of job {} is unreadable: {e}", job.key)))
}

fn forge_state(state: CiJobState) -> CiState {
    match state {
        CiJobState::Pending | CiJobState::Queued => CiState::Queued,
        CiJobState::Running => CiState::Running,
        CiJobState::Success => CiState::Success,
        CiJobState::Failure => CiState::Failure,
        CiJobState::Cancelled => CiState::Cancelled,
        CiJobState::Error => CiState::Error,
        CiJobState::Skipped => CiState::Skipped,
    }
}

fn forge_error(err: nimbus_forge::Error) -> Error {
    Error::Forge(err.to_string())
}

/// A fresh id for a job attempt: below 2^63 (it is a BIGINT in the demand book), increasing
/// with time so listings order by creation.
fn new_job_id() -> u64 {
    let uuid = uuid::Uuid::now_v7();
    let bits = u128::from_be_bytes(*uuid.as_bytes());
    // 48 bits of milliseconds, then 15 random bits.
    let millis = (bits >> 80) as u64;
    let random = (bits as u64) & 0x7fff;
    ((millis << 15) | random) & (u64::MAX >> 1)
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_fit_a_bigint_and_increase() {
        let a = new_job_id();
        std::thread::sleep(Duration::from_millis(2));
        let b = new_job_id();
        assert!(a < (1u64 << 63) && b < (1u64 << 63));
        assert!(b > a, "{a} then {b}");
    }

    #[test]
    fn truncation_keeps_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("ééééé", 4), "é…");
        assert_eq!(plural(1, "job"), "job");
        assert_eq!(plural(6, "job"), "jobs");
    }
}
