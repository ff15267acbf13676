//! Request and response bodies of the `/v1` REST API, shared by `nimbusd` and `nimbusctl`.
//!
//! Responses never carry credentials: providers and forges report `has_credentials` instead.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    Arch, ForgeConfig, ForgeType, ImageType, Machine, Os, ProviderConfig, ProviderId, ProviderType,
    TenantId,
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
