//! Tables for people, JSON for scripts.

use std::io::Write;
use std::time::Duration;

use comfy_table::{Table, presets::NOTHING};
use nimbus_types::TenantId;
use nimbus_types::api::{
    BudgetView, CostReport, DecisionRecord, ForgeView, JobCostReport, PoolPlan, PoolView,
    ProviderView, StateChange, TenantToken,
};
use nimbus_types::event::Event;
use nimbus_types::{CanTerminate, Machine, Tenant};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub struct Printer {
    json: bool,
}

/// `GET /v1/tenants/{t}/forge`: the forge and, for forges that deliver webhooks, the path.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForgeShow {
    #[serde(flatten)]
    pub forge: ForgeView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_path: Option<String>,
}

/// One row of `GET /v1/demand`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DemandRow {
    pub tenant_id: TenantId,
    pub labels: Vec<String>,
    pub queued: u64,
    pub waiting: u64,
    pub in_progress: u64,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub oldest_queued_at: Option<OffsetDateTime>,
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(header.to_vec());
    table
}

fn ts(at: time::OffsetDateTime) -> String {
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn decision_table(decisions: &[DecisionRecord]) -> Table {
    let mut t = table(&["AT", "ACTION", "COUNT", "MACHINE", "REASON"]);
    for decision in decisions {
        t.add_row(vec![
            ts(decision.at),
            decision.action.clone(),
            decision.count.map(|c| c.to_string()).unwrap_or_default(),
            decision
                .machine_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            decision.reason.clone(),
        ]);
    }
    t
}

/// Seconds as people write durations: `90s`, `10m`, `2h`, `1h30m`.
fn secs(total: u64) -> String {
    let (h, m, s) = (total / 3600, total % 3600 / 60, total % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

fn print_table(table: Table) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", table.to_string().trim_end())?;
    Ok(())
}

impl Printer {
    pub fn new(json: bool) -> Self {
        Printer { json }
    }

    fn json<T: Serialize + ?Sized>(&self, value: &T) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, value)?;
        writeln!(out)?;
        Ok(())
    }

    pub fn tenants(&self, tenants: &[Tenant]) -> anyhow::Result<()> {
        if self.json {
            return self.json(tenants);
        }
        let mut t = table(&["NAME", "ID", "CREATED"]);
        for tenant in tenants {
            t.add_row(vec![
                tenant.name.clone(),
                tenant.id.to_string(),
                ts(tenant.created_at),
            ]);
        }
        print_table(t)
    }

    pub fn enrolment_token(&self, created: &serde_json::Value) -> anyhow::Result<()> {
        if self.json {
            return self.json(created);
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", created["token"].as_str().unwrap_or_default())?;
        eprintln!(
            "(shown once, valid until {}: give it to `nimbusd agent run --enrolment-token-file …` on the agent's host)",
            created["expires_at"].as_str().unwrap_or("?")
        );
        Ok(())
    }

    pub fn agents(&self, agents: &[serde_json::Value]) -> anyhow::Result<()> {
        if self.json {
            return self.json(agents);
        }
        let mut t = table(&["NAME", "STATUS", "LAST SEEN", "HEALTH", "BMCS", "ID"]);
        for agent in agents {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
            let report = &agent["report"];
            let bmcs = report["bmcs"]
                .as_array()
                .map(|bmcs| {
                    bmcs.iter()
                        .map(|b| {
                            format!(
                                "{}={}",
                                b["name"].as_str().unwrap_or("?"),
                                b["power_state"].as_str().unwrap_or("unreachable")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            t.add_row(vec![
                text(&agent["name"]),
                text(&agent["status"]),
                agent["last_seen_secs_ago"]
                    .as_i64()
                    .map(|s| format!("{s}s ago"))
                    .unwrap_or_else(|| "never".into()),
                text(&report["health"]),
                bmcs,
                text(&agent["id"]),
            ]);
        }
        print_table(t)
    }

    pub fn agent_op(&self, result: &serde_json::Value) -> anyhow::Result<()> {
        if self.json {
            return self.json(result);
        }
        let mut out = std::io::stdout().lock();
        match result["outcome"]["power_state"].as_str() {
            Some(state) => writeln!(
                out,
                "{}: power {state}",
                result["bmc"].as_str().unwrap_or("?")
            )?,
            None => writeln!(
                out,
                "{}: {} accepted",
                result["bmc"].as_str().unwrap_or("?"),
                result["op"].as_str().unwrap_or("operation")
            )?,
        }
        Ok(())
    }

    pub fn token(&self, token: &TenantToken) -> anyhow::Result<()> {
        if self.json {
            return self.json(token);
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", token.token)?;
        eprintln!("(shown once: store it now, e.g. export NIMBUS_TOKEN=…)");
        Ok(())
    }

    pub fn providers(&self, providers: &[ProviderView]) -> anyhow::Result<()> {
        if self.json {
            return self.json(providers);
        }
        let mut t = table(&["NAME", "TYPE", "ID", "TENANT", "CREDENTIALS"]);
        for p in providers {
            t.add_row(vec![
                p.name.clone(),
                p.provider_type.to_string(),
                p.id.to_string(),
                p.tenant_id.to_string(),
                if p.has_credentials { "sealed" } else { "none" }.to_owned(),
            ]);
        }
        print_table(t)
    }

    pub fn pools(&self, pools: &[PoolView]) -> anyhow::Result<()> {
        if self.json {
            return self.json(pools);
        }
        let mut t = table(&[
            "NAME",
            "PROVIDER",
            "LABELS",
            "OS/ARCH",
            "MIN IDLE",
            "MAX",
            "IDLE TIMEOUT",
            "ID",
        ]);
        for view in pools {
            let pool = &view.pool;
            let s = &pool.settings;
            t.add_row(vec![
                pool.name.clone(),
                view.provider.clone(),
                s.labels.join(","),
                format!("{}/{}", s.os, s.arch),
                s.min_idle.to_string(),
                s.max.to_string(),
                secs(s.idle_timeout_secs),
                pool.id.to_string(),
            ]);
        }
        print_table(t)
    }

    pub fn budget(&self, view: &BudgetView) -> anyhow::Result<()> {
        if self.json {
            return self.json(view);
        }
        let mut out = std::io::stdout().lock();
        match view.monthly_usd {
            Some(budget) => writeln!(out, "monthly budget ${budget:.2}")?,
            None => writeln!(out, "no monthly budget")?,
        }
        writeln!(
            out,
            "spent this month ${:.2} · month-end forecast ${:.2}",
            view.spent_this_month_usd, view.forecast_month_end_usd
        )?;
        Ok(())
    }

    pub fn costs(&self, report: &CostReport) -> anyhow::Result<()> {
        if self.json {
            return self.json(report);
        }
        let mut t = table(&[
            "TENANT",
            "POOL",
            "MACHINES",
            "MACHINE-HOURS",
            "COST $",
            "$/H NOW",
        ]);
        for row in &report.rows {
            let unpriced = if row.unpriced_machines > 0 {
                format!(" ({} unpriced)", row.unpriced_machines)
            } else {
                String::new()
            };
            t.add_row(vec![
                row.tenant.clone(),
                row.pool.clone().unwrap_or_else(|| "-".to_owned()),
                format!("{}{unpriced}", row.machines),
                format!("{:.2}", row.machine_hours),
                format!("{:.2}", row.cost_usd),
                format!("{:.4}", row.usd_per_hour_now),
            ]);
        }
        print_table(t)?;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "\nsince {}: ${:.2} · this month so far ${:.2} · month-end forecast ${:.2}",
            ts(report.since),
            report.total_usd,
            report.month_to_date_usd,
            report.forecast_month_end_usd
        )?;
        Ok(())
    }

    /// Per job: each finished job's share of its runner's machine.
    pub fn job_costs(&self, report: &JobCostReport) -> anyhow::Result<()> {
        if self.json {
            return self.json(report);
        }
        let mut t = table(&[
            "TENANT",
            "JOB",
            "REPOSITORY",
            "POOL",
            "MACHINE",
            "WAIT S",
            "RUN S",
            "RUN $",
            "SHARE $",
        ]);
        for job in &report.jobs {
            t.add_row(vec![
                job.tenant.clone(),
                job.job_id.to_string(),
                job.repository.clone(),
                job.pool.clone().unwrap_or_else(|| "-".to_owned()),
                job.machine_id
                    .map_or_else(|| "-".to_owned(), |id| id.to_string()),
                job.wait_secs
                    .map_or_else(|| "-".to_owned(), |secs| format!("{secs:.0}")),
                format!("{:.0}", job.run_secs),
                if job.unpriced {
                    "unpriced".to_owned()
                } else {
                    format!("{:.4}", job.run_cost_usd)
                },
                format!("{:.4}", job.cost_usd),
            ]);
        }
        print_table(t)?;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "\n{} jobs finished since {}: ${:.2} (each job's share of its machine: boot, idle time \
             and minimums included)",
            report.jobs.len(),
            ts(report.since),
            report.total_usd
        )?;
        Ok(())
    }

    /// A dry run: what the autoscaler would do now and why.
    pub fn pool_plan(&self, plan: &PoolPlan) -> anyhow::Result<()> {
        if self.json {
            return self.json(plan);
        }
        let status = &plan.status;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "desired {} · idle {} · busy {} · booting {} · queued jobs {} · warm target {}",
            status.desired,
            status.idle,
            status.busy,
            status.booting,
            status.queued_jobs,
            status.min_idle
        )?;
        if let Some(reason) = &status.backoff_reason {
            writeln!(out, "backing off: {reason}")?;
        }
        if status.budget_exhausted {
            writeln!(out, "scale-up held: the monthly budget is reached")?;
        }
        if plan.decisions.is_empty() {
            writeln!(out, "nothing to do: the pool is where the policy wants it")?;
            return Ok(());
        }
        drop(out);
        print_table(decision_table(&plan.decisions))
    }

    /// One pool with its settings, status and the autoscaler's last decisions.
    pub fn pool_detail(&self, view: &PoolView) -> anyhow::Result<()> {
        if self.json {
            return self.json(view);
        }
        let pool = &view.pool;
        let s = &pool.settings;
        let mut out = std::io::stdout().lock();
        writeln!(out, "pool          {} ({})", pool.name, pool.id)?;
        writeln!(out, "provider      {}", view.provider)?;
        writeln!(out, "labels        {}", s.labels.join(","))?;
        writeln!(out, "platform      {}/{}", s.os, s.arch)?;
        if let Some(instance_type) = &s.instance_type {
            writeln!(out, "instance type {instance_type}")?;
        }
        if let Some(image) = &s.image_id {
            writeln!(out, "image         {image}")?;
        }
        writeln!(
            out,
            "size          min_idle {} · max {} · idle timeout {}",
            s.min_idle,
            s.max,
            secs(s.idle_timeout_secs)
        )?;
        let mut recycle = vec![if s.ephemeral {
            "ephemeral (one job per runner)".to_owned()
        } else {
            "reused".to_owned()
        }];
        if let Some(age) = s.max_age_secs {
            recycle.push(format!("max age {}", secs(age)));
        }
        if let Some(jobs) = s.max_jobs {
            recycle.push(format!("max {jobs} jobs"));
        }
        writeln!(out, "runners       {}", recycle.join(" · "))?;
        for (idx, schedule) in s.schedules.iter().enumerate() {
            writeln!(
                out,
                "schedule {idx}    {} ({}) → min_idle {}",
                schedule.cron, schedule.timezone, schedule.min_idle
            )?;
        }
        if let Some(cost) = s.hourly_cost {
            let budget = s.monthly_budget.map_or_else(
                || "no budget".to_owned(),
                |b| format!("budget ${b:.2}/month"),
            );
            writeln!(out, "cost          ${cost:.4}/hour · {budget}")?;
        }
        let Some(status) = &view.status else {
            return Ok(());
        };
        writeln!(out)?;
        writeln!(
            out,
            "desired {} · idle {} · busy {} · booting {} · stopping {} · failed {}",
            status.desired,
            status.idle,
            status.busy,
            status.booting,
            status.stopping,
            status.failed
        )?;
        let oldest = status
            .oldest_queued_secs
            .map(|s| format!(" (oldest waiting {})", secs(s)))
            .unwrap_or_default();
        writeln!(out, "queued jobs {}{oldest}", status.queued_jobs)?;
        let schedule = status
            .active_schedule
            .map(|idx| format!(" (schedule {idx})"))
            .unwrap_or_default();
        writeln!(out, "warm target {}{schedule}", status.min_idle)?;
        if let Some(spent) = status.spent_this_month {
            writeln!(out, "spent this month ${spent:.2}")?;
        }
        if status.budget_exhausted {
            writeln!(out, "scale-up held: the monthly budget is reached")?;
        }
        if let Some(until) = status.backoff_until {
            writeln!(
                out,
                "backing off until {}: {}",
                ts(until),
                status.backoff_reason.as_deref().unwrap_or("")
            )?;
        }
        if status.last_decisions.is_empty() {
            return Ok(());
        }
        writeln!(out)?;
        drop(out);
        print_table(decision_table(&status.last_decisions))
    }

    /// The forge, and the full webhook URL (`base` is the daemon's URL as nimbusctl reaches it).
    pub fn forge(&self, show: &ForgeShow, base: &str) -> anyhow::Result<()> {
        let webhook_url = show
            .webhook_path
            .as_ref()
            .map(|path| format!("{base}{path}"));
        if self.json {
            let mut value = serde_json::to_value(show)?;
            if let (Some(url), Some(object)) = (&webhook_url, value.as_object_mut()) {
                object.insert("webhook_url".into(), url.clone().into());
            }
            return self.json(&value);
        }
        let forge = &show.forge;
        let mut t = table(&["TYPE", "ORG", "CREDENTIALS", "UPDATED"]);
        t.add_row(vec![
            forge.forge_type.to_string(),
            forge.org.clone(),
            if forge.has_credentials {
                "sealed"
            } else {
                "none"
            }
            .to_owned(),
            ts(forge.updated_at),
        ]);
        print_table(t)?;
        if let Some(settings) = forge.config.as_object().filter(|c| !c.is_empty()) {
            let settings: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("settings: {}", settings.join(" "));
        }
        if let Some(url) = webhook_url {
            println!("webhook URL: {url}");
            println!(
                "(content type application/json, the same secret, the \"Workflow jobs\" event)"
            );
        }
        Ok(())
    }

    pub fn demand(&self, rows: &[DemandRow]) -> anyhow::Result<()> {
        if self.json {
            return self.json(rows);
        }
        let mut t = table(&[
            "TENANT",
            "LABELS",
            "QUEUED",
            "WAITING",
            "IN PROGRESS",
            "OLDEST",
        ]);
        for row in rows {
            t.add_row(vec![
                row.tenant_id.to_string(),
                row.labels.join(","),
                row.queued.to_string(),
                row.waiting.to_string(),
                row.in_progress.to_string(),
                row.oldest_queued_at.map(ts).unwrap_or_default(),
            ]);
        }
        print_table(t)
    }

    pub fn machines(&self, machines: &[Machine]) -> anyhow::Result<()> {
        if self.json {
            return self.json(machines);
        }
        let mut t = table(&["ID", "STATE", "PLATFORM", "LABELS", "IP", "CREATED"]);
        for m in machines {
            t.add_row(vec![
                m.id.to_string(),
                m.state.to_string(),
                format!("{}/{}", m.os, m.arch),
                m.labels.join(","),
                m.ip_address.clone().unwrap_or_default(),
                ts(m.created_at),
            ]);
        }
        print_table(t)
    }

    pub fn machine_detail(&self, m: &Machine, history: &[StateChange]) -> anyhow::Result<()> {
        if self.json {
            return self.json(&serde_json::json!({ "machine": m, "history": history }));
        }
        let mut t = table(&["FIELD", "VALUE"]);
        let rows = [
            ("id", m.id.to_string()),
            ("state", m.state.to_string()),
            ("tenant", m.tenant_id.to_string()),
            ("provider", m.provider_id.to_string()),
            ("platform", format!("{}/{}", m.os, m.arch)),
            ("labels", m.labels.join(",")),
            ("ip", m.ip_address.clone().unwrap_or_default()),
            ("instance type", m.instance_type.clone().unwrap_or_default()),
            (
                "image",
                format!(
                    "{} ({}, {})",
                    m.image.id.clone().unwrap_or_else(|| "-".into()),
                    m.image.image_type,
                    m.image.state
                ),
            ),
            (
                "instance id",
                m.provider_metadata.instance_id.clone().unwrap_or_default(),
            ),
            (
                "host id",
                m.provider_metadata.host_id.clone().unwrap_or_default(),
            ),
            ("created", ts(m.created_at)),
            ("updated", ts(m.updated_at)),
            ("error", m.error.clone().unwrap_or_default()),
        ];
        for (field, value) in rows {
            if !value.is_empty() {
                t.add_row(vec![field.to_owned(), value]);
            }
        }
        print_table(t)?;
        if let Some(progress) = &m.setup_progress {
            println!("\nSETUP");
            let mut t = table(&["STEP", "STATUS", "STARTED", "TOOK", "ERROR"]);
            for step in &progress.steps {
                let took = match (step.started_at, step.finished_at) {
                    (Some(start), Some(end)) => format!("{:.1}s", (end - start).as_seconds_f64()),
                    _ => String::new(),
                };
                t.add_row(vec![
                    step.name.clone(),
                    step.status.to_string(),
                    step.started_at.map(ts).unwrap_or_default(),
                    took,
                    step.error.clone().unwrap_or_default(),
                ]);
            }
            print_table(t)?;
        }
        if !history.is_empty() {
            println!("\nHISTORY");
            let mut t = table(&["AT", "STATE", "REASON"]);
            for change in history {
                t.add_row(vec![
                    ts(change.at),
                    change.state.to_string(),
                    change.reason.clone().unwrap_or_default(),
                ]);
            }
            print_table(t)?;
        }
        Ok(())
    }

    pub fn can_terminate(&self, answer: &CanTerminate) -> anyhow::Result<()> {
        if self.json {
            return self.json(answer);
        }
        if answer.can_terminate {
            println!("yes");
        } else {
            let mut line = format!(
                "no: {}",
                answer
                    .message
                    .as_deref()
                    .or(answer.error.as_deref())
                    .unwrap_or("refused")
            );
            if let Some(hours) = answer.hours_remaining {
                line.push_str(&format!(" ({hours:.1} hours remaining)"));
            }
            println!("{line}");
        }
        Ok(())
    }

    pub fn done(&self, message: &str) -> anyhow::Result<()> {
        if self.json {
            return self.json(&serde_json::json!({ "ok": true, "message": message }));
        }
        println!("{message}");
        Ok(())
    }

    /// Progress while waiting goes to stderr, so stdout stays the final result.
    pub fn progress(&self, machine: &Machine, elapsed: Duration) {
        if self.json {
            return;
        }
        eprintln!(
            "{:>7.1}s  {}  {}",
            elapsed.as_secs_f64(),
            machine.id,
            machine.state
        );
    }

    pub fn event(&self, out: &mut impl Write, event: &Event) -> anyhow::Result<()> {
        if self.json {
            serde_json::to_writer(&mut *out, event)?;
            writeln!(out)?;
            return Ok(());
        }
        let mut line = format!("{:>6} {} {}", event.seq, ts(event.at), event.name);
        if let Some(machine) = event.machine_id {
            line.push_str(&format!(" machine={machine}"));
        }
        if let Some(duration) = event.duration {
            line.push_str(&format!(" duration={duration:.3}s"));
        }
        if let Some(error) = &event.error {
            line.push_str(&format!(" error={error:?}"));
        }
        writeln!(out, "{line}")?;
        Ok(())
    }
}
