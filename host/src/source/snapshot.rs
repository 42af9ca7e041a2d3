//! The snapshot's reads: which rows the stream watches, their chunks, and a chunk's rows as
//! records (see [`crate::snapshot`] for where this sits in the flow).
//!
//! Every read is a single-use read-only transaction at the snapshot timestamp, so all
//! chunks, whoever reads them and whenever, see the database as it was at that instant. A
//! chunk is read with Spanner's `StreamingRead` over its primary-key range, in key order;
//! a transient error resumes after the last row handed on, so it repeats nothing.
//! Chunks, not Spanner's partitions, are what the metadata table keeps and runners share:
//! partition tokens (`PartitionRead`) belong to one session and transaction and cannot be
//! kept for another runner or a restart. With `--data-boost` a chunk's reader partitions its
//! own key range and reads the parts on Data Boost (which takes partitioned reads only);
//! those parts come in no key order, so a transient error there repeats the chunk.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use gcloud_gax::grpc::{Code, Streaming};
use gcloud_googleapis::spanner::v1::key_range::{EndKeyType, StartKeyType};
use gcloud_googleapis::spanner::v1::transaction_options::{Mode, ReadOnly, read_only};
use gcloud_googleapis::spanner::v1::transaction_selector::Selector;
use gcloud_googleapis::spanner::v1::{
    KeyRange, KeySet, PartialResultSet, PartitionReadRequest, ReadRequest, RequestOptions,
    StructType, TransactionOptions, TransactionSelector, TypeCode,
};
use prost_types::value::Kind;
use prost_types::{ListValue, Value as ProtoValue};
use serde_json::{Map, Value};

use super::decode::{Dialect, RowAssembler};
use super::session::{PooledSession, SessionPool, run_query};
use super::{ChangeQuery, SourceError, SourceOptions};
use crate::client::{Backoff, Priority};
use crate::partition::PartitionToken;
use crate::record::{
    ChangeRecord, ColumnType, DataChangeRecord, JsonObject, Mod, ModType, SpannerType,
    ValueCaptureType,
};
use crate::snapshot::{Chunk, SNAPSHOT_TRANSACTION};
use crate::timestamp::Timestamp;

/// Most chunks of a snapshot, shared among its tables: past it, chunks grow instead. The
/// plan is seeded in one commit (Spanner allows 80,000 mutations: about 9 per chunk).
const MAX_CHUNKS: usize = 4_000;

/// How often a chunk read resumes after transient errors before the reader's own retry
/// (from the chunk's start) takes over.
const RESUMES: u32 = 5;

/// The tag of every snapshot read, for Spanner's statistics.
pub const SNAPSHOT_TAG: &str = "screamer-snapshot-read";

/// A table the change stream watches, with the columns it watches.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchedTable {
    pub name: String,
    /// Primary key columns, in key order.
    pub keys: Vec<String>,
    /// The other watched columns, in table order.
    pub columns: Vec<String>,
    /// Every watched column's position in the table (from 1).
    pub ordinals: HashMap<String, i64>,
}

/// A table cut into chunks as its keys stream by: the keys that start the second and later
/// chunks, each with the rows before it, and the table's rows.
struct Cut {
    bounds: Vec<(Vec<Value>, u64)>,
    rows: u64,
    /// A bound every so many rows: `chunk_rows`, doubled while there would be too many.
    every: u64,
    most: usize,
}

impl Cut {
    fn new(chunk_rows: usize, most: usize) -> Self {
        Cut {
            bounds: Vec::new(),
            rows: 0,
            every: chunk_rows.max(1) as u64,
            most,
        }
    }

    /// The next row's key (made only when it is a bound).
    fn push(&mut self, key: impl FnOnce() -> Vec<Value>) {
        self.rows += 1;
        if self.rows.is_multiple_of(self.every) {
            let key = key();
            // A huge key would make a huge token (a metadata table's key is at most 8 KiB):
            // the chunk grows past it instead.
            if Value::from(key.clone()).to_string().len() <= MAX_BOUND_BYTES {
                // The first key of the next chunk, with the rows before it.
                self.bounds.push((key, self.rows - 1));
            }
        }
        if self.bounds.len() >= self.most {
            self.bounds = std::mem::take(&mut self.bounds)
                .into_iter()
                .skip(1)
                .step_by(2)
                .collect();
            self.every *= 2;
        }
    }
}

/// The longest chunk bound, as JSON: tokens stay far below Spanner's 8 KiB for a key.
const MAX_BOUND_BYTES: usize = 1024;

/// What the snapshot reads need of their source.
pub(super) struct SnapshotReads {
    pub sessions: Arc<SessionPool>,
    pub dialect: Dialect,
    pub priority: Option<Priority>,
    pub data_boost: bool,
    /// The stream's tables, looked up once.
    pub watched: tokio::sync::OnceCell<Vec<WatchedTable>>,
}

impl SnapshotReads {
    pub fn new(sessions: Arc<SessionPool>, dialect: Dialect, options: &SourceOptions) -> Self {
        Self {
            sessions,
            dialect,
            priority: options.priority,
            data_boost: options.data_boost,
            watched: tokio::sync::OnceCell::new(),
        }
    }

    /// The tables and columns `stream` watches, from the information schema.
    pub async fn watched(&self, stream: &str) -> Result<&[WatchedTable], SourceError> {
        self.watched
            .get_or_try_init(|| watched_tables(&self.sessions, self.dialect, stream))
            .await
            .map(Vec::as_slice)
    }

    /// Cuts every watched table, as it was at `at`, into chunks of `chunk_rows` rows.
    pub async fn plan(
        &self,
        stream: &str,
        at: Timestamp,
        chunk_rows: usize,
    ) -> Result<Vec<Chunk>, SourceError> {
        let mut chunks = Vec::new();
        let tables = self.watched(stream).await?;
        let most = (MAX_CHUNKS / tables.len().max(1)).max(1);
        for table in tables {
            let cut = self.boundaries(table, at, chunk_rows, most).await?;
            let (mut start, mut before) = (None, 0);
            let ends = cut.bounds.into_iter().map(Some).chain([None]);
            for (index, end) in ends.enumerate() {
                let (end, at_row) = match end {
                    Some((key, row)) => (Some(key), row),
                    None => (None, cut.rows),
                };
                chunks.push(Chunk {
                    table: table.name.clone(),
                    index,
                    rows: at_row - before,
                    start: start.take(),
                    end: end.clone(),
                });
                (start, before) = (end, at_row);
            }
        }
        Ok(chunks)
    }

    /// The keys that start the second and later chunks of `table`: every `chunk_rows`th
    /// key, or further apart to make at most `most` chunks.
    async fn boundaries(
        &self,
        table: &WatchedTable,
        at: Timestamp,
        chunk_rows: usize,
        most: usize,
    ) -> Result<Cut, SourceError> {
        let mut session = SessionPool::acquire(&self.sessions).await?;
        let request = self.request(&session, table, table.keys.clone(), full_range(), at);
        let mut stream = open(&mut session, request).await?;
        let mut cut = Cut::new(chunk_rows, most);
        let mut assembler = RowAssembler::default();
        while let Some(prs) = stream.message().await.map_err(|s| session.observe(s))? {
            for key in assembler.push(prs)? {
                cut.push(|| key.into_iter().map(to_json).collect());
            }
        }
        tracing::debug!(table = %table.name, rows = cut.rows, chunks = cut.bounds.len() + 1, "snapshot planned");
        Ok(cut)
    }

    fn request(
        &self,
        session: &PooledSession,
        table: &WatchedTable,
        columns: Vec<String>,
        range: KeyRange,
        at: Timestamp,
    ) -> ReadRequest {
        ReadRequest {
            session: session.name().to_owned(),
            transaction: Some(read_at(at)),
            table: table.name.clone(),
            columns,
            key_set: Some(KeySet {
                ranges: vec![range],
                ..Default::default()
            }),
            request_options: Some(RequestOptions {
                priority: self.priority.map_or(0, |p| p.proto() as i32),
                request_tag: SNAPSHOT_TAG.to_owned(),
                transaction_tag: String::new(),
            }),
            ..Default::default()
        }
    }
}

/// A read-only, single-use transaction that reads at exactly `at`.
fn read_at(at: Timestamp) -> TransactionSelector {
    TransactionSelector {
        selector: Some(Selector::SingleUse(read_only_at(at))),
    }
}

/// A read-only transaction at exactly `at`, begun to be shared by partitioned reads.
fn begin_at(at: Timestamp) -> TransactionSelector {
    TransactionSelector {
        selector: Some(Selector::Begin(read_only_at(at))),
    }
}

fn read_only_at(at: Timestamp) -> TransactionOptions {
    let nanos = at.unix_nanos();
    TransactionOptions {
        mode: Some(Mode::ReadOnly(ReadOnly {
            timestamp_bound: Some(read_only::TimestampBound::ReadTimestamp(
                prost_types::Timestamp {
                    seconds: nanos.div_euclid(1_000_000_000) as i64,
                    nanos: nanos.rem_euclid(1_000_000_000) as i32,
                },
            )),
            return_read_timestamp: false,
        })),
        ..Default::default()
    }
}

/// Splits `request`'s range into Spanner's partitions, in a transaction at `at`; returns
/// one read per partition, on Data Boost.
async fn partitioned(
    session: &mut PooledSession,
    request: ReadRequest,
    at: Timestamp,
) -> Result<VecDeque<ReadRequest>, SourceError> {
    let partition = PartitionReadRequest {
        session: request.session.clone(),
        transaction: Some(begin_at(at)),
        table: request.table.clone(),
        columns: request.columns.clone(),
        key_set: request.key_set.clone(),
        ..Default::default()
    };
    let response = session
        .client()
        .partition_read(partition, true, None)
        .await
        .map_err(|s| session.observe(s))?
        .into_inner();
    let transaction = TransactionSelector {
        selector: response.transaction.map(|t| Selector::Id(t.id)),
    };
    Ok(response
        .partitions
        .into_iter()
        .map(|p| ReadRequest {
            transaction: Some(transaction.clone()),
            partition_token: p.partition_token,
            data_boost_enabled: true,
            ..request.clone()
        })
        .collect())
}

async fn open(
    session: &mut PooledSession,
    request: ReadRequest,
) -> Result<Streaming<PartialResultSet>, SourceError> {
    let response = session.client().streaming_read(request, true, None).await;
    match response {
        Ok(r) => Ok(r.into_inner()),
        Err(s) => Err(session.observe(s)),
    }
}

/// Every key of a table.
fn full_range() -> KeyRange {
    KeyRange {
        start_key_type: Some(StartKeyType::StartClosed(ListValue::default())),
        end_key_type: Some(EndKeyType::EndClosed(ListValue::default())),
    }
}

/// The keys of a chunk from `start` (or just after `after`, when resuming).
fn chunk_range(chunk: &Chunk, after: Option<&ListValue>) -> KeyRange {
    let key = |k: &[Value]| ListValue {
        values: k.iter().map(from_json).collect(),
    };
    let start_key_type = match (after, &chunk.start) {
        (Some(last), _) => StartKeyType::StartOpen(last.clone()),
        (None, Some(start)) => StartKeyType::StartClosed(key(start)),
        (None, None) => StartKeyType::StartClosed(ListValue::default()),
    };
    let end_key_type = match &chunk.end {
        Some(end) => EndKeyType::EndOpen(key(end)),
        None => EndKeyType::EndClosed(ListValue::default()),
    };
    KeyRange {
        start_key_type: Some(start_key_type),
        end_key_type: Some(end_key_type),
    }
}

/// Spanner's JSON value of a protobuf value (they are the same values: INT64 and NUMERIC as
/// strings, BYTES as base64, NaN as a string).
fn to_json(v: ProtoValue) -> Value {
    match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
        }
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(to_json).collect()),
        Some(Kind::StructValue(s)) => {
            Value::Object(s.fields.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
    }
}

fn from_json(v: &Value) -> ProtoValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(from_json).collect(),
        }),
        Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), from_json(v))).collect(),
        }),
    };
    ProtoValue { kind: Some(kind) }
}

/// The tables and columns `stream` watches: every table of the default schema for a
/// `FOR ALL` stream, else the ones it names, with all their columns or those it names; key
/// columns always.
async fn watched_tables(
    sessions: &Arc<SessionPool>,
    dialect: Dialect,
    stream: &str,
) -> Result<Vec<WatchedTable>, SourceError> {
    Ok(Described::read(sessions, dialect, stream).await?.watched())
}

/// What the information schema says of a stream and the tables it may watch, as text rows.
#[derive(Debug, Default)]
struct Described {
    /// Tables the stream watches, and whether it watches all their columns.
    tables: Vec<(String, bool)>,
    /// (table, column) the stream names.
    named: Vec<(String, String)>,
    /// (table, column, ordinal position) of every column.
    columns: Vec<(String, String, i64)>,
    /// (table, column) of every primary key column, in key order.
    keys: Vec<(String, String)>,
}

impl Described {
    async fn read(
        sessions: &Arc<SessionPool>,
        dialect: Dialect,
        stream: &str,
    ) -> Result<Self, SourceError> {
        let schema = match dialect {
            Dialect::GoogleSql => "",
            Dialect::PostgreSql => "public",
        };
        // `stream` is an identifier (checked at connect): safe to splice. The fourth
        // column of CHANGE_STREAMS is `ALL`, a keyword in both dialects.
        let query = async |sql: String| run_query(sessions, &sql).await;
        let streams = query(format!(
            "SELECT * FROM information_schema.change_streams WHERE change_stream_name = '{stream}'"
        ))
        .await?;
        let for_all = streams
            .first()
            .and_then(|r| r.get(3))
            .is_some_and(|v| flag(v));
        let tables = match for_all {
            true => query(format!(
                "SELECT table_name, 'YES' FROM information_schema.tables \
                 WHERE table_schema = '{schema}' AND table_type = 'BASE TABLE'"
            )),
            false => query(format!(
                "SELECT table_name, all_columns FROM information_schema.change_stream_tables \
                 WHERE change_stream_name = '{stream}'"
            )),
        }
        .await?;
        let named = query(format!(
            "SELECT table_name, column_name FROM information_schema.change_stream_columns \
             WHERE change_stream_name = '{stream}'"
        ))
        .await?;
        let columns = query(format!(
            "SELECT table_name, column_name, ordinal_position FROM information_schema.columns \
             WHERE table_schema = '{schema}'"
        ))
        .await?;
        let keys = query(format!(
            "SELECT table_name, column_name FROM information_schema.index_columns \
             WHERE table_schema = '{schema}' AND index_name = 'PRIMARY_KEY' \
             ORDER BY table_name, ordinal_position"
        ))
        .await?;
        let pair = |r: Vec<String>| (r[0].clone(), r[1].clone());
        Ok(Described {
            tables: tables
                .into_iter()
                .map(|r| (r[0].clone(), flag(&r[1])))
                .collect(),
            named: named.into_iter().map(pair).collect(),
            columns: columns
                .into_iter()
                .map(|r| (r[0].clone(), r[1].clone(), r[2].parse().unwrap_or_default()))
                .collect(),
            keys: keys.into_iter().map(pair).collect(),
        })
    }

    /// The watched tables, by name: their keys, and their other watched columns in table
    /// order.
    fn watched(self) -> Vec<WatchedTable> {
        let mut watched: Vec<WatchedTable> = self
            .tables
            .iter()
            .map(|(name, every)| {
                let keys: Vec<String> = self
                    .keys
                    .iter()
                    .filter(|(t, _)| t == name)
                    .map(|(_, c)| c.clone())
                    .collect();
                let watches = |c: &String| {
                    *every
                        || keys.contains(c)
                        || self.named.iter().any(|(t, n)| t == name && n == c)
                };
                let mut columns: Vec<(i64, String)> = self
                    .columns
                    .iter()
                    .filter(|(t, c, _)| t == name && watches(c))
                    .map(|(_, c, ordinal)| (*ordinal, c.clone()))
                    .collect();
                columns.sort();
                WatchedTable {
                    name: name.clone(),
                    ordinals: columns.iter().map(|(o, c)| (c.clone(), *o)).collect(),
                    columns: columns
                        .into_iter()
                        .map(|(_, c)| c)
                        .filter(|c| !keys.contains(c))
                        .collect(),
                    keys,
                }
            })
            .collect();
        watched.sort_by(|a, b| a.name.cmp(&b.name));
        watched
    }
}

/// An information schema yes: GoogleSQL says `true`, PostgreSQL `YES`.
fn flag(v: &str) -> bool {
    v == "true" || v == "YES"
}

/// One chunk of the snapshot, read as a query that ends: its rows in key order, each a
/// snapshot record. Opens its read on the first batch asked for.
pub(crate) struct SnapshotQuery {
    reads: Arc<SnapshotReads>,
    table: WatchedTable,
    chunk: Chunk,
    token: PartitionToken,
    at: Timestamp,
    open: Option<OpenRead>,
    /// The key of the last row handed on: a resumed read starts after it.
    last_key: Option<ListValue>,
    backoff: Backoff,
    resumes: u32,
    /// An error that arrived behind rows already handed on.
    deferred: Option<gcloud_gax::grpc::Status>,
    done: bool,
}

struct OpenRead {
    session: PooledSession,
    stream: Streaming<PartialResultSet>,
    /// With Data Boost: the reads of the chunk's other partitions, in turn.
    parts: VecDeque<ReadRequest>,
    assembler: RowAssembler,
    shape: Option<Shape>,
}

/// How a read's rows become records: its columns' types, and which are keys.
struct Shape {
    names: Vec<String>,
    column_types: Arc<[ColumnType]>,
    keys: usize,
}

impl SnapshotQuery {
    pub(super) fn new(
        reads: Arc<SnapshotReads>,
        table: WatchedTable,
        chunk: Chunk,
        token: PartitionToken,
        at: Timestamp,
    ) -> Self {
        Self {
            reads,
            table,
            chunk,
            token,
            at,
            open: None,
            last_key: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            resumes: 0,
            deferred: None,
            done: false,
        }
    }

    async fn open(&mut self) -> Result<(), SourceError> {
        let mut session = SessionPool::acquire(&self.reads.sessions).await?;
        let columns = self
            .table
            .keys
            .iter()
            .chain(&self.table.columns)
            .cloned()
            .collect();
        let range = chunk_range(&self.chunk, self.last_key.as_ref());
        let request = self
            .reads
            .request(&session, &self.table, columns, range, self.at);
        let mut parts = match self.reads.data_boost {
            true => partitioned(&mut session, request, self.at).await?,
            false => VecDeque::from([request]),
        };
        let Some(first) = parts.pop_front() else {
            self.done = true;
            return Ok(());
        };
        let stream = open(&mut session, first)
            .await
            .map_err(|e| too_old(e, self.at))?;
        self.open = Some(OpenRead {
            session,
            stream,
            parts,
            assembler: RowAssembler::default(),
            shape: None,
        });
        Ok(())
    }

    /// Turns the rows of `prs` into records.
    fn decode(
        &mut self,
        prs: PartialResultSet,
        out: &mut Vec<ChangeRecord>,
    ) -> Result<(), SourceError> {
        let read = self.open.as_mut().expect("decoding an open read");
        let rows = read.assembler.push(prs)?;
        if read.shape.is_none()
            && let Some(columns) = read.assembler.columns()
        {
            read.shape = Some(shape(columns, &self.table));
        }
        let Some(shape) = &read.shape else {
            return Ok(());
        };
        for row in rows {
            self.last_key = Some(ListValue {
                values: row[..shape.keys].to_vec(),
            });
            out.push(ChangeRecord::Data(record(
                shape,
                row,
                &self.table.name,
                &self.token,
                self.at,
            )));
        }
        Ok(())
    }

    /// One part of the read ended: opens the next, or the chunk is done.
    async fn next_part(&mut self) -> Result<(), SourceError> {
        let read = self.open.as_mut().expect("a part was open");
        match read.parts.pop_front() {
            Some(request) => {
                read.stream = open(&mut read.session, request)
                    .await
                    .map_err(|e| too_old(e, self.at))?;
                // A part's result set starts with its own metadata: decode it afresh.
                read.assembler = RowAssembler::default();
            }
            None => self.done = true,
        }
        Ok(())
    }

    /// Handles a failed read: a transient error after some rows resumes after the last of
    /// them (at most [`RESUMES`] times); anything else goes to the reader.
    async fn failed(&mut self, status: gcloud_gax::grpc::Status) -> Result<(), SourceError> {
        let mut read = self.open.take().expect("a failed read was open");
        let error = too_old(read.session.observe(status), self.at);
        // Partitioned reads come in no key order: there is no row to resume after.
        if !error.is_transient() || self.resumes >= RESUMES || self.reads.data_boost {
            return Err(error);
        }
        self.resumes += 1;
        let delay = self.backoff.next_delay();
        tracing::warn!(partition = ?self.token, error = %error, retry_in = ?delay, "snapshot read failed; resuming after the last row");
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

#[async_trait::async_trait]
impl ChangeQuery for SnapshotQuery {
    /// The rows of the next partial result sets, as for a change stream query; `None` once
    /// the chunk's last row was handed on.
    async fn next_batch(&mut self, limit: usize) -> Result<Option<Vec<ChangeRecord>>, SourceError> {
        if let Some(status) = self.deferred.take() {
            self.failed(status).await?;
        }
        let mut records = Vec::new();
        while records.is_empty() {
            if self.done {
                return Ok(None);
            }
            if self.open.is_none() {
                self.open().await?;
                if self.done {
                    return Ok(None);
                }
            }
            let read = self.open.as_mut().expect("just opened");
            match read.stream.message().await {
                Ok(Some(prs)) => self.decode(prs, &mut records)?,
                Ok(None) => self.next_part().await?,
                Err(status) => self.failed(status).await?,
            }
        }
        while records.len() < limit && !self.done {
            let Some(read) = self.open.as_mut() else {
                break;
            };
            match read.stream.message().now_or_never() {
                None => break,
                Some(Ok(Some(prs))) => self.decode(prs, &mut records)?,
                // The next part opens with the next call.
                Some(Ok(None)) if !read.parts.is_empty() => break,
                Some(Ok(None)) => self.done = true,
                // Handled with the next call, after this batch.
                Some(Err(status)) => {
                    self.deferred = Some(status);
                    break;
                }
            }
        }
        Ok(Some(records))
    }
}

impl Drop for SnapshotQuery {
    fn drop(&mut self) {
        if !self.done
            && let Some(read) = &mut self.open
        {
            read.session.discard();
        }
    }
}

/// A read at a time past the database's version retention fails with FAILED_PRECONDITION:
/// say what to do about it.
fn too_old(e: SourceError, at: Timestamp) -> SourceError {
    match e {
        SourceError::Grpc(s) if s.code() == Code::FailedPrecondition => {
            SourceError::SnapshotTooOld {
                at: at.to_string(),
                message: s.message().to_owned(),
            }
        }
        other => other,
    }
}

fn shape(columns: &StructType, table: &WatchedTable) -> Shape {
    let names: Vec<String> = columns.fields.iter().map(|f| f.name.clone()).collect();
    let mut column_types: Vec<ColumnType> = columns
        .fields
        .iter()
        .map(|f| {
            let code = |t: i32| {
                TypeCode::try_from(t)
                    .map_or("TYPE_CODE_UNSPECIFIED", |c| c.as_str_name())
                    .to_owned()
            };
            let ty = f.r#type.clone().unwrap_or_default();
            ColumnType {
                name: f.name.clone(),
                column_type: SpannerType {
                    code: code(ty.code),
                    array_element_type: ty.array_element_type.map(|e| code(e.code)),
                },
                is_primary_key: table.keys.contains(&f.name),
                ordinal_position: table.ordinals.get(&f.name).copied().unwrap_or_default(),
            }
        })
        .collect();
    column_types.sort_by_key(|c| c.ordinal_position);
    Shape {
        names,
        column_types: column_types.into(),
        keys: table.keys.len(),
    }
}

/// One row as a snapshot record: an INSERT of the whole row, "committed" at `at`.
fn record(
    shape: &Shape,
    row: Vec<ProtoValue>,
    table: &str,
    token: &PartitionToken,
    at: Timestamp,
) -> DataChangeRecord {
    let (mut keys, mut values) = (Map::new(), Map::new());
    for (i, (name, value)) in shape.names.iter().zip(row).enumerate() {
        let side = if i < shape.keys {
            &mut keys
        } else {
            &mut values
        };
        side.insert(name.clone(), to_json(value));
    }
    DataChangeRecord {
        partition_token: token.clone(),
        commit_timestamp: at,
        record_sequence: "00000000".to_owned(),
        server_transaction_id: SNAPSHOT_TRANSACTION.to_owned(),
        is_last_record_in_transaction_in_partition: true,
        table_name: table.to_owned(),
        column_types: Arc::clone(&shape.column_types),
        mods: vec![Mod {
            keys: JsonObject::from(keys),
            new_values: JsonObject::from(values),
            old_values: JsonObject::default(),
        }],
        mod_type: ModType::Insert,
        value_capture_type: ValueCaptureType::from("NEW_ROW"),
        number_of_records_in_transaction: 1,
        number_of_partitions_in_transaction: 1,
        transaction_tag: String::new(),
        is_system_transaction: false,
        snapshot: true,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_are_cut_every_so_many_rows_into_at_most_so_many_chunks() {
        let cut = |rows: i64, chunk_rows, most| {
            let mut cut = Cut::new(chunk_rows, most);
            for id in 0..rows {
                cut.push(|| vec![json!(id.to_string())]);
            }
            let starts: Vec<(String, u64)> = cut
                .bounds
                .iter()
                .map(|(k, before)| (k[0].as_str().unwrap().to_owned(), *before))
                .collect();
            (starts, cut.rows)
        };
        // Keys "0".."9", a bound every third row: chunks [.."2") ["2".."5") ["5".."8") ["8"..).
        let three = |k: &str, before| (k.to_owned(), before);
        assert_eq!(
            cut(10, 3, 100),
            (vec![three("2", 2), three("5", 5), three("8", 8)], 10)
        );
        // At most two chunks: the bounds thin out and grow apart.
        let (bounds, rows) = cut(10, 3, 2);
        assert_eq!((bounds.len(), rows), (1, 10));
        // A key too long for a token is no bound: its chunk grows.
        let mut long = Cut::new(1, 100);
        long.push(|| vec![json!("x".repeat(MAX_BOUND_BYTES))]);
        long.push(|| vec![json!("short")]);
        assert_eq!(long.bounds.len(), 1);
        assert_eq!(long.bounds[0].1, 1);
    }

    #[test]
    fn a_stream_watches_its_tables_keys_and_named_columns_in_table_order() {
        let text = |s: &[(&str, &str)]| -> Vec<(String, String)> {
            s.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let described = Described {
            tables: vec![("Albums".into(), true), ("Singers".into(), false)],
            named: text(&[("Singers", "Score"), ("Singers", "Name")]),
            columns: [
                ("Singers", "Name", 2),
                ("Singers", "SingerId", 1),
                ("Singers", "Score", 4),
                ("Singers", "Bio", 3),
                ("Albums", "AlbumId", 2),
                ("Albums", "SingerId", 1),
                ("Albums", "Title", 3),
                ("Other", "X", 1),
            ]
            .map(|(t, c, o)| (t.to_owned(), c.to_owned(), o))
            .to_vec(),
            keys: text(&[
                ("Albums", "SingerId"),
                ("Albums", "AlbumId"),
                ("Singers", "SingerId"),
            ]),
        };
        let watched = described.watched();
        fn names(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let shape: Vec<(&str, Vec<&str>, Vec<&str>)> = watched
            .iter()
            .map(|t| (t.name.as_str(), names(&t.keys), names(&t.columns)))
            .collect();
        assert_eq!(
            shape,
            vec![
                ("Albums", vec!["SingerId", "AlbumId"], vec!["Title"]),
                ("Singers", vec!["SingerId"], vec!["Name", "Score"]),
            ]
        );
        assert_eq!(watched[1].ordinals["Score"], 4);
        assert!(!watched[1].ordinals.contains_key("Bio"));
    }

    #[test]
    fn json_and_protobuf_values_round_trip() {
        let v = json!(["1", null, 2.5, true, ["a"], {"k": "v"}]);
        assert_eq!(to_json(from_json(&v)), v);
    }

    #[test]
    fn chunk_ranges_are_closed_open_and_resume_after_the_last_row() {
        let chunk = Chunk {
            table: "T".into(),
            index: 1,
            rows: 10,
            start: Some(vec![json!("10")]),
            end: Some(vec![json!("20")]),
        };
        let key = |s: &str| ListValue {
            values: vec![from_json(&json!(s))],
        };
        let range = chunk_range(&chunk, None);
        assert_eq!(
            range.start_key_type,
            Some(StartKeyType::StartClosed(key("10")))
        );
        assert_eq!(range.end_key_type, Some(EndKeyType::EndOpen(key("20"))));
        let resumed = chunk_range(&chunk, Some(&key("15")));
        assert_eq!(
            resumed.start_key_type,
            Some(StartKeyType::StartOpen(key("15")))
        );
        let whole = Chunk {
            start: None,
            end: None,
            ..chunk
        };
        assert_eq!(chunk_range(&whole, None), full_range());
    }
}
