use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::spec::str_enum;
use crate::{ProviderId, Secret, TenantId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

/// Kinds of machine providers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderType {
    /// Machines are directories and process groups on the host running `nimbusd`.
    Local,
    /// Bring your own machines: a list of hosts reachable over SSH.
    Ssh,
    Aws,
    Hetzner,
    Baremetal,
}

str_enum!(ProviderType {
    Local => "local",
    Ssh => "ssh",
    Aws => "aws",
    Hetzner => "hetzner",
    Baremetal => "baremetal",
});

/// A tenant's configured provider. `credentials` is provider-specific JSON, sealed at rest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderConfig {
    pub id: ProviderId,
    pub tenant_id: TenantId,
    pub name: String,
    pub provider_type: ProviderType,
    pub credentials: Option<Secret>,
    pub config: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Kinds of Git forges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ForgeType {
    Github,
    Gitlab,
    Forgejo,
    NimbusGit,
}

str_enum!(ForgeType {
    Github => "github",
    Gitlab => "gitlab",
    Forgejo => "forgejo",
    NimbusGit => "nimbus-git",
});

/// A tenant's forge. `credentials` (tokens, App private keys) are sealed at rest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForgeConfig {
    pub tenant_id: TenantId,
    pub forge_type: ForgeType,
    pub org: String,
    pub credentials: Option<Secret>,
    /// Forge-specific settings that are not secret (API URL, repository, app id, …).
    pub config: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}
