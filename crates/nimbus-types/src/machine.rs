use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::spec::str_enum;
use crate::{Arch, ImageType, MachineId, Os, PoolId, ProviderId, TenantId};

/// Where a machine is in its life.
///
/// `provisioning → image_installing → ready → running → stopping → terminated`, `failed` from any
/// state that is not terminal. A machine with a prebuilt image goes `provisioning → ready`.
/// Every change goes through [`MachineState::transition`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    Provisioning,
    ImageInstalling,
    Ready,
    Running,
    Stopping,
    Terminated,
    Failed,
}

str_enum!(MachineState {
    Provisioning => "provisioning",
    ImageInstalling => "image_installing",
    Ready => "ready",
    Running => "running",
    Stopping => "stopping",
    Terminated => "terminated",
    Failed => "failed",
});

/// An illegal state change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("illegal machine state transition from {from} to {to}")]
pub struct TransitionError {
    pub from: MachineState,
    pub to: MachineState,
}

impl MachineState {
    /// The one place that decides which moves are legal. Staying in the same state is not a move.
    pub fn transition(self, to: MachineState) -> Result<MachineState, TransitionError> {
        use MachineState::*;
        let legal = match (self, to) {
            (Provisioning, ImageInstalling | Ready) => true,
            (ImageInstalling, Ready) => true,
            (Ready, Running) | (Running, Ready) => true,
            // A machine can be torn down from any live state; a failed one still has resources
            // to clean up.
            (Provisioning | ImageInstalling | Ready | Running | Failed, Stopping) => true,
            (Stopping, Terminated) => true,
            // Nothing was ever created at the provider, so there is nothing to stop.
            (Failed, Terminated) => true,
            (from, Failed) => !from.is_terminal() && from != Failed,
            _ => false,
        };
        if legal {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }

    /// `terminated` is the only state nothing leaves.
    pub fn is_terminal(self) -> bool {
        self == MachineState::Terminated
    }

    /// States in which the machine may hold resources at its provider.
    pub fn is_live(self) -> bool {
        !matches!(self, MachineState::Terminated)
    }
}

/// State of a machine's image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageState {
    Pending,
    Installing,
    Installed,
    Failed,
}

str_enum!(ImageState {
    Pending => "pending",
    Installing => "installing",
    Installed => "installed",
    Failed => "failed",
});

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Image {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub image_type: ImageType,
    pub state: ImageState,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub installed_at: Option<OffsetDateTime>,
}

/// What the provider knows about a machine, beyond the common fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProviderMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_allocation_hours: Option<u32>,
    /// Provider-specific extras (availability zone, process group, directory, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

/// Status of one setup step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Skipped,
}

str_enum!(StepStatus {
    Pending => "pending",
    Running => "running",
    Completed => "completed",
    Failed => "failed",
    Skipped => "skipped",
});

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetupStep {
    pub name: String,
    pub status: StepStatus,
    #[serde(with = "time::serde::rfc3339::option", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Setup progress as read from the machine itself (its `state.db`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetupProgress {
    pub steps: Vec<SetupStep>,
}

impl SetupProgress {
    pub fn step(&self, name: &str) -> Option<&SetupStep> {
        self.steps.iter().find(|step| step.name == name)
    }
}

/// A machine: what Nimbus asked for, merged with what the provider and the machine report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Machine {
    pub id: MachineId,
    pub tenant_id: TenantId,
    pub provider_id: ProviderId,
    pub os: Os,
    pub arch: Arch,
    pub state: MachineState,
    pub ip_address: Option<String>,
    pub ssh_public_key: Option<String>,
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    pub image: Image,
    /// When the provider created the machine; until it has, when Nimbus asked for it.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    pub provider_metadata: ProviderMetadata,
    /// Why the machine failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_progress: Option<SetupProgress>,
    /// The pool that asked for the machine; `None` for machines provisioned by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<PoolId>,
    /// How the machine's runner has been used: what idle termination and recycling look at.
    #[serde(default)]
    pub usage: RunnerUsage,
}

/// How a machine's runner has been used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunnerUsage {
    /// Jobs the runner finished.
    #[serde(default)]
    pub jobs_run: u32,
    /// Since when the runner waits for a job (set when the machine becomes ready and when a job
    /// ends); `None` while busy or before it was ever ready.
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub idle_since: Option<OffsetDateTime>,
    /// The runner software version the machine was set up with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_version: Option<String>,
}

/// Whether a machine may be terminated now (DESIGN invariant 4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CanTerminate {
    pub can_terminate: bool,
    /// A machine-readable reason when `can_terminate` is false, e.g. `minimum_allocation_period`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_allocation_period: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours_remaining: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl CanTerminate {
    pub fn yes() -> Self {
        CanTerminate {
            can_terminate: true,
            error: None,
            minimum_allocation_period: None,
            hours_remaining: None,
            message: None,
        }
    }

    pub fn no(error: impl Into<String>, message: impl Into<String>) -> Self {
        CanTerminate {
            can_terminate: false,
            error: Some(error.into()),
            minimum_allocation_period: None,
            hours_remaining: None,
            message: Some(message.into()),
        }
    }

    /// A dedicated host that cannot be released before its minimum allocation period ends.
    pub fn minimum_allocation(period_hours: u32, hours_remaining: f64) -> Self {
        CanTerminate {
            can_terminate: false,
            error: Some("minimum_allocation_period".into()),
            minimum_allocation_period: Some(period_hours),
            hours_remaining: Some(hours_remaining),
            message: Some(format!(
                "the host's {period_hours}-hour minimum allocation period has {hours_remaining:.1} hours remaining"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::MachineState::{self, *};

    fn any_state() -> impl Strategy<Value = MachineState> {
        prop::sample::select(MachineState::ALL.to_vec())
    }

    #[test]
    fn happy_paths() {
        let path = [
            Provisioning,
            ImageInstalling,
            Ready,
            Running,
            Ready,
            Stopping,
            Terminated,
        ];
        for pair in path.windows(2) {
            assert_eq!(pair[0].transition(pair[1]), Ok(pair[1]));
        }
        assert_eq!(Provisioning.transition(Ready), Ok(Ready));
        assert_eq!(Failed.transition(Stopping), Ok(Stopping));
    }

    #[test]
    fn illegal_moves() {
        for (from, to) in [
            (Terminated, Provisioning),
            (Terminated, Failed),
            (Ready, ImageInstalling),
            (Ready, Provisioning),
            (Stopping, Ready),
            (Failed, Ready),
            (Failed, Failed),
            (Ready, Ready),
            (Provisioning, Terminated),
        ] {
            assert!(
                from.transition(to).is_err(),
                "{from} -> {to} must be illegal"
            );
        }
    }

    #[test]
    fn round_trips_as_text() {
        for state in MachineState::ALL {
            assert_eq!(state.as_str().parse::<MachineState>().unwrap(), *state);
            let json = serde_json::to_string(state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
    }

    proptest! {
        /// Random walks: whatever is asked, the machine only ever takes legal steps, never
        /// leaves `terminated`, can always fail while live, and reaches `ready` only through
        /// provisioning (directly or via image installation) or by finishing a job.
        #[test]
        fn random_walks_keep_the_invariants(moves in prop::collection::vec(any_state(), 0..64)) {
            let mut state = Provisioning;
            let mut history = vec![state];
            for to in moves {
                let before = state;
                match state.transition(to) {
                    Ok(next) => {
                        prop_assert_eq!(next, to);
                        prop_assert!(!before.is_terminal(), "left terminated for {}", to);
                        prop_assert_ne!(before, to);
                        if to == Ready {
                            prop_assert!(matches!(before, Provisioning | ImageInstalling | Running));
                        }
                        if to == Terminated {
                            prop_assert!(matches!(before, Stopping | Failed));
                        }
                        state = next;
                        history.push(state);
                    }
                    Err(err) => {
                        prop_assert_eq!(err.from, before);
                        prop_assert_eq!(err.to, to);
                        if to == Failed {
                            prop_assert!(before.is_terminal() || before == Failed);
                        }
                    }
                }
            }
            // Once terminated, nothing follows in the history.
            if let Some(pos) = history.iter().position(|s| *s == Terminated) {
                prop_assert_eq!(pos, history.len() - 1);
            }
        }
    }
}
