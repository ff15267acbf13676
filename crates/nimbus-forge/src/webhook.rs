//! Receiving a forge's webhook deliveries: verify the signature, drop replays, record job
//! demand.
//!
//! [`WebhookReceiver::receive`] takes the raw request (headers and the body bytes exactly as
//! received: the signature covers those bytes, not a re-serialisation) and either accepts the
//! delivery or returns a [`WebhookError`] whose [`WebhookError::status`] the HTTP layer answers
//! with. Verification comes first, so an unauthenticated caller learns nothing else about the
//! endpoint. This module does no HTTP itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use nimbus_types::TenantId;
use serde::Serialize;

use crate::demand::{Applied, DemandBook, JobEvent};

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Missing or wrong signature, or no secret configured to check it with: answer 401.
    #[error("webhook signature rejected: {0}")]
    Unauthorized(&'static str),
    /// A correctly signed delivery Nimbus cannot read (malformed JSON, missing header): 400.
    #[error("malformed webhook delivery: {0}")]
    Malformed(String),
    /// Recording the delivery failed; the forge may redeliver it: 503.
    #[error("webhook delivery not recorded: {0}")]
    Unavailable(String),
}

impl WebhookError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            WebhookError::Unauthorized(_) => 401,
            WebhookError::Malformed(_) => 400,
            WebhookError::Unavailable(_) => 503,
        }
    }

    /// The `error.code` of the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            WebhookError::Unauthorized(_) => "unauthorized",
            WebhookError::Malformed(_) => "bad_request",
            WebhookError::Unavailable(_) => "unavailable",
        }
    }
}

/// What a verified delivery is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryKind {
    /// A job was queued, started, finished or is waiting.
    Job(JobEvent),
    /// The forge checks that the endpoint works.
    Ping,
    /// An event, or an action of a known event, that does not affect demand.
    Ignored {
        event: String,
        action: Option<String>,
    },
}

/// A parsed delivery and its id (unique per delivery; a manual redelivery reuses it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub kind: DeliveryKind,
}

/// Checks a forge's signature over the raw body and parses what the forge sent.
pub trait WebhookVerifier: Send + Sync {
    /// Ok only when the delivery is signed with the configured secret; constant-time.
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), WebhookError>;

    /// Reads a delivery that [`verify`](Self::verify) accepted.
    fn parse(&self, headers: &HeaderMap, body: &[u8]) -> Result<Delivery, WebhookError>;
}

/// What [`WebhookReceiver::receive`] did with an accepted delivery: all answer 2xx.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Accepted {
    /// The job's state was recorded in the demand book.
    Recorded {
        job_id: u64,
        status: &'static str,
    },
    /// The book knew a later state of the job already.
    Stale {
        job_id: u64,
    },
    /// This delivery id was seen before.
    Replay,
    Ping,
    /// Not an event Nimbus acts on.
    Ignored {
        event: String,
    },
}

/// Remembers delivery ids for `ttl`, at most `capacity` of them (oldest forgotten first).
pub struct DeliveryDedup {
    capacity: usize,
    ttl: Duration,
    inner: Mutex<DedupInner>,
}

#[derive(Default)]
struct DedupInner {
    seen: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
}

impl DeliveryDedup {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        DeliveryDedup {
            capacity: capacity.max(1),
            ttl,
            inner: Mutex::new(DedupInner::default()),
        }
    }

    /// True when `id` is new (and now remembered), false for a replay.
    pub fn claim(&self, id: &str) -> bool {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((oldest, at)) = inner.order.front() {
            let expired = now.duration_since(*at) >= self.ttl;
            if !expired && inner.order.len() < self.capacity {
                break;
            }
            // Only drop the map entry if it is this queue entry's (not a later re-claim).
            if inner.seen.get(oldest) == Some(at) {
                let oldest = oldest.clone();
                inner.seen.remove(&oldest);
            }
            inner.order.pop_front();
        }
        if inner.seen.contains_key(id) {
            return false;
        }
        inner.seen.insert(id.to_owned(), now);
        inner.order.push_back((id.to_owned(), now));
        true
    }

    /// Forgets `id` so a redelivery is processed (used when recording failed).
    pub fn release(&self, id: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.seen.remove(id);
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seen
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for DeliveryDedup {
    /// 100,000 ids for 24 hours: GitHub's manual redelivery reuses the id.
    fn default() -> Self {
        DeliveryDedup::new(100_000, Duration::from_secs(24 * 3600))
    }
}

/// One tenant's webhook endpoint: verification, de-duplication and recording.
pub struct WebhookReceiver {
    tenant_id: TenantId,
    verifier: Arc<dyn WebhookVerifier>,
    book: Arc<dyn DemandBook>,
    dedup: DeliveryDedup,
}

impl WebhookReceiver {
    pub fn new(
        tenant_id: TenantId,
        verifier: Arc<dyn WebhookVerifier>,
        book: Arc<dyn DemandBook>,
        dedup: DeliveryDedup,
    ) -> Self {
        WebhookReceiver {
            tenant_id,
            verifier,
            book,
            dedup,
        }
    }

    /// Handles one delivery. `body` must be the raw request body.
    #[tracing::instrument(skip_all, fields(tenant.id = %self.tenant_id))]
    pub async fn receive(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Accepted, WebhookError> {
        if let Err(error) = self.verifier.verify(headers, body) {
            tracing::warn!(%error, "webhook delivery refused");
            return Err(error);
        }
        let delivery = self.verifier.parse(headers, body)?;
        if !self.dedup.claim(&delivery.id) {
            tracing::debug!(delivery.id = %delivery.id, "replayed webhook delivery ignored");
            return Ok(Accepted::Replay);
        }
        match delivery.kind {
            DeliveryKind::Job(event) => match self.book.apply(self.tenant_id, &event).await {
                Ok(Applied::Recorded) => {
                    tracing::debug!(
                        delivery.id = %delivery.id,
                        job.id = event.job.job_id,
                        job.status = event.job.status.as_str(),
                        job.labels = %event.job.labels,
                        "job demand recorded"
                    );
                    Ok(Accepted::Recorded {
                        job_id: event.job.job_id,
                        status: event.job.status.as_str(),
                    })
                }
                Ok(Applied::Stale) => Ok(Accepted::Stale {
                    job_id: event.job.job_id,
                }),
                Err(error) => {
                    self.dedup.release(&delivery.id);
                    Err(WebhookError::Unavailable(error.to_string()))
                }
            },
            DeliveryKind::Ping => Ok(Accepted::Ping),
            DeliveryKind::Ignored { event, .. } => Ok(Accepted::Ignored { event }),
        }
    }

    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }
}

/// The HTTP answer for [`WebhookReceiver::receive`]'s result: the status code and the JSON
/// body (`Accepted` as is, or the API's `{"error": {"code", "message"}}`). Forges only look at
/// the status; the body shows in their delivery log for whoever debugs the hook.
pub fn http_response(result: &Result<Accepted, WebhookError>) -> (u16, serde_json::Value) {
    match result {
        Ok(accepted) => (
            200,
            serde_json::to_value(accepted).unwrap_or(serde_json::Value::Null),
        ),
        Err(error) => (
            error.status(),
            serde_json::json!({ "error": { "code": error.code(), "message": error.to_string() } }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_remembers_releases_and_expires() {
        let dedup = DeliveryDedup::new(3, Duration::from_secs(3600));
        assert!(dedup.claim("a"));
        assert!(!dedup.claim("a"));
        dedup.release("a");
        assert!(dedup.claim("a"));
        assert!(dedup.claim("b"));
        assert!(dedup.claim("c"));
        // Capacity 3: claiming a fourth forgets the oldest.
        assert!(dedup.claim("d"));
        assert!(dedup.len() <= 3);
        assert!(!dedup.claim("d"));

        let short = DeliveryDedup::new(10, Duration::from_millis(1));
        assert!(short.claim("x"));
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.claim("x"), "an expired id is new again");
    }

    #[test]
    fn http_responses() {
        let ok = http_response(&Ok(Accepted::Recorded {
            job_id: 7,
            status: "queued",
        }));
        assert_eq!(
            ok,
            (
                200,
                serde_json::json!({"result": "recorded", "job_id": 7, "status": "queued"})
            )
        );
        assert_eq!(
            http_response(&Ok(Accepted::Replay)).1,
            serde_json::json!({"result": "replay"})
        );
        let (status, body) = http_response(&Err(WebhookError::Unauthorized("missing")));
        assert_eq!(status, 401);
        assert_eq!(body["error"]["code"], "unauthorized");
    }

    #[test]
    fn errors_map_to_http_statuses() {
        assert_eq!(WebhookError::Unauthorized("missing").status(), 401);
        assert_eq!(WebhookError::Malformed("x".into()).status(), 400);
        assert_eq!(WebhookError::Unavailable("x".into()).status(), 503);
    }
}
