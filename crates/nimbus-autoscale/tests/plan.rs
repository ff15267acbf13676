//! The autoscaling policy driven directly: each test builds one pool's view and demand, calls
//! `plan` (or `assign`/`best_pool` for matching) and checks the concrete decisions. The
//! properties at the end check the invariants over random pools, machines and demand.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use nimbus_autoscale::{
    Decision, Demand, MachineView, Matcher, Phase, Plan, PoolView, QueuedJob, Tuning, Why, assign,
    best_pool, month_spend, month_start, plan, warm_target,
};
use nimbus_types::demand::{ForgeJob, JobRecord, JobStatus, LabelSet, Source};
use nimbus_types::{
    Arch, MachineId, Os, Pool, PoolId, PoolSettings, ProviderId, Schedule, TenantId,
};
use proptest::prelude::*;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

/// Tuesday 2026-12-01, noon UTC.
const NOW: OffsetDateTime = datetime!(2026-12-01 12:00 UTC);

fn ago(secs: i64) -> OffsetDateTime {
    NOW - Duration::seconds(secs)
}

/// Machine ids that read back as small numbers, so assertions name machines by number.
fn mid(n: u64) -> MachineId {
    MachineId::from_str(&format!("00000000-0000-7000-8000-{n:012}")).expect("machine id")
}

fn num(id: MachineId) -> u64 {
    let text = id.to_string();
    text[text.len() - 12..]
        .parse()
        .expect("a machine id made by mid()")
}

fn pool_id(n: u64) -> PoolId {
    PoolId::from_str(&format!("00000000-0000-7000-9000-{n:012}")).expect("pool id")
}

/// A validated pool named `name`; `configure` changes the defaults of `PoolSettings::new`.
fn pool(name: &str, labels: &[&str], max: u32, configure: impl FnOnce(&mut PoolSettings)) -> Pool {
    let labels = labels.iter().map(|label| label.to_string()).collect();
    let mut settings = PoolSettings::new(labels, Os::Linux, Arch::X86_64, max);
    configure(&mut settings);
    settings
        .validate()
        .unwrap_or_else(|err| panic!("pool {name}: {err}"));
    Pool {
        id: PoolId::new(),
        tenant_id: TenantId::from_str("00000000-0000-7000-a000-000000000001").expect("tenant"),
        name: name.to_owned(),
        provider_id: ProviderId::from_str("00000000-0000-7000-b000-000000000001")
            .expect("provider"),
        settings,
        created_at: NOW - Duration::days(30),
        updated_at: NOW - Duration::days(30),
    }
}

/// Machine `n` in `phase`: created an hour ago, in its phase for a minute, no jobs run yet.
fn machine(n: u64, phase: Phase) -> MachineView {
    MachineView {
        id: mid(n),
        phase,
        created_at: ago(3600),
        since: ago(60),
        jobs_run: 0,
        runner_version: None,
        runner_down_since: None,
        ever_ready: matches!(phase, Phase::Idle | Phase::Busy | Phase::Stopping),
    }
}

fn idle_since(n: u64, secs: i64) -> MachineView {
    MachineView {
        since: ago(secs),
        ..machine(n, Phase::Idle)
    }
}

/// A provision that failed before the machine was ever ready.
fn failed_provision(n: u64, created_secs_ago: i64, failed_secs_ago: i64) -> MachineView {
    MachineView {
        created_at: ago(created_secs_ago),
        since: ago(failed_secs_ago),
        ever_ready: false,
        ..machine(n, Phase::Failed)
    }
}

/// Machines numbered from `first`, all in `phase`.
fn many(first: u64, n: usize, phase: Phase) -> Vec<MachineView> {
    (first..first + n as u64)
        .map(|i| machine(i, phase))
        .collect()
}

fn demand(n: usize, now: OffsetDateTime) -> Demand {
    Demand {
        queued: (0..n)
            .map(|i| QueuedJob {
                job_id: 1000 + i as u64,
                queued_at: now - Duration::seconds(30 + i as i64),
            })
            .collect(),
    }
}

/// One pool's situation.
#[derive(Clone)]
struct Case {
    pool: Pool,
    machines: Vec<MachineView>,
    queued: usize,
    spent: f64,
    runner_version: Option<&'static str>,
    tuning: Tuning,
}

impl Case {
    fn new(pool: Pool) -> Self {
        Case {
            pool,
            machines: Vec::new(),
            queued: 0,
            spent: 0.0,
            runner_version: None,
            tuning: Tuning::default(),
        }
    }

    fn machines(mut self, machines: impl IntoIterator<Item = MachineView>) -> Self {
        self.machines.extend(machines);
        self
    }

    fn queued(mut self, queued: usize) -> Self {
        self.queued = queued;
        self
    }

    fn plan(&self) -> Plan {
        self.plan_at(NOW)
    }

    fn plan_at(&self, now: OffsetDateTime) -> Plan {
        let view = PoolView {
            pool: &self.pool,
            machines: &self.machines,
            spent_this_month: self.spent,
            hourly_rate: None,
            tenant_budget_left: None,
            runner_version: self.runner_version,
            tuning: &self.tuning,
        };
        plan(&view, &demand(self.queued, now), now)
    }
}

/// Machines the plan asks for (0 without a `Provision`); a plan holds at most one.
fn provisioned(plan: &Plan) -> u32 {
    let counts: Vec<u32> = plan
        .decisions
        .iter()
        .filter_map(|decision| match decision {
            Decision::Provision { count, .. } => Some(*count),
            _ => None,
        })
        .collect();
    assert!(
        counts.len() <= 1,
        "more than one provision: {:#?}",
        plan.decisions
    );
    counts.first().copied().unwrap_or(0)
}

/// `(machine number, why)` of each `Terminate`, in the plan's order.
fn terminated(plan: &Plan) -> Vec<(u64, Why)> {
    plan.decisions
        .iter()
        .filter_map(|decision| match decision {
            Decision::Terminate { machine, why } => Some((num(*machine), *why)),
            _ => None,
        })
        .collect()
}

/// `(machine number, why)` of each `Fail`, in the plan's order.
fn failed(plan: &Plan) -> Vec<(u64, Why)> {
    plan.decisions
        .iter()
        .filter_map(|decision| match decision {
            Decision::Fail { machine, why } => Some((num(*machine), *why)),
            _ => None,
        })
        .collect()
}

fn linux(max: u32, configure: impl FnOnce(&mut PoolSettings)) -> Pool {
    pool("linux", &["self-hosted", "linux"], max, configure)
}

// Scale up.

#[test]
fn a_warm_pool_without_demand_provisions_exactly_min_idle() {
    let pool = linux(10, |s| s.min_idle = 3);
    let plan = Case::new(pool.clone()).plan();
    assert_eq!(provisioned(&plan), 3, "{:#?}", plan.decisions);
    assert_eq!(plan.decisions.len(), 1, "{:#?}", plan.decisions);
    let Decision::Provision { reason, .. } = &plan.decisions[0] else {
        unreachable!()
    };
    assert_eq!(reason, "0 queued, 0 busy, warm target 3: want 3, have 0");
    assert_eq!(plan.status.desired, 3);
    assert_eq!(plan.status.min_idle, 3);
    assert_eq!(plan.status.queued_jobs, 0);
    assert_eq!(plan.status.oldest_queued_secs, None);
    assert_eq!(plan.status.active_schedule, None);

    // What is already there or on its way counts.
    let plan = Case::new(pool.clone())
        .machines([
            machine(1, Phase::Idle),
            machine(2, Phase::Booting { committed: true }),
        ])
        .plan();
    assert_eq!(provisioned(&plan), 1);

    let plan = Case::new(pool.clone())
        .machines(many(1, 3, Phase::Idle))
        .plan();
    assert_eq!(plan.decisions, vec![]);

    // More idle than the warm target, none idle long enough: nothing happens yet.
    let plan = Case::new(pool).machines(many(1, 5, Phase::Idle)).plan();
    assert_eq!(plan.decisions, vec![]);
    assert_eq!(plan.status.desired, 3);
    assert_eq!(plan.status.idle, 5);
}

#[test]
fn a_burst_provisions_up_to_max_and_no_further() {
    let pool = linux(10, |_| {});
    // (booting, idle, busy, stopping, queued) -> provisioned
    let cases = [
        ((0, 0, 0, 0, 4), 4),
        ((0, 0, 0, 0, 25), 10),
        // The first pass's machines are booting: nothing more.
        ((10, 0, 0, 0, 25), 0),
        ((2, 1, 2, 1, 25), 4),
        ((0, 0, 10, 0, 25), 0),
        ((0, 0, 9, 0, 25), 1),
        // Machines being removed still count towards max.
        ((0, 0, 0, 10, 25), 0),
        ((0, 0, 4, 5, 25), 1),
        // Booting machines cover the queued jobs they were started for.
        ((3, 0, 0, 0, 3), 0),
    ];
    for ((booting, idle, busy, stopping, queued), expect) in cases {
        let machines = [
            many(100, booting, Phase::Booting { committed: true }),
            many(200, idle, Phase::Idle),
            many(300, busy, Phase::Busy),
            many(400, stopping, Phase::Stopping),
        ]
        .concat();
        let plan = Case::new(pool.clone())
            .machines(machines)
            .queued(queued)
            .plan();
        assert_eq!(
            provisioned(&plan),
            expect,
            "booting {booting}, idle {idle}, busy {busy}, stopping {stopping}, queued {queued}: {:#?}",
            plan.decisions
        );
        assert_eq!(plan.status.queued_jobs, queued as u32);
        assert_eq!(plan.status.oldest_queued_secs, Some(30 + queued as u64 - 1));
        assert!(plan.status.desired <= 10, "{:?}", plan.status);
        assert!(
            terminated(&plan).is_empty() && failed(&plan).is_empty(),
            "{:#?}",
            plan.decisions
        );
    }
    let plan = Case::new(pool).queued(25).plan();
    assert_eq!(plan.status.desired, 10);
    assert!(!plan.status.budget_exhausted);
}

// Busy machines.

#[test]
fn busy_machines_are_never_terminated_or_failed() {
    type Configure = fn(&mut PoolSettings);
    let variants: [(&str, Configure); 3] = [
        ("ephemeral", |s| {
            s.idle_timeout_secs = 0;
            s.max_age_secs = Some(60);
            s.max_jobs = Some(1);
        }),
        ("reused", |s| {
            s.ephemeral = false;
            s.idle_timeout_secs = 0;
            s.max_age_secs = Some(60);
            s.max_jobs = Some(2);
        }),
        ("budget spent", |s| {
            s.hourly_cost = Some(1.0);
            s.monthly_budget = Some(1.0);
        }),
    ];
    for (name, configure) in variants {
        // `max` lowered to 2 under five busy runners that are old, ran many jobs, run an old
        // runner version and have been offline at the forge for a day.
        let pool = linux(2, configure);
        let busy = (1..=5).map(|n| MachineView {
            created_at: ago(30 * 86400),
            since: ago(86400),
            jobs_run: 7,
            runner_version: Some("2.300.0".into()),
            runner_down_since: Some(ago(86400)),
            ..machine(n, Phase::Busy)
        });
        let mut case = Case::new(pool).machines(busy);
        case.runner_version = Some("2.321.0");
        case.spent = 1000.0;
        for queued in [0, 3] {
            case.queued = queued;
            let plan = case.plan();
            assert_eq!(plan.decisions, vec![], "{name}, queued {queued}");
            assert_eq!(plan.status.busy, 5);
            assert_eq!(plan.status.desired, 2);
        }
    }
}

// Scale down.

#[test]
fn idle_runners_beyond_the_warm_target_go_after_idle_timeout_longest_idle_first() {
    let pool = linux(10, |s| {
        s.min_idle = 1;
        s.ephemeral = false;
        s.idle_timeout_secs = 600;
    });
    let check = |machines: Vec<MachineView>, queued: usize, expect: &[(u64, Why)]| {
        let plan = Case::new(pool.clone())
            .machines(machines.clone())
            .queued(queued)
            .plan();
        assert_eq!(terminated(&plan), expect, "{machines:#?}");
        assert_eq!(provisioned(&plan), 0, "{:#?}", plan.decisions);
    };
    // Three beyond the warm target, all past the timeout: the longest idle go, one stays.
    check(
        vec![
            idle_since(1, 700),
            idle_since(2, 900),
            idle_since(3, 300),
            idle_since(4, 650),
        ],
        0,
        &[(2, Why::Idle), (1, Why::Idle), (4, Why::Idle)],
    );
    // Only those past the timeout go, even though two more are beyond the warm target.
    check(
        vec![
            idle_since(1, 900),
            idle_since(2, 800),
            idle_since(3, 100),
            idle_since(4, 50),
        ],
        0,
        &[(1, Why::Idle), (2, Why::Idle)],
    );
    // The warm target stays however long it idles.
    check(vec![idle_since(1, 86400)], 0, &[]);
    // The timeout is inclusive.
    check(
        vec![idle_since(1, 600), idle_since(2, 5000), idle_since(3, 10)],
        0,
        &[(2, Why::Idle), (1, Why::Idle)],
    );
    check(
        vec![idle_since(1, 599), idle_since(2, 5000), idle_since(3, 10)],
        0,
        &[(2, Why::Idle)],
    );
    // Idle runners about to take queued jobs stay.
    check(
        vec![
            idle_since(1, 5000),
            idle_since(2, 5000),
            idle_since(3, 5000),
        ],
        2,
        &[],
    );
    // Busy runners are not part of the warm target: one idle runner stays besides them.
    check(
        [
            many(10, 3, Phase::Busy),
            vec![idle_since(1, 5000), idle_since(2, 4000)],
        ]
        .concat(),
        0,
        &[(1, Why::Idle)],
    );
    // Ties on idle time go by id, so the choice does not depend on the listing order.
    check(
        vec![
            idle_since(3, 5000),
            idle_since(2, 5000),
            idle_since(1, 5000),
        ],
        0,
        &[(1, Why::Idle), (2, Why::Idle)],
    );
}

#[test]
fn lowering_max_terminates_idle_runners_but_never_busy_ones() {
    let pool = linux(3, |s| s.ephemeral = false);
    // Four busy and two fresh idle runners over a max of three: both idle runners go now,
    // without waiting for the idle timeout; the busy ones finish their jobs.
    let plan = Case::new(pool.clone())
        .machines(
            [
                many(1, 4, Phase::Busy),
                vec![idle_since(5, 20), idle_since(6, 10)],
            ]
            .concat(),
        )
        .plan();
    assert_eq!(terminated(&plan), [(5, Why::OverMax), (6, Why::OverMax)]);
    assert_eq!(plan.decisions.len(), 2, "{:#?}", plan.decisions);
    assert_eq!(plan.status.desired, 3);

    // One busy and four fresh idle runners, warm target one: two go (the longest idle) to get
    // down to max; the third beyond the warm target waits for the idle timeout.
    let pool = linux(3, |s| {
        s.ephemeral = false;
        s.min_idle = 1;
    });
    let plan = Case::new(pool.clone())
        .machines(
            [
                vec![machine(1, Phase::Busy)],
                vec![
                    idle_since(2, 40),
                    idle_since(3, 30),
                    idle_since(4, 20),
                    idle_since(5, 10),
                ],
            ]
            .concat(),
        )
        .plan();
    assert_eq!(terminated(&plan), [(2, Why::OverMax), (3, Why::OverMax)]);
    assert_eq!(provisioned(&plan), 0);

    // Queued jobs do not keep a pool over max.
    let plan = Case::new(pool)
        .machines(
            [
                many(1, 2, Phase::Busy),
                vec![idle_since(3, 20), idle_since(4, 10)],
            ]
            .concat(),
        )
        .queued(5)
        .plan();
    assert_eq!(terminated(&plan), [(3, Why::OverMax)]);
    assert_eq!(provisioned(&plan), 0);
}

#[test]
fn booting_machines_not_yet_paid_for_are_cancelled_when_their_job_vanished() {
    let pool = linux(10, |_| {});
    let machines = vec![
        MachineView {
            created_at: ago(300),
            ..machine(1, Phase::Booting { committed: true })
        },
        MachineView {
            created_at: ago(200),
            ..machine(2, Phase::Booting { committed: false })
        },
        MachineView {
            created_at: ago(100),
            ..machine(3, Phase::Booting { committed: false })
        },
        MachineView {
            created_at: ago(50),
            ..machine(4, Phase::Booting { committed: true })
        },
    ];
    let case = Case::new(pool).machines(machines);
    let plan = case.clone().queued(4).plan();
    assert_eq!(plan.decisions, vec![]);
    // One job went elsewhere: the newest request that costs nothing yet is cancelled.
    let plan = case.clone().queued(3).plan();
    assert_eq!(terminated(&plan), [(3, Why::Cancelled)]);
    // All jobs gone: both uncommitted machines are cancelled, the committed ones boot on
    // (they are paid for and will go through the idle timeout).
    let plan = case.clone().queued(0).plan();
    assert_eq!(
        terminated(&plan),
        [(3, Why::Cancelled), (2, Why::Cancelled)]
    );
    assert_eq!(plan.decisions.len(), 2, "{:#?}", plan.decisions);
    assert_eq!(plan.status.booting, 4);
}

// Health.

#[test]
fn a_machine_booting_past_the_deadline_is_failed_stuck_and_replaced() {
    let pool = linux(10, |_| {});
    let deadline = Tuning::default().boot_deadline.as_secs() as i64;
    let plan = Case::new(pool)
        .machines([
            MachineView {
                since: ago(deadline + 1),
                ..machine(1, Phase::Booting { committed: true })
            },
            MachineView {
                since: ago(deadline),
                ..machine(2, Phase::Booting { committed: true })
            },
            MachineView {
                since: ago(deadline + 1),
                ..machine(3, Phase::Booting { committed: false })
            },
        ])
        .queued(3)
        .plan();
    assert_eq!(failed(&plan), [(1, Why::Stuck), (3, Why::Stuck)]);
    assert_eq!(terminated(&plan), []);
    // Failed machines are not capacity: two replacements for the three jobs.
    assert_eq!(provisioned(&plan), 2);
    assert_eq!(plan.status.booting, 3);
}

#[test]
fn a_runner_offline_past_the_zombie_grace_is_failed_and_replaced() {
    let pool = linux(10, |s| s.min_idle = 2);
    let grace = Tuning::default().zombie_grace.as_secs() as i64;
    let plan = Case::new(pool)
        .machines([
            // Offline for the grace: a zombie, failed rather than recycled as ephemeral.
            MachineView {
                runner_down_since: Some(ago(grace)),
                jobs_run: 1,
                ..machine(1, Phase::Idle)
            },
            MachineView {
                runner_down_since: Some(ago(grace - 1)),
                ..machine(2, Phase::Idle)
            },
            // A busy runner is left to finish whatever the forge says.
            MachineView {
                runner_down_since: Some(ago(86400)),
                ..machine(3, Phase::Busy)
            },
        ])
        .plan();
    assert_eq!(failed(&plan), [(1, Why::Zombie)]);
    assert_eq!(terminated(&plan), []);
    // busy 1 + warm 2 wanted, runners 2 and 3 left.
    assert_eq!(provisioned(&plan), 1);
}

// Recycling.

#[test]
fn an_ephemeral_runner_goes_after_its_job() {
    let ephemeral = linux(10, |s| s.min_idle = 1);
    let used = MachineView {
        jobs_run: 1,
        ..machine(1, Phase::Idle)
    };
    let plan = Case::new(ephemeral).machines([used.clone()]).plan();
    assert_eq!(terminated(&plan), [(1, Why::Ephemeral)]);
    assert_eq!(provisioned(&plan), 1, "the warm target is refilled");

    let reused = linux(10, |s| {
        s.min_idle = 1;
        s.ephemeral = false;
    });
    let plan = Case::new(reused).machines([used]).plan();
    assert_eq!(plan.decisions, vec![]);
}

#[test]
fn a_runner_goes_after_max_jobs() {
    let pool = linux(10, |s| {
        s.ephemeral = false;
        s.max_jobs = Some(3);
    });
    let runner = |n, jobs_run| MachineView {
        jobs_run,
        ..machine(n, Phase::Idle)
    };
    let plan = Case::new(pool)
        .machines([runner(1, 2), runner(2, 3), runner(3, 4)])
        .plan();
    assert_eq!(terminated(&plan), [(2, Why::MaxJobs), (3, Why::MaxJobs)]);
}

#[test]
fn a_runner_goes_after_max_age() {
    let pool = linux(10, |s| {
        s.ephemeral = false;
        s.max_age_secs = Some(3600);
    });
    let runner = |n, age| MachineView {
        created_at: ago(age),
        ..machine(n, Phase::Idle)
    };
    let plan = Case::new(pool)
        .machines([runner(1, 3599), runner(2, 3600)])
        .plan();
    assert_eq!(terminated(&plan), [(2, Why::MaxAge)]);
}

#[test]
fn a_runner_version_change_replaces_one_idle_runner_per_pass() {
    let pool = linux(10, |s| {
        s.ephemeral = false;
        s.min_idle = 4;
    });
    let runner = |n, version: Option<&str>| MachineView {
        runner_version: version.map(str::to_owned),
        ..machine(n, Phase::Idle)
    };
    let mut case = Case::new(pool).machines([
        runner(1, Some("2.320.0")),
        runner(2, Some("2.320.0")),
        runner(3, Some("2.320.0")),
        // Nothing known about this one's version: left alone.
        runner(4, None),
    ]);
    case.runner_version = Some("2.321.0");

    // Apply each pass's decisions and plan again: one runner at a time, each replaced.
    for (pass, expect) in [1, 2, 3].into_iter().enumerate() {
        let plan = case.plan();
        assert_eq!(
            terminated(&plan),
            [(expect, Why::RunnerVersion)],
            "pass {pass}"
        );
        assert_eq!(provisioned(&plan), 1, "pass {pass}");
        for m in &mut case.machines {
            if num(m.id) == expect {
                m.phase = Phase::Stopping;
            }
        }
        case.machines
            .push(runner(10 + pass as u64, Some("2.321.0")));
    }
    let plan = case.plan();
    assert_eq!(plan.decisions, vec![], "all runners are current");

    // Without a pinned version nothing is recycled.
    case.runner_version = None;
    case.machines = vec![runner(1, Some("2.320.0"))];
    assert_eq!(terminated(&case.plan()), []);
}

#[test]
fn other_recycling_does_not_use_up_the_version_change_slot() {
    let pool = linux(10, |s| {
        s.ephemeral = false;
        s.max_age_secs = Some(3600);
    });
    let old = |n, age| MachineView {
        created_at: ago(age),
        runner_version: Some("2.320.0".into()),
        ..machine(n, Phase::Idle)
    };
    let mut case = Case::new(pool).machines([old(1, 7200), old(2, 600), old(3, 600)]);
    case.runner_version = Some("2.321.0");
    let plan = case.plan();
    assert_eq!(
        terminated(&plan),
        [(1, Why::MaxAge), (2, Why::RunnerVersion)]
    );
}

// Schedules.

/// Checks the warm target `plan` uses at each instant, and that an empty pool provisions it.
fn check_schedule(schedules: &[&str], cases: &[(OffsetDateTime, u32, Option<usize>)]) {
    let schedules: Vec<Schedule> = schedules
        .iter()
        .map(|s| s.parse().unwrap_or_else(|err| panic!("{s}: {err}")))
        .collect();
    let pool = linux(10, |s| {
        s.min_idle = 1;
        s.schedules = schedules;
    });
    for &(at, target, schedule) in cases {
        assert_eq!(warm_target(&pool, at), (target, schedule), "at {at}");
        let plan = Case::new(pool.clone()).plan_at(at);
        assert_eq!(plan.status.min_idle, target, "at {at}");
        assert_eq!(plan.status.active_schedule, schedule, "at {at}");
        assert_eq!(provisioned(&plan), target, "at {at}");
    }
}

#[test]
fn a_working_hours_schedule_follows_berlin_time_across_daylight_saving() {
    check_schedule(
        &["* 8-17 * * 1-5@Europe/Berlin=5"],
        &[
            // Monday in winter (UTC+1): 08:00-17:59 Berlin is 07:00-16:59 UTC.
            (datetime!(2026-11-30 06:59:59 UTC), 1, None),
            (datetime!(2026-11-30 07:00:00 UTC), 5, Some(0)),
            (datetime!(2026-11-30 16:59:59 UTC), 5, Some(0)),
            (datetime!(2026-11-30 17:00:00 UTC), 1, None),
            // The same instants given in another offset.
            (datetime!(2026-11-30 08:00:00 +01:00), 5, Some(0)),
            (datetime!(2026-11-30 01:59:59 -05:00), 1, None),
            (datetime!(2026-11-30 02:00:00 -05:00), 5, Some(0)),
            // Monday in summer (UTC+2): 06:00-15:59 UTC.
            (datetime!(2026-06-01 05:59:59 UTC), 1, None),
            (datetime!(2026-06-01 06:00:00 UTC), 5, Some(0)),
            (datetime!(2026-06-01 15:59:59 UTC), 5, Some(0)),
            (datetime!(2026-06-01 16:00:00 UTC), 1, None),
            // Around the spring change (Sunday 2026-03-29): the window moves an hour earlier
            // in UTC between Friday and Monday.
            (datetime!(2026-03-27 06:00:00 UTC), 1, None),
            (datetime!(2026-03-27 07:00:00 UTC), 5, Some(0)),
            (datetime!(2026-03-27 16:59:59 UTC), 5, Some(0)),
            (datetime!(2026-03-30 05:59:59 UTC), 1, None),
            (datetime!(2026-03-30 06:00:00 UTC), 5, Some(0)),
            (datetime!(2026-03-30 15:59:59 UTC), 5, Some(0)),
            (datetime!(2026-03-30 16:00:00 UTC), 1, None),
            // And back an hour later after the autumn change (Sunday 2026-10-25).
            (datetime!(2026-10-23 06:00:00 UTC), 5, Some(0)),
            (datetime!(2026-10-26 06:00:00 UTC), 1, None),
            (datetime!(2026-10-26 07:00:00 UTC), 5, Some(0)),
            // Friday evening and the weekend.
            (datetime!(2026-12-04 16:59:59 UTC), 5, Some(0)),
            (datetime!(2026-12-04 17:00:00 UTC), 1, None),
            (datetime!(2026-12-05 10:00:00 UTC), 1, None),
            (datetime!(2026-12-06 10:00:00 UTC), 1, None),
        ],
    );
}

#[test]
fn a_schedule_reads_the_weekday_in_its_own_zone() {
    // Monday 08:00 in Tokyo (UTC+9, no daylight saving) is Sunday 23:00 UTC.
    check_schedule(
        &["* 8-17 * * 1-5@Asia/Tokyo=3"],
        &[
            (datetime!(2026-11-29 22:59:59 UTC), 1, None),
            (datetime!(2026-11-29 23:00:00 UTC), 3, Some(0)),
            (datetime!(2026-12-04 08:59:59 UTC), 3, Some(0)),
            (datetime!(2026-12-04 09:00:00 UTC), 1, None),
        ],
    );
}

#[test]
fn a_schedule_on_the_daylight_saving_hour() {
    // 02:00-02:59 Berlin does not exist on 2026-03-29 and happens twice on 2026-10-25.
    check_schedule(
        &["* 2 * * *@Europe/Berlin=4"],
        &[
            (datetime!(2026-03-29 00:59:59 UTC), 1, None),
            (datetime!(2026-03-29 01:00:00 UTC), 1, None),
            (datetime!(2026-03-29 01:59:59 UTC), 1, None),
            (datetime!(2026-03-30 00:00:00 UTC), 4, Some(0)),
            (datetime!(2026-10-24 23:59:59 UTC), 1, None),
            (datetime!(2026-10-25 00:00:00 UTC), 4, Some(0)),
            (datetime!(2026-10-25 01:59:59 UTC), 4, Some(0)),
            (datetime!(2026-10-25 02:00:00 UTC), 1, None),
        ],
    );
}

#[test]
fn the_last_matching_schedule_wins() {
    check_schedule(
        &[
            "* 8-17 * * 1-5@Europe/Berlin=5",
            "* 12 * * *@Europe/Berlin=2",
        ],
        &[
            (datetime!(2026-11-30 10:59:59 UTC), 5, Some(0)),
            (datetime!(2026-11-30 11:00:00 UTC), 2, Some(1)),
            (datetime!(2026-11-30 11:59:59 UTC), 2, Some(1)),
            (datetime!(2026-11-30 12:00:00 UTC), 5, Some(0)),
            (datetime!(2026-12-05 11:30:00 UTC), 2, Some(1)),
        ],
    );
}

#[test]
fn a_schedule_with_a_fixed_minute_matches_that_minute_only() {
    // Schedules match minute by minute, so `0 8-17 * * 1-5` is ten one-minute windows, not the
    // working day: a window needs `*` in the minute field.
    check_schedule(
        &["0 8-17 * * 1-5@Europe/Berlin=5"],
        &[
            (datetime!(2026-11-30 06:59:59 UTC), 1, None),
            (datetime!(2026-11-30 07:00:00 UTC), 5, Some(0)),
            (datetime!(2026-11-30 07:00:59 UTC), 5, Some(0)),
            (datetime!(2026-11-30 07:01:00 UTC), 1, None),
            (datetime!(2026-11-30 12:30:00 UTC), 1, None),
            (datetime!(2026-11-30 16:00:00 UTC), 5, Some(0)),
            (datetime!(2026-11-30 17:00:00 UTC), 1, None),
        ],
    );
}

#[test]
fn the_end_of_a_schedule_lets_the_extra_runners_go_after_the_idle_timeout() {
    let schedule: Schedule = "* 8-17 * * 1-5@Europe/Berlin=5".parse().unwrap();
    let pool = linux(10, |s| {
        s.min_idle = 1;
        s.ephemeral = false;
        s.idle_timeout_secs = 600;
        s.schedules = vec![schedule];
    });
    // Monday 2026-11-30: the window opens at 07:00 UTC and the pool fills up.
    let morning = datetime!(2026-11-30 07:00 UTC);
    let plan = Case::new(pool.clone())
        .machines([machine(1, Phase::Idle)])
        .plan_at(morning);
    assert_eq!(provisioned(&plan), 4);
    // Five runners idle since 07:05: kept through the window.
    let runners: Vec<MachineView> = (1..=5)
        .map(|n| MachineView {
            since: datetime!(2026-11-30 07:05 UTC) + Duration::seconds(n as i64),
            ..machine(n, Phase::Idle)
        })
        .collect();
    let case = Case::new(pool).machines(runners);
    assert_eq!(
        case.plan_at(datetime!(2026-11-30 16:59:59 UTC)).decisions,
        vec![]
    );
    // The window closes at 17:00 UTC: the warm target is one again, the four longest idle go.
    let plan = case.plan_at(datetime!(2026-11-30 17:00 UTC));
    assert_eq!(
        terminated(&plan),
        [
            (1, Why::Idle),
            (2, Why::Idle),
            (3, Why::Idle),
            (4, Why::Idle)
        ]
    );
    assert_eq!(plan.status.min_idle, 1);
}

// Budget.

#[test]
fn the_monthly_budget_limits_scale_up() {
    let pool = linux(50, |s| {
        s.hourly_cost = Some(2.0);
        s.monthly_budget = Some(100.0);
    });
    let check = |case: Case, expect: u32, exhausted: bool, desired: u32| {
        let plan = case.plan();
        assert_eq!(
            provisioned(&plan),
            expect,
            "spent {}: {:#?}",
            case.spent,
            plan.status
        );
        assert_eq!(
            plan.status.budget_exhausted, exhausted,
            "spent {}",
            case.spent
        );
        assert_eq!(plan.status.desired, desired, "spent {}", case.spent);
        assert_eq!(plan.status.spent_this_month, Some(case.spent));
    };
    let case = |spent: f64| Case {
        spent,
        ..Case::new(pool.clone()).queued(20)
    };
    // $10 left at $2 an hour for the next hour: five machines.
    check(case(90.0), 5, true, 5);
    // Three busy machines reserve $6 of it: two more.
    check(case(90.0).machines(many(1, 3, Phase::Busy)), 2, true, 5);
    check(case(100.0), 0, true, 0);
    check(case(150.0), 0, true, 0);
    // Enough money: the jobs decide.
    check(case(0.0), 20, false, 20);
    check(case(59.0), 20, false, 20);
    check(case(61.0), 19, true, 19);
    // A longer lookahead reserves more per machine: $10 left at $4 ahead each.
    let mut longer = case(90.0);
    longer.tuning.budget_lookahead = std::time::Duration::from_secs(7200);
    check(longer, 2, true, 2);

    // Without a cost there is no spend to report and no limit.
    let plan = Case::new(linux(50, |_| {})).queued(20).plan();
    assert_eq!(plan.status.spent_this_month, None);
    assert_eq!(provisioned(&plan), 20);
}

#[test]
fn month_spend_counts_only_this_month() {
    let feb = datetime!(2026-02-01 01:30 UTC);
    assert_eq!(month_start(feb), datetime!(2026-02-01 00:00 UTC));
    // The month is the UTC month whatever the offset `now` is given in.
    assert_eq!(
        month_start(datetime!(2026-02-01 01:30 +02:00)),
        datetime!(2026-01-01 00:00 UTC)
    );
    assert_eq!(
        month_start(datetime!(2027-01-01 00:00 UTC)),
        datetime!(2027-01-01 00:00 UTC)
    );
    assert_eq!(
        month_start(datetime!(2026-12-31 23:59:59 UTC)),
        datetime!(2026-12-01 00:00 UTC)
    );

    let close = |got: f64, want: f64| assert!((got - want).abs() < 1e-9, "{got} != {want}");
    // Started before midnight and still running: only February's 1.5 hours.
    close(
        month_spend([(datetime!(2026-01-31 23:00 UTC), None)], 2.0, feb),
        3.0,
    );
    // Ended in January: nothing.
    close(
        month_spend(
            [(
                datetime!(2026-01-20 00:00 UTC),
                Some(datetime!(2026-01-25 00:00 UTC)),
            )],
            2.0,
            feb,
        ),
        0.0,
    );
    // Ran across midnight: the half hour in February.
    close(
        month_spend(
            [(
                datetime!(2026-01-31 22:00 UTC),
                Some(datetime!(2026-02-01 00:30 UTC)),
            )],
            2.0,
            feb,
        ),
        1.0,
    );
    let lives = [
        (datetime!(2026-01-31 23:00 UTC), None),
        (
            datetime!(2026-01-20 00:00 UTC),
            Some(datetime!(2026-01-25 00:00 UTC)),
        ),
        (
            datetime!(2026-01-31 22:00 UTC),
            Some(datetime!(2026-02-01 00:30 UTC)),
        ),
        (datetime!(2026-02-01 01:00 UTC), None),
    ];
    close(month_spend(lives, 2.0, feb), 5.0);
    // The same machine's spend on either side of midnight: it starts again from zero.
    let running = [(datetime!(2026-01-31 23:00 UTC), None)];
    close(
        month_spend(running, 2.0, datetime!(2026-01-31 23:30 UTC)),
        1.0,
    );
    close(
        month_spend(running, 2.0, datetime!(2026-02-01 00:00 UTC)),
        0.0,
    );
    close(
        month_spend(running, 2.0, datetime!(2026-02-01 00:15 UTC)),
        0.5,
    );
    close(month_spend(std::iter::empty(), 2.0, feb), 0.0);
}

// Backoff.

#[test]
fn one_failed_provision_is_retried_at_once() {
    let plan = Case::new(linux(10, |_| {}))
        .machines([failed_provision(1, 120, 10)])
        .queued(3)
        .plan();
    assert_eq!(provisioned(&plan), 3);
    assert_eq!(plan.status.backoff_until, None);
    assert_eq!(plan.status.failed, 1);
}

#[test]
fn repeated_failed_provisions_back_off_doubling_up_to_the_max() {
    let pool = linux(10, |_| {});
    let tuning = Tuning::default();
    assert_eq!(tuning.backoff_base.as_secs(), 30);
    assert_eq!(tuning.backoff_max.as_secs(), 900);
    // n failures, the newest at NOW - 10 s -> seconds from NOW until the next try
    for (n, wait) in [
        (2u64, 20i64),
        (3, 50),
        (4, 110),
        (5, 230),
        (6, 470),
        (7, 890),
        (12, 890),
    ] {
        let failures = (1..=n).map(|i| failed_provision(i, 100 + 10 * i as i64, 10 * i as i64));
        let case = Case::new(pool.clone()).machines(failures).queued(3);
        let plan = case.plan();
        assert_eq!(provisioned(&plan), 0, "{n} failures: {:#?}", plan.decisions);
        assert_eq!(
            plan.status.backoff_until,
            Some(NOW + Duration::seconds(wait)),
            "{n} failures"
        );
        assert_eq!(
            plan.status.backoff_reason.as_deref(),
            Some(format!("the last {n} provisions failed; trying again in {wait}s").as_str())
        );
        assert_eq!(plan.status.failed, n as u32);
        assert!(!plan.status.budget_exhausted);
        // Still waiting a second before, provisioning again at the instant.
        let before = case.plan_at(NOW + Duration::seconds(wait - 1));
        assert_eq!(provisioned(&before), 0, "{n} failures");
        let after = case.plan_at(NOW + Duration::seconds(wait));
        assert_eq!(provisioned(&after), 3, "{n} failures");
        assert_eq!(after.status.backoff_until, None);
    }
}

#[test]
fn a_success_ends_the_backoff() {
    let pool = linux(10, |_| {});
    let failures = [failed_provision(1, 120, 60), failed_provision(2, 100, 10)];
    let ready_at = |n, created| MachineView {
        created_at: ago(created),
        ..machine(n, Phase::Idle)
    };
    // A machine requested after the failures became ready.
    let plan = Case::new(pool.clone())
        .machines(failures.clone())
        .machines([ready_at(3, 50)])
        .queued(3)
        .plan();
    assert_eq!(plan.status.backoff_until, None);
    assert_eq!(provisioned(&plan), 2);
    // It counts even if it later failed as a zombie: the provision itself worked.
    let plan = Case::new(pool.clone())
        .machines(failures.clone())
        .machines([MachineView {
            ever_ready: true,
            ..failed_provision(3, 50, 5)
        }])
        .queued(3)
        .plan();
    assert_eq!(plan.status.backoff_until, None);
    assert_eq!(provisioned(&plan), 3);
    // One from before the failures does not.
    let plan = Case::new(pool.clone())
        .machines(failures.clone())
        .machines([ready_at(3, 5000)])
        .queued(3)
        .plan();
    assert_eq!(plan.status.backoff_until, Some(NOW + Duration::seconds(20)));
    assert_eq!(provisioned(&plan), 0);
    // Nor does one still booting.
    let plan = Case::new(pool)
        .machines(failures)
        .machines([MachineView {
            created_at: ago(5),
            ..machine(3, Phase::Booting { committed: true })
        }])
        .queued(3)
        .plan();
    assert!(plan.status.backoff_until.is_some());
    assert_eq!(provisioned(&plan), 0);
}

#[test]
fn failures_older_than_the_failure_memory_are_forgotten() {
    // A base longer than the memory, so only forgetting can end this backoff.
    let tuning = Tuning {
        backoff_base: std::time::Duration::from_secs(7200),
        backoff_max: std::time::Duration::from_secs(4 * 3600),
        failure_memory: std::time::Duration::from_secs(3600),
        ..Tuning::default()
    };
    let case = |failed_ago: [i64; 2]| Case {
        tuning: tuning.clone(),
        ..Case::new(linux(10, |_| {}))
            .machines([
                failed_provision(1, failed_ago[0] + 100, failed_ago[0]),
                failed_provision(2, failed_ago[1] + 100, failed_ago[1]),
            ])
            .queued(2)
    };
    let plan = case([3500, 3400]).plan();
    assert_eq!(
        plan.status.backoff_until,
        Some(ago(3400) + Duration::hours(2))
    );
    assert_eq!(provisioned(&plan), 0);
    // One of the two forgotten: a single failure does not back off.
    let plan = case([3601, 3400]).plan();
    assert_eq!(plan.status.backoff_until, None);
    assert_eq!(plan.status.failed, 1);
    assert_eq!(provisioned(&plan), 2);
    let plan = case([3700, 3601]).plan();
    assert_eq!(plan.status.backoff_until, None);
    assert_eq!(plan.status.failed, 0);
    assert_eq!(provisioned(&plan), 2);
}

#[test]
fn backoff_holds_scale_up_only() {
    let pool = linux(10, |s| s.ephemeral = false);
    let plan = Case::new(pool)
        .machines([failed_provision(1, 120, 60), failed_provision(2, 100, 10)])
        .machines([
            idle_since(3, 5000),
            machine(4, Phase::Booting { committed: false }),
        ])
        .plan();
    assert!(plan.status.backoff_until.is_some());
    assert_eq!(terminated(&plan), [(4, Why::Cancelled), (3, Why::Idle)]);
}

// Determinism.

/// A pool with something of everything.
fn busy_day() -> Case {
    let schedule: Schedule = "* 8-17 * * 1-5@Europe/Berlin=3".parse().unwrap();
    let pool = linux(12, |s| {
        s.min_idle = 1;
        s.ephemeral = false;
        s.max_jobs = Some(5);
        s.max_age_secs = Some(6 * 3600);
        s.schedules = vec![schedule];
        s.hourly_cost = Some(0.5);
        s.monthly_budget = Some(500.0);
    });
    let mut case = Case::new(pool).queued(7).machines([
        MachineView {
            jobs_run: 5,
            ..idle_since(1, 100)
        },
        MachineView {
            runner_version: Some("2.320.0".into()),
            ..idle_since(2, 2000)
        },
        MachineView {
            runner_version: Some("2.320.0".into()),
            ..idle_since(3, 50)
        },
        MachineView {
            runner_down_since: Some(ago(900)),
            ..idle_since(4, 900)
        },
        machine(5, Phase::Busy),
        machine(6, Phase::Busy),
        MachineView {
            since: ago(3 * 3600),
            ..machine(7, Phase::Booting { committed: true })
        },
        machine(8, Phase::Booting { committed: false }),
        machine(9, Phase::Stopping),
        failed_provision(10, 500, 400),
    ]);
    case.spent = 120.0;
    case.runner_version = Some("2.321.0");
    case
}

#[test]
fn the_same_inputs_give_the_same_plan() {
    let case = busy_day();
    let first = case.plan();
    assert_eq!(case.plan(), first);
    assert_eq!(case.clone().plan(), first);
    // And the plan is what the rules say: health, recycling, then scale-up.
    assert_eq!(failed(&first), [(4, Why::Zombie), (7, Why::Stuck)]);
    assert_eq!(
        terminated(&first),
        [(1, Why::MaxJobs), (2, Why::RunnerVersion)]
    );
    // Tuesday 13:00 in Berlin: the schedule's warm target 3. busy 2 + queued 7 + warm 3 = 12
    // wanted; idle 3, busy 5 and 6 and booting 8 make 4; stopping are 9 and the two recycled,
    // so max leaves room for 12 - 7 = 5.
    assert_eq!(provisioned(&first), 5);
    assert_eq!(first.status.min_idle, 3);
    assert_eq!(first.status.desired, 12);
}

// Matching.

fn job(job_id: u64, labels: &[&str], status: JobStatus) -> JobRecord {
    JobRecord {
        job: ForgeJob {
            job_id,
            run_id: job_id / 10,
            repository: "acme/app".into(),
            labels: LabelSet::new(labels),
            status,
        },
        runner_name: None,
        first_seen: ago(job_id as i64),
        updated_at: ago(job_id as i64),
        source: Source::Webhook,
    }
}

fn with_id(mut pool: Pool, n: u64) -> Pool {
    pool.id = pool_id(n);
    pool
}

fn tenant_pools() -> Vec<Pool> {
    vec![
        with_id(pool("linux", &["self-hosted", "linux"], 10, |_| {}), 1),
        with_id(
            pool("linux-x64", &["self-hosted", "linux", "x64"], 10, |_| {}),
            2,
        ),
        with_id(
            pool(
                "linux-x64-large",
                &["self-hosted", "linux", "x64", "large"],
                10,
                |_| {},
            ),
            3,
        ),
        with_id(
            pool("gpu", &["self-hosted", "linux", "x64", "gpu"], 10, |_| {}),
            4,
        ),
        with_id(
            pool("macos", &["self-hosted", "macos", "arm64"], 10, |_| {}),
            5,
        ),
    ]
}

#[test]
fn a_job_goes_to_the_most_specific_pool_that_serves_it() {
    let pools = tenant_pools();
    let cases: [(&[&str], Option<&str>); 9] = [
        (&["self-hosted"], Some("linux")),
        (&["self-hosted", "linux"], Some("linux")),
        (&["linux", "x64"], Some("linux-x64")),
        (&["self-hosted", "linux", "x64"], Some("linux-x64")),
        (&["large"], Some("linux-x64-large")),
        (&["gpu", "x64"], Some("gpu")),
        (&["arm64"], Some("macos")),
        (&["linux", "arm64"], None),
        (&["self-hosted", "windows"], None),
    ];
    let mut matcher = Matcher::new(&pools);
    for (labels, expect) in cases {
        let labels = LabelSet::new(labels);
        let found = best_pool(&pools, &labels).map(|pool| pool.name.as_str());
        assert_eq!(found, expect, "{labels}");
        // The cached matcher agrees, the first time and the second.
        for _ in 0..2 {
            let cached = matcher.pool_for(&labels).map(|pool| pool.name.as_str());
            assert_eq!(cached, expect, "{labels}");
        }
    }
}

#[test]
fn ties_go_to_the_pool_whose_name_sorts_first() {
    // Same number of labels beyond the job's; the ids sort the other way round.
    let b = with_id(pool("b-docker", &["linux", "x64", "docker"], 10, |_| {}), 1);
    let a = with_id(pool("a-gpu", &["linux", "x64", "gpu"], 10, |_| {}), 2);
    let job = LabelSet::new(["linux", "x64"]);
    for pools in [vec![a.clone(), b.clone()], vec![b.clone(), a.clone()]] {
        assert_eq!(
            best_pool(&pools, &job).map(|p| p.name.as_str()),
            Some("a-gpu")
        );
        assert_eq!(
            Matcher::new(&pools).pool_for(&job).map(|p| p.name.as_str()),
            Some("a-gpu")
        );
    }
    // A more specific job has only one candidate.
    let pools = [b, a];
    assert_eq!(
        best_pool(&pools, &LabelSet::new(["docker"])).map(|p| p.name.as_str()),
        Some("b-docker")
    );
}

#[test]
fn labels_match_case_insensitively() {
    let pools = tenant_pools();
    let labels = LabelSet::new(["Self-Hosted", " LINUX ", "X64", "x64"]);
    assert_eq!(labels.labels(), ["linux", "self-hosted", "x64"]);
    assert_eq!(
        best_pool(&pools, &labels).map(|p| p.name.as_str()),
        Some("linux-x64")
    );
    // Even a pool whose labels were never normalised.
    let mut shouting = pools[0].clone();
    shouting.settings.labels = vec!["SELF-HOSTED".into(), "Linux".into()];
    assert_eq!(
        best_pool(&[shouting], &LabelSet::new(["self-hosted", "linux"])).map(|p| p.name.as_str()),
        Some("linux")
    );
    // And jobs arriving with different spellings group under one pool.
    let jobs = [
        job(1, &["Self-Hosted", "Linux"], JobStatus::Queued),
        job(2, &["self-hosted", "linux"], JobStatus::Queued),
        job(3, &["LINUX"], JobStatus::Queued),
    ];
    let demand = assign(&pools, &jobs);
    assert_eq!(demand.len(), 1);
    assert_eq!(demand[&pools[0].id].queued.len(), 3);
}

#[test]
fn only_queued_jobs_that_a_pool_serves_are_demand() {
    let pools = tenant_pools();
    let jobs = [
        job(1, &["self-hosted", "linux", "x64"], JobStatus::Queued),
        job(2, &["self-hosted", "linux", "x64"], JobStatus::Waiting),
        job(3, &["self-hosted", "linux", "x64"], JobStatus::InProgress),
        job(4, &["self-hosted", "linux", "x64"], JobStatus::Completed),
        job(5, &["self-hosted", "windows"], JobStatus::Queued),
        job(6, &["self-hosted", "linux", "x64"], JobStatus::Queued),
        job(7, &["macos"], JobStatus::Queued),
    ];
    let demand: HashMap<PoolId, Vec<(u64, OffsetDateTime)>> = assign(&pools, &jobs)
        .into_iter()
        .map(|(pool, demand)| {
            (
                pool,
                demand
                    .queued
                    .iter()
                    .map(|job| (job.job_id, job.queued_at))
                    .collect(),
            )
        })
        .collect();
    let expect = HashMap::from([
        (pools[1].id, vec![(1, ago(1)), (6, ago(6))]),
        (pools[4].id, vec![(7, ago(7))]),
    ]);
    assert_eq!(demand, expect);
    assert!(assign(&pools, std::iter::empty::<&JobRecord>()).is_empty());
    assert!(assign(&[], &jobs).is_empty());
}

#[test]
fn assigned_demand_drives_the_plan() {
    let pools = tenant_pools();
    let jobs: Vec<JobRecord> = (1..=30)
        .map(|n| match n % 3 {
            0 => job(n, &["linux", "x64"], JobStatus::Queued),
            1 => job(n, &["gpu"], JobStatus::Queued),
            _ => job(n, &["linux", "x64"], JobStatus::InProgress),
        })
        .collect();
    let demand = assign(&pools, &jobs);
    let tuning = Tuning::default();
    let provisioned_for = |idx: usize| {
        let view = PoolView {
            pool: &pools[idx],
            machines: &[],
            spent_this_month: 0.0,
            hourly_rate: None,
            tenant_budget_left: None,
            runner_version: None,
            tuning: &tuning,
        };
        let none = Demand::default();
        provisioned(&plan(
            &view,
            demand.get(&pools[idx].id).unwrap_or(&none),
            NOW,
        ))
    };
    assert_eq!(provisioned_for(1), 10);
    // gpu: ten jobs, at most ten machines.
    assert_eq!(provisioned_for(3), 10);
    assert_eq!(provisioned_for(0), 0);
    assert_eq!(provisioned_for(4), 0);
}

// Properties.

#[derive(Clone, Debug)]
struct Input {
    pool: Pool,
    machines: Vec<MachineView>,
    queued: usize,
    spent: f64,
    runner_version: Option<&'static str>,
    now: OffsetDateTime,
}

impl Input {
    fn plan(&self) -> Plan {
        let tuning = Tuning::default();
        let view = PoolView {
            pool: &self.pool,
            machines: &self.machines,
            spent_this_month: self.spent,
            hourly_rate: None,
            tenant_budget_left: None,
            runner_version: self.runner_version,
            tuning: &tuning,
        };
        plan(&view, &demand(self.queued, self.now), self.now)
    }
}

const VERSIONS: [&str; 2] = ["2.320.0", "2.321.0"];

fn arb_phase() -> impl Strategy<Value = Phase> {
    prop_oneof![
        any::<bool>().prop_map(|committed| Phase::Booting { committed }),
        Just(Phase::Idle),
        Just(Phase::Busy),
        Just(Phase::Stopping),
        Just(Phase::Failed),
    ]
}

prop_compose! {
    fn arb_machine()(
        phase in arb_phase(),
        age in 0i64..4 * 3600,
        in_phase in 0i64..4 * 3600,
        jobs_run in 0u32..4,
        version in prop::option::of(0usize..2),
        down in prop::option::of(0i64..900),
        ever_ready in any::<bool>(),
    ) -> (Phase, i64, i64, u32, Option<usize>, Option<i64>, bool) {
        (phase, age, in_phase, jobs_run, version, down, ever_ready)
    }
}

prop_compose! {
    fn arb_pool()(
        max in 1u32..=20,
        min_idle in 0u32..=20,
        idle_timeout in 0u64..1200,
        max_age in prop::option::of(60u64..4 * 3600),
        ephemeral in any::<bool>(),
        max_jobs in prop::option::of(1u32..5),
        budget in prop::option::of((0.1f64..5.0, 1.0f64..300.0)),
        schedule in prop::option::of((0usize..3, 0u32..=20)),
    ) -> Pool {
        linux(max, |s| {
            s.min_idle = min_idle.min(max);
            s.idle_timeout_secs = idle_timeout;
            s.max_age_secs = max_age;
            s.ephemeral = ephemeral;
            s.max_jobs = if ephemeral { max_jobs.map(|_| 1) } else { max_jobs };
            if let Some((cost, budget)) = budget {
                s.hourly_cost = Some(cost);
                s.monthly_budget = Some(budget);
            }
            if let Some((kind, min_idle)) = schedule {
                let cron = ["* * * * *", "* 8-17 * * 1-5", "*/2 * * * *"][kind];
                s.schedules = vec![Schedule {
                    cron: cron.into(),
                    timezone: "Europe/Berlin".into(),
                    min_idle: min_idle.min(max),
                }];
            }
        })
    }
}

prop_compose! {
    fn arb_input()(
        pool in arb_pool(),
        parts in prop::collection::vec(arb_machine(), 0..30),
        queued in 0usize..40,
        spent in 0.0f64..300.0,
        version in prop::option::of(0usize..2),
        offset in 0i64..7 * 86400,
    ) -> Input {
        let now = NOW + Duration::seconds(offset);
        let machines = parts
            .into_iter()
            .enumerate()
            .map(|(idx, (phase, age, in_phase, jobs_run, version, down, ever_ready))| {
                MachineView {
                    id: mid(idx as u64 + 1),
                    phase,
                    created_at: now - Duration::seconds(age),
                    since: now - Duration::seconds(in_phase.min(age)),
                    jobs_run,
                    runner_version: version.map(|v| VERSIONS[v].to_owned()),
                    runner_down_since: down.map(|secs| now - Duration::seconds(secs)),
                    ever_ready: match phase {
                        Phase::Booting { .. } => false,
                        Phase::Idle | Phase::Busy => true,
                        Phase::Stopping | Phase::Failed => ever_ready,
                    },
                }
            })
            .collect();
        Input {
            pool,
            machines,
            queued,
            spent,
            runner_version: version.map(|v| VERSIONS[v]),
            now,
        }
    }
}

/// The invariants every plan keeps.
fn check_invariants(input: &Input, plan: &Plan) -> Result<(), TestCaseError> {
    let settings = &input.pool.settings;
    let by_id: HashMap<MachineId, &MachineView> =
        input.machines.iter().map(|m| (m.id, m)).collect();
    let mut decided = HashSet::new();
    let mut provision = 0usize;
    let mut n_provisions = 0;
    let mut failed = HashSet::new();
    let mut recycled = 0usize;
    let mut scaled_down = 0usize;
    let mut version_changes = 0;
    for decision in &plan.decisions {
        match decision {
            Decision::Provision { count, .. } => {
                prop_assert!(*count > 0);
                provision = *count as usize;
                n_provisions += 1;
            }
            Decision::Terminate { machine, why } => {
                prop_assert!(decided.insert(*machine), "{machine:?} decided twice");
                let phase = by_id[machine].phase;
                match why {
                    Why::Cancelled => {
                        prop_assert_eq!(phase, Phase::Booting { committed: false })
                    }
                    Why::Idle | Why::OverMax => {
                        prop_assert_eq!(phase, Phase::Idle);
                        scaled_down += 1;
                    }
                    Why::Ephemeral | Why::MaxJobs | Why::MaxAge | Why::RunnerVersion => {
                        prop_assert_eq!(phase, Phase::Idle);
                        recycled += 1;
                    }
                    Why::Stuck | Why::Zombie => {
                        return Err(TestCaseError::fail(format!("terminate {why:?}")));
                    }
                }
                if *why == Why::Cancelled {
                    scaled_down += 1;
                }
                if *why == Why::RunnerVersion {
                    version_changes += 1;
                }
            }
            Decision::Fail { machine, why } => {
                prop_assert!(decided.insert(*machine), "{machine:?} decided twice");
                let phase = by_id[machine].phase;
                match why {
                    Why::Stuck => {
                        let booting = matches!(phase, Phase::Booting { .. });
                        prop_assert!(booting, "stuck but {:?}", phase);
                    }
                    Why::Zombie => prop_assert_eq!(phase, Phase::Idle),
                    _ => return Err(TestCaseError::fail(format!("fail {why:?}"))),
                }
                failed.insert(*machine);
            }
        }
    }
    prop_assert!(n_provisions <= 1);
    prop_assert!(version_changes <= 1);

    // Never touch a busy machine.
    for machine in &decided {
        prop_assert_ne!(by_id[machine].phase, Phase::Busy);
    }

    // Machines that count towards max once the plan is applied: recycled ones are stopping,
    // failed ones are not capacity any more.
    let live = |m: &&MachineView| !failed.contains(&m.id) && m.phase != Phase::Failed;
    let after = input.machines.iter().filter(live).count();
    let busy = input
        .machines
        .iter()
        .filter(|m| m.phase == Phase::Busy)
        .count();
    let stopping = input
        .machines
        .iter()
        .filter(|m| m.phase == Phase::Stopping)
        .count()
        + recycled;
    let have = after - stopping;
    let (warm, _) = warm_target(&input.pool, input.now);
    let need = (busy + input.queued + warm as usize).saturating_sub(have);
    let max = settings.max as usize;
    if provision > 0 {
        prop_assert!(
            after + provision <= max,
            "{after} + {provision} > max {max}"
        );
        prop_assert!(provision <= need, "provision {provision} > need {need}");
        prop_assert!(plan.status.backoff_until.is_none());
        prop_assert_eq!(scaled_down, 0, "provisions and scales down at once");
        if let (Some(budget), Some(cost)) = (settings.monthly_budget, settings.hourly_cost) {
            let committed = input.spent + cost * (after + provision) as f64;
            prop_assert!(committed <= budget + 1e-9, "{committed} > budget {budget}");
        }
    }
    prop_assert!(plan.status.desired as usize <= max);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn plans_keep_the_invariants(input in arb_input()) {
        let plan = input.plan();
        check_invariants(&input, &plan)?;
    }

    #[test]
    fn plans_are_deterministic(input in arb_input()) {
        let plan = input.plan();
        prop_assert_eq!(&input.plan(), &plan);
        prop_assert_eq!(&input.clone().plan(), &plan);
    }
}
