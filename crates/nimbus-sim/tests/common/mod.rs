//! Where the fleet model's sample traces and `reference_sim.py` are.

#![allow(dead_code)] // each test binary uses its own part

use std::path::PathBuf;

use nimbus_sim::{Job, trace};

pub const TRACES: [&str; 3] = ["small-team", "mid-org", "macos-heavy"];

/// `NIMBUS_FLEET_DIR` (another week or workload laid out like the project's shared `fleet/`
/// folder), else the copy of the project's fleet model and sample weeks in `tests/fleet`.
pub fn fleet_dir() -> PathBuf {
    let dir = match std::env::var_os("NIMBUS_FLEET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fleet"),
    };
    assert!(
        dir.join("reference_sim.py").is_file() && dir.join("traces").is_dir(),
        "the fleet model is not at {} (reference_sim.py and traces/ expected); set NIMBUS_FLEET_DIR",
        dir.display()
    );
    dir
}

pub fn trace_path(name: &str) -> PathBuf {
    fleet_dir().join("traces").join(format!("{name}-s2.csv"))
}

pub fn load(name: &str) -> Vec<Job> {
    let path = trace_path(name);
    trace::load(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}
