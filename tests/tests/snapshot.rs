//! `--snapshot` against the real emulator: the rows that exist, then every change, in one
//! run. Existing rows arrive once each as snapshot records with their values at the
//! snapshot's timestamp, through a graceful restart and while a writer changes them; every
//! change after that timestamp arrives once, in order per key, and none before it; an export
//! (`only`) survives `kill -9` and is shared by two runners; a stream on some columns and a
//! `FOR ALL` stream read what they watch, in both dialects, with the values and column types
//! the stream itself gives.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use gcloud_spanner::mutation::insert_or_update;
use gcloud_spanner::statement::Statement;
use screamer::{Dialect, Timestamp};
use screamer_tests::libc::{SIGCONT, SIGKILL, SIGSTOP, SIGTERM};
use screamer_tests::{
    Emulator, EmulatorOptions, Screamer, TestDatabase, eventually, items, run_args,
};
use serde_json::{Value, json};

fn parse(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("an output line is JSON"))
        .collect()
}

fn is_snapshot(record: &Value) -> bool {
    record["snapshot"] == json!(true)
}

/// (Id, Seq) of an Items record's one mod.
fn item(record: &Value) -> (i64, i64) {
    let m = &record["mods"][0];
    let id = m["keys"]["Id"].as_str().expect("Id").parse().expect("Id");
    let seq = m["new_values"]["Seq"]
        .as_str()
        .expect("Seq")
        .parse()
        .expect("Seq");
    (id, seq)
}

fn commit(record: &Value) -> Timestamp {
    record["commit_timestamp"]
        .as_str()
        .expect("commit_timestamp")
        .parse()
        .expect("a timestamp")
}

/// Waits for `screamer` to print at least `n` lines.
async fn lines_at_least(screamer: &Screamer, n: usize, timeout: Duration) -> anyhow::Result<()> {
    eventually(timeout, &format!("{n} output lines"), async || {
        (screamer.line_count() >= n).then_some(())
    })
    .await
}

/// The rows that exist before the graceful-restart scenario: enough that the snapshot is
/// still under way however long the stop takes to land on a loaded machine.
const ROWS: i64 = 12_000;

/// A commit of the writer: when, and the (Id, Seq) it wrote.
type Write = (Timestamp, i64, i64);

#[tokio::test(flavor = "multi_thread")]
async fn existing_rows_then_every_change_once_through_a_graceful_restart_while_a_writer_runs() {
    screamer_tests::init_tracing();
    let emulator = Emulator::start(EmulatorOptions::default()).await.unwrap();
    let db = std::sync::Arc::new(emulator.items_database().await.unwrap());
    items::existing(&db, ROWS, |_| 0).await.unwrap();
    let writer = tokio::spawn(update_rows(std::sync::Arc::clone(&db)));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let args = run_args(
        &db,
        &[
            "--metadata-table",
            "Meta",
            "--snapshot",
            "initial",
            "--snapshot-chunk-rows",
            "400",
        ],
    );
    let mut lines = stop_midway(&db, &args).await;
    let writes = writer.await.unwrap();
    let at = commit(
        parse(&lines)
            .iter()
            .find(|r| is_snapshot(r))
            .expect("a snapshot record"),
    );
    let after: Vec<Write> = writes.iter().filter(|(t, ..)| *t > at).copied().collect();
    let want = ROWS as usize + after.len() - lines.len();
    lines.extend(restart_until(&db, &args, want).await);
    let records = parse(&lines);

    assert_every_row_once_as_of(&records, at, &writes);
    assert_every_later_change_once_in_order(&records, &after);
}

/// 300 single-row updates over every key, 10 ms apart; returns each with its commit.
async fn update_rows(db: std::sync::Arc<TestDatabase>) -> Vec<Write> {
    let mut writes = Vec::new();
    for i in 1..=300i64 {
        let (id, seq) = ((i * 7) % ROWS, i);
        let mutation = insert_or_update("Items", &["Id", "Seq"], &[&id, &seq]);
        let at = db.apply(vec![mutation]).await.expect("write");
        writes.push((at, id, seq));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    writes
}

/// Runs screamer with `args` until 1,000 lines are out, then stops it with SIGTERM (which
/// must succeed) before the snapshot is done. Returns its lines.
async fn stop_midway(db: &TestDatabase, args: &[String]) -> Vec<String> {
    let mut first = Screamer::spawn(db.host(), args).unwrap();
    lines_at_least(&first, 1_000, Duration::from_secs(60))
        .await
        .unwrap();
    // Paused while it is told to stop, so that the stop lands at once however loaded the
    // machine: the drain then finishes only the chunks it holds (at most 4 of 400 rows).
    first.signal(SIGSTOP).unwrap();
    first.signal(SIGTERM).unwrap();
    first.signal(SIGCONT).unwrap();
    let status = first.wait(Duration::from_secs(30)).await.unwrap();
    assert!(
        status.success(),
        "graceful stop: {status:?}\n{}",
        first.stderr()
    );
    let lines = first.lines();
    let snapshot_before = parse(&lines).iter().filter(|r| is_snapshot(r)).count();
    assert!(
        snapshot_before < ROWS as usize,
        "the restart came midway: {snapshot_before}"
    );
    lines
}

/// Runs screamer with `args` again until `want` lines are out, and a few seconds more for
/// anything extra to show; stops it with SIGTERM. Returns its lines.
async fn restart_until(db: &TestDatabase, args: &[String], want: usize) -> Vec<String> {
    let mut second = Screamer::spawn(db.host(), args).unwrap();
    lines_at_least(&second, want, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", second.line_count(), second.stderr()));
    // Anything more would come within a heartbeat or two.
    tokio::time::sleep(Duration::from_secs(3)).await;
    second.signal(SIGTERM).unwrap();
    second.wait(Duration::from_secs(30)).await.unwrap();
    second.lines()
}

/// Every one of the [`ROWS`] existing rows once as a snapshot record at `at`, with its value
/// as of `at` (0, or the last of `writes` at or before it).
fn assert_every_row_once_as_of(records: &[Value], at: Timestamp, writes: &[Write]) {
    let mut at_snapshot: HashMap<i64, i64> = (0..ROWS).map(|id| (id, 0)).collect();
    for (t, id, seq) in writes {
        if *t <= at {
            at_snapshot.insert(*id, *seq);
        }
    }
    let snapshot: Vec<&Value> = records.iter().filter(|r| is_snapshot(r)).collect();
    assert!(
        snapshot.iter().all(|r| commit(r) == at),
        "one snapshot timestamp"
    );
    let mut seen: BTreeMap<i64, i64> = BTreeMap::new();
    for r in &snapshot {
        let (id, seq) = item(r);
        assert_eq!(r["mod_type"], "INSERT");
        assert!(
            seen.insert(id, seq).is_none(),
            "row {id} twice in the snapshot"
        );
    }
    assert_eq!(seen.len(), ROWS as usize, "every existing row");
    for (id, seq) in &seen {
        assert_eq!(at_snapshot[id], *seq, "row {id}'s value at the snapshot");
    }
}

/// The changes are exactly `after` (each once, none before the snapshot), all after the
/// last snapshot record, in order per key.
fn assert_every_later_change_once_in_order(records: &[Value], after: &[Write]) {
    let changes: Vec<Write> = records
        .iter()
        .filter(|r| !is_snapshot(r))
        .map(|r| {
            let (id, seq) = item(r);
            (commit(r), id, seq)
        })
        .collect();
    let mut sorted = changes.clone();
    sorted.sort();
    assert_eq!(sorted, after, "every change after the snapshot, once");
    let first_change = records.iter().position(|r| !is_snapshot(r));
    let last_snapshot = records.iter().rposition(is_snapshot);
    assert!(
        first_change.is_none_or(|c| last_snapshot.is_some_and(|s| s < c)),
        "the snapshot comes before the stream"
    );
    let mut last_seq: HashMap<i64, i64> = HashMap::new();
    for (_, id, seq) in &changes {
        let before = last_seq.insert(*id, *seq).unwrap_or(0);
        assert!(*seq > before, "key {id}: {seq} after {before}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_survives_kill_9_and_two_runners_share_one() {
    screamer_tests::init_tracing();
    let emulator = Emulator::start(EmulatorOptions::default()).await.unwrap();
    let db = emulator.items_database().await.unwrap();
    items::existing(&db, 20_000, |_| 0).await.unwrap();
    let ids = |lines: &[String]| -> Vec<i64> { parse(lines).iter().map(|r| item(r).0).collect() };

    // kill -9 midway, then a restart: every row at least once, exit 0.
    let args = |table: &str, extra: &[&str]| {
        let mut a = vec!["--metadata-table", table, "--snapshot", "only"];
        a.extend(extra);
        run_args(&db, &a)
    };
    let killed_args = args("Killed", &["--snapshot-chunk-rows", "1000"]);
    let mut killed = Screamer::spawn(db.host(), &killed_args).unwrap();
    lines_at_least(&killed, 3_000, Duration::from_secs(60))
        .await
        .unwrap();
    killed.signal(SIGKILL).unwrap();
    let _ = killed.wait(Duration::from_secs(10)).await;
    let mut all = ids(&killed.lines());
    let mut restarted = Screamer::spawn(db.host(), &killed_args).unwrap();
    let status = restarted.wait(Duration::from_secs(120)).await.unwrap();
    assert!(
        status.success(),
        "the export ends with 0: {status:?}\n{}",
        restarted.stderr()
    );
    all.extend(ids(&restarted.lines()));
    let distinct: std::collections::BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), 20_000, "every row at least once");
    assert!(distinct.iter().all(|id| (0..20_000).contains(id)));

    // Two runners on one export: every row exactly once between them, both read some. A
    // runner claims four chunks at a time; the first is paused (well within its lease)
    // after its first rows, so the second surely finds chunks left, however fast the first.
    let shared = args(
        "Shared",
        &["--snapshot-chunk-rows", "1000", "--lease-duration", "60s"],
    );
    let mut a = Screamer::spawn(db.host(), &shared).unwrap();
    lines_at_least(&a, 1, Duration::from_secs(60))
        .await
        .unwrap();
    a.signal(SIGSTOP).unwrap();
    let mut b = Screamer::spawn(db.host(), &shared).unwrap();
    let second_reads = lines_at_least(&b, 1, Duration::from_secs(60)).await;
    a.signal(SIGCONT).unwrap();
    second_reads.unwrap();
    for runner in [&mut a, &mut b] {
        let status = runner.wait(Duration::from_secs(120)).await.unwrap();
        assert!(status.success(), "{status:?}\n{}", runner.stderr());
    }
    let (from_a, from_b) = (ids(&a.lines()), ids(&b.lines()));
    assert_once(from_a.iter().chain(&from_b).copied());
    assert!(
        !from_a.is_empty() && !from_b.is_empty(),
        "both runners read chunks: {} and {}",
        from_a.len(),
        from_b.len()
    );

    // On Data Boost (partitioned reads of each chunk): every row exactly once too.
    let boosted = args(
        "Boosted",
        &["--data-boost", "--snapshot-chunk-rows", "5000"],
    );
    let mut c = Screamer::spawn(db.host(), &boosted).unwrap();
    let status = c.wait(Duration::from_secs(120)).await.unwrap();
    assert!(status.success(), "{status:?}\n{}", c.stderr());
    assert_once(ids(&c.lines()).into_iter());
}

/// Asserts that `ids` are the 20,000 Items, each once.
fn assert_once(ids: impl Iterator<Item = i64>) {
    let mut ids: Vec<i64> = ids.collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..20_000).collect::<Vec<_>>(),
        "every row exactly once"
    );
}

/// The snapshot records of `stream` (`--snapshot only`), and the records the stream gives
/// for the same rows' inserts between `from` and `to`.
async fn snapshot_and_stream(
    db: &TestDatabase,
    stream: &str,
    from: Timestamp,
    to: Timestamp,
) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
    let base = ["--dsn", &db.name.to_string(), "--stream", stream].map(str::to_owned);
    let run = async |extra: &[&str]| -> anyhow::Result<Vec<Value>> {
        let mut args = base.to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut screamer = Screamer::spawn(db.host(), &args)?;
        let status = screamer.wait(Duration::from_secs(60)).await?;
        anyhow::ensure!(status.success(), "{status:?}\n{}", screamer.stderr());
        Ok(parse(&screamer.lines()))
    };
    let snapshot = run(&["--snapshot", "only"]).await?;
    let (from, to) = (from.to_string(), to.to_string());
    let stream = run(&["--start", &from, "--end", &to]).await?;
    Ok((snapshot, stream))
}

/// Every row change of `records` by table and key: its table, column types, keys and values
/// (what a snapshot record and the stream's insert of the same row share; the stream puts
/// a transaction's rows of one table in one record).
fn by_key(records: &[Value]) -> BTreeMap<String, Value> {
    let mut rows = BTreeMap::new();
    for r in records {
        for m in r["mods"].as_array().expect("mods") {
            let keys: BTreeMap<&String, &Value> =
                m["keys"].as_object().expect("keys").iter().collect();
            let view = json!({
                "table_name": r["table_name"],
                "column_types": r["column_types"],
                "keys": m["keys"],
                "new_values": m["new_values"],
            });
            rows.insert(format!("{} {keys:?}", r["table_name"]), view);
        }
    }
    rows
}

/// A column list in GoogleSQL's names or PostgreSQL's (lower case).
fn columns(pg: bool, names: &[&str]) -> String {
    let names: Vec<String> = names
        .iter()
        .map(|n| if pg { n.to_lowercase() } else { n.to_string() })
        .collect();
    names.join(", ")
}

#[tokio::test(flavor = "multi_thread")]
async fn column_lists_and_for_all_streams_read_what_they_watch_in_both_dialects() {
    screamer_tests::init_tracing();
    let emulator = Emulator::start(EmulatorOptions::default()).await.unwrap();
    let google = emulator
        .database(
            Dialect::GoogleSql,
            &[
                "CREATE TABLE Singers (SingerId INT64 NOT NULL, Name STRING(MAX), Score FLOAT64, \
             Tags ARRAY<STRING(MAX)>, Born DATE, Active BOOL) PRIMARY KEY (SingerId)",
                "CREATE TABLE Albums (SingerId INT64 NOT NULL, AlbumId STRING(MAX) NOT NULL, \
             Price NUMERIC, Info JSON) PRIMARY KEY (SingerId, AlbumId)",
                "CREATE CHANGE STREAM SomeColumns FOR Singers(Name, Score)",
                "CREATE CHANGE STREAM Everything FOR ALL OPTIONS (value_capture_type = 'NEW_ROW')",
            ],
        )
        .await
        .unwrap();
    let postgres = emulator.database(Dialect::PostgreSql, &[]).await.unwrap();
    postgres
        .ddl(&[
            "CREATE TABLE singers (singerid bigint NOT NULL, name varchar, score float8, \
             tags varchar[], born date, active boolean, PRIMARY KEY (singerid))",
            "CREATE TABLE albums (singerid bigint NOT NULL, albumid varchar NOT NULL, \
             price numeric, info jsonb, PRIMARY KEY (singerid, albumid))",
            "CREATE CHANGE STREAM somecolumns FOR singers(name, score)",
            "CREATE CHANGE STREAM everything FOR ALL WITH (value_capture_type = 'NEW_ROW')",
        ])
        .await
        .unwrap();
    for (db, [singers, albums, some, everything]) in [
        (&google, ["Singers", "Albums", "SomeColumns", "Everything"]),
        (
            &postgres,
            ["singers", "albums", "somecolumns", "everything"],
        ),
    ] {
        let from = Timestamp::now();
        let pg = db.name == postgres.name;
        let mut statements = Vec::new();
        for i in 1..=3 {
            let (date, price, info) = match pg {
                true => (
                    format!("'2020-01-0{i}'::date"),
                    format!("{i}.25"),
                    format!("'{{\"n\": {i}}}'::jsonb"),
                ),
                false => (
                    format!("DATE '2020-01-0{i}'"),
                    format!("NUMERIC '{i}.25'"),
                    format!("JSON '{{\"n\": {i}}}'"),
                ),
            };
            statements.push(Statement::new(format!(
                "INSERT INTO {singers} ({}) VALUES ({i}, 'singer {i}', {i}.5, ARRAY['a', 'b'], \
                 {date}, {})",
                columns(pg, &["SingerId", "Name", "Score", "Tags", "Born", "Active"]),
                i % 2 == 0
            )));
            statements.push(Statement::new(format!(
                "INSERT INTO {albums} ({}) VALUES ({i}, 'album-{i}', {price}, {info})",
                columns(pg, &["SingerId", "AlbumId", "Price", "Info"]),
            )));
        }
        let to = db.dml(statements).await.unwrap();

        // FOR ALL: both tables, every column, as the stream's own inserts give them.
        let (snapshot, stream) = snapshot_and_stream(db, everything, from, to).await.unwrap();
        assert_eq!(snapshot.len(), 6, "{snapshot:#?}");
        assert!(snapshot.iter().all(is_snapshot));
        assert_eq!(
            by_key(&snapshot),
            by_key(&stream),
            "snapshot vs stream in {}",
            db.name
        );

        // Some columns of one table: the key and those columns only.
        let (snapshot, _) = snapshot_and_stream(db, some, from, to).await.unwrap();
        assert_eq!(snapshot.len(), 3);
        for r in &snapshot {
            assert_eq!(r["table_name"], singers);
            let names: Vec<&str> = r["column_types"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap())
                .collect();
            let (id, name, score) = match pg {
                true => ("singerid", "name", "score"),
                false => ("SingerId", "Name", "Score"),
            };
            assert_eq!(names, [id, name, score]);
            let values = r["mods"][0]["new_values"].as_object().unwrap();
            assert_eq!(values.keys().collect::<Vec<_>>(), [name, score]);
        }
    }
}
