//! Git forges: where runners register and where jobs wait.
//!
//! The [`Forge`] trait is what the fleet needs from a forge: registration and remove tokens,
//! just-in-time (ephemeral) runner configs, the runner list, one runner's status, removal, runner
//! groups and the jobs that wait for runners ([`Forge::demand`]), plus a [`WebhookVerifier`] for
//! the forge's signed deliveries. [`github`] implements it for GitHub and GitHub Enterprise
//! Server, [`gitlab`] for gitlab.com and self-managed GitLab, [`forgejo`] for Forgejo (and, where
//! the APIs agree, Gitea). Every call has a timeout and honours the forge's rate limits.
//!
//! Around the trait: [`lifecycle`] registers and safely deregisters runners (a busy runner is
//! never removed out from under its job), [`webhook`] verifies and records deliveries, and
//! [`demand`] keeps the book of waiting jobs per label set (recording each delivery once, by its
//! id), corrected by a periodic reconcile against the forge's API.
//!
//! This crate must not touch the store or HTTP routing: the daemon mounts the webhook receiver
//! and persists what it needs. It never logs a credential.

pub mod demand;
pub mod forgejo;
pub mod github;
pub mod gitlab;
pub mod lifecycle;
pub mod nimbus_git;
pub mod webhook;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use nimbus_types::{ForgeConfig, ForgeType, Secret};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use demand::{
    Applied, DemandBook, ForgeJob, JobStatus, LabelDemand, LabelSet, MemoryDemandBook,
};
pub use lifecycle::{EventSink, Outcome, deregister_then_check, register_jit_runner};
pub use webhook::{WebhookError, WebhookReceiver, WebhookVerifier};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to a forge. Callers match on the variant to decide what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Worth retrying later: timeouts, 5xx, connection failures, exhausted retries.
    #[error("{0} (retryable)")]
    Retryable(String),
    /// Retrying will not help: a request the forge rejects, missing permissions.
    #[error("{0}")]
    Permanent(String),
    /// The runner, organization or repository does not exist (or is not visible).
    #[error("{0} not found at the forge")]
    NotFound(String),
    /// The forge's rate limit is spent until `reset`; the caller requeues after it.
    #[error("rate limited by the forge until {reset}")]
    RateLimited { reset: OffsetDateTime },
    /// The forge rejected the credentials (bad token, bad App key, uninstalled App).
    #[error("the forge rejected the credentials: {0}")]
    Unauthorized(String),
    /// Something with that identity already exists (a runner name taken).
    #[error("{0}")]
    Conflict(String),
    /// The forge configuration is invalid; `field` names the offending setting.
    #[error("invalid forge config: {field}: {message}")]
    InvalidConfig { field: String, message: String },
}

impl Error {
    /// Whether the same call may succeed later without anyone changing configuration.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Retryable(_) | Error::RateLimited { .. })
    }

    pub(crate) fn config(field: &str, message: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// A runner's id at the forge (GitHub: the numeric runner id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunnerId(pub u64);

impl fmt::Display for RunnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Whether a runner can be taken away from its machine right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerStatus {
    /// Connected and waiting for a job.
    Idle,
    /// Running a job: must not be removed or terminated.
    Busy,
    /// Not connected to the forge.
    Offline,
}

/// A self-hosted runner as the forge reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runner {
    pub id: RunnerId,
    pub name: String,
    pub os: String,
    pub status: RunnerStatus,
    pub labels: Vec<String>,
    pub ephemeral: bool,
    pub runner_group_id: Option<u64>,
}

/// A group runners belong to; JIT runners are registered into one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerGroup {
    pub id: u64,
    pub name: String,
    pub default: bool,
}

/// A short-lived token for `config.sh --token` (registration) or `config.sh remove --token`.
#[derive(Clone, Debug)]
pub struct RegistrationToken {
    pub token: Secret,
    pub expires_at: OffsetDateTime,
}

/// Asks for a just-in-time configuration: an ephemeral runner that takes one job and leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JitRequest {
    /// The runner's name; unique within the organization or repository.
    pub name: String,
    pub runner_group_id: u64,
    /// Labels jobs select the runner by. The forge adds [`unique_label`] of the name.
    pub labels: Vec<String>,
    /// Working directory relative to the runner's install directory (forge default when `None`).
    pub work_folder: Option<String>,
}

/// The label every JIT runner gets in addition to the requested ones: a job that asks for it can
/// run only on this runner, and the runner can be found by it.
pub fn unique_label(runner_name: &str) -> String {
    format!("nimbus-{runner_name}")
}

/// What the runner needs to start (`run.sh --jitconfig …`) and what the forge created.
#[derive(Clone, Debug)]
pub struct JitConfig {
    pub runner: Runner,
    /// Base64 runner configuration; it contains a credential of the runner.
    pub encoded_jit_config: Secret,
    /// The label only this runner carries (see [`unique_label`]).
    pub unique_label: String,
    /// What `encoded_jit_config` is, so the machine knows what to do with it.
    pub kind: JitKind,
}

/// What the credential of a [`JitConfig`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JitKind {
    /// GitHub: the runner's whole configuration (`run.sh --jitconfig`).
    JitConfig,
    /// GitLab: the created runner's authentication token (`glrt-…`).
    RunnerToken,
    /// Forgejo 15+: the created runner's token; the runner is `uuid`. The server sets no labels:
    /// the machine declares [`Runner::labels`] itself (`forgejo-runner one-job --label`).
    RunnerIdentity { uuid: String },
    /// Older Forgejo and Gitea: a registration token; the machine registers the runner itself
    /// (`forgejo-runner register`) with [`Runner::labels`], so no runner exists yet and
    /// [`Runner::id`] is 0.
    RegistrationToken,
}

/// A forge API budget as the forge last reported it: the daemon exports `remaining` as the
/// gauge `nimbus_forge_rate_limit_remaining{tenant, budget=key}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    /// Which budget: `installation:<id>` for a GitHub App, `token` for a personal access token.
    pub key: String,
    pub limit: u64,
    pub remaining: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub reset: OffsetDateTime,
    /// The forge's bucket (GitHub: `core` for the REST calls Nimbus makes).
    pub resource: String,
}

/// Builds the forge client for a stored configuration. Build it once per tenant and keep it
/// (rebuild when the configuration changes): it holds the token cache and the rate budget.
pub fn build(config: &ForgeConfig) -> Result<Arc<dyn Forge>> {
    match config.forge_type {
        ForgeType::Github => Ok(Arc::new(github::GithubForge::new(
            github::GithubConfig::from_forge_config(config)?,
        )?)),
        ForgeType::Gitlab => Ok(Arc::new(gitlab::GitlabForge::new(
            gitlab::GitlabConfig::from_forge_config(config)?,
        )?)),
        ForgeType::Forgejo => Ok(Arc::new(forgejo::ForgejoForge::new(
            forgejo::ForgejoConfig::from_forge_config(config)?,
        )?)),
        other => Err(Error::Permanent(format!(
            "forge type {other} is not available in this build"
        ))),
    }
}

/// Most runners a forge call will collect before failing instead of silently truncating.
pub const MAX_PAGES: u32 = 100;

#[async_trait]
pub trait Forge: Send + Sync {
    fn forge_type(&self) -> ForgeType;

    /// A token to register a runner with the classic `config.sh --token` flow.
    async fn registration_token(&self) -> Result<RegistrationToken>;

    /// A token to remove a runner from its machine (`config.sh remove --token`).
    async fn remove_token(&self) -> Result<RegistrationToken>;

    /// Creates an ephemeral runner and returns its just-in-time configuration. The runner carries
    /// [`unique_label`] of its name in addition to the requested labels.
    async fn jit_config(&self, request: &JitRequest) -> Result<JitConfig>;

    /// Every self-hosted runner in scope, all pages.
    async fn list_runners(&self) -> Result<Vec<Runner>>;

    /// One runner; [`Error::NotFound`] when the forge has no such runner.
    async fn get_runner(&self, id: RunnerId) -> Result<Runner>;

    /// Removes the runner's registration. [`Error::NotFound`] when it is already gone. Callers
    /// that are about to terminate the machine use [`deregister_then_check`] instead.
    async fn remove_runner(&self, id: RunnerId) -> Result<()>;

    /// Idle, busy or offline, from a fresh read.
    async fn runner_status(&self, id: RunnerId) -> Result<RunnerStatus> {
        Ok(self.get_runner(id).await?.status)
    }

    /// Runner groups a JIT runner can be registered into.
    async fn runner_groups(&self) -> Result<Vec<RunnerGroup>>;

    /// Jobs that are queued, waiting or in progress right now, read from the forge's API. The
    /// demand reconcile ([`demand::reconcile_demand`]) corrects the webhook-fed book with it.
    async fn demand(&self) -> Result<Vec<ForgeJob>>;

    /// How often the demand reconcile re-reads [`Forge::demand`] when all is well. Forges
    /// without job webhooks (Forgejo) are polled more often than those that push.
    fn demand_poll_period(&self) -> std::time::Duration {
        demand::DEFAULT_RECONCILE_PERIOD
    }

    /// The API budget as the forge last reported it; `None` before the first call.
    fn rate_limit(&self) -> Option<RateLimit> {
        None
    }

    /// Verifies and parses the forge's webhook deliveries; `None` when no webhook secret is
    /// configured (then no delivery can be trusted).
    fn webhook_verifier(&self) -> Option<Arc<dyn WebhookVerifier>>;
}
