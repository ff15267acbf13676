//! 100 concurrent Linux provisions (and terminations) against moto: how much time each machine
//! spends in Nimbus rather than waiting on EC2, the process's CPU time per machine, and its peak
//! resident memory. This process stands in for the daemon: it holds one `AwsProvider` as
//! `nimbusd` would. moto runs in its own process and is not counted.
//!
//! Run: `cargo bench -p nimbus-aws --bench provision` (moto_server on PATH; `scripts/test`
//! installs it). `NIMBUS_BENCH_MACHINES` changes the count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_aws::{AwsProvider, EventSink, ManualClock};
use nimbus_provider::{Provider, ProvisionRequest};
use nimbus_testkit::moto::{self, MotoServer};
use nimbus_types::event::{self, Event};
use nimbus_types::{
    Arch, Image, ImageState, ImageType, Machine, MachineId, MachineSpec, MachineState, Os,
    ProviderConfig, ProviderId, ProviderType, Secret, TenantId,
};
use serde_json::json;

/// Adds up, per machine, the time its EC2 requests took (successful or not).
#[derive(Default)]
struct Ec2Time {
    per_machine: Mutex<HashMap<MachineId, Duration>>,
    calls: Mutex<usize>,
}

impl EventSink for Ec2Time {
    fn emit(&self, event: Event) {
        let ends_call = event.name == event::CLOUD_PROVIDER_API_CALL_SUCCESS
            || event.name == event::CLOUD_PROVIDER_API_CALL_FAILURE;
        if !ends_call {
            return;
        }
        *self.calls.lock().unwrap() += 1;
        if let (Some(machine_id), Some(seconds)) = (event.machine_id, event.duration) {
            *self
                .per_machine
                .lock()
                .unwrap()
                .entry(machine_id)
                .or_default() += Duration::from_secs_f64(seconds);
        }
    }
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let micros = |tv: nix::sys::time::TimeVal| {
                Duration::from_secs(tv.tv_sec() as u64) + Duration::from_micros(tv.tv_usec() as u64)
            };
            micros(usage.user_time()) + micros(usage.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn machine(request: &ProvisionRequest, provided: &nimbus_provider::ProviderMachine) -> Machine {
    Machine {
        id: request.machine_id,
        tenant_id: request.tenant_id,
        provider_id: request.provider_id,
        os: request.spec.os,
        arch: request.spec.arch,
        state: MachineState::Ready,
        ip_address: provided.ip_address.clone(),
        ssh_public_key: None,
        labels: Vec::new(),
        instance_type: None,
        image: Image {
            id: None,
            image_type: ImageType::Ami,
            state: ImageState::Installed,
            installed_at: None,
        },
        created_at: provided.created_at,
        updated_at: provided.created_at,
        provider_metadata: provided.metadata.clone(),
        error: None,
        setup_progress: None,
        pool_id: None,
        usage: Default::default(),
    }
}

struct Row {
    phase: &'static str,
    wall: Vec<Duration>,
    ec2: Vec<Duration>,
    overhead: Vec<Duration>,
    total: Duration,
    cpu: Duration,
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("NIMBUS_BENCH_MACHINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let moto = MotoServer::start()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rss_before_kib = proc_status_kib("VmRSS:");

    let tenant_id = TenantId::new();
    let provider_id = ProviderId::new();
    let record = ProviderConfig {
        id: provider_id,
        tenant_id,
        name: "bench".into(),
        provider_type: ProviderType::Aws,
        credentials: Some(Secret::new(
            json!({"access_key_id": "AKIANIMBUSBENCH00001", "secret_access_key": "bench-secret"})
                .to_string(),
        )),
        config: json!({
            "region": "us-east-1",
            "availability_zones": ["us-east-1a"],
            "endpoint_url": moto.endpoint(),
            "linux_instance_type": "t3.micro",
            "image_ids": {"linux_x86_64": moto::AMI_LINUX_X86_64},
        }),
        created_at: nimbus_types::now(),
    };
    let sink = Arc::new(Ec2Time::default());
    let provider = Arc::new(
        AwsProvider::new(&record, Arc::new(ManualClock::starting_now()))?.with_events(sink.clone()),
    );
    let request = |_: usize| {
        let mut spec = MachineSpec::new(Os::Linux, Arch::X86_64);
        spec.skip_setup = true;
        ProvisionRequest {
            machine_id: MachineId::new(),
            tenant_id,
            provider_id,
            spec,
        }
    };

    let rows = runtime.block_on(async {
        // Warm-up: client construction and connection set-up are not per machine.
        let warm = request(0);
        let provided = provider.provision(&warm).await?;
        provider.terminate(&machine(&warm, &provided)).await?;

        let requests: Vec<ProvisionRequest> = (0..n).map(request).collect();
        sink.per_machine.lock().unwrap().clear();
        let cpu_start = cpu_time();
        let started = Instant::now();
        let provisions = futures::future::join_all(requests.iter().map(|request| {
            let provider = provider.clone();
            async move {
                let t = Instant::now();
                let result = provider.provision(request).await;
                (t.elapsed(), result)
            }
        }))
        .await;
        let provision_total = started.elapsed();
        let provision_cpu = cpu_time() - cpu_start;
        let mut machines = Vec::new();
        let mut wall = Vec::new();
        for (request, (elapsed, result)) in requests.iter().zip(provisions) {
            let provided = result?;
            machines.push(machine(request, &provided));
            wall.push((request.machine_id, elapsed));
        }
        let ec2_provision = std::mem::take(&mut *sink.per_machine.lock().unwrap());

        let cpu_start = cpu_time();
        let started = Instant::now();
        let terminations = futures::future::join_all(machines.iter().map(|machine| {
            let provider = provider.clone();
            async move {
                let t = Instant::now();
                let result = provider.terminate(machine).await;
                (machine.id, t.elapsed(), result)
            }
        }))
        .await;
        let terminate_total = started.elapsed();
        let terminate_cpu = cpu_time() - cpu_start;
        let mut terminate_wall = Vec::new();
        for (id, elapsed, result) in terminations {
            result?;
            terminate_wall.push((id, elapsed));
        }
        let ec2_terminate = std::mem::take(&mut *sink.per_machine.lock().unwrap());
        let left = provider.list_machines(tenant_id).await?;
        anyhow::ensure!(
            left.is_empty(),
            "{} machines left after terminating",
            left.len()
        );

        let row = |phase,
                   wall: Vec<(MachineId, Duration)>,
                   ec2: HashMap<MachineId, Duration>,
                   total,
                   cpu| {
            let mut walls: Vec<Duration> = wall.iter().map(|(_, d)| *d).collect();
            let mut ec2s: Vec<Duration> = wall
                .iter()
                .map(|(id, _)| ec2.get(id).copied().unwrap_or_default())
                .collect();
            let mut overhead: Vec<Duration> = wall
                .iter()
                .map(|(id, d)| d.saturating_sub(ec2.get(id).copied().unwrap_or_default()))
                .collect();
            walls.sort();
            ec2s.sort();
            overhead.sort();
            Row {
                phase,
                wall: walls,
                ec2: ec2s,
                overhead,
                total,
                cpu,
            }
        };
        Ok::<_, anyhow::Error>(vec![
            row(
                "provision",
                wall,
                ec2_provision,
                provision_total,
                provision_cpu,
            ),
            row(
                "terminate",
                terminate_wall,
                ec2_terminate,
                terminate_total,
                terminate_cpu,
            ),
        ])
    })?;

    let peak_kib = proc_status_kib("VmHWM:");
    println!(
        "nimbus-aws: {n} concurrent Linux machines against moto ({} EC2 requests in all)",
        sink.calls.lock().unwrap()
    );
    println!();
    println!(
        "| phase     | total s | wall p50 ms | wall p99 ms | EC2 p50 ms | EC2 p99 ms | Nimbus overhead p50 ms | overhead p99 ms | CPU ms/machine |"
    );
    println!(
        "|-----------|---------|-------------|-------------|------------|------------|------------------------|-----------------|----------------|"
    );
    for row in &rows {
        println!(
            "| {:<9} | {:>7.2} | {:>11} | {:>11} | {:>10} | {:>10} | {:>22} | {:>15} | {:>14} |",
            row.phase,
            row.total.as_secs_f64(),
            ms(percentile(&row.wall, 0.5)),
            ms(percentile(&row.wall, 0.99)),
            ms(percentile(&row.ec2, 0.5)),
            ms(percentile(&row.ec2, 0.99)),
            ms(percentile(&row.overhead, 0.5)),
            ms(percentile(&row.overhead, 0.99)),
            ms(row.cpu / n as u32),
        );
    }
    println!();
    println!("| memory                     | MiB    |");
    println!("|----------------------------|--------|");
    println!(
        "| RSS before the run         | {:>6.1} |",
        rss_before_kib as f64 / 1024.0
    );
    println!(
        "| peak RSS (VmHWM)           | {:>6.1} |",
        peak_kib as f64 / 1024.0
    );
    println!();
    println!(
        "EC2 time = the machine's requests from send to parsed answer (SDK signing and XML parsing included);\n\
         overhead = wall time of provision/terminate minus that: Nimbus's own work plus waiting for a turn\n\
         (host selection lock, tokio scheduling). CPU = this process's user+system time / machines."
    );
    Ok(())
}
