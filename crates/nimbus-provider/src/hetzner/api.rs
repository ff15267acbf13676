//! The only path to the Hetzner Cloud API: bearer auth, timeouts, jittered retries of 5xx,
//! transport errors and `locked` resources, and Hetzner's rate limit (`RateLimit-Limit`,
//! `RateLimit-Remaining`, `RateLimit-Reset`; 429 `rate_limit_exceeded`): once the budget is
//! spent, requests wait for the reset instead of burning retries on 429s. Every request emits
//! `nimbus.cloud_provider.api_call_{start,success,failure}`.
//!
//! The token goes only to the configured endpoint (no redirects) and never into an error or a
//! log line.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nimbus_types::event::{self, Event, EventSink};
use nimbus_types::{MachineId, ProviderId, Secret, TenantId};
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::Error;

/// How hard a call tries before it reports a retryable error.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// One HTTP request.
    pub request_timeout: Duration,
    /// Attempts per call (the first included) for 5xx, 429, transport errors and locks.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// The longest a call waits for the rate limit to reset before giving up (retryable).
    pub max_rate_limit_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            request_timeout: Duration::from_secs(30),
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            max_rate_limit_wait: Duration::from_secs(60),
        }
    }
}

/// What Hetzner answered when a call did not succeed.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// `None` for transport errors and timeouts.
    pub status: Option<u16>,
    /// Hetzner's error code (`uniqueness_error`, `resource_unavailable`, `not_found`…), or
    /// `transport` / `rate_limited`.
    pub code: String,
    pub message: String,
    /// What was being done, e.g. `POST /servers`.
    pub what: String,
}

impl ApiError {
    pub fn is(&self, code: &str) -> bool {
        self.code == code
    }

    /// The provider error for a failure the caller does not handle itself.
    pub fn into_error(self) -> Error {
        let ApiError {
            status,
            code,
            message,
            what,
        } = self;
        match (status, code.as_str()) {
            (Some(401), _) | (_, "unauthorized") => Error::Permanent(format!(
                "hetzner rejected the API token ({what}: 401 unauthorized); check credentials.api_token"
            )),
            (Some(403), _) | (_, "forbidden") | (_, "token_readonly") => Error::Permanent(format!(
                "the hetzner API token may not do this ({what}: {code}); it needs Read & Write permission"
            )),
            (None, _)
            | (Some(429), _)
            | (Some(500..), _)
            | (_, "locked" | "conflict" | "rate_limited" | "resource_unavailable") => {
                Error::Retryable(format!("hetzner {what}: {code}: {message}"))
            }
            _ => Error::Permanent(format!("hetzner {what}: {code}: {message}")),
        }
    }
}

#[derive(Debug, Default)]
struct RateState {
    remaining: Option<u64>,
    /// Unix seconds when the budget refills.
    reset_at: Option<u64>,
}

pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
    token: Secret,
    pub(crate) retry: RetryPolicy,
    rate: Mutex<RateState>,
    pub(crate) events: Option<Arc<dyn EventSink>>,
    tenant_id: TenantId,
    provider_id: ProviderId,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn header_u64(headers: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl Api {
    pub(crate) fn new(
        base: &str,
        token: Secret,
        retry: RetryPolicy,
        tenant_id: TenantId,
        provider_id: ProviderId,
    ) -> Result<Api, Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("nimbus/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| Error::Permanent(format!("cannot build an HTTP client: {err}")))?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
            retry,
            rate: Mutex::new(RateState::default()),
            events: None,
            tenant_id,
            provider_id,
        })
    }

    fn emit(&self, event: Event) {
        if let Some(sink) = &self.events {
            sink.emit(event.tenant(self.tenant_id));
        }
    }

    /// How long to wait before the next request because the budget is spent.
    fn rate_wait(&self) -> Option<Duration> {
        let rate = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        match (rate.remaining, rate.reset_at) {
            (Some(0), Some(reset)) => {
                let now = unix_now();
                (reset > now).then(|| Duration::from_secs(reset - now))
            }
            _ => None,
        }
    }

    fn note_rate(&self, headers: &reqwest::header::HeaderMap) {
        let remaining = header_u64(headers, "ratelimit-remaining");
        let reset = header_u64(headers, "ratelimit-reset");
        if remaining.is_some() || reset.is_some() {
            let mut rate = self.rate.lock().unwrap_or_else(|p| p.into_inner());
            rate.remaining = remaining;
            rate.reset_at = reset;
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .retry
            .base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.retry.max_delay);
        // Full jitter: spread retries of many machines.
        let millis = exp.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }

    /// Sends one call with retries; `Ok` carries the JSON body (`Null` for an empty one).
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        machine_id: Option<MachineId>,
    ) -> Result<Value, ApiError> {
        let what = format!("{method} {path}");
        let started = Instant::now();
        let mut start = Event::new(event::CLOUD_PROVIDER_API_CALL_START)
            .meta("provider", "hetzner")
            .meta("provider_id", self.provider_id.to_string())
            .meta("operation", what.clone());
        if let Some(id) = machine_id {
            start = start.machine(id);
        }
        self.emit(start);
        let outcome = self.call_inner(&method, path, query, body, &what).await;
        let mut done = match &outcome {
            Ok(_) => Event::new(event::CLOUD_PROVIDER_API_CALL_SUCCESS),
            Err(err) => Event::new(event::CLOUD_PROVIDER_API_CALL_FAILURE)
                .error(format!("{}: {}", err.code, err.message)),
        }
        .meta("provider", "hetzner")
        .meta("provider_id", self.provider_id.to_string())
        .meta("operation", what.clone())
        .duration(started.elapsed());
        if let Some(id) = machine_id {
            done = done.machine(id);
        }
        self.emit(done);
        outcome
    }

    async fn call_inner(
        &self,
        method: &Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, ApiError> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.base), query).map_err(
            |err| ApiError {
                status: None,
                code: "invalid_url".into(),
                message: format!("cannot build the request URL: {err}"),
                what: what.to_owned(),
            },
        )?;
        let rate_deadline = Instant::now() + self.retry.max_rate_limit_wait;
        let mut attempt = 0u32;
        loop {
            if let Some(wait) = self.rate_wait() {
                if Instant::now() + wait > rate_deadline {
                    return Err(ApiError {
                        status: Some(429),
                        code: "rate_limited".into(),
                        message: format!(
                            "the API rate limit is spent for another {}s",
                            wait.as_secs()
                        ),
                        what: what.to_owned(),
                    });
                }
                tracing::debug!(
                    wait_ms = wait.as_millis() as u64,
                    "hetzner rate limit spent; waiting for the reset"
                );
                tokio::time::sleep(wait).await;
            }
            attempt += 1;
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(self.token.expose())
                .header("accept", "application/json")
                .timeout(self.retry.request_timeout);
            if let Some(body) = body {
                request = request.json(body);
            }
            let failure = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    self.note_rate(response.headers());
                    let retry_after = header_u64(response.headers(), "retry-after");
                    let text = response.text().await.unwrap_or_default();
                    if status.is_success() {
                        if text.trim().is_empty() {
                            return Ok(Value::Null);
                        }
                        return serde_json::from_str(&text).map_err(|err| ApiError {
                            status: Some(status.as_u16()),
                            code: "invalid_response".into(),
                            message: format!("the response is not JSON: {err}"),
                            what: what.to_owned(),
                        });
                    }
                    let (code, message) = error_of(status, &text);
                    let failure = ApiError {
                        status: Some(status.as_u16()),
                        code,
                        message,
                        what: what.to_owned(),
                    };
                    let retryable = status == StatusCode::TOO_MANY_REQUESTS
                        || status.is_server_error()
                        || failure.is("locked")
                        || failure.is("rate_limit_exceeded");
                    if !retryable {
                        return Err(failure);
                    }
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        // Wait for the reset the headers announced (or Retry-After), not a
                        // blind backoff.
                        let mut rate = self.rate.lock().unwrap_or_else(|p| p.into_inner());
                        rate.remaining = Some(0);
                        if let Some(after) = retry_after {
                            rate.reset_at = Some(unix_now() + after);
                        } else if rate.reset_at.is_none_or(|r| r <= unix_now()) {
                            rate.reset_at = Some(unix_now() + 1);
                        }
                    }
                    failure
                }
                Err(err) => ApiError {
                    status: None,
                    code: "transport".into(),
                    message: if err.is_timeout() {
                        "the request timed out".to_owned()
                    } else {
                        // reqwest's error names the URL, never the header.
                        format!("the request failed: {err}")
                    },
                    what: what.to_owned(),
                },
            };
            if attempt >= self.retry.max_attempts {
                return Err(failure);
            }
            tracing::debug!(
                operation = what,
                attempt,
                code = %failure.code,
                "hetzner call failed; retrying"
            );
            if failure.status != Some(429) {
                tokio::time::sleep(self.backoff(attempt)).await;
            }
        }
    }
}

fn error_of(status: StatusCode, text: &str) -> (String, String) {
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let code = error
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("http_{}", status.as_u16()));
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(|m| m.chars().take(300).collect())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    (code, message)
}
