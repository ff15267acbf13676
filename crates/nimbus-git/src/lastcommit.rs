//! The last commit that touched each entry of a directory, for tree pages.
//!
//! One walk answers a whole directory: commits are visited newest first (by committer time)
//! through the commit-graph (parents, times and root trees without decompressing a commit),
//! and a commit is looked at closely only when its changed-path Bloom filter says one of the
//! still unanswered paths may have changed. An entry's last commit is the newest commit whose
//! version of the path is the one shown and none of whose parents has that version; a merge
//! that takes a side's version is therefore passed over for the commit that made it.
//! Answers are cached per (commit, directory): history below a commit never changes.
//!
//! Commits pushed since the last maintenance are not in the graph yet; they are read from the
//! object database and treated as "maybe changed", which is slower and never wrong.
//!
//! Answers are also kept on disk (`disk`): maintenance writes them for the branch heads after a
//! push, and a walk that reaches a commit with a kept answer at a point where every remaining
//! path goes through it (the walk's queue holds that commit alone, as it does on any linear
//! stretch) takes the rest from that answer. So the page for a new push costs a walk over the
//! pushed commits, not over all of history.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gix::ObjectId;
use gix::bstr::{BString, ByteSlice};

use crate::bloom::{BloomKey, Blooms};
use crate::error::Error;

mod disk;

/// What a tree page shows about the commit that last touched an entry.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    pub id: ObjectId,
    pub subject: String,
    pub author: String,
    pub time: i64,
}

/// Last commits of one directory's entries, in the order asked.
#[derive(Debug)]
pub struct LastCommits {
    /// The entry names asked for; `entries` follows their order.
    pub names: Vec<BString>,
    pub entries: Vec<Option<Arc<CommitInfo>>>,
    /// False when the walk stopped at its deadline; missing entries are then unknown.
    pub complete: bool,
    pub commits_walked: usize,
    pub trees_read: usize,
}

/// The commit-graph and its filters, reloaded when the files on disk change.
pub struct GraphData {
    stamp: u64,
    pub graph: Option<gix::commitgraph::Graph>,
    pub blooms: Blooms,
}

/// Directories whose answers are kept per repository.
const RESULT_CACHE: usize = 512;

/// Walks that took at least this long have their answers kept on disk.
const PERSIST_AFTER: std::time::Duration = std::time::Duration::from_millis(5);

/// Branch heads whose root answers maintenance keeps on disk (the most recently committed).
const INDEXED_HEADS: usize = 16;

/// Per-repository cache of graph data and answers.
pub struct Cache {
    graph: Mutex<Option<Arc<GraphData>>>,
    results: Mutex<Lru<(ObjectId, BString), Arc<LastCommits>>>,
    trees: Mutex<Lru<ObjectId, Arc<Vec<TreeEntry>>>>,
    disk: Option<disk::Disk>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            graph: Mutex::new(None),
            results: Mutex::new(Lru::new(RESULT_CACHE)),
            trees: Mutex::new(Lru::new(RESULT_CACHE)),
            disk: None,
        }
    }
}

/// What a tree page lists about an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryKind {
    Dir,
    Submodule,
    File,
    Exec,
    Link,
}

#[derive(Debug, Clone)]
pub struct TreeEntry {
    pub name: BString,
    pub kind: EntryKind,
    pub id: ObjectId,
    /// Blob size in bytes (files and links).
    pub size: Option<u64>,
}

impl Cache {
    /// A cache that also keeps answers on disk inside the bare repository at `repo`.
    pub fn with_disk(repo: &std::path::Path) -> Cache {
        Cache {
            disk: Some(disk::Disk::new(repo)),
            ..Cache::default()
        }
    }

    /// The graph data for `repo`, re-read when maintenance wrote new commit-graph files.
    pub fn graph(&self, repo: &gix::Repository) -> Arc<GraphData> {
        let objects = repo.objects.store_ref().path().to_owned();
        let files = crate::bloom::graph_files(&objects);
        let stamp = stamp_of(&files);
        if let Some(data) = self.graph.lock().expect("graph lock").as_ref()
            && data.stamp == stamp
        {
            return data.clone();
        }
        let data = Arc::new(GraphData {
            stamp,
            graph: repo.commit_graph_if_enabled().ok().flatten(),
            blooms: Blooms::load(&files),
        });
        *self.graph.lock().expect("graph lock") = Some(data.clone());
        data
    }

    /// Answers for the entries `names` of directory `dir` at `commit`, from memory, from disk
    /// or by a walk that stops at `deadline`. Incomplete answers are not cached.
    pub fn last_commits(
        &self,
        repo: &gix::Repository,
        commit: ObjectId,
        dir: &str,
        names: &[BString],
        deadline: Instant,
    ) -> Result<Arc<LastCommits>, Error> {
        self.answer(repo, commit, dir, names, deadline, false)
    }

    fn answer(
        &self,
        repo: &gix::Repository,
        commit: ObjectId,
        dir: &str,
        names: &[BString],
        deadline: Instant,
        persist: bool,
    ) -> Result<Arc<LastCommits>, Error> {
        if let Some(known) = self.known(commit, dir)
            && let Some(answer) = known.for_names(names)
        {
            return Ok(answer);
        }
        let graph = self.graph(repo);
        let mut candidates: HashSet<ObjectId> = self
            .results
            .lock()
            .expect("results lock")
            .keys()
            .filter(|(_, d)| d == dir)
            .map(|(c, _)| *c)
            .collect();
        if let Some(disk) = &self.disk {
            candidates.extend(disk.commits_for(dir));
        }
        let started = Instant::now();
        let walked = walk(
            repo,
            &graph,
            commit,
            dir,
            names,
            deadline,
            &Known {
                cache: self,
                candidates,
            },
        )?;
        let answer = Arc::new(walked);
        if answer.complete {
            if let Some(disk) = &self.disk
                && (persist || started.elapsed() >= PERSIST_AFTER)
                && let Err(err) = disk.write(commit, dir, &answer)
            {
                tracing::warn!(%commit, dir, error = %err, "could not keep a last-commit answer");
            }
            self.results.lock().expect("results lock").insert(
                (commit, BString::from(dir)),
                answer.clone(),
                1,
            );
        }
        Ok(answer)
    }

    /// A complete answer for `dir` at `commit` from memory or disk.
    fn known(&self, commit: ObjectId, dir: &str) -> Option<Arc<LastCommits>> {
        let key = (commit, BString::from(dir));
        if let Some(hit) = self.results.lock().expect("results lock").get(&key) {
            return Some(hit);
        }
        let stored = Arc::new(self.disk.as_ref()?.read(commit, dir)?);
        self.results
            .lock()
            .expect("results lock")
            .insert(key, stored.clone(), 1);
        Some(stored)
    }

    /// What maintenance does after a push: the root answers for the most recent branch heads,
    /// computed (from the previous heads' answers where history allows) and kept on disk, then
    /// old files pruned. Returns how many heads were indexed.
    pub fn index_heads(&self, repo: &gix::Repository, deadline: Instant) -> Result<usize, Error> {
        if self.disk.is_none() {
            return Ok(0);
        }
        let mut heads: Vec<(i64, ObjectId)> = Vec::new();
        let refs = repo.references().map_err(Error::git)?;
        for reference in refs.local_branches().map_err(Error::git)? {
            let Ok(mut reference) = reference else {
                continue;
            };
            let Ok(id) = reference.peel_to_id() else {
                continue;
            };
            let Ok(commit) = repo.find_commit(id.detach()) else {
                continue;
            };
            let time = commit.time().map(|t| t.seconds).unwrap_or(0);
            heads.push((time, id.detach()));
        }
        heads.sort();
        heads.dedup_by_key(|(_, id)| *id);
        let recent: Vec<ObjectId> = heads
            .iter()
            .rev()
            .take(INDEXED_HEADS)
            .map(|(_, id)| *id)
            .collect();
        let mut indexed = 0;
        // Oldest first, so a newer head's walk can stop at an older head's answer.
        for head in recent.into_iter().rev() {
            if Instant::now() > deadline {
                break;
            }
            let tree = repo
                .find_commit(head)
                .map_err(Error::git)?
                .tree_id()
                .map_err(Error::git)?
                .detach();
            let entries = self.entries(repo, tree)?;
            let names: Vec<BString> = entries.iter().map(|e| e.name.clone()).collect();
            if self
                .answer(repo, head, "", &names, deadline, true)?
                .complete
            {
                indexed += 1;
            }
        }
        if let Some(disk) = &self.disk
            && let Err(err) = disk.prune(disk::KEEP_FILES)
        {
            tracing::warn!(error = %err, "could not prune last-commit answers");
        }
        Ok(indexed)
    }

    /// The entries of tree `id`, directories first, then by name, with blob sizes; cached.
    pub fn entries(
        &self,
        repo: &gix::Repository,
        id: ObjectId,
    ) -> Result<Arc<Vec<TreeEntry>>, Error> {
        if let Some(hit) = self.trees.lock().expect("trees lock").get(&id) {
            return Ok(hit);
        }
        let tree = repo.find_object(id).map_err(Error::git)?;
        let mut entries = Vec::new();
        for entry in gix::objs::TreeRefIter::from_bytes(&tree.data, id.kind()) {
            let entry = entry.map_err(Error::git)?;
            let mode = entry.mode;
            let kind = if mode.is_tree() {
                EntryKind::Dir
            } else if mode.is_commit() {
                EntryKind::Submodule
            } else if mode.is_link() {
                EntryKind::Link
            } else if mode.is_executable() {
                EntryKind::Exec
            } else {
                EntryKind::File
            };
            let size = match kind {
                EntryKind::File | EntryKind::Exec | EntryKind::Link => repo
                    .find_header(entry.oid.to_owned())
                    .ok()
                    .map(|h| h.size()),
                EntryKind::Dir | EntryKind::Submodule => None,
            };
            entries.push(TreeEntry {
                name: entry.filename.to_owned(),
                kind,
                id: entry.oid.to_owned(),
                size,
            });
        }
        let is_dir = |e: &TreeEntry| matches!(e.kind, EntryKind::Dir | EntryKind::Submodule);
        entries.sort_by(|a, b| is_dir(b).cmp(&is_dir(a)).then_with(|| a.name.cmp(&b.name)));
        let entries = Arc::new(entries);
        self.trees
            .lock()
            .expect("trees lock")
            .insert(id, entries.clone(), 1);
        Ok(entries)
    }

    /// Forget what is held in memory, as a restarted server would (answers on disk stay).
    pub fn clear(&self) {
        *self.results.lock().expect("results lock") = Lru::new(RESULT_CACHE);
        *self.graph.lock().expect("graph lock") = None;
        *self.trees.lock().expect("trees lock") = Lru::new(RESULT_CACHE);
    }

    /// Forget the answer for `dir` at `commit` on disk, and every answer held in memory.
    pub fn forget(&self, commit: ObjectId, dir: &str) {
        *self.results.lock().expect("results lock") = Lru::new(RESULT_CACHE);
        if let Some(disk) = &self.disk {
            disk.remove(commit, dir);
        }
    }

    /// Forget everything, answers on disk included (benchmarks measure walks from nothing).
    pub fn clear_all(&self) {
        self.clear();
        if let Some(disk) = &self.disk {
            let _ = disk.prune(0);
        }
    }
}

impl LastCommits {
    /// This answer arranged for `names`, when it covers them all.
    fn for_names(self: &Arc<Self>, names: &[BString]) -> Option<Arc<LastCommits>> {
        if self.names == names {
            return Some(self.clone());
        }
        let by_name: HashMap<&BString, &Option<Arc<CommitInfo>>> =
            self.names.iter().zip(&self.entries).collect();
        let entries = names
            .iter()
            .map(|n| by_name.get(n).map(|e| (*e).clone()))
            .collect::<Option<Vec<_>>>()?;
        Some(Arc::new(LastCommits {
            names: names.to_vec(),
            entries,
            complete: self.complete,
            commits_walked: 0,
            trees_read: 0,
        }))
    }
}

/// Where a walk may stop early: commits with a known answer for the same directory.
struct Known<'a> {
    cache: &'a Cache,
    candidates: HashSet<ObjectId>,
}

fn stamp_of(files: &[std::path::PathBuf]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in files {
        file.hash(&mut hasher);
        if let Ok(meta) = std::fs::metadata(file) {
            meta.len().hash(&mut hasher);
            meta.modified().ok().hash(&mut hasher);
        }
    }
    hasher.finish()
}

/// A small map that forgets its oldest insertions past a total weight; enough for answers
/// that never go stale (they are keyed by object ids).
pub struct Lru<K, V> {
    map: HashMap<K, (V, usize)>,
    order: VecDeque<K>,
    weight: usize,
    max_weight: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Lru<K, V> {
    pub fn new(max_weight: usize) -> Self {
        Lru {
            map: HashMap::new(),
            order: VecDeque::new(),
            weight: 0,
            max_weight,
        }
    }
    pub fn get(&self, key: &K) -> Option<V> {
        self.map.get(key).map(|(v, _)| v.clone())
    }
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.map.keys()
    }
    pub fn insert(&mut self, key: K, value: V, weight: usize) {
        match self.map.insert(key.clone(), (value, weight)) {
            Some((_, old)) => self.weight -= old,
            None => self.order.push_back(key),
        }
        self.weight += weight;
        while self.weight > self.max_weight {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, w)) = self.map.remove(&old) {
                self.weight -= w;
            }
        }
    }
}

/// A commit as the walk needs it.
struct Node {
    tree: ObjectId,
    pos: Option<u32>,
    parents: Vec<Ref>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ref {
    Pos(u32),
    Id(ObjectId),
}

struct Walker<'a> {
    repo: &'a gix::Repository,
    graph: Option<&'a gix::commitgraph::Graph>,
    /// Raw tree objects, parsed on use (parsing borrows; only lookups by bisection follow).
    trees: HashMap<ObjectId, Arc<[u8]>>,
    trees_read: usize,
}

impl Walker<'_> {
    fn node(&self, r: Ref) -> Result<(i64, Node), Error> {
        let by_id = |id: ObjectId| -> Result<(i64, Node), Error> {
            if let Some(graph) = self.graph
                && let Some(pos) = graph.lookup(id)
            {
                return Ok(self.graph_node(graph, pos.0));
            }
            let commit = self.repo.find_commit(id).map_err(Error::git)?;
            let decoded = commit.decode().map_err(Error::git)?;
            let time = decoded.committer().map(|c| c.seconds()).unwrap_or(0);
            Ok((
                time,
                Node {
                    tree: decoded.tree(),
                    pos: None,
                    parents: decoded.parents().map(Ref::Id).collect(),
                },
            ))
        };
        match r {
            Ref::Pos(pos) => match self.graph {
                Some(graph) => Ok(self.graph_node(graph, pos)),
                None => Err(Error::Internal("graph position without a graph".into())),
            },
            Ref::Id(id) => by_id(id),
        }
    }

    fn graph_node(&self, graph: &gix::commitgraph::Graph, pos: u32) -> (i64, Node) {
        let commit = graph.commit_at(gix::commitgraph::Position(pos));
        let parents = commit
            .iter_parents()
            .filter_map(Result::ok)
            .map(|p| Ref::Pos(p.0))
            .collect();
        (
            commit.committer_timestamp() as i64,
            Node {
                tree: commit.root_tree_id().to_owned(),
                pos: Some(pos),
                parents,
            },
        )
    }

    fn raw(&mut self, id: ObjectId) -> Result<Arc<[u8]>, Error> {
        if let Some(data) = self.trees.get(&id) {
            return Ok(data.clone());
        }
        let object = self.repo.find_object(id).map_err(Error::git)?;
        self.trees_read += 1;
        let data: Arc<[u8]> = Arc::from(&object.data[..]);
        if self.trees.len() > 4096 {
            self.trees.clear();
        }
        self.trees.insert(id, data.clone());
        Ok(data)
    }

    /// The id of the tree at `dir` below `root`, if there is one.
    fn dir_tree(&mut self, root: ObjectId, dir: &[&[u8]]) -> Result<Option<ObjectId>, Error> {
        let mut id = root;
        for component in dir {
            let data = self.raw(id)?;
            let tree = parse(&data, id)?;
            match tree.bisect_entry(component.as_bstr(), true) {
                Some(entry) => id = entry.oid.to_owned(),
                None => return Ok(None),
            }
        }
        Ok(Some(id))
    }
}

fn parse(data: &[u8], id: ObjectId) -> Result<gix::objs::TreeRef<'_>, Error> {
    gix::objs::TreeRef::from_bytes(data, id.kind()).map_err(Error::git)
}

/// The version of `target` in `tree`.
fn lookup(tree: &gix::objs::TreeRef<'_>, target: &Target) -> Option<ObjectId> {
    tree.bisect_entry(target.name.as_bstr(), target.is_dir)
        .map(|e| e.oid.to_owned())
}

struct Target {
    key: BloomKey,
    name: BString,
    is_dir: bool,
    want: Option<ObjectId>,
    found: Option<ObjectId>,
}

/// Stop and report an incomplete answer after this many commits even before the deadline.
const MAX_WALK: usize = 2_000_000;

fn walk(
    repo: &gix::Repository,
    data: &GraphData,
    start: ObjectId,
    dir: &str,
    names: &[BString],
    deadline: Instant,
    known: &Known<'_>,
) -> Result<LastCommits, Error> {
    let mut walker = Walker {
        repo,
        graph: data.graph.as_ref(),
        trees: HashMap::new(),
        trees_read: 0,
    };
    let components: Vec<&[u8]> = dir
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::as_bytes)
        .collect();
    let prefix = if components.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let dir_key = (!components.is_empty()).then(|| BloomKey::new(dir.trim_matches('/').as_bytes()));
    let (_, start_node) = walker.node(Ref::Id(start))?;
    let mut shown: HashMap<BString, (ObjectId, bool)> = HashMap::new();
    if let Some(id) = walker.dir_tree(start_node.tree, &components)? {
        let data = walker.raw(id)?;
        for entry in parse(&data, id)?.entries {
            shown.insert(
                entry.filename.to_owned(),
                (entry.oid.to_owned(), entry.mode.is_tree()),
            );
        }
    }
    let mut targets: Vec<Target> = names
        .iter()
        .map(|name| {
            let mut path = prefix.as_bytes().to_vec();
            path.extend_from_slice(name);
            Target {
                key: BloomKey::new(&path),
                name: name.clone(),
                is_dir: shown.get(name).is_some_and(|(_, dir)| *dir),
                want: shown.get(name).map(|(id, _)| *id),
                found: None,
            }
        })
        .collect();
    let mut open = targets.iter().filter(|t| t.want.is_some()).count();

    let mut queue: BinaryHeap<(i64, Ref)> = BinaryHeap::new();
    let mut seen_pos = vec![false; data.graph.as_ref().map_or(0, |g| g.num_commits() as usize)];
    let mut seen_ids: HashSet<ObjectId> = HashSet::new();
    let start_ref = match start_node.pos {
        Some(pos) => Ref::Pos(pos),
        None => Ref::Id(start),
    };
    let mut mark = |r: Ref, seen_ids: &mut HashSet<ObjectId>| -> bool {
        match r {
            Ref::Pos(pos) => !std::mem::replace(&mut seen_pos[pos as usize], true),
            Ref::Id(id) => seen_ids.insert(id),
        }
    };
    mark(start_ref, &mut seen_ids);
    queue.push((i64::MAX, start_ref));
    let mut walked = 0usize;
    let mut complete = true;
    let mut maybe: Vec<usize> = Vec::new();
    let mut reused: HashMap<ObjectId, Arc<CommitInfo>> = HashMap::new();
    while open > 0 {
        let Some((_, current)) = queue.pop() else {
            break;
        };
        walked += 1;
        if (walked % 512 == 0 && Instant::now() > deadline) || walked > MAX_WALK {
            complete = false;
            break;
        }
        let (_, node) = walker.node(current)?;
        let id = match current {
            Ref::Id(id) => id,
            Ref::Pos(pos) => data
                .graph
                .as_ref()
                .map(|g| g.id_at(gix::commitgraph::Position(pos)).to_owned())
                .unwrap_or(start),
        };
        // Every remaining path goes through this commit: a kept answer here settles the open
        // entries whose version is the one shown (the rest of history is its history).
        if queue.is_empty()
            && id != start
            && known.candidates.contains(&id)
            && let Some(answer) = known.cache.known(id, dir)
            && let Some(here) = walker.dir_tree(node.tree, &components)?
        {
            let here_data = walker.raw(here)?;
            let here_tree = parse(&here_data, here)?;
            let by_name: HashMap<&BString, &Option<Arc<CommitInfo>>> =
                answer.names.iter().zip(&answer.entries).collect();
            for target in targets.iter_mut() {
                if target.found.is_some()
                    || target.want.is_none()
                    || lookup(&here_tree, target) != target.want
                {
                    continue;
                }
                if let Some(Some(info)) = by_name.get(&target.name) {
                    target.found = Some(info.id);
                    reused.insert(info.id, info.clone());
                    open -= 1;
                }
            }
            if open == 0 {
                break;
            }
        }
        let mut parent_nodes = Vec::with_capacity(node.parents.len());
        for parent in &node.parents {
            let (time, parent_node) = walker.node(*parent)?;
            if mark(*parent, &mut seen_ids) {
                queue.push((time, *parent));
            }
            parent_nodes.push(parent_node);
        }
        // Which open paths may have changed against the first parent?
        maybe.clear();
        let filtered = node.pos.filter(|_| !node.parents.is_empty());
        if let (Some(pos), Some(dir_key)) = (filtered, &dir_key)
            && !data.blooms.maybe_changed(pos, dir_key)
        {
            continue;
        }
        for (idx, target) in targets.iter().enumerate() {
            if target.found.is_none()
                && target.want.is_some()
                && filtered.is_none_or(|pos| data.blooms.maybe_changed(pos, &target.key))
            {
                maybe.push(idx);
            }
        }
        if maybe.is_empty() {
            continue;
        }
        let Some(here) = walker.dir_tree(node.tree, &components)? else {
            continue;
        };
        let mut parent_dirs = Vec::with_capacity(parent_nodes.len());
        for parent in &parent_nodes {
            parent_dirs.push(walker.dir_tree(parent.tree, &components)?);
        }
        if parent_dirs.contains(&Some(here)) {
            continue; // the directory is as in a parent: nothing in it was made here
        }
        let here_data = walker.raw(here)?;
        let here_tree = parse(&here_data, here)?;
        let mut parent_data = Vec::with_capacity(parent_dirs.len());
        for parent in parent_dirs.iter().flatten() {
            parent_data.push((walker.raw(*parent)?, *parent));
        }
        let parent_trees = parent_data
            .iter()
            .map(|(data, id)| parse(data, *id))
            .collect::<Result<Vec<_>, _>>()?;
        for &idx in &maybe {
            let target = &mut targets[idx];
            if lookup(&here_tree, target) != target.want {
                continue;
            }
            if parent_trees
                .iter()
                .all(|p| lookup(p, target) != target.want)
            {
                target.found = Some(id);
                open -= 1;
            }
        }
    }
    let mut infos = reused;
    let mut entries = Vec::with_capacity(targets.len());
    for target in &targets {
        let info = match target.found {
            None => None,
            Some(id) => Some(match infos.get(&id) {
                Some(info) => info.clone(),
                None => {
                    let info = Arc::new(commit_info(repo, id)?);
                    infos.insert(id, info.clone());
                    info
                }
            }),
        };
        entries.push(info);
    }
    Ok(LastCommits {
        names: names.to_vec(),
        entries,
        complete,
        commits_walked: walked,
        trees_read: walker.trees_read,
    })
}

/// Subject, author and author time of a commit.
pub fn commit_info(repo: &gix::Repository, id: ObjectId) -> Result<CommitInfo, Error> {
    let commit = repo.find_commit(id).map_err(Error::git)?;
    let decoded = commit.decode().map_err(Error::git)?;
    let author = decoded.author().map_err(Error::git)?;
    Ok(CommitInfo {
        id,
        subject: decoded.message_summary().to_str_lossy().into_owned(),
        author: author.name.to_str_lossy().into_owned(),
        time: author.seconds(),
    })
}
