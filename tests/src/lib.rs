//! Test harness: a real Spanner emulator per test, databases, writers, and the screamer
//! binary as a child process.
//!
//! Every test starts its own emulator on free loopback ports (in its own process group, killed
//! on drop), so tests run in parallel and can be re-run. Find the emulator through
//! `SPANNER_EMULATOR_DIR` (the directory holding `emulator_main`), `PATH`,
//! the Google Cloud SDK's usual place, or `dpkg -L google-cloud-cli-spanner-emulator`.

pub mod bank;
pub mod bench;
pub mod broker;
pub mod certificates;
pub mod emulator;
pub mod http;
pub mod items;
pub mod kafka;
pub mod metrics;
pub mod nats;
pub mod nats_auth;
pub mod plugins;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod pubsub;

pub use emulator::{Emulator, EmulatorOptions, ITEMS_SCHEMA, TestDatabase, USERS_SCHEMA};
pub use libc;
pub use process::{Screamer, run_args, screamer_bin};
pub use proxy::ChaosProxy;

use std::time::Duration;

/// Sends screamer's logs to the test output, filtered by `RUST_LOG` (default: warnings).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Runs `start` up to three times: a server started on a port that was free a moment ago
/// may find it taken by a parallel test, and then starts again on another.
pub async fn start_with_retries<T>(
    what: &str,
    mut start: impl AsyncFnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut last = None;
    for _ in 0..3 {
        match start().await {
            Ok(server) => return Ok(server),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .expect("three attempts")
        .context(format!("starting {what}")))
}

/// Waits until `check` returns `Some`, polling every 50 ms, or fails after `timeout` with `what`.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

use std::sync::{Arc, Mutex};

use screamer::{
    Consumer, ConsumerError, DataChangeRecord, MemoryStore, RunSummary, SpannerSource, Subscriber,
    SubscriberOptions, Timestamp,
};
use tokio_util::sync::CancellationToken;

/// A consumer that keeps every record it acknowledges, in arrival order.
#[derive(Clone, Default)]
pub struct Collector(Arc<Mutex<Vec<DataChangeRecord>>>);

impl Collector {
    pub fn records(&self) -> Vec<DataChangeRecord> {
        self.0.lock().expect("collector lock").clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().expect("collector lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Consumer for Collector {
    async fn consume(&self, records: &[DataChangeRecord]) -> Result<(), ConsumerError> {
        self.0
            .lock()
            .expect("collector lock")
            .extend_from_slice(records);
        Ok(())
    }
}

/// Reads `stream` of `db` from `start` to `end` with an in-memory store, in process.
pub async fn read_range(
    db: &TestDatabase,
    stream: &str,
    start: Timestamp,
    end: Timestamp,
) -> anyhow::Result<(Vec<DataChangeRecord>, RunSummary)> {
    let source = SpannerSource::connect(&db.endpoint(), &db.name, stream).await?;
    let options = SubscriberOptions {
        start: Some(start),
        end: Some(end),
        heartbeat_interval: Duration::from_secs(1),
        ..Default::default()
    };
    let collector = Collector::default();
    let subscriber = Subscriber::new(source, Arc::new(MemoryStore::new()), options);
    let summary = subscriber
        .subscribe(collector.clone(), CancellationToken::new())
        .await?;
    Ok((collector.records(), summary))
}

/// An INT64 member of a mods object (GoogleSQL sends INT64 as a string).
pub fn int_member(object: &screamer::JsonObject, key: &str) -> Option<i64> {
    match object.get(key)? {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_i64(),
        _ => None,
    }
}
