//! The AWS provider's settings (`config` of the provider record) and credentials (`credentials`,
//! sealed by the store), parsed and validated before anything talks to EC2.
//!
//! Every error names the offending field (`config.availability_zones[1]`), so a bad file is a 4xx
//! at `provider add` rather than a failure at the first provision. Credential errors never repeat
//! a value: only field names appear in their messages.

use std::collections::BTreeMap;
use std::fmt;

use nimbus_provider::Error;
use nimbus_types::{Arch, Os, Secret};
use serde::{Deserialize, Serialize};

use crate::tags;

/// EC2 Mac instance types Nimbus knows; newer ones (any `mac*.metal`) are accepted by configuration.
pub const KNOWN_MAC_INSTANCE_TYPES: &[&str] = &[
    "mac1.metal",
    "mac2.metal",
    "mac2-m2.metal",
    "mac2-m2pro.metal",
    "mac2-m1ultra.metal",
    "mac-m4.metal",
    "mac-m4pro.metal",
];

pub const DEFAULT_MAC_ARM64_INSTANCE_TYPE: &str = "mac2.metal";
pub const DEFAULT_MAC_X86_64_INSTANCE_TYPE: &str = "mac1.metal";
pub const DEFAULT_LINUX_X86_64_INSTANCE_TYPE: &str = "t3.medium";
pub const DEFAULT_LINUX_ARM64_INSTANCE_TYPE: &str = "t4g.medium";
pub const DEFAULT_ORPHAN_GRACE_SECS: u64 = 900;
pub const DEFAULT_HOST_MIN_ALLOCATION_HOURS: u32 = 24;
pub const DEFAULT_HOST_SCRUB_MINUTES: u32 = 50;
/// EC2 rejects user data above 16 KiB (before base64).
pub const MAX_USER_DATA: usize = 16 * 1024;
/// EC2 allows 50 tags per resource; Nimbus uses up to 8 of its own.
pub const MAX_EXTRA_TAGS: usize = 40;

/// AMI ids per operating system and architecture.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageIds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux_x86_64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux_arm64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macos_x86_64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macos_arm64: Option<String>,
}

impl ImageIds {
    pub fn get(&self, os: Os, arch: Arch) -> Option<&str> {
        match (os, arch) {
            (Os::Linux, Arch::X86_64) => self.linux_x86_64.as_deref(),
            (Os::Linux, Arch::Arm64) => self.linux_arm64.as_deref(),
            (Os::Macos, Arch::X86_64) => self.macos_x86_64.as_deref(),
            (Os::Macos, Arch::Arm64) => self.macos_arm64.as_deref(),
        }
    }

    fn entries(&self) -> [(&'static str, &Option<String>); 4] {
        [
            ("linux_x86_64", &self.linux_x86_64),
            ("linux_arm64", &self.linux_arm64),
            ("macos_x86_64", &self.macos_x86_64),
            ("macos_arm64", &self.macos_arm64),
        ]
    }
}

/// Settings of an AWS provider. Nothing here is secret: keys live in [`AwsCredentials`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// e.g. `us-east-1`.
    pub region: String,
    /// Tried in order: dedicated hosts are allocated in the first zone with capacity, and Linux
    /// instances move on to the next zone's subnet on `InsufficientInstanceCapacity`.
    #[serde(default)]
    pub availability_zones: Vec<String>,
    /// Another EC2 endpoint: moto in tests, AWS-compatible clouds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Subnet for zones without an entry in `az_subnet_ids`; the account's default otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    /// Subnet per availability zone (a subnet lives in exactly one zone).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub az_subnet_ids: BTreeMap<String, String>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    /// Key pair name. With `ssh_public_key`, Nimbus imports the key under this name (default
    /// `nimbus-<tenant id>-<key hash>`); without it, the key pair must already exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// OpenSSH public key imported as the tenant's key pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<String>,
    /// Login user for setup over SSH (`ec2-user` on Amazon Linux and the EC2 macOS AMIs).
    #[serde(default = "default_ssh_user")]
    pub ssh_user: String,
    #[serde(default = "default_ssh_port")]
    pub ssh_port: u16,
    /// Instance type for macOS arm64 machines (default `mac2.metal`); macOS x86_64 uses `mac1.metal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_instance_type: Option<String>,
    /// Instance type for Linux x86_64 machines (default `t3.medium`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux_instance_type: Option<String>,
    /// Instance type for Linux arm64 machines (default `t4g.medium`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux_arm64_instance_type: Option<String>,
    #[serde(default)]
    pub image_ids: ImageIds,
    /// Extra tags on every resource. `nimbus:*`, `managed-by` and `aws:*` are reserved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Cloud-init / EC2 user data prepended to every machine's (at most 16 KiB in total).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// A tagged instance no intent knows about is removed once it is older than this.
    #[serde(default = "default_orphan_grace_secs")]
    pub orphan_grace_secs: u64,
    /// A dedicated host cannot be released before this many hours (EC2 Mac: 24).
    #[serde(default = "default_host_min_allocation_hours")]
    pub host_min_allocation_hours: u32,
    /// How long EC2 scrubs a Mac host after its instance ends; the host is not reused meanwhile.
    #[serde(default = "default_host_scrub_minutes")]
    pub host_scrub_minutes: u32,
    /// How often idle hosts past their minimum are looked for and released.
    #[serde(default = "default_host_reconcile_interval_secs")]
    pub host_reconcile_interval_secs: u64,
}

pub const DEFAULT_SSH_USER: &str = "ec2-user";

fn default_ssh_user() -> String {
    DEFAULT_SSH_USER.to_owned()
}

fn default_ssh_port() -> u16 {
    22
}

fn default_orphan_grace_secs() -> u64 {
    DEFAULT_ORPHAN_GRACE_SECS
}

fn default_host_min_allocation_hours() -> u32 {
    DEFAULT_HOST_MIN_ALLOCATION_HOURS
}

fn default_host_scrub_minutes() -> u32 {
    DEFAULT_HOST_SCRUB_MINUTES
}

pub const DEFAULT_HOST_RECONCILE_INTERVAL_SECS: u64 = 600;

fn default_host_reconcile_interval_secs() -> u64 {
    DEFAULT_HOST_RECONCILE_INTERVAL_SECS
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field: field.into(),
        message: message.into(),
    }
}

/// Keys that belong in the sealed credentials, never in the plain config.
const CREDENTIAL_KEYS: &[&str] = &[
    "access_key_id",
    "secret_access_key",
    "session_token",
    "ssh_private_key",
];

impl AwsConfig {
    /// A config with only the region set; everything else at its default.
    pub fn new(region: impl Into<String>) -> Self {
        AwsConfig {
            region: region.into(),
            availability_zones: Vec::new(),
            endpoint_url: None,
            subnet_id: None,
            az_subnet_ids: BTreeMap::new(),
            security_group_ids: Vec::new(),
            key_name: None,
            ssh_public_key: None,
            ssh_user: default_ssh_user(),
            ssh_port: default_ssh_port(),
            mac_instance_type: None,
            linux_instance_type: None,
            linux_arm64_instance_type: None,
            image_ids: ImageIds::default(),
            tags: BTreeMap::new(),
            user_data: None,
            orphan_grace_secs: DEFAULT_ORPHAN_GRACE_SECS,
            host_min_allocation_hours: DEFAULT_HOST_MIN_ALLOCATION_HOURS,
            host_scrub_minutes: DEFAULT_HOST_SCRUB_MINUTES,
            host_reconcile_interval_secs: DEFAULT_HOST_RECONCILE_INTERVAL_SECS,
        }
    }

    /// Parses and validates the provider record's `config` JSON.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, Error> {
        let object = value
            .as_object()
            .ok_or_else(|| invalid("config", "must be an object with at least `region`"))?;
        for key in CREDENTIAL_KEYS {
            if object.contains_key(*key) {
                return Err(invalid(
                    format!("config.{key}"),
                    "credentials belong in the provider's sealed credentials, not its config",
                ));
            }
        }
        let config: AwsConfig = serde_json::from_value(value.clone()).map_err(|err| {
            let text = err.to_string();
            let field = match serde_field(&text) {
                Some(name) => format!("config.{name}"),
                None => "config".to_owned(),
            };
            invalid(field, text)
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the error names the first offending one.
    pub fn validate(&self) -> Result<(), Error> {
        validate_region(&self.region)?;
        let mut seen = std::collections::HashSet::new();
        for (idx, az) in self.availability_zones.iter().enumerate() {
            let field = format!("config.availability_zones[{idx}]");
            validate_az(&self.region, az, &field)?;
            if !seen.insert(az) {
                return Err(invalid(
                    field,
                    format!("duplicate availability zone {az:?}"),
                ));
            }
        }
        if let Some(url) = &self.endpoint_url {
            validate_endpoint(url)?;
        }
        if let Some(subnet) = &self.subnet_id {
            validate_resource_id(subnet, "subnet-", "config.subnet_id")?;
        }
        for (az, subnet) in &self.az_subnet_ids {
            let field = format!("config.az_subnet_ids.{az}");
            validate_az(&self.region, az, &field)?;
            validate_resource_id(subnet, "subnet-", &field)?;
        }
        for (idx, group) in self.security_group_ids.iter().enumerate() {
            validate_resource_id(group, "sg-", &format!("config.security_group_ids[{idx}]"))?;
        }
        if let Some(name) = &self.key_name {
            let ok = !name.is_empty()
                && name.len() <= 255
                && name.chars().all(|c| c.is_ascii_graphic() || c == ' ');
            if !ok {
                return Err(invalid(
                    "config.key_name",
                    "must be 1-255 printable ASCII characters",
                ));
            }
        }
        if let Some(key) = &self.ssh_public_key {
            validate_public_key(key)?;
        }
        let user_ok = !self.ssh_user.is_empty()
            && self.ssh_user.len() <= 32
            && !self.ssh_user.starts_with('-')
            && self
                .ssh_user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !user_ok {
            return Err(invalid(
                "config.ssh_user",
                "must be 1-32 letters, digits, '.', '_' or '-', not starting with '-'",
            ));
        }
        if self.ssh_port == 0 {
            return Err(invalid("config.ssh_port", "must be 1-65535"));
        }
        if let Some(instance_type) = &self.mac_instance_type {
            validate_instance_type(instance_type, "config.mac_instance_type")?;
            if !is_mac_instance_type(instance_type) {
                return Err(invalid(
                    "config.mac_instance_type",
                    format!(
                        "{instance_type:?} is not an EC2 Mac type (mac*.metal, e.g. {})",
                        KNOWN_MAC_INSTANCE_TYPES.join(", ")
                    ),
                ));
            }
            if mac_arch(instance_type) != Arch::Arm64 {
                return Err(invalid(
                    "config.mac_instance_type",
                    "applies to macOS arm64 machines; mac1.metal (x86_64) is used for macOS x86_64",
                ));
            }
        }
        for (field, value) in [
            ("config.linux_instance_type", &self.linux_instance_type),
            (
                "config.linux_arm64_instance_type",
                &self.linux_arm64_instance_type,
            ),
        ] {
            if let Some(instance_type) = value {
                validate_instance_type(instance_type, field)?;
                if is_mac_instance_type(instance_type) {
                    return Err(invalid(field, "EC2 Mac types run macOS, not Linux"));
                }
            }
        }
        for (name, value) in self.image_ids.entries() {
            if let Some(image) = value {
                validate_resource_id(image, "ami-", &format!("config.image_ids.{name}"))?;
            }
        }
        if self.tags.len() > MAX_EXTRA_TAGS {
            return Err(invalid(
                "config.tags",
                format!("at most {MAX_EXTRA_TAGS} tags are allowed"),
            ));
        }
        for (key, value) in &self.tags {
            let field = format!("config.tags.{key}");
            if key.is_empty() || key.chars().count() > 128 {
                return Err(invalid(field, "tag keys must be 1-128 characters"));
            }
            if tags::is_reserved(key) {
                return Err(invalid(
                    field,
                    "tag keys starting with `nimbus:` or `aws:`, and `managed-by`, are reserved",
                ));
            }
            if value.chars().count() > 256 {
                return Err(invalid(field, "tag values must be at most 256 characters"));
            }
        }
        if let Some(user_data) = &self.user_data
            && user_data.len() > MAX_USER_DATA
        {
            return Err(invalid(
                "config.user_data",
                format!("must be at most {MAX_USER_DATA} bytes"),
            ));
        }
        if !(1..=8760).contains(&self.host_min_allocation_hours) {
            return Err(invalid(
                "config.host_min_allocation_hours",
                "must be between 1 and 8760",
            ));
        }
        if !(1..=86_400).contains(&self.host_reconcile_interval_secs) {
            return Err(invalid(
                "config.host_reconcile_interval_secs",
                "must be between 1 and 86400",
            ));
        }
        if self.host_scrub_minutes > 24 * 60 {
            return Err(invalid("config.host_scrub_minutes", "must be at most 1440"));
        }
        Ok(())
    }

    /// The subnet for instances in `az` (`None`: the account's default subnet).
    pub fn subnet_for(&self, az: Option<&str>) -> Option<&str> {
        az.and_then(|az| self.az_subnet_ids.get(az))
            .or(self.subnet_id.as_ref())
            .map(String::as_str)
    }
}

/// Credentials from the provider's sealed `credentials` JSON:
/// `{"access_key_id": "…", "secret_access_key": "…", "session_token": "…", "ssh_private_key": "…"}`.
/// Without the AWS keys the default chain (environment, profile, instance role) is used; the SSH
/// key (matching `ssh_public_key`) is what setup logs in with.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsCredentials {
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub session_token: Option<Secret>,
    #[serde(default)]
    pub ssh_private_key: Option<Secret>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field(
                "access_key_id",
                &self.access_key_id.as_deref().map(redact_key_id),
            )
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .field("ssh_private_key", &self.ssh_private_key)
            .finish()
    }
}

/// Shows the first four characters of an access key id (`AKIA…`), which tell its kind only.
fn redact_key_id(id: &str) -> String {
    let prefix: String = id.chars().take(4).collect();
    format!("{prefix}…")
}

impl AwsCredentials {
    /// `None` when the provider has no credentials: the default chain (environment, profile,
    /// instance role) is used then.
    pub fn from_secret(secret: Option<&Secret>) -> Result<Option<Self>, Error> {
        let Some(secret) = secret else {
            return Ok(None);
        };
        if secret.expose().trim().is_empty() {
            return Ok(None);
        }
        let value: serde_json::Value = serde_json::from_str(secret.expose()).map_err(|_| {
            invalid(
                "credentials",
                "must be a JSON object with access_key_id and secret_access_key",
            )
        })?;
        if value.as_object().is_some_and(|object| object.is_empty()) {
            return Ok(None);
        }
        let credentials: AwsCredentials = serde_json::from_value(value).map_err(|err| {
            // serde's messages can quote the offending value; only keep the field name.
            let text = err.to_string();
            let field = serde_field(&text).unwrap_or_default();
            if text.starts_with("unknown field") {
                invalid(
                    format!("credentials.{field}"),
                    "unknown field; expected access_key_id, secret_access_key, session_token, ssh_private_key",
                )
            } else if text.starts_with("missing field") {
                invalid(format!("credentials.{field}"), "is required")
            } else {
                invalid(
                    "credentials",
                    "access_key_id, secret_access_key, session_token and ssh_private_key must be strings",
                )
            }
        })?;
        credentials.validate()?;
        Ok(Some(credentials))
    }

    /// The AWS key pair to sign with, when the credentials carry one.
    pub fn aws_keys(&self) -> Option<(&str, &Secret, Option<&Secret>)> {
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(id), Some(secret)) => Some((id, secret, self.session_token.as_ref())),
            _ => None,
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => {
                return Err(invalid("credentials.secret_access_key", "is required"));
            }
            (None, Some(_)) => {
                return Err(invalid("credentials.access_key_id", "is required"));
            }
            (None, None) if self.session_token.is_some() => {
                return Err(invalid(
                    "credentials.session_token",
                    "needs access_key_id and secret_access_key",
                ));
            }
            _ => {}
        }
        if let Some(id) = &self.access_key_id
            && (id.len() < 16 || id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(invalid(
                "credentials.access_key_id",
                "must be 16-128 letters and digits (e.g. AKIA…)",
            ));
        }
        if let Some(secret) = &self.secret_access_key {
            if secret.expose().trim().is_empty() {
                return Err(invalid(
                    "credentials.secret_access_key",
                    "must not be empty",
                ));
            }
            if secret.expose().chars().any(char::is_whitespace) {
                return Err(invalid(
                    "credentials.secret_access_key",
                    "must not contain whitespace",
                ));
            }
        }
        if let Some(key) = &self.ssh_private_key
            && nimbus_setup::ssh::check_private_key(key).is_err()
        {
            // The parser's message may quote the key: say only that it is unusable.
            return Err(invalid(
                "credentials.ssh_private_key",
                "is not an unencrypted OpenSSH or PEM private key",
            ));
        }
        Ok(())
    }
}

/// Splits a provider file as users write it (TOML, or JSON) into the plain config and the
/// credentials to seal: `access_key_id`, `secret_access_key` and `session_token` move to the
/// credentials JSON. Validates both.
pub fn split_config_file(text: &str) -> Result<(serde_json::Value, Option<Secret>), Error> {
    let mut value: serde_json::Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|err| invalid("config", format!("invalid JSON: {err}")))?
    } else {
        let table: toml::Table = toml::from_str(text)
            .map_err(|err| invalid("config", format!("invalid TOML: {}", err.message())))?;
        serde_json::to_value(table).map_err(|err| invalid("config", err.to_string()))?
    };
    let object = value
        .as_object_mut()
        .ok_or_else(|| invalid("config", "must be a table with at least `region`"))?;
    let mut credentials = serde_json::Map::new();
    for key in CREDENTIAL_KEYS {
        if let Some(value) = object.remove(*key) {
            credentials.insert((*key).to_owned(), value);
        }
    }
    let secret = if credentials.is_empty() {
        None
    } else {
        Some(Secret::new(
            serde_json::Value::Object(credentials).to_string(),
        ))
    };
    AwsConfig::from_json(&value)?;
    AwsCredentials::from_secret(secret.as_ref())?;
    Ok((value, secret))
}

/// The field a serde error message is about: "unknown field `regoin`, …" → `regoin`.
fn serde_field(message: &str) -> Option<&str> {
    message
        .split('`')
        .nth(1)
        .filter(|_| message.starts_with("unknown field") || message.starts_with("missing field"))
}

fn validate_region(region: &str) -> Result<(), Error> {
    // e.g. us-east-1, eu-central-2, us-gov-west-1, ap-southeast-5
    let parts: Vec<&str> = region.split('-').collect();
    let ok = parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty();
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "config.region",
            format!("{region:?} is not an AWS region name like us-east-1"),
        ))
    }
}

fn validate_az(region: &str, az: &str, field: &str) -> Result<(), Error> {
    let suffix = az.strip_prefix(region).unwrap_or("");
    let ok = !suffix.is_empty()
        && suffix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{az:?} is not an availability zone of region {region} (e.g. {region}a)"),
        ))
    }
}

fn validate_endpoint(url: &str) -> Result<(), Error> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let ok = rest.is_some_and(|rest| {
        let host = rest.split('/').next().unwrap_or("");
        !host.is_empty() && !rest.contains(char::is_whitespace) && !host.contains('@')
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "config.endpoint_url",
            "must be an http:// or https:// URL without credentials, e.g. https://ec2.us-east-1.amazonaws.com",
        ))
    }
}

fn validate_resource_id(id: &str, prefix: &str, field: &str) -> Result<(), Error> {
    let ok = id.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 64 && rest.chars().all(|c| c.is_ascii_alphanumeric())
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{id:?} is not a valid id (expected {prefix}<hex>)"),
        ))
    }
}

fn validate_instance_type(instance_type: &str, field: &str) -> Result<(), Error> {
    let ok = instance_type.contains('.')
        && instance_type.len() <= 64
        && instance_type
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{instance_type:?} is not an EC2 instance type like t3.medium"),
        ))
    }
}

fn validate_public_key(key: &str) -> Result<(), Error> {
    let mut parts = key.split_whitespace();
    let kind = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("");
    let known = ["ssh-ed25519", "ssh-rsa"].contains(&kind) || kind.starts_with("ecdsa-sha2-");
    let ok = known
        && body.len() >= 16
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
        && key.len() <= 16 * 1024;
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "config.ssh_public_key",
            "must be an OpenSSH public key line (ssh-ed25519, ssh-rsa or ecdsa-sha2-*)",
        ))
    }
}

/// `mac1.metal`, `mac2-m2pro.metal`, `mac-m4.metal`, …
pub fn is_mac_instance_type(instance_type: &str) -> bool {
    instance_type.starts_with("mac") && instance_type.ends_with(".metal")
}

/// mac1 is Intel; every later EC2 Mac is Apple silicon.
pub fn mac_arch(instance_type: &str) -> Arch {
    if instance_type.starts_with("mac1.") {
        Arch::X86_64
    } else {
        Arch::Arm64
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(config: serde_json::Value, expect: Result<(), &str>) {
        let got = AwsConfig::from_json(&config);
        match (got, expect) {
            (Ok(_), Ok(())) => {}
            (Err(Error::InvalidConfig { field, message }), Err(want)) => {
                assert_eq!(field, want, "wrong field for {config}: {message}")
            }
            (got, want) => panic!("for {config}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn config_fields_are_validated_by_name() {
        check(json!({"region": "us-east-1"}), Ok(()));
        check(
            json!({
                "region": "us-east-1",
                "availability_zones": ["us-east-1a", "us-east-1b"],
                "endpoint_url": "http://127.0.0.1:5000",
                "subnet_id": "subnet-0abc",
                "az_subnet_ids": {"us-east-1b": "subnet-0def"},
                "security_group_ids": ["sg-0123"],
                "key_name": "ci",
                "ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxyz nimbus",
                "mac_instance_type": "mac2-m2pro.metal",
                "linux_instance_type": "c7i.large",
                "linux_arm64_instance_type": "c7g.large",
                "image_ids": {"linux_x86_64": "ami-04681a1dbd79675a5", "macos_arm64": "ami-0abc"},
                "tags": {"team": "ci"},
                "orphan_grace_secs": 60,
                "host_min_allocation_hours": 24
            }),
            Ok(()),
        );
        check(json!("us-east-1"), Err("config"));
        check(json!({}), Err("config.region"));
        check(
            json!({"region": "us-east-1", "regoin": "x"}),
            Err("config.regoin"),
        );
        check(json!({"region": "US-EAST-1"}), Err("config.region"));
        check(json!({"region": "useast1"}), Err("config.region"));
        check(
            json!({"region": "us-east-1", "availability_zones": ["us-west-2a"]}),
            Err("config.availability_zones[0]"),
        );
        check(
            json!({"region": "us-east-1", "availability_zones": ["us-east-1a", "us-east-1a"]}),
            Err("config.availability_zones[1]"),
        );
        check(
            json!({"region": "us-east-1", "endpoint_url": "ftp://x"}),
            Err("config.endpoint_url"),
        );
        check(
            json!({"region": "us-east-1", "endpoint_url": "http://user:pw@host"}),
            Err("config.endpoint_url"),
        );
        check(
            json!({"region": "us-east-1", "subnet_id": "vpc-1"}),
            Err("config.subnet_id"),
        );
        check(
            json!({"region": "us-east-1", "az_subnet_ids": {"us-east-1a": "sg-1"}}),
            Err("config.az_subnet_ids.us-east-1a"),
        );
        check(
            json!({"region": "us-east-1", "security_group_ids": ["sg-1", "group"]}),
            Err("config.security_group_ids[1]"),
        );
        check(
            json!({"region": "us-east-1", "ssh_public_key": "not a key"}),
            Err("config.ssh_public_key"),
        );
        check(
            json!({"region": "us-east-1", "mac_instance_type": "t3.large"}),
            Err("config.mac_instance_type"),
        );
        check(
            json!({"region": "us-east-1", "mac_instance_type": "mac1.metal"}),
            Err("config.mac_instance_type"),
        );
        check(
            json!({"region": "us-east-1", "mac_instance_type": "mac-m4.metal"}),
            Ok(()),
        );
        check(
            json!({"region": "us-east-1", "linux_instance_type": "mac2.metal"}),
            Err("config.linux_instance_type"),
        );
        check(
            json!({"region": "us-east-1", "linux_arm64_instance_type": "T4G LARGE"}),
            Err("config.linux_arm64_instance_type"),
        );
        check(
            json!({"region": "us-east-1", "image_ids": {"linux_arm64": "img-1"}}),
            Err("config.image_ids.linux_arm64"),
        );
        check(
            json!({"region": "us-east-1", "image_ids": {"windows": "ami-1"}}),
            Err("config.windows"),
        );
        check(
            json!({"region": "us-east-1", "tags": {"nimbus:tenant": "x"}}),
            Err("config.tags.nimbus:tenant"),
        );
        check(
            json!({"region": "us-east-1", "tags": {"managed-by": "me"}}),
            Err("config.tags.managed-by"),
        );
        check(
            json!({"region": "us-east-1", "user_data": "x".repeat(MAX_USER_DATA + 1)}),
            Err("config.user_data"),
        );
        check(
            json!({"region": "us-east-1", "host_min_allocation_hours": 0}),
            Err("config.host_min_allocation_hours"),
        );
        check(
            json!({"region": "us-east-1", "host_reconcile_interval_secs": 0}),
            Err("config.host_reconcile_interval_secs"),
        );
        check(
            json!({"region": "us-east-1", "ssh_user": "-oProxyCommand=x"}),
            Err("config.ssh_user"),
        );
        check(
            json!({"region": "us-east-1", "ssh_port": 0}),
            Err("config.ssh_port"),
        );
        check(
            json!({"region": "us-east-1", "host_min_allocation_hours": "24"}),
            Err("config"),
        );
        check(
            json!({"region": "us-east-1", "secret_access_key": "x"}),
            Err("config.secret_access_key"),
        );
    }

    #[test]
    fn credentials_parse_without_echoing_values() {
        let ok = Secret::new(
            json!({"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG"})
                .to_string(),
        );
        let creds = AwsCredentials::from_secret(Some(&ok)).unwrap().unwrap();
        assert_eq!(creds.access_key_id.as_deref(), Some("AKIAIOSFODNN7EXAMPLE"));
        let debug = format!("{creds:?}");
        assert!(!debug.contains("wJalr"), "{debug}");
        assert!(!debug.contains("IOSFODNN"), "{debug}");

        assert!(AwsCredentials::from_secret(None).unwrap().is_none());
        assert!(
            AwsCredentials::from_secret(Some(&Secret::new("{}")))
                .unwrap()
                .is_none()
        );

        for (raw, field) in [
            ("not json hunter2", "credentials"),
            (
                r#"{"access_key_id": "AKIAIOSFODNN7EXAMPLE"}"#,
                "credentials.secret_access_key",
            ),
            (
                r#"{"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": 12345678, "x": 1}"#,
                "credentials",
            ),
            (
                r#"{"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "hunter2", "password": "hunter2"}"#,
                "credentials.password",
            ),
            (
                r#"{"access_key_id": "short", "secret_access_key": "hunter2"}"#,
                "credentials.access_key_id",
            ),
            (
                r#"{"secret_access_key": "hunter2"}"#,
                "credentials.access_key_id",
            ),
            (
                r#"{"session_token": "hunter2"}"#,
                "credentials.session_token",
            ),
            (
                r#"{"ssh_private_key": "-----BEGIN hunter2"}"#,
                "credentials.ssh_private_key",
            ),
            (
                r#"{"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "  "}"#,
                "credentials.secret_access_key",
            ),
        ] {
            match AwsCredentials::from_secret(Some(&Secret::new(raw))) {
                Err(Error::InvalidConfig {
                    field: got,
                    message,
                }) => {
                    assert_eq!(got, field, "for {raw}: {message}");
                    assert!(!message.contains("hunter2"), "{message}");
                    assert!(!message.contains("12345678"), "{message}");
                }
                other => panic!("for {raw}: {other:?}"),
            }
        }
    }

    #[test]
    fn config_files_split_credentials_out() {
        let (config, secret) = split_config_file(
            r#"
region = "us-east-1"
availability_zones = ["us-east-1a"]
access_key_id = "AKIAIOSFODNN7EXAMPLE"
secret_access_key = "wJalrXUtnFEMI/K7MDENG"

[image_ids]
linux_x86_64 = "ami-04681a1dbd79675a5"
"#,
        )
        .unwrap();
        assert_eq!(config["region"], "us-east-1");
        assert!(config.get("secret_access_key").is_none());
        let secret = secret.unwrap();
        assert!(secret.expose().contains("wJalrXUtnFEMI"));

        let (_, none) = split_config_file(r#"{"region": "eu-west-1"}"#).unwrap();
        assert!(none.is_none());

        match split_config_file("region = ") {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "config"),
            other => panic!("{other:?}"),
        }
        match split_config_file("region = \"us-east-1\"\naccess_key_id = \"AKIAIOSFODNN7EXAMPLE\"")
        {
            Err(Error::InvalidConfig { field, .. }) => {
                assert_eq!(field, "credentials.secret_access_key")
            }
            other => panic!("{other:?}"),
        }
    }

    /// The example in the README, so the documentation stays true.
    const README_EXAMPLE: &str = r##"
region = "us-east-1"
availability_zones = ["us-east-1a", "us-east-1b"]
subnet_id = "subnet-0123456789abcdef0"
az_subnet_ids = { "us-east-1b" = "subnet-0fedcba9876543210" }
security_group_ids = ["sg-0123456789abcdef0"]
ssh_public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG7/PuKk21/JWvuzCILsUiT7OuXa9IfIqp4ar6UW/ssc nimbus"
ssh_user = "ec2-user"
mac_instance_type = "mac2-m2pro.metal"
linux_instance_type = "c7i.large"
linux_arm64_instance_type = "c7g.large"
orphan_grace_secs = 900
host_min_allocation_hours = 24
host_scrub_minutes = 50
host_reconcile_interval_secs = 600
user_data = """#!/bin/sh
echo 'hello from user data'
"""
access_key_id = "AKIAIOSFODNN7EXAMPLE"
secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

[image_ids]
linux_x86_64 = "ami-0a1b2c3d4e5f60718"
linux_arm64 = "ami-0b1c2d3e4f5a60718"
macos_arm64 = "ami-0c1d2e3f4a5b60718"
macos_x86_64 = "ami-0d1e2f3a4b5c60718"

[tags]
team = "ci"
"##;

    #[test]
    fn the_readme_example_is_valid() {
        let (config, secret) = split_config_file(README_EXAMPLE).unwrap();
        let config = AwsConfig::from_json(&config).unwrap();
        assert_eq!(
            config.subnet_for(Some("us-east-1b")),
            Some("subnet-0fedcba9876543210")
        );
        assert_eq!(
            config.image_ids.get(Os::Macos, Arch::Arm64),
            Some("ami-0c1d2e3f4a5b60718")
        );
        let credentials = AwsCredentials::from_secret(secret.as_ref())
            .unwrap()
            .unwrap();
        assert!(credentials.aws_keys().is_some());
    }

    #[test]
    fn subnets_follow_the_zone() {
        let mut config = AwsConfig::new("us-east-1");
        assert_eq!(config.subnet_for(Some("us-east-1a")), None);
        config.subnet_id = Some("subnet-default".into());
        config
            .az_subnet_ids
            .insert("us-east-1b".into(), "subnet-b".into());
        assert_eq!(
            config.subnet_for(Some("us-east-1a")),
            Some("subnet-default")
        );
        assert_eq!(config.subnet_for(Some("us-east-1b")), Some("subnet-b"));
        assert_eq!(config.subnet_for(None), Some("subnet-default"));
    }

    #[test]
    fn mac_types_and_arches() {
        for known in KNOWN_MAC_INSTANCE_TYPES {
            assert!(is_mac_instance_type(known));
        }
        assert_eq!(mac_arch("mac1.metal"), Arch::X86_64);
        assert_eq!(mac_arch("mac2-m2pro.metal"), Arch::Arm64);
        assert!(!is_mac_instance_type("m5.metal"));
    }
}
