//! Faults injected by a proxy in front of moto: throttling, 5xx before and after EC2 acted,
//! capacity per zone, rejected credentials, and a crash between every pair of steps.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::proxy::{Fault, FaultProxy, Rule};
use common::*;
use nimbus_aws::{
    AwsProvider, CollectingSink, ManualClock, host_client_token, run_client_token,
    run_client_token_at,
};
use nimbus_provider::{Error, Provider, ProvisionRequest};
use nimbus_testkit::moto::MotoServer;
use nimbus_types::event;
use nimbus_types::{Arch, Os, ProviderId, TenantId};
use serde_json::json;

fn throttle() -> Fault {
    Fault::Error {
        status: 503,
        code: "RequestLimitExceeded",
    }
}

/// A harness whose provider talks to moto through `proxy`.
fn through(proxy: &FaultProxy, tenant: TenantId, provider: ProviderId) -> Harness {
    Harness::new(tenant, provider, config_json(&proxy.endpoint()))
}

fn token_of(body: &str) -> Option<&str> {
    body.split('&')
        .find_map(|pair| pair.strip_prefix("ClientToken="))
}

#[tokio::test]
async fn throttling_and_5xx_are_retried_with_the_same_client_token() {
    let moto = start_moto();
    let proxy = FaultProxy::start(moto.port()).await;
    let raw = raw_client(&moto.endpoint());
    let h = through(&proxy, TenantId::new(), ProviderId::new());
    proxy.add(Rule::new("RunInstances", 2, throttle()));
    proxy.add(Rule::new("DescribeInstances", 2, Fault::Status(502)));

    let request = h.request(Os::Linux, Arch::X86_64);
    let provided =
        h.provider.provision(&request).await.unwrap_or_else(|err| {
            panic!("provision failed: {err}\nproxy saw: {:#?}", proxy.seen())
        });
    assert_eq!(provided.machine_id, Some(request.machine_id));
    assert_eq!(raw_live_instances(&raw).await.len(), 1);

    let runs = proxy.seen_action("RunInstances");
    assert_eq!(runs.len(), 3, "{runs:#?}");
    let want = run_client_token(request.machine_id);
    for run in &runs {
        assert_eq!(token_of(&run.body), Some(want.as_str()), "{run:?}");
    }
    assert_eq!(runs.iter().filter(|r| r.forwarded).count(), 1);

    let failures = h
        .events
        .named(event::CLOUD_PROVIDER_API_CALL_FAILURE, Some("RunInstances"));
    assert_eq!(failures.len(), 2, "{failures:#?}");
    for failure in &failures {
        assert_eq!(failure.metadata["code"], "RequestLimitExceeded");
        assert_eq!(failure.metadata["kind"], "Throttled");
        assert!(failure.duration.is_some());
        assert_eq!(failure.machine_id, Some(request.machine_id));
    }
    let describe_failures = h.events.named(
        event::CLOUD_PROVIDER_API_CALL_FAILURE,
        Some("DescribeInstances"),
    );
    assert_eq!(describe_failures.len(), 2);
    assert_eq!(describe_failures[0].metadata["kind"], "Transient");
    let attempts: Vec<_> = h
        .events
        .named(event::CLOUD_PROVIDER_API_CALL_START, Some("RunInstances"))
        .iter()
        .map(|e| e.metadata["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, vec![1, 2, 3]);

    // Throttling that never ends becomes a retryable error, and nothing is created.
    proxy.add(Rule::new("RunInstances", usize::MAX, throttle()));
    let request = h.request(Os::Linux, Arch::X86_64);
    let err = h.provider.provision(&request).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("RequestLimitExceeded"), "{err}");
    assert!(err.to_string().contains("after 4 attempts"), "{err}");
    assert_eq!(raw_live_instances(&raw).await.len(), 1);
}

#[tokio::test]
async fn a_5xx_after_ec2_acted_is_adopted_not_repeated() {
    let moto = start_moto();
    let proxy = FaultProxy::start(moto.port()).await;
    let raw = raw_client(&moto.endpoint());
    let h = through(&proxy, TenantId::new(), ProviderId::new());

    // RunInstances took effect, the answer was a 500: the tagged instance is adopted.
    proxy.add(Rule::new("RunInstances", 1, Fault::StatusAfterForward(500)));
    let linux = h.request(Os::Linux, Arch::X86_64);
    let provided = h.provider.provision(&linux).await.unwrap();
    let live = raw_live_instances(&raw).await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(
        provided.metadata.instance_id.as_deref(),
        Some(live[0].id.as_str())
    );
    assert_eq!(proxy.seen_action("RunInstances").len(), 1);

    // A 503 before EC2 acted: nothing carries the tag, so the same request is sent again.
    proxy.add(Rule::new("RunInstances", 1, Fault::Status(503)));
    let second = h.request(Os::Linux, Arch::Arm64);
    h.provider.provision(&second).await.unwrap();
    assert_eq!(raw_live_instances(&raw).await.len(), 2);
    let runs: Vec<_> = proxy
        .seen_action("RunInstances")
        .into_iter()
        .filter(|r| token_of(&r.body) == Some(run_client_token(second.machine_id).as_str()))
        .collect();
    assert_eq!(runs.len(), 2, "{runs:#?}");

    // The same for dedicated hosts: AllocateHosts acted, the answer was lost.
    proxy.add(Rule::new(
        "AllocateHosts",
        1,
        Fault::StatusAfterForward(503),
    ));
    let mac = h.request(Os::Macos, Arch::Arm64);
    let provided = h.provider.provision(&mac).await.unwrap();
    let hosts = raw_hosts(&raw).await;
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(
        provided.metadata.host_id.as_deref(),
        Some(hosts[0].id.as_str())
    );
    let allocations = proxy.seen_action("AllocateHosts");
    assert_eq!(allocations.len(), 1);
    assert_eq!(
        token_of(&allocations[0].body),
        Some(host_client_token(mac.machine_id, "us-east-1a").as_str())
    );
    let mac_run = proxy
        .seen_action("RunInstances")
        .into_iter()
        .find(|r| r.body.contains(&mac.machine_id.to_string()))
        .unwrap();
    assert_eq!(
        token_of(&mac_run.body),
        Some(run_client_token_at(mac.machine_id, &hosts[0].id).as_str())
    );
    assert!(
        mac_run
            .body
            .contains(&format!("Placement.HostId={}", hosts[0].id)),
        "{}",
        mac_run.body
    );
    assert!(
        mac_run.body.contains("Placement.Tenancy=host"),
        "{}",
        mac_run.body
    );
}

#[tokio::test]
async fn capacity_errors_move_to_the_next_zone_or_are_retryable() {
    let moto = start_moto();
    let proxy = FaultProxy::start(moto.port()).await;
    let raw = raw_client(&moto.endpoint());
    let insufficient_hosts = Fault::Error {
        status: 400,
        code: "InsufficientHostCapacity",
    };

    // No mac2.metal hosts in us-east-1a: the host comes from us-east-1b.
    let h = through(&proxy, TenantId::new(), ProviderId::new());
    proxy.add(
        Rule::new("AllocateHosts", usize::MAX, insufficient_hosts.clone())
            .when_body_contains("AvailabilityZone=us-east-1a"),
    );
    let mac = h.request(Os::Macos, Arch::Arm64);
    let provided = h.provider.provision(&mac).await.unwrap();
    assert_eq!(provided.metadata.extra["availability_zone"], "us-east-1b");
    let hosts = h.provider.list_hosts().await.unwrap();
    assert_eq!(hosts[0].availability_zone.as_deref(), Some("us-east-1b"));
    let tokens: HashSet<_> = proxy
        .seen_action("AllocateHosts")
        .iter()
        .filter_map(|s| token_of(&s.body).map(str::to_owned))
        .collect();
    assert_eq!(
        tokens,
        HashSet::from([
            host_client_token(mac.machine_id, "us-east-1a"),
            host_client_token(mac.machine_id, "us-east-1b"),
        ])
    );

    // No capacity anywhere: retryable, naming the zones; no host allocated.
    proxy.clear();
    proxy.add(Rule::new("AllocateHosts", usize::MAX, insufficient_hosts));
    let mut request = h.request(Os::Macos, Arch::Arm64);
    request.spec.instance_type = Some("mac2-m2pro.metal".into());
    let err = h.provider.provision(&request).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("us-east-1a") && message.contains("us-east-1b"),
        "{message}"
    );
    assert!(message.contains("mac2-m2pro.metal"), "{message}");
    assert_eq!(raw_hosts(&raw).await.len(), 1);

    // Linux: InsufficientInstanceCapacity in the first zone's subnet moves to the next zone's.
    proxy.clear();
    let subnets = raw.describe_subnets().send().await.unwrap();
    let subnet_in = |az: &str| {
        subnets
            .subnets()
            .iter()
            .find(|s| s.availability_zone() == Some(az))
            .and_then(|s| s.subnet_id())
            .unwrap()
            .to_owned()
    };
    let (subnet_a, subnet_b) = (subnet_in("us-east-1a"), subnet_in("us-east-1b"));
    let mut config = config_json(&proxy.endpoint());
    config["az_subnet_ids"] = json!({"us-east-1a": subnet_a, "us-east-1b": subnet_b});
    let linux_h = Harness::new(TenantId::new(), ProviderId::new(), config);
    proxy.add(
        Rule::new(
            "RunInstances",
            usize::MAX,
            Fault::Error {
                status: 500,
                code: "InsufficientInstanceCapacity",
            },
        )
        .when_body_contains(&format!("SubnetId={subnet_a}")),
    );
    let linux = linux_h.request(Os::Linux, Arch::X86_64);
    let provided = linux_h.provider.provision(&linux).await.unwrap();
    assert_eq!(provided.metadata.extra["availability_zone"], "us-east-1b");
    let runs: Vec<_> = proxy
        .seen_action("RunInstances")
        .into_iter()
        .filter(|r| r.body.contains(&linux.machine_id.to_string()))
        .collect();
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert!(runs[0].body.contains(&format!("SubnetId={subnet_a}")));
    assert!(runs[1].body.contains(&format!("SubnetId={subnet_b}")));
    // Each zone has its own token: EC2 refuses one token with other parameters.
    assert_eq!(
        token_of(&runs[0].body),
        Some(run_client_token_at(linux.machine_id, "us-east-1a").as_str())
    );
    assert_eq!(
        token_of(&runs[1].body),
        Some(run_client_token_at(linux.machine_id, "us-east-1b").as_str())
    );
}

#[tokio::test]
async fn rejected_credentials_are_permanent_and_never_leak() {
    let moto = start_moto();
    let proxy = FaultProxy::start(moto.port()).await;
    let h = through(&proxy, TenantId::new(), ProviderId::new());
    proxy.add(Rule::new(
        "*",
        usize::MAX,
        Fault::Error {
            status: 401,
            code: "AuthFailure",
        },
    ));
    let request = h.request(Os::Linux, Arch::X86_64);
    let err = h.provider.provision(&request).await.unwrap_err();
    assert!(matches!(err, Error::Permanent(_)), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("AuthFailure") && message.contains("credentials"),
        "{message}"
    );
    assert!(!message.contains(SECRET_ACCESS_KEY), "{message}");
    // Not retried: a rejected key does not get better.
    assert_eq!(proxy.seen().len(), 1, "{:#?}", proxy.seen());
    let err = h.provider.list_machines(h.tenant_id).await.unwrap_err();
    assert!(matches!(err, Error::Permanent(_)), "{err}");

    let events = serde_json::to_string(&h.events.events()).unwrap();
    assert!(!events.contains(SECRET_ACCESS_KEY), "{events}");
    assert!(events.contains("AuthFailure"));
    let debug = format!("{:?}", h.provider);
    assert!(!debug.contains(SECRET_ACCESS_KEY), "{debug}");
    // The secret never travels in a request body either (requests are signed, not carrying it).
    assert!(
        proxy
            .seen()
            .iter()
            .all(|s| !s.body.contains(SECRET_ACCESS_KEY))
    );
}

#[tokio::test]
async fn the_default_credential_chain_is_used_without_stored_credentials() {
    // SAFETY: nextest runs each test in its own process and this runtime is single-threaded;
    // nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::remove_var("AWS_PROFILE");
    }
    let moto = start_moto();
    let raw = raw_client(&moto.endpoint());
    let tenant = TenantId::new();
    let mut record = provider_record(tenant, ProviderId::new(), config_json(&moto.endpoint()));
    record.credentials = None;
    let provider = AwsProvider::new(&record, Arc::new(ManualClock::starting_now())).unwrap();
    let request = ProvisionRequest {
        machine_id: nimbus_types::MachineId::new(),
        tenant_id: tenant,
        provider_id: record.id,
        spec: {
            let mut spec = nimbus_types::MachineSpec::new(Os::Linux, Arch::X86_64);
            spec.skip_setup = true;
            spec
        },
    };
    provider.provision(&request).await.unwrap();
    assert_eq!(raw_live_instances(&raw).await.len(), 1);
}

/// Provisions `request` through a proxy that plays dead after `crash_after` mutating requests.
/// Returns whether the provision completed (the crash point lay beyond its last step).
async fn provision_with_crash(
    moto: &MotoServer,
    crash_after: usize,
    request: &ProvisionRequest,
) -> bool {
    let proxy = FaultProxy::start(moto.port()).await;
    proxy.crash_after_mutations(crash_after);
    let events = Arc::new(CollectingSink::new());
    let record = provider_record(
        request.tenant_id,
        request.provider_id,
        config_json(&proxy.endpoint()),
    );
    let provider = AwsProvider::new(&record, Arc::new(ManualClock::starting_now()))
        .unwrap()
        .with_events(events)
        .with_retry_policy(quick_retries(2));
    match provider.provision(request).await {
        Ok(_) => {
            assert!(!proxy.is_dead(), "provision succeeded through a dead proxy");
            true
        }
        Err(err) => {
            assert!(proxy.is_dead(), "provision failed without a crash: {err}");
            assert!(err.is_retryable(), "a crash must look retryable: {err}");
            false
        }
    }
}

/// Every instance and host moto holds is visible to a fresh provider: instances through
/// `list_machines` (where the reconciler finds orphans), hosts through `list_hosts`.
async fn assert_nothing_unknown(moto: &MotoServer, h: &Harness, step: &str) {
    let raw = raw_client(&moto.endpoint());
    let listed: HashSet<String> = h
        .provider
        .list_machines(h.tenant_id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| m.metadata.instance_id)
        .collect();
    for instance in raw_live_instances(&raw).await {
        assert!(
            listed.contains(&instance.id),
            "{step}: instance {instance:?} not listed"
        );
    }
    let hosts: HashSet<String> = h
        .provider
        .list_hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    for host in raw_unreleased_hosts(&raw).await {
        assert!(hosts.contains(&host.id), "{step}: host {host:?} not listed");
    }
}

async fn crash_matrix(os: Os, arch: Arch, steps: &[&str]) {
    let moto = start_moto();
    let raw = raw_client(&moto.endpoint());
    let tenant = TenantId::new();
    let provider_id = ProviderId::new();
    let mut completed = false;
    // Crash before the first step, after each step (its answer lost), and never.
    for crash_after in 0..=steps.len() + 1 {
        let step = format!(
            "{os} crash after {crash_after} mutating requests ({})",
            steps[..crash_after.min(steps.len())].join(", ")
        );
        moto.reset().unwrap();

        // Intent kept: the lifecycle layer retries the provision with the same machine id on a
        // fresh daemon, which adopts what exists instead of creating more.
        let h = Harness::new(tenant, provider_id, config_json(&moto.endpoint()));
        let request = h.request(os, arch);
        completed = provision_with_crash(&moto, crash_after, &request).await;
        assert_nothing_unknown(&moto, &h, &step).await;
        let provided = h
            .provider
            .provision(&request)
            .await
            .unwrap_or_else(|err| panic!("{step}: retried provision failed: {err}"));
        let live = raw_live_instances(&raw).await;
        assert_eq!(live.len(), 1, "{step}: {live:?}");
        assert_eq!(
            provided.metadata.instance_id.as_deref(),
            Some(live[0].id.as_str()),
            "{step}"
        );
        let hosts = raw_unreleased_hosts(&raw).await;
        if os == Os::Macos {
            assert_eq!(
                hosts.len(),
                1,
                "{step}: one host, reused by the retry: {hosts:?}"
            );
            assert_eq!(
                provided.metadata.host_id.as_deref(),
                Some(hosts[0].id.as_str()),
                "{step}"
            );
        } else {
            assert!(hosts.is_empty(), "{step}");
        }
        // The listing the reconciler works from holds the machine's one instance: no orphan,
        // no duplicate.
        let listed = h.provider.list_machines(tenant).await.unwrap();
        assert_eq!(listed.len(), 1, "{step}: {listed:?}");
        assert_eq!(listed[0].machine_id, Some(request.machine_id), "{step}");
        assert_eq!(
            listed[0].metadata.instance_id, provided.metadata.instance_id,
            "{step}"
        );

        // Intent abandoned: every listed machine id is unknown to the store, and the reconciler
        // terminates each through a stand-in record (`terminate` ends every instance of the id);
        // a host outlives them only until its minimum allocation period ends.
        moto.reset().unwrap();
        let h = Harness::new(tenant, provider_id, config_json(&moto.endpoint()));
        let request = h.request(os, arch);
        provision_with_crash(&moto, crash_after, &request).await;
        assert_nothing_unknown(&moto, &h, &step).await;
        let before = raw_live_instances(&raw).await.len();
        let listed = h.provider.list_machines(tenant).await.unwrap();
        assert_eq!(listed.len(), before, "{step}: {listed:?}");
        for seen in &listed {
            let mut stand_in = intent_record(&request);
            stand_in.id = seen
                .machine_id
                .expect("instances carry their machine's tag");
            stand_in.state = nimbus_types::MachineState::Stopping;
            stand_in.provider_metadata = seen.metadata.clone();
            h.provider.terminate(&stand_in).await.unwrap();
        }
        assert!(raw_live_instances(&raw).await.is_empty(), "{step}");
        h.clock.advance(time::Duration::hours(25));
        h.provider.reconcile_hosts().await.unwrap();
        assert!(raw_unreleased_hosts(&raw).await.is_empty(), "{step}");
    }
    assert!(
        completed,
        "the last crash point must lie beyond the provision's last step"
    );
}

#[tokio::test]
async fn a_crash_between_any_two_mac_steps_leaves_nothing_unknown() {
    crash_matrix(
        Os::Macos,
        Arch::Arm64,
        &["ImportKeyPair", "AllocateHosts", "RunInstances"],
    )
    .await;
}

#[tokio::test]
async fn a_crash_between_any_two_linux_steps_leaves_nothing_unknown() {
    crash_matrix(Os::Linux, Arch::X86_64, &["ImportKeyPair", "RunInstances"]).await;
}

#[tokio::test]
async fn a_crash_while_terminating_is_finished_by_the_next_terminate() {
    let moto = start_moto();
    let raw = raw_client(&moto.endpoint());
    let steps = ["TerminateInstances", "CreateTags", "ReleaseHosts"];
    for crash_after in 0..=steps.len() {
        let step = format!("crash after {:?}", &steps[..crash_after]);
        moto.reset().unwrap();
        let clock = Arc::new(ManualClock::starting_now());
        let h = Harness::with_clock(
            TenantId::new(),
            ProviderId::new(),
            config_json(&moto.endpoint()),
            clock.clone(),
        );
        let request = h.request(Os::Macos, Arch::Arm64);
        let provided = h.provider.provision(&request).await.unwrap();
        let machine = machine_record(&request, &provided);
        clock.advance(time::Duration::hours(25));

        let proxy = FaultProxy::start(moto.port()).await;
        proxy.crash_after_mutations(crash_after);
        let dying = AwsProvider::new(
            &provider_record(h.tenant_id, h.provider_id, config_json(&proxy.endpoint())),
            clock.clone(),
        )
        .unwrap()
        .with_retry_policy(quick_retries(2));
        let result = dying.terminate(&machine).await;
        assert_eq!(result.is_ok(), !proxy.is_dead(), "{step}: {result:?}");

        // The lifecycle layer terminates again (from its intent) on a fresh daemon.
        assert_nothing_unknown(&moto, &h, &step).await;
        h.provider.terminate(&machine).await.unwrap();
        assert!(raw_live_instances(&raw).await.is_empty(), "{step}");
        assert!(
            raw_unreleased_hosts(&raw).await.is_empty(),
            "{step}: {:?}",
            raw_hosts(&raw).await
        );
    }
}
