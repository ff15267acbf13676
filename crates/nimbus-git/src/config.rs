//! Command-line arguments (raw input) and the resolved settings the server runs with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "nimbus-git",
    version,
    about = "Nimbus Git: a fast single-owner Git server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Git over smart HTTP, the web UI and the API.
    Serve(ServeArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "NIMBUS_GIT_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// Directory for repositories and the SQLite database [default: $XDG_DATA_HOME/nimbus-git].
    #[arg(long, env = "NIMBUS_GIT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// sqlite://… or postgres://… [default: SQLite in the data directory].
    #[arg(long, env = "NIMBUS_GIT_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Public base URL used in clone URLs and webhook payloads [default: http://LISTEN].
    #[arg(long, env = "NIMBUS_GIT_BASE_URL")]
    pub base_url: Option<String>,
    #[arg(
        long,
        env = "NIMBUS_GIT_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Pack jobs (upload-pack/receive-pack) running at once, all repositories together.
    #[arg(long, env = "NIMBUS_GIT_MAX_PACK_JOBS", default_value_t = 8)]
    pub max_pack_jobs: usize,
    /// Pack jobs running at once for one repository.
    #[arg(long, env = "NIMBUS_GIT_MAX_PACK_JOBS_PER_REPO", default_value_t = 4)]
    pub max_pack_jobs_per_repo: usize,
    /// Requests allowed to wait for a pack slot before new ones get 429.
    #[arg(long, env = "NIMBUS_GIT_PACK_QUEUE", default_value_t = 32)]
    pub pack_queue: usize,
    /// How long a queued request waits for a pack slot before it gets 429, in milliseconds.
    #[arg(
        long,
        env = "NIMBUS_GIT_PACK_QUEUE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub pack_queue_timeout_ms: u64,
    /// Quiet time after the last push before a repository's maintenance runs, in milliseconds.
    #[arg(
        long,
        env = "NIMBUS_GIT_MAINTENANCE_DELAY_MS",
        default_value_t = 30_000
    )]
    pub maintenance_delay_ms: u64,
    /// Allow webhooks to loopback and private addresses (for tests and trusted networks).
    #[arg(
        long,
        env = "NIMBUS_GIT_WEBHOOK_ALLOW_PRIVATE",
        default_value_t = false
    )]
    pub webhook_allow_private: bool,
    /// First retry delay of a failed webhook delivery, in milliseconds (doubles each attempt).
    #[arg(
        long,
        env = "NIMBUS_GIT_WEBHOOK_RETRY_BASE_MS",
        default_value_t = 5_000
    )]
    pub webhook_retry_base_ms: u64,
    /// Attempts before a webhook delivery is given up.
    #[arg(long, env = "NIMBUS_GIT_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8)]
    pub webhook_max_attempts: u32,
    /// Username of the owner account created on first start.
    #[arg(long, env = "NIMBUS_GIT_OWNER", default_value = "owner")]
    pub owner: String,
    /// Password of the owner account created on first start [default: generated and printed once].
    #[arg(long, env = "NIMBUS_GIT_OWNER_PASSWORD", hide_env_values = true)]
    pub owner_password: Option<Secret>,
    /// Key that seals CI secrets: base64 of 32 bytes (`openssl rand -base64 32`) [default: the
    /// file `secret-key` in the data directory, created with mode 0600 on first start].
    #[arg(long, env = "NIMBUS_GIT_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<Secret>,
    /// Largest log stored per CI job, in bytes; beyond it the log is marked truncated.
    #[arg(long, env = "NIMBUS_GIT_CI_LOG_LIMIT", default_value_t = 16 << 20)]
    pub ci_log_limit: u64,
}

/// A string that never shows itself in `Debug`.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Settings resolved from [`ServeArgs`] and the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub base_url: Option<String>,
    pub limits: Limits,
    pub maintenance_delay: Duration,
    pub webhooks: WebhookSettings,
    pub owner: String,
    pub owner_password: Option<Secret>,
    /// Seals CI secrets; `None` means the key file in the data directory.
    pub secret_key: Option<Secret>,
    pub ci_log_limit: u64,
    /// Git children ignore system and global git configuration (tests).
    pub isolate_git_config: bool,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_pack_jobs: usize,
    pub max_pack_jobs_per_repo: usize,
    pub pack_queue: usize,
    pub pack_queue_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub allow_private: bool,
    pub retry_base: Duration,
    pub max_attempts: u32,
}

impl Settings {
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Settings> {
        let data_dir = match &args.data_dir {
            Some(dir) => dir.clone(),
            None => dirs::data_dir()
                .ok_or_else(|| anyhow::anyhow!("no XDG data directory; pass --data-dir"))?
                .join("nimbus-git"),
        };
        let database_url = match &args.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                data_dir.join("nimbus-git.db").display()
            ),
        };
        Ok(Settings {
            listen: args.listen,
            data_dir,
            database_url,
            base_url: args.base_url.clone(),
            limits: Limits {
                max_pack_jobs: args.max_pack_jobs.max(1),
                max_pack_jobs_per_repo: args.max_pack_jobs_per_repo.max(1),
                pack_queue: args.pack_queue,
                pack_queue_timeout: Duration::from_millis(args.pack_queue_timeout_ms),
            },
            maintenance_delay: Duration::from_millis(args.maintenance_delay_ms),
            webhooks: WebhookSettings {
                allow_private: args.webhook_allow_private,
                retry_base: Duration::from_millis(args.webhook_retry_base_ms.max(1)),
                max_attempts: args.webhook_max_attempts.max(1),
            },
            owner: args.owner.clone(),
            owner_password: args.owner_password.clone(),
            secret_key: args.secret_key.clone(),
            ci_log_limit: args.ci_log_limit,
            isolate_git_config: false,
        })
    }

    /// Settings for tests: everything in `data_dir`, short delays, loopback webhooks allowed.
    pub fn for_tests(data_dir: PathBuf) -> Settings {
        Settings {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            database_url: format!(
                "sqlite://{}?mode=rwc",
                data_dir.join("nimbus-git.db").display()
            ),
            data_dir,
            base_url: None,
            limits: Limits {
                max_pack_jobs: 8,
                max_pack_jobs_per_repo: 4,
                pack_queue: 32,
                pack_queue_timeout: Duration::from_secs(10),
            },
            maintenance_delay: Duration::from_millis(200),
            webhooks: WebhookSettings {
                allow_private: true,
                retry_base: Duration::from_millis(50),
                max_attempts: 5,
            },
            owner: "owner".into(),
            owner_password: Some(Secret("owner-password".into())),
            secret_key: None,
            ci_log_limit: 16 << 20,
            isolate_git_config: true,
        }
    }
}
