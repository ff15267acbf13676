//! HTTP client for the `/v1` API: bearer auth, JSON both ways, API errors as one clear line.

use std::time::Duration;

use anyhow::{Context, anyhow};
use futures::StreamExt;
use nimbus_types::api::ErrorBody;
use nimbus_types::event::Event;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub struct Client {
    http: reqwest::Client,
    /// A client without an overall timeout, for the event stream.
    streaming: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Client> {
        let base = url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("--url must start with http:// or https://, got {url:?}");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        let streaming = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            http,
            streaming,
            base,
            token,
        })
    }

    /// The daemon's URL without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, client: &reqwest::Client, method: Method, path: &str) -> RequestBuilder {
        let request = client.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.request(&self.http, Method::GET, path)).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.request(&self.http, Method::POST, path).json(body))
            .await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.request(&self.http, Method::PUT, path).json(body))
            .await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.request(&self.http, Method::PATCH, path).json(body))
            .await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.request(&self.http, Method::DELETE, path))
            .await
    }

    pub async fn delete_empty(&self, path: &str) -> anyhow::Result<()> {
        let response = self
            .execute(self.request(&self.http, Method::DELETE, path))
            .await?;
        check(response).await.map(drop)
    }

    async fn execute(&self, request: RequestBuilder) -> anyhow::Result<reqwest::Response> {
        request.send().await.map_err(|err| {
            if err.is_connect() {
                anyhow!("cannot reach nimbusd at {} (is `nimbusd server` running? set --url or NIMBUS_URL)", self.base)
            } else if err.is_timeout() {
                anyhow!("nimbusd at {} did not answer in time", self.base)
            } else {
                anyhow!("request to {} failed: {err}", self.base)
            }
        })
    }

    async fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> anyhow::Result<T> {
        let response = check(self.execute(request).await?).await?;
        let bytes = response.bytes().await.context("cannot read the response")?;
        serde_json::from_slice(&bytes).context(
            "nimbusd sent a response this nimbusctl does not understand (version mismatch?)",
        )
    }

    /// Follows the server-sent event stream, calling `on_event` for each event until the
    /// server ends the stream.
    pub async fn follow_events(
        &self,
        path: &str,
        mut on_event: impl FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let request = self
            .request(&self.streaming, Method::GET, path)
            .header("accept", "text/event-stream");
        let response = check(self.execute(request).await?).await?;
        let mut body = response.bytes_stream();
        let mut buffer = Vec::new();
        let mut data = String::new();
        while let Some(chunk) = body.next().await {
            buffer.extend_from_slice(&chunk.context("event stream interrupted")?);
            while let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    if !data.is_empty() {
                        let event: Event = serde_json::from_str(&data)
                            .context("nimbusd sent an event this nimbusctl does not understand")?;
                        on_event(event)?;
                        data.clear();
                    }
                } else if let Some(rest) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
                }
            }
        }
        Ok(())
    }
}

/// Turns a non-2xx response into one clear line: the API's message and the status.
async fn check(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let bytes = response.bytes().await.unwrap_or_default();
    let message = match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => body.error.message,
        Err(_) => String::from_utf8_lossy(&bytes).trim().to_owned(),
    };
    let hint = match status {
        StatusCode::UNAUTHORIZED => " (pass --token or set NIMBUS_TOKEN)",
        _ => "",
    };
    Err(anyhow!("{message}{hint} (HTTP {})", status.as_u16()))
}
