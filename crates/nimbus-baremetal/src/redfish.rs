//! Redfish over HTTP(S): the DMTF's REST API that current BMCs speak (iDRAC, iLO, XClarity,
//! OpenBMC), tested against sushy-tools.
//!
//! The system is discovered from `/redfish/v1/Systems` (the configured `system_id`, or the only
//! member), once per driver. Power changes go through the system's `#ComputerSystem.Reset`
//! action with a reset type the BMC lists in `ResetType@Redfish.AllowableValues`; the boot
//! override is a `PATCH` of the system's `Boot` object (with `If-Match` when the BMC sent an
//! ETag); virtual media is the first CD/DVD member of the system's (or its manager's)
//! `VirtualMedia` collection, driven by its `InsertMedia`/`EjectMedia` actions.
//!
//! Credentials go only to the configured host: redirects are not followed and a link in an
//! answer that points elsewhere is refused.

use std::time::Duration;

use async_trait::async_trait;
use nimbus_types::Secret;
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::{Bmc, BmcConfig, BmcKind, BootTarget, Error, PowerAction, PowerState, Result};

/// What discovery found out about the system.
#[derive(Clone, Debug)]
struct System {
    path: String,
    reset_target: String,
    /// `None` when the BMC does not list them (then the standard set is tried).
    reset_types: Option<Vec<String>>,
    boot_targets: Option<Vec<String>>,
    virtual_media: Option<String>,
    managers: Vec<String>,
}

pub struct Redfish {
    base: Url,
    endpoint: String,
    client: reqwest::Client,
    username: String,
    password: Secret,
    system_id: Option<String>,
    system: OnceCell<System>,
}

impl Redfish {
    pub fn new(config: &BmcConfig) -> Result<Self> {
        config.validate("")?;
        let base = Url::parse(&config.address).map_err(|err| Error::InvalidConfig {
            field: "address".into(),
            message: err.to_string(),
        })?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout())
            .connect_timeout(config.timeout().min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .tls_danger_accept_invalid_certs(config.insecure_tls)
            .build()
            .map_err(|err| Error::InvalidConfig {
                field: "address".into(),
                message: format!("cannot build an HTTP client: {err}"),
            })?;
        Ok(Redfish {
            endpoint: base.as_str().trim_end_matches('/').to_owned(),
            base,
            client,
            username: config.username.clone(),
            password: config.password.clone(),
            system_id: config.system_id.clone(),
            system: OnceCell::new(),
        })
    }

    fn url(&self, path: &str) -> Result<Url> {
        let url = self
            .base
            .join(path)
            .map_err(|err| self.malformed(format!("bad link {path:?}: {err}")))?;
        if url.origin() != self.base.origin() {
            return Err(self.malformed(format!(
                "link {path:?} leaves the BMC ({}); not following it",
                self.endpoint
            )));
        }
        Ok(url)
    }

    fn malformed(&self, message: impl Into<String>) -> Error {
        Error::Malformed {
            bmc: self.endpoint.clone(),
            message: message.into(),
        }
    }

    /// One request; returns the parsed JSON body (`Null` when empty) and the ETag.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<(Value, Option<String>)> {
        let url = self.url(path)?;
        let mut request = self
            .client
            .request(method.clone(), url)
            .basic_auth(&self.username, Some(self.password.expose()))
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(etag) = if_match {
            request = request.header(reqwest::header::IF_MATCH, etag);
        }
        let response = request
            .send()
            .await
            .map_err(|err| self.transport(&method, path, err))?;
        let status = response.status();
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .bytes()
            .await
            .map_err(|err| self.transport(&method, path, err))?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Error::Unauthorized {
                bmc: self.endpoint.clone(),
                message: format!("{method} {path} answered {status}"),
            });
        }
        if !status.is_success() {
            let detail = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| redfish_message(&v))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
            let message = format!("{method} {path} answered {status}: {detail}");
            return Err(
                if status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED {
                    Error::Unreachable {
                        bmc: self.endpoint.clone(),
                        message,
                    }
                } else {
                    Error::Refused {
                        bmc: self.endpoint.clone(),
                        message,
                    }
                },
            );
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok((Value::Null, etag));
        }
        let value = serde_json::from_slice(&bytes)
            .map_err(|err| self.malformed(format!("{method} {path}: not JSON: {err}")))?;
        Ok((value, etag))
    }

    fn transport(&self, method: &Method, path: &str, err: reqwest::Error) -> Error {
        // reqwest's message names the URL, never the credentials.
        let what = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "cannot connect"
        } else {
            "failed"
        };
        Error::Unreachable {
            bmc: self.endpoint.clone(),
            message: format!("{method} {path} {what}: {}", error_chain(&err)),
        }
    }

    async fn get(&self, path: &str) -> Result<Value> {
        Ok(self.request(Method::GET, path, None, None).await?.0)
    }

    async fn system(&self) -> Result<&System> {
        self.system.get_or_try_init(|| self.discover()).await
    }

    async fn discover(&self) -> Result<System> {
        let collection = self.get("/redfish/v1/Systems").await?;
        let members: Vec<String> = collection
            .get("Members")
            .and_then(Value::as_array)
            .ok_or_else(|| self.malformed("/redfish/v1/Systems has no Members"))?
            .iter()
            .map(|m| odata_id(m).map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| self.malformed("a member of /redfish/v1/Systems has no @odata.id"))?;
        let path = match &self.system_id {
            Some(id) => members
                .iter()
                .find(|m| m.trim_end_matches('/').rsplit('/').next() == Some(id.as_str()))
                .cloned()
                .ok_or_else(|| Error::InvalidConfig {
                    field: "system_id".into(),
                    message: format!("the BMC has no system {id:?} (it has {})", ids(&members)),
                })?,
            None => match members.as_slice() {
                [only] => only.clone(),
                [] => return Err(self.malformed("/redfish/v1/Systems is empty")),
                _ => {
                    return Err(Error::InvalidConfig {
                        field: "system_id".into(),
                        message: format!(
                            "the BMC has {} systems ({}); choose one",
                            members.len(),
                            ids(&members)
                        ),
                    });
                }
            },
        };
        let system = self.get(&path).await?;
        let reset = system
            .pointer("/Actions/#ComputerSystem.Reset")
            .ok_or_else(|| self.malformed(format!("{path} has no #ComputerSystem.Reset action")))?;
        let reset_target = reset
            .get("target")
            .and_then(Value::as_str)
            .ok_or_else(|| self.malformed(format!("{path}: the reset action has no target")))?
            .to_owned();
        let strings = |v: Option<&Value>| {
            v.and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
        };
        let managers = system
            .pointer("/Links/ManagedBy")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(odata_id).map(str::to_owned).collect())
            .unwrap_or_default();
        let found = System {
            reset_types: strings(reset.get("ResetType@Redfish.AllowableValues")),
            boot_targets: strings(
                system.pointer("/Boot/BootSourceOverrideTarget@Redfish.AllowableValues"),
            ),
            virtual_media: system
                .get("VirtualMedia")
                .and_then(odata_id)
                .map(str::to_owned),
            managers,
            reset_target,
            path,
        };
        tracing::debug!(bmc = %self.endpoint, system = %found.path, "discovered redfish system");
        Ok(found)
    }

    /// The first virtual CD/DVD drive: its path and current state.
    async fn cd_drive(&self) -> Result<(String, Value)> {
        let system = self.system().await?;
        let mut collections: Vec<String> = system.virtual_media.iter().cloned().collect();
        for manager in &system.managers {
            if let Ok(value) = self.get(manager).await
                && let Some(id) = value.get("VirtualMedia").and_then(odata_id)
            {
                collections.push(id.to_owned());
            }
        }
        for collection in collections {
            let listing = self.get(&collection).await?;
            let members = listing
                .get("Members")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for member in members.iter().filter_map(odata_id) {
                let drive = self.get(member).await?;
                let is_cd = drive
                    .get("MediaTypes")
                    .and_then(Value::as_array)
                    .is_some_and(|types| {
                        types
                            .iter()
                            .any(|t| matches!(t.as_str(), Some("CD" | "DVD")))
                    });
                if is_cd {
                    return Ok((member.to_owned(), drive));
                }
            }
        }
        Err(Error::Unsupported {
            bmc: self.endpoint.clone(),
            message: "no virtual CD/DVD drive".into(),
        })
    }

    fn action_target(&self, resource: &Value, action: &str, path: &str) -> Result<String> {
        resource
            .pointer(&format!("/Actions/{action}/target"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| Error::Unsupported {
                bmc: self.endpoint.clone(),
                message: format!("{path} offers no {action} action"),
            })
    }
}

/// The reset types that carry out `action`, in order of preference.
fn reset_candidates(action: PowerAction) -> &'static [&'static str] {
    match action {
        PowerAction::On => &["On", "ForceOn"],
        PowerAction::Off => &["ForceOff", "GracefulShutdown"],
        PowerAction::Reset => &["ForceRestart", "PowerCycle", "GracefulRestart"],
    }
}

fn odata_id(value: &Value) -> Option<&str> {
    value.get("@odata.id").and_then(Value::as_str)
}

fn ids(members: &[String]) -> String {
    members
        .iter()
        .map(|m| m.trim_end_matches('/').rsplit('/').next().unwrap_or(m))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The human part of a Redfish error body.
fn redfish_message(value: &Value) -> Option<String> {
    let error = value.get("error")?;
    let extended = error
        .get("@Message.ExtendedInfo")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|m| m.get("Message"))
        .and_then(Value::as_str);
    extended
        .or_else(|| error.get("message").and_then(Value::as_str))
        .map(|m| m.chars().take(300).collect())
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        out.push_str(": ");
        out.push_str(&err.to_string());
        source = err.source();
    }
    out
}

#[async_trait]
impl Bmc for Redfish {
    fn kind(&self) -> BmcKind {
        BmcKind::Redfish
    }

    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn power_state(&self) -> Result<PowerState> {
        let path = self.system().await?.path.clone();
        let system = self.get(&path).await?;
        match system.get("PowerState").and_then(Value::as_str) {
            Some("On") => Ok(PowerState::On),
            Some("Off") => Ok(PowerState::Off),
            Some("PoweringOn" | "PoweringOff" | "Paused") => Ok(PowerState::Transitioning),
            other => Err(self.malformed(format!("{path}: PowerState is {other:?}"))),
        }
    }

    async fn power(&self, action: PowerAction) -> Result<()> {
        let system = self.system().await?.clone();
        let current = self.power_state().await?;
        // On and off are idempotent here even where the BMC refuses a no-op; a reset of a
        // machine that is off is a power-on (BMCs refuse ForceRestart when off).
        let action = match (action, current) {
            (PowerAction::On | PowerAction::Off, state) if state == action.target() => {
                return Ok(());
            }
            (PowerAction::Reset, PowerState::Off) => PowerAction::On,
            (action, _) => action,
        };
        let candidates = reset_candidates(action);
        let reset_type = match &system.reset_types {
            Some(allowed) => candidates
                .iter()
                .find(|c| allowed.iter().any(|a| a == *c))
                .ok_or_else(|| Error::Unsupported {
                    bmc: self.endpoint.clone(),
                    message: format!(
                        "power {action:?} needs one of the reset types {candidates:?}; the BMC allows {allowed:?}"
                    ),
                })?,
            None => &candidates[0],
        };
        self.request(
            Method::POST,
            &system.reset_target,
            Some(&json!({ "ResetType": reset_type })),
            None,
        )
        .await?;
        tracing::info!(bmc = %self.endpoint, reset_type, "redfish reset requested");
        Ok(())
    }

    async fn boot_once(&self, target: BootTarget) -> Result<()> {
        let system = self.system().await?.clone();
        let value = match target {
            BootTarget::Disk => "Hdd",
            BootTarget::Pxe => "Pxe",
            BootTarget::Cd => "Cd",
        };
        if let Some(allowed) = &system.boot_targets
            && !allowed.iter().any(|a| a == value)
        {
            return Err(Error::Unsupported {
                bmc: self.endpoint.clone(),
                message: format!("boot target {value} is not among {allowed:?}"),
            });
        }
        let (_, etag) = self.request(Method::GET, &system.path, None, None).await?;
        self.request(
            Method::PATCH,
            &system.path,
            Some(&json!({"Boot": {
                "BootSourceOverrideTarget": value,
                "BootSourceOverrideEnabled": "Once",
            }})),
            etag.as_deref(),
        )
        .await?;
        tracing::info!(bmc = %self.endpoint, boot = value, "redfish boot override set once");
        Ok(())
    }

    async fn insert_media(&self, image_url: &str) -> Result<()> {
        let url = Url::parse(image_url).map_err(|err| Error::InvalidConfig {
            field: "image_url".into(),
            message: err.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::InvalidConfig {
                field: "image_url".into(),
                message: "must be an http(s) URL the BMC can download".into(),
            });
        }
        let (path, drive) = self.cd_drive().await?;
        let target = self.action_target(&drive, "#VirtualMedia.InsertMedia", &path)?;
        self.request(
            Method::POST,
            &target,
            Some(&json!({"Image": url.as_str(), "Inserted": true, "WriteProtected": true})),
            None,
        )
        .await?;
        tracing::info!(bmc = %self.endpoint, drive = %path, "virtual media inserted");
        Ok(())
    }

    async fn eject_media(&self) -> Result<()> {
        let (path, drive) = self.cd_drive().await?;
        if drive.get("Inserted").and_then(Value::as_bool) == Some(false) {
            return Ok(());
        }
        let target = self.action_target(&drive, "#VirtualMedia.EjectMedia", &path)?;
        self.request(Method::POST, &target, Some(&json!({})), None)
            .await?;
        tracing::info!(bmc = %self.endpoint, drive = %path, "virtual media ejected");
        Ok(())
    }
}

impl Redfish {
    /// The virtual CD's `Image` and `Inserted`, as the BMC reports them (for checks and the
    /// agent's status).
    pub async fn media_status(&self) -> Result<(Option<String>, bool)> {
        let (_, drive) = self.cd_drive().await?;
        let image = drive
            .get("Image")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let inserted = drive
            .get("Inserted")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok((image, inserted))
    }

    /// The system's one-time boot override as reported: (`BootSourceOverrideTarget`,
    /// `BootSourceOverrideEnabled`).
    pub async fn boot_override(&self) -> Result<(String, String)> {
        let path = self.system().await?.path.clone();
        let system = self.get(&path).await?;
        let field = |name: &str| {
            system
                .pointer(&format!("/Boot/{name}"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| self.malformed(format!("{path}: Boot.{name} missing")))
        };
        Ok((
            field("BootSourceOverrideTarget")?,
            field("BootSourceOverrideEnabled")?,
        ))
    }
}
