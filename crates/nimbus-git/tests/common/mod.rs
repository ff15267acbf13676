//! Test harness: a nimbus-git server on 127.0.0.1:0 in its own runtime, an isolated `git`
//! environment (own HOME and global config), and helpers that print everything a person
//! needs when a command fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nimbus_git::AppState;
use nimbus_git::config::Settings;
use serde_json::Value;
use tempfile::TempDir;

pub const OWNER: (&str, &str) = ("owner", "owner-password");

pub struct Server {
    pub url: String,
    pub state: AppState,
    pub http: reqwest::Client,
    pub rt: tokio::runtime::Runtime,
    pub dir: TempDir,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut Settings)) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("nimbus-git-test")
            .tempdir()
            .expect("tempdir");
        let mut settings = Settings::for_tests(dir.path().join("data"));
        tweak(&mut settings);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (url, state) = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            let started = AppState::open(settings, url.clone())
                .await
                .expect("open server state");
            let state = started.state;
            state.spawn_workers();
            let app = nimbus_git::app(state.clone());
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
            (url, state)
        });
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        std::fs::write(
            home.join(".gitconfig"),
            "[user]\n\tname = Test User\n\temail = test@example.com\n[init]\n\tdefaultBranch = main\n\
             [advice]\n\tdetachedHead = false\n[core]\n\tautocrlf = false\n",
        )
        .expect("gitconfig");
        Server {
            url,
            state,
            dir,
            rt,
            http: reqwest::Client::new(),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// A fresh directory under the test's temp dir.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).expect("scratch dir");
        path
    }

    /// Clone URL with optional credentials.
    pub fn repo_url(&self, repo: &str, auth: Option<(&str, &str)>) -> String {
        match auth {
            Some((user, secret)) => format!(
                "{}/{repo}.git",
                self.url
                    .replace("http://", &format!("http://{user}:{secret}@"))
            ),
            None => format!("{}/{repo}.git", self.url),
        }
    }

    pub fn git_cmd(&self, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("GIT_CONFIG_GLOBAL", self.home().join(".gitconfig"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "")
            .env("SSH_ASKPASS", "")
            .env("LANG", "C");
        cmd
    }

    /// Run git, returning its output whatever the status.
    pub fn git_output(&self, dir: &Path, args: &[&str]) -> Output {
        self.git_cmd(dir, args).output().expect("run git")
    }

    /// Run git and insist it succeeds.
    pub fn git(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.git_output(dir, args);
        if !out.status.success() {
            panic!(
                "git {} failed in {}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
                args.join(" "),
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run git and insist it fails; returns stderr.
    pub fn git_fails(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.git_output(dir, args);
        if out.status.success() {
            panic!(
                "git {} unexpectedly succeeded in {}\nstdout:\n{}\nstderr:\n{}",
                args.join(" "),
                dir.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// An API call; returns status and JSON (Null when the body is empty or not JSON).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        auth: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, text) = self.request(
            method,
            &format!("/api/v1{path}"),
            auth,
            body.map(|b| b.to_string()),
            &[],
        );
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Any HTTP request; returns status and body text.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        auth: Option<(&str, &str)>,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let (status, _, text) =
            self.request_full(method, path, auth, body.map(String::into_bytes), headers);
        (status, text)
    }

    pub fn request_full(
        &self,
        method: &str,
        path: &str,
        auth: Option<(&str, &str)>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, String) {
        self.rt.block_on(async {
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let mut req = self.http.request(method, format!("{}{path}", self.url));
            if let Some((user, secret)) = auth {
                req = req.basic_auth(user, Some(secret));
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(body) = body {
                req = req.header("content-type", "application/json").body(body);
            }
            let resp = req.send().await.expect("send request");
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            (status, headers, resp.text().await.unwrap_or_default())
        })
    }

    pub fn create_repo(&self, name: &str, private: bool) -> Value {
        let (status, body) = self.api(
            "POST",
            "/repos",
            Some(OWNER),
            Some(serde_json::json!({"name": name, "private": private})),
        );
        assert_eq!(status, 201, "create repo {name}: {body}");
        body
    }

    pub fn create_user(&self, name: &str, password: &str) {
        let (status, body) = self.api(
            "POST",
            "/users",
            Some(OWNER),
            Some(serde_json::json!({"username": name, "password": password})),
        );
        assert_eq!(status, 201, "create user {name}: {body}");
    }

    pub fn grant(&self, repo: &str, user: &str, permission: &str) {
        let (status, body) = self.api(
            "PUT",
            &format!("/repos/{repo}/collaborators/{user}"),
            Some(OWNER),
            Some(serde_json::json!({"permission": permission})),
        );
        assert_eq!(
            status, 200,
            "grant {permission} on {repo} to {user}: {body}"
        );
    }

    /// A working copy with `n` commits on main, each adding a file.
    pub fn work_tree(&self, name: &str, n: usize) -> PathBuf {
        let dir = self.scratch(name);
        self.git(&dir, &["init", "-q", "-b", "main"]);
        std::fs::write(dir.join("README.md"), "# hello\n\nA test repository.\n").expect("write");
        self.git(&dir, &["add", "."]);
        self.git(&dir, &["commit", "-q", "-m", "initial commit"]);
        for idx in 1..n {
            std::fs::write(
                dir.join(format!("file{idx}.txt")),
                format!("content {idx}\nline two\n"),
            )
            .expect("write");
            self.git(&dir, &["add", "."]);
            self.git(
                &dir,
                &["commit", "-q", "-m", &format!("commit number {idx}")],
            );
        }
        dir
    }

    /// Poll until `f` is true (up to 20 s); panics with `what` otherwise.
    pub fn wait_for(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if f() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}");
    }
}

pub fn head_of(server: &Server, dir: &Path, rev: &str) -> String {
    server.git(dir, &["rev-parse", rev]).trim().to_owned()
}
