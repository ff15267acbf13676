//! Git pkt-line framing: parse and write.
//!
//! The parser is the only code that reads client-supplied protocol bytes before they reach a
//! `git` child process, so it must reject every malformed input with an error and never panic.

use std::fmt::Write as _;

/// Largest pkt-line including its 4-byte length header, as Git defines it.
pub const MAX_PKT_LEN: usize = 65520;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pkt<'a> {
    /// `0000`
    Flush,
    /// `0001` (protocol v2 section delimiter)
    Delim,
    /// `0002` (protocol v2 end of response)
    ResponseEnd,
    Data(&'a [u8]),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("pkt-line length {0:?} is not four hex digits")]
    BadLength([u8; 4]),
    #[error("pkt-line length {0} is reserved")]
    Reserved(usize),
    #[error("pkt-line length {0} exceeds the maximum of {MAX_PKT_LEN}")]
    TooLong(usize),
}

/// Parse one pkt-line from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole pkt-line, otherwise the pkt-line and
/// the number of bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Pkt<'_>, usize)>, Error> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let header: [u8; 4] = [buf[0], buf[1], buf[2], buf[3]];
    let mut len = 0usize;
    for b in header {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(Error::BadLength(header)),
        };
        len = len * 16 + usize::from(digit);
    }
    match len {
        0 => Ok(Some((Pkt::Flush, 4))),
        1 => Ok(Some((Pkt::Delim, 4))),
        2 => Ok(Some((Pkt::ResponseEnd, 4))),
        3 => Err(Error::Reserved(3)),
        n if n > MAX_PKT_LEN => Err(Error::TooLong(n)),
        n if buf.len() < n => Ok(None),
        n => Ok(Some((Pkt::Data(&buf[4..n]), n))),
    }
}

/// Parse a whole buffer into pkt-lines; a trailing partial pkt-line is an error.
pub fn parse_all(mut buf: &[u8]) -> Result<Vec<Pkt<'_>>, ParseAllError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        match parse(buf)? {
            Some((pkt, used)) => {
                out.push(pkt);
                buf = &buf[used..];
            }
            None => return Err(ParseAllError::Truncated),
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseAllError {
    #[error(transparent)]
    Pkt(#[from] Error),
    #[error("request body ends inside a pkt-line")]
    Truncated,
}

/// Strip one trailing newline, as Git does for text pkt-lines.
pub fn text(data: &[u8]) -> &[u8] {
    data.strip_suffix(b"\n").unwrap_or(data)
}

/// Append `data` as one pkt-line.
pub fn write(out: &mut Vec<u8>, data: &[u8]) {
    debug_assert!(data.len() + 4 <= MAX_PKT_LEN);
    let mut header = String::with_capacity(4);
    let _ = write!(header, "{:04x}", data.len() + 4);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
}

pub fn write_str(out: &mut Vec<u8>, line: &str) {
    write(out, line.as_bytes());
}

pub fn flush(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0000");
}

pub fn delim(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0001");
}

/// Incremental validator for the pkt-line part of a request that is streamed to a child.
///
/// It is fed the body chunk by chunk and tells when the framed part is over
/// (`sections` flushes seen), so the rest (a packfile) passes through unchecked.
#[derive(Debug)]
pub struct Validator {
    pending: Vec<u8>,
    flushes_left: usize,
    /// total bytes accepted so far
    seen: usize,
    limit: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Pkt(#[from] Error),
    #[error("request body ends inside its pkt-line section")]
    Truncated,
    #[error("the pkt-line section is larger than {0} bytes")]
    TooLarge(usize),
}

impl Validator {
    /// `flushes`: how many flush-pkts end the framed part; `usize::MAX` for an all-pkt-line body.
    pub fn new(flushes: usize, limit: usize) -> Self {
        Self {
            pending: Vec::new(),
            flushes_left: flushes,
            seen: 0,
            limit,
        }
    }

    /// True once the framed part is over and the rest of the body is opaque.
    pub fn done(&self) -> bool {
        self.flushes_left == 0
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), ValidateError> {
        if self.done() {
            return Ok(());
        }
        self.pending.extend_from_slice(chunk);
        let mut at = 0;
        while self.flushes_left > 0 {
            match parse(&self.pending[at..])? {
                Some((pkt, used)) => {
                    at += used;
                    if pkt == Pkt::Flush {
                        self.flushes_left -= 1;
                    }
                }
                None => break,
            }
        }
        self.seen += at;
        self.pending.drain(..at);
        if self.flushes_left == 0 {
            self.pending = Vec::new();
        } else if self.seen + self.pending.len() > self.limit {
            return Err(ValidateError::TooLarge(self.limit));
        }
        Ok(())
    }

    /// Called at end of body.
    pub fn finish(&self, require_flush: bool) -> Result<(), ValidateError> {
        if !self.pending.is_empty() || (require_flush && self.seen == 0) {
            return Err(ValidateError::Truncated);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(input: &[u8], expect: Result<Vec<Pkt<'_>>, ParseAllError>) {
        let got = parse_all(input);
        assert_eq!(got, expect, "input: {:?}", String::from_utf8_lossy(input));
    }

    #[test]
    fn parses_and_rejects() {
        check(b"0000", Ok(vec![Pkt::Flush]));
        check(b"00010002", Ok(vec![Pkt::Delim, Pkt::ResponseEnd]));
        check(
            b"0009done\n0000",
            Ok(vec![Pkt::Data(b"done\n"), Pkt::Flush]),
        );
        check(b"0004", Ok(vec![Pkt::Data(b"")]));
        check(b"0003", Err(ParseAllError::Pkt(Error::Reserved(3))));
        check(b"zzzz", Err(ParseAllError::Pkt(Error::BadLength(*b"zzzz"))));
        check(b"ffff", Err(ParseAllError::Pkt(Error::TooLong(0xffff))));
        check(b"0009don", Err(ParseAllError::Truncated));
        check(b"00", Err(ParseAllError::Truncated));
    }

    #[test]
    fn writes_round_trip() {
        let mut out = Vec::new();
        write_str(&mut out, "want abc\n");
        flush(&mut out);
        assert_eq!(
            parse_all(&out).unwrap(),
            vec![Pkt::Data(b"want abc\n"), Pkt::Flush]
        );
    }

    #[test]
    fn validator_stops_at_flush_and_passes_pack() {
        let mut v = Validator::new(1, 1024);
        v.feed(b"0009abcd\n00").unwrap();
        assert!(!v.done());
        v.feed(b"00PACK\x00\x01garbage").unwrap();
        assert!(v.done());
        v.finish(true).unwrap();
    }

    #[test]
    fn validator_reports_truncation_and_garbage() {
        let mut v = Validator::new(1, 1024);
        v.feed(b"0009ab").unwrap();
        assert_eq!(v.finish(true), Err(ValidateError::Truncated));
        let mut v = Validator::new(1, 1024);
        assert!(v.feed(b"xx09abcd\n0000").is_err());
        let mut v = Validator::new(1, 8);
        assert_eq!(v.feed(b"0009abcd\n0009"), Err(ValidateError::TooLarge(8)));
    }

    proptest! {
        #[test]
        fn parser_never_panics_and_agrees_with_validator(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            chunk in 1usize..20,
        ) {
            let whole = parse_all(&bytes);
            let mut v = Validator::new(usize::MAX, 1 << 20);
            let mut ok = true;
            for piece in bytes.chunks(chunk) {
                if v.feed(piece).is_err() { ok = false; break; }
            }
            let ok = ok && v.finish(false).is_ok();
            prop_assert_eq!(whole.is_ok(), ok, "parse_all: {:?}", whole);
        }

        #[test]
        fn framed_looking_input_never_panics(
            lines in proptest::collection::vec((0u32..0x1_0000, proptest::collection::vec(any::<u8>(), 0..40)), 0..10),
        ) {
            // Inputs with plausible hex headers reach deeper parser states than random bytes.
            let mut bytes = Vec::new();
            for (len, body) in &lines {
                bytes.extend_from_slice(format!("{len:04x}").as_bytes());
                bytes.extend_from_slice(body);
            }
            let _ = parse_all(&bytes);
            let mut v = Validator::new(1, 64);
            for piece in bytes.chunks(3) {
                if v.feed(piece).is_err() { break; }
            }
        }

        #[test]
        fn written_lines_parse_back(lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..20)) {
            let mut out = Vec::new();
            for line in &lines { write(&mut out, line); }
            flush(&mut out);
            let parsed = parse_all(&out).unwrap();
            prop_assert_eq!(parsed.len(), lines.len() + 1);
            for (pkt, line) in parsed.iter().zip(&lines) {
                prop_assert_eq!(pkt, &Pkt::Data(line));
            }
            // any chunking gives the same validation result
            let mut v = Validator::new(1, 1 << 20);
            for chunk in out.chunks(3) { v.feed(chunk).unwrap(); }
            prop_assert!(v.done());
        }
    }
}
