//! The public API end to end: triggers, limits, planning and secrets.

use std::collections::BTreeMap;

use nimbus_ci::{
    Context, Limits, PushEvent, Shell, StepIf, Workflow, parse, plan_run, render_secrets,
};

fn wf(source: &str) -> Workflow {
    parse("ci.yml", source, &Limits::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn err(source: &str) -> String {
    parse("ci.yml", source, &Limits::default())
        .unwrap_err()
        .to_string()
}

fn pushed(workflow: &Workflow, git_ref: &str, paths: Option<&[&str]>) -> bool {
    let paths: Option<Vec<String>> = paths.map(|p| p.iter().map(|s| s.to_string()).collect());
    workflow.triggered_by(&PushEvent {
        git_ref,
        changed_paths: paths.as_deref(),
    })
}

const JOB: &str = "jobs:\n  a:\n    runs-on: linux\n    steps: [{run: make}]\n";

#[test]
fn on_push_forms() {
    for on in ["on: push", "on: [push]", "on:\n  push:", "on:\n  push: {}"] {
        let w = wf(&format!("{on}\n{JOB}"));
        assert!(w.on.push.is_some(), "{on}");
        assert!(pushed(&w, "refs/heads/anything", None), "{on}");
        assert!(pushed(&w, "refs/tags/v1", Some(&[])), "{on}");
        assert!(!pushed(&w, "refs/notes/commits", None), "{on}");
    }
    assert_eq!(
        err(&format!("on: [push, workflow_dispatch]\n{JOB}")),
        "ci.yml:1:12: on[1]: event `workflow_dispatch` is not supported; Nimbus workflows run on `push` only"
    );
    assert_eq!(
        err(&format!("on: []\n{JOB}")),
        "ci.yml:1:5: on: no event given; use `on: push`"
    );
}

#[test]
fn branch_tag_and_path_filters_follow_github() {
    let w = wf(&format!(
        "on:\n  push:\n    branches: [main, 'releases/**', '!releases/**-alpha']\n    paths: ['src/**', '!src/docs/**']\n{JOB}"
    ));
    assert!(pushed(&w, "refs/heads/main", Some(&["src/lib.rs"])));
    assert!(
        pushed(&w, "refs/heads/releases/1.0", None),
        "unknown paths pass"
    );
    assert!(!pushed(&w, "refs/heads/releases/1.0-alpha", None));
    assert!(!pushed(&w, "refs/heads/feature", None));
    assert!(!pushed(&w, "refs/heads/main", Some(&["README.md"])));
    assert!(!pushed(&w, "refs/heads/main", Some(&["src/docs/a.md"])));
    assert!(pushed(
        &w,
        "refs/heads/main",
        Some(&["src/docs/a.md", "src/main.rs"])
    ));
    assert!(
        !pushed(&w, "refs/tags/v1", None),
        "only branch filters: no tags"
    );

    let tags = wf(&format!(
        "on:\n  push:\n    tags: ['v[0-9]+.*']\n    paths: [src/**]\n{JOB}"
    ));
    assert!(
        pushed(&tags, "refs/tags/v12.0", Some(&["README.md"])),
        "paths are not applied to tags"
    );
    assert!(!pushed(&tags, "refs/tags/latest", None));
    assert!(
        !pushed(&tags, "refs/heads/main", None),
        "only tag filters: no branches"
    );

    let ignore = wf(&format!(
        "on:\n  push:\n    branches-ignore: ['dependabot/**']\n    paths-ignore: ['**.md']\n{JOB}"
    ));
    assert!(pushed(&ignore, "refs/heads/main", Some(&["a.md", "b.rs"])));
    assert!(!pushed(
        &ignore,
        "refs/heads/main",
        Some(&["a.md", "docs/b.md"])
    ));
    assert!(!pushed(&ignore, "refs/heads/dependabot/cargo/x", None));
    assert!(!pushed(&ignore, "refs/tags/v1", None));
}

#[test]
fn limits_are_enforced_before_work() {
    let huge = format!("on: push\n{JOB}# {}\n", "x".repeat(10 * 1024 * 1024));
    assert_eq!(huge.len(), 10_485_827);
    assert_eq!(
        err(&huge),
        "ci.yml: the file is 10485827 bytes; the limit is 524288 bytes"
    );

    let mut jobs = String::from("on: push\njobs:\n");
    for i in 0..300 {
        jobs.push_str(&format!(
            "  j{i}:\n    runs-on: linux\n    steps: [{{run: make}}]\n"
        ));
    }
    assert_eq!(
        err(&jobs),
        "ci.yml:3:3: jobs: the workflow expands to 300 jobs; the limit is 256"
    );

    let limits = Limits {
        max_steps: 2,
        ..Limits::default()
    };
    let steps =
        "on: push\njobs:\n  a:\n    runs-on: linux\n    steps: [{run: a}, {run: b}, {run: c}]\n";
    assert_eq!(
        parse("ci.yml", steps, &limits).unwrap_err().to_string(),
        "ci.yml:5:12: jobs.a.steps: job `a` has 3 steps; the limit is 2"
    );
}

fn context(ref_name: &str) -> Context {
    Context {
        sha: "abc123".into(),
        git_ref: format!("refs/heads/{ref_name}"),
        ref_name: ref_name.into(),
        repository: "acme/app".into(),
        run_id: "7".into(),
        actor: "bob".into(),
    }
}

#[test]
fn plan_orders_jobs_by_needs_and_fills_defaults() {
    let w = wf("on: push
jobs:
  deploy:
    needs: [test, build]
    runs-on: linux
    steps: [{run: deploy}]
  test:
    needs: build
    runs-on: linux
    strategy:
      matrix:
        v: [1, 2]
    steps: [{run: test}]
  build:
    runs-on: linux
    defaults:
      run:
        shell: sh
        working-directory: src/${{ github.ref_name }}
    steps:
      - run: build
      - run: cleanup
        if: always()
        shell: bash
        working-directory: /tmp
");
    let plan = plan_run(&w, &context("main"), &Limits::default()).unwrap();
    let keys: Vec<&str> = plan.jobs.iter().map(|j| j.key.as_str()).collect();
    assert_eq!(keys, ["build", "test (1)", "test (2)", "deploy"]);
    assert_eq!(plan.jobs[3].needs, ["test (1)", "test (2)", "build"]);
    let build = &plan.jobs[0];
    assert_eq!(build.timeout_minutes, 360);
    assert_eq!(build.steps[0].shell, Shell::Sh);
    assert_eq!(
        build.steps[0].working_directory.as_deref(),
        Some("src/main")
    );
    assert_eq!(build.steps[1].shell, Shell::Bash);
    assert_eq!(build.steps[1].working_directory.as_deref(), Some("/tmp"));
    assert_eq!(build.steps[1].condition, StepIf::Always);
    assert!(StepIf::Always.runs(true) && StepIf::Failure.runs(true) && !StepIf::Success.runs(true));
}

#[test]
fn context_values_cannot_smuggle_secret_references() {
    let w = wf("on: push
jobs:
  a:
    runs-on: linux
    env:
      TOKEN: ${{ secrets.TOKEN }}
    steps:
      - run: echo ${{ github.ref_name }} ${{ env.TOKEN }}
");
    let plan = plan_run(&w, &context("main"), &Limits::default()).unwrap();
    let run = &plan.jobs[0].steps[0].run;
    assert_eq!(run, "echo main ${{ secrets.TOKEN }}");
    let secrets = BTreeMap::from([("TOKEN".to_owned(), "t0ps3cret".to_owned())]);
    assert_eq!(
        render_secrets(run, &secrets).unwrap(),
        "echo main t0ps3cret"
    );

    let evil = plan_run(&w, &context("${{secrets.TOKEN}}"), &Limits::default()).unwrap_err();
    assert_eq!(
        evil.to_string(),
        "ci.yml:8:19: jobs.a.steps[0].run: `github.ref_name` contains `${{` and cannot be used in an expression"
    );
}

#[test]
fn concurrency_forms() {
    let w = wf(&format!(
        "on: push\nconcurrency: deploy-${{{{ github.ref_name }}}}\n{JOB}"
    ));
    let plan = plan_run(&w, &context("main"), &Limits::default()).unwrap();
    assert_eq!(plan.concurrency, Some(("deploy-main".to_owned(), false)));
    assert_eq!(
        w.concurrency.as_ref().unwrap().group,
        "deploy-${{ github.ref_name }}"
    );
    assert_eq!(
        err(&format!(
            "on: push\nconcurrency:\n  group: x\n  cancel-in-progress: 'yes'\n{JOB}"
        )),
        "ci.yml:4:23: concurrency.cancel-in-progress: expected true or false, found the string `yes`"
    );
    assert_eq!(
        err(&format!(
            "on: push\nconcurrency: ${{{{ secrets.X }}}}\n{JOB}"
        )),
        "ci.yml:2:14: concurrency: `secrets` are not available here; use them in `env` values or `run`"
    );
}

#[test]
fn names_default_to_the_file_stem() {
    let w = parse(
        ".nimbus/workflows/release.yaml",
        &format!("on: push\n{JOB}"),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(w.name, "release");
    assert_eq!(w.jobs[0].id, "a");
}

#[test]
fn keys_stay_unique_and_labels_must_render() {
    let w = wf("on: push
jobs:
  a:
    runs-on: ${{ matrix.os }}
    strategy:
      matrix:
        include:
          - os: linux
            x: '1'
          - os: linux
            y: '1'
    steps: [{run: make}]
");
    let plan = plan_run(&w, &context("main"), &Limits::default()).unwrap();
    let keys: Vec<&str> = plan.jobs.iter().map(|j| j.key.as_str()).collect();
    assert_eq!(keys, ["a (linux, 1)", "a (linux, 1) #2"]);

    let w = wf("on: push
jobs:
  a:
    runs-on: ${{ matrix.os }}
    strategy:
      matrix:
        include:
          - os: linux
          - arch: arm64
    steps: [{run: make}]
");
    assert_eq!(
        plan_run(&w, &context("main"), &Limits::default())
            .unwrap_err()
            .to_string(),
        "ci.yml:4:14: jobs.a.runs-on: the label is empty for this run"
    );
}
