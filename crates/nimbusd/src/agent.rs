//! `nimbusd agent run`: the long-running bare-metal agent on a host that reaches the BMCs.
//!
//! It enrols once with a one-time enrolment token and keeps the credential it gets in
//! `<data_dir>/agent-credential.json` (mode 0600; the control plane stores only its hash), then
//! runs three loops: a heartbeat (health: each BMC's power state; capacity: this host's
//! inventory), a long-poll for BMC operations (each run with the `nimbus-baremetal` driver of
//! the named BMC, one at a time per BMC, and answered), and a Prometheus `/metrics` listener on
//! a loopback address. Every connection is outbound except the metrics listener, so the agent
//! works behind a firewall that only lets it reach the control plane.
//!
//! BMC addresses and passwords live only in the agent's own configuration file (`--config`);
//! passwords are [`Secret`]s, read from a file or the file itself, and never logged or sent.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use nimbus_baremetal::ops::{FailureKind, Op, Outcome};
use nimbus_baremetal::{Bmc, BmcConfig, BmcKind};
use nimbus_types::Secret;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::agents::wire::{
    BmcReport, Enrol, Enrolled, Heartbeat, HeartbeatAck, OperationOrder, OperationOrders,
};
use crate::config::AgentRunArgs;

pub const CREDENTIAL_FILE: &str = "agent-credential.json";

/// One BMC in the agent's configuration file.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BmcEntry {
    /// How the control plane names it (`"bmc": {"agent": …, "name": …}` in a provider).
    name: String,
    kind: BmcKind,
    address: String,
    #[serde(default)]
    port: Option<u16>,
    username: String,
    /// The password itself; prefer `password_file`.
    #[serde(default)]
    password: Option<Secret>,
    /// A file holding the password (mode 0600).
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    system_id: Option<String>,
    #[serde(default)]
    timeout_secs: Option<u64>,
    #[serde(default)]
    insecure_tls: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    #[serde(default)]
    bmcs: Vec<BmcEntry>,
}

/// The BMCs this agent drives, by name.
struct Bmcs {
    drivers: HashMap<String, Arc<dyn Bmc>>,
    /// One operation at a time per BMC.
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    order: Vec<String>,
}

fn private_file(path: &Path) -> anyhow::Result<()> {
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by other users (mode {:o}); run: chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

fn load_bmcs(path: Option<&Path>) -> anyhow::Result<Bmcs> {
    let mut bmcs = Bmcs {
        drivers: HashMap::new(),
        locks: HashMap::new(),
        order: Vec::new(),
    };
    let Some(path) = path else { return Ok(bmcs) };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read agent config {}", path.display()))?;
    let file: AgentFile = toml::from_str(&text)
        .with_context(|| format!("invalid agent config {}", path.display()))?;
    if file.bmcs.iter().any(|b| b.password.is_some()) {
        private_file(path)?;
    }
    for (idx, entry) in file.bmcs.into_iter().enumerate() {
        let field = format!("bmcs[{idx}]");
        if entry.name.is_empty()
            || entry.name.len() > 64
            || !entry
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            bail!(
                "{}: {field}.name: must be 1-64 letters, digits, '-', '_' or '.'",
                path.display()
            );
        }
        if bmcs.drivers.contains_key(&entry.name) {
            bail!(
                "{}: {field}.name: {:?} is used twice",
                path.display(),
                entry.name
            );
        }
        let password = match (entry.password, &entry.password_file) {
            (Some(password), None) => password,
            (None, Some(file)) => {
                private_file(file)?;
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                Secret::new(text.trim_end_matches(['\n', '\r']))
            }
            _ => bail!(
                "{}: {field}: exactly one of password and password_file is needed",
                path.display()
            ),
        };
        let config = BmcConfig {
            kind: entry.kind,
            address: entry.address,
            port: entry.port,
            username: entry.username,
            password,
            system_id: entry.system_id,
            timeout_secs: entry.timeout_secs,
            insecure_tls: entry.insecure_tls,
        };
        let driver = nimbus_baremetal::connect(&config)
            .map_err(|err| anyhow::anyhow!("{}: {field}: {err}", path.display()))?;
        bmcs.order.push(entry.name.clone());
        bmcs.locks.insert(entry.name.clone(), Arc::default());
        bmcs.drivers.insert(entry.name, Arc::from(driver));
    }
    Ok(bmcs)
}

/// What enrolment left in the data directory.
struct StoredCredential {
    agent_id: String,
    name: String,
    tenant_id: String,
    server: String,
    credential: Secret,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    bmc: String,
    op: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BmcLabels {
    bmc: String,
}

#[derive(Clone, Default)]
struct Metrics {
    heartbeats: Family<ResultLabels, Counter>,
    last_heartbeat: Gauge,
    operations: Family<OpLabels, Counter>,
    last_op_success: Family<BmcLabels, Gauge>,
    last_op_timestamp: Family<BmcLabels, Gauge>,
    bmc_up: Family<BmcLabels, Gauge>,
}

impl Metrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "nimbus_agent_heartbeats",
            "Heartbeats sent to the control plane, by result (ok, error)",
            self.heartbeats.clone(),
        );
        registry.register(
            "nimbus_agent_last_heartbeat_timestamp_seconds",
            "Unix time of the last heartbeat the control plane accepted",
            self.last_heartbeat.clone(),
        );
        registry.register(
            "nimbus_agent_operations",
            "BMC operations carried out, by BMC, operation and result (success, failure)",
            self.operations.clone(),
        );
        registry.register(
            "nimbus_agent_last_operation_success",
            "1 when the last operation on the BMC succeeded, 0 when it failed",
            self.last_op_success.clone(),
        );
        registry.register(
            "nimbus_agent_last_operation_timestamp_seconds",
            "Unix time of the last operation on the BMC",
            self.last_op_timestamp.clone(),
        );
        registry.register(
            "nimbus_agent_bmc_up",
            "1 when the BMC answered the last heartbeat's power-state read",
            self.bmc_up.clone(),
        );
    }
}

struct Agent {
    http: reqwest::Client,
    server: String,
    credential: Secret,
    name: String,
    bmcs: Bmcs,
    metrics: Metrics,
    capacity: serde_json::Value,
    heartbeat_interval: Duration,
    poll_wait: Duration,
}

/// Reads an error body's message (`{"error": {"message": …}}`) for a one-line error.
async fn api_error(response: reqwest::Response) -> String {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or(text);
    format!("{status}: {message}")
}

fn enrolment_token(args: &AgentRunArgs) -> anyhow::Result<Option<Secret>> {
    if let Some(path) = &args.enrolment_token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(Some(Secret::new(text.trim())));
    }
    Ok(args.enrolment_token.clone().map(Secret::new))
}

async fn enrol(
    http: &reqwest::Client,
    args: &AgentRunArgs,
    path: &Path,
) -> anyhow::Result<StoredCredential> {
    let token = enrolment_token(args)?.with_context(|| {
        format!(
            "{} does not exist and no enrolment token was given: create one with \
             `nimbusctl agent token create NAME` and pass it with --enrolment-token-file \
             or NIMBUS_ENROLMENT_TOKEN",
            path.display()
        )
    })?;
    let response = http
        .post(format!("{}/v1/agents/enrol", args.server))
        .json(&Enrol {
            token: token.expose().to_owned(),
        })
        .send()
        .await
        .with_context(|| format!("cannot reach the control plane at {}", args.server))?;
    if !response.status().is_success() {
        bail!("enrolment refused: {}", api_error(response).await);
    }
    let enrolled: Enrolled = response
        .json()
        .await
        .context("the control plane's enrolment answer is not the expected JSON")?;
    let stored = StoredCredential {
        agent_id: enrolled.agent_id,
        name: enrolled.name,
        tenant_id: enrolled.tenant_id,
        server: args.server.clone(),
        credential: Secret::new(enrolled.credential),
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let json = serde_json::json!({
        "agent_id": stored.agent_id,
        "name": stored.name,
        "tenant_id": stored.tenant_id,
        "server": stored.server,
        "credential": stored.credential.expose(),
    });
    file.write_all(json.to_string().as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(agent = %stored.name, agent.id = %stored.agent_id, path = %path.display(), "enrolled; credential stored");
    Ok(stored)
}

fn load_credential(path: &Path) -> anyhow::Result<StoredCredential> {
    private_file(path)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not the agent's credential file", path.display()))?;
    let field = |name: &str| -> anyhow::Result<String> {
        value[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{}: {name} is missing", path.display()))
    };
    Ok(StoredCredential {
        agent_id: field("agent_id")?,
        name: field("name")?,
        tenant_id: field("tenant_id")?,
        server: field("server")?,
        credential: Secret::new(field("credential")?),
    })
}

pub async fn run(args: AgentRunArgs) -> anyhow::Result<()> {
    if !args.server.starts_with("http://") && !args.server.starts_with("https://") {
        bail!("--server must be an http(s) URL");
    }
    if args.heartbeat_interval.is_zero() {
        bail!("--heartbeat-interval must be more than 0s");
    }
    let args = AgentRunArgs {
        server: args.server.trim_end_matches('/').to_owned(),
        ..args
    };
    let bmcs = load_bmcs(args.config.as_deref())?;
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => dirs::data_dir()
            .map(|dir| dir.join("nimbus/agent"))
            .context(
                "cannot find the data directory: set HOME or XDG_DATA_HOME, or pass --data-dir",
            )?,
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", data_dir.display()))?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("cannot build the HTTP client")?;
    let path = data_dir.join(CREDENTIAL_FILE);
    let stored = if path.exists() {
        let stored = load_credential(&path)?;
        if stored.server != args.server {
            bail!(
                "{} belongs to the control plane at {}, not {}; delete it to enrol with this one",
                path.display(),
                stored.server,
                args.server
            );
        }
        stored
    } else {
        enrol(&http, &args, &path).await?
    };
    println!(
        "nimbusd agent {} enrolled (id {})",
        stored.name, stored.agent_id
    );

    let capacity = match nimbus_baremetal::inventory::collect().await {
        Ok(inventory) => serde_json::json!({
            "hostname": inventory.hostname,
            "os": inventory.os,
            "arch": inventory.arch,
            "cpu_model": inventory.cpu.model,
            "cpu_threads": inventory.cpu.threads,
            "memory_bytes": inventory.memory_bytes,
            "disks": inventory.disks.len(),
            "disk_bytes": inventory.disks.iter().map(|d| d.size_bytes).sum::<u64>(),
            "nics": inventory.nics.len(),
        }),
        Err(err) => {
            tracing::warn!(error = %err, "cannot read this host's inventory; heartbeats carry none");
            serde_json::json!({"error": err.to_string()})
        }
    };

    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_listen))?;
    let metrics_addr = listener.local_addr()?;
    if !metrics_addr.ip().is_loopback() {
        tracing::warn!(listen = %metrics_addr, "the metrics listener is not on a loopback address");
    }
    println!("nimbusd agent metrics on http://{metrics_addr}/metrics");

    let agent = Arc::new(Agent {
        http,
        server: args.server.clone(),
        credential: stored.credential,
        name: stored.name,
        bmcs,
        metrics,
        capacity,
        heartbeat_interval: args.heartbeat_interval,
        poll_wait: args.poll_wait,
    });
    let shutdown = CancellationToken::new();
    let metrics_task = tokio::spawn(serve_metrics(listener, registry, shutdown.clone()));
    let heartbeat = tokio::spawn(agent.clone().heartbeat_loop(shutdown.clone()));
    let poll = tokio::spawn(agent.clone().poll_loop(shutdown.clone()));
    tracing::info!(agent = %agent.name, server = %agent.server, bmcs = agent.bmcs.order.len(), "nimbusd agent running");
    let result = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        done = heartbeat => done.context("heartbeat loop panicked")?,
        done = poll => done.context("operations loop panicked")?,
    };
    shutdown.cancel();
    let _ = metrics_task.await;
    tracing::info!("nimbusd agent stopped");
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                if prometheus_client::encoding::text::encode(&mut body, &registry).is_err() {
                    return (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics")
                        .into_response();
                }
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
                    .into_response()
            }
        }),
    );
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}

/// Stops the agent: the control plane forgot its credential.
#[derive(Debug, thiserror::Error)]
#[error(
    "the control plane refused agent {0}'s credential (was the agent deleted?); delete \
     {CREDENTIAL_FILE} in the data directory and enrol again with a new token"
)]
struct CredentialRefused(String);

fn credential_refused(name: &str) -> anyhow::Error {
    CredentialRefused(name.to_owned()).into()
}

impl Agent {
    fn unix_now() -> i64 {
        nimbus_types::now().unix_timestamp()
    }

    async fn report(&self) -> Heartbeat {
        let mut reports = Vec::new();
        let mut healthy = true;
        for name in &self.bmcs.order {
            let bmc = &self.bmcs.drivers[name];
            let labels = BmcLabels { bmc: name.clone() };
            let (power_state, error) = match bmc.power_state().await {
                Ok(state) => {
                    self.metrics.bmc_up.get_or_create(&labels).set(1);
                    (Some(state.to_string()), None)
                }
                Err(err) => {
                    healthy = false;
                    self.metrics.bmc_up.get_or_create(&labels).set(0);
                    (None, Some(err.to_string()))
                }
            };
            reports.push(BmcReport {
                name: name.clone(),
                kind: bmc.kind().to_string(),
                endpoint: bmc.endpoint().to_owned(),
                power_state,
                error,
            });
        }
        Heartbeat {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            health: if healthy { "ok" } else { "degraded" }.to_owned(),
            capacity: self.capacity.clone(),
            bmcs: reports,
        }
    }

    async fn heartbeat_once(&self) -> anyhow::Result<HeartbeatAck> {
        let report = self.report().await;
        let response = self
            .http
            .post(format!("{}/v1/agent/heartbeat", self.server))
            .bearer_auth(self.credential.expose())
            .timeout(Duration::from_secs(30))
            .json(&report)
            .send()
            .await
            .context("cannot reach the control plane")?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(credential_refused(&self.name));
        }
        if !response.status().is_success() {
            bail!("heartbeat refused: {}", api_error(response).await);
        }
        response.json().await.context("heartbeat answer")
    }

    async fn heartbeat_loop(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            match self.heartbeat_once().await {
                Ok(ack) => {
                    self.metrics
                        .heartbeats
                        .get_or_create(&ResultLabels {
                            result: "ok".into(),
                        })
                        .inc();
                    self.metrics.last_heartbeat.set(Self::unix_now());
                    if self.heartbeat_interval.as_secs() * 2 > ack.lost_after_secs {
                        tracing::warn!(
                            interval = ?self.heartbeat_interval,
                            lost_after_secs = ack.lost_after_secs,
                            "the heartbeat interval is more than half the control plane's lost window"
                        );
                    }
                }
                Err(err) => {
                    self.metrics
                        .heartbeats
                        .get_or_create(&ResultLabels {
                            result: "error".into(),
                        })
                        .inc();
                    if err.is::<CredentialRefused>() {
                        return Err(err);
                    }
                    tracing::warn!(error = %format!("{err:#}"), "heartbeat failed");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.heartbeat_interval) => {}
            }
        }
    }

    async fn poll_once(&self) -> anyhow::Result<Vec<OperationOrder>> {
        let response = self
            .http
            .get(format!(
                "{}/v1/agent/operations?wait_secs={}",
                self.server,
                self.poll_wait.as_secs()
            ))
            .bearer_auth(self.credential.expose())
            .timeout(self.poll_wait + Duration::from_secs(15))
            .send()
            .await
            .context("cannot reach the control plane")?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(credential_refused(&self.name));
        }
        if !response.status().is_success() {
            bail!("operations poll refused: {}", api_error(response).await);
        }
        let orders: OperationOrders = response.json().await.context("operations answer")?;
        Ok(orders.operations)
    }

    async fn poll_loop(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(500);
        loop {
            let orders = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                orders = self.poll_once() => orders,
            };
            match orders {
                Ok(orders) => {
                    backoff = Duration::from_millis(500);
                    for order in orders {
                        tokio::spawn(self.clone().carry_out(order));
                    }
                }
                Err(err) => {
                    if err.is::<CredentialRefused>() {
                        return Err(err);
                    }
                    tracing::warn!(error = %format!("{err:#}"), "polling for operations failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Runs one operation on its BMC and reports the outcome.
    async fn carry_out(self: Arc<Self>, order: OperationOrder) {
        let op: Result<Op, _> = serde_json::from_value(order.op.clone());
        let outcome = match (op, self.bmcs.drivers.get(&order.bmc)) {
            (Err(err), _) => Outcome::Failed {
                kind: FailureKind::Refused,
                message: format!("this agent cannot read the operation: {err}"),
            },
            (Ok(_), None) => Outcome::Failed {
                kind: FailureKind::Refused,
                message: format!(
                    "agent {} has no BMC named {:?} in its configuration",
                    self.name, order.bmc
                ),
            },
            (Ok(op), Some(bmc)) => {
                let _turn = self.bmcs.locks[&order.bmc].lock().await;
                let outcome = nimbus_baremetal::ops::run(bmc.as_ref(), &op).await;
                let labels = BmcLabels {
                    bmc: order.bmc.clone(),
                };
                self.metrics
                    .operations
                    .get_or_create(&OpLabels {
                        bmc: order.bmc.clone(),
                        op: op.label(),
                        result: if outcome.is_success() {
                            "success"
                        } else {
                            "failure"
                        }
                        .into(),
                    })
                    .inc();
                self.metrics
                    .last_op_success
                    .get_or_create(&labels)
                    .set(i64::from(outcome.is_success()));
                self.metrics
                    .last_op_timestamp
                    .get_or_create(&labels)
                    .set(Self::unix_now());
                tracing::info!(bmc = %order.bmc, op = %op.label(), op.id = %order.id, success = outcome.is_success(), "operation carried out");
                outcome
            }
        };
        for attempt in 0..5u32 {
            let sent = self
                .http
                .post(format!("{}/v1/agent/operations/{}", self.server, order.id))
                .bearer_auth(self.credential.expose())
                .timeout(Duration::from_secs(30))
                .json(&outcome)
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => return,
                Ok(response) if response.status() == reqwest::StatusCode::CONFLICT => {
                    tracing::warn!(op.id = %order.id, "the control plane no longer waits for this operation");
                    return;
                }
                Ok(response) => {
                    let error = api_error(response).await;
                    tracing::warn!(op.id = %order.id, error = %error, "reporting an outcome failed");
                }
                Err(err) => {
                    tracing::warn!(op.id = %order.id, error = %err, "reporting an outcome failed");
                }
            }
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt + 1))).await;
        }
    }
}

/// The metrics listener's default: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9721";
