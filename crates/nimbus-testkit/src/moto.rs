//! moto server (PyPI `moto[server]`): AWS EC2 on loopback, with AMI, key pair and instance
//! type validation switched on so that requests EC2 would refuse are refused here too.
//!
//! Known gaps (DESIGN.md): ClientToken is not idempotent, DescribeHosts ignores `tag:` filters,
//! Tenancy is dropped, and hosts do not list the instances placed on them.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, require_program};

/// AMIs moto knows (from its bundled `amis.json`), usable with AMI validation on.
pub const AMI_LINUX_X86_64: &str = "ami-04681a1dbd79675a5";
pub const AMI_LINUX_ARM64: &str = "ami-0e9271c829888680e";
/// moto ships no macOS AMI; this arm64 Amazon Linux image stands in for one.
pub const AMI_MACOS_ARM64: &str = "ami-0e9271c829888680e";
/// Stands in for a macOS x86_64 (mac1.metal) image.
pub const AMI_MACOS_X86_64: &str = "ami-04681a1dbd79675a5";

/// A running `moto_server`; killed when dropped.
pub struct MotoServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl MotoServer {
    /// Starts `moto_server -H 127.0.0.1 -p PORT` from `PATH` and waits until it answers.
    pub fn start() -> anyhow::Result<Self> {
        let program = require_program("moto_server", &[], "PyPI moto[server]")?;
        let dir = tempfile::Builder::new().prefix("nimbus-moto-").tempdir()?;
        let log_path = dir.path().join("moto.log");
        let log = File::create(&log_path)?;
        let port = free_port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ENABLE_AMI_VALIDATION", "true")
            .env("MOTO_ENABLE_KEYPAIR_VALIDATION", "true")
            .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
            // Credentials moto accepts; never real ones.
            .env("AWS_ACCESS_KEY_ID", "AKIAMOTOTESTKEY00000")
            .env("AWS_SECRET_ACCESS_KEY", "moto-test-secret")
            .env_remove("AWS_ENDPOINT_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|err| anyhow::anyhow!("starting {}: {err}", program.display()))?;
        let mut server = MotoServer { child, port, dir };
        server.wait_ready(Duration::from_secs(60))?;
        Ok(server)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "moto_server exited with {status} before answering on port {}; its log:\n{}",
                    self.port,
                    self.log()
                );
            }
            if self.request("GET", "/moto-api/data.json").is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "moto_server did not answer on 127.0.0.1:{} within {timeout:?}; its log:\n{}",
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

    /// `http://127.0.0.1:PORT`, for `endpoint_url`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Forgets every resource (`POST /moto-api/reset`).
    pub fn reset(&self) -> anyhow::Result<()> {
        let (status, body) = self.request("POST", "/moto-api/reset")?;
        anyhow::ensure!(status == 200, "moto reset answered {status}: {body}");
        Ok(())
    }

    /// The server's combined stdout and stderr so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("moto.log")
    }

    /// A minimal HTTP/1.1 request to moto's own API; returns the status and body.
    fn request(&self, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("malformed response from moto: {response:.200}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
