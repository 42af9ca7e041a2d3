//! Spanner partition store: Beam's `PartitionMetadata` table, plus a runner registry
//! (`<table>_Runners`) and partition leases (`<table>_Leases`), created by migrations.
//!
//! Every method is one read or one transaction; watermarks of all partitions a runner holds
//! go in a single commit (the checkpointer coalesces them), so metadata writes grow with
//! partitions x time, not with records. Liveness is per runner (one heartbeat write each),
//! not per partition: a lease is valid while its owner's `HeartbeatAt` is within the lease
//! duration of Spanner's clock and its epoch is the partition's current one. Every state or
//! watermark write re-reads the lease rows in its read-write transaction (fencing), so a
//! runner that lost a partition can write nothing more for it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gcloud_gax::grpc::{Code, Status};
use gcloud_googleapis::spanner::admin::database::v1::UpdateDatabaseDdlRequest;
use gcloud_googleapis::spanner::v1::Mutation;
use gcloud_spanner::admin::AdminClientConfig;
use gcloud_spanner::admin::client::Client as AdminClient;
use gcloud_spanner::client::{Client, ClientConfig, Error as ClientError};
use gcloud_spanner::key::Key;
use gcloud_spanner::mutation::{delete, insert, insert_or_update, update};
use gcloud_spanner::reader::{Reader, RowIterator};
use gcloud_spanner::row::Row;
use gcloud_spanner::statement::Statement;
use gcloud_spanner::value::CommitTimestamp;
use time::OffsetDateTime;

use super::{
    CLAIM_BATCH, Claim, Lease, Load, NewPartition, PartitionMetadata, PartitionState,
    PartitionStatus, PartitionStore, PartitionToken, RunnerLoad, RunnerStatus, StoreError,
    StoreStatus,
};
use crate::client::{Backoff, Endpoint, is_transient};
use crate::dsn::DatabaseName;
use crate::timestamp::Timestamp;

/// How long a metadata operation is retried while Spanner reports transient failures.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// Beam stores "no end" as the largest timestamp.
const NO_END: &str = "9999-12-31T23:59:59.999999999Z";

/// The columns and Spanner types the table must have.
const SCHEMA: &[(&str, &str)] = &[
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

/// SQL over [`SpannerStore::partitions_sql`]: a partition someone should be reading.
const ACTIVE: &str = "(p.State IN ('SCHEDULED', 'RUNNING') \
     OR (p.State = 'CREATED' AND blocked.PartitionToken IS NULL))";

/// Candidates a claim reads beyond its room: runners claiming at once often want the same
/// few partitions (the last ones of a failover), and a claim whose candidates were all taken
/// would wait for the next poll. Measured: the last dozen partitions of 10,000 went one per
/// 10 s poll without spares.
const CLAIM_SPARE: usize = 8;

/// The partition columns [`SpannerStore::decode`] reads (and a new row writes, with
/// `CreatedAt`), in [`insert_partition`]'s order.
const PARTITION_COLUMNS: &[&str] = &[
    "PartitionToken",
    "ParentTokens",
    "StartTimestamp",
    "EndTimestamp",
    "HeartbeatMillis",
    "State",
    "Watermark",
];

/// A [`PartitionStore`] in a Spanner table, shareable by several runners and processes.
pub struct SpannerStore {
    endpoint: Endpoint,
    database: DatabaseName,
    table: String,
    runners: String,
    leases: String,
    client: Client,
    writes: AtomicU64,
}

impl SpannerStore {
    /// Connects to the database that holds (or will hold) `table`.
    pub async fn connect(
        endpoint: &Endpoint,
        database: &DatabaseName,
        table: &str,
    ) -> Result<Self, StoreError> {
        if !valid_table_name(table) {
            return Err(StoreError::InvalidTableName(table.to_owned()));
        }
        let env = endpoint
            .environment()
            .await
            .map_err(|source| StoreError::Connect {
                table: table.to_owned(),
                source,
            })?;
        let mut config = ClientConfig {
            environment: env,
            ..Default::default()
        };
        // Metadata traffic is light: a few sessions are plenty.
        config.session_config.min_opened = 1;
        config.session_config.max_opened = 16;
        let client = Client::new(database.to_string(), config)
            .await
            .map_err(|source| StoreError::Spanner {
                table: table.to_owned(),
                source,
            })?;
        Ok(Self {
            endpoint: endpoint.clone(),
            database: database.clone(),
            table: table.to_owned(),
            runners: format!("{table}_Runners"),
            leases: format!("{table}_Leases"),
            client,
            writes: AtomicU64::new(0),
        })
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn err(&self, e: impl Into<ClientError>) -> StoreError {
        StoreError::Spanner {
            table: self.table.clone(),
            source: e.into(),
        }
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            table: self.table.clone(),
            message: e.to_string(),
        }
    }

    async fn query(&self, stmt: Statement) -> Result<Vec<Row>, StoreError> {
        self.retrying(|| async {
            let mut tx = self.client.single().await?;
            let mut iter = tx.query(stmt.clone()).await?;
            let mut rows = Vec::new();
            while let Some(row) = iter.next().await? {
                rows.push(row);
            }
            Ok::<_, ClientError>(rows)
        })
        .await
    }

    fn decode(&self, row: &Row) -> Result<PartitionMetadata, StoreError> {
        let c = |e: gcloud_spanner::row::Error| self.corrupt(e);
        let state: String = row.column_by_name("State").map_err(c)?;
        let end: OffsetDateTime = row.column_by_name("EndTimestamp").map_err(c)?;
        let end = Timestamp::from(end);
        Ok(PartitionMetadata {
            token: row
                .column_by_name::<String>("PartitionToken")
                .map_err(c)?
                .into(),
            parents: row
                .column_by_name::<Vec<String>>("ParentTokens")
                .map_err(c)?
                .into_iter()
                .map(PartitionToken::from)
                .collect(),
            start: row
                .column_by_name::<OffsetDateTime>("StartTimestamp")
                .map_err(c)?
                .into(),
            end: (end != no_end()).then_some(end),
            heartbeat_millis: row.column_by_name("HeartbeatMillis").map_err(c)?,
            state: PartitionState::parse(&state)
                .ok_or_else(|| self.corrupt(format!("unknown state {state:?}")))?,
            watermark: row
                .column_by_name::<OffsetDateTime>("Watermark")
                .map_err(c)?
                .into(),
        })
    }

    async fn columns(&self) -> Result<Vec<(String, String)>, StoreError> {
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

    async fn lease_tables_exist(&self) -> Result<bool, StoreError> {
        let mut stmt = Statement::new(
            "SELECT COUNT(*) FROM INFORMATION_SCHEMA.TABLES \
             WHERE TABLE_SCHEMA = '' AND TABLE_NAME IN UNNEST(@names)",
        );
        stmt.add_param("names", &vec![self.runners.clone(), self.leases.clone()]);
        let rows = self.query(stmt).await?;
        Ok(self.count(&rows, 0)? == 2)
    }

    async fn dialect_is_postgres(&self) -> Result<bool, StoreError> {
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
    async fn migrate(&self) -> Result<(), StoreError> {
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

    async fn run_migrations(&self) -> Result<(), StoreError> {
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

    /// Commits idempotent blind writes (heartbeats, deregistration) in a single RPC: no
    /// read-write transaction to begin, so a busy database (many runners checkpointing)
    /// delays them less, and applying one twice is harmless. Retried at a short interval:
    /// the emulator aborts a commit while any other transaction is active, and a heartbeat
    /// that backs off as long as a checkpoint does lost the race for 30 s at 20 runners.
    async fn blind_write(&self, mutations: Vec<Mutation>) -> Result<(), StoreError> {
        self.retrying_every(Duration::from_millis(50), || {
            self.client.apply_at_least_once(mutations.clone())
        })
        .await?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Runs `op` (a read or a commit) again while it fails transiently (aborted by a
    /// concurrent transaction, unavailable, connection lost), with jittered backoff up to a
    /// second, for up to [`RETRY_FOR`].
    async fn retrying<T, Fut>(&self, op: impl Fn() -> Fut) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        self.retrying_every(Duration::from_secs(1), op).await
    }

    /// [`Self::retrying`] with backoff up to `max_delay`.
    async fn retrying_every<T, Fut>(
        &self,
        max_delay: Duration,
        op: impl Fn() -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let mut backoff = Backoff::new(Duration::from_millis(20), max_delay);
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(ClientError::GRPC(status))
                    if is_transient(&status) && tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(table = %self.table, error = %status, "retrying metadata operation");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(self.err(e)),
            }
        }
    }

    /// Reads the states of `tokens` in a read-write transaction and commits, atomically,
    /// the mutations `plan` derives from them; returns what `plan` returns beside them.
    async fn read_modify_write<F>(
        &self,
        tokens: Vec<String>,
        plan: F,
    ) -> Result<Vec<String>, StoreError>
    where
        F: Fn(&[(String, PartitionState)]) -> (Vec<Mutation>, Vec<String>) + Send + Sync + 'static,
    {
        let plan = Arc::new(plan);
        let tokens = Arc::new(tokens);
        let table = Arc::new(self.table.clone());
        let (_, out) = self
            .retrying(|| {
                self.client.read_write_transaction(|tx| {
                    let (plan, tokens, table) = (plan.clone(), tokens.clone(), table.clone());
                    Box::pin(async move {
                        let keys: Vec<Key> = tokens.iter().map(|t| Key::new(t)).collect();
                        let mut reader =
                            tx.read(&table, &["PartitionToken", "State"], keys).await?;
                        let mut found = Vec::new();
                        while let Some(row) = reader.next().await? {
                            let token: String = row.column(0)?;
                            let state: String = row.column(1)?;
                            if let Some(state) = PartitionState::parse(&state) {
                                found.push((token, state));
                            }
                        }
                        let (mutations, out) = plan(&found);
                        tx.buffer_write(mutations);
                        Ok::<_, ClientError>(out)
                    })
                })
            })
            .await?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    /// Applies `plan`'s mutations for the leases `runner` still holds, in one read-write
    /// transaction that reads the lease rows first; returns the leases that were lost.
    async fn fenced<F>(
        &self,
        runner: &str,
        leases: &[Lease],
        plan: F,
    ) -> Result<Vec<Lease>, StoreError>
    where
        F: Fn(&[Lease]) -> Vec<Mutation> + Send + Sync + 'static,
    {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let plan = Arc::new(plan);
        let leases = Arc::new(leases.to_vec());
        let table = Arc::new(self.leases.clone());
        let runner = Arc::new(runner.to_owned());
        let (_, lost) = self
            .retrying(|| {
                self.client.read_write_transaction(|tx| {
                    let (plan, leases, table, runner) =
                        (plan.clone(), leases.clone(), table.clone(), runner.clone());
                    Box::pin(async move {
                        let keys: Vec<Key> =
                            leases.iter().map(|l| Key::new(&l.token.as_str())).collect();
                        let mut reader = tx
                            .read(&table, &["PartitionToken", "Owner", "Epoch"], keys)
                            .await?;
                        let mut current = Vec::new();
                        while let Some(row) = reader.next().await? {
                            let token: String = row.column(0)?;
                            let owner: Option<String> = row.column(1)?;
                            let epoch: i64 = row.column(2)?;
                            current.push((token, owner, epoch));
                        }
                        let (held, lost): (Vec<Lease>, Vec<Lease>) =
                            leases.iter().cloned().partition(|l| {
                                current.iter().any(|(t, o, e)| {
                                    t == l.token.as_str()
                                        && o.as_deref() == Some(runner.as_str())
                                        && *e == l.epoch
                                })
                            });
                        tx.buffer_write(plan(&held));
                        Ok::<_, ClientError>(lost)
                    })
                })
            })
            .await?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(lost)
    }

    /// SQL: the partitions' lease is free (no owner, or an owner not heard of within the
    /// lease duration, by Spanner's clock).
    fn free_lease_sql(lease_duration: Duration) -> String {
        format!(
            "(l.Owner IS NULL OR r.RunnerId IS NULL OR r.HeartbeatAt < \
             TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL {} MILLISECOND))",
            lease_duration.as_millis()
        )
    }

    /// SQL: the partitions table as `p`, joined with `blocked`: the CREATED partitions with a
    /// parent that has not FINISHED. Written as a join rather than a correlated subquery: the
    /// emulator evaluates a correlated subquery per row, and a count over 10,000 partitions
    /// took over 30 s that way (98 ms as a join).
    fn partitions_sql(&self) -> String {
        format!(
            "{t} AS p LEFT JOIN (
               SELECT DISTINCT child.PartitionToken
               FROM {t} AS child, UNNEST(child.ParentTokens) AS parent_token
               JOIN {t} AS parent ON parent.PartitionToken = parent_token
               WHERE child.State = 'CREATED' AND parent.State != 'FINISHED'
             ) AS blocked ON blocked.PartitionToken = p.PartitionToken",
            t = self.table
        )
    }

    fn count(&self, rows: &[Row], column: usize) -> Result<usize, StoreError> {
        let n: i64 = rows
            .first()
            .map(|r| r.column(column))
            .transpose()
            .map_err(|e| self.corrupt(e))?
            .unwrap_or(0);
        Ok(n as usize)
    }
}

fn keys<'a>(tokens: impl IntoIterator<Item = &'a String>) -> Vec<Key> {
    tokens.into_iter().map(|t| Key::new(t)).collect()
}

/// Every row of a read or query.
async fn read_all(mut rows: RowIterator<'_, impl Reader>) -> Result<Vec<Row>, Status> {
    let mut all = Vec::new();
    while let Some(row) = rows.next().await? {
        all.push(row);
    }
    Ok(all)
}

fn lease_lost(lease: &Lease) -> StoreError {
    StoreError::LeaseLost {
        token: lease.token.clone(),
        epoch: lease.epoch,
    }
}

fn insert_partition(table: &str, p: &NewPartition) -> Mutation {
    let parents: Vec<String> = p.parents.iter().map(|t| t.as_str().to_owned()).collect();
    let end: OffsetDateTime = p.end.unwrap_or_else(no_end).into();
    let start: OffsetDateTime = p.start.into();
    insert(
        table,
        &[PARTITION_COLUMNS, &["CreatedAt"]].concat(),
        &[
            &p.token.as_str(),
            &parents,
            &start,
            &end,
            &p.heartbeat_millis,
            &PartitionState::Created.as_str(),
            &start,
            &CommitTimestamp::new(),
        ],
    )
}

fn no_end() -> Timestamp {
    NO_END.parse().expect("constant timestamp")
}

fn valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 120
}

#[async_trait::async_trait]
impl PartitionStore for SpannerStore {
    async fn prepare(&self) -> Result<(), StoreError> {
        if self.dialect_is_postgres().await? {
            return Err(StoreError::UnsupportedDialect {
                table: self.table.clone(),
            });
        }
        let mut columns = self.columns().await?;
        if columns.is_empty() {
            self.migrate().await?;
            columns = self.columns().await?;
        }
        for (name, ty) in SCHEMA {
            match columns.iter().find(|(n, _)| n == name) {
                None => {
                    return Err(StoreError::SchemaMismatch {
                        table: self.table.clone(),
                        problem: format!("column {name} {ty} is missing"),
                    });
                }
                Some((_, found)) if found != ty => {
                    return Err(StoreError::SchemaMismatch {
                        table: self.table.clone(),
                        problem: format!("column {name} is {found}, expected {ty}"),
                    });
                }
                Some(_) => {}
            }
        }
        // A table from before leases (or from Beam) gets the registry and lease tables.
        if !self.lease_tables_exist().await? {
            self.migrate().await?;
        }
        Ok(())
    }

    async fn seed(&self, root: NewPartition) -> Result<bool, StoreError> {
        let existing = self
            .query(Statement::new(format!(
                "SELECT PartitionToken FROM {} LIMIT 1",
                self.table
            )))
            .await?;
        if !existing.is_empty() {
            return Ok(false);
        }
        let inserted = self.add_children(std::slice::from_ref(&root)).await?;
        Ok(inserted == 1)
    }

    async fn heartbeat(&self, runner: &str, capacity: usize) -> Result<(), StoreError> {
        let beat = insert_or_update(
            &self.runners,
            &["RunnerId", "HeartbeatAt", "MaxConnections"],
            &[&runner, &CommitTimestamp::new(), &(capacity as i64)],
        );
        self.blind_write(vec![beat]).await
    }

    async fn reset(&self, runner: &str) -> Result<(), StoreError> {
        let sql = Arc::new(format!(
            "UPDATE {} SET Owner = NULL WHERE Owner = @runner",
            self.leases
        ));
        let runner = Arc::new(runner.to_owned());
        self.retrying(|| {
            self.client.read_write_transaction(|tx| {
                let (sql, runner) = (sql.clone(), runner.clone());
                Box::pin(async move {
                    let mut stmt = Statement::new(sql.as_str());
                    stmt.add_param("runner", &*runner);
                    tx.update(stmt).await?;
                    Ok::<_, ClientError>(())
                })
            })
        })
        .await?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn deregister(&self, runner: &str) -> Result<(), StoreError> {
        let gone = delete(&self.runners, Key::new(&runner));
        self.blind_write(vec![gone]).await
    }

    async fn claim(
        &self,
        runner: &str,
        room: usize,
        lease_duration: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        let room = room.min(CLAIM_BATCH);
        if room == 0 {
            return Ok(Vec::new());
        }
        // Never our own partitions: if Spanner sees our heartbeat as late while we still
        // read them, re-claiming would fence our own readers and orphan the partitions.
        // (A crashed predecessor's leases were reset at start; a lapse releases them.)
        // Oldest first; among partitions of one age (siblings of a split, a fresh table) each
        // runner prefers a different order, so runners claiming at once rarely want the same
        // rows.
        let mut stmt = Statement::new(format!(
            "SELECT p.PartitionToken FROM {p} \
             LEFT JOIN {l} AS l ON l.PartitionToken = p.PartitionToken \
             LEFT JOIN {r} AS r ON r.RunnerId = l.Owner \
             WHERE {ACTIVE} AND {free} AND (l.Owner IS NULL OR l.Owner != @runner) \
             ORDER BY p.StartTimestamp, FARM_FINGERPRINT(CONCAT(p.PartitionToken, @runner)) \
             LIMIT {limit}",
            limit = room + CLAIM_SPARE,
            p = self.partitions_sql(),
            l = self.leases,
            r = self.runners,
            free = Self::free_lease_sql(lease_duration),
        ));
        stmt.add_param("runner", &runner);
        let candidates = self
            .query(stmt)
            .await?
            .iter()
            .map(|r| r.column::<String>(0).map_err(|e| self.corrupt(e)))
            .collect::<Result<Vec<_>, _>>()?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        // The claim itself checks the candidates again (other runners claim at the same
        // time), by key: it locks only the candidates, their leases and their parents. It
        // takes the first `room` still claimable, in the candidates' order.
        let live_sql = Arc::new(format!(
            "SELECT RunnerId FROM {} WHERE RunnerId IN UNNEST(@owners) AND HeartbeatAt >= \
               TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL {} MILLISECOND)",
            self.runners,
            lease_duration.as_millis()
        ));
        let (tables, runner) = (
            Arc::new((self.table.clone(), self.leases.clone())),
            Arc::new(runner.to_owned()),
        );
        let candidates = Arc::new(candidates);
        let (_, claimed) = self
            .retrying(|| {
                self.client.read_write_transaction(|tx| {
                    let (live_sql, tables, runner, candidates) = (
                        live_sql.clone(),
                        tables.clone(),
                        runner.clone(),
                        candidates.clone(),
                    );
                    Box::pin(async move {
                        let (table, leases) = &*tables;
                        let partitions = read_all(
                            tx.read(table, PARTITION_COLUMNS, keys(candidates.iter()))
                                .await?,
                        )
                        .await?;
                        let mut owners: HashMap<String, (Option<String>, i64)> = HashMap::new();
                        for row in read_all(
                            tx.read(
                                leases,
                                &["PartitionToken", "Owner", "Epoch"],
                                keys(candidates.iter()),
                            )
                            .await?,
                        )
                        .await?
                        {
                            owners.insert(row.column(0)?, (row.column(1)?, row.column(2)?));
                        }
                        let others: Vec<String> = owners
                            .values()
                            .filter_map(|(o, _)| o.clone())
                            .filter(|o| o != runner.as_str())
                            .collect::<HashSet<_>>()
                            .into_iter()
                            .collect();
                        let mut stmt = Statement::new(live_sql.as_str());
                        stmt.add_param("owners", &others);
                        let live: HashSet<String> = read_all(tx.query(stmt).await?)
                            .await?
                            .iter()
                            .map(|r| r.column(0))
                            .collect::<Result<_, _>>()?;
                        let mut parents = HashSet::new();
                        for row in &partitions {
                            if row.column_by_name::<String>("State")?
                                == PartitionState::Created.as_str()
                            {
                                parents.extend(row.column_by_name::<Vec<String>>("ParentTokens")?);
                            }
                        }
                        // A parent no longer in the table finished long ago (finished rows
                        // are deleted after a day).
                        let parents = if parents.is_empty() {
                            Vec::new()
                        } else {
                            read_all(
                                tx.read(table, &["PartitionToken", "State"], keys(&parents))
                                    .await?,
                            )
                            .await?
                        };
                        let unfinished: HashSet<String> = parents
                            .iter()
                            .filter(|r| {
                                r.column::<String>(1)
                                    .is_ok_and(|s| s != PartitionState::Finished.as_str())
                            })
                            .map(|r| r.column(0))
                            .collect::<Result<_, _>>()?;
                        let mut partitions = partitions;
                        partitions.sort_by_cached_key(|row| {
                            let token = row.column_by_name::<String>("PartitionToken").ok();
                            candidates.iter().position(|c| Some(c) == token.as_ref())
                        });
                        let mut claimed = Vec::new();
                        let mut mutations = Vec::new();
                        for row in partitions {
                            if claimed.len() == room {
                                break;
                            }
                            let token: String = row.column_by_name("PartitionToken")?;
                            let state: String = row.column_by_name("State")?;
                            let (owner, epoch) = owners.get(&token).cloned().unwrap_or((None, 0));
                            let ready = match PartitionState::parse(&state) {
                                Some(PartitionState::Created) => row
                                    .column_by_name::<Vec<String>>("ParentTokens")?
                                    .iter()
                                    .all(|p| !unfinished.contains(p)),
                                Some(PartitionState::Scheduled | PartitionState::Running) => true,
                                Some(PartitionState::Finished) | None => false,
                            };
                            let free = owner
                                .as_ref()
                                .is_none_or(|o| o != runner.as_str() && !live.contains(o));
                            if !(ready && free) {
                                continue;
                            }
                            mutations.push(insert_or_update(
                                leases,
                                &["PartitionToken", "Owner", "Epoch", "ClaimedAt"],
                                &[
                                    &token,
                                    &runner.as_str(),
                                    &(epoch + 1),
                                    &CommitTimestamp::new(),
                                ],
                            ));
                            if state == PartitionState::Created.as_str() {
                                mutations.push(update(
                                    table,
                                    &["PartitionToken", "State", "ScheduledAt"],
                                    &[
                                        &token,
                                        &PartitionState::Scheduled.as_str(),
                                        &CommitTimestamp::new(),
                                    ],
                                ));
                            }
                            claimed.push((row, epoch + 1));
                        }
                        tx.buffer_write(mutations);
                        Ok::<_, ClientError>(claimed)
                    })
                })
            })
            .await?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut claims = claimed
            .iter()
            .map(|(row, epoch)| {
                let mut partition = self.decode(row)?;
                if partition.state == PartitionState::Created {
                    partition.state = PartitionState::Scheduled;
                }
                let lease = Lease {
                    token: partition.token.clone(),
                    epoch: *epoch,
                };
                Ok(Claim { partition, lease })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        claims.sort_by_key(|c| c.partition.start);
        Ok(claims)
    }

    async fn mark_running(&self, runner: &str, lease: &Lease) -> Result<(), StoreError> {
        let table = self.table.clone();
        let lost = self
            .fenced(runner, std::slice::from_ref(lease), move |held| {
                held.iter()
                    .map(|l| {
                        update(
                            &table,
                            &["PartitionToken", "State", "RunningAt"],
                            &[
                                &l.token.as_str(),
                                &PartitionState::Running.as_str(),
                                &CommitTimestamp::new(),
                            ],
                        )
                    })
                    .collect()
            })
            .await?;
        match lost.first() {
            Some(l) => Err(lease_lost(l)),
            None => Ok(()),
        }
    }

    async fn add_children(&self, children: &[NewPartition]) -> Result<usize, StoreError> {
        let table = self.table.clone();
        let wanted = children.to_vec();
        let inserted = self
            .read_modify_write(
                children
                    .iter()
                    .map(|c| c.token.as_str().to_owned())
                    .collect(),
                move |found| {
                    let mut seen: Vec<&str> = found.iter().map(|(t, _)| t.as_str()).collect();
                    let mut mutations = Vec::new();
                    let mut inserted = Vec::new();
                    for c in &wanted {
                        if !seen.contains(&c.token.as_str()) {
                            seen.push(c.token.as_str());
                            mutations.push(insert_partition(&table, c));
                            inserted.push(c.token.as_str().to_owned());
                        }
                    }
                    (mutations, inserted)
                },
            )
            .await?;
        Ok(inserted.len())
    }

    async fn update_watermarks(
        &self,
        runner: &str,
        marks: &[(Lease, Timestamp)],
    ) -> Result<Vec<Lease>, StoreError> {
        let table = self.table.clone();
        let by_token: Arc<Vec<(Lease, Timestamp)>> = Arc::new(marks.to_vec());
        let leases: Vec<Lease> = marks.iter().map(|(l, _)| l.clone()).collect();
        self.fenced(runner, &leases, move |held| {
            by_token
                .iter()
                .filter(|(l, _)| held.contains(l))
                .map(|(l, w)| {
                    let w: OffsetDateTime = (*w).into();
                    update(
                        &table,
                        &["PartitionToken", "Watermark"],
                        &[&l.token.as_str(), &w],
                    )
                })
                .collect()
        })
        .await
    }

    async fn finish(
        &self,
        runner: &str,
        lease: &Lease,
        watermark: Timestamp,
    ) -> Result<(), StoreError> {
        let (table, leases) = (self.table.clone(), self.leases.clone());
        let w: OffsetDateTime = watermark.into();
        let lost = self
            .fenced(runner, std::slice::from_ref(lease), move |held| {
                held.iter()
                    .flat_map(|l| {
                        [
                            update(
                                &table,
                                &["PartitionToken", "State", "Watermark", "FinishedAt"],
                                &[
                                    &l.token.as_str(),
                                    &PartitionState::Finished.as_str(),
                                    &w,
                                    &CommitTimestamp::new(),
                                ],
                            ),
                            // A finished partition needs no lease: keep the lease table small.
                            delete(&leases, Key::new(&l.token.as_str())),
                        ]
                    })
                    .collect()
            })
            .await?;
        match lost.first() {
            Some(l) => Err(lease_lost(l)),
            None => Ok(()),
        }
    }

    async fn release(&self, runner: &str, leases: &[Lease]) -> Result<(), StoreError> {
        let table = self.leases.clone();
        self.fenced(runner, leases, move |held| {
            held.iter()
                .map(|l| {
                    update(
                        &table,
                        &["PartitionToken", "Owner"],
                        &[&l.token.as_str(), &None::<String>],
                    )
                })
                .collect()
        })
        .await
        .map(|_| ())
    }

    async fn owned(&self, runner: &str) -> Result<Vec<Lease>, StoreError> {
        let mut stmt = Statement::new(format!(
            "SELECT PartitionToken, Epoch FROM {} WHERE Owner = @runner",
            self.leases
        ));
        stmt.add_param("runner", &runner);
        self.query(stmt)
            .await?
            .iter()
            .map(|row| {
                let c = |e| self.corrupt(e);
                Ok(Lease {
                    token: row.column::<String>(0).map_err(c)?.into(),
                    epoch: row.column(1).map_err(c)?,
                })
            })
            .collect()
    }

    async fn load(&self, lease_duration: Duration) -> Result<Load, StoreError> {
        let runners = self
            .query(Statement::new(format!(
                "SELECT ANY_VALUE(r.MaxConnections), COUNT(l.PartitionToken) \
                 FROM {r} AS r LEFT JOIN {l} AS l ON l.Owner = r.RunnerId \
                 WHERE r.HeartbeatAt >= \
                   TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL {ms} MILLISECOND) \
                 GROUP BY r.RunnerId",
                r = self.runners,
                l = self.leases,
                ms = lease_duration.as_millis(),
            )))
            .await?
            .iter()
            .map(|row| {
                let c = |e| self.corrupt(e);
                Ok(RunnerLoad {
                    capacity: row.column::<i64>(0).map_err(c)?.max(0) as usize,
                    held: row.column::<i64>(1).map_err(c)?.max(0) as usize,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let rows = self
            .query(Statement::new(format!(
                "SELECT COUNT(*), COUNTIF({free}) FROM {p} \
                 LEFT JOIN {l} AS l ON l.PartitionToken = p.PartitionToken \
                 LEFT JOIN {r} AS r ON r.RunnerId = l.Owner \
                 WHERE {ACTIVE}",
                p = self.partitions_sql(),
                l = self.leases,
                r = self.runners,
                free = Self::free_lease_sql(lease_duration),
            )))
            .await?;
        Ok(Load {
            runners,
            active_partitions: self.count(&rows, 0)?,
            unowned_partitions: self.count(&rows, 1)?,
        })
    }

    async fn unfinished(&self) -> Result<usize, StoreError> {
        let rows = self
            .query(Statement::new(format!(
                "SELECT COUNT(*) FROM {} WHERE State != 'FINISHED'",
                self.table
            )))
            .await?;
        self.count(&rows, 0)
    }

    async fn status(&self, lease_duration: Duration) -> Result<StoreStatus, StoreError> {
        let c = |e: gcloud_spanner::row::Error| self.corrupt(e);
        let runners = self
            .query(Statement::new(format!(
                "SELECT r.RunnerId, ANY_VALUE(r.HeartbeatAt), ANY_VALUE(r.HeartbeatAt >= \
                   TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL {ms} MILLISECOND)), \
                 COUNT(l.PartitionToken) \
                 FROM {r} AS r LEFT JOIN {l} AS l ON l.Owner = r.RunnerId \
                 GROUP BY r.RunnerId ORDER BY r.RunnerId",
                r = self.runners,
                l = self.leases,
                ms = lease_duration.as_millis()
            )))
            .await?
            .iter()
            .map(|row| {
                Ok(RunnerStatus {
                    runner_id: row.column(0).map_err(c)?,
                    heartbeat_at: row.column::<OffsetDateTime>(1).map_err(c)?.into(),
                    alive: row.column(2).map_err(c)?,
                    partitions: row.column::<i64>(3).map_err(c)? as usize,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let partitions = self
            .query(Statement::new(format!(
                "SELECT p.PartitionToken, p.State, p.Watermark, l.Owner, l.Epoch \
                 FROM {t} AS p LEFT JOIN {l} AS l ON l.PartitionToken = p.PartitionToken \
                 WHERE p.State != 'FINISHED' ORDER BY p.StartTimestamp",
                t = self.table,
                l = self.leases
            )))
            .await?
            .iter()
            .map(|row| {
                Ok(PartitionStatus {
                    token: row.column::<String>(0).map_err(c)?.into(),
                    state: row.column(1).map_err(c)?,
                    watermark: row.column::<OffsetDateTime>(2).map_err(c)?.into(),
                    owner: row.column(3).map_err(c)?,
                    epoch: row.column(4).map_err(c)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(StoreStatus {
            runners,
            partitions,
        })
    }

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}
