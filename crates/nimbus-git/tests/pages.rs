//! The readable pages of issue 17 against the real `git`: last-commit answers equal
//! `git log -1 -- PATH` (with and without a commit-graph, through merges), Bloom filters written
//! by git are read right, and the README, code, raw, blame, history and commit pages show what
//! they should — hostile Markdown inert, odd path names handled, bad input a 4xx.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{OWNER, Server, head_of};
use gix::bstr::BString;

/// Commit with a fixed, increasing date so commit-time order is the real order.
fn commit_at(server: &Server, work: &Path, n: u32, message: &str) {
    let date = format!("{} +0000", 1_700_000_000 + n as i64 * 60);
    let out = server
        .git_cmd(work, &["commit", "-q", "-m", message])
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .output()
        .expect("git commit");
    assert!(
        out.status.success(),
        "git commit -m {message:?} in {}: {}",
        work.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(work: &Path, path: &str, text: &str) {
    let file = work.join(path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, text).unwrap();
}

fn step(server: &Server, work: &Path, n: u32, files: &[(&str, &str)], message: &str) {
    for (path, text) in files {
        write(work, path, text);
    }
    server.git(work, &["add", "-A"]);
    commit_at(server, work, n, message);
}

/// A history with directories, a side branch merged back, and a file changed on both sides.
fn build_history(server: &Server, work: &Path) {
    step(
        server,
        work,
        1,
        &[
            ("src/a.rs", "a1\n"),
            ("src/b.rs", "b1\n"),
            ("docs/x.md", "x1\n"),
            ("top.txt", "t1\n"),
        ],
        "start",
    );
    step(server, work, 2, &[("src/a.rs", "a2\n")], "change a");
    server.git(work, &["checkout", "-q", "-b", "side"]);
    step(
        server,
        work,
        3,
        &[("src/b.rs", "b-side\n"), ("side only.txt", "s\n")],
        "side changes b",
    );
    server.git(work, &["checkout", "-q", "main"]);
    step(
        server,
        work,
        4,
        &[("docs/x.md", "x2\n")],
        "main changes docs",
    );
    step(server, work, 5, &[("top.txt", "t2\n")], "main changes top");
    let date = format!("{} +0000", 1_700_000_000 + 99 * 60);
    let out = server
        .git_cmd(
            work,
            &["merge", "-q", "--no-ff", "-m", "merge side", "side"],
        )
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "merge: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    step(
        server,
        work,
        100,
        &[("src/deep/ü n.rs", "fn x() {}\n")],
        "unicode file",
    );
    step(
        server,
        work,
        101,
        &[("top.txt", "t1\n")],
        "revert top to its first content",
    );
}

/// The status of a GET sent byte for byte, without URL normalisation.
fn raw_status(url: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {path}: {response:?}"))
}

fn git_last(server: &Server, work: &Path, path: &str) -> String {
    server
        .git(work, &["log", "-1", "--format=%H", "HEAD", "--", path])
        .trim()
        .to_owned()
}

fn check_last_commits(server: &Server, work: &Path, repo: &str) {
    let entry = server.state.repos.get(repo).expect("repo");
    entry.history.clear();
    let gix_repo = entry.gix().expect("gix");
    let head: gix::ObjectId = head_of(server, work, "HEAD").parse().unwrap();
    for dir in ["", "src", "docs", "src/deep"] {
        let tree_id = if dir.is_empty() {
            gix_repo
                .find_commit(head)
                .unwrap()
                .tree_id()
                .unwrap()
                .detach()
        } else {
            gix_repo
                .find_commit(head)
                .unwrap()
                .tree()
                .unwrap()
                .lookup_entry_by_path(dir)
                .unwrap()
                .unwrap()
                .object_id()
        };
        let entries = entry.history.entries(&gix_repo, tree_id).unwrap();
        let names: Vec<BString> = entries.iter().map(|e| e.name.clone()).collect();
        let answer = entry
            .history
            .last_commits(
                &gix_repo,
                head,
                dir,
                &names,
                Instant::now() + Duration::from_secs(30),
            )
            .unwrap();
        assert!(answer.complete, "{dir}: walk complete");
        for (name, last) in names.iter().zip(&answer.entries) {
            let path = if dir.is_empty() {
                name.to_string()
            } else {
                format!("{dir}/{name}")
            };
            let expected = git_last(server, work, &path);
            let got = last.as_ref().map(|l| l.id.to_string()).unwrap_or_default();
            assert_eq!(
                got, expected,
                "last commit of {path:?} (git log -1 -- {path})"
            );
        }
    }
}

#[test]
fn last_commits_match_git_log_with_and_without_bloom_filters() {
    let server = Server::start();
    server.create_repo("hist", false);
    let work = server.scratch("hist-work");
    server.git(&work, &["init", "-q", "-b", "main"]);
    build_history(&server, &work);
    server.git(
        &work,
        &[
            "push",
            "-q",
            &server.repo_url("hist", Some(OWNER)),
            "main",
            "side",
        ],
    );
    let bare = server.state.repos.get("hist").unwrap().path.clone();

    // Without a commit-graph every commit is read from the object database.
    let _ = std::fs::remove_dir_all(bare.join("objects/info/commit-graphs"));
    let _ = std::fs::remove_file(bare.join("objects/info/commit-graph"));
    check_last_commits(&server, &work, "hist");

    // With the commit-graph and changed-path filters that maintenance writes.
    server.git(
        &bare,
        &[
            "commit-graph",
            "write",
            "--reachable",
            "--split",
            "--changed-paths",
            "--no-progress",
        ],
    );
    let entry = server.state.repos.get("hist").unwrap();
    let gix_repo = entry.gix().unwrap();
    let graph = entry.history.graph(&gix_repo);
    assert!(graph.blooms.any(), "git wrote changed-path filters");
    check_last_commits(&server, &work, "hist");

    // Every path a commit changed against its first parent is "maybe" in its filter, and some
    // unchanged path is ruled out (else the filters would be useless).
    let cg = graph.graph.as_ref().expect("commit-graph loaded");
    let mut ruled_out = 0;
    for line in server
        .git(&work, &["rev-list", "--first-parent", "HEAD"])
        .lines()
    {
        let id: gix::ObjectId = line.parse().unwrap();
        let pos = cg.lookup(id).expect("commit in graph").0;
        let changed = server.git(
            &work,
            &[
                "diff-tree",
                "--root",
                "-r",
                "-t",
                "--name-only",
                "--no-commit-id",
                "-z",
                line,
            ],
        );
        for path in changed.split('\0').filter(|p| !p.is_empty()) {
            assert!(
                graph
                    .blooms
                    .maybe_changed(pos, &nimbus_git::bloom::BloomKey::new(path.as_bytes())),
                "{line} changed {path:?} but its filter says no"
            );
        }
        if !graph
            .blooms
            .maybe_changed(pos, &nimbus_git::bloom::BloomKey::new(b"never/there.txt"))
        {
            ruled_out += 1;
        }
    }
    assert!(
        ruled_out > 0,
        "filters rule out an unchanged path somewhere"
    );

    // A push after the graph was written: new commits come from the object database.
    write(&work, "src/a.rs", "a3\n");
    server.git(&work, &["add", "-A"]);
    commit_at(&server, &work, 200, "after the graph");
    server.git(
        &work,
        &["push", "-q", &server.repo_url("hist", Some(OWNER)), "main"],
    );
    check_last_commits(&server, &work, "hist");

    // Maintenance after the push keeps the branch heads' root answers on disk.
    let deadline = Instant::now() + Duration::from_secs(60);
    let kept = entry.path.join("nimbus/last-commits");
    while entry.maintenance.runs() == 0 || std::fs::read_dir(&kept).map_or(0, |d| d.count()) == 0 {
        assert!(
            Instant::now() < deadline,
            "maintenance kept no answers ({} runs, {} failures)",
            entry.maintenance.runs(),
            entry.maintenance.failures()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The tree page shows the answer: subject per entry, sizes, no raw modes.
    let (status, body) = server.request("GET", "/hist/tree/main/src", None, None, &[]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(">after the graph<"),
        "a.rs's last commit:\n{body}"
    );
    assert!(
        body.contains(">side changes b<"),
        "b.rs's last commit is the side commit, not the merge:\n{body}"
    );
    assert!(body.contains("3 bytes"), "sizes:\n{body}");
    assert!(!body.contains("100644"), "no raw modes:\n{body}");
    assert!(
        body.contains("href=\"/hist/tree/main/src/deep\""),
        "directory link:\n{body}"
    );
}

/// Root (or `dir`) answers of `cache` at `commit`, checked entry by entry against `git log`.
fn checked_answer(
    server: &Server,
    work: &Path,
    cache: &nimbus_git::lastcommit::Cache,
    commit: &str,
    dir: &str,
) -> std::sync::Arc<nimbus_git::lastcommit::LastCommits> {
    let repo = gix::open(work).expect("gix open");
    let id: gix::ObjectId = commit.parse().unwrap();
    let spec = format!("{commit}:{dir}");
    let tree: gix::ObjectId = server
        .git(work, &["rev-parse", &spec])
        .trim()
        .parse()
        .unwrap();
    let entries = cache.entries(&repo, tree).unwrap();
    let names: Vec<BString> = entries.iter().map(|e| e.name.clone()).collect();
    let answer = cache
        .last_commits(
            &repo,
            id,
            dir,
            &names,
            Instant::now() + Duration::from_secs(30),
        )
        .unwrap();
    assert!(answer.complete, "{dir}: walk complete");
    for (name, last) in names.iter().zip(&answer.entries) {
        let path = if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        };
        let expected = server
            .git(work, &["log", "-1", "--format=%H", commit, "--", &path])
            .trim()
            .to_owned();
        let got = last.as_ref().map(|l| l.id.to_string()).unwrap_or_default();
        assert_eq!(got, expected, "last commit of {path:?} at {commit}");
    }
    answer
}

#[test]
fn kept_answers_survive_a_restart_and_shorten_the_walk_after_a_push() {
    use nimbus_git::lastcommit::Cache;
    let server = Server::start();
    let work = server.scratch("kept-work");
    server.git(&work, &["init", "-q", "-b", "main"]);
    build_history(&server, &work);
    server.git(
        &work,
        &[
            "commit-graph",
            "write",
            "--reachable",
            "--changed-paths",
            "--no-progress",
        ],
    );
    let git_dir = work.join(".git");
    let repo = gix::open(&work).unwrap();
    let old_head = head_of(&server, &work, "main");

    // What maintenance does after a push: both branch heads' root answers on disk.
    let indexer = Cache::with_disk(&git_dir);
    let far = Instant::now() + Duration::from_secs(30);
    assert_eq!(
        indexer.index_heads(&repo, far).unwrap(),
        2,
        "main and side indexed"
    );
    let kept = std::fs::read_dir(git_dir.join("nimbus/last-commits"))
        .unwrap()
        .count();
    assert_eq!(kept, 2, "one file per head");

    // A restarted server reads the answer instead of walking.
    let restarted = Cache::with_disk(&git_dir);
    let answer = checked_answer(&server, &work, &restarted, &old_head, "");
    assert_eq!(answer.commits_walked, 0, "answered from disk");

    // A push on top: a side branch merged back, then a linear commit; not in the graph yet.
    server.git(&work, &["checkout", "-q", "-b", "side2"]);
    step(
        &server,
        &work,
        301,
        &[("docs/x.md", "x3\n")],
        "side2 changes docs",
    );
    server.git(&work, &["checkout", "-q", "main"]);
    step(&server, &work, 302, &[("new.txt", "n\n")], "main adds new");
    let date = format!("{} +0000", 1_700_000_000 + 303 * 60);
    let out = server
        .git_cmd(
            &work,
            &["merge", "-q", "--no-ff", "-m", "merge side2", "side2"],
        )
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    step(
        &server,
        &work,
        304,
        &[("src/a.rs", "a4\n")],
        "main changes a again",
    );
    let new_head = head_of(&server, &work, "main");

    let from_kept = checked_answer(&server, &work, &Cache::with_disk(&git_dir), &new_head, "");
    let from_nothing = checked_answer(&server, &work, &Cache::default(), &new_head, "");
    assert!(
        from_kept.commits_walked <= 5,
        "the walk stops at the old head's answer: {} commits",
        from_kept.commits_walked
    );
    assert!(
        from_kept.commits_walked < from_nothing.commits_walked,
        "{} walked with kept answers, {} without",
        from_kept.commits_walked,
        from_nothing.commits_walked
    );
    // Directories nobody indexed are walked as before, and still right.
    checked_answer(
        &server,
        &work,
        &Cache::with_disk(&git_dir),
        &new_head,
        "src",
    );

    // A damaged file is ignored and the answer recomputed.
    for file in std::fs::read_dir(git_dir.join("nimbus/last-commits")).unwrap() {
        std::fs::write(file.unwrap().path(), b"nimbus-last-commits 1\n9:truncated").unwrap();
    }
    checked_answer(&server, &work, &Cache::with_disk(&git_dir), &old_head, "");
}

#[test]
fn readme_code_raw_blame_history_and_commit_pages() {
    let server = Server::start();
    server.create_repo("site", false);
    let work = server.scratch("site-work");
    server.git(&work, &["init", "-q", "-b", "main"]);
    write(
        &work,
        "README.md",
        "# Site\n\nSee [the guide](docs/guide.md) and ![logo](img/logo.png).\n\n\
         | a | b |\n|---|---|\n| 1 | 2 |\n\n- [x] done\n\n\
         <script>alert(1)</script><img src=x onerror=alert(1)> [bad](javascript:alert(1))\n\
         <!-- <script>hidden()</script> -->\n",
    );
    write(
        &work,
        "docs/guide.md",
        "## Guide\n\nBack to [readme](../README.md).\n",
    );
    write(&work, "img/logo.png", "\u{89}PNG\r\n\u{1a}\n\0\0\0\rIHDR");
    write(
        &work,
        "src/main.rs",
        "// entry\nfn main() {\n    println!(\"hi\");\n}\n",
    );
    write(&work, "dir with space/ünïcode file.txt", "one\ntwo\n");
    write(&work, "blob.bin", "\0\0binary\0");
    server.git(&work, &["add", "-A"]);
    commit_at(&server, &work, 1, "first");
    write(
        &work,
        "src/main.rs",
        "// entry\nfn main() {\n    println!(\"hello\");\n    println!(\"again\");\n}\n",
    );
    std::fs::write(work.join("big.txt"), "x".repeat((1 << 20) + 10)).unwrap();
    server.git(&work, &["add", "-A"]);
    commit_at(&server, &work, 2, "second: main says hello");
    server.git(
        &work,
        &["push", "-q", &server.repo_url("site", Some(OWNER)), "main"],
    );
    let head = head_of(&server, &work, "HEAD");
    let get = |path: &str| server.request("GET", path, None, None, &[]);

    // README rendered, links resolved in the repository, hostile parts inert.
    let (status, body) = get("/site");
    assert_eq!(status, 200, "{body}");
    for want in [
        "<h1 id=\"md-site\">",
        "href=\"/site/blob/main/docs/guide.md\"",
        "src=\"/site/raw/main/img/logo.png\"",
        "<table>",
        "type=\"checkbox\"",
    ] {
        assert!(body.contains(want), "README has {want:?}:\n{body}");
    }
    for bad in ["<script>alert", "onerror", "href=\"javascript:", "hidden()"] {
        assert!(
            !body.contains(bad),
            "README must not contain {bad:?}:\n{body}"
        );
    }
    let (_, body) = get("/site/blob/main/docs/guide.md");
    assert!(
        body.contains("href=\"/site/blob/main/README.md\""),
        "{body}"
    );
    let (_, body) = get("/site/blob/main/docs/guide.md?plain=1");
    assert!(
        body.contains("<a href=\"#L1\">1</a>")
            && body.contains("## ")
            && !body.contains("id=\"md-guide\""),
        "source view:\n{body}"
    );

    // Code: highlighted, numbered, anchored, selected range.
    let (status, body) = get("/site/blob/main/src/main.rs?lines=2-3");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<span class=\"c\">// entry</span>"), "{body}");
    assert!(
        body.contains("id=\"L5\"") && body.contains("href=\"#L5\""),
        "{body}"
    );
    assert!(
        body.contains("<tr id=\"L2\" class=\"sel\">")
            && !body.contains("<tr id=\"L4\" class=\"sel\">"),
        "{body}"
    );
    assert!(body.contains("5 lines"), "{body}");
    assert_eq!(get("/site/blob/main/src/main.rs?lines=x").0, 400);

    // Binary, large, image, odd names.
    let (_, body) = get("/site/blob/main/blob.bin");
    assert!(body.contains("Binary file"), "{body}");
    let (_, body) = get("/site/blob/main/big.txt");
    assert!(body.contains("more than the 1.0 MiB"), "{body}");
    let (_, body) = get("/site/blob/main/img/logo.png");
    assert!(
        body.contains("<img class=\"shown\" src=\"/site/raw/main/img/logo.png\""),
        "{body}"
    );
    let (status, body) = get("/site/tree/main/dir%20with%20space");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("href=\"/site/blob/main/dir%20with%20space/%C3%BCn%C3%AFcode%20file.txt\""),
        "{body}"
    );
    let (status, body) = get("/site/blob/main/dir%20with%20space/%C3%BCn%C3%AFcode%20file.txt");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("2 lines"), "{body}");
    assert_eq!(get("/site/blob/main/nope.rs").0, 404);
    // `..` segments as a browser would never send them (HTTP clients normalise them away).
    for path in [
        "/site/blob/main/src/../README.md",
        "/site/tree/main/src/%2e%2e",
        "/site/raw/main/./README.md",
        "/site/blame/main/src/..%2Fsrc/main.rs",
    ] {
        let status = raw_status(&server.url, path);
        assert_eq!(status, 404, "{path}");
    }

    // Raw: the bytes, a safe content type, never active content.
    let (status, headers, body) =
        server.request_full("GET", "/site/raw/main/src/main.rs", None, None, &[]);
    assert_eq!(status, 200);
    assert!(body.contains("println!(\"again\");"));
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );
    let (_, headers, _) = server.request_full(
        "GET",
        "/site/raw/main/img/logo.png?download=1",
        None,
        None,
        &[],
    );
    assert_eq!(headers["content-type"], "image/png");
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"logo.png\"")
    );

    // Redirects between tree and blob URLs.
    let (status, headers, _) = server.request_full("GET", "/site/blob/main/src", None, None, &[]);
    assert!(status == 303 || status == 307 || status == 200, "{status}");
    if status != 200 {
        assert_eq!(headers["location"], "/site/tree/main/src");
    }

    // Blame: each line to the commit that wrote it.
    let (status, body) = get("/site/blame/main/src/main.rs");
    assert_eq!(status, 200, "{body}");
    let first = head_of(&server, &work, "HEAD~1");
    assert!(
        body.contains(&format!("/site/commit/{first}")),
        "line 1 is from the first commit:\n{body}"
    );
    assert!(
        body.contains(&format!("/site/commit/{head}")),
        "line 3 from the second:\n{body}"
    );
    assert!(!body.contains("Blame stopped"), "{body}");
    assert_eq!(get("/site/blame/main/blob.bin").0, 422);

    // History of a path.
    let (status, body) = get("/site/log/main/src/main.rs");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(">second: main says hello<") && body.contains(">first<"),
        "{body}"
    );
    let (_, body) = get("/site/log/main/docs");
    assert!(
        !body.contains("second: main says hello"),
        "docs was not changed by the second commit:\n{body}"
    );

    // Commit page: diffstat, per-file counts, plurals, wider context by link.
    let (status, body) = get(&format!("/site/commit/{head}"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("2 files changed"), "{body}");
    assert!(
        body.contains("3 insertions(+)") && body.contains("1 deletion(-)"),
        "{body}"
    );
    assert!(
        body.contains("+2</span>") && body.contains("−1</span>"),
        "per-file counts:\n{body}"
    );
    assert!(
        body.contains("?context=12#diff-"),
        "more-context link:\n{body}"
    );
    let (_, body) = get(&format!("/site/commit/{head}?context=all"));
    assert!(body.contains("// entry"), "whole-file context:\n{body}");
    assert_eq!(get(&format!("/site/commit/{head}?context=lots")).0, 400);
    let (_, body) = get(&format!("/site/commit/{first}"));
    assert!(body.contains("6 files changed"), "{body}");

    // Branch switcher on tree pages.
    server.git(
        &work,
        &[
            "push",
            "-q",
            &server.repo_url("site", Some(OWNER)),
            "main:feature/x",
        ],
    );
    let (_, body) = get("/site/tree/main/src");
    assert!(
        body.contains("href=\"/site/tree/feature%2Fx/src\""),
        "switcher keeps the path:\n{body}"
    );
    let (status, body) = get("/site/tree/feature%2Fx/src");
    assert_eq!(status, 200, "a branch with a slash:\n{body}");
    assert!(body.contains("main.rs"), "{body}");
}
