//! The consumer boundary: where records leave screamer's hands.
//!
//! Place in the flow: after decoding (and, later, the plugin chain). A consumer receives the
//! data change records of one partition in commit order, a batch at a time; returning `Ok`
//! acknowledges the whole batch, and only acknowledged records let the partition's watermark
//! move past them. Calls for different partitions may run concurrently; calls for one
//! partition never overlap.

use std::future::Future;

use crate::record::DataChangeRecord;

/// An error a consumer returns; it stops the subscriber (nothing after the failed batch is
/// acknowledged, so a restart delivers it again).
pub type ConsumerError = Box<dyn std::error::Error + Send + Sync>;

/// Receives data change records. See the module docs for ordering and acknowledgement.
pub trait Consumer: Send + Sync + 'static {
    /// Handles `records` (non-empty, one partition, commit order); `Ok` acknowledges them.
    fn consume(
        &self,
        records: &[DataChangeRecord],
    ) -> impl Future<Output = Result<(), ConsumerError>> + Send;
}

/// A shared consumer is a consumer: the caller keeps a handle (to read its counters, say).
impl<C: Consumer> Consumer for std::sync::Arc<C> {
    fn consume(
        &self,
        records: &[DataChangeRecord],
    ) -> impl Future<Output = Result<(), ConsumerError>> + Send {
        (**self).consume(records)
    }
}
