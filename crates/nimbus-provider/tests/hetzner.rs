//! The `hetzner` provider through Prism in proxy mode (Hetzner's own OpenAPI description checks
//! every request and response) in front of the stateful fake in `nimbus-testkit`: the shared
//! conformance suite, then what is Hetzner's own (location fallback, the tenant's SSH key,
//! the rate-limit budget, prices, labels, orphans, setup over real sshd).

mod conformance;

use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance::{Fault, Peer, machine, request};
use nimbus_provider::hetzner::{
    HetznerConfig, HetznerCredentials, HetznerProvider, RetryPolicy, label, server_name,
};
use nimbus_provider::{Error, Provider, ProviderEnv};
use nimbus_testkit::hetzner::{FakeHetzner, Fault as HFault, Method};
use nimbus_testkit::prism::{Prism, vendor_spec};
use nimbus_types::{
    Arch, MachineSpec, Os, ProviderConfig, ProviderId, ProviderType, Secret, TenantId,
};
use serde_json::json;

const TOKEN: &str = "nimbus-test-token-0123456789";
const PUBLIC_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheHetznerFake nimbus";

struct Hetzner {
    fake: FakeHetzner,
    prism: Prism,
    public_key: String,
    private_key: Option<String>,
    ssh_port: u16,
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        request_timeout: Duration::from_secs(10),
        max_attempts: 4,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        max_rate_limit_wait: Duration::from_secs(5),
    }
}

impl Hetzner {
    fn start() -> Hetzner {
        Self::start_with("127.0.0.1", PUBLIC_KEY, None, 22)
    }

    fn start_with(
        ip: &str,
        public_key: &str,
        private_key: Option<String>,
        ssh_port: u16,
    ) -> Hetzner {
        let spec = vendor_spec("hetzner-cloud.json").unwrap();
        let fake = FakeHetzner::start(TOKEN, ip).unwrap();
        fake.set_action_delay(Duration::from_millis(100));
        let prism = Prism::proxy(&spec, &fake.url()).unwrap();
        Hetzner {
            fake,
            prism,
            public_key: public_key.to_owned(),
            private_key,
            ssh_port,
        }
    }

    fn config_json(&self) -> serde_json::Value {
        json!({
            "endpoint_url": self.prism.url(),
            "locations": ["fsn1", "nbg1", "hel1"],
            "ssh_public_key": self.public_key,
            "ssh_port": self.ssh_port,
            "poll_interval_ms": 50,
            "action_timeout_secs": 20,
            "labels": {"team": "ci"},
        })
    }

    fn record(&self, tenant_id: TenantId, provider_id: ProviderId, token: &str) -> ProviderConfig {
        let mut credentials = json!({"api_token": token});
        if let Some(key) = &self.private_key {
            credentials["ssh_private_key"] = json!(key);
        }
        ProviderConfig {
            id: provider_id,
            tenant_id,
            name: "hcloud".into(),
            provider_type: ProviderType::Hetzner,
            credentials: Some(Secret::new(credentials.to_string())),
            config: self.config_json(),
            created_at: nimbus_types::now(),
        }
    }

    fn concrete(&self, tenant_id: TenantId, provider_id: ProviderId) -> HetznerProvider {
        HetznerProvider::new(&self.record(tenant_id, provider_id, TOKEN))
            .unwrap()
            .with_retry_policy(fast_retry())
    }

    fn assert_clean(&self) {
        let violations = self.prism.violations();
        assert!(
            violations.is_empty(),
            "Prism found invalid requests or responses:\n{}\n--- prism log ---\n{}",
            violations.join("\n"),
            self.prism.log()
        );
    }
}

impl Peer for Hetzner {
    fn name(&self) -> &str {
        "hetzner"
    }

    fn provider(&self, tenant_id: TenantId, provider_id: ProviderId) -> Arc<dyn Provider> {
        Arc::new(self.concrete(tenant_id, provider_id))
    }

    fn spec(&self) -> MachineSpec {
        MachineSpec::new(Os::Linux, Arch::X86_64)
    }

    fn wrong_credentials(
        &self,
        tenant_id: TenantId,
        provider_id: ProviderId,
    ) -> Option<(Arc<dyn Provider>, String)> {
        let secret = "wrong-token-hunter2".to_owned();
        let provider = HetznerProvider::new(&self.record(tenant_id, provider_id, &secret))
            .unwrap()
            .with_retry_policy(fast_retry());
        Some((Arc::new(provider), secret))
    }

    fn inject(&self, fault: Fault) -> bool {
        match fault {
            Fault::Throttle(0) | Fault::ServerError(0) => self.fake.clear_faults(),
            Fault::Throttle(n) => self
                .fake
                .inject(HFault::new(None, "/", 429, "rate_limit_exceeded").times(n)),
            Fault::ServerError(n) => self
                .fake
                .inject(HFault::new(None, "/", 503, "unavailable").times(n)),
            Fault::LoseCreateResponse => self
                .fake
                .inject(HFault::new(Some(Method::POST), "/servers", 504, "timeout").after_effect()),
        }
        true
    }

    fn violations(&self) -> Vec<String> {
        self.prism.violations()
    }
}

#[tokio::test]
async fn hetzner_passes_the_provider_conformance_suite() {
    let peer = Hetzner::start();
    conformance::run(&peer).await;
    // Nothing Nimbus made is left behind.
    assert!(peer.fake.servers().is_empty(), "{:?}", peer.fake.servers());
}

#[tokio::test]
async fn servers_carry_labels_and_the_tenants_key_and_move_on_when_sold_out() {
    let peer = Hetzner::start();
    let (tenant_id, provider_id) = (TenantId::new(), ProviderId::new());
    let provider = peer.concrete(tenant_id, provider_id);
    peer.fake.sell_out("cx22", "fsn1");

    let first = request(tenant_id, provider_id, peer.spec());
    let view = provider.provision(&first).await.unwrap();
    assert_eq!(view.metadata.extra["location"], "nbg1", "{view:?}");
    assert_eq!(view.metadata.extra["billing"], "hourly");
    assert!(view.metadata.extra.contains_key("paid_until"));
    assert_eq!(view.ip_address.as_deref(), Some("127.0.0.1"));
    let servers = peer.fake.servers();
    assert_eq!(servers.len(), 1);
    let (server_id, name, labels, _, status) = &servers[0];
    assert_eq!(name, &server_name(first.machine_id));
    assert_eq!(status, "running");
    assert_eq!(labels[label::MANAGED_BY], "nimbus");
    assert_eq!(labels[label::TENANT], tenant_id.to_string());
    assert_eq!(labels[label::PROVIDER], provider_id.to_string());
    assert_eq!(labels[label::MACHINE], first.machine_id.to_string());
    assert_eq!(labels["team"], "ci");

    // One SSH key per tenant, uploaded once, attached to every server.
    let second = request(tenant_id, provider_id, peer.spec());
    let restarted = peer.concrete(tenant_id, provider_id);
    let view2 = restarted.provision(&second).await.unwrap();
    let keys = peer.fake.ssh_keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].2[label::TENANT], tenant_id.to_string());
    assert_eq!(peer.fake.server_ssh_keys(*server_id), vec![keys[0].0]);
    let server2: i64 = view2.metadata.instance_id.clone().unwrap().parse().unwrap();
    assert_eq!(peer.fake.server_ssh_keys(server2), vec![keys[0].0]);

    // Every location sold out: a retryable error naming them, and nothing created.
    for location in ["fsn1", "nbg1", "hel1"] {
        peer.fake.sell_out("cx22", location);
    }
    let third = request(tenant_id, provider_id, peer.spec());
    let err = provider.provision(&third).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("hel1"), "{err}");
    assert_eq!(peer.fake.servers().len(), 2);

    // macOS is not something Hetzner has.
    let mut mac = request(tenant_id, provider_id, peer.spec());
    mac.spec.os = Os::Macos;
    let err = provider.provision(&mac).await.unwrap_err();
    assert!(matches!(err, Error::Permanent(_)), "{err}");

    for (req, view) in [(&first, &view), (&second, &view2)] {
        provider.terminate(&machine(req, Some(view))).await.unwrap();
    }
    assert!(peer.fake.servers().is_empty());
    peer.assert_clean();
}

#[tokio::test]
async fn orphans_and_foreign_servers() {
    let peer = Hetzner::start();
    let (tenant_id, provider_id) = (TenantId::new(), ProviderId::new());
    let provider = peer.concrete(tenant_id, provider_id);
    // A server of this provider whose intent was lost, one of another provider of the same
    // tenant, and one nobody labelled.
    let orphan = nimbus_types::MachineId::new();
    let tenant = tenant_id.to_string();
    let provider_label = provider_id.to_string();
    let orphan_label = orphan.to_string();
    peer.fake.add_server(
        &server_name(orphan),
        &[
            (label::MANAGED_BY, "nimbus"),
            (label::TENANT, &tenant),
            (label::PROVIDER, &provider_label),
            (label::MACHINE, &orphan_label),
        ],
    );
    let other_provider = ProviderId::new().to_string();
    peer.fake.add_server(
        "other",
        &[
            (label::MANAGED_BY, "nimbus"),
            (label::TENANT, &tenant),
            (label::PROVIDER, &other_provider),
            (label::MACHINE, &nimbus_types::MachineId::new().to_string()),
        ],
    );
    peer.fake.add_server("pet", &[("team", "ci")]);

    let listed = provider.list_machines(tenant_id).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].machine_id, Some(orphan));
    assert_eq!(listed[0].tenant_id, Some(tenant_id));

    // Through the registry's path (build from the stored record), as the reconciler would.
    let env = ProviderEnv::new(std::env::temp_dir());
    let built = nimbus_provider::build(&env, &peer.record(tenant_id, provider_id, TOKEN)).unwrap();
    let mut orphan_request = request(tenant_id, provider_id, peer.spec());
    orphan_request.machine_id = orphan;
    built
        .terminate(&machine(&orphan_request, Some(&listed[0])))
        .await
        .unwrap();
    let names: Vec<String> = peer.fake.servers().into_iter().map(|s| s.1).collect();
    assert_eq!(names, vec!["other".to_owned(), "pet".to_owned()]);
    peer.assert_clean();
}

#[tokio::test]
async fn the_rate_limit_budget_is_waited_for_not_burned() {
    let peer = Hetzner::start();
    let (tenant_id, provider_id) = (TenantId::new(), ProviderId::new());
    let provider = peer.concrete(tenant_id, provider_id);
    provider.list_machines(tenant_id).await.unwrap();
    // The next answer says the budget is spent until the reset (≤ 1 s later).
    peer.fake.set_rate_remaining(1);
    provider.list_machines(tenant_id).await.unwrap();
    let before = peer.fake.requests().len();
    let started = Instant::now();
    provider.list_machines(tenant_id).await.unwrap();
    assert_eq!(
        peer.fake.requests().len(),
        before + 1,
        "one request after the wait, no 429 in between"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the call waited for the reset ({:?})",
        started.elapsed()
    );

    // Prices come from GET /server_types.
    let prices = provider.prices().await.unwrap();
    let cx22 = prices
        .iter()
        .find(|p| p.server_type == "cx22" && p.location == "fsn1")
        .unwrap();
    assert!((cx22.hourly_net - 0.0066).abs() < 1e-9, "{cx22:?}");
    assert_eq!(cx22.architecture, "x86");
    peer.assert_clean();
}

#[tokio::test]
async fn bad_configs_are_refused_by_field() {
    let record = |config: serde_json::Value, credentials: Option<&str>| ProviderConfig {
        id: ProviderId::new(),
        tenant_id: TenantId::new(),
        name: "h".into(),
        provider_type: ProviderType::Hetzner,
        credentials: credentials.map(Secret::new),
        config,
        created_at: nimbus_types::now(),
    };
    let ok = record(json!({}), Some(r#"{"api_token": "abc"}"#));
    nimbus_provider::validate_config(&ok).unwrap();
    for (config, credentials, field) in [
        (
            json!({"locations": ["FSN 1"]}),
            Some(r#"{"api_token": "abc"}"#),
            "config.locations[0]",
        ),
        (json!({}), None, "credentials"),
        (json!({}), Some(r#"{"token": "abc"}"#), "credentials.token"),
        (
            json!({"api_token": "abc"}),
            Some(r#"{"api_token": "abc"}"#),
            "config.api_token",
        ),
    ] {
        match nimbus_provider::validate_config(&record(config.clone(), credentials)) {
            Err(Error::InvalidConfig { field: got, .. }) => assert_eq!(got, field, "{config}"),
            other => panic!("{config}: {other:?}"),
        }
    }
    // The config round-trips with its defaults.
    let parsed = HetznerConfig::from_json(&json!({})).unwrap();
    assert_eq!(parsed.endpoint_url, "https://api.hetzner.cloud/v1");
    assert!(HetznerCredentials::from_secret(None).is_err());
}

#[tokio::test]
async fn setup_logs_in_over_ssh_with_the_tenants_key() {
    let sshd = nimbus_testkit::sshd::Sshd::start().unwrap();
    let peer = Hetzner::start_with(
        sshd.address(),
        sshd.client_public_key(),
        Some(sshd.client_private_key().to_owned()),
        sshd.port(),
    );
    let (tenant_id, provider_id) = (TenantId::new(), ProviderId::new());
    let provider = HetznerProvider::new(&peer.record(tenant_id, provider_id, TOKEN))
        .unwrap()
        .with_retry_policy(fast_retry());
    // The fake's servers log in as root by default; the test sshd has its own user.
    let mut record = peer.record(tenant_id, provider_id, TOKEN);
    record.config["ssh_user"] = json!(sshd.user());
    let provider_as_user = HetznerProvider::new(&record)
        .unwrap()
        .with_retry_policy(fast_retry());
    drop(provider);
    let req = request(tenant_id, provider_id, peer.spec());
    let view = provider_as_user.provision(&req).await.unwrap();
    let exec = provider_as_user
        .exec(&machine(&req, Some(&view)))
        .await
        .unwrap();
    let output = exec
        .run(&nimbus_setup::exec::Command::new("echo hello-from-hetzner"))
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("hello-from-hetzner"),
        "{output:?}"
    );
    provider_as_user
        .terminate(&machine(&req, Some(&view)))
        .await
        .unwrap();
    peer.assert_clean();
}

#[tokio::test]
async fn prism_catches_what_hetzners_description_forbids() {
    // The suite is only as good as the check in front of the fake: a create without a name or
    // server type, and a fake answer that misses required fields, must both be caught.
    let peer = Hetzner::start();
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/servers", peer.prism.url()))
        .bearer_auth(TOKEN)
        .json(&json!({"image": "ubuntu-24.04"}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    // Prism writes its log line after it answered: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut violations = peer.prism.violations();
    while violations.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        violations = peer.prism.violations();
    }
    assert!(
        violations.iter().any(|v| v.contains("post /servers")),
        "{violations:?}\n{}",
        peer.prism.log()
    );
}
