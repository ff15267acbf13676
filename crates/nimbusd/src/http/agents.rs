//! Bare-metal agents. People (admin or tenant tokens) create one-time enrolment tokens, list
//! agents with their status and ask an agent for a BMC operation; agents enrol with a token
//! (no bearer token: the enrolment token is the proof) and then call `/v1/agent/*` with their
//! own credential. Tokens and credentials are returned once and stored only as hashes.

use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use nimbus_baremetal::ops::{Op, Outcome};
use nimbus_store::{AgentRecord, Enrolment, EnrolmentToken};
use serde::{Deserialize, Serialize};

use crate::agents::AgentStatus;
use crate::agents::wire::{
    CreateEnrolmentToken, Enrol, Enrolled, EnrolmentTokenCreated, Heartbeat, HeartbeatAck,
    OperationOrder, OperationOrders, OperationResult, RequestOperation,
};
use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::http::json::ApiJson;
use crate::secrets::{new_token, sha256};

/// Default and longest lifetime of an enrolment token.
const DEFAULT_TOKEN_TTL: u64 = 3600;
const MAX_TOKEN_TTL: u64 = 7 * 24 * 3600;
/// Longest an agent's long-poll for operations waits.
const MAX_POLL_WAIT: u64 = 30;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/agents", get(list))
        .route("/v1/agents/enrolment-tokens", post(create_token))
        .route("/v1/agents/{agent}", delete(remove))
        .route("/v1/agents/{agent}/operations", post(operate))
        .route("/v1/agent/heartbeat", post(heartbeat))
        .route("/v1/agent/operations/{id}", post(report))
}

/// The enrolment route has no bearer token and must not sit behind the caller extractor.
pub fn enrol_router() -> Router<AppState> {
    Router::new().route("/v1/agents/enrol", post(enrol))
}

/// The long-poll outlives the API's request timeout.
pub fn poll_router() -> Router<AppState> {
    Router::new().route("/v1/agent/operations", get(poll))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with(['-', '.'])
}

/// An agent, authenticated by its own credential.
pub struct AgentCaller(pub AgentRecord);

impl FromRequestParts<AppState> for AgentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("missing agent credential (Bearer …)"))?;
        match state
            .store
            .agent_for_credential(&sha256(token.as_bytes()))
            .await?
        {
            Some(agent) => Ok(AgentCaller(agent)),
            None => Err(ApiError::unauthorized(
                "invalid agent credential (deleted agent? enrol again with a new token)",
            )),
        }
    }
}

/// Create a one-time enrolment token for an agent.
#[utoipa::path(post, path = "/v1/agents/enrolment-tokens", tag = "agents",
    security(("bearer" = [])),
    request_body = CreateEnrolmentToken,
    responses(
        (status = 201, body = EnrolmentTokenCreated),
        (status = 409, description = "an agent with this name is enrolled", body = nimbus_types::api::ErrorBody),
        (status = 422, description = "invalid name or ttl", body = nimbus_types::api::ErrorBody),
    ))]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateEnrolmentToken>,
) -> Result<(StatusCode, Json<EnrolmentTokenCreated>), ApiError> {
    let tenant = caller.tenant_or_own(&state, body.tenant.as_deref()).await?;
    if !valid_name(&body.name) {
        return Err(ApiError::invalid_field(
            "name",
            "must be 1-64 letters, digits, '-', '_' or '.', not starting with '-' or '.'",
        ));
    }
    let ttl = body.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL);
    if !(1..=MAX_TOKEN_TTL).contains(&ttl) {
        return Err(ApiError::invalid_field(
            "ttl_secs",
            format!("must be 1-{MAX_TOKEN_TTL} seconds"),
        ));
    }
    match state.store.get_agent_by_name(tenant.id, &body.name).await {
        Ok(_) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "agent {} is enrolled already; delete it first to enrol it again",
                    body.name
                ),
            ));
        }
        Err(nimbus_store::Error::NotFound { .. }) => {}
        Err(err) => return Err(err.into()),
    }
    let now = nimbus_types::now();
    let token = new_token("nimbus_enrol_");
    let record = EnrolmentToken {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: tenant.id,
        agent_name: body.name.clone(),
        created_at: now,
        expires_at: now + Duration::from_secs(ttl),
        used_at: None,
    };
    state
        .store
        .create_enrolment_token(&record, &sha256(token.expose().as_bytes()))
        .await?;
    tracing::info!(tenant.id = %tenant.id, agent = %body.name, token.id = %record.id, "created an agent enrolment token");
    Ok((
        StatusCode::CREATED,
        Json(EnrolmentTokenCreated {
            id: record.id,
            token: token.expose().to_owned(),
            agent_name: body.name,
            tenant_id: tenant.id.to_string(),
            expires_at: record.expires_at,
        }),
    ))
}

/// Enrol an agent with a one-time token; returns the agent's own credential, once.
#[utoipa::path(post, path = "/v1/agents/enrol", tag = "agents",
    request_body = Enrol,
    responses(
        (status = 201, body = Enrolled),
        (status = 401, description = "unknown token", body = nimbus_types::api::ErrorBody),
        (status = 409, description = "the token was used before, or the name is taken", body = nimbus_types::api::ErrorBody),
        (status = 410, description = "the token expired", body = nimbus_types::api::ErrorBody),
    ))]
pub async fn enrol(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Enrol>,
) -> Result<(StatusCode, Json<Enrolled>), ApiError> {
    let agent_id = uuid::Uuid::now_v7().to_string();
    let credential = new_token("nimbus_agent_");
    let outcome = state
        .store
        .enrol_agent(
            &sha256(body.token.trim().as_bytes()),
            &agent_id,
            &sha256(credential.expose().as_bytes()),
            nimbus_types::now(),
        )
        .await?;
    match outcome {
        Enrolment::Enrolled(agent) => {
            tracing::info!(tenant.id = %agent.tenant_id, agent = %agent.name, agent.id = %agent.id, "agent enrolled");
            Ok((
                StatusCode::CREATED,
                Json(Enrolled {
                    agent_id: agent.id,
                    name: agent.name,
                    tenant_id: agent.tenant_id.to_string(),
                    credential: credential.expose().to_owned(),
                }),
            ))
        }
        Enrolment::UnknownToken => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_enrolment_token",
            "unknown enrolment token",
        )),
        Enrolment::Used => Err(ApiError::new(
            StatusCode::CONFLICT,
            "enrolment_token_used",
            "this enrolment token was used already; create a new one (`nimbusctl agent token create`)",
        )),
        Enrolment::Expired => Err(ApiError::new(
            StatusCode::GONE,
            "enrolment_token_expired",
            "this enrolment token has expired; create a new one (`nimbusctl agent token create`)",
        )),
        Enrolment::NameTaken => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "an agent with this token's name is enrolled already; delete it first",
        )),
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    tenant: Option<String>,
}

/// An agent as listed.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AgentView {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub status: AgentStatus,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub enrolled_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen_at: Option<time::OffsetDateTime>,
    /// Seconds since the last heartbeat.
    pub last_seen_secs_ago: Option<i64>,
    /// The last heartbeat's report (health, capacity, BMCs).
    #[schema(value_type = Option<Object>)]
    pub report: Option<serde_json::Value>,
}

fn view(state: &AppState, agent: AgentRecord, now: time::OffsetDateTime) -> AgentView {
    AgentView {
        status: state.agents.status(&agent, now),
        last_seen_secs_ago: agent.last_seen_at.map(|at| (now - at).whole_seconds()),
        id: agent.id,
        tenant_id: agent.tenant_id.to_string(),
        name: agent.name,
        enrolled_at: agent.enrolled_at,
        last_seen_at: agent.last_seen_at,
        report: agent.report,
    }
}

/// List agents with their status (online, lost, enrolled) and last heartbeat.
#[utoipa::path(get, path = "/v1/agents", tag = "agents", security(("bearer" = [])),
    params(("tenant" = Option<String>, Query, description = "tenant name or id")),
    responses((status = 200, body = Vec<AgentView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    let agents = match (&query.tenant, caller) {
        (Some(tenant), _) => {
            let tenant = caller.tenant(&state, tenant).await?;
            state.store.list_agents(Some(tenant.id)).await?
        }
        (None, Caller::Tenant(id)) => state.store.list_agents(Some(id)).await?,
        (None, Caller::Admin) => state.store.list_agents(None).await?,
    };
    let now = nimbus_types::now();
    Ok(Json(
        agents
            .into_iter()
            .map(|agent| view(&state, agent, now))
            .collect(),
    ))
}

async fn find(
    state: &AppState,
    caller: Caller,
    tenant: Option<&str>,
    name: &str,
) -> Result<AgentRecord, ApiError> {
    let tenant = caller.tenant_or_own(state, tenant).await?;
    state
        .store
        .get_agent_by_name(tenant.id, name)
        .await
        .map_err(|err| match err {
            nimbus_store::Error::NotFound { .. } => ApiError::not_found("agent"),
            other => other.into(),
        })
}

/// Delete an agent: its credential stops working and its pending operations are dropped.
#[utoipa::path(delete, path = "/v1/agents/{agent}", tag = "agents", security(("bearer" = [])),
    params(("agent" = String, Path, description = "agent name"),
           ("tenant" = Option<String>, Query, description = "tenant name or id")),
    responses((status = 204, description = "deleted"), (status = 404, body = nimbus_types::api::ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<StatusCode, ApiError> {
    let agent = find(&state, caller, query.tenant.as_deref(), &agent).await?;
    state.store.delete_agent(agent.tenant_id, &agent.id).await?;
    tracing::info!(tenant.id = %agent.tenant_id, agent = %agent.name, "agent deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Ask an agent to run one BMC operation and wait for its outcome.
#[utoipa::path(post, path = "/v1/agents/{agent}/operations", tag = "agents", security(("bearer" = [])),
    params(("agent" = String, Path, description = "agent name"),
           ("tenant" = Option<String>, Query, description = "tenant name or id")),
    request_body = RequestOperation,
    responses(
        (status = 200, description = "the agent's outcome (which may be a BMC failure)", body = OperationResult),
        (status = 404, body = nimbus_types::api::ErrorBody),
        (status = 422, description = "invalid operation", body = nimbus_types::api::ErrorBody),
        (status = 503, description = "the agent is lost or did not answer in time", body = nimbus_types::api::ErrorBody),
    ))]
pub async fn operate(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent): Path<String>,
    Query(query): Query<ListQuery>,
    ApiJson(body): ApiJson<RequestOperation>,
) -> Result<Json<OperationResult>, ApiError> {
    let agent = find(&state, caller, query.tenant.as_deref(), &agent).await?;
    let op: Op = serde_json::from_value(body.op)
        .map_err(|err| ApiError::invalid_field("op", err.to_string()))?;
    op.validate()
        .map_err(|message| ApiError::invalid_field("op", message))?;
    if !valid_name(&body.bmc) {
        return Err(ApiError::invalid_field("bmc", "not a BMC name"));
    }
    match state.agents.run_op(&agent, &body.bmc, &op).await {
        Ok(outcome) => Ok(Json(OperationResult {
            bmc: body.bmc,
            op: op.label(),
            outcome: serde_json::to_value(outcome).expect("an outcome is JSON"),
        })),
        Err(err) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "agent_unavailable",
            err.to_string(),
        )),
    }
}

/// An agent's heartbeat: health and capacity; records last-seen.
#[utoipa::path(post, path = "/v1/agent/heartbeat", tag = "agents", security(("bearer" = [])),
    request_body = Heartbeat,
    responses((status = 200, body = HeartbeatAck), (status = 401, body = nimbus_types::api::ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    ApiJson(body): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    let report = serde_json::to_value(&body).expect("a heartbeat is JSON");
    state
        .store
        .record_agent_heartbeat(&agent.id, nimbus_types::now(), &report)
        .await?;
    tracing::debug!(agent = %agent.name, health = %body.health, "agent heartbeat");
    Ok(Json(HeartbeatAck {
        lost_after_secs: state.agents.settings().lost_after.as_secs(),
    }))
}

#[derive(Debug, Deserialize)]
pub struct PollQuery {
    /// Seconds to wait for an operation (0-30, default 20).
    wait_secs: Option<u64>,
}

/// The agent's long-poll: operations queued for it, handed out once.
#[utoipa::path(get, path = "/v1/agent/operations", tag = "agents", security(("bearer" = [])),
    params(("wait_secs" = Option<u64>, Query, description = "seconds to wait for an operation (0-30)")),
    responses((status = 200, body = OperationOrders), (status = 401, body = nimbus_types::api::ErrorBody)))]
pub async fn poll(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    Query(query): Query<PollQuery>,
) -> Result<Json<OperationOrders>, ApiError> {
    let wait = query.wait_secs.unwrap_or(20);
    if wait > MAX_POLL_WAIT {
        return Err(ApiError::invalid_field(
            "wait_secs",
            format!("must be 0-{MAX_POLL_WAIT}"),
        ));
    }
    let ops = state
        .agents
        .take_ops(&agent.id, Duration::from_secs(wait), &state.shutdown)
        .await?;
    Ok(Json(OperationOrders {
        operations: ops
            .into_iter()
            .map(|op| OperationOrder {
                id: op.id,
                bmc: op.bmc,
                op: op.op,
            })
            .collect(),
    }))
}

/// The agent's outcome of one operation.
#[utoipa::path(post, path = "/v1/agent/operations/{id}", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, description = "operation id")),
    request_body = Object,
    responses(
        (status = 204, description = "recorded"),
        (status = 409, description = "not running (answered, abandoned, or another agent's)", body = nimbus_types::api::ErrorBody),
    ))]
pub async fn report(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    Path(id): Path<String>,
    ApiJson(outcome): ApiJson<Outcome>,
) -> Result<StatusCode, ApiError> {
    if state.agents.answer(&agent.id, &id, &outcome).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("operation {id} is not running for this agent (answered already or abandoned)"),
        ))
    }
}
