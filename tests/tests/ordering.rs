//! `--ordering transactions` against the Spanner emulator, with partitions that split and
//! merge every few seconds: a bounded re-read to stdout is whole transactions in commit
//! order, each once, as many as committed; a graceful stop and restart mid-stream repeats
//! and loses none. (On the emulator every transaction lands in one partition; the
//! cross-partition cases are the unit tests of `ordering` against a scripted source.)

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use screamer::Timestamp;
use screamer_tests::bank::{Bank, replay, transaction_ids, whole_transactions_in_order};
use screamer_tests::libc::SIGINT;
use screamer_tests::{Emulator, EmulatorOptions, Screamer, eventually, run_args};

/// The writer's balances keyed as [`replay`] keys them.
fn expected_balances(bank: &Bank) -> BTreeMap<(String, i64), i64> {
    bank.balances()
        .iter()
        .map(|((table, id), b)| ((table.to_string(), *id), *b))
        .collect()
}

async fn churning_emulator() -> Emulator {
    Emulator::start(EmulatorOptions {
        partition_alive_seconds: Some(3),
        ..EmulatorOptions::exact()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_reread_is_whole_transactions_in_commit_order_each_once() {
    screamer_tests::init_tracing();
    let emulator = churning_emulator().await;
    let mut bank = Bank::open(&emulator, 6).await.unwrap();
    // The opening transaction is the first to read (the start is inclusive).
    let start = bank.commits[0];
    for _ in 0..300 {
        bank.transfer().await.unwrap();
    }
    let end = bank.commits.last().unwrap().to_string();
    let args = run_args(
        &bank.db,
        &[
            "--start",
            &start.to_string(),
            "--end",
            &end,
            "--ordering",
            "transactions",
        ],
    );
    let mut screamer = Screamer::spawn(bank.db.host(), &args).unwrap();
    let status = screamer.wait(Duration::from_secs(120)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", screamer.stderr());
    let transactions = whole_transactions_in_order(&screamer.lines());
    assert_eq!(
        transactions.len(),
        bank.commits.len(),
        "as many as committed"
    );
    let commits: Vec<Timestamp> = transactions.iter().map(|t| t.commit).collect();
    assert_eq!(commits, bank.commits, "in commit order");
    assert_eq!(replay(&transactions), expected_balances(&bank));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_and_restart_mid_stream_repeats_and_loses_no_transaction() {
    screamer_tests::init_tracing();
    let emulator = churning_emulator().await;
    let mut bank = Bank::open(&emulator, 4).await.unwrap();
    let start = bank.commits[0].to_string();
    let base = [
        "--start",
        &start,
        "--ordering",
        "transactions",
        "--metadata-table",
        "Partitions",
    ];
    let mut first = Screamer::spawn(bank.db.host(), &run_args(&bank.db, &base)).unwrap();
    for _ in 0..150 {
        bank.transfer().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually(Duration::from_secs(60), "transactions out", async || {
        (first.line_count() > 40).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", first.stderr()));
    first.signal(SIGINT).unwrap();
    let status = first.wait(Duration::from_secs(60)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", first.stderr());
    for _ in 0..150 {
        bank.transfer().await.unwrap();
    }
    // The partitions were created without an end: the second run is stopped too, once
    // everything is out.
    let before = whole_transactions_in_order(&first.lines());
    let mut second = Screamer::spawn(bank.db.host(), &run_args(&bank.db, &base)).unwrap();
    let committed = bank.commits.len();
    eventually(
        Duration::from_secs(120),
        "every transaction out",
        async || (before.len() + transaction_ids(&second.lines()).len() >= committed).then_some(()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", second.stderr()));
    second.signal(SIGINT).unwrap();
    let status = second.wait(Duration::from_secs(60)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", second.stderr());

    let after = whole_transactions_in_order(&second.lines());
    let ids: HashSet<&str> = before.iter().map(|t| t.id.as_str()).collect();
    let repeated: Vec<&str> = after
        .iter()
        .map(|t| t.id.as_str())
        .filter(|id| ids.contains(id))
        .collect();
    assert!(
        repeated.is_empty(),
        "repeated after the restart: {repeated:?}"
    );
    let mut all = before;
    all.extend(after);
    let commits: Vec<Timestamp> = all.iter().map(|t| t.commit).collect();
    assert_eq!(
        commits, bank.commits,
        "every transaction once, in commit order"
    );
    assert_eq!(replay(&all), expected_balances(&bank));
}
