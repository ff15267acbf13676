//! `cargo bench -p nimbus-sim`: prints a table of how long one run of each policy takes on
//! each sample trace (target: a week of mid-org, 21k jobs, well under 5 s). Best of three
//! runs; nothing here asserts on time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nimbus_sim::{NimbusConfig, Policy, Pools, peers, trace};

const TRACES: [&str; 3] = ["small-team", "mid-org", "macos-heavy"];
const RUNS: usize = 3;

fn fleet_dir() -> PathBuf {
    match std::env::var_os("NIMBUS_FLEET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fleet"),
    }
}

fn main() {
    let pools = Pools::sample();
    println!(
        "{:12} {:>7}  {:24} {:>10} {:>10}",
        "trace", "jobs", "policy", "best ms", "cost $"
    );
    for name in TRACES {
        let path = fleet_dir().join("traces").join(format!("{name}-s2.csv"));
        let jobs = match trace::load(&path) {
            Ok(jobs) => jobs,
            Err(err) => {
                eprintln!("{name}: {err} (set NIMBUS_FLEET_DIR to the fleet model's directory)");
                std::process::exit(1);
            }
        };
        let mut runs = vec![("nimbus".to_owned(), Policy::Nimbus(NimbusConfig::default()))];
        runs.extend(
            peers::grid(&jobs, &pools)
                .into_iter()
                .map(|p| (p.name, p.policy)),
        );
        let mut total = Duration::ZERO;
        for (policy_name, policy) in &runs {
            let mut best = Duration::MAX;
            let mut cost = 0.0;
            for _ in 0..RUNS {
                let started = Instant::now();
                let outcome = nimbus_sim::run(&jobs, &pools, policy_name, policy)
                    .unwrap_or_else(|err| panic!("{name} {policy_name}: {err}"));
                best = best.min(started.elapsed());
                cost = std::hint::black_box(outcome).report.cost_usd;
            }
            total += best;
            println!(
                "{:12} {:>7}  {:24} {:>10.1} {:>10.0}",
                name,
                jobs.len(),
                policy_name,
                best.as_secs_f64() * 1e3,
                cost
            );
        }
        println!(
            "{:12} {:>7}  {:24} {:>10.1}",
            name,
            jobs.len(),
            "all of the above",
            total.as_secs_f64() * 1e3
        );
    }
}
