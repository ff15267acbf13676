//! The Hetzner Cloud provider: a machine is a server created with Nimbus's labels
//! (`managed-by=nimbus`, `nimbus-tenant`, `nimbus-provider`, `nimbus-machine`) and found again
//! by `label_selector`, so the provider keeps no state of its own.
//!
//! Crash safety: the server's name is derived from the machine id (`nimbus-<id>`) and names
//! are unique per project, so a create retried after a crash or a lost response either finds
//! the server by label first (adoption) or gets `uniqueness_error` and adopts it then. A server
//! carrying this provider's labels but known to no intent shows up in `list_machines`, where the
//! fleet's reconciler removes it after its grace period.
//!
//! Capacity: a server type sold out in a location (`resource_unavailable`) is created in the
//! next of `config.locations`. Every create and delete returns an action, polled until it
//! succeeds. Billing is per started hour: `can_terminate` says how much of the paid hour is
//! left and the listing carries `paid_until`, so a scheduler may keep an idle server whose hour
//! is paid anyway.

mod api;
mod config;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nimbus_setup::events::Events;
use nimbus_setup::exec::Exec;
use nimbus_setup::ssh::{HostKeyStore, MemoryHostKeyStore, SshExec, SshOptions, SshTarget};
use nimbus_types::event::{self, Event, EventSink};
use nimbus_types::{
    CanTerminate, Machine, MachineId, Os, ProviderConfig, ProviderId, ProviderMetadata,
    ProviderType, Secret, TenantId,
};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

pub use api::{ApiError, RetryPolicy};
pub use config::{DEFAULT_ENDPOINT, HetznerConfig, HetznerCredentials};

use crate::{Error, Provider, ProviderMachine, ProviderStatus, ProvisionRequest, Result};

/// Label keys on every server and SSH key Nimbus creates.
pub mod label {
    pub const MANAGED_BY: &str = "managed-by";
    pub const MANAGED_BY_VALUE: &str = "nimbus";
    pub const TENANT: &str = "nimbus-tenant";
    pub const PROVIDER: &str = "nimbus-provider";
    pub const MACHINE: &str = "nimbus-machine";
}

/// The server name of a machine: unique per project, so a second create for the same machine
/// fails with `uniqueness_error` instead of making a twin.
pub fn server_name(machine_id: MachineId) -> String {
    format!("nimbus-{}", machine_id.as_uuid().simple())
}

/// `nimbus-<tenant id>-<12 hex of the key's SHA-256>`: one key per tenant and public key.
pub fn ssh_key_name(tenant_id: TenantId, public_key: &str) -> String {
    let body = public_key.split_whitespace().nth(1).unwrap_or(public_key);
    let digest = Sha256::digest(body.as_bytes());
    format!("nimbus-{tenant_id}-{}", &hex::encode(digest)[..12])
}

/// When the hour a server is in ends (Hetzner bills per started hour).
pub fn paid_until(created_at: OffsetDateTime, now: OffsetDateTime) -> OffsetDateTime {
    let lived = (now - created_at).whole_seconds().max(0);
    let hours = lived / 3600 + 1;
    created_at + time::Duration::hours(hours)
}

/// One server as Nimbus reads it.
#[derive(Clone, Debug)]
struct ServerInfo {
    id: i64,
    name: String,
    labels: BTreeMap<String, String>,
    status: String,
    ipv4: Option<String>,
    ipv6: Option<String>,
    location: Option<String>,
    server_type: Option<String>,
    created: Option<OffsetDateTime>,
}

impl ServerInfo {
    fn from_json(value: &Value) -> Option<ServerInfo> {
        let labels = value["labels"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Some(ServerInfo {
            id: value["id"].as_i64()?,
            name: value["name"].as_str().unwrap_or_default().to_owned(),
            labels,
            status: value["status"].as_str().unwrap_or("unknown").to_owned(),
            ipv4: value["public_net"]["ipv4"]["ip"]
                .as_str()
                .map(str::to_owned),
            ipv6: value["public_net"]["ipv6"]["ip"]
                .as_str()
                // Hetzner gives the /64; the server answers on ::1 of it.
                .map(|net| format!("{}1", net.split('/').next().unwrap_or(net))),
            location: value["location"]["name"].as_str().map(str::to_owned),
            server_type: value["server_type"]["name"].as_str().map(str::to_owned),
            created: value["created"].as_str().and_then(|t| {
                OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            }),
        })
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    fn machine_id(&self) -> Option<MachineId> {
        self.label(label::MACHINE).and_then(|v| v.parse().ok())
    }

    fn tenant_id(&self) -> Option<TenantId> {
        self.label(label::TENANT).and_then(|v| v.parse().ok())
    }

    fn status(&self) -> ProviderStatus {
        match self.status.as_str() {
            "running" => ProviderStatus::Running,
            "off" => ProviderStatus::Stopped,
            "stopping" | "deleting" => ProviderStatus::Stopping,
            _ => ProviderStatus::Pending,
        }
    }
}

/// A server type's price in one location, from `GET /server_types`.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerTypePrice {
    pub server_type: String,
    pub location: String,
    /// Net price per started hour, in the account's currency (EUR).
    pub hourly_net: f64,
    pub architecture: String,
}

pub struct HetznerProvider {
    api: api::Api,
    config: HetznerConfig,
    tenant_id: TenantId,
    provider_id: ProviderId,
    ssh_key: Option<Secret>,
    /// The SSH key id once looked up or uploaded.
    key_id: tokio::sync::Mutex<Option<i64>>,
    ssh_host_keys: Arc<dyn HostKeyStore>,
    ssh_options: SshOptions,
    ssh_events: Events,
    execs: Mutex<HashMap<MachineId, Arc<SshExec>>>,
}

impl std::fmt::Debug for HetznerProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HetznerProvider")
            .field("provider_id", &self.provider_id)
            .field("tenant_id", &self.tenant_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Checks a `hetzner` provider's config and credentials before they are stored.
pub fn validate_config(config: &ProviderConfig) -> Result<()> {
    if config.provider_type != ProviderType::Hetzner {
        return Err(Error::InvalidConfig {
            field: "type".into(),
            message: format!("expected hetzner, got {}", config.provider_type),
        });
    }
    HetznerConfig::from_json(&config.config)?;
    HetznerCredentials::from_secret(config.credentials.as_ref())?;
    Ok(())
}

impl HetznerProvider {
    /// A provider for one stored configuration. Talks to Hetzner only when used.
    pub fn new(provider: &ProviderConfig) -> Result<Self> {
        validate_config(provider)?;
        let config = HetznerConfig::from_json(&provider.config)?;
        let credentials = HetznerCredentials::from_secret(provider.credentials.as_ref())?;
        Self::from_parts(config, credentials, provider.tenant_id, provider.id)
    }

    pub fn from_parts(
        config: HetznerConfig,
        credentials: HetznerCredentials,
        tenant_id: TenantId,
        provider_id: ProviderId,
    ) -> Result<Self> {
        let api = api::Api::new(
            &config.endpoint_url,
            credentials.api_token,
            RetryPolicy::default(),
            tenant_id,
            provider_id,
        )?;
        Ok(HetznerProvider {
            api,
            config,
            tenant_id,
            provider_id,
            ssh_key: credentials.ssh_private_key,
            key_id: tokio::sync::Mutex::new(None),
            ssh_host_keys: MemoryHostKeyStore::new(),
            ssh_options: SshOptions::default(),
            ssh_events: Events::none(),
            execs: Mutex::new(HashMap::new()),
        })
    }

    /// Pins SSH host keys in `host_keys` (the daemon's store) instead of memory.
    pub fn with_ssh(mut self, host_keys: Arc<dyn HostKeyStore>, options: SshOptions) -> Self {
        self.ssh_host_keys = host_keys;
        self.ssh_options = options;
        self
    }

    /// Sends API-call and SSH events to `sink`.
    pub fn with_events(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.ssh_events = Events::new(sink.clone());
        self.api.events = Some(sink);
        self
    }

    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.api.retry = retry;
        self
    }

    pub fn config(&self) -> &HetznerConfig {
        &self.config
    }

    fn selector(&self, extra: &[(&str, String)]) -> String {
        let mut terms = vec![
            format!("{}={}", label::MANAGED_BY, label::MANAGED_BY_VALUE),
            format!("{}={}", label::TENANT, self.tenant_id),
            format!("{}={}", label::PROVIDER, self.provider_id),
        ];
        terms.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
        terms.join(",")
    }

    fn owned(&self, info: &ServerInfo) -> bool {
        info.label(label::MANAGED_BY) == Some(label::MANAGED_BY_VALUE)
            && info.tenant_id() == Some(self.tenant_id)
            && info.label(label::PROVIDER) == Some(&self.provider_id.to_string())
    }

    /// Every server matching `selector`, all pages, only those carrying this provider's labels.
    async fn servers(
        &self,
        selector: String,
        machine_id: Option<MachineId>,
    ) -> Result<Vec<ServerInfo>> {
        let mut servers = Vec::new();
        let mut page = 1u64;
        loop {
            let body = self
                .api
                .call(
                    Method::GET,
                    "/servers",
                    &[
                        ("label_selector", selector.clone()),
                        ("page", page.to_string()),
                        ("per_page", "50".into()),
                    ],
                    None,
                    machine_id,
                )
                .await
                .map_err(ApiError::into_error)?;
            servers.extend(
                body["servers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(ServerInfo::from_json)
                    // Trust the labels, not only the filter: a selector bug must never hand
                    // out another tenant's server.
                    .filter(|info| self.owned(info)),
            );
            match body["meta"]["pagination"]["next_page"].as_u64() {
                Some(next) if next > page && page < 1000 => page = next,
                _ => break,
            }
        }
        Ok(servers)
    }

    async fn machine_servers(&self, machine_id: MachineId) -> Result<Vec<ServerInfo>> {
        let selector = self.selector(&[(label::MACHINE, machine_id.to_string())]);
        Ok(self
            .servers(selector, Some(machine_id))
            .await?
            .into_iter()
            .filter(|info| info.machine_id() == Some(machine_id))
            .collect())
    }

    fn view(&self, info: &ServerInfo) -> ProviderMachine {
        let now = nimbus_types::now();
        let created = info.created.unwrap_or(now);
        let mut metadata = ProviderMetadata {
            instance_id: Some(info.id.to_string()),
            ..ProviderMetadata::default()
        };
        let rfc3339 = &time::format_description::well_known::Rfc3339;
        let extra = &mut metadata.extra;
        extra.insert("server_name".into(), info.name.clone());
        extra.insert("server_status".into(), info.status.clone());
        extra.insert("billing".into(), "hourly".into());
        if let Ok(until) = paid_until(created, now).format(rfc3339) {
            extra.insert("paid_until".into(), until);
        }
        for (key, value) in [
            ("location", &info.location),
            ("server_type", &info.server_type),
            ("ipv6", &info.ipv6),
        ] {
            if let Some(value) = value {
                extra.insert(key.to_owned(), value.clone());
            }
        }
        ProviderMachine {
            machine_id: info.machine_id(),
            tenant_id: info.tenant_id(),
            status: info.status(),
            ip_address: info.ipv4.clone().or_else(|| info.ipv6.clone()),
            ssh_public_key: self.config.ssh_public_key.clone(),
            created_at: created,
            metadata,
        }
    }

    /// The tenant's SSH key id: looked up by name, uploaded when missing.
    async fn key_id(&self, machine_id: MachineId) -> Result<Option<i64>> {
        let Some(public_key) = &self.config.ssh_public_key else {
            return Ok(None);
        };
        let mut cached = self.key_id.lock().await;
        if let Some(id) = *cached {
            return Ok(Some(id));
        }
        let name = ssh_key_name(self.tenant_id, public_key);
        let find = || async {
            let body = self
                .api
                .call(
                    Method::GET,
                    "/ssh_keys",
                    &[("name", name.clone())],
                    None,
                    Some(machine_id),
                )
                .await
                .map_err(ApiError::into_error)?;
            Ok::<_, Error>(
                body["ssh_keys"]
                    .as_array()
                    .and_then(|keys| keys.first())
                    .and_then(|key| key["id"].as_i64()),
            )
        };
        let id = match find().await? {
            Some(id) => id,
            None => {
                let body = json!({
                    "name": name,
                    "public_key": public_key.trim(),
                    "labels": {
                        label::MANAGED_BY: label::MANAGED_BY_VALUE,
                        label::TENANT: self.tenant_id.to_string(),
                    },
                });
                match self
                    .api
                    .call(Method::POST, "/ssh_keys", &[], Some(&body), Some(machine_id))
                    .await
                {
                    Ok(created) => created["ssh_key"]["id"].as_i64().ok_or_else(|| {
                        Error::Retryable("hetzner POST /ssh_keys: no key id in the answer".into())
                    })?,
                    // Created concurrently (or by a lost response), or the same public key is
                    // in the project already under another name (another tenant's, or the
                    // operator's): Hetzner keeps one key per fingerprint, so use that one.
                    Err(err) if err.is("uniqueness_error") => match find().await? {
                        Some(id) => id,
                        None => self.key_by_public_key(public_key, machine_id).await?.ok_or_else(|| {
                            Error::Permanent(format!(
                                "hetzner refused to add config.ssh_public_key as {name} (uniqueness_error) and no key with that public key or name exists"
                            ))
                        })?,
                    },
                    Err(err) => return Err(err.into_error()),
                }
            }
        };
        *cached = Some(id);
        Ok(Some(id))
    }

    /// The id of the project's key with this public key (any name), paging through all keys.
    async fn key_by_public_key(
        &self,
        public_key: &str,
        machine_id: MachineId,
    ) -> Result<Option<i64>> {
        let body_of = |key: &str| key.split_whitespace().nth(1).map(str::to_owned);
        let wanted = body_of(public_key);
        let mut page = 1u64;
        loop {
            let body = self
                .api
                .call(
                    Method::GET,
                    "/ssh_keys",
                    &[("page", page.to_string()), ("per_page", "50".into())],
                    None,
                    Some(machine_id),
                )
                .await
                .map_err(ApiError::into_error)?;
            if let Some(id) = body["ssh_keys"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|key| key["public_key"].as_str().and_then(body_of) == wanted)
                .and_then(|key| key["id"].as_i64())
            {
                return Ok(Some(id));
            }
            match body["meta"]["pagination"]["next_page"].as_u64() {
                Some(next) if next > page && page < 100 => page = next,
                _ => return Ok(None),
            }
        }
    }

    /// Polls an action until it succeeds; an action error is retryable (the caller cleans up).
    async fn wait_action(&self, action: &Value, machine_id: MachineId) -> Result<()> {
        let Some(id) = action["id"].as_i64() else {
            return Ok(());
        };
        let mut status = action["status"].as_str().unwrap_or("running").to_owned();
        let mut last = action.clone();
        let deadline = Instant::now() + Duration::from_secs(self.config.action_timeout_secs);
        let interval = Duration::from_millis(self.config.poll_interval_ms);
        while status == "running" {
            if Instant::now() >= deadline {
                return Err(Error::Retryable(format!(
                    "hetzner action {id} ({}) still running after {}s",
                    last["command"].as_str().unwrap_or("?"),
                    self.config.action_timeout_secs
                )));
            }
            tokio::time::sleep(interval).await;
            let body = self
                .api
                .call(
                    Method::GET,
                    &format!("/actions/{id}"),
                    &[],
                    None,
                    Some(machine_id),
                )
                .await
                .map_err(ApiError::into_error)?;
            last = body["action"].clone();
            status = last["status"].as_str().unwrap_or("running").to_owned();
        }
        if status == "error" {
            return Err(Error::Retryable(format!(
                "hetzner action {id} ({}) failed: {}",
                last["command"].as_str().unwrap_or("?"),
                last["error"]["message"].as_str().unwrap_or("no message")
            )));
        }
        Ok(())
    }

    async fn get_server(&self, id: i64, machine_id: MachineId) -> Result<Option<ServerInfo>> {
        match self
            .api
            .call(
                Method::GET,
                &format!("/servers/{id}"),
                &[],
                None,
                Some(machine_id),
            )
            .await
        {
            Ok(body) => Ok(ServerInfo::from_json(&body["server"]).filter(|i| self.owned(i))),
            Err(err) if err.is("not_found") => Ok(None),
            Err(err) => Err(err.into_error()),
        }
    }

    /// Deletes one server (already checked to be this provider's) and waits for it to go.
    async fn delete_server(&self, id: i64, machine_id: MachineId) -> Result<()> {
        match self
            .api
            .call(
                Method::DELETE,
                &format!("/servers/{id}"),
                &[],
                None,
                Some(machine_id),
            )
            .await
        {
            Ok(body) => self.wait_action(&body["action"], machine_id).await,
            Err(err) if err.is("not_found") => Ok(()),
            Err(err) => Err(err.into_error()),
        }
    }

    /// Creates the server in the first location with capacity.
    async fn create(&self, request: &ProvisionRequest, key_id: Option<i64>) -> Result<ServerInfo> {
        let machine_id = request.machine_id;
        let server_type = self
            .config
            .server_type_for(request.spec.arch, request.spec.instance_type.as_deref());
        let image = request
            .spec
            .image_id
            .clone()
            .unwrap_or_else(|| self.config.image.clone());
        let mut labels: BTreeMap<String, String> = self.config.labels.clone();
        labels.insert(label::MANAGED_BY.into(), label::MANAGED_BY_VALUE.into());
        labels.insert(label::TENANT.into(), self.tenant_id.to_string());
        labels.insert(label::PROVIDER.into(), self.provider_id.to_string());
        labels.insert(label::MACHINE.into(), machine_id.to_string());
        let mut sold_out = Vec::new();
        for location in &self.config.locations {
            let mut body = json!({
                "name": server_name(machine_id),
                "server_type": server_type,
                "image": image,
                "location": location,
                "labels": labels,
                "start_after_create": true,
                "public_net": {"enable_ipv4": true, "enable_ipv6": true},
            });
            // The spec types key references as strings (ids or names).
            if let Some(id) = key_id {
                body["ssh_keys"] = json!([id.to_string()]);
            }
            if let Some(data) = &self.config.user_data {
                body["user_data"] = json!(data);
            }
            match self
                .api
                .call(Method::POST, "/servers", &[], Some(&body), Some(machine_id))
                .await
            {
                Ok(created) => {
                    let info = ServerInfo::from_json(&created["server"]).ok_or_else(|| {
                        Error::Retryable("hetzner POST /servers: no server in the answer".into())
                    })?;
                    if let Err(err) = self.wait_action(&created["action"], machine_id).await {
                        // Leave nothing half-made behind.
                        let _ = self.delete_server(info.id, machine_id).await;
                        return Err(err);
                    }
                    return match self.get_server(info.id, machine_id).await? {
                        Some(info) => Ok(info),
                        None => Err(Error::Retryable(format!(
                            "hetzner server {} vanished right after it was created",
                            info.id
                        ))),
                    };
                }
                // The name is taken: an earlier attempt (whose answer was lost) made it.
                Err(err) if err.is("uniqueness_error") => {
                    if let Some(existing) =
                        self.machine_servers(machine_id).await?.into_iter().next()
                    {
                        return Ok(existing);
                    }
                    return Err(Error::Permanent(format!(
                        "hetzner server name {} is taken by a server without this machine's labels",
                        server_name(machine_id)
                    )));
                }
                Err(err) if err.is("resource_unavailable") || err.is("placement_error") => {
                    tracing::info!(
                        machine.id = %machine_id,
                        location = %location,
                        server_type = %server_type,
                        "hetzner server type unavailable in this location; trying the next"
                    );
                    sold_out.push(location.clone());
                }
                Err(err) => return Err(err.into_error()),
            }
        }
        Err(Error::Retryable(format!(
            "hetzner has no {server_type} capacity in {}",
            sold_out.join(", ")
        )))
    }

    /// Prices per server type and location, from `GET /server_types`.
    pub async fn prices(&self) -> Result<Vec<ServerTypePrice>> {
        let body = self
            .api
            .call(
                Method::GET,
                "/server_types",
                &[("per_page", "50".into())],
                None,
                None,
            )
            .await
            .map_err(ApiError::into_error)?;
        let mut prices = Vec::new();
        for server_type in body["server_types"].as_array().into_iter().flatten() {
            let name = server_type["name"].as_str().unwrap_or_default();
            let architecture = server_type["architecture"].as_str().unwrap_or_default();
            for price in server_type["prices"].as_array().into_iter().flatten() {
                let Some(hourly) = price["price_hourly"]["net"]
                    .as_str()
                    .and_then(|p| p.parse::<f64>().ok())
                else {
                    continue;
                };
                prices.push(ServerTypePrice {
                    server_type: name.to_owned(),
                    location: price["location"].as_str().unwrap_or_default().to_owned(),
                    hourly_net: hourly,
                    architecture: architecture.to_owned(),
                });
            }
        }
        Ok(prices)
    }
}

#[async_trait]
impl Provider for HetznerProvider {
    fn provider_type(&self) -> ProviderType {
        ProviderType::Hetzner
    }

    async fn provision(&self, request: &ProvisionRequest) -> Result<ProviderMachine> {
        if request.tenant_id != self.tenant_id || request.provider_id != self.provider_id {
            return Err(Error::Permanent(format!(
                "machine {} belongs to another tenant or provider than provider {}",
                request.machine_id, self.provider_id
            )));
        }
        if request.spec.os != Os::Linux {
            return Err(Error::Permanent(format!(
                "hetzner cloud has no {} servers; use a linux spec",
                request.spec.os
            )));
        }
        if let Some(t) = &request.spec.instance_type
            && !t
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(Error::Permanent(format!(
                "instance_type {t:?} is no hetzner server type (e.g. cx22, cax11)"
            )));
        }
        // A retry after a crash: the server may exist already.
        if let Some(existing) = self
            .machine_servers(request.machine_id)
            .await?
            .into_iter()
            .next()
        {
            tracing::info!(machine.id = %request.machine_id, server.id = existing.id, "adopting the machine's existing server");
            return Ok(self.view(&existing));
        }
        let key_id = self.key_id(request.machine_id).await?;
        let info = self.create(request, key_id).await?;
        Ok(self.view(&info))
    }

    async fn terminate(&self, machine: &Machine) -> Result<()> {
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&machine.id);
        // Only servers carrying this provider's and this machine's labels are deleted: a stale
        // or foreign server id in the record never reaches another tenant's server.
        for server in self.machine_servers(machine.id).await? {
            self.delete_server(server.id, machine.id).await?;
        }
        Ok(())
    }

    async fn can_terminate(&self, machine: &Machine) -> Result<CanTerminate> {
        // Per-hour billing never forbids a delete; say what the rest of the hour is worth.
        let created = self
            .machine_servers(machine.id)
            .await?
            .into_iter()
            .filter_map(|s| s.created)
            .min();
        let mut answer = CanTerminate::yes();
        if let Some(created) = created {
            let now = nimbus_types::now();
            let left = (paid_until(created, now) - now).whole_minutes();
            answer.message = Some(format!(
                "billed per started hour: {left} minutes of the current hour are paid"
            ));
        }
        Ok(answer)
    }

    async fn list_machines(&self, tenant_id: TenantId) -> Result<Vec<ProviderMachine>> {
        if tenant_id != self.tenant_id {
            return Ok(Vec::new());
        }
        let servers = self.servers(self.selector(&[]), None).await?;
        Ok(servers.iter().map(|s| self.view(s)).collect())
    }

    async fn get_machine(&self, id: MachineId) -> Result<Option<ProviderMachine>> {
        Ok(self
            .machine_servers(id)
            .await?
            .first()
            .map(|s| self.view(s)))
    }

    async fn remove_duplicate(&self, resource: &ProviderMachine) -> Result<()> {
        let Some(machine_id) = resource.machine_id else {
            return Err(Error::Permanent(
                "a resource without a nimbus-machine label is no machine's duplicate".into(),
            ));
        };
        let Some(server_id) = resource
            .metadata
            .instance_id
            .as_deref()
            .and_then(|id| id.parse::<i64>().ok())
        else {
            return Err(Error::Permanent(format!(
                "machine {machine_id}: the duplicate names no server id"
            )));
        };
        let servers = self.machine_servers(machine_id).await?;
        if !servers.iter().any(|s| s.id == server_id) {
            return Ok(());
        }
        if servers.len() < 2 {
            return Err(Error::Permanent(format!(
                "machine {machine_id}: server {server_id} is its only server, not a duplicate"
            )));
        }
        tracing::warn!(machine.id = %machine_id, server.id = server_id, "deleting a second server of the machine");
        self.delete_server(server_id, machine_id).await?;
        if let Some(sink) = &self.api.events {
            sink.emit(
                Event::new(event::MACHINE_RECONCILED)
                    .tenant(self.tenant_id)
                    .machine(machine_id)
                    .meta("action", "duplicate_terminated")
                    .meta("server_id", server_id.to_string())
                    .meta("provider_id", self.provider_id.to_string()),
            );
        }
        Ok(())
    }

    async fn exec(&self, machine: &Machine) -> Result<Arc<dyn Exec>> {
        let Some(private_key) = &self.ssh_key else {
            return Err(Error::Permanent(format!(
                "machine {}: the provider has no credentials.ssh_private_key to log in with; add the private key matching config.ssh_public_key, or provision with skip_setup",
                machine.id
            )));
        };
        if let Some(exec) = self
            .execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&machine.id)
        {
            return Ok(exec.clone());
        }
        let found = self.machine_servers(machine.id).await?;
        let server = found.first().ok_or(Error::NotFound(machine.id))?;
        let address = server
            .ipv4
            .clone()
            .or_else(|| server.ipv6.clone())
            .or_else(|| machine.ip_address.clone())
            .ok_or_else(|| {
                Error::Retryable(format!("machine {} has no IP address yet", machine.id))
            })?;
        let target = SshTarget {
            // Pin the host key per server: a new server is a new host.
            host_id: format!("hetzner:{}", server.id),
            address,
            port: self.config.ssh_port,
            user: self.config.ssh_user.clone(),
            private_key: private_key.clone(),
        };
        let exec = Arc::new(SshExec::new(
            target,
            self.ssh_host_keys.clone(),
            self.ssh_events.for_machine(machine.tenant_id, machine.id),
            self.ssh_options.clone(),
        ));
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(machine.id, exec.clone());
        Ok(exec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_short_and_valid() {
        let a = MachineId::new();
        assert_eq!(server_name(a), server_name(a));
        assert_ne!(server_name(a), server_name(MachineId::new()));
        assert!(server_name(a).len() <= 63);
        let tenant = TenantId::new();
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA comment";
        assert_eq!(ssh_key_name(tenant, key), ssh_key_name(tenant, key));
        assert_ne!(
            ssh_key_name(tenant, key),
            ssh_key_name(tenant, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB")
        );
    }

    #[test]
    fn the_paid_hour() {
        let created = time::macros::datetime!(2026-01-01 10:00 UTC);
        for (minutes, until_hours) in [(0, 1), (59, 1), (60, 2), (61, 2), (185, 4)] {
            assert_eq!(
                paid_until(created, created + time::Duration::minutes(minutes)),
                created + time::Duration::hours(until_hours),
                "{minutes}"
            );
        }
    }

    #[test]
    fn server_states_map_to_provider_states() {
        for (status, expect) in [
            ("initializing", ProviderStatus::Pending),
            ("starting", ProviderStatus::Pending),
            ("running", ProviderStatus::Running),
            ("stopping", ProviderStatus::Stopping),
            ("deleting", ProviderStatus::Stopping),
            ("off", ProviderStatus::Stopped),
            ("unknown", ProviderStatus::Pending),
        ] {
            let info = ServerInfo::from_json(&json!({"id": 1, "status": status})).unwrap();
            assert_eq!(info.status(), expect, "{status}");
        }
    }
}
