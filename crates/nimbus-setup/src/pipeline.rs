//! The setup pipeline: ordered, named steps that turn a reachable machine into a runner host,
//! with their progress recorded on the machine in `state.db` (see [`crate::state`]).
//!
//! Steps, in order ([`STEPS`]): `dependencies` (tools the other steps need; Homebrew on macOS),
//! `macos_tools` (Curie and Geranos; skipped on Linux), `download_runner` (pinned, checksummed),
//! `register_runner` (a token or JIT config from the forge through [`RunnerRegistration`], then
//! the runner's own configure command), `start_runner` (a detached service), `health_check`, and
//! `setup_script` (the spec's own script, last).
//!
//! Re-running skips steps recorded as completed or skipped; a step left `running` by a crash and
//! a `failed` step run again. A failing step is recorded with its error, the machine row goes to
//! `failed`, and [`run`] returns [`Error::StepFailed`] naming the step. The caller (the lifecycle
//! layer) moves the machine through its states and emits `setup_*` events; this module emits the
//! `nimbus.forge.register_runner_*` events of the registration it drives.
//!
//! Secrets (registration tokens, JIT configs) reach the machine on a command's stdin, never in
//! its arguments, environment or the state database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nimbus_types::event::{self, Event};
use nimbus_types::{Arch, MachineId, MachineSpec, Os, Secret, SetupProgress, StepStatus, TenantId};

use crate::events::Events;
use crate::exec::{self, Command, Exec, Output, Stream};
use crate::installers::{self, DOWNLOAD_SCRIPT, Installers, RunnerKind, Software};
use crate::state::{self, MachineRow, RunnerRow, StateDb};

pub const STEP_DEPENDENCIES: &str = "dependencies";
pub const STEP_MACOS_TOOLS: &str = "macos_tools";
pub const STEP_DOWNLOAD_RUNNER: &str = "download_runner";
pub const STEP_REGISTER_RUNNER: &str = "register_runner";
pub const STEP_START_RUNNER: &str = "start_runner";
pub const STEP_HEALTH_CHECK: &str = "health_check";
pub const STEP_SETUP_SCRIPT: &str = "setup_script";

/// Every step, in the order it runs.
pub const STEPS: &[&str] = &[
    STEP_DEPENDENCIES,
    STEP_MACOS_TOOLS,
    STEP_DOWNLOAD_RUNNER,
    STEP_REGISTER_RUNNER,
    STEP_START_RUNNER,
    STEP_HEALTH_CHECK,
    STEP_SETUP_SCRIPT,
];

/// Where setup keeps its files on the machine. Both paths must be absolute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachinePaths {
    /// The machine's `state.db`.
    pub state_db: String,
    /// Downloads, the runner, its log and pid file, the setup script.
    pub work_dir: String,
}

impl MachinePaths {
    /// `<dir>/state.db` and `<dir>/work`.
    pub fn under(dir: &str) -> Self {
        let dir = dir.trim_end_matches('/');
        MachinePaths {
            state_db: format!("{dir}/state.db"),
            work_dir: format!("{dir}/work"),
        }
    }
}

impl MachinePaths {
    /// The paths a provider reported in a machine's metadata (`state_db` and `work_dir` in
    /// `extra`, as the ssh provider does), if it did.
    pub fn from_metadata(metadata: &nimbus_types::ProviderMetadata) -> Option<Self> {
        Some(MachinePaths {
            state_db: metadata.extra.get("state_db")?.clone(),
            work_dir: metadata.extra.get("work_dir")?.clone(),
        })
    }
}

impl Default for MachinePaths {
    /// Under `/var/lib/nimbus`, which the login user must be able to write.
    fn default() -> Self {
        MachinePaths::under(DEFAULT_STATE_DIR)
    }
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/nimbus";

/// What the forge needs to know to hand out a runner registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationRequest {
    pub tenant_id: TenantId,
    pub machine_id: MachineId,
    /// The runner's name at the forge.
    pub runner_name: String,
    pub labels: Vec<String>,
    pub os: Os,
    pub arch: Arch,
    pub kind: RunnerKind,
}

/// How the runner authenticates its registration.
#[derive(Clone, Debug)]
pub enum RunnerCredential {
    /// A registration token: GitHub's runner registration token, a GitLab runner
    /// authentication token (`glrt-…`), a Forgejo runner registration token.
    Token(Secret),
    /// GitHub's just-in-time runner configuration (base64) for an ephemeral runner; the
    /// runner needs no configure step.
    JitConfig(Secret),
    /// A Forgejo runner the forge created (Forgejo 15+): its `uuid` and token. The machine
    /// keeps them (the token in a 0600 file) and runs `forgejo-runner one-job`, which declares
    /// the labels: the server sets none.
    RunnerIdentity { uuid: String, token: Secret },
}

/// What the forge returned.
#[derive(Clone, Debug)]
pub struct RegistrationInfo {
    /// Where the runner registers: a GitHub organization or repository URL, a GitLab or Forgejo
    /// instance URL.
    pub url: String,
    pub credential: RunnerCredential,
    /// Labels the runner declares besides the machine's (Forgejo: the tenant's marker and the
    /// runner's unique label, which its server cannot set); empty where the forge sets them.
    pub labels: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// Worth retrying later (rate limit, forge unavailable).
    #[error("{0} (retryable)")]
    Retryable(String),
    #[error("{0}")]
    Permanent(String),
}

/// The forge side of runner registration, implemented by each forge (`nimbus-forge`).
///
/// Called once per setup run that reaches the `register_runner` step (not again once the runner
/// is configured); the returned credential is used at once and never stored by Nimbus.
#[async_trait]
pub trait RunnerRegistration: Send + Sync {
    async fn registration(
        &self,
        request: &RegistrationRequest,
    ) -> Result<RegistrationInfo, RegistrationError>;
}

/// The runner a machine should get.
#[derive(Clone)]
pub struct RunnerPlan {
    pub kind: RunnerKind,
    /// The runner's name at the forge (any text; passed as data).
    pub name: String,
    pub registration: Arc<dyn RunnerRegistration>,
}

impl std::fmt::Debug for RunnerPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerPlan")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Everything one setup run needs.
#[derive(Clone, Debug)]
pub struct Plan {
    pub tenant_id: TenantId,
    pub machine_id: MachineId,
    pub os: Os,
    pub arch: Arch,
    pub labels: Vec<String>,
    pub paths: MachinePaths,
    /// `None`: no forge runner (only dependencies and the setup script).
    pub runner: Option<RunnerPlan>,
    pub setup_script: Option<String>,
    pub installers: Installers,
    /// Install Curie and Geranos on macOS machines.
    pub macos_tools: bool,
    /// Homebrew's install script, run on macOS machines without `brew`.
    pub homebrew_install_url: String,
    /// How long to wait for the machine to accept commands (SSH coming up).
    pub connect_wait: Duration,
    /// Upper bound for one step's command.
    pub step_timeout: Duration,
}

impl Plan {
    /// A plan for `spec`'s machine: its platform, labels and setup script; no runner and
    /// default installers until the caller sets them.
    pub fn new(
        tenant_id: TenantId,
        machine_id: MachineId,
        spec: &MachineSpec,
        paths: MachinePaths,
    ) -> Self {
        Plan {
            tenant_id,
            machine_id,
            os: spec.os,
            arch: spec.arch,
            labels: spec.labels.clone(),
            paths,
            runner: None,
            setup_script: spec.setup_script.clone(),
            installers: Installers::default(),
            macos_tools: true,
            homebrew_install_url:
                "https://raw.githubusercontent.com/Homebrew/install/HEAD/install.sh".into(),
            connect_wait: Duration::from_secs(300),
            step_timeout: Duration::from_secs(1800),
        }
    }

    fn runner_dir(&self) -> String {
        format!("{}/runner", self.paths.work_dir)
    }
}

/// How one step went in this run.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    pub name: String,
    pub status: StepStatus,
    /// False when the step was already done by an earlier run and was not run again.
    pub ran: bool,
    pub duration: Duration,
    /// The reason for a skip.
    pub detail: Option<String>,
}

/// What a successful run did.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub steps: Vec<StepReport>,
    /// Until the machine accepted commands ("SSH reachable" in time-to-ready).
    pub connect_duration: Duration,
    /// The whole run.
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The machine could not be reached or refused us; nothing was recorded on it.
    #[error("machine not reachable: {0}")]
    Connect(#[source] exec::Error),
    /// `state.db` could not be written or read.
    #[error("{0}")]
    State(#[from] state::Error),
    /// A step failed; its error is recorded on the machine when it could be reached.
    /// `retryable`: the machine became unreachable or the forge asked to come back later.
    #[error("setup step {step} failed: {message}")]
    StepFailed {
        step: String,
        message: String,
        retryable: bool,
    },
}

impl Error {
    /// The failed step, if a step failed.
    pub fn step(&self) -> Option<&str> {
        match self {
            Error::StepFailed { step, .. } => Some(step),
            _ => None,
        }
    }

    /// Whether running the pipeline again may help without changing anything (the machine
    /// was unreachable, or a transient download or forge error).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect(err) => {
                matches!(err, exec::Error::Unreachable(_) | exec::Error::Timeout(_))
            }
            Error::State(state::Error::Exec(err)) => matches!(err, exec::Error::Unreachable(_)),
            Error::StepFailed { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

enum StepResult {
    Done,
    Skipped(String),
}

/// Why a step failed, and whether running the pipeline again may help as it is (the machine
/// dropped off the network, the forge asked us to come back later).
struct StepError {
    message: String,
    retryable: bool,
}

impl From<String> for StepError {
    fn from(message: String) -> Self {
        StepError {
            message,
            retryable: false,
        }
    }
}

struct Ctx<'a> {
    exec: &'a dyn Exec,
    plan: &'a Plan,
    db: &'a StateDb,
    events: &'a Events,
}

/// Runs the pipeline on the machine behind `exec`, resuming after completed steps.
pub async fn run(exec: &dyn Exec, plan: &Plan, events: &Events) -> Result<Outcome, Error> {
    let started = Instant::now();
    let events = events.for_machine(plan.tenant_id, plan.machine_id);
    for path in [&plan.paths.state_db, &plan.paths.work_dir] {
        if !path.starts_with('/') {
            return Err(Error::State(state::Error::BadPath(path.clone())));
        }
    }
    exec.wait_ready(plan.connect_wait)
        .await
        .map_err(Error::Connect)?;
    let connect_duration = started.elapsed();
    let db = StateDb::new(plan.paths.state_db.clone())?;
    db.init(
        exec,
        &MachineRow {
            machine_id: plan.machine_id.to_string(),
            tenant_id: plan.tenant_id.to_string(),
            os: plan.os.to_string(),
            arch: plan.arch.to_string(),
            labels: plan.labels.clone(),
            state: "image_installing".into(),
            error: None,
        },
    )
    .await?;
    db.set_machine_state(exec, "image_installing", None).await?;
    db.set_image_state(exec, "installing").await?;
    let done: Vec<_> = db
        .steps(exec)
        .await?
        .into_iter()
        .filter(|step| matches!(step.status, StepStatus::Completed | StepStatus::Skipped))
        .collect();

    let ctx = Ctx {
        exec,
        plan,
        db: &db,
        events: &events,
    };
    let mut reports = Vec::new();
    for (position, name) in STEPS.iter().enumerate() {
        if let Some(step) = done.iter().find(|step| step.name == *name) {
            reports.push(StepReport {
                name: name.to_string(),
                status: step.status,
                ran: false,
                duration: Duration::ZERO,
                detail: step.error.clone(),
            });
            continue;
        }
        let step_started = Instant::now();
        db.step_started(exec, name, position).await?;
        tracing::info!(machine.id = %plan.machine_id, step = name, "setup step started");
        let result = run_step(&ctx, name).await;
        let duration = step_started.elapsed();
        match result {
            Ok(StepResult::Done) => {
                db.step_finished(exec, name, position, StepStatus::Completed, None)
                    .await?;
                tracing::info!(machine.id = %plan.machine_id, step = name, ?duration, "setup step completed");
                reports.push(StepReport {
                    name: name.to_string(),
                    status: StepStatus::Completed,
                    ran: true,
                    duration,
                    detail: None,
                });
            }
            Ok(StepResult::Skipped(reason)) => {
                db.step_finished(exec, name, position, StepStatus::Skipped, Some(&reason))
                    .await?;
                tracing::info!(machine.id = %plan.machine_id, step = name, %reason, "setup step skipped");
                reports.push(StepReport {
                    name: name.to_string(),
                    status: StepStatus::Skipped,
                    ran: true,
                    duration,
                    detail: Some(reason),
                });
            }
            Err(StepError { message, retryable }) => {
                tracing::warn!(machine.id = %plan.machine_id, step = name, error = %message, "setup step failed");
                // Record what we can; the machine may be gone, and the step's error is what the
                // caller needs either way.
                let recorded = db
                    .step_finished(exec, name, position, StepStatus::Failed, Some(&message))
                    .await;
                if recorded.is_ok() {
                    let why = format!("setup step {name} failed: {message}");
                    let _ = db.set_machine_state(exec, "failed", Some(&why)).await;
                    let _ = db.set_image_state(exec, "failed").await;
                }
                let unreachable = matches!(
                    recorded,
                    Err(state::Error::Exec(exec::Error::Unreachable(_)))
                );
                return Err(Error::StepFailed {
                    step: name.to_string(),
                    message,
                    retryable: retryable || unreachable,
                });
            }
        }
    }
    db.set_image_state(exec, "installed").await?;
    db.set_machine_state(exec, "ready", None).await?;
    Ok(Outcome {
        steps: reports,
        connect_duration,
        duration: started.elapsed(),
    })
}

/// Setup progress as the machine records it (see [`state::read_progress`]).
pub async fn read_progress(exec: &dyn Exec, state_db: &str) -> Result<SetupProgress, state::Error> {
    state::read_progress(exec, state_db).await
}

async fn run_step(ctx: &Ctx<'_>, name: &str) -> Result<StepResult, StepError> {
    match name {
        STEP_DEPENDENCIES => dependencies(ctx).await,
        STEP_MACOS_TOOLS => macos_tools(ctx).await,
        STEP_DOWNLOAD_RUNNER => download_runner(ctx).await,
        STEP_REGISTER_RUNNER => register_runner(ctx).await,
        STEP_START_RUNNER => start_runner(ctx).await,
        STEP_HEALTH_CHECK => health_check(ctx).await,
        STEP_SETUP_SCRIPT => setup_script(ctx).await,
        other => Err(format!("unknown step {other}").into()),
    }
}

/// Runs a step's command, streaming its output to the log, and turns failure into the step's
/// error: the exit code and the tail of stderr (or stdout).
async fn check(ctx: &Ctx<'_>, step: &str, command: Command) -> Result<Output, StepError> {
    let machine_id = ctx.plan.machine_id;
    let command = command.label(step);
    let lines = move |stream: Stream, line: &str| {
        tracing::debug!(machine.id = %machine_id, step, ?stream, "{line}");
    };
    let output = ctx
        .exec
        .run_streaming(&command, &lines)
        .await
        .map_err(|err| StepError {
            retryable: matches!(err, exec::Error::Unreachable(_)),
            message: err.to_string(),
        })?;
    if output.success() {
        return Ok(output);
    }
    let text = if output.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        output.stderr_str()
    } else {
        output.stdout_str()
    };
    Err(format!(
        "exit code {}: {}",
        output.exit_code,
        tail(text.trim(), 2000)
    )
    .into())
}

/// The last `max` bytes of `text`, on a character boundary.
fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

const DEPENDENCIES_SCRIPT: &str = r#"missing=""
command -v tar >/dev/null 2>&1 || missing="$missing tar"
command -v curl >/dev/null 2>&1 || command -v wget >/dev/null 2>&1 || missing="$missing curl-or-wget"
command -v sha256sum >/dev/null 2>&1 || command -v shasum >/dev/null 2>&1 || missing="$missing sha256sum-or-shasum"
if [ -n "$missing" ]; then echo "missing on the machine:$missing" >&2; exit 1; fi
mkdir -p -- "$1" || exit 1
if [ "$2" = macos ] && ! command -v brew >/dev/null 2>&1 && [ ! -x /opt/homebrew/bin/brew ] && [ ! -x /usr/local/bin/brew ]; then
  echo "installing Homebrew from $3"
  curl -fsSL -o "$1/homebrew-install.sh" -- "$3" || { echo "download of the Homebrew installer failed" >&2; exit 1; }
  NONINTERACTIVE=1 /bin/bash "$1/homebrew-install.sh" </dev/null || exit 1
fi
echo "dependencies present""#;

async fn dependencies(ctx: &Ctx<'_>) -> Result<StepResult, StepError> {
    let plan = ctx.plan;
    check(
        ctx,
        STEP_DEPENDENCIES,
        Command::new(DEPENDENCIES_SCRIPT)
            .arg(&plan.paths.work_dir)
            .arg(plan.os.as_str())
            .arg(&plan.homebrew_install_url)
            .timeout(plan.step_timeout),
    )
    .await?;
    Ok(StepResult::Done)
}

async fn download(
    ctx: &Ctx<'_>,
    step: &str,
    artifact: &installers::Artifact,
    into: &str,
) -> Result<(), StepError> {
    let file = artifact.url.rsplit('/').next().unwrap_or("download");
    let file = if file.is_empty() { "download" } else { file };
    let dest = format!(
        "{}/downloads/{}-{}-{}",
        ctx.plan.paths.work_dir, artifact.software, artifact.version, file
    );
    check(
        ctx,
        step,
        Command::new(DOWNLOAD_SCRIPT)
            .arg(&artifact.url)
            .arg(&artifact.sha256)
            .arg(dest)
            .arg(into)
            .arg(artifact.format.as_str())
            .arg(&artifact.binary)
            .timeout(ctx.plan.step_timeout),
    )
    .await
    .map(drop)
}

async fn macos_tools(ctx: &Ctx<'_>) -> Result<StepResult, StepError> {
    let plan = ctx.plan;
    if plan.os != Os::Macos {
        return Ok(StepResult::Skipped(format!(
            "curie and geranos run on macOS only; this machine runs {}",
            plan.os
        )));
    }
    if !plan.macos_tools {
        return Ok(StepResult::Skipped(
            "macOS tools are turned off in the plan".into(),
        ));
    }
    let bin = format!("{}/bin", plan.paths.work_dir);
    for software in [Software::Curie, Software::Geranos] {
        let artifact = plan
            .installers
            .resolve(software, plan.os, plan.arch)
            .map_err(|err| err.to_string())?;
        download(ctx, STEP_MACOS_TOOLS, &artifact, &bin).await?;
    }
    Ok(StepResult::Done)
}

async fn download_runner(ctx: &Ctx<'_>) -> Result<StepResult, StepError> {
    let plan = ctx.plan;
    let Some(runner) = &plan.runner else {
        return Ok(StepResult::Skipped("no runner requested".into()));
    };
    let artifact = plan
        .installers
        .resolve(runner.kind.into(), plan.os, plan.arch)
        .map_err(|err| err.to_string())?;
    download(ctx, STEP_DOWNLOAD_RUNNER, &artifact, &plan.runner_dir()).await?;
    ctx.db
        .set_runner(
            ctx.exec,
            &RunnerRow {
                kind: kind_name(runner.kind).into(),
                version: Some(artifact.version.clone()),
                name: runner.name.clone(),
                url: None,
                labels: plan.labels.clone(),
                status: "downloaded".into(),
            },
        )
        .await
        .map_err(|err| err.to_string())?;
    Ok(StepResult::Done)
}

fn kind_name(kind: RunnerKind) -> &'static str {
    Software::from(kind).as_str()
}

/// Exit code 0 with "configured" when the runner in `$1` is already configured.
const CONFIGURED_SCRIPT: &str = r#"cd -- "$1" || exit 1
case $2 in
  github-actions) [ -f .runner ] || [ -s .jitconfig ] ;;
  gitlab-runner) [ -f config.toml ] && grep -q '^\[\[runners\]\]' config.toml ;;
  forgejo-runner) [ -f .runner ] || [ -s .runner-token ] ;;
  *) false ;;
esac && echo configured"#;

/// Configures the runner in `$1` for URL `$2`, name `$3`, labels `$4`; the token is on stdin.
const GITHUB_CONFIG_SCRIPT: &str = r#"set -eu
cd -- "$1"
token=$(cat)
[ -n "$token" ] || { echo "the registration token is empty" >&2; exit 2; }
# The runner reads its inputs from ACTIONS_RUNNER_INPUT_<NAME>, so the token is in no argv.
ACTIONS_RUNNER_INPUT_TOKEN=$token
export ACTIONS_RUNNER_INPUT_TOKEN
./config.sh --unattended --replace --url "$2" --name "$3" --labels "$4" --work _work"#;

const GITHUB_JIT_SCRIPT: &str = r#"set -eu
cd -- "$1"
umask 077
cat > .jitconfig.tmp
[ -s .jitconfig.tmp ] || { rm -f .jitconfig.tmp; echo "the JIT config is empty" >&2; exit 2; }
mv -f .jitconfig.tmp .jitconfig"#;

const GITLAB_CONFIG_SCRIPT: &str = r#"set -eu
cd -- "$1"
token=$(cat)
[ -n "$token" ] || { echo "the runner token is empty" >&2; exit 2; }
CI_SERVER_TOKEN=$token
export CI_SERVER_TOKEN
./gitlab-runner register --non-interactive --config "$1/config.toml" --url "$2" --name "$3" --executor shell"#;

const FORGEJO_CONFIG_SCRIPT: &str = r#"set -eu
cd -- "$1"
token=$(cat)
[ -n "$token" ] || { echo "the registration token is empty" >&2; exit 2; }
./forgejo-runner register --no-interactive --instance "$2" --token "$token" --name "$3" --labels "$4""#;

/// Keeps a Forgejo runner the forge created in `$1`: URL `$2`, uuid `$3`, the labels to declare
/// after them; the token is on stdin and goes to a 0600 file (written last: its presence means
/// configured), which `forgejo-runner one-job --token-url file:…` reads, so it is in no argv.
const FORGEJO_IDENTITY_SCRIPT: &str = r#"set -eu
cd -- "$1"
umask 077
cat > .runner-token.tmp
[ -s .runner-token.tmp ] || { rm -f .runner-token.tmp; echo "the runner token is empty" >&2; exit 2; }
printf '%s\n' "$2" > .runner-url
printf '%s\n' "$3" > .runner-uuid
shift 3
: > .runner-labels.tmp
for label in "$@"; do printf '%s\n' "$label" >> .runner-labels.tmp; done
mv -f .runner-labels.tmp .runner-labels
mv -f .runner-token.tmp .runner-token"#;

async fn register_runner(ctx: &Ctx<'_>) -> Result<StepResult, StepError> {
    let plan = ctx.plan;
    let Some(runner) = &plan.runner else {
        return Ok(StepResult::Skipped("no runner requested".into()));
    };
    let dir = plan.runner_dir();
    let kind = match runner.kind {
        RunnerKind::GithubActions => "github-actions",
        RunnerKind::GitlabRunner => "gitlab-runner",
        RunnerKind::ForgejoRunner => "forgejo-runner",
    };
    // A crash after the runner was configured must not register it twice.
    let configured = ctx
        .exec
        .run(
            &Command::new(CONFIGURED_SCRIPT)
                .arg(&dir)
                .arg(kind)
                .label(STEP_REGISTER_RUNNER),
        )
        .await
        .map_err(|err| err.to_string())?;
    if configured.success() {
        return Ok(StepResult::Done);
    }

    let request = RegistrationRequest {
        tenant_id: plan.tenant_id,
        machine_id: plan.machine_id,
        runner_name: runner.name.clone(),
        labels: plan.labels.clone(),
        os: plan.os,
        arch: plan.arch,
        kind: runner.kind,
    };
    let started = Instant::now();
    let forge_event = |name| {
        Event::new(name)
            .meta("runner_kind", kind)
            .meta("runner_name", runner.name.clone())
    };
    ctx.events
        .emit(forge_event(event::FORGE_REGISTER_RUNNER_START));
    let result = async {
        let info = runner
            .registration
            .registration(&request)
            .await
            .map_err(|err| StepError {
                retryable: matches!(err, RegistrationError::Retryable(_)),
                message: format!("the forge refused a runner registration: {err}"),
            })?;
        let labels = plan.labels.join(",");
        // The machine's labels, then those the forge asks for (Forgejo declares its own).
        let mut declared = plan.labels.clone();
        for label in &info.labels {
            if !declared.contains(label) {
                declared.push(label.clone());
            }
        }
        let command = match (&runner.kind, &info.credential) {
            (RunnerKind::GithubActions, RunnerCredential::Token(token)) => Command::new(GITHUB_CONFIG_SCRIPT)
                .arg(&dir)
                .arg(&info.url)
                .arg(&runner.name)
                .arg(&labels)
                .stdin(token.expose()),
            (RunnerKind::GithubActions, RunnerCredential::JitConfig(config)) => {
                Command::new(GITHUB_JIT_SCRIPT).arg(&dir).stdin(config.expose())
            }
            (RunnerKind::GitlabRunner, RunnerCredential::Token(token)) => Command::new(GITLAB_CONFIG_SCRIPT)
                .arg(&dir)
                .arg(&info.url)
                .arg(&runner.name)
                .stdin(token.expose()),
            (RunnerKind::ForgejoRunner, RunnerCredential::Token(token)) => Command::new(FORGEJO_CONFIG_SCRIPT)
                .arg(&dir)
                .arg(&info.url)
                .arg(&runner.name)
                .arg(declared.join(","))
                .stdin(token.expose()),
            (RunnerKind::ForgejoRunner, RunnerCredential::RunnerIdentity { uuid, token }) => {
                declared.iter().fold(
                    Command::new(FORGEJO_IDENTITY_SCRIPT)
                        .arg(&dir)
                        .arg(&info.url)
                        .arg(uuid),
                    |command, label| command.arg(label),
                )
                .stdin(token.expose())
            }
            (other, RunnerCredential::RunnerIdentity { .. }) => {
                return Err(StepError::from(format!(
                    "a Forgejo runner identity was returned, but only the Forgejo runner takes one, not {}",
                    kind_name(*other)
                )));
            }
            (other, RunnerCredential::JitConfig(_)) => {
                return Err(StepError::from(format!(
                    "a JIT config was returned, but only the GitHub Actions runner takes one, not {}",
                    kind_name(*other)
                )));
            }
        };
        check(ctx, STEP_REGISTER_RUNNER, command.timeout(plan.step_timeout)).await?;
        Ok(info.url)
    }
    .await;
    match result {
        Ok(url) => {
            ctx.events.emit(
                forge_event(event::FORGE_REGISTER_RUNNER_SUCCESS).duration(started.elapsed()),
            );
            ctx.db
                .set_runner(
                    ctx.exec,
                    &RunnerRow {
                        kind: kind_name(runner.kind).into(),
                        version: None,
                        name: runner.name.clone(),
                        url: Some(url),
                        labels: plan.labels.clone(),
                        status: "registered".into(),
                    },
                )
                .await
                .map_err(|err| err.to_string())?;
            Ok(StepResult::Done)
        }
        Err(err) => {
            ctx.events.emit(
                forge_event(event::FORGE_REGISTER_RUNNER_FAILURE)
                    .duration(started.elapsed())
                    .error(&err.message),
            );
            Err(err)
        }
    }
}

/// Starts the runner in `$1` (kind `$2`) detached from the session, with its log and pid file
/// in `$3`. Idempotent: a live runner is left alone.
const START_SCRIPT: &str = r#"set -eu
dir=$1 kind=$2 work=$3
alive() { kill -0 "$1" 2>/dev/null && ! ps -o stat= -p "$1" 2>/dev/null | grep -q '^Z'; }
cd -- "$dir"
if [ -f "$work/runner.pid" ] && alive "$(cat "$work/runner.pid")"; then
  echo "runner already running"; exit 0
fi
case $kind in
  github-actions)
    if [ -s .jitconfig ]; then
      set -- /bin/sh -c 'ACTIONS_RUNNER_INPUT_JITCONFIG=$(cat .jitconfig); export ACTIONS_RUNNER_INPUT_JITCONFIG; exec ./run.sh'
    else
      set -- ./run.sh
    fi ;;
  gitlab-runner) set -- ./gitlab-runner run --config "$dir/config.toml" --working-directory "$dir/builds" ;;
  forgejo-runner)
    if [ -s .runner-token ]; then
      # A runner the forge created: one job, then it exits (the server removes it).
      set -- /bin/sh -c 'set -- ./forgejo-runner one-job --url "$(cat .runner-url)" --uuid "$(cat .runner-uuid)" --token-url "file:$PWD/.runner-token" --wait
while IFS= read -r label; do set -- "$@" --label "$label"; done < .runner-labels
exec "$@"'
    else
      set -- ./forgejo-runner daemon
    fi ;;
  *) echo "unknown runner kind $kind" >&2; exit 2 ;;
esac
if command -v setsid >/dev/null 2>&1; then
  setsid nohup "$@" >"$work/runner.log" 2>&1 </dev/null &
else
  nohup "$@" >"$work/runner.log" 2>&1 </dev/null &
fi
echo $! >"$work/runner.pid"
echo "runner started as process $!""#;

async fn start_runner(ctx: &Ctx<'_>) -> Result<StepResult, StepError> {
    let plan = ctx.plan;
    let Some(runner) = &plan.runner else {
        return Ok(StepResult::Skipped("no runner requested".into()));
    };
    let kind = match runner.kind {
        RunnerKind::GithubActions => "github-actions",
        RunnerKind::GitlabRunner => "gitlab-runner",
        RunnerKind::ForgejoRunner => "forgejo-runner",
    };
    check(
        ctx,
        STEP_START_RUNNER,
        Command::new(START_SCRIPT)
            .arg(plan.runner_dir())
            .arg(kind)
            .arg(&plan.paths.work_dir)
            .timeout(Duration::from_secs(60)),
    )
    .await?;
    ctx.db
        .set_runner(
            ctx.exec,
            &RunnerRow {
                kind: kind_name(runner.kind).into(),
                version: None,
                name: runner.name.clone(),
                url: None,
                labels: plan.labels.clone(),
                status: "running".into(),
            },
        )
        .await
        .map_err(|err| err.to_string())?;
    Ok(StepResult::Done)
}

/// The runner process must be alive now and two seconds later. (A zombie is dead: in containers
/// nobody may reap a detached runner that exited.)
const HEALTH_SCRIPT: &str = r#"work=$1
alive() { kill -0 "$1" 2>/dev/null && ! ps -o stat= -p "$1" 2>/dev/null | grep -q '^Z'; }
pid=$(cat "$work/runner.pid" 2>/dev/null) || { echo "the runner was never started (no $work/runner.pid)" >&2; exit 1; }
for attempt in 1 2; do
  if ! alive "$pid"; then
    echo "the runner (process $pid) is not running; last lines of its log:" >&2
    tail -n 20 "$work/runner.log" >&2 2>/dev/null
    exit 1
  fi
  [ "$attempt" = 2 ] || sleep 2
done
echo "runner process $pid is alive""#;

async fn health_check(ctx: &Ctx<'_>) -> Result<StepResult, StepError> {
    if ctx.plan.runner.is_none() {
        return Ok(StepResult::Skipped("no runner requested".into()));
    }
    check(
        ctx,
        STEP_HEALTH_CHECK,
        Command::new(HEALTH_SCRIPT)
            .arg(&ctx.plan.paths.work_dir)
            .timeout(Duration::from_secs(60)),
    )
    .await?;
    Ok(StepResult::Done)
}

async fn setup_script(ctx: &Ctx<'_>) -> Result<StepResult, StepError> {
    let plan = ctx.plan;
    let Some(script) = &plan.setup_script else {
        return Ok(StepResult::Skipped("the spec has no setup script".into()));
    };
    let path = format!("{}/setup_script.sh", plan.paths.work_dir);
    check(
        ctx,
        STEP_SETUP_SCRIPT,
        Command::new(r#"mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod 700 "$1""#)
            .arg(&path)
            .stdin(script.as_bytes()),
    )
    .await?;
    check(
        ctx,
        STEP_SETUP_SCRIPT,
        Command::new(r#"cd -- "$1" && exec /bin/sh "$2""#)
            .arg(&plan.paths.work_dir)
            .arg(&path)
            .env("NIMBUS_MACHINE_ID", plan.machine_id.to_string())
            .env("NIMBUS_WORK_DIR", &plan.paths.work_dir)
            .timeout(plan.step_timeout),
    )
    .await?;
    Ok(StepResult::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_cut_on_char_boundaries() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aéé", 3), "é");
    }

    #[test]
    fn default_paths() {
        let paths = MachinePaths::default();
        assert_eq!(paths.state_db, "/var/lib/nimbus/state.db");
        assert_eq!(MachinePaths::under("/x/").work_dir, "/x/work");
        let mut metadata = nimbus_types::ProviderMetadata::default();
        assert_eq!(MachinePaths::from_metadata(&metadata), None);
        metadata
            .extra
            .insert("state_db".into(), "/s/state.db".into());
        metadata.extra.insert("work_dir".into(), "/s/work".into());
        assert_eq!(
            MachinePaths::from_metadata(&metadata).unwrap().work_dir,
            "/s/work"
        );
    }
}
