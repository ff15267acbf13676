//! Webhook received → provision decision, in process, at a steady 200 deliveries/s.
//!
//! Each delivery goes the daemon's way: `WebhookReceiver::receive` checks GitHub's HMAC
//! signature, parses the `workflow_job` payload and records the job (and its delivery id) in
//! the stored demand book on SQLite; then `Fleet::demand_changed` wakes the autoscaler, whose
//! pass reads the tenant's pools, machines and jobs from the store, plans, and provisions. The
//! clock stops when the provider is asked for the job's machine — after the decision, its
//! machine intent and its events are written. The provider never finishes (a cloud still
//! booting), so every job stays one booting machine and nothing fails or backs off.
//!
//! The second row turns the wake-up off: the loop then only runs on its timer (1 s here; 10 s
//! by default), which is how a purely periodic scaler behaves.
//!
//! Run: `cargo bench -p nimbus-fleet --bench webhook_to_decision`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nimbus_fleet::autoscale::AutoscaleConfig;
use nimbus_fleet::demand::StoredDemandBook;
use nimbus_fleet::{Fleet, FleetConfig, ProviderRegistry, Telemetry};
use nimbus_forge::WebhookReceiver;
use nimbus_forge::github::GithubWebhooks;
use nimbus_provider::{Provider, ProviderMachine, ProvisionRequest};
use nimbus_setup::exec::Exec;
use nimbus_store::{SealKey, Sealer, SqlStore, Storage, StoreOptions};
use nimbus_types::{
    Arch, CanTerminate, Machine, MachineId, Os, PoolSettings, ProviderType, Secret, TenantId,
};

const SECRET: &str = "bench-webhook-secret";

/// Records when it was asked for each machine, and never finishes.
#[derive(Default)]
struct Booting {
    asked: Mutex<Vec<Instant>>,
}

#[async_trait]
impl Provider for Booting {
    fn provider_type(&self) -> ProviderType {
        ProviderType::Local
    }
    async fn provision(&self, _: &ProvisionRequest) -> nimbus_provider::Result<ProviderMachine> {
        self.asked.lock().unwrap().push(Instant::now());
        std::future::pending().await
    }
    async fn terminate(&self, _: &Machine) -> nimbus_provider::Result<()> {
        Ok(())
    }
    async fn can_terminate(&self, _: &Machine) -> nimbus_provider::Result<CanTerminate> {
        Ok(CanTerminate::yes())
    }
    async fn list_machines(&self, _: TenantId) -> nimbus_provider::Result<Vec<ProviderMachine>> {
        Ok(Vec::new())
    }
    async fn get_machine(&self, _: MachineId) -> nimbus_provider::Result<Option<ProviderMachine>> {
        Ok(None)
    }
    async fn exec(&self, machine: &Machine) -> nimbus_provider::Result<Arc<dyn Exec>> {
        Err(nimbus_provider::Error::NotFound(machine.id))
    }
}

struct Row {
    name: &'static str,
    deliveries: usize,
    receive: Vec<Duration>,
    decision: Vec<Duration>,
    /// Decision latencies of the first and the last 200 deliveries.
    first: Vec<Duration>,
    last: Vec<Duration>,
    profile: String,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> String {
    format!("{:9.3} ms", d.as_secs_f64() * 1000.0)
}

async fn run(name: &'static str, rate: u32, seconds: u32, wake: bool, interval: Duration) -> Row {
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
    let provider = Arc::new(Booting::default());
    let for_registry = provider.clone();
    let mut registry = ProviderRegistry::new();
    registry.register(
        ProviderType::Local,
        Arc::new(move |_| Ok(for_registry.clone() as Arc<dyn Provider>)),
        Arc::new(|_| Ok(())),
    );
    let telemetry = Telemetry::start(dyn_store.clone(), &mut Default::default());
    let config = FleetConfig {
        reconcile_interval: Duration::from_secs(3600),
        shutdown_timeout: Duration::from_millis(100),
        autoscale: AutoscaleConfig {
            interval,
            ..AutoscaleConfig::default()
        },
        ..FleetConfig::default()
    };
    let fleet = Fleet::new(dyn_store, registry, telemetry, config);
    let tenant = store.create_tenant("acme").await.unwrap();
    let provider_config = fleet
        .create_provider(tenant.id, "cloud", ProviderType::Local, None, None)
        .await
        .unwrap();
    let settings = PoolSettings::new(
        vec!["self-hosted".into(), "linux".into()],
        Os::Linux,
        Arch::X86_64,
        nimbus_types::MAX_POOL_SIZE,
    );
    fleet
        .create_pool(tenant.id, "linux", &provider_config, settings)
        .await
        .unwrap();
    let book = Arc::new(StoredDemandBook::new(store.clone()));
    let receiver = WebhookReceiver::new(
        tenant.id,
        Arc::new(GithubWebhooks::new(Secret::new(SECRET))),
        book,
    );
    fleet.start_autoscaler();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let total = (rate * seconds) as usize;
    let secret = Secret::new(SECRET);
    let mut sent = Vec::with_capacity(total);
    let mut receive = Vec::with_capacity(total);
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0..total {
        ticker.tick().await;
        let body = serde_json::json!({
            "action": "queued",
            "workflow_job": {"id": 1_000_000 + n, "run_id": 7, "labels": ["self-hosted", "linux"],
                             "runner_name": null, "status": "queued"},
            "repository": {"full_name": "acme/app"},
        })
        .to_string()
        .into_bytes();
        let mut headers = http::HeaderMap::new();
        headers.insert("x-github-event", "workflow_job".parse().unwrap());
        headers.insert("x-github-delivery", format!("d-{n}").parse().unwrap());
        headers.insert(
            "x-hub-signature-256",
            GithubWebhooks::sign(&secret, &body).parse().unwrap(),
        );
        let start = Instant::now();
        receiver.receive(&headers, &body).await.unwrap();
        if wake {
            fleet.demand_changed(tenant.id);
        }
        receive.push(start.elapsed());
        sent.push(start);
    }
    // Let the last decisions land.
    for _ in 0..400 {
        if provider.asked.lock().unwrap().len() >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let asked = provider.asked.lock().unwrap().clone();
    // Where a pass's time goes once the backlog is at its largest.
    let t = Instant::now();
    let machines = store
        .list_pool_machines(tenant.id, nimbus_types::now() - time::Duration::days(31))
        .await
        .unwrap();
    let list_machines = t.elapsed();
    let t = Instant::now();
    let jobs = store.list_jobs(tenant.id).await.unwrap();
    let list_jobs = t.elapsed();
    let t = Instant::now();
    fleet
        .autoscale_tenant(tenant.id, nimbus_types::now())
        .await
        .unwrap();
    let pass = t.elapsed();
    let profile = format!(
        "{name}: at the end, one pass takes {} ({} machines listed in {}, {} jobs in {})",
        ms(pass).trim(),
        machines.len(),
        ms(list_machines).trim(),
        jobs.len(),
        ms(list_jobs).trim()
    );
    fleet.shutdown().await;
    assert_eq!(asked.len(), total, "{name}: every job got a machine");
    // Provisions happen in job order, one per job: the k-th call is the k-th job's machine.
    let decision: Vec<Duration> = sent
        .iter()
        .zip(asked.iter())
        .map(|(sent, asked)| asked.saturating_duration_since(*sent))
        .collect();
    // The same latencies by how many jobs were already queued (booting machines grow alike).
    let mut first: Vec<Duration> = decision.iter().take(200).copied().collect();
    let mut last: Vec<Duration> = decision.iter().rev().take(200).copied().collect();
    first.sort();
    last.sort();
    let mut decision = decision;
    decision.sort();
    receive.sort();
    Row {
        name,
        deliveries: total,
        receive,
        decision,
        first,
        last,
        profile,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rows = runtime.block_on(async {
        vec![
            run(
                "webhook wakes the autoscaler (Nimbus)",
                200,
                10,
                true,
                Duration::from_secs(10),
            )
            .await,
            run(
                "timer only, every 1 s (a periodic scaler)",
                200,
                3,
                false,
                Duration::from_secs(1),
            )
            .await,
        ]
    });
    println!("webhook received → provision decision, in process, 200 deliveries/s, SQLite\n");
    println!(
        "| {:<42} | {:>5} | {:>12} | {:>12} | {:>12} | {:>12} | {:>12} |",
        "path", "n", "receive p50", "receive p99", "decide p50", "decide p99", "decide max"
    );
    println!(
        "|{:-<44}|{:-<7}|{:-<14}|{:-<14}|{:-<14}|{:-<14}|{:-<14}|",
        "", "", "", "", "", "", ""
    );
    for row in &rows {
        println!(
            "| {:<42} | {:>5} | {} | {} | {} | {} | {} |",
            row.name,
            row.deliveries,
            ms(pct(&row.receive, 0.5)),
            ms(pct(&row.receive, 0.99)),
            ms(pct(&row.decision, 0.5)),
            ms(pct(&row.decision, 0.99)),
            ms(*row.decision.last().unwrap()),
        );
    }
    println!("\nby backlog (jobs already queued and machines already booting when it arrived):");
    for row in &rows {
        println!(
            "  {:<42} first 200: p50 {} p99 {} · last 200: p50 {} p99 {}",
            row.name,
            ms(pct(&row.first, 0.5)),
            ms(pct(&row.first, 0.99)),
            ms(pct(&row.last, 0.5)),
            ms(pct(&row.last, 0.99)),
        );
    }
    for row in &rows {
        println!("  {}", row.profile);
    }
    let nimbus = pct(&rows[0].decision, 0.99);
    let timer = pct(&rows[1].decision, 0.5);
    println!(
        "\ntarget: decide p99 <= 10 ms; measured {:.3} ms. The timer-only p50 is {:.0}x Nimbus's \
         p99 in this run; the peers' published figures are >= 30 s (philips-labs) and 50-75 s \
         (Buildkite's scaler).",
        nimbus.as_secs_f64() * 1000.0,
        timer.as_secs_f64() / nimbus.as_secs_f64().max(1e-9),
    );
}
