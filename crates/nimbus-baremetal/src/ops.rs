//! BMC operations as data: what the control plane asks `nimbusd agent` to do to a BMC it
//! reaches, and what the agent answers. The agent runs an [`Op`] with [`run`] on one of its
//! drivers; the control plane turns the [`Outcome`] back into a driver result with
//! [`Outcome::into_result`], so a BMC behind an agent behaves like one driven directly.

use serde::{Deserialize, Serialize};

use crate::{Bmc, BootTarget, Error, PowerAction, PowerState, Result};

/// One thing to do to a BMC. Each maps to one [`Bmc`] call; waiting for a power change to land
/// stays with the caller (it polls [`Op::PowerState`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Read the power state.
    PowerState,
    /// Ask for a power change.
    Power {
        action: PowerAction,
    },
    /// Boot from `target` on the next boot only.
    BootOnce {
        target: BootTarget,
    },
    /// Insert the image at `image_url` as virtual CD.
    InsertMedia {
        image_url: String,
    },
    EjectMedia,
}

impl Op {
    /// A short name for metrics and logs (`power_on`, `boot_once_pxe`, …).
    pub fn label(&self) -> String {
        match self {
            Op::PowerState => "power_state".into(),
            Op::Power { action } => format!(
                "power_{}",
                match action {
                    PowerAction::On => "on",
                    PowerAction::Off => "off",
                    PowerAction::Reset => "reset",
                }
            ),
            Op::BootOnce { target } => format!("boot_once_{target}"),
            Op::InsertMedia { .. } => "insert_media".into(),
            Op::EjectMedia => "eject_media".into(),
        }
    }

    /// Checks values a driver would otherwise see first.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Op::InsertMedia { image_url } = self {
            let url = reqwest::Url::parse(image_url).map_err(|err| format!("image_url: {err}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err("image_url: must be an http(s) URL".into());
            }
        }
        Ok(())
    }
}

/// Which kind of driver error an operation failed with (the [`Error`] variants that can cross
/// the wire; a configuration error on the agent's side is `refused`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Unauthorized,
    Unreachable,
    Malformed,
    Unsupported,
    Refused,
}

/// What the agent answers for one operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    Done {
        /// The power state, for [`Op::PowerState`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        power_state: Option<PowerState>,
    },
    Failed {
        kind: FailureKind,
        message: String,
    },
}

impl Outcome {
    pub fn from_error(err: &Error) -> Outcome {
        let (kind, message) = match err {
            Error::Unauthorized { message, .. } => (FailureKind::Unauthorized, message.clone()),
            Error::Unreachable { message, .. } => (FailureKind::Unreachable, message.clone()),
            Error::PowerTimeout { .. } => (FailureKind::Unreachable, err.to_string()),
            Error::Malformed { message, .. } => (FailureKind::Malformed, message.clone()),
            Error::Unsupported { message, .. } => (FailureKind::Unsupported, message.clone()),
            Error::Refused { message, .. } => (FailureKind::Refused, message.clone()),
            Error::InvalidConfig { .. } => (FailureKind::Refused, err.to_string()),
        };
        Outcome::Failed { kind, message }
    }

    /// The driver result this outcome stands for; `bmc` names the BMC in errors.
    pub fn into_result(self, bmc: &str) -> Result<Option<PowerState>> {
        let (kind, message) = match self {
            Outcome::Done { power_state } => return Ok(power_state),
            Outcome::Failed { kind, message } => (kind, message),
        };
        let bmc = bmc.to_owned();
        Err(match kind {
            FailureKind::Unauthorized => Error::Unauthorized { bmc, message },
            FailureKind::Unreachable => Error::Unreachable { bmc, message },
            FailureKind::Malformed => Error::Malformed { bmc, message },
            FailureKind::Unsupported => Error::Unsupported { bmc, message },
            FailureKind::Refused => Error::Refused { bmc, message },
        })
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Done { .. })
    }
}

/// Runs `op` on `bmc` (one driver call, no waiting for power to land).
pub async fn run(bmc: &dyn Bmc, op: &Op) -> Outcome {
    let result = match op {
        Op::PowerState => bmc.power_state().await.map(Some),
        Op::Power { action } => bmc.power(*action).await.map(|()| None),
        Op::BootOnce { target } => bmc.boot_once(*target).await.map(|()| None),
        Op::InsertMedia { image_url } => bmc.insert_media(image_url).await.map(|()| None),
        Op::EjectMedia => bmc.eject_media().await.map(|()| None),
    };
    match result {
        Ok(power_state) => Outcome::Done { power_state },
        Err(err) => Outcome::from_error(&err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_and_outcomes_round_trip_as_json() {
        let op: Op = serde_json::from_str(r#"{"op": "power", "action": "reset"}"#).unwrap();
        assert_eq!(
            op,
            Op::Power {
                action: PowerAction::Reset
            }
        );
        assert_eq!(op.label(), "power_reset");
        assert!(serde_json::from_str::<Op>(r#"{"op": "power", "action": "explode"}"#).is_err());
        assert!(serde_json::from_str::<Op>(r#"{"op": "power", "action": "on", "x": 1}"#).is_err());
        let failed = Outcome::Failed {
            kind: FailureKind::Unauthorized,
            message: "401".into(),
        };
        let text = serde_json::to_string(&failed).unwrap();
        assert_eq!(serde_json::from_str::<Outcome>(&text).unwrap(), failed);
        assert!(matches!(
            failed.into_result("agent rack-a: node-1"),
            Err(Error::Unauthorized { .. })
        ));
        assert_eq!(
            Outcome::Done {
                power_state: Some(PowerState::On)
            }
            .into_result("x")
            .unwrap(),
            Some(PowerState::On)
        );
        assert!(
            Op::InsertMedia {
                image_url: "file:///etc/passwd".into()
            }
            .validate()
            .is_err()
        );
    }
}
