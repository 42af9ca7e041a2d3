//! Sink: NDJSON on an async writer (stdout for the CLI).
//!
//! Place in the flow: last stage. One JSON object per data change record, one per line;
//! each batch is written and flushed before the consumer call returns, so an acknowledged
//! record is already out of the process. A slow reader of stdout makes the write wait,
//! which holds up that partition's reader: back-pressure, not buffering.

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::consumer::{Consumer, ConsumerError};
use crate::record::DataChangeRecord;

/// Writes each record as one JSON line and flushes per batch.
pub struct NdjsonSink<W> {
    out: Mutex<W>,
}

impl<W: AsyncWrite + Unpin + Send + 'static> NdjsonSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: Mutex::new(out),
        }
    }

    /// Gives back the writer (tests write into a `Vec<u8>`).
    pub fn into_inner(self) -> W {
        self.out.into_inner()
    }
}

impl NdjsonSink<tokio::io::Stdout> {
    pub fn stdout() -> Self {
        Self::new(tokio::io::stdout())
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Consumer for NdjsonSink<W> {
    async fn consume(&self, records: &[DataChangeRecord]) -> Result<(), ConsumerError> {
        // Serialize outside the lock so that partitions only contend for the write itself.
        let mut buf = Vec::with_capacity(records.len() * 512);
        for r in records {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
        let mut out = self.out.lock().await;
        out.write_all(&buf).await?;
        out.flush().await?;
        Ok(())
    }
}
