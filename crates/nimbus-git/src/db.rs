//! The store: users, tokens, repositories, collaborators, webhooks, the event outbox and
//! webhook deliveries, through sqlx's `Any` driver (SQLite by default, PostgreSQL optional).
//!
//! Queries use `$N` placeholders, which both SQLite and PostgreSQL accept. Booleans are
//! stored as integers so the same decoding works on both.

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, FromRow};

use crate::error::Error;

pub type Db = AnyPool;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS users (
        id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, password_hash TEXT NOT NULL,
        is_owner BIGINT NOT NULL, created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tokens (
        id TEXT PRIMARY KEY, user_id TEXT NOT NULL, name TEXT NOT NULL, scope TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS repos (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, private BIGINT NOT NULL,
        description TEXT NOT NULL, created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS collaborators (
        repo_id TEXT NOT NULL, user_id TEXT NOT NULL, permission TEXT NOT NULL,
        PRIMARY KEY (repo_id, user_id))",
    "CREATE TABLE IF NOT EXISTS webhooks (
        id TEXT PRIMARY KEY, repo_id TEXT NOT NULL, url TEXT NOT NULL, secret TEXT NOT NULL,
        events TEXT NOT NULL, active BIGINT NOT NULL, created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events (
        id TEXT PRIMARY KEY, repo_id TEXT NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL,
        created_at BIGINT NOT NULL, dispatched BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_undispatched ON events (dispatched, id)",
    "CREATE TABLE IF NOT EXISTS deliveries (
        id TEXT PRIMARY KEY, webhook_id TEXT NOT NULL, event_id TEXT NOT NULL, status TEXT NOT NULL,
        attempts BIGINT NOT NULL, next_attempt_at BIGINT NOT NULL, last_status_code BIGINT,
        last_error TEXT, created_at BIGINT NOT NULL, delivered_at BIGINT)",
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_at)",
    // CI (see `ci::store`): statuses, runs, jobs, steps, log chunks, job tokens, sealed secrets.
    "CREATE TABLE IF NOT EXISTS ci_statuses (
        id TEXT PRIMARY KEY, repo_id TEXT NOT NULL, sha TEXT NOT NULL, context TEXT NOT NULL,
        state TEXT NOT NULL, description TEXT, target_url TEXT, creator TEXT NOT NULL,
        created_at BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ci_statuses_sha ON ci_statuses (repo_id, sha)",
    "CREATE TABLE IF NOT EXISTS ci_runs (
        id TEXT PRIMARY KEY, repo_id TEXT NOT NULL, number BIGINT NOT NULL, sha TEXT NOT NULL,
        ref_name TEXT NOT NULL, workflow TEXT NOT NULL, name TEXT NOT NULL, event TEXT NOT NULL,
        pusher TEXT NOT NULL, state TEXT NOT NULL, conclusion TEXT, error TEXT,
        cancel_requested BIGINT NOT NULL, created_at BIGINT NOT NULL, started_at BIGINT,
        finished_at BIGINT, UNIQUE (repo_id, number))",
    "CREATE INDEX IF NOT EXISTS ci_runs_sha ON ci_runs (repo_id, sha)",
    "CREATE TABLE IF NOT EXISTS ci_jobs (
        run_id TEXT NOT NULL, job_key TEXT NOT NULL, pos BIGINT NOT NULL, name TEXT NOT NULL,
        needs TEXT NOT NULL, runs_on TEXT NOT NULL, state TEXT NOT NULL, attempt BIGINT NOT NULL,
        machine TEXT, exit_code BIGINT, error TEXT, started_at BIGINT, finished_at BIGINT,
        log_bytes BIGINT NOT NULL, log_truncated BIGINT NOT NULL, PRIMARY KEY (run_id, job_key))",
    "CREATE TABLE IF NOT EXISTS ci_steps (
        run_id TEXT NOT NULL, job_key TEXT NOT NULL, idx BIGINT NOT NULL, name TEXT NOT NULL,
        state TEXT NOT NULL, exit_code BIGINT, started_at BIGINT, finished_at BIGINT,
        PRIMARY KEY (run_id, job_key, idx))",
    "CREATE TABLE IF NOT EXISTS ci_logs (
        run_id TEXT NOT NULL, job_key TEXT NOT NULL, offset_bytes BIGINT NOT NULL,
        step BIGINT NOT NULL, data BYTEA NOT NULL, created_at BIGINT NOT NULL,
        PRIMARY KEY (run_id, job_key, offset_bytes))",
    "CREATE TABLE IF NOT EXISTS ci_job_tokens (
        token_hash TEXT PRIMARY KEY, repo_id TEXT NOT NULL, run_id TEXT NOT NULL,
        job_key TEXT NOT NULL, expires_at BIGINT NOT NULL, created_at BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ci_job_tokens_job ON ci_job_tokens (run_id, job_key)",
    "CREATE TABLE IF NOT EXISTS ci_secrets (
        repo_id TEXT NOT NULL, name TEXT NOT NULL, sealed TEXT NOT NULL, updated_at BIGINT NOT NULL,
        PRIMARY KEY (repo_id, name))",
];

pub async fn connect(url: &str) -> Result<Db, Error> {
    sqlx::any::install_default_drivers();
    let is_sqlite = url.starts_with("sqlite:");
    let pool = AnyPoolOptions::new()
        .max_connections(if is_sqlite { 4 } else { 8 })
        .min_connections(0)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if is_sqlite {
                    // A small page cache per connection: the working set is tiny.
                    sqlx::query("PRAGMA cache_size = -512")
                        .execute(&mut *conn)
                        .await?;
                    // WAL with NORMAL sync: a commit is atomic and ordered, and is fsynced at
                    // checkpoints rather than on every push.
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await?;
    if is_sqlite {
        sqlx::query("PRAGMA journal_mode=WAL")
            .execute(&pool)
            .await?;
    }
    for stmt in SCHEMA {
        sqlx::query(stmt).execute(&pool).await?;
    }
    Ok(pool)
}

pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub is_owner: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct TokenRow {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub scope: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct RepoRow {
    pub id: String,
    pub name: String,
    pub private: i64,
    pub description: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct CollaboratorRow {
    pub repo_id: String,
    pub user_id: String,
    pub username: String,
    pub permission: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct WebhookRow {
    pub id: String,
    pub repo_id: String,
    pub url: String,
    pub secret: String,
    pub events: String,
    pub active: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub id: String,
    pub repo_id: String,
    pub kind: String,
    pub payload: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct DeliveryRow {
    pub id: String,
    pub webhook_id: String,
    pub event_id: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

/// An event about to be written to the outbox.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: &'static str,
    pub payload: serde_json::Value,
}

// ---- users

pub async fn owner(db: &Db) -> Result<Option<UserRow>, Error> {
    Ok(sqlx::query_as("SELECT * FROM users WHERE is_owner = 1")
        .fetch_optional(db)
        .await?)
}

pub async fn user_by_name(db: &Db, username: &str) -> Result<Option<UserRow>, Error> {
    Ok(sqlx::query_as("SELECT * FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(db)
        .await?)
}

pub async fn user_by_id(db: &Db, id: &str) -> Result<Option<UserRow>, Error> {
    Ok(sqlx::query_as("SELECT * FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?)
}

pub async fn users(db: &Db) -> Result<Vec<UserRow>, Error> {
    Ok(sqlx::query_as("SELECT * FROM users ORDER BY username")
        .fetch_all(db)
        .await?)
}

pub async fn insert_user(
    db: &Db,
    username: &str,
    password_hash: &str,
    is_owner: bool,
) -> Result<UserRow, Error> {
    let row = UserRow {
        id: new_id(),
        username: username.to_owned(),
        password_hash: password_hash.to_owned(),
        is_owner: i64::from(is_owner),
        created_at: now_ms(),
    };
    sqlx::query("INSERT INTO users (id, username, password_hash, is_owner, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&row.id)
        .bind(&row.username)
        .bind(&row.password_hash)
        .bind(row.is_owner)
        .bind(row.created_at)
        .execute(db)
        .await?;
    Ok(row)
}

pub async fn delete_user(db: &Db, id: &str) -> Result<(), Error> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM tokens WHERE user_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM collaborators WHERE user_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

// ---- tokens

pub async fn insert_token(
    db: &Db,
    user_id: &str,
    name: &str,
    scope: &str,
    token_hash: &str,
) -> Result<TokenRow, Error> {
    let row = TokenRow {
        id: new_id(),
        user_id: user_id.to_owned(),
        name: name.to_owned(),
        scope: scope.to_owned(),
        created_at: now_ms(),
    };
    sqlx::query("INSERT INTO tokens (id, user_id, name, scope, token_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&row.id)
        .bind(&row.user_id)
        .bind(&row.name)
        .bind(&row.scope)
        .bind(token_hash)
        .bind(row.created_at)
        .execute(db)
        .await?;
    Ok(row)
}

pub async fn token_by_hash(db: &Db, token_hash: &str) -> Result<Option<TokenRow>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, user_id, name, scope, created_at FROM tokens WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await?)
}

pub async fn tokens_of(db: &Db, user_id: &str) -> Result<Vec<TokenRow>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, user_id, name, scope, created_at FROM tokens WHERE user_id = $1 ORDER BY id",
    )
    .bind(user_id)
    .fetch_all(db)
    .await?)
}

pub async fn delete_token(db: &Db, user_id: &str, id: &str) -> Result<bool, Error> {
    let done = sqlx::query("DELETE FROM tokens WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user_id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}

// ---- repositories

pub async fn repos(db: &Db) -> Result<Vec<RepoRow>, Error> {
    Ok(sqlx::query_as("SELECT * FROM repos ORDER BY name")
        .fetch_all(db)
        .await?)
}

/// Insert a repository and its `RepositoryCreated` event in one transaction.
pub async fn insert_repo(
    db: &Db,
    name: &str,
    private: bool,
    description: &str,
    event: NewEvent,
) -> Result<RepoRow, Error> {
    let row = RepoRow {
        id: new_id(),
        name: name.to_owned(),
        private: i64::from(private),
        description: description.to_owned(),
        created_at: now_ms(),
    };
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO repos (id, name, private, description, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&row.id)
        .bind(&row.name)
        .bind(row.private)
        .bind(&row.description)
        .bind(row.created_at)
        .execute(&mut *tx)
        .await?;
    insert_event(&mut tx, &row.id, &event).await?;
    tx.commit().await?;
    Ok(row)
}

pub async fn update_repo(db: &Db, id: &str, private: bool, description: &str) -> Result<(), Error> {
    sqlx::query("UPDATE repos SET private = $1, description = $2 WHERE id = $3")
        .bind(i64::from(private))
        .bind(description)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn delete_repo(db: &Db, id: &str) -> Result<(), Error> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM collaborators WHERE repo_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "DELETE FROM deliveries WHERE webhook_id IN (SELECT id FROM webhooks WHERE repo_id = $1)",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM webhooks WHERE repo_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    crate::ci::store::delete_repo_ci(&mut tx, id).await?;
    sqlx::query("DELETE FROM repos WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

// ---- collaborators

pub async fn collaborators(db: &Db) -> Result<Vec<CollaboratorRow>, Error> {
    Ok(sqlx::query_as(
        "SELECT c.repo_id, c.user_id, u.username, c.permission FROM collaborators c
         JOIN users u ON u.id = c.user_id ORDER BY u.username",
    )
    .fetch_all(db)
    .await?)
}

pub async fn upsert_collaborator(
    db: &Db,
    repo_id: &str,
    user_id: &str,
    permission: &str,
) -> Result<(), Error> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM collaborators WHERE repo_id = $1 AND user_id = $2")
        .bind(repo_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO collaborators (repo_id, user_id, permission) VALUES ($1, $2, $3)")
        .bind(repo_id)
        .bind(user_id)
        .bind(permission)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn delete_collaborator(db: &Db, repo_id: &str, user_id: &str) -> Result<bool, Error> {
    let done = sqlx::query("DELETE FROM collaborators WHERE repo_id = $1 AND user_id = $2")
        .bind(repo_id)
        .bind(user_id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}

// ---- webhooks

pub async fn insert_webhook(
    db: &Db,
    repo_id: &str,
    url: &str,
    secret: &str,
    events: &str,
) -> Result<WebhookRow, Error> {
    let row = WebhookRow {
        id: new_id(),
        repo_id: repo_id.to_owned(),
        url: url.to_owned(),
        secret: secret.to_owned(),
        events: events.to_owned(),
        active: 1,
        created_at: now_ms(),
    };
    sqlx::query(
        "INSERT INTO webhooks (id, repo_id, url, secret, events, active, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&row.id)
    .bind(&row.repo_id)
    .bind(&row.url)
    .bind(&row.secret)
    .bind(&row.events)
    .bind(row.active)
    .bind(row.created_at)
    .execute(db)
    .await?;
    Ok(row)
}

pub async fn webhooks_of(db: &Db, repo_id: &str) -> Result<Vec<WebhookRow>, Error> {
    Ok(
        sqlx::query_as("SELECT * FROM webhooks WHERE repo_id = $1 ORDER BY id")
            .bind(repo_id)
            .fetch_all(db)
            .await?,
    )
}

pub async fn webhook(db: &Db, id: &str) -> Result<Option<WebhookRow>, Error> {
    Ok(sqlx::query_as("SELECT * FROM webhooks WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?)
}

pub async fn delete_webhook(db: &Db, id: &str) -> Result<(), Error> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM deliveries WHERE webhook_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM webhooks WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

// ---- events (the outbox)

pub(crate) async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    repo_id: &str,
    event: &NewEvent,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO events (id, repo_id, kind, payload, created_at, dispatched) VALUES ($1, $2, $3, $4, $5, 0)")
        .bind(new_id())
        .bind(repo_id)
        .bind(event.kind)
        .bind(event.payload.to_string())
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Write all events of one push in one transaction: either all are in the outbox or none.
pub async fn insert_events(db: &Db, repo_id: &str, events: &[NewEvent]) -> Result<(), Error> {
    if events.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    for event in events {
        insert_event(&mut tx, repo_id, event).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn events_of(db: &Db, repo_id: &str, limit: i64) -> Result<Vec<EventRow>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, repo_id, kind, payload, created_at FROM events WHERE repo_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(repo_id)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

pub async fn undispatched_events(db: &Db, limit: i64) -> Result<Vec<EventRow>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, repo_id, kind, payload, created_at FROM events WHERE dispatched = 0 ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Fan an event out to deliveries for the given webhooks and mark it dispatched, atomically.
pub async fn dispatch_event(db: &Db, event_id: &str, webhook_ids: &[String]) -> Result<(), Error> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    for webhook_id in webhook_ids {
        sqlx::query(
            "INSERT INTO deliveries (id, webhook_id, event_id, status, attempts, next_attempt_at, created_at)
             VALUES ($1, $2, $3, 'pending', 0, $4, $4)",
        )
        .bind(new_id())
        .bind(webhook_id)
        .bind(event_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE events SET dispatched = 1 WHERE id = $1")
        .bind(event_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn event(db: &Db, id: &str) -> Result<Option<EventRow>, Error> {
    Ok(
        sqlx::query_as("SELECT id, repo_id, kind, payload, created_at FROM events WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

// ---- deliveries

pub async fn due_deliveries(db: &Db, now: i64, limit: i64) -> Result<Vec<DeliveryRow>, Error> {
    Ok(sqlx::query_as(
        "SELECT * FROM deliveries WHERE status = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

pub async fn next_delivery_at(db: &Db) -> Result<Option<i64>, Error> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT next_attempt_at FROM deliveries WHERE status = 'pending' ORDER BY next_attempt_at LIMIT 1")
            .fetch_optional(db)
            .await?;
    Ok(row.map(|r| r.0))
}

pub struct Attempt<'a> {
    pub status: &'a str,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub delivered_at: Option<i64>,
}

pub async fn record_attempt(db: &Db, id: &str, attempt: Attempt<'_>) -> Result<(), Error> {
    sqlx::query(
        "UPDATE deliveries SET status = $1, attempts = $2, next_attempt_at = $3, last_status_code = $4,
         last_error = $5, delivered_at = $6 WHERE id = $7",
    )
    .bind(attempt.status)
    .bind(attempt.attempts)
    .bind(attempt.next_attempt_at)
    .bind(attempt.status_code)
    .bind(attempt.error)
    .bind(attempt.delivered_at)
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn deliveries_of(db: &Db, webhook_id: &str) -> Result<Vec<DeliveryRow>, Error> {
    Ok(
        sqlx::query_as("SELECT * FROM deliveries WHERE webhook_id = $1 ORDER BY id DESC LIMIT 200")
            .bind(webhook_id)
            .fetch_all(db)
            .await?,
    )
}
