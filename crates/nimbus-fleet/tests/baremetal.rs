//! The lifecycle with the `baremetal` provider, end to end on real peers: a real SQLite store
//! (credentials sealed), two real sshd hosts, their BMCs played by sushy-tools (Redfish) and
//! ipmi_sim (IPMI). Provision powers a host on, waits for SSH, claims it and runs setup until
//! the machine is ready; terminate wipes it, releases the claim and powers it off.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nimbus_baremetal::redfish::Redfish;
use nimbus_baremetal::{Bmc, BmcConfig, BmcKind, PowerState};
use nimbus_fleet::{Fleet, FleetConfig, ProviderRegistry, Telemetry};
use nimbus_provider::ProviderEnv;
use nimbus_store::{SealKey, Sealer, SqlStore, Storage, StoreOptions};
use nimbus_testkit::ipmi_sim::IpmiSim;
use nimbus_testkit::sshd::Sshd;
use nimbus_testkit::sushy::{FakeSystem, Sushy, SushyOptions};
use nimbus_types::{Arch, MachineId, MachineSpec, MachineState, Os, ProviderType, Secret};
use serde_json::json;

const BMC_USER: &str = "nimbus";
const BMC_PASSWORD: &str = "bmc-pass-1";

async fn wait_for(store: &SqlStore, id: MachineId, state: MachineState) {
    for _ in 0..1200 {
        let machine = store.get_machine(None, id).await.unwrap().machine;
        if machine.state == state {
            return;
        }
        if machine.state == MachineState::Failed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let history = store.machine_history(id).await.unwrap();
    panic!("machine {id} never reached {state}; history: {history:#?}");
}

fn registry(machines_dir: &Path) -> ProviderRegistry {
    let env = ProviderEnv::new(machines_dir);
    let mut registry = ProviderRegistry::new();
    registry.register(
        ProviderType::Baremetal,
        Arc::new(move |config| nimbus_provider::build(&env, config)),
        Arc::new(nimbus_provider::validate_config),
    );
    registry
}

#[tokio::test]
async fn a_bare_metal_machine_is_booted_set_up_and_powered_off_through_the_fleet() {
    if std::env::var_os("NIMBUS_SLOW_TESTS").is_none() {
        eprintln!(
            "skipped: set NIMBUS_SLOW_TESTS=1 (scripts/test does) to run against sushy-tools and ipmi_sim"
        );
        return;
    }
    let sshds = [Sshd::start().unwrap(), Sshd::start().unwrap()];
    let sushy = Sushy::start(SushyOptions {
        systems: vec![FakeSystem::off("node-0", 1)],
        auth: Some((BMC_USER.into(), BMC_PASSWORD.into())),
    })
    .unwrap();
    let ipmi = IpmiSim::start(BMC_USER, BMC_PASSWORD).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqlStore::connect(
            &SqlStore::sqlite_path_url(&dir.path().join("nimbus.db")),
            StoreOptions::default(),
            Sealer::new(SealKey::generate()),
        )
        .await
        .unwrap(),
    );
    let dyn_store: Arc<dyn Storage> = store.clone();
    let telemetry = Telemetry::start(dyn_store.clone(), &mut Default::default());
    let fleet = Fleet::new(
        dyn_store,
        registry(&dir.path().join("machines")),
        telemetry,
        FleetConfig {
            setup_timeout: Duration::from_secs(60),
            reconcile_interval: Duration::from_secs(3600),
            orphan_grace: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(10),
            ..FleetConfig::default()
        },
    );
    let tenant = store.create_tenant("acme").await.unwrap();

    let bmcs = [
        json!({"kind": "redfish", "address": sushy.url(), "username": BMC_USER}),
        json!({"kind": "ipmi", "address": "127.0.0.1", "port": ipmi.port(), "username": BMC_USER}),
    ];
    let mut keys = serde_json::Map::new();
    let mut passwords = serde_json::Map::new();
    let mut hosts = Vec::new();
    for (idx, (sshd, bmc)) in sshds.iter().zip(bmcs).enumerate() {
        let host_id = format!("{}:{}", sshd.address(), sshd.port());
        keys.insert(host_id.clone(), json!(sshd.client_private_key()));
        passwords.insert(host_id, json!(BMC_PASSWORD));
        hosts.push(json!({
            "address": sshd.address(), "port": sshd.port(), "user": sshd.user(),
            "os": "linux", "arch": Arch::host().unwrap().as_str(),
            "labels": [format!("host-{idx}")],
            "state_dir": sshd.scratch_dir().join("nimbus").display().to_string(),
            "bmc": bmc,
        }));
    }
    let provider = fleet
        .create_provider(
            tenant.id,
            "rack",
            ProviderType::Baremetal,
            Some(
                json!({"hosts": hosts, "boot": "pxe", "power_timeout_secs": 30,
                        "boot_timeout_secs": 30,
                        "wipe_script": "printf '%s\\n' \"$2\" >> \"$1.wiped\""}),
            ),
            Some(json!({"keys": keys, "bmc_passwords": passwords})),
        )
        .await
        .unwrap();
    // Sealed at rest: the BMC password is not in the database file.
    let db = std::fs::read(dir.path().join("nimbus.db")).unwrap();
    assert!(
        !db.windows(BMC_PASSWORD.len())
            .any(|w| w == BMC_PASSWORD.as_bytes())
    );

    for (idx, sshd) in sshds.iter().enumerate() {
        let marker = sshd.scratch_dir().join("setup-ran");
        let mut spec = MachineSpec::new(Os::Linux, Arch::host().unwrap());
        spec.labels = vec![format!("host-{idx}")];
        spec.setup_script = Some(format!("echo ok > '{}'", marker.display()));
        let machine = fleet
            .provision_machine(&tenant, &provider, spec)
            .await
            .unwrap();
        wait_for(&store, machine.id, MachineState::Ready).await;
        assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "ok");
        match idx {
            0 => {
                let redfish = Redfish::new(&BmcConfig {
                    kind: BmcKind::Redfish,
                    address: sushy.url(),
                    port: None,
                    username: BMC_USER.into(),
                    password: Secret::new(BMC_PASSWORD),
                    system_id: None,
                    timeout_secs: None,
                    insecure_tls: false,
                })
                .unwrap();
                assert_eq!(redfish.power_state().await.unwrap(), PowerState::On);
                assert_eq!(redfish.boot_override().await.unwrap().0, "Pxe");
                fleet.terminate_machine(None, machine.id).await.unwrap();
                wait_for(&store, machine.id, MachineState::Terminated).await;
                assert_eq!(redfish.power_state().await.unwrap(), PowerState::Off);
            }
            _ => {
                assert_eq!(ipmi.power(), "on");
                assert_eq!(ipmi.boot().as_deref(), Some("pxe"));
                fleet.terminate_machine(None, machine.id).await.unwrap();
                wait_for(&store, machine.id, MachineState::Terminated).await;
                assert_eq!(ipmi.power(), "off");
            }
        }
        let wiped = std::fs::read_to_string(format!(
            "{}.wiped",
            sshd.scratch_dir().join("nimbus").display()
        ))
        .unwrap();
        assert_eq!(wiped.trim(), machine.id.to_string());
    }
    fleet.shutdown().await;
}
