//! The same server on PostgreSQL (sqlx `Any`): repositories, collaborators, pushes and the event
//! outbox. Slow (starts a real PostgreSQL), so gated by NIMBUS_SLOW_TESTS like the other suites.

mod common;

use common::{OWNER, Server};

#[test]
fn works_on_postgresql() {
    if std::env::var_os("NIMBUS_SLOW_TESTS").is_none() {
        eprintln!("skipped: set NIMBUS_SLOW_TESTS=1 (scripts/test does) to run against PostgreSQL");
        return;
    }
    let pg =
        nimbus_testkit::postgres::Postgres::start().expect("start PostgreSQL (package postgresql)");
    let url = pg.create_database("nimbus_git").expect("create database");
    let server = Server::start_with(|s| s.database_url = url.clone());
    server.create_repo("pg", true);
    server.create_user("dev", "dev-password");
    server.grant("pg", "dev", "write");
    let work = server.work_tree("work", 3);
    server.git(
        &work,
        &[
            "push",
            "-q",
            &server.repo_url("pg", Some(("dev", "dev-password"))),
            "main",
        ],
    );
    // Events are written right after the push response ends, so poll for them.
    let mut kinds: Vec<String> = Vec::new();
    server.wait_for("push events in the PostgreSQL outbox", || {
        let (status, events) = server.api("GET", "/repos/pg/events", Some(OWNER), None);
        assert_eq!(status, 200, "{events}");
        kinds = events
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["kind"].as_str().map(str::to_owned))
            .collect();
        kinds.iter().any(|k| k == "CommitPushed")
    });
    assert!(
        kinds.iter().any(|k| k == "RepositoryCreated"),
        "{kinds:?}\n{}",
        pg.log()
    );
    let (status, _) = server.api(
        "POST",
        "/repos",
        Some(OWNER),
        Some(serde_json::json!({"name": "pg"})),
    );
    assert_eq!(
        status, 409,
        "unique violation maps to 409 on PostgreSQL too"
    );
}

/// CI on PostgreSQL: runs with jobs and steps, binary log chunks (BYTEA), the derived state and
/// its events, statuses, sealed secrets, job tokens with the real `git clone`.
#[test]
fn ci_works_on_postgresql() {
    if std::env::var_os("NIMBUS_SLOW_TESTS").is_none() {
        eprintln!("skipped: set NIMBUS_SLOW_TESTS=1 (scripts/test does) to run against PostgreSQL");
        return;
    }
    use serde_json::json;
    let pg =
        nimbus_testkit::postgres::Postgres::start().expect("start PostgreSQL (package postgresql)");
    let url = pg
        .create_database("nimbus_git_ci")
        .expect("create database");
    let server = Server::start_with(|s| s.database_url = url.clone());
    server.create_repo("ci", true);
    let work = server.work_tree("work", 2);
    server.git(
        &work,
        &["push", "-q", &server.repo_url("ci", Some(OWNER)), "main"],
    );
    let sha = common::head_of(&server, &work, "HEAD");
    let (status, body) = server.api(
        "POST",
        "/repos/ci/runs",
        Some(OWNER),
        Some(
            json!({"sha": sha, "ref": "refs/heads/main", "workflow": ".nimbus/workflows/ci.yml",
            "name": "CI", "event": "push", "pusher": "owner",
            "jobs": [{"key": "build", "name": "build", "steps": ["make"]}]}),
        ),
    );
    assert_eq!(status, 201, "{body}\n{}", pg.log());
    let (status, body) = server.api(
        "PUT",
        "/repos/ci/secrets/TOKEN",
        Some(OWNER),
        Some(json!({"value": "pg-secret"})),
    );
    assert_eq!(status, 204, "{body}");
    let (_, secrets) = server.api("GET", "/repos/ci/runs/1/secrets", Some(OWNER), None);
    assert_eq!(secrets["secrets"]["TOKEN"], "pg-secret", "{secrets}");
    let (status, token) = server.api(
        "POST",
        "/repos/ci/runs/1/jobs/build/token",
        Some(OWNER),
        None,
    );
    assert_eq!(status, 201, "{token}");
    let clones = server.scratch("clones");
    server.git(
        &clones,
        &[
            "clone",
            "-q",
            &server.repo_url("ci", Some(("job", token["token"].as_str().unwrap()))),
            "c",
        ],
    );
    let (status, body) = server.api(
        "PATCH",
        "/repos/ci/runs/1/jobs/build",
        Some(OWNER),
        Some(json!({"state": "running"})),
    );
    assert_eq!(status, 200, "{body}");
    // Bytes that are not UTF-8 (and a NUL) survive the round trip.
    let chunk: &[u8] = b"out \xff\x00 bytes\n";
    let (status, _, body) = server.request_full(
        "POST",
        "/api/v1/repos/ci/runs/1/jobs/build/logs?step=0",
        Some(OWNER),
        Some(chunk.to_vec()),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let log = server.rt.block_on(async {
        server
            .http
            .get(format!(
                "{}/api/v1/repos/ci/runs/1/jobs/build/logs",
                server.url
            ))
            .basic_auth(OWNER.0, Some(OWNER.1))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    assert_eq!(&log[..], chunk);
    server.api(
        "PATCH",
        "/repos/ci/runs/1/jobs/build",
        Some(OWNER),
        Some(json!({"state": "success"})),
    );
    let (_, run) = server.api("GET", "/repos/ci/runs/1", Some(OWNER), None);
    assert_eq!(run["state"], "success", "{run}");
    let (status, runs) = server.api(
        "GET",
        &format!("/repos/ci/runs?sha={sha}&ref=refs/heads/main&limit=5"),
        Some(OWNER),
        None,
    );
    assert_eq!(status, 200, "{runs}");
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    let (status, readme) = server.api(
        "GET",
        "/repos/ci/contents/README.md?ref=main",
        Some(OWNER),
        None,
    );
    assert_eq!(status, 200, "{readme}");
    let (status, page) =
        server.request("GET", &format!("/ci/commit/{sha}"), Some(OWNER), None, &[]);
    assert_eq!(status, 200);
    assert!(page.contains("href=\"/ci/runs/1\""), "{page}");
    let (status, body) = server.api(
        "POST",
        &format!("/repos/ci/statuses/{sha}"),
        Some(OWNER),
        Some(json!({"state": "success", "context": "nimbus"})),
    );
    assert_eq!(status, 201, "{body}");
    let (_, combined) = server.api(
        "GET",
        &format!("/repos/ci/statuses/{sha}"),
        Some(OWNER),
        None,
    );
    assert_eq!(combined["state"], "success", "{combined}");
    let (_, events) = server.api("GET", "/repos/ci/events", Some(OWNER), None);
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"RunStarted") && kinds.contains(&"RunCompleted"),
        "{kinds:?}"
    );
    let (status, _) = server.api("DELETE", "/repos/ci", Some(OWNER), None);
    assert_eq!(status, 204, "deleting a repository removes its CI rows too");
}
