//! The REST API: `fn app(state) -> Router`, built apart from serving so tests drive it with
//! `tower::ServiceExt::oneshot`. One module per resource; the middleware stack is here.

pub mod agents;
pub mod auth;
pub mod costs;
pub mod demand;
pub mod error;
mod events;
pub mod forge;
pub mod json;
pub mod machines;
pub mod openapi;
pub mod ops;
pub mod pools;
mod providers;
pub mod registry;
mod tenants;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use nimbus_fleet::Fleet;
use nimbus_forge::DemandBook;
use nimbus_store::{SqlStore, Storage};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::http::error::ApiError;

/// Largest API request body accepted (a setup script is at most 64 KiB). Forge webhooks have
/// their own limit, [`forge::WEBHOOK_BODY_LIMIT`].
pub const BODY_LIMIT: usize = 256 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub fleet: Fleet,
    pub store: Arc<dyn Storage>,
    /// The concrete store, for `/readyz`.
    pub ping: Arc<SqlStore>,
    pub admin_token_sha256: [u8; 32],
    pub metrics: Arc<Registry>,
    pub http_metrics: HttpMetrics,
    pub request_timeout: Duration,
    /// Cancelled when the server starts shutting down; ends event streams.
    pub shutdown: CancellationToken,
    /// Serialized machine listings, valid until the store's machines change.
    pub machine_lists: Arc<machines::ListCache>,
    /// Jobs waiting for runners, fed by forge webhooks and the demand reconcile; kept in the
    /// store with the delivery ids it has counted.
    pub demand: Arc<dyn DemandBook>,
    /// One webhook receiver per tenant.
    pub webhooks: Arc<forge::WebhookReceivers>,
    pub forge_metrics: ops::ForgeMetrics,
    pub cost_metrics: ops::CostMetrics,
    /// Hands BMC operations to bare-metal agents and judges their heartbeats.
    pub agents: Arc<crate::agents::AgentHub>,
    /// The provider registry synced from Git, when one is configured.
    pub registry: Arc<crate::registry_sync::RegistryState>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

/// Request counts and latencies by route.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> HttpMetrics {
        let metrics = HttpMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
        };
        registry.register(
            "nimbus_http_requests",
            "HTTP requests served",
            metrics.requests.clone(),
        );
        registry.register(
            "nimbus_http_request_duration_seconds",
            "HTTP request latency",
            metrics.latency.clone(),
        );
        metrics
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .merge(tenants::router())
        .merge(forge::router())
        .merge(demand::router())
        .merge(providers::router())
        .merge(machines::router())
        .merge(pools::router())
        .merge(costs::router())
        .merge(openapi::router())
        .merge(ops::router())
        .merge(agents::router())
        .merge(agents::enrol_router())
        .merge(registry::router())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            state.request_timeout,
        ));
    // The event stream and the agents' long-poll are long-lived: no request timeout, but they
    // end on shutdown.
    let streams = events::router().merge(agents::poll_router());
    let limited = Router::new()
        .merge(api)
        .merge(streams)
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT));
    // Webhooks bring their own (larger) body limit and no bearer token.
    let webhooks = forge::webhook_router().layer(TimeoutLayer::with_status_code(
        StatusCode::SERVICE_UNAVAILABLE,
        state.request_timeout,
    ));
    Router::new()
        .merge(limited)
        .merge(webhooks)
        .fallback(|| async { ApiError::not_found("route") })
        .layer(middleware::map_response(json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http().make_span_with(|req: &Request| {
                        let id = req
                            .headers()
                            .get(REQUEST_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        tracing::info_span!("request", method = %req.method(), uri = %req.uri().path(), request.id = %id)
                    }),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
        )
        .with_state(state)
}

/// Errors produced by middleware (the body limit's 413, the timeout's 503) come as plain text;
/// every error the API returns is the JSON error shape.
async fn json_errors(response: Response) -> Response {
    let content_type = response.headers().get(axum::http::header::CONTENT_TYPE);
    let is_json = content_type.is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || response.status().is_success() {
        return response;
    }
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is too large",
        )
        .into_response(),
        // The timeout layer answers with an empty body; `/readyz` has its own text.
        StatusCode::SERVICE_UNAVAILABLE if content_type.is_none() => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long; try again",
        )
        .into_response(),
        _ => response,
    }
}

async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(req).await;
    let labels = RequestLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    state.http_metrics.requests.get_or_create(&labels).inc();
    state
        .http_metrics
        .latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response.into_response()
}
