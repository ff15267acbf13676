//! The provider conformance suite: one contract for every `Provider` implementation.
//!
//! A provider's test file implements [`Peer`] for its real (or Prism-checked) peer and calls
//! [`run`]; a new provider is done when it passes. Other crates include this file with
//! `#[path = "../../nimbus-provider/tests/conformance/mod.rs"] mod conformance;`.
//!
//! What it holds every provider to:
//! 1. provision / get / list / can_terminate / terminate round trip, terminate idempotent;
//! 2. provision idempotent per machine id, also from a fresh provider (a restarted daemon);
//! 3. a crash between the create call and recording its result (the response is lost) leaves
//!    exactly one resource, which a retry adopts and the listing shows (so the reconciler can
//!    remove it) — no leak, no twin;
//! 4. another tenant's provider neither lists, gets, nor terminates this tenant's machines;
//! 5. throttling and 5xx are retried within bounds: a short burst is absorbed, an endless one
//!    becomes a retryable error in bounded time;
//! 6. wrong credentials give a permanent error that names the problem and not the secret;
//! 7. `remove_duplicate` never removes a machine's only resource.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_provider::{Error, Provider, ProviderMachine, ProvisionRequest};
use nimbus_types::{
    Image, ImageState, ImageType, Machine, MachineId, MachineSpec, MachineState, ProviderId,
    TenantId,
};

/// Faults a peer can inject into its next calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The next `n` calls are throttled (429 / RequestLimitExceeded).
    Throttle(u32),
    /// The next `n` calls fail with a server error.
    ServerError(u32),
    /// The next create takes effect but its response is lost.
    LoseCreateResponse,
}

/// A provider implementation and the peer it talks to.
pub trait Peer: Send + Sync {
    fn name(&self) -> &str;
    /// A fresh provider for `tenant_id` on this peer (a restarted daemon builds a new one).
    fn provider(&self, tenant_id: TenantId, provider_id: ProviderId) -> Arc<dyn Provider>;
    /// A spec this provider can satisfy.
    fn spec(&self) -> MachineSpec;
    /// The same peer reached with credentials it rejects, and the secret that must not show up
    /// in the error; `None` for providers without credentials.
    fn wrong_credentials(
        &self,
        tenant_id: TenantId,
        provider_id: ProviderId,
    ) -> Option<(Arc<dyn Provider>, String)>;
    /// Arms a fault; `false` when the peer cannot produce it.
    fn inject(&self, fault: Fault) -> bool;
    /// How long an endless fault may take to become an error.
    fn fault_bound(&self) -> Duration {
        Duration::from_secs(30)
    }
    /// Whatever the peer found wrong with the requests so far (Prism violations).
    fn violations(&self) -> Vec<String> {
        Vec::new()
    }
}

pub fn request(
    tenant_id: TenantId,
    provider_id: ProviderId,
    spec: MachineSpec,
) -> ProvisionRequest {
    ProvisionRequest {
        machine_id: MachineId::new(),
        tenant_id,
        provider_id,
        spec,
    }
}

/// The record the fleet would keep for a provisioned machine.
pub fn machine(request: &ProvisionRequest, view: Option<&ProviderMachine>) -> Machine {
    let now = nimbus_types::now();
    Machine {
        id: request.machine_id,
        tenant_id: request.tenant_id,
        provider_id: request.provider_id,
        os: request.spec.os,
        arch: request.spec.arch,
        state: MachineState::Provisioning,
        ip_address: view.and_then(|v| v.ip_address.clone()),
        ssh_public_key: None,
        labels: request.spec.labels.clone(),
        instance_type: request.spec.instance_type.clone(),
        image: Image {
            id: None,
            image_type: ImageType::None,
            state: ImageState::Pending,
            installed_at: None,
        },
        created_at: view.map_or(now, |v| v.created_at),
        updated_at: now,
        provider_metadata: view.map(|v| v.metadata.clone()).unwrap_or_default(),
        error: None,
        setup_progress: None,
        pool_id: None,
        usage: Default::default(),
    }
}

async fn resources_of(provider: &dyn Provider, tenant_id: TenantId, id: MachineId) -> usize {
    provider
        .list_machines(tenant_id)
        .await
        .expect("list_machines")
        .iter()
        .filter(|m| m.machine_id == Some(id))
        .count()
}

/// Runs every case against `peer`, then fails on anything the peer found wrong.
pub async fn run(peer: &dyn Peer) {
    let name = peer.name().to_owned();
    round_trip(peer).await;
    idempotent_provision(peer).await;
    lost_create_response(peer).await;
    tenant_isolation(peer).await;
    faults_are_retried_within_bounds(peer).await;
    wrong_credentials(peer).await;
    only_resource_is_no_duplicate(peer).await;
    let violations = peer.violations();
    assert!(
        violations.is_empty(),
        "{name}: the peer found invalid requests or responses:\n{}",
        violations.join("\n")
    );
}

pub async fn round_trip(peer: &dyn Peer) {
    let (tenant_id, provider_id) = (TenantId::new(), ProviderId::new());
    let provider = peer.provider(tenant_id, provider_id);
    let request = request(tenant_id, provider_id, peer.spec());
    let view = provider
        .provision(&request)
        .await
        .unwrap_or_else(|err| panic!("{}: provision: {err}", peer.name()));
    assert_eq!(view.machine_id, Some(request.machine_id), "{}", peer.name());
    assert_eq!(view.tenant_id, Some(tenant_id), "{}", peer.name());

    let got = provider
        .get_machine(request.machine_id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{}: get_machine after provision is None", peer.name()));
    assert_eq!(got.machine_id, Some(request.machine_id));
    assert_eq!(got.metadata.instance_id, view.metadata.instance_id);
    assert_eq!(
        resources_of(provider.as_ref(), tenant_id, request.machine_id).await,
        1,
        "{}: the listing shows the machine once",
        peer.name()
    );

    let record = machine(&request, Some(&view));
    let can = provider.can_terminate(&record).await.unwrap();
    assert!(can.can_terminate, "{}: {can:?}", peer.name());
    provider
        .terminate(&record)
        .await
        .unwrap_or_else(|err| panic!("{}: terminate: {err}", peer.name()));
    assert_eq!(
        provider.get_machine(request.machine_id).await.unwrap(),
        None,
        "{}: the machine is gone after terminate",
        peer.name()
    );
    assert_eq!(
        resources_of(provider.as_ref(), tenant_id, request.machine_id).await,
        0
    );
    // Terminating what is gone is not an error.
    provider
        .terminate(&record)
        .await
        .unwrap_or_else(|err| panic!("{}: second terminate: {err}", peer.name()));
}

pub async fn idempotent_provision(peer: &dyn Peer) {
    let (tenant_id, provider_id) = (TenantId::new(), ProviderId::new());
    let provider = peer.provider(tenant_id, provider_id);
    let request = request(tenant_id, provider_id, peer.spec());
    let first = provider.provision(&request).await.unwrap();
    let again = provider.provision(&request).await.unwrap();
    // A restarted daemon retrying the same intent.
    let restarted = peer.provider(tenant_id, provider_id);
    let third = restarted.provision(&request).await.unwrap();
    assert_eq!(first.metadata.instance_id, again.metadata.instance_id);
    assert_eq!(first.metadata.instance_id, third.metadata.instance_id);
    assert_eq!(
        resources_of(restarted.as_ref(), tenant_id, request.machine_id).await,
        1,
        "{}: one machine id, one resource",
        peer.name()
    );
    restarted
        .terminate(&machine(&request, Some(&first)))
        .await
        .unwrap();
}

pub async fn lost_create_response(peer: &dyn Peer) {
    if !peer.inject(Fault::LoseCreateResponse) {
        return;
    }
    let (tenant_id, provider_id) = (TenantId::new(), ProviderId::new());
    let provider = peer.provider(tenant_id, provider_id);
    let request = request(tenant_id, provider_id, peer.spec());
    // The provider may absorb the lost response itself (adopting on retry) or report a
    // retryable error; either way nothing may leak or double.
    match provider.provision(&request).await {
        Ok(view) => assert_eq!(view.machine_id, Some(request.machine_id)),
        Err(err) => assert!(err.is_retryable(), "{}: {err}", peer.name()),
    }
    // The daemon crashed before recording anything: a fresh provider sees the resource…
    let restarted = peer.provider(tenant_id, provider_id);
    assert_eq!(
        resources_of(restarted.as_ref(), tenant_id, request.machine_id).await,
        1,
        "{}: the created resource is listed (the reconciler can find it)",
        peer.name()
    );
    // …and the retried intent adopts it instead of creating a twin.
    let view = restarted.provision(&request).await.unwrap();
    assert_eq!(view.machine_id, Some(request.machine_id));
    assert_eq!(
        resources_of(restarted.as_ref(), tenant_id, request.machine_id).await,
        1,
        "{}: no second resource after the retry",
        peer.name()
    );
    restarted
        .terminate(&machine(&request, Some(&view)))
        .await
        .unwrap();
    assert_eq!(
        resources_of(restarted.as_ref(), tenant_id, request.machine_id).await,
        0
    );
}

pub async fn tenant_isolation(peer: &dyn Peer) {
    let (tenant_a, provider_a) = (TenantId::new(), ProviderId::new());
    let (tenant_b, provider_b) = (TenantId::new(), ProviderId::new());
    let a = peer.provider(tenant_a, provider_a);
    let b = peer.provider(tenant_b, provider_b);
    let request_a = request(tenant_a, provider_a, peer.spec());
    let view = a.provision(&request_a).await.unwrap();

    assert!(
        b.list_machines(tenant_b)
            .await
            .unwrap()
            .iter()
            .all(|m| m.machine_id != Some(request_a.machine_id)),
        "{}: tenant B lists tenant A's machine",
        peer.name()
    );
    assert!(
        b.list_machines(tenant_a).await.unwrap().is_empty(),
        "{}: a provider lists another tenant's machines when asked for them",
        peer.name()
    );
    assert_eq!(
        b.get_machine(request_a.machine_id).await.unwrap(),
        None,
        "{}: tenant B gets tenant A's machine",
        peer.name()
    );
    // A forged record naming A's machine must not reach it through B's provider.
    let mut forged = machine(&request_a, Some(&view));
    forged.tenant_id = tenant_b;
    forged.provider_id = provider_b;
    let _ = b.terminate(&forged).await;
    assert!(
        a.get_machine(request_a.machine_id).await.unwrap().is_some(),
        "{}: tenant B's provider terminated tenant A's machine",
        peer.name()
    );
    a.terminate(&machine(&request_a, Some(&view)))
        .await
        .unwrap();
}

pub async fn faults_are_retried_within_bounds(peer: &dyn Peer) {
    let (tenant_id, provider_id) = (TenantId::new(), ProviderId::new());
    let provider = peer.provider(tenant_id, provider_id);
    // A short burst is absorbed.
    for fault in [Fault::Throttle(2), Fault::ServerError(2)] {
        if !peer.inject(fault) {
            continue;
        }
        let request = request(tenant_id, provider_id, peer.spec());
        let view = provider
            .provision(&request)
            .await
            .unwrap_or_else(|err| panic!("{}: {fault:?} not absorbed: {err}", peer.name()));
        provider
            .terminate(&machine(&request, Some(&view)))
            .await
            .unwrap();
    }
    // An endless one becomes a retryable error, in bounded time, and leaves nothing behind.
    for fault in [Fault::Throttle(1000), Fault::ServerError(1000)] {
        if !peer.inject(fault) {
            continue;
        }
        let request = request(tenant_id, provider_id, peer.spec());
        let started = Instant::now();
        let err = provider
            .provision(&request)
            .await
            .expect_err("an endless fault cannot succeed");
        assert!(err.is_retryable(), "{}: {fault:?}: {err}", peer.name());
        assert!(
            started.elapsed() <= peer.fault_bound(),
            "{}: {fault:?} took {:?}",
            peer.name(),
            started.elapsed()
        );
        // Clear the fault, then check nothing was created.
        peer.inject(match fault {
            Fault::Throttle(_) => Fault::Throttle(0),
            _ => Fault::ServerError(0),
        });
        assert_eq!(
            resources_of(provider.as_ref(), tenant_id, request.machine_id).await,
            0,
            "{}: {fault:?} left a resource",
            peer.name()
        );
    }
}

pub async fn wrong_credentials(peer: &dyn Peer) {
    let (tenant_id, provider_id) = (TenantId::new(), ProviderId::new());
    let Some((provider, secret)) = peer.wrong_credentials(tenant_id, provider_id) else {
        return;
    };
    let request = request(tenant_id, provider_id, peer.spec());
    let err = provider
        .provision(&request)
        .await
        .expect_err("wrong credentials cannot provision");
    assert!(
        matches!(err, Error::Permanent(_) | Error::InvalidConfig { .. }),
        "{}: wrong credentials must be a permanent error, got {err:?}",
        peer.name()
    );
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains(&secret),
        "{}: the error shows the secret: {text}",
        peer.name()
    );
    assert!(
        text.contains("credential") || text.contains("token") || text.contains("key"),
        "{}: the error does not name the problem: {text}",
        peer.name()
    );
    let err = provider.list_machines(tenant_id).await.unwrap_err();
    assert!(!err.is_retryable(), "{}: {err}", peer.name());
}

pub async fn only_resource_is_no_duplicate(peer: &dyn Peer) {
    let (tenant_id, provider_id) = (TenantId::new(), ProviderId::new());
    let provider = peer.provider(tenant_id, provider_id);
    let request = request(tenant_id, provider_id, peer.spec());
    let view = provider.provision(&request).await.unwrap();
    let err = provider.remove_duplicate(&view).await;
    assert!(
        matches!(err, Err(Error::Permanent(_))),
        "{}: remove_duplicate of the only resource: {err:?}",
        peer.name()
    );
    assert!(
        provider
            .get_machine(request.machine_id)
            .await
            .unwrap()
            .is_some()
    );
    provider
        .terminate(&machine(&request, Some(&view)))
        .await
        .unwrap();
}
