//! Partition lifecycle: the metadata model and the stores that persist it.
//!
//! Place in the flow: between the source and the scheduler. Every partition of the stream has
//! one row (Beam's `PartitionMetadata` model); its state only moves forward
//! (`CREATED -> SCHEDULED -> RUNNING -> FINISHED`), a child row is inserted once however many
//! parents announce it, a child becomes ready only when **every** parent is FINISHED, and the
//! watermark only moves forward: every record committed before it has been acknowledged.

mod memory;
mod spanner;

pub use memory::MemoryStore;
pub use spanner::SpannerStore;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::client::ConnectError;
use crate::error::FailureKind;
use crate::timestamp::Timestamp;

/// A change stream partition's token. The root (the query with a NULL token) is stored under
/// Beam's name for it, `Parent0`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartitionToken(String);

impl PartitionToken {
    /// The token under which the root query is recorded.
    pub const ROOT: &'static str = "Parent0";

    /// The root partition's token.
    pub fn root() -> Self {
        Self(Self::ROOT.to_owned())
    }

    /// Whether this is the root partition.
    pub fn is_root(&self) -> bool {
        self.0 == Self::ROOT
    }

    /// The token as Spanner spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The token to pass to the change stream query (`None` for the root).
    pub fn query_token(&self) -> Option<&str> {
        (!self.is_root()).then_some(self.0.as_str())
    }
}

impl From<&str> for PartitionToken {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for PartitionToken {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Display for PartitionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PartitionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Real tokens are long; a prefix identifies them in logs.
        let short: String = self.0.chars().take(16).collect();
        if short.len() < self.0.len() {
            write!(f, "{short}…")
        } else {
            f.write_str(&short)
        }
    }
}

/// A runner's id: in the registry, on its leases, in logs.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunnerId(String);

impl RunnerId {
    /// A fresh random id, `runner-` and eight hex digits.
    pub fn random() -> Self {
        Self(format!("runner-{:08x}", fastrand::u32(..)))
    }

    /// The runner's id as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by runner id can be looked up by the id's text (derived `Hash` and `Eq` agree
/// with `str`'s).
impl std::borrow::Borrow<str> for RunnerId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for RunnerId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for RunnerId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Display for RunnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RunnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// How many times a partition has been claimed: each claim takes the next epoch, and a
/// write naming an older one is refused (fencing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Epoch(i64);

impl Epoch {
    /// The epoch numbered `n`.
    pub fn new(n: i64) -> Self {
        Self(n)
    }

    /// Its number.
    pub fn get(self) -> i64 {
        self.0
    }

    /// The epoch of the next claim.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a partition is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionState {
    /// Known, not yet taken by a runner.
    Created,
    /// Taken by a runner, query not yet open.
    Scheduled,
    /// Being read.
    Running,
    /// Read to its end; its children may start once their other parents finish too.
    Finished,
}

impl PartitionState {
    /// The state as the metadata table stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Scheduled => "SCHEDULED",
            Self::Running => "RUNNING",
            Self::Finished => "FINISHED",
        }
    }

    /// The state the metadata table's text names, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "CREATED" => Self::Created,
            "SCHEDULED" => Self::Scheduled,
            "RUNNING" => Self::Running,
            "FINISHED" => Self::Finished,
            _ => return None,
        })
    }
}

impl PartitionState {
    /// Whether someone should be reading a partition in this state: SCHEDULED or RUNNING, or
    /// CREATED with every parent FINISHED (`parents_finished`, asked only then). Both stores
    /// decide claims by it.
    pub fn is_active(self, parents_finished: impl FnOnce() -> bool) -> bool {
        match self {
            Self::Created => parents_finished(),
            Self::Scheduled | Self::Running => true,
            Self::Finished => false,
        }
    }
}

impl serde::Serialize for PartitionState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Whether `claimer` may take a partition whose lease `owner` holds (`None`: nobody). Never
/// its own: if the store sees its heartbeat as late while it still reads them, re-claiming
/// would fence its own readers and orphan the partitions (a crashed predecessor's leases
/// are reset at start; a lapse releases them). Another runner's once that runner is not
/// live (`owner_live`). Both stores decide claims by it.
pub fn lease_is_free(
    owner: Option<&str>,
    claimer: &str,
    owner_live: impl FnOnce(&str) -> bool,
) -> bool {
    match owner {
        None => true,
        Some(owner) => owner != claimer && !owner_live(owner),
    }
}

impl fmt::Display for PartitionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A partition to insert: the root, or a child announced by a parent.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPartition {
    /// The new partition's token.
    pub token: PartitionToken,
    /// The partitions it continues.
    pub parents: Vec<PartitionToken>,
    /// Where its query starts.
    pub start: Timestamp,
    /// Where its query ends (`None`: at the partition's end).
    pub end: Option<Timestamp>,
    /// The heartbeat interval its query asks for.
    pub heartbeat_millis: i64,
}

/// One row of the partition metadata table.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionMetadata {
    /// The partition's token.
    pub token: PartitionToken,
    /// The partitions it continues (empty for the root).
    pub parents: Vec<PartitionToken>,
    /// Where its query starts.
    pub start: Timestamp,
    /// `None`: read until the partition ends.
    pub end: Option<Timestamp>,
    /// The heartbeat interval its query asks for.
    pub heartbeat_millis: i64,
    /// Where it is in its life.
    pub state: PartitionState,
    /// Every record committed before this time has been acknowledged.
    pub watermark: Timestamp,
    /// When the store recorded the partition's lifecycle steps.
    pub times: PartitionTimes,
}

/// When a partition was created, scheduled (claimed from CREATED) and set running, as the
/// metadata table's commit timestamps (`CreatedAt`, `ScheduledAt`, `RunningAt`); `None`
/// before the step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionTimes {
    /// When the partition was recorded.
    pub created_at: Option<Timestamp>,
    /// When a runner claimed it from CREATED.
    pub scheduled_at: Option<Timestamp>,
    /// When its query started.
    pub running_at: Option<Timestamp>,
}

impl From<NewPartition> for PartitionMetadata {
    fn from(p: NewPartition) -> Self {
        Self {
            times: PartitionTimes::default(),
            watermark: p.start,
            token: p.token,
            parents: p.parents,
            start: p.start,
            end: p.end,
            heartbeat_millis: p.heartbeat_millis,
            state: PartitionState::Created,
        }
    }
}

/// A runner's claim on a partition: valid while the runner heartbeats within the lease
/// duration and nobody claimed the partition since (the epoch counts claims).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The partition.
    pub token: PartitionToken,
    /// Which claim of it this is.
    pub epoch: Epoch,
}

/// A partition a runner just claimed, with its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// Its row as claimed.
    pub partition: PartitionMetadata,
    /// The runner's lease on it.
    pub lease: Lease,
}

/// One live runner's capacity (`--max-connections`) and how many partitions it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunnerLoad {
    /// Partitions the runner may read at once.
    pub capacity: usize,
    /// Partitions it holds.
    pub held: usize,
}

/// The live runners and how many partitions there are to read: what rebalancing and
/// claiming divide.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Load {
    /// The live runners.
    pub runners: Vec<RunnerLoad>,
    /// Partitions not yet finished.
    pub active_partitions: usize,
    /// Active partitions without a live owner: what claims can take now.
    pub unowned_partitions: usize,
}

impl Load {
    /// Runners whose heartbeat is within the lease.
    pub fn live_runners(&self) -> usize {
        self.runners.len()
    }

    /// Whether some live runner holds two or more below its fair share: then a runner at
    /// its share gives one partition up, or the spread would never shrink to one (nobody is
    /// above the rounded-up share to give).
    pub fn underloaded(&self) -> bool {
        self.runners
            .iter()
            .any(|r| r.held + 2 <= self.fair_share(r.capacity))
    }

    /// The most partitions a runner of `capacity` should hold: partitions spread as evenly
    /// as the capacities allow (runners that cannot take an even share take what they can,
    /// the others share the rest), rounded up.
    pub fn fair_share(&self, capacity: usize) -> usize {
        let mut caps: Vec<usize> = self.runners.iter().map(|r| r.capacity).collect();
        caps.sort_unstable();
        let (mut left, mut n) = (self.active_partitions, caps.len());
        for c in caps {
            if n == 0 || c >= left.div_ceil(n) {
                break;
            }
            left -= c;
            n -= 1;
        }
        left.div_ceil(n.max(1)).min(capacity)
    }
}

/// One registered runner, as `screamer status` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunnerStatus {
    /// The runner.
    pub runner_id: RunnerId,
    /// Its last heartbeat.
    pub heartbeat_at: Timestamp,
    /// Whether that is within the lease.
    pub alive: bool,
    /// Partitions it holds.
    pub partitions: usize,
}

/// One partition, as `screamer status` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PartitionStatus {
    /// The partition.
    pub token: PartitionToken,
    /// Its state.
    pub state: PartitionState,
    /// The runner that holds it, if any.
    pub owner: Option<RunnerId>,
    /// That runner's claim, if any.
    pub epoch: Option<Epoch>,
    /// Every record committed before this time has been acknowledged.
    pub watermark: Timestamp,
}

/// Everything `screamer status` shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoreStatus {
    /// Every registered runner.
    pub runners: Vec<RunnerStatus>,
    /// Every partition.
    pub partitions: Vec<PartitionStatus>,
    /// The live active runner of `--ordering transactions`, if there is one.
    pub active: Option<RunnerId>,
}

/// Errors of a partition store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The metadata table's name is not an identifier.
    #[error("invalid metadata table name {0:?}: expected letters, digits and underscores")]
    InvalidTableName(String),
    /// The metadata table exists with another schema.
    #[error("metadata table {table} does not match the partition metadata schema: {problem}")]
    SchemaMismatch {
        /// The table.
        table: String,
        /// What differs.
        problem: String,
    },
    #[error(
        "metadata table {table} is in a PostgreSQL-dialect database; use --partition-dsn to keep it in a GoogleSQL database"
    )]
    /// The metadata table is in a PostgreSQL-dialect database, which the store does not support.
    UnsupportedDialect {
        /// The table.
        table: String,
    },
    /// A write named a partition the table does not hold.
    #[error("partition {token:?} is not in the metadata table")]
    UnknownPartition {
        /// The partition asked for.
        token: PartitionToken,
    },
    /// The write was refused: another runner holds the partition now (or the lease expired).
    #[error("partition {token:?}: lease lost (epoch {epoch} is no longer this runner's)")]
    LeaseLost {
        /// The partition.
        token: PartitionToken,
        /// The claim this runner held.
        epoch: Epoch,
    },
    /// Spanner refused or failed a read or write.
    #[error("metadata table {table}: {source}")]
    Spanner {
        /// The table.
        table: String,
        /// Spanner's error.
        #[source]
        source: gcloud_spanner::client::Error,
    },
    /// The store could not connect.
    #[error("metadata table {table}: {source}")]
    Connect {
        /// The table.
        table: String,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// A row cannot be read back (an unknown state, a bad value).
    #[error("metadata table {table}: corrupt row: {message}")]
    Corrupt {
        /// The table.
        table: String,
        /// What is wrong with the row.
        message: String,
    },
}

impl StoreError {
    /// The gRPC status Spanner answered with, when it answered.
    pub fn status(&self) -> Option<&gcloud_gax::grpc::Status> {
        match self {
            StoreError::Spanner {
                source: gcloud_spanner::client::Error::GRPC(status),
                ..
            } => Some(status),
            _ => None,
        }
    }

    /// Whether the user's input caused it (a table name or table they can fix).
    pub fn kind(&self) -> FailureKind {
        match self {
            StoreError::InvalidTableName(_)
            | StoreError::SchemaMismatch { .. }
            | StoreError::UnsupportedDialect { .. } => FailureKind::Input,
            _ => FailureKind::Runtime,
        }
    }
}

/// The most partitions one [`PartitionStore::claim`] call takes. A transaction's size is
/// bounded (Spanner counts 7 mutations per claimed partition against its 80,000 per commit),
/// and a long claim holds locks that heartbeats and checkpoints wait for: on the emulator a
/// claim of 4,500 partitions starved other runners' heartbeats past a 30 s lease.
pub const CLAIM_BATCH: usize = 100;

/// Persists the partition lifecycle and the runners' leases. Implementations:
/// [`SpannerStore`] (Beam-compatible table plus registry and lease tables, shared by many
/// runners) and [`MemoryStore`] (one process, no resume).
///
/// Fencing: every write that changes a partition's state or watermark names the lease it
/// holds, and is applied only if that lease is still the partition's current one, in the same
/// transaction.
#[async_trait::async_trait]
pub trait PartitionStore: Send + Sync + 'static {
    /// Runs migrations and checks the schema; call once before anything else.
    async fn prepare(&self) -> Result<(), StoreError>;

    /// Whether the store holds partitions already: a run on it resumes, and seeds nothing.
    async fn seeded(&self) -> Result<bool, StoreError>;

    /// Inserts `partitions` (the root; or a snapshot's chunks and the root that waits for
    /// them) if the store holds no partition yet, all in one transaction; returns whether
    /// it did. A store that already has rows resumes where it stopped.
    async fn seed(&self, partitions: Vec<NewPartition>) -> Result<bool, StoreError>;

    /// Registers `runner` (with how many partitions it may hold) or renews its liveness: one
    /// write per runner, whatever it holds.
    async fn heartbeat(&self, runner: &RunnerId, capacity: usize) -> Result<(), StoreError>;

    /// Frees the leases an earlier process with the same runner id left behind (it crashed:
    /// a graceful stop releases them), so they can be claimed at once. Call before the
    /// first heartbeat.
    async fn reset(&self, runner: &RunnerId) -> Result<(), StoreError>;

    /// Removes `runner` from the registry (graceful stop).
    async fn deregister(&self, runner: &RunnerId) -> Result<(), StoreError>;

    /// Claims up to `room` partitions for `runner`, atomically: CREATED ones whose parents are
    /// all FINISHED (they become SCHEDULED) and unfinished ones without a live owner (their
    /// owner released them, or stopped heartbeating for `lease_duration`). Each claim bumps
    /// the partition's epoch. Oldest start first. A store may claim at most
    /// [`CLAIM_BATCH`] per call (one transaction stays short): call again while a call
    /// returns that many.
    async fn claim(
        &self,
        runner: &RunnerId,
        room: usize,
        lease_duration: std::time::Duration,
    ) -> Result<Vec<Claim>, StoreError>;

    /// SCHEDULED -> RUNNING (fenced); returns the time written as `RunningAt`.
    async fn mark_running(&self, runner: &RunnerId, lease: &Lease)
    -> Result<Timestamp, StoreError>;

    /// Inserts the children that are not there yet (merges announce a child several times);
    /// returns how many it inserted. Not fenced: children are the same whoever announces them.
    async fn add_children(&self, children: &[NewPartition]) -> Result<usize, StoreError>;

    /// Writes the watermarks of several partitions in one commit (fenced per partition);
    /// returns the leases that were lost (their watermarks were not written).
    async fn update_watermarks(
        &self,
        runner: &RunnerId,
        marks: &[(Lease, Timestamp)],
    ) -> Result<Vec<Lease>, StoreError>;

    /// -> FINISHED, with the final watermark (fenced).
    async fn finish(
        &self,
        runner: &RunnerId,
        lease: &Lease,
        watermark: Timestamp,
    ) -> Result<(), StoreError>;

    /// Gives leases up so other runners can claim the partitions at once.
    async fn release(&self, runner: &RunnerId, leases: &[Lease]) -> Result<(), StoreError>;

    /// The leases the store says `runner` holds. A runner compares them with what it reads
    /// and releases the strays: a release or claim whose commit succeeded but whose answer
    /// was lost (timeout, retry) leaves leases owned by a live runner that reads nothing.
    async fn owned(&self, runner: &RunnerId) -> Result<Vec<Lease>, StoreError>;

    /// Live runners and partitions to read, for rebalancing.
    async fn load(&self, lease_duration: std::time::Duration) -> Result<Load, StoreError>;

    /// Partitions not FINISHED.
    async fn unfinished(&self) -> Result<usize, StoreError>;

    /// `--ordering transactions`: makes `runner` the stream's active runner (the one that
    /// reads every partition) unless another live runner is; returns the active runner. A
    /// runner stays active while its heartbeats land, and stops being so when it
    /// deregisters or its registration lapses for `lease_duration`.
    async fn activate(
        &self,
        runner: &RunnerId,
        lease_duration: std::time::Duration,
    ) -> Result<RunnerId, StoreError>;

    /// Runners and partitions with their owners.
    async fn status(&self, lease_duration: std::time::Duration) -> Result<StoreStatus, StoreError>;

    /// Metadata writes committed so far by this store (to show they are coalesced).
    fn writes(&self) -> u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_rules() {
        use PartitionState::*;
        assert!(Created.is_active(|| true));
        assert!(!Created.is_active(|| false));
        assert!(Scheduled.is_active(|| unreachable!()) && Running.is_active(|| unreachable!()));
        assert!(!Finished.is_active(|| unreachable!()));
        assert!(lease_is_free(None, "a", |_| true));
        assert!(!lease_is_free(Some("a"), "a", |_| false), "never its own");
        assert!(!lease_is_free(Some("b"), "a", |_| true));
        assert!(lease_is_free(Some("b"), "a", |_| false));
    }

    #[test]
    fn fair_shares_round_up_and_respect_capacities() {
        let load = |caps: &[usize], p| Load {
            runners: caps
                .iter()
                .map(|&capacity| RunnerLoad { capacity, held: 0 })
                .collect(),
            active_partitions: p,
            ..Load::default()
        };
        assert_eq!(load(&[400, 400, 400], 10).fair_share(400), 4);
        assert_eq!(load(&[400, 400, 400], 9).fair_share(400), 3);
        assert_eq!(load(&[], 5).fair_share(400), 5);
        // A runner limited to one partition takes one; the others share the rest.
        assert_eq!(load(&[1, 400, 400], 6).fair_share(400), 3);
        assert_eq!(load(&[1, 400, 400], 6).fair_share(1), 1);
        assert_eq!(load(&[1, 1], 6).fair_share(1), 1);
    }

    #[test]
    fn underloaded_means_two_below_the_share() {
        let load = |held: &[(usize, usize)], p| Load {
            runners: held
                .iter()
                .map(|&(capacity, held)| RunnerLoad { capacity, held })
                .collect(),
            active_partitions: p,
            ..Load::default()
        };
        // 200 partitions over 15 runners: share 14; a runner at 10 is underloaded.
        let mut spread = vec![(400, 14); 10];
        spread.extend([(400, 13); 4]);
        spread.push((400, 10));
        assert!(load(&spread, 200).underloaded());
        assert!(!load(&[(400, 14), (400, 13)], 27).underloaded());
        // A runner at its capacity is not underloaded, whatever the others hold.
        assert!(!load(&[(1, 1), (400, 5), (400, 5)], 11).underloaded());
    }
}
