//! `SshExec` against a real OpenSSH sshd on loopback.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_setup::events::{Events, VecSink};
use nimbus_setup::exec::{Command, Error, Exec, Stream};
use nimbus_setup::ssh::{HostKeyStore, MemoryHostKeyStore, SshExec, SshOptions, SshTarget};
use nimbus_testkit::sshd::Sshd;
use nimbus_types::Secret;
use nimbus_types::event as ev;

fn target(sshd: &Sshd) -> SshTarget {
    SshTarget {
        host_id: format!("{}:{}", sshd.address(), sshd.port()),
        address: sshd.address().to_owned(),
        port: sshd.port(),
        user: sshd.user().to_owned(),
        private_key: Secret::new(sshd.client_private_key()),
    }
}

fn exec_with(sshd: &Sshd, keys: Arc<dyn HostKeyStore>, sink: &Arc<VecSink>) -> SshExec {
    SshExec::new(
        target(sshd),
        keys,
        Events::new(sink.clone()),
        SshOptions::default(),
    )
}

async fn ok(exec: &SshExec, command: Command, sshd: &Sshd) -> String {
    match exec.run(&command).await {
        Ok(out) if out.success() => out.stdout_str(),
        other => panic!(
            "command {:?} failed: {other:?}\nsshd log:\n{}",
            command.script,
            sshd.log()
        ),
    }
}

#[tokio::test]
async fn runs_commands_over_one_reused_connection() {
    let sshd = Sshd::start().unwrap();
    let sink = VecSink::new();
    let exec = Arc::new(exec_with(&sshd, MemoryHostKeyStore::new(), &sink));

    let who = ok(&exec, Command::new("id -un"), &sshd).await;
    assert_eq!(who.trim(), sshd.user());

    // Hostile arguments and environment values arrive as data.
    let hostile = "$(touch pwned); `id` 'q' \"d\" ; echo x\nsecond line";
    let scratch = sshd.scratch_dir();
    let out = ok(
        &exec,
        Command::new(r#"cd "$2" && printf '%s|%s' "$1" "$NIMBUS_X""#)
            .arg(hostile)
            .arg(scratch.display().to_string())
            .env("NIMBUS_X", hostile),
        &sshd,
    )
    .await;
    assert_eq!(out, format!("{hostile}|{hostile}"));
    assert!(!scratch.join("pwned").exists(), "an argument was executed");

    // Many commands, some at once, still one connection.
    let mut tasks = Vec::new();
    for idx in 0..24 {
        let exec = exec.clone();
        tasks.push(tokio::spawn(async move {
            exec.run(&Command::new("echo $1").arg(idx.to_string()))
                .await
        }));
    }
    for (idx, task) in tasks.into_iter().enumerate() {
        let out = task.await.unwrap().unwrap();
        assert_eq!(out.stdout_str().trim(), idx.to_string());
    }
    assert_eq!(
        sink.named(ev::SSH_CONNECT_SUCCESS).len(),
        1,
        "events: {:?}",
        sink.names()
    );
    assert!(sink.named(ev::SSH_COMMAND_SUCCESS).len() >= 26);
}

#[tokio::test]
async fn exit_codes_stderr_stdin_and_streamed_lines() {
    let sshd = Sshd::start().unwrap();
    let sink = VecSink::new();
    let exec = exec_with(&sshd, MemoryHostKeyStore::new(), &sink);

    let out = exec
        .run(&Command::new("echo oops >&2; exit 3").label("fails"))
        .await
        .unwrap();
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.stderr_str(), "oops\n");
    let failure = sink.named(ev::SSH_COMMAND_FAILURE);
    assert_eq!(failure.len(), 1);
    assert_eq!(failure[0].metadata["command"], "fails");

    let out = exec
        .run(&Command::new("wc -c").stdin(vec![b'x'; 300_000]))
        .await
        .unwrap();
    assert_eq!(out.stdout_str().trim(), "300000");

    let lines = Mutex::new(Vec::new());
    let out = exec
        .run_streaming(
            &Command::new("echo one; echo two >&2; printf 'three'"),
            &|stream, line| lines.lock().unwrap().push((stream, line.to_owned())),
        )
        .await
        .unwrap();
    assert!(out.success());
    let mut got = lines.into_inner().unwrap();
    got.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        got,
        vec![
            (Stream::Stdout, "one".to_owned()),
            (Stream::Stdout, "three".to_owned()),
            (Stream::Stderr, "two".to_owned()),
        ]
    );
}

#[tokio::test]
async fn timeout_kills_the_remote_process_group() {
    let sshd = Sshd::start().unwrap();
    let sink = VecSink::new();
    let exec = exec_with(&sshd, MemoryHostKeyStore::new(), &sink);
    let pidfile = sshd.scratch_dir().join("bg.pid");
    let err = exec
        .run(
            &Command::new(r#"sleep 60 & echo $! > "$1"; sleep 60"#)
                .arg(pidfile.display().to_string())
                .timeout(Duration::from_millis(800)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut gone = false;
    for _ in 0..100 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        gone,
        "background process {pid} outlived the command's timeout\nsshd log:\n{}",
        sshd.log()
    );
    // The connection is still good.
    assert_eq!(ok(&exec, Command::new("echo fine"), &sshd).await, "fine\n");
}

#[tokio::test]
async fn upload_writes_files_with_their_mode() {
    let sshd = Sshd::start().unwrap();
    let exec = exec_with(&sshd, MemoryHostKeyStore::new(), &VecSink::new());
    let path = sshd.scratch_dir().join("dir with space/it's here");
    let contents: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    exec.upload(&path.display().to_string(), &contents, 0o640)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), contents);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );
}

#[tokio::test]
async fn host_key_is_pinned_and_a_changed_key_is_refused() {
    let mut sshd = Sshd::start().unwrap();
    let keys = MemoryHostKeyStore::new();
    let sink = VecSink::new();
    let exec = exec_with(&sshd, keys.clone(), &sink);
    exec.wait_ready(Duration::from_secs(10)).await.unwrap();
    let host_id = target(&sshd).host_id;
    assert_eq!(
        keys.get(&host_id).await.unwrap().as_deref(),
        Some(sshd.host_public_key()),
        "the key seen first is pinned"
    );

    sshd.rotate_host_key().unwrap();
    let exec = exec_with(&sshd, keys.clone(), &sink);
    let started = Instant::now();
    let err = exec.wait_ready(Duration::from_secs(60)).await.unwrap_err();
    assert!(matches!(err, Error::Denied(_)), "{err}");
    assert!(err.to_string().contains("host key"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a changed host key must fail fast, took {:?}",
        started.elapsed()
    );
    let mismatch = sink.named(ev::SSH_HOST_KEY_MISMATCH);
    assert_eq!(mismatch.len(), 1, "events: {:?}", sink.names());
    assert!(
        mismatch[0].metadata["presented"]
            .as_str()
            .unwrap()
            .starts_with("SHA256:")
    );
    // The pin is not silently replaced, and commands are refused too.
    assert_ne!(
        keys.get(&host_id).await.unwrap().as_deref(),
        Some(sshd.host_public_key())
    );
    let err = exec.run(&Command::new("true")).await.unwrap_err();
    assert!(matches!(err, Error::Denied(_)), "{err}");
}

#[tokio::test]
async fn wrong_key_fails_fast_without_retrying() {
    let sshd = Sshd::start().unwrap();
    let other = Sshd::start().unwrap();
    let sink = VecSink::new();
    let mut target = target(&sshd);
    target.private_key = Secret::new(other.client_private_key());
    let exec = SshExec::new(
        target,
        MemoryHostKeyStore::new(),
        Events::new(sink.clone()),
        SshOptions::default(),
    );
    let started = Instant::now();
    let err = exec.wait_ready(Duration::from_secs(60)).await.unwrap_err();
    assert!(matches!(err, Error::Denied(_)), "{err}");
    assert!(err.to_string().contains("refused the key"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let failures = sink.named(ev::SSH_CONNECT_FAILURE);
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].metadata["attempts"], 1);

    // Garbage instead of a key is refused before any connection, and never echoed.
    let mut target = self::target(&sshd);
    target.private_key = Secret::new("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-garbage\n");
    let exec = SshExec::new(
        target,
        MemoryHostKeyStore::new(),
        Events::none(),
        SshOptions::default(),
    );
    let err = exec.wait_ready(Duration::from_secs(60)).await.unwrap_err();
    assert!(matches!(err, Error::Denied(_)), "{err}");
    assert!(!err.to_string().contains("secret-garbage"), "{err}");
}

#[tokio::test]
async fn unreachable_host_times_out_with_a_clear_reason() {
    let port = nimbus_testkit::free_port();
    let sink = VecSink::new();
    let target = SshTarget {
        host_id: format!("127.0.0.1:{port}"),
        address: "127.0.0.1".into(),
        port,
        user: "nobody".into(),
        private_key: Secret::new(Sshd::start().unwrap().client_private_key()),
    };
    let exec = SshExec::new(
        target,
        MemoryHostKeyStore::new(),
        Events::new(sink.clone()),
        SshOptions::default(),
    );
    let started = Instant::now();
    let err = exec.wait_ready(Duration::from_secs(2)).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, Error::Unreachable(_)), "{err}");
    let message = err.to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("within"), "{message}");
    assert!(
        elapsed < Duration::from_secs(4),
        "bounded by the timeout, took {elapsed:?}"
    );
    let failure = &sink.named(ev::SSH_CONNECT_FAILURE)[0];
    assert!(
        failure.metadata["attempts"].as_u64().unwrap() >= 3,
        "{failure:?}"
    );
}

#[tokio::test]
async fn reconnects_after_the_daemon_restarts() {
    let mut sshd = Sshd::start().unwrap();
    let sink = VecSink::new();
    let exec = exec_with(&sshd, MemoryHostKeyStore::new(), &sink);
    assert_eq!(ok(&exec, Command::new("echo a"), &sshd).await, "a\n");

    sshd.stop();
    let err = exec.run(&Command::new("echo b")).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable(_)), "{err}");

    sshd.restart().unwrap();
    exec.wait_ready(Duration::from_secs(10)).await.unwrap();
    assert_eq!(ok(&exec, Command::new("echo c"), &sshd).await, "c\n");
    assert_eq!(
        sink.named(ev::SSH_CONNECT_SUCCESS).len(),
        2,
        "{:?}",
        sink.names()
    );
}

#[tokio::test]
async fn a_hung_host_fails_each_attempt_after_the_handshake_timeout() {
    let mut sshd = Sshd::start().unwrap();
    sshd.freeze();
    let sink = VecSink::new();
    let options = SshOptions {
        connect_timeout: Duration::from_millis(700),
        ..SshOptions::default()
    };
    let exec = SshExec::new(
        target(&sshd),
        MemoryHostKeyStore::new(),
        Events::new(sink.clone()),
        options,
    );
    let started = Instant::now();
    let err = exec.wait_ready(Duration::from_secs(3)).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable(_)), "{err}");
    assert!(err.to_string().contains("no SSH handshake within"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let failure = &sink.named(ev::SSH_CONNECT_FAILURE)[0];
    assert!(
        failure.metadata["attempts"].as_u64().unwrap() >= 2,
        "{failure:?}"
    );

    // The machine comes back: the next wait succeeds.
    sshd.thaw();
    exec.wait_ready(Duration::from_secs(10)).await.unwrap();
    assert_eq!(ok(&exec, Command::new("echo back"), &sshd).await, "back\n");
}

#[tokio::test]
async fn hosts_in_network_namespaces_are_reached_on_their_own_addresses() {
    let hosts = [
        Sshd::start_in_netns().unwrap(),
        Sshd::start_in_netns().unwrap(),
    ];
    let keys = MemoryHostKeyStore::new();
    for sshd in &hosts {
        let exec = exec_with(sshd, keys.clone(), &VecSink::new());
        let out = ok(&exec, Command::new("echo $SSH_CONNECTION"), sshd).await;
        assert!(out.contains(&format!("{} 22", sshd.address())), "{out}");
    }
    // Each host got its own pin.
    for sshd in &hosts {
        assert_eq!(
            keys.get(&target(sshd).host_id).await.unwrap().as_deref(),
            Some(sshd.host_public_key())
        );
    }
}

#[tokio::test]
async fn a_background_job_holding_the_pipes_does_not_block_completion() {
    let sshd = Sshd::start().unwrap();
    let exec = exec_with(&sshd, MemoryHostKeyStore::new(), &VecSink::new());
    let pidfile = sshd.scratch_dir().join("bg.pid");
    let started = Instant::now();
    let out = exec
        .run(
            &Command::new(r#"sleep 30 & echo $! > "$1"; echo started; echo bad >&2; exit 4"#)
                .arg(pidfile.display().to_string())
                .timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.exit_code, 4);
    assert_eq!(out.stdout_str(), "started\n");
    assert_eq!(out.stderr_str(), "bad\n");
    // The background job lives on (as it does on local machines) until the test ends it.
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert!(std::path::Path::new(&format!("/proc/{}", pid.trim())).exists());
    let _ = std::process::Command::new("kill").arg(pid.trim()).output();
    // The connection is still usable.
    assert_eq!(ok(&exec, Command::new("echo next"), &sshd).await, "next\n");
}
