//! sushy-tools (PyPI `sushy-tools`): `sushy-emulator --fake`, a Redfish BMC on 127.0.0.1.
//!
//! The fake driver keeps its systems in memory (plus a state directory of its own); power
//! changes land 1–11 s after a reset, as on real hardware, so clients must poll.
//! `InsertMedia` downloads the image from the URL it is given. With [`SushyOptions::auth`] every
//! request needs HTTP basic auth (`SUSHY_EMULATOR_AUTH_FILE`, bcrypt hashed by the emulator's
//! own Python so the password never appears on a command line).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{free_port, require_program};

const PACKAGE: &str = "PyPI sushy-tools";

/// One fake system.
#[derive(Clone, Debug)]
pub struct FakeSystem {
    pub uuid: String,
    pub name: String,
    pub power_on: bool,
}

impl FakeSystem {
    /// A powered-off system with a fresh UUID-shaped id derived from `name`.
    pub fn off(name: &str, index: u8) -> FakeSystem {
        FakeSystem {
            uuid: format!("27946b59-9e44-4fa7-8e91-f3527a1ef{index:03x}"),
            name: name.to_owned(),
            power_on: false,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SushyOptions {
    pub systems: Vec<FakeSystem>,
    /// `(user, password)` required on every request.
    pub auth: Option<(String, String)>,
}

/// A running `sushy-emulator --fake`; killed on drop.
pub struct Sushy {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// A Python string literal.
fn py_str(value: &str) -> String {
    format!(
        "'{}'",
        value
            .replace('\\', "\\\\")
            .replace('\'', "\\'")
            .replace('\n', "\\n")
    )
}

impl Sushy {
    pub fn start(options: SushyOptions) -> anyhow::Result<Sushy> {
        let program = require_program("sushy-emulator", &[], PACKAGE)?;
        let dir = tempfile::Builder::new().prefix("nimbus-sushy-").tempdir()?;
        let port = free_port();
        let systems: Vec<String> = options
            .systems
            .iter()
            .map(|s| {
                format!(
                    "{{'uuid': {}, 'name': {}, 'power_state': {}, 'external_notifier': False, 'nics': []}}",
                    py_str(&s.uuid),
                    py_str(&s.name),
                    py_str(if s.power_on { "On" } else { "Off" })
                )
            })
            .collect();
        let state_dir = dir.path().join("state");
        fs::create_dir_all(&state_dir)?;
        let mut config = format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\n\
             SUSHY_EMULATOR_STATE_DIR = {}\nSUSHY_EMULATOR_FAKE_DRIVER = True\n\
             EXTERNAL_NOTIFIER = False\nSUSHY_EMULATOR_FAKE_SYSTEMS = [{}]\n",
            py_str(&state_dir.to_string_lossy()),
            systems.join(", ")
        );
        if let Some((user, password)) = &options.auth {
            let auth_file = dir.path().join("htpasswd");
            let python = program.with_file_name("python3");
            let mut child = Command::new(&python)
                .args([
                    "-c",
                    "import bcrypt, sys; print(bcrypt.hashpw(sys.stdin.buffer.read(), bcrypt.gensalt(4)).decode())",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("run {}", python.display()))?;
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(password.as_bytes())?;
            let out = child.wait_with_output()?;
            anyhow::ensure!(out.status.success(), "bcrypt hashing failed");
            fs::write(
                &auth_file,
                format!("{user}:{}\n", String::from_utf8_lossy(&out.stdout).trim()),
            )?;
            config.push_str(&format!(
                "SUSHY_EMULATOR_AUTH_FILE = {}\n",
                py_str(&auth_file.to_string_lossy())
            ));
        }
        let config_path = dir.path().join("emulator.conf");
        fs::write(&config_path, config)?;
        let log = File::create(dir.path().join("sushy.log"))?;
        let child = Command::new(&program)
            .arg("--fake")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let mut sushy = Sushy { child, port, dir };
        sushy.wait_ready(Duration::from_secs(60))?;
        Ok(sushy)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "sushy-emulator exited with {status} before answering; its log:\n{}",
                    self.log()
                );
            }
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                write!(
                    stream,
                    "GET /redfish/v1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                )?;
                let mut response = String::new();
                if stream.read_to_string(&mut response).is_ok() && response.starts_with("HTTP/") {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "sushy-emulator did not answer on 127.0.0.1:{} within {timeout:?}; its log:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`: the BMC address a Redfish client is given.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sushy.log")
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
