//! `/repos/{name}/secrets`: per-repository CI secrets, write-only for users (admins of the
//! repository), sealed at rest with XChaCha20-Poly1305 bound to `ci-secret:<repo id>:<name>`.
//! Only nimbusd (the owner) reads values, per run: `GET runs/{number}/secrets`, withheld when
//! the run's pusher lacks write access. Values are never logged or shown in `Debug`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

use crate::AppState;
use crate::api::repos::find;
use crate::api::runs::load_run;
use crate::api::statuses::bad;
use crate::api::{ApiJson, Caller, iso8601};
use crate::auth::Perm;
use crate::ci::{self, store};
use crate::db;
use crate::error::{ApiError, Error};
use crate::repos::RepoEntry;

pub const VALUE_LIMIT: usize = 64 << 10;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/repos/{name}/secrets", get(list))
        .route("/repos/{name}/secrets/{secret}", put(set).delete(delete))
        .route("/repos/{name}/runs/{number}/secrets", get(for_run))
}

/// A secret value on its way in; never shown by `Debug`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecret {
    /// 1 byte to 64 KiB
    value: String,
}

impl std::fmt::Debug for SetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SetSecret { value: [redacted] }")
    }
}

#[derive(Serialize, ToSchema)]
pub struct SecretInfo {
    name: String,
    updated_at: String,
}

/// The values for one run; `withheld` (and no values) when its pusher may not write.
#[derive(Serialize, ToSchema)]
pub struct RunSecrets {
    secrets: BTreeMap<String, String>,
    withheld: bool,
}

impl std::fmt::Debug for RunSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunSecrets")
            .field("names", &self.secrets.keys().collect::<Vec<_>>())
            .field("withheld", &self.withheld)
            .finish()
    }
}

#[utoipa::path(put, path = "/api/v1/repos/{name}/secrets/{secret}", tag = "secrets",
    params(("name" = String, Path), ("secret" = String, Path, description = "[A-Z_][A-Z0-9_]*, at most 100 characters")),
    request_body = SetSecret,
    responses((status = 204), (status = 403, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn set(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, secret)): Path<(String, String)>,
    ApiJson(body): ApiJson<SetSecret>,
) -> Result<StatusCode, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Admin)?;
    ci::check_secret_name(&secret).map_err(bad)?;
    if body.value.is_empty() || body.value.len() > VALUE_LIMIT {
        return Err(ApiError::invalid(
            "value",
            format!(
                "must be 1 to {VALUE_LIMIT} bytes (got {})",
                body.value.len()
            ),
        ));
    }
    let sealed = state
        .ci
        .sealer
        .seal(body.value.as_bytes(), &ci::secret_aad(&entry.id, &secret));
    let sealed = base64::engine::general_purpose::STANDARD.encode(sealed);
    {
        let _lock = state.ci.lock.lock().await;
        store::put_secret(&state.db, &entry.id, &secret, &sealed).await?;
    }
    tracing::info!(repo.name = %entry.name, secret.name = %secret, user.name = %caller.0.name(), "secret set");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/repos/{name}/secrets", tag = "secrets", params(("name" = String, Path)),
    responses((status = 200, body = Vec<SecretInfo>), (status = 403, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<SecretInfo>>, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Admin)?;
    Ok(Json(
        store::secrets_of(&state.db, &entry.id)
            .await?
            .into_iter()
            .map(|r| SecretInfo {
                name: r.name,
                updated_at: iso8601(r.updated_at),
            })
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/repos/{name}/secrets/{secret}", tag = "secrets",
    params(("name" = String, Path), ("secret" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, secret)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Admin)?;
    ci::check_secret_name(&secret).map_err(bad)?;
    if !store::delete_secret(&state.db, &entry.id, &secret).await? {
        return Err(ApiError::not_found(format!(
            "name: no secret '{secret}' in '{}'",
            entry.name
        )));
    }
    tracing::info!(repo.name = %entry.name, secret.name = %secret, user.name = %caller.0.name(), "secret deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Whether `username` may write to the repository now (the owner always may).
async fn may_write(state: &AppState, entry: &RepoEntry, username: &str) -> Result<bool, Error> {
    let Some(user) = db::user_by_name(&state.db, username).await? else {
        return Ok(false);
    };
    if user.is_owner != 0 {
        return Ok(true);
    }
    Ok(entry
        .meta()
        .collaborators
        .get(&user.id)
        .is_some_and(|(_, perm)| *perm >= Perm::Write))
}

#[utoipa::path(get, path = "/api/v1/repos/{name}/runs/{number}/secrets", tag = "secrets",
    params(("name" = String, Path), ("number" = i64, Path)),
    responses((status = 200, body = RunSecrets), (status = 403, body = crate::error::ErrorBody),
        (status = 409, description = "the run is finished", body = crate::error::ErrorBody)))]
pub async fn for_run(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, number)): Path<(String, String)>,
) -> Result<Json<RunSecrets>, ApiError> {
    let (entry, _) = find(&state, &caller, &name, Perm::Read)?;
    caller.require_owner()?;
    let run = load_run(&state, &entry, &number).await?;
    if run.is_finished() {
        return Err(ApiError::conflict(format!(
            "number: run {} is finished; its secrets are no longer given out",
            run.number
        )));
    }
    if !may_write(&state, &entry, &run.pusher).await? {
        tracing::info!(repo.name = %entry.name, run.number = run.number, user.name = %run.pusher, "secrets withheld: the pusher cannot write");
        return Ok(Json(RunSecrets {
            secrets: BTreeMap::new(),
            withheld: true,
        }));
    }
    let mut secrets = BTreeMap::new();
    for row in store::sealed_secrets(&state.db, &entry.id).await? {
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(&row.sealed)
            .map_err(|_| Error::Internal(format!("secret {} is not base64", row.name)))?;
        let value = state
            .ci
            .sealer
            .open(&sealed, &ci::secret_aad(&entry.id, &row.name))
            .map_err(|_| {
                Error::Internal(format!(
                    "secret {} does not open with this server's key",
                    row.name
                ))
            })?;
        let value = String::from_utf8(value)
            .map_err(|_| Error::Internal(format!("secret {} is not UTF-8", row.name)))?;
        secrets.insert(row.name, value);
    }
    Ok(Json(RunSecrets {
        secrets,
        withheld: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_values() {
        let set: SetSecret = serde_json::from_str(r#"{"value":"hunter2"}"#).unwrap();
        assert!(!format!("{set:?}").contains("hunter2"), "{set:?}");
        let run = RunSecrets {
            secrets: BTreeMap::from([("API".to_owned(), "hunter2".to_owned())]),
            withheld: false,
        };
        let text = format!("{run:?}");
        assert!(!text.contains("hunter2") && text.contains("API"), "{text}");
    }
}
