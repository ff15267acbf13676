//! The autoscaler loop: the thin, effectful shell around `nimbus_autoscale::plan`.
//!
//! Each pass, per tenant with pools, it reads what the policy needs — the pools, the demand
//! book, the pool machines, the forge's runner list (at most every `runner_health_interval`) —
//! brings machine usage up to date (a runner that started a job is `running`, one whose job
//! ended is `ready` again with one more job run), asks `plan()` what to do, and does it through
//! the fleet: provisions go through `provision_pool_machine`, removals through
//! `terminate_machine` (deregister first, re-check busy: a runner that picked up a job
//! meanwhile keeps its machine), health failures through `fail_machine`.
//!
//! It runs on a timer and whenever a webhook records new demand ([`Fleet::demand_changed`]).
//! Beyond the pool's machines, the policy gets an [`Outlook`] ([`nimbus_autoscale::plan_with`]):
//! each pool's demand per hour of the week, learned once an hour from the store's job history
//! (finished jobs kept for [`AutoscaleConfig::history_retention`], so what was learned survives
//! a restart), and for pools whose machines run on dedicated hosts (EC2 Mac) the provider's
//! hosts ([`nimbus_provider::Provider::dedicated_hosts`]), read at most every
//! [`AutoscaleConfig::host_refresh`] and after each change the pool made.
//!
//! Everything it needs survives a restart: demand is in the store, machines carry their pool,
//! and the backoff is derived from the machines' history. Only the last decisions shown in a
//! pool's status, the runners' "down since" times and caches of the forecast and the hosts live
//! in memory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nimbus_autoscale::{
    Decision, DemandForecast, HostView, MachineView, Observation, Outlook, Phase, PoolView,
};
pub use nimbus_autoscale::{ForecastConfig, Tuning};
use nimbus_forge::RunnerStatus;
use nimbus_provider::DedicatedHost;
use nimbus_store::PoolMachine;
use nimbus_types::api::{DecisionRecord, PoolPlan, PoolStatus};
use nimbus_types::demand::{JobRecord, JobStatus};
use nimbus_types::event::{self, Event};
use nimbus_types::{MachineId, MachineState, Pool, PoolId, TenantId};
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::lifecycle::Scope;
use crate::{Fleet, Result, runners};

/// How many decisions a pool's status shows.
const LAST_DECISIONS: usize = 20;

/// Timings of the autoscaler.
#[derive(Clone, Debug)]
pub struct AutoscaleConfig {
    /// How often every pool is planned when nothing wakes the loop earlier.
    pub interval: Duration,
    /// How often each tenant's runner list is read from the forge for health checks.
    pub runner_health_interval: Duration,
    pub tuning: Tuning,
    /// Learn each pool's demand per hour of the week from the job history and keep capacity
    /// ahead of it; `false` plans from the present only.
    pub learn_demand: bool,
    pub forecast: ForecastConfig,
    /// How long finished jobs are kept to learn from (and to price per job). The forecast
    /// reads up to `forecast.max_days` days of each kind (workday, weekend), so five weeks
    /// covers ten weekend days.
    pub history_retention: Duration,
    /// How often a pool's dedicated hosts are read from its provider when the pool changed
    /// nothing in between.
    pub host_refresh: Duration,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        AutoscaleConfig {
            interval: Duration::from_secs(10),
            runner_health_interval: Duration::from_secs(60),
            tuning: Tuning::default(),
            learn_demand: true,
            forecast: ForecastConfig::default(),
            history_retention: Duration::from_secs(35 * 24 * 3600),
            host_refresh: Duration::from_secs(60),
        }
    }
}

/// The loop's memory.
#[derive(Default)]
pub(crate) struct State {
    wake: Notify,
    /// Tenants whose demand changed since their last pass.
    dirty: Mutex<HashSet<TenantId>>,
    pools: Mutex<HashMap<PoolId, PoolMemory>>,
    /// When each machine's runner was first seen offline or missing at the forge.
    runner_down: Mutex<HashMap<MachineId, OffsetDateTime>>,
    health_read: Mutex<HashMap<TenantId, Instant>>,
    /// Each tenant's pool machines and jobs as last read, so a pass woken by a webhook reads
    /// only what changed since (the timer's passes read everything again).
    rows: Mutex<HashMap<TenantId, Rows>>,
    /// Tenants whose budget held back scale-up in their last pass (for a single event).
    budget_held: Mutex<HashSet<TenantId>>,
    /// Each tenant's learned demand per pool, with the hour it was learned in.
    forecasts: Mutex<HashMap<TenantId, Learned>>,
    /// Each pool's dedicated hosts as last read.
    hosts: Mutex<HashMap<PoolId, HostsRead>>,
    /// When the job history was last pruned.
    history_pruned: Mutex<Option<Instant>>,
}

/// A pool's dedicated hosts and when they were read (`None`: its machines use none).
type HostsRead = (Instant, Option<Vec<DedicatedHost>>);

/// A tenant's forecasts, learned at the start of `hour` from the pools `pools` (ids and
/// labels: a pool added or relabelled is learned again).
struct Learned {
    hour: OffsetDateTime,
    pools: Vec<(PoolId, Vec<String>)>,
    by_pool: HashMap<PoolId, DemandForecast>,
}

/// Rows read from the store for one tenant.
struct Rows {
    machines: HashMap<MachineId, PoolMachine>,
    jobs: HashMap<u64, JobRecord>,
    /// The wall-clock time the last read started.
    read_at: OffsetDateTime,
}

/// The loop's timer passes read every row again once in this many ticks (30 s with the
/// default interval), and only what changed in between.
const FULL_READ_EVERY: u32 = 3;

/// How far before the last read a delta read starts: covers writes that were stamped before
/// the read but committed after it (a job is stamped when its delivery arrives, a machine when
/// it changes state; both commit within milliseconds on a healthy store). A write that took
/// longer is still seen by the next full read, `FULL_READ_EVERY` intervals later at most.
/// Wider overlaps re-read more rows on every wake-up: at 200 deliveries/s, 1 s of overlap
/// costs about 4 ms per pass.
const DELTA_OVERLAP: time::Duration = time::Duration::milliseconds(300);

#[derive(Default)]
struct PoolMemory {
    decisions: VecDeque<DecisionRecord>,
    backoff_until: Option<OffsetDateTime>,
    budget_exhausted: bool,
}

/// What one pass did for one pool.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolOutcome {
    pub pool_id: PoolId,
    pub pool: String,
    pub decisions: Vec<Decision>,
    pub status: PoolStatus,
}

/// What the policy needs of one tenant, read once per pass.
struct TenantView {
    pools: Vec<Pool>,
    /// Live and recently failed machines per pool.
    machines: HashMap<PoolId, Vec<PoolMachine>>,
    /// What one machine of each pool costs per hour (its `hourly_cost`, else the price table).
    rates: HashMap<PoolId, f64>,
    /// The tenant's monthly budget in USD.
    budget: Option<f64>,
    /// The tenant's forge type, read once per pass: it decides the pinned runner version.
    forge_type: Option<nimbus_types::ForgeType>,
    spend: HashMap<PoolId, f64>,
    jobs: Vec<JobRecord>,
    /// Each pool's learned demand (none for pools with nothing learned or when learning is off).
    forecasts: HashMap<PoolId, DemandForecast>,
    /// Each pool's dedicated hosts, for pools whose machines run on them.
    hosts: HashMap<PoolId, Vec<HostView>>,
}

impl Fleet {
    /// Runs the autoscaler until shutdown: every pool every `interval`, and a tenant's pools
    /// at once when its demand changes.
    pub fn start_autoscaler(&self) {
        let fleet = self.clone();
        tokio::spawn(async move { fleet.autoscale_loop().await });
    }

    /// Tells the autoscaler that a tenant's demand changed (a webhook recorded a job), so its
    /// pools are planned now rather than at the next tick.
    pub fn demand_changed(&self, tenant_id: TenantId) {
        let state = &self.inner.autoscale;
        state.dirty.lock().expect("dirty lock").insert(tenant_id);
        state.wake.notify_one();
    }

    async fn autoscale_loop(&self) {
        let interval = self.inner.config.autoscale.interval;
        let mut next_full = tokio::time::Instant::now();
        let mut ticks = 0u32;
        loop {
            let now = tokio::time::Instant::now();
            if now >= next_full {
                self.inner
                    .autoscale
                    .dirty
                    .lock()
                    .expect("dirty lock")
                    .clear();
                // Every pool every tick; the rows are read whole every FULL_READ_EVERY ticks
                // and as a delta in between.
                let incremental = !ticks.is_multiple_of(FULL_READ_EVERY);
                ticks = ticks.wrapping_add(1);
                if let Err(err) = self.autoscale_all(nimbus_types::now(), incremental).await {
                    tracing::warn!(error = %err, "autoscaler pass failed");
                }
                next_full = tokio::time::Instant::now() + interval;
            } else {
                let dirty: Vec<TenantId> = self
                    .inner
                    .autoscale
                    .dirty
                    .lock()
                    .expect("dirty lock")
                    .drain()
                    .collect();
                for tenant_id in dirty {
                    let pass = self.autoscale_pass(tenant_id, nimbus_types::now(), true);
                    if let Err(err) = pass.await {
                        tracing::warn!(tenant.id = %tenant_id, error = %err, "autoscaler pass failed");
                    }
                }
            }
            tokio::select! {
                () = self.inner.autoscale.wake.notified() => {}
                () = tokio::time::sleep_until(next_full) => {}
                () = self.inner.shutdown.cancelled() => return,
            }
        }
    }

    /// One pass over every tenant's pools at `now` (the loop passes the wall clock; tests pass
    /// their own to move through schedules).
    pub async fn autoscale_once(&self, now: OffsetDateTime) -> Result<Vec<PoolOutcome>> {
        self.autoscale_all(now, false).await
    }

    async fn autoscale_all(
        &self,
        now: OffsetDateTime,
        incremental: bool,
    ) -> Result<Vec<PoolOutcome>> {
        let pools = self.inner.store.list_pools(None).await?;
        let mut tenants: Vec<TenantId> = pools.iter().map(|pool| pool.tenant_id).collect();
        tenants.dedup();
        let mut outcomes = Vec::new();
        for tenant_id in tenants {
            match self.autoscale_pass(tenant_id, now, incremental).await {
                Ok(mut tenant_outcomes) => outcomes.append(&mut tenant_outcomes),
                Err(err) => {
                    tracing::warn!(tenant.id = %tenant_id, error = %err, "autoscaler pass failed")
                }
            }
        }
        Ok(outcomes)
    }

    /// One pass over one tenant's pools.
    #[tracing::instrument(skip(self), fields(tenant.id = %tenant_id))]
    pub async fn autoscale_tenant(
        &self,
        tenant_id: TenantId,
        now: OffsetDateTime,
    ) -> Result<Vec<PoolOutcome>> {
        self.autoscale_pass(tenant_id, now, false).await
    }

    /// A pass; `incremental` reads only the rows that changed since the last one.
    async fn autoscale_pass(
        &self,
        tenant_id: TenantId,
        now: OffsetDateTime,
        incremental: bool,
    ) -> Result<Vec<PoolOutcome>> {
        if self.inner.shutdown.is_cancelled() {
            return Ok(Vec::new());
        }
        let mut view = self.tenant_view(tenant_id, now, incremental).await?;
        if view.pools.is_empty() {
            return Ok(Vec::new());
        }
        self.sync_usage(&mut view, now).await;
        self.check_runner_health(tenant_id, &view, now).await;
        let tenant = self.inner.store.get_tenant(tenant_id).await?;
        let mut outcomes = Vec::with_capacity(view.pools.len());
        let mut tenant_held = false;
        for (pool, plan) in view.pools.iter().zip(self.plan_tenant(&view, now)) {
            let mut status = plan.status;
            let decisions = plan.decisions;
            if plan.tenant_budget_exhausted {
                status.budget_exhausted = true;
                tenant_held = true;
                self.remember(
                    pool.id,
                    record(
                        now,
                        "hold",
                        None,
                        None,
                        "the tenant's monthly budget is reached".to_owned(),
                    ),
                );
            }
            self.apply(&tenant, pool, &decisions, &status, now).await;
            if !decisions.is_empty() {
                self.hosts_changed(pool.id);
            }
            status.last_decisions = self.last_decisions(pool.id);
            self.telemetry()
                .set_pool_status(&tenant.name, &pool.name, &status);
            outcomes.push(PoolOutcome {
                pool_id: pool.id,
                pool: pool.name.clone(),
                decisions,
                status,
            });
        }
        self.note_tenant_budget(&tenant, view.budget, tenant_held);
        Ok(outcomes)
    }

    /// The pool's status now: a dry run of the policy (nothing is applied), with the decisions
    /// the loop took last.
    pub async fn pool_status(&self, pool: &Pool) -> Result<PoolStatus> {
        Ok(self.pool_plan(pool).await?.status)
    }

    /// What the autoscaler would do for the pool now, and why, without doing it: the policy's
    /// decisions on the pool as it is (a dry run; nothing changes, not even usage records).
    pub async fn pool_plan(&self, pool: &Pool) -> Result<PoolPlan> {
        let now = nimbus_types::now();
        let view = self.tenant_view(pool.tenant_id, now, false).await?;
        // The pools of the tenant in the loop's order: those before this one take their share
        // of the tenant's budget first.
        let plan = view
            .pools
            .iter()
            .zip(self.plan_tenant(&view, now))
            .find(|(planned, _)| planned.id == pool.id)
            .map(|(_, plan)| plan)
            .ok_or(crate::Error::NotFound("pool"))?;
        let mut status = plan.status;
        status.budget_exhausted |= plan.tenant_budget_exhausted;
        status.last_decisions = self.last_decisions(pool.id);
        let decisions = plan
            .decisions
            .iter()
            .map(|decision| describe(decision, now))
            .collect();
        Ok(PoolPlan {
            at: now,
            decisions,
            status,
        })
    }

    /// Asks the policy about every pool of `view`, in order. The tenant's budget is what is
    /// left after this month's spend and a lookahead of every live machine of the tenant;
    /// each pool's scale-up takes from it before the next pool is planned.
    fn plan_tenant(&self, view: &TenantView, now: OffsetDateTime) -> Vec<nimbus_autoscale::Plan> {
        let demand = nimbus_autoscale::assign(&view.pools, &view.jobs);
        let lookahead_hours = self
            .inner
            .config
            .autoscale
            .tuning
            .budget_lookahead
            .as_secs_f64()
            / 3600.0;
        let mut tenant_left = view.budget.map(|budget| {
            let spent: f64 = view.spend.values().sum();
            let committed: f64 = view
                .machines
                .iter()
                .map(|(pool_id, machines)| {
                    let live = machines
                        .iter()
                        .filter(|m| m.state != MachineState::Failed)
                        .count();
                    view.rates.get(pool_id).copied().unwrap_or(0.0) * lookahead_hours * live as f64
                })
                .sum();
            budget - spent - committed
        });
        view.pools
            .iter()
            .map(|pool| {
                let plan = self.plan_pool(view, &demand, pool, tenant_left, now);
                if let Some(left) = tenant_left.as_mut() {
                    let per_machine =
                        view.rates.get(&pool.id).copied().unwrap_or(0.0) * lookahead_hours;
                    let started: u32 = plan
                        .decisions
                        .iter()
                        .map(|decision| match decision {
                            Decision::Provision { count, .. } => *count,
                            _ => 0,
                        })
                        .sum();
                    *left -= f64::from(started) * per_machine;
                }
                plan
            })
            .collect()
    }

    /// Asks the policy about one pool of `view`.
    fn plan_pool(
        &self,
        view: &TenantView,
        demand: &HashMap<PoolId, nimbus_autoscale::Demand>,
        pool: &Pool,
        tenant_budget_left: Option<f64>,
        now: OffsetDateTime,
    ) -> nimbus_autoscale::Plan {
        let views = self.machine_views(view.machines.get(&pool.id));
        let runner_version = view.forge_type.and_then(|forge_type| {
            self.runner_version_of(forge_type, pool.settings.os, pool.settings.arch)
        });
        let outlook = Outlook {
            hosts: view.hosts.get(&pool.id).map(Vec::as_slice),
            forecast: view.forecasts.get(&pool.id),
        };
        nimbus_autoscale::plan_with(
            &PoolView {
                pool,
                machines: &views,
                spent_this_month: view.spend.get(&pool.id).copied().unwrap_or(0.0),
                hourly_rate: view.rates.get(&pool.id).copied().filter(|rate| *rate > 0.0),
                tenant_budget_left,
                runner_version: runner_version.as_deref(),
                tuning: &self.inner.config.autoscale.tuning,
            },
            &outlook,
            demand
                .get(&pool.id)
                .unwrap_or(&nimbus_autoscale::Demand::default()),
            now,
        )
    }

    /// Forgets a deleted pool's memory and gauges.
    pub fn forget_pool(&self, tenant_name: &str, pool: &Pool) {
        self.inner
            .autoscale
            .pools
            .lock()
            .expect("pools lock")
            .remove(&pool.id);
        self.hosts_changed(pool.id);
        self.telemetry().remove_pool_status(tenant_name, &pool.name);
    }

    /// Reads what the policy needs of a tenant. With `incremental`, machines and jobs are read
    /// as a delta on the rows cached by the last read (a pass woken by a webhook); otherwise
    /// everything is read again and the cache replaced (the timer's passes, so nothing a delta
    /// could miss — a pruned job, a machine of a deleted pool — lingers past one interval).
    async fn read_rows(
        &self,
        tenant_id: TenantId,
        now: OffsetDateTime,
        incremental: bool,
    ) -> Result<(Vec<PoolMachine>, Vec<JobRecord>)> {
        let store = &self.inner.store;
        let read_at = nimbus_types::now();
        let since = if incremental {
            self.inner
                .autoscale
                .rows
                .lock()
                .expect("rows lock")
                .get(&tenant_id)
                .map(|rows| rows.read_at - DELTA_OVERLAP)
        } else {
            None
        };
        let month_start = nimbus_autoscale::month_start(now);
        let rows = match since {
            Some(since) => {
                let machines = store.list_pool_machines_changed(tenant_id, since).await?;
                let jobs = store.list_jobs_changed(tenant_id, since).await?;
                let mut cache = self.inner.autoscale.rows.lock().expect("rows lock");
                let rows = cache.entry(tenant_id).or_insert_with(|| Rows {
                    machines: HashMap::new(),
                    jobs: HashMap::new(),
                    read_at,
                });
                for machine in machines {
                    rows.machines.insert(machine.id, machine);
                }
                for job in jobs {
                    rows.jobs.insert(job.job.job_id, job);
                }
                rows.read_at = read_at;
                (
                    rows.machines.values().cloned().collect::<Vec<_>>(),
                    rows.jobs.values().cloned().collect::<Vec<_>>(),
                )
            }
            None => {
                let machines = store.list_pool_machines(tenant_id, month_start).await?;
                let jobs = store.list_jobs(tenant_id).await?;
                self.inner.autoscale.rows.lock().expect("rows lock").insert(
                    tenant_id,
                    Rows {
                        machines: machines.iter().map(|m| (m.id, m.clone())).collect(),
                        jobs: jobs.iter().map(|j| (j.job.job_id, j.clone())).collect(),
                        read_at,
                    },
                );
                (machines, jobs)
            }
        };
        let (mut machines, mut jobs) = rows;
        // The same order a full read gives, so plans do not depend on how rows were read.
        machines.retain(|m| m.state != MachineState::Terminated || m.updated_at >= month_start);
        machines.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        jobs.sort_by_key(|job| job.job.job_id);
        Ok((machines, jobs))
    }

    async fn tenant_view(
        &self,
        tenant_id: TenantId,
        now: OffsetDateTime,
        incremental: bool,
    ) -> Result<TenantView> {
        let pools = self.inner.store.list_pools(Some(tenant_id)).await?;
        if pools.is_empty() {
            self.inner
                .autoscale
                .rows
                .lock()
                .expect("rows lock")
                .remove(&tenant_id);
            return Ok(TenantView {
                pools,
                machines: HashMap::new(),
                rates: HashMap::new(),
                budget: None,
                forge_type: None,
                spend: HashMap::new(),
                jobs: Vec::new(),
                forecasts: HashMap::new(),
                hosts: HashMap::new(),
            });
        }
        let (records, jobs) = self.read_rows(tenant_id, now, incremental).await?;
        let memory = self.inner.config.autoscale.tuning.failure_memory;
        let mut machines: HashMap<PoolId, Vec<PoolMachine>> = HashMap::new();
        let mut lifetimes: HashMap<PoolId, Vec<(OffsetDateTime, Option<OffsetDateTime>)>> =
            HashMap::new();
        for machine in records {
            let pool_id = machine.pool_id;
            let ended = match machine.state {
                MachineState::Terminated | MachineState::Failed => Some(machine.updated_at),
                _ => None,
            };
            lifetimes
                .entry(pool_id)
                .or_default()
                .push((machine.created_at, ended));
            let forgotten = machine.state == MachineState::Failed
                && (now - machine.updated_at).unsigned_abs() > memory;
            if machine.state != MachineState::Terminated && !forgotten {
                machines.entry(pool_id).or_default().push(machine);
            }
        }
        let provider_types: HashMap<nimbus_types::ProviderId, nimbus_types::ProviderType> = self
            .inner
            .store
            .list_tenant_providers(tenant_id)
            .await?
            .into_iter()
            .map(|provider| (provider.id, provider.provider_type))
            .collect();
        let rates: HashMap<PoolId, f64> = pools
            .iter()
            .map(|pool| {
                let rate = provider_types
                    .get(&pool.provider_id)
                    .and_then(|kind| {
                        self.price(
                            pool.settings.hourly_cost,
                            *kind,
                            pool.settings.instance_type.as_deref(),
                        )
                    })
                    .map_or(0.0, |price| price.usd_per_hour);
                (pool.id, rate)
            })
            .collect();
        let budget = self.inner.store.get_tenant_budget(tenant_id).await?;
        // A forge configuration that cannot be read pins no version; it does not stop scaling.
        let forge_type = self
            .inner
            .store
            .get_tenant_forge_config(tenant_id)
            .await
            .ok()
            .flatten()
            .map(|config| config.forge_type);
        let spend = pools
            .iter()
            .map(|pool| {
                let cost = rates.get(&pool.id).copied().unwrap_or(0.0);
                let spent = lifetimes
                    .remove(&pool.id)
                    .map(|lives| nimbus_autoscale::month_spend(lives, cost, now))
                    .unwrap_or(0.0);
                (pool.id, spent)
            })
            .collect();
        let forecasts = self.forecasts(tenant_id, &pools, &jobs, now).await;
        let hosts = self.pool_hosts(tenant_id, &pools, now).await;
        Ok(TenantView {
            pools,
            machines,
            rates,
            budget,
            forge_type,
            spend,
            jobs,
            forecasts,
            hosts,
        })
    }

    /// Each pool's demand forecast, learned again at the first pass of every hour (and when
    /// the tenant's pools change) from the job history and the jobs still open. A history that
    /// cannot be read leaves the last forecast in place: the pool still scales on its demand.
    async fn forecasts(
        &self,
        tenant_id: TenantId,
        pools: &[Pool],
        jobs: &[JobRecord],
        now: OffsetDateTime,
    ) -> HashMap<PoolId, DemandForecast> {
        let config = &self.inner.config.autoscale;
        if !config.learn_demand {
            return HashMap::new();
        }
        let hour = hour_start(now);
        let pool_keys: Vec<(PoolId, Vec<String>)> = pools
            .iter()
            .map(|pool| (pool.id, pool.settings.labels.clone()))
            .collect();
        {
            let learned = self
                .inner
                .autoscale
                .forecasts
                .lock()
                .expect("forecast lock");
            if let Some(learned) = learned.get(&tenant_id)
                && learned.hour == hour
                && learned.pools == pool_keys
            {
                return learned.by_pool.clone();
            }
        }
        self.prune_history(now).await;
        let retention =
            time::Duration::try_from(config.history_retention).unwrap_or(time::Duration::days(35));
        let history = match self
            .inner
            .store
            .list_job_history(tenant_id, now - retention)
            .await
        {
            Ok(history) => history,
            Err(err) => {
                tracing::warn!(tenant.id = %tenant_id, error = %err, "job history not read; the forecast is not relearned");
                return self
                    .inner
                    .autoscale
                    .forecasts
                    .lock()
                    .expect("forecast lock")
                    .get(&tenant_id)
                    .map(|learned| learned.by_pool.clone())
                    .unwrap_or_default();
            }
        };
        let by_pool = learn_forecasts(pools, &history, jobs, now, &config.forecast);
        self.inner
            .autoscale
            .forecasts
            .lock()
            .expect("forecast lock")
            .insert(
                tenant_id,
                Learned {
                    hour,
                    pools: pool_keys,
                    by_pool: by_pool.clone(),
                },
            );
        by_pool
    }

    /// Forgets finished jobs older than the history's retention, at most once an hour.
    async fn prune_history(&self, now: OffsetDateTime) {
        {
            let mut pruned = self
                .inner
                .autoscale
                .history_pruned
                .lock()
                .expect("prune lock");
            if pruned.is_some_and(|at| at.elapsed() < Duration::from_secs(3600)) {
                return;
            }
            *pruned = Some(Instant::now());
        }
        let retention = time::Duration::try_from(self.inner.config.autoscale.history_retention)
            .unwrap_or(time::Duration::days(35));
        if let Err(err) = self.inner.store.prune_job_history(now - retention).await {
            tracing::warn!(error = %err, "cannot prune the job history");
        }
    }

    /// The dedicated hosts of each pool whose machines run on them, from the pool's provider
    /// (cached for `host_refresh`). A provider that cannot be asked leaves the pool planned on
    /// its last known hosts, or on none.
    async fn pool_hosts(
        &self,
        tenant_id: TenantId,
        pools: &[Pool],
        now: OffsetDateTime,
    ) -> HashMap<PoolId, Vec<HostView>> {
        let refresh = self.inner.config.autoscale.host_refresh;
        let mut out = HashMap::new();
        for pool in pools {
            let cached = self
                .inner
                .autoscale
                .hosts
                .lock()
                .expect("hosts lock")
                .get(&pool.id)
                .cloned();
            let hosts = match cached {
                Some((read, hosts)) if read.elapsed() < refresh => hosts,
                cached => match self.read_hosts(tenant_id, pool).await {
                    Ok(hosts) => {
                        self.inner
                            .autoscale
                            .hosts
                            .lock()
                            .expect("hosts lock")
                            .insert(pool.id, (Instant::now(), hosts.clone()));
                        hosts
                    }
                    Err(err) => {
                        tracing::warn!(pool = %pool.name, error = %err, "dedicated hosts not read");
                        cached.and_then(|(_, hosts)| hosts)
                    }
                },
            };
            if let Some(hosts) = hosts {
                out.insert(pool.id, host_views(&hosts, now));
            }
        }
        out
    }

    async fn read_hosts(
        &self,
        tenant_id: TenantId,
        pool: &Pool,
    ) -> Result<Option<Vec<DedicatedHost>>> {
        let config = self
            .inner
            .store
            .get_provider(tenant_id, pool.provider_id)
            .await?;
        let provider = self.inner.providers.get(&config)?;
        Ok(provider
            .dedicated_hosts(&pool.settings.machine_spec())
            .await?)
    }

    /// Reads the pool's hosts again at its next pass (it just changed what runs on them).
    fn hosts_changed(&self, pool_id: PoolId) {
        self.inner
            .autoscale
            .hosts
            .lock()
            .expect("hosts lock")
            .remove(&pool_id);
    }

    /// Brings machines' usage up to date from the demand book: a runner with a job in progress
    /// is `running`; one whose job ended is `ready` again, idle since the job ended, with the
    /// finished jobs counted.
    async fn sync_usage(&self, view: &mut TenantView, now: OffsetDateTime) {
        let mut busy: HashSet<&str> = HashSet::new();
        let mut finished: HashMap<&str, (u32, OffsetDateTime)> = HashMap::new();
        for record in &view.jobs {
            let Some(runner) = record.runner_name.as_deref() else {
                continue;
            };
            match record.job.status {
                JobStatus::InProgress => {
                    busy.insert(runner);
                }
                JobStatus::Completed => {
                    let entry = finished.entry(runner).or_insert((0, record.updated_at));
                    entry.0 += 1;
                    entry.1 = entry.1.max(record.updated_at);
                }
                JobStatus::Queued | JobStatus::Waiting => {}
            }
        }
        for machines in view.machines.values_mut() {
            for machine in machines.iter_mut() {
                if !matches!(machine.state, MachineState::Ready | MachineState::Running)
                    || self.is_busy(machine.id)
                {
                    continue;
                }
                let name = runners::runner_name(machine.id);
                let is_busy = busy.contains(name.as_str());
                let (done, last_done) = finished
                    .get(name.as_str())
                    .copied()
                    .map_or((0, None), |(n, at)| (n, Some(at)));
                let mut updated = machine.clone();
                let reason = match (machine.state, is_busy) {
                    (MachineState::Ready, true) => {
                        updated.state = MachineState::Running;
                        updated.usage.idle_since = None;
                        Some("the runner started a job")
                    }
                    (MachineState::Running, false) => {
                        updated.state = MachineState::Ready;
                        updated.usage.jobs_run = (machine.usage.jobs_run + 1).max(done);
                        updated.usage.idle_since = Some(last_done.unwrap_or(now));
                        Some("the runner finished its job")
                    }
                    (MachineState::Ready, false) if done > machine.usage.jobs_run => {
                        // A job started and ended between two passes.
                        updated.usage.jobs_run = done;
                        updated.usage.idle_since = last_done.or(Some(now));
                        None
                    }
                    _ => continue,
                };
                updated.updated_at = nimbus_types::now();
                // The narrow row says what changes; the write needs the whole machine.
                let write = async {
                    let mut full = self
                        .inner
                        .store
                        .get_machine(None, machine.id)
                        .await?
                        .machine;
                    full.state = updated.state;
                    full.usage = updated.usage.clone();
                    full.updated_at = updated.updated_at;
                    self.inner
                        .store
                        .update_machine(&full, machine.state, reason)
                        .await
                };
                match write.await {
                    Ok(()) => *machine = updated,
                    Err(err) => {
                        tracing::debug!(machine.id = %machine.id, error = %err, "usage not updated; the next pass looks again")
                    }
                }
            }
        }
    }

    /// Reads the forge's runner list when it is due and notes since when each ready pool
    /// machine's runner is offline or missing. A failed read accuses nobody.
    async fn check_runner_health(
        &self,
        tenant_id: TenantId,
        view: &TenantView,
        now: OffsetDateTime,
    ) {
        let state = &self.inner.autoscale;
        let ready: Vec<MachineId> = view
            .machines
            .values()
            .flatten()
            .filter(|m| m.state == MachineState::Ready)
            .map(|m| m.id)
            .collect();
        {
            // Machines that are not ready (any more) carry no health record.
            let mut down = state.runner_down.lock().expect("runner_down lock");
            let all: HashSet<MachineId> = view.machines.values().flatten().map(|m| m.id).collect();
            down.retain(|id, _| !all.contains(id) || ready.contains(id));
        }
        let due = {
            let mut read = state.health_read.lock().expect("health lock");
            let due = read.get(&tenant_id).is_none_or(|at| {
                at.elapsed() >= self.inner.config.autoscale.runner_health_interval
            });
            if due && !ready.is_empty() {
                read.insert(tenant_id, Instant::now());
            }
            due && !ready.is_empty()
        };
        if !due {
            return;
        }
        let forge = match self.forges().get(tenant_id).await {
            Ok(Some(forge)) => forge,
            Ok(None) => {
                let mut down = state.runner_down.lock().expect("runner_down lock");
                for id in &ready {
                    down.remove(id);
                }
                return;
            }
            Err(err) => {
                tracing::debug!(error = %err, "runner health not checked: no usable forge");
                return;
            }
        };
        let runners = match forge.list_runners().await {
            Ok(runners) => runners,
            Err(err) => {
                tracing::debug!(error = %err, "runner health not checked: the forge's list failed");
                return;
            }
        };
        let online: HashMap<&str, RunnerStatus> = runners
            .iter()
            .map(|runner| (runner.name.as_str(), runner.status))
            .collect();
        let mut down = state.runner_down.lock().expect("runner_down lock");
        for id in ready {
            let name = runners::runner_name(id);
            match online.get(name.as_str()) {
                Some(RunnerStatus::Idle | RunnerStatus::Busy) => {
                    down.remove(&id);
                }
                Some(RunnerStatus::Offline) | None => {
                    down.entry(id).or_insert(now);
                }
            }
        }
    }

    fn machine_views(&self, machines: Option<&Vec<PoolMachine>>) -> Vec<MachineView> {
        let down = self
            .inner
            .autoscale
            .runner_down
            .lock()
            .expect("runner_down lock");
        machines
            .into_iter()
            .flatten()
            .map(|machine| {
                let phase = match machine.state {
                    MachineState::Provisioning => Phase::Booting { committed: false },
                    MachineState::ImageInstalling => Phase::Booting { committed: true },
                    MachineState::Ready => Phase::Idle,
                    MachineState::Running => Phase::Busy,
                    MachineState::Stopping | MachineState::Terminated => Phase::Stopping,
                    MachineState::Failed => Phase::Failed,
                };
                let since = match phase {
                    Phase::Booting { .. } => machine.created_at,
                    Phase::Idle => machine.usage.idle_since.unwrap_or(machine.updated_at),
                    _ => machine.updated_at,
                };
                MachineView {
                    id: machine.id,
                    phase,
                    created_at: machine.created_at,
                    since,
                    jobs_run: machine.usage.jobs_run,
                    runner_version: machine.usage.runner_version.clone(),
                    runner_down_since: down.get(&machine.id).copied(),
                    ever_ready: machine.usage.idle_since.is_some() || machine.usage.jobs_run > 0,
                }
            })
            .collect()
    }

    /// Carries out one pool's decisions; each failure is logged and shown in the pool's status,
    /// and the next pass plans again from what then exists.
    async fn apply(
        &self,
        tenant: &nimbus_types::Tenant,
        pool: &Pool,
        decisions: &[Decision],
        status: &PoolStatus,
        now: OffsetDateTime,
    ) {
        let scope: Scope = Some(tenant.id);
        let base = |name: &str| {
            Event::new(name)
                .tenant(tenant.id)
                .meta("pool", pool.name.as_str())
                .meta("pool_id", pool.id.to_string())
        };
        self.note_holds(pool, status, now, &base);
        for decision in decisions {
            match decision {
                Decision::Provision { count, reason } => {
                    let provider = match self
                        .inner
                        .store
                        .get_provider(tenant.id, pool.provider_id)
                        .await
                    {
                        Ok(provider) => provider,
                        Err(err) => {
                            self.remember(
                                pool.id,
                                record(
                                    now,
                                    "hold",
                                    Some(*count),
                                    None,
                                    format!("the pool's provider cannot be used: {err}"),
                                ),
                            );
                            continue;
                        }
                    };
                    let mut started = 0;
                    let mut error = None;
                    for _ in 0..*count {
                        match self.provision_pool_machine(tenant, &provider, pool).await {
                            Ok(_) => started += 1,
                            Err(err) => {
                                error = Some(err);
                                break;
                            }
                        }
                    }
                    if started > 0 {
                        self.emit(
                            base(event::POOL_SCALE_UP)
                                .meta("count", started)
                                .meta("reason", reason.as_str()),
                        );
                        self.remember(
                            pool.id,
                            record(now, "provision", Some(started), None, reason.clone()),
                        );
                    }
                    if let Some(err) = error {
                        tracing::warn!(pool = %pool.name, error = %err, "scale-up stopped");
                        self.remember(
                            pool.id,
                            record(
                                now,
                                "hold",
                                Some(count - started),
                                None,
                                format!("provisioning refused: {err}"),
                            ),
                        );
                    }
                }
                Decision::Terminate { machine, why } => {
                    match self.terminate_machine(scope, *machine).await {
                        Ok(_) => {
                            self.emit(
                                base(event::POOL_SCALE_DOWN)
                                    .machine(*machine)
                                    .meta("reason", why.as_str())
                                    .meta("message", why.to_string()),
                            );
                            self.remember(
                                pool.id,
                                record(
                                    now,
                                    if *why == nimbus_autoscale::Why::Cancelled {
                                        "cancel"
                                    } else {
                                        "terminate"
                                    },
                                    None,
                                    Some(*machine),
                                    why.to_string(),
                                ),
                            );
                        }
                        Err(err) => {
                            tracing::debug!(machine.id = %machine, error = %err, "scale-down skipped")
                        }
                    }
                }
                Decision::Fail { machine, why } => {
                    let reason = format!("replaced by the autoscaler: {why}");
                    match self.fail_machine(scope, *machine, &reason).await {
                        Ok(_) => {
                            self.emit(
                                base(event::POOL_SCALE_DOWN)
                                    .machine(*machine)
                                    .meta("reason", why.as_str())
                                    .meta("message", why.to_string()),
                            );
                            self.remember(
                                pool.id,
                                record(now, "fail", None, Some(*machine), why.to_string()),
                            );
                        }
                        Err(err) => {
                            tracing::debug!(machine.id = %machine, error = %err, "health replacement skipped")
                        }
                    }
                }
            }
        }
    }

    /// Emits `nimbus.tenant.budget_exhausted` when the tenant's budget starts holding back.
    fn note_tenant_budget(&self, tenant: &nimbus_types::Tenant, budget: Option<f64>, held: bool) {
        let started = {
            let mut flags = self
                .inner
                .autoscale
                .budget_held
                .lock()
                .expect("budget lock");
            if held {
                flags.insert(tenant.id)
            } else {
                flags.remove(&tenant.id);
                false
            }
        };
        if started {
            let budget = budget.unwrap_or(0.0);
            self.emit(
                Event::new(event::TENANT_BUDGET_EXHAUSTED)
                    .tenant(tenant.id)
                    .meta("budget_usd", budget)
                    .meta(
                        "reason",
                        format!("the tenant's monthly budget of ${budget:.2} is reached"),
                    ),
            );
        }
    }

    /// Emits `backoff` and `budget_exhausted` when a pool starts holding back.
    fn note_holds(
        &self,
        pool: &Pool,
        status: &PoolStatus,
        now: OffsetDateTime,
        base: &dyn Fn(&str) -> Event,
    ) {
        let (backoff_started, budget_started) = {
            let mut pools = self.inner.autoscale.pools.lock().expect("pools lock");
            let memory = pools.entry(pool.id).or_default();
            let backoff_started = status.backoff_until.is_some()
                && status.backoff_until != memory.backoff_until
                && memory.backoff_until.is_none_or(|until| until <= now);
            memory.backoff_until = status.backoff_until;
            let budget_started = status.budget_exhausted && !memory.budget_exhausted;
            memory.budget_exhausted = status.budget_exhausted;
            (backoff_started, budget_started)
        };
        if backoff_started {
            let reason = status.backoff_reason.clone().unwrap_or_default();
            let mut event = base(event::POOL_BACKOFF).meta("reason", reason.as_str());
            if let Some(until) = status.backoff_until {
                event = event.meta("until", until.unix_timestamp());
            }
            self.emit(event);
            self.remember(pool.id, record(now, "hold", None, None, reason));
        }
        if budget_started {
            let reason = format!(
                "the monthly budget of ${:.2} is reached (spent ${:.2} this month)",
                pool.settings.monthly_budget.unwrap_or(0.0),
                status.spent_this_month.unwrap_or(0.0)
            );
            self.emit(base(event::POOL_BUDGET_EXHAUSTED).meta("reason", reason.as_str()));
            self.remember(pool.id, record(now, "hold", None, None, reason));
        }
    }

    fn remember(&self, pool_id: PoolId, decision: DecisionRecord) {
        let mut pools = self.inner.autoscale.pools.lock().expect("pools lock");
        let decisions = &mut pools.entry(pool_id).or_default().decisions;
        decisions.push_front(decision);
        decisions.truncate(LAST_DECISIONS);
    }

    fn last_decisions(&self, pool_id: PoolId) -> Vec<DecisionRecord> {
        self.inner
            .autoscale
            .pools
            .lock()
            .expect("pools lock")
            .get(&pool_id)
            .map(|memory| memory.decisions.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn hour_start(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_time(time::Time::from_hms(t.hour(), 0, 0).expect("valid hour"))
}

/// Each pool's forecast from the tenant's finished jobs and its jobs still open (counted up to
/// `now`). A job belongs to the pool that would serve it today ([`nimbus_autoscale::Matcher`]),
/// so a pool learns from the jobs of its labels even from before it existed. A job counts
/// from its queueing for its run time (zero-wait concurrency, see
/// [`nimbus_autoscale::forecast`]), so time spent waiting for a runner does not make demand
/// look bigger than it was.
fn learn_forecasts(
    pools: &[Pool],
    history: &[nimbus_types::demand::FinishedJob],
    open: &[JobRecord],
    now: OffsetDateTime,
    config: &ForecastConfig,
) -> HashMap<PoolId, DemandForecast> {
    let mut matcher = nimbus_autoscale::Matcher::new(pools);
    let mut observations: HashMap<PoolId, Vec<Observation>> = HashMap::new();
    let mut finished: HashSet<u64> = HashSet::new();
    for job in history {
        finished.insert(job.job_id);
        if let Some(pool) = matcher.pool_for(&job.labels) {
            observations.entry(pool.id).or_default().push(Observation {
                queued_at: job.queued_at,
                until: job.queued_at + job.run_time(),
            });
        }
    }
    for record in open {
        if record.job.status == JobStatus::Completed || finished.contains(&record.job.job_id) {
            continue;
        }
        if let Some(pool) = matcher.pool_for(&record.job.labels) {
            observations.entry(pool.id).or_default().push(Observation {
                queued_at: record.first_seen,
                until: now,
            });
        }
    }
    observations
        .into_iter()
        .map(|(pool_id, observations)| (pool_id, DemandForecast::learn(&observations, now, config)))
        .collect()
}

/// The policy's view of a pool's hosts.
fn host_views(hosts: &[DedicatedHost], now: OffsetDateTime) -> Vec<HostView> {
    hosts
        .iter()
        .map(|host| HostView {
            allocated_at: host.allocated_at,
            min_until: host.releasable_at,
            instance: host.machine_id,
            scrubbing_until: host.scrubbing_until.filter(|until| *until > now),
        })
        .collect()
}

/// A decision as people read it.
fn describe(decision: &Decision, at: OffsetDateTime) -> DecisionRecord {
    match decision {
        Decision::Provision { count, reason } => {
            record(at, "provision", Some(*count), None, reason.clone())
        }
        Decision::Terminate { machine, why } => record(
            at,
            if *why == nimbus_autoscale::Why::Cancelled {
                "cancel"
            } else {
                "terminate"
            },
            None,
            Some(*machine),
            why.to_string(),
        ),
        Decision::Fail { machine, why } => {
            record(at, "fail", None, Some(*machine), why.to_string())
        }
    }
}

fn record(
    at: OffsetDateTime,
    action: &str,
    count: Option<u32>,
    machine_id: Option<MachineId>,
    reason: String,
) -> DecisionRecord {
    DecisionRecord {
        at,
        action: action.to_owned(),
        count,
        machine_id,
        reason,
    }
}
