//! screamer: Spanner change streams outside Dataflow.
//!
//! The flow of a record, one module per stage:
//!
//! ```text
//! client (endpoint, transient errors, backoff): beneath source and partition
//! source (streaming query per partition, decode)  -> reader (one task per partition)
//!   -> consumer (ack): pipeline -> plugin chain (wasm components) -> destinations + dead letters
//!   reader -> checkpoint (coalesced watermarks, only past acknowledged records)
//! child partitions -> partition store -> subscriber (a child starts when ALL parents FINISHED)
//! every stage -> observe (typed events for metrics and progress)
//! ```
//!
//! The API has one path per item. The reading core (records, sources, stores, the
//! subscriber, timestamps, errors) is at the crate root. The layers above it are modules:
//! [`destination`] (where records go; [`destination::DestinationUri::open`] opens any of
//! them), `plugin` (feature `plugins`: the wasm runtime and chain) and [`observe`] (events,
//! metrics, the HTTP endpoint). The CLI's consumer is a `Pipeline` (feature `plugins`): a
//! `plugin::Chain` of components loaded by a `plugin::PluginRuntime`, then destinations.
//! Without default features the library builds without wasmtime and clap.
//!
//! Use [`Subscriber`] with a [`ChangeSource`] ([`SpannerSource`]; [`ScriptedSource`] replays a
//! script in tests), a [`PartitionStore`] ([`SpannerStore`] to
//! resume and share, [`MemoryStore`] for one process) and any [`Consumer`]:
//!
//! ```no_run
//! use std::sync::Arc;
//! use screamer::{Consumer, ConsumerError, DataChangeRecord, Endpoint, MemoryStore, SpannerSource,
//!     Subscriber, SubscriberOptions};
//! use tokio_util::sync::CancellationToken;
//!
//! struct Print;
//! impl Consumer for Print {
//!     async fn consume(&self, records: &[DataChangeRecord]) -> Result<(), ConsumerError> {
//!         for r in records {
//!             println!("{} {:?} {}", r.table_name, r.mod_type, r.commit_timestamp);
//!         }
//!         Ok(()) // acknowledges the batch
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let db = "projects/p/instances/i/databases/d".parse()?;
//! let source = SpannerSource::connect(&Endpoint::from_env(), &db, "Changes").await?;
//! let subscriber = Subscriber::new(source, Arc::new(MemoryStore::new()), SubscriberOptions::default());
//! subscriber.subscribe(Print, CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

// The reading core's modules are private: their public items are re-exported below.
mod checkpoint;
mod client;
mod consumer;
mod dsn;
mod error;
mod ordering;
mod partition;
mod reader;
mod record;
mod snapshot;
mod source;
mod subscriber;
#[cfg(test)]
mod testing;
mod timestamp;

// The layers above the core are namespaces: `screamer::destination::Kafka`,
// `screamer::plugin::Chain`, `screamer::observe::Metrics`.
pub mod destination;
pub mod observe;
#[cfg(feature = "plugins")]
mod pipeline;
#[cfg(feature = "plugins")]
pub mod plugin;

pub use client::{ConnectError, Endpoint, Priority};
pub use consumer::{Consumer, ConsumerError, Origin};
pub use dsn::{DatabaseName, DatabaseNameError};
pub use error::FailureKind;
pub use ordering::{DEFAULT_ORDERING_BUFFER, Ordering};
pub use partition::{
    CLAIM_BATCH, Claim, Epoch, Lease, Load, MemoryStore, NewPartition, PartitionMetadata,
    PartitionState, PartitionStatus, PartitionStore, PartitionTimes, PartitionToken, RunnerId,
    RunnerLoad, RunnerStatus, SpannerStore, StoreError, StoreStatus,
};
#[cfg(feature = "plugins")]
pub use pipeline::Pipeline;
pub use reader::ReaderError;
pub use record::{
    ChangeRecord, ChildPartition, ChildPartitionsRecord, ColumnType, DataChangeRecord,
    HeartbeatRecord, JsonObject, Mod, ModType, NotAnObject, SpannerType, ValueCaptureType,
};
pub use snapshot::{DEFAULT_CHUNK_ROWS, SnapshotMode};
pub use source::{
    ChangeQuery, ChangeSource, DecodeError, Dialect, QueryRange, ScriptedSource,
    ScriptedTransaction, SourceError, SourceOptions, SpannerSource,
};
pub use subscriber::{
    HEARTBEAT_INTERVALS, RunSummary, SubscribeError, Subscriber, SubscriberOptions, check_range,
};
pub use timestamp::{Timestamp, TimestampParseError};
