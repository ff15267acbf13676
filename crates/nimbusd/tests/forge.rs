//! The forge API through `oneshot`: configuration checked before it is stored, secrets never
//! shown, and signed GitHub webhook deliveries turned into demand.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::{Api, Reply, api, assert_error};

const SECRET: &str = "hook-s3cr3t-value";
const TOKEN: &str = "ghp_t0ken-value";

/// `sha256=<hex>` as GitHub computes `X-Hub-Signature-256`, independently of the daemon's code.
fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn job(id: u64, action: &str, labels: &[&str]) -> Vec<u8> {
    json!({
        "action": action,
        "workflow_job": {"id": id, "run_id": 9000 + id, "labels": labels, "runner_name": null, "status": action},
        "repository": {"full_name": "acme-corp/app"},
    })
    .to_string()
    .into_bytes()
}

/// Posts a delivery; `signature` `None` sends none.
async fn deliver(
    api: &Api,
    tenant_id: &str,
    event: &str,
    delivery: &str,
    body: Vec<u8>,
    signature: Option<String>,
) -> Reply {
    let mut request = Request::builder()
        .method("POST")
        .uri(format!("/v1/tenants/{tenant_id}/forge/webhook"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery);
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    api.send(request.body(Body::from(body)).unwrap()).await
}

async fn signed(api: &Api, tenant_id: &str, event: &str, delivery: &str, body: Vec<u8>) -> Reply {
    let signature = sign(SECRET, &body);
    deliver(api, tenant_id, event, delivery, body, Some(signature)).await
}

/// A tenant with a GitHub forge (token auth) and a webhook secret; returns its id and token.
async fn github_tenant(api: &Api, name: &str) -> (String, String) {
    let (id, token) = api.tenant(name).await;
    set_github_forge(api, name).await;
    (id, token)
}

async fn set_github_forge(api: &Api, name: &str) {
    let reply = api
        .admin(
            "PUT",
            &format!("/v1/tenants/{name}/forge"),
            Some(
                json!({"type": "github", "org": "acme-corp", "config": {"repo": "app"},
                        "credentials": {"token": TOKEN, "webhook_secret": SECRET}}),
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

fn demand_rows(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply
        .body
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {}", reply.text))
        .clone()
}

#[tokio::test]
async fn forge_set_checks_fields_before_storing_and_never_echoes_secrets() {
    let api = api().await;
    let (tenant_id, _) = api.tenant("acme").await;
    let cases = [
        (
            json!({"type": "github", "org": "acme", "config": {"app_id": 1, "installation_id": 2}}),
            "private_key",
        ),
        (
            json!({"type": "github", "org": "acme", "config": {"installation_id": 2}, "credentials": {"private_key": "k"}}),
            "app_id",
        ),
        (
            json!({"type": "github", "org": "acme", "config": {"app_id": 1}, "credentials": {"private_key": "k"}}),
            "installation_id",
        ),
        (
            json!({"type": "github", "org": "acme", "credentials": {"token": "t", "private_key": "k"}}),
            "credentials",
        ),
        (json!({"type": "github", "org": "acme"}), "credentials"),
        (
            json!({"type": "github", "org": "acme", "config": {"repo": "no/slash"}, "credentials": {"token": "t"}}),
            "repo",
        ),
        (
            json!({"type": "github", "org": "acme", "config": {"api_url": "ftp://x"}, "credentials": {"token": "t"}}),
            "api_url",
        ),
        (
            json!({"type": "github", "org": "acme", "config": {"colour": "blue"}, "credentials": {"token": "t"}}),
            "config",
        ),
        (
            json!({"type": "github", "org": "acme", "credentials": {"token": "t", "pasword": "p"}}),
            "credentials",
        ),
        (
            json!({"type": "github", "org": "acme_corp", "credentials": {"token": "t"}}),
            "org",
        ),
    ];
    for (body, field) in cases {
        let reply = api
            .admin("PUT", "/v1/tenants/acme/forge", Some(body.clone()))
            .await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(
            reply.body["error"]["field"], field,
            "body {body}: {}",
            reply.text
        );
        for secret in ["\"k\"", "pasword"] {
            assert!(
                !reply.text.contains(secret),
                "{secret} echoed: {}",
                reply.text
            );
        }
        let stored = api.admin("GET", "/v1/tenants/acme/forge", None).await;
        assert_error(&stored, StatusCode::NOT_FOUND, "not_found");
    }

    let pem = "-----BEGIN RSA PRIVATE KEY-----\nnot-a-real-key\n-----END RSA PRIVATE KEY-----\n";
    let reply = api
        .admin(
            "PUT",
            "/v1/tenants/acme/forge",
            Some(json!({"type": "github", "org": "acme", "config": {"app_id": 1, "installation_id": 2},
                        "credentials": {"private_key": pem, "webhook_secret": SECRET}})),
        )
        .await;
    // A key that does not parse is refused too, naming the key and not quoting it.
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(
        reply.body["error"]["field"], "private_key",
        "{}",
        reply.text
    );
    assert!(!reply.text.contains("not-a-real-key"), "{}", reply.text);

    set_github_forge(&api, "acme").await;
    for path in ["/v1/tenants/acme/forge", "/v1/openapi.json"] {
        let reply = api.admin("GET", path, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        for secret in [SECRET, TOKEN] {
            assert!(
                !reply.text.contains(secret),
                "{path} shows a secret: {}",
                reply.text
            );
        }
    }
    let reply = api.admin("GET", "/v1/tenants/acme/forge", None).await;
    assert_eq!(reply.body["has_credentials"], true);
    assert_eq!(reply.body["org"], "acme-corp");
    assert_eq!(reply.body["config"], json!({"repo": "app"}));
    assert_eq!(
        reply.body["webhook_path"],
        format!("/v1/tenants/{tenant_id}/forge/webhook")
    );
}

#[tokio::test]
async fn signed_job_deliveries_become_demand() {
    let api = api().await;
    let (tenant_id, token) = github_tenant(&api, "acme").await;

    let reply = signed(
        &api,
        &tenant_id,
        "ping",
        "d-ping",
        br#"{"zen":"Keep it logically awesome."}"#.to_vec(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["result"], "ping");

    for (idx, (job_id, labels)) in [
        (1, vec!["self-hosted", "Linux"]),
        (2, vec!["linux", "self-hosted"]),
        (3, vec!["gpu"]),
    ]
    .into_iter()
    .enumerate()
    {
        let reply = signed(
            &api,
            &tenant_id,
            "workflow_job",
            &format!("d-{idx}"),
            job(job_id, "queued", &labels),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(
            reply.body,
            json!({"result": "recorded", "job_id": job_id, "status": "queued"})
        );
    }
    let reply = signed(
        &api,
        &tenant_id,
        "workflow_job",
        "d-3",
        job(3, "in_progress", &["gpu"]),
    )
    .await;
    assert_eq!(reply.body["result"], "recorded", "{}", reply.text);

    let rows = demand_rows(&api.call("GET", "/v1/demand", Some(&token), None).await);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["tenant_id"], tenant_id.as_str());
    assert_eq!(rows[0]["labels"], json!(["gpu"]));
    assert_eq!(
        (rows[0]["queued"].as_u64(), rows[0]["in_progress"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(rows[0]["oldest_queued_at"].is_null(), "{rows:?}");
    assert_eq!(rows[1]["labels"], json!(["linux", "self-hosted"]));
    assert_eq!(rows[1]["queued"], 2, "{rows:?}");
    assert_eq!(rows[1]["waiting"], 0, "{rows:?}");
    assert!(
        rows[1]["oldest_queued_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{rows:?}"
    );

    // The admin sees it too, with or without naming the tenant.
    assert_eq!(
        demand_rows(&api.admin("GET", "/v1/demand", None).await),
        rows
    );
    assert_eq!(
        demand_rows(&api.admin("GET", "/v1/demand?tenant=acme", None).await),
        rows
    );

    // A job that completes leaves the demand.
    let reply = signed(
        &api,
        &tenant_id,
        "workflow_job",
        "d-4",
        job(3, "completed", &["gpu"]),
    )
    .await;
    assert_eq!(reply.body["result"], "recorded", "{}", reply.text);
    let rows = demand_rows(&api.admin("GET", "/v1/demand?tenant=acme", None).await);
    assert_eq!(rows.len(), 1, "{rows:?}");
    // A late `queued` for the finished job cannot bring it back.
    let reply = signed(
        &api,
        &tenant_id,
        "workflow_job",
        "d-5",
        job(3, "queued", &["gpu"]),
    )
    .await;
    assert_eq!(
        reply.body,
        json!({"result": "stale", "job_id": 3}),
        "{}",
        reply.text
    );
    assert_eq!(
        demand_rows(&api.admin("GET", "/v1/demand?tenant=acme", None).await).len(),
        1
    );
}

#[tokio::test]
async fn replays_unknown_events_and_large_bodies_are_accepted_and_ignored() {
    let api = api().await;
    let (tenant_id, _) = github_tenant(&api, "acme").await;
    let first = signed(
        &api,
        &tenant_id,
        "workflow_job",
        "same-id",
        job(1, "queued", &["linux"]),
    )
    .await;
    assert_eq!(first.body["result"], "recorded", "{}", first.text);
    // GitHub's "Redeliver" reuses the delivery id: not counted twice, even with another job.
    for body in [job(1, "queued", &["linux"]), job(2, "queued", &["linux"])] {
        let replay = signed(&api, &tenant_id, "workflow_job", "same-id", body).await;
        assert_eq!(replay.status, StatusCode::OK, "{}", replay.text);
        assert_eq!(replay.body, json!({"result": "replay"}));
    }
    let rows = demand_rows(&api.admin("GET", "/v1/demand", None).await);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["queued"], 1, "replay counted: {rows:?}");

    let reply = signed(
        &api,
        &tenant_id,
        "issues",
        "d-issue",
        br#"{"action":"opened"}"#.to_vec(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body, json!({"result": "ignored", "event": "issues"}));
    let reply = signed(&api, &tenant_id, "workflow_job", "d-other", br#"{"action":"something_new","workflow_job":{"id":5,"run_id":6},"repository":{"full_name":"a/b"}}"#.to_vec()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["result"], "ignored");

    // Bigger than the API's 256 KiB limit: the webhook route has its own (25 MiB).
    let big = json!({"action": "opened", "padding": "x".repeat(1024 * 1024)})
        .to_string()
        .into_bytes();
    let reply = signed(&api, &tenant_id, "issues", "d-big", big).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let huge = vec![b' '; 25 * 1024 * 1024 + 1];
    let reply = signed(&api, &tenant_id, "issues", "d-huge", huge).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    // The API's own limit still applies to the other routes.
    let reply = api
        .admin(
            "PUT",
            "/v1/tenants/acme/forge",
            Some(json!({"type": "github", "org": "acme", "padding": "x".repeat(300 * 1024)})),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    assert_eq!(
        demand_rows(&api.admin("GET", "/v1/demand", None).await),
        rows
    );
}

#[tokio::test]
async fn bad_signatures_and_malformed_deliveries_are_refused() {
    let api = api().await;
    let (tenant_id, _) = github_tenant(&api, "acme").await;
    let body = job(1, "queued", &["linux"]);

    let missing = deliver(&api, &tenant_id, "workflow_job", "d-1", body.clone(), None).await;
    assert_error(&missing, StatusCode::UNAUTHORIZED, "unauthorized");
    let wrong = deliver(
        &api,
        &tenant_id,
        "workflow_job",
        "d-2",
        body.clone(),
        Some(sign("not-the-secret", &body)),
    )
    .await;
    assert_error(&wrong, StatusCode::UNAUTHORIZED, "unauthorized");
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    let tampered = deliver(
        &api,
        &tenant_id,
        "workflow_job",
        "d-3",
        tampered,
        Some(sign(SECRET, &body)),
    )
    .await;
    assert_error(&tampered, StatusCode::UNAUTHORIZED, "unauthorized");
    // A bearer token is no substitute for the signature.
    let request = Request::builder()
        .method("POST")
        .uri(format!("/v1/tenants/{tenant_id}/forge/webhook"))
        .header(header::AUTHORIZATION, format!("Bearer {}", api.admin))
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", "d-4")
        .body(Body::from(body.clone()))
        .unwrap();
    assert_error(
        &api.send(request).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    let malformed = signed(
        &api,
        &tenant_id,
        "workflow_job",
        "d-5",
        b"{\"action\": \"queued\", ".to_vec(),
    )
    .await;
    assert_error(&malformed, StatusCode::BAD_REQUEST, "bad_request");
    let no_job = signed(
        &api,
        &tenant_id,
        "workflow_job",
        "d-6",
        br#"{"action":"queued"}"#.to_vec(),
    )
    .await;
    assert_error(&no_job, StatusCode::BAD_REQUEST, "bad_request");

    // A malformed delivery is not remembered: the corrected redelivery is recorded.
    let fixed = signed(&api, &tenant_id, "workflow_job", "d-5", body).await;
    assert_eq!(fixed.body["result"], "recorded", "{}", fixed.text);
    assert_eq!(
        demand_rows(&api.admin("GET", "/v1/demand", None).await).len(),
        1
    );
}

#[tokio::test]
async fn unknown_tenants_and_forges_without_a_secret_look_the_same() {
    let api = api().await;
    let (tenant_id, _) = github_tenant(&api, "acme").await;
    let (plain_id, _) = api.tenant("plain").await;
    let (nosecret_id, _) = api.tenant("nosecret").await;
    let reply = api
        .admin(
            "PUT",
            "/v1/tenants/nosecret/forge",
            Some(json!({"type": "github", "org": "acme", "credentials": {"token": TOKEN}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);

    let body = job(1, "queued", &["linux"]);
    let known = deliver(
        &api,
        &tenant_id,
        "workflow_job",
        "d-0",
        body.clone(),
        Some(sign("guess", &body)),
    )
    .await;
    let unknown = uuid_like();
    for target in [
        unknown.as_str(),
        "acme",
        "not-a-uuid",
        plain_id.as_str(),
        nosecret_id.as_str(),
    ] {
        for signature in [None, Some(sign(SECRET, &body)), Some(sign("guess", &body))] {
            let reply = deliver(
                &api,
                target,
                "workflow_job",
                "d-1",
                body.clone(),
                signature.clone(),
            )
            .await;
            assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
            if signature == Some(sign("guess", &body)) {
                assert_eq!(
                    reply.body, known.body,
                    "{target} answers differently from a wrong signature"
                );
            }
        }
    }
    assert!(demand_rows(&api.admin("GET", "/v1/demand", None).await).is_empty());
}

fn uuid_like() -> String {
    "0190f0f0-0000-7000-8000-000000000000".to_owned()
}

#[tokio::test]
async fn tenants_see_only_their_own_demand() {
    let api = api().await;
    let (acme_id, acme_token) = github_tenant(&api, "acme").await;
    let (_, other_token) = github_tenant(&api, "other").await;
    let reply = signed(
        &api,
        &acme_id,
        "workflow_job",
        "d-1",
        job(1, "queued", &["linux"]),
    )
    .await;
    assert_eq!(reply.body["result"], "recorded", "{}", reply.text);

    assert!(
        demand_rows(
            &api.call("GET", "/v1/demand", Some(&other_token), None)
                .await
        )
        .is_empty()
    );
    let reply = api
        .call("GET", "/v1/demand?tenant=acme", Some(&other_token), None)
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
    let reply = api
        .call(
            "GET",
            &format!("/v1/demand?tenant={acme_id}"),
            Some(&other_token),
            None,
        )
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        demand_rows(&api.call("GET", "/v1/demand", Some(&acme_token), None).await).len(),
        1
    );
    let reply = api.call("GET", "/v1/demand", None, None).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    let reply = api
        .call(
            "GET",
            "/v1/demand?tenant=acme&colour=blue",
            Some(&acme_token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    // And another tenant's forge cannot be read or replaced.
    let reply = api
        .call("GET", "/v1/tenants/acme/forge", Some(&other_token), None)
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn the_new_routes_are_in_the_openapi_document_and_metrics_render() {
    let api = api().await;
    github_tenant(&api, "acme").await;
    let reply = api.call("GET", "/v1/openapi.json", None, None).await;
    for path in [
        "/v1/tenants/{tenant}/forge",
        "/v1/tenants/{tenant}/forge/webhook",
        "/v1/demand",
    ] {
        assert!(
            reply.body["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(
        reply.body["paths"]["/v1/tenants/{tenant}/forge/webhook"]["post"]["security"].is_null(),
        "the webhook needs no bearer token"
    );
}

/// A stand-in for GitHub's REST API that lists one queued run with a queued and an in-progress
/// job, and reports a rate-limit budget on every response. Returns its base URL.
async fn fake_github() -> String {
    use axum::extract::{Path, Query};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use std::collections::HashMap;

    fn with_budget(body: Value) -> axum::response::Response {
        let reset = (time::OffsetDateTime::now_utc().unix_timestamp() + 3600).to_string();
        (
            [
                ("x-ratelimit-limit", "5000".to_owned()),
                ("x-ratelimit-remaining", "4321".to_owned()),
                ("x-ratelimit-reset", reset),
                ("x-ratelimit-resource", "core".to_owned()),
            ],
            axum::Json(body),
        )
            .into_response()
    }
    let app = axum::Router::new()
        .route(
            "/repos/{owner}/{repo}/actions/runs",
            get(|Path((owner, repo)): Path<(String, String)>, Query(query): Query<HashMap<String, String>>| async move {
                assert_eq!((owner.as_str(), repo.as_str()), ("acme-corp", "app"));
                let runs = if query.get("status").map(String::as_str) == Some("queued") { json!([{"id": 77}]) } else { json!([]) };
                let n = runs.as_array().unwrap().len();
                with_budget(json!({"total_count": n, "workflow_runs": runs}))
            }),
        )
        .route(
            "/repos/{owner}/{repo}/actions/runs/{run}/jobs",
            get(|Path((_, _, run)): Path<(String, String, u64)>| async move {
                assert_eq!(run, 77);
                with_budget(json!({"total_count": 3, "jobs": [
                    {"id": 5, "run_id": 77, "status": "queued", "labels": ["Linux", "self-hosted"]},
                    {"id": 6, "run_id": 77, "status": "in_progress", "labels": ["gpu"]},
                    {"id": 7, "run_id": 77, "status": "completed", "labels": ["gpu"]},
                ]}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn the_demand_reconcile_reads_the_forges_job_list_and_the_budget_becomes_a_gauge() {
    let api = api().await;
    let (tenant_id, token) = api.tenant("acme").await;
    let github = fake_github().await;
    let reply = api
        .admin(
            "PUT",
            "/v1/tenants/acme/forge",
            Some(json!({"type": "github", "org": "acme-corp", "config": {"repo": "app", "api_url": github},
                        "credentials": {"token": TOKEN, "webhook_secret": SECRET}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    // A job the webhooks reported that GitHub no longer lists: a missed `completed`.
    let reply = signed(
        &api,
        &tenant_id,
        "workflow_job",
        "d-old",
        job(99, "queued", &["old"]),
    )
    .await;
    assert_eq!(reply.body["result"], "recorded", "{}", reply.text);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;

    nimbusd::http::demand::reconcile_once(&api.state).await;

    let rows = demand_rows(&api.call("GET", "/v1/demand", Some(&token), None).await);
    let summary: Vec<(Value, Value, Value)> = rows
        .iter()
        .map(|r| {
            (
                r["labels"].clone(),
                r["queued"].clone(),
                r["in_progress"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (json!(["gpu"]), json!(0), json!(1)),
            (json!(["linux", "self-hosted"]), json!(1), json!(0))
        ],
        "the book after the reconcile: {rows:?}"
    );

    let metrics = api.call("GET", "/metrics", None, None).await;
    let line = format!(
        "nimbus_forge_rate_limit_remaining{{tenant=\"{tenant_id}\",budget=\"token\"}} 4321"
    );
    assert!(
        metrics.text.contains(&line),
        "expected {line:?} in:\n{}",
        metrics.text
    );
}
