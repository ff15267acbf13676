//! `GET /v1/registry`: the synced provider registry, read-only, with the same filters as
//! `nimbusctl registry search`.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use nimbus_baremetal::registry::{BmcSupport, Entry, Query as Search, Registry};
use nimbus_types::{Arch, Os};
use serde::{Deserialize, Serialize};

use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/registry", get(show))
}

#[derive(Debug, Default, Deserialize)]
pub struct RegistryQuery {
    os: Option<String>,
    arch: Option<String>,
    min_cores: Option<u32>,
    min_memory_gb: Option<u32>,
    max_price: Option<f64>,
    bmc: Option<String>,
}

/// The registry as last synced.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RegistryView {
    pub url: String,
    /// Absent until the first sync succeeded.
    pub commit: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub synced_at: Option<time::OffsetDateTime>,
    /// Why the last sync failed (the snapshot before it is still served).
    pub last_error: Option<String>,
    /// Entries with at least one matching hardware class (only those classes).
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<Entry>,
    /// Files left out, with file, line, column and key.
    #[schema(value_type = Vec<Object>)]
    pub diagnostics: Vec<nimbus_baremetal::registry::Diagnostic>,
}

fn search(query: &RegistryQuery) -> Result<Search, ApiError> {
    let os = match &query.os {
        Some(os) => Some(
            os.parse::<Os>()
                .map_err(|_| ApiError::invalid_field("os", "must be macos or linux"))?,
        ),
        None => None,
    };
    let arch = match &query.arch {
        Some(arch) => Some(
            arch.parse::<Arch>()
                .map_err(|_| ApiError::invalid_field("arch", "must be arm64 or x86_64"))?,
        ),
        None => None,
    };
    let bmc = match query.bmc.as_deref() {
        None => None,
        Some("redfish") => Some(BmcSupport::Redfish),
        Some("ipmi") => Some(BmcSupport::Ipmi),
        Some("none") => Some(BmcSupport::None),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "bmc",
                "must be redfish, ipmi or none",
            ));
        }
    };
    if query.max_price.is_some_and(|p| !p.is_finite() || p < 0.0) {
        return Err(ApiError::invalid_field(
            "max_price",
            "must be a non-negative number",
        ));
    }
    Ok(Search {
        os,
        arch,
        min_cores: query.min_cores,
        min_memory_gb: query.min_memory_gb,
        max_price: query.max_price,
        bmc,
        labels: Vec::new(),
    })
}

/// The provider registry synced from Git (`--registry-url`), filtered like `registry search`.
#[utoipa::path(get, path = "/v1/registry", tag = "registry", security(("bearer" = [])),
    params(
        ("os" = Option<String>, Query, description = "macos or linux"),
        ("arch" = Option<String>, Query, description = "arm64 or x86_64"),
        ("min_cores" = Option<u32>, Query),
        ("min_memory_gb" = Option<u32>, Query),
        ("max_price" = Option<f64>, Query, description = "US dollars per hour"),
        ("bmc" = Option<String>, Query, description = "redfish, ipmi or none"),
    ),
    responses(
        (status = 200, body = RegistryView),
        (status = 404, description = "no registry is configured", body = nimbus_types::api::ErrorBody),
        (status = 422, description = "a bad filter", body = nimbus_types::api::ErrorBody),
    ))]
pub async fn show(
    State(state): State<AppState>,
    _caller: Caller,
    Query(query): Query<RegistryQuery>,
) -> Result<Json<RegistryView>, ApiError> {
    let Some(source) = &state.registry.source else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no provider registry is configured (start nimbusd server with --registry-url)",
        ));
    };
    let search = search(&query)?;
    let snapshot = state.registry.snapshot();
    let mut entries = Vec::new();
    if let Some(snapshot) = &snapshot {
        let registry = Registry {
            entries: snapshot
                .entries
                .iter()
                .map(|e| (e.name.clone(), e.clone()))
                .collect(),
            diagnostics: Vec::new(),
        };
        for entry in registry.entries.values() {
            let classes: Vec<_> = registry
                .search(&search)
                .into_iter()
                .filter(|offer| offer.entry.name == entry.name)
                .map(|offer| offer.class.clone())
                .collect();
            if !classes.is_empty() {
                entries.push(Entry {
                    classes,
                    ..entry.clone()
                });
            }
        }
    }
    Ok(Json(RegistryView {
        url: source.url.clone(),
        commit: snapshot.as_ref().map(|s| s.commit.clone()),
        synced_at: snapshot.as_ref().map(|s| s.synced_at),
        last_error: state.registry.last_error(),
        entries,
        diagnostics: snapshot.map(|s| s.diagnostics).unwrap_or_default(),
    }))
}

/// Checks a baremetal provider's `registry_entry` against the synced registry: the entry must
/// exist and offer every host's os/arch. Errors name the field.
pub fn check_provider(
    state: &AppState,
    provider_type: nimbus_types::ProviderType,
    config: Option<&serde_json::Value>,
) -> Result<(), ApiError> {
    if provider_type != nimbus_types::ProviderType::Baremetal {
        return Ok(());
    }
    let Some(config) = config else { return Ok(()) };
    let Some(name) = config.get("registry_entry") else {
        return Ok(());
    };
    let name = name
        .as_str()
        .ok_or_else(|| ApiError::invalid_field("config.registry_entry", "must be a string"))?;
    let snapshot = state.registry.snapshot().ok_or_else(|| {
        ApiError::invalid_field(
            "config.registry_entry",
            if state.registry.source.is_none() {
                "this server syncs no provider registry (--registry-url)"
            } else {
                "the provider registry has not been synced yet; try again shortly"
            },
        )
    })?;
    let entry = snapshot
        .entries
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| {
            ApiError::invalid_field(
                "config.registry_entry",
                format!(
                    "no valid entry {name:?} in the provider registry (commit {})",
                    snapshot.commit
                ),
            )
        })?;
    let hosts = config
        .get("hosts")
        .and_then(|h| h.as_array())
        .cloned()
        .unwrap_or_default();
    for (idx, host) in hosts.iter().enumerate() {
        let os = host.get("os").and_then(|v| v.as_str()).unwrap_or_default();
        let arch = host
            .get("arch")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let offered = entry
            .classes
            .iter()
            .any(|class| class.os.as_str() == os && class.arch.as_str() == arch);
        if !offered {
            return Err(ApiError::invalid_field(
                format!("config.hosts[{idx}]"),
                format!("registry entry {name:?} offers no {os}/{arch} class"),
            ));
        }
    }
    Ok(())
}
