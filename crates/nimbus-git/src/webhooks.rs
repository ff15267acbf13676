//! Webhook delivery from the event outbox: fan each event out to the repository's webhooks,
//! POST it signed with HMAC-SHA256, retry failures with exponential backoff, and keep a log.
//!
//! Targets on loopback, private, link-local and similar addresses are refused unless the
//! configuration allows them; the check runs when a webhook is created and again before each
//! attempt (DNS may change), and redirects are never followed.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::config::WebhookSettings;
use crate::db::{self, Attempt, Db};

pub const SIGNATURE_HEADER: &str = "X-Nimbus-Signature-256";
pub const EVENT_HEADER: &str = "X-Nimbus-Event";
pub const DELIVERY_HEADER: &str = "X-Nimbus-Delivery";

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Why a webhook target is refused, if it is.
pub async fn check_target(url: &str, allow_private: bool) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be http or https".into());
    }
    let host = parsed.host_str().ok_or("has no host")?.to_owned();
    if allow_private {
        return Ok(());
    }
    let port = parsed.port_or_known_default().unwrap_or(80);
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    if let Some(ip) = addrs.into_iter().find(|ip| is_private(*ip)) {
        return Err(format!(
            "{ip} is a loopback or private address (not allowed by configuration)"
        ));
    }
    Ok(())
}

pub struct Deliverer {
    db: Db,
    settings: WebhookSettings,
    client: reqwest::Client,
    pub wake: Arc<Notify>,
}

impl Deliverer {
    pub fn new(db: Db, settings: WebhookSettings, wake: Arc<Notify>) -> Deliverer {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("nimbus-git/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("http client");
        Deliverer {
            db,
            settings,
            client,
            wake,
        }
    }

    pub async fn run(self) {
        loop {
            if let Err(err) = self.dispatch().await {
                tracing::warn!(error = %err, "webhook dispatch failed");
            }
            if let Err(err) = self.deliver_due().await {
                tracing::warn!(error = %err, "webhook delivery pass failed");
            }
            let sleep = match db::next_delivery_at(&self.db).await {
                Ok(Some(at)) => Duration::from_millis((at - db::now_ms()).clamp(5, 5_000) as u64),
                _ => Duration::from_secs(5),
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    async fn dispatch(&self) -> Result<(), crate::error::Error> {
        loop {
            let events = db::undispatched_events(&self.db, 100).await?;
            if events.is_empty() {
                return Ok(());
            }
            for event in events {
                let hooks = db::webhooks_of(&self.db, &event.repo_id).await?;
                let ids: Vec<String> = hooks
                    .into_iter()
                    .filter(|h| h.active != 0)
                    .filter(|h| h.events.is_empty() || h.events.split(',').any(|e| e == event.kind))
                    .map(|h| h.id)
                    .collect();
                db::dispatch_event(&self.db, &event.id, &ids).await?;
            }
        }
    }

    async fn deliver_due(&self) -> Result<(), crate::error::Error> {
        let due = db::due_deliveries(&self.db, db::now_ms(), 50).await?;
        for delivery in due {
            let Some(hook) = db::webhook(&self.db, &delivery.webhook_id).await? else {
                continue;
            };
            let Some(event) = db::event(&self.db, &delivery.event_id).await? else {
                continue;
            };
            let attempts = delivery.attempts + 1;
            let outcome = self
                .attempt(
                    &hook.url,
                    &hook.secret,
                    &event.kind,
                    &delivery.id,
                    &event.payload,
                )
                .await;
            let now = db::now_ms();
            let attempt = match outcome {
                Ok(code) => Attempt {
                    status: "delivered",
                    attempts,
                    next_attempt_at: now,
                    status_code: Some(code),
                    error: None,
                    delivered_at: Some(now),
                },
                Err((code, error, permanent)) => {
                    let give_up = permanent || attempts >= i64::from(self.settings.max_attempts);
                    let backoff = self.settings.retry_base.as_millis() as i64
                        * (1i64 << (attempts - 1).min(20));
                    Attempt {
                        status: if give_up { "failed" } else { "pending" },
                        attempts,
                        next_attempt_at: now + backoff.min(3_600_000),
                        status_code: code,
                        error: Some(error),
                        delivered_at: None,
                    }
                }
            };
            tracing::info!(
                webhook.id = %hook.id, delivery.id = %delivery.id, delivery.status = attempt.status,
                delivery.attempts = attempts, "webhook attempt"
            );
            db::record_attempt(&self.db, &delivery.id, attempt).await?;
        }
        Ok(())
    }

    /// Ok(status) on 2xx; Err((status, message, permanent)) otherwise.
    async fn attempt(
        &self,
        url: &str,
        secret: &str,
        kind: &str,
        delivery_id: &str,
        payload: &str,
    ) -> Result<i64, (Option<i64>, String, bool)> {
        check_target(url, self.settings.allow_private)
            .await
            .map_err(|e| (None, e, true))?;
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header(EVENT_HEADER, kind)
            .header(DELIVERY_HEADER, delivery_id)
            .header(SIGNATURE_HEADER, sign(secret, payload.as_bytes()))
            .body(payload.to_owned())
            .send()
            .await
            .map_err(|e| (None, format!("request failed: {e}"), false))?;
        let code = i64::from(response.status().as_u16());
        if response.status().is_success() {
            Ok(code)
        } else {
            Err((
                Some(code),
                format!("receiver answered {}", response.status()),
                false,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_known_vector() {
        // RFC 4231 test case 2
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[tokio::test]
    async fn private_targets_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:9/x",
            "http://10.1.2.3/",
            "http://[::1]/",
            "http://169.254.169.254/",
            "http://localhost/",
        ] {
            assert!(
                check_target(url, false).await.is_err(),
                "{url} should be refused"
            );
            assert!(
                check_target(url, true).await.is_ok(),
                "{url} should be allowed with allow_private"
            );
        }
        assert!(
            check_target("http://93.184.215.14/hook", false)
                .await
                .is_ok()
        );
        assert!(check_target("ftp://example.com/", true).await.is_err());
    }
}
