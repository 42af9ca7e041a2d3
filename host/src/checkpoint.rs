//! Checkpoints: acknowledged positions, coalesced into few metadata writes.
//!
//! Place in the flow: after the consumer's acknowledgement. Each partition reader reports its
//! watermark here after every acknowledged batch (a memory write); [`Checkpointer::flush`]
//! writes every changed watermark of this runner in one commit, on a timer and at shutdown.
//! Invariants: a watermark reported here never passes an unacknowledged record; a flush never
//! moves a stored watermark backwards, and never touches a partition once it has finished
//! (finishing takes the same lock as flushing).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::partition::{PartitionStore, PartitionToken, StoreError};
use crate::timestamp::Timestamp;

/// Pending watermarks of the partitions this runner reads.
pub struct Checkpointer {
    store: Arc<dyn PartitionStore>,
    pending: Mutex<HashMap<PartitionToken, Mark>>,
    /// Serializes flushes and finishes, so a late flush cannot rewind a finished partition.
    write: tokio::sync::Mutex<()>,
}

#[derive(Clone, Copy)]
struct Mark {
    watermark: Timestamp,
    dirty: bool,
}

impl Checkpointer {
    pub fn new(store: Arc<dyn PartitionStore>) -> Self {
        Self {
            store,
            pending: Mutex::new(HashMap::new()),
            write: tokio::sync::Mutex::new(()),
        }
    }

    /// Records that every record of `partition` before `watermark` is acknowledged.
    pub fn advance(&self, partition: &PartitionToken, watermark: Timestamp) {
        let mut pending = self.pending.lock().expect("checkpoint lock");
        let mark = pending.entry(partition.clone()).or_insert(Mark {
            watermark,
            dirty: true,
        });
        if watermark > mark.watermark {
            mark.watermark = watermark;
            mark.dirty = true;
        }
    }

    /// Writes every changed watermark in one commit; returns how many partitions it wrote.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let _write = self.write.lock().await;
        let marks: Vec<(PartitionToken, Timestamp)> = {
            let mut pending = self.pending.lock().expect("checkpoint lock");
            pending
                .iter_mut()
                .filter(|(_, m)| m.dirty)
                .map(|(t, m)| {
                    m.dirty = false;
                    (t.clone(), m.watermark)
                })
                .collect()
        };
        if marks.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.store.update_watermarks(&marks).await {
            // Keep them dirty so the next flush tries again.
            let mut pending = self.pending.lock().expect("checkpoint lock");
            for (t, _) in &marks {
                if let Some(m) = pending.get_mut(t) {
                    m.dirty = true;
                }
            }
            return Err(e);
        }
        Ok(marks.len())
    }

    /// Marks `partition` FINISHED at `watermark` and forgets it.
    pub async fn finish(
        &self,
        partition: &PartitionToken,
        watermark: Timestamp,
    ) -> Result<(), StoreError> {
        let _write = self.write.lock().await;
        self.store.finish(partition, watermark).await?;
        self.pending
            .lock()
            .expect("checkpoint lock")
            .remove(partition);
        Ok(())
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
        let before = store.writes();
        let cp = Checkpointer::new(store.clone());
        let t1: Timestamp = "2026-01-01T00:00:01Z".parse().unwrap();
        let t2: Timestamp = "2026-01-01T00:00:02Z".parse().unwrap();
        cp.advance(&"a".into(), t1);
        cp.advance(&"a".into(), t2);
        cp.advance(&"a".into(), t1);
        cp.advance(&"b".into(), t1);
        assert_eq!(cp.flush().await.unwrap(), 2);
        assert_eq!(cp.flush().await.unwrap(), 0);
        assert_eq!(store.writes() - before, 1);
        let rows = store.snapshot();
        let a = rows.iter().find(|p| p.token.as_str() == "a").unwrap();
        assert_eq!(a.watermark, t2);
    }
}
