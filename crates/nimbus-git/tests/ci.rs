//! CI on the forge side, against a real server and the real `git`: contents at a revision,
//! commit statuses, runs with jobs, steps and logs (derived state, events, cancel, rerun), job
//! tokens used by `git clone`, sealed secrets with the withheld rule, the CI pages, and the bad
//! cases (unknown sha, bad state, illegal moves, over-long values, wrong callers, caps).

mod common;

use common::{OWNER, Server, head_of};
use serde_json::{Value, json};

/// A repository `name` with one pushed commit holding a workflow, a nested file and a README.
fn pushed(server: &Server, name: &str, private: bool) -> (std::path::PathBuf, String) {
    server.create_repo(name, private);
    let work = server.work_tree(&format!("work-{name}"), 2);
    std::fs::create_dir_all(work.join(".nimbus/workflows")).unwrap();
    std::fs::write(
        work.join(".nimbus/workflows/ci.yml"),
        "on: push\njobs:\n  build:\n    runs-on: [linux]\n    steps:\n      - run: make\n",
    )
    .unwrap();
    server.git(&work, &["add", "."]);
    server.git(&work, &["commit", "-q", "-m", "add a workflow"]);
    server.git(
        &work,
        &["push", "-q", &server.repo_url(name, Some(OWNER)), "main"],
    );
    let sha = head_of(server, &work, "HEAD");
    (work, sha)
}

fn expect(what: &str, got: (u16, Value), status: u16, message_contains: &str) -> Value {
    assert_eq!(got.0, status, "{what}: {}", got.1);
    if !message_contains.is_empty() {
        let message = got.1["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(message_contains),
            "{what}: message {message:?} lacks {message_contains:?}"
        );
    }
    got.1
}

fn events_of(server: &Server, repo: &str) -> Vec<Value> {
    let (status, events) = server.api(
        "GET",
        &format!("/repos/{repo}/events?limit=500"),
        Some(OWNER),
        None,
    );
    assert_eq!(status, 200, "{events}");
    let mut events = events.as_array().unwrap().clone();
    events.reverse();
    events
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .filter(|k| k.starts_with("Run"))
        .collect()
}

fn read_token(server: &Server, user: (&str, &str)) -> String {
    let (status, body) = server.api(
        "POST",
        "/tokens",
        Some(user),
        Some(json!({"name": "ro", "scope": "read"})),
    );
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

fn two_job_run(sha: &str) -> Value {
    json!({
        "sha": sha, "ref": "refs/heads/main", "workflow": ".nimbus/workflows/ci.yml",
        "name": "CI", "event": "push", "pusher": "owner",
        "jobs": [
            {"key": "build", "name": "build", "runs_on": ["linux"], "steps": ["checkout", "make"]},
            {"key": "test", "name": "test", "needs": ["build"], "runs_on": ["linux"], "steps": ["make test"]}
        ]
    })
}

fn append_log(
    server: &Server,
    repo: &str,
    run: i64,
    key: &str,
    step: Option<i64>,
    text: &[u8],
) -> (u16, Value) {
    let query = step.map(|s| format!("?step={s}")).unwrap_or_default();
    let (status, _, body) = server.request_full(
        "POST",
        &format!("/api/v1/repos/{repo}/runs/{run}/jobs/{key}/logs{query}"),
        Some(OWNER),
        Some(text.to_vec()),
        &[("content-type", "text/plain")],
    );
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn patch_job(server: &Server, repo: &str, run: i64, key: &str, body: Value) -> (u16, Value) {
    server.api(
        "PATCH",
        &format!("/repos/{repo}/runs/{run}/jobs/{key}"),
        Some(OWNER),
        Some(body),
    )
}

fn patch_step(
    server: &Server,
    repo: &str,
    run: i64,
    key: &str,
    idx: i64,
    body: Value,
) -> (u16, Value) {
    server.api(
        "PATCH",
        &format!("/repos/{repo}/runs/{run}/jobs/{key}/steps/{idx}"),
        Some(OWNER),
        Some(body),
    )
}

#[test]
fn contents_at_a_revision() {
    let server = Server::start();
    let (work, sha) = pushed(&server, "code", true);
    let (status, dir) = server.api("GET", "/repos/code/contents", Some(OWNER), None);
    assert_eq!(status, 200, "{dir}");
    assert_eq!(dir["type"], "dir");
    let names: Vec<&str> = dir["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [".nimbus", "README.md", "file1.txt"], "{dir}");
    let readme = &dir["entries"][1];
    assert_eq!(readme["type"], "file");
    assert_eq!(readme["size"], 28, "{readme}");
    assert_eq!(dir["entries"][0]["type"], "dir");
    assert_eq!(dir["entries"][0]["size"], 0);

    let (status, wf) = server.api(
        "GET",
        &format!("/repos/code/contents/.nimbus/workflows?ref={sha}"),
        Some(OWNER),
        None,
    );
    assert_eq!(status, 200, "{wf}");
    assert_eq!(wf["entries"][0]["path"], ".nimbus/workflows/ci.yml");

    let (status, file) = server.api(
        "GET",
        "/repos/code/contents/.nimbus/workflows/ci.yml?ref=main",
        Some(OWNER),
        None,
    );
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["encoding"], "base64");
    use base64::Engine as _;
    let content = base64::engine::general_purpose::STANDARD
        .decode(file["content"].as_str().unwrap())
        .unwrap();
    assert!(
        String::from_utf8(content)
            .unwrap()
            .starts_with("on: push\n")
    );
    assert_eq!(file["sha"].as_str().unwrap().len(), 40);

    // An older revision by tag does not have the workflow.
    server.git(&work, &["tag", "old", "HEAD~1"]);
    server.git(
        &work,
        &["push", "-q", &server.repo_url("code", Some(OWNER)), "old"],
    );
    expect(
        "path missing at an older tag",
        server.api(
            "GET",
            "/repos/code/contents/.nimbus?ref=old",
            Some(OWNER),
            None,
        ),
        404,
        "path: no '.nimbus'",
    );
    expect(
        "unknown ref",
        server.api("GET", "/repos/code/contents?ref=nope", Some(OWNER), None),
        404,
        "ref: no commit 'nope'",
    );
    expect(
        "unknown sha",
        server.api(
            "GET",
            &format!("/repos/code/contents?ref={}", "0".repeat(40)),
            Some(OWNER),
            None,
        ),
        404,
        "ref:",
    );
    expect(
        "private repository, anonymous",
        server.api("GET", "/repos/code/contents", None, None),
        401,
        "",
    );

    // A file over 10 MiB is refused with its size.
    let big = 10 * 1024 * 1024 + 1;
    std::fs::write(work.join("big.bin"), vec![b'x'; big]).unwrap();
    server.git(&work, &["add", "."]);
    server.git(&work, &["commit", "-q", "-m", "big"]);
    server.git(
        &work,
        &["push", "-q", &server.repo_url("code", Some(OWNER)), "main"],
    );
    let body = expect(
        "10 MiB file",
        server.api("GET", "/repos/code/contents/big.bin", Some(OWNER), None),
        413,
        &format!("{big} bytes"),
    );
    assert_eq!(body["error"]["code"], "too_large");
    let (status, dir) = server.api("GET", "/repos/code/contents", Some(OWNER), None);
    assert_eq!(status, 200);
    assert!(
        dir["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "big.bin" && e["size"] == big),
        "the listing still gives the size: {dir}"
    );
}

#[test]
fn commit_statuses_and_their_bad_cases() {
    let server = Server::start();
    let (_, sha) = pushed(&server, "st", false);
    let path = format!("/repos/st/statuses/{sha}");
    let (status, empty) = server.api("GET", &path, None, None);
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty["state"], "pending");
    assert_eq!(empty["statuses"], json!([]));

    let post = |body: Value| server.api("POST", &path, Some(OWNER), Some(body));
    let created = expect(
        "create",
        post(
            json!({"state": "running", "context": "ci/build", "description": "building",
                    "target_url": "http://ci.example/1"}),
        ),
        201,
        "",
    );
    assert_eq!(created["creator"], "owner");
    assert_eq!(created["sha"], sha.as_str());
    expect(
        "default context",
        post(json!({"state": "success"})),
        201,
        "",
    );
    let (_, combined) = server.api("GET", &path, None, None);
    assert_eq!(combined["state"], "running", "{combined}");
    expect(
        "later status",
        post(json!({"state": "failure", "context": "ci/build"})),
        201,
        "",
    );
    let (_, combined) = server.api("GET", &path, None, None);
    assert_eq!(combined["state"], "failure", "{combined}");
    let contexts: Vec<(&str, &str)> = combined["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["context"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(contexts, [("ci/build", "failure"), ("default", "success")]);

    // Bad input, each naming its field.
    expect(
        "unknown sha",
        server.api(
            "POST",
            &format!("/repos/st/statuses/{}", "a".repeat(40)),
            Some(OWNER),
            Some(json!({"state": "success"})),
        ),
        404,
        "sha: no commit",
    );
    expect(
        "short sha",
        server.api("GET", "/repos/st/statuses/abc123", None, None),
        422,
        "sha:",
    );
    expect("bad state", post(json!({"state": "green"})), 422, "state");
    expect(
        "long context",
        post(json!({"state": "success", "context": "c".repeat(256)})),
        422,
        "context:",
    );
    expect(
        "empty context",
        post(json!({"state": "success", "context": ""})),
        422,
        "context:",
    );
    expect(
        "long description",
        post(json!({"state": "success", "description": "d".repeat(1001)})),
        422,
        "description:",
    );
    expect(
        "javascript url",
        post(json!({"state": "success", "target_url": "javascript:alert(1)"})),
        422,
        "target_url:",
    );
    expect(
        "long url",
        post(
            json!({"state": "success", "target_url": format!("https://x.example/{}", "a".repeat(2048))}),
        ),
        422,
        "target_url:",
    );
    expect(
        "unknown field",
        post(json!({"state": "success", "colour": "green"})),
        422,
        "colour",
    );
    // Who may post: write access, not read.
    server.create_user("reader", "reader-password");
    server.grant("st", "reader", "read");
    expect(
        "read collaborator",
        server.api(
            "POST",
            &path,
            Some(("reader", "reader-password")),
            Some(json!({"state": "success"})),
        ),
        403,
        "needs write",
    );
    let token = read_token(&server, OWNER);
    expect(
        "owner's read-only token",
        server.api(
            "POST",
            &path,
            Some(("owner", &token)),
            Some(json!({"state": "success"})),
        ),
        403,
        "",
    );
    expect(
        "anonymous",
        server.api("POST", &path, None, Some(json!({"state": "success"}))),
        401,
        "",
    );
}

#[test]
fn runs_jobs_steps_logs_and_events() {
    let server = Server::start();
    let (_, sha) = pushed(&server, "app", false);
    let run = expect(
        "create run",
        server.api(
            "POST",
            "/repos/app/runs",
            Some(OWNER),
            Some(two_job_run(&sha)),
        ),
        201,
        "",
    );
    assert_eq!(run["number"], 1);
    assert_eq!(run["state"], "queued");
    assert_eq!(run["ref"], "refs/heads/main");
    assert_eq!(run["jobs"][1]["needs"], json!(["build"]));
    assert_eq!(run["jobs"][0]["steps"][1]["name"], "make");
    assert_eq!(run["jobs"][0]["attempt"], 1);
    assert_eq!(run["cancel_requested"], false);
    let second = expect(
        "second run",
        server.api(
            "POST",
            "/repos/app/runs",
            Some(OWNER),
            Some(two_job_run(&sha)),
        ),
        201,
        "",
    );
    assert_eq!(second["number"], 2, "run numbers increase per repository");

    // build runs and succeeds
    let job = expect(
        "build running",
        patch_job(
            &server,
            "app",
            1,
            "build",
            json!({"state": "running", "machine": "local-1"}),
        ),
        200,
        "",
    );
    assert_eq!(job["machine"], "local-1");
    assert!(job["started_at"].is_string());
    let (_, run) = server.api("GET", "/repos/app/runs/1", None, None);
    assert_eq!(run["state"], "running");
    expect(
        "step 0 running",
        patch_step(&server, "app", 1, "build", 0, json!({"state": "running"})),
        200,
        "",
    );
    assert_eq!(
        append_log(&server, "app", 1, "build", None, b"machine ready\n").0,
        200
    );
    let appended = expect(
        "log of step 0",
        append_log(&server, "app", 1, "build", Some(0), b"cloning\n"),
        200,
        "",
    );
    assert_eq!(appended["stored"], 8);
    expect(
        "step 0 ok",
        patch_step(
            &server,
            "app",
            1,
            "build",
            0,
            json!({"state": "success", "exit_code": 0}),
        ),
        200,
        "",
    );
    expect(
        "step 1 running",
        patch_step(&server, "app", 1, "build", 1, json!({"state": "running"})),
        200,
        "",
    );
    append_log(
        &server,
        "app",
        1,
        "build",
        Some(1),
        "cc -o app main.c\n✓ built\n".as_bytes(),
    );
    expect(
        "step 1 ok",
        patch_step(
            &server,
            "app",
            1,
            "build",
            1,
            json!({"state": "success", "exit_code": 0}),
        ),
        200,
        "",
    );
    let done = expect(
        "build ok",
        patch_job(
            &server,
            "app",
            1,
            "build",
            json!({"state": "success", "exit_code": 0}),
        ),
        200,
        "",
    );
    assert_eq!(done["steps"][1]["exit_code"], 0);
    assert_eq!(
        done["log_bytes"],
        14 + 8 + "cc -o app main.c\n✓ built\n".len()
    );
    let (status, log) = server.request(
        "GET",
        "/api/v1/repos/app/runs/1/jobs/build/logs",
        None,
        None,
        &[],
    );
    assert_eq!(status, 200);
    assert_eq!(log, "machine ready\ncloning\ncc -o app main.c\n✓ built\n");
    let (_, log) = server.request(
        "GET",
        "/api/v1/repos/app/runs/1/jobs/build/logs?step=1",
        None,
        None,
        &[],
    );
    assert_eq!(log, "cc -o app main.c\n✓ built\n");

    // test fails: the run fails
    patch_job(&server, "app", 1, "test", json!({"state": "running"}));
    patch_step(&server, "app", 1, "test", 0, json!({"state": "running"}));
    append_log(&server, "app", 1, "test", Some(0), b"1 test failed\n");
    patch_step(
        &server,
        "app",
        1,
        "test",
        0,
        json!({"state": "failure", "exit_code": 1}),
    );
    expect(
        "test failed",
        patch_job(
            &server,
            "app",
            1,
            "test",
            json!({"state": "failure", "exit_code": 1}),
        ),
        200,
        "",
    );
    let (_, run) = server.api("GET", "/repos/app/runs/1", None, None);
    assert_eq!(run["state"], "failure", "{run}");
    assert_eq!(run["conclusion"], "failure");
    assert!(run["finished_at"].is_string());

    // Repeating a final report is harmless; moving out of it is not.
    expect(
        "repeat",
        patch_job(&server, "app", 1, "test", json!({"state": "failure"})),
        200,
        "",
    );
    expect(
        "finished job back to running",
        patch_job(&server, "app", 1, "test", json!({"state": "running"})),
        409,
        "state: job 'test' cannot move from failure to running",
    );
    expect(
        "run 2 build running",
        patch_job(&server, "app", 2, "build", json!({"state": "running"})),
        200,
        "",
    );
    expect(
        "running back to queued",
        patch_job(&server, "app", 2, "build", json!({"state": "queued"})),
        409,
        "back to queued",
    );
    expect(
        "finished step",
        patch_step(&server, "app", 1, "test", 0, json!({"state": "success"})),
        409,
        "step 0",
    );
    expect(
        "log to a finished job",
        append_log(&server, "app", 1, "test", None, b"late\n"),
        409,
        "log is closed",
    );

    // Bad input names its field.
    expect(
        "bad state",
        patch_job(&server, "app", 2, "test", json!({"state": "done"})),
        422,
        "state",
    );
    expect(
        "unknown job",
        patch_job(&server, "app", 2, "deploy", json!({"state": "running"})),
        404,
        "key: run 2 has no job 'deploy'",
    );
    expect(
        "unknown run",
        patch_job(&server, "app", 9, "build", json!({"state": "running"})),
        404,
        "number:",
    );
    expect(
        "bad run number",
        server.api("GET", "/repos/app/runs/x1", None, None),
        422,
        "number:",
    );
    expect(
        "unknown step",
        patch_step(&server, "app", 2, "build", 7, json!({"state": "running"})),
        404,
        "index:",
    );
    expect(
        "long machine",
        patch_job(
            &server,
            "app",
            2,
            "build",
            json!({"state": "running", "machine": "m".repeat(256)}),
        ),
        422,
        "machine:",
    );
    expect(
        "exit code range",
        patch_job(
            &server,
            "app",
            2,
            "build",
            json!({"state": "running", "exit_code": 1_i64 << 40}),
        ),
        422,
        "exit_code:",
    );
    expect(
        "log to unknown step",
        append_log(&server, "app", 2, "build", Some(5), b"x"),
        404,
        "step:",
    );
    expect(
        "log step not a number",
        append_log(&server, "app", 2, "build", Some(-1), b"x"),
        422,
        "step:",
    );

    // Creating runs: every field checked.
    let mut bad = two_job_run(&sha);
    bad["sha"] = json!("b".repeat(40));
    let create =
        |body: &Value| server.api("POST", "/repos/app/runs", Some(OWNER), Some(body.clone()));
    expect("unknown sha", create(&bad), 404, "sha: no commit");
    for (field, value, message) in [
        ("name", json!("n".repeat(256)), "name:"),
        ("ref", json!(""), "ref:"),
        ("workflow", json!("w".repeat(256)), "workflow:"),
        ("pusher", json!("p".repeat(101)), "pusher:"),
        ("event", json!("push\u{1}"), "event:"),
    ] {
        let mut body = two_job_run(&sha);
        body[field] = value;
        expect(field, create(&body), 422, message);
    }
    let mut body = two_job_run(&sha);
    body["jobs"][1]["key"] = json!("build");
    expect(
        "duplicate key",
        create(&body),
        422,
        "jobs[1].key: 'build' appears twice",
    );
    let mut body = two_job_run(&sha);
    body["jobs"][1]["needs"] = json!(["lint"]);
    expect(
        "unknown needs",
        create(&body),
        422,
        "jobs[1].needs: no job 'lint'",
    );
    let mut body = two_job_run(&sha);
    body["jobs"][0]["needs"] = json!(["test"]);
    expect("cycle", create(&body), 422, "cycle");
    let mut body = two_job_run(&sha);
    body["jobs"][0]["key"] = json!("a/b");
    expect("key with a slash", create(&body), 422, "jobs[0].key:");
    let mut body = two_job_run(&sha);
    body["jobs"] = json!([]);
    expect("no jobs", create(&body), 422, "jobs:");
    let mut body = two_job_run(&sha);
    body["error"] = json!("ci.yml:1:1: on: bad");
    expect("jobs and error", create(&body), 422, "jobs: must be absent");
    let mut body = two_job_run(&sha);
    body["jobs"][0]["steps"] = json!([""]);
    expect("empty step name", create(&body), 422, "jobs[0].steps[0]:");
    let mut body = two_job_run(&sha);
    body["jobs"][0]["runs_on"] = json!(vec!["l"; 33]);
    expect("too many labels", create(&body), 422, "jobs[0].runs_on:");

    // A workflow that did not parse: an error run, finished at once.
    let mut body = two_job_run(&sha);
    body.as_object_mut().unwrap().remove("jobs");
    body["error"] =
        json!(".nimbus/workflows/ci.yml:3:5: jobs.build.uses: `uses:` is not supported");
    let failed = expect("error run", create(&body), 201, "");
    assert_eq!(failed["state"], "error");
    assert_eq!(failed["conclusion"], "error");
    assert_eq!(failed["jobs"], json!([]));
    assert!(failed["error"].as_str().unwrap().contains("3:5"));

    // Events, in the outbox in order.
    let events = events_of(&server, "app");
    assert_eq!(
        kinds(&events),
        ["RunStarted", "RunCompleted", "RunStarted", "RunCompleted"],
        "{events:?}"
    );
    let completed = events.iter().find(|e| e["kind"] == "RunCompleted").unwrap();
    let payload = &completed["payload"];
    assert_eq!(payload["run"], 1);
    assert_eq!(payload["conclusion"], "failure");
    assert_eq!(payload["sha"], sha.as_str());
    assert_eq!(payload["ref"], "refs/heads/main");
    assert_eq!(payload["workflow"], ".nimbus/workflows/ci.yml");
    assert_eq!(payload["repository"], "app");
    let last = events.last().unwrap();
    assert_eq!(last["payload"]["run"], 3);
    assert_eq!(last["payload"]["conclusion"], "error");

    // Listing and filters.
    let (_, runs) = server.api("GET", "/repos/app/runs?limit=2", None, None);
    let numbers: Vec<i64> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["number"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [3, 2]);
    let (_, runs) = server.api(
        "GET",
        &format!("/repos/app/runs?sha={sha}&ref=refs/heads/main"),
        None,
        None,
    );
    assert_eq!(runs.as_array().unwrap().len(), 3);
    let (_, runs) = server.api("GET", "/repos/app/runs?ref=refs/heads/other", None, None);
    assert_eq!(runs, json!([]));
    expect(
        "limit",
        server.api("GET", "/repos/app/runs?limit=201", None, None),
        422,
        "limit",
    );
    expect(
        "sha filter",
        server.api("GET", "/repos/app/runs?sha=abc", None, None),
        422,
        "sha",
    );
}

#[test]
fn cancel_rerun_and_who_may() {
    let server = Server::start();
    let (_, sha) = pushed(&server, "cr", false);
    server.create_user("admin", "admin-password");
    server.grant("cr", "admin", "admin");
    server.create_user("dev", "dev-password");
    server.grant("cr", "dev", "write");
    let admin = ("admin", "admin-password");
    let dev = ("dev", "dev-password");
    let mut body = two_job_run(&sha);
    body["jobs"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": "lint", "name": "lint"}));
    expect(
        "create",
        server.api("POST", "/repos/cr/runs", Some(OWNER), Some(body.clone())),
        201,
        "",
    );

    // Driving runs is nimbusd's: the owner's credentials only.
    expect(
        "admin creates",
        server.api("POST", "/repos/cr/runs", Some(admin), Some(body.clone())),
        403,
        "only the owner",
    );
    expect(
        "admin patches",
        server.api(
            "PATCH",
            "/repos/cr/runs/1/jobs/build",
            Some(admin),
            Some(json!({"state": "running"})),
        ),
        403,
        "only the owner",
    );
    let owner_ro = read_token(&server, OWNER);
    expect(
        "owner read token patches",
        server.api(
            "PATCH",
            "/repos/cr/runs/1/jobs/build",
            Some(("owner", &owner_ro)),
            Some(json!({"state": "running"})),
        ),
        403,
        "",
    );
    expect(
        "anonymous cancels",
        server.api("POST", "/repos/cr/runs/1/cancel", None, None),
        401,
        "",
    );
    server.create_user("reader", "reader-password");
    expect(
        "reader cancels",
        server.api(
            "POST",
            "/repos/cr/runs/1/cancel",
            Some(("reader", "reader-password")),
            None,
        ),
        403,
        "needs write",
    );

    patch_job(&server, "cr", 1, "build", json!({"state": "running"}));
    expect(
        "rerun while running",
        server.api("POST", "/repos/cr/runs/1/rerun", Some(dev), None),
        409,
        "once it has finished",
    );
    let run = expect(
        "dev cancels",
        server.api("POST", "/repos/cr/runs/1/cancel", Some(dev), None),
        200,
        "",
    );
    assert_eq!(run["cancel_requested"], true);
    expect(
        "cancel again",
        server.api("POST", "/repos/cr/runs/1/cancel", Some(dev), None),
        200,
        "",
    );
    patch_job(&server, "cr", 1, "build", json!({"state": "cancelled"}));
    patch_job(&server, "cr", 1, "test", json!({"state": "skipped"}));
    patch_job(&server, "cr", 1, "lint", json!({"state": "success"}));
    let (_, run) = server.api("GET", "/repos/cr/runs/1", None, None);
    assert_eq!(run["state"], "cancelled", "{run}");
    expect(
        "cancel a finished run",
        server.api("POST", "/repos/cr/runs/1/cancel", Some(dev), None),
        409,
        "finished",
    );

    // Rerun one job: it and what needs it.
    expect(
        "rerun unknown job",
        server.api(
            "POST",
            "/repos/cr/runs/1/rerun",
            Some(dev),
            Some(json!({"jobs": ["deploy"]})),
        ),
        422,
        "jobs: no job 'deploy'",
    );
    expect(
        "rerun bad body",
        server.api(
            "POST",
            "/repos/cr/runs/1/rerun",
            Some(dev),
            Some(json!({"job": ["build"]})),
        ),
        422,
        "body:",
    );
    let run = expect(
        "rerun build",
        server.api(
            "POST",
            "/repos/cr/runs/1/rerun",
            Some(dev),
            Some(json!({"jobs": ["build"]})),
        ),
        200,
        "",
    );
    let states: Vec<(&str, &str, i64)> = run["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["key"].as_str().unwrap(),
                j["state"].as_str().unwrap(),
                j["attempt"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("build", "queued", 2),
            ("test", "queued", 2),
            ("lint", "success", 1)
        ]
    );
    assert_eq!(
        run["state"], "running",
        "lint stays finished, so the run is under way"
    );
    assert_eq!(run["cancel_requested"], false);
    assert!(run["conclusion"].is_null());
    assert_eq!(run["jobs"][0]["steps"][0]["state"], "queued");
    patch_job(&server, "cr", 1, "build", json!({"state": "running"}));
    patch_job(&server, "cr", 1, "build", json!({"state": "success"}));
    patch_job(&server, "cr", 1, "test", json!({"state": "running"}));
    patch_job(&server, "cr", 1, "test", json!({"state": "success"}));
    let (_, run) = server.api("GET", "/repos/cr/runs/1", None, None);
    assert_eq!(run["state"], "success", "{run}");
    // Rerun everything (no body).
    let run = expect(
        "rerun all",
        server.api("POST", "/repos/cr/runs/1/rerun", Some(OWNER), None),
        200,
        "",
    );
    assert_eq!(run["state"], "queued");
    assert!(
        run["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["state"] == "queued")
    );
    assert_eq!(run["jobs"][2]["attempt"], 2);

    let events = events_of(&server, "cr");
    assert_eq!(
        kinds(&events),
        [
            "RunStarted",
            "RunCancelRequested",
            "RunCompleted",
            "RunRerunRequested",
            "RunStarted",
            "RunCompleted",
            "RunRerunRequested"
        ],
        "{events:?}"
    );
    let rerun = events
        .iter()
        .find(|e| e["kind"] == "RunRerunRequested")
        .unwrap();
    assert_eq!(rerun["payload"]["jobs"], json!(["build", "test"]));
    assert_eq!(rerun["payload"]["run"], 1);
    let cancel = events
        .iter()
        .find(|e| e["kind"] == "RunCancelRequested")
        .unwrap();
    assert_eq!(cancel["payload"]["sha"], sha.as_str());

    // Webhooks may subscribe to the run events.
    let (status, hook) = server.api(
        "POST",
        "/repos/cr/webhooks",
        Some(OWNER),
        Some(json!({"url": "http://127.0.0.1:9/hook", "secret": "s", "events": ["RunStarted", "RunCompleted", "RunCancelRequested", "RunRerunRequested"]})),
    );
    assert_eq!(status, 201, "{hook}");
}

#[test]
fn log_cap_truncates_and_keeps_answering() {
    let server = Server::start_with(|s| s.ci_log_limit = 100);
    let (_, sha) = pushed(&server, "cap", false);
    server.api(
        "POST",
        "/repos/cap/runs",
        Some(OWNER),
        Some(two_job_run(&sha)),
    );
    patch_job(&server, "cap", 1, "build", json!({"state": "running"}));
    let first = expect(
        "60 bytes",
        append_log(&server, "cap", 1, "build", Some(0), &[b'a'; 60]),
        200,
        "",
    );
    assert_eq!(first["log_truncated"], false);
    let second = expect(
        "60 more",
        append_log(&server, "cap", 1, "build", Some(1), &[b'b'; 60]),
        200,
        "",
    );
    assert_eq!(second["stored"], 40);
    assert_eq!(second["log_truncated"], true);
    let third = expect(
        "beyond",
        append_log(&server, "cap", 1, "build", Some(1), b"more"),
        200,
        "",
    );
    assert_eq!(third["stored"], 0);
    let (_, log) = server.request(
        "GET",
        "/api/v1/repos/cap/runs/1/jobs/build/logs",
        None,
        None,
        &[],
    );
    assert_eq!(log, format!("{}{}", "a".repeat(60), "b".repeat(40)));
    let (_, run) = server.api("GET", "/repos/cap/runs/1", None, None);
    assert_eq!(run["jobs"][0]["log_bytes"], 100);
    assert_eq!(run["jobs"][0]["log_truncated"], true);
    // One request carries at most 8 MiB.
    let (status, _) = append_log(&server, "cap", 1, "build", None, &vec![b'c'; (8 << 20) + 1]);
    assert_eq!(status, 413);
    // A rerun starts the log afresh.
    patch_job(&server, "cap", 1, "build", json!({"state": "success"}));
    patch_job(&server, "cap", 1, "test", json!({"state": "success"}));
    server.api("POST", "/repos/cap/runs/1/rerun", Some(OWNER), None);
    let (_, log) = server.request(
        "GET",
        "/api/v1/repos/cap/runs/1/jobs/build/logs",
        None,
        None,
        &[],
    );
    assert_eq!(log, "");
    let (_, run) = server.api("GET", "/repos/cap/runs/1", None, None);
    assert_eq!(run["jobs"][0]["log_truncated"], false);
}

#[test]
fn job_tokens_clone_one_repository_while_the_job_runs() {
    let server = Server::start();
    let (_, sha) = pushed(&server, "priv", true);
    pushed(&server, "other", true);
    server.api(
        "POST",
        "/repos/priv/runs",
        Some(OWNER),
        Some(two_job_run(&sha)),
    );
    let token = expect(
        "token",
        server.api(
            "POST",
            "/repos/priv/runs/1/jobs/build/token",
            Some(OWNER),
            None,
        ),
        201,
        "",
    );
    let token = token["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("ngj_"));
    let dir = server.scratch("clones");

    // git clone with the token as the password, and as a Bearer header.
    server.git(
        &dir,
        &[
            "clone",
            "-q",
            &server.repo_url("priv", Some(("x-token", &token))),
            "a",
        ],
    );
    assert_eq!(head_of(&server, &dir.join("a"), "HEAD"), sha);
    server.git(
        &dir,
        &[
            "-c",
            &format!("http.extraHeader=Authorization: Bearer {token}"),
            "clone",
            "-q",
            &server.repo_url("priv", None),
            "b",
        ],
    );
    server.git(&dir.join("a"), &["fetch", "-q", "origin"]);
    // Only that repository, and only reading.
    let err = server.git_fails(
        &dir,
        &[
            "clone",
            "-q",
            &server.repo_url("other", Some(("x-token", &token))),
            "c",
        ],
    );
    assert!(err.contains("not found"), "{err}");
    std::fs::write(dir.join("a/new.txt"), "x").unwrap();
    server.git(&dir.join("a"), &["add", "."]);
    server.git(&dir.join("a"), &["commit", "-q", "-m", "from a job"]);
    let err = server.git_fails(&dir.join("a"), &["push", "-q", "origin", "HEAD:main"]);
    assert!(err.contains("read-only token"), "{err}");
    expect(
        "token on the API of another repo",
        server.api("GET", "/repos/other", Some(("x", &token)), None),
        404,
        "",
    );
    expect(
        "token cannot make tokens",
        server.api(
            "POST",
            "/tokens",
            Some(("x", &token)),
            Some(json!({"name": "n", "scope": "write"})),
        ),
        403,
        "",
    );
    expect(
        "token cannot post statuses",
        server.api(
            "POST",
            &format!("/repos/priv/statuses/{sha}"),
            Some(("x", &token)),
            Some(json!({"state": "success"})),
        ),
        403,
        "",
    );

    // The job ends: the token stops working at once.
    patch_job(&server, "priv", 1, "build", json!({"state": "running"}));
    patch_job(&server, "priv", 1, "build", json!({"state": "success"}));
    let err = server.git_fails(
        &dir,
        &[
            "clone",
            "-q",
            &server.repo_url("priv", Some(("x-token", &token))),
            "d",
        ],
    );
    assert!(
        err.contains("401")
            || err.contains("Authentication failed")
            || err.contains("could not read"),
        "{err}"
    );
    expect(
        "token for a finished job",
        server.api(
            "POST",
            "/repos/priv/runs/1/jobs/build/token",
            Some(OWNER),
            None,
        ),
        409,
        "finished",
    );

    // Expiry.
    let short = expect(
        "short token",
        server.api(
            "POST",
            "/repos/priv/runs/1/jobs/test/token",
            Some(OWNER),
            Some(json!({"ttl_seconds": 1})),
        ),
        201,
        "",
    );
    let short = short["token"].as_str().unwrap().to_owned();
    server.git(
        &dir,
        &[
            "clone",
            "-q",
            &server.repo_url("priv", Some(("x", &short))),
            "e",
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    server.git_fails(
        &dir,
        &[
            "clone",
            "-q",
            &server.repo_url("priv", Some(("x", &short))),
            "f",
        ],
    );
    expect(
        "ttl too long",
        server.api(
            "POST",
            "/repos/priv/runs/1/jobs/test/token",
            Some(OWNER),
            Some(json!({"ttl_seconds": 21601})),
        ),
        422,
        "ttl_seconds:",
    );
    expect(
        "ttl zero",
        server.api(
            "POST",
            "/repos/priv/runs/1/jobs/test/token",
            Some(OWNER),
            Some(json!({"ttl_seconds": 0})),
        ),
        422,
        "ttl_seconds:",
    );
    server.create_user("admin", "admin-password");
    server.grant("priv", "admin", "admin");
    expect(
        "admin asks for a token",
        server.api(
            "POST",
            "/repos/priv/runs/1/jobs/test/token",
            Some(("admin", "admin-password")),
            None,
        ),
        403,
        "only the owner",
    );
    expect(
        "forged job token",
        server.api("GET", "/repos/priv", Some(("x", "ngj_forged")), None),
        401,
        "",
    );
}

#[test]
fn secrets_are_sealed_write_only_and_withheld() {
    let server = Server::start();
    let (_, sha) = pushed(&server, "sec", true);
    let value = "s3cr3t-value-that-must-not-leak";
    let put = |name: &str, body: Value, who: (&str, &str)| {
        server.api(
            "PUT",
            &format!("/repos/sec/secrets/{name}"),
            Some(who),
            Some(body),
        )
    };
    expect(
        "put",
        put("API_TOKEN", json!({"value": value}), OWNER),
        204,
        "",
    );
    expect(
        "put again",
        put("API_TOKEN", json!({"value": value}), OWNER),
        204,
        "",
    );
    expect(
        "another",
        put("_OTHER_2", json!({"value": "two"}), OWNER),
        204,
        "",
    );
    let (status, list) = server.api("GET", "/repos/sec/secrets", Some(OWNER), None);
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["name"], "API_TOKEN");
    assert!(!list.to_string().contains(value), "never values: {list}");
    expect(
        "lowercase name",
        put("api_token", json!({"value": "x"}), OWNER),
        422,
        "name:",
    );
    expect(
        "digit first",
        put("1X", json!({"value": "x"}), OWNER),
        422,
        "name:",
    );
    expect(
        "long name",
        put(&"A".repeat(101), json!({"value": "x"}), OWNER),
        422,
        "name:",
    );
    expect(
        "empty value",
        put("X", json!({"value": ""}), OWNER),
        422,
        "value:",
    );
    expect(
        "long value",
        put("X", json!({"value": "v".repeat(64 * 1024 + 1)}), OWNER),
        422,
        "value:",
    );
    expect("no value", put("X", json!({}), OWNER), 422, "value");
    server.create_user("dev", "dev-password");
    server.grant("sec", "dev", "write");
    let dev = ("dev", "dev-password");
    expect(
        "write collaborator sets",
        put("X", json!({"value": "x"}), dev),
        403,
        "needs admin",
    );
    expect(
        "write collaborator lists",
        server.api("GET", "/repos/sec/secrets", Some(dev), None),
        403,
        "",
    );

    // Sealed at rest: the value is nowhere in the database files.
    let data = server.dir.path().join("data");
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                "{} holds the value",
                path.display()
            );
        }
    }
    let key_file = data.join("secret-key");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(&key_file).unwrap().mode() & 0o777, 0o600);

    // Given to runs of a pusher who may write.
    let run_by = |pusher: &str| {
        let mut body = two_job_run(&sha);
        body["pusher"] = json!(pusher);
        expect(
            "run",
            server.api("POST", "/repos/sec/runs", Some(OWNER), Some(body)),
            201,
            "",
        )["number"]
            .as_i64()
            .unwrap()
    };
    let by_owner = run_by("owner");
    let by_dev = run_by("dev");
    let (status, secrets) = server.api(
        "GET",
        &format!("/repos/sec/runs/{by_owner}/secrets"),
        Some(OWNER),
        None,
    );
    assert_eq!(status, 200, "{secrets}");
    assert_eq!(secrets["withheld"], false);
    assert_eq!(secrets["secrets"]["API_TOKEN"], value);
    assert_eq!(secrets["secrets"]["_OTHER_2"], "two");
    let (_, secrets) = server.api(
        "GET",
        &format!("/repos/sec/runs/{by_dev}/secrets"),
        Some(OWNER),
        None,
    );
    assert_eq!(secrets["withheld"], false);
    expect(
        "collaborator asks",
        server.api(
            "GET",
            &format!("/repos/sec/runs/{by_dev}/secrets"),
            Some(dev),
            None,
        ),
        403,
        "only the owner",
    );
    // dev loses write access: withheld from now on.
    server.grant("sec", "dev", "read");
    let (_, secrets) = server.api(
        "GET",
        &format!("/repos/sec/runs/{by_dev}/secrets"),
        Some(OWNER),
        None,
    );
    assert_eq!(secrets, json!({"secrets": {}, "withheld": true}));
    let by_stranger = run_by("nobody-we-know");
    let (_, secrets) = server.api(
        "GET",
        &format!("/repos/sec/runs/{by_stranger}/secrets"),
        Some(OWNER),
        None,
    );
    assert_eq!(secrets["withheld"], true);
    // Finished runs get nothing.
    for key in ["build", "test"] {
        patch_job(&server, "sec", by_owner, key, json!({"state": "skipped"}));
    }
    expect(
        "finished run",
        server.api(
            "GET",
            &format!("/repos/sec/runs/{by_owner}/secrets"),
            Some(OWNER),
            None,
        ),
        409,
        "finished",
    );

    expect(
        "delete",
        server.api("DELETE", "/repos/sec/secrets/_OTHER_2", Some(OWNER), None),
        204,
        "",
    );
    expect(
        "delete again",
        server.api("DELETE", "/repos/sec/secrets/_OTHER_2", Some(OWNER), None),
        404,
        "name:",
    );
    let (_, secrets) = server.api(
        "GET",
        &format!("/repos/sec/runs/{by_dev}/secrets"),
        Some(OWNER),
        None,
    );
    assert_eq!(secrets["withheld"], true);
}

#[test]
fn a_malformed_secret_key_stops_the_start() {
    // The key comes from NIMBUS_GIT_SECRET_KEY when given; a malformed one stops the start.
    let dir = tempfile::tempdir().unwrap();
    let mut settings = nimbus_git::config::Settings::for_tests(dir.path().join("data"));
    settings.secret_key = Some(nimbus_git::config::Secret("too-short".into()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt
        .block_on(nimbus_git::AppState::open(settings, "http://x".into()))
        .err()
        .expect("a bad key must stop the start");
    let message = format!("{err:#}");
    assert!(message.contains("NIMBUS_GIT_SECRET_KEY"), "{message}");
    assert!(!dir.path().join("data/secret-key").exists());
}

#[test]
fn ci_pages_without_javascript() {
    let server = Server::start();
    let (_, sha) = pushed(&server, "pages", false);
    let (_, page) = server.request("GET", &format!("/pages/commit/{sha}"), None, None, &[]);
    assert!(
        !page.contains("Checks"),
        "no checks section without CI:\n{page}"
    );
    server.api(
        "POST",
        "/repos/pages/runs",
        Some(OWNER),
        Some(two_job_run(&sha)),
    );
    server.api(
        "POST",
        &format!("/repos/pages/statuses/{sha}"),
        Some(OWNER),
        Some(json!({"state": "running", "context": "nimbus/ci"})),
    );
    patch_job(
        &server,
        "pages",
        1,
        "build",
        json!({"state": "running", "machine": "local-7"}),
    );
    patch_step(&server, "pages", 1, "build", 0, json!({"state": "running"}));
    append_log(
        &server,
        "pages",
        1,
        "build",
        Some(0),
        b"<hello from step zero>\n",
    );

    let get = |path: &str| {
        let (status, body) = server.request("GET", path, None, None, &[]);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains("<script"), "{path}: no JavaScript");
        body
    };
    let refresh = "<meta http-equiv=\"refresh\" content=\"3\">";
    let commit = get(&format!("/pages/commit/{sha}"));
    assert!(commit.contains("Checks"), "{commit}");
    assert!(
        commit.contains("nimbus/ci") && commit.contains("href=\"/pages/runs/1\""),
        "{commit}"
    );
    assert!(
        commit.contains("href=\"/pages/runs/1/jobs/build\""),
        "{commit}"
    );
    assert!(commit.contains(refresh), "live while running:\n{commit}");
    let runs = get("/pages/runs");
    assert!(runs.contains("CI #1") && runs.contains(refresh), "{runs}");
    let run = get("/pages/runs/1");
    assert!(
        run.contains("local-7") && run.contains("checkout") && run.contains("s-running"),
        "{run}"
    );
    let job = get("/pages/runs/1/jobs/build");
    assert!(
        job.contains("&lt;hello from step zero&gt;"),
        "log shown escaped:\n{job}"
    );
    assert!(job.contains(refresh));

    for (key, idx) in [("build", 0), ("build", 1), ("test", 0)] {
        patch_step(&server, "pages", 1, key, idx, json!({"state": "success"}));
    }
    patch_job(&server, "pages", 1, "build", json!({"state": "success"}));
    patch_job(&server, "pages", 1, "test", json!({"state": "running"}));
    patch_job(&server, "pages", 1, "test", json!({"state": "success"}));
    server.api(
        "POST",
        &format!("/repos/pages/statuses/{sha}"),
        Some(OWNER),
        Some(json!({"state": "success", "context": "nimbus/ci"})),
    );
    let commit = get(&format!("/pages/commit/{sha}"));
    assert!(!commit.contains(refresh), "finished: no refresh\n{commit}");
    assert!(commit.contains("s-success"));
    assert!(!get("/pages/runs/1").contains(refresh));
    assert!(!get("/pages/runs/1/jobs/build").contains(refresh));

    let (status, _) = server.request("GET", "/pages/runs/9", None, None, &[]);
    assert_eq!(status, 404);
    let (status, _) = server.request("GET", "/pages/runs/1/jobs/nope", None, None, &[]);
    assert_eq!(status, 404);
    let (status, _) = server.request("GET", "/pages/runs/abc", None, None, &[]);
    assert_eq!(status, 422);
    // A private repository's runs need credentials.
    pushed(&server, "hidden", true);
    let (status, _) = server.request("GET", "/hidden/runs", None, None, &[]);
    assert_eq!(status, 401);
}

#[test]
fn openapi_lists_the_ci_endpoints() {
    let server = Server::start();
    let (status, doc) = server.api("GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/v1/repos/{name}/contents",
        "/api/v1/repos/{name}/contents/{path}",
        "/api/v1/repos/{name}/statuses/{sha}",
        "/api/v1/repos/{name}/runs",
        "/api/v1/repos/{name}/runs/{number}",
        "/api/v1/repos/{name}/runs/{number}/cancel",
        "/api/v1/repos/{name}/runs/{number}/rerun",
        "/api/v1/repos/{name}/runs/{number}/jobs/{key}",
        "/api/v1/repos/{name}/runs/{number}/jobs/{key}/steps/{index}",
        "/api/v1/repos/{name}/runs/{number}/jobs/{key}/logs",
        "/api/v1/repos/{name}/runs/{number}/jobs/{key}/token",
        "/api/v1/repos/{name}/runs/{number}/secrets",
        "/api/v1/repos/{name}/secrets",
        "/api/v1/repos/{name}/secrets/{secret}",
    ] {
        assert!(paths.contains_key(path), "openapi lacks {path}");
    }
    for schema in [
        "CreateRun",
        "Run",
        "Job",
        "Step",
        "CommitStatus",
        "CombinedStatus",
        "Contents",
        "RunSecrets",
        "SetSecret",
        "State",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "openapi lacks schema {schema}"
        );
    }
}
