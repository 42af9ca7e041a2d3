//! In-memory partition store: runners of one process, nothing survives the process.
//!
//! The same semantics as the Spanner store (claims, epochs, fencing, liveness by heartbeat),
//! kept in maps under one lock, with tokio's clock for liveness (so tests with paused time can
//! let a lease lapse).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{
    CLAIM_BATCH, Claim, Epoch, Lease, Load, NewPartition, PartitionMetadata, PartitionState,
    PartitionStatus, PartitionStore, PartitionToken, RunnerId, RunnerLoad, RunnerStatus,
    StoreError, StoreStatus, lease_is_free,
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
    /// Current lease of each claimed partition.
    leases: HashMap<PartitionToken, LeaseRow>,
    runners: HashMap<RunnerId, RunnerRow>,
    /// The stream's active runner (`--ordering transactions`).
    active: Option<RunnerId>,
}

/// A partition's current lease.
#[derive(Clone)]
struct LeaseRow {
    /// `None` once released.
    owner: Option<RunnerId>,
    epoch: Epoch,
}

/// A registered runner.
struct RunnerRow {
    /// Last heartbeat, by the monotonic clock (liveness) and the wall clock (status).
    beat: Instant,
    beat_at: Timestamp,
    capacity: usize,
}

impl RunnerRow {
    fn alive(&self, lease_duration: Duration) -> bool {
        self.beat.elapsed() < lease_duration
    }
}

impl State {
    fn row(&mut self, token: &PartitionToken) -> Result<&mut PartitionMetadata, StoreError> {
        self.rows
            .get_mut(token)
            .ok_or_else(|| StoreError::UnknownPartition {
                token: token.clone(),
            })
    }

    fn holds(&self, runner: &RunnerId, lease: &Lease) -> bool {
        self.leases
            .get(&lease.token)
            .is_some_and(|l| l.owner.as_ref() == Some(runner) && l.epoch == lease.epoch)
    }

    fn fenced(&self, runner: &RunnerId, lease: &Lease) -> Result<(), StoreError> {
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
            .is_some_and(|r| r.alive(lease_duration))
    }

    fn parents_finished(&self, p: &PartitionMetadata) -> bool {
        p.parents.iter().all(|t| {
            self.rows
                .get(t)
                .is_none_or(|p| p.state == PartitionState::Finished)
        })
    }

    /// Whether a live runner holds `p`'s lease.
    fn owned(&self, p: &PartitionMetadata, lease_duration: Duration) -> bool {
        self.owner(&p.token)
            .is_some_and(|owner| self.alive(owner.as_str(), lease_duration))
    }

    fn claimable(
        &self,
        runner: &RunnerId,
        p: &PartitionMetadata,
        lease_duration: Duration,
    ) -> bool {
        let owner = self.owner(&p.token).map(RunnerId::as_str);
        lease_is_free(owner, runner.as_str(), |o| self.alive(o, lease_duration)) && self.active(p)
    }

    fn owner(&self, token: &PartitionToken) -> Option<&RunnerId> {
        self.leases.get(token).and_then(|l| l.owner.as_ref())
    }

    /// A partition someone should be reading.
    fn active(&self, p: &PartitionMetadata) -> bool {
        p.state.is_active(|| self.parents_finished(p))
    }

    /// Unfinished partitions whose lease `runner` holds.
    fn held_by(&self, runner: &RunnerId) -> impl Iterator<Item = Lease> {
        self.leases.iter().filter_map(move |(t, l)| {
            let unfinished = self
                .rows
                .get(t)
                .is_some_and(|p| p.state != PartitionState::Finished);
            (l.owner.as_ref() == Some(runner) && unfinished).then(|| Lease {
                token: t.clone(),
                epoch: l.epoch,
            })
        })
    }
}

impl MemoryStore {
    /// An empty store.
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

    async fn seeded(&self) -> Result<bool, StoreError> {
        Ok(!self
            .state
            .lock()
            .expect("memory store lock")
            .rows
            .is_empty())
    }

    async fn seed(&self, partitions: Vec<NewPartition>) -> Result<bool, StoreError> {
        self.write(|s| {
            if !s.rows.is_empty() {
                return Ok(false);
            }
            for p in partitions {
                s.rows.insert(p.token.clone(), created(p));
            }
            Ok(true)
        })
    }

    async fn heartbeat(&self, runner: &RunnerId, capacity: usize) -> Result<(), StoreError> {
        self.write(|s| {
            let row = RunnerRow {
                beat: Instant::now(),
                beat_at: Timestamp::now(),
                capacity,
            };
            s.runners.insert(runner.clone(), row);
            Ok(())
        })
    }

    async fn reset(&self, runner: &RunnerId) -> Result<(), StoreError> {
        self.write(|s| {
            for lease in s.leases.values_mut() {
                if lease.owner.as_ref() == Some(runner) {
                    lease.owner = None;
                }
            }
            Ok(())
        })
    }

    async fn deregister(&self, runner: &RunnerId) -> Result<(), StoreError> {
        self.write(|s| {
            s.runners.remove(runner);
            if s.active.as_ref() == Some(runner) {
                s.active = None;
            }
            Ok(())
        })
    }

    async fn activate(
        &self,
        runner: &RunnerId,
        lease_duration: Duration,
    ) -> Result<RunnerId, StoreError> {
        self.write(|s| {
            let taken = s
                .active
                .as_ref()
                .filter(|a| *a != runner && s.alive(a.as_str(), lease_duration));
            if let Some(active) = taken {
                return Ok(active.clone());
            }
            s.active = Some(runner.clone());
            Ok(runner.clone())
        })
    }

    async fn claim(
        &self,
        runner: &RunnerId,
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
            candidates.truncate(room.min(CLAIM_BATCH));
            let mut claims = Vec::with_capacity(candidates.len());
            for mut p in candidates {
                let epoch = s
                    .leases
                    .get(&p.token)
                    .map_or(Epoch::default(), |l| l.epoch)
                    .next();
                let owner = Some(runner.clone());
                s.leases.insert(p.token.clone(), LeaseRow { owner, epoch });
                if p.state == PartitionState::Created {
                    p.state = PartitionState::Scheduled;
                    p.times.scheduled_at = Some(Timestamp::now());
                    let row = s.row(&p.token)?;
                    row.state = p.state;
                    row.times = p.times;
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

    async fn mark_running(
        &self,
        runner: &RunnerId,
        lease: &Lease,
    ) -> Result<Timestamp, StoreError> {
        self.write(|s| {
            s.fenced(runner, lease)?;
            let now = Timestamp::now();
            let row = s.row(&lease.token)?;
            row.state = PartitionState::Running;
            row.times.running_at = Some(now);
            Ok(now)
        })
    }

    async fn add_children(&self, children: &[NewPartition]) -> Result<usize, StoreError> {
        self.write(|s| {
            let mut inserted = 0;
            for c in children {
                if !s.rows.contains_key(&c.token) {
                    s.rows.insert(c.token.clone(), created(c.clone()));
                    inserted += 1;
                }
            }
            Ok(inserted)
        })
    }

    async fn update_watermarks(
        &self,
        runner: &RunnerId,
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
        runner: &RunnerId,
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

    async fn release(&self, runner: &RunnerId, leases: &[Lease]) -> Result<(), StoreError> {
        self.write(|s| {
            for lease in leases {
                if s.holds(runner, lease) {
                    let released = LeaseRow {
                        owner: None,
                        epoch: lease.epoch,
                    };
                    s.leases.insert(lease.token.clone(), released);
                }
            }
            Ok(())
        })
    }

    async fn owned(&self, runner: &RunnerId) -> Result<Vec<Lease>, StoreError> {
        let s = self.state.lock().expect("memory store lock");
        Ok(s.held_by(runner).collect())
    }

    async fn load(&self, lease_duration: Duration) -> Result<Load, StoreError> {
        let s = self.state.lock().expect("memory store lock");
        Ok(Load {
            runners: s
                .runners
                .iter()
                .filter(|(_, r)| r.alive(lease_duration))
                .map(|(id, r)| RunnerLoad {
                    capacity: r.capacity,
                    held: s.held_by(id).count(),
                })
                .collect(),
            active_partitions: s.rows.values().filter(|p| s.active(p)).count(),
            unowned_partitions: s
                .rows
                .values()
                .filter(|p| s.active(p) && !s.owned(p, lease_duration))
                .count(),
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
            .map(|(id, r)| RunnerStatus {
                runner_id: id.clone(),
                heartbeat_at: r.beat_at,
                alive: r.alive(lease_duration),
                partitions: s.held_by(id).count(),
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
                    state: p.state,
                    owner: lease.as_ref().and_then(|l| l.owner.clone()),
                    epoch: lease.map(|l| l.epoch),
                    watermark: p.watermark,
                }
            })
            .collect();
        let active = s
            .active
            .clone()
            .filter(|a| s.alive(a.as_str(), lease_duration));
        Ok(StoreStatus {
            runners,
            partitions,
            active,
        })
    }

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

/// A partition row as inserted now.
fn created(p: NewPartition) -> PartitionMetadata {
    let mut row = PartitionMetadata::from(p);
    row.times.created_at = Some(Timestamp::now());
    row
}
