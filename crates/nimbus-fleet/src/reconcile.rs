//! The reconcile loop: per provider, compare the store's intent with the provider's listing and
//! converge. Controller pattern (kube-rs): `reconcile(provider) -> Result<Action>`, one
//! `error_policy` for failures, always requeued. The reconciler is not told why it runs, so it
//! checks everything every time, and every action is idempotent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nimbus_provider::{ProviderMachine, ProviderStatus};
use nimbus_store::MachineFilter;
use nimbus_types::event::{self, Event};
use nimbus_types::{
    Image, ImageState, ImageType, Machine, MachineId, MachineState, ProviderConfig, ProviderId,
};
use tracing::Instrument;

use crate::{Error, Fleet, Result};

/// What to do after a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Requeue(Duration),
}

/// What one pass did, for tests and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub resumed: usize,
    pub failed: usize,
    pub cleaned: usize,
    pub orphans_removed: usize,
}

impl Fleet {
    /// Runs the reconcile loop until shutdown: every provider at start, then each on its own
    /// schedule.
    pub fn start_reconciler(&self) {
        let fleet = self.clone();
        tokio::spawn(async move { fleet.reconcile_loop().await });
    }

    async fn reconcile_loop(&self) {
        let mut due: HashMap<ProviderId, (Instant, u32)> = HashMap::new();
        let tick = self
            .inner
            .config
            .reconcile_interval
            .min(Duration::from_secs(5));
        let mut runners_due = Instant::now();
        loop {
            if Instant::now() >= runners_due {
                self.reconcile_all_runners().await;
                runners_due = Instant::now() + self.inner.config.reconcile_interval;
            }
            match self.inner.store.list_all_providers().await {
                Ok(providers) => {
                    let now = Instant::now();
                    for provider in providers {
                        let (next, failures) = due.get(&provider.id).copied().unwrap_or((now, 0));
                        if next > now {
                            continue;
                        }
                        let span = tracing::info_span!("reconcile", provider.id = %provider.id, tenant.id = %provider.tenant_id);
                        let (action, failures) =
                            match self.reconcile(&provider).instrument(span).await {
                                Ok((_, action)) => (action, 0),
                                Err(err) => {
                                    let failures = failures + 1;
                                    (self.error_policy(&provider, &err, failures), failures)
                                }
                            };
                        let Action::Requeue(after) = action;
                        due.insert(provider.id, (Instant::now() + after, failures));
                    }
                }
                Err(err) => tracing::warn!(error = %err, "reconciler cannot list providers"),
            }
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                () = self.inner.shutdown.cancelled() => return,
            }
        }
    }

    /// Invariant 3 for every tenant with a forge: no Nimbus runner without a live machine.
    async fn reconcile_all_runners(&self) {
        let tenants = match self.inner.store.list_tenants().await {
            Ok(tenants) => tenants,
            Err(err) => {
                tracing::warn!(error = %err, "reconciler cannot list tenants");
                return;
            }
        };
        for tenant in tenants {
            match self.reconcile_runners(tenant.id).await {
                Ok(report) if !report.removed.is_empty() || !report.failed.is_empty() => {
                    tracing::info!(tenant.id = %tenant.id, removed = report.removed.len(), busy = report.busy.len(), failed = report.failed.len(), "removed runners without a machine");
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(tenant.id = %tenant.id, error = %err, "runner reconcile failed")
                }
            }
        }
    }

    /// Backoff for a provider whose reconcile failed: doubling from one second, capped at the
    /// regular interval.
    pub fn error_policy(&self, provider: &ProviderConfig, err: &Error, failures: u32) -> Action {
        let backoff = Duration::from_secs(1u64 << failures.min(10).saturating_sub(1));
        let after = backoff.min(self.inner.config.reconcile_interval);
        tracing::warn!(provider.id = %provider.id, error = %err, retry_in = ?after, "reconcile failed");
        Action::Requeue(after)
    }

    /// One pass over one provider: resumes interrupted work, fails machines that vanished,
    /// removes resources of failed and terminated machines and orphans past their grace period.
    pub async fn reconcile(&self, provider: &ProviderConfig) -> Result<(Report, Action)> {
        let mut report = Report::default();
        let implementation = self.inner.providers.get(provider)?;
        let listed = implementation.list_machines(provider.tenant_id).await?;
        let filter = MachineFilter {
            tenant_id: Some(provider.tenant_id),
            provider_id: Some(provider.id),
            include_terminated: false,
        };
        let records = self.inner.store.list_machines(&filter).await?;
        let mut at_provider: HashMap<MachineId, ProviderMachine> = HashMap::new();
        let mut untagged = Vec::new();
        for machine in listed {
            match machine.machine_id {
                Some(id) => {
                    at_provider.insert(id, machine);
                }
                None => untagged.push(machine),
            }
        }

        for record in records {
            let mut machine = record.machine;
            let seen = at_provider.remove(&machine.id);
            if seen.is_some() {
                self.inner
                    .missing
                    .lock()
                    .expect("missing lock")
                    .remove(&machine.id);
            }
            if self.is_busy(machine.id) {
                continue;
            }
            match (machine.state, &seen) {
                (MachineState::Provisioning | MachineState::ImageInstalling, _) => {
                    // Intent without a finished operation: the daemon stopped mid-way. The
                    // provider call is idempotent per machine id, so finishing is safe.
                    self.note(
                        &machine,
                        "resume_provision",
                        "provisioning was interrupted; resuming",
                    );
                    self.spawn_provision(machine.id);
                    report.resumed += 1;
                }
                (MachineState::Stopping, _) => {
                    self.note(
                        &machine,
                        "resume_terminate",
                        "termination was interrupted; resuming",
                    );
                    self.spawn_terminate(machine.id);
                    report.resumed += 1;
                }
                (MachineState::Ready | MachineState::Running, None)
                    if self.missing_again(machine.id) =>
                {
                    self.fail_vanished(&mut machine, "the machine disappeared at the provider")
                        .await?;
                    report.failed += 1;
                }
                (MachineState::Ready | MachineState::Running, Some(seen))
                    if seen.status == ProviderStatus::Stopped =>
                {
                    self.fail_vanished(&mut machine, "the machine stopped at the provider")
                        .await?;
                    implementation.terminate(&machine).await?;
                    report.failed += 1;
                }
                (MachineState::Failed, Some(_)) => {
                    implementation.terminate(&machine).await?;
                    self.note(
                        &machine,
                        "cleanup_failed",
                        "removed the resources of a failed machine",
                    );
                    report.cleaned += 1;
                }
                _ => {}
            }
        }

        // What is left at the provider has no live intent: a terminated machine that leaked,
        // or a resource no intent knows about.
        let now = nimbus_types::now();
        for (id, seen) in at_provider {
            if self.is_busy(id) {
                continue;
            }
            let known = match self.inner.store.get_machine(None, id).await {
                Ok(record) => Some(record.machine),
                Err(nimbus_store::Error::NotFound { .. }) => None,
                Err(err) => return Err(err.into()),
            };
            let age = (now - seen.created_at).unsigned_abs();
            if known.is_none() && age < self.inner.config.orphan_grace {
                continue;
            }
            let machine = known.unwrap_or_else(|| stand_in(provider, id, &seen));
            implementation.terminate(&machine).await?;
            self.note(
                &machine,
                "terminate_orphan",
                "removed a resource no live intent knows about",
            );
            report.orphans_removed += 1;
        }
        if !untagged.is_empty() {
            tracing::warn!(
                count = untagged.len(),
                "provider lists resources without a nimbus:machine tag; leaving them alone"
            );
        }
        Ok((
            report,
            Action::Requeue(self.inner.config.reconcile_interval),
        ))
    }

    /// Counts a pass in which a live machine was missing from its provider's listing; true from
    /// the second one in a row, so one stale listing never fails a machine.
    fn missing_again(&self, id: MachineId) -> bool {
        let mut missing = self.inner.missing.lock().expect("missing lock");
        let count = missing.entry(id).or_insert(0);
        *count += 1;
        if *count >= 2 {
            missing.remove(&id);
            true
        } else {
            false
        }
    }

    async fn fail_vanished(&self, machine: &mut Machine, reason: &str) -> Result<()> {
        machine.error = Some(reason.to_owned());
        match self
            .move_to(machine, MachineState::Failed, Some(reason))
            .await
        {
            // Someone else moved it meanwhile; the next pass looks again.
            Err(Error::Store(nimbus_store::Error::StaleState { .. })) => return Ok(()),
            other => other?,
        }
        self.note(machine, "failed", reason);
        Ok(())
    }

    fn note(&self, machine: &Machine, action: &str, message: &str) {
        self.emit(
            Event::new(event::MACHINE_RECONCILED)
                .tenant(machine.tenant_id)
                .machine(machine.id)
                .meta("action", action)
                .meta("message", message),
        );
    }
}

/// A machine value for a resource the store does not know, so the provider can remove it.
fn stand_in(provider: &ProviderConfig, id: MachineId, seen: &ProviderMachine) -> Machine {
    let os = nimbus_types::Os::host().unwrap_or(nimbus_types::Os::Linux);
    let arch = nimbus_types::Arch::host().unwrap_or(nimbus_types::Arch::X86_64);
    Machine {
        id,
        tenant_id: provider.tenant_id,
        provider_id: provider.id,
        os,
        arch,
        state: MachineState::Stopping,
        ip_address: seen.ip_address.clone(),
        ssh_public_key: None,
        labels: Vec::new(),
        instance_type: None,
        image: Image {
            id: None,
            image_type: ImageType::None,
            state: ImageState::Pending,
            installed_at: None,
        },
        created_at: seen.created_at,
        updated_at: seen.created_at,
        provider_metadata: seen.metadata.clone(),
        error: None,
        setup_progress: None,
    }
}
