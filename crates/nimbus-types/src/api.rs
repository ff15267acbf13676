//! Request and response bodies of the `/v1` REST API, shared by `nimbusd` and `nimbusctl`.
//!
//! Responses never carry credentials: providers and forges report `has_credentials` instead.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    Arch, ForgeConfig, ForgeType, ImageType, Machine, MachineId, Os, Pool, PoolSettings,
    ProviderConfig, ProviderId, ProviderType, Schedule, TenantId,
};

/// The error body of every non-2xx response.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `not_found`, `conflict`, `invalid_field`, `unauthorized`, …
    pub code: String,
    pub message: String,
    /// The request field at fault, for validation errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
}

/// A freshly issued tenant token. It is shown once; the server keeps only its hash.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantToken {
    pub tenant_id: TenantId,
    pub token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProvider {
    pub name: String,
    #[serde(rename = "type")]
    pub provider_type: ProviderType,
    /// Provider-specific settings, e.g. `hosts` for `ssh`, `region` for `aws`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub config: Option<serde_json::Value>,
    /// Provider-specific secrets; sealed at rest and never returned.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub credentials: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProviderView {
    pub id: ProviderId,
    pub tenant_id: TenantId,
    pub name: String,
    #[serde(rename = "type")]
    pub provider_type: ProviderType,
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    pub has_credentials: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl From<&ProviderConfig> for ProviderView {
    fn from(provider: &ProviderConfig) -> Self {
        ProviderView {
            id: provider.id,
            tenant_id: provider.tenant_id,
            name: provider.name.clone(),
            provider_type: provider.provider_type,
            config: provider.config.clone(),
            has_credentials: provider.credentials.is_some(),
            created_at: provider.created_at,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetForge {
    #[serde(rename = "type")]
    pub forge_type: ForgeType,
    pub org: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub config: Option<serde_json::Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub credentials: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForgeView {
    pub tenant_id: TenantId,
    #[serde(rename = "type")]
    pub forge_type: ForgeType,
    pub org: String,
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    pub has_credentials: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<&ForgeConfig> for ForgeView {
    fn from(forge: &ForgeConfig) -> Self {
        ForgeView {
            tenant_id: forge.tenant_id,
            forge_type: forge.forge_type,
            org: forge.org.clone(),
            config: forge.config.clone(),
            has_credentials: forge.credentials.is_some(),
            updated_at: forge.updated_at,
        }
    }
}

/// `POST /v1/machines`. The provider is named by name or id within the tenant.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionMachine {
    /// Tenant name or id; tenant tokens may omit it.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Provider name or id.
    pub provider: String,
    pub os: Os,
    pub arch: Arch,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub instance_type: Option<String>,
    #[serde(default)]
    pub image_id: Option<String>,
    #[serde(default)]
    pub image_type: ImageType,
    #[serde(default)]
    pub setup_script: Option<String>,
    #[serde(default)]
    pub skip_setup: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineList {
    pub machines: Vec<Machine>,
}

/// One recorded state change of a machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateChange {
    pub state: crate::MachineState,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/tenants/{tenant}/pools`. Only `name`, `provider`, `labels`, `os`, `arch` and `max`
/// are required.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePool {
    pub name: String,
    /// Provider name or id within the tenant.
    pub provider: String,
    pub labels: Vec<String>,
    pub os: Os,
    pub arch: Arch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(default)]
    pub image_type: ImageType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_script: Option<String>,
    #[serde(default)]
    pub min_idle: u32,
    pub max: u32,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_jobs: Option<u32>,
    #[serde(default = "yes")]
    pub ephemeral: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<Schedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly_cost: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget: Option<f64>,
}

fn default_idle_timeout() -> u64 {
    crate::DEFAULT_IDLE_TIMEOUT_SECS
}

fn yes() -> bool {
    true
}

impl CreatePool {
    /// The pool's settings as asked (not yet validated).
    pub fn settings(&self) -> PoolSettings {
        PoolSettings {
            labels: self.labels.clone(),
            os: self.os,
            arch: self.arch,
            instance_type: self.instance_type.clone(),
            image_id: self.image_id.clone(),
            image_type: self.image_type,
            setup_script: self.setup_script.clone(),
            min_idle: self.min_idle,
            max: self.max,
            idle_timeout_secs: self.idle_timeout_secs,
            max_age_secs: self.max_age_secs,
            max_jobs: self.max_jobs,
            ephemeral: self.ephemeral,
            schedules: self.schedules.clone(),
            hourly_cost: self.hourly_cost,
            monthly_budget: self.monthly_budget,
        }
    }
}

/// `PATCH /v1/tenants/{tenant}/pools/{pool}`: fields present change, `null` clears an optional
/// one, absent ones stay. The result is validated as a whole.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<Os>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nullable"
    )]
    #[schema(value_type = Option<String>)]
    pub instance_type: Option<Option<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nullable"
    )]
    #[schema(value_type = Option<String>)]
    pub image_id: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<ImageType>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nullable"
    )]
    #[schema(value_type = Option<String>)]
    pub setup_script: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_idle: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nullable"
    )]
    #[schema(value_type = Option<u64>)]
    pub max_age_secs: Option<Option<u64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nullable"
    )]
    #[schema(value_type = Option<u32>)]
    pub max_jobs: Option<Option<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedules: Option<Vec<Schedule>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nullable"
    )]
    #[schema(value_type = Option<f64>)]
    pub hourly_cost: Option<Option<f64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nullable"
    )]
    #[schema(value_type = Option<f64>)]
    pub monthly_budget: Option<Option<f64>>,
}

/// A present field, possibly `null`: `Some(None)` clears, `Some(Some(v))` sets.
fn nullable<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl UpdatePool {
    /// `settings` with this update's fields applied.
    pub fn apply(&self, settings: &PoolSettings) -> PoolSettings {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *target = value.clone();
            }
        }
        let mut out = settings.clone();
        set(&mut out.labels, &self.labels);
        set(&mut out.os, &self.os);
        set(&mut out.arch, &self.arch);
        set(&mut out.instance_type, &self.instance_type);
        set(&mut out.image_id, &self.image_id);
        set(&mut out.image_type, &self.image_type);
        set(&mut out.setup_script, &self.setup_script);
        set(&mut out.min_idle, &self.min_idle);
        set(&mut out.max, &self.max);
        set(&mut out.idle_timeout_secs, &self.idle_timeout_secs);
        set(&mut out.max_age_secs, &self.max_age_secs);
        set(&mut out.max_jobs, &self.max_jobs);
        set(&mut out.ephemeral, &self.ephemeral);
        set(&mut out.schedules, &self.schedules);
        set(&mut out.hourly_cost, &self.hourly_cost);
        set(&mut out.monthly_budget, &self.monthly_budget);
        out
    }
}

/// What the autoscaler sees of a pool right now, and why it last acted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolStatus {
    /// Machines the pool should have: busy + queued + the warm target, capped by `max` and the
    /// budget.
    pub desired: u32,
    /// Ready runners without a job.
    pub idle: u32,
    pub busy: u32,
    /// Machines being created or set up.
    pub booting: u32,
    /// Machines being removed.
    pub stopping: u32,
    /// Machines that failed recently (they count towards backoff, not capacity).
    pub failed: u32,
    /// Jobs waiting for a runner of this pool.
    pub queued_jobs: u32,
    /// How long the longest-waiting queued job has waited, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_queued_secs: Option<u64>,
    /// The warm target in force now (`min_idle`, or the active schedule's).
    pub min_idle: u32,
    /// Index into the pool's `schedules` of the schedule in force, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_schedule: Option<usize>,
    /// Scale-up is paused until then because provisions kept failing.
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub backoff_until: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_reason: Option<String>,
    /// Estimated spend this calendar month (UTC), when the pool has an hourly cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent_this_month: Option<f64>,
    /// Scale-up is held back by the monthly budget.
    #[serde(default)]
    pub budget_exhausted: bool,
    /// The autoscaler's latest decisions, newest first.
    #[serde(default)]
    pub last_decisions: Vec<DecisionRecord>,
}

/// One decision of the autoscaler, as shown to people.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionRecord {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// `provision`, `terminate`, `fail`, `cancel`, `hold`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<MachineId>,
    pub reason: String,
}

/// `PUT /v1/tenants/{tenant}/budget`: `null` removes the budget.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBudget {
    pub monthly_usd: Option<f64>,
}

/// A tenant's monthly budget and where the month stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BudgetView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<f64>,
    pub spent_this_month_usd: f64,
    pub forecast_month_end_usd: f64,
}

/// One line of `GET /v1/costs`: a tenant's machines of one pool (or provisioned by hand).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CostRow {
    pub tenant: String,
    pub tenant_id: TenantId,
    /// `None` for machines provisioned by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Machines that ran in the window.
    pub machines: u32,
    /// Billed machine-hours in the window (minimums included).
    pub machine_hours: f64,
    pub cost_usd: f64,
    /// What the machines running now cost per hour.
    pub usd_per_hour_now: f64,
    /// Machines in the window without a known price (their cost counts as 0).
    pub unpriced_machines: u32,
}

/// `GET /v1/costs`: costs since `since`, per tenant and pool, and a month-end forecast.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CostReport {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub since: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub until: OffsetDateTime,
    pub rows: Vec<CostRow>,
    pub total_usd: f64,
    /// This calendar month (UTC) so far, for the same tenants and pools.
    pub month_to_date_usd: f64,
    /// Month to date plus what is running now, kept running to the end of the month.
    pub forecast_month_end_usd: f64,
}

/// One line of `GET /v1/costs/jobs`: a finished job and its share of its runner's machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobCost {
    pub tenant: String,
    pub tenant_id: TenantId,
    pub job_id: u64,
    pub run_id: u64,
    pub repository: String,
    /// The pool of the machine that ran it; `None` for a machine provisioned by hand or a
    /// runner Nimbus does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The machine behind the job's runner (from the forge's job events), when it is one of
    /// Nimbus's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<MachineId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_name: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub queued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub finished_at: OffsetDateTime,
    /// From queued to started; `None` when the start is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_secs: Option<f64>,
    pub run_secs: f64,
    /// The job's share of its machine's billed cost so far: the machine's cost split over the
    /// jobs it ran in proportion to their run times (boot, idle time and minimums included;
    /// an ephemeral runner's job carries its whole machine).
    pub cost_usd: f64,
    /// Its run time alone at the machine's hourly price.
    pub run_cost_usd: f64,
    /// The machine has no known price (both costs are 0).
    pub unpriced: bool,
}

/// `GET /v1/costs/jobs`: jobs that finished since `since`, each with its share of its
/// runner's machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobCostReport {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub since: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub until: OffsetDateTime,
    pub jobs: Vec<JobCost>,
    pub total_usd: f64,
}

/// `GET /v1/tenants/{tenant}/pools/{pool}/plan`: what the autoscaler would do now, and why
/// (a dry run: nothing was done).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolPlan {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// Empty when the pool is where the policy wants it.
    pub decisions: Vec<DecisionRecord>,
    pub status: PoolStatus,
}

/// A pool and, when asked for one pool, its live status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolView {
    #[serde(flatten)]
    pub pool: Pool,
    /// The provider's name.
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PoolStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolList {
    pub pools: Vec<PoolView>,
}
