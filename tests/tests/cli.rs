//! The `screamer` binary as a user runs it: exit codes, error lines, `--end`, graceful stop
//! and restart, `kill -9` and restart.

use std::sync::Arc;
use std::time::Duration;

use screamer::{Dialect, Timestamp};
use screamer_tests::items::{
    assert_ordered_per_key, assert_ordered_per_partition, counts, expected, mods, write,
};
use screamer_tests::libc::{SIGINT, SIGKILL, SIGTERM};
use screamer_tests::{
    Emulator, EmulatorOptions, ITEMS_SCHEMA, Screamer, TestDatabase, eventually, run_args,
};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn end_ends_the_run_with_exit_0_after_everything_committed_before_it() -> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    let db = emulator.items_database().await?;
    let start = Timestamp::now();
    let (seq, last) = write(&db, 300, 7, Duration::ZERO).await?;
    // The end is inclusive: the last commit, at exactly `end`, is delivered.
    let end = last;
    let mut screamer = Screamer::spawn(
        db.host(),
        &run_args(
            &db,
            &["--start", &start.to_string(), "--end", &end.to_string()],
        ),
    )?;
    let status = screamer.wait(Duration::from_secs(60)).await?;
    assert_eq!(status.code(), Some(0), "stderr: {}", screamer.stderr());
    let lines = screamer.lines();
    assert_eq!(lines.len(), 300);
    let got = mods(&lines)?;
    assert_ordered_per_key(&got);
    assert_eq!(counts(got), expected(&seq));
    let first: Value = serde_json::from_str(&lines[0])?;
    assert_eq!(first["table_name"], "Items");
    assert_eq!(first["mod_type"], "INSERT");
    assert!(
        first["partition_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    Ok(())
}

/// An emulator with partition churn, an Items database, and the arguments of a screamer run
/// that resumes from the `Partitions` metadata table (plus `extra`).
async fn restartable_run(
    extra: &[&str],
) -> anyhow::Result<(Emulator, Arc<TestDatabase>, Vec<String>)> {
    let emulator = Emulator::start(EmulatorOptions {
        partition_alive_seconds: Some(3),
        ..EmulatorOptions::exact()
    })
    .await?;
    let db = Arc::new(emulator.items_database().await?);
    let start = Timestamp::now().to_string();
    let mut flags = vec!["--metadata-table", "Partitions", "--start", &start];
    flags.extend_from_slice(extra);
    let run_args = run_args(&db, &flags);
    Ok((emulator, db, run_args))
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_stop_and_restart_loses_nothing_and_repeats_nothing() -> anyhow::Result<()> {
    let (_emulator, db, run_args) = restartable_run(&[]).await?;
    let writing = tokio::spawn({
        let db = db.clone();
        async move { write(&db, 1500, 13, Duration::from_millis(4)).await }
    });
    let mut outputs = Vec::new();
    // Runs stopped by SIGINT and SIGTERM while the writer is busy, then one to the end.
    for signal in [SIGINT, SIGTERM] {
        let mut s = Screamer::spawn(db.host(), &run_args)?;
        // Stop mid-stream; if the writer has already finished, stop whatever this run has
        // delivered after giving it time to start (fewer than 100 records may be left).
        let floor = 100;
        eventually(
            Duration::from_secs(60),
            "output from this run",
            async || (s.line_count() >= floor || writing.is_finished()).then_some(()),
        )
        .await?;
        if s.line_count() < floor {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        s.signal(signal)?;
        let status = s.wait(Duration::from_secs(30)).await?;
        assert_eq!(status.code(), Some(0), "stderr: {}", s.stderr());
        assert_ordered_per_partition(&s.lines())?;
        outputs.push(mods(&s.lines())?);
    }
    let (seq, _) = writing.await??;
    let want = expected(&seq);
    let mut s = Screamer::spawn(db.host(), &run_args)?;
    let so_far: usize = outputs.iter().map(Vec::len).sum();
    let total = want.len();
    eventually(
        Duration::from_secs(60),
        "the rest of the output",
        async || (so_far + mods(&s.lines()).ok()?.len() >= total).then_some(()),
    )
    .await?;
    s.signal(SIGINT)?;
    assert_eq!(s.wait(Duration::from_secs(30)).await?.code(), Some(0));
    assert_ordered_per_partition(&s.lines())?;
    outputs.push(mods(&s.lines())?);

    assert_eq!(counts(outputs.into_iter().flatten()), want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_and_restart_loses_nothing() -> anyhow::Result<()> {
    // A short lease: the restarted runner (a new id) takes the killed one's partitions over
    // once its lease expires.
    let (_emulator, db, run_args) =
        restartable_run(&["--checkpoint-interval", "200ms", "--lease-duration", "3s"]).await?;
    let writing = tokio::spawn({
        let db = db.clone();
        async move { write(&db, 1200, 11, Duration::from_millis(4)).await }
    });
    let mut first = Screamer::spawn(db.host(), &run_args)?;
    eventually(
        Duration::from_secs(60),
        "output before the kill",
        async || (first.line_count() >= 300).then_some(()),
    )
    .await?;
    first.signal(SIGKILL)?;
    first.wait(Duration::from_secs(10)).await?;
    assert_ordered_per_partition(&first.lines())?;
    let before = mods(&first.lines())?;

    let (seq, _) = writing.await??;
    let want = expected(&seq);
    let mut second = Screamer::spawn(db.host(), &run_args)?;
    eventually(
        Duration::from_secs(60),
        "every mutation after the restart",
        async || {
            let all = counts(before.iter().copied().chain(mods(&second.lines()).ok()?));
            want.keys().all(|k| all.contains_key(k)).then_some(())
        },
    )
    .await?;
    second.signal(SIGINT)?;
    assert_eq!(second.wait(Duration::from_secs(30)).await?.code(), Some(0));
    assert_ordered_per_partition(&second.lines())?;
    let after = mods(&second.lines())?;
    let all = counts(before.into_iter().chain(after));
    // At least once: nothing lost, nothing invented; repeats are allowed after a crash.
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    Ok(())
}

/// Runs screamer to completion and returns (exit code, stderr).
async fn run_to_exit(host: &str, args: &[String]) -> anyhow::Result<(i32, String)> {
    let mut s = Screamer::spawn(host, args)?;
    let status = s.wait(Duration::from_secs(60)).await?;
    Ok((status.code().unwrap_or(-1), s.stderr()))
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_one_clear_line_and_exit_2() -> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    let db = emulator
        .database(
            Dialect::GoogleSql,
            &[
                ITEMS_SCHEMA[0],
                ITEMS_SCHEMA[1],
                "CREATE CHANGE STREAM Other FOR Items",
                "CREATE TABLE Wrong (PartitionToken STRING(MAX) NOT NULL, State INT64) \
                 PRIMARY KEY (PartitionToken)",
            ],
        )
        .await?;
    let occupied = std::net::TcpListener::bind("127.0.0.1:0")?;
    for (args, message) in bad_runs(&db, &emulator, occupied.local_addr()?) {
        let stderr = refused(db.host(), &args).await?;
        assert!(stderr.contains(&message), "{args:?}: {stderr}");
    }
    // The unknown stream's message lists the streams that exist.
    let stderr = refused(db.host(), &run(&db.name.to_string(), &["--stream", "Nope"])).await?;
    assert!(
        stderr.contains("(streams there: Changes, Other)"),
        "{stderr}"
    );
    a_metadata_table_needs_a_googlesql_database(&emulator, &db).await
}

/// `--dsn DSN --stream Changes` then `flags`; a later `--stream` replaces the first.
fn run(dsn: &str, flags: &[&str]) -> Vec<String> {
    let mut args = strings(&["--dsn", dsn, "--stream", "Changes"]);
    if flags.first() == Some(&"--stream") {
        args.truncate(2);
    }
    args.extend(strings(flags));
    args
}

/// Runs that a user can fix, each with what its one error line says. `taken`: an address
/// something already listens on.
fn bad_runs(
    db: &TestDatabase,
    emulator: &Emulator,
    taken: std::net::SocketAddr,
) -> Vec<(Vec<String>, String)> {
    let dsn = db.name.to_string();
    let missing = emulator.unused_database().to_string();
    let taken = taken.to_string();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            run("projects/p/instances/i", &[]),
            "invalid database name \"projects/p/instances/i\": expected projects/PROJECT/instances/INSTANCE/databases/DATABASE".into(),
        ),
        (run(&missing, &[]), format!("error: database {missing} does not exist")),
        (run(&dsn, &["--stream", "Nope"]), "change stream \"Nope\" does not exist".into()),
        (run(&dsn, &["--start", "yesterday"]), "\"yesterday\" is not an RFC 3339 timestamp".into()),
        (
            run(&dsn, &["--start", "2026-01-02T00:00:00Z", "--end", "2026-01-01T00:00:00Z"]),
            "error: --end 2026-01-01T00:00:00Z must be after --start 2026-01-02T00:00:00Z".into(),
        ),
        (
            run(&dsn, &["--start", "2001-01-01T00:00:00Z"]),
            "start 2001-01-01T00:00:00Z is outside the change stream's retention period".into(),
        ),
        (
            run(&dsn, &["--metadata-table", "Wrong"]),
            "metadata table Wrong does not match the partition metadata schema: column ParentTokens ARRAY<STRING(MAX)> is missing".into(),
        ),
        (run(&dsn, &["--heartbeat-interval", "5 parsecs"]), "\"5 parsecs\" is not a duration".into()),
        (
            run(&dsn, &["--priority", "urgent"]),
            "\"urgent\" is not a priority: expected low, medium or high".into(),
        ),
        (
            run(&dsn, &["--metrics-addr", "nowhere"]),
            "\"nowhere\": expected HOST:PORT, e.g. 0.0.0.0:9464".into(),
        ),
        (
            run(&dsn, &["--metrics-addr", &taken]),
            format!("error: --metrics-addr {taken}: cannot listen on {taken}: "),
        ),
        (
            run(&dsn, &["--ordering", "global"]),
            "unknown ordering \"global\": expected key or transactions".into(),
        ),
        (
            run(&dsn, &["--snapshot", "sometimes"]),
            "unknown snapshot mode \"sometimes\": expected never, initial or only".into(),
        ),
        (
            run(&dsn, &["--snapshot-chunk-rows", "0"]),
            "\"0\" is not a whole number of at least 1".into(),
        ),
        (
            run(&dsn, &["--ordering", "transactions", "--partition-metadata"]),
            "error: --partition-metadata cannot be used with --ordering transactions".into(),
        ),
        (run(&dsn, &["--ordering-buffer", "lots"]), "\"lots\" is not a size like 64MiB".into()),
        (
            run(&dsn, &["--output", "kafka://127.0.0.1:1/t?transactions=grouped"]),
            "error: kafka://127.0.0.1:1/t: transactions=grouped needs --ordering transactions".into(),
        ),
        (run(&dsn, &["--plugin-timeout", "0s"]), "\"0s\" is outside 1ms..1h".into()),
        (
            run(&dsn, &["--plugin-timeout", "18446744073709551615s"]),
            "\"18446744073709551615s\" is outside 1ms..1h".into(),
        ),
    ];
    cases
}

/// Runs screamer, which must refuse `args`: exit 2 and exactly one `error` line. Returns
/// its stderr.
async fn refused(host: &str, args: &[String]) -> anyhow::Result<String> {
    let (code, stderr) = run_to_exit(host, args).await?;
    assert_eq!(code, 2, "{args:?}: {stderr}");
    let errors = stderr.lines().filter(|l| l.starts_with("error")).count();
    assert_eq!(errors, 1, "{args:?}: one error line expected in {stderr}");
    Ok(stderr)
}

/// A metadata table in a PostgreSQL-dialect database is refused with the way out, and
/// `--partition-dsn` naming the GoogleSQL database `db` is that way.
async fn a_metadata_table_needs_a_googlesql_database(
    emulator: &Emulator,
    db: &TestDatabase,
) -> anyhow::Result<()> {
    let pg = emulator.database(Dialect::PostgreSql, &[]).await?;
    pg.ddl(&[
        "CREATE TABLE items (id bigint NOT NULL, PRIMARY KEY (id))",
        "CREATE CHANGE STREAM changes FOR items",
    ])
    .await?;
    let pg_run = |flags: &[&str]| {
        let mut args = strings(&["--dsn", &pg.name.to_string(), "--stream", "changes"]);
        args.extend(strings(flags));
        args
    };
    let stderr = refused(pg.host(), &pg_run(&["--metadata-table", "Partitions"])).await?;
    assert!(
        stderr.contains(
            "metadata table Partitions is in a PostgreSQL-dialect database; use --partition-dsn"
        ),
        "{stderr}"
    );
    // With --partition-dsn it runs (and stops at --end).
    let start = Timestamp::now();
    let end = start.saturating_add(Duration::from_millis(1));
    let args = pg_run(&[
        "--metadata-table",
        "PgPartitions",
        "--partition-dsn",
        &db.name.to_string(),
        "--start",
        &start.to_string(),
        "--end",
        &end.to_string(),
    ]);
    let (code, stderr) = run_to_exit(pg.host(), &args).await?;
    assert_eq!(code, 0, "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_go_spelling_runs_at_low_priority_with_json_logs_one_object_per_line()
-> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    let db = emulator.items_database().await?;
    let now = Timestamp::now();
    let end = now.saturating_add(Duration::from_millis(1)).to_string();
    let (code, stderr) = run_to_exit(
        db.host(),
        &strings(&[
            "screamer",
            "--dsn",
            &db.name.to_string(),
            "--stream",
            "Changes",
            "--start",
            &now.to_string(),
            "--end",
            &end,
            "--log-format",
            "json",
            "--priority",
            "low",
            "--metadata-table",
            "GoPartitions",
        ]),
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["fields"]["message"] == "done"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn partition_metadata_sits_beside_every_record_as_the_go_screamer_prints_it()
-> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    let db = emulator.items_database().await?;
    let start = Timestamp::now();
    let (_, end) = write(&db, 40, 4, Duration::ZERO).await?;
    for store in [&["--metadata-table", "GoMeta"][..], &[]] {
        let mut args = run_args(
            &db,
            &[
                "--start",
                &start.to_string(),
                "--end",
                &end.to_string(),
                "--partition-metadata",
            ],
        );
        args.extend(store.iter().map(|s| s.to_string()));
        let mut screamer = Screamer::spawn(db.host(), &args)?;
        let status = screamer.wait(Duration::from_secs(60)).await?;
        assert_eq!(status.code(), Some(0), "{store:?}: {}", screamer.stderr());
        let lines = screamer.lines();
        assert_eq!(lines.len(), 40, "{store:?}");
        let time = |v: &Value, field: &str| -> Timestamp {
            v[field]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{store:?}: {field} is not a timestamp in {v}"))
        };
        for line in &lines {
            let v: Value = serde_json::from_str(line)?;
            let commit = time(&v, "commit_timestamp");
            let (begins, watermark) = (time(&v, "start_timestamp"), time(&v, "watermark"));
            let (created, scheduled, running) = (
                time(&v, "created_at"),
                time(&v, "scheduled_at"),
                time(&v, "running_at"),
            );
            assert!(begins <= watermark && watermark <= commit, "{store:?}: {v}");
            assert!(
                created <= scheduled && scheduled <= running,
                "{store:?}: {v}"
            );
            assert!(begins >= start, "{store:?}: {v}");
        }
        // What screamer prints parses back through `plugin run`, the metadata set aside.
        let identity = screamer_tests::plugins::plugin("identity")
            .display()
            .to_string();
        let run = screamer_tests::plugins::plugin_run(&[&identity], &(lines.join("\n") + "\n"))?;
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert_eq!(run.stdout.len(), 40);
        let first: Value = serde_json::from_str(&run.stdout[0])?;
        assert!(first.get("watermark").is_none(), "{first}");
    }
    Ok(())
}
