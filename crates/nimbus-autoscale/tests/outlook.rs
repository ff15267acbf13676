//! `plan_with`: a pool on dedicated hosts (hold an idle instance inside its host's minimum,
//! release it at the boundary unless the forecast needs it, wait for a host about to finish
//! scrubbing) and the forecast's warm target. `plan` is `plan_with` knowing nothing.

use std::str::FromStr;

use nimbus_autoscale::{
    Decision, Demand, DemandForecast, ForecastConfig, HostView, MachineView, Observation, Outlook,
    Phase, Plan, PoolView, QueuedJob, Tuning, Why, plan, plan_with,
};
use nimbus_types::{Arch, MachineId, Os, Pool, PoolId, PoolSettings, ProviderId, TenantId};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

/// Tuesday 2026-12-01, 20:00 UTC: after the working day.
const NOW: OffsetDateTime = datetime!(2026-12-01 20:00 UTC);

fn mid(n: u64) -> MachineId {
    MachineId::from_str(&format!("00000000-0000-7000-8000-{n:012}")).expect("machine id")
}

fn mac_pool() -> Pool {
    let labels = vec!["self-hosted".to_owned(), "macos".to_owned()];
    let mut settings = PoolSettings::new(labels, Os::Macos, Arch::Arm64, 10);
    settings.ephemeral = false;
    settings.validate().expect("valid pool");
    Pool {
        id: PoolId::new(),
        tenant_id: TenantId::from_str("00000000-0000-7000-a000-000000000001").expect("tenant"),
        name: "macos".to_owned(),
        provider_id: ProviderId::from_str("00000000-0000-7000-b000-000000000001")
            .expect("provider"),
        settings,
        created_at: NOW - Duration::days(30),
        updated_at: NOW - Duration::days(30),
    }
}

fn idle(n: u64, since: OffsetDateTime) -> MachineView {
    MachineView {
        id: mid(n),
        phase: Phase::Idle,
        created_at: since - Duration::hours(1),
        since,
        jobs_run: 3,
        runner_version: None,
        runner_down_since: None,
        ever_ready: true,
    }
}

/// A host allocated `age` ago with machine `n` on it.
fn host(n: Option<u64>, age: Duration) -> HostView {
    HostView {
        allocated_at: NOW - age,
        min_until: NOW - age + Duration::hours(24),
        instance: n.map(mid),
        scrubbing_until: None,
    }
}

/// A forecast of `level` concurrent jobs every workday from 8:00 to 18:00 UTC, learned from
/// one week of such days.
fn workday_forecast(level: usize) -> DemandForecast {
    let monday = datetime!(2026-11-23 00:00 UTC);
    let mut jobs = Vec::new();
    for day in 0..5 {
        for _ in 0..level {
            let from = monday + Duration::days(day) + Duration::hours(8);
            jobs.push(Observation {
                queued_at: from,
                until: from + Duration::hours(10),
            });
        }
    }
    DemandForecast::learn(
        &jobs,
        monday + Duration::days(7),
        &ForecastConfig::default(),
    )
}

fn run(
    machines: &[MachineView],
    hosts: &[HostView],
    forecast: Option<&DemandForecast>,
    queued: usize,
    now: OffsetDateTime,
) -> Plan {
    let pool = mac_pool();
    let tuning = Tuning::default();
    let view = PoolView {
        pool: &pool,
        machines,
        spent_this_month: 0.0,
        hourly_rate: None,
        tenant_budget_left: None,
        runner_version: None,
        tuning: &tuning,
    };
    let demand = Demand {
        queued: (0..queued)
            .map(|n| QueuedJob {
                job_id: n as u64,
                queued_at: now - Duration::seconds(5),
            })
            .collect(),
    };
    plan_with(
        &view,
        &Outlook {
            hosts: Some(hosts),
            forecast,
        },
        &demand,
        now,
    )
}

fn terminated(plan: &Plan) -> Vec<MachineId> {
    plan.decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Terminate { machine, why } => {
                assert_eq!(*why, Why::Idle);
                Some(*machine)
            }
            _ => None,
        })
        .collect()
}

fn provisioned(plan: &Plan) -> u32 {
    plan.decisions
        .iter()
        .map(|d| match d {
            Decision::Provision { count, .. } => *count,
            _ => 0,
        })
        .sum()
}

#[test]
fn an_idle_instance_stays_while_its_host_is_inside_the_minimum() {
    // Idle for hours, nothing forecast: the host is paid for until its 24 h anyway.
    let machines = [idle(1, NOW - Duration::hours(3))];
    let hosts = [host(Some(1), Duration::hours(10))];
    let none = DemandForecast::empty();
    assert_eq!(run(&machines, &hosts, Some(&none), 0, NOW).decisions, []);
    // Without hosts, the same idle runner goes after the idle timeout.
    let pool = mac_pool();
    let tuning = Tuning::default();
    let view = PoolView {
        pool: &pool,
        machines: &machines,
        spent_this_month: 0.0,
        hourly_rate: None,
        tenant_budget_left: None,
        runner_version: None,
        tuning: &tuning,
    };
    assert_eq!(
        terminated(&plan_with(
            &view,
            &Outlook::default(),
            &Demand::default(),
            NOW
        )),
        [mid(1)]
    );
    assert_eq!(
        plan(&view, &Demand::default(), NOW),
        plan_with(&view, &Outlook::default(), &Demand::default(), NOW)
    );
}

#[test]
fn at_the_boundary_a_host_goes_unless_the_forecast_needs_it() {
    // The host's 24 h end in 40 min: its instance must go now for the scrub to end by then.
    let age = Duration::hours(24) - Duration::minutes(40);
    let machines = [idle(1, NOW - Duration::hours(2))];
    let hosts = [host(Some(1), age)];
    // Nothing forecast within the hold (Tuesday 20:00 → Wednesday 08:00 is 12 h away).
    let quiet = DemandForecast::empty();
    assert_eq!(
        terminated(&run(&machines, &hosts, Some(&quiet), 0, NOW)),
        [mid(1)]
    );
    // Workdays need two: at 20:00 the next need (08:00) is 12 h away, within the hold.
    let busy = workday_forecast(2);
    assert_eq!(run(&machines, &hosts, Some(&busy), 0, NOW).decisions, []);
    // Friday evening, the next need is Monday: the host goes.
    let friday = datetime!(2026-12-04 20:00 UTC);
    let hosts = [HostView {
        allocated_at: friday - age,
        min_until: friday - age + Duration::hours(24),
        ..host(Some(1), age)
    }];
    let machines = [idle(1, friday - Duration::hours(2))];
    assert_eq!(
        terminated(&run(&machines, &hosts, Some(&busy), 0, friday)),
        [mid(1)]
    );
}

#[test]
fn only_the_hosts_the_forecast_does_not_need_go() {
    // Three hosts past their minimum, the forecast needs two within the hold: one goes.
    let machines = [
        idle(1, NOW - Duration::hours(3)),
        idle(2, NOW - Duration::hours(2)),
        idle(3, NOW - Duration::hours(1)),
    ];
    let hosts = [
        host(Some(1), Duration::hours(30)),
        host(Some(2), Duration::hours(30)),
        host(Some(3), Duration::hours(30)),
    ];
    let forecast = workday_forecast(2);
    let gone = terminated(&run(&machines, &hosts, Some(&forecast), 0, NOW));
    // The hold keeps what the forecast needs (the spare is warmed again ahead of the rise);
    // the host idle the shortest goes.
    assert_eq!(gone, [mid(3)]);
    let forecast = workday_forecast(1);
    let gone = terminated(&run(&machines, &hosts, Some(&forecast), 0, NOW));
    assert_eq!(gone, [mid(2), mid(3)]);
}

#[test]
fn a_queued_job_waits_for_a_host_about_to_finish_scrubbing() {
    let busy = MachineView {
        phase: Phase::Busy,
        ..idle(1, NOW - Duration::minutes(5))
    };
    let scrubbing = |minutes: i64| HostView {
        scrubbing_until: Some(NOW + Duration::minutes(minutes)),
        ..host(None, Duration::hours(5))
    };
    let machines = [busy];
    // Scrubbed in 4 minutes: wait for it rather than commit to a new host for 24 h.
    let hosts = [host(Some(1), Duration::hours(5)), scrubbing(4)];
    assert_eq!(provisioned(&run(&machines, &hosts, None, 1, NOW)), 0);
    // Scrubbing for another 40 minutes: a new host is faster by half an hour.
    let hosts = [host(Some(1), Duration::hours(5)), scrubbing(40)];
    assert_eq!(provisioned(&run(&machines, &hosts, None, 1, NOW)), 1);
    // Two queued jobs and one host about to be free: one waits for it, one gets a new host.
    let hosts = [host(Some(1), Duration::hours(5)), scrubbing(4)];
    assert_eq!(provisioned(&run(&machines, &hosts, None, 2, NOW)), 1);
    // A free scrubbed host is used at once.
    let hosts = [
        host(Some(1), Duration::hours(5)),
        host(None, Duration::hours(5)),
    ];
    assert_eq!(provisioned(&run(&machines, &hosts, None, 1, NOW)), 1);
}

#[test]
fn the_forecast_warms_hosts_ahead_of_the_rise() {
    let forecast = workday_forecast(4);
    // Wednesday 06:30: the 08:00 rise is within the host prewarm (2 h): 4 + ceil(√4) = 6.
    let early = datetime!(2026-12-02 06:30 UTC);
    assert_eq!(provisioned(&run(&[], &[], Some(&forecast), 0, early)), 6);
    // Wednesday 03:00: nothing yet.
    let night = datetime!(2026-12-02 03:00 UTC);
    assert_eq!(provisioned(&run(&[], &[], Some(&forecast), 0, night)), 0);
}
