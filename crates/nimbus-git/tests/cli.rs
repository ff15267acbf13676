//! The real `nimbus-git` binary: first start generates and prints the owner's password once,
//! serves on the given address, and the printed password works.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(data: &std::path::Path, home: &std::path::Path) -> (Killed, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nimbus-git"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nimbus-git");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = Vec::new();
    let mut reader = BufReader::new(stdout);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read stdout") == 0 {
            break;
        }
        let done = line.contains("listening on");
        lines.push(line.trim_end().to_owned());
        if done {
            break;
        }
    }
    (Killed(child), lines)
}

#[test]
fn first_start_prints_owner_password_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, lines) = start(&data, dir.path());
    let password = lines
        .iter()
        .find_map(|l| l.strip_prefix("created owner account 'owner' with password: "))
        .unwrap_or_else(|| panic!("no generated password in stdout: {lines:#?}"))
        .to_owned();
    let url = lines
        .iter()
        .find_map(|l| l.strip_prefix("nimbus-git listening on "))
        .unwrap_or_else(|| panic!("no listening line: {lines:#?}"))
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .get(format!("{url}/api/v1/user"))
            .basic_auth("owner", Some(&password))
            .send()
            .await
            .expect("request")
            .status()
    });
    assert_eq!(status, 200, "the printed password works");
    assert!(
        data.join("nimbus-git.db").exists(),
        "SQLite database in the data dir"
    );
    drop(server);

    // Second start: the owner exists, nothing is printed about passwords.
    let (_server, lines) = start(&data, dir.path());
    assert!(
        lines.iter().all(|l| !l.contains("password")),
        "password printed again: {lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("listening on")),
        "{lines:#?}"
    );
}
