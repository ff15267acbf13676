//! Pools: a tenant's desired fleet for one set of runner labels. A pool says which machines to
//! make (provider, os/arch, image, setup), how many to keep warm (`min_idle`, overridden by
//! schedules), how many at most (`max`, a monthly budget), and when to let them go
//! (`idle_timeout`, recycling by age, job count and runner version).
//!
//! Validation lives here, next to the data, so the API, the CLI and the simulator reject the
//! same things with the same field names.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    Arch, ImageType, MachineSpec, Os, PoolId, ProviderId, SpecError, TenantId, validate_label,
};

/// Most schedules one pool may have.
pub const MAX_SCHEDULES: usize = 16;
/// Largest `max` a pool may have.
pub const MAX_POOL_SIZE: u32 = 10_000;
/// Longest idle timeout and age: 30 days.
pub const MAX_DURATION_SECS: u64 = 30 * 24 * 3600;
/// Default idle timeout: ten minutes.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 600;

/// A time window that overrides the pool's `min_idle`: while the current minute matches `cron`
/// (five fields, in `timezone`), the warm target is `min_idle`. When several match, the last
/// one wins (as in GitLab Runner's autoscaler policies), so put exceptions after the rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Five-field cron pattern matched against each minute, e.g. `* 8-18 * * mon-fri`.
    pub cron: String,
    /// IANA time zone name the pattern is read in, e.g. `Europe/Berlin`.
    #[serde(default = "utc")]
    pub timezone: String,
    pub min_idle: u32,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// A parsed [`Schedule`], ready to be matched against instants.
#[derive(Clone, Debug)]
pub struct CompiledSchedule {
    cron: croner::Cron,
    zone: jiff::tz::TimeZone,
    pub min_idle: u32,
}

impl CompiledSchedule {
    /// Whether the minute containing `at` falls in the window.
    pub fn matches(&self, at: OffsetDateTime) -> bool {
        let minute = at.unix_timestamp().div_euclid(60) * 60;
        let Ok(timestamp) = jiff::Timestamp::from_second(minute) else {
            return false;
        };
        let zoned = timestamp.to_zoned(self.zone.clone());
        self.cron.is_time_matching(&zoned).unwrap_or(false)
    }
}

impl Schedule {
    /// Parses the pattern and the zone; the error names the offending part (`cron` or
    /// `timezone`) relative to the schedule.
    pub fn compile(&self) -> Result<CompiledSchedule, SpecError> {
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .build()
            .parse(self.cron.trim())
            .map_err(|err| {
                SpecError::new(
                    "cron",
                    format!("{:?} is not a valid cron pattern: {err}", self.cron),
                )
            })?;
        let zone = jiff::tz::TimeZone::get(&self.timezone).map_err(|_| {
            SpecError::new(
                "timezone",
                format!(
                    "{:?} is not a known IANA time zone (e.g. UTC, Europe/Berlin)",
                    self.timezone
                ),
            )
        })?;
        Ok(CompiledSchedule {
            cron,
            zone,
            min_idle: self.min_idle,
        })
    }
}

/// Everything about a pool a user sets. [`PoolSettings::validate`] checks it all.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolSettings {
    /// The runner labels the pool serves: a job goes to the most specific pool whose labels
    /// include all of the job's. Lowercase, sorted, unique once validated.
    pub labels: Vec<String>,
    pub os: Os,
    pub arch: Arch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(default)]
    pub image_type: ImageType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_script: Option<String>,
    /// Idle runners kept warm on top of demand (unless a schedule says otherwise).
    pub min_idle: u32,
    /// Most machines the pool may have at once, booting and busy included.
    pub max: u32,
    /// How long a runner may sit idle beyond the warm target before it is removed.
    pub idle_timeout_secs: u64,
    /// Idle runners older than this are replaced (busy ones once their job ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    /// Runners that ran this many jobs are replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_jobs: Option<u32>,
    /// One job per runner, then the machine goes: the default, and what just-in-time runners
    /// do anyway.
    pub ephemeral: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<Schedule>,
    /// What one machine costs per hour (USD), for the budget and the spend estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly_cost: Option<f64>,
    /// Most the pool may spend in a calendar month (UTC), in USD; scale-up stops before it.
    /// Priced at `hourly_cost`, else the daemon's price table (the pool is refused when
    /// neither prices it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget: Option<f64>,
}

impl PoolSettings {
    /// Settings with the defaults a user gets when they set only labels, os, arch and max.
    pub fn new(labels: Vec<String>, os: Os, arch: Arch, max: u32) -> Self {
        PoolSettings {
            labels,
            os,
            arch,
            instance_type: None,
            image_id: None,
            image_type: ImageType::None,
            setup_script: None,
            min_idle: 0,
            max,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            max_age_secs: None,
            max_jobs: None,
            ephemeral: true,
            schedules: Vec::new(),
            hourly_cost: None,
            monthly_budget: None,
        }
    }

    /// Checks every field and normalises the labels (lowercase, sorted); the error names the
    /// first offending field.
    pub fn validate(&mut self) -> Result<(), SpecError> {
        if self.labels.is_empty() {
            return Err(SpecError::new(
                "labels",
                "a pool needs at least one label for jobs to ask for",
            ));
        }
        for (idx, label) in self.labels.iter().enumerate() {
            validate_label(label)
                .map_err(|message| SpecError::new(format!("labels[{idx}]"), message))?;
        }
        let mut normalised: Vec<String> = self.labels.iter().map(|l| l.to_lowercase()).collect();
        normalised.sort();
        if let Some(pair) = normalised.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(SpecError::new(
                "labels",
                format!(
                    "duplicate label {:?} (labels match case-insensitively)",
                    pair[0]
                ),
            ));
        }
        self.labels = normalised;
        // The machine fields share the machine spec's rules and field names.
        self.machine_spec().validate()?;

        // 0 is allowed: it drains a pool (its idle runners go, busy ones when their job ends).
        if self.max > MAX_POOL_SIZE {
            return Err(SpecError::new(
                "max",
                format!("must be between 0 and {MAX_POOL_SIZE}"),
            ));
        }
        if self.min_idle > self.max {
            return Err(SpecError::new(
                "min_idle",
                format!("{} is more than max ({})", self.min_idle, self.max),
            ));
        }
        if self.idle_timeout_secs > MAX_DURATION_SECS {
            return Err(SpecError::new(
                "idle_timeout_secs",
                format!("must be at most {MAX_DURATION_SECS} seconds (30 days)"),
            ));
        }
        if let Some(age) = self.max_age_secs
            && !(60..=MAX_DURATION_SECS).contains(&age)
        {
            return Err(SpecError::new(
                "max_age_secs",
                format!("must be between 60 and {MAX_DURATION_SECS} seconds"),
            ));
        }
        match self.max_jobs {
            Some(0) => return Err(SpecError::new("max_jobs", "must be at least 1")),
            Some(jobs) if self.ephemeral && jobs > 1 => {
                return Err(SpecError::new(
                    "max_jobs",
                    format!(
                        "an ephemeral pool runs one job per runner; set ephemeral to false to reuse runners for {jobs} jobs"
                    ),
                ));
            }
            _ => {}
        }
        if self.schedules.len() > MAX_SCHEDULES {
            return Err(SpecError::new(
                "schedules",
                format!("at most {MAX_SCHEDULES} schedules are allowed"),
            ));
        }
        for (idx, schedule) in self.schedules.iter().enumerate() {
            schedule.compile().map_err(|err| {
                SpecError::new(format!("schedules[{idx}].{}", err.field), err.message)
            })?;
            if schedule.min_idle > self.max {
                return Err(SpecError::new(
                    format!("schedules[{idx}].min_idle"),
                    format!("{} is more than max ({})", schedule.min_idle, self.max),
                ));
            }
        }
        if let Some(cost) = self.hourly_cost
            && !(cost.is_finite() && (0.0..=10_000.0).contains(&cost))
        {
            return Err(SpecError::new(
                "hourly_cost",
                "must be a number of dollars between 0 and 10000",
            ));
        }
        if let Some(budget) = self.monthly_budget
            && !(budget.is_finite() && budget > 0.0)
        {
            return Err(SpecError::new(
                "monthly_budget",
                "must be a positive number of dollars",
            ));
        }
        Ok(())
    }

    /// What each machine of the pool is provisioned with.
    pub fn machine_spec(&self) -> MachineSpec {
        MachineSpec {
            os: self.os,
            arch: self.arch,
            labels: self.labels.clone(),
            instance_type: self.instance_type.clone(),
            image_id: self.image_id.clone(),
            image_type: self.image_type,
            setup_script: self.setup_script.clone(),
            skip_setup: false,
        }
    }

    /// The schedules, parsed; invalid ones (impossible once validated) are left out.
    pub fn compiled_schedules(&self) -> Vec<CompiledSchedule> {
        self.schedules
            .iter()
            .filter_map(|schedule| schedule.compile().ok())
            .collect()
    }
}

/// A stored pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pool {
    pub id: PoolId,
    pub tenant_id: TenantId,
    pub name: String,
    pub provider_id: ProviderId,
    #[serde(flatten)]
    pub settings: PoolSettings,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// Normalises labels the way pools and jobs are matched: lowercase, sorted, unique.
pub fn normalise_labels<I, S>(labels: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    crate::demand::LabelSet::new(labels).into()
}

/// Whether two pools of one tenant would tie for every job either of them could take: the
/// same label set. Such a pair is refused, since the tie-break would leave one pool without
/// work. (Pools that merely overlap are fine: each job goes to the pool with the fewest labels
/// beyond its own, ties broken by pool name.)
pub fn labels_conflict(a: &[String], b: &[String]) -> bool {
    normalise_labels(a) == normalise_labels(b)
}

impl FromStr for Schedule {
    type Err = SpecError;

    /// The CLI form `CRON@ZONE=MIN_IDLE`, e.g. `* 8-18 * * mon-fri@Europe/Berlin=5`; the zone
    /// part is optional (UTC).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rest, min_idle) = s.rsplit_once('=').ok_or_else(|| {
            SpecError::new(
                "schedule",
                "expected CRON[@ZONE]=MIN_IDLE, e.g. '* 8-18 * * mon-fri@Europe/Berlin=5'",
            )
        })?;
        let min_idle = min_idle.trim().parse::<u32>().map_err(|_| {
            SpecError::new(
                "schedule",
                format!("{min_idle:?} is not a whole number of idle runners"),
            )
        })?;
        let (cron, timezone) = match rest.rsplit_once('@') {
            Some((cron, zone)) => (cron.trim().to_owned(), zone.trim().to_owned()),
            None => (rest.trim().to_owned(), utc()),
        };
        Ok(Schedule {
            cron,
            timezone,
            min_idle,
        })
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn settings() -> PoolSettings {
        PoolSettings::new(
            vec!["self-hosted".into(), "Linux".into()],
            Os::Linux,
            Arch::X86_64,
            10,
        )
    }

    fn check(change: impl FnOnce(&mut PoolSettings), field: &str) {
        let mut pool = settings();
        change(&mut pool);
        let err = pool.validate().expect_err(field);
        assert_eq!(err.field, field, "{err}");
    }

    #[test]
    fn labels_are_normalised() {
        let mut pool = settings();
        pool.validate().unwrap();
        assert_eq!(pool.labels, vec!["linux", "self-hosted"]);
    }

    #[test]
    fn errors_name_the_field() {
        check(|p| p.labels.clear(), "labels");
        check(|p| p.labels.push("linux".into()), "labels");
        check(|p| p.labels.push("a b".into()), "labels[2]");
        check(|p| p.max = MAX_POOL_SIZE + 1, "max");
        check(|p| p.min_idle = 11, "min_idle");
        check(
            |p| p.idle_timeout_secs = MAX_DURATION_SECS + 1,
            "idle_timeout_secs",
        );
        check(|p| p.max_age_secs = Some(5), "max_age_secs");
        check(|p| p.max_jobs = Some(0), "max_jobs");
        check(|p| p.max_jobs = Some(5), "max_jobs");
        check(
            |p| p.instance_type = Some("t3 large".into()),
            "instance_type",
        );
        check(|p| p.image_type = ImageType::Ami, "image_id");
        check(|p| p.hourly_cost = Some(f64::NAN), "hourly_cost");
        check(|p| p.monthly_budget = Some(0.0), "monthly_budget");
        check(
            |p| {
                p.hourly_cost = Some(1.0);
                p.monthly_budget = Some(-1.0)
            },
            "monthly_budget",
        );
        check(
            |p| {
                p.schedules.push(Schedule {
                    cron: "* * * *".into(),
                    timezone: "UTC".into(),
                    min_idle: 1,
                })
            },
            "schedules[0].cron",
        );
        check(
            |p| {
                p.schedules.push(Schedule {
                    cron: "* 8-18 * * mon-fri".into(),
                    timezone: "Mars/Olympus".into(),
                    min_idle: 1,
                })
            },
            "schedules[0].timezone",
        );
        check(
            |p| {
                p.schedules.push(Schedule {
                    cron: "* * * * *".into(),
                    timezone: "UTC".into(),
                    min_idle: 11,
                })
            },
            "schedules[0].min_idle",
        );
        // Seconds are not part of a schedule: windows are whole minutes.
        check(
            |p| {
                p.schedules.push(Schedule {
                    cron: "0 * * * * *".into(),
                    timezone: "UTC".into(),
                    min_idle: 1,
                })
            },
            "schedules[0].cron",
        );
    }

    #[test]
    fn reused_runners_may_run_several_jobs() {
        let mut pool = settings();
        pool.ephemeral = false;
        pool.max_jobs = Some(20);
        pool.validate().unwrap();
    }

    #[test]
    fn schedules_match_whole_minutes_in_their_zone() {
        let schedule = Schedule {
            cron: "* 8-17 * * mon-fri".into(),
            timezone: "Europe/Berlin".into(),
            min_idle: 5,
        }
        .compile()
        .unwrap();
        // Monday 2026-11-30: Berlin is UTC+1 in winter.
        assert!(!schedule.matches(datetime!(2026-11-30 06:59:59 UTC)));
        assert!(schedule.matches(datetime!(2026-11-30 07:00:00 UTC)));
        assert!(schedule.matches(datetime!(2026-11-30 16:59:30 UTC)));
        assert!(!schedule.matches(datetime!(2026-11-30 17:00:00 UTC)));
        // Summer time: UTC+2.
        assert!(schedule.matches(datetime!(2026-06-01 06:00:00 UTC)));
        // Saturday.
        assert!(!schedule.matches(datetime!(2026-12-05 10:00:00 UTC)));
    }

    #[test]
    fn schedule_cli_form() {
        let schedule: Schedule = "* 8-18 * * mon-fri@Europe/Berlin=5".parse().unwrap();
        assert_eq!(schedule.cron, "* 8-18 * * mon-fri");
        assert_eq!(schedule.timezone, "Europe/Berlin");
        assert_eq!(schedule.min_idle, 5);
        let schedule: Schedule = "0-59 * * * *=2".parse().unwrap();
        assert_eq!(schedule.timezone, "UTC");
        assert!("* * * * *".parse::<Schedule>().is_err());
        assert!("* * * * *=many".parse::<Schedule>().is_err());
    }

    #[test]
    fn conflicts_are_identical_label_sets() {
        let a = vec!["Linux".to_owned(), "self-hosted".to_owned()];
        let b = vec!["self-hosted".to_owned(), "linux".to_owned()];
        let c = vec![
            "self-hosted".to_owned(),
            "linux".to_owned(),
            "gpu".to_owned(),
        ];
        assert!(labels_conflict(&a, &b));
        assert!(!labels_conflict(&a, &c));
    }

    #[test]
    fn pool_json_is_flat() {
        let mut settings = settings();
        settings.validate().unwrap();
        let pool = Pool {
            id: PoolId::new(),
            tenant_id: TenantId::new(),
            name: "linux".into(),
            provider_id: ProviderId::new(),
            settings,
            created_at: datetime!(2026-12-01 00:00 UTC),
            updated_at: datetime!(2026-12-01 00:00 UTC),
        };
        let json = serde_json::to_value(&pool).unwrap();
        assert_eq!(json["max"], 10);
        assert_eq!(json["labels"][0], "linux");
        let back: Pool = serde_json::from_value(json).unwrap();
        assert_eq!(back, pool);
    }
}
