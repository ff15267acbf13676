//! The web pages in a real browser: headless Chromium driven by playwright-core
//! (`tests/browser/pages.cjs`), JavaScript off for the content checks, on only to prove hostile
//! Markdown stays inert and to run axe-core. Slow (starts Chromium), so gated by
//! NIMBUS_SLOW_TESTS like the other suites; needs Debian's `chromium` and the npm peers
//! `playwright-core` and `axe-core` under $NIMBUS_NPM_PEERS (scripts/test installs them all).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use common::{OWNER, Server, head_of};

const PNG_1X1: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

fn write(work: &Path, path: &str, bytes: &[u8]) {
    let file = work.join(path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, bytes).unwrap();
}

fn npm_peers() -> PathBuf {
    let dir = std::env::var_os("NIMBUS_NPM_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("NIMBUS_NPM_PEERS is not set: run scripts/test, which installs playwright-core and axe-core and sets it")
        });
    for package in ["playwright-core", "axe-core"] {
        assert!(
            dir.join(package).is_dir(),
            "npm package {package} is not in {} (scripts/deps/npm.txt; scripts/test installs it)",
            dir.display()
        );
    }
    dir
}

#[test]
fn pages_in_headless_chromium() {
    if std::env::var_os("NIMBUS_SLOW_TESTS").is_none() {
        eprintln!(
            "skipped: set NIMBUS_SLOW_TESTS=1 (scripts/test does) to drive the pages in Chromium"
        );
        return;
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} not found: install Debian's chromium (scripts/deps/apt.txt; scripts/test installs it)"
    );
    let peers = npm_peers();

    let server = Server::start();
    server.create_repo("site", false);
    let work = server.scratch("site-work");
    server.git(&work, &["init", "-q", "-b", "main"]);
    write(
        &work,
        "README.md",
        b"# Site\n\nSee [the guide](docs/guide.md). ![logo](img/logo.png)\n\n\
          | a | b |\n|---|---|\n| 1 | 2 |\n\n- [x] done\n\n\
          <script>window.__pwned = 1; alert(1)</script>\n\n\
          <img src=\"nope\" onerror=\"window.__pwned = 2; alert(2)\">\n\n\
          [click me](javascript:window.__pwned=3) <a href=\"#\" onclick=\"window.__pwned = 4\">x</a>\n\n\
          <!-- <script>window.__pwned = 5</script> -->\n\n\
          <svg><script>window.__pwned = 6</script></svg><iframe srcdoc=\"<script>parent.__pwned=7</script>\"></iframe>\n",
    );
    write(
        &work,
        "docs/guide.md",
        b"## Guide\n\nBack to the [readme](../README.md).\n",
    );
    write(
        &work,
        "img/logo.png",
        &base64::engine::general_purpose::STANDARD
            .decode(PNG_1X1)
            .unwrap(),
    );
    write(
        &work,
        "src/main.rs",
        b"// entry\nfn main() {\n    println!(\"hi\");\n}\n",
    );
    write(&work, "dir with space/ünïcode file.txt", b"one\n");
    server.git(&work, &["add", "-A"]);
    server.git(&work, &["commit", "-q", "-m", "first"]);
    write(
        &work,
        "src/main.rs",
        b"// entry\nfn main() {\n    println!(\"hello\");\n    println!(\"again\");\n}\n",
    );
    write(
        &work,
        "docs/guide.md",
        b"## Guide\n\nBack to the [readme](../README.md).\n\nMore.\n",
    );
    server.git(&work, &["add", "-A"]);
    server.git(&work, &["commit", "-q", "-m", "second: main says hello"]);
    server.git(
        &work,
        &["push", "-q", &server.repo_url("site", Some(OWNER)), "main"],
    );
    let head = head_of(&server, &work, "HEAD");

    let out_dir = server.scratch("browser");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/pages.cjs");
    let output = Command::new("node")
        .arg(&script)
        .arg(&server.url)
        .arg(&out_dir)
        .arg(&head)
        .env("NODE_PATH", &peers)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node (Debian nodejs)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        // Keep the screenshots for whoever reads this.
        let kept = std::env::temp_dir().join(format!("nimbus-git-browser-{}", std::process::id()));
        let _ = Command::new("cp")
            .arg("-a")
            .arg(&out_dir)
            .arg(&kept)
            .status();
        panic!(
            "browser checks failed: node {} {} {} {head}\nscreenshots: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            script.display(),
            server.url,
            out_dir.display(),
            kept.display()
        );
    }
    assert!(stdout.contains("ok   axe /site"), "axe ran:\n{stdout}");
    eprintln!("{stdout}");
}
