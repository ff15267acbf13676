//! The GitHub forge through the shared forge conformance suite: Prism in proxy mode with GitHub's
//! official description (trimmed to the runner paths) in front of the stateful fake
//! (`nimbus_testkit::github`). Each tenant has its own organization, as on GitHub.

mod common;
mod conformance;

use std::sync::Arc;

use conformance::{Fault, ForgePeer};
use nimbus_forge::github::{Auth, GithubConfig, GithubForge};
use nimbus_forge::{Forge, RunnerId};
use nimbus_testkit::github::{FakeGithub, Fault as GhFault, Method};
use nimbus_testkit::prism::Prism;
use nimbus_types::{Secret, TenantId};

use common::*;

const TOKEN: &str = "ghp_conformance_token";
const PATHS: &[&str] = &[
    "/orgs/{org}/actions/runners",
    "/orgs/{org}/actions/runners/generate-jitconfig",
    "/orgs/{org}/actions/runners/{runner_id}",
];

struct Github {
    fake: FakeGithub,
    prism: Prism,
}

/// Each tenant's organization.
fn org_of(tenant_id: TenantId) -> String {
    format!("org-{}", tenant_id.as_uuid().simple())
}

impl Github {
    fn start() -> Github {
        let fake = FakeGithub::start(TOKEN).unwrap();
        let spec = trimmed_github_spec(PATHS).unwrap_or_else(|e| panic!("{e:#}"));
        let prism = Prism::proxy(&spec, &fake.url()).unwrap();
        Github { fake, prism }
    }

    fn build(&self, tenant_id: TenantId, token: &str) -> GithubForge {
        GithubForge::new(GithubConfig {
            api_url: self.prism.url(),
            scope: org(&org_of(tenant_id)),
            auth: Auth::Token(Secret::new(token)),
            webhook_secret: None,
            retry: fast_retry(),
        })
        .unwrap()
    }
}

impl ForgePeer for Github {
    fn name(&self) -> &str {
        "github"
    }

    fn forge(&self, tenant_id: TenantId) -> Arc<dyn Forge> {
        Arc::new(self.build(tenant_id, TOKEN))
    }

    fn wrong_credentials(&self, tenant_id: TenantId) -> (Arc<dyn Forge>, String) {
        let secret = "ghp_wrong_hunter2".to_owned();
        (Arc::new(self.build(tenant_id, &secret)), secret)
    }

    fn connect(&self, runner: RunnerId) {
        self.fake.set_online(runner.0);
    }

    fn run_job_on(&self, runner: RunnerId) {
        self.fake.set_busy(runner.0, true);
    }

    fn take_job_on_remove(&self, runner: RunnerId) {
        self.fake.busy_on_delete(runner.0);
    }

    fn inject(&self, fault: Fault) -> bool {
        match fault {
            Fault::Clear => self.fake.clear_faults(),
            Fault::Throttle(n) => self
                .fake
                .inject(GhFault::new(None, "/", 429, "API rate limit exceeded").times(n)),
            Fault::ServerError(n) => self
                .fake
                .inject(GhFault::new(None, "/", 502, "Server Error").times(n)),
            // The client retries a 5xx create; every attempt it makes loses its answer (the
            // first creates the runner, the others find the name taken), so the call fails.
            Fault::LoseRegistration => self.fake.inject(
                GhFault::new(Some(Method::POST), "/orgs/", 502, "Server Error")
                    .after_effect()
                    .times(fast_retry().max_attempts),
            ),
        }
        true
    }

    fn violations(&self) -> Vec<String> {
        self.prism.violations()
    }
}

#[tokio::test]
async fn github_passes_the_forge_conformance_suite() {
    let peer = Github::start();
    conformance::run(&peer).await;
    let violations = peer.prism.violations();
    assert!(
        violations.is_empty(),
        "{}\n--- prism log ---\n{}",
        violations.join("\n"),
        peer.prism.log()
    );
}
