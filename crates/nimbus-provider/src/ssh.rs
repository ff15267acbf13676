//! The `ssh` provider: bring your own machines. A fixed list of hosts reachable over SSH; a
//! machine is a claim on one host.
//!
//! Configuration (`config` of the provider record):
//!
//! ```json
//! {"hosts": [{"address": "10.0.0.5", "port": 22, "user": "ci", "os": "linux", "arch": "x86_64",
//!             "labels": ["gpu"], "state_dir": "/var/lib/nimbus", "key": "10.0.0.5:22"}],
//!  "connect_timeout_secs": 15}
//! ```
//!
//! `port` defaults to 22, `labels` to none, `state_dir` to `/var/lib/nimbus` (the login user must
//! be able to write it), `key` to `"<address>:<port>"`. Private keys live in the sealed
//! credentials: `{"keys": {"10.0.0.5:22": "-----BEGIN OPENSSH PRIVATE KEY-----…"}}`, plus an
//! optional `"default"` key for hosts without an entry of their own.
//!
//! A claim lives on the host itself, so it survives daemon restarts and any daemon can read it
//! back: `<state_dir>/claims/<machine id>.json` holds the owner (machine, tenant, provider, time),
//! and the symlink `<state_dir>/claim → claims/<machine id>.json` is the claim. Creating a
//! symlink is atomic and fails when one exists, so two provisions racing for a host — in one
//! daemon or in two — cannot both win. The machine's setup files live beside it:
//! `<state_dir>/state.db` and `<state_dir>/work` (reported in the machine's metadata as
//! `state_db` and `work_dir`). Terminating stops the runner service (its process group), removes
//! the setup files, then drops the claim.
//!
//! Host keys are pinned on first use through the pool's [`HostKeyStore`]; a changed key makes
//! every operation on that host fail as permanent until an operator clears the pin.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use nimbus_setup::events::Events;
use nimbus_setup::exec::{self, Command, Exec};
use nimbus_setup::pipeline::DEFAULT_STATE_DIR;
use nimbus_setup::ssh::{HostKeyStore, MemoryHostKeyStore, SshExec, SshOptions, SshTarget};
use nimbus_types::{
    Arch, CanTerminate, Machine, MachineId, Os, ProviderConfig, ProviderId, ProviderMetadata,
    ProviderType, Secret, TenantId, validate_label,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Error, Provider, ProviderMachine, ProviderStatus, ProvisionRequest, Result};

/// One host as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub address: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub user: String,
    pub os: Os,
    pub arch: Arch,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    /// The entry in the credentials' `keys`; `"<address>:<port>"` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

fn default_port() -> u16 {
    22
}

impl HostConfig {
    /// `address:port`: the host's identity in claims, metadata and host-key pins.
    pub fn host_id(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }

    pub fn state_dir(&self) -> &str {
        self.state_dir
            .as_deref()
            .unwrap_or(DEFAULT_STATE_DIR)
            .trim_end_matches('/')
    }

    fn key_name(&self) -> String {
        self.key.clone().unwrap_or_else(|| self.host_id())
    }
}

/// The provider's `config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    pub hosts: Vec<HostConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_secs: Option<u64>,
}

/// The file `nimbusctl provider add --type ssh --config FILE` reads (TOML with `[[hosts]]`
/// tables): like [`HostConfig`], with `key_file` naming the private key on the operator's
/// machine instead of a credentials entry. Deserialize it with any serde format.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsFile {
    pub hosts: Vec<HostsFileEntry>,
    #[serde(default)]
    pub connect_timeout_secs: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsFileEntry {
    pub address: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub user: String,
    pub key_file: std::path::PathBuf,
    pub os: Os,
    pub arch: Arch,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub state_dir: Option<String>,
}

impl HostsFile {
    /// The provider's `config` and sealed-to-be `credentials`: every key file is read with
    /// `read_key` (relative paths are the caller's business) and filed under its host's
    /// `address:port`. The result is validated like a stored record; errors never contain keys.
    pub fn into_provider_parts(
        self,
        read_key: impl Fn(&std::path::Path) -> std::io::Result<String>,
    ) -> Result<(serde_json::Value, Secret)> {
        let mut keys = serde_json::Map::new();
        let mut hosts = Vec::new();
        for (idx, entry) in self.hosts.into_iter().enumerate() {
            let key = read_key(&entry.key_file).map_err(|err| {
                invalid(
                    format!("hosts[{idx}].key_file"),
                    format!("cannot read {}: {err}", entry.key_file.display()),
                )
            })?;
            let host = HostConfig {
                address: entry.address,
                port: entry.port,
                user: entry.user,
                os: entry.os,
                arch: entry.arch,
                labels: entry.labels,
                state_dir: entry.state_dir,
                key: None,
            };
            keys.insert(host.key_name(), serde_json::Value::String(key));
            hosts.push(host);
        }
        let config = serde_json::to_value(SshConfig {
            hosts,
            connect_timeout_secs: self.connect_timeout_secs,
        })
        .expect("config serializes");
        let credentials = Secret::new(serde_json::json!({ "keys": keys }).to_string());
        SshConfig::from_provider(&ProviderConfig {
            id: ProviderId::new(),
            tenant_id: TenantId::new(),
            name: "check".into(),
            provider_type: ProviderType::Ssh,
            credentials: Some(credentials.clone()),
            config: config.clone(),
            created_at: nimbus_types::now(),
        })?;
        Ok((config, credentials))
    }
}

/// The provider's `credentials`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    #[serde(default)]
    keys: BTreeMap<String, Secret>,
    #[serde(default)]
    default: Option<Secret>,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field: field.into(),
        message: message.into(),
    }
}

impl SshConfig {
    /// Parses and checks `config`; every field error names the field.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let config: SshConfig = serde_json::from_value(value.clone())
            .map_err(|err| invalid("config", err.to_string()))?;
        if config.hosts.is_empty() {
            return Err(invalid("config.hosts", "at least one host is required"));
        }
        if config.connect_timeout_secs == Some(0) {
            return Err(invalid("config.connect_timeout_secs", "must be at least 1"));
        }
        let mut seen = std::collections::HashSet::new();
        for (idx, host) in config.hosts.iter().enumerate() {
            let field = |name: &str| format!("config.hosts[{idx}].{name}");
            let address_ok = !host.address.is_empty()
                && host.address.len() <= 253
                && !host.address.starts_with('-')
                && host
                    .address
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
            if !address_ok {
                return Err(invalid(
                    field("address"),
                    "must be a host name or IP address (letters, digits, '.', '-', ':', '_')",
                ));
            }
            if host.port == 0 {
                return Err(invalid(field("port"), "must be 1-65535"));
            }
            let user_ok = !host.user.is_empty()
                && host.user.len() <= 32
                && !host.user.starts_with('-')
                && host
                    .user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !user_ok {
                return Err(invalid(
                    field("user"),
                    "must be 1-32 characters of letters, digits, '_', '-' or '.'",
                ));
            }
            for (label_idx, label) in host.labels.iter().enumerate() {
                validate_label(label).map_err(|message| {
                    invalid(format!("{}[{label_idx}]", field("labels")), message)
                })?;
            }
            if let Some(dir) = &host.state_dir {
                let ok = dir.starts_with('/')
                    && dir.trim_end_matches('/').len() > 1
                    && !dir.contains(['\0', '\n', '\r']);
                if !ok {
                    return Err(invalid(
                        field("state_dir"),
                        "must be an absolute path other than / without newlines",
                    ));
                }
            }
            if !seen.insert(host.host_id()) {
                return Err(invalid(
                    field("address"),
                    format!("host {} is listed twice", host.host_id()),
                ));
            }
        }
        Ok(config)
    }

    /// Checks a whole provider record: the config and a key for every host.
    pub fn from_provider(provider: &ProviderConfig) -> Result<(Self, Vec<Secret>)> {
        let config = SshConfig::from_json(&provider.config)?;
        let credentials = provider
            .credentials
            .as_ref()
            .ok_or_else(|| invalid("credentials", "the ssh provider needs private keys: {\"keys\": {\"<address>:<port>\": \"<private key>\"}}"))?;
        let credentials: Credentials = serde_json::from_str(credentials.expose())
            // serde's message may quote the input: never echo credentials.
            .map_err(|_| invalid("credentials", "must be JSON of the form {\"keys\": {\"<address>:<port>\": \"<private key>\"}, \"default\": \"<private key>\"}"))?;
        let mut keys = Vec::new();
        for (idx, host) in config.hosts.iter().enumerate() {
            let key = credentials
                .keys
                .get(&host.key_name())
                .or(credentials.default.as_ref())
                .ok_or_else(|| {
                    invalid(
                        format!("credentials.keys[{:?}]", host.key_name()),
                        format!(
                            "no private key for host {} (config.hosts[{idx}])",
                            host.host_id()
                        ),
                    )
                })?;
            if russh_key_ok(key).is_err() {
                return Err(invalid(
                    format!("credentials.keys[{:?}]", host.key_name()),
                    "is not a private key in OpenSSH or PEM format (or it is encrypted)",
                ));
            }
            keys.push(key.clone());
        }
        Ok((config, keys))
    }
}

fn russh_key_ok(key: &Secret) -> std::result::Result<(), ()> {
    nimbus_setup::ssh::check_private_key(key).map_err(drop)
}

/// Connections and host-key pins shared by the providers of one daemon.
pub struct SshPool {
    host_keys: Arc<dyn HostKeyStore>,
    events: Events,
    options: SshOptions,
    execs: Mutex<HashMap<String, Arc<SshExec>>>,
}

impl SshPool {
    pub fn new(host_keys: Arc<dyn HostKeyStore>, events: Events, options: SshOptions) -> Arc<Self> {
        Arc::new(SshPool {
            host_keys,
            events,
            options,
            execs: Mutex::new(HashMap::new()),
        })
    }

    /// The process-wide pool of one provider: in-memory pins, no events. Used by
    /// [`crate::build`] so that connections and pins outlive one provider value.
    pub fn shared(provider_id: ProviderId) -> Arc<Self> {
        static POOLS: OnceLock<Mutex<HashMap<ProviderId, Arc<SshPool>>>> = OnceLock::new();
        POOLS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(provider_id)
            .or_insert_with(|| {
                SshPool::new(
                    MemoryHostKeyStore::new(),
                    Events::none(),
                    SshOptions::default(),
                )
            })
            .clone()
    }

    /// The connection to `target`, reused while its login stays the same.
    fn exec(&self, target: SshTarget, options: &SshOptions) -> Arc<SshExec> {
        let mut execs = self.execs.lock().unwrap_or_else(|e| e.into_inner());
        let key = format!("{}@{}", target.user, target.host_id);
        if let Some(exec) = execs.get(&key)
            && exec.target().private_key == target.private_key
        {
            return exec.clone();
        }
        let exec = Arc::new(SshExec::new(
            target,
            self.host_keys.clone(),
            self.events.clone(),
            options.clone(),
        ));
        execs.insert(key, exec.clone());
        exec
    }
}

struct Host {
    config: HostConfig,
    key: Secret,
}

pub struct SshProvider {
    provider_id: ProviderId,
    hosts: Vec<Host>,
    pool: Arc<SshPool>,
    options: SshOptions,
}

/// Who holds a host: the contents of `claims/<machine id>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Claim {
    machine_id: MachineId,
    tenant_id: TenantId,
    provider_id: ProviderId,
    #[serde(with = "time::serde::rfc3339")]
    claimed_at: OffsetDateTime,
}

/// Claims `$1` for machine `$2` with owner record `$3`; prints `claimed` or `taken`.
const CLAIM_SCRIPT: &str = r#"dir=$1 id=$2
mkdir -p -- "$dir/claims" || exit 1
current=$(readlink -- "$dir/claim" 2>/dev/null)
if [ "$current" = "claims/$id.json" ]; then echo claimed; exit 0; fi
if [ -n "$current" ] || [ -e "$dir/claim" ]; then echo taken; exit 0; fi
umask 022
printf '%s\n' "$3" > "$dir/claims/$id.json.tmp" && mv -f -- "$dir/claims/$id.json.tmp" "$dir/claims/$id.json" || exit 1
# Creating the symlink is the atomic step: it fails when another claim won.
if ln -s -- "claims/$id.json" "$dir/claim" 2>/dev/null; then echo claimed; exit 0; fi
rm -f -- "$dir/claims/$id.json"
echo taken"#;

/// Prints the owner record of `$1`'s claim, `none`, or `broken`.
const READ_CLAIM_SCRIPT: &str = r#"current=$(readlink -- "$1/claim" 2>/dev/null) || { echo none; exit 0; }
cat -- "$1/$current" 2>/dev/null || echo broken"#;

/// Stops the runner of machine `$2` on `$1`, removes its files, then releases the claim.
const RELEASE_SCRIPT: &str = r#"dir=$1 id=$2
alive() { kill -0 "$1" 2>/dev/null && ! ps -o stat= -p "$1" 2>/dev/null | grep -q '^Z'; }
current=$(readlink -- "$dir/claim" 2>/dev/null)
if [ "$current" != "claims/$id.json" ]; then echo "not claimed by $id"; exit 0; fi
if [ -f "$dir/work/runner.pid" ]; then
  pid=$(cat "$dir/work/runner.pid")
  case $pid in ''|*[!0-9]*) pid= ;; esac
  if [ -n "$pid" ]; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    n=0
    while alive "$pid" && [ $n -lt 20 ]; do sleep 0.25; n=$((n+1)); done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
  fi
fi
rm -rf -- "$dir/work" "$dir/state.db" "$dir/state.db-journal" "$dir/state.db-wal" "$dir/state.db-shm" || exit 1
rm -f -- "$dir/claim" "$dir/claims/$id.json" || exit 1
echo released"#;

/// What reading one host's claim found.
enum HostView {
    Free,
    Claimed(Claim),
}

fn exec_error(host: &HostConfig, err: exec::Error) -> Error {
    match err {
        exec::Error::Denied(message) => {
            Error::Permanent(format!("host {}: {message}", host.host_id()))
        }
        other => Error::Retryable(format!("host {}: {other}", host.host_id())),
    }
}

impl SshProvider {
    pub fn new(
        provider_id: ProviderId,
        config: SshConfig,
        keys: Vec<Secret>,
        pool: Arc<SshPool>,
    ) -> Self {
        let mut options = pool.options.clone();
        if let Some(secs) = config.connect_timeout_secs {
            options.connect_timeout = Duration::from_secs(secs);
        }
        SshProvider {
            provider_id,
            hosts: config
                .hosts
                .into_iter()
                .zip(keys)
                .map(|(config, key)| Host { config, key })
                .collect(),
            pool,
            options,
        }
    }

    /// Builds the provider for a stored record with the given pool.
    pub fn from_provider(provider: &ProviderConfig, pool: Arc<SshPool>) -> Result<Self> {
        let (config, keys) = SshConfig::from_provider(provider)?;
        Ok(SshProvider::new(provider.id, config, keys, pool))
    }

    fn exec_for(&self, host: &Host) -> Arc<SshExec> {
        self.pool.exec(
            SshTarget {
                host_id: host.config.host_id(),
                address: host.config.address.clone(),
                port: host.config.port,
                user: host.config.user.clone(),
                private_key: host.key.clone(),
            },
            &self.options,
        )
    }

    async fn run(&self, host: &Host, command: Command) -> Result<String> {
        let command = command.timeout(Duration::from_secs(60));
        let output = self
            .exec_for(host)
            .run(&command)
            .await
            .map_err(|err| exec_error(&host.config, err))?;
        if !output.success() {
            return Err(Error::Retryable(format!(
                "host {}: {} failed with exit code {}: {}",
                host.config.host_id(),
                command_label(&command),
                output.exit_code,
                output.stderr_str().trim()
            )));
        }
        Ok(output.stdout_str())
    }

    async fn read_claim(&self, host: &Host) -> Result<HostView> {
        let result = self.exec_for(host).run(&read_claim_command(host)).await;
        parse_claim(host, result)
    }

    /// Every host's claim, read concurrently; fails if any host cannot be read, so callers
    /// never act on a partial view.
    async fn claims(&self) -> Result<Vec<(usize, HostView)>> {
        let mut set = tokio::task::JoinSet::new();
        for (idx, host) in self.hosts.iter().enumerate() {
            let exec = self.exec_for(host);
            let command = read_claim_command(host);
            set.spawn(async move { (idx, exec.run(&command).await) });
        }
        let mut out = Vec::new();
        let mut first_error = None;
        while let Some(joined) = set.join_next().await {
            let (idx, result) =
                joined.map_err(|err| Error::Retryable(format!("claim reader: {err}")))?;
            let parsed = parse_claim(&self.hosts[idx], result);
            match parsed {
                Ok(view) => out.push((idx, view)),
                Err(err) => {
                    // A permanent error (changed host key) outranks a transient one.
                    if first_error
                        .as_ref()
                        .is_none_or(|e: &Error| e.is_retryable() && !err.is_retryable())
                    {
                        first_error = Some(err);
                    }
                }
            }
        }
        if let Some(err) = first_error {
            return Err(err);
        }
        out.sort_by_key(|(idx, _)| *idx);
        Ok(out)
    }

    fn view(&self, host: &Host, claim: &Claim) -> ProviderMachine {
        let mut metadata = ProviderMetadata {
            instance_id: Some(host.config.host_id()),
            host_id: Some(host.config.host_id()),
            ..ProviderMetadata::default()
        };
        let dir = host.config.state_dir();
        metadata
            .extra
            .insert("state_db".into(), format!("{dir}/state.db"));
        metadata
            .extra
            .insert("work_dir".into(), format!("{dir}/work"));
        metadata
            .extra
            .insert("user".into(), host.config.user.clone());
        metadata
            .extra
            .insert("port".into(), host.config.port.to_string());
        ProviderMachine {
            machine_id: Some(claim.machine_id),
            tenant_id: Some(claim.tenant_id),
            status: ProviderStatus::Running,
            ip_address: Some(host.config.address.clone()),
            ssh_public_key: None,
            created_at: claim.claimed_at,
            metadata,
        }
    }

    /// The host holding `machine`: the one its metadata names if it still holds it, else found
    /// by reading every claim.
    async fn find(
        &self,
        machine_id: MachineId,
        hint: Option<&str>,
    ) -> Result<Option<(usize, Claim)>> {
        if let Some(idx) =
            hint.and_then(|id| self.hosts.iter().position(|h| h.config.host_id() == id))
            && let Ok(HostView::Claimed(claim)) = self.read_claim(&self.hosts[idx]).await
            && claim.machine_id == machine_id
            // A record's host hint never reaches another provider's claim.
            && claim.provider_id == self.provider_id
        {
            return Ok(Some((idx, claim)));
        }
        Ok(self
            .claims()
            .await?
            .into_iter()
            .find_map(|(idx, view)| match view {
                HostView::Claimed(claim)
                    if claim.machine_id == machine_id && claim.provider_id == self.provider_id =>
                {
                    Some((idx, claim))
                }
                _ => None,
            }))
    }
}

/// Single-host operations for the bare-metal provider, which powers a host on before claiming
/// it and so must claim, read and release one host at a time.
impl SshProvider {
    pub(crate) fn provider_id(&self) -> ProviderId {
        self.provider_id
    }

    pub(crate) fn host_count(&self) -> usize {
        self.hosts.len()
    }

    pub(crate) fn host_config(&self, idx: usize) -> &HostConfig {
        &self.hosts[idx].config
    }

    /// Host `idx`'s claim: `None` when free, else the machine and the provider that claimed it.
    pub(crate) async fn host_claim(
        &self,
        idx: usize,
    ) -> Result<Option<(ProviderMachine, ProviderId)>> {
        let host = &self.hosts[idx];
        Ok(match self.read_claim(host).await? {
            HostView::Free => None,
            HostView::Claimed(claim) => Some((self.view(host, &claim), claim.provider_id)),
        })
    }

    /// Claims host `idx` for `request` atomically; `None` when another machine holds it.
    pub(crate) async fn claim_host(
        &self,
        idx: usize,
        request: &ProvisionRequest,
    ) -> Result<Option<ProviderMachine>> {
        let host = &self.hosts[idx];
        let claim = Claim {
            machine_id: request.machine_id,
            tenant_id: request.tenant_id,
            provider_id: self.provider_id,
            claimed_at: nimbus_types::now(),
        };
        let record = serde_json::to_string(&claim).expect("claim serializes");
        let out = self
            .run(
                host,
                Command::new(CLAIM_SCRIPT)
                    .arg(host.config.state_dir())
                    .arg(request.machine_id.to_string())
                    .arg(&record)
                    .label("ssh_provider.claim"),
            )
            .await?;
        Ok((out.trim() == "claimed").then(|| self.view(host, &claim)))
    }

    /// Stops machine `machine_id`'s runner on host `idx`, removes its files and drops its claim.
    pub(crate) async fn release_host(&self, idx: usize, machine_id: MachineId) -> Result<()> {
        let host = &self.hosts[idx];
        self.run(
            host,
            Command::new(RELEASE_SCRIPT)
                .arg(host.config.state_dir())
                .arg(machine_id.to_string())
                .label("ssh_provider.release"),
        )
        .await
        .map(drop)
    }

    pub(crate) fn host_exec(&self, idx: usize) -> Arc<SshExec> {
        self.exec_for(&self.hosts[idx])
    }
}

fn read_claim_command(host: &Host) -> Command {
    Command::new(READ_CLAIM_SCRIPT)
        .arg(host.config.state_dir())
        .label("ssh_provider.read_claim")
        .timeout(Duration::from_secs(60))
}

fn parse_claim(
    host: &Host,
    result: std::result::Result<exec::Output, exec::Error>,
) -> Result<HostView> {
    let output = result.map_err(|err| exec_error(&host.config, err))?;
    if !output.success() {
        return Err(Error::Retryable(format!(
            "host {}: reading the claim failed (exit code {}): {}",
            host.config.host_id(),
            output.exit_code,
            output.stderr_str().trim()
        )));
    }
    match output.stdout_str().trim() {
        "none" => Ok(HostView::Free),
        "broken" => Err(Error::Retryable(format!(
            "host {}: the claim link points to a missing owner record",
            host.config.host_id()
        ))),
        json => serde_json::from_str(json)
            .map(HostView::Claimed)
            .map_err(|err| {
                Error::Retryable(format!(
                    "host {}: unreadable claim record: {err}",
                    host.config.host_id()
                ))
            }),
    }
}

fn command_label(command: &Command) -> &str {
    command.label.as_deref().unwrap_or("command")
}

#[async_trait]
impl Provider for SshProvider {
    fn provider_type(&self) -> ProviderType {
        ProviderType::Ssh
    }

    async fn provision(&self, request: &ProvisionRequest) -> Result<ProviderMachine> {
        let spec = &request.spec;
        let candidates: Vec<usize> = self
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, host)| {
                host.config.os == spec.os
                    && host.config.arch == spec.arch
                    && spec
                        .labels
                        .iter()
                        .all(|label| host.config.labels.contains(label))
            })
            .map(|(idx, _)| idx)
            .collect();
        if candidates.is_empty() {
            return Err(Error::Permanent(format!(
                "no host of this provider is {}/{} with labels {:?}",
                spec.os, spec.arch, spec.labels
            )));
        }

        // A retry after a crash finds the claim the first attempt made.
        let mut free = Vec::new();
        let mut errors = Vec::new();
        for idx in &candidates {
            match self.read_claim(&self.hosts[*idx]).await {
                Ok(HostView::Claimed(claim)) if claim.machine_id == request.machine_id => {
                    return Ok(self.view(&self.hosts[*idx], &claim));
                }
                Ok(HostView::Claimed(_)) => {}
                Ok(HostView::Free) => free.push(*idx),
                Err(err) => errors.push(err),
            }
        }

        let claim = Claim {
            machine_id: request.machine_id,
            tenant_id: request.tenant_id,
            provider_id: self.provider_id,
            claimed_at: nimbus_types::now(),
        };
        let record = serde_json::to_string(&claim).expect("claim serializes");
        for idx in free {
            let host = &self.hosts[idx];
            let out = self
                .run(
                    host,
                    Command::new(CLAIM_SCRIPT)
                        .arg(host.config.state_dir())
                        .arg(request.machine_id.to_string())
                        .arg(&record)
                        .label("ssh_provider.claim"),
                )
                .await;
            match out.as_deref().map(str::trim) {
                Ok("claimed") => {
                    tracing::info!(machine.id = %request.machine_id, host = %host.config.host_id(), "claimed ssh host");
                    return Ok(self.view(host, &claim));
                }
                Ok(_) => {} // another provision won the race for this host
                Err(err) => errors.push(Error::Retryable(err.to_string())),
            }
        }
        let busy = candidates.len() - errors.len();
        if !errors.is_empty() && busy == 0 && errors.iter().all(|err| !err.is_retryable()) {
            return Err(Error::Permanent(format!(
                "no matching host can be used: {}",
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        let mut message = format!(
            "capacity: {busy} of {} matching hosts are claimed",
            candidates.len()
        );
        if !errors.is_empty() {
            message.push_str(&format!(
                ", {} could not be reached: {}",
                errors.len(),
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        Err(Error::Retryable(message))
    }

    async fn terminate(&self, machine: &Machine) -> Result<()> {
        let Some((idx, _claim)) = self
            .find(machine.id, machine.provider_metadata.host_id.as_deref())
            .await?
        else {
            return Ok(());
        };
        let host = &self.hosts[idx];
        self.run(
            host,
            Command::new(RELEASE_SCRIPT)
                .arg(host.config.state_dir())
                .arg(machine.id.to_string())
                .label("ssh_provider.release"),
        )
        .await?;
        tracing::info!(machine.id = %machine.id, host = %host.config.host_id(), "released ssh host");
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
            .filter_map(|(idx, view)| match view {
                HostView::Claimed(claim)
                    if claim.tenant_id == tenant_id && claim.provider_id == self.provider_id =>
                {
                    Some(self.view(&self.hosts[idx], &claim))
                }
                _ => None,
            })
            .collect())
    }

    async fn get_machine(&self, id: MachineId) -> Result<Option<ProviderMachine>> {
        Ok(self
            .find(id, None)
            .await?
            .map(|(idx, claim)| self.view(&self.hosts[idx], &claim)))
    }

    async fn exec(&self, machine: &Machine) -> Result<Arc<dyn Exec>> {
        let (idx, _) = self
            .find(machine.id, machine.provider_metadata.host_id.as_deref())
            .await?
            .ok_or(Error::NotFound(machine.id))?;
        Ok(self.exec_for(&self.hosts[idx]))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(config: serde_json::Value, field: &str) {
        match SshConfig::from_json(&config) {
            Err(Error::InvalidConfig {
                field: got,
                message,
            }) => {
                assert_eq!(got, field, "{message}")
            }
            other => panic!("{config} must be rejected at {field}: {other:?}"),
        }
    }

    fn host() -> serde_json::Value {
        json!({"address": "10.0.0.5", "user": "ci", "os": "linux", "arch": "x86_64"})
    }

    #[test]
    fn config_is_validated_field_by_field() {
        let ok = SshConfig::from_json(&json!({"hosts": [host()]})).unwrap();
        assert_eq!(ok.hosts[0].port, 22);
        assert_eq!(ok.hosts[0].host_id(), "10.0.0.5:22");
        assert_eq!(ok.hosts[0].state_dir(), "/var/lib/nimbus");

        check(json!({"hosts": []}), "config.hosts");
        check(json!({"hosts": [host()], "bogus": 1}), "config");
        let with = |key: &str, value: serde_json::Value| {
            let mut h = host();
            h[key] = value;
            json!({"hosts": [h]})
        };
        check(
            with("address", json!("-oProxyCommand=sh")),
            "config.hosts[0].address",
        );
        check(with("address", json!("a b")), "config.hosts[0].address");
        check(with("address", json!("$(id)")), "config.hosts[0].address");
        check(with("user", json!("ci;rm -rf /")), "config.hosts[0].user");
        check(with("user", json!("")), "config.hosts[0].user");
        check(with("port", json!(0)), "config.hosts[0].port");
        check(
            with("labels", json!(["ok", "a'b"])),
            "config.hosts[0].labels[1]",
        );
        check(with("labels", json!(["x\ny"])), "config.hosts[0].labels[0]");
        check(
            with("state_dir", json!("relative")),
            "config.hosts[0].state_dir",
        );
        check(with("state_dir", json!("/")), "config.hosts[0].state_dir");
        check(
            with("state_dir", json!("/a\nb")),
            "config.hosts[0].state_dir",
        );
        check(with("os", json!("windows")), "config");
        check(
            json!({"hosts": [host(), host()]}),
            "config.hosts[1].address",
        );
    }

    #[test]
    fn a_hosts_file_becomes_config_and_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .output()
            .expect("ssh-keygen (openssh-client)");
        assert!(out.status.success());
        let file: HostsFile = serde_json::from_value(json!({"hosts": [
            {"address": "10.0.0.5", "user": "ci", "key_file": key, "os": "macos", "arch": "arm64",
             "labels": ["xcode-16"]},
        ]}))
        .unwrap();
        let (config, credentials) = file
            .clone()
            .into_provider_parts(|path| std::fs::read_to_string(path))
            .unwrap();
        assert_eq!(config["hosts"][0]["port"], 22);
        let creds: serde_json::Value = serde_json::from_str(credentials.expose()).unwrap();
        assert!(
            creds["keys"]["10.0.0.5:22"]
                .as_str()
                .unwrap()
                .contains("PRIVATE KEY")
        );

        let err = file
            .clone()
            .into_provider_parts(|_| Ok("hunter2".into()))
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = file
            .into_provider_parts(|_| Err(std::io::Error::other("gone")))
            .unwrap_err();
        assert!(err.to_string().contains("hosts[0].key_file"), "{err}");
    }

    #[test]
    fn credentials_need_a_usable_key_per_host_and_are_never_echoed() {
        let provider = |credentials: Option<&str>| ProviderConfig {
            id: ProviderId::new(),
            tenant_id: TenantId::new(),
            name: "byo".into(),
            provider_type: ProviderType::Ssh,
            credentials: credentials.map(Secret::new),
            config: json!({"hosts": [host()]}),
            created_at: nimbus_types::now(),
        };
        let err = SshConfig::from_provider(&provider(None)).unwrap_err();
        assert!(err.to_string().contains("credentials"), "{err}");
        let err = SshConfig::from_provider(&provider(Some("{\"keys\": \"hunter2"))).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = SshConfig::from_provider(&provider(Some(r#"{"keys": {"other:22": "x"}}"#)))
            .unwrap_err();
        assert!(err.to_string().contains("10.0.0.5:22"), "{err}");
        let err =
            SshConfig::from_provider(&provider(Some(r#"{"keys": {"10.0.0.5:22": "hunter2"}}"#)))
                .unwrap_err();
        assert!(err.to_string().contains("not a private key"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
