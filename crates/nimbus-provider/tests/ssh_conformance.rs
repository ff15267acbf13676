//! The `ssh` provider through the shared provider conformance suite, on real sshd daemons that
//! every tenant's provider lists (the worst case for isolation: the same hosts, several
//! tenants). Faults cannot be injected into sshd, so those cases are skipped by the suite.

mod conformance;

use std::sync::Arc;

use conformance::{Fault, Peer};
use nimbus_provider::Provider;
use nimbus_provider::ssh::{SshPool, SshProvider};
use nimbus_setup::events::Events;
use nimbus_setup::ssh::{MemoryHostKeyStore, SshOptions};
use nimbus_testkit::sshd::Sshd;
use nimbus_types::{
    Arch, MachineSpec, Os, ProviderConfig, ProviderId, ProviderType, Secret, TenantId,
};
use serde_json::json;

struct Hosts {
    sshds: Vec<Sshd>,
}

impl Hosts {
    fn record(
        &self,
        tenant_id: TenantId,
        provider_id: ProviderId,
        key_of: impl Fn(usize) -> String,
    ) -> ProviderConfig {
        let mut keys = serde_json::Map::new();
        let hosts: Vec<_> = self
            .sshds
            .iter()
            .enumerate()
            .map(|(idx, sshd)| {
                keys.insert(
                    format!("{}:{}", sshd.address(), sshd.port()),
                    json!(key_of(idx)),
                );
                json!({
                    "address": sshd.address(),
                    "port": sshd.port(),
                    "user": sshd.user(),
                    "os": "linux",
                    "arch": Arch::host().unwrap().as_str(),
                    "state_dir": sshd.scratch_dir().join("nimbus").display().to_string(),
                })
            })
            .collect();
        ProviderConfig {
            id: provider_id,
            tenant_id,
            name: "byo".into(),
            provider_type: ProviderType::Ssh,
            credentials: Some(Secret::new(json!({ "keys": keys }).to_string())),
            config: json!({"hosts": hosts, "connect_timeout_secs": 5}),
            created_at: nimbus_types::now(),
        }
    }

    fn build(&self, config: &ProviderConfig) -> Arc<dyn Provider> {
        let pool = SshPool::new(
            MemoryHostKeyStore::new(),
            Events::none(),
            SshOptions::default(),
        );
        Arc::new(SshProvider::from_provider(config, pool).unwrap())
    }
}

impl Peer for Hosts {
    fn name(&self) -> &str {
        "ssh"
    }

    fn provider(&self, tenant_id: TenantId, provider_id: ProviderId) -> Arc<dyn Provider> {
        let record = self.record(tenant_id, provider_id, |idx| {
            self.sshds[idx].client_private_key().to_owned()
        });
        self.build(&record)
    }

    fn spec(&self) -> MachineSpec {
        MachineSpec::new(Os::Linux, Arch::host().unwrap())
    }

    fn wrong_credentials(
        &self,
        tenant_id: TenantId,
        provider_id: ProviderId,
    ) -> Option<(Arc<dyn Provider>, String)> {
        // Each host gets the other host's key: a real key sshd does not accept.
        let n = self.sshds.len();
        let wrong = |idx: usize| self.sshds[(idx + 1) % n].client_private_key().to_owned();
        let record = self.record(tenant_id, provider_id, wrong);
        let secret = self.sshds[1 % n].client_private_key().to_owned();
        Some((self.build(&record), secret))
    }

    fn inject(&self, _fault: Fault) -> bool {
        false
    }
}

#[tokio::test]
async fn ssh_passes_the_provider_conformance_suite() {
    let sshds: Vec<Sshd> = (0..2)
        .map(|_| Sshd::start().unwrap_or_else(|err| panic!("{err:#}")))
        .collect();
    let peer = Hosts { sshds };
    conformance::run(&peer).await;
}
