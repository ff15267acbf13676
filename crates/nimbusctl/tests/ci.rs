//! Nimbus Git CI end to end: the real `nimbus-git`, `nimbusd` and `nimbusctl` binaries and the
//! real `git` client. A push runs its workflow on local-pool machines; statuses, job states and
//! logs land on the commit at Nimbus Git.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{SIGKILL, SIGTERM, World, nimbus_git_bin};

const PASSWORD: &str = "owner-password-1";
const WEBHOOK_SECRET: &str = "webhook-secret-for-tests";
const SECRET_VALUE: &str = "hunter2-very-secret";
/// How long a whole run may take on a busy 2-core machine (machines are set up first).
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// A `nimbus-git serve` on `127.0.0.1:0` in the world's directory; killed on drop.
struct GitServer {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl GitServer {
    fn start(world: &World) -> GitServer {
        let dir = world.root.path().join("git");
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let mut child = Command::new(nimbus_git_bin())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--webhook-allow-private",
            ])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--webhook-retry-base-ms", "200"])
            .env("NIMBUS_GIT_OWNER_PASSWORD", PASSWORD)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start nimbus-git");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(url) = line.strip_prefix("nimbus-git listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "nimbus-git did not print its address; stderr:\n{}",
                    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
                )
            });
        GitServer { child, url, dir }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// An API call as the owner (HTTP Basic): status and JSON (or text) body.
    fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        curl(
            method,
            &format!("{}{path}", self.url),
            &["-u", &format!("owner:{PASSWORD}")],
            body.map(|b| b.to_string()).as_deref(),
            &[],
        )
    }

    #[track_caller]
    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, value) = self.api(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path} answered {status}: {value}\nnimbus-git stderr:\n{}",
            self.stderr()
        );
        value
    }

    fn push_url(&self, repo: &str) -> String {
        self.url
            .replace("http://", &format!("http://owner:{PASSWORD}@"))
            + &format!("/{repo}.git")
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- nimbus-git stderr ----\n{}", self.stderr());
        }
    }
}

/// One HTTP request through the real `curl`: status and body (JSON when it parses).
fn curl(
    method: &str,
    url: &str,
    auth: &[&str],
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}"])
        .args(auth);
    for (name, value) in headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    if let Some(body) = body {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let out = cmd.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status: u16 = code.trim().parse().unwrap_or(0);
    let value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    (status, value)
}

fn run_git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Alice")
        .env("GIT_AUTHOR_EMAIL", "alice@example.com")
        .env("GIT_COMMITTER_NAME", "Alice")
        .env("GIT_COMMITTER_EMAIL", "alice@example.com")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Everything a CI test needs: nimbusd with a tenant whose forge is the Nimbus Git server, a
/// warm local pool, a repository with the webhook to nimbusd, and a work tree to push from.
struct Setup {
    world: World,
    git: GitServer,
    work: PathBuf,
}

impl Setup {
    fn new(repo: &str, warm: u32) -> Setup {
        let mut world = World::empty();
        world.start_daemon(&["--autoscale-interval", "1s"]);
        let git = GitServer::start(&world);
        let token = git.ok(
            "POST",
            "/api/v1/tokens",
            Some(&json!({"name": "nimbusd", "scope": "write"})),
        )["token"]
            .as_str()
            .expect("a token")
            .to_owned();
        git.ok("POST", "/api/v1/repos", Some(&json!({"name": repo})));

        let tenant = world
            .ctl(&["--json", "tenant", "create", "acme"])
            .ok()
            .json()[0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        world
            .ctl(&[
                "provider", "add", "--tenant", "acme", "--type", "local", "--name", "local",
            ])
            .ok();
        let token_file = world.write_file("git-token", &format!("{token}\n"));
        let secret_file = world.write_file("webhook-secret", WEBHOOK_SECRET);
        world
            .ctl(&[
                "forge",
                "set",
                "--tenant",
                "acme",
                "--type",
                "nimbus-git",
                "--org",
                "owner",
                "--forge-url",
                &git.url,
                "--token-file",
                token_file.to_str().unwrap(),
                "--webhook-secret-file",
                secret_file.to_str().unwrap(),
            ])
            .ok();
        world
            .ctl(&[
                "pool",
                "create",
                "--tenant",
                "acme",
                "--provider",
                "local",
                "--name",
                "ci",
                "--label",
                "linux",
                "--label",
                "ci",
                "--min-idle",
                &warm.to_string(),
                "--max",
                "4",
                "--no-ephemeral",
            ])
            .ok();
        git.ok(
            "POST",
            &format!("/api/v1/repos/{repo}/webhooks"),
            Some(&json!({
                "url": format!("{}/v1/tenants/{tenant}/forge/webhook", world.url()),
                "secret": WEBHOOK_SECRET,
                "events": ["CommitPushed", "TagCreated", "RunCancelRequested", "RunRerunRequested"],
            })),
        );
        let work = world.root.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        run_git(&work, &["init", "-q", "-b", "main"]);
        run_git(&work, &["remote", "add", "origin", &git.push_url(repo)]);
        std::fs::write(work.join("README.md"), "# app\n").unwrap();
        Setup { world, git, work }
    }

    /// Waits until the pool has `n` ready machines.
    fn wait_ready_machines(&self, n: usize) {
        self.world.wait_for("ready pool machines", RUN_TIMEOUT, || {
            let list = self
                .world
                .ctl(&["--json", "machine", "list", "--tenant", "acme"])
                .ok()
                .json();
            let ready = list
                .as_array()
                .map(|a| a.iter().filter(|m| m["state"] == "ready").count())
                .unwrap_or(0);
            if ready >= n {
                Ok(())
            } else {
                Err(format!("{ready} ready"))
            }
        });
    }

    fn write(&self, path: &str, text: &str) {
        let file = self.work.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }

    /// Commits everything and pushes `branch`; returns the commit id.
    fn commit_and_push(&self, message: &str, branch: &str) -> String {
        run_git(&self.work, &["add", "-A"]);
        run_git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        run_git(
            &self.work,
            &["push", "-q", "origin", &format!("HEAD:{branch}")],
        );
        run_git(&self.work, &["rev-parse", "HEAD"])
    }

    fn runs(&self, repo: &str, sha: &str) -> Vec<Value> {
        self.git
            .ok("GET", &format!("/api/v1/repos/{repo}/runs?sha={sha}"), None)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until the commit has `count` runs and all of them have finished.
    #[track_caller]
    fn wait_runs_done(&self, repo: &str, sha: &str, count: usize) -> Vec<Value> {
        self.world
            .wait_for("the commit's runs to finish", RUN_TIMEOUT, || {
                let runs = self.runs(repo, sha);
                let done = runs
                    .iter()
                    .filter(|r| !matches!(r["state"].as_str(), Some("queued" | "running")))
                    .count();
                if runs.len() == count && done == count {
                    Ok(runs)
                } else {
                    Err(format!("{} runs, {done} done: {runs:?}", runs.len()))
                }
            })
    }

    fn log(&self, repo: &str, run: u64, key: &str) -> String {
        let key = key
            .replace(' ', "%20")
            .replace('(', "%28")
            .replace(')', "%29")
            .replace(',', "%2C");
        match self.git.ok(
            "GET",
            &format!("/api/v1/repos/{repo}/runs/{run}/jobs/{key}/logs"),
            None,
        ) {
            Value::String(text) => text,
            other => other.to_string(),
        }
    }
}

fn job<'a>(run: &'a Value, key: &str) -> &'a Value {
    run["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["key"] == key))
        .unwrap_or_else(|| panic!("no job {key:?} in {run:#}"))
}

const CI_WORKFLOW: &str = r#"name: ci
on: push
env:
  GREETING: hello
jobs:
  lint:
    runs-on: [linux, ci]
    steps:
      - run: echo "lint of ${{ github.sha }}"
      - name: use the secret
        run: echo "the key is ${{ secrets.DEPLOY_KEY }} and $DEPLOY_KEY"
        env:
          DEPLOY_KEY: ${{ secrets.DEPLOY_KEY }}
  test:
    needs: lint
    runs-on: linux
    strategy:
      matrix:
        os: [alpha, beta]
        n: [1, 2]
    steps:
      - run: echo "test ${{ matrix.os }}-${{ matrix.n }} says $GREETING"
      - run: test -f README.md
  package:
    needs: test
    runs-on: linux
    steps:
      - run: echo packaged
"#;

#[test]
fn a_push_runs_its_workflow_on_pool_machines_and_reports_back() {
    let s = Setup::new("app", 2);
    s.git.ok(
        "PUT",
        "/api/v1/repos/app/secrets/DEPLOY_KEY",
        Some(&json!({"value": SECRET_VALUE})),
    );
    s.wait_ready_machines(2);
    s.write(".nimbus/workflows/ci.yml", CI_WORKFLOW);
    let sha = s.commit_and_push("add CI", "main");

    let runs = s.wait_runs_done("app", &sha, 1);
    let run = &runs[0];
    let number = run["number"].as_u64().unwrap();
    let detail = s
        .git
        .ok("GET", &format!("/api/v1/repos/app/runs/{number}"), None);
    assert_eq!(detail["state"], "success", "{detail:#}");
    let jobs = detail["jobs"].as_array().unwrap();
    assert_eq!(
        jobs.len(),
        6,
        "lint, four test instances, package: {detail:#}"
    );
    for job in jobs {
        assert_eq!(job["state"], "success", "{job:#}");
    }

    // The statuses landed on the commit.
    let statuses = s
        .git
        .ok("GET", &format!("/api/v1/repos/app/statuses/{sha}"), None);
    assert_eq!(statuses["state"], "success", "{statuses:#}");
    assert_eq!(statuses["statuses"][0]["context"], "nimbus/ci");

    // Each step's output is in the logs; the secret never is.
    let lint = s.log("app", number, "lint");
    assert!(lint.contains(&format!("lint of {sha}")), "{lint}");
    assert!(lint.contains("the key is *** and ***"), "{lint}");
    assert!(!lint.contains(SECRET_VALUE), "{lint}");
    for (os, n) in [("alpha", 1), ("alpha", 2), ("beta", 1), ("beta", 2)] {
        let key = format!("test ({os}, {n})");
        let _ = job(&detail, &key);
        let log = s.log("app", number, &key);
        assert!(
            log.contains(&format!("test {os}-{n} says hello")),
            "{key}: {log}"
        );
    }
    assert!(s.log("app", number, "package").contains("packaged"));

    // The jobs ran in order: package after every test, tests after lint.
    let finished = |key: &str| {
        job(&detail, key)["finished_at"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let started = |key: &str| job(&detail, key)["started_at"].as_str().unwrap().to_owned();
    assert!(started("test (alpha, 1)") >= finished("lint"));
    assert!(started("package") >= finished("test (beta, 2)"));

    // A re-run of one job runs it (and only it, nothing needs it) again.
    s.git.ok(
        "POST",
        &format!("/api/v1/repos/app/runs/{number}/rerun"),
        Some(&json!({"jobs": ["package"]})),
    );
    let rerun = s.world.wait_for("the re-run to finish", RUN_TIMEOUT, || {
        let run = s
            .git
            .ok("GET", &format!("/api/v1/repos/app/runs/{number}"), None);
        let package = job(&run, "package").clone();
        if package["attempt"] == 2 && package["state"] == "success" && run["state"] == "success" {
            Ok(run)
        } else {
            Err(format!("{package}"))
        }
    });
    assert_eq!(job(&rerun, "lint")["attempt"], 1, "{rerun:#}");

    // The machines went back to the pool, and no workspace was left on them.
    s.world
        .wait_for("machines back in the pool", RUN_TIMEOUT, || {
            let list = s
                .world
                .ctl(&["--json", "machine", "list", "--tenant", "acme"])
                .ok()
                .json();
            let running = list
                .as_array()
                .map(|a| a.iter().filter(|m| m["state"] == "running").count())
                .unwrap_or(0);
            if running == 0 {
                Ok(())
            } else {
                Err(format!("{running} running"))
            }
        });
    let leftovers = walk(&s.world.machines_dir(), "nimbus-ci");
    assert!(
        leftovers.iter().all(|dir| std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)),
        "job workspaces are removed: {leftovers:?}"
    );
}

/// Directories named `name` under `root`.
fn walk(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                if entry.file_name() == name {
                    found.push(path.clone());
                }
                stack.push(path);
            }
        }
    }
    found
}

#[test]
fn failures_invalid_workflows_and_newer_pushes() {
    let s = Setup::new("app", 2);
    s.wait_ready_machines(2);
    s.write(
        ".nimbus/workflows/fail.yml",
        r#"on: push
jobs:
  check:
    runs-on: linux
    steps:
      - run: echo before
      - run: exit 3
      - run: echo never
      - name: report
        if: always()
        run: echo "always runs"
      - if: failure()
        run: echo "failure handler"
"#,
    );
    s.write(
        ".nimbus/workflows/bad.yml",
        "on: push\njobs:\n  build:\n    runs-on: linux\n    steps:\n      - uses: actions/checkout@v4\n",
    );
    // 10 MB of YAML: refused by size before anything reads it.
    let mut huge = String::from("on: push\njobs:\n");
    while huge.len() < 10 << 20 {
        huge.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    s.write(".nimbus/workflows/huge.yml", &huge);
    let sha = s.commit_and_push("failing, invalid and huge workflows", "main");
    let runs = s.wait_runs_done("app", &sha, 3);
    let huge_run = runs
        .iter()
        .find(|r| r["workflow"] == ".nimbus/workflows/huge.yml")
        .expect("a run for the huge workflow");
    assert_eq!(huge_run["state"], "error", "{huge_run:#}");
    assert!(
        huge_run["error"]
            .as_str()
            .unwrap_or_default()
            .contains("the limit is"),
        "{huge_run:#}"
    );
    let bad = runs
        .iter()
        .find(|r| r["workflow"] == ".nimbus/workflows/bad.yml")
        .expect("a run for the invalid workflow");
    assert_eq!(bad["state"], "error", "{bad:#}");
    let error = bad["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(".nimbus/workflows/bad.yml:6") && error.contains("jobs.build.steps[0].uses"),
        "the error names file, line and key: {error}"
    );
    let fail = runs
        .iter()
        .find(|r| r["workflow"] == ".nimbus/workflows/fail.yml")
        .unwrap();
    let number = fail["number"].as_u64().unwrap();
    let detail = s
        .git
        .ok("GET", &format!("/api/v1/repos/app/runs/{number}"), None);
    assert_eq!(detail["state"], "failure", "{detail:#}");
    let check = job(&detail, "check");
    let steps: Vec<&str> = check["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    // checkout, echo before, exit 3, echo never, always, failure()
    assert_eq!(
        steps,
        [
            "success", "success", "failure", "skipped", "success", "success"
        ],
        "{check:#}"
    );
    let log = s.log("app", number, "check");
    assert!(
        log.contains("before") && log.contains("always runs") && log.contains("failure handler"),
        "{log}"
    );
    assert!(!log.contains("never\n"), "{log}");
    let statuses = s
        .git
        .ok("GET", &format!("/api/v1/repos/app/statuses/{sha}"), None);
    assert_eq!(statuses["state"], "failure", "{statuses:#}");

    // A newer push to the branch cancels the running one (concurrency, cancel-in-progress).
    std::fs::remove_file(s.work.join(".nimbus/workflows/fail.yml")).unwrap();
    std::fs::remove_file(s.work.join(".nimbus/workflows/bad.yml")).unwrap();
    std::fs::remove_file(s.work.join(".nimbus/workflows/huge.yml")).unwrap();
    let slow = |seconds: u32| {
        format!(
            r#"on: push
concurrency:
  group: deploy-${{{{ github.ref }}}}
  cancel-in-progress: true
jobs:
  deploy:
    runs-on: linux
    steps:
      - run: echo start; sleep {seconds}; echo done
"#
        )
    };
    s.write(".nimbus/workflows/deploy.yml", &slow(120));
    let first = s.commit_and_push("slow deploy", "main");
    s.world
        .wait_for("the first deploy to run", RUN_TIMEOUT, || {
            let runs = s.runs("app", &first);
            match runs.first() {
                Some(run) if run["state"] == "running" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    s.write(".nimbus/workflows/deploy.yml", &slow(0));
    let second = s.commit_and_push("quick deploy", "main");
    let first_runs = s.wait_runs_done("app", &first, 1);
    assert_eq!(first_runs[0]["state"], "cancelled", "{:#}", first_runs[0]);
    let second_runs = s.wait_runs_done("app", &second, 1);
    assert_eq!(second_runs[0]["state"], "success", "{:#}", second_runs[0]);

    // Path filters: only pushes that change a matching path run the workflow.
    std::fs::remove_file(s.work.join(".nimbus/workflows/deploy.yml")).unwrap();
    s.write(
        ".nimbus/workflows/src.yml",
        "on:\n  push:\n    paths: ['src/**']\njobs:\n  build:\n    runs-on: linux\n    steps:\n      - run: echo src changed\n",
    );
    s.write("src/lib.rs", "// one\n");
    let with_src = s.commit_and_push("src workflow and src", "main");
    s.write("docs/notes.md", "notes\n");
    let docs_only = s.commit_and_push("docs only", "main");
    s.write("src/lib.rs", "// two\n");
    let src_again = s.commit_and_push("src again", "main");
    assert_eq!(s.wait_runs_done("app", &with_src, 1)[0]["state"], "success");
    assert_eq!(
        s.wait_runs_done("app", &src_again, 1)[0]["state"],
        "success"
    );
    assert!(
        s.runs("app", &docs_only).is_empty(),
        "a push that changed only docs/ ran the src/** workflow"
    );
}

#[test]
fn a_restart_mid_run_never_leaves_the_run_running() {
    let mut s = Setup::new("app", 1);
    s.wait_ready_machines(1);
    s.write(
        ".nimbus/workflows/long.yml",
        "on: push\njobs:\n  long:\n    runs-on: linux\n    steps:\n      - run: echo started; sleep 300\n",
    );
    let sha = s.commit_and_push("long job", "main");
    s.world.wait_for("the job to run", RUN_TIMEOUT, || {
        match s.runs("app", &sha).first() {
            Some(run) if run["state"] == "running" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    s.world.stop_daemon(SIGKILL, Duration::from_secs(10));
    s.world.start_daemon(&["--autoscale-interval", "1s"]);
    let runs = s.wait_runs_done("app", &sha, 1);
    assert_eq!(runs[0]["state"], "error", "{:#}", runs[0]);
    let detail = s.git.ok(
        "GET",
        &format!("/api/v1/repos/app/runs/{}", runs[0]["number"]),
        None,
    );
    let long = job(&detail, "long");
    assert!(
        long["error"]
            .as_str()
            .unwrap_or_default()
            .contains("restarted"),
        "{long:#}"
    );
    // The job's process is gone with its machine.
    s.world
        .wait_for("the job's processes to end", RUN_TIMEOUT, || {
            let left = support::processes_under(s.world.root.path())
                .into_iter()
                .filter(|(_, cmd)| cmd.contains("sleep 300"))
                .count();
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} left"))
            }
        });
    let _ = s.world.stop_daemon(SIGTERM, Duration::from_secs(30));
}

#[test]
fn webhooks_with_a_bad_signature_are_refused() {
    let s = Setup::new("app", 0);
    let tenant = s.world.ctl(&["--json", "tenant", "list"]).ok().json()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sha = "1".repeat(40);
    let body = format!(
        r#"{{"event":"CommitPushed","repository":"app","ref":"refs/heads/main","before":"{}","after":"{sha}","pusher":"owner"}}"#,
        "0".repeat(40)
    );
    let body = body.as_str();
    let url = format!("{}/v1/tenants/{tenant}/forge/webhook", s.world.url());
    let (status, answer) = curl(
        "POST",
        &url,
        &[],
        Some(body),
        &[
            ("X-Nimbus-Event", "CommitPushed"),
            ("X-Nimbus-Delivery", "d-1"),
            ("X-Nimbus-Signature-256", "sha256=00"),
        ],
    );
    assert_eq!(status, 401, "{answer}");
    // An unknown tenant answers exactly the same.
    let (status, _) = curl(
        "POST",
        &format!("{}/v1/tenants/not-a-tenant/forge/webhook", s.world.url()),
        &[],
        Some(body),
        &[
            ("X-Nimbus-Event", "CommitPushed"),
            ("X-Nimbus-Delivery", "d-1"),
            ("X-Nimbus-Signature-256", "sha256=00"),
        ],
    );
    assert_eq!(status, 401);
    // Nothing ran.
    assert!(s.runs("app", &sha).is_empty());
}

#[test]
fn a_job_runs_on_an_ssh_machine() {
    let sshd = nimbus_testkit::sshd::Sshd::start().unwrap_or_else(|err| panic!("{err:#}"));
    let s = Setup::new("app", 0);
    let host_id = format!("{}:{}", sshd.address(), sshd.port());
    let state_dir = sshd.scratch_dir().join("state");
    let arch = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "x86_64"
    };
    let config = s.world.write_file(
        "ssh.json",
        &json!({"hosts": [{
            "address": sshd.address(), "port": sshd.port(), "user": sshd.user(),
            "os": "linux", "arch": arch, "labels": ["byo"],
            "state_dir": state_dir.display().to_string(),
        }], "connect_timeout_secs": 5})
        .to_string(),
    );
    let credentials = s.world.write_file(
        "ssh-credentials.json",
        &json!({"keys": {host_id: sshd.client_private_key()}}).to_string(),
    );
    s.world
        .ctl(&[
            "provider",
            "add",
            "--tenant",
            "acme",
            "--type",
            "ssh",
            "--name",
            "byo",
            "--config",
            config.to_str().unwrap(),
            "--credentials",
            credentials.to_str().unwrap(),
        ])
        .ok();
    s.world
        .ctl(&[
            "pool",
            "create",
            "--tenant",
            "acme",
            "--provider",
            "byo",
            "--name",
            "byo",
            "--label",
            "byo",
            "--os",
            "linux",
            "--max",
            "1",
        ])
        .ok();
    s.write(
        ".nimbus/workflows/remote.yml",
        "on: push\njobs:\n  remote:\n    runs-on: byo\n    steps:\n      - run: echo \"ran as $(id -un) in $PWD\"; test -f README.md\n",
    );
    let sha = s.commit_and_push("a job for the ssh host", "main");
    let runs = s.wait_runs_done("app", &sha, 1);
    let number = runs[0]["number"].as_u64().unwrap();
    let detail = s
        .git
        .ok("GET", &format!("/api/v1/repos/app/runs/{number}"), None);
    assert_eq!(
        detail["state"],
        "success",
        "{detail:#}\nsshd log:\n{}",
        sshd.log()
    );
    let log = s.log("app", number, "remote");
    assert!(
        log.contains(&format!("ran as {} in ", sshd.user())),
        "the step ran over SSH as the host's user: {log}"
    );
}
