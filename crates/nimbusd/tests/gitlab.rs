//! A GitLab forge through the API: settings checked by field before they are stored, secrets
//! never shown, the webhook path shown, and Job Hook deliveries (`X-Gitlab-Token`,
//! `X-Gitlab-Event-UUID`) turned into demand once each. The payload is GitLab's documented Job
//! Hook example (`nimbus-forge/tests/fixtures/gitlab-job-hook.json`).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::json;

use crate::common::{Api, Reply, api, assert_error};

const SECRET: &str = "gitlab-hook-s3cr3t";
const TOKEN: &str = "glpat-t0ken-value";
const JOB_HOOK: &[u8] = include_bytes!("../../nimbus-forge/tests/fixtures/gitlab-job-hook.json");

async fn deliver(
    api: &Api,
    tenant_id: &str,
    token: Option<&str>,
    uuid: &str,
    event: &str,
) -> Reply {
    let mut request = Request::builder()
        .method("POST")
        .uri(format!("/v1/tenants/{tenant_id}/forge/webhook"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-gitlab-event", event)
        .header("x-gitlab-event-uuid", uuid);
    if let Some(token) = token {
        request = request.header("x-gitlab-token", token);
    }
    api.send(request.body(Body::from(JOB_HOOK)).unwrap()).await
}

#[tokio::test]
async fn a_gitlab_forge_takes_job_hooks() {
    let api = api().await;
    let (tenant_id, tenant_token) = api.tenant("acme").await;

    // Settings are checked before they are stored; errors name the field.
    let reply = api
        .admin(
            "PUT",
            "/v1/tenants/acme/forge",
            Some(
                json!({"type": "gitlab", "org": "acme/ci", "config": {"runner_type": "group_type"},
                        "credentials": {"token": TOKEN}}),
            ),
        )
        .await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert!(reply.text.contains("config.group_id"), "{}", reply.text);
    let reply = api
        .admin(
            "PUT",
            "/v1/tenants/acme/forge",
            Some(json!({"type": "gitlab", "org": "acme/ci", "config": {"group_id": 42}})),
        )
        .await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert!(reply.text.contains("credentials.token"), "{}", reply.text);

    let reply = api
        .admin(
            "PUT",
            "/v1/tenants/acme/forge",
            Some(json!({"type": "gitlab", "org": "acme/ci",
                        "config": {"url": "https://gitlab.example.com", "group_id": 42, "projects": [380]},
                        "credentials": {"token": TOKEN, "webhook_secret": SECRET}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(
        !reply.text.contains(TOKEN) && !reply.text.contains(SECRET),
        "{}",
        reply.text
    );
    assert_eq!(
        reply.body["webhook_path"],
        format!("/v1/tenants/{tenant_id}/forge/webhook")
    );

    // Without the token, or with a wrong one: 401, nothing recorded.
    let reply = deliver(&api, &tenant_id, None, "u-1", "Job Hook").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    let reply = deliver(
        &api,
        &tenant_id,
        Some("gitlab-hook-s3cr3T"),
        "u-1",
        "Job Hook",
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);

    let reply = deliver(&api, &tenant_id, Some(SECRET), "u-1", "Job Hook").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["result"], "recorded", "{}", reply.text);
    // GitLab redelivers with the same UUID: counted once.
    let reply = deliver(&api, &tenant_id, Some(SECRET), "u-1", "Job Hook").await;
    assert_eq!(reply.body["result"], "replay", "{}", reply.text);
    let reply = deliver(&api, &tenant_id, Some(SECRET), "u-2", "Pipeline Hook").await;
    assert_eq!(reply.body["result"], "ignored", "{}", reply.text);

    let demand = api
        .call("GET", "/v1/demand", Some(&tenant_token), None)
        .await;
    assert_eq!(demand.status, StatusCode::OK, "{}", demand.text);
    let rows = demand.body.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{}", demand.text);
    assert_eq!(rows[0]["labels"], json!(["linux", "x64"]));
    assert_eq!(rows[0]["queued"], 1);
}
