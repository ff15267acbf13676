//! The Forgejo forge through Prism in proxy mode (Forgejo's own Swagger description, served at
//! Prism's root: the client's API base is configurable) in front of the stateful fake: the
//! shared forge conformance suite, then what is Forgejo's own (direct creation without labels,
//! the runner connecting with its uuid and token, the legacy registration-token flow, demand
//! from the runner job list).

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use conformance::{Fault, ForgePeer};
use nimbus_forge::demand::{DemandBook, MemoryDemandBook, reconcile_demand};
use nimbus_forge::forgejo::{
    ForgejoConfig, ForgejoForge, Registration, RetryPolicy, RunnerScope, tenant_marker,
};
use nimbus_forge::{Forge, JitKind, JitRequest, JobStatus, RunnerId, RunnerStatus};
use nimbus_testkit::forgejo::{FakeForgejo, Fault as FjFault, Method};
use nimbus_testkit::prism::{Prism, vendor_spec};
use nimbus_types::{Secret, TenantId};

const TOKEN: &str = "0123456789abcdef0123456789abcdef01234567";
const ORG: &str = "acme";

struct Forgejo {
    fake: FakeForgejo,
    prism: Prism,
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        request_timeout: Duration::from_secs(10),
        call_timeout: Duration::from_secs(20),
        max_attempts: 4,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        max_rate_limit_wait: Duration::from_secs(5),
    }
}

impl Forgejo {
    fn start() -> Forgejo {
        let fake = FakeForgejo::start(TOKEN).unwrap();
        let prism = Prism::proxy(&vendor_spec("forgejo.json").unwrap(), &fake.url()).unwrap();
        Forgejo { fake, prism }
    }

    fn config(&self, tenant_id: TenantId, token: &str, scope: RunnerScope) -> ForgejoConfig {
        ForgejoConfig {
            tenant_marker: tenant_marker(tenant_id),
            url: "https://forgejo.example".into(),
            // Prism serves the description's paths at its root, without `/api/v1`.
            api_url: self.prism.url(),
            scope,
            registration: Registration::Auto,
            token: Secret::new(token),
            poll_interval: Duration::from_secs(15),
            retry: fast_retry(),
        }
    }

    fn org() -> RunnerScope {
        RunnerScope::Org { org: ORG.into() }
    }

    fn concrete(&self, tenant_id: TenantId) -> ForgejoForge {
        ForgejoForge::new(self.config(tenant_id, TOKEN, Self::org())).unwrap()
    }

    fn assert_clean(&self) {
        let violations = self.prism.violations();
        assert!(
            violations.is_empty(),
            "Prism found invalid requests or responses:\n{}\n--- prism log ---\n{}",
            violations.join("\n"),
            self.prism.log()
        );
    }
}

impl ForgePeer for Forgejo {
    fn name(&self) -> &str {
        "forgejo"
    }

    fn forge(&self, tenant_id: TenantId) -> Arc<dyn Forge> {
        Arc::new(self.concrete(tenant_id))
    }

    fn wrong_credentials(&self, tenant_id: TenantId) -> (Arc<dyn Forge>, String) {
        let secret = "fedcba9876543210fedcba9876543210hunter22".to_owned();
        let forge = ForgejoForge::new(self.config(tenant_id, &secret, Self::org())).unwrap();
        (Arc::new(forge), secret)
    }

    fn connect(&self, runner: RunnerId) {
        self.fake.set_online(runner.0);
    }

    fn run_job_on(&self, runner: RunnerId) {
        let job = self.fake.queue_job(ORG, "app", 11, &["linux"]);
        self.fake.start_job(job, runner.0);
    }

    fn take_job_on_remove(&self, runner: RunnerId) {
        let job = self.fake.queue_job(ORG, "app", 11, &["linux"]);
        self.fake.take_job_on_delete(runner.0, job);
    }

    fn inject(&self, fault: Fault) -> bool {
        match fault {
            Fault::Clear => self.fake.clear_faults(),
            Fault::Throttle(n) => self
                .fake
                .inject(FjFault::new(None, "/", 429, "rate limited").times(n)),
            Fault::ServerError(n) => self
                .fake
                .inject(FjFault::new(None, "/", 502, "bad gateway").times(n)),
            Fault::LoseRegistration => self.fake.inject(
                FjFault::new(
                    Some(Method::POST),
                    "/orgs/acme/actions/runners",
                    502,
                    "bad gateway",
                )
                .after_effect(),
            ),
        }
        true
    }

    fn violations(&self) -> Vec<String> {
        self.prism.violations()
    }
}

fn request(name: &str, labels: &[&str]) -> JitRequest {
    JitRequest {
        name: name.to_owned(),
        runner_group_id: 1,
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        work_folder: None,
    }
}

#[tokio::test]
async fn forgejo_passes_the_forge_conformance_suite() {
    let peer = Forgejo::start();
    conformance::run(&peer).await;
    peer.assert_clean();
}

#[tokio::test]
async fn runners_are_created_directly_and_declare_their_labels_when_they_connect() {
    let peer = Forgejo::start();
    let tenant_id = TenantId::new();
    let forge = peer.concrete(tenant_id);
    let jit = forge
        .jit_config(&request("nimbus-m1", &["linux", "gpu"]))
        .await
        .unwrap();
    let uuid = match &jit.kind {
        JitKind::RunnerIdentity { uuid } => uuid.clone(),
        other => panic!("a Forgejo 15+ runner is created directly, not {other:?}"),
    };
    let runners = peer.fake.runners();
    assert_eq!(runners.len(), 1);
    let (id, name, description, labels, token) = &runners[0];
    assert_eq!(RunnerId(*id), jit.runner.id);
    assert_eq!(name, "nimbus-m1");
    assert_eq!(description, &tenant_marker(tenant_id));
    assert!(labels.is_empty(), "the server sets no labels: {labels:?}");
    assert_eq!(jit.encoded_jit_config.expose(), token);
    assert!(!format!("{jit:?}").contains(token.as_str()));
    assert!(jit.runner.ephemeral, "one-job runners are ephemeral");
    // The labels the machine must declare: its own, the unique one, the tenant's marker.
    for label in [
        "linux",
        "gpu",
        "nimbus-nimbus-m1",
        &tenant_marker(tenant_id),
    ] {
        assert!(
            jit.runner.labels.iter().any(|l| l == label),
            "{label} missing from {:?}",
            jit.runner.labels
        );
    }
    // The machine connects with uuid and token and declares them; a wrong token is refused.
    let declared: Vec<&str> = jit.runner.labels.iter().map(String::as_str).collect();
    assert!(!peer.fake.connect(&uuid, "wrong", &declared));
    assert!(peer.fake.connect(&uuid, token, &declared));
    let listed = forge.get_runner(jit.runner.id).await.unwrap();
    assert_eq!(listed.status, RunnerStatus::Idle);
    assert!(listed.labels.iter().any(|l| l == "gpu"), "{listed:?}");
    assert!(
        peer.fake
            .requests()
            .iter()
            .any(|r| r.starts_with("POST /orgs/acme/actions/runners"))
    );
    peer.assert_clean();
}

#[tokio::test]
async fn older_servers_get_the_legacy_registration_token() {
    let peer = Forgejo::start();
    peer.fake.disable_direct_creation();
    let tenant_id = TenantId::new();
    let forge = peer.concrete(tenant_id);
    let jit = forge
        .jit_config(&request("nimbus-m2", &["linux"]))
        .await
        .unwrap();
    assert_eq!(jit.kind, JitKind::RegistrationToken);
    assert_eq!(
        jit.encoded_jit_config.expose(),
        peer.fake.registration_token()
    );
    // The machine registers with the token and the labels it was given (tenant marker too),
    // so the runner is this tenant's: listed, and removed by the sweep when orphaned.
    let declared: Vec<&str> = jit.runner.labels.iter().map(String::as_str).collect();
    let id = peer
        .fake
        .register_with_token(
            "orgs/acme",
            jit.encoded_jit_config.expose(),
            "nimbus-m2",
            &declared,
        )
        .unwrap();
    let runners = forge.list_runners().await.unwrap();
    assert_eq!(
        runners.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![RunnerId(id)]
    );
    assert_eq!(runners[0].status, RunnerStatus::Idle);
    // The answer is remembered: the next registration does not try direct creation again.
    let posts = |peer: &Forgejo| {
        peer.fake
            .requests()
            .iter()
            .filter(|r| r.starts_with("POST "))
            .count()
    };
    let before = posts(&peer);
    forge
        .jit_config(&request("nimbus-m3", &["linux"]))
        .await
        .unwrap();
    assert_eq!(posts(&peer), before);
    // A tenant that insists on direct creation gets the server's refusal.
    let mut direct = peer.config(tenant_id, TOKEN, Forgejo::org());
    direct.registration = Registration::Direct;
    let err = ForgejoForge::new(direct)
        .unwrap()
        .jit_config(&request("nimbus-m4", &["linux"]))
        .await
        .unwrap_err();
    assert!(matches!(err, nimbus_forge::Error::NotFound(_)), "{err:?}");
    peer.assert_clean();
}

#[tokio::test]
async fn demand_comes_from_the_runner_job_list() {
    let peer = Forgejo::start();
    let tenant_id = TenantId::new();
    let forge = peer.concrete(tenant_id);
    let waiting = peer.fake.queue_job(ORG, "app", 11, &["linux", "x64"]);
    let running = peer.fake.queue_job(ORG, "app", 11, &["linux"]);
    let other = peer.fake.add_runner("orgs/acme", "someone-else", "");
    peer.fake.start_job(running, other);
    let done = peer.fake.queue_job(ORG, "app", 11, &["linux"]);
    peer.fake.finish_job(done);
    peer.fake.queue_job("elsewhere", "app", 12, &["linux"]);

    let jobs = forge
        .demand()
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", peer.prism.violations().join("\n")));
    let summary: Vec<(u64, JobStatus, String, String)> = jobs
        .iter()
        .map(|j| {
            (
                j.job_id,
                j.status,
                j.repository.clone(),
                j.labels.to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                waiting,
                JobStatus::Queued,
                "acme/11".into(),
                "linux,x64".into()
            ),
            (
                running,
                JobStatus::InProgress,
                "acme/11".into(),
                "linux".into()
            ),
        ]
    );
    assert_eq!(forge.demand_poll_period(), Duration::from_secs(15));
    let book = MemoryDemandBook::new(Duration::from_secs(3600));
    reconcile_demand(&forge, &book, tenant_id).await.unwrap();
    assert_eq!(book.jobs(tenant_id).await.unwrap().len(), 2);

    // A repository's forge reads that repository's list and names it.
    let repo = ForgejoForge::new(peer.config(
        tenant_id,
        TOKEN,
        RunnerScope::Repo {
            owner: ORG.into(),
            repo: "app".into(),
        },
    ))
    .unwrap();
    let jobs = repo.demand().await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j.repository == "acme/app"));
    peer.assert_clean();
}

#[tokio::test]
async fn a_runner_removed_while_a_job_started_stays_busy_until_the_job_ends() {
    let peer = Forgejo::start();
    let tenant_id = TenantId::new();
    let forge = peer.concrete(tenant_id);
    let jit = forge
        .jit_config(&request("nimbus-m5", &["linux"]))
        .await
        .unwrap();
    peer.fake.set_online(jit.runner.id.0);
    let job = peer.fake.queue_job(ORG, "app", 11, &["linux"]);
    peer.fake.take_job_on_delete(jit.runner.id.0, job);
    forge.remove_runner(jit.runner.id).await.unwrap();
    assert_eq!(
        forge.runner_status(jit.runner.id).await.unwrap(),
        RunnerStatus::Busy
    );
    assert_eq!(
        forge.runner_status(jit.runner.id).await.unwrap(),
        RunnerStatus::Busy,
        "busy for as long as the job runs"
    );
    peer.fake.finish_job(job);
    assert!(matches!(
        forge.runner_status(jit.runner.id).await,
        Err(nimbus_forge::Error::NotFound(_))
    ));
    peer.assert_clean();
}
