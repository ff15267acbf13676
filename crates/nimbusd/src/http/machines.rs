//! Machines: provision, list, show, terminate, can-terminate, history.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use nimbus_store::MachineFilter;
use nimbus_types::api::{MachineList, ProvisionMachine, StateChange};
use nimbus_types::{CanTerminate, Machine, MachineId, MachineSpec, MachineState};
use serde::Deserialize;

use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::http::json::ApiJson;
use crate::http::providers;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/machines", get(list).post(provision))
        .route("/v1/machines/{id}", get(show).delete(terminate))
        .route("/v1/machines/{id}/can-terminate", get(can_terminate))
        .route("/v1/machines/{id}/history", get(history))
}

fn machine_id(raw: &str) -> Result<MachineId, ApiError> {
    // An id that cannot exist is simply not found.
    raw.parse().map_err(|_| ApiError::not_found("machine"))
}

/// Provision a machine. Returns at once with the machine in `provisioning`; poll it or follow
/// `/v1/events` to see it become `ready`.
#[utoipa::path(post, path = "/v1/machines", tag = "machines", security(("bearer" = [])),
    request_body = ProvisionMachine,
    responses(
        (status = 202, description = "provisioning started", body = Machine),
        (status = 404, description = "unknown tenant or provider", body = nimbus_types::api::ErrorBody),
        (status = 422, description = "invalid spec; `field` names it", body = nimbus_types::api::ErrorBody),
    ))]
pub async fn provision(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ProvisionMachine>,
) -> Result<(StatusCode, Json<Machine>), ApiError> {
    let tenant = caller.tenant_or_own(&state, body.tenant.as_deref()).await?;
    let provider = providers::find(&state, tenant.id, &body.provider).await?;
    let spec = MachineSpec {
        os: body.os,
        arch: body.arch,
        labels: body.labels,
        instance_type: body.instance_type,
        image_id: body.image_id,
        image_type: body.image_type,
        setup_script: body.setup_script,
        skip_setup: body.skip_setup,
    };
    let machine = state
        .fleet
        .provision_machine(&tenant, &provider, spec)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(machine)))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    tenant: Option<String>,
    provider: Option<String>,
    state: Option<String>,
    #[serde(default)]
    include_terminated: Option<bool>,
}

/// List machines the caller can see. Terminated machines are left out unless asked for.
#[utoipa::path(get, path = "/v1/machines", tag = "machines", security(("bearer" = [])),
    params(
        ("tenant" = Option<String>, Query, description = "tenant name or id"),
        ("provider" = Option<String>, Query, description = "provider name or id (needs tenant for the admin)"),
        ("state" = Option<String>, Query, description = "only machines in this state"),
        ("include_terminated" = Option<bool>, Query, description = "include terminated machines"),
    ),
    responses((status = 200, body = MachineList), (status = 422, body = nimbus_types::api::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let mut filter = MachineFilter {
        tenant_id: caller.scope(),
        include_terminated: query.include_terminated.unwrap_or(false),
        ..MachineFilter::default()
    };
    if let Some(tenant) = &query.tenant {
        filter.tenant_id = Some(caller.tenant(&state, tenant).await?.id);
    }
    if let Some(provider) = &query.provider {
        let tenant_id = filter.tenant_id.ok_or_else(|| {
            ApiError::invalid_field("provider", "needs `tenant` to say whose provider it is")
        })?;
        filter.provider_id = Some(providers::find(&state, tenant_id, provider).await?.id);
    }
    let wanted: Option<MachineState> = match &query.state {
        Some(raw) => Some(
            raw.parse()
                .map_err(|message: String| ApiError::invalid_field("state", message))?,
        ),
        None => None,
    };
    if wanted == Some(MachineState::Terminated) {
        filter.include_terminated = true;
    }
    // A listing is cached until the store's machines change (the store says when it can tell).
    let version = state.store.machines_version();
    let key = format!(
        "{:?}|{:?}|{:?}|{}",
        filter.tenant_id, filter.provider_id, wanted, filter.include_terminated
    );
    if let Some(version) = version
        && let Some(body) = state.machine_lists.get(&key, version)
    {
        return Ok(json_response(body));
    }
    let mut machines = state.fleet.list_machines(&filter).await?;
    if let Some(wanted) = wanted {
        machines.retain(|machine| machine.state == wanted);
    }
    // Progress read from machines being set up changes without a store write: not cached.
    let cacheable = !machines
        .iter()
        .any(|machine| machine.state == MachineState::ImageInstalling);
    let body = Bytes::from(
        serde_json::to_vec(&MachineList { machines }).map_err(|err| ApiError::internal(&err))?,
    );
    if let (Some(version), true) = (version, cacheable) {
        state.machine_lists.put(key, version, body.clone());
    }
    Ok(json_response(body))
}

fn json_response(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Serialized machine listings by filter, valid for one store version.
#[derive(Default)]
pub struct ListCache {
    entries: Mutex<HashMap<String, (u64, Bytes)>>,
}

/// Distinct filters kept at once; beyond that the cache starts over.
const LIST_CACHE_ENTRIES: usize = 256;

impl ListCache {
    fn get(&self, key: &str, version: u64) -> Option<Bytes> {
        let entries = self.entries.lock().expect("list cache lock");
        entries
            .get(key)
            .filter(|(cached, _)| *cached == version)
            .map(|(_, body)| body.clone())
    }

    fn put(&self, key: String, version: u64, body: Bytes) {
        let mut entries = self.entries.lock().expect("list cache lock");
        if entries.len() >= LIST_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (version, body));
    }
}

/// Show one machine.
#[utoipa::path(get, path = "/v1/machines/{id}", tag = "machines", security(("bearer" = [])),
    params(("id" = String, Path, description = "machine id")),
    responses((status = 200, body = Machine), (status = 404, body = nimbus_types::api::ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Machine>, ApiError> {
    let record = state
        .fleet
        .get_machine(caller.scope(), machine_id(&id)?)
        .await?;
    Ok(Json(record.machine))
}

/// Terminate a machine. Returns at once with the machine in `stopping` (or as it is, when it is
/// already stopping or terminated). A runner busy with a job keeps its machine in `stopping`
/// until the job ends; a provider that must keep a resource for now (see `can-terminate`) keeps
/// it and the machine's history says so.
#[utoipa::path(delete, path = "/v1/machines/{id}", tag = "machines", security(("bearer" = [])),
    params(("id" = String, Path, description = "machine id")),
    responses(
        (status = 202, description = "termination started", body = Machine),
        (status = 404, body = nimbus_types::api::ErrorBody),
    ))]
pub async fn terminate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Machine>), ApiError> {
    let machine = state
        .fleet
        .terminate_machine(caller.scope(), machine_id(&id)?)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(machine)))
}

/// Whether the machine may be terminated now, and if not, why and for how long.
#[utoipa::path(get, path = "/v1/machines/{id}/can-terminate", tag = "machines",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "machine id")),
    responses((status = 200, body = CanTerminate), (status = 404, body = nimbus_types::api::ErrorBody)))]
pub async fn can_terminate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CanTerminate>, ApiError> {
    Ok(Json(
        state
            .fleet
            .can_terminate_machine(caller.scope(), machine_id(&id)?)
            .await?,
    ))
}

/// Every state the machine went through, oldest first.
#[utoipa::path(get, path = "/v1/machines/{id}/history", tag = "machines",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "machine id")),
    responses((status = 200, body = Vec<StateChange>), (status = 404, body = nimbus_types::api::ErrorBody)))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<StateChange>>, ApiError> {
    Ok(Json(
        state
            .fleet
            .machine_history(caller.scope(), machine_id(&id)?)
            .await?,
    ))
}
