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
        partition: &'a PartitionToken,
        records: &'a [DataChangeRecord],
    },
    /// Everything `partition`'s stream showed up to `through` (records, heartbeats, child
    /// partitions) is handled and acknowledged, `records` (possibly none) among it: how far
    /// behind now the partition is.
    Acknowledged {
        partition: &'a PartitionToken,
        through: Timestamp,
        records: &'a [DataChangeRecord],
    },
    /// This runner started reading `partition` from `from`.
    Reading {
        partition: &'a PartitionToken,
        from: Timestamp,
    },
    /// This runner no longer reads `partition` (finished, stopped, lost or failed).
    StoppedReading { partition: &'a PartitionToken },
    /// A partition query failed transiently and restarts from the watermark.
    QueryRestarted {
        partition: &'a PartitionToken,
        error: &'a SourceError,
    },
    /// A partition (or a snapshot chunk) was read to its end and marked FINISHED.
    Finished { partition: &'a PartitionToken },
    /// The store holds a snapshot (`--snapshot`): its chunks and rows, and how many of them
    /// were finished when this runner started.
    SnapshotPlanned {
        chunks: usize,
        chunks_finished: usize,
        rows: u64,
        rows_finished: u64,
    },
    /// The store is prepared and `runner` registered with a heartbeat: it claims and reads
    /// from now on, while its heartbeats land within `lease`.
    Subscribed {
        runner: &'a RunnerId,
        lease: Duration,
    },
    /// The runner is stopping: its readers drain and it releases its leases.
    Stopping,
    /// The runner claimed partitions and started their readers.
    Claimed { partitions: usize },
    /// The runner stopped reading partitions it no longer holds (another runner claimed
    /// them, or its own heartbeat lapsed).
    Lost { partitions: usize },
    /// The runner gave partitions up to rebalance.
    Released { partitions: usize },
    /// `--ordering transactions`: every transaction committed at or before `through` has
    /// been released to the consumer, `incomplete` of those just released without all of
    /// their records (see `ordering`).
    TransactionsReleased {
        through: Timestamp,
        incomplete: usize,
    },
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
    /// A batch of `bytes` is on its way to output `output` (`main`, a side output's name,
    /// or `dead_letters`); an [`Event::Output`] or [`Event::OutputFailed`] follows.
    Sending { output: &'a str, bytes: usize },
    /// Output `output` durably accepted `records` of a batch of `bytes` and refused
    /// `refused` for good (those go to the dead letters), `took` after it was sent.
    Output {
        output: &'a str,
        records: usize,
        refused: usize,
        bytes: usize,
        took: Duration,
    },
    /// A destination of `output` did not take a send and tries it again after a pause.
    OutputRetried { output: &'a str },
    /// A replica destination of `output` applied a batch's row changes in one transaction,
    /// `took` from its start to its commit.
    ReplicaApplied {
        output: &'a str,
        rows: &'a ReplicaRows,
        took: Duration,
    },
    /// Sending a batch of `bytes` to `output` failed; the batch is not acknowledged.
    OutputFailed { output: &'a str, bytes: usize },
    /// Records a plugin (`name@version`) failed went to the dead letters, for `kind`.
    DeadLetters {
        plugin: &'a str,
        records: usize,
        kind: PluginFailureKind,
    },
    /// One call of plugin `plugin` (its name, without version) over `records` records; a
    /// call that `failed` (trapped, ran out of time or memory: why) dropped its instance.
    PluginCall {
        plugin: &'a str,
        records: usize,
        took: Duration,
        failed: Option<PluginFailureKind>,
    },
    /// A plugin instance was started (the first call of a worker, or after a failed call).
    PluginStarted { plugin: &'a str },
    /// What plugin `plugin` decided for the records of one chain run.
    PluginOutcomes {
        plugin: &'a str,
        outcomes: &'a OutcomeCounts,
    },
}

/// Why a plugin call or record failed (`plugin::PluginFailure::kind`), as metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PluginFailureKind {
    Failed,
    Deadline,
    Limit,
    Trap,
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
    pub fn add(&mut self, other: &ReplicaRows) {
        self.upserted += other.upserted;
        self.deleted += other.deleted;
        self.stale += other.stale;
        self.refused += other.refused;
    }
}

/// How many records a plugin kept, dropped, replaced, turned into emissions, or failed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutcomeCounts {
    pub keep: u64,
    pub drop: u64,
    pub replace: u64,
    pub emit: u64,
    pub fail: u64,
}

impl OutcomeCounts {
    pub fn total(&self) -> u64 {
        self.keep + self.drop + self.replace + self.emit + self.fail
    }

    pub fn add(&mut self, other: &OutcomeCounts) {
        self.keep += other.keep;
        self.drop += other.drop;
        self.replace += other.replace;
        self.emit += other.emit;
        self.fail += other.fail;
    }
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
