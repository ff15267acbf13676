//! A small stateful stand-in for GitHub's self-hosted runner API (organization runners: JIT
//! configuration, listing, one runner, removal), meant to sit behind
//! [`Prism`](crate::prism::Prism) in proxy mode with GitHub's description, so every request and
//! response is checked while created runners persist and deletes remove them.
//!
//! It models what the forge depends on: bearer-token auth (401 "Bad credentials"), runner names
//! unique per organization (409), `busy` runners GitHub refuses to delete (422), the `name`
//! filter and `per_page`/`page` pagination of the listing, and injected faults (also after the
//! request took effect). Each organization's runners are its own.

use std::collections::{BTreeMap, VecDeque};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub use crate::fault::{Fault, Method};

#[derive(Clone, Debug)]
struct GhRunner {
    id: u64,
    org: String,
    name: String,
    labels: Vec<String>,
    group: u64,
    online: bool,
    busy: bool,
}

struct Inner {
    token: String,
    next_id: u64,
    runners: BTreeMap<u64, GhRunner>,
    faults: VecDeque<Fault>,
    requests: Vec<String>,
    /// Runners that take a job the moment their DELETE arrives.
    busy_on_delete: Vec<u64>,
}

/// A running fake; stops when dropped.
pub struct FakeGithub {
    inner: Arc<Mutex<Inner>>,
    server: crate::served::Served,
}

impl FakeGithub {
    /// Starts the fake on 127.0.0.1 with `token` as the only valid bearer token.
    pub fn start(token: &str) -> anyhow::Result<FakeGithub> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let inner = Arc::new(Mutex::new(Inner {
            token: token.to_owned(),
            next_id: 10,
            runners: BTreeMap::new(),
            faults: VecDeque::new(),
            requests: Vec::new(),
            busy_on_delete: Vec::new(),
        }));
        let app = Router::new()
            .route(
                "/orgs/{org}/actions/runners/generate-jitconfig",
                post(generate_jitconfig),
            )
            .route("/orgs/{org}/actions/runners", get(list_runners))
            .route(
                "/orgs/{org}/actions/runners/{id}",
                get(get_runner).delete(delete_runner),
            )
            .fallback(not_found)
            .with_state(inner.clone());
        let server = crate::served::Served::start("fake-github", listener, app)?;
        Ok(FakeGithub { inner, server })
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

    /// The runner connects (as `run.sh` would).
    pub fn set_online(&self, runner_id: u64) {
        if let Some(runner) = self.lock().runners.get_mut(&runner_id) {
            runner.online = true;
        }
    }

    /// The runner runs a job now.
    pub fn set_busy(&self, runner_id: u64, busy: bool) {
        if let Some(runner) = self.lock().runners.get_mut(&runner_id) {
            runner.busy = busy;
        }
    }

    /// Arms the race: when the runner's DELETE arrives, it has just taken a job.
    pub fn busy_on_delete(&self, runner_id: u64) {
        self.lock().busy_on_delete.push(runner_id);
    }

    /// Runners: `(id, org, name, labels)`.
    pub fn runners(&self) -> Vec<(u64, String, String, Vec<String>)> {
        self.lock()
            .runners
            .values()
            .map(|r| (r.id, r.org.clone(), r.name.clone(), r.labels.clone()))
            .collect()
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
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
        axum::Json(json!({
            "message": message,
            "documentation_url": "https://docs.github.com/rest/actions/self-hosted-runners",
        })),
    )
        .into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
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
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if given != self.token {
            return Admission::Refuse(error(401, "Bad credentials"));
        }
        Admission::Proceed
    }

    fn runner_json(runner: &GhRunner) -> Value {
        let labels: Vec<Value> = runner
            .labels
            .iter()
            .enumerate()
            .map(|(i, name)| json!({"id": i + 1, "name": name, "type": "custom"}))
            .collect();
        json!({
            "id": runner.id,
            "name": runner.name,
            "os": "linux",
            "status": if runner.online { "online" } else { "offline" },
            "busy": runner.busy,
            "ephemeral": true,
            "runner_group_id": runner.group,
            "labels": labels,
        })
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

async fn generate_jitconfig(
    State(state): Shared,
    Path(org): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut inner = lock(&state);
    let after = admit!(inner, Method::POST, uri, headers);
    let name = body["name"].as_str().unwrap_or_default().to_owned();
    let outcome = if inner
        .runners
        .values()
        .any(|r| r.org == org && r.name == name)
    {
        error(
            409,
            "Already exists - A runner with the same name already exists.",
        )
    } else {
        inner.next_id += 1;
        let id = inner.next_id;
        let runner = GhRunner {
            id,
            org,
            name,
            labels: body["labels"]
                .as_array()
                .map(|labels| {
                    labels
                        .iter()
                        .filter_map(|l| l.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            group: body["runner_group_id"].as_u64().unwrap_or(1),
            online: false,
            busy: false,
        };
        let answer = json!({
            "runner": Inner::runner_json(&runner),
            "encoded_jit_config": format!("eyJqaXQiOiJ7aWR9In0{id}"),
        });
        inner.runners.insert(id, runner);
        (StatusCode::CREATED, axum::Json(answer)).into_response()
    };
    Inner::finish(outcome, after)
}

async fn list_runners(
    State(state): Shared,
    Path(org): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let mut inner = lock(&state);
    let after = admit!(inner, Method::GET, uri, headers);
    let per_page = query
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(30usize)
        .clamp(1, 100);
    let page = query
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1usize)
        .max(1);
    let all: Vec<&GhRunner> = inner
        .runners
        .values()
        .filter(|r| r.org == org)
        .filter(|r| query.get("name").is_none_or(|n| &r.name == n))
        .collect();
    let total = all.len();
    let runners: Vec<Value> = all
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(Inner::runner_json)
        .collect();
    let mut response = (
        StatusCode::OK,
        axum::Json(json!({"total_count": total, "runners": runners})),
    )
        .into_response();
    if page * per_page < total {
        let link = format!(
            "<http://127.0.0.1/orgs/{org}/actions/runners?per_page={per_page}&page={}>; rel=\"next\"",
            page + 1
        );
        if let Ok(value) = HeaderValue::try_from(link) {
            response.headers_mut().insert("link", value);
        }
    }
    Inner::finish(response, after)
}

async fn get_runner(
    State(state): Shared,
    Path((org, id)): Path<(String, u64)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut inner = lock(&state);
    let after = admit!(inner, Method::GET, uri, headers);
    let outcome = match inner.runners.get(&id).filter(|r| r.org == org) {
        Some(runner) => (StatusCode::OK, axum::Json(Inner::runner_json(runner))).into_response(),
        None => error(404, "Not Found"),
    };
    Inner::finish(outcome, after)
}

async fn delete_runner(
    State(state): Shared,
    Path((org, id)): Path<(String, u64)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut inner = lock(&state);
    let after = admit!(inner, Method::DELETE, uri, headers);
    if let Some(idx) = inner.busy_on_delete.iter().position(|r| *r == id) {
        inner.busy_on_delete.remove(idx);
        if let Some(runner) = inner.runners.get_mut(&id) {
            runner.busy = true;
        }
    }
    let busy = inner
        .runners
        .get(&id)
        .filter(|r| r.org == org)
        .map(|r| r.busy);
    let outcome = match busy {
        None => error(404, "Not Found"),
        // GitHub does not remove a runner that is running a job.
        Some(true) => error(422, "Bad request - Runner is still running a job"),
        Some(false) => {
            inner.runners.remove(&id);
            StatusCode::NO_CONTENT.into_response()
        }
    };
    Inner::finish(outcome, after)
}

async fn not_found(State(state): Shared, uri: Uri) -> Response {
    let mut inner = lock(&state);
    inner.requests.push(format!("? {uri}"));
    error(404, "Not Found")
}
