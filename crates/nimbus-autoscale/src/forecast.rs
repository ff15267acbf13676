//! Demand learned from the past: how many jobs of a pool ran at once, hour by hour, and what
//! that says about the same hour of a coming day.
//!
//! Pure functions over job lifetimes the caller already knows (the daemon's job history, the
//! simulator's replayed past): nothing here reads a clock or a store, and nothing guesses a
//! duration. A job still running is counted up to `now` only.
//!
//! The unit is *zero-wait concurrency*: jobs in `[queued_at, queued_at + run time)`, i.e. the
//! runners the pool would have needed for no job to wait. It does not depend on how the pool
//! was scaled, so a week learned under one policy forecasts the next under another.

use time::{OffsetDateTime, Weekday};

/// One past job of the pool: when it was queued and until when it needed a runner if it had
/// started at once (`queued_at + run time`; `now` while it has not finished).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    pub queued_at: OffsetDateTime,
    pub until: OffsetDateTime,
}

/// The concurrency the pool saw during one closed UTC hour.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HourSample {
    /// The hour's start (minute and second zero).
    pub hour: OffsetDateTime,
    /// The time-weighted `quantile` of concurrency within the hour.
    pub level: f64,
}

/// How a forecast is learned.
#[derive(Clone, Debug, PartialEq)]
pub struct ForecastConfig {
    /// Within an hour, the time-weighted quantile of concurrency that sums up the hour (1.0 is
    /// the hour's peak).
    pub within_hour: f64,
    /// Across the past days of the same kind (workday or weekend) at that hour of day, the
    /// quantile that is forecast.
    pub across_days: f64,
    /// Past days of the same kind considered, most recent first.
    pub max_days: usize,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        ForecastConfig {
            within_hour: 0.9,
            across_days: 0.75,
            max_days: 10,
        }
    }
}

/// Expected concurrency for each hour of the week (Monday 00:00 UTC first).
#[derive(Clone, Debug, PartialEq)]
pub struct DemandForecast {
    levels: [f64; HOURS_PER_WEEK],
}

const HOURS_PER_WEEK: usize = 168;

fn hour_start(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_time(time::Time::from_hms(t.hour(), 0, 0).expect("valid hour"))
}

/// Index of `t`'s hour in its week, Monday 00:00 UTC being 0.
pub fn hour_of_week(t: OffsetDateTime) -> usize {
    let t = t.to_offset(time::UtcOffset::UTC);
    usize::from(t.weekday().number_days_from_monday()) * 24 + usize::from(t.hour())
}

fn is_weekend(day: Weekday) -> bool {
    matches!(day, Weekday::Saturday | Weekday::Sunday)
}

/// Time-weighted quantile of `(level, seconds)` segments.
fn weighted_quantile(segments: &mut [(u32, f64)], q: f64) -> f64 {
    let total: f64 = segments.iter().map(|s| s.1).sum();
    if total <= 0.0 {
        return 0.0;
    }
    segments.sort_by_key(|s| s.0);
    let mut acc = 0.0;
    for &(level, secs) in segments.iter() {
        acc += secs;
        if acc >= q.clamp(0.0, 1.0) * total - 1e-9 {
            return f64::from(level);
        }
    }
    f64::from(segments.last().map_or(0, |s| s.0))
}

/// The concurrency of every closed hour in `[from, now)` (whole hours only), from the jobs
/// `observations` holds. Hours without any job are samples of level 0.
pub fn hourly_profile(
    observations: &[Observation],
    from: OffsetDateTime,
    now: OffsetDateTime,
    within_hour: f64,
) -> Vec<HourSample> {
    let first = hour_start(from);
    let first = if first < from {
        first + time::Duration::HOUR
    } else {
        first
    };
    let end = hour_start(now);
    if end <= first {
        return Vec::new();
    }
    let n_hours = ((end - first).whole_hours()).max(0) as usize;
    // +1 at each start, -1 at each end, clipped to the window.
    let mut events: Vec<(OffsetDateTime, i32)> = Vec::with_capacity(observations.len() * 2);
    for obs in observations {
        let until = obs.until.min(now);
        if until <= obs.queued_at || until <= first || obs.queued_at >= end {
            continue;
        }
        events.push((obs.queued_at.max(first), 1));
        events.push((until.min(end), -1));
    }
    // Ends before starts at one instant: a runner freed at t takes the job queued at t.
    events.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut segments: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n_hours];
    let mut level: i32 = 0;
    let mut at = first;
    let mut push = |from: OffsetDateTime, to: OffsetDateTime, level: i32| {
        let mut t = from;
        while t < to {
            let idx = ((t - first).whole_hours()).max(0) as usize;
            let hour_end = first + time::Duration::hours(idx as i64 + 1);
            let seg_end = hour_end.min(to);
            segments[idx].push((level.max(0) as u32, (seg_end - t).as_seconds_f64()));
            t = seg_end;
        }
    };
    for (t, delta) in events {
        if t > at {
            push(at, t, level);
            at = t;
        }
        level += delta;
    }
    if end > at {
        push(at, end, level);
    }
    segments
        .into_iter()
        .enumerate()
        .map(|(idx, mut segs)| HourSample {
            hour: first + time::Duration::hours(idx as i64),
            level: weighted_quantile(&mut segs, within_hour),
        })
        .collect()
}

impl DemandForecast {
    /// A forecast of zero everywhere (nothing learned yet).
    pub fn empty() -> DemandForecast {
        DemandForecast {
            levels: [0.0; HOURS_PER_WEEK],
        }
    }

    /// Learns from hourly samples: each hour of the week gets the `across_days` quantile of
    /// the same hour of day on the latest `max_days` days of the same kind (workdays for a
    /// workday, weekend days for a weekend day), so one odd day neither makes nor breaks it.
    pub fn from_profile(samples: &[HourSample], config: &ForecastConfig) -> DemandForecast {
        // Newest first, so `max_days` keeps the most recent days.
        let mut sorted: Vec<&HourSample> = samples.iter().collect();
        sorted.sort_by_key(|s| std::cmp::Reverse(s.hour));
        let mut levels = [0.0; HOURS_PER_WEEK];
        for (how, level) in levels.iter_mut().enumerate() {
            let (weekday_idx, hour) = (how / 24, how % 24);
            let weekend = weekday_idx >= 5;
            let mut values: Vec<f64> = sorted
                .iter()
                .filter(|s| {
                    s.hour.hour() as usize == hour && is_weekend(s.hour.weekday()) == weekend
                })
                .take(config.max_days)
                .map(|s| s.level)
                .collect();
            if values.is_empty() {
                continue;
            }
            values.sort_by(f64::total_cmp);
            let rank = (config.across_days.clamp(0.0, 1.0) * (values.len() - 1) as f64).ceil();
            *level = values[rank as usize];
        }
        DemandForecast { levels }
    }

    /// [`hourly_profile`] of everything observed before `now`, then [`Self::from_profile`].
    pub fn learn(
        observations: &[Observation],
        now: OffsetDateTime,
        config: &ForecastConfig,
    ) -> DemandForecast {
        let Some(from) = observations.iter().map(|o| o.queued_at).min() else {
            return DemandForecast::empty();
        };
        let profile = hourly_profile(observations, from, now, config.within_hour);
        DemandForecast::from_profile(&profile, config)
    }

    /// The expected concurrency in `t`'s hour.
    pub fn at(&self, t: OffsetDateTime) -> f64 {
        self.levels[hour_of_week(t)]
    }

    /// The highest expected concurrency of the hours that `[from, to]` touches.
    pub fn peak(&self, from: OffsetDateTime, to: OffsetDateTime) -> f64 {
        let mut peak = self.at(from);
        let mut t = hour_start(from) + time::Duration::HOUR;
        while t <= to {
            peak = peak.max(self.at(t));
            t += time::Duration::HOUR;
        }
        peak
    }

    /// The levels, Monday 00:00 UTC first.
    pub fn levels(&self) -> &[f64] {
        &self.levels
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const MONDAY: OffsetDateTime = datetime!(2026-11-30 00:00 UTC);

    fn at(hours: f64) -> OffsetDateTime {
        MONDAY + time::Duration::seconds_f64(hours * 3600.0)
    }

    fn job(from_h: f64, to_h: f64) -> Observation {
        Observation {
            queued_at: at(from_h),
            until: at(to_h),
        }
    }

    #[test]
    fn profile_measures_concurrency_per_closed_hour() {
        // Two jobs overlap for half of hour 9; hour 10 has one job all along.
        let jobs = [job(9.0, 11.0), job(9.5, 10.0)];
        let profile = hourly_profile(&jobs, at(8.0), at(11.5), 1.0);
        let levels: Vec<f64> = profile.iter().map(|s| s.level).collect();
        assert_eq!(levels, [0.0, 2.0, 1.0]);
        // The median of hour 9 is the level held half of the time or more.
        let profile = hourly_profile(&jobs, at(9.0), at(10.0), 0.4);
        assert_eq!(profile[0].level, 1.0);
    }

    #[test]
    fn a_running_job_counts_only_up_to_now() {
        // Observed at 9:30 as still running: the hour 9 is not closed, nothing is learned.
        let running = [job(9.0, 9.5)];
        assert!(hourly_profile(&running, at(9.0), at(9.5), 1.0).is_empty());
        let forecast = DemandForecast::learn(&running, at(9.5), &ForecastConfig::default());
        assert_eq!(forecast, DemandForecast::empty());
    }

    #[test]
    fn workdays_forecast_workdays_and_weekends_weekends() {
        // Last week: three jobs at 10:00 every workday, one on Saturday at 10:00.
        let mut jobs = Vec::new();
        for day in 0..5 {
            for _ in 0..3 {
                jobs.push(job(day as f64 * 24.0 + 10.0, day as f64 * 24.0 + 10.9));
            }
        }
        jobs.push(job(5.0 * 24.0 + 10.0, 5.0 * 24.0 + 10.9));
        let now = at(7.0 * 24.0);
        let forecast = DemandForecast::learn(&jobs, now, &ForecastConfig::default());
        let next_week = |day: u32, hour: f64| {
            now + time::Duration::seconds_f64((day as f64 * 24.0 + hour) * 3600.0)
        };
        assert_eq!(forecast.at(next_week(0, 10.5)), 3.0);
        assert_eq!(forecast.at(next_week(3, 10.0)), 3.0);
        assert_eq!(forecast.at(next_week(3, 9.0)), 0.0);
        assert_eq!(forecast.at(next_week(5, 10.0)), 1.0);
        // Saturday and Sunday are one kind of day: a busy Saturday warns Sunday too.
        assert_eq!(forecast.at(next_week(6, 10.0)), 1.0);
        assert_eq!(forecast.at(next_week(6, 9.0)), 0.0);
        // Looking ahead from 9:50 sees the 10:00 rise.
        assert_eq!(forecast.peak(next_week(1, 9.0), next_week(1, 9.8)), 0.0);
        assert_eq!(forecast.peak(next_week(1, 9.9), next_week(1, 10.1)), 3.0);
    }

    #[test]
    fn one_odd_day_does_not_make_the_forecast() {
        // Workdays at 14:00: 2 jobs on four days, 20 on one.
        let mut jobs = Vec::new();
        for day in 0..5 {
            let n = if day == 2 { 20 } else { 2 };
            for _ in 0..n {
                jobs.push(job(day as f64 * 24.0 + 14.0, day as f64 * 24.0 + 15.0));
            }
        }
        let forecast = DemandForecast::learn(&jobs, at(7.0 * 24.0), &ForecastConfig::default());
        assert_eq!(forecast.at(at(7.0 * 24.0 + 14.0)), 2.0);
    }
}
