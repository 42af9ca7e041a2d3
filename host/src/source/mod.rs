//! Source: everything that talks to the change stream.
//!
//! Place in the flow: first stage. [`SpannerSource`] connects to the database at an
//! [`Endpoint`](crate::client::Endpoint) (the emulator, or Google Cloud with Application Default Credentials), detects
//! the dialect, checks that the stream exists, and opens one streaming query per partition from
//! its watermark ([`PartitionQuery`]). The queries run over the client's low-level gRPC API:
//! the high-level row iterator buffers change records until the resume token changes, which
//! on the emulator means until the partition ends. Resume tokens are never used: a broken
//! query is restarted from the partition's watermark instead.

mod connection;
mod decode;
mod query;
mod session;

pub use connection::SpannerSource;
pub use decode::{DecodeError, Dialect};
pub use query::{PartitionQuery, QueryRange};

use gcloud_gax::grpc::Status;

use crate::client::{ConnectError, is_transient};
use crate::error::FailureKind;

/// Errors of the source stage.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("database {database} does not exist")]
    DatabaseNotFound { database: String },
    #[error(
        "change stream {stream:?} does not exist in {database} (streams there: {})",
        if existing.is_empty() { "none".to_owned() } else { existing.join(", ") }
    )]
    StreamNotFound {
        stream: String,
        database: String,
        existing: Vec<String>,
    },
    #[error(
        "start {start} is outside the change stream's retention period or before the stream was created: {message}"
    )]
    StartOutOfRange { start: String, message: String },
    #[error("cannot connect to Spanner: {0}")]
    Connect(#[from] ConnectError),
    #[error("spanner: {0}")]
    Grpc(#[from] Status),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl SourceError {
    /// A database, stream or start the user named that is not there.
    pub fn kind(&self) -> FailureKind {
        match self {
            SourceError::DatabaseNotFound { .. }
            | SourceError::StreamNotFound { .. }
            | SourceError::StartOutOfRange { .. } => FailureKind::Input,
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
