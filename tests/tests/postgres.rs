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

/// Every GoogleSQL type, each at its extremes where it has them, NULLs and NULL elements
/// (in ARRAY<INT64> and ARRAY<DATE>: the emulator crashes on NULL elements of the others).
/// The emulator sends no fraction of a second and no non-finite float (both arrive in
/// `records_spanner_sends_arrive_as_documented`).
const TYPES_SCHEMA: [&str; 2] = [
    "CREATE TABLE Types (Id INT64 NOT NULL, B BOOL, I INT64, F32 FLOAT32, F64 FLOAT64, \
     N NUMERIC, S STRING(MAX), Y BYTES(MAX), D DATE, T TIMESTAMP, J JSON, AI ARRAY<INT64>, \
     AD ARRAY<DATE>, ASTR ARRAY<STRING(MAX)>, AJ ARRAY<JSON>, AF ARRAY<FLOAT64>, \
     AY ARRAY<BYTES(MAX)>, AN ARRAY<NUMERIC>, AB ARRAY<BOOL>, ATS ARRAY<TIMESTAMP>) \
     PRIMARY KEY (Id)",
    "CREATE CHANGE STREAM Changes FOR Types",
];

const TYPES_COLUMNS: [&str; 19] = [
    "B", "I", "F32", "F64", "N", "S", "Y", "D", "T", "J", "AI", "AD", "ASTR", "AJ", "AF", "AY",
    "AN", "AB", "ATS",
];

const TYPES_WRITES: [&str; 7] = [
    r#"INSERT INTO Types (Id, B, I, F32, F64, N, S, Y, D, T, J, AI, AD, ASTR, AJ, AF, AY, AN, AB, ATS) VALUES
       (1, TRUE, 9223372036854775807, CAST(3.4028234e38 AS FLOAT32), 1.7976931348623157e308,
        NUMERIC '99999999999999999999999999999.999999999', 'ü 日本 "double" \'single\' \\ back',
        b'\x00\xff\x01', DATE '9999-12-31', TIMESTAMP '9999-12-31T23:59:59Z',
        JSON '{"a":[1,{"b":null}],"c":"d"}', [1, NULL, -9223372036854775808],
        [DATE '2020-01-01', NULL], ['a', 'b,c', '{q}'], [JSON '{"x":1}', JSON '[]'],
        [1.5, -2.25e-300], [b'\x00', b'\xff'], [NUMERIC '1.5', NUMERIC '-0.001'], [TRUE, FALSE],
        [TIMESTAMP '2020-01-01T00:00:00Z'])"#,
    // The emulator prints year 1 of a TIMESTAMP as "1-01-01": year 1000 instead.
    r#"INSERT INTO Types (Id, B, I, F32, F64, N, S, Y, D, T, J) VALUES
       (2, FALSE, -9223372036854775808, CAST(-3.4028234e38 AS FLOAT32), -1.7976931348623157e308,
        NUMERIC '-99999999999999999999999999999.999999999', '', b'', DATE '0001-01-01',
        TIMESTAMP '1000-01-01T00:00:00Z', JSON '"just a string"')"#,
    "INSERT INTO Types (Id) VALUES (3)",
    "INSERT INTO Types (Id, S) VALUES (4, 'gone')",
    "UPDATE Types SET S = 'changed', F64 = -0.5, AI = [] WHERE Id = 1",
    "UPDATE Types SET I = 5 WHERE Id = 3",
    "DELETE FROM Types WHERE Id = 4",
];

/// Each replica column of `Types` as PostgreSQL prints it (in UTC), by `Id`.
async fn replica_types(client: &tokio_postgres::Client) -> BTreeMap<i64, Vec<Option<String>>> {
    let select: Vec<String> = TYPES_COLUMNS
        .iter()
        .map(|c| format!("\"{c}\"::text"))
        .collect();
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let sql = format!("SELECT \"Id\", {} FROM public.\"Types\"", select.join(", "));
    let rows = client.query(&sql, &[]).await.unwrap();
    rows.iter()
        .map(|r| {
            let values = (1..=TYPES_COLUMNS.len()).map(|i| r.get(i)).collect();
            (r.get(0), values)
        })
        .collect()
}

/// The rows `sql` selects (every column as text), as PostgreSQL prints them in UTC.
async fn rows_as_text(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let rows = client.query(sql, &[]).await.unwrap();
    rows.iter()
        .map(|r| (0..r.len()).map(|i| r.get(i)).collect())
        .collect()
}

/// `Some` of each text, `None` for `"NULL"`.
fn texts(values: &[&str]) -> Vec<Option<String>> {
    values
        .iter()
        .map(|v| (*v != "NULL").then(|| v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_arrives_as_documented_through_inserts_updates_and_deletes() {
    let emulator = Emulator::start(EmulatorOptions::exact()).await.unwrap();
    let db = emulator
        .database(screamer::Dialect::GoogleSql, &TYPES_SCHEMA)
        .await
        .unwrap();
    let pg = PostgresServer::start().await.unwrap();
    let client = pg.client("postgres").await.unwrap();
    let start = Timestamp::now().to_string();
    let mut end = String::new();
    for write in TYPES_WRITES {
        end = db
            .dml(vec![Statement::new(write)])
            .await
            .unwrap()
            .to_string();
    }
    let output = pg.uri("postgres", "");
    let args = output_args(&db, &output, &["--start", &start, "--end", &end]);
    let mut screamer = Screamer::spawn(db.host(), &args).unwrap();
    let status = screamer.wait(Duration::from_secs(120)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", screamer.stderr());
    assert_eq!(replica_types(&client).await, types_rows());
    let types: Vec<(String, String)> = replica_column_types(&client, "Types").await;
    let want: Vec<(String, String)> = TYPES_REPLICA_COLUMNS
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(types, want);
}

/// The replica's rows of `Types` after [`TYPES_WRITES`], by Id, as PostgreSQL's text.
fn types_rows() -> BTreeMap<i64, Vec<Option<String>>> {
    BTreeMap::from([
        (
            1,
            texts(&[
                "true",
                "9223372036854775807",
                "3.4028235e+38",
                "-0.5",
                "99999999999999999999999999999.999999999",
                "changed",
                "\\x00ff01",
                "9999-12-31",
                "9999-12-31 23:59:59+00",
                r#"{"a": [1, {"b": null}], "c": "d"}"#,
                "{}",
                "{2020-01-01,NULL}",
                r#"{a,"b,c","{q}"}"#,
                r#"{"{\"x\": 1}",[]}"#,
                "{1.5,-2.25e-300}",
                r#"{"\\x00","\\xff"}"#,
                "{1.5,-0.001}",
                "{t,f}",
                r#"{"2020-01-01 00:00:00+00"}"#,
            ]),
        ),
        (
            2,
            texts(&[
                "false",
                "-9223372036854775808",
                "-3.4028235e+38",
                "-1.7976931348623157e+308",
                "-99999999999999999999999999999.999999999",
                "",
                "\\x",
                "0001-01-01",
                "1000-01-01 00:00:00+00",
                r#""just a string""#,
                "NULL",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
            ]),
        ),
        (3, {
            let mut row = vec![None; TYPES_COLUMNS.len()];
            row[1] = Some("5".to_owned());
            row
        }),
    ])
}

/// The replica's columns of `Types` and their PostgreSQL types, in order.
const TYPES_REPLICA_COLUMNS: [(&str, &str); 22] = [
    ("Id", "bigint"),
    ("B", "boolean"),
    ("I", "bigint"),
    ("F32", "real"),
    ("F64", "double precision"),
    ("N", "numeric"),
    ("S", "text"),
    ("Y", "bytea"),
    ("D", "date"),
    ("T", "timestamp with time zone"),
    ("J", "jsonb"),
    ("AI", "bigint[]"),
    ("AD", "date[]"),
    ("ASTR", "text[]"),
    ("AJ", "jsonb[]"),
    ("AF", "double precision[]"),
    ("AY", "bytea[]"),
    ("AN", "numeric[]"),
    ("AB", "boolean[]"),
    ("ATS", "timestamp with time zone[]"),
    ("_screamer_commit_timestamp", "timestamp with time zone"),
    ("_screamer_record_sequence", "bigint"),
];

/// `table`'s columns in the replica and their types (`format_type`), in order.
async fn replica_column_types(
    client: &tokio_postgres::Client,
    table: &str,
) -> Vec<(String, String)> {
    let sql = format!(
        "SELECT column_name::text, format_type(atttypid, atttypmod) FROM information_schema.columns c \
         JOIN pg_attribute a ON a.attrelid = 'public.\"{table}\"'::regclass AND a.attname = c.column_name \
         WHERE c.table_name = '{table}' ORDER BY c.ordinal_position"
    );
    let rows = client.query(&sql, &[]).await.unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgresql_dialect_database_replicates_with_its_own_types() {
    let emulator = Emulator::start(EmulatorOptions::exact()).await.unwrap();
    let db = emulator
        .database(screamer::Dialect::PostgreSql, &[])
        .await
        .unwrap();
    // The emulator takes PostgreSQL DDL only after the database exists.
    db.ddl(&[
        "CREATE TABLE items (id bigint NOT NULL, f float8, r float4, n numeric, s varchar, \
         b bytea, d date, t timestamptz, j jsonb, ai bigint[], ok bool, PRIMARY KEY (id))",
        "CREATE CHANGE STREAM s0 FOR items",
    ])
    .await
    .unwrap();
    let pg = PostgresServer::start().await.unwrap();
    let client = pg.client("postgres").await.unwrap();
    let start = Timestamp::now().to_string();
    let mut end = String::new();
    for write in [
        "INSERT INTO items VALUES (1, 1.25, 2.5, 12345678901234567890.123456789, 'x''y', \
         '\\x00ff'::bytea, '2024-02-29', '2024-02-29T12:00:00Z', '{\"k\": [1, 2]}', \
         ARRAY[1, NULL, 3], true)",
        "INSERT INTO items (id, s) VALUES (2, 'two')",
        "INSERT INTO items (id) VALUES (3)",
        "UPDATE items SET s = 'changed', ai = ARRAY[]::bigint[] WHERE id = 1",
        "DELETE FROM items WHERE id = 2",
    ] {
        end = db
            .dml(vec![Statement::new(write)])
            .await
            .unwrap()
            .to_string();
    }
    let output = pg.uri("postgres", "?schema=mirror");
    let args: Vec<String> = [
        "--dsn",
        &db.name.to_string(),
        "--stream",
        "s0",
        "--heartbeat-interval",
        "1s",
        "--output",
        &output,
        "--start",
        &start,
        "--end",
        &end,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut screamer = Screamer::spawn(db.host(), &args).unwrap();
    let status = screamer.wait(Duration::from_secs(120)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", screamer.stderr());
    let select = |schema: &str| {
        format!(
            "SELECT id::text, f::text, r::text, n::text, s, b::text, d::text, t::text, \
             j::text, ai::text, ok::text FROM {schema}.items ORDER BY id"
        )
    };
    let got = rows_as_text(&client, &select("mirror")).await;
    // The same rows read as a snapshot (`--snapshot only`) into another schema: equal.
    let snapshot_output = pg.uri("postgres", "?schema=snapshot");
    let mut snapshot_args = args[..8].to_vec();
    snapshot_args[7] = snapshot_output;
    snapshot_args.extend(["--snapshot".to_owned(), "only".to_owned()]);
    let mut snapshot = Screamer::spawn(db.host(), &snapshot_args).unwrap();
    let status = snapshot.wait(Duration::from_secs(120)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", snapshot.stderr());
    assert_eq!(
        rows_as_text(&client, &select("snapshot")).await,
        got,
        "a snapshot of the rows equals their changes applied"
    );
    assert_eq!(
        got,
        [
            texts(&[
                "1",
                "1.25",
                "2.5",
                "12345678901234567890.123456789",
                "changed",
                "\\x00ff",
                "2024-02-29",
                "2024-02-29 12:00:00+00",
                r#"{"k": [1, 2]}"#,
                "{}",
                "true",
            ]),
            texts(&[
                "3", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL"
            ]),
        ]
    );
}

/// Records as Spanner sends them where the emulator does not: non-finite floats as strings,
/// fractions of a second, null elements, an UPDATE of `NEW_VALUES` carrying only what
/// changed; and a record describing no type for a column.
const SPANNER_RECORDS: [&str; 4] = [
    r#"{"commit_timestamp":"2026-12-07T10:00:00.000001Z","record_sequence":"00000000","server_transaction_id":"a","is_last_record_in_transaction_in_partition":true,"table_name":"Floats","column_types":[{"name":"Id","type":{"code":"INT64"},"is_primary_key":true,"ordinal_position":1},{"name":"F","type":{"code":"FLOAT64"},"is_primary_key":false,"ordinal_position":2},{"name":"G","type":{"code":"FLOAT32"},"is_primary_key":false,"ordinal_position":3},{"name":"T","type":{"code":"TIMESTAMP"},"is_primary_key":false,"ordinal_position":4},{"name":"A","type":{"code":"ARRAY","array_element_type":{"code":"FLOAT64"}},"is_primary_key":false,"ordinal_position":5},{"name":"S","type":{"code":"ARRAY","array_element_type":{"code":"STRING"}},"is_primary_key":false,"ordinal_position":6}],"mods":[{"keys":{"Id":"1"},"new_values":{"F":"NaN","G":"-Infinity","T":"2026-12-07T10:00:00.123456789Z","A":[1.5,null,"Infinity"],"S":["x",null,"NULL"]},"old_values":{}},{"keys":{"Id":"2"},"new_values":{"F":"Infinity","G":1.5,"T":"2026-12-07T10:00:00.0000005Z","A":null,"S":[]},"old_values":{}}],"mod_type":"INSERT","value_capture_type":"NEW_VALUES","number_of_records_in_transaction":1,"number_of_partitions_in_transaction":1}"#,
    r#"{"commit_timestamp":"2026-12-07T10:00:01Z","record_sequence":"00000000","server_transaction_id":"b","is_last_record_in_transaction_in_partition":true,"table_name":"Floats","column_types":[{"name":"Id","type":{"code":"INT64"},"is_primary_key":true,"ordinal_position":1},{"name":"F","type":{"code":"FLOAT64"},"is_primary_key":false,"ordinal_position":2}],"mods":[{"keys":{"Id":"1"},"new_values":{"F":2.5},"old_values":{}}],"mod_type":"UPDATE","value_capture_type":"NEW_VALUES","number_of_records_in_transaction":1,"number_of_partitions_in_transaction":1}"#,
    r#"{"commit_timestamp":"2026-12-07T10:00:02Z","record_sequence":"00000000","server_transaction_id":"c","is_last_record_in_transaction_in_partition":true,"table_name":"Floats","column_types":[{"name":"Id","type":{"code":"INT64"},"is_primary_key":true,"ordinal_position":1}],"mods":[{"keys":{"Id":"2"},"new_values":{},"old_values":{}}],"mod_type":"DELETE","value_capture_type":"NEW_VALUES","number_of_records_in_transaction":1,"number_of_partitions_in_transaction":1}"#,
    r#"{"commit_timestamp":"2026-12-07T10:00:03Z","record_sequence":"00000000","server_transaction_id":"d","is_last_record_in_transaction_in_partition":true,"table_name":"Floats","column_types":[{"name":"Id","type":{"code":"INT64"},"is_primary_key":true,"ordinal_position":1}],"mods":[{"keys":{"Id":"3"},"new_values":{"Mystery":1},"old_values":{}}],"mod_type":"INSERT","value_capture_type":"NEW_VALUES","number_of_records_in_transaction":1,"number_of_partitions_in_transaction":1}"#,
];

#[tokio::test(flavor = "multi_thread")]
async fn records_spanner_sends_arrive_as_documented() {
    let pg = PostgresServer::start().await.unwrap();
    let client = pg.client("postgres").await.unwrap();
    let dir = screamer_tests::plugins::scratch_dir("pg-records");
    let dead = dir.join("dead.ndjson");
    let input: String = SPANNER_RECORDS.iter().map(|r| format!("{r}\n")).collect();
    let identity = screamer_tests::plugins::plugin("identity")
        .display()
        .to_string();
    let run = screamer_tests::plugins::plugin_run_async(
        vec![
            identity,
            "--output".into(),
            pg.uri("postgres", ""),
            "--dead-letter".into(),
            dead.display().to_string(),
        ],
        input,
        vec![],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let got = rows_as_text(
        &client,
        r#"SELECT "Id"::text, "F"::text, "G"::text, "T"::text, "A"::text, "S"::text FROM "Floats""#,
    )
    .await;
    // PostgreSQL keeps microseconds: .123456789 is rounded, as is .0000005.
    assert_eq!(
        got,
        [texts(&[
            "1",
            "2.5",
            "-Infinity",
            "2026-12-07 10:00:00.123457+00",
            "{1.5,NULL,Infinity}",
            r#"{x,NULL,"NULL"}"#,
        ])]
    );
    let letters = std::fs::read_to_string(&dead).unwrap();
    let letters: Vec<serde_json::Value> = letters
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0]["error"],
        "table \"Floats\": column \"Mystery\" is not in the record's column_types"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_column_added_in_spanner_appears_in_the_replica() {
    let emulator = Emulator::start(EmulatorOptions::exact()).await.unwrap();
    let db = emulator.items_database().await.unwrap();
    let pg = PostgresServer::start().await.unwrap();
    let client = pg.client("postgres").await.unwrap();
    let output = pg.uri("postgres", "");
    let start = Timestamp::now().to_string();
    let args = output_args(&db, &output, &["--start", &start]);
    let mut screamer = Screamer::spawn(db.host(), &args).unwrap();
    write_items(&db, 1..=5, 5, None, Duration::ZERO)
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "the first rows", async || {
        (replica_items(&client).await.ok()?.len() == 5).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", screamer.stderr()));
    db.ddl(&["ALTER TABLE Items ADD COLUMN Note STRING(MAX)"])
        .await
        .unwrap();
    db.dml(vec![Statement::new(
        "UPDATE Items SET Note = 'noted', Seq = 100 WHERE Id = 2",
    )])
    .await
    .unwrap();
    let notes = eventually(
        Duration::from_secs(60),
        "the new column's value",
        async || {
            let rows = client
                .query(
                    r#"SELECT "Id", "Note" FROM public."Items" ORDER BY "Id""#,
                    &[],
                )
                .await
                .ok()?;
            let notes: Vec<(i64, Option<String>)> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            notes.iter().any(|(_, n)| n.is_some()).then_some(notes)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", screamer.stderr()));
    assert_eq!(
        notes,
        [
            (0, None),
            (1, None),
            (2, Some("noted".to_owned())),
            (3, None),
            (4, None)
        ]
    );
    replica_equals_spanner(&db, &client, Duration::from_secs(10))
        .await
        .unwrap();
    screamer.signal(SIGINT).unwrap();
    assert_eq!(
        screamer.wait(Duration::from_secs(60)).await.unwrap().code(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_that_lost_its_lease_writes_late_and_the_guard_refuses_it() {
    let emulator = Emulator::start(EmulatorOptions::exact()).await.unwrap();
    let db = std::sync::Arc::new(emulator.items_database().await.unwrap());
    let pg = PostgresServer::start().await.unwrap();
    let client = pg.client("postgres").await.unwrap();
    let output = pg.uri("postgres", "");
    let start = Timestamp::now().to_string();
    let metrics = |port: u16| format!("127.0.0.1:{port}");
    let (port_a, port_b) = (
        screamer_tests::emulator::free_port().unwrap(),
        screamer_tests::emulator::free_port().unwrap(),
    );
    let runner = |addr: String| {
        let args = output_args(
            &db,
            &output,
            &[
                "--metadata-table",
                "Partitions",
                "--start",
                &start,
                "--lease-duration",
                "6s",
                "--metrics-addr",
                &addr,
            ],
        );
        Screamer::spawn(db.host(), &args).unwrap()
    };
    let writing = tokio::spawn({
        let db = db.clone();
        // Updates only: no tombstone stands in the way of A's late rows, the rows'
        // versions alone must refuse them.
        async move { write_items(&db, 1..=2000, 23, None, Duration::from_millis(4)).await }
    });
    // A holds every partition; B waits with room for them.
    let mut a = runner(metrics(port_a));
    eventually(Duration::from_secs(60), "rows in the replica", async || {
        (replica_items(&client).await.ok()?.len() >= 10).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", a.stderr()));
    let mut b = runner(metrics(port_b));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // PostgreSQL goes away: A holds a batch it retries. A is paused with it, PostgreSQL
    // comes back, and B takes A's partitions once A's lease has run out, from A's last
    // checkpoint: it writes A's batch and what came after.
    pg.stop().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.signal(SIGSTOP).unwrap();
    pg.restart().unwrap();
    let client = pg.client("postgres").await.unwrap();
    // B catches up with every write while A is still paused.
    writing.await.unwrap().unwrap();
    replica_equals_spanner(&db, &client, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", b.stderr()));
    // A wakes up and writes its batch: every row of it is older than the replica's, and
    // the replica stays as Spanner is.
    a.signal(SIGCONT).unwrap();
    let addr_a = metrics(port_a).parse().unwrap();
    let stale = eventually(Duration::from_secs(60), "A's late batch", async || {
        let scrape = screamer_tests::metrics::scrape(addr_a).await.ok()?;
        let stale = scrape.sum_where("screamer_replica_rows_total", &[("outcome", "stale")]);
        (stale > 0.0).then_some(stale)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", a.stderr()));
    replica_equals_spanner(&db, &client, Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", a.stderr()));
    eprintln!("late writes the guard refused: {stale}");
    for runner in [&mut a, &mut b] {
        runner.signal(SIGINT).unwrap();
        let status = runner.wait(Duration::from_secs(60)).await.unwrap();
        assert_eq!(status.code(), Some(0), "{}", runner.stderr());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_modes_encrypt_and_check_certificates_as_libpq_does() {
    let dir = screamer_tests::plugins::scratch_dir("pg-tls");
    screamer_tests::certificates::make_certificates(&dir);
    let stranger = dir.join("stranger");
    std::fs::create_dir(&stranger).unwrap();
    screamer_tests::certificates::make_certificates(&stranger);
    // No ~/.postgresql/root.crt there: libpq's default roots are missing.
    let home = dir.join("home");
    std::fs::create_dir(&home).unwrap();
    let pg = PostgresServer::start_with_tls(&dir).await.unwrap();
    let client = pg.client("postgres").await.unwrap();
    let (ca, stranger_ca) = (dir.join("ca.pem"), stranger.join("ca.pem"));
    let cases: [(String, Result<(), &str>); 6] = [
        ("sslmode=require".into(), Ok(())),
        (
            format!("sslmode=verify-full&sslrootcert={}", ca.display()),
            Ok(()),
        ),
        (
            format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
            Ok(()),
        ),
        (
            format!("sslmode=verify-full&sslrootcert={}", stranger_ca.display()),
            Err("invalid peer certificate"),
        ),
        ("sslmode=disable".into(), Err("no pg_hba.conf entry")),
        (
            "sslmode=verify-full".into(),
            Err("home/.postgresql/root.crt does not exist"),
        ),
    ];
    for (i, (options, want)) in cases.into_iter().enumerate() {
        let (schema, home) = (format!("case{i}"), home.display().to_string());
        let uri = pg.uri("postgres", &format!("?schema={schema}&{options}"));
        let want = want.map(|()| schema.as_str());
        replicate_one(&client, &uri, vec![("HOME", home)], want).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_comes_from_the_uri_or_pgpassword_and_a_wrong_one_is_one_line() {
    let pg = PostgresServer::start().await.unwrap();
    let client = pg.client("postgres").await.unwrap();
    client
        .batch_execute("CREATE ROLE writer LOGIN PASSWORD 's3cret:@/' CREATEDB; GRANT CREATE ON DATABASE postgres TO writer")
        .await
        .unwrap();
    pg.require_passwords().await.unwrap();
    let port = pg.port();
    let cases: [(String, Option<&str>, Result<&str, &str>); 4] = [
        // %-escaped in the URI, as libpq takes it.
        (
            format!("postgres://writer:s3cret%3A%40%2F@127.0.0.1:{port}/postgres?schema=a"),
            None,
            Ok("a"),
        ),
        (
            format!("postgres://writer@127.0.0.1:{port}/postgres?schema=b"),
            Some("s3cret:@/"),
            Ok("b"),
        ),
        (
            format!("postgres://writer:wrong@127.0.0.1:{port}/postgres?schema=c"),
            Some("s3cret:@/"),
            Err("password authentication failed for user \"writer\""),
        ),
        (
            format!("postgres://writer@127.0.0.1:{port}/postgres?schema=d"),
            None,
            Err("password"),
        ),
    ];
    for (uri, pgpassword, want) in cases {
        let env = pgpassword
            .map(|p| ("PGPASSWORD", p.to_owned()))
            .into_iter()
            .collect();
        let last = replicate_one(&client, &uri, env, want).await;
        assert!(
            !last.contains("wrong") && !last.contains("s3cret"),
            "{last}"
        );
    }
}

/// Runs the first of [`SPANNER_RECORDS`] through `plugin run` (the identity plugin) into
/// `uri` with `env`. `Ok(schema)`: its two rows must be in `schema`; `Err(message)`: the run
/// must end with exit 2 and one `error: --output` line holding `message`. Returns the last
/// line of stderr.
async fn replicate_one(
    client: &tokio_postgres::Client,
    uri: &str,
    env: Vec<(&'static str, String)>,
    want: Result<&str, &str>,
) -> String {
    let identity = screamer_tests::plugins::plugin("identity")
        .display()
        .to_string();
    let run = screamer_tests::plugins::plugin_run_async(
        vec![identity, "--output".into(), uri.to_owned()],
        format!("{}\n", SPANNER_RECORDS[0]),
        env,
    )
    .await;
    let last = run.stderr.lines().last().unwrap_or_default().to_owned();
    match want {
        Ok(schema) => {
            assert_eq!(run.code, Some(0), "{uri}: {}", run.stderr);
            let rows = client
                .query_one(&format!("SELECT count(*) FROM {schema}.\"Floats\""), &[])
                .await
                .unwrap();
            assert_eq!(rows.get::<_, i64>(0), 2, "{uri}");
        }
        Err(message) => {
            assert_eq!(run.code, Some(2), "{uri}: {}", run.stderr);
            assert!(last.starts_with("error: --output"), "{uri}: {last}");
            assert!(last.contains(message), "{uri}: {last}");
        }
    }
    last
}

/// `--snapshot initial` into the replica with whole transactions: the rows that exist
/// (snapshot, upserted at the snapshot's timestamp), then every change; a graceful restart
/// midway through the snapshot; the replica ends equal to Spanner, and the position it keeps
/// is the stream's last transaction (the snapshot never moves it).
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_then_the_stream_make_the_replica_equal_spanner() {
    screamer_tests::init_tracing();
    let emulator = Emulator::start(EmulatorOptions::default()).await.unwrap();
    let db = std::sync::Arc::new(emulator.items_database().await.unwrap());
    // 2,000 rows exist (key i: Seq i).
    screamer_tests::items::existing(&db, 2_000, |id| id)
        .await
        .unwrap();
    let pg = PostgresServer::start().await.unwrap();
    let client = pg.client("postgres").await.unwrap();
    let output = pg.uri("postgres", "");
    let args = output_args(
        &db,
        &output,
        &[
            "--metadata-table",
            "Partitions",
            "--snapshot",
            "initial",
            "--snapshot-chunk-rows",
            "250",
            "--ordering",
            "transactions",
        ],
    );
    let writing = tokio::spawn({
        let db = db.clone();
        async move { write_items(&db, 2_001..=2_600, 2_000, Some(5), Duration::from_millis(5)).await }
    });
    let mut first = Screamer::spawn(db.host(), &args).unwrap();
    eventually(
        Duration::from_secs(60),
        "snapshot rows in the replica",
        async || (replica_items(&client).await.ok()?.len() >= 500).then_some(()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", first.stderr()));
    first.signal(SIGINT).unwrap();
    let status = first.wait(Duration::from_secs(60)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", first.stderr());

    let mut second = Screamer::spawn(db.host(), &args).unwrap();
    let last = writing.await.unwrap().unwrap();
    replica_equals_spanner(&db, &client, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", second.stderr()));
    let position = eventually(
        Duration::from_secs(30),
        "the last transaction's position",
        async || {
            let row = client
                .query_one("SELECT commit_nanos FROM public._screamer_position", &[])
                .await
                .ok()?;
            let nanos: i64 = row.get(0);
            (nanos == last.unix_nanos() as i64).then_some(nanos)
        },
    )
    .await;
    second.signal(SIGINT).unwrap();
    let status = second.wait(Duration::from_secs(60)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", second.stderr());
    position.unwrap();
}
