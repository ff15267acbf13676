//! Webhook deliveries with real HMAC-SHA256 signatures through the receiver the daemon mounts:
//! wrong or missing signature → 401, replay (recognised by the demand book) → ignored, malformed JSON → 400, unknown event →
//! accepted and ignored, and `workflow_job` actions recorded as demand per label set.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use nimbus_forge::demand::{
    Applied, DemandBook, DemandSnapshot, JobEvent, JobRecord, LabelDemand, ReconcileReport,
};
use nimbus_forge::github::GithubWebhooks;
use nimbus_forge::webhook::{Accepted, WebhookReceiver};
use nimbus_forge::{Error, MemoryDemandBook};
use nimbus_types::{Secret, TenantId};

use common::*;

const SECRET: &str = "hook-secret-0123";

fn receiver() -> (WebhookReceiver, Arc<MemoryDemandBook>, TenantId) {
    let book = Arc::new(MemoryDemandBook::default());
    let tenant = TenantId::new();
    let receiver = WebhookReceiver::new(
        tenant,
        Arc::new(GithubWebhooks::new(Secret::new(SECRET))),
        book.clone(),
    );
    (receiver, book, tenant)
}

async fn rows(book: &MemoryDemandBook, tenant: TenantId) -> Vec<(String, u64, u64, u64)> {
    book.summary(tenant)
        .await
        .unwrap()
        .iter()
        .map(|d| (d.labels.to_string(), d.queued, d.waiting, d.in_progress))
        .collect()
}

#[tokio::test]
async fn a_jobs_life_is_recorded_as_demand() {
    let (receiver, book, tenant) = receiver();
    let labels = ["self-hosted", "linux", "X64"];
    let mut delivery = 0;
    let mut send = |action: &'static str| {
        delivery += 1;
        let body = workflow_job_body(action, 7, &labels);
        let headers = delivery_headers(SECRET, "workflow_job", &format!("d-{delivery}"), &body);
        (headers, body)
    };

    let (headers, body) = send("queued");
    let accepted = receiver.receive(&headers, &body).await.unwrap();
    assert_eq!(
        accepted,
        Accepted::Recorded {
            job_id: 7,
            status: "queued"
        }
    );
    assert_eq!(
        rows(&book, tenant).await,
        [("linux,self-hosted,x64".to_owned(), 1, 0, 0)]
    );

    let (headers, body) = send("in_progress");
    receiver.receive(&headers, &body).await.unwrap();
    assert_eq!(
        rows(&book, tenant).await,
        [("linux,self-hosted,x64".to_owned(), 0, 0, 1)]
    );
    let jobs = book.jobs(tenant).await.unwrap();
    assert_eq!(jobs[0].runner_name.as_deref(), Some("nimbus-m-1"));

    let (headers, body) = send("completed");
    receiver.receive(&headers, &body).await.unwrap();
    assert!(rows(&book, tenant).await.is_empty());

    // A late `queued` for a finished job does not bring it back.
    let (headers, body) = send("queued");
    assert_eq!(
        receiver.receive(&headers, &body).await.unwrap(),
        Accepted::Stale { job_id: 7 }
    );
    assert!(rows(&book, tenant).await.is_empty());
}

#[tokio::test]
async fn waiting_jobs_are_counted_apart() {
    let (receiver, book, tenant) = receiver();
    let body = workflow_job_body("waiting", 8, &["self-hosted"]);
    let headers = delivery_headers(SECRET, "workflow_job", "w-1", &body);
    receiver.receive(&headers, &body).await.unwrap();
    assert_eq!(
        rows(&book, tenant).await,
        [("self-hosted".to_owned(), 0, 1, 0)]
    );
}

#[tokio::test]
async fn wrong_or_missing_signatures_are_401_and_record_nothing() {
    let (receiver, book, tenant) = receiver();
    let body = workflow_job_body("queued", 1, &["linux"]);

    let wrong = delivery_headers("not-the-secret", "workflow_job", "x-1", &body);
    let error = receiver.receive(&wrong, &body).await.unwrap_err();
    assert_eq!(
        (error.status(), error.code()),
        (401, "unauthorized"),
        "{error}"
    );

    let mut missing = delivery_headers(SECRET, "workflow_job", "x-2", &body);
    missing.remove("x-hub-signature-256");
    assert_eq!(
        receiver
            .receive(&missing, &body)
            .await
            .unwrap_err()
            .status(),
        401
    );

    // Signed, then tampered with.
    let signed = delivery_headers(SECRET, "workflow_job", "x-3", &body);
    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] = b' ';
    assert_eq!(
        receiver
            .receive(&signed, &tampered)
            .await
            .unwrap_err()
            .status(),
        401
    );

    // The old SHA-1 header alone is not accepted.
    let mut sha1_only = delivery_headers(SECRET, "workflow_job", "x-4", &body);
    sha1_only.remove("x-hub-signature-256");
    sha1_only.insert("x-hub-signature", "sha1=0000".parse().unwrap());
    assert_eq!(
        receiver
            .receive(&sha1_only, &body)
            .await
            .unwrap_err()
            .status(),
        401
    );

    assert!(rows(&book, tenant).await.is_empty());
    // A refused delivery does not use up its id: the genuine one still counts.
    let genuine = delivery_headers(SECRET, "workflow_job", "x-1", &body);
    assert!(matches!(
        receiver.receive(&genuine, &body).await.unwrap(),
        Accepted::Recorded { .. }
    ));
}

#[tokio::test]
async fn replayed_deliveries_are_ignored() {
    let (receiver, book, tenant) = receiver();
    let queued = workflow_job_body("queued", 5, &["linux"]);
    let headers = delivery_headers(SECRET, "workflow_job", "same-id", &queued);
    receiver.receive(&headers, &queued).await.unwrap();
    assert_eq!(
        receiver.receive(&headers, &queued).await.unwrap(),
        Accepted::Replay
    );
    assert_eq!(rows(&book, tenant).await, [("linux".to_owned(), 1, 0, 0)]);
    // Even a different body under a used id is a replay (GitHub's redelivery reuses ids).
    let other = workflow_job_body("queued", 6, &["linux"]);
    let headers = delivery_headers(SECRET, "workflow_job", "same-id", &other);
    assert_eq!(
        receiver.receive(&headers, &other).await.unwrap(),
        Accepted::Replay
    );
    assert_eq!(rows(&book, tenant).await, [("linux".to_owned(), 1, 0, 0)]);
}

#[tokio::test]
async fn malformed_signed_deliveries_are_400() {
    let (receiver, book, tenant) = receiver();
    for (idx, body) in [
        &b"{\"action\": \"queued\", "[..],
        br#"{"action":"queued","workflow_job":{"id":"seven","run_id":1},"repository":{"full_name":"a/b"}}"#,
        br#"{"action":"queued","repository":{"full_name":"a/b"}}"#,
        b"",
    ]
    .iter()
    .enumerate()
    {
        let headers = delivery_headers(SECRET, "workflow_job", &format!("m-{idx}"), body);
        let error = receiver.receive(&headers, body).await.unwrap_err();
        assert_eq!((error.status(), error.code()), (400, "bad_request"), "body {idx}: {error}");
    }
    let body = workflow_job_body("queued", 1, &["linux"]);
    let mut no_event = delivery_headers(SECRET, "workflow_job", "m-9", &body);
    no_event.remove("x-github-event");
    assert_eq!(
        receiver
            .receive(&no_event, &body)
            .await
            .unwrap_err()
            .status(),
        400
    );
    let mut no_id = delivery_headers(SECRET, "workflow_job", "m-10", &body);
    no_id.remove("x-github-delivery");
    assert_eq!(
        receiver.receive(&no_id, &body).await.unwrap_err().status(),
        400
    );
    assert!(rows(&book, tenant).await.is_empty());
}

#[tokio::test]
async fn unknown_events_and_pings_are_accepted_and_ignored() {
    let (receiver, book, tenant) = receiver();
    let push = br#"{"ref":"refs/heads/main"}"#;
    let headers = delivery_headers(SECRET, "push", "p-1", push);
    assert_eq!(
        receiver.receive(&headers, push).await.unwrap(),
        Accepted::Ignored {
            event: "push".into()
        }
    );
    let ping = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let headers = delivery_headers(SECRET, "ping", "p-2", ping);
    assert_eq!(
        receiver.receive(&headers, ping).await.unwrap(),
        Accepted::Ping
    );
    let requested = workflow_job_body("requested", 3, &["linux"]);
    let headers = delivery_headers(SECRET, "workflow_job", "p-3", &requested);
    assert!(matches!(
        receiver.receive(&headers, &requested).await.unwrap(),
        Accepted::Ignored { .. }
    ));
    assert!(rows(&book, tenant).await.is_empty());
}

#[tokio::test]
async fn tenants_do_not_see_each_others_demand() {
    let book = Arc::new(MemoryDemandBook::default());
    let (a, b) = (TenantId::new(), TenantId::new());
    let hooks = |secret: &str| Arc::new(GithubWebhooks::new(Secret::new(secret)));
    let receiver_a = WebhookReceiver::new(a, hooks("secret-a"), book.clone());
    let receiver_b = WebhookReceiver::new(b, hooks("secret-b"), book.clone());
    let body = workflow_job_body("queued", 1, &["linux"]);
    receiver_a
        .receive(
            &delivery_headers("secret-a", "workflow_job", "t-1", &body),
            &body,
        )
        .await
        .unwrap();
    // Tenant A's secret does not open tenant B's endpoint.
    let error = receiver_b
        .receive(
            &delivery_headers("secret-a", "workflow_job", "t-2", &body),
            &body,
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), 401);
    assert_eq!(rows(&book, a).await.len(), 1);
    assert!(rows(&book, b).await.is_empty());
}

/// A book whose storage fails, like a store that is down.
struct BrokenBook;

#[async_trait]
impl DemandBook for BrokenBook {
    async fn apply(
        &self,
        _: TenantId,
        _: Option<&str>,
        _: &JobEvent,
    ) -> nimbus_forge::Result<Applied> {
        Err(Error::Retryable("database is unavailable".into()))
    }
    async fn reconcile(
        &self,
        _: TenantId,
        _: &DemandSnapshot,
    ) -> nimbus_forge::Result<ReconcileReport> {
        Err(Error::Retryable("database is unavailable".into()))
    }
    async fn summary(&self, _: TenantId) -> nimbus_forge::Result<Vec<LabelDemand>> {
        Ok(Vec::new())
    }
    async fn jobs(&self, _: TenantId) -> nimbus_forge::Result<Vec<JobRecord>> {
        Ok(Vec::new())
    }
}

#[tokio::test]
async fn a_failed_recording_is_503_and_the_redelivery_is_processed() {
    let receiver = WebhookReceiver::new(
        TenantId::new(),
        Arc::new(GithubWebhooks::new(Secret::new(SECRET))),
        Arc::new(BrokenBook),
    );
    let body = workflow_job_body("queued", 1, &["linux"]);
    let headers = delivery_headers(SECRET, "workflow_job", "r-1", &body);
    let error = receiver.receive(&headers, &body).await.unwrap_err();
    assert_eq!(error.status(), 503);
    // Not remembered as seen: GitHub's redelivery is tried again (and fails again here).
    assert_eq!(
        receiver
            .receive(&headers, &body)
            .await
            .unwrap_err()
            .status(),
        503
    );
}
