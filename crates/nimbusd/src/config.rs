//! Command-line flags and environment (raw input that only parses), the optional TOML file, and
//! the resolved [`Settings`] that may fail at start-up for environment reasons.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "nimbusd",
    version,
    about = "Nimbus daemon: elastic CI runner machines on demand"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "NIMBUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: REST API, metrics and reconcilers.
    Server(ServerArgs),
    /// Apply the store's migrations and exit.
    Migrate(ServerArgs),
    /// The bare-metal agent's tools, run on a provider's host.
    #[command(subcommand)]
    Agent(AgentCommand),
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Print this machine's hardware inventory as JSON (CPU, memory, disks, NICs, OS, arch).
    Inventory,
    /// Run the agent: enrol once, heartbeat, carry out BMC operations, serve /metrics.
    Run(AgentRunArgs),
}

#[derive(Clone, Debug, Args)]
pub struct AgentRunArgs {
    /// The control plane's URL, e.g. `https://nimbus.example:8720`.
    #[arg(long, env = "NIMBUS_AGENT_SERVER")]
    pub server: String,
    /// The one-time enrolment token (`nimbusctl agent token create`); only needed until the
    /// agent has enrolled. Prefer --enrolment-token-file.
    #[arg(long, env = "NIMBUS_ENROLMENT_TOKEN", hide_env_values = true)]
    pub enrolment_token: Option<String>,
    /// A file holding the one-time enrolment token.
    #[arg(
        long,
        env = "NIMBUS_ENROLMENT_TOKEN_FILE",
        conflicts_with = "enrolment_token"
    )]
    pub enrolment_token_file: Option<PathBuf>,
    /// Where the agent keeps its credential (`agent-credential.json`, mode 0600)
    /// [default: $XDG_DATA_HOME/nimbus/agent].
    #[arg(long, env = "NIMBUS_AGENT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The agent's TOML file: the BMCs it drives (`[[bmcs]]` with name, kind, address,
    /// username, password_file).
    #[arg(long, env = "NIMBUS_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where `/metrics` answers (keep it on loopback).
    #[arg(long, env = "NIMBUS_AGENT_METRICS_LISTEN", default_value = crate::agent::DEFAULT_METRICS_LISTEN)]
    pub metrics_listen: SocketAddr,
    /// Time between heartbeats, e.g. `15s`.
    #[arg(long, env = "NIMBUS_AGENT_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration, default_value = "15s")]
    pub heartbeat_interval: Duration,
    /// How long one poll for operations waits at the control plane (at most 30s).
    #[arg(long, env = "NIMBUS_AGENT_POLL_WAIT", value_parser = humantime::parse_duration, default_value = "20s")]
    pub poll_wait: Duration,
}

#[derive(Clone, Debug, Default, Args)]
pub struct ServerArgs {
    /// TOML configuration file [default: $XDG_CONFIG_HOME/nimbus/nimbusd.toml if it exists].
    #[arg(long, env = "NIMBUS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8720].
    #[arg(long, env = "NIMBUS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory (holds nimbus.db) [default: $XDG_DATA_HOME/nimbus].
    #[arg(long, env = "NIMBUS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Configuration directory (admin-token, secret.key) [default: $XDG_CONFIG_HOME/nimbus].
    #[arg(long, env = "NIMBUS_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// State directory (local machines) [default: $XDG_STATE_HOME/nimbus].
    #[arg(long, env = "NIMBUS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Store URL: `sqlite://PATH` or `postgres://…` [default: SQLite in the data directory].
    #[arg(long, env = "NIMBUS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// How often each provider is reconciled, e.g. `30s`.
    #[arg(long, env = "NIMBUS_RECONCILE_INTERVAL", value_parser = humantime::parse_duration)]
    pub reconcile_interval: Option<Duration>,
    /// Age at which a resource no intent knows about is removed, e.g. `60s`.
    #[arg(long, env = "NIMBUS_ORPHAN_GRACE", value_parser = humantime::parse_duration)]
    pub orphan_grace: Option<Duration>,
    /// Longest a machine's setup may take, e.g. `30m`.
    #[arg(long, env = "NIMBUS_SETUP_TIMEOUT", value_parser = humantime::parse_duration)]
    pub setup_timeout: Option<Duration>,
    /// How often every pool is planned when no webhook wakes the autoscaler earlier, e.g. `10s`.
    #[arg(long, env = "NIMBUS_AUTOSCALE_INTERVAL", value_parser = humantime::parse_duration)]
    pub autoscale_interval: Option<Duration>,
    /// Longest an API request may take, e.g. `30s`.
    #[arg(long, env = "NIMBUS_REQUEST_TIMEOUT", value_parser = humantime::parse_duration)]
    pub request_timeout: Option<Duration>,
    /// How long shutdown waits for in-flight operations, e.g. `30s`.
    #[arg(long, env = "NIMBUS_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// A bare-metal agent without a heartbeat for this long is lost and its hosts are not
    /// handed out, e.g. `60s`.
    #[arg(long, env = "NIMBUS_AGENT_LOST_AFTER", value_parser = humantime::parse_duration)]
    pub agent_lost_after: Option<Duration>,
    /// Longest a BMC operation waits for its agent's answer, e.g. `60s`.
    #[arg(long, env = "NIMBUS_AGENT_OP_TIMEOUT", value_parser = humantime::parse_duration)]
    pub agent_op_timeout: Option<Duration>,
    /// A Git URL of the provider registry to sync (`GET /v1/registry`).
    #[arg(long, env = "NIMBUS_REGISTRY_URL")]
    pub registry_url: Option<String>,
    /// How often the registry is fetched, e.g. `5m`.
    #[arg(long, env = "NIMBUS_REGISTRY_INTERVAL", value_parser = humantime::parse_duration)]
    pub registry_interval: Option<Duration>,
}

/// The TOML file: the same settings as the flags, with the same names in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    config_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    database_url: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    reconcile_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    orphan_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    setup_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    autoscale_interval: Option<Duration>,
    /// Prices replacing or adding to the built-in table.
    #[serde(default)]
    prices: Vec<nimbus_types::cost::Price>,
    #[serde(default, with = "humantime_serde_opt")]
    request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    shutdown_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    agent_lost_after: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    agent_op_timeout: Option<Duration>,
    registry_url: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    registry_interval: Option<Duration>,
}

mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Everything `nimbusd server` needs, resolved.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Redacted in `Debug`: a PostgreSQL URL may carry a password.
    pub database_url: DatabaseUrl,
    pub reconcile_interval: Duration,
    pub orphan_grace: Duration,
    pub setup_timeout: Duration,
    pub autoscale_interval: Duration,
    /// The built-in prices with the configuration file's `[[prices]]` over them.
    pub prices: nimbus_types::cost::PriceTable,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub agents: crate::agents::AgentSettings,
    pub registry_url: Option<String>,
    pub registry_interval: Duration,
}

#[derive(Clone)]
pub struct DatabaseUrl(pub String);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.0.split(':').next().unwrap_or("");
        write!(f, "{scheme}://[redacted]")
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8720";

impl Settings {
    pub fn resolve(args: &ServerArgs) -> anyhow::Result<Settings> {
        let file = load_file(args.config.as_deref())?;
        let xdg = |base: Option<PathBuf>, what: &str| -> anyhow::Result<PathBuf> {
            base.map(|dir| dir.join("nimbus"))
                .with_context(|| format!("cannot find the {what} directory: set HOME or XDG_*_HOME, or pass it explicitly"))
        };
        let data_dir = match args.data_dir.clone().or(file.data_dir) {
            Some(dir) => dir,
            None => xdg(dirs::data_dir(), "data")?,
        };
        let config_dir = match args.config_dir.clone().or(file.config_dir) {
            Some(dir) => dir,
            None => xdg(dirs::config_dir(), "config")?,
        };
        let state_dir = match args.state_dir.clone().or(file.state_dir) {
            Some(dir) => dir,
            None => xdg(dirs::state_dir().or_else(dirs::data_local_dir), "state")?,
        };
        let database_url = args
            .database_url
            .clone()
            .or(file.database_url)
            .unwrap_or_else(|| {
                nimbus_store::SqlStore::sqlite_path_url(&data_dir.join("nimbus.db"))
            });
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            anyhow::bail!("--database-url must start with sqlite:, postgres:// or postgresql://");
        }
        let registry_url = args.registry_url.clone().or(file.registry_url);
        if registry_url
            .as_deref()
            .is_some_and(|url| url.is_empty() || url.starts_with('-'))
        {
            anyhow::bail!("--registry-url must be a Git URL");
        }
        for (name, value) in [
            (
                "--agent-lost-after",
                args.agent_lost_after.or(file.agent_lost_after),
            ),
            (
                "--agent-op-timeout",
                args.agent_op_timeout.or(file.agent_op_timeout),
            ),
            (
                "--registry-interval",
                args.registry_interval.or(file.registry_interval),
            ),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                anyhow::bail!("{name} must be more than 0s");
            }
        }
        Ok(Settings {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default address")),
            data_dir,
            config_dir,
            state_dir,
            database_url: DatabaseUrl(database_url),
            reconcile_interval: args
                .reconcile_interval
                .or(file.reconcile_interval)
                .unwrap_or(Duration::from_secs(30)),
            orphan_grace: args
                .orphan_grace
                .or(file.orphan_grace)
                .unwrap_or(Duration::from_secs(60)),
            setup_timeout: args
                .setup_timeout
                .or(file.setup_timeout)
                .unwrap_or(Duration::from_secs(30 * 60)),
            prices: nimbus_types::cost::PriceTable::with_overrides(file.prices),
            autoscale_interval: args
                .autoscale_interval
                .or(file.autoscale_interval)
                .unwrap_or(Duration::from_secs(10)),
            request_timeout: args
                .request_timeout
                .or(file.request_timeout)
                .unwrap_or(Duration::from_secs(30)),
            shutdown_timeout: args
                .shutdown_timeout
                .or(file.shutdown_timeout)
                .unwrap_or(Duration::from_secs(30)),
            agents: crate::agents::AgentSettings {
                lost_after: args
                    .agent_lost_after
                    .or(file.agent_lost_after)
                    .unwrap_or(Duration::from_secs(60)),
                op_timeout: args
                    .agent_op_timeout
                    .or(file.agent_op_timeout)
                    .unwrap_or(Duration::from_secs(60)),
            },
            registry_url,
            registry_interval: args
                .registry_interval
                .or(file.registry_interval)
                .unwrap_or(Duration::from_secs(300)),
        })
    }
}

fn load_file(explicit: Option<&Path>) -> anyhow::Result<FileConfig> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => match dirs::config_dir() {
            Some(dir) if dir.join("nimbus/nimbusd.toml").is_file() => {
                dir.join("nimbus/nimbusd.toml")
            }
            _ => return Ok(FileConfig::default()),
        },
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nimbusd.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9999\"\nreconcile_interval = \"5s\"\n",
        )
        .unwrap();
        let args = ServerArgs {
            config: Some(file),
            data_dir: Some(dir.path().join("data")),
            config_dir: Some(dir.path().join("config")),
            state_dir: Some(dir.path().join("state")),
            reconcile_interval: Some(Duration::from_secs(1)),
            ..ServerArgs::default()
        };
        let settings = Settings::resolve(&args).unwrap();
        assert_eq!(settings.listen.port(), 9999);
        assert_eq!(settings.reconcile_interval, Duration::from_secs(1));
        assert_eq!(settings.orphan_grace, Duration::from_secs(60));
        assert!(
            settings.database_url.0.contains("data/nimbus.db"),
            "{}",
            settings.database_url.0
        );
        assert_eq!(
            format!("{:?}", settings.database_url),
            "sqlite://[redacted]"
        );
    }

    #[test]
    fn prices_in_the_file_override_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nimbusd.toml");
        std::fs::write(
            &file,
            r#"
[[prices]]
provider_type = "aws"
instance_type = "c5.xlarge"
usd_per_hour = 0.12
billing = { kind = "per_second", minimum_secs = 60 }

[[prices]]
provider_type = "ssh"
instance_type = "rack-a"
usd_per_hour = 0.05
billing = { kind = "hourly" }
"#,
        )
        .unwrap();
        let args = ServerArgs {
            config: Some(file.clone()),
            data_dir: Some(dir.path().join("data")),
            config_dir: Some(dir.path().join("config")),
            state_dir: Some(dir.path().join("state")),
            ..ServerArgs::default()
        };
        let settings = Settings::resolve(&args).unwrap();
        let aws = nimbus_types::ProviderType::Aws;
        let ssh = nimbus_types::ProviderType::Ssh;
        assert_eq!(
            settings
                .prices
                .lookup(aws, Some("c5.xlarge"))
                .unwrap()
                .usd_per_hour,
            0.12
        );
        assert_eq!(
            settings
                .prices
                .lookup(ssh, Some("rack-a"))
                .unwrap()
                .usd_per_hour,
            0.05
        );
        assert!(
            settings.prices.lookup(aws, Some("mac2.metal")).is_some(),
            "defaults stay"
        );
        std::fs::write(&file, "[[prices]]\nprovider_type = \"aws\"\n").unwrap();
        let err = Settings::resolve(&args).unwrap_err();
        assert!(format!("{err:#}").contains("instance_type"), "{err:#}");
    }

    #[test]
    fn bad_file_and_bad_url_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nimbusd.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let args = ServerArgs {
            config: Some(file),
            ..ServerArgs::default()
        };
        let err = format!("{:#}", Settings::resolve(&args).unwrap_err());
        assert!(err.contains("lisen"), "{err}");

        let args = ServerArgs {
            database_url: Some("mysql://x".into()),
            data_dir: Some(dir.path().into()),
            config_dir: Some(dir.path().into()),
            state_dir: Some(dir.path().into()),
            ..ServerArgs::default()
        };
        let err = format!("{:#}", Settings::resolve(&args).unwrap_err());
        assert!(err.contains("--database-url"), "{err}");
    }
}
