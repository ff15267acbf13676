//! The GitLab forge through Prism in proxy mode (GitLab's own OpenAPI description, with the
//! runner-list correction documented in `nimbus_testkit::gitlab::gitlab_spec`) in front of the
//! stateful fake: the shared forge conformance suite, then what is GitLab's own (Job Hook
//! deliveries with `X-Gitlab-Token` and `X-Gitlab-Event-UUID`, pending-job demand, the
//! `RateLimit-*` budget).

mod conformance;

use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance::{Fault, ForgePeer};
use nimbus_forge::demand::{DemandBook, MemoryDemandBook, reconcile_demand};
use nimbus_forge::gitlab::RetryPolicy;
use nimbus_forge::gitlab::{
    EVENT_HEADER, GitlabConfig, GitlabForge, JOB_HOOK, RunnerScope, TOKEN_HEADER, UUID_HEADER,
    tenant_tag,
};
use nimbus_forge::webhook::Accepted;
use nimbus_forge::{Forge, JobStatus, RunnerId, WebhookReceiver};
use nimbus_testkit::gitlab::{FakeGitlab, Fault as GlFault, Method, gitlab_spec};
use nimbus_testkit::prism::Prism;
use nimbus_types::{Secret, TenantId};

const TOKEN: &str = "glpat-nimbus-test-token";
const GROUP: u64 = 42;
const PROJECT: u64 = 380;

struct Gitlab {
    fake: FakeGitlab,
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

impl Gitlab {
    fn start() -> Gitlab {
        let fake = FakeGitlab::start(TOKEN).unwrap();
        let prism = Prism::proxy(&gitlab_spec().unwrap(), &fake.url()).unwrap();
        Gitlab { fake, prism }
    }

    fn config(&self, tenant_id: TenantId, token: &str) -> GitlabConfig {
        GitlabConfig {
            tenant_tag: tenant_tag(tenant_id),
            url: self.prism.url(),
            scope: RunnerScope::Group { group_id: GROUP },
            projects: vec![PROJECT],
            token: Secret::new(token),
            webhook_secret: Some(Secret::new("hook-secret")),
            retry: fast_retry(),
        }
    }

    fn concrete(&self, tenant_id: TenantId) -> GitlabForge {
        GitlabForge::new(self.config(tenant_id, TOKEN)).unwrap()
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

impl ForgePeer for Gitlab {
    fn name(&self) -> &str {
        "gitlab"
    }

    fn forge(&self, tenant_id: TenantId) -> Arc<dyn Forge> {
        Arc::new(self.concrete(tenant_id))
    }

    fn wrong_credentials(&self, tenant_id: TenantId) -> (Arc<dyn Forge>, String) {
        let secret = "glpat-wrong-hunter2".to_owned();
        let forge = GitlabForge::new(self.config(tenant_id, &secret)).unwrap();
        (Arc::new(forge), secret)
    }

    fn connect(&self, runner: RunnerId) {
        self.fake.set_online(runner.0, true);
    }

    fn run_job_on(&self, runner: RunnerId) {
        let job = self.fake.queue_job(PROJECT, "acme/app", &["linux"]);
        self.fake.start_job(job, runner.0);
    }

    fn take_job_on_remove(&self, runner: RunnerId) {
        let job = self.fake.queue_job(PROJECT, "acme/app", &["linux"]);
        self.fake.take_job_on_delete(runner.0, job);
    }

    fn inject(&self, fault: Fault) -> bool {
        match fault {
            Fault::Clear => self.fake.clear_faults(),
            Fault::Throttle(n) => self
                .fake
                .inject(GlFault::new(None, "/", 429, "429 Too Many Requests").times(n)),
            Fault::ServerError(n) => self
                .fake
                .inject(GlFault::new(None, "/", 502, "502 Bad Gateway").times(n)),
            Fault::LoseRegistration => self.fake.inject(
                GlFault::new(
                    Some(Method::POST),
                    "/api/v4/user/runners",
                    502,
                    "502 Bad Gateway",
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

#[tokio::test]
async fn gitlab_passes_the_forge_conformance_suite() {
    let peer = Gitlab::start();
    conformance::run(&peer).await;
    peer.assert_clean();
}

#[tokio::test]
async fn runners_are_created_with_the_machines_labels_and_never_leak_the_token() {
    let peer = Gitlab::start();
    let tenant_id = TenantId::new();
    let forge = peer.concrete(tenant_id);
    let jit = forge
        .jit_config(&nimbus_forge::JitRequest {
            name: "nimbus-m1".into(),
            runner_group_id: 1,
            labels: vec!["linux".into(), "gpu".into()],
            work_folder: None,
        })
        .await
        .unwrap();
    let runners = peer.fake.runners();
    assert_eq!(runners.len(), 1);
    let (id, description, tags, token) = &runners[0];
    assert_eq!(RunnerId(*id), jit.runner.id);
    assert_eq!(description, "nimbus-m1");
    assert!(token.starts_with("glrt-"));
    assert_eq!(jit.encoded_jit_config.expose(), token);
    for tag in ["linux", "gpu", "nimbus-nimbus-m1", &tenant_tag(tenant_id)] {
        assert!(tags.iter().any(|t| t == tag), "{tag} missing from {tags:?}");
    }
    assert!(!format!("{jit:?}").contains(token.as_str()));
    // The request went to the documented endpoint with the token in PRIVATE-TOKEN.
    assert!(
        peer.fake
            .requests()
            .iter()
            .any(|r| r.starts_with("POST /api/v4/user/runners"))
    );
    peer.assert_clean();
}

#[tokio::test]
async fn job_hooks_are_verified_and_counted_once() {
    let peer = Gitlab::start();
    let tenant_id = TenantId::new();
    let forge = peer.concrete(tenant_id);
    let book = Arc::new(MemoryDemandBook::new(Duration::from_secs(3600)));
    let receiver = WebhookReceiver::new(tenant_id, forge.webhook_verifier().unwrap(), book.clone());
    let body = include_bytes!("fixtures/gitlab-job-hook.json");
    let headers = |token: &str, uuid: &str| {
        let mut map = http::HeaderMap::new();
        map.insert(TOKEN_HEADER, token.parse().unwrap());
        map.insert(EVENT_HEADER, JOB_HOOK.parse().unwrap());
        map.insert(UUID_HEADER, uuid.parse().unwrap());
        map
    };
    let uuid = "9cebe914-4827-408f-b014-cfa23a47a35f";
    let accepted = receiver
        .receive(&headers("hook-secret", uuid), body)
        .await
        .unwrap();
    assert_eq!(
        accepted,
        Accepted::Recorded {
            job_id: 1977,
            status: "queued"
        }
    );
    // GitLab retries a delivery with the same UUID: counted once.
    assert_eq!(
        receiver
            .receive(&headers("hook-secret", uuid), body)
            .await
            .unwrap(),
        Accepted::Replay
    );
    let jobs = book.jobs(tenant_id).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].job.repository, "gitlab-org/gitlab-test");
    assert_eq!(jobs[0].job.labels.to_string(), "linux,x64");
    assert_eq!(jobs[0].job.status, JobStatus::Queued);
    // A wrong token is a 401, whatever the body.
    let err = receiver
        .receive(&headers("hook-secreT", "other-uuid"), body)
        .await
        .unwrap_err();
    assert_eq!(err.status(), 401);
    let mut no_uuid = headers("hook-secret", "x");
    no_uuid.remove(UUID_HEADER);
    assert_eq!(
        receiver.receive(&no_uuid, body).await.unwrap_err().status(),
        400
    );
    let mut pipeline = headers("hook-secret", "p-1");
    pipeline.insert(EVENT_HEADER, "Pipeline Hook".parse().unwrap());
    assert!(matches!(
        receiver.receive(&pipeline, b"{}").await.unwrap(),
        Accepted::Ignored { .. }
    ));
}

#[tokio::test]
async fn demand_comes_from_the_projects_pending_and_running_jobs() {
    let peer = Gitlab::start();
    let tenant_id = TenantId::new();
    let forge = peer.concrete(tenant_id);
    let queued = peer.fake.queue_job(PROJECT, "acme/app", &["linux", "x64"]);
    let running = peer.fake.queue_job(PROJECT, "acme/app", &["linux"]);
    let runner = peer.fake.add_runner("someone-else", true);
    peer.fake.start_job(running, runner);
    let done = peer.fake.queue_job(PROJECT, "acme/app", &["linux"]);
    peer.fake.finish_job(done);
    peer.fake.queue_job(7, "other/project", &["linux"]);

    let mut jobs = forge
        .demand()
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", peer.prism.violations().join("\n")));
    jobs.sort_by_key(|j| j.job_id);
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
                queued,
                JobStatus::Queued,
                "acme/app".into(),
                "linux,x64".into()
            ),
            (
                running,
                JobStatus::InProgress,
                "acme/app".into(),
                "linux".into()
            ),
        ]
    );
    // The reconcile writes them into the book.
    let book = MemoryDemandBook::new(Duration::from_secs(3600));
    reconcile_demand(&forge, &book, tenant_id).await.unwrap();
    assert_eq!(book.jobs(tenant_id).await.unwrap().len(), 2);
    peer.assert_clean();
}

#[tokio::test]
async fn the_rate_limit_budget_is_waited_for() {
    let peer = Gitlab::start();
    let tenant_id = TenantId::new();
    let forge = peer.concrete(tenant_id);
    forge.list_runners().await.unwrap();
    let budget = forge.rate_limit().expect("RateLimit-* headers were read");
    assert!(budget.remaining > 0 && budget.limit >= budget.remaining);
    // The next answer spends the budget until the reset about a second later.
    peer.fake.set_rate_remaining(1);
    forge.list_runners().await.unwrap();
    assert_eq!(forge.rate_limit().unwrap().remaining, 0);
    let before = peer.fake.requests().len();
    let started = Instant::now();
    forge.list_runners().await.unwrap();
    assert_eq!(
        peer.fake.requests().len(),
        before + 1,
        "no request before the reset"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    // 429 + Retry-After is waited for, then the call succeeds.
    peer.fake.inject(GlFault::new(
        Some(Method::GET),
        "/api/v4/runners",
        429,
        "429 Too Many Requests",
    ));
    forge.list_runners().await.unwrap();
    peer.assert_clean();
}
