//! Machine lifecycles against a real moto server: EC2 Mac on dedicated hosts with the 24-hour
//! minimum, host reuse and scrubbing, Linux on both architectures, and the fleet recovered from
//! tags by a provider that never saw it being created.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nimbus_aws::{Clock, HostState, ManualClock};
use nimbus_provider::{Error, Provider, ProviderStatus};
use nimbus_types::event;
use nimbus_types::{Arch, MachineId, Os, ProviderId, TenantId};
use serde_json::json;

fn hours(n: i64) -> time::Duration {
    time::Duration::hours(n)
}

#[tokio::test]
async fn mac_lifecycle_keeps_the_host_for_24_hours_then_releases_it() {
    let moto = start_moto();
    let raw = raw_client(&moto.endpoint());
    let h = Harness::new(
        TenantId::new(),
        ProviderId::new(),
        config_json(&moto.endpoint()),
    );

    let request = h.request(Os::Macos, Arch::Arm64);
    let provided = h
        .provider
        .provision(&request)
        .await
        .unwrap_or_else(|err| panic!("provision failed: {err}\nmoto log:\n{}", moto.log()));
    assert_eq!(provided.machine_id, Some(request.machine_id));
    assert_eq!(provided.tenant_id, Some(h.tenant_id));
    let host_id = provided
        .metadata
        .host_id
        .clone()
        .expect("mac machines have a host");
    assert!(
        provided
            .metadata
            .instance_id
            .as_deref()
            .unwrap()
            .starts_with("i-")
    );
    assert_eq!(provided.metadata.minimum_allocation_hours, Some(24));
    assert_eq!(provided.metadata.extra["instance_type"], "mac2.metal");
    assert!(
        provided.metadata.extra.contains_key("host_releasable_at"),
        "{provided:?}"
    );
    let age = nimbus_types::now() - provided.created_at;
    assert!(
        age.abs() < time::Duration::minutes(5),
        "created_at from launch time: {provided:?}"
    );

    // The host is a first-class record, tagged, occupied by this machine.
    let hosts = h.provider.list_hosts().await.unwrap();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    let host = &hosts[0];
    assert_eq!(host.id, host_id);
    assert_eq!(host.state, HostState::Occupied);
    assert_eq!(host.instance_type.as_deref(), Some("mac2.metal"));
    assert_eq!(host.availability_zone.as_deref(), Some("us-east-1a"));
    assert_eq!(host.machine_id, Some(request.machine_id));
    assert_eq!(host.releasable_at - host.allocated_at, hours(24));
    let raw_host = &raw_hosts(&raw).await[0];
    assert_eq!(raw_host.tags["nimbus:tenant"], h.tenant_id.to_string());
    assert_eq!(raw_host.tags["nimbus:provider"], h.provider_id.to_string());
    assert_eq!(raw_host.tags["managed-by"], "nimbus");
    assert_eq!(raw_host.tags["team"], "ci");

    // The instance carries every tag and sits on the host.
    let instances = raw_live_instances(&raw).await;
    assert_eq!(instances.len(), 1);
    let instance = &instances[0];
    assert_eq!(instance.host_id.as_deref(), Some(host_id.as_str()));
    for (key, value) in [
        ("nimbus:tenant", h.tenant_id.to_string()),
        ("nimbus:machine", request.machine_id.to_string()),
        ("nimbus:provider", h.provider_id.to_string()),
        ("managed-by", "nimbus".to_owned()),
        ("nimbus:os", "macos".to_owned()),
    ] {
        assert_eq!(
            instance.tags.get(key),
            Some(&value),
            "tag {key} on {instance:?}"
        );
    }

    // Within the minimum allocation period, terminating is refused with the hours left.
    let machine = machine_record(&request, &provided);
    h.clock.advance(hours(6));
    let answer = h.provider.can_terminate(&machine).await.unwrap();
    assert!(!answer.can_terminate, "{answer:?}");
    assert_eq!(answer.error.as_deref(), Some("minimum_allocation_period"));
    assert_eq!(answer.minimum_allocation_period, Some(24));
    let left = answer.hours_remaining.unwrap();
    assert!((17.5..=18.1).contains(&left), "hours_remaining {left}");

    // Past 24 hours: allowed; terminate ends the instance and releases the idle host.
    h.clock.advance(hours(19));
    let answer = h.provider.can_terminate(&machine).await.unwrap();
    assert!(answer.can_terminate, "{answer:?}");
    h.provider.terminate(&machine).await.unwrap();
    assert!(raw_live_instances(&raw).await.is_empty());
    let raw_host = &raw_hosts(&raw).await[0];
    assert_eq!(raw_host.state, "released", "{raw_host:?}");
    assert!(h.provider.list_hosts().await.unwrap().is_empty());
    assert_eq!(
        h.provider.get_machine(request.machine_id).await.unwrap(),
        None
    );
    let released: Vec<_> = h
        .events
        .named(event::MACHINE_RECONCILED, None)
        .into_iter()
        .filter(|e| e.metadata["action"] == "host_released")
        .collect();
    assert_eq!(released.len(), 1);

    // Terminating again is a no-op.
    h.provider.terminate(&machine).await.unwrap();
}

#[tokio::test]
async fn hosts_are_reused_after_scrubbing_and_released_by_the_reconciler() {
    let moto = start_moto();
    let raw = raw_client(&moto.endpoint());
    let h = Harness::new(
        TenantId::new(),
        ProviderId::new(),
        config_json(&moto.endpoint()),
    );

    let first = h.request(Os::Macos, Arch::Arm64);
    let provided = h.provider.provision(&first).await.unwrap();
    let host_id = provided.metadata.host_id.clone().unwrap();
    assert_eq!(
        h.events
            .named(
                event::CLOUD_PROVIDER_API_CALL_SUCCESS,
                Some("AllocateHosts")
            )
            .len(),
        1
    );

    // Terminated inside the 24 hours: the instance ends, the host is kept (scrubbing).
    h.clock.advance(hours(2));
    h.provider
        .terminate(&machine_record(&first, &provided))
        .await
        .unwrap();
    assert!(raw_live_instances(&raw).await.is_empty());
    let hosts = h.provider.list_hosts().await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert!(
        matches!(hosts[0].state, HostState::Scrubbing { until: Some(_) }),
        "{hosts:?}"
    );
    let report = h.provider.reconcile_hosts().await.unwrap();
    assert!(report.released.is_empty(), "{report:?}");
    assert_eq!(report.kept.len(), 1, "{report:?}");
    assert!(report.kept[0].1.contains("hours remaining"), "{report:?}");

    // While it scrubs, another Mac gets a second host.
    let second = h.request(Os::Macos, Arch::Arm64);
    let provided_second = h.provider.provision(&second).await.unwrap();
    let second_host = provided_second.metadata.host_id.clone().unwrap();
    assert_ne!(second_host, host_id);
    assert_eq!(
        h.events
            .named(
                event::CLOUD_PROVIDER_API_CALL_SUCCESS,
                Some("AllocateHosts")
            )
            .len(),
        2
    );

    // After scrubbing, the first host is idle and the next Mac reuses it: no new allocation.
    h.clock.advance(time::Duration::minutes(51));
    let hosts = h.provider.list_hosts().await.unwrap();
    let first_host = hosts.iter().find(|host| host.id == host_id).unwrap();
    assert_eq!(first_host.state, HostState::Idle);
    let third = h.request(Os::Macos, Arch::Arm64);
    let provided_third = h.provider.provision(&third).await.unwrap();
    assert_eq!(
        provided_third.metadata.host_id.as_deref(),
        Some(host_id.as_str())
    );
    assert_eq!(
        h.events
            .named(
                event::CLOUD_PROVIDER_API_CALL_SUCCESS,
                Some("AllocateHosts")
            )
            .len(),
        2
    );
    let hosts = h.provider.list_hosts().await.unwrap();
    assert!(
        hosts.iter().all(|host| host.state == HostState::Occupied),
        "{hosts:?}"
    );
    let reused = hosts.iter().find(|host| host.id == host_id).unwrap();
    assert_eq!(reused.machine_id, Some(third.machine_id));

    // An x86_64 Mac needs a mac1.metal host: no reuse across instance types.
    let intel = h.request(Os::Macos, Arch::X86_64);
    let provided_intel = h.provider.provision(&intel).await.unwrap();
    assert_eq!(provided_intel.metadata.extra["instance_type"], "mac1.metal");
    let intel_host = provided_intel.metadata.host_id.clone().unwrap();
    assert!(![host_id.as_str(), second_host.as_str()].contains(&intel_host.as_str()));

    // Terminated past 24 hours, each host goes back; the reconciler has nothing left to do.
    h.clock.advance(hours(30));
    for (request, provided) in [
        (&second, &provided_second),
        (&third, &provided_third),
        (&intel, &provided_intel),
    ] {
        h.provider
            .terminate(&machine_record(request, provided))
            .await
            .unwrap();
    }
    assert!(h.provider.list_hosts().await.unwrap().is_empty());
    assert!(raw_unreleased_hosts(&raw).await.is_empty());
    let report = h.provider.reconcile_hosts().await.unwrap();
    assert!(
        report.released.is_empty() && report.kept.is_empty(),
        "{report:?}"
    );
}

#[tokio::test]
async fn dedicated_hosts_tell_the_autoscaler_occupancy_scrubbing_and_the_minimum() {
    let moto = start_moto();
    let h = Harness::new(
        TenantId::new(),
        ProviderId::new(),
        config_json(&moto.endpoint()),
    );
    let mac = h.request(Os::Macos, Arch::Arm64);
    // Linux machines run on no dedicated host; a Mac pool starts with none.
    let linux = h.request(Os::Linux, Arch::X86_64);
    assert_eq!(h.provider.dedicated_hosts(&linux.spec).await.unwrap(), None);
    assert_eq!(
        h.provider.dedicated_hosts(&mac.spec).await.unwrap(),
        Some(Vec::new())
    );

    let provided = h.provider.provision(&mac).await.unwrap();
    let host_id = provided.metadata.host_id.clone().unwrap();
    let hosts = h
        .provider
        .dedicated_hosts(&mac.spec)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0].id, host_id);
    assert_eq!(hosts[0].machine_id, Some(mac.machine_id));
    assert_eq!(hosts[0].scrubbing_until, None);
    assert_eq!(hosts[0].releasable_at - hosts[0].allocated_at, hours(24));
    // An Intel Mac's pool (mac1.metal) does not see the mac2.metal host.
    let intel = h.request(Os::Macos, Arch::X86_64);
    assert_eq!(
        h.provider.dedicated_hosts(&intel.spec).await.unwrap(),
        Some(Vec::new())
    );

    // The instance ends inside the minimum: the host stays, scrubbing for 50 minutes.
    h.clock.advance(hours(2));
    h.provider
        .terminate(&machine_record(&mac, &provided))
        .await
        .unwrap();
    let hosts = h
        .provider
        .dedicated_hosts(&mac.spec)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0].machine_id, None);
    let until = hosts[0].scrubbing_until.expect("scrubbing");
    let expected = h.clock.now() + time::Duration::minutes(50);
    assert!(
        (until - expected).abs() <= time::Duration::seconds(1),
        "{until} vs {expected}"
    );
    // Scrubbed: free for the pool's next machine, still inside its minimum.
    h.clock.advance(time::Duration::minutes(51));
    let hosts = h
        .provider
        .dedicated_hosts(&mac.spec)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (hosts[0].machine_id, hosts[0].scrubbing_until),
        (None, None)
    );
    assert!(hosts[0].releasable_at > h.clock.now());
}

#[tokio::test]
async fn idle_hosts_past_their_minimum_are_released_by_the_reconciler() {
    let moto = start_moto();
    let raw = raw_client(&moto.endpoint());
    let h = Harness::new(
        TenantId::new(),
        ProviderId::new(),
        config_json(&moto.endpoint()),
    );
    let request = h.request(Os::Macos, Arch::Arm64);
    let provided = h.provider.provision(&request).await.unwrap();
    h.provider
        .terminate(&machine_record(&request, &provided))
        .await
        .unwrap();
    assert_eq!(
        raw_unreleased_hosts(&raw).await.len(),
        1,
        "kept inside the minimum"
    );

    h.clock.advance(hours(23));
    let report = h.provider.reconcile_hosts().await.unwrap();
    assert!(report.released.is_empty(), "{report:?}");

    h.clock.advance(hours(2));
    let report = h.provider.reconcile_hosts().await.unwrap();
    assert_eq!(
        report.released,
        vec![provided.metadata.host_id.clone().unwrap()]
    );
    assert!(raw_unreleased_hosts(&raw).await.is_empty());
    // Idempotent.
    let report = h.provider.reconcile_hosts().await.unwrap();
    assert!(
        report.released.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
}

#[tokio::test]
async fn linux_lifecycle_on_both_architectures() {
    let moto = start_moto();
    let raw = raw_client(&moto.endpoint());
    // Subnet and security group from moto's default VPC, as a user would configure them.
    let subnets = raw.describe_subnets().send().await.unwrap();
    let subnet = subnets
        .subnets()
        .iter()
        .find(|s| s.availability_zone() == Some("us-east-1b"))
        .and_then(|s| s.subnet_id())
        .expect("moto's default subnet in us-east-1b")
        .to_owned();
    let groups = raw.describe_security_groups().send().await.unwrap();
    let group = groups.security_groups()[0].group_id().unwrap().to_owned();
    let mut config = config_json(&moto.endpoint());
    config["subnet_id"] = json!(subnet);
    config["security_group_ids"] = json!([group]);
    config["user_data"] = json!("#!/bin/sh\necho nimbus");
    let h = Harness::new(TenantId::new(), ProviderId::new(), config);

    let x86 = h.request(Os::Linux, Arch::X86_64);
    let arm = h.request(Os::Linux, Arch::Arm64);
    let px86 = h.provider.provision(&x86).await.unwrap();
    let parm = h.provider.provision(&arm).await.unwrap();
    assert_eq!(px86.metadata.extra["instance_type"], "t3.micro");
    assert_eq!(parm.metadata.extra["instance_type"], "t4g.micro");
    assert_eq!(
        px86.metadata.extra["image_id"],
        nimbus_testkit::moto::AMI_LINUX_X86_64
    );
    assert_eq!(
        parm.metadata.extra["image_id"],
        nimbus_testkit::moto::AMI_LINUX_ARM64
    );
    assert_eq!(px86.metadata.host_id, None);
    assert_eq!(px86.metadata.minimum_allocation_hours, None);
    assert_eq!(px86.metadata.extra["availability_zone"], "us-east-1b");
    let key_name = nimbus_aws::default_key_name(h.tenant_id, SSH_PUBLIC_KEY);
    assert!(
        key_name.starts_with(&format!("nimbus-{}-", h.tenant_id)),
        "{key_name}"
    );
    assert_eq!(px86.metadata.extra["key_name"], key_name);
    assert_eq!(px86.ssh_public_key.as_deref(), Some(SSH_PUBLIC_KEY));
    assert!(px86.ip_address.is_some());
    assert!(matches!(
        px86.status,
        ProviderStatus::Running | ProviderStatus::Pending
    ));

    // The key pair was imported once, for the tenant.
    let keys = raw.describe_key_pairs().send().await.unwrap();
    let names: Vec<_> = keys
        .key_pairs()
        .iter()
        .filter_map(|k| k.key_name())
        .collect();
    assert_eq!(names, vec![key_name.as_str()]);
    assert_eq!(
        h.events
            .named(
                event::CLOUD_PROVIDER_API_CALL_SUCCESS,
                Some("ImportKeyPair")
            )
            .len(),
        1
    );

    // User data went along, base64-encoded as EC2 wants it.
    let attribute = raw
        .describe_instance_attribute()
        .instance_id(px86.metadata.instance_id.clone().unwrap())
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let encoded = attribute
        .user_data()
        .and_then(|v| v.value())
        .unwrap_or_default()
        .to_owned();
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_default();
    assert_eq!(String::from_utf8_lossy(&decoded), "#!/bin/sh\necho nimbus");

    let listed = h.provider.list_machines(h.tenant_id).await.unwrap();
    let ids: HashSet<_> = listed.iter().filter_map(|m| m.machine_id).collect();
    assert_eq!(ids, HashSet::from([x86.machine_id, arm.machine_id]));
    let got = h.provider.get_machine(x86.machine_id).await.unwrap();
    assert_eq!(
        got.as_ref(),
        listed.iter().find(|m| m.machine_id == Some(x86.machine_id))
    );
    assert_eq!(got.unwrap().metadata.instance_id, px86.metadata.instance_id);
    let x86_machine = machine_record(&x86, &px86);
    assert!(
        h.provider
            .can_terminate(&x86_machine)
            .await
            .unwrap()
            .can_terminate
    );

    h.provider.terminate(&x86_machine).await.unwrap();
    assert_eq!(h.provider.get_machine(x86.machine_id).await.unwrap(), None);
    h.provider.terminate(&x86_machine).await.unwrap();
    h.provider
        .terminate(&machine_record(&arm, &parm))
        .await
        .unwrap();
    assert!(
        h.provider
            .list_machines(h.tenant_id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(raw_live_instances(&raw).await.is_empty());

    // Every EC2 request was evented with its operation and duration.
    let successes = h.events.named(event::CLOUD_PROVIDER_API_CALL_SUCCESS, None);
    let starts = h.events.named(event::CLOUD_PROVIDER_API_CALL_START, None);
    assert_eq!(successes.len(), starts.len());
    for event in &successes {
        assert!(event.duration.is_some(), "{event:?}");
        assert_eq!(event.tenant_id, Some(h.tenant_id));
        assert!(event.metadata.contains_key("operation"));
    }
    let runs = h
        .events
        .named(event::CLOUD_PROVIDER_API_CALL_SUCCESS, Some("RunInstances"));
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].machine_id, Some(x86.machine_id));
}

#[tokio::test]
async fn the_fleet_is_recovered_from_tags_by_a_fresh_provider() {
    let moto = start_moto();
    let tenant = TenantId::new();
    let provider_id = ProviderId::new();
    let config = config_json(&moto.endpoint());
    let clock = Arc::new(ManualClock::starting_now());
    let first = Harness::with_clock(tenant, provider_id, config.clone(), clock.clone());
    let linux_a = first.request(Os::Linux, Arch::X86_64);
    let linux_b = first.request(Os::Linux, Arch::Arm64);
    let mac = first.request(Os::Macos, Arch::Arm64);
    let mut expected = HashSet::new();
    for request in [&linux_a, &linux_b, &mac] {
        first.provider.provision(request).await.unwrap();
        expected.insert(request.machine_id);
    }
    let mac_host = first.provider.list_hosts().await.unwrap();
    drop(first);

    // Everything local is gone; a new provider instance (a restarted daemon) lists it all.
    let second = Harness::with_clock(tenant, provider_id, config.clone(), clock.clone());
    let listed = second.provider.list_machines(tenant).await.unwrap();
    let ids: HashSet<MachineId> = listed.iter().filter_map(|m| m.machine_id).collect();
    assert_eq!(ids, expected);
    let mac_view = listed
        .iter()
        .find(|m| m.machine_id == Some(mac.machine_id))
        .unwrap();
    assert_eq!(mac_view.metadata.minimum_allocation_hours, Some(24));
    assert_eq!(
        mac_view.metadata.host_id.as_deref(),
        Some(mac_host[0].id.as_str())
    );
    assert!(mac_view.metadata.extra.contains_key("host_allocated_at"));
    assert_eq!(second.provider.list_hosts().await.unwrap(), mac_host);
    for id in &expected {
        let machine = second.provider.get_machine(*id).await.unwrap().unwrap();
        assert_eq!(machine.tenant_id, Some(tenant));
    }
    // With the store wiped, this listing is what the reconciler finds orphans in: one
    // resource per machine, no duplicates.
    assert_eq!(listed.len(), expected.len(), "{listed:?}");

    // Tenant isolation: another tenant's provider, or another provider, sees nothing.
    let other_tenant = Harness::new(TenantId::new(), ProviderId::new(), config.clone());
    assert!(
        other_tenant
            .provider
            .list_machines(other_tenant.tenant_id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(other_tenant.provider.list_hosts().await.unwrap().is_empty());
    assert!(
        other_tenant
            .provider
            .get_machine(linux_a.machine_id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        second
            .provider
            .list_machines(other_tenant.tenant_id)
            .await
            .unwrap()
            .is_empty()
    );
    // ... and cannot terminate the tenant's machines, even when handed their records.
    clock.advance(hours(25));
    let mac_record = machine_record(&mac, mac_view);
    other_tenant.provider.terminate(&mac_record).await.unwrap();
    assert!(
        second
            .provider
            .get_machine(mac.machine_id)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(second.provider.list_hosts().await.unwrap().len(), 1);
    let other_provider = Harness::new(tenant, ProviderId::new(), config);
    assert!(
        other_provider
            .provider
            .list_machines(tenant)
            .await
            .unwrap()
            .is_empty()
    );
    // Nor can it remove one of them as a "duplicate".
    let linux_view = listed
        .iter()
        .find(|m| m.machine_id == Some(linux_a.machine_id))
        .unwrap();
    other_provider
        .provider
        .remove_duplicate(linux_view)
        .await
        .unwrap();
    assert_eq!(
        second
            .provider
            .get_machine(linux_a.machine_id)
            .await
            .unwrap()
            .and_then(|m| m.metadata.instance_id),
        linux_view.metadata.instance_id
    );
}

#[tokio::test]
async fn a_second_instance_of_a_machine_is_listed_and_only_it_is_terminated() {
    let moto = start_moto();
    let raw = raw_client(&moto.endpoint());
    let h = Harness::new(
        TenantId::new(),
        ProviderId::new(),
        config_json(&moto.endpoint()),
    );
    let kept = h.request(Os::Linux, Arch::X86_64);
    let lost = h.request(Os::Linux, Arch::X86_64);
    let provided = h.provider.provision(&kept).await.unwrap();
    let provided_lost = h.provider.provision(&lost).await.unwrap();
    let own_instance = provided.metadata.instance_id.clone().unwrap();
    // A second instance carrying the machine's tags, as a retried create against an endpoint
    // that ignores the ClientToken would leave behind (launched later: launch times have
    // one-second resolution).
    let instance = raw_live_instances(&raw)
        .await
        .into_iter()
        .find(|i| i.id == own_instance)
        .unwrap();
    let tags: Vec<_> = instance
        .tags
        .iter()
        .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build())
        .collect();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let run = raw
        .run_instances()
        .image_id(nimbus_testkit::moto::AMI_LINUX_X86_64)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .set_tags(Some(tags))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let duplicate_instance = run.instances()[0].instance_id().unwrap().to_owned();
    assert_eq!(raw_live_instances(&raw).await.len(), 3);

    // The listing shows both instances of the machine (the reconciler groups them by id).
    let listed = h.provider.list_machines(h.tenant_id).await.unwrap();
    let mut of_kept: Vec<_> = listed
        .iter()
        .filter(|m| m.machine_id == Some(kept.machine_id))
        .collect();
    of_kept.sort_by_key(|m| m.created_at);
    let instance_ids: Vec<_> = of_kept
        .iter()
        .filter_map(|m| m.metadata.instance_id.clone())
        .collect();
    assert_eq!(
        instance_ids,
        [own_instance.clone(), duplicate_instance.clone()],
        "{listed:?}"
    );
    let duplicate = of_kept[1];

    // Removing the duplicate terminates that instance only.
    h.provider.remove_duplicate(duplicate).await.unwrap();
    let live: Vec<_> = raw_live_instances(&raw)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert!(!live.contains(&duplicate_instance), "{live:?}");
    assert!(live.contains(&own_instance), "{live:?}");
    assert!(
        live.contains(provided_lost.metadata.instance_id.as_ref().unwrap()),
        "{live:?}"
    );
    let own = h
        .provider
        .get_machine(kept.machine_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        own.metadata.instance_id.as_deref(),
        Some(own_instance.as_str())
    );
    assert!(matches!(
        own.status,
        ProviderStatus::Running | ProviderStatus::Pending
    ));
    let reconciled = h.events.named(event::MACHINE_RECONCILED, None);
    assert_eq!(reconciled.len(), 1, "{reconciled:?}");
    assert_eq!(reconciled[0].metadata["action"], "duplicate_terminated");
    assert_eq!(reconciled[0].metadata["instance_id"], duplicate_instance);
    assert_eq!(reconciled[0].machine_id, Some(kept.machine_id));

    // Idempotent: the duplicate is gone, so a second call does nothing.
    h.provider.remove_duplicate(duplicate).await.unwrap();
    assert_eq!(h.events.named(event::MACHINE_RECONCILED, None).len(), 1);
    // The machine's own instance is never anyone's duplicate.
    let err = h.provider.remove_duplicate(&own).await.unwrap_err();
    assert!(
        matches!(&err, Error::Permanent(m) if m.contains("only instance")),
        "{err}"
    );
    assert_eq!(
        h.provider.list_machines(h.tenant_id).await.unwrap().len(),
        2
    );

    // What no intent knows about goes through `terminate`, as the reconciler does with a
    // stand-in record for it.
    h.provider
        .terminate(&machine_record(&lost, &provided_lost))
        .await
        .unwrap();
    let live = raw_live_instances(&raw).await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].id, own_instance);
}

#[tokio::test]
async fn bad_requests_fail_permanently_with_the_field_named() {
    let moto = start_moto();
    let h = Harness::new(
        TenantId::new(),
        ProviderId::new(),
        config_json(&moto.endpoint()),
    );

    let mut request = h.request(Os::Linux, Arch::X86_64);
    request.spec.image_id = Some("ami-00000000000000000".into());
    let err = h.provider.provision(&request).await.unwrap_err();
    assert!(
        matches!(&err, Error::Permanent(m) if m.contains("InvalidAMIID")),
        "{err}"
    );

    let mut request = h.request(Os::Macos, Arch::X86_64);
    request.spec.instance_type = Some("mac2.metal".into());
    let err = h.provider.provision(&request).await.unwrap_err();
    assert!(
        matches!(&err, Error::Permanent(m) if m.contains("instance_type")),
        "{err}"
    );

    let mut request = h.request(Os::Linux, Arch::X86_64);
    request.spec.instance_type = Some("mac2.metal".into());
    let err = h.provider.provision(&request).await.unwrap_err();
    assert!(
        matches!(&err, Error::Permanent(m) if m.contains("instance_type")),
        "{err}"
    );

    let mut request = h.request(Os::Linux, Arch::X86_64);
    request.spec.instance_type = Some("t9.huge".into());
    let err = h.provider.provision(&request).await.unwrap_err();
    assert!(matches!(&err, Error::Permanent(_)), "{err}");

    let mut request = h.request(Os::Linux, Arch::X86_64);
    request.spec.labels = vec!["bad label".into()];
    let err = h.provider.provision(&request).await.unwrap_err();
    assert!(
        matches!(&err, Error::Permanent(m) if m.contains("labels[0]")),
        "{err}"
    );

    let mut request = h.request(Os::Linux, Arch::X86_64);
    request.tenant_id = TenantId::new();
    let err = h.provider.provision(&request).await.unwrap_err();
    assert!(
        matches!(&err, Error::Permanent(m) if m.contains("another tenant")),
        "{err}"
    );

    let mut config = config_json(&moto.endpoint());
    config["image_ids"] = json!({});
    config["availability_zones"] = json!([]);
    let bare = Harness::new(TenantId::new(), ProviderId::new(), config);
    let err = bare
        .provider
        .provision(&bare.request(Os::Linux, Arch::Arm64))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { field, .. } if field == "config.image_ids.linux_arm64"),
        "{err}"
    );
    let mut request = bare.request(Os::Macos, Arch::Arm64);
    request.spec.image_id = Some(nimbus_testkit::moto::AMI_MACOS_ARM64.into());
    let err = bare.provider.provision(&request).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { field, .. } if field == "config.availability_zones"),
        "{err}"
    );

    // A key pair that does not exist (moto validates key names like EC2).
    let mut config = config_json(&moto.endpoint());
    config.as_object_mut().unwrap().remove("ssh_public_key");
    config["key_name"] = json!("no-such-key");
    let nokey = Harness::new(TenantId::new(), ProviderId::new(), config);
    let err = nokey
        .provider
        .provision(&nokey.request(Os::Linux, Arch::X86_64))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Permanent(m) if m.contains("InvalidKeyPair")),
        "{err}"
    );

    // Nothing was left behind by any of these.
    let raw = raw_client(&moto.endpoint());
    assert!(raw_live_instances(&raw).await.is_empty());
    assert!(raw_hosts(&raw).await.is_empty());
}

#[tokio::test]
async fn a_deleted_key_pair_is_imported_again() {
    let moto = start_moto();
    let raw = raw_client(&moto.endpoint());
    let h = Harness::new(
        TenantId::new(),
        ProviderId::new(),
        config_json(&moto.endpoint()),
    );
    h.provider
        .provision(&h.request(Os::Linux, Arch::X86_64))
        .await
        .unwrap();
    let name = nimbus_aws::default_key_name(h.tenant_id, SSH_PUBLIC_KEY);
    raw.delete_key_pair().key_name(&name).send().await.unwrap();

    h.provider
        .provision(&h.request(Os::Linux, Arch::X86_64))
        .await
        .unwrap();
    let keys = raw.describe_key_pairs().send().await.unwrap();
    let names: Vec<_> = keys
        .key_pairs()
        .iter()
        .filter_map(|k| k.key_name())
        .collect();
    assert_eq!(names, vec![name.as_str()]);
    assert_eq!(
        h.events
            .named(
                event::CLOUD_PROVIDER_API_CALL_SUCCESS,
                Some("ImportKeyPair")
            )
            .len(),
        2
    );
    let failures = h
        .events
        .named(event::CLOUD_PROVIDER_API_CALL_FAILURE, Some("RunInstances"));
    assert_eq!(failures.len(), 1, "{failures:#?}");
    assert_eq!(failures[0].metadata["code"], "InvalidKeyPair.NotFound");
}

#[tokio::test]
async fn built_providers_release_idle_hosts_in_the_background() {
    let moto = start_moto();
    let raw = raw_client(&moto.endpoint());
    let mut config = config_json(&moto.endpoint());
    config["host_reconcile_interval_secs"] = json!(1);
    let clock = Arc::new(ManualClock::starting_now());
    let record = provider_record(TenantId::new(), ProviderId::new(), config);
    let provider = nimbus_aws::build(&record, clock.clone()).unwrap();
    let mut spec = nimbus_types::MachineSpec::new(Os::Macos, Arch::Arm64);
    spec.skip_setup = true;
    let request = nimbus_provider::ProvisionRequest {
        machine_id: MachineId::new(),
        tenant_id: record.tenant_id,
        provider_id: record.id,
        spec,
    };
    let provided = provider.provision(&request).await.unwrap();
    provider
        .terminate(&machine_record(&request, &provided))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        raw_unreleased_hosts(&raw).await.len(),
        1,
        "kept inside the minimum"
    );

    clock.advance(hours(25));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !raw_unreleased_hosts(&raw).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the background reconciler did not release the host"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
