//! Telemetry event names and the event record every sink receives.
//!
//! Names follow the seeds (`[:nimbus, :machine, :provision_start]` becomes
//! `nimbus.machine.provision_start`). Each event carries `tenant_id`, `machine_id`, `duration`
//! and `error` where they apply.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{MachineId, TenantId};

pub const MACHINE_PROVISION_START: &str = "nimbus.machine.provision_start";
pub const MACHINE_PROVISION_SUCCESS: &str = "nimbus.machine.provision_success";
pub const MACHINE_PROVISION_FAILURE: &str = "nimbus.machine.provision_failure";
pub const MACHINE_SETUP_START: &str = "nimbus.machine.setup_start";
pub const MACHINE_SETUP_SUCCESS: &str = "nimbus.machine.setup_success";
pub const MACHINE_SETUP_FAILURE: &str = "nimbus.machine.setup_failure";
pub const MACHINE_READY: &str = "nimbus.machine.ready";
pub const MACHINE_TERMINATE_START: &str = "nimbus.machine.terminate_start";
pub const MACHINE_TERMINATE_SUCCESS: &str = "nimbus.machine.terminate_success";
pub const MACHINE_TERMINATE_FAILURE: &str = "nimbus.machine.terminate_failure";
/// The reconciler found a resource no intent knows about, or an intent without a resource.
pub const MACHINE_RECONCILED: &str = "nimbus.machine.reconciled";

pub const FORGE_REGISTER_RUNNER_START: &str = "nimbus.forge.register_runner_start";
pub const FORGE_REGISTER_RUNNER_SUCCESS: &str = "nimbus.forge.register_runner_success";
pub const FORGE_REGISTER_RUNNER_FAILURE: &str = "nimbus.forge.register_runner_failure";
pub const FORGE_UNREGISTER_RUNNER_START: &str = "nimbus.forge.unregister_runner_start";
pub const FORGE_UNREGISTER_RUNNER_SUCCESS: &str = "nimbus.forge.unregister_runner_success";
pub const FORGE_UNREGISTER_RUNNER_FAILURE: &str = "nimbus.forge.unregister_runner_failure";

pub const CLOUD_PROVIDER_API_CALL_START: &str = "nimbus.cloud_provider.api_call_start";
pub const CLOUD_PROVIDER_API_CALL_SUCCESS: &str = "nimbus.cloud_provider.api_call_success";
pub const CLOUD_PROVIDER_API_CALL_FAILURE: &str = "nimbus.cloud_provider.api_call_failure";

pub const SSH_CONNECT_START: &str = "nimbus.ssh.connect_start";
pub const SSH_CONNECT_SUCCESS: &str = "nimbus.ssh.connect_success";
pub const SSH_CONNECT_FAILURE: &str = "nimbus.ssh.connect_failure";
pub const SSH_COMMAND_START: &str = "nimbus.ssh.command_start";
pub const SSH_COMMAND_SUCCESS: &str = "nimbus.ssh.command_success";
pub const SSH_COMMAND_FAILURE: &str = "nimbus.ssh.command_failure";
/// A host presented a key different from the one pinned on first use.
pub const SSH_HOST_KEY_MISMATCH: &str = "nimbus.ssh.host_key_mismatch";

/// The autoscaler asked for machines; `metadata.count` and `metadata.reason`.
pub const POOL_SCALE_UP: &str = "nimbus.pool.scale_up";
/// The autoscaler removed a machine (idle, recycled, unhealthy, cancelled); `metadata.reason`.
pub const POOL_SCALE_DOWN: &str = "nimbus.pool.scale_down";
/// A pool's provisions keep failing: it waits before trying again; `metadata.until`.
pub const POOL_BACKOFF: &str = "nimbus.pool.backoff";
/// Scale-up stopped at the pool's monthly budget.
pub const POOL_BUDGET_EXHAUSTED: &str = "nimbus.pool.budget_exhausted";
/// The tenant's monthly budget holds back the scale-up of its pools.
pub const TENANT_BUDGET_EXHAUSTED: &str = "nimbus.tenant.budget_exhausted";

/// A Nimbus Git push started a CI run; `metadata.repository`, `run`, `workflow`, `jobs`.
pub const CI_RUN_CREATED: &str = "nimbus.ci.run_created";
/// A CI job started on a machine; `metadata.repository`, `run`, `job`.
pub const CI_JOB_STARTED: &str = "nimbus.ci.job_started";
/// A CI job ended; `metadata.state` (success, failure, cancelled, error).
pub const CI_JOB_FINISHED: &str = "nimbus.ci.job_finished";
/// Every job of a CI run ended; `metadata.conclusion`.
pub const CI_RUN_FINISHED: &str = "nimbus.ci.run_finished";

/// Every event name Nimbus emits.
pub const ALL: &[&str] = &[
    MACHINE_PROVISION_START,
    MACHINE_PROVISION_SUCCESS,
    MACHINE_PROVISION_FAILURE,
    MACHINE_SETUP_START,
    MACHINE_SETUP_SUCCESS,
    MACHINE_SETUP_FAILURE,
    MACHINE_READY,
    MACHINE_TERMINATE_START,
    MACHINE_TERMINATE_SUCCESS,
    MACHINE_TERMINATE_FAILURE,
    MACHINE_RECONCILED,
    FORGE_REGISTER_RUNNER_START,
    FORGE_REGISTER_RUNNER_SUCCESS,
    FORGE_REGISTER_RUNNER_FAILURE,
    FORGE_UNREGISTER_RUNNER_START,
    FORGE_UNREGISTER_RUNNER_SUCCESS,
    FORGE_UNREGISTER_RUNNER_FAILURE,
    CLOUD_PROVIDER_API_CALL_START,
    CLOUD_PROVIDER_API_CALL_SUCCESS,
    CLOUD_PROVIDER_API_CALL_FAILURE,
    SSH_CONNECT_START,
    SSH_CONNECT_SUCCESS,
    SSH_CONNECT_FAILURE,
    SSH_COMMAND_START,
    SSH_COMMAND_SUCCESS,
    SSH_COMMAND_FAILURE,
    SSH_HOST_KEY_MISMATCH,
    POOL_SCALE_UP,
    POOL_SCALE_DOWN,
    POOL_BACKOFF,
    POOL_BUDGET_EXHAUSTED,
    TENANT_BUDGET_EXHAUSTED,
    CI_RUN_CREATED,
    CI_JOB_STARTED,
    CI_JOB_FINISHED,
    CI_RUN_FINISHED,
];

/// Receives telemetry events: the one sink trait every crate reports through. The daemon's
/// implementation fans events out to logs, metrics, the stored event log and live streams.
/// Must not block: it is called from async code.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: Event);
}

/// One telemetry event. `seq` is assigned by the store when the event is persisted (0 before).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub seq: i64,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<TenantId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<MachineId>,
    /// Duration of the operation the event ends, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Extra structured fields (operation, provider, state, step …). Never secrets.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl Event {
    pub fn new(name: &str) -> Self {
        Event {
            seq: 0,
            name: name.to_owned(),
            at: crate::now(),
            tenant_id: None,
            machine_id: None,
            duration: None,
            error: None,
            metadata: serde_json::Map::new(),
        }
    }

    pub fn tenant(mut self, tenant_id: TenantId) -> Self {
        self.tenant_id = Some(tenant_id);
        self
    }

    pub fn machine(mut self, machine_id: MachineId) -> Self {
        self.machine_id = Some(machine_id);
        self
    }

    pub fn duration(mut self, duration: std::time::Duration) -> Self {
        self.duration = Some(duration.as_secs_f64());
        self
    }

    pub fn error(mut self, error: impl ToString) -> Self {
        self.error = Some(error.to_string());
        self
    }

    pub fn meta(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.metadata.insert(key.to_owned(), value.into());
        self
    }

    /// `nimbus.machine.provision_start` → (`machine`, `provision_start`).
    pub fn subsystem_and_action(&self) -> (&str, &str) {
        let rest = self.name.strip_prefix("nimbus.").unwrap_or(&self.name);
        rest.split_once('.').unwrap_or((rest, ""))
    }
}
