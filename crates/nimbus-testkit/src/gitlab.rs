//! A small stateful stand-in for the GitLab REST API v4 (runners, project jobs), meant to sit
//! behind [`Prism`](crate::prism::Prism) in proxy mode with GitLab's description
//! ([`gitlab_spec`]), so every request and response is checked while created runners persist
//! and deletes remove them.
//!
//! It models what the forge depends on: `PRIVATE-TOKEN` auth (401), runner creation with a
//! `glrt-` token, the owned-runner listing with `status` and `job_execution_status`, removal,
//! project jobs by `scope`, `x-next-page` pagination, `RateLimit-*` headers, and injected faults
//! (also after the request took effect). Jobs are driven by the test: queued, started on a
//! runner (which then reports `job_execution_status: active`), finished.

use std::collections::{BTreeMap, VecDeque};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};

pub use crate::fault::{Fault, Method};

/// GitLab's description (`gitlab-v4.yaml` from [`vendor_spec`](crate::prism::vendor_spec)) with
/// two corrections, each where GitLab's generated description contradicts the server and HTTP:
/// it declares `GET /api/v4/runners` and `/runners/all` to answer a single runner object, while
/// GitLab answers an array of them ("List owned runners" in GitLab's REST documentation); and it
/// gives `DELETE /api/v4/runners/{id}`'s 204 a JSON body, which a 204 cannot have. The corrected
/// copy is written to the temporary directory and its path returned; everything else is the
/// vendor's text.
pub fn gitlab_spec() -> anyhow::Result<PathBuf> {
    let original = crate::prism::vendor_spec("gitlab-v4.yaml")?;
    let text = std::fs::read_to_string(&original)?;
    let single = "          schema:\n            \"$ref\": \"#/definitions/API_Entities_Ci_Runner\"\n        '400':";
    let array = "          schema:\n            type: array\n            items:\n              \"$ref\": \"#/definitions/API_Entities_Ci_Runner\"\n        '400':";
    let n = text.matches(single).count();
    anyhow::ensure!(
        n == 2,
        "{} changed: expected the runner listings' single-object schema twice, found {n}",
        original.display()
    );
    let patched = text.replace(single, array);
    let deleted = "        '204':\n          description: Remove a runner\n          schema:\n            \"$ref\": \"#/definitions/API_Entities_Ci_Runner\"\n";
    anyhow::ensure!(
        patched.contains(deleted),
        "{} changed: expected the runner delete's 204 with a body",
        original.display()
    );
    let patched = patched.replace(
        deleted,
        "        '204':\n          description: Remove a runner\n",
    );
    // One file per corrected text, shared by every test process: written to a private name
    // first and renamed, so a concurrent reader never sees half of it.
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        patched.hash(&mut hasher);
        hasher.finish()
    };
    let path = std::env::temp_dir().join(format!("nimbus-gitlab-v4-corrected-{digest:016x}.yaml"));
    if !path.is_file() {
        let staging = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&staging, patched)?;
        std::fs::rename(&staging, &path)?;
    }
    Ok(path)
}

#[derive(Clone, Debug)]
struct GlRunner {
    id: u64,
    description: String,
    tags: Vec<String>,
    runner_type: String,
    token: String,
    online: bool,
    created_at: String,
}

#[derive(Clone, Debug)]
struct GlJob {
    id: u64,
    project_id: u64,
    project_path: String,
    status: String,
    tags: Vec<String>,
    pipeline_id: u64,
    runner_id: Option<u64>,
}

struct Inner {
    token: String,
    next_id: u64,
    runners: BTreeMap<u64, GlRunner>,
    jobs: BTreeMap<u64, GlJob>,
    faults: VecDeque<Fault>,
    requests: Vec<String>,
    /// Runner → job it picks up the moment its DELETE arrives (the race the busy check is for).
    take_on_delete: BTreeMap<u64, u64>,
    rate_limit: u32,
    rate_remaining: u32,
}

/// A running fake; stops when dropped.
pub struct FakeGitlab {
    inner: Arc<Mutex<Inner>>,
    server: crate::served::Served,
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "2026-01-01T00:00:00Z".to_owned())
}

impl FakeGitlab {
    /// Starts the fake on 127.0.0.1 with `token` as the only valid `PRIVATE-TOKEN`.
    pub fn start(token: &str) -> anyhow::Result<FakeGitlab> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let inner = Arc::new(Mutex::new(Inner {
            token: token.to_owned(),
            next_id: 100,
            runners: BTreeMap::new(),
            jobs: BTreeMap::new(),
            faults: VecDeque::new(),
            requests: Vec::new(),
            take_on_delete: BTreeMap::new(),
            rate_limit: 2000,
            rate_remaining: 2000,
        }));
        let app = Router::new()
            .route("/api/v4/user/runners", post(create_runner))
            .route("/api/v4/runners", get(list_runners))
            .route("/api/v4/runners/{id}", delete(delete_runner))
            .route("/api/v4/projects/{id}/jobs", get(project_jobs))
            .fallback(not_found)
            .with_state(inner.clone());
        let server = crate::served::Served::start("fake-gitlab", listener, app)?;
        Ok(FakeGitlab { inner, server })
    }

    /// `http://127.0.0.1:PORT` (the upstream to give Prism).
    pub fn url(&self) -> String {
        self.server.url()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Sets what `RateLimit-Remaining` reports next.
    pub fn set_rate_remaining(&self, remaining: u32) {
        self.lock().rate_remaining = remaining;
    }

    /// Runners: `(id, description, tags, token)`.
    pub fn runners(&self) -> Vec<(u64, String, Vec<String>, String)> {
        self.lock()
            .runners
            .values()
            .map(|r| (r.id, r.description.clone(), r.tags.clone(), r.token.clone()))
            .collect()
    }

    /// The runner connects (as `gitlab-runner` would after `register`).
    pub fn set_online(&self, runner_id: u64, online: bool) {
        if let Some(runner) = self.lock().runners.get_mut(&runner_id) {
            runner.online = online;
        }
    }

    /// A pending job in `project_id` (`project_path`, e.g. `acme/app`) with `tags`.
    pub fn queue_job(&self, project_id: u64, project_path: &str, tags: &[&str]) -> u64 {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.jobs.insert(
            id,
            GlJob {
                id,
                project_id,
                project_path: project_path.to_owned(),
                status: "pending".into(),
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                pipeline_id: 9000 + id,
                runner_id: None,
            },
        );
        id
    }

    /// The runner picks the job up: it is `running`, the runner `active`.
    pub fn start_job(&self, job_id: u64, runner_id: u64) {
        if let Some(job) = self.lock().jobs.get_mut(&job_id) {
            job.status = "running".into();
            job.runner_id = Some(runner_id);
        }
    }

    /// Arms the race: when the runner's DELETE arrives, the runner has just taken `job_id`.
    pub fn take_job_on_delete(&self, runner_id: u64, job_id: u64) {
        self.lock().take_on_delete.insert(runner_id, job_id);
    }

    pub fn finish_job(&self, job_id: u64) {
        if let Some(job) = self.lock().jobs.get_mut(&job_id) {
            job.status = "success".into();
        }
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Registers a runner directly, as another tool (or a crashed Nimbus) would have.
    pub fn add_runner(&self, description: &str, online: bool) -> u64 {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.runners.insert(
            id,
            GlRunner {
                id,
                description: description.to_owned(),
                tags: Vec::new(),
                runner_type: "group_type".into(),
                token: format!("glrt-{id}"),
                online,
                created_at: now(),
            },
        );
        id
    }
}

enum Admission {
    Proceed,
    ProceedThenFail(Fault),
    Refuse(Response),
}

impl Inner {
    fn admit(&mut self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Admission {
        self.requests.push(format!("{method} {uri}"));
        let path = uri.path();
        if let Some(idx) = self.faults.iter().position(|f| {
            f.method.as_ref().is_none_or(|m| m == method) && path.starts_with(&f.path_prefix)
        }) {
            let fault = self.faults[idx].clone();
            if fault.times <= 1 {
                self.faults.remove(idx);
            } else {
                self.faults[idx].times -= 1;
            }
            if !fault.after_effect {
                return Admission::Refuse(self.error(fault.status, &fault.code));
            }
            return Admission::ProceedThenFail(fault);
        }
        let given = headers
            .get("private-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if given != self.token {
            return Admission::Refuse(self.error(401, "401 Unauthorized"));
        }
        Admission::Proceed
    }

    fn headers(&mut self, response: &mut Response, throttled: bool) {
        let remaining = if throttled {
            0
        } else {
            self.rate_remaining = self.rate_remaining.saturating_sub(1);
            self.rate_remaining
        };
        if remaining == 0 && !throttled {
            // Spent: refill after the reset one second from now.
            self.rate_remaining = self.rate_limit;
        }
        let reset = time::OffsetDateTime::now_utc().unix_timestamp() + 1;
        let mut pairs = vec![
            ("ratelimit-limit", self.rate_limit.to_string()),
            ("ratelimit-remaining", remaining.to_string()),
            ("ratelimit-reset", reset.to_string()),
        ];
        if throttled {
            pairs.push(("retry-after", "1".into()));
        }
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::try_from(value) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(name), value);
            }
        }
    }

    fn error(&mut self, status: u16, message: &str) -> Response {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(json!({ "message": message }))).into_response();
        self.headers(&mut response, status == StatusCode::TOO_MANY_REQUESTS);
        response
    }

    fn ok(
        &mut self,
        status: StatusCode,
        body: Value,
        extra: &[(&'static str, String)],
    ) -> Response {
        let mut response = if status == StatusCode::NO_CONTENT {
            status.into_response()
        } else {
            (status, axum::Json(body)).into_response()
        };
        self.headers(&mut response, false);
        for (name, value) in extra {
            if let Ok(value) = HeaderValue::try_from(value.as_str()) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(name), value);
            }
        }
        response
    }

    fn finish(&mut self, outcome: Response, after: Option<Fault>) -> Response {
        match after {
            Some(fault) => self.error(fault.status, &fault.code),
            None => outcome,
        }
    }

    fn runner_json(&self, runner: &GlRunner) -> Value {
        let active = self
            .jobs
            .values()
            .any(|j| j.runner_id == Some(runner.id) && j.status == "running");
        json!({
            "id": runner.id,
            "description": runner.description,
            "ip_address": "127.0.0.1",
            "active": true,
            "paused": false,
            "is_shared": runner.runner_type == "instance_type",
            "runner_type": runner.runner_type,
            "name": "gitlab-runner",
            "online": runner.online,
            "created_at": runner.created_at,
            "status": if runner.online { "online" } else { "never_contacted" },
            "job_execution_status": if active { "active" } else { "idle" },
        })
    }

    fn job_json(&self, job: &GlJob) -> Value {
        let mut value = json!({
            "id": job.id,
            "status": job.status,
            "stage": "test",
            "name": "build",
            "ref": "main",
            "tag": false,
            "allow_failure": false,
            "created_at": "2026-01-01T00:00:00.000Z",
            "web_url": format!("https://gitlab.example.com/{}/-/jobs/{}", job.project_path, job.id),
            "tag_list": job.tags,
            "pipeline": {
                "id": job.pipeline_id,
                "iid": 1,
                "project_id": job.project_id,
                "sha": "2293ada6b400935a1378653304eaf6221e0fdb8f",
                "ref": "main",
                "status": "running",
                "source": "push",
                "created_at": "2026-01-01T00:00:00.000Z",
                "updated_at": "2026-01-01T00:00:00.000Z",
                "web_url": format!("https://gitlab.example.com/{}/-/pipelines/{}", job.project_path, job.pipeline_id),
            },
            "project": {},
            "archived": false,
        });
        match job.runner_id.map(|id| (id, self.runners.get(&id))) {
            Some((_, Some(runner))) => value["runner"] = self.runner_json(runner),
            // A deleted runner's id stays on its jobs for a while: GitLab clears it later
            // (asynchronously, through a loose foreign key).
            Some((id, None)) => {
                value["runner"] = json!({
                    "id": id, "description": "", "active": false, "paused": false,
                    "is_shared": false, "runner_type": "group_type", "online": false,
                    "status": "offline",
                })
            }
            None => {}
        }
        value
    }
}

type Shared = State<Arc<Mutex<Inner>>>;

macro_rules! admit {
    ($inner:ident, $method:expr, $uri:expr, $headers:expr) => {
        match $inner.admit(&$method, &$uri, &$headers) {
            Admission::Proceed => None,
            Admission::ProceedThenFail(fault) => Some(fault),
            Admission::Refuse(response) => return response,
        }
    };
}

fn lock(state: &Arc<Mutex<Inner>>) -> std::sync::MutexGuard<'_, Inner> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn page_of(query: &BTreeMap<String, String>) -> (usize, usize) {
    let page = query
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1usize)
        .max(1);
    let per_page = query
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(20usize)
        .clamp(1, 100);
    (page, per_page)
}

/// One page of `items`, with GitLab's pagination headers.
fn paged(
    items: Vec<Value>,
    query: &BTreeMap<String, String>,
) -> (Value, Vec<(&'static str, String)>) {
    let (page, per_page) = page_of(query);
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let body: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let next = if page < last {
        (page + 1).to_string()
    } else {
        String::new()
    };
    (
        Value::Array(body),
        vec![
            ("x-page", page.to_string()),
            ("x-per-page", per_page.to_string()),
            ("x-next-page", next),
            ("x-total", total.to_string()),
            ("x-total-pages", last.to_string()),
        ],
    )
}

async fn create_runner(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut inner = lock(&state);
    let after = admit!(inner, Method::POST, uri, headers);
    let runner_type = body["runner_type"].as_str().unwrap_or_default().to_owned();
    let missing = match runner_type.as_str() {
        "instance_type" => None,
        "group_type" => (body["group_id"].as_u64().unwrap_or(0) == 0).then_some("group_id"),
        "project_type" => (body["project_id"].as_u64().unwrap_or(0) == 0).then_some("project_id"),
        _ => Some("runner_type"),
    };
    if let Some(field) = missing {
        return inner.error(400, &format!("400 Bad request - {field} is missing"));
    }
    inner.next_id += 1;
    let id = inner.next_id;
    let token = format!("glrt-{:016x}{id}", rand_token(id));
    let runner = GlRunner {
        id,
        description: body["description"].as_str().unwrap_or_default().to_owned(),
        tags: body["tag_list"]
            .as_array()
            .map(|tags| {
                tags.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        runner_type,
        token: token.clone(),
        online: false,
        created_at: now(),
    };
    inner.runners.insert(id, runner);
    let body = json!({
        "id": id.to_string(),
        "token": token,
        "token_expires_at": "2099-01-01T00:00:00.000Z",
    });
    let outcome = inner.ok(StatusCode::CREATED, body, &[]);
    inner.finish(outcome, after)
}

/// Not a secret anyone relies on: distinct per runner and process.
fn rand_token(id: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ nanos ^ u64::from(std::process::id())
}

async fn list_runners(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let mut inner = lock(&state);
    let after = admit!(inner, Method::GET, uri, headers);
    let wanted: Vec<&str> = query
        .get("tag_list")
        .map(|t| t.split(',').filter(|t| !t.is_empty()).collect())
        .unwrap_or_default();
    let items: Vec<Value> = inner
        .runners
        .values()
        .filter(|r| query.get("type").is_none_or(|t| &r.runner_type == t))
        .filter(|r| wanted.iter().all(|w| r.tags.iter().any(|t| t == w)))
        .map(|r| inner.runner_json(r))
        .collect();
    let (body, extra) = paged(items, &query);
    let outcome = inner.ok(StatusCode::OK, body, &extra);
    inner.finish(outcome, after)
}

async fn delete_runner(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    let mut inner = lock(&state);
    let after = admit!(inner, Method::DELETE, uri, headers);
    if let Some(job_id) = inner.take_on_delete.remove(&id)
        && let Some(job) = inner.jobs.get_mut(&job_id)
    {
        job.status = "running".into();
        job.runner_id = Some(id);
    }
    if inner.runners.remove(&id).is_none() {
        return inner.error(404, "404 Runner Not Found");
    }
    let outcome = inner.ok(StatusCode::NO_CONTENT, Value::Null, &[]);
    inner.finish(outcome, after)
}

async fn project_jobs(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
    Path(project): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let mut inner = lock(&state);
    let after = admit!(inner, Method::GET, uri, headers);
    let Ok(project_id) = project.parse::<u64>() else {
        return inner.error(404, "404 Project Not Found");
    };
    let scopes: Vec<String> = query
        .get("scope")
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let items: Vec<Value> = inner
        .jobs
        .values()
        .filter(|j| j.project_id == project_id)
        .filter(|j| scopes.is_empty() || scopes.contains(&j.status))
        .map(|j| inner.job_json(j))
        .collect();
    let (body, extra) = paged(items, &query);
    let outcome = inner.ok(StatusCode::OK, body, &extra);
    inner.finish(outcome, after)
}

async fn not_found(State(state): Shared, uri: Uri) -> Response {
    let mut inner = lock(&state);
    inner.requests.push(format!("? {uri}"));
    inner.error(404, "404 Not Found")
}
