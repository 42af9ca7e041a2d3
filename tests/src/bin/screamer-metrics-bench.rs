//! Metrics on versus off, two ways:
//! - end to end: the same stream range read through the CLI's consumer (the pipeline,
//!   NDJSON into a file) with no observer and with `Metrics` (scraped every 100 ms, as a
//!   busy Prometheus would not), runs alternating, best and median of each; the emulator's
//!   own run-to-run noise (about 10 %) is larger than what is measured;
//! - CPU only: the records of that range pushed through the same pipeline into /dev/null in
//!   batches of 64, with the events a reader reports per batch, no observer against
//!   `Metrics`: what recording costs per record, where nothing else hides it.
//!
//! `cargo build --release -p screamer-tests --bin screamer-metrics-bench &&
//! target/release/screamer-metrics-bench` (BENCH_REPEATS=N, default 5).

use std::sync::Arc;
use std::time::{Duration, Instant};

use screamer::destination::Ndjson;
use screamer::observe::{Event, Metrics, NoObserver, Observer};
use screamer::{
    Consumer, DataChangeRecord, Dialect, MemoryStore, PartitionToken, Pipeline, SpannerSource,
    Subscriber, SubscriberOptions, Timestamp,
};
use screamer_tests::bench::{BENCH_SCHEMA, env_usize, row};
use screamer_tests::{Emulator, EmulatorOptions, TestDatabase};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let repeats = env_usize("BENCH_REPEATS", 5);
    let emulator = Emulator::start(EmulatorOptions::default()).await?;
    let db = emulator.database(Dialect::GoogleSql, &BENCH_SCHEMA).await?;
    println!("# metrics on vs off ({repeats} runs each, alternating)\n");
    println!(
        "| workload | metrics | best mods/s | median mods/s | on / off (best) | on / off (median) |"
    );
    println!("|---|---|---|---|---|---|");
    let mut cpu = Vec::new();
    let mut next_id = 0;
    for (name, commits, rows) in [
        ("3,000 single-row commits", 3000, 1),
        ("20,000 rows in 40 commits", 40, 500),
    ] {
        let start = Timestamp::now();
        let mut end = start;
        for _ in 0..commits {
            let batch: Vec<_> = (0..rows).map(|i| row(next_id + i)).collect();
            next_id += rows;
            end = db.apply(batch).await?;
        }
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            off.push(read(&db, start, end, None).await?);
            on.push(read(&db, start, end, Some(Arc::new(Metrics::new()))).await?);
        }
        let (off_best, off_median) = summary(&mut off);
        let (on_best, on_median) = summary(&mut on);
        println!("| {name} | off | {off_best:.0} | {off_median:.0} | | |");
        println!(
            "| {name} | on | {on_best:.0} | {on_median:.0} | {:.3} | {:.3} |",
            on_best / off_best,
            on_median / off_median
        );
        let (records, _) = screamer_tests::read_range(&db, "BenchStream", start, end).await?;
        cpu.push((name, records));
    }
    println!("\n## CPU only: the pipeline into /dev/null, batches of 64, {repeats} x 20 passes\n");
    println!("| workload | records | off ns/record | on ns/record | on / off throughput |");
    println!("|---|---|---|---|---|");
    for (name, records) in cpu {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            off.push(consume_all(&records, None).await?);
            on.push(consume_all(&records, Some(Arc::new(Metrics::new()))).await?);
        }
        let (off_best, _) = summary(&mut off);
        let (on_best, _) = summary(&mut on);
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.3} |",
            records.len(),
            1e9 / off_best,
            1e9 / on_best,
            on_best / off_best
        );
    }
    Ok(())
}

/// Records per second through the pipeline into /dev/null, 20 passes over `records`.
async fn consume_all(
    records: &[DataChangeRecord],
    metrics: Option<Arc<Metrics>>,
) -> anyhow::Result<f64> {
    let observer: Arc<dyn Observer> = match metrics {
        Some(m) => m,
        None => Arc::new(NoObserver),
    };
    let pipeline = Pipeline::new(
        Box::new(Ndjson::append_file(std::path::Path::new("/dev/null"))?),
        Box::new(Ndjson::stderr()),
    )
    .with_observer(observer.clone());
    let partition = PartitionToken::from("bench".to_owned());
    let began = Instant::now();
    for _ in 0..20 {
        for batch in records.chunks(64) {
            observer.observe(Event::Read {
                partition: &partition,
                records: batch,
            });
            pipeline
                .consume(batch)
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            observer.observe(Event::Acknowledged {
                partition: &partition,
                through: batch[batch.len() - 1].commit_timestamp,
                records: batch,
            });
        }
    }
    Ok((records.len() * 20) as f64 / began.elapsed().as_secs_f64())
}

/// Mods per second reading [start, end] into an NDJSON file, with `metrics` observing.
async fn read(
    db: &TestDatabase,
    start: Timestamp,
    end: Timestamp,
    metrics: Option<Arc<Metrics>>,
) -> anyhow::Result<f64> {
    let source = SpannerSource::connect(&db.endpoint(), &db.name, "BenchStream").await?;
    let out = std::env::temp_dir().join(format!(
        "screamer-metrics-bench-{}.ndjson",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&out);
    let observer: Arc<dyn Observer> = match &metrics {
        Some(m) => m.clone(),
        None => Arc::new(NoObserver),
    };
    let pipeline = Pipeline::new(
        Box::new(Ndjson::append_file(&out)?),
        Box::new(Ndjson::stderr()),
    )
    .with_observer(observer.clone());
    let subscriber = Subscriber::new(
        source.clone(),
        Arc::new(MemoryStore::new()),
        SubscriberOptions {
            start: Some(start),
            end: Some(end),
            ..Default::default()
        },
    )
    .with_observer(observer);
    let scraper = metrics.map(|m| {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                std::hint::black_box(m.encode());
            }
        })
    });
    let began = Instant::now();
    subscriber
        .subscribe(pipeline, CancellationToken::new())
        .await?;
    let seconds = began.elapsed().as_secs_f64();
    if let Some(s) = scraper {
        s.abort();
    }
    source.close().await;
    let mods: usize = std::fs::read_to_string(&out)?
        .lines()
        .map(|l| l.matches("\"keys\"").count())
        .sum();
    let _ = std::fs::remove_file(&out);
    Ok(mods as f64 / seconds)
}

/// (best, median) of `runs`.
fn summary(runs: &mut [f64]) -> (f64, f64) {
    runs.sort_by(f64::total_cmp);
    (runs[runs.len() - 1], runs[runs.len() / 2])
}
