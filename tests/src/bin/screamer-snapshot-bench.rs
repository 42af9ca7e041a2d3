//! The snapshot's benchmark (`scripts/bench-snapshot.sh`): a table of `BENCH_ROWS` rows
//! (default 100,000, about 1.7 KB each) on the emulator, read end to end by
//! `screamer --snapshot only` into a file, side by side with bare reads of the same table at
//! the same timestamp: one `StreamingRead` and a partitioned read (gcloud-spanner), and
//! Google's Python client (`google-cloud-spanner`, `BENCH_PYTHON`). Then the time two
//! runners sharing one snapshot take against one. Each kind runs `BENCH_REPEATS` times,
//! interleaved; the median and the best are printed, and ratios against the bare read.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use gcloud_spanner::key::all_keys;
use screamer::{Dialect, Timestamp};
use screamer_tests::bench::{BENCH_SCHEMA, COLUMNS, env_usize, peak_rss_kb, row};
use screamer_tests::{Emulator, EmulatorOptions, TestDatabase, screamer_bin};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows = env_usize("BENCH_ROWS", 100_000);
    let repeats = env_usize("BENCH_REPEATS", 3);
    let emulator = Emulator::start(EmulatorOptions::default()).await?;
    let db = emulator.database(Dialect::GoogleSql, &BENCH_SCHEMA).await?;
    let ids: Vec<i64> = (0..rows as i64).collect();
    for chunk in ids.chunks(1_000) {
        db.apply(chunk.iter().map(|id| row(*id)).collect()).await?;
    }
    let at = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    eprintln!("bench: {rows} rows in Bench; snapshot at {at}");

    let kinds = [
        "bare read",
        "bare partitioned",
        "python client",
        "screamer, in memory",
        "screamer, metadata table",
        "screamer x2, metadata table",
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut peak_kb = 0;
    for round in 0..repeats {
        for (k, kind) in kinds.iter().enumerate() {
            let started = Instant::now();
            let read = match k {
                0 => bare_read(&db, at).await?,
                1 => bare_partitioned(&db, at).await?,
                2 => python(&db, at)?,
                3 => {
                    let (read, kb) = screamer(&db, at, None, 1)?;
                    peak_kb = peak_kb.max(kb);
                    read
                }
                4 => screamer(&db, at, Some(&format!("One{round}")), 1)?.0,
                _ => screamer(&db, at, Some(&format!("Two{round}")), 2)?.0,
            };
            let took = started.elapsed().as_secs_f64();
            anyhow::ensure!(read == rows, "{kind} read {read} rows of {rows}");
            eprintln!("bench: round {round}: {kind}: {took:.2} s");
            times[k].push(took);
        }
    }
    println!("| reader | median rows/s | best rows/s | median vs bare read |");
    println!("|---|---|---|---|");
    let median = |t: &[f64]| {
        let mut t = t.to_vec();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let bare = median(&times[0]);
    for (kind, t) in kinds.iter().zip(&times) {
        let best = t.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "| {kind} | {:.0} | {:.0} | {:.2} |",
            rows as f64 / median(t),
            rows as f64 / best,
            bare / median(t)
        );
    }
    println!(
        "\nscreamer, one runner in memory: peak RSS {:.1} MB for {rows} rows; with a metadata table, two runners take {:.2} of one runner's time",
        peak_kb as f64 / 1024.0,
        median(&times[5]) / median(&times[4])
    );
    Ok(())
}

/// One `StreamingRead` of every row at `at`, as an application would read it.
async fn bare_read(db: &TestDatabase, at: Timestamp) -> anyhow::Result<usize> {
    let mut tx = db.client.single_with_timestamp_bound(read_at(at)).await?;
    let mut iter = tx.read("Bench", &COLUMNS, all_keys()).await?;
    let mut n = 0;
    while let Some(row) = iter.next().await? {
        let _: String = row.column(1)?;
        n += 1;
    }
    Ok(n)
}

/// Spanner's partitions of the table at `at`, read one after another.
async fn bare_partitioned(db: &TestDatabase, at: Timestamp) -> anyhow::Result<usize> {
    let mut tx = db
        .client
        .batch_read_only_transaction_with_option(
            gcloud_spanner::client::ReadOnlyTransactionOption {
                timestamp_bound: read_at(at),
                ..Default::default()
            },
        )
        .await?;
    let partitions = tx.partition_read("Bench", &COLUMNS, all_keys()).await?;
    let mut n = 0;
    for p in partitions {
        let mut iter = tx.execute(p, None).await?;
        while let Some(row) = iter.next().await? {
            let _: String = row.column(1)?;
            n += 1;
        }
    }
    Ok(n)
}

fn read_at(at: Timestamp) -> gcloud_spanner::value::TimestampBound {
    let nanos = at.unix_nanos();
    gcloud_spanner::value::TimestampBound::read_timestamp(gcloud_spanner::value::Timestamp {
        seconds: nanos.div_euclid(1_000_000_000) as i64,
        nanos: nanos.rem_euclid(1_000_000_000) as i32,
    })
}

/// Google's Python client reading the table at `at` (`tests/bench/read_table.py`).
fn python(db: &TestDatabase, at: Timestamp) -> anyhow::Result<usize> {
    let python = std::env::var("BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/read_table.py");
    let out = Command::new(&python)
        .args([script, &db.name.to_string(), "Bench", &at.to_string()])
        .arg(COLUMNS.join(","))
        .env("SPANNER_EMULATOR_HOST", db.host())
        .output()
        .with_context(|| format!("running {python} {script}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

/// `runners` screamers sharing one `--snapshot only` on metadata table `table` (in memory
/// without one), each into a file; returns the rows written and the largest peak RSS (KiB).
/// A runner claims four chunks at a time, so two share the chunks.
fn screamer(
    db: &TestDatabase,
    at: Timestamp,
    table: Option<&str>,
    runners: usize,
) -> anyhow::Result<(usize, u64)> {
    let dir = std::env::temp_dir().join(format!("screamer-snapshot-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut children = Vec::new();
    for r in 0..runners {
        let out = dir.join(format!("{}-{r}.ndjson", table.unwrap_or("memory")));
        let child = Command::new(screamer_bin())
            .args(["--dsn", &db.name.to_string(), "--stream", "BenchStream"])
            .args(table.map(|t| ["--metadata-table", t]).into_iter().flatten())
            .args(["--snapshot", "only", "--start"])
            .arg(at.to_string())
            .arg("--output")
            .arg(&out)
            .env("SPANNER_EMULATOR_HOST", db.host())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        children.push((child, out));
    }
    let mut peak = 0;
    let (mut rows, mut running) = (0, children.len());
    while running > 0 {
        running = 0;
        for (child, _) in &mut children {
            match child.try_wait()? {
                Some(status) => anyhow::ensure!(status.success(), "screamer: {status}"),
                None => {
                    running += 1;
                    peak = peak.max(peak_rss_kb(child.id()));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (_, out) in &children {
        rows += std::fs::read_to_string(out)?.lines().count();
        std::fs::remove_file(out)?;
    }
    Ok((rows, peak))
}
