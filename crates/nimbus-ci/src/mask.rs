//! Masking secret values in a stream of log output.

use std::fmt;

use aho_corasick::{AhoCorasick, MatchKind};

/// Secrets (and lines of multi-line secrets) shorter than this are not masked: masking one or
/// two bytes would garble every log while hiding nothing worth hiding. The secrets API should
/// refuse such values.
pub const MIN_MASKED_LEN: usize = 3;

/// What a masked secret becomes.
pub const MASK: &[u8] = b"***";

/// Replaces every occurrence of any secret value with `***` in a byte stream cut into arbitrary
/// chunks.
///
/// At each position the longest secret that starts there is replaced (leftmost-longest, the same
/// result as running over the whole output at once). Each line of a multi-line secret is masked
/// on its own too, since programs often print such values line by line. At most
/// `longest secret - 1` bytes are held back between calls; [`Masker::finish`] releases them.
/// An Aho-Corasick automaton finds the secrets in one pass whatever their number; should it not
/// build (an absurd number of secrets), a plain scan gives the same result, slower.
pub struct Masker {
    /// Longest first, so that the first match at a position is the longest.
    patterns: Vec<Vec<u8>>,
    automaton: Option<AhoCorasick>,
    first_bytes: [bool; 256],
    pending: Vec<u8>,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("patterns", &self.patterns.len())
            .finish_non_exhaustive()
    }
}

impl Masker {
    pub fn new<I, S>(secrets: I) -> Masker
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for secret in secrets {
            let secret = secret.as_ref();
            patterns.push(secret.to_vec());
            if secret.contains(&b'\n') {
                for line in secret.split(|&b| b == b'\n') {
                    patterns.push(line.strip_suffix(b"\r").unwrap_or(line).to_vec());
                }
            }
        }
        patterns.retain(|p| p.len() >= MIN_MASKED_LEN && !p.iter().all(u8::is_ascii_whitespace));
        patterns.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        patterns.dedup();
        let mut first_bytes = [false; 256];
        for p in &patterns {
            first_bytes[usize::from(p[0])] = true;
        }
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .ok();
        Masker {
            patterns,
            automaton,
            first_bytes,
            pending: Vec::new(),
        }
    }

    /// Masks what can be decided of `chunk` (with what was held back before).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.patterns.is_empty() {
            return chunk.to_vec();
        }
        self.pending.extend_from_slice(chunk);
        let (out, consumed) = self.scan(false);
        self.pending.drain(..consumed);
        out
    }

    /// Masks and returns everything held back; the masker is then empty.
    pub fn finish(&mut self) -> Vec<u8> {
        let (out, _) = self.scan(true);
        self.pending.clear();
        out
    }

    /// Returns the output and how many pending bytes it decided.
    fn scan(&self, at_end: bool) -> (Vec<u8>, usize) {
        match &self.automaton {
            Some(automaton) => self.scan_automaton(automaton, at_end),
            None => self.scan_plain(at_end),
        }
    }

    /// A match that starts before `safe` lies wholly inside the pending bytes, and so does every
    /// longer or earlier one: those decisions are final.
    fn scan_automaton(&self, automaton: &AhoCorasick, at_end: bool) -> (Vec<u8>, usize) {
        let data = &self.pending;
        let longest = self.patterns.first().map_or(1, Vec::len);
        let safe = if at_end {
            data.len()
        } else {
            data.len().saturating_sub(longest - 1)
        };
        let mut out = Vec::with_capacity(data.len());
        let mut last = 0;
        for found in automaton.find_iter(data) {
            if found.start() >= safe {
                break;
            }
            out.extend_from_slice(&data[last..found.start()]);
            out.extend_from_slice(MASK);
            last = found.end();
        }
        let decided = last.max(safe);
        out.extend_from_slice(&data[last..decided]);
        (out, decided)
    }

    fn scan_plain(&self, at_end: bool) -> (Vec<u8>, usize) {
        let data = &self.pending;
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        while i < data.len() {
            if !self.first_bytes[usize::from(data[i])] {
                let run = data[i..]
                    .iter()
                    .position(|&b| self.first_bytes[usize::from(b)])
                    .unwrap_or(data.len() - i);
                out.extend_from_slice(&data[i..i + run]);
                i += run;
                continue;
            }
            let rest = &data[i..];
            // A longer secret that may still complete decides before a shorter one that matched.
            if !at_end
                && self
                    .patterns
                    .iter()
                    .any(|p| p.len() > rest.len() && p.starts_with(rest))
            {
                return (out, i);
            }
            match self.patterns.iter().find(|p| rest.starts_with(p)) {
                Some(p) => {
                    out.extend_from_slice(MASK);
                    i += p.len();
                }
                None => {
                    out.push(data[i]);
                    i += 1;
                }
            }
        }
        (out, i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Masks with both engines and checks that they agree.
    fn mask_chunks(secrets: &[&str], chunks: &[&str]) -> String {
        let run = |mut masker: Masker| {
            let mut out = Vec::new();
            for chunk in chunks {
                out.extend(masker.push(chunk.as_bytes()));
            }
            out.extend(masker.finish());
            String::from_utf8(out).unwrap()
        };
        let with_automaton = run(Masker::new(secrets));
        let mut plain = Masker::new(secrets);
        plain.automaton = None;
        assert_eq!(run(plain), with_automaton, "the engines disagree");
        with_automaton
    }

    #[test]
    fn masks_across_chunk_boundaries() {
        assert_eq!(
            mask_chunks(&["hunter2"], &["pass: hun", "ter", "2 ok"]),
            "pass: *** ok"
        );
        assert_eq!(mask_chunks(&["hunter2"], &["hunte", "r3"]), "hunter3");
        assert_eq!(
            mask_chunks(&["abc", "abcdef"], &["xabcde", "f abc"]),
            "x*** ***"
        );
        assert_eq!(mask_chunks(&["abc", "abcdef"], &["xabcde"]), "x***de");
    }

    #[test]
    fn holds_back_less_than_the_longest_secret() {
        for automaton in [true, false] {
            let mut masker = Masker::new(["secret"]);
            if !automaton {
                masker.automaton = None;
            }
            let mut out = Vec::new();
            for chunk in ["hello secre", "x", "sec", "ret!", "s"] {
                out.extend(masker.push(chunk.as_bytes()));
                assert!(
                    masker.pending.len() < "secret".len(),
                    "held back {:?}",
                    masker.pending
                );
            }
            out.extend(masker.finish());
            assert_eq!(String::from_utf8(out).unwrap(), "hello secrex***!s");
        }
    }

    #[test]
    fn multi_line_and_short_secrets() {
        let key = "-----BEGIN KEY-----\nAAAABBBB\n-----END KEY-----";
        assert_eq!(mask_chunks(&[key], &["x ", key, " y"]), "x *** y");
        assert_eq!(mask_chunks(&[key], &["line AAAABBBB\n"]), "line ***\n");
        assert_eq!(mask_chunks(&["ab", ""], &["ab abc"]), "ab abc");
        assert_eq!(
            format!("{:?}", Masker::new(["topsecret"])),
            "Masker { patterns: 1, .. }"
        );
    }
}
