//! `nimbusctl registry`: the provider registry, read offline from a checkout or a Git URL (no
//! daemon needed). `validate` prints one `file:line:column: key: message` line per mistake and
//! exits non-zero when there is any; `list` and `search` print the hardware classes on offer.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::NOTHING};
use nimbus_baremetal::registry::{self, BmcSupport, Query, Registry};
use nimbus_types::{Arch, Os};

#[derive(Debug, Subcommand)]
pub enum RegistryCmd {
    /// Check every provider file of a registry (a directory, one file, or a Git URL).
    Validate { source: String },
    /// Every hardware class on offer (filters as for `search`).
    List(SearchArgs),
    /// Hardware classes that match, cheapest first.
    Search(SearchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SearchArgs {
    /// The registry: a directory, one file, or a Git URL.
    #[arg(long, env = "NIMBUS_REGISTRY")]
    pub registry: String,
    #[arg(long, value_parser = parse_os)]
    pub os: Option<Os>,
    #[arg(long, value_parser = parse_arch)]
    pub arch: Option<Arch>,
    #[arg(long)]
    pub min_cores: Option<u32>,
    #[arg(long)]
    pub min_memory_gb: Option<u32>,
    /// Highest price per hour in US dollars.
    #[arg(long)]
    pub max_price: Option<f64>,
    /// BMC kind the owner drives the machines with: redfish, ipmi or none.
    #[arg(long, value_parser = parse_bmc)]
    pub bmc: Option<BmcSupport>,
    /// A label every matching class offers (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
}

fn parse_os(value: &str) -> Result<Os, String> {
    value
        .parse()
        .map_err(|_| "must be macos or linux".to_owned())
}

fn parse_arch(value: &str) -> Result<Arch, String> {
    value
        .parse()
        .map_err(|_| "must be arm64 or x86_64".to_owned())
}

fn parse_bmc(value: &str) -> Result<BmcSupport, String> {
    match value {
        "redfish" => Ok(BmcSupport::Redfish),
        "ipmi" => Ok(BmcSupport::Ipmi),
        "none" => Ok(BmcSupport::None),
        _ => Err("must be redfish, ipmi or none".into()),
    }
}

fn is_git_url(source: &str) -> bool {
    source.contains("://")
        || (source.contains('@') && source.contains(':') && !Path::new(source).exists())
}

/// The registry at `source`: read in place, or cloned (depth 1) into a temporary directory.
fn load(source: &str) -> anyhow::Result<Registry> {
    if !is_git_url(source) {
        let path = PathBuf::from(source);
        if !path.exists() {
            bail!("registry {source}: no such file or directory");
        }
        return registry::load_dir(&path).with_context(|| format!("cannot read registry {source}"));
    }
    if source.starts_with('-') {
        bail!("registry URL must not start with '-'");
    }
    let dir = tempfile::Builder::new()
        .prefix("nimbus-registry-")
        .tempdir()?;
    let out = Command::new("git")
        .args(["clone", "--quiet", "--depth", "1", "--"])
        .arg(source)
        .arg(dir.path().join("registry"))
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .context("cannot run git (install git to read a registry from a URL)")?;
    if !out.status.success() {
        bail!(
            "git clone {source} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    registry::load_dir(&dir.path().join("registry"))
        .with_context(|| format!("cannot read the clone of {source}"))
}

pub fn run(cmd: &RegistryCmd, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        RegistryCmd::Validate { source } => {
            let registry = load(source)?;
            if json {
                serde_json::to_writer_pretty(
                    &mut *out,
                    &serde_json::json!({
                        "valid": registry.is_valid(),
                        "providers": registry.entries.len(),
                        "diagnostics": registry.diagnostics,
                    }),
                )?;
                writeln!(out)?;
            } else {
                for diagnostic in &registry.diagnostics {
                    writeln!(out, "{diagnostic}")?;
                }
            }
            if !registry.is_valid() {
                bail!(
                    "registry {source}: {} problem(s) found",
                    registry.diagnostics.len()
                );
            }
            if !json {
                let classes: usize = registry.entries.values().map(|e| e.classes.len()).sum();
                writeln!(
                    out,
                    "registry {source} is valid: {} provider(s), {classes} hardware class(es)",
                    registry.entries.len()
                )?;
            }
            Ok(())
        }
        RegistryCmd::List(args) | RegistryCmd::Search(args) => {
            let registry = load(&args.registry)?;
            for diagnostic in &registry.diagnostics {
                eprintln!("warning: skipped: {diagnostic}");
            }
            if args.max_price.is_some_and(|p| !p.is_finite() || p < 0.0) {
                bail!("--max-price must be a non-negative number");
            }
            let query = Query {
                os: args.os,
                arch: args.arch,
                min_cores: args.min_cores,
                min_memory_gb: args.min_memory_gb,
                max_price: args.max_price,
                bmc: args.bmc,
                labels: args.labels.clone(),
            };
            let offers = registry.search(&query);
            if json {
                serde_json::to_writer_pretty(&mut *out, &offers)?;
                writeln!(out)?;
                return Ok(());
            }
            let mut table = Table::new();
            table.load_preset(NOTHING).set_header(vec![
                "PROVIDER", "CLASS", "COUNT", "OS/ARCH", "CPU", "CORES", "MEMORY", "DISK",
                "$/HOUR", "BMC", "LOCATION", "AGENT",
            ]);
            for offer in &offers {
                let class = offer.class;
                table.add_row(vec![
                    offer.entry.name.clone(),
                    class.name.clone(),
                    class.count.to_string(),
                    format!("{}/{}", class.os, class.arch),
                    class.cpu.clone(),
                    class.cores.to_string(),
                    format!("{} GB", class.memory_gb),
                    format!("{} GB", class.disk_gb),
                    format!("{:.3}", class.price_per_hour),
                    format!("{:?}", offer.entry.bmc).to_lowercase(),
                    offer.entry.location.clone(),
                    offer.entry.agent.clone(),
                ]);
            }
            writeln!(out, "{table}")?;
            Ok(())
        }
    }
}
