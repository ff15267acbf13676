//! What a run is judged on, computed exactly as `metrics()` in `reference_sim.py`: waits by
//! nearest-rank percentile, Linux machine-hours as run (billing has a 60 s minimum), Mac
//! host-hours as billed (24 h minimum), everything still running billed to the end.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::model::{self, Kind, Pools};

/// One machine's or host's lifetime, in virtual seconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lifetime {
    pub pool: usize,
    pub from: f64,
    pub to: f64,
}

/// One pool's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolReport {
    pub name: String,
    /// `linux` or `mac`: which provider model the pool follows.
    pub kind: &'static str,
    pub jobs: usize,
    pub wait_p50_s: f64,
    pub wait_p95_s: f64,
    pub wait_p99_s: f64,
    pub wait_max_s: f64,
    /// Linux machines, or Mac instances.
    pub machines: usize,
    /// Hours the machines (Linux) or instances (Mac) ran.
    pub machine_hours: f64,
    /// Mac hosts allocated (0 for Linux).
    pub hosts_allocated: usize,
    /// Mac host-hours as billed, with the 24 h minimum (0 for Linux).
    pub host_hours: f64,
    pub cost_usd: f64,
}

/// A run's figures, per pool and in total.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub policy: String,
    pub jobs: usize,
    /// End of the accounting window, in hours.
    pub sim_end_h: f64,
    pub pools: Vec<PoolReport>,
    pub cost_usd: f64,
}

/// Nearest rank on sorted values: the `reference_sim.py` definition.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.max(1) - 1]
}

pub(crate) fn report(
    name: &str,
    pools: &Pools,
    waits: &[(usize, f64)],
    runners: &[Lifetime],
    hosts: &[Lifetime],
    end: f64,
) -> Report {
    let mut total = 0.0;
    let pools = pools
        .pools()
        .iter()
        .enumerate()
        .map(|(idx, pool)| {
            let mut w: Vec<f64> = waits
                .iter()
                .filter(|(p, _)| *p == idx)
                .map(|(_, wait)| *wait)
                .collect();
            w.sort_by(f64::total_cmp);
            let mine = |lifetimes: &[Lifetime]| -> Vec<f64> {
                lifetimes
                    .iter()
                    .filter(|l| l.pool == idx)
                    .map(|l| l.to - l.from)
                    .collect()
            };
            let ran = mine(runners);
            let held = mine(hosts);
            let machine_s: f64 = ran.iter().sum();
            let (billed_s, price, host_s) = match pool.kind {
                Kind::Linux => (
                    ran.iter().map(|s| s.max(model::LINUX_MIN_BILL_S)).sum(),
                    model::LINUX_PRICE_H,
                    0.0,
                ),
                Kind::Mac => {
                    let billed: f64 = held.iter().map(|s| s.max(model::MAC_HOST_MIN_S)).sum();
                    (billed, model::MAC_HOST_PRICE_H, billed)
                }
            };
            let cost = billed_s / 3600.0 * price;
            total += cost;
            PoolReport {
                name: pool.name.clone(),
                kind: pool.kind.as_str(),
                jobs: w.len(),
                wait_p50_s: percentile(&w, 50.0),
                wait_p95_s: percentile(&w, 95.0),
                wait_p99_s: percentile(&w, 99.0),
                wait_max_s: percentile(&w, 100.0),
                machines: ran.len(),
                machine_hours: machine_s / 3600.0,
                hosts_allocated: held.len(),
                host_hours: host_s / 3600.0,
                cost_usd: cost,
            }
        })
        .collect();
    Report {
        policy: name.to_owned(),
        jobs: waits.len(),
        sim_end_h: end / 3600.0,
        pools,
        cost_usd: total,
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

impl Report {
    /// The pools as the judge reads them: keyed by name, waits to 0.1 s, hours and dollars to
    /// the cent; Linux pools give machine-hours, Mac pools host-hours and hosts.
    pub fn pools_json(&self) -> Value {
        let mut pools = Map::new();
        for pool in &self.pools {
            let mut obj = json!({
                "jobs": pool.jobs,
                "wait_p50_s": round(pool.wait_p50_s, 1),
                "wait_p95_s": round(pool.wait_p95_s, 1),
                "wait_p99_s": round(pool.wait_p99_s, 1),
                "wait_max_s": round(pool.wait_max_s, 1),
                "cost_usd": round(pool.cost_usd, 2),
            });
            let fields = obj.as_object_mut().expect("an object");
            match pool.kind {
                "mac" => {
                    fields.insert("host_hours".into(), json!(round(pool.host_hours, 2)));
                    fields.insert("hosts_allocated".into(), json!(pool.hosts_allocated));
                    fields.insert("instances".into(), json!(pool.machines));
                    fields.insert("instance_hours".into(), json!(round(pool.machine_hours, 2)));
                }
                _ => {
                    fields.insert("machine_hours".into(), json!(round(pool.machine_hours, 2)));
                    fields.insert("machines".into(), json!(pool.machines));
                }
            }
            pools.insert(pool.name.clone(), obj);
        }
        Value::Object(pools)
    }

    /// `{"policy", "pools", "cost_usd", "jobs"}`.
    pub fn json(&self) -> Value {
        json!({
            "policy": self.policy,
            "jobs": self.jobs,
            "pools": self.pools_json(),
            "cost_usd": round(self.cost_usd, 2),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_like_the_reference() {
        let xs: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&xs, 50.0), 10.0);
        assert_eq!(percentile(&xs, 95.0), 19.0);
        assert_eq!(percentile(&xs, 99.0), 20.0);
        assert_eq!(percentile(&xs, 100.0), 20.0);
        assert_eq!(percentile(&[7.0], 50.0), 7.0);
        assert_eq!(percentile(&[], 95.0), 0.0);
    }
}
