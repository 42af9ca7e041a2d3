//! The PostgreSQL replica against a real PostgreSQL server and the Spanner emulator: the
//! replica equals the Spanner table after a graceful restart, a `kill -9` while PostgreSQL is
//! frozen and a restart; replays of older changes leave it as it is (the stale-write guard);
//! every type with its extremes arrives as documented; a column added in Spanner appears; a
//! row PostgreSQL refuses is a dead letter with its message while the rest is applied; bad
//! URIs, credentials, databases and schemas are one line and exit 2.

use std::collections::BTreeMap;
use std::time::Duration;

use gcloud_spanner::key::Key;
use gcloud_spanner::mutation::{delete, insert_or_update};
use gcloud_spanner::statement::Statement;
use screamer::Timestamp;
use screamer_tests::libc::{SIGCONT, SIGINT, SIGKILL, SIGSTOP};
use screamer_tests::postgres::PostgresServer;
use screamer_tests::{Emulator, EmulatorOptions, Screamer, TestDatabase, eventually, run_args};

/// Writes `commits` single-row transactions over `keys` keys: each sets `Seq` of its key to
/// the commit's number, and every seventh deletes its key instead. Returns the last commit
/// timestamp.
async fn churn(
    db: &TestDatabase,
    commits: i64,
    keys: i64,
    pause: Duration,
) -> anyhow::Result<Timestamp> {
    write_items(db, 1..=commits, keys, Some(7), pause).await
}

/// Commits `numbers` in turn, one row each: number `i` sets `Seq` of key `i % keys` to `i`,
/// or deletes that key when `delete_every` divides `i`. Returns the last commit timestamp.
async fn write_items(
    db: &TestDatabase,
    numbers: impl IntoIterator<Item = i64>,
    keys: i64,
    delete_every: Option<i64>,
    pause: Duration,
) -> anyhow::Result<Timestamp> {
    let mut last = Timestamp::now();
    for i in numbers {
        let key = i % keys;
        let mutation = match delete_every {
            Some(n) if i % n == 0 => delete("Items", Key::new(&key)),
            _ => insert_or_update("Items", &["Id", "Seq"], &[&key, &i]),
        };
        last = db.apply(vec![mutation]).await?;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(last)
}

/// `Items` in Spanner, read with Google's client: Id -> Seq.
async fn spanner_items(db: &TestDatabase) -> anyhow::Result<BTreeMap<i64, i64>> {
    let mut tx = db.client.single().await?;
    let mut rows = tx
        .query(Statement::new("SELECT Id, Seq FROM Items"))
        .await?;
    let mut items = BTreeMap::new();
    while let Some(row) = rows.next().await? {
        items.insert(row.column::<i64>(0)?, row.column::<i64>(1)?);
    }
    Ok(items)
}

/// `Items` in the replica: Id -> Seq.
async fn replica_items(client: &tokio_postgres::Client) -> anyhow::Result<BTreeMap<i64, i64>> {
    let rows = client
        .query(r#"SELECT "Id", "Seq" FROM public."Items""#, &[])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Waits until the replica's `Items` equals Spanner's.
async fn replica_equals_spanner(
    db: &TestDatabase,
    client: &tokio_postgres::Client,
    timeout: Duration,
) -> anyhow::Result<()> {
    let want = spanner_items(db).await?;
    let mut last = BTreeMap::new();
    let equal = eventually(timeout, "the replica to equal Spanner", async || {
        last = replica_items(client).await.ok()?;
        (last == want).then_some(())
    })
    .await;
    if equal.is_err() {
        let missing: Vec<_> = want
            .iter()
            .filter(|(k, v)| last.get(k) != Some(v))
            .collect();
        let extra: Vec<_> = last.iter().filter(|(k, _)| !want.contains_key(k)).collect();
        anyhow::bail!("replica differs: wrong or missing {missing:?}, extra {extra:?}");
    }
    Ok(())
}

fn output_args<'a>(db: &TestDatabase, output: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut args = vec!["--output", output];
    args.extend(extra);
    run_args(db, &args)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_churning_stream_replicates_through_a_restart_a_frozen_postgres_and_kill_9() {
    screamer_tests::init_tracing();
    let emulator = Emulator::start(EmulatorOptions {
        partition_alive_seconds: Some(3),
        ..EmulatorOptions::exact()
    })
    .await
    .unwrap();
    let db = std::sync::Arc::new(emulator.items_database().await.unwrap());
    let pg = PostgresServer::start().await.unwrap();
    let client = pg.client("postgres").await.unwrap();
    let output = pg.uri("postgres", "");
    let start = Timestamp::now().to_string();
    let args = output_args(
        &db,
        &output,
        &["--metadata-table", "Partitions", "--start", &start],
    );
    let writing = tokio::spawn({
        let db = db.clone();
        async move { churn(&db, 1500, 23, Duration::from_millis(4)).await }
    });

    // A graceful stop once rows arrive.
    let mut first = Screamer::spawn(db.host(), &args).unwrap();
    eventually(Duration::from_secs(60), "rows in the replica", async || {
        (replica_items(&client).await.ok()?.len() >= 10).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", first.stderr()));
    first.signal(SIGINT).unwrap();
    let status = first.wait(Duration::from_secs(60)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", first.stderr());

    // PostgreSQL freezes under a running screamer, which is killed while it waits.
    let second = Screamer::spawn(db.host(), &args).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    pg.signal(SIGSTOP).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    second.signal(SIGKILL).unwrap();
    drop(second);

    // A new runner while PostgreSQL is still frozen, long enough for its connection attempt
    // to time out (10 s); then it thaws and the run catches up.
    let mut third = Screamer::spawn(db.host(), &args).unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    pg.signal(SIGCONT).unwrap();
    writing.await.unwrap().unwrap();
    replica_equals_spanner(&db, &client, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", third.stderr()));
    third.signal(SIGINT).unwrap();
    let status = third.wait(Duration::from_secs(60)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", third.stderr());
    let stderr = third.stderr();
    assert!(stderr.contains("retrying"), "no outage seen: {stderr}");
    // Every row carries the version of the change that wrote it.
    let versions = client
        .query_one(
            r#"SELECT count(*) FROM public."Items" WHERE _screamer_commit_timestamp > $1::text::timestamptz"#,
            &[&start],
        )
        .await
        .unwrap();
    assert_eq!(
        versions.get::<_, i64>(0),
        spanner_items(&db).await.unwrap().len() as i64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_older_changes_leave_the_replica_as_spanner_has_it() {
    let emulator = Emulator::start(EmulatorOptions::exact()).await.unwrap();
    let db = emulator.items_database().await.unwrap();
    let pg = PostgresServer::start().await.unwrap();
    let client = pg.client("postgres").await.unwrap();
    let output = pg.uri("postgres", "");
    let start = Timestamp::now();
    // Inserts, updates and deletes; then only updates of every key; then keys 0 to 2 are
    // deleted. Replaying the first part must change nothing: older updates and deletes
    // meet newer rows, older updates of the deleted keys meet their tombstones.
    let middle = churn(&db, 200, 11, Duration::ZERO).await.unwrap();
    write_items(&db, 201..=300, 11, None, Duration::ZERO)
        .await
        .unwrap();
    let end = write_items(&db, [308, 309, 310], 11, Some(1), Duration::ZERO)
        .await
        .unwrap();
    let (start, middle, end) = (start.to_string(), middle.to_string(), end.to_string());

    let run = async |until: &str| {
        let args = output_args(&db, &output, &["--start", &start, "--end", until]);
        let mut screamer = Screamer::spawn(db.host(), &args).unwrap();
        let status = screamer.wait(Duration::from_secs(120)).await.unwrap();
        assert_eq!(status.code(), Some(0), "{}", screamer.stderr());
    };
    run(&end).await;
    replica_equals_spanner(&db, &client, Duration::ZERO)
        .await
        .unwrap();
    // The first half again, as a crash or a runner that lost its lease would replay it:
    // without the guard the replica would go back to the state at `middle`, deleted rows
    // included.
    run(&middle).await;
    replica_equals_spanner(&db, &client, Duration::ZERO)
        .await
        .unwrap();
    let tombstones = client
        .query_one(
            "SELECT count(*) FROM public._screamer_tombstones WHERE table_name = 'Items'",
            &[],
        )
        .await
        .unwrap();
    assert!(tombstones.get::<_, i64>(0) > 0, "deletes leave tombstones");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_postgresql_refuses_is_a_dead_letter_and_the_rest_is_applied() {
    let emulator = Emulator::start(EmulatorOptions::exact()).await.unwrap();
    let db = emulator.items_database().await.unwrap();
    let pg = PostgresServer::start().await.unwrap();
    let client = pg.client("postgres").await.unwrap();
    client
        .batch_execute(
            r#"CREATE TABLE public."Items" ("Id" bigint PRIMARY KEY, "Seq" bigint CHECK ("Seq" < 1000),
               _screamer_commit_timestamp timestamptz NOT NULL, _screamer_record_sequence bigint NOT NULL)"#,
        )
        .await
        .unwrap();
    let start = Timestamp::now().to_string();
    for (id, seq) in [(1, 5), (2, 5000), (3, 7)] {
        db.apply(vec![insert_or_update(
            "Items",
            &["Id", "Seq"],
            &[&id, &seq],
        )])
        .await
        .unwrap();
    }
    let end = Timestamp::now()
        .saturating_add(Duration::from_millis(100))
        .to_string();
    let dir = screamer_tests::plugins::scratch_dir("pg-dead");
    let dead = dir.join("dead.ndjson");
    let output = pg.uri("postgres", "");
    let dead_uri = dead.display().to_string();
    let args = output_args(
        &db,
        &output,
        &["--start", &start, "--end", &end, "--dead-letter", &dead_uri],
    );
    let mut screamer = Screamer::spawn(db.host(), &args).unwrap();
    let status = screamer.wait(Duration::from_secs(120)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", screamer.stderr());
    assert_eq!(
        replica_items(&client).await.unwrap(),
        BTreeMap::from([(1, 5), (3, 7)])
    );
    let lines = std::fs::read_to_string(&dead).unwrap();
    let letters: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "{lines}");
    assert_eq!(
        letters[0]["destination"],
        format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port())
    );
    let error = letters[0]["error"].as_str().unwrap();
    assert!(error.contains("violates check constraint"), "{error}");
    assert_eq!(letters[0]["record"]["mods"][0]["keys"]["Id"], "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_uris_credentials_databases_and_schemas_are_one_line_and_exit_2() {
    let emulator = Emulator::start(EmulatorOptions::exact()).await.unwrap();
    let db = emulator.items_database().await.unwrap();
    let pg = PostgresServer::start().await.unwrap();
    let client = pg.client("postgres").await.unwrap();
    client
        .batch_execute("CREATE ROLE reader LOGIN; REVOKE CREATE ON DATABASE postgres FROM PUBLIC")
        .await
        .unwrap();
    let port = pg.port();
    let cases = [
        (
            "postgres://127.0.0.1/db".to_owned(),
            "expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=S&...]".to_owned(),
        ),
        (
            format!("postgres://nobody@127.0.0.1:{port}/postgres"),
            "role \"nobody\" does not exist".to_owned(),
        ),
        (
            format!("postgres://postgres@127.0.0.1:{port}/missing"),
            "database \"missing\" does not exist".to_owned(),
        ),
        (
            format!("postgres://reader@127.0.0.1:{port}/postgres?schema=mirror"),
            "schema \"mirror\": permission denied for database postgres".to_owned(),
        ),
    ];
    for (uri, message) in cases {
        let args = output_args(&db, &uri, &[]);
        let mut screamer = Screamer::spawn(db.host(), &args).unwrap();
        let status = screamer.wait(Duration::from_secs(60)).await.unwrap();
        let stderr = screamer.stderr();
        assert_eq!(status.code(), Some(2), "{uri}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{uri}: {stderr}");
        assert!(errors[0].contains(&message), "{uri}: {}", errors[0]);
        assert!(errors[0].starts_with("error: --output"), "{}", errors[0]);
    }
}
