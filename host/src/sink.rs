//! Sink: NDJSON on a writer (stdout for the CLI).
//!
//! Place in the flow: last stage. One JSON object per data change record, one per line.
//! Each batch is serialized on the reader's task, then written and flushed by one dedicated
//! thread (one hand-off per batch, no blocking of the async runtime) before the consumer call
//! returns, so an acknowledged record is already out of the process. A slow reader of stdout
//! makes the write wait, which holds up the partition readers: back-pressure, not buffering.

use std::io::Write;

use tokio::sync::{mpsc, oneshot};

use crate::consumer::{Consumer, ConsumerError};
use crate::record::DataChangeRecord;

struct Job {
    bytes: Vec<u8>,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// Writes each record as one JSON line and flushes per batch.
pub struct NdjsonSink {
    jobs: mpsc::Sender<Job>,
}

impl NdjsonSink {
    /// A sink writing to `out` from its own thread, which ends when the sink is dropped.
    pub fn new<W: Write + Send + 'static>(mut out: W) -> Self {
        // Two batches in flight at most: enough to overlap serialization with writing.
        let (jobs, mut rx) = mpsc::channel::<Job>(2);
        std::thread::Builder::new()
            .name("screamer-sink".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    let result = out.write_all(&job.bytes).and_then(|()| out.flush());
                    let _ = job.done.send(result);
                }
            })
            .expect("spawning the sink thread");
        Self { jobs }
    }

    pub fn stdout() -> Self {
        Self::new(std::io::stdout())
    }
}

impl Consumer for NdjsonSink {
    async fn consume(&self, records: &[DataChangeRecord]) -> Result<(), ConsumerError> {
        let mut bytes = Vec::with_capacity(records.len() * 1024);
        for r in records {
            serde_json::to_writer(&mut bytes, r)?;
            bytes.push(b'\n');
        }
        let (done, written) = oneshot::channel();
        self.jobs
            .send(Job { bytes, done })
            .await
            .map_err(|_| "sink thread has stopped")?;
        Ok(written.await.map_err(|_| "sink thread has stopped")??)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn writes_one_line_per_record_before_acknowledging() {
        let record: DataChangeRecord = serde_json::from_value(serde_json::json!({
            "partition_token": "t", "commit_timestamp": "2026-01-01T00:00:00Z",
            "record_sequence": "00000000", "server_transaction_id": "x",
            "is_last_record_in_transaction_in_partition": true, "table_name": "T",
            "column_types": [], "mods": [], "mod_type": "DELETE",
            "value_capture_type": "NEW_ROW", "number_of_records_in_transaction": 1,
            "number_of_partitions_in_transaction": 1
        }))
        .unwrap();
        let out = Shared::default();
        let sink = NdjsonSink::new(out.clone());
        sink.consume(&[record.clone(), record]).await.unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0]
                .starts_with(r#"{"partition_token":"t","commit_timestamp":"2026-01-01T00:00:00Z""#)
        );
    }
}
