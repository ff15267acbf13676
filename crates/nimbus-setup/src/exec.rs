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
}

impl Command {
    pub fn new(script: impl Into<String>) -> Self {
        Command {
            script: script.into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            timeout: Duration::from_secs(600),
        }
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

/// Runs commands on one machine.
#[async_trait]
pub trait Exec: Send + Sync {
    /// Runs `command` to completion (or its timeout, which kills it) and returns its output.
    async fn run(&self, command: &Command) -> Result<Output, Error>;
    /// Writes `contents` to `path` on the machine with the given Unix mode.
    async fn upload(&self, path: &str, contents: &[u8], mode: u32) -> Result<(), Error>;
}

/// Keeps the last `MAX_OUTPUT` bytes of a stream.
pub(crate) fn push_capped(buf: &mut Vec<u8>, data: &[u8]) {
    buf.extend_from_slice(data);
    if buf.len() > MAX_OUTPUT {
        let excess = buf.len() - MAX_OUTPUT;
        buf.drain(..excess);
    }
}
