//! The CI tables (`ci_runs`, `ci_jobs`): what `nimbusd` needs to carry a Nimbus Git run
//! through a restart. The forge holds the run's presentation (logs, step states); these rows
//! hold the plan and where each job is.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{SqlStore, conflict, micros, tenant_missing, timestamp};
use crate::ci::{CiJob, CiJobState, CiRun, CiStore};
use crate::{Error, Result};
use nimbus_types::{MachineId, TenantId};

const RUN_COLUMNS: &str = "id, tenant_id, delivery_id, repository, workflow, name, number, sha, \
     git_ref, pusher, concurrency_group, error, active, created_at, updated_at";
const JOB_COLUMNS: &str = "id, run_id, tenant_id, job_key, attempt, plan, labels, state, machine_id, created_at, updated_at";

#[async_trait]
impl CiStore for SqlStore {
    async fn insert_ci_run(&self, run: &CiRun, jobs: &[CiJob]) -> Result<bool> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO ci_runs ({RUN_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (tenant_id, delivery_id, workflow) DO NOTHING"
        ))
        .bind(run.id.clone())
        .bind(run.tenant_id.to_string())
        .bind(run.delivery_id.clone())
        .bind(run.repository.clone())
        .bind(run.workflow.clone())
        .bind(run.name.clone())
        .bind(run.number.map(|n| n as i64))
        .bind(run.sha.clone())
        .bind(run.git_ref.clone())
        .bind(run.pusher.clone())
        .bind(run.concurrency_group.clone())
        .bind(run.error.clone())
        .bind(i64::from(run.active))
        .bind(micros(run.created_at))
        .bind(micros(run.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(tenant_missing)?;
        if inserted.rows_affected() == 0 {
            return Ok(false);
        }
        for job in jobs {
            insert_job(&mut tx, job).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn set_ci_run_number(&self, id: &str, number: u64) -> Result<()> {
        let _guard = self.write_guard().await;
        sqlx::query("UPDATE ci_runs SET number = $1, updated_at = $2 WHERE id = $3")
            .bind(number as i64)
            .bind(micros(nimbus_types::now()))
            .bind(id.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_ci_run(&self, id: &str) -> Result<CiRun> {
        let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM ci_runs WHERE id = $1"))
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound { entity: "ci run" })?;
        run_from_row(&row)
    }

    async fn find_ci_run(
        &self,
        tenant_id: TenantId,
        repository: &str,
        number: u64,
    ) -> Result<Option<CiRun>> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM ci_runs WHERE tenant_id = $1 AND repository = $2 \
             AND number = $3"
        ))
        .bind(tenant_id.to_string())
        .bind(repository.to_owned())
        .bind(number as i64)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn list_active_ci_runs(&self) -> Result<Vec<CiRun>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM ci_runs WHERE active = 1 ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn set_ci_run_active(&self, id: &str, active: bool) -> Result<()> {
        let _guard = self.write_guard().await;
        sqlx::query("UPDATE ci_runs SET active = $1, updated_at = $2 WHERE id = $3")
            .bind(i64::from(active))
            .bind(micros(nimbus_types::now()))
            .bind(id.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_ci_jobs(&self, run_id: &str) -> Result<Vec<CiJob>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM ci_jobs WHERE run_id = $1 ORDER BY created_at, id"
        ))
        .bind(run_id.to_owned())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn list_ci_jobs_in(&self, states: &[CiJobState]) -> Result<Vec<CiJob>> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=states.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM ci_jobs WHERE state IN ({}) ORDER BY created_at, id",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for state in states {
            query = query.bind(state.as_str());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn update_ci_job(&self, job: &CiJob, expected: CiJobState) -> Result<bool> {
        let _guard = self.write_guard().await;
        let written = sqlx::query(
            "UPDATE ci_jobs SET state = $1, machine_id = $2, updated_at = $3 \
             WHERE id = $4 AND state = $5",
        )
        .bind(job.state.as_str())
        .bind(job.machine_id.map(|id| id.to_string()))
        .bind(micros(job.updated_at))
        .bind(job.id as i64)
        .bind(expected.as_str())
        .execute(&self.pool)
        .await?;
        Ok(written.rows_affected() == 1)
    }

    async fn replace_ci_job(&self, old_id: u64, job: &CiJob) -> Result<()> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM ci_jobs WHERE id = $1")
            .bind(old_id as i64)
            .execute(&mut *tx)
            .await?;
        insert_job(&mut tx, job).await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn insert_job(tx: &mut sqlx::Transaction<'static, sqlx::Any>, job: &CiJob) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO ci_jobs ({JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(job.id as i64)
    .bind(job.run_id.clone())
    .bind(job.tenant_id.to_string())
    .bind(job.key.clone())
    .bind(i64::from(job.attempt))
    .bind(job.plan.to_string())
    .bind(serde_json::to_string(&job.labels).map_err(|e| Error::Corrupt(e.to_string()))?)
    .bind(job.state.as_str())
    .bind(job.machine_id.map(|id| id.to_string()))
    .bind(micros(job.created_at))
    .bind(micros(job.updated_at))
    .execute(&mut **tx)
    .await
    .map_err(|err| conflict(err, "ci job"))?;
    Ok(())
}

fn run_from_row(row: &AnyRow) -> Result<CiRun> {
    let tenant: String = row.try_get("tenant_id")?;
    Ok(CiRun {
        id: row.try_get("id")?,
        tenant_id: tenant
            .parse()
            .map_err(|_| Error::Corrupt(format!("ci_runs.tenant_id {tenant:?}")))?,
        delivery_id: row.try_get("delivery_id")?,
        repository: row.try_get("repository")?,
        workflow: row.try_get("workflow")?,
        name: row.try_get("name")?,
        number: row.try_get::<Option<i64>, _>("number")?.map(|n| n as u64),
        sha: row.try_get("sha")?,
        git_ref: row.try_get("git_ref")?,
        pusher: row.try_get("pusher")?,
        concurrency_group: row.try_get("concurrency_group")?,
        error: row.try_get("error")?,
        active: row.try_get::<i64, _>("active")? != 0,
        created_at: timestamp(row, "created_at")?,
        updated_at: timestamp(row, "updated_at")?,
    })
}

fn job_from_row(row: &AnyRow) -> Result<CiJob> {
    let tenant: String = row.try_get("tenant_id")?;
    let state: String = row.try_get("state")?;
    let machine: Option<String> = row.try_get("machine_id")?;
    let plan: String = row.try_get("plan")?;
    let labels: String = row.try_get("labels")?;
    Ok(CiJob {
        id: row.try_get::<i64, _>("id")? as u64,
        run_id: row.try_get("run_id")?,
        tenant_id: tenant
            .parse()
            .map_err(|_| Error::Corrupt(format!("ci_jobs.tenant_id {tenant:?}")))?,
        key: row.try_get("job_key")?,
        attempt: row.try_get::<i64, _>("attempt")? as u32,
        plan: serde_json::from_str(&plan)
            .map_err(|e| Error::Corrupt(format!("ci_jobs.plan: {e}")))?,
        labels: serde_json::from_str(&labels)
            .map_err(|e| Error::Corrupt(format!("ci_jobs.labels: {e}")))?,
        state: CiJobState::parse(&state)
            .ok_or_else(|| Error::Corrupt(format!("ci_jobs.state {state:?}")))?,
        machine_id: machine
            .map(|m| {
                m.parse::<MachineId>()
                    .map_err(|_| Error::Corrupt(format!("ci_jobs.machine_id {m:?}")))
            })
            .transpose()?,
        created_at: timestamp(row, "created_at")?,
        updated_at: timestamp(row, "updated_at")?,
    })
}
