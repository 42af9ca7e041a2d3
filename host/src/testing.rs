//! Test support shared by the unit tests of the reader, the runner and the stages behind
//! them: times, a consumer that keeps what it is given (and can be told to fail or to hold
//! a batch), a store whose heartbeats can be frozen, and a record to convert and patch.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::consumer::{Consumer, ConsumerError};
use crate::partition::{
    Claim, Lease, Load, MemoryStore, NewPartition, PartitionStore, RunnerId, StoreError,
    StoreStatus,
};
use crate::record::{ChangeRecord, DataChangeRecord};
use crate::timestamp::Timestamp;

/// An UPDATE of table `Users` (one INT64 key column `Id`, transaction `tx` tagged `t`, read
/// from partition `tok`) with these row changes, as the output JSON writes them.
pub(crate) fn users_update(mods: serde_json::Value) -> DataChangeRecord {
    serde_json::from_value(serde_json::json!({
        "partition_token": "tok", "commit_timestamp": "2026-11-27T20:00:00.123456789Z",
        "record_sequence": "00000001", "server_transaction_id": "tx",
        "is_last_record_in_transaction_in_partition": true, "table_name": "Users",
        "column_types": [{"name": "Id", "type": {"code": "INT64"}, "is_primary_key": true, "ordinal_position": 1}],
        "mods": mods,
        "mod_type": "UPDATE", "value_capture_type": "OLD_AND_NEW_VALUES",
        "number_of_records_in_transaction": 2, "number_of_partitions_in_transaction": 1,
        "transaction_tag": "t", "is_system_transaction": false
    }))
    .expect("a data change record")
}

/// `2026-01-01T00:00:00Z` plus `seconds`.
pub(crate) fn at(seconds: u64) -> Timestamp {
    let base: Timestamp = "2026-01-01T00:00:00Z".parse().expect("a timestamp");
    base.saturating_add(Duration::from_secs(seconds))
}

/// The data change record inside `record`.
pub(crate) fn data(record: ChangeRecord) -> DataChangeRecord {
    match record {
        ChangeRecord::Data(r) => r,
        other => panic!("not a data change record: {other:?}"),
    }
}

/// A record's identity in assertions: its transaction and record sequence.
pub(crate) fn id(r: &DataChangeRecord) -> (String, String) {
    (r.server_transaction_id.clone(), r.record_sequence.clone())
}

/// Keeps every batch it acknowledges.
#[derive(Default)]
pub(crate) struct Collect {
    batches: Mutex<Vec<Vec<DataChangeRecord>>>,
    /// Each batch waits for a permit when set (see [`Collect::gated`]).
    gate: Option<Semaphore>,
    /// Signalled when a batch arrives (before its gate).
    arrived: Notify,
    fail: bool,
}

impl Collect {
    /// A consumer that holds each batch until [`Collect::open`] lets it through.
    pub(crate) fn gated() -> Self {
        Self {
            gate: Some(Semaphore::new(0)),
            ..Self::default()
        }
    }

    /// A consumer that refuses every batch.
    pub(crate) fn failing() -> Self {
        Self {
            fail: true,
            ..Self::default()
        }
    }

    /// Lets `batches` more batches through the gate.
    pub(crate) fn open(&self, batches: usize) {
        self.gate
            .as_ref()
            .expect("a gated consumer")
            .add_permits(batches);
    }

    /// Waits until a batch has arrived (acknowledged or not).
    pub(crate) async fn arrived(&self) {
        self.arrived.notified().await;
    }

    /// Every acknowledged record, in the order acknowledged.
    pub(crate) fn records(&self) -> Vec<DataChangeRecord> {
        self.batches.lock().unwrap().concat()
    }

    /// [`id`] of every acknowledged record.
    pub(crate) fn ids(&self) -> Vec<(String, String)> {
        self.records().iter().map(id).collect()
    }
}

impl Consumer for Collect {
    async fn consume(&self, records: &[DataChangeRecord]) -> Result<(), ConsumerError> {
        self.arrived.notify_one();
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("the gate stays open").forget();
        }
        if self.fail {
            return Err("the consumer refuses".into());
        }
        self.batches.lock().unwrap().push(records.to_vec());
        Ok(())
    }
}

/// Waits (in tokio's time, usually paused) until `condition` holds; panics after ten
/// minutes of it, naming `what`.
pub(crate) async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A [`MemoryStore`] whose heartbeats of chosen runners hang until thawed: the runner looks
/// paused or cut off to the others, and to itself (its heartbeat lapses).
pub(crate) struct FreezableStore {
    store: MemoryStore,
    frozen: tokio::sync::watch::Sender<Vec<RunnerId>>,
}

impl FreezableStore {
    pub(crate) fn new() -> Self {
        Self {
            store: MemoryStore::new(),
            frozen: tokio::sync::watch::Sender::new(Vec::new()),
        }
    }

    /// `runner`'s heartbeats hang from now on.
    pub(crate) fn freeze(&self, runner: &str) {
        self.frozen
            .send_modify(|f| f.push(RunnerId::from(runner.to_owned())));
    }

    /// Every partition row (see [`MemoryStore::snapshot`]).
    pub(crate) fn snapshot(&self) -> Vec<crate::partition::PartitionMetadata> {
        self.store.snapshot()
    }

    /// `runner`'s heartbeats land again.
    pub(crate) fn thaw(&self, runner: &str) {
        self.frozen
            .send_modify(|f| f.retain(|r| r.as_str() != runner));
    }
}

#[async_trait::async_trait]
impl PartitionStore for FreezableStore {
    async fn prepare(&self) -> Result<(), StoreError> {
        self.store.prepare().await
    }
    async fn seeded(&self) -> Result<bool, StoreError> {
        self.store.seeded().await
    }
    async fn seed(&self, partitions: Vec<NewPartition>) -> Result<bool, StoreError> {
        self.store.seed(partitions).await
    }
    async fn heartbeat(&self, runner: &RunnerId, capacity: usize) -> Result<(), StoreError> {
        let mut frozen = self.frozen.subscribe();
        let _ = frozen.wait_for(|f| !f.contains(runner)).await;
        self.store.heartbeat(runner, capacity).await
    }
    async fn reset(&self, runner: &RunnerId) -> Result<(), StoreError> {
        self.store.reset(runner).await
    }
    async fn deregister(&self, runner: &RunnerId) -> Result<(), StoreError> {
        self.store.deregister(runner).await
    }
    async fn claim(
        &self,
        runner: &RunnerId,
        room: usize,
        lease_duration: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        self.store.claim(runner, room, lease_duration).await
    }
    async fn mark_running(
        &self,
        runner: &RunnerId,
        lease: &Lease,
    ) -> Result<Timestamp, StoreError> {
        self.store.mark_running(runner, lease).await
    }
    async fn add_children(&self, children: &[NewPartition]) -> Result<usize, StoreError> {
        self.store.add_children(children).await
    }
    async fn update_watermarks(
        &self,
        runner: &RunnerId,
        marks: &[(Lease, Timestamp)],
    ) -> Result<Vec<Lease>, StoreError> {
        self.store.update_watermarks(runner, marks).await
    }
    async fn finish(
        &self,
        runner: &RunnerId,
        lease: &Lease,
        watermark: Timestamp,
    ) -> Result<(), StoreError> {
        self.store.finish(runner, lease, watermark).await
    }
    async fn release(&self, runner: &RunnerId, leases: &[Lease]) -> Result<(), StoreError> {
        self.store.release(runner, leases).await
    }
    async fn owned(&self, runner: &RunnerId) -> Result<Vec<Lease>, StoreError> {
        self.store.owned(runner).await
    }
    async fn load(&self, lease_duration: Duration) -> Result<Load, StoreError> {
        self.store.load(lease_duration).await
    }
    async fn unfinished(&self) -> Result<usize, StoreError> {
        self.store.unfinished().await
    }
    async fn activate(
        &self,
        runner: &RunnerId,
        lease_duration: Duration,
    ) -> Result<RunnerId, StoreError> {
        self.store.activate(runner, lease_duration).await
    }
    async fn status(&self, lease_duration: Duration) -> Result<StoreStatus, StoreError> {
        self.store.status(lease_duration).await
    }
    fn writes(&self) -> u64 {
        self.store.writes()
    }
}
