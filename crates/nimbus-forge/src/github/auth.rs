//! GitHub credentials: a GitHub App installation (RS256 JWT exchanged for installation access
//! tokens, cached) or a personal access token.
//!
//! The installation token is cached until 5 minutes before it expires. When it must be renewed,
//! exactly one caller exchanges a new one while the others wait for it (single flight), so a
//! burst of registrations costs one exchange, not one each. Reading a cached token takes a read
//! lock only.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nimbus_types::Secret;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::github::transport::{Budget, Transport};
use crate::{Error, Result};

/// Renew an installation token this long before GitHub says it expires.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// GitHub rejects App JWTs whose `exp` is more than 10 minutes ahead; stay under it.
const JWT_LIFETIME: Duration = Duration::from_secs(9 * 60);
/// Backdate `iat` against clock drift between Nimbus and GitHub.
const JWT_BACKDATE: Duration = Duration::from_secs(60);

pub(crate) enum Credentials {
    App(AppAuth),
    Token(Secret),
}

#[derive(Clone)]
struct CachedToken {
    token: Secret,
    expires_at: OffsetDateTime,
}

pub(crate) struct AppAuth {
    app_id: u64,
    installation_id: u64,
    key: EncodingKey,
    cache: RwLock<Option<CachedToken>>,
    refresh: tokio::sync::Mutex<()>,
    exchanges: AtomicU64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JwtClaims {
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
}

#[derive(Deserialize)]
struct InstallationToken {
    token: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

impl AppAuth {
    pub fn new(app_id: u64, installation_id: u64, private_key: &Secret) -> Result<Self> {
        // The parse error could quote key material; say only what is wrong.
        let key = EncodingKey::from_rsa_pem(private_key.expose().as_bytes()).map_err(|_| {
            Error::config(
                "private_key",
                "not an RSA private key in PEM format (the .pem file GitHub generates for the App)",
            )
        })?;
        Ok(AppAuth {
            app_id,
            installation_id,
            key,
            cache: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
            exchanges: AtomicU64::new(0),
        })
    }

    /// Installation token exchanges done so far.
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }

    /// A signed App JWT: `iat` 60 s in the past, `exp` 9 minutes ahead, `iss` the App id.
    pub fn jwt(&self, now: OffsetDateTime) -> Result<Secret> {
        let claims = JwtClaims {
            iat: (now - JWT_BACKDATE).unix_timestamp(),
            exp: (now + JWT_LIFETIME).unix_timestamp(),
            iss: self.app_id.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map(Secret::new)
            .map_err(|e| Error::Permanent(format!("cannot sign the GitHub App JWT: {e}")))
    }

    /// The cached installation token if it is good for at least five more minutes.
    pub fn cached(&self) -> Option<Secret> {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        let cached = cache.as_ref()?;
        (OffsetDateTime::now_utc() + REFRESH_BEFORE_EXPIRY < cached.expires_at)
            .then(|| cached.token.clone())
    }

    /// A valid installation token, exchanging a new one when needed (one exchange at a time).
    pub async fn token(&self, transport: &Transport) -> Result<Secret> {
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let _flight = self.refresh.lock().await;
        // Whoever held the lock before us may have refreshed it already.
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let fresh = self.exchange(transport).await?;
        let token = fresh.token.clone();
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) = Some(fresh);
        Ok(token)
    }

    /// Drops the cached token after GitHub rejected `rejected` (revoked, App reinstalled).
    pub fn invalidate(&self, rejected: &Secret) {
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.as_ref().is_some_and(|c| &c.token == rejected) {
            *cache = None;
        }
    }

    async fn exchange(&self, transport: &Transport) -> Result<CachedToken> {
        let jwt = self.jwt(OffsetDateTime::now_utc())?;
        let installation = self.installation_id.to_string();
        let url = transport.url(
            &["app", "installations", &installation, "access_tokens"],
            &[],
        );
        self.exchanges.fetch_add(1, Ordering::Relaxed);
        let response = transport
            .send(Method::POST, url, None, &jwt, Budget::Ignore)
            .await
            .map_err(|error| match error {
                Error::NotFound(message) => Error::Unauthorized(format!(
                    "installation {installation} of App {} not found ({message})",
                    self.app_id
                )),
                other => other,
            })?;
        let parsed: InstallationToken = serde_json::from_slice(&response.body).map_err(|e| {
            Error::Permanent(format!("unexpected installation token response: {e}"))
        })?;
        tracing::debug!(
            installation.id = self.installation_id,
            expires_at = %parsed.expires_at,
            "GitHub App installation token exchanged"
        );
        Ok(CachedToken {
            token: Secret::new(parsed.token),
            expires_at: parsed.expires_at,
        })
    }
}
