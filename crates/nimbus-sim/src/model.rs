//! The fleet model (`/work/shared/fleet/README.md`, `FLEET` in `reference_sim.py`): how long
//! machines take to become runners, what they cost, and the pools jobs go to.
//!
//! The figures are the binding ones; the pool's own `hourly_cost` is only what the policy is
//! told (for its budget), never what the simulator bills.

use std::path::Path;

use nimbus_types::{Arch, Os, Pool, PoolId, PoolSettings, ProviderId, Schedule, TenantId};
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

/// Linux machine: launch → OS ready.
pub const LINUX_BOOT_S: f64 = 60.0;
/// Runner configuration and registration at the forge (Linux and macOS).
pub const REGISTER_S: f64 = 10.0;
/// Linux machine price, billed per second from launch to termination.
pub const LINUX_PRICE_H: f64 = 0.17;
/// Linux per-second billing has a 60 s minimum.
pub const LINUX_MIN_BILL_S: f64 = 60.0;
/// EC2 Mac instance on an allocated host: launch → OS ready.
pub const MAC_BOOT_S: f64 = 480.0;
/// EC2 Mac dedicated host: allocation → usable.
pub const MAC_HOST_ALLOC_S: f64 = 120.0;
/// EC2 Mac host scrubbing after its instance ends, before it takes another one.
pub const MAC_SCRUB_S: f64 = 3000.0;
/// EC2 Mac host minimum allocation (and billing) period.
pub const MAC_HOST_MIN_S: f64 = 86400.0;
/// EC2 Mac dedicated host price, from allocation to release.
pub const MAC_HOST_PRICE_H: f64 = 0.65;
/// Peers' (philips-labs) minimum running time of a Linux runner before scale-down.
pub const LINUX_MIN_RUN_S: f64 = 300.0;
/// Peers' minimum running time of a macOS instance before scale-down.
pub const MAC_MIN_RUN_S: f64 = 1200.0;
/// One day: the accounting window is whole days covering the trace.
pub const DAY_S: f64 = 86400.0;

/// Virtual `t = 0`: a Monday, 00:00 UTC, as in the sample traces.
pub const EPOCH: OffsetDateTime = time::macros::datetime!(2026-11-30 00:00 UTC);

/// Virtual seconds since [`EPOCH`] as an instant, for the policy's clock.
pub fn instant(t: f64) -> OffsetDateTime {
    EPOCH + time::Duration::seconds_f64(t)
}

/// Which provider model a pool's machines follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// On-demand Linux machines.
    Linux,
    /// EC2 Mac instances, one per dedicated host.
    Mac,
}

impl Kind {
    pub fn of(os: Os) -> Kind {
        match os {
            Os::Linux => Kind::Linux,
            Os::Macos => Kind::Mac,
        }
    }

    /// Launch → runner ready once the machine has somewhere to run.
    pub fn boot_s(self) -> f64 {
        match self {
            Kind::Linux => LINUX_BOOT_S,
            Kind::Mac => MAC_BOOT_S,
        }
    }

    /// The peers' minimum running time before an idle runner may go.
    pub fn min_run_s(self) -> f64 {
        match self {
            Kind::Linux => LINUX_MIN_RUN_S,
            Kind::Mac => MAC_MIN_RUN_S,
        }
    }

    /// The short name `reference_sim.py` uses (`linux`, `mac`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Linux => "linux",
            Kind::Mac => "mac",
        }
    }
}

/// A pool as the simulator runs it: the daemon's [`Pool`] (what `plan` reads) and its model.
#[derive(Clone, Debug)]
pub struct SimPool {
    pub name: String,
    pub kind: Kind,
    pub pool: Pool,
    /// The pool with the settings its entry leaves unset taken from [`recommended`] instead
    /// of the daemon's defaults: what the economic nimbus policy runs.
    pub recommended: Pool,
}

/// The settings Nimbus recommends for a pool of `kind` where the user gives none: reused
/// runners. A Mac instance taking the next job skips the host's 50-minute scrub and the
/// 8-minute boot (the instance itself costs nothing on its host); a Linux runner kept idle a
/// few minutes (per-second billing) takes the next job without a 70 s boot. Pools that must
/// run each job on a fresh machine set `ephemeral = true`.
pub fn recommended(kind: Kind) -> (bool, u64) {
    match kind {
        // (ephemeral, idle_timeout_secs)
        Kind::Linux => (false, 300),
        Kind::Mac => (false, nimbus_types::DEFAULT_IDLE_TIMEOUT_SECS),
    }
}

/// The pools of a `pools.toml`, in file order: a job goes to the first whose labels include
/// all of the job's.
#[derive(Clone, Debug)]
pub struct Pools {
    pools: Vec<SimPool>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid pools file: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("pool {pool:?}: {field}: {message}")]
    Invalid {
        pool: String,
        field: String,
        message: String,
    },
    #[error("the pools file has no [[pools]]")]
    Empty,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolsFile {
    pools: Vec<PoolEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolEntry {
    name: String,
    labels: Vec<String>,
    os: Os,
    arch: Arch,
    instance_type: Option<String>,
    max: u32,
    min_idle: Option<u32>,
    ephemeral: Option<bool>,
    idle_timeout_secs: Option<u64>,
    max_age_secs: Option<u64>,
    max_jobs: Option<u32>,
    #[serde(default)]
    schedules: Vec<Schedule>,
    hourly_cost: Option<f64>,
    monthly_budget: Option<f64>,
}

/// The sample pools of the fleet README.
const SAMPLE: &str = r#"
[[pools]]
name = "linux"
labels = ["self-hosted", "linux", "x64"]
os = "linux"
arch = "x86_64"
instance_type = "c5.xlarge"
max = 400

[[pools]]
name = "macos"
labels = ["self-hosted", "macos", "arm64"]
os = "macos"
arch = "arm64"
instance_type = "mac2.metal"
max = 100
"#;

impl Pools {
    /// The fleet README's two pools: Linux `self-hosted linux x64` and macOS
    /// `self-hosted macos arm64`, with the daemon's defaults otherwise.
    pub fn sample() -> Pools {
        Pools::parse(SAMPLE).expect("the sample pools are valid")
    }

    pub fn load(path: &Path) -> Result<Pools, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Pools::parse(&text)
    }

    /// Parses `[[pools]]` entries; settings not given take the daemon's defaults
    /// ([`PoolSettings::new`]) and every pool is validated as the API would.
    pub fn parse(text: &str) -> Result<Pools, Error> {
        let file: PoolsFile = toml::from_str(text)?;
        if file.pools.is_empty() {
            return Err(Error::Empty);
        }
        let mut pools = Vec::with_capacity(file.pools.len());
        for (idx, entry) in file.pools.into_iter().enumerate() {
            let mut settings = PoolSettings::new(entry.labels, entry.os, entry.arch, entry.max);
            settings.instance_type = entry.instance_type;
            settings.min_idle = entry.min_idle.unwrap_or(settings.min_idle);
            settings.ephemeral = entry.ephemeral.unwrap_or(settings.ephemeral);
            settings.idle_timeout_secs = entry
                .idle_timeout_secs
                .unwrap_or(settings.idle_timeout_secs);
            settings.max_age_secs = entry.max_age_secs;
            settings.max_jobs = entry.max_jobs;
            settings.schedules = entry.schedules;
            settings.hourly_cost = entry.hourly_cost;
            settings.monthly_budget = entry.monthly_budget;
            settings.validate().map_err(|err| Error::Invalid {
                pool: entry.name.clone(),
                field: err.field.to_string(),
                message: err.message.to_string(),
            })?;
            let kind = Kind::of(entry.os);
            let mut recommended_settings = settings.clone();
            let (ephemeral, idle_timeout) = recommended(kind);
            recommended_settings.ephemeral = entry.ephemeral.unwrap_or(ephemeral);
            recommended_settings.idle_timeout_secs =
                entry.idle_timeout_secs.unwrap_or(idle_timeout);
            // Fixed ids keep every run identical.
            let n = idx as u128 + 1;
            let pool = Pool {
                id: PoolId::from_uuid(Uuid::from_u128(n)),
                tenant_id: TenantId::from_uuid(Uuid::from_u128(1)),
                name: entry.name.clone(),
                provider_id: ProviderId::from_uuid(Uuid::from_u128(1)),
                settings,
                created_at: EPOCH,
                updated_at: EPOCH,
            };
            let recommended = Pool {
                settings: recommended_settings,
                ..pool.clone()
            };
            pools.push(SimPool {
                name: entry.name,
                kind,
                pool,
                recommended,
            });
        }
        Ok(Pools { pools })
    }

    pub fn pools(&self) -> &[SimPool] {
        &self.pools
    }

    /// The first pool whose labels include every one of `labels` (case-insensitively).
    pub fn route(&self, labels: &[String]) -> Option<usize> {
        self.pools.iter().position(|pool| {
            labels.iter().all(|label| {
                pool.pool
                    .settings
                    .labels
                    .iter()
                    .any(|own| own.eq_ignore_ascii_case(label))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_routes_like_the_reference() {
        let pools = Pools::sample();
        let labels = |s: &str| s.split(';').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(pools.route(&labels("self-hosted;linux;x64")), Some(0));
        assert_eq!(pools.route(&labels("linux")), Some(0));
        assert_eq!(pools.route(&labels("self-hosted")), Some(0));
        assert_eq!(pools.route(&labels("self-hosted;macos;arm64")), Some(1));
        assert_eq!(pools.route(&labels("gpu")), None);
        assert_eq!(pools.pools()[1].kind, Kind::Mac);
        assert!(pools.pools()[0].pool.settings.ephemeral);
    }

    #[test]
    fn invalid_pools_name_the_pool_and_field() {
        let err = Pools::parse(
            "[[pools]]\nname = \"a\"\nlabels = [\"x\"]\nos = \"linux\"\narch = \"x86_64\"\nmax = 1\nmin_idle = 2\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "pool \"a\": min_idle: 2 is more than max (1)"
        );
        assert!(Pools::parse("[[pools]]\nname = \"a\"\n").is_err());
    }
}
