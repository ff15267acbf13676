//! Web pages, checked for their content: list, summary, tree, blob, log pagination, commit
//! diff, refs; ETags on commit-addressed pages; private repositories need credentials.

mod common;

use common::{OWNER, Server, head_of};

#[test]
fn pages_show_repository_content() {
    let server = Server::start();
    server.create_repo("site", false);
    server.create_repo("secret", true);
    let work = server.work_tree("work", 60);
    std::fs::create_dir_all(work.join("src/deep")).unwrap();
    std::fs::write(
        work.join("src/deep/lib.rs"),
        "fn main() {\n    println!(\"<hello>\");\n}\n",
    )
    .unwrap();
    std::fs::write(work.join("README.md"), "# hello\n\nChanged line.\n").unwrap();
    server.git(&work, &["add", "."]);
    server.git(
        &work,
        &["commit", "-q", "-m", "add sources & change readme"],
    );
    server.git(&work, &["tag", "-a", "v2", "-m", "v2"]);
    server.git(
        &work,
        &[
            "push",
            "-q",
            &server.repo_url("site", Some(OWNER)),
            "main",
            "v2",
        ],
    );
    let head = head_of(&server, &work, "HEAD");

    let get = |path: &str| -> (u16, String) { server.request("GET", path, None, None, &[]) };

    let (status, body) = get("/");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("href=\"/site\""),
        "list shows public repo:\n{body}"
    );
    assert!(
        !body.contains("secret"),
        "list hides private repo from anonymous:\n{body}"
    );
    assert!(!body.contains("<script"), "no JavaScript");
    let (_, body) = server.request("GET", "/", Some(OWNER), None, &[]);
    assert!(
        body.contains("href=\"/secret\""),
        "owner sees private repo:\n{body}"
    );

    let (status, body) = get("/site");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("git clone {}/site.git", server.url)),
        "clone URL:\n{body}"
    );
    assert!(
        body.contains("add sources &amp; change readme"),
        "latest commit:\n{body}"
    );
    assert!(body.contains("Changed line."), "README shown:\n{body}");
    assert!(
        body.contains("href=\"/site/tree/main/src\""),
        "tree links:\n{body}"
    );

    let (status, body) = get("/site/tree/main/src/deep");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("href=\"/site/blob/main/src/deep/lib.rs\""),
        "{body}"
    );

    let (status, body) = get("/site/blob/main/src/deep/lib.rs");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("&quot;&lt;hello&gt;&quot;") && !body.contains("<hello>"),
        "escaped source:\n{body}"
    );

    let (status, body) = get("/site/log/main");
    assert_eq!(status, 200);
    assert_eq!(
        body.matches("<tr>").count(),
        50,
        "first page has 50 commits"
    );
    assert!(body.contains("add sources &amp; change readme"));
    assert!(body.contains("?page=2"), "link to the next page");
    let (_, body) = get("/site/log/main?page=2");
    assert_eq!(body.matches("<tr>").count(), 11, "second page has the rest");
    assert!(
        body.contains("initial commit") && body.contains("?page=1"),
        "{body}"
    );

    let (status, headers, body) =
        server.request_full("GET", &format!("/site/commit/{head}"), None, None, &[]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("src/deep/lib.rs</strong><span class=\"muted\">added"),
        "diff lists the new file:\n{body}"
    );
    assert!(
        body.contains("README.md</strong><span class=\"muted\">modified"),
        "{body}"
    );
    assert!(
        body.contains("-A test repository.") && body.contains("+Changed line."),
        "diff content:\n{body}"
    );
    let etag = headers
        .get("etag")
        .expect("commit page has an ETag")
        .to_str()
        .unwrap()
        .to_owned();
    let (status, _, _) = server.request_full(
        "GET",
        &format!("/site/commit/{head}"),
        None,
        None,
        &[("if-none-match", &etag)],
    );
    assert_eq!(status, 304, "revalidation with the ETag");

    let (status, body) = get("/site/refs");
    assert_eq!(status, 200);
    assert!(
        body.contains(">main<") && body.contains(">v2<"),
        "branches and tags:\n{body}"
    );

    for path in [
        "/site/blob/main/nope.txt",
        "/site/commit/0000000000000000000000000000000000000000",
        "/site/tree/nope",
    ] {
        let (status, _) = get(path);
        assert_eq!(status, 404, "{path}");
    }
    // An unknown repository looks like a private one to anonymous callers (nothing leaks).
    assert_eq!(get("/nope").0, 401, "/nope anonymous");
    assert_eq!(
        server.request("GET", "/nope", Some(OWNER), None, &[]).0,
        404,
        "/nope as owner"
    );
    let (status, _) = get("/secret");
    assert_eq!(status, 401, "private page asks for credentials");
    let (status, _) = server.request("GET", "/secret", Some(OWNER), None, &[]);
    assert_eq!(status, 200);
    let (status, _) = get("/site/log/main?page=abc");
    assert!(
        (400..500).contains(&status),
        "bad page number is a 4xx, got {status}"
    );
}
