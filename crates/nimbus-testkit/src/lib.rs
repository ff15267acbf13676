//! Starts real test peers on loopback (PostgreSQL, sshd, moto, Prism, sushy-tools, ipmi_sim) for Nimbus's tests: each peer is a guard that stops the
//! process and removes its files when dropped. A peer that is not installed fails with a
//! message naming the package and the README's test command, which installs it.

pub mod sshd;

pub mod postgres;

pub mod prism;

pub mod moto;

pub mod sushy;

pub mod ipmi_sim;

pub mod fault;

pub mod gitlab;

pub mod served;

pub mod github;

pub mod forgejo;

pub mod hetzner;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for test peers).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Finds an executable on `PATH` or among `extra` paths, or fails naming the package.
pub fn require_program(name: &str, extra: &[&str], package: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .chain(extra.iter().map(PathBuf::from));
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "test peer `{name}` is not installed (package {package}); run scripts/test, which installs every test peer"
    )
}

/// Whether the slow suites (real peers, many machines) should run. `scripts/test` sets it.
pub fn slow_tests_enabled() -> bool {
    std::env::var_os("NIMBUS_SLOW_TESTS").is_some_and(|v| v == "1")
}
