//! The reassembly buffer: records of every partition, grouped by transaction, released whole
//! and in commit order once every partition has been read past them.
//!
//! Pure bookkeeping, no I/O: `Ordered` (the module above) runs it under a lock and delivers
//! what it releases. Invariants:
//! - the low watermark is the least "read through" position over every partition known to
//!   be open: read by a reader, announced as a child and not started yet (which begins where
//!   its parents end), or unfinished in the store when the run began;
//! - a transaction is released once its commit timestamp is at or before the low watermark
//!   and it holds as many records as `number_of_records_in_transaction`; transactions are
//!   released by commit timestamp, then transaction id (a fixed order for equal timestamps);
//! - a record counts against the budget and holds its partition's checkpoint back from
//!   when it enters until the consumer acknowledged the batch it was released in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::partition::PartitionToken;
use crate::record::DataChangeRecord;
use crate::timestamp::Timestamp;

/// How far past an incomplete transaction the low watermark may move before the
/// transaction is released as it is. By Spanner's rule every record of a transaction has
/// been read once the low watermark passed it; the exception is a transaction committed at
/// the very time a partition split, partly in the parent and partly in a child that starts
/// only after the parent finished (and the parent finishes only once its records are
/// released): waiting for ever would stall the stream.
const INCOMPLETE_GRACE: Duration = Duration::from_secs(10);

/// Most records released in one batch; a transaction is never split, so a batch of one
/// large transaction can hold more.
const MAX_RELEASE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct TransactionKey {
    commit: Timestamp,
    id: String,
}

struct Transaction {
    records: Vec<DataChangeRecord>,
    /// Record sequences held: a record read again after a restart is dropped.
    sequences: HashSet<String>,
    /// `number_of_records_in_transaction`.
    expected: usize,
}

impl Transaction {
    fn complete(&self) -> bool {
        self.records.len() >= self.expected
    }
}

/// A partition's place in the low watermark.
struct Partition {
    /// Every record committed at or before this has been read.
    through: Timestamp,
    /// Records of the partition in the buffer or in a batch not acknowledged yet, by commit
    /// timestamp.
    held: BTreeMap<Timestamp, usize>,
    /// Its query ended: once nothing is held, it leaves the low watermark.
    ended: bool,
}

impl Partition {
    fn at(through: Timestamp) -> Self {
        Self {
            through,
            held: BTreeMap::new(),
            ended: false,
        }
    }
}

/// What a release hands on: whole transactions, in order, in batches.
pub(super) struct Released {
    pub batches: Vec<Vec<DataChangeRecord>>,
    /// Transactions released incomplete (see [`INCOMPLETE_GRACE`]).
    pub incomplete: usize,
}

/// See the module docs.
pub(super) struct Buffer {
    budget: usize,
    bytes: usize,
    partitions: HashMap<PartitionToken, Partition>,
    pending: BTreeMap<TransactionKey, Transaction>,
    /// The latest commit timestamp released, and the transactions released at it.
    released: Option<(Timestamp, HashSet<String>)>,
    /// Batches released and not acknowledged yet.
    in_flight: usize,
}

impl Buffer {
    /// A buffer that admits records while it holds fewer than `budget` bytes (and always for
    /// the slowest partition).
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            bytes: 0,
            partitions: HashMap::new(),
            pending: BTreeMap::new(),
            released: None,
            in_flight: 0,
        }
    }

    /// An empty buffer of the same budget. Batches in flight still get acknowledged into it
    /// (harmlessly: their partitions are gone).
    pub fn emptied(&self) -> Self {
        Self::new(self.budget)
    }

    /// An unfinished partition of the store at the start of a run: read up to just before
    /// its watermark. Its reader's [`Buffer::started`] comes later, or never if it waits for
    /// parents.
    pub fn resume(&mut self, partition: &PartitionToken, watermark: Timestamp) {
        self.partitions
            .entry(partition.clone())
            .or_insert_with(|| Partition::at(just_before(watermark)));
    }

    /// A reader starts `partition` at `watermark`: nothing at or after it is read yet.
    pub fn started(&mut self, partition: &PartitionToken, watermark: Timestamp) {
        let p = self
            .partitions
            .entry(partition.clone())
            .or_insert_with(|| Partition::at(just_before(watermark)));
        p.through = just_before(watermark);
        p.ended = false;
    }

    /// A child announced to start at `start`. Until its reader starts it stands at `start`
    /// (its parent's end: the parent's records there must not wait for the child, which
    /// starts only once the parent finished).
    pub fn announced(&mut self, child: &PartitionToken, start: Timestamp) {
        self.partitions
            .entry(child.clone())
            .or_insert_with(|| Partition::at(start));
    }

    /// `partition` has shown every record at or before `t`.
    pub fn read_through(&mut self, partition: &PartitionToken, t: Timestamp) {
        if let Some(p) = self.partitions.get_mut(partition)
            && t > p.through
        {
            p.through = t;
        }
    }

    /// `partition`'s query ended at `end`.
    pub fn ended(&mut self, partition: &PartitionToken, end: Timestamp) {
        self.read_through(partition, end);
        if let Some(p) = self.partitions.get_mut(partition) {
            p.ended = true;
        }
    }

    /// Whether an ended `partition` holds nothing any more; it then leaves the low
    /// watermark.
    pub fn drained(&mut self, partition: &PartitionToken) -> bool {
        let drained = self
            .partitions
            .get(partition)
            .is_none_or(|p| p.ended && p.held.is_empty());
        if drained {
            self.partitions.remove(partition);
        }
        drained
    }

    /// Whether `bytes` more of `partition` may enter now: within the budget, into an empty
    /// buffer (a transaction larger than the budget goes through alone), or for the
    /// partition the low watermark waits for (it must always proceed).
    pub fn admits(&self, partition: &PartitionToken, bytes: usize) -> bool {
        self.bytes == 0 || self.bytes + bytes <= self.budget || self.is_slowest(partition)
    }

    fn is_slowest(&self, partition: &PartitionToken) -> bool {
        let Some(mine) = self.partitions.get(partition) else {
            return true;
        };
        self.partitions
            .iter()
            .all(|(t, p)| t == partition || p.through >= mine.through)
    }

    /// Takes `records` (one partition's, in its order); records read before and already
    /// held or released are dropped.
    pub fn insert(&mut self, records: &[DataChangeRecord]) {
        for r in records {
            if self.released_already(r) {
                continue;
            }
            let key = TransactionKey {
                commit: r.commit_timestamp,
                id: r.server_transaction_id.clone(),
            };
            let t = self.pending.entry(key).or_insert_with(|| Transaction {
                records: Vec::new(),
                sequences: HashSet::new(),
                expected: usize::try_from(r.number_of_records_in_transaction).unwrap_or(0),
            });
            if !t.sequences.insert(r.record_sequence.clone()) {
                continue;
            }
            t.records.push(r.clone());
            self.bytes += size(r);
            let p = self
                .partitions
                .entry(r.partition_token.clone())
                .or_insert_with(|| Partition::at(just_before(r.commit_timestamp)));
            *p.held.entry(r.commit_timestamp).or_default() += 1;
        }
    }

    fn released_already(&self, r: &DataChangeRecord) -> bool {
        match &self.released {
            Some((at, ids)) => {
                r.commit_timestamp < *at
                    || (r.commit_timestamp == *at && ids.contains(&r.server_transaction_id))
            }
            None => false,
        }
    }

    /// The least "read through" position over the open partitions; `None` before any is
    /// known.
    pub fn low_watermark(&self) -> Option<Timestamp> {
        self.partitions.values().map(|p| p.through).min()
    }

    /// Takes every transaction the low watermark lets go, whole and in order.
    pub fn release(&mut self) -> Released {
        let mut out = Released {
            batches: Vec::new(),
            incomplete: 0,
        };
        let Some(low) = self.low_watermark() else {
            return out;
        };
        let mut batch: Vec<DataChangeRecord> = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            let key = entry.key();
            if key.commit > low {
                break;
            }
            if !entry.get().complete() {
                if low < key.commit.saturating_add(INCOMPLETE_GRACE) {
                    break;
                }
                tracing::warn!(transaction = %key.id, commit_timestamp = %key.commit,
                    records = entry.get().records.len(), expected = entry.get().expected,
                    "releasing an incomplete transaction: its other records were not read in time");
                out.incomplete += 1;
            }
            let (key, mut t) = entry.remove_entry();
            t.records
                .sort_by(|a, b| sequence(&a.record_sequence).cmp(&sequence(&b.record_sequence)));
            match &mut self.released {
                Some((at, ids)) if *at == key.commit => {
                    ids.insert(key.id);
                }
                released => *released = Some((key.commit, HashSet::from([key.id]))),
            }
            if !batch.is_empty() && batch.len() + t.records.len() > MAX_RELEASE {
                out.batches.push(std::mem::take(&mut batch));
            }
            batch.extend(t.records);
        }
        if !batch.is_empty() {
            out.batches.push(batch);
        }
        self.in_flight += out.batches.len();
        out
    }

    /// The consumer acknowledged a released batch.
    pub fn delivered(&mut self, records: &[DataChangeRecord]) {
        self.in_flight = self.in_flight.saturating_sub(1);
        for r in records {
            self.bytes = self.bytes.saturating_sub(size(r));
            if let Some(p) = self.partitions.get_mut(&r.partition_token)
                && let Some(n) = p.held.get_mut(&r.commit_timestamp)
            {
                *n -= 1;
                if *n == 0 {
                    p.held.remove(&r.commit_timestamp);
                }
            }
        }
    }

    /// Batches released and not acknowledged yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The earliest commit timestamp of a record of `partition` still held.
    pub fn floor(&self, partition: &PartitionToken) -> Option<Timestamp> {
        self.partitions
            .get(partition)
            .and_then(|p| p.held.keys().next().copied())
    }

    /// The latest commit timestamp released.
    pub fn released_through(&self) -> Option<Timestamp> {
        self.released.as_ref().map(|(at, _)| *at)
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

fn just_before(t: Timestamp) -> Timestamp {
    t.saturating_sub(Duration::from_nanos(1))
}

/// A record sequence's order: numerically when it is a number (Spanner's are zero-padded
/// decimal strings), else as text.
fn sequence(s: &str) -> (u64, &str) {
    (s.parse().unwrap_or(u64::MAX), s)
}

/// What a record costs the budget: its values as Spanner sent them, and a fixed overhead.
pub(super) fn size(r: &DataChangeRecord) -> usize {
    let mods: usize = r
        .mods
        .iter()
        .map(|m| m.keys.as_str().len() + m.new_values.as_str().len() + m.old_values.as_str().len())
        .sum();
    256 + mods + 64 * r.column_types.len() + r.table_name.len()
}
