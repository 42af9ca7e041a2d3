//! In-memory partition store: runners of one process, nothing survives the process.
//!
//! The same semantics as the Spanner store (claims, epochs, fencing, liveness by heartbeat),
//! kept in maps under one lock, with the local clock for liveness.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{
    Claim, Lease, Load, NewPartition, PartitionMetadata, PartitionState, PartitionStatus,
    PartitionStore, PartitionToken, RunnerLoad, RunnerStatus, StoreError, StoreStatus,
};
use crate::timestamp::Timestamp;

/// A [`PartitionStore`] kept in memory; the default without `--metadata-table`.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    writes: AtomicU64,
}

#[derive(Default)]
struct State {
    rows: BTreeMap<PartitionToken, PartitionMetadata>,
    /// Current lease of each claimed partition: owner (None once released) and epoch.
    leases: HashMap<PartitionToken, (Option<String>, i64)>,
    /// Last heartbeat (monotonic and wall clock) and capacity of each runner.
    runners: HashMap<String, (Instant, Timestamp, usize)>,
}

impl State {
    fn row(&mut self, token: &PartitionToken) -> Result<&mut PartitionMetadata, StoreError> {
        self.rows
            .get_mut(token)
            .ok_or_else(|| StoreError::UnknownPartition {
                token: token.clone(),
            })
    }

    fn holds(&self, runner: &str, lease: &Lease) -> bool {
        matches!(self.leases.get(&lease.token), Some((Some(o), e)) if o == runner && *e == lease.epoch)
    }

    fn fenced(&self, runner: &str, lease: &Lease) -> Result<(), StoreError> {
        if self.holds(runner, lease) {
            Ok(())
        } else {
            Err(StoreError::LeaseLost {
                token: lease.token.clone(),
                epoch: lease.epoch,
            })
        }
    }

    fn alive(&self, runner: &str, lease_duration: Duration) -> bool {
        self.runners
            .get(runner)
            .is_some_and(|(at, _, _)| at.elapsed() < lease_duration)
    }

    fn parents_finished(&self, p: &PartitionMetadata) -> bool {
        p.parents.iter().all(|t| {
            self.rows
                .get(t)
                .is_none_or(|p| p.state == PartitionState::Finished)
        })
    }

    fn claimable(&self, runner: &str, p: &PartitionMetadata, lease_duration: Duration) -> bool {
        // Never our own (see `SpannerStore::claim`).
        let free = match self.leases.get(&p.token) {
            None | Some((None, _)) => true,
            Some((Some(owner), _)) => owner != runner && !self.alive(owner, lease_duration),
        };
        free && self.active(p)
    }

    /// A partition someone should be reading: ready, or scheduled or running.
    fn active(&self, p: &PartitionMetadata) -> bool {
        match p.state {
            PartitionState::Created => self.parents_finished(p),
            PartitionState::Scheduled | PartitionState::Running => true,
            PartitionState::Finished => false,
        }
    }

    /// Unfinished partitions whose lease `runner` holds.
    fn held_by(&self, runner: &str) -> usize {
        self.leases
            .iter()
            .filter(|(t, (o, _))| {
                o.as_deref() == Some(runner)
                    && self
                        .rows
                        .get(*t)
                        .is_some_and(|p| p.state != PartitionState::Finished)
            })
            .count()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        f(&mut self.state.lock().expect("memory store lock"))
    }

    /// A snapshot of every row, for tests.
    pub fn snapshot(&self) -> Vec<PartitionMetadata> {
        let state = self.state.lock().expect("memory store lock");
        let mut out: Vec<_> = state.rows.values().cloned().collect();
        out.sort_by_key(|p| p.start);
        out
    }
}

#[async_trait::async_trait]
impl PartitionStore for MemoryStore {
    async fn prepare(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn seed(&self, root: NewPartition) -> Result<bool, StoreError> {
        self.write(|s| {
            if !s.rows.is_empty() {
                return Ok(false);
            }
            s.rows.insert(root.token.clone(), root.into());
            Ok(true)
        })
    }

    async fn heartbeat(&self, runner: &str, capacity: usize) -> Result<(), StoreError> {
        self.write(|s| {
            s.runners.insert(
                runner.to_owned(),
                (Instant::now(), Timestamp::now(), capacity),
            );
            Ok(())
        })
    }

    async fn reset(&self, runner: &str) -> Result<(), StoreError> {
        self.write(|s| {
            for (owner, _) in s.leases.values_mut() {
                if owner.as_deref() == Some(runner) {
                    *owner = None;
                }
            }
            Ok(())
        })
    }

    async fn deregister(&self, runner: &str) -> Result<(), StoreError> {
        self.write(|s| {
            s.runners.remove(runner);
            Ok(())
        })
    }

    async fn claim(
        &self,
        runner: &str,
        room: usize,
        lease_duration: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        self.write(|s| {
            let mut candidates: Vec<PartitionMetadata> = s
                .rows
                .values()
                .filter(|p| s.claimable(runner, p, lease_duration))
                .cloned()
                .collect();
            candidates.sort_by_key(|p| p.start);
            candidates.truncate(room);
            let mut claims = Vec::with_capacity(candidates.len());
            for mut p in candidates {
                let epoch = s.leases.get(&p.token).map_or(0, |(_, e)| *e) + 1;
                s.leases
                    .insert(p.token.clone(), (Some(runner.to_owned()), epoch));
                if p.state == PartitionState::Created {
                    p.state = PartitionState::Scheduled;
                    s.row(&p.token)?.state = PartitionState::Scheduled;
                }
                let lease = Lease {
                    token: p.token.clone(),
                    epoch,
                };
                claims.push(Claim {
                    partition: p,
                    lease,
                });
            }
            Ok(claims)
        })
    }

    async fn mark_running(&self, runner: &str, lease: &Lease) -> Result<(), StoreError> {
        self.write(|s| {
            s.fenced(runner, lease)?;
            s.row(&lease.token)?.state = PartitionState::Running;
            Ok(())
        })
    }

    async fn add_children(&self, children: &[NewPartition]) -> Result<usize, StoreError> {
        self.write(|s| {
            let mut inserted = 0;
            for c in children {
                if !s.rows.contains_key(&c.token) {
                    s.rows.insert(c.token.clone(), c.clone().into());
                    inserted += 1;
                }
            }
            Ok(inserted)
        })
    }

    async fn update_watermarks(
        &self,
        runner: &str,
        marks: &[(Lease, Timestamp)],
    ) -> Result<Vec<Lease>, StoreError> {
        self.write(|s| {
            let mut lost = Vec::new();
            for (lease, w) in marks {
                if !s.holds(runner, lease) {
                    lost.push(lease.clone());
                    continue;
                }
                let p = s.row(&lease.token)?;
                p.watermark = p.watermark.max(*w);
            }
            Ok(lost)
        })
    }

    async fn finish(
        &self,
        runner: &str,
        lease: &Lease,
        watermark: Timestamp,
    ) -> Result<(), StoreError> {
        self.write(|s| {
            s.fenced(runner, lease)?;
            let p = s.row(&lease.token)?;
            p.watermark = p.watermark.max(watermark);
            p.state = PartitionState::Finished;
            Ok(())
        })
    }

    async fn release(&self, runner: &str, leases: &[Lease]) -> Result<(), StoreError> {
        self.write(|s| {
            for lease in leases {
                if s.holds(runner, lease) {
                    s.leases.insert(lease.token.clone(), (None, lease.epoch));
                }
            }
            Ok(())
        })
    }

    async fn load(&self, lease_duration: Duration) -> Result<Load, StoreError> {
        let s = self.state.lock().expect("memory store lock");
        Ok(Load {
            runners: s
                .runners
                .iter()
                .filter(|(_, (at, _, _))| at.elapsed() < lease_duration)
                .map(|(id, (_, _, capacity))| RunnerLoad {
                    capacity: *capacity,
                    held: s.held_by(id),
                })
                .collect(),
            active_partitions: s.rows.values().filter(|p| s.active(p)).count(),
        })
    }

    async fn unfinished(&self) -> Result<usize, StoreError> {
        let s = self.state.lock().expect("memory store lock");
        Ok(s.rows
            .values()
            .filter(|p| p.state != PartitionState::Finished)
            .count())
    }

    async fn status(&self, lease_duration: Duration) -> Result<StoreStatus, StoreError> {
        let s = self.state.lock().expect("memory store lock");
        let owner = |t: &PartitionToken| s.leases.get(t).cloned();
        let mut runners: Vec<RunnerStatus> = s
            .runners
            .iter()
            .map(|(id, (at, wall, _))| RunnerStatus {
                runner_id: id.clone(),
                heartbeat_at: *wall,
                alive: at.elapsed() < lease_duration,
                partitions: s.held_by(id),
            })
            .collect();
        runners.sort_by(|a, b| a.runner_id.cmp(&b.runner_id));
        let partitions = s
            .rows
            .values()
            .map(|p| {
                let lease = owner(&p.token);
                PartitionStatus {
                    token: p.token.clone(),
                    state: p.state.as_str().to_owned(),
                    owner: lease.as_ref().and_then(|(o, _)| o.clone()),
                    epoch: lease.map(|(_, e)| e),
                    watermark: p.watermark,
                }
            })
            .collect();
        Ok(StoreStatus {
            runners,
            partitions,
        })
    }

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    fn new(token: &str, parents: &[&str]) -> NewPartition {
        NewPartition {
            token: token.into(),
            parents: parents.iter().map(|p| PartitionToken::from(*p)).collect(),
            start: "2026-01-01T00:00:00Z".parse().unwrap(),
            end: None,
            heartbeat_millis: 1000,
        }
    }

    fn tokens(claims: &[Claim]) -> Vec<&str> {
        claims.iter().map(|c| c.lease.token.as_str()).collect()
    }

    #[tokio::test]
    async fn a_merged_child_waits_for_every_parent() {
        let store = MemoryStore::new();
        store.heartbeat("r", 10).await.unwrap();
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
        let claims = store.claim("r", 10, LEASE).await.unwrap();
        assert_eq!(tokens(&claims), ["a", "b"]);
        let w = "2026-01-01T00:00:01Z".parse().unwrap();
        store.finish("r", &claims[0].lease, w).await.unwrap();
        assert!(store.claim("r", 10, LEASE).await.unwrap().is_empty());
        store.finish("r", &claims[1].lease, w).await.unwrap();
        assert_eq!(tokens(&store.claim("r", 10, LEASE).await.unwrap()), ["c"]);
        assert!(store.claim("r", 10, LEASE).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn writes_are_fenced_by_owner_and_epoch() {
        let store = MemoryStore::new();
        store.seed(new("a", &[])).await.unwrap();
        store.heartbeat("r1", 10).await.unwrap();
        let old = store.claim("r1", 1, LEASE).await.unwrap().remove(0).lease;
        // r1 stops heartbeating: with a zero lease duration it is dead at once.
        store.heartbeat("r2", 10).await.unwrap();
        let new_lease = store
            .claim("r2", 1, Duration::ZERO)
            .await
            .unwrap()
            .remove(0)
            .lease;
        assert_eq!(new_lease.epoch, old.epoch + 1);
        let w = "2026-01-01T00:00:05Z".parse().unwrap();
        let lost = store
            .update_watermarks("r1", &[(old.clone(), w)])
            .await
            .unwrap();
        assert_eq!(lost, std::slice::from_ref(&old));
        assert!(matches!(
            store.finish("r1", &old, w).await,
            Err(StoreError::LeaseLost { .. })
        ));
        assert_eq!(store.snapshot()[0].state, PartitionState::Scheduled);
        assert!(
            store
                .update_watermarks("r2", &[(new_lease.clone(), w)])
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.snapshot()[0].watermark, w);
        // A released partition is claimable again at once.
        store.release("r2", &[new_lease]).await.unwrap();
        assert_eq!(store.claim("r1", 1, LEASE).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn seed_only_fills_an_empty_store() {
        let store = MemoryStore::new();
        assert!(store.seed(new("Parent0", &[])).await.unwrap());
        assert!(!store.seed(new("Parent0", &[])).await.unwrap());
    }

    #[test]
    fn fair_shares_round_up_and_respect_capacities() {
        let load = |caps: &[usize], p| Load {
            runners: caps
                .iter()
                .map(|&capacity| RunnerLoad { capacity, held: 0 })
                .collect(),
            active_partitions: p,
        };
        assert_eq!(load(&[400, 400, 400], 10).fair_share(400), 4);
        assert_eq!(load(&[400, 400, 400], 9).fair_share(400), 3);
        assert_eq!(load(&[], 5).fair_share(400), 5);
        // A runner limited to one partition takes one; the others share the rest.
        assert_eq!(load(&[1, 400, 400], 6).fair_share(400), 3);
        assert_eq!(load(&[1, 400, 400], 6).fair_share(1), 1);
        assert_eq!(load(&[1, 1], 6).fair_share(1), 1);
    }

    #[test]
    fn underloaded_means_two_below_the_share() {
        let load = |held: &[(usize, usize)], p| Load {
            runners: held
                .iter()
                .map(|&(capacity, held)| RunnerLoad { capacity, held })
                .collect(),
            active_partitions: p,
        };
        // 200 partitions over 15 runners: share 14; a runner at 10 is underloaded.
        let mut spread = vec![(400, 14); 10];
        spread.extend([(400, 13); 4]);
        spread.push((400, 10));
        assert!(load(&spread, 200).underloaded());
        assert!(!load(&[(400, 14), (400, 13)], 27).underloaded());
        // A runner at its capacity is not underloaded, whatever the others hold.
        assert!(!load(&[(1, 1), (400, 5), (400, 5)], 11).underloaded());
    }
}
