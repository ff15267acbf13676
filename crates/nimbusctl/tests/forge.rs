//! End to end: a GitHub forge set from files with the real `nimbusctl`, the webhook URL it
//! prints taking a signed delivery on the real `nimbusd`, and `nimbusctl demand list` showing it.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::{World, dead_url};

/// A plain HTTP/1.1 POST of a GitHub delivery signed with `secret`: status and body.
fn deliver(url: &str, secret: &str, event: &str, delivery: &str, body: &str) -> (u16, String) {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http URL: {url}"));
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream =
        TcpStream::connect(authority).unwrap_or_else(|err| panic!("connect {authority}: {err}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nX-GitHub-Event: {event}\r\n\
         X-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {head:?}"));
    (status, body.to_owned())
}

#[test]
fn forge_set_show_webhook_and_demand_list() {
    let w = World::start();
    w.ctl(&["tenant", "create", "acme"]).ok();
    let token = w.write_file("pat.txt", "ghp_e2e-t0ken\n");
    let secret = w.write_file("hook.secret", "e2e-hook-s3cret\n");
    // Nothing listens at the API URL: the daemon's demand reconcile fails and retries, which
    // must not disturb the webhook path.
    let api_url = format!("{}/api/v3", dead_url());

    let missing = w.ctl(&[
        "forge",
        "set",
        "--tenant",
        "acme",
        "--type",
        "github",
        "--org",
        "acme-corp",
        "--app-id",
        "1",
    ]);
    missing.fails_with("--installation-id");
    let conflicting = w.ctl(&[
        "forge",
        "set",
        "--tenant",
        "acme",
        "--type",
        "github",
        "--org",
        "acme-corp",
        "--token-file",
        token.to_str().unwrap(),
        "--app-id",
        "1",
    ]);
    conflicting.fails_with("cannot be used with");

    let set = w
        .ctl(&[
            "forge",
            "set",
            "--tenant",
            "acme",
            "--type",
            "github",
            "--org",
            "acme-corp",
            "--repo",
            "app",
            "--token-file",
            token.to_str().unwrap(),
            "--webhook-secret-file",
            secret.to_str().unwrap(),
            "--api-url",
            &api_url,
        ])
        .ok();
    let show = w.ctl(&["forge", "show", "--tenant", "acme"]).ok();
    for run in [&set, &show] {
        for leaked in ["ghp_e2e-t0ken", "e2e-hook-s3cret"] {
            assert!(
                !run.stdout.contains(leaked) && !run.stderr.contains(leaked),
                "{leaked} shown:\n{}",
                run.stdout
            );
        }
    }
    let json = w
        .ctl(&["forge", "show", "--tenant", "acme", "--json"])
        .ok()
        .json();
    let tenant_id = json["tenant_id"].as_str().unwrap().to_owned();
    let webhook_url = json["webhook_url"]
        .as_str()
        .unwrap_or_else(|| panic!("no webhook_url in {json:#}"))
        .to_owned();
    assert_eq!(
        webhook_url,
        format!("{}/v1/tenants/{tenant_id}/forge/webhook", w.url())
    );
    assert!(
        show.stdout.contains(&format!("webhook URL: {webhook_url}")),
        "{}",
        show.stdout
    );
    assert_eq!(json["has_credentials"], true);

    let job = r#"{"action":"queued","workflow_job":{"id":41,"run_id":7,"labels":["self-hosted","Linux"]},"repository":{"full_name":"acme-corp/app"}}"#;
    let (status, body) = deliver(
        &webhook_url,
        "e2e-hook-s3cret",
        "workflow_job",
        "e2e-1",
        job,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = deliver(&webhook_url, "wrong", "workflow_job", "e2e-2", job);
    assert_eq!(status, 401, "{body}");

    let list = w.ctl(&["demand", "list"]).ok();
    let rows = list.table();
    assert_eq!(
        rows[0],
        [
            "TENANT",
            "LABELS",
            "QUEUED",
            "WAITING",
            "IN PROGRESS",
            "OLDEST"
        ],
        "{}",
        list.stdout
    );
    assert_eq!(rows.len(), 2, "{}", list.stdout);
    assert_eq!(
        rows[1][..5],
        [tenant_id.as_str(), "linux,self-hosted", "1", "0", "0"],
        "{}",
        list.stdout
    );
    let json = w
        .ctl(&["demand", "list", "--tenant", "acme", "--json"])
        .ok()
        .json();
    assert_eq!(json[0]["queued"], 1, "{json:#}");
}
