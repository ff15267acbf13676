//! The one event bus. Every event goes to four sinks: a `tracing` log line, Prometheus metrics,
//! the stored event log, and a live broadcast (the `GET /v1/events` stream).
//!
//! `emit` never blocks and never fails: persisting happens on a background writer task, which
//! then broadcasts the event with the sequence number the store gave it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nimbus_store::Storage;
use nimbus_types::api::PoolStatus;
use nimbus_types::event::Event;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{broadcast, mpsc};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
    /// The pool's name; empty for machines provisioned by hand.
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    tenant: String,
    pool: String,
}

/// `nimbus_pool_*` gauges, one family per figure of [`PoolStatus`].
#[derive(Clone, Default)]
struct PoolGauges {
    desired: Family<PoolLabels, Gauge>,
    idle: Family<PoolLabels, Gauge>,
    busy: Family<PoolLabels, Gauge>,
    booting: Family<PoolLabels, Gauge>,
    stopping: Family<PoolLabels, Gauge>,
    failed: Family<PoolLabels, Gauge>,
    queued_jobs: Family<PoolLabels, Gauge>,
    oldest_queued_seconds: Family<PoolLabels, Gauge>,
    min_idle: Family<PoolLabels, Gauge>,
    backoff: Family<PoolLabels, Gauge>,
    budget_exhausted: Family<PoolLabels, Gauge>,
}

#[derive(Clone)]
struct Metrics {
    events: Family<EventLabels, Counter>,
    durations: Family<EventLabels, Histogram>,
    stages: Family<StageLabels, Histogram>,
    pools: PoolGauges,
}

fn duration_histogram() -> Histogram {
    // 1 ms … ~9 h: API calls and whole provisions share one bucket layout.
    Histogram::new(exponential_buckets(0.001, 2.5, 18))
}

impl Metrics {
    fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            events: Family::default(),
            durations: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            stages: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            pools: PoolGauges::default(),
        };
        let pools = &metrics.pools;
        for (name, help, family) in [
            (
                "nimbus_pool_desired",
                "Machines the pool should have",
                &pools.desired,
            ),
            (
                "nimbus_pool_idle",
                "Ready runners without a job",
                &pools.idle,
            ),
            ("nimbus_pool_busy", "Runners running a job", &pools.busy),
            (
                "nimbus_pool_booting",
                "Machines being created or set up",
                &pools.booting,
            ),
            (
                "nimbus_pool_stopping",
                "Machines being removed",
                &pools.stopping,
            ),
            (
                "nimbus_pool_failed",
                "Machines that failed recently",
                &pools.failed,
            ),
            (
                "nimbus_pool_queued_jobs",
                "Jobs waiting for a runner of the pool",
                &pools.queued_jobs,
            ),
            (
                "nimbus_pool_oldest_queued_seconds",
                "How long the longest-waiting queued job has waited",
                &pools.oldest_queued_seconds,
            ),
            (
                "nimbus_pool_min_idle",
                "The warm target in force",
                &pools.min_idle,
            ),
            (
                "nimbus_pool_backoff",
                "1 while scale-up backs off after failures",
                &pools.backoff,
            ),
            (
                "nimbus_pool_budget_exhausted",
                "1 while the monthly budget holds scale-up back",
                &pools.budget_exhausted,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "nimbus_events",
            "Telemetry events emitted, by event name",
            metrics.events.clone(),
        );
        registry.register(
            "nimbus_operation_duration_seconds",
            "Duration of operations, by the event that ended them",
            metrics.durations.clone(),
        );
        registry.register(
            "nimbus_machine_stage_seconds",
            "Time-to-ready per stage (provider_accepted, setup, total) and pool",
            metrics.stages.clone(),
        );
        metrics
    }

    fn record(&self, event: &Event) {
        let labels = EventLabels {
            event: event.name.clone(),
        };
        self.events.get_or_create(&labels).inc();
        if let Some(duration) = event.duration {
            self.durations.get_or_create(&labels).observe(duration);
        }
        if event.name == nimbus_types::event::MACHINE_READY {
            for stage in ["provider_accepted", "setup", "total"] {
                if let Some(seconds) = event.metadata.get(stage).and_then(|v| v.as_f64()) {
                    let pool = event.metadata.get("pool").and_then(|v| v.as_str());
                    self.stages
                        .get_or_create(&StageLabels {
                            stage: stage.to_owned(),
                            pool: pool.unwrap_or_default().to_owned(),
                        })
                        .observe(seconds);
                }
            }
        }
    }
}

pub use nimbus_types::event::EventSink;

/// The event bus. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    metrics: Metrics,
    to_writer: mpsc::UnboundedSender<Event>,
    live: broadcast::Sender<Event>,
    dropped: AtomicU64,
}

impl Telemetry {
    /// Starts the writer task that persists events to `store` and broadcasts them. The task ends
    /// when every `Telemetry` clone is dropped, after writing what was queued.
    pub fn start(store: Arc<dyn Storage>, registry: &mut Registry) -> Telemetry {
        let (to_writer, mut from_emitters) = mpsc::unbounded_channel::<Event>();
        let (live, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            metrics: Metrics::register(registry),
            to_writer,
            live: live.clone(),
            dropped: AtomicU64::new(0),
        });
        tokio::spawn(async move {
            while let Some(mut event) = from_emitters.recv().await {
                match store.append_event(&event).await {
                    Ok(seq) => event.seq = seq,
                    Err(err) => {
                        tracing::warn!(event.name = %event.name, error = %err, "could not store event")
                    }
                }
                // No subscribers is fine.
                let _ = live.send(event);
            }
        });
        Telemetry { inner }
    }

    /// Publishes a pool's status as the `nimbus_pool_*` gauges.
    pub fn set_pool_status(&self, tenant: &str, pool: &str, status: &PoolStatus) {
        let labels = PoolLabels {
            tenant: tenant.to_owned(),
            pool: pool.to_owned(),
        };
        let gauges = &self.inner.metrics.pools;
        let set = |family: &Family<PoolLabels, Gauge>, value: u64| {
            family
                .get_or_create(&labels)
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&gauges.desired, status.desired.into());
        set(&gauges.idle, status.idle.into());
        set(&gauges.busy, status.busy.into());
        set(&gauges.booting, status.booting.into());
        set(&gauges.stopping, status.stopping.into());
        set(&gauges.failed, status.failed.into());
        set(&gauges.queued_jobs, status.queued_jobs.into());
        set(
            &gauges.oldest_queued_seconds,
            status.oldest_queued_secs.unwrap_or(0),
        );
        set(&gauges.min_idle, status.min_idle.into());
        set(&gauges.backoff, u64::from(status.backoff_until.is_some()));
        set(&gauges.budget_exhausted, u64::from(status.budget_exhausted));
    }

    /// Drops a deleted pool's gauges.
    pub fn remove_pool_status(&self, tenant: &str, pool: &str) {
        let labels = PoolLabels {
            tenant: tenant.to_owned(),
            pool: pool.to_owned(),
        };
        let gauges = &self.inner.metrics.pools;
        for family in [
            &gauges.desired,
            &gauges.idle,
            &gauges.busy,
            &gauges.booting,
            &gauges.stopping,
            &gauges.failed,
            &gauges.queued_jobs,
            &gauges.oldest_queued_seconds,
            &gauges.min_idle,
            &gauges.backoff,
            &gauges.budget_exhausted,
        ] {
            family.remove(&labels);
        }
    }

    /// A live stream of events as they are stored. Slow subscribers skip events (they are told
    /// how many through `RecvError::Lagged`) instead of holding the bus back.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.live.subscribe()
    }
}

impl EventSink for Telemetry {
    fn emit(&self, event: Event) {
        log(&event);
        self.inner.metrics.record(&event);
        if self.inner.to_writer.send(event).is_err() {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn log(event: &Event) {
    let tenant = event.tenant_id.map(|id| id.to_string());
    let machine = event.machine_id.map(|id| id.to_string());
    let meta = if event.metadata.is_empty() {
        String::new()
    } else {
        serde_json::Value::Object(event.metadata.clone()).to_string()
    };
    match &event.error {
        Some(error) => tracing::warn!(
            event.name = %event.name,
            tenant.id = tenant.as_deref(),
            machine.id = machine.as_deref(),
            duration = event.duration,
            error = %error,
            meta = %meta,
            "event"
        ),
        None => tracing::info!(
            event.name = %event.name,
            tenant.id = tenant.as_deref(),
            machine.id = machine.as_deref(),
            duration = event.duration,
            meta = %meta,
            "event"
        ),
    }
}
