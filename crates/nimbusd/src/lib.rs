//! `nimbusd`: the Nimbus daemon. `nimbusd server` runs the control plane; `nimbusd migrate`
//! applies the store's migrations; `nimbusd agent run` is the bare-metal agent on a rack.
//!
//! Only this crate knows about HTTP and process start-up (signals, directories, the admin token,
//! the secret key). The lifecycle lives in `nimbus-fleet`; this crate wires it to the network.

mod agent;
pub mod agents;
pub mod config;
pub mod http;
pub mod registry_sync;
mod secrets;

use std::sync::Arc;

use anyhow::Context;
use nimbus_fleet::autoscale::{AutoscaleConfig, Tuning};
use nimbus_fleet::{EventSink, Fleet, FleetConfig, ProviderRegistry, Telemetry};
use nimbus_provider::ProviderEnv;
use nimbus_store::{SqlStore, Storage, StoreOptions};
use nimbus_types::ProviderType;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentCommand, Cli, Command, LogFormat, Settings};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_tracing(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Server(args) => runtime.block_on(serve(Settings::resolve(&args)?)),
        Command::Migrate(args) => runtime.block_on(async {
            let settings = Settings::resolve(&args)?;
            let store = open_store(&settings).await?;
            tracing::info!(backend = store.backend(), "migrations applied");
            store.close().await;
            Ok(())
        }),
        Command::Agent(AgentCommand::Inventory) => runtime.block_on(async {
            let inventory = nimbus_baremetal::inventory::collect()
                .await
                .context("cannot read the inventory")?;
            println!("{}", serde_json::to_string_pretty(&inventory)?);
            Ok(())
        }),
        Command::Agent(AgentCommand::Run(args)) => runtime.block_on(agent::run(args)),
    }
}

/// Third-party targets (prefixes) that print credentials at debug or trace level: the AWS SDK's
/// endpoint resolution and request signing print the access key id, HTTP clients and SSH print
/// headers and authentication exchanges. They stay at `info` whatever `NIMBUS_LOG` asks for,
/// because a debug log is what people paste into bug reports.
pub const CREDENTIAL_TARGETS: &[&str] = &[
    "aws_",
    "hyper",
    "h2",
    "reqwest",
    "rustls",
    "russh",
    "tower_http",
];

/// The level every target in [`CREDENTIAL_TARGETS`] is held to.
fn credential_cap() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(CREDENTIAL_TARGETS.iter().map(|t| (*t, LevelFilter::INFO)))
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_env("NIMBUS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(credential_cap());
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}

async fn open_store(settings: &Settings) -> anyhow::Result<SqlStore> {
    let key = secrets::load_seal_key(&settings.config_dir)?;
    SqlStore::connect(
        &settings.database_url.0,
        StoreOptions::default(),
        nimbus_store::Sealer::new(key),
    )
    .await
    .context("cannot open the store")
}

/// The provider types this build runs. Providers report through `events` (the daemon's bus).
pub fn provider_registry(env: ProviderEnv, events: Arc<dyn EventSink>) -> ProviderRegistry {
    let mut registry = ProviderRegistry::new();
    #[cfg(feature = "aws")]
    register_aws(&mut registry, &env, events);
    #[cfg(not(feature = "aws"))]
    drop(events);
    for kind in [
        ProviderType::Local,
        ProviderType::Ssh,
        ProviderType::Baremetal,
        ProviderType::Hetzner,
    ] {
        let build_env = env.clone();
        registry.register(
            kind,
            Arc::new(move |config| nimbus_provider::build(&build_env, config)),
            Arc::new(nimbus_provider::validate_config),
        );
    }
    registry
}

/// EC2, with the daemon's event bus and stored SSH host keys for setup over SSH.
#[cfg(feature = "aws")]
fn register_aws(registry: &mut ProviderRegistry, env: &ProviderEnv, events: Arc<dyn EventSink>) {
    let host_keys = env.host_keys.clone();
    registry.register(
        ProviderType::Aws,
        Arc::new(move |config| {
            let mut provider =
                nimbus_aws::AwsProvider::new(config, Arc::new(nimbus_aws::SystemClock))?
                    .with_events(events.clone());
            if let Some(host_keys) = &host_keys {
                provider = provider.with_ssh(
                    host_keys(config.tenant_id),
                    nimbus_setup::ssh::SshOptions::default(),
                );
            }
            let provider = Arc::new(provider);
            nimbus_aws::spawn_host_reconciler(&provider);
            Ok(provider as Arc<dyn nimbus_provider::Provider>)
        }),
        Arc::new(nimbus_aws::validate_config),
    );
}

/// Everything a running server holds, built from settings. Tests build it on temp dirs.
pub struct Server {
    pub state: http::AppState,
    pub store: SqlStore,
}

impl Server {
    pub async fn start(settings: &Settings) -> anyhow::Result<Server> {
        for dir in [
            &settings.data_dir,
            &settings.config_dir,
            &settings.state_dir,
        ] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        let admin_token = secrets::load_or_create_admin_token(&settings.config_dir)?;
        let store = open_store(settings).await?;
        let dyn_store: Arc<dyn Storage> = Arc::new(store.clone());
        let mut registry = Registry::default();
        let telemetry = Telemetry::start(dyn_store.clone(), &mut registry);
        let http_metrics = http::HttpMetrics::register(&mut registry);
        let forge_metrics = http::ops::ForgeMetrics::register(&mut registry);
        let cost_metrics = http::ops::CostMetrics::register(&mut registry);
        let events: Arc<dyn EventSink> = Arc::new(telemetry.clone());
        let agents = Arc::new(agents::AgentHub::new(dyn_store.clone(), settings.agents));
        let key_store = dyn_store.clone();
        let providers = provider_registry(
            ProviderEnv {
                local_machines_dir: settings.state_dir.join("machines"),
                host_keys: Some(Arc::new(move |tenant_id| {
                    Arc::new(nimbus_fleet::host_keys::StoredHostKeys::new(
                        key_store.clone(),
                        tenant_id,
                    )) as Arc<dyn nimbus_setup::ssh::HostKeyStore>
                })),
                events: Some(events.clone()),
                agents: Some(agents.clone() as Arc<dyn nimbus_provider::baremetal::AgentRelay>),
            },
            events,
        );
        let fleet = Fleet::new(
            dyn_store.clone(),
            providers,
            telemetry,
            FleetConfig {
                setup_timeout: settings.setup_timeout,
                reconcile_interval: settings.reconcile_interval,
                orphan_grace: settings.orphan_grace,
                shutdown_timeout: settings.shutdown_timeout,
                prices: settings.prices.clone(),
                autoscale: AutoscaleConfig {
                    interval: settings.autoscale_interval,
                    tuning: Tuning {
                        // A machine may take the whole setup timeout after the provider's
                        // part; only past both is it stuck.
                        boot_deadline: settings.setup_timeout
                            + std::time::Duration::from_secs(10 * 60),
                        ..Tuning::default()
                    },
                    ..AutoscaleConfig::default()
                },
                ..FleetConfig::default()
            },
        );
        let state = http::AppState {
            fleet,
            store: dyn_store.clone(),
            ping: Arc::new(store.clone()),
            admin_token_sha256: secrets::sha256(admin_token.expose().as_bytes()),
            metrics: Arc::new(registry),
            http_metrics,
            request_timeout: settings.request_timeout,
            shutdown: CancellationToken::new(),
            machine_lists: Arc::default(),
            demand: Arc::new(nimbus_fleet::demand::StoredDemandBook::new(
                dyn_store.clone(),
            )),
            webhooks: Arc::new(http::forge::WebhookReceivers::default()),
            forge_metrics,
            cost_metrics,
            agents,
            registry: Arc::new(registry_sync::RegistryState::new(
                settings
                    .registry_url
                    .clone()
                    .map(|url| registry_sync::RegistrySource {
                        url,
                        interval: settings.registry_interval,
                        dir: settings.state_dir.join("registry"),
                    }),
            )),
        };
        Ok(Server { state, store })
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let server = Server::start(&settings).await?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    server.state.fleet.start_reconciler();
    server.state.fleet.start_autoscaler();
    server.state.fleet.start_ci();
    let demand_loop = tokio::spawn(http::demand::reconcile_loop(server.state.clone()));
    let registry = server.state.registry.clone();
    let registry_loop = tokio::spawn({
        let shutdown = server.state.shutdown.clone();
        async move { registry.run(shutdown).await }
    });
    let prune_loop = tokio::spawn(prune_agent_operations(
        server.state.store.clone(),
        server.state.shutdown.clone(),
    ));
    tracing::info!(
        listen = %addr,
        store = server.store.backend(),
        data_dir = %settings.data_dir.display(),
        admin_token = %settings.config_dir.join(secrets::ADMIN_TOKEN_FILE).display(),
        "nimbusd server ready"
    );
    // One plain line on stdout for people and scripts (tests bind port 0 and read it).
    println!("nimbusd listening on http://{addr}");
    let shutdown = server.state.shutdown.clone();
    let app = http::app(server.state.clone());
    let signal = async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests and operations");
        shutdown.cancel();
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
        .context("server error")?;
    server.state.shutdown.cancel();
    let _ = demand_loop.await;
    let _ = registry_loop.await;
    let _ = prune_loop.await;
    server.state.fleet.shutdown().await;
    server.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Forgets answered and abandoned agent operations a day after they ended, hourly.
async fn prune_agent_operations(store: Arc<dyn Storage>, shutdown: CancellationToken) {
    loop {
        let before = nimbus_types::now() - std::time::Duration::from_secs(24 * 3600);
        if let Err(err) = store.prune_agent_operations(before).await {
            tracing::warn!(error = %err, "cannot prune agent operations");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
