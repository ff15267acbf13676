//! The tags Nimbus puts on every EC2 resource it creates. They are the provider-side half of
//! lean state: a listing filtered by them recovers the whole fleet after the store is lost.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use nimbus_types::{MachineId, ProviderId, TenantId};

pub const TENANT: &str = "nimbus:tenant";
pub const MACHINE: &str = "nimbus:machine";
pub const PROVIDER: &str = "nimbus:provider";
pub const OS: &str = "nimbus:os";
pub const ARCH: &str = "nimbus:arch";
pub const MANAGED_BY: &str = "managed-by";
pub const MANAGED_BY_VALUE: &str = "nimbus";
/// On a dedicated host: until when EC2 scrubs it after its last instance ended (RFC 3339).
pub const SCRUB_UNTIL: &str = "nimbus:scrub-until";

/// Keys users may not set through `config.tags`.
pub fn is_reserved(key: &str) -> bool {
    key.starts_with("nimbus:") || key.starts_with("aws:") || key == MANAGED_BY
}

/// Tags as a map, for lookups.
pub fn to_map(tags: &[Tag]) -> BTreeMap<&str, &str> {
    tags.iter()
        .filter_map(|tag| Some((tag.key()?, tag.value().unwrap_or(""))))
        .collect()
}

pub fn machine_id(tags: &BTreeMap<&str, &str>) -> Option<MachineId> {
    tags.get(MACHINE).and_then(|id| id.parse().ok())
}

pub fn tenant_id(tags: &BTreeMap<&str, &str>) -> Option<TenantId> {
    tags.get(TENANT).and_then(|id| id.parse().ok())
}

/// The tags every resource of one provider carries.
pub fn base(
    tenant_id: TenantId,
    provider_id: ProviderId,
    extra: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut tags: Vec<(String, String)> = extra
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    tags.push((TENANT.into(), tenant_id.to_string()));
    tags.push((PROVIDER.into(), provider_id.to_string()));
    tags.push((MANAGED_BY.into(), MANAGED_BY_VALUE.into()));
    tags
}

pub fn specification(resource: ResourceType, tags: &[(String, String)]) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .set_tags(Some(
            tags.iter()
                .map(|(key, value)| Tag::builder().key(key).value(value).build())
                .collect(),
        ))
        .build()
}
