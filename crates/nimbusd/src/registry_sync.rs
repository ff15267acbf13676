//! The provider registry, synced from a Git URL on an interval and offered read-only through
//! `GET /v1/registry` (and checked when a baremetal provider names a `registry_entry`).
//!
//! Fetching runs the real `git` as a child process (arguments as data, no prompts, a deadline):
//! `gix` would need its network transport features (an HTTP stack of its own) in `nimbusd` for
//! one shallow fetch every few minutes. The clone lives in `<state_dir>/registry`; a sync
//! fetches the remote's default branch (depth 1) and checks the files out, then validates them
//! with the registry schema (`nimbus_baremetal::registry`). A failed fetch keeps the last good
//! snapshot and shows the error; invalid files are left out and listed as diagnostics.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use anyhow::{Context, bail};
use nimbus_baremetal::registry::{self, Diagnostic, Entry};
use serde::Serialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Longest one git command may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the registry comes from and how often it is fetched.
#[derive(Clone, Debug)]
pub struct RegistrySource {
    pub url: String,
    pub interval: Duration,
    /// The local clone.
    pub dir: PathBuf,
}

/// A validated copy of the registry at one commit.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub commit: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub synced_at: OffsetDateTime,
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<Entry>,
    #[schema(value_type = Vec<Object>)]
    pub diagnostics: Vec<Diagnostic>,
}

/// What the server knows of its registry.
#[derive(Debug, Default)]
pub struct RegistryState {
    pub source: Option<RegistrySource>,
    snapshot: RwLock<Option<Snapshot>>,
    last_error: RwLock<Option<String>>,
}

impl RegistryState {
    pub fn new(source: Option<RegistrySource>) -> RegistryState {
        RegistryState {
            source,
            ..RegistryState::default()
        }
    }

    pub fn snapshot(&self) -> Option<Snapshot> {
        self.snapshot.read().expect("registry snapshot").clone()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.read().expect("registry error").clone()
    }

    /// Fetches and validates once; on failure the last good snapshot stays.
    pub async fn sync(&self) -> anyhow::Result<()> {
        let Some(source) = &self.source else {
            bail!("no registry is configured (--registry-url)");
        };
        let result = fetch_and_load(source).await;
        match &result {
            Ok(snapshot) => {
                tracing::info!(
                    registry.url = %source.url,
                    registry.commit = %snapshot.commit,
                    providers = snapshot.entries.len(),
                    problems = snapshot.diagnostics.len(),
                    "provider registry synced"
                );
                *self.snapshot.write().expect("registry snapshot") = Some(snapshot.clone());
                *self.last_error.write().expect("registry error") = None;
            }
            Err(err) => {
                tracing::warn!(registry.url = %source.url, error = %format!("{err:#}"), "provider registry sync failed");
                *self.last_error.write().expect("registry error") = Some(format!("{err:#}"));
            }
        }
        result.map(drop)
    }

    /// Syncs now and then every interval until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        let Some(source) = &self.source else { return };
        loop {
            let _ = self.sync().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(source.interval) => {}
            }
        }
    }
}

async fn git(dir: Option<&Path>, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new("git");
    if let Some(dir) = dir {
        cmd.arg("-C").arg(dir);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let shown = format!("git {}", args.join(" "));
    let out = tokio::time::timeout(GIT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| anyhow::anyhow!("{shown} took longer than {GIT_TIMEOUT:?}"))?
        .with_context(|| "cannot run git (install git to sync a registry)".to_string())?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn fetch_and_load(source: &RegistrySource) -> anyhow::Result<Snapshot> {
    if source.url.starts_with('-') {
        bail!("the registry URL must not start with '-'");
    }
    let dir = &source.dir;
    if !dir.join(".git").is_dir() {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        git(Some(dir), &["init", "--quiet"]).await?;
    }
    // The URL is set on every sync, so a changed --registry-url takes effect.
    let _ = git(Some(dir), &["remote", "remove", "origin"]).await;
    git(Some(dir), &["remote", "add", "origin", "--", &source.url]).await?;
    git(
        Some(dir),
        &[
            "fetch",
            "--quiet",
            "--depth",
            "1",
            "--no-tags",
            "origin",
            "HEAD",
        ],
    )
    .await?;
    git(
        Some(dir),
        &["checkout", "--quiet", "--force", "--detach", "FETCH_HEAD"],
    )
    .await?;
    git(Some(dir), &["clean", "--quiet", "-fdx"]).await?;
    let commit = git(Some(dir), &["rev-parse", "HEAD"]).await?;
    let dir = dir.clone();
    let registry = tokio::task::spawn_blocking(move || registry::load_dir(&dir))
        .await
        .context("registry reader panicked")?
        .context("cannot read the registry clone")?;
    Ok(Snapshot {
        commit,
        synced_at: nimbus_types::now(),
        entries: registry.entries.into_values().collect(),
        diagnostics: registry.diagnostics,
    })
}
