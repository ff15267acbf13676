//! Webhooks end to end: a receiver on loopback checks every signature; the first delivery is
//! answered 500 and must be retried; the delivery log shows the attempts.

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{OWNER, Server};
use serde_json::{Value, json};

#[derive(Default)]
struct Received {
    events: Vec<Value>,
    bad_signatures: Vec<String>,
    calls: usize,
}

type Shared = Arc<Mutex<Received>>;

const SECRET: &str = "s3cret-for-tests";

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut got = shared.lock().unwrap();
    got.calls += 1;
    let signature = headers
        .get("x-nimbus-signature-256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let expected = nimbus_git::webhooks::sign(SECRET, &body);
    if signature != expected {
        got.bad_signatures
            .push(format!("got {signature:?}, expected {expected:?}"));
        return StatusCode::UNAUTHORIZED;
    }
    if got.calls == 1 {
        return StatusCode::INTERNAL_SERVER_ERROR; // force one retry
    }
    let mut event: Value = serde_json::from_slice(&body).unwrap();
    event["header_event"] = headers
        .get("x-nimbus-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .into();
    got.events.push(event);
    StatusCode::NO_CONTENT
}

#[test]
fn signed_webhooks_for_every_push_with_retries() {
    let server = Server::start();
    let shared: Shared = Arc::default();
    let receiver_url = server.rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    });
    server.create_repo("hooked", false);
    let (status, hook) = server.api(
        "POST",
        "/repos/hooked/webhooks",
        Some(OWNER),
        Some(json!({
            "url": receiver_url,
            "secret": SECRET,
            "events": ["BranchCreated", "BranchDeleted", "CommitPushed", "TagCreated"],
        })),
    );
    assert_eq!(status, 201, "{hook}");
    let hook_id = hook["id"].as_str().unwrap().to_owned();

    let work = server.work_tree("work", 2);
    let url = server.repo_url("hooked", Some(OWNER));
    server.git(&work, &["tag", "-a", "v1", "-m", "v1"]);
    server.git(&work, &["push", "-q", &url, "main", "v1"]);
    server.git(&work, &["push", "-q", &url, "main:topic"]);
    server.git(&work, &["push", "-q", &url, ":topic"]);

    let kinds = || -> Vec<String> {
        let got = shared.lock().unwrap();
        let mut kinds: Vec<String> = got
            .events
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["event"].as_str().unwrap_or(""),
                    e["ref"].as_str().unwrap_or("")
                )
            })
            .collect();
        kinds.sort();
        kinds
    };
    server.wait_for("six webhook deliveries", || kinds().len() >= 6);
    assert_eq!(
        kinds(),
        [
            "BranchCreated refs/heads/main",
            "BranchCreated refs/heads/topic",
            "BranchDeleted refs/heads/topic",
            "CommitPushed refs/heads/main",
            "CommitPushed refs/heads/topic",
            "TagCreated refs/tags/v1",
        ],
        "events delivered"
    );
    let got = shared.lock().unwrap();
    assert!(
        got.bad_signatures.is_empty(),
        "bad signatures: {:?}",
        got.bad_signatures
    );
    for event in &got.events {
        assert_eq!(event["repository"], "hooked");
        assert_eq!(event["pusher"], "owner");
        assert_eq!(event["header_event"], event["event"]);
    }
    drop(got);

    let (status, log) = server.api(
        "GET",
        &format!("/repos/hooked/webhooks/{hook_id}/deliveries"),
        Some(OWNER),
        None,
    );
    assert_eq!(status, 200, "{log}");
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 6, "one delivery per event: {log:?}");
    assert!(log.iter().all(|d| d["status"] == "delivered"), "{log:?}");
    assert!(
        log.iter().any(|d| d["attempts"].as_i64() == Some(2)),
        "the first one was retried: {log:?}"
    );

    // The outbox also lists the repository's creation.
    let (_, events) = server.api("GET", "/repos/hooked/events", Some(OWNER), None);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "RepositoryCreated"),
        "{events}"
    );
}

#[test]
fn loopback_targets_refused_by_default() {
    let server = Server::start_with(|s| s.webhooks.allow_private = false);
    server.create_repo("r", false);
    let (status, body) = server.api(
        "POST",
        "/repos/r/webhooks",
        Some(OWNER),
        Some(json!({"url": "http://127.0.0.1:9/hook", "secret": "x"})),
    );
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("url:") && message.contains("loopback"),
        "{message}"
    );
}
