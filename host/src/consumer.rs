//! The consumer boundary: where records leave screamer's hands.
//!
//! Place in the flow: after the readers and their ordering; for the CLI the consumer is the
//! pipeline (plugin chain, then destinations). With `key` ordering a consumer receives the
//! data change records of one partition in commit order, a batch at a time; calls for
//! different partitions may run concurrently, calls for one partition never overlap. With
//! `transactions` ordering it receives whole transactions in commit order across every
//! partition, one call at a time. Returning `Ok` acknowledges the whole batch, and only
//! acknowledged records let a partition's checkpoint move past them.

use std::future::Future;

use crate::partition::PartitionMetadata;
use crate::record::DataChangeRecord;
use crate::timestamp::Timestamp;

/// An error a consumer returns; it stops the subscriber (nothing after the failed batch is
/// acknowledged, so a restart delivers it again).
pub type ConsumerError = Box<dyn std::error::Error + Send + Sync>;

/// The partition a batch comes from, for consumers that put it beside the records.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The partition as this runner claimed it (state and lifecycle times as of now).
    pub partition: &'a PartitionMetadata,
    /// The partition's position before this batch: every earlier record is acknowledged.
    pub watermark: Timestamp,
}

/// Receives data change records. See the module docs for ordering and acknowledgement.
pub trait Consumer: Send + Sync + 'static {
    /// Handles `records` (non-empty, in commit order: one partition's, or whole transactions
    /// with `--ordering transactions`); `Ok` acknowledges them.
    fn consume(
        &self,
        records: &[DataChangeRecord],
    ) -> impl Future<Output = Result<(), ConsumerError>> + Send;

    /// What the readers call: [`Consumer::consume`] with the partition the records come
    /// from. The default ignores `origin`.
    fn consume_from(
        &self,
        origin: Origin<'_>,
        records: &[DataChangeRecord],
    ) -> impl Future<Output = Result<(), ConsumerError>> + Send {
        let _ = origin;
        self.consume(records)
    }
}

/// A shared consumer is a consumer: the caller keeps a handle (to read its counters, say).
impl<C: Consumer> Consumer for std::sync::Arc<C> {
    fn consume(
        &self,
        records: &[DataChangeRecord],
    ) -> impl Future<Output = Result<(), ConsumerError>> + Send {
        (**self).consume(records)
    }

    fn consume_from(
        &self,
        origin: Origin<'_>,
        records: &[DataChangeRecord],
    ) -> impl Future<Output = Result<(), ConsumerError>> + Send {
        (**self).consume_from(origin, records)
    }
}
