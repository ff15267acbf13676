//! The one API error type. Internal errors are logged with their chain and shown to the client
//! only as `internal`: never a stack, a SQL string or a secret.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nimbus_types::api::{ErrorBody, ErrorDetail};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_field",
            message: format!("{field}: {message}"),
            field: Some(field),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn internal(err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: self.code.to_owned(),
                    message: self.message,
                    field: self.field,
                },
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"nimbus\""),
            );
        }
        response
    }
}

impl From<nimbus_fleet::Error> for ApiError {
    fn from(err: nimbus_fleet::Error) -> Self {
        use nimbus_fleet::Error;
        match err {
            Error::NotFound(what) => ApiError::not_found(what),
            Error::Invalid(spec) => ApiError::invalid_field(spec.field, spec.message),
            Error::Conflict(message) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            Error::Forge(message) => ApiError::new(StatusCode::BAD_GATEWAY, "forge_error", message),
            Error::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "nimbusd is shutting down; retry against another instance or after restart",
            ),
            Error::Provider(err) => match err {
                nimbus_provider::Error::InvalidConfig { field, message } => {
                    ApiError::invalid_field(field, message)
                }
                nimbus_provider::Error::NotFound(id) => {
                    ApiError::not_found(&format!("machine {id} at the provider"))
                }
                nimbus_provider::Error::Retryable(message) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "provider_unavailable",
                    message,
                ),
                nimbus_provider::Error::Permanent(message) => {
                    ApiError::new(StatusCode::BAD_GATEWAY, "provider_error", message)
                }
            },
            Error::Store(err) => store_error(err),
        }
    }
}

impl From<nimbus_store::Error> for ApiError {
    fn from(err: nimbus_store::Error) -> Self {
        store_error(err)
    }
}

fn store_error(err: nimbus_store::Error) -> ApiError {
    use nimbus_store::Error;
    match err {
        Error::NotFound { entity } => ApiError::not_found(entity),
        Error::Conflict { entity } => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{entity} already exists"),
        ),
        Error::StaleState { .. } | Error::Transition(_) => {
            ApiError::new(StatusCode::CONFLICT, "conflict", err.to_string())
        }
        other => ApiError::internal(&other),
    }
}
