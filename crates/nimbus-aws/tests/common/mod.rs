//! Shared pieces of the moto suites: a provider wired to a fresh moto server, a raw EC2 client to
//! look behind the provider's back, and a fault proxy that stands between the two.

#![allow(dead_code)]

pub mod proxy;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use nimbus_aws::{AwsProvider, CollectingSink, ManualClock, RetryPolicy};
use nimbus_provider::ProvisionRequest;
use nimbus_testkit::moto::{self, MotoServer};
use nimbus_types::{
    Arch, Image, ImageState, ImageType, Machine, MachineId, MachineSpec, MachineState, Os,
    ProviderConfig, ProviderId, ProviderType, Secret, TenantId,
};
use serde_json::json;

pub const REGION: &str = "us-east-1";
pub const ZONES: &[&str] = &["us-east-1a", "us-east-1b"];
pub const SSH_PUBLIC_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG7/PuKk21/JWvuzCILsUiT7OuXa9IfIqp4ar6UW/ssc nimbus-test";
/// Credentials moto accepts. The secret is distinctive so tests can prove it never leaks.
pub const ACCESS_KEY_ID: &str = "AKIANIMBUSTEST000001";
pub const SECRET_ACCESS_KEY: &str = "nimbus-test-secret-DO-NOT-LEAK-4711";

/// Starts moto, with a readable failure when it is missing.
pub fn start_moto() -> MotoServer {
    match MotoServer::start() {
        Ok(moto) => moto,
        Err(err) => panic!("{err:#}"),
    }
}

/// The `config` JSON of a provider against `endpoint`.
pub fn config_json(endpoint: &str) -> serde_json::Value {
    json!({
        "region": REGION,
        "availability_zones": ZONES,
        "endpoint_url": endpoint,
        "ssh_public_key": SSH_PUBLIC_KEY,
        "linux_instance_type": "t3.micro",
        "linux_arm64_instance_type": "t4g.micro",
        "image_ids": {
            "linux_x86_64": moto::AMI_LINUX_X86_64,
            "linux_arm64": moto::AMI_LINUX_ARM64,
            "macos_arm64": moto::AMI_MACOS_ARM64,
            "macos_x86_64": moto::AMI_MACOS_X86_64,
        },
        "tags": {"team": "ci"},
        "orphan_grace_secs": 0,
    })
}

pub fn credentials() -> Secret {
    Secret::new(
        json!({"access_key_id": ACCESS_KEY_ID, "secret_access_key": SECRET_ACCESS_KEY}).to_string(),
    )
}

pub fn provider_record(
    tenant_id: TenantId,
    provider_id: ProviderId,
    config: serde_json::Value,
) -> ProviderConfig {
    ProviderConfig {
        id: provider_id,
        tenant_id,
        name: "aws-test".into(),
        provider_type: ProviderType::Aws,
        credentials: Some(credentials()),
        config,
        created_at: nimbus_types::now(),
    }
}

/// Fast retries, so fault tests do not sleep for seconds.
pub fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        attempt_timeout: Duration::from_secs(30),
    }
}

/// A provider plus what the tests observe it with.
pub struct Harness {
    pub provider: AwsProvider,
    pub clock: Arc<ManualClock>,
    pub events: Arc<CollectingSink>,
    pub tenant_id: TenantId,
    pub provider_id: ProviderId,
}

impl Harness {
    pub fn new(tenant_id: TenantId, provider_id: ProviderId, config: serde_json::Value) -> Self {
        Self::with_clock(
            tenant_id,
            provider_id,
            config,
            Arc::new(ManualClock::starting_now()),
        )
    }

    pub fn with_clock(
        tenant_id: TenantId,
        provider_id: ProviderId,
        config: serde_json::Value,
        clock: Arc<ManualClock>,
    ) -> Self {
        let events = Arc::new(CollectingSink::new());
        let record = provider_record(tenant_id, provider_id, config);
        let provider = AwsProvider::new(&record, clock.clone())
            .unwrap_or_else(|err| panic!("building the provider from {:#}: {err}", record.config))
            .with_events(events.clone())
            .with_retry_policy(quick_retries(4));
        Harness {
            provider,
            clock,
            events,
            tenant_id,
            provider_id,
        }
    }

    pub fn request(&self, os: Os, arch: Arch) -> ProvisionRequest {
        let mut spec = MachineSpec::new(os, arch);
        spec.skip_setup = true;
        ProvisionRequest {
            machine_id: MachineId::new(),
            tenant_id: self.tenant_id,
            provider_id: self.provider_id,
            spec,
        }
    }
}

/// The machine record the lifecycle layer would hold after a provision.
pub fn machine_record(
    request: &ProvisionRequest,
    provided: &nimbus_provider::ProviderMachine,
) -> Machine {
    Machine {
        id: request.machine_id,
        tenant_id: request.tenant_id,
        provider_id: request.provider_id,
        os: request.spec.os,
        arch: request.spec.arch,
        state: MachineState::Ready,
        ip_address: provided.ip_address.clone(),
        ssh_public_key: provided.ssh_public_key.clone(),
        labels: Vec::new(),
        instance_type: provided.metadata.extra.get("instance_type").cloned(),
        image: Image {
            id: provided.metadata.extra.get("image_id").cloned(),
            image_type: ImageType::Ami,
            state: ImageState::Installed,
            installed_at: None,
        },
        created_at: provided.created_at,
        updated_at: provided.created_at,
        provider_metadata: provided.metadata.clone(),
        error: None,
        setup_progress: None,
        pool_id: None,
        usage: Default::default(),
    }
}

/// The machine record of a machine whose provision never returned (a crash): only the intent.
pub fn intent_record(request: &ProvisionRequest) -> Machine {
    Machine {
        id: request.machine_id,
        tenant_id: request.tenant_id,
        provider_id: request.provider_id,
        os: request.spec.os,
        arch: request.spec.arch,
        state: MachineState::Provisioning,
        ip_address: None,
        ssh_public_key: None,
        labels: Vec::new(),
        instance_type: None,
        image: Image {
            id: None,
            image_type: ImageType::None,
            state: ImageState::Pending,
            installed_at: None,
        },
        created_at: nimbus_types::now(),
        updated_at: nimbus_types::now(),
        provider_metadata: Default::default(),
        error: None,
        setup_progress: None,
        pool_id: None,
        usage: Default::default(),
    }
}

/// An EC2 client that talks to moto directly, to see what really exists.
pub fn raw_client(endpoint: &str) -> Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "test",
        ))
        .build();
    Client::from_conf(config)
}

#[derive(Clone, Debug)]
pub struct RawResource {
    pub id: String,
    pub state: String,
    pub tags: BTreeMap<String, String>,
    pub host_id: Option<String>,
}

fn tag_map(tags: &[aws_sdk_ec2::types::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
        .collect()
}

/// Every instance moto holds, whatever its tags or state.
pub async fn raw_instances(client: &Client) -> Vec<RawResource> {
    let out = client
        .describe_instances()
        .send()
        .await
        .expect("raw DescribeInstances against moto");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| RawResource {
            id: i.instance_id().unwrap_or_default().to_owned(),
            state: i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default(),
            tags: tag_map(i.tags()),
            host_id: i.placement().and_then(|p| p.host_id()).map(str::to_owned),
        })
        .collect()
}

pub async fn raw_live_instances(client: &Client) -> Vec<RawResource> {
    raw_instances(client)
        .await
        .into_iter()
        .filter(|i| i.state != "terminated")
        .collect()
}

/// Every dedicated host moto holds, released ones included.
pub async fn raw_hosts(client: &Client) -> Vec<RawResource> {
    let out = client
        .describe_hosts()
        .send()
        .await
        .expect("raw DescribeHosts against moto");
    out.hosts()
        .iter()
        .map(|h| RawResource {
            id: h.host_id().unwrap_or_default().to_owned(),
            state: h.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
            tags: tag_map(h.tags()),
            host_id: None,
        })
        .collect()
}

pub async fn raw_unreleased_hosts(client: &Client) -> Vec<RawResource> {
    raw_hosts(client)
        .await
        .into_iter()
        .filter(|h| !h.state.starts_with("released"))
        .collect()
}
