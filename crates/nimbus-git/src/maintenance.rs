//! Debounced repository maintenance after pushes: pack-refs, a geometric repack that writes a
//! multi-pack index with bitmaps, and a split commit-graph with changed-path Bloom filters
//! (the tree pages' last-commit column and `git log -- PATH` read them), then the branch heads'
//! last-commit answers kept on disk (`crate::lastcommit`). One run at a time per repository
//! and one at a time overall, so maintenance never competes much with serving.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore};

use crate::refs::git_command;
use crate::repos::RepoEntry;

#[derive(Default)]
pub struct MaintenanceState {
    scheduled: AtomicU64,
    running: Mutex<()>,
    runs: AtomicU64,
    failures: AtomicU64,
}

impl MaintenanceState {
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Acquire)
    }
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
pub struct Maintainer {
    delay: Duration,
    global: Arc<Semaphore>,
}

impl Maintainer {
    pub fn new(delay: Duration) -> Maintainer {
        Maintainer {
            delay,
            global: Arc::new(Semaphore::new(1)),
        }
    }

    /// Ask for maintenance; pushes within `delay` of each other share one run.
    pub fn schedule(&self, entry: Arc<RepoEntry>) {
        let ticket = entry.maintenance.scheduled.fetch_add(1, Ordering::AcqRel) + 1;
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(this.delay).await;
            if entry.maintenance.scheduled.load(Ordering::Acquire) != ticket {
                return; // a later push rescheduled it
            }
            let _running = entry.maintenance.running.lock().await;
            let _slot = this.global.acquire().await.expect("semaphore never closed");
            let target = entry.clone();
            let result = tokio::task::spawn_blocking(move || {
                maintain(&target.path)?;
                index_last_commits(&target)
            })
            .await;
            match result {
                Ok(Ok(())) => {
                    tracing::info!(repo.name = %entry.name, "maintenance done");
                }
                Ok(Err(err)) => {
                    entry.maintenance.failures.fetch_add(1, Ordering::AcqRel);
                    tracing::warn!(repo.name = %entry.name, error = %err, "maintenance failed");
                }
                Err(err) => {
                    entry.maintenance.failures.fetch_add(1, Ordering::AcqRel);
                    tracing::warn!(repo.name = %entry.name, error = %err, "maintenance task failed");
                }
            }
            entry.maintenance.runs.fetch_add(1, Ordering::AcqRel);
        });
    }
}

/// How long maintenance may spend on the branch heads' last-commit answers per run.
const INDEX_BUDGET: Duration = Duration::from_secs(30);

/// Keep the root page's last-commit answers for the branch heads on disk, so the first view
/// after a push (or after a restart) is a file read, not a walk over history.
fn index_last_commits(entry: &RepoEntry) -> Result<(), String> {
    let repo = entry.gix().map_err(|e| format!("open: {e}"))?;
    let deadline = std::time::Instant::now() + INDEX_BUDGET;
    let indexed = entry
        .history
        .index_heads(&repo, deadline)
        .map_err(|e| format!("last-commit index: {e}"))?;
    tracing::debug!(repo.name = %entry.name, heads = indexed, "last-commit answers kept");
    Ok(())
}

fn maintain(path: &Path) -> Result<(), String> {
    let steps: &[&[&str]] = &[
        &["pack-refs", "--all", "--prune"],
        &[
            "repack",
            "-d",
            "-q",
            "--geometric=2",
            "--write-midx",
            "--write-bitmap-index",
        ],
        &[
            "commit-graph",
            "write",
            "--reachable",
            "--split",
            "--changed-paths",
            "--no-progress",
        ],
    ];
    for step in steps {
        let out = git_command(Some(path))
            .args(*step)
            .output()
            .map_err(|e| format!("git {}: {e}", step[0]))?;
        if !out.status.success() {
            return Err(format!(
                "git {}: {}",
                step.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}
