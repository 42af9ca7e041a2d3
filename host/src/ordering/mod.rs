//! Ordering: how records leave the readers for the consumer.
//!
//! Place in the flow: readers -> **ordering** -> consumer (for the CLI: plugin chain, then
//! destinations) -> acknowledgement -> checkpoint. In [`Ordering::Key`] readers hand each
//! batch straight to the consumer: per-key commit order, partitions in parallel. In
//! [`Ordering::Transactions`] readers hand their records to `Ordered`, which reassembles
//! transactions across partitions (`buffer`) and releases them whole, in commit-timestamp
//! order, to one task that calls the consumer batch after batch.
//!
//! Invariants of `transactions`: a batch holds whole transactions, batches follow each other
//! in commit order, and each transaction is handed on once per run; a partition's checkpoint
//! never passes a record the buffer still holds (its `Floor`), and a partition is marked
//! finished only once nothing of it is held, so a restart re-reads what was not delivered.
//! Memory: the buffer admits records while under its budget, and always from the partition
//! the low watermark waits for, so the slowest partition proceeds and none deadlocks.
//!
//! Snapshot chunks (`--snapshot`) pass the buffer by: their rows are no transactions, the
//! stream starts only once every chunk is acknowledged, and holding a whole snapshot for a
//! low watermark would not fit any budget. Their readers call the consumer directly.

mod buffer;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};
use tokio_util::task::AbortOnDropHandle;

use crate::checkpoint::Floor;
use crate::consumer::{Consumer, ConsumerError, Origin};
use crate::observe::{Event, Observer};
use crate::partition::{NewPartition, PartitionToken};
use crate::reader::Sink;
use crate::record::DataChangeRecord;
use crate::snapshot::Chunk;
use crate::timestamp::Timestamp;
use buffer::Buffer;

/// How records are ordered on their way out (`--ordering`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ordering {
    /// Per key, in commit order; partitions are read and delivered in parallel, by as many
    /// runners as share the metadata table.
    #[default]
    Key,
    /// Whole transactions, in commit-timestamp order across every partition; one runner of
    /// the stream is active and reads every partition.
    Transactions,
}

impl std::str::FromStr for Ordering {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "key" => Ok(Ordering::Key),
            "transactions" => Ok(Ordering::Transactions),
            other => Err(format!(
                "unknown ordering {other:?}: expected key or transactions"
            )),
        }
    }
}

impl std::fmt::Display for Ordering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ordering::Key => "key",
            Ordering::Transactions => "transactions",
        })
    }
}

/// The default budget of the transactions buffer: small enough for a small machine, large
/// enough for many transactions in flight.
pub const DEFAULT_ORDERING_BUFFER: usize = 64 << 20;

/// The transactions buffer as the readers' sink; see the module docs.
pub(crate) struct Ordered<C> {
    /// Snapshot chunks deliver to it directly; the release task shares it.
    consumer: Arc<C>,
    shared: Arc<Shared>,
    releases: mpsc::UnboundedSender<Vec<DataChangeRecord>>,
    _task: AbortOnDropHandle<()>,
}

struct Shared {
    buffer: Mutex<Buffer>,
    /// Wakes whoever waits on the buffer: room, a drained partition, an acknowledgement.
    changed: Notify,
    /// Why the consumer failed; nothing more is delivered after it.
    failure: Mutex<Option<String>>,
    observer: Arc<dyn Observer>,
}

impl<C: Consumer> Ordered<C> {
    /// A buffer of `budget` bytes delivering to `consumer` from a task of its own.
    pub fn start(consumer: C, budget: usize, observer: Arc<dyn Observer>) -> Self {
        let consumer = Arc::new(consumer);
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer::new(budget)),
            changed: Notify::new(),
            failure: Mutex::new(None),
            observer,
        });
        let (releases, released) = mpsc::unbounded_channel();
        let task = tokio::spawn(deliver(
            Arc::clone(&consumer),
            released,
            Arc::clone(&shared),
        ));
        Self {
            consumer,
            shared,
            releases,
            _task: AbortOnDropHandle::new(task),
        }
    }

    /// Applies `change`, releases what it lets go, and wakes whoever waits on the buffer
    /// (a reader held back may have become the slowest).
    fn update<T>(&self, change: impl FnOnce(&mut Buffer) -> T) -> T {
        let out = self.locked(change);
        self.shared.changed.notify_waiters();
        out
    }

    /// Applies `change` and releases what it lets go, under one lock so that releases are
    /// sent in order.
    fn locked<T>(&self, change: impl FnOnce(&mut Buffer) -> T) -> T {
        let mut buffer = self.shared.buffer.lock().expect("ordering buffer");
        let out = change(&mut buffer);
        let released = buffer.release();
        if (!released.batches.is_empty() || released.incomplete > 0)
            && let Some(through) = buffer.released_through()
        {
            self.shared.observer.observe(Event::TransactionsReleased {
                through,
                incomplete: released.incomplete,
            });
        }
        for batch in released.batches {
            // The task ends only with `self` or after a failure, which readers see next.
            let _ = self.releases.send(batch);
        }
        out
    }

    fn failure(&self) -> Option<ConsumerError> {
        let failure = self.shared.failure.lock().expect("ordering failure");
        failure
            .as_ref()
            .map(|f| format!("delivering released transactions failed: {f}").into())
    }

    /// Waits until `done` holds for the buffer or the consumer failed. Checking wakes no
    /// one (waiters would wake each other in turn for ever); `done` holding does, as it may
    /// have changed the buffer.
    async fn wait_until(&self, mut done: impl FnMut(&mut Buffer) -> bool) {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.failure().is_some() {
                return;
            }
            if self.locked(&mut done) {
                self.shared.changed.notify_waiters();
                return;
            }
            changed.await;
        }
    }
}

impl<C: Consumer> Sink for Ordered<C> {
    async fn deliver(
        &self,
        origin: Origin<'_>,
        records: &[DataChangeRecord],
    ) -> Result<(), ConsumerError> {
        let Some(first) = records.first() else {
            return Ok(());
        };
        let partition = &first.partition_token;
        if Chunk::is_chunk(partition) {
            return self.consumer.consume_from(origin, records).await;
        }
        let bytes = records.iter().map(buffer::size).sum();
        self.wait_until(|b| {
            let admitted = b.admits(partition, bytes);
            if admitted {
                b.insert(records);
            }
            admitted
        })
        .await;
        match self.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn started(&self, partition: &PartitionToken, watermark: Timestamp) {
        if !Chunk::is_chunk(partition) {
            self.update(|b| b.started(partition, watermark));
        }
    }

    fn announced(&self, children: &[NewPartition]) {
        self.update(|b| {
            for c in children {
                b.announced(&c.token, c.start);
            }
        });
    }

    fn read_through(&self, partition: &PartitionToken, t: Timestamp) {
        if !Chunk::is_chunk(partition) {
            self.update(|b| b.read_through(partition, t));
        }
    }

    fn ended(
        &self,
        partition: &PartitionToken,
        end: Timestamp,
    ) -> impl Future<Output = Result<(), ConsumerError>> + Send {
        let chunk = Chunk::is_chunk(partition);
        if !chunk {
            self.update(|b| b.ended(partition, end));
        }
        async move {
            if !chunk {
                self.wait_until(|b| b.drained(partition)).await;
            }
            match self.failure() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
    }

    /// Unfinished partitions of the store when this runner became the active one, with
    /// their watermarks: the low watermark waits for them before any reader starts.
    fn resume(&self, partitions: &[(PartitionToken, Timestamp)]) {
        self.update(|b| {
            for (token, watermark) in partitions {
                if !Chunk::is_chunk(token) {
                    b.resume(token, *watermark);
                }
            }
        });
    }

    fn reset(&self) {
        self.update(|b| *b = b.emptied());
    }

    /// Resolves once every released batch has been acknowledged (or the consumer failed).
    async fn settle(&self) {
        self.wait_until(|b| b.in_flight() == 0).await;
    }
}

impl<C: Consumer> Floor for Ordered<C> {
    fn floor(&self, partition: &PartitionToken) -> Option<Timestamp> {
        self.shared
            .buffer
            .lock()
            .expect("ordering buffer")
            .floor(partition)
    }
}

/// The release task: hands each released batch to the consumer, in order, then lets the
/// buffer forget it.
async fn deliver<C: Consumer>(
    consumer: Arc<C>,
    mut released: mpsc::UnboundedReceiver<Vec<DataChangeRecord>>,
    shared: Arc<Shared>,
) {
    while let Some(batch) = released.recv().await {
        if let Err(e) = consumer.consume(&batch).await {
            tracing::error!(error = %e, "the consumer refused released transactions");
            *shared.failure.lock().expect("ordering failure") = Some(e.to_string());
            shared.changed.notify_waiters();
            return;
        }
        shared
            .buffer
            .lock()
            .expect("ordering buffer")
            .delivered(&batch);
        shared.changed.notify_waiters();
    }
}
