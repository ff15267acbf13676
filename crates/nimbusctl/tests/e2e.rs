//! End to end: the real `nimbusd server` (SQLite, local provider) driven by the real `nimbusctl`,
//! each test in its own HOME on `127.0.0.1:0`. See `support/mod.rs` for the harness (how
//! `nimbusd` is found, what a failure prints, how leftovers are cleaned up).

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{SIGKILL, SIGTERM, World, alive, dead_url, http_get, machine_processes};

const READY: Duration = Duration::from_secs(30);

/// Row of a table whose first cell is `first`.
#[track_caller]
fn row<'a>(rows: &'a [Vec<String>], first: &str) -> &'a [String] {
    rows.iter()
        .find(|row| row.first().is_some_and(|cell| cell == first))
        .unwrap_or_else(|| panic!("no row starting with {first:?} in {rows:#?}"))
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {value:#}"))
}

/// Lines of stderr that are progress lines for `id` (`  0.3s  <id>  ready`), as states.
fn progress_states(stderr: &str, id: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|line| line.contains(id) && !line.starts_with("nimbusctl:"))
        .filter_map(|line| line.split_whitespace().last().map(str::to_owned))
        .collect()
}

#[test]
fn readme_walkthrough() {
    let w = World::start();

    let rows = w.ctl(&["tenant", "create", "acme"]).ok().table();
    assert_eq!(rows[0], ["NAME", "ID", "CREATED"]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    let tenant_id = row(&rows, "acme")[1].clone();

    let rows = w
        .ctl(&[
            "provider", "add", "--tenant", "acme", "--type", "local", "--name", "local",
        ])
        .ok()
        .table();
    assert_eq!(rows[0], ["NAME", "TYPE", "ID", "TENANT", "CREDENTIALS"]);
    let provider = row(&rows, "local");
    assert_eq!(provider[1], "local");
    assert_eq!(provider[3], tenant_id);
    assert_eq!(provider[4], "none");

    let run = w
        .ctl(&[
            "machine",
            "provision",
            "--tenant",
            "acme",
            "--provider",
            "local",
            "--label",
            "gpu",
            "--wait",
        ])
        .ok();
    let rows = run.table();
    assert_eq!(
        rows[0],
        ["ID", "STATE", "PLATFORM", "LABELS", "IP", "CREATED"]
    );
    assert_eq!(rows.len(), 2, "one machine: {rows:?}");
    let id = rows[1][0].clone();
    assert_eq!(rows[1][1], "ready");
    assert_eq!(rows[1][2], format!("linux/{}", std::env::consts::ARCH));
    assert_eq!(rows[1][3], "gpu");
    assert_eq!(rows[1][4], "127.0.0.1");
    // --wait shows its progress on stderr, stdout stays the result.
    let states = progress_states(&run.stderr, &id);
    assert_eq!(
        states.first().map(String::as_str),
        Some("provisioning"),
        "{}",
        run.stderr
    );
    assert_eq!(
        states.last().map(String::as_str),
        Some("ready"),
        "{}",
        run.stderr
    );

    let rows = w.ctl(&["machine", "list"]).ok().table();
    assert_eq!(
        rows[0],
        ["ID", "STATE", "PLATFORM", "LABELS", "IP", "CREATED"]
    );
    let listed = row(&rows, &id);
    assert_eq!(listed[1], "ready");
    assert_eq!(listed[3], "gpu");

    let show = w.ctl(&["machine", "show", &id]).ok();
    let rows = show.table();
    assert_eq!(rows[0], ["FIELD", "VALUE"]);
    assert_eq!(row(&rows, "id")[1], id);
    assert_eq!(row(&rows, "state")[1], "ready");
    assert_eq!(row(&rows, "tenant")[1], tenant_id);
    assert_eq!(row(&rows, "labels")[1], "gpu");
    assert!(
        show.stdout.contains("\nHISTORY\n"),
        "show has a history section:\n{}",
        show.stdout
    );
    let history: Vec<&str> = show
        .stdout
        .split("\nHISTORY\n")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect();
    assert_eq!(history, ["provisioning", "ready"], "{}", show.stdout);

    // The machine exists on this host: its directory and its processes.
    let dir = w.machine_dir(&id);
    assert!(
        dir.is_dir(),
        "{} exists while the machine is ready",
        dir.display()
    );
    assert!(
        !machine_processes(&id).is_empty(),
        "the machine's leader process runs"
    );

    let run = w.ctl(&["machine", "can-terminate", &id]).ok();
    assert_eq!(run.stdout.trim(), "yes");

    let run = w.ctl(&["machine", "terminate", &id, "--wait"]).ok();
    let rows = run.table();
    assert_eq!(row(&rows, &id)[1], "terminated");
    let states = progress_states(&run.stderr, &id);
    assert_eq!(
        states.last().map(String::as_str),
        Some("terminated"),
        "{}",
        run.stderr
    );

    // Nothing of the machine is left on the host.
    let left = machine_processes(&id);
    assert!(
        left.is_empty(),
        "processes of machine {id} outlived it: {left:?}"
    );
    assert!(!dir.exists(), "{} was removed", dir.display());

    // Terminated machines leave the default list but stay visible with --all.
    let run = w.ctl(&["machine", "list"]).ok();
    assert!(
        !run.stdout.contains(&id),
        "terminated machine still listed:\n{}",
        run.stdout
    );
    let rows = w.ctl(&["machine", "list", "--all"]).ok().table();
    assert_eq!(row(&rows, &id)[1], "terminated");
    let run = w.ctl(&["machine", "can-terminate", &id]).ok();
    assert!(run.stdout.starts_with("no: "), "{}", run.stdout);
    assert!(run.stdout.contains("already terminated"), "{}", run.stdout);
}

#[test]
fn json_output_parses_for_every_command() {
    let w = World::start();

    let tenants = w.ctl(&["--json", "tenant", "create", "acme"]).ok().json();
    let tenant = &tenants[0];
    assert_eq!(str_of(tenant, "name"), "acme");
    let tenant_id = str_of(tenant, "id").to_owned();
    str_of(tenant, "created_at");

    let tenants = w.ctl(&["--json", "tenant", "list"]).ok().json();
    assert_eq!(tenants.as_array().map(Vec::len), Some(1), "{tenants:#}");
    let shown = w.ctl(&["--json", "tenant", "show", "acme"]).ok().json();
    assert_eq!(str_of(&shown[0], "id"), tenant_id);

    let token = w.ctl(&["--json", "tenant", "token", "acme"]).ok();
    assert!(
        token.stderr.trim().is_empty(),
        "--json prints nothing else: {}",
        token.stderr
    );
    let token = token.json();
    assert_eq!(str_of(&token, "tenant_id"), tenant_id);
    assert!(
        str_of(&token, "token").starts_with("nimbus_t_"),
        "{token:#}"
    );

    let providers = w
        .ctl(&[
            "--json", "provider", "add", "--tenant", "acme", "--type", "local", "--name", "local",
        ])
        .ok()
        .json();
    let provider = &providers[0];
    assert_eq!(str_of(provider, "name"), "local");
    assert_eq!(str_of(provider, "type"), "local");
    assert_eq!(str_of(provider, "tenant_id"), tenant_id);
    assert_eq!(provider["has_credentials"], false);
    for args in [
        &["--json", "provider", "list"][..],
        &["--json", "provider", "list", "--tenant", "acme"],
        &["--json", "provider", "show", "--tenant", "acme", "local"],
    ] {
        let list = w.ctl(args).ok().json();
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{args:?}: {list:#}");
        assert_eq!(list[0]["id"], provider["id"]);
    }

    // Without --wait the answer is the intent: `provisioning`.
    let started = w
        .ctl(&[
            "--json",
            "machine",
            "provision",
            "--tenant",
            "acme",
            "--provider",
            "local",
            "--label",
            "a",
            "--label",
            "b",
        ])
        .ok()
        .json();
    let first = str_of(&started[0], "id").to_owned();
    assert_eq!(str_of(&started[0], "state"), "provisioning");
    assert_eq!(started[0]["labels"], serde_json::json!(["a", "b"]));

    // With --wait and --json, stdout is exactly one JSON document: the final machine.
    let run = w
        .ctl(&[
            "--json",
            "machine",
            "provision",
            "--tenant",
            "acme",
            "--provider",
            "local",
            "--wait",
        ])
        .ok();
    assert!(
        run.stderr.trim().is_empty(),
        "--json --wait prints no progress: {}",
        run.stderr
    );
    let second = run.json();
    let second_id = str_of(&second[0], "id").to_owned();
    assert_eq!(str_of(&second[0], "state"), "ready");
    assert_eq!(str_of(&second[0], "tenant_id"), tenant_id);
    assert_eq!(second[0]["provider_id"], provider["id"]);
    assert_eq!(str_of(&second[0]["image"], "state"), "installed");
    assert_eq!(
        str_of(&second[0]["provider_metadata"], "instance_id"),
        second_id
    );

    w.wait_for("the first machine to be ready", READY, || {
        let state = w.machine_state(&first);
        if state == "ready" { Ok(()) } else { Err(state) }
    });
    for args in [
        &["--json", "machine", "list"][..],
        &[
            "--json",
            "machine",
            "list",
            "--tenant",
            "acme",
            "--provider",
            "local",
        ],
        &["--json", "machine", "list", "--state", "ready"],
    ] {
        let list = w.ctl(args).ok().json();
        let ids: BTreeSet<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|m| str_of(m, "id"))
            .collect();
        assert_eq!(
            ids,
            BTreeSet::from([first.as_str(), second_id.as_str()]),
            "{args:?}"
        );
    }

    let detail = w
        .ctl(&["--json", "machine", "show", &second_id])
        .ok()
        .json();
    assert_eq!(str_of(&detail["machine"], "id"), second_id);
    let history: Vec<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| str_of(c, "state"))
        .collect();
    assert_eq!(history, ["provisioning", "ready"]);

    let answer = w
        .ctl(&["--json", "machine", "can-terminate", &second_id])
        .ok()
        .json();
    assert_eq!(answer["can_terminate"], true, "{answer:#}");

    let stopped = w
        .ctl(&["--json", "machine", "terminate", &second_id, "--wait"])
        .ok()
        .json();
    assert_eq!(str_of(&stopped[0], "state"), "terminated");
    let stopping = w
        .ctl(&["--json", "machine", "terminate", &first])
        .ok()
        .json();
    assert!(
        ["stopping", "terminated"].contains(&str_of(&stopping[0], "state")),
        "{stopping:#}"
    );
    w.wait_for("the first machine to be terminated", READY, || {
        let state = w.machine_state(&first);
        if state == "terminated" {
            Ok(())
        } else {
            Err(state)
        }
    });
    let answer = w
        .ctl(&["--json", "machine", "can-terminate", &first])
        .ok()
        .json();
    assert_eq!(answer["can_terminate"], false, "{answer:#}");
    assert_eq!(answer["error"], "already_terminated", "{answer:#}");

    let all = w.ctl(&["--json", "machine", "list", "--all"]).ok().json();
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all:#}");
    assert!(
        w.ctl(&["--json", "machine", "list"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Errors stay one line on stderr in JSON mode too.
    w.ctl(&[
        "--json",
        "machine",
        "show",
        "01a200a5-0000-7000-8000-000000000000",
    ])
    .fails_with("machine not found");
}

#[test]
fn errors_are_one_line_on_stderr_with_a_nonzero_exit() {
    let w = World::start();
    w.tenant_with_local_provider("acme", "local");
    let unknown = "01a200a5-0000-7000-8000-000000000000";

    w.ctl(&["machine", "show", unknown])
        .fails_with("machine not found (HTTP 404)");
    w.ctl(&["machine", "show", "no-such-machine"])
        .fails_with("not found (HTTP 404)");
    w.ctl(&["machine", "terminate", unknown])
        .fails_with("machine not found");
    w.ctl(&["machine", "terminate", unknown, "--wait"])
        .fails_with("machine not found");
    w.ctl(&["machine", "can-terminate", unknown])
        .fails_with("machine not found");
    w.ctl(&["tenant", "show", "nobody"])
        .fails_with("tenant not found");
    w.ctl(&[
        "provider", "add", "--tenant", "nobody", "--type", "local", "--name", "x",
    ])
    .fails_with("tenant not found");
    w.ctl(&[
        "machine",
        "provision",
        "--tenant",
        "acme",
        "--provider",
        "nope",
    ])
    .fails_with("provider not found");

    // Wrong, missing and foreign tokens.
    w.ctl_env(&["machine", "list"], &[("NIMBUS_TOKEN", "nimbus_t_wrong")])
        .fails_with("invalid token (pass --token or set NIMBUS_TOKEN) (HTTP 401)");
    w.ctl(&["--token", "wrong", "tenant", "list"])
        .fails_with("HTTP 401");
    let nowhere = w.root.path().join("no-config");
    w.ctl_env(
        &["machine", "list"],
        &[("XDG_CONFIG_HOME", nowhere.to_str().unwrap())],
    )
    .fails_with("missing bearer token");

    // Nobody listening, or not a URL.
    let dead = dead_url();
    let line = w
        .ctl(&["--url", &dead, "machine", "list"])
        .fails_with("cannot reach nimbusd");
    assert!(line.contains(&dead), "names the URL: {line}");
    w.ctl_env(&["tenant", "list"], &[("NIMBUS_URL", &dead)])
        .fails_with("cannot reach nimbusd");
    w.ctl(&["--url", "ftp://example", "tenant", "list"])
        .fails_with("--url must start with http://");

    // Conflicts and invalid input name what is wrong.
    w.ctl(&["tenant", "create", "acme"])
        .fails_with("already exists (HTTP 409)");
    w.ctl(&["tenant", "create", "Not A Name!"])
        .fails_with("name: ");
    w.ctl(&[
        "provider", "add", "--tenant", "acme", "--type", "local", "--name", "local",
    ])
    .fails_with("HTTP 409");
    w.ctl(&[
        "machine",
        "provision",
        "--tenant",
        "acme",
        "--provider",
        "local",
        "--label",
        "bad label!",
    ])
    .fails_with("labels[0]");
    let missing = w.root.path().join("missing.sh");
    w.ctl(&[
        "machine",
        "provision",
        "--tenant",
        "acme",
        "--provider",
        "local",
        "--setup-script",
        missing.to_str().unwrap(),
    ])
    .fails_with("cannot read");
    // A setup script over 64 KiB names the field; a body over the server's limit is a 413.
    let big = w.write_file("big.sh", &"#".repeat(70 * 1024));
    w.ctl(&[
        "machine",
        "provision",
        "--tenant",
        "acme",
        "--provider",
        "local",
        "--setup-script",
        big.to_str().unwrap(),
    ])
    .fails_with("setup_script: must be at most 65536 bytes (HTTP 422)");
    let huge = w.write_file("huge.sh", &"#".repeat(300 * 1024));
    w.ctl(&[
        "machine",
        "provision",
        "--tenant",
        "acme",
        "--provider",
        "local",
        "--setup-script",
        huge.to_str().unwrap(),
    ])
    .fails_with("HTTP 413");
    let config = w.write_file("bad-local.toml", "max_machines = 0\n");
    w.ctl(&[
        "provider",
        "add",
        "--tenant",
        "acme",
        "--type",
        "local",
        "--name",
        "other",
        "--config",
        config.to_str().unwrap(),
    ])
    .fails_with("max_machines");

    // Nothing was provisioned by any of this.
    let all = w.ctl(&["--json", "machine", "list", "--all"]).ok().json();
    assert!(all.as_array().unwrap().is_empty(), "{all:#}");
}

#[test]
fn a_tenant_token_sees_only_its_tenant() {
    let w = World::start();
    w.tenant_with_local_provider("alpha", "local");
    w.tenant_with_local_provider("beta", "local");

    let run = w.ctl(&["tenant", "token", "alpha"]).ok();
    let token = run.stdout.trim().to_owned();
    assert_eq!(
        run.stdout.lines().count(),
        1,
        "the token alone on stdout: {:?}",
        run.stdout
    );
    assert!(token.starts_with("nimbus_t_"), "{token}");
    assert!(run.stderr.contains("shown once"), "{}", run.stderr);
    let alpha = [("NIMBUS_TOKEN", token.as_str())];

    // The tenant follows its own events while the admin provisions for both tenants.
    let events = w.ctl_background(&["--token", &token, "--json", "events"]);
    wait_for_event_stream(&w, 1);

    let beta_machine = provision_ready(&w, &["--tenant", "beta", "--provider", "local"], &[]);
    // The tenant token needs no --tenant: it acts for its own tenant.
    let alpha_machine = provision_ready(&w, &["--provider", "local"], &alpha);

    for args in [
        &["machine", "show", beta_machine.as_str()][..],
        &["machine", "can-terminate", &beta_machine],
        &["machine", "terminate", &beta_machine],
        &["tenant", "show", "beta"],
        &["provider", "list", "--tenant", "beta"],
        &["provider", "show", "--tenant", "beta", "local"],
        &["machine", "list", "--tenant", "beta"],
        &[
            "machine",
            "provision",
            "--tenant",
            "beta",
            "--provider",
            "local",
        ],
    ] {
        w.ctl_env(args, &alpha).fails_with("not found (HTTP 404)");
    }
    // Admin-only operations are refused, not hidden.
    w.ctl_env(&["tenant", "create", "gamma"], &alpha)
        .fails_with("HTTP 403");
    w.ctl_env(&["tenant", "token", "alpha"], &alpha)
        .fails_with("HTTP 403");

    let machines = w
        .ctl_env(&["--json", "machine", "list", "--all"], &alpha)
        .ok()
        .json();
    let ids: Vec<&str> = machines
        .as_array()
        .unwrap()
        .iter()
        .map(|m| str_of(m, "id"))
        .collect();
    assert_eq!(ids, [alpha_machine.as_str()]);
    let tenants = w.ctl_env(&["--json", "tenant", "list"], &alpha).ok().json();
    let names: Vec<&str> = tenants
        .as_array()
        .unwrap()
        .iter()
        .map(|t| str_of(t, "name"))
        .collect();
    assert_eq!(names, ["alpha"]);
    let providers = w
        .ctl_env(&["--json", "provider", "list"], &alpha)
        .ok()
        .json();
    assert_eq!(providers.as_array().map(Vec::len), Some(1), "{providers:#}");

    // The stream carried alpha's machine and nothing of beta's.
    let (pid, lines) = events;
    let seen = collect_events_until(&lines, READY, |event| {
        event["machine_id"] == alpha_machine.as_str() && event["name"] == "nimbus.machine.ready"
    });
    w.kill_background(pid);
    let beta_tenant = w.ctl(&["--json", "tenant", "show", "beta"]).ok().json()[0]["id"].clone();
    for event in &seen {
        assert_ne!(
            event["machine_id"],
            beta_machine.as_str(),
            "beta's event leaked: {event:#}"
        );
        assert_ne!(
            event["tenant_id"], beta_tenant,
            "beta's event leaked: {event:#}"
        );
    }

    // Beta's machine was not touched by alpha's attempts.
    assert_eq!(w.machine_state(&beta_machine), "ready");
    for id in [&alpha_machine, &beta_machine] {
        w.ctl(&["machine", "terminate", id, "--wait"]).ok();
        assert!(machine_processes(id).is_empty());
    }
}

/// Provisions with `--wait` and `--json`; returns the id of the ready machine.
#[track_caller]
fn provision_ready(w: &World, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut full = vec!["--json", "machine", "provision", "--wait"];
    full.extend_from_slice(args);
    let machines = w.ctl_env(&full, env).ok().json();
    assert_eq!(str_of(&machines[0], "state"), "ready", "{machines:#}");
    str_of(&machines[0], "id").to_owned()
}

/// Waits until `n` event streams are open: the server counts a `/v1/events` request once its
/// response (the stream) has started, which is after it subscribed to live events.
fn wait_for_event_stream(w: &World, n: u64) {
    w.wait_for(
        "the event stream to be connected",
        Duration::from_secs(20),
        || {
            let (_, metrics) = http_get(&w.url(), "/metrics", None);
            let open: u64 = metrics
                .lines()
                .filter(|line| {
                    line.starts_with("nimbus_http_requests_total{")
                        && line.contains("route=\"/v1/events\"")
                        && line.contains("status=\"200\"")
                })
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .map(|v| v as u64)
                .sum();
            if open >= n {
                Ok(())
            } else {
                Err(format!("{open} streams"))
            }
        },
    );
}

/// Reads JSON event lines until `last(event)` holds; returns every event seen.
#[track_caller]
fn collect_events_until(
    lines: &std::sync::mpsc::Receiver<String>,
    timeout: Duration,
    mut last: impl FnMut(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let event: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|err| panic!("event line is not JSON ({err}): {line}"));
                let done = last(&event);
                seen.push(event);
                if done {
                    return seen;
                }
            }
            Err(err) => panic!(
                "event stream: {err} before the expected event; saw:\n{}",
                seen.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
}

#[test]
fn events_stream_follows_a_machine_from_request_to_ready_and_gone() {
    let w = World::start();
    w.tenant_with_local_provider("acme", "local");
    let (pid, lines) = w.ctl_background(&["--json", "events"]);
    wait_for_event_stream(&w, 1);

    let id = provision_ready(&w, &["--tenant", "acme", "--provider", "local"], &[]);
    let seen = collect_events_until(&lines, READY, |event| {
        event["machine_id"] == id.as_str() && event["name"] == "nimbus.machine.ready"
    });
    let names: Vec<&str> = seen
        .iter()
        .filter(|event| event["machine_id"] == id.as_str())
        .map(|event| str_of(event, "name"))
        .collect();
    assert_eq!(
        names.first(),
        Some(&"nimbus.machine.provision_start"),
        "{names:?}"
    );
    let position = |name: &str| names.iter().position(|n| *n == name);
    let order = [
        "nimbus.machine.provision_start",
        "nimbus.cloud_provider.api_call_start",
        "nimbus.cloud_provider.api_call_success",
        "nimbus.machine.provision_success",
        "nimbus.machine.ready",
    ];
    let positions: Vec<Option<usize>> = order.iter().map(|name| position(name)).collect();
    assert!(
        positions.iter().all(Option::is_some),
        "every step is reported: {names:?}"
    );
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in order {order:?}: {names:?}"
    );
    for event in &seen {
        assert!(
            event["seq"].as_i64().is_some_and(|seq| seq > 0),
            "{event:#}"
        );
        str_of(event, "at");
        str_of(event, "tenant_id");
    }
    let ready = seen.last().unwrap();
    assert!(
        ready["duration"].as_f64().is_some_and(|d| d >= 0.0),
        "ready carries the time to ready: {ready:#}"
    );

    // The stream keeps going: termination shows up live.
    w.ctl(&["machine", "terminate", &id]).ok();
    let seen = collect_events_until(&lines, READY, |event| {
        event["machine_id"] == id.as_str() && event["name"] == "nimbus.machine.terminate_success"
    });
    assert!(
        seen.iter()
            .any(|e| e["name"] == "nimbus.machine.terminate_start"),
        "{seen:#?}"
    );
    // `events` runs until killed.
    assert!(alive(pid), "nimbusctl events is still following");
    let status = w.kill_background(pid).expect("events process");
    assert_eq!(status.signal(), Some(SIGKILL));
}

#[test]
fn a_failing_setup_script_fails_the_wait_and_leaves_nothing_running() {
    let w = World::start();
    w.tenant_with_local_provider("acme", "local");
    // Starts a service in its own session first: it must die with the machine too.
    let script = w.write_file(
        "setup.sh",
        "#!/bin/sh\necho preparing\nsetsid sleep 300 >/dev/null 2>&1 </dev/null &\necho 'disk full' >&2\nexit 3\n",
    );
    let run = w.ctl(&[
        "machine",
        "provision",
        "--tenant",
        "acme",
        "--provider",
        "local",
        "--wait",
        "--setup-script",
        script.to_str().unwrap(),
    ]);
    assert!(
        !run.status.success(),
        "--wait on a failed setup exits non-zero:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    let rows = run.table();
    assert_eq!(rows.len(), 2, "the final machine is printed: {rows:?}");
    let id = rows[1][0].clone();
    assert_eq!(rows[1][1], "failed");
    let error_line = run.stderr.lines().last().unwrap_or_default();
    assert!(
        error_line.starts_with(&format!("nimbusctl: machine {id} failed: ")),
        "{}",
        run.stderr
    );
    assert!(
        error_line.contains("setup step setup_script failed: exit code 3"),
        "names the failure: {error_line}"
    );
    assert!(
        error_line.contains("disk full"),
        "quotes the script's stderr: {error_line}"
    );
    let states = progress_states(&run.stderr, &id);
    assert_eq!(
        states.first().map(String::as_str),
        Some("provisioning"),
        "{}",
        run.stderr
    );
    assert_eq!(
        states.last().map(String::as_str),
        Some("failed"),
        "{}",
        run.stderr
    );

    // The failure is recorded, and cleanup happened before `failed` was reported.
    let machine = w.machine(&id);
    assert_eq!(str_of(&machine, "state"), "failed");
    assert!(
        str_of(&machine, "error").contains("exit code 3"),
        "{machine:#}"
    );
    let left = machine_processes(&id);
    assert!(
        left.is_empty(),
        "a failed machine left processes running: {left:?}"
    );
    assert!(
        !w.machine_dir(&id).exists(),
        "the failed machine's directory was removed"
    );

    let show = w.ctl(&["machine", "show", &id]).ok();
    assert!(show.stdout.contains("exit code 3"), "{}", show.stdout);
    w.ctl(&["machine", "can-terminate", &id]).ok();
}

#[test]
fn a_provision_the_provider_refuses_fails_with_the_reason() {
    let w = World::start();
    w.tenant_with_local_provider("acme", "local");
    let (os, arch) = match std::env::consts::ARCH {
        "x86_64" => ("macos", "arm64"),
        _ => ("linux", "x86_64"),
    };
    let run = w.ctl(&[
        "machine",
        "provision",
        "--tenant",
        "acme",
        "--provider",
        "local",
        "--os",
        os,
        "--arch",
        arch,
        "--wait",
    ]);
    assert!(!run.status.success(), "{}", run.stderr);
    let error_line = run.stderr.lines().last().unwrap_or_default();
    assert!(
        error_line.starts_with("nimbusctl: machine "),
        "{}",
        run.stderr
    );
    assert!(
        error_line.contains(&format!(
            "provider refused the machine: the local provider only has linux/{}",
            std::env::consts::ARCH
        )),
        "names the refusal: {error_line}"
    );
    let id = run.table()[1][0].clone();
    let machine = w.machine(&id);
    assert_eq!(str_of(&machine, "state"), "failed");
    assert!(machine_processes(&id).is_empty());
    assert!(!w.machine_dir(&id).exists());
}

#[test]
fn sigterm_lets_a_running_setup_finish_and_exits_zero() {
    let mut w = World::start();
    w.tenant_with_local_provider("acme", "local");
    let script = w.write_file(
        "setup.sh",
        "#!/bin/sh\nsleep 2\necho configured > configured.txt\n",
    );
    let started = w
        .ctl(&[
            "--json",
            "machine",
            "provision",
            "--tenant",
            "acme",
            "--provider",
            "local",
            "--setup-script",
            script.to_str().unwrap(),
        ])
        .ok()
        .json();
    let id = str_of(&started[0], "id").to_owned();
    w.wait_for("the setup script to run", READY, || {
        let procs = machine_processes(&id);
        if procs.iter().any(|(_, cmd)| cmd == "sleep 2") {
            Ok(())
        } else {
            Err(format!("{procs:?}"))
        }
    });

    let status = w.stop_daemon(SIGTERM, Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(0),
        "nimbusd exits 0 after SIGTERM: {status}"
    );
    let left = machine_processes(&id);
    assert!(
        !left.iter().any(|(_, cmd)| cmd.contains("sleep 2")),
        "the setup finished before nimbusd exited: {left:?}"
    );
    assert!(
        w.machine_dir(&id).join("work/configured.txt").is_file(),
        "the setup ran to its end"
    );

    w.start_daemon(&[]);
    let machine = w.machine(&id);
    assert_eq!(str_of(&machine, "state"), "ready", "{machine:#}");
    let detail = w.ctl(&["--json", "machine", "show", &id]).ok().json();
    let history: Vec<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| str_of(c, "state"))
        .collect();
    assert_eq!(history, ["provisioning", "image_installing", "ready"]);

    w.ctl(&["machine", "terminate", &id, "--wait"]).ok();
    assert!(machine_processes(&id).is_empty());
}

#[test]
fn sigkill_during_setup_then_the_reconciler_converges() {
    let mut w = World::start();
    w.tenant_with_local_provider("acme", "local");
    // Long only the first time: the resumed attempt finds its marker and finishes at once.
    let script = w.write_file(
        "setup.sh",
        "#!/bin/sh\nif [ -f attempted ]; then echo resumed; exit 0; fi\ntouch attempted\necho started\nsleep 600\n",
    );
    let started = w
        .ctl(&[
            "--json",
            "machine",
            "provision",
            "--tenant",
            "acme",
            "--provider",
            "local",
            "--setup-script",
            script.to_str().unwrap(),
        ])
        .ok()
        .json();
    let id = str_of(&started[0], "id").to_owned();
    w.wait_for("the setup script to run", READY, || {
        let procs = machine_processes(&id);
        if procs.iter().any(|(_, cmd)| cmd == "sleep 600") {
            Ok(())
        } else {
            Err(format!("{procs:?}"))
        }
    });

    let status = w.stop_daemon(SIGKILL, Duration::from_secs(10));
    assert_eq!(status.signal(), Some(SIGKILL));
    // The setup of the killed daemon lives on, orphaned: the restarted daemon must deal with it.
    let interrupted: Vec<(u32, String)> = machine_processes(&id)
        .into_iter()
        .filter(|(_, cmd)| cmd != "sleep infinity")
        .collect();
    assert!(
        interrupted.iter().any(|(_, cmd)| cmd == "sleep 600"),
        "the interrupted setup still runs after SIGKILL: {interrupted:?}"
    );

    w.start_daemon(&["--reconcile-interval", "1s"]);
    // The reconciler resumes the setup: it first stops what the interrupted attempt left
    // running, then re-runs the interrupted step, so within a bounded wait the orphans are gone
    // and the machine is final (`ready` here, or `failed` with a reason).
    let bound = Duration::from_secs(30);
    let deadline = Instant::now() + bound;
    let (state, orphans) = loop {
        let machine = w.machine(&id);
        let state = str_of(&machine, "state").to_owned();
        let orphans: Vec<&(u32, String)> =
            interrupted.iter().filter(|(pid, _)| alive(*pid)).collect();
        if ["ready", "failed"].contains(&state.as_str()) && orphans.is_empty() {
            break (state, orphans.len());
        }
        if Instant::now() >= deadline {
            let all = machine_processes(&id);
            panic!(
                "{bound:?} after restarting nimbusd the machine is `{state}` (error: {}) and \
                 processes of the interrupted setup still run: {orphans:?}; every process of \
                 the machine: {all:?}",
                machine["error"]
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(orphans, 0);
    let machine = w.machine(&id);
    eprintln!(
        "after the crash the reconciler left the machine {state}: {}",
        machine["error"]
    );
    match state.as_str() {
        "failed" => {
            assert!(
                !str_of(&machine, "error").is_empty(),
                "a failed machine says why: {machine:#}"
            );
            w.wait_for("nothing of the failed machine to be left", READY, || {
                let left = machine_processes(&id);
                if left.is_empty() && !w.machine_dir(&id).exists() {
                    Ok(())
                } else {
                    Err(format!("{left:?}"))
                }
            });
        }
        "ready" => {
            w.ctl(&["machine", "terminate", &id, "--wait"]).ok();
            assert!(machine_processes(&id).is_empty());
        }
        other => unreachable!("{other}"),
    }
}

#[test]
fn first_start_on_a_fresh_home_creates_the_admin_token_and_the_database() {
    let mut w = World::empty();
    assert!(!w.config_home.exists() && !w.data_home.exists());
    w.start_daemon(&[]);

    let token_path = w.admin_token_path();
    let meta = std::fs::metadata(&token_path)
        .unwrap_or_else(|err| panic!("{}: {err}", token_path.display()));
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{} is private",
        token_path.display()
    );
    let token = std::fs::read_to_string(&token_path).unwrap();
    assert_eq!(token.lines().count(), 1, "one line: {token:?}");
    assert!(token.trim().len() >= 32, "a long random token");
    let db = w.data_home.join("nimbus/nimbus.db");
    assert!(db.is_file(), "{} exists", db.display());

    let stdout = w.daemon().stdout();
    assert_eq!(
        stdout.trim(),
        format!("nimbusd listening on {}", w.url()),
        "stdout is the address line only"
    );
    assert_eq!(
        http_get(&w.url(), "/healthz", None),
        (200, "ok\n".to_owned())
    );
    assert_eq!(http_get(&w.url(), "/readyz", None).0, 200);
    assert_eq!(http_get(&w.url(), "/v1/tenants", None).0, 401);
    assert_eq!(http_get(&w.url(), "/v1/tenants", Some(token.trim())).0, 200);
    let (status, openapi) = http_get(&w.url(), "/v1/openapi.json", None);
    assert_eq!(status, 200);
    let openapi: Value = serde_json::from_str(&openapi).expect("openapi.json is JSON");
    assert!(
        openapi["paths"]["/v1/machines"].is_object(),
        "documents /v1/machines"
    );

    // The CLI on the same host finds the token by itself; the data survives a restart and the
    // token is kept, not regenerated.
    w.ctl(&["tenant", "create", "acme"]).ok();
    let status = w.stop_daemon(SIGTERM, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{status}");
    w.start_daemon(&[]);
    assert_eq!(
        std::fs::read_to_string(&token_path).unwrap(),
        token,
        "the admin token is kept"
    );
    let tenants = w.ctl(&["--json", "tenant", "list"]).ok().json();
    assert_eq!(tenants[0]["name"], "acme");
}

#[test]
fn completions_bash_prints_a_script() {
    let w = World::empty();
    let run = w.ctl(&["completions", "bash"]).ok();
    assert!(
        run.stdout.contains("_nimbusctl()"),
        "defines the completion function"
    );
    assert!(
        run.stdout.contains("complete -F _nimbusctl"),
        "registers it"
    );
    for word in ["provision", "can-terminate", "--json", "--url"] {
        assert!(run.stdout.contains(word), "completes {word}");
    }
    let script = w.write_file("nimbusctl.bash", &run.stdout);
    let bash = nimbus_testkit::require_program("bash", &[], "bash").unwrap();
    let check = support::run_with_timeout(
        {
            let mut cmd = std::process::Command::new(bash);
            cmd.arg("-n").arg(&script);
            cmd
        },
        format!("bash -n {}", script.display()),
        Duration::from_secs(30),
    );
    assert!(
        check.status.success(),
        "bash accepts the script: {}",
        check.stderr
    );
    for shell in ["zsh", "fish"] {
        let run = w.ctl(&["completions", shell]).ok();
        assert!(
            run.stdout.contains("nimbusctl"),
            "{shell} completions mention nimbusctl"
        );
    }
    let run = w.ctl(&["completions", "tcsh"]);
    assert_eq!(
        run.status.code(),
        Some(2),
        "unknown shell is a usage error: {}",
        run.stderr
    );
}

#[test]
fn pool_commands_create_show_plan_update_and_delete() {
    let w = World::start();
    w.tenant_with_local_provider("acme", "local");
    let rows = w
        .ctl(&[
            "pool",
            "create",
            "--tenant",
            "acme",
            "--provider",
            "local",
            "--name",
            "linux",
            "--label",
            "self-hosted",
            "--label",
            "Linux",
            "--max",
            "3",
            "--idle-timeout",
            "5m",
            "--schedule",
            "* 8-18 * * mon-fri@Europe/Berlin=2",
        ])
        .ok()
        .table();
    assert_eq!(
        rows[0],
        [
            "NAME",
            "PROVIDER",
            "LABELS",
            "OS/ARCH",
            "MIN IDLE",
            "MAX",
            "IDLE TIMEOUT",
            "ID"
        ]
    );
    let pool = row(&rows, "linux");
    assert_eq!(pool[2], "linux,self-hosted");
    assert_eq!(pool[6], "5m");

    let list = w
        .ctl(&["--json", "pool", "list", "--tenant", "acme"])
        .ok()
        .json();
    assert_eq!(list[0]["name"], "linux", "{list:#}");
    assert_eq!(list[0]["schedules"][0]["timezone"], "Europe/Berlin");

    // A dry run: with no demand and the schedule maybe in force, the plan says why either way.
    let plan = w
        .ctl(&["--json", "pool", "plan", "--tenant", "acme", "linux"])
        .ok()
        .json();
    assert_eq!(plan["status"]["queued_jobs"], 0);
    // Nothing to do outside Berlin office hours; inside them, the schedule's two warm runners.
    let decisions = plan["decisions"].as_array().expect("decisions");
    match plan["status"]["min_idle"].as_u64() {
        Some(0) => assert!(decisions.is_empty(), "{plan:#}"),
        Some(2) => {
            // The autoscaler may have provisioned them already: what exists plus what the plan
            // asks for is the warm target, and the plan asks for nothing else.
            let have = ["idle", "booting"]
                .iter()
                .map(|k| plan["status"][*k].as_u64().unwrap_or(0))
                .sum::<u64>();
            let asked: u64 = decisions
                .iter()
                .inspect(|d| assert_eq!(d["action"], "provision", "{plan:#}"))
                .map(|d| d["count"].as_u64().unwrap_or(0))
                .sum();
            assert_eq!(have + asked, 2, "{plan:#}");
        }
        other => panic!("unexpected warm target {other:?}: {plan:#}"),
    }

    let show = w.ctl(&["pool", "show", "--tenant", "acme", "linux"]).ok();
    assert!(
        show.stdout.contains("min_idle 0 · max 3 · idle timeout 5m"),
        "{}",
        show.stdout
    );
    assert!(show.stdout.contains("Europe/Berlin"), "{}", show.stdout);

    let updated = w
        .ctl(&[
            "--json",
            "pool",
            "update",
            "--tenant",
            "acme",
            "linux",
            "--max",
            "0",
            "--no-schedules",
        ])
        .ok()
        .json();
    assert_eq!(updated[0]["max"], 0, "{updated:#}");
    assert!(updated[0].get("schedules").is_none(), "{updated:#}");

    // Bad input: one line naming the field.
    w.ctl(&[
        "pool",
        "update",
        "--tenant",
        "acme",
        "linux",
        "--min-idle",
        "4",
    ])
    .fails_with("min_idle");
    w.ctl(&[
        "pool",
        "create",
        "--tenant",
        "acme",
        "--provider",
        "nope",
        "--label",
        "x",
        "--max",
        "1",
    ])
    .fails_with("provider");
    w.ctl(&[
        "pool",
        "create",
        "--tenant",
        "acme",
        "--provider",
        "local",
        "--label",
        "x",
        "--max",
        "1",
        "--schedule",
        "* * * *=1",
    ])
    .fails_with("schedules[0].cron");

    w.ctl(&["pool", "delete", "--tenant", "acme", "linux"]).ok();
    w.ctl(&["pool", "show", "--tenant", "acme", "linux"])
        .fails_with("pool not found");
}

/// A black-box canary: a daemon logging at `trace` drives EC2 (moto) with planted access keys;
/// neither key appears anywhere in its log, although the AWS SDK's own debug lines print the
/// access key id (so those targets are held at `info`).
#[test]
fn a_trace_log_never_shows_the_provider_credentials() {
    const KEY_ID: &str = "AKIACANARY7Q2W9X4K1Z";
    const SECRET: &str = "canary-secret-9f8e7d6c5b4a";
    let moto = nimbus_testkit::moto::MotoServer::start().unwrap_or_else(|err| panic!("{err:#}"));
    let mut w = World::empty();
    w.start_daemon_env(&[], &[("NIMBUS_LOG", "trace")]);
    w.ctl(&["tenant", "create", "acme"]).ok();
    let config = w.write_file(
        "aws.toml",
        &format!(
            r#"region = "us-east-1"
availability_zones = ["us-east-1a"]
endpoint_url = "{}"
ssh_public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG7/PuKk21/JWvuzCILsUiT7OuXa9IfIqp4ar6UW/ssc nimbus-test"
linux_instance_type = "t3.micro"
orphan_grace_secs = 0
access_key_id = "{KEY_ID}"
secret_access_key = "{SECRET}"
[image_ids]
linux_x86_64 = "{}"
"#,
            moto.endpoint(),
            nimbus_testkit::moto::AMI_LINUX_X86_64
        ),
    );
    w.ctl(&[
        "provider",
        "add",
        "--tenant",
        "acme",
        "--type",
        "aws",
        "--name",
        "ec2",
        "--config",
        config.to_str().unwrap(),
    ])
    .ok();
    let id = provision_ready(
        &w,
        &[
            "--tenant",
            "acme",
            "--provider",
            "ec2",
            "--os",
            "linux",
            "--arch",
            "x86_64",
            "--no-setup",
        ],
        &[],
    );
    w.ctl(&["machine", "terminate", &id, "--wait"]).ok();
    let log = w.daemon().stderr();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the daemon logged at debug level:\n{log}"
    );
    for canary in [KEY_ID, SECRET] {
        assert!(
            !log.contains(canary),
            "{canary} leaked into the log:\n{log}"
        );
    }
    let stdout = w.daemon().stdout();
    for canary in [KEY_ID, SECRET] {
        assert!(!stdout.contains(canary), "{canary} leaked to stdout");
    }
}
