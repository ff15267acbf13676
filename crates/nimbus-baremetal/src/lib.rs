//! Bare metal: machines Nimbus owns rather than rents.
//!
//! [`Bmc`] is the one small trait every baseboard management controller driver implements:
//! read the power state, ask for a power change, set a one-time boot override, and insert or
//! eject virtual media where the BMC offers it. Two drivers: [`redfish::Redfish`] (HTTP + JSON
//! over reqwest) and [`ipmi::Ipmi`] (`ipmitool -I lanplus -C 3` child processes). Power changes
//! are asynchronous on real hardware, so [`Bmc::power`] only asks; [`power_and_wait`] asks and
//! polls [`Bmc::power_state`] until the machine gets there or a deadline passes.
//!
//! [`ops`] is the same calls as data, for a BMC that only `nimbusd agent` reaches.
//!
//! [`registry`] is the schema of the provider registry (one TOML file per hardware owner).
//!
//! This crate does no store access and keeps BMC passwords in [`Secret`]s: they are redacted
//! in `Debug`, never put on a command line (ipmitool reads them from its environment) and never
//! part of an error message.

pub mod inventory;
pub mod ipmi;
pub mod ops;
pub mod redfish;
pub mod registry;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use nimbus_types::Secret;
use serde::{Deserialize, Serialize};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The BMC refused the credentials (HTTP 401/403, IPMI RAKP failure).
    #[error("bmc {bmc}: unauthorized: {message}")]
    Unauthorized { bmc: String, message: String },
    /// The BMC did not answer in time, or could not be reached. Worth retrying.
    #[error("bmc {bmc}: {message}")]
    Unreachable { bmc: String, message: String },
    /// A power change was asked for but the machine did not reach the state before the deadline.
    #[error("bmc {bmc}: power is still {actual} after {waited:?} (wanted {wanted})")]
    PowerTimeout {
        bmc: String,
        wanted: PowerState,
        actual: PowerState,
        waited: Duration,
    },
    /// The BMC answered something this driver cannot read (malformed JSON, an unexpected shape).
    #[error("bmc {bmc}: unexpected answer: {message}")]
    Malformed { bmc: String, message: String },
    /// The BMC does not offer the operation (a reset type not in its allowed values, virtual
    /// media over IPMI).
    #[error("bmc {bmc}: not supported: {message}")]
    Unsupported { bmc: String, message: String },
    /// The BMC refused the request (a 4xx/5xx other than auth, a non-zero ipmitool exit).
    #[error("bmc {bmc}: request refused: {message}")]
    Refused { bmc: String, message: String },
    /// The driver's settings are invalid; `field` names the setting.
    #[error("invalid bmc config: {field}: {message}")]
    InvalidConfig { field: String, message: String },
}

impl Error {
    /// Whether trying again later can help (timeouts, an unreachable BMC, a slow power change).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::PowerTimeout { .. })
    }
}

/// Which protocol drives a BMC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BmcKind {
    Redfish,
    Ipmi,
}

impl std::fmt::Display for BmcKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BmcKind::Redfish => "redfish",
            BmcKind::Ipmi => "ipmi",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    On,
    Off,
    /// Redfish's `PoweringOn`/`PoweringOff` and anything else in between.
    Transitioning,
}

impl std::fmt::Display for PowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::Transitioning => "transitioning",
        })
    }
}

/// A power change to ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    On,
    /// Hard off: CI machines are wiped or reinstalled afterwards, so nothing waits for the OS.
    Off,
    /// Hard reset; the machine comes back on.
    Reset,
}

impl PowerAction {
    /// The state the machine is in once the action has landed.
    pub fn target(self) -> PowerState {
        match self {
            PowerAction::On | PowerAction::Reset => PowerState::On,
            PowerAction::Off => PowerState::Off,
        }
    }
}

/// Where the machine boots from next time (once; later boots use the configured order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootTarget {
    Disk,
    Pxe,
    /// The inserted virtual media (Redfish `Cd`).
    Cd,
}

impl std::fmt::Display for BootTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BootTarget::Disk => "disk",
            BootTarget::Pxe => "pxe",
            BootTarget::Cd => "cd",
        })
    }
}

/// One BMC, as the control plane or the agent drives it.
#[async_trait]
pub trait Bmc: Send + Sync {
    fn kind(&self) -> BmcKind;

    /// Where the BMC lives (`https://10.0.0.9`, `10.0.0.9:623`), for messages; never secret.
    fn endpoint(&self) -> &str;

    async fn power_state(&self) -> Result<PowerState>;

    /// Asks for a power change and returns once the BMC accepted it; the change itself lands
    /// later (use [`power_and_wait`]). Asking for the state the machine is already in is fine.
    async fn power(&self, action: PowerAction) -> Result<()>;

    /// Boots from `target` on the next boot only.
    async fn boot_once(&self, target: BootTarget) -> Result<()>;

    /// Inserts the image at `image_url` (the BMC downloads it) as virtual CD.
    async fn insert_media(&self, image_url: &str) -> Result<()> {
        let _ = image_url;
        Err(Error::Unsupported {
            bmc: self.endpoint().to_owned(),
            message: format!("{} offers no virtual media", self.kind()),
        })
    }

    /// Ejects the virtual CD; ejecting an empty drive is fine.
    async fn eject_media(&self) -> Result<()> {
        Err(Error::Unsupported {
            bmc: self.endpoint().to_owned(),
            message: format!("{} offers no virtual media", self.kind()),
        })
    }
}

/// Asks for `action`, then polls until the machine is in the action's target state or
/// `deadline` has passed. A reset first waits for the BMC to accept it, then for the machine to
/// be on again (a BMC may report off in between).
pub async fn power_and_wait(
    bmc: &dyn Bmc,
    action: PowerAction,
    deadline: Duration,
    poll: Duration,
) -> Result<()> {
    let started = Instant::now();
    bmc.power(action).await?;
    let wanted = action.target();
    loop {
        let actual = bmc.power_state().await?;
        if actual == wanted {
            tracing::debug!(bmc = bmc.endpoint(), %wanted, waited = ?started.elapsed(), "power state reached");
            return Ok(());
        }
        if started.elapsed() >= deadline {
            return Err(Error::PowerTimeout {
                bmc: bmc.endpoint().to_owned(),
                wanted,
                actual,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(poll.min(deadline.saturating_sub(started.elapsed()))).await;
    }
}

/// How to reach and log in to one BMC. The password is a [`Secret`]: it comes from sealed
/// provider credentials and is redacted in `Debug`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BmcConfig {
    pub kind: BmcKind,
    /// Redfish: the service root's base URL (`https://10.0.0.9`); IPMI: a host name or address.
    pub address: String,
    /// IPMI's UDP port (623 when absent). Redfish takes the port from the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub username: String,
    pub password: Secret,
    /// Redfish: which member of `/redfish/v1/Systems` (its `Id`); absent means the only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_id: Option<String>,
    /// Seconds one request or ipmitool run may take (10 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Redfish over HTTPS: accept a self-signed certificate (BMCs ship with one). Off by default.
    #[serde(default)]
    pub insecure_tls: bool,
}

impl BmcConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.unwrap_or(10))
    }

    /// Checks the settings; errors name the field (under `prefix`, e.g. `hosts[2].bmc`).
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let field = |name: &str| {
            if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}.{name}")
            }
        };
        let invalid = |name: &str, message: &str| Error::InvalidConfig {
            field: field(name),
            message: message.to_owned(),
        };
        match self.kind {
            BmcKind::Redfish => {
                let url = reqwest::Url::parse(&self.address)
                    .map_err(|err| invalid("address", &format!("not a URL: {err}")))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(invalid("address", "must be an http(s) URL with a host"));
                }
                if self.port.is_some() {
                    return Err(invalid(
                        "port",
                        "redfish takes the port from the address URL",
                    ));
                }
            }
            BmcKind::Ipmi => {
                let ok = !self.address.is_empty()
                    && self.address.len() <= 253
                    && !self.address.starts_with('-')
                    && self
                        .address
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
                if !ok {
                    return Err(invalid(
                        "address",
                        "must be a host name or IP address (letters, digits, '.', '-', ':')",
                    ));
                }
                if self.port == Some(0) {
                    return Err(invalid("port", "must be 1-65535"));
                }
                if self.system_id.is_some() {
                    return Err(invalid(
                        "system_id",
                        "only redfish has systems to choose from",
                    ));
                }
                // IPMI 2.0 user names are at most 16 bytes, passwords at most 20.
                if self.password.expose().len() > 20 {
                    return Err(invalid("password", "IPMI passwords are at most 20 bytes"));
                }
            }
        }
        if self.username.is_empty()
            || self.username.len() > 64
            || self.username.contains(['\0', '\n', ':'])
        {
            return Err(invalid(
                "username",
                "must be 1-64 characters without ':' or newlines",
            ));
        }
        if self.password.is_empty() || self.password.expose().contains('\0') {
            return Err(invalid("password", "must not be empty"));
        }
        if matches!(self.timeout_secs, Some(0) | Some(301..)) {
            return Err(invalid("timeout_secs", "must be 1-300"));
        }
        Ok(())
    }
}

/// The driver for `config` (validated first).
pub fn connect(config: &BmcConfig) -> Result<Box<dyn Bmc>> {
    config.validate("")?;
    Ok(match config.kind {
        BmcKind::Redfish => Box::new(redfish::Redfish::new(config)?),
        BmcKind::Ipmi => Box::new(ipmi::Ipmi::new(config)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: BmcKind, address: &str) -> BmcConfig {
        BmcConfig {
            kind,
            address: address.into(),
            port: None,
            username: "admin".into(),
            password: Secret::new("hunter2"),
            system_id: None,
            timeout_secs: None,
            insecure_tls: false,
        }
    }

    fn check(config: BmcConfig, field: &str) {
        match config.validate("bmc") {
            Err(Error::InvalidConfig {
                field: got,
                message,
            }) => {
                assert_eq!(got, field, "{message}");
                assert!(!message.contains("hunter2"));
            }
            other => panic!("{config:?} must be rejected at {field}: {other:?}"),
        }
    }

    #[test]
    fn config_is_validated_field_by_field() {
        config(BmcKind::Redfish, "https://10.0.0.9")
            .validate("")
            .unwrap();
        config(BmcKind::Ipmi, "10.0.0.9").validate("").unwrap();
        check(config(BmcKind::Redfish, "10.0.0.9"), "bmc.address");
        check(config(BmcKind::Redfish, "ftp://10.0.0.9"), "bmc.address");
        check(config(BmcKind::Ipmi, "-oProxy"), "bmc.address");
        check(config(BmcKind::Ipmi, "a b"), "bmc.address");
        check(
            BmcConfig {
                port: Some(0),
                ..config(BmcKind::Ipmi, "h")
            },
            "bmc.port",
        );
        check(
            BmcConfig {
                port: Some(443),
                ..config(BmcKind::Redfish, "https://h")
            },
            "bmc.port",
        );
        check(
            BmcConfig {
                username: String::new(),
                ..config(BmcKind::Ipmi, "h")
            },
            "bmc.username",
        );
        check(
            BmcConfig {
                password: Secret::new(""),
                ..config(BmcKind::Ipmi, "h")
            },
            "bmc.password",
        );
        check(
            BmcConfig {
                password: Secret::new("x".repeat(21)),
                ..config(BmcKind::Ipmi, "h")
            },
            "bmc.password",
        );
        check(
            BmcConfig {
                timeout_secs: Some(0),
                ..config(BmcKind::Ipmi, "h")
            },
            "bmc.timeout_secs",
        );
        check(
            BmcConfig {
                system_id: Some("1".into()),
                ..config(BmcKind::Ipmi, "h")
            },
            "bmc.system_id",
        );
    }

    #[test]
    fn the_password_never_shows_in_debug() {
        let config = config(BmcKind::Ipmi, "h");
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
