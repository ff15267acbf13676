//! GitHub webhook deliveries: `X-Hub-Signature-256` verification and `workflow_job` parsing.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use nimbus_types::Secret;
use serde::Deserialize;
use sha2::Sha256;

use crate::demand::{ForgeJob, JobEvent, JobStatus, LabelSet};
use crate::webhook::{Delivery, DeliveryKind, WebhookError, WebhookVerifier};

pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
pub const EVENT_HEADER: &str = "x-github-event";
pub const DELIVERY_HEADER: &str = "x-github-delivery";

/// Verifies deliveries signed with the webhook secret configured at GitHub.
pub struct GithubWebhooks {
    secret: Secret,
}

impl GithubWebhooks {
    pub fn new(secret: Secret) -> Self {
        GithubWebhooks { secret }
    }

    /// `sha256=<hex>` of `body` under `secret`: what GitHub puts in `X-Hub-Signature-256`.
    pub fn sign(secret: &Secret, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

impl WebhookVerifier for GithubWebhooks {
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), WebhookError> {
        if self.secret.is_empty() {
            return Err(WebhookError::Unauthorized(
                "no webhook secret is configured",
            ));
        }
        let Some(signature) = header(headers, SIGNATURE_HEADER) else {
            return Err(WebhookError::Unauthorized("missing X-Hub-Signature-256"));
        };
        let digest = signature
            .strip_prefix("sha256=")
            .and_then(|hex_digest| hex::decode(hex_digest).ok())
            .ok_or(WebhookError::Unauthorized(
                "X-Hub-Signature-256 is not sha256=<hex>",
            ))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(body);
        // verify_slice compares in constant time.
        mac.verify_slice(&digest)
            .map_err(|_| WebhookError::Unauthorized("X-Hub-Signature-256 does not match"))
    }

    fn parse(&self, headers: &HeaderMap, body: &[u8]) -> Result<Delivery, WebhookError> {
        let id = header(headers, DELIVERY_HEADER)
            .filter(|id| !id.is_empty() && id.len() <= 128)
            .ok_or_else(|| WebhookError::Malformed("missing or invalid X-GitHub-Delivery".into()))?
            .to_owned();
        let event = header(headers, EVENT_HEADER)
            .filter(|event| !event.is_empty())
            .ok_or_else(|| WebhookError::Malformed("missing X-GitHub-Event".into()))?;
        let kind = match event {
            "ping" => DeliveryKind::Ping,
            "workflow_job" => parse_workflow_job(body)?,
            other => DeliveryKind::Ignored {
                event: other.chars().take(64).collect(),
                action: None,
            },
        };
        Ok(Delivery { id, kind })
    }
}

#[derive(Deserialize)]
struct WorkflowJobPayload {
    action: String,
    workflow_job: WorkflowJob,
    repository: Repository,
}

#[derive(Deserialize)]
struct WorkflowJob {
    id: u64,
    run_id: u64,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    runner_name: Option<String>,
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

fn parse_workflow_job(body: &[u8]) -> Result<DeliveryKind, WebhookError> {
    let payload: WorkflowJobPayload = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("workflow_job payload: {e}")))?;
    let status = match payload.action.as_str() {
        "queued" => JobStatus::Queued,
        "waiting" => JobStatus::Waiting,
        "in_progress" => JobStatus::InProgress,
        "completed" => JobStatus::Completed,
        _ => {
            return Ok(DeliveryKind::Ignored {
                event: "workflow_job".into(),
                action: Some(payload.action.chars().take(64).collect()),
            });
        }
    };
    Ok(DeliveryKind::Job(JobEvent {
        job: ForgeJob {
            job_id: payload.workflow_job.id,
            run_id: payload.workflow_job.run_id,
            repository: payload.repository.full_name,
            labels: LabelSet::new(payload.workflow_job.labels),
            status,
        },
        runner_name: payload.workflow_job.runner_name.filter(|n| !n.is_empty()),
        received_at: nimbus_types::now(),
    }))
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

    // The example from GitHub's "Validating webhook deliveries" documentation.
    #[test]
    fn matches_githubs_documented_example() {
        let secret = Secret::new("It's a Secret to Everybody");
        assert_eq!(
            GithubWebhooks::sign(&secret, b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn rejects_bad_signatures() {
        let secret = Secret::new("s3cret");
        let hooks = GithubWebhooks::new(secret.clone());
        let body = br#"{"zen":"hi"}"#;
        let good = GithubWebhooks::sign(&secret, body);
        assert!(
            hooks
                .verify(&headers(&[(SIGNATURE_HEADER, &good)]), body)
                .is_ok()
        );
        for (value, why) in [
            (None, "missing"),
            (Some("sha1=abc"), "other algorithm"),
            (Some("sha256=zz"), "not hex"),
            (Some("sha256="), "empty"),
            (
                Some(&GithubWebhooks::sign(&Secret::new("other"), body)[..]),
                "other secret",
            ),
        ] {
            let map = value.map_or_else(HeaderMap::new, |v| headers(&[(SIGNATURE_HEADER, v)]));
            let error = hooks.verify(&map, body).expect_err(why);
            assert_eq!(error.status(), 401, "{why}: {error}");
        }
        // A body changed after signing.
        assert!(
            hooks
                .verify(&headers(&[(SIGNATURE_HEADER, &good)]), b"{\"zen\":\"ho\"}")
                .is_err()
        );
        // No secret configured: nothing is trusted.
        let unset = GithubWebhooks::new(Secret::new(""));
        let empty_sig = GithubWebhooks::sign(&Secret::new(""), body);
        assert!(
            unset
                .verify(&headers(&[(SIGNATURE_HEADER, &empty_sig)]), body)
                .is_err()
        );
    }

    #[test]
    fn parses_workflow_job_actions() {
        let hooks = GithubWebhooks::new(Secret::new("x"));
        let body = br#"{"action":"queued","workflow_job":{"id":7,"run_id":3,"labels":["self-hosted","Linux"],"runner_name":null},"repository":{"full_name":"acme/app"}}"#;
        let map = headers(&[(EVENT_HEADER, "workflow_job"), (DELIVERY_HEADER, "d-1")]);
        let delivery = hooks.parse(&map, body).unwrap();
        assert_eq!(delivery.id, "d-1");
        let DeliveryKind::Job(event) = delivery.kind else {
            panic!("expected a job event, got {:?}", delivery.kind);
        };
        assert_eq!(event.job.job_id, 7);
        assert_eq!(event.job.status, JobStatus::Queued);
        assert_eq!(event.job.labels.to_string(), "linux,self-hosted");

        let other_action = br#"{"action":"requested","workflow_job":{"id":7,"run_id":3},"repository":{"full_name":"acme/app"}}"#;
        assert!(matches!(
            hooks.parse(&map, other_action).unwrap().kind,
            DeliveryKind::Ignored { .. }
        ));
        for bad in [&b"{not json"[..], br#"{"action":"queued"}"#, br#"[]"#] {
            assert_eq!(hooks.parse(&map, bad).unwrap_err().status(), 400);
        }
        let no_delivery = headers(&[(EVENT_HEADER, "workflow_job")]);
        assert_eq!(hooks.parse(&no_delivery, body).unwrap_err().status(), 400);
        let push = headers(&[(EVENT_HEADER, "push"), (DELIVERY_HEADER, "d-2")]);
        assert!(matches!(
            hooks.parse(&push, b"not even json").unwrap().kind,
            DeliveryKind::Ignored { .. }
        ));
    }
}
