//! The agent API through `oneshot`: enrolment tokens and their bad input, enrolment (once),
//! the agent's credential, heartbeats, the operations long-poll and outcomes, tenant isolation.
//! The real agent binary against a real BMC is in `nimbusctl/tests/agent.rs`.

mod common;

use axum::http::StatusCode;
use common::{api, assert_error};
use serde_json::json;

#[tokio::test]
async fn agents_enrol_once_heartbeat_and_take_operations() {
    let api = api().await;
    let (_, acme_token) = api.tenant("acme").await;
    let (_, beta_token) = api.tenant("beta").await;

    // Bad input names the problem.
    let reply = api
        .admin(
            "POST",
            "/v1/agents/enrolment-tokens",
            Some(json!({"name": "rack-a"})),
        )
        .await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(reply.body["error"]["field"], "tenant");
    for (body, field) in [
        (json!({"name": "", "tenant": "acme"}), "name"),
        (json!({"name": "../x", "tenant": "acme"}), "name"),
        (
            json!({"name": "rack-a", "tenant": "acme", "ttl_secs": 0}),
            "ttl_secs",
        ),
        (
            json!({"name": "rack-a", "tenant": "acme", "ttl_secs": 9_999_999}),
            "ttl_secs",
        ),
        (
            json!({"name": "rack-a", "tenant": "acme", "colour": "red"}),
            "colour",
        ),
    ] {
        let reply = api
            .admin("POST", "/v1/agents/enrolment-tokens", Some(body.clone()))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            reply.text
        );
        assert!(reply.text.contains(field), "{body}: {}", reply.text);
    }
    let reply = api
        .call(
            "POST",
            "/v1/agents/enrolment-tokens",
            None,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // A tenant creates a token for itself; it is shown once and enrols once.
    let reply = api
        .call(
            "POST",
            "/v1/agents/enrolment-tokens",
            Some(&acme_token),
            Some(json!({"name": "rack-a"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let token = reply.body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("nimbus_enrol_"));
    let enrol = |token: &str| {
        let body = json!({ "token": token });
        api.call("POST", "/v1/agents/enrol", None, Some(body))
    };
    let reply = enrol(&token).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let credential = reply.body["credential"].as_str().unwrap().to_owned();
    assert_eq!(reply.body["name"], "rack-a");
    assert_error(
        &enrol(&token).await,
        StatusCode::CONFLICT,
        "enrolment_token_used",
    );
    assert_error(
        &enrol("nimbus_enrol_unknown").await,
        StatusCode::UNAUTHORIZED,
        "invalid_enrolment_token",
    );
    let reply = api
        .call("POST", "/v1/agents/enrol", None, Some(json!({"tok": "x"})))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    // A second token for an enrolled name is refused up front.
    let reply = api
        .admin(
            "POST",
            "/v1/agents/enrolment-tokens",
            Some(json!({"name": "rack-a", "tenant": "acme"})),
        )
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "conflict");

    // The credential is the agent's, not a tenant token; a tenant token is not an agent's.
    let heartbeat = json!({"version": "0.1.0", "health": "ok", "capacity": {"memory_bytes": 1},
                           "bmcs": [{"name": "node-0", "kind": "redfish", "endpoint": "x",
                                     "power_state": "off"}]});
    let reply = api
        .call(
            "POST",
            "/v1/agent/heartbeat",
            Some(&acme_token),
            Some(heartbeat.clone()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    let reply = api
        .call("GET", "/v1/tenants", Some(&credential), None)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);

    // Before its first heartbeat the agent takes no operations.
    let reply = api
        .admin(
            "POST",
            "/v1/agents/rack-a/operations?tenant=acme",
            Some(json!({"bmc": "node-0", "op": {"op": "power_state"}})),
        )
        .await;
    assert_error(&reply, StatusCode::SERVICE_UNAVAILABLE, "agent_unavailable");
    assert!(
        reply.text.contains("has not sent a heartbeat"),
        "{}",
        reply.text
    );

    let reply = api
        .call(
            "POST",
            "/v1/agent/heartbeat",
            Some(&credential),
            Some(heartbeat),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["lost_after_secs"], 60);
    let reply = api.call("GET", "/v1/agents", Some(&acme_token), None).await;
    assert_eq!(reply.body[0]["status"], "online", "{}", reply.text);
    assert_eq!(reply.body[0]["report"]["bmcs"][0]["power_state"], "off");
    // Another tenant sees none of it.
    let reply = api.call("GET", "/v1/agents", Some(&beta_token), None).await;
    assert_eq!(reply.body, json!([]));
    let reply = api
        .call(
            "POST",
            "/v1/agents/rack-a/operations",
            Some(&beta_token),
            Some(json!({"bmc": "node-0", "op": {"op": "power_state"}})),
        )
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found");

    // Bad operations are refused before anything is queued.
    for op in [
        json!({"op": "explode"}),
        json!({"op": "power", "action": "sideways"}),
        json!({"op": "insert_media", "image_url": "file:///etc/shadow"}),
    ] {
        let reply = api
            .call(
                "POST",
                "/v1/agents/rack-a/operations",
                Some(&acme_token),
                Some(json!({"bmc": "node-0", "op": op})),
            )
            .await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(reply.body["error"]["field"], "op");
    }
    let reply = api
        .call(
            "GET",
            "/v1/agent/operations?wait_secs=99",
            Some(&credential),
            None,
        )
        .await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    let reply = api
        .call(
            "GET",
            "/v1/agent/operations?wait_secs=0",
            Some(&credential),
            None,
        )
        .await;
    assert_eq!(reply.body, json!({"operations": []}));

    // An operation: the person waits while the agent polls, runs it and answers.
    let asking = {
        let app = api.app.clone();
        let token = acme_token.clone();
        tokio::spawn(async move {
            use tower::ServiceExt;
            let request = axum::http::Request::builder()
                .method("POST")
                .uri("/v1/agents/rack-a/operations")
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(axum::body::Body::from(
                    json!({"bmc": "node-0", "op": {"op": "power", "action": "on"}}).to_string(),
                ))
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            )
        })
    };
    let reply = api
        .call(
            "GET",
            "/v1/agent/operations?wait_secs=10",
            Some(&credential),
            None,
        )
        .await;
    let ops = reply.body["operations"].as_array().unwrap().clone();
    assert_eq!(ops.len(), 1, "{}", reply.text);
    assert_eq!(ops[0]["bmc"], "node-0");
    assert_eq!(ops[0]["op"], json!({"op": "power", "action": "on"}));
    let op_id = ops[0]["id"].as_str().unwrap();
    let path = format!("/v1/agent/operations/{op_id}");
    let reply = api
        .call(
            "POST",
            &path,
            Some(&credential),
            Some(json!({"result": "exploded"})),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    let reply = api
        .call(
            "POST",
            &path,
            Some(&credential),
            Some(json!({"result": "done"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    let reply = api
        .call(
            "POST",
            &path,
            Some(&credential),
            Some(json!({"result": "done"})),
        )
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "conflict");
    let (status, body) = asking.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["op"], "power_on");
    assert_eq!(body["outcome"], json!({"result": "done"}));

    // The new routes are documented.
    let doc = api.call("GET", "/v1/openapi.json", None, None).await;
    for path in [
        "/v1/agents",
        "/v1/agents/enrolment-tokens",
        "/v1/agents/enrol",
        "/v1/agent/heartbeat",
        "/v1/agent/operations",
        "/v1/registry",
    ] {
        assert!(doc.body["paths"][path].is_object(), "openapi lacks {path}");
    }
    // Without --registry-url there is no registry to show.
    let reply = api.admin("GET", "/v1/registry", None).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found");

    // Deleting the agent ends its credential.
    let reply = api
        .call("DELETE", "/v1/agents/rack-a", Some(&acme_token), None)
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    let reply = api
        .call(
            "GET",
            "/v1/agent/operations?wait_secs=0",
            Some(&credential),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
}
