//! The peers replay as `reference_sim.py` models them: for every sample trace and every row of
//! the fleet README's tables, cost, p95 waits, machine-hours, host-hours and hosts agree within
//! 1 % (waits within a few seconds near 0).

mod common;

use std::fmt::Write as _;
use std::process::Command;

use nimbus_sim::{Pools, Report, peers};
use serde_json::Value;

/// Runs `reference_sim.py` and returns its JSON, or fails with the command and its output.
fn reference(args: &[String]) -> Value {
    let script = common::fleet_dir().join("reference_sim.py");
    let mut command = Command::new("python3");
    command.arg(&script).args(args).arg("--json");
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?} (is python3 installed?): {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "{command:?} printed no JSON ({err}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn number(value: &Value, key: &str) -> f64 {
    value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("reference output has no number {key:?}: {value}"))
}

/// Within 1 %, or within `abs` (for figures near 0).
fn close(ours: f64, theirs: f64, abs: f64) -> bool {
    (ours - theirs).abs() <= abs.max(0.01 * theirs.abs())
}

fn calibrate(name: &str) {
    let path = common::trace_path(name);
    let jobs = common::load(name);
    let pools = Pools::sample();
    let trace_arg = path.display().to_string();

    let theirs = reference(&["--trace".into(), trace_arg.clone(), "--concurrency".into()]);
    let ours = peers::concurrency(&jobs, &pools);
    let (linux_p95, mac_p95) = (ours.p95[0], ours.p95[1]);
    let (linux_max, mac_max) = (ours.max[0], ours.max[1]);
    assert_eq!(
        [linux_p95, linux_max, mac_p95, mac_max].map(f64::from),
        ["linux_p95", "linux_max", "mac_p95", "mac_max"].map(|k| number(&theirs, k)),
        "{name}: zero-wait concurrency differs from the reference"
    );

    let grid = peers::grid(&jobs, &pools);
    let reference_args: Vec<Vec<String>> = vec![
        vec![
            "--policy static".into(),
            format!("--linux {linux_p95}"),
            format!("--mac {mac_p95}"),
        ],
        vec![
            "--policy static".into(),
            format!("--linux {linux_max}"),
            format!("--mac {mac_max}"),
        ],
        vec!["--policy reactive".into()],
        vec!["--policy reactive".into(), "--delay 30".into()],
        vec!["--policy minidle".into(), "--k 2".into(), "--j 1".into()],
        vec!["--policy minidle".into(), "--k 5".into(), "--j 2".into()],
        vec!["--policy minidle".into(), "--k 10".into(), "--j 5".into()],
    ];
    assert_eq!(grid.len(), reference_args.len());

    let mut table = format!(
        "\n{name}: ours / reference_sim.py\n{:22} | {:>15} | {:>15} | {:>19} | {:>19} | {:>19} | {:>9}\n",
        "policy", "p95 Linux s", "p95 macOS s", "cost $", "Linux machine-h", "Mac host-h", "hosts"
    );
    let mut failures = Vec::new();
    for (peer, args) in grid.iter().zip(&reference_args) {
        let mut argv = vec!["--trace".to_owned(), trace_arg.clone()];
        argv.extend(args.iter().flat_map(|a| a.split(' ').map(str::to_owned)));
        let theirs = reference(&argv);
        assert_eq!(
            theirs["policy"].as_str(),
            Some(peer.name.as_str()),
            "{name}: names differ"
        );
        let ours: Report = nimbus_sim::run(&jobs, &pools, &peer.name, &peer.policy)
            .unwrap_or_else(|err| panic!("{name} {}: {err}", peer.name))
            .report;
        let (linux, mac) = (&ours.pools[0], &ours.pools[1]);
        assert_eq!(linux.jobs as f64, number(&theirs, "jobs_linux"));
        assert_eq!(mac.jobs as f64, number(&theirs, "jobs_mac"));
        let checks = [
            ("wait_p50_linux_s", linux.wait_p50_s, 3.0),
            ("wait_p95_linux_s", linux.wait_p95_s, 3.0),
            ("wait_p99_linux_s", linux.wait_p99_s, 3.0),
            ("wait_max_linux_s", linux.wait_max_s, 3.0),
            ("wait_p50_mac_s", mac.wait_p50_s, 3.0),
            ("wait_p95_mac_s", mac.wait_p95_s, 3.0),
            ("wait_p99_mac_s", mac.wait_p99_s, 3.0),
            ("wait_max_mac_s", mac.wait_max_s, 3.0),
            ("cost_usd", ours.cost_usd, 0.01),
            ("linux_machine_h", linux.machine_hours, 0.01),
            ("linux_machines", linux.machines as f64, 0.0),
            ("mac_host_h", mac.host_hours, 0.01),
            ("mac_hosts", mac.hosts_allocated as f64, 0.0),
            ("mac_instances", mac.machines as f64, 0.0),
            ("mac_instance_h", mac.machine_hours, 0.01),
        ];
        for (key, value, abs) in checks {
            let reference = number(&theirs, key);
            if !close(value, reference, abs) {
                failures.push(format!(
                    "{name} {}: {key} {value} vs {reference}",
                    peer.name
                ));
            }
        }
        writeln!(
            table,
            "{:22} | {:>6.1} / {:>6.1} | {:>6.1} / {:>6.1} | {:>8.2} / {:>8.2} | {:>8.2} / {:>8.2} | {:>8.2} / {:>8.2} | {:>4} / {:>4}",
            peer.name,
            linux.wait_p95_s,
            number(&theirs, "wait_p95_linux_s"),
            mac.wait_p95_s,
            number(&theirs, "wait_p95_mac_s"),
            ours.cost_usd,
            number(&theirs, "cost_usd"),
            linux.machine_hours,
            number(&theirs, "linux_machine_h"),
            mac.host_hours,
            number(&theirs, "mac_host_h"),
            mac.hosts_allocated,
            number(&theirs, "mac_hosts"),
        )
        .unwrap();
    }
    println!("{table}");
    assert!(
        failures.is_empty(),
        "{name}: the peers differ from reference_sim.py:\n{}\n{table}",
        failures.join("\n")
    );
}

#[test]
fn small_team_matches_the_reference() {
    calibrate("small-team");
}

#[test]
fn mid_org_matches_the_reference() {
    calibrate("mid-org");
}

#[test]
fn macos_heavy_matches_the_reference() {
    calibrate("macos-heavy");
}
