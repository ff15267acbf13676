//! Last-commit answers kept on disk, one small file per (commit, directory), under
//! `<repo>.git/nimbus/last-commits/`. Maintenance writes the answers for the branch heads after
//! each push, so a restarted server shows the root page at once, and a walk from a newer commit
//! stops where it meets a commit whose answer is kept (see `walk`). Answers never go stale —
//! history below a commit does not change — so the only upkeep is a bound on the file count.
//!
//! The format is length-prefixed fields (`<decimal length>:<bytes>`), because names and
//! subjects are arbitrary bytes: a magic line, the directory, the entry count, then per entry its
//! name and the commit id (empty when unknown), then per distinct commit its id, author time,
//! author and subject.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gix::ObjectId;
use gix::bstr::{BString, ByteSlice};
use sha2::{Digest, Sha256};

use super::{CommitInfo, LastCommits};

const MAGIC: &[u8] = b"nimbus-last-commits 1\n";

/// Files kept per repository; maintenance removes the oldest beyond this.
pub const KEEP_FILES: usize = 4096;

pub struct Disk {
    dir: PathBuf,
}

/// The file-name suffix for a directory path (its hash, so any path fits in a name).
fn dir_tag(dir: &str) -> String {
    let digest = Sha256::digest(dir.trim_matches('/').as_bytes());
    hex::encode(&digest[..8])
}

impl Disk {
    pub fn new(repo: &Path) -> Disk {
        Disk {
            dir: repo.join("nimbus").join("last-commits"),
        }
    }

    fn file(&self, commit: ObjectId, dir: &str) -> PathBuf {
        self.dir.join(format!("{commit}-{}", dir_tag(dir)))
    }

    /// The commits whose answers for `dir` are on disk.
    pub fn commits_for(&self, dir: &str) -> HashSet<ObjectId> {
        let suffix = format!("-{}", dir_tag(dir));
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return HashSet::new();
        };
        listing
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.strip_suffix(&suffix)?.parse().ok()
            })
            .collect()
    }

    /// The stored answer for `dir` at `commit`; `None` when absent or unreadable (a damaged
    /// file is treated as absent and the walk recomputes it).
    pub fn read(&self, commit: ObjectId, dir: &str) -> Option<LastCommits> {
        let data = std::fs::read(self.file(commit, dir)).ok()?;
        let answer = decode(&data, dir);
        if answer.is_none() {
            tracing::warn!(%commit, dir, "ignoring a damaged last-commit file");
        }
        answer
    }

    /// Keep `answer` (complete answers only), written to a temporary file and renamed so a
    /// reader never sees half a file.
    pub fn write(&self, commit: ObjectId, dir: &str, answer: &LastCommits) -> std::io::Result<()> {
        debug_assert!(answer.complete);
        std::fs::create_dir_all(&self.dir)?;
        let target = self.file(commit, dir);
        let tmp = target.with_extension(format!("tmp{}", std::process::id()));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&encode(dir, answer))?;
        drop(file);
        std::fs::rename(&tmp, &target)
    }

    pub fn remove(&self, commit: ObjectId, dir: &str) {
        let _ = std::fs::remove_file(self.file(commit, dir));
    }

    /// Remove the least recently written files beyond `keep`.
    pub fn prune(&self, keep: usize) -> std::io::Result<usize> {
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = listing
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if files.len() <= keep {
            return Ok(0);
        }
        files.sort();
        let excess = files.len() - keep;
        for (_, path) in &files[..excess] {
            std::fs::remove_file(path)?;
        }
        Ok(excess)
    }
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
}

fn encode(dir: &str, answer: &LastCommits) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    field(&mut out, dir.as_bytes());
    field(&mut out, answer.names.len().to_string().as_bytes());
    let mut commits: Vec<&Arc<CommitInfo>> = Vec::new();
    let mut seen = HashSet::new();
    for (name, info) in answer.names.iter().zip(&answer.entries) {
        field(&mut out, name);
        match info {
            Some(info) => {
                field(&mut out, info.id.to_string().as_bytes());
                if seen.insert(info.id) {
                    commits.push(info);
                }
            }
            None => field(&mut out, b""),
        }
    }
    field(&mut out, commits.len().to_string().as_bytes());
    for info in commits {
        field(&mut out, info.id.to_string().as_bytes());
        field(&mut out, info.time.to_string().as_bytes());
        field(&mut out, info.author.as_bytes());
        field(&mut out, info.subject.as_bytes());
    }
    out
}

struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn next(&mut self) -> Option<&'a [u8]> {
        let colon = self.0.iter().position(|b| *b == b':')?;
        let len: usize = std::str::from_utf8(&self.0[..colon]).ok()?.parse().ok()?;
        let rest = &self.0[colon + 1..];
        let value = rest.get(..len)?;
        self.0 = &rest[len..];
        Some(value)
    }
    fn number<T: std::str::FromStr>(&mut self) -> Option<T> {
        std::str::from_utf8(self.next()?).ok()?.parse().ok()
    }
    fn text(&mut self) -> Option<String> {
        Some(self.next()?.to_str_lossy().into_owned())
    }
}

fn decode(data: &[u8], dir: &str) -> Option<LastCommits> {
    let mut fields = Fields(data.strip_prefix(MAGIC)?);
    if fields.next()? != dir.as_bytes() {
        return None; // a hash collision between directory names: not ours
    }
    let count: usize = fields.number()?;
    let mut names = Vec::with_capacity(count.min(1 << 16));
    let mut ids = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        names.push(BString::from(fields.next()?));
        let id = fields.next()?;
        ids.push(if id.is_empty() {
            None
        } else {
            Some(ObjectId::from_hex(id).ok()?)
        });
    }
    let n_commits: usize = fields.number()?;
    let mut infos = HashMap::with_capacity(n_commits.min(1 << 16));
    for _ in 0..n_commits {
        let id = ObjectId::from_hex(fields.next()?).ok()?;
        let time = fields.number()?;
        let author = fields.text()?;
        let subject = fields.text()?;
        infos.insert(
            id,
            Arc::new(CommitInfo {
                id,
                subject,
                author,
                time,
            }),
        );
    }
    if !fields.0.is_empty() {
        return None;
    }
    let entries = ids
        .into_iter()
        .map(|id| match id {
            None => Some(None),
            Some(id) => infos.get(&id).cloned().map(Some),
        })
        .collect::<Option<Vec<_>>>()?;
    Some(LastCommits {
        names,
        entries,
        complete: true,
        commits_walked: 0,
        trees_read: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LastCommits {
        let a: ObjectId = "1111111111111111111111111111111111111111".parse().unwrap();
        let b: ObjectId = "2222222222222222222222222222222222222222".parse().unwrap();
        let info = |id, subject: &str| {
            Some(Arc::new(CommitInfo {
                id,
                subject: subject.into(),
                author: "Ada: Lovelace 12:3".into(),
                time: 1_700_000_000,
            }))
        };
        LastCommits {
            names: vec![
                "a b".into(),
                BString::from(&b"\xff:raw\n"[..]),
                "empty".into(),
                "c".into(),
            ],
            entries: vec![info(a, "fix: 3:4"), info(b, ""), None, info(a, "fix: 3:4")],
            complete: true,
            commits_walked: 9,
            trees_read: 9,
        }
    }

    #[test]
    fn round_trips_arbitrary_bytes() {
        let answer = sample();
        let data = encode("src/x", &answer);
        let back = decode(&data, "src/x").expect("decodes");
        assert_eq!(back.names, answer.names);
        let ids = |a: &LastCommits| {
            a.entries
                .iter()
                .map(|e| {
                    e.as_ref()
                        .map(|i| (i.id, i.subject.clone(), i.author.clone(), i.time))
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&back), ids(&answer));
        assert!(back.complete);
    }

    #[test]
    fn damaged_or_foreign_files_are_refused() {
        let data = encode("src", &sample());
        assert!(
            decode(&data, "docs").is_none(),
            "another directory's answer"
        );
        assert!(
            decode(&data[..data.len() - 1], "src").is_none(),
            "truncated"
        );
        let mut extra = data.clone();
        extra.extend_from_slice(b"1:x");
        assert!(decode(&extra, "src").is_none(), "trailing bytes");
        assert!(decode(b"garbage", "src").is_none(), "no magic");
        let mut bad = data.clone();
        let at = MAGIC.len();
        bad[at] = b'x';
        assert!(decode(&bad, "src").is_none(), "bad length");
    }

    #[test]
    fn files_are_listed_per_directory_and_pruned_oldest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = Disk::new(tmp.path());
        let ids: Vec<ObjectId> = (1..=5u8)
            .map(|i| ObjectId::from_hex(hex::encode([i; 20]).as_bytes()).unwrap())
            .collect();
        let answer = sample();
        for id in &ids {
            disk.write(*id, "", &answer).unwrap();
        }
        disk.write(ids[0], "src", &answer).unwrap();
        assert_eq!(disk.commits_for("").len(), 5);
        assert_eq!(disk.commits_for("src"), HashSet::from([ids[0]]));
        assert!(disk.read(ids[3], "").is_some());
        assert!(disk.read(ids[3], "src").is_none());
        assert_eq!(disk.prune(6).unwrap(), 0);
        assert_eq!(disk.prune(2).unwrap(), 4);
        assert_eq!(
            std::fs::read_dir(tmp.path().join("nimbus/last-commits"))
                .unwrap()
                .count(),
            2
        );
    }
}
