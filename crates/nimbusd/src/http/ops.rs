//! Liveness, readiness and metrics: unauthenticated, for load balancers and Prometheus.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use nimbus_forge::Forge;
use nimbus_types::TenantId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "alive")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// The process can serve requests: the store answers and no shutdown is under way.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "ready"),
    (status = 503, description = "not ready")
))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_owned(),
        );
    }
    match state.ping.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check: store unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable\n".to_owned(),
            )
        }
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus metrics")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.forge_metrics.refresh(&state.fleet.forges().cached());
    state.cost_metrics.refresh(&state.fleet).await;
    let mut body = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut body, &state.metrics) {
        tracing::error!(error = %err, "cannot encode metrics");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CostLabels {
    tenant: String,
    /// Empty for machines provisioned by hand.
    pool: String,
}

/// `nimbus_cost_dollars_total`: this calendar month's spend per tenant and pool, recomputed
/// from the store at each scrape.
#[derive(Clone, Default)]
pub struct CostMetrics {
    dollars: Family<CostLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl CostMetrics {
    pub fn register(registry: &mut Registry) -> CostMetrics {
        let metrics = CostMetrics::default();
        registry.register(
            "nimbus_cost_dollars_total",
            "Dollars spent this calendar month (UTC), by tenant and pool, from the price table",
            metrics.dollars.clone(),
        );
        metrics
    }

    async fn refresh(&self, fleet: &nimbus_fleet::Fleet) {
        match fleet
            .costs(&nimbus_fleet::costs::CostQuery::default())
            .await
        {
            Ok(report) => {
                self.dollars.clear();
                for row in report.rows {
                    let labels = CostLabels {
                        tenant: row.tenant,
                        pool: row.pool.unwrap_or_default(),
                    };
                    self.dollars.get_or_create(&labels).set(row.cost_usd);
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot compute costs for the metrics"),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitLabels {
    tenant: String,
    budget: String,
}

/// Forge API budgets, read from the cached forge clients when Prometheus scrapes.
#[derive(Clone)]
pub struct ForgeMetrics {
    rate_limit_remaining: Family<RateLimitLabels, Gauge>,
}

impl ForgeMetrics {
    pub fn register(registry: &mut Registry) -> ForgeMetrics {
        let metrics = ForgeMetrics {
            rate_limit_remaining: Family::default(),
        };
        registry.register(
            "nimbus_forge_rate_limit_remaining",
            "Requests left in the forge API budget until it resets, as the forge last reported",
            metrics.rate_limit_remaining.clone(),
        );
        metrics
    }

    /// Sets the gauge from each client's last reported budget; budgets of clients that are gone
    /// (a changed or removed forge) disappear.
    pub fn refresh(&self, forges: &[(TenantId, std::sync::Arc<dyn Forge>)]) {
        self.rate_limit_remaining.clear();
        for (tenant_id, forge) in forges {
            if let Some(limit) = forge.rate_limit() {
                let labels = RateLimitLabels {
                    tenant: tenant_id.to_string(),
                    budget: limit.key,
                };
                self.rate_limit_remaining
                    .get_or_create(&labels)
                    .set(i64::try_from(limit.remaining).unwrap_or(i64::MAX));
            }
        }
    }
}
