//! `nimbusctl`: the Nimbus CLI, a thin client of the `/v1` REST API.
//!
//! Tables for people, `--json` for scripts; errors are one line on stderr and a non-zero exit.

mod client;
mod output;
mod registry;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, CommandFactory, Parser, Subcommand};
use nimbus_types::api::{
    BudgetView, CostReport, CreatePool, CreateProvider, CreateTenant, JobCostReport, MachineList,
    PoolList, PoolPlan, PoolView, ProviderView, ProvisionMachine, SetBudget, SetForge, StateChange,
    TenantToken, UpdatePool,
};
use nimbus_types::{
    Arch, CanTerminate, ForgeType, ImageType, Machine, MachineState, Os, ProviderType, Schedule,
    Tenant,
};

use crate::client::Client;
use crate::output::{DemandRow, ForgeShow, Printer};

pub const DEFAULT_URL: &str = "http://127.0.0.1:8720";

#[derive(Debug, Parser)]
#[command(
    name = "nimbusctl",
    version,
    about = "Control Nimbus: tenants, providers and runner machines"
)]
pub struct Cli {
    /// URL of nimbusd.
    #[arg(long, global = true, env = "NIMBUS_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Bearer token [default: the admin token in $XDG_CONFIG_HOME/nimbus/admin-token, if readable].
    #[arg(long, global = true, env = "NIMBUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Noun,
}

#[derive(Debug, Subcommand)]
pub enum Noun {
    /// Tenants and their tokens.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Where machines come from.
    #[command(subcommand)]
    Provider(ProviderCmd),
    /// Where runners register.
    #[command(subcommand)]
    Forge(ForgeCmd),
    /// Jobs waiting for runners.
    #[command(subcommand)]
    Demand(DemandCmd),
    /// Runner machines.
    #[command(subcommand)]
    Machine(MachineCmd),
    /// Pools: runner machines that come and go with job demand.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// What the fleet cost, per tenant and pool, with a month-end forecast.
    Cost {
        #[arg(long)]
        tenant: Option<String>,
        /// Only this pool (needs --tenant).
        #[arg(long, requires = "tenant")]
        pool: Option<String>,
        /// From this date (2026-12-01) or RFC 3339 time [default: the start of this month, UTC].
        #[arg(long)]
        since: Option<String>,
        /// Per finished job: each job's share of the machine its runner ran on; with a job id,
        /// only that job.
        #[arg(long, value_name = "JOB_ID", num_args = 0..=1, default_missing_value = "")]
        job: Option<String>,
    },
    /// Bare-metal agents (`nimbusd agent run` on a rack): enrolment tokens, status, BMC
    /// operations.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Follow telemetry events as they happen.
    Events(EventsArgs),
    /// Replay a CI job trace against simulated providers: what a pool configuration costs and
    /// how long jobs wait, under Nimbus's policy and the peers' (runs offline, no daemon).
    Sim(Box<nimbus_sim::cli::SimArgs>),
    /// The provider registry: one TOML file per bare-metal provider in a Git repository
    /// (runs offline, no daemon).
    #[command(subcommand)]
    Registry(registry::RegistryCmd),
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (nimbusctl.1 and one per subcommand) into a directory.
    Manpages { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// One-time enrolment tokens.
    #[command(subcommand)]
    Token(AgentTokenCmd),
    /// Agents with their status (online, lost, enrolled) and last heartbeat.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Delete an agent: its credential stops working (enrol it again with a new token).
    Delete {
        name: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Power a BMC the agent drives: on, off, reset or status (asks the BMC; power lands later).
    Power {
        /// The agent's name.
        name: String,
        /// The BMC's name in the agent's configuration.
        #[arg(long)]
        bmc: String,
        #[arg(value_parser = ["on", "off", "reset", "status"])]
        action: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Boot a BMC's machine once from disk, pxe or cd on its next boot.
    Boot {
        name: String,
        #[arg(long)]
        bmc: String,
        #[arg(value_parser = ["disk", "pxe", "cd"])]
        target: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentTokenCmd {
    /// Create a one-time token for the agent NAME; it is shown once.
    Create {
        name: String,
        #[arg(long)]
        tenant: Option<String>,
        /// How long the token stays valid, e.g. `1h` (at most 7 days).
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        ttl: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant (admin).
    Create { name: String },
    /// List tenants.
    List,
    /// Show a tenant.
    Show { name: String },
    /// Issue a new token for a tenant (admin); it is shown once.
    Token { name: String },
    /// Show a tenant's monthly budget and this month's spend; set or clear it (admin).
    Budget {
        name: String,
        /// A monthly budget in USD: no pool of the tenant scales up past it.
        #[arg(long, conflicts_with = "clear")]
        set: Option<f64>,
        /// Remove the budget.
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProviderCmd {
    /// Add a provider to a tenant.
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long = "type", value_parser = parse_provider_type)]
        provider_type: ProviderType,
        #[arg(long)]
        name: String,
        /// Provider settings: a TOML (or JSON) file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Provider secrets: a TOML (or JSON) file; sealed by the server, never shown again.
        #[arg(long)]
        credentials: Option<PathBuf>,
    },
    /// List providers.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show a provider.
    Show {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Remove a provider that has no live machines.
    Remove {
        #[arg(long)]
        tenant: String,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ForgeCmd {
    /// Set (replace) a tenant's forge. Keys and secrets are read from files, sealed by the
    /// server and never shown again.
    Set(Box<ForgeSetArgs>),
    /// Show a tenant's forge (without its secrets) and the webhook URL to give the forge.
    Show {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("auth")
        .args(["private_key_file", "token_file", "credentials"])
        .required(true)
        .multiple(true)
))]
pub struct ForgeSetArgs {
    #[arg(long)]
    tenant: String,
    #[arg(long = "type", value_parser = parse_forge_type)]
    forge_type: ForgeType,
    /// Organization (or user) that owns the runners.
    #[arg(long)]
    org: String,
    /// Register runners with this repository of the organization instead of the organization.
    #[arg(long)]
    repo: Option<String>,
    /// GitHub App id (with --installation-id and --private-key-file).
    #[arg(long, requires_all = ["installation_id", "private_key_file"])]
    app_id: Option<u64>,
    /// The App's installation id on the organization.
    #[arg(long, requires_all = ["app_id", "private_key_file"])]
    installation_id: Option<u64>,
    /// The App's private key (.pem as GitHub generates it).
    #[arg(long, requires_all = ["app_id", "installation_id"], conflicts_with = "token_file")]
    private_key_file: Option<PathBuf>,
    /// A personal access token instead of a GitHub App.
    #[arg(long, conflicts_with_all = ["app_id", "installation_id"])]
    token_file: Option<PathBuf>,
    /// API base URL, e.g. https://HOST/api/v3 for GitHub Enterprise Server; for GitLab the
    /// instance's URL (https://gitlab.example.com); for Forgejo only when the API is not at
    /// --forge-url's /api/v1.
    #[arg(long)]
    api_url: Option<String>,
    /// GitLab: create group runners in this group (numeric id).
    #[arg(long)]
    group_id: Option<u64>,
    /// GitLab: create project runners in this project (numeric id).
    #[arg(long)]
    project_id: Option<u64>,
    /// GitLab: instance_type, group_type or project_type (default: from --group-id/--project-id).
    #[arg(long)]
    runner_type: Option<String>,
    /// GitLab: a project whose pending jobs are demand (repeatable; GitLab has no group-wide list).
    #[arg(long = "project")]
    projects: Vec<u64>,
    /// Nimbus Git: the server's base URL (e.g. http://git.example:3000); Forgejo: the
    /// instance's URL, where runners connect (e.g. https://code.example.org).
    #[arg(long)]
    forge_url: Option<String>,
    /// Forgejo: how runners are registered: auto (created directly, Forgejo 15+, else a
    /// registration token), direct or token.
    #[arg(long)]
    registration: Option<String>,
    /// The secret the forge signs webhook deliveries with.
    #[arg(long)]
    webhook_secret_file: Option<PathBuf>,
    /// More forge settings: a TOML (or JSON) file (the flags above win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// More forge secrets: a TOML (or JSON) file (the flags above win).
    #[arg(long)]
    credentials: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum DemandCmd {
    /// Queued, waiting and in-progress jobs per tenant and label set.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum MachineCmd {
    /// Provision a machine.
    Provision(ProvisionArgs),
    /// List machines.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        provider: Option<String>,
        #[arg(long, value_parser = parse_state)]
        state: Option<MachineState>,
        /// Include terminated machines.
        #[arg(long)]
        all: bool,
    },
    /// Show a machine and its state history.
    Show { id: String },
    /// Terminate a machine.
    Terminate {
        id: String,
        /// Wait until it is terminated.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long, e.g. `5m`.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Whether a machine may be terminated now.
    CanTerminate { id: String },
}

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Create a pool: Nimbus keeps its warm runners and scales it with queued jobs.
    Create(Box<PoolCreateArgs>),
    /// List a tenant's pools.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Show a pool and its status: desired, idle, busy and booting machines, queued jobs, the
    /// warm target in force and the autoscaler's last decisions.
    Show {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// What the autoscaler would do for the pool now, and why (a dry run: changes nothing).
    Plan {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Change a pool's settings; flags not given stay as they are.
    Update(Box<PoolUpdateArgs>),
    /// Delete a pool without live machines (`pool update --max 0` drains it first).
    Delete {
        #[arg(long)]
        tenant: String,
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct PoolCreateArgs {
    #[arg(long)]
    tenant: String,
    /// Provider name or id.
    #[arg(long)]
    provider: String,
    /// Pool name [default: the provider's name].
    #[arg(long)]
    name: Option<String>,
    /// Runner label the pool serves; repeat for several. A job goes to the pool with the
    /// fewest labels beyond the job's own.
    #[arg(long = "label", required = true)]
    labels: Vec<String>,
    /// Operating system [default: this host's].
    #[arg(long, value_parser = parse_os)]
    os: Option<Os>,
    /// CPU architecture [default: this host's].
    #[arg(long, value_parser = parse_arch)]
    arch: Option<Arch>,
    #[arg(long)]
    instance_type: Option<String>,
    #[arg(long = "image")]
    image_id: Option<String>,
    #[arg(long, value_parser = parse_image_type)]
    image_type: Option<ImageType>,
    /// A shell script file run on each machine as the last setup step.
    #[arg(long)]
    setup_script: Option<PathBuf>,
    /// Idle runners kept warm.
    #[arg(long, default_value_t = 0)]
    min_idle: u32,
    /// Most machines the pool may have.
    #[arg(long)]
    max: u32,
    /// An idle runner beyond the warm target goes after this long, e.g. `10m`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Replace machines older than this, e.g. `24h`.
    #[arg(long, value_parser = parse_duration)]
    max_age: Option<Duration>,
    /// Replace a runner after this many jobs (non-ephemeral pools).
    #[arg(long)]
    max_jobs: Option<u32>,
    /// Keep runners for more than one job (the default is one job per runner).
    #[arg(long)]
    no_ephemeral: bool,
    /// A warm target for a time window: `CRON[@ZONE]=MIN_IDLE`, e.g.
    /// `'* 8-18 * * mon-fri@Europe/Berlin=5'`; repeat for several (the last match wins).
    #[arg(long = "schedule", value_parser = parse_schedule)]
    schedules: Vec<Schedule>,
    /// What one machine costs per hour, in USD (for the budget and the status).
    #[arg(long)]
    hourly_cost: Option<f64>,
    /// Stop scaling up when this month's spend would pass this, in USD.
    #[arg(long)]
    monthly_budget: Option<f64>,
}

#[derive(Debug, Args)]
pub struct PoolUpdateArgs {
    #[arg(long)]
    tenant: String,
    name: String,
    /// Replace the labels; repeat for several.
    #[arg(long = "label")]
    labels: Vec<String>,
    #[arg(long)]
    instance_type: Option<String>,
    #[arg(long = "image")]
    image_id: Option<String>,
    #[arg(long)]
    setup_script: Option<PathBuf>,
    #[arg(long)]
    min_idle: Option<u32>,
    #[arg(long)]
    max: Option<u32>,
    #[arg(long, value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    #[arg(long, value_parser = parse_duration)]
    max_age: Option<Duration>,
    #[arg(long)]
    max_jobs: Option<u32>,
    #[arg(long, overrides_with = "no_ephemeral")]
    ephemeral: bool,
    #[arg(long, overrides_with = "ephemeral")]
    no_ephemeral: bool,
    /// Replace the schedules; repeat for several.
    #[arg(long = "schedule", value_parser = parse_schedule)]
    schedules: Vec<Schedule>,
    /// Remove every schedule.
    #[arg(long, conflicts_with = "schedules")]
    no_schedules: bool,
    #[arg(long)]
    hourly_cost: Option<f64>,
    #[arg(long)]
    monthly_budget: Option<f64>,
    /// Remove the monthly budget.
    #[arg(long, conflicts_with = "monthly_budget")]
    no_budget: bool,
}

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long)]
    provider: String,
    /// Operating system [default: this host's].
    #[arg(long, value_parser = parse_os)]
    os: Option<Os>,
    /// CPU architecture [default: this host's].
    #[arg(long, value_parser = parse_arch)]
    arch: Option<Arch>,
    /// Runner label; repeat for several.
    #[arg(long = "label")]
    labels: Vec<String>,
    #[arg(long)]
    instance_type: Option<String>,
    #[arg(long)]
    image_id: Option<String>,
    #[arg(long, value_parser = parse_image_type)]
    image_type: Option<ImageType>,
    /// A shell script file run on the machine as the last setup step.
    #[arg(long)]
    setup_script: Option<PathBuf>,
    /// The image is prebuilt: skip setup entirely.
    #[arg(long)]
    no_setup: bool,
    /// Wait until the machine is ready (or failed), showing its progress.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long, e.g. `30m`.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Replay stored events after this sequence number first (0 for all).
    #[arg(long)]
    after: Option<i64>,
    /// Only events of this machine.
    #[arg(long)]
    machine: Option<String>,
}

fn parse_os(s: &str) -> Result<Os, String> {
    s.parse()
}
fn parse_arch(s: &str) -> Result<Arch, String> {
    s.parse()
}
fn parse_image_type(s: &str) -> Result<ImageType, String> {
    s.parse()
}
fn parse_state(s: &str) -> Result<MachineState, String> {
    s.parse()
}
fn parse_provider_type(s: &str) -> Result<ProviderType, String> {
    s.parse()
}
fn parse_forge_type(s: &str) -> Result<ForgeType, String> {
    s.parse()
}
fn parse_schedule(s: &str) -> Result<Schedule, String> {
    s.parse()
        .map_err(|err: nimbus_types::SpecError| err.message)
}
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}, e.g. 90s, 5m, 1h"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration {s:?}, e.g. 90s, 5m, 1h")),
    }
}

/// A usage error as one line, like every other nimbusctl error: clap's message with its list of
/// missing arguments folded in, without the usage block (`--help` shows that).
pub fn usage_error_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let message = rendered
        .split("\n\nUsage:")
        .next()
        .unwrap_or_default()
        .split("\n\nFor more information")
        .next()
        .unwrap_or_default();
    let mut line = String::new();
    for part in message
        .lines()
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let part = part.strip_prefix("error: ").unwrap_or(part);
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { ", " });
        }
        line.push_str(part);
    }
    line
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Noun::Completions { shell } = &cli.command {
        let mut cmd = Cli::command();
        clap_complete::generate(*shell, &mut cmd, "nimbusctl", &mut std::io::stdout());
        return Ok(());
    }
    if let Noun::Sim(args) = &cli.command {
        let mut args = (**args).clone();
        args.json = cli.json;
        let mut out = std::io::stdout().lock();
        return nimbus_sim::cli::run(&args, &mut out);
    }
    if let Noun::Registry(cmd) = &cli.command {
        let mut out = std::io::stdout().lock();
        return registry::run(cmd, cli.json, &mut out);
    }
    if let Noun::Manpages { dir } = &cli.command {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        clap_mangen::generate_to(Cli::command(), dir)
            .with_context(|| format!("cannot write man pages to {}", dir.display()))?;
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let token = match cli.token.clone() {
        Some(token) => Some(token),
        None => default_token(),
    };
    let client = Client::new(&cli.url, token)?;
    let printer = Printer::new(cli.json);
    runtime.block_on(dispatch(&client, &printer, cli.command))
}

/// The local admin token, when this user can read it: convenient on the server's own host.
fn default_token() -> Option<String> {
    let path = dirs::config_dir()?.join("nimbus/admin-token");
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

async fn dispatch(client: &Client, printer: &Printer, command: Noun) -> anyhow::Result<()> {
    match command {
        Noun::Tenant(cmd) => tenant(client, printer, cmd).await,
        Noun::Provider(cmd) => provider(client, printer, cmd).await,
        Noun::Forge(cmd) => forge(client, printer, cmd).await,
        Noun::Demand(cmd) => demand(client, printer, cmd).await,
        Noun::Machine(cmd) => machine(client, printer, cmd).await,
        Noun::Pool(cmd) => pool(client, printer, cmd).await,
        Noun::Cost {
            tenant,
            pool,
            since,
            job,
        } => {
            let mut query = Vec::new();
            let job_id = job.clone().filter(|id| !id.is_empty());
            for (key, value) in [
                ("tenant", tenant),
                ("pool", pool),
                ("since", since),
                ("job", job_id),
            ] {
                if let Some(value) = value {
                    query.push(format!("{key}={}", seg(&value)));
                }
            }
            let base = if job.is_some() {
                "/v1/costs/jobs"
            } else {
                "/v1/costs"
            };
            let path = if query.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", query.join("&"))
            };
            if job.is_some() {
                let report: JobCostReport = client.get(&path).await?;
                printer.job_costs(&report)
            } else {
                let report: CostReport = client.get(&path).await?;
                printer.costs(&report)
            }
        }
        Noun::Events(args) => events(client, printer, args).await,
        Noun::Agent(cmd) => agent(client, printer, cmd).await,
        Noun::Sim(_) | Noun::Registry(_) | Noun::Completions { .. } | Noun::Manpages { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

fn tenant_query(tenant: &Option<String>) -> String {
    tenant
        .as_ref()
        .map(|t| format!("?tenant={}", seg(t)))
        .unwrap_or_default()
}

async fn agent(client: &Client, printer: &Printer, cmd: AgentCmd) -> anyhow::Result<()> {
    match cmd {
        AgentCmd::Token(AgentTokenCmd::Create { name, tenant, ttl }) => {
            let created: serde_json::Value = client
                .post(
                    "/v1/agents/enrolment-tokens",
                    &serde_json::json!({"name": name, "tenant": tenant, "ttl_secs": ttl.as_secs()}),
                )
                .await?;
            printer.enrolment_token(&created)
        }
        AgentCmd::List { tenant } => {
            let agents: Vec<serde_json::Value> = client
                .get(&format!("/v1/agents{}", tenant_query(&tenant)))
                .await?;
            printer.agents(&agents)
        }
        AgentCmd::Delete { name, tenant } => {
            client
                .delete_empty(&format!(
                    "/v1/agents/{}{}",
                    seg(&name),
                    tenant_query(&tenant)
                ))
                .await?;
            printer.done(&format!("agent {name} deleted"))
        }
        AgentCmd::Power {
            name,
            bmc,
            action,
            tenant,
        } => {
            let op = match action.as_str() {
                "status" => serde_json::json!({"op": "power_state"}),
                action => serde_json::json!({"op": "power", "action": action}),
            };
            agent_op(client, printer, &name, &bmc, op, &tenant).await
        }
        AgentCmd::Boot {
            name,
            bmc,
            target,
            tenant,
        } => {
            let op = serde_json::json!({"op": "boot_once", "target": target});
            agent_op(client, printer, &name, &bmc, op, &tenant).await
        }
    }
}

async fn agent_op(
    client: &Client,
    printer: &Printer,
    name: &str,
    bmc: &str,
    op: serde_json::Value,
    tenant: &Option<String>,
) -> anyhow::Result<()> {
    let result: serde_json::Value = client
        .post(
            &format!(
                "/v1/agents/{}/operations{}",
                seg(name),
                tenant_query(tenant)
            ),
            &serde_json::json!({"bmc": bmc, "op": op}),
        )
        .await?;
    let outcome = &result["outcome"];
    if outcome["result"] == "failed" {
        bail!(
            "agent {name}: bmc {bmc}: {} ({})",
            outcome["message"].as_str().unwrap_or("failed"),
            outcome["kind"].as_str().unwrap_or("refused")
        );
    }
    printer.agent_op(&result)
}

async fn tenant(client: &Client, printer: &Printer, cmd: TenantCmd) -> anyhow::Result<()> {
    match cmd {
        TenantCmd::Create { name } => {
            let tenant: Tenant = client.post("/v1/tenants", &CreateTenant { name }).await?;
            printer.tenants(&[tenant])
        }
        TenantCmd::List => {
            let tenants: Vec<Tenant> = client.get("/v1/tenants").await?;
            printer.tenants(&tenants)
        }
        TenantCmd::Show { name } => {
            let tenant: Tenant = client.get(&format!("/v1/tenants/{}", seg(&name))).await?;
            printer.tenants(&[tenant])
        }
        TenantCmd::Budget { name, set, clear } => {
            let path = format!("/v1/tenants/{}/budget", seg(&name));
            let view: BudgetView = if set.is_some() || clear {
                client.put(&path, &SetBudget { monthly_usd: set }).await?
            } else {
                client.get(&path).await?
            };
            printer.budget(&view)
        }
        TenantCmd::Token { name } => {
            let token: TenantToken = client
                .post(
                    &format!("/v1/tenants/{}/tokens", seg(&name)),
                    &serde_json::json!({}),
                )
                .await?;
            printer.token(&token)
        }
    }
}

async fn provider(client: &Client, printer: &Printer, cmd: ProviderCmd) -> anyhow::Result<()> {
    match cmd {
        ProviderCmd::Add {
            tenant,
            provider_type,
            name,
            config,
            credentials,
        } => {
            let (config, found) = match config.as_deref() {
                Some(path) => {
                    let base = path.parent().unwrap_or(Path::new("."));
                    let (config, found) = split_secrets(provider_type, read_settings(path)?, base)?;
                    (Some(config), found)
                }
                None => (None, serde_json::Map::new()),
            };
            let mut secrets = match credentials.as_deref().map(read_settings).transpose()? {
                Some(serde_json::Value::Object(map)) => map,
                Some(_) => bail!("the credentials file must hold a table of settings"),
                None => serde_json::Map::new(),
            };
            merge_secrets(&mut secrets, found);
            let body = CreateProvider {
                name,
                provider_type,
                config,
                credentials: (!secrets.is_empty()).then_some(serde_json::Value::Object(secrets)),
            };
            let provider: ProviderView = client
                .post(&format!("/v1/tenants/{}/providers", seg(&tenant)), &body)
                .await?;
            printer.providers(&[provider])
        }
        ProviderCmd::List { tenant } => {
            let path = match tenant {
                Some(tenant) => format!("/v1/providers?tenant={}", seg(&tenant)),
                None => "/v1/providers".to_owned(),
            };
            let providers: Vec<ProviderView> = client.get(&path).await?;
            printer.providers(&providers)
        }
        ProviderCmd::Show { tenant, name } => {
            let provider: ProviderView = client
                .get(&format!(
                    "/v1/tenants/{}/providers/{}",
                    seg(&tenant),
                    seg(&name)
                ))
                .await?;
            printer.providers(&[provider])
        }
        ProviderCmd::Remove { tenant, name } => {
            client
                .delete_empty(&format!(
                    "/v1/tenants/{}/providers/{}",
                    seg(&tenant),
                    seg(&name)
                ))
                .await?;
            printer.done(&format!("removed provider {name}"))
        }
    }
}

async fn pool(client: &Client, printer: &Printer, cmd: PoolCmd) -> anyhow::Result<()> {
    match cmd {
        PoolCmd::Create(args) => {
            let tenant = args.tenant.clone();
            let body = pool_create_body(*args)?;
            let view: PoolView = client
                .post(&format!("/v1/tenants/{}/pools", seg(&tenant)), &body)
                .await?;
            printer.pools(&[view])
        }
        PoolCmd::List { tenant } => {
            let list: PoolList = client
                .get(&format!("/v1/tenants/{}/pools", seg(&tenant)))
                .await?;
            printer.pools(&list.pools)
        }
        PoolCmd::Show { tenant, name } => {
            let view: PoolView = client
                .get(&format!(
                    "/v1/tenants/{}/pools/{}",
                    seg(&tenant),
                    seg(&name)
                ))
                .await?;
            printer.pool_detail(&view)
        }
        PoolCmd::Plan { tenant, name } => {
            let plan: PoolPlan = client
                .get(&format!(
                    "/v1/tenants/{}/pools/{}/plan",
                    seg(&tenant),
                    seg(&name)
                ))
                .await?;
            printer.pool_plan(&plan)
        }
        PoolCmd::Update(args) => {
            let body = pool_update_body(&args)?;
            let view: PoolView = client
                .patch(
                    &format!(
                        "/v1/tenants/{}/pools/{}",
                        seg(&args.tenant),
                        seg(&args.name)
                    ),
                    &body,
                )
                .await?;
            printer.pools(&[view])
        }
        PoolCmd::Delete { tenant, name } => {
            client
                .delete_empty(&format!(
                    "/v1/tenants/{}/pools/{}",
                    seg(&tenant),
                    seg(&name)
                ))
                .await?;
            printer.done(&format!("deleted pool {name}"))
        }
    }
}

fn read_script(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the setup script {}", path.display()))
}

fn pool_create_body(args: PoolCreateArgs) -> anyhow::Result<CreatePool> {
    let host = |what: &str| anyhow::anyhow!("cannot tell this host's {what}; pass --{what}");
    Ok(CreatePool {
        name: args.name.unwrap_or_else(|| args.provider.clone()),
        provider: args.provider,
        labels: args.labels,
        os: match args.os {
            Some(os) => os,
            None => Os::host().ok_or_else(|| host("os"))?,
        },
        arch: match args.arch {
            Some(arch) => arch,
            None => Arch::host().ok_or_else(|| host("arch"))?,
        },
        instance_type: args.instance_type,
        image_id: args.image_id,
        image_type: args.image_type.unwrap_or_default(),
        setup_script: args.setup_script.as_deref().map(read_script).transpose()?,
        min_idle: args.min_idle,
        max: args.max,
        idle_timeout_secs: args.idle_timeout.as_secs(),
        max_age_secs: args.max_age.map(|age| age.as_secs()),
        max_jobs: args.max_jobs,
        ephemeral: !args.no_ephemeral,
        schedules: args.schedules,
        hourly_cost: args.hourly_cost,
        monthly_budget: args.monthly_budget,
    })
}

fn pool_update_body(args: &PoolUpdateArgs) -> anyhow::Result<UpdatePool> {
    Ok(UpdatePool {
        labels: (!args.labels.is_empty()).then(|| args.labels.clone()),
        instance_type: args.instance_type.clone().map(Some),
        image_id: args.image_id.clone().map(Some),
        setup_script: match &args.setup_script {
            Some(path) => Some(Some(read_script(path)?)),
            None => None,
        },
        min_idle: args.min_idle,
        max: args.max,
        idle_timeout_secs: args.idle_timeout.map(|t| t.as_secs()),
        max_age_secs: args.max_age.map(|age| Some(age.as_secs())),
        max_jobs: args.max_jobs.map(Some),
        ephemeral: match (args.ephemeral, args.no_ephemeral) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        schedules: if args.no_schedules {
            Some(Vec::new())
        } else {
            (!args.schedules.is_empty()).then(|| args.schedules.clone())
        },
        hourly_cost: args.hourly_cost.map(Some),
        monthly_budget: if args.no_budget {
            Some(None)
        } else {
            args.monthly_budget.map(Some)
        },
        ..UpdatePool::default()
    })
}

async fn forge(client: &Client, printer: &Printer, cmd: ForgeCmd) -> anyhow::Result<()> {
    match cmd {
        ForgeCmd::Set(args) => {
            let body = forge_body(&args)?;
            let forge: ForgeShow = client
                .put(&format!("/v1/tenants/{}/forge", seg(&args.tenant)), &body)
                .await?;
            printer.forge(&forge, client.base())
        }
        ForgeCmd::Show { tenant } => {
            let forge: ForgeShow = client
                .get(&format!("/v1/tenants/{}/forge", seg(&tenant)))
                .await?;
            printer.forge(&forge, client.base())
        }
    }
}

/// The `PUT /v1/tenants/{t}/forge` body for `forge set`: the settings and secrets files, then
/// the flags on top. A private key is sent as it is; a token and a webhook secret are trimmed
/// (files usually end in a newline).
fn forge_body(args: &ForgeSetArgs) -> anyhow::Result<SetForge> {
    use serde_json::{Map, Value};
    let table = |path: Option<&Path>, what: &str| -> anyhow::Result<Map<String, Value>> {
        match path.map(read_settings).transpose()? {
            None => Ok(Map::new()),
            Some(Value::Object(map)) => Ok(map),
            Some(_) => bail!("the {what} file must hold a table of settings"),
        }
    };
    let read_secret = |path: &Path, flag: &str, trim: bool| -> anyhow::Result<String> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
        let text = if trim { text.trim().to_owned() } else { text };
        if text.trim().is_empty() {
            bail!("{flag}: {} is empty", path.display());
        }
        Ok(text)
    };
    let mut config = table(args.config.as_deref(), "--config")?;
    let mut credentials = table(args.credentials.as_deref(), "--credentials")?;
    if let Some(repo) = &args.repo {
        config.insert("repo".into(), Value::from(repo.clone()));
    }
    if let Some(api_url) = &args.api_url {
        config.insert("api_url".into(), Value::from(api_url.clone()));
    }
    for (key, value) in [("group_id", args.group_id), ("project_id", args.project_id)] {
        if let Some(value) = value {
            config.insert(key.into(), Value::from(value));
        }
    }
    if let Some(runner_type) = &args.runner_type {
        config.insert("runner_type".into(), Value::from(runner_type.clone()));
    }
    if !args.projects.is_empty() {
        config.insert("projects".into(), Value::from(args.projects.clone()));
    }
    if let Some(url) = &args.forge_url {
        config.insert("url".into(), Value::from(url.clone()));
    }
    if let Some(registration) = &args.registration {
        config.insert("registration".into(), Value::from(registration.clone()));
    }
    if let Some(app_id) = args.app_id {
        config.insert("app_id".into(), Value::from(app_id));
    }
    if let Some(installation_id) = args.installation_id {
        config.insert("installation_id".into(), Value::from(installation_id));
    }
    if let Some(path) = &args.private_key_file {
        let key = read_secret(path, "--private-key-file", false)?;
        credentials.remove("token");
        credentials.insert("private_key".into(), Value::from(key));
    }
    if let Some(path) = &args.token_file {
        let token = read_secret(path, "--token-file", true)?;
        credentials.remove("private_key");
        credentials.insert("token".into(), Value::from(token));
    }
    if let Some(path) = &args.webhook_secret_file {
        let secret = read_secret(path, "--webhook-secret-file", true)?;
        credentials.insert("webhook_secret".into(), Value::from(secret));
    }
    Ok(SetForge {
        forge_type: args.forge_type,
        org: args.org.clone(),
        config: (!config.is_empty()).then_some(Value::Object(config)),
        credentials: (!credentials.is_empty()).then_some(Value::Object(credentials)),
    })
}

async fn demand(client: &Client, printer: &Printer, cmd: DemandCmd) -> anyhow::Result<()> {
    match cmd {
        DemandCmd::List { tenant } => {
            let path = match tenant {
                Some(tenant) => format!("/v1/demand?tenant={}", seg(&tenant)),
                None => "/v1/demand".to_owned(),
            };
            let rows: Vec<DemandRow> = client.get(&path).await?;
            printer.demand(&rows)
        }
    }
}

async fn machine(client: &Client, printer: &Printer, cmd: MachineCmd) -> anyhow::Result<()> {
    match cmd {
        MachineCmd::Provision(args) => {
            let setup_script = match &args.setup_script {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                None => None,
            };
            let body = ProvisionMachine {
                tenant: args.tenant,
                provider: args.provider,
                os: match args.os {
                    Some(os) => os,
                    None => Os::host().context("cannot tell this host's OS; pass --os")?,
                },
                arch: match args.arch {
                    Some(arch) => arch,
                    None => {
                        Arch::host().context("cannot tell this host's architecture; pass --arch")?
                    }
                },
                labels: args.labels,
                instance_type: args.instance_type,
                image_id: args.image_id,
                image_type: args.image_type.unwrap_or_default(),
                setup_script,
                skip_setup: args.no_setup,
            };
            let machine: Machine = client.post("/v1/machines", &body).await?;
            if !args.wait {
                return printer.machines(&[machine]);
            }
            let machine = wait_for(client, printer, machine, args.timeout, |state| {
                matches!(state, MachineState::Ready | MachineState::Running)
            })
            .await?;
            printer.machines(std::slice::from_ref(&machine))?;
            if machine.state == MachineState::Failed {
                bail!(
                    "machine {} failed: {}",
                    machine.id,
                    machine.error.as_deref().unwrap_or("no reason recorded")
                );
            }
            Ok(())
        }
        MachineCmd::List {
            tenant,
            provider,
            state,
            all,
        } => {
            let mut query = Vec::new();
            if let Some(tenant) = tenant {
                query.push(format!("tenant={}", seg(&tenant)));
            }
            if let Some(provider) = provider {
                query.push(format!("provider={}", seg(&provider)));
            }
            if let Some(state) = state {
                query.push(format!("state={state}"));
            }
            if all {
                query.push("include_terminated=true".into());
            }
            let path = if query.is_empty() {
                "/v1/machines".to_owned()
            } else {
                format!("/v1/machines?{}", query.join("&"))
            };
            let list: MachineList = client.get(&path).await?;
            printer.machines(&list.machines)
        }
        MachineCmd::Show { id } => {
            let machine: Machine = client.get(&format!("/v1/machines/{}", seg(&id))).await?;
            let history: Vec<StateChange> = client
                .get(&format!("/v1/machines/{}/history", seg(&id)))
                .await?;
            printer.machine_detail(&machine, &history)
        }
        MachineCmd::Terminate { id, wait, timeout } => {
            let machine: Machine = client.delete(&format!("/v1/machines/{}", seg(&id))).await?;
            if !wait {
                return printer.machines(&[machine]);
            }
            let machine = wait_for(client, printer, machine, timeout, |state| {
                state == MachineState::Terminated
            })
            .await?;
            printer.machines(std::slice::from_ref(&machine))?;
            if machine.state != MachineState::Terminated {
                bail!(
                    "machine {} ended {} instead of terminated: {}",
                    machine.id,
                    machine.state,
                    machine.error.as_deref().unwrap_or("no reason recorded")
                );
            }
            Ok(())
        }
        MachineCmd::CanTerminate { id } => {
            let answer: CanTerminate = client
                .get(&format!("/v1/machines/{}/can-terminate", seg(&id)))
                .await?;
            printer.can_terminate(&answer)
        }
    }
}

/// Polls a machine until `done(state)` or a final state, printing each state change to stderr.
async fn wait_for(
    client: &Client,
    printer: &Printer,
    mut machine: Machine,
    timeout: Duration,
    done: impl Fn(MachineState) -> bool,
) -> anyhow::Result<Machine> {
    let started = Instant::now();
    let mut last = None;
    loop {
        if last != Some(machine.state) {
            printer.progress(&machine, started.elapsed());
            last = Some(machine.state);
        }
        if done(machine.state)
            || matches!(
                machine.state,
                MachineState::Failed | MachineState::Terminated
            )
        {
            return Ok(machine);
        }
        if started.elapsed() >= timeout {
            bail!(
                "gave up waiting after {}s; machine {} is still {}",
                timeout.as_secs(),
                machine.id,
                machine.state
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        machine = client.get(&format!("/v1/machines/{}", machine.id)).await?;
    }
}

async fn events(client: &Client, printer: &Printer, args: EventsArgs) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if let Some(after) = args.after {
        query.push(format!("after={after}"));
    }
    if let Some(machine) = &args.machine {
        query.push(format!("machine={}", seg(machine)));
    }
    let path = if query.is_empty() {
        "/v1/events".to_owned()
    } else {
        format!("/v1/events?{}", query.join("&"))
    };
    let mut stdout = std::io::stdout();
    client
        .follow_events(&path, |event| {
            printer.event(&mut stdout, &event)?;
            stdout.flush()?;
            Ok(())
        })
        .await
}

/// Reads a settings file: TOML, or JSON when the name ends in `.json`.
fn read_settings(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path.extension().is_some_and(|ext| ext == "json") {
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
    } else {
        let value: toml::Value = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        serde_json::to_value(value).context("cannot convert TOML to JSON")
    }
}

/// Moves secrets out of a provider's settings file so they travel as credentials (sealed by the
/// server, never shown again): an ssh host's `key_file` is read and filed under `keys` by the
/// host's `address:port`; aws access keys, a hetzner `api_token` (and `ssh_private_key_file`)
/// move as they are.
/// Relative paths are relative to the settings file.
fn split_secrets(
    provider_type: ProviderType,
    mut config: serde_json::Value,
    base: &Path,
) -> anyhow::Result<(
    serde_json::Value,
    serde_json::Map<String, serde_json::Value>,
)> {
    use serde_json::Value;
    let mut secrets = serde_json::Map::new();
    let read_key = |field: &str, raw: &Value| -> anyhow::Result<Value> {
        let path = raw
            .as_str()
            .with_context(|| format!("{field} must be a file path"))?;
        let path = base.join(path);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{field}: cannot read {}", path.display()))?;
        Ok(Value::String(text))
    };
    match provider_type {
        ProviderType::Ssh | ProviderType::Baremetal => {
            let mut keys = serde_json::Map::new();
            let mut bmc_passwords = serde_json::Map::new();
            if let Some(hosts) = config.get_mut("hosts").and_then(Value::as_array_mut) {
                for (idx, host) in hosts.iter_mut().enumerate() {
                    let Some(table) = host.as_object_mut() else {
                        continue;
                    };
                    let address = table.get("address").and_then(Value::as_str).unwrap_or("");
                    let port = table.get("port").and_then(Value::as_u64).unwrap_or(22);
                    let host_id = if address.contains(':') {
                        format!("[{address}]:{port}")
                    } else {
                        format!("{address}:{port}")
                    };
                    // Bare metal: the BMC password is a credential too.
                    if let Some(password) = table
                        .get_mut("bmc")
                        .and_then(Value::as_object_mut)
                        .and_then(|bmc| bmc.remove("password"))
                    {
                        bmc_passwords.insert(host_id.clone(), password);
                    }
                    let Some(raw) = table.remove("key_file") else {
                        continue;
                    };
                    let key = read_key(&format!("hosts[{idx}].key_file"), &raw)?;
                    keys.insert(host_id, key);
                }
            }
            if !keys.is_empty() {
                secrets.insert("keys".into(), Value::Object(keys));
            }
            if !bmc_passwords.is_empty() {
                secrets.insert("bmc_passwords".into(), Value::Object(bmc_passwords));
            }
        }
        ProviderType::Aws | ProviderType::Hetzner => {
            if let Some(table) = config.as_object_mut() {
                for field in [
                    "access_key_id",
                    "secret_access_key",
                    "session_token",
                    "api_token",
                    "ssh_private_key",
                ] {
                    if let Some(value) = table.remove(field) {
                        secrets.insert(field.into(), value);
                    }
                }
                if let Some(raw) = table.remove("ssh_private_key_file") {
                    secrets.insert(
                        "ssh_private_key".into(),
                        read_key("ssh_private_key_file", &raw)?,
                    );
                }
            }
        }
        _ => {}
    }
    Ok((config, secrets))
}

/// Adds secrets found in the settings file to those of the credentials file (which win).
fn merge_secrets(
    into: &mut serde_json::Map<String, serde_json::Value>,
    found: serde_json::Map<String, serde_json::Value>,
) {
    for (key, value) in found {
        match (into.get_mut(&key), value) {
            (Some(serde_json::Value::Object(existing)), serde_json::Value::Object(extra)) => {
                for (k, v) in extra {
                    existing.entry(k).or_insert(v);
                }
            }
            (Some(_), _) => {}
            (None, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Percent-encodes a path segment or query value.
fn seg(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn man_pages_are_generated_for_every_command() {
        let dir = tempfile::tempdir().unwrap();
        run(Cli::parse_from([
            "nimbusctl",
            "manpages",
            dir.path().to_str().unwrap(),
        ]))
        .unwrap();
        for page in [
            "nimbusctl.1",
            "nimbusctl-machine.1",
            "nimbusctl-machine-provision.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
            assert!(text.contains(".TH"), "{page}");
        }
    }

    #[test]
    fn secrets_leave_the_settings_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("id_ed25519"),
            "-----BEGIN OPENSSH PRIVATE KEY-----",
        )
        .unwrap();
        let config = serde_json::json!({"hosts": [
            {"address": "10.0.0.5", "user": "ci", "key_file": "id_ed25519", "os": "linux", "arch": "x86_64"},
            {"address": "::1", "port": 2222, "user": "ci", "key_file": "id_ed25519", "os": "linux", "arch": "x86_64"},
        ]});
        let (config, secrets) = split_secrets(ProviderType::Ssh, config, dir.path()).unwrap();
        assert!(config["hosts"][0].get("key_file").is_none());
        assert!(
            secrets["keys"]["10.0.0.5:22"]
                .as_str()
                .unwrap()
                .contains("PRIVATE KEY")
        );
        assert!(secrets["keys"]["[::1]:2222"].is_string());

        let config = serde_json::json!({"hosts": [
            {"address": "10.0.1.5", "user": "ci", "key_file": "id_ed25519", "os": "linux", "arch": "x86_64",
             "bmc": {"kind": "ipmi", "address": "10.0.0.5", "username": "nimbus", "password": "s3cr3t"}},
        ], "boot": "pxe"});
        let (config, secrets) = split_secrets(ProviderType::Baremetal, config, dir.path()).unwrap();
        assert!(config["hosts"][0]["bmc"].get("password").is_none());
        assert_eq!(config["hosts"][0]["bmc"]["username"], "nimbus");
        assert_eq!(secrets["bmc_passwords"]["10.0.1.5:22"], "s3cr3t");
        assert!(secrets["keys"]["10.0.1.5:22"].is_string());

        let config = serde_json::json!({"region": "eu-west-1", "access_key_id": "AKIA", "secret_access_key": "s3cr3t"});
        let (config, secrets) = split_secrets(ProviderType::Aws, config, dir.path()).unwrap();
        assert_eq!(config, serde_json::json!({"region": "eu-west-1"}));
        assert_eq!(secrets["secret_access_key"], "s3cr3t");

        let config = serde_json::json!({"locations": ["fsn1"], "api_token": "hcloud-s3cr3t", "ssh_private_key_file": "id_ed25519"});
        let (config, secrets) = split_secrets(ProviderType::Hetzner, config, dir.path()).unwrap();
        assert_eq!(config, serde_json::json!({"locations": ["fsn1"]}));
        assert_eq!(secrets["api_token"], "hcloud-s3cr3t");
        assert!(
            secrets["ssh_private_key"]
                .as_str()
                .unwrap()
                .contains("PRIVATE KEY")
        );

        let err = split_secrets(
            ProviderType::Ssh,
            serde_json::json!({"hosts": [{"address": "a", "key_file": "missing"}]}),
            dir.path(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("hosts[0].key_file"), "{err:#}");
    }

    fn forge_set(args: &[&str]) -> Result<ForgeSetArgs, clap::Error> {
        let mut argv = vec![
            "nimbusctl",
            "forge",
            "set",
            "--tenant",
            "acme",
            "--type",
            "github",
            "--org",
            "acme-corp",
        ];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Noun::Forge(ForgeCmd::Set(args)) => Ok(*args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn forge_set_takes_gitlab_settings() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("glpat.txt");
        std::fs::write(&token, "glpat-abc\n").unwrap();
        let mut args = forge_set(&[
            "--api-url",
            "https://gitlab.example.com",
            "--group-id",
            "42",
            "--project",
            "7",
            "--project",
            "8",
            "--token-file",
            token.to_str().unwrap(),
        ])
        .unwrap();
        args.forge_type = ForgeType::Gitlab;
        let body = forge_body(&args).unwrap();
        assert_eq!(body.forge_type, ForgeType::Gitlab);
        assert_eq!(
            body.config.unwrap(),
            serde_json::json!({"api_url": "https://gitlab.example.com", "group_id": 42, "projects": [7, 8]})
        );
        assert_eq!(body.credentials.unwrap()["token"], "glpat-abc");
    }

    #[test]
    fn forge_set_takes_forgejo_settings() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("forgejo.txt");
        std::fs::write(&token, "0123abcd\n").unwrap();
        let mut argv = vec![
            "nimbusctl",
            "forge",
            "set",
            "--tenant",
            "acme",
            "--type",
            "forgejo",
            "--org",
            "acme-corp",
            "--forge-url",
            "https://code.example.org",
            "--repo",
            "app",
            "--registration",
            "token",
            "--token-file",
        ];
        argv.push(token.to_str().unwrap());
        let args = match Cli::try_parse_from(argv).unwrap().command {
            Noun::Forge(ForgeCmd::Set(args)) => *args,
            other => panic!("parsed as {other:?}"),
        };
        let body = forge_body(&args).unwrap();
        assert_eq!(body.forge_type, ForgeType::Forgejo);
        assert_eq!(
            body.config.unwrap(),
            serde_json::json!({"url": "https://code.example.org", "repo": "app", "registration": "token"})
        );
        assert_eq!(body.credentials.unwrap()["token"], "0123abcd");
    }

    #[test]
    fn forge_set_builds_the_request_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n";
        std::fs::write(path("app.pem"), pem).unwrap();
        std::fs::write(path("hook.secret"), "  hook-s3cret\n").unwrap();
        std::fs::write(path("pat.txt"), "ghp_abc\n").unwrap();
        std::fs::write(path("empty.txt"), "\n").unwrap();

        let args = forge_set(&[
            "--repo",
            "app",
            "--app-id",
            "12",
            "--installation-id",
            "34",
            "--private-key-file",
            &path("app.pem"),
            "--webhook-secret-file",
            &path("hook.secret"),
            "--api-url",
            "https://ghe.example/api/v3",
        ])
        .unwrap();
        let body = serde_json::to_value(forge_body(&args).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "type": "github",
                "org": "acme-corp",
                "config": {"repo": "app", "api_url": "https://ghe.example/api/v3", "app_id": 12, "installation_id": 34},
                // The key exactly as in the file; the secret trimmed.
                "credentials": {"private_key": pem, "webhook_secret": "hook-s3cret"},
            })
        );

        let args = forge_set(&["--token-file", &path("pat.txt")]).unwrap();
        let body = serde_json::to_value(forge_body(&args).unwrap()).unwrap();
        assert_eq!(body["credentials"], serde_json::json!({"token": "ghp_abc"}));
        assert!(body["config"].is_null(), "{body}");

        // A settings/secrets file still works (other forge types), the flags win.
        std::fs::write(
            path("creds.toml"),
            "token = \"old\"\nwebhook_secret = \"w\"\n",
        )
        .unwrap();
        std::fs::write(path("config.json"), r#"{"repo": "other", "extra": 1}"#).unwrap();
        let args = forge_set(&[
            "--credentials",
            &path("creds.toml"),
            "--config",
            &path("config.json"),
            "--token-file",
            &path("pat.txt"),
            "--repo",
            "app",
        ])
        .unwrap();
        let body = serde_json::to_value(forge_body(&args).unwrap()).unwrap();
        assert_eq!(
            body["credentials"],
            serde_json::json!({"token": "ghp_abc", "webhook_secret": "w"})
        );
        assert_eq!(
            body["config"],
            serde_json::json!({"repo": "app", "extra": 1})
        );

        for (flags, expect) in [
            (
                vec!["--token-file", "/nonexistent/pat"],
                "--token-file: cannot read /nonexistent/pat",
            ),
            (vec!["--token-file", &path("empty.txt")], "is empty"),
        ] {
            let err = forge_body(&forge_set(&flags).unwrap()).unwrap_err();
            assert!(format!("{err:#}").contains(expect), "{flags:?}: {err:#}");
        }
    }

    #[test]
    fn forge_set_refuses_missing_or_conflicting_flags() {
        for (flags, expect) in [
            (vec![], "--private-key-file"),
            (
                vec!["--app-id", "1", "--private-key-file", "k"],
                "--installation-id",
            ),
            (
                vec!["--app-id", "1", "--installation-id", "2"],
                "--private-key-file",
            ),
            (
                vec![
                    "--app-id",
                    "1",
                    "--installation-id",
                    "2",
                    "--private-key-file",
                    "k",
                    "--token-file",
                    "t",
                ],
                "cannot be used with",
            ),
            (
                vec!["--token-file", "t", "--app-id", "1"],
                "cannot be used with",
            ),
            (
                vec!["--token-file", "t", "--app-id", "x"],
                "invalid value 'x'",
            ),
        ] {
            let err = forge_set(&flags).expect_err(&format!("{flags:?} was accepted"));
            let line = usage_error_line(&err);
            assert!(
                !line.contains('\n') && !line.starts_with("error"),
                "{flags:?}: {line:?}"
            );
            assert!(
                line.contains(expect),
                "{flags:?}: expected {expect:?} in {line:?}"
            );
        }
    }

    #[test]
    fn usage_errors_are_one_line() {
        let err = Cli::try_parse_from([
            "nimbusctl",
            "forge",
            "set",
            "--tenant",
            "t",
            "--type",
            "github",
            "--org",
            "o",
            "--app-id",
            "1",
        ])
        .unwrap_err();
        let line = usage_error_line(&err);
        assert_eq!(
            line,
            "the following required arguments were not provided: --installation-id <INSTALLATION_ID>, \
             <--private-key-file <PRIVATE_KEY_FILE>|--token-file <TOKEN_FILE>|--credentials <CREDENTIALS>>"
        );
    }

    #[test]
    fn durations_and_segments() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5 minutes").is_err());
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }
}
