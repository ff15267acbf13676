//! Provision, set up, terminate: the operations behind the API, each recorded before it acts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_provider::{Provider, ProvisionRequest};
use nimbus_setup::events::Events;
use nimbus_setup::pipeline::{self, MachinePaths, Plan, RunnerPlan};
use nimbus_store::{MachineFilter, MachineRecord};
use nimbus_types::api::StateChange;
use nimbus_types::event::{self, Event};
use nimbus_types::{
    CanTerminate, Image, ImageState, Machine, MachineId, MachineSpec, MachineState, ProviderConfig,
    ProviderId, ProviderMetadata, ProviderType, Secret, SpecError, Tenant, TenantId, validate_name,
};

use crate::telemetry::EventSink;
use crate::{Error, Fleet, Result, runners};

/// Which tenant a caller may see: `None` for the admin, who sees all.
pub type Scope = Option<TenantId>;

/// How long reading a machine's setup progress may take before the store's view is shown.
const PROGRESS_READ_TIMEOUT: Duration = Duration::from_secs(3);
/// At most this many machines' progress is read for one listing.
const MAX_PROGRESS_READS: usize = 32;

impl Fleet {
    /// Records the intent to create a machine and starts provisioning it in the background.
    /// Returns at once with the machine in `provisioning`; watch it with [`Fleet::get_machine`]
    /// or the event stream.
    pub async fn provision_machine(
        &self,
        tenant: &Tenant,
        provider: &ProviderConfig,
        spec: MachineSpec,
    ) -> Result<Machine> {
        self.provision(tenant, provider, spec, None).await
    }

    /// Like [`Fleet::provision_machine`], for a machine a pool asked for: the machine carries
    /// the pool's id and the runner version it will be set up with.
    pub async fn provision_pool_machine(
        &self,
        tenant: &Tenant,
        provider: &ProviderConfig,
        pool: &nimbus_types::Pool,
    ) -> Result<Machine> {
        if pool.tenant_id != tenant.id || pool.provider_id != provider.id {
            return Err(Error::NotFound("pool"));
        }
        self.provision(tenant, provider, pool.settings.machine_spec(), Some(pool))
            .await
    }

    async fn provision(
        &self,
        tenant: &Tenant,
        provider: &ProviderConfig,
        spec: MachineSpec,
        pool: Option<&nimbus_types::Pool>,
    ) -> Result<Machine> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        spec.validate()?;
        if provider.tenant_id != tenant.id {
            return Err(Error::NotFound("provider"));
        }
        // Fails before any intent is written when the provider cannot be built at all.
        self.inner.providers.get(provider)?;

        let runner_version = match pool {
            Some(_) => self.runner_version(tenant.id, spec.os, spec.arch).await,
            None => None,
        };
        let now = nimbus_types::now();
        let machine = Machine {
            id: MachineId::new(),
            tenant_id: tenant.id,
            provider_id: provider.id,
            os: spec.os,
            arch: spec.arch,
            state: MachineState::Provisioning,
            ip_address: None,
            ssh_public_key: None,
            labels: spec.labels.clone(),
            instance_type: spec.instance_type.clone(),
            image: Image {
                id: spec.image_id.clone(),
                image_type: spec.image_type,
                state: ImageState::Pending,
                installed_at: None,
            },
            created_at: now,
            updated_at: now,
            provider_metadata: ProviderMetadata::default(),
            error: None,
            setup_progress: None,
            pool_id: pool.map(|pool| pool.id),
            usage: nimbus_types::RunnerUsage {
                runner_version,
                ..Default::default()
            },
        };
        self.inner.store.insert_machine(&machine, &spec).await?;
        let mut start = Event::new(event::MACHINE_PROVISION_START)
            .tenant(machine.tenant_id)
            .machine(machine.id)
            .meta("provider", provider.name.as_str())
            .meta("provider_type", provider.provider_type.as_str());
        if let Some(pool) = pool {
            start = start.meta("pool", pool.name.as_str());
        }
        self.emit(start);
        self.spawn_provision(machine.id);
        Ok(machine)
    }

    /// The runner version a new machine of the tenant would be set up with: the pinned version
    /// of the tenant's forge's runner for the platform; `None` without a forge or a pin.
    pub async fn runner_version(
        &self,
        tenant_id: TenantId,
        os: nimbus_types::Os,
        arch: nimbus_types::Arch,
    ) -> Option<String> {
        let config = self
            .inner
            .store
            .get_tenant_forge_config(tenant_id)
            .await
            .ok()??;
        self.runner_version_of(config.forge_type, os, arch)
    }

    /// The pinned runner version of a forge type's runner for the platform.
    pub(crate) fn runner_version_of(
        &self,
        forge_type: nimbus_types::ForgeType,
        os: nimbus_types::Os,
        arch: nimbus_types::Arch,
    ) -> Option<String> {
        // Nimbus Git's jobs run over the machine's executor: no runner software to pin.
        if forge_type == nimbus_types::ForgeType::NimbusGit {
            return None;
        }
        let software = nimbus_setup::installers::Software::from(runners::runner_kind(forge_type));
        self.inner
            .config
            .installers
            .resolve(software, os, arch)
            .ok()
            .map(|artifact| artifact.version)
    }

    /// Marks a machine failed for `reason` (the autoscaler's health checks: stuck, zombie):
    /// interrupts what runs on it, records `failed`, and removes it at the provider in the
    /// background (the reconciler finishes the cleanup if that fails). The runner is
    /// deregistered first and a busy one keeps its machine: then nothing happens.
    pub async fn fail_machine(&self, scope: Scope, id: MachineId, reason: &str) -> Result<Machine> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let mut machine = self.inner.store.get_machine(scope, id).await?.machine;
        if !matches!(
            machine.state,
            MachineState::Provisioning | MachineState::ImageInstalling | MachineState::Ready
        ) {
            return Ok(machine);
        }
        if machine.state == MachineState::Ready
            && !self
                .deregister_runner(machine.tenant_id, machine.id)
                .await?
        {
            return Err(Error::Conflict(
                "the runner is busy with a job; it is not failed".into(),
            ));
        }
        self.slot(id).cancel.cancel();
        machine.error = Some(reason.to_owned());
        self.move_to(&mut machine, MachineState::Failed, Some(reason))
            .await?;
        self.emit(
            Event::new(event::MACHINE_RECONCILED)
                .tenant(machine.tenant_id)
                .machine(machine.id)
                .meta("action", "failed")
                .meta("message", reason),
        );
        let fleet = self.clone();
        let failed = machine.clone();
        self.inner.tasks.spawn(async move {
            let slot = fleet.slot(id);
            {
                let _guard = slot.lock.lock().await;
                if let Ok((_, provider)) = fleet.provider_of(&failed).await
                    && let Err(err) = provider.terminate(&failed).await
                {
                    tracing::warn!(machine.id = %id, error = %err, "cleanup of a failed machine did not finish; the reconciler retries");
                }
            }
            fleet.release_slot(id, slot);
        });
        Ok(machine)
    }

    pub(crate) fn spawn_provision(&self, id: MachineId) {
        let fleet = self.clone();
        self.inner.tasks.spawn(async move {
            let slot = fleet.slot(id);
            {
                let _guard = slot.lock.lock().await;
                if let Err(err) = fleet.drive_provision(id, &slot.cancel).await {
                    tracing::warn!(machine.id = %id, error = %err, "provisioning stopped");
                }
            }
            fleet.release_slot(id, slot);
        });
    }

    /// Takes a machine from `provisioning` to `ready` (or `failed`). Safe to run again after a
    /// crash: the provider call is idempotent per machine id, and a machine that has moved on
    /// is left alone.
    async fn drive_provision(
        &self,
        id: MachineId,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<()> {
        let record = self.inner.store.get_machine(None, id).await?;
        let mut machine = record.machine;
        let resuming_setup = machine.state == MachineState::ImageInstalling;
        if !matches!(
            machine.state,
            MachineState::Provisioning | MachineState::ImageInstalling
        ) {
            return Ok(());
        }
        let (config, provider) = self.provider_of(&machine).await?;
        let started = Instant::now();
        let requested_at = machine.created_at;

        let request = ProvisionRequest {
            machine_id: machine.id,
            tenant_id: machine.tenant_id,
            provider_id: machine.provider_id,
            spec: record.spec.clone(),
        };
        let created = self
            .provider_call(&machine, &config, "provision", provider.provision(&request))
            .await;
        let created = match created {
            Ok(created) => created,
            Err(err) => {
                let reason = format!("provider refused the machine: {err}");
                return self
                    .fail(
                        &mut machine,
                        provider.as_ref(),
                        event::MACHINE_PROVISION_FAILURE,
                        &reason,
                        started,
                    )
                    .await;
            }
        };
        let provider_accepted = started.elapsed();
        machine.ip_address = created.ip_address.clone();
        machine.ssh_public_key = created.ssh_public_key.clone();
        machine.created_at = created.created_at;
        machine.provider_metadata = created.metadata.clone();

        let forge = if record.spec.skip_setup {
            None
        } else {
            match self.forge_of(machine.tenant_id).await {
                Ok(forge) => forge,
                Err(err) => {
                    let reason = format!("the tenant's forge cannot be used: {err}");
                    return self
                        .fail(
                            &mut machine,
                            provider.as_ref(),
                            event::MACHINE_PROVISION_FAILURE,
                            &reason,
                            started,
                        )
                        .await;
                }
            }
        };
        let needs_setup =
            !record.spec.skip_setup && (record.spec.setup_script.is_some() || forge.is_some());
        let mut setup_time = Duration::ZERO;
        if needs_setup {
            if machine.state == MachineState::Provisioning {
                machine.image.state = ImageState::Installing;
                self.move_to(
                    &mut machine,
                    MachineState::ImageInstalling,
                    Some("provider accepted the machine; setting up"),
                )
                .await?;
            }
            if resuming_setup {
                // Resuming after a crash: the interrupted attempt may still be running.
                provider.interrupt_setup(&machine).await?;
            }
            let setup_started = Instant::now();
            self.emit(
                Event::new(event::MACHINE_SETUP_START)
                    .tenant(machine.tenant_id)
                    .machine(machine.id),
            );
            let outcome = tokio::select! {
                outcome = self.run_setup(provider.as_ref(), &machine, &record.spec, forge) => outcome,
                () = cancel.cancelled() => {
                    // Terminate (or shutdown) took over; the machine's state says what's next.
                    return Ok(());
                }
            };
            setup_time = setup_started.elapsed();
            if let Err(reason) = outcome {
                self.emit(
                    Event::new(event::MACHINE_SETUP_FAILURE)
                        .tenant(machine.tenant_id)
                        .machine(machine.id)
                        .duration(setup_time)
                        .error(&reason),
                );
                machine.image.state = ImageState::Failed;
                let reason = format!("setup failed: {reason}");
                return self
                    .fail(
                        &mut machine,
                        provider.as_ref(),
                        event::MACHINE_PROVISION_FAILURE,
                        &reason,
                        started,
                    )
                    .await;
            }
            self.emit(
                Event::new(event::MACHINE_SETUP_SUCCESS)
                    .tenant(machine.tenant_id)
                    .machine(machine.id)
                    .duration(setup_time),
            );
        }
        machine.image.state = ImageState::Installed;
        machine.image.installed_at = Some(nimbus_types::now());
        machine.error = None;
        machine.usage.idle_since = Some(nimbus_types::now());
        self.move_to(&mut machine, MachineState::Ready, Some("machine is ready"))
            .await?;
        let total = (nimbus_types::now() - requested_at).unsigned_abs();
        let pool = match machine.pool_id {
            Some(pool_id) => self
                .inner
                .store
                .get_pool(machine.tenant_id, pool_id)
                .await
                .ok()
                .map(|pool| pool.name),
            None => None,
        };
        self.emit(
            Event::new(event::MACHINE_PROVISION_SUCCESS)
                .tenant(machine.tenant_id)
                .machine(machine.id)
                .duration(started.elapsed()),
        );
        self.emit(
            Event::new(event::MACHINE_READY)
                .tenant(machine.tenant_id)
                .machine(machine.id)
                .duration(total)
                .meta("provider_accepted", provider_accepted.as_secs_f64())
                .meta("setup", setup_time.as_secs_f64())
                .meta("total", total.as_secs_f64())
                .meta("pool", pool.unwrap_or_default()),
        );
        Ok(())
    }

    /// Runs the setup pipeline on the machine (resuming after completed steps; progress lives
    /// in the machine's own `state.db`). The error is a reason a person can act on.
    async fn run_setup(
        &self,
        provider: &dyn Provider,
        machine: &Machine,
        spec: &MachineSpec,
        forge: Option<(Arc<dyn nimbus_forge::Forge>, nimbus_types::ForgeConfig)>,
    ) -> std::result::Result<(), String> {
        let exec = provider
            .exec(machine)
            .await
            .map_err(|err| format!("cannot reach the machine: {err}"))?;
        let paths = MachinePaths::from_metadata(&machine.provider_metadata).unwrap_or_default();
        let mut plan = Plan::new(machine.tenant_id, machine.id, spec, paths);
        plan.installers = self.inner.config.installers.clone();
        plan.step_timeout = self.inner.config.setup_timeout;
        plan.connect_wait = self
            .inner
            .config
            .setup_timeout
            .min(Duration::from_secs(300));
        let sink: Arc<dyn EventSink> = Arc::new(self.inner.telemetry.clone());
        if let Some((forge, config)) = forge {
            plan.runner = Some(RunnerPlan {
                kind: runners::runner_kind(config.forge_type),
                name: runners::runner_name(machine.id),
                registration: Arc::new(runners::ForgeRegistration {
                    forge,
                    url: runners::registration_url(&config),
                    events: sink.clone(),
                }),
            });
        }
        pipeline::run(exec.as_ref(), &plan, &Events::new(sink))
            .await
            .map(drop)
            .map_err(|err| err.to_string())
    }

    /// The tenant's forge client and configuration, when one is configured.
    async fn forge_of(
        &self,
        tenant_id: TenantId,
    ) -> Result<Option<(Arc<dyn nimbus_forge::Forge>, nimbus_types::ForgeConfig)>> {
        let Some(config) = self.inner.store.get_tenant_forge_config(tenant_id).await? else {
            return Ok(None);
        };
        Ok(self
            .forges()
            .get(tenant_id)
            .await?
            .map(|forge| (forge, config)))
    }

    /// Marks a machine failed and makes sure nothing is left running at the provider.
    async fn fail(
        &self,
        machine: &mut Machine,
        provider: &dyn Provider,
        event_name: &str,
        reason: &str,
        started: Instant,
    ) -> Result<()> {
        if let Err(err) = provider.terminate(machine).await {
            // The reconciler removes it on its next pass (failed machines with resources).
            tracing::warn!(machine.id = %machine.id, error = %err, "cleanup after a failed provision did not finish");
        }
        machine.error = Some(reason.to_owned());
        self.move_to(machine, MachineState::Failed, Some(reason))
            .await?;
        self.emit(
            Event::new(event_name)
                .tenant(machine.tenant_id)
                .machine(machine.id)
                .duration(started.elapsed())
                .error(reason),
        );
        Ok(())
    }

    /// Saves `machine` in state `to`, expecting the store to still hold its current state.
    pub(crate) async fn move_to(
        &self,
        machine: &mut Machine,
        to: MachineState,
        reason: Option<&str>,
    ) -> Result<()> {
        let from = machine.state;
        machine.state = to;
        machine.updated_at = nimbus_types::now();
        if let Err(err) = self.inner.store.update_machine(machine, from, reason).await {
            machine.state = from;
            return Err(err.into());
        }
        Ok(())
    }

    /// Starts terminating a machine: records `stopping`, interrupts a running setup, and removes
    /// the machine at its provider in the background. Terminating a terminated machine is a
    /// no-op. When the provider must keep something past the terminate (an EC2 Mac dedicated
    /// host inside its 24-hour minimum), the machine still goes, the provider keeps the host for
    /// reuse and releases it later, and the recorded reason says so.
    pub async fn terminate_machine(&self, scope: Scope, id: MachineId) -> Result<Machine> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        // A concurrent change (the provision task moving on) is retried a few times.
        for _ in 0..5 {
            let mut machine = self.inner.store.get_machine(scope, id).await?.machine;
            match machine.state {
                MachineState::Terminated => return Ok(machine),
                MachineState::Stopping => {
                    if !self.is_busy(id) {
                        self.spawn_terminate(id);
                    }
                    return Ok(machine);
                }
                _ => {}
            }
            let answer = self.can_terminate(&machine).await?;
            let reason = match (&answer.can_terminate, &answer.message) {
                (false, Some(message)) => {
                    format!(
                        "terminate requested; the provider keeps its resources for now: {message}"
                    )
                }
                _ => "terminate requested".to_owned(),
            };
            match self
                .move_to(&mut machine, MachineState::Stopping, Some(&reason))
                .await
            {
                Ok(()) => {}
                Err(Error::Store(nimbus_store::Error::StaleState { .. })) => continue,
                Err(err) => return Err(err),
            }
            let mut start = Event::new(event::MACHINE_TERMINATE_START)
                .tenant(machine.tenant_id)
                .machine(machine.id);
            if let Some(hours) = answer.hours_remaining {
                start = start.meta("hours_remaining", hours);
            }
            self.emit(start);
            self.slot(id).cancel.cancel();
            self.spawn_terminate(id);
            return Ok(machine);
        }
        Err(Error::Conflict(format!(
            "machine {id} keeps changing state; try again"
        )))
    }

    pub(crate) fn spawn_terminate(&self, id: MachineId) {
        let fleet = self.clone();
        self.inner.tasks.spawn(async move {
            let slot = fleet.slot(id);
            {
                let _guard = slot.lock.lock().await;
                if let Err(err) = fleet.drive_terminate(id).await {
                    tracing::warn!(machine.id = %id, error = %err, "termination stopped; the reconciler retries");
                }
            }
            fleet.release_slot(id, slot);
        });
    }

    async fn drive_terminate(&self, id: MachineId) -> Result<()> {
        let mut machine = self.inner.store.get_machine(None, id).await?.machine;
        if machine.state != MachineState::Stopping {
            return Ok(());
        }
        let started = Instant::now();
        // Invariant 2: the runner leaves the forge first, and never while it runs a job.
        if !self
            .deregister_runner(machine.tenant_id, machine.id)
            .await?
        {
            self.emit(
                Event::new(event::MACHINE_TERMINATE_FAILURE)
                    .tenant(machine.tenant_id)
                    .machine(machine.id)
                    .error("the runner is busy with a job; termination waits for it")
                    .meta("retry", "reconcile"),
            );
            return Ok(());
        }
        let (config, provider) = self.provider_of(&machine).await?;
        match self
            .provider_call(&machine, &config, "terminate", provider.terminate(&machine))
            .await
        {
            Ok(()) => {
                self.move_to(
                    &mut machine,
                    MachineState::Terminated,
                    Some("removed at the provider"),
                )
                .await?;
                self.emit(
                    Event::new(event::MACHINE_TERMINATE_SUCCESS)
                        .tenant(machine.tenant_id)
                        .machine(machine.id)
                        .duration(started.elapsed()),
                );
                Ok(())
            }
            Err(err) => {
                self.emit(
                    Event::new(event::MACHINE_TERMINATE_FAILURE)
                        .tenant(machine.tenant_id)
                        .machine(machine.id)
                        .duration(started.elapsed())
                        .error(&err),
                );
                Err(err.into())
            }
        }
    }

    /// Whether the machine may be terminated now.
    pub async fn can_terminate_machine(&self, scope: Scope, id: MachineId) -> Result<CanTerminate> {
        let machine = self.inner.store.get_machine(scope, id).await?.machine;
        self.can_terminate(&machine).await
    }

    async fn can_terminate(&self, machine: &Machine) -> Result<CanTerminate> {
        match machine.state {
            MachineState::Terminated => Ok(CanTerminate::no(
                "already_terminated",
                "the machine is already terminated",
            )),
            MachineState::Stopping => Ok(CanTerminate::no(
                "already_stopping",
                "the machine is already being terminated",
            )),
            _ => {
                let (_, provider) = self.provider_of(machine).await?;
                Ok(provider.can_terminate(machine).await?)
            }
        }
    }

    /// A machine as recorded, with its setup progress read from the machine itself when it can
    /// be reached (the store's view otherwise).
    pub async fn get_machine(&self, scope: Scope, id: MachineId) -> Result<MachineRecord> {
        let mut record = self.inner.store.get_machine(scope, id).await?;
        record.machine.setup_progress = self.setup_progress(&record.machine).await;
        Ok(record)
    }

    /// Machines as recorded; those being set up carry their progress from the machine.
    pub async fn list_machines(&self, filter: &MachineFilter) -> Result<Vec<Machine>> {
        let mut machines: Vec<Machine> = self
            .inner
            .store
            .list_machines(filter)
            .await?
            .into_iter()
            .map(|record| record.machine)
            .collect();
        let installing: Vec<usize> = machines
            .iter()
            .enumerate()
            .filter(|(_, m)| m.state == MachineState::ImageInstalling)
            .map(|(idx, _)| idx)
            .take(MAX_PROGRESS_READS)
            .collect();
        let reads = installing
            .iter()
            .map(|idx| self.setup_progress(&machines[*idx]));
        let progress = futures::future::join_all(reads).await;
        for (idx, progress) in installing.into_iter().zip(progress) {
            machines[idx].setup_progress = progress;
        }
        Ok(machines)
    }

    /// Reads `state.db` on the machine; `None` when it has none or cannot be reached in time.
    async fn setup_progress(&self, machine: &Machine) -> Option<nimbus_types::SetupProgress> {
        if matches!(
            machine.state,
            MachineState::Terminated | MachineState::Provisioning
        ) {
            return None;
        }
        let paths = MachinePaths::from_metadata(&machine.provider_metadata)?;
        let read = async {
            let (_, provider) = self.provider_of(machine).await.ok()?;
            let exec = provider.exec(machine).await.ok()?;
            pipeline::read_progress(exec.as_ref(), &paths.state_db)
                .await
                .ok()
        };
        tokio::time::timeout(PROGRESS_READ_TIMEOUT, read)
            .await
            .ok()
            .flatten()
            .filter(|progress| !progress.steps.is_empty())
    }

    pub async fn machine_history(&self, scope: Scope, id: MachineId) -> Result<Vec<StateChange>> {
        // Checks the scope first so another tenant's machine stays invisible.
        self.inner.store.get_machine(scope, id).await?;
        Ok(self.inner.store.machine_history(id).await?)
    }

    /// Validates and stores a provider configuration.
    pub async fn create_provider(
        &self,
        tenant_id: TenantId,
        name: &str,
        provider_type: ProviderType,
        config: Option<serde_json::Value>,
        credentials: Option<serde_json::Value>,
    ) -> Result<ProviderConfig> {
        validate_name(name).map_err(|message| SpecError::new("name", message))?;
        let credentials = match credentials {
            None | Some(serde_json::Value::Null) => None,
            Some(value @ serde_json::Value::Object(_)) => Some(Secret::new(value.to_string())),
            Some(_) => {
                return Err(SpecError::new("credentials", "must be a JSON object").into());
            }
        };
        let provider = ProviderConfig {
            id: ProviderId::new(),
            tenant_id,
            name: name.to_owned(),
            provider_type,
            credentials,
            config: config.unwrap_or(serde_json::Value::Null),
            created_at: nimbus_types::now(),
        };
        self.inner
            .providers
            .validate(&provider)
            .map_err(|err| match err {
                nimbus_provider::Error::InvalidConfig { field, message } => {
                    Error::Invalid(SpecError::new(field, message))
                }
                other => Error::Invalid(SpecError::new("config", other.to_string())),
            })?;
        self.inner.store.create_provider(&provider).await?;
        Ok(provider)
    }

    /// Deletes a provider that has no live machines.
    pub async fn delete_provider(&self, tenant_id: TenantId, id: ProviderId) -> Result<()> {
        match self.inner.store.delete_provider(tenant_id, id).await {
            Ok(()) => {
                self.inner.providers.evict(id);
                Ok(())
            }
            Err(nimbus_store::Error::Conflict { entity }) if entity.contains("pool") => Err(
                Error::Conflict("pools use the provider; delete them first".into()),
            ),
            Err(nimbus_store::Error::Conflict { .. }) => Err(Error::Conflict(
                "the provider still has live machines; terminate them first".into(),
            )),
            Err(err) => Err(err.into()),
        }
    }

    pub(crate) async fn provider_of(
        &self,
        machine: &Machine,
    ) -> Result<(ProviderConfig, Arc<dyn Provider>)> {
        let config = self
            .inner
            .store
            .get_provider(machine.tenant_id, machine.provider_id)
            .await?;
        let provider = self.inner.providers.get(&config)?;
        Ok((config, provider))
    }

    /// Runs one provider operation with `nimbus.cloud_provider.api_call_*` events around it.
    pub(crate) async fn provider_call<T>(
        &self,
        machine: &Machine,
        config: &ProviderConfig,
        operation: &str,
        call: impl Future<Output = nimbus_provider::Result<T>>,
    ) -> nimbus_provider::Result<T> {
        let base = |name: &str| {
            Event::new(name)
                .tenant(machine.tenant_id)
                .machine(machine.id)
                .meta("operation", operation)
                .meta("provider_type", config.provider_type.as_str())
        };
        self.emit(base(event::CLOUD_PROVIDER_API_CALL_START));
        let started = Instant::now();
        let result = call.await;
        match &result {
            Ok(_) => {
                self.emit(base(event::CLOUD_PROVIDER_API_CALL_SUCCESS).duration(started.elapsed()))
            }
            Err(err) => self.emit(
                base(event::CLOUD_PROVIDER_API_CALL_FAILURE)
                    .duration(started.elapsed())
                    .error(err)
                    .meta("retryable", err.is_retryable()),
            ),
        }
        result
    }

    pub(crate) fn emit(&self, event: Event) {
        self.inner.telemetry.emit(event);
    }
}
