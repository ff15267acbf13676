//! Running commands on a machine.

use std::time::Duration;

use async_trait::async_trait;

/// A command to run on a machine.
///
/// `script` is run by `/bin/sh -c`; `args` become its positional parameters (`$1`, `$2`, …), so
/// untrusted values are passed as data and never pasted into the script text.
#[derive(Clone, Debug)]
pub struct Command {
    pub script: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    /// A short name for telemetry (`nimbus.ssh.command_*` events carry it, never the script
    /// or its arguments, which may hold secrets).
    pub label: Option<String>,
}

impl Command {
    pub fn new(script: impl Into<String>) -> Self {
        Command {
            script: script.into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            timeout: Duration::from_secs(600),
            label: None,
        }
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn stdin(mut self, stdin: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// What a finished command left behind. Output is capped (see [`MAX_OUTPUT`]); the tail is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Output kept per stream; older bytes are dropped.
pub const MAX_OUTPUT: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("command timed out after {0:?}")]
    Timeout(Duration),
    /// The machine could not be reached (yet): worth retrying.
    #[error("machine unreachable: {0}")]
    Unreachable(String),
    /// Authentication or host key verification failed: retrying will not help.
    #[error("access denied: {0}")]
    Denied(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Receives output lines while a command runs (without the trailing newline; invalid UTF-8
/// replaced).
pub type LineSink<'a> = &'a (dyn Fn(Stream, &str) + Send + Sync);

/// Runs commands on one machine.
#[async_trait]
pub trait Exec: Send + Sync {
    /// Runs `command` to completion (or its timeout, which kills it) and returns its output.
    async fn run(&self, command: &Command) -> Result<Output, Error>;
    /// Writes `contents` to `path` on the machine with the given Unix mode.
    async fn upload(&self, path: &str, contents: &[u8], mode: u32) -> Result<(), Error>;

    /// Like [`Exec::run`], and hands every output line to `lines` as it arrives. The default
    /// replays the lines after the command finished; executors that can stream override it.
    async fn run_streaming(&self, command: &Command, lines: LineSink<'_>) -> Result<Output, Error> {
        let output = self.run(command).await?;
        let mut splitter = LineSplitter::default();
        splitter.push(&output.stdout, |line| lines(Stream::Stdout, line));
        splitter.finish(|line| lines(Stream::Stdout, line));
        splitter.push(&output.stderr, |line| lines(Stream::Stderr, line));
        splitter.finish(|line| lines(Stream::Stderr, line));
        Ok(output)
    }

    /// Waits until the machine accepts commands, at most `timeout`. Executors that need a
    /// connection (SSH) retry with backoff and fail fast when retrying cannot help; the default
    /// (local machines) is ready at once.
    async fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let _ = timeout;
        Ok(())
    }
}

/// Splits a byte stream into lines across chunk boundaries.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Longest line handed on in one piece; longer ones are cut.
    const MAX_LINE: usize = 64 * 1024;

    pub fn push(&mut self, data: &[u8], mut line: impl FnMut(&str)) {
        for &byte in data {
            if byte == b'\n' || self.partial.len() >= Self::MAX_LINE {
                let text = String::from_utf8_lossy(&self.partial);
                line(text.trim_end_matches('\r'));
                self.partial.clear();
                if byte == b'\n' {
                    continue;
                }
            }
            self.partial.push(byte);
        }
    }

    /// Hands on what is left after the last newline.
    pub fn finish(&mut self, mut line: impl FnMut(&str)) {
        if !self.partial.is_empty() {
            line(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
    }
}

/// Keeps the last `MAX_OUTPUT` bytes of a stream.
pub(crate) fn push_capped(buf: &mut Vec<u8>, data: &[u8]) {
    buf.extend_from_slice(data);
    if buf.len() > MAX_OUTPUT {
        let excess = buf.len() - MAX_OUTPUT;
        buf.drain(..excess);
    }
}
