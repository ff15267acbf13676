#![cfg(feature = "aws")]

//! The aws provider through the API, against a real moto server: what `nimbusctl provider add
//! --type aws` and `machine provision --no-setup` do.

mod common;

use axum::http::StatusCode;
use nimbus_testkit::moto::{self, MotoServer};
use serde_json::json;

use crate::common::{api, assert_error};

#[tokio::test]
async fn linux_and_mac_machines_on_ec2_through_the_api() {
    let moto = MotoServer::start().unwrap_or_else(|err| panic!("{err:#}"));
    let api = api().await;
    api.admin("POST", "/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    let config = json!({
        "region": "us-east-1",
        "availability_zones": ["us-east-1a"],
        "endpoint_url": moto.endpoint(),
        "ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG7/PuKk21/JWvuzCILsUiT7OuXa9IfIqp4ar6UW/ssc nimbus-test",
        "linux_instance_type": "t3.micro",
        "image_ids": {
            "linux_x86_64": moto::AMI_LINUX_X86_64,
            "macos_arm64": moto::AMI_MACOS_ARM64,
        },
        "orphan_grace_secs": 0,
    });
    // Access keys in the plain config are refused, naming the field.
    let mut leaky = config.clone();
    leaky["secret_access_key"] = json!("s3cr3t");
    let reply = api
        .admin(
            "POST",
            "/v1/tenants/acme/providers",
            Some(json!({"name": "ec2", "type": "aws", "config": leaky})),
        )
        .await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert!(!reply.text.contains("s3cr3t"), "{}", reply.text);

    let reply = api
        .admin("POST", "/v1/tenants/acme/providers", Some(json!({
            "name": "ec2", "type": "aws", "config": config,
            "credentials": {"access_key_id": "AKIANIMBUSTEST000001", "secret_access_key": "nimbus-test-secret-4711"},
        })))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert!(!reply.text.contains("nimbus-test-secret-4711"));

    // Linux: an instance, ready at once with a prebuilt image.
    let reply = api
        .admin("POST", "/v1/machines", Some(json!({"tenant": "acme", "provider": "ec2", "os": "linux", "arch": "x86_64", "skip_setup": true, "labels": ["ec2"]})))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let linux = reply.body["id"].as_str().unwrap().to_owned();
    let ready = api.wait_for_state(&linux, "ready").await;
    assert!(
        ready["provider_metadata"]["instance_id"]
            .as_str()
            .unwrap()
            .starts_with("i-"),
        "{ready}"
    );
    let answer = api
        .admin("GET", &format!("/v1/machines/{linux}/can-terminate"), None)
        .await;
    assert_eq!(answer.body["can_terminate"], true, "{}", answer.text);

    // macOS: on a dedicated host with its 24-hour minimum.
    let reply = api
        .admin("POST", "/v1/machines", Some(json!({"tenant": "acme", "provider": "ec2", "os": "macos", "arch": "arm64", "skip_setup": true})))
        .await;
    let mac = reply.body["id"].as_str().unwrap().to_owned();
    let ready = api.wait_for_state(&mac, "ready").await;
    assert!(
        ready["provider_metadata"]["host_id"]
            .as_str()
            .unwrap()
            .starts_with("h-"),
        "{ready}"
    );
    assert_eq!(ready["provider_metadata"]["minimum_allocation_hours"], 24);
    let answer = api
        .admin("GET", &format!("/v1/machines/{mac}/can-terminate"), None)
        .await;
    assert_eq!(answer.body["can_terminate"], false, "{}", answer.text);
    assert_eq!(answer.body["error"], "minimum_allocation_period");
    let hours = answer.body["hours_remaining"].as_f64().unwrap();
    assert!(hours > 23.0 && hours <= 24.0, "{hours}");

    for id in [&linux, &mac] {
        let reply = api
            .admin("DELETE", &format!("/v1/machines/{id}"), None)
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
        api.wait_for_state(id, "terminated").await;
    }
    let history = api
        .admin("GET", &format!("/v1/machines/{mac}/history"), None)
        .await;
    assert!(
        history.text.contains("keeps its resources"),
        "{}",
        history.text
    );
}
