//! The one door to EC2: every request goes through [`Ec2::call`], which emits
//! `nimbus.cloud_provider.api_call_{start,success,failure}`, retries throttling (and, for
//! requests that are safe to repeat, transient failures) with full-jitter exponential backoff,
//! and sorts failures into the kinds the provider acts on.
//!
//! The SDK's own retries are switched off so that every attempt is visible as an event and the
//! backoff is one policy. Error messages never carry credentials: authentication failures are
//! reported by code only.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{Credentials, Region};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use nimbus_types::event::{self, Event};
use nimbus_types::{MachineId, ProviderId, TenantId};
use rand::Rng;
use tokio::sync::OnceCell;

use crate::config::{AwsConfig, AwsCredentials};
use crate::events::EventSink;

/// How often and how patiently a request is retried.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (at least 1).
    pub max_attempts: u32,
    /// The backoff before retry `n` is uniformly random in `[0, min(max_delay, base_delay·2ⁿ⁻¹)]`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Per attempt, from sending to the last byte of the response.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The sleep before attempt `attempt + 1`, after `attempt` failed (full jitter).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let cap = exp.min(self.max_delay);
        if cap.is_zero() {
            return cap;
        }
        let nanos = rand::rng().random_range(0..=cap.as_nanos().min(u64::MAX as u128) as u64);
        Duration::from_nanos(nanos)
    }
}

/// What went wrong with a request, as far as the provider cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// `RequestLimitExceeded` and friends: EC2 did not act on the request.
    Throttled,
    /// No capacity (instances or dedicated hosts) in that zone right now.
    Capacity,
    /// The credentials were rejected or lack permission.
    Auth,
    /// 5xx, timeouts, connection failures: the request may or may not have taken effect.
    Transient,
    /// The resource does not exist (any more).
    NotFound,
    /// The resource exists already (e.g. an imported key pair).
    Duplicate,
    /// Anything else EC2 refused: a bad AMI, subnet, parameter. Retrying will not help.
    Invalid,
}

#[derive(Clone, Debug)]
pub struct ApiError {
    pub operation: &'static str,
    pub kind: ErrorKind,
    pub code: Option<String>,
    /// Safe to show: EC2's message, or only the code for authentication failures.
    pub message: String,
    pub attempts: u32,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ec2 {}: {}", self.operation, self.message)?;
        if self.attempts > 1 {
            write!(f, " (after {} attempts)", self.attempts)?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for nimbus_provider::Error {
    fn from(err: ApiError) -> Self {
        use nimbus_provider::Error;
        match err.kind {
            ErrorKind::Throttled | ErrorKind::Capacity | ErrorKind::Transient => {
                Error::Retryable(err.to_string())
            }
            ErrorKind::Auth | ErrorKind::NotFound | ErrorKind::Duplicate | ErrorKind::Invalid => {
                Error::Permanent(err.to_string())
            }
        }
    }
}

const THROTTLING_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
    "PriorRequestNotComplete",
];

const CAPACITY_CODES: &[&str] = &[
    "InsufficientHostCapacity",
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientCapacityOnHost",
    "InsufficientReservedInstanceCapacity",
    "HostLimitExceeded",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "Unsupported.HostCapacity",
];

const AUTH_CODES: &[&str] = &[
    "AuthFailure",
    "AuthFailure.ServiceLinkedRoleCreationNotPermitted",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "InvalidAccessKeyId",
    "ExpiredToken",
    "RequestExpired",
    "OptInRequired",
    "Blocked",
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "PendingVerification",
];

const TRANSIENT_CODES: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// Sorts an EC2 error by its code, then by HTTP status.
pub fn classify(code: Option<&str>, status: Option<u16>) -> ErrorKind {
    if let Some(code) = code {
        if THROTTLING_CODES.contains(&code) {
            return ErrorKind::Throttled;
        }
        if CAPACITY_CODES.contains(&code) {
            return ErrorKind::Capacity;
        }
        if AUTH_CODES.contains(&code) {
            return ErrorKind::Auth;
        }
        if TRANSIENT_CODES.contains(&code) {
            return ErrorKind::Transient;
        }
        if code.ends_with(".NotFound") || code.ends_with(".Malformed") && code.contains("ID") {
            return ErrorKind::NotFound;
        }
        if code.ends_with(".Duplicate") || code == "IdempotentParameterMismatch" {
            return ErrorKind::Duplicate;
        }
    }
    match status {
        Some(429) => ErrorKind::Throttled,
        Some(401 | 403) if code.is_none() => ErrorKind::Auth,
        Some(status) if status >= 500 => ErrorKind::Transient,
        _ => ErrorKind::Invalid,
    }
}

fn describe<E>(operation: &'static str, err: &SdkError<E>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (kind, code, message) = match err {
        SdkError::ServiceError(_) => {
            let code = err.code().map(str::to_owned);
            let status = err.raw_response().map(|raw| raw.status().as_u16());
            let kind = classify(code.as_deref(), status);
            let message = match (kind, &code) {
                (ErrorKind::Auth, Some(code)) => format!(
                    "aws rejected the request's credentials ({code}); check the provider's access_key_id and secret_access_key (or the default credential chain) and its IAM permissions"
                ),
                (ErrorKind::Auth, None) => format!(
                    "aws rejected the request's credentials (HTTP {}); check the provider's access_key_id and secret_access_key",
                    status.unwrap_or_default()
                ),
                (_, Some(code)) => match err.message() {
                    Some(message) => format!("{code}: {message}"),
                    None => code.clone(),
                },
                (_, None) => format!(
                    "unexpected response (HTTP {})",
                    status.map_or_else(|| "?".to_owned(), |s| s.to_string())
                ),
            };
            (kind, code, message)
        }
        SdkError::TimeoutError(_) => (ErrorKind::Transient, None, "request timed out".to_owned()),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => (
            ErrorKind::Transient,
            None,
            format!("{}", DisplayErrorContext(err)),
        ),
        // Building the request failed before anything was sent, e.g. no credentials found in
        // the default chain. The chain's messages name sources, never values.
        _ => (
            ErrorKind::Invalid,
            None,
            format!("{}", DisplayErrorContext(err)),
        ),
    };
    ApiError {
        operation,
        kind,
        code,
        message,
        attempts: 1,
    }
}

/// Which failures a request may be retried after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Throttling only: EC2 did not act on a throttled request, but a 5xx or a timeout may have
    /// taken effect, so the caller checks by tag before sending it again.
    Throttling,
    /// Throttling and transient failures: reads, and writes that are idempotent by themselves.
    Transient,
}

/// Who a request is for, for the events.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallCtx {
    pub machine_id: Option<MachineId>,
}

impl CallCtx {
    pub fn machine(machine_id: MachineId) -> Self {
        CallCtx {
            machine_id: Some(machine_id),
        }
    }
}

/// An EC2 client for one provider, created on first use (the default credential chain loads
/// asynchronously).
pub struct Ec2 {
    config: AwsConfig,
    credentials: Option<AwsCredentials>,
    client: OnceCell<Client>,
    tenant_id: TenantId,
    provider_id: ProviderId,
    pub(crate) events: Arc<dyn EventSink>,
    pub(crate) retry: RetryPolicy,
}

impl Ec2 {
    pub fn new(
        config: AwsConfig,
        credentials: Option<AwsCredentials>,
        tenant_id: TenantId,
        provider_id: ProviderId,
        events: Arc<dyn EventSink>,
        retry: RetryPolicy,
    ) -> Self {
        Ec2 {
            config,
            credentials,
            client: OnceCell::new(),
            tenant_id,
            provider_id,
            events,
            retry,
        }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let timeouts = TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(self.retry.attempt_timeout)
                    .build();
                let mut loader = aws_config::defaults(BehaviorVersion::latest())
                    .region(Region::new(self.config.region.clone()))
                    .retry_config(RetryConfig::disabled())
                    .timeout_config(timeouts);
                if let Some((id, secret, token)) =
                    self.credentials.as_ref().and_then(AwsCredentials::aws_keys)
                {
                    loader = loader.credentials_provider(Credentials::new(
                        id.to_owned(),
                        secret.expose().to_owned(),
                        token.map(|token| token.expose().to_owned()),
                        None,
                        "nimbus-provider-credentials",
                    ));
                }
                if let Some(url) = &self.config.endpoint_url {
                    loader = loader.endpoint_url(url.clone());
                }
                Client::new(&loader.load().await)
            })
            .await
    }

    fn event(&self, name: &str, operation: &'static str, ctx: CallCtx, attempt: u32) -> Event {
        let mut event = Event::new(name)
            .tenant(self.tenant_id)
            .meta("operation", operation)
            .meta("provider_id", self.provider_id.to_string())
            .meta("provider_type", "aws")
            .meta("attempt", attempt);
        if let Some(machine_id) = ctx.machine_id {
            event = event.machine(machine_id);
        }
        event
    }

    /// Sends one request (built afresh per attempt by `request`), retrying per `retry`.
    pub async fn call<'a, T, E, F, Fut>(
        &'a self,
        operation: &'static str,
        ctx: CallCtx,
        retry: Retry,
        request: F,
    ) -> Result<T, ApiError>
    where
        F: Fn(&'a Client) -> Fut,
        Fut: Future<Output = Result<T, SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let client = self.client().await;
        let mut attempt = 1;
        loop {
            self.events.emit(self.event(
                event::CLOUD_PROVIDER_API_CALL_START,
                operation,
                ctx,
                attempt,
            ));
            let started = Instant::now();
            let result = request(client).await;
            let elapsed = started.elapsed();
            match result {
                Ok(output) => {
                    self.events.emit(
                        self.event(
                            event::CLOUD_PROVIDER_API_CALL_SUCCESS,
                            operation,
                            ctx,
                            attempt,
                        )
                        .duration(elapsed),
                    );
                    return Ok(output);
                }
                Err(err) => {
                    let mut err = describe(operation, &err);
                    err.attempts = attempt;
                    let mut event = self
                        .event(
                            event::CLOUD_PROVIDER_API_CALL_FAILURE,
                            operation,
                            ctx,
                            attempt,
                        )
                        .duration(elapsed)
                        .error(&err.message)
                        .meta("kind", format!("{:?}", err.kind));
                    if let Some(code) = &err.code {
                        event = event.meta("code", code.clone());
                    }
                    self.events.emit(event);
                    let retryable = match err.kind {
                        ErrorKind::Throttled => true,
                        ErrorKind::Transient => retry == Retry::Transient,
                        _ => false,
                    };
                    if !retryable || attempt >= self.retry.max_attempts.max(1) {
                        if err.kind == ErrorKind::Auth {
                            tracing::warn!(
                                provider.id = %self.provider_id,
                                tenant.id = %self.tenant_id,
                                operation,
                                code = err.code.as_deref(),
                                "aws rejected the provider's credentials"
                            );
                        }
                        return Err(err);
                    }
                    let delay = self.retry.backoff(attempt);
                    tracing::debug!(
                        provider.id = %self.provider_id,
                        operation,
                        attempt,
                        kind = ?err.kind,
                        delay_ms = delay.as_millis() as u64,
                        "ec2 request failed, retrying"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_sorted_by_code_then_status() {
        for (code, status, want) in [
            (
                Some("RequestLimitExceeded"),
                Some(503),
                ErrorKind::Throttled,
            ),
            (Some("Throttling"), Some(400), ErrorKind::Throttled),
            (None, Some(429), ErrorKind::Throttled),
            (
                Some("InsufficientHostCapacity"),
                Some(400),
                ErrorKind::Capacity,
            ),
            (
                Some("InsufficientInstanceCapacity"),
                Some(500),
                ErrorKind::Capacity,
            ),
            (Some("AuthFailure"), Some(401), ErrorKind::Auth),
            (Some("UnauthorizedOperation"), Some(403), ErrorKind::Auth),
            (None, Some(403), ErrorKind::Auth),
            (Some("InternalError"), Some(500), ErrorKind::Transient),
            (None, Some(503), ErrorKind::Transient),
            (
                Some("InvalidInstanceID.NotFound"),
                Some(400),
                ErrorKind::NotFound,
            ),
            (
                Some("InvalidHostID.NotFound"),
                Some(400),
                ErrorKind::NotFound,
            ),
            (
                Some("InvalidKeyPair.Duplicate"),
                Some(400),
                ErrorKind::Duplicate,
            ),
            (
                Some("InvalidAMIID.Malformed"),
                Some(400),
                ErrorKind::NotFound,
            ),
            (Some("InvalidParameterValue"), Some(400), ErrorKind::Invalid),
            (None, Some(400), ErrorKind::Invalid),
        ] {
            assert_eq!(classify(code, status), want, "{code:?} {status:?}");
        }
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            attempt_timeout: Duration::from_secs(1),
        };
        for attempt in 1..12 {
            let cap =
                Duration::from_millis(100 * (1u64 << (attempt - 1).min(20))).min(policy.max_delay);
            for _ in 0..50 {
                assert!(policy.backoff(attempt) <= cap, "attempt {attempt}");
            }
        }
        let delays: std::collections::HashSet<_> = (0..20).map(|_| policy.backoff(5)).collect();
        assert!(delays.len() > 1, "backoff must be random, got {delays:?}");
    }

    #[test]
    fn provider_errors_keep_retryability() {
        let err = |kind| ApiError {
            operation: "RunInstances",
            kind,
            code: None,
            message: "x".into(),
            attempts: 3,
        };
        assert!(nimbus_provider::Error::from(err(ErrorKind::Throttled)).is_retryable());
        assert!(nimbus_provider::Error::from(err(ErrorKind::Capacity)).is_retryable());
        assert!(!nimbus_provider::Error::from(err(ErrorKind::Auth)).is_retryable());
        assert_eq!(
            err(ErrorKind::Invalid).to_string(),
            "ec2 RunInstances: x (after 3 attempts)"
        );
    }
}
