//! The `baremetal` provider: machines Nimbus owns, each with a BMC (Redfish or IPMI) and an SSH
//! login once booted. A free host is powered off; provisioning powers a matching one on (with a
//! one-time boot override), waits for SSH, and claims it the way the `ssh` provider does;
//! terminating wipes it, drops the claim and powers it off.
//!
//! Configuration (`config` of the provider record): the `ssh` provider's host entries, each
//! with a `bmc`, plus bare-metal settings:
//!
//! ```json
//! {"hosts": [{"address": "10.0.1.5", "user": "ci", "os": "linux", "arch": "x86_64",
//!             "bmc": {"kind": "redfish", "address": "https://10.0.0.5", "username": "nimbus"}}],
//!  "boot": "disk", "power_timeout_secs": 120, "boot_timeout_secs": 600,
//!  "wipe_script": "rm -rf /home/ci/work", "after_terminate": "power_off"}
//! ```
//!
//! Credentials (sealed): the SSH keys as for the `ssh` provider, and the BMC passwords by host
//! (`address:port` of the SSH login): `{"keys": {…}, "default": "…", "bmc_passwords":
//! {"10.0.1.5:22": "…"}, "bmc_default_password": "…"}`.
//!
//! A BMC that only an agent on the rack reaches (a management network the control plane cannot
//! see) is named through that agent instead: `"bmc": {"agent": "rack-a", "name": "node-5"}`.
//! The agent (`nimbusd agent run`, enrolled for the same tenant) holds that BMC's address and
//! password in its own configuration; every power and boot call becomes an operation the agent
//! pulls, runs with its driver and answers ([`AgentRelay`]). While the agent is lost (no
//! heartbeat within the control plane's window) its hosts answer no power state, so provision
//! passes them over and nothing is claimed on them. Direct and agent-routed hosts mix freely.
//!
//! The claim lives on the host's disk (`<state_dir>/claim`), so the fleet is recovered from the
//! hosts after any loss of local state: a host that is off holds no machine (terminate drops
//! the claim before powering off); a host that is on is asked over SSH, and a listing fails
//! rather than returning a partial view when one cannot be asked. A host found on and unclaimed
//! (a terminate that kept it on, or a crash before the power-off) is claimed as it is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nimbus_baremetal::ops::{Op, Outcome};
use nimbus_baremetal::{Bmc, BmcConfig, BmcKind, BootTarget, PowerAction, PowerState};
use nimbus_setup::exec::{Command, Exec};
use nimbus_types::{
    CanTerminate, Machine, MachineId, ProviderConfig, ProviderId, ProviderType, Secret, TenantId,
};
use serde::{Deserialize, Serialize};

use crate::ssh::{SshConfig, SshPool, SshProvider};
use crate::{Error, Provider, ProviderMachine, ProvisionRequest, Result};

/// A host's BMC as configured; the password is in the credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostBmc {
    pub kind: BmcKind,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub insecure_tls: bool,
}

/// A host's BMC reached through an enrolled agent (`{"agent": …, "name": …}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentBmcRef {
    /// The agent's name (as enrolled, in the provider's tenant).
    pub agent: String,
    /// The BMC's name in the agent's configuration.
    pub name: String,
    /// What the agent drives it with; only shown in messages (redfish when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<BmcKind>,
}

/// How the control plane reaches one host's BMC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BmcRoute {
    Direct(BmcConfig),
    Agent(AgentBmcRef),
}

/// Carries BMC operations to enrolled agents and brings their outcomes back (implemented by
/// `nimbusd` over its store; the provider never sees the store).
#[async_trait]
pub trait AgentRelay: Send + Sync {
    /// Runs `op` on the BMC `bmc` of the tenant's agent `agent` and waits for the agent's
    /// answer. A lost or unknown agent, or one that does not answer in time, is an error
    /// (`Unreachable` when waiting may help, `Refused` when it cannot).
    async fn run(
        &self,
        tenant_id: TenantId,
        agent: &str,
        bmc: &str,
        op: &Op,
    ) -> nimbus_baremetal::Result<Outcome>;
}

/// A BMC behind an agent: each call is one operation through the relay.
struct AgentBmc {
    relay: Arc<dyn AgentRelay>,
    tenant_id: TenantId,
    target: AgentBmcRef,
    endpoint: String,
}

impl AgentBmc {
    async fn call(&self, op: Op) -> nimbus_baremetal::Result<Option<PowerState>> {
        self.relay
            .run(self.tenant_id, &self.target.agent, &self.target.name, &op)
            .await?
            .into_result(&self.endpoint)
    }
}

#[async_trait]
impl Bmc for AgentBmc {
    fn kind(&self) -> BmcKind {
        self.target.kind.unwrap_or(BmcKind::Redfish)
    }

    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn power_state(&self) -> nimbus_baremetal::Result<PowerState> {
        self.call(Op::PowerState)
            .await?
            .ok_or_else(|| nimbus_baremetal::Error::Malformed {
                bmc: self.endpoint.clone(),
                message: "the agent answered without a power state".into(),
            })
    }

    async fn power(&self, action: PowerAction) -> nimbus_baremetal::Result<()> {
        self.call(Op::Power { action }).await.map(drop)
    }

    async fn boot_once(&self, target: BootTarget) -> nimbus_baremetal::Result<()> {
        self.call(Op::BootOnce { target }).await.map(drop)
    }

    async fn insert_media(&self, image_url: &str) -> nimbus_baremetal::Result<()> {
        self.call(Op::InsertMedia {
            image_url: image_url.to_owned(),
        })
        .await
        .map(drop)
    }

    async fn eject_media(&self) -> nimbus_baremetal::Result<()> {
        self.call(Op::EjectMedia).await.map(drop)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterTerminate {
    /// Power the host off: it is free and cold.
    #[default]
    PowerOff,
    /// Leave it on: free and warm, claimed as it is by the next provision.
    KeepOn,
}

/// The bare-metal part of the provider's `config` (the rest is the `ssh` provider's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaremetalSettings {
    #[serde(default = "default_boot")]
    pub boot: BootTarget,
    #[serde(default = "default_power_timeout")]
    pub power_timeout_secs: u64,
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_secs: u64,
    /// Run on the host (as the login user, `sh -c`, with `$1` = the state directory and `$2` =
    /// the machine id) before the claim is dropped; a failure keeps the claim and the terminate
    /// is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wipe_script: Option<String>,
    #[serde(default)]
    pub after_terminate: AfterTerminate,
    /// The provider registry entry this rack is offered under (checked against the registry
    /// `nimbusd` syncs when the provider is created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_entry: Option<String>,
}

fn default_boot() -> BootTarget {
    BootTarget::Disk
}
fn default_power_timeout() -> u64 {
    120
}
fn default_boot_timeout() -> u64 {
    600
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    #[serde(default)]
    keys: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    default: Option<Secret>,
    #[serde(default)]
    bmc_passwords: std::collections::BTreeMap<String, Secret>,
    #[serde(default)]
    bmc_default_password: Option<Secret>,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field: field.into(),
        message: message.into(),
    }
}

/// A validated record: the `ssh` provider's record for the hosts, the BMCs and the settings.
pub struct BaremetalConfig {
    pub ssh: ProviderConfig,
    pub bmcs: Vec<BmcRoute>,
    pub settings: BaremetalSettings,
}

impl BaremetalConfig {
    pub fn from_provider(provider: &ProviderConfig) -> Result<Self> {
        let object = provider
            .config
            .as_object()
            .ok_or_else(|| invalid("config", "must be a JSON object"))?;
        let mut ssh_config = serde_json::Map::new();
        let mut settings = serde_json::Map::new();
        for (key, value) in object {
            match key.as_str() {
                "hosts" | "connect_timeout_secs" => {
                    ssh_config.insert(key.clone(), value.clone());
                }
                _ => {
                    settings.insert(key.clone(), value.clone());
                }
            }
        }
        let settings: BaremetalSettings =
            serde_json::from_value(serde_json::Value::Object(settings))
                .map_err(|err| invalid("config", err.to_string()))?;
        if !(1..=3600).contains(&settings.power_timeout_secs) {
            return Err(invalid("config.power_timeout_secs", "must be 1-3600"));
        }
        if !(1..=7200).contains(&settings.boot_timeout_secs) {
            return Err(invalid("config.boot_timeout_secs", "must be 1-7200"));
        }
        if let Some(script) = &settings.wipe_script
            && (script.trim().is_empty() || script.len() > 64 * 1024)
        {
            return Err(invalid(
                "config.wipe_script",
                "must be a non-empty shell script of at most 64 KiB",
            ));
        }
        // Each host: its `bmc` out, the rest is an ssh host entry.
        let hosts = ssh_config
            .get_mut("hosts")
            .and_then(|h| h.as_array_mut())
            .ok_or_else(|| invalid("config.hosts", "a list of hosts is required"))?;
        let mut host_bmcs = Vec::new();
        for (idx, host) in hosts.iter_mut().enumerate() {
            let bmc = host
                .as_object_mut()
                .and_then(|h| h.remove("bmc"))
                .ok_or_else(|| {
                    invalid(format!("config.hosts[{idx}].bmc"), "every host needs a bmc")
                })?;
            let field = format!("config.hosts[{idx}].bmc");
            let route = if bmc.get("agent").is_some() {
                let target: AgentBmcRef = serde_json::from_value(bmc)
                    .map_err(|err| invalid(field.clone(), err.to_string()))?;
                for (key, value) in [("agent", &target.agent), ("name", &target.name)] {
                    if value.is_empty()
                        || value.len() > 128
                        || value.chars().any(|c| c.is_control() || c == '/')
                    {
                        return Err(invalid(
                            format!("{field}.{key}"),
                            "must be 1-128 characters without '/' or control characters",
                        ));
                    }
                }
                Err(target)
            } else {
                let bmc: HostBmc =
                    serde_json::from_value(bmc).map_err(|err| invalid(field, err.to_string()))?;
                Ok(bmc)
            };
            host_bmcs.push(route);
        }
        let credentials = provider.credentials.as_ref().ok_or_else(|| {
            invalid(
                "credentials",
                "the baremetal provider needs SSH keys and BMC passwords",
            )
        })?;
        let credentials: Credentials = serde_json::from_str(credentials.expose()).map_err(|_| {
            invalid(
                "credentials",
                "must be JSON of the form {\"keys\": {\"<address>:<port>\": \"<private key>\"}, \"bmc_passwords\": {\"<address>:<port>\": \"<password>\"}}",
            )
        })?;
        let mut ssh_credentials = serde_json::Map::new();
        ssh_credentials.insert("keys".into(), serde_json::Value::Object(credentials.keys));
        if let Some(default) = &credentials.default {
            ssh_credentials.insert("default".into(), default.expose().into());
        }
        let ssh = ProviderConfig {
            config: serde_json::Value::Object(ssh_config),
            credentials: Some(Secret::new(
                serde_json::Value::Object(ssh_credentials).to_string(),
            )),
            ..provider.clone()
        };
        let (parsed, _) = SshConfig::from_provider(&ssh)?;
        let mut bmcs = Vec::new();
        for (idx, (host, bmc)) in parsed.hosts.iter().zip(host_bmcs).enumerate() {
            let bmc = match bmc {
                Ok(bmc) => bmc,
                Err(target) => {
                    bmcs.push(BmcRoute::Agent(target));
                    continue;
                }
            };
            let password = credentials
                .bmc_passwords
                .get(&host.host_id())
                .or(credentials.bmc_default_password.as_ref())
                .ok_or_else(|| {
                    invalid(
                        format!("credentials.bmc_passwords[{:?}]", host.host_id()),
                        format!(
                            "no BMC password for host {} (config.hosts[{idx}])",
                            host.host_id()
                        ),
                    )
                })?;
            let config = BmcConfig {
                kind: bmc.kind,
                address: bmc.address,
                port: bmc.port,
                username: bmc.username,
                password: password.clone(),
                system_id: bmc.system_id,
                timeout_secs: bmc.timeout_secs,
                insecure_tls: bmc.insecure_tls,
            };
            config
                .validate(&format!("config.hosts[{idx}].bmc"))
                .map_err(|err| match err {
                    // The password comes from the credentials: name it there.
                    nimbus_baremetal::Error::InvalidConfig { field, message }
                        if field.ends_with(".password") =>
                    {
                        invalid(
                            format!("credentials.bmc_passwords[{:?}]", host.host_id()),
                            message,
                        )
                    }
                    nimbus_baremetal::Error::InvalidConfig { field, message } => {
                        invalid(field, message)
                    }
                    other => invalid(format!("config.hosts[{idx}].bmc"), other.to_string()),
                })?;
            bmcs.push(BmcRoute::Direct(config));
        }
        Ok(BaremetalConfig {
            ssh,
            bmcs,
            settings,
        })
    }
}

pub struct BaremetalProvider {
    ssh: SshProvider,
    bmcs: Vec<Box<dyn Bmc>>,
    settings: BaremetalSettings,
}

fn bmc_error(err: nimbus_baremetal::Error) -> Error {
    match err {
        nimbus_baremetal::Error::InvalidConfig { field, message } => invalid(field, message),
        err if err.is_retryable() => Error::Retryable(err.to_string()),
        err => Error::Permanent(err.to_string()),
    }
}

impl BaremetalProvider {
    /// The provider for a stored record; `agents` carries operations for hosts whose BMC is
    /// reached through an agent (none configured: such hosts are an invalid configuration).
    pub fn from_provider(
        provider: &ProviderConfig,
        pool: Arc<SshPool>,
        agents: Option<Arc<dyn AgentRelay>>,
    ) -> Result<Self> {
        let config = BaremetalConfig::from_provider(provider)?;
        let ssh = SshProvider::from_provider(&config.ssh, pool)?;
        let bmcs = config
            .bmcs
            .iter()
            .enumerate()
            .map(|(idx, route)| match route {
                BmcRoute::Direct(bmc) => nimbus_baremetal::connect(bmc).map_err(bmc_error),
                BmcRoute::Agent(target) => {
                    let relay = agents.clone().ok_or_else(|| {
                        invalid(
                            format!("config.hosts[{idx}].bmc.agent"),
                            "this process carries no agent operations (only `nimbusd server` does)",
                        )
                    })?;
                    Ok(Box::new(AgentBmc {
                        relay,
                        tenant_id: provider.tenant_id,
                        endpoint: format!("agent {}: {}", target.agent, target.name),
                        target: target.clone(),
                    }) as Box<dyn Bmc>)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BaremetalProvider {
            ssh,
            bmcs,
            settings: config.settings,
        })
    }

    fn power_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.power_timeout_secs)
    }

    async fn power(&self, idx: usize) -> Result<PowerState> {
        self.bmcs[idx].power_state().await.map_err(bmc_error)
    }

    /// Host `idx`'s claim, or `None` when it is off (an off host holds no machine).
    async fn claim_of(&self, idx: usize) -> Result<Option<(ProviderMachine, ProviderId)>> {
        match self.power(idx).await? {
            PowerState::Off => Ok(None),
            _ => self.ssh.host_claim(idx).await,
        }
    }

    /// Every host's claim; fails when one cannot be read.
    async fn claims(&self) -> Result<Vec<(usize, ProviderMachine, ProviderId)>> {
        let mut out = Vec::new();
        for idx in 0..self.ssh.host_count() {
            if let Some((view, provider_id)) = self.claim_of(idx).await? {
                out.push((idx, view, provider_id));
            }
        }
        Ok(out)
    }

    async fn find(&self, machine_id: MachineId, hint: Option<&str>) -> Result<Option<usize>> {
        if let Some(idx) = hint.and_then(|id| {
            (0..self.ssh.host_count()).find(|&idx| self.ssh.host_config(idx).host_id() == id)
        }) && let Ok(Some((view, _))) = self.claim_of(idx).await
            && view.machine_id == Some(machine_id)
        {
            return Ok(Some(idx));
        }
        Ok(self
            .claims()
            .await?
            .into_iter()
            .find(|(_, view, provider_id)| {
                view.machine_id == Some(machine_id) && *provider_id == self.ssh_provider_id()
            })
            .map(|(idx, _, _)| idx))
    }

    fn ssh_provider_id(&self) -> ProviderId {
        self.ssh.provider_id()
    }

    /// Powers host `idx` on with the boot override, waits for SSH, and claims it.
    async fn boot_and_claim(
        &self,
        idx: usize,
        request: &ProvisionRequest,
    ) -> Result<Option<ProviderMachine>> {
        let bmc = &self.bmcs[idx];
        let host = self.ssh.host_config(idx).host_id();
        bmc.boot_once(self.settings.boot).await.map_err(bmc_error)?;
        let started = Instant::now();
        nimbus_baremetal::power_and_wait(
            bmc.as_ref(),
            PowerAction::On,
            self.power_timeout(),
            Duration::from_millis(500),
        )
        .await
        .map_err(bmc_error)?;
        tracing::info!(machine.id = %request.machine_id, host = %host, waited = ?started.elapsed(), "bare-metal host powered on");
        let exec = self.ssh.host_exec(idx);
        if let Err(err) = exec
            .wait_ready(Duration::from_secs(self.settings.boot_timeout_secs))
            .await
        {
            // Nobody could reach it, so nobody claimed it: leave the fleet as it was.
            let _ = bmc.power(PowerAction::Off).await;
            return Err(Error::Retryable(format!(
                "host {host}: powered on but SSH did not answer within {}s: {err}",
                self.settings.boot_timeout_secs
            )));
        }
        tracing::info!(machine.id = %request.machine_id, host = %host, waited = ?started.elapsed(), "bare-metal host reachable over SSH");
        self.ssh.claim_host(idx, request).await
    }
}

#[async_trait]
impl Provider for BaremetalProvider {
    fn provider_type(&self) -> ProviderType {
        ProviderType::Baremetal
    }

    async fn provision(&self, request: &ProvisionRequest) -> Result<ProviderMachine> {
        let spec = &request.spec;
        let candidates: Vec<usize> = (0..self.ssh.host_count())
            .filter(|&idx| {
                let host = self.ssh.host_config(idx);
                host.os == spec.os
                    && host.arch == spec.arch
                    && spec.labels.iter().all(|l| host.labels.contains(l))
            })
            .collect();
        if candidates.is_empty() {
            return Err(Error::Permanent(format!(
                "no host of this provider is {}/{} with labels {:?}",
                spec.os, spec.arch, spec.labels
            )));
        }
        let mut on_free = Vec::new();
        let mut off = Vec::new();
        let mut errors = Vec::new();
        for &idx in &candidates {
            match self.power(idx).await {
                Ok(PowerState::Off) => off.push(idx),
                Ok(_) => match self.ssh.host_claim(idx).await {
                    // A retry after a crash finds the claim the first attempt made.
                    Ok(Some((view, _))) if view.machine_id == Some(request.machine_id) => {
                        return Ok(view);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => on_free.push(idx),
                    Err(err) => errors.push(err),
                },
                Err(err) => errors.push(err),
            }
        }
        for idx in on_free.into_iter().chain(off) {
            match self.boot_or_claim(idx, request).await {
                Ok(Some(view)) => return Ok(view),
                Ok(None) => {} // another provision won this host
                Err(err) => errors.push(err),
            }
        }
        if !errors.is_empty() && errors.iter().all(|e| !e.is_retryable()) {
            return Err(Error::Permanent(format!(
                "no matching host can be used: {}",
                join(&errors)
            )));
        }
        let mut message = format!(
            "capacity: no free host among {} matching hosts",
            candidates.len()
        );
        if !errors.is_empty() {
            message.push_str(&format!("; {}", join(&errors)));
        }
        Err(Error::Retryable(message))
    }

    async fn terminate(&self, machine: &Machine) -> Result<()> {
        let Some(idx) = self
            .find(machine.id, machine.provider_metadata.host_id.as_deref())
            .await?
        else {
            return Ok(());
        };
        let host = self.ssh.host_config(idx).clone();
        if let Some(script) = &self.settings.wipe_script {
            let output = self
                .ssh
                .host_exec(idx)
                .run(
                    &Command::new(script.clone())
                        .arg(host.state_dir())
                        .arg(machine.id.to_string())
                        .label("baremetal.wipe")
                        .timeout(Duration::from_secs(self.settings.boot_timeout_secs)),
                )
                .await
                .map_err(|err| Error::Retryable(format!("host {}: wipe: {err}", host.host_id())))?;
            if !output.success() {
                return Err(Error::Retryable(format!(
                    "host {}: the wipe script failed with exit code {}: {}",
                    host.host_id(),
                    output.exit_code,
                    output.stderr_str().trim()
                )));
            }
        }
        self.ssh.release_host(idx, machine.id).await?;
        if self.settings.after_terminate == AfterTerminate::PowerOff {
            nimbus_baremetal::power_and_wait(
                self.bmcs[idx].as_ref(),
                PowerAction::Off,
                self.power_timeout(),
                Duration::from_millis(500),
            )
            .await
            .map_err(bmc_error)?;
        }
        tracing::info!(machine.id = %machine.id, host = %host.host_id(), "released bare-metal host");
        Ok(())
    }

    async fn can_terminate(&self, _machine: &Machine) -> Result<CanTerminate> {
        Ok(CanTerminate::yes())
    }

    async fn list_machines(&self, tenant_id: TenantId) -> Result<Vec<ProviderMachine>> {
        Ok(self
            .claims()
            .await?
            .into_iter()
            .filter(|(_, view, provider_id)| {
                view.tenant_id == Some(tenant_id) && *provider_id == self.ssh_provider_id()
            })
            .map(|(_, view, _)| view)
            .collect())
    }

    async fn get_machine(&self, id: MachineId) -> Result<Option<ProviderMachine>> {
        Ok(self
            .claims()
            .await?
            .into_iter()
            .find(|(_, view, provider_id)| {
                view.machine_id == Some(id) && *provider_id == self.ssh_provider_id()
            })
            .map(|(_, view, _)| view))
    }

    async fn exec(&self, machine: &Machine) -> Result<Arc<dyn Exec>> {
        let idx = self
            .find(machine.id, machine.provider_metadata.host_id.as_deref())
            .await?
            .ok_or(Error::NotFound(machine.id))?;
        Ok(self.ssh.host_exec(idx))
    }
}

impl BaremetalProvider {
    /// Claims a host that is already on, or boots one that is off first.
    async fn boot_or_claim(
        &self,
        idx: usize,
        request: &ProvisionRequest,
    ) -> Result<Option<ProviderMachine>> {
        match self.power(idx).await? {
            PowerState::Off => self.boot_and_claim(idx, request).await,
            _ => self.ssh.claim_host(idx, request).await,
        }
    }
}

fn join(errors: &[Error]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
