//! Receiving a forge's webhook deliveries: verify the signature, record job demand.
//!
//! [`WebhookReceiver::receive`] takes the raw request (headers and the body bytes exactly as
//! received: the signature covers those bytes, not a re-serialisation) and either accepts the
//! delivery or returns a [`WebhookError`] whose [`WebhookError::status`] the HTTP layer answers
//! with. Verification comes first, so an unauthenticated caller learns nothing else about the
//! endpoint. Replays are recognised by the demand book, which records a job delivery together
//! with its id ([`DemandBook::apply`]); the receiver keeps no state of its own. This module does
//! no HTTP itself.

use std::sync::Arc;

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
    /// The demand book recorded this job delivery's id before (a forge's redelivery).
    Replay,
    Ping,
    /// Not an event Nimbus acts on.
    Ignored {
        event: String,
    },
}

/// One tenant's webhook endpoint: verification, then recording in the demand book (which
/// de-duplicates job deliveries by id).
pub struct WebhookReceiver {
    tenant_id: TenantId,
    verifier: Arc<dyn WebhookVerifier>,
    book: Arc<dyn DemandBook>,
}

impl WebhookReceiver {
    pub fn new(
        tenant_id: TenantId,
        verifier: Arc<dyn WebhookVerifier>,
        book: Arc<dyn DemandBook>,
    ) -> Self {
        WebhookReceiver {
            tenant_id,
            verifier,
            book,
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
        // Pings and ignored events change nothing, so their replays need no de-duplication.
        match delivery.kind {
            DeliveryKind::Job(event) => match self
                .book
                .apply(self.tenant_id, Some(&delivery.id), &event)
                .await
            {
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
                Ok(Applied::Replay) => {
                    tracing::debug!(delivery.id = %delivery.id, "replayed webhook delivery ignored");
                    Ok(Accepted::Replay)
                }
                // The book recorded nothing, the id included: the redelivery is processed.
                Err(error) => Err(WebhookError::Unavailable(error.to_string())),
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
