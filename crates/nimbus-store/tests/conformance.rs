//! The store conformance suite: every case runs against SQLite (a file in a temp dir) and
//! PostgreSQL (one server per test process, started here through `nimbus-testkit`, a fresh
//! database per test).

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Duration;

use nimbus_store::{
    Error, EventFilter, MachineFilter, SealKey, Sealer, SqlStore, Storage, StoreOptions,
};
use nimbus_testkit::postgres::Postgres;
use nimbus_types::demand::{Applied, ForgeJob, JobRecord, JobStatus, LabelSet, Source};
use nimbus_types::event::{self, Event};
use nimbus_types::{
    Arch, ForgeConfig, ForgeType, Image, ImageState, ImageType, Machine, MachineId, MachineSpec,
    MachineState, Os, Pool, PoolId, PoolSettings, ProviderConfig, ProviderId, ProviderMetadata,
    ProviderType, RunnerUsage, Secret, SetupProgress, SetupStep, StepStatus, TenantId,
};
use sqlx::Row;

/// One test's database: the store plus what is needed to look under it or reopen it.
struct TestDb {
    store: SqlStore,
    url: String,
    key: SealKey,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let url = SqlStore::sqlite_path_url(&dir.path().join("data/nimbus.db"));
        TestDb::open(url, Some(dir)).await
    }

    async fn postgres(test: &str) -> TestDb {
        static SERVER: OnceLock<Result<Postgres, String>> = OnceLock::new();
        let server = SERVER
            .get_or_init(|| Postgres::start().map_err(|err| format!("{err:#}")))
            .as_ref()
            .unwrap_or_else(|err| panic!("cannot start the test PostgreSQL server: {err}"));
        let name = format!(
            "t_{}",
            test.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        let url = tokio::task::block_in_place(|| server.create_database(&name))
            .unwrap_or_else(|err| panic!("create database {name}: {err:#}"));
        TestDb::open(url, None).await
    }

    async fn open(url: String, dir: Option<tempfile::TempDir>) -> TestDb {
        let key = SealKey::generate();
        let store = SqlStore::connect(&url, StoreOptions::default(), Sealer::new(key.clone()))
            .await
            .unwrap_or_else(|err| panic!("connect to {url}: {err}"));
        TestDb {
            store,
            url,
            key,
            _dir: dir,
        }
    }

    /// A second store on the same database (after closing the first one), with `key`.
    async fn reopen(&self, key: SealKey) -> SqlStore {
        self.store.close().await;
        SqlStore::connect(&self.url, StoreOptions::default(), Sealer::new(key))
            .await
            .unwrap_or_else(|err| panic!("reopen {}: {err}", self.url))
    }

    /// A plain connection that bypasses the store, to look at raw columns.
    async fn raw(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::AnyPool::connect(&self.url)
            .await
            .unwrap_or_else(|err| panic!("raw connect to {}: {err}", self.url))
    }
}

macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let db = super::TestDb::sqlite().await;
                    super::$case(&db).await;
                }
            )+
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let db = super::TestDb::postgres(stringify!($case)).await;
                    assert_eq!(db.store.backend(), "postgres");
                    super::$case(&db).await;
                }
            )+
        }
    };
}

conformance!(
    backend_answers_ping,
    tenants_crud_and_duplicate_names,
    tenant_tokens,
    host_keys_pin_once_per_tenant,
    providers_round_trip_with_sealed_credentials,
    provider_names_are_unique_per_tenant,
    tenants_are_isolated,
    delete_provider_conflicts_while_machines_are_live,
    forge_config_upsert,
    machines_insert_get_and_list_filters,
    machine_transitions_and_history,
    concurrent_updates_see_stale_state,
    unknown_ids_are_not_found,
    events_append_and_list,
    concurrent_writers,
    reopening_keeps_data,
    wrong_seal_key_cannot_open_credentials,
    pools_crud_and_names_unique_per_tenant,
    tenant_budgets,
    pools_guard_their_machines_and_provider,
    machines_carry_pool_and_usage,
    demand_records_forward_only_and_counts_deliveries_once,
    demand_corrections_compare_and_swap,
    demand_prunes_finished_jobs_and_old_deliveries,
    job_history_keeps_finished_jobs_past_pruning,
    ci_runs_and_jobs,
    agents_enrol_once_and_take_operations,
);

// ---------------------------------------------------------------------------------------------
// Fixtures

fn provider(tenant_id: TenantId, name: &str, credentials: Option<&str>) -> ProviderConfig {
    ProviderConfig {
        id: ProviderId::new(),
        tenant_id,
        name: name.to_owned(),
        provider_type: ProviderType::Local,
        credentials: credentials.map(Secret::new),
        config: serde_json::json!({ "root": "/var/lib/nimbus", "max": 4 }),
        created_at: nimbus_types::now(),
    }
}

fn spec() -> MachineSpec {
    let mut spec = MachineSpec::new(Os::Linux, Arch::X86_64);
    spec.labels = vec!["linux".into(), "self-hosted".into()];
    spec.setup_script = Some("echo hello".into());
    spec
}

fn machine(tenant_id: TenantId, provider_id: ProviderId) -> Machine {
    let spec = spec();
    let now = nimbus_types::now();
    Machine {
        id: MachineId::new(),
        tenant_id,
        provider_id,
        os: spec.os,
        arch: spec.arch,
        state: MachineState::Provisioning,
        ip_address: None,
        ssh_public_key: None,
        labels: spec.labels.clone(),
        instance_type: None,
        image: Image {
            id: None,
            image_type: ImageType::None,
            state: ImageState::Pending,
            installed_at: None,
        },
        created_at: now,
        updated_at: now,
        provider_metadata: ProviderMetadata::default(),
        error: None,
        setup_progress: None,
        pool_id: None,
        usage: Default::default(),
    }
}

/// A tenant with one provider, ready for machines.
async fn tenant_with_provider(store: &dyn Storage, name: &str) -> (TenantId, ProviderId) {
    let tenant = store.create_tenant(name).await.expect("create tenant");
    let provider = provider(tenant.id, "local", None);
    store
        .create_provider(&provider)
        .await
        .expect("create provider");
    (tenant.id, provider.id)
}

async fn add_machine(store: &dyn Storage, tenant_id: TenantId, provider_id: ProviderId) -> Machine {
    let machine = machine(tenant_id, provider_id);
    store
        .insert_machine(&machine, &spec())
        .await
        .expect("insert machine");
    machine
}

/// Moves a machine along `states`, each step expecting the previous state.
async fn walk(store: &dyn Storage, machine: &mut Machine, states: &[MachineState]) {
    for &state in states {
        let expected = machine.state;
        machine.state = state;
        machine.updated_at = nimbus_types::now();
        store
            .update_machine(machine, expected, Some(&format!("to {state}")))
            .await
            .unwrap_or_else(|err| panic!("{expected} -> {state}: {err}"));
    }
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, Error>, entity: &str, what: &str) {
    match result {
        Err(Error::NotFound { entity: got }) if got == entity => {}
        other => panic!("{what}: expected NotFound {{ entity: {entity:?} }}, got {other:?}"),
    }
}

fn assert_conflict<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) {
    match result {
        Err(Error::Conflict { .. }) => {}
        other => panic!("{what}: expected Conflict, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

async fn backend_answers_ping(db: &TestDb) {
    db.store.ping().await.expect("ping");
    assert!(["sqlite", "postgres"].contains(&db.store.backend()));
    assert!(
        !format!("{:?}", db.store).contains("Sealer"),
        "{:?}",
        db.store
    );
}

async fn tenants_crud_and_duplicate_names(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    assert!(store.list_tenants().await.unwrap().is_empty());
    let acme = store.create_tenant("acme").await.unwrap();
    let beta = store.create_tenant("beta").await.unwrap();
    assert_ne!(acme.id, beta.id);

    assert_eq!(store.get_tenant(acme.id).await.unwrap(), acme);
    assert_eq!(store.get_tenant_by_name("beta").await.unwrap(), beta);
    assert_eq!(
        store.list_tenants().await.unwrap(),
        vec![acme.clone(), beta]
    );

    assert_conflict(store.create_tenant("acme").await, "duplicate tenant name");
    assert_not_found(
        store.get_tenant(TenantId::new()).await,
        "tenant",
        "unknown tenant id",
    );
    assert_not_found(
        store.get_tenant_by_name("nope").await,
        "tenant",
        "unknown tenant name",
    );
    // A failed insert leaves nothing behind.
    assert_eq!(store.list_tenants().await.unwrap().len(), 2);
}

async fn host_keys_pin_once_per_tenant(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let acme = store.create_tenant("acme").await.unwrap();
    let beta = store.create_tenant("beta").await.unwrap();
    let host = "10.0.0.5:22";
    assert_eq!(store.get_host_key(acme.id, host).await.unwrap(), None);
    let first = "ssh-ed25519 AAAAfirst";
    assert_eq!(
        store.pin_host_key(acme.id, host, first).await.unwrap(),
        first
    );
    // The first pin wins: a later, different key is not stored.
    assert_eq!(
        store
            .pin_host_key(acme.id, host, "ssh-ed25519 AAAAsecond")
            .await
            .unwrap(),
        first
    );
    assert_eq!(
        store.get_host_key(acme.id, host).await.unwrap().as_deref(),
        Some(first)
    );
    // Another tenant's pins are its own.
    assert_eq!(store.get_host_key(beta.id, host).await.unwrap(), None);
    let hostile = "x'); DROP TABLE host_keys; --";
    store
        .pin_host_key(beta.id, hostile, "ssh-ed25519 AAAAbeta")
        .await
        .unwrap();
    assert_eq!(
        store
            .get_host_key(beta.id, hostile)
            .await
            .unwrap()
            .as_deref(),
        Some("ssh-ed25519 AAAAbeta")
    );
    assert!(matches!(
        store
            .pin_host_key(nimbus_types::TenantId::new(), host, first)
            .await,
        Err(nimbus_store::Error::NotFound { .. })
    ));
}

async fn tenant_tokens(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let acme = store.create_tenant("acme").await.unwrap();
    let beta = store.create_tenant("beta").await.unwrap();
    let hash_a = [1u8; 32];
    let hash_a2 = [2u8; 32];
    let hash_b = [3u8; 32];
    store.add_tenant_token(acme.id, &hash_a).await.unwrap();
    store.add_tenant_token(acme.id, &hash_a2).await.unwrap();
    store.add_tenant_token(beta.id, &hash_b).await.unwrap();

    assert_eq!(
        store.tenant_for_token(&hash_a).await.unwrap(),
        Some(acme.id)
    );
    assert_eq!(
        store.tenant_for_token(&hash_a2).await.unwrap(),
        Some(acme.id)
    );
    assert_eq!(
        store.tenant_for_token(&hash_b).await.unwrap(),
        Some(beta.id)
    );
    assert_eq!(store.tenant_for_token(&[9u8; 32]).await.unwrap(), None);
    assert_eq!(store.tenant_for_token(&[]).await.unwrap(), None);

    assert_conflict(
        store.add_tenant_token(beta.id, &hash_a).await,
        "reused token hash",
    );
    assert_not_found(
        store.add_tenant_token(TenantId::new(), &[4u8; 32]).await,
        "tenant",
        "token for an unknown tenant",
    );
}

async fn providers_round_trip_with_sealed_credentials(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let tenant = store.create_tenant("acme").await.unwrap();
    let plaintext = r#"{"token":"hcloud-very-secret-4711"}"#;
    let with = provider(tenant.id, "hetzner", Some(plaintext));
    let without = provider(tenant.id, "bare", None);
    store.create_provider(&with).await.unwrap();
    store.create_provider(&without).await.unwrap();

    let got = store.get_provider(tenant.id, with.id).await.unwrap();
    assert_eq!(got, with);
    assert_eq!(got.credentials.as_ref().unwrap().expose(), plaintext);
    assert_eq!(
        store.get_provider(tenant.id, without.id).await.unwrap(),
        without
    );
    assert_eq!(
        store
            .get_provider_by_name(tenant.id, "hetzner")
            .await
            .unwrap(),
        with
    );
    assert_eq!(
        store.list_tenant_providers(tenant.id).await.unwrap(),
        vec![without.clone(), with.clone()],
        "ordered by name"
    );
    assert_eq!(store.list_all_providers().await.unwrap().len(), 2);

    // At rest: sealed, not the plaintext nor any recognizable part of it.
    let raw = db.raw().await;
    let row = sqlx::query("SELECT credentials FROM providers WHERE id = $1")
        .bind(with.id.to_string())
        .fetch_one(&raw)
        .await
        .unwrap();
    let sealed: Vec<u8> = row.try_get("credentials").unwrap();
    assert!(
        sealed.len() > plaintext.len(),
        "sealed value is {} bytes",
        sealed.len()
    );
    for needle in [plaintext.as_bytes(), b"very-secret", b"hcloud"] {
        assert!(
            !sealed.windows(needle.len()).any(|w| w == needle),
            "credentials column contains {:?} in clear",
            String::from_utf8_lossy(needle)
        );
    }
    let row = sqlx::query("SELECT credentials FROM providers WHERE id = $1")
        .bind(without.id.to_string())
        .fetch_one(&raw)
        .await
        .unwrap();
    let none: Option<Vec<u8>> = row.try_get("credentials").unwrap();
    assert_eq!(none, None);

    // A sealed value moved to another row does not open there (bound to its row).
    sqlx::query("UPDATE providers SET credentials = $1 WHERE id = $2")
        .bind(sealed)
        .bind(without.id.to_string())
        .execute(&raw)
        .await
        .unwrap();
    match store.get_provider(tenant.id, without.id).await {
        Err(Error::Unseal) => {}
        other => panic!("swapped credentials must not open, got {other:?}"),
    }
    raw.close().await;
}

async fn provider_names_are_unique_per_tenant(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let acme = store.create_tenant("acme").await.unwrap();
    let beta = store.create_tenant("beta").await.unwrap();
    store
        .create_provider(&provider(acme.id, "local", None))
        .await
        .unwrap();
    assert_conflict(
        store
            .create_provider(&provider(acme.id, "local", Some("x")))
            .await,
        "same provider name in one tenant",
    );
    // Another tenant may use the name.
    store
        .create_provider(&provider(beta.id, "local", None))
        .await
        .unwrap();
    assert_not_found(
        store
            .create_provider(&provider(TenantId::new(), "local", None))
            .await,
        "tenant",
        "provider of an unknown tenant",
    );
    assert_eq!(store.list_tenant_providers(acme.id).await.unwrap().len(), 1);
}

async fn tenants_are_isolated(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let (a, a_provider) = tenant_with_provider(store, "tenant-a").await;
    let (b, b_provider) = tenant_with_provider(store, "tenant-b").await;
    let a_machine = add_machine(store, a, a_provider).await;
    let b_machine = add_machine(store, b, b_provider).await;

    // Tenant A cannot see tenant B's provider or machine.
    assert_not_found(
        store.get_provider(a, b_provider).await,
        "provider",
        "A reads B's provider",
    );
    assert_not_found(
        store.get_provider_by_name(a, "nope").await,
        "provider",
        "unknown provider name",
    );
    assert_not_found(
        store.get_machine(Some(a), b_machine.id).await,
        "machine",
        "A reads B's machine",
    );
    assert_eq!(
        store
            .get_machine(Some(a), a_machine.id)
            .await
            .unwrap()
            .machine,
        a_machine
    );
    assert_eq!(
        store.get_machine(None, b_machine.id).await.unwrap().machine,
        b_machine
    );

    let listed = store
        .list_machines(&MachineFilter {
            tenant_id: Some(a),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|r| r.machine.id).collect::<Vec<_>>(),
        vec![a_machine.id]
    );
    let providers = store.list_tenant_providers(a).await.unwrap();
    assert_eq!(
        providers.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![a_provider]
    );

    // A cannot change, delete or use B's things.
    assert_not_found(
        store.delete_provider(a, b_provider).await,
        "provider",
        "A deletes B's provider",
    );
    let mut stolen = b_machine.clone();
    stolen.tenant_id = a;
    stolen.state = MachineState::Failed;
    assert_not_found(
        store
            .update_machine(&stolen, MachineState::Provisioning, None)
            .await,
        "machine",
        "A updates B's machine",
    );
    assert_eq!(
        store
            .get_machine(None, b_machine.id)
            .await
            .unwrap()
            .machine
            .state,
        MachineState::Provisioning,
        "B's machine must be unchanged"
    );
    let foreign = machine(a, b_provider);
    assert_not_found(
        store.insert_machine(&foreign, &spec()).await,
        "provider",
        "A provisions on B's provider",
    );

    // Forge configuration is per tenant.
    store
        .set_tenant_forge_config(&ForgeConfig {
            tenant_id: b,
            forge_type: ForgeType::Github,
            org: "b-org".into(),
            credentials: Some(Secret::new("ghp_b")),
            config: serde_json::json!({}),
            updated_at: nimbus_types::now(),
        })
        .await
        .unwrap();
    assert_eq!(store.get_tenant_forge_config(a).await.unwrap(), None);

    // Events are filtered by tenant.
    store
        .append_event(&Event::new(event::MACHINE_READY).tenant(a))
        .await
        .unwrap();
    store
        .append_event(&Event::new(event::MACHINE_READY).tenant(b))
        .await
        .unwrap();
    let events = store
        .list_events(&EventFilter {
            tenant_id: Some(a),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].tenant_id, Some(a));
}

async fn delete_provider_conflicts_while_machines_are_live(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let (tenant, provider_id) = tenant_with_provider(store, "acme").await;
    let mut machine = add_machine(store, tenant, provider_id).await;

    match store.delete_provider(tenant, provider_id).await {
        Err(Error::Conflict { entity }) => assert!(entity.contains("machine"), "{entity}"),
        other => {
            panic!("deleting a provider with a live machine: expected Conflict, got {other:?}")
        }
    }
    assert!(store.get_provider(tenant, provider_id).await.is_ok());

    walk(
        store,
        &mut machine,
        &[MachineState::Stopping, MachineState::Terminated],
    )
    .await;
    store.delete_provider(tenant, provider_id).await.unwrap();
    assert_not_found(
        store.get_provider(tenant, provider_id).await,
        "provider",
        "deleted provider",
    );
    assert_not_found(
        store.delete_provider(tenant, provider_id).await,
        "provider",
        "deleting twice",
    );
    // The terminated machine stays as history.
    let record = store.get_machine(Some(tenant), machine.id).await.unwrap();
    assert_eq!(record.machine.state, MachineState::Terminated);
    assert_eq!(store.machine_history(machine.id).await.unwrap().len(), 3);
    // And the name can be used again.
    store
        .create_provider(&provider(tenant, "local", None))
        .await
        .unwrap();
}

async fn forge_config_upsert(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let tenant = store.create_tenant("acme").await.unwrap();
    assert_eq!(
        store.get_tenant_forge_config(tenant.id).await.unwrap(),
        None
    );

    let first = ForgeConfig {
        tenant_id: tenant.id,
        forge_type: ForgeType::Github,
        org: "acme".into(),
        credentials: Some(Secret::new("-----BEGIN RSA PRIVATE KEY-----\nabc")),
        config: serde_json::json!({ "app_id": 42 }),
        updated_at: nimbus_types::now(),
    };
    store.set_tenant_forge_config(&first).await.unwrap();
    assert_eq!(
        store.get_tenant_forge_config(tenant.id).await.unwrap(),
        Some(first.clone())
    );

    let second = ForgeConfig {
        forge_type: ForgeType::Gitlab,
        org: "acme-group".into(),
        credentials: None,
        config: serde_json::json!({ "url": "https://gitlab.example" }),
        updated_at: nimbus_types::now(),
        ..first.clone()
    };
    store.set_tenant_forge_config(&second).await.unwrap();
    assert_eq!(
        store.get_tenant_forge_config(tenant.id).await.unwrap(),
        Some(second)
    );

    // Credentials sealed at rest.
    store.set_tenant_forge_config(&first).await.unwrap();
    let raw = db.raw().await;
    let row = sqlx::query("SELECT credentials FROM forge_configs WHERE tenant_id = $1")
        .bind(tenant.id.to_string())
        .fetch_one(&raw)
        .await
        .unwrap();
    let sealed: Vec<u8> = row.try_get("credentials").unwrap();
    assert!(
        !sealed.windows(10).any(|w| w == b"BEGIN RSA "),
        "forge credentials in clear"
    );
    raw.close().await;

    assert_not_found(
        store
            .set_tenant_forge_config(&ForgeConfig {
                tenant_id: TenantId::new(),
                ..first
            })
            .await,
        "tenant",
        "forge of an unknown tenant",
    );
}

async fn machines_insert_get_and_list_filters(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let (tenant, local) = tenant_with_provider(store, "acme").await;
    let other_provider = provider(tenant, "other", None);
    store.create_provider(&other_provider).await.unwrap();

    // Every field survives the round trip.
    let mut full = machine(tenant, local);
    full.ip_address = Some("10.0.0.7".into());
    full.ssh_public_key = Some("ssh-ed25519 AAAA test".into());
    full.instance_type = Some("mac2.metal".into());
    full.image = Image {
        id: Some("ami-123".into()),
        image_type: ImageType::Ami,
        state: ImageState::Installed,
        installed_at: Some(nimbus_types::now()),
    };
    full.provider_metadata = ProviderMetadata {
        instance_id: Some("i-abc".into()),
        host_id: Some("h-1".into()),
        minimum_allocation_hours: Some(24),
        extra: [("az".to_owned(), "eu-1a".to_owned())].into(),
    };
    full.error = Some("previous attempt: throttled".into());
    full.setup_progress = Some(SetupProgress {
        steps: vec![SetupStep {
            name: "install".into(),
            status: StepStatus::Completed,
            started_at: Some(nimbus_types::now()),
            finished_at: Some(nimbus_types::now()),
            error: None,
        }],
    });
    let mut full_spec = spec();
    full_spec.image_id = Some("ami-123".into());
    full_spec.image_type = ImageType::Ami;
    store.insert_machine(&full, &full_spec).await.unwrap();
    let record = store.get_machine(Some(tenant), full.id).await.unwrap();
    assert_eq!(record.machine, full);
    assert_eq!(record.spec, full_spec);

    assert_conflict(
        store.insert_machine(&full, &full_spec).await,
        "same machine id twice",
    );

    let second = add_machine(store, tenant, other_provider.id).await;
    let mut third = add_machine(store, tenant, local).await;
    walk(
        store,
        &mut third,
        &[MachineState::Failed, MachineState::Terminated],
    )
    .await;

    let ids = |records: Vec<nimbus_store::MachineRecord>| {
        records
            .into_iter()
            .map(|r| r.machine.id)
            .collect::<Vec<_>>()
    };
    let all = store
        .list_machines(&MachineFilter {
            include_terminated: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ids(all),
        vec![full.id, second.id, third.id],
        "ordered by created_at, id"
    );
    let live = store
        .list_machines(&MachineFilter::default())
        .await
        .unwrap();
    assert_eq!(
        ids(live),
        vec![full.id, second.id],
        "terminated excluded by default"
    );
    let by_provider = store
        .list_machines(&MachineFilter {
            tenant_id: Some(tenant),
            provider_id: Some(local),
            include_terminated: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(by_provider), vec![full.id, third.id]);
    let other_tenant = store
        .list_machines(&MachineFilter {
            tenant_id: Some(TenantId::new()),
            include_terminated: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(other_tenant.is_empty());
}

async fn machine_transitions_and_history(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let (tenant, provider_id) = tenant_with_provider(store, "acme").await;
    let mut machine = add_machine(store, tenant, provider_id).await;

    walk(
        store,
        &mut machine,
        &[
            MachineState::ImageInstalling,
            MachineState::Ready,
            MachineState::Running,
        ],
    )
    .await;

    // Saving without a state change updates fields but adds no history.
    machine.ip_address = Some("127.0.0.1".into());
    store
        .update_machine(&machine, MachineState::Running, None)
        .await
        .unwrap();
    let stored = store
        .get_machine(Some(tenant), machine.id)
        .await
        .unwrap()
        .machine;
    assert_eq!(stored.ip_address.as_deref(), Some("127.0.0.1"));

    // Illegal moves are rejected and change nothing.
    for illegal in [
        MachineState::Provisioning,
        MachineState::ImageInstalling,
        MachineState::Terminated,
    ] {
        let mut attempt = machine.clone();
        attempt.state = illegal;
        attempt.ip_address = Some("10.9.9.9".into());
        match store
            .update_machine(&attempt, MachineState::Running, None)
            .await
        {
            Err(Error::Transition(err)) => {
                assert_eq!((err.from, err.to), (MachineState::Running, illegal));
            }
            other => panic!("running -> {illegal}: expected Transition error, got {other:?}"),
        }
    }
    let stored = store
        .get_machine(Some(tenant), machine.id)
        .await
        .unwrap()
        .machine;
    assert_eq!(stored.state, MachineState::Running);
    assert_eq!(stored.ip_address.as_deref(), Some("127.0.0.1"));

    walk(
        store,
        &mut machine,
        &[
            MachineState::Ready,
            MachineState::Stopping,
            MachineState::Terminated,
        ],
    )
    .await;
    // Nothing leaves terminated.
    let mut zombie = machine.clone();
    zombie.state = MachineState::Failed;
    assert!(matches!(
        store
            .update_machine(&zombie, MachineState::Terminated, None)
            .await,
        Err(Error::Transition(_))
    ));

    let history = store.machine_history(machine.id).await.unwrap();
    let states: Vec<MachineState> = history.iter().map(|change| change.state).collect();
    use MachineState::*;
    assert_eq!(
        states,
        vec![
            Provisioning,
            ImageInstalling,
            Ready,
            Running,
            Ready,
            Stopping,
            Terminated
        ]
    );
    assert_eq!(history[0].reason, None);
    assert_eq!(history[1].reason.as_deref(), Some("to image_installing"));
    assert!(
        history.windows(2).all(|w| w[0].at <= w[1].at),
        "history timestamps must not go backwards: {history:?}"
    );
}

async fn concurrent_updates_see_stale_state(db: &TestDb) {
    let store = db.store.clone();
    let (tenant, provider_id) = tenant_with_provider(&store, "acme").await;
    let machine = add_machine(&store, tenant, provider_id).await;

    // Stale expectation: someone else moved the machine first.
    let mut ready = machine.clone();
    ready.state = MachineState::Ready;
    store
        .update_machine(&ready, MachineState::Provisioning, None)
        .await
        .unwrap();
    let mut failed = machine.clone();
    failed.state = MachineState::Failed;
    failed.error = Some("late".into());
    match store
        .update_machine(&failed, MachineState::Provisioning, None)
        .await
    {
        Err(Error::StaleState {
            id,
            expected,
            actual,
        }) => {
            assert_eq!(id, machine.id);
            assert_eq!(expected, MachineState::Provisioning);
            assert_eq!(actual, MachineState::Ready);
        }
        other => panic!("expected StaleState, got {other:?}"),
    }
    let stored = store.get_machine(None, machine.id).await.unwrap().machine;
    assert_eq!(
        (stored.state, stored.error.as_deref()),
        (MachineState::Ready, None)
    );

    // Racing writers with the same expectation: exactly one wins.
    let mut tasks = Vec::new();
    for idx in 0..10 {
        let store = store.clone();
        let mut attempt = stored.clone();
        attempt.state = if idx % 2 == 0 {
            MachineState::Running
        } else {
            MachineState::Stopping
        };
        tasks.push(tokio::spawn(async move {
            store
                .update_machine(&attempt, MachineState::Ready, Some("race"))
                .await
        }));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => wins += 1,
            Err(Error::StaleState { .. }) => {}
            Err(err) => panic!("racing update: unexpected error {err}"),
        }
    }
    assert_eq!(wins, 1, "exactly one of the racing updates must win");
    let history = store.machine_history(machine.id).await.unwrap();
    assert_eq!(history.len(), 3, "{history:?}");
}

async fn unknown_ids_are_not_found(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let (tenant, provider_id) = tenant_with_provider(store, "acme").await;
    assert_not_found(
        store.get_machine(None, MachineId::new()).await,
        "machine",
        "get_machine",
    );
    assert_not_found(
        store.machine_history(MachineId::new()).await,
        "machine",
        "machine_history",
    );
    assert_not_found(
        store.get_provider(tenant, ProviderId::new()).await,
        "provider",
        "get_provider",
    );
    assert_not_found(
        store.delete_provider(tenant, ProviderId::new()).await,
        "provider",
        "delete_provider",
    );
    let mut ghost = machine(tenant, provider_id);
    ghost.state = MachineState::Failed;
    assert_not_found(
        store
            .update_machine(&ghost, MachineState::Provisioning, None)
            .await,
        "machine",
        "update_machine",
    );
    assert_not_found(
        store
            .insert_machine(&machine(tenant, ProviderId::new()), &spec())
            .await,
        "provider",
        "insert_machine with an unknown provider",
    );
    assert!(
        store
            .list_machines(&MachineFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn events_append_and_list(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let (tenant, provider_id) = tenant_with_provider(store, "acme").await;
    let machine = add_machine(store, tenant, provider_id).await;

    let full = Event::new(event::MACHINE_PROVISION_FAILURE)
        .tenant(tenant)
        .machine(machine.id)
        .duration(Duration::from_millis(1500))
        .error("capacity: no hosts")
        .meta("provider", "local")
        .meta("attempt", 2);
    let seq_full = store.append_event(&full).await.unwrap();
    let seq_bare = store
        .append_event(&Event::new(event::SSH_CONNECT_START))
        .await
        .unwrap();
    let seq_tenant = store
        .append_event(&Event::new(event::MACHINE_READY).tenant(tenant))
        .await
        .unwrap();
    assert!(seq_full > 0 && seq_full < seq_bare && seq_bare < seq_tenant);

    let all = store.list_events(&EventFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![seq_full, seq_bare, seq_tenant]
    );
    assert_eq!(
        all[0],
        Event {
            seq: seq_full,
            ..full
        }
    );
    assert_eq!(all[1].tenant_id, None);
    assert!(all[1].metadata.is_empty());

    let after = store
        .list_events(&EventFilter {
            after_seq: Some(seq_full),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        after.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![seq_bare, seq_tenant]
    );
    let limited = store
        .list_events(&EventFilter {
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        limited.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![seq_full]
    );
    let of_tenant = store
        .list_events(&EventFilter {
            tenant_id: Some(tenant),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        of_tenant.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![seq_full, seq_tenant]
    );
    let of_machine = store
        .list_events(&EventFilter {
            tenant_id: Some(tenant),
            machine_id: Some(machine.id),
            after_seq: Some(0),
            limit: Some(10),
        })
        .await
        .unwrap();
    assert_eq!(
        of_machine.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![seq_full]
    );

    // The default limit is 1000.
    for _ in 0..1005 {
        store
            .append_event(&Event::new(event::SSH_COMMAND_START))
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .list_events(&EventFilter::default())
            .await
            .unwrap()
            .len(),
        1000
    );
}

/// 50 writers at once (each creating a tenant, a provider, machines, history and events) never
/// see "database is locked" or any other error.
async fn concurrent_writers(db: &TestDb) {
    let store = db.store.clone();
    let mut tasks = Vec::new();
    for idx in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let (tenant, provider_id) = tenant_with_provider(&store, &format!("t{idx}")).await;
            let mut machine = add_machine(&store, tenant, provider_id).await;
            walk(
                &store,
                &mut machine,
                &[MachineState::Ready, MachineState::Running],
            )
            .await;
            for _ in 0..5 {
                store
                    .append_event(&Event::new(event::MACHINE_READY).tenant(tenant))
                    .await
                    .map_err(|err| format!("append_event: {err}"))?;
            }
            store
                .add_tenant_token(tenant, format!("token-{idx}").as_bytes())
                .await
                .map_err(|err| format!("add_tenant_token: {err}"))?;
            Ok::<_, String>(tenant)
        }));
    }
    let mut tenants = HashSet::new();
    for (idx, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(Ok(tenant)) => {
                tenants.insert(tenant);
            }
            Ok(Err(err)) => panic!("writer {idx} failed: {err}"),
            Err(err) => panic!("writer {idx} panicked: {err}"),
        }
    }
    assert_eq!(tenants.len(), 50);
    assert_eq!(store.list_tenants().await.unwrap().len(), 50);
    assert_eq!(
        store
            .list_machines(&MachineFilter::default())
            .await
            .unwrap()
            .len(),
        50
    );
    let events = store
        .list_events(&EventFilter {
            limit: Some(10_000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 250);
    let seqs: HashSet<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs.len(), 250, "event sequence numbers must be unique");
}

async fn reopening_keeps_data(db: &TestDb) {
    let (tenant, provider_id) = tenant_with_provider(&db.store, "acme").await;
    let secret = provider(tenant, "secret", Some("s3cr3t"));
    db.store.create_provider(&secret).await.unwrap();
    let mut machine = add_machine(&db.store, tenant, provider_id).await;
    walk(&db.store, &mut machine, &[MachineState::Ready]).await;
    let seq = db
        .store
        .append_event(&Event::new(event::MACHINE_READY))
        .await
        .unwrap();

    let store = db.reopen(db.key.clone()).await;
    assert_eq!(store.get_tenant_by_name("acme").await.unwrap().id, tenant);
    assert_eq!(store.get_provider(tenant, secret.id).await.unwrap(), secret);
    assert_eq!(
        store
            .get_machine(Some(tenant), machine.id)
            .await
            .unwrap()
            .machine,
        machine
    );
    assert_eq!(store.machine_history(machine.id).await.unwrap().len(), 2);
    let events = store.list_events(&EventFilter::default()).await.unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![seq]);
    // Sequence numbers keep growing after a reopen.
    let next = store
        .append_event(&Event::new(event::MACHINE_READY))
        .await
        .unwrap();
    assert!(next > seq);
    store.close().await;
}

async fn wrong_seal_key_cannot_open_credentials(db: &TestDb) {
    let tenant = db.store.create_tenant("acme").await.unwrap();
    let secret = provider(tenant.id, "secret", Some("s3cr3t"));
    let plain = provider(tenant.id, "plain", None);
    db.store.create_provider(&secret).await.unwrap();
    db.store.create_provider(&plain).await.unwrap();
    db.store
        .set_tenant_forge_config(&ForgeConfig {
            tenant_id: tenant.id,
            forge_type: ForgeType::Forgejo,
            org: "acme".into(),
            credentials: Some(Secret::new("forgejo-token")),
            config: serde_json::json!({}),
            updated_at: nimbus_types::now(),
        })
        .await
        .unwrap();

    let store = db.reopen(SealKey::generate()).await;
    for (what, result) in [
        (
            "get_provider",
            store.get_provider(tenant.id, secret.id).await.map(|_| ()),
        ),
        (
            "list_tenant_providers",
            store.list_tenant_providers(tenant.id).await.map(|_| ()),
        ),
        (
            "get_tenant_forge_config",
            store.get_tenant_forge_config(tenant.id).await.map(|_| ()),
        ),
    ] {
        match result {
            Err(Error::Unseal) => {}
            other => panic!("{what} with the wrong key: expected Error::Unseal, got {other:?}"),
        }
    }
    let message = Error::Unseal.to_string();
    assert!(message.contains("NIMBUS_SECRET_KEY"), "{message}");
    // Rows without credentials still read fine; everything else is intact.
    assert_eq!(
        store.get_provider(tenant.id, plain.id).await.unwrap(),
        plain
    );
    assert_eq!(store.get_tenant(tenant.id).await.unwrap(), tenant);
    store.close().await;
}

// ---------------------------------------------------------------------------------------------
// Pools and demand

fn pool(tenant_id: TenantId, provider_id: ProviderId, name: &str) -> Pool {
    let now = nimbus_types::now();
    let mut settings = PoolSettings::new(
        vec!["self-hosted".into(), "linux".into()],
        Os::Linux,
        Arch::X86_64,
        10,
    );
    settings.min_idle = 2;
    settings.validate().expect("valid settings");
    Pool {
        id: PoolId::new(),
        tenant_id,
        name: name.to_owned(),
        provider_id,
        settings,
        created_at: now,
        updated_at: now,
    }
}

async fn pools_crud_and_names_unique_per_tenant(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let (tenant, provider_id) = tenant_with_provider(store, "acme").await;
    let (other, other_provider) = tenant_with_provider(store, "globex").await;
    let linux = pool(tenant, provider_id, "linux");
    store.create_pool(&linux).await.unwrap();
    assert_eq!(store.get_pool(tenant, linux.id).await.unwrap(), linux);
    assert_eq!(
        store.get_pool_by_name(tenant, "linux").await.unwrap(),
        linux
    );
    assert_conflict(
        store.create_pool(&pool(tenant, provider_id, "linux")).await,
        "a second pool named linux",
    );
    // Names are per tenant; another tenant cannot see or reach the pool.
    store
        .create_pool(&pool(other, other_provider, "linux"))
        .await
        .unwrap();
    assert_not_found(
        store.get_pool(other, linux.id).await,
        "pool",
        "other tenant",
    );
    // A pool needs a provider of its own tenant.
    assert_not_found(
        store.create_pool(&pool(tenant, other_provider, "x")).await,
        "provider",
        "another tenant's provider",
    );
    let mac = pool(tenant, provider_id, "mac");
    store.create_pool(&mac).await.unwrap();
    let names: Vec<String> = store
        .list_pools(Some(tenant))
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["linux", "mac"]);
    assert_eq!(store.list_pools(None).await.unwrap().len(), 3);

    let mut changed = linux.clone();
    changed.settings.max = 20;
    changed.settings.schedules = vec!["0 8 * * 1-5@Europe/Berlin=5".parse().unwrap()];
    changed.updated_at = nimbus_types::now();
    store.update_pool(&changed).await.unwrap();
    let read = store.get_pool(tenant, linux.id).await.unwrap();
    assert_eq!(read.settings, changed.settings);
    assert_eq!(read.created_at, linux.created_at);
    let mut missing = changed.clone();
    missing.id = PoolId::new();
    assert_not_found(store.update_pool(&missing).await, "pool", "update unknown");

    store.delete_pool(tenant, mac.id).await.unwrap();
    assert_not_found(store.get_pool(tenant, mac.id).await, "pool", "deleted");
    assert_not_found(
        store.delete_pool(tenant, mac.id).await,
        "pool",
        "deleted twice",
    );
}

async fn pools_guard_their_machines_and_provider(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let (tenant, provider_id) = tenant_with_provider(store, "acme").await;
    let linux = pool(tenant, provider_id, "linux");
    store.create_pool(&linux).await.unwrap();
    let mut machine = machine(tenant, provider_id);
    machine.pool_id = Some(linux.id);
    store.insert_machine(&machine, &spec()).await.unwrap();

    match store.delete_pool(tenant, linux.id).await {
        Err(Error::Conflict { entity }) => assert!(entity.contains("machine"), "{entity}"),
        other => panic!("deleting a pool with a live machine: {other:?}"),
    }
    walk(store, &mut machine, &[MachineState::Failed]).await;
    // A failed machine does not hold the pool (it is cleaned up by the provider reconcile).
    match store.delete_provider(tenant, provider_id).await {
        Err(Error::Conflict { entity }) => assert!(entity.contains("machine"), "{entity}"),
        other => panic!("deleting a provider with a failed machine: {other:?}"),
    }
    walk(
        store,
        &mut machine,
        &[MachineState::Stopping, MachineState::Terminated],
    )
    .await;
    match store.delete_provider(tenant, provider_id).await {
        Err(Error::Conflict { entity }) => assert!(entity.contains("pool"), "{entity}"),
        other => panic!("deleting a provider a pool uses: {other:?}"),
    }
    store.delete_pool(tenant, linux.id).await.unwrap();
    store.delete_provider(tenant, provider_id).await.unwrap();
    // The machine keeps its pool id as history.
    let record = store.get_machine(Some(tenant), machine.id).await.unwrap();
    assert_eq!(record.machine.pool_id, Some(linux.id));
}

async fn machines_carry_pool_and_usage(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let (tenant, provider_id) = tenant_with_provider(store, "acme").await;
    let linux = pool(tenant, provider_id, "linux");
    store.create_pool(&linux).await.unwrap();
    let mut pooled = machine(tenant, provider_id);
    pooled.pool_id = Some(linux.id);
    store.insert_machine(&pooled, &spec()).await.unwrap();
    let by_hand = add_machine(store, tenant, provider_id).await;

    let idle_since = nimbus_types::now();
    pooled.usage = RunnerUsage {
        jobs_run: 3,
        idle_since: Some(idle_since),
        runner_version: Some("2.321.0".into()),
    };
    walk(store, &mut pooled, &[MachineState::Ready]).await;
    let read = store.get_machine(Some(tenant), pooled.id).await.unwrap();
    assert_eq!(read.machine.usage, pooled.usage);

    let filter = MachineFilter {
        pool_id: Some(linux.id),
        ..Default::default()
    };
    let ids: Vec<MachineId> = store
        .list_machines(&filter)
        .await
        .unwrap()
        .iter()
        .map(|r| r.machine.id)
        .collect();
    assert_eq!(ids, [pooled.id]);

    // terminated_since brings back machines that ended recently, and only those.
    let before = nimbus_types::now();
    walk(
        store,
        &mut pooled,
        &[MachineState::Stopping, MachineState::Terminated],
    )
    .await;
    assert!(store.list_machines(&filter).await.unwrap().is_empty());
    let since = |at| MachineFilter {
        pool_id: Some(linux.id),
        terminated_since: Some(at),
        ..Default::default()
    };
    assert_eq!(store.list_machines(&since(before)).await.unwrap().len(), 1);
    let narrow = store.list_pool_machines(tenant, before).await.unwrap();
    assert_eq!(narrow.len(), 1, "pooled machines only: {narrow:?}");
    assert_eq!(
        (narrow[0].id, narrow[0].pool_id, narrow[0].state),
        (pooled.id, linux.id, MachineState::Terminated)
    );
    assert_eq!(narrow[0].usage, pooled.usage);
    // What changed since an instant: the terminated machine (its last update), nothing later.
    let changed = store
        .list_pool_machines_changed(tenant, before)
        .await
        .unwrap();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].state, MachineState::Terminated);
    let later_change = nimbus_types::now() + time::Duration::minutes(1);
    assert!(
        store
            .list_pool_machines_changed(tenant, later_change)
            .await
            .unwrap()
            .is_empty()
    );
    let later = nimbus_types::now() + time::Duration::minutes(1);
    assert!(store.list_machines(&since(later)).await.unwrap().is_empty());
    let all = store
        .list_machines(&MachineFilter {
            tenant_id: Some(tenant),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].machine.id, by_hand.id);
    assert_eq!(all[0].machine.pool_id, None);
}

fn job(id: u64, status: JobStatus, runner: Option<&str>, at: time::OffsetDateTime) -> JobRecord {
    JobRecord {
        job: ForgeJob {
            job_id: id,
            run_id: 1000 + id % 1000,
            repository: "acme/app".into(),
            labels: LabelSet::new(["self-hosted", "linux"]),
            status,
        },
        runner_name: runner.map(str::to_owned),
        first_seen: at,
        updated_at: at,
        source: Source::Webhook,
    }
}

fn at(seconds: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(1_800_000_000 + seconds).unwrap()
}

async fn demand_records_forward_only_and_counts_deliveries_once(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let tenant = store.create_tenant("acme").await.unwrap().id;
    let other = store.create_tenant("globex").await.unwrap().id;
    let queued = job(1, JobStatus::Queued, None, at(0));
    assert_eq!(
        store
            .record_job(tenant, Some("d-1"), &queued)
            .await
            .unwrap(),
        Applied::Recorded
    );
    // A redelivery under the same id is a replay, whatever it carries.
    let started = job(1, JobStatus::InProgress, Some("nimbus-x"), at(5));
    assert_eq!(
        store
            .record_job(tenant, Some("d-1"), &started)
            .await
            .unwrap(),
        Applied::Replay
    );
    assert_eq!(
        store
            .record_job(tenant, Some("d-2"), &started)
            .await
            .unwrap(),
        Applied::Recorded
    );
    // A late queued delivery is stale; its redelivery a replay.
    let late = job(1, JobStatus::Queued, None, at(6));
    assert_eq!(
        store.record_job(tenant, Some("d-3"), &late).await.unwrap(),
        Applied::Stale
    );
    assert_eq!(
        store.record_job(tenant, Some("d-3"), &late).await.unwrap(),
        Applied::Replay
    );
    // Completion without a runner name keeps the one the book has; first_seen stays.
    let done = job(1, JobStatus::Completed, None, at(9));
    assert_eq!(
        store.record_job(tenant, None, &done).await.unwrap(),
        Applied::Recorded
    );
    let jobs = store.list_jobs(tenant).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].job.status, JobStatus::Completed);
    assert_eq!(jobs[0].runner_name.as_deref(), Some("nimbus-x"));
    assert_eq!(jobs[0].first_seen, at(0));
    assert_eq!(jobs[0].updated_at, at(9));
    assert_eq!(jobs[0].job.labels, LabelSet::new(["linux", "self-hosted"]));

    // Delivery ids and jobs are the tenant's own.
    assert_eq!(
        store.record_job(other, Some("d-1"), &queued).await.unwrap(),
        Applied::Recorded
    );
    assert_eq!(
        store.list_jobs(other).await.unwrap()[0].job.status,
        JobStatus::Queued
    );
    // Ids too large for SQL are refused, not wrapped.
    let huge = job(u64::MAX, JobStatus::Queued, None, at(0));
    assert!(store.record_job(tenant, None, &huge).await.is_err());
    assert_not_found(
        store
            .record_job(TenantId::new(), Some("d-9"), &queued)
            .await,
        "tenant",
        "unknown tenant",
    );
    // A failed recording left the id free.
    assert_eq!(
        store.record_job(other, Some("d-9"), &queued).await.unwrap(),
        Applied::Recorded
    );
}

async fn demand_corrections_compare_and_swap(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let tenant = store.create_tenant("acme").await.unwrap().id;
    let mut missed = job(7, JobStatus::Queued, None, at(0));
    missed.source = Source::Reconcile;
    assert!(store.correct_job(tenant, &missed, None).await.unwrap());
    // Inserting again (another reconcile raced us) does nothing.
    assert!(!store.correct_job(tenant, &missed, None).await.unwrap());

    let mut closed = missed.clone();
    closed.job.status = JobStatus::Completed;
    closed.updated_at = at(10);
    // A webhook moved the job since the reconcile read it: the correction loses.
    store
        .record_job(
            tenant,
            None,
            &job(7, JobStatus::InProgress, Some("r"), at(5)),
        )
        .await
        .unwrap();
    assert!(
        !store
            .correct_job(tenant, &closed, Some(at(0)))
            .await
            .unwrap()
    );
    assert_eq!(
        store.list_jobs(tenant).await.unwrap()[0].job.status,
        JobStatus::InProgress
    );
    assert!(
        store
            .correct_job(tenant, &closed, Some(at(5)))
            .await
            .unwrap()
    );
    let jobs = store.list_jobs(tenant).await.unwrap();
    assert_eq!(jobs[0].job.status, JobStatus::Completed);
    assert_eq!(jobs[0].source, Source::Reconcile);
}

async fn demand_prunes_finished_jobs_and_old_deliveries(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let tenant = store.create_tenant("acme").await.unwrap().id;
    for (id, status, seconds) in [
        (1, JobStatus::Completed, 0),
        (2, JobStatus::Completed, 100),
        (3, JobStatus::Queued, 0),
        (4, JobStatus::InProgress, 0),
    ] {
        let delivery = format!("d-{id}");
        store
            .record_job(tenant, Some(&delivery), &job(id, status, None, at(seconds)))
            .await
            .unwrap();
    }
    let changed: Vec<u64> = store
        .list_jobs_changed(tenant, at(50))
        .await
        .unwrap()
        .iter()
        .map(|r| r.job.job_id)
        .collect();
    assert_eq!(
        changed,
        [2],
        "only job 2 was updated at or after the instant"
    );
    store.prune_demand(at(50), at(50)).await.unwrap();
    let ids: Vec<u64> = store
        .list_jobs(tenant)
        .await
        .unwrap()
        .iter()
        .map(|r| r.job.job_id)
        .collect();
    // Open jobs stay however old; finished ones go after the cut-off.
    assert_eq!(ids, [2, 3, 4]);
    // d-2 was received after the cut-off and is remembered; d-1 is forgotten.
    let again = job(2, JobStatus::Completed, None, at(100));
    assert_eq!(
        store.record_job(tenant, Some("d-2"), &again).await.unwrap(),
        Applied::Replay
    );
    assert_eq!(
        store
            .record_job(
                tenant,
                Some("d-1"),
                &job(1, JobStatus::Completed, None, at(0))
            )
            .await
            .unwrap(),
        Applied::Recorded
    );
}

async fn job_history_keeps_finished_jobs_past_pruning(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let tenant = store.create_tenant("acme").await.unwrap().id;
    let other = store.create_tenant("globex").await.unwrap().id;
    // Job 1: queued at 0, started at 30 on runner r-1, finished at 90.
    for (status, runner, seconds) in [
        (JobStatus::Queued, None, 0),
        (JobStatus::InProgress, Some("r-1"), 30),
        (JobStatus::Completed, None, 90),
    ] {
        let delivery = format!("d-1-{seconds}");
        let mut record = job(1, status, runner, at(seconds));
        record.first_seen = at(seconds);
        store
            .record_job(tenant, Some(&delivery), &record)
            .await
            .unwrap();
    }
    // Job 2: first seen completed (its start is unknown); its redelivery changes nothing.
    let done = job(2, JobStatus::Completed, Some("r-2"), at(200));
    store.record_job(tenant, Some("d-2"), &done).await.unwrap();
    let mut late = done.clone();
    late.updated_at = at(400);
    store.record_job(tenant, None, &late).await.unwrap();
    // Job 3 is still running, job 4 is another tenant's: neither is in this history.
    store
        .record_job(
            tenant,
            None,
            &job(3, JobStatus::InProgress, Some("r-1"), at(300)),
        )
        .await
        .unwrap();
    store
        .record_job(other, None, &job(4, JobStatus::Completed, None, at(300)))
        .await
        .unwrap();
    // Job 5 is completed by a demand reconcile's correction.
    let mut missed = job(5, JobStatus::Queued, None, at(250));
    missed.source = Source::Reconcile;
    assert!(store.correct_job(tenant, &missed, None).await.unwrap());
    let mut closed = missed.clone();
    closed.job.status = JobStatus::Completed;
    closed.updated_at = at(500);
    assert!(
        store
            .correct_job(tenant, &closed, Some(at(250)))
            .await
            .unwrap()
    );

    // The demand book forgets finished jobs; the history keeps them.
    store.prune_demand(at(10_000), at(10_000)).await.unwrap();
    let history = store.list_job_history(tenant, at(0)).await.unwrap();
    let summary: Vec<_> = history
        .iter()
        .map(|j| {
            (
                j.job_id,
                j.runner_name.as_deref(),
                j.queued_at,
                j.started_at,
                j.finished_at,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, Some("r-1"), at(0), Some(at(30)), at(90)),
            (2, Some("r-2"), at(200), None, at(200)),
            (5, None, at(250), None, at(500)),
        ]
    );
    assert_eq!(history[0].run_time(), time::Duration::seconds(60));
    assert_eq!(history[0].labels, LabelSet::new(["self-hosted", "linux"]));
    assert_eq!(history[2].run_time(), time::Duration::seconds(250));
    // `since` is on the finish time.
    let recent: Vec<u64> = store
        .list_job_history(tenant, at(150))
        .await
        .unwrap()
        .iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(recent, [2, 5]);
    assert_eq!(store.list_job_history(other, at(0)).await.unwrap().len(), 1);
    // Pruning the history goes by the finish time, for every tenant.
    assert_eq!(store.prune_job_history(at(350)).await.unwrap(), 3);
    let left: Vec<u64> = store
        .list_job_history(tenant, at(0))
        .await
        .unwrap()
        .iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(left, [5]);
    assert!(
        store
            .list_job_history(other, at(0))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn tenant_budgets(db: &TestDb) {
    let store: &dyn Storage = &db.store;
    let tenant = store.create_tenant("acme").await.unwrap().id;
    assert_eq!(store.get_tenant_budget(tenant).await.unwrap(), None);
    store.set_tenant_budget(tenant, Some(1250.5)).await.unwrap();
    assert_eq!(store.get_tenant_budget(tenant).await.unwrap(), Some(1250.5));
    store.set_tenant_budget(tenant, None).await.unwrap();
    assert_eq!(store.get_tenant_budget(tenant).await.unwrap(), None);
    assert_not_found(
        store.set_tenant_budget(TenantId::new(), Some(1.0)).await,
        "tenant",
        "unknown tenant",
    );
    assert_not_found(
        store.get_tenant_budget(TenantId::new()).await,
        "tenant",
        "unknown tenant",
    );
}

fn ci_run(tenant_id: TenantId, delivery: &str, workflow: &str) -> nimbus_store::CiRun {
    nimbus_store::CiRun {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id,
        delivery_id: delivery.into(),
        repository: "app".into(),
        workflow: workflow.into(),
        name: "ci".into(),
        number: None,
        sha: "a".repeat(40),
        git_ref: "refs/heads/main".into(),
        pusher: "alice".into(),
        concurrency_group: Some("deploy-refs/heads/main".into()),
        error: None,
        active: true,
        created_at: at(10),
        updated_at: at(10),
    }
}

fn ci_job(run: &nimbus_store::CiRun, id: u64, key: &str) -> nimbus_store::CiJob {
    nimbus_store::CiJob {
        id,
        run_id: run.id.clone(),
        tenant_id: run.tenant_id,
        key: key.into(),
        attempt: 1,
        plan: serde_json::json!({"key": key, "steps": []}),
        labels: vec!["linux".into()],
        state: nimbus_store::CiJobState::Pending,
        machine_id: None,
        created_at: at(10),
        updated_at: at(10),
    }
}

async fn ci_runs_and_jobs(db: &TestDb) {
    use nimbus_store::CiJobState::*;
    let store: &dyn Storage = &db.store;
    let (tenant, provider) = tenant_with_provider(store, "acme").await;
    let run = ci_run(tenant, "delivery-1", ".nimbus/workflows/ci.yml");
    let jobs = [
        ci_job(&run, 1 << 40, "lint"),
        ci_job(&run, (1 << 40) + 1, "test (a, 1)"),
    ];
    assert!(store.insert_ci_run(&run, &jobs).await.unwrap());
    // A redelivered push writes nothing, not even its jobs.
    let again = ci_run(tenant, "delivery-1", ".nimbus/workflows/ci.yml");
    assert!(
        !store
            .insert_ci_run(&again, &[ci_job(&again, 7, "x")])
            .await
            .unwrap()
    );
    assert_eq!(store.list_ci_jobs(&again.id).await.unwrap(), vec![]);

    assert_eq!(store.get_ci_run(&run.id).await.unwrap(), run);
    assert_eq!(store.find_ci_run(tenant, "app", 1).await.unwrap(), None);
    store.set_ci_run_number(&run.id, 1).await.unwrap();
    let found = store.find_ci_run(tenant, "app", 1).await.unwrap().unwrap();
    assert_eq!(
        (found.id.as_str(), found.number),
        (run.id.as_str(), Some(1))
    );
    assert_eq!(store.list_active_ci_runs().await.unwrap().len(), 1);

    // Jobs move by compare-and-swap on their state.
    let listed = store.list_ci_jobs(&run.id).await.unwrap();
    assert_eq!(listed, jobs.to_vec());
    let machine = add_machine(store, tenant, provider).await;
    let mut queued = listed[0].clone();
    queued.state = Queued;
    assert!(store.update_ci_job(&queued, Pending).await.unwrap());
    assert!(
        !store.update_ci_job(&queued, Pending).await.unwrap(),
        "stale"
    );
    let mut running = queued.clone();
    running.state = Running;
    running.machine_id = Some(machine.id);
    assert!(store.update_ci_job(&running, Queued).await.unwrap());
    let in_flight = store.list_ci_jobs_in(&[Queued, Running]).await.unwrap();
    assert_eq!(in_flight, vec![running.clone()]);
    assert_eq!(store.list_ci_jobs_in(&[]).await.unwrap(), vec![]);

    // A re-run replaces an attempt atomically.
    let mut next = ci_job(&run, (1 << 40) + 5, "lint");
    next.attempt = 2;
    store.replace_ci_job(running.id, &next).await.unwrap();
    let keys: Vec<(String, u32)> = store
        .list_ci_jobs(&run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|j| (j.key, j.attempt))
        .collect();
    assert_eq!(
        keys,
        [("test (a, 1)".to_owned(), 1), ("lint".to_owned(), 2)]
    );

    store.set_ci_run_active(&run.id, false).await.unwrap();
    assert!(store.list_active_ci_runs().await.unwrap().is_empty());
    assert_not_found(store.get_ci_run("nope").await, "ci run", "unknown run");
    // Runs go with their tenant.
    let err = store
        .insert_ci_run(&ci_run(TenantId::new(), "d", "w"), &[])
        .await;
    assert!(
        err.is_err(),
        "a run of an unknown tenant is refused: {err:?}"
    );
}

fn enrolment_token(
    tenant_id: TenantId,
    name: &str,
    expires_in: i64,
) -> nimbus_store::EnrolmentToken {
    let now = nimbus_types::now();
    nimbus_store::EnrolmentToken {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id,
        agent_name: name.into(),
        created_at: now,
        expires_at: now + time::Duration::seconds(expires_in),
        used_at: None,
    }
}

fn agent_op(agent_id: &str, bmc: &str, seconds: i64) -> nimbus_store::AgentOperation {
    nimbus_store::AgentOperation {
        id: uuid::Uuid::new_v4().to_string(),
        agent_id: agent_id.into(),
        bmc: bmc.into(),
        op: serde_json::json!({"op": "power_state"}),
        state: nimbus_store::AgentOpState::Pending,
        outcome: None,
        created_at: at(seconds),
        updated_at: at(seconds),
    }
}

async fn agents_enrol_once_and_take_operations(db: &TestDb) {
    use nimbus_store::{AgentOpState, Enrolment};
    let store: &dyn Storage = &db.store;
    let acme = store.create_tenant("acme").await.unwrap();
    let beta = store.create_tenant("beta").await.unwrap();
    let now = nimbus_types::now();
    store
        .create_enrolment_token(&enrolment_token(acme.id, "rack-a", 3600), &[1u8; 32])
        .await
        .unwrap();
    store
        .create_enrolment_token(&enrolment_token(acme.id, "rack-b", -1), &[2u8; 32])
        .await
        .unwrap();
    store
        .create_enrolment_token(&enrolment_token(beta.id, "rack-a", 3600), &[3u8; 32])
        .await
        .unwrap();
    assert_conflict(
        store
            .create_enrolment_token(&enrolment_token(beta.id, "x", 60), &[3u8; 32])
            .await,
        "reused token hash",
    );
    assert_not_found(
        store
            .create_enrolment_token(&enrolment_token(TenantId::new(), "x", 60), &[4u8; 32])
            .await,
        "tenant",
        "token of an unknown tenant",
    );

    // A token enrols once; a replay, an expired or an unknown token enrol nobody.
    let agent = match store
        .enrol_agent(&[1u8; 32], "agent-1", &[11u8; 32], now)
        .await
        .unwrap()
    {
        Enrolment::Enrolled(agent) => agent,
        other => panic!("first use must enrol: {other:?}"),
    };
    assert_eq!((agent.name.as_str(), agent.tenant_id), ("rack-a", acme.id));
    assert_eq!(
        store
            .enrol_agent(&[1u8; 32], "agent-2", &[12u8; 32], now)
            .await
            .unwrap(),
        Enrolment::Used
    );
    assert_eq!(
        store
            .enrol_agent(&[2u8; 32], "agent-3", &[13u8; 32], now)
            .await
            .unwrap(),
        Enrolment::Expired
    );
    assert_eq!(
        store
            .enrol_agent(&[9u8; 32], "agent-4", &[14u8; 32], now)
            .await
            .unwrap(),
        Enrolment::UnknownToken
    );
    // Same name in another tenant is fine; a second token for a taken name is not used up.
    assert!(matches!(
        store
            .enrol_agent(&[3u8; 32], "agent-5", &[15u8; 32], now)
            .await
            .unwrap(),
        Enrolment::Enrolled(_)
    ));
    store
        .create_enrolment_token(&enrolment_token(acme.id, "rack-a", 3600), &[5u8; 32])
        .await
        .unwrap();
    assert_eq!(
        store
            .enrol_agent(&[5u8; 32], "agent-6", &[16u8; 32], now)
            .await
            .unwrap(),
        Enrolment::NameTaken
    );

    // The credential finds the agent; heartbeats record last-seen and the report.
    assert_eq!(
        store.agent_for_credential(&[11u8; 32]).await.unwrap(),
        Some(agent.clone())
    );
    assert_eq!(store.agent_for_credential(&[12u8; 32]).await.unwrap(), None);
    let report = serde_json::json!({"health": "ok", "bmcs": [{"name": "node-1"}]});
    store
        .record_agent_heartbeat("agent-1", at(100), &report)
        .await
        .unwrap();
    let seen = store.get_agent_by_name(acme.id, "rack-a").await.unwrap();
    assert_eq!(seen.last_seen_at, Some(at(100)));
    assert_eq!(seen.report, Some(report));
    assert_not_found(
        store.get_agent_by_name(beta.id, "rack-b").await,
        "agent",
        "unknown name",
    );
    assert_eq!(store.list_agents(Some(acme.id)).await.unwrap().len(), 1);
    assert_eq!(store.list_agents(None).await.unwrap().len(), 2);

    // Operations are handed out once, oldest first, and answered once.
    let first = agent_op("agent-1", "node-1", 1);
    let second = agent_op("agent-1", "node-2", 2);
    store.enqueue_agent_operation(&second).await.unwrap();
    store.enqueue_agent_operation(&first).await.unwrap();
    assert_not_found(
        store
            .enqueue_agent_operation(&agent_op("no-agent", "x", 3))
            .await,
        "agent",
        "operation for an unknown agent",
    );
    let claimed = store
        .claim_agent_operations("agent-1", at(10), 1)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, first.id);
    assert_eq!(claimed[0].state, AgentOpState::Running);
    let rest = store
        .claim_agent_operations("agent-1", at(11), 10)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|o| o.id.clone()).collect::<Vec<_>>(),
        vec![second.id.clone()]
    );
    assert!(
        store
            .claim_agent_operations("agent-1", at(12), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let outcome = serde_json::json!({"result": "done", "power_state": "off"});
    assert!(
        !store
            .finish_agent_operation("agent-5", &first.id, &outcome, at(13))
            .await
            .unwrap(),
        "another agent cannot answer"
    );
    assert!(
        store
            .finish_agent_operation("agent-1", &first.id, &outcome, at(13))
            .await
            .unwrap()
    );
    assert!(
        !store
            .finish_agent_operation("agent-1", &first.id, &outcome, at(14))
            .await
            .unwrap(),
        "answered once"
    );
    let done = store.get_agent_operation(&first.id).await.unwrap();
    assert_eq!(
        (done.state, done.outcome),
        (AgentOpState::Done, Some(outcome.clone()))
    );
    assert!(
        store
            .abandon_agent_operation(&second.id, at(15))
            .await
            .unwrap()
    );
    assert!(
        !store
            .abandon_agent_operation(&first.id, at(15))
            .await
            .unwrap()
    );
    assert!(
        !store
            .finish_agent_operation("agent-1", &second.id, &outcome, at(16))
            .await
            .unwrap(),
        "an abandoned operation takes no answer"
    );
    assert_eq!(store.prune_agent_operations(at(15)).await.unwrap(), 1);
    assert_not_found(
        store.get_agent_operation(&first.id).await,
        "agent operation",
        "pruned",
    );

    // Deleting an agent ends its credential; only its own tenant can.
    assert_not_found(
        store.delete_agent(beta.id, "agent-1").await,
        "agent",
        "another tenant's agent",
    );
    store.delete_agent(acme.id, "agent-1").await.unwrap();
    assert_eq!(store.agent_for_credential(&[11u8; 32]).await.unwrap(), None);
    // The token of the taken name enrols now.
    assert!(matches!(
        store
            .enrol_agent(&[5u8; 32], "agent-6", &[16u8; 32], now)
            .await
            .unwrap(),
        Enrolment::Enrolled(_)
    ));
}
