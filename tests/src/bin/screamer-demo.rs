//! The demo: a local emulator, a database with a change stream, screamer reading it while
//! rows are written, its NDJSON on this terminal's stdout. Run it with `scripts/demo.sh`.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use gcloud_spanner::key::Key;
use gcloud_spanner::mutation::{delete, insert_or_update};
use screamer::{Dialect, Timestamp};
use screamer_tests::{Emulator, EmulatorOptions, screamer_bin};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("usage: screamer-demo [SECONDS]")?
        .unwrap_or(10);
    let emulator = Emulator::start(EmulatorOptions {
        partition_alive_seconds: Some(5),
    })
    .await?;
    let db = emulator
        .database(
            Dialect::GoogleSql,
            &[
                "CREATE TABLE Singers (SingerId INT64 NOT NULL, Name STRING(MAX), \
                 Plays INT64) PRIMARY KEY (SingerId)",
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
    let args = [
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
    ];
    eprintln!("demo: {} {}", screamer_bin().display(), args.join(" "));
    let mut screamer = Command::new(screamer_bin())
        .args(&args)
        .env("SPANNER_EMULATOR_HOST", emulator.host())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting screamer (build it first: cargo build -p screamer)")?;

    let names = ["Ada", "Grace", "Edsger", "Barbara", "Donald"];
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    let mut i = 0i64;
    while std::time::Instant::now() < deadline {
        let id = i % 5;
        let m = match i % 7 {
            6 => delete("Singers", Key::new(&id)),
            3 => insert_or_update("Singers", &["SingerId", "Plays"], &[&id, &i]),
            _ => insert_or_update(
                "Singers",
                &["SingerId", "Name", "Plays"],
                &[&id, &names[id as usize], &i],
            ),
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
    Ok(())
}
