//! The machine's own record of its setup: `state.db` (SQLite) on the machine, written and read
//! through the `sqlite3` CLI over [`Exec`], so anyone can `ssh` in and query what happened.
//!
//! Tables (the seeds' names): `machine_state` (one row: the machine's id, tenant, state and last
//! error), `image_state` (one row), `setup_steps` (one row per step: status, attempts, timings,
//! error — for a skipped step, the reason) and `runner_state` (one row: the forge runner).
//!
//! No value is ever pasted into SQL or shell text: the database path travels as a positional
//! shell argument, the SQL goes to `sqlite3` on stdin, and every value inside it is a hex blob
//! literal (`CAST(X'…' AS TEXT)`) built from its bytes, which cannot contain a quote.

use nimbus_types::{SetupProgress, SetupStep, StepStatus};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::exec::{self, Command, Exec};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Exec(#[from] exec::Error),
    /// `sqlite3` failed on the machine (not installed, disk full, corrupt file …).
    #[error("state.db at {path}: {message}")]
    Sqlite { path: String, message: String },
    #[error("state.db path {0:?} must be absolute")]
    BadPath(String),
}

/// The SQL that creates the tables; idempotent.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS machine_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    machine_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    os TEXT NOT NULL,
    arch TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '[]',
    state TEXT NOT NULL,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS image_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    image_id TEXT,
    image_type TEXT NOT NULL DEFAULT 'none',
    state TEXT NOT NULL,
    installed_at TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS setup_steps (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'failed', 'skipped')),
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at TEXT,
    finished_at TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS runner_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    kind TEXT NOT NULL,
    version TEXT,
    name TEXT NOT NULL,
    url TEXT,
    labels TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL,
    registered_at TEXT,
    updated_at TEXT NOT NULL
);
";

/// A SQL expression whose value is `value` as TEXT, whatever bytes it holds.
pub fn text(value: &str) -> String {
    format!("CAST(X'{}' AS TEXT)", hex::encode(value.as_bytes()))
}

/// [`text`] or `NULL`.
pub fn opt_text(value: Option<&str>) -> String {
    value.map_or_else(|| "NULL".to_owned(), text)
}

pub fn timestamp(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

fn now() -> String {
    timestamp(nimbus_types::now())
}

/// Runs SQL from stdin against the database at `$1`, creating its directory first.
const WRITE_SCRIPT: &str = r#"command -v sqlite3 >/dev/null 2>&1 || { echo "sqlite3 is not installed on the machine" >&2; exit 127; }
mkdir -p -- "$(dirname -- "$1")" || exit 1
exec sqlite3 -batch -bail "$1""#;

/// Runs SQL from stdin against `$1` if it exists; prints nothing otherwise.
const READ_SCRIPT: &str = r#"[ -f "$1" ] || exit 0
command -v sqlite3 >/dev/null 2>&1 || { echo "sqlite3 is not installed on the machine" >&2; exit 127; }
exec sqlite3 -batch -bail -readonly "$1""#;

/// What the machine row says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineRow {
    pub machine_id: String,
    pub tenant_id: String,
    pub os: String,
    pub arch: String,
    pub labels: Vec<String>,
    pub state: String,
    pub error: Option<String>,
}

/// What the runner row says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerRow {
    pub kind: String,
    pub version: Option<String>,
    pub name: String,
    pub url: Option<String>,
    pub labels: Vec<String>,
    pub status: String,
}

/// `state.db` at one path on one machine.
#[derive(Clone, Debug)]
pub struct StateDb {
    path: String,
}

impl StateDb {
    pub fn new(path: impl Into<String>) -> Result<Self, Error> {
        let path = path.into();
        // An absolute path can be neither an option to sqlite3 nor a URI.
        if !path.starts_with('/') || path.contains('\0') {
            return Err(Error::BadPath(path));
        }
        Ok(StateDb { path })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    async fn sql(&self, exec: &dyn Exec, script: &str, sql: String) -> Result<String, Error> {
        let input = format!(".timeout 10000\n{sql}\n");
        let command = Command::new(script)
            .arg(&self.path)
            .stdin(input)
            .label("state.db")
            .timeout(std::time::Duration::from_secs(60));
        let output = exec.run(&command).await?;
        if !output.success() {
            return Err(Error::Sqlite {
                path: self.path.clone(),
                message: format!(
                    "sqlite3 exited with {}: {}",
                    output.exit_code,
                    output.stderr_str().trim()
                ),
            });
        }
        Ok(output.stdout_str())
    }

    async fn write(&self, exec: &dyn Exec, sql: String) -> Result<(), Error> {
        self.sql(
            exec,
            WRITE_SCRIPT,
            format!("BEGIN IMMEDIATE;\n{sql}\nCOMMIT;"),
        )
        .await
        .map(drop)
    }

    async fn query<T: for<'de> Deserialize<'de>>(
        &self,
        exec: &dyn Exec,
        sql: &str,
    ) -> Result<Vec<T>, Error> {
        let out = self
            .sql(exec, READ_SCRIPT, format!(".mode json\n{sql}"))
            .await?;
        let mut rows = Vec::new();
        // Each statement prints its own JSON array (or nothing when it has no rows).
        for chunk in out
            .split_inclusive("]\n")
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            let mut part: Vec<T> = serde_json::from_str(chunk).map_err(|err| Error::Sqlite {
                path: self.path.clone(),
                message: format!("unexpected sqlite3 output: {err}"),
            })?;
            rows.append(&mut part);
        }
        Ok(rows)
    }

    /// Creates the tables if needed and records the machine (its first state when new).
    pub async fn init(&self, exec: &dyn Exec, machine: &MachineRow) -> Result<(), Error> {
        let labels = serde_json::to_string(&machine.labels).unwrap_or_else(|_| "[]".into());
        let now = now();
        let sql = format!(
            "{SCHEMA}
INSERT INTO machine_state (id, machine_id, tenant_id, os, arch, labels, state, error, created_at, updated_at)
VALUES (1, {id}, {tenant}, {os}, {arch}, {labels}, {state}, NULL, {now}, {now})
ON CONFLICT (id) DO UPDATE SET machine_id = excluded.machine_id, tenant_id = excluded.tenant_id,
    os = excluded.os, arch = excluded.arch, labels = excluded.labels, updated_at = excluded.updated_at;
INSERT INTO image_state (id, image_type, state, updated_at) VALUES (1, 'none', 'pending', {now})
ON CONFLICT (id) DO NOTHING;",
            id = text(&machine.machine_id),
            tenant = text(&machine.tenant_id),
            os = text(&machine.os),
            arch = text(&machine.arch),
            labels = text(&labels),
            state = text(&machine.state),
            now = text(&now),
        );
        self.write(exec, sql).await
    }

    pub async fn set_machine_state(
        &self,
        exec: &dyn Exec,
        state: &str,
        error: Option<&str>,
    ) -> Result<(), Error> {
        let sql = format!(
            "UPDATE machine_state SET state = {}, error = {}, updated_at = {} WHERE id = 1;",
            text(state),
            opt_text(error),
            text(&now())
        );
        self.write(exec, sql).await
    }

    pub async fn set_image_state(&self, exec: &dyn Exec, state: &str) -> Result<(), Error> {
        let now = text(&now());
        let installed = if state == "installed" {
            now.clone()
        } else {
            "installed_at".into()
        };
        let sql = format!(
            "UPDATE image_state SET state = {}, installed_at = {installed}, updated_at = {now} WHERE id = 1;",
            text(state),
        );
        self.write(exec, sql).await
    }

    /// Marks a step running (one more attempt).
    pub async fn step_started(
        &self,
        exec: &dyn Exec,
        name: &str,
        position: usize,
    ) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO setup_steps (name, position, status, attempts, started_at, finished_at, error)
VALUES ({name}, {position}, 'running', 1, {now}, NULL, NULL)
ON CONFLICT (name) DO UPDATE SET status = 'running', position = excluded.position,
    attempts = setup_steps.attempts + 1, started_at = excluded.started_at, finished_at = NULL, error = NULL;",
            name = text(name),
            now = text(&now()),
        );
        self.write(exec, sql).await
    }

    /// Records how a step ended; `error` is the failure (or, for a skipped step, the reason).
    pub async fn step_finished(
        &self,
        exec: &dyn Exec,
        name: &str,
        position: usize,
        status: StepStatus,
        error: Option<&str>,
    ) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO setup_steps (name, position, status, attempts, started_at, finished_at, error)
VALUES ({name}, {position}, {status}, 0, NULL, {now}, {error})
ON CONFLICT (name) DO UPDATE SET status = excluded.status, finished_at = excluded.finished_at,
    error = excluded.error;",
            name = text(name),
            status = text(status.as_str()),
            now = text(&now()),
            error = opt_text(error),
        );
        self.write(exec, sql).await
    }

    /// Records the runner; a `None` version or URL keeps the one recorded before.
    pub async fn set_runner(&self, exec: &dyn Exec, runner: &RunnerRow) -> Result<(), Error> {
        let labels = serde_json::to_string(&runner.labels).unwrap_or_else(|_| "[]".into());
        let now = text(&now());
        let registered = if runner.status == "registered" || runner.status == "running" {
            format!("COALESCE(runner_state.registered_at, {now})")
        } else {
            "runner_state.registered_at".into()
        };
        let sql = format!(
            "INSERT INTO runner_state (id, kind, version, name, url, labels, status, registered_at, updated_at)
VALUES (1, {kind}, {version}, {name}, {url}, {labels}, {status}, NULL, {now})
ON CONFLICT (id) DO UPDATE SET kind = excluded.kind,
    version = COALESCE(excluded.version, runner_state.version), name = excluded.name,
    url = COALESCE(excluded.url, runner_state.url), labels = excluded.labels, status = excluded.status,
    registered_at = {registered}, updated_at = excluded.updated_at;",
            kind = text(&runner.kind),
            version = opt_text(runner.version.as_deref()),
            name = text(&runner.name),
            url = opt_text(runner.url.as_deref()),
            labels = text(&labels),
            status = text(&runner.status),
        );
        self.write(exec, sql).await
    }

    /// The steps recorded so far, in pipeline order. Empty when the database does not exist.
    pub async fn steps(&self, exec: &dyn Exec) -> Result<Vec<SetupStep>, Error> {
        #[derive(Deserialize)]
        struct Row {
            name: String,
            status: String,
            started_at: Option<String>,
            finished_at: Option<String>,
            error: Option<String>,
        }
        let rows: Vec<Row> = self
            .query(
                exec,
                "SELECT name, status, started_at, finished_at, error FROM setup_steps ORDER BY position, name;",
            )
            .await?;
        let parse = |s: Option<String>| s.and_then(|s| OffsetDateTime::parse(&s, &Rfc3339).ok());
        rows.into_iter()
            .map(|row| {
                let status = row
                    .status
                    .parse::<StepStatus>()
                    .map_err(|message| Error::Sqlite {
                        path: self.path.clone(),
                        message: format!("step {:?}: {message}", row.name),
                    })?;
                Ok(SetupStep {
                    name: row.name,
                    status,
                    started_at: parse(row.started_at),
                    finished_at: parse(row.finished_at),
                    error: row.error,
                })
            })
            .collect()
    }

    /// The machine row, if the database exists.
    pub async fn machine(&self, exec: &dyn Exec) -> Result<Option<MachineRow>, Error> {
        #[derive(Deserialize)]
        struct Row {
            machine_id: String,
            tenant_id: String,
            os: String,
            arch: String,
            labels: String,
            state: String,
            error: Option<String>,
        }
        let rows: Vec<Row> = self
            .query(
                exec,
                "SELECT machine_id, tenant_id, os, arch, labels, state, error FROM machine_state WHERE id = 1;",
            )
            .await?;
        Ok(rows.into_iter().next().map(|row| MachineRow {
            machine_id: row.machine_id,
            tenant_id: row.tenant_id,
            os: row.os,
            arch: row.arch,
            labels: serde_json::from_str(&row.labels).unwrap_or_default(),
            state: row.state,
            error: row.error,
        }))
    }

    /// The runner row, if any.
    pub async fn runner(&self, exec: &dyn Exec) -> Result<Option<RunnerRow>, Error> {
        #[derive(Deserialize)]
        struct Row {
            kind: String,
            version: Option<String>,
            name: String,
            url: Option<String>,
            labels: String,
            status: String,
        }
        let rows: Vec<Row> = self
            .query(
                exec,
                "SELECT kind, version, name, url, labels, status FROM runner_state WHERE id = 1;",
            )
            .await?;
        Ok(rows.into_iter().next().map(|row| RunnerRow {
            kind: row.kind,
            version: row.version,
            name: row.name,
            url: row.url,
            labels: serde_json::from_str(&row.labels).unwrap_or_default(),
            status: row.status,
        }))
    }
}

/// Setup progress as the machine records it, for `get_machine` to merge. A machine without a
/// `state.db` yet has no steps.
pub async fn read_progress(exec: &dyn Exec, path: &str) -> Result<SetupProgress, Error> {
    let db = StateDb::new(path)?;
    Ok(SetupProgress {
        steps: db.steps(exec).await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_hex_literals() {
        assert_eq!(text("a'b"), "CAST(X'612762' AS TEXT)");
        assert_eq!(text(""), "CAST(X'' AS TEXT)");
        assert_eq!(opt_text(None), "NULL");
        for hostile in [
            "'; DROP TABLE setup_steps; --",
            "\n.shell id\n",
            "$(id)",
            "ä\0",
        ] {
            let sql = text(hostile);
            let inner = sql
                .strip_prefix("CAST(X'")
                .and_then(|rest| rest.strip_suffix("' AS TEXT)"))
                .unwrap();
            assert!(inner.bytes().all(|b| b.is_ascii_hexdigit()), "{sql}");
            assert_eq!(hex::decode(inner).unwrap(), hostile.as_bytes());
        }
    }

    #[test]
    fn paths_must_be_absolute() {
        assert!(StateDb::new("/var/lib/nimbus/state.db").is_ok());
        assert!(StateDb::new("-cmd").is_err());
        assert!(StateDb::new("state.db").is_err());
        assert!(StateDb::new("file:x?mode=ro").is_err());
    }
}
