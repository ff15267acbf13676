//! Changed-path Bloom filters from git's commit-graph files (the `BIDX`/`BDAT` chunks written by
//! `git commit-graph write --changed-paths`), which gix does not read.
//!
//! A commit's filter holds every path that differs from its first parent, with all leading
//! directories. "Not in the filter" means "same as the first parent"; "in the filter" means
//! "maybe changed". Graph positions line up with `gix::commitgraph::Graph`'s: files in chain
//! order, base first. This module only reads; maintenance writes the filters.

use std::path::{Path, PathBuf};

/// The filters of every commit-graph file of a repository.
#[derive(Default)]
pub struct Blooms {
    files: Vec<BloomFile>,
}

struct BloomFile {
    /// Graph position of this file's first commit.
    start: u32,
    count: u32,
    data: Vec<u8>,
    bidx: usize,
    /// Start of the filter bytes (after the 12-byte BDAT header).
    bdat: usize,
    bdat_end: usize,
    num_hashes: u32,
    version: u32,
}

/// A path hashed once for both filter versions.
pub struct BloomKey {
    v1: (u32, u32),
    v2: (u32, u32),
}

impl BloomKey {
    pub fn new(path: &[u8]) -> BloomKey {
        const SEED0: u32 = 0x293a_e76f;
        const SEED1: u32 = 0x7e64_6e2c;
        BloomKey {
            v1: (murmur3(SEED0, path, true), murmur3(SEED1, path, true)),
            v2: (murmur3(SEED0, path, false), murmur3(SEED1, path, false)),
        }
    }
}

/// The commit-graph files of a repository in the order gix numbers their commits.
pub fn graph_files(objects_dir: &Path) -> Vec<PathBuf> {
    let info = objects_dir.join("info");
    let single = info.join("commit-graph");
    if single.is_file() {
        return vec![single];
    }
    let dir = info.join("commit-graphs");
    match std::fs::read_to_string(dir.join("commit-graph-chain")) {
        Ok(chain) => chain
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|hash| dir.join(format!("graph-{hash}.graph")))
            .collect(),
        Err(_) => Vec::new(),
    }
}

impl Blooms {
    /// Read the filters of `files` (see [`graph_files`]). A file without filters, or one that
    /// cannot be parsed, answers "maybe" for all its commits: slower, never wrong.
    pub fn load(files: &[PathBuf]) -> Blooms {
        let mut blooms = Blooms::default();
        let mut start = 0u32;
        for path in files {
            let Ok(data) = std::fs::read(path) else {
                return Blooms::default();
            };
            let Some(file) = BloomFile::parse(data, start) else {
                return Blooms::default();
            };
            start += file.count;
            blooms.files.push(file);
        }
        blooms
    }

    /// True when at least one file carries filters.
    pub fn any(&self) -> bool {
        self.files.iter().any(|f| f.num_hashes > 0)
    }

    /// Commits covered by the loaded files.
    pub fn num_commits(&self) -> u32 {
        self.files.iter().map(|f| f.count).sum()
    }

    /// False only when the commit at graph position `pos` certainly did not change `key`
    /// relative to its first parent.
    pub fn maybe_changed(&self, pos: u32, key: &BloomKey) -> bool {
        let Some(file) = self
            .files
            .iter()
            .find(|f| pos >= f.start && pos < f.start + f.count)
        else {
            return true;
        };
        file.maybe_changed(pos - file.start, key)
    }
}

impl BloomFile {
    fn parse(data: Vec<u8>, start: u32) -> Option<BloomFile> {
        if data.len() < 8 || &data[..4] != b"CGPH" {
            return None;
        }
        let num_chunks = data[6] as usize;
        let mut chunks = Vec::with_capacity(num_chunks + 1);
        for idx in 0..=num_chunks {
            let at = 8 + idx * 12;
            let entry = data.get(at..at + 12)?;
            let id: [u8; 4] = entry[..4].try_into().ok()?;
            let offset = u64::from_be_bytes(entry[4..12].try_into().ok()?) as usize;
            chunks.push((id, offset));
        }
        let chunk = |want: &[u8; 4]| {
            chunks
                .windows(2)
                .find(|w| &w[0].0 == want)
                .map(|w| (w[0].1, w[1].1))
                .filter(|(a, b)| a <= b && *b <= data.len())
        };
        let (fan, fan_end) = chunk(b"OIDF")?;
        if fan_end - fan != 256 * 4 {
            return None;
        }
        let count = be32(&data, fan + 255 * 4)?;
        let mut file = BloomFile {
            start,
            count,
            bidx: 0,
            bdat: 0,
            bdat_end: 0,
            num_hashes: 0,
            version: 0,
            data: Vec::new(),
        };
        if let (Some((bidx, bidx_end)), Some((bdat, bdat_end))) = (chunk(b"BIDX"), chunk(b"BDAT"))
            && bidx_end - bidx == count as usize * 4
            && bdat_end - bdat >= 12
        {
            file.version = be32(&data, bdat)?;
            file.num_hashes = be32(&data, bdat + 4)?;
            if matches!(file.version, 1 | 2) && (1..=32).contains(&file.num_hashes) {
                file.bidx = bidx;
                file.bdat = bdat + 12;
                file.bdat_end = bdat_end;
                file.data = data;
            } else {
                file.num_hashes = 0;
            }
        }
        Some(file)
    }

    fn maybe_changed(&self, local: u32, key: &BloomKey) -> bool {
        if self.num_hashes == 0 {
            return true;
        }
        let end = match be32(&self.data, self.bidx + local as usize * 4) {
            Some(end) => end as usize,
            None => return true,
        };
        let begin = if local == 0 {
            0
        } else {
            match be32(&self.data, self.bidx + (local as usize - 1) * 4) {
                Some(begin) => begin as usize,
                None => return true,
            }
        };
        let (Some(lo), Some(hi)) = (self.bdat.checked_add(begin), self.bdat.checked_add(end))
        else {
            return true;
        };
        if lo >= hi || hi > self.bdat_end {
            // An empty filter is "not computed" for git: no answer.
            return true;
        }
        let filter = &self.data[lo..hi];
        let bits = filter.len() as u64 * 8;
        let (h0, h1) = if self.version == 1 { key.v1 } else { key.v2 };
        (0..self.num_hashes).all(|idx| {
            let hash = h0.wrapping_add(idx.wrapping_mul(h1)) as u64 % bits;
            filter[(hash / 8) as usize] & (1 << (hash % 8)) != 0
        })
    }
}

fn be32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// MurmurHash3 (x86, 32 bit) as git's bloom.c computes it. Version 1 filters were written
/// with bytes read as signed `char`, which only matters for paths with bytes ≥ 0x80.
fn murmur3(seed: u32, data: &[u8], signed_bytes: bool) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let byte = |b: u8| -> u32 {
        if signed_bytes {
            b as i8 as i32 as u32
        } else {
            b as u32
        }
    };
    let mut hash = seed;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = byte(block[0])
            | (byte(block[1]) << 8)
            | (byte(block[2]) << 16)
            | (byte(block[3]) << 24);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        hash ^= k;
        hash = hash
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    let mut k = 0u32;
    if tail.len() >= 3 {
        k ^= byte(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        k ^= byte(tail[1]) << 8;
    }
    if !tail.is_empty() {
        k ^= byte(tail[0]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        hash ^= k;
    }
    hash ^= data.len() as u32;
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^= hash >> 16;
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values git's own test-tool prints (`t/helper/test-bloom.c`, t0095-bloom.sh).
    #[test]
    fn murmur3_matches_git() {
        assert_eq!(murmur3(0, b"", false), 0x0000_0000);
        assert_eq!(murmur3(0, b"Hello world!", false), 0x627b_0c2c);
        assert_eq!(
            murmur3(0, b"The quick brown fox jumps over the lazy dog", false),
            0x2e4f_f723
        );
        // Bytes with the high bit set: git's t0095 "seven_highbit" case (version 2).
        assert_eq!(
            murmur3(0, b"\x99\xaa\xbb\xcc\xdd\xee\xff", false),
            0xa183_ccfd
        );
        // Version 1 only differs there; ASCII paths hash the same.
        assert_ne!(
            murmur3(0, b"\x99\xaa\xbb\xcc\xdd\xee\xff", true),
            0xa183_ccfd
        );
        assert_eq!(
            murmur3(7, b"src/a.rs", true),
            murmur3(7, b"src/a.rs", false)
        );
    }
}
