//! Shared by the setup and ssh-provider tests: a tiny HTTP file server, fake runner archives,
//! a fake forge, and helpers to reach a test sshd.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use nimbus_setup::pipeline::{
    RegistrationError, RegistrationInfo, RegistrationRequest, RunnerCredential, RunnerRegistration,
};
use nimbus_setup::ssh::SshTarget;
use nimbus_testkit::sshd::Sshd;
use nimbus_types::Secret;
use sha2::Digest;

/// Serves fixed files over HTTP/1.0 on 127.0.0.1; counts requests per path.
pub struct FileServer {
    pub port: u16,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl FileServer {
    pub fn start() -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (f, h) = (files.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (f, h) = (f.clone(), h.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut request = String::new();
                    if reader.read_line(&mut request).is_err() {
                        return;
                    }
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => break,
                            Ok(_) if line == "\r\n" || line == "\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                    let body = f.lock().unwrap().get(&path).cloned();
                    let _ = match body {
                        Some(body) => stream
                            .write_all(
                                format!(
                                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                                    body.len()
                                )
                                .as_bytes(),
                            )
                            .and_then(|()| stream.write_all(&body)),
                        None => stream.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
                    };
                });
            }
        });
        FileServer { port, files, hits }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn put(&self, path: &str, body: Vec<u8>) {
        self.files.lock().unwrap().insert(path.to_owned(), body);
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex_encode(&sha2::Sha256::digest(data))
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A tar.gz that behaves like the GitHub Actions runner package: `config.sh` records its
/// arguments (NUL-separated) and the token it saw, and writes `.runner`; `run.sh` stays up.
pub fn fake_github_runner_archive() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"#!/bin/sh
[ -n "$ACTIONS_RUNNER_INPUT_TOKEN" ] || { echo "config.sh: no token given" >&2; exit 3; }
printf '%s\0' "$@" > .config-args
printf '%s' "$ACTIONS_RUNNER_INPUT_TOKEN" > .token-seen
echo '{"agentName": "fake"}' > .runner
echo "Runner successfully added"
"#;
    let run = r#"#!/bin/sh
if [ -n "$ACTIONS_RUNNER_INPUT_JITCONFIG" ]; then printf '%s' "$ACTIONS_RUNNER_INPUT_JITCONFIG" > .jit-seen; fi
echo "Listening for Jobs"
exec sleep 300
"#;
    write_exec(&dir.path().join("config.sh"), config);
    write_exec(&dir.path().join("run.sh"), run);
    let out = std::process::Command::new("tar")
        .arg("-czf")
        .arg(dir.path().join("runner.tar.gz"))
        .arg("-C")
        .arg(dir.path())
        .args(["config.sh", "run.sh"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dir.path().join("runner.tar.gz")).unwrap()
}

/// A fake `gitlab-runner` binary: `register` records its arguments and token and writes a
/// config with a `[[runners]]` table; `run` stays up.
pub const FAKE_GITLAB_RUNNER: &str = r#"#!/bin/sh
cd "$(dirname "$0")"
case "$1" in
  register)
    shift
    [ -n "$CI_SERVER_TOKEN" ] || { echo "register: no CI_SERVER_TOKEN" >&2; exit 3; }
    config=""
    : > register-args
    while [ $# -gt 0 ]; do
      case "$1" in
        --config) config=$2; shift 2 ;;
        *) printf '%s\0' "$1" >> register-args; shift ;;
      esac
    done
    printf '[[runners]]\n  name = "fake"\n' > "$config"
    printf '%s' "$CI_SERVER_TOKEN" > token-seen ;;
  run) echo "Configuration loaded"; exec sleep 300 ;;
  *) echo "unknown command $1" >&2; exit 2 ;;
esac
"#;

/// A fake `forgejo-runner` binary: `register` records its arguments and writes `.runner`;
/// `daemon` stays up; `one-job` records its arguments and the token it reads from
/// `--token-url file:…`, then stays up (waiting for its job).
pub const FAKE_FORGEJO_RUNNER: &str = r#"#!/bin/sh
case "$1" in
  register) shift; printf '%s\0' "$@" > register-args; echo '{"id": 1}' > .runner ;;
  daemon) exec sleep 300 ;;
  one-job)
    shift; printf '%s\0' "$@" > one-job-args
    while [ $# -gt 0 ]; do
      case "$1" in
        --token-url) cat "${2#file:}" > token-seen; shift 2 ;;
        *) shift ;;
      esac
    done
    exec sleep 300 ;;
  *) echo "unknown command $1" >&2; exit 2 ;;
esac
"#;

/// Splits a file of NUL-terminated arguments.
pub fn nul_args(path: &Path) -> Vec<String> {
    std::fs::read(path)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8(a.to_vec()).unwrap())
        .collect()
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A forge that hands out a fixed credential and counts the calls.
pub struct FakeForge {
    pub url: String,
    pub credential: RunnerCredential,
    pub labels: Vec<String>,
    pub calls: AtomicUsize,
    pub requests: Mutex<Vec<RegistrationRequest>>,
}

impl FakeForge {
    pub fn token(url: &str, token: &str) -> Arc<FakeForge> {
        Arc::new(FakeForge {
            url: url.to_owned(),
            credential: RunnerCredential::Token(Secret::new(token)),
            labels: Vec::new(),
            calls: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        })
    }

    pub fn jit(url: &str, config: &str) -> Arc<FakeForge> {
        Arc::new(FakeForge {
            url: url.to_owned(),
            credential: RunnerCredential::JitConfig(Secret::new(config)),
            labels: Vec::new(),
            calls: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        })
    }

    /// A Forgejo runner the forge created, with the labels it must declare.
    pub fn identity(url: &str, uuid: &str, token: &str, labels: &[&str]) -> Arc<FakeForge> {
        Arc::new(FakeForge {
            url: url.to_owned(),
            credential: RunnerCredential::RunnerIdentity {
                uuid: uuid.to_owned(),
                token: Secret::new(token),
            },
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            calls: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        })
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl RunnerRegistration for FakeForge {
    async fn registration(
        &self,
        request: &RegistrationRequest,
    ) -> Result<RegistrationInfo, RegistrationError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.requests.lock().unwrap().push(request.clone());
        Ok(RegistrationInfo {
            url: self.url.clone(),
            credential: self.credential.clone(),
            labels: self.labels.clone(),
        })
    }
}

pub fn target(sshd: &Sshd) -> SshTarget {
    SshTarget {
        host_id: format!("{}:{}", sshd.address(), sshd.port()),
        address: sshd.address().to_owned(),
        port: sshd.port(),
        user: sshd.user().to_owned(),
        private_key: Secret::new(sshd.client_private_key()),
    }
}

/// Runs SQL against a state.db with the local sqlite3 CLI (the tests share the filesystem with
/// the test sshd) and returns its JSON rows.
pub fn query(db: &Path, sql: &str) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("sqlite3")
        .arg("-json")
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3 (package sqlite3)");
    assert!(
        out.status.success(),
        "sqlite3 {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&text).unwrap()
}

/// Kills the process whose pid is in `pidfile` when dropped (runners the tests started).
pub struct KillPidfile(pub PathBuf);

impl Drop for KillPidfile {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.trim())
                .output();
        }
    }
}
