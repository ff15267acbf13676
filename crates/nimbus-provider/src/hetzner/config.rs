//! The Hetzner provider's settings (`config` of the provider record) and credentials
//! (`credentials`, sealed by the store), validated before anything talks to the API.
//!
//! Every error names its field (`config.locations[1]`); credential errors never repeat a value.

use std::collections::BTreeMap;
use std::fmt;

use nimbus_types::{Arch, Secret};
use serde::{Deserialize, Serialize};

use crate::Error;

pub const DEFAULT_ENDPOINT: &str = "https://api.hetzner.cloud/v1";
pub const DEFAULT_X86_64_SERVER_TYPE: &str = "cx22";
pub const DEFAULT_ARM64_SERVER_TYPE: &str = "cax11";
pub const DEFAULT_IMAGE: &str = "ubuntu-24.04";
pub const DEFAULT_LOCATIONS: &[&str] = &["fsn1", "nbg1", "hel1"];
/// Hetzner rejects user data above 32 KiB.
pub const MAX_USER_DATA: usize = 32 * 1024;

/// Label keys Nimbus puts on servers and keys; operators' `labels` may not use them.
pub const RESERVED_LABEL_PREFIXES: &[&str] = &["nimbus-", "managed-by"];

/// Settings of a Hetzner Cloud provider. Nothing here is secret: the API token and the SSH
/// private key live in [`HetznerCredentials`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HetznerConfig {
    /// The API base URL (`https://api.hetzner.cloud/v1`); tests point it at Prism.
    #[serde(default = "default_endpoint")]
    pub endpoint_url: String,
    /// Tried in order: a server type sold out in one location (`resource_unavailable`) is
    /// created in the next.
    #[serde(default = "default_locations")]
    pub locations: Vec<String>,
    /// Server type for x86_64 machines (default `cx22`); a machine spec's `instance_type` wins.
    #[serde(default = "default_x86_64_type")]
    pub server_type: String,
    /// Server type for arm64 machines (default `cax11`).
    #[serde(default = "default_arm64_type")]
    pub server_type_arm64: String,
    /// Image name or id (default `ubuntu-24.04`; Hetzner picks the architecture's build).
    #[serde(default = "default_image")]
    pub image: String,
    /// OpenSSH public key uploaded once per tenant as `nimbus-<tenant>-<key hash>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<String>,
    #[serde(default = "default_ssh_user")]
    pub ssh_user: String,
    #[serde(default = "default_ssh_port")]
    pub ssh_port: u16,
    /// Extra labels on every server. `nimbus-*` and `managed-by` are reserved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Cloud-init user data for every server (at most 32 KiB with the machine's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// How long a create or delete action may take before the call gives up (retryable).
    #[serde(default = "default_action_timeout_secs")]
    pub action_timeout_secs: u64,
    /// How often running actions are polled.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.to_owned()
}
fn default_locations() -> Vec<String> {
    DEFAULT_LOCATIONS.iter().map(|l| (*l).to_owned()).collect()
}
fn default_x86_64_type() -> String {
    DEFAULT_X86_64_SERVER_TYPE.to_owned()
}
fn default_arm64_type() -> String {
    DEFAULT_ARM64_SERVER_TYPE.to_owned()
}
fn default_image() -> String {
    DEFAULT_IMAGE.to_owned()
}
fn default_ssh_user() -> String {
    "root".to_owned()
}
fn default_ssh_port() -> u16 {
    22
}
fn default_action_timeout_secs() -> u64 {
    600
}
fn default_poll_interval_ms() -> u64 {
    1000
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field: field.into(),
        message: message.into(),
    }
}

impl Default for HetznerConfig {
    fn default() -> Self {
        HetznerConfig {
            endpoint_url: default_endpoint(),
            locations: default_locations(),
            server_type: default_x86_64_type(),
            server_type_arm64: default_arm64_type(),
            image: default_image(),
            ssh_public_key: None,
            ssh_user: default_ssh_user(),
            ssh_port: default_ssh_port(),
            labels: BTreeMap::new(),
            user_data: None,
            action_timeout_secs: default_action_timeout_secs(),
            poll_interval_ms: default_poll_interval_ms(),
        }
    }
}

/// Keys that belong in the sealed credentials, never in the plain config.
const CREDENTIAL_KEYS: &[&str] = &["api_token", "token", "ssh_private_key"];

impl HetznerConfig {
    pub fn from_json(value: &serde_json::Value) -> Result<Self, Error> {
        if let Some(object) = value.as_object() {
            for key in CREDENTIAL_KEYS {
                if object.contains_key(*key) {
                    return Err(invalid(
                        format!("config.{key}"),
                        "secrets belong in the provider's credentials, not its config",
                    ));
                }
            }
        }
        let config: HetznerConfig = if value.is_null() {
            HetznerConfig::default()
        } else {
            serde_json::from_value(value.clone()).map_err(|err| {
                let message = err.to_string();
                let field = message
                    .split('`')
                    .nth(1)
                    .map_or_else(|| "config".to_owned(), |f| format!("config.{f}"));
                invalid(field, message)
            })?
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), Error> {
        validate_endpoint(&self.endpoint_url)?;
        if self.locations.is_empty() {
            return Err(invalid(
                "config.locations",
                "name at least one location, e.g. [\"fsn1\", \"nbg1\"]",
            ));
        }
        for (idx, location) in self.locations.iter().enumerate() {
            if !is_name(location) {
                return Err(invalid(
                    format!("config.locations[{idx}]"),
                    "a location is lowercase letters and digits, e.g. fsn1",
                ));
            }
        }
        for (field, value) in [
            ("config.server_type", &self.server_type),
            ("config.server_type_arm64", &self.server_type_arm64),
        ] {
            if !is_name(value) {
                return Err(invalid(
                    field,
                    "a server type is lowercase letters and digits, e.g. cx22",
                ));
            }
        }
        if self.image.trim().is_empty() || self.image.len() > 128 {
            return Err(invalid(
                "config.image",
                "name an image, e.g. ubuntu-24.04, or a snapshot id",
            ));
        }
        if let Some(key) = &self.ssh_public_key {
            validate_public_key(key)?;
        }
        if self.ssh_user.is_empty() || self.ssh_user.contains(char::is_whitespace) {
            return Err(invalid("config.ssh_user", "must be a user name"));
        }
        if self.ssh_port == 0 {
            return Err(invalid("config.ssh_port", "must be 1-65535"));
        }
        for (key, value) in &self.labels {
            let field = format!("config.labels.{key}");
            if RESERVED_LABEL_PREFIXES.iter().any(|p| key.starts_with(p)) {
                return Err(invalid(
                    field,
                    "nimbus-* and managed-by labels are Nimbus's own",
                ));
            }
            if !is_label_key(key) {
                return Err(invalid(
                    field,
                    "a label key is up to 63 letters, digits, '-', '_' or '.' (optionally prefixed by a DNS name and '/')",
                ));
            }
            if !is_label_value(value) {
                return Err(invalid(
                    field,
                    "a label value is up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
                ));
            }
        }
        if let Some(data) = &self.user_data
            && data.len() > MAX_USER_DATA
        {
            return Err(invalid("config.user_data", "must be at most 32 KiB"));
        }
        if self.action_timeout_secs == 0 {
            return Err(invalid("config.action_timeout_secs", "must be positive"));
        }
        if self.poll_interval_ms == 0 || self.poll_interval_ms > 60_000 {
            return Err(invalid("config.poll_interval_ms", "must be 1-60000"));
        }
        Ok(())
    }

    /// The server type for a machine: the spec's `instance_type`, else the architecture's
    /// default.
    pub fn server_type_for(&self, arch: Arch, instance_type: Option<&str>) -> String {
        match (instance_type, arch) {
            (Some(t), _) => t.to_owned(),
            (None, Arch::X86_64) => self.server_type.clone(),
            (None, Arch::Arm64) => self.server_type_arm64.clone(),
        }
    }
}

/// `{"api_token": "…", "ssh_private_key": "…"}`. The API token needs Read & Write permission
/// in the Hetzner project.
#[derive(Clone)]
pub struct HetznerCredentials {
    pub api_token: Secret,
    pub ssh_private_key: Option<Secret>,
}

impl fmt::Debug for HetznerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HetznerCredentials")
            .field("api_token", &self.api_token)
            .field("ssh_private_key", &self.ssh_private_key)
            .finish()
    }
}

impl HetznerCredentials {
    pub fn from_secret(secret: Option<&Secret>) -> Result<Self, Error> {
        let Some(secret) = secret else {
            return Err(invalid(
                "credentials",
                "a hetzner provider needs credentials {\"api_token\": …} (a Read & Write API token of the project)",
            ));
        };
        let value: serde_json::Value = serde_json::from_str(secret.expose())
            .map_err(|_| invalid("credentials", "must be a JSON object"))?;
        let Some(object) = value.as_object() else {
            return Err(invalid("credentials", "must be a JSON object"));
        };
        for key in object.keys() {
            if key != "api_token" && key != "ssh_private_key" {
                return Err(invalid(
                    format!("credentials.{key}"),
                    "unknown field; expected api_token, ssh_private_key",
                ));
            }
        }
        let text = |key: &str| -> Result<Option<String>, Error> {
            match object.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(invalid(format!("credentials.{key}"), "must be a string")),
            }
        };
        let Some(api_token) = text("api_token")? else {
            return Err(invalid("credentials.api_token", "is required"));
        };
        // Hetzner tokens are 64 alphanumeric characters; anything else cannot be sent as a
        // header safely, and checking here keeps the value out of a later error message.
        if api_token.is_empty()
            || api_token.len() > 256
            || !api_token.chars().all(|c| c.is_ascii_graphic())
        {
            return Err(invalid(
                "credentials.api_token",
                "must be the API token as Hetzner shows it (printable ASCII, no spaces)",
            ));
        }
        let ssh_private_key = text("ssh_private_key")?;
        if let Some(key) = &ssh_private_key
            && !key.contains("-----BEGIN")
        {
            return Err(invalid(
                "credentials.ssh_private_key",
                "must be a PEM or OpenSSH private key",
            ));
        }
        Ok(HetznerCredentials {
            api_token: Secret::new(api_token),
            ssh_private_key: ssh_private_key.map(Secret::new),
        })
    }
}

fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !text.starts_with('-')
}

fn is_label_value(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.is_empty()
        || (text.len() <= 63
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
}

fn is_label_key(key: &str) -> bool {
    let name = match key.rsplit_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty()
                || prefix.len() > 253
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
            {
                return false;
            }
            name
        }
        None => key,
    };
    !name.is_empty() && is_label_value(name)
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
            "must be an http:// or https:// URL without credentials, e.g. https://api.hetzner.cloud/v1",
        ))
    }
}

fn validate_public_key(key: &str) -> Result<(), Error> {
    let mut parts = key.split_whitespace();
    let kind = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("");
    let known = kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-");
    if !known || body.len() < 16 {
        return Err(invalid(
            "config.ssh_public_key",
            "must be an OpenSSH public key line, e.g. ssh-ed25519 AAAA… comment",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(config: serde_json::Value, expect: Result<(), &str>) {
        match (HetznerConfig::from_json(&config), expect) {
            (Ok(_), Ok(())) => {}
            (Err(Error::InvalidConfig { field, .. }), Err(want)) => {
                assert_eq!(field, want, "{config}")
            }
            (got, want) => panic!("{config}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn config_fields_are_validated_by_name() {
        check(json!(null), Ok(()));
        check(json!({}), Ok(()));
        check(
            json!({"locations": ["nbg1", "fsn1"], "server_type": "cpx31", "labels": {"team": "ci", "example.com/x": ""}}),
            Ok(()),
        );
        check(json!({"locations": []}), Err("config.locations"));
        check(
            json!({"locations": ["fsn1", "Nbg 1"]}),
            Err("config.locations[1]"),
        );
        check(json!({"server_type": "CX22"}), Err("config.server_type"));
        check(
            json!({"endpoint_url": "ftp://x"}),
            Err("config.endpoint_url"),
        );
        check(
            json!({"endpoint_url": "https://user:pw@host/v1"}),
            Err("config.endpoint_url"),
        );
        check(
            json!({"labels": {"nimbus-tenant": "x"}}),
            Err("config.labels.nimbus-tenant"),
        );
        check(json!({"labels": {"team": "-x"}}), Err("config.labels.team"));
        check(
            json!({"ssh_public_key": "hello"}),
            Err("config.ssh_public_key"),
        );
        check(json!({"ssh_port": 0}), Err("config.ssh_port"));
        check(json!({"api_token": "x"}), Err("config.api_token"));
        check(json!({"colour": "blue"}), Err("config.colour"));
        check(
            json!({"user_data": "x".repeat(MAX_USER_DATA + 1)}),
            Err("config.user_data"),
        );
    }

    #[test]
    fn credentials_parse_without_echoing_values() {
        let ok = HetznerCredentials::from_secret(Some(&Secret::new(
            r#"{"api_token": "abcDEF123", "ssh_private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nx"}"#,
        )))
        .unwrap();
        assert_eq!(ok.api_token.expose(), "abcDEF123");
        assert!(!format!("{ok:?}").contains("abcDEF123"));
        for (raw, field) in [
            ("{}", "credentials.api_token"),
            (
                r#"{"api_token": "has space hunter2"}"#,
                "credentials.api_token",
            ),
            (r#"{"api_token": 5}"#, "credentials.api_token"),
            (
                r#"{"api_token": "x", "password": "hunter2"}"#,
                "credentials.password",
            ),
            (
                r#"{"api_token": "x", "ssh_private_key": "hunter2"}"#,
                "credentials.ssh_private_key",
            ),
            ("hunter2", "credentials"),
        ] {
            match HetznerCredentials::from_secret(Some(&Secret::new(raw))) {
                Err(err @ Error::InvalidConfig { .. }) => {
                    let Error::InvalidConfig { field: got, .. } = &err else {
                        unreachable!()
                    };
                    assert_eq!(got, field, "{raw}");
                    assert!(!err.to_string().contains("hunter2"), "{err}");
                }
                other => panic!("{raw}: {other:?}"),
            }
        }
        assert!(HetznerCredentials::from_secret(None).is_err());
    }
}
