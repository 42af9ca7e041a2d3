//! What a reader hands its records and its progress to.
//!
//! In `key` ordering the sink is the consumer itself ([`Direct`]): a batch is acknowledged
//! when the consumer returns. In `transactions` ordering it is the reassembly buffer
//! (`ordering::Ordered`), which also needs to know how far each partition has been read, which
//! partitions are announced, and when one ends; the default methods ignore those.

use std::future::Future;

use crate::checkpoint::Floor;
use crate::consumer::{Consumer, ConsumerError, Origin};
use crate::partition::{NewPartition, PartitionToken};
use crate::record::DataChangeRecord;
use crate::timestamp::Timestamp;

/// Where a reader delivers; see the module docs. As a [`Floor`] it says which records it
/// still holds, which checkpoints must not pass.
pub(crate) trait Sink: Floor + Send + Sync + 'static {
    /// Takes one batch of one partition's data change records, in commit order; `Ok` lets
    /// the reader's position move past them.
    fn deliver(
        &self,
        origin: Origin<'_>,
        records: &[DataChangeRecord],
    ) -> impl Future<Output = Result<(), ConsumerError>> + Send;

    /// A reader starts reading `partition` at `watermark`.
    fn started(&self, partition: &PartitionToken, watermark: Timestamp) {
        let _ = (partition, watermark);
    }

    /// A partition announced `children` (they start where their parents end).
    fn announced(&self, children: &[NewPartition]) {
        let _ = children;
    }

    /// `partition` has shown every record committed at or before `t`.
    fn read_through(&self, partition: &PartitionToken, t: Timestamp) {
        let _ = (partition, t);
    }

    /// `partition` ended at `end`: resolves once none of its records waits in the sink, so
    /// that it can be marked finished without losing any.
    fn ended(
        &self,
        partition: &PartitionToken,
        end: Timestamp,
    ) -> impl Future<Output = Result<(), ConsumerError>> + Send {
        let _ = (partition, end);
        std::future::ready(Ok(()))
    }

    /// This runner became the stream's active one: the store's unfinished `partitions` and
    /// their watermarks, before any of them is claimed.
    fn resume(&self, partitions: &[(PartitionToken, Timestamp)]) {
        let _ = partitions;
    }

    /// Forgets everything read: this runner's readers were halted and another may read the
    /// stream now; what was held is read again from the checkpoints.
    fn reset(&self) {}

    /// Resolves once whatever was handed on has been acknowledged, before the last
    /// checkpoint of a run.
    fn settle(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// The consumer as the sink: `key` ordering.
pub(crate) struct Direct<C>(pub C);

impl<C: Consumer> Sink for Direct<C> {
    fn deliver(
        &self,
        origin: Origin<'_>,
        records: &[DataChangeRecord],
    ) -> impl Future<Output = Result<(), ConsumerError>> + Send {
        self.0.consume_from(origin, records)
    }
}

impl<C: Send + Sync> Floor for Direct<C> {
    /// A consumer holds nothing once it returned.
    fn floor(&self, _: &PartitionToken) -> Option<Timestamp> {
        None
    }
}
