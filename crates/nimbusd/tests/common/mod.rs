//! The API harness shared by the suites: a fresh server on temp dirs, driven through `oneshot`.

#![allow(dead_code)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use nimbusd::config::{ServerArgs, Settings};
use serde_json::{Value, json};
use tower::ServiceExt;

pub struct Api {
    _dir: tempfile::TempDir,
    pub app: Router,
    /// The server's state, for driving background work (e.g. one demand reconcile) directly.
    pub state: nimbusd::http::AppState,
    pub admin: String,
}

pub async fn api() -> Api {
    api_on(None).await
}

pub async fn api_on(database_url: Option<String>) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let args = ServerArgs {
        data_dir: Some(dir.path().join("data")),
        config_dir: Some(dir.path().join("config")),
        state_dir: Some(dir.path().join("state")),
        database_url,
        ..ServerArgs::default()
    };
    let settings = Settings::resolve(&args).unwrap();
    let server = nimbusd::Server::start(&settings).await.unwrap();
    let admin = std::fs::read_to_string(dir.path().join("config/admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    Api {
        _dir: dir,
        app: nimbusd::http::app(server.state.clone()),
        state: server.state,
        admin,
    }
}

impl Drop for Api {
    /// A failing test must not leave its local machines' processes behind.
    fn drop(&mut self) {
        let machines = self._dir.path().join("state/machines");
        let Ok(entries) = std::fs::read_dir(machines) else {
            return;
        };
        for entry in entries.flatten() {
            if let Some(id) = entry.file_name().to_str() {
                for pid in nimbus_setup::local::machine_processes(id) {
                    let _ = std::process::Command::new("kill")
                        .arg("-9")
                        .arg(pid.to_string())
                        .status();
                }
            }
        }
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
}

impl Api {
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, body, text }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        };
        self.send(request.unwrap()).await
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.call(method, path, Some(&self.admin.clone()), body)
            .await
    }

    /// A tenant with a local provider named `local`, and a token for it.
    pub async fn tenant(&self, name: &str) -> (String, String) {
        let reply = self
            .admin("POST", "/v1/tenants", Some(json!({"name": name})))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        let id = reply.body["id"].as_str().unwrap().to_owned();
        let reply = self
            .admin(
                "POST",
                &format!("/v1/tenants/{name}/providers"),
                Some(json!({"name": "local", "type": "local"})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        let reply = self
            .admin("POST", &format!("/v1/tenants/{name}/tokens"), None)
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        (id, reply.body["token"].as_str().unwrap().to_owned())
    }

    pub async fn wait_for_state(&self, id: &str, state: &str) -> Value {
        for _ in 0..200 {
            let reply = self.admin("GET", &format!("/v1/machines/{id}"), None).await;
            if reply.body["state"] == state {
                return reply.body;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("machine {id} never reached {state}");
    }
}

pub fn host_platform() -> (String, String) {
    (
        nimbus_types::Os::host().unwrap().to_string(),
        nimbus_types::Arch::host().unwrap().to_string(),
    )
}

pub fn assert_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(reply.body["error"]["code"], code, "{}", reply.text);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        reply.text
    );
}
