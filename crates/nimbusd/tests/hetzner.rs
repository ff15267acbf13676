//! The hetzner provider through the API: Prism in proxy mode (Hetzner's own description) in
//! front of the stateful fake. A provider is added with sealed credentials that never come
//! back, a machine is provisioned and terminated, and bad settings are a 4xx naming the field.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use nimbus_testkit::hetzner::FakeHetzner;
use nimbus_testkit::prism::{Prism, vendor_spec};
use serde_json::{Value, json};

use crate::common::{Api, api, assert_error};

const TOKEN: &str = "hcloud-api-token-s3cr3t";

async fn wait_for(api: &Api, id: &str, state: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        let reply = api.admin("GET", &format!("/v1/machines/{id}"), None).await;
        if reply.body["state"] == state {
            return reply.body;
        }
        last = reply.body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("machine {id} never reached {state}: {last:#}");
}

#[tokio::test]
async fn a_hetzner_machine_through_the_api() {
    let fake = FakeHetzner::start(TOKEN, "127.0.0.1").unwrap();
    let prism = Prism::proxy(&vendor_spec("hetzner-cloud.json").unwrap(), &fake.url()).unwrap();
    let api = api().await;
    api.admin("POST", "/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    let config = json!({
        "endpoint_url": prism.url(),
        "locations": ["fsn1", "nbg1"],
        "poll_interval_ms": 50,
    });

    // Bad settings name the field; the token never appears in an answer.
    let reply = api
        .admin(
            "POST",
            "/v1/tenants/acme/providers",
            Some(json!({"name": "hcloud", "type": "hetzner",
                        "config": {"locations": ["Falkenstein 1"]},
                        "credentials": {"api_token": TOKEN}})),
        )
        .await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert!(reply.text.contains("config.locations[0]"), "{}", reply.text);
    let reply = api
        .admin(
            "POST",
            "/v1/tenants/acme/providers",
            Some(json!({"name": "hcloud", "type": "hetzner", "config": config})),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert!(reply.text.contains("credentials"), "{}", reply.text);

    let reply = api
        .admin(
            "POST",
            "/v1/tenants/acme/providers",
            Some(
                json!({"name": "hcloud", "type": "hetzner", "config": config,
                        "credentials": {"api_token": TOKEN}}),
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert!(!reply.text.contains(TOKEN), "{}", reply.text);
    let listed = api.admin("GET", "/v1/providers", None).await;
    assert!(!listed.text.contains(TOKEN), "{}", listed.text);

    let reply = api
        .admin(
            "POST",
            "/v1/machines",
            Some(
                json!({"tenant": "acme", "provider": "hcloud", "os": "linux",
                        "arch": "x86_64", "labels": ["hetzner"], "skip_setup": true}),
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    let ready = wait_for(&api, &id, "ready").await;
    assert_eq!(ready["ip_address"], "127.0.0.1", "{ready:#}");
    let servers = fake.servers();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].2["nimbus-machine"], id);

    let reply = api
        .admin("DELETE", &format!("/v1/machines/{id}"), None)
        .await;
    assert!(reply.status.is_success(), "{}", reply.text);
    wait_for(&api, &id, "terminated").await;
    assert!(fake.servers().is_empty(), "{:?}", fake.servers());
    let violations = prism.violations();
    assert!(violations.is_empty(), "{violations:?}\n{}", prism.log());
}
