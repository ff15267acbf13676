//! The setup pipeline against a real sshd, with runner archives served by a local HTTP server.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{
    FakeForge, FileServer, KillPidfile, fake_github_runner_archive, query, sha256_hex, target,
};
use nimbus_setup::events::{Events, VecSink};
use nimbus_setup::exec::Exec;
use nimbus_setup::installers::{Pin, Software};
use nimbus_setup::local::LocalExec;
use nimbus_setup::pipeline::{self, Error, MachinePaths, Plan, RunnerPlan, STEPS};
use nimbus_setup::ssh::{MemoryHostKeyStore, SshExec, SshOptions};
use nimbus_setup::state::StateDb;
use nimbus_testkit::sshd::Sshd;
use nimbus_types::event as ev;
use nimbus_types::{Arch, MachineId, MachineSpec, Os, StepStatus, TenantId};

/// Fields drop in order: the runner is killed while its pid file still exists.
struct Machine {
    _runner: KillPidfile,
    sshd: Sshd,
    exec: SshExec,
    dir: PathBuf,
    paths: MachinePaths,
}

fn machine(sink: &Arc<VecSink>) -> Machine {
    let sshd = Sshd::start().unwrap();
    let exec = SshExec::new(
        target(&sshd),
        MemoryHostKeyStore::new(),
        Events::new(sink.clone()),
        SshOptions::default(),
    );
    let dir = sshd.scratch_dir().join("nimbus");
    let paths = MachinePaths::under(&dir.display().to_string());
    let runner = KillPidfile(dir.join("work/runner.pid"));
    Machine {
        sshd,
        exec,
        dir,
        paths,
        _runner: runner,
    }
}

const RUNNER_PATH: &str = "/gh/v9.9.9/actions-runner-linux-x64-9.9.9.tar.gz";

/// Serves a fake runner and returns a plan that installs it from there.
fn plan(
    server: &FileServer,
    paths: &MachinePaths,
    forge: Arc<FakeForge>,
    runner_name: &str,
) -> Plan {
    let archive = fake_github_runner_archive();
    let sha256 = sha256_hex(&archive);
    server.put(RUNNER_PATH, archive);
    let spec = MachineSpec::new(Os::Linux, Arch::host().unwrap());
    let mut plan = Plan::new(TenantId::new(), MachineId::new(), &spec, paths.clone());
    plan.installers.base_urls.insert(
        Software::GithubActionsRunner,
        format!("{}/gh", server.base_url()),
    );
    plan.installers.pins.push(Pin {
        software: Software::GithubActionsRunner,
        os: Os::Linux,
        arch: Arch::host().unwrap(),
        version: "9.9.9".into(),
        sha256,
        file: Some("v9.9.9/actions-runner-linux-x64-9.9.9.tar.gz".into()),
        format: None,
    });
    plan.runner = Some(RunnerPlan {
        kind: nimbus_setup::installers::RunnerKind::GithubActions,
        name: runner_name.into(),
        registration: forge,
    });
    plan.connect_wait = Duration::from_secs(10);
    plan.step_timeout = Duration::from_secs(60);
    plan
}

fn statuses(outcome: &pipeline::Outcome) -> Vec<(String, StepStatus, bool)> {
    outcome
        .steps
        .iter()
        .map(|step| (step.name.clone(), step.status, step.ran))
        .collect()
}

const HOSTILE: &str =
    "it's \"quoted\"; $(touch pwned) `id` '); DROP TABLE setup_steps; --\nnext line";

#[tokio::test]
async fn happy_path_installs_registers_starts_and_resumes_as_a_no_op() {
    let sink = VecSink::new();
    let m = machine(&sink);
    let server = FileServer::start();
    let forge = FakeForge::token("https://github.com/acme", "tok'$(id)\"en");
    let mut plan = plan(&server, &m.paths, forge.clone(), HOSTILE);
    plan.labels = vec![
        "linux".into(),
        "a'b;c".into(),
        "$(touch pwned-label)".into(),
    ];
    plan.setup_script =
        Some("echo from-setup > setup-ran; echo \"$NIMBUS_MACHINE_ID\" >> setup-ran".into());

    let outcome = match pipeline::run(&m.exec, &plan, &Events::new(sink.clone())).await {
        Ok(outcome) => outcome,
        Err(err) => panic!("pipeline failed: {err}\nsshd log:\n{}", m.sshd.log()),
    };
    let expected: Vec<_> = STEPS
        .iter()
        .map(|name| {
            let status = if *name == "macos_tools" {
                StepStatus::Skipped
            } else {
                StepStatus::Completed
            };
            (name.to_string(), status, true)
        })
        .collect();
    assert_eq!(statuses(&outcome), expected);
    let skipped = &outcome.steps[1];
    assert!(
        skipped.detail.as_deref().unwrap().contains("macOS only"),
        "{skipped:?}"
    );

    // The runner got the exact name, labels, URL and token, as data.
    let runner = m.dir.join("work/runner");
    let args = std::fs::read(runner.join(".config-args")).unwrap();
    let args: Vec<String> = args
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8(a.to_vec()).unwrap())
        .collect();
    let labels = plan.labels.join(",");
    let expected_args = [
        "--unattended",
        "--replace",
        "--url",
        "https://github.com/acme",
        "--name",
        HOSTILE,
        "--labels",
        &labels,
        "--work",
        "_work",
    ];
    assert_eq!(args, expected_args);
    assert_eq!(
        std::fs::read_to_string(runner.join(".token-seen")).unwrap(),
        "tok'$(id)\"en"
    );
    assert!(!runner.join("pwned").exists() && !m.dir.join("work/pwned").exists());
    assert!(!m.dir.join("work/pwned-label").exists());
    let setup_ran = std::fs::read_to_string(m.dir.join("work/setup-ran")).unwrap();
    assert_eq!(setup_ran, format!("from-setup\n{}\n", plan.machine_id));

    // The runner runs as a detached service.
    let pid = std::fs::read_to_string(m.dir.join("work/runner.pid")).unwrap();
    assert!(
        PathBuf::from(format!("/proc/{}", pid.trim())).exists(),
        "runner {pid} is not running"
    );

    // state.db on the machine tells the story, values intact.
    let db = m.dir.join("state.db");
    let machine = &query(&db, "SELECT * FROM machine_state")[0];
    assert_eq!(machine["state"], "ready");
    assert_eq!(machine["machine_id"], plan.machine_id.to_string());
    let labels_json: Vec<String> =
        serde_json::from_str(machine["labels"].as_str().unwrap()).unwrap();
    assert_eq!(labels_json, plan.labels);
    let runner_row = &query(&db, "SELECT * FROM runner_state")[0];
    assert_eq!(runner_row["name"], HOSTILE);
    assert_eq!(runner_row["status"], "running");
    assert_eq!(runner_row["url"], "https://github.com/acme");
    assert_eq!(
        query(&db, "SELECT * FROM image_state")[0]["state"],
        "installed"
    );
    assert_eq!(
        query(&db, "SELECT count(*) AS n FROM setup_steps")[0]["n"],
        STEPS.len()
    );
    // No secret in the database.
    let dump = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(".dump")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&dump.stdout).contains("tok'"),
        "the token was stored"
    );

    // The progress as get_machine sees it.
    let progress = pipeline::read_progress(&m.exec, &m.paths.state_db)
        .await
        .unwrap();
    assert_eq!(progress.steps.len(), STEPS.len());
    assert_eq!(
        progress.step("download_runner").unwrap().status,
        StepStatus::Completed
    );
    assert!(progress.step("setup_script").unwrap().finished_at.is_some());

    assert_eq!(forge.calls(), 1);
    assert_eq!(forge.requests.lock().unwrap()[0].runner_name, HOSTILE);
    assert_eq!(sink.named(ev::FORGE_REGISTER_RUNNER_SUCCESS).len(), 1);
    assert!(
        sink.events().iter().all(|event| {
            let json = serde_json::to_string(event).unwrap();
            !json.contains("tok'")
        }),
        "a secret reached an event"
    );

    // Running again does nothing new: no download, no registration.
    let again = pipeline::run(&m.exec, &plan, &Events::none())
        .await
        .unwrap();
    assert!(
        again.steps.iter().all(|step| !step.ran),
        "{:?}",
        statuses(&again)
    );
    assert_eq!(server.hits(RUNNER_PATH), 1);
    assert_eq!(forge.calls(), 1);
}

#[tokio::test]
async fn a_wrong_checksum_fails_the_download_step() {
    let sink = VecSink::new();
    let m = machine(&sink);
    let server = FileServer::start();
    let mut plan = plan(
        &server,
        &m.paths,
        FakeForge::token("https://github.com/acme", "t"),
        "r1",
    );
    // Serve other bytes than the pinned ones.
    server.put(RUNNER_PATH, b"not the runner you pinned".to_vec());
    plan.setup_script = None;

    let err = pipeline::run(&m.exec, &plan, &Events::none())
        .await
        .unwrap_err();
    assert_eq!(err.step(), Some("download_runner"), "{err}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(!err.is_retryable());

    let db = m.dir.join("state.db");
    let step = &query(
        &db,
        "SELECT * FROM setup_steps WHERE name = 'download_runner'",
    )[0];
    assert_eq!(step["status"], "failed");
    assert!(
        step["error"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch"),
        "{step}"
    );
    let machine = &query(&db, "SELECT * FROM machine_state")[0];
    assert_eq!(machine["state"], "failed");
    assert!(
        machine["error"]
            .as_str()
            .unwrap()
            .contains("download_runner"),
        "{machine}"
    );
    // Nothing unverified was kept or unpacked.
    assert!(!m.dir.join("work/runner/run.sh").exists());
    let downloads: Vec<_> = std::fs::read_dir(m.dir.join("work/downloads"))
        .unwrap()
        .collect();
    assert!(downloads.is_empty(), "{downloads:?}");
}

#[tokio::test]
async fn a_failing_step_records_its_error_and_a_rerun_resumes_after_the_completed_steps() {
    let sink = VecSink::new();
    let m = machine(&sink);
    let server = FileServer::start();
    let forge = FakeForge::token("https://github.com/acme", "t");
    let mut plan = plan(&server, &m.paths, forge.clone(), "r1");
    // The error text is hostile: it must land in state.db as it is.
    plan.setup_script = Some(format!(
        "printf '%s' '{}' >&2; exit 7",
        HOSTILE.replace('\'', "'\\''")
    ));

    let err = pipeline::run(&m.exec, &plan, &Events::none())
        .await
        .unwrap_err();
    assert_eq!(err.step(), Some("setup_script"), "{err}");
    match &err {
        Error::StepFailed { message, .. } => {
            assert_eq!(message, &format!("exit code 7: {}", HOSTILE.trim()))
        }
        other => panic!("{other}"),
    }
    let db = m.dir.join("state.db");
    let step = &query(&db, "SELECT * FROM setup_steps WHERE name = 'setup_script'")[0];
    assert_eq!(step["status"], "failed");
    assert_eq!(step["error"], format!("exit code 7: {}", HOSTILE.trim()));
    assert_eq!(
        query(&db, "SELECT count(*) AS n FROM setup_steps")[0]["n"],
        STEPS.len()
    );
    assert_eq!(
        query(&db, "SELECT state FROM machine_state")[0]["state"],
        "failed"
    );
    assert!(!m.dir.join("work/pwned").exists());

    plan.setup_script = Some("true".into());
    let outcome = pipeline::run(&m.exec, &plan, &Events::none())
        .await
        .unwrap();
    let ran: Vec<_> = outcome
        .steps
        .iter()
        .filter(|s| s.ran)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(ran, ["setup_script"]);
    assert_eq!(
        query(&db, "SELECT state FROM machine_state")[0]["state"],
        "ready"
    );
    assert_eq!(forge.calls(), 1);
    assert_eq!(server.hits(RUNNER_PATH), 1);
}

#[tokio::test]
async fn a_step_killed_mid_way_is_run_again_on_resume() {
    let sink = VecSink::new();
    let m = machine(&sink);
    let server = FileServer::start();
    let mut plan = plan(
        &server,
        &m.paths,
        FakeForge::token("https://github.com/acme", "t"),
        "r1",
    );
    plan.setup_script = Some(
        r#"echo $$ > "$NIMBUS_WORK_DIR/script.pid"
if [ -f "$NIMBUS_WORK_DIR/second" ]; then exit 0; fi
exec sleep 120"#
            .into(),
    );
    let exec = Arc::new(m.exec);
    let task = {
        let (exec, plan) = (exec.clone(), plan.clone());
        tokio::spawn(async move { pipeline::run(exec.as_ref(), &plan, &Events::none()).await })
    };
    let pidfile = m.dir.join("work/script.pid");
    for _ in 0..400 {
        if pidfile.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        pidfile.exists(),
        "the setup script never started\nsshd log:\n{}",
        m.sshd.log()
    );
    // The daemon dies mid-step: the future is dropped.
    task.abort();
    let _ = task.await;

    let progress = pipeline::read_progress(exec.as_ref(), &m.paths.state_db)
        .await
        .unwrap();
    assert_eq!(
        progress.step("setup_script").unwrap().status,
        StepStatus::Running
    );
    assert_eq!(
        progress.step("health_check").unwrap().status,
        StepStatus::Completed
    );

    // Dropping the command killed it on the machine.
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let mut gone = false;
    for _ in 0..100 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(gone, "the interrupted setup script {pid} is still running");

    std::fs::write(m.dir.join("work/second"), "").unwrap();
    let outcome = pipeline::run(exec.as_ref(), &plan, &Events::none())
        .await
        .unwrap();
    let ran: Vec<_> = outcome
        .steps
        .iter()
        .filter(|s| s.ran)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(ran, ["setup_script"]);
    let db = m.dir.join("state.db");
    let step = &query(&db, "SELECT * FROM setup_steps WHERE name = 'setup_script'")[0];
    assert_eq!(step["status"], "completed");
    assert_eq!(step["attempts"], 2);
}

#[tokio::test]
async fn an_unreachable_machine_fails_before_any_step_with_a_clear_reason() {
    let sshd = Sshd::start().unwrap();
    let mut target = target(&sshd);
    target.port = nimbus_testkit::free_port();
    let exec = SshExec::new(
        target,
        MemoryHostKeyStore::new(),
        Events::none(),
        SshOptions::default(),
    );
    let spec = MachineSpec::new(Os::Linux, Arch::X86_64);
    let mut plan = Plan::new(
        TenantId::new(),
        MachineId::new(),
        &spec,
        MachinePaths::default(),
    );
    plan.connect_wait = Duration::from_secs(1);
    let err = pipeline::run(&exec, &plan, &Events::none())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect(_)), "{err}");
    assert!(err.is_retryable());
    assert!(
        err.to_string()
            .contains("did not accept SSH connections within"),
        "{err}"
    );
}

#[tokio::test]
async fn progress_of_a_machine_without_state_is_empty() {
    let sshd = Sshd::start().unwrap();
    let exec = SshExec::new(
        target(&sshd),
        MemoryHostKeyStore::new(),
        Events::none(),
        SshOptions::default(),
    );
    let path = sshd.scratch_dir().join("nothing/state.db");
    let progress = pipeline::read_progress(&exec, &path.display().to_string())
        .await
        .unwrap();
    assert!(progress.steps.is_empty());
    assert!(!path.exists(), "reading must not create the database");
    assert!(
        pipeline::read_progress(&exec, "relative/state.db")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn local_machines_run_the_same_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let exec = LocalExec::new(dir.path(), format!("pipeline-test-{}", std::process::id()));
    let mut spec = MachineSpec::new(Os::Linux, Arch::X86_64);
    spec.setup_script = Some("echo local > local-ran".into());
    let paths = MachinePaths {
        state_db: dir.path().join("state.db").display().to_string(),
        work_dir: dir.path().join("work").display().to_string(),
    };
    let plan = Plan::new(TenantId::new(), MachineId::new(), &spec, paths.clone());
    let outcome = pipeline::run(&exec, &plan, &Events::none()).await.unwrap();
    let completed: Vec<_> = outcome
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Completed)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(completed, ["dependencies", "setup_script"]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("work/local-ran")).unwrap(),
        "local\n"
    );
    let db = StateDb::new(paths.state_db.clone()).unwrap();
    assert_eq!(db.machine(&exec).await.unwrap().unwrap().state, "ready");
    let progress = pipeline::read_progress(&exec as &dyn Exec, &paths.state_db)
        .await
        .unwrap();
    let skipped = progress.step("download_runner").unwrap();
    assert_eq!(skipped.status, StepStatus::Skipped);
    assert_eq!(skipped.error.as_deref(), Some("no runner requested"));
}

struct BusyForge;

#[async_trait::async_trait]
impl pipeline::RunnerRegistration for BusyForge {
    async fn registration(
        &self,
        _request: &pipeline::RegistrationRequest,
    ) -> Result<pipeline::RegistrationInfo, pipeline::RegistrationError> {
        Err(pipeline::RegistrationError::Retryable(
            "rate limited".into(),
        ))
    }
}

#[tokio::test]
async fn a_busy_forge_and_a_machine_lost_mid_step_are_retryable_failures() {
    let sink = VecSink::new();
    let mut m = machine(&sink);
    let server = FileServer::start();
    let mut plan = plan(
        &server,
        &m.paths,
        FakeForge::token("https://github.com/acme", "t"),
        "r1",
    );
    if let Some(runner) = plan.runner.as_mut() {
        runner.registration = Arc::new(BusyForge);
    }
    let err = pipeline::run(&m.exec, &plan, &Events::new(sink.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.step(), Some("register_runner"), "{err}");
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("rate limited"), "{err}");
    assert_eq!(sink.named(ev::FORGE_REGISTER_RUNNER_FAILURE).len(), 1);

    // The machine drops off the network while the setup script runs.
    plan.runner = None;
    plan.setup_script = Some(r#"echo $$ > "$NIMBUS_WORK_DIR/script.pid"; exec sleep 30"#.into());
    let pidfile = m.dir.join("work/script.pid");
    let exec = Arc::new(m.exec);
    let task = {
        let (exec, plan) = (exec.clone(), plan.clone());
        tokio::spawn(async move { pipeline::run(exec.as_ref(), &plan, &Events::none()).await })
    };
    for _ in 0..400 {
        if pidfile.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(pidfile.exists(), "the setup script never started");
    m.sshd.stop();
    let err = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the pipeline noticed the lost connection")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.step(), Some("setup_script"), "{err}");
    assert!(err.is_retryable(), "{err}");
}
