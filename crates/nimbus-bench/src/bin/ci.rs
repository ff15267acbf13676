//! Nimbus Git CI from the outside: push → first step running on a warm machine, and log
//! throughput. Starts a real `nimbus-git` and `nimbusd` (pass release builds), a local pool with
//! warm machines, and pushes with the real `git`; prints a table and asserts nothing.
//!
//! ```sh
//! cargo build --release -p nimbusd -p nimbus-git --no-default-features
//! cargo run --release -p nimbus-bench --bin nimbus-bench-ci -- \
//!     --nimbusd target/release/nimbusd --nimbus-git target/release/nimbus-git
//! ```
//!
//! Push → first step: `git push` starts at T0; the workflow's first step prints the time it
//! starts (`date +%s.%N`) to its log; the difference is the latency (push, webhook, workflow read
//! and plan, run created at the forge, job placed, checkout, first step started). Log
//! throughput: one step prints `--log-mb` MiB; the time from its first to its last log byte
//! stored at the forge.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    nimbusd: PathBuf,
    #[arg(long)]
    nimbus_git: PathBuf,
    /// Pushes to time.
    #[arg(long, default_value_t = 50)]
    pushes: usize,
    /// Size of the output of the log-throughput step, in MiB.
    #[arg(long, default_value_t = 50)]
    log_mb: usize,
}

const PASSWORD: &str = "bench-password";
const SECRET: &str = "bench-webhook-secret";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let git = Proc::start(
        Command::new(&args.nimbus_git)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--webhook-allow-private",
            ])
            .arg("--data-dir")
            .arg(root.join("git"))
            .env("NIMBUS_GIT_OWNER_PASSWORD", PASSWORD),
        "nimbus-git listening on ",
        root.join("git.log"),
    )?;
    let home = root.join("home");
    std::fs::create_dir_all(&home)?;
    let daemon = Proc::start(
        Command::new(&args.nimbusd)
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--autoscale-interval",
                "1s",
            ])
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", root.join("config"))
            .env("XDG_DATA_HOME", root.join("data"))
            .env("XDG_STATE_HOME", root.join("state")),
        "nimbusd listening on ",
        root.join("nimbusd.log"),
    )?;
    let admin = std::fs::read_to_string(root.join("config/nimbus/admin-token"))?
        .trim()
        .to_owned();
    let owner = ["-u".to_owned(), format!("owner:{PASSWORD}")];
    let bearer = ["-H".to_owned(), format!("Authorization: Bearer {admin}")];

    let token = call(
        &owner,
        "POST",
        &format!("{}/api/v1/tokens", git.url),
        Some(json!({"name": "nimbusd", "scope": "write"})),
    )?["token"]
        .as_str()
        .context("no token")?
        .to_owned();
    call(
        &owner,
        "POST",
        &format!("{}/api/v1/repos", git.url),
        Some(json!({"name": "bench"})),
    )?;
    let tenant = call(
        &bearer,
        "POST",
        &format!("{}/v1/tenants", daemon.url),
        Some(json!({"name": "bench"})),
    )?["id"]
        .as_str()
        .context("no tenant id")?
        .to_owned();
    let t = |path: &str| format!("{}/v1/tenants/{tenant}{path}", daemon.url);
    call(
        &bearer,
        "POST",
        &t("/providers"),
        Some(json!({"name": "local", "type": "local"})),
    )?;
    call(
        &bearer,
        "PUT",
        &t("/forge"),
        Some(json!({
            "type": "nimbus-git", "org": "owner",
            "config": {"url": git.url},
            "credentials": {"token": token, "webhook_secret": SECRET},
        })),
    )?;
    let (os, arch) = host_platform();
    call(
        &bearer,
        "POST",
        &t("/pools"),
        Some(json!({
            "name": "ci", "provider": "local", "labels": ["bench"], "os": os, "arch": arch,
            "min_idle": 2, "max": 4, "ephemeral": false,
        })),
    )?;
    call(
        &owner,
        "POST",
        &format!("{}/api/v1/repos/bench/webhooks", git.url),
        Some(json!({
            "url": t("/forge/webhook"), "secret": SECRET,
            "events": ["CommitPushed", "RunCancelRequested", "RunRerunRequested"],
        })),
    )?;
    if let Err(err) = wait_ready(&daemon.url, &admin, 2) {
        let log = std::fs::read_to_string(root.join("nimbusd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        bail!(
            "{err:#}\nnimbusd log (last lines, newest first):\n{}",
            tail.join("\n")
        );
    }

    let work = root.join("work");
    std::fs::create_dir_all(&work)?;
    run_git(&work, &["init", "-q", "-b", "main"])?;
    let remote = git
        .url
        .replace("http://", &format!("http://owner:{PASSWORD}@"))
        + "/bench.git";
    run_git(&work, &["remote", "add", "origin", &remote])?;
    write(
        &work,
        ".nimbus/workflows/ci.yml",
        "on: push\njobs:\n  first:\n    runs-on: bench\n    steps:\n      - run: date +%s.%N\n",
    )?;

    let mut latencies = Vec::with_capacity(args.pushes);
    for i in 0..args.pushes {
        write(&work, "counter", &i.to_string())?;
        run_git(&work, &["add", "-A"])?;
        run_git(&work, &["commit", "-q", "-m", &format!("push {i}")])?;
        let t0 = unix_now();
        run_git(&work, &["push", "-q", "origin", "HEAD:main"])?;
        let sha = run_git(&work, &["rev-parse", "HEAD"])?;
        let run = wait_run(&owner, &git.url, &sha)?;
        let log = text(
            &owner,
            &format!("{}/api/v1/repos/bench/runs/{run}/jobs/first/logs", git.url),
        )?;
        let started: f64 = log
            .lines()
            .filter_map(|l| l.trim().parse::<f64>().ok())
            .next()
            .with_context(|| format!("no timestamp in the log: {log}"))?;
        latencies.push(started - t0);
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];

    // Log throughput: one step prints log_mb MiB of text.
    let bytes = args.log_mb * 1024 * 1024;
    write(
        &work,
        ".nimbus/workflows/ci.yml",
        &format!(
            "on: push\njobs:\n  first:\n    runs-on: bench\n    steps:\n      - run: yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmno | head -c {bytes}\n"
        ),
    )?;
    run_git(&work, &["add", "-A"])?;
    run_git(&work, &["commit", "-q", "-m", "big log"])?;
    let start = Instant::now();
    run_git(&work, &["push", "-q", "origin", "HEAD:main"])?;
    let sha = run_git(&work, &["rev-parse", "HEAD"])?;
    let run = wait_run(&owner, &git.url, &sha)?;
    let elapsed = start.elapsed();
    let detail = call(
        &owner,
        "GET",
        &format!("{}/api/v1/repos/bench/runs/{run}", git.url),
        None,
    )?;
    let stored = detail["jobs"][0]["log_bytes"].as_u64().unwrap_or(0);

    println!("| metric | value | target |");
    println!("|---|---|---|");
    println!(
        "| push → first step running, p50 ({} pushes) | {:.0} ms | ≤ 1000 ms |",
        latencies.len(),
        pct(0.5) * 1000.0
    );
    println!(
        "| push → first step running, p99 | {:.0} ms | |",
        pct(0.99) * 1000.0
    );
    println!(
        "| push → first step running, max | {:.0} ms | |",
        latencies.last().copied().unwrap_or(0.0) * 1000.0
    );
    println!(
        "| log throughput: {} MiB step, push → run done | {:.1} s ({:.1} MiB/s) | |",
        args.log_mb,
        elapsed.as_secs_f64(),
        args.log_mb as f64 / elapsed.as_secs_f64()
    );
    println!("| log bytes stored at the forge (cap applies) | {stored} | |");
    drop(daemon);
    drop(git);
    Ok(())
}

struct Proc {
    child: Child,
    url: String,
}

impl Proc {
    fn start(cmd: &mut Command, prefix: &str, log: PathBuf) -> anyhow::Result<Proc> {
        use std::io::BufRead;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("start {cmd:?}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let prefix = prefix.to_owned();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(url) = line.strip_prefix(&prefix) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .with_context(|| format!("no address line; see {}", log.display()))?;
        Ok(Proc { child, url })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn curl(
    auth: &[String],
    method: &str,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}"])
        .args(auth);
    if let Some(body) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(body.to_string());
    }
    let out = cmd.arg(url).output().context("run curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
}

fn call(auth: &[String], method: &str, url: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let (status, text) = curl(auth, method, url, body)?;
    if !(200..300).contains(&status) {
        bail!("{method} {url}: {status} {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn text(auth: &[String], url: &str) -> anyhow::Result<String> {
    let (status, text) = curl(auth, "GET", url, None)?;
    if status != 200 {
        bail!("GET {url}: {status} {text}");
    }
    Ok(text)
}

/// The number of the commit's run once its job has finished.
fn wait_run(auth: &[String], git: &str, sha: &str) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let runs = call(
            auth,
            "GET",
            &format!("{git}/api/v1/repos/bench/runs?sha={sha}"),
            None,
        )?;
        if let Some(run) = runs.as_array().and_then(|r| r.first())
            && !matches!(run["state"].as_str(), Some("queued" | "running"))
        {
            return run["number"].as_u64().context("run number");
        }
        if Instant::now() > deadline {
            bail!("the run of {sha} did not finish: {runs}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_ready(url: &str, admin: &str, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let auth = ["-H".to_owned(), format!("Authorization: Bearer {admin}")];
    loop {
        let list = call(&auth, "GET", &format!("{url}/v1/machines"), None)?;
        let ready = list["machines"]
            .as_array()
            .map(|a| a.iter().filter(|m| m["state"] == "ready").count())
            .unwrap_or(0);
        if ready >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {ready} machines ready: {list}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run_git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .output()?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn write(dir: &Path, path: &str, text: &str) -> anyhow::Result<()> {
    let file = dir.join(path);
    std::fs::create_dir_all(file.parent().context("parent")?)?;
    std::fs::write(file, text)?;
    Ok(())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn host_platform() -> (&'static str, &'static str) {
    let os = if cfg!(target_os = "macos") {
        "macos"
    } else {
        "linux"
    };
    let arch = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "x86_64"
    };
    (os, arch)
}
