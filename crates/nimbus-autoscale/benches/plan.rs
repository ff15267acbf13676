//! `cargo bench -p nimbus-autoscale`: prints a table.
//!
//! One autoscaler pass over a large tenant, the scenario: 1,000 pools and 10,000 queued
//! jobs, with a target of 10 ms for the whole pass (`assign` of the jobs to the pools, then
//! `plan` for every pool). The tenant is generated from a fixed seed: pools with 2-4 labels
//! (os, arch, size, a gpu/feature/region/team label), 5-20 machines each in every phase, a few
//! with schedules, budgets and recycling rules; jobs over ~50 label sets with a Zipf-like skew,
//! two of them served by no pool.
//!
//! The baseline rows run in the same process: `assign` without the per-label-set cache (every
//! job scans every pool through `best_pool`), so the figures can be quoted as ratios. The `cf.`
//! rows are not the crate's code but show where the time goes: a cache that does not clone the
//! job's label set on every hit, and `plan` with the schedules taken out of the pools
//! (`warm_target` compiles each schedule on every call). Only wall-clock percentiles are
//! printed; nothing here asserts on time.

use std::collections::HashMap;
use std::hint::black_box;
use std::str::FromStr;
use std::time::{Duration, Instant};

use nimbus_autoscale::{Demand, MachineView, Phase, PoolView, QueuedJob, Tuning, best_pool};
use nimbus_types::demand::{ForgeJob, JobRecord, JobStatus, LabelSet, Source};
use nimbus_types::{
    Arch, MachineId, Os, Pool, PoolId, PoolSettings, ProviderId, Schedule, TenantId,
};
use time::macros::datetime;
use time::{Duration as Span, OffsetDateTime};

const N_POOLS: usize = 1_000;
const N_JOBS: usize = 10_000;
const N_LABEL_SETS: usize = 50;
const TARGET: Duration = Duration::from_millis(10);
/// Iterations timed after the warm-up, for the fast rows and for the (slow) baselines.
const ITERATIONS: usize = 200;
const BASELINE_ITERATIONS: usize = 5;

/// Monday 2026-11-30, 10:00 UTC: inside the working-hours schedules some pools have.
const NOW: OffsetDateTime = datetime!(2026-11-30 10:00 UTC);

/// splitmix64: a fixed seed gives the same tenant on every run, without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn range(&mut self, from: u64, to: u64) -> u64 {
        from + self.next() % (to - from + 1)
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

struct Tenant {
    pools: Vec<Pool>,
    machines: Vec<Vec<MachineView>>,
    jobs: Vec<JobRecord>,
    n_label_sets: usize,
    n_unserved_sets: usize,
}

/// Every label combination a pool may have: os and arch, then optionally a size and
/// optionally one more (gpu, feature, region or team) label.
fn label_space() -> Vec<Vec<String>> {
    let sizes = ["small", "medium", "large", "xlarge", "2xlarge"];
    let mut extras: Vec<String> = ["gpu-t4", "gpu-a10", "gpu-h100", "docker", "kvm"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    extras.extend(["eu", "us", "ap"].iter().map(|r| format!("region-{r}")));
    extras.extend((0..100).map(|team| format!("team-{team:02}")));
    let mut space = Vec::new();
    for os in ["linux", "macos"] {
        for arch in ["x64", "arm64"] {
            for size in std::iter::once(None).chain(sizes.iter().map(Some)) {
                for extra in std::iter::once(None).chain(extras.iter().map(Some)) {
                    let mut labels = vec![os.to_owned(), arch.to_owned()];
                    labels.extend(size.map(|s| s.to_string()));
                    labels.extend(extra.cloned());
                    space.push(labels);
                }
            }
        }
    }
    space
}

fn tenant(rng: &mut Rng) -> Tenant {
    let tenant_id = TenantId::from_str("00000000-0000-7000-a000-000000000001").expect("tenant");
    let provider_id = ProviderId::from_str("00000000-0000-7000-b000-000000000001").expect("id");

    let mut space = label_space();
    // Fisher-Yates, then the first N_POOLS distinct label sets.
    for idx in (1..space.len()).rev() {
        space.swap(idx, rng.below(idx + 1));
    }
    assert!(
        space.len() >= N_POOLS,
        "label space too small: {}",
        space.len()
    );
    let mut pools = Vec::with_capacity(N_POOLS);
    let mut machines = Vec::with_capacity(N_POOLS);
    let mut machine_no = 0u64;
    for (idx, labels) in space.into_iter().take(N_POOLS).enumerate() {
        let os = if labels[0] == "macos" {
            Os::Macos
        } else {
            Os::Linux
        };
        let arch = if labels[1] == "arm64" {
            Arch::Arm64
        } else {
            Arch::X86_64
        };
        let mut settings = PoolSettings::new(labels, os, arch, rng.range(10, 40) as u32);
        settings.min_idle = rng.range(0, 3) as u32;
        if rng.chance(30) {
            settings.ephemeral = false;
            settings.max_jobs = Some(rng.range(5, 50) as u32);
        }
        if rng.chance(20) {
            settings.max_age_secs = Some(rng.range(3600, 86400));
        }
        if rng.chance(10) {
            let min_idle = rng.range(2, 8) as u32;
            settings.schedules = vec![
                Schedule::from_str(&format!("* 8-17 * * 1-5@Europe/Berlin={min_idle}"))
                    .expect("schedule"),
            ];
        }
        if rng.chance(20) {
            settings.hourly_cost = Some(rng.range(5, 300) as f64 / 100.0);
            settings.monthly_budget = Some(rng.range(200, 5000) as f64);
        }
        settings
            .validate()
            .expect("generated pool settings are valid");
        pools.push(Pool {
            id: PoolId::from_str(&format!("00000000-0000-7000-9000-{idx:012}")).expect("id"),
            tenant_id,
            name: format!("pool-{idx:04}"),
            provider_id,
            settings,
            created_at: NOW - Span::days(90),
            updated_at: NOW - Span::days(7),
        });

        let n_machines = rng.range(5, 20) as usize;
        let pool_machines = (0..n_machines)
            .map(|_| {
                machine_no += 1;
                let phase = match rng.below(100) {
                    0..35 => Phase::Idle,
                    35..70 => Phase::Busy,
                    70..78 => Phase::Booting { committed: true },
                    78..85 => Phase::Booting { committed: false },
                    85..90 => Phase::Stopping,
                    _ => Phase::Failed,
                };
                let age = rng.range(60, 8 * 3600) as i64;
                let in_phase = rng.range(0, age as u64) as i64;
                MachineView {
                    id: MachineId::from_str(&format!("00000000-0000-7000-8000-{machine_no:012}"))
                        .expect("id"),
                    phase,
                    created_at: NOW - Span::seconds(age),
                    since: NOW - Span::seconds(in_phase),
                    jobs_run: rng.range(0, 10) as u32,
                    runner_version: Some(
                        (if rng.chance(90) { "2.321.0" } else { "2.320.0" }).to_owned(),
                    ),
                    runner_down_since: rng
                        .chance(3)
                        .then(|| NOW - Span::seconds(rng.range(0, 900) as i64)),
                    ever_ready: match phase {
                        Phase::Booting { .. } => false,
                        Phase::Failed => rng.chance(50),
                        _ => true,
                    },
                }
            })
            .collect();
        machines.push(pool_machines);
    }

    // The label sets jobs ask for: subsets of some pools' labels (dropping the most specific
    // label half the time), plus two sets no pool serves.
    let mut label_sets: Vec<LabelSet> = Vec::new();
    while label_sets.len() < N_LABEL_SETS - 2 {
        let labels = &rng.pick(&pools).settings.labels;
        let keep = if labels.len() > 2 && rng.chance(50) {
            labels.len() - 1
        } else {
            labels.len()
        };
        let set = LabelSet::new(&labels[..keep]);
        if !label_sets.contains(&set) {
            label_sets.push(set);
        }
    }
    label_sets.push(LabelSet::new(["windows", "x64"]));
    label_sets.push(LabelSet::new(["linux", "x64", "gpu-mi300"]));
    // Shuffle so the unserved sets do not always get the smallest weights.
    for idx in (1..label_sets.len()).rev() {
        label_sets.swap(idx, rng.below(idx + 1));
    }
    // Zipf-like: the k-th set is asked for in proportion to 1/(k+1).
    let weights: Vec<f64> = (0..label_sets.len())
        .map(|k| 1.0 / (k + 1) as f64)
        .collect();
    let total: f64 = weights.iter().sum();
    let jobs = (0..N_JOBS)
        .map(|idx| {
            let mut x = (rng.next() as f64 / u64::MAX as f64) * total;
            let mut set = label_sets.len() - 1;
            for (k, weight) in weights.iter().enumerate() {
                if x < *weight {
                    set = k;
                    break;
                }
                x -= weight;
            }
            let first_seen = NOW - Span::seconds(rng.range(0, 600) as i64);
            JobRecord {
                job: ForgeJob {
                    job_id: 1_000_000 + idx as u64,
                    run_id: 10_000 + idx as u64 / 4,
                    repository: format!("acme/repo-{}", idx % 200),
                    labels: label_sets[set].clone(),
                    status: JobStatus::Queued,
                },
                runner_name: None,
                first_seen,
                updated_at: first_seen,
                source: Source::Webhook,
            }
        })
        .collect();
    let n_unserved_sets = label_sets
        .iter()
        .filter(|set| best_pool(&pools, set).is_none())
        .count();
    Tenant {
        pools,
        machines,
        jobs,
        n_label_sets: label_sets.len(),
        n_unserved_sets,
    }
}

/// The baseline: `assign` without the label-set cache, every job scanning every pool.
fn assign_naive(pools: &[Pool], jobs: &[JobRecord]) -> HashMap<PoolId, Demand> {
    let mut demand: HashMap<PoolId, Demand> = HashMap::new();
    for record in jobs {
        if record.job.status != JobStatus::Queued {
            continue;
        }
        if let Some(pool) = best_pool(pools, &record.job.labels) {
            demand.entry(pool.id).or_default().queued.push(QueuedJob {
                job_id: record.job.job_id,
                queued_at: record.first_seen,
            });
        }
    }
    demand
}

/// For comparison: the label-set cache keyed by reference, so a cache hit clones nothing
/// (`Matcher::pool_for` clones the job's `LabelSet` for the map's entry on every call).
fn assign_by_ref<'j>(pools: &[Pool], jobs: &'j [JobRecord]) -> HashMap<PoolId, Demand> {
    let mut cache: HashMap<&'j LabelSet, Option<PoolId>> = HashMap::new();
    let mut demand: HashMap<PoolId, Demand> = HashMap::new();
    for record in jobs {
        if record.job.status != JobStatus::Queued {
            continue;
        }
        let labels = &record.job.labels;
        let pool = match cache.get(labels) {
            Some(pool) => *pool,
            None => *cache
                .entry(labels)
                .or_insert_with(|| best_pool(pools, labels).map(|pool| pool.id)),
        };
        if let Some(pool) = pool {
            demand.entry(pool).or_default().queued.push(QueuedJob {
                job_id: record.job.job_id,
                queued_at: record.first_seen,
            });
        }
    }
    demand
}

/// `plan` for every pool, as the daemon's loop does after `assign`.
fn plan_all(tenant: &Tenant, demand: &HashMap<PoolId, Demand>, tuning: &Tuning) -> usize {
    let none = Demand::default();
    let mut n_decisions = 0;
    for (pool, machines) in tenant.pools.iter().zip(&tenant.machines) {
        let view = PoolView {
            pool,
            machines,
            spent_this_month: 25.0,
            hourly_rate: None,
            tenant_budget_left: None,
            runner_version: Some("2.321.0"),
            tuning,
        };
        let plan = nimbus_autoscale::plan(&view, demand.get(&pool.id).unwrap_or(&none), NOW);
        n_decisions += black_box(plan).decisions.len();
    }
    n_decisions
}

struct Stats {
    n: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn measure(warm_up: usize, iterations: usize, mut run: impl FnMut()) -> Stats {
    for _ in 0..warm_up {
        run();
    }
    let mut times: Vec<Duration> = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .collect();
    times.sort();
    let at = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    Stats {
        n: iterations,
        p50: at(0.50),
        p99: at(0.99),
        max: times[times.len() - 1],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.3}×", a.as_secs_f64() / b.as_secs_f64())
}

fn main() {
    let mut rng = Rng(0x6e69_6d62_7573);
    let tenant = tenant(&mut rng);
    let tuning = Tuning::default();
    let n_machines: usize = tenant.machines.iter().map(Vec::len).sum();
    let n_scheduled = tenant
        .pools
        .iter()
        .filter(|pool| !pool.settings.schedules.is_empty())
        .count();

    // Not timed: both matchers agree, and the pass does something.
    let demand = nimbus_autoscale::assign(&tenant.pools, &tenant.jobs);
    let naive = assign_naive(&tenant.pools, &tenant.jobs);
    assert_eq!(
        demand, naive,
        "the cached matcher and the naive one disagree"
    );
    let n_assigned: usize = demand.values().map(|d| d.queued.len()).sum();
    let n_decisions = plan_all(&tenant, &demand, &tuning);

    let assign = measure(20, ITERATIONS, || {
        black_box(nimbus_autoscale::assign(
            black_box(&tenant.pools),
            black_box(&tenant.jobs),
        ));
    });
    let assign_base = measure(1, BASELINE_ITERATIONS, || {
        black_box(assign_naive(
            black_box(&tenant.pools),
            black_box(&tenant.jobs),
        ));
    });
    let plan = measure(20, ITERATIONS, || {
        black_box(plan_all(&tenant, black_box(&demand), &tuning));
    });
    let by_ref = measure(20, ITERATIONS, || {
        black_box(assign_by_ref(
            black_box(&tenant.pools),
            black_box(&tenant.jobs),
        ));
    });
    let unscheduled = Tenant {
        pools: tenant
            .pools
            .iter()
            .cloned()
            .map(|mut pool| {
                pool.settings.schedules.clear();
                pool
            })
            .collect(),
        machines: tenant.machines.clone(),
        jobs: Vec::new(),
        n_label_sets: 0,
        n_unserved_sets: 0,
    };
    let plan_unscheduled = measure(20, ITERATIONS, || {
        black_box(plan_all(&unscheduled, black_box(&demand), &tuning));
    });
    let pass = measure(20, ITERATIONS, || {
        let demand = nimbus_autoscale::assign(black_box(&tenant.pools), black_box(&tenant.jobs));
        black_box(plan_all(&tenant, &demand, &tuning));
    });
    let pass_base = measure(1, BASELINE_ITERATIONS, || {
        let demand = assign_naive(black_box(&tenant.pools), black_box(&tenant.jobs));
        black_box(plan_all(&tenant, &demand, &tuning));
    });

    println!(
        "nimbus-autoscale: one pass over {} pools ({} with a schedule, {} machines) and {} queued jobs \
         over {} label sets ({} served by no pool): {} jobs assigned to {} pools, {} decisions",
        tenant.pools.len(),
        n_scheduled,
        n_machines,
        tenant.jobs.len(),
        tenant.n_label_sets,
        tenant.n_unserved_sets,
        n_assigned,
        demand.len(),
        n_decisions,
    );
    println!();
    println!(
        "| measurement                                   |   n |        p50 |        p99 |        max | p50 vs baseline |"
    );
    println!(
        "|-----------------------------------------------|-----|------------|------------|------------|-----------------|"
    );
    let rows: [(&str, &Stats, Option<&Stats>); 7] = [
        (
            "assign, Matcher (cache per label set)",
            &assign,
            Some(&assign_base),
        ),
        (
            "assign, baseline: best_pool per job",
            &assign_base,
            Some(&assign_base),
        ),
        (
            "  cf. assign, cache keyed by &LabelSet",
            &by_ref,
            Some(&assign_base),
        ),
        ("plan, all pools", &plan, None),
        (
            "  cf. plan, all pools, schedules removed",
            &plan_unscheduled,
            None,
        ),
        ("whole pass: assign + plan", &pass, Some(&pass_base)),
        ("whole pass, baseline assign", &pass_base, Some(&pass_base)),
    ];
    for (name, stats, baseline) in rows {
        let vs = baseline.map_or(String::new(), |base| ratio(stats.p50, base.p50));
        println!(
            "| {name:<45} | {:>3} | {:>10} | {:>10} | {:>10} | {vs:>15} |",
            stats.n,
            ms(stats.p50),
            ms(stats.p99),
            ms(stats.max),
        );
    }
    println!();
    println!(
        "target: whole pass (assign of {} jobs to {} pools + plan for each pool) <= {} ms; \
         measured p50 {}, p99 {} ({})",
        N_JOBS,
        N_POOLS,
        TARGET.as_millis(),
        ms(pass.p50),
        ms(pass.p99),
        if pass.p99 <= TARGET {
            "within the target"
        } else {
            "over the target"
        },
    );
}
