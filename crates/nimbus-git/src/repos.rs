//! The in-memory registry of repositories: metadata mirrored from the store, cached `gix`
//! handles, ref snapshots, and the per-repository locks and slots for pack work.
//!
//! Everything a Git request needs to decide access and answer a ref advertisement is here, so
//! the hot path touches neither the database nor the disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use tokio::sync::Semaphore;

use crate::auth::{Perm, Principal};
use crate::db::{CollaboratorRow, RepoRow};
use crate::error::Error;
use crate::maintenance::MaintenanceState;
use crate::refs::{Capabilities, Snapshot};

#[derive(Debug, Clone)]
pub struct RepoMeta {
    pub private: bool,
    pub description: String,
    pub created_at: i64,
    /// user id → (username, permission)
    pub collaborators: HashMap<String, (String, Perm)>,
}

pub struct RepoEntry {
    pub id: String,
    pub name: String,
    pub path: PathBuf,
    meta: RwLock<RepoMeta>,
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    generation: AtomicU64,
    /// Fingerprint of the ref storage the cached snapshot was read from.
    fingerprint: AtomicU64,
    /// When the fingerprint was last compared with the disk (ms since `EPOCH`).
    verified_at: AtomicU64,
    gix: OnceLock<gix::ThreadSafeRepository>,
    /// Pushes to one repository run one at a time so the ref diff after each is exact.
    pub push_lock: Arc<tokio::sync::Mutex<()>>,
    pub pack_slots: Arc<Semaphore>,
    pub maintenance: MaintenanceState,
    /// Tree listings and last-commit answers for the web pages.
    pub history: crate::lastcommit::Cache,
}

impl RepoEntry {
    pub fn meta(&self) -> RepoMeta {
        self.meta.read().expect("meta lock").clone()
    }

    pub fn is_private(&self) -> bool {
        self.meta.read().expect("meta lock").private
    }

    pub fn update_meta(&self, f: impl FnOnce(&mut RepoMeta)) {
        f(&mut self.meta.write().expect("meta lock"));
    }

    /// What `principal` may do here; `None` means the repository is invisible to them.
    pub fn permission(&self, principal: &Principal) -> Option<Perm> {
        if let Some(repo_id) = &principal.repo_only {
            return (*repo_id == self.id).then_some(Perm::Read);
        }
        let meta = self.meta.read().expect("meta lock");
        let perm = match &principal.user {
            Some(user) if user.is_owner => Some(Perm::Admin),
            Some(user) => match meta.collaborators.get(&user.id) {
                Some((_, perm)) => Some(*perm),
                None if !meta.private => Some(Perm::Read),
                None => None,
            },
            None if !meta.private => Some(Perm::Read),
            None => None,
        };
        perm.map(|p| principal.cap(p))
    }

    pub fn gix(&self) -> Result<gix::Repository, Error> {
        if let Some(repo) = self.gix.get() {
            return Ok(repo.to_thread_local());
        }
        let repo = gix::open(&self.path).map_err(Error::git)?.into_sync();
        let repo = self.gix.get_or_init(|| repo);
        let mut local = repo.to_thread_local();
        local.object_cache_size_if_unset(4 << 20);
        Ok(local)
    }

    /// The cached snapshot, read from disk (blocking) on a miss.
    pub fn snapshot_blocking(&self, caps: &Capabilities) -> Result<Arc<Snapshot>, Error> {
        if let Some(snapshot) = self.snapshot.read().expect("snapshot lock").as_ref() {
            return Ok(snapshot.clone());
        }
        let generation = self.generation.load(Ordering::Acquire);
        // Fingerprint first: a change after it makes the next verification re-read.
        let fingerprint = refs_fingerprint(&self.path);
        let snapshot = Arc::new(Snapshot::read(&self.gix()?, caps)?);
        let mut slot = self.snapshot.write().expect("snapshot lock");
        if self.generation.load(Ordering::Acquire) == generation {
            *slot = Some(snapshot.clone());
            self.fingerprint.store(fingerprint, Ordering::Release);
            self.verified_at.store(now_ms(), Ordering::Release);
        }
        Ok(snapshot)
    }

    /// True when the cached snapshot was checked against the disk less than `VERIFY_EVERY` ago.
    fn recently_verified(&self) -> bool {
        now_ms().saturating_sub(self.verified_at.load(Ordering::Acquire)) < VERIFY_EVERY_MS
    }

    /// Compare the ref storage with the cached snapshot's; forget the snapshot if it changed
    /// behind our back (an administrator's `git update-ref`, a mirror job). Blocking.
    fn verify_blocking(&self) {
        let fingerprint = refs_fingerprint(&self.path);
        if fingerprint != self.fingerprint.load(Ordering::Acquire) {
            tracing::info!(repo.name = %self.name, "refs changed outside nimbus-git, re-reading");
            self.invalidate();
        } else {
            self.verified_at.store(now_ms(), Ordering::Release);
        }
    }

    pub fn cached_snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.read().expect("snapshot lock").clone()
    }

    /// Forget the snapshot; the next request reads refs again.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        *self.snapshot.write().expect("snapshot lock") = None;
    }
}

pub async fn snapshot(
    entry: &Arc<RepoEntry>,
    caps: &Arc<Capabilities>,
) -> Result<Arc<Snapshot>, Error> {
    if let Some(snapshot) = entry.cached_snapshot() {
        if entry.recently_verified() {
            return Ok(snapshot);
        }
        let verifier = entry.clone();
        tokio::task::spawn_blocking(move || verifier.verify_blocking())
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        if let Some(snapshot) = entry.cached_snapshot() {
            return Ok(snapshot);
        }
    }
    let entry = entry.clone();
    let caps = caps.clone();
    tokio::task::spawn_blocking(move || entry.snapshot_blocking(&caps))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
}

/// A snapshot read now, bypassing the cache (used around pushes).
pub async fn fresh_snapshot(
    entry: &Arc<RepoEntry>,
    caps: &Arc<Capabilities>,
) -> Result<Arc<Snapshot>, Error> {
    entry.invalidate();
    snapshot(entry, caps).await
}

/// How often a cached snapshot is compared with the ref storage on disk. Pushes through the
/// server invalidate at once; this only bounds how stale an outside change can look.
const VERIFY_EVERY_MS: u64 = 1000;

static EPOCH: std::sync::LazyLock<std::time::Instant> =
    std::sync::LazyLock::new(std::time::Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64 + 1
}

/// A hash of what changes when any ref changes in the files backend: `HEAD` and `packed-refs`
/// (mtime, size) and the mtime of every directory under `refs/` (git renames a lock file into
/// place, which touches the ref's directory).
fn refs_fingerprint(git_dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let stamp = |path: &Path, hasher: &mut std::collections::hash_map::DefaultHasher| {
        path.hash(hasher);
        if let Ok(meta) = std::fs::metadata(path) {
            meta.len().hash(hasher);
            if let Ok(modified) = meta.modified() {
                modified.hash(hasher);
            }
        }
    };
    stamp(&git_dir.join("HEAD"), &mut hasher);
    stamp(&git_dir.join("packed-refs"), &mut hasher);
    let mut dirs = vec![git_dir.join("refs")];
    while let Some(dir) = dirs.pop() {
        stamp(&dir, &mut hasher);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut subdirs: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            subdirs.sort();
            dirs.extend(subdirs);
        }
    }
    hasher.finish()
}

pub struct Registry {
    root: PathBuf,
    per_repo_slots: usize,
    map: RwLock<HashMap<String, Arc<RepoEntry>>>,
}

impl Registry {
    pub fn new(root: PathBuf, per_repo_slots: usize) -> Registry {
        Registry {
            root,
            per_repo_slots,
            map: RwLock::new(HashMap::new()),
        }
    }

    pub fn path_for(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.git"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn insert(&self, row: &RepoRow, collaborators: &[CollaboratorRow]) -> Arc<RepoEntry> {
        let collaborators = collaborators
            .iter()
            .filter(|c| c.repo_id == row.id)
            .filter_map(|c| {
                Perm::parse(&c.permission).map(|p| (c.user_id.clone(), (c.username.clone(), p)))
            })
            .collect();
        let entry = Arc::new(RepoEntry {
            id: row.id.clone(),
            name: row.name.clone(),
            path: self.path_for(&row.name),
            meta: RwLock::new(RepoMeta {
                private: row.private != 0,
                description: row.description.clone(),
                created_at: row.created_at,
                collaborators,
            }),
            snapshot: RwLock::new(None),
            generation: AtomicU64::new(0),
            fingerprint: AtomicU64::new(0),
            verified_at: AtomicU64::new(0),
            gix: OnceLock::new(),
            push_lock: Arc::new(tokio::sync::Mutex::new(())),
            pack_slots: Arc::new(Semaphore::new(self.per_repo_slots)),
            maintenance: MaintenanceState::default(),
            history: crate::lastcommit::Cache::with_disk(&self.path_for(&row.name)),
        });
        self.map
            .write()
            .expect("registry lock")
            .insert(row.name.clone(), entry.clone());
        entry
    }

    pub fn remove(&self, name: &str) {
        self.map.write().expect("registry lock").remove(name);
    }

    pub fn get(&self, name: &str) -> Option<Arc<RepoEntry>> {
        self.map.read().expect("registry lock").get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<RepoEntry>> {
        let mut all: Vec<_> = self
            .map
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn forget_user(&self, user_id: &str) {
        for entry in self.all() {
            entry.update_meta(|m| {
                m.collaborators.remove(user_id);
            });
        }
    }
}
