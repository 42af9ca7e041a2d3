//! Source: where change records come from.
//!
//! Place in the flow: first stage. The reader and the runner know only [`ChangeSource`]
//! ("query a partition from a position") and [`ChangeQuery`] (its batches of records).
//! [`ScriptedSource`] replays records a test wrote, for unit tests of the reader and the
//! runner without a database. [`SpannerSource`] connects to the database at an
//! [`Endpoint`](crate::client::Endpoint) (the emulator, or Google Cloud with Application Default Credentials), detects
//! the dialect, checks that the stream exists, and opens one streaming query per partition from
//! its watermark. The queries run over the client's low-level gRPC API:
//! the high-level row iterator buffers change records until the resume token changes, which
//! on the emulator means until the partition ends. Resume tokens are never used: a broken
//! query is restarted from the partition's watermark instead.

mod connection;
mod decode;
mod query;
mod scripted;
mod session;
mod snapshot;

pub use connection::SpannerSource;
pub use decode::{DecodeError, Dialect};
pub use query::QueryRange;
pub use scripted::{ScriptedSource, ScriptedTransaction};

use gcloud_gax::grpc::Status;

use crate::client::{ConnectError, Priority, is_transient};
use crate::error::FailureKind;
use crate::partition::PartitionToken;
use crate::record::ChangeRecord;
use crate::snapshot::Chunk;
use crate::timestamp::Timestamp;

/// How a [`SpannerSource`] reads; `Default`: as the principal itself, default priority,
/// no Data Boost.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// The priority of every query and read (`--priority`).
    pub priority: Option<Priority>,
    /// The fine-grained access control role every session reads as (`--database-role`).
    pub database_role: Option<String>,
    /// Snapshot reads run on Data Boost, Spanner's independent compute (`--data-boost`).
    pub data_boost: bool,
}

/// A change stream, read partition by partition.
#[async_trait::async_trait]
pub trait ChangeSource: Send + Sync + 'static {
    /// The stream's name, for logs.
    fn stream(&self) -> &str;

    /// Opens the query of one partition over `range`: its records from `range.start`
    /// (inclusive) until the partition ends or reaches `range.end`.
    async fn query(
        &self,
        partition: &PartitionToken,
        range: QueryRange,
    ) -> Result<Box<dyn ChangeQuery>, SourceError>;

    /// The chunks of a snapshot at `at` of every row the stream watches (`--snapshot`);
    /// querying a chunk's token from `at` reads its rows as snapshot records.
    /// `chunk_rows`: rows per chunk (a table is cut every so many keys).
    async fn plan_snapshot(
        &self,
        at: Timestamp,
        chunk_rows: usize,
    ) -> Result<Vec<Chunk>, SourceError>;
}

/// One open partition query.
#[async_trait::async_trait]
pub trait ChangeQuery: Send {
    /// The next records, at most about `limit` (a source may exceed it by what it cannot
    /// split); waits for at least one. `None` once the query has ended. Cancel-safe: a call
    /// dropped before it returns loses no record.
    async fn next_batch(&mut self, limit: usize) -> Result<Option<Vec<ChangeRecord>>, SourceError>;
}

/// Errors of the source stage.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("database {database} does not exist")]
    /// The database named does not exist.
    DatabaseNotFound {
        /// The database's name.
        database: String,
    },
    #[error(
        "change stream {stream:?} does not exist in {database} (streams there: {})",
        if existing.is_empty() { "none".to_owned() } else { existing.join(", ") }
    )]
    /// The change stream named does not exist in the database.
    StreamNotFound {
        /// The stream asked for.
        stream: String,
        /// The database.
        database: String,
        /// The streams it has.
        existing: Vec<String>,
    },
    #[error(
        "start {start} is outside the change stream's retention period or before the stream was created: {message}"
    )]
    /// The query's start is outside the stream's retention, or before the stream existed.
    StartOutOfRange {
        /// The start asked for.
        start: String,
        /// Spanner's words.
        message: String,
    },
    #[error(
        "the snapshot at {at} is older than the database keeps versions (version_retention_period, 1 hour by default; raise it with ALTER DATABASE ... SET OPTIONS): {message}"
    )]
    /// A read at the snapshot's timestamp that the database no longer keeps versions for.
    SnapshotTooOld {
        /// The snapshot's timestamp.
        at: String,
        /// Spanner's words.
        message: String,
    },
    /// A chunk token this version cannot read, or of a table the stream no longer watches.
    #[error("snapshot chunk {token:?}: {problem}")]
    UnknownChunk {
        /// The chunk's partition token.
        token: String,
        /// What cannot be read.
        problem: String,
    },
    /// No connection could be set up.
    #[error("cannot connect to Spanner: {0}")]
    Connect(#[from] ConnectError),
    /// Spanner answered a call with an error.
    #[error("spanner: {0}")]
    Grpc(#[from] Status),
    /// A row of the stream's answer cannot be read.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl SourceError {
    /// A database, stream or start the user named that is not there, a snapshot older than
    /// the database keeps, or a read the principal (or `--database-role`) is not granted.
    pub fn kind(&self) -> FailureKind {
        match self {
            SourceError::DatabaseNotFound { .. }
            | SourceError::StreamNotFound { .. }
            | SourceError::StartOutOfRange { .. }
            | SourceError::SnapshotTooOld { .. } => FailureKind::Input,
            SourceError::Grpc(s) if s.code() == gcloud_gax::grpc::Code::PermissionDenied => {
                FailureKind::Input
            }
            _ => FailureKind::Runtime,
        }
    }

    /// Whether retrying the same partition from its watermark may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Grpc(status) => is_transient(status),
            SourceError::Connect(_) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use gcloud_gax::grpc::Code;

    use super::*;

    #[test]
    fn reads_the_role_is_not_granted_are_input_errors() {
        let denied = SourceError::Grpc(Status::new(
            Code::PermissionDenied,
            "Role reader does not have required privileges on table Singers",
        ));
        assert_eq!(denied.kind(), FailureKind::Input);
        assert!(!denied.is_transient());
        let unavailable = SourceError::Grpc(Status::new(Code::Unavailable, "later"));
        assert_eq!(unavailable.kind(), FailureKind::Runtime);
    }
}
