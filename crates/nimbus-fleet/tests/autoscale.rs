//! The autoscaler end to end below the API: pools in a real SQLite store, demand recorded in the
//! stored demand book exactly as the webhook receiver records it, real local machines (real
//! processes and directories), and passes driven with an injected clock so idle timeouts and
//! schedules are crossed without waiting. A fake provider stands in only where the fault (a
//! provider that refuses every machine) is one no real peer produces on demand.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nimbus_autoscale::{Decision, Why};
use nimbus_fleet::autoscale::{AutoscaleConfig, PoolOutcome};
use nimbus_fleet::demand::StoredDemandBook;
use nimbus_fleet::{Fleet, FleetConfig, ProviderRegistry, Telemetry};
use nimbus_forge::demand::{Applied, DemandBook, ForgeJob, JobEvent, JobStatus, LabelSet};
use nimbus_provider::{DedicatedHost, Provider, ProviderEnv, ProviderMachine, ProvisionRequest};
use nimbus_setup::exec::Exec;
use nimbus_setup::local::machine_processes;
use nimbus_store::{EventFilter, MachineFilter, SealKey, Sealer, SqlStore, Storage, StoreOptions};
use nimbus_types::cost::{Billing, Price, PriceTable};
use nimbus_types::event;
use nimbus_types::{
    Arch, CanTerminate, Machine, MachineId, MachineState, Os, Pool, PoolSettings, ProviderConfig,
    ProviderType, Tenant, TenantId,
};
use time::OffsetDateTime;

struct Harness {
    dir: tempfile::TempDir,
    store: Arc<SqlStore>,
    fleet: Fleet,
    book: StoredDemandBook,
    tenant: Tenant,
    provider: ProviderConfig,
}

fn config() -> FleetConfig {
    FleetConfig {
        setup_timeout: Duration::from_secs(60),
        reconcile_interval: Duration::from_secs(3600),
        orphan_grace: Duration::ZERO,
        shutdown_timeout: Duration::from_secs(10),
        autoscale: AutoscaleConfig {
            // Passes move through injected times: read hosts at every pass.
            host_refresh: Duration::ZERO,
            ..AutoscaleConfig::default()
        },
        // A price for local machines of the made-up type `small`, for budgets without a pool
        // `hourly_cost`.
        prices: PriceTable::with_overrides([Price {
            provider_type: ProviderType::Local,
            instance_type: "small".into(),
            usd_per_hour: 1.0,
            billing: Billing::PerSecond { minimum_secs: 0 },
        }]),
        ..FleetConfig::default()
    }
}

fn machines_dir(dir: &Path) -> PathBuf {
    dir.join("machines")
}

fn local_registry(machines_dir: PathBuf) -> ProviderRegistry {
    let env = ProviderEnv::new(machines_dir);
    let mut registry = ProviderRegistry::new();
    registry.register(
        ProviderType::Local,
        Arc::new(move |config| nimbus_provider::build(&env, config)),
        Arc::new(nimbus_provider::validate_config),
    );
    registry
}

/// A fleet on the store in `dir` (a second call on the same dir is a restarted daemon).
async fn fleet_on(dir: &Path, key: &SealKey, registry: ProviderRegistry) -> (Arc<SqlStore>, Fleet) {
    let url = SqlStore::sqlite_path_url(&dir.join("nimbus.db"));
    let store = Arc::new(
        SqlStore::connect(&url, StoreOptions::default(), Sealer::new(key.clone()))
            .await
            .expect("open store"),
    );
    let dyn_store: Arc<dyn Storage> = store.clone();
    let telemetry = Telemetry::start(dyn_store.clone(), &mut Default::default());
    let fleet = Fleet::new(dyn_store, registry, telemetry, config());
    (store, fleet)
}

async fn harness_with(registry: impl FnOnce(PathBuf) -> ProviderRegistry) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let key = SealKey::generate();
    let (store, fleet) = fleet_on(dir.path(), &key, registry(machines_dir(dir.path()))).await;
    let tenant = store.create_tenant("acme").await.unwrap();
    let provider = fleet
        .create_provider(tenant.id, "local", ProviderType::Local, None, None)
        .await
        .unwrap();
    let book = StoredDemandBook::new(store.clone());
    Harness {
        dir,
        store,
        fleet,
        book,
        tenant,
        provider,
    }
}

async fn harness() -> Harness {
    harness_with(local_registry).await
}

impl Drop for Harness {
    /// A failing test must not leave its machines' processes behind.
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(machines_dir(self.dir.path())) else {
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
}

fn settings(min_idle: u32, max: u32) -> PoolSettings {
    let mut settings = PoolSettings::new(
        vec!["self-hosted".into(), "linux".into()],
        Os::host().unwrap(),
        Arch::host().unwrap(),
        max,
    );
    settings.min_idle = min_idle;
    settings
}

fn job(id: u64, status: JobStatus) -> ForgeJob {
    ForgeJob {
        job_id: id,
        run_id: 500 + id,
        repository: "acme/app".into(),
        labels: LabelSet::new(["self-hosted", "linux"]),
        status,
    }
}

impl Harness {
    async fn pool(&self, settings: PoolSettings) -> Pool {
        self.fleet
            .create_pool(self.tenant.id, "linux", &self.provider, settings)
            .await
            .unwrap()
    }

    /// Records a job's news as a webhook delivery would; `runner` is the machine that took it.
    async fn job(&self, id: u64, status: JobStatus, runner: Option<MachineId>) -> Applied {
        let event = JobEvent {
            job: job(id, status),
            runner_name: runner.map(nimbus_fleet::runners::runner_name),
            received_at: nimbus_types::now(),
        };
        let delivery = format!("delivery-{id}-{}", status.as_str());
        self.book
            .apply(self.tenant.id, Some(&delivery), &event)
            .await
            .unwrap()
    }

    /// Records a job's news as a webhook delivery received at `at` would.
    async fn job_at(
        &self,
        id: u64,
        status: JobStatus,
        runner: Option<MachineId>,
        at: OffsetDateTime,
    ) -> Applied {
        let event = JobEvent {
            job: job(id, status),
            runner_name: runner.map(nimbus_fleet::runners::runner_name),
            received_at: at,
        };
        let delivery = format!("delivery-{id}-{}", status.as_str());
        self.book
            .apply(self.tenant.id, Some(&delivery), &event)
            .await
            .unwrap()
    }

    /// A job that ran from `from` for `minutes` on `runner` (or on a runner of no pool), all
    /// of its news recorded now.
    async fn past_job(
        &self,
        id: u64,
        runner: Option<MachineId>,
        from: OffsetDateTime,
        minutes: i64,
    ) {
        self.job_at(id, JobStatus::Queued, None, from).await;
        self.job_at(id, JobStatus::InProgress, runner, from).await;
        self.job_at(
            id,
            JobStatus::Completed,
            runner,
            from + time::Duration::minutes(minutes),
        )
        .await;
    }

    async fn pass(&self, now: OffsetDateTime) -> PoolOutcome {
        let mut outcomes = self.fleet.autoscale_once(now).await.unwrap();
        assert_eq!(outcomes.len(), 1, "{outcomes:?}");
        outcomes.remove(0)
    }

    async fn machines(&self, pool: &Pool) -> Vec<Machine> {
        self.store
            .list_machines(&MachineFilter {
                pool_id: Some(pool.id),
                include_terminated: true,
                ..MachineFilter::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|record| record.machine)
            .collect()
    }

    async fn in_state(&self, pool: &Pool, state: MachineState) -> Vec<Machine> {
        let mut machines = self.machines(pool).await;
        machines.retain(|m| m.state == state);
        machines
    }

    /// Waits until no machine of the pool is booting or stopping.
    async fn settle(&self, pool: &Pool) -> Vec<Machine> {
        for _ in 0..600 {
            let machines = self.machines(pool).await;
            if machines.iter().all(|m| {
                !matches!(
                    m.state,
                    MachineState::Provisioning
                        | MachineState::ImageInstalling
                        | MachineState::Stopping
                )
            }) {
                return machines;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("machines never settled: {:?}", self.machines(pool).await);
    }

    async fn events(&self, name: &str) -> Vec<nimbus_types::event::Event> {
        // Events are written by the telemetry task; give it a moment.
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.store
            .list_events(&EventFilter {
                tenant_id: Some(self.tenant.id),
                ..EventFilter::default()
            })
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.name == name)
            .collect()
    }
}

fn provisions(outcome: &PoolOutcome) -> u32 {
    outcome
        .decisions
        .iter()
        .map(|d| match d {
            Decision::Provision { count, .. } => *count,
            _ => 0,
        })
        .sum()
}

fn terminations(outcome: &PoolOutcome) -> Vec<(MachineId, Why)> {
    outcome
        .decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Terminate { machine, why } => Some((*machine, *why)),
            _ => None,
        })
        .collect()
}

fn minutes(n: i64) -> time::Duration {
    time::Duration::minutes(n)
}

#[tokio::test]
async fn a_warm_pool_is_kept_at_min_idle() {
    let h = harness().await;
    let pool = h.pool(settings(2, 5)).await;
    let now = nimbus_types::now();
    let first = h.pass(now).await;
    assert_eq!(provisions(&first), 2, "{first:?}");
    assert_eq!(first.status.min_idle, 2);
    let machines = h.settle(&pool).await;
    assert_eq!(machines.len(), 2);
    assert!(machines.iter().all(|m| m.state == MachineState::Ready));
    assert!(machines.iter().all(|m| m.pool_id == Some(pool.id)));

    // Nothing to do while the pool is at its target, however much time passes: warm runners
    // are the target, not idle surplus.
    let later = h.pass(now + minutes(60)).await;
    assert!(later.decisions.is_empty(), "{later:?}");
    assert_eq!((later.status.idle, later.status.desired), (2, 2));

    // A warm runner lost (terminated by hand) is replaced on the next pass.
    h.fleet
        .terminate_machine(None, machines[0].id)
        .await
        .unwrap();
    h.settle(&pool).await;
    let refill = h.pass(now + minutes(61)).await;
    assert_eq!(provisions(&refill), 1, "{refill:?}");
    h.settle(&pool).await;
    assert_eq!(h.in_state(&pool, MachineState::Ready).await.len(), 2);
    assert_eq!(h.events(event::POOL_SCALE_UP).await.len(), 2);
}

#[tokio::test]
async fn a_burst_of_queued_jobs_scales_up_to_max_and_no_further() {
    let h = harness().await;
    let pool = h.pool(settings(0, 3)).await;
    for id in 1..=5 {
        assert_eq!(h.job(id, JobStatus::Queued, None).await, Applied::Recorded);
    }
    // A job for labels no pool serves is not this pool's demand.
    let other = JobEvent {
        job: ForgeJob {
            labels: LabelSet::new(["gpu"]),
            ..job(99, JobStatus::Queued)
        },
        runner_name: None,
        received_at: nimbus_types::now(),
    };
    h.book.apply(h.tenant.id, None, &other).await.unwrap();

    let now = nimbus_types::now();
    let first = h.pass(now).await;
    assert_eq!(provisions(&first), 3, "{first:?}");
    assert_eq!(first.status.queued_jobs, 5);
    assert_eq!(first.status.desired, 3);
    // Booting machines count: the next passes add nothing.
    for step in 1..=3 {
        let again = h.pass(now + time::Duration::seconds(step)).await;
        assert_eq!(provisions(&again), 0, "{again:?}");
    }
    let machines = h.settle(&pool).await;
    assert_eq!(machines.len(), 3);
    let status = h.fleet.pool_status(&pool).await.unwrap();
    assert_eq!(status.idle, 3);
    assert!(status.oldest_queued_secs.is_some());
    assert_eq!(status.last_decisions[0].action, "provision");
    assert_eq!(status.last_decisions[0].count, Some(3));
}

#[tokio::test]
async fn idle_runners_go_after_the_idle_timeout_and_a_busy_one_never() {
    let h = harness().await;
    let mut s = settings(0, 3);
    s.ephemeral = false;
    s.idle_timeout_secs = 600;
    let pool = h.pool(s).await;
    h.job(1, JobStatus::Queued, None).await;
    h.job(2, JobStatus::Queued, None).await;
    let t0 = nimbus_types::now();
    assert_eq!(provisions(&h.pass(t0).await), 2);
    let machines = h.settle(&pool).await;
    let (busy, idle) = (machines[0].id, machines[1].id);

    // Job 1 runs on the first machine; job 2 is cancelled before any runner took it.
    h.job(1, JobStatus::InProgress, Some(busy)).await;
    h.job(2, JobStatus::Completed, None).await;
    let outcome = h.pass(t0).await;
    assert!(
        terminations(&outcome).is_empty(),
        "not idle long enough: {outcome:?}"
    );
    assert_eq!(
        h.store.get_machine(None, busy).await.unwrap().machine.state,
        MachineState::Running
    );

    // Past the idle timeout: the idle runner goes, the busy one stays, whatever the clock says.
    let outcome = h.pass(t0 + minutes(11)).await;
    assert_eq!(terminations(&outcome), [(idle, Why::Idle)], "{outcome:?}");
    let outcome = h.pass(t0 + minutes(600)).await;
    assert!(terminations(&outcome).is_empty(), "{outcome:?}");
    h.settle(&pool).await;
    assert_eq!(
        h.store.get_machine(None, idle).await.unwrap().machine.state,
        MachineState::Terminated
    );
    assert_eq!(
        h.store.get_machine(None, busy).await.unwrap().machine.state,
        MachineState::Running
    );

    // The job ends: the runner is idle again (one job run) and goes after its own timeout.
    h.job(1, JobStatus::Completed, Some(busy)).await;
    let finished = nimbus_types::now();
    let outcome = h.pass(finished + minutes(5)).await;
    assert!(terminations(&outcome).is_empty(), "{outcome:?}");
    let machine = h.store.get_machine(None, busy).await.unwrap().machine;
    assert_eq!(machine.state, MachineState::Ready);
    assert_eq!(machine.usage.jobs_run, 1);
    let outcome = h.pass(finished + minutes(11)).await;
    assert_eq!(terminations(&outcome), [(busy, Why::Idle)]);
    h.settle(&pool).await;
    let down = h.events(event::POOL_SCALE_DOWN).await;
    assert_eq!(down.len(), 2, "{down:?}");
    assert!(down.iter().all(|e| e.metadata["reason"] == "idle"));
}

#[tokio::test]
async fn an_ephemeral_runner_is_replaced_after_its_job() {
    let h = harness().await;
    let pool = h.pool(settings(1, 3)).await;
    let now = nimbus_types::now();
    assert_eq!(provisions(&h.pass(now).await), 1);
    let first = h.settle(&pool).await[0].id;
    h.job(7, JobStatus::Queued, None).await;
    h.job(7, JobStatus::InProgress, Some(first)).await;
    // Busy + warm target: a second machine comes up while the first works.
    let outcome = h.pass(now).await;
    assert_eq!(provisions(&outcome), 1, "{outcome:?}");
    assert_eq!(outcome.status.busy, 1);
    h.settle(&pool).await;
    h.job(7, JobStatus::Completed, Some(first)).await;
    let outcome = h.pass(now).await;
    assert_eq!(
        terminations(&outcome),
        [(first, Why::Ephemeral)],
        "{outcome:?}"
    );
    h.settle(&pool).await;
    assert_eq!(h.in_state(&pool, MachineState::Ready).await.len(), 1);
}

/// The next Monday at least two days ahead, 00:00 UTC.
fn next_monday() -> OffsetDateTime {
    let mut day = (nimbus_types::now() + time::Duration::days(2))
        .replace_time(time::Time::MIDNIGHT)
        .to_offset(time::UtcOffset::UTC);
    while day.weekday() != time::Weekday::Monday {
        day += time::Duration::days(1);
    }
    day
}

#[tokio::test]
async fn schedules_switch_the_warm_target_at_the_right_times() {
    let h = harness().await;
    let mut s = settings(0, 5);
    // Office hours in Tokyo (UTC+9 all year): 09:00-17:59 JST is 00:00-08:59 UTC.
    s.schedules = vec!["* 9-17 * * mon-fri@Asia/Tokyo=2".parse().unwrap()];
    s.idle_timeout_secs = 60;
    let pool = h.pool(s).await;
    let monday = next_monday();

    // Sunday 23:59 UTC is Monday 08:59 in Tokyo: before the window.
    let before = h.pass(monday - minutes(1)).await;
    assert_eq!(
        (before.status.min_idle, before.status.active_schedule),
        (0, None)
    );
    assert!(before.decisions.is_empty(), "{before:?}");
    // Monday 09:00 JST: two warm runners.
    let open = h.pass(monday).await;
    assert_eq!(open.status.active_schedule, Some(0));
    assert_eq!(provisions(&open), 2, "{open:?}");
    h.settle(&pool).await;
    let during = h.pass(monday + minutes(8 * 60 + 59)).await;
    assert!(
        during.decisions.is_empty(),
        "17:59 JST is inside: {during:?}"
    );
    // 18:00 JST: the window closed; the warm runners are surplus and idle past the timeout.
    let closed = h.pass(monday + minutes(9 * 60)).await;
    assert_eq!(closed.status.min_idle, 0);
    assert_eq!(terminations(&closed).len(), 2, "{closed:?}");
    // Saturday 09:30 JST: weekends are outside.
    let saturday = h.pass(monday + time::Duration::days(5) + minutes(30)).await;
    assert_eq!(saturday.status.min_idle, 0);
}

#[tokio::test]
async fn the_monthly_budget_stops_scale_up_with_an_event() {
    let h = harness().await;
    let mut s = settings(0, 10);
    s.hourly_cost = Some(1.0);
    // One machine-hour ahead is reserved per machine: $2.50 pays for two.
    s.monthly_budget = Some(2.5);
    let pool = h.pool(s).await;
    for id in 1..=5 {
        h.job(id, JobStatus::Queued, None).await;
    }
    let outcome = h.pass(nimbus_types::now()).await;
    assert_eq!(provisions(&outcome), 2, "{outcome:?}");
    assert!(outcome.status.budget_exhausted);
    assert_eq!(outcome.status.desired, 2);
    let events = h.events(event::POOL_BUDGET_EXHAUSTED).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].metadata["pool"], "linux");
    // Raising the budget lets the pool grow again.
    let mut more = pool.settings.clone();
    more.monthly_budget = Some(100.0);
    h.fleet.update_pool(&pool, more).await.unwrap();
    let outcome = h.pass(nimbus_types::now()).await;
    assert_eq!(provisions(&outcome), 3, "{outcome:?}");
    assert!(!outcome.status.budget_exhausted);
    h.settle(&pool).await;
}

/// A provider whose every create fails, counting the attempts.
#[derive(Default)]
struct RefusingProvider {
    attempts: AtomicUsize,
}

#[async_trait]
impl Provider for RefusingProvider {
    fn provider_type(&self) -> ProviderType {
        ProviderType::Local
    }

    async fn provision(
        &self,
        _request: &ProvisionRequest,
    ) -> nimbus_provider::Result<ProviderMachine> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        Err(nimbus_provider::Error::Permanent(
            "InsufficientInstanceCapacity: no capacity for this instance type".into(),
        ))
    }

    async fn terminate(&self, _machine: &Machine) -> nimbus_provider::Result<()> {
        Ok(())
    }

    async fn can_terminate(&self, _machine: &Machine) -> nimbus_provider::Result<CanTerminate> {
        Ok(CanTerminate::yes())
    }

    async fn list_machines(
        &self,
        _tenant: TenantId,
    ) -> nimbus_provider::Result<Vec<ProviderMachine>> {
        Ok(Vec::new())
    }

    async fn get_machine(
        &self,
        _id: MachineId,
    ) -> nimbus_provider::Result<Option<ProviderMachine>> {
        Ok(None)
    }

    async fn exec(&self, machine: &Machine) -> nimbus_provider::Result<Arc<dyn Exec>> {
        Err(nimbus_provider::Error::NotFound(machine.id))
    }
}

#[tokio::test]
async fn a_failing_provider_makes_the_pool_back_off_instead_of_looping() {
    let refusing = Arc::new(RefusingProvider::default());
    let for_registry = refusing.clone();
    let h = harness_with(move |_| {
        let mut registry = ProviderRegistry::new();
        registry.register(
            ProviderType::Local,
            Arc::new(move |_| Ok(for_registry.clone() as Arc<dyn Provider>)),
            Arc::new(|_| Ok(())),
        );
        registry
    })
    .await;
    let pool = h.pool(settings(1, 5)).await;
    let now = nimbus_types::now();
    // Two attempts fail, one pass after the other.
    for step in 0..2 {
        let outcome = h.pass(now + time::Duration::seconds(step)).await;
        assert_eq!(provisions(&outcome), 1, "{outcome:?}");
        h.settle(&pool).await;
    }
    assert_eq!(refusing.attempts.load(Ordering::SeqCst), 2);
    // Then the pool waits, however often it is planned, and says why.
    for step in 2..20 {
        let outcome = h
            .pass(nimbus_types::now() + time::Duration::seconds(step))
            .await;
        assert_eq!(provisions(&outcome), 0, "pass {step}: {outcome:?}");
        assert!(outcome.status.backoff_until.is_some());
    }
    assert_eq!(refusing.attempts.load(Ordering::SeqCst), 2);
    let status = h.fleet.pool_status(&pool).await.unwrap();
    assert!(
        status
            .backoff_reason
            .as_deref()
            .is_some_and(|r| r.contains("last 2 provisions failed")),
        "{status:?}"
    );
    assert_eq!(status.failed, 2);
    let backoffs = h.events(event::POOL_BACKOFF).await;
    assert_eq!(
        backoffs.len(),
        1,
        "one event when the backoff starts: {backoffs:?}"
    );
    // After the wait it tries once more, and a further failure doubles the wait.
    let until = status.backoff_until.unwrap();
    let retry = h.pass(until + time::Duration::seconds(1)).await;
    assert_eq!(provisions(&retry), 1, "{retry:?}");
    h.settle(&pool).await;
    let status = h.fleet.pool_status(&pool).await.unwrap();
    let again = status.backoff_until.expect("backing off again");
    assert!(
        again - nimbus_types::now() > time::Duration::seconds(45),
        "{again}"
    );
}

#[tokio::test]
async fn a_daemon_killed_mid_scale_up_restarts_with_demand_intact_and_no_duplicates() {
    let h = harness().await;
    let pool = h.pool(settings(0, 10)).await;
    for id in 1..=3 {
        h.job(id, JobStatus::Queued, None).await;
    }
    let outcome = h.pass(nimbus_types::now()).await;
    assert_eq!(provisions(&outcome), 3);
    // The daemon stops with the provisions in flight.
    h.fleet.shutdown().await;

    // A new daemon on the same store and machine directory.
    let key_dir = h.dir.path();
    let dyn_store: Arc<dyn Storage> = h.store.clone();
    let telemetry = Telemetry::start(dyn_store.clone(), &mut Default::default());
    let fleet = Fleet::new(
        dyn_store,
        local_registry(machines_dir(key_dir)),
        telemetry,
        config(),
    );
    let book = StoredDemandBook::new(h.store.clone());
    // Demand is intact, and a redelivered webhook is still recognised.
    let jobs = book.jobs(h.tenant.id).await.unwrap();
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| j.job.status == JobStatus::Queued));
    let redelivered = JobEvent {
        job: job(1, JobStatus::Queued),
        runner_name: None,
        received_at: nimbus_types::now(),
    };
    assert_eq!(
        book.apply(h.tenant.id, Some("delivery-1-queued"), &redelivered)
            .await
            .unwrap(),
        Applied::Replay
    );
    // The reconciler resumes the interrupted provisions; the autoscaler adds none.
    fleet.reconcile(&h.provider).await.unwrap();
    let outcomes = fleet.autoscale_once(nimbus_types::now()).await.unwrap();
    assert_eq!(provisions(&outcomes[0]), 0, "{outcomes:?}");
    let machines = h.settle(&pool).await;
    assert_eq!(machines.len(), 3, "{machines:?}");
    assert!(
        machines.iter().all(|m| m.state == MachineState::Ready),
        "{machines:?}"
    );
    let dirs = std::fs::read_dir(machines_dir(key_dir)).unwrap().count();
    assert_eq!(dirs, 3, "one local machine per intent");
    let outcomes = fleet.autoscale_once(nimbus_types::now()).await.unwrap();
    assert_eq!(provisions(&outcomes[0]), 0, "{outcomes:?}");
    fleet.shutdown().await;
}

#[tokio::test]
async fn pools_refuse_bad_settings_naming_the_field_and_guard_their_machines() {
    let h = harness().await;
    let field = |err: nimbus_fleet::Error| match err {
        nimbus_fleet::Error::Invalid(spec) => spec.field,
        other => panic!("expected an invalid field, got {other:?}"),
    };
    let mut bad = settings(5, 2);
    let err = h
        .fleet
        .create_pool(h.tenant.id, "linux", &h.provider, bad.clone())
        .await
        .unwrap_err();
    assert_eq!(field(err), "min_idle");
    bad = settings(0, 2);
    bad.schedules = vec![nimbus_types::Schedule {
        cron: "61 * * * *".into(),
        timezone: "UTC".into(),
        min_idle: 1,
    }];
    let err = h
        .fleet
        .create_pool(h.tenant.id, "linux", &h.provider, bad)
        .await
        .unwrap_err();
    assert_eq!(field(err), "schedules[0].cron");

    let pool = h.pool(settings(1, 2)).await;
    // The same labels in another order and case are the same label set.
    let mut same = settings(0, 2);
    same.labels = vec!["Linux".into(), "self-hosted".into()];
    let err = h
        .fleet
        .create_pool(h.tenant.id, "linux-2", &h.provider, same)
        .await
        .unwrap_err();
    assert_eq!(field(err), "labels");

    h.pass(nimbus_types::now()).await;
    h.settle(&pool).await;
    assert!(matches!(
        h.fleet.delete_pool("acme", &pool).await,
        Err(nimbus_fleet::Error::Conflict(_))
    ));
    assert!(matches!(
        h.fleet.delete_provider(h.tenant.id, h.provider.id).await,
        Err(nimbus_fleet::Error::Conflict(_))
    ));
    // Draining: max 0 removes the idle runner at once.
    let mut drain = pool.settings.clone();
    drain.min_idle = 0;
    drain.max = 0;
    let pool = h.fleet.update_pool(&pool, drain).await.unwrap();
    let outcome = h.pass(nimbus_types::now()).await;
    assert_eq!(terminations(&outcome).len(), 1, "{outcome:?}");
    assert_eq!(terminations(&outcome)[0].1, Why::OverMax);
    h.settle(&pool).await;
    h.fleet.delete_pool("acme", &pool).await.unwrap();
    assert!(
        h.fleet
            .autoscale_once(nimbus_types::now())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn tenants_pools_scale_independently() {
    let h = harness().await;
    let acme = h.pool(settings(0, 4)).await;
    let globex = h.store.create_tenant("globex").await.unwrap();
    let provider = h
        .fleet
        .create_provider(globex.id, "local", ProviderType::Local, None, None)
        .await
        .unwrap();
    // The same labels and name in another tenant are no conflict.
    let other = h
        .fleet
        .create_pool(globex.id, "linux", &provider, settings(1, 4))
        .await
        .unwrap();
    // acme's job is acme's demand only; globex only keeps its warm runner.
    h.job(1, JobStatus::Queued, None).await;
    h.job(2, JobStatus::Queued, None).await;
    let outcomes = h.fleet.autoscale_once(nimbus_types::now()).await.unwrap();
    let by_pool = |id| {
        outcomes
            .iter()
            .find(|o: &&PoolOutcome| o.pool_id == id)
            .map(provisions)
            .unwrap()
    };
    assert_eq!(by_pool(acme.id), 2, "{outcomes:?}");
    assert_eq!(by_pool(other.id), 1, "{outcomes:?}");
    h.settle(&acme).await;
    h.settle(&other).await;
    let globex_machines = h.machines(&other).await;
    assert_eq!(globex_machines.len(), 1);
    assert_eq!(globex_machines[0].tenant_id, globex.id);
    assert_eq!(h.machines(&acme).await.len(), 2);
}

#[tokio::test]
async fn the_running_loop_reacts_to_each_recorded_job() {
    let h = harness().await;
    let pool = h.pool(settings(0, 10)).await;
    h.fleet.start_autoscaler();
    let wait_for_count = |n: usize| {
        let h = &h;
        let pool = &pool;
        async move {
            for _ in 0..400 {
                if h.machines(pool).await.len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the pool never reached {n} machines");
        }
    };
    // Each wake-up reads only what changed since the last pass; the result must be the same
    // as a full read: one machine per queued job, none twice.
    for id in 1..=3 {
        h.job(id, JobStatus::Queued, None).await;
        h.fleet.demand_changed(h.tenant.id);
        wait_for_count(id as usize).await;
    }
    let machines = h.settle(&pool).await;
    assert_eq!(machines.len(), 3);
    // Job 1 starts on a machine, jobs 2 and 3 are cancelled: nothing new is started.
    h.job(1, JobStatus::InProgress, Some(machines[0].id)).await;
    h.job(2, JobStatus::Completed, None).await;
    h.job(3, JobStatus::Completed, None).await;
    h.fleet.demand_changed(h.tenant.id);
    for _ in 0..100 {
        let busy = h.in_state(&pool, MachineState::Running).await;
        if busy.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.in_state(&pool, MachineState::Running).await.len(), 1);
    h.job(4, JobStatus::Queued, None).await;
    h.fleet.demand_changed(h.tenant.id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Two idle runners wait for job 4: still nothing new.
    assert_eq!(h.machines(&pool).await.len(), 3);
    h.fleet.shutdown().await;
}

/// GitHub's runner list with one runner, online; a stand-in because "this runner never came
/// online" is a state no real peer produces on demand.
async fn github_listing(runner: &str) -> wiremock::MockServer {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let github = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/orgs/acme/actions/runners"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "total_count": 1,
            "runners": [{"id": 1, "name": runner, "os": "linux", "status": "online", "busy": false,
                         "labels": [{"id": 1, "name": "self-hosted", "type": "read-only"}]}],
        })))
        .mount(&github)
        .await;
    github
}

#[tokio::test]
async fn a_runner_the_forge_does_not_show_online_is_replaced_as_a_zombie() {
    let h = harness().await;
    let pool = h.pool(settings(2, 2)).await;
    let t0 = nimbus_types::now();
    h.pass(t0).await;
    let machines = h.settle(&pool).await;
    let (online, zombie) = (machines[0].id, machines[1].id);
    // The forge lists the first machine's runner only.
    let github = github_listing(&nimbus_fleet::runners::runner_name(online)).await;
    h.store
        .set_tenant_forge_config(&nimbus_types::ForgeConfig {
            tenant_id: h.tenant.id,
            forge_type: nimbus_types::ForgeType::Github,
            org: "acme".into(),
            credentials: Some(nimbus_types::Secret::new(
                serde_json::json!({"token": "ghp_test"}).to_string(),
            )),
            config: serde_json::json!({"api_url": github.uri()}),
            updated_at: nimbus_types::now(),
        })
        .await
        .unwrap();

    // First seen missing now: not yet a zombie.
    let outcome = h.pass(t0).await;
    assert!(
        !outcome
            .decisions
            .iter()
            .any(|d| matches!(d, Decision::Fail { .. })),
        "{outcome:?}"
    );
    // Still missing past the grace period: failed and replaced; the online one stays.
    let outcome = h.pass(t0 + minutes(6)).await;
    let failed: Vec<(MachineId, Why)> = outcome
        .decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Fail { machine, why } => Some((*machine, *why)),
            _ => None,
        })
        .collect();
    assert_eq!(failed, [(zombie, Why::Zombie)], "{outcome:?}");
    assert_eq!(provisions(&outcome), 1, "a replacement: {outcome:?}");
    let machine = h.store.get_machine(None, zombie).await.unwrap().machine;
    assert_eq!(machine.state, MachineState::Failed);
    assert!(machine.error.unwrap().contains("not online"));
    assert_eq!(
        h.store
            .get_machine(None, online)
            .await
            .unwrap()
            .machine
            .state,
        MachineState::Ready
    );
    h.settle(&pool).await;
}

#[tokio::test]
async fn the_tenants_budget_holds_back_every_pool_with_one_event() {
    let h = harness().await;
    let mut s = settings(0, 10);
    // No pool budget; the tenant's $2.50 pays for two machine-hours ahead.
    s.hourly_cost = Some(1.0);
    let pool = h.pool(s).await;
    h.store
        .set_tenant_budget(h.tenant.id, Some(2.5))
        .await
        .unwrap();
    for id in 1..=5 {
        h.job(id, JobStatus::Queued, None).await;
    }
    let outcome = h.pass(nimbus_types::now()).await;
    assert_eq!(provisions(&outcome), 2, "{outcome:?}");
    assert!(outcome.status.budget_exhausted);
    assert!(
        outcome
            .status
            .last_decisions
            .iter()
            .any(|d| d.action == "hold" && d.reason.contains("tenant's monthly budget")),
        "{outcome:?}"
    );
    // Held again on the next pass: still one event.
    let outcome = h.pass(nimbus_types::now()).await;
    assert_eq!(provisions(&outcome), 0, "{outcome:?}");
    let events = h.events(event::TENANT_BUDGET_EXHAUSTED).await;
    assert_eq!(events.len(), 1, "{events:?}");
    // Without the budget the pool grows to its demand.
    h.store.set_tenant_budget(h.tenant.id, None).await.unwrap();
    let outcome = h.pass(nimbus_types::now()).await;
    assert_eq!(provisions(&outcome), 3, "{outcome:?}");
    h.settle(&pool).await;
}

fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

fn hours(n: i64) -> time::Duration {
    time::Duration::hours(n)
}

#[tokio::test]
async fn the_forecast_warms_the_pool_ahead_of_a_learned_rise_even_after_a_restart() {
    let h = harness().await;
    let mut s = settings(0, 10);
    s.idle_timeout_secs = 600;
    let pool = h.pool(s).await;
    let monday = next_monday();
    // Monday to Thursday: three jobs at once from 09:00 to 09:40 UTC, nothing else.
    for day in 0..4u64 {
        for n in 0..3u64 {
            let at = monday + days(day as i64) + hours(9);
            h.past_job(100 + day * 10 + n, None, at, 40).await;
        }
    }
    let friday = monday + days(4);
    // 08:30: the rise is more than the prewarm (15 minutes) away; nothing is queued.
    let early = h.pass(friday + hours(8) + minutes(30)).await;
    assert!(early.decisions.is_empty(), "{early:?}");
    assert_eq!(early.status.desired, 0);
    // 08:50: three runners for the rise at 09:00, with no job queued yet.
    let ahead = h.pass(friday + hours(8) + minutes(50)).await;
    assert_eq!(provisions(&ahead), 3, "{ahead:?}");
    assert!(
        matches!(&ahead.decisions[0], Decision::Provision { reason, .. } if reason.contains("forecast 3")),
        "{ahead:?}"
    );
    h.settle(&pool).await;
    h.fleet.shutdown().await;

    // A restarted daemon learns the same from the stored history (the demand book forgot the
    // jobs long ago: completed jobs are pruned an hour after they end).
    let dyn_store: Arc<dyn Storage> = h.store.clone();
    let telemetry = Telemetry::start(dyn_store.clone(), &mut Default::default());
    let fleet = Fleet::new(
        dyn_store,
        local_registry(machines_dir(h.dir.path())),
        telemetry,
        config(),
    );
    let history = h.store.list_job_history(h.tenant.id, monday).await.unwrap();
    assert_eq!(history.len(), 12);
    assert!(
        history
            .iter()
            .all(|job| job.run_time() == time::Duration::minutes(40))
    );
    let outcomes = fleet
        .autoscale_once(friday + hours(8) + minutes(55))
        .await
        .unwrap();
    assert!(outcomes[0].decisions.is_empty(), "{outcomes:?}");
    assert_eq!(outcomes[0].status.desired, 3);
    // 10:30: the rise is over and no job came; the runners go after their idle timeout.
    let after = fleet
        .autoscale_once(friday + hours(10) + minutes(30))
        .await
        .unwrap();
    assert_eq!(terminations(&after[0]).len(), 3, "{after:?}");
    assert!(
        terminations(&after[0])
            .iter()
            .all(|(_, why)| *why == Why::Idle)
    );
    h.settle(&pool).await;
    fleet.shutdown().await;
}

/// The local provider with dedicated hosts modelled beside it, as EC2 Mac hosts behave: a
/// machine takes a free host, else a new one allocated at `clock` with a 24-hour minimum; a
/// host scrubs for 50 minutes after its machine ends and is released once idle past its
/// minimum. The machines are real local ones; the hosts are modelled because no peer here runs
/// instances on dedicated hosts (the AWS provider's reporting of its hosts is tested against
/// moto in `nimbus-aws`).
struct HostedProvider {
    local: Arc<dyn Provider>,
    clock: Arc<std::sync::Mutex<OffsetDateTime>>,
    hosts: std::sync::Mutex<Vec<DedicatedHost>>,
}

impl HostedProvider {
    fn now(&self) -> OffsetDateTime {
        *self.clock.lock().unwrap()
    }
}

#[async_trait]
impl Provider for HostedProvider {
    fn provider_type(&self) -> ProviderType {
        ProviderType::Local
    }

    async fn provision(
        &self,
        request: &ProvisionRequest,
    ) -> nimbus_provider::Result<ProviderMachine> {
        let now = self.now();
        {
            let mut hosts = self.hosts.lock().unwrap();
            let free = hosts.iter().position(|host| {
                host.machine_id.is_none() && host.scrubbing_until.is_none_or(|until| until <= now)
            });
            let idx = free.unwrap_or_else(|| {
                let id = format!("h-{}", hosts.len());
                hosts.push(DedicatedHost {
                    id,
                    allocated_at: now,
                    releasable_at: now + hours(24),
                    machine_id: None,
                    scrubbing_until: None,
                });
                hosts.len() - 1
            });
            hosts[idx].machine_id = Some(request.machine_id);
            hosts[idx].scrubbing_until = None;
        }
        self.local.provision(request).await
    }

    async fn terminate(&self, machine: &Machine) -> nimbus_provider::Result<()> {
        self.local.terminate(machine).await?;
        let now = self.now();
        for host in self.hosts.lock().unwrap().iter_mut() {
            if host.machine_id == Some(machine.id) {
                host.machine_id = None;
                host.scrubbing_until = Some(now + minutes(50));
            }
        }
        Ok(())
    }

    async fn can_terminate(&self, machine: &Machine) -> nimbus_provider::Result<CanTerminate> {
        self.local.can_terminate(machine).await
    }

    async fn list_machines(
        &self,
        tenant: TenantId,
    ) -> nimbus_provider::Result<Vec<ProviderMachine>> {
        self.local.list_machines(tenant).await
    }

    async fn get_machine(&self, id: MachineId) -> nimbus_provider::Result<Option<ProviderMachine>> {
        self.local.get_machine(id).await
    }

    async fn exec(&self, machine: &Machine) -> nimbus_provider::Result<Arc<dyn Exec>> {
        self.local.exec(machine).await
    }

    async fn dedicated_hosts(
        &self,
        _spec: &nimbus_types::MachineSpec,
    ) -> nimbus_provider::Result<Option<Vec<DedicatedHost>>> {
        let now = self.now();
        let mut hosts = self.hosts.lock().unwrap();
        hosts.retain(|host| {
            !(host.machine_id.is_none()
                && host.releasable_at <= now
                && host.scrubbing_until.is_none_or(|until| until <= now))
        });
        Ok(Some(hosts.clone()))
    }
}

/// A pool on dedicated hosts whose one machine ran one 30-minute job at `start`: what the
/// passes two hours later and just before the host's minimum allocation ends decide.
async fn host_pool_from(start: OffsetDateTime) -> (MachineId, PoolOutcome, PoolOutcome) {
    let clock = Arc::new(std::sync::Mutex::new(start));
    let for_registry = clock.clone();
    let h = harness_with(move |dir| {
        let env = ProviderEnv::new(dir);
        let mut registry = ProviderRegistry::new();
        // The registry keeps one provider per stored configuration, so the hosts persist.
        registry.register(
            ProviderType::Local,
            Arc::new(move |config| {
                Ok(Arc::new(HostedProvider {
                    local: nimbus_provider::build(&env, config)?,
                    clock: for_registry.clone(),
                    hosts: std::sync::Mutex::new(Vec::new()),
                }) as Arc<dyn Provider>)
            }),
            Arc::new(nimbus_provider::validate_config),
        );
        registry
    })
    .await;
    let mut s = settings(0, 3);
    s.ephemeral = false;
    s.idle_timeout_secs = 600;
    let pool = h.pool(s).await;
    h.job_at(1, JobStatus::Queued, None, start).await;
    let first = h.pass(start).await;
    assert_eq!(provisions(&first), 1, "{first:?}");
    let machine = h.settle(&pool).await[0].id;
    h.job_at(1, JobStatus::InProgress, Some(machine), start + minutes(5))
        .await;
    h.job_at(1, JobStatus::Completed, Some(machine), start + minutes(35))
        .await;
    // Two hours later the runner has been idle far past its timeout, but its host is paid
    // for 22 more hours: it stays.
    *clock.lock().unwrap() = start + hours(2);
    let inside = h.pass(start + hours(2)).await;
    // Just before the minimum ends, less the 50 minutes a host scrubs after its machine.
    let boundary = start + hours(24) - minutes(49);
    *clock.lock().unwrap() = boundary;
    let at_boundary = h.pass(boundary).await;
    h.settle(&pool).await;
    (machine, inside, at_boundary)
}

#[tokio::test]
async fn hosts_are_held_inside_their_minimum_and_released_at_the_boundary_unless_demand_is_forecast()
 {
    // A job on Friday at 06:00: Saturday's forecast (weekend days learn from weekend days)
    // needs no host, so the host goes at its boundary: the instance is terminated 49 minutes
    // before the minimum ends, and the host is released once scrubbed.
    let friday = next_monday() + days(4);
    let (machine, inside, at_boundary) = host_pool_from(friday + hours(6)).await;
    assert!(inside.decisions.is_empty(), "{inside:?}");
    assert_eq!(
        terminations(&at_boundary),
        [(machine, Why::Idle)],
        "{at_boundary:?}"
    );

    // The same on a Monday: Tuesday's forecast needs a runner at 06:00 (within the 12 hours a
    // host is held for), so the host is kept past its minimum, and a spare host is allocated
    // two hours ahead of the forecast rise.
    let monday = next_monday();
    let (_, inside, at_boundary) = host_pool_from(monday + hours(6)).await;
    assert!(inside.decisions.is_empty(), "{inside:?}");
    assert!(terminations(&at_boundary).is_empty(), "{at_boundary:?}");
    assert_eq!(provisions(&at_boundary), 1, "{at_boundary:?}");
}

#[tokio::test]
async fn budgets_priced_by_the_price_table_hold_scale_up_and_the_dry_run_says_so() {
    let h = harness().await;
    let mut s = settings(0, 10);
    // A budget nothing prices is refused, naming the field.
    s.monthly_budget = Some(2.5);
    let err = h
        .fleet
        .create_pool(h.tenant.id, "linux", &h.provider, s.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, nimbus_fleet::Error::Invalid(spec) if spec.field == "monthly_budget"),
        "{err:?}"
    );
    // $1 an hour from the price table, no hourly_cost: $2.50 pays for two machine-hours ahead.
    s.instance_type = Some("small".into());
    let pool = h.pool(s).await;
    for id in 1..=5 {
        h.job(id, JobStatus::Queued, None).await;
    }
    let dry = h.fleet.pool_plan(&pool).await.unwrap();
    assert_eq!(dry.decisions.len(), 1, "{dry:?}");
    assert_eq!(dry.decisions[0].count, Some(2), "{dry:?}");
    assert!(
        dry.decisions[0].reason.contains("pool's monthly budget"),
        "{dry:?}"
    );
    assert!(dry.status.budget_exhausted);
    let outcome = h.pass(nimbus_types::now()).await;
    assert_eq!(provisions(&outcome), 2, "{outcome:?}");
    assert!(outcome.status.budget_exhausted);
    assert!(outcome.status.spent_this_month.is_some());
    h.settle(&pool).await;

    // The pool's budget raised, the tenant's $3.50 pays for one more (two are running).
    let mut more = pool.settings.clone();
    more.monthly_budget = Some(100.0);
    let pool = h.fleet.update_pool(&pool, more).await.unwrap();
    h.store
        .set_tenant_budget(h.tenant.id, Some(3.5))
        .await
        .unwrap();
    let dry = h.fleet.pool_plan(&pool).await.unwrap();
    assert_eq!(dry.decisions[0].count, Some(1), "{dry:?}");
    assert!(
        dry.decisions[0].reason.contains("tenant's monthly budget"),
        "{dry:?}"
    );
    assert!(dry.status.budget_exhausted);
    let outcome = h.pass(nimbus_types::now()).await;
    assert_eq!(provisions(&outcome), 1, "{outcome:?}");
    let events = h.events(event::TENANT_BUDGET_EXHAUSTED).await;
    assert_eq!(events.len(), 1, "{events:?}");
    h.settle(&pool).await;
}
