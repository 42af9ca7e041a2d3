//! Checkpoints: acknowledged positions, coalesced into few metadata writes.
//!
//! Place in the flow: after the consumer's acknowledgement. Each partition reader reports its
//! watermark here after every acknowledged batch (a memory write); [`Checkpointer::flush`]
//! writes every changed watermark of this runner in one commit, on a timer and at shutdown.
//! Invariants: a watermark reported here never passes an unacknowledged record; a flush never
//! moves a stored watermark backwards, and never touches a partition once it has finished
//! (finishing takes the same lock as flushing). Every write names the partition's lease:
//! the store refuses the writes of leases this runner lost, and the flush reports them so
//! their readers stop. With a `Floor` (the transactions buffer), a written watermark never
//! passes a record the floor still holds, whatever the reader acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::observe::{Event, Observer};
use crate::partition::{Epoch, Lease, PartitionStore, PartitionToken, RunnerId, StoreError};
use crate::timestamp::Timestamp;

/// How far back a partition's checkpoint must stay whatever its reader acknowledged: a
/// later stage still holds some of its records.
pub(crate) trait Floor: Send + Sync {
    /// The earliest commit timestamp of a record of `partition` not yet delivered, if any.
    fn floor(&self, partition: &PartitionToken) -> Option<Timestamp>;
}

/// Pending watermarks of the partitions this runner reads.
pub struct Checkpointer {
    store: Arc<dyn PartitionStore>,
    runner: RunnerId,
    observer: Arc<dyn Observer>,
    floor: Option<Arc<dyn Floor>>,
    pending: Mutex<HashMap<PartitionToken, Mark>>,
    /// Serializes flushes and finishes, so a late flush cannot rewind a finished partition.
    write: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct Mark {
    lease: Lease,
    /// What the reader acknowledged.
    watermark: Timestamp,
    /// What was last written (or read at the claim).
    written: Timestamp,
    dirty: bool,
}

impl Checkpointer {
    pub fn new(
        store: Arc<dyn PartitionStore>,
        runner: &RunnerId,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Self {
            store,
            runner: runner.clone(),
            observer,
            floor: None,
            pending: Mutex::new(HashMap::new()),
            write: tokio::sync::Mutex::new(()),
        }
    }

    /// Keeps every written watermark at or before `floor`'s.
    pub(crate) fn with_floor(mut self, floor: Arc<dyn Floor>) -> Self {
        self.floor = Some(floor);
        self
    }

    /// Starts tracking a partition this runner just claimed, at its stored watermark.
    pub fn hold(&self, lease: &Lease, watermark: Timestamp) {
        self.pending.lock().expect("checkpoint lock").insert(
            lease.token.clone(),
            Mark {
                lease: lease.clone(),
                watermark,
                written: watermark,
                dirty: false,
            },
        );
    }

    /// Stops tracking a partition (released or lost); returns its lease if it was held.
    pub fn forget(&self, partition: &PartitionToken) -> Option<Lease> {
        self.pending
            .lock()
            .expect("checkpoint lock")
            .remove(partition)
            .map(|m| m.lease)
    }

    /// Records that every record of `partition` before `watermark` is acknowledged.
    pub fn advance(&self, partition: &PartitionToken, watermark: Timestamp) {
        let mut pending = self.pending.lock().expect("checkpoint lock");
        if let Some(mark) = pending.get_mut(partition)
            && watermark > mark.watermark
        {
            mark.watermark = watermark;
            mark.dirty = true;
        }
    }

    /// Writes every changed watermark in one commit; returns the leases the store refused
    /// (lost to another runner), which are no longer tracked.
    pub async fn flush(&self) -> Result<Vec<Lease>, StoreError> {
        let _write = self.write.lock().await;
        let marks: Vec<(Lease, Timestamp)> = {
            let mut pending = self.pending.lock().expect("checkpoint lock");
            let floor = self.floor.as_deref();
            pending
                .iter_mut()
                .filter(|(_, m)| m.dirty)
                .filter_map(|(token, m)| {
                    let held = floor.and_then(|f| f.floor(token));
                    let w = held.map_or(m.watermark, |h| h.min(m.watermark));
                    // Held back: write again once the floor has risen.
                    m.dirty = w < m.watermark;
                    (w > m.written).then(|| (m.lease.clone(), w))
                })
                .collect()
        };
        if marks.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let result = self.store.update_watermarks(&self.runner, &marks).await;
        let took = started.elapsed();
        match result {
            Ok(lost) => {
                self.observer.observe(Event::Checkpointed {
                    written: marks.len(),
                    lost: lost.len(),
                    took,
                });
                let mut pending = self.pending.lock().expect("checkpoint lock");
                for (l, w) in &marks {
                    if let Some(m) = pending.get_mut(&l.token) {
                        m.written = m.written.max(*w);
                    }
                }
                for l in &lost {
                    pending.remove(&l.token);
                }
                Ok(lost)
            }
            Err(e) => {
                self.observer.observe(Event::CheckpointFailed { took });
                // Keep them dirty so the next flush tries again.
                let mut pending = self.pending.lock().expect("checkpoint lock");
                for (l, _) in &marks {
                    if let Some(m) = pending.get_mut(&l.token) {
                        m.dirty = true;
                    }
                }
                Err(e)
            }
        }
    }

    /// Marks `partition` FINISHED at `watermark` (if this runner still holds it) and forgets
    /// it.
    pub async fn finish(
        &self,
        partition: &PartitionToken,
        watermark: Timestamp,
    ) -> Result<(), StoreError> {
        let _write = self.write.lock().await;
        let lease = self
            .pending
            .lock()
            .expect("checkpoint lock")
            .get(partition)
            .map(|m| m.lease.clone())
            .ok_or_else(|| StoreError::LeaseLost {
                token: partition.clone(),
                epoch: Epoch::default(),
            })?;
        let result = self.store.finish(&self.runner, &lease, watermark).await;
        if matches!(result, Ok(()) | Err(StoreError::LeaseLost { .. })) {
            self.pending
                .lock()
                .expect("checkpoint lock")
                .remove(partition);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::{MemoryStore, NewPartition};

    #[tokio::test]
    async fn flush_coalesces_and_never_rewinds() {
        let store = Arc::new(MemoryStore::new());
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        for token in ["a", "b"] {
            store
                .add_children(&[NewPartition {
                    token: token.into(),
                    parents: vec![],
                    start: t0,
                    end: None,
                    heartbeat_millis: 1000,
                }])
                .await
                .unwrap();
        }
        let r = RunnerId::from("r");
        store.heartbeat(&r, 10).await.unwrap();
        let claims = store
            .claim(&r, 2, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        let before = store.writes();
        let cp = Checkpointer::new(store.clone(), &r, Arc::new(crate::observe::NoObserver));
        for c in &claims {
            cp.hold(&c.lease, t0);
        }
        let t1: Timestamp = "2026-01-01T00:00:01Z".parse().unwrap();
        let t2: Timestamp = "2026-01-01T00:00:02Z".parse().unwrap();
        cp.advance(&"a".into(), t1);
        cp.advance(&"a".into(), t2);
        cp.advance(&"a".into(), t1);
        cp.advance(&"b".into(), t1);
        assert!(cp.flush().await.unwrap().is_empty());
        assert!(cp.flush().await.unwrap().is_empty());
        assert_eq!(store.writes() - before, 1);
        let rows = store.snapshot();
        let a = rows.iter().find(|p| p.token.as_str() == "a").unwrap();
        assert_eq!(a.watermark, t2);
    }
}
