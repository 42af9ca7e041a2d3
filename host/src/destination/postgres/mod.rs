//! A PostgreSQL replica (`postgres://…`, feature `postgres`): every record's mods applied
//! to the table of its name in one schema, so that the replica holds what Spanner holds.
//!
//! Place in the flow: a [`Destination`](super::Destination) like the others, so the plugin
//! chain runs in front of it (rename, redact, drop columns before they reach the copy).
//!
//! Invariants:
//! - A batch is one PostgreSQL transaction (DDL included: [`tables`]), acknowledged after its
//!   commit: the checkpoint never passes a change the replica lacks.
//! - The stale-write guard: every row carries the version (commit timestamp, record sequence)
//!   of the change that last wrote it, and every delete leaves a tombstone with its version
//!   (in `_screamer_tombstones` of the same schema); a change older than either is not
//!   applied ([`sql`]). Replays after a crash, redeliveries and the late writes of a runner
//!   that lost its lease therefore leave the replica as Spanner had it. Tombstones older
//!   than [`TOMBSTONE_RETENTION`] behind the newest change applied are pruned: a runner
//!   frozen longer than that and writing afterwards could bring a deleted row back.
//! - PostgreSQL down, frozen or refusing connections: the batch is retried with backoff
//!   (each attempt bounded by [`ATTEMPT_TIMEOUT`]), nothing is acknowledged meanwhile, and
//!   only the batches in flight (one per partition) are held. Errors that need an operator
//!   (permissions, a missing schema) are retried too, logged as errors.
//! - With `--ordering transactions` ([`Destination::deliver_transactions`]) batches hold
//!   whole transactions in commit order; the replica keeps the last transaction applied in
//!   `_screamer_position`, updated in the same PostgreSQL transaction as the rows, and skips
//!   what it already applied: a restart, a crash or a runner taking over applies no
//!   transaction twice, and a reader of the replica never sees half of one.
//! - A record PostgreSQL refuses for good (a value out of range, a constraint the user
//!   added) is refused alone with PostgreSQL's message: the batch is applied again record by
//!   record, each under a savepoint, still in one transaction.

mod rows;
mod sql;
mod tables;
mod tls;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement, Transaction};

use self::rows::{Group, Position, RecordChanges, groups};
use self::sql::{Kind, Shape};
use self::tables::Tables;
use super::uri::PostgresUri;
use super::{Batch, Destination, DestinationError, Reporter};
use crate::client::Backoff;
use crate::observe::ReplicaRows;
use crate::timestamp::Timestamp;

/// How long one attempt at a batch (connect, apply, commit) may take before the
/// connection is dropped and the batch tried again: a frozen server must not hold a
/// partition forever.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a deleted row's tombstone is kept behind the newest change applied.
pub const TOMBSTONE_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Connections at most: batches of different partitions apply in parallel.
const POOL_SIZE: usize = 4;

/// How often old tombstones are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Prepared statements one connection keeps, at most (shapes vary with the columns an
/// update carries).
const MAX_STATEMENTS: usize = 256;

/// Applies batches to a PostgreSQL database.
pub struct Postgres {
    name: String,
    schema: String,
    config: tokio_postgres::Config,
    /// `None`: plain TCP (`sslmode=disable`).
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    tables: Tables,
    idle: Mutex<Vec<Connection>>,
    slots: tokio::sync::Semaphore,
    reporter: Reporter,
    pruned: Mutex<Instant>,
    /// Whole transactions in commit order arrive: keep and honour the position.
    transactions: bool,
    /// The position table is known to exist.
    position_table: AtomicBool,
}

/// Why a PostgreSQL replica cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The TLS settings cannot be used (a certificate that cannot be read, a mode not supported).
    #[error("{0}")]
    Tls(String),
    /// The server refused the replica's connection or schema.
    #[error("{0}")]
    Refused(String),
}

/// Records refused: their index (in the batch, or in the records applied) and why.
type Refusals = Vec<(usize, String)>;

/// One connection and the statements prepared on it.
struct Connection {
    client: Client,
    statements: HashMap<Shape, Statement>,
}

impl Postgres {
    /// Connects to the database `uri` names and makes sure the replica's schema and
    /// tombstones table exist. Refused credentials, a missing database or a schema this
    /// user cannot write are errors; a server that does not answer yet is waited for.
    pub async fn open(uri: &PostgresUri) -> Result<Self, PostgresError> {
        let (tls, sslmode) = tls::connector(uri).map_err(PostgresError::Tls)?;
        let mut config = config(uri);
        config.ssl_mode(sslmode);
        let postgres = Postgres {
            name: uri.to_string(),
            schema: uri.schema.clone(),
            config,
            tls,
            tables: Tables::new(&uri.schema),
            idle: Mutex::default(),
            slots: tokio::sync::Semaphore::new(POOL_SIZE),
            reporter: Reporter::default(),
            pruned: Mutex::new(Instant::now()),
            transactions: false,
            position_table: AtomicBool::new(false),
        };
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        // The client's connect timeout covers the TCP connection only: a frozen server
        // accepts it and never answers the start-up.
        let limit = postgres
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(ATTEMPT_TIMEOUT);
        let mut connection = loop {
            let why = match tokio::time::timeout(limit, postgres.connect()).await {
                Ok(Ok(c)) => break c,
                Ok(Err(e)) if is_transient(&e) => message(&e),
                Ok(Err(e)) => return Err(PostgresError::Refused(message(&e))),
                Err(_) => format!("no answer within {limit:?}"),
            };
            tracing::warn!(output = %postgres.name, "PostgreSQL not reachable yet; retrying: {why}");
            tokio::time::sleep(backoff.next_delay()).await;
        };
        postgres
            .prepare_schema(&mut connection.client)
            .await
            .map_err(|e| {
                PostgresError::Refused(format!("schema {:?}: {}", postgres.schema, message(&e)))
            })?;
        postgres.idle.lock().expect("not poisoned").push(connection);
        Ok(postgres)
    }

    async fn connect(&self) -> Result<Connection, tokio_postgres::Error> {
        let name = self.name.clone();
        let closed = move |e: tokio_postgres::Error| {
            tracing::debug!(output = %name, "PostgreSQL connection closed: {e}");
        };
        let client = match &self.tls {
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                tokio::spawn(async move { connection.await.map_err(closed) });
                client
            }
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                tokio::spawn(async move { connection.await.map_err(closed) });
                client
            }
        };
        Ok(Connection {
            client,
            statements: HashMap::new(),
        })
    }

    /// The schema and the tombstones table, if missing.
    async fn prepare_schema(&self, client: &mut Client) -> Result<(), tokio_postgres::Error> {
        let tx = client.transaction().await?;
        let exists = tx
            .query_opt(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1",
                &[&self.schema],
            )
            .await?
            .is_some();
        if !exists {
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                sql::ident(&self.schema)
            ))
            .await?;
        }
        for statement in sql::create_tombstones(&self.schema) {
            tx.batch_execute(&statement).await?;
        }
        tx.commit().await
    }

    /// An idle connection, or a new one.
    async fn connection(&self) -> Result<Connection, tokio_postgres::Error> {
        let idle = self.idle.lock().expect("not poisoned").pop();
        match idle {
            Some(c) if !c.client.is_closed() => Ok(c),
            _ => self.connect().await,
        }
    }

    /// Applies `records` once: `Ok` with what became of their changes and the records
    /// refused (index, reason), or the error that stopped the attempt.
    async fn attempt(
        &self,
        records: &[RecordChanges],
    ) -> Result<(ReplicaRows, Refusals), tokio_postgres::Error> {
        let mut connection = self.connection().await?;
        let applied = match self.apply(&mut connection, records, Isolation::Batch).await {
            Err(e) if is_refusal(&e) => {
                // Whatever the failed transaction prepared may name tables it created; and
                // a table someone changed is looked at again (a dropped column comes back).
                connection.statements.clear();
                self.tables.forget();
                self.apply(&mut connection, records, Isolation::Record)
                    .await
            }
            other => other,
        }?;
        self.idle.lock().expect("not poisoned").push(connection);
        Ok(applied)
    }

    /// Every change of `records` in one transaction, the DDL they need included (with
    /// whole transactions: those after the position, and the new position).
    async fn apply(
        &self,
        connection: &mut Connection,
        records: &[RecordChanges],
        isolation: Isolation,
    ) -> Result<(ReplicaRows, Refusals), tokio_postgres::Error> {
        let Connection { client, statements } = connection;
        let mut tx = client.transaction().await?;
        // Snapshot rows come before the stream and are not its transactions: the per-row
        // guard keeps them once, and they neither read nor move the position.
        let ordered = self.transactions && !records.iter().any(|r| r.snapshot);
        let skip = match ordered {
            true => self.applied_already(&tx, records).await?,
            false => 0,
        };
        let fresh = &records[skip..];
        let learned = self.tables.ensure(&tx, fresh).await?;
        let schema = &self.schema;
        let (mut rows, mut refused) = match isolation {
            Isolation::Batch => (
                run(&tx, statements, schema, groups(fresh)).await?,
                Vec::new(),
            ),
            Isolation::Record => run_each(&mut tx, statements, schema, fresh).await?,
        };
        if ordered && let Some(last) = fresh.last() {
            let p = last.position();
            let text = last.commit_timestamp.to_string();
            tx.execute(
                &sql::write_position(schema),
                &[&p.commit_nanos, &text, &p.transaction],
            )
            .await?;
        }
        tx.commit().await?;
        self.tables.learn(learned);
        if ordered {
            self.position_table.store(true, Ordering::Relaxed);
        }
        rows.stale += records[..skip].iter().map(|r| r.len() as u64).sum::<u64>();
        refused.iter_mut().for_each(|(i, _)| *i += skip);
        Ok((rows, refused))
    }

    /// How many of `records` (whole transactions, in order) the replica applied already:
    /// those at or before its position, which this transaction locks.
    async fn applied_already(
        &self,
        tx: &Transaction<'_>,
        records: &[RecordChanges],
    ) -> Result<usize, tokio_postgres::Error> {
        if !self.position_table.load(Ordering::Relaxed) {
            for statement in sql::create_position(&self.schema) {
                tx.batch_execute(&statement).await?;
            }
        }
        let row = tx.query_one(&sql::read_position(&self.schema), &[]).await?;
        let position = Position {
            commit_nanos: row.get(0),
            transaction: row.get(1),
        };
        Ok(records
            .iter()
            .take_while(|r| r.position() <= position)
            .count())
    }

    /// Prunes tombstones behind `newest` by the retention, at most every [`PRUNE_EVERY`].
    async fn prune(&self, newest: Timestamp) {
        {
            let mut pruned = self.pruned.lock().expect("not poisoned");
            if pruned.elapsed() < PRUNE_EVERY {
                return;
            }
            *pruned = Instant::now();
        }
        let before = newest.saturating_sub(TOMBSTONE_RETENTION).to_string();
        let Ok(connection) = self.connection().await else {
            return;
        };
        match connection
            .client
            .execute(&sql::prune_tombstones(&self.schema), &[&before])
            .await
        {
            Ok(n) => {
                tracing::debug!(output = %self.name, tombstones = n, "old tombstones pruned");
                self.idle.lock().expect("not poisoned").push(connection);
            }
            Err(e) => tracing::warn!(output = %self.name, "pruning tombstones: {}", message(&e)),
        }
    }
}

/// The client's settings: the URI's, `PGPASSWORD` when it has no password.
fn config(uri: &PostgresUri) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .user(&uri.user)
        .host(&uri.host)
        .port(uri.port)
        .dbname(&uri.database)
        .application_name(uri.application_name.as_deref().unwrap_or("screamer"))
        .connect_timeout(Duration::from_secs(uri.connect_timeout.unwrap_or(10)))
        // `IF NOT EXISTS` statements would log a notice each.
        .options("-c client_min_messages=warning");
    let password = uri
        .password
        .clone()
        .or_else(|| std::env::var("PGPASSWORD").ok());
    if let Some(password) = password {
        config.password(password);
    }
    config
}

/// How a transaction applies records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// All at once: any refusal fails the whole transaction.
    Batch,
    /// Each record under a savepoint of its own: a record PostgreSQL refuses is rolled
    /// back alone and reported with its reason.
    Record,
}

/// The changes of `records` in `tx`, each record under a savepoint of its own.
async fn run_each(
    tx: &mut Transaction<'_>,
    statements: &mut HashMap<Shape, Statement>,
    schema: &str,
    records: &[RecordChanges],
) -> Result<(ReplicaRows, Refusals), tokio_postgres::Error> {
    let (mut rows, mut refused) = (ReplicaRows::default(), Vec::new());
    for (i, record) in records.iter().enumerate() {
        let savepoint = tx.savepoint("record").await?;
        match run(&savepoint, statements, schema, groups([record])).await {
            Ok(applied) => {
                savepoint.commit().await?;
                rows.add(&applied);
            }
            Err(e) if is_refusal(&e) => {
                savepoint.rollback().await?;
                rows.refused += record.len() as u64;
                refused.push((i, message(&e)));
            }
            Err(e) => return Err(e),
        }
    }
    Ok((rows, refused))
}

/// Runs `groups` in order in `tx`, preparing each shape's statement once per connection.
async fn run(
    tx: &Transaction<'_>,
    statements: &mut HashMap<Shape, Statement>,
    schema: &str,
    groups: Vec<Group>,
) -> Result<ReplicaRows, tokio_postgres::Error> {
    let mut rows = ReplicaRows::default();
    for group in groups {
        let statement = match statements.get(&group.shape) {
            Some(s) => s.clone(),
            None => {
                let text = match group.shape.kind {
                    Kind::Upsert => sql::upsert(schema, &group.shape),
                    Kind::Delete => sql::delete(schema, &group.shape),
                };
                let s = tx.prepare(&text).await?;
                if statements.len() >= MAX_STATEMENTS {
                    statements.clear();
                }
                statements.insert(group.shape.clone(), s.clone());
                s
            }
        };
        let mut params: Vec<&(dyn ToSql + Sync)> = group
            .columns
            .iter()
            .map(|c| c as &(dyn ToSql + Sync))
            .collect();
        params.extend([
            &group.commit_timestamps as &(dyn ToSql + Sync),
            &group.sequences,
            &group.keys,
            &group.shape.table,
        ]);
        let written = tx.execute(&statement, &params).await?;
        let stale = (group.len() as u64).saturating_sub(written);
        match group.shape.kind {
            Kind::Upsert => rows.upserted += written,
            Kind::Delete => rows.deleted += written,
        }
        rows.stale += stale;
    }
    Ok(rows)
}

/// An error PostgreSQL will answer again for the same rows: bad data, a constraint, a
/// table someone changed so that the record no longer fits (its key is not the table's,
/// a column was dropped or retyped).
fn is_refusal(e: &tokio_postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else {
        return false;
    };
    let class = &db.code().code()[..2];
    // Two transactions creating one table at once collide in the catalog: not the rows'
    // fault, and the next attempt finds the table.
    let catalog_race = db.code() == &SqlState::UNIQUE_VIOLATION
        && db.table().is_some_and(|t| t.starts_with("pg_"));
    let misfit = [
        SqlState::INVALID_COLUMN_REFERENCE,
        SqlState::UNDEFINED_COLUMN,
        SqlState::DATATYPE_MISMATCH,
        SqlState::CANNOT_COERCE,
        SqlState::DUPLICATE_COLUMN,
        SqlState::WRONG_OBJECT_TYPE,
    ];
    ((class == "22" || class == "23") && !catalog_race) || misfit.contains(db.code())
}

/// An error that may go away by itself: no connection, a server starting or shutting down,
/// a deadlock, a serialization failure, a catalog race.
fn is_transient(e: &tokio_postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else {
        // A closed connection, or I/O (refused, reset, timed out); but a certificate
        // refused, a password missing or a configuration the client rejects are for good.
        return e.is_closed() || (has_io_source(e) && !super::is_tls_refusal(e));
    };
    let class = &db.code().code()[..2];
    matches!(class, "08" | "40" | "53" | "57" | "58")
        || db.code() == &SqlState::DUPLICATE_TABLE
        || (db.code() == &SqlState::UNIQUE_VIOLATION && !is_refusal(e))
}

/// Whether an I/O error is among `e`'s sources.
fn has_io_source(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = e.source();
    while let Some(source) = next {
        if source.is::<std::io::Error>() {
            return true;
        }
        next = source.source();
    }
    false
}

/// PostgreSQL's message for `e`, with its detail and the column or constraint it names.
fn message(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        return crate::error::chain(e);
    };
    let mut text = db.message().to_owned();
    if let Some(column) = db.column() {
        text.push_str(&format!(" (column {column:?})"));
    }
    if let Some(detail) = db.detail() {
        text.push_str(": ");
        text.push_str(detail);
    }
    text
}

#[async_trait::async_trait]
impl Destination for Postgres {
    fn name(&self) -> &str {
        &self.name
    }

    fn report_to(&mut self, reporter: Reporter) {
        self.reporter = reporter;
    }

    fn deliver_transactions(&mut self) {
        self.transactions = true;
    }

    async fn send(&self, batch: Batch) -> Result<(), DestinationError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (records, mut refused) = parse(&batch);
        let newest = records.iter().map(|(_, r)| r.commit_timestamp).max();
        let (indices, records): (Vec<usize>, Vec<RecordChanges>) = records.into_iter().unzip();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let _slot = self.slots.acquire().await.expect("never closed");
        let started = Instant::now();
        let (rows, rejected) = loop {
            match tokio::time::timeout(ATTEMPT_TIMEOUT, self.attempt(&records)).await {
                Ok(Ok(applied)) => break applied,
                Ok(Err(e)) if is_transient(&e) => tracing::warn!(output = %self.name,
                    "PostgreSQL did not take the batch; retrying: {}", message(&e)),
                Ok(Err(e)) => tracing::error!(output = %self.name,
                    "PostgreSQL refuses to apply the batch; retrying until it is fixed: {}", message(&e)),
                Err(_) => tracing::warn!(output = %self.name,
                    "PostgreSQL did not answer within {ATTEMPT_TIMEOUT:?}; retrying"),
            }
            self.reporter.retried();
            tokio::time::sleep(backoff.next_delay()).await;
        };
        self.reporter.applied(&rows, started.elapsed());
        if let Some(newest) = newest {
            self.prune(newest).await;
        }
        refused.extend(rejected.into_iter().map(|(i, why)| (indices[i], why)));
        refused.sort_by_key(|(i, _)| *i);
        if refused.is_empty() {
            return Ok(());
        }
        Err(DestinationError::Refused {
            destination: self.name.clone(),
            refused: batch.select(refused.iter().map(|(i, _)| *i)),
            reasons: refused.into_iter().map(|(_, why)| why).collect(),
        })
    }
}

/// The records of `batch` with their index, and those the replica cannot take, with why.
fn parse(batch: &Batch) -> (Vec<(usize, RecordChanges)>, Refusals) {
    let (mut records, mut refused) = (Vec::new(), Vec::new());
    for (i, line) in batch.payloads().enumerate() {
        match RecordChanges::of_line(line) {
            Ok(r) => records.push((i, r)),
            Err(why) => refused.push((i, why)),
        }
    }
    (records, refused)
}
