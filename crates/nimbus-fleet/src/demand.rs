//! The demand book kept in the store, so a restarted daemon neither forgets queued jobs nor
//! counts a redelivered webhook twice.
//!
//! It applies the book's rules from `nimbus_forge::demand`: a delivery is recorded together with
//! its id in one transaction (`Storage::record_job`, which also refuses to move a job backwards),
//! and a reconcile's corrections are compare-and-swap on the job's `updated_at`
//! (`Storage::correct_job`), so a webhook that lands while the forge is being listed wins.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nimbus_forge::demand::{
    Applied, Change, DEFAULT_DELIVERY_TTL, DEFAULT_TOMBSTONE_TTL, DemandBook, DemandSnapshot,
    JobEvent, JobRecord, JobStatus, LabelDemand, ReconcileReport, Source, plan_reconcile,
    summarize,
};
use nimbus_store::Storage;
use nimbus_types::TenantId;

/// How often finished jobs and old delivery ids are pruned, at most.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The demand book over [`Storage`].
pub struct StoredDemandBook {
    store: Arc<dyn Storage>,
    tombstone_ttl: Duration,
    delivery_ttl: Duration,
    last_prune: Mutex<Option<Instant>>,
}

impl StoredDemandBook {
    pub fn new(store: Arc<dyn Storage>) -> Self {
        Self::with_ttls(store, DEFAULT_TOMBSTONE_TTL, DEFAULT_DELIVERY_TTL)
    }

    /// `tombstone_ttl`: how long finished jobs are kept (so late deliveries are known stale);
    /// `delivery_ttl`: how long delivery ids are remembered.
    pub fn with_ttls(
        store: Arc<dyn Storage>,
        tombstone_ttl: Duration,
        delivery_ttl: Duration,
    ) -> Self {
        StoredDemandBook {
            store,
            tombstone_ttl,
            delivery_ttl,
            last_prune: Mutex::new(None),
        }
    }

    /// Prunes at most once per [`PRUNE_EVERY`]; a failure is logged and retried next time.
    async fn maybe_prune(&self) {
        {
            let mut last = self.last_prune.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let now = nimbus_types::now();
        let finished_before = now - self.tombstone_ttl;
        let deliveries_before = now - self.delivery_ttl;
        if let Err(err) = self
            .store
            .prune_demand(finished_before, deliveries_before)
            .await
        {
            tracing::warn!(error = %err, "cannot prune the demand book");
        }
    }
}

fn store_error(err: nimbus_store::Error) -> nimbus_forge::Error {
    match err {
        nimbus_store::Error::NotFound { entity } => {
            nimbus_forge::Error::NotFound(format!("{entity} in the store"))
        }
        other => nimbus_forge::Error::Retryable(format!("demand book: {other}")),
    }
}

#[async_trait]
impl DemandBook for StoredDemandBook {
    async fn apply(
        &self,
        tenant_id: TenantId,
        delivery_id: Option<&str>,
        event: &JobEvent,
    ) -> nimbus_forge::Result<Applied> {
        // The store keeps `first_seen` and a known runner name on update (see `advance`).
        let record = JobRecord {
            job: event.job.clone(),
            runner_name: event.runner_name.clone(),
            first_seen: event.received_at,
            updated_at: event.received_at,
            source: Source::Webhook,
        };
        let applied = self
            .store
            .record_job(tenant_id, delivery_id, &record)
            .await
            .map_err(store_error)?;
        if applied == Applied::Recorded && event.job.status == JobStatus::Completed {
            self.maybe_prune().await;
        }
        Ok(applied)
    }

    async fn reconcile(
        &self,
        tenant_id: TenantId,
        snapshot: &DemandSnapshot,
    ) -> nimbus_forge::Result<ReconcileReport> {
        let records = self.store.list_jobs(tenant_id).await.map_err(store_error)?;
        let read_at: std::collections::HashMap<u64, time::OffsetDateTime> = records
            .iter()
            .map(|record| (record.job.job_id, record.updated_at))
            .collect();
        let mut report = ReconcileReport::default();
        for change in plan_reconcile(&records, snapshot, nimbus_types::now()) {
            let (record, expected, count) = match &change {
                Change::Add(record) => (record, None, &mut report.added),
                Change::Advance(record) => (
                    record,
                    read_at.get(&record.job.job_id).copied(),
                    &mut report.advanced,
                ),
                Change::Close(record) => (
                    record,
                    read_at.get(&record.job.job_id).copied(),
                    &mut report.closed,
                ),
            };
            // A webhook that changed the job since it was read wins: the correction is dropped.
            if self
                .store
                .correct_job(tenant_id, record, expected)
                .await
                .map_err(store_error)?
            {
                *count += 1;
            }
        }
        self.maybe_prune().await;
        Ok(report)
    }

    async fn summary(&self, tenant_id: TenantId) -> nimbus_forge::Result<Vec<LabelDemand>> {
        let records = self.store.list_jobs(tenant_id).await.map_err(store_error)?;
        Ok(summarize(&records))
    }

    async fn jobs(&self, tenant_id: TenantId) -> nimbus_forge::Result<Vec<JobRecord>> {
        self.store.list_jobs(tenant_id).await.map_err(store_error)
    }
}
