//! End-to-end harness: the real `nimbusd server` and `nimbusctl` binaries, each test in its own
//! temporary HOME with its own XDG directories and a daemon on `127.0.0.1:0`.
//!
//! On failure (a panic while a [`World`] is alive) the harness prints what a person needs to
//! reproduce it: the directories, every command it ran with its exit status, stdout and stderr,
//! and the daemon's command line, stdout and stderr. Whatever happens, it stops the daemons and
//! kills every local-machine process that lives under the test's directory.
//!
//! Finding `nimbusd`: Cargo gives `CARGO_BIN_EXE_<name>` only for binaries of the package under
//! test, and an artifact dependency on `nimbusd` needs unstable `-Z bindeps`. So the harness
//! builds `nimbusd` itself, once per test run, with the same cargo, target directory and profile
//! that built this test (`cargo build -p nimbusd`), and takes it from next to `nimbusctl`. It
//! always asks cargo rather than only when the file is missing, because a stale `nimbusd` from an
//! earlier build would silently test old code; cargo's up-to-date check costs well under a
//! second. `NIMBUS_E2E_NIMBUSD=/path/to/nimbusd` skips the build and uses that binary; the
//! README's test command sets it (and `NIMBUS_E2E_NIMBUS_GIT`) to the binaries its
//! `cargo nextest run --workspace` has just built, because `cargo build -p nimbusd` resolves
//! features for one package and would compile much of the dependency graph a second time.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest a single `nimbusctl` invocation may take before the test gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest `nimbusd server` may take to print its address (a debug build on a busy machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;

mod sys {
    // The test crate cannot add `nix`/`libc`; `kill(2)` is in the C library std already links.
    unsafe extern "C" {
        // SAFETY: kill(2) takes two integers and touches no memory of ours; any values are fine.
        pub safe fn kill(pid: i32, sig: i32) -> i32;
    }
}

/// Sends `signal` to `pid`; true when it was delivered.
pub fn send_signal(pid: u32, signal: i32) -> bool {
    sys::kill(pid as i32, signal) == 0
}

pub fn nimbusctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nimbusctl"))
}

/// The `nimbusd` binary of this build (see the module docs for why it is built here).
pub fn nimbusd_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("nimbusd", "NIMBUS_E2E_NIMBUSD"))
        .clone()
}

/// The `nimbus-git` binary of this build, built like `nimbusd` (`NIMBUS_E2E_NIMBUS_GIT`
/// overrides it).
pub fn nimbus_git_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("nimbus-git", "NIMBUS_E2E_NIMBUS_GIT"))
        .clone()
}

/// Builds the workspace binary `name` (package and binary share the name) with the cargo,
/// target directory and profile of this test, once per test run; `override_var` names a
/// prebuilt binary instead.
fn workspace_bin(name: &str, override_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(override_var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{override_var}={} is not a file",
            path.display()
        );
        return path;
    }
    let nimbusctl = nimbusctl_bin();
    let profile_dir = nimbusctl
        .parent()
        .expect("nimbusctl lives in a directory")
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .expect("the profile directory has a parent")
        .to_path_buf();
    let bin = profile_dir.join(name);
    // nextest runs each test in its own process: build once per run, not once per test.
    let run_id = std::env::var("NEXTEST_RUN_ID").ok();
    let marker = profile_dir.join(format!(".{name}-e2e-built"));
    if let Some(run_id) = &run_id
        && bin.is_file()
        && std::fs::read_to_string(&marker).is_ok_and(|seen| seen == *run_id)
    {
        return bin;
    }
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", name, "--bin", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", &target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let shown = format!("CARGO_TARGET_DIR={} {cmd:?}", target_dir.display());
    eprintln!("e2e: building {name} so the test runs the current code: {shown}");
    let output = cmd
        .output()
        .unwrap_or_else(|err| panic!("cannot run `{shown}`: {err}"));
    assert!(
        output.status.success(),
        "{name} is needed by the end-to-end tests and did not build.\ncommand: {shown}\n\
         status: {}\nstderr:\n{}\nBuild it yourself (`cargo build -p {name}`) or point \
         {override_var} at a {name} binary.",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        bin.is_file(),
        "`{shown}` succeeded but {} does not exist (a --target build? set {override_var})",
        bin.display()
    );
    if let Some(run_id) = run_id {
        let _ = std::fs::write(&marker, run_id);
    }
    bin
}

/// One finished command.
#[derive(Clone, Debug)]
pub struct Run {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "$ {}\nexit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n",
            self.command,
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Asserts exit 0.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert!(
            self.status.success(),
            "command failed:\n{}",
            self.describe()
        );
        self
    }

    /// Asserts a non-zero exit with one line on stderr, prefixed `nimbusctl:`, containing
    /// `needle`, and nothing on stdout. Returns the line.
    #[track_caller]
    pub fn fails_with(self, needle: &str) -> String {
        assert!(
            !self.status.success() && self.status.code().is_some(),
            "expected a non-zero exit:\n{}",
            self.describe()
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one line on stderr:\n{}",
            self.describe()
        );
        let line = lines[0];
        assert!(
            line.starts_with("nimbusctl: "),
            "error line lacks the `nimbusctl: ` prefix:\n{}",
            self.describe()
        );
        assert!(
            line.to_lowercase().contains(&needle.to_lowercase()),
            "error line does not mention {needle:?}:\n{}",
            self.describe()
        );
        assert!(
            self.stdout.trim().is_empty(),
            "an error printed to stdout:\n{}",
            self.describe()
        );
        line.to_owned()
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}):\n{}", self.describe()))
    }

    /// Table rows on stdout (header first), split on runs of two or more spaces.
    pub fn table(&self) -> Vec<Vec<String>> {
        self.stdout
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                line.trim()
                    .split("  ")
                    .map(str::trim)
                    .filter(|cell| !cell.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .collect()
    }
}

/// Output a background reader collects.
type Captured = Arc<Mutex<Vec<u8>>>;

fn capture(reader: impl Read + Send + 'static) -> Captured {
    capture_until_eof(reader).0
}

/// Like [`capture`], with a receiver that disconnects once the reader saw EOF.
fn capture_until_eof(mut reader: impl Read + Send + 'static) -> (Captured, mpsc::Receiver<()>) {
    let buffer: Captured = Arc::default();
    let sink = buffer.clone();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _done = done_tx;
        let mut chunk = [0u8; 8192];
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buffer, done_rx)
}

fn text(captured: &Captured) -> String {
    String::from_utf8_lossy(&captured.lock().unwrap()).into_owned()
}

/// A running (or finished) `nimbusd server`.
pub struct Daemon {
    child: Child,
    pub url: String,
    pub command: String,
    stdout: Captured,
    stderr: Captured,
    pub exit: Option<ExitStatus>,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        text(&self.stdout)
    }

    pub fn stderr(&self) -> String {
        text(&self.stderr)
    }

    fn describe(&self) -> String {
        format!(
            "$ {}\nurl: {}\nexit: {}\n--- nimbusd stdout ---\n{}\n--- nimbusd stderr ---\n{}\n",
            self.command,
            self.url,
            self.exit
                .map_or("still running".to_owned(), |s| s.to_string()),
            self.stdout().trim_end(),
            self.stderr().trim_end()
        )
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for nimbusd") {
                self.exit = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }
}

/// A test's world: temporary HOME and XDG directories, the daemons started in them, and a
/// transcript of everything run.
pub struct World {
    pub root: tempfile::TempDir,
    pub home: PathBuf,
    pub config_home: PathBuf,
    pub data_home: PathBuf,
    pub state_home: PathBuf,
    /// The current daemon; earlier ones (before a restart) move to `stopped`.
    daemon: Option<Daemon>,
    stopped: Vec<Daemon>,
    transcript: Mutex<Vec<String>>,
    /// Background processes (e.g. `nimbusctl events`) to kill at the end, with their command
    /// lines and stderr.
    background: Mutex<Vec<(Child, String, Captured)>>,
}

impl World {
    /// Fresh directories, no daemon yet.
    pub fn empty() -> World {
        let root = tempfile::Builder::new()
            .prefix("nimbus-e2e-")
            .tempdir()
            .expect("create a temp dir");
        let base = root.path().to_path_buf();
        let world = World {
            home: base.join("home"),
            config_home: base.join("config"),
            data_home: base.join("data"),
            state_home: base.join("state"),
            root,
            daemon: None,
            stopped: Vec::new(),
            transcript: Mutex::default(),
            background: Mutex::default(),
        };
        std::fs::create_dir_all(&world.home).unwrap();
        world
    }

    /// Fresh directories and a daemon on `127.0.0.1:0`.
    pub fn start() -> World {
        let mut world = World::empty();
        world.start_daemon(&[]);
        world
    }

    /// Environment every process of this world gets: its own HOME and XDG directories, and
    /// none of the caller's `NIMBUS_*` settings.
    fn env(&self, cmd: &mut Command) {
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("NIMBUS_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", &self.config_home)
            .env("XDG_DATA_HOME", &self.data_home)
            .env("XDG_STATE_HOME", &self.state_home)
            .env("NO_COLOR", "1")
            .current_dir(&self.home);
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon
            .as_ref()
            .expect("no daemon is running in this test")
    }

    pub fn daemon_mut(&mut self) -> &mut Daemon {
        self.daemon
            .as_mut()
            .expect("no daemon is running in this test")
    }

    pub fn url(&self) -> String {
        self.daemon().url.clone()
    }

    /// Starts `nimbusd server --listen 127.0.0.1:0 EXTRA…` and waits for its address line.
    pub fn start_daemon(&mut self, extra: &[&str]) {
        self.start_daemon_env(extra, &[]);
    }

    /// [`World::start_daemon`] with extra environment variables (`NIMBUS_LOG`, say).
    pub fn start_daemon_env(&mut self, extra: &[&str], vars: &[(&str, &str)]) {
        if let Some(old) = self.daemon.take() {
            self.stopped.push(old);
        }
        let bin = nimbusd_bin();
        let mut cmd = Command::new(&bin);
        cmd.args(["server", "--listen", "127.0.0.1:0"]).args(extra);
        self.env(&mut cmd);
        for (key, value) in vars {
            cmd.env(key, value);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let command = format!(
            "{} server --listen 127.0.0.1:0 {}",
            bin.display(),
            extra.join(" ")
        );
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start `{command}`: {err}"));
        let stderr = capture(child.stderr.take().unwrap());
        let stdout: Captured = Arc::default();
        let (addr_tx, addr_rx) = mpsc::channel();
        {
            let sink = stdout.clone();
            let reader = BufReader::new(child.stdout.take().unwrap());
            std::thread::spawn(move || {
                for line in reader.lines() {
                    let Ok(line) = line else { break };
                    {
                        let mut sink = sink.lock().unwrap();
                        sink.extend_from_slice(line.as_bytes());
                        sink.push(b'\n');
                    }
                    if let Some(url) = line.strip_prefix("nimbusd listening on ") {
                        let _ = addr_tx.send(url.trim().to_owned());
                    }
                }
            });
        }
        let mut daemon = Daemon {
            child,
            url: String::new(),
            command,
            stdout,
            stderr,
            exit: None,
        };
        loop {
            match addr_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(url) => {
                    daemon.url = url;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    daemon.wait_exit(Duration::from_secs(5));
                    panic!(
                        "nimbusd closed stdout without printing its address:\n{}",
                        daemon.describe()
                    );
                }
            }
            if daemon.wait_exit(Duration::ZERO).is_some() {
                panic!(
                    "nimbusd exited before printing its address:\n{}",
                    daemon.describe()
                );
            }
            if started.elapsed() > START_TIMEOUT {
                daemon.kill();
                panic!(
                    "nimbusd did not print its address within {START_TIMEOUT:?}:\n{}",
                    daemon.describe()
                );
            }
        }
        assert!(
            daemon.url.starts_with("http://127.0.0.1:"),
            "unexpected address line:\n{}",
            daemon.describe()
        );
        self.daemon = Some(daemon);
    }

    /// Sends `signal` to the daemon and waits for it to exit.
    #[track_caller]
    pub fn stop_daemon(&mut self, signal: i32, timeout: Duration) -> ExitStatus {
        let daemon = self.daemon.as_mut().expect("no daemon is running");
        assert!(
            send_signal(daemon.pid(), signal),
            "cannot signal nimbusd (pid {})",
            daemon.pid()
        );
        let status = daemon.wait_exit(timeout);
        let daemon = self.daemon.take().unwrap();
        self.stopped.push(daemon);
        status.unwrap_or_else(|| {
            panic!("nimbusd did not exit within {timeout:?} after signal {signal}")
        })
    }

    fn record(&self, entry: String) {
        self.transcript.lock().unwrap().push(entry);
    }

    /// Runs `nimbusctl ARGS…` against the current daemon (its URL in `NIMBUS_URL`; the token
    /// comes from the admin-token file, as on the server's own host).
    pub fn ctl(&self, args: &[&str]) -> Run {
        self.ctl_env(args, &[])
    }

    /// Like [`World::ctl`] with extra environment, e.g. `("NIMBUS_TOKEN", token)`.
    pub fn ctl_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(nimbusctl_bin());
        cmd.args(args);
        self.env(&mut cmd);
        if let Some(daemon) = &self.daemon {
            cmd.env("NIMBUS_URL", &daemon.url);
        }
        for (key, value) in vars {
            cmd.env(key, value);
        }
        let shown = format!(
            "{}nimbusctl {}",
            vars.iter()
                .map(|(k, v)| if *k == "NIMBUS_TOKEN" {
                    format!("{k}=<token> ")
                } else {
                    format!("{k}={v} ")
                })
                .collect::<String>(),
            redact_args(args)
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let run = run_with_timeout(cmd, shown, COMMAND_TIMEOUT);
        self.record(run.describe());
        run
    }

    /// Starts `nimbusctl ARGS…` in the background with stdout delivered line by line.
    pub fn ctl_background(&self, args: &[&str]) -> (u32, mpsc::Receiver<String>) {
        let mut cmd = Command::new(nimbusctl_bin());
        cmd.args(args);
        self.env(&mut cmd);
        cmd.env("NIMBUS_URL", self.url())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start nimbusctl");
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        let reader = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = capture(child.stderr.take().unwrap());
        let shown = format!("nimbusctl {}", redact_args(args).join(" "));
        self.record(format!("$ {shown} &   (background, pid {pid})\n"));
        self.background.lock().unwrap().push((child, shown, stderr));
        (pid, rx)
    }

    /// Kills a background process and returns its exit status; its stderr goes to the
    /// transcript.
    pub fn kill_background(&self, pid: u32) -> Option<ExitStatus> {
        let (mut child, shown, stderr) = {
            let mut background = self.background.lock().unwrap();
            let idx = background.iter().position(|(c, _, _)| c.id() == pid)?;
            background.remove(idx)
        };
        let _ = child.kill();
        let status = child.wait().ok();
        self.record(format!(
            "$ {shown}   (background, pid {pid}, killed)\nexit: {status:?}\n--- stderr ---\n{}\n",
            text(&stderr).trim_end()
        ));
        status
    }

    /// Writes `contents` to a file in the world (mode 0755) and returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.root.path().join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    pub fn admin_token_path(&self) -> PathBuf {
        self.config_home.join("nimbus/admin-token")
    }

    pub fn machines_dir(&self) -> PathBuf {
        self.state_home.join("nimbus/machines")
    }

    pub fn machine_dir(&self, id: &str) -> PathBuf {
        self.machines_dir().join(id)
    }

    /// `tenant create` + `provider add --type local`, as the README does.
    pub fn tenant_with_local_provider(&self, tenant: &str, provider: &str) {
        self.ctl(&["tenant", "create", tenant]).ok();
        self.ctl(&[
            "provider", "add", "--tenant", tenant, "--type", "local", "--name", provider,
        ])
        .ok();
    }

    /// The machine as `machine show --json` reports it.
    pub fn machine(&self, id: &str) -> Value {
        self.ctl(&["--json", "machine", "show", id]).ok().json()["machine"].clone()
    }

    pub fn machine_state(&self, id: &str) -> String {
        self.machine(id)["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Polls `what` every 100 ms until it returns `Some`, or panics after `timeout` with `what`'s
    /// description and the last value seen.
    #[track_caller]
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            match check() {
                Ok(value) => return value,
                Err(last) if Instant::now() >= deadline => {
                    panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A report of everything this test did, for failures.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "===== nimbus e2e failure report =====");
        let _ = writeln!(out, "root: {}", self.root.path().display());
        let _ = writeln!(
            out,
            "HOME={} XDG_CONFIG_HOME={} XDG_DATA_HOME={} XDG_STATE_HOME={}",
            self.home.display(),
            self.config_home.display(),
            self.data_home.display(),
            self.state_home.display()
        );
        let _ = writeln!(out, "(set NIMBUS_E2E_KEEP=1 to keep the directory)");
        let _ = writeln!(out, "\n===== nimbusctl commands, in order =====");
        for entry in self.transcript.lock().unwrap().iter() {
            let _ = writeln!(out, "{entry}");
        }
        for (idx, daemon) in self.stopped.iter().chain(self.daemon.iter()).enumerate() {
            let _ = writeln!(
                out,
                "===== nimbusd run {} =====\n{}",
                idx + 1,
                daemon.describe()
            );
        }
        out
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        let background: Vec<u32> = self
            .background
            .lock()
            .unwrap()
            .iter()
            .map(|(c, _, _)| c.id())
            .collect();
        for pid in background {
            self.kill_background(pid);
        }
        if let Some(daemon) = self.daemon.as_mut() {
            daemon.kill();
        }
        if failed {
            eprintln!("{}", self.report());
        }
        // Whatever the test left, no machine process of this world outlives it.
        let leftovers = processes_under(self.root.path());
        if !leftovers.is_empty() {
            if failed {
                eprintln!(
                    "killing processes left under {}: {leftovers:?}",
                    self.root.path().display()
                );
            }
            for (pid, _) in &leftovers {
                send_signal(*pid, SIGKILL);
            }
        }
        if failed && std::env::var_os("NIMBUS_E2E_KEEP").is_some() {
            let path = std::mem::replace(&mut self.root, tempfile::tempdir().unwrap()).keep();
            eprintln!("kept {}", path.display());
        }
    }
}

/// Arguments as shown in reports: the value after `--token` is hidden.
fn redact_args(args: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    for arg in args {
        if out.last().is_some_and(|prev| prev == "--token") {
            out.push("<token>".into());
        } else {
            out.push((*arg).to_owned());
        }
    }
    out
}

fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,%+".contains(c))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Runs a command to completion with captured output, killing it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, shown: String, timeout: Duration) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run `{shown}`: {err}"));
    let (stdout, stdout_done) = capture_until_eof(child.stdout.take().unwrap());
    let (stderr, stderr_done) = capture_until_eof(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{shown}` did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                text(&stdout),
                text(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // The readers see EOF right after the exit (unless the command left a child holding the
    // pipes, which nimbusctl does not do).
    for done in [stdout_done, stderr_done] {
        let _ = done.recv_timeout(Duration::from_secs(5));
    }
    let (out, err) = (text(&stdout), text(&stderr));
    Run {
        command: shown,
        status,
        stdout: out,
        stderr: err,
    }
}

/// Live processes whose environment carries `NIMBUS_MACHINE_ID=<machine_id>`, with their
/// command lines.
pub fn machine_processes(machine_id: &str) -> Vec<(u32, String)> {
    let needle = format!("NIMBUS_MACHINE_ID={machine_id}");
    scan_proc(|_, environ| {
        environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
    })
}

/// Live processes carrying any `NIMBUS_MACHINE_ID` whose working directory or HOME is under
/// `root`: what a test's machines left behind.
pub fn processes_under(root: &Path) -> Vec<(u32, String)> {
    let home = format!("HOME={}", root.display());
    scan_proc(|pid, environ| {
        let marked = environ
            .split(|b| *b == 0)
            .any(|var| var.starts_with(b"NIMBUS_MACHINE_ID="));
        let cwd_under =
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(root));
        let home_under = environ
            .split(|b| *b == 0)
            .any(|var| var.starts_with(home.as_bytes()));
        marked && (cwd_under || home_under)
    })
}

fn scan_proc(mut keep: impl FnMut(u32, &[u8]) -> bool) -> Vec<(u32, String)> {
    let own = std::process::id();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        // A zombie has exited; it only waits for its parent to reap it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
        {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if keep(pid, &environ) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .trim()
                .to_owned();
            out.push((pid, cmdline));
        }
    }
    out
}

/// Whether a process is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty()
        && !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
}

/// A plain HTTP/1.1 GET (no dependencies, `Connection: close`): status and body.
pub fn http_get(base: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let authority = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream =
        TcpStream::connect(authority).unwrap_or_else(|err| panic!("connect {authority}: {err}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
    (status, body.to_owned())
}

/// An address nothing listens on (bound, then released).
pub fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}
