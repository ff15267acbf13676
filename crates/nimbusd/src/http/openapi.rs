//! `/v1/openapi.json`, generated from the handlers' annotations and the DTO types.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::AppState;
use crate::http::{
    agents, costs, demand, events, forge, machines, ops, pools, providers, registry, tenants,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Nimbus API", description = "Elastic CI runner machines on demand"),
    paths(
        tenants::create, tenants::list, tenants::show, tenants::create_token,
        tenants::budget, tenants::set_budget,
        forge::show, forge::set, forge::webhook, demand::list,
        providers::create, providers::list, providers::list_all, providers::show, providers::delete,
        machines::provision, machines::list, machines::show, machines::terminate,
        machines::can_terminate, machines::history,
        pools::create, pools::list, pools::show, pools::update, pools::delete, pools::plan,
        costs::costs, costs::jobs,
        events::stream,
        ops::healthz, ops::readyz, ops::metrics,
        agents::create_token, agents::enrol, agents::list, agents::remove, agents::operate,
        agents::heartbeat, agents::poll, agents::report,
        registry::show,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "tenants", description = "Tenants and their tokens"),
        (name = "providers", description = "Where machines come from"),
        (name = "forge", description = "Where runners register and jobs wait"),
        (name = "machines", description = "Runner machines"),
        (name = "pools", description = "Pools that scale runner machines with job demand"),
        (name = "events", description = "Telemetry events"),
        (name = "ops", description = "Health and metrics"),
        (name = "agents", description = "Bare-metal agents: enrolment, heartbeats, BMC operations"),
        (name = "registry", description = "The provider registry synced from Git"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/v1/openapi.json",
        get(|| async { Json(ApiDoc::openapi()) }),
    )
}
