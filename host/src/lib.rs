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
//! The CLI's consumer is a `Pipeline` (feature `plugins`): a `plugin::Chain` of components
//! loaded by a `plugin::PluginRuntime`, then [`Destination`]s. Without default features the
//! library builds without wasmtime and clap.
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

pub mod checkpoint;
pub mod client;
pub mod consumer;
pub mod destination;
pub mod dsn;
pub mod error;
pub mod observe;
pub mod ordering;
pub mod partition;
#[cfg(feature = "plugins")]
pub mod pipeline;
#[cfg(feature = "plugins")]
pub mod plugin;
pub mod reader;
pub mod record;
pub mod snapshot;
pub mod source;
pub mod subscriber;
#[cfg(test)]
mod testing;
pub mod timestamp;

pub use client::Endpoint;
pub use consumer::{Consumer, ConsumerError, Origin};
pub use destination::{Batch, Destination, DestinationError, Ndjson};
pub use dsn::DatabaseName;
pub use error::FailureKind;
pub use observe::{NoObserver, Observer};
pub use partition::{
    Epoch, MemoryStore, PartitionMetadata, PartitionState, PartitionStore, PartitionTimes,
    PartitionToken, RunnerId, SpannerStore, StoreError,
};
#[cfg(feature = "plugins")]
pub use pipeline::Pipeline;
pub use record::{ChangeRecord, DataChangeRecord, JsonObject, ModType, ValueCaptureType};
pub use snapshot::SnapshotMode;
pub use source::{ChangeQuery, ChangeSource, Dialect, ScriptedSource, SourceError, SpannerSource};
pub use subscriber::{RunSummary, SubscribeError, Subscriber, SubscriberOptions};
pub use timestamp::Timestamp;
