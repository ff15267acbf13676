//! The `baremetal` provider against real peers: OpenSSH `sshd` daemons stand in for the booted
//! hosts, sushy-tools (Redfish) and `ipmi_sim` (IPMI) for their BMCs. A provision goes power on
//! (with the boot override) → SSH → claim for real; terminate wipes, releases and powers off.

use nimbus_baremetal::redfish::Redfish;
use nimbus_baremetal::{Bmc, BmcConfig, BmcKind, PowerState};
use nimbus_provider::baremetal::BaremetalProvider;
use nimbus_provider::ssh::SshPool;
use nimbus_provider::{Error, Provider, ProviderMachine, ProvisionRequest};
use nimbus_setup::events::Events;
use nimbus_setup::exec::Command;
use nimbus_setup::ssh::{MemoryHostKeyStore, SshOptions};
use nimbus_testkit::ipmi_sim::IpmiSim;
use nimbus_testkit::sshd::Sshd;
use nimbus_testkit::sushy::{FakeSystem, Sushy, SushyOptions};
use nimbus_types::{
    Arch, Image, ImageState, ImageType, Machine, MachineId, MachineSpec, MachineState, Os,
    ProviderConfig, ProviderId, ProviderType, Secret, TenantId,
};
use serde_json::{Value, json};

const BMC_USER: &str = "nimbus";
const BMC_PASSWORD: &str = "bmc-pass-1";

fn slow() -> bool {
    if std::env::var_os("NIMBUS_SLOW_TESTS").is_none() {
        eprintln!(
            "skipped: set NIMBUS_SLOW_TESTS=1 (scripts/test does) to run against sushy-tools and ipmi_sim"
        );
        return false;
    }
    true
}

struct Rack {
    sshds: Vec<Sshd>,
    sushy: Sushy,
    ipmi: IpmiSim,
}

impl Rack {
    fn start() -> Rack {
        Rack {
            sshds: vec![Sshd::start().unwrap(), Sshd::start().unwrap()],
            sushy: Sushy::start(SushyOptions {
                systems: vec![FakeSystem::off("node-0", 1)],
                auth: Some((BMC_USER.into(), BMC_PASSWORD.into())),
            })
            .unwrap(),
            ipmi: IpmiSim::start(BMC_USER, BMC_PASSWORD).unwrap(),
        }
    }

    fn state_dir(&self, idx: usize) -> String {
        self.sshds[idx]
            .scratch_dir()
            .join("nimbus")
            .display()
            .to_string()
    }

    /// Host 0 has a Redfish BMC, host 1 an IPMI one; host `i` carries label `host-i`.
    fn config(&self, ipmi_password: &str) -> ProviderConfig {
        let mut keys = serde_json::Map::new();
        let mut passwords = serde_json::Map::new();
        let bmcs = [
            json!({"kind": "redfish", "address": self.sushy.url(), "username": BMC_USER, "timeout_secs": 5}),
            json!({"kind": "ipmi", "address": "127.0.0.1", "port": self.ipmi.port(), "username": BMC_USER, "timeout_secs": 4}),
        ];
        let hosts: Vec<Value> = self
            .sshds
            .iter()
            .zip(bmcs)
            .enumerate()
            .map(|(idx, (sshd, bmc))| {
                let host_id = format!("{}:{}", sshd.address(), sshd.port());
                keys.insert(host_id.clone(), json!(sshd.client_private_key()));
                passwords.insert(
                    host_id,
                    json!(if idx == 1 {
                        ipmi_password
                    } else {
                        BMC_PASSWORD
                    }),
                );
                json!({
                    "address": sshd.address(), "port": sshd.port(), "user": sshd.user(),
                    "os": "linux", "arch": Arch::host().unwrap().as_str(),
                    "labels": [format!("host-{idx}")], "state_dir": self.state_dir(idx),
                    "bmc": bmc,
                })
            })
            .collect();
        ProviderConfig {
            id: ProviderId::new(),
            tenant_id: TenantId::new(),
            name: "rack".into(),
            provider_type: ProviderType::Baremetal,
            credentials: Some(Secret::new(
                json!({"keys": keys, "bmc_passwords": passwords}).to_string(),
            )),
            config: json!({
                "hosts": hosts, "connect_timeout_secs": 5, "boot": "pxe",
                "power_timeout_secs": 30, "boot_timeout_secs": 30,
                "wipe_script": "printf '%s\\n' \"$2\" >> \"$1.wiped\"",
            }),
            created_at: nimbus_types::now(),
        }
    }

    fn redfish(&self) -> Redfish {
        Redfish::new(&BmcConfig {
            kind: BmcKind::Redfish,
            address: self.sushy.url(),
            port: None,
            username: BMC_USER.into(),
            password: Secret::new(BMC_PASSWORD),
            system_id: None,
            timeout_secs: None,
            insecure_tls: false,
        })
        .unwrap()
    }
}

fn provider(config: &ProviderConfig) -> BaremetalProvider {
    let pool = SshPool::new(
        MemoryHostKeyStore::new(),
        Events::none(),
        SshOptions::default(),
    );
    BaremetalProvider::from_provider(config, pool, None).unwrap()
}

fn request(config: &ProviderConfig, label: &str) -> ProvisionRequest {
    let mut spec = MachineSpec::new(Os::Linux, Arch::host().unwrap());
    spec.labels = vec![label.to_owned()];
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
async fn provision_powers_on_boots_and_claims_terminate_wipes_and_powers_off() {
    if !slow() {
        return;
    }
    let rack = Rack::start();
    let config = rack.config(BMC_PASSWORD);
    let provider = provider(&config);
    let redfish = rack.redfish();
    assert_eq!(redfish.power_state().await.unwrap(), PowerState::Off);

    // Redfish host: boot override, power on (lands after 1–11 s), SSH, claim.
    let first = request(&config, "host-0");
    let view = provider.provision(&first).await.unwrap();
    assert_eq!(view.machine_id, Some(first.machine_id));
    assert_eq!(
        redfish.power_state().await.unwrap(),
        PowerState::On,
        "{}",
        rack.sushy.log()
    );
    assert_eq!(redfish.boot_override().await.unwrap().0, "Pxe");
    let machine0 = machine(&first, &view);
    let exec = provider.exec(&machine0).await.unwrap();
    let out = exec.run(&Command::new("echo booted")).await.unwrap();
    assert_eq!(out.stdout_str().trim(), "booted");

    // Idempotent per machine id; the host is taken for anyone else.
    assert_eq!(
        provider.provision(&first).await.unwrap().metadata,
        view.metadata
    );
    let err = provider
        .provision(&request(&config, "host-0"))
        .await
        .unwrap_err();
    assert!(
        err.is_retryable() && err.to_string().contains("capacity"),
        "{err}"
    );
    let err = provider
        .provision(&request(&config, "gpu"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Permanent(_)), "{err}");

    // IPMI host: the chassis is told the boot device and power.
    let second = request(&config, "host-1");
    let view1 = provider.provision(&second).await.unwrap();
    assert_eq!(rack.ipmi.power(), "on", "{}", rack.ipmi.calls());
    assert_eq!(rack.ipmi.boot().as_deref(), Some("pxe"));
    let machine1 = machine(&second, &view1);

    // A restarted daemon (a new provider, nothing in memory) recovers both from the hosts.
    let restarted = self::provider(&config);
    let mut listed: Vec<MachineId> = restarted
        .list_machines(config.tenant_id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| m.machine_id)
        .collect();
    listed.sort();
    let mut expected = vec![first.machine_id, second.machine_id];
    expected.sort();
    assert_eq!(listed, expected);
    assert!(
        restarted
            .list_machines(TenantId::new())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        restarted
            .get_machine(second.machine_id)
            .await
            .unwrap()
            .is_some()
    );

    // Terminate: wipe (the script sees the state dir and machine id), release, power off.
    restarted.terminate(&machine0).await.unwrap();
    let wiped = std::fs::read_to_string(format!("{}.wiped", rack.state_dir(0))).unwrap();
    assert_eq!(wiped.trim(), first.machine_id.to_string());
    assert_eq!(redfish.power_state().await.unwrap(), PowerState::Off);
    assert!(
        provider
            .get_machine(first.machine_id)
            .await
            .unwrap()
            .is_none()
    );
    provider.terminate(&machine0).await.unwrap(); // already gone: fine

    provider.terminate(&machine1).await.unwrap();
    assert_eq!(rack.ipmi.power(), "off");
    assert!(
        provider
            .list_machines(config.tenant_id)
            .await
            .unwrap()
            .is_empty()
    );

    // The freed host is provisioned again from cold.
    let again = request(&config, "host-1");
    provider.provision(&again).await.unwrap();
    assert_eq!(rack.ipmi.power(), "on");
    provider
        .terminate(&machine(
            &again,
            &provider
                .get_machine(again.machine_id)
                .await
                .unwrap()
                .unwrap(),
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_bmc_refusing_the_password_fails_the_provision_and_touches_nothing() {
    if !slow() {
        return;
    }
    let rack = Rack::start();
    let config = rack.config("wrong-pass-9");
    let provider = provider(&config);
    let err = provider
        .provision(&request(&config, "host-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Permanent(m) if m.contains("unauthorized")),
        "{err}"
    );
    assert!(!err.to_string().contains("wrong-pass-9"));
    assert_eq!(rack.ipmi.power(), "off");
    assert!(!rack.ipmi.calls().contains("set"), "{}", rack.ipmi.calls());
    // A listing that cannot ask a BMC fails rather than reporting a partial fleet.
    assert!(provider.list_machines(config.tenant_id).await.is_err());
}

#[tokio::test]
async fn config_errors_name_the_field() {
    let check = |config: Value, credentials: Value, field: &str| {
        let record = ProviderConfig {
            id: ProviderId::new(),
            tenant_id: TenantId::new(),
            name: "rack".into(),
            provider_type: ProviderType::Baremetal,
            credentials: Some(Secret::new(credentials.to_string())),
            config,
            created_at: nimbus_types::now(),
        };
        match nimbus_provider::validate_config(&record) {
            Err(Error::InvalidConfig {
                field: got,
                message,
            }) => {
                assert_eq!(got, field, "{message}");
                assert!(!message.contains("hunter2"), "{message}");
            }
            other => panic!("must fail at {field}: {other:?}"),
        }
    };
    let key = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::read_to_string(&path).unwrap()
    };
    let host = |bmc: Value| json!({"address": "10.0.1.5", "user": "ci", "os": "linux", "arch": "x86_64", "bmc": bmc});
    let redfish = json!({"kind": "redfish", "address": "https://10.0.0.5", "username": "nimbus"});
    let creds = json!({"keys": {"10.0.1.5:22": key}, "bmc_passwords": {"10.0.1.5:22": "hunter2"}});
    let ok = ProviderConfig {
        id: ProviderId::new(),
        tenant_id: TenantId::new(),
        name: "rack".into(),
        provider_type: ProviderType::Baremetal,
        credentials: Some(Secret::new(creds.to_string())),
        config: json!({"hosts": [host(redfish.clone())]}),
        created_at: nimbus_types::now(),
    };
    nimbus_provider::validate_config(&ok).unwrap();

    check(
        json!({"hosts": [{"address": "10.0.1.5", "user": "ci", "os": "linux", "arch": "x86_64"}]}),
        creds.clone(),
        "config.hosts[0].bmc",
    );
    check(
        json!({"hosts": [host(json!({"kind": "redfish", "address": "10.0.0.5", "username": "n"}))]}),
        creds.clone(),
        "config.hosts[0].bmc.address",
    );
    check(
        json!({"hosts": [host(json!({"kind": "serial", "address": "x", "username": "n"}))]}),
        creds.clone(),
        "config.hosts[0].bmc",
    );
    check(
        json!({"hosts": [host(redfish.clone())], "boot": "floppy"}),
        creds.clone(),
        "config",
    );
    check(
        json!({"hosts": [host(redfish.clone())], "wipe_scirpt": "rm -rf /x"}),
        creds.clone(),
        "config",
    );
    check(
        json!({"hosts": [host(redfish.clone())], "power_timeout_secs": 0}),
        creds.clone(),
        "config.power_timeout_secs",
    );
    check(
        json!({"hosts": [host(redfish.clone())], "wipe_script": " "}),
        creds.clone(),
        "config.wipe_script",
    );
    check(
        json!({"hosts": [host(redfish.clone())]}),
        json!({"keys": {"10.0.1.5:22": key}}),
        "credentials.bmc_passwords[\"10.0.1.5:22\"]",
    );
    check(
        json!({"hosts": [host(json!({"kind": "ipmi", "address": "10.0.0.5", "username": "n"}))]}),
        json!({"keys": {"10.0.1.5:22": key}, "bmc_passwords": {"10.0.1.5:22": "hunter2-is-far-too-long-for-ipmi"}}),
        "credentials.bmc_passwords[\"10.0.1.5:22\"]",
    );
}
