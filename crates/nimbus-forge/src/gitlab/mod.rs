//! GitLab (gitlab.com and self-managed) behind the [`Forge`] trait.
//!
//! Runners are created through `POST /api/v4/user/runners` (instance, group or project type; the
//! tag list is the machine's labels plus [`unique_label`]); the `glrt-` token it returns is the
//! runner's credential and goes to the machine (`gitlab-runner register --token`), never into a
//! log. Removal is `DELETE /api/v4/runners/:id`; whether a runner is busy comes from its
//! `job_execution_status` and from the running jobs of the configured projects. Demand comes
//! from Job Hook webhooks ([`GitlabWebhooks`]) and from `GET /projects/:id/jobs?scope=pending`
//! (and `running`) for the configured projects: GitLab has no group-wide list of pending jobs.
//! Requests go through the shared transport in GitLab's dialect (`PRIVATE-TOKEN`, `RateLimit-*`,
//! 429 + `Retry-After`). The legacy registration-token flow is not used.

mod webhook;

use std::sync::Arc;

use async_trait::async_trait;
use nimbus_types::{ForgeConfig, ForgeType, Secret};
use reqwest::{Method, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use self::webhook::{
    EVENT_HEADER, GitlabWebhooks, JOB_HOOK, TOKEN_HEADER, UUID_HEADER, job_status,
};
pub use crate::github::RetryPolicy;
use crate::github::transport::{Budget, Dialect, Repeat, Transport};
use crate::{
    Error, Forge, ForgeJob, JitConfig, JitKind, JitRequest, LabelSet, MAX_PAGES, RateLimit,
    RegistrationToken, Result, Runner, RunnerGroup, RunnerId, RunnerStatus, WebhookVerifier,
    unique_label,
};

const PER_PAGE: u32 = 100;

/// The tag on every runner Nimbus creates for a tenant.
pub fn tenant_tag(tenant_id: nimbus_types::TenantId) -> String {
    format!("nimbus-tenant-{}", tenant_id.as_uuid().simple())
}

/// Which runners Nimbus creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunnerScope {
    /// Instance-wide (needs an administrator's token).
    Instance,
    Group {
        group_id: u64,
    },
    Project {
        project_id: u64,
    },
}

impl RunnerScope {
    fn runner_type(self) -> &'static str {
        match self {
            RunnerScope::Instance => "instance_type",
            RunnerScope::Group { .. } => "group_type",
            RunnerScope::Project { .. } => "project_type",
        }
    }
}

/// Everything needed to talk to one tenant's GitLab.
#[derive(Clone, Debug)]
pub struct GitlabConfig {
    /// The tag every runner of this tenant carries ([`tenant_tag`]): listings are filtered by
    /// it, so one tenant never sees (or sweeps) another's runners in a shared group.
    pub tenant_tag: String,
    /// The instance's base URL (`https://gitlab.com`, `https://gitlab.example.com`); the API is
    /// under `/api/v4`.
    pub url: String,
    pub scope: RunnerScope,
    /// Projects whose pending jobs are demand and whose running jobs show busy runners.
    pub projects: Vec<u64>,
    /// A personal, group or project access token with the `create_runner` and `manage_runner`
    /// (or `api`) scopes.
    pub token: Secret,
    /// The secret token of the GitLab webhook; `None` refuses every delivery.
    pub webhook_secret: Option<Secret>,
    pub retry: RetryPolicy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSettings {
    #[serde(alias = "api_url")]
    url: Option<String>,
    runner_type: Option<String>,
    group_id: Option<u64>,
    project_id: Option<u64>,
    #[serde(default)]
    projects: Vec<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredCredentials {
    token: Option<String>,
    webhook_secret: Option<String>,
}

impl GitlabConfig {
    /// Reads a stored forge config: `config` is `{"url"?, "runner_type"?, "group_id"?,
    /// "project_id"?, "projects"?}`, `credentials` `{"token", "webhook_secret"?}`.
    pub fn from_forge_config(forge: &ForgeConfig) -> Result<Self> {
        if forge.forge_type != ForgeType::Gitlab {
            return Err(Error::config(
                "type",
                format!("{} is not gitlab", forge.forge_type),
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
            Some(secret) => serde_json::from_str(secret.expose()).map_err(|_| {
                Error::config(
                    "credentials",
                    "must be a JSON object with token and webhook_secret",
                )
            })?,
        };
        let url = settings.url.unwrap_or_else(|| "https://gitlab.com".into());
        parse_url(&url)?;
        let scope = match settings.runner_type.as_deref() {
            None | Some("group_type") => match settings.group_id {
                Some(group_id) => RunnerScope::Group { group_id },
                None if settings.runner_type.is_none() => match settings.project_id {
                    Some(project_id) => RunnerScope::Project { project_id },
                    None => {
                        return Err(Error::config(
                            "config.group_id",
                            "name the group (group_id) or project (project_id) runners are created in",
                        ));
                    }
                },
                None => {
                    return Err(Error::config(
                        "config.group_id",
                        "a group_type runner needs the group's numeric id",
                    ));
                }
            },
            Some("project_type") => RunnerScope::Project {
                project_id: settings.project_id.ok_or_else(|| {
                    Error::config(
                        "config.project_id",
                        "a project_type runner needs the project's numeric id",
                    )
                })?,
            },
            Some("instance_type") => RunnerScope::Instance,
            Some(other) => {
                return Err(Error::config(
                    "config.runner_type",
                    format!("{other:?} is not instance_type, group_type or project_type"),
                ));
            }
        };
        let mut projects = settings.projects;
        if let RunnerScope::Project { project_id } = scope
            && !projects.contains(&project_id)
        {
            projects.push(project_id);
        }
        let token = credentials
            .token
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                Error::config(
                    "credentials.token",
                    "a GitLab access token with the create_runner and manage_runner scopes is required",
                )
            })?;
        if !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(Error::config(
                "credentials.token",
                "must be the token as GitLab shows it (printable ASCII, no spaces)",
            ));
        }
        Ok(GitlabConfig {
            tenant_tag: tenant_tag(forge.tenant_id),
            url,
            scope,
            projects,
            token: Secret::new(token),
            webhook_secret: credentials
                .webhook_secret
                .filter(|s| !s.is_empty())
                .map(Secret::new),
            retry: RetryPolicy::default(),
        })
    }
}

fn parse_url(url: &str) -> Result<Url> {
    let parsed = Url::parse(url).map_err(|e| Error::config("config.url", e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
        return Err(Error::config("config.url", "must be an http(s) URL"));
    }
    if parsed.query().is_some()
        || parsed.fragment().is_some()
        || !parsed.username().is_empty()
        || parsed.password().is_some()
    {
        return Err(Error::config(
            "config.url",
            "must not carry credentials, a query or a fragment",
        ));
    }
    Ok(parsed)
}

/// The GitLab forge client.
pub struct GitlabForge {
    transport: Transport,
    tenant_tag: String,
    token: Secret,
    scope: RunnerScope,
    projects: Vec<u64>,
    web_url: String,
    webhooks: Option<Arc<GitlabWebhooks>>,
}

#[derive(Deserialize)]
struct GlRunner {
    id: u64,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    job_execution_status: Option<String>,
    #[serde(default)]
    paused: Option<bool>,
}

impl GlRunner {
    /// GitLab's runner listing carries no tags; a runner listed under the tenant's tag was made
    /// by [`Forge::jit_config`], which always adds the tenant tag and [`unique_label`].
    fn runner(self, tenant_tag: &str) -> Runner {
        let online = self.status.as_deref() == Some("online") && self.paused != Some(true);
        let status = if self.job_execution_status.as_deref() == Some("active") {
            RunnerStatus::Busy
        } else if online {
            RunnerStatus::Idle
        } else {
            RunnerStatus::Offline
        };
        let name = self.description.unwrap_or_default();
        Runner {
            id: RunnerId(self.id),
            labels: vec![tenant_tag.to_owned(), unique_label(&name)],
            name,
            os: String::new(),
            status,
            ephemeral: false,
            runner_group_id: None,
        }
    }
}

#[derive(Deserialize)]
struct GlCreated {
    /// GitLab's description calls it a string; the server sends a number.
    id: serde_json::Value,
    token: String,
}

#[derive(Deserialize)]
struct GlJob {
    id: u64,
    status: String,
    #[serde(default)]
    tag_list: Vec<String>,
    #[serde(default)]
    web_url: Option<String>,
    #[serde(default)]
    pipeline: Option<GlPipeline>,
    #[serde(default)]
    runner: Option<GlJobRunner>,
}

#[derive(Deserialize)]
struct GlPipeline {
    id: u64,
}

#[derive(Deserialize)]
struct GlJobRunner {
    id: u64,
}

/// `group/project` from a job's web URL (`https://host/group/project/-/jobs/8`): the same name
/// the Job Hook carries as `project.path_with_namespace`.
fn project_path(web_url: &str) -> Option<String> {
    let url = Url::parse(web_url).ok()?;
    let path = url.path().trim_start_matches('/');
    let (project, _) = path.split_once("/-/")?;
    Some(project.to_owned())
}

impl GitlabForge {
    pub fn new(config: GitlabConfig) -> Result<Self> {
        let base = parse_url(&config.url)?;
        let web_url = config.url.trim_end_matches('/').to_owned();
        let mut api = base.clone();
        {
            let mut path = api
                .path_segments_mut()
                .map_err(|_| Error::config("config.url", "must be an http(s) URL"))?;
            path.pop_if_empty();
            path.extend(["api", "v4"]);
        }
        Ok(GitlabForge {
            transport: Transport::with_dialect(
                api,
                config.retry.clone(),
                "token".to_owned(),
                Dialect::GITLAB,
            )?,
            token: config.token,
            tenant_tag: config.tenant_tag,
            scope: config.scope,
            projects: config.projects,
            web_url,
            webhooks: config
                .webhook_secret
                .map(|s| Arc::new(GitlabWebhooks::new(s))),
        })
    }

    /// Where runners register (`gitlab-runner register --url`): the instance's base URL.
    pub fn web_url(&self) -> &str {
        &self.web_url
    }

    pub fn scope(&self) -> RunnerScope {
        self.scope
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<(T, reqwest::header::HeaderMap)> {
        let url = self.transport.url(segments, query);
        let path = url.path().to_owned();
        // GitLab does not de-duplicate creates: a POST whose answer was lost is not repeated
        // here; the caller's next registration removes what it may have left.
        let repeat = if method == Method::POST {
            Repeat::Once
        } else {
            Repeat::Safe
        };
        let response = self
            .transport
            .send_as(method, url, body, &self.token, Budget::Track, repeat)
            .await
            .map_err(gitlab_error)?;
        let value = serde_json::from_slice(&response.body)
            .map_err(|e| Error::Permanent(format!("unexpected response from {path}: {e}")))?;
        Ok((value, response.headers))
    }

    /// Every item of a listing, following GitLab's `x-next-page`.
    async fn paginate<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Vec<T>> {
        let mut items = Vec::new();
        let mut page = 1u32;
        for _ in 0..MAX_PAGES {
            let mut page_query = query.to_vec();
            page_query.push(("per_page", PER_PAGE.to_string()));
            page_query.push(("page", page.to_string()));
            let (page_items, headers): (Vec<T>, _) =
                self.json(Method::GET, segments, &page_query, None).await?;
            let n = page_items.len();
            items.extend(page_items);
            let next = headers
                .get("x-next-page")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u32>().ok());
            match next {
                Some(next) if next > page && n > 0 => page = next,
                _ => return Ok(items),
            }
        }
        Err(Error::Permanent(format!(
            "more than {MAX_PAGES} pages at /{}; refusing to truncate",
            segments.join("/")
        )))
    }

    async fn project_jobs(&self, project_id: u64, scope: &str) -> Result<Vec<GlJob>> {
        let project = project_id.to_string();
        self.paginate(
            &["projects", &project, "jobs"],
            &[("scope", scope.to_owned())],
        )
        .await
    }

    /// Whether a running job of a configured project is on runner `id`.
    async fn runs_a_job(&self, id: RunnerId) -> Result<bool> {
        for project in &self.projects {
            let running = self.project_jobs(*project, "running").await?;
            if running
                .iter()
                .any(|job| job.runner.as_ref().is_some_and(|r| r.id == id.0))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// GitLab answers 403 for a token without the needed scope or role, which retrying cannot fix.
fn gitlab_error(error: Error) -> Error {
    match error {
        Error::Unauthorized(message) => Error::Unauthorized(format!(
            "{message}; check credentials.token (a GitLab access token with the create_runner and manage_runner scopes)"
        )),
        other => other,
    }
}

#[async_trait]
impl Forge for GitlabForge {
    fn forge_type(&self) -> ForgeType {
        ForgeType::Gitlab
    }

    /// GitLab's registration tokens are deprecated (and off by default since 17.0); Nimbus
    /// creates each runner with [`Forge::jit_config`] instead.
    async fn registration_token(&self) -> Result<RegistrationToken> {
        Err(Error::Permanent(
            "GitLab runners are created through POST /api/v4/user/runners (jit_config); the legacy registration token is not used".into(),
        ))
    }

    /// GitLab removes runners through the API ([`Forge::remove_runner`]); no token is needed.
    async fn remove_token(&self) -> Result<RegistrationToken> {
        Err(Error::Permanent(
            "GitLab runners are removed through DELETE /api/v4/runners/:id; there is no remove token".into(),
        ))
    }

    async fn jit_config(&self, request: &JitRequest) -> Result<JitConfig> {
        let unique = unique_label(&request.name);
        let mut tags: Vec<String> = request.labels.clone();
        tags.push(unique.clone());
        tags.push(self.tenant_tag.clone());
        tags.sort();
        tags.dedup();
        let (group_id, project_id) = match self.scope {
            RunnerScope::Instance => (0, 0),
            RunnerScope::Group { group_id } => (group_id, 0),
            RunnerScope::Project { project_id } => (0, project_id),
        };
        // Runner names are not unique at GitLab, and a token is shown only once: a runner of
        // this name left by an attempt whose answer was lost can never be used, so it goes
        // before a new one is made (one registration per name, never two).
        for stale in self
            .list_runners()
            .await?
            .into_iter()
            .filter(|r| r.name == request.name)
        {
            match self.remove_runner(stale.id).await {
                Ok(()) | Err(Error::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        // GitLab's description marks all three as required; the server reads only the ids its
        // runner type needs.
        let body = serde_json::json!({
            "runner_type": self.scope.runner_type(),
            "group_id": group_id,
            "project_id": project_id,
            "description": request.name,
            "tag_list": tags,
            "run_untagged": false,
            "locked": true,
            "paused": false,
        });
        let (created, _): (GlCreated, _) = self
            .json(Method::POST, &["user", "runners"], &[], Some(&body))
            .await?;
        let id = match &created.id {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| Error::Permanent("POST /user/runners: no runner id in the answer".into()))?;
        Ok(JitConfig {
            runner: Runner {
                id: RunnerId(id),
                name: request.name.clone(),
                os: String::new(),
                status: RunnerStatus::Offline,
                labels: tags,
                ephemeral: false,
                runner_group_id: None,
            },
            encoded_jit_config: Secret::new(created.token),
            unique_label: unique,
            kind: JitKind::RunnerToken,
        })
    }

    async fn list_runners(&self) -> Result<Vec<Runner>> {
        let runners: Vec<GlRunner> = self
            .paginate(
                &["runners"],
                &[
                    ("type", self.scope.runner_type().to_owned()),
                    ("tag_list", self.tenant_tag.clone()),
                ],
            )
            .await?;
        Ok(runners
            .into_iter()
            .map(|r| r.runner(&self.tenant_tag))
            .collect())
    }

    async fn get_runner(&self, id: RunnerId) -> Result<Runner> {
        self.list_runners()
            .await?
            .into_iter()
            .find(|runner| runner.id == id)
            .ok_or_else(|| Error::NotFound(format!("runner {id}")))
    }

    /// Busy when GitLab says the runner executes a job, or when a running job of a configured
    /// project is on it — also after the runner was deleted: GitLab deletes a busy runner
    /// without asking, and the job then still runs on the machine, which must stay.
    async fn runner_status(&self, id: RunnerId) -> Result<RunnerStatus> {
        let runner = self.get_runner(id).await;
        if matches!(&runner, Ok(r) if r.status == RunnerStatus::Busy) || self.runs_a_job(id).await?
        {
            return Ok(RunnerStatus::Busy);
        }
        Ok(runner?.status)
    }

    async fn remove_runner(&self, id: RunnerId) -> Result<()> {
        let url = self.transport.url(&["runners", &id.to_string()], &[]);
        self.transport
            .send(Method::DELETE, url, None, &self.token, Budget::Track)
            .await
            .map_err(gitlab_error)?;
        Ok(())
    }

    /// GitLab has no runner groups: every runner belongs to its instance, group or project.
    async fn runner_groups(&self) -> Result<Vec<RunnerGroup>> {
        Ok(vec![RunnerGroup {
            id: 1,
            name: self.scope.runner_type().to_owned(),
            default: true,
        }])
    }

    async fn demand(&self) -> Result<Vec<ForgeJob>> {
        let mut jobs = Vec::new();
        for project in &self.projects {
            for scope in ["pending", "running"] {
                for job in self.project_jobs(*project, scope).await? {
                    let Some(status) = job_status(&job.status) else {
                        continue;
                    };
                    jobs.push(ForgeJob {
                        job_id: job.id,
                        run_id: job.pipeline.map_or(0, |p| p.id),
                        repository: job
                            .web_url
                            .as_deref()
                            .and_then(project_path)
                            .unwrap_or_else(|| project.to_string()),
                        labels: LabelSet::new(job.tag_list),
                        status,
                    });
                }
            }
        }
        jobs.sort_by_key(|job| job.job_id);
        jobs.dedup_by_key(|job| job.job_id);
        Ok(jobs)
    }

    fn rate_limit(&self) -> Option<RateLimit> {
        self.transport.rate_limit()
    }

    fn webhook_verifier(&self) -> Option<Arc<dyn WebhookVerifier>> {
        self.webhooks
            .clone()
            .map(|hooks| hooks as Arc<dyn WebhookVerifier>)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn forge(config: serde_json::Value, credentials: Option<&str>) -> Result<GitlabConfig> {
        GitlabConfig::from_forge_config(&ForgeConfig {
            tenant_id: nimbus_types::TenantId::new(),
            forge_type: ForgeType::Gitlab,
            org: "acme".into(),
            credentials: credentials.map(Secret::new),
            config,
            updated_at: nimbus_types::now(),
        })
    }

    #[test]
    fn settings_are_checked_by_field() {
        let token = Some(r#"{"token": "glpat-abc", "webhook_secret": "w"}"#);
        let group = forge(json!({"group_id": 7, "projects": [3]}), token).unwrap();
        assert_eq!(group.scope, RunnerScope::Group { group_id: 7 });
        assert_eq!(group.projects, vec![3]);
        let project = forge(
            json!({"runner_type": "project_type", "project_id": 5}),
            token,
        )
        .unwrap();
        assert_eq!(project.projects, vec![5]);
        assert_eq!(
            forge(json!({"runner_type": "instance_type"}), token)
                .unwrap()
                .scope,
            RunnerScope::Instance
        );
        for (config, credentials, field) in [
            (json!({}), token, "config.group_id"),
            (
                json!({"runner_type": "group_type"}),
                token,
                "config.group_id",
            ),
            (
                json!({"runner_type": "project_type"}),
                token,
                "config.project_id",
            ),
            (
                json!({"runner_type": "shared"}),
                token,
                "config.runner_type",
            ),
            (
                json!({"group_id": 1, "url": "ftp://x"}),
                token,
                "config.url",
            ),
            (json!({"group_id": 1, "colour": 1}), token, "config"),
            (json!({"group_id": 1}), None, "credentials.token"),
            (
                json!({"group_id": 1}),
                Some(r#"{"token": "has space"}"#),
                "credentials.token",
            ),
            (json!({"group_id": 1}), Some("hunter2"), "credentials"),
        ] {
            match forge(config.clone(), credentials) {
                Err(Error::InvalidConfig {
                    field: got,
                    message,
                }) => {
                    assert_eq!(got, field, "{config}");
                    assert!(!message.contains("hunter2"), "{message}");
                }
                other => panic!("{config}: {:?}", other.map(|c| c.scope)),
            }
        }
    }

    #[test]
    fn project_paths_come_from_job_urls() {
        assert_eq!(
            project_path("https://gitlab.example.com/group/sub/app/-/jobs/8").as_deref(),
            Some("group/sub/app")
        );
        assert_eq!(project_path("not a url"), None);
    }
}
