//! NDJSON on a writer: stdout (the default output), stderr (the default dead letters), or a
//! file opened for appending.
//!
//! One dedicated thread per destination writes and flushes each batch (one hand-off per
//! batch, no blocking of the async runtime); `send` returns only after the flush, so an
//! acknowledged record is already out of the process.

use std::io::Write;
use std::path::Path;

use tokio::sync::{mpsc, oneshot};

use super::{Batch, Destination, DestinationError};

struct Job {
    bytes: Vec<u8>,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// Writes each record as one JSON line and flushes per batch.
pub struct Ndjson {
    name: String,
    jobs: mpsc::Sender<Job>,
}

impl Ndjson {
    /// A destination called `name` writing to `out` from its own thread, which ends when
    /// the destination is dropped.
    pub fn new<W: Write + Send + 'static>(name: impl Into<String>, mut out: W) -> Self {
        // Two batches in flight at most: enough to overlap serialization with writing.
        let (jobs, mut rx) = mpsc::channel::<Job>(2);
        std::thread::Builder::new()
            .name("screamer-ndjson".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    let result = out.write_all(&job.bytes).and_then(|()| out.flush());
                    let _ = job.done.send(result);
                }
            })
            .expect("spawning the NDJSON writer thread");
        Self {
            name: name.into(),
            jobs,
        }
    }

    /// Lines to standard output.
    pub fn stdout() -> Self {
        Self::new("stdout", std::io::stdout())
    }

    /// Lines to standard error.
    pub fn stderr() -> Self {
        Self::new("stderr", std::io::stderr())
    }

    /// Appends to the file at `path` (created if missing).
    pub fn append_file(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self::new(format!("file:{}", path.display()), file))
    }

    async fn write(&self, bytes: Vec<u8>) -> std::io::Result<()> {
        let stopped = || std::io::Error::other("the writer thread has stopped");
        let (done, written) = oneshot::channel();
        self.jobs
            .send(Job { bytes, done })
            .await
            .map_err(|_| stopped())?;
        written.await.map_err(|_| stopped())?
    }
}

#[async_trait::async_trait]
impl Destination for Ndjson {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, batch: Batch) -> Result<(), DestinationError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.write(batch.into_ndjson())
            .await
            .map_err(|source| DestinationError::Failed {
                destination: self.name.clone(),
                source,
            })
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
    async fn lines_are_out_when_send_returns() {
        let out = Shared::default();
        let destination = Ndjson::new("memory", out.clone());
        let mut batch = Batch::default();
        batch.push(&serde_json::json!({"a": 1})).unwrap();
        batch.push(&serde_json::json!({"a": 2})).unwrap();
        destination.send(batch).await.unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [r#"{"a":1}"#, r#"{"a":2}"#]
        );
    }
}
