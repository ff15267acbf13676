//! Prism (npm `@stoplight/prism-cli`) mocking an OpenAPI description on 127.0.0.1, so every
//! request a client sends is validated against the real API's published contract. A request
//! Prism rejects gets a 422 (with an `sl-violations` header when the operation declares a 422)
//! and an error line in Prism's log; [`Prism::violations`] returns those lines so a test can fail
//! on them whatever the client did with the response.
//!
//! GitHub's description comes from npm `@octokit/openapi` ([`Prism::github_spec`]). It is 13 MB
//! and takes Prism ~14 s and 300 MB to load: tests trim it to the paths they use first.
//!
//! Both npm packages are found under `$NIMBUS_NPM_PEERS` (the `node_modules` directory
//! `scripts/test` installs into), the binary also on `PATH`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{free_port, require_program};

const PRISM_PACKAGE: &str = "npm @stoplight/prism-cli@5.14";
const GITHUB_SPEC_PACKAGE: &str = "npm @octokit/openapi";
const GITHUB_SPEC_PATH: &str = "@octokit/openapi/generated/api.github.com.json";

/// A running `prism mock` or `prism proxy`; killed on drop.
pub struct Prism {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    spec: PathBuf,
    /// In proxy mode, the responses come from a fake the test wrote: a response Prism finds
    /// invalid is the fake's (or the test's) fault and counts as a violation.
    proxy: bool,
}

/// Where the vendor API descriptions live (`forgejo.json`, `gitea.json`, `gitlab-v4.yaml`,
/// `hetzner-cloud.json`): `$NIMBUS_VENDOR_SPECS`, else the copies in this crate's `specs/`
/// (checked in, with their provenance in `specs/README.md`, so a clone anywhere runs the tests).
pub fn vendor_spec(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("NIMBUS_VENDOR_SPECS").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("specs"),
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "vendor API description {} does not exist; set NIMBUS_VENDOR_SPECS to the directory holding \
             forgejo.json, gitea.json, gitlab-v4.yaml and hetzner-cloud.json (see the README's test section)",
            path.display()
        );
    }
    Ok(path)
}

fn npm_peers() -> Option<PathBuf> {
    std::env::var_os("NIMBUS_NPM_PEERS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The `prism` executable: `$NIMBUS_NPM_PEERS/.bin/prism` or on `PATH`.
pub fn prism_program() -> anyhow::Result<PathBuf> {
    let in_peers = npm_peers().map(|dir| dir.join(".bin").join("prism"));
    let extra: Vec<String> = in_peers
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    require_program("prism", &extra, PRISM_PACKAGE)
}

impl Prism {
    /// GitHub's official OpenAPI description (`api.github.com.json`) from `@octokit/openapi`:
    /// under `$NIMBUS_NPM_PEERS`, or in the `node_modules` that holds the `prism` found on `PATH`.
    pub fn github_spec() -> anyhow::Result<PathBuf> {
        let mut candidates = Vec::new();
        if let Some(peers) = npm_peers() {
            candidates.push(peers.join(GITHUB_SPEC_PATH));
        }
        if let Ok(prism) = prism_program() {
            // …/node_modules/.bin/prism → …/node_modules
            if let Some(node_modules) = prism.parent().and_then(Path::parent) {
                candidates.push(node_modules.join(GITHUB_SPEC_PATH));
            }
        }
        for candidate in &candidates {
            if candidate.is_file() {
                return Ok(candidate.clone());
            }
        }
        bail!(
            "GitHub's OpenAPI description ({GITHUB_SPEC_PATH}) is not installed (package {GITHUB_SPEC_PACKAGE}; \
             looked in {candidates:?}; NIMBUS_NPM_PEERS={:?}); run scripts/test, which installs every test peer",
            std::env::var_os("NIMBUS_NPM_PEERS")
        )
    }

    /// Starts `prism mock -h 127.0.0.1 -p PORT SPEC` and waits until it serves. Fails with
    /// Prism's output when it does not start within 60 s.
    pub fn start(spec: &Path) -> anyhow::Result<Prism> {
        Self::launch(spec, None)
    }

    /// Starts `prism proxy SPEC UPSTREAM -h 127.0.0.1 -p PORT --errors`: every request is
    /// validated against the description, forwarded to `upstream` (a stateful fake), and its
    /// response validated too; an invalid request or response becomes a Prism error response
    /// and a line in [`Prism::violations`].
    pub fn proxy(spec: &Path, upstream: &str) -> anyhow::Result<Prism> {
        Self::launch(spec, Some(upstream))
    }

    fn launch(spec: &Path, upstream: Option<&str>) -> anyhow::Result<Prism> {
        let program = prism_program()?;
        if !spec.is_file() {
            bail!("OpenAPI description {} does not exist", spec.display());
        }
        let dir = tempfile::Builder::new()
            .prefix("nimbus-prism-")
            .tempdir()
            .context("create a temporary directory for Prism")?;
        let log_path = dir.path().join("prism.log");
        let mut last_error = None;
        // A free port can be taken before Prism binds it: retry on another.
        for _ in 0..3 {
            let port = free_port();
            let log = File::create(&log_path).context("create the Prism log")?;
            let mut command = Command::new(&program);
            match upstream {
                None => command.arg("mock").arg(spec),
                Some(upstream) => command.arg("proxy").arg(spec).arg(upstream),
            };
            command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
            if upstream.is_some() {
                command.arg("--errors");
            }
            let mut child = command
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawn {}", program.display()))?;
            match wait_ready(&mut child, &log_path, spec, port, Duration::from_secs(60)) {
                Ok(()) => {
                    let prism = Prism {
                        child,
                        port,
                        dir,
                        spec: spec.to_owned(),
                        proxy: upstream.is_some(),
                    };
                    prism.spawn_watchdog();
                    return Ok(prism);
                }
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Kills Prism once the test process is gone, for guards that are never dropped.
    fn spawn_watchdog(&self) {
        use std::os::unix::process::CommandExt;
        let script = r#"while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; kill "$2" 2>/dev/null"#;
        let _ = Command::new("sh")
            .args(["-c", script, "nimbus-prism-watchdog"])
            .arg(std::process::id().to_string())
            .arg(self.child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The OpenAPI description being served.
    pub fn spec(&self) -> &Path {
        &self.spec
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("prism.log")
    }

    /// Everything Prism logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Every request Prism found invalid (or could not route), each as
    /// `METHOD PATH: what was wrong`. Problems Prism finds in the description's own example
    /// responses are left out.
    pub fn violations(&self) -> Vec<String> {
        let mut violations = Vec::new();
        let mut request = String::new();
        for line in self.log().lines() {
            if let Some(rest) = line.split("[HTTP SERVER] ").nth(1) {
                // "get /orgs/acme/actions/runners ℹ  info      Request received"
                if let Some((what, _)) = rest.split_once(" ℹ") {
                    request = what.trim().to_owned();
                }
            }
            // In mock mode Prism also checks its own example responses; those are not the
            // client's fault. In proxy mode the responses are the fake's: they count.
            if line.contains('✖') && (self.proxy || !line.contains("Violation: response")) {
                let message = line
                    .split_once('✖')
                    .map(|(_, m)| m.trim_start_matches(|c: char| c.is_whitespace()))
                    .unwrap_or(line);
                let message = message.strip_prefix("error").unwrap_or(message).trim();
                violations.push(format!("{request}: {message}"));
            }
        }
        violations.dedup();
        violations
    }
}

impl Drop for Prism {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_ready(
    child: &mut Child,
    log_path: &Path,
    spec: &Path,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = fs::read_to_string(log_path).unwrap_or_default();
        if log.contains("Prism is listening") {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "prism {} exited with {status} before serving; its output:\n{log}",
                spec.display()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "prism {} did not serve on 127.0.0.1:{port} within {timeout:?}; its output:\n{log}",
                spec.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
