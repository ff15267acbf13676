//! The anchors Nimbus is judged against, as `reference_sim.py` models them, and the grid of
//! parameters the fleet README quotes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::engine::Policy;
use crate::metrics::percentile;
use crate::model::{Kind, Pools};
use crate::trace::Job;

/// A policy and the name it is reported under.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    pub name: String,
    pub policy: Policy,
}

/// Zero-wait concurrency per pool: how many jobs run at once if every job starts on
/// submission, seen by each arriving job (itself included).
#[derive(Clone, Debug, PartialEq)]
pub struct Concurrency {
    pub p95: Vec<u32>,
    pub max: Vec<u32>,
}

/// A job's end, ordered totally.
#[derive(Clone, Copy)]
struct Time(f64);

impl PartialEq for Time {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Time {}

impl PartialOrd for Time {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Time {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// `concurrency()` of `reference_sim.py`, per pool.
pub fn concurrency(jobs: &[Job], pools: &Pools) -> Concurrency {
    let n_pools = pools.pools().len();
    let mut by_pool: Vec<Vec<&Job>> = vec![Vec::new(); n_pools];
    for job in jobs {
        if let Some(pool) = pools.route(&job.labels) {
            by_pool[pool].push(job);
        }
    }
    let mut out = Concurrency {
        p95: Vec::with_capacity(n_pools),
        max: Vec::with_capacity(n_pools),
    };
    for mut jobs in by_pool {
        jobs.sort_by(|a, b| a.submitted_at.total_cmp(&b.submitted_at));
        let mut ends: BinaryHeap<Reverse<Time>> = BinaryHeap::new();
        let mut seen = Vec::with_capacity(jobs.len());
        for job in jobs {
            while ends
                .peek()
                .is_some_and(|Reverse(end)| end.0 <= job.submitted_at)
            {
                ends.pop();
            }
            ends.push(Reverse(Time(job.submitted_at + job.duration)));
            seen.push(ends.len() as f64);
        }
        seen.sort_by(f64::total_cmp);
        out.p95.push(percentile(&seen, 95.0) as u32);
        out.max.push(percentile(&seen, 100.0) as u32);
    }
    out
}

/// Labels the pools by kind (`linux`, `mac`) when each kind has one pool, as the reference
/// does; by name otherwise.
fn labels(pools: &Pools) -> Vec<String> {
    let unique = |kind: Kind| pools.pools().iter().filter(|p| p.kind == kind).count() == 1;
    pools
        .pools()
        .iter()
        .map(|pool| {
            if unique(pool.kind) {
                pool.kind.as_str().to_owned()
            } else {
                pool.name.clone()
            }
        })
        .collect()
}

fn delay_suffix(delay_s: f64) -> String {
    if delay_s > 0.0 {
        format!(" delay={delay_s}s")
    } else {
        String::new()
    }
}

/// Always-on, reused runners: `size[pool]` each.
pub fn fixed(pools: &Pools, size: Vec<u32>) -> Peer {
    let name = labels(pools)
        .iter()
        .zip(&size)
        .map(|(label, n)| format!(" {label}={n}"))
        .collect::<String>();
    Peer {
        name: format!("static{name}"),
        policy: Policy::Static { size },
    }
}

/// One ephemeral runner per job the scaler has seen.
pub fn reactive(pools: &Pools, delay_s: f64) -> Peer {
    Peer {
        name: format!("reactive{}", delay_suffix(delay_s)),
        policy: Policy::MinIdle {
            warm: vec![0; pools.pools().len()],
            delay_s,
        },
    }
}

/// `k` idle runners kept warm in Linux pools and `j` in macOS pools, on top of demand.
pub fn min_idle(pools: &Pools, k: u32, j: u32, delay_s: f64) -> Peer {
    let warm = pools
        .pools()
        .iter()
        .map(|pool| match pool.kind {
            Kind::Linux => k,
            Kind::Mac => j,
        })
        .collect();
    Peer {
        name: format!("minidle k={k} j={j}{}", delay_suffix(delay_s)),
        policy: Policy::MinIdle { warm, delay_s },
    }
}

/// The rows of the fleet README's tables: static at the p95 and the max of zero-wait
/// concurrency, reactive without and with a 30 s webhook delay, min-idle 2/1, 5/2 and 10/5.
pub fn grid(jobs: &[Job], pools: &Pools) -> Vec<Peer> {
    let concurrency = concurrency(jobs, pools);
    let mut peers = vec![
        fixed(pools, concurrency.p95),
        fixed(pools, concurrency.max),
        reactive(pools, 0.0),
        reactive(pools, 30.0),
    ];
    for (k, j) in [(2, 1), (5, 2), (10, 5)] {
        peers.push(min_idle(pools, k, j, 0.0));
    }
    peers
}
