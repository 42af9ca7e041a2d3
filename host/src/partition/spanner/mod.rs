//! Spanner partition store: Beam's `PartitionMetadata` table, plus a runner registry
//! (`<table>_Runners`), partition leases (`<table>_Leases`) and the active runner of
//! `--ordering transactions` (`<table>_Active`), created by migrations.
//!
//! Every method is one read or one transaction; watermarks of all partitions a runner holds
//! go in a single commit (the checkpointer coalesces them), so metadata writes grow with
//! partitions x time, not with records. Liveness is per runner (one heartbeat write each),
//! not per partition: a lease is valid while its owner's `HeartbeatAt` is within the lease
//! duration of Spanner's clock and its epoch is the partition's current one. Every state or
//! watermark write re-reads the lease rows in its read-write transaction (fencing), so a
//! runner that lost a partition can write nothing more for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gcloud_gax::grpc::Status;
use gcloud_googleapis::spanner::v1::Mutation;
use gcloud_spanner::client::ReadWriteTransactionOption;
use gcloud_spanner::client::{Client, ClientConfig, Error as ClientError};
use gcloud_spanner::key::Key;
use gcloud_spanner::mutation::{delete, insert_or_update, update};
use gcloud_spanner::reader::{Reader, RowIterator};
use gcloud_spanner::row::Row;
use gcloud_spanner::statement::Statement;
use gcloud_spanner::transaction::{CallOptions, QueryOptions};
use gcloud_spanner::transaction_rw::CommitOptions;
use gcloud_spanner::value::CommitTimestamp;
use time::OffsetDateTime;

use super::{
    Claim, Epoch, Lease, Load, NewPartition, PartitionState, PartitionStatus, PartitionStore,
    RunnerId, RunnerLoad, RunnerStatus, StoreError, StoreStatus,
};
use crate::client::{Backoff, Endpoint, Priority, is_transient};
use crate::dsn::DatabaseName;
use crate::timestamp::Timestamp;
use rows::insert_partition;
use schema::valid_table_name;
use sql::ACTIVE;

/// What a fenced write did: the leases it found lost (their mutations were not written) and
/// when it committed.
#[derive(Debug, Default)]
struct Fenced {
    lost: Vec<Lease>,
    committed_at: Option<Timestamp>,
}

/// The commit timestamp Spanner reported for a transaction.
fn commit_timestamp(commit: &gcloud_spanner::transaction_rw::CommitResult) -> Option<Timestamp> {
    let t = commit.timestamp.as_ref()?;
    Timestamp::from_unix_nanos(i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos))
}

/// The transaction tag of heartbeats and registrations (blind writes).
const REGISTRY_TAG: &str = "screamer-registry";

mod active;
mod claim;
mod rows;
mod schema;
mod sql;

/// How long a metadata operation is retried while Spanner reports transient failures.
pub(super) const RETRY_FOR: Duration = Duration::from_secs(30);

/// A [`PartitionStore`] in a Spanner table, shareable by several runners and processes.
pub struct SpannerStore {
    endpoint: Endpoint,
    database: DatabaseName,
    table: String,
    runners: String,
    leases: String,
    /// `<table>_Active`: the stream's active runner (`--ordering transactions`).
    active: String,
    client: Client,
    writes: AtomicU64,
    priority: Option<Priority>,
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
            active: format!("{table}_Active"),
            client,
            writes: AtomicU64::new(0),
            priority: None,
        })
    }

    /// Sends every metadata read and commit with `priority`.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    fn call_options(&self) -> CallOptions {
        CallOptions {
            priority: self.priority.map(Priority::proto),
            retry: None,
        }
    }

    /// Options of a read-write transaction tagged `tag` (`screamer-...`), for Spanner's
    /// transaction and lock statistics.
    fn transaction(&self, tag: &str) -> ReadWriteTransactionOption {
        ReadWriteTransactionOption {
            begin_options: self.call_options(),
            commit_options: self.commit(tag),
            transaction_tag: Some(tag.to_owned()),
        }
    }

    fn commit(&self, tag: &str) -> CommitOptions {
        CommitOptions {
            call_options: self.call_options(),
            transaction_tag: Some(tag.to_owned()),
            ..CommitOptions::default()
        }
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
            let options = QueryOptions {
                call_options: self.call_options(),
                ..QueryOptions::default()
            };
            let rows = read_all(tx.query_with_option(stmt.clone(), options).await?).await?;
            Ok::<_, ClientError>(rows)
        })
        .await
    }

    /// Commits idempotent blind writes (heartbeats, deregistration) in a single RPC: no
    /// read-write transaction to begin, so a busy database (many runners checkpointing)
    /// delays them less, and applying one twice is harmless. Retried at a short interval:
    /// the emulator aborts a commit while any other transaction is active, and a heartbeat
    /// that backs off as long as a checkpoint does lost the race for 30 s at 20 runners.
    async fn blind_write(&self, mutations: Vec<Mutation>) -> Result<(), StoreError> {
        self.retrying_every(Duration::from_millis(50), || {
            self.client
                .apply_at_least_once_with_option(mutations.clone(), self.commit(REGISTRY_TAG))
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
                self.client.read_write_transaction_with_option(
                    |tx| {
                        let (plan, tokens, table) = (plan.clone(), tokens.clone(), table.clone());
                        Box::pin(async move {
                            let columns = ["PartitionToken", "State"];
                            let mut found = Vec::new();
                            for row in
                                read_all(tx.read(&table, &columns, keys(&*tokens)).await?).await?
                            {
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
                    },
                    self.transaction("screamer-read-modify-write"),
                )
            })
            .await?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    /// Applies `plan`'s mutations for the leases `runner` still holds, in one read-write
    /// transaction that reads the lease rows first; returns the leases that were lost and
    /// the commit's timestamp.
    async fn fenced<F>(&self, runner: &str, leases: &[Lease], plan: F) -> Result<Fenced, StoreError>
    where
        F: Fn(&[Lease]) -> Vec<Mutation> + Send + Sync + 'static,
    {
        if leases.is_empty() {
            return Ok(Fenced::default());
        }
        let plan = Arc::new(plan);
        let leases = Arc::new(leases.to_vec());
        let table = Arc::new(self.leases.clone());
        let runner = Arc::new(runner.to_owned());
        let (commit, lost) = self
            .retrying(|| {
                self.client.read_write_transaction_with_option(
                    |tx| {
                        let (plan, leases, table, runner) =
                            (plan.clone(), leases.clone(), table.clone(), runner.clone());
                        Box::pin(async move {
                            let keys: Vec<Key> =
                                leases.iter().map(|l| Key::new(&l.token.as_str())).collect();
                            let columns = ["PartitionToken", "Owner", "Epoch"];
                            let mut current = Vec::new();
                            for row in read_all(tx.read(&table, &columns, keys).await?).await? {
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
                                            && Epoch::new(*e) == l.epoch
                                    })
                                });
                            tx.buffer_write(plan(&held));
                            Ok::<_, ClientError>(lost)
                        })
                    },
                    self.transaction("screamer-fenced-write"),
                )
            })
            .await?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(Fenced {
            lost,
            committed_at: commit_timestamp(&commit),
        })
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

pub(super) fn keys<'a>(tokens: impl IntoIterator<Item = &'a String>) -> Vec<Key> {
    tokens.into_iter().map(|t| Key::new(t)).collect()
}

/// Every row of a read or query.
pub(super) async fn read_all(mut rows: RowIterator<'_, impl Reader>) -> Result<Vec<Row>, Status> {
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

#[async_trait::async_trait]
impl PartitionStore for SpannerStore {
    async fn prepare(&self) -> Result<(), StoreError> {
        if self.dialect_is_postgres().await? {
            return Err(StoreError::UnsupportedDialect {
                table: self.table.clone(),
            });
        }
        self.check_columns().await?;
        // A table from before leases (or from Beam) gets the registry, lease and active tables.
        if !self.lease_tables_exist().await? {
            self.migrate().await?;
        }
        Ok(())
    }

    async fn seeded(&self) -> Result<bool, StoreError> {
        let existing = self
            .query(Statement::new(format!(
                "SELECT PartitionToken FROM {} LIMIT 1",
                self.table
            )))
            .await?;
        Ok(!existing.is_empty())
    }

    /// Reads whether the table is empty and inserts in the same read-write transaction, so
    /// of two runners seeding at once, one seeds and the other resumes from its rows.
    async fn seed(&self, partitions: Vec<NewPartition>) -> Result<bool, StoreError> {
        let sql = Arc::new(format!("SELECT PartitionToken FROM {} LIMIT 1", self.table));
        let inserts: Arc<Vec<Mutation>> = Arc::new(
            partitions
                .iter()
                .map(|p| insert_partition(&self.table, p))
                .collect(),
        );
        let (_, seeded) = self
            .retrying(|| {
                self.client.read_write_transaction_with_option(
                    |tx| {
                        let (sql, inserts) = (sql.clone(), inserts.clone());
                        Box::pin(async move {
                            let existing =
                                read_all(tx.query(Statement::new(sql.as_str())).await?).await?;
                            if !existing.is_empty() {
                                return Ok::<_, ClientError>(false);
                            }
                            tx.buffer_write(inserts.to_vec());
                            Ok(true)
                        })
                    },
                    self.transaction("screamer-seed"),
                )
            })
            .await?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(seeded)
    }

    async fn heartbeat(&self, runner: &RunnerId, capacity: usize) -> Result<(), StoreError> {
        let beat = insert_or_update(
            &self.runners,
            &["RunnerId", "HeartbeatAt", "MaxConnections"],
            &[
                &runner.as_str(),
                &CommitTimestamp::new(),
                &(capacity as i64),
            ],
        );
        self.blind_write(vec![beat]).await
    }

    async fn reset(&self, runner: &RunnerId) -> Result<(), StoreError> {
        let sql = Arc::new(format!(
            "UPDATE {} SET Owner = NULL WHERE Owner = @runner",
            self.leases
        ));
        let runner = Arc::new(runner.as_str().to_owned());
        self.retrying(|| {
            self.client.read_write_transaction_with_option(
                |tx| {
                    let (sql, runner) = (sql.clone(), runner.clone());
                    Box::pin(async move {
                        let mut stmt = Statement::new(sql.as_str());
                        stmt.add_param("runner", &*runner);
                        tx.update(stmt).await?;
                        Ok::<_, ClientError>(())
                    })
                },
                self.transaction("screamer-reset"),
            )
        })
        .await?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn deregister(&self, runner: &RunnerId) -> Result<(), StoreError> {
        let gone = delete(&self.runners, Key::new(&runner.as_str()));
        self.blind_write(vec![gone]).await
    }

    async fn claim(
        &self,
        runner: &RunnerId,
        room: usize,
        lease_duration: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        self.claim_batch(runner.as_str(), room, lease_duration)
            .await
    }

    async fn mark_running(
        &self,
        runner: &RunnerId,
        lease: &Lease,
    ) -> Result<Timestamp, StoreError> {
        let table = self.table.clone();
        let fenced = self
            .fenced(runner.as_str(), std::slice::from_ref(lease), move |held| {
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
        match fenced.lost.first() {
            Some(l) => Err(lease_lost(l)),
            None => Ok(fenced.committed_at.unwrap_or_else(Timestamp::now)),
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
        runner: &RunnerId,
        marks: &[(Lease, Timestamp)],
    ) -> Result<Vec<Lease>, StoreError> {
        let table = self.table.clone();
        let by_token: Arc<Vec<(Lease, Timestamp)>> = Arc::new(marks.to_vec());
        let leases: Vec<Lease> = marks.iter().map(|(l, _)| l.clone()).collect();
        let fenced = self
            .fenced(runner.as_str(), &leases, move |held| {
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
            .await?;
        Ok(fenced.lost)
    }

    async fn finish(
        &self,
        runner: &RunnerId,
        lease: &Lease,
        watermark: Timestamp,
    ) -> Result<(), StoreError> {
        let (table, leases) = (self.table.clone(), self.leases.clone());
        let w: OffsetDateTime = watermark.into();
        let lost = self
            .fenced(runner.as_str(), std::slice::from_ref(lease), move |held| {
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
            .await?
            .lost;
        match lost.first() {
            Some(l) => Err(lease_lost(l)),
            None => Ok(()),
        }
    }

    async fn release(&self, runner: &RunnerId, leases: &[Lease]) -> Result<(), StoreError> {
        let table = self.leases.clone();
        self.fenced(runner.as_str(), leases, move |held| {
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

    async fn owned(&self, runner: &RunnerId) -> Result<Vec<Lease>, StoreError> {
        let mut stmt = Statement::new(format!(
            "SELECT PartitionToken, Epoch FROM {} WHERE Owner = @runner",
            self.leases
        ));
        stmt.add_param("runner", &runner.as_str());
        self.query(stmt)
            .await?
            .iter()
            .map(|row| {
                let c = |e| self.corrupt(e);
                Ok(Lease {
                    token: row.column::<String>(0).map_err(c)?.into(),
                    epoch: Epoch::new(row.column(1).map_err(c)?),
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

    async fn activate(
        &self,
        runner: &RunnerId,
        lease_duration: Duration,
    ) -> Result<RunnerId, StoreError> {
        self.take_active(runner, lease_duration).await
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
                    runner_id: row.column::<String>(0).map_err(c)?.into(),
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
                    state: self.state(&row.column::<String>(1).map_err(c)?)?,
                    watermark: row.column::<OffsetDateTime>(2).map_err(c)?.into(),
                    owner: row
                        .column::<Option<String>>(3)
                        .map_err(c)?
                        .map(RunnerId::from),
                    epoch: row.column::<Option<i64>>(4).map_err(c)?.map(Epoch::new),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(StoreStatus {
            runners,
            partitions,
            active: self.live_active(lease_duration).await?,
        })
    }

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}
