//! The daemon's policy in the simulator: it serves every job of the sample traces, a run is
//! deterministic, and it is causal (what happens before `T` does not depend on jobs after `T`).

mod common;

use nimbus_sim::{Job, NimbusConfig, Outcome, Policy, Pools, peers};

fn nimbus(jobs: &[Job]) -> Outcome {
    nimbus_sim::run(
        jobs,
        &Pools::sample(),
        "nimbus",
        &Policy::Nimbus(NimbusConfig::default()),
    )
    .unwrap_or_else(|err| panic!("nimbus: {err}"))
}

#[test]
fn every_job_starts_on_every_sample_trace() {
    for name in common::TRACES {
        let jobs = common::load(name);
        let outcome = nimbus(&jobs);
        let report = &outcome.report;
        assert_eq!(report.jobs, jobs.len(), "{name}");
        assert_eq!(outcome.starts.len(), jobs.len(), "{name}");
        for (job, start) in jobs.iter().zip(&outcome.starts) {
            assert!(
                *start >= job.submitted_at,
                "{name}: job {} starts before it is submitted",
                job.id
            );
        }
        // With no warm target, nothing beats the boot time; nothing waits much beyond it.
        let (linux, mac) = (&report.pools[0], &report.pools[1]);
        assert!(linux.wait_p50_s >= 70.0 - 1e-6, "{name}: {report:?}");
        assert!(mac.wait_p50_s >= 490.0 - 1e-6, "{name}: {report:?}");
        assert!(
            report.cost_usd > 0.0 && mac.hosts_allocated > 0,
            "{name}: {report:?}"
        );
        println!(
            "{name}: linux p95 {:.0} s, macos p95 {:.0} s, cost ${:.0}, {} hosts, {} decisions",
            linux.wait_p95_s,
            mac.wait_p95_s,
            report.cost_usd,
            mac.hosts_allocated,
            outcome.decisions.len()
        );
    }
}

#[test]
fn same_input_same_output() {
    let jobs = common::load("macos-heavy");
    let pools = Pools::sample();
    let mut runs = vec![("nimbus".to_owned(), Policy::Nimbus(NimbusConfig::default()))];
    runs.extend(
        peers::grid(&jobs, &pools)
            .into_iter()
            .map(|p| (p.name, p.policy)),
    );
    for (name, policy) in runs {
        let first = nimbus_sim::run(&jobs, &pools, &name, &policy).unwrap();
        let second = nimbus_sim::run(&jobs, &pools, &name, &policy).unwrap();
        assert_eq!(first, second, "{name}");
        assert_eq!(
            first.report.json().to_string(),
            second.report.json().to_string(),
            "{name}"
        );
    }
}

/// Cuts the trace at `cut` (jobs submitted before it) and checks that every decision taken and
/// every job started before `cut` is the same as with the whole trace.
fn check_causal(name: &str, cut: f64) {
    let jobs = common::load(name);
    let full = nimbus(&jobs);
    let (head, ids): (Vec<Job>, Vec<usize>) = jobs
        .iter()
        .enumerate()
        .filter(|(_, job)| job.submitted_at < cut)
        .map(|(idx, job)| (job.clone(), idx))
        .unzip();
    assert!(
        !head.is_empty() && head.len() < jobs.len(),
        "{name}: cut at {cut} keeps {} jobs",
        head.len()
    );
    let cut_run = nimbus(&head);

    let before = |decisions: &[nimbus_sim::Decided]| {
        decisions
            .iter()
            .filter(|d| d.t < cut)
            .cloned()
            .collect::<Vec<_>>()
    };
    let (full_before, cut_before) = (before(&full.decisions), before(&cut_run.decisions));
    assert!(!full_before.is_empty(), "{name}: no decisions before {cut}");
    assert_eq!(
        full_before.len(),
        cut_before.len(),
        "{name}: decisions before {cut}"
    );
    assert!(
        full_before == cut_before,
        "{name}: decisions before {cut} differ"
    );

    let mut n_started = 0;
    for (head_idx, &idx) in ids.iter().enumerate() {
        let (whole, part) = (full.starts[idx], cut_run.starts[head_idx]);
        if whole < cut || part < cut {
            assert_eq!(
                whole, part,
                "{name}: job {} started differently",
                jobs[idx].id
            );
            n_started += 1;
        }
    }
    assert!(n_started > 0, "{name}: no job started before {cut}");
}

#[test]
fn the_past_does_not_depend_on_the_future() {
    // Mid-week, mid-afternoon: queues, booting machines and scrubbing hosts are all in flight.
    check_causal("small-team", 3.0 * 86400.0 + 14.0 * 3600.0);
    check_causal("macos-heavy", 2.0 * 86400.0 + 15.5 * 3600.0);
}

#[test]
fn a_warm_reused_pool_runs_through_plan() {
    let pools = Pools::parse(
        r#"
[[pools]]
name = "linux"
labels = ["self-hosted", "linux", "x64"]
os = "linux"
arch = "x86_64"
max = 400
min_idle = 3
ephemeral = false
idle_timeout_secs = 1800

[[pools]]
name = "macos"
labels = ["self-hosted", "macos", "arm64"]
os = "macos"
arch = "arm64"
max = 100
min_idle = 1
ephemeral = false
"#,
    )
    .unwrap();
    let jobs = common::load("small-team");
    let warm = nimbus_sim::run(
        &jobs,
        &pools,
        "nimbus",
        &Policy::Nimbus(NimbusConfig::default()),
    )
    .unwrap()
    .report;
    let cold = nimbus(&jobs).report;
    // Warm reused runners wait less than cold ephemeral ones, and cost more machine-hours.
    assert!(
        warm.pools[0].wait_p50_s < cold.pools[0].wait_p50_s,
        "{warm:?}\n{cold:?}"
    );
    assert!(
        warm.pools[0].machine_hours > cold.pools[0].machine_hours,
        "{warm:?}\n{cold:?}"
    );
    assert_eq!(warm.jobs, jobs.len());
}

/// The policy `nimbusctl sim` runs: recommended settings, Mac hosts and a forecast learned from
/// the week before (the sample's `-prev` trace when there is one).
fn economic(name: &str, jobs: &[Job]) -> Outcome {
    let prev = common::fleet_dir()
        .join("traces")
        .join(format!("{name}-s2-prev.csv"));
    let history = if prev.is_file() {
        nimbus_sim::trace::load(&prev).unwrap()
    } else {
        Vec::new()
    };
    nimbus_sim::run(
        jobs,
        &Pools::sample(),
        "nimbus",
        &Policy::Nimbus(NimbusConfig::economic(history)),
    )
    .unwrap_or_else(|err| panic!("nimbus economic: {err}"))
}

#[test]
fn the_economic_policy_reuses_hosts_and_beats_reactive() {
    for name in ["small-team", "macos-heavy"] {
        let jobs = common::load(name);
        let outcome = economic(name, &jobs);
        let report = &outcome.report;
        let reactive = nimbus(&jobs).report;
        assert_eq!(report.jobs, jobs.len(), "{name}");
        for (job, start) in jobs.iter().zip(&outcome.starts) {
            assert!(*start >= job.submitted_at, "{name}: job {}", job.id);
        }
        let (mac, cold_mac) = (&report.pools[1], &reactive.pools[1]);
        if name == "macos-heavy" {
            // Where Mac demand dominates, reused hosts cost far less than one per job.
            assert!(
                mac.hosts_allocated * 2 < cold_mac.hosts_allocated,
                "{name}: {report:?}"
            );
            assert!(
                report.cost_usd < reactive.cost_usd * 0.5,
                "{name}: {report:?}"
            );
        }
        assert!(mac.wait_p95_s < cold_mac.wait_p95_s, "{name}: {report:?}");
        assert!(
            report.pools[0].wait_p50_s < reactive.pools[0].wait_p50_s,
            "{name}: {report:?}"
        );
        println!(
            "{name}: linux p95 {:.0} s, macos p95 {:.0} s, cost ${:.0} (bare ${:.0}), {} hosts",
            report.pools[0].wait_p95_s,
            mac.wait_p95_s,
            report.cost_usd,
            reactive.cost_usd,
            mac.hosts_allocated
        );
    }
}

#[test]
fn the_economic_policy_is_deterministic_and_causal() {
    let name = "macos-heavy";
    let jobs = common::load(name);
    assert_eq!(economic(name, &jobs), economic(name, &jobs));

    // Cut mid-week: decisions and starts before the cut do not depend on later jobs (the
    // forecast learns only from jobs submitted by then, and from durations of jobs ended).
    let cut = 2.0 * 86400.0 + 15.5 * 3600.0;
    let full = economic(name, &jobs);
    let (head, ids): (Vec<Job>, Vec<usize>) = jobs
        .iter()
        .enumerate()
        .filter(|(_, job)| job.submitted_at < cut)
        .map(|(idx, job)| (job.clone(), idx))
        .unzip();
    let cut_run = economic(name, &head);
    let before = |decisions: &[nimbus_sim::Decided]| {
        decisions
            .iter()
            .filter(|d| d.t < cut)
            .cloned()
            .collect::<Vec<_>>()
    };
    let full_before = before(&full.decisions);
    assert!(!full_before.is_empty());
    assert!(
        full_before == before(&cut_run.decisions),
        "decisions before {cut} differ"
    );
    for (head_idx, &idx) in ids.iter().enumerate() {
        let (whole, part) = (full.starts[idx], cut_run.starts[head_idx]);
        if whole < cut || part < cut {
            assert_eq!(whole, part, "job {} started differently", jobs[idx].id);
        }
    }
}
