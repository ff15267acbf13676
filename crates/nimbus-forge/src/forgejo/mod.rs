//! Forgejo (and, where the APIs agree, Gitea) behind the [`Forge`] trait.
//!
//! Runners are created directly (Forgejo 15+): `POST {scope}/actions/runners` with
//! `{"name", "description", "ephemeral": true}` answers the runner's id, `uuid` and `token`. The
//! endpoint sets no labels: the machine declares them when it runs
//! (`forgejo-runner one-job --url … --uuid … --token-url file:… --label …`), so [`JitKind`]
//! says `RunnerIdentity` and the runner's labels travel with the credential. Servers without
//! the endpoint (older Forgejo, Gitea) get the legacy flow: a registration token
//! (`GET …/registration-token`, `POST` on Gitea 1.24+) for `forgejo-runner register`.
//!
//! `{scope}` is `/orgs/{org}` or `/repos/{owner}/{repo}`. Removal is
//! `DELETE {scope}/actions/runners/{id}` after the busy check (the runner's `status` is
//! `active`). Forgejo deletes a busy runner without asking and its API links no job to a
//! runner, so a removal also compares the scope's running jobs before and after the delete: a
//! job that started in between may be on the removed runner, which is then reported busy until
//! that job ends (see [`ForgejoForge::remove_runner`]). Demand is `GET {scope}/actions/runners/jobs`
//! (waiting and running jobs with their `runs_on` labels); Forgejo sends no job webhooks, so
//! the demand reconcile polls it every [`ForgejoConfig::poll_interval`] (backing off on errors).
//!
//! Tenant isolation: every runner Nimbus creates carries the tenant's marker
//! ([`tenant_marker`]) as its description (direct flow) or as a label it declares (legacy
//! flow); listings keep only runners with the marker.
//!
//! The API base is configurable (`api_url`, default `{url}/api/v1`): a Prism mock of Forgejo's
//! description serves the paths at its root.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nimbus_types::{ForgeConfig, ForgeType, Secret, TenantId};
use reqwest::{Method, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use crate::github::RetryPolicy;
use crate::github::transport::{Budget, Dialect, Repeat, Transport};
use crate::{
    Error, Forge, ForgeJob, JitConfig, JitKind, JitRequest, JobStatus, LabelSet, MAX_PAGES,
    RateLimit, RegistrationToken, Result, Runner, RunnerGroup, RunnerId, RunnerStatus,
    WebhookVerifier, unique_label,
};

/// Forgejo's largest page (`[api] MAX_RESPONSE_ITEMS` defaults to 50).
const PER_PAGE: u32 = 50;

/// How often Forgejo's job list is read when nothing fails.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(15);

/// The marker on every runner Nimbus creates for a tenant (description or label).
pub fn tenant_marker(tenant_id: TenantId) -> String {
    format!("nimbus-tenant-{}", tenant_id.as_uuid().simple())
}

/// Where runners are created and jobs are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunnerScope {
    Org { org: String },
    Repo { owner: String, repo: String },
}

impl RunnerScope {
    fn segments(&self) -> Vec<&str> {
        match self {
            RunnerScope::Org { org } => vec!["orgs", org],
            RunnerScope::Repo { owner, repo } => vec!["repos", owner, repo],
        }
    }
}

/// How runners are registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    /// Direct creation; the legacy token when the server has no such endpoint.
    Auto,
    /// Only direct creation (Forgejo 15+).
    Direct,
    /// Only the legacy registration token (older Forgejo, Gitea).
    Token,
}

/// Everything needed to talk to one tenant's Forgejo.
#[derive(Clone, Debug)]
pub struct ForgejoConfig {
    /// [`tenant_marker`]: listings keep only runners that carry it.
    pub tenant_marker: String,
    /// The instance's URL (`https://codeberg.org`): where runners connect.
    pub url: String,
    /// The API base (default `{url}/api/v1`).
    pub api_url: String,
    pub scope: RunnerScope,
    pub registration: Registration,
    /// An access token with `write:organization` (org scope) or `write:repository` (repository
    /// scope).
    pub token: Secret,
    /// How often the demand reconcile reads the job list.
    pub poll_interval: Duration,
    pub retry: RetryPolicy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSettings {
    url: Option<String>,
    api_url: Option<String>,
    repo: Option<String>,
    registration: Option<String>,
    poll_interval_secs: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredCredentials {
    token: Option<String>,
}

impl ForgejoConfig {
    /// Reads a stored forge config: `org` is the organization (or the repository's owner),
    /// `config` `{"url", "api_url"?, "repo"?, "registration"? ("auto" | "direct" | "token"),
    /// "poll_interval_secs"?}`, `credentials` `{"token"}`.
    pub fn from_forge_config(forge: &ForgeConfig) -> Result<Self> {
        if forge.forge_type != ForgeType::Forgejo {
            return Err(Error::config(
                "type",
                format!("{} is not forgejo", forge.forge_type),
            ));
        }
        let settings: StoredSettings = if forge.config.is_null() {
            StoredSettings::default()
        } else {
            serde_json::from_value(forge.config.clone())
                .map_err(|e| Error::config("config", e.to_string()))?
        };
        let credentials: StoredCredentials = match &forge.credentials {
            None => StoredCredentials::default(),
            // The serde error may quote the input: keep it out of the message.
            Some(secret) => serde_json::from_str(secret.expose())
                .map_err(|_| Error::config("credentials", "must be a JSON object with token"))?,
        };
        let url = settings.url.ok_or_else(|| {
            Error::config(
                "config.url",
                "the Forgejo instance's URL is required (https://forgejo.example.com)",
            )
        })?;
        parse_url("config.url", &url)?;
        let url = url.trim_end_matches('/').to_owned();
        let api_url = match settings.api_url {
            Some(api_url) => {
                parse_url("config.api_url", &api_url)?;
                api_url.trim_end_matches('/').to_owned()
            }
            None => format!("{url}/api/v1"),
        };
        if forge.org.trim().is_empty() {
            return Err(Error::config(
                "org",
                "name the organization (or the repository's owner)",
            ));
        }
        let scope = match settings.repo {
            Some(repo) if repo.is_empty() || repo.contains('/') => {
                return Err(Error::config(
                    "config.repo",
                    "must be the repository's name without its owner",
                ));
            }
            Some(repo) => RunnerScope::Repo {
                owner: forge.org.clone(),
                repo,
            },
            None => RunnerScope::Org {
                org: forge.org.clone(),
            },
        };
        let registration = match settings.registration.as_deref() {
            None | Some("auto") => Registration::Auto,
            Some("direct") => Registration::Direct,
            Some("token") => Registration::Token,
            Some(other) => {
                return Err(Error::config(
                    "config.registration",
                    format!("{other:?} is not auto, direct or token"),
                ));
            }
        };
        let poll_interval = match settings.poll_interval_secs {
            None => DEFAULT_POLL_INTERVAL,
            Some(secs @ 5..=3600) => Duration::from_secs(secs),
            Some(_) => {
                return Err(Error::config(
                    "config.poll_interval_secs",
                    "must be between 5 and 3600 seconds",
                ));
            }
        };
        let token = credentials
            .token
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                Error::config(
                    "credentials.token",
                    "a Forgejo access token with write:organization (or write:repository) is required",
                )
            })?;
        if !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(Error::config(
                "credentials.token",
                "must be the token as Forgejo shows it (printable ASCII, no spaces)",
            ));
        }
        Ok(ForgejoConfig {
            tenant_marker: tenant_marker(forge.tenant_id),
            url,
            api_url,
            scope,
            registration,
            token: Secret::new(token),
            poll_interval,
            retry: RetryPolicy::default(),
        })
    }
}

fn parse_url(field: &str, url: &str) -> Result<Url> {
    let parsed = Url::parse(url).map_err(|e| Error::config(field, e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
        return Err(Error::config(field, "must be an http(s) URL"));
    }
    if parsed.query().is_some()
        || parsed.fragment().is_some()
        || !parsed.username().is_empty()
        || parsed.password().is_some()
    {
        return Err(Error::config(
            field,
            "must not carry credentials, a query or a fragment",
        ));
    }
    Ok(parsed)
}

/// A runner label: a string (Forgejo) or an object with a `name` (Gitea).
#[derive(Deserialize)]
#[serde(untagged)]
enum FjLabel {
    Name(String),
    Object { name: String },
}

impl FjLabel {
    fn name(self) -> String {
        match self {
            FjLabel::Name(name) | FjLabel::Object { name } => name,
        }
    }
}

#[derive(Deserialize)]
struct FjRunner {
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: Option<String>,
    /// Forgejo: `offline`, `idle`, `active`; Gitea: `online`/`offline` (and `busy` below).
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    busy: Option<bool>,
    #[serde(default)]
    labels: Vec<FjLabel>,
    #[serde(default)]
    ephemeral: Option<bool>,
}

impl FjRunner {
    /// The runner as Nimbus sees it, or `None` when it is not this tenant's. A runner made by
    /// [`Forge::jit_config`] carries [`unique_label`] of its name (declared by the machine; added
    /// here too, since a runner that never connected has declared nothing).
    fn runner(self, marker: &str) -> Option<Runner> {
        let mut labels: Vec<String> = self.labels.into_iter().map(FjLabel::name).collect();
        let ours =
            self.description.as_deref() == Some(marker) || labels.iter().any(|l| l == marker);
        if !ours {
            return None;
        }
        let status = match (self.status.as_deref(), self.busy) {
            (_, Some(true)) | (Some("active"), _) => RunnerStatus::Busy,
            (Some("idle" | "online"), _) => RunnerStatus::Idle,
            _ => RunnerStatus::Offline,
        };
        for label in [marker.to_owned(), unique_label(&self.name)] {
            if !labels.contains(&label) {
                labels.push(label);
            }
        }
        labels.sort();
        Some(Runner {
            id: RunnerId(self.id),
            name: self.name,
            os: String::new(),
            status,
            labels,
            ephemeral: self.ephemeral.unwrap_or(false),
            runner_group_id: None,
        })
    }
}

/// A runner listing: an array (Forgejo 15+), or an object holding it (`entries` in earlier
/// Forgejo, `runners` in Gitea).
#[derive(Deserialize)]
#[serde(untagged)]
enum FjRunnerList {
    Array(Vec<FjRunner>),
    Object {
        #[serde(alias = "entries")]
        runners: Vec<FjRunner>,
    },
}

#[derive(Deserialize)]
struct FjCreated {
    id: u64,
    uuid: String,
    token: String,
}

#[derive(Deserialize)]
struct FjToken {
    token: String,
}

#[derive(Deserialize)]
struct FjJob {
    id: u64,
    #[serde(default)]
    run_id: Option<u64>,
    #[serde(default)]
    repo_id: Option<u64>,
    #[serde(default)]
    runs_on: Vec<String>,
    #[serde(default)]
    status: String,
}

/// Jobs that started while a runner was being removed: the runner may run one of them.
#[derive(Default)]
struct Raced(Mutex<BTreeMap<RunnerId, BTreeSet<u64>>>);

impl Raced {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<RunnerId, BTreeSet<u64>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The Forgejo forge client.
pub struct ForgejoForge {
    transport: Transport,
    tenant_marker: String,
    token: Secret,
    scope: RunnerScope,
    registration: Registration,
    url: String,
    poll_interval: Duration,
    /// Set once the server answered that it cannot create runners directly.
    legacy: AtomicBool,
    raced: Raced,
}

impl ForgejoForge {
    pub fn new(config: ForgejoConfig) -> Result<Self> {
        let api = parse_url("config.api_url", &config.api_url)?;
        Ok(ForgejoForge {
            transport: Transport::with_dialect(
                api,
                config.retry.clone(),
                "token".to_owned(),
                Dialect::FORGEJO,
            )?,
            tenant_marker: config.tenant_marker,
            token: config.token,
            scope: config.scope,
            legacy: AtomicBool::new(config.registration == Registration::Token),
            registration: config.registration,
            url: config.url,
            poll_interval: config.poll_interval,
            raced: Raced::default(),
        })
    }

    /// Where runners connect (`forgejo-runner … --url`): the instance's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn scope(&self) -> &RunnerScope {
        &self.scope
    }

    fn path<'a>(&'a self, tail: &[&'a str]) -> Vec<&'a str> {
        let mut segments = self.scope.segments();
        segments.extend_from_slice(tail);
        segments
    }

    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<Vec<u8>> {
        let url = self.transport.url(segments, query);
        // Forgejo does not de-duplicate creates: a POST whose answer was lost is not repeated
        // here; the next registration of the name removes what it may have left.
        let repeat = if method == Method::POST {
            Repeat::Once
        } else {
            Repeat::Safe
        };
        let response = self
            .transport
            .send_as(method, url, body, &self.token, Budget::Track, repeat)
            .await
            .map_err(forgejo_error)?;
        Ok(response.body)
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<T> {
        let bytes = self.call(method, segments, query, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::Permanent(format!(
                "unexpected response from /{}: {e}",
                segments.join("/")
            ))
        })
    }

    /// Every runner in scope, all pages, the tenant's or not.
    async fn all_runners(&self) -> Result<Vec<FjRunner>> {
        let segments = self.path(&["actions", "runners"]);
        let mut runners = Vec::new();
        for page in 1..=MAX_PAGES {
            let list: FjRunnerList = self
                .json(
                    Method::GET,
                    &segments,
                    &[("page", page.to_string()), ("limit", PER_PAGE.to_string())],
                    None,
                )
                .await?;
            let items = match list {
                FjRunnerList::Array(items) | FjRunnerList::Object { runners: items } => items,
            };
            let n = items.len();
            runners.extend(items);
            if n < PER_PAGE as usize {
                return Ok(runners);
            }
        }
        Err(Error::Permanent(format!(
            "more than {MAX_PAGES} pages of runners at /{}; refusing to truncate",
            segments.join("/")
        )))
    }

    /// Waiting and running jobs in scope.
    async fn jobs(&self) -> Result<Vec<FjJob>> {
        let segments = self.path(&["actions", "runners", "jobs"]);
        // Forgejo answers `null` for an empty list.
        let jobs: Option<Vec<FjJob>> = self.json(Method::GET, &segments, &[], None).await?;
        Ok(jobs.unwrap_or_default())
    }

    /// The running jobs' ids; none where the server has no runner job list (Gitea), which
    /// leaves only the runner's own status to go by.
    async fn running(&self) -> Result<BTreeSet<u64>> {
        let jobs = match self.jobs().await {
            Err(Error::NotFound(_)) => Vec::new(),
            other => other?,
        };
        Ok(jobs
            .into_iter()
            .filter(|job| job.status == "running")
            .map(|job| job.id)
            .collect())
    }

    /// Removes this tenant's runners of that name: a registration whose answer was lost can
    /// never be used (its token is shown once), so one name has one registration.
    async fn remove_stale(&self, name: &str) -> Result<()> {
        for stale in self
            .list_runners()
            .await?
            .into_iter()
            .filter(|r| r.name == name)
        {
            if stale.status == RunnerStatus::Busy {
                return Err(Error::Conflict(format!(
                    "a runner named {name} is running a job"
                )));
            }
            match self.delete(stale.id).await {
                Ok(()) | Err(Error::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    async fn delete(&self, id: RunnerId) -> Result<()> {
        let id = id.to_string();
        self.call(
            Method::DELETE,
            &self.path(&["actions", "runners", &id]),
            &[],
            None,
        )
        .await
        .map(drop)
    }

    /// The legacy registration token: `GET` (Forgejo), else `POST` (Gitea 1.24+).
    async fn legacy_token(&self) -> Result<Secret> {
        let segments = self.path(&["actions", "runners", "registration-token"]);
        let token: FjToken = match self.json(Method::GET, &segments, &[], None).await {
            Err(error) if missing_endpoint(&error) => {
                self.json(Method::POST, &segments, &[], None).await?
            }
            other => other?,
        };
        if token.token.is_empty() {
            return Err(Error::Permanent(
                "the registration-token answer holds no token".into(),
            ));
        }
        Ok(Secret::new(token.token))
    }

    fn labels_for(&self, request: &JitRequest) -> (String, Vec<String>) {
        let unique = unique_label(&request.name);
        let mut labels = request.labels.clone();
        labels.push(unique.clone());
        labels.push(self.tenant_marker.clone());
        labels.sort();
        labels.dedup();
        (unique, labels)
    }
}

/// 404 or 405: the server has no such endpoint (or not for this method).
fn missing_endpoint(error: &Error) -> bool {
    match error {
        Error::NotFound(_) => true,
        Error::Permanent(message) => message.contains("405 Method Not Allowed"),
        _ => false,
    }
}

fn forgejo_error(error: Error) -> Error {
    match error {
        Error::Unauthorized(message) => Error::Unauthorized(format!(
            "{message}; check credentials.token (a Forgejo access token with write:organization, or write:repository for a repository's runners)"
        )),
        Error::Permanent(message) if message.contains(" 403 ") => Error::Permanent(format!(
            "{message}; the token lacks a permission: credentials.token needs write:organization (or write:repository) and the user must own or administer the organization or repository"
        )),
        other => other,
    }
}

#[async_trait]
impl Forge for ForgejoForge {
    fn forge_type(&self) -> ForgeType {
        ForgeType::Forgejo
    }

    async fn registration_token(&self) -> Result<RegistrationToken> {
        Ok(RegistrationToken {
            token: self.legacy_token().await?,
            // Forgejo's registration tokens do not expire; they stay valid until reset.
            expires_at: nimbus_types::now() + time::Duration::days(365),
        })
    }

    /// Forgejo removes runners through the API; the runner needs no token to leave.
    async fn remove_token(&self) -> Result<RegistrationToken> {
        Err(Error::Permanent(
            "Forgejo runners are removed through DELETE …/actions/runners/{id}; there is no remove token".into(),
        ))
    }

    async fn jit_config(&self, request: &JitRequest) -> Result<JitConfig> {
        let (unique, labels) = self.labels_for(request);
        self.remove_stale(&request.name).await?;
        if !self.legacy.load(Ordering::Relaxed) {
            let body = serde_json::json!({
                "name": request.name,
                "description": self.tenant_marker,
                "ephemeral": true,
            });
            match self
                .json::<FjCreated>(
                    Method::POST,
                    &self.path(&["actions", "runners"]),
                    &[],
                    Some(&body),
                )
                .await
            {
                Ok(created) => {
                    return Ok(JitConfig {
                        runner: Runner {
                            id: RunnerId(created.id),
                            name: request.name.clone(),
                            os: String::new(),
                            status: RunnerStatus::Offline,
                            labels,
                            ephemeral: true,
                            runner_group_id: None,
                        },
                        encoded_jit_config: Secret::new(created.token),
                        unique_label: unique,
                        kind: JitKind::RunnerIdentity { uuid: created.uuid },
                    });
                }
                Err(error)
                    if self.registration == Registration::Auto && missing_endpoint(&error) =>
                {
                    tracing::info!(
                        %error,
                        "the Forgejo server cannot create runners directly; using registration tokens"
                    );
                    self.legacy.store(true, Ordering::Relaxed);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(JitConfig {
            runner: Runner {
                id: RunnerId(0),
                name: request.name.clone(),
                os: String::new(),
                status: RunnerStatus::Offline,
                labels,
                ephemeral: false,
                runner_group_id: None,
            },
            encoded_jit_config: self.legacy_token().await?,
            unique_label: unique,
            kind: JitKind::RegistrationToken,
        })
    }

    async fn list_runners(&self) -> Result<Vec<Runner>> {
        Ok(self
            .all_runners()
            .await?
            .into_iter()
            .filter_map(|r| r.runner(&self.tenant_marker))
            .collect())
    }

    async fn get_runner(&self, id: RunnerId) -> Result<Runner> {
        let raw = id.to_string();
        let runner: FjRunner = self
            .json(
                Method::GET,
                &self.path(&["actions", "runners", &raw]),
                &[],
                None,
            )
            .await?;
        runner
            .runner(&self.tenant_marker)
            .ok_or_else(|| Error::NotFound(format!("runner {id}")))
    }

    /// Busy when Forgejo says `active`; after a removal that raced with a job start, busy while
    /// a job that started during the removal still runs.
    async fn runner_status(&self, id: RunnerId) -> Result<RunnerStatus> {
        match self.get_runner(id).await {
            Err(Error::NotFound(message)) => {
                let suspects = self.raced.lock().get(&id).cloned();
                let Some(suspects) = suspects else {
                    return Err(Error::NotFound(message));
                };
                let running = self.running().await?;
                if suspects.iter().any(|job| running.contains(job)) {
                    Ok(RunnerStatus::Busy)
                } else {
                    self.raced.lock().remove(&id);
                    Err(Error::NotFound(message))
                }
            }
            other => other.map(|runner| runner.status),
        }
    }

    /// Deletes the runner, after checking it is this tenant's. The scope's running jobs are
    /// read before and after: Forgejo deletes a busy runner without asking and names no runner
    /// on a job, so jobs that started during the delete are remembered as possibly the
    /// runner's ([`Forge::runner_status`] reports it busy while they run).
    async fn remove_runner(&self, id: RunnerId) -> Result<()> {
        // Another tenant's runner is NotFound here, never deleted.
        self.get_runner(id).await?;
        let before = self.running().await?;
        self.delete(id).await?;
        let started: BTreeSet<u64> = self.running().await?.difference(&before).copied().collect();
        if !started.is_empty() {
            tracing::warn!(
                runner.id = %id,
                jobs = ?started,
                "jobs started while the runner was removed; it may be running one of them"
            );
            self.raced.lock().insert(id, started);
        }
        Ok(())
    }

    /// Forgejo has no runner groups: a runner belongs to its organization or repository.
    async fn runner_groups(&self) -> Result<Vec<RunnerGroup>> {
        Ok(vec![RunnerGroup {
            id: 1,
            name: match &self.scope {
                RunnerScope::Org { .. } => "organization".into(),
                RunnerScope::Repo { .. } => "repository".into(),
            },
            default: true,
        }])
    }

    async fn demand(&self) -> Result<Vec<ForgeJob>> {
        let mut jobs: Vec<ForgeJob> = self
            .jobs()
            .await?
            .into_iter()
            .filter_map(|job| {
                let status = match job.status.as_str() {
                    "waiting" => JobStatus::Queued,
                    "running" => JobStatus::InProgress,
                    // `blocked` jobs wait for their `needs`; no runner can take them yet.
                    _ => return None,
                };
                let repository = match &self.scope {
                    RunnerScope::Repo { owner, repo } => format!("{owner}/{repo}"),
                    // The job list names the repository by id only.
                    RunnerScope::Org { org } => {
                        format!("{org}/{}", job.repo_id.unwrap_or_default())
                    }
                };
                Some(ForgeJob {
                    job_id: job.id,
                    run_id: job.run_id.unwrap_or_default(),
                    repository,
                    labels: LabelSet::new(job.runs_on),
                    status,
                })
            })
            .collect();
        jobs.sort_by_key(|job| job.job_id);
        jobs.dedup_by_key(|job| job.job_id);
        Ok(jobs)
    }

    fn demand_poll_period(&self) -> Duration {
        self.poll_interval
    }

    fn rate_limit(&self) -> Option<RateLimit> {
        self.transport.rate_limit()
    }

    /// Forgejo sends no job webhooks Nimbus could count: demand is polled.
    fn webhook_verifier(&self) -> Option<std::sync::Arc<dyn WebhookVerifier>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(config: serde_json::Value, credentials: Option<&str>) -> Result<ForgejoConfig> {
        ForgejoConfig::from_forge_config(&ForgeConfig {
            tenant_id: TenantId::new(),
            forge_type: ForgeType::Forgejo,
            org: "acme".into(),
            credentials: credentials.map(Secret::new),
            config,
            updated_at: nimbus_types::now(),
        })
    }

    #[test]
    fn settings_are_checked_by_field() {
        let token = Some(r#"{"token": "fj-abc"}"#);
        let org = config(json!({"url": "https://code.example/"}), token).unwrap();
        assert_eq!(org.url, "https://code.example");
        assert_eq!(org.api_url, "https://code.example/api/v1");
        assert_eq!(org.scope, RunnerScope::Org { org: "acme".into() });
        assert_eq!(org.registration, Registration::Auto);
        assert_eq!(org.poll_interval, DEFAULT_POLL_INTERVAL);
        let repo = config(
            json!({"url": "https://code.example", "api_url": "http://127.0.0.1:9/", "repo": "app",
                   "registration": "token", "poll_interval_secs": 30}),
            token,
        )
        .unwrap();
        assert_eq!(repo.api_url, "http://127.0.0.1:9");
        assert_eq!(
            repo.scope,
            RunnerScope::Repo {
                owner: "acme".into(),
                repo: "app".into()
            }
        );
        assert_eq!(repo.registration, Registration::Token);
        assert_eq!(repo.poll_interval, Duration::from_secs(30));
        let url = json!({"url": "https://code.example"});
        for (settings, credentials, field) in [
            (json!({}), token, "config.url"),
            (json!({"url": "ftp://x"}), token, "config.url"),
            (
                json!({"url": "https://x", "api_url": "https://u:p@x"}),
                token,
                "config.api_url",
            ),
            (
                json!({"url": "https://x", "repo": "acme/app"}),
                token,
                "config.repo",
            ),
            (
                json!({"url": "https://x", "registration": "maybe"}),
                token,
                "config.registration",
            ),
            (
                json!({"url": "https://x", "poll_interval_secs": 1}),
                token,
                "config.poll_interval_secs",
            ),
            (json!({"url": "https://x", "colour": 1}), token, "config"),
            (url.clone(), None, "credentials.token"),
            (
                url.clone(),
                Some(r#"{"token": "has space"}"#),
                "credentials.token",
            ),
            (url.clone(), Some("hunter2"), "credentials"),
        ] {
            match config(settings.clone(), credentials) {
                Err(Error::InvalidConfig {
                    field: got,
                    message,
                }) => {
                    assert_eq!(got, field, "{settings}");
                    assert!(!message.contains("hunter2"), "{message}");
                }
                other => panic!("{settings}: {:?}", other.map(|c| c.scope)),
            }
        }
    }

    #[test]
    fn runners_of_forgejo_and_gitea_are_read_alike() {
        let marker = "nimbus-tenant-x";
        let forgejo: FjRunnerList = serde_json::from_value(json!([
            {"id": 1, "name": "nimbus-a", "description": marker, "status": "active", "labels": ["linux"]},
            {"id": 2, "name": "someone", "description": "", "status": "idle", "labels": []},
        ]))
        .unwrap();
        let gitea: FjRunnerList = serde_json::from_value(json!({"runners": [
            {"id": 3, "name": "nimbus-b", "status": "online", "busy": false,
             "labels": [{"id": 1, "name": marker, "type": "custom"}]},
        ], "total_count": 1}))
        .unwrap();
        let mut seen = Vec::new();
        for list in [forgejo, gitea] {
            let items = match list {
                FjRunnerList::Array(items) | FjRunnerList::Object { runners: items } => items,
            };
            seen.extend(items.into_iter().filter_map(|r| r.runner(marker)));
        }
        assert_eq!(seen.len(), 2, "the other tenant's runner is not listed");
        assert_eq!(seen[0].status, RunnerStatus::Busy);
        assert!(seen[0].labels.contains(&unique_label("nimbus-a")));
        assert_eq!(seen[1].status, RunnerStatus::Idle);
        assert!(seen[1].labels.contains(&marker.to_owned()));
    }
}
