//! Nimbus Git: a small, fast, single-owner Git server.
//!
//! `app(state)` builds the whole HTTP surface (smart HTTP, web UI, `/api/v1`) so tests can
//! drive it without a socket; `run` parses nothing and only wires settings to a listener.

pub mod admission;
pub mod api;
pub mod auth;
pub mod bloom;
pub mod ci;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod lastcommit;
pub mod maintenance;
pub mod names;
pub mod pktline;
pub mod refs;
pub mod repos;
pub mod smart;
pub mod web;
pub mod webhooks;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use tokio::sync::Notify;

use crate::admission::Admission;
use crate::auth::Authenticator;
use crate::config::{Cli, Command, LogFormat, Settings};
use crate::db::Db;
use crate::maintenance::Maintainer;
use crate::refs::Capabilities;
use crate::repos::Registry;

/// Shared state of one server.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub db: Db,
    pub settings: Settings,
    pub base_url: String,
    pub auth: Authenticator,
    pub repos: Registry,
    pub caps: Arc<Capabilities>,
    pub admission: Admission,
    pub maintainer: Maintainer,
    pub webhook_wake: Arc<Notify>,
    pub web: web::Caches,
    pub ci: ci::Ci,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The owner's credentials when they were generated on this start (print them once).
pub struct Started {
    pub state: AppState,
    pub generated_owner_password: Option<String>,
}

impl AppState {
    /// Open the store, create the owner if needed, load repositories, probe git.
    pub async fn open(settings: Settings, base_url: String) -> anyhow::Result<Started> {
        use anyhow::Context as _;
        if settings.isolate_git_config {
            refs::isolate_git_config();
        }
        let repo_root = settings.data_dir.join("repos");
        std::fs::create_dir_all(&repo_root)
            .with_context(|| format!("cannot create {}", repo_root.display()))?;
        let db = db::connect(&settings.database_url)
            .await
            .context("cannot open the database")?;
        let mut generated_owner_password = None;
        if db::owner(&db).await?.is_none() {
            names::check_username(&settings.owner)
                .map_err(|e| anyhow::anyhow!("owner name: {e}"))?;
            let password = match &settings.owner_password {
                Some(secret) => secret.0.clone(),
                None => {
                    let generated = auth::generate_secret(18);
                    generated_owner_password = Some(generated.clone());
                    generated
                }
            };
            let hash = auth::hash_password(&password)?;
            db::insert_user(&db, &settings.owner, &hash, true).await?;
        }
        let seal_key = match &settings.secret_key {
            Some(secret) => nimbus_store::SealKey::from_base64(&secret.0)
                .map_err(|e| anyhow::anyhow!("NIMBUS_GIT_SECRET_KEY: {e}"))?,
            None => {
                nimbus_store::SealKey::load_or_create(None, &settings.data_dir.join("secret-key"))?
            }
        };
        let caps = tokio::task::spawn_blocking({
            let dir = settings.data_dir.clone();
            move || Capabilities::probe(&dir)
        })
        .await?
        .context("cannot run git (is it installed?)")?;
        let repos = Registry::new(repo_root, settings.limits.max_pack_jobs_per_repo);
        let collaborators = db::collaborators(&db).await?;
        for row in db::repos(&db).await? {
            repos.insert(&row, &collaborators);
        }
        let state = AppState(Arc::new(Inner {
            auth: Authenticator::new(db.clone()),
            admission: Admission::new(&settings.limits),
            maintainer: Maintainer::new(settings.maintenance_delay),
            webhook_wake: Arc::new(Notify::new()),
            web: web::Caches::default(),
            ci: ci::Ci::new(seal_key, settings.ci_log_limit),
            caps: Arc::new(caps),
            repos,
            base_url: base_url.trim_end_matches('/').to_owned(),
            settings,
            db,
        }));
        Ok(Started {
            state,
            generated_owner_password,
        })
    }

    /// Start the background webhook deliverer.
    pub fn spawn_workers(&self) {
        let deliverer = webhooks::Deliverer::new(
            self.db.clone(),
            self.settings.webhooks.clone(),
            self.webhook_wake.clone(),
        );
        tokio::spawn(deliverer.run());
    }
}

/// API and web requests end after this long; Git routes stream for as long as pack work takes.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The whole HTTP surface. The middleware stack lives here and only here: request id, trace
/// span, and a timeout for everything but the Git routes.
pub fn app(state: AppState) -> Router {
    use axum::http::{Request, StatusCode};
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    use tower_http::timeout::TimeoutLayer;

    let timeout = || TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, PAGE_TIMEOUT);
    let git = Router::new()
        .route("/{repo}/info/refs", get(smart::info_refs))
        .route("/{repo}/git-upload-pack", post(smart::upload_pack))
        .route("/{repo}/git-receive-pack", post(smart::receive_pack));
    Router::new()
        .nest("/api/v1", api::router().layer(timeout()))
        .merge(git)
        .merge(web::router().layer(timeout()))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request.id = %id)
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Entry point of the `nimbus-git` binary.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            tune_allocator();
            init_tracing(args.log_format);
            let settings = Settings::resolve(&args)?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .max_blocking_threads(16)
                .thread_keep_alive(Duration::from_secs(10))
                .enable_all()
                .build()?
                .block_on(serve(settings))
        }
    }
}

/// Keep idle memory low: a fixed mmap threshold stops glibc from keeping large transient
/// buffers (argon2's 19 MiB, pack-sized reads) on the heap after they are freed, and two arenas
/// are plenty for a server whose heavy work happens in `git` children.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Bind, open, print the owner's generated password once, and serve until Ctrl-C.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let base_url = settings
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let owner = settings.owner.clone();
    let Started {
        state,
        generated_owner_password,
    } = AppState::open(settings, base_url.clone()).await?;
    if let Some(password) = generated_owner_password {
        println!("created owner account '{owner}' with password: {password}");
        println!("(shown once; set NIMBUS_GIT_OWNER_PASSWORD on first start to choose it)");
    }
    println!("nimbus-git listening on {base_url}");
    tracing::info!(listen = %addr, data_dir = %state.settings.data_dir.display(), "nimbus-git started");
    state.spawn_workers();
    // Without TCP_NODELAY the last small write of a streamed response waits for the client's
    // delayed ACK (about 40 ms per push or fetch).
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::warn!(error = %err, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
