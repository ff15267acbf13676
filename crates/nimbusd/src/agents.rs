//! The control plane's side of bare-metal agents: [`AgentHub`] hands BMC operations to enrolled
//! agents and brings their outcomes back (it is the baremetal provider's
//! [`AgentRelay`](nimbus_provider::baremetal::AgentRelay)), and decides whether an agent is
//! online or lost from its last heartbeat. [`wire`] holds the JSON both sides speak.
//!
//! Operations are pulled: the agent long-polls `GET /v1/agent/operations`, which waits on a
//! per-agent [`Notify`] (and re-reads the store every second, so a second `nimbusd` replica's
//! operations are found too); the outcome comes back by `POST`, and the caller waiting in
//! [`AgentHub::run_op`] is woken the same way. Nothing here holds a BMC password: the agent
//! keeps those in its own configuration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nimbus_baremetal::ops::{Op, Outcome};
use nimbus_store::{AgentOpState, AgentOperation, AgentRecord, Storage};
use nimbus_types::TenantId;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How agents are judged and waited for.
#[derive(Clone, Copy, Debug)]
pub struct AgentSettings {
    /// An agent without a heartbeat for longer than this is lost.
    pub lost_after: Duration,
    /// Longest an operation may wait for its agent's answer.
    pub op_timeout: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            lost_after: Duration::from_secs(60),
            op_timeout: Duration::from_secs(60),
        }
    }
}

/// Where an agent stands, from its last heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Enrolled, no heartbeat yet.
    Enrolled,
    Online,
    /// No heartbeat within the lost window: its hosts are not handed out.
    Lost,
}

pub struct AgentHub {
    store: Arc<dyn Storage>,
    settings: AgentSettings,
    /// Wakes the long-poll of one agent (by agent id) when an operation is queued for it.
    queued: Mutex<HashMap<String, Arc<Notify>>>,
    /// Wakes everyone waiting for an outcome when one arrives.
    answered: Notify,
}

impl AgentHub {
    pub fn new(store: Arc<dyn Storage>, settings: AgentSettings) -> AgentHub {
        AgentHub {
            store,
            settings,
            queued: Mutex::default(),
            answered: Notify::new(),
        }
    }

    pub fn settings(&self) -> AgentSettings {
        self.settings
    }

    pub fn status(&self, agent: &AgentRecord, now: OffsetDateTime) -> AgentStatus {
        match agent.last_seen_at {
            None => AgentStatus::Enrolled,
            Some(seen) if now - seen > self.settings.lost_after => AgentStatus::Lost,
            Some(_) => AgentStatus::Online,
        }
    }

    fn wake_for(&self, agent_id: &str) -> Arc<Notify> {
        self.queued
            .lock()
            .expect("agent wake map")
            .entry(agent_id.to_owned())
            .or_default()
            .clone()
    }

    /// The agent's pending operations (now handed to it), waiting up to `wait` for one to be
    /// queued. Empty when none came or the server shuts down.
    pub async fn take_ops(
        &self,
        agent_id: &str,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> nimbus_store::Result<Vec<AgentOperation>> {
        let wake = self.wake_for(agent_id);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let ops = self
                .store
                .claim_agent_operations(agent_id, nimbus_types::now(), 16)
                .await?;
            if !ops.is_empty() {
                return Ok(ops);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let pause = (deadline - now).min(Duration::from_secs(1));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    /// Records the agent's outcome of one of its running operations; false when it is not
    /// running (answered before, abandoned, or another agent's).
    pub async fn answer(
        &self,
        agent_id: &str,
        op_id: &str,
        outcome: &Outcome,
    ) -> nimbus_store::Result<bool> {
        let value = serde_json::to_value(outcome).expect("an outcome is JSON");
        let done = self
            .store
            .finish_agent_operation(agent_id, op_id, &value, nimbus_types::now())
            .await?;
        if done {
            self.answered.notify_waiters();
        }
        Ok(done)
    }

    /// Queues `op` for `agent` (which must be online) and waits for its outcome.
    pub async fn run_op(
        &self,
        agent: &AgentRecord,
        bmc: &str,
        op: &Op,
    ) -> nimbus_baremetal::Result<Outcome> {
        let endpoint = format!("agent {}: {bmc}", agent.name);
        let unreachable = |message: String| nimbus_baremetal::Error::Unreachable {
            bmc: endpoint.clone(),
            message,
        };
        let now = nimbus_types::now();
        match (self.status(agent, now), agent.last_seen_at) {
            (AgentStatus::Online, _) => {}
            (AgentStatus::Enrolled, _) => {
                return Err(unreachable(format!(
                    "agent {} has not sent a heartbeat yet",
                    agent.name
                )));
            }
            (AgentStatus::Lost, seen) => {
                let ago = seen.map(|seen| (now - seen).whole_seconds()).unwrap_or(0);
                return Err(unreachable(format!(
                    "agent {} is lost: last heartbeat {ago}s ago (lost after {}s)",
                    agent.name,
                    self.settings.lost_after.as_secs()
                )));
            }
        }
        let record = AgentOperation {
            id: uuid::Uuid::now_v7().to_string(),
            agent_id: agent.id.clone(),
            bmc: bmc.to_owned(),
            op: serde_json::to_value(op).expect("an op is JSON"),
            state: AgentOpState::Pending,
            outcome: None,
            created_at: now,
            updated_at: now,
        };
        let store_error = |err: nimbus_store::Error| unreachable(format!("store: {err}"));
        self.store
            .enqueue_agent_operation(&record)
            .await
            .map_err(store_error)?;
        self.wake_for(&agent.id).notify_waiters();
        tracing::debug!(agent = %agent.name, bmc, op = %op.label(), op.id = %record.id, "queued agent operation");
        let deadline = tokio::time::Instant::now() + self.settings.op_timeout;
        loop {
            // Enabled before the store is read, so an answer in between is not missed.
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let stored = self
                .store
                .get_agent_operation(&record.id)
                .await
                .map_err(store_error)?;
            match stored.state {
                AgentOpState::Done => {
                    let outcome = stored.outcome.unwrap_or(serde_json::Value::Null);
                    return serde_json::from_value(outcome).map_err(|err| {
                        nimbus_baremetal::Error::Malformed {
                            bmc: endpoint.clone(),
                            message: format!("the agent's outcome: {err}"),
                        }
                    });
                }
                AgentOpState::Abandoned => {
                    return Err(unreachable("the operation was abandoned".into()));
                }
                AgentOpState::Pending | AgentOpState::Running => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                let _ = self
                    .store
                    .abandon_agent_operation(&record.id, nimbus_types::now())
                    .await;
                return Err(unreachable(format!(
                    "agent {} did not answer within {}s ({} {})",
                    agent.name,
                    self.settings.op_timeout.as_secs(),
                    op.label(),
                    if stored.state == AgentOpState::Pending {
                        "was never picked up"
                    } else {
                        "was picked up but not answered"
                    }
                )));
            }
            let pause = (deadline - now).min(Duration::from_secs(1));
            tokio::select! {
                _ = answered => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

#[async_trait]
impl nimbus_provider::baremetal::AgentRelay for AgentHub {
    async fn run(
        &self,
        tenant_id: TenantId,
        agent: &str,
        bmc: &str,
        op: &Op,
    ) -> nimbus_baremetal::Result<Outcome> {
        let record = match self.store.get_agent_by_name(tenant_id, agent).await {
            Ok(record) => record,
            Err(nimbus_store::Error::NotFound { .. }) => {
                return Err(nimbus_baremetal::Error::Refused {
                    bmc: format!("agent {agent}: {bmc}"),
                    message: format!("no agent named {agent} is enrolled for this tenant"),
                });
            }
            Err(err) => {
                return Err(nimbus_baremetal::Error::Unreachable {
                    bmc: format!("agent {agent}: {bmc}"),
                    message: format!("store: {err}"),
                });
            }
        };
        self.run_op(&record, bmc, op).await
    }
}

/// The JSON of the agent API, shared by the server's handlers and `nimbusd agent run`.
pub mod wire {
    use serde::{Deserialize, Serialize};

    /// `POST /v1/agents/enrolment-tokens`.
    #[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct CreateEnrolmentToken {
        /// The name the agent will enrol under (unique per tenant).
        pub name: String,
        /// Tenant name or id; required with the admin token, a tenant token's own otherwise.
        #[serde(default)]
        pub tenant: Option<String>,
        /// Seconds the token stays valid (default 3600, at most 7 days).
        #[serde(default)]
        pub ttl_secs: Option<u64>,
    }

    /// The token, shown once.
    #[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
    pub struct EnrolmentTokenCreated {
        pub id: String,
        pub token: String,
        pub agent_name: String,
        pub tenant_id: String,
        #[serde(with = "time::serde::rfc3339")]
        #[schema(value_type = String, format = DateTime)]
        pub expires_at: time::OffsetDateTime,
    }

    /// `POST /v1/agents/enrol` (no bearer token: the enrolment token is the proof).
    #[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Enrol {
        pub token: String,
    }

    /// The agent's own credential, shown once; the server keeps only its hash.
    #[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
    pub struct Enrolled {
        pub agent_id: String,
        pub name: String,
        pub tenant_id: String,
        pub credential: String,
    }

    /// One BMC as the agent sees it.
    #[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
    pub struct BmcReport {
        pub name: String,
        pub kind: String,
        pub endpoint: String,
        /// `on`, `off`, `transitioning`; absent when it did not answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub power_state: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<String>,
    }

    /// `POST /v1/agent/heartbeat`: health and capacity.
    #[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
    pub struct Heartbeat {
        pub version: String,
        /// `ok` when every BMC answered, `degraded` otherwise.
        pub health: String,
        /// The agent host's hardware summary (CPU cores, memory, disks, OS, arch).
        #[schema(value_type = Object)]
        pub capacity: serde_json::Value,
        pub bmcs: Vec<BmcReport>,
    }

    #[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
    pub struct HeartbeatAck {
        /// The control plane calls an agent lost after this many seconds without a heartbeat.
        pub lost_after_secs: u64,
    }

    /// One operation handed to the agent.
    #[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
    pub struct OperationOrder {
        pub id: String,
        pub bmc: String,
        /// A `nimbus_baremetal::ops::Op`: `{"op": "power", "action": "on"}`, …
        #[schema(value_type = Object)]
        pub op: serde_json::Value,
    }

    #[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
    pub struct OperationOrders {
        pub operations: Vec<OperationOrder>,
    }

    /// `POST /v1/agents/{agent}/operations`: an operation a person asks for.
    #[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct RequestOperation {
        /// The BMC's name in the agent's configuration.
        pub bmc: String,
        #[schema(value_type = Object)]
        pub op: serde_json::Value,
    }

    #[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
    pub struct OperationResult {
        pub bmc: String,
        pub op: String,
        #[schema(value_type = Object)]
        pub outcome: serde_json::Value,
    }
}
