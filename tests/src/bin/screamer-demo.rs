//! The demo: a local emulator, a database with a change stream, screamer reading it through
//! the plugin chain of `examples/pipeline.toml` while rows are written, its NDJSON on this
//! terminal's stdout. Run it with `scripts/demo.sh` (which builds the plugins first).
//!
//! With `--replica` (`scripts/demo-replica.sh`): a throwaway PostgreSQL too, twenty rows
//! exist before the run, screamer runs `examples/replica.toml` into it with `--snapshot
//! initial --ordering transactions` (the rows that exist, then every change, whole
//! transactions in commit order), and the replica is printed and compared with Spanner.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use gcloud_spanner::key::Key;
use gcloud_spanner::mutation::{delete, insert_or_update};
use gcloud_spanner::statement::Statement;
use screamer::{Dialect, Timestamp};
use screamer_tests::postgres::PostgresServer;
use screamer_tests::{Emulator, EmulatorOptions, TestDatabase, screamer_bin};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let replica = args.first().is_some_and(|a| a == "--replica");
    if replica {
        args.remove(0);
    }
    let seconds: u64 = args
        .first()
        .map(|s| s.parse())
        .transpose()
        .context("usage: screamer-demo [--replica] [SECONDS]")?
        .unwrap_or(10);
    let postgres = match replica {
        true => Some(PostgresServer::start().await?),
        false => None,
    };
    let emulator = Emulator::start(EmulatorOptions {
        partition_alive_seconds: Some(5),
        ..Default::default()
    })
    .await?;
    let db = emulator
        .database(
            Dialect::GoogleSql,
            &[
                "CREATE TABLE Singers (SingerId INT64 NOT NULL, Name STRING(MAX), \
                 Email STRING(MAX), Bio STRING(MAX), Plays INT64) PRIMARY KEY (SingerId)",
                "CREATE CHANGE STREAM SingerChanges FOR Singers \
                 OPTIONS (value_capture_type = 'NEW_ROW_AND_OLD_VALUES')",
            ],
        )
        .await?;
    eprintln!(
        "demo: emulator at {}, database {}, stream SingerChanges",
        emulator.host(),
        db.name
    );
    let start = Timestamp::now();
    if postgres.is_some() {
        // Rows that exist before the run: the replica starts from them (`--snapshot`).
        let existing = (100..120i64)
            .map(|id| {
                let name = format!("Existing {id}");
                insert_or_update(
                    "Singers",
                    &["SingerId", "Name", "Plays"],
                    &[&id, &name, &0i64],
                )
            })
            .collect();
        db.apply(existing).await?;
    }
    let mut args = vec![
        "--dsn".to_owned(),
        db.name.to_string(),
        "--stream".into(),
        "SingerChanges".into(),
        "--metadata-table".into(),
        "ScreamerPartitions".into(),
        "--start".into(),
        start.to_string(),
        "--heartbeat-interval".into(),
        "1s".into(),
        "--config".into(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/pipeline.toml").into(),
    ];
    if let Some(pg) = &postgres {
        *args.last_mut().expect("the config path") =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/replica.toml").into();
        // The rows that exist, then every change, whole transactions in commit order.
        args.retain(|a| *a != "--start" && *a != start.to_string());
        args.extend(
            [
                "--snapshot",
                "initial",
                "--ordering",
                "transactions",
                "--output",
            ]
            .map(String::from),
        );
        args.push(pg.uri("postgres", "?schema=spanner"));
    }
    eprintln!("demo: {} {}", screamer_bin().display(), args.join(" "));
    let mut screamer = Command::new(screamer_bin())
        .args(&args)
        .env("SPANNER_EMULATOR_HOST", emulator.host())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting screamer (build it first: cargo build -p screamer)")?;
    // Pass screamer's logs through, and start writing once it has subscribed (the first
    // run compiles the plugins, the Python one for a few seconds; later runs use the cache).
    let subscribed = Arc::new(AtomicBool::new(false));
    let stderr = screamer.stderr.take().expect("piped stderr");
    let flag = subscribed.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("subscribing") {
                flag.store(true, Ordering::Relaxed);
            }
            eprintln!("{line}");
        }
    });
    let ready_by = std::time::Instant::now() + Duration::from_secs(180);
    while !subscribed.load(Ordering::Relaxed) {
        anyhow::ensure!(
            std::time::Instant::now() < ready_by,
            "screamer did not start"
        );
        if let Some(status) = screamer.try_wait()? {
            anyhow::bail!("screamer exited with {status} before subscribing");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let names = ["Ada", "Grace", "Edsger", "Barbara", "Donald"];
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    let mut i = 0i64;
    while std::time::Instant::now() < deadline {
        let id = i % 5;
        let m = match i % 7 {
            6 => delete("Singers", Key::new(&id)),
            3 => insert_or_update("Singers", &["SingerId", "Plays"], &[&id, &i]),
            _ => {
                let name = names[id as usize];
                let email = format!("{}@example.com", name.to_lowercase());
                let bio = format!("{name} has a long biography that the pipeline drops");
                insert_or_update(
                    "Singers",
                    &["SingerId", "Name", "Email", "Bio", "Plays"],
                    &[&id, &name, &email, &bio, &i],
                )
            }
        };
        db.apply(vec![m]).await?;
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give the last commits time to come out, then stop screamer gracefully.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { screamer_tests::libc::kill(screamer.id() as i32, screamer_tests::libc::SIGINT) };
    let status = screamer.wait()?;
    eprintln!("demo: wrote {i} transactions; screamer exited with {status}");
    if let Some(pg) = &postgres {
        show_replica(&db, pg).await?;
    }
    Ok(())
}

/// Prints the replica's Singers and whether they equal Spanner's (but for the hashed
/// e-mail addresses).
async fn show_replica(db: &TestDatabase, pg: &PostgresServer) -> anyhow::Result<()> {
    let client = pg.client("postgres").await?;
    let rows = client
        .query(
            r#"SELECT "SingerId", "Name", "Plays", "Email", _screamer_commit_timestamp::text
               FROM spanner."Singers" ORDER BY "SingerId""#,
            &[],
        )
        .await?;
    println!("SingerId | Name | Plays | Email (hashed) | last change");
    let mut replica = Vec::new();
    for r in &rows {
        let row: (i64, Option<String>, Option<i64>) = (r.get(0), r.get(1), r.get(2));
        let email: Option<String> = r.get(3);
        let changed: String = r.get(4);
        println!(
            "{} | {:?} | {:?} | {:?} | {changed}",
            row.0, row.1, row.2, email
        );
        replica.push(row);
    }
    let mut tx = db.client.single().await?;
    let mut spanner_rows = tx
        .query(Statement::new(
            "SELECT SingerId, Name, Plays FROM Singers ORDER BY SingerId",
        ))
        .await?;
    let mut spanner = Vec::new();
    while let Some(row) = spanner_rows.next().await? {
        spanner.push((row.column(0)?, row.column(1)?, row.column(2)?));
    }
    let equal = if spanner == replica { "yes" } else { "NO" };
    eprintln!(
        "demo: replica at {} (schema spanner) equals Spanner (SingerId, Name, Plays): {equal}",
        pg.uri("postgres", "")
    );
    anyhow::ensure!(
        spanner == replica,
        "the replica differs from Spanner: {spanner:?}"
    );
    Ok(())
}
