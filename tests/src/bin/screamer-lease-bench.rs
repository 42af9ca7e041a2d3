//! Lease scale benchmark: 10,000 synthetic partitions and 20 runners on the emulator, no
//! stream reading. Each simulated runner runs the subscriber's lease protocol against a
//! `SpannerStore` — heartbeat every third of the lease, claim up to its fair share every
//! poll, release the excess every rebalancing interval, write its watermarks every second —
//! so what is measured is the store and the protocol. Results: BENCHMARKS.md.
//!
//! The claim and rebalancing rules below mirror `Subscriber::claim` and
//! `Subscriber::rebalance` (a runner without readers cannot use them directly): change them
//! together.
//!
//! Run: `cargo build --release -p screamer-tests --bin screamer-lease-bench &&
//! target/release/screamer-lease-bench` (`BENCH_PARTITIONS`, `BENCH_RUNNERS`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use screamer::partition::{Lease, NewPartition, PartitionStore, SpannerStore};
use screamer::{Dialect, Timestamp};
use screamer_tests::{Emulator, EmulatorOptions};
use tokio::sync::Mutex;

const LEASE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_secs(1);
const REBALANCE: Duration = Duration::from_secs(2);
const CHECKPOINT: Duration = Duration::from_secs(1);
const CAPACITY: usize = 10_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One simulated runner: the subscriber's lease protocol without readers.
async fn runner(
    store: Arc<SpannerStore>,
    id: String,
    stop: Arc<AtomicBool>,
    crash: Arc<AtomicBool>,
) {
    let held: Arc<Mutex<Vec<Lease>>> = Arc::default();
    let beat = {
        let (store, id, stop) = (store.clone(), id.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = store.heartbeat(&id, CAPACITY).await;
                tokio::time::sleep(LEASE / 3).await;
            }
        })
    };
    let mut poll = tokio::time::interval(POLL);
    let mut rebalance = tokio::time::interval(REBALANCE);
    let mut checkpoint = tokio::time::interval(CHECKPOINT);
    let started = Timestamp::now();
    let mut yielding = false;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = poll.tick() => {
                let Ok(load) = store.load(LEASE).await else { continue };
                let mut h = held.lock().await;
                let target = load.fair_share(CAPACITY).saturating_sub(usize::from(yielding));
                let room = target.saturating_sub(h.len());
                if room > 0
                    && let Ok(claims) = store.claim(&id, room, LEASE).await
                {
                    h.extend(claims.into_iter().map(|c| c.lease));
                }
            }
            _ = rebalance.tick() => {
                let Ok(load) = store.load(LEASE).await else { continue };
                let mut h = held.lock().await;
                let fair = load.fair_share(CAPACITY);
                // The subscriber's rule: above the share, give the excess up; at the share,
                // give one up while another runner is two or more below its own.
                yielding = h.len() == fair && fair > 0 && load.underloaded();
                let keep = if yielding { fair - 1 } else { fair };
                if h.len() > keep {
                    let excess: Vec<Lease> = h.split_off(keep);
                    let _ = store.release(&id, &excess).await;
                }
            }
            _ = checkpoint.tick() => {
                let h = held.lock().await.clone();
                if !h.is_empty() {
                    let marks: Vec<(Lease, Timestamp)> = h.into_iter().map(|l| (l, started)).collect();
                    if let Ok(lost) = store.update_watermarks(&id, &marks).await {
                        held.lock().await.retain(|l| !lost.contains(l));
                    }
                }
            }
        }
    }
    beat.abort();
    if !crash.load(Ordering::Relaxed) {
        let h = held.lock().await.clone();
        let _ = store.release(&id, &h).await;
        let _ = store.deregister(&id).await;
    }
}

/// Seconds until exactly `live_runners` runners are alive, every partition has a live owner
/// and every live runner is within one of its fair share.
async fn until_balanced(
    store: &SpannerStore,
    partitions: usize,
    live_runners: usize,
    since: Instant,
) -> anyhow::Result<f64> {
    loop {
        let s = store.status(LEASE).await?;
        let live: Vec<_> = s.runners.iter().filter(|r| r.alive).collect();
        let owned: usize = live.iter().map(|r| r.partitions).sum();
        let fair = partitions.div_ceil(live.len().max(1));
        let balanced = live.iter().all(|r| r.partitions.abs_diff(fair) <= 1);
        let orphaned = s
            .partitions
            .iter()
            .filter(|p| {
                p.owner
                    .as_ref()
                    .is_none_or(|o| !live.iter().any(|r| &r.runner_id == o))
            })
            .count();
        if live.len() == live_runners && owned >= partitions && orphaned == 0 && balanced {
            return Ok(since.elapsed().as_secs_f64());
        }
        if since.elapsed() > Duration::from_secs(600) {
            let spread: BTreeMap<&str, usize> = live
                .iter()
                .map(|r| (r.runner_id.as_str(), r.partitions))
                .collect();
            anyhow::bail!(
                "not balanced after 10 minutes: owned {owned}, orphaned {orphaned}, {spread:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let partitions = env_usize("BENCH_PARTITIONS", 10_000);
    let runners = env_usize("BENCH_RUNNERS", 20);
    let emulator = Emulator::start(EmulatorOptions::default()).await?;
    let db = emulator.database(Dialect::GoogleSql, &[]).await?;
    let store = Arc::new(SpannerStore::connect(&db.endpoint(), &db.name, "LeaseBench").await?);
    store.prepare().await?;
    let start = Timestamp::now();
    let all: Vec<NewPartition> = (0..partitions)
        .map(|i| NewPartition {
            token: format!("synthetic-{i:06}").into(),
            parents: vec![],
            start,
            end: None,
            heartbeat_millis: 1000,
        })
        .collect();
    for chunk in all.chunks(1000) {
        store.add_children(chunk).await?;
    }
    println!(
        "lease benchmark: {partitions} partitions, {runners} runners, lease {LEASE:?}, rebalancing every {REBALANCE:?}, poll {POLL:?}, checkpoints every {CHECKPOINT:?}"
    );
    // Each runner has its own client and sessions, as separate processes would.
    let mut stores = Vec::new();
    for _ in 0..runners {
        stores.push(Arc::new(
            SpannerStore::connect(&db.endpoint(), &db.name, "LeaseBench").await?,
        ));
    }
    let writes = || stores.iter().map(|s| s.writes()).sum::<u64>();
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        let (stop, crash) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let h = tokio::spawn(runner(
            s.clone(),
            format!("runner-{i:02}"),
            stop.clone(),
            crash.clone(),
        ));
        handles.push((stop, crash, h));
    }
    let claimed = until_balanced(&store, partitions, runners, t0).await?;
    println!("all claimed and balanced after {claimed:.1} s");

    let w0 = writes();
    let steady = Duration::from_secs(30);
    tokio::time::sleep(steady).await;
    let written = writes() - w0;
    println!(
        "steady state: {written} metadata writes in {steady:?} = {:.0} per minute ({:.1} per runner per minute; {:.3} per partition per minute)",
        written as f64 * 60.0 / steady.as_secs_f64(),
        written as f64 * 60.0 / steady.as_secs_f64() / runners as f64,
        written as f64 * 60.0 / steady.as_secs_f64() / partitions as f64,
    );

    // Five runners die (no release, no deregistration): their partitions come back after
    // the lease expires.
    let t1 = Instant::now();
    for (stop, crash, _) in handles.iter().take(5) {
        crash.store(true, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
    }
    let recovered = until_balanced(&store, partitions, runners - 5, t1).await?;
    println!(
        "5 runners removed: every partition owned and balanced again after {recovered:.1} s (lease {LEASE:?})"
    );
    for (stop, _, h) in handles {
        stop.store(true, Ordering::Relaxed);
        let _ = h.await;
    }
    Ok(())
}
