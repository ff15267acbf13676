//! Sending requests to the GitHub REST API: timeouts, retries with jittered exponential backoff,
//! and GitHub's primary and secondary rate limits. GitLab's API works the same way with other
//! header names (`PRIVATE-TOKEN`, `RateLimit-*`): its client uses this transport with
//! [`Dialect::GITLAB`].
//!
//! Rate limits (GitHub's documented rules): a response carries `x-ratelimit-remaining` and
//! `x-ratelimit-reset`; a 403/429 with `retry-after` is a secondary limit (wait that long); a
//! 403/429 with `x-ratelimit-remaining: 0` is the primary limit (wait until the reset); other
//! 403/429s that say "rate limit" wait at least a minute. A wait that does not fit into the call's
//! deadline or [`RetryPolicy::max_rate_limit_wait`] becomes [`Error::RateLimited`], so the
//! caller can requeue instead of holding a task for an hour. While the known budget is spent, no
//! request is sent before the reset.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nimbus_types::Secret;
use rand::Rng;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, USER_AGENT};
use reqwest::{Method, StatusCode, Url};
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::{Error, RateLimit, Result};

/// Timeouts and retries of every GitHub call.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// One HTTP exchange, connect to last body byte.
    pub request_timeout: Duration,
    /// One forge call, all retries and waits included.
    pub call_timeout: Duration,
    /// Attempts per request for 5xx, timeouts and connection errors.
    pub max_attempts: u32,
    /// First backoff step; doubles per attempt, full jitter.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Longest rate-limit wait done in place; longer waits return [`Error::RateLimited`].
    pub max_rate_limit_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            request_timeout: Duration::from_secs(15),
            call_timeout: Duration::from_secs(60),
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            max_rate_limit_wait: Duration::from_secs(30),
        }
    }
}

/// A successful response's status, headers and body.
pub(crate) struct Response {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Whether a request may be sent again after a failure that may have taken effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Repeat {
    Safe,
    Once,
}

/// Whether a request's response headers update the installation's budget. The App's own
/// requests (JWT-authenticated token exchanges) have a separate budget.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Budget {
    Track,
    Ignore,
}

/// What differs between forges that speak this protocol: how the token travels and what the
/// rate-limit headers are called.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dialect {
    /// For messages: `GitHub`, `GitLab`.
    pub name: &'static str,
    /// `None`: `Authorization: <auth_scheme> <token>`; `Some(header)`: the token alone in
    /// `header`.
    pub token_header: Option<&'static str>,
    /// `Bearer` (GitHub) or `token` (Forgejo's documented scheme).
    pub auth_scheme: &'static str,
    pub accept: &'static str,
    /// Sent with every request.
    pub extra_headers: &'static [(&'static str, &'static str)],
    /// `x-ratelimit-` (GitHub) or `ratelimit-` (GitLab): `…remaining`, `…reset`, `…limit`.
    pub rate_prefix: &'static str,
    /// GitHub names the bucket a response counted against; only `core` is tracked.
    pub resource_header: Option<&'static str>,
}

impl Dialect {
    pub const GITHUB: Dialect = Dialect {
        name: "GitHub",
        token_header: None,
        auth_scheme: "Bearer",
        accept: ACCEPT_VALUE,
        extra_headers: &[("x-github-api-version", API_VERSION)],
        rate_prefix: "x-ratelimit-",
        resource_header: Some("x-ratelimit-resource"),
    };

    pub const GITLAB: Dialect = Dialect {
        name: "GitLab",
        token_header: Some("private-token"),
        auth_scheme: "Bearer",
        accept: "application/json",
        extra_headers: &[],
        rate_prefix: "ratelimit-",
        resource_header: None,
    };

    /// Forgejo (and Gitea): `Authorization: token <token>`; no rate-limit headers unless a
    /// proxy adds GitHub-style ones.
    pub const FORGEJO: Dialect = Dialect {
        name: "Forgejo",
        token_header: None,
        auth_scheme: "token",
        accept: "application/json",
        extra_headers: &[],
        rate_prefix: "x-ratelimit-",
        resource_header: None,
    };
}

pub(crate) struct Transport {
    http: reqwest::Client,
    base: Url,
    dialect: Dialect,
    pub(crate) policy: RetryPolicy,
    budget_key: String,
    budget: Mutex<Option<RateLimit>>,
    requests: AtomicU64,
}

const API_VERSION: &str = "2022-11-28";
// GitHub's media type first; plain JSON is what the OpenAPI description declares.
const ACCEPT_VALUE: &str = "application/vnd.github+json, application/json;q=0.9";

impl Transport {
    /// `budget_key` names the budget in [`RateLimit::key`] (`installation:<id>` or `token`).
    pub fn new(base: Url, policy: RetryPolicy, budget_key: String) -> Result<Self> {
        Self::with_dialect(base, policy, budget_key, Dialect::GITHUB)
    }

    pub fn with_dialect(
        base: Url,
        policy: RetryPolicy,
        budget_key: String,
        dialect: Dialect,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(policy.request_timeout.min(Duration::from_secs(10)))
            // Redirects could carry the Authorization header to another host; GitHub's API does
            // not redirect the calls Nimbus makes.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Permanent(format!("cannot build the HTTP client: {e}")))?;
        Ok(Transport {
            http,
            base,
            dialect,
            policy,
            budget_key,
            budget: Mutex::new(None),
            requests: AtomicU64::new(0),
        })
    }

    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn budget_key(&self) -> &str {
        &self.budget_key
    }

    /// HTTP requests sent so far (every attempt counts).
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// `base` joined with path `segments`, each percent-encoded as one segment.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .expect("the base URL is validated to be http(s)");
            path.pop_if_empty();
            path.extend(segments);
        }
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in query {
                pairs.append_pair(key, value);
            }
        }
        url
    }

    /// Sends one request with retries, rate-limit handling and the call deadline.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
        bearer: &Secret,
        budget: Budget,
    ) -> Result<Response> {
        self.send_as(method, url, body, bearer, budget, Repeat::Safe)
            .await
    }

    /// Like [`send`](Self::send); with [`Repeat::Once`] a 5xx or a lost connection is not
    /// retried (the request may have taken effect: a create the server does not de-duplicate),
    /// only rate-limit refusals, which the server did not act on, are.
    pub async fn send_as(
        &self,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
        bearer: &Secret,
        budget: Budget,
        repeat: Repeat,
    ) -> Result<Response> {
        let deadline = Instant::now() + self.policy.call_timeout;
        match tokio::time::timeout_at(
            deadline,
            self.send_until(method.clone(), &url, body, bearer, budget, deadline, repeat),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(Error::Retryable(format!(
                "{method} {} timed out after {:?}",
                url.path(),
                self.policy.call_timeout
            ))),
        }
    }

    // Private, called from one place; the arguments are the request, as `send_as` got it.
    #[allow(clippy::too_many_arguments)]
    async fn send_until(
        &self,
        method: Method,
        url: &Url,
        body: Option<&serde_json::Value>,
        bearer: &Secret,
        budget: Budget,
        deadline: Instant,
        repeat: Repeat,
    ) -> Result<Response> {
        let what = format!("{method} {}", url.path());
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if budget == Budget::Track {
                self.wait_for_budget(deadline).await?;
            }
            let (auth_name, auth_value) = match self.dialect.token_header {
                None => (
                    AUTHORIZATION.as_str(),
                    format!("{} {}", self.dialect.auth_scheme, bearer.expose()),
                ),
                Some(header) => (header, bearer.expose().to_owned()),
            };
            // Marked sensitive so it never shows in a Debug of the request.
            let mut authorization = HeaderValue::from_str(&auth_value).map_err(|_| {
                Error::Permanent(
                    "the access token contains characters not allowed in an HTTP header".into(),
                )
            })?;
            authorization.set_sensitive(true);
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .timeout(self.policy.request_timeout)
                .header(ACCEPT, self.dialect.accept)
                .header(USER_AGENT, concat!("nimbus/", env!("CARGO_PKG_VERSION")))
                .header(auth_name, authorization);
            for (name, value) in self.dialect.extra_headers {
                request = request.header(*name, *value);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let response = match request.send().await {
                Ok(response) => response,
                Err(error) => {
                    let retryable = error.is_timeout() || error.is_connect() || error.is_request();
                    let message = format!("{what}: {}", error_chain(&error));
                    if !retryable {
                        return Err(Error::Permanent(message));
                    }
                    if repeat == Repeat::Once {
                        return Err(Error::Retryable(message));
                    }
                    self.backoff(attempt, deadline, message).await?;
                    continue;
                }
            };
            let status = response.status();
            let headers = response.headers().clone();
            if budget == Budget::Track {
                self.observe(&headers);
            }
            let body = match response.bytes().await {
                Ok(body) => body.to_vec(),
                Err(error) => {
                    let message = format!("{what}: reading the response: {}", error_chain(&error));
                    self.backoff(attempt, deadline, message).await?;
                    continue;
                }
            };
            if status.is_success() {
                return Ok(Response { headers, body });
            }
            let message = format!("{what}: {status}: {}", github_message(&body));
            match status {
                StatusCode::UNAUTHORIZED => return Err(Error::Unauthorized(message)),
                StatusCode::NOT_FOUND => return Err(Error::NotFound(message)),
                StatusCode::CONFLICT => return Err(Error::Conflict(message)),
                StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS => {
                    match rate_limit_wait(status, &headers, &body, self.dialect.rate_prefix) {
                        Some(wait) => {
                            self.rate_limit_pause(wait, deadline, attempt).await?;
                            continue;
                        }
                        None => return Err(Error::Permanent(message)),
                    }
                }
                status if status.is_server_error() => {
                    if repeat == Repeat::Once {
                        return Err(Error::Retryable(message));
                    }
                    self.backoff(attempt, deadline, message).await?;
                    continue;
                }
                _ => return Err(Error::Permanent(message)),
            }
        }
    }

    /// Sleeps the jittered backoff for `attempt`, or fails when attempts or time are used up.
    async fn backoff(&self, attempt: u32, deadline: Instant, message: String) -> Result<()> {
        if attempt >= self.policy.max_attempts {
            return Err(Error::Retryable(format!(
                "{message} (after {attempt} attempts)"
            )));
        }
        let cap = self
            .policy
            .base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.policy.max_delay);
        let delay = Duration::from_secs_f64(rand::rng().random_range(0.0..=cap.as_secs_f64()));
        if Instant::now() + delay >= deadline {
            return Err(Error::Retryable(format!(
                "{message} (call deadline reached)"
            )));
        }
        tracing::debug!(attempt, delay_ms = delay.as_millis() as u64, %message, forge = self.dialect.name, "retrying forge request");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    async fn rate_limit_pause(
        &self,
        wait: Duration,
        deadline: Instant,
        attempt: u32,
    ) -> Result<()> {
        let reset = OffsetDateTime::now_utc() + wait;
        if wait > self.policy.max_rate_limit_wait
            || Instant::now() + wait >= deadline
            || attempt >= self.policy.max_attempts
        {
            return Err(Error::RateLimited { reset });
        }
        tracing::info!(
            wait_ms = wait.as_millis() as u64,
            forge = self.dialect.name,
            "forge rate limit hit; waiting"
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// While the last known budget is spent, waits for its reset (or fails with RateLimited).
    async fn wait_for_budget(&self, deadline: Instant) -> Result<()> {
        let Some(budget) = self.rate_limit() else {
            return Ok(());
        };
        if budget.remaining > 0 {
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        if budget.reset <= now {
            return Ok(());
        }
        let wait: Duration = (budget.reset - now).try_into().unwrap_or_default();
        if wait > self.policy.max_rate_limit_wait || Instant::now() + wait >= deadline {
            return Err(Error::RateLimited {
                reset: budget.reset,
            });
        }
        tracing::info!(
            wait_ms = wait.as_millis() as u64,
            forge = self.dialect.name,
            "forge rate limit budget spent; waiting for the reset"
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }

    fn observe(&self, headers: &HeaderMap) {
        let prefix = self.dialect.rate_prefix;
        let number = |name: &str| -> Option<u64> {
            headers
                .get(format!("{prefix}{name}"))?
                .to_str()
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let (Some(remaining), Some(reset)) = (number("remaining"), number("reset")) else {
            return;
        };
        let Ok(reset) = OffsetDateTime::from_unix_timestamp(reset as i64) else {
            return;
        };
        let resource = self
            .dialect
            .resource_header
            .and_then(|name| headers.get(name))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("core")
            .to_owned();
        if resource != "core" {
            return;
        }
        let limit = number("limit").unwrap_or(remaining);
        *self.budget.lock().unwrap_or_else(|e| e.into_inner()) = Some(RateLimit {
            key: self.budget_key.clone(),
            limit,
            remaining,
            reset,
            resource,
        });
    }
}

/// How long GitHub asks us to wait before retrying a 403/429, or `None` when the response is
/// not about rate limits (a plain permission error).
fn rate_limit_wait(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    rate_prefix: &str,
) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(seconds) = header("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(seconds));
    }
    if header(&format!("{rate_prefix}remaining")) == Some("0") {
        let reset = header(&format!("{rate_prefix}reset")).and_then(|v| v.parse::<i64>().ok())?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        return Some(Duration::from_secs(reset.saturating_sub(now).max(1) as u64));
    }
    let mentions_rate_limit = github_message(body).to_lowercase().contains("rate limit");
    if status == StatusCode::TOO_MANY_REQUESTS || mentions_rate_limit {
        return Some(Duration::from_secs(60));
    }
    None
}

/// GitHub's `message` from an error body, shortened; never the whole body.
pub(crate) fn github_message(body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            // GitHub and GitLab say `message`; GitLab's OAuth errors say `error`.
            v.get("message")
                .or_else(|| v.get("error"))
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let message = message.trim();
    if message.chars().count() > 200 {
        let short: String = message.chars().take(200).collect();
        format!("{short}…")
    } else {
        message.to_owned()
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn classifies_rate_limit_responses() {
        let forbidden = StatusCode::FORBIDDEN;
        assert_eq!(
            rate_limit_wait(forbidden, &headers(&[("retry-after", "7")]), b"{}", GH),
            Some(Duration::from_secs(7))
        );
        let reset = (OffsetDateTime::now_utc().unix_timestamp() + 30).to_string();
        let wait = rate_limit_wait(
            forbidden,
            &headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset),
            ]),
            b"{}",
            GH,
        )
        .unwrap();
        assert!(
            wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28),
            "{wait:?}"
        );
        assert_eq!(
            rate_limit_wait(
                forbidden,
                &HeaderMap::new(),
                br#"{"message":"You have exceeded a secondary rate limit"}"#,
                GH
            ),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            rate_limit_wait(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), b"", GH),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            rate_limit_wait(
                forbidden,
                &headers(&[("x-ratelimit-remaining", "4999")]),
                br#"{"message":"Resource not accessible by integration"}"#,
                GH
            ),
            None
        );
        // GitLab: RateLimit-* without the x- prefix.
        let wait = rate_limit_wait(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("ratelimit-remaining", "0"), ("ratelimit-reset", &reset)]),
            b"{}",
            "ratelimit-",
        )
        .unwrap();
        assert!(wait >= Duration::from_secs(28), "{wait:?}");
    }

    const GH: &str = "x-ratelimit-";

    #[test]
    fn error_messages_are_short() {
        assert_eq!(
            github_message(br#"{"message":"Bad credentials"}"#),
            "Bad credentials"
        );
        assert_eq!(github_message(b"oops"), "oops");
        assert!(github_message(&vec![b'x'; 1000]).chars().count() <= 201);
    }
}
