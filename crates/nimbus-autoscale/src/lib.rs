//! The autoscaler's policy as a pure function: [`plan`] takes what one pool has right now
//! ([`PoolView`]), the jobs waiting for it ([`Demand`]) and the time, and says what to do
//! ([`Decision`]s) and why ([`PoolStatus`]).
//!
//! This crate must stay free of I/O: no clock of its own, no tokio, no store, no providers, no
//! forge. The daemon's loop (`nimbus_fleet::autoscale`) builds the view from the store, the
//! demand book and the forge's runner list and applies the decisions through the fleet; the
//! simulator runs exactly the same function against simulated providers with a virtual clock.
//!
//! The rules, in the order [`plan`] applies them:
//! 1. **Health**: a machine booting past [`Tuning::boot_deadline`] is failed (stuck), a ready
//!    runner that the forge has shown offline or missing for [`Tuning::zombie_grace`] is failed
//!    (zombie). Failed machines no longer count as capacity, so they are replaced.
//! 2. **Recycling** of idle runners: ephemeral ones after their job, `max_jobs`, `max_age`, and
//!    a changed runner version (one machine per pass, so a pool is replaced one by one). Busy
//!    runners are never touched: they are recycled once their job ends and they are idle.
//! 3. **Scale up**: desired = busy + queued + warm target (`min_idle`, or the schedule in force),
//!    capped by `max` (booting, idle, busy and stopping machines all count) and by the pool's
//!    and the tenant's monthly budgets, and held while the pool backs off after repeated
//!    provisioning failures.
//! 4. **Scale down** what is beyond desired: first machines still booting that have not cost
//!    anything yet (the job they were for went elsewhere or was cancelled), then idle runners
//!    idle past `idle_timeout`, longest idle first. Over `max` (after `max` was lowered), idle
//!    runners go without waiting for the timeout.

pub mod forecast;
pub mod matching;

use std::fmt;
use std::time::Duration;

use nimbus_types::api::PoolStatus;
use nimbus_types::{MachineId, Pool};
use time::OffsetDateTime;

pub use crate::forecast::{DemandForecast, ForecastConfig, HourSample, Observation};
pub use crate::matching::{Matcher, assign, best_pool};

/// Knobs of the policy that are not pool settings. The defaults suit clouds; tests and the
/// simulator set their own.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    /// A machine still booting (being created or set up) after this is failed and replaced.
    pub boot_deadline: Duration,
    /// A ready runner whose registration the forge has shown offline or missing for this long
    /// is a zombie: failed and replaced.
    pub zombie_grace: Duration,
    /// The wait after two provisions in a row failed; it doubles with each further failure.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Failed provisions older than this are forgotten by the backoff.
    pub failure_memory: Duration,
    /// Scale-up stays within the monthly budget counting this long of the whole pool's cost
    /// ahead (a new machine is never started on money the pool does not have).
    pub budget_lookahead: Duration,
    /// With a forecast ([`Outlook::forecast`]): how far ahead the warm target looks, so
    /// capacity is ready when the forecast rise comes (more than a boot, host allocation
    /// included).
    pub prewarm: Duration,
    /// [`Tuning::prewarm`] for a pool on dedicated hosts ([`Outlook::hosts`]). Longer: a host
    /// costs its whole minimum allocation however late in it the peak comes, so hosts are
    /// allocated ahead for the highest demand forecast in this long.
    pub host_prewarm: Duration,
    /// With hosts and a forecast: spare hosts kept on top of a forecast of `n` concurrent
    /// jobs, `ceil(host_spare × √n)`. Arrivals are bursty and a job that finds no instance
    /// waits a host allocation and a boot (10 minutes); the relative spare shrinks as the
    /// pool grows, as the spread of a sum of independent arrivals does.
    pub host_spare: f64,
    /// With hosts ([`Outlook::hosts`]): a host past its minimum allocation is kept while the
    /// forecast needs it within this long. A new host commits to its whole minimum, so a host
    /// not needed for most of a day is cheaper released and allocated again.
    pub host_hold: Duration,
    /// With hosts: a queued job waits for a host whose scrubbing ends within this rather than
    /// allocating a new one.
    pub scrub_wait: Duration,
    /// With hosts: how long a host scrubs after its instance ends (it can be released only
    /// then); an instance whose host is to go is terminated this long before the host's
    /// minimum allocation ends.
    pub host_scrub: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            boot_deadline: Duration::from_secs(40 * 60),
            zombie_grace: Duration::from_secs(5 * 60),
            backoff_base: Duration::from_secs(30),
            backoff_max: Duration::from_secs(15 * 60),
            failure_memory: Duration::from_secs(3600),
            budget_lookahead: Duration::from_secs(3600),
            prewarm: Duration::from_secs(15 * 60),
            host_prewarm: Duration::from_secs(2 * 3600),
            host_spare: 1.0,
            host_hold: Duration::from_secs(12 * 3600),
            scrub_wait: Duration::from_secs(10 * 60),
            host_scrub: Duration::from_secs(3000),
        }
    }
}

/// Where a machine of the pool is, as far as scaling is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Being created at the provider or set up. `committed` once the provider accepted it: from
    /// then on it costs money, and cancelling it saves nothing.
    Booting { committed: bool },
    /// Ready, waiting for a job.
    Idle,
    /// Running a job: never terminated by the policy.
    Busy,
    /// Being removed.
    Stopping,
    /// Failed; kept for the backoff's memory, not counted as capacity.
    Failed,
}

/// One machine of the pool.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineView {
    pub id: MachineId,
    pub phase: Phase,
    /// When Nimbus asked for the machine (the provider's creation time once known).
    pub created_at: OffsetDateTime,
    /// When the machine entered its phase: idle since, failed at, booting since.
    pub since: OffsetDateTime,
    /// Jobs the runner finished.
    pub jobs_run: u32,
    pub runner_version: Option<String>,
    /// Since when the forge shows the machine's runner offline or not registered; `None` while
    /// it is online or nobody looked.
    pub runner_down_since: Option<OffsetDateTime>,
    /// Whether the machine ever became ready; a failure before that is a failed provision.
    pub ever_ready: bool,
}

/// Everything [`plan`] knows about one pool.
#[derive(Clone, Debug)]
pub struct PoolView<'a> {
    pub pool: &'a Pool,
    /// The pool's machines that are not terminated (recently failed ones included).
    pub machines: &'a [MachineView],
    /// What the pool spent so far this calendar month, in USD ([`month_spend`]).
    pub spent_this_month: f64,
    /// What one machine of the pool costs per hour (USD), as the daemon prices it (the pool's
    /// `hourly_cost`, else the price table); `None` falls back to `hourly_cost`. The pool's
    /// `monthly_budget` is applied at this rate.
    pub hourly_rate: Option<f64>,
    /// What the tenant's monthly budget leaves for this pool's scale-up, in USD: the budget
    /// less the month's spend, [`Tuning::budget_lookahead`] of every live machine of the
    /// tenant, and what pools planned before this one took. `None`: no tenant budget.
    pub tenant_budget_left: Option<f64>,
    /// The runner version new machines get; idle runners with another one are replaced.
    pub runner_version: Option<&'a str>,
    pub tuning: &'a Tuning,
}

/// A dedicated host of the pool (EC2 Mac): billed from allocation for at least its minimum
/// allocation, one instance at a time, scrubbed after each instance before it takes another.
#[derive(Clone, Debug, PartialEq)]
pub struct HostView {
    pub allocated_at: OffsetDateTime,
    /// When the minimum allocation ends: the host cannot be released before.
    pub min_until: OffsetDateTime,
    /// The machine on the host, if any.
    pub instance: Option<MachineId>,
    /// Until when the host is scrubbing (`None` or past: it is free for an instance).
    pub scrubbing_until: Option<OffsetDateTime>,
}

/// What [`plan_with`] knows beyond the pool's machines; [`Outlook::default`] knows nothing
/// and makes it [`plan`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Outlook<'a> {
    /// `Some` for a pool on dedicated hosts: its hosts not released. The policy then keeps
    /// an idle instance on a host inside its minimum allocation (it costs nothing more),
    /// releases a host past it (by terminating its instance ahead of the scrub) when the
    /// forecast does not need it within [`Tuning::host_hold`], and lets queued jobs wait for
    /// a host about to finish scrubbing.
    pub hosts: Option<&'a [HostView]>,
    /// Demand learned from the pool's past ([`DemandForecast::learn`]): the pool keeps at least
    /// the forecast concurrency of the coming [`Tuning::prewarm`] as capacity.
    pub forecast: Option<&'a DemandForecast>,
}

/// A job waiting for a runner of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedJob {
    pub job_id: u64,
    /// When Nimbus first saw the job queued.
    pub queued_at: OffsetDateTime,
}

/// The jobs waiting for one pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    pub queued: Vec<QueuedJob>,
}

/// Why a machine goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Why {
    /// Idle past the idle timeout, beyond the warm target.
    Idle,
    /// The pool has more machines than its `max`.
    OverMax,
    /// Still booting and not yet paid for, but no longer needed.
    Cancelled,
    /// An ephemeral runner finished its job.
    Ephemeral,
    MaxJobs,
    MaxAge,
    /// The pinned runner version changed.
    RunnerVersion,
    /// Booting past the deadline.
    Stuck,
    /// The runner never came online, or went offline.
    Zombie,
}

impl Why {
    /// A stable code for events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Idle => "idle",
            Why::OverMax => "over_max",
            Why::Cancelled => "cancelled",
            Why::Ephemeral => "ephemeral",
            Why::MaxJobs => "max_jobs",
            Why::MaxAge => "max_age",
            Why::RunnerVersion => "runner_version",
            Why::Stuck => "stuck",
            Why::Zombie => "zombie",
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Why::Idle => "idle past the idle timeout, beyond the warm target",
            Why::OverMax => "the pool has more machines than its max",
            Why::Cancelled => "not needed any more and not yet paid for",
            Why::Ephemeral => "an ephemeral runner finished its job",
            Why::MaxJobs => "the runner ran max_jobs jobs",
            Why::MaxAge => "the machine is older than max_age",
            Why::RunnerVersion => "the pinned runner version changed",
            Why::Stuck => "booting past the deadline",
            Why::Zombie => "the runner is not online at the forge",
        })
    }
}

/// What the loop should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Create `count` machines with the pool's spec.
    Provision { count: u32, reason: String },
    /// Remove the machine through the fleet's deregister-then-check path (a runner that turned
    /// busy meanwhile keeps its machine).
    Terminate { machine: MachineId, why: Why },
    /// Mark the machine failed (it is cleaned up and replaced).
    Fail { machine: MachineId, why: Why },
}

/// [`plan`]'s answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    /// The pool as the policy sees it; `last_decisions` is left for the caller to fill.
    pub status: PoolStatus,
    /// The tenant's monthly budget ([`PoolView::tenant_budget_left`]) held back scale-up (the
    /// pool's own budget is `status.budget_exhausted`).
    pub tenant_budget_exhausted: bool,
}

/// The warm target at `now`: the last schedule whose window contains `now`, else `min_idle`.
/// Returns the target and the index of the schedule in force.
pub fn warm_target(pool: &Pool, now: OffsetDateTime) -> (u32, Option<usize>) {
    let settings = &pool.settings;
    let mut target = (settings.min_idle, None);
    for (idx, schedule) in settings.schedules.iter().enumerate() {
        if let Ok(compiled) = schedule.compile()
            && compiled.matches(now)
        {
            target = (schedule.min_idle, Some(idx));
        }
    }
    target
}

/// Midnight UTC on the first day of `now`'s month.
pub fn month_start(now: OffsetDateTime) -> OffsetDateTime {
    let now = now.to_offset(time::UtcOffset::UTC);
    now.replace_day(1)
        .map(|day| day.replace_time(time::Time::MIDNIGHT))
        .unwrap_or(now)
}

/// What machines cost this month at `hourly_cost` each: every `(started, ended)` lifetime
/// (`ended` `None` while it runs) is billed for the part inside the month up to `now`.
pub fn month_spend(
    lifetimes: impl IntoIterator<Item = (OffsetDateTime, Option<OffsetDateTime>)>,
    hourly_cost: f64,
    now: OffsetDateTime,
) -> f64 {
    let start = month_start(now);
    let seconds: f64 = lifetimes
        .into_iter()
        .map(|(from, to)| {
            let from = from.max(start);
            let to = to.unwrap_or(now).min(now);
            (to - from).as_seconds_f64().max(0.0)
        })
        .sum();
    seconds / 3600.0 * hourly_cost
}

fn elapsed(since: OffsetDateTime, now: OffsetDateTime) -> Duration {
    (now - since).try_into().unwrap_or(Duration::ZERO)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// When the pool may provision again after repeated failures, and why it waits.
fn backoff(view: &PoolView<'_>, now: OffsetDateTime) -> Option<(OffsetDateTime, String)> {
    let tuning = view.tuning;
    // Outcomes of finished provisions, newest first: true for a success.
    let mut outcomes: Vec<(OffsetDateTime, bool, OffsetDateTime)> = view
        .machines
        .iter()
        .filter_map(|m| {
            if m.ever_ready {
                Some((m.created_at, true, m.since))
            } else if m.phase == Phase::Failed && elapsed(m.since, now) <= tuning.failure_memory {
                Some((m.created_at, false, m.since))
            } else {
                None
            }
        })
        .collect();
    outcomes.sort_by_key(|outcome| std::cmp::Reverse(outcome.0));
    let streak: Vec<OffsetDateTime> = outcomes
        .iter()
        .take_while(|(_, success, _)| !success)
        .map(|(_, _, failed_at)| *failed_at)
        .collect();
    if streak.len() < 2 {
        return None;
    }
    let doublings = u32::try_from(streak.len() - 2).unwrap_or(u32::MAX).min(20);
    let delay = tuning
        .backoff_base
        .saturating_mul(1u32 << doublings)
        .min(tuning.backoff_max);
    let last_failure = streak.iter().max().copied()?;
    let until = last_failure + delay;
    (until > now).then(|| {
        (
            until,
            format!(
                "the last {} provisions failed; trying again in {}s",
                streak.len(),
                (until - now).whole_seconds().max(1)
            ),
        )
    })
}

/// Decides what the pool should do now. Pure and deterministic: the same view, demand and
/// time give the same plan. [`plan_with`] knowing no hosts and no forecast.
pub fn plan(view: &PoolView<'_>, demand: &Demand, now: OffsetDateTime) -> Plan {
    plan_with(view, &Outlook::default(), demand, now)
}

/// Whether the forecast needs the pool's `firm` capacity plus more within `[from, to]`, and
/// how many more at most.
fn forecast_need(
    forecast: Option<&DemandForecast>,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> usize {
    forecast.map_or(0, |f| (f.peak(from, to) - 1e-9).ceil().max(0.0) as usize)
}

/// [`plan`], also using what `outlook` knows: the pool's dedicated hosts and its learned
/// demand. Pure and deterministic.
pub fn plan_with(
    view: &PoolView<'_>,
    outlook: &Outlook<'_>,
    demand: &Demand,
    now: OffsetDateTime,
) -> Plan {
    let settings = &view.pool.settings;
    let tuning = view.tuning;
    let mut decisions = Vec::new();
    let (min_idle, active_schedule) = warm_target(view.pool, now);

    // 1. Health and 2. recycling: decide per machine, then count what is left as capacity.
    let mut booting: Vec<&MachineView> = Vec::new();
    let mut idle: Vec<&MachineView> = Vec::new();
    let (mut busy, mut stopping, mut failed) = (0usize, 0usize, 0usize);
    let mut version_recycled = false;
    for machine in view.machines {
        match machine.phase {
            Phase::Booting { .. } if elapsed(machine.since, now) > tuning.boot_deadline => {
                decisions.push(Decision::Fail {
                    machine: machine.id,
                    why: Why::Stuck,
                });
            }
            Phase::Booting { .. } => booting.push(machine),
            Phase::Idle => {
                let zombie = machine
                    .runner_down_since
                    .is_some_and(|since| elapsed(since, now) >= tuning.zombie_grace);
                let recycle = if zombie {
                    None
                } else if settings.ephemeral && machine.jobs_run >= 1 {
                    Some(Why::Ephemeral)
                } else if settings.max_jobs.is_some_and(|n| machine.jobs_run >= n) {
                    Some(Why::MaxJobs)
                } else if settings
                    .max_age_secs
                    .is_some_and(|age| elapsed(machine.created_at, now).as_secs() >= age)
                {
                    Some(Why::MaxAge)
                } else if !version_recycled
                    && matches!((view.runner_version, machine.runner_version.as_deref()),
                        (Some(want), Some(has)) if want != has)
                {
                    version_recycled = true;
                    Some(Why::RunnerVersion)
                } else {
                    None
                };
                if zombie {
                    decisions.push(Decision::Fail {
                        machine: machine.id,
                        why: Why::Zombie,
                    });
                } else if let Some(why) = recycle {
                    decisions.push(Decision::Terminate {
                        machine: machine.id,
                        why,
                    });
                    stopping += 1;
                } else {
                    idle.push(machine);
                }
            }
            Phase::Busy => busy += 1,
            Phase::Stopping => stopping += 1,
            Phase::Failed => {
                if elapsed(machine.since, now) <= tuning.failure_memory {
                    failed += 1;
                }
            }
        }
    }

    // 3. Scale up.
    let queued = demand.queued.len();
    let max = settings.max as usize;
    let have = booting.len() + idle.len() + busy;
    let prewarm = match outlook.hosts {
        Some(_) => tuning.host_prewarm,
        None => tuning.prewarm,
    };
    let mut forecast_floor = forecast_need(outlook.forecast, now, now + prewarm);
    if outlook.hosts.is_some() && forecast_floor > 0 {
        forecast_floor += (tuning.host_spare * (forecast_floor as f64).sqrt()).ceil() as usize;
    }
    let want = (busy + queued + min_idle as usize).max(forecast_floor);
    let need = want.saturating_sub(have);
    let room = max.saturating_sub(have + stopping);
    let rate = view.hourly_rate.or(settings.hourly_cost).unwrap_or(0.0);
    // A machine's cost over the lookahead: scale-up never starts a machine the budget cannot
    // pay for that long.
    let ahead = rate * tuning.budget_lookahead.as_secs_f64() / 3600.0;
    let affordable = |left: f64| {
        if left <= 0.0 {
            0
        } else {
            (left / ahead).floor() as usize
        }
    };
    let pool_budget_room = match settings.monthly_budget {
        Some(budget) if ahead > 0.0 => {
            affordable(budget - view.spent_this_month - ahead * (have + stopping) as f64)
        }
        _ => usize::MAX,
    };
    let tenant_budget_room = match view.tenant_budget_left {
        Some(left) if ahead > 0.0 => affordable(left),
        _ => usize::MAX,
    };
    let budget_room = pool_budget_room.min(tenant_budget_room);
    let backoff = backoff(view, now);
    let mut provision = need.min(room).min(budget_room);
    let budget_exhausted = pool_budget_room < need.min(room);
    let tenant_budget_exhausted = !budget_exhausted && tenant_budget_room < need.min(room);
    if let Some(hosts) = outlook.hosts {
        // Beyond the hosts free now, wait for those about to finish scrubbing: a new host
        // commits to its whole minimum allocation.
        let free = hosts
            .iter()
            .filter(|h| h.instance.is_none() && h.scrubbing_until.is_none_or(|t| t <= now))
            .count();
        let soon = hosts
            .iter()
            .filter(|h| {
                h.instance.is_none()
                    && h.scrubbing_until
                        .is_some_and(|t| t > now && t <= now + tuning.scrub_wait)
            })
            .count();
        provision = provision.min(free) + provision.saturating_sub(free).saturating_sub(soon);
    }
    if backoff.is_some() {
        provision = 0;
    }
    if provision > 0 {
        let forecast = if forecast_floor > busy + queued + min_idle as usize {
            format!(", forecast {forecast_floor}")
        } else {
            String::new()
        };
        let held = if budget_exhausted {
            format!("; held to {provision} by the pool's monthly budget")
        } else if tenant_budget_exhausted {
            format!("; held to {provision} by the tenant's monthly budget")
        } else {
            String::new()
        };
        decisions.push(Decision::Provision {
            count: count(provision),
            reason: format!(
                "{queued} queued, {busy} busy, warm target {min_idle}{forecast}: want {want}, have {have}{held}"
            ),
        });
    }

    // 4. Scale down what is beyond desired.
    let keep = want.min(max);
    let mut surplus = have.saturating_sub(keep);
    let over_max = have.saturating_sub(max);
    let mut cancellable: Vec<&MachineView> = booting
        .iter()
        .copied()
        .filter(|m| m.phase == Phase::Booting { committed: false })
        .collect();
    // Newest first: the most recent requests are the ones the vanished jobs caused.
    cancellable.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    for machine in cancellable.into_iter().take(surplus) {
        decisions.push(Decision::Terminate {
            machine: machine.id,
            why: Why::Cancelled,
        });
        surplus -= 1;
    }
    idle.sort_by(|a, b| a.since.cmp(&b.since).then(a.id.cmp(&b.id)));
    if let Some(hosts) = outlook.hosts {
        scale_down_hosts(view, outlook, hosts, idle, have, want, now, &mut decisions);
    } else {
        let idle_timeout = Duration::from_secs(settings.idle_timeout_secs);
        let mut over_max_left = over_max.min(surplus);
        for machine in idle {
            if surplus == 0 {
                break;
            }
            let why = if over_max_left > 0 {
                over_max_left -= 1;
                Why::OverMax
            } else if elapsed(machine.since, now) >= idle_timeout {
                Why::Idle
            } else {
                continue;
            };
            decisions.push(Decision::Terminate {
                machine: machine.id,
                why,
            });
            surplus -= 1;
        }
    }

    finish(
        view,
        demand,
        now,
        decisions,
        Summary {
            want,
            max,
            have,
            budget_room,
            busy,
            failed,
            queued,
            min_idle,
            active_schedule,
            backoff,
            budget_exhausted,
            tenant_budget_exhausted,
            rate: view.hourly_rate.or(settings.hourly_cost),
        },
    )
}

/// Step 4 for a pool on dedicated hosts: an idle instance is the cheapest capacity there is
/// while its host is inside its minimum allocation, so it stays; past it, the instance goes
/// (and its host with it once scrubbed) unless the forecast needs the host within
/// [`Tuning::host_hold`]. Instances go [`Tuning::host_scrub`] before the minimum ends, so the
/// host is released right at it.
#[allow(clippy::too_many_arguments)]
fn scale_down_hosts(
    view: &PoolView<'_>,
    outlook: &Outlook<'_>,
    hosts: &[HostView],
    idle: Vec<&MachineView>,
    have: usize,
    want: usize,
    now: OffsetDateTime,
    decisions: &mut Vec<Decision>,
) {
    let tuning = view.tuning;
    let max = view.pool.settings.max as usize;
    let host_of = |machine: &MachineView| hosts.iter().find(|h| h.instance == Some(machine.id));
    let (candidates, held): (Vec<&MachineView>, Vec<&MachineView>) =
        idle.into_iter().partition(|machine| {
            host_of(machine).is_none_or(|h| h.min_until <= now + tuning.host_scrub)
        });
    let mut over_max = have.saturating_sub(max);
    let firm = have - candidates.len();
    let ahead = forecast_need(outlook.forecast, now, now + tuning.host_hold);
    let keep = want.max(ahead).min(max).saturating_sub(firm);
    for machine in candidates.iter().skip(keep) {
        let why = if over_max > 0 {
            over_max -= 1;
            Why::OverMax
        } else {
            Why::Idle
        };
        decisions.push(Decision::Terminate {
            machine: machine.id,
            why,
        });
    }
    // Over `max` still (it was lowered): idle instances go even inside the minimum.
    for machine in held.into_iter().take(over_max) {
        decisions.push(Decision::Terminate {
            machine: machine.id,
            why: Why::OverMax,
        });
    }
}

/// The figures [`finish`] reports.
struct Summary {
    want: usize,
    max: usize,
    have: usize,
    budget_room: usize,
    busy: usize,
    failed: usize,
    queued: usize,
    min_idle: u32,
    active_schedule: Option<usize>,
    backoff: Option<(OffsetDateTime, String)>,
    budget_exhausted: bool,
    tenant_budget_exhausted: bool,
    rate: Option<f64>,
}

fn finish(
    view: &PoolView<'_>,
    demand: &Demand,
    now: OffsetDateTime,
    decisions: Vec<Decision>,
    summary: Summary,
) -> Plan {
    let Summary {
        want,
        max,
        have,
        budget_room,
        busy,
        failed,
        queued,
        min_idle,
        active_schedule,
        backoff,
        budget_exhausted,
        tenant_budget_exhausted,
        rate,
    } = summary;
    let oldest = demand.queued.iter().map(|job| job.queued_at).min();
    let desired = want.min(max).min(have.saturating_add(budget_room));
    let status = PoolStatus {
        desired: count(desired),
        idle: count(
            view.machines
                .iter()
                .filter(|m| m.phase == Phase::Idle)
                .count(),
        ),
        busy: count(busy),
        booting: count(
            view.machines
                .iter()
                .filter(|m| matches!(m.phase, Phase::Booting { .. }))
                .count(),
        ),
        stopping: count(
            view.machines
                .iter()
                .filter(|m| m.phase == Phase::Stopping)
                .count(),
        ),
        failed: count(failed),
        queued_jobs: count(queued),
        oldest_queued_secs: oldest.map(|at| elapsed(at, now).as_secs()),
        min_idle,
        active_schedule,
        backoff_until: backoff.as_ref().map(|(until, _)| *until),
        backoff_reason: backoff.map(|(_, reason)| reason),
        spent_this_month: rate.map(|_| view.spent_this_month),
        budget_exhausted,
        last_decisions: Vec::new(),
    };
    Plan {
        decisions,
        status,
        tenant_budget_exhausted,
    }
}
