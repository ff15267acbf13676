//! What the fleet costs: every machine's billed lifetime priced by the pool's own
//! `hourly_cost` (per second) or the price table (provider type and instance type), summed
//! per tenant and pool, with a month-end forecast.

use std::collections::{BTreeMap, HashMap};

use nimbus_store::MachineFilter;
use nimbus_types::api::{CostReport, CostRow, JobCost, JobCostReport};
use nimbus_types::cost::{Billing, Price};
use nimbus_types::{Machine, MachineId, MachineState, PoolId, ProviderId, Tenant, TenantId};
use time::OffsetDateTime;

use crate::{Fleet, Result};

/// Which costs to report.
#[derive(Clone, Debug, Default)]
pub struct CostQuery {
    pub tenant_id: Option<TenantId>,
    /// Only this pool's machines.
    pub pool_id: Option<PoolId>,
    /// Start of the window [default: the start of this calendar month, UTC].
    pub since: Option<OffsetDateTime>,
    /// Per job ([`Fleet::job_costs`]): only this job.
    pub job_id: Option<u64>,
}

impl Fleet {
    /// Costs since `query.since` until now, per tenant and pool.
    pub async fn costs(&self, query: &CostQuery) -> Result<CostReport> {
        let now = nimbus_types::now();
        let month_start = nimbus_autoscale::month_start(now);
        let since = query.since.unwrap_or(month_start).min(now);
        let tenants: Vec<Tenant> = match query.tenant_id {
            Some(id) => vec![self.inner.store.get_tenant(id).await?],
            None => self.inner.store.list_tenants().await?,
        };
        let mut rows = Vec::new();
        let (mut month_to_date, mut burn) = (0.0, 0.0);
        for tenant in tenants {
            let providers: HashMap<ProviderId, nimbus_types::ProviderType> = self
                .inner
                .store
                .list_tenant_providers(tenant.id)
                .await?
                .into_iter()
                .map(|p| (p.id, p.provider_type))
                .collect();
            let pools: HashMap<PoolId, nimbus_types::Pool> = self
                .inner
                .store
                .list_pools(Some(tenant.id))
                .await?
                .into_iter()
                .map(|p| (p.id, p))
                .collect();
            let machines = self
                .inner
                .store
                .list_machines(&MachineFilter {
                    tenant_id: Some(tenant.id),
                    pool_id: query.pool_id,
                    terminated_since: Some(since.min(month_start)),
                    ..MachineFilter::default()
                })
                .await?;
            let mut groups: BTreeMap<Option<String>, CostRow> = BTreeMap::new();
            for record in machines {
                let machine = record.machine;
                let pool = machine.pool_id.and_then(|id| pools.get(&id));
                let price = self.price_of(&machine, pool, &providers);
                let ended = ended_at(&machine);
                if let Some(price) = &price {
                    month_to_date += price.cost(machine.created_at, ended, month_start, now);
                    if ended.is_none() {
                        burn += price.usd_per_hour;
                    }
                }
                if ended.is_some_and(|end| end < since) {
                    continue;
                }
                let name = pool.map(|pool| pool.name.clone());
                let row = groups.entry(name.clone()).or_insert_with(|| CostRow {
                    tenant: tenant.name.clone(),
                    tenant_id: tenant.id,
                    pool: name,
                    machines: 0,
                    machine_hours: 0.0,
                    cost_usd: 0.0,
                    usd_per_hour_now: 0.0,
                    unpriced_machines: 0,
                });
                row.machines += 1;
                match &price {
                    Some(price) => {
                        row.cost_usd += price.cost(machine.created_at, ended, since, now);
                        row.machine_hours += price.hours(machine.created_at, ended, since, now);
                        if ended.is_none() {
                            row.usd_per_hour_now += price.usd_per_hour;
                        }
                    }
                    None => {
                        row.unpriced_machines += 1;
                        let end = ended.unwrap_or(now);
                        row.machine_hours += (end - machine.created_at.max(since))
                            .as_seconds_f64()
                            .max(0.0)
                            / 3600.0;
                    }
                }
            }
            rows.extend(groups.into_values());
        }
        let total = rows.iter().map(|row| row.cost_usd).sum();
        let month_end = next_month(month_start);
        let left_hours = (month_end - now).as_seconds_f64().max(0.0) / 3600.0;
        Ok(CostReport {
            since,
            until: now,
            rows,
            total_usd: total,
            month_to_date_usd: month_to_date,
            forecast_month_end_usd: month_to_date + burn * left_hours,
        })
    }

    /// Jobs that finished since `query.since` (default: the start of this month), each with
    /// its share of the machine its runner ran on: a job is tied to its machine by the runner
    /// name the forge's job events carry (`nimbus-<machine id>`), and a machine's billed cost
    /// so far is split over the jobs it ran in proportion to their run times. Jobs are kept for
    /// the job history's retention.
    pub async fn job_costs(&self, query: &CostQuery) -> Result<JobCostReport> {
        let now = nimbus_types::now();
        let since = query
            .since
            .unwrap_or_else(|| nimbus_autoscale::month_start(now))
            .min(now);
        let tenants: Vec<Tenant> = match query.tenant_id {
            Some(id) => vec![self.inner.store.get_tenant(id).await?],
            None => self.inner.store.list_tenants().await?,
        };
        let mut jobs = Vec::new();
        for tenant in tenants {
            let store = &self.inner.store;
            let mut finished = store.list_job_history(tenant.id, since).await?;
            if let Some(job_id) = query.job_id {
                finished.retain(|job| job.job_id == job_id);
            }
            if finished.is_empty() {
                continue;
            }
            let providers: HashMap<ProviderId, nimbus_types::ProviderType> = store
                .list_tenant_providers(tenant.id)
                .await?
                .into_iter()
                .map(|p| (p.id, p.provider_type))
                .collect();
            let pools: HashMap<PoolId, nimbus_types::Pool> = store
                .list_pools(Some(tenant.id))
                .await?
                .into_iter()
                .map(|p| (p.id, p))
                .collect();
            let machine_of = |job: &nimbus_types::demand::FinishedJob| {
                job.runner_name
                    .as_deref()
                    .and_then(crate::runners::machine_of_runner)
            };
            let wanted: std::collections::HashSet<MachineId> =
                finished.iter().filter_map(machine_of).collect();
            // Every machine that ran a job of the window lived at or after `since`.
            let machines: HashMap<MachineId, Machine> = store
                .list_machines(&MachineFilter {
                    tenant_id: Some(tenant.id),
                    terminated_since: Some(since),
                    ..MachineFilter::default()
                })
                .await?
                .into_iter()
                .map(|record| record.machine)
                .filter(|machine| wanted.contains(&machine.id))
                .map(|machine| (machine.id, machine))
                .collect();
            // The run time of everything each machine ran, jobs before the window included.
            let from = machines
                .values()
                .map(|machine| machine.created_at)
                .min()
                .unwrap_or(since)
                .min(since);
            let all = if from < since {
                store.list_job_history(tenant.id, from).await?
            } else {
                finished.clone()
            };
            let mut ran: HashMap<MachineId, (f64, u32)> = HashMap::new();
            for job in &all {
                if let Some(id) = machine_of(job).filter(|id| machines.contains_key(id)) {
                    let entry = ran.entry(id).or_default();
                    entry.0 += job.run_time().as_seconds_f64();
                    entry.1 += 1;
                }
            }
            for job in finished {
                let machine = machine_of(&job).and_then(|id| machines.get(&id));
                let pool = machine
                    .and_then(|m| m.pool_id)
                    .and_then(|id| pools.get(&id));
                if query.pool_id.is_some() && pool.map(|p| p.id) != query.pool_id {
                    continue;
                }
                let run_secs = job.run_time().as_seconds_f64();
                let price = machine.and_then(|m| self.price_of(m, pool, &providers));
                let (cost_usd, run_cost_usd) = match (machine, &price) {
                    (Some(machine), Some(price)) => {
                        let whole = price.cost(
                            machine.created_at,
                            ended_at(machine),
                            machine.created_at,
                            now,
                        );
                        let (total_secs, n_jobs) =
                            ran.get(&machine.id).copied().unwrap_or((run_secs, 1));
                        let share = if total_secs > 0.0 {
                            run_secs / total_secs
                        } else {
                            1.0 / f64::from(n_jobs.max(1))
                        };
                        (whole * share, price.usd_per_hour * run_secs / 3600.0)
                    }
                    _ => (0.0, 0.0),
                };
                jobs.push(JobCost {
                    tenant: tenant.name.clone(),
                    tenant_id: tenant.id,
                    job_id: job.job_id,
                    run_id: job.run_id,
                    repository: job.repository.clone(),
                    pool: pool.map(|p| p.name.clone()),
                    machine_id: machine.map(|m| m.id),
                    runner_name: job.runner_name.clone(),
                    queued_at: job.queued_at,
                    finished_at: job.finished_at,
                    wait_secs: job
                        .started_at
                        .map(|at| (at - job.queued_at).as_seconds_f64().max(0.0)),
                    run_secs,
                    cost_usd,
                    run_cost_usd,
                    unpriced: price.is_none(),
                });
            }
        }
        let total_usd = jobs.iter().map(|job| job.cost_usd).sum();
        Ok(JobCostReport {
            since,
            until: now,
            jobs,
            total_usd,
        })
    }

    /// The price of a machine: its pool's `hourly_cost` when set (per second), else the price
    /// table's entry for its provider type and instance type.
    fn price_of(
        &self,
        machine: &Machine,
        pool: Option<&nimbus_types::Pool>,
        providers: &HashMap<ProviderId, nimbus_types::ProviderType>,
    ) -> Option<Price> {
        self.price(
            pool.and_then(|pool| pool.settings.hourly_cost),
            *providers.get(&machine.provider_id)?,
            machine.instance_type.as_deref(),
        )
    }

    /// A pool's own `hourly_cost` (billed per second) when it has one, else the price table's
    /// entry for the provider type and instance type. The one rule the cost report and the
    /// autoscaler's budgets price machines by.
    pub(crate) fn price(
        &self,
        hourly_cost: Option<f64>,
        provider_type: nimbus_types::ProviderType,
        instance_type: Option<&str>,
    ) -> Option<Price> {
        match hourly_cost {
            Some(cost) => Some(Price {
                provider_type,
                instance_type: instance_type.unwrap_or_default().to_owned(),
                usd_per_hour: cost,
                billing: Billing::PerSecond { minimum_secs: 0 },
            }),
            None => self
                .inner
                .config
                .prices
                .lookup(provider_type, instance_type)
                .cloned(),
        }
    }
}

/// When a machine stopped costing: terminated or failed, at its last update.
fn ended_at(machine: &Machine) -> Option<OffsetDateTime> {
    matches!(
        machine.state,
        MachineState::Terminated | MachineState::Failed
    )
    .then_some(machine.updated_at)
}

fn next_month(month_start: OffsetDateTime) -> OffsetDateTime {
    let (year, month) = (month_start.year(), month_start.month());
    let (year, month) = if month == time::Month::December {
        (year + 1, time::Month::January)
    } else {
        (year, month.next())
    };
    time::Date::from_calendar_date(year, month, 1)
        .map(|date| date.midnight().assume_utc())
        .unwrap_or(month_start)
}
