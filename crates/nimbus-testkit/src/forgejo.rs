//! A small stateful stand-in for Forgejo's Actions API (runners, runner jobs, registration
//! tokens), meant to sit behind [`Prism`](crate::prism::Prism) in proxy mode with Forgejo's
//! description (`forgejo.json` from [`vendor_spec`](crate::prism::vendor_spec)), so every
//! request and response is checked while created runners persist and deletes remove them.
//!
//! Paths are served at the root (`/orgs/{org}/actions/runners`), as Prism serves the
//! description (it does not apply Swagger's `basePath` `/api/v1`): the client's API base is
//! Prism's URL.
//!
//! It models what the forge depends on: `Authorization: token …` (401), runners created with
//! `POST …/actions/runners` (id, uuid, token; no labels: the runner declares them when it
//! connects), the runner listing (`status` `offline`/`idle`/`active`) and `GET …/{id}`, removal
//! (also of a busy runner, as Forgejo does), the legacy registration token, the waiting and
//! running jobs of `GET …/actions/runners/jobs`, `page`/`limit` pagination, and injected faults
//! (also after the request took effect). A server without direct creation (older Forgejo) is
//! [`FakeForgejo::disable_direct_creation`].

use std::collections::{BTreeMap, VecDeque};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

pub use crate::fault::{Fault, Method};

#[derive(Clone, Debug)]
struct FjRunner {
    id: u64,
    uuid: String,
    name: String,
    description: String,
    /// `orgs/acme` or `repos/acme/app`.
    scope: String,
    labels: Vec<String>,
    ephemeral: bool,
    online: bool,
    token: String,
}

#[derive(Clone, Debug)]
struct FjJob {
    id: u64,
    run_id: u64,
    owner: String,
    repo: String,
    repo_id: u64,
    runs_on: Vec<String>,
    status: String,
    runner_id: Option<u64>,
    task_id: u64,
}

struct Inner {
    token: String,
    registration_token: String,
    direct_creation: bool,
    next_id: u64,
    runners: BTreeMap<u64, FjRunner>,
    jobs: BTreeMap<u64, FjJob>,
    faults: VecDeque<Fault>,
    requests: Vec<String>,
    /// Runner → job it picks up the moment its DELETE arrives (the race the busy check is for).
    take_on_delete: BTreeMap<u64, u64>,
}

/// A running fake; stops when dropped.
pub struct FakeForgejo {
    inner: Arc<Mutex<Inner>>,
    server: crate::served::Served,
}

impl FakeForgejo {
    /// Starts the fake on 127.0.0.1 with `token` as the only valid access token.
    pub fn start(token: &str) -> anyhow::Result<FakeForgejo> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let inner = Arc::new(Mutex::new(Inner {
            token: token.to_owned(),
            registration_token: format!("{:040x}", u128::from(port) * 0x9E37_79B9_7F4A_7C15),
            direct_creation: true,
            next_id: 100,
            runners: BTreeMap::new(),
            jobs: BTreeMap::new(),
            faults: VecDeque::new(),
            requests: Vec::new(),
            take_on_delete: BTreeMap::new(),
        }));
        let app = Router::new()
            .route(
                "/orgs/{org}/actions/runners",
                get(list_org_runners).post(create_org_runner),
            )
            .route(
                "/repos/{owner}/{repo}/actions/runners",
                get(list_repo_runners).post(create_repo_runner),
            )
            .route("/orgs/{org}/actions/runners/jobs", get(org_jobs))
            .route("/repos/{owner}/{repo}/actions/runners/jobs", get(repo_jobs))
            .route(
                "/orgs/{org}/actions/runners/registration-token",
                get(org_registration_token),
            )
            .route(
                "/repos/{owner}/{repo}/actions/runners/registration-token",
                get(repo_registration_token),
            )
            .route(
                "/orgs/{org}/actions/runners/{id}",
                get(get_org_runner).delete(delete_org_runner),
            )
            .route(
                "/repos/{owner}/{repo}/actions/runners/{id}",
                get(get_repo_runner).delete(delete_repo_runner),
            )
            .fallback(not_found)
            .with_state(inner.clone());
        let server = crate::served::Served::start("fake-forgejo", listener, app)?;
        Ok(FakeForgejo { inner, server })
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

    /// Behave like a server before Forgejo 15: `POST …/actions/runners` does not exist.
    pub fn disable_direct_creation(&self) {
        self.lock().direct_creation = false;
    }

    /// The legacy registration token the server hands out.
    pub fn registration_token(&self) -> String {
        self.lock().registration_token.clone()
    }

    /// Runners: `(id, name, description, labels, token)`.
    pub fn runners(&self) -> Vec<(u64, String, String, Vec<String>, String)> {
        self.lock()
            .runners
            .values()
            .map(|r| {
                (
                    r.id,
                    r.name.clone(),
                    r.description.clone(),
                    r.labels.clone(),
                    r.token.clone(),
                )
            })
            .collect()
    }

    /// The runner connects with its uuid and token and declares `labels` (what
    /// `forgejo-runner one-job` or `daemon` does). `false` when the credentials are wrong.
    pub fn connect(&self, uuid: &str, token: &str, labels: &[&str]) -> bool {
        let mut inner = self.lock();
        match inner
            .runners
            .values_mut()
            .find(|r| r.uuid == uuid && r.token == token)
        {
            Some(runner) => {
                runner.online = true;
                runner.labels = labels.iter().map(|l| (*l).to_owned()).collect();
                true
            }
            None => false,
        }
    }

    /// Marks a runner online without checking credentials (the suite's `connect`).
    pub fn set_online(&self, runner_id: u64) {
        if let Some(runner) = self.lock().runners.get_mut(&runner_id) {
            runner.online = true;
        }
    }

    /// What `forgejo-runner register --token` does with the legacy registration token: a
    /// runner in `scope` (`orgs/acme`), online, with `labels`. `None` for a wrong token.
    pub fn register_with_token(
        &self,
        scope: &str,
        token: &str,
        name: &str,
        labels: &[&str],
    ) -> Option<u64> {
        let mut inner = self.lock();
        if token != inner.registration_token {
            return None;
        }
        let id = inner.add_runner(scope, name, "", false);
        let runner = inner.runners.get_mut(&id)?;
        runner.online = true;
        runner.labels = labels.iter().map(|l| (*l).to_owned()).collect();
        Some(id)
    }

    /// A waiting job of `owner/repo` (repository id `repo_id`) that runs on `runs_on`.
    pub fn queue_job(&self, owner: &str, repo: &str, repo_id: u64, runs_on: &[&str]) -> u64 {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.jobs.insert(
            id,
            FjJob {
                id,
                run_id: 5000 + id,
                owner: owner.to_owned(),
                repo: repo.to_owned(),
                repo_id,
                runs_on: runs_on.iter().map(|l| (*l).to_owned()).collect(),
                status: "waiting".into(),
                runner_id: None,
                task_id: 0,
            },
        );
        id
    }

    /// The runner picks the job up: the job is `running`, the runner `active`.
    pub fn start_job(&self, job_id: u64, runner_id: u64) {
        self.lock().start(job_id, runner_id);
    }

    /// The job ends; an ephemeral runner is removed with it (as Forgejo does).
    pub fn finish_job(&self, job_id: u64) {
        let mut inner = self.lock();
        let Some(job) = inner.jobs.get_mut(&job_id) else {
            return;
        };
        job.status = "success".into();
        if let Some(runner_id) = job.runner_id
            && inner.runners.get(&runner_id).is_some_and(|r| r.ephemeral)
        {
            inner.runners.remove(&runner_id);
        }
    }

    /// Arms the race: when the runner's DELETE arrives, the runner has just taken `job_id`.
    pub fn take_job_on_delete(&self, runner_id: u64, job_id: u64) {
        self.lock().take_on_delete.insert(runner_id, job_id);
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Registers a runner directly, as another tool (or another tenant) would have.
    pub fn add_runner(&self, scope: &str, name: &str, description: &str) -> u64 {
        self.lock().add_runner(scope, name, description, false)
    }
}

enum Admission {
    Proceed,
    ProceedThenFail(Fault),
    Refuse(Response),
}

fn error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        axum::Json(json!({ "message": message, "url": "https://forgejo.example/api/swagger" })),
    )
        .into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    response
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
                return Admission::Refuse(error(fault.status, &fault.code));
            }
            return Admission::ProceedThenFail(fault);
        }
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("token "))
            .unwrap_or_default();
        if given != self.token {
            return Admission::Refuse(error(401, "token is required"));
        }
        Admission::Proceed
    }

    fn add_runner(&mut self, scope: &str, name: &str, description: &str, ephemeral: bool) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let token = format!("{:040x}", u128::from(id) * 0x2545_F491_4F6C_DD1D);
        let uuid = format!("00000000-0000-4000-8000-{id:012x}");
        self.runners.insert(
            id,
            FjRunner {
                id,
                uuid,
                name: name.to_owned(),
                description: description.to_owned(),
                scope: scope.to_owned(),
                labels: Vec::new(),
                ephemeral,
                online: false,
                token,
            },
        );
        id
    }

    fn start(&mut self, job_id: u64, runner_id: u64) {
        self.next_id += 1;
        let task_id = self.next_id;
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.status = "running".into();
            job.runner_id = Some(runner_id);
            job.task_id = task_id;
        }
    }

    fn runner_json(&self, runner: &FjRunner) -> Value {
        let active = self
            .jobs
            .values()
            .any(|j| j.runner_id == Some(runner.id) && j.status == "running");
        let status = match (runner.online, active) {
            (_, true) => "active",
            (true, false) => "idle",
            (false, false) => "offline",
        };
        let (owner_id, repo_id) = if runner.scope.starts_with("orgs/") {
            (7, 0)
        } else {
            (0, 11)
        };
        json!({
            "id": runner.id,
            "uuid": runner.uuid,
            "name": runner.name,
            "description": runner.description,
            "status": status,
            "labels": runner.labels,
            "ephemeral": runner.ephemeral,
            "version": if runner.online { "v13.1.0" } else { "" },
            "owner_id": owner_id,
            "repo_id": repo_id,
        })
    }

    fn in_scope(job: &FjJob, scope: &str) -> bool {
        match scope.split('/').collect::<Vec<_>>().as_slice() {
            ["orgs", org] => job.owner == *org,
            ["repos", owner, repo] => job.owner == *owner && job.repo == *repo,
            _ => false,
        }
    }

    fn finish(outcome: Response, after: Option<Fault>) -> Response {
        match after {
            Some(fault) => error(fault.status, &fault.code),
            None => outcome,
        }
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

fn list(
    state: &Arc<Mutex<Inner>>,
    scope: String,
    uri: Uri,
    headers: HeaderMap,
    query: BTreeMap<String, String>,
) -> Response {
    let mut inner = lock(state);
    let after = admit!(inner, Method::GET, uri, headers);
    let page = query
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1usize)
        .max(1);
    let limit = query
        .get("limit")
        .and_then(|p| p.parse().ok())
        .unwrap_or(30usize)
        .clamp(1, 50);
    let all: Vec<Value> = inner
        .runners
        .values()
        .filter(|r| r.scope == scope)
        .map(|r| inner.runner_json(r))
        .collect();
    let total = all.len();
    let items: Vec<Value> = all
        .into_iter()
        .skip((page - 1) * limit)
        .take(limit)
        .collect();
    let mut response = (StatusCode::OK, axum::Json(Value::Array(items))).into_response();
    if let Ok(value) = total.to_string().parse() {
        response.headers_mut().insert("x-total-count", value);
    }
    Inner::finish(response, after)
}

fn create(
    state: &Arc<Mutex<Inner>>,
    scope: String,
    uri: Uri,
    headers: HeaderMap,
    body: Value,
) -> Response {
    let mut inner = lock(state);
    let after = admit!(inner, Method::POST, uri, headers);
    if !inner.direct_creation {
        return error(404, "The target couldn't be found.");
    }
    let Some(name) = body["name"].as_str().filter(|n| !n.is_empty()) else {
        return error(400, "name is required");
    };
    let description = body["description"].as_str().unwrap_or_default().to_owned();
    let ephemeral = body["ephemeral"].as_bool().unwrap_or(false);
    let id = inner.add_runner(&scope, name, &description, ephemeral);
    let runner = &inner.runners[&id];
    let answer = json!({ "id": id, "uuid": runner.uuid, "token": runner.token });
    let response = (StatusCode::CREATED, axum::Json(answer)).into_response();
    Inner::finish(response, after)
}

fn one(
    state: &Arc<Mutex<Inner>>,
    scope: String,
    id: String,
    uri: Uri,
    headers: HeaderMap,
    delete: bool,
) -> Response {
    let mut inner = lock(state);
    let method = if delete { Method::DELETE } else { Method::GET };
    let after = admit!(inner, method, uri, headers);
    let Ok(id) = id.parse::<u64>() else {
        return error(400, "runner_id must be a number");
    };
    if inner.runners.get(&id).is_none_or(|r| r.scope != scope) {
        return error(404, "The target couldn't be found.");
    }
    if !delete {
        let response = (
            StatusCode::OK,
            axum::Json(inner.runner_json(&inner.runners[&id])),
        )
            .into_response();
        return Inner::finish(response, after);
    }
    if let Some(job_id) = inner.take_on_delete.remove(&id) {
        inner.start(job_id, id);
    }
    // Forgejo deletes a runner whether or not it runs a job.
    inner.runners.remove(&id);
    Inner::finish(StatusCode::NO_CONTENT.into_response(), after)
}

fn jobs(state: &Arc<Mutex<Inner>>, scope: String, uri: Uri, headers: HeaderMap) -> Response {
    let mut inner = lock(state);
    let after = admit!(inner, Method::GET, uri, headers);
    let items: Vec<Value> = inner
        .jobs
        .values()
        .filter(|j| Inner::in_scope(j, &scope))
        .filter(|j| j.status == "waiting" || j.status == "running")
        .map(|j| {
            json!({
                "id": j.id,
                "run_id": j.run_id,
                "repo_id": j.repo_id,
                "owner_id": 7,
                "name": "build",
                "needs": [],
                "runs_on": j.runs_on,
                "task_id": j.task_id,
                "attempt": 1,
                "handle": format!("00000000-0000-4000-9000-{:012x}", j.id),
                "status": j.status,
            })
        })
        .collect();
    Inner::finish(
        (StatusCode::OK, axum::Json(Value::Array(items))).into_response(),
        after,
    )
}

fn registration_token(state: &Arc<Mutex<Inner>>, uri: Uri, headers: HeaderMap) -> Response {
    let mut inner = lock(state);
    let after = admit!(inner, Method::GET, uri, headers);
    let token = inner.registration_token.clone();
    Inner::finish(
        (StatusCode::OK, axum::Json(json!({ "token": token }))).into_response(),
        after,
    )
}

type Q = Query<BTreeMap<String, String>>;

async fn list_org_runners(
    State(s): Shared,
    Path(org): Path<String>,
    uri: Uri,
    h: HeaderMap,
    Query(q): Q,
) -> Response {
    list(&s, format!("orgs/{org}"), uri, h, q)
}

async fn list_repo_runners(
    State(s): Shared,
    Path((owner, repo)): Path<(String, String)>,
    uri: Uri,
    h: HeaderMap,
    Query(q): Q,
) -> Response {
    list(&s, format!("repos/{owner}/{repo}"), uri, h, q)
}

async fn create_org_runner(
    State(s): Shared,
    Path(org): Path<String>,
    uri: Uri,
    h: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    create(&s, format!("orgs/{org}"), uri, h, body)
}

async fn create_repo_runner(
    State(s): Shared,
    Path((owner, repo)): Path<(String, String)>,
    uri: Uri,
    h: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    create(&s, format!("repos/{owner}/{repo}"), uri, h, body)
}

async fn get_org_runner(
    State(s): Shared,
    Path((org, id)): Path<(String, String)>,
    uri: Uri,
    h: HeaderMap,
) -> Response {
    one(&s, format!("orgs/{org}"), id, uri, h, false)
}

async fn delete_org_runner(
    State(s): Shared,
    Path((org, id)): Path<(String, String)>,
    uri: Uri,
    h: HeaderMap,
) -> Response {
    one(&s, format!("orgs/{org}"), id, uri, h, true)
}

async fn get_repo_runner(
    State(s): Shared,
    Path((owner, repo, id)): Path<(String, String, String)>,
    uri: Uri,
    h: HeaderMap,
) -> Response {
    one(&s, format!("repos/{owner}/{repo}"), id, uri, h, false)
}

async fn delete_repo_runner(
    State(s): Shared,
    Path((owner, repo, id)): Path<(String, String, String)>,
    uri: Uri,
    h: HeaderMap,
) -> Response {
    one(&s, format!("repos/{owner}/{repo}"), id, uri, h, true)
}

async fn org_jobs(State(s): Shared, Path(org): Path<String>, uri: Uri, h: HeaderMap) -> Response {
    jobs(&s, format!("orgs/{org}"), uri, h)
}

async fn repo_jobs(
    State(s): Shared,
    Path((owner, repo)): Path<(String, String)>,
    uri: Uri,
    h: HeaderMap,
) -> Response {
    jobs(&s, format!("repos/{owner}/{repo}"), uri, h)
}

async fn org_registration_token(State(s): Shared, uri: Uri, h: HeaderMap) -> Response {
    registration_token(&s, uri, h)
}

async fn repo_registration_token(State(s): Shared, uri: Uri, h: HeaderMap) -> Response {
    registration_token(&s, uri, h)
}

async fn not_found(State(state): Shared, uri: Uri) -> Response {
    let mut inner = lock(&state);
    inner.requests.push(format!("? {uri}"));
    error(404, "The target couldn't be found.")
}
