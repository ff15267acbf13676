//! A throwaway PostgreSQL server for tests: `initdb -A trust` into a fresh directory, started on
//! 127.0.0.1 with its own port and socket directory, fsync off. Dropping the guard stops it
//! (`pg_ctl stop -m immediate`) and removes the directory.
//!
//! A server kept in a `static` is never dropped, so every server also gets a watchdog process
//! that stops it and removes its files once the process that started it has exited.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{free_port, require_program, wait_for_port};

const PACKAGE: &str = "postgresql";
const DEBIAN_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running PostgreSQL server; stopped and removed on drop.
pub struct Postgres {
    port: u16,
    dir: tempfile::TempDir,
    pg_ctl: PathBuf,
    createdb: PathBuf,
    /// `Some(user)` when the server runs as another OS user (we are root).
    run_as: Option<String>,
}

impl Postgres {
    /// Initializes and starts a new server. Fails with a clear message when PostgreSQL is not
    /// installed.
    pub fn start() -> anyhow::Result<Postgres> {
        let initdb = find("initdb")?;
        let pg_ctl = find("pg_ctl")?;
        let createdb = find("createdb")?;
        let run_as = if is_root() {
            // PostgreSQL refuses to run as root.
            let ok = Command::new("id")
                .args(["-u", "postgres"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if !ok {
                bail!(
                    "running as root, but there is no `postgres` OS user to run the test PostgreSQL \
                     server as (package {PACKAGE} creates it); run scripts/test, which installs it"
                );
            }
            Some("postgres".to_owned())
        } else {
            None
        };

        // The server user must be able to reach the directory: as root, $TMPDIR may be private.
        let parent = match &run_as {
            Some(_) if Path::new("/tmp").is_dir() => PathBuf::from("/tmp"),
            _ => std::env::temp_dir(),
        };
        let dir = tempfile::Builder::new()
            .prefix("nimbus-postgres-")
            .tempdir_in(&parent)
            .with_context(|| {
                format!(
                    "create a temporary directory for PostgreSQL in {}",
                    parent.display()
                )
            })?;
        let data = dir.path().join("data");
        let sockets = dir.path().join("sockets");
        fs::create_dir(&sockets).context("create the PostgreSQL socket directory")?;
        if let Some(user) = &run_as {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
            run(
                Command::new("chown")
                    .arg("-R")
                    .arg(format!("{user}:{user}"))
                    .arg(dir.path()),
                "chown the PostgreSQL directory",
            )?;
        }

        let mut postgres = Postgres {
            port: 0,
            dir,
            pg_ctl,
            createdb,
            run_as,
        };
        let mut initdb_cmd = postgres.as_server_user(&initdb);
        initdb_cmd.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run(&mut initdb_cmd, "initdb")?;

        // A free port can be taken by someone else before the server binds it: retry.
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port();
            match postgres.start_on(port) {
                Ok(()) => {
                    postgres.port = port;
                    postgres.spawn_watchdog()?;
                    return Ok(postgres);
                }
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.expect("at least one start attempt"))
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The URL of database `name` on this server.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory (data, sockets and the server log `postgres.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates an empty database and returns its URL. `name` is 1-63 lowercase letters, digits
    /// and `_`, starting with a letter.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.as_bytes()[0].is_ascii_lowercase()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            bail!(
                "invalid test database name {name:?}: use 1-63 lowercase letters, digits and '_', starting with a letter"
            );
        }
        run(
            Command::new(&self.createdb)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .arg(name),
            &format!("createdb {name}"),
        )?;
        Ok(self.database_url(name))
    }

    /// The server log, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn start_on(&self, port: u16) -> anyhow::Result<()> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200",
            self.dir.path().join("sockets").display()
        );
        let mut cmd = self.as_server_user(&self.pg_ctl);
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        run(&mut cmd, "pg_ctl start").with_context(|| {
            format!(
                "PostgreSQL on port {port} did not start; its log:\n{}",
                self.log()
            )
        })?;
        wait_for_port(port, Duration::from_secs(30))
            .with_context(|| format!("PostgreSQL log:\n{}", self.log()))
    }

    /// A detached process that stops the server and removes its directory once this process is
    /// gone, for servers that are never dropped (kept in a `static`).
    fn spawn_watchdog(&self) -> anyhow::Result<()> {
        let script = r#"
            while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
            pid=$(head -n 1 "$2/data/postmaster.pid" 2>/dev/null)
            if [ -n "$pid" ]; then
                kill -QUIT "$pid" 2>/dev/null
                n=0; while kill -0 "$pid" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
            fi
            rm -rf "$2"
        "#;
        Command::new("sh")
            .args(["-c", script, "nimbus-postgres-watchdog"])
            .arg(std::process::id().to_string())
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the test's process group, so it outlives a group kill of the test.
            .process_group(0)
            .spawn()
            .context("spawn the PostgreSQL watchdog")?;
        Ok(())
    }

    fn as_server_user(&self, program: &Path) -> Command {
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        // The server user may not be allowed into our working directory.
        cmd.current_dir(self.dir.path());
        cmd
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.port != 0 {
            let mut cmd = self.as_server_user(&self.pg_ctl);
            cmd.arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "-w", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = cmd.status();
        }
        // TempDir removes the directory.
    }
}

fn find(program: &str) -> anyhow::Result<PathBuf> {
    let debian = Path::new(DEBIAN_BIN).join(program);
    if debian.is_file() {
        return Ok(debian);
    }
    let others = installed_versions(program);
    let extra: Vec<&str> = others.iter().filter_map(|p| p.to_str()).collect();
    require_program(program, &extra, PACKAGE)
}

/// `/usr/lib/postgresql/*/bin/PROGRAM`, newest first.
fn installed_versions(program: &str) -> Vec<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let path = entry.path().join("bin").join(program);
            path.is_file().then_some((version, path))
        })
        .collect();
    found.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    found.into_iter().map(|(_, path)| path).collect()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<Output> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {cmd:?}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_creates_databases_and_cleans_up() {
        let postgres = Postgres::start().unwrap();
        let dir = postgres.dir().to_owned();
        assert!(postgres.url().starts_with("postgres://postgres@127.0.0.1:"));
        let url = postgres.create_database("nimbus_test_one").unwrap();
        assert!(url.ends_with("/nimbus_test_one"), "{url}");
        let err = postgres.create_database("nimbus_test_one").unwrap_err();
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");
        let err = postgres.create_database("bad; name").unwrap_err();
        assert!(
            err.to_string().contains("invalid test database name"),
            "{err}"
        );
        let port = postgres.port();
        drop(postgres);
        assert!(!dir.exists(), "{} must be removed on drop", dir.display());
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "PostgreSQL must be stopped on drop"
        );
    }
}
