//! The REST API through `app()` with `tower::ServiceExt::oneshot` (no socket): validation
//! errors name the field, conflicts are 409, the OpenAPI document lists every resource.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use nimbus_git::AppState;
use nimbus_git::config::Settings;
use serde_json::{Value, json};
use tower::ServiceExt as _;

struct Api {
    state: AppState,
    _dir: tempfile::TempDir,
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

impl Api {
    async fn new() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let started = AppState::open(
            Settings::for_tests(dir.path().join("data")),
            "http://nimbus.test".into(),
        )
        .await
        .expect("open state");
        Api {
            state: started.state,
            _dir: dir,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"));
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let req = match body {
            Some(body) => req
                .header("content-type", "application/json")
                .body(Body::from(body.to_owned())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let response = nimbus_git::app(self.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

fn check(what: &str, got: (StatusCode, Value), status: u16, message_contains: &str) {
    assert_eq!(got.0.as_u16(), status, "{what}: {}", got.1);
    if !message_contains.is_empty() {
        let message = got.1["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(message_contains),
            "{what}: message {message:?} lacks {message_contains:?}"
        );
        assert!(
            got.1["error"]["code"].is_string(),
            "{what}: error code present"
        );
    }
}

#[tokio::test]
async fn repository_validation_and_conflicts() {
    let api = Api::new().await;
    let owner = basic("owner", "owner-password");
    let owner = Some(owner.as_str());
    for (body, status, contains) in [
        (r#"{"name":"../etc","private":false}"#, 422, "name:"),
        (r#"{"name":"api","private":false}"#, 422, "reserved"),
        (r#"{"name":"x.git"}"#, 422, "name:"),
        (r#"{"name":""}"#, 422, "name:"),
        (r#"{"name":"ok","private":"yes"}"#, 422, "private"),
        (r#"{"private":true}"#, 422, "name"),
        (r#"{"name":"ok","colour":"red"}"#, 422, "colour"),
        (r#"{"name": "#, 400, "body"),
    ] {
        check(
            body,
            api.call("POST", "/repos", owner, Some(body)).await,
            status,
            contains,
        );
    }
    check(
        "create",
        api.call(
            "POST",
            "/repos",
            owner,
            Some(r#"{"name":"ok","private":true}"#),
        )
        .await,
        201,
        "",
    );
    check(
        "duplicate",
        api.call("POST", "/repos", owner, Some(r#"{"name":"ok"}"#))
            .await,
        409,
        "already exists",
    );
    check(
        "anonymous create",
        api.call("POST", "/repos", None, Some(r#"{"name":"x"}"#))
            .await,
        401,
        "",
    );
    check(
        "private invisible",
        api.call("GET", "/repos/ok", None, None).await,
        401,
        "",
    );
    check(
        "missing",
        api.call("GET", "/repos/nope", owner, None).await,
        404,
        "nope",
    );
    let (status, body) = api.call("GET", "/repos/ok", owner, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["clone_url"], "http://nimbus.test/ok.git");
    assert_eq!(body["permission"], "admin");

    check(
        "user",
        api.call(
            "POST",
            "/users",
            owner,
            Some(r#"{"username":"bob","password":"short"}"#),
        )
        .await,
        422,
        "password:",
    );
    check(
        "user",
        api.call(
            "POST",
            "/users",
            owner,
            Some(r#"{"username":"b/ob","password":"long enough"}"#),
        )
        .await,
        422,
        "username:",
    );
    check(
        "user",
        api.call(
            "POST",
            "/users",
            owner,
            Some(r#"{"username":"bob","password":"long enough"}"#),
        )
        .await,
        201,
        "",
    );
    check(
        "dup user",
        api.call(
            "POST",
            "/users",
            owner,
            Some(r#"{"username":"bob","password":"long enough"}"#),
        )
        .await,
        409,
        "",
    );
    let bob = basic("bob", "long enough");
    check(
        "bob can't create",
        api.call("POST", "/repos", Some(&bob), Some(r#"{"name":"b"}"#))
            .await,
        403,
        "owner",
    );
    check(
        "bob can't see private",
        api.call("GET", "/repos/ok", Some(&bob), None).await,
        404,
        "",
    );
    check(
        "perm",
        api.call(
            "PUT",
            "/repos/ok/collaborators/bob",
            owner,
            Some(r#"{"permission":"root"}"#),
        )
        .await,
        422,
        "permission",
    );
    check(
        "no user",
        api.call(
            "PUT",
            "/repos/ok/collaborators/zed",
            owner,
            Some(r#"{"permission":"read"}"#),
        )
        .await,
        404,
        "zed",
    );
    check(
        "grant",
        api.call(
            "PUT",
            "/repos/ok/collaborators/bob",
            owner,
            Some(r#"{"permission":"read"}"#),
        )
        .await,
        200,
        "",
    );
    let (status, body) = api.call("GET", "/repos/ok", Some(&bob), None).await;
    assert_eq!(
        (status.as_u16(), &body["permission"]),
        (200, &json!("read"))
    );
    check(
        "reader can't admin",
        api.call("GET", "/repos/ok/collaborators", Some(&bob), None)
            .await,
        403,
        "admin",
    );

    check(
        "token scope",
        api.call(
            "POST",
            "/tokens",
            Some(&bob),
            Some(r#"{"name":"t","scope":"sudo"}"#),
        )
        .await,
        422,
        "scope",
    );
    let (status, token) = api
        .call(
            "POST",
            "/tokens",
            Some(&bob),
            Some(r#"{"name":"t","scope":"read"}"#),
        )
        .await;
    assert_eq!(status, 201, "{token}");
    let bearer = format!("Bearer {}", token["token"].as_str().unwrap());
    let (status, me) = api.call("GET", "/user", Some(&bearer), None).await;
    assert_eq!(
        (status.as_u16(), &me["username"], &me["token_scope"]),
        (200, &json!("bob"), &json!("read"))
    );
    let (_, tokens) = api.call("GET", "/tokens", Some(&bob), None).await;
    assert!(
        tokens[0].get("token").is_none(),
        "token value is shown only once: {tokens}"
    );
    check(
        "bad token",
        api.call("GET", "/user", Some("Bearer ngp_nope"), None)
            .await,
        401,
        "",
    );

    check(
        "hook url",
        api.call(
            "POST",
            "/repos/ok/webhooks",
            owner,
            Some(r#"{"url":"not a url","secret":"s"}"#),
        )
        .await,
        422,
        "url:",
    );
    check(
        "hook events",
        api.call(
            "POST",
            "/repos/ok/webhooks",
            owner,
            Some(r#"{"url":"http://127.0.0.1:1/","secret":"s","events":["Nope"]}"#),
        )
        .await,
        422,
        "events:",
    );
    check(
        "events limit",
        api.call("GET", "/repos/ok/events?limit=0", owner, None)
            .await,
        422,
        "limit:",
    );
    check(
        "unknown endpoint",
        api.call("GET", "/nope", owner, None).await,
        404,
        "",
    );
    check(
        "delete",
        api.call("DELETE", "/repos/ok", owner, None).await,
        204,
        "",
    );
    check(
        "deleted",
        api.call("GET", "/repos/ok", owner, None).await,
        404,
        "",
    );
}

#[tokio::test]
async fn openapi_document_lists_resources() {
    let api = Api::new().await;
    let (status, doc) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/api/v1/repos",
        "/api/v1/repos/{name}",
        "/api/v1/repos/{name}/collaborators/{username}",
        "/api/v1/tokens",
        "/api/v1/repos/{name}/webhooks",
        "/api/v1/repos/{name}/webhooks/{id}/deliveries",
        "/api/v1/users",
    ] {
        assert!(
            paths.contains_key(path),
            "openapi lacks {path}; has {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    assert!(doc["components"]["schemas"]["CreateRepo"].is_object());
}
