//! Observation: the one place where the stages say what they did, for metrics, progress and
//! health.
//!
//! Place in the flow: beside every stage. The reader, the checkpointer, the runner and the
//! pipeline each report typed [`Event`]s to one [`Observer`] at the moment a fact becomes
//! true (a batch read, acknowledged, a checkpoint committed, a lease lost, a batch accepted by
//! a destination). Events come per batch or per decision, never per record. An observer
//! records and returns: it must not block or fail, since it runs on the data path. The
//! default, [`NoObserver`], ignores everything.

use std::time::Duration;

use crate::partition::PartitionToken;
use crate::record::DataChangeRecord;
use crate::source::SourceError;
use crate::timestamp::Timestamp;

/// Something a stage did.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// Data change records read from a partition (before any plugin), one batch in commit
    /// order.
    Read {
        partition: &'a PartitionToken,
        records: &'a [DataChangeRecord],
    },
    /// Everything `partition`'s stream showed up to `through` (records, heartbeats, child
    /// partitions) is handled and acknowledged: how far behind now the partition is.
    Acknowledged {
        partition: &'a PartitionToken,
        through: Timestamp,
    },
    /// A partition query failed transiently and restarts from the watermark.
    QueryRestarted {
        partition: &'a PartitionToken,
        error: &'a SourceError,
    },
    /// A partition was read to its end and marked FINISHED.
    Finished { partition: &'a PartitionToken },
    /// The runner claimed partitions and started their readers.
    Claimed { partitions: usize },
    /// The runner stopped reading partitions it no longer holds (another runner claimed
    /// them, or its own heartbeat lapsed).
    Lost { partitions: usize },
    /// The runner gave partitions up to rebalance.
    Released { partitions: usize },
    /// The runner read its own liveness: how old its last heartbeat is.
    Heartbeat { age: Duration, alive: bool },
    /// A checkpoint flush: `written` watermarks in one commit, `lost` of them refused.
    Checkpointed {
        written: usize,
        lost: usize,
        took: Duration,
    },
    /// A checkpoint flush that failed (retried at the next one).
    CheckpointFailed { took: Duration },
    /// A destination durably accepted a batch of `records`.
    Output {
        output: &'a str,
        records: usize,
        took: Duration,
    },
    /// Records a plugin (`name@version`) failed went to the dead letters.
    DeadLetters { plugin: &'a str, records: usize },
}

/// Receives the [`Event`]s of a run. See the module docs for what an observer may do.
pub trait Observer: Send + Sync + 'static {
    fn observe(&self, event: Event<'_>);
}

/// Ignores every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn observe(&self, _: Event<'_>) {}
}
