//! The snapshot's metrics (`--snapshot`), declared, registered and updated in this one place.
//!
//! Rows are counted as this runner reads them; the plan's size and what was finished come
//! from the store when the runner starts (`Event::SnapshotPlanned`), and the chunks this
//! runner finishes are added to it. With several runners, each counts its own reads and
//! finishes: sum them.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::partition::PartitionToken;
use crate::record::DataChangeRecord;
use crate::snapshot::Chunk;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnapshotLabels {
    table: String,
}

/// How far the snapshot is, for the progress line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotProgress {
    /// Rows of finished chunks when this runner started, plus the rows it read since.
    pub rows: u64,
    /// Rows of the whole snapshot as planned.
    pub rows_planned: u64,
    pub chunks_finished: u64,
    pub chunks: u64,
}

#[derive(Debug, Default)]
pub(super) struct SnapshotMetrics {
    rows: Family<SnapshotLabels, Counter>,
    rows_planned: Gauge,
    chunks: Gauge,
    chunks_finished: Gauge,
    /// Rows finished before this runner started (a gauge cannot be summed back from the
    /// labelled counter).
    rows_before: AtomicU64,
    rows_read: AtomicU64,
}

impl SnapshotMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "snapshot_rows",
            "Snapshot rows read by this runner, by table",
            self.rows.clone(),
        );
        r.register(
            "snapshot_rows_planned",
            "Rows of the whole snapshot, as planned at its timestamp",
            self.rows_planned.clone(),
        );
        r.register(
            "snapshot_chunks",
            "Chunks of the whole snapshot",
            self.chunks.clone(),
        );
        r.register(
            "snapshot_chunks_finished",
            "Chunks finished: those done when this runner started and those it finished since",
            self.chunks_finished.clone(),
        );
    }

    pub(super) fn planned(
        &self,
        chunks: usize,
        chunks_finished: usize,
        rows: u64,
        rows_finished: u64,
    ) {
        self.chunks.set(chunks as i64);
        self.chunks_finished.set(chunks_finished as i64);
        self.rows_planned.set(rows as i64);
        self.rows_before.store(rows_finished, Ordering::Relaxed);
    }

    /// Counts `records` if they are snapshot rows.
    pub(super) fn read(&self, records: &[DataChangeRecord]) {
        let Some(first) = records.first().filter(|r| r.snapshot) else {
            return;
        };
        // A batch comes from one chunk: one table.
        let labels = SnapshotLabels {
            table: first.table_name.clone(),
        };
        self.rows
            .get_or_create(&labels)
            .inc_by(records.len() as u64);
        self.rows_read
            .fetch_add(records.len() as u64, Ordering::Relaxed);
    }

    pub(super) fn finished(&self, partition: &PartitionToken) {
        if Chunk::is_chunk(partition) {
            self.chunks_finished.inc();
        }
    }

    /// `None` when no snapshot was planned.
    pub(super) fn progress(&self) -> Option<SnapshotProgress> {
        let chunks = self.chunks.get();
        (chunks > 0).then(|| SnapshotProgress {
            rows: self.rows_before.load(Ordering::Relaxed) + self.rows_read.load(Ordering::Relaxed),
            rows_planned: self.rows_planned.get() as u64,
            chunks_finished: self.chunks_finished.get() as u64,
            chunks: chunks as u64,
        })
    }
}
