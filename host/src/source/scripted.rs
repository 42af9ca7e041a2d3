//! A change source that replays a script: the records a test wrote, partition by partition.
//!
//! Place in the flow: stands in for Spanner in front of the reader, for unit tests of the
//! reader, the runner and the stages behind them (no database, and tokio's paused time
//! works). It follows a partition query's rules: a query returns the partition's records
//! from its start (inclusive), in the order they were pushed, and ends at the first record
//! after its end or, once the partition is closed, after its last record. A query of a
//! partition that has no record to give yet waits, as a live stream does.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::{ChangeQuery, ChangeSource, QueryRange, SourceError};
use crate::partition::PartitionToken;
use crate::record::{
    ChangeRecord, ChildPartition, ChildPartitionsRecord, DataChangeRecord, HeartbeatRecord,
};
use crate::snapshot::Chunk;
use crate::timestamp::Timestamp;

/// A scripted change stream; clones share the script, so a test keeps one to write to
/// while a subscriber reads another.
#[derive(Clone)]
pub struct ScriptedSource {
    script: Arc<watch::Sender<Script>>,
}

#[derive(Default)]
struct Script {
    partitions: HashMap<PartitionToken, Partition>,
    /// Every query opened: the partition and its start.
    queries: Vec<(PartitionToken, Timestamp)>,
    /// What `plan_snapshot` answers.
    snapshot: Vec<Chunk>,
}

#[derive(Default)]
struct Partition {
    items: Vec<Item>,
    /// No record will be added: queries end after the last one.
    closed: bool,
}

enum Item {
    Record(ChangeRecord),
    /// The first query to reach it fails with the error; later ones pass.
    Failure(Option<SourceError>),
}

impl Default for ScriptedSource {
    fn default() -> Self {
        Self::new()
    }
}

impl ScriptedSource {
    /// An empty script: every query waits.
    pub fn new() -> Self {
        Self {
            script: Arc::new(watch::Sender::new(Script::default())),
        }
    }

    /// Appends `records` to `partition`'s stream; open queries see them at once.
    pub fn push(
        &self,
        partition: &PartitionToken,
        records: impl IntoIterator<Item = ChangeRecord>,
    ) {
        self.script.send_modify(|s| {
            s.partitions
                .entry(partition.clone())
                .or_default()
                .items
                .extend(records.into_iter().map(Item::Record))
        });
    }

    /// Appends a heartbeat at `at`.
    pub fn heartbeat(&self, partition: &PartitionToken, at: Timestamp) {
        self.push(
            partition,
            [ChangeRecord::Heartbeat(HeartbeatRecord { timestamp: at })],
        );
    }

    /// Ends `partition`: queries end after its last record.
    pub fn close(&self, partition: &PartitionToken) {
        self.script
            .send_modify(|s| s.partitions.entry(partition.clone()).or_default().closed = true);
    }

    /// Ends `partition` with a child partitions record at `at` announcing `children`, each
    /// continuing `parents` (a split when one parent has several children, a merge when
    /// several parents announce one child).
    pub fn end_with_children(
        &self,
        partition: &PartitionToken,
        at: Timestamp,
        children: &[PartitionToken],
        parents: &[PartitionToken],
    ) {
        let record = ChildPartitionsRecord {
            start_timestamp: at,
            record_sequence: "00000000".to_owned(),
            child_partitions: children
                .iter()
                .map(|token| ChildPartition {
                    token: token.clone(),
                    parent_partition_tokens: parents.to_vec(),
                })
                .collect(),
        };
        self.push(partition, [ChangeRecord::ChildPartitions(record)]);
        self.close(partition);
    }

    /// The first query of `partition` to read past the records pushed so far fails with
    /// `error` there (after handing on those records); the queries after it pass.
    pub fn fail(&self, partition: &PartitionToken, error: SourceError) {
        self.script.send_modify(|s| {
            s.partitions
                .entry(partition.clone())
                .or_default()
                .items
                .push(Item::Failure(Some(error)))
        });
    }

    /// Makes `plan_snapshot` answer `chunks`; a test pushes each chunk's rows to its token
    /// and closes it, as for a partition.
    pub fn plan(&self, chunks: Vec<Chunk>) {
        self.script.send_modify(|s| s.snapshot = chunks);
    }

    /// Every query opened so far: the partition and the start it was opened at.
    pub fn queries(&self) -> Vec<(PartitionToken, Timestamp)> {
        self.script.borrow().queries.clone()
    }
}

#[async_trait::async_trait]
impl ChangeSource for ScriptedSource {
    fn stream(&self) -> &str {
        "Scripted"
    }

    async fn query(
        &self,
        partition: &PartitionToken,
        range: QueryRange,
    ) -> Result<Box<dyn ChangeQuery>, SourceError> {
        self.script
            .send_modify(|s| s.queries.push((partition.clone(), range.start)));
        Ok(Box::new(ScriptedQuery {
            script: Arc::clone(&self.script),
            changed: self.script.subscribe(),
            partition: partition.clone(),
            range,
            next: 0,
            done: false,
        }))
    }

    async fn plan_snapshot(
        &self,
        _at: Timestamp,
        _chunk_rows: usize,
    ) -> Result<Vec<Chunk>, SourceError> {
        Ok(self.script.borrow().snapshot.clone())
    }
}

struct ScriptedQuery {
    script: Arc<watch::Sender<Script>>,
    changed: watch::Receiver<Script>,
    partition: PartitionToken,
    range: QueryRange,
    /// Index of the next record of the partition to look at.
    next: usize,
    done: bool,
}

/// Whether a query of `partition` at item `next` can return now: a record, a failure, or
/// the end.
fn ready(script: &Script, partition: &PartitionToken, next: usize) -> bool {
    script
        .partitions
        .get(partition)
        .is_some_and(|p| p.closed || p.items.len() > next)
}

impl ScriptedQuery {
    /// Takes what [`ready`] found, without waking the other queries: records up to `limit`,
    /// stopping before a failure (the next call reports it) and at the range's end.
    fn take(&mut self, limit: usize) -> Result<Option<Vec<ChangeRecord>>, SourceError> {
        let mut records = Vec::new();
        let mut failure = None;
        self.script.send_if_modified(|s| {
            let Some(p) = s.partitions.get_mut(&self.partition) else {
                return false;
            };
            while records.len() < limit.max(1) {
                match p.items.get_mut(self.next) {
                    None => {
                        self.done = p.closed;
                        break;
                    }
                    Some(Item::Failure(error)) => {
                        if records.is_empty() {
                            self.next += 1;
                            failure = error.take();
                            if failure.is_some() {
                                break;
                            }
                        } else {
                            break;
                        }
                    }
                    Some(Item::Record(record)) => {
                        let t = record.timestamp();
                        if self.range.end.is_some_and(|end| t > end) {
                            self.done = true;
                            break;
                        }
                        self.next += 1;
                        if t >= self.range.start {
                            records.push(record.clone());
                        }
                    }
                }
            }
            false
        });
        match failure {
            Some(error) => Err(error),
            None => Ok((!records.is_empty()).then_some(records)),
        }
    }
}

#[async_trait::async_trait]
impl ChangeQuery for ScriptedQuery {
    async fn next_batch(&mut self, limit: usize) -> Result<Option<Vec<ChangeRecord>>, SourceError> {
        loop {
            if self.done {
                return Ok(None);
            }
            // The sender lives in `self.script`: the channel never closes.
            let (partition, next) = (&self.partition, self.next);
            let _ = self.changed.wait_for(|s| ready(s, partition, next)).await;
            // `None` when only records before the start were there: wait for more.
            if let Some(records) = self.take(limit)? {
                return Ok(Some(records));
            }
        }
    }
}

/// A transaction for scripts: its id, commit time and the rows it writes, one record each
/// (an INSERT of `{"Id": key}` into the table). Its records may be read from different
/// partitions, as a transaction over several splits is.
#[derive(Debug, Clone)]
pub struct ScriptedTransaction {
    id: String,
    commit: Timestamp,
    writes: Vec<(String, i64)>,
}

impl ScriptedTransaction {
    /// A transaction that writes nothing yet.
    pub fn new(id: &str, commit: Timestamp) -> Self {
        Self {
            id: id.to_owned(),
            commit,
            writes: Vec::new(),
        }
    }

    /// Adds a write of row `key` of `table`.
    pub fn insert(mut self, table: &str, key: i64) -> Self {
        self.writes.push((table.to_owned(), key));
        self
    }

    /// The `i`-th record of the transaction, as read from `partition`.
    ///
    /// # Panics
    /// If the transaction has no `i`-th write.
    pub fn record(&self, i: usize, partition: &PartitionToken) -> ChangeRecord {
        let (table, key) = &self.writes[i];
        let record = serde_json::json!({
            "commit_timestamp": self.commit,
            "record_sequence": format!("{i:08}"),
            "server_transaction_id": self.id,
            "is_last_record_in_transaction_in_partition": i + 1 == self.writes.len(),
            "table_name": table,
            "column_types": [{"name": "Id", "type": {"code": "INT64"}, "is_primary_key": true, "ordinal_position": 1}],
            "mods": [{"keys": {"Id": key.to_string()}, "new_values": {}, "old_values": {}}],
            "mod_type": "INSERT",
            "value_capture_type": "NEW_ROW",
            "number_of_records_in_transaction": self.writes.len(),
            "number_of_partitions_in_transaction": 1,
        });
        let mut record: DataChangeRecord =
            serde_json::from_value(record).expect("a scripted record is a record");
        record.partition_token = partition.clone();
        ChangeRecord::Data(record)
    }

    /// All of its records, as read from `partition`.
    pub fn records(&self, partition: &PartitionToken) -> Vec<ChangeRecord> {
        (0..self.writes.len())
            .map(|i| self.record(i, partition))
            .collect()
    }
}
