//! IPMI over LAN: `ipmitool -I lanplus -C 3` as a child process, tested against OpenIPMI's
//! `ipmi_sim`.
//!
//! Every argument is passed as data (no shell); the password reaches ipmitool through its
//! environment (`-E` reads `IPMI_PASSWORD`), never through its command line, which any local
//! user could read in `/proc`. Each run has a deadline; the child is killed when it passes.
//! Cipher suite 3 (HMAC-SHA1 authentication, HMAC-SHA1-96 integrity, AES-CBC-128
//! confidentiality) is the one every IPMI 2.0 BMC supports. IPMI has no virtual media, so
//! [`Bmc::insert_media`] keeps its "unsupported" default.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nimbus_types::Secret;
use tokio::process::Command;

use crate::{Bmc, BmcConfig, BmcKind, BootTarget, Error, PowerAction, PowerState, Result};

pub struct Ipmi {
    host: String,
    port: u16,
    endpoint: String,
    username: String,
    password: Secret,
    timeout: Duration,
    program: PathBuf,
}

impl Ipmi {
    pub fn new(config: &BmcConfig) -> Result<Self> {
        config.validate("")?;
        let port = config.port.unwrap_or(623);
        Ok(Ipmi {
            endpoint: format!("{}:{port}", config.address),
            host: config.address.clone(),
            port,
            username: config.username.clone(),
            password: config.password.clone(),
            timeout: config.timeout(),
            program: PathBuf::from("ipmitool"),
        })
    }

    /// Runs `ipmitool … ARGS` and returns its stdout.
    async fn run(&self, args: &[&str]) -> Result<String> {
        // ipmitool's own retransmissions stay inside our deadline: one try per 2 s.
        let tries = (self.timeout.as_secs() / 2).clamp(1, 5).to_string();
        let mut command = Command::new(&self.program);
        command
            .args(["-I", "lanplus", "-C", "3", "-v", "-N", "2", "-R", &tries])
            .arg("-H")
            .arg(&self.host)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg(&self.username)
            .arg("-E")
            .args(args)
            .env("IPMI_PASSWORD", self.password.expose())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let what = args.join(" ");
        let child = command.spawn().map_err(|err| Error::Unreachable {
            bmc: self.endpoint.clone(),
            message: format!("cannot run {}: {err}", self.program.display()),
        })?;
        let output = tokio::time::timeout(
            self.timeout + Duration::from_secs(1),
            child.wait_with_output(),
        )
        .await
        .map_err(|_| Error::Unreachable {
            bmc: self.endpoint.clone(),
            message: format!("ipmitool {what} timed out after {:?}", self.timeout),
        })?
        .map_err(|err| Error::Unreachable {
            bmc: self.endpoint.clone(),
            message: format!("ipmitool {what}: {err}"),
        })?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(classify(&self.endpoint, &what, &stderr))
    }
}

/// Sorts a failed ipmitool run by what its verbose stderr says.
fn classify(endpoint: &str, what: &str, stderr: &str) -> Error {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Loading IANA"))
        .collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    let summary = lines
        .iter()
        .rev()
        .take(2)
        .rev()
        .copied()
        .collect::<Vec<_>>()
        .join(" / ");
    let message = format!("ipmitool {what}: {summary}");
    let bmc = endpoint.to_owned();
    if has("RAKP 2 HMAC is invalid")
        || has("unauthorized name")
        || has("Invalid user name")
        || has("Insufficient privilege")
    {
        Error::Unauthorized { bmc, message }
    } else if has("Get Auth Capabilities error")
        || has("Error issuing Get Channel")
        || has("Unable to establish")
        || has("No response")
        || has("timeout")
    {
        Error::Unreachable { bmc, message }
    } else {
        Error::Refused { bmc, message }
    }
}

#[async_trait]
impl Bmc for Ipmi {
    fn kind(&self) -> BmcKind {
        BmcKind::Ipmi
    }

    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn power_state(&self) -> Result<PowerState> {
        let out = self.run(&["chassis", "power", "status"]).await?;
        match out.trim() {
            "Chassis Power is on" => Ok(PowerState::On),
            "Chassis Power is off" => Ok(PowerState::Off),
            other => Err(Error::Malformed {
                bmc: self.endpoint.clone(),
                message: format!("chassis power status printed {other:?}"),
            }),
        }
    }

    async fn power(&self, action: PowerAction) -> Result<()> {
        let verb = match action {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            // A BMC may refuse a reset of a machine that is off: power it on instead.
            PowerAction::Reset => match self.power_state().await? {
                PowerState::Off => "on",
                _ => "reset",
            },
        };
        self.run(&["chassis", "power", verb]).await?;
        tracing::info!(bmc = %self.endpoint, verb, "ipmi power requested");
        Ok(())
    }

    async fn boot_once(&self, target: BootTarget) -> Result<()> {
        let device = match target {
            BootTarget::Disk => "disk",
            BootTarget::Pxe => "pxe",
            BootTarget::Cd => "cdrom",
        };
        // Without `options=persistent`, ipmitool sets the "next boot only" flag.
        self.run(&["chassis", "bootdev", device]).await?;
        tracing::info!(bmc = %self.endpoint, device, "ipmi boot device set once");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_sorted_into_errors() {
        let check = |stderr: &str, expect: fn(&Error) -> bool| {
            let err = classify("h:623", "chassis power status", stderr);
            assert!(expect(&err), "{stderr:?} gave {err:?}");
        };
        check(
            "Loading IANA PEN Registry...\n> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n",
            |e| matches!(e, Error::Unauthorized { .. }),
        );
        check(
            "RAKP 2 message indicates an error : unauthorized name\nError: Unable to establish IPMI v2 / RMCP+ session\n",
            |e| matches!(e, Error::Unauthorized { .. }),
        );
        check(
            "Get Auth Capabilities error\nError issuing Get Channel Authentication Capabilities request\nError: Unable to establish IPMI v2 / RMCP+ session\n",
            |e| matches!(e, Error::Unreachable { .. }),
        );
        check(
            "Invalid chassis power command: bogus\n",
            |e| matches!(e, Error::Refused { message, .. } if message.contains("bogus")),
        );
    }
}
