//! Spanner partition store: Beam's `PartitionMetadata` table, created by migrations.
//!
//! Every method is one read or one commit; watermarks of all partitions a runner holds go in
//! a single commit (the checkpointer coalesces them), so metadata writes grow with
//! partitions x time, not with records.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gcloud_googleapis::spanner::admin::database::v1::UpdateDatabaseDdlRequest;
use gcloud_googleapis::spanner::v1::Mutation;
use gcloud_spanner::admin::AdminClientConfig;
use gcloud_spanner::admin::client::Client as AdminClient;
use gcloud_spanner::client::{Client, ClientConfig, Error as ClientError};
use gcloud_spanner::key::Key;
use gcloud_spanner::mutation::{insert, update};
use gcloud_spanner::row::Row;
use gcloud_spanner::statement::Statement;
use gcloud_spanner::value::CommitTimestamp;
use time::OffsetDateTime;

use super::{
    NewPartition, PartitionMetadata, PartitionState, PartitionStore, PartitionToken, StoreError,
};
use crate::dsn::DatabaseName;
use crate::source::{Endpoint, is_transient_status};
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

const READ_COLUMNS: &str =
    "PartitionToken, ParentTokens, StartTimestamp, EndTimestamp, HeartbeatMillis, State, Watermark";

/// A [`PartitionStore`] in a Spanner table, shareable by several runners and processes.
pub struct SpannerStore {
    endpoint: Endpoint,
    database: DatabaseName,
    table: String,
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
            .map_err(|e| StoreError::Spanner {
                table: table.to_owned(),
                message: e.to_string(),
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
            .map_err(|e| StoreError::Spanner {
                table: table.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Self {
            endpoint: endpoint.clone(),
            database: database.clone(),
            table: table.to_owned(),
            client,
            writes: AtomicU64::new(0),
        })
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Spanner {
            table: self.table.clone(),
            message: e.to_string(),
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

    async fn partitions(&self, condition: &str) -> Result<Vec<PartitionMetadata>, StoreError> {
        let sql = format!(
            "SELECT {READ_COLUMNS} FROM {t} AS p WHERE {condition} ORDER BY p.StartTimestamp",
            t = self.table
        );
        self.query(Statement::new(sql))
            .await?
            .iter()
            .map(|r| self.decode(r))
            .collect()
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

    async fn migrate(&self) -> Result<(), StoreError> {
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
        ];
        let env = self.endpoint.environment().await.map_err(|e| self.err(e))?;
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

    async fn commit(&self, mutations: Vec<Mutation>) -> Result<(), StoreError> {
        if mutations.is_empty() {
            return Ok(());
        }
        self.retrying(|| self.client.apply(mutations.clone()))
            .await?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Runs `op` (a read or a commit) again while it fails transiently (aborted by a
    /// concurrent transaction, unavailable, connection lost), with jittered backoff, for up
    /// to [`RETRY_FOR`].
    async fn retrying<T, Fut>(&self, op: impl Fn() -> Fut) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let mut delay = Duration::from_millis(20);
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(ClientError::GRPC(status))
                    if is_transient_status(&status) && tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(table = %self.table, error = %status, "retrying metadata operation");
                    tokio::time::sleep(delay.mul_f64(0.5 + fastrand::f64())).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
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
}

fn insert_partition(table: &str, p: &NewPartition) -> Mutation {
    let parents: Vec<String> = p.parents.iter().map(|t| t.as_str().to_owned()).collect();
    let end: OffsetDateTime = p.end.unwrap_or_else(no_end).into();
    let start: OffsetDateTime = p.start.into();
    insert(
        table,
        &[
            "PartitionToken",
            "ParentTokens",
            "StartTimestamp",
            "EndTimestamp",
            "HeartbeatMillis",
            "State",
            "Watermark",
            "CreatedAt",
        ],
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

    async fn ready(&self) -> Result<Vec<PartitionMetadata>, StoreError> {
        self.partitions(&format!(
            "p.State = 'CREATED' AND NOT EXISTS (
               SELECT 1 FROM {t} AS parent
               WHERE parent.PartitionToken IN UNNEST(p.ParentTokens)
                 AND parent.State != 'FINISHED')",
            t = self.table
        ))
        .await
    }

    async fn in_progress(&self) -> Result<Vec<PartitionMetadata>, StoreError> {
        self.partitions("p.State IN ('SCHEDULED', 'RUNNING')").await
    }

    async fn schedule(&self, tokens: &[PartitionToken]) -> Result<Vec<PartitionToken>, StoreError> {
        let table = self.table.clone();
        let moved = self
            .read_modify_write(
                tokens.iter().map(|t| t.as_str().to_owned()).collect(),
                move |found| {
                    let moved: Vec<String> = found
                        .iter()
                        .filter(|(_, s)| *s == PartitionState::Created)
                        .map(|(t, _)| t.clone())
                        .collect();
                    let mutations = moved
                        .iter()
                        .map(|t| {
                            update(
                                &table,
                                &["PartitionToken", "State", "ScheduledAt"],
                                &[
                                    t,
                                    &PartitionState::Scheduled.as_str(),
                                    &CommitTimestamp::new(),
                                ],
                            )
                        })
                        .collect();
                    (mutations, moved)
                },
            )
            .await?;
        Ok(moved.into_iter().map(PartitionToken::from).collect())
    }

    async fn mark_running(&self, token: &PartitionToken) -> Result<(), StoreError> {
        let mutation = update(
            &self.table,
            &["PartitionToken", "State", "RunningAt"],
            &[
                &token.as_str(),
                &PartitionState::Running.as_str(),
                &CommitTimestamp::new(),
            ],
        );
        self.commit(vec![mutation]).await
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
        marks: &[(PartitionToken, Timestamp)],
    ) -> Result<(), StoreError> {
        let mutations = marks
            .iter()
            .map(|(t, w)| {
                let w: OffsetDateTime = (*w).into();
                update(
                    &self.table,
                    &["PartitionToken", "Watermark"],
                    &[&t.as_str(), &w],
                )
            })
            .collect();
        self.commit(mutations).await
    }

    async fn finish(&self, token: &PartitionToken, watermark: Timestamp) -> Result<(), StoreError> {
        let w: OffsetDateTime = watermark.into();
        let mutation = update(
            &self.table,
            &["PartitionToken", "State", "Watermark", "FinishedAt"],
            &[
                &token.as_str(),
                &PartitionState::Finished.as_str(),
                &w,
                &CommitTimestamp::new(),
            ],
        );
        self.commit(vec![mutation]).await
    }

    async fn unfinished(&self) -> Result<usize, StoreError> {
        let rows = self
            .query(Statement::new(format!(
                "SELECT COUNT(*) FROM {} WHERE State != 'FINISHED'",
                self.table
            )))
            .await?;
        let n: i64 = rows
            .first()
            .map(|r| r.column(0))
            .transpose()
            .map_err(|e| self.corrupt(e))?
            .unwrap_or(0);
        Ok(n as usize)
    }

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}
