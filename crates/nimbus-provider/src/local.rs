//! The local provider: a machine is a directory under `$XDG_STATE_HOME/nimbus/machines/<id>`
//! plus the processes that carry its marker (see `nimbus_setup::local`).
//!
//! A machine's life is anchored by a leader process (`sleep infinity` in a process group of its
//! own); setup commands and services run beside it. Terminating kills every process carrying the
//! machine's marker, then removes the directory, so nothing outlives its machine — also after
//! `nimbusd` itself was killed, because the reconciler finds the directories and markers again.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nimbus_setup::exec::Exec;
use nimbus_setup::local::{
    LocalExec, MACHINE_MARKER, kill_machine_processes, kill_machine_processes_except,
};
use nimbus_types::{
    Arch, CanTerminate, Machine, MachineId, Os, ProviderId, ProviderMetadata, ProviderType,
    TenantId,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Error, Provider, ProviderMachine, ProviderStatus, ProvisionRequest, Result};

/// Settings of a local provider (`config` of the provider record).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// At most this many live machines at once; further provisions fail as retryable.
    #[serde(default)]
    pub max_machines: Option<u32>,
}

impl LocalConfig {
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        if value.is_null() {
            return Ok(LocalConfig::default());
        }
        let config: LocalConfig =
            serde_json::from_value(value.clone()).map_err(|err| Error::InvalidConfig {
                field: "config".into(),
                message: err.to_string(),
            })?;
        if config.max_machines == Some(0) {
            return Err(Error::InvalidConfig {
                field: "config.max_machines".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(config)
    }
}

/// What a machine directory records about its machine: the provider's "tags".
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
    machine_id: MachineId,
    tenant_id: TenantId,
    provider_id: ProviderId,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    /// Unset between creating the directory and starting the leader.
    leader_pid: Option<i32>,
}

const MANIFEST: &str = "machine.json";
const TERMINATE_GRACE: Duration = Duration::from_secs(5);

pub struct LocalProvider {
    root: PathBuf,
    provider_id: ProviderId,
    config: LocalConfig,
}

impl LocalProvider {
    pub fn new(root: PathBuf, provider_id: ProviderId, config: LocalConfig) -> Self {
        LocalProvider {
            root,
            provider_id,
            config,
        }
    }

    fn machine_dir(&self, id: MachineId) -> PathBuf {
        self.root.join(id.to_string())
    }

    async fn read_manifest(dir: &Path) -> Option<Manifest> {
        let bytes = tokio::fs::read(dir.join(MANIFEST)).await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    async fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
        let tmp = dir.join(format!("{MANIFEST}.tmp"));
        let bytes = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
        tokio::fs::write(&tmp, bytes).await.map_err(io_error)?;
        tokio::fs::rename(&tmp, dir.join(MANIFEST))
            .await
            .map_err(io_error)
    }

    fn view(&self, dir: &Path, manifest: &Manifest) -> ProviderMachine {
        let status = match manifest.leader_pid {
            None => ProviderStatus::Pending,
            Some(pid) if leader_alive(pid, manifest.machine_id) => ProviderStatus::Running,
            Some(_) => ProviderStatus::Stopped,
        };
        let mut metadata = ProviderMetadata {
            instance_id: Some(manifest.machine_id.to_string()),
            ..ProviderMetadata::default()
        };
        metadata
            .extra
            .insert("dir".into(), dir.display().to_string());
        // Where setup keeps the machine's state.db and work directory.
        metadata.extra.insert(
            "state_db".into(),
            dir.join("state.db").display().to_string(),
        );
        metadata
            .extra
            .insert("work_dir".into(), dir.join("work").display().to_string());
        if let Some(pid) = manifest.leader_pid {
            metadata.extra.insert("leader_pid".into(), pid.to_string());
        }
        ProviderMachine {
            machine_id: Some(manifest.machine_id),
            tenant_id: Some(manifest.tenant_id),
            status,
            ip_address: Some("127.0.0.1".into()),
            ssh_public_key: None,
            created_at: manifest.created_at,
            metadata,
        }
    }

    /// Every machine directory of this provider, with its manifest.
    async fn scan(&self) -> Result<Vec<(PathBuf, Manifest)>> {
        let mut out = Vec::new();
        let mut entries = match tokio::fs::read_dir(&self.root).await {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(err) => return Err(io_error(err)),
        };
        while let Some(entry) = entries.next_entry().await.map_err(io_error)? {
            let dir = entry.path();
            if let Some(manifest) = Self::read_manifest(&dir).await
                && manifest.provider_id == self.provider_id
            {
                out.push((dir, manifest));
            }
        }
        Ok(out)
    }
}

/// The leader is alive when its pid still carries this machine's marker (pids get reused).
fn leader_alive(pid: i32, machine_id: MachineId) -> bool {
    let needle = format!("{MACHINE_MARKER}={machine_id}");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.contains(") Z ") && environ.split(|b| *b == 0).any(|v| v == needle.as_bytes())
}

fn io_error(err: std::io::Error) -> Error {
    Error::Retryable(format!("local machine directory: {err}"))
}

#[async_trait]
impl Provider for LocalProvider {
    fn provider_type(&self) -> ProviderType {
        ProviderType::Local
    }

    async fn provision(&self, request: &ProvisionRequest) -> Result<ProviderMachine> {
        let (os, arch) = (Os::host(), Arch::host());
        if Some(request.spec.os) != os || Some(request.spec.arch) != arch {
            return Err(Error::Permanent(format!(
                "the local provider only has {}/{} machines, not {}/{}",
                os.map_or("unknown", |os| os.as_str()),
                arch.map_or("unknown", |arch| arch.as_str()),
                request.spec.os,
                request.spec.arch
            )));
        }
        let dir = self.machine_dir(request.machine_id);
        if let Some(manifest) = Self::read_manifest(&dir).await
            && manifest.leader_pid.is_some()
        {
            // A retry of a provision that already happened: report what exists.
            return Ok(self.view(&dir, &manifest));
        }
        if let Some(max) = self.config.max_machines {
            let live = self.scan().await?.len() as u32;
            if live >= max {
                return Err(Error::Retryable(format!(
                    "capacity: the provider already runs {live} of at most {max} machines"
                )));
            }
        }

        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(io_error)?;
        // The directory and its manifest come first, so a crash before the leader starts still
        // leaves a trace that the reconciler finds.
        match tokio::fs::create_dir(&dir).await {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(io_error(err)),
        }
        {
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .await
                .map_err(io_error)?;
        }
        let mut manifest = Manifest {
            machine_id: request.machine_id,
            tenant_id: request.tenant_id,
            provider_id: request.provider_id,
            created_at: nimbus_types::now(),
            leader_pid: None,
        };
        Self::write_manifest(&dir, &manifest).await?;

        let leader = tokio::process::Command::new("sleep")
            .arg("infinity")
            .current_dir(&dir)
            .env(MACHINE_MARKER, request.machine_id.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|err| Error::Permanent(format!("cannot start the machine's leader: {err}")))?;
        manifest.leader_pid = leader.id().map(|pid| pid as i32);
        // Dropping the handle leaves the leader running; tokio reaps it when it exits.
        drop(leader);
        if let Err(err) = Self::write_manifest(&dir, &manifest).await {
            let _ = kill_machine_processes(&request.machine_id.to_string(), TERMINATE_GRACE).await;
            return Err(err);
        }
        Ok(self.view(&dir, &manifest))
    }

    async fn terminate(&self, machine: &Machine) -> Result<()> {
        let dir = self.machine_dir(machine.id);
        // Machines of every local provider share one directory: only this provider's machine
        // is ever stopped, whatever the record says.
        if let Some(manifest) = Self::read_manifest(&dir).await
            && manifest.provider_id != self.provider_id
        {
            return Ok(());
        }
        let id = machine.id.to_string();
        kill_machine_processes(&id, TERMINATE_GRACE).await;
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_error(err)),
        }
        Ok(())
    }

    async fn can_terminate(&self, _machine: &Machine) -> Result<CanTerminate> {
        Ok(CanTerminate::yes())
    }

    async fn list_machines(&self, tenant_id: TenantId) -> Result<Vec<ProviderMachine>> {
        Ok(self
            .scan()
            .await?
            .into_iter()
            .filter(|(_, manifest)| manifest.tenant_id == tenant_id)
            .map(|(dir, manifest)| self.view(&dir, &manifest))
            .collect())
    }

    async fn get_machine(&self, id: MachineId) -> Result<Option<ProviderMachine>> {
        let dir = self.machine_dir(id);
        Ok(Self::read_manifest(&dir)
            .await
            .filter(|manifest| manifest.provider_id == self.provider_id)
            .map(|manifest| self.view(&dir, &manifest)))
    }

    async fn interrupt_setup(&self, machine: &Machine) -> Result<()> {
        let dir = self.machine_dir(machine.id);
        let leader = Self::read_manifest(&dir)
            .await
            .and_then(|manifest| manifest.leader_pid)
            .filter(|pid| leader_alive(*pid, machine.id));
        let keep: Vec<i32> = leader.into_iter().collect();
        kill_machine_processes_except(&machine.id.to_string(), &keep, TERMINATE_GRACE).await;
        Ok(())
    }

    async fn exec(&self, machine: &Machine) -> Result<Arc<dyn Exec>> {
        let dir = self.machine_dir(machine.id);
        if !dir.is_dir() {
            return Err(Error::NotFound(machine.id));
        }
        Ok(Arc::new(LocalExec::new(dir, machine.id.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use nimbus_setup::exec::Command;
    use nimbus_setup::local::machine_processes;
    use nimbus_types::{Image, ImageState, ImageType, MachineSpec, MachineState};

    use super::*;

    fn provider(root: &Path, config: LocalConfig) -> LocalProvider {
        LocalProvider::new(root.to_path_buf(), ProviderId::new(), config)
    }

    fn request(provider: &LocalProvider, tenant_id: TenantId) -> ProvisionRequest {
        ProvisionRequest {
            machine_id: MachineId::new(),
            tenant_id,
            provider_id: provider.provider_id,
            spec: MachineSpec::new(Os::host().unwrap(), Arch::host().unwrap()),
        }
    }

    fn machine(request: &ProvisionRequest) -> Machine {
        Machine {
            id: request.machine_id,
            tenant_id: request.tenant_id,
            provider_id: request.provider_id,
            os: request.spec.os,
            arch: request.spec.arch,
            state: MachineState::Ready,
            ip_address: None,
            ssh_public_key: None,
            labels: vec![],
            instance_type: None,
            image: Image {
                id: None,
                image_type: ImageType::None,
                state: ImageState::Installed,
                installed_at: None,
            },
            created_at: nimbus_types::now(),
            updated_at: nimbus_types::now(),
            provider_metadata: ProviderMetadata::default(),
            error: None,
            setup_progress: None,
            pool_id: None,
            usage: Default::default(),
        }
    }

    #[tokio::test]
    async fn lifecycle_leaves_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let provider = provider(root.path(), LocalConfig::default());
        let tenant = TenantId::new();
        let request = request(&provider, tenant);
        let created = provider.provision(&request).await.unwrap();
        assert_eq!(created.status, ProviderStatus::Running);
        assert_eq!(created.machine_id, Some(request.machine_id));

        // Idempotent: a retry reports the same machine instead of creating another.
        let again = provider.provision(&request).await.unwrap();
        assert_eq!(again.metadata, created.metadata);

        let listed = provider.list_machines(tenant).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(
            provider
                .list_machines(TenantId::new())
                .await
                .unwrap()
                .is_empty()
        );

        let machine = machine(&request);
        let exec = provider.exec(&machine).await.unwrap();
        exec.run(&Command::new(
            "setsid sleep 60 >/dev/null 2>&1 </dev/null & sleep 0.1",
        ))
        .await
        .unwrap();
        let id = request.machine_id.to_string();
        assert!(machine_processes(&id).len() >= 2, "leader and service run");

        provider.terminate(&machine).await.unwrap();
        assert!(machine_processes(&id).is_empty());
        assert!(!root.path().join(&id).exists());
        assert_eq!(
            provider.get_machine(request.machine_id).await.unwrap(),
            None
        );
        // Terminating again is fine.
        provider.terminate(&machine).await.unwrap();
    }

    #[tokio::test]
    async fn refuses_foreign_platforms_and_capacity() {
        let root = tempfile::tempdir().unwrap();
        let provider = provider(
            root.path(),
            LocalConfig {
                max_machines: Some(1),
            },
        );
        let tenant = TenantId::new();
        let mut foreign = request(&provider, tenant);
        foreign.spec.os = Os::Macos;
        let err = provider.provision(&foreign).await.unwrap_err();
        assert!(matches!(err, Error::Permanent(_)), "{err}");
        assert!(!root.path().join(foreign.machine_id.to_string()).exists());

        let first = request(&provider, tenant);
        provider.provision(&first).await.unwrap();
        let err = provider
            .provision(&request(&provider, tenant))
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        provider.terminate(&machine(&first)).await.unwrap();
    }

    #[test]
    fn config_is_validated() {
        assert!(LocalConfig::from_json(&serde_json::Value::Null).is_ok());
        assert!(LocalConfig::from_json(&serde_json::json!({"max_machines": 3})).is_ok());
        let err = LocalConfig::from_json(&serde_json::json!({"max_machines": 0})).unwrap_err();
        assert!(err.to_string().contains("max_machines"), "{err}");
        let err = LocalConfig::from_json(&serde_json::json!({"bogus": 1})).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
