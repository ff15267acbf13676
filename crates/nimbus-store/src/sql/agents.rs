//! The agent tables (`agent_enrolment_tokens`, `agents`, `agent_operations`).

use async_trait::async_trait;
use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;

use super::{SqlStore, conflict, micros, tenant_missing, timestamp};
use crate::agents::{
    AgentOpState, AgentOperation, AgentRecord, AgentStore, Enrolment, EnrolmentToken,
};
use crate::{Error, Result};
use nimbus_types::TenantId;

const AGENT_COLUMNS: &str = "id, tenant_id, name, enrolled_at, last_seen_at, report";
const OP_COLUMNS: &str = "id, agent_id, bmc, op, state, outcome, created_at, updated_at";

#[async_trait]
impl AgentStore for SqlStore {
    async fn create_enrolment_token(
        &self,
        token: &EnrolmentToken,
        token_sha256: &[u8],
    ) -> Result<()> {
        let _guard = self.write_guard().await;
        sqlx::query(
            "INSERT INTO agent_enrolment_tokens (id, tenant_id, agent_name, token_sha256, \
             created_at, expires_at, used_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(token.id.clone())
        .bind(token.tenant_id.to_string())
        .bind(token.agent_name.clone())
        .bind(token_sha256.to_vec())
        .bind(micros(token.created_at))
        .bind(micros(token.expires_at))
        .bind(token.used_at.map(micros))
        .execute(&self.pool)
        .await
        .map_err(|err| match err.as_database_error() {
            Some(db) if db.is_unique_violation() => Error::Conflict {
                entity: "enrolment token",
            },
            _ => tenant_missing(err),
        })?;
        Ok(())
    }

    async fn enrol_agent(
        &self,
        token_sha256: &[u8],
        agent_id: &str,
        credential_sha256: &[u8],
        now: OffsetDateTime,
    ) -> Result<Enrolment> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "SELECT id, tenant_id, agent_name, expires_at, used_at FROM agent_enrolment_tokens \
             WHERE token_sha256 = $1{}",
            self.lock_clause("UPDATE")
        ))
        .bind(token_sha256.to_vec())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(Enrolment::UnknownToken);
        };
        if row.try_get::<Option<i64>, _>("used_at")?.is_some() {
            return Ok(Enrolment::Used);
        }
        if timestamp(&row, "expires_at")? <= now {
            return Ok(Enrolment::Expired);
        }
        let token_id: String = row.try_get("id")?;
        let tenant: String = row.try_get("tenant_id")?;
        let tenant_id = parse_tenant(&tenant)?;
        let name: String = row.try_get("agent_name")?;
        // Only the first of two racing enrolments moves `used_at` from NULL.
        let used = sqlx::query(
            "UPDATE agent_enrolment_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL",
        )
        .bind(micros(now))
        .bind(token_id)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            return Ok(Enrolment::Used);
        }
        let inserted = sqlx::query(
            "INSERT INTO agents (id, tenant_id, name, credential_sha256, enrolled_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(agent_id.to_owned())
        .bind(tenant.clone())
        .bind(name.clone())
        .bind(credential_sha256.to_vec())
        .bind(micros(now))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(err) => {
                return match conflict(err, "agent") {
                    // The token stays unused (the transaction is rolled back): delete the
                    // other agent and enrol again with the same token.
                    Error::Conflict { .. } => Ok(Enrolment::NameTaken),
                    other => Err(other),
                };
            }
        }
        tx.commit().await?;
        Ok(Enrolment::Enrolled(AgentRecord {
            id: agent_id.to_owned(),
            tenant_id,
            name,
            enrolled_at: now,
            last_seen_at: None,
            report: None,
        }))
    }

    async fn agent_for_credential(&self, credential_sha256: &[u8]) -> Result<Option<AgentRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE credential_sha256 = $1"
        ))
        .bind(credential_sha256.to_vec())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn record_agent_heartbeat(
        &self,
        agent_id: &str,
        at: OffsetDateTime,
        report: &serde_json::Value,
    ) -> Result<()> {
        let _guard = self.write_guard().await;
        let written = sqlx::query("UPDATE agents SET last_seen_at = $1, report = $2 WHERE id = $3")
            .bind(micros(at))
            .bind(report.to_string())
            .bind(agent_id.to_owned())
            .execute(&self.pool)
            .await?;
        if written.rows_affected() == 0 {
            return Err(Error::NotFound { entity: "agent" });
        }
        Ok(())
    }

    async fn list_agents(&self, tenant_id: Option<TenantId>) -> Result<Vec<AgentRecord>> {
        let rows = match tenant_id {
            Some(tenant_id) => {
                sqlx::query(&format!(
                    "SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 ORDER BY name"
                ))
                .bind(tenant_id.to_string())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {AGENT_COLUMNS} FROM agents ORDER BY tenant_id, name"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(agent_from_row).collect()
    }

    async fn get_agent_by_name(&self, tenant_id: TenantId, name: &str) -> Result<AgentRecord> {
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 AND name = $2"
        ))
        .bind(tenant_id.to_string())
        .bind(name.to_owned())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(Error::NotFound { entity: "agent" })?;
        agent_from_row(&row)
    }

    async fn delete_agent(&self, tenant_id: TenantId, agent_id: &str) -> Result<()> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let owned = sqlx::query("SELECT id FROM agents WHERE id = $1 AND tenant_id = $2")
            .bind(agent_id.to_owned())
            .bind(tenant_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if owned.is_none() {
            return Err(Error::NotFound { entity: "agent" });
        }
        sqlx::query("DELETE FROM agent_operations WHERE agent_id = $1")
            .bind(agent_id.to_owned())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM agents WHERE id = $1")
            .bind(agent_id.to_owned())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn enqueue_agent_operation(&self, op: &AgentOperation) -> Result<()> {
        let _guard = self.write_guard().await;
        sqlx::query(&format!(
            "INSERT INTO agent_operations ({OP_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(op.id.clone())
        .bind(op.agent_id.clone())
        .bind(op.bmc.clone())
        .bind(op.op.to_string())
        .bind(op.state.as_str())
        .bind(op.outcome.as_ref().map(|o| o.to_string()))
        .bind(micros(op.created_at))
        .bind(micros(op.updated_at))
        .execute(&self.pool)
        .await
        .map_err(|err| match err.as_database_error() {
            Some(db) if db.is_foreign_key_violation() => Error::NotFound { entity: "agent" },
            _ => conflict(err, "agent operation"),
        })?;
        Ok(())
    }

    async fn claim_agent_operations(
        &self,
        agent_id: &str,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<AgentOperation>> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(&format!(
            "SELECT {OP_COLUMNS} FROM agent_operations WHERE agent_id = $1 AND state = 'pending' \
             ORDER BY created_at, id LIMIT $2{}",
            self.lock_clause("UPDATE")
        ))
        .bind(agent_id.to_owned())
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::new();
        for row in &rows {
            let mut op = op_from_row(row)?;
            let moved = sqlx::query(
                "UPDATE agent_operations SET state = 'running', updated_at = $1 \
                 WHERE id = $2 AND state = 'pending'",
            )
            .bind(micros(now))
            .bind(op.id.clone())
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() == 1 {
                op.state = AgentOpState::Running;
                op.updated_at = now;
                claimed.push(op);
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn finish_agent_operation(
        &self,
        agent_id: &str,
        id: &str,
        outcome: &serde_json::Value,
        now: OffsetDateTime,
    ) -> Result<bool> {
        let _guard = self.write_guard().await;
        let written = sqlx::query(
            "UPDATE agent_operations SET state = 'done', outcome = $1, updated_at = $2 \
             WHERE id = $3 AND agent_id = $4 AND state = 'running'",
        )
        .bind(outcome.to_string())
        .bind(micros(now))
        .bind(id.to_owned())
        .bind(agent_id.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(written.rows_affected() == 1)
    }

    async fn abandon_agent_operation(&self, id: &str, now: OffsetDateTime) -> Result<bool> {
        let _guard = self.write_guard().await;
        let written = sqlx::query(
            "UPDATE agent_operations SET state = 'abandoned', updated_at = $1 \
             WHERE id = $2 AND state IN ('pending', 'running')",
        )
        .bind(micros(now))
        .bind(id.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(written.rows_affected() == 1)
    }

    async fn get_agent_operation(&self, id: &str) -> Result<AgentOperation> {
        let row = sqlx::query(&format!(
            "SELECT {OP_COLUMNS} FROM agent_operations WHERE id = $1"
        ))
        .bind(id.to_owned())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(Error::NotFound {
            entity: "agent operation",
        })?;
        op_from_row(&row)
    }

    async fn prune_agent_operations(&self, before: OffsetDateTime) -> Result<u64> {
        let _guard = self.write_guard().await;
        let deleted = sqlx::query(
            "DELETE FROM agent_operations WHERE state IN ('done', 'abandoned') \
             AND updated_at < $1",
        )
        .bind(micros(before))
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }
}

fn parse_tenant(text: &str) -> Result<TenantId> {
    text.parse()
        .map_err(|_| Error::Corrupt(format!("tenant id {text:?}")))
}

fn json_column(row: &AnyRow, column: &str) -> Result<Option<serde_json::Value>> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|text| {
        serde_json::from_str(&text).map_err(|err| Error::Corrupt(format!("{column}: {err}")))
    })
    .transpose()
}

fn agent_from_row(row: &AnyRow) -> Result<AgentRecord> {
    let tenant: String = row.try_get("tenant_id")?;
    let last_seen: Option<i64> = row.try_get("last_seen_at")?;
    Ok(AgentRecord {
        id: row.try_get("id")?,
        tenant_id: parse_tenant(&tenant)?,
        name: row.try_get("name")?,
        enrolled_at: timestamp(row, "enrolled_at")?,
        last_seen_at: match last_seen {
            Some(_) => Some(timestamp(row, "last_seen_at")?),
            None => None,
        },
        report: json_column(row, "report")?,
    })
}

fn op_from_row(row: &AnyRow) -> Result<AgentOperation> {
    let state: String = row.try_get("state")?;
    Ok(AgentOperation {
        id: row.try_get("id")?,
        agent_id: row.try_get("agent_id")?,
        bmc: row.try_get("bmc")?,
        op: json_column(row, "op")?
            .ok_or_else(|| Error::Corrupt("agent_operations.op is empty".into()))?,
        state: AgentOpState::parse(&state)
            .ok_or_else(|| Error::Corrupt(format!("agent_operations.state {state:?}")))?,
        outcome: json_column(row, "outcome")?,
        created_at: timestamp(row, "created_at")?,
        updated_at: timestamp(row, "updated_at")?,
    })
}
