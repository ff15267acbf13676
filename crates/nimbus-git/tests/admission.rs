//! Admission control over HTTP: with one pack slot and no queue, a second fetch while the first
//! is still sending its request gets 429 with Retry-After, and git-facing text.

mod common;

use std::time::Duration;

use common::{OWNER, Server, head_of};

#[test]
fn busy_server_answers_429_with_retry_after() {
    let server = Server::start_with(|s| {
        s.limits.max_pack_jobs = 1;
        s.limits.max_pack_jobs_per_repo = 1;
        s.limits.pack_queue = 0;
    });
    server.create_repo("busy", false);
    let work = server.work_tree("work", 1);
    server.git(
        &work,
        &["push", "-q", &server.repo_url("busy", Some(OWNER)), "main"],
    );
    let head = head_of(&server, &work, "HEAD");
    let url = format!("{}/busy.git/git-upload-pack", server.url);

    let (status, retry_after, body) = server.rt.block_on(async {
        // The first request sends half its body and then stalls, holding the only pack slot.
        // Under load the slot may still be held by the push's cleanup when it arrives, so it
        // gets a 429 and ends: then it is started again.
        let stall = || {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
            let want = format!("{:04x}want {head}\n", head.len() + 10);
            tx.try_send(Ok(want.into_bytes())).unwrap();
            let request = server
                .http
                .post(&url)
                .header("content-type", "application/x-git-upload-pack-request")
                .body(reqwest::Body::wrap_stream(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                ))
                .send();
            (tx, tokio::spawn(request))
        };
        let (mut tx, mut stalled) = stall();
        // Wait until the first request holds the slot.
        let mut answer = None;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if stalled.is_finished() {
                (tx, stalled) = stall();
                continue;
            }
            let response = server
                .http
                .post(&url)
                .header("content-type", "application/x-git-upload-pack-request")
                .body(format!(
                    "{:04x}want {head}\n00000009done\n",
                    head.len() + 10
                ))
                .send()
                .await
                .unwrap();
            if response.status() == 429 {
                let retry = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                answer = Some((429u16, retry, response.text().await.unwrap()));
                break;
            }
        }
        drop(tx);
        let _ = stalled.await;
        answer.expect("a second pack request while the slot is taken should get 429")
    });
    assert_eq!(status, 429);
    assert_eq!(retry_after.as_deref(), Some("5"), "Retry-After header");
    assert!(body.contains("busy"), "plain-text reason for git: {body:?}");

    // Once the slot is free, fetching works again.
    let dir = server.scratch("after");
    server.git(&dir, &["clone", "-q", &server.repo_url("busy", None), "c"]);
}
