//! The access matrix: anonymous, stranger, read, write and admin collaborators, the owner,
//! and read/write tokens, against public and private repositories, for fetch and push.

mod common;

use common::{OWNER, Server};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Ok,
    /// git fails; stderr must contain this
    Denied(&'static str),
}

use Outcome::{Denied, Ok};

#[test]
fn access_matrix() {
    let server = Server::start();
    for (name, private) in [("pub", false), ("priv", true)] {
        server.create_repo(name, private);
        let work = server.work_tree(&format!("seed-{name}"), 2);
        server.git(
            &work,
            &["push", "-q", &server.repo_url(name, Some(OWNER)), "main"],
        );
    }
    for user in ["reader", "writer", "admin", "stranger"] {
        server.create_user(user, &format!("{user}-password"));
    }
    for repo in ["pub", "priv"] {
        server.grant(repo, "reader", "read");
        server.grant(repo, "writer", "write");
        server.grant(repo, "admin", "admin");
    }
    let token = |scope: &str| -> String {
        let (status, body) = server.api(
            "POST",
            "/tokens",
            Some(("writer", "writer-password")),
            Some(json!({"name": scope, "scope": scope})),
        );
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().unwrap().to_owned()
    };
    let read_token = token("read");
    let write_token = token("write");

    let auth_required = "could not read Username";
    let not_found = "not found";
    let may_not_push = "may not push";
    let passwords: Vec<(&str, Option<(String, String)>)> = vec![
        ("anonymous", None),
        (
            "stranger",
            Some(("stranger".into(), "stranger-password".into())),
        ),
        ("reader", Some(("reader".into(), "reader-password".into()))),
        ("writer", Some(("writer".into(), "writer-password".into()))),
        ("admin", Some(("admin".into(), "admin-password".into()))),
        ("owner", Some((OWNER.0.into(), OWNER.1.into()))),
        ("read token", Some(("writer".into(), read_token.clone()))),
        ("write token", Some(("x-token".into(), write_token.clone()))),
    ];
    // (who, repo) -> (fetch, push)
    let expect = |who: &str, repo: &str| -> (Outcome, Outcome) {
        let private = repo == "priv";
        match who {
            "anonymous" if private => (Denied(auth_required), Denied(auth_required)),
            "anonymous" => (Ok, Denied(auth_required)),
            "stranger" if private => (Denied(not_found), Denied(not_found)),
            "stranger" | "reader" | "read token" => (Ok, Denied(may_not_push)),
            _ => (Ok, Ok),
        }
    };

    let mut failures = Vec::new();
    for (who, creds) in &passwords {
        for repo in ["pub", "priv"] {
            let auth = creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
            let url = server.repo_url(repo, auth);
            let (want_fetch, want_push) = expect(who, repo);
            let dir = server.scratch(&format!("m-{}-{repo}", who.replace(' ', "-")));
            let clone = server.git_output(&dir, &["clone", "-q", &url, "c"]);
            let got_fetch = check(&clone, want_fetch);
            if let Err(msg) = got_fetch {
                failures.push(format!("{who} fetch {repo}: {msg}"));
            }
            // Push from a copy of the seed (the clone may not exist).
            let work = server.work_tree(&format!("w-{}-{repo}", who.replace(' ', "-")), 1);
            let branch = format!("{}-branch", who.replace(' ', "-"));
            server.git(&work, &["branch", &branch]);
            let push = server.git_output(&work, &["push", "-q", &url, &branch]);
            if let Err(msg) = check(&push, want_push) {
                failures.push(format!("{who} push {repo}: {msg}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "access matrix mismatches:\n{}",
        failures.join("\n")
    );

    // The 403 message is shown by git as remote output.
    let work = server.work_tree("w-msg", 1);
    let out = server.git_output(
        &work,
        &[
            "push",
            &server.repo_url("pub", Some(("reader", "reader-password"))),
            "main:m",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("remote: nimbus-git: reader may not push to 'pub'"),
        "git shows the reason:\n{stderr}"
    );
    assert!(stderr.contains("403"), "{stderr}");

    // A wrong password is refused, never treated as anonymous.
    let dir = server.scratch("wrong");
    let out = server.git_output(
        &dir,
        &[
            "ls-remote",
            &server.repo_url("priv", Some(("reader", "nope"))),
        ],
    );
    assert!(
        !out.status.success(),
        "wrong password must not read a private repository"
    );
    let (status, body) = server.api("GET", "/repos/pub", Some(("reader", "nope")), None);
    assert_eq!(
        status, 401,
        "wrong password on a public repository via the API: {body}"
    );

    // Revoking a collaborator takes effect at once.
    let (status, _) = server.api(
        "DELETE",
        "/repos/priv/collaborators/reader",
        Some(OWNER),
        None,
    );
    assert_eq!(status, 204);
    let out = server.git_output(
        &dir,
        &[
            "ls-remote",
            &server.repo_url("priv", Some(("reader", "reader-password"))),
        ],
    );
    assert!(
        !out.status.success(),
        "revoked reader still reads the private repo"
    );

    // Making the repository public opens it to anonymous readers.
    let (status, body) = server.api(
        "PATCH",
        "/repos/priv",
        Some(("admin", "admin-password")),
        Some(json!({"private": false})),
    );
    assert_eq!(status, 200, "{body}");
    server.git(&dir, &["ls-remote", &server.repo_url("priv", None)]);
}

fn check(out: &std::process::Output, want: Outcome) -> Result<(), String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    match (want, out.status.success()) {
        (Ok, true) => Result::Ok(()),
        (Ok, false) => Err(format!("expected success, got failure:\n{stderr}")),
        (Denied(_), true) => Err("expected denial, got success".into()),
        (Denied(text), false) if stderr.contains(text) => Result::Ok(()),
        (Denied(text), false) => Err(format!("denied, but stderr lacks {text:?}:\n{stderr}")),
    }
}
