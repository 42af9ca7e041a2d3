//! Reader benchmark on the emulator: screamer end to end vs a bare reader vs the Python
//! client, in one run. See BENCHMARKS.md for the command and results.
//!
//! Workloads: (a) 20,000 rows in 40 commits, (b) 3,000 single-row commits, each on a stream
//! of its own, read back over its exact time range by each reader in interleaved rounds
//! (ratios within a round, then their median and spread); then commit-to-output latency
//! under a steady writer for screamer and the bare reader.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use screamer::ChangeRecord;
use screamer::QueryRange;
use screamer::{ChangeSource, Dialect, PartitionToken, SpannerSource, Timestamp};
use screamer_tests::bench::{
    BENCH_SCHEMA, env_usize, latencies, peak_rss_kb, percentile, row, steady_writer,
};
use screamer_tests::{Emulator, EmulatorOptions, TestDatabase, int_member, screamer_bin};
use tokio::task::JoinSet;

/// The batch the bare reader asks for: the same as the library's reader (its `MAX_BATCH`).
const READER_BATCH: usize = 1024;
const PY_VENV: &str = "target/bench-venv";
#[derive(Debug, Clone, Copy, Default)]
struct Throughput {
    records: u64,
    mods: u64,
    seconds: f64,
    peak_rss_kb: u64,
    metadata_writes: Option<u64>,
}

impl Throughput {
    fn mods_per_s(&self) -> f64 {
        self.mods as f64 / self.seconds
    }
}

/// One round of a workload: each reader once, one right after the other, and the fixed
/// cost of each screamer run (an empty range) in the same round. Ratios are taken within a
/// round, so a machine or emulator that slows down for a while slows every reader of it.
struct Round {
    bare: Throughput,
    screamer: Throughput,
    plugged: Throughput,
    python: Throughput,
    fixed: Fixed,
}

/// What a screamer process costs beyond reading, without and with the plugin (whose engine
/// start and cached load are per process).
#[derive(Clone, Copy)]
struct Fixed {
    screamer: f64,
    plugged: f64,
}

impl Round {
    /// `reader`'s rate over the bare reader's in this round, end to end.
    fn ratio(&self, reader: &Throughput) -> f64 {
        reader.mods_per_s() / self.bare.mods_per_s()
    }

    /// The same without this round's fixed cost of that screamer run.
    fn ratio_without_fixed(&self, reader: &Throughput, fixed: f64) -> f64 {
        self.bare.seconds / (reader.seconds - fixed).max(1e-9)
    }
}

/// The median and the spread of `values`.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        Spread {
            median: percentile(&v, 0.5),
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = f.precision().unwrap_or(2);
        write!(f, "{:.p$} ({:.p$}-{:.p$})", self.median, self.min, self.max)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let repeats = env_usize("BENCH_REPEATS", 7);
    let python = python_env()?;
    let emulator = Emulator::start(EmulatorOptions::default()).await?;
    println!(
        "# screamer reader benchmark (emulator {}, {repeats} interleaved rounds: median, with min-max)\n",
        emulator.host()
    );
    let workloads = [
        ("(a) 20,000 rows in 40 commits", 40, 500),
        ("(b) 3,000 single-row commits", 3000, 1),
    ];
    // BENCH_ONLY=a, b or latency runs just that part.
    let only = std::env::var("BENCH_ONLY").ok();
    let runs = |part: &str| only.as_deref().is_none_or(|o| o == part);
    for (name, commits, rows_per_commit) in
        workloads.into_iter().filter(|(name, ..)| runs(&name[1..2]))
    {
        // A database and stream of its own: the emulator ends partitions 20 to 40 s after they
        // start, and a workload written later would span a split in one run and not in
        // another. Written at once on a new stream, each workload is the same every run.
        let db = emulator.database(Dialect::GoogleSql, &BENCH_SCHEMA).await?;
        let empty = new_stream(&db).await?;
        let start = Timestamp::now();
        let mut end = start;
        let mut next_id = 0i64;
        for _ in 0..commits {
            let mutations = (0..rows_per_commit)
                .map(|_| {
                    next_id += 1;
                    row(next_id - 1)
                })
                .collect();
            end = db.apply(mutations).await?;
        }
        let expected = (commits * rows_per_commit) as u64;
        settle(end).await;
        let mut rounds = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let round = workload_round(&db, &python, (start, end), empty).await?;
            for (who, t) in round.readers() {
                if t.mods != expected {
                    bail!("{who} read {} mods of {expected} in {name}", t.mods);
                }
            }
            rounds.push(round);
        }
        report(name, &rounds);
    }
    if !runs("latency") {
        return Ok(());
    }
    println!(
        "## commit-to-output latency, steady writer (50 commits/s for 10 s), both readers at once (screamer with the pass-through plugin)\n"
    );
    println!("| reader | records | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    // A fresh emulator: after the throughput workloads its change stream polling slows down
    // (seen: p50 above one second for every reader).
    drop(emulator);
    let emulator = Emulator::start(EmulatorOptions::default()).await?;
    let db = emulator.database(Dialect::GoogleSql, &BENCH_SCHEMA).await?;
    stream_live(&db).await?;
    let (bare, screamer) = latency(&db, 0).await?;
    for (who, l) in [
        ("bare reader", &bare),
        ("screamer CLI + pass-through plugin", &screamer),
    ] {
        println!(
            "| {who} | {} | {:.1} | {:.1} | {:.1} |",
            l.len(),
            percentile(l, 0.50),
            percentile(l, 0.99),
            percentile(l, 1.0)
        );
    }
    println!(
        "\np99 difference (screamer - bare): {:.1} ms",
        percentile(&screamer, 0.99) - percentile(&bare, 0.99)
    );
    Ok(())
}

impl Round {
    fn readers(&self) -> [(&'static str, &Throughput); 4] {
        [
            ("bare reader (Rust, low-level query)", &self.bare),
            ("screamer CLI (NDJSON to file)", &self.screamer),
            ("screamer CLI + pass-through plugin", &self.plugged),
            ("Python google-cloud-spanner", &self.python),
        ]
    }
}

/// One round over [start, end]: every reader, then screamer and the bare reader over the
/// `empty` range: the difference is screamer's fixed cost (process start, connection,
/// metadata check and seeding, scheduling the partitions, stop).
async fn workload_round(
    db: &TestDatabase,
    python: &std::path::Path,
    (start, end): (Timestamp, Timestamp),
    empty: (Timestamp, Timestamp),
) -> anyhow::Result<Round> {
    let bare = bare_read(db, start, end).await?;
    clear_metadata(db).await?;
    let screamer = screamer_read(db, start, end, &[]).await?;
    clear_metadata(db).await?;
    let plugged = screamer_read(db, start, end, &pass_through_args()).await?;
    let python = python_read(python, db, start, end)?;
    clear_metadata(db).await?;
    // What a screamer process costs beyond reading: the empty range with each reader, the
    // difference (the partition queries of an empty range take both about 0.1 s).
    let empty_bare = bare_read(db, empty.0, empty.1).await?.seconds;
    let empty_screamer = screamer_read(db, empty.0, empty.1, &[]).await?.seconds;
    clear_metadata(db).await?;
    let empty_plugged = screamer_read(db, empty.0, empty.1, &pass_through_args()).await?;
    clear_metadata(db).await?;
    let fixed = Fixed {
        screamer: empty_screamer - empty_bare,
        plugged: empty_plugged.seconds - empty_bare,
    };
    Ok(Round {
        bare,
        screamer,
        plugged,
        python,
        fixed,
    })
}

/// Prints a workload's table (each reader's median run) and the ratios to the bare reader,
/// each the median of the rounds' own ratios with their spread.
fn report(name: &str, rounds: &[Round]) {
    println!("## {name}\n");
    println!(
        "| reader | records | mods | median s | best s | mods/s (median run) | vs bare (median of rounds) | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (i, (who, _)) in rounds[0].readers().into_iter().enumerate() {
        let mut runs: Vec<Throughput> = rounds.iter().map(|r| *r.readers()[i].1).collect();
        runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
        let median = runs[runs.len() / 2];
        let ratio = Spread::of(rounds.iter().map(|r| r.ratio(r.readers()[i].1)));
        println!(
            "| {who} | {} | {} | {:.3} | {:.3} | {:.0} | {ratio} | {} |",
            median.records,
            median.mods,
            median.seconds,
            runs[0].seconds,
            median.mods_per_s(),
            match median.peak_rss_kb {
                0 => "-".to_owned(),
                kb => format!("{} MB", kb / 1024),
            },
        );
    }
    let fixed = |pick: fn(&Fixed) -> f64| Spread::of(rounds.iter().map(|r| pick(&r.fixed)));
    let without = |pick: fn(&Round) -> (&Throughput, f64)| {
        Spread::of(rounds.iter().map(|r| {
            let (reader, fixed) = pick(r);
            r.ratio_without_fixed(reader, fixed)
        }))
    };
    let vs_python = |pick: fn(&Round) -> &Throughput| {
        Spread::of(
            rounds
                .iter()
                .map(|r| pick(r).mods_per_s() / r.python.mods_per_s()),
        )
    };
    let writes = rounds[0].screamer.metadata_writes.unwrap_or(0);
    println!(
        "\nscreamer fixed cost per run (empty range, screamer minus bare, each round): {:.3} s, \
         with the plugin {:.3} s\n\
         screamer / bare without the fixed cost: {}; screamer / python: {}\n\
         with the pass-through plugin, / bare without the fixed cost: {}; / python: {}\n\
         metadata writes: {writes} ({:.1} per 10,000 records)\n",
        fixed(|f| f.screamer),
        fixed(|f| f.plugged),
        without(|r| (&r.screamer, r.fixed.screamer)),
        vs_python(|r| &r.screamer),
        without(|r| (&r.plugged, r.fixed.plugged)),
        vs_python(|r| &r.plugged),
        writes as f64 * 10_000.0 / rounds[0].screamer.records as f64,
    );
}

/// Waits until the local clock is 100 ms past `end`: the emulator's commit timestamps run
/// ahead of it, and a range read while its end is still to come can come back empty.
async fn settle(end: Timestamp) {
    let past = end.saturating_add(Duration::from_millis(100));
    while Timestamp::now() < past {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Prepares a new stream for a workload: a first screamer run, not counted, creates the
/// metadata table (a one-time migration); its range, 1 ms without records and in the past
/// (a range still to come would make a run wait for its end), gives each round's fixed
/// cost. Then waits for the stream to show commits.
async fn new_stream(db: &TestDatabase) -> anyhow::Result<(Timestamp, Timestamp)> {
    let at = Timestamp::now();
    let empty = (at, at.saturating_add(Duration::from_millis(1)));
    screamer_read(db, empty.0, empty.1, &[]).await?;
    stream_live(db).await?;
    Ok(empty)
}

/// Waits until a commit shows in the change stream. The emulator leaves out of a new
/// stream the commits of its first second or so (seen: a workload written at once read back
/// as 0 mods of 3,000), so workloads start once a probe row is read back.
async fn stream_live(db: &TestDatabase) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let start = Timestamp::now();
        let end = db.apply(vec![row(-1)]).await?;
        settle(end).await;
        if bare_read(db, start, end).await?.mods > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the change stream showed no commit within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Follows the partitions of [start, end] with the low-level query only: no checkpoints, no
/// consumer, no JSON.
async fn bare_read(
    db: &TestDatabase,
    start: Timestamp,
    end: Timestamp,
) -> anyhow::Result<Throughput> {
    let source = SpannerSource::connect(&db.endpoint(), &db.name, "BenchStream").await?;
    let began = Instant::now();
    let mut out = Throughput::default();
    follow(&source, start, Some(end), |batch| {
        for r in batch {
            if let ChangeRecord::Data(d) = r {
                out.records += 1;
                out.mods += d.mods.len() as u64;
            }
        }
        false
    })
    .await?;
    out.seconds = began.elapsed().as_secs_f64();
    Ok(out)
}

/// Reads every partition from `start` (children after their first announcement, which is
/// enough for counting), calling `on_batch` in the reading task; `on_batch` returning true
/// stops everything.
async fn follow(
    source: &SpannerSource,
    start: Timestamp,
    end: Option<Timestamp>,
    mut on_batch: impl FnMut(&[ChangeRecord]) -> bool,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<ChangeRecord>>(64);
    let mut tasks = JoinSet::new();
    let mut seen = HashSet::new();
    let spawn =
        |tasks: &mut JoinSet<anyhow::Result<()>>, token: PartitionToken, from: Timestamp| {
            let (source, tx) = (source.clone(), tx.clone());
            tasks.spawn(async move {
                let mut q = source
                    .query(
                        &token,
                        QueryRange {
                            start: from,
                            end,
                            heartbeat_millis: 1000,
                        },
                    )
                    .await?;
                while let Some(batch) = q.next_batch(READER_BATCH).await? {
                    if tx.send(batch).await.is_err() {
                        break;
                    }
                }
                Ok(())
            });
        };
    spawn(&mut tasks, PartitionToken::root(), start);
    loop {
        tokio::select! {
            Some(batch) = rx.recv() => {
                for r in &batch {
                    if let ChangeRecord::ChildPartitions(c) = r {
                        for child in &c.child_partitions {
                            if seen.insert(child.token.clone()) {
                                spawn(&mut tasks, child.token.clone(), c.start_timestamp);
                            }
                        }
                    }
                }
                if on_batch(&batch) {
                    return Ok(());
                }
            }
            done = tasks.join_next() => match done {
                Some(result) => result??,
                None => {
                    // Drain what the last tasks sent.
                    while let Ok(batch) = rx.try_recv() {
                        on_batch(&batch);
                    }
                    return Ok(());
                }
            },
        }
    }
}

/// Empties the metadata table so that the next run starts from its `--start`: screamer then
/// works with an existing table, as in production after the first run (creating it is a
/// one-time migration, not part of reading).
async fn clear_metadata(db: &TestDatabase) -> anyhow::Result<()> {
    db.dml(vec![gcloud_spanner::statement::Statement::new(
        "DELETE FROM BenchMeta WHERE true",
    )])
    .await?;
    Ok(())
}

async fn screamer_read(
    db: &TestDatabase,
    start: Timestamp,
    end: Timestamp,
    plugin_args: &[String],
) -> anyhow::Result<Throughput> {
    let out_path =
        std::env::temp_dir().join(format!("screamer-bench-{}.ndjson", std::process::id()));
    let out_file = std::fs::File::create(&out_path)?;
    let began = Instant::now();
    let began_wall = Timestamp::now();
    let mut child = screamer_command(
        db,
        "BenchMeta",
        &[
            "--start",
            &start.to_string(),
            "--end",
            &end.to_string(),
            "--log-level",
            &std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".into()),
        ],
    )
    .args(plugin_args)
    .stdout(out_file)
    .stderr(Stdio::piped())
    .spawn()
    .context("screamer binary (cargo build --release -p screamer)")?;
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        peak = peak.max(peak_rss_kb(pid));
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let seconds = began.elapsed().as_secs_f64();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut log)?;
    if !status.success() {
        bail!("screamer failed: {log}");
    }
    if std::env::var_os("BENCH_LOG").is_some() {
        eprintln!("spawned at {began_wall}, exited after {seconds:.3} s\n{log}");
    }
    let mut t = Throughput {
        seconds,
        peak_rss_kb: peak,
        ..Default::default()
    };
    for line in BufReader::new(std::fs::File::open(&out_path)?).lines() {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        t.records += 1;
        t.mods += v["mods"].as_array().map_or(0, |m| m.len() as u64);
    }
    std::fs::remove_file(&out_path)?;
    t.metadata_writes = log.lines().filter(|l| l.contains(" done ")).find_map(|l| {
        l.split("metadata_writes=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    Ok(t)
}

/// `--plugin` arguments for the identity plugin (every record crosses the boundary both
/// ways), with a shared compiled-plugin cache.
fn pass_through_args() -> Vec<String> {
    vec![
        "--plugin".into(),
        screamer_tests::plugins::plugin("identity")
            .display()
            .to_string(),
        "--plugin-cache".into(),
        screamer_tests::plugins::plugin_cache()
            .display()
            .to_string(),
    ]
}

/// The screamer binary reading the bench stream with its own metadata table.
fn screamer_command(db: &TestDatabase, table: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(screamer_bin());
    cmd.args(["--dsn", &db.name.to_string(), "--stream", "BenchStream"])
        .args(["--metadata-table", table, "--heartbeat-interval", "1s"])
        .args(extra)
        .env("SPANNER_EMULATOR_HOST", db.host());
    cmd
}

/// A virtualenv with google-cloud-spanner, made on first use.
fn python_env() -> anyhow::Result<std::path::PathBuf> {
    let py = std::path::PathBuf::from(PY_VENV).join("bin/python");
    if !py.exists() {
        eprintln!("bench: installing google-cloud-spanner into {PY_VENV}");
        let ok = Command::new("python3")
            .args(["-m", "venv", PY_VENV])
            .status()?
            .success()
            && Command::new(&py)
                .args(["-m", "pip", "install", "--quiet", "google-cloud-spanner"])
                .status()?
                .success();
        if !ok {
            bail!("could not install google-cloud-spanner into {PY_VENV}");
        }
    }
    Ok(py)
}

fn python_read(
    python: &std::path::Path,
    db: &TestDatabase,
    start: Timestamp,
    end: Timestamp,
) -> anyhow::Result<Throughput> {
    let child = Command::new(python)
        .arg("bench/python_reader.py")
        .args([
            db.name.project(),
            db.name.instance(),
            db.name.database(),
            "BenchStream",
            &start.to_string(),
            &end.to_string(),
        ])
        .env("SPANNER_EMULATOR_HOST", db.host())
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let peak = Arc::new(Mutex::new(0u64));
    let watcher = {
        let peak = peak.clone();
        std::thread::spawn(move || {
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let now = peak_rss_kb(pid);
                let mut p = peak.lock().expect("peak lock");
                *p = (*p).max(now);
                drop(p);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let output = child.wait_with_output()?;
    let _ = watcher.join();
    if !output.status.success() {
        bail!("python reader failed");
    }
    let v: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(Throughput {
        records: v["records"].as_u64().unwrap_or(0),
        mods: v["mods"].as_u64().unwrap_or(0),
        seconds: v["seconds"].as_f64().unwrap_or(f64::NAN),
        peak_rss_kb: *peak.lock().expect("peak lock"),
        metadata_writes: None,
    })
}

type Seen = Arc<Mutex<HashMap<i64, Instant>>>;

fn mark_seen(seen: &Seen, ids: impl IntoIterator<Item = i64>) {
    let now = Instant::now();
    let mut seen = seen.lock().expect("seen lock");
    for id in ids {
        seen.entry(id).or_insert(now);
    }
}

/// Screamer (as a process) and the bare reader (in this process) follow the stream at the
/// same time while one steady writer commits: both see the same commits and the same
/// partition layout, so their latencies compare directly.
async fn latency(db: &TestDatabase, first: i64) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let ids = first..first + 500;
    let mut child = screamer_command(
        db,
        &format!("BenchLatency{}", Timestamp::now().unix_nanos()),
        &[],
    )
    .args(pass_through_args())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("subscribing") {
                let _ = ready_tx.send(());
            }
        }
    });
    let screamer_seen: Seen = Arc::default();
    let stdout = child.stdout.take().expect("stdout");
    let reader = {
        let seen = screamer_seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                mark_seen(
                    &seen,
                    v["mods"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|m| m["keys"]["Id"].as_str().and_then(|s| s.parse().ok())),
                );
            }
        })
    };
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .context("screamer did not start subscribing")?;

    let source = SpannerSource::connect(&db.endpoint(), &db.name, "BenchStream").await?;
    let bare_seen: Seen = Arc::default();
    let bare = {
        let seen = bare_seen.clone();
        let start = Timestamp::now();
        tokio::spawn(async move {
            follow(&source, start, None, |batch| {
                mark_seen(
                    &seen,
                    batch.iter().flat_map(|r| match r {
                        ChangeRecord::Data(d) => d
                            .mods
                            .iter()
                            .filter_map(|m| int_member(&m.keys, "Id"))
                            .collect(),
                        _ => Vec::new(),
                    }),
                );
                false
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let committed = steady_writer(db, ids.clone(), Duration::from_millis(20)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let complete = |seen: &Seen| {
        let seen = seen.lock().expect("seen lock");
        ids.clone().all(|id| seen.contains_key(&id))
    };
    while !(complete(&screamer_seen) && complete(&bare_seen)) {
        if Instant::now() > deadline {
            let count = |seen: &Seen| seen.lock().expect("seen lock").len();
            bail!(
                "after 60 s the bare reader had {} and screamer {} of the 500 records",
                count(&bare_seen),
                count(&screamer_seen)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bare.abort();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { screamer_tests::libc::kill(child.id() as i32, screamer_tests::libc::SIGINT) };
    child.wait()?;
    let _ = reader.join();
    let l = |seen: &Seen| latencies(&committed, &seen.lock().expect("seen lock"));
    Ok((l(&bare_seen), l(&screamer_seen)))
}
