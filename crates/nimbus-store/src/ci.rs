//! What the store keeps of Nimbus Git CI runs ([`CiStore`], implemented by `SqlStore`).

use async_trait::async_trait;
use nimbus_types::{MachineId, TenantId};
use time::OffsetDateTime;

use crate::Result;

/// A workflow run `nimbusd` carries out.
#[derive(Clone, Debug, PartialEq)]
pub struct CiRun {
    /// A UUID chosen by `nimbusd`.
    pub id: String,
    pub tenant_id: TenantId,
    /// The webhook delivery that started it (a redelivery finds the run and does nothing).
    pub delivery_id: String,
    pub repository: String,
    /// The workflow file, e.g. `.nimbus/workflows/ci.yml`.
    pub workflow: String,
    pub name: String,
    /// The forge's run number; `None` until the run exists at the forge.
    pub number: Option<u64>,
    pub sha: String,
    pub git_ref: String,
    pub pusher: String,
    /// The rendered `concurrency` group, if the workflow has one.
    pub concurrency_group: Option<String>,
    /// Why the workflow could not run (`file:line:column: key: message`); no jobs then.
    pub error: Option<String>,
    /// Some job is not finished yet.
    pub active: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// Where a CI job is, as `nimbusd` tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CiJobState {
    /// Waits for the jobs it needs.
    Pending,
    /// In the demand book, waiting for a machine.
    Queued,
    Running,
    Success,
    Failure,
    Cancelled,
    Error,
    Skipped,
}

impl CiJobState {
    pub fn as_str(self) -> &'static str {
        match self {
            CiJobState::Pending => "pending",
            CiJobState::Queued => "queued",
            CiJobState::Running => "running",
            CiJobState::Success => "success",
            CiJobState::Failure => "failure",
            CiJobState::Cancelled => "cancelled",
            CiJobState::Error => "error",
            CiJobState::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<CiJobState> {
        Some(match s {
            "pending" => CiJobState::Pending,
            "queued" => CiJobState::Queued,
            "running" => CiJobState::Running,
            "success" => CiJobState::Success,
            "failure" => CiJobState::Failure,
            "cancelled" => CiJobState::Cancelled,
            "error" => CiJobState::Error,
            "skipped" => CiJobState::Skipped,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            CiJobState::Pending | CiJobState::Queued | CiJobState::Running
        )
    }
}

/// One attempt of one job of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct CiJob {
    /// Also the job's id in the demand book; below 2^63.
    pub id: u64,
    pub run_id: String,
    pub tenant_id: TenantId,
    /// The job's key in the run (`build`, `test (linux, 1)`).
    pub key: String,
    pub attempt: u32,
    /// The planned job (steps, env, timeout, needs) as the CI planner made it.
    pub plan: serde_json::Value,
    pub labels: Vec<String>,
    pub state: CiJobState,
    /// The machine running (or that ran) it.
    pub machine_id: Option<MachineId>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// Storage of CI runs and jobs.
#[async_trait]
pub trait CiStore: Send + Sync {
    /// Stores a new run with its jobs, atomically. `Ok(false)`: a run for this delivery and
    /// workflow exists already (a redelivered push); nothing was written.
    async fn insert_ci_run(&self, run: &CiRun, jobs: &[CiJob]) -> Result<bool>;
    async fn set_ci_run_number(&self, id: &str, number: u64) -> Result<()>;
    async fn get_ci_run(&self, id: &str) -> Result<CiRun>;
    async fn find_ci_run(
        &self,
        tenant_id: TenantId,
        repository: &str,
        number: u64,
    ) -> Result<Option<CiRun>>;
    /// Runs with unfinished jobs, oldest first, across tenants.
    async fn list_active_ci_runs(&self) -> Result<Vec<CiRun>>;
    async fn set_ci_run_active(&self, id: &str, active: bool) -> Result<()>;
    async fn list_ci_jobs(&self, run_id: &str) -> Result<Vec<CiJob>>;
    /// Jobs in any of `states`, oldest first, across tenants.
    async fn list_ci_jobs_in(&self, states: &[CiJobState]) -> Result<Vec<CiJob>>;
    /// Writes the job's state and machine if its stored state is still `expected`.
    async fn update_ci_job(&self, job: &CiJob, expected: CiJobState) -> Result<bool>;
    /// Replaces an attempt by the next one (a re-run), atomically.
    async fn replace_ci_job(&self, old_id: u64, job: &CiJob) -> Result<()>;
}
