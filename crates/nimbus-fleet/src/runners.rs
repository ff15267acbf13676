//! A machine's runner at its tenant's forge: registered during setup (a just-in-time,
//! ephemeral runner where the forge has them), removed before the machine goes (never while it
//! runs a job), and swept when no live machine stands behind it.
//!
//! Lean state: the runner's name is derived from the machine id, so its registration is found
//! by listing the forge's runners; nothing about it is stored.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use nimbus_forge::lifecycle::{self, Outcome, Subject};
use nimbus_forge::{Forge, JitKind, JitRequest};
use nimbus_setup::installers::RunnerKind;
use nimbus_setup::pipeline::{
    RegistrationError, RegistrationInfo, RegistrationRequest, RunnerCredential, RunnerRegistration,
};
use nimbus_store::MachineFilter;
use nimbus_types::event::EventSink;
use nimbus_types::{ForgeConfig, ForgeType, MachineId, TenantId};

use crate::{Error, Fleet, Result};

/// The runner name of a machine at its forge: unique, stable, at most 64 characters.
pub fn runner_name(machine_id: MachineId) -> String {
    format!("nimbus-{machine_id}")
}

/// The machine behind a runner named by [`runner_name`]; `None` for other runners.
pub fn machine_of_runner(name: &str) -> Option<MachineId> {
    name.strip_prefix("nimbus-")?.parse().ok()
}

/// The runner software a forge's machines get.
pub fn runner_kind(forge_type: ForgeType) -> RunnerKind {
    match forge_type {
        ForgeType::Github | ForgeType::NimbusGit => RunnerKind::GithubActions,
        ForgeType::Gitlab => RunnerKind::GitlabRunner,
        ForgeType::Forgejo => RunnerKind::ForgejoRunner,
    }
}

/// Where a runner registers: the organization's (or repository's) web URL; for GitLab and
/// Forgejo the instance's base URL.
pub fn registration_url(config: &ForgeConfig) -> String {
    if config.forge_type == ForgeType::Forgejo {
        return config
            .config
            .get("url")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned();
    }
    if config.forge_type == ForgeType::Gitlab {
        return config
            .config
            .get("url")
            .or_else(|| config.config.get("api_url"))
            .and_then(|v| v.as_str())
            .unwrap_or("https://gitlab.com")
            .trim_end_matches('/')
            .to_owned();
    }
    let web = config
        .config
        .get("api_url")
        .and_then(|v| v.as_str())
        .map(|api| {
            api.trim_end_matches('/')
                .trim_end_matches("/api/v3")
                .replace("://api.github.com", "://github.com")
        })
        .unwrap_or_else(|| "https://github.com".to_owned());
    match config.config.get("repo").and_then(|v| v.as_str()) {
        Some(repo) => format!("{web}/{}/{repo}", config.org),
        None => format!("{web}/{}", config.org),
    }
}

/// The setup pipeline's view of a forge: hands out a JIT configuration for one machine.
pub(crate) struct ForgeRegistration {
    pub forge: Arc<dyn Forge>,
    pub url: String,
    pub events: Arc<dyn EventSink>,
}

#[async_trait]
impl RunnerRegistration for ForgeRegistration {
    async fn registration(
        &self,
        request: &RegistrationRequest,
    ) -> std::result::Result<RegistrationInfo, RegistrationError> {
        let jit = lifecycle::register_jit_runner(
            self.forge.as_ref(),
            &JitRequest {
                name: request.runner_name.clone(),
                runner_group_id: 1,
                labels: request.labels.clone(),
                work_folder: None,
            },
            Subject {
                tenant_id: request.tenant_id,
                machine_id: Some(request.machine_id),
            },
            self.events.as_ref(),
        )
        .await
        .map_err(|err| {
            if err.is_retryable() {
                RegistrationError::Retryable(err.to_string())
            } else {
                RegistrationError::Permanent(err.to_string())
            }
        })?;
        // GitHub's JIT config is the runner's whole configuration; GitLab's is the runner's
        // authentication token (`glrt-…`) for `gitlab-runner register --token`; Forgejo's is
        // the created runner (uuid and token) or, on older servers, a registration token.
        // Forgejo's server sets no labels: the runner declares them, tenant marker included.
        let (credential, labels) = match jit.kind {
            JitKind::JitConfig => (RunnerCredential::JitConfig(jit.encoded_jit_config), vec![]),
            JitKind::RunnerToken => (RunnerCredential::Token(jit.encoded_jit_config), vec![]),
            JitKind::RegistrationToken => (
                RunnerCredential::Token(jit.encoded_jit_config),
                jit.runner.labels,
            ),
            JitKind::RunnerIdentity { uuid } => (
                RunnerCredential::RunnerIdentity {
                    uuid,
                    token: jit.encoded_jit_config,
                },
                jit.runner.labels,
            ),
        };
        Ok(RegistrationInfo {
            url: self.url.clone(),
            credential,
            labels,
        })
    }
}

impl Fleet {
    /// Removes the machine's runner from its forge unless it is running a job (invariant 2).
    /// `Ok(false)` means busy: leave the machine alone and try again later.
    pub(crate) async fn deregister_runner(
        &self,
        tenant_id: TenantId,
        machine_id: MachineId,
    ) -> Result<bool> {
        let Some(forge) = self.forges().get(tenant_id).await? else {
            return Ok(true);
        };
        let name = runner_name(machine_id);
        let runners = forge.list_runners().await.map_err(forge_error)?;
        let Some(runner) = runners.into_iter().find(|runner| runner.name == name) else {
            return Ok(true);
        };
        let sink: Arc<dyn EventSink> = Arc::new(self.telemetry().clone());
        let outcome = lifecycle::deregister_then_check(
            forge.as_ref(),
            runner.id,
            Subject {
                tenant_id,
                machine_id: Some(machine_id),
            },
            sink.as_ref(),
        )
        .await
        .map_err(forge_error)?;
        Ok(!matches!(outcome, Outcome::Busy))
    }

    /// Removes runners Nimbus registered for this tenant that no live machine stands behind
    /// (invariant 3); busy ones wait for their job to end.
    pub async fn reconcile_runners(&self, tenant_id: TenantId) -> Result<lifecycle::OrphanReport> {
        let Some(forge) = self.forges().get(tenant_id).await? else {
            return Ok(lifecycle::OrphanReport::default());
        };
        let live: HashSet<String> = self
            .inner
            .store
            .list_machines(&MachineFilter {
                tenant_id: Some(tenant_id),
                ..MachineFilter::default()
            })
            .await?
            .into_iter()
            .map(|record| runner_name(record.machine.id))
            .collect();
        let sink: Arc<dyn EventSink> = Arc::new(self.telemetry().clone());
        lifecycle::remove_orphans(forge.as_ref(), &live, tenant_id, sink.as_ref())
            .await
            .map_err(forge_error)
    }
}

fn forge_error(err: nimbus_forge::Error) -> Error {
    Error::Forge(err.to_string())
}
