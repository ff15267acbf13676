//! Shared test helpers: GitHub App keys from the real `openssl`, a trimmed GitHub OpenAPI
//! description for Prism, forge constructors and wiremock responders with state.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use nimbus_forge::github::{Auth, GithubConfig, GithubForge, RetryPolicy, Scope};
use nimbus_types::Secret;
use wiremock::{Request, Respond, ResponseTemplate};

/// A GitHub App's key pair, made by `openssl` the way GitHub hands it out (PKCS#1 PEM).
pub struct AppKey {
    pub private_pem: String,
    pub public_pem: String,
}

pub fn app_key() -> anyhow::Result<AppKey> {
    let openssl = nimbus_testkit::require_program("openssl", &[], "openssl (Debian)")?;
    let dir = tempfile::tempdir()?;
    let private = dir.path().join("app.pem");
    let public = dir.path().join("app.pub.pem");
    run(Command::new(&openssl)
        .args(["genrsa", "-traditional", "-out"])
        .arg(&private)
        .arg("2048"))?;
    run(Command::new(&openssl)
        .args(["rsa", "-RSAPublicKey_out", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public))?;
    Ok(AppKey {
        private_pem: std::fs::read_to_string(&private)?,
        public_pem: std::fs::read_to_string(&public)?,
    })
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let output = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Quick retries so fault tests finish in seconds.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        request_timeout: Duration::from_millis(800),
        call_timeout: Duration::from_secs(20),
        max_attempts: 4,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        max_rate_limit_wait: Duration::from_secs(5),
    }
}

pub const APP_ID: u64 = 4242;
pub const INSTALLATION_ID: u64 = 777;

pub fn app_forge(api_url: &str, scope: Scope, key: &AppKey, retry: RetryPolicy) -> GithubForge {
    GithubForge::new(GithubConfig {
        api_url: api_url.to_owned(),
        scope,
        auth: Auth::App {
            app_id: APP_ID,
            installation_id: INSTALLATION_ID,
            private_key: Secret::new(key.private_pem.clone()),
        },
        webhook_secret: Some(Secret::new("webhook-secret")),
        retry,
    })
    .expect("build the GitHub App forge")
}

pub fn token_forge(api_url: &str, scope: Scope, retry: RetryPolicy) -> GithubForge {
    GithubForge::new(GithubConfig {
        api_url: api_url.to_owned(),
        scope,
        auth: Auth::Token(Secret::new("ghp_test_token")),
        webhook_secret: None,
        retry,
    })
    .expect("build the token forge")
}

pub fn org(name: &str) -> Scope {
    Scope::Org {
        org: name.to_owned(),
    }
}

pub fn repo(owner: &str, name: &str) -> Scope {
    Scope::Repo {
        owner: owner.to_owned(),
        repo: name.to_owned(),
    }
}

/// GitHub's description cut down to `paths` and the components they reference, cached under
/// the target directory (keyed by the source's size and the paths) so Prism loads it fast.
pub fn trimmed_github_spec(paths: &[&str]) -> anyhow::Result<PathBuf> {
    let source = nimbus_testkit::prism::Prism::github_spec()?;
    let size = std::fs::metadata(&source)?.len();
    let key = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        paths.hash(&mut hasher);
        size.hash(&mut hasher);
        hasher.finish()
    };
    let out =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("github-openapi-{key:016x}.json"));
    if out.is_file() {
        return Ok(out);
    }
    let full: serde_json::Value = serde_json::from_slice(&std::fs::read(&source)?)
        .with_context(|| format!("parse {}", source.display()))?;
    let mut trimmed = serde_json::json!({
        "openapi": full["openapi"],
        "info": full["info"],
        "servers": full["servers"],
        "paths": {},
        "components": {},
    });
    for path in paths {
        let item = full["paths"]
            .get(*path)
            .with_context(|| format!("{path} is not in GitHub's OpenAPI description"))?;
        trimmed["paths"][*path] = item.clone();
    }
    // Copy every component reachable from the kept paths.
    let mut seen = BTreeSet::new();
    let mut pending = vec![trimmed["paths"].clone()];
    while let Some(value) = pending.pop() {
        let mut stack = vec![&value];
        let mut found = Vec::new();
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(reference)) = map.get("$ref") {
                        found.push(reference.clone());
                    }
                    stack.extend(map.values());
                }
                serde_json::Value::Array(items) => stack.extend(items),
                _ => {}
            }
        }
        for reference in found {
            let Some(rest) = reference.strip_prefix("#/components/") else {
                continue;
            };
            if !seen.insert(rest.to_owned()) {
                continue;
            }
            let (kind, name) = rest.split_once('/').context("a component reference")?;
            let component = full["components"][kind][name].clone();
            if component.is_null() {
                bail!("dangling reference {reference}");
            }
            trimmed["components"][kind][name] = component.clone();
            pending.push(component);
        }
    }
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(&trimmed)?)?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// Answers with the templates in order, then repeats the last one.
pub struct Sequence {
    templates: Vec<ResponseTemplate>,
    next: AtomicUsize,
}

impl Sequence {
    pub fn new(templates: Vec<ResponseTemplate>) -> Self {
        Sequence {
            templates,
            next: AtomicUsize::new(0),
        }
    }
}

impl Respond for Sequence {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let idx = self.next.fetch_add(1, Ordering::SeqCst);
        self.templates[idx.min(self.templates.len() - 1)].clone()
    }
}

/// Responds like `POST /app/installations/{id}/access_tokens`: checks the App JWT (RS256 with the
/// App's public key, `iss`, `iat` backdated, `exp` at most 10 minutes ahead) and issues
/// `tok-1`, `tok-2`, … valid for `lifetime`. Clones share the counters.
#[derive(Clone)]
pub struct TokenExchange {
    public_pem: String,
    lifetime: time::Duration,
    delay: Duration,
    pub issued: Arc<AtomicUsize>,
    pub problems: Arc<Mutex<Vec<String>>>,
}

impl TokenExchange {
    pub fn new(key: &AppKey, lifetime: time::Duration) -> Self {
        TokenExchange {
            public_pem: key.public_pem.clone(),
            lifetime,
            delay: Duration::ZERO,
            issued: Arc::new(AtomicUsize::new(0)),
            problems: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    fn check_jwt(&self, request: &Request) -> Result<(), String> {
        let header = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or("no Authorization header")?;
        let jwt = header.strip_prefix("Bearer ").ok_or("not a Bearer token")?;
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(self.public_pem.as_bytes())
            .map_err(|e| format!("test key: {e}"))?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_issuer(&[APP_ID.to_string()]);
        validation.set_required_spec_claims(&["exp", "iat", "iss"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation)
            .map_err(|e| format!("JWT rejected: {e}"))?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let iat = data.claims["iat"].as_i64().ok_or("iat")?;
        let exp = data.claims["exp"].as_i64().ok_or("exp")?;
        if !(now - 70..=now - 50).contains(&iat) {
            return Err(format!("iat {iat} is not 60 s before now {now}"));
        }
        if exp - now > 600 || exp <= now {
            return Err(format!("exp {exp} is not within 10 minutes of now {now}"));
        }
        Ok(())
    }
}

impl Respond for TokenExchange {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if let Err(problem) = self.check_jwt(request) {
            self.problems.lock().unwrap().push(problem.clone());
            return ResponseTemplate::new(401)
                .set_body_json(serde_json::json!({ "message": problem }));
        }
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let expires_at = time::OffsetDateTime::now_utc() + self.lifetime;
        ResponseTemplate::new(201)
            .set_delay(self.delay)
            .set_body_json(serde_json::json!({
                "token": format!("tok-{n}"),
                "expires_at": expires_at.format(&time::format_description::well_known::Rfc3339).unwrap(),
            }))
    }
}

/// A runner as GitHub's API returns it.
pub fn runner_json(id: u64, busy: bool, status: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "name": format!("runner-{id}"),
        "os": "linux",
        "status": status,
        "busy": busy,
        "ephemeral": true,
        "runner_group_id": 1,
        "labels": [
            {"id": 1, "name": "self-hosted", "type": "read-only"},
            {"id": 2, "name": "linux", "type": "custom"}
        ]
    })
}

/// The `X-GitHub-*` headers of a delivery signed with `secret`.
pub fn delivery_headers(secret: &str, event: &str, delivery: &str, body: &[u8]) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-github-event", event.parse().unwrap());
    headers.insert("x-github-delivery", delivery.parse().unwrap());
    let signature = nimbus_forge::github::GithubWebhooks::sign(&Secret::new(secret), body);
    headers.insert("x-hub-signature-256", signature.parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    headers
}

/// A `workflow_job` delivery body shaped like GitHub's (fields Nimbus ignores included).
pub fn workflow_job_body(action: &str, job_id: u64, labels: &[&str]) -> Vec<u8> {
    let status = match action {
        "in_progress" => "in_progress",
        "completed" => "completed",
        "waiting" => "waiting",
        _ => "queued",
    };
    serde_json::to_vec(&serde_json::json!({
        "action": action,
        "workflow_job": {
            "id": job_id,
            "run_id": 5000 + job_id,
            "workflow_name": "CI",
            "head_branch": "main",
            "run_url": format!("https://api.github.com/repos/acme/app/actions/runs/{}", 5000 + job_id),
            "run_attempt": 1,
            "node_id": "CR_kwDOAAAB",
            "head_sha": "f83a356604ae3c5d03e1b46ef4d1ca77d64a90b0",
            "url": format!("https://api.github.com/repos/acme/app/actions/jobs/{job_id}"),
            "html_url": format!("https://github.com/acme/app/runs/{job_id}"),
            "status": status,
            "conclusion": if action == "completed" { serde_json::json!("success") } else { serde_json::Value::Null },
            "created_at": "2026-11-22T00:00:00Z",
            "started_at": "2026-11-22T00:00:01Z",
            "completed_at": null,
            "name": "build",
            "steps": [],
            "check_run_url": format!("https://api.github.com/repos/acme/app/check-runs/{job_id}"),
            "labels": labels,
            "runner_id": if action == "queued" { serde_json::Value::Null } else { serde_json::json!(23) },
            "runner_name": if action == "queued" { serde_json::Value::Null } else { serde_json::json!("nimbus-m-1") },
            "runner_group_id": if action == "queued" { serde_json::Value::Null } else { serde_json::json!(1) },
            "runner_group_name": if action == "queued" { serde_json::Value::Null } else { serde_json::json!("Default") }
        },
        "repository": {
            "id": 1296269,
            "name": "app",
            "full_name": "acme/app",
            "private": true,
            "owner": {"login": "acme", "id": 1, "type": "Organization"}
        },
        "organization": {"login": "acme", "id": 1},
        "sender": {"login": "octocat", "id": 2, "type": "User"},
        "installation": {"id": INSTALLATION_ID}
    }))
    .unwrap()
}
