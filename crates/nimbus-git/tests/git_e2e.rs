//! The real `git` client against nimbus-git: clone, fetch, push, ls-remote over protocol v0
//! and v2, shallow and partial clones, force pushes, branch and tag deletion.

mod common;

use common::{OWNER, Server, head_of};

fn ls_remote(server: &Server, version: &str, url: &str) -> String {
    let dir = server.scratch("ls");
    server.git(
        &dir,
        &[
            "-c",
            &format!("protocol.version={version}"),
            "ls-remote",
            url,
        ],
    )
}

#[test]
fn push_clone_fetch_both_protocol_versions() {
    let server = Server::start();
    server.create_repo("demo", false);
    let work = server.work_tree("work", 5);
    let push_url = server.repo_url("demo", Some(OWNER));
    server.git(&work, &["remote", "add", "origin", &push_url]);
    server.git(&work, &["tag", "-a", "v1.0", "-m", "release 1.0"]);
    server.git(&work, &["tag", "light"]);
    server.git(&work, &["branch", "feature"]);
    server.git(
        &work,
        &["push", "-q", "origin", "main", "feature", "--tags"],
    );
    let main = head_of(&server, &work, "main");

    for version in ["0", "2"] {
        let anon = server.repo_url("demo", None);
        let refs = ls_remote(&server, version, &anon);
        assert!(
            refs.contains(&format!("{main}\tHEAD")),
            "v{version} ls-remote lacks HEAD:\n{refs}"
        );
        assert!(
            refs.contains(&format!("{main}\trefs/heads/feature")),
            "v{version}:\n{refs}"
        );
        assert!(
            refs.contains("refs/tags/v1.0^{}"),
            "v{version} lacks peeled tag:\n{refs}"
        );
        assert!(
            refs.contains(&format!("{main}\trefs/tags/light")),
            "v{version}:\n{refs}"
        );

        let parent = server.scratch(&format!("clone-v{version}"));
        server.git(
            &parent,
            &[
                "-c",
                &format!("protocol.version={version}"),
                "clone",
                "-q",
                &anon,
                "demo",
            ],
        );
        let clone = parent.join("demo");
        assert_eq!(
            head_of(&server, &clone, "HEAD"),
            main,
            "clone v{version} HEAD"
        );
        assert!(
            clone.join("file4.txt").exists(),
            "clone v{version} has the files"
        );
        assert_eq!(
            server.git(&clone, &["rev-list", "--count", "HEAD"]).trim(),
            "5"
        );
    }

    // A new push is visible to the next fetch (the ref snapshot is invalidated).
    let parent = server.scratch("fetcher");
    server.git(
        &parent,
        &["clone", "-q", &server.repo_url("demo", None), "demo"],
    );
    let fetcher = parent.join("demo");
    std::fs::write(work.join("new.txt"), "new\n").unwrap();
    server.git(&work, &["add", "."]);
    server.git(&work, &["commit", "-q", "-m", "another"]);
    server.git(&work, &["push", "-q", "origin", "main"]);
    let new_main = head_of(&server, &work, "main");
    for version in ["0", "2"] {
        server.git(
            &fetcher,
            &[
                "-c",
                &format!("protocol.version={version}"),
                "fetch",
                "-q",
                "origin",
            ],
        );
        assert_eq!(
            head_of(&server, &fetcher, "origin/main"),
            new_main,
            "fetch v{version} sees the push"
        );
    }
    // no-op fetch
    let out = server.git_output(&fetcher, &["fetch", "origin"]);
    assert!(
        out.status.success(),
        "no-op fetch: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Force push: rewrite main to its grandparent.
    server.git(&work, &["reset", "-q", "--hard", "HEAD~2"]);
    let rewound = head_of(&server, &work, "main");
    let stderr = server.git_fails(&work, &["push", "origin", "main"]);
    assert!(
        stderr.contains("rejected") || stderr.contains("non-fast-forward"),
        "plain push of rewind: {stderr}"
    );
    server.git(&work, &["push", "-q", "--force", "origin", "main"]);
    let refs = ls_remote(&server, "2", &server.repo_url("demo", None));
    assert!(
        refs.contains(&format!("{rewound}\trefs/heads/main")),
        "force push landed:\n{refs}"
    );

    // Delete a branch and a tag.
    server.git(
        &work,
        &["push", "-q", "origin", ":feature", ":refs/tags/light"],
    );
    for version in ["0", "2"] {
        let refs = ls_remote(&server, version, &server.repo_url("demo", None));
        assert!(
            !refs.contains("refs/heads/feature"),
            "branch deleted (v{version}):\n{refs}"
        );
        assert!(
            !refs.contains("refs/tags/light"),
            "tag deleted (v{version}):\n{refs}"
        );
        assert!(
            refs.contains("refs/tags/v1.0"),
            "other tag kept (v{version}):\n{refs}"
        );
    }
}

#[test]
fn ref_changes_made_outside_the_server_are_noticed() {
    let server = Server::start();
    server.create_repo("outside", false);
    let work = server.work_tree("work", 2);
    server.git(
        &work,
        &[
            "push",
            "-q",
            &server.repo_url("outside", Some(OWNER)),
            "main",
        ],
    );
    let url = server.repo_url("outside", None);
    let refs = ls_remote(&server, "2", &url);
    assert!(!refs.contains("refs/heads/side"), "{refs}");
    // An administrator changes refs directly in the bare repository (nested directory too).
    let bare = server.state.repos.get("outside").unwrap().path.clone();
    let bare = bare.to_str().unwrap();
    server.git(
        &work,
        &["--git-dir", bare, "update-ref", "refs/heads/side", "HEAD~1"],
    );
    server.git(
        &work,
        &["--git-dir", bare, "update-ref", "refs/heads/team/x", "HEAD"],
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for version in ["0", "2"] {
        let refs = ls_remote(&server, version, &url);
        assert!(
            refs.contains("refs/heads/side") && refs.contains("refs/heads/team/x"),
            "v{version}:\n{refs}"
        );
    }
    server.git(
        &work,
        &["--git-dir", bare, "update-ref", "-d", "refs/heads/team/x"],
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let refs = ls_remote(&server, "2", &url);
    assert!(
        !refs.contains("refs/heads/team/x"),
        "deletion seen:\n{refs}"
    );
}

#[test]
fn empty_repository_clones_and_first_push_works() {
    let server = Server::start();
    server.create_repo("empty", true);
    let parent = server.scratch("c");
    for version in ["0", "2"] {
        let out = server.git_output(
            &parent,
            &[
                "-c",
                &format!("protocol.version={version}"),
                "clone",
                &server.repo_url("empty", Some(OWNER)),
                &format!("e{version}"),
            ],
        );
        assert!(
            out.status.success(),
            "clone empty v{version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let clone = parent.join("e2");
    std::fs::write(clone.join("a.txt"), "a\n").unwrap();
    server.git(&clone, &["add", "."]);
    server.git(&clone, &["commit", "-q", "-m", "first"]);
    server.git(&clone, &["push", "-q", "origin", "main"]);
    let refs = ls_remote(&server, "2", &server.repo_url("empty", Some(OWNER)));
    assert!(refs.contains("refs/heads/main"), "{refs}");
}

#[test]
fn shallow_and_partial_clones() {
    let server = Server::start();
    server.create_repo("deep", false);
    let work = server.work_tree("work", 12);
    server.git(
        &work,
        &["push", "-q", &server.repo_url("deep", Some(OWNER)), "main"],
    );
    let url = server.repo_url("deep", None);
    for version in ["0", "2"] {
        let parent = server.scratch(&format!("shallow-v{version}"));
        server.git(
            &parent,
            &[
                "-c",
                &format!("protocol.version={version}"),
                "clone",
                "-q",
                "--depth",
                "1",
                &url,
                "s",
            ],
        );
        let shallow = parent.join("s");
        assert_eq!(
            server
                .git(&shallow, &["rev-list", "--count", "HEAD"])
                .trim(),
            "1",
            "depth 1 (v{version})"
        );
        assert!(shallow.join(".git/shallow").exists());
        server.git(
            &shallow,
            &[
                "-c",
                &format!("protocol.version={version}"),
                "fetch",
                "-q",
                "--deepen",
                "3",
            ],
        );
        assert_eq!(
            server
                .git(&shallow, &["rev-list", "--count", "HEAD"])
                .trim(),
            "4",
            "deepened (v{version})"
        );

        let parent = server.scratch(&format!("partial-v{version}"));
        server.git(
            &parent,
            &[
                "-c",
                &format!("protocol.version={version}"),
                "clone",
                "-q",
                "--filter=blob:none",
                "--no-checkout",
                &url,
                "p",
            ],
        );
        let partial = parent.join("p");
        let promisor = server.git(&partial, &["config", "remote.origin.promisor"]);
        assert_eq!(
            promisor.trim(),
            "true",
            "partial clone (v{version}) is a promisor remote"
        );
        let missing = server.git(
            &partial,
            &["rev-list", "--objects", "--missing=print", "HEAD"],
        );
        assert!(
            missing.lines().any(|l| l.starts_with('?')),
            "blobs were filtered out (v{version}):\n{missing}"
        );
        // Checking out fetches the missing blobs lazily.
        server.git(
            &partial,
            &[
                "-c",
                &format!("protocol.version={version}"),
                "checkout",
                "-q",
                "main",
            ],
        );
        assert_eq!(
            std::fs::read_to_string(partial.join("file11.txt")).unwrap(),
            "content 11\nline two\n"
        );
    }
}

#[test]
fn maintenance_runs_after_pushes() {
    let server = Server::start();
    server.create_repo("kept", false);
    let work = server.work_tree("work", 3);
    let url = server.repo_url("kept", Some(OWNER));
    server.git(&work, &["push", "-q", &url, "main"]);
    std::fs::write(work.join("x"), "x").unwrap();
    server.git(&work, &["add", "."]);
    server.git(&work, &["commit", "-q", "-m", "x"]);
    server.git(&work, &["push", "-q", &url, "main"]);
    server.wait_for("maintenance to run", || {
        let (_, repo) = server.api("GET", "/repos/kept", Some(OWNER), None);
        repo["maintenance_runs"].as_u64().unwrap_or(0) >= 1
    });
    let entry = server.state.repos.get("kept").unwrap();
    assert_eq!(
        entry.maintenance.failures(),
        0,
        "maintenance failed; see the test log"
    );
    let objects = entry.path.join("objects");
    assert!(
        objects.join("info/commit-graphs").exists() || objects.join("info/commit-graph").exists(),
        "commit-graph written"
    );
    let packs: Vec<String> = std::fs::read_dir(objects.join("pack"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        packs.iter().any(|p| p.starts_with("multi-pack-index")),
        "midx written: {packs:?}"
    );
    assert!(
        packs.iter().any(|p| p.ends_with(".bitmap")),
        "bitmap written: {packs:?}"
    );
    // The repository still serves after maintenance.
    let parent = server.scratch("after");
    server.git(
        &parent,
        &["clone", "-q", &server.repo_url("kept", None), "k"],
    );
}
