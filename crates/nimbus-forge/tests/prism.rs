//! Every request the GitHub client makes, validated by Prism against GitHub's official OpenAPI
//! description (npm `@octokit/openapi`). A request Prism rejects fails the test, whether or not
//! the client noticed the 422.

mod common;

use nimbus_forge::demand::reconcile_demand;
use nimbus_forge::github::GithubForge;
use nimbus_forge::lifecycle::{MemorySink, Subject};
use nimbus_forge::{Forge, JitRequest, MemoryDemandBook, RunnerId, deregister_then_check};
use nimbus_testkit::prism::Prism;
use nimbus_types::TenantId;

use common::*;

/// Every path the client calls.
const PATHS: &[&str] = &[
    "/app/installations/{installation_id}/access_tokens",
    "/installation/repositories",
    "/orgs/{org}/repos",
    "/orgs/{org}/actions/runner-groups",
    "/orgs/{org}/actions/runners",
    "/orgs/{org}/actions/runners/generate-jitconfig",
    "/orgs/{org}/actions/runners/registration-token",
    "/orgs/{org}/actions/runners/remove-token",
    "/orgs/{org}/actions/runners/{runner_id}",
    "/repos/{owner}/{repo}/actions/runners",
    "/repos/{owner}/{repo}/actions/runners/generate-jitconfig",
    "/repos/{owner}/{repo}/actions/runners/registration-token",
    "/repos/{owner}/{repo}/actions/runners/remove-token",
    "/repos/{owner}/{repo}/actions/runners/{runner_id}",
    "/repos/{owner}/{repo}/actions/runs",
    "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs",
];

fn start_prism() -> Prism {
    let spec = trimmed_github_spec(PATHS).unwrap_or_else(|e| panic!("{e:#}"));
    Prism::start(&spec).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs every forge operation; returns what failed, with the operation's name.
async fn exercise(forge: &GithubForge) -> Vec<String> {
    let mut failures = Vec::new();
    let mut note = |what: &str, result: Result<(), nimbus_forge::Error>| {
        if let Err(error) = result {
            failures.push(format!("{what}: {error}"));
        }
    };
    note(
        "registration_token",
        forge.registration_token().await.map(|_| ()),
    );
    note("remove_token", forge.remove_token().await.map(|_| ()));
    let request = JitRequest {
        name: "nimbus-m-1".into(),
        runner_group_id: 1,
        labels: vec!["self-hosted".into(), "linux".into(), "x64".into()],
        work_folder: Some("_work".into()),
    };
    note("jit_config", forge.jit_config(&request).await.map(|_| ()));
    note("list_runners", forge.list_runners().await.map(|_| ()));
    note(
        "find_runner",
        forge.find_runner("nimbus-m-1").await.map(|_| ()),
    );
    note(
        "get_runner",
        forge.get_runner(RunnerId(23)).await.map(|_| ()),
    );
    note(
        "runner_status",
        forge.runner_status(RunnerId(23)).await.map(|_| ()),
    );
    note("remove_runner", forge.remove_runner(RunnerId(23)).await);
    note("runner_groups", forge.runner_groups().await.map(|_| ()));
    note("demand", forge.demand().await.map(|_| ()));
    let sink = MemorySink::default();
    let subject = Subject {
        tenant_id: TenantId::new(),
        machine_id: None,
    };
    note(
        "deregister_then_check",
        deregister_then_check(forge, RunnerId(24), subject, &sink)
            .await
            .map(|_| ()),
    );
    let book = MemoryDemandBook::default();
    note(
        "reconcile_demand",
        reconcile_demand(forge, &book, TenantId::new())
            .await
            .map(|_| ()),
    );
    failures
}

fn check(prism: &Prism, failures: Vec<String>, expect_paths: &[&str]) {
    let violations = prism.violations();
    let log = prism.log();
    let missing: Vec<&&str> = expect_paths.iter().filter(|p| !log.contains(**p)).collect();
    assert!(
        failures.is_empty() && violations.is_empty() && missing.is_empty(),
        "calls that failed: {failures:#?}\nrequests Prism rejected: {violations:#?}\n\
         paths never requested: {missing:?}\nPrism serving {} logged:\n{log}",
        prism.spec().display()
    );
}

#[tokio::test]
async fn org_runners_as_a_github_app() {
    let prism = start_prism();
    let key = app_key().unwrap_or_else(|e| panic!("{e:#}"));
    // The description's examples list repositories owned by `octocat`, so demand walks them.
    let forge = app_forge(&prism.url(), org("octocat"), &key, fast_retry());
    let failures = exercise(&forge).await;
    check(
        &prism,
        failures,
        &[
            "post /app/installations/777/access_tokens",
            "post /orgs/octocat/actions/runners/registration-token",
            "post /orgs/octocat/actions/runners/remove-token",
            "post /orgs/octocat/actions/runners/generate-jitconfig",
            "get /orgs/octocat/actions/runners",
            "get /orgs/octocat/actions/runners/23",
            "delete /orgs/octocat/actions/runners/23",
            "get /orgs/octocat/actions/runner-groups",
            "get /installation/repositories",
            "/actions/runs",
            "/jobs",
        ],
    );
}

#[tokio::test]
async fn org_runners_with_a_personal_access_token() {
    let prism = start_prism();
    let forge = token_forge(&prism.url(), org("octocat"), fast_retry());
    let failures = exercise(&forge).await;
    check(
        &prism,
        failures,
        &[
            "post /orgs/octocat/actions/runners/generate-jitconfig",
            "get /orgs/octocat/repos",
            "/actions/runs",
        ],
    );
}

#[tokio::test]
async fn repository_runners() {
    let prism = start_prism();
    let forge = token_forge(&prism.url(), repo("octocat", "hello-world"), fast_retry());
    let failures = exercise(&forge).await;
    check(
        &prism,
        failures,
        &[
            "post /repos/octocat/hello-world/actions/runners/registration-token",
            "post /repos/octocat/hello-world/actions/runners/remove-token",
            "post /repos/octocat/hello-world/actions/runners/generate-jitconfig",
            "get /repos/octocat/hello-world/actions/runners",
            "delete /repos/octocat/hello-world/actions/runners/23",
            "get /repos/octocat/hello-world/actions/runs",
            "/jobs",
        ],
    );
}

/// The checker itself: a request outside the contract is caught.
#[tokio::test]
async fn prism_catches_a_bad_request() {
    let prism = start_prism();
    let client = reqwest::Client::new();
    let response = client
        .post(format!(
            "{}/orgs/acme/actions/runners/generate-jitconfig",
            prism.url()
        ))
        .header("accept", "application/json")
        .json(&serde_json::json!({"name": "x", "runner_group_id": 1, "labels": []}))
        .send()
        .await
        .expect("Prism answers");
    assert_eq!(response.status(), 422);
    assert!(response.headers().contains_key("sl-violations"));
    let violations = prism.violations();
    assert!(
        violations.iter().any(|v| v.contains("labels")),
        "violations {violations:#?}\nlog:\n{}",
        prism.log()
    );
}
