//! Registering runners and taking them away safely, with telemetry events.
//!
//! Invariant 2 of the design lives here: a runner that is running a job is never removed so its
//! machine can be terminated. [`deregister_then_check`] reads the runner, removes it only when it
//! is not busy, then reads it again: if the forge still shows it busy (it took a job between the
//! check and the removal), the answer is [`Outcome::Busy`] and the caller must keep the machine
//! and try again later.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use nimbus_types::event::{self, Event};
use nimbus_types::{MachineId, TenantId};

use crate::{
    Error, Forge, JitConfig, JitRequest, RegistrationToken, Result, Runner, RunnerId, RunnerStatus,
    unique_label,
};

/// Where forge events go (the daemon's event bus).
pub use nimbus_types::event::EventSink;

/// Keeps events in memory; for tests and for callers that forward them later.
#[derive(Default)]
pub struct MemorySink(Mutex<Vec<Event>>);

impl MemorySink {
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn names(&self) -> Vec<String> {
        self.events().into_iter().map(|e| e.name).collect()
    }
}

impl EventSink for MemorySink {
    fn emit(&self, event: Event) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }
}

/// Which tenant and machine an operation is for; stamped on every event.
#[derive(Clone, Copy, Debug)]
pub struct Subject {
    pub tenant_id: TenantId,
    pub machine_id: Option<MachineId>,
}

impl Subject {
    fn event(&self, name: &str) -> Event {
        let event = Event::new(name).tenant(self.tenant_id);
        match self.machine_id {
            Some(machine_id) => event.machine(machine_id),
            None => event,
        }
    }
}

/// The result of [`deregister_then_check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The registration is removed and the runner was not busy: the machine may be terminated.
    Removed,
    /// The forge did not know the runner (removed earlier): the machine may be terminated.
    AlreadyGone,
    /// The runner is running a job: do not terminate; requeue and try again later.
    Busy,
}

/// Removes the runner's registration unless it is busy, then re-checks. Emits
/// `nimbus.forge.unregister_runner_start` and `_success` (with `outcome`) or `_failure` (with the
/// error, or `runner is busy`).
pub async fn deregister_then_check(
    forge: &dyn Forge,
    runner_id: RunnerId,
    subject: Subject,
    events: &dyn EventSink,
) -> Result<Outcome> {
    let started = Instant::now();
    events.emit(
        subject
            .event(event::FORGE_UNREGISTER_RUNNER_START)
            .meta("runner_id", runner_id.0),
    );
    let result = deregister(forge, runner_id).await;
    let done = |name: &str| {
        subject
            .event(name)
            .duration(started.elapsed())
            .meta("runner_id", runner_id.0)
    };
    match &result {
        Ok(Outcome::Busy) => events.emit(
            done(event::FORGE_UNREGISTER_RUNNER_FAILURE)
                .error("runner is busy")
                .meta("outcome", "busy"),
        ),
        Ok(outcome) => events.emit(done(event::FORGE_UNREGISTER_RUNNER_SUCCESS).meta(
            "outcome",
            match outcome {
                Outcome::Removed => "removed",
                _ => "already_gone",
            },
        )),
        Err(error) => events.emit(done(event::FORGE_UNREGISTER_RUNNER_FAILURE).error(error)),
    }
    result
}

async fn deregister(forge: &dyn Forge, runner_id: RunnerId) -> Result<Outcome> {
    match forge.runner_status(runner_id).await {
        Err(Error::NotFound(_)) => return Ok(Outcome::AlreadyGone),
        Err(error) => return Err(error),
        Ok(RunnerStatus::Busy) => {
            tracing::info!(runner.id = %runner_id, "runner is busy; not removing it");
            return Ok(Outcome::Busy);
        }
        Ok(RunnerStatus::Idle | RunnerStatus::Offline) => {}
    }
    let removal = forge.remove_runner(runner_id).await;
    // Whatever the removal said, the runner may have taken a job in between: read it again.
    let status_after = forge.runner_status(runner_id).await;
    match (removal, status_after) {
        (_, Ok(RunnerStatus::Busy)) => {
            tracing::warn!(
                runner.id = %runner_id,
                "runner took a job while being removed; keeping its machine"
            );
            Ok(Outcome::Busy)
        }
        (Ok(()) | Err(Error::NotFound(_)), Err(Error::NotFound(_))) => Ok(Outcome::Removed),
        // Removal acknowledged and the runner is not busy: the listing lags behind the removal.
        (Ok(()) | Err(Error::NotFound(_)), Ok(_)) => Ok(Outcome::Removed),
        (Err(error), _) => Err(error),
        (Ok(()), Err(error)) => Err(error),
    }
}

/// Creates a JIT runner, emitting `nimbus.forge.register_runner_start/_success/_failure`.
pub async fn register_jit_runner(
    forge: &dyn Forge,
    request: &JitRequest,
    subject: Subject,
    events: &dyn EventSink,
) -> Result<JitConfig> {
    let started = Instant::now();
    events.emit(
        subject
            .event(event::FORGE_REGISTER_RUNNER_START)
            .meta("mode", "jit")
            .meta("runner_name", request.name.clone()),
    );
    let result = forge.jit_config(request).await;
    let done = |name: &str| {
        subject
            .event(name)
            .duration(started.elapsed())
            .meta("mode", "jit")
            .meta("runner_name", request.name.clone())
    };
    match &result {
        Ok(config) => events
            .emit(done(event::FORGE_REGISTER_RUNNER_SUCCESS).meta("runner_id", config.runner.id.0)),
        Err(error) => events.emit(done(event::FORGE_REGISTER_RUNNER_FAILURE).error(error)),
    }
    result
}

/// Gets a registration token for the classic `config.sh --token` flow, emitting
/// `nimbus.forge.register_runner_start/_success/_failure` (mode `token`).
pub async fn registration_token(
    forge: &dyn Forge,
    subject: Subject,
    events: &dyn EventSink,
) -> Result<RegistrationToken> {
    let started = Instant::now();
    events.emit(
        subject
            .event(event::FORGE_REGISTER_RUNNER_START)
            .meta("mode", "token"),
    );
    let result = forge.registration_token().await;
    let done = |name: &str| {
        subject
            .event(name)
            .duration(started.elapsed())
            .meta("mode", "token")
    };
    match &result {
        Ok(_) => events.emit(done(event::FORGE_REGISTER_RUNNER_SUCCESS)),
        Err(error) => events.emit(done(event::FORGE_REGISTER_RUNNER_FAILURE).error(error)),
    }
    result
}

/// Runners Nimbus registered (they carry [`unique_label`] of their own name) whose name is not
/// among `live_names`: the names of every machine of the tenant that is not terminated,
/// provisioning ones included.
pub fn orphaned<'a>(runners: &'a [Runner], live_names: &HashSet<String>) -> Vec<&'a Runner> {
    runners
        .iter()
        .filter(|runner| {
            let own = unique_label(&runner.name);
            runner.labels.iter().any(|l| l.eq_ignore_ascii_case(&own))
                && !live_names.contains(&runner.name)
        })
        .collect()
}

/// What [`remove_orphans`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrphanReport {
    pub removed: Vec<RunnerId>,
    /// Orphans running a job: left alone until the job ends (invariant 2 outranks 3).
    pub busy: Vec<RunnerId>,
    pub failed: Vec<(RunnerId, String)>,
}

/// Invariant 3 for the fleet reconcile: removes every runner Nimbus registered that has no live
/// machine behind it, through [`deregister_then_check`] (so a busy one is kept). One failing
/// runner does not stop the others; a failing listing is returned as the error.
pub async fn remove_orphans(
    forge: &dyn Forge,
    live_names: &HashSet<String>,
    tenant_id: TenantId,
    events: &dyn EventSink,
) -> Result<OrphanReport> {
    let runners = forge.list_runners().await?;
    let mut report = OrphanReport::default();
    for runner in orphaned(&runners, live_names) {
        let subject = Subject {
            tenant_id,
            machine_id: None,
        };
        match deregister_then_check(forge, runner.id, subject, events).await {
            Ok(Outcome::Removed | Outcome::AlreadyGone) => report.removed.push(runner.id),
            Ok(Outcome::Busy) => report.busy.push(runner.id),
            Err(error) => report.failed.push((runner.id, error.to_string())),
        }
    }
    if report != OrphanReport::default() {
        tracing::info!(
            tenant.id = %tenant_id,
            removed = report.removed.len(),
            busy = report.busy.len(),
            failed = report.failed.len(),
            "runners without a machine handled"
        );
    }
    Ok(report)
}
