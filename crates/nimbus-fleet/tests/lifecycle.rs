//! The lifecycle and the reconciler, driven directly: against the real local provider (real
//! processes and directories) on a real SQLite store, and against a fake provider for faults
//! no real peer produces on demand.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nimbus_fleet::{Error, Fleet, FleetConfig, ProviderRegistry, Telemetry};
use nimbus_provider::local::{LocalConfig, LocalProvider};
use nimbus_provider::{Provider, ProviderEnv, ProviderMachine, ProviderStatus, ProvisionRequest};
use nimbus_setup::exec::Exec;
use nimbus_setup::local::machine_processes;
use nimbus_store::{EventFilter, MachineFilter, SealKey, Sealer, SqlStore, Storage, StoreOptions};
use nimbus_types::event;
use nimbus_types::{
    Arch, CanTerminate, Machine, MachineId, MachineSpec, MachineState, Os, ProviderConfig,
    ProviderType, Tenant, TenantId,
};

struct Harness {
    _dir: tempfile::TempDir,
    machines_dir: PathBuf,
    store: Arc<SqlStore>,
    fleet: Fleet,
    tenant: Tenant,
    provider: ProviderConfig,
}

fn test_config() -> FleetConfig {
    FleetConfig {
        setup_timeout: Duration::from_secs(60),
        reconcile_interval: Duration::from_secs(3600),
        orphan_grace: Duration::ZERO,
        shutdown_timeout: Duration::from_secs(10),
        ..FleetConfig::default()
    }
}

async fn open_store(dir: &Path) -> Arc<SqlStore> {
    let url = SqlStore::sqlite_path_url(&dir.join("nimbus.db"));
    Arc::new(
        SqlStore::connect(
            &url,
            StoreOptions::default(),
            Sealer::new(SealKey::generate()),
        )
        .await
        .expect("open store"),
    )
}

async fn harness_with(
    config: FleetConfig,
    registry: impl FnOnce(&Path) -> ProviderRegistry,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let machines_dir = dir.path().join("machines");
    let store = open_store(dir.path()).await;
    let dyn_store: Arc<dyn Storage> = store.clone();
    let telemetry = Telemetry::start(dyn_store.clone(), &mut Default::default());
    let fleet = Fleet::new(dyn_store, registry(&machines_dir), telemetry, config);
    let tenant = store.create_tenant("acme").await.unwrap();
    let provider = fleet
        .create_provider(tenant.id, "local", ProviderType::Local, None, None)
        .await
        .unwrap();
    Harness {
        _dir: dir,
        machines_dir,
        store,
        fleet,
        tenant,
        provider,
    }
}

impl Drop for Harness {
    /// A failing test must not leave its machines' processes behind.
    fn drop(&mut self) {
        kill_all_under(&self.machines_dir);
    }
}

fn kill_all_under(machines_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(machines_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if let Some(id) = entry.file_name().to_str() {
            for pid in machine_processes(id) {
                let _ = std::process::Command::new("kill")
                    .arg("-9")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }
}

fn local_registry(machines_dir: &Path) -> ProviderRegistry {
    let env = ProviderEnv::new(machines_dir);
    let mut registry = ProviderRegistry::new();
    registry.register(
        ProviderType::Local,
        Arc::new(move |config| nimbus_provider::build(&env, config)),
        Arc::new(nimbus_provider::validate_config),
    );
    registry
}

async fn harness() -> Harness {
    harness_with(test_config(), local_registry).await
}

fn spec() -> MachineSpec {
    MachineSpec::new(Os::host().unwrap(), Arch::host().unwrap())
}

fn script(text: &str) -> MachineSpec {
    let mut spec = spec();
    spec.setup_script = Some(text.to_owned());
    spec
}

impl Harness {
    async fn provision(&self, spec: MachineSpec) -> Machine {
        self.fleet
            .provision_machine(&self.tenant, &self.provider, spec)
            .await
            .expect("provision accepted")
    }

    /// Waits (bounded) until the machine reaches `state`; fails with its history otherwise.
    async fn wait_for(&self, id: MachineId, state: MachineState) -> Machine {
        for _ in 0..400 {
            let machine = self.store.get_machine(None, id).await.unwrap().machine;
            if machine.state == state {
                return machine;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let history = self.store.machine_history(id).await.unwrap();
        panic!("machine {id} never reached {state}; history: {history:#?}");
    }

    async fn states(&self, id: MachineId) -> Vec<MachineState> {
        self.store
            .machine_history(id)
            .await
            .unwrap()
            .into_iter()
            .map(|change| change.state)
            .collect()
    }

    async fn event_names(&self, id: MachineId) -> Vec<String> {
        // The writer task persists asynchronously; give it a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.store
            .list_events(&EventFilter {
                machine_id: Some(id),
                ..EventFilter::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect()
    }

    fn machine_dir(&self, id: MachineId) -> PathBuf {
        self.machines_dir.join(id.to_string())
    }

    fn local_provider(&self) -> LocalProvider {
        LocalProvider::new(
            self.machines_dir.clone(),
            self.provider.id,
            LocalConfig::default(),
        )
    }
}

async fn assert_no_processes(id: MachineId) {
    for _ in 0..100 {
        if machine_processes(&id.to_string()).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "processes of machine {id} outlived it: {:?}",
        machine_processes(&id.to_string())
    );
}

#[tokio::test]
async fn without_setup_a_machine_goes_straight_to_ready_and_terminates_cleanly() {
    let h = harness().await;
    let machine = h.provision(spec()).await;
    assert_eq!(machine.state, MachineState::Provisioning);
    let ready = h.wait_for(machine.id, MachineState::Ready).await;
    assert_eq!(
        h.states(machine.id).await,
        [MachineState::Provisioning, MachineState::Ready]
    );
    assert_eq!(ready.ip_address.as_deref(), Some("127.0.0.1"));
    assert!(h.machine_dir(machine.id).is_dir());

    let names = h.event_names(machine.id).await;
    for expected in [
        event::MACHINE_PROVISION_START,
        event::CLOUD_PROVIDER_API_CALL_START,
        event::CLOUD_PROVIDER_API_CALL_SUCCESS,
        event::MACHINE_PROVISION_SUCCESS,
        event::MACHINE_READY,
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "missing {expected} in {names:?}"
        );
    }

    let answer = h
        .fleet
        .can_terminate_machine(None, machine.id)
        .await
        .unwrap();
    assert_eq!(answer, CanTerminate::yes());
    let stopping = h.fleet.terminate_machine(None, machine.id).await.unwrap();
    assert_eq!(stopping.state, MachineState::Stopping);
    h.wait_for(machine.id, MachineState::Terminated).await;
    assert_no_processes(machine.id).await;
    assert!(!h.machine_dir(machine.id).exists());
    // Terminating again is a no-op.
    let again = h.fleet.terminate_machine(None, machine.id).await.unwrap();
    assert_eq!(again.state, MachineState::Terminated);
    let names = h.event_names(machine.id).await;
    assert!(
        names.iter().any(|n| n == event::MACHINE_TERMINATE_SUCCESS),
        "{names:?}"
    );
}

#[tokio::test]
async fn setup_script_runs_on_the_machine_before_it_is_ready() {
    let h = harness().await;
    let machine = h.provision(script("echo configured > runner.conf")).await;
    h.wait_for(machine.id, MachineState::Ready).await;
    assert_eq!(
        h.states(machine.id).await,
        [
            MachineState::Provisioning,
            MachineState::ImageInstalling,
            MachineState::Ready
        ]
    );
    let conf = std::fs::read_to_string(h.machine_dir(machine.id).join("work/runner.conf")).unwrap();
    assert_eq!(conf, "configured\n");
    // Progress is recorded on the machine itself, in its state.db.
    let progress = h.fleet.get_machine(None, machine.id).await.unwrap();
    let steps = progress
        .machine
        .setup_progress
        .expect("setup progress merged from the machine");
    let script = steps.step("setup_script").expect("setup_script step");
    assert_eq!(script.status, nimbus_types::StepStatus::Completed);
    assert!(
        steps
            .step("macos_tools")
            .is_some_and(|s| s.status == nimbus_types::StepStatus::Skipped)
    );
    let names = h.event_names(machine.id).await;
    assert!(
        names.iter().any(|n| n == event::MACHINE_SETUP_SUCCESS),
        "{names:?}"
    );
    h.fleet.terminate_machine(None, machine.id).await.unwrap();
    h.wait_for(machine.id, MachineState::Terminated).await;
}

#[tokio::test]
async fn failed_setup_marks_the_machine_failed_with_the_reason_and_leaves_nothing_running() {
    let h = harness().await;
    let machine = h
        .provision(script("sleep 60 & echo 'cannot fetch runner' >&2; exit 7"))
        .await;
    let failed = h.wait_for(machine.id, MachineState::Failed).await;
    let error = failed.error.unwrap();
    assert!(
        error.contains("setup_script")
            && error.contains("exit code 7")
            && error.contains("cannot fetch runner"),
        "{error}"
    );
    assert_no_processes(machine.id).await;
    assert!(!h.machine_dir(machine.id).exists());
    let names = h.event_names(machine.id).await;
    assert!(
        names.iter().any(|n| n == event::MACHINE_SETUP_FAILURE),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == event::MACHINE_PROVISION_FAILURE),
        "{names:?}"
    );
    // A failed machine can still be terminated, which ends its history.
    h.fleet.terminate_machine(None, machine.id).await.unwrap();
    h.wait_for(machine.id, MachineState::Terminated).await;
}

#[tokio::test]
async fn terminate_interrupts_a_running_setup() {
    let h = harness().await;
    let machine = h.provision(script("sleep 600")).await;
    h.wait_for(machine.id, MachineState::ImageInstalling).await;
    h.fleet.terminate_machine(None, machine.id).await.unwrap();
    h.wait_for(machine.id, MachineState::Terminated).await;
    assert_no_processes(machine.id).await;
    assert_eq!(
        h.states(machine.id).await,
        [
            MachineState::Provisioning,
            MachineState::ImageInstalling,
            MachineState::Stopping,
            MachineState::Terminated
        ]
    );
}

#[tokio::test]
async fn a_provider_refusal_fails_the_machine_with_the_reason() {
    let h = harness().await;
    let mut foreign = spec();
    foreign.os = if Os::host() == Some(Os::Linux) {
        Os::Macos
    } else {
        Os::Linux
    };
    let machine = h.provision(foreign).await;
    let failed = h.wait_for(machine.id, MachineState::Failed).await;
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .contains("local provider only has"),
        "{failed:?}"
    );
    assert!(!h.machine_dir(machine.id).exists());
}

#[tokio::test]
async fn invalid_specs_are_refused_before_anything_is_recorded() {
    let h = harness().await;
    let mut bad = spec();
    bad.labels = vec!["ok".into(), "$(reboot)".into()];
    let err = h
        .fleet
        .provision_machine(&h.tenant, &h.provider, bad)
        .await
        .unwrap_err();
    match err {
        Error::Invalid(spec) => assert_eq!(spec.field, "labels[1]"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(
        h.fleet
            .list_machines(&MachineFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn another_tenant_cannot_see_or_terminate_a_machine() {
    let h = harness().await;
    let machine = h.provision(spec()).await;
    let other = TenantId::new();
    assert!(matches!(
        h.fleet.get_machine(Some(other), machine.id).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        h.fleet.terminate_machine(Some(other), machine.id).await,
        Err(Error::NotFound(_))
    ));
    assert!(
        h.fleet
            .get_machine(Some(h.tenant.id), machine.id)
            .await
            .is_ok()
    );
    h.wait_for(machine.id, MachineState::Ready).await;
}

#[tokio::test]
async fn many_concurrent_provisions_all_become_ready() {
    let h = harness().await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(h.provision(script("true")).await.id);
    }
    for id in &ids {
        h.wait_for(*id, MachineState::Ready).await;
    }
    for id in &ids {
        h.fleet.terminate_machine(None, *id).await.unwrap();
    }
    for id in &ids {
        h.wait_for(*id, MachineState::Terminated).await;
        assert_no_processes(*id).await;
    }
}

#[tokio::test]
async fn shutdown_waits_for_in_flight_setups_and_refuses_new_work() {
    let h = harness().await;
    let machine = h.provision(script("sleep 0.5")).await;
    h.wait_for(machine.id, MachineState::ImageInstalling).await;
    h.fleet.shutdown().await;
    let done = h.store.get_machine(None, machine.id).await.unwrap().machine;
    assert_eq!(
        done.state,
        MachineState::Ready,
        "shutdown must let the setup finish"
    );
    assert!(matches!(
        h.fleet
            .provision_machine(&h.tenant, &h.provider, spec())
            .await,
        Err(Error::ShuttingDown)
    ));
    // Clean up the machine's processes.
    h.local_provider().terminate(&done).await.unwrap();
}

#[tokio::test]
async fn reconcile_removes_orphans_and_leaks() {
    let h = harness().await;
    let local = h.local_provider();
    // A resource no intent knows about (say the store was restored from an old backup).
    let orphan = MachineId::new();
    local
        .provision(&ProvisionRequest {
            machine_id: orphan,
            tenant_id: h.tenant.id,
            provider_id: h.provider.id,
            spec: spec(),
        })
        .await
        .unwrap();
    // A terminated machine whose resource came back (a leak).
    let machine = h.provision(spec()).await;
    h.wait_for(machine.id, MachineState::Ready).await;
    h.fleet.terminate_machine(None, machine.id).await.unwrap();
    h.wait_for(machine.id, MachineState::Terminated).await;
    local
        .provision(&ProvisionRequest {
            machine_id: machine.id,
            tenant_id: h.tenant.id,
            provider_id: h.provider.id,
            spec: spec(),
        })
        .await
        .unwrap();

    let (report, _) = h.fleet.reconcile(&h.provider).await.unwrap();
    assert_eq!(report.orphans_removed, 2, "{report:?}");
    assert_no_processes(orphan).await;
    assert_no_processes(machine.id).await;
    assert!(!h.machine_dir(orphan).exists());
    // Nothing left to do: a second pass is a no-op.
    let (report, _) = h.fleet.reconcile(&h.provider).await.unwrap();
    assert_eq!(report, Default::default());
}

#[tokio::test]
async fn reconcile_leaves_young_orphans_alone_during_the_grace_period() {
    let mut config = test_config();
    config.orphan_grace = Duration::from_secs(3600);
    let h = harness_with(config, local_registry).await;
    let orphan = MachineId::new();
    let local = h.local_provider();
    local
        .provision(&ProvisionRequest {
            machine_id: orphan,
            tenant_id: h.tenant.id,
            provider_id: h.provider.id,
            spec: spec(),
        })
        .await
        .unwrap();
    let (report, _) = h.fleet.reconcile(&h.provider).await.unwrap();
    assert_eq!(report.orphans_removed, 0);
    assert!(h.machine_dir(orphan).exists());
    let stand_in = h.store.get_machine(None, orphan).await;
    assert!(stand_in.is_err(), "an orphan is not adopted into the store");
    // The harness kills the orphan's leader when it is dropped.
}

#[tokio::test]
async fn reconcile_resumes_an_interrupted_provision() {
    let h = harness().await;
    // The intent was recorded, then the daemon died before calling the provider.
    let spec = script("echo resumed > resumed.txt");
    let now = nimbus_types::now();
    let machine = Machine {
        id: MachineId::new(),
        tenant_id: h.tenant.id,
        provider_id: h.provider.id,
        os: spec.os,
        arch: spec.arch,
        state: MachineState::Provisioning,
        ip_address: None,
        ssh_public_key: None,
        labels: vec![],
        instance_type: None,
        image: nimbus_types::Image {
            id: None,
            image_type: nimbus_types::ImageType::None,
            state: nimbus_types::ImageState::Pending,
            installed_at: None,
        },
        created_at: now,
        updated_at: now,
        provider_metadata: Default::default(),
        error: None,
        setup_progress: None,
        pool_id: None,
        usage: Default::default(),
    };
    h.store.insert_machine(&machine, &spec).await.unwrap();
    let (report, _) = h.fleet.reconcile(&h.provider).await.unwrap();
    assert_eq!(report.resumed, 1);
    h.wait_for(machine.id, MachineState::Ready).await;
    assert!(h.machine_dir(machine.id).join("work/resumed.txt").exists());
    h.fleet.terminate_machine(None, machine.id).await.unwrap();
    h.wait_for(machine.id, MachineState::Terminated).await;
}

#[tokio::test]
async fn reconcile_fails_machines_that_vanished_at_the_provider() {
    let h = harness().await;
    let machine = h.provision(spec()).await;
    let ready = h.wait_for(machine.id, MachineState::Ready).await;
    // Someone removed the machine behind Nimbus's back.
    h.local_provider().terminate(&ready).await.unwrap();
    // One listing without it could be a stale listing; the second pass decides.
    let (report, _) = h.fleet.reconcile(&h.provider).await.unwrap();
    assert_eq!(report.failed, 0);
    let still = h.store.get_machine(None, machine.id).await.unwrap().machine;
    assert_eq!(still.state, MachineState::Ready);
    let (report, _) = h.fleet.reconcile(&h.provider).await.unwrap();
    assert_eq!(report.failed, 1);
    let failed = h.wait_for(machine.id, MachineState::Failed).await;
    assert!(failed.error.unwrap().contains("disappeared"));
}

/// A provider that holds machines in memory and fails on demand.
#[derive(Default)]
struct FakeProvider {
    machines: Mutex<HashMap<MachineId, ProviderMachine>>,
    fail_provision_after_create: Mutex<bool>,
    fail_list: Mutex<bool>,
    /// Second resources for machines (a create a cloud ran twice), listed beside `machines`.
    duplicates: Mutex<Vec<ProviderMachine>>,
    /// What `remove_duplicate` was called with, in order.
    removed_duplicates: Mutex<Vec<ProviderMachine>>,
}

#[async_trait]
impl Provider for FakeProvider {
    fn provider_type(&self) -> ProviderType {
        ProviderType::Local
    }

    async fn provision(
        &self,
        request: &ProvisionRequest,
    ) -> nimbus_provider::Result<ProviderMachine> {
        let machine = ProviderMachine {
            machine_id: Some(request.machine_id),
            tenant_id: Some(request.tenant_id),
            status: ProviderStatus::Running,
            ip_address: Some("10.0.0.1".into()),
            ssh_public_key: None,
            created_at: nimbus_types::now(),
            metadata: nimbus_types::ProviderMetadata {
                instance_id: Some(format!("i-{}", request.machine_id)),
                ..Default::default()
            },
        };
        self.machines
            .lock()
            .unwrap()
            .insert(request.machine_id, machine.clone());
        if *self.fail_provision_after_create.lock().unwrap() {
            // Like a cloud that created the instance, then failed to answer.
            return Err(nimbus_provider::Error::Retryable(
                "timed out waiting for the instance".into(),
            ));
        }
        Ok(machine)
    }

    async fn terminate(&self, machine: &Machine) -> nimbus_provider::Result<()> {
        self.machines.lock().unwrap().remove(&machine.id);
        self.duplicates
            .lock()
            .unwrap()
            .retain(|d| d.machine_id != Some(machine.id));
        Ok(())
    }

    async fn remove_duplicate(&self, resource: &ProviderMachine) -> nimbus_provider::Result<()> {
        self.removed_duplicates
            .lock()
            .unwrap()
            .push(resource.clone());
        self.duplicates
            .lock()
            .unwrap()
            .retain(|d| d.metadata.instance_id != resource.metadata.instance_id);
        Ok(())
    }

    async fn can_terminate(&self, _machine: &Machine) -> nimbus_provider::Result<CanTerminate> {
        Ok(CanTerminate::minimum_allocation(24, 23.5))
    }

    async fn list_machines(
        &self,
        _tenant: TenantId,
    ) -> nimbus_provider::Result<Vec<ProviderMachine>> {
        if *self.fail_list.lock().unwrap() {
            return Err(nimbus_provider::Error::Retryable("throttled".into()));
        }
        let mut listed: Vec<_> = self.machines.lock().unwrap().values().cloned().collect();
        listed.extend(self.duplicates.lock().unwrap().iter().cloned());
        Ok(listed)
    }

    async fn get_machine(&self, id: MachineId) -> nimbus_provider::Result<Option<ProviderMachine>> {
        Ok(self.machines.lock().unwrap().get(&id).cloned())
    }

    async fn exec(&self, machine: &Machine) -> nimbus_provider::Result<Arc<dyn Exec>> {
        Err(nimbus_provider::Error::NotFound(machine.id))
    }
}

async fn fake_harness() -> (Harness, Arc<FakeProvider>) {
    let fake = Arc::new(FakeProvider::default());
    let for_registry = fake.clone();
    let h = harness_with(test_config(), move |_| {
        let mut registry = ProviderRegistry::new();
        registry.register(
            ProviderType::Local,
            Arc::new(move |_| Ok(for_registry.clone() as Arc<dyn Provider>)),
            Arc::new(|_| Ok(())),
        );
        registry
    })
    .await;
    (h, fake)
}

#[tokio::test]
async fn a_provision_that_fails_after_the_provider_created_something_leaves_nothing_behind() {
    let (h, fake) = fake_harness().await;
    *fake.fail_provision_after_create.lock().unwrap() = true;
    let machine = h.provision(spec()).await;
    let failed = h.wait_for(machine.id, MachineState::Failed).await;
    assert!(failed.error.unwrap().contains("timed out waiting"));
    assert!(
        fake.machines.lock().unwrap().is_empty(),
        "the half-created machine was removed"
    );
}

#[tokio::test]
async fn a_machine_on_a_host_inside_its_minimum_period_still_terminates_and_says_so() {
    let (h, fake) = fake_harness().await;
    let machine = h.provision(spec()).await;
    h.wait_for(machine.id, MachineState::Ready).await;
    let answer = h
        .fleet
        .can_terminate_machine(None, machine.id)
        .await
        .unwrap();
    assert_eq!(answer.error.as_deref(), Some("minimum_allocation_period"));
    assert_eq!(answer.hours_remaining, Some(23.5));
    h.fleet.terminate_machine(None, machine.id).await.unwrap();
    h.wait_for(machine.id, MachineState::Terminated).await;
    let history = h.store.machine_history(machine.id).await.unwrap();
    let stopping = history
        .iter()
        .find(|c| c.state == MachineState::Stopping)
        .unwrap();
    let reason = stopping.reason.as_deref().unwrap();
    assert!(
        reason.contains("keeps its resources") && reason.contains("23.5 hours"),
        "{reason}"
    );
    assert!(fake.machines.lock().unwrap().is_empty());
}

#[tokio::test]
async fn reconcile_errors_back_off_exponentially_up_to_the_interval() {
    let (h, fake) = fake_harness().await;
    *fake.fail_list.lock().unwrap() = true;
    let err = h.fleet.reconcile(&h.provider).await.unwrap_err();
    assert!(err.to_string().contains("throttled"), "{err}");
    let backoffs: Vec<Duration> = (1..=14)
        .map(|failures| {
            let nimbus_fleet::Action::Requeue(after) =
                h.fleet.error_policy(&h.provider, &err, failures);
            after
        })
        .collect();
    assert_eq!(backoffs[0], Duration::from_secs(1));
    assert_eq!(backoffs[1], Duration::from_secs(2));
    assert_eq!(backoffs[4], Duration::from_secs(16));
    assert!(backoffs.windows(2).all(|w| w[0] <= w[1]));
    assert!(backoffs.iter().all(|b| *b <= Duration::from_secs(3600)));
}

#[tokio::test]
async fn reconcile_removes_a_second_resource_of_a_ready_machine_and_keeps_the_recorded_one() {
    let (h, fake) = fake_harness().await;
    let machine = h.provision(spec()).await;
    let ready = h.wait_for(machine.id, MachineState::Ready).await;
    let recorded = ready.provider_metadata.instance_id.clone().unwrap();
    let original = fake.machines.lock().unwrap()[&machine.id].clone();
    assert_eq!(original.metadata.instance_id.as_ref(), Some(&recorded));
    // A second instance tagged for the same machine, launched a little later: a create the
    // cloud ran twice.
    let newer = ProviderMachine {
        created_at: original.created_at + time::Duration::seconds(5),
        metadata: nimbus_types::ProviderMetadata {
            instance_id: Some("i-duplicate".into()),
            ..Default::default()
        },
        ..original.clone()
    };
    fake.duplicates.lock().unwrap().push(newer.clone());

    // The machine's background task may still hold its slot for a moment after `ready`; a
    // busy machine is skipped, so allow a few passes.
    let mut removed = 0;
    for _ in 0..50 {
        let (report, _) = h.fleet.reconcile(&h.provider).await.unwrap();
        assert_eq!(report.failed + report.orphans_removed, 0, "{report:?}");
        removed += report.duplicates_removed;
        if removed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(removed, 1);
    let (report, _) = h.fleet.reconcile(&h.provider).await.unwrap();
    assert_eq!(report, Default::default(), "nothing left to do");

    assert_eq!(*fake.removed_duplicates.lock().unwrap(), vec![newer]);
    let still = h.store.get_machine(None, machine.id).await.unwrap().machine;
    assert_eq!(still.state, MachineState::Ready);
    assert_eq!(still.provider_metadata.instance_id, Some(recorded.clone()));
    let listed = fake.list_machines(h.tenant.id).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].metadata.instance_id, Some(recorded));

    tokio::time::sleep(Duration::from_millis(100)).await;
    let reconciled: Vec<_> = h
        .store
        .list_events(&EventFilter {
            machine_id: Some(machine.id),
            ..EventFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.name == event::MACHINE_RECONCILED)
        .collect();
    assert_eq!(reconciled.len(), 1, "{reconciled:?}");
    assert_eq!(reconciled[0].metadata["action"], "remove_duplicate");
    assert_eq!(reconciled[0].metadata["instance_id"], "i-duplicate");
}
