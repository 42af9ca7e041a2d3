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

use crate::timestamp::Timestamp;

/// A change stream partition's token. The root (the query with a NULL token) is stored under
/// Beam's name for it, `Parent0`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartitionToken(String);

impl PartitionToken {
    /// The token under which the root query is recorded.
    pub const ROOT: &'static str = "Parent0";

    pub fn root() -> Self {
        Self(Self::ROOT.to_owned())
    }

    pub fn is_root(&self) -> bool {
        self.0 == Self::ROOT
    }

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
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Scheduled => "SCHEDULED",
            Self::Running => "RUNNING",
            Self::Finished => "FINISHED",
        }
    }

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

impl fmt::Display for PartitionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A partition to insert: the root, or a child announced by a parent.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPartition {
    pub token: PartitionToken,
    pub parents: Vec<PartitionToken>,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    pub heartbeat_millis: i64,
}

/// One row of the partition metadata table.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionMetadata {
    pub token: PartitionToken,
    pub parents: Vec<PartitionToken>,
    pub start: Timestamp,
    /// `None`: read until the partition ends.
    pub end: Option<Timestamp>,
    pub heartbeat_millis: i64,
    pub state: PartitionState,
    /// Every record committed before this time has been acknowledged.
    pub watermark: Timestamp,
}

impl From<NewPartition> for PartitionMetadata {
    fn from(p: NewPartition) -> Self {
        Self {
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

/// Errors of a partition store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid metadata table name {0:?}: expected letters, digits and underscores")]
    InvalidTableName(String),
    #[error("metadata table {table} does not match the partition metadata schema: {problem}")]
    SchemaMismatch { table: String, problem: String },
    #[error(
        "metadata table {table} is in a PostgreSQL-dialect database; use --partition-dsn to keep it in a GoogleSQL database"
    )]
    UnsupportedDialect { table: String },
    #[error("partition {token:?} is not in the metadata table")]
    UnknownPartition { token: PartitionToken },
    #[error("metadata table {table}: {message}")]
    Spanner { table: String, message: String },
    #[error("metadata table {table}: corrupt row: {message}")]
    Corrupt { table: String, message: String },
}

/// Persists the partition lifecycle. Implementations: [`SpannerStore`] (Beam-compatible table,
/// resumable) and [`MemoryStore`] (one process, no resume).
#[async_trait::async_trait]
pub trait PartitionStore: Send + Sync + 'static {
    /// Runs migrations and checks the schema; call once before anything else.
    async fn prepare(&self) -> Result<(), StoreError>;

    /// Inserts `root` if the store holds no partition yet; returns whether it did. A store
    /// that already has rows resumes where it stopped.
    async fn seed(&self, root: NewPartition) -> Result<bool, StoreError>;

    /// CREATED partitions all of whose parents are FINISHED, oldest start first.
    async fn ready(&self) -> Result<Vec<PartitionMetadata>, StoreError>;

    /// Partitions left SCHEDULED or RUNNING by an earlier run, to resume from their watermarks.
    async fn in_progress(&self) -> Result<Vec<PartitionMetadata>, StoreError>;

    /// Moves the given partitions from CREATED to SCHEDULED, atomically; returns the ones it
    /// moved (another scheduler may have taken the rest).
    async fn schedule(&self, tokens: &[PartitionToken]) -> Result<Vec<PartitionToken>, StoreError>;

    /// SCHEDULED -> RUNNING.
    async fn mark_running(&self, token: &PartitionToken) -> Result<(), StoreError>;

    /// Inserts the children that are not there yet (merges announce a child several times);
    /// returns how many it inserted.
    async fn add_children(&self, children: &[NewPartition]) -> Result<usize, StoreError>;

    /// Writes the watermarks of several partitions in one write.
    async fn update_watermarks(
        &self,
        marks: &[(PartitionToken, Timestamp)],
    ) -> Result<(), StoreError>;

    /// -> FINISHED, with the final watermark.
    async fn finish(&self, token: &PartitionToken, watermark: Timestamp) -> Result<(), StoreError>;

    /// Partitions not FINISHED.
    async fn unfinished(&self) -> Result<usize, StoreError>;

    /// Metadata writes committed so far by this store (to show they are coalesced).
    fn writes(&self) -> u64;
}
