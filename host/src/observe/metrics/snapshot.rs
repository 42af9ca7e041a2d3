//! The snapshot (`--snapshot`): rows read, the plan's size, chunks finished.
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

use super::registered;
use crate::observe::Event;
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
    /// Chunks finished when this runner started, plus those it finished since.
    pub chunks_finished: u64,
    /// Chunks of the whole snapshot.
    pub chunks: u64,
}

#[derive(Debug)]
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
    pub(super) fn new(r: &mut Registry) -> Self {
        Self {
            rows: registered(
                r,
                "snapshot_rows",
                "Snapshot rows read by this runner, by table",
                Family::default(),
            ),
            rows_planned: registered(
                r,
                "snapshot_rows_planned",
                "Rows of the whole snapshot, as planned at its timestamp",
                Gauge::default(),
            ),
            chunks: registered(
                r,
                "snapshot_chunks",
                "Chunks of the whole snapshot",
                Gauge::default(),
            ),
            chunks_finished: registered(
                r,
                "snapshot_chunks_finished",
                "Chunks finished: those done when this runner started and those it finished \
                 since",
                Gauge::default(),
            ),
            rows_before: AtomicU64::new(0),
            rows_read: AtomicU64::new(0),
        }
    }

    pub(super) fn observe(&self, event: &Event<'_>) {
        match *event {
            Event::SnapshotPlanned {
                chunks,
                chunks_finished,
                rows,
                rows_finished,
            } => {
                self.chunks.set(chunks as i64);
                self.chunks_finished.set(chunks_finished as i64);
                self.rows_planned.set(rows as i64);
                self.rows_before.store(rows_finished, Ordering::Relaxed);
            }
            Event::Read { records, .. } => self.read(records),
            Event::Finished { partition } if Chunk::is_chunk(partition) => {
                self.chunks_finished.inc();
            }
            _ => {}
        }
    }

    /// Counts `records` if they are snapshot rows.
    fn read(&self, records: &[DataChangeRecord]) {
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

#[cfg(test)]
mod tests {
    use crate::observe::{Event, Metrics, Observer};
    use crate::partition::PartitionToken;
    use crate::record::DataChangeRecord;
    use crate::snapshot::Chunk;

    fn row(table: &str, snapshot: bool) -> DataChangeRecord {
        let mut r: DataChangeRecord = serde_json::from_value(serde_json::json!({
            "commit_timestamp": "2026-12-07T00:00:00Z",
            "record_sequence": "00000000",
            "server_transaction_id": "snapshot",
            "is_last_record_in_transaction_in_partition": true,
            "table_name": table,
            "column_types": [],
            "mods": [],
            "mod_type": "INSERT",
            "value_capture_type": "NEW_ROW",
            "number_of_records_in_transaction": 1,
            "number_of_partitions_in_transaction": 1
        }))
        .unwrap();
        r.snapshot = snapshot;
        r
    }

    #[test]
    fn rows_and_chunks_count_from_the_plan_on() {
        let m = Metrics::new();
        assert_eq!(m.progress().snapshot, None, "no snapshot, no progress");
        m.observe(Event::SnapshotPlanned {
            chunks: 4,
            chunks_finished: 1,
            rows: 40,
            rows_finished: 10,
        });
        let chunk = Chunk {
            table: "T".into(),
            index: 1,
            rows: 10,
            start: None,
            end: None,
        }
        .token();
        m.observe(Event::Read {
            partition: &chunk,
            records: &[row("T", true), row("T", true)],
        });
        // Changes are not snapshot rows.
        let stream = PartitionToken::from("stream");
        m.observe(Event::Read {
            partition: &stream,
            records: &[row("T", false)],
        });
        m.observe(Event::Finished { partition: &chunk });
        m.observe(Event::Finished { partition: &stream });
        let p = m.progress().snapshot.expect("a snapshot");
        assert_eq!((p.rows, p.rows_planned), (12, 40));
        assert_eq!((p.chunks_finished, p.chunks), (2, 4));
        let text = m.encode();
        for line in [
            "screamer_snapshot_rows_total{table=\"T\"} 2",
            "screamer_snapshot_rows_planned 40",
            "screamer_snapshot_chunks 4",
            "screamer_snapshot_chunks_finished 2",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
