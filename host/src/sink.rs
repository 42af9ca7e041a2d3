//! Sink: NDJSON on a writer (stdout for the CLI).
//!
//! Place in the flow: last stage. One JSON object per data change record, one per line;
//! each batch is written and flushed before the consumer call returns, so an acknowledged
//! record is already out of the process.

use std::io::Write;
use std::sync::Mutex;

use crate::consumer::{Consumer, ConsumerError};
use crate::record::DataChangeRecord;

/// Writes each record as one JSON line and flushes per batch.
pub struct NdjsonSink<W: Write + Send + 'static> {
    out: Mutex<W>,
}

impl<W: Write + Send + 'static> NdjsonSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: Mutex::new(out),
        }
    }

    /// Gives back the writer (tests write into a `Vec<u8>`).
    pub fn into_inner(self) -> W {
        self.out.into_inner().expect("sink lock")
    }
}

impl NdjsonSink<std::io::Stdout> {
    pub fn stdout() -> Self {
        Self::new(std::io::stdout())
    }
}

impl<W: Write + Send + 'static> Consumer for NdjsonSink<W> {
    async fn consume(&self, records: &[DataChangeRecord]) -> Result<(), ConsumerError> {
        // Serialize outside the lock so that partitions only contend for the write itself.
        let mut buf = Vec::with_capacity(records.len() * 512);
        for r in records {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
        let mut out = self.out.lock().map_err(|_| "sink lock poisoned")?;
        out.write_all(&buf)?;
        out.flush()?;
        Ok(())
    }
}
