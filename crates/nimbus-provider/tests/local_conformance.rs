//! The `local` provider through the shared provider conformance suite. It has no credentials
//! and no remote peer to fault, so those cases are skipped by the suite itself.

mod conformance;

use std::path::PathBuf;
use std::sync::Arc;

use conformance::{Fault, Peer};
use nimbus_provider::Provider;
use nimbus_provider::local::{LocalConfig, LocalProvider};
use nimbus_types::{Arch, MachineSpec, Os, ProviderId, TenantId};

struct Local {
    /// One directory for every tenant's machines, as in the daemon.
    root: tempfile::TempDir,
}

impl Local {
    fn root(&self) -> PathBuf {
        self.root.path().join("machines")
    }
}

impl Peer for Local {
    fn name(&self) -> &str {
        "local"
    }

    fn provider(&self, _tenant_id: TenantId, provider_id: ProviderId) -> Arc<dyn Provider> {
        Arc::new(LocalProvider::new(
            self.root(),
            provider_id,
            LocalConfig::default(),
        ))
    }

    fn spec(&self) -> MachineSpec {
        MachineSpec::new(Os::host().unwrap(), Arch::host().unwrap())
    }

    fn wrong_credentials(
        &self,
        _tenant_id: TenantId,
        _provider_id: ProviderId,
    ) -> Option<(Arc<dyn Provider>, String)> {
        None
    }

    fn inject(&self, _fault: Fault) -> bool {
        false
    }
}

#[tokio::test]
async fn local_passes_the_provider_conformance_suite() {
    let peer = Local {
        root: tempfile::tempdir().unwrap(),
    };
    conformance::run(&peer).await;
    let left: Vec<_> = std::fs::read_dir(peer.root())
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "machine directories left behind: {left:?}");
}
