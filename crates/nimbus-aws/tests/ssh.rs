//! Setup reaches EC2 machines over SSH with the tenant's key. moto's instances have no network,
//! so the machine's address is pointed at a real OpenSSH sshd on loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use nimbus_aws::{AwsProvider, CollectingSink, ManualClock};
use nimbus_provider::{Error, Provider};
use nimbus_setup::exec::Command;
use nimbus_testkit::sshd::Sshd;
use nimbus_types::event;
use nimbus_types::{Arch, Os, ProviderId, Secret, TenantId};
use serde_json::json;

#[tokio::test]
async fn setup_runs_over_ssh_with_the_tenants_key() {
    let sshd = Sshd::start().unwrap_or_else(|err| panic!("{err:#}"));
    let moto = start_moto();
    let tenant = TenantId::new();
    let mut config = config_json(&moto.endpoint());
    config["ssh_public_key"] = json!(sshd.client_public_key().trim());
    config["ssh_user"] = json!(sshd.user());
    config["ssh_port"] = json!(sshd.port());
    let mut record = provider_record(tenant, ProviderId::new(), config);
    record.credentials = Some(Secret::new(
        json!({
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
            "ssh_private_key": sshd.client_private_key(),
        })
        .to_string(),
    ));
    let events = Arc::new(CollectingSink::new());
    let provider = AwsProvider::new(&record, Arc::new(ManualClock::starting_now()))
        .unwrap()
        .with_events(events.clone());
    let debug = format!("{provider:?}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");

    let mut request =
        Harness::new(tenant, record.id, record.config.clone()).request(Os::Linux, Arch::X86_64);
    request.spec.skip_setup = false;
    let provided = provider.provision(&request).await.unwrap();
    let mut machine = machine_record(&request, &provided);
    machine.ip_address = Some(sshd.address().to_owned());

    let exec = provider.exec(&machine).await.unwrap();
    exec.wait_ready(Duration::from_secs(20))
        .await
        .unwrap_or_else(|err| panic!("{err}\nsshd log:\n{}", sshd.log()));
    let output = exec
        .run(&Command::new("echo \"hello $1\"; id -un").arg("nimbus"))
        .await
        .unwrap();
    assert!(output.success(), "{output:?}");
    assert_eq!(
        output.stdout_str(),
        format!("hello nimbus\n{}\n", sshd.user())
    );
    // The connection is reused for the machine's next step.
    let again = provider.exec(&machine).await.unwrap();
    assert!(Arc::ptr_eq(&exec, &again));
    assert!(!events.named(event::SSH_CONNECT_SUCCESS, None).is_empty());
    assert!(
        events
            .named(event::SSH_CONNECT_SUCCESS, None)
            .iter()
            .all(|e| e.machine_id == Some(machine.id))
    );

    provider.terminate(&machine).await.unwrap();
}

#[tokio::test]
async fn exec_without_a_private_key_says_what_to_configure() {
    let moto = start_moto();
    let h = Harness::new(
        TenantId::new(),
        ProviderId::new(),
        config_json(&moto.endpoint()),
    );
    let request = h.request(Os::Linux, Arch::Arm64);
    let provided = h.provider.provision(&request).await.unwrap();
    let err = h
        .provider
        .exec(&machine_record(&request, &provided))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::Permanent(m) if m.contains("ssh_private_key") && m.contains("skip_setup")),
        "{err}"
    );
}
