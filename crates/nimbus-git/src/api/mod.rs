//! The REST API under `/api/v1`, with its OpenAPI document at `/api/v1/openapi.json`.
//! One module per resource; errors are `{"error":{"code","message"}}`.

pub mod collaborators;
pub mod compare;
pub mod contents;
pub mod repos;
pub mod runs;
pub mod secrets;
pub mod statuses;
pub mod tokens;
pub mod users;
pub mod webhooks;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .merge(repos::router())
        .merge(collaborators::router())
        .merge(tokens::router())
        .merge(users::router())
        .merge(webhooks::router())
        .merge(contents::router())
        .merge(compare::router())
        .merge(statuses::router())
        .merge(runs::router())
        .merge(secrets::router())
        .fallback(|| async { ApiError::not_found("no such API endpoint") })
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Nimbus Git API", description = "Repositories, collaborators, tokens, webhooks, contents and CI (statuses, runs, secrets) of a Nimbus Git server."),
    paths(
        repos::list, repos::create, repos::show, repos::update, repos::delete, repos::events,
        collaborators::list, collaborators::grant, collaborators::revoke,
        tokens::list, tokens::create, tokens::delete,
        users::me, users::list, users::create, users::delete,
        webhooks::list, webhooks::create, webhooks::show, webhooks::delete, webhooks::deliveries,
        contents::root, contents::show, compare::compare,
        statuses::create, statuses::list,
        runs::create, runs::list, runs::show, runs::update_job, runs::update_step,
        runs::append_log, runs::read_log, runs::cancel, runs::rerun, runs::token,
        secrets::set, secrets::list, secrets::delete, secrets::for_run,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail, crate::auth::Perm, crate::auth::Scope,
        crate::ci::State, crate::ci::StatusState, crate::ci::Conclusion)),
    modifiers(&BasicAuth),
    security(("basic" = []), ("bearer" = []))
)]
pub struct ApiDoc;

struct BasicAuth;

impl utoipa::Modify for BasicAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The caller, from HTTP Basic (password or token) or a Bearer token; may be anonymous.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(Caller(state.auth.principal(&parts.headers).await?))
    }
}

impl Caller {
    pub fn user(&self) -> Result<&crate::auth::User, ApiError> {
        self.0.user.as_ref().ok_or_else(ApiError::unauthorized)
    }
    pub fn require_owner(&self) -> Result<(), ApiError> {
        self.user()?;
        if self.0.is_owner() {
            Ok(())
        } else {
            Err(ApiError::forbidden("only the owner may do this"))
        }
    }
}

/// JSON body whose rejections are API errors naming the offending field.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => {
                let status = rejection.status();
                let message = match &rejection {
                    JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
                        rejection.body_text().replace(
                            "Failed to deserialize the JSON body into the target type: ",
                            "",
                        )
                    }
                    _ => rejection.body_text(),
                };
                Err(ApiError::new(
                    status,
                    "invalid_body",
                    format!("body: {message}"),
                ))
            }
        }
    }
}

pub fn iso8601(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
