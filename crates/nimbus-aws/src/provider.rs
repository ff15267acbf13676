//! [`AwsProvider`]: machines are EC2 instances — Linux ones anywhere, macOS ones on dedicated
//! hosts Nimbus allocates, reuses and releases.
//!
//! Lean state: nothing is remembered between calls except in-flight host claims. Every answer
//! comes from DescribeInstances/DescribeHosts filtered by Nimbus's tags, so a fresh provider (a
//! restarted daemon, a wiped store) sees the same fleet.
//!
//! Crash safety: RunInstances and AllocateHosts carry a ClientToken derived from the machine id;
//! before creating anything, and after any failure that may have taken effect (5xx, timeout),
//! `provision` looks for a resource tagged with the machine id and adopts it. Whatever is tagged
//! but known to no intent shows up in `list_machines`, where the lifecycle layer's reconciler
//! finds it and calls `terminate`; a second instance tagged for one machine (an endpoint that
//! ignored the ClientToken) is listed too, and the reconciler removes just that instance with
//! `remove_duplicate`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    AutoPlacement, Filter, HttpTokensState, InstanceMetadataOptionsRequest, Placement,
    ResourceType, Tag, Tenancy,
};
use base64::Engine;
use nimbus_provider::{
    DedicatedHost, Error, Provider, ProviderMachine, ProviderStatus, ProvisionRequest, Result,
};
use nimbus_setup::events::Events;
use nimbus_setup::exec::Exec;
use nimbus_setup::ssh::{HostKeyStore, MemoryHostKeyStore, SshExec, SshOptions, SshTarget};
use nimbus_types::event::{self, Event};
use nimbus_types::{
    Arch, CanTerminate, Machine, MachineId, MachineSpec, Os, ProviderConfig, ProviderId,
    ProviderMetadata, ProviderType, Secret, TenantId,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::api::{ApiError, CallCtx, Ec2, ErrorKind, Retry, RetryPolicy};
use crate::clock::Clock;
use crate::config::{self, AwsConfig, AwsCredentials};
use crate::events::{EventSink, TracingSink};
use crate::hosts::{self, Host, HostState};
use crate::tags;

/// Instance states in which an instance still exists (and costs).
const LIVE_STATES: &[&str] = &["pending", "running", "shutting-down", "stopping", "stopped"];

/// The idempotency token of the RunInstances request for a machine (≤ 64 ASCII characters).
pub fn run_client_token(machine_id: MachineId) -> String {
    format!("nimbus-run-{}", machine_id.as_uuid().simple())
}

/// The token of a RunInstances request for a machine in one placement (a zone's subnet, a
/// dedicated host). EC2 answers `IdempotentParameterMismatch` when one token comes back with
/// other parameters, so each placement tried gets its own, stable across retries.
pub fn run_client_token_at(machine_id: MachineId, placement: &str) -> String {
    let digest = Sha256::digest(format!("{machine_id}/{placement}"));
    format!("nimbus-run-{}", &hex::encode(digest)[..40])
}

/// The idempotency token of the AllocateHosts request for a machine in one zone.
pub fn host_client_token(machine_id: MachineId, availability_zone: &str) -> String {
    let digest = Sha256::digest(format!("{machine_id}/{availability_zone}"));
    format!("nimbus-host-{}", &hex::encode(digest)[..40])
}

/// `nimbus-<tenant id>-<12 hex of the key's SHA-256>`: shared by the tenant's providers that
/// use the same key, distinct for a different key (EC2 never overwrites a key pair by name).
pub fn default_key_name(tenant_id: TenantId, public_key: &str) -> String {
    let body = public_key.split_whitespace().nth(1).unwrap_or(public_key);
    let digest = Sha256::digest(body.as_bytes());
    format!("nimbus-{tenant_id}-{}", &hex::encode(digest)[..12])
}

/// One EC2 instance as Nimbus reads it.
#[derive(Clone, Debug)]
struct InstanceInfo {
    instance_id: String,
    machine_id: Option<MachineId>,
    tenant_id: Option<TenantId>,
    provider_id: Option<String>,
    state: String,
    host_id: Option<String>,
    availability_zone: Option<String>,
    instance_type: Option<String>,
    image_id: Option<String>,
    key_name: Option<String>,
    private_ip: Option<String>,
    public_ip: Option<String>,
    launched_at: Option<OffsetDateTime>,
}

impl InstanceInfo {
    fn from_ec2(instance: &aws_sdk_ec2::types::Instance) -> Option<Self> {
        let tags = tags::to_map(instance.tags());
        let placement = instance.placement();
        Some(InstanceInfo {
            instance_id: instance.instance_id()?.to_owned(),
            machine_id: tags::machine_id(&tags),
            tenant_id: tags::tenant_id(&tags),
            provider_id: tags.get(tags::PROVIDER).map(|id| (*id).to_owned()),
            state: instance
                .state()
                .and_then(|state| state.name())
                .map(|name| name.as_str().to_owned())
                .unwrap_or_default(),
            host_id: placement
                .and_then(|p| p.host_id())
                .filter(|id| !id.is_empty())
                .map(str::to_owned),
            availability_zone: placement
                .and_then(|p| p.availability_zone())
                .map(str::to_owned),
            instance_type: instance.instance_type().map(|t| t.as_str().to_owned()),
            image_id: instance.image_id().map(str::to_owned),
            key_name: instance.key_name().map(str::to_owned),
            private_ip: instance.private_ip_address().map(str::to_owned),
            public_ip: instance.public_ip_address().map(str::to_owned),
            launched_at: instance.launch_time().and_then(to_offset),
        })
    }

    fn is_live(&self) -> bool {
        LIVE_STATES.contains(&self.state.as_str())
    }

    fn status(&self) -> ProviderStatus {
        match self.state.as_str() {
            "pending" => ProviderStatus::Pending,
            "running" => ProviderStatus::Running,
            "stopped" => ProviderStatus::Stopped,
            _ => ProviderStatus::Stopping,
        }
    }
}

fn to_offset(at: &aws_sdk_ec2::primitives::DateTime) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(at.secs())
        .ok()
        .map(|t| t + time::Duration::nanoseconds(i64::from(at.subsec_nanos())))
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| (*v).to_owned()).collect()))
        .build()
}

/// What [`AwsProvider::reconcile_hosts`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostReconcileReport {
    pub released: Vec<String>,
    /// Hosts kept, with why: in use, scrubbing before its minimum ends, minimum not over.
    pub kept: Vec<(String, String)>,
    /// Hosts EC2 refused to release, with its reason; tried again next time.
    pub failed: Vec<(String, String)>,
}

/// Which machine a host is being given to right now; released when `provision` returns.
struct HostClaim<'a> {
    claims: &'a Mutex<HashMap<String, MachineId>>,
    host_id: String,
}

impl Drop for HostClaim<'_> {
    fn drop(&mut self) {
        self.claims
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.host_id);
    }
}

/// What a machine will be made of.
struct Plan {
    instance_type: String,
    image_id: String,
    user_data: Option<String>,
}

pub struct AwsProvider {
    ec2: Ec2,
    config: AwsConfig,
    tenant_id: TenantId,
    provider_id: ProviderId,
    clock: Arc<dyn Clock>,
    events: Arc<dyn EventSink>,
    /// The key pair name once imported (outer `None`: not resolved yet).
    key_pair: tokio::sync::Mutex<Option<Option<String>>>,
    /// Serializes choosing, allocating and releasing hosts within this process.
    host_selection: tokio::sync::Mutex<()>,
    host_claims: Mutex<HashMap<String, MachineId>>,
    /// What setup logs in with (`credentials.ssh_private_key`).
    ssh_key: Option<Secret>,
    ssh_host_keys: Arc<dyn HostKeyStore>,
    ssh_options: SshOptions,
    /// One SSH connection per machine, reused across setup steps.
    execs: Mutex<HashMap<MachineId, Arc<SshExec>>>,
}

impl std::fmt::Debug for AwsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsProvider")
            .field("provider_id", &self.provider_id)
            .field("tenant_id", &self.tenant_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AwsProvider {
    /// A provider for one stored configuration. Talks to EC2 only when used.
    pub fn new(provider: &ProviderConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        if provider.provider_type != ProviderType::Aws {
            return Err(Error::InvalidConfig {
                field: "type".into(),
                message: format!("expected aws, got {}", provider.provider_type),
            });
        }
        let config = AwsConfig::from_json(&provider.config)?;
        let credentials = AwsCredentials::from_secret(provider.credentials.as_ref())?;
        Ok(Self::from_parts(
            config,
            credentials,
            provider.tenant_id,
            provider.id,
            clock,
        ))
    }

    pub fn from_parts(
        config: AwsConfig,
        credentials: Option<AwsCredentials>,
        tenant_id: TenantId,
        provider_id: ProviderId,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let events: Arc<dyn EventSink> = Arc::new(TracingSink);
        let ssh_key = credentials
            .as_ref()
            .and_then(|credentials| credentials.ssh_private_key.clone());
        AwsProvider {
            ec2: Ec2::new(
                config.clone(),
                credentials,
                tenant_id,
                provider_id,
                events.clone(),
                RetryPolicy::default(),
            ),
            config,
            tenant_id,
            provider_id,
            clock,
            events,
            key_pair: tokio::sync::Mutex::new(None),
            host_selection: tokio::sync::Mutex::new(()),
            host_claims: Mutex::new(HashMap::new()),
            ssh_key,
            ssh_host_keys: MemoryHostKeyStore::new(),
            ssh_options: SshOptions::default(),
            execs: Mutex::new(HashMap::new()),
        }
    }

    /// Pins SSH host keys in `host_keys` (the daemon's store) instead of memory.
    pub fn with_ssh(mut self, host_keys: Arc<dyn HostKeyStore>, options: SshOptions) -> Self {
        self.ssh_host_keys = host_keys;
        self.ssh_options = options;
        self
    }

    /// Sends events to `sink` instead of `tracing`.
    pub fn with_events(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.ec2.events = sink.clone();
        self.events = sink;
        self
    }

    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.ec2.retry = retry;
        self
    }

    pub fn config(&self) -> &AwsConfig {
        &self.config
    }

    pub fn provider_id(&self) -> ProviderId {
        self.provider_id
    }

    fn base_tags(&self) -> Vec<(String, String)> {
        tags::base(self.tenant_id, self.provider_id, &self.config.tags)
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    // ---- reading -----------------------------------------------------------------------

    /// Live instances of this provider matching `filters` (besides the provider tag and the
    /// live states), oldest first. Filters are re-checked here: not every EC2-compatible
    /// endpoint applies them all.
    async fn instances(&self, ctx: CallCtx, extra: Vec<Filter>) -> Result<Vec<InstanceInfo>> {
        let provider_id = self.provider_id.to_string();
        let mut filters = vec![
            filter(&format!("tag:{}", tags::PROVIDER), &[&provider_id]),
            filter("instance-state-name", LIVE_STATES),
        ];
        filters.extend(extra);
        let mut out = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let token = next_token.clone();
            let page = self
                .ec2
                .call("DescribeInstances", ctx, Retry::Transient, |client| {
                    client
                        .describe_instances()
                        .set_filters(Some(filters.clone()))
                        .set_next_token(token.clone())
                        .max_results(1000)
                        .send()
                })
                .await?;
            for reservation in page.reservations() {
                for instance in reservation.instances() {
                    if let Some(info) = InstanceInfo::from_ec2(instance)
                        && info.is_live()
                        && info.provider_id.as_deref() == Some(provider_id.as_str())
                    {
                        out.push(info);
                    }
                }
            }
            next_token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if next_token.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| {
            a.launched_at
                .cmp(&b.launched_at)
                .then_with(|| a.instance_id.cmp(&b.instance_id))
        });
        Ok(out)
    }

    /// Live instances tagged with this machine id, oldest first.
    async fn machine_instances(&self, machine_id: MachineId) -> Result<Vec<InstanceInfo>> {
        let id = machine_id.to_string();
        let instances = self
            .instances(
                CallCtx::machine(machine_id),
                vec![filter(&format!("tag:{}", tags::MACHINE), &[&id])],
            )
            .await?;
        Ok(instances
            .into_iter()
            .filter(|info| info.machine_id == Some(machine_id))
            .collect())
    }

    /// Every dedicated host of this provider that EC2 has not released, as Nimbus sees it.
    pub async fn list_hosts(&self) -> Result<Vec<Host>> {
        let instances = self.instances(CallCtx::default(), Vec::new()).await?;
        self.hosts(CallCtx::default(), None, &instances).await
    }

    /// Hosts of this provider (only `ids` when given), with occupancy from `instances` and
    /// from EC2's own host↔instance view.
    async fn hosts(
        &self,
        ctx: CallCtx,
        ids: Option<Vec<String>>,
        instances: &[InstanceInfo],
    ) -> Result<Vec<Host>> {
        let provider_id = self.provider_id.to_string();
        let by_id = ids.is_some();
        // EC2 rejects MaxResults together with HostIds, and some endpoints ignore `tag:`
        // filters on hosts: filter by tag key there and by value here.
        let mut raw_hosts = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let token = next_token.clone();
            let page = self
                .ec2
                .call("DescribeHosts", ctx, Retry::Transient, |client| {
                    let request = client.describe_hosts().set_host_ids(ids.clone());
                    if by_id {
                        request.send()
                    } else {
                        request
                            .filter(filter("tag-key", &[tags::PROVIDER]))
                            .set_next_token(token.clone())
                            .send()
                    }
                })
                .await;
            let page = match page {
                Ok(page) => page,
                Err(err) if err.kind == ErrorKind::NotFound => return Ok(Vec::new()),
                Err(err) => return Err(err.into()),
            };
            raw_hosts.extend(page.hosts().iter().cloned());
            next_token = page
                .next_token()
                .filter(|t| !t.is_empty() && !by_id)
                .map(str::to_owned);
            if next_token.is_none() {
                break;
            }
        }
        let now = self.now();
        let min_hours = i64::from(self.config.host_min_allocation_hours);
        let mut out = Vec::new();
        for host in &raw_hosts {
            let Some(id) = host.host_id() else { continue };
            let host_tags = tags::to_map(host.tags());
            if host_tags.get(tags::PROVIDER) != Some(&provider_id.as_str()) {
                continue;
            }
            let mut instance_ids: Vec<String> = instances
                .iter()
                .filter(|info| info.host_id.as_deref() == Some(id) && info.is_live())
                .map(|info| info.instance_id.clone())
                .collect();
            for on_host in host.instances() {
                if let Some(instance_id) = on_host.instance_id()
                    && !instance_ids.iter().any(|known| known == instance_id)
                {
                    instance_ids.push(instance_id.to_owned());
                }
            }
            let ec2_state = host
                .state()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default();
            let scrub_until = host_tags.get(tags::SCRUB_UNTIL).and_then(|at| {
                OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
            });
            let allocated_at = host.allocation_time().and_then(to_offset).unwrap_or(now);
            out.push(Host {
                id: id.to_owned(),
                instance_type: host
                    .host_properties()
                    .and_then(|p| p.instance_type())
                    .map(str::to_owned),
                availability_zone: host.availability_zone().map(str::to_owned),
                state: hosts::derive_state(&ec2_state, instance_ids.len(), scrub_until, now),
                ec2_state,
                allocated_at,
                releasable_at: allocated_at + time::Duration::hours(min_hours),
                tenant_id: tags::tenant_id(&host_tags),
                provider_id: host_tags.get(tags::PROVIDER).and_then(|id| id.parse().ok()),
                machine_id: tags::machine_id(&host_tags),
                instance_ids,
            });
        }
        out.retain(|host| host.state != HostState::Released);
        Ok(out)
    }

    /// The EC2 Mac instance type machines of `spec` get; `None` for Linux machines.
    fn mac_instance_type(&self, spec: &MachineSpec) -> Option<String> {
        if spec.os != Os::Macos {
            return None;
        }
        Some(match (&spec.instance_type, spec.arch) {
            (Some(instance_type), _) => instance_type.clone(),
            (None, Arch::Arm64) => self
                .config
                .mac_instance_type
                .clone()
                .unwrap_or_else(|| config::DEFAULT_MAC_ARM64_INSTANCE_TYPE.to_owned()),
            (None, Arch::X86_64) => config::DEFAULT_MAC_X86_64_INSTANCE_TYPE.to_owned(),
        })
    }

    async fn host(&self, ctx: CallCtx, host_id: &str) -> Result<Option<Host>> {
        let instances = self.instances(ctx, Vec::new()).await?;
        Ok(self
            .hosts(ctx, Some(vec![host_id.to_owned()]), &instances)
            .await?
            .into_iter()
            .next())
    }

    fn view(&self, info: &InstanceInfo, host: Option<&Host>) -> ProviderMachine {
        let mut metadata = ProviderMetadata {
            instance_id: Some(info.instance_id.clone()),
            host_id: info.host_id.clone(),
            ..ProviderMetadata::default()
        };
        let extra = &mut metadata.extra;
        for (key, value) in [
            ("availability_zone", &info.availability_zone),
            ("instance_type", &info.instance_type),
            ("image_id", &info.image_id),
            ("key_name", &info.key_name),
            ("private_ip", &info.private_ip),
            ("instance_state", &Some(info.state.clone())),
        ] {
            if let Some(value) = value {
                extra.insert(key.to_owned(), value.clone());
            }
        }
        if info.host_id.is_some() {
            metadata.minimum_allocation_hours = Some(self.config.host_min_allocation_hours);
        }
        if let Some(host) = host {
            let rfc3339 = &time::format_description::well_known::Rfc3339;
            if let Ok(at) = host.allocated_at.format(rfc3339) {
                extra.insert("host_allocated_at".into(), at);
            }
            if let Ok(at) = host.releasable_at.format(rfc3339) {
                extra.insert("host_releasable_at".into(), at);
            }
        }
        ProviderMachine {
            machine_id: info.machine_id,
            tenant_id: info.tenant_id,
            status: info.status(),
            ip_address: info.public_ip.clone().or_else(|| info.private_ip.clone()),
            ssh_public_key: self.config.ssh_public_key.clone(),
            created_at: info.launched_at.unwrap_or_else(|| self.now()),
            metadata,
        }
    }

    async fn view_with_host(&self, ctx: CallCtx, info: &InstanceInfo) -> Result<ProviderMachine> {
        let host = match &info.host_id {
            Some(host_id) => self.host(ctx, host_id).await?,
            None => None,
        };
        Ok(self.view(info, host.as_ref()))
    }

    // ---- provisioning ------------------------------------------------------------------

    fn plan(&self, request: &ProvisionRequest) -> Result<Plan> {
        let spec = &request.spec;
        spec.validate()
            .map_err(|err| Error::Permanent(format!("invalid spec: {err}")))?;
        let instance_type = match (&spec.instance_type, spec.os) {
            (Some(instance_type), Os::Macos) => {
                if !config::is_mac_instance_type(instance_type) {
                    return Err(Error::Permanent(format!(
                        "invalid spec: instance_type: {instance_type:?} is not an EC2 Mac type (mac*.metal)"
                    )));
                }
                if config::mac_arch(instance_type) != spec.arch {
                    return Err(Error::Permanent(format!(
                        "invalid spec: instance_type: {instance_type} is not a {} type",
                        spec.arch
                    )));
                }
                instance_type.clone()
            }
            (Some(instance_type), Os::Linux) => {
                if config::is_mac_instance_type(instance_type) {
                    return Err(Error::Permanent(format!(
                        "invalid spec: instance_type: {instance_type} runs macOS, not Linux"
                    )));
                }
                instance_type.clone()
            }
            (None, Os::Macos) => match spec.arch {
                Arch::Arm64 => self
                    .config
                    .mac_instance_type
                    .clone()
                    .unwrap_or_else(|| config::DEFAULT_MAC_ARM64_INSTANCE_TYPE.to_owned()),
                Arch::X86_64 => config::DEFAULT_MAC_X86_64_INSTANCE_TYPE.to_owned(),
            },
            (None, Os::Linux) => match spec.arch {
                Arch::X86_64 => self
                    .config
                    .linux_instance_type
                    .clone()
                    .unwrap_or_else(|| config::DEFAULT_LINUX_X86_64_INSTANCE_TYPE.to_owned()),
                Arch::Arm64 => self
                    .config
                    .linux_arm64_instance_type
                    .clone()
                    .unwrap_or_else(|| config::DEFAULT_LINUX_ARM64_INSTANCE_TYPE.to_owned()),
            },
        };
        let image_id = match &spec.image_id {
            Some(image_id) => image_id.clone(),
            None => self
                .config
                .image_ids
                .get(spec.os, spec.arch)
                .map(str::to_owned)
                .ok_or_else(|| Error::InvalidConfig {
                    field: format!("config.image_ids.{}_{}", spec.os, spec.arch),
                    message: format!(
                        "no AMI for {} {}: set it, or give the spec an image_id",
                        spec.os, spec.arch
                    ),
                })?,
        };
        let script = spec.setup_script.as_deref().filter(|_| spec.skip_setup);
        let user_data = compose_user_data(self.config.user_data.as_deref(), script);
        if let Some(user_data) = &user_data
            && user_data.len() > config::MAX_USER_DATA
        {
            return Err(Error::Permanent(format!(
                "invalid spec: setup_script: user data would be {} bytes; EC2 allows {}",
                user_data.len(),
                config::MAX_USER_DATA
            )));
        }
        Ok(Plan {
            instance_type,
            image_id,
            user_data,
        })
    }

    /// The key pair instances get: imported once per provider when `ssh_public_key` is set.
    async fn key_name(&self, ctx: CallCtx) -> Result<Option<String>> {
        let mut cached = self.key_pair.lock().await;
        if let Some(name) = &*cached {
            return Ok(name.clone());
        }
        let Some(public_key) = &self.config.ssh_public_key else {
            *cached = Some(self.config.key_name.clone());
            return Ok(self.config.key_name.clone());
        };
        let name = self
            .config
            .key_name
            .clone()
            .unwrap_or_else(|| default_key_name(self.tenant_id, public_key));
        let key_tags = self.base_tags();
        let imported = self
            .ec2
            .call("ImportKeyPair", ctx, Retry::Transient, |client| {
                client
                    .import_key_pair()
                    .key_name(&name)
                    .public_key_material(Blob::new(public_key.trim().as_bytes()))
                    .tag_specifications(tags::specification(ResourceType::KeyPair, &key_tags))
                    .send()
            })
            .await;
        match imported {
            Ok(_) => {
                tracing::info!(provider.id = %self.provider_id, key_name = %name, "imported the tenant's key pair");
            }
            // Imported before (by this daemon or an earlier one): the name is all we need.
            Err(err) if err.kind == ErrorKind::Duplicate => {}
            Err(err) => return Err(err.into()),
        }
        *cached = Some(Some(name.clone()));
        Ok(Some(name))
    }

    /// Forgets the imported key pair, so the next provision imports it again.
    async fn forget_key_pair(&self) {
        *self.key_pair.lock().await = None;
    }

    /// RunInstances for the machine, retried after ambiguous failures only when no instance
    /// carries the machine's tag yet (the ClientToken makes the retry safe on EC2 itself).
    async fn run_instance(
        &self,
        request: &ProvisionRequest,
        plan: &Plan,
        host: Option<&Host>,
        availability_zone: Option<&str>,
    ) -> std::result::Result<InstanceInfo, RunError> {
        let ctx = CallCtx::machine(request.machine_id);
        let token = match (host, availability_zone) {
            (Some(host), _) => run_client_token_at(request.machine_id, &host.id),
            (None, Some(zone)) => run_client_token_at(request.machine_id, zone),
            (None, None) => run_client_token(request.machine_id),
        };
        let mut instance_tags = self.base_tags();
        instance_tags.push((tags::MACHINE.into(), request.machine_id.to_string()));
        instance_tags.push((tags::OS.into(), request.spec.os.to_string()));
        instance_tags.push((tags::ARCH.into(), request.spec.arch.to_string()));
        instance_tags.push(("Name".into(), format!("nimbus-{}", request.machine_id)));
        let subnet = self
            .config
            .subnet_for(availability_zone.or(host.and_then(|h| h.availability_zone.as_deref())));
        let user_data = plan
            .user_data
            .as_ref()
            .map(|data| base64::engine::general_purpose::STANDARD.encode(data));
        let placement = host.map(|host| {
            Placement::builder()
                .host_id(&host.id)
                .tenancy(Tenancy::Host)
                .set_availability_zone(host.availability_zone.clone())
                .build()
        });
        let mut attempt = 1;
        let mut reimported = false;
        loop {
            let key_name = self.key_name(ctx).await.map_err(RunError::Other)?;
            let key_name = key_name.as_deref();
            let result = self
                .ec2
                .call("RunInstances", ctx, Retry::Throttling, |client| {
                    client
                        .run_instances()
                        .image_id(&plan.image_id)
                        .instance_type(plan.instance_type.as_str().into())
                        .min_count(1)
                        .max_count(1)
                        .client_token(&token)
                        .set_placement(placement.clone())
                        .set_subnet_id(subnet.map(str::to_owned))
                        .set_security_group_ids(
                            Some(self.config.security_group_ids.clone())
                                .filter(|ids| !ids.is_empty()),
                        )
                        .set_key_name(key_name.map(str::to_owned))
                        .set_user_data(user_data.clone())
                        .metadata_options(
                            InstanceMetadataOptionsRequest::builder()
                                .http_tokens(HttpTokensState::Required)
                                .build(),
                        )
                        .tag_specifications(tags::specification(
                            ResourceType::Instance,
                            &instance_tags,
                        ))
                        .tag_specifications(tags::specification(
                            ResourceType::Volume,
                            &instance_tags,
                        ))
                        .send()
                })
                .await;
            match result {
                Ok(output) => {
                    let info = output
                        .instances()
                        .iter()
                        .find_map(InstanceInfo::from_ec2)
                        .ok_or_else(|| {
                            RunError::Other(Error::Retryable(
                                "ec2 RunInstances: the response lists no instance".into(),
                            ))
                        })?;
                    return Ok(InstanceInfo {
                        machine_id: Some(request.machine_id),
                        tenant_id: Some(request.tenant_id),
                        provider_id: Some(self.provider_id.to_string()),
                        ..info
                    });
                }
                Err(err) if err.kind == ErrorKind::Transient => {
                    // It may have run: adopt what carries the machine's tag before trying again.
                    if let Some(found) = self
                        .machine_instances(request.machine_id)
                        .await
                        .map_err(RunError::Other)?
                        .into_iter()
                        .next()
                    {
                        tracing::info!(machine.id = %request.machine_id, instance.id = %found.instance_id, "adopted the instance of an interrupted RunInstances");
                        return Ok(found);
                    }
                    if attempt >= self.ec2.retry.max_attempts.max(1) {
                        return Err(RunError::Other(err.into()));
                    }
                    tokio::time::sleep(self.ec2.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(err) if err.kind == ErrorKind::Capacity => return Err(RunError::Capacity(err)),
                // Someone deleted the imported key pair: import it again, once.
                Err(err)
                    if err.code.as_deref() == Some("InvalidKeyPair.NotFound")
                        && self.config.ssh_public_key.is_some()
                        && !reimported =>
                {
                    tracing::warn!(provider.id = %self.provider_id, "the tenant's key pair is gone from EC2, importing it again");
                    self.forget_key_pair().await;
                    reimported = true;
                }
                Err(err) => return Err(RunError::Other(err.into())),
            }
        }
    }

    async fn provision_linux(
        &self,
        request: &ProvisionRequest,
        plan: &Plan,
    ) -> Result<ProviderMachine> {
        // Zones with their own subnet are tried in order; otherwise EC2 picks from the default
        // (or configured) subnet.
        let zones: Vec<Option<&str>> = if self.config.az_subnet_ids.is_empty() {
            vec![None]
        } else {
            self.config
                .availability_zones
                .iter()
                .filter(|az| self.config.az_subnet_ids.contains_key(*az))
                .map(|az| Some(az.as_str()))
                .chain(std::iter::once(None).filter(|_| self.config.subnet_id.is_some()))
                .collect()
        };
        let mut capacity = Vec::new();
        for zone in zones.iter().copied() {
            match self.run_instance(request, plan, None, zone).await {
                Ok(info) => return Ok(self.view(&info, None)),
                Err(RunError::Capacity(err)) => {
                    tracing::info!(machine.id = %request.machine_id, zone = zone.unwrap_or("default"), code = err.code.as_deref(), "no instance capacity, trying the next zone");
                    capacity.push(format!(
                        "{}: {}",
                        zone.unwrap_or("default subnet"),
                        err.message
                    ));
                }
                Err(RunError::Other(err)) => return Err(err),
            }
        }
        Err(Error::Retryable(format!(
            "no capacity for {} ({})",
            plan.instance_type,
            capacity.join("; ")
        )))
    }

    async fn provision_mac(
        &self,
        request: &ProvisionRequest,
        plan: &Plan,
    ) -> Result<ProviderMachine> {
        let (host, _claim) = self.acquire_host(request, &plan.instance_type).await?;
        match self.run_instance(request, plan, Some(&host), None).await {
            Ok(info) => Ok(self.view(&info, Some(&host))),
            // The host stays allocated and tagged for this machine: a retry (or another
            // machine) uses it.
            Err(RunError::Capacity(err)) => Err(err.into()),
            Err(RunError::Other(err)) => Err(err),
        }
    }

    /// A host for the machine: the one already given to it (after a crash), else an idle one
    /// this provider holds, else a new one from the first zone with capacity.
    async fn acquire_host(
        &self,
        request: &ProvisionRequest,
        instance_type: &str,
    ) -> Result<(Host, HostClaim<'_>)> {
        let ctx = CallCtx::machine(request.machine_id);
        let _selection = self.host_selection.lock().await;
        let instances = self.instances(ctx, Vec::new()).await?;
        let hosts = self.hosts(ctx, None, &instances).await?;
        let claimed: HashMap<String, MachineId> = self
            .host_claims
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let usable = |host: &&Host| {
            host.state == HostState::Idle
                && host.instance_type.as_deref() == Some(instance_type)
                && claimed
                    .get(&host.id)
                    .is_none_or(|m| *m == request.machine_id)
                && (self.config.availability_zones.is_empty()
                    || host
                        .availability_zone
                        .as_ref()
                        .is_some_and(|az| self.config.availability_zones.contains(az)))
        };
        let own = hosts
            .iter()
            .filter(usable)
            .find(|host| host.machine_id == Some(request.machine_id));
        // Among idle hosts, take the one with the most of its minimum period left: those
        // hours are paid anyway, and the oldest host becomes releasable soonest.
        let idle = hosts
            .iter()
            .filter(usable)
            .max_by_key(|host| (host.releasable_at, host.id.clone()));
        let host = match own.or(idle) {
            Some(host) => {
                if host.machine_id != Some(request.machine_id) {
                    let machine = request.machine_id.to_string();
                    self.ec2
                        .call("CreateTags", ctx, Retry::Transient, |client| {
                            client
                                .create_tags()
                                .resources(&host.id)
                                .tags(Tag::builder().key(tags::MACHINE).value(&machine).build())
                                .send()
                        })
                        .await?;
                }
                tracing::info!(machine.id = %request.machine_id, host.id = %host.id, "reusing a dedicated host this provider holds");
                Host {
                    machine_id: Some(request.machine_id),
                    ..host.clone()
                }
            }
            None => self.allocate_host(request, instance_type).await?,
        };
        self.host_claims
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(host.id.clone(), request.machine_id);
        let claim = HostClaim {
            claims: &self.host_claims,
            host_id: host.id.clone(),
        };
        Ok((host, claim))
    }

    async fn allocate_host(&self, request: &ProvisionRequest, instance_type: &str) -> Result<Host> {
        let ctx = CallCtx::machine(request.machine_id);
        if self.config.availability_zones.is_empty() {
            return Err(Error::InvalidConfig {
                field: "config.availability_zones".into(),
                message: "macOS machines need at least one zone to allocate a dedicated host in"
                    .into(),
            });
        }
        let mut host_tags = self.base_tags();
        host_tags.push((tags::MACHINE.into(), request.machine_id.to_string()));
        host_tags.push(("Name".into(), format!("nimbus-{}", self.provider_id)));
        let mut capacity = Vec::new();
        for az in &self.config.availability_zones {
            let token = host_client_token(request.machine_id, az);
            let mut attempt = 1;
            let host_id = loop {
                let result = self
                    .ec2
                    .call("AllocateHosts", ctx, Retry::Throttling, |client| {
                        client
                            .allocate_hosts()
                            .availability_zone(az)
                            .instance_type(instance_type)
                            .quantity(1)
                            .auto_placement(AutoPlacement::Off)
                            .client_token(&token)
                            .tag_specifications(tags::specification(
                                ResourceType::DedicatedHost,
                                &host_tags,
                            ))
                            .send()
                    })
                    .await;
                match result {
                    Ok(output) => match output.host_ids().first() {
                        Some(id) => break Some(id.clone()),
                        None => {
                            return Err(Error::Retryable(
                                "ec2 AllocateHosts: the response lists no host".into(),
                            ));
                        }
                    },
                    Err(err) if err.kind == ErrorKind::Capacity => {
                        tracing::info!(machine.id = %request.machine_id, zone = %az, code = err.code.as_deref(), "no dedicated host capacity, trying the next zone");
                        capacity.push(format!("{az}: {}", err.message));
                        break None;
                    }
                    Err(err) if err.kind == ErrorKind::Transient => {
                        let instances = self.instances(ctx, Vec::new()).await?;
                        let adopted =
                            self.hosts(ctx, None, &instances)
                                .await?
                                .into_iter()
                                .find(|h| {
                                    h.machine_id == Some(request.machine_id)
                                        && h.availability_zone.as_deref() == Some(az.as_str())
                                });
                        if let Some(host) = adopted {
                            tracing::info!(machine.id = %request.machine_id, host.id = %host.id, "adopted the host of an interrupted AllocateHosts");
                            return Ok(host);
                        }
                        if attempt >= self.ec2.retry.max_attempts.max(1) {
                            return Err(err.into());
                        }
                        tokio::time::sleep(self.ec2.retry.backoff(attempt)).await;
                        attempt += 1;
                    }
                    Err(err) => return Err(err.into()),
                }
            };
            let Some(host_id) = host_id else { continue };
            tracing::info!(machine.id = %request.machine_id, host.id = %host_id, zone = %az, instance_type, "allocated a dedicated host");
            return match self.host(ctx, &host_id).await? {
                Some(host) => Ok(host),
                None => Err(Error::Retryable(format!(
                    "dedicated host {host_id} was allocated but is not listed yet"
                ))),
            };
        }
        Err(Error::Retryable(format!(
            "no dedicated host capacity for {instance_type} in {} ({})",
            self.config.availability_zones.join(", "),
            capacity.join("; ")
        )))
    }

    // ---- terminating -------------------------------------------------------------------

    async fn terminate_instances(&self, ctx: CallCtx, ids: &[String]) -> Result<()> {
        for id in ids {
            let result = self
                .ec2
                .call("TerminateInstances", ctx, Retry::Transient, |client| {
                    client.terminate_instances().instance_ids(id).send()
                })
                .await;
            match result {
                Ok(_) => {}
                Err(err) if err.kind == ErrorKind::NotFound => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// After instances on `host_id` ended: mark the scrubbing window, and release the host when
    /// its minimum allocation period is over and nothing else uses it.
    async fn after_instances_ended(
        &self,
        ctx: CallCtx,
        host_id: &str,
        ended_now: bool,
    ) -> Result<()> {
        let _selection = self.host_selection.lock().await;
        let now = self.now();
        if ended_now {
            let until = (now + time::Duration::minutes(i64::from(self.config.host_scrub_minutes)))
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(|err| Error::Permanent(format!("formatting a time: {err}")))?;
            let result = self
                .ec2
                .call("CreateTags", ctx, Retry::Transient, |client| {
                    client
                        .create_tags()
                        .resources(host_id)
                        .tags(Tag::builder().key(tags::SCRUB_UNTIL).value(&until).build())
                        .send()
                })
                .await;
            match result {
                Ok(_) => {}
                Err(err) if err.kind == ErrorKind::NotFound => return Ok(()),
                Err(err) => return Err(err.into()),
            }
        }
        let Some(host) = self.host(ctx, host_id).await? else {
            return Ok(());
        };
        if self.claimed_by(&host.id).is_some() {
            return Ok(());
        }
        if host.releasable(now) {
            self.release_host(ctx, &host).await?;
        } else {
            tracing::info!(
                host.id = %host.id,
                state = ?host.state,
                hours_remaining = host.hours_remaining(now),
                "keeping the dedicated host for reuse until its minimum allocation period ends"
            );
        }
        Ok(())
    }

    fn claimed_by(&self, host_id: &str) -> Option<MachineId> {
        self.host_claims
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(host_id)
            .copied()
    }

    async fn release_host(&self, ctx: CallCtx, host: &Host) -> Result<()> {
        let output = self
            .ec2
            .call("ReleaseHosts", ctx, Retry::Transient, |client| {
                client.release_hosts().host_ids(&host.id).send()
            })
            .await?;
        if let Some(failure) = output.unsuccessful().first() {
            let reason = failure
                .error()
                .and_then(|e| e.message().or(e.code()))
                .unwrap_or("unknown reason")
                .to_owned();
            return Err(Error::Retryable(format!(
                "ec2 ReleaseHosts: host {} was not released: {reason}",
                host.id
            )));
        }
        tracing::info!(host.id = %host.id, allocated_at = %host.allocated_at, "released the dedicated host");
        self.events.emit(
            Event::new(event::MACHINE_RECONCILED)
                .tenant(self.tenant_id)
                .meta("action", "host_released")
                .meta("host_id", host.id.clone())
                .meta("provider_id", self.provider_id.to_string()),
        );
        Ok(())
    }

    /// Releases every host that is past its minimum allocation period with nothing on it.
    /// Idempotent; meant for the periodic reconciler.
    pub async fn reconcile_hosts(&self) -> Result<HostReconcileReport> {
        let ctx = CallCtx::default();
        let _selection = self.host_selection.lock().await;
        let instances = self.instances(ctx, Vec::new()).await?;
        let hosts = self.hosts(ctx, None, &instances).await?;
        let now = self.now();
        let mut report = HostReconcileReport::default();
        for host in hosts {
            if self.claimed_by(&host.id).is_some() {
                report
                    .kept
                    .push((host.id, "being given to a machine".into()));
            } else if !host.releasable(now) {
                let why = if host.past_minimum(now) {
                    format!("{:?}", host.state)
                } else {
                    format!(
                        "minimum allocation period: {:.1} hours remaining",
                        host.hours_remaining(now)
                    )
                };
                report.kept.push((host.id, why));
            } else {
                match self.release_host(ctx, &host).await {
                    Ok(()) => report.released.push(host.id),
                    Err(err) => {
                        tracing::warn!(host.id = %host.id, error = %err, "could not release a dedicated host");
                        report.failed.push((host.id, err.to_string()));
                    }
                }
            }
        }
        Ok(report)
    }
}

enum RunError {
    Capacity(ApiError),
    Other(Error),
}

/// EC2 user data: the operator's (`config.user_data`), then the spec's setup script when setup
/// over SSH is skipped. Two parts become a MIME multi-part archive, which cloud-init runs in order.
fn compose_user_data(operator: Option<&str>, script: Option<&str>) -> Option<String> {
    match (operator, script) {
        (None, None) => None,
        (Some(one), None) | (None, Some(one)) => Some(one.to_owned()),
        (Some(first), Some(second)) => {
            const BOUNDARY: &str = "==NIMBUS-USER-DATA==";
            let part = |body: &str| {
                let content_type = if body.starts_with("#cloud-config") {
                    "text/cloud-config"
                } else {
                    "text/x-shellscript"
                };
                format!(
                    "--{BOUNDARY}\r\nContent-Type: {content_type}; charset=\"utf-8\"\r\nMIME-Version: 1.0\r\n\r\n{body}\r\n"
                )
            };
            Some(format!(
                "Content-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\r\nMIME-Version: 1.0\r\n\r\n{}{}--{BOUNDARY}--\r\n",
                part(first),
                part(second)
            ))
        }
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn provider_type(&self) -> ProviderType {
        ProviderType::Aws
    }

    /// The hosts of the spec's EC2 Mac type, as [`Self::list_hosts`] derives them: an occupied
    /// host names the machine Nimbus gave it (one without that tag is left out); a host EC2
    /// shows scrubbing without Nimbus's `nimbus:scrub-until` tag is counted as scrubbing for a
    /// whole `host_scrub_minutes` from now; unavailable hosts are left out.
    async fn dedicated_hosts(&self, spec: &MachineSpec) -> Result<Option<Vec<DedicatedHost>>> {
        let Some(instance_type) = self.mac_instance_type(spec) else {
            return Ok(None);
        };
        let now = self.now();
        let scrub = time::Duration::minutes(i64::from(self.config.host_scrub_minutes));
        let hosts = self
            .list_hosts()
            .await?
            .into_iter()
            .filter(|host| host.instance_type.as_deref() == Some(instance_type.as_str()))
            .filter_map(|host| {
                let (machine_id, scrubbing_until) = match host.state {
                    // A host occupied by an instance Nimbus did not give it is no capacity of
                    // the pool's, and not the policy's to release.
                    HostState::Occupied => (Some(host.machine_id?), None),
                    HostState::Scrubbing { until } => (None, Some(until.unwrap_or(now + scrub))),
                    HostState::Idle => (None, None),
                    HostState::Unavailable { .. } | HostState::Released => return None,
                };
                Some(DedicatedHost {
                    id: host.id,
                    allocated_at: host.allocated_at,
                    releasable_at: host.releasable_at,
                    machine_id,
                    scrubbing_until,
                })
            })
            .collect();
        Ok(Some(hosts))
    }

    async fn provision(&self, request: &ProvisionRequest) -> Result<ProviderMachine> {
        if request.tenant_id != self.tenant_id || request.provider_id != self.provider_id {
            return Err(Error::Permanent(format!(
                "machine {} belongs to another tenant or provider than provider {}",
                request.machine_id, self.provider_id
            )));
        }
        let plan = self.plan(request)?;
        let ctx = CallCtx::machine(request.machine_id);
        // A retry after a crash: the machine may exist already.
        if let Some(existing) = self
            .machine_instances(request.machine_id)
            .await?
            .into_iter()
            .next()
        {
            tracing::info!(machine.id = %request.machine_id, instance.id = %existing.instance_id, "adopting the machine's existing instance");
            return self.view_with_host(ctx, &existing).await;
        }
        // Import the key pair first: a bad key must fail before a host is paid for.
        self.key_name(ctx).await?;
        match request.spec.os {
            Os::Linux => self.provision_linux(request, &plan).await,
            Os::Macos => self.provision_mac(request, &plan).await,
        }
    }

    async fn terminate(&self, machine: &Machine) -> Result<()> {
        let ctx = CallCtx::machine(machine.id);
        self.execs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&machine.id);
        // Only what carries this provider's and this machine's tags is ever terminated: a stale
        // or foreign instance id in the record must not reach another tenant's instance.
        let instances = self.machine_instances(machine.id).await?;
        let ids: Vec<String> = instances.iter().map(|i| i.instance_id.clone()).collect();
        self.terminate_instances(ctx, &ids).await?;
        let mut host_ids: BTreeMap<String, bool> = instances
            .iter()
            .filter_map(|i| i.host_id.clone())
            .map(|id| (id, true))
            .collect();
        // The instance may be gone already (a terminate interrupted before the host was
        // looked after): still see to the host, if it is this provider's (`hosts` checks).
        if let Some(host_id) = &machine.provider_metadata.host_id {
            host_ids.entry(host_id.clone()).or_insert(false);
        }
        for (host_id, ended_now) in host_ids {
            self.after_instances_ended(ctx, &host_id, ended_now).await?;
        }
        Ok(())
    }

    async fn can_terminate(&self, machine: &Machine) -> Result<CanTerminate> {
        let ctx = CallCtx::machine(machine.id);
        let host_id = match &machine.provider_metadata.host_id {
            Some(host_id) => Some(host_id.clone()),
            None => self
                .machine_instances(machine.id)
                .await?
                .into_iter()
                .find_map(|info| info.host_id),
        };
        let Some(host_id) = host_id else {
            return Ok(CanTerminate::yes());
        };
        let Some(host) = self.host(ctx, &host_id).await? else {
            return Ok(CanTerminate::yes());
        };
        let remaining = host.hours_remaining(self.now());
        if remaining > 0.0 {
            Ok(CanTerminate::minimum_allocation(
                self.config.host_min_allocation_hours,
                remaining,
            ))
        } else {
            Ok(CanTerminate::yes())
        }
    }

    async fn list_machines(&self, tenant_id: TenantId) -> Result<Vec<ProviderMachine>> {
        if tenant_id != self.tenant_id {
            return Ok(Vec::new());
        }
        let ctx = CallCtx::default();
        let tenant = tenant_id.to_string();
        let instances: Vec<InstanceInfo> = self
            .instances(
                ctx,
                vec![filter(&format!("tag:{}", tags::TENANT), &[&tenant])],
            )
            .await?
            .into_iter()
            .filter(|info| info.tenant_id == Some(tenant_id))
            .collect();
        let hosts = if instances.iter().any(|info| info.host_id.is_some()) {
            self.hosts(ctx, None, &instances).await?
        } else {
            Vec::new()
        };
        Ok(instances
            .iter()
            .map(|info| {
                let host = info
                    .host_id
                    .as_ref()
                    .and_then(|id| hosts.iter().find(|h| &h.id == id));
                self.view(info, host)
            })
            .collect())
    }

    async fn get_machine(&self, id: MachineId) -> Result<Option<ProviderMachine>> {
        match self.machine_instances(id).await?.into_iter().next() {
            Some(info) => Ok(Some(
                self.view_with_host(CallCtx::machine(id), &info).await?,
            )),
            None => Ok(None),
        }
    }

    async fn remove_duplicate(&self, resource: &ProviderMachine) -> Result<()> {
        let Some(machine_id) = resource.machine_id else {
            return Err(Error::Permanent(
                "a resource without a nimbus:machine tag is no machine's duplicate".into(),
            ));
        };
        let Some(instance_id) = resource.metadata.instance_id.as_deref() else {
            return Err(Error::Permanent(format!(
                "machine {machine_id}: the duplicate names no instance_id"
            )));
        };
        let ctx = CallCtx::machine(machine_id);
        // Re-read rather than trust the listing: only an instance that carries this provider's
        // and this machine's tags is terminated, and never the machine's last one.
        let instances: Vec<InstanceInfo> = self
            .machine_instances(machine_id)
            .await?
            .into_iter()
            .filter(|info| info.tenant_id == Some(self.tenant_id))
            .collect();
        let Some(duplicate) = instances
            .iter()
            .find(|info| info.instance_id == instance_id)
        else {
            // Gone already (or never this provider's): nothing to do.
            return Ok(());
        };
        if instances.len() < 2 {
            return Err(Error::Permanent(format!(
                "machine {machine_id}: instance {instance_id} is its only instance, not a duplicate"
            )));
        }
        tracing::warn!(
            machine.id = %machine_id,
            instance.id = %instance_id,
            "terminating a second instance of the machine"
        );
        self.terminate_instances(ctx, std::slice::from_ref(&duplicate.instance_id))
            .await?;
        if let Some(host_id) = &duplicate.host_id {
            self.after_instances_ended(ctx, host_id, true).await?;
        }
        self.events.emit(
            Event::new(event::MACHINE_RECONCILED)
                .tenant(self.tenant_id)
                .machine(machine_id)
                .meta("action", "duplicate_terminated")
                .meta("instance_id", duplicate.instance_id.clone())
                .meta("provider_id", self.provider_id.to_string()),
        );
        Ok(())
    }

    async fn exec(&self, machine: &Machine) -> Result<Arc<dyn Exec>> {
        let Some(private_key) = &self.ssh_key else {
            return Err(Error::Permanent(format!(
                "machine {}: the provider has no credentials.ssh_private_key to log in with; add the private key matching ssh_public_key (or key_name), or provision with skip_setup",
                machine.id
            )));
        };
        if let Some(exec) = self
            .execs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&machine.id)
        {
            return Ok(exec.clone());
        }
        let (address, instance_id) = match &machine.ip_address {
            Some(address) => (
                address.clone(),
                machine.provider_metadata.instance_id.clone(),
            ),
            None => {
                let found = self
                    .get_machine(machine.id)
                    .await?
                    .ok_or(Error::NotFound(machine.id))?;
                let address = found.ip_address.ok_or_else(|| {
                    Error::Retryable(format!("machine {} has no IP address yet", machine.id))
                })?;
                (address, found.metadata.instance_id)
            }
        };
        let target = SshTarget {
            // Pin the host key per instance: a new instance is a new host.
            host_id: format!(
                "aws:{}",
                instance_id.unwrap_or_else(|| machine.id.to_string())
            ),
            address,
            port: self.config.ssh_port,
            user: self.config.ssh_user.clone(),
            private_key: private_key.clone(),
        };
        let exec = Arc::new(SshExec::new(
            target,
            self.ssh_host_keys.clone(),
            Events::new(self.events.clone()).for_machine(machine.tenant_id, machine.id),
            self.ssh_options.clone(),
        ));
        self.execs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(machine.id, exec.clone());
        Ok(exec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_are_stable_short_and_distinct() {
        let a = MachineId::new();
        let b = MachineId::new();
        assert_eq!(run_client_token(a), run_client_token(a));
        assert_ne!(run_client_token(a), run_client_token(b));
        assert!(run_client_token(a).len() <= 64);
        assert_eq!(
            host_client_token(a, "us-east-1a"),
            host_client_token(a, "us-east-1a")
        );
        assert_ne!(
            host_client_token(a, "us-east-1a"),
            host_client_token(a, "us-east-1b")
        );
        assert!(host_client_token(a, "us-east-1-bos-1a").len() <= 64);
        assert!(run_client_token(a).is_ascii());
        assert_ne!(
            run_client_token_at(a, "us-east-1a"),
            run_client_token_at(a, "us-east-1b")
        );
        assert_eq!(
            run_client_token_at(a, "h-0123"),
            run_client_token_at(a, "h-0123")
        );
        assert!(run_client_token_at(a, "h-0123456789abcdef0").len() <= 64);
    }

    #[test]
    fn key_names_follow_the_key() {
        let tenant = TenantId::new();
        let a =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG7/PuKk21/JWvuzCILsUiT7OuXa9IfIqp4ar6UW/ssc a";
        let a_renamed =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG7/PuKk21/JWvuzCILsUiT7OuXa9IfIqp4ar6UW/ssc b";
        let b =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxyzBxyzBxyzBxyzBxyzBxyzBxyzBxyzBxyzBxyzBxy b";
        assert_eq!(
            default_key_name(tenant, a),
            default_key_name(tenant, a_renamed)
        );
        assert_ne!(default_key_name(tenant, a), default_key_name(tenant, b));
        assert_ne!(
            default_key_name(tenant, a),
            default_key_name(TenantId::new(), a)
        );
        assert!(default_key_name(tenant, a).len() <= 255);
    }

    #[test]
    fn user_data_parts() {
        assert_eq!(compose_user_data(None, None), None);
        assert_eq!(
            compose_user_data(Some("#!/bin/sh\ntrue"), None).as_deref(),
            Some("#!/bin/sh\ntrue")
        );
        assert_eq!(
            compose_user_data(None, Some("echo hi")).as_deref(),
            Some("echo hi")
        );
        let both = compose_user_data(
            Some("#cloud-config\npackages: [git]"),
            Some("#!/bin/sh\necho hi"),
        )
        .unwrap();
        assert!(both.starts_with("Content-Type: multipart/mixed"));
        assert!(both.contains("text/cloud-config"));
        assert!(both.contains("text/x-shellscript"));
        assert!(both.find("packages").unwrap() < both.find("echo hi").unwrap());
        assert!(both.ends_with("--==NIMBUS-USER-DATA==--\r\n"));
    }
}
