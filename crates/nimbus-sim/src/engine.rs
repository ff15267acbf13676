//! The event-driven engine: a virtual clock, a heap of timed events and the simulated providers
//! (Linux machines, EC2 Mac hosts and their instances), driven by one [`Policy`].
//!
//! Ordering is total and fixed: events pop by time, jobs submitted at an instant come before
//! anything else at that instant (in trace order), and other events at one instant come in the
//! order they were scheduled. That is the order `reference_sim.py` uses, so the peers replay
//! identically. The engine must stay causal: a policy is called with what happened up to `now`,
//! never with a job before its submission or a duration before the job ends.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use nimbus_autoscale::{
    Decision, Demand, DemandForecast, ForecastConfig, HostView, MachineView, Observation, Outlook,
    Phase, PoolView, QueuedJob, Tuning,
};
use nimbus_types::MachineId;
use nimbus_types::Pool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::metrics::{self, Report};
use crate::model::{self, Kind, Pools};
use crate::trace::Job;

/// How a run scales its pools.
// One value per run: the size of the Nimbus variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Policy {
    /// Always-on reused runners, `size[pool]` of them from `t = 0` (a Mac host each); nothing
    /// is ever released.
    Static { size: Vec<u32> },
    /// GARM/ARC/philips-labs style: keep idle + booting runners equal to the queued jobs the
    /// scaler has seen plus `warm[pool]`, ephemeral runners, idle ones go after the minimum
    /// running time. All-zero `warm` is the `reactive` policy. The scaler sees a job `delay_s`
    /// after its submission (a webhook delay).
    MinIdle { warm: Vec<u32>, delay_s: f64 },
    /// The daemon's policy: `nimbus_autoscale::plan` at every event and every `tick_s`.
    Nimbus(NimbusConfig),
}

#[derive(Clone, Debug, PartialEq)]
pub struct NimbusConfig {
    pub tuning: Tuning,
    /// Seconds of virtual time between passes that no event caused (the daemon's loop).
    pub tick_s: f64,
    /// Run each pool with the settings its entry leaves unset taken from
    /// [`model::recommended`] (reused runners) instead of the daemon's defaults.
    pub recommended_settings: bool,
    /// Give `plan` what a daemon knowing its hosts and its job history knows
    /// ([`nimbus_autoscale::Outlook`]): the Mac hosts, and each pool's demand forecast learned
    /// from `history` and the replayed past, relearned every hour.
    pub outlook: bool,
    /// Jobs of the week before the trace (its own `t = 0`, seven days before the trace's):
    /// learned from, never replayed.
    pub history: Vec<Job>,
    pub forecast: ForecastConfig,
}

impl Default for NimbusConfig {
    /// The bare policy: pool settings as given, no hosts, no forecast.
    fn default() -> Self {
        NimbusConfig {
            tuning: Tuning::default(),
            tick_s: 10.0,
            recommended_settings: false,
            outlook: false,
            history: Vec::new(),
            forecast: ForecastConfig::default(),
        }
    }
}

impl NimbusConfig {
    /// The policy `nimbusctl sim` runs: recommended pool settings, hosts and a forecast
    /// learned from `history` (the week before) and the week so far.
    pub fn economic(history: Vec<Job>) -> NimbusConfig {
        NimbusConfig {
            recommended_settings: true,
            outlook: true,
            history,
            ..NimbusConfig::default()
        }
    }
}

/// The week before the trace, in the trace's time.
const WEEK_S: f64 = 7.0 * model::DAY_S;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("job {job}: no pool has all of its labels {labels:?}")]
    Unrouted { job: String, labels: Vec<String> },
    #[error("{policy}: {jobs} jobs never finished (the pools cannot serve them)")]
    Unfinished { policy: String, jobs: usize },
    #[error("{policy}: expected {expected} pool sizes, got {got}")]
    PoolCount {
        policy: String,
        expected: usize,
        got: usize,
    },
}

/// One decision of the nimbus policy as applied, for causality checks.
#[derive(Clone, Debug, PartialEq)]
pub struct Decided {
    pub t: f64,
    pub pool: usize,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Provision { count: u32 },
    Terminate { machine: usize, why: &'static str },
    Fail { machine: usize, why: &'static str },
}

/// What a run produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub report: Report,
    /// When each job (trace order) started.
    pub starts: Vec<f64>,
    /// The nimbus policy's decisions in the order applied (empty for the peers).
    pub decisions: Vec<Decided>,
}

/// Replays `jobs` against `pools` under `policy`; `name` labels the report.
pub fn run(jobs: &[Job], pools: &Pools, name: &str, policy: &Policy) -> Result<Outcome, Error> {
    let n_pools = pools.pools().len();
    let sizes = match policy {
        Policy::Static { size } => Some(size.len()),
        Policy::MinIdle { warm, .. } => Some(warm.len()),
        Policy::Nimbus(_) => None,
    };
    if let Some(got) = sizes
        && got != n_pools
    {
        return Err(Error::PoolCount {
            policy: name.to_owned(),
            expected: n_pools,
            got,
        });
    }
    let job_pool = jobs
        .iter()
        .map(|job| {
            pools.route(&job.labels).ok_or_else(|| Error::Unrouted {
                job: job.id.clone(),
                labels: job.labels.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut sim = Sim::new(jobs, job_pool, pools, policy);
    sim.run();
    let unfinished = sim.jobs.len() - sim.done;
    if unfinished > 0 {
        return Err(Error::Unfinished {
            policy: name.to_owned(),
            jobs: unfinished,
        });
    }
    Ok(sim.finish(name))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Booting,
    Idle,
    Busy,
    Ended,
}

/// A Linux machine or a macOS instance.
struct Runner {
    pool: usize,
    /// When billing (Linux) or the instance (Mac) started.
    launched: f64,
    ended: Option<f64>,
    host: Option<usize>,
    state: State,
    jobs_run: u32,
    /// The job it runs.
    job: Option<usize>,
    /// When it was asked for, and since when it is in its state (the policy's view).
    created_at: OffsetDateTime,
    since: OffsetDateTime,
    ever_ready: bool,
}

/// An EC2 Mac dedicated host.
struct Host {
    pool: usize,
    alloc: f64,
    released: Option<f64>,
    instance: Option<usize>,
    scrub_until: f64,
}

#[derive(Default)]
struct PoolState {
    /// Waiting jobs, first come first served.
    queue: VecDeque<usize>,
    /// Waiting jobs the peer scaler has seen (after the webhook delay).
    visible: i64,
    /// Ready runners free for a job, in the order they became free.
    idle: Vec<usize>,
    booting: i64,
    /// Allocated, scrubbed hosts without an instance.
    free_hosts: Vec<usize>,
    /// Runners not ended, in creation order.
    live: Vec<usize>,
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    Visible(usize),
    Ready(usize),
    /// A job ends on its runner.
    Done(usize),
    Scrubbed(usize),
    HostCheck(usize),
    /// A peer's runner reaches its minimum running time.
    MinRun(usize),
    /// The nimbus loop's periodic pass number `k`, at `k * tick_s`.
    Tick(u64),
}

struct Entry {
    t: f64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed, so the max-heap pops the earliest event, then the first scheduled.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .t
            .total_cmp(&self.t)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

struct Sim<'a> {
    jobs: &'a [Job],
    job_pool: Vec<usize>,
    /// Job indices by submission time (stable: trace order on ties).
    order: Vec<usize>,
    next_submit: usize,
    start: Vec<Option<f64>>,
    visible: Vec<bool>,
    pools: &'a Pools,
    policy: &'a Policy,
    now: f64,
    heap: BinaryHeap<Entry>,
    seq: u64,
    state: Vec<PoolState>,
    runners: Vec<Runner>,
    hosts: Vec<Host>,
    done: usize,
    last_end: f64,
    horizon: f64,
    decisions: Vec<Decided>,
    views: Vec<MachineView>,
    /// Jobs that ended (their duration is known to the policy).
    finished: Vec<bool>,
    /// Per pool: the concurrency of every closed hour (the history's, then this week's), and
    /// the forecast with the hour it was learned.
    profiles: Vec<Vec<nimbus_autoscale::HourSample>>,
    forecasts: Vec<Option<(i64, DemandForecast)>>,
}

/// Beyond the accounting window plus this, a run whose jobs cannot finish is given up.
const STALL_S: f64 = 30.0 * model::DAY_S;

impl<'a> Sim<'a> {
    fn new(jobs: &'a [Job], job_pool: Vec<usize>, pools: &'a Pools, policy: &'a Policy) -> Self {
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by(|&a, &b| jobs[a].submitted_at.total_cmp(&jobs[b].submitted_at));
        let last = jobs.iter().map(|job| job.submitted_at).fold(0.0, f64::max);
        let horizon = (last / model::DAY_S + 1e-9).ceil() * model::DAY_S;
        Sim {
            jobs,
            job_pool,
            order,
            next_submit: 0,
            start: vec![None; jobs.len()],
            visible: vec![false; jobs.len()],
            pools,
            policy,
            now: 0.0,
            heap: BinaryHeap::new(),
            seq: 0,
            state: (0..pools.pools().len())
                .map(|_| PoolState::default())
                .collect(),
            runners: Vec::new(),
            hosts: Vec::new(),
            done: 0,
            last_end: 0.0,
            horizon,
            decisions: Vec::new(),
            views: Vec::new(),
            finished: vec![false; jobs.len()],
            profiles: history_profiles(pools, policy),
            forecasts: vec![None; pools.pools().len()],
        }
    }

    /// The pool `plan` is given.
    fn nimbus_pool(&self, pool: usize) -> &'a Pool {
        let sim_pool = &self.pools.pools()[pool];
        match self.policy {
            Policy::Nimbus(config) if config.recommended_settings => &sim_pool.recommended,
            _ => &sim_pool.pool,
        }
    }

    /// The pool's forecast, relearned at the first pass of every hour from the hours closed
    /// so far: the history's, learned once, and this week's, each measured when it closes
    /// from the jobs submitted by then (a job not ended counts up to then).
    fn forecast(&mut self, pool: usize, config: &ForecastConfig) {
        let hour = (self.now / 3600.0).floor() as i64;
        if self.forecasts[pool]
            .as_ref()
            .is_some_and(|(h, _)| *h == hour)
        {
            return;
        }
        let closed_from = self.profiles[pool]
            .last()
            .map_or(-WEEK_S, |s| {
                (s.hour - model::EPOCH).as_seconds_f64() + 3600.0
            })
            .max(0.0);
        let closed_to = hour as f64 * 3600.0;
        if closed_to > closed_from {
            let obs: Vec<Observation> = self.order[..self.next_submit]
                .iter()
                .filter(|&&job| self.job_pool[job] == pool)
                .filter_map(|&job| {
                    let j = &self.jobs[job];
                    let until = if self.finished[job] {
                        j.submitted_at + j.duration
                    } else {
                        self.now
                    };
                    (until > closed_from).then(|| Observation {
                        queued_at: model::instant(j.submitted_at),
                        until: model::instant(until),
                    })
                })
                .collect();
            let samples = nimbus_autoscale::forecast::hourly_profile(
                &obs,
                model::instant(closed_from),
                model::instant(closed_to),
                config.within_hour,
            );
            self.profiles[pool].extend(samples);
        }
        let forecast = DemandForecast::from_profile(&self.profiles[pool], config);
        self.forecasts[pool] = Some((hour, forecast));
    }

    fn kind(&self, pool: usize) -> Kind {
        self.pools.pools()[pool].kind
    }

    fn push(&mut self, t: f64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Entry {
            t,
            seq: self.seq,
            ev,
        });
    }

    fn run(&mut self) {
        if let Policy::Static { size } = self.policy {
            for (pool, &n) in size.iter().enumerate() {
                for _ in 0..n {
                    let host = (self.kind(pool) == Kind::Mac).then(|| self.new_host(pool, 0.0));
                    let runner = self.new_runner(pool, 0.0, host);
                    self.runners[runner].state = State::Idle;
                    self.runners[runner].ever_ready = true;
                    self.state[pool].idle.push(runner);
                }
            }
        }
        for pool in 0..self.state.len() {
            self.control(pool);
        }
        if let Policy::Nimbus(config) = self.policy {
            self.push(config.tick_s, Ev::Tick(1));
        }
        let n_jobs = self.jobs.len();
        loop {
            let submit = self.order.get(self.next_submit).copied().filter(|&job| {
                self.heap
                    .peek()
                    .is_none_or(|entry| self.jobs[job].submitted_at <= entry.t)
            });
            let (t, ev) = match submit {
                Some(job) => {
                    self.next_submit += 1;
                    (self.jobs[job].submitted_at, None)
                }
                None => match self.heap.pop() {
                    Some(entry) => (entry.t, Some(entry.ev)),
                    None => break,
                },
            };
            if self.done == n_jobs && t > self.horizon {
                break;
            }
            if t > self.horizon + STALL_S {
                break;
            }
            self.now = t;
            match (ev, submit) {
                (None, Some(job)) => self.submit(job),
                (Some(ev), _) => self.handle(ev),
                (None, None) => unreachable!("an event is either a submission or scheduled"),
            }
        }
    }

    fn submit(&mut self, job: usize) {
        let pool = self.job_pool[job];
        self.state[pool].queue.push_back(job);
        let delay = match self.policy {
            Policy::MinIdle { delay_s, .. } => *delay_s,
            _ => 0.0,
        };
        if delay <= 0.0 {
            self.visible[job] = true;
            self.state[pool].visible += 1;
        } else {
            self.push(self.now + delay, Ev::Visible(job));
        }
        self.dispatch(pool);
        self.control(pool);
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Visible(job) => {
                if self.start[job].is_none() {
                    let pool = self.job_pool[job];
                    self.visible[job] = true;
                    self.state[pool].visible += 1;
                    self.control(pool);
                }
            }
            Ev::Ready(runner) => {
                if self.runners[runner].state != State::Booting {
                    return; // cancelled while booting
                }
                let pool = self.runners[runner].pool;
                self.state[pool].booting -= 1;
                let r = &mut self.runners[runner];
                r.state = State::Idle;
                r.since = model::instant(self.now);
                r.ever_ready = true;
                self.state[pool].idle.push(runner);
                self.dispatch(pool);
                self.control(pool);
            }
            Ev::Done(runner) => {
                self.done += 1;
                self.last_end = self.now;
                let pool = self.runners[runner].pool;
                if let Some(job) = self.runners[runner].job.take() {
                    self.finished[job] = true;
                }
                let nimbus_pool = self.nimbus_pool(pool);
                let r = &mut self.runners[runner];
                r.jobs_run += 1;
                match self.policy {
                    Policy::Static { .. } => {
                        r.state = State::Idle;
                        self.state[pool].idle.push(runner);
                        self.dispatch(pool);
                    }
                    Policy::MinIdle { .. } => self.terminate(runner),
                    Policy::Nimbus(_) => {
                        r.state = State::Idle;
                        r.since = model::instant(self.now);
                        // An ephemeral runner deregisters after its job: it is idle until the
                        // policy recycles it, but takes no other job.
                        let settings = &nimbus_pool.settings;
                        let reusable = !settings.ephemeral
                            && settings.max_jobs.is_none_or(|max| r.jobs_run < max);
                        if reusable {
                            self.state[pool].idle.push(runner);
                            self.dispatch(pool);
                        }
                    }
                }
                self.control(pool);
            }
            Ev::Scrubbed(host) => {
                let pool = self.hosts[host].pool;
                self.state[pool].free_hosts.push(host);
                self.control(pool);
                self.release(host);
            }
            Ev::HostCheck(host) => {
                let pool = self.hosts[host].pool;
                if self.state[pool].free_hosts.contains(&host) {
                    self.release(host);
                }
            }
            Ev::MinRun(pool) => self.control(pool),
            Ev::Tick(k) => {
                for pool in 0..self.state.len() {
                    self.control(pool);
                }
                if let Policy::Nimbus(config) = self.policy {
                    self.push((k + 1) as f64 * config.tick_s, Ev::Tick(k + 1));
                }
            }
        }
    }

    /// Gives waiting jobs to free runners, first come first served.
    fn dispatch(&mut self, pool: usize) {
        while !self.state[pool].queue.is_empty() && !self.state[pool].idle.is_empty() {
            let runner = self.state[pool].idle.remove(0);
            let job = self.state[pool].queue.pop_front().expect("queue not empty");
            self.start[job] = Some(self.now);
            let r = &mut self.runners[runner];
            r.state = State::Busy;
            r.job = Some(job);
            r.since = model::instant(self.now);
            if self.visible[job] {
                self.state[pool].visible -= 1;
            }
            self.push(self.now + self.jobs[job].duration, Ev::Done(runner));
        }
    }

    fn control(&mut self, pool: usize) {
        match self.policy {
            Policy::Static { .. } => {}
            Policy::MinIdle { warm, .. } => self.reconcile(pool, i64::from(warm[pool])),
            Policy::Nimbus(config) => self.plan(pool, config),
        }
    }

    /// The peers: idle + booting == seen queued jobs + warm target.
    fn reconcile(&mut self, pool: usize, warm: i64) {
        let state = &self.state[pool];
        let mut gap = state.visible + warm - state.idle.len() as i64 - state.booting;
        for _ in 0..gap.max(0) {
            self.launch(pool);
        }
        if gap >= 0 {
            return;
        }
        let min_run = self.kind(pool).min_run_s();
        // Oldest first, and only past the minimum running time.
        for runner in self.state[pool].idle.clone() {
            if gap >= 0 {
                break;
            }
            if self.now - self.runners[runner].launched >= min_run {
                self.terminate(runner);
                gap += 1;
            }
        }
    }

    /// The daemon's policy, through the daemon's own function.
    fn plan(&mut self, pool: usize, config: &NimbusConfig) {
        let tuning: &Tuning = &config.tuning;
        let now = model::instant(self.now);
        let hosts: Option<Vec<HostView>> =
            (config.outlook && self.kind(pool) == Kind::Mac).then(|| {
                self.hosts
                    .iter()
                    .filter(|h| h.pool == pool && h.released.is_none())
                    .map(|h| HostView {
                        allocated_at: model::instant(h.alloc),
                        min_until: model::instant(h.alloc + model::MAC_HOST_MIN_S),
                        instance: h.instance.map(machine_id),
                        scrubbing_until: (h.scrub_until > self.now)
                            .then(|| model::instant(h.scrub_until)),
                    })
                    .collect()
            });
        if config.outlook {
            self.forecast(pool, &config.forecast);
        }
        let mut views = std::mem::take(&mut self.views);
        views.clear();
        views.extend(self.state[pool].live.iter().map(|&runner| {
            let r = &self.runners[runner];
            MachineView {
                id: machine_id(runner),
                phase: match r.state {
                    // The provider accepted it at once: it costs from the request on.
                    State::Booting => Phase::Booting { committed: true },
                    State::Idle => Phase::Idle,
                    State::Busy => Phase::Busy,
                    State::Ended => Phase::Stopping,
                },
                created_at: r.created_at,
                since: r.since,
                jobs_run: r.jobs_run,
                runner_version: None,
                runner_down_since: None,
                ever_ready: r.ever_ready,
            }
        }));
        let demand = Demand {
            queued: self.state[pool]
                .queue
                .iter()
                .map(|&job| QueuedJob {
                    job_id: job as u64,
                    queued_at: model::instant(self.jobs[job].submitted_at),
                })
                .collect(),
        };
        let view = PoolView {
            pool: self.nimbus_pool(pool),
            machines: &views,
            spent_this_month: 0.0,
            hourly_rate: None,
            tenant_budget_left: None,
            runner_version: None,
            tuning,
        };
        let outlook = Outlook {
            hosts: hosts.as_deref(),
            forecast: self.forecasts[pool].as_ref().map(|(_, f)| f),
        };
        let plan = nimbus_autoscale::plan_with(&view, &outlook, &demand, now);
        self.views = views;
        for decision in plan.decisions {
            let action = match decision {
                Decision::Provision { count, .. } => {
                    for _ in 0..count {
                        self.launch(pool);
                    }
                    Action::Provision { count }
                }
                Decision::Terminate { machine, why } => {
                    let runner = runner_idx(machine);
                    // The fleet deregisters, then checks: a runner that took a job keeps it.
                    if self.runners[runner].state == State::Busy {
                        continue;
                    }
                    self.terminate(runner);
                    Action::Terminate {
                        machine: runner,
                        why: why.as_str(),
                    }
                }
                Decision::Fail { machine, why } => {
                    let runner = runner_idx(machine);
                    self.terminate(runner);
                    Action::Fail {
                        machine: runner,
                        why: why.as_str(),
                    }
                }
            };
            self.decisions.push(Decided {
                t: self.now,
                pool,
                action,
            });
        }
    }

    fn new_runner(&mut self, pool: usize, launched: f64, host: Option<usize>) -> usize {
        let idx = self.runners.len();
        let now = model::instant(self.now);
        self.runners.push(Runner {
            pool,
            launched,
            ended: None,
            host,
            state: State::Booting,
            jobs_run: 0,
            job: None,
            created_at: now,
            since: now,
            ever_ready: false,
        });
        if let Some(host) = host {
            self.hosts[host].instance = Some(idx);
        }
        self.state[pool].live.push(idx);
        idx
    }

    fn new_host(&mut self, pool: usize, alloc: f64) -> usize {
        self.hosts.push(Host {
            pool,
            alloc,
            released: None,
            instance: None,
            scrub_until: 0.0,
        });
        self.hosts.len() - 1
    }

    /// Starts a runner: a Linux machine, or a Mac instance on the lowest free host (a new host
    /// when none is free).
    fn launch(&mut self, pool: usize) {
        let kind = self.kind(pool);
        let (runner, ready) = match kind {
            Kind::Linux => {
                let runner = self.new_runner(pool, self.now, None);
                (runner, self.now + model::LINUX_BOOT_S + model::REGISTER_S)
            }
            Kind::Mac => {
                let free = &mut self.state[pool].free_hosts;
                let lowest = free
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, host)| **host)
                    .map(|(pos, _)| pos);
                let (host, t0) = match lowest {
                    Some(pos) => (free.remove(pos), self.now),
                    None => {
                        let host = self.new_host(pool, self.now);
                        self.push(self.now + model::MAC_HOST_MIN_S, Ev::HostCheck(host));
                        (host, self.now + model::MAC_HOST_ALLOC_S)
                    }
                };
                let runner = self.new_runner(pool, t0, Some(host));
                (runner, t0 + model::MAC_BOOT_S + model::REGISTER_S)
            }
        };
        self.state[pool].booting += 1;
        self.push(ready, Ev::Ready(runner));
        if matches!(self.policy, Policy::MinIdle { .. }) {
            let at = self.runners[runner].launched + kind.min_run_s();
            self.push(at, Ev::MinRun(pool));
        }
    }

    fn terminate(&mut self, runner: usize) {
        let r = &mut self.runners[runner];
        let pool = r.pool;
        let was = r.state;
        r.ended = Some(self.now.max(r.launched));
        r.state = State::Ended;
        let host = r.host;
        let state = &mut self.state[pool];
        if was == State::Booting {
            state.booting -= 1;
        }
        if let Some(pos) = state.idle.iter().position(|&x| x == runner) {
            state.idle.remove(pos);
        }
        if let Some(pos) = state.live.iter().position(|&x| x == runner) {
            state.live.remove(pos);
        }
        if let Some(host) = host {
            // The host stays allocated but is scrubbed before it takes another instance.
            let until = self.now + model::MAC_SCRUB_S;
            self.hosts[host].instance = None;
            self.hosts[host].scrub_until = until;
            self.push(until, Ev::Scrubbed(host));
        }
    }

    /// Releases a Mac host when EC2 allows it: past the minimum, empty and scrubbed.
    fn release(&mut self, host: usize) {
        if matches!(self.policy, Policy::Static { .. }) {
            return;
        }
        let h = &self.hosts[host];
        if h.released.is_none()
            && h.instance.is_none()
            && self.now >= h.scrub_until
            && self.now >= h.alloc + model::MAC_HOST_MIN_S
        {
            let pool = h.pool;
            self.hosts[host].released = Some(self.now);
            self.state[pool].free_hosts.retain(|&x| x != host);
        }
    }

    /// Shuts down what still runs at the end of the window and accounts.
    fn finish(mut self, name: &str) -> Outcome {
        let end = self.horizon.max(self.last_end);
        let runners = self
            .runners
            .iter()
            .map(|r| metrics::Lifetime {
                pool: r.pool,
                from: r.launched,
                to: r.ended.unwrap_or(end.max(r.launched)),
            })
            .collect::<Vec<_>>();
        let hosts = self
            .hosts
            .iter()
            .map(|h| metrics::Lifetime {
                pool: h.pool,
                from: h.alloc,
                to: h.released.unwrap_or(end),
            })
            .collect::<Vec<_>>();
        let starts: Vec<f64> = self
            .start
            .iter()
            .map(|s| s.expect("every job started"))
            .collect();
        let waits = self
            .jobs
            .iter()
            .zip(&starts)
            .zip(&self.job_pool)
            .map(|((job, start), &pool)| (pool, start - job.submitted_at))
            .collect::<Vec<_>>();
        let report = metrics::report(name, self.pools, &waits, &runners, &hosts, end);
        Outcome {
            report,
            starts,
            decisions: std::mem::take(&mut self.decisions),
        }
    }
}

/// Per pool, the hourly concurrency of the history, in the trace's time (a week earlier).
fn history_profiles(pools: &Pools, policy: &Policy) -> Vec<Vec<nimbus_autoscale::HourSample>> {
    let mut obs = vec![Vec::new(); pools.pools().len()];
    let Policy::Nimbus(config) = policy else {
        return obs.into_iter().map(|_| Vec::new()).collect();
    };
    if !config.outlook || config.history.is_empty() {
        return obs.into_iter().map(|_| Vec::new()).collect();
    }
    for job in &config.history {
        if let Some(pool) = pools.route(&job.labels) {
            let queued = job.submitted_at - WEEK_S;
            obs[pool].push(Observation {
                queued_at: model::instant(queued),
                until: model::instant(queued + job.duration),
            });
        }
    }
    obs.iter()
        .map(|obs| {
            nimbus_autoscale::forecast::hourly_profile(
                obs,
                model::instant(-WEEK_S),
                model::instant(0.0),
                config.forecast.within_hour,
            )
        })
        .collect()
}

fn machine_id(runner: usize) -> MachineId {
    MachineId::from_uuid(Uuid::from_u128(runner as u128 + 1))
}

fn runner_idx(machine: MachineId) -> usize {
    (machine.as_uuid().as_u128() - 1) as usize
}
