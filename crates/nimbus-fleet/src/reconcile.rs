//! The reconcile loop: per provider, compare the store's intent with the provider's listing and
//! converge. Controller pattern (kube-rs): `reconcile(provider) -> Result<Action>`, one
//! `error_policy` for failures, always requeued. The reconciler is not told why it runs, so it
//! checks everything every time, and every action is idempotent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nimbus_provider::{Provider, ProviderMachine, ProviderStatus};
use nimbus_store::MachineFilter;
use nimbus_types::event::{self, Event};
use nimbus_types::{
    Image, ImageState, ImageType, Machine, MachineId, MachineState, ProviderConfig, ProviderId,
};
use time::OffsetDateTime;
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
    /// Extra resources of a live machine (a create that took effect twice) that were removed.
    pub duplicates_removed: usize,
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
    /// removes resources of failed and terminated machines, orphans past their grace period, and
    /// second resources of live machines past the same grace period.
    pub async fn reconcile(&self, provider: &ProviderConfig) -> Result<(Report, Action)> {
        let mut report = Report::default();
        let implementation = self.inner.providers.get(provider)?;
        let listed = implementation.list_machines(provider.tenant_id).await?;
        let filter = MachineFilter {
            tenant_id: Some(provider.tenant_id),
            provider_id: Some(provider.id),
            ..Default::default()
        };
        let records = self.inner.store.list_machines(&filter).await?;
        // A machine id may be listed more than once: a create that took effect twice (an
        // endpoint that ignored the idempotency token, a crash mid-create).
        let mut at_provider: HashMap<MachineId, Vec<ProviderMachine>> = HashMap::new();
        let mut untagged = Vec::new();
        for machine in listed {
            match machine.machine_id {
                Some(id) => at_provider.entry(id).or_default().push(machine),
                None => untagged.push(machine),
            }
        }
        let now = nimbus_types::now();

        for record in records {
            let mut machine = record.machine;
            let (seen, duplicates) = match at_provider.remove(&machine.id) {
                Some(resources) => {
                    let (kept, duplicates) = keep_one(&machine, resources);
                    (Some(kept), duplicates)
                }
                None => (None, Vec::new()),
            };
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
            // Only a settled machine: a provision being resumed adopts one of them itself, and
            // failing or stopping machines lose all of them through `terminate`.
            if matches!(machine.state, MachineState::Ready | MachineState::Running) {
                report.duplicates_removed += self
                    .remove_duplicates(&*implementation, &machine, &duplicates, now)
                    .await;
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
        // or a resource no intent knows about. `terminate` removes every resource of the id.
        for (id, resources) in at_provider {
            if self.is_busy(id) {
                continue;
            }
            let Some(seen) = resources.into_iter().min_by_key(|seen| seen.created_at) else {
                continue;
            };
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

    /// Removes the live machine's extra resources that are past the orphan grace period (a
    /// younger one may still be settling at the provider) and returns how many went. A failure
    /// is logged and left to the next pass rather than failing the pass: the machine itself is
    /// fine, and its siblings' reconciles should not wait on a leak.
    async fn remove_duplicates(
        &self,
        implementation: &dyn Provider,
        machine: &Machine,
        duplicates: &[ProviderMachine],
        now: OffsetDateTime,
    ) -> usize {
        let mut removed = 0;
        for duplicate in duplicates {
            let age = (now - duplicate.created_at).unsigned_abs();
            if age < self.inner.config.orphan_grace {
                continue;
            }
            let instance_id = duplicate.metadata.instance_id.as_deref();
            match implementation.remove_duplicate(duplicate).await {
                Ok(()) => {
                    tracing::warn!(machine.id = %machine.id, instance.id = instance_id, "removed a second resource of a live machine");
                    let mut event = Event::new(event::MACHINE_RECONCILED)
                        .tenant(machine.tenant_id)
                        .machine(machine.id)
                        .meta("action", "remove_duplicate")
                        .meta(
                            "message",
                            "removed a second resource the provider holds for a live machine",
                        );
                    if let Some(instance_id) = instance_id {
                        event = event.meta("instance_id", instance_id);
                    }
                    self.emit(event);
                    removed += 1;
                }
                Err(err) => {
                    tracing::warn!(machine.id = %machine.id, instance.id = instance_id, error = %err, "cannot remove a second resource of a live machine");
                }
            }
        }
        removed
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

/// Splits a machine's resources into the one that is the machine and its duplicates: the one
/// its record names (`provider_metadata.instance_id`), else the oldest.
fn keep_one(
    machine: &Machine,
    mut resources: Vec<ProviderMachine>,
) -> (ProviderMachine, Vec<ProviderMachine>) {
    let recorded = machine.provider_metadata.instance_id.as_deref();
    let kept_idx = recorded
        .and_then(|recorded| {
            resources
                .iter()
                .position(|seen| seen.metadata.instance_id.as_deref() == Some(recorded))
        })
        .or_else(|| {
            resources
                .iter()
                .enumerate()
                .min_by_key(|(_, seen)| seen.created_at)
                .map(|(idx, _)| idx)
        })
        .expect("a listed machine id has at least one resource");
    let kept = resources.swap_remove(kept_idx);
    (kept, resources)
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
        pool_id: None,
        usage: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use nimbus_types::{ProviderMetadata, ProviderType, TenantId};

    use super::*;

    fn resource(id: MachineId, instance_id: &str, age_secs: i64) -> ProviderMachine {
        ProviderMachine {
            machine_id: Some(id),
            tenant_id: None,
            status: ProviderStatus::Running,
            ip_address: None,
            ssh_public_key: None,
            created_at: nimbus_types::now() - time::Duration::seconds(age_secs),
            metadata: ProviderMetadata {
                instance_id: Some(instance_id.to_owned()),
                ..ProviderMetadata::default()
            },
        }
    }

    fn instance_ids(resources: &[ProviderMachine]) -> Vec<&str> {
        resources
            .iter()
            .filter_map(|r| r.metadata.instance_id.as_deref())
            .collect()
    }

    #[test]
    fn keep_one_prefers_the_recorded_instance_then_the_oldest() {
        let provider = ProviderConfig {
            id: ProviderId::new(),
            tenant_id: TenantId::new(),
            name: "p".into(),
            provider_type: ProviderType::Aws,
            credentials: None,
            config: serde_json::json!({}),
            created_at: nimbus_types::now(),
        };
        let id = MachineId::new();
        let listed = vec![
            resource(id, "i-new", 10),
            resource(id, "i-old", 100),
            resource(id, "i-mid", 50),
        ];
        let mut machine = stand_in(&provider, id, &listed[0]);

        // The record names the newest: it stays even though the others are older.
        machine.provider_metadata.instance_id = Some("i-new".into());
        let (kept, duplicates) = keep_one(&machine, listed.clone());
        assert_eq!(kept.metadata.instance_id.as_deref(), Some("i-new"));
        let mut removed = instance_ids(&duplicates);
        removed.sort_unstable();
        assert_eq!(removed, ["i-mid", "i-old"]);

        // No record of an instance (or one no longer listed): the oldest is the machine.
        for recorded in [None, Some("i-gone".to_owned())] {
            machine.provider_metadata.instance_id = recorded;
            let (kept, duplicates) = keep_one(&machine, listed.clone());
            assert_eq!(kept.metadata.instance_id.as_deref(), Some("i-old"));
            assert_eq!(duplicates.len(), 2);
        }

        // One resource: no duplicates.
        let (kept, duplicates) = keep_one(&machine, vec![listed[0].clone()]);
        assert_eq!(kept, listed[0]);
        assert!(duplicates.is_empty());
    }
}
