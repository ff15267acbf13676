//! Opening stores: URL handling, the SQLite file, and bad input at the edges (unknown schemes,
//! unreachable servers, files that are not databases, corrupt rows). Clear errors, no panics.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use nimbus_store::{Error, SealKey, Sealer, SqlStore, Storage, StoreOptions};
use nimbus_types::MachineId;

fn sealer() -> Sealer {
    Sealer::new(SealKey::generate())
}

async fn connect(url: &str) -> Result<SqlStore, Error> {
    SqlStore::connect(url, StoreOptions::default(), sealer()).await
}

#[tokio::test]
async fn sqlite_file_and_directory_are_created_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/data dir #1/nimbus?.db");
    let url = SqlStore::sqlite_path_url(&path);
    assert!(
        url.starts_with("sqlite:///") && url.ends_with("?mode=rwc"),
        "{url}"
    );
    let store = connect(&url)
        .await
        .unwrap_or_else(|err| panic!("connect {url}: {err}"));
    assert_eq!(store.backend(), "sqlite");
    store.ping().await.unwrap();
    store.create_tenant("acme").await.unwrap();

    assert!(path.is_file(), "{} must exist", path.display());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "database file mode {mode:o}");
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700, "database directory mode {dir_mode:o}");

    // WAL is on (persistent in the file, so a plain connection sees it).
    sqlx::any::install_default_drivers();
    let raw = sqlx::AnyPool::connect(&url).await.unwrap();
    let row = sqlx::query("PRAGMA journal_mode")
        .fetch_one(&raw)
        .await
        .unwrap();
    let mode: String = sqlx::Row::try_get(&row, 0).unwrap();
    assert_eq!(mode, "wal");
    raw.close().await;
    store.close().await;
}

#[tokio::test]
async fn plain_sqlite_urls_work_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/plain.db");
    let url = format!("sqlite:{}", path.display());
    let store = connect(&url)
        .await
        .unwrap_or_else(|err| panic!("connect {url}: {err}"));
    store.create_tenant("acme").await.unwrap();
    store.close().await;
    let store = connect(&url).await.unwrap();
    assert_eq!(store.list_tenants().await.unwrap().len(), 1);
}

#[tokio::test]
async fn in_memory_sqlite_works() {
    let store = connect("sqlite::memory:").await.unwrap();
    store.create_tenant("acme").await.unwrap();
    assert_eq!(store.list_tenants().await.unwrap().len(), 1);
}

#[tokio::test]
async fn unknown_scheme_is_a_clear_error_without_the_password() {
    for url in ["mysql://admin:hunter2@db.example/nimbus", "nimbus.db", ""] {
        let err = connect(url).await.unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("unsupported database URL scheme"),
            "{url}: {message}"
        );
        assert!(
            message.contains("sqlite:") && message.contains("postgres://"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "password leaked: {message}");
    }
}

#[tokio::test]
async fn unreachable_postgres_fails_promptly() {
    let port = nimbus_testkit::free_port();
    let url = format!("postgres://postgres:hunter2@127.0.0.1:{port}/nimbus");
    let started = Instant::now();
    let err = connect(&url).await.unwrap_err();
    assert!(matches!(err, Error::Database(_)), "{err:?}");
    assert!(
        !err.to_string().contains("hunter2"),
        "password leaked: {err}"
    );
    // Not a timed assertion on speed, only that it does not hang for the pool's full timeout.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "connecting to a closed port took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let err = connect(&SqlStore::sqlite_path_url(&path))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a database"), "{err}");
}

#[tokio::test]
async fn an_unwritable_directory_is_an_error() {
    let err = connect("sqlite:///proc/nimbus/nimbus.db")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/proc/nimbus"), "{err}");
}

#[tokio::test]
async fn corrupt_rows_are_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let url = SqlStore::sqlite_path_url(&dir.path().join("nimbus.db"));
    let store = connect(&url).await.unwrap();
    let tenant = store.create_tenant("acme").await.unwrap();

    sqlx::any::install_default_drivers();
    let raw = sqlx::AnyPool::connect(&url).await.unwrap();
    let id = MachineId::new();
    sqlx::query(
        "INSERT INTO machines (id, tenant_id, provider_id, os, arch, state, labels, image, \
         provider_metadata, spec, created_at, updated_at) \
         VALUES ($1, $2, $3, 'linux', 'x86_64', 'exploded', '[]', '{}', '{}', '{}', 0, 0)",
    )
    .bind(id.to_string())
    .bind(tenant.id.to_string())
    .bind(MachineId::new().to_string())
    .execute(&raw)
    .await
    .unwrap();
    match store.get_machine(None, id).await {
        Err(Error::Corrupt(message)) => assert!(message.contains("exploded"), "{message}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    sqlx::query("UPDATE tenants SET created_at = $1")
        .bind(i64::MAX)
        .execute(&raw)
        .await
        .unwrap();
    match store.get_tenant(tenant.id).await {
        Err(Error::Corrupt(message)) => assert!(message.contains("created_at"), "{message}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    raw.close().await;
}

/// Two stores on one SQLite file (as two daemons would be) each serialize their own writes;
/// across them SQLite's busy timeout and `BEGIN IMMEDIATE` keep "database is locked" away.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_sqlite_file_do_not_lock_each_other_out() {
    let dir = tempfile::tempdir().unwrap();
    let url = SqlStore::sqlite_path_url(&dir.path().join("shared.db"));
    let key = SealKey::generate();
    let first = SqlStore::connect(&url, StoreOptions::default(), Sealer::new(key.clone()))
        .await
        .unwrap();
    let second = SqlStore::connect(&url, StoreOptions::default(), Sealer::new(key))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for idx in 0..40 {
        let store = if idx % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move {
            let tenant = store.create_tenant(&format!("t{idx}")).await?;
            for n in 0..3 {
                let provider = nimbus_types::ProviderConfig {
                    id: nimbus_types::ProviderId::new(),
                    tenant_id: tenant.id,
                    name: format!("p{n}"),
                    provider_type: nimbus_types::ProviderType::Local,
                    credentials: Some(nimbus_types::Secret::new("x")),
                    config: serde_json::json!({}),
                    created_at: nimbus_types::now(),
                };
                store.create_provider(&provider).await?;
                store.list_tenant_providers(tenant.id).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for (idx, task) in tasks.into_iter().enumerate() {
        if let Err(err) = task.await.unwrap() {
            panic!("writer {idx}: {err}");
        }
    }
    assert_eq!(first.list_tenants().await.unwrap().len(), 40);
    assert_eq!(second.list_all_providers().await.unwrap().len(), 120);
}
