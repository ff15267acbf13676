//! Dedicated hosts as first-class records, derived (never stored) from DescribeHosts, the host's
//! tags and the instances placed on it.
//!
//! An EC2 Mac host is billed for at least 24 hours from allocation and is scrubbed for about 50
//! minutes after each instance ends (EC2 reports it `pending` meanwhile). Nimbus records the
//! scrubbing window in the `nimbus:scrub-until` tag because not every EC2-compatible endpoint
//! reports it, and takes the later of the two views.

use nimbus_types::{MachineId, ProviderId, TenantId};
use serde::Serialize;
use time::OffsetDateTime;

/// What a host can do right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum HostState {
    /// An instance runs (or starts, or stops) on it.
    Occupied,
    /// Its last instance ended; EC2 scrubs it until about `until` and it cannot take a new one.
    Scrubbing {
        #[serde(with = "time::serde::rfc3339::option")]
        until: Option<OffsetDateTime>,
    },
    /// Nothing runs on it: the next machine of its instance type can use it.
    Idle,
    /// EC2 found a problem with it (`under-assessment`, `permanent-failure`).
    Unavailable { reason: String },
    /// Given back to EC2; kept in listings for a while by EC2, ignored by Nimbus.
    Released,
}

/// A dedicated host Nimbus allocated.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Host {
    pub id: String,
    pub instance_type: Option<String>,
    pub availability_zone: Option<String>,
    pub state: HostState,
    /// EC2's state name (`available`, `pending`, `released`, …).
    pub ec2_state: String,
    #[serde(with = "time::serde::rfc3339")]
    pub allocated_at: OffsetDateTime,
    /// The end of the minimum allocation period: releasing earlier is impossible.
    #[serde(with = "time::serde::rfc3339")]
    pub releasable_at: OffsetDateTime,
    pub tenant_id: Option<TenantId>,
    pub provider_id: Option<ProviderId>,
    /// The machine the host was last given to (`nimbus:machine`).
    pub machine_id: Option<MachineId>,
    /// Live instances on the host.
    pub instance_ids: Vec<String>,
}

impl Host {
    /// Hours left in the minimum allocation period at `now` (0 when it is over).
    pub fn hours_remaining(&self, now: OffsetDateTime) -> f64 {
        let left = self.releasable_at - now;
        if left.is_positive() {
            left.as_seconds_f64() / 3600.0
        } else {
            0.0
        }
    }

    pub fn past_minimum(&self, now: OffsetDateTime) -> bool {
        now >= self.releasable_at
    }

    /// Whether the host may be released now: past its minimum and nothing on it.
    pub fn releasable(&self, now: OffsetDateTime) -> bool {
        self.past_minimum(now)
            && matches!(self.state, HostState::Idle | HostState::Scrubbing { .. })
    }
}

/// The host's state from EC2's view, its live instances and the scrubbing tag.
pub fn derive_state(
    ec2_state: &str,
    n_live_instances: usize,
    scrub_until: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> HostState {
    match ec2_state {
        "released" | "released-permanent-failure" => return HostState::Released,
        "under-assessment" | "permanent-failure" => {
            return HostState::Unavailable {
                reason: ec2_state.to_owned(),
            };
        }
        _ => {}
    }
    if n_live_instances > 0 {
        return HostState::Occupied;
    }
    let tagged = scrub_until.filter(|until| *until > now);
    if ec2_state == "pending" || tagged.is_some() {
        return HostState::Scrubbing { until: tagged };
    }
    HostState::Idle
}

#[cfg(test)]
mod tests {
    use time::Duration;
    use time::macros::datetime;

    use super::*;

    #[test]
    fn states() {
        let now = datetime!(2026-11-22 12:00 UTC);
        let later = now + Duration::minutes(20);
        let earlier = now - Duration::minutes(1);
        for (ec2, live, scrub, want) in [
            ("available", 0, None, HostState::Idle),
            ("available", 1, None, HostState::Occupied),
            ("available", 1, Some(later), HostState::Occupied),
            (
                "available",
                0,
                Some(later),
                HostState::Scrubbing { until: Some(later) },
            ),
            ("available", 0, Some(earlier), HostState::Idle),
            ("pending", 0, None, HostState::Scrubbing { until: None }),
            (
                "pending",
                0,
                Some(earlier),
                HostState::Scrubbing { until: None },
            ),
            ("released", 0, None, HostState::Released),
            ("released-permanent-failure", 1, None, HostState::Released),
            (
                "under-assessment",
                0,
                None,
                HostState::Unavailable {
                    reason: "under-assessment".into(),
                },
            ),
        ] {
            assert_eq!(
                derive_state(ec2, live, scrub, now),
                want,
                "{ec2} {live} {scrub:?}"
            );
        }
    }

    #[test]
    fn minimum_allocation() {
        let allocated_at = datetime!(2026-11-22 00:00 UTC);
        let host = Host {
            id: "h-1".into(),
            instance_type: Some("mac2.metal".into()),
            availability_zone: Some("us-east-1a".into()),
            state: HostState::Idle,
            ec2_state: "available".into(),
            allocated_at,
            releasable_at: allocated_at + Duration::hours(24),
            tenant_id: None,
            provider_id: None,
            machine_id: None,
            instance_ids: vec![],
        };
        let now = allocated_at + Duration::hours(6);
        assert!((host.hours_remaining(now) - 18.0).abs() < 1e-9);
        assert!(!host.releasable(now));
        let now = allocated_at + Duration::hours(25);
        assert_eq!(host.hours_remaining(now), 0.0);
        assert!(host.releasable(now));
        let busy = Host {
            state: HostState::Occupied,
            ..host
        };
        assert!(!busy.releasable(now));
    }
}
