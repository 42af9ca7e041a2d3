//! The metadata table's schema: Beam's columns, this host's registry and lease tables,
//! migrations that create what is missing, and the checks `prepare` runs before anything
//! else touches the table.

use std::time::Duration;

use gcloud_gax::grpc::Code;
use gcloud_googleapis::spanner::admin::database::v1::UpdateDatabaseDdlRequest;
use gcloud_spanner::admin::AdminClientConfig;
use gcloud_spanner::admin::client::Client as AdminClient;
use gcloud_spanner::statement::Statement;

use super::{RETRY_FOR, SpannerStore};
use crate::client::{Backoff, is_transient};
use crate::dsn::is_identifier;
use crate::partition::StoreError;

/// The columns and Spanner types the table must have.
pub(super) const SCHEMA: &[(&str, &str)] = &[
    ("PartitionToken", "STRING(MAX)"),
    ("ParentTokens", "ARRAY<STRING(MAX)>"),
    ("StartTimestamp", "TIMESTAMP"),
    ("EndTimestamp", "TIMESTAMP"),
    ("HeartbeatMillis", "INT64"),
    ("State", "STRING(MAX)"),
    ("Watermark", "TIMESTAMP"),
    ("CreatedAt", "TIMESTAMP"),
    ("ScheduledAt", "TIMESTAMP"),
    ("RunningAt", "TIMESTAMP"),
    ("FinishedAt", "TIMESTAMP"),
];

impl SpannerStore {
    /// Checks that the table has every Beam column with its type.
    pub(super) async fn check_columns(&self) -> Result<(), StoreError> {
        let mut columns = self.columns().await?;
        if columns.is_empty() {
            self.migrate().await?;
            columns = self.columns().await?;
        }
        for (name, ty) in SCHEMA {
            let problem = match columns.iter().find(|(n, _)| n == name) {
                None => format!("column {name} {ty} is missing"),
                Some((_, found)) if found != ty => {
                    format!("column {name} is {found}, expected {ty}")
                }
                Some(_) => continue,
            };
            return Err(StoreError::SchemaMismatch {
                table: self.table.clone(),
                problem,
            });
        }
        Ok(())
    }

    pub(super) async fn columns(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = Statement::new(
            "SELECT COLUMN_NAME, SPANNER_TYPE FROM INFORMATION_SCHEMA.COLUMNS \
             WHERE TABLE_SCHEMA = '' AND TABLE_NAME = @table",
        );
        stmt.add_param("table", &self.table);
        self.query(stmt)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.column::<String>(0).map_err(|e| self.corrupt(e))?,
                    r.column::<String>(1).map_err(|e| self.corrupt(e))?,
                ))
            })
            .collect()
    }

    pub(super) async fn lease_tables_exist(&self) -> Result<bool, StoreError> {
        let mut stmt = Statement::new(
            "SELECT COUNT(*) FROM INFORMATION_SCHEMA.TABLES \
             WHERE TABLE_SCHEMA = '' AND TABLE_NAME IN UNNEST(@names)",
        );
        let names = vec![
            self.runners.clone(),
            self.leases.clone(),
            self.active.clone(),
        ];
        stmt.add_param("names", &names);
        let rows = self.query(stmt).await?;
        Ok(self.count(&rows, 0)? == names.len())
    }

    pub(super) async fn dialect_is_postgres(&self) -> Result<bool, StoreError> {
        let rows = self
            .query(Statement::new(
                "SELECT option_value FROM information_schema.database_options \
                 WHERE option_name = 'database_dialect'",
            ))
            .await?;
        Ok(rows
            .first()
            .and_then(|r| r.column::<String>(0).ok())
            .is_some_and(|d| d == "POSTGRESQL"))
    }

    /// [`Self::run_migrations`], again while Spanner refuses the schema change because another
    /// runner is changing the schema or running a transaction (many runners start at once).
    /// Spanner says so with FAILED_PRECONDITION (measured on the emulator: "Schema change
    /// operation rejected because a concurrent schema change operation or read-write
    /// transaction is already in progress"); every statement is `IF NOT EXISTS`, so retrying
    /// any FAILED_PRECONDITION until the deadline is safe.
    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            match self.run_migrations().await {
                Err(e)
                    if e.status().is_some_and(|s| {
                        s.code() == Code::FailedPrecondition || is_transient(s)
                    }) && tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(table = %self.table, "schema change busy; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                other => return other,
            }
        }
    }

    pub(super) async fn run_migrations(&self) -> Result<(), StoreError> {
        let t = &self.table;
        let statements = vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                   PartitionToken STRING(MAX) NOT NULL,
                   ParentTokens ARRAY<STRING(MAX)> NOT NULL,
                   StartTimestamp TIMESTAMP NOT NULL,
                   EndTimestamp TIMESTAMP NOT NULL,
                   HeartbeatMillis INT64 NOT NULL,
                   State STRING(MAX) NOT NULL,
                   Watermark TIMESTAMP NOT NULL,
                   CreatedAt TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),
                   ScheduledAt TIMESTAMP OPTIONS (allow_commit_timestamp = true),
                   RunningAt TIMESTAMP OPTIONS (allow_commit_timestamp = true),
                   FinishedAt TIMESTAMP OPTIONS (allow_commit_timestamp = true),
                 ) PRIMARY KEY (PartitionToken),
                 ROW DELETION POLICY (OLDER_THAN(FinishedAt, INTERVAL 1 DAY))"
            ),
            format!("CREATE INDEX IF NOT EXISTS {t}_ByWatermark ON {t} (Watermark, State)"),
            format!(
                "CREATE INDEX IF NOT EXISTS {t}_ByCreatedAt ON {t} (CreatedAt, StartTimestamp)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {r} (
                   RunnerId STRING(MAX) NOT NULL,
                   HeartbeatAt TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),
                   MaxConnections INT64 NOT NULL,
                 ) PRIMARY KEY (RunnerId)",
                r = self.runners
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {l} (
                   PartitionToken STRING(MAX) NOT NULL,
                   Owner STRING(MAX),
                   Epoch INT64 NOT NULL,
                   ClaimedAt TIMESTAMP OPTIONS (allow_commit_timestamp = true),
                 ) PRIMARY KEY (PartitionToken)",
                l = self.leases
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {a} (
                   Stream STRING(64) NOT NULL,
                   RunnerId STRING(MAX) NOT NULL,
                   Since TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),
                 ) PRIMARY KEY (Stream)",
                a = self.active
            ),
        ];
        let env = self
            .endpoint
            .environment()
            .await
            .map_err(|source| StoreError::Connect {
                table: self.table.clone(),
                source,
            })?;
        let admin = AdminClient::new(AdminClientConfig {
            environment: env,
            ..Default::default()
        })
        .await
        .map_err(|e| self.err(e))?;
        let mut op = admin
            .database()
            .update_database_ddl(
                UpdateDatabaseDdlRequest {
                    database: self.database.to_string(),
                    statements,
                    ..Default::default()
                },
                None,
            )
            .await
            .map_err(|e| self.err(e))?;
        op.wait(None).await.map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// A table name that leaves room for the `_Runners`, `_Leases` and `_Active` suffixes.
pub(super) fn valid_table_name(name: &str) -> bool {
    is_identifier(name) && name.len() <= 120
}
