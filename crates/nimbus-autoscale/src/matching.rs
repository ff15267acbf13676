//! Which pool a job goes to: the most specific pool whose labels include all of the job's, that
//! is the one with the fewest labels beyond the job's; ties go to the pool whose name sorts
//! first, so the choice never depends on listing order.

use std::collections::HashMap;

use nimbus_types::demand::{JobRecord, JobStatus, LabelSet};
use nimbus_types::{Pool, PoolId};

use crate::{Demand, QueuedJob};

/// The pool for a job asking for `labels`, among one tenant's `pools`.
pub fn best_pool<'a>(pools: &'a [Pool], labels: &LabelSet) -> Option<&'a Pool> {
    pools
        .iter()
        .filter(|pool| serves(pool, labels))
        .min_by(|a, b| {
            a.settings
                .labels
                .len()
                .cmp(&b.settings.labels.len())
                .then_with(|| a.name.cmp(&b.name))
                .then_with(|| a.id.cmp(&b.id))
        })
}

/// Whether the pool's labels include every label the job asks for (case-insensitively; pool
/// labels are stored lowercase, job label sets are lowercase).
fn serves(pool: &Pool, labels: &LabelSet) -> bool {
    labels.labels().iter().all(|label| {
        pool.settings
            .labels
            .iter()
            .any(|own| own.eq_ignore_ascii_case(label))
    })
}

/// [`best_pool`] with a cache per label set: CI jobs share a handful of label sets, so matching
/// thousands of jobs costs a handful of pool scans.
pub struct Matcher<'a> {
    pools: &'a [Pool],
    cache: HashMap<LabelSet, Option<usize>>,
}

impl<'a> Matcher<'a> {
    pub fn new(pools: &'a [Pool]) -> Self {
        Matcher {
            pools,
            cache: HashMap::new(),
        }
    }

    pub fn pool_for(&mut self, labels: &LabelSet) -> Option<&'a Pool> {
        let pools = self.pools;
        let idx = *self.cache.entry(labels.clone()).or_insert_with(|| {
            best_pool(pools, labels).and_then(|best| pools.iter().position(|p| p.id == best.id))
        });
        idx.map(|idx| &pools[idx])
    }
}

/// The queued jobs of one tenant, grouped by the pool each goes to. Jobs no pool serves are
/// left out; `waiting` jobs (held for an approval or a concurrency group) are not demand for a
/// runner yet.
pub fn assign<'r>(
    pools: &[Pool],
    jobs: impl IntoIterator<Item = &'r JobRecord>,
) -> HashMap<PoolId, Demand> {
    let mut matcher = Matcher::new(pools);
    let mut demand: HashMap<PoolId, Demand> = HashMap::new();
    for record in jobs {
        if record.job.status != JobStatus::Queued {
            continue;
        }
        if let Some(pool) = matcher.pool_for(&record.job.labels) {
            demand.entry(pool.id).or_default().queued.push(QueuedJob {
                job_id: record.job.job_id,
                queued_at: record.first_seen,
            });
        }
    }
    demand
}
