//! `nimbus-bench`: measures a release `nimbusd server` (SQLite, local provider) from the outside,
//! through its HTTP API, and prints one table against issue 2's targets:
//!
//! - start: time from exec to the first `/healthz` 200, on fresh directories (first start:
//!   admin token, key, migrations) and on existing ones (median of `--start-runs`);
//! - idle memory: VmRSS from `/proc/PID/status` after a short settle;
//! - a fleet of `--machines` local machines without a setup script: `POST /v1/machines` and
//!   `DELETE /v1/machines/{id}` latencies at `--api-clients` concurrent clients, time until all
//!   are ready and until all are terminated, and that nothing is left on the host;
//! - `GET /v1/machines` with that fleet in place at `--list-clients` concurrent clients, each
//!   on its own connection: p50/p99 and requests per second.
//!
//! Run it with `cargo run --release -p nimbus-bench`. It builds `nimbusd` in the same profile
//! first (or takes `--nimbusd PATH`). Nothing here asserts a time: it reports.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use futures::StreamExt;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    name = "nimbus-bench",
    about = "Benchmarks nimbusd over its HTTP API and prints a table"
)]
struct Args {
    /// The nimbusd binary [default: `cargo build -p nimbusd` in this binary's profile, then the
    /// nimbusd next to this binary].
    #[arg(long)]
    nimbusd: Option<PathBuf>,
    /// Daemon starts to measure (each on fresh directories, then again on the same ones).
    #[arg(long, default_value_t = 10)]
    start_runs: usize,
    /// How long the daemon idles before its RSS is read, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// Local machines to provision and terminate.
    #[arg(long, default_value_t = 1000)]
    machines: usize,
    /// Concurrent clients for the POST and DELETE calls.
    #[arg(long, default_value_t = 50)]
    api_clients: usize,
    /// Concurrent clients listing machines, each on its own connection.
    #[arg(long, default_value_t = 50)]
    list_clients: usize,
    /// `GET /v1/machines` requests per list client (after two warm-up requests each).
    #[arg(long, default_value_t = 40)]
    list_requests: usize,
    /// Skip the start/RSS runs.
    #[arg(long)]
    skip_start: bool,
    /// Skip the fleet and list runs.
    #[arg(long)]
    skip_fleet: bool,
    /// Keep the daemon's directories (and log) for inspection.
    #[arg(long)]
    keep: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let command = std::iter::once("cargo run --release -p nimbus-bench --".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let nimbusd = match &args.nimbusd {
        Some(path) => path.clone(),
        None => build_nimbusd()?,
    };
    ensure!(nimbusd.is_file(), "{} is not a file", nimbusd.display());

    let mut rows = Vec::new();
    if !args.skip_start {
        eprintln!("bench: {} starts of nimbusd", args.start_runs * 2);
        rows.extend(bench_start(&nimbusd, &args)?);
    }
    if !args.skip_fleet {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("start the async runtime")?;
        rows.extend(runtime.block_on(bench_fleet(&nimbusd, &args))?);
    }
    print_table(&command, &nimbusd, &rows);
    Ok(())
}

/// Builds nimbusd in this binary's profile so the numbers are of the current code.
fn build_nimbusd() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("find this binary")?;
    let profile_dir = exe
        .parent()
        .context("this binary has a directory")?
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .context("the profile directory has a parent")?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "nimbusd", "--bin", "nimbusd"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target_dir);
    match profile {
        "debug" => {
            eprintln!("bench: WARNING: a debug build; run with --release for meaningful numbers");
        }
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("bench: building nimbusd: {cmd:?}");
    let status = cmd.status().context("run cargo")?;
    ensure!(
        status.success(),
        "building nimbusd failed ({status}); pass --nimbusd PATH to use a built one"
    );
    let bin = profile_dir.join("nimbusd");
    ensure!(
        bin.is_file(),
        "cargo built nimbusd but {} does not exist; pass --nimbusd PATH",
        bin.display()
    );
    Ok(bin)
}

/// One table row: what was measured, the figure, and the target it is held against.
struct Row {
    metric: String,
    value: String,
    target: Option<(String, bool)>,
}

impl Row {
    fn info(metric: impl Into<String>, value: impl Into<String>) -> Row {
        Row {
            metric: metric.into(),
            value: value.into(),
            target: None,
        }
    }

    fn against(
        metric: impl Into<String>,
        value: impl Into<String>,
        target: &str,
        met: bool,
    ) -> Row {
        Row {
            metric: metric.into(),
            value: value.into(),
            target: Some((target.to_owned(), met)),
        }
    }
}

fn print_table(command: &str, nimbusd: &Path, rows: &[Row]) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let mut out = String::new();
    let _ = writeln!(out, "\n## `{command}`\n");
    let _ = writeln!(
        out,
        "nimbusd: {} · {cpus} CPUs · load average {} (shared machine: figures vary between runs)\n",
        nimbusd.display(),
        load.join(" ")
    );
    let headers = ["metric", "value", "target", "met"];
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|row| {
            let (target, met) = match &row.target {
                Some((target, met)) => (
                    target.clone(),
                    if *met { "yes" } else { "**no**" }.to_owned(),
                ),
                None => (String::new(), String::new()),
            };
            [row.metric.clone(), row.value.clone(), target, met]
        })
        .collect();
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cols: [&str; 4]| {
        let mut s = String::from("|");
        for (i, col) in cols.iter().enumerate() {
            let pad = widths[i] - col.chars().count();
            let _ = write!(s, " {col}{} |", " ".repeat(pad));
        }
        s
    };
    let _ = writeln!(out, "{}", line(headers));
    let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let _ = writeln!(
        out,
        "{}",
        line([&dashes[0], &dashes[1], &dashes[2], &dashes[3]])
    );
    for c in &cells {
        let _ = writeln!(out, "{}", line([&c[0], &c[1], &c[2], &c[3]]));
    }
    print!("{out}");
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// Directories of one daemon: its own HOME and XDG directories.
struct Dirs {
    root: tempfile::TempDir,
}

impl Dirs {
    fn new() -> anyhow::Result<Dirs> {
        Ok(Dirs {
            root: tempfile::Builder::new().prefix("nimbus-bench-").tempdir()?,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn admin_token(&self) -> anyhow::Result<String> {
        let path = self.path("config/nimbus/admin-token");
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("read {}", path.display()))?
            .trim()
            .to_owned())
    }
}

struct Daemon {
    child: Child,
    url: String,
    /// From exec to the first `/healthz` 200.
    started_in: Duration,
}

impl Daemon {
    /// Starts `nimbusd server --listen 127.0.0.1:0` in `dirs` and waits for `/healthz`.
    fn start(bin: &Path, dirs: &Dirs) -> anyhow::Result<Daemon> {
        std::fs::create_dir_all(dirs.path("home"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dirs.path("nimbusd.log"))?;
        let mut cmd = Command::new(bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("NIMBUS_") {
                cmd.env_remove(key);
            }
        }
        cmd.args(["server", "--listen", "127.0.0.1:0"])
            .env("HOME", dirs.path("home"))
            .env("XDG_CONFIG_HOME", dirs.path("config"))
            .env("XDG_DATA_HOME", dirs.path("data"))
            .env("XDG_STATE_HOME", dirs.path("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .context("read nimbusd's address line")?;
        let Some(url) = line.trim().strip_prefix("nimbusd listening on ") else {
            let _ = child.kill();
            bail!(
                "nimbusd printed {line:?} instead of its address; see {}",
                dirs.path("nimbusd.log").display()
            );
        };
        let url = url.to_owned();
        // Keep draining stdout so the daemon never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let authority = url.trim_start_matches("http://").to_owned();
        loop {
            if healthz(&authority).unwrap_or(false) {
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "no /healthz 200 within 30 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(Daemon {
            child,
            url,
            started_in: started.elapsed(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (graceful), then wait.
    fn stop(mut self) -> anyhow::Result<()> {
        if sys::kill(self.pid() as i32, SIGTERM) != 0 {
            let _ = self.child.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "nimbusd exited with {status}");
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("nimbusd did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const SIGTERM: i32 = 15;

mod sys {
    // std cannot send SIGTERM; kill(2) is in the C library std already links.
    unsafe extern "C" {
        // SAFETY: kill(2) takes two integers and touches no memory of ours; any values are fine.
        pub safe fn kill(pid: i32, sig: i32) -> i32;
    }
}

/// One plain `GET /healthz` on a fresh connection.
fn healthz(authority: &str) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(authority)?;
    stream.set_nodelay(true)?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.starts_with("HTTP/1.1 200"))
}

/// Memory of a process from `/proc/PID/status`, in KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    rss: u64,
    hwm: u64,
    anon: u64,
    file: u64,
    threads: u64,
}

fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
        threads: field("Threads:"),
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------------
// Start time and idle memory

fn bench_start(bin: &Path, args: &Args) -> anyhow::Result<Vec<Row>> {
    let mut fresh = Vec::new();
    let mut warm = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..args.start_runs.max(1) {
        let dirs = Dirs::new()?;
        let daemon = Daemon::start(bin, &dirs)?;
        fresh.push(daemon.started_in);
        std::thread::sleep(Duration::from_millis(args.settle_ms));
        idle.push(memory(daemon.pid())?);
        daemon.stop()?;
        let daemon = Daemon::start(bin, &dirs)?;
        warm.push(daemon.started_in);
        daemon.stop()?;
        if args.keep {
            eprintln!("bench: kept {}", dirs.root.keep().display());
        }
    }
    let n = fresh.len();
    let fresh_ms = Stats::of(&fresh);
    let warm_ms = Stats::of(&warm);
    idle.sort_by_key(|m| m.rss);
    let median = idle[idle.len() / 2];
    let max_rss = idle.iter().map(|m| m.rss).max().unwrap_or(0);
    Ok(vec![
        Row::against(
            format!("start, fresh dirs: exec → /healthz 200 (median of {n})"),
            format!(
                "{:.1} ms (min {:.1}, max {:.1})",
                fresh_ms.p50, fresh_ms.min, fresh_ms.max
            ),
            "≤ 150 ms",
            fresh_ms.p50 <= 150.0,
        ),
        Row::against(
            format!("start, existing data: exec → /healthz 200 (median of {n})"),
            format!(
                "{:.1} ms (min {:.1}, max {:.1})",
                warm_ms.p50, warm_ms.min, warm_ms.max
            ),
            "≤ 150 ms",
            warm_ms.p50 <= 150.0,
        ),
        Row::against(
            format!("idle RSS {} ms after start (median of {n})", args.settle_ms),
            format!(
                "{:.1} MiB (max {:.1}; anon {:.1}, file {:.1}; {} threads)",
                mib(median.rss),
                mib(max_rss),
                mib(median.anon),
                mib(median.file),
                median.threads
            ),
            "≤ 20 MiB",
            mib(median.rss) <= 20.0,
        ),
    ])
}

/// Percentiles in milliseconds.
struct Stats {
    p50: f64,
    p99: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(samples: &[Duration]) -> Stats {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if ms.is_empty() {
                return f64::NAN;
            }
            // Nearest rank.
            let rank = (q * ms.len() as f64).ceil() as usize;
            ms[rank.clamp(1, ms.len()) - 1]
        };
        Stats {
            p50: at(0.50),
            p99: at(0.99),
            min: ms.first().copied().unwrap_or(f64::NAN),
            max: ms.last().copied().unwrap_or(f64::NAN),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fleet: provision, list, terminate

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    fn new(url: &str, token: &str) -> anyhow::Result<Api> {
        Ok(Api {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .timeout(Duration::from_secs(120))
                .build()?,
            url: url.to_owned(),
            token: token.to_owned(),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.call(method.clone(), path, body).await?;
        ensure!(
            status == want,
            "{method} {path}: HTTP {status} (wanted {want}): {value}"
        );
        Ok(value)
    }

    async fn machines(&self, query: &str) -> anyhow::Result<Vec<Value>> {
        let list = self
            .expect(
                reqwest::Method::GET,
                &format!("/v1/machines{query}"),
                None,
                200,
            )
            .await?;
        Ok(list["machines"].as_array().cloned().unwrap_or_default())
    }
}

fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    };
    let os = match std::env::consts::OS {
        "macos" => "macos",
        _ => "linux",
    };
    (os, arch)
}

async fn bench_fleet(bin: &Path, args: &Args) -> anyhow::Result<Vec<Row>> {
    let dirs = Dirs::new()?;
    let daemon = Daemon::start(bin, &dirs)?;
    let api = Arc::new(Api::new(&daemon.url, &dirs.admin_token()?)?);
    api.expect(
        reqwest::Method::POST,
        "/v1/tenants",
        Some(json!({"name": "bench"})),
        201,
    )
    .await?;
    api.expect(
        reqwest::Method::POST,
        "/v1/tenants/bench/providers",
        Some(json!({"name": "local", "type": "local"})),
        201,
    )
    .await?;
    let (os, arch) = host_platform();
    let n = args.machines;
    let mut rows = Vec::new();

    // Provision.
    eprintln!(
        "bench: provisioning {n} local machines at {} concurrent clients",
        args.api_clients
    );
    let provision_started = Instant::now();
    let results: Vec<anyhow::Result<(String, Duration)>> = futures::stream::iter(0..n)
        .map(|_| {
            let api = api.clone();
            async move {
                let started = Instant::now();
                let machine = api
                    .expect(
                        reqwest::Method::POST,
                        "/v1/machines",
                        Some(
                            json!({"tenant": "bench", "provider": "local", "os": os, "arch": arch}),
                        ),
                        202,
                    )
                    .await?;
                let took = started.elapsed();
                let id = machine["id"]
                    .as_str()
                    .context("machine without id")?
                    .to_owned();
                Ok((id, took))
            }
        })
        .buffer_unordered(args.api_clients.max(1))
        .collect()
        .await;
    let mut ids = Vec::with_capacity(n);
    let mut post = Vec::with_capacity(n);
    for result in results {
        let (id, took) = result?;
        ids.push(id);
        post.push(took);
    }
    let posted_in = provision_started.elapsed();
    let ready_in = wait_until(&api, "ready", Duration::from_secs(600), |machines| {
        let failed: Vec<&Value> = machines.iter().filter(|m| m["state"] == "failed").collect();
        if let Some(first) = failed.first() {
            bail!("{} machines failed, e.g. {}", failed.len(), first["error"]);
        }
        Ok(machines.iter().filter(|m| m["state"] == "ready").count() == n)
    })
    .await?
        + posted_in;
    let loaded = memory(daemon.pid())?;
    let stats = Stats::of(&post);
    rows.push(Row::info(
        format!(
            "provision {n}: POST /v1/machines p50 / p99 ({} clients)",
            args.api_clients
        ),
        format!(
            "{:.1} / {:.1} ms (max {:.1})",
            stats.p50, stats.p99, stats.max
        ),
    ));
    rows.push(Row::info(
        format!("provision {n}: all POSTs answered / all ready"),
        format!(
            "{:.2} s / {:.2} s",
            posted_in.as_secs_f64(),
            ready_in.as_secs_f64()
        ),
    ));
    let on_host = machine_dirs(&dirs)?;
    ensure!(
        on_host == n,
        "{on_host} machine directories for {n} ready machines"
    );

    // List at concurrency, with the fleet in place.
    rows.extend(bench_list(&daemon.url, &dirs.admin_token()?, n, args).await?);

    // Terminate.
    eprintln!("bench: terminating {n} machines");
    let terminate_started = Instant::now();
    let results: Vec<anyhow::Result<Duration>> = futures::stream::iter(ids.clone())
        .map(|id| {
            let api = api.clone();
            async move {
                let started = Instant::now();
                api.expect(
                    reqwest::Method::DELETE,
                    &format!("/v1/machines/{id}"),
                    None,
                    202,
                )
                .await?;
                Ok(started.elapsed())
            }
        })
        .buffer_unordered(args.api_clients.max(1))
        .collect()
        .await;
    let delete: Vec<Duration> = results.into_iter().collect::<anyhow::Result<_>>()?;
    let deleted_in = terminate_started.elapsed();
    let terminated_in = wait_until(&api, "terminated", Duration::from_secs(600), |machines| {
        Ok(machines.is_empty())
    })
    .await?
        + deleted_in;
    // The list phase runs in between; it is not part of the fleet's lifecycle time.
    let total = ready_in + terminated_in;
    let stats = Stats::of(&delete);
    rows.push(Row::info(
        format!(
            "terminate {n}: DELETE /v1/machines/{{id}} p50 / p99 ({} clients)",
            args.api_clients
        ),
        format!(
            "{:.1} / {:.1} ms (max {:.1})",
            stats.p50, stats.p99, stats.max
        ),
    ));
    rows.push(Row::info(
        format!("terminate {n}: all DELETEs answered / all terminated"),
        format!(
            "{:.2} s / {:.2} s",
            deleted_in.as_secs_f64(),
            terminated_in.as_secs_f64()
        ),
    ));
    rows.push(Row::info(
        format!("provision + terminate {n}: total (until all ready + until all terminated)"),
        format!("{:.2} s", total.as_secs_f64()),
    ));

    // Everything is gone: states, directories, processes.
    let all = api.machines("?include_terminated=true").await?;
    let terminated = all.iter().filter(|m| m["state"] == "terminated").count();
    ensure!(terminated == n, "{terminated} of {n} machines terminated");
    let dirs_left = machine_dirs(&dirs)?;
    let procs_left = machine_processes_under(dirs.root.path());
    ensure!(dirs_left == 0, "{dirs_left} machine directories left");
    ensure!(
        procs_left.is_empty(),
        "machine processes left: {procs_left:?}"
    );
    rows.push(Row::info(
        format!("nimbusd memory with {n} machines: RSS / peak"),
        format!(
            "{:.1} MiB / {:.1} MiB ({} threads)",
            mib(loaded.rss),
            mib(memory(daemon.pid())?.hwm),
            loaded.threads
        ),
    ));
    rows.push(Row::info(
        "left on the host afterwards",
        "0 machine directories, 0 processes",
    ));
    daemon.stop()?;
    if args.keep {
        eprintln!("bench: kept {}", dirs.root.keep().display());
    }
    Ok(rows)
}

/// Polls the machine list (terminated ones left out) until `done`; returns how long it took.
async fn wait_until(
    api: &Api,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(&[Value]) -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let machines = api.machines("").await?;
        if done(&machines)? {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < timeout,
            "machines not all {what} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bench_list(url: &str, token: &str, n: usize, args: &Args) -> anyhow::Result<Vec<Row>> {
    let clients = args.list_clients.max(1);
    eprintln!(
        "bench: GET /v1/machines with {n} machines, {clients} clients × {} requests",
        args.list_requests
    );
    // Service time: one client alone, requests one after another.
    let single = {
        let http = reqwest::Client::new();
        let mut samples = Vec::with_capacity(args.list_requests);
        for idx in 0..args.list_requests + 2 {
            let started = Instant::now();
            let response = http
                .get(format!("{url}/v1/machines"))
                .bearer_auth(token)
                .send()
                .await?;
            ensure!(
                response.status().is_success(),
                "GET /v1/machines: HTTP {}",
                response.status()
            );
            response.bytes().await?;
            if idx >= 2 {
                samples.push(started.elapsed());
            }
        }
        Stats::of(&samples)
    };
    let server_before = server_time(url, "GET", "/v1/machines").await?;

    // One client (so one connection) per simulated user.
    let mut tasks = Vec::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(clients));
    for _ in 0..clients {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(120))
            .build()?;
        let url = format!("{url}/v1/machines");
        let token = token.to_owned();
        let barrier = barrier.clone();
        let requests = args.list_requests;
        tasks.push(tokio::spawn(async move {
            let get = || async {
                let started = Instant::now();
                let response = http.get(&url).bearer_auth(&token).send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                ensure!(status.is_success(), "GET /v1/machines: HTTP {status}");
                Ok::<_, anyhow::Error>((started.elapsed(), body.len()))
            };
            for _ in 0..2 {
                get().await?;
            }
            barrier.wait().await;
            let started = Instant::now();
            let mut samples = Vec::with_capacity(requests);
            let mut bytes = 0;
            for _ in 0..requests {
                let (took, len) = get().await?;
                samples.push(took);
                bytes = len;
            }
            Ok::<_, anyhow::Error>((samples, started, Instant::now(), bytes))
        }));
    }
    let mut samples = Vec::new();
    let mut first_start: Option<Instant> = None;
    let mut last_end: Option<Instant> = None;
    let mut body_bytes = 0;
    for task in tasks {
        let (mut s, start, end, bytes) = task.await??;
        samples.append(&mut s);
        first_start = Some(first_start.map_or(start, |f| f.min(start)));
        last_end = Some(last_end.map_or(end, |l| l.max(end)));
        body_bytes = bytes;
    }
    let wall = last_end.unwrap() - first_start.unwrap();
    let server_after = server_time(url, "GET", "/v1/machines").await?;
    let in_handler_ms =
        (server_after.0 - server_before.0) / (server_after.1 - server_before.1).max(1.0) * 1000.0;
    let stats = Stats::of(&samples);
    let rate = samples.len() as f64 / wall.as_secs_f64();
    // One more, parsed, to be sure the list is the whole fleet.
    let check: Value = reqwest::Client::new()
        .get(format!("{url}/v1/machines"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    let listed = check["machines"].as_array().map_or(0, Vec::len);
    ensure!(listed == n, "the list has {listed} machines, not {n}");
    Ok(vec![
        Row::info(
            format!("list {n} machines, 1 client: p50 / p99 (service time)"),
            format!("{:.1} / {:.1} ms", single.p50, single.p99),
        ),
        Row::info(
            format!("list {n} machines, {clients} clients: mean time inside nimbusd (/metrics)"),
            format!("{in_handler_ms:.1} ms"),
        ),
        Row::info(
            format!("list {n} machines, {clients} clients: p50"),
            format!("{:.1} ms", stats.p50),
        ),
        Row::against(
            format!("list {n} machines, {clients} clients: p99"),
            format!(
                "{:.1} ms (max {:.1}; {} requests, {:.0} KiB each)",
                stats.p99,
                stats.max,
                samples.len(),
                body_bytes as f64 / 1024.0
            ),
            "≤ 20 ms",
            stats.p99 <= 20.0,
        ),
        Row::info(
            format!("list {n} machines, {clients} clients: throughput"),
            format!("{rate:.0} requests/s"),
        ),
    ])
}

/// Sum (seconds) and count of nimbusd's own latency histogram for one route, from `/metrics`:
/// the time from the request reaching the router to the response head (the body is written
/// after).
async fn server_time(url: &str, method: &str, route: &str) -> anyhow::Result<(f64, f64)> {
    let text = reqwest::get(format!("{url}/metrics")).await?.text().await?;
    let labels = format!("method=\"{method}\",route=\"{route}\",status=\"200\"");
    let value = |suffix: &str| {
        text.lines()
            .find(|line| {
                line.starts_with(&format!("nimbus_http_request_duration_seconds_{suffix}{{"))
                    && line.contains(&labels)
            })
            .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((value("sum"), value("count")))
}

fn machine_dirs(dirs: &Dirs) -> anyhow::Result<usize> {
    let path = dirs.path("state/nimbus/machines");
    match std::fs::read_dir(&path) {
        Ok(entries) => Ok(entries.count()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(err) => Err(err).with_context(|| format!("read {}", path.display())),
    }
}

/// Live processes marked as local-machine processes whose working directory is under `root`.
fn machine_processes_under(root: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'));
            let marked = std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|b| *b == 0)
                    .any(|var| var.starts_with(b"NIMBUS_MACHINE_ID="))
            });
            let under = std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| cwd.starts_with(root));
            !zombie && marked && under
        })
        .collect()
}
