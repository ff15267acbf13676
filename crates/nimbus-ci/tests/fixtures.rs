//! Workflow fixtures: every `bad/*.yml` starts with `# expect: <the full error>`; every
//! `good/*.yml` has a `.plan` beside it, the planned run as text (`NIMBUS_BLESS=1` rewrites them).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use nimbus_ci::{Context, Limits, RunPlan, parse, plan_run};

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

fn context() -> Context {
    Context {
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        git_ref: "refs/heads/main".into(),
        ref_name: "main".into(),
        repository: "acme/app".into(),
        run_id: "42".into(),
        actor: "alice".into(),
    }
}

fn workflow_file(path: &Path) -> String {
    format!(
        ".nimbus/workflows/{}",
        path.file_name().unwrap().to_string_lossy()
    )
}

#[test]
fn bad_workflows_fail_with_the_expected_message() {
    let mut failures = String::new();
    for path in fixtures("bad") {
        let source = std::fs::read_to_string(&path).unwrap();
        let expected = source
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} does not start with `# expect: `", path.display()));
        let file = workflow_file(&path);
        let actual = match parse(&file, &source, &Limits::default()) {
            Ok(wf) => match plan_run(&wf, &context(), &Limits::default()) {
                Ok(_) => "(parsed and planned without error)".to_owned(),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if actual != expected {
            writeln!(
                failures,
                "{}\n  expected: {expected}\n  actual:   {actual}",
                path.display()
            )
            .unwrap();
        }
    }
    assert!(
        failures.is_empty(),
        "fixtures with another error:\n{failures}"
    );
}

fn show(plan: &RunPlan) -> String {
    let mut out = String::new();
    let w = &mut out;
    writeln!(w, "workflow: {}", plan.workflow).unwrap();
    writeln!(w, "name: {}", plan.name).unwrap();
    writeln!(w, "concurrency: {:?}", plan.concurrency).unwrap();
    for job in &plan.jobs {
        writeln!(
            w,
            "\njob {:?} (id {}, name {:?})",
            job.key, job.job_id, job.name
        )
        .unwrap();
        writeln!(w, "  matrix: {:?}", job.matrix).unwrap();
        writeln!(w, "  runs-on: {:?}", job.runs_on).unwrap();
        writeln!(w, "  needs: {:?}", job.needs).unwrap();
        writeln!(w, "  env: {:?}", job.env).unwrap();
        writeln!(
            w,
            "  timeout: {} fail-fast: {} max-parallel: {:?}",
            job.timeout_minutes, job.fail_fast, job.max_parallel
        )
        .unwrap();
        writeln!(w, "  secrets: {:?}", job.secrets).unwrap();
        for step in &job.steps {
            writeln!(w, "  step {:?}", step.name).unwrap();
            writeln!(w, "    run: {:?}", step.run).unwrap();
            writeln!(
                w,
                "    shell: {:?} {:?}",
                step.shell,
                step.shell.command("/tmp/step")
            )
            .unwrap();
            writeln!(w, "    env: {:?}", step.env).unwrap();
            writeln!(
                w,
                "    dir: {:?} if: {:?} timeout: {:?}",
                step.working_directory, step.condition, step.timeout_minutes
            )
            .unwrap();
        }
    }
    out
}

#[test]
fn good_workflows_plan_as_recorded() {
    let bless = std::env::var_os("NIMBUS_BLESS").is_some();
    let mut failures = String::new();
    for path in fixtures("good") {
        let source = std::fs::read_to_string(&path).unwrap();
        let file = workflow_file(&path);
        let wf = parse(&file, &source, &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        let plan = plan_run(&wf, &context(), &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        let actual = show(&plan);
        let expected_path = path.with_extension("plan");
        if bless {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            writeln!(
                failures,
                "{} differs from {}:\n{actual}",
                path.display(),
                expected_path.display()
            )
            .unwrap();
        }
    }
    assert!(failures.is_empty(), "{failures}");
}
