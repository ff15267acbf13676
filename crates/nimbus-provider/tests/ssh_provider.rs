//! The `ssh` provider against real sshd daemons on loopback (each one a "host" with its own
//! state directory).

#[path = "../../nimbus-setup/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FakeForge, FileServer, fake_github_runner_archive, sha256_hex};
use nimbus_provider::ssh::{SshPool, SshProvider};
use nimbus_provider::{Error, Provider, ProviderEnv, ProviderMachine, ProvisionRequest};
use nimbus_setup::events::{Events, VecSink};
use nimbus_setup::installers::{Pin, RunnerKind, Software};
use nimbus_setup::pipeline::{self, MachinePaths, Plan, RunnerPlan};
use nimbus_setup::ssh::{MemoryHostKeyStore, SshOptions};
use nimbus_testkit::sshd::Sshd;
use nimbus_types::event as ev;
use nimbus_types::{
    Arch, Image, ImageState, ImageType, Machine, MachineId, MachineSpec, MachineState, Os,
    ProviderConfig, ProviderId, ProviderType, Secret, StepStatus, TenantId,
};
use serde_json::json;

struct Hosts {
    sshds: Vec<Sshd>,
    config: ProviderConfig,
}

/// A provider record for `n` loopback daemons; host `i` gets label `host-i` plus `extra_labels`.
fn hosts(n: usize, extra_labels: &[&str]) -> Hosts {
    let sshds: Vec<Sshd> = (0..n).map(|_| Sshd::start().unwrap()).collect();
    hosts_for(sshds, extra_labels)
}

fn hosts_for(sshds: Vec<Sshd>, extra_labels: &[&str]) -> Hosts {
    let mut keys = serde_json::Map::new();
    let hosts: Vec<_> = sshds
        .iter()
        .enumerate()
        .map(|(idx, sshd)| {
            keys.insert(
                format!("{}:{}", sshd.address(), sshd.port()),
                json!(sshd.client_private_key()),
            );
            let mut labels = vec![format!("host-{idx}")];
            labels.extend(extra_labels.iter().map(|l| l.to_string()));
            // A state directory whose name would break naive shell quoting.
            let state_dir = sshd.scratch_dir().join("it's a $(dir); `x`");
            json!({
                "address": sshd.address(),
                "port": sshd.port(),
                "user": sshd.user(),
                "os": "linux",
                "arch": Arch::host().unwrap().as_str(),
                "labels": labels,
                "state_dir": state_dir.display().to_string(),
            })
        })
        .collect();
    let config = ProviderConfig {
        id: ProviderId::new(),
        tenant_id: TenantId::new(),
        name: "byo".into(),
        provider_type: ProviderType::Ssh,
        credentials: Some(Secret::new(json!({ "keys": keys }).to_string())),
        config: json!({"hosts": hosts, "connect_timeout_secs": 5}),
        created_at: nimbus_types::now(),
    };
    Hosts { sshds, config }
}

fn provider(config: &ProviderConfig, sink: &Arc<VecSink>) -> SshProvider {
    let pool = SshPool::new(
        MemoryHostKeyStore::new(),
        Events::new(sink.clone()),
        SshOptions::default(),
    );
    SshProvider::from_provider(config, pool).unwrap()
}

fn request(config: &ProviderConfig, labels: &[&str]) -> ProvisionRequest {
    let mut spec = MachineSpec::new(Os::Linux, Arch::host().unwrap());
    spec.labels = labels.iter().map(|l| l.to_string()).collect();
    ProvisionRequest {
        machine_id: MachineId::new(),
        tenant_id: config.tenant_id,
        provider_id: config.id,
        spec,
    }
}

fn machine(request: &ProvisionRequest, view: &ProviderMachine) -> Machine {
    Machine {
        id: request.machine_id,
        tenant_id: request.tenant_id,
        provider_id: request.provider_id,
        os: request.spec.os,
        arch: request.spec.arch,
        state: MachineState::Provisioning,
        ip_address: view.ip_address.clone(),
        ssh_public_key: None,
        labels: request.spec.labels.clone(),
        instance_type: None,
        image: Image {
            id: None,
            image_type: ImageType::None,
            state: ImageState::Pending,
            installed_at: None,
        },
        created_at: view.created_at,
        updated_at: view.created_at,
        provider_metadata: view.metadata.clone(),
        error: None,
        setup_progress: None,
        pool_id: None,
        usage: Default::default(),
    }
}

#[tokio::test]
async fn provision_setup_list_and_terminate_a_host() {
    let hosts = hosts(1, &["gpu"]);
    let sink = VecSink::new();
    let provider = provider(&hosts.config, &sink);
    let request = request(&hosts.config, &["gpu"]);
    let view = provider.provision(&request).await.unwrap();
    assert_eq!(view.machine_id, Some(request.machine_id));
    let host_id = format!("127.0.0.1:{}", hosts.sshds[0].port());
    assert_eq!(view.metadata.host_id.as_deref(), Some(host_id.as_str()));
    let machine = machine(&request, &view);

    // Set the machine up through the provider's exec, with the paths its metadata names.
    let server = FileServer::start();
    let archive = fake_github_runner_archive();
    server.put("/gh/runner.tar.gz", archive.clone());
    let paths = MachinePaths::from_metadata(&machine.provider_metadata).unwrap();
    let mut plan = Plan::new(
        request.tenant_id,
        request.machine_id,
        &request.spec,
        paths.clone(),
    );
    plan.installers
        .base_urls
        .insert(Software::GithubActionsRunner, server.base_url());
    plan.installers.pins.push(Pin {
        software: Software::GithubActionsRunner,
        os: Os::Linux,
        arch: Arch::host().unwrap(),
        version: "9.9.9".into(),
        sha256: sha256_hex(&archive),
        file: Some("gh/runner.tar.gz".into()),
        format: None,
    });
    plan.runner = Some(RunnerPlan {
        kind: RunnerKind::GithubActions,
        name: "runner-1".into(),
        registration: FakeForge::token("https://github.com/acme", "t0k"),
    });
    plan.setup_script = Some("echo ok".into());
    plan.connect_wait = Duration::from_secs(10);
    let exec = provider.exec(&machine).await.unwrap();
    if let Err(err) = pipeline::run(exec.as_ref(), &plan, &Events::none()).await {
        panic!("setup failed: {err}\nsshd log:\n{}", hosts.sshds[0].log());
    }
    let progress = pipeline::read_progress(exec.as_ref(), &paths.state_db)
        .await
        .unwrap();
    assert!(
        progress
            .steps
            .iter()
            .all(|s| s.status != StepStatus::Failed)
    );
    let pid = std::fs::read_to_string(format!("{}/runner.pid", paths.work_dir)).unwrap();
    let pid = pid.trim().to_owned();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    // Listing and lookup come from the claim on the host.
    let listed = provider.list_machines(request.tenant_id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].machine_id, Some(request.machine_id));
    assert!(
        provider
            .list_machines(TenantId::new())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        provider
            .get_machine(request.machine_id)
            .await
            .unwrap()
            .unwrap()
            .machine_id,
        Some(request.machine_id)
    );
    // A daemon that restarted (new pool, nothing in memory) sees the same claim.
    let restarted = self::provider(&hosts.config, &VecSink::new());
    assert_eq!(
        restarted
            .list_machines(request.tenant_id)
            .await
            .unwrap()
            .len(),
        1
    );
    // One connection served every command of this provider.
    assert_eq!(
        sink.named(ev::SSH_CONNECT_SUCCESS).len(),
        1,
        "{:?}",
        sink.names()
    );

    provider.terminate(&machine).await.unwrap();
    assert!(
        provider
            .get_machine(request.machine_id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(!std::path::Path::new(&paths.state_db).exists());
    assert!(!std::path::Path::new(&paths.work_dir).exists());
    let mut gone = false;
    for _ in 0..100 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(gone, "the runner {pid} survived terminate");
    // Idempotent, and the host is free again.
    provider.terminate(&machine).await.unwrap();
    let again = self::request(&hosts.config, &[]);
    provider.provision(&again).await.unwrap();
}

#[tokio::test]
async fn concurrent_provisions_never_claim_a_host_twice() {
    let hosts = hosts(2, &[]);
    // Two daemons (separate pools) and several requests each, all at once.
    let daemons = [
        Arc::new(provider(&hosts.config, &VecSink::new())),
        Arc::new(provider(&hosts.config, &VecSink::new())),
    ];
    let mut tasks = Vec::new();
    for idx in 0..8 {
        let provider = daemons[idx % 2].clone();
        let request = request(&hosts.config, &[]);
        tasks.push(tokio::spawn(async move {
            let result = provider.provision(&request).await;
            (request, result)
        }));
    }
    let mut won = Vec::new();
    for task in tasks {
        let (request, result) = task.await.unwrap();
        match result {
            Ok(view) => won.push((request.machine_id, view.metadata.host_id.unwrap())),
            Err(err) => {
                assert!(err.is_retryable(), "{err}");
                assert!(err.to_string().contains("capacity"), "{err}");
            }
        }
    }
    assert_eq!(won.len(), 2, "{won:?}");
    assert_ne!(won[0].1, won[1].1, "one host claimed twice: {won:?}");
    let listed = daemons[0]
        .list_machines(hosts.config.tenant_id)
        .await
        .unwrap();
    let mut listed: Vec<_> = listed.into_iter().map(|m| m.machine_id.unwrap()).collect();
    let mut expected: Vec<_> = won.iter().map(|(id, _)| *id).collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn provision_is_idempotent_and_matches_labels() {
    let hosts = hosts(2, &[]);
    let provider = provider(&hosts.config, &VecSink::new());
    let request = request(&hosts.config, &["host-1"]);
    let first = provider.provision(&request).await.unwrap();
    assert_eq!(
        first.metadata.host_id.as_deref(),
        Some(format!("127.0.0.1:{}", hosts.sshds[1].port()).as_str())
    );
    let retry = provider.provision(&request).await.unwrap();
    assert_eq!(retry.metadata.host_id, first.metadata.host_id);
    assert_eq!(retry.created_at, first.created_at);
    assert_eq!(
        provider
            .list_machines(request.tenant_id)
            .await
            .unwrap()
            .len(),
        1
    );

    // Labels that match no host, hostile ones included, are a permanent error and touch nothing.
    for labels in [
        &["gpu"][..],
        &["$(touch pwned)", "a'b;c"][..],
        &["host-0\nhost-1"][..],
    ] {
        let err = provider
            .provision(&self::request(&hosts.config, labels))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Permanent(_)), "{err}");
    }
    let mut macos = self::request(&hosts.config, &[]);
    macos.spec.os = Os::Macos;
    assert!(matches!(
        provider.provision(&macos).await.unwrap_err(),
        Error::Permanent(_)
    ));
    for sshd in &hosts.sshds {
        let found = std::process::Command::new("find")
            .arg(sshd.scratch_dir())
            .arg("-name")
            .arg("pwned")
            .output()
            .unwrap();
        assert!(
            found.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&found.stdout)
        );
    }
}

#[tokio::test]
async fn a_changed_host_key_is_refused_and_reported() {
    let mut hosts = hosts(1, &[]);
    let sink = VecSink::new();
    let provider = provider(&hosts.config, &sink);
    let request = request(&hosts.config, &[]);
    provider.provision(&request).await.unwrap();

    hosts.sshds[0].rotate_host_key().unwrap();
    let err = provider.list_machines(request.tenant_id).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("host key"), "{err}");
    assert_eq!(
        sink.named(ev::SSH_HOST_KEY_MISMATCH).len(),
        1,
        "{:?}",
        sink.names()
    );
    let err = provider
        .provision(&self::request(&hosts.config, &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Permanent(_)), "{err}");
}

#[tokio::test]
async fn a_wrong_key_fails_fast_and_permanently() {
    let mut hosts = hosts(1, &[]);
    let other = Sshd::start().unwrap();
    let key = format!("127.0.0.1:{}", hosts.sshds[0].port());
    hosts.config.credentials = Some(Secret::new(
        json!({"keys": {key: other.client_private_key()}}).to_string(),
    ));
    let provider = provider(&hosts.config, &VecSink::new());
    let started = Instant::now();
    let err = provider
        .provision(&request(&hosts.config, &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Permanent(_)), "{err}");
    assert!(err.to_string().contains("refused the key"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_unreachable_host_is_a_retryable_error_naming_it() {
    let mut hosts = hosts(1, &[]);
    let port = hosts.sshds[0].port();
    hosts.sshds[0].stop();
    let provider = provider(&hosts.config, &VecSink::new());
    let err = provider
        .provision(&request(&hosts.config, &[]))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    let err = provider
        .list_machines(hosts.config.tenant_id)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let err = provider.get_machine(MachineId::new()).await.unwrap_err();
    assert!(
        err.is_retryable(),
        "a machine on an unreachable host may exist: {err}"
    );
}

#[tokio::test]
async fn build_and_validate_wire_the_ssh_type() {
    let hosts = hosts(1, &[]);
    nimbus_provider::validate_config(&hosts.config).unwrap();
    let env = ProviderEnv::new(std::env::temp_dir());
    let provider = nimbus_provider::build(&env, &hosts.config).unwrap();
    assert_eq!(provider.provider_type(), ProviderType::Ssh);
    let request = request(&hosts.config, &[]);
    provider.provision(&request).await.unwrap();
    // A second build for the same record shares the connection pool.
    let again = nimbus_provider::build(&env, &hosts.config).unwrap();
    assert_eq!(
        again.list_machines(request.tenant_id).await.unwrap().len(),
        1
    );

    let mut bad = hosts.config.clone();
    bad.config =
        json!({"hosts": [{"address": "h", "user": "u;id", "os": "linux", "arch": "x86_64"}]});
    match nimbus_provider::validate_config(&bad) {
        Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "config.hosts[0].user"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn hosts_in_network_namespaces_are_distinct_machines() {
    let hosts = hosts_for(
        vec![
            Sshd::start_in_netns().unwrap(),
            Sshd::start_in_netns().unwrap(),
        ],
        &[],
    );
    let provider = provider(&hosts.config, &VecSink::new());
    let first = request(&hosts.config, &[]);
    let second = request(&hosts.config, &[]);
    let a = provider.provision(&first).await.unwrap();
    let b = provider.provision(&second).await.unwrap();
    let mut addresses = vec![a.ip_address.unwrap(), b.ip_address.unwrap()];
    addresses.sort();
    let mut expected: Vec<String> = hosts.sshds.iter().map(|s| s.address().to_owned()).collect();
    expected.sort();
    assert_eq!(addresses, expected);
    assert_eq!(
        provider
            .list_machines(hosts.config.tenant_id)
            .await
            .unwrap()
            .len(),
        2
    );
    let err = provider
        .provision(&request(&hosts.config, &[]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("capacity: 2 of 2"), "{err}");
}
