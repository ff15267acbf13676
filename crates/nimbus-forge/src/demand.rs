//! The demand book: which jobs wait for runners, per tenant and label set.
//!
//! Webhook deliveries ([`JobEvent`]) move jobs through `queued/waiting → in_progress →
//! completed`; a job never moves backwards, so a late or reordered delivery cannot resurrect a
//! finished job. Because a forge never redelivers a webhook it failed to send, a periodic
//! reconcile ([`reconcile_demand`]) compares the book with the forge's own list of open jobs and
//! corrects it, without undoing anything a webhook told it after the listing started.
//!
//! A forge redelivers a webhook under the id it first sent it with, so a book records each
//! delivery together with its id ([`DemandBook::apply`]) and answers [`Applied::Replay`] for an
//! id it has seen, in the same step: a delivery is counted once, and a failed recording leaves
//! its id free for the redelivery.
//!
//! The rules are pure functions ([`advance`], [`plan_reconcile`], [`summarize`]) so a stored book
//! (the daemon's SQL store) can apply exactly the same logic as [`MemoryDemandBook`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nimbus_types::TenantId;
pub use nimbus_types::demand::{Applied, ForgeJob, JobRecord, JobStatus, LabelSet, Source};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Forge, Result};

/// How often the daemon should run [`reconcile_demand`] per tenant. Each run costs about
/// `2 + open runs` API requests per repository, so keep it well above a minute for large orgs.
pub const DEFAULT_RECONCILE_PERIOD: Duration = Duration::from_secs(120);

/// How long finished jobs are remembered so late deliveries about them are recognised as stale.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(3600);

/// How long delivery ids are remembered: GitHub lets a person redeliver a webhook (under its
/// original id) for a while after it was sent.
pub const DEFAULT_DELIVERY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Most delivery ids [`MemoryDemandBook`] remembers per tenant (oldest forgotten first).
const DELIVERY_CAPACITY: usize = 100_000;

/// One webhook delivery's news about a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEvent {
    pub job: ForgeJob,
    pub runner_name: Option<String>,
    /// When Nimbus received the delivery.
    pub received_at: OffsetDateTime,
}

/// The new record for a job after `event`, or `None` when the event is stale.
pub fn advance(current: Option<&JobRecord>, event: &JobEvent) -> Option<JobRecord> {
    match current {
        Some(record) if event.job.status.rank() < record.job.status.rank() => None,
        Some(record) => Some(JobRecord {
            job: event.job.clone(),
            runner_name: event
                .runner_name
                .clone()
                .or_else(|| record.runner_name.clone()),
            first_seen: record.first_seen,
            updated_at: event.received_at,
            source: Source::Webhook,
        }),
        None => Some(JobRecord {
            job: event.job.clone(),
            runner_name: event.runner_name.clone(),
            first_seen: event.received_at,
            updated_at: event.received_at,
            source: Source::Webhook,
        }),
    }
}

/// The forge's list of open jobs, read after `started_at`.
#[derive(Clone, Debug)]
pub struct DemandSnapshot {
    pub started_at: OffsetDateTime,
    pub jobs: Vec<ForgeJob>,
}

/// A correction the reconcile makes to the book.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The forge lists a job the book did not know (a missed `queued` delivery).
    Add(JobRecord),
    /// The forge lists the job further along than the book has it.
    Advance(JobRecord),
    /// The book has the job open but the forge no longer lists it (a missed `completed`).
    Close(JobRecord),
}

/// Counts of the corrections one reconcile made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub added: usize,
    pub advanced: usize,
    pub closed: usize,
}

/// The corrections that make `records` (one tenant's book) agree with `snapshot`. A record
/// updated after the snapshot started is newer than the snapshot and left alone.
pub fn plan_reconcile(
    records: &[JobRecord],
    snapshot: &DemandSnapshot,
    now: OffsetDateTime,
) -> Vec<Change> {
    let by_id: HashMap<u64, &JobRecord> = records.iter().map(|r| (r.job.job_id, r)).collect();
    let listed: HashMap<u64, &ForgeJob> = snapshot.jobs.iter().map(|j| (j.job_id, j)).collect();
    let mut changes = Vec::new();
    for job in listed.values() {
        match by_id.get(&job.job_id) {
            None => changes.push(Change::Add(JobRecord {
                job: (*job).clone(),
                runner_name: None,
                first_seen: now,
                updated_at: now,
                source: Source::Reconcile,
            })),
            Some(record) if record.updated_at > snapshot.started_at => {}
            Some(record)
                if job.status.rank() > record.job.status.rank()
                    || (job.status.rank() == record.job.status.rank()
                        && job.status != record.job.status) =>
            {
                changes.push(Change::Advance(JobRecord {
                    job: (*job).clone(),
                    updated_at: now,
                    source: Source::Reconcile,
                    ..(*record).clone()
                }))
            }
            Some(_) => {}
        }
    }
    for record in records {
        let open = record.job.status != JobStatus::Completed;
        if open
            && !listed.contains_key(&record.job.job_id)
            && record.updated_at <= snapshot.started_at
        {
            let mut closed = record.clone();
            closed.job.status = JobStatus::Completed;
            closed.updated_at = now;
            closed.source = Source::Reconcile;
            changes.push(Change::Close(closed));
        }
    }
    changes.sort_by_key(|change| match change {
        Change::Add(r) | Change::Advance(r) | Change::Close(r) => r.job.job_id,
    });
    changes
}

/// Demand for one label set: what the API's `GET /v1/demand` and `nimbusctl demand list` show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelDemand {
    pub labels: LabelSet,
    pub queued: u64,
    pub waiting: u64,
    pub in_progress: u64,
    /// When the longest-waiting queued job was first seen.
    #[serde(with = "time::serde::rfc3339::option")]
    pub oldest_queued_at: Option<OffsetDateTime>,
}

/// Open jobs grouped by label set, sorted by label set.
pub fn summarize<'a>(records: impl IntoIterator<Item = &'a JobRecord>) -> Vec<LabelDemand> {
    let mut groups: BTreeMap<LabelSet, LabelDemand> = BTreeMap::new();
    for record in records {
        if record.job.status == JobStatus::Completed {
            continue;
        }
        let entry = groups
            .entry(record.job.labels.clone())
            .or_insert_with(|| LabelDemand {
                labels: record.job.labels.clone(),
                queued: 0,
                waiting: 0,
                in_progress: 0,
                oldest_queued_at: None,
            });
        match record.job.status {
            JobStatus::Queued => {
                entry.queued += 1;
                entry.oldest_queued_at = Some(
                    entry
                        .oldest_queued_at
                        .map_or(record.first_seen, |t| t.min(record.first_seen)),
                );
            }
            JobStatus::Waiting => entry.waiting += 1,
            JobStatus::InProgress => entry.in_progress += 1,
            JobStatus::Completed => {}
        }
    }
    groups.into_values().collect()
}

/// Where demand is kept. The daemon may implement it over its store with [`advance`],
/// [`plan_reconcile`] and [`summarize`]; [`MemoryDemandBook`] keeps it in memory.
#[async_trait]
pub trait DemandBook: Send + Sync {
    /// Records one delivery's news about a job, atomically with the delivery's id: an id the
    /// tenant's book has seen before is [`Applied::Replay`] and changes nothing; a job the book
    /// knows further along is [`Applied::Stale`] (see [`advance`]). `delivery_id` `None` records
    /// without de-duplication. On an error nothing is recorded, the id included, so the forge's
    /// redelivery is processed.
    async fn apply(
        &self,
        tenant_id: TenantId,
        delivery_id: Option<&str>,
        event: &JobEvent,
    ) -> Result<Applied>;
    async fn reconcile(
        &self,
        tenant_id: TenantId,
        snapshot: &DemandSnapshot,
    ) -> Result<ReconcileReport>;
    async fn summary(&self, tenant_id: TenantId) -> Result<Vec<LabelDemand>>;
    /// Every record of the tenant, open and recently finished, ordered by job id.
    async fn jobs(&self, tenant_id: TenantId) -> Result<Vec<JobRecord>>;
}

/// Delivery ids seen, for `ttl`, at most `capacity` of them (oldest forgotten first).
struct Deliveries {
    capacity: usize,
    ttl: Duration,
    seen: HashSet<String>,
    order: VecDeque<(String, Instant)>,
}

impl Deliveries {
    fn new(capacity: usize, ttl: Duration) -> Self {
        Deliveries {
            capacity: capacity.max(1),
            ttl,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    fn contains(&mut self, id: &str, now: Instant) -> bool {
        self.expire(now);
        self.seen.contains(id)
    }

    /// Remembers an id that [`contains`](Self::contains) just said is new.
    fn insert(&mut self, id: &str, now: Instant) {
        while self.order.len() >= self.capacity {
            self.pop_oldest();
        }
        self.seen.insert(id.to_owned());
        self.order.push_back((id.to_owned(), now));
    }

    fn expire(&mut self, now: Instant) {
        while let Some((_, at)) = self.order.front() {
            if now.duration_since(*at) < self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((id, _)) = self.order.pop_front() {
            self.seen.remove(&id);
        }
    }
}

/// One tenant's part of a [`MemoryDemandBook`].
struct TenantBook {
    jobs: HashMap<u64, JobRecord>,
    deliveries: Deliveries,
}

impl TenantBook {
    fn new() -> Self {
        TenantBook {
            jobs: HashMap::new(),
            deliveries: Deliveries::new(DELIVERY_CAPACITY, DEFAULT_DELIVERY_TTL),
        }
    }
}

/// The demand book in memory: enough for one daemon and for tests; lost on restart (the queued
/// jobs are rebuilt by the first reconcile, but remembered delivery ids are not, so a
/// redelivery after a restart counts again).
pub struct MemoryDemandBook {
    tombstone_ttl: Duration,
    tenants: Mutex<HashMap<TenantId, TenantBook>>,
}

impl Default for MemoryDemandBook {
    fn default() -> Self {
        Self::new(DEFAULT_TOMBSTONE_TTL)
    }
}

impl MemoryDemandBook {
    pub fn new(tombstone_ttl: Duration) -> Self {
        MemoryDemandBook {
            tombstone_ttl,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, TenantBook>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn prune(&self, jobs: &mut HashMap<u64, JobRecord>, now: OffsetDateTime) {
        let ttl = self.tombstone_ttl;
        jobs.retain(|_, record| {
            record.job.status != JobStatus::Completed || now - record.updated_at < ttl
        });
    }
}

#[async_trait]
impl DemandBook for MemoryDemandBook {
    async fn apply(
        &self,
        tenant_id: TenantId,
        delivery_id: Option<&str>,
        event: &JobEvent,
    ) -> Result<Applied> {
        let now = Instant::now();
        let mut tenants = self.lock();
        let book = tenants.entry(tenant_id).or_insert_with(TenantBook::new);
        if let Some(id) = delivery_id {
            if book.deliveries.contains(id, now) {
                return Ok(Applied::Replay);
            }
            // A stale delivery was processed too: its redelivery is a replay.
            book.deliveries.insert(id, now);
        }
        match advance(book.jobs.get(&event.job.job_id), event) {
            Some(record) => {
                let finished = record.job.status == JobStatus::Completed;
                book.jobs.insert(record.job.job_id, record);
                if finished {
                    self.prune(&mut book.jobs, event.received_at);
                }
                Ok(Applied::Recorded)
            }
            None => Ok(Applied::Stale),
        }
    }

    async fn reconcile(
        &self,
        tenant_id: TenantId,
        snapshot: &DemandSnapshot,
    ) -> Result<ReconcileReport> {
        let now = nimbus_types::now();
        let mut tenants = self.lock();
        let jobs = &mut tenants
            .entry(tenant_id)
            .or_insert_with(TenantBook::new)
            .jobs;
        let records: Vec<JobRecord> = jobs.values().cloned().collect();
        let mut report = ReconcileReport::default();
        for change in plan_reconcile(&records, snapshot, now) {
            let record = match change {
                Change::Add(record) => {
                    report.added += 1;
                    record
                }
                Change::Advance(record) => {
                    report.advanced += 1;
                    record
                }
                Change::Close(record) => {
                    report.closed += 1;
                    record
                }
            };
            jobs.insert(record.job.job_id, record);
        }
        self.prune(jobs, now);
        Ok(report)
    }

    async fn summary(&self, tenant_id: TenantId) -> Result<Vec<LabelDemand>> {
        let tenants = self.lock();
        Ok(tenants
            .get(&tenant_id)
            .map(|book| summarize(book.jobs.values()))
            .unwrap_or_default())
    }

    async fn jobs(&self, tenant_id: TenantId) -> Result<Vec<JobRecord>> {
        let tenants = self.lock();
        let mut records: Vec<JobRecord> = tenants
            .get(&tenant_id)
            .map(|book| book.jobs.values().cloned().collect())
            .unwrap_or_default();
        records.sort_by_key(|r| r.job.job_id);
        Ok(records)
    }
}

/// The reconcile's error policy: when to run again after `error`.
pub fn requeue_after(error: &crate::Error) -> Duration {
    match error {
        crate::Error::RateLimited { reset } => {
            let wait = *reset - nimbus_types::now();
            wait.try_into()
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_secs(1))
        }
        crate::Error::Retryable(_) => Duration::from_secs(30),
        // Bad credentials or configuration: someone has to act; do not hammer the forge.
        _ => DEFAULT_RECONCILE_PERIOD * 5,
    }
}

/// One demand reconcile for a tenant: lists the forge's open jobs and corrects the book. Not told
/// why it runs; idempotent. On a forge error the book is left untouched (a partial listing would
/// close jobs that are still open), and the caller requeues after `error.is_retryable()`.
#[tracing::instrument(skip_all, fields(tenant.id = %tenant_id))]
pub async fn reconcile_demand(
    forge: &dyn Forge,
    book: &dyn DemandBook,
    tenant_id: TenantId,
) -> Result<ReconcileReport> {
    let started_at = nimbus_types::now();
    let jobs = forge.demand().await?;
    let snapshot = DemandSnapshot { started_at, jobs };
    let report = book.reconcile(tenant_id, &snapshot).await?;
    if report != ReconcileReport::default() {
        tracing::info!(
            added = report.added,
            advanced = report.advanced,
            closed = report.closed,
            "demand corrected from the forge's job list"
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, status: JobStatus, labels: &[&str]) -> ForgeJob {
        ForgeJob {
            job_id: id,
            run_id: 100 + id,
            repository: "acme/app".into(),
            labels: LabelSet::new(labels),
            status,
        }
    }

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_800_000_000 + seconds)
    }

    fn event(id: u64, status: JobStatus, seconds: i64) -> JobEvent {
        JobEvent {
            job: job(id, status, &["self-hosted", "linux"]),
            runner_name: None,
            received_at: at(seconds),
        }
    }

    #[test]
    fn requeue_follows_the_error() {
        let reset = nimbus_types::now() + time::Duration::seconds(90);
        let wait = requeue_after(&crate::Error::RateLimited { reset });
        assert!(
            wait > Duration::from_secs(85) && wait <= Duration::from_secs(90),
            "{wait:?}"
        );
        assert_eq!(
            requeue_after(&crate::Error::Retryable("x".into())),
            Duration::from_secs(30)
        );
        assert_eq!(
            requeue_after(&crate::Error::Unauthorized("x".into())),
            DEFAULT_RECONCILE_PERIOD * 5
        );
    }

    #[test]
    fn label_sets_normalise() {
        let labels = LabelSet::new(["Linux", "self-hosted", "linux", " ", "X64"]);
        assert_eq!(labels.labels(), ["linux", "self-hosted", "x64"]);
        assert_eq!(labels.to_string(), "linux,self-hosted,x64");
        let json = serde_json::to_string(&labels).unwrap();
        assert_eq!(json, r#"["linux","self-hosted","x64"]"#);
        let back: LabelSet = serde_json::from_str(r#"["X64","LINUX","self-hosted"]"#).unwrap();
        assert_eq!(back, labels);
    }

    /// Applies the statuses in order and checks which were recorded and where the job ends.
    fn check(statuses: &[JobStatus], expect_applied: &[Applied], expect_final: JobStatus) {
        let mut record: Option<JobRecord> = None;
        let mut applied = Vec::new();
        for (idx, status) in statuses.iter().enumerate() {
            match advance(record.as_ref(), &event(1, *status, idx as i64)) {
                Some(next) => {
                    record = Some(next);
                    applied.push(Applied::Recorded);
                }
                None => applied.push(Applied::Stale),
            }
        }
        assert_eq!(applied, expect_applied, "statuses {statuses:?}");
        assert_eq!(
            record.unwrap().job.status,
            expect_final,
            "statuses {statuses:?}"
        );
    }

    #[test]
    fn jobs_only_move_forward() {
        use Applied::*;
        use JobStatus::*;
        check(&[Queued, InProgress, Completed], &[Recorded; 3], Completed);
        check(&[Completed, Queued], &[Recorded, Stale], Completed);
        check(
            &[InProgress, Queued, Completed],
            &[Recorded, Stale, Recorded],
            Completed,
        );
        check(&[Waiting, Queued, Waiting], &[Recorded; 3], Waiting);
        check(&[Queued, Queued], &[Recorded, Recorded], Queued);
    }

    #[test]
    fn first_seen_survives_updates() {
        let first = advance(None, &event(1, JobStatus::Queued, 0)).unwrap();
        let second = advance(Some(&first), &event(1, JobStatus::InProgress, 5)).unwrap();
        assert_eq!(second.first_seen, at(0));
        assert_eq!(second.updated_at, at(5));
    }

    #[test]
    fn reconcile_adds_missed_jobs_and_closes_vanished_ones() {
        let queued_old = advance(None, &event(1, JobStatus::Queued, 0)).unwrap();
        let queued_new = advance(None, &event(2, JobStatus::Queued, 20)).unwrap();
        let queued_listed = advance(None, &event(3, JobStatus::Queued, 0)).unwrap();
        let done = advance(None, &event(4, JobStatus::Completed, 0)).unwrap();
        let snapshot = DemandSnapshot {
            started_at: at(10),
            jobs: vec![
                job(3, JobStatus::InProgress, &["linux"]),
                job(5, JobStatus::Queued, &["macos"]),
                job(4, JobStatus::Queued, &["linux"]),
            ],
        };
        let changes = plan_reconcile(
            &[queued_old, queued_new, queued_listed, done],
            &snapshot,
            at(30),
        );
        let summary: Vec<(u64, &str, JobStatus)> = changes
            .iter()
            .map(|change| match change {
                Change::Add(r) => (r.job.job_id, "add", r.job.status),
                Change::Advance(r) => (r.job.job_id, "advance", r.job.status),
                Change::Close(r) => (r.job.job_id, "close", r.job.status),
            })
            .collect();
        // 1: open, unlisted, older than the snapshot → closed. 2: updated after the snapshot
        // started → left alone. 3: listed further along → advanced. 4: finished in the book,
        // listed as queued (stale listing) → left alone. 5: unknown → added.
        assert_eq!(
            summary,
            vec![
                (1, "close", JobStatus::Completed),
                (3, "advance", JobStatus::InProgress),
                (5, "add", JobStatus::Queued),
            ]
        );
    }

    #[tokio::test]
    async fn memory_book_summarizes_per_tenant_and_label_set() {
        let book = MemoryDemandBook::default();
        let tenant = TenantId::new();
        let other = TenantId::new();
        for (id, status, labels) in [
            (1, JobStatus::Queued, &["linux", "self-hosted"][..]),
            (2, JobStatus::Queued, &["Self-Hosted", "LINUX"][..]),
            (3, JobStatus::Waiting, &["linux", "self-hosted"][..]),
            (4, JobStatus::InProgress, &["macos"][..]),
            (5, JobStatus::Completed, &["macos"][..]),
        ] {
            let event = JobEvent {
                job: job(id, status, labels),
                runner_name: None,
                received_at: nimbus_types::now(),
            };
            assert_eq!(
                book.apply(tenant, None, &event).await.unwrap(),
                Applied::Recorded
            );
        }
        let summary = book.summary(tenant).await.unwrap();
        let rows: Vec<(String, u64, u64, u64)> = summary
            .iter()
            .map(|d| (d.labels.to_string(), d.queued, d.waiting, d.in_progress))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("linux,self-hosted".to_owned(), 2, 1, 0),
                ("macos".to_owned(), 0, 0, 1)
            ]
        );
        assert!(summary[0].oldest_queued_at.is_some());
        assert!(book.summary(other).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn memory_book_forgets_finished_jobs_after_the_ttl() {
        let book = MemoryDemandBook::new(Duration::from_secs(60));
        let tenant = TenantId::new();
        book.apply(tenant, None, &event(1, JobStatus::Completed, 0))
            .await
            .unwrap();
        assert_eq!(book.jobs(tenant).await.unwrap().len(), 1);
        // A later completion prunes tombstones older than the TTL.
        book.apply(tenant, None, &event(2, JobStatus::Completed, 120))
            .await
            .unwrap();
        let ids: Vec<u64> = book
            .jobs(tenant)
            .await
            .unwrap()
            .iter()
            .map(|r| r.job.job_id)
            .collect();
        assert_eq!(ids, vec![2]);
    }

    async fn apply(
        book: &MemoryDemandBook,
        tenant: TenantId,
        delivery_id: Option<&str>,
        event: &JobEvent,
    ) -> Applied {
        book.apply(tenant, delivery_id, event).await.unwrap()
    }

    #[tokio::test]
    async fn memory_book_counts_a_delivery_once_per_tenant() {
        let book = MemoryDemandBook::default();
        let (tenant, other) = (TenantId::new(), TenantId::new());
        let queued = event(1, JobStatus::Queued, 0);
        assert_eq!(
            apply(&book, tenant, Some("d-1"), &queued).await,
            Applied::Recorded
        );
        assert_eq!(
            apply(&book, tenant, Some("d-1"), &queued).await,
            Applied::Replay
        );
        // A used id is a replay whatever it carries (a redelivery reuses the id).
        let started = event(1, JobStatus::InProgress, 1);
        assert_eq!(
            apply(&book, tenant, Some("d-1"), &started).await,
            Applied::Replay
        );
        assert_eq!(
            book.jobs(tenant).await.unwrap()[0].job.status,
            JobStatus::Queued
        );
        // Ids are the tenant's own; without an id nothing is de-duplicated.
        assert_eq!(
            apply(&book, other, Some("d-1"), &queued).await,
            Applied::Recorded
        );
        assert_eq!(apply(&book, tenant, None, &queued).await, Applied::Recorded);
        assert_eq!(apply(&book, tenant, None, &queued).await, Applied::Recorded);
        // A stale delivery was processed: its redelivery is a replay, not stale again.
        assert_eq!(
            apply(&book, tenant, Some("d-2"), &started).await,
            Applied::Recorded
        );
        assert_eq!(
            apply(&book, tenant, Some("d-3"), &queued).await,
            Applied::Stale
        );
        assert_eq!(
            apply(&book, tenant, Some("d-3"), &queued).await,
            Applied::Replay
        );
        assert_eq!(book.summary(tenant).await.unwrap()[0].in_progress, 1);
    }

    #[test]
    fn delivery_ids_are_forgotten_oldest_first_and_after_the_ttl() {
        let start = Instant::now();
        let mut deliveries = Deliveries::new(3, Duration::from_secs(3600));
        for id in ["a", "b", "c"] {
            assert!(!deliveries.contains(id, start));
            deliveries.insert(id, start);
        }
        assert!(deliveries.contains("a", start));
        // Capacity 3: a fourth id forgets the oldest.
        deliveries.insert("d", start);
        assert!(!deliveries.contains("a", start));
        assert!(deliveries.contains("b", start) && deliveries.contains("d", start));
        assert_eq!(deliveries.seen.len(), 3);

        let mut short = Deliveries::new(10, Duration::from_secs(60));
        short.insert("x", start);
        assert!(short.contains("x", start + Duration::from_secs(59)));
        assert!(
            !short.contains("x", start + Duration::from_secs(60)),
            "an expired id is new again"
        );
        assert!(short.order.is_empty());
    }
}
