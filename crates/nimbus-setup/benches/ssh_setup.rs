//! Setup over SSH on loopback: 20 machines set up at once against one by one, and the cost of a
//! command on the reused connection against spawning the `ssh` CLI per command.
//!
//! `cargo bench -p nimbus-setup --bench ssh_setup` (needs openssh-server, sqlite3, curl; run as
//! root so the test sshd can log in as its own user). Prints a table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FakeForge, FileServer, KillPidfile, fake_github_runner_archive, sha256_hex, target};
use nimbus_setup::events::Events;
use nimbus_setup::exec::{Command, Exec};
use nimbus_setup::installers::{Pin, RunnerKind, Software};
use nimbus_setup::pipeline::{self, MachinePaths, Plan, RunnerPlan};
use nimbus_setup::ssh::{MemoryHostKeyStore, SshExec, SshOptions};
use nimbus_testkit::sshd::Sshd;
use nimbus_types::{Arch, MachineId, MachineSpec, Os, TenantId};

const MACHINES: usize = 20;
const COMMANDS: usize = 200;

struct Bench {
    sshd: Sshd,
    server: FileServer,
    sha256: String,
}

impl Bench {
    fn machine(&self, name: &str) -> (SshExec, Plan, KillPidfile) {
        let exec = SshExec::new(
            target(&self.sshd),
            MemoryHostKeyStore::new(),
            Events::none(),
            SshOptions::default(),
        );
        let dir = self.sshd.scratch_dir().join(name);
        let paths = MachinePaths::under(&dir.display().to_string());
        let spec = MachineSpec::new(Os::Linux, Arch::host().expect("a known architecture"));
        let mut plan = Plan::new(TenantId::new(), MachineId::new(), &spec, paths);
        plan.installers
            .base_urls
            .insert(Software::GithubActionsRunner, self.server.base_url());
        plan.installers.pins.push(Pin {
            software: Software::GithubActionsRunner,
            os: Os::Linux,
            arch: spec.arch,
            version: "9.9.9".into(),
            sha256: self.sha256.clone(),
            file: Some("runner.tar.gz".into()),
            format: None,
        });
        plan.runner = Some(RunnerPlan {
            kind: RunnerKind::GithubActions,
            name: name.into(),
            registration: FakeForge::token("https://github.com/acme", "token"),
        });
        plan.setup_script = Some("echo configured > configured".into());
        plan.connect_wait = Duration::from_secs(30);
        (exec, plan, KillPidfile(dir.join("work/runner.pid")))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let archive = fake_github_runner_archive();
    let bench = Bench {
        sshd: Sshd::start()?,
        server: FileServer::start(),
        sha256: sha256_hex(&archive),
    };
    bench.server.put("/runner.tar.gz", archive);
    let mut rows: Vec<(String, String, String, String)> = Vec::new();

    // Setup, one by one: each machine its own connection and state directory.
    let mut guards = Vec::new();
    let started = Instant::now();
    for idx in 0..MACHINES {
        let (exec, plan, guard) = bench.machine(&format!("seq-{idx}"));
        guards.push(guard);
        pipeline::run(&exec, &plan, &Events::none())
            .await
            .map_err(|err| {
                anyhow::anyhow!("setup of seq-{idx}: {err}\nsshd log:\n{}", bench.sshd.log())
            })?;
    }
    let sequential = started.elapsed();
    rows.push((
        format!("setup {MACHINES} machines one by one"),
        ms(sequential),
        ms(sequential / MACHINES as u32),
        "1.00x".into(),
    ));
    drop(guards);

    // Setup, all at once.
    let mut machines = Vec::new();
    for idx in 0..MACHINES {
        machines.push(bench.machine(&format!("par-{idx}")));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut guards = Vec::new();
    for (exec, plan, guard) in machines {
        guards.push(guard);
        tasks.push(tokio::spawn(async move {
            pipeline::run(&exec, &plan, &Events::none()).await
        }));
    }
    for task in tasks {
        task.await?
            .map_err(|err| anyhow::anyhow!("concurrent setup: {err}"))?;
    }
    let concurrent = started.elapsed();
    rows.push((
        format!("setup {MACHINES} machines at once"),
        ms(concurrent),
        ms(concurrent / MACHINES as u32),
        format!(
            "{:.2}x faster",
            sequential.as_secs_f64() / concurrent.as_secs_f64()
        ),
    ));
    drop(guards);

    // Per-command cost: the reused connection.
    let exec = Arc::new(SshExec::new(
        target(&bench.sshd),
        MemoryHostKeyStore::new(),
        Events::none(),
        SshOptions::default(),
    ));
    exec.wait_ready(Duration::from_secs(10)).await?;
    let mut reused = Vec::with_capacity(COMMANDS);
    for _ in 0..COMMANDS {
        let started = Instant::now();
        let out = exec.run(&Command::new("true")).await?;
        anyhow::ensure!(out.success(), "true failed: {out:?}");
        reused.push(started.elapsed());
    }
    reused.sort();
    let reused_total: Duration = reused.iter().sum();

    // Eight at a time on the same connection (channels multiplexed).
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let exec = exec.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..COMMANDS / 8 {
                exec.run(&Command::new("true")).await?;
            }
            Ok::<_, nimbus_setup::exec::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let multiplexed = started.elapsed();

    // Per-command cost: the ssh CLI, a new connection each time.
    let mut cli = Vec::with_capacity(COMMANDS);
    for _ in 0..COMMANDS {
        let started = Instant::now();
        let out = bench.sshd.ssh_command().arg("true").output()?;
        anyhow::ensure!(
            out.status.success(),
            "ssh true failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cli.push(started.elapsed());
    }
    cli.sort();
    let cli_total: Duration = cli.iter().sum();

    let reused_mean = reused_total / COMMANDS as u32;
    let cli_mean = cli_total / COMMANDS as u32;
    rows.push((
        format!("{COMMANDS} commands, reused connection"),
        ms(reused_total),
        format!(
            "{} (p50 {}, p99 {})",
            ms(reused_mean),
            ms(percentile(&reused, 0.5)),
            ms(percentile(&reused, 0.99))
        ),
        format!(
            "{:.1}x cheaper",
            cli_mean.as_secs_f64() / reused_mean.as_secs_f64()
        ),
    ));
    rows.push((
        format!("{COMMANDS} commands, reused, 8 channels at once"),
        ms(multiplexed),
        ms(multiplexed / COMMANDS as u32),
        format!(
            "{:.1}x cheaper",
            cli_mean.as_secs_f64() / (multiplexed / COMMANDS as u32).as_secs_f64()
        ),
    ));
    rows.push((
        format!("{COMMANDS} commands, ssh CLI per command"),
        ms(cli_total),
        format!(
            "{} (p50 {}, p99 {})",
            ms(cli_mean),
            ms(percentile(&cli, 0.5)),
            ms(percentile(&cli, 0.99))
        ),
        "1.0x".into(),
    ));

    println!("| scenario | total | per machine / command | ratio |");
    println!("| --- | --- | --- | --- |");
    for (scenario, total, each, ratio) in rows {
        println!("| {scenario} | {total} | {each} | {ratio} |");
    }
    Ok(())
}
