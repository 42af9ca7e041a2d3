//! Shared by the benchmark binaries: the bench table and its rows, a steady writer, peak
//! RSS of a process, latency percentiles.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gcloud_spanner::mutation::insert_or_update;

use crate::TestDatabase;

/// The bench table's columns.
pub const COLUMNS: [&str; 10] = ["Id", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9"];
/// A 10-column table (about 1.7 KB per row) with the change stream `BenchStream`.
pub const BENCH_SCHEMA: [&str; 2] = [
    "CREATE TABLE Bench (Id INT64 NOT NULL, C1 STRING(MAX), C2 STRING(MAX), C3 STRING(MAX), \
     C4 STRING(MAX), C5 STRING(MAX), C6 STRING(MAX), C7 STRING(MAX), C8 STRING(MAX), \
     C9 STRING(MAX)) PRIMARY KEY (Id)",
    "CREATE CHANGE STREAM BenchStream FOR Bench",
];

/// Row `id` of the bench table.
pub fn row(id: i64) -> gcloud_googleapis::spanner::v1::Mutation {
    // About 1.7 KB per row over nine string columns.
    let v: Vec<String> = (1..10)
        .map(|c| format!("{c}:{id}:{}", "x".repeat(180)))
        .collect();
    insert_or_update(
        "Bench",
        &COLUMNS,
        &[
            &id, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8],
        ],
    )
}

/// The number in environment variable `name` (a bench's knob), or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident set (VmHWM) of process `pid`, in KiB; 0 once it is gone.
pub fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Commits one single-row transaction per id of `ids`, one every `every`; returns when each
/// commit returned.
pub async fn steady_writer(
    db: &TestDatabase,
    ids: std::ops::Range<i64>,
    every: Duration,
) -> anyhow::Result<HashMap<i64, Instant>> {
    let mut committed = HashMap::new();
    let mut tick = tokio::time::interval(every);
    for id in ids {
        tick.tick().await;
        db.apply(vec![row(id)]).await?;
        committed.insert(id, Instant::now());
    }
    Ok(committed)
}

/// Milliseconds from each commit to when its record was seen, sorted.
pub fn latencies(committed: &HashMap<i64, Instant>, seen: &HashMap<i64, Instant>) -> Vec<f64> {
    let mut l: Vec<f64> = committed
        .iter()
        .filter_map(|(id, c)| Some(seen.get(id)?.saturating_duration_since(*c).as_secs_f64() * 1e3))
        .collect();
    l.sort_by(f64::total_cmp);
    l
}

/// The `p` quantile (0..=1) of `sorted`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}
