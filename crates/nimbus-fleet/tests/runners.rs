//! Invariant 2 through the lifecycle: a machine whose runner is busy is not terminated until the
//! job ends; its runner leaves the forge before the machine goes. GitHub is a wiremock fake here
//! because the sequence "busy, then idle" is one no real peer produces on demand.

use std::sync::Arc;
use std::time::Duration;

use nimbus_fleet::{Fleet, FleetConfig, ProviderRegistry, Telemetry};
use nimbus_provider::ProviderEnv;
use nimbus_store::{SealKey, Sealer, SqlStore, Storage, StoreOptions};
use nimbus_types::{
    Arch, ForgeConfig, ForgeType, MachineSpec, MachineState, Os, ProviderType, Secret,
};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const RUNNERS: &str = "/orgs/acme/actions/runners";

fn runners_page(name: &str, busy: bool) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "total_count": 1,
        "runners": [{
            "id": 42, "name": name, "os": "linux", "status": "online", "busy": busy,
            "labels": [{"id": 1, "name": "self-hosted", "type": "read-only"},
                       {"id": 2, "name": format!("nimbus-{name}"), "type": "custom"}],
        }],
    }))
}

async fn mount_runner(server: &MockServer, name: &str, busy: bool) {
    server.reset().await;
    Mock::given(method("GET"))
        .and(path(RUNNERS))
        .respond_with(runners_page(name, busy))
        .mount(server)
        .await;
    let body: serde_json::Value = json!({
        "id": 42, "name": name, "os": "linux", "status": "online", "busy": busy,
        "labels": [{"id": 2, "name": format!("nimbus-{name}"), "type": "custom"}],
    });
    Mock::given(method("GET"))
        .and(path(format!("{RUNNERS}/42")))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(server)
        .await;
    let delete = if busy {
        // GitHub refuses to remove a runner that is running a job.
        ResponseTemplate::new(422).set_body_json(
            json!({"message": "Bad request - Runner \"x\" is still running a job\""}),
        )
    } else {
        ResponseTemplate::new(204)
    };
    Mock::given(method("DELETE"))
        .and(path(format!("{RUNNERS}/42")))
        .respond_with(delete)
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_busy_runner_keeps_its_machine_until_the_job_ends() {
    let github = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = SqlStore::sqlite_path_url(&dir.path().join("nimbus.db"));
    let store = Arc::new(
        SqlStore::connect(
            &url,
            StoreOptions::default(),
            Sealer::new(SealKey::generate()),
        )
        .await
        .unwrap(),
    );
    let dyn_store: Arc<dyn Storage> = store.clone();
    let env = ProviderEnv::new(dir.path().join("machines"));
    let mut registry = ProviderRegistry::new();
    registry.register(
        ProviderType::Local,
        Arc::new(move |config| nimbus_provider::build(&env, config)),
        Arc::new(nimbus_provider::validate_config),
    );
    let telemetry = Telemetry::start(dyn_store.clone(), &mut Default::default());
    let config = FleetConfig {
        reconcile_interval: Duration::from_secs(3600),
        orphan_grace: Duration::ZERO,
        ..FleetConfig::default()
    };
    let fleet = Fleet::new(dyn_store, registry, telemetry, config);
    let tenant = store.create_tenant("acme").await.unwrap();
    let provider = fleet
        .create_provider(tenant.id, "local", ProviderType::Local, None, None)
        .await
        .unwrap();
    store
        .set_tenant_forge_config(&ForgeConfig {
            tenant_id: tenant.id,
            forge_type: ForgeType::Github,
            org: "acme".into(),
            credentials: Some(Secret::new(json!({"token": "ghp_test"}).to_string())),
            config: json!({"api_url": github.uri()}),
            updated_at: nimbus_types::now(),
        })
        .await
        .unwrap();

    let mut spec = MachineSpec::new(Os::host().unwrap(), Arch::host().unwrap());
    spec.skip_setup = true;
    let machine = fleet
        .provision_machine(&tenant, &provider, spec)
        .await
        .unwrap();
    let wait_for = |state: MachineState| {
        let store = store.clone();
        async move {
            for _ in 0..200 {
                let m = store.get_machine(None, machine.id).await.unwrap().machine;
                if m.state == state {
                    return m;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("machine never reached {state}");
        }
    };
    wait_for(MachineState::Ready).await;
    let name = nimbus_fleet::runners::runner_name(machine.id);

    // The runner is running a job: the machine stays, in `stopping`, and nothing is deleted.
    mount_runner(&github, &name, true).await;
    fleet.terminate_machine(None, machine.id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = store.get_machine(None, machine.id).await.unwrap().machine;
    assert_eq!(still.state, MachineState::Stopping);
    assert!(
        dir.path()
            .join("machines")
            .join(machine.id.to_string())
            .exists()
    );
    let deletes = github
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "DELETE")
        .count();
    assert_eq!(deletes, 0, "a busy runner must not be removed");

    // The job ended: the next pass deregisters the runner, then the machine goes.
    mount_runner(&github, &name, false).await;
    let (report, _) = fleet.reconcile(&provider).await.unwrap();
    assert_eq!(report.resumed, 1);
    wait_for(MachineState::Terminated).await;
    let requests = github.received_requests().await.unwrap();
    assert!(
        requests
            .iter()
            .any(|r| r.method.as_str() == "DELETE" && r.url.path() == format!("{RUNNERS}/42")),
        "the runner was deregistered"
    );
    assert!(
        !dir.path()
            .join("machines")
            .join(machine.id.to_string())
            .exists()
    );
}
