//! GitLab webhook deliveries: the `X-Gitlab-Token` secret (compared in constant time),
//! `X-Gitlab-Event-UUID` as the delivery id the demand book de-duplicates by, and Job Hook
//! (`object_kind: build`) parsing.

use http::HeaderMap;
use nimbus_types::Secret;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::demand::{ForgeJob, JobEvent, JobStatus, LabelSet};
use crate::webhook::{Delivery, DeliveryKind, WebhookError, WebhookVerifier};

pub const TOKEN_HEADER: &str = "x-gitlab-token";
pub const EVENT_HEADER: &str = "x-gitlab-event";
pub const UUID_HEADER: &str = "x-gitlab-event-uuid";
pub const JOB_HOOK: &str = "Job Hook";

/// Verifies deliveries carrying the secret token configured on the GitLab webhook.
pub struct GitlabWebhooks {
    secret: Secret,
}

impl GitlabWebhooks {
    pub fn new(secret: Secret) -> Self {
        GitlabWebhooks { secret }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Equal in constant time: both sides are hashed first, so neither the length nor a common
/// prefix of the given token shows in the time taken.
fn same_secret(given: &str, secret: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(secret.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

impl WebhookVerifier for GitlabWebhooks {
    fn verify(&self, headers: &HeaderMap, _body: &[u8]) -> Result<(), WebhookError> {
        if self.secret.is_empty() {
            return Err(WebhookError::Unauthorized(
                "no webhook secret is configured",
            ));
        }
        let Some(given) = header(headers, TOKEN_HEADER) else {
            return Err(WebhookError::Unauthorized("missing X-Gitlab-Token"));
        };
        if same_secret(given, self.secret.expose()) {
            Ok(())
        } else {
            Err(WebhookError::Unauthorized("X-Gitlab-Token does not match"))
        }
    }

    fn parse(&self, headers: &HeaderMap, body: &[u8]) -> Result<Delivery, WebhookError> {
        let id = header(headers, UUID_HEADER)
            .filter(|id| !id.is_empty() && id.len() <= 128)
            .ok_or_else(|| {
                WebhookError::Malformed("missing or invalid X-Gitlab-Event-UUID".into())
            })?
            .to_owned();
        let event = header(headers, EVENT_HEADER)
            .filter(|event| !event.is_empty())
            .ok_or_else(|| WebhookError::Malformed("missing X-Gitlab-Event".into()))?;
        let kind = match event {
            JOB_HOOK => parse_job_hook(body)?,
            other => DeliveryKind::Ignored {
                event: other.chars().take(64).collect(),
                action: None,
            },
        };
        Ok(Delivery { id, kind })
    }
}

#[derive(Deserialize)]
struct JobHook {
    object_kind: String,
    build_id: u64,
    build_status: String,
    #[serde(default)]
    pipeline_id: u64,
    #[serde(default)]
    project_name: Option<String>,
    #[serde(default)]
    project: Option<Project>,
    /// The job's tags (GitLab 16.9+); the runner's tags are not the job's.
    #[serde(default)]
    tag_list: Option<Vec<String>>,
    #[serde(default)]
    runner: Option<HookRunner>,
}

#[derive(Deserialize)]
struct Project {
    path_with_namespace: Option<String>,
}

#[derive(Deserialize)]
struct HookRunner {
    description: Option<String>,
}

/// A GitLab job status as the demand book sees it; `None` for statuses that are not demand
/// (`manual`, `scheduled`: a person or a timer must act first).
pub fn job_status(status: &str) -> Option<JobStatus> {
    match status {
        "pending" => Some(JobStatus::Queued),
        "created" | "waiting_for_resource" | "preparing" | "waiting_for_callback" => {
            Some(JobStatus::Waiting)
        }
        "running" | "canceling" => Some(JobStatus::InProgress),
        "success" | "failed" | "canceled" | "skipped" => Some(JobStatus::Completed),
        _ => None,
    }
}

fn parse_job_hook(body: &[u8]) -> Result<DeliveryKind, WebhookError> {
    let payload: JobHook = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("Job Hook payload: {e}")))?;
    if payload.object_kind != "build" {
        return Err(WebhookError::Malformed(format!(
            "Job Hook payload with object_kind {:?}",
            payload.object_kind.chars().take(32).collect::<String>()
        )));
    }
    let Some(status) = job_status(&payload.build_status) else {
        return Ok(DeliveryKind::Ignored {
            event: JOB_HOOK.into(),
            action: Some(payload.build_status.chars().take(64).collect()),
        });
    };
    let repository = payload
        .project
        .and_then(|p| p.path_with_namespace)
        .or(payload.project_name)
        .unwrap_or_default();
    Ok(DeliveryKind::Job(JobEvent {
        job: ForgeJob {
            job_id: payload.build_id,
            run_id: payload.pipeline_id,
            repository,
            labels: LabelSet::new(payload.tag_list.unwrap_or_default()),
            status,
        },
        runner_name: payload
            .runner
            .and_then(|r| r.description)
            .filter(|n| !n.is_empty()),
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

    #[test]
    fn the_token_must_match() {
        let hooks = GitlabWebhooks::new(Secret::new("s3cret"));
        assert!(
            hooks
                .verify(&headers(&[(TOKEN_HEADER, "s3cret")]), b"")
                .is_ok()
        );
        for (value, why) in [
            (None, "missing"),
            (Some("s3cre"), "prefix"),
            (Some("s3cret2"), "longer"),
            (Some("other"), "other"),
        ] {
            let map = value.map_or_else(HeaderMap::new, |v| headers(&[(TOKEN_HEADER, v)]));
            assert_eq!(hooks.verify(&map, b"").unwrap_err().status(), 401, "{why}");
        }
        let unset = GitlabWebhooks::new(Secret::new(""));
        assert!(unset.verify(&headers(&[(TOKEN_HEADER, "")]), b"").is_err());
    }

    #[test]
    fn job_statuses() {
        for (status, expect) in [
            ("pending", Some(JobStatus::Queued)),
            ("created", Some(JobStatus::Waiting)),
            ("running", Some(JobStatus::InProgress)),
            ("success", Some(JobStatus::Completed)),
            ("canceled", Some(JobStatus::Completed)),
            ("manual", None),
            ("scheduled", None),
        ] {
            assert_eq!(job_status(status), expect, "{status}");
        }
    }
}
