//! Destination benchmark on the emulators: one stream range read by the screamer binary into
//! a file, Pub/Sub, Kafka, JetStream, HTTP and a PostgreSQL replica, side by side (and a
//! `COPY` of the same rows into PostgreSQL as the replica's floor); commit-to-consumer
//! latency per destination under a steady writer; screamer's memory while a broker is
//! stalled. `BENCH_ORDERINGS=key,transactions` runs every phase in each `--ordering`, side
//! by side (default: `key` only). See BENCHMARKS.md for the command and results.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use screamer::{Dialect, Timestamp};
use screamer_tests::bench::{BENCH_SCHEMA, latencies, peak_rss_kb, percentile, row, steady_writer};
use screamer_tests::broker::{Broker, Delivered};
use screamer_tests::http::{Behaviour, HttpSink};
use screamer_tests::kafka::{self, KafkaBroker};
use screamer_tests::nats::{self, NatsServer};
use screamer_tests::postgres::PostgresServer;
use screamer_tests::pubsub::{self, PubSubEmulator};
use screamer_tests::{Emulator, EmulatorOptions, TestDatabase, screamer_bin};

/// Single-row commits of the throughput range.
const COMMITS: i64 = 5000;
/// Timed runs of the range into each destination; the table shows their median.
const ROUNDS: usize = 5;

/// Where a run sends its records, and how the bench reads them back.
enum Sink<'a> {
    File {
        path: std::path::PathBuf,
        read: u64,
    },
    Http {
        sink: &'a HttpSink,
        seen: usize,
    },
    PubSub(pubsub::Topic<'a>),
    Kafka(kafka::Topic<'a>),
    Nats(nats::Stream<'a>),
    /// A replica in schema `schema`: the Ids of its `Bench` rows, those seen already kept.
    Postgres {
        server: &'a PostgresServer,
        client: &'a tokio_postgres::Client,
        schema: String,
        seen: std::collections::HashSet<i64>,
    },
}

impl Sink<'_> {
    fn name(&self) -> &'static str {
        match self {
            Sink::File { .. } => "file",
            Sink::Http { .. } => "HTTP",
            Sink::PubSub(_) => "Pub/Sub",
            Sink::Kafka(_) => "Kafka",
            Sink::Nats(_) => "JetStream",
            Sink::Postgres { .. } => "PostgreSQL",
        }
    }

    fn uri(&self) -> String {
        match self {
            Sink::File { path, .. } => format!("file:{}", path.display()),
            Sink::Http { sink, .. } => sink.url(),
            Sink::PubSub(b) => strip_split(b.output()),
            Sink::Kafka(b) => strip_split(b.output()),
            Sink::Nats(b) => strip_split(b.output()),
            Sink::Postgres { server, schema, .. } => {
                server.uri("postgres", &format!("?schema={schema}"))
            }
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Sink::PubSub(b) => b.env(),
            _ => Vec::new(),
        }
    }

    /// The Ids of the rows that arrived since the last call.
    async fn drain(&mut self, wait: Duration) -> anyhow::Result<Vec<i64>> {
        if let Sink::Postgres {
            client,
            schema,
            seen,
            ..
        } = self
        {
            tokio::time::sleep(wait.min(Duration::from_millis(20))).await;
            let sql = format!(r#"SELECT "Id" FROM "{schema}"."Bench""#);
            let rows = client.query(&sql, &[]).await.unwrap_or_default();
            let ids = rows.iter().map(|r| r.get(0)).filter(|id| seen.insert(*id));
            return Ok(ids.collect());
        }
        let lines: Vec<String> = match self {
            Sink::File { path, read } => {
                tokio::time::sleep(wait.min(Duration::from_millis(20))).await;
                let mut file = std::fs::File::open(&*path)?;
                file.seek(std::io::SeekFrom::Start(*read))?;
                let mut text = String::new();
                file.read_to_string(&mut text)?;
                // The writer may be mid-line: only whole lines count, the rest is read later.
                let whole = text.rfind('\n').map_or(0, |end| end + 1);
                *read += whole as u64;
                text[..whole].lines().map(str::to_owned).collect()
            }
            Sink::Http { sink, seen } => {
                tokio::time::sleep(wait.min(Duration::from_millis(20))).await;
                let all = sink.lines();
                let new = all[*seen..].to_vec();
                *seen = all.len();
                new
            }
            Sink::PubSub(b) => data(b.drain(wait).await?),
            Sink::Kafka(b) => data(b.drain(wait).await?),
            Sink::Nats(b) => data(b.drain(wait).await?),
            Sink::Postgres { .. } => unreachable!("read above"),
        };
        let mut ids = Vec::new();
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(&line)?;
            for m in v["mods"].as_array().into_iter().flatten() {
                ids.push(m["keys"]["Id"].as_str().context("Id")?.parse()?);
            }
        }
        Ok(ids)
    }

    fn signal(&self, signal: screamer_tests::libc::c_int) -> anyhow::Result<()> {
        match self {
            Sink::PubSub(b) => b.signal(signal),
            Sink::Kafka(b) => b.signal(signal),
            Sink::Nats(b) => b.signal(signal),
            Sink::Postgres { server, .. } => server.signal(signal),
            _ => Ok(()),
        }
    }
}

fn strip_split(uri: String) -> String {
    uri.trim_end_matches("?mods=split").to_owned()
}

fn data(messages: Vec<Delivered>) -> Vec<String> {
    messages.into_iter().map(|m| m.data).collect()
}

/// The servers, each with one topic or stream per phase.
struct Servers {
    pubsub: PubSubEmulator,
    kafka: KafkaBroker,
    nats: NatsServer,
    http: HttpSink,
    postgres: PostgresServer,
    /// A client of `postgres`, for reading the replicas back.
    client: tokio_postgres::Client,
    dir: std::path::PathBuf,
}

impl Servers {
    async fn start() -> anyhow::Result<Self> {
        let postgres = PostgresServer::start().await?;
        let client = postgres.client("postgres").await?;
        let servers = Servers {
            pubsub: PubSubEmulator::start().await?,
            kafka: KafkaBroker::start().await?,
            nats: NatsServer::start().await?,
            http: HttpSink::start(Behaviour::default()).await?,
            postgres,
            client,
            dir: screamer_tests::plugins::scratch_dir("dest-bench"),
        };
        // JetStream drops a message it has seen (by `Nats-Msg-Id`): every run of the same
        // range needs its own stream, and so gets its own topics.
        let rounds = (0..=ROUNDS).map(throughput_phase);
        let phases: Vec<String> = rounds.chain(["latency".into(), "stall".into()]).collect();
        let all = orderings()
            .into_iter()
            .flat_map(|o| phases.iter().map(move |p| in_ordering(p, o)));
        for phase in all {
            let phase = phase.as_str();
            servers.pubsub.topic(phase).await?;
            servers.kafka.topic(phase, 3).await?;
            servers.nats.stream(phase, &[phase]).await?;
        }
        Ok(servers)
    }

    /// Every destination for `phase` (a [`throughput_phase`], `latency`, `stall`).
    fn sinks<'a>(&'a self, phase: &'a str) -> anyhow::Result<Vec<Sink<'a>>> {
        let path = self.dir.join(format!("{phase}.ndjson"));
        std::fs::File::create(&path)?;
        let mut sinks = vec![
            Sink::File { path, read: 0 },
            Sink::PubSub(pubsub::Topic {
                emulator: &self.pubsub,
                id: phase,
            }),
            Sink::Kafka(kafka::Topic {
                broker: &self.kafka,
                name: phase,
                consumer: self.kafka.consumer(phase, 3)?,
            }),
            Sink::Nats(nats::Stream {
                server: &self.nats,
                name: phase,
                subject: phase,
                seen: 0,
            }),
            Sink::Http {
                sink: &self.http,
                seen: self.http.lines().len(),
            },
            // A schema per phase: every run starts from an empty replica.
            Sink::Postgres {
                server: &self.postgres,
                client: &self.client,
                schema: phase.to_owned(),
                seen: Default::default(),
            },
        ];
        // The file stays: the others are compared with it.
        sinks.retain(|s| matches!(s, Sink::File { .. }) || wanted("BENCH_DESTINATIONS", s.name()));
        Ok(sinks)
    }
}

/// The phase of throughput round `round` (0 is the untimed one).
fn throughput_phase(round: usize) -> String {
    format!("throughput{round}")
}

/// The `--ordering` values to run (`BENCH_ORDERINGS`, default `key`).
fn orderings() -> Vec<&'static str> {
    ["key", "transactions"]
        .into_iter()
        .filter(|o| match std::env::var("BENCH_ORDERINGS") {
            Ok(v) => v.split(',').any(|w| w.trim() == *o),
            Err(_) => *o == "key",
        })
        .collect()
}

/// A phase's name in one ordering: each run gets its own topics and streams.
fn in_ordering(phase: &str, ordering: &str) -> String {
    format!("{phase}_{ordering}")
}

/// Whether `item` is in the comma-separated list of the environment variable `list`
/// (case-insensitive; all when it is not set).
fn wanted(list: &str, item: &str) -> bool {
    std::env::var(list).map_or(true, |v| {
        v.split(',').any(|w| w.trim().eq_ignore_ascii_case(item))
    })
}

/// The screamer binary reading the bench stream into `sink` in `ordering`, with its own
/// metadata table.
fn screamer(
    db: &TestDatabase,
    sink: &Sink<'_>,
    ordering: &str,
    extra: &[&str],
) -> anyhow::Result<Child> {
    let table = format!("DestBench{}", Timestamp::now().unix_nanos());
    std::process::Command::new(screamer_bin())
        .args(["--dsn", &db.name.to_string(), "--stream", "BenchStream"])
        .args(["--metadata-table", &table, "--heartbeat-interval", "1s"])
        .args(["--output", &sink.uri(), "--ordering", ordering])
        .args(extra)
        .env("SPANNER_EMULATOR_HOST", db.host())
        .envs(sink.env())
        .stdout(Stdio::null())
        .stderr(match std::env::var_os("BENCH_SCREAMER_LOG") {
            // For diagnosis: every run's log appended to one file.
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => Stdio::null(),
        })
        .spawn()
        .context("screamer binary (cargo build --release -p screamer)")
}

struct Throughput {
    seconds: f64,
    peak_rss_kb: u64,
}

/// Reads [start, end] into `sink` with `--end`: from spawn to exit, every record acknowledged.
async fn throughput(
    db: &TestDatabase,
    (sink, ordering): (&mut Sink<'_>, &str),
    (start, end): (Timestamp, Timestamp),
    expected: usize,
) -> anyhow::Result<Throughput> {
    let began = Instant::now();
    let mut child = screamer(
        db,
        sink,
        ordering,
        &["--start", &start.to_string(), "--end", &end.to_string()],
    )?;
    let (pid, mut peak) = (child.id(), 0);
    let status = loop {
        peak = peak.max(peak_rss_kb(pid));
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let seconds = began.elapsed().as_secs_f64();
    anyhow::ensure!(status.success(), "screamer into {} failed", sink.name());
    let mut got = Vec::new();
    while got.len() < expected {
        let more = sink.drain(Duration::from_secs(10)).await?;
        anyhow::ensure!(
            !more.is_empty(),
            "{}: {} of {expected} rows",
            sink.name(),
            got.len()
        );
        got.extend(more);
    }
    Ok(Throughput {
        seconds,
        peak_rss_kb: peak,
    })
}

/// Follows the stream into `sink` while 500 rows are committed at 50 per second; the
/// milliseconds from each commit's return to the bench's consumer seeing the row.
async fn latency(
    db: &Arc<TestDatabase>,
    (sink, ordering): (&mut Sink<'_>, &str),
    first: i64,
) -> anyhow::Result<Vec<f64>> {
    let start = Timestamp::now().to_string();
    let mut child = screamer(db, sink, ordering, &["--start", &start])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ids = first..first + 500;
    let writer = {
        let (db, ids) = (db.clone(), ids.clone());
        tokio::spawn(async move { steady_writer(&db, ids, Duration::from_millis(20)).await })
    };
    let mut seen: HashMap<i64, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ids.clone().all(|id| seen.contains_key(&id)) && Instant::now() < deadline {
        let arrived = sink.drain(Duration::from_millis(100)).await?;
        let now = Instant::now();
        for id in arrived {
            seen.entry(id).or_insert(now);
        }
    }
    let committed = writer.await??;
    stop(&mut child)?;
    Ok(latencies(&committed, &seen))
}

/// Screamer's peak RSS while following a steady writer into `sink`: before, during and
/// after a 30 s stall of the broker (SIGSTOP).
async fn stall(
    db: &Arc<TestDatabase>,
    (sink, ordering): (&mut Sink<'_>, &str),
    first: i64,
) -> anyhow::Result<[u64; 3]> {
    let start = Timestamp::now().to_string();
    let mut child = screamer(db, sink, ordering, &["--start", &start])?;
    let pid = child.id();
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            steady_writer(&db, first..first + 4500, Duration::from_millis(10)).await
        })
    };
    let sample = |secs: u64| async move {
        let until = Instant::now() + Duration::from_secs(secs);
        let mut peak = 0;
        while Instant::now() < until {
            peak = peak.max(current_rss_kb(pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak
    };
    let before = sample(10).await;
    sink.signal(screamer_tests::libc::SIGSTOP)?;
    let during = sample(30).await;
    sink.signal(screamer_tests::libc::SIGCONT)?;
    let after = sample(10).await;
    writer.abort();
    stop(&mut child)?;
    Ok([before, during, after])
}

/// Resident set (VmRSS) of `pid` now, in KiB.
fn current_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

fn stop(child: &mut Child) -> anyhow::Result<()> {
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { screamer_tests::libc::kill(child.id() as i32, screamer_tests::libc::SIGINT) };
    child.wait()?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorOptions::default()).await?;
    let db = Arc::new(emulator.database(Dialect::GoogleSql, &BENCH_SCHEMA).await?);
    let servers = Servers::start().await?;
    println!("# screamer destination benchmark (release build, emulators on this machine)\n");

    let start = Timestamp::now();
    let mut end = start;
    for id in 0..COMMITS {
        end = db.apply(vec![row(id)]).await?;
    }
    if wanted("BENCH_PHASES", "throughput") {
        throughput_table(&db, &servers, (start, end)).await?;
    }
    if wanted("BENCH_PHASES", "latency") {
        drop(db);
        drop(emulator);
        latency_table(&servers).await?;
    }
    if wanted("BENCH_PHASES", "stall") {
        stall_table(&servers).await?;
    }
    Ok(())
}

async fn throughput_table(
    db: &TestDatabase,
    servers: &Servers,
    (start, end): (Timestamp, Timestamp),
) -> anyhow::Result<()> {
    println!(
        "## Throughput: {COMMITS} single-row commits (1.7 KB rows), read with --end, median of {ROUNDS}\n"
    );
    println!(
        "| destination | ordering | seconds | records/s | vs file | vs key | fixed cost s | records/s without it | vs file | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    // The fixed cost of a run into each destination (process, connections, topic checks,
    // the partition lifecycle): an empty range, best of three. Then one untimed run of the
    // range each (the Pub/Sub emulator is a JVM: a cold one is several times slower than a
    // long-running service), and ROUNDS timed rounds through all destinations and
    // orderings in turn, so that the machine's drift hits them alike; the median of each.
    // Just after the last commit: the emulator's commit timestamps run ahead of the local
    // clock, so "now" could still catch the range's last commits (and a replica with
    // `--ordering transactions` would then rightly skip the older ones of the next run).
    let empty_at = end.saturating_add(Duration::from_millis(1));
    let empty = (empty_at, empty_at.saturating_add(Duration::from_millis(1)));
    let orderings = orderings();
    let phases: Vec<String> = (0..=ROUNDS).map(throughput_phase).collect();
    let names: Vec<String> = orderings
        .iter()
        .map(|o| in_ordering(&phases[0], o))
        .collect();
    let mut warm: Vec<Vec<Sink<'_>>> = names
        .iter()
        .map(|n| servers.sinks(n))
        .collect::<anyhow::Result<_>>()?;
    let kinds = warm[0].len();
    // runs[sink][ordering]; fixed[sink][ordering]
    let mut fixed = vec![vec![f64::INFINITY; orderings.len()]; kinds];
    for (o, sinks) in warm.iter_mut().enumerate() {
        for (k, sink) in sinks.iter_mut().enumerate() {
            for _ in 0..3 {
                let t = throughput(db, (sink, orderings[o]), empty, 0).await?;
                fixed[k][o] = fixed[k][o].min(t.seconds);
            }
            throughput(db, (sink, orderings[o]), (start, end), COMMITS as usize).await?;
        }
    }
    let mut runs: Vec<Vec<Vec<Throughput>>> = (0..kinds)
        .map(|_| orderings.iter().map(|_| Vec::new()).collect())
        .collect();
    for phase in &phases[1..] {
        for (o, ordering) in orderings.iter().enumerate() {
            let name = in_ordering(phase, ordering);
            for (k, sink) in servers.sinks(&name)?.iter_mut().enumerate() {
                let t = throughput(db, (sink, ordering), (start, end), COMMITS as usize).await?;
                runs[k][o].push(t);
            }
        }
    }
    let mut file_rates = None;
    let copy_seconds = copy_floor(&servers.client).await?;
    for (k, sink) in warm[0].iter().enumerate() {
        let mut key_rate = None;
        for (o, ordering) in orderings.iter().enumerate() {
            let runs = &mut runs[k][o];
            runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
            let seconds = runs[runs.len() / 2].seconds;
            let peak_rss_kb = runs.iter().map(|r| r.peak_rss_kb).max().unwrap_or(0);
            let rate = COMMITS as f64 / seconds;
            let steady = COMMITS as f64 / (seconds - fixed[k][o]).max(1e-3);
            let (base, steady_base) = *file_rates.get_or_insert((rate, steady));
            let vs_key = rate / *key_rate.get_or_insert(rate);
            println!(
                "| {} | {ordering} | {seconds:.2} | {rate:.0} | {:.2} | {vs_key:.2} | {:.2} | {steady:.0} | {:.2} | {} MB |",
                sink.name(),
                rate / base,
                fixed[k][o],
                steady / steady_base,
                peak_rss_kb / 1024
            );
        }
    }
    let rate = COMMITS as f64 / copy_seconds;
    println!(
        "| `COPY` into PostgreSQL (the replica's floor: the same rows, no stream) | | {copy_seconds:.2} | {rate:.0} | {:.2} | | | | | |",
        rate / file_rates.map_or(rate, |(base, _)| base)
    );
    Ok(())
}

/// Seconds a `COPY` of the range's rows into a table of the replica's shape takes (best of
/// three, each into an empty table).
async fn copy_floor(client: &tokio_postgres::Client) -> anyhow::Result<f64> {
    use futures_util::SinkExt;
    let mut text = String::new();
    for id in 0..COMMITS {
        text.push_str(&id.to_string());
        for c in 1..10 {
            text.push_str(&format!("\t{c}:{id}:{}", "x".repeat(180)));
        }
        text.push('\n');
    }
    let text = bytes::Bytes::from(text);
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        client
            .batch_execute(
                r#"DROP SCHEMA IF EXISTS floor CASCADE; CREATE SCHEMA floor;
                   CREATE TABLE floor."Bench" ("Id" bigint PRIMARY KEY, "C1" text, "C2" text,
                   "C3" text, "C4" text, "C5" text, "C6" text, "C7" text, "C8" text, "C9" text)"#,
            )
            .await?;
        let began = Instant::now();
        let sink = client.copy_in(r#"COPY floor."Bench" FROM STDIN"#).await?;
        futures_util::pin_mut!(sink);
        sink.send(text.clone()).await?;
        sink.as_mut().finish().await?;
        best = best.min(began.elapsed().as_secs_f64());
    }
    Ok(best)
}

async fn latency_table(servers: &Servers) -> anyhow::Result<()> {
    println!("\n## Latency: 500 commits at 50/s, commit return to the bench's consumer\n");
    println!("| destination | ordering | p50 ms | p99 ms | rows seen |");
    println!("|---|---|---|---|---|");
    // A fresh Spanner emulator per run: one that has served earlier runs polls its change
    // streams more and more slowly (measured: p50 from 0.2 s to 5 s over five runs).
    for ordering in orderings() {
        for mut sink in servers.sinks(&in_ordering("latency", ordering))? {
            let emulator = Emulator::start(EmulatorOptions::default()).await?;
            let db = Arc::new(emulator.database(Dialect::GoogleSql, &BENCH_SCHEMA).await?);
            let l = latency(&db, (&mut sink, ordering), 0).await?;
            println!(
                "| {} | {ordering} | {:.0} | {:.0} | {} |",
                sink.name(),
                percentile(&l, 0.5),
                percentile(&l, 0.99),
                l.len()
            );
        }
    }

    Ok(())
}

async fn stall_table(servers: &Servers) -> anyhow::Result<()> {
    println!("\n## Memory under a 30 s stall: 100 commits/s, the broker SIGSTOPped\n");
    println!("| destination | ordering | RSS before | RSS during the stall (peak) | RSS after |");
    println!("|---|---|---|---|---|");
    for ordering in orderings() {
        for mut sink in servers.sinks(&in_ordering("stall", ordering))? {
            if matches!(sink, Sink::File { .. } | Sink::Http { .. }) {
                continue;
            }
            let emulator = Emulator::start(EmulatorOptions::default()).await?;
            let db = Arc::new(emulator.database(Dialect::GoogleSql, &BENCH_SCHEMA).await?);
            let [before, during, after] = stall(&db, (&mut sink, ordering), 0).await?;
            println!(
                "| {} | {ordering} | {} MB | {} MB | {} MB |",
                sink.name(),
                before / 1024,
                during / 1024,
                after / 1024
            );
        }
    }
    Ok(())
}
