//! `ApiJson<T>`: a JSON body extractor whose errors name the offending field.
//!
//! Not JSON at all → 400; JSON of the wrong shape → 422 with the field path (serde's own
//! messages don't say which field); too large → 413; wrong content type → 415.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::http::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let mime = v.split(';').next().unwrap_or("").trim();
                mime == "application/json" || mime.ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(status, "payload_too_large", "request body is too large")
            } else {
                ApiError::bad_request(format!("cannot read request body: {rejection}"))
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(value) => Ok(value),
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let message = strip_position(&inner.to_string());
                    let field = if path == "." {
                        named_field(&message).unwrap_or_else(|| "body".to_owned())
                    } else {
                        path
                    };
                    Err(ApiError::invalid_field(field, message))
                }
                _ => Err(ApiError::bad_request(format!(
                    "request body is not valid JSON: {inner}"
                ))),
            }
        }
    }
}

/// "missing field `arch`" and "unknown field `colour`, expected …" name their field only in text.
fn named_field(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))?;
    rest.split('`').next().map(str::to_owned)
}

/// serde_json appends " at line 1 column 15", which means nothing to an API caller.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(idx) => message[..idx].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use nimbus_types::api::ProvisionMachine;

    use super::*;

    fn check(body: &str, status: u16, field: Option<&str>) {
        let err = parse::<ProvisionMachine>(body.as_bytes()).unwrap_err();
        assert_eq!(err.status.as_u16(), status, "{body}: {}", err.message);
        assert_eq!(err.field.as_deref(), field, "{body}: {}", err.message);
    }

    #[test]
    fn errors_name_the_field() {
        check("not json", 400, None);
        check("{\"provider\": \"p\", \"os\": \"linux\"", 400, None);
        check(
            r#"{"provider":"p","os":"windows","arch":"x86_64"}"#,
            422,
            Some("os"),
        );
        check(
            r#"{"provider":"p","os":"linux","arch":"sparc"}"#,
            422,
            Some("arch"),
        );
        check(r#"{"provider":"p","os":"linux"}"#, 422, Some("arch"));
        check("[]", 422, Some("body"));
        check(
            r#"{"provider":"p","os":"linux","arch":"arm64","labels":[1]}"#,
            422,
            Some("labels[0]"),
        );
        check(
            r#"{"provider":"p","os":"linux","arch":"arm64","colour":"red"}"#,
            422,
            Some("colour"),
        );
    }
}
