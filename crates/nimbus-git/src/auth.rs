//! Who is asking and what they may do: HTTP Basic (password or token) and Bearer tokens,
//! argon2 password hashes, personal access tokens, per-repository permissions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::HeaderMap;
use base64::Engine as _;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::db::{self, Db};
use crate::error::{ApiError, Error};

/// Per-repository permission, ordered: Read < Write < Admin.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Perm {
    Read,
    Write,
    Admin,
}

impl Perm {
    pub fn as_str(self) -> &'static str {
        match self {
            Perm::Read => "read",
            Perm::Write => "write",
            Perm::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Perm> {
        match s {
            "read" => Some(Perm::Read),
            "write" => Some(Perm::Write),
            "admin" => Some(Perm::Admin),
            _ => None,
        }
    }
}

/// What a credential may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub username: String,
    pub is_owner: bool,
}

/// The caller of a request; `user: None` is anonymous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: Option<User>,
    /// `None` for a password (full rights), `Some` for a token.
    pub token_scope: Option<Scope>,
    /// A CI job token: may read this one repository (by id) and nothing else.
    pub repo_only: Option<String>,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal {
            user: None,
            token_scope: None,
            repo_only: None,
        }
    }
    pub fn is_owner(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.is_owner) && self.token_scope != Some(Scope::Read)
    }
    pub fn name(&self) -> &str {
        self.user
            .as_ref()
            .map_or("anonymous", |u| u.username.as_str())
    }
    /// Cap a permission by the token's scope.
    pub fn cap(&self, perm: Perm) -> Perm {
        match self.token_scope {
            Some(Scope::Read) => perm.min(Perm::Read),
            _ => perm,
        }
    }
}

pub const TOKEN_PREFIX: &str = "ngp_";
/// Prefix of CI job tokens (see [`crate::ci`]): read-only, one repository, short-lived.
pub const JOB_TOKEN_PREFIX: &str = "ngj_";

pub fn hash_password(password: &str) -> Result<String, Error> {
    let salt = SaltString::encode_b64(&rand::rng().random::<[u8; 16]>())
        .map_err(|e| Error::Internal(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("argon2: {e}")))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

pub fn generate_secret(n_bytes: usize) -> String {
    let bytes: Vec<u8> = (0..n_bytes).map(|_| rand::rng().random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", generate_secret(30))
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Resolves credentials, caching successful ones for a short while so that Git's many requests
/// per operation do not each pay for an argon2 verification. Cleared whenever users or tokens
/// change.
pub struct Authenticator {
    db: Db,
    cache: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
    /// Headers that just failed: refused again without another argon2 run for a while.
    failures: Mutex<HashMap<[u8; 32], Instant>>,
    /// Bounds the CPU and memory argon2 may take at once, whatever callers send.
    verify_slots: tokio::sync::Semaphore,
}

const FAILURE_MEMORY: Duration = Duration::from_secs(5);

/// Every change to users or tokens clears the cache, so the TTL only bounds how long a
/// verified password stays in memory.
const CACHE_TTL: Duration = Duration::from_secs(600);
const CACHE_MAX: usize = 4096;

impl Authenticator {
    pub fn new(db: Db) -> Authenticator {
        Authenticator {
            db,
            cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            verify_slots: tokio::sync::Semaphore::new(2),
        }
    }

    pub fn forget_all(&self) {
        self.cache.lock().expect("auth cache lock").clear();
        self.failures.lock().expect("auth failure lock").clear();
    }

    /// The principal behind the `Authorization` header; anonymous without one.
    /// Wrong credentials are an error (401), not anonymous.
    pub async fn principal(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Ok(Principal::anonymous());
        };
        if let Some(token) = job_token_of(value) {
            // Never cached: a job token stops working the moment its job ends.
            return self.by_job_token(&token).await;
        }
        let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        if let Some((principal, at)) = self.cache.lock().expect("auth cache lock").get(&key)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(principal.clone());
        }
        if self
            .failures
            .lock()
            .expect("auth failure lock")
            .get(&key)
            .is_some_and(|at| at.elapsed() < FAILURE_MEMORY)
        {
            return Err(ApiError::unauthorized());
        }
        let result = self.resolve(value).await;
        let principal = match result {
            Ok(principal) => principal,
            Err(err) => {
                let mut failures = self.failures.lock().expect("auth failure lock");
                failures.retain(|_, at| at.elapsed() < FAILURE_MEMORY);
                if failures.len() < CACHE_MAX {
                    failures.insert(key, Instant::now());
                }
                return Err(err);
            }
        };
        let mut cache = self.cache.lock().expect("auth cache lock");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (principal.clone(), Instant::now()));
        Ok(principal)
    }

    async fn resolve(&self, value: &axum::http::HeaderValue) -> Result<Principal, ApiError> {
        let value = value.to_str().map_err(|_| ApiError::unauthorized())?;
        let principal = if let Some(b64) = value.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| ApiError::unauthorized())?;
            let decoded = String::from_utf8(decoded).map_err(|_| ApiError::unauthorized())?;
            let (username, secret) = decoded.split_once(':').ok_or_else(ApiError::unauthorized)?;
            if secret.starts_with(TOKEN_PREFIX) {
                self.by_token(secret).await?
            } else {
                self.by_password(username, secret).await?
            }
        } else if let Some(token) = value.strip_prefix("Bearer ") {
            self.by_token(token.trim()).await?
        } else {
            return Err(ApiError::unauthorized());
        };
        Ok(principal)
    }

    async fn by_password(&self, username: &str, password: &str) -> Result<Principal, ApiError> {
        let row = db::user_by_name(&self.db, username)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        let hash = row.password_hash.clone();
        let password = password.to_owned();
        let _slot = self
            .verify_slots
            .acquire()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        if !ok {
            return Err(ApiError::unauthorized());
        }
        Ok(Principal {
            user: Some(User {
                id: row.id,
                username: row.username,
                is_owner: row.is_owner != 0,
            }),
            token_scope: None,
            repo_only: None,
        })
    }

    async fn by_job_token(&self, token: &str) -> Result<Principal, ApiError> {
        let grant = crate::ci::store::job_token(&self.db, &token_hash(token), db::now_ms())
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        Ok(Principal {
            user: Some(User {
                id: format!("job:{}:{}", grant.run_id, grant.job_key),
                username: format!("ci-job-{}", grant.job_key),
                is_owner: false,
            }),
            token_scope: Some(Scope::Read),
            repo_only: Some(grant.repo_id),
        })
    }

    async fn by_token(&self, token: &str) -> Result<Principal, ApiError> {
        let row = db::token_by_hash(&self.db, &token_hash(token))
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        let user = db::user_by_id(&self.db, &row.user_id)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        let scope = if row.scope == "write" {
            Scope::Write
        } else {
            Scope::Read
        };
        Ok(Principal {
            user: Some(User {
                id: user.id,
                username: user.username,
                is_owner: user.is_owner != 0,
            }),
            token_scope: Some(scope),
            repo_only: None,
        })
    }
}

/// The job token in an `Authorization` header (Basic password or Bearer), if it holds one.
fn job_token_of(value: &axum::http::HeaderValue) -> Option<String> {
    let value = value.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        let token = token.trim();
        return token
            .starts_with(JOB_TOKEN_PREFIX)
            .then(|| token.to_owned());
    }
    let b64 = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (_, secret) = decoded.split_once(':')?;
    secret
        .starts_with(JOB_TOKEN_PREFIX)
        .then(|| secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_verifies() {
        let hash = hash_password("hunter2").unwrap();
        assert!(verify_password("hunter2", &hash));
        assert!(!verify_password("hunter3", &hash));
        assert!(!verify_password("hunter2", "not a hash"));
    }

    #[test]
    fn read_token_caps_permission() {
        let user = User {
            id: "u".into(),
            username: "o".into(),
            is_owner: true,
        };
        let p = Principal {
            user: Some(user),
            token_scope: Some(Scope::Read),
            repo_only: None,
        };
        assert_eq!(p.cap(Perm::Admin), Perm::Read);
        assert!(!p.is_owner());
    }
}
