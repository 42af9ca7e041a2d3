//! Observation: the one place where the stages say what they did, for metrics, progress and
//! health.
//!
//! Place in the flow: beside every stage. The reader, the checkpointer, the runner and the
//! pipeline each report typed [`Event`]s to one [`Observer`] at the moment a fact becomes
//! true (a batch read, acknowledged, a checkpoint committed, a lease lost, a batch accepted by
//! a destination). Events come per batch or per decision, never per record. An observer
//! records and returns: it must not block or fail, since it runs on the data path. The
//! default, [`NoObserver`], ignores everything; [`Metrics`] (feature `metrics`) keeps
//! Prometheus metrics and the runner's health, and [`serve`] exposes them over HTTP.

#[cfg(feature = "metrics")]
mod metrics;
#[cfg(feature = "metrics")]
mod serve;

use std::time::Duration;

#[cfg(feature = "metrics")]
pub use metrics::{Health, Metrics, PluginTotals, Progress, SnapshotProgress};
#[cfg(feature = "metrics")]
pub use serve::{ServeError, serve};

use crate::partition::{PartitionToken, RunnerId};
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
        /// The partition they were read from.
        partition: &'a PartitionToken,
        /// The batch, as decoded.
        records: &'a [DataChangeRecord],
    },
    /// Everything the partition's stream showed up to `through` (records, heartbeats, child
    /// partitions) is handled and acknowledged: how far behind now the partition is.
    Acknowledged {
        /// The partition acknowledged.
        partition: &'a PartitionToken,
        /// Everything at or before this timestamp is handled.
        through: Timestamp,
        /// The records this acknowledgement covers (possibly none: a heartbeat).
        records: &'a [DataChangeRecord],
    },
    /// This runner started reading a partition.
    Reading {
        /// The partition now read.
        partition: &'a PartitionToken,
        /// Its watermark: reading starts there.
        from: Timestamp,
    },
    /// This runner no longer reads a partition (finished, stopped, lost or failed).
    StoppedReading {
        /// The partition no longer read.
        partition: &'a PartitionToken,
    },
    /// A partition query failed transiently and restarts from the watermark.
    QueryRestarted {
        /// The partition whose query restarts.
        partition: &'a PartitionToken,
        /// Why it stopped.
        error: &'a SourceError,
    },
    /// A partition (or a snapshot chunk) was read to its end and marked FINISHED.
    Finished {
        /// The partition finished.
        partition: &'a PartitionToken,
    },
    /// The store holds a snapshot (`--snapshot`): its size, and how much of it was finished
    /// when this runner started.
    SnapshotPlanned {
        /// Chunks in the plan.
        chunks: usize,
        /// Chunks already finished.
        chunks_finished: usize,
        /// Rows in the plan.
        rows: u64,
        /// Rows of the finished chunks.
        rows_finished: u64,
    },
    /// The store is prepared and the runner registered with a heartbeat: it claims and reads
    /// from now on, while its heartbeats land within its lease.
    Subscribed {
        /// The runner.
        runner: &'a RunnerId,
        /// How long its claims hold without a heartbeat.
        lease: Duration,
    },
    /// The runner is stopping: its readers drain and it releases its leases.
    Stopping,
    /// The runner claimed partitions and started their readers.
    Claimed {
        /// How many.
        partitions: usize,
    },
    /// The runner stopped reading partitions it no longer holds (another runner claimed
    /// them, or its own heartbeat lapsed).
    Lost {
        /// How many.
        partitions: usize,
    },
    /// The runner gave partitions up to rebalance.
    Released {
        /// How many.
        partitions: usize,
    },
    /// `--ordering transactions`: every transaction committed at or before `through` has
    /// been released to the consumer.
    TransactionsReleased {
        /// The low watermark released.
        through: Timestamp,
        /// Transactions just released without all of their records (see `--ordering`).
        incomplete: usize,
    },
    /// The runner read its own liveness.
    Heartbeat {
        /// How old its last heartbeat is.
        age: Duration,
        /// Whether that is within its lease.
        alive: bool,
    },
    /// A checkpoint flush.
    Checkpointed {
        /// Watermarks written in one commit.
        written: usize,
        /// Watermarks refused: their partitions belong to another runner now.
        lost: usize,
        /// The commit's duration.
        took: Duration,
    },
    /// A checkpoint flush that failed (retried at the next one).
    CheckpointFailed {
        /// How long the failed attempt took.
        took: Duration,
    },
    /// A batch is on its way to an output; an [`Event::Output`] or [`Event::OutputFailed`]
    /// follows.
    Sending {
        /// `main`, a side output's name, or `dead_letters`.
        output: &'a str,
        /// The batch's size in bytes.
        bytes: usize,
    },
    /// An output durably accepted a batch, perhaps refusing some of its records for good
    /// (those go to the dead letters).
    Output {
        /// `main`, a side output's name, or `dead_letters`.
        output: &'a str,
        /// Records accepted.
        records: usize,
        /// Records refused.
        refused: usize,
        /// The batch's size in bytes.
        bytes: usize,
        /// From the send to the acceptance.
        took: Duration,
    },
    /// A destination did not take a send and tries it again after a pause.
    OutputRetried {
        /// The output whose destination retries.
        output: &'a str,
    },
    /// A replica destination applied a batch's row changes in one transaction.
    ReplicaApplied {
        /// The output whose destination is the replica.
        output: &'a str,
        /// What the transaction did.
        rows: &'a ReplicaRows,
        /// From its start to its commit.
        took: Duration,
    },
    /// Sending a batch to an output failed; the batch is not acknowledged.
    OutputFailed {
        /// The output that failed.
        output: &'a str,
        /// The batch's size in bytes.
        bytes: usize,
    },
    /// Records a plugin failed went to the dead letters.
    DeadLetters {
        /// The plugin, `name@version`.
        plugin: &'a str,
        /// How many records.
        records: usize,
        /// Why they failed.
        kind: PluginFailureKind,
    },
    /// One call of a plugin over a slice of a batch.
    PluginCall {
        /// The plugin's name, without version.
        plugin: &'a str,
        /// Records in the call.
        records: usize,
        /// The call's duration.
        took: Duration,
        /// Why the call failed, if it did: a failed call dropped its instance.
        failed: Option<PluginFailureKind>,
    },
    /// A plugin instance was started (the first call of a worker, or after a failed call).
    PluginStarted {
        /// The plugin's name.
        plugin: &'a str,
    },
    /// What a plugin decided for the records of one chain run.
    PluginOutcomes {
        /// The plugin's name.
        plugin: &'a str,
        /// Its decisions, counted.
        outcomes: &'a OutcomeCounts,
    },
}

/// Why a plugin call or record failed (`plugin::PluginFailure::kind`), as metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PluginFailureKind {
    /// The guest returned an error for the record.
    Failed,
    /// The call ran past its deadline.
    Deadline,
    /// The call hit a resource limit (memory cap, bytes copied out).
    Limit,
    /// The guest trapped (a panic, an unreachable instruction).
    Trap,
    /// The host refused what the call returned (malformed, forged fields).
    Refused,
}

impl PluginFailureKind {
    /// Every kind, in label order.
    pub const ALL: [PluginFailureKind; 5] = [
        PluginFailureKind::Failed,
        PluginFailureKind::Deadline,
        PluginFailureKind::Limit,
        PluginFailureKind::Trap,
        PluginFailureKind::Refused,
    ];

    /// The label value: `failed`, `deadline`, `limit`, `trap`, `refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginFailureKind::Failed => "failed",
            PluginFailureKind::Deadline => "deadline",
            PluginFailureKind::Limit => "limit",
            PluginFailureKind::Trap => "trap",
            PluginFailureKind::Refused => "refused",
        }
    }
}

/// What a replica did with the row changes of one batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaRows {
    /// Rows inserted or updated.
    pub upserted: u64,
    /// Rows deleted (or deletes recorded for rows the replica did not hold).
    pub deleted: u64,
    /// Changes older than what the replica holds for their row: not applied.
    pub stale: u64,
    /// Changes of records the replica refused (they go to the dead letters).
    pub refused: u64,
}

impl ReplicaRows {
    /// Adds another batch's counts to these.
    pub fn add(&mut self, other: &ReplicaRows) {
        self.upserted += other.upserted;
        self.deleted += other.deleted;
        self.stale += other.stale;
        self.refused += other.refused;
    }
}

/// How many records a plugin kept, dropped, patched, replaced, turned into emissions, or
/// failed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// Records passed on unchanged.
    pub keep: u64,
    /// Records dropped.
    pub drop: u64,
    /// Records passed on with changes (a patch).
    pub patch: u64,
    /// Records replaced by another record.
    pub replace: u64,
    /// Records turned into emissions (zero or more output records).
    pub emit: u64,
    /// Records the plugin failed.
    pub fail: u64,
}

impl OutcomeCounts {
    /// Every record counted, whatever its outcome.
    pub fn total(&self) -> u64 {
        self.keep + self.drop + self.patch + self.replace + self.emit + self.fail
    }

    /// Adds another run's counts to these.
    pub fn add(&mut self, other: &OutcomeCounts) {
        self.keep += other.keep;
        self.drop += other.drop;
        self.patch += other.patch;
        self.replace += other.replace;
        self.emit += other.emit;
        self.fail += other.fail;
    }
}

/// Receives the [`Event`]s of a run. See the module docs for what an observer may do.
pub trait Observer: Send + Sync + 'static {
    /// Records one event; returns at once.
    fn observe(&self, event: Event<'_>);
}

/// Ignores every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn observe(&self, _: Event<'_>) {}
}
