//! The `aws` provider through the shared provider conformance suite, against moto behind the
//! fault proxy (throttling, 5xx, a `RunInstances` whose answer is lost after EC2 acted) and a
//! second proxy that rejects every request as `AuthFailure` (wrong credentials).

mod common;
#[path = "../../nimbus-provider/tests/conformance/mod.rs"]
mod conformance;

use std::sync::Arc;

use common::proxy::{Fault as ProxyFault, FaultProxy, Rule};
use common::*;
use conformance::{Fault, Peer};
use nimbus_provider::Provider;
use nimbus_testkit::moto::MotoServer;
use nimbus_types::{Arch, MachineSpec, Os, ProviderId, TenantId};

struct Aws {
    _moto: MotoServer,
    proxy: FaultProxy,
    /// Answers every request with `AuthFailure`, as EC2 does for a wrong key.
    rejecting: FaultProxy,
}

impl Peer for Aws {
    fn name(&self) -> &str {
        "aws"
    }

    fn provider(&self, tenant_id: TenantId, provider_id: ProviderId) -> Arc<dyn Provider> {
        let harness = Harness::new(tenant_id, provider_id, config_json(&self.proxy.endpoint()));
        Arc::new(harness.provider)
    }

    fn spec(&self) -> MachineSpec {
        let mut spec = MachineSpec::new(Os::Linux, Arch::X86_64);
        spec.skip_setup = true;
        spec
    }

    fn wrong_credentials(
        &self,
        tenant_id: TenantId,
        provider_id: ProviderId,
    ) -> Option<(Arc<dyn Provider>, String)> {
        let harness = Harness::new(
            tenant_id,
            provider_id,
            config_json(&self.rejecting.endpoint()),
        );
        Some((Arc::new(harness.provider), SECRET_ACCESS_KEY.to_owned()))
    }

    fn inject(&self, fault: Fault) -> bool {
        match fault {
            Fault::Throttle(0) | Fault::ServerError(0) => self.proxy.clear(),
            Fault::Throttle(n) => self.proxy.add(Rule::new(
                "*",
                n as usize,
                ProxyFault::Error {
                    status: 503,
                    code: "RequestLimitExceeded",
                },
            )),
            Fault::ServerError(n) => self.proxy.add(Rule::new(
                "*",
                n as usize,
                ProxyFault::Error {
                    status: 500,
                    code: "InternalError",
                },
            )),
            Fault::LoseCreateResponse => self.proxy.add(Rule::new(
                "RunInstances",
                1,
                ProxyFault::StatusAfterForward(500),
            )),
        }
        true
    }
}

#[tokio::test]
async fn aws_passes_the_provider_conformance_suite() {
    let moto = start_moto();
    let proxy = FaultProxy::start(moto.port()).await;
    let rejecting = FaultProxy::start(moto.port()).await;
    rejecting.add(Rule::new(
        "*",
        usize::MAX,
        ProxyFault::Error {
            status: 401,
            code: "AuthFailure",
        },
    ));
    let peer = Aws {
        _moto: moto,
        proxy,
        rejecting,
    };
    conformance::run(&peer).await;
    // Nothing the suite made is left running.
    let client = raw_client(&format!("http://127.0.0.1:{}", peer._moto.port()));
    let live = raw_live_instances(&client).await;
    assert!(live.is_empty(), "{live:#?}");
}
