//! In-memory partition store: one runner, nothing survives the process.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    NewPartition, PartitionMetadata, PartitionState, PartitionStore, PartitionToken, StoreError,
};
use crate::timestamp::Timestamp;

/// A [`PartitionStore`] kept in memory; the default without `--metadata-table`.
#[derive(Default)]
pub struct MemoryStore {
    rows: Mutex<BTreeMap<PartitionToken, PartitionMetadata>>,
    writes: AtomicU64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<PartitionToken, PartitionMetadata>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        f(&mut self.rows.lock().expect("memory store lock"))
    }

    fn select(&self, pred: impl Fn(&PartitionMetadata) -> bool) -> Vec<PartitionMetadata> {
        let rows = self.rows.lock().expect("memory store lock");
        let mut out: Vec<_> = rows.values().filter(|p| pred(p)).cloned().collect();
        out.sort_by_key(|p| p.start);
        out
    }

    /// A snapshot of every row, for tests and status.
    pub fn snapshot(&self) -> Vec<PartitionMetadata> {
        self.select(|_| true)
    }
}

fn row<'a>(
    rows: &'a mut BTreeMap<PartitionToken, PartitionMetadata>,
    token: &PartitionToken,
) -> Result<&'a mut PartitionMetadata, StoreError> {
    rows.get_mut(token)
        .ok_or_else(|| StoreError::UnknownPartition {
            token: token.clone(),
        })
}

#[async_trait::async_trait]
impl PartitionStore for MemoryStore {
    async fn prepare(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn seed(&self, root: NewPartition) -> Result<bool, StoreError> {
        self.write(|rows| {
            if !rows.is_empty() {
                return Ok(false);
            }
            rows.insert(root.token.clone(), root.into());
            Ok(true)
        })
    }

    async fn ready(&self) -> Result<Vec<PartitionMetadata>, StoreError> {
        let rows = self.rows.lock().expect("memory store lock");
        let finished = |t: &PartitionToken| {
            rows.get(t)
                .is_none_or(|p| p.state == PartitionState::Finished)
        };
        let mut out: Vec<_> = rows
            .values()
            .filter(|p| p.state == PartitionState::Created && p.parents.iter().all(finished))
            .cloned()
            .collect();
        out.sort_by_key(|p| p.start);
        Ok(out)
    }

    async fn in_progress(&self) -> Result<Vec<PartitionMetadata>, StoreError> {
        Ok(self.select(|p| matches!(p.state, PartitionState::Scheduled | PartitionState::Running)))
    }

    async fn schedule(&self, tokens: &[PartitionToken]) -> Result<Vec<PartitionToken>, StoreError> {
        self.write(|rows| {
            let mut moved = Vec::new();
            for t in tokens {
                let p = row(rows, t)?;
                if p.state == PartitionState::Created {
                    p.state = PartitionState::Scheduled;
                    moved.push(t.clone());
                }
            }
            Ok(moved)
        })
    }

    async fn mark_running(&self, token: &PartitionToken) -> Result<(), StoreError> {
        self.write(|rows| {
            row(rows, token)?.state = PartitionState::Running;
            Ok(())
        })
    }

    async fn add_children(&self, children: &[NewPartition]) -> Result<usize, StoreError> {
        self.write(|rows| {
            let mut inserted = 0;
            for c in children {
                if !rows.contains_key(&c.token) {
                    rows.insert(c.token.clone(), c.clone().into());
                    inserted += 1;
                }
            }
            Ok(inserted)
        })
    }

    async fn update_watermarks(
        &self,
        marks: &[(PartitionToken, Timestamp)],
    ) -> Result<(), StoreError> {
        self.write(|rows| {
            for (t, w) in marks {
                let p = row(rows, t)?;
                p.watermark = p.watermark.max(*w);
            }
            Ok(())
        })
    }

    async fn finish(&self, token: &PartitionToken, watermark: Timestamp) -> Result<(), StoreError> {
        self.write(|rows| {
            let p = row(rows, token)?;
            p.watermark = p.watermark.max(watermark);
            p.state = PartitionState::Finished;
            Ok(())
        })
    }

    async fn unfinished(&self) -> Result<usize, StoreError> {
        Ok(self.select(|p| p.state != PartitionState::Finished).len())
    }

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(token: &str, parents: &[&str]) -> NewPartition {
        NewPartition {
            token: token.into(),
            parents: parents.iter().map(|p| PartitionToken::from(*p)).collect(),
            start: "2026-01-01T00:00:00Z".parse().unwrap(),
            end: None,
            heartbeat_millis: 1000,
        }
    }

    #[tokio::test]
    async fn a_merged_child_waits_for_every_parent() {
        let store = MemoryStore::new();
        assert!(store.seed(new("a", &[])).await.unwrap());
        store.add_children(&[new("b", &[])]).await.unwrap();
        let child = new("c", &["a", "b"]);
        // Both parents announce the merged child; it is inserted once.
        assert_eq!(
            store
                .add_children(std::slice::from_ref(&child))
                .await
                .unwrap(),
            1
        );
        assert_eq!(store.add_children(&[child]).await.unwrap(), 0);
        for t in ["a", "b"] {
            store.schedule(&[t.into()]).await.unwrap();
        }
        let w = "2026-01-01T00:00:01Z".parse().unwrap();
        store.finish(&"a".into(), w).await.unwrap();
        assert!(store.ready().await.unwrap().is_empty());
        store.finish(&"b".into(), w).await.unwrap();
        let ready = store.ready().await.unwrap();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].token.as_str(), "c");
        assert_eq!(
            store
                .schedule(&["c".into(), "c".into()])
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn seed_only_fills_an_empty_store() {
        let store = MemoryStore::new();
        assert!(store.seed(new("Parent0", &[])).await.unwrap());
        assert!(!store.seed(new("Parent0", &[])).await.unwrap());
    }
}
