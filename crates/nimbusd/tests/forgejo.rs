//! A Forgejo forge through the API: settings checked by field before they are stored (422 names
//! the field, never echoes the token), no webhook (Forgejo sends no job webhooks Nimbus counts),
//! and demand polled from Forgejo's runner job list — here Prism in proxy mode with Forgejo's
//! description in front of the stateful fake.

mod common;

use axum::http::StatusCode;
use nimbus_testkit::forgejo::FakeForgejo;
use nimbus_testkit::prism::{Prism, vendor_spec};
use serde_json::json;

use crate::common::{api, assert_error};

const TOKEN: &str = "0123456789abcdef0123456789abcdef01234567";

#[tokio::test]
async fn a_forgejo_forge_is_checked_stored_and_polled_for_demand() {
    let api = api().await;
    let (_tenant_id, tenant_token) = api.tenant("acme").await;

    for (config, credentials, field) in [
        (json!({}), json!({"token": TOKEN}), "config.url"),
        (
            json!({"url": "https://code.example.org", "repo": "acme/app"}),
            json!({"token": TOKEN}),
            "config.repo",
        ),
        (
            json!({"url": "https://code.example.org", "registration": "sometimes"}),
            json!({"token": TOKEN}),
            "config.registration",
        ),
        (
            json!({"url": "https://code.example.org"}),
            json!({}),
            "credentials.token",
        ),
        (
            json!({"url": "https://code.example.org"}),
            json!({"token": TOKEN, "webhook_secret": "x"}),
            "credentials",
        ),
    ] {
        let reply = api
            .admin(
                "PUT",
                "/v1/tenants/acme/forge",
                Some(json!({"type": "forgejo", "org": "acme", "config": config,
                            "credentials": credentials})),
            )
            .await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert!(reply.text.contains(field), "{field}: {}", reply.text);
        assert!(!reply.text.contains(TOKEN), "{}", reply.text);
    }

    let fake = FakeForgejo::start(TOKEN).unwrap();
    let prism = Prism::proxy(&vendor_spec("forgejo.json").unwrap(), &fake.url()).unwrap();
    let reply = api
        .admin(
            "PUT",
            "/v1/tenants/acme/forge",
            Some(json!({"type": "forgejo", "org": "acme",
                        "config": {"url": "https://code.example.org", "api_url": prism.url()},
                        "credentials": {"token": TOKEN}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(!reply.text.contains(TOKEN), "{}", reply.text);
    assert_eq!(reply.body["type"], "forgejo", "{}", reply.text);
    assert!(reply.body.get("webhook_path").is_none(), "{}", reply.text);

    fake.queue_job("acme", "app", 11, &["linux", "x64"]);
    fake.queue_job("acme", "app", 11, &["linux", "x64"]);
    nimbusd::http::demand::reconcile_once(&api.state).await;
    let demand = api
        .call("GET", "/v1/demand", Some(&tenant_token), None)
        .await;
    assert_eq!(demand.status, StatusCode::OK, "{}", demand.text);
    let rows = demand.body.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{}", demand.text);
    assert_eq!(rows[0]["labels"], json!(["linux", "x64"]));
    assert_eq!(rows[0]["queued"], 2);
    let violations = prism.violations();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
