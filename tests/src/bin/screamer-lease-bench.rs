//! Lease scale benchmark: 10,000 synthetic partitions and 20 runners on the emulator, no
//! stream reading. Each simulated runner runs the subscriber's lease protocol against a
//! `SpannerStore` — heartbeat every third of the lease, claim up to its fair share every
//! poll, release the excess every rebalancing interval, write the watermarks of everything it
//! holds every checkpoint interval — so what is measured is the store and the protocol.
//! Results: BENCHMARKS.md.
//!
//! The claim, rebalancing and stray rules below mirror `Subscriber::claim`,
//! `Subscriber::rebalance` and `Subscriber::release_strays` (a runner without readers cannot use them directly): change them
//! together.
//!
//! Run: `cargo build --release -p screamer-tests --bin screamer-lease-bench &&
//! target/release/screamer-lease-bench` (`BENCH_PARTITIONS`, `BENCH_RUNNERS`, and the
//! intervals below).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use screamer::{
    CLAIM_BATCH, Lease, NewPartition, PartitionStore, RunnerId, SpannerStore, StoreError,
};
use screamer::{Dialect, Timestamp};
use screamer_tests::{Emulator, EmulatorOptions};

const CAPACITY: usize = 10_000;

/// The protocol's intervals (`BENCH_LEASE`, `BENCH_POLL`, `BENCH_REBALANCE`,
/// `BENCH_CHECKPOINT`, in seconds): the lease defaults to the CLI's, the others to what a
/// deployment of this size would set (every runner scans the metadata table each poll).
#[derive(Clone, Copy, Debug)]
struct Intervals {
    lease: Duration,
    poll: Duration,
    rebalance: Duration,
    checkpoint: Duration,
}

impl Intervals {
    fn from_env() -> Self {
        let secs = |name, default| Duration::from_secs(env_usize(name, default) as u64);
        Self {
            lease: secs("BENCH_LEASE", 30),
            poll: secs("BENCH_POLL", 5),
            rebalance: secs("BENCH_REBALANCE", 10),
            checkpoint: secs("BENCH_CHECKPOINT", 5),
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Prints a failed store operation (the protocol goes on, as the subscriber's does).
fn report<T>(runner: &RunnerId, what: &str, result: Result<T, StoreError>) -> Option<T> {
    result
        .inspect_err(|e| eprintln!("{runner}: {what} failed: {e}"))
        .ok()
}

/// One simulated runner: the subscriber's lease protocol without readers.
async fn runner(
    store: Arc<SpannerStore>,
    every: Intervals,
    id: RunnerId,
    stop: Arc<AtomicBool>,
    crash: Arc<AtomicBool>,
) {
    let beat = {
        let (store, id, stop) = (store.clone(), id.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                report(&id, "heartbeat", store.heartbeat(&id, CAPACITY).await);
                if began.elapsed() > every.lease / 3 {
                    eprintln!("{id}: heartbeat took {:?}", began.elapsed());
                }
                tokio::time::sleep(every.lease / 3).await;
            }
        })
    };
    let mut held: Vec<Lease> = Vec::new();
    let mut poll = tokio::time::interval(every.poll);
    let mut rebalance = tokio::time::interval(every.rebalance);
    let mut checkpoint = tokio::time::interval(every.checkpoint);
    let mut strays = tokio::time::interval(every.lease);
    let mut yielding = false;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = poll.tick() => loop {
                let Some(load) = report(&id, "load", store.load(every.lease).await) else { break };
                let target = load
                    .fair_share(CAPACITY)
                    .saturating_sub(usize::from(yielding && load.underloaded()));
                let room = target.saturating_sub(held.len()).min(load.unowned_partitions);
                if room == 0 {
                    break;
                }
                let Some(claims) = report(&id, "claim", store.claim(&id, room, every.lease).await) else { break };
                let more = claims.len() == CLAIM_BATCH && room > CLAIM_BATCH;
                held.extend(claims.into_iter().map(|c| c.lease));
                if !more {
                    break;
                }
            },
            _ = rebalance.tick() => {
                let Some(load) = report(&id, "load", store.load(every.lease).await) else { continue };
                let fair = load.fair_share(CAPACITY);
                // The subscriber's rule: above the share, give the excess up; at the share,
                // give one up while another runner is two or more below its own.
                yielding = held.len() == fair && fair > 0 && load.underloaded();
                let keep = if yielding { fair - 1 } else { fair };
                if held.len() > keep {
                    let excess: Vec<Lease> = held.split_off(keep);
                    report(&id, "release", store.release(&id, &excess).await);
                }
            }
            _ = checkpoint.tick(), if !held.is_empty() => {
                // Every held partition's watermark moves (as change stream heartbeats do).
                let now = Timestamp::now();
                let marks: Vec<(Lease, Timestamp)> = held.iter().map(|l| (l.clone(), now)).collect();
                if let Some(lost) = report(&id, "checkpoint", store.update_watermarks(&id, &marks).await) {
                    held.retain(|l| !lost.contains(l));
                }
            }
            // The subscriber's `release_strays`.
            _ = strays.tick() => {
                if let Some(owned) = report(&id, "owned", store.owned(&id).await) {
                    let strays: Vec<Lease> = owned.into_iter().filter(|l| !held.contains(l)).collect();
                    if !strays.is_empty() {
                        eprintln!("{id}: releasing {} stray leases", strays.len());
                        report(&id, "release", store.release(&id, &strays).await);
                    }
                }
            }
        }
    }
    beat.abort();
    if !crash.load(Ordering::Relaxed) {
        report(&id, "release", store.release(&id, &held).await);
        report(&id, "deregister", store.deregister(&id).await);
    }
}

/// Seconds until exactly `live_runners` runners are alive, every partition has a live owner
/// and every live runner is within one of its fair share (printing when the first two hold).
async fn until_balanced(
    store: &SpannerStore,
    lease: Duration,
    partitions: usize,
    live_runners: usize,
    since: Instant,
) -> anyhow::Result<f64> {
    let mut report = Instant::now();
    let mut all_owned = false;
    loop {
        let s = store.status(lease).await?;
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
        let settled = live.len() == live_runners && owned >= partitions && orphaned == 0;
        if settled && !all_owned {
            // What failover promises: every partition has a live owner (reading resumes).
            println!(
                "  every partition owned by a live runner after {:.1} s",
                since.elapsed().as_secs_f64()
            );
            all_owned = true;
        }
        if settled && balanced {
            return Ok(since.elapsed().as_secs_f64());
        }
        let spread = || {
            let held: Vec<usize> = live.iter().map(|r| r.partitions).collect();
            format!(
                "live runners {}, owned {owned}, orphaned {orphaned}, held min {} max {} (share {fair})",
                live.len(),
                held.iter().min().unwrap_or(&0),
                held.iter().max().unwrap_or(&0)
            )
        };
        if since.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("not balanced after 10 minutes: {}", spread());
        }
        if report.elapsed() > Duration::from_secs(15) {
            println!("  {:>5.0} s: {}", since.elapsed().as_secs_f64(), spread());
            report = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let partitions = env_usize("BENCH_PARTITIONS", 10_000);
    let runners = env_usize("BENCH_RUNNERS", 20);
    let every = Intervals::from_env();
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
    println!("lease benchmark: {partitions} partitions, {runners} runners, {every:?}");
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
            every,
            format!("runner-{i:02}").into(),
            stop.clone(),
            crash.clone(),
        ));
        handles.push((stop, crash, h));
    }
    let claimed = until_balanced(&store, every.lease, partitions, runners, t0).await?;
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
    let recovered = until_balanced(&store, every.lease, partitions, runners - 5, t1).await?;
    println!(
        "5 runners removed: every partition owned and balanced again after {recovered:.1} s (lease {:?})",
        every.lease
    );
    for (stop, _, h) in handles {
        stop.store(true, Ordering::Relaxed);
        let _ = h.await;
    }
    Ok(())
}
