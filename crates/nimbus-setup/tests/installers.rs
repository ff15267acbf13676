//! Each runner kind and the macOS tools, installed by the pipeline from a local HTTP server
//! with known checksums, on a real sshd.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{
    FAKE_FORGEJO_RUNNER, FAKE_GITLAB_RUNNER, FakeForge, FileServer, KillPidfile,
    fake_github_runner_archive, nul_args, sha256_hex, target,
};
use nimbus_setup::events::Events;
use nimbus_setup::installers::{Format, Pin, RunnerKind, Software};
use nimbus_setup::pipeline::{self, MachinePaths, Plan, RunnerPlan};
use nimbus_setup::ssh::{MemoryHostKeyStore, SshExec, SshOptions};
use nimbus_testkit::sshd::Sshd;
use nimbus_types::{Arch, MachineId, MachineSpec, Os, StepStatus, TenantId};

/// Fields drop in order: the runner is killed while its pid file still exists.
struct Setup {
    _runner: KillPidfile,
    sshd: Sshd,
    server: FileServer,
    exec: SshExec,
    dir: PathBuf,
}

fn setup() -> Setup {
    let sshd = Sshd::start().unwrap();
    let exec = SshExec::new(
        target(&sshd),
        MemoryHostKeyStore::new(),
        Events::none(),
        SshOptions::default(),
    );
    let dir = sshd.scratch_dir().join("nimbus");
    let runner = KillPidfile(dir.join("work/runner.pid"));
    Setup {
        sshd,
        server: FileServer::start(),
        exec,
        dir,
        _runner: runner,
    }
}

impl Setup {
    fn plan(&self, os: Os, arch: Arch) -> Plan {
        let spec = MachineSpec::new(os, arch);
        let mut plan = Plan::new(
            TenantId::new(),
            MachineId::new(),
            &spec,
            MachinePaths::under(&self.dir.display().to_string()),
        );
        plan.connect_wait = Duration::from_secs(10);
        plan.step_timeout = Duration::from_secs(60);
        plan
    }

    /// Serves `body` at `/<file>` and pins it for `software`.
    fn serve(
        &self,
        plan: &mut Plan,
        software: Software,
        file: &str,
        body: Vec<u8>,
        format: Format,
    ) {
        plan.installers
            .base_urls
            .insert(software, self.server.base_url());
        plan.installers.pins.push(Pin {
            software,
            os: plan.os,
            arch: plan.arch,
            version: "1.2.3".into(),
            sha256: sha256_hex(&body),
            file: Some(file.into()),
            format: Some(format),
        });
        self.server.put(&format!("/{file}"), body);
    }

    async fn run(&self, plan: &Plan) -> pipeline::Outcome {
        match pipeline::run(&self.exec, plan, &Events::none()).await {
            Ok(outcome) => outcome,
            Err(err) => panic!("setup failed: {err}\nsshd log:\n{}", self.sshd.log()),
        }
    }

    fn runner_dir(&self) -> PathBuf {
        self.dir.join("work/runner")
    }

    fn runner_alive(&self) -> bool {
        let pid = std::fs::read_to_string(self.dir.join("work/runner.pid")).unwrap();
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        !stat.is_empty() && !stat.contains(") Z ")
    }
}

fn host() -> Arch {
    Arch::host().expect("a known architecture")
}

#[tokio::test]
async fn gitlab_runner_is_registered_with_the_token_in_its_environment_and_started() {
    let s = setup();
    let mut plan = s.plan(Os::Linux, host());
    s.serve(
        &mut plan,
        Software::GitlabRunner,
        "gitlab-runner-linux",
        FAKE_GITLAB_RUNNER.as_bytes().to_vec(),
        Format::Binary,
    );
    let forge = FakeForge::token("https://gitlab.example.com", "glrt-secret'$(id)");
    plan.runner = Some(RunnerPlan {
        kind: RunnerKind::GitlabRunner,
        name: "gl 'runner'".into(),
        registration: forge.clone(),
    });
    s.run(&plan).await;
    let dir = s.runner_dir();
    assert_eq!(
        nul_args(&dir.join("register-args")),
        [
            "--non-interactive",
            "--url",
            "https://gitlab.example.com",
            "--name",
            "gl 'runner'",
            "--executor",
            "shell"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("token-seen")).unwrap(),
        "glrt-secret'$(id)"
    );
    assert!(
        std::fs::read_to_string(dir.join("config.toml"))
            .unwrap()
            .contains("[[runners]]")
    );
    assert!(s.runner_alive());
    assert_eq!(
        forge.requests.lock().unwrap()[0].kind,
        RunnerKind::GitlabRunner
    );
}

#[tokio::test]
async fn forgejo_runner_is_registered_and_started() {
    let s = setup();
    let mut plan = s.plan(Os::Linux, host());
    plan.labels = vec!["docker".into(), "linux-amd64".into()];
    s.serve(
        &mut plan,
        Software::ForgejoRunner,
        "forgejo-runner",
        FAKE_FORGEJO_RUNNER.as_bytes().to_vec(),
        Format::Binary,
    );
    plan.runner = Some(RunnerPlan {
        kind: RunnerKind::ForgejoRunner,
        name: "fj-1".into(),
        registration: FakeForge::token("https://code.example.org", "fj-token"),
    });
    s.run(&plan).await;
    assert_eq!(
        nul_args(&s.runner_dir().join("register-args")),
        [
            "--no-interactive",
            "--instance",
            "https://code.example.org",
            "--token",
            "fj-token",
            "--name",
            "fj-1",
            "--labels",
            "docker,linux-amd64"
        ]
    );
    assert!(s.runner_dir().join(".runner").exists());
    assert!(s.runner_alive());
}

#[tokio::test]
async fn a_forgejo_runner_created_by_the_forge_runs_one_job_with_its_labels() {
    let s = setup();
    let mut plan = s.plan(Os::Linux, host());
    plan.labels = vec!["docker".into(), "linux-amd64".into()];
    s.serve(
        &mut plan,
        Software::ForgejoRunner,
        "forgejo-runner",
        FAKE_FORGEJO_RUNNER.as_bytes().to_vec(),
        Format::Binary,
    );
    let forge = FakeForge::identity(
        "https://code.example.org",
        "d4637a60-7fea-4075-a81c-7e4ae01bdf0d",
        "e1f3d26e'$(id)",
        &["nimbus-fj-2", "docker"],
    );
    plan.runner = Some(RunnerPlan {
        kind: RunnerKind::ForgejoRunner,
        name: "fj-2".into(),
        registration: forge.clone(),
    });
    s.run(&plan).await;
    let dir = s.runner_dir();
    assert!(!dir.join("register-args").exists(), "nothing is registered");
    for _ in 0..100 {
        if dir.join("token-seen").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token_file = dir.join(".runner-token");
    assert_eq!(
        nul_args(&dir.join("one-job-args")),
        [
            "--url",
            "https://code.example.org",
            "--uuid",
            "d4637a60-7fea-4075-a81c-7e4ae01bdf0d",
            "--token-url",
            &format!("file:{}", token_file.display()),
            "--wait",
            "--label",
            "docker",
            "--label",
            "linux-amd64",
            "--label",
            "nimbus-fj-2",
        ]
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("token-seen")).unwrap(),
        "e1f3d26e'$(id)"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the token is readable by others: {mode:o}");
    assert!(s.runner_alive());
    // Set up again (a resumed setup): the runner is configured, the forge is not asked again.
    s.run(&plan).await;
    assert_eq!(forge.calls(), 1);
}

#[tokio::test]
async fn a_github_jit_config_skips_configure_and_reaches_the_runner_by_environment() {
    let s = setup();
    let mut plan = s.plan(Os::Linux, host());
    s.serve(
        &mut plan,
        Software::GithubActionsRunner,
        "actions-runner.tar.gz",
        fake_github_runner_archive(),
        Format::TarGz,
    );
    plan.runner = Some(RunnerPlan {
        kind: RunnerKind::GithubActions,
        name: "ephemeral-1".into(),
        registration: FakeForge::jit("https://github.com/acme", "eyJqaXQiOiAiY29uZmlnIn0="),
    });
    s.run(&plan).await;
    let dir = s.runner_dir();
    assert!(
        !dir.join(".config-args").exists(),
        "config.sh must not run for a JIT runner"
    );
    for _ in 0..100 {
        if dir.join(".jit-seen").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        std::fs::read_to_string(dir.join(".jit-seen")).unwrap(),
        "eyJqaXQiOiAiY29uZmlnIn0="
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join(".jitconfig"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the JIT config is readable by others: {mode:o}"
    );
}

#[tokio::test]
async fn a_jit_config_for_another_runner_kind_fails_the_registration_step() {
    let s = setup();
    let mut plan = s.plan(Os::Linux, host());
    s.serve(
        &mut plan,
        Software::ForgejoRunner,
        "forgejo-runner",
        FAKE_FORGEJO_RUNNER.as_bytes().to_vec(),
        Format::Binary,
    );
    plan.runner = Some(RunnerPlan {
        kind: RunnerKind::ForgejoRunner,
        name: "fj".into(),
        registration: FakeForge::jit("https://code.example.org", "jit"),
    });
    let err = pipeline::run(&s.exec, &plan, &Events::none())
        .await
        .unwrap_err();
    assert_eq!(err.step(), Some("register_runner"), "{err}");
    assert!(
        err.to_string().contains("only the GitHub Actions runner"),
        "{err}"
    );
}

#[tokio::test]
async fn macos_machines_get_homebrew_curie_and_geranos() {
    let s = setup();
    // The steps are POSIX shell, so the macOS branch runs on this Linux sshd too.
    let mut plan = s.plan(Os::Macos, Arch::Arm64);
    let install = "#!/bin/sh\ntouch \"$(dirname \"$0\")/homebrew-ran\"\n";
    s.server
        .put("/homebrew/install.sh", install.as_bytes().to_vec());
    plan.homebrew_install_url = format!("{}/homebrew/install.sh", s.server.base_url());
    s.serve(
        &mut plan,
        Software::Curie,
        "curie",
        b"#!/bin/sh\necho curie\n".to_vec(),
        Format::Binary,
    );
    s.serve(
        &mut plan,
        Software::Geranos,
        "geranos",
        b"#!/bin/sh\necho geranos\n".to_vec(),
        Format::Binary,
    );
    let outcome = s.run(&plan).await;
    let tools = outcome
        .steps
        .iter()
        .find(|s| s.name == "macos_tools")
        .unwrap();
    assert_eq!(tools.status, StepStatus::Completed);
    let work = s.dir.join("work");
    assert!(
        work.join("homebrew-ran").exists() || which_brew(),
        "Homebrew installer did not run"
    );
    for tool in ["curie", "geranos"] {
        let out = std::process::Command::new(work.join("bin").join(tool))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{tool}\n"));
    }
}

fn which_brew() -> bool {
    std::process::Command::new("sh")
        .args(["-c", "command -v brew"])
        .output()
        .is_ok_and(|out| out.status.success())
}

#[tokio::test]
async fn macos_tools_without_a_pin_fail_with_the_pin_to_configure() {
    let s = setup();
    let mut plan = s.plan(Os::Macos, Arch::Arm64);
    s.server.put("/install.sh", b"#!/bin/sh\ntrue\n".to_vec());
    plan.homebrew_install_url = format!("{}/install.sh", s.server.base_url());
    let err = pipeline::run(&s.exec, &plan, &Events::none())
        .await
        .unwrap_err();
    assert_eq!(err.step(), Some("macos_tools"), "{err}");
    assert!(
        err.to_string()
            .contains("no pinned SHA-256 for curie on macos/arm64"),
        "{err}"
    );
}
