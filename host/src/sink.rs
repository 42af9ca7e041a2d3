//! Sink: NDJSON on a writer (stdout for the CLI, files for side outputs and dead letters).
//!
//! Place in the flow: last stage, fed by the [`pipeline`](crate::pipeline). Each batch
//! arrives as already serialized lines; one dedicated thread per sink writes and flushes it
//! (one hand-off per batch, no blocking of the async runtime), and `write` returns only
//! after the flush, so an acknowledged record is already out of the process. A slow reader
//! of stdout makes the write wait, which holds up the partition readers: back-pressure, not
//! buffering.

use std::io::Write;
use std::path::Path;

use tokio::sync::{mpsc, oneshot};

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

    pub fn stderr() -> Self {
        Self::new(std::io::stderr())
    }

    /// A sink appending to the file at `path` (created if missing).
    pub fn append_file(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self::new(file))
    }

    /// Writes `lines` (complete NDJSON lines) and flushes; returns once they are out.
    pub async fn write(&self, lines: Vec<u8>) -> std::io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let stopped = || std::io::Error::other("sink thread has stopped");
        let (done, written) = oneshot::channel();
        self.jobs
            .send(Job { bytes: lines, done })
            .await
            .map_err(|_| stopped())?;
        written.await.map_err(|_| stopped())?
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
    async fn lines_are_out_when_write_returns() {
        let out = Shared::default();
        let sink = NdjsonSink::new(out.clone());
        sink.write(b"{\"a\":1}\n{\"a\":2}\n".to_vec())
            .await
            .unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [r#"{"a":1}"#, r#"{"a":2}"#]
        );
    }
}
