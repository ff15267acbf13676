//! Smart HTTP edge cases through raw HTTP: malformed pkt-lines and truncated bodies are 4xx,
//! gzip request bodies are accepted, unknown services and the dumb protocol are refused.

mod common;

use std::io::Write as _;

use common::{OWNER, Server, head_of};

fn pkt(line: &str) -> String {
    format!("{:04x}{line}", line.len() + 4)
}

#[test]
fn malformed_requests_get_4xx_and_gzip_works() {
    let server = Server::start();
    server.create_repo("p", false);
    let work = server.work_tree("work", 2);
    server.git(
        &work,
        &["push", "-q", &server.repo_url("p", Some(OWNER)), "main"],
    );
    let head = head_of(&server, &work, "HEAD");

    let upload = |body: Vec<u8>, headers: &[(&str, &str)]| -> (u16, String) {
        let (status, _, text) =
            server.request_full("POST", "/p.git/git-upload-pack", None, Some(body), headers);
        (status, text)
    };
    let v2 = [
        ("git-protocol", "version=2"),
        ("content-type", "application/x-git-upload-pack-request"),
    ];
    let v0 = [("content-type", "application/x-git-upload-pack-request")];

    type Case<'a> = (&'a str, Vec<u8>, &'a [(&'a str, &'a str)]);
    let cases: Vec<Case> = vec![
        ("v0 garbage length", b"zzzzwant".to_vec(), &v0),
        ("v0 reserved length", b"0003".to_vec(), &v0),
        (
            "v0 truncated pkt-line",
            format!("{}00", pkt(&format!("want {head}\n"))).into_bytes(),
            &v0,
        ),
        ("v0 empty body", Vec::new(), &v0),
        (
            "v0 cut inside a line",
            pkt(&format!("want {head} side-band-64k\n")).as_bytes()[..20].to_vec(),
            &v0,
        ),
        ("v2 garbage", b"hello world".to_vec(), &v2),
        (
            "v2 truncated ls-refs",
            format!("{}0001{}", pkt("command=ls-refs\n"), &pkt("peel\n")[..5]).into_bytes(),
            &v2,
        ),
        (
            "v2 ls-refs without flush",
            format!("{}0001{}", pkt("command=ls-refs\n"), pkt("peel\n")).into_bytes(),
            &v2,
        ),
        (
            "v2 fetch truncated",
            format!(
                "{}0001{}",
                pkt("command=fetch\n"),
                &pkt(&format!("want {head}\n"))[..30]
            )
            .into_bytes(),
            &v2,
        ),
        ("v2 too long", b"ffff".to_vec(), &v2),
    ];
    for (what, body, headers) in cases {
        let (status, text) = upload(body, headers);
        assert!(
            (400..500).contains(&status),
            "{what}: expected 4xx, got {status}: {text}"
        );
    }
    // receive-pack with a broken command section (authenticated, so access is not the reason).
    let (status, _, text) = server.request_full(
        "POST",
        "/p.git/git-receive-pack",
        Some(OWNER),
        Some(b"00zzbroken".to_vec()),
        &[("content-type", "application/x-git-receive-pack-request")],
    );
    assert!(
        (400..500).contains(&status),
        "receive-pack garbage: {status} {text}"
    );

    // A valid v2 ls-refs, plain and gzip-compressed.
    let ls_refs = format!(
        "{}{}0001{}{}0000",
        pkt("command=ls-refs\n"),
        pkt("object-format=sha1\n"),
        pkt("peel\n"),
        pkt("ref-prefix refs/heads/\n")
    );
    let (status, text) = upload(ls_refs.clone().into_bytes(), &v2);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(&format!("{head} refs/heads/main")), "{text}");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(ls_refs.as_bytes()).unwrap();
    let mut headers = v2.to_vec();
    headers.push(("content-encoding", "gzip"));
    let (status, text) = upload(gz.finish().unwrap(), &headers);
    assert_eq!(status, 200, "gzip ls-refs: {text}");
    assert!(text.contains("refs/heads/main"), "{text}");

    // A gzip v0 fetch request goes through git upload-pack and returns a pack.
    let want = format!(
        "{}0000{}",
        pkt(&format!("want {head} ofs-delta\n")),
        pkt("done\n")
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(want.as_bytes()).unwrap();
    let (status, _, body) = server.request_full(
        "POST",
        "/p.git/git-upload-pack",
        None,
        Some(gz.finish().unwrap()),
        &[
            ("content-encoding", "gzip"),
            ("content-type", "application/x-git-upload-pack-request"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("NAK") && body.contains("PACK"),
        "pack returned: {:?}",
        &body[..body.len().min(60)]
    );

    // Unknown encodings, services and the dumb protocol.
    let (status, _) = upload(b"0000".to_vec(), &[("content-encoding", "br")]);
    assert_eq!(status, 415);
    let (status, _) = server.request(
        "GET",
        "/p.git/info/refs?service=git-frobnicate",
        None,
        None,
        &[],
    );
    assert_eq!(status, 400);
    let (status, _) = server.request("GET", "/p.git/info/refs", None, None, &[]);
    assert_eq!(status, 403);
    let (status, _) = server.request(
        "GET",
        "/nope.git/info/refs?service=git-upload-pack",
        Some(OWNER),
        None,
        &[],
    );
    assert_eq!(status, 404);

    // The v0 advertisement is served with the right content type and service header.
    let (status, headers, body) = server.request_full(
        "GET",
        "/p.git/info/refs?service=git-upload-pack",
        None,
        None,
        &[],
    );
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"],
        "application/x-git-upload-pack-advertisement"
    );
    assert!(
        body.starts_with("001e# service=git-upload-pack\n0000"),
        "{body}"
    );
    assert!(
        body.contains("symref=HEAD:refs/heads/main") && body.contains("filter"),
        "{body}"
    );
    assert!(
        headers.contains_key("x-request-id"),
        "every response carries a request id: {headers:?}"
    );
}
