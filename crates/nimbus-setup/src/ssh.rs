//! Commands on a machine reached over SSH ([`SshExec`], on `russh`).
//!
//! One connection per machine, opened on first use and reused: every command is a channel on it
//! (at most [`SshOptions::max_sessions`] at once, below OpenSSH's `MaxSessions` default of 10).
//! A dead connection is replaced on the next command.
//!
//! Authentication is by private key only. The host key is pinned on first use through a
//! [`HostKeyStore`]; a later, different key is refused as [`Error::Denied`] and reported as
//! `nimbus.ssh.host_key_mismatch`, never accepted. [`Exec::wait_ready`] retries unreachable hosts
//! with bounded exponential backoff but gives up at once when retrying cannot help (wrong key,
//! changed host key, unparsable key).
//!
//! Commands reach the remote login shell as one string: `exec [env K=V…] /bin/sh -c '<script>'
//! nimbus-setup '<arg>'…`, every piece single-quoted, so arguments are data. The login shell must
//! be POSIX-like (sh, bash, dash, zsh). A timeout, or dropping the future that runs a command,
//! sends `SIGKILL` to the command's process group (OpenSSH signals the session's group).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nimbus_types::Secret;
use nimbus_types::event::{self, Event};
use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Sig};
use tokio::sync::Semaphore;

use crate::events::Events;
use crate::exec::{Command, Error, Exec, LineSink, LineSplitter, Output, Stream, push_capped};

/// Where a machine's SSH daemon is and how to log in.
#[derive(Clone, Debug)]
pub struct SshTarget {
    /// Stable identity for host-key pinning (e.g. `address:port` of a host, or a machine id).
    pub host_id: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    /// OpenSSH or PEM private key text.
    pub private_key: Secret,
}

impl SshTarget {
    fn endpoint(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }
}

/// Pinned host keys, keyed by [`SshTarget::host_id`]. Keys are OpenSSH public key lines without
/// comment (`ssh-ed25519 AAAA…`).
///
/// The daemon backs this with its store; [`MemoryHostKeyStore`] is for tests and single runs.
#[async_trait]
pub trait HostKeyStore: Send + Sync {
    /// The key pinned for `host_id`, if any.
    async fn get(&self, host_id: &str) -> Result<Option<String>, Error>;
    /// Pins `key` for `host_id`; called only after [`HostKeyStore::get`] returned `None`.
    async fn pin(&self, host_id: &str, key: &str) -> Result<(), Error>;
}

/// Host keys in memory.
#[derive(Debug, Default)]
pub struct MemoryHostKeyStore {
    keys: Mutex<HashMap<String, String>>,
}

impl MemoryHostKeyStore {
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryHostKeyStore::default())
    }
}

#[async_trait]
impl HostKeyStore for MemoryHostKeyStore {
    async fn get(&self, host_id: &str) -> Result<Option<String>, Error> {
        Ok(self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host_id)
            .cloned())
    }

    async fn pin(&self, host_id: &str, key: &str) -> Result<(), Error> {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(host_id.to_owned())
            .or_insert_with(|| key.to_owned());
        Ok(())
    }
}

/// Connection knobs.
#[derive(Clone, Debug)]
pub struct SshOptions {
    /// One attempt: TCP connect, key exchange and authentication.
    pub connect_timeout: Duration,
    /// First pause between attempts in [`Exec::wait_ready`]; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Channels open at once on the connection.
    pub max_sessions: usize,
    /// Keepalive interval; a connection that misses three is dropped and replaced.
    pub keepalive: Duration,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            connect_timeout: Duration::from_secs(15),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(5),
            max_sessions: 8,
            keepalive: Duration::from_secs(15),
        }
    }
}

/// Runs commands over one reused SSH connection.
pub struct SshExec {
    target: SshTarget,
    host_keys: Arc<dyn HostKeyStore>,
    events: Events,
    options: SshOptions,
    conn: tokio::sync::Mutex<Option<Arc<Handle<Client>>>>,
    sessions: Semaphore,
}

impl std::fmt::Debug for SshExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshExec")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Why one connection attempt failed.
enum Attempt {
    /// Worth another try (refused, reset, timed out, handshake cut short).
    Retry(String),
    /// Retrying cannot help.
    Fatal(Error),
}

impl SshExec {
    /// Nothing happens on the network until the first command or [`Exec::wait_ready`].
    pub fn new(
        target: SshTarget,
        host_keys: Arc<dyn HostKeyStore>,
        events: Events,
        options: SshOptions,
    ) -> Self {
        let sessions = Semaphore::new(options.max_sessions.max(1));
        SshExec {
            target,
            host_keys,
            events,
            options,
            conn: tokio::sync::Mutex::new(None),
            sessions,
        }
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// Closes the connection; the next command opens a new one.
    pub async fn disconnect(&self) {
        if let Some(handle) = self.conn.lock().await.take() {
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
        }
    }

    /// The live connection, or a new one after a single attempt.
    async fn connection(&self) -> Result<Arc<Handle<Client>>, Error> {
        let mut conn = self.conn.lock().await;
        if let Some(handle) = conn.as_ref()
            && !handle.is_closed()
        {
            return Ok(handle.clone());
        }
        *conn = None;
        let handle = Arc::new(self.connect(None).await?);
        *conn = Some(handle.clone());
        Ok(handle)
    }

    /// Connects, retrying until `wait` has passed when given. Emits `nimbus.ssh.connect_*`.
    async fn connect(&self, wait: Option<Duration>) -> Result<Handle<Client>, Error> {
        let started = Instant::now();
        self.events.emit(
            Event::new(event::SSH_CONNECT_START)
                .meta("host", self.target.endpoint())
                .meta("host_id", self.target.host_id.clone()),
        );
        let mut delay = self.options.backoff_initial;
        let mut attempts = 0u32;
        let result = loop {
            attempts += 1;
            match self.connect_once().await {
                Ok(handle) => break Ok(handle),
                Err(Attempt::Fatal(err)) => break Err(err),
                Err(Attempt::Retry(reason)) => {
                    let Some(wait) = wait else {
                        break Err(Error::Unreachable(format!(
                            "{}: {reason}",
                            self.target.endpoint()
                        )));
                    };
                    let elapsed = started.elapsed();
                    if elapsed + delay > wait {
                        break Err(Error::Unreachable(format!(
                            "{} did not accept SSH connections within {wait:?} ({attempts} attempts); last error: {reason}",
                            self.target.endpoint()
                        )));
                    }
                    tracing::debug!(host = %self.target.endpoint(), attempts, %reason, "ssh not reachable yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.options.backoff_max);
                }
            }
        };
        let base = |name| {
            Event::new(name)
                .duration(started.elapsed())
                .meta("host", self.target.endpoint())
                .meta("host_id", self.target.host_id.clone())
                .meta("attempts", attempts)
        };
        match &result {
            Ok(_) => self.events.emit(base(event::SSH_CONNECT_SUCCESS)),
            Err(err) => self
                .events
                .emit(base(event::SSH_CONNECT_FAILURE).error(err)),
        }
        result
    }

    async fn connect_once(&self) -> Result<Handle<Client>, Attempt> {
        let key = russh::keys::decode_secret_key(self.target.private_key.expose(), None).map_err(
            |err| {
                Attempt::Fatal(Error::Denied(format!(
                    "the private key for {} cannot be used: {err}",
                    self.target.endpoint()
                )))
            },
        )?;
        let config = Arc::new(client::Config {
            inactivity_timeout: None,
            keepalive_interval: Some(self.options.keepalive),
            keepalive_max: 3,
            nodelay: true,
            ..client::Config::default()
        });
        let mismatch = Arc::new(Mutex::new(None));
        let client = Client {
            host_id: self.target.host_id.clone(),
            host_keys: self.host_keys.clone(),
            mismatch: mismatch.clone(),
        };
        let endpoint = self.target.endpoint();
        let attempt = async {
            let mut handle = client::connect(
                config,
                (self.target.address.as_str(), self.target.port),
                client,
            )
            .await
            .map_err(|err| self.classify(err, &mismatch))?;
            let hash = if key.algorithm().is_rsa() {
                handle
                    .best_supported_rsa_hash()
                    .await
                    .map_err(|err| Attempt::Retry(err.to_string()))?
                    .flatten()
            } else {
                None
            };
            let auth = handle
                .authenticate_publickey(
                    self.target.user.clone(),
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await
                .map_err(|err| Attempt::Retry(format!("authentication cut short: {err}")))?;
            if !auth.success() {
                return Err(Attempt::Fatal(Error::Denied(format!(
                    "{endpoint} refused the key for user {:?}",
                    self.target.user
                ))));
            }
            Ok(handle)
        };
        match tokio::time::timeout(self.options.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Attempt::Retry(format!(
                "no SSH handshake within {:?}",
                self.options.connect_timeout
            ))),
        }
    }

    fn classify(&self, err: ClientError, mismatch: &Mutex<Option<(String, String)>>) -> Attempt {
        match err {
            ClientError::HostKeyMismatch => {
                let (expected, presented) = mismatch
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_default();
                self.events.emit(
                    Event::new(event::SSH_HOST_KEY_MISMATCH)
                        .meta("host", self.target.endpoint())
                        .meta("host_id", self.target.host_id.clone())
                        .meta("expected", expected.clone())
                        .meta("presented", presented.clone())
                        .error("host key changed"),
                );
                tracing::warn!(host = %self.target.endpoint(), %expected, %presented, "ssh host key mismatch");
                Attempt::Fatal(Error::Denied(format!(
                    "host key of {} changed: pinned {expected}, presented {presented}; refusing to connect",
                    self.target.endpoint()
                )))
            }
            ClientError::Rejected(reason) | ClientError::Store(reason) => {
                Attempt::Fatal(Error::Denied(reason))
            }
            ClientError::Ssh(err) => Attempt::Retry(err.to_string()),
        }
    }

    async fn run_inner(
        &self,
        command: &Command,
        lines: Option<LineSink<'_>>,
    ) -> Result<Output, Error> {
        let started = Instant::now();
        let label = command.label.clone().unwrap_or_else(|| "command".into());
        self.events.emit(
            Event::new(event::SSH_COMMAND_START)
                .meta("host", self.target.endpoint())
                .meta("command", label.clone()),
        );
        let result = self.run_channel(command, lines).await;
        let base = |name| {
            Event::new(name)
                .duration(started.elapsed())
                .meta("host", self.target.endpoint())
                .meta("command", label.clone())
        };
        match &result {
            Ok(output) if output.success() => self
                .events
                .emit(base(event::SSH_COMMAND_SUCCESS).meta("exit_code", 0)),
            Ok(output) => self.events.emit(
                base(event::SSH_COMMAND_FAILURE)
                    .meta("exit_code", output.exit_code)
                    .error(format!("exit code {}", output.exit_code)),
            ),
            Err(err) => self
                .events
                .emit(base(event::SSH_COMMAND_FAILURE).error(err)),
        }
        result
    }

    async fn run_channel(
        &self,
        command: &Command,
        lines: Option<LineSink<'_>>,
    ) -> Result<Output, Error> {
        let remote = remote_command(command)?;
        let _permit = self
            .sessions
            .acquire()
            .await
            .map_err(|_| Error::Unreachable("ssh executor closed".into()))?;
        let handle = self.connection().await?;
        let channel = match handle.channel_open_session().await {
            Ok(channel) => channel,
            Err(_) => {
                // The connection died since it was last used: replace it once.
                self.conn.lock().await.take();
                let handle = self.connection().await?;
                handle.channel_open_session().await.map_err(|err| {
                    Error::Unreachable(format!(
                        "{}: cannot open a channel: {err}",
                        self.target.endpoint()
                    ))
                })?
            }
        };
        let (mut read, write) = channel.split();
        let mut guard = KillOnDrop(Some(write));
        let write = guard.0.as_ref().expect("write half is set");
        write.exec(true, remote).await.map_err(|err| {
            Error::Unreachable(format!(
                "{}: exec request failed: {err}",
                self.target.endpoint()
            ))
        })?;

        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut out_lines = LineSplitter::default();
        let mut err_lines = LineSplitter::default();
        let mut exit_code = None;
        let work = async {
            let feed = async {
                if let Some(input) = &command.stdin {
                    // A command that exits without reading its input is not an error.
                    let _ = write.data(&input[..]).await;
                }
                let _ = write.eof().await;
            };
            let drain = async {
                // After the exit status, output is collected while it keeps coming (each chunk
                // renews a short deadline): a background job the command started may hold its
                // pipes, and so the channel, open for good.
                let mut drain_until = None;
                loop {
                    let msg = match drain_until {
                        None => read.wait().await,
                        Some(deadline) => {
                            match tokio::time::timeout_at(deadline, read.wait()).await {
                                Ok(msg) => msg,
                                Err(_) => return Ok(false),
                            }
                        }
                    };
                    match msg {
                        Some(ChannelMsg::Data { data }) => {
                            if drain_until.is_some() {
                                drain_until = Some(tokio::time::Instant::now() + PIPE_DRAIN);
                            }
                            push_capped(&mut stdout, &data);
                            if let Some(lines) = lines {
                                out_lines.push(&data, |line| lines(Stream::Stdout, line));
                            }
                        }
                        Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                            if drain_until.is_some() {
                                drain_until = Some(tokio::time::Instant::now() + PIPE_DRAIN);
                            }
                            push_capped(&mut stderr, &data);
                            if let Some(lines) = lines {
                                err_lines.push(&data, |line| lines(Stream::Stderr, line));
                            }
                        }
                        Some(ChannelMsg::ExitStatus { exit_status }) => {
                            exit_code = Some(exit_status as i32);
                            drain_until = Some(tokio::time::Instant::now() + PIPE_DRAIN);
                        }
                        Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                            exit_code = Some(128 + signal_number(&signal_name));
                            drain_until = Some(tokio::time::Instant::now() + PIPE_DRAIN);
                        }
                        Some(ChannelMsg::Failure) => {
                            return Err(Error::Unreachable(format!(
                                "{} refused to run the command",
                                self.target.endpoint()
                            )));
                        }
                        Some(ChannelMsg::Close) | None => return Ok(true),
                        Some(_) => {}
                    }
                }
            };
            let ((), drained) = tokio::join!(feed, drain);
            drained
        };
        let closed = match tokio::time::timeout(command.timeout, work).await {
            Ok(Ok(closed)) => closed,
            Ok(Err(err)) => return Err(err),
            Err(_) => return Err(Error::Timeout(command.timeout)),
        };
        // The command is over: nothing to kill. Background jobs it started live on; a channel
        // they keep open is closed from our side.
        if let Some(write) = guard.0.take()
            && !closed
        {
            let _ = write.close().await;
        }
        if let Some(lines) = lines {
            out_lines.finish(|line| lines(Stream::Stdout, line));
            err_lines.finish(|line| lines(Stream::Stderr, line));
        }
        let Some(exit_code) = exit_code else {
            return Err(Error::Unreachable(format!(
                "{}: connection lost before the command finished",
                self.target.endpoint()
            )));
        };
        Ok(Output {
            exit_code,
            stdout,
            stderr,
        })
    }
}

/// How long to wait for more output once the exit status arrived (background jobs may hold the
/// command's pipes open indefinitely).
const PIPE_DRAIN: Duration = Duration::from_millis(200);

/// Sends `SIGKILL` to a command's process group unless disarmed: covers timeouts and dropped
/// futures.
struct KillOnDrop(Option<russh::ChannelWriteHalf<client::Msg>>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(write) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = write.signal(Sig::KILL).await;
                let _ = write.close().await;
            });
        }
    }
}

fn signal_number(sig: &Sig) -> i32 {
    match sig {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(_) => 127,
    }
}

/// Checks that `key` is an unencrypted private key Nimbus can log in with (OpenSSH or PEM
/// format). The error never contains the key.
pub fn check_private_key(key: &Secret) -> Result<(), Error> {
    russh::keys::decode_secret_key(key.expose(), None)
        .map(drop)
        .map_err(|err| Error::Denied(format!("unusable private key: {err}")))
}

/// Single-quotes `value` for a POSIX shell: the result is one word whose value is `value`.
pub fn shell_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The string the remote login shell runs for `command`.
pub fn remote_command(command: &Command) -> Result<String, Error> {
    let invalid = |what: &str| {
        Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        ))
    };
    if command.script.contains('\0') {
        return Err(invalid("the script"));
    }
    let mut out = String::from("exec ");
    if !command.env.is_empty() {
        out.push_str("env ");
        for (key, value) in &command.env {
            let valid = !key.is_empty()
                && !key.as_bytes()[0].is_ascii_digit()
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("invalid environment variable name {key:?}"),
                )));
            }
            if value.contains('\0') {
                return Err(invalid("an environment value"));
            }
            out.push_str(&shell_quote(&format!("{key}={value}")));
            out.push(' ');
        }
    }
    out.push_str("/bin/sh -c ");
    out.push_str(&shell_quote(&command.script));
    out.push_str(" nimbus-setup");
    for arg in &command.args {
        if arg.contains('\0') {
            return Err(invalid("an argument"));
        }
        out.push(' ');
        out.push_str(&shell_quote(arg));
    }
    Ok(out)
}

#[async_trait]
impl Exec for SshExec {
    async fn run(&self, command: &Command) -> Result<Output, Error> {
        self.run_inner(command, None).await
    }

    async fn run_streaming(&self, command: &Command, lines: LineSink<'_>) -> Result<Output, Error> {
        self.run_inner(command, Some(lines)).await
    }

    async fn upload(&self, path: &str, contents: &[u8], mode: u32) -> Result<(), Error> {
        let command = Command::new(UPLOAD_SCRIPT)
            .arg(path)
            .arg(format!("{:o}", mode & 0o7777))
            .stdin(contents)
            .label("upload");
        let output = self.run(&command).await?;
        if !output.success() {
            return Err(Error::Io(std::io::Error::other(format!(
                "upload to {path} failed (exit code {}): {}",
                output.exit_code,
                output.stderr_str().trim()
            ))));
        }
        Ok(())
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let mut conn = self.conn.lock().await;
        if let Some(handle) = conn.as_ref()
            && !handle.is_closed()
        {
            return Ok(());
        }
        *conn = Some(Arc::new(self.connect(Some(timeout)).await?));
        Ok(())
    }
}

/// Writes stdin to `$1` with mode `$2` through a temporary file, so a reader never sees half a
/// file.
const UPLOAD_SCRIPT: &str = r#"set -e
dir=$(dirname -- "$1")
mkdir -p -- "$dir"
tmp="$1.nimbus-upload.$$"
umask 077
cat > "$tmp"
chmod "$2" "$tmp"
mv -f -- "$tmp" "$1""#;

#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error(transparent)]
    Ssh(#[from] russh::Error),
    #[error("host key mismatch")]
    HostKeyMismatch,
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Store(String),
}

/// The russh handler: checks the server's host key against the pinned one.
struct Client {
    host_id: String,
    host_keys: Arc<dyn HostKeyStore>,
    /// (pinned, presented) fingerprints when the key did not match.
    mismatch: Arc<Mutex<Option<(String, String)>>>,
}

/// `ssh-ed25519 AAAA…` without comment.
pub fn openssh_line(key: &PublicKey) -> String {
    let mut key = key.clone();
    key.set_comment("");
    key.to_openssh()
        .map(|line| line.trim().to_owned())
        .unwrap_or_default()
}

impl client::Handler for Client {
    type Error = ClientError;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let presented = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                return Err(ClientError::Rejected(format!(
                    "{} presented a host certificate; Nimbus pins plain host keys",
                    self.host_id
                )));
            }
        };
        let pinned = self
            .host_keys
            .get(&self.host_id)
            .await
            .map_err(|err| ClientError::Store(format!("host key store: {err}")))?;
        match pinned {
            None => {
                self.host_keys
                    .pin(&self.host_id, &openssh_line(presented))
                    .await
                    .map_err(|err| ClientError::Store(format!("host key store: {err}")))?;
                tracing::info!(host_id = %self.host_id, fingerprint = %presented.fingerprint(HashAlg::Sha256), "pinned ssh host key on first use");
                Ok(true)
            }
            Some(pinned) => {
                let pinned_key = PublicKey::from_openssh(&pinned).map_err(|err| {
                    ClientError::Store(format!(
                        "the pinned host key of {} cannot be parsed: {err}",
                        self.host_id
                    ))
                })?;
                if pinned_key.key_data() == presented.key_data() {
                    return Ok(true);
                }
                *self.mismatch.lock().unwrap_or_else(|e| e.into_inner()) = Some((
                    pinned_key.fingerprint(HashAlg::Sha256).to_string(),
                    presented.fingerprint(HashAlg::Sha256).to_string(),
                ));
                Err(ClientError::HostKeyMismatch)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_values_as_one_word() {
        assert_eq!(shell_quote("plain"), "'plain'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn remote_commands_quote_everything() {
        let command = Command::new("echo \"$1\"")
            .arg("$(id); rm -rf /")
            .env("A_B", "x'y");
        assert_eq!(
            remote_command(&command).unwrap(),
            "exec env 'A_B=x'\\''y' /bin/sh -c 'echo \"$1\"' nimbus-setup '$(id); rm -rf /'"
        );
        assert!(remote_command(&Command::new("true").env("A=B", "x")).is_err());
        assert!(remote_command(&Command::new("true").env("1A", "x")).is_err());
        assert!(remote_command(&Command::new("true").arg("a\0b")).is_err());
    }
}
