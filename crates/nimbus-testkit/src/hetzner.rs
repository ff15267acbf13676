//! A small stateful stand-in for the Hetzner Cloud API (servers, SSH keys, actions, server
//! types), meant to sit behind [`Prism`](crate::prism::Prism) in proxy mode so that every
//! request and every response is checked against Hetzner's own description
//! (`hetzner-cloud.json`) while servers created here persist and deletes remove them.
//!
//! What it models, because the provider depends on it: bearer-token auth (401
//! `unauthorized`), unique server and key names (409 `uniqueness_error`), `label_selector`
//! (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated), pagination, actions that finish after a
//! delay (servers are `initializing` until their create action succeeds and disappear when their
//! delete action does), `RateLimit-*` headers on every response, locations where a server type
//! is sold out (412 `resource_unavailable`), and injected faults — including a fault *after*
//! the request took effect, which is what a lost response looks like to a client.
//!
//! Paths have no `/v1` prefix: Prism serves Hetzner's paths at the root.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::fault::{Fault, Method};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
struct Server {
    id: i64,
    name: String,
    labels: BTreeMap<String, String>,
    server_type: String,
    location: String,
    image: String,
    status: &'static str,
    created: String,
    ssh_keys: Vec<i64>,
    user_data: Option<String>,
}

#[derive(Clone, Debug)]
struct SshKey {
    id: i64,
    name: String,
    public_key: String,
    labels: BTreeMap<String, String>,
    created: String,
}

#[derive(Clone, Debug)]
enum Effect {
    ServerRunning(i64),
    ServerGone(i64),
}

#[derive(Clone, Debug)]
struct Action {
    id: i64,
    command: &'static str,
    server: i64,
    started: String,
    finished: Option<String>,
    due: Instant,
    effect: Effect,
}

struct Inner {
    token: String,
    next_id: i64,
    servers: BTreeMap<i64, Server>,
    ssh_keys: BTreeMap<i64, SshKey>,
    actions: BTreeMap<i64, Action>,
    faults: VecDeque<Fault>,
    /// `(server type, location)` pairs that are sold out.
    unavailable: HashSet<(String, String)>,
    server_ip: String,
    action_delay: Duration,
    rate_limit: u32,
    rate_remaining: u32,
    /// When a spent budget refills.
    rate_reset: Option<Instant>,
    /// Every request, as `METHOD /path?query`.
    requests: Vec<String>,
}

/// A live server as the fake holds it: `(id, name, labels, location, status)`.
pub type ServerRow = (i64, String, BTreeMap<String, String>, String, String);

/// A running fake; the server stops when this is dropped.
pub struct FakeHetzner {
    inner: Arc<Mutex<Inner>>,
    server: crate::served::Served,
}

/// Server types the fake sells (name, architecture, hourly net price in EUR).
pub const SERVER_TYPES: &[(&str, &str, &str)] = &[
    ("cx22", "x86", "0.0066000000"),
    ("cx32", "x86", "0.0113000000"),
    ("cax11", "arm", "0.0053000000"),
    ("cax21", "arm", "0.0104000000"),
];

/// Locations the fake knows (name, city, network zone).
pub const LOCATIONS: &[(&str, &str, &str)] = &[
    ("fsn1", "Falkenstein", "eu-central"),
    ("nbg1", "Nuremberg", "eu-central"),
    ("hel1", "Helsinki", "eu-central"),
];

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "2026-01-01T00:00:00Z".to_owned())
}

impl FakeHetzner {
    /// Starts the fake on 127.0.0.1 with `token` as the only valid API token. Servers report
    /// `server_ip` as their public IPv4 address (point it at an sshd to log in).
    pub fn start(token: &str, server_ip: &str) -> anyhow::Result<FakeHetzner> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let inner = Arc::new(Mutex::new(Inner {
            token: token.to_owned(),
            next_id: 1000,
            servers: BTreeMap::new(),
            ssh_keys: BTreeMap::new(),
            actions: BTreeMap::new(),
            faults: VecDeque::new(),
            unavailable: HashSet::new(),
            server_ip: server_ip.to_owned(),
            action_delay: Duration::from_millis(150),
            rate_limit: 3600,
            rate_remaining: 3600,
            rate_reset: None,
            requests: Vec::new(),
        }));
        let app = Router::new()
            .route("/servers", get(list_servers).post(create_server))
            .route("/servers/{id}", get(get_server).delete(delete_server))
            .route("/actions/{id}", get(get_action))
            .route("/ssh_keys", get(list_ssh_keys).post(create_ssh_key))
            .route("/server_types", get(list_server_types))
            .fallback(not_found)
            .with_state(inner.clone());
        let server = crate::served::Served::start("fake-hetzner", listener, app)?;
        Ok(FakeHetzner { inner, server })
    }

    /// `http://127.0.0.1:PORT` (the upstream to give Prism).
    pub fn url(&self) -> String {
        self.server.url()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers the next `fault.times` matching requests with the fault.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    /// Drops every fault not yet used.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Makes `server_type` sold out in `location` (412 `resource_unavailable`).
    pub fn sell_out(&self, server_type: &str, location: &str) {
        self.lock()
            .unavailable
            .insert((server_type.to_owned(), location.to_owned()));
    }

    /// How long actions take to finish.
    pub fn set_action_delay(&self, delay: Duration) {
        self.lock().action_delay = delay;
    }

    /// Sets what `RateLimit-Remaining` reports next (and counts down from).
    pub fn set_rate_remaining(&self, remaining: u32) {
        self.lock().rate_remaining = remaining;
    }

    /// Live servers (not yet deleted).
    pub fn servers(&self) -> Vec<ServerRow> {
        let mut inner = self.lock();
        inner.advance();
        inner
            .servers
            .values()
            .map(|s| {
                (
                    s.id,
                    s.name.clone(),
                    s.labels.clone(),
                    s.location.clone(),
                    s.status.to_owned(),
                )
            })
            .collect()
    }

    /// The user data a server was created with.
    pub fn user_data(&self, id: i64) -> Option<String> {
        self.lock()
            .servers
            .get(&id)
            .and_then(|s| s.user_data.clone())
    }

    /// The SSH key ids a server was created with.
    pub fn server_ssh_keys(&self, id: i64) -> Vec<i64> {
        self.lock()
            .servers
            .get(&id)
            .map(|s| s.ssh_keys.clone())
            .unwrap_or_default()
    }

    /// SSH keys: `(id, name, labels)`.
    pub fn ssh_keys(&self) -> Vec<(i64, String, BTreeMap<String, String>)> {
        self.lock()
            .ssh_keys
            .values()
            .map(|k| (k.id, k.name.clone(), k.labels.clone()))
            .collect()
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Creates a server directly, as someone else (or a crashed Nimbus) would have.
    pub fn add_server(&self, name: &str, labels: &[(&str, &str)]) -> i64 {
        let mut inner = self.lock();
        let id = inner.id();
        let server = Server {
            id,
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            server_type: "cx22".into(),
            location: "fsn1".into(),
            image: "ubuntu-24.04".into(),
            status: "running",
            created: rfc3339_now(),
            ssh_keys: Vec::new(),
            user_data: None,
        };
        inner.servers.insert(id, server);
        id
    }
}

impl Inner {
    fn id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// Finishes the actions that are due and applies their effects.
    fn advance(&mut self) {
        let now = Instant::now();
        let mut effects = Vec::new();
        for action in self.actions.values_mut() {
            if action.finished.is_none() && action.due <= now {
                action.finished = Some(rfc3339_now());
                effects.push(action.effect.clone());
            }
        }
        for effect in effects {
            match effect {
                Effect::ServerRunning(id) => {
                    if let Some(server) = self.servers.get_mut(&id)
                        && server.status == "initializing"
                    {
                        server.status = "running";
                    }
                }
                Effect::ServerGone(id) => {
                    self.servers.remove(&id);
                }
            }
        }
    }

    fn action(&mut self, command: &'static str, server: i64, effect: Effect) -> Action {
        let id = self.id();
        let action = Action {
            id,
            command,
            server,
            started: rfc3339_now(),
            finished: None,
            due: Instant::now() + self.action_delay,
            effect,
        };
        self.actions.insert(id, action.clone());
        action
    }

    /// `RateLimit-*` for one response: the budget counts down and refills one second after it
    /// is spent. A 429 reports an empty budget without spending the real one.
    fn rate_headers(&mut self, throttled: bool) -> [(String, String); 3] {
        let now = Instant::now();
        if self.rate_reset.is_some_and(|at| at <= now) {
            self.rate_remaining = self.rate_limit;
            self.rate_reset = None;
        }
        let remaining = if throttled {
            0
        } else {
            self.rate_remaining = self.rate_remaining.saturating_sub(1);
            self.rate_remaining
        };
        if remaining == 0 && self.rate_reset.is_none() {
            self.rate_reset = Some(now + Duration::from_secs(1));
        }
        let reset = time::OffsetDateTime::now_utc().unix_timestamp() + 1;
        [
            ("RateLimit-Limit".into(), self.rate_limit.to_string()),
            ("RateLimit-Remaining".into(), remaining.to_string()),
            ("RateLimit-Reset".into(), reset.to_string()),
        ]
    }

    /// Records the request, checks the token and takes a matching fault off the queue.
    fn admit(&mut self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Admission {
        self.requests.push(format!("{method} {uri}"));
        self.advance();
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
                return Admission::Refuse(self.error(fault.status, &fault.code, "injected fault"));
            }
            return Admission::ProceedThenFail(fault);
        }
        let expected = format!("Bearer {}", self.token);
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if given != expected {
            return Admission::Refuse(self.error(401, "unauthorized", "unable to authenticate"));
        }
        Admission::Proceed
    }

    fn error(&mut self, status: u16, code: &str, message: &str) -> Response {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            axum::Json(json!({"error": {"code": code, "message": message, "details": null}})),
        )
            .into_response();
        let throttled = status == StatusCode::TOO_MANY_REQUESTS;
        for (name, value) in self.rate_headers(throttled) {
            if let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::try_from(name),
                axum::http::HeaderValue::try_from(value),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }

    fn ok(&mut self, status: StatusCode, body: Value) -> Response {
        let mut response = (status, axum::Json(body)).into_response();
        for (name, value) in self.rate_headers(false) {
            if let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::try_from(name),
                axum::http::HeaderValue::try_from(value),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }

    fn finish(&mut self, outcome: Response, after: Option<Fault>) -> Response {
        match after {
            Some(fault) => self.error(fault.status, &fault.code, "injected fault after effect"),
            None => outcome,
        }
    }

    fn server_json(&self, server: &Server) -> Value {
        let location = location_json(&server.location);
        let (arch, price) = SERVER_TYPES
            .iter()
            .find(|(name, _, _)| *name == server.server_type)
            .map(|(_, arch, price)| (*arch, *price))
            .unwrap_or(("x86", "0.0100000000"));
        json!({
            "backup_window": null,
            "created": server.created,
            "datacenter": {
                "description": format!("{} DC 1", server.location),
                "id": 1,
                "location": location,
                "name": format!("{}-dc1", server.location),
                "server_types": {"available": [1, 2, 3, 4], "available_for_migration": [1, 2, 3, 4], "supported": [1, 2, 3, 4]}
            },
            "id": server.id,
            "image": {
                "architecture": arch,
                "bound_to": null,
                "created": "2024-04-25T00:00:00Z",
                "created_from": null,
                "deleted": null,
                "deprecated": null,
                "description": server.image,
                "disk_size": 5,
                "id": 161547269,
                "image_size": null,
                "labels": {},
                "name": server.image,
                "os_flavor": "ubuntu",
                "os_version": "24.04",
                "protection": {"delete": false},
                "rapid_deploy": true,
                "status": "available",
                "type": "system"
            },
            "included_traffic": 21990232555520_i64,
            "ingoing_traffic": 0,
            "iso": null,
            "labels": server.labels,
            "load_balancers": [],
            "location": location_json(&server.location),
            "locked": false,
            "name": server.name,
            "outgoing_traffic": 0,
            "placement_group": null,
            "primary_disk_size": 40,
            "private_net": [],
            "protection": {"delete": false, "rebuild": false},
            "public_net": {
                "firewalls": [],
                "floating_ips": [],
                "ipv4": {"blocked": false, "dns_ptr": "static.example.com", "id": server.id, "ip": self.server_ip},
                "ipv6": null
            },
            "rescue_enabled": false,
            "server_type": server_type_json(&server.server_type, arch, price),
            "status": server.status,
            "volumes": []
        })
    }
}

fn location_json(name: &str) -> Value {
    let (idx, city, zone) = LOCATIONS
        .iter()
        .enumerate()
        .find(|(_, (n, _, _))| *n == name)
        .map(|(idx, (_, city, zone))| (idx, *city, *zone))
        .unwrap_or((0, "Falkenstein", "eu-central"));
    json!({
        "city": city,
        "country": if name == "hel1" { "FI" } else { "DE" },
        "description": format!("{city} DC Park 1"),
        "id": idx + 1,
        "latitude": 50.47612,
        "longitude": 12.370071,
        "name": name,
        "network_zone": zone
    })
}

fn server_type_json(name: &str, arch: &str, price: &str) -> Value {
    let id = SERVER_TYPES
        .iter()
        .position(|(n, _, _)| *n == name)
        .unwrap_or(0)
        + 1;
    let prices: Vec<Value> = LOCATIONS
        .iter()
        .map(|(location, _, _)| {
            json!({
                "included_traffic": 21990232555520_i64,
                "location": location,
                "price_hourly": {"gross": price, "net": price},
                "price_monthly": {"gross": "4.5100000000", "net": "3.7900000000"},
                "price_per_tb_traffic": {"gross": "1.1900000000", "net": "1.0000000000"}
            })
        })
        .collect();
    let locations: Vec<Value> = LOCATIONS
        .iter()
        .enumerate()
        .map(
            |(idx, (location, _, _))| json!({"deprecation": null, "id": idx + 1, "name": location}),
        )
        .collect();
    json!({
        "architecture": arch,
        "category": "regular_purpose",
        "cores": 2,
        "cpu_type": "shared",
        "deprecated": false,
        "deprecation": null,
        "description": name.to_uppercase(),
        "disk": 40,
        "id": id,
        "locations": locations,
        "memory": 4,
        "name": name,
        "prices": prices,
        "storage_type": "local"
    })
}

fn action_json(action: &Action) -> Value {
    json!({
        "command": action.command,
        "error": null,
        "finished": action.finished,
        "id": action.id,
        "progress": if action.finished.is_some() { 100 } else { 0 },
        "resources": [{"id": action.server, "type": "server"}],
        "started": action.started,
        "status": if action.finished.is_some() { "success" } else { "running" }
    })
}

fn meta(page: usize, per_page: usize, total: usize) -> Value {
    let last = total.div_ceil(per_page).max(1);
    json!({"pagination": {
        "last_page": last,
        "next_page": if page < last { Some(page + 1) } else { None },
        "page": page,
        "per_page": per_page,
        "previous_page": if page > 1 { Some(page - 1) } else { None },
        "total_entries": total
    }})
}

/// Whether `labels` satisfy a Hetzner label selector.
pub fn selector_matches(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|term| !term.is_empty())
        .all(|term| {
            if let Some((key, value)) = term.split_once("!=") {
                labels.get(key.trim()).map(String::as_str) != Some(value.trim())
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                labels.get(key.trim()).map(String::as_str) == Some(value.trim())
            } else if let Some(key) = term.strip_prefix('!') {
                !labels.contains_key(key.trim())
            } else {
                labels.contains_key(term)
            }
        })
}

type Shared = State<Arc<Mutex<Inner>>>;

enum Admission {
    Proceed,
    ProceedThenFail(Fault),
    Refuse(Response),
}

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
        .unwrap_or(25usize)
        .clamp(1, 50);
    (page, per_page)
}

async fn list_servers(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let mut inner = lock(&state);
    let after = admit!(inner, Method::GET, uri, headers);
    let selector = query.get("label_selector").cloned().unwrap_or_default();
    let matching: Vec<Server> = inner
        .servers
        .values()
        .filter(|s| selector_matches(&selector, &s.labels))
        .filter(|s| query.get("name").is_none_or(|name| &s.name == name))
        .cloned()
        .collect();
    let (page, per_page) = page_of(&query);
    let servers: Vec<Value> = matching
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|s| inner.server_json(s))
        .collect();
    let body = json!({"servers": servers, "meta": meta(page, per_page, matching.len())});
    let outcome = inner.ok(StatusCode::OK, body);
    inner.finish(outcome, after)
}

fn valid_label(text: &str) -> bool {
    text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

async fn create_server(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut inner = lock(&state);
    let after = admit!(inner, Method::POST, uri, headers);
    let name = body["name"].as_str().unwrap_or_default().to_owned();
    let server_type = body["server_type"].as_str().unwrap_or_default().to_owned();
    let image = body["image"].as_str().unwrap_or_default().to_owned();
    let location = body["location"].as_str().unwrap_or("fsn1").to_owned();
    if name.is_empty() || name.len() > 63 {
        return inner.error(400, "invalid_input", "invalid input in field 'name'");
    }
    if !SERVER_TYPES.iter().any(|(n, _, _)| *n == server_type) {
        return inner.error(400, "invalid_input", "invalid input in field 'server_type'");
    }
    if !LOCATIONS.iter().any(|(n, _, _)| *n == location) {
        return inner.error(400, "invalid_input", "invalid input in field 'location'");
    }
    let labels: BTreeMap<String, String> = body["labels"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    if labels
        .iter()
        .any(|(k, v)| !valid_label(k) || !valid_label(v))
    {
        return inner.error(400, "invalid_input", "invalid input in field 'labels'");
    }
    let ssh_keys: Vec<i64> = body["ssh_keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| {
                    k.as_i64().or_else(|| {
                        let name = k.as_str()?;
                        if let Ok(id) = name.parse::<i64>() {
                            return Some(id);
                        }
                        inner
                            .ssh_keys
                            .values()
                            .find(|key| key.name == name)
                            .map(|key| key.id)
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if ssh_keys.iter().any(|id| !inner.ssh_keys.contains_key(id)) {
        return inner.error(404, "not_found", "ssh_key not found");
    }
    if inner.servers.values().any(|s| s.name == name) {
        return inner.error(409, "uniqueness_error", "server name is already used");
    }
    if inner
        .unavailable
        .contains(&(server_type.clone(), location.clone()))
    {
        return inner.error(
            412,
            "resource_unavailable",
            "server type not available in this location",
        );
    }
    let id = inner.id();
    let server = Server {
        id,
        name,
        labels,
        server_type,
        location,
        image,
        status: "initializing",
        created: rfc3339_now(),
        ssh_keys,
        user_data: body["user_data"].as_str().map(str::to_owned),
    };
    inner.servers.insert(id, server.clone());
    let action = inner.action("create_server", id, Effect::ServerRunning(id));
    let body = json!({
        "action": action_json(&action),
        "next_actions": [],
        "root_password": null,
        "server": inner.server_json(&server),
    });
    let outcome = inner.ok(StatusCode::CREATED, body);
    inner.finish(outcome, after)
}

async fn get_server(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let mut inner = lock(&state);
    let after = admit!(inner, Method::GET, uri, headers);
    let Some(server) = inner.servers.get(&id).cloned() else {
        return inner.error(404, "not_found", "server not found");
    };
    let body = json!({"server": inner.server_json(&server)});
    let outcome = inner.ok(StatusCode::OK, body);
    inner.finish(outcome, after)
}

async fn delete_server(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let mut inner = lock(&state);
    let after = admit!(inner, Method::DELETE, uri, headers);
    let Some(server) = inner.servers.get_mut(&id) else {
        return inner.error(404, "not_found", "server not found");
    };
    server.status = "deleting";
    let action = inner.action("delete_server", id, Effect::ServerGone(id));
    let body = json!({"action": action_json(&action)});
    let outcome = inner.ok(StatusCode::OK, body);
    inner.finish(outcome, after)
}

async fn get_action(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let mut inner = lock(&state);
    let after = admit!(inner, Method::GET, uri, headers);
    let Some(action) = inner.actions.get(&id).cloned() else {
        return inner.error(404, "not_found", "action not found");
    };
    let body = json!({"action": action_json(&action)});
    let outcome = inner.ok(StatusCode::OK, body);
    inner.finish(outcome, after)
}

fn ssh_key_json(key: &SshKey) -> Value {
    json!({
        "created": key.created,
        "fingerprint": "b7:2f:30:a0:2f:6c:58:6c:21:04:58:61:ba:06:3b:2f",
        "id": key.id,
        "labels": key.labels,
        "name": key.name,
        "public_key": key.public_key,
    })
}

async fn list_ssh_keys(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let mut inner = lock(&state);
    let after = admit!(inner, Method::GET, uri, headers);
    let selector = query.get("label_selector").cloned().unwrap_or_default();
    let keys: Vec<Value> = inner
        .ssh_keys
        .values()
        .filter(|k| query.get("name").is_none_or(|name| &k.name == name))
        .filter(|k| selector_matches(&selector, &k.labels))
        .map(ssh_key_json)
        .collect();
    let (page, per_page) = page_of(&query);
    let total = keys.len();
    let body = json!({"ssh_keys": keys, "meta": meta(page, per_page.max(total), total)});
    let outcome = inner.ok(StatusCode::OK, body);
    inner.finish(outcome, after)
}

async fn create_ssh_key(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut inner = lock(&state);
    let after = admit!(inner, Method::POST, uri, headers);
    let name = body["name"].as_str().unwrap_or_default().to_owned();
    let public_key = body["public_key"].as_str().unwrap_or_default().to_owned();
    if !public_key.starts_with("ssh-") && !public_key.starts_with("ecdsa-") {
        return inner.error(400, "invalid_input", "invalid input in field 'public_key'");
    }
    if inner
        .ssh_keys
        .values()
        .any(|k| k.name == name || k.public_key.trim() == public_key.trim())
    {
        return inner.error(
            409,
            "uniqueness_error",
            "SSH key with the same fingerprint already exists",
        );
    }
    let id = inner.id();
    let key = SshKey {
        id,
        name,
        public_key,
        labels: body["labels"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        created: rfc3339_now(),
    };
    inner.ssh_keys.insert(id, key.clone());
    let body = json!({"ssh_key": ssh_key_json(&key)});
    let outcome = inner.ok(StatusCode::CREATED, body);
    inner.finish(outcome, after)
}

async fn list_server_types(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let mut inner = lock(&state);
    let after = admit!(inner, Method::GET, uri, headers);
    let types: Vec<Value> = SERVER_TYPES
        .iter()
        .filter(|(name, _, _)| query.get("name").is_none_or(|n| n == name))
        .map(|(name, arch, price)| server_type_json(name, arch, price))
        .collect();
    let total = types.len();
    let body = json!({"server_types": types, "meta": meta(1, total.max(1), total)});
    let outcome = inner.ok(StatusCode::OK, body);
    inner.finish(outcome, after)
}

async fn not_found(State(state): Shared, uri: Uri) -> Response {
    let mut inner = lock(&state);
    inner.requests.push(format!("? {uri}"));
    inner.error(404, "not_found", "no such route in the fake")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors() {
        let labels: BTreeMap<String, String> = [("a", "1"), ("b", "2")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        for (selector, expect) in [
            ("", true),
            ("a=1", true),
            ("a==1", true),
            ("a=1,b=2", true),
            ("a=1,b=3", false),
            ("a!=2", true),
            ("a!=1", false),
            ("c", false),
            ("!c", true),
            ("a", true),
            ("!a", false),
        ] {
            assert_eq!(selector_matches(selector, &labels), expect, "{selector}");
        }
    }
}
