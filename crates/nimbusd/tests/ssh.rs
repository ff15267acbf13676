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
