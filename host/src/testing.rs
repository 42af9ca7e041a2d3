//! Test support shared by the unit tests of the reader, the runner and the stages behind
//! them: times, and a consumer that keeps what it is given (and can be told to fail or to
//! hold a batch).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::consumer::{Consumer, ConsumerError};
use crate::record::{ChangeRecord, DataChangeRecord};
use crate::timestamp::Timestamp;

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
