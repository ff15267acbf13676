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
