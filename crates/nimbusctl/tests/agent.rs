//! The bare-metal agent end to end: the real `nimbusd server` and `nimbusd agent run` binaries
//! on loopback, sushy-tools as the Redfish BMC that only the agent is told about, a real sshd
//! as the machine behind it, driven by `nimbusctl`. Enrolment (and a replayed or expired token
//! refused), heartbeats, a power operation carried out on the emulated BMC, a baremetal
//! provider whose host is powered through the agent, and a lost agent whose host is not
//! claimed.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use nimbus_testkit::sshd::Sshd;
use nimbus_testkit::sushy::{FakeSystem, Sushy, SushyOptions};
use serde_json::{Value, json};
use support::{World, http_get, nimbusd_bin};

fn slow_tests() -> bool {
    if std::env::var_os("NIMBUS_SLOW_TESTS").is_none() {
        eprintln!(
            "skipped: set NIMBUS_SLOW_TESTS=1 (scripts/test does) to run against sushy-tools"
        );
        return false;
    }
    true
}

/// A running `nimbusd agent run`; killed on drop, its output printed when the test fails.
struct AgentProcess {
    child: Child,
    command: String,
    output: Arc<Mutex<String>>,
    metrics_url: String,
}

impl AgentProcess {
    fn describe(&self) -> String {
        format!(
            "$ {}\n--- output ---\n{}",
            self.command,
            self.output.lock().unwrap()
        )
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.describe());
        }
    }
}

fn agent_command(world: &World, data_dir: &Path, args: &[&str]) -> (Command, String) {
    let mut cmd = Command::new(nimbusd_bin());
    cmd.args(["agent", "run", "--server", &world.url(), "--data-dir"])
        .arg(data_dir)
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NIMBUS_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("HOME", &world.home)
        .env("NIMBUS_LOG", "info,nimbusd=debug")
        .stdin(Stdio::null());
    let shown = format!(
        "{} agent run --server {} --data-dir {} --metrics-listen 127.0.0.1:0 {}",
        nimbusd_bin().display(),
        world.url(),
        data_dir.display(),
        args.join(" ")
    );
    (cmd, shown)
}

/// Starts the agent and waits for its enrolment and metrics lines.
fn start_agent(world: &World, data_dir: &Path, args: &[&str]) -> AgentProcess {
    let (mut cmd, command) = agent_command(world, data_dir, args);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start `{command}`: {err}"));
    let output: Arc<Mutex<String>> = Arc::default();
    let (metrics_tx, metrics_rx) = mpsc::channel();
    {
        let output = output.clone();
        let reader = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                output.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(url) = line.strip_prefix("nimbusd agent metrics on ") {
                    let _ = metrics_tx.send(url.trim().to_owned());
                }
            }
        });
    }
    {
        let output = output.clone();
        let mut stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let mut agent = AgentProcess {
        child,
        command,
        output,
        metrics_url: String::new(),
    };
    match metrics_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(url) => agent.metrics_url = url,
        Err(_) => panic!("the agent never served /metrics:\n{}", agent.describe()),
    }
    agent
}

/// Runs the agent until it exits (it must: enrolment is refused); its exit and output.
fn agent_refused(world: &World, data_dir: &Path, args: &[&str]) -> String {
    let (mut cmd, command) = agent_command(world, data_dir, args);
    let out = cmd.output().unwrap();
    assert!(
        !out.status.success(),
        "`{command}` must fail:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A plain HTTP/1.1 POST of JSON: status and body.
fn http_post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let authority = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.to_string();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The emulated system's power state, read from sushy directly (not through Nimbus).
fn sushy_power(sushy: &Sushy, system: &FakeSystem) -> String {
    let (status, body) = http_get(
        &sushy.url(),
        &format!("/redfish/v1/Systems/{}", system.uuid),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    body["PowerState"].as_str().unwrap_or_default().to_owned()
}

fn agent_row(world: &World, name: &str) -> Value {
    let agents = world
        .ctl(&["--json", "agent", "list", "--tenant", "acme"])
        .ok()
        .json();
    agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

fn private_file(path: &Path, contents: &str) -> PathBuf {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_owned()
}

fn create_token(world: &World, name: &str, ttl: &str) -> String {
    let created = world
        .ctl(&[
            "--json", "agent", "token", "create", name, "--tenant", "acme", "--ttl", ttl,
        ])
        .ok()
        .json();
    created["token"].as_str().unwrap().to_owned()
}

#[test]
fn an_agent_enrols_heartbeats_and_powers_a_bmc_the_control_plane_cannot_reach() {
    if !slow_tests() {
        return;
    }
    let node = FakeSystem::off("node-0", 1);
    let sushy = Sushy::start(SushyOptions {
        systems: vec![node.clone()],
        auth: None,
    })
    .unwrap();
    let sshd = Sshd::start().unwrap();
    let mut world = World::empty();
    world.start_daemon(&["--agent-lost-after", "4s", "--agent-op-timeout", "30s"]);
    world.ctl(&["tenant", "create", "acme"]).ok();

    // Bad input first: a name that is not one, a lifetime past the limit.
    world
        .ctl(&["agent", "token", "create", "bad/name", "--tenant", "acme"])
        .fails_with("name");
    world
        .ctl(&[
            "agent", "token", "create", "rack-a", "--tenant", "acme", "--ttl", "200h",
        ])
        .fails_with("ttl_secs");

    // The agent's own configuration: the BMC's address and password live only here.
    let root = world.root.path().to_owned();
    let password = private_file(&root.join("node-0.pass"), "bmc-pass-1\n");
    let config = private_file(
        &root.join("agent.toml"),
        &format!(
            "[[bmcs]]\nname = \"node-0\"\nkind = \"redfish\"\naddress = \"{}\"\n\
             username = \"nimbus\"\npassword_file = \"{}\"\n",
            sushy.url(),
            password.display()
        ),
    );
    let token = create_token(&world, "rack-a", "1h");
    let token_file = private_file(&root.join("enrol-token"), &token);
    let data_dir = root.join("agent-data");
    let agent_args = [
        "--enrolment-token-file",
        token_file.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--heartbeat-interval",
        "1s",
        "--poll-wait",
        "5s",
    ];
    let agent = start_agent(&world, &data_dir, &agent_args);

    // Its credential is kept 0600 and is not the enrolment token.
    let credential_file = data_dir.join("agent-credential.json");
    let mode = std::fs::metadata(&credential_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(&credential_file).unwrap()).unwrap();
    let credential = stored["credential"].as_str().unwrap().to_owned();
    assert!(credential.starts_with("nimbus_agent_") && credential != token);

    // Heartbeats: online, with health, capacity and the BMC's power state.
    let row = world.wait_for("the agent online", Duration::from_secs(30), || {
        let row = agent_row(&world, "rack-a");
        if row["status"] == "online" && row["report"]["bmcs"][0]["power_state"] == "off" {
            Ok(row)
        } else {
            Err(row.to_string())
        }
    });
    assert_eq!(row["report"]["health"], "ok");
    assert!(row["report"]["capacity"]["memory_bytes"].as_u64().unwrap() > 0);
    let table = world
        .ctl(&["agent", "list", "--tenant", "acme"])
        .ok()
        .table();
    assert_eq!(
        table[0],
        ["NAME", "STATUS", "LAST SEEN", "HEALTH", "BMCS", "ID"]
    );
    assert_eq!(table[1][..2], ["rack-a", "online"]);
    assert_eq!(table[1][4], "node-0=off");

    // The replayed token is refused, by the API and by a second agent.
    let (status, body) = http_post(&world.url(), "/v1/agents/enrol", &json!({"token": token}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "enrolment_token_used");
    let stderr = agent_refused(&world, &root.join("agent-replay"), &agent_args);
    assert!(stderr.contains("used already"), "{stderr}");
    let (status, body) = http_post(
        &world.url(),
        "/v1/agents/enrol",
        &json!({"token": "nimbus_enrol_nope"}),
    );
    assert_eq!(status, 401, "{body}");
    // An expired token is refused with 410.
    let expired = create_token(&world, "rack-b", "1s");
    std::thread::sleep(Duration::from_millis(1500));
    let (status, body) = http_post(&world.url(), "/v1/agents/enrol", &json!({"token": expired}));
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"]["code"], "enrolment_token_expired");
    let expired_file = private_file(&root.join("expired-token"), &expired);
    let stderr = agent_refused(
        &world,
        &root.join("agent-expired"),
        &["--enrolment-token-file", expired_file.to_str().unwrap()],
    );
    assert!(stderr.contains("expired"), "{stderr}");

    // A power operation, asked through the API, carried out by the agent on the BMC.
    let out = world
        .ctl(&[
            "agent", "power", "rack-a", "--bmc", "node-0", "on", "--tenant", "acme",
        ])
        .ok();
    assert!(out.stdout.contains("power_on accepted"), "{}", out.stdout);
    world.wait_for(
        "sushy to power on",
        Duration::from_secs(30),
        || match sushy_power(&sushy, &node).as_str() {
            "On" => Ok(()),
            other => Err(other.to_owned()),
        },
    );
    let out = world
        .ctl(&[
            "agent", "power", "rack-a", "--bmc", "node-0", "status", "--tenant", "acme",
        ])
        .ok();
    assert_eq!(out.stdout.trim(), "node-0: power on");
    // A BMC the agent does not have is the agent's refusal, named.
    world
        .ctl(&[
            "agent", "power", "rack-a", "--bmc", "node-9", "on", "--tenant", "acme",
        ])
        .fails_with("no BMC named \"node-9\"");
    world
        .ctl(&[
            "agent", "power", "rack-a", "--bmc", "node-0", "off", "--tenant", "acme",
        ])
        .ok();
    world.wait_for(
        "sushy to power off",
        Duration::from_secs(30),
        || match sushy_power(&sushy, &node).as_str() {
            "Off" => Ok(()),
            other => Err(other.to_owned()),
        },
    );

    // The agent's metrics, on loopback.
    let (status, metrics) = http_get(&agent.metrics_url.replace("/metrics", ""), "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        metrics.contains("nimbus_agent_heartbeats_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "nimbus_agent_operations_total{bmc=\"node-0\",op=\"power_on\",result=\"success\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("nimbus_agent_last_operation_success{bmc=\"node-0\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("bmc-pass-1"));

    // A baremetal provider whose host's BMC is reached only through the agent.
    let host_id = format!("{}:{}", sshd.address(), sshd.port());
    let state_dir = sshd.scratch_dir().join("nimbus");
    let provider_config = json!({
        "hosts": [{
            "address": sshd.address(), "port": sshd.port(), "user": sshd.user(),
            "os": "linux", "arch": std::env::consts::ARCH.replace("aarch64", "arm64"),
            "state_dir": state_dir.display().to_string(),
            "bmc": {"agent": "rack-a", "name": "node-0"},
        }],
        "boot": "pxe", "power_timeout_secs": 60, "boot_timeout_secs": 30,
    });
    let config_file = root.join("rack.json");
    std::fs::write(&config_file, provider_config.to_string()).unwrap();
    let credentials_file = private_file(
        &root.join("rack-credentials.json"),
        &json!({"keys": {host_id.clone(): sshd.client_private_key()}}).to_string(),
    );
    world
        .ctl(&[
            "provider",
            "add",
            "--tenant",
            "acme",
            "--type",
            "baremetal",
            "--name",
            "rack",
            "--config",
            config_file.to_str().unwrap(),
            "--credentials",
            credentials_file.to_str().unwrap(),
        ])
        .ok();
    let provision = |world: &World| -> String {
        let machine = world
            .ctl(&[
                "--json",
                "machine",
                "provision",
                "--tenant",
                "acme",
                "--provider",
                "rack",
                "--no-setup",
            ])
            .ok()
            .json();
        machine[0]["id"].as_str().unwrap().to_owned()
    };
    let first = provision(&world);
    world.wait_for(
        "the machine ready",
        Duration::from_secs(120),
        || match world.machine_state(&first).as_str() {
            "ready" => Ok(()),
            "failed" => panic!("provision failed: {}", world.machine(&first)),
            other => Err(other.to_owned()),
        },
    );
    assert_eq!(sushy_power(&sushy, &node), "On", "booted through the agent");
    assert!(state_dir.join("claim").exists(), "the host is claimed");
    world.ctl(&["machine", "terminate", &first, "--wait"]).ok();
    assert_eq!(
        sushy_power(&sushy, &node),
        "Off",
        "powered off through the agent"
    );

    // The agent goes away: it is shown lost, and its host is not handed out.
    drop(agent);
    world.wait_for("the agent lost", Duration::from_secs(30), || {
        let row = agent_row(&world, "rack-a");
        if row["status"] == "lost" {
            Ok(())
        } else {
            Err(row.to_string())
        }
    });
    let table = world
        .ctl(&["agent", "list", "--tenant", "acme"])
        .ok()
        .table();
    assert_eq!(table[1][..2], ["rack-a", "lost"]);
    let second = provision(&world);
    let machine = world.wait_for("the provision to fail", Duration::from_secs(60), || {
        let machine = world.machine(&second);
        match machine["state"].as_str() {
            Some("failed") => Ok(machine),
            other => Err(format!("{other:?}")),
        }
    });
    let history = world
        .ctl(&["--json", "machine", "show", &second])
        .ok()
        .json();
    assert!(
        history.to_string().contains("agent rack-a is lost"),
        "{machine}\n{history}"
    );
    assert!(
        !state_dir.join("claim").exists(),
        "nothing claimed the host"
    );
    assert_eq!(sushy_power(&sushy, &node), "Off", "nothing powered it on");
    // An operation asked directly is refused as well, with the reason.
    world
        .ctl(&[
            "agent", "power", "rack-a", "--bmc", "node-0", "on", "--tenant", "acme",
        ])
        .fails_with("lost");

    // Deleting the agent ends its credential.
    world
        .ctl(&["agent", "delete", "rack-a", "--tenant", "acme"])
        .ok();
    let (status, _) = http_get(
        &world.url(),
        "/v1/agent/operations?wait_secs=0",
        Some(&credential),
    );
    assert_eq!(status, 401);
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn registry_entry(name: &str, count: u32) -> String {
    format!(
        "schema = 1\nname = \"{name}\"\nowner = \"Acme\"\ncontact = \"ops@acme.example\"\n\
         location = \"Berlin, DE\"\nagent = \"https://rack1.acme.example:9443\"\nbmc = \"redfish\"\n\n\
         [[classes]]\nname = \"m2-mini\"\ncount = {count}\nos = \"macos\"\narch = \"arm64\"\n\
         cpu = \"Apple M2\"\ncores = 8\nmemory_gb = 16\ndisk_gb = 256\nprice_per_hour = 0.12\n\n\
         [[classes]]\nname = \"epyc\"\ncount = 2\nos = \"linux\"\narch = \"x86_64\"\n\
         cpu = \"AMD EPYC\"\ncores = 32\nmemory_gb = 128\ndisk_gb = 1000\nprice_per_hour = 0.9\n"
    )
}

#[test]
fn the_server_syncs_a_registry_from_git_and_offers_its_entries() {
    let mut world = World::empty();
    let repo = world.root.path().join("registry");
    std::fs::create_dir_all(repo.join("providers")).unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch", "main"]);
    std::fs::write(
        repo.join("providers/acme-berlin.toml"),
        registry_entry("acme-berlin", 12),
    )
    .unwrap();
    // A file with a mistake is left out and reported, not fatal.
    std::fs::write(
        repo.join("providers/broken.toml"),
        registry_entry("broken", 0),
    )
    .unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "--quiet", "-m", "first"]);
    let url = format!("file://{}", repo.display());
    world.start_daemon(&["--registry-url", &url, "--registry-interval", "1s"]);
    let token = std::fs::read_to_string(world.admin_token_path()).unwrap();
    let token = token.trim();

    let registry = world.wait_for("the first sync", Duration::from_secs(30), || {
        let (status, body) = http_get(&world.url(), "/v1/registry", Some(token));
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if status == 200 && body["commit"].is_string() {
            Ok(body)
        } else {
            Err(format!("{status} {body}"))
        }
    });
    assert_eq!(registry["url"], url.as_str());
    assert_eq!(registry["last_error"], Value::Null);
    let entries = registry["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{registry}");
    assert_eq!(entries[0]["name"], "acme-berlin");
    let diagnostics = registry["diagnostics"].as_array().unwrap();
    assert_eq!(diagnostics.len(), 1, "{registry}");
    assert_eq!(diagnostics[0]["key"], "classes[0].count");
    assert!(
        diagnostics[0]["file"]
            .as_str()
            .unwrap()
            .ends_with("broken.toml")
    );

    // Filters as in `registry search`; a bad filter is a 422 naming it.
    let (status, body) = http_get(
        &world.url(),
        "/v1/registry?os=linux&min_cores=16",
        Some(token),
    );
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    let classes = body["entries"][0]["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 1);
    assert_eq!(classes[0]["name"], "epyc");
    let (status, body) = http_get(&world.url(), "/v1/registry?os=beos", Some(token));
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("\"field\":\"os\""), "{body}");
    let (status, _) = http_get(&world.url(), "/v1/registry", None);
    assert_eq!(status, 401);

    // A new commit is picked up on the next interval.
    std::fs::write(
        repo.join("providers/beta-paris.toml"),
        registry_entry("beta-paris", 3),
    )
    .unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "--quiet", "-m", "second"]);
    let first_commit = registry["commit"].as_str().unwrap().to_owned();
    world.wait_for("the second commit", Duration::from_secs(30), || {
        let (_, body) = http_get(&world.url(), "/v1/registry", Some(token));
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if body["commit"] != first_commit.as_str()
            && body["entries"].as_array().map(Vec::len) == Some(2)
        {
            Ok(())
        } else {
            Err(body.to_string())
        }
    });

    // A baremetal provider offered under a registry entry: the entry must exist and offer the
    // hosts' os/arch.
    world.ctl(&["tenant", "create", "acme"]).ok();
    let provider = |entry: &str, arch: &str| {
        let config = world.root.path().join(format!("rack-{entry}-{arch}.json"));
        std::fs::write(
            &config,
            json!({
                "registry_entry": entry,
                "hosts": [{"address": "127.0.0.1", "user": "ci", "os": "linux", "arch": arch,
                           "bmc": {"agent": "rack-a", "name": "node-0"}}],
            })
            .to_string(),
        )
        .unwrap();
        let credentials = private_file(
            &world.root.path().join("rack-credentials.json"),
            &json!({"default": "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n"}).to_string(),
        );
        world.ctl(&[
            "provider",
            "add",
            "--tenant",
            "acme",
            "--type",
            "baremetal",
            "--name",
            &format!("rack-{entry}-{arch}"),
            "--config",
            config.to_str().unwrap(),
            "--credentials",
            credentials.to_str().unwrap(),
        ])
    };
    provider("nope", "x86_64").fails_with("config.registry_entry");
    provider("acme-berlin", "arm64").fails_with("config.hosts[0]");
}
