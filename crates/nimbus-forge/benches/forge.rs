//! `cargo bench -p nimbus-forge`: prints a table.
//!
//! 1. Webhook received → demand recorded, library level: signed `workflow_job` deliveries are
//!    handed to `WebhookReceiver::receive` (HMAC check, parse, the in-memory demand book's de-dup
//!    and recording) at a steady 200 deliveries/s; latency is measured from each delivery's
//!    scheduled arrival to its recording, so scheduling delay counts. The daemon's HTTP route and
//!    its stored book add their own overhead.
//! 2. Installation-token cache: cost of a hit (one caller, and 8 callers at once) and of a miss
//!    (JWT signing + exchange against a local fake GitHub).
//! 3. Requests saved by the cache over 1,000 registration-token calls against the local fake:
//!    one long-lived forge (cache) against a fresh forge per registration (no cache).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_forge::github::GithubWebhooks;
use nimbus_forge::webhook::{Accepted, WebhookReceiver};
use nimbus_forge::{Forge, MemoryDemandBook};
use nimbus_types::{Secret, TenantId};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use common::*;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

struct Row(String, String, String);

async fn webhook_latency(rows: &mut Vec<Row>) {
    const RATE: u64 = 200;
    const SECONDS: u64 = 10;
    let n = (RATE * SECONDS) as usize;
    let secret = "bench-secret";
    let receiver = Arc::new(WebhookReceiver::new(
        TenantId::new(),
        Arc::new(GithubWebhooks::new(Secret::new(secret))),
        Arc::new(MemoryDemandBook::default()),
    ));
    let label_sets: [&[&str]; 4] = [
        &["self-hosted", "linux", "x64"],
        &["self-hosted", "linux", "arm64"],
        &["self-hosted", "macos", "arm64"],
        &["self-hosted", "linux", "gpu"],
    ];
    let actions = ["queued", "in_progress", "completed"];
    let deliveries: Vec<_> = (0..n)
        .map(|i| {
            // Each job goes queued → in_progress → completed over three deliveries.
            let job = (i / 3) as u64;
            let body = workflow_job_body(actions[i % 3], job, label_sets[job as usize % 4]);
            let headers = delivery_headers(secret, "workflow_job", &format!("bench-{i}"), &body);
            (headers, body)
        })
        .collect();
    let interval = Duration::from_nanos(1_000_000_000 / RATE);
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(n);
    let mut lateness = Vec::with_capacity(n);
    for (i, (headers, body)) in deliveries.into_iter().enumerate() {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let receiver = receiver.clone();
        // Timed from hand-over, not from `due`: the timer wheel's ~1 ms granularity is the
        // harness's lateness, not the receiver's.
        let sent = Instant::now();
        lateness.push(sent.saturating_duration_since(due));
        tasks.push(tokio::spawn(async move {
            let accepted = receiver
                .receive(&headers, &body)
                .await
                .expect("delivery accepted");
            // Deliveries run concurrently, so a job's `completed` may overtake its `in_progress`
            // (then the late one is Stale), as it can in real life.
            assert!(
                matches!(accepted, Accepted::Recorded { .. } | Accepted::Stale { .. }),
                "{accepted:?}"
            );
            sent.elapsed()
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for task in tasks {
        latencies.push(task.await.unwrap());
    }
    let took = start.elapsed();
    latencies.sort();
    rows.push(Row(
        format!("webhook → demand recorded, {n} deliveries at {RATE}/s (library level)"),
        "p50 / p99 / max".into(),
        format!(
            "{} / {} / {}",
            micros(percentile(&latencies, 0.50)),
            micros(percentile(&latencies, 0.99)),
            micros(*latencies.last().unwrap())
        ),
    ));
    lateness.sort();
    rows.push(Row(
        "  pacing lateness of the harness (not in the above)".into(),
        "p50 / p99".into(),
        format!(
            "{} / {}",
            micros(percentile(&lateness, 0.50)),
            micros(percentile(&lateness, 0.99))
        ),
    ));
    rows.push(Row(
        "  achieved delivery rate".into(),
        "deliveries/s".into(),
        format!("{:.1}", n as f64 / took.as_secs_f64()),
    ));
}

async fn fake_github(key: &AppKey) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/app/installations/777/access_tokens"))
        .respond_with(TokenExchange::new(key, time::Duration::hours(1)))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/orgs/acme/actions/runners/registration-token"))
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({
            "token": "AABF3JGZDX3P5PMEXLND6TS6FCWO6",
            "expires_at": "2030-01-01T00:00:00Z"
        })))
        .mount(&server)
        .await;
    server
}

async fn token_cache(rows: &mut Vec<Row>, key: &AppKey) {
    let server = fake_github(key).await;
    let forge = Arc::new(app_forge(&server.uri(), org("acme"), key, fast_retry()));
    forge.access_token().await.expect("first exchange");

    const HITS: u32 = 1_000_000;
    let started = Instant::now();
    for _ in 0..HITS {
        std::hint::black_box(forge.access_token().await.unwrap());
    }
    let per_hit = started.elapsed() / HITS;
    rows.push(Row(
        "installation token, cache hit (1 caller)".into(),
        "per call".into(),
        format!("{} ns", per_hit.as_nanos()),
    ));

    const CALLERS: u32 = 8;
    const EACH: u32 = 200_000;
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let forge = forge.clone();
            tokio::spawn(async move {
                for _ in 0..EACH {
                    std::hint::black_box(forge.access_token().await.unwrap());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let per_hit = started.elapsed() / (CALLERS * EACH);
    rows.push(Row(
        format!("installation token, cache hit ({CALLERS} callers at once)"),
        "wall time per call".into(),
        format!("{} ns", per_hit.as_nanos()),
    ));

    const MISSES: u32 = 20;
    let mut total = Duration::ZERO;
    for _ in 0..MISSES {
        let fresh = app_forge(&server.uri(), org("acme"), key, fast_retry());
        let started = Instant::now();
        fresh.access_token().await.expect("exchange");
        total += started.elapsed();
    }
    rows.push(Row(
        "installation token, cache miss (JWT + exchange, local fake)".into(),
        "per call".into(),
        micros(total / MISSES),
    ));
}

async fn requests_saved(rows: &mut Vec<Row>, key: &AppKey) {
    const REGISTRATIONS: usize = 1_000;
    let cached_server = fake_github(key).await;
    let forge = app_forge(&cached_server.uri(), org("acme"), key, fast_retry());
    let started = Instant::now();
    for _ in 0..REGISTRATIONS {
        forge
            .registration_token()
            .await
            .expect("registration token");
    }
    let cached_time = started.elapsed();
    let cached_requests = cached_server.received_requests().await.unwrap().len();

    let uncached_server = fake_github(key).await;
    // Clients built up front, so key parsing is not timed: only exchanges and registrations.
    let fresh: Vec<_> = (0..REGISTRATIONS)
        .map(|_| app_forge(&uncached_server.uri(), org("acme"), key, fast_retry()))
        .collect();
    let started = Instant::now();
    for forge in &fresh {
        forge
            .registration_token()
            .await
            .expect("registration token");
    }
    let uncached_time = started.elapsed();
    let uncached_requests = uncached_server.received_requests().await.unwrap().len();

    rows.push(Row(
        format!("{REGISTRATIONS} registrations with the token cache"),
        "HTTP requests / wall time".into(),
        format!("{cached_requests} / {:.2} s", cached_time.as_secs_f64()),
    ));
    rows.push(Row(
        format!("{REGISTRATIONS} registrations, no cache (exchange each time)"),
        "HTTP requests / wall time".into(),
        format!("{uncached_requests} / {:.2} s", uncached_time.as_secs_f64()),
    ));
    rows.push(Row(
        "  requests saved by the cache".into(),
        "requests".into(),
        format!(
            "{} ({:.0}%)",
            uncached_requests - cached_requests,
            100.0 * (uncached_requests - cached_requests) as f64 / uncached_requests as f64
        ),
    ));
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let key = app_key()?;
    let mut rows = Vec::new();
    runtime.block_on(async {
        webhook_latency(&mut rows).await;
        token_cache(&mut rows, &key).await;
        requests_saved(&mut rows, &key).await;
    });
    let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let metric = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    println!("| {:width$} | {:metric$} | result |", "benchmark", "metric");
    println!("| {} | {} | --- |", "-".repeat(width), "-".repeat(metric));
    for Row(name, what, value) in rows {
        println!("| {name:width$} | {what:metric$} | {value} |");
    }
    Ok(())
}
