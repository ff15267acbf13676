//! Nimbus Git as a forge for Nimbus CI: the client `nimbusd` drives runs with, and the verifier
//! of Nimbus Git's signed webhooks.
//!
//! Unlike GitHub, Nimbus Git has no runner software: `nimbusd` itself reads a pushed commit's
//! workflows through the contents API, creates the run and its jobs at the forge
//! ([`NimbusGitClient::create_run`]), executes the jobs on pool machines and reports job and step
//! states, logs and commit statuses back. The wire contract is `docs/ci-contract.md`.
//!
//! Settings (`ForgeConfig`): `config = {"url": "http://git.example:3000"}`, `credentials =
//! {"token": "<owner API token>", "webhook_secret": "…"}`. The token only ever goes to `url`.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use nimbus_types::{ForgeConfig, ForgeType, Secret};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::webhook::WebhookError;
use crate::{Error, Result};

pub const SIGNATURE_HEADER: &str = "x-nimbus-signature-256";
pub const EVENT_HEADER: &str = "x-nimbus-event";
pub const DELIVERY_HEADER: &str = "x-nimbus-delivery";

/// Calls end after this long; log appends and status posts are small.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A validated Nimbus Git forge configuration.
#[derive(Clone)]
pub struct NimbusGitConfig {
    /// The server's base URL, without a trailing slash.
    pub url: String,
    pub token: Secret,
    pub webhook_secret: Secret,
}

impl std::fmt::Debug for NimbusGitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NimbusGitConfig")
            .field("url", &self.url)
            .field("token", &self.token)
            .field("webhook_secret", &self.webhook_secret)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSettings {
    url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StoredCredentials {
    token: Option<String>,
    webhook_secret: Option<String>,
}

impl NimbusGitConfig {
    /// Validates a stored configuration; errors name the offending field.
    pub fn from_forge_config(forge: &ForgeConfig) -> Result<Self> {
        if forge.forge_type != ForgeType::NimbusGit {
            return Err(Error::config(
                "type",
                format!("{} is not nimbus-git", forge.forge_type),
            ));
        }
        let settings: StoredSettings = serde_json::from_value(forge.config.clone())
            .map_err(|e| Error::config("config", e.to_string()))?;
        let url = settings
            .url
            .ok_or_else(|| Error::config("config.url", "is required (the Nimbus Git base URL)"))?;
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| Error::config("config.url", format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(Error::config("config.url", "must be an http or https URL"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(Error::config(
                "config.url",
                "must not have a query or fragment",
            ));
        }
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
        let token = credentials.token.filter(|t| !t.is_empty()).ok_or_else(|| {
            Error::config("credentials.token", "is required (an owner API token)")
        })?;
        if token.len() > 512 || token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(Error::config(
                "credentials.token",
                "must be a single token without spaces",
            ));
        }
        let webhook_secret = credentials
            .webhook_secret
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::config("credentials.webhook_secret", "is required"))?;
        Ok(NimbusGitConfig {
            url: url.trim_end_matches('/').to_owned(),
            token: Secret::new(token),
            webhook_secret: Secret::new(webhook_secret),
        })
    }
}

/// A file or directory at a revision, as the contents API returns it.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Contents {
    Dir {
        path: String,
        entries: Vec<DirEntry>,
    },
    File {
        path: String,
        size: u64,
        content: String,
    },
}

#[derive(Clone, Debug, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub size: u64,
}

/// A job of a run, as created at the forge.
#[derive(Clone, Debug, Serialize)]
pub struct NewJob {
    pub key: String,
    pub name: String,
    pub needs: Vec<String>,
    pub runs_on: Vec<String>,
    pub steps: Vec<String>,
}

/// A run to create at the forge: its jobs, or the error that kept the workflow from running.
#[derive(Clone, Debug, Serialize)]
pub struct NewRun {
    pub sha: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub workflow: String,
    pub name: String,
    pub event: String,
    pub pusher: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs: Option<Vec<NewJob>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the forge answers about a run (the fields `nimbusd` uses).
#[derive(Clone, Debug, Deserialize)]
pub struct RunInfo {
    pub number: u64,
    pub state: String,
    #[serde(default)]
    pub cancel_requested: bool,
    #[serde(default)]
    pub jobs: Vec<JobInfo>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct JobInfo {
    pub key: String,
    pub state: String,
    #[serde(default)]
    pub attempt: u32,
}

/// A job's or step's state at the forge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CiState {
    Queued,
    Running,
    Success,
    Failure,
    Cancelled,
    Error,
    Skipped,
}

impl CiState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, CiState::Queued | CiState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CiState::Queued => "queued",
            CiState::Running => "running",
            CiState::Success => "success",
            CiState::Failure => "failure",
            CiState::Cancelled => "cancelled",
            CiState::Error => "error",
            CiState::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<CiState> {
        Some(match s {
            "queued" => CiState::Queued,
            "running" => CiState::Running,
            "success" => CiState::Success,
            "failure" => CiState::Failure,
            "cancelled" => CiState::Cancelled,
            "error" => CiState::Error,
            "skipped" => CiState::Skipped,
            _ => return None,
        })
    }
}

/// A job's new state at the forge (`PATCH runs/{n}/jobs/{key}`).
#[derive(Clone, Debug, Serialize)]
pub struct JobUpdate {
    pub state: CiState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl JobUpdate {
    pub fn new(state: CiState) -> Self {
        JobUpdate {
            state,
            machine: None,
            exit_code: None,
            error: None,
        }
    }

    pub fn machine(mut self, machine: impl Into<String>) -> Self {
        self.machine = Some(machine.into());
        self
    }

    pub fn exit_code(mut self, code: Option<i32>) -> Self {
        self.exit_code = code;
        self
    }

    pub fn error(mut self, error: Option<&str>) -> Self {
        self.error = error.map(str::to_owned);
        self
    }
}

/// A commit status (`POST statuses/{sha}`).
#[derive(Clone, Debug, Serialize)]
pub struct NewStatus {
    /// `pending`, `running`, `success`, `failure`, `error` or `cancelled`.
    pub state: String,
    pub context: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct JobToken {
    pub token: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RunSecrets {
    pub secrets: BTreeMap<String, String>,
    #[serde(default)]
    pub withheld: bool,
}

/// The REST client `nimbusd` drives Nimbus Git runs with. Cheap to clone.
#[derive(Clone)]
pub struct NimbusGitClient {
    config: NimbusGitConfig,
    http: reqwest::Client,
}

impl NimbusGitClient {
    pub fn new(config: NimbusGitConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            // The token must reach only the configured host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("nimbus/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Permanent(format!("http client: {e}")))?;
        Ok(NimbusGitClient { config, http })
    }

    pub fn config(&self) -> &NimbusGitConfig {
        &self.config
    }

    /// The clone URL of a repository.
    pub fn clone_url(&self, repo: &str) -> String {
        format!("{}/{repo}.git", self.config.url)
    }

    /// The web page of a run, for statuses' target URLs.
    pub fn run_url(&self, repo: &str, number: u64) -> String {
        format!("{}/{repo}/runs/{number}", self.config.url)
    }

    fn repo_url(&self, repo: &str, rest: &str) -> String {
        format!("{}/api/v1/repos/{repo}/{rest}", self.config.url)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = request
            .bearer_auth(self.config.token.expose())
            .send()
            .await
            .map_err(|e| Error::Retryable(format!("nimbus-git: {}", without_url(&e))))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.chars().take(200).collect());
        Err(match status {
            StatusCode::NOT_FOUND => Error::NotFound(message),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Unauthorized(message),
            StatusCode::CONFLICT => Error::Conflict(message),
            StatusCode::TOO_MANY_REQUESTS => {
                Error::Retryable(format!("nimbus-git busy: {message}"))
            }
            s if s.is_server_error() => Error::Retryable(format!("nimbus-git {s}: {message}")),
            s => Error::Permanent(format!("nimbus-git {s}: {message}")),
        })
    }

    async fn json<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T> {
        self.send(request)
            .await?
            .json()
            .await
            .map_err(|e| Error::Retryable(format!("nimbus-git answer: {}", without_url(&e))))
    }

    /// A file or directory at `rev`; `Ok(None)` when the path does not exist there.
    pub async fn contents(&self, repo: &str, path: &str, rev: &str) -> Result<Option<Contents>> {
        let url = self.repo_url(repo, &format!("contents/{path}?ref={}", encode(rev)));
        match self.json(self.http.get(url)).await {
            Ok(contents) => Ok(Some(contents)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// A file's bytes at `rev` (the contents API's base64 decoded).
    pub async fn file(&self, repo: &str, path: &str, rev: &str) -> Result<Option<Vec<u8>>> {
        match self.contents(repo, path, rev).await? {
            Some(Contents::File { content, .. }) => {
                let clean: String = content.chars().filter(|c| !c.is_whitespace()).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(clean)
                    .map(Some)
                    .map_err(|e| Error::Permanent(format!("nimbus-git sent bad base64: {e}")))
            }
            _ => Ok(None),
        }
    }

    /// The paths a push changed (`before..after`); `Ok(None)` when the forge cannot say (a new
    /// branch, a forced push whose old commit is gone).
    pub async fn changed_paths(
        &self,
        repo: &str,
        before: &str,
        after: &str,
    ) -> Result<Option<Vec<String>>> {
        if before.bytes().all(|b| b == b'0') {
            return Ok(None);
        }
        #[derive(Deserialize)]
        struct Compare {
            files: Vec<String>,
            #[serde(default)]
            truncated: bool,
        }
        let url = self.repo_url(repo, &format!("compare/{before}...{after}"));
        match self.json::<Compare>(self.http.get(url)).await {
            // A cut list cannot rule a path filter out: treat it as unknown.
            Ok(compare) if compare.truncated => Ok(None),
            Ok(compare) => Ok(Some(compare.files)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(other) => Err(other),
        }
    }

    pub async fn create_run(&self, repo: &str, run: &NewRun) -> Result<RunInfo> {
        self.json(self.http.post(self.repo_url(repo, "runs")).json(run))
            .await
    }

    pub async fn get_run(&self, repo: &str, number: u64) -> Result<RunInfo> {
        self.json(
            self.http
                .get(self.repo_url(repo, &format!("runs/{number}"))),
        )
        .await
    }

    pub async fn set_job(
        &self,
        repo: &str,
        number: u64,
        key: &str,
        update: &JobUpdate,
    ) -> Result<()> {
        let url = self.repo_url(repo, &format!("runs/{number}/jobs/{}", encode(key)));
        self.send(self.http.request(Method::PATCH, url).json(update))
            .await
            .map(drop)
    }

    pub async fn set_step(
        &self,
        repo: &str,
        number: u64,
        key: &str,
        index: usize,
        state: CiState,
        exit_code: Option<i32>,
    ) -> Result<()> {
        let mut body = serde_json::json!({ "state": state.as_str() });
        if let Some(code) = exit_code {
            body["exit_code"] = code.into();
        }
        let url = self.repo_url(
            repo,
            &format!("runs/{number}/jobs/{}/steps/{index}", encode(key)),
        );
        self.send(self.http.request(Method::PATCH, url).json(&body))
            .await
            .map(drop)
    }

    /// Appends (already masked) output to a step's log.
    pub async fn append_log(
        &self,
        repo: &str,
        number: u64,
        key: &str,
        step: usize,
        text: Vec<u8>,
    ) -> Result<()> {
        let url = self.repo_url(
            repo,
            &format!("runs/{number}/jobs/{}/logs?step={step}", encode(key)),
        );
        self.send(
            self.http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(text),
        )
        .await
        .map(drop)
    }

    /// A token that can only clone this repository, for the job's checkout.
    pub async fn job_token(
        &self,
        repo: &str,
        number: u64,
        key: &str,
        ttl: Duration,
    ) -> Result<Secret> {
        let url = self.repo_url(repo, &format!("runs/{number}/jobs/{}/token", encode(key)));
        let token: JobToken = self
            .json(
                self.http
                    .post(url)
                    .json(&serde_json::json!({ "ttl_seconds": ttl.as_secs().max(60) })),
            )
            .await?;
        Ok(Secret::new(token.token))
    }

    pub async fn run_secrets(&self, repo: &str, number: u64) -> Result<RunSecrets> {
        self.json(
            self.http
                .get(self.repo_url(repo, &format!("runs/{number}/secrets"))),
        )
        .await
    }

    pub async fn post_status(&self, repo: &str, sha: &str, status: &NewStatus) -> Result<()> {
        self.send(
            self.http
                .post(self.repo_url(repo, &format!("statuses/{sha}")))
                .json(status),
        )
        .await
        .map(drop)
    }
}

/// Path segment encoding for job keys (`test (linux, 1)`).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// reqwest errors print the URL; ours carry no secret, but keep messages short and uniform.
fn without_url(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        text = text.replace(url.as_str(), "");
    }
    text
}

/// What a verified Nimbus Git delivery asks of `nimbusd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GitEvent {
    /// `CommitPushed` or `TagCreated`.
    Push {
        repository: String,
        git_ref: String,
        before: String,
        after: String,
        pusher: String,
    },
    CancelRequested {
        repository: String,
        run: u64,
    },
    RerunRequested {
        repository: String,
        run: u64,
        jobs: Vec<String>,
    },
    /// An event `nimbusd` does not act on.
    Ignored(String),
}

/// A verified delivery: its id and what it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitDelivery {
    pub id: String,
    pub event: GitEvent,
}

/// Checks `X-Nimbus-Signature-256` (HMAC-SHA256 over the raw body, constant-time) and reads the
/// delivery.
pub fn verify_delivery(
    secret: &Secret,
    headers: &HeaderMap,
    body: &[u8],
) -> std::result::Result<GitDelivery, WebhookError> {
    if secret.expose().is_empty() {
        return Err(WebhookError::Unauthorized(
            "no webhook secret is configured",
        ));
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signature = header(SIGNATURE_HEADER)
        .ok_or(WebhookError::Unauthorized("missing X-Nimbus-Signature-256"))?;
    let digest = signature
        .strip_prefix("sha256=")
        .and_then(|hex_digest| hex::decode(hex_digest).ok())
        .ok_or(WebhookError::Unauthorized(
            "X-Nimbus-Signature-256 is not sha256=<hex>",
        ))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.verify_slice(&digest)
        .map_err(|_| WebhookError::Unauthorized("X-Nimbus-Signature-256 does not match"))?;

    let id = header(DELIVERY_HEADER)
        .filter(|id| !id.is_empty() && id.len() <= 128)
        .ok_or_else(|| WebhookError::Malformed("missing or invalid X-Nimbus-Delivery".into()))?
        .to_owned();
    let kind = header(EVENT_HEADER)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| WebhookError::Malformed("missing X-Nimbus-Event".into()))?
        .to_owned();
    let payload: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("body is not JSON: {e}")))?;
    let text = |field: &str| -> std::result::Result<String, WebhookError> {
        payload[field]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| WebhookError::Malformed(format!("{kind}: missing `{field}`")))
    };
    let run = || -> std::result::Result<u64, WebhookError> {
        payload["run"]
            .as_u64()
            .ok_or_else(|| WebhookError::Malformed(format!("{kind}: missing `run`")))
    };
    let event = match kind.as_str() {
        "CommitPushed" | "TagCreated" => GitEvent::Push {
            repository: text("repository")?,
            git_ref: text("ref")?,
            before: text("before")?,
            after: text("after")?,
            pusher: text("pusher")?,
        },
        "RunCancelRequested" => GitEvent::CancelRequested {
            repository: text("repository")?,
            run: run()?,
        },
        "RunRerunRequested" => GitEvent::RerunRequested {
            repository: text("repository")?,
            run: run()?,
            jobs: payload["jobs"]
                .as_array()
                .map(|jobs| {
                    jobs.iter()
                        .filter_map(|j| j.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        },
        _ => GitEvent::Ignored(kind),
    };
    Ok(GitDelivery { id, event })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_types::TenantId;

    fn forge(config: serde_json::Value, credentials: Option<&str>) -> ForgeConfig {
        ForgeConfig {
            tenant_id: TenantId::new(),
            forge_type: ForgeType::NimbusGit,
            org: "owner".into(),
            credentials: credentials.map(Secret::new),
            config,
            updated_at: time::OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn config_errors_name_the_field() {
        let creds = r#"{"token":"ngp_x","webhook_secret":"s"}"#;
        let field =
            |c: serde_json::Value, cr: Option<&str>| match NimbusGitConfig::from_forge_config(
                &forge(c, cr),
            ) {
                Err(Error::InvalidConfig { field, .. }) => field,
                other => panic!("expected an invalid config, got {other:?}"),
            };
        assert_eq!(field(serde_json::json!({}), Some(creds)), "config.url");
        assert_eq!(
            field(serde_json::json!({"url": "ftp://x"}), Some(creds)),
            "config.url"
        );
        assert_eq!(
            field(
                serde_json::json!({"url": "http://x", "extra": 1}),
                Some(creds)
            ),
            "config"
        );
        assert_eq!(
            field(serde_json::json!({"url": "http://x"}), None),
            "credentials.token"
        );
        assert_eq!(
            field(
                serde_json::json!({"url": "http://x"}),
                Some(r#"{"token":"t"}"#)
            ),
            "credentials.webhook_secret"
        );
        assert_eq!(
            field(serde_json::json!({"url": "http://x"}), Some("[1]")),
            "credentials"
        );
        let ok = NimbusGitConfig::from_forge_config(&forge(
            serde_json::json!({"url": "http://127.0.0.1:3000/"}),
            Some(creds),
        ))
        .unwrap();
        assert_eq!(ok.url, "http://127.0.0.1:3000");
        assert!(
            !format!("{ok:?}").contains("ngp_x"),
            "the token is redacted"
        );
    }

    fn signed(secret: &str, event: &str, body: &str) -> HeaderMap {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        let mut headers = HeaderMap::new();
        headers.insert(
            SIGNATURE_HEADER,
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
                .parse()
                .unwrap(),
        );
        headers.insert(EVENT_HEADER, event.parse().unwrap());
        headers.insert(DELIVERY_HEADER, "d-1".parse().unwrap());
        headers
    }

    #[test]
    fn deliveries_are_verified_then_read() {
        let secret = Secret::new("s3cret".to_owned());
        let body = r#"{"event":"CommitPushed","repository":"app","ref":"refs/heads/main","before":"0000","after":"abcd","pusher":"alice"}"#;
        let ok = verify_delivery(
            &secret,
            &signed("s3cret", "CommitPushed", body),
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(ok.id, "d-1");
        assert!(matches!(ok.event, GitEvent::Push { ref after, .. } if after == "abcd"));

        let bad = verify_delivery(
            &secret,
            &signed("other", "CommitPushed", body),
            body.as_bytes(),
        );
        assert!(matches!(bad, Err(WebhookError::Unauthorized(_))));
        let tampered = verify_delivery(
            &secret,
            &signed("s3cret", "CommitPushed", body),
            body.replace("alice", "mallory").as_bytes(),
        );
        assert!(matches!(tampered, Err(WebhookError::Unauthorized(_))));

        let missing = r#"{"event":"CommitPushed","repository":"app"}"#;
        let err = verify_delivery(
            &secret,
            &signed("s3cret", "CommitPushed", missing),
            missing.as_bytes(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("missing `ref`"), "{err}");

        let cancel = r#"{"event":"RunCancelRequested","repository":"app","run":7}"#;
        let got = verify_delivery(
            &secret,
            &signed("s3cret", "RunCancelRequested", cancel),
            cancel.as_bytes(),
        )
        .unwrap();
        assert_eq!(
            got.event,
            GitEvent::CancelRequested {
                repository: "app".into(),
                run: 7
            }
        );

        let other = r#"{"event":"BranchDeleted"}"#;
        let got = verify_delivery(
            &secret,
            &signed("s3cret", "BranchDeleted", other),
            other.as_bytes(),
        )
        .unwrap();
        assert_eq!(got.event, GitEvent::Ignored("BranchDeleted".into()));
    }

    #[test]
    fn job_keys_are_path_encoded() {
        assert_eq!(encode("test (linux, 1)"), "test%20%28linux%2C%201%29");
        assert_eq!(encode("build"), "build");
    }
}
