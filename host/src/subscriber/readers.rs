//! The readers of one runner: one task per partition it holds, keyed by lease.
//!
//! A [`ReaderSet`] spawns a reader for a claimed partition, asks readers to stop
//! ([`StopMode`]), aborts those whose lease was lost, and hands back each reader's end with
//! the lease it ran under, so a late exit cannot be mistaken for a newer reader of the same
//! partition. A reader task that panics ends as [`ReaderError::Panicked`], an error like any
//! other: the runner drains, it does not unwind.

use crate::snapshot::Chunk;
use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::{AbortHandle, Id, JoinSet};

use crate::partition::{Claim, Lease, PartitionToken};
use crate::reader::{self, ReaderContext, ReaderError, ReaderOutcome, Sink, StopMode, StopSignal};

/// What the runner does with a partition once its reader stopped on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterStop {
    /// Keep the lease (it is released with all the others when the run ends).
    Keep,
    /// Give the lease up at once (rebalancing).
    Release,
}

/// A running reader.
struct Reader {
    lease: Lease,
    stop: watch::Sender<StopMode>,
    after: AfterStop,
    abort: AbortHandle,
}

/// A reader that ended: under which lease, how, and what the runner meant to do after.
pub(crate) struct Ended {
    pub lease: Lease,
    pub result: Result<ReaderOutcome, ReaderError>,
    /// `None` when the reader was no longer the partition's current one (it was aborted as
    /// lost, or the runner dropped it after a lapse): its end changes nothing.
    pub after: Option<AfterStop>,
}

/// Every reader of one runner.
pub(crate) struct ReaderSet<S> {
    ctx: Arc<ReaderContext<S>>,
    tasks: JoinSet<Result<ReaderOutcome, ReaderError>>,
    /// The lease each task runs under, to name the partition of a task that panicked.
    task_leases: HashMap<Id, Lease>,
    readers: HashMap<PartitionToken, Reader>,
}

impl<S: Sink> ReaderSet<S> {
    pub fn new(ctx: Arc<ReaderContext<S>>) -> Self {
        Self {
            ctx,
            tasks: JoinSet::new(),
            task_leases: HashMap::new(),
            readers: HashMap::new(),
        }
    }

    /// Partitions with a reader (including those stopping).
    pub fn len(&self) -> usize {
        self.readers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.readers.is_empty()
    }

    /// Snapshot chunks with a reader.
    pub fn chunks(&self) -> usize {
        self.readers.keys().filter(|t| Chunk::is_chunk(t)).count()
    }

    /// Partitions with a reader that this runner keeps.
    pub fn keeping(&self) -> usize {
        self.readers
            .values()
            .filter(|r| r.after == AfterStop::Keep)
            .count()
    }

    /// Whether `lease` is the lease of a current reader.
    pub fn holds(&self, lease: &Lease) -> bool {
        self.readers
            .get(&lease.token)
            .is_some_and(|r| r.lease == *lease)
    }

    /// Starts reading a claimed partition.
    pub fn spawn(&mut self, claim: Claim) {
        let Claim { partition, lease } = claim;
        tracing::debug!(partition = ?lease.token, epoch = %lease.epoch,
            watermark = %partition.watermark, "starting reader");
        let (stop, signal) = StopSignal::new();
        let ctx = Arc::clone(&self.ctx);
        let abort = self
            .tasks
            .spawn(reader::run(ctx, partition, lease.clone(), signal));
        self.task_leases.insert(abort.id(), lease.clone());
        self.readers.insert(
            lease.token.clone(),
            Reader {
                lease,
                stop,
                after: AfterStop::Keep,
                abort,
            },
        );
    }

    /// Asks up to `count` kept readers to drain, then has their leases released.
    pub fn drain_to_release(&mut self, count: usize) {
        let readers = self
            .readers
            .values_mut()
            .filter(|r| r.after == AfterStop::Keep);
        for r in readers.take(count) {
            r.after = AfterStop::Release;
            escalate(&r.stop, StopMode::Drain);
        }
    }

    /// Asks every reader to stop in `mode` (a reader never goes back to a milder mode).
    pub fn stop_all(&mut self, mode: StopMode) {
        for r in self.readers.values() {
            escalate(&r.stop, mode);
        }
    }

    /// Aborts the readers of `lost` leases at once; returns how many were current.
    pub fn lose(&mut self, lost: &[Lease]) -> usize {
        let mut n = 0;
        for lease in lost {
            if self.holds(lease)
                && let Some(r) = self.readers.remove(&lease.token)
            {
                tracing::info!(partition = ?lease.token, epoch = %lease.epoch,
                    "lease lost: stopping the reader");
                r.abort.abort();
                n += 1;
            }
        }
        n
    }

    /// Aborts every reader and forgets them all; returns their leases.
    pub fn abandon(&mut self) -> Vec<Lease> {
        self.readers
            .drain()
            .map(|(_, r)| {
                r.abort.abort();
                r.lease
            })
            .collect()
    }

    /// Whether a reader task (current or not) has yet to be joined.
    pub fn has_tasks(&self) -> bool {
        !self.tasks.is_empty()
    }

    /// Waits for the next reader to end; `None` when no task is left. A current reader is
    /// forgotten as it ends.
    pub async fn join_next(&mut self) -> Option<Ended> {
        let joined = self.tasks.join_next_with_id().await?;
        let (id, result) = match joined {
            Ok((id, result)) => (id, result),
            Err(e) => {
                let id = e.id();
                let lease = self.task_leases.get(&id).cloned();
                let result = if e.is_cancelled() {
                    Ok(ReaderOutcome::Lost)
                } else {
                    Err(ReaderError::Panicked {
                        partition: lease.map(|l| l.token).unwrap_or_default(),
                        message: panic_message(e),
                    })
                };
                (id, result)
            }
        };
        let lease = self
            .task_leases
            .remove(&id)
            .expect("every reader task has a lease");
        let after = if self.holds(&lease) {
            self.readers.remove(&lease.token).map(|r| r.after)
        } else {
            None
        };
        Some(Ended {
            lease,
            result,
            after,
        })
    }
}

/// Moves a reader's mode to `mode` unless it is already further down.
fn escalate(stop: &watch::Sender<StopMode>, mode: StopMode) {
    stop.send_if_modified(|current| {
        let escalated = mode > *current;
        if escalated {
            *current = mode;
        }
        escalated
    });
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned()),
        Err(e) => e.to_string(),
    }
}
