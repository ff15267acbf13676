//! `nimbusctl sim`: the arguments and the command, self-contained so a binary only parses
//! [`SimArgs`] and calls [`run`].

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::{Value, json};

use crate::engine::{self, NimbusConfig, Policy};
use crate::metrics::Report;
use crate::model::Pools;
use crate::peers::{self, Peer};
use crate::trace;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyArg {
    /// The daemon's policy (`nimbus_autoscale::plan`).
    Nimbus,
    /// Always-on reused runners, at the p95 and at the max of zero-wait concurrency.
    Static,
    /// One ephemeral runner per queued job (`--delay` for a webhook delay).
    Reactive,
    /// `--k` idle Linux and `--j` idle macOS runners on top of demand.
    Minidle,
    /// Nimbus, then the fleet README's grid of peers.
    All,
}

/// Replays a CI job trace against simulated providers (see the fleet model).
#[derive(Clone, Debug, clap::Args)]
pub struct SimArgs {
    /// Jobs to replay: `submitted_at_s,job_id,labels,duration_s`.
    #[arg(long, value_name = "FILE")]
    pub trace: PathBuf,
    /// `[[pools]]` entries (name, labels, os, arch, instance_type, max, min_idle, …); the
    /// fleet README's Linux and macOS pools when omitted.
    #[arg(long, value_name = "FILE")]
    pub pools: Option<PathBuf>,
    /// The week before the trace, to learn from; nothing in it is replayed or counted.
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = PolicyArg::All)]
    pub policy: PolicyArg,
    /// minidle: idle Linux runners kept warm.
    #[arg(long, default_value_t = 2)]
    pub k: u32,
    /// minidle: idle macOS runners kept warm.
    #[arg(long, default_value_t = 1)]
    pub j: u32,
    /// reactive, minidle: seconds before the scaler sees a queued job.
    #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
    pub delay: f64,
    /// One JSON object: the first policy's figures, the others under `peers`. Set from the
    /// caller's own `--json` (nimbusctl's is global).
    #[arg(skip)]
    pub json: bool,
}

/// Runs the policies `args` asks for and prints their figures to `out`.
pub fn run(args: &SimArgs, out: &mut impl Write) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.delay.is_finite() && args.delay >= 0.0,
        "--delay must be a non-negative number of seconds"
    );
    let jobs =
        trace::load(&args.trace).with_context(|| format!("trace {}", args.trace.display()))?;
    let pools = match &args.pools {
        Some(path) => Pools::load(path).with_context(|| format!("pools {}", path.display()))?,
        None => Pools::sample(),
    };
    // Learned from by the nimbus policy; nothing in it is replayed.
    let history = match &args.history {
        Some(path) => {
            Some(trace::load(path).with_context(|| format!("history {}", path.display()))?)
        }
        None => None,
    };
    let economic = NimbusConfig::economic(history.clone().unwrap_or_default());
    let nimbus = Peer {
        name: "nimbus".to_owned(),
        policy: Policy::Nimbus(economic),
    };
    let runs = match args.policy {
        PolicyArg::Nimbus => vec![nimbus],
        PolicyArg::Static => {
            let concurrency = peers::concurrency(&jobs, &pools);
            vec![
                peers::fixed(&pools, concurrency.p95),
                peers::fixed(&pools, concurrency.max),
            ]
        }
        PolicyArg::Reactive => vec![peers::reactive(&pools, args.delay)],
        PolicyArg::Minidle => vec![peers::min_idle(&pools, args.k, args.j, args.delay)],
        PolicyArg::All => {
            let mut runs = vec![nimbus];
            runs.extend(peers::grid(&jobs, &pools));
            runs
        }
    };
    let reports = runs
        .iter()
        .map(|peer| engine::run(&jobs, &pools, &peer.name, &peer.policy).map(|o| o.report))
        .collect::<Result<Vec<_>, _>>()?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &json_object(&reports))?;
        writeln!(out)?;
    } else {
        write_table(out, &reports, jobs.len(), history.as_ref().map(Vec::len))?;
    }
    Ok(())
}

/// The first report at the top level, the others under `peers`.
pub fn json_object(reports: &[Report]) -> Value {
    let Some((first, rest)) = reports.split_first() else {
        return json!({});
    };
    let mut object = first.json();
    object["peers"] = Value::Array(rest.iter().map(Report::json).collect());
    object
}

fn write_table(
    out: &mut impl Write,
    reports: &[Report],
    n_jobs: usize,
    n_history: Option<usize>,
) -> std::io::Result<()> {
    write!(out, "{n_jobs} jobs")?;
    if let Some(n) = n_history {
        write!(out, " ({n} jobs of history, learned from by nimbus)")?;
    }
    writeln!(out)?;
    let width = reports
        .iter()
        .map(|r| r.policy.len())
        .chain([6])
        .max()
        .unwrap_or(6);
    writeln!(
        out,
        "{:width$}  {:8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9} {:>6} {:>10}",
        "policy",
        "pool",
        "jobs",
        "p50 s",
        "p95 s",
        "p99 s",
        "max s",
        "machine-h",
        "host-h",
        "hosts",
        "cost $"
    )?;
    for report in reports {
        for pool in &report.pools {
            writeln!(
                out,
                "{:width$}  {:8} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>10.1} {:>9.1} {:>6} {:>10.2}",
                report.policy,
                pool.name,
                pool.jobs,
                pool.wait_p50_s,
                pool.wait_p95_s,
                pool.wait_p99_s,
                pool.wait_max_s,
                pool.machine_hours,
                pool.host_hours,
                pool.hosts_allocated,
                pool.cost_usd
            )?;
        }
        writeln!(
            out,
            "{:width$}  {:8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9} {:>6} {:>10.2}",
            report.policy, "total", report.jobs, "", "", "", "", "", "", "", report.cost_usd
        )?;
    }
    Ok(())
}
