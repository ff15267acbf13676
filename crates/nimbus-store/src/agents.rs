//! What the store keeps of bare-metal agents ([`AgentStore`], implemented by `SqlStore`):
//! one-time enrolment tokens, enrolled agents with their last heartbeat, and the BMC operations
//! the control plane asks them to carry out. Tokens and credentials are stored as SHA-256
//! hashes only.

use async_trait::async_trait;
use nimbus_types::TenantId;
use time::OffsetDateTime;

use crate::Result;

/// A one-time enrolment token as stored (its hash is kept apart, never returned).
#[derive(Clone, Debug, PartialEq)]
pub struct EnrolmentToken {
    /// A UUID.
    pub id: String,
    pub tenant_id: TenantId,
    /// The name the agent enrols under (unique per tenant).
    pub agent_name: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub used_at: Option<OffsetDateTime>,
}

/// An enrolled agent.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRecord {
    /// A UUID.
    pub id: String,
    pub tenant_id: TenantId,
    pub name: String,
    pub enrolled_at: OffsetDateTime,
    pub last_seen_at: Option<OffsetDateTime>,
    /// The last heartbeat's report (health, capacity, BMCs), as the agent sent it.
    pub report: Option<serde_json::Value>,
}

/// What an enrolment attempt came to. Only `Enrolled` writes anything.
#[derive(Clone, Debug, PartialEq)]
pub enum Enrolment {
    Enrolled(AgentRecord),
    /// No token has this hash.
    UnknownToken,
    /// The token was used before (a replay).
    Used,
    /// The token's lifetime is over.
    Expired,
    /// The tenant already has an agent with the token's name.
    NameTaken,
}

/// Where an agent operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AgentOpState {
    /// Waiting for the agent to pick it up.
    Pending,
    /// Handed to the agent; its outcome has not come back yet.
    Running,
    /// The agent reported an outcome (success or failure: see the outcome).
    Done,
    /// Nobody picked it up or answered in time, or the agent went away.
    Abandoned,
}

impl AgentOpState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentOpState::Pending => "pending",
            AgentOpState::Running => "running",
            AgentOpState::Done => "done",
            AgentOpState::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<AgentOpState> {
        Some(match s {
            "pending" => AgentOpState::Pending,
            "running" => AgentOpState::Running,
            "done" => AgentOpState::Done,
            "abandoned" => AgentOpState::Abandoned,
            _ => return None,
        })
    }
}

/// One BMC operation for one agent. `op` and `outcome` are JSON documents the store does not
/// interpret (`nimbus_baremetal::ops::{Op, Outcome}`).
#[derive(Clone, Debug, PartialEq)]
pub struct AgentOperation {
    /// A UUID.
    pub id: String,
    pub agent_id: String,
    /// The BMC's name in the agent's configuration.
    pub bmc: String,
    pub op: serde_json::Value,
    pub state: AgentOpState,
    pub outcome: Option<serde_json::Value>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// Storage of agents, their enrolment tokens and operations.
#[async_trait]
pub trait AgentStore: Send + Sync {
    /// Stores a new enrolment token with the hash of its secret; `NotFound` for an unknown
    /// tenant.
    async fn create_enrolment_token(
        &self,
        token: &EnrolmentToken,
        token_sha256: &[u8],
    ) -> Result<()>;
    /// Uses up the token with this hash and creates the agent it names, atomically: a token
    /// enrols at most one agent, ever. `agent_id` and `credential_sha256` are the new agent's.
    async fn enrol_agent(
        &self,
        token_sha256: &[u8],
        agent_id: &str,
        credential_sha256: &[u8],
        now: OffsetDateTime,
    ) -> Result<Enrolment>;
    /// The agent whose credential has this hash.
    async fn agent_for_credential(&self, credential_sha256: &[u8]) -> Result<Option<AgentRecord>>;
    /// Records a heartbeat: `last_seen_at` and the report.
    async fn record_agent_heartbeat(
        &self,
        agent_id: &str,
        at: OffsetDateTime,
        report: &serde_json::Value,
    ) -> Result<()>;
    /// The agents of one tenant, or of every tenant with `None`, ordered by tenant and name.
    async fn list_agents(&self, tenant_id: Option<TenantId>) -> Result<Vec<AgentRecord>>;
    /// An agent of the tenant by name; another tenant's is `NotFound`.
    async fn get_agent_by_name(&self, tenant_id: TenantId, name: &str) -> Result<AgentRecord>;
    /// Deletes an agent (its credential stops working) and its operations.
    async fn delete_agent(&self, tenant_id: TenantId, agent_id: &str) -> Result<()>;

    /// Queues an operation (state `pending`).
    async fn enqueue_agent_operation(&self, op: &AgentOperation) -> Result<()>;
    /// Hands the agent's pending operations to it, oldest first, at most `limit`: they become
    /// `running` atomically, so each is handed out once.
    async fn claim_agent_operations(
        &self,
        agent_id: &str,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<AgentOperation>>;
    /// Records a `running` operation's outcome (state `done`). False when the operation is not
    /// this agent's or not running (answered already, or abandoned).
    async fn finish_agent_operation(
        &self,
        agent_id: &str,
        id: &str,
        outcome: &serde_json::Value,
        now: OffsetDateTime,
    ) -> Result<bool>;
    /// Gives up on a `pending` or `running` operation (state `abandoned`). False when it had
    /// finished already.
    async fn abandon_agent_operation(&self, id: &str, now: OffsetDateTime) -> Result<bool>;
    async fn get_agent_operation(&self, id: &str) -> Result<AgentOperation>;
    /// Forgets finished and abandoned operations last updated before `before`.
    async fn prune_agent_operations(&self, before: OffsetDateTime) -> Result<u64>;
}
