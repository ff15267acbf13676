//! The ssh provider through the API against a real OpenSSH `sshd`: a bring-your-own host is
//! claimed, set up (progress read back from the host's own state.db), released; its host key is
//! pinned in the store, so a changed key refuses the host — also after the daemon restarts.

mod common;

use axum::http::StatusCode;
use nimbus_testkit::sshd::Sshd;
use serde_json::json;

use crate::common::api;

#[tokio::test]
async fn a_bring_your_own_host_is_set_up_and_its_host_key_is_pinned() {
    let mut sshd = Sshd::start().unwrap_or_else(|err| panic!("{err:#}"));
    let api = api().await;
    api.admin("POST", "/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    let host_id = format!("{}:{}", sshd.address(), sshd.port());
    let state_dir = sshd.scratch_dir().join("nimbus state");
    let reply = api
        .admin(
            "POST",
            "/v1/tenants/acme/providers",
            Some(json!({
                "name": "byo",
                "type": "ssh",
                "config": {"hosts": [{
                    "address": sshd.address(), "port": sshd.port(), "user": sshd.user(),
                    "os": "linux", "arch": nimbus_types::Arch::host().unwrap().as_str(),
                    "labels": ["byo"], "state_dir": state_dir.display().to_string(),
                }], "connect_timeout_secs": 5},
                "credentials": {"keys": {host_id.clone(): sshd.client_private_key()}},
            })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert!(!reply.text.contains("PRIVATE KEY"), "{}", reply.text);

    let provision = |label: &str| {
        json!({"tenant": "acme", "provider": "byo", "os": "linux",
               "arch": nimbus_types::Arch::host().unwrap().as_str(), "labels": [label],
               "setup_script": "echo \"set up as $(id -un)\" > done.txt"})
    };
    let reply = api
        .admin("POST", "/v1/machines", Some(provision("byo")))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    let ready = api.wait_for_state(&id, "ready").await;
    assert_eq!(ready["ip_address"], sshd.address());
    // The machine's setup progress comes from its own state.db over SSH.
    let steps = ready["setup_progress"]["steps"]
        .as_array()
        .expect("setup progress from the host");
    let script = steps.iter().find(|s| s["name"] == "setup_script").unwrap();
    assert_eq!(script["status"], "completed", "{ready:#}");
    assert!(
        steps
            .iter()
            .any(|s| s["name"] == "macos_tools" && s["status"] == "skipped")
    );
    assert!(state_dir.join("state.db").is_file());

    // Labels the host does not have: nothing to claim, the machine fails and says why.
    let reply = api
        .admin("POST", "/v1/machines", Some(provision("gpu")))
        .await;
    let other = reply.body["id"].as_str().unwrap().to_owned();
    let failed = api.wait_for_state(&other, "failed").await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("provider refused"),
        "{failed:#}"
    );

    api.admin("DELETE", &format!("/v1/machines/{id}"), None)
        .await;
    api.wait_for_state(&id, "terminated").await;

    // The host's key changes (a reinstalled or impostor host): it is refused, not re-pinned.
    sshd.rotate_host_key().unwrap();
    let reply = api
        .admin("POST", "/v1/machines", Some(provision("byo")))
        .await;
    let impostor = reply.body["id"].as_str().unwrap().to_owned();
    let failed = api.wait_for_state(&impostor, "failed").await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("key"), "{error}");
}

#[tokio::test]
async fn a_pool_on_bring_your_own_hosts_keeps_one_warm_and_drains() {
    let sshd = Sshd::start().unwrap_or_else(|err| panic!("{err:#}"));
    let api = api().await;
    api.admin("POST", "/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    let host_id = format!("{}:{}", sshd.address(), sshd.port());
    let arch = nimbus_types::Arch::host().unwrap().as_str();
    let reply = api
        .admin(
            "POST",
            "/v1/tenants/acme/providers",
            Some(json!({
                "name": "byo",
                "type": "ssh",
                "config": {"hosts": [{
                    "address": sshd.address(), "port": sshd.port(), "user": sshd.user(),
                    "os": "linux", "arch": arch, "labels": ["self-hosted", "byo"],
                    "state_dir": sshd.scratch_dir().join("state").display().to_string(),
                }], "connect_timeout_secs": 5},
                "credentials": {"keys": {host_id: sshd.client_private_key()}},
            })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let reply = api
        .admin(
            "POST",
            "/v1/tenants/acme/pools",
            Some(
                json!({"name": "byo", "provider": "byo", "labels": ["self-hosted", "byo"],
                        "os": "linux", "arch": arch, "min_idle": 1, "max": 1}),
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let pool_id = reply.body["id"].as_str().unwrap().to_owned();
    let fleet = &api.state.fleet;

    // The warm target claims the one host and sets it up.
    fleet.autoscale_once(nimbus_types::now()).await.unwrap();
    let machines = |body: &serde_json::Value| -> Vec<serde_json::Value> {
        body["machines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["pool_id"] == pool_id.as_str())
            .cloned()
            .collect()
    };
    let reply = api.admin("GET", "/v1/machines?tenant=acme", None).await;
    let listed = machines(&reply.body);
    assert_eq!(listed.len(), 1, "{}", reply.text);
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    api.wait_for_state(&id, "ready").await;
    // At the target: further passes start nothing (the host is the pool's only capacity).
    let outcomes = fleet.autoscale_once(nimbus_types::now()).await.unwrap();
    assert!(outcomes[0].decisions.is_empty(), "{outcomes:?}");

    // Draining releases the host.
    let reply = api
        .admin(
            "PATCH",
            "/v1/tenants/acme/pools/byo",
            Some(json!({"min_idle": 0, "max": 0})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    fleet.autoscale_once(nimbus_types::now()).await.unwrap();
    api.wait_for_state(&id, "terminated").await;
    let reply = api
        .admin("DELETE", "/v1/tenants/acme/pools/byo", None)
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
}
