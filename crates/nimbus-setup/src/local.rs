//! Commands on a local machine: child processes of `nimbusd` on this host.
//!
//! Every process of a local machine carries `NIMBUS_MACHINE_ID=<id>` in its environment, so the
//! whole machine can be found and killed from `/proc` even after `nimbusd` was killed and its
//! process groups were orphaned ([`kill_machine_processes`]). Each command runs in a process
//! group of its own; a timeout, or dropping the future that runs it, kills that whole group.
//! Background jobs of a command that finished (services it started) live on with the machine.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::exec::{Command, Error, Exec, LineSink, LineSplitter, Output, Stream, push_capped};

/// The environment variable that marks a process as belonging to a local machine.
pub const MACHINE_MARKER: &str = "NIMBUS_MACHINE_ID";

/// Runs commands for one local machine, with the machine's directory as working directory and
/// `HOME`.
#[derive(Clone, Debug)]
pub struct LocalExec {
    dir: PathBuf,
    machine_id: String,
}

impl LocalExec {
    pub fn new(dir: impl Into<PathBuf>, machine_id: impl Into<String>) -> Self {
        LocalExec {
            dir: dir.into(),
            machine_id: machine_id.into(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn command(&self, command: &Command) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&command.script)
            .arg("nimbus-setup")
            .args(&command.args)
            .current_dir(&self.dir)
            .env("HOME", &self.dir)
            .env(MACHINE_MARKER, &self.machine_id)
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .stdin(if command.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }
}

impl LocalExec {
    async fn run_with(
        &self,
        command: &Command,
        lines: Option<LineSink<'_>>,
    ) -> Result<Output, Error> {
        let mut child = self.command(command).spawn()?;
        let mut guard = GroupGuard(child.id().map(|pid| pid as i32));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let stdin = child.stdin.take();
        let input = command.stdin.clone();

        // Readers fill shared buffers, so that what was read survives when a background job
        // that inherited the pipes keeps them open after the command itself exited. When the
        // caller streams, they also pass each chunk on through a channel.
        let out_buf = Arc::new(Mutex::new(Vec::new()));
        let err_buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Stream, Vec<u8>)>();
        let tap = |stream| lines.is_some().then(|| (stream, tx.clone()));
        let mut readers = tokio::task::JoinSet::new();
        readers.spawn(read_into(stdout, out_buf.clone(), tap(Stream::Stdout)));
        readers.spawn(read_into(stderr, err_buf.clone(), tap(Stream::Stderr)));
        drop(tx);
        let mut out_lines = LineSplitter::default();
        let mut err_lines = LineSplitter::default();
        let mut hand_on = |(stream, chunk): (Stream, Vec<u8>)| {
            if let Some(lines) = lines {
                let splitter = match stream {
                    Stream::Stdout => &mut out_lines,
                    Stream::Stderr => &mut err_lines,
                };
                splitter.push(&chunk, |line| lines(stream, line));
            }
        };
        let work = async {
            if let (Some(mut stdin), Some(input)) = (stdin, input) {
                // A command that exits without reading its input is not an error.
                let _ = stdin.write_all(&input).await;
            }
            let wait = child.wait();
            tokio::pin!(wait);
            let status = loop {
                tokio::select! {
                    status = &mut wait => break status?,
                    Some(chunk) = rx.recv() => hand_on(chunk),
                }
            };
            let drained = async { while readers.join_next().await.is_some() {} };
            if tokio::time::timeout(PIPE_DRAIN, drained).await.is_err() {
                readers.abort_all();
            }
            while let Ok(chunk) = rx.try_recv() {
                hand_on(chunk);
            }
            let take =
                |buf: &Arc<Mutex<Vec<u8>>>| std::mem::take(&mut *buf.lock().expect("output lock"));
            Ok::<_, std::io::Error>(Output {
                exit_code: status.code().unwrap_or(-1),
                stdout: take(&out_buf),
                stderr: take(&err_buf),
            })
        };
        let result = tokio::time::timeout(command.timeout, work).await;
        if let Some(lines) = lines {
            out_lines.finish(|line| lines(Stream::Stdout, line));
            err_lines.finish(|line| lines(Stream::Stderr, line));
        }
        match result {
            Ok(output) => {
                // Background jobs the command started (services) live on with the machine; they
                // carry its marker and die when it is terminated.
                guard.0 = None;
                Ok(output?)
            }
            Err(_) => Err(Error::Timeout(command.timeout)),
        }
    }
}

/// Where a streaming command's readers pass output chunks on.
type Tap = tokio::sync::mpsc::UnboundedSender<(Stream, Vec<u8>)>;

/// Kills a process group when dropped, unless disarmed: covers timeouts and cancellation.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

#[async_trait]
impl Exec for LocalExec {
    async fn run(&self, command: &Command) -> Result<Output, Error> {
        self.run_with(command, None).await
    }

    /// Hands each output line to `lines` as the command prints it (CI logs are live).
    async fn run_streaming(&self, command: &Command, lines: LineSink<'_>) -> Result<Output, Error> {
        self.run_with(command, Some(lines)).await
    }

    async fn upload(&self, path: &str, contents: &[u8], mode: u32) -> Result<(), Error> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(path.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::write(&path, contents).await?;
        tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).await?;
        Ok(())
    }
}

/// How long output is still collected after a command exited (background jobs may hold its
/// pipes open indefinitely).
const PIPE_DRAIN: Duration = Duration::from_millis(200);

async fn read_into<R: tokio::io::AsyncRead + Unpin>(
    mut reader: R,
    out: Arc<Mutex<Vec<u8>>>,
    tap: Option<(Stream, Tap)>,
) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            return;
        }
        push_capped(&mut out.lock().expect("output lock"), &buf[..n]);
        if let Some((stream, tx)) = &tap {
            let _ = tx.send((*stream, buf[..n].to_vec()));
        }
    }
}

/// Every live process on this host whose environment marks it as part of `machine_id`.
pub fn machine_processes(machine_id: &str) -> Vec<i32> {
    let needle = format!("{MACHINE_MARKER}={machine_id}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id() as i32;
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|environ| {
                    environ
                        .split(|b| *b == 0)
                        .any(|var| var == needle.as_bytes())
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Kills every process of a local machine: SIGTERM to each, then SIGKILL to what is left after
/// `grace`. Returns how many processes were found.
pub async fn kill_machine_processes(machine_id: &str, grace: Duration) -> usize {
    kill_machine_processes_except(machine_id, &[], grace).await
}

/// Like [`kill_machine_processes`], sparing the processes in `keep` (a machine's leader when
/// only an interrupted setup's leftovers must go).
///
/// `/proc` is scanned on a blocking thread, once before and once after signalling (to catch
/// processes forked meanwhile); in between only the known pids are watched, so terminating many
/// machines at once stays cheap.
pub async fn kill_machine_processes_except(
    machine_id: &str,
    keep: &[i32],
    grace: Duration,
) -> usize {
    let scan = |keep: Vec<i32>| {
        let id = machine_id.to_owned();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut pids = machine_processes(&id);
                pids.retain(|pid| !keep.contains(pid));
                pids
            })
            .await
            .unwrap_or_default()
        }
    };
    let pids = scan(keep.to_vec()).await;
    if pids.is_empty() {
        return 0;
    }
    for pid in &pids {
        let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + grace;
    let mut alive: Vec<i32> = pids.clone();
    while !alive.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        alive.retain(|pid| is_alive(*pid));
    }
    for pid in &alive {
        let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    // Anything forked between the scan and the signals.
    for pid in scan(keep.to_vec()).await {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    pids.len()
}

/// Whether a pid is a live process (a zombie has already exited).
fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> (tempfile::TempDir, LocalExec) {
        let dir = tempfile::tempdir().unwrap();
        let id = format!("test-{}", std::process::id());
        let exec = LocalExec::new(dir.path(), format!("{id}-{:?}", dir.path()));
        (dir, exec)
    }

    #[tokio::test]
    async fn runs_with_args_as_data() {
        let (_dir, exec) = exec();
        let hostile = "$(touch pwned); echo 'x' \"y\"\nz";
        let out = exec
            .run(&Command::new(r#"printf '%s' "$1"; pwd"#).arg(hostile))
            .await
            .unwrap();
        assert!(out.success(), "{out:?}");
        assert!(
            out.stdout_str().starts_with(hostile),
            "{}",
            out.stdout_str()
        );
        assert!(!exec.dir().join("pwned").exists());
    }

    #[tokio::test]
    async fn reports_exit_code_and_stderr() {
        let (_dir, exec) = exec();
        let out = exec
            .run(&Command::new("echo oops >&2; exit 3"))
            .await
            .unwrap();
        assert_eq!(out.exit_code, 3);
        assert_eq!(out.stderr_str(), "oops\n");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let (_dir, exec) = exec();
        let err = exec
            .run(
                &Command::new("sleep 30 & echo $! > bg.pid; sleep 30")
                    .timeout(Duration::from_millis(300)),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err}");
        let pid: i32 = std::fs::read_to_string(exec.dir().join("bg.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background child was in the command's group and must be gone (or a zombie
        // about to be reaped by init).
        let mut gone = false;
        for _ in 0..50 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            gone,
            "background process {pid} outlived its command's timeout"
        );
    }

    #[tokio::test]
    async fn a_background_job_holding_the_pipes_does_not_block_completion() {
        let (_dir, exec) = exec();
        let out = exec
            .run(
                &Command::new("sleep 30 & echo started; echo bad >&2; exit 4")
                    .timeout(Duration::from_secs(10)),
            )
            .await
            .unwrap();
        assert_eq!(out.exit_code, 4);
        assert_eq!(out.stdout_str(), "started\n");
        assert_eq!(out.stderr_str(), "bad\n");
        kill_machine_processes(&exec.machine_id, Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn upload_writes_inside_the_machine_dir() {
        let (_dir, exec) = exec();
        exec.upload("/etc/x/config", b"hello", 0o600).await.unwrap();
        let path = exec.dir().join("etc/x/config");
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[tokio::test]
    async fn kill_machine_processes_finds_them_by_marker() {
        let (_dir, exec) = exec();
        // A daemonized process in its own session, as a runner service would be.
        exec.run(&Command::new("sleep 30 >/dev/null 2>&1 < /dev/null &"))
            .await
            .unwrap();
        let id = exec.machine_id.clone();
        let mut found = 0;
        for _ in 0..50 {
            found = machine_processes(&id).len();
            if found > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(found, 1);
        assert_eq!(kill_machine_processes(&id, Duration::from_secs(2)).await, 1);
        for _ in 0..50 {
            if machine_processes(&id).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("processes of {id} survived: {:?}", machine_processes(&id));
    }
}
