//! GitHub and GitHub Enterprise Server: self-hosted runners of an organization or a repository,
//! authenticated as a GitHub App installation or with a personal access token.
//!
//! Pagination asks for page after page of the same URL (`page=N`) and stops at the reported
//! total, a page that is not full or the last `Link: rel="next"`. It never follows URLs taken from
//! response headers, so the token is only ever sent to the configured API.

mod auth;
pub mod transport;
pub mod webhook;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt, stream};
use nimbus_types::{ForgeConfig, ForgeType, Secret, TenantId};
use reqwest::{Method, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

pub use self::auth::REFRESH_BEFORE_EXPIRY;
use self::auth::{AppAuth, Credentials};
pub use self::transport::RetryPolicy;
use self::transport::{Budget, Response, Transport};
pub use self::webhook::GithubWebhooks;
use crate::demand::{ForgeJob, JobStatus, LabelSet};
use crate::{
    Error, Forge, JitConfig, JitKind, JitRequest, MAX_PAGES, RateLimit, RegistrationToken, Result,
    Runner, RunnerGroup, RunnerId, RunnerStatus, WebhookVerifier, unique_label,
};

pub const DEFAULT_API_URL: &str = "https://api.github.com";
const PER_PAGE: u32 = 100;
/// Repositories whose open jobs are listed at the same time during a demand reconcile.
const REPO_CONCURRENCY: usize = 4;

/// Where runners are registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Org { org: String },
    Repo { owner: String, repo: String },
}

/// How Nimbus authenticates to GitHub.
#[derive(Clone, Debug)]
pub enum Auth {
    /// A GitHub App installed on the organization or repository (recommended).
    App {
        app_id: u64,
        installation_id: u64,
        private_key: Secret,
    },
    /// A personal access token (classic with `admin:org`/`repo`, or fine-grained with the
    /// "Self-hosted runners" and "Actions" permissions).
    Token(Secret),
}

/// Everything needed to talk to one tenant's GitHub.
#[derive(Clone, Debug)]
pub struct GithubConfig {
    /// `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise Server.
    pub api_url: String,
    pub scope: Scope,
    pub auth: Auth,
    /// The secret webhook deliveries are signed with; `None` refuses every delivery.
    pub webhook_secret: Option<Secret>,
    pub retry: RetryPolicy,
}

/// The non-secret part of a stored GitHub forge config (`ForgeConfig::config`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSettings {
    api_url: Option<String>,
    repo: Option<String>,
    app_id: Option<u64>,
    installation_id: Option<u64>,
}

/// The secret part (`ForgeConfig::credentials`, a JSON object sealed at rest).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredCredentials {
    private_key: Option<String>,
    token: Option<String>,
    webhook_secret: Option<String>,
}

impl GithubConfig {
    /// Reads a stored forge config: `config` is `{"api_url"?, "repo"?, "app_id"?,
    /// "installation_id"?}`, `credentials` a JSON object `{"private_key"? | "token"?,
    /// "webhook_secret"?}`.
    pub fn from_forge_config(forge: &ForgeConfig) -> Result<Self> {
        if forge.forge_type != ForgeType::Github {
            return Err(Error::config(
                "type",
                format!("{} is not github", forge.forge_type),
            ));
        }
        Self::from_parts(&forge.org, &forge.config, forge.credentials.as_ref())
    }

    /// Validates and resolves the parts of a forge config; errors name the offending field, so
    /// the API can answer 422 before storing anything.
    pub fn from_parts(
        org: &str,
        config: &serde_json::Value,
        credentials: Option<&Secret>,
    ) -> Result<Self> {
        let settings: StoredSettings = if config.is_null() {
            StoredSettings::default()
        } else {
            serde_json::from_value(config.clone())
                .map_err(|e| Error::config("config", e.to_string()))?
        };
        let credentials: StoredCredentials = match credentials {
            None => StoredCredentials::default(),
            // The serde error may quote the input: keep it out of the message.
            Some(secret) => serde_json::from_str(secret.expose()).map_err(|_| {
                Error::config(
                    "credentials",
                    "must be a JSON object with private_key or token, and webhook_secret",
                )
            })?,
        };
        validate_owner(org).map_err(|m| Error::config("org", m))?;
        let scope = match settings.repo {
            Some(repo) => {
                validate_repo(&repo).map_err(|m| Error::config("repo", m))?;
                Scope::Repo {
                    owner: org.to_owned(),
                    repo,
                }
            }
            None => Scope::Org {
                org: org.to_owned(),
            },
        };
        let auth = match (
            settings.app_id,
            settings.installation_id,
            credentials.private_key,
            credentials.token,
        ) {
            (Some(app_id), Some(installation_id), Some(key), None) => Auth::App {
                app_id,
                installation_id,
                private_key: Secret::new(key),
            },
            (None, None, None, Some(token)) if !token.trim().is_empty() => {
                Auth::Token(Secret::new(token.trim().to_owned()))
            }
            (_, _, Some(_), Some(_)) => {
                return Err(Error::config(
                    "credentials",
                    "give either a private_key (App) or a token, not both",
                ));
            }
            (None, _, Some(_), None) => {
                return Err(Error::config("app_id", "required with a private_key"));
            }
            (_, None, Some(_), None) => {
                return Err(Error::config(
                    "installation_id",
                    "required with a private_key",
                ));
            }
            (Some(_), _, None, _) | (_, Some(_), None, _) => {
                return Err(Error::config(
                    "private_key",
                    "required with app_id and installation_id",
                ));
            }
            _ => {
                return Err(Error::config(
                    "credentials",
                    "a GitHub App private_key or a token is required",
                ));
            }
        };
        let api_url = settings
            .api_url
            .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
        parse_api_url(&api_url)?;
        Ok(GithubConfig {
            api_url,
            scope,
            auth,
            webhook_secret: credentials
                .webhook_secret
                .filter(|s| !s.is_empty())
                .map(Secret::new),
            retry: RetryPolicy::default(),
        })
    }
}

/// The path of a tenant's webhook endpoint under the daemon's base URL; `nimbusctl forge show`
/// prints the full URL for pasting into GitHub's webhook settings.
pub fn webhook_path(tenant_id: TenantId) -> String {
    format!("/v1/tenants/{tenant_id}/forge/webhook")
}

fn parse_api_url(api_url: &str) -> Result<Url> {
    let url = Url::parse(api_url).map_err(|e| Error::config("api_url", e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(Error::config("api_url", "must be an http(s) URL"));
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(Error::config(
            "api_url",
            "must not carry credentials, a query or a fragment",
        ));
    }
    Ok(url)
}

/// GitHub logins: letters, digits and single hyphens, at most 39 characters.
fn validate_owner(owner: &str) -> std::result::Result<(), String> {
    let ok = !owner.is_empty()
        && owner.len() <= 39
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !owner.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{owner:?} is not a GitHub organization or user name"
        ))
    }
}

fn validate_repo(repo: &str) -> std::result::Result<(), String> {
    let ok = !repo.is_empty()
        && repo.len() <= 100
        && repo != "."
        && repo != ".."
        && repo
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!("{repo:?} is not a GitHub repository name"))
    }
}

/// The GitHub forge client.
pub struct GithubForge {
    transport: Transport,
    credentials: Credentials,
    scope: Scope,
    webhooks: Option<Arc<GithubWebhooks>>,
}

impl GithubForge {
    pub fn new(config: GithubConfig) -> Result<Self> {
        let base = parse_api_url(&config.api_url)?;
        let credentials = match &config.auth {
            Auth::App {
                app_id,
                installation_id,
                private_key,
            } => Credentials::App(AppAuth::new(*app_id, *installation_id, private_key)?),
            Auth::Token(token) => Credentials::Token(token.clone()),
        };
        match &config.scope {
            Scope::Org { org } => validate_owner(org).map_err(|m| Error::config("org", m))?,
            Scope::Repo { owner, repo } => {
                validate_owner(owner).map_err(|m| Error::config("org", m))?;
                validate_repo(repo).map_err(|m| Error::config("repo", m))?;
            }
        }
        let budget_key = match &config.auth {
            Auth::App {
                installation_id, ..
            } => format!("installation:{installation_id}"),
            Auth::Token(_) => "token".to_owned(),
        };
        Ok(GithubForge {
            transport: Transport::new(base, config.retry.clone(), budget_key)?,
            credentials,
            scope: config.scope.clone(),
            webhooks: config
                .webhook_secret
                .clone()
                .map(|s| Arc::new(GithubWebhooks::new(s))),
        })
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// `installation:<id>` or `token`: which budget [`Forge::rate_limit`] reports on.
    pub fn budget_key(&self) -> String {
        self.transport.budget_key().to_owned()
    }

    /// HTTP requests sent, retries and token exchanges included.
    pub fn requests_sent(&self) -> u64 {
        self.transport.requests_sent()
    }

    /// Installation token exchanges done (0 with a personal access token).
    pub fn token_exchanges(&self) -> u64 {
        match &self.credentials {
            Credentials::App(app) => app.exchanges(),
            Credentials::Token(_) => 0,
        }
    }

    /// A token to authenticate API calls with: the cached installation token or the PAT.
    pub async fn access_token(&self) -> Result<Secret> {
        match &self.credentials {
            Credentials::App(app) => app.token(&self.transport).await,
            Credentials::Token(token) => Ok(token.clone()),
        }
    }

    fn scoped<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut segments = match &self.scope {
            Scope::Org { org } => vec!["orgs", org.as_str()],
            Scope::Repo { owner, repo } => vec!["repos", owner.as_str(), repo.as_str()],
        };
        segments.extend_from_slice(rest);
        segments
    }

    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
    ) -> Result<Response> {
        let token = self.access_token().await?;
        match self
            .transport
            .send(method.clone(), url.clone(), body, &token, Budget::Track)
            .await
        {
            // An installation token can be revoked before it expires (App reinstalled,
            // permissions changed): exchange a fresh one once.
            Err(Error::Unauthorized(_)) if matches!(self.credentials, Credentials::App(_)) => {
                if let Credentials::App(app) = &self.credentials {
                    app.invalidate(&token);
                }
                let token = self.access_token().await?;
                self.transport
                    .send(method, url, body, &token, Budget::Track)
                    .await
            }
            other => other,
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<T> {
        let url = self.transport.url(segments, query);
        let path = url.path().to_owned();
        let response = self.call(method, url, body).await?;
        parse_body(&path, &response.body)
    }

    /// Every item of a paginated listing. `field` names the array in the response object, or
    /// `None` when the response is the array itself.
    async fn paginate<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        field: Option<&str>,
    ) -> Result<Vec<T>> {
        let mut items = Vec::new();
        for page in 1..=MAX_PAGES {
            let mut page_query = query.to_vec();
            page_query.push(("per_page", PER_PAGE.to_string()));
            page_query.push(("page", page.to_string()));
            let url = self.transport.url(segments, &page_query);
            let path = url.path().to_owned();
            let response = self.call(Method::GET, url, None).await?;
            let value: serde_json::Value = parse_body(&path, &response.body)?;
            let (total, array) = match field {
                Some(field) => (
                    value.get("total_count").and_then(|t| t.as_u64()),
                    value.get(field).cloned(),
                ),
                None => (None, Some(value)),
            };
            let page_items: Vec<T> = match array {
                Some(array) => serde_json::from_value(array).map_err(|e| {
                    Error::Permanent(format!("unexpected response from {path}: {e}"))
                })?,
                None => {
                    return Err(Error::Permanent(format!(
                        "unexpected response from {path}: no {} list",
                        field.unwrap_or("item")
                    )));
                }
            };
            let n_page = page_items.len();
            items.extend(page_items);
            let has_next = response
                .headers
                .get_all(reqwest::header::LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("rel=\"next\""));
            let reached_total = total.is_some_and(|total| items.len() as u64 >= total);
            // GitHub fills every page but the last.
            let short_page = n_page < PER_PAGE as usize;
            if short_page || !has_next || reached_total {
                return Ok(items);
            }
        }
        Err(Error::Permanent(format!(
            "more than {MAX_PAGES} pages of {PER_PAGE} at /{}; refusing to truncate",
            segments.join("/")
        )))
    }

    /// The runner called `name`, if any (GitHub's `name` filter of the runner listing).
    pub async fn find_runner(&self, name: &str) -> Result<Option<Runner>> {
        let runners: Vec<GhRunner> = self
            .paginate(
                &self.scoped(&["actions", "runners"]),
                &[("name", name.to_owned())],
                Some("runners"),
            )
            .await?;
        Ok(runners
            .into_iter()
            .find(|r| r.name == name)
            .map(Runner::from))
    }

    async fn generate_jit(&self, body: &serde_json::Value) -> Result<GhJit> {
        self.json(
            Method::POST,
            &self.scoped(&["actions", "runners", "generate-jitconfig"]),
            &[],
            Some(body),
        )
        .await
    }

    async fn token_at(&self, endpoint: &str) -> Result<RegistrationToken> {
        let token: GhToken = self
            .json(
                Method::POST,
                &self.scoped(&["actions", "runners", endpoint]),
                &[],
                None,
            )
            .await?;
        Ok(RegistrationToken {
            token: Secret::new(token.token),
            expires_at: token.expires_at,
        })
    }

    /// `owner/name` of every repository whose jobs count for this forge.
    async fn repositories(&self) -> Result<Vec<(String, String)>> {
        let org = match &self.scope {
            Scope::Repo { owner, repo } => return Ok(vec![(owner.clone(), repo.clone())]),
            Scope::Org { org } => org,
        };
        let repos: Vec<GhRepo> = match &self.credentials {
            Credentials::App(_) => {
                self.paginate(&["installation", "repositories"], &[], Some("repositories"))
                    .await?
            }
            Credentials::Token(_) => {
                self.paginate(&["orgs", org, "repos"], &[("type", "all".to_owned())], None)
                    .await?
            }
        };
        Ok(repos
            .into_iter()
            .filter(|r| !r.archived && r.owner.login.eq_ignore_ascii_case(org))
            .map(|r| (r.owner.login, r.name))
            .collect())
    }

    /// Queued, waiting and in-progress jobs of one repository: the jobs of its queued and
    /// in-progress workflow runs (a queued job can sit in a run that is already in progress).
    async fn repo_open_jobs(&self, owner: &str, repo: &str) -> Result<Vec<ForgeJob>> {
        let mut run_ids = Vec::new();
        for status in ["queued", "in_progress"] {
            let runs: Vec<GhRun> = self
                .paginate(
                    &["repos", owner, repo, "actions", "runs"],
                    &[("status", status.to_owned())],
                    Some("workflow_runs"),
                )
                .await?;
            run_ids.extend(runs.into_iter().map(|r| r.id));
        }
        run_ids.sort_unstable();
        run_ids.dedup();
        let mut jobs = Vec::new();
        for run_id in run_ids {
            let run = run_id.to_string();
            let listed: Vec<GhJob> = self
                .paginate(
                    &["repos", owner, repo, "actions", "runs", &run, "jobs"],
                    &[("filter", "latest".to_owned())],
                    Some("jobs"),
                )
                .await?;
            for job in listed {
                let status = job_status(&job.status);
                if status == JobStatus::Completed {
                    continue;
                }
                jobs.push(ForgeJob {
                    job_id: job.id,
                    run_id: job.run_id,
                    repository: format!("{owner}/{repo}"),
                    labels: LabelSet::new(job.labels),
                    status,
                });
            }
        }
        Ok(jobs)
    }
}

fn parse_body<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::Permanent(format!("unexpected response from {path}: {e}")))
}

fn job_status(status: &str) -> JobStatus {
    match status {
        "queued" => JobStatus::Queued,
        "in_progress" => JobStatus::InProgress,
        "completed" => JobStatus::Completed,
        // waiting (approval), pending (concurrency group), requested: not yet for a runner.
        _ => JobStatus::Waiting,
    }
}

#[derive(Deserialize)]
struct GhToken {
    token: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

#[derive(Deserialize)]
struct GhLabel {
    name: String,
}

#[derive(Deserialize)]
struct GhRunner {
    id: u64,
    name: String,
    os: String,
    status: String,
    busy: bool,
    labels: Vec<GhLabel>,
    #[serde(default)]
    ephemeral: bool,
    #[serde(default)]
    runner_group_id: Option<u64>,
}

impl From<GhRunner> for Runner {
    fn from(runner: GhRunner) -> Self {
        let status = if runner.busy {
            RunnerStatus::Busy
        } else if runner.status == "online" {
            RunnerStatus::Idle
        } else {
            RunnerStatus::Offline
        };
        Runner {
            id: RunnerId(runner.id),
            name: runner.name,
            os: runner.os,
            status,
            labels: runner.labels.into_iter().map(|l| l.name).collect(),
            ephemeral: runner.ephemeral,
            runner_group_id: runner.runner_group_id,
        }
    }
}

#[derive(Deserialize)]
struct GhJit {
    runner: GhRunner,
    encoded_jit_config: String,
}

#[derive(Deserialize)]
struct GhRunnerGroup {
    id: u64,
    name: String,
    #[serde(default)]
    default: bool,
}

#[derive(Deserialize)]
struct GhOwner {
    login: String,
}

#[derive(Deserialize)]
struct GhRepo {
    name: String,
    owner: GhOwner,
    #[serde(default)]
    archived: bool,
}

#[derive(Deserialize)]
struct GhRun {
    id: u64,
}

#[derive(Deserialize)]
struct GhJob {
    id: u64,
    run_id: u64,
    status: String,
    #[serde(default)]
    labels: Vec<String>,
}

/// The request body GitHub's generate-jitconfig endpoint takes, after validation.
fn jit_body(request: &JitRequest) -> Result<(serde_json::Value, String)> {
    let name = request.name.as_str();
    if name.is_empty()
        || name.len() > 64
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Error::Permanent(format!(
            "runner name {:?} must be 1-64 characters without spaces",
            request.name
        )));
    }
    let unique = unique_label(name);
    let mut labels: Vec<String> = Vec::new();
    for label in request.labels.iter().chain(std::iter::once(&unique)) {
        let label = label.trim();
        if label.is_empty() || label.len() > 256 || label.contains(',') {
            return Err(Error::Permanent(format!(
                "runner label {label:?} is not valid"
            )));
        }
        if !labels.iter().any(|l| l.eq_ignore_ascii_case(label)) {
            labels.push(label.to_owned());
        }
    }
    if labels.len() > 100 {
        return Err(Error::Permanent("a runner takes at most 100 labels".into()));
    }
    let mut body = serde_json::json!({
        "name": name,
        "runner_group_id": request.runner_group_id,
        "labels": labels,
    });
    if let Some(work_folder) = &request.work_folder {
        body["work_folder"] = serde_json::Value::String(work_folder.clone());
    }
    Ok((body, unique))
}

#[async_trait]
impl Forge for GithubForge {
    fn forge_type(&self) -> ForgeType {
        ForgeType::Github
    }

    async fn registration_token(&self) -> Result<RegistrationToken> {
        self.token_at("registration-token").await
    }

    async fn remove_token(&self) -> Result<RegistrationToken> {
        self.token_at("remove-token").await
    }

    async fn jit_config(&self, request: &JitRequest) -> Result<JitConfig> {
        let (body, unique_label) = jit_body(request)?;
        let jit = match self.generate_jit(&body).await {
            Ok(jit) => jit,
            // The name is taken. Typically our own earlier attempt: GitHub created the runner
            // but the answer was lost to a timeout and the request was retried. A runner of
            // that name that never came online holds no job and is useless without its config,
            // so it is replaced; one that is online or busy is someone's and is left alone.
            Err(Error::Conflict(message)) => match self.find_runner(&request.name).await? {
                Some(existing) if existing.status == RunnerStatus::Offline => {
                    tracing::info!(
                        runner.id = %existing.id,
                        runner.name = %existing.name,
                        "replacing an offline runner registered under the same name"
                    );
                    match self.remove_runner(existing.id).await {
                        Ok(()) | Err(Error::NotFound(_)) => {}
                        Err(error) => return Err(error),
                    }
                    self.generate_jit(&body).await?
                }
                _ => return Err(Error::Conflict(message)),
            },
            Err(error) => return Err(error),
        };
        Ok(JitConfig {
            runner: jit.runner.into(),
            encoded_jit_config: Secret::new(jit.encoded_jit_config),
            unique_label,
            kind: JitKind::JitConfig,
        })
    }

    async fn list_runners(&self) -> Result<Vec<Runner>> {
        let runners: Vec<GhRunner> = self
            .paginate(&self.scoped(&["actions", "runners"]), &[], Some("runners"))
            .await?;
        Ok(runners.into_iter().map(Runner::from).collect())
    }

    async fn get_runner(&self, id: RunnerId) -> Result<Runner> {
        let id = id.to_string();
        let runner: GhRunner = self
            .json(
                Method::GET,
                &self.scoped(&["actions", "runners", &id]),
                &[],
                None,
            )
            .await
            .map_err(|error| match error {
                Error::NotFound(_) => Error::NotFound(format!("runner {id}")),
                other => other,
            })?;
        Ok(runner.into())
    }

    async fn remove_runner(&self, id: RunnerId) -> Result<()> {
        let id = id.to_string();
        let url = self
            .transport
            .url(&self.scoped(&["actions", "runners", &id]), &[]);
        match self.call(Method::DELETE, url, None).await {
            Ok(_) => Ok(()),
            Err(Error::NotFound(_)) => Err(Error::NotFound(format!("runner {id}"))),
            Err(other) => Err(other),
        }
    }

    async fn runner_groups(&self) -> Result<Vec<RunnerGroup>> {
        match &self.scope {
            Scope::Org { org } => {
                let groups: Vec<GhRunnerGroup> = self
                    .paginate(
                        &["orgs", org, "actions", "runner-groups"],
                        &[],
                        Some("runner_groups"),
                    )
                    .await?;
                Ok(groups
                    .into_iter()
                    .map(|g| RunnerGroup {
                        id: g.id,
                        name: g.name,
                        default: g.default,
                    })
                    .collect())
            }
            // Repository runners have no groups to list; GitHub files them under the default
            // group, id 1, which is what generate-jitconfig expects for a repository.
            Scope::Repo { .. } => Ok(vec![RunnerGroup {
                id: 1,
                name: "Default".to_owned(),
                default: true,
            }]),
        }
    }

    async fn demand(&self) -> Result<Vec<ForgeJob>> {
        let repos = self.repositories().await?;
        let per_repo: Vec<Vec<ForgeJob>> = stream::iter(repos)
            .map(|(owner, repo)| async move { self.repo_open_jobs(&owner, &repo).await })
            .buffer_unordered(REPO_CONCURRENCY)
            .try_collect()
            .await?;
        let mut seen = HashSet::new();
        let mut jobs: BTreeMap<u64, ForgeJob> = BTreeMap::new();
        for job in per_repo.into_iter().flatten() {
            if seen.insert(job.job_id) {
                jobs.insert(job.job_id, job);
            }
        }
        Ok(jobs.into_values().collect())
    }

    fn rate_limit(&self) -> Option<RateLimit> {
        self.transport.rate_limit()
    }

    fn webhook_verifier(&self) -> Option<Arc<dyn WebhookVerifier>> {
        self.webhooks.clone().map(|w| w as Arc<dyn WebhookVerifier>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_config(
        config: serde_json::Value,
        credentials: Option<&str>,
        expect: Result<(), &str>,
    ) {
        let secret = credentials.map(Secret::new);
        let result = GithubConfig::from_parts("acme", &config, secret.as_ref());
        match (result, expect) {
            (Ok(_), Ok(())) => {}
            (Err(Error::InvalidConfig { field, .. }), Err(expected)) => {
                assert_eq!(
                    field, expected,
                    "config {config} credentials {credentials:?}"
                )
            }
            (other, expect) => panic!("config {config}: got {other:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn settings_name_the_offending_field() {
        use serde_json::json;
        check_config(json!({}), Some(r#"{"token":"ghp_x"}"#), Ok(()));
        check_config(
            json!(null),
            Some(r#"{"token":"ghp_x","webhook_secret":"w"}"#),
            Ok(()),
        );
        check_config(
            json!({"repo":"app","api_url":"https://ghe.example/api/v3"}),
            Some(r#"{"token":"t"}"#),
            Ok(()),
        );
        check_config(json!({}), None, Err("credentials"));
        check_config(json!({}), Some("not json"), Err("credentials"));
        check_config(
            json!({"app_id": 1}),
            Some(r#"{"token":"t"}"#),
            Err("private_key"),
        );
        check_config(
            json!({"installation_id": 1}),
            Some(r#"{"private_key":"k"}"#),
            Err("app_id"),
        );
        check_config(
            json!({"app_id": 1}),
            Some(r#"{"private_key":"k"}"#),
            Err("installation_id"),
        );
        check_config(
            json!({"repo":"../x"}),
            Some(r#"{"token":"t"}"#),
            Err("repo"),
        );
        check_config(
            json!({"api_url":"ftp://x"}),
            Some(r#"{"token":"t"}"#),
            Err("api_url"),
        );
        check_config(
            json!({"api_url":"https://u:p@x"}),
            Some(r#"{"token":"t"}"#),
            Err("api_url"),
        );
        check_config(
            json!({"colour":"red"}),
            Some(r#"{"token":"t"}"#),
            Err("config"),
        );
        let bad_org =
            GithubConfig::from_parts("ac/me", &json!({}), Some(&Secret::new(r#"{"token":"t"}"#)));
        assert!(matches!(bad_org, Err(Error::InvalidConfig { field, .. }) if field == "org"));
    }

    #[test]
    fn credentials_never_show_in_errors_or_debug() {
        let secret = Secret::new(r#"{"token":"ghp_supersecret","extra":"ghp_supersecret"}"#);
        let error =
            GithubConfig::from_parts("acme", &serde_json::json!({}), Some(&secret)).unwrap_err();
        assert!(!error.to_string().contains("supersecret"), "{error}");
        let ok = GithubConfig::from_parts(
            "acme",
            &serde_json::json!({}),
            Some(&Secret::new(r#"{"token":"ghp_supersecret"}"#)),
        )
        .unwrap();
        assert!(!format!("{ok:?}").contains("supersecret"));
        let bad_key = GithubConfig::from_parts(
            "acme",
            &serde_json::json!({"app_id": 1, "installation_id": 2}),
            Some(&Secret::new(r#"{"private_key":"-----BEGIN RSA PRIVATE KEY-----\nsupersecret\n-----END RSA PRIVATE KEY-----"}"#)),
        )
        .unwrap();
        let error = GithubForge::new(bad_key)
            .err()
            .expect("a bad key is refused");
        assert!(!error.to_string().contains("supersecret"), "{error}");
    }

    #[test]
    fn jit_bodies_get_the_unique_label_once() {
        let request = JitRequest {
            name: "m-1".into(),
            runner_group_id: 1,
            labels: vec!["self-hosted".into(), "linux".into(), "NIMBUS-m-1".into()],
            work_folder: None,
        };
        let (body, unique) = jit_body(&request).unwrap();
        assert_eq!(unique, "nimbus-m-1");
        assert_eq!(
            body["labels"],
            serde_json::json!(["self-hosted", "linux", "NIMBUS-m-1"])
        );
        let empty = JitRequest {
            labels: vec![],
            ..request.clone()
        };
        assert_eq!(
            jit_body(&empty).unwrap().0["labels"],
            serde_json::json!(["nimbus-m-1"])
        );
        for bad in ["", "a b", "x\n"] {
            assert!(
                jit_body(&JitRequest {
                    name: bad.into(),
                    ..request.clone()
                })
                .is_err(),
                "{bad:?}"
            );
        }
        let too_many = JitRequest {
            labels: (0..100).map(|i| format!("l{i}")).collect(),
            ..request
        };
        assert!(jit_body(&too_many).is_err());
    }
}
