//! The REST API through `oneshot` on `app()`, a fresh SQLite store and local provider per test.
//! Mostly the bad cases: every one must be a clear 4xx and change nothing.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

use crate::common::{api, api_on, assert_error, host_platform};

#[tokio::test]
async fn health_readiness_openapi_and_metrics_need_no_token() {
    let api = api().await;
    assert_eq!(
        api.call("GET", "/healthz", None, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.call("GET", "/readyz", None, None).await.status,
        StatusCode::OK
    );
    let doc = api.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/machines",
        "/v1/machines/{id}/can-terminate",
        "/v1/tenants/{tenant}/providers",
        "/v1/events",
    ] {
        assert!(doc.body["paths"][path].is_object(), "openapi lacks {path}");
    }
    assert!(doc.body["components"]["schemas"]["Machine"].is_object());
    api.admin("GET", "/v1/tenants", None).await;
    let metrics = api.call("GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.text.contains("nimbus_http_requests_total"),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn missing_malformed_or_wrong_tokens_are_401() {
    let api = api().await;
    assert_error(
        &api.call("GET", "/v1/tenants", None, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_error(
        &api.call("GET", "/v1/tenants", Some("nope-not-a-token"), None)
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let request = Request::get("/v1/tenants")
        .header(header::AUTHORIZATION, "Basic YWRtaW46YWRtaW4=")
        .body(Body::empty())
        .unwrap();
    let reply = api.send(request).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn malformed_bodies_are_4xx_naming_the_problem() {
    let api = api().await;
    let admin = format!("Bearer {}", api.admin);
    // Not JSON at all.
    let request = Request::post("/v1/tenants")
        .header(header::AUTHORIZATION, &admin)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{name: acme"))
        .unwrap();
    assert_error(
        &api.send(request).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    // Wrong content type.
    let request = Request::post("/v1/tenants")
        .header(header::AUTHORIZATION, &admin)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(r#"{"name":"acme"}"#))
        .unwrap();
    assert_error(
        &api.send(request).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    // Too large.
    let huge = json!({"name": "x".repeat(400 * 1024)}).to_string();
    let request = Request::post("/v1/tenants")
        .header(header::AUTHORIZATION, &admin)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(huge))
        .unwrap();
    let reply = api.send(request).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    // Wrong shape: the field is named.
    let reply = api
        .admin("POST", "/v1/tenants", Some(json!({"name": 42})))
        .await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(reply.body["error"]["field"], "name");
    let reply = api
        .admin(
            "POST",
            "/v1/tenants",
            Some(json!({"name": "ok", "extra": 1})),
        )
        .await;
    assert_eq!(reply.body["error"]["field"], "extra", "{}", reply.text);
    // Nothing was created by any of these.
    let reply = api.admin("GET", "/v1/tenants", None).await;
    assert_eq!(reply.body, json!([]));
}

#[tokio::test]
async fn names_are_validated_and_duplicates_conflict() {
    let api = api().await;
    let reply = api
        .admin("POST", "/v1/tenants", Some(json!({"name": "Bad Name;rm"})))
        .await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(reply.body["error"]["field"], "name");
    api.tenant("acme").await;
    let reply = api
        .admin("POST", "/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "conflict");
    let reply = api
        .admin(
            "POST",
            "/v1/tenants/acme/providers",
            Some(json!({"name": "local", "type": "local"})),
        )
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "conflict");
    let reply = api
        .admin(
            "POST",
            "/v1/tenants/acme/providers",
            Some(json!({"name": "gce", "type": "gcp"})),
        )
        .await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(reply.body["error"]["field"], "type");
    let reply = api
        .admin(
            "POST",
            "/v1/tenants/acme/providers",
            Some(json!({"name": "small", "type": "local", "config": {"max_machines": 0}})),
        )
        .await;
    assert_eq!(
        reply.body["error"]["field"], "config.max_machines",
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn unknown_things_are_404() {
    let api = api().await;
    api.tenant("acme").await;
    let (os, arch) = host_platform();
    assert_error(
        &api.admin("GET", "/v1/tenants/nobody", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let reply = api
        .admin(
            "POST",
            "/v1/machines",
            Some(json!({"tenant": "nobody", "provider": "local", "os": os, "arch": arch})),
        )
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
    let reply = api
        .admin(
            "POST",
            "/v1/machines",
            Some(json!({"tenant": "acme", "provider": "nope", "os": os, "arch": arch})),
        )
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
    let missing = uuid::Uuid::now_v7();
    assert_error(
        &api.admin("GET", &format!("/v1/machines/{missing}"), None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.admin("DELETE", &format!("/v1/machines/{missing}"), None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.admin("GET", "/v1/machines/not-a-uuid", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.admin("GET", "/v1/no/such/route", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let reply = api.admin("GET", "/v1/machines?state=sleeping", None).await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
}

#[tokio::test]
async fn invalid_specs_are_422_naming_the_field() {
    let api = api().await;
    api.tenant("acme").await;
    let (os, arch) = host_platform();
    for (body, field) in [
        (
            json!({"tenant": "acme", "provider": "local", "os": "windows", "arch": arch}),
            "os",
        ),
        (
            json!({"tenant": "acme", "provider": "local", "os": os, "arch": "sparc"}),
            "arch",
        ),
        (
            json!({"tenant": "acme", "provider": "local", "os": os, "arch": arch, "labels": ["ok", "a b"]}),
            "labels[1]",
        ),
        (
            json!({"tenant": "acme", "provider": "local", "os": os, "arch": arch, "labels": ["$(reboot)"]}),
            "labels[0]",
        ),
        (
            json!({"tenant": "acme", "provider": "local", "os": os, "arch": arch, "instance_type": "t3;rm"}),
            "instance_type",
        ),
        (
            json!({"tenant": "acme", "provider": "local", "os": os, "arch": arch, "image_type": "ami"}),
            "image_id",
        ),
        (
            json!({"provider": "local", "os": os, "arch": arch}),
            "tenant",
        ),
    ] {
        let reply = api.admin("POST", "/v1/machines", Some(body.clone())).await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(
            reply.body["error"]["field"], field,
            "{body}: {}",
            reply.text
        );
    }
    let reply = api
        .admin("GET", "/v1/machines?include_terminated=true", None)
        .await;
    assert_eq!(reply.body["machines"], json!([]), "nothing was recorded");
}

#[tokio::test]
async fn tenant_tokens_see_only_their_tenant() {
    let api = api().await;
    let (acme_id, acme) = api.tenant("acme").await;
    let (_, globex) = api.tenant("globex").await;
    let (os, arch) = host_platform();
    let reply = api
        .call(
            "POST",
            "/v1/machines",
            Some(&acme),
            Some(json!({"provider": "local", "os": os, "arch": arch})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let machine = reply.body["id"].as_str().unwrap().to_owned();
    assert_eq!(reply.body["tenant_id"], acme_id.as_str());

    // globex cannot see, terminate or even learn about acme's things.
    for (method, path) in [
        ("GET", format!("/v1/machines/{machine}")),
        ("DELETE", format!("/v1/machines/{machine}")),
        ("GET", format!("/v1/machines/{machine}/can-terminate")),
        ("GET", format!("/v1/machines/{machine}/history")),
        ("GET", "/v1/tenants/acme".to_owned()),
        ("GET", format!("/v1/tenants/{acme_id}/providers")),
        ("GET", "/v1/tenants/acme/forge".to_owned()),
    ] {
        let reply = api.call(method, &path, Some(&globex), None).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
    }
    let reply = api
        .call(
            "POST",
            "/v1/machines",
            Some(&globex),
            Some(json!({"tenant": "acme", "provider": "local", "os": os, "arch": arch})),
        )
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
    let reply = api.call("GET", "/v1/machines", Some(&globex), None).await;
    assert_eq!(reply.body["machines"], json!([]));
    let reply = api.call("GET", "/v1/tenants", Some(&globex), None).await;
    assert_eq!(reply.body.as_array().unwrap().len(), 1);
    assert_eq!(reply.body[0]["name"], "globex");
    // Admin-only operations are refused for tenant tokens.
    let reply = api
        .call(
            "POST",
            "/v1/tenants",
            Some(&globex),
            Some(json!({"name": "evil"})),
        )
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "forbidden");
    let reply = api
        .call("POST", "/v1/tenants/globex/tokens", Some(&globex), None)
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "forbidden");

    // acme sees and ends its machine.
    api.wait_for_state(&machine, "ready").await;
    let reply = api
        .call(
            "DELETE",
            &format!("/v1/machines/{machine}"),
            Some(&acme),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    api.wait_for_state(&machine, "terminated").await;
}

#[tokio::test]
async fn a_provision_the_provider_refuses_ends_failed_with_the_reason() {
    let api = api().await;
    api.tenant("acme").await;
    let (_, arch) = host_platform();
    let reply = api
        .admin(
            "POST",
            "/v1/machines",
            Some(json!({"tenant": "acme", "provider": "local", "os": "macos", "arch": arch})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    let failed = api.wait_for_state(&id, "failed").await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("local provider only has"),
        "{failed}"
    );
    let history = api
        .admin("GET", &format!("/v1/machines/{id}/history"), None)
        .await;
    let states: Vec<&str> = history
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["provisioning", "failed"]);
}

#[tokio::test]
async fn credentials_are_accepted_but_never_returned() {
    let api = api().await;
    api.tenant("acme").await;
    let reply = api
        .admin("POST", "/v1/tenants/acme/providers", Some(json!({"name": "with-creds", "type": "local", "credentials": {"token": "s3cr3t-value"}})))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["has_credentials"], true);
    let reply = api.admin("GET", "/v1/tenants/acme/providers", None).await;
    assert!(!reply.text.contains("s3cr3t-value"), "{}", reply.text);

    let reply = api
        .admin("PUT", "/v1/tenants/acme/forge", Some(json!({"type": "github", "org": "acme-corp", "credentials": {"token": "ghp_s3cr3t"}})))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(!reply.text.contains("ghp_s3cr3t"));
    let reply = api.admin("GET", "/v1/tenants/acme/forge", None).await;
    assert_eq!(reply.body["org"], "acme-corp");
    assert_eq!(reply.body["has_credentials"], true);
    assert!(!reply.text.contains("ghp_s3cr3t"));
    let reply = api
        .admin(
            "PUT",
            "/v1/tenants/acme/forge",
            Some(json!({"type": "github", "org": "../etc"})),
        )
        .await;
    assert_eq!(reply.body["error"]["field"], "org", "{}", reply.text);
    let reply = api
        .admin(
            "PUT",
            "/v1/tenants/acme/forge",
            Some(json!({"type": "github", "org": "acme", "credentials": "plain"})),
        )
        .await;
    assert_eq!(
        reply.body["error"]["field"], "credentials",
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn a_provider_with_live_machines_cannot_be_deleted() {
    let api = api().await;
    api.tenant("acme").await;
    let (os, arch) = host_platform();
    let reply = api
        .admin(
            "POST",
            "/v1/machines",
            Some(json!({"tenant": "acme", "provider": "local", "os": os, "arch": arch})),
        )
        .await;
    let id = reply.body["id"].as_str().unwrap().to_owned();
    api.wait_for_state(&id, "ready").await;
    let reply = api
        .admin("DELETE", "/v1/tenants/acme/providers/local", None)
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "conflict");
    api.admin("DELETE", &format!("/v1/machines/{id}"), None)
        .await;
    api.wait_for_state(&id, "terminated").await;
    let reply = api
        .admin("DELETE", "/v1/tenants/acme/providers/local", None)
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
}

#[tokio::test]
async fn the_event_stream_replays_and_is_filtered_to_the_tenant() {
    let api = api().await;
    let (_, acme) = api.tenant("acme").await;
    let (_, globex) = api.tenant("globex").await;
    let (os, arch) = host_platform();
    let reply = api
        .call(
            "POST",
            "/v1/machines",
            Some(&acme),
            Some(json!({"provider": "local", "os": os, "arch": arch})),
        )
        .await;
    let machine = reply.body["id"].as_str().unwrap().to_owned();
    api.wait_for_state(&machine, "ready").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let read_stream = |token: String| {
        let app = api.app.clone();
        async move {
            let request = Request::get("/v1/events?after=0")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "text/event-stream"
            );
            let mut body = response.into_body();
            let mut text = String::new();
            // Read what the replay sends; the stream itself never ends.
            while let Ok(Some(Ok(frame))) =
                tokio::time::timeout(Duration::from_millis(300), body.frame()).await
            {
                if let Some(data) = frame.data_ref() {
                    text.push_str(&String::from_utf8_lossy(data));
                }
            }
            text
        }
    };
    let acme_events = read_stream(acme.clone()).await;
    assert!(
        acme_events.contains("event: nimbus.machine.provision_start"),
        "{acme_events}"
    );
    assert!(
        acme_events.contains("event: nimbus.machine.ready"),
        "{acme_events}"
    );
    assert!(acme_events.contains(&machine));
    let globex_events = read_stream(globex).await;
    assert!(!globex_events.contains("nimbus.machine"), "{globex_events}");
    let reply = api
        .call("GET", "/v1/events?machine=xyz", Some(&acme), None)
        .await;
    assert_eq!(reply.body["error"]["field"], "machine");
    api.admin("DELETE", &format!("/v1/machines/{machine}"), None)
        .await;
    api.wait_for_state(&machine, "terminated").await;
}

#[tokio::test]
async fn the_whole_lifecycle_works_on_postgresql() {
    let postgres = nimbus_testkit::postgres::Postgres::start().expect("start PostgreSQL");
    let url = postgres.create_database("nimbusd_api").unwrap();
    let api = api_on(Some(url)).await;
    assert_eq!(
        api.call("GET", "/readyz", None, None).await.status,
        StatusCode::OK
    );
    let (_, token) = api.tenant("acme").await;
    let (os, arch) = host_platform();
    let reply = api
        .call("POST", "/v1/machines", Some(&token), Some(json!({"provider": "local", "os": os, "arch": arch, "labels": ["pg"], "setup_script": "true"})))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    api.wait_for_state(&id, "ready").await;
    let reply = api
        .admin("POST", "/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "conflict");
    api.call("DELETE", &format!("/v1/machines/{id}"), Some(&token), None)
        .await;
    api.wait_for_state(&id, "terminated").await;
    let history = api
        .admin("GET", &format!("/v1/machines/{id}/history"), None)
        .await;
    let states: Vec<&str> = history
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "provisioning",
            "image_installing",
            "ready",
            "stopping",
            "terminated"
        ]
    );
}

#[tokio::test]
async fn cached_listings_follow_every_machine_change() {
    let api = api().await;
    let (_, token) = api.tenant("acme").await;
    let (os, arch) = host_platform();
    let empty = api.call("GET", "/v1/machines", Some(&token), None).await;
    assert_eq!(empty.body["machines"], json!([]));
    // The same request again is served from the cache, unchanged.
    assert_eq!(
        api.call("GET", "/v1/machines", Some(&token), None)
            .await
            .text,
        empty.text
    );
    let reply = api
        .call(
            "POST",
            "/v1/machines",
            Some(&token),
            Some(json!({"provider": "local", "os": os, "arch": arch})),
        )
        .await;
    let id = reply.body["id"].as_str().unwrap().to_owned();
    let listed = api.call("GET", "/v1/machines", Some(&token), None).await;
    assert_eq!(
        listed.body["machines"].as_array().unwrap().len(),
        1,
        "{}",
        listed.text
    );
    api.wait_for_state(&id, "ready").await;
    let listed = api.call("GET", "/v1/machines", Some(&token), None).await;
    assert_eq!(
        listed.body["machines"][0]["state"], "ready",
        "{}",
        listed.text
    );
    api.call("DELETE", &format!("/v1/machines/{id}"), Some(&token), None)
        .await;
    api.wait_for_state(&id, "terminated").await;
    let listed = api.call("GET", "/v1/machines", Some(&token), None).await;
    assert_eq!(listed.body["machines"], json!([]), "{}", listed.text);
    let all = api
        .call(
            "GET",
            "/v1/machines?include_terminated=true",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        all.body["machines"][0]["state"], "terminated",
        "{}",
        all.text
    );
}
