//! The forge conformance suite: one contract for every `Forge` implementation.
//!
//! A forge's test file implements [`ForgePeer`] for its (Prism-checked) peer and calls [`run`];
//! a new forge is done when it passes. What it holds every forge to:
//! 1. register (`jit_config`) / list / get / status / remove round trip; removing twice is
//!    `NotFound`;
//! 2. a crash between registering and recording it (the answer is lost) leaves no leak — the
//!    orphan sweep removes the runner — and a retried registration leaves one runner per name;
//! 3. a busy runner is never removed, and one that turns busy between the check and the delete
//!    is reported busy (its machine stays);
//! 4. throttling and 5xx are retried within bounds: a short burst is absorbed, an endless one is
//!    a retryable error in bounded time;
//! 5. wrong credentials give a permanent error that names the problem without the secret;
//! 6. one tenant's forge neither lists, gets nor sweeps another tenant's runners.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_forge::lifecycle::{self, MemorySink, Outcome, Subject};
use nimbus_forge::{Error, Forge, JitRequest, RunnerId, RunnerStatus};
use nimbus_types::TenantId;

/// Faults a peer can inject into its next calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Throttle(u32),
    ServerError(u32),
    /// The next runner registration takes effect but its answer is lost.
    LoseRegistration,
    /// Drop whatever fault is still armed.
    Clear,
}

pub trait ForgePeer: Send + Sync {
    fn name(&self) -> &str;
    /// The tenant's forge client on this peer (a restarted daemon builds a new one).
    fn forge(&self, tenant_id: TenantId) -> Arc<dyn Forge>;
    /// The same peer with credentials it rejects, and the secret that must not show.
    fn wrong_credentials(&self, tenant_id: TenantId) -> (Arc<dyn Forge>, String);
    /// The runner connects to the forge (what the runner software does after registering).
    fn connect(&self, runner: RunnerId);
    /// A job the runner runs right now.
    fn run_job_on(&self, runner: RunnerId);
    /// Arms the race: the runner takes a job the moment its removal arrives.
    fn take_job_on_remove(&self, runner: RunnerId);
    fn inject(&self, fault: Fault) -> bool;
    fn fault_bound(&self) -> Duration {
        Duration::from_secs(30)
    }
    fn violations(&self) -> Vec<String> {
        Vec::new()
    }
}

fn request(name: &str) -> JitRequest {
    JitRequest {
        name: name.to_owned(),
        runner_group_id: 1,
        labels: vec!["linux".into(), "x64".into()],
        work_folder: None,
    }
}

fn runner_name() -> String {
    format!("nimbus-{}", nimbus_types::MachineId::new())
}

async fn named(forge: &dyn Forge, name: &str) -> Vec<RunnerId> {
    forge
        .list_runners()
        .await
        .expect("list_runners")
        .into_iter()
        .filter(|r| r.name == name)
        .map(|r| r.id)
        .collect()
}

fn subject(tenant_id: TenantId) -> Subject {
    Subject {
        tenant_id,
        machine_id: None,
    }
}

pub async fn run(peer: &dyn ForgePeer) {
    round_trip(peer).await;
    lost_registration(peer).await;
    busy_runners_are_kept(peer).await;
    faults_are_retried_within_bounds(peer).await;
    wrong_credentials(peer).await;
    tenant_isolation(peer).await;
    let violations = peer.violations();
    assert!(
        violations.is_empty(),
        "{}: the peer found invalid requests or responses:\n{}",
        peer.name(),
        violations.join("\n")
    );
}

pub async fn round_trip(peer: &dyn ForgePeer) {
    let tenant_id = TenantId::new();
    let forge = peer.forge(tenant_id);
    let name = runner_name();
    let jit = forge
        .jit_config(&request(&name))
        .await
        .unwrap_or_else(|err| panic!("{}: jit_config: {err}", peer.name()));
    assert!(!jit.encoded_jit_config.expose().is_empty());
    assert!(!format!("{jit:?}").contains(jit.encoded_jit_config.expose()));
    assert_eq!(named(forge.as_ref(), &name).await, vec![jit.runner.id]);
    let got = forge.get_runner(jit.runner.id).await.unwrap();
    assert_eq!(got.name, name);
    assert!(
        got.labels.contains(&jit.unique_label),
        "{}: the runner is found by its unique label: {got:?}",
        peer.name()
    );
    assert_ne!(
        forge.runner_status(jit.runner.id).await.unwrap(),
        RunnerStatus::Busy
    );
    peer.connect(jit.runner.id);
    assert_eq!(
        forge.runner_status(jit.runner.id).await.unwrap(),
        RunnerStatus::Idle,
        "{}: a connected runner without a job is idle",
        peer.name()
    );
    forge
        .remove_runner(jit.runner.id)
        .await
        .unwrap_or_else(|err| {
            panic!(
                "{}: remove_runner: {err}\n{}",
                peer.name(),
                peer.violations().join("\n")
            )
        });
    assert!(named(forge.as_ref(), &name).await.is_empty());
    assert!(
        matches!(
            forge.remove_runner(jit.runner.id).await,
            Err(Error::NotFound(_))
        ),
        "{}: removing a removed runner is NotFound",
        peer.name()
    );
    assert!(matches!(
        forge.get_runner(jit.runner.id).await,
        Err(Error::NotFound(_))
    ));
}

pub async fn lost_registration(peer: &dyn ForgePeer) {
    if !peer.inject(Fault::LoseRegistration) {
        return;
    }
    let tenant_id = TenantId::new();
    let forge = peer.forge(tenant_id);
    let name = runner_name();
    let lost = forge.jit_config(&request(&name)).await;
    assert!(
        lost.is_err(),
        "{}: the answer was lost, the call cannot succeed",
        peer.name()
    );
    // The machine's setup retries: one runner of that name, never two.
    let restarted = peer.forge(tenant_id);
    let jit = restarted.jit_config(&request(&name)).await.unwrap();
    assert_eq!(
        named(restarted.as_ref(), &name).await,
        vec![jit.runner.id],
        "{}: a retried registration leaves exactly one runner",
        peer.name()
    );
    // Or the machine went away: the sweep removes what no live machine stands behind.
    let other = runner_name();
    peer.inject(Fault::LoseRegistration);
    let _ = restarted.jit_config(&request(&other)).await;
    assert_eq!(named(restarted.as_ref(), &other).await.len(), 1);
    let sink = MemorySink::default();
    let live: HashSet<String> = [name.clone()].into_iter().collect();
    let report = lifecycle::remove_orphans(restarted.as_ref(), &live, tenant_id, &sink)
        .await
        .unwrap();
    assert_eq!(report.removed.len(), 1, "{}: {report:?}", peer.name());
    assert!(named(restarted.as_ref(), &other).await.is_empty());
    assert_eq!(named(restarted.as_ref(), &name).await, vec![jit.runner.id]);
    restarted.remove_runner(jit.runner.id).await.unwrap();
}

pub async fn busy_runners_are_kept(peer: &dyn ForgePeer) {
    let tenant_id = TenantId::new();
    let forge = peer.forge(tenant_id);
    let sink = MemorySink::default();

    // Busy when asked: not removed.
    let busy = forge.jit_config(&request(&runner_name())).await.unwrap();
    peer.connect(busy.runner.id);
    peer.run_job_on(busy.runner.id);
    assert_eq!(
        forge.runner_status(busy.runner.id).await.unwrap(),
        RunnerStatus::Busy
    );
    let outcome =
        lifecycle::deregister_then_check(forge.as_ref(), busy.runner.id, subject(tenant_id), &sink)
            .await
            .unwrap();
    assert_eq!(outcome, Outcome::Busy, "{}", peer.name());
    assert_eq!(
        named(forge.as_ref(), &busy.runner.name).await,
        vec![busy.runner.id]
    );

    // Idle at the check, busy by the delete: reported busy, so its machine stays.
    let racing = forge.jit_config(&request(&runner_name())).await.unwrap();
    peer.connect(racing.runner.id);
    peer.take_job_on_remove(racing.runner.id);
    let outcome = lifecycle::deregister_then_check(
        forge.as_ref(),
        racing.runner.id,
        subject(tenant_id),
        &sink,
    )
    .await
    .unwrap();
    assert_eq!(
        outcome,
        Outcome::Busy,
        "{}: a runner that took a job during its removal is reported busy",
        peer.name()
    );
}

pub async fn faults_are_retried_within_bounds(peer: &dyn ForgePeer) {
    let tenant_id = TenantId::new();
    let forge = peer.forge(tenant_id);
    for fault in [Fault::Throttle(2), Fault::ServerError(2)] {
        if !peer.inject(fault) {
            continue;
        }
        forge
            .list_runners()
            .await
            .unwrap_or_else(|err| panic!("{}: {fault:?} not absorbed: {err}", peer.name()));
    }
    for fault in [Fault::Throttle(1000), Fault::ServerError(1000)] {
        if !peer.inject(fault) {
            continue;
        }
        let started = Instant::now();
        let err = forge
            .list_runners()
            .await
            .expect_err("an endless fault cannot succeed");
        assert!(err.is_retryable(), "{}: {fault:?}: {err}", peer.name());
        assert!(
            started.elapsed() <= peer.fault_bound(),
            "{}: {fault:?} took {:?}",
            peer.name(),
            started.elapsed()
        );
        peer.inject(Fault::Clear);
    }
}

pub async fn wrong_credentials(peer: &dyn ForgePeer) {
    let tenant_id = TenantId::new();
    let (forge, secret) = peer.wrong_credentials(tenant_id);
    let err = forge
        .jit_config(&request(&runner_name()))
        .await
        .expect_err("wrong credentials cannot register");
    assert!(
        matches!(err, Error::Unauthorized(_) | Error::Permanent(_)),
        "{}: {err:?}",
        peer.name()
    );
    assert!(!err.is_retryable());
    let text = format!("{err} {err:?}");
    assert!(!text.contains(&secret), "{}: {text}", peer.name());
    assert!(
        text.contains("credential") || text.contains("token"),
        "{}: the error does not name the problem: {text}",
        peer.name()
    );
}

pub async fn tenant_isolation(peer: &dyn ForgePeer) {
    let (tenant_a, tenant_b) = (TenantId::new(), TenantId::new());
    let a = peer.forge(tenant_a);
    let b = peer.forge(tenant_b);
    let jit = a.jit_config(&request(&runner_name())).await.unwrap();
    assert!(
        b.list_runners()
            .await
            .unwrap()
            .iter()
            .all(|r| r.id != jit.runner.id),
        "{}: tenant B lists tenant A's runner",
        peer.name()
    );
    assert!(matches!(
        b.get_runner(jit.runner.id).await,
        Err(Error::NotFound(_))
    ));
    let sink = MemorySink::default();
    let report = lifecycle::remove_orphans(b.as_ref(), &HashSet::new(), tenant_b, &sink)
        .await
        .unwrap();
    assert!(!report.removed.contains(&jit.runner.id), "{report:?}");
    assert_eq!(
        named(a.as_ref(), &jit.runner.name).await,
        vec![jit.runner.id],
        "{}: tenant B's sweep removed tenant A's runner",
        peer.name()
    );
    a.remove_runner(jit.runner.id).await.unwrap();
}
