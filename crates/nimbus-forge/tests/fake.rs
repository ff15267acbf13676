//! What Prism cannot show, against a stateful fake GitHub (wiremock): token expiry and refresh,
//! single-flight exchanges, pagination, rate-limit and 5xx sequences, timeouts, and a runner
//! that turns busy between the check and the removal.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nimbus_forge::demand::{
    Applied, DemandBook, ForgeJob, JobEvent, JobStatus, LabelSet, reconcile_demand,
};
use nimbus_forge::lifecycle::{MemorySink, Subject};
use nimbus_forge::{
    Error, Forge, JitRequest, MemoryDemandBook, Outcome, RunnerId, deregister_then_check,
    register_jit_runner,
};
use nimbus_types::TenantId;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use common::*;

const TOKENS: &str = "/app/installations/777/access_tokens";
const REG: &str = "/orgs/acme/actions/runners/registration-token";

fn reg_token() -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(serde_json::json!({
        "token": "AABF3JGZDX3P5PMEXLND6TS6FCWO6",
        "expires_at": "2030-01-01T00:00:00Z"
    }))
}

fn requests_to(requests: &[wiremock::Request], wanted: &str) -> usize {
    requests.iter().filter(|r| r.url.path() == wanted).count()
}

async fn tokens_mock(server: &MockServer, exchange: TokenExchange) -> TokenExchange {
    Mock::given(method("POST"))
        .and(path(TOKENS))
        .respond_with(exchange.clone())
        .mount(server)
        .await;
    exchange
}

#[tokio::test]
async fn installation_token_is_cached_and_refreshed_before_expiry() {
    let server = MockServer::start().await;
    let key = app_key().unwrap_or_else(|e| panic!("{e:#}"));
    // Valid for 5 min + 2 s: usable for 2 s before the 5-minute refresh margin.
    let lifetime = time::Duration::seconds(5 * 60 + 2);
    let exchange = tokens_mock(&server, TokenExchange::new(&key, lifetime)).await;
    Mock::given(method("POST"))
        .and(path(REG))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(reg_token())
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(REG))
        .and(header("authorization", "Bearer tok-2"))
        .respond_with(reg_token())
        .mount(&server)
        .await;
    let forge = app_forge(&server.uri(), org("acme"), &key, fast_retry());
    for _ in 0..3 {
        forge
            .registration_token()
            .await
            .unwrap_or_else(|e| panic!("{e}; JWT problems: {:?}", exchange.problems));
    }
    assert_eq!(
        exchange.issued.load(Ordering::SeqCst),
        1,
        "three calls, one exchange"
    );
    tokio::time::sleep(Duration::from_millis(2300)).await;
    forge.registration_token().await.unwrap();
    assert_eq!(
        exchange.issued.load(Ordering::SeqCst),
        2,
        "a token within 5 minutes of expiry is renewed"
    );
    assert!(exchange.problems.lock().unwrap().is_empty());
    assert_eq!(forge.token_exchanges(), 2);
}

#[tokio::test]
async fn concurrent_callers_share_one_token_exchange() {
    let server = MockServer::start().await;
    let key = app_key().unwrap_or_else(|e| panic!("{e:#}"));
    let exchange =
        TokenExchange::new(&key, time::Duration::hours(1)).delayed(Duration::from_millis(300));
    let exchange = tokens_mock(&server, exchange).await;
    Mock::given(method("POST"))
        .and(path(REG))
        .respond_with(reg_token())
        .mount(&server)
        .await;
    let forge = Arc::new(app_forge(&server.uri(), org("acme"), &key, fast_retry()));
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let forge = forge.clone();
            tokio::spawn(async move { forge.registration_token().await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let requests = server.received_requests().await.unwrap();
    assert_eq!(
        requests_to(&requests, TOKENS),
        1,
        "single flight: one exchange for 50 callers"
    );
    assert_eq!(requests_to(&requests, REG), 50);
    assert_eq!(exchange.issued.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn revoked_installation_token_is_replaced_once() {
    let server = MockServer::start().await;
    let key = app_key().unwrap_or_else(|e| panic!("{e:#}"));
    let exchange = tokens_mock(&server, TokenExchange::new(&key, time::Duration::hours(1))).await;
    Mock::given(method("POST"))
        .and(path(REG))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(serde_json::json!({"message": "Bad credentials"})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(REG))
        .and(header("authorization", "Bearer tok-2"))
        .respond_with(reg_token())
        .mount(&server)
        .await;
    let forge = app_forge(&server.uri(), org("acme"), &key, fast_retry());
    forge
        .registration_token()
        .await
        .expect("retried with a fresh token");
    assert_eq!(exchange.issued.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn bad_credentials_are_unauthorized_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/orgs/acme/actions/runners"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(serde_json::json!({"message": "Bad credentials"})),
        )
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), org("acme"), fast_retry());
    let error = forge.list_runners().await.unwrap_err();
    assert!(matches!(error, Error::Unauthorized(_)), "{error:?}");
    assert!(!error.is_retryable());
    let message = error.to_string();
    assert!(!message.contains("ghp_test_token"), "{message}");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn list_runners_walks_every_page_and_never_follows_foreign_links() {
    let server = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    let page = |first: u64, n: u64, next: bool| {
        let runners: Vec<_> = (first..first + n)
            .map(|id| runner_json(id, false, "online"))
            .collect();
        let mut template = ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({ "total_count": 250, "runners": runners }));
        if next {
            // A Link pointing at another host must not receive the token.
            template = template.insert_header(
                "link",
                format!(
                    "<{}/steal?page=2>; rel=\"next\", <{}/steal?page=3>; rel=\"last\"",
                    elsewhere.uri(),
                    elsewhere.uri()
                ),
            );
        }
        template
    };
    for (page_no, first, n, next) in [(1, 1, 100, true), (2, 101, 100, true), (3, 201, 50, false)] {
        Mock::given(method("GET"))
            .and(path("/orgs/acme/actions/runners"))
            .and(query_param("per_page", "100"))
            .and(query_param("page", page_no.to_string()))
            .respond_with(page(first, n, next))
            .expect(1)
            .mount(&server)
            .await;
    }
    let forge = token_forge(&server.uri(), org("acme"), fast_retry());
    let runners = forge.list_runners().await.unwrap();
    assert_eq!(runners.len(), 250);
    assert_eq!(runners.first().unwrap().id, RunnerId(1));
    assert_eq!(runners.last().unwrap().id, RunnerId(250));
    assert!(elsewhere.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn secondary_rate_limit_waits_for_retry_after() {
    let server = MockServer::start().await;
    let limited = ResponseTemplate::new(403)
        .insert_header("retry-after", "1")
        .set_body_json(serde_json::json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}));
    Mock::given(method("POST"))
        .and(path(REG))
        .respond_with(Sequence::new(vec![limited, reg_token()]))
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), org("acme"), fast_retry());
    let started = Instant::now();
    forge.registration_token().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn primary_rate_limit_short_reset_is_waited_out() {
    let server = MockServer::start().await;
    let reset = time::OffsetDateTime::now_utc().unix_timestamp() + 2;
    let spent = ResponseTemplate::new(403)
        .insert_header("x-ratelimit-limit", "5000")
        .insert_header("x-ratelimit-remaining", "0")
        .insert_header("x-ratelimit-reset", reset.to_string())
        .insert_header("x-ratelimit-resource", "core")
        .set_body_json(
            serde_json::json!({"message": "API rate limit exceeded for installation ID 777."}),
        );
    let ok = reg_token()
        .insert_header("x-ratelimit-limit", "5000")
        .insert_header("x-ratelimit-remaining", "4999")
        .insert_header("x-ratelimit-reset", (reset + 3600).to_string());
    Mock::given(method("POST"))
        .and(path(REG))
        .respond_with(Sequence::new(vec![spent, ok]))
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), org("acme"), fast_retry());
    forge.registration_token().await.unwrap();
    let budget = forge.rate_limit().expect("budget observed");
    assert_eq!((budget.limit, budget.remaining), (5000, 4999));
    assert_eq!(budget.key, "token");
    assert_eq!(forge.budget_key(), "token");
}

#[tokio::test]
async fn primary_rate_limit_long_reset_fails_fast_and_holds_back_requests() {
    let server = MockServer::start().await;
    let reset = time::OffsetDateTime::now_utc().unix_timestamp() + 1800;
    Mock::given(method("GET"))
        .and(path("/orgs/acme/actions/runners"))
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("x-ratelimit-limit", "5000")
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", reset.to_string())
                .set_body_json(serde_json::json!({"message": "API rate limit exceeded"})),
        )
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), org("acme"), fast_retry());
    let started = Instant::now();
    let error = forge.list_runners().await.unwrap_err();
    let Error::RateLimited { reset: until } = error else {
        panic!("expected RateLimited, got {error:?}");
    };
    assert!(until.unix_timestamp() >= reset - 2, "reset {until}");
    assert!(error_is_fast(started));
    assert_eq!(forge.rate_limit().unwrap().remaining, 0);
    // The budget is known to be spent: the next call does not even ask.
    let again = forge.list_runners().await.unwrap_err();
    assert!(matches!(again, Error::RateLimited { .. }), "{again:?}");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

fn error_is_fast(started: Instant) -> bool {
    started.elapsed() < Duration::from_secs(2)
}

#[tokio::test]
async fn too_many_requests_without_hints_backs_off_a_minute() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/orgs/acme/actions/runners"))
        .respond_with(ResponseTemplate::new(429))
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), org("acme"), fast_retry());
    let before = time::OffsetDateTime::now_utc();
    let error = forge.list_runners().await.unwrap_err();
    match error {
        // A minute exceeds the 5 s in-place wait of the test policy: the caller requeues.
        Error::RateLimited { reset } => assert!(reset - before >= time::Duration::seconds(59)),
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

#[tokio::test]
async fn permission_errors_are_permanent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(REG))
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("x-ratelimit-remaining", "4000")
                .set_body_json(
                    serde_json::json!({"message": "Resource not accessible by integration"}),
                ),
        )
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), org("acme"), fast_retry());
    let error = forge.registration_token().await.unwrap_err();
    assert!(
        matches!(&error, Error::Permanent(m) if m.contains("Resource not accessible")),
        "{error:?}"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(REG))
        .respond_with(Sequence::new(vec![
            ResponseTemplate::new(502),
            ResponseTemplate::new(503),
            reg_token(),
        ]))
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), org("acme"), fast_retry());
    forge.registration_token().await.unwrap();
    assert_eq!(server.received_requests().await.unwrap().len(), 3);

    let failing = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(REG))
        .respond_with(ResponseTemplate::new(500).set_body_string("boom"))
        .mount(&failing)
        .await;
    let forge = token_forge(&failing.uri(), org("acme"), fast_retry());
    let error = forge.registration_token().await.unwrap_err();
    assert!(matches!(error, Error::Retryable(_)), "{error:?}");
    assert_eq!(
        failing.received_requests().await.unwrap().len(),
        4,
        "max_attempts"
    );
}

#[tokio::test]
async fn slow_responses_time_out_and_are_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(REG))
        .respond_with(Sequence::new(vec![
            reg_token().set_delay(Duration::from_secs(3)),
            reg_token(),
        ]))
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), org("acme"), fast_retry());
    forge
        .registration_token()
        .await
        .expect("second attempt answers in time");
    assert_eq!(server.received_requests().await.unwrap().len(), 2);

    // The whole call has a deadline too, retries included.
    let stuck = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(REG))
        .respond_with(reg_token().set_delay(Duration::from_secs(10)))
        .mount(&stuck)
        .await;
    let mut policy = fast_retry();
    policy.request_timeout = Duration::from_secs(30);
    policy.call_timeout = Duration::from_millis(500);
    let forge = token_forge(&stuck.uri(), org("acme"), policy);
    let started = Instant::now();
    let error = forge.registration_token().await.unwrap_err();
    assert!(matches!(error, Error::Retryable(_)), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unreachable_api_is_retryable() {
    let port = nimbus_testkit::free_port();
    let forge = token_forge(
        &format!("http://127.0.0.1:{port}"),
        org("acme"),
        fast_retry(),
    );
    let error = forge.list_runners().await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
}

const RUNNER: &str = "/orgs/acme/actions/runners/42";

fn subject() -> Subject {
    Subject {
        tenant_id: TenantId::new(),
        machine_id: Some(nimbus_types::MachineId::new()),
    }
}

#[tokio::test]
async fn runner_turning_busy_during_removal_is_never_reported_removed() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(RUNNER))
        .respond_with(Sequence::new(vec![
            ResponseTemplate::new(200).set_body_json(runner_json(42, false, "online")),
            ResponseTemplate::new(200).set_body_json(runner_json(42, true, "online")),
        ]))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(RUNNER))
        .respond_with(ResponseTemplate::new(422).set_body_json(serde_json::json!({
            "message": "Bad request - Runner \"runner-42\" is still running a job\""
        })))
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), org("acme"), fast_retry());
    let sink = MemorySink::default();
    let outcome = deregister_then_check(&forge, RunnerId(42), subject(), &sink)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Busy);
    assert_eq!(
        sink.names(),
        [
            "nimbus.forge.unregister_runner_start",
            "nimbus.forge.unregister_runner_failure"
        ]
    );
    let events = sink.events();
    assert_eq!(events[1].error.as_deref(), Some("runner is busy"));
    assert!(
        events
            .iter()
            .all(|e| e.tenant_id.is_some() && e.machine_id.is_some())
    );
}

#[tokio::test]
async fn runner_busy_after_an_accepted_removal_is_busy() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(RUNNER))
        .respond_with(Sequence::new(vec![
            ResponseTemplate::new(200).set_body_json(runner_json(42, false, "online")),
            ResponseTemplate::new(200).set_body_json(runner_json(42, true, "online")),
        ]))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(RUNNER))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), org("acme"), fast_retry());
    let outcome = deregister_then_check(&forge, RunnerId(42), subject(), &MemorySink::default())
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Busy);
}

#[tokio::test]
async fn busy_runner_is_not_even_asked_to_leave() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(RUNNER))
        .respond_with(ResponseTemplate::new(200).set_body_json(runner_json(42, true, "online")))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(RUNNER))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), org("acme"), fast_retry());
    let outcome = deregister_then_check(&forge, RunnerId(42), subject(), &MemorySink::default())
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Busy);
}

#[tokio::test]
async fn idle_runner_is_removed_and_gone_runner_is_fine() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(RUNNER))
        .respond_with(Sequence::new(vec![
            ResponseTemplate::new(200).set_body_json(runner_json(42, false, "offline")),
            ResponseTemplate::new(404).set_body_json(serde_json::json!({"message": "Not Found"})),
        ]))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(RUNNER))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), org("acme"), fast_retry());
    let sink = MemorySink::default();
    let outcome = deregister_then_check(&forge, RunnerId(42), subject(), &sink)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Removed);
    assert_eq!(sink.names()[1], "nimbus.forge.unregister_runner_success");
    assert_eq!(sink.events()[1].metadata["outcome"], "removed");
    assert!(sink.events()[1].duration.is_some());

    // Asked again (a retried terminate): the runner is gone, which is fine.
    let outcome = deregister_then_check(&forge, RunnerId(42), subject(), &sink)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::AlreadyGone);
}

#[tokio::test]
async fn deregistration_errors_are_reported_not_swallowed() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(RUNNER))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), org("acme"), fast_retry());
    let sink = MemorySink::default();
    let error = deregister_then_check(&forge, RunnerId(42), subject(), &sink)
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert_eq!(sink.names()[1], "nimbus.forge.unregister_runner_failure");
    assert!(sink.events()[1].error.is_some());
}

#[tokio::test]
async fn jit_registration_emits_events_and_sends_the_unique_label() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/repos/acme/app/actions/runners/generate-jitconfig"))
        .and(wiremock::matchers::body_json(serde_json::json!({
            "name": "m-7",
            "runner_group_id": 1,
            "labels": ["self-hosted", "linux", "nimbus-m-7"]
        })))
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({
            "runner": runner_json(7, false, "offline"),
            "encoded_jit_config": "eyJzZWNyZXQiOiJ0b3AifQ=="
        })))
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), repo("acme", "app"), fast_retry());
    let sink = MemorySink::default();
    let request = JitRequest {
        name: "m-7".into(),
        runner_group_id: 1,
        labels: vec!["self-hosted".into(), "linux".into()],
        work_folder: None,
    };
    let config = register_jit_runner(&forge, &request, subject(), &sink)
        .await
        .unwrap();
    assert_eq!(config.runner.id, RunnerId(7));
    assert_eq!(config.unique_label, "nimbus-m-7");
    assert_eq!(format!("{:?}", config.encoded_jit_config), "[redacted]");
    assert_eq!(
        sink.names(),
        [
            "nimbus.forge.register_runner_start",
            "nimbus.forge.register_runner_success"
        ]
    );
    assert!(
        !serde_json::to_string(&sink.events())
            .unwrap()
            .contains("eyJzZWNyZXQ")
    );
}

fn runs(ids: &[u64]) -> ResponseTemplate {
    let runs: Vec<_> = ids
        .iter()
        .map(|id| serde_json::json!({"id": id, "status": "queued"}))
        .collect();
    ResponseTemplate::new(200)
        .set_body_json(serde_json::json!({"total_count": ids.len(), "workflow_runs": runs}))
}

fn jobs(list: &[(u64, u64, &str, &[&str])]) -> ResponseTemplate {
    let jobs: Vec<_> = list
        .iter()
        .map(|(id, run, status, labels)| serde_json::json!({"id": id, "run_id": run, "status": status, "labels": labels}))
        .collect();
    ResponseTemplate::new(200)
        .set_body_json(serde_json::json!({"total_count": list.len(), "jobs": jobs}))
}

#[tokio::test]
async fn demand_reconcile_corrects_the_book_from_the_job_api() {
    let server = MockServer::start().await;
    let runs_path = "/repos/acme/app/actions/runs";
    Mock::given(method("GET"))
        .and(path(runs_path))
        .and(query_param("status", "queued"))
        .respond_with(runs(&[1]))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(runs_path))
        .and(query_param("status", "in_progress"))
        .respond_with(runs(&[2]))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/app/actions/runs/1/jobs"))
        .respond_with(jobs(&[(11, 1, "queued", &["self-hosted", "linux"])]))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/app/actions/runs/2/jobs"))
        .respond_with(jobs(&[
            (21, 2, "in_progress", &["self-hosted", "linux"]),
            (22, 2, "queued", &["self-hosted", "macOS"]),
            (23, 2, "completed", &["self-hosted", "linux"]),
        ]))
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), repo("acme", "app"), fast_retry());
    let book = MemoryDemandBook::default();
    let tenant = TenantId::new();
    // A job whose in_progress/completed deliveries were missed, and one the book learned
    // through a webhook before the reconcile.
    for (id, status) in [(99, JobStatus::Queued), (21, JobStatus::Queued)] {
        let event = JobEvent {
            job: ForgeJob {
                job_id: id,
                run_id: 9,
                repository: "acme/app".into(),
                labels: LabelSet::new(["self-hosted", "linux"]),
                status,
            },
            runner_name: None,
            received_at: nimbus_types::now() - time::Duration::seconds(30),
        };
        assert_eq!(
            book.apply(tenant, None, &event).await.unwrap(),
            Applied::Recorded
        );
    }
    let report = reconcile_demand(&forge, &book, tenant).await.unwrap();
    assert_eq!(
        (report.added, report.advanced, report.closed),
        (2, 1, 1),
        "{report:?}"
    );
    let summary = book.summary(tenant).await.unwrap();
    let rows: Vec<(String, u64, u64)> = summary
        .iter()
        .map(|d| (d.labels.to_string(), d.queued, d.in_progress))
        .collect();
    assert_eq!(
        rows,
        [
            ("linux,self-hosted".to_owned(), 1, 1),
            ("macos,self-hosted".to_owned(), 1, 0)
        ]
    );
    // Idempotent: a second run changes nothing.
    let again = reconcile_demand(&forge, &book, tenant).await.unwrap();
    assert_eq!((again.added, again.advanced, again.closed), (0, 0, 0));
}

#[tokio::test]
async fn demand_reconcile_leaves_the_book_alone_when_the_forge_fails() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(502))
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), repo("acme", "app"), fast_retry());
    let book = MemoryDemandBook::default();
    let tenant = TenantId::new();
    let event = JobEvent {
        job: ForgeJob {
            job_id: 1,
            run_id: 1,
            repository: "acme/app".into(),
            labels: LabelSet::new(["linux"]),
            status: JobStatus::Queued,
        },
        runner_name: None,
        received_at: nimbus_types::now() - time::Duration::seconds(30),
    };
    book.apply(tenant, None, &event).await.unwrap();
    let error = reconcile_demand(&forge, &book, tenant).await.unwrap_err();
    assert!(error.is_retryable());
    assert_eq!(book.summary(tenant).await.unwrap()[0].queued, 1);
}

#[tokio::test]
async fn org_demand_with_an_app_lists_the_installation_repositories() {
    let server = MockServer::start().await;
    let key = app_key().unwrap_or_else(|e| panic!("{e:#}"));
    tokens_mock(&server, TokenExchange::new(&key, time::Duration::hours(1))).await;
    Mock::given(method("GET"))
        .and(path("/installation/repositories"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "total_count": 3,
            "repositories": [
                {"name": "app", "owner": {"login": "acme"}, "archived": false},
                {"name": "old", "owner": {"login": "acme"}, "archived": true},
                {"name": "elsewhere", "owner": {"login": "other-org"}, "archived": false}
            ]
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/app/actions/runs"))
        .respond_with(runs(&[5]))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/app/actions/runs/5/jobs"))
        .respond_with(jobs(&[(51, 5, "queued", &["gpu"])]))
        .mount(&server)
        .await;
    let forge = app_forge(&server.uri(), org("acme"), &key, fast_retry());
    let demand = forge.demand().await.unwrap();
    assert_eq!(demand.len(), 1);
    assert_eq!(demand[0].repository, "acme/app");
    let requests = server.received_requests().await.unwrap();
    assert!(
        requests
            .iter()
            .all(|r| !r.url.path().contains("/old/") && !r.url.path().contains("other-org"))
    );
    assert_eq!(forge.budget_key(), "installation:777");
}

#[tokio::test]
async fn orphaned_nimbus_runners_are_removed_unless_busy() {
    let server = MockServer::start().await;
    let runner = |id: u64, name: &str, busy: bool, nimbus: bool| {
        let mut labels =
            vec![serde_json::json!({"id": 1, "name": "self-hosted", "type": "read-only"})];
        if nimbus {
            labels.push(
                serde_json::json!({"id": 2, "name": format!("nimbus-{name}"), "type": "custom"}),
            );
        }
        serde_json::json!({"id": id, "name": name, "os": "linux", "status": "online", "busy": busy, "labels": labels})
    };
    let listing = vec![
        runner(1, "m-live", false, true),
        runner(2, "m-gone", false, true),
        runner(3, "m-gone-busy", true, true),
        runner(4, "someone-elses", false, false),
    ];
    Mock::given(method("GET"))
        .and(path("/orgs/acme/actions/runners"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"total_count": 4, "runners": listing})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/orgs/acme/actions/runners/2"))
        .respond_with(Sequence::new(vec![
            ResponseTemplate::new(200).set_body_json(runner(2, "m-gone", false, true)),
            ResponseTemplate::new(404),
        ]))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/orgs/acme/actions/runners/3"))
        .respond_with(ResponseTemplate::new(200).set_body_json(runner(
            3,
            "m-gone-busy",
            true,
            true,
        )))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/orgs/acme/actions/runners/2"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    for other in [
        "/orgs/acme/actions/runners/1",
        "/orgs/acme/actions/runners/3",
        "/orgs/acme/actions/runners/4",
    ] {
        Mock::given(method("DELETE"))
            .and(path(other))
            .respond_with(ResponseTemplate::new(204))
            .expect(0)
            .mount(&server)
            .await;
    }
    let forge = token_forge(&server.uri(), org("acme"), fast_retry());
    let live = ["m-live".to_owned()].into_iter().collect();
    let report = nimbus_forge::lifecycle::remove_orphans(
        &forge,
        &live,
        TenantId::new(),
        &MemorySink::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.removed, [RunnerId(2)]);
    assert_eq!(report.busy, [RunnerId(3)]);
    assert!(report.failed.is_empty());
}

#[tokio::test]
async fn jit_name_taken_by_a_lost_attempt_is_replaced() {
    let server = MockServer::start().await;
    let jit_path = "/orgs/acme/actions/runners/generate-jitconfig";
    let created = ResponseTemplate::new(201).set_body_json(serde_json::json!({
        "runner": runner_json(8, false, "offline"),
        "encoded_jit_config": "eyJzZWNyZXQiOiJ0b3AifQ=="
    }));
    let conflict = ResponseTemplate::new(409)
        .set_body_json(serde_json::json!({"message": "Already exists - A runner with the name m-8 already exists."}));
    Mock::given(method("POST"))
        .and(path(jit_path))
        .respond_with(Sequence::new(vec![conflict.clone(), created]))
        .mount(&server)
        .await;
    let mut stale = runner_json(5, false, "offline");
    stale["name"] = "m-8".into();
    Mock::given(method("GET"))
        .and(path("/orgs/acme/actions/runners"))
        .and(query_param("name", "m-8"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"total_count": 1, "runners": [stale]})),
        )
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/orgs/acme/actions/runners/5"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let forge = token_forge(&server.uri(), org("acme"), fast_retry());
    let request = JitRequest {
        name: "m-8".into(),
        runner_group_id: 1,
        labels: vec!["linux".into()],
        work_folder: None,
    };
    let config = forge.jit_config(&request).await.unwrap();
    assert_eq!(config.runner.id, RunnerId(8));

    // An online runner of that name belongs to someone: conflict, nothing removed.
    let busy_server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(jit_path))
        .respond_with(conflict)
        .mount(&busy_server)
        .await;
    let mut online = runner_json(6, false, "online");
    online["name"] = "m-8".into();
    Mock::given(method("GET"))
        .and(path("/orgs/acme/actions/runners"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"total_count": 1, "runners": [online]})),
        )
        .mount(&busy_server)
        .await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&busy_server)
        .await;
    let forge = token_forge(&busy_server.uri(), org("acme"), fast_retry());
    let error = forge.jit_config(&request).await.unwrap_err();
    assert!(matches!(error, Error::Conflict(_)), "{error:?}");
}
