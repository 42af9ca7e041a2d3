//! `--ordering transactions` against the Spanner emulator, with partitions that split and
//! merge every few seconds: a bounded re-read to stdout through a plugin is whole
//! transactions in commit order, each once, as many as committed; a graceful stop and restart mid-stream repeats
//! and loses none; a bank replicated into PostgreSQL by two runners, the active one killed
//! midway, never shows a reader half a transfer and ends equal to Spanner; with
//! `transactions=grouped` Kafka gets one message per transaction, in order. (On the emulator every transaction lands in one partition; the
//! cross-partition cases are the unit tests of `ordering` against a scripted source.)

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use screamer::Timestamp;
use screamer_tests::bank::{Bank, replay, transaction_ids, whole_transactions_in_order};
use screamer_tests::bench::peak_rss_kb;
use screamer_tests::kafka::{KafkaBroker, poll};
use screamer_tests::libc::{SIGINT, SIGKILL};
use screamer_tests::plugins::plugin_arg;
use screamer_tests::postgres::PostgresServer;
use screamer_tests::{Emulator, EmulatorOptions, Screamer, eventually};

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
async fn a_bounded_reread_through_a_plugin_is_whole_transactions_in_commit_order_each_once() {
    screamer_tests::init_tracing();
    let emulator = churning_emulator().await;
    let mut bank = Bank::open(&emulator, 6).await.unwrap();
    for _ in 0..300 {
        bank.transfer().await.unwrap();
    }
    // Through the plugin chain: plugins get whole transactions, batch by batch.
    let identity = plugin_arg("identity");
    let args = bank.ordered_args(true, &["--plugin", &identity]);
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
async fn a_tiny_buffer_passes_a_transaction_larger_than_itself_in_bounded_memory() {
    screamer_tests::init_tracing();
    let emulator = churning_emulator().await;
    // Opening 2 x 800 accounts: two records of 800 rows each, ~100 KB, in one transaction.
    let mut bank = Bank::open(&emulator, 800).await.unwrap();
    for _ in 0..150 {
        bank.transfer().await.unwrap();
    }
    let args = bank.ordered_args(true, &["--ordering-buffer", "1KiB"]);
    let mut screamer = Screamer::spawn(bank.db.host(), &args).unwrap();
    let pid = screamer.pid();
    let sampling = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            let now = peak_rss_kb(pid);
            if now == 0 {
                return peak; // exited
            }
            peak = peak.max(now);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let status = screamer.wait(Duration::from_secs(120)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", screamer.stderr());
    let peak_kb = sampling.await.unwrap();
    let transactions = whole_transactions_in_order(&screamer.lines());
    let commits: Vec<Timestamp> = transactions.iter().map(|t| t.commit).collect();
    assert_eq!(commits, bank.commits);
    assert_eq!(replay(&transactions), expected_balances(&bank));
    // A loose bound (the process alone is ~40 MB): nothing piles up behind the buffer.
    assert!(peak_kb < 200 * 1024, "peak RSS {peak_kb} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_and_restart_mid_stream_repeats_and_loses_no_transaction() {
    screamer_tests::init_tracing();
    let emulator = churning_emulator().await;
    let mut bank = Bank::open(&emulator, 4).await.unwrap();
    let args = bank.ordered_args(false, &["--metadata-table", "Partitions"]);
    let mut first = Screamer::spawn(bank.db.host(), &args).unwrap();
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
    let mut second = Screamer::spawn(bank.db.host(), &args).unwrap();
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

/// Spanner's balances, read with Google's client.
async fn spanner_balances(bank: &Bank) -> BTreeMap<(String, i64), i64> {
    let mut balances = BTreeMap::new();
    for table in ["Checking", "Savings"] {
        let mut tx = bank.db.client.single().await.unwrap();
        let sql = format!("SELECT Id, Balance FROM {table}");
        let mut rows = tx
            .query(gcloud_spanner::statement::Statement::new(sql))
            .await
            .unwrap();
        while let Some(row) = rows.next().await.unwrap() {
            let (id, balance): (i64, i64) = (row.column(0).unwrap(), row.column(1).unwrap());
            balances.insert((table.to_owned(), id), balance);
        }
    }
    balances
}

/// The replica's balances, by table and id; tables not there yet read as empty.
async fn replica_balances(client: &tokio_postgres::Client) -> BTreeMap<(String, i64), i64> {
    let mut balances = BTreeMap::new();
    for table in ["Checking", "Savings"] {
        let sql = format!(r#"SELECT "Id", "Balance" FROM public."{table}""#);
        for row in client.query(&sql, &[]).await.unwrap_or_default() {
            balances.insert((table.to_owned(), row.get(0)), row.get(1));
        }
    }
    balances
}

/// Reads the bank's total in one statement (one snapshot) every few milliseconds until
/// `stop` is set; returns every total seen.
fn watch_totals(
    client: Arc<tokio_postgres::Client>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<HashSet<i64>> {
    tokio::spawn(async move {
        let mut seen = HashSet::new();
        let sql = r#"SELECT ((SELECT coalesce(sum("Balance"), 0) FROM public."Checking")
                          + (SELECT coalesce(sum("Balance"), 0) FROM public."Savings"))::bigint"#;
        while !stop.load(Ordering::Relaxed) {
            // Before the replica has its tables, the statement fails: nothing to see yet.
            if let Ok(row) = client.query_one(sql, &[]).await {
                seen.insert(row.get::<_, i64>(0));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_replica_kept_by_two_runners_never_shows_half_a_transfer() {
    screamer_tests::init_tracing();
    let emulator = churning_emulator().await;
    let mut bank = Bank::open(&emulator, 5).await.unwrap();
    let pg = PostgresServer::start().await.unwrap();
    let client = Arc::new(pg.client("postgres").await.unwrap());
    let output = pg.uri("postgres", "");
    let runner = |id: &str| {
        let extra = [
            "--metadata-table",
            "Partitions",
            "--lease-duration",
            "3s",
            "--output",
            &output,
            "--runner-id",
            id,
        ];
        Screamer::spawn(bank.db.host(), &bank.ordered_args(false, &extra)).unwrap()
    };
    let active = runner("first");
    eventually(
        Duration::from_secs(60),
        "the accounts in the replica",
        async || (replica_balances(&client).await.len() == 10).then_some(()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", active.stderr()));
    let mut standby = runner("second");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_totals(Arc::clone(&client), Arc::clone(&stop));

    for i in 0..240 {
        bank.transfer().await.unwrap();
        if i == 120 {
            // The active runner dies; the standby takes over within the lease.
            active.signal(SIGKILL).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let expected = expected_balances(&bank);
    eventually(
        Duration::from_secs(120),
        "the replica equal to Spanner",
        async || (replica_balances(&client).await == expected).then_some(()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", standby.stderr()));
    assert_eq!(
        spanner_balances(&bank).await,
        expected,
        "the writer's view is Spanner's"
    );
    stop.store(true, Ordering::Relaxed);
    let totals = watcher.await.unwrap();
    assert_eq!(
        totals,
        HashSet::from([bank.total()]),
        "a reader saw half a transfer"
    );

    // The replica's position is the last transaction, written with it.
    let last = bank.commits.last().unwrap();
    let row = client
        .query_one(
            "SELECT commit_nanos FROM public._screamer_position WHERE replica = 'stream'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0) as i128, last.unix_nanos());
    standby.signal(SIGINT).unwrap();
    let status = standby.wait(Duration::from_secs(60)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", standby.stderr());
    assert!(
        standby.stderr().contains("active: reading every partition"),
        "the standby took over: {}",
        standby.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_transactions_reach_kafka_one_message_each_in_commit_order() {
    screamer_tests::init_tracing();
    let emulator = churning_emulator().await;
    let kafka = KafkaBroker::start().await.unwrap();
    kafka.topic("bank", 3).await.unwrap();
    let mut bank = Bank::open(&emulator, 4).await.unwrap();
    for _ in 0..100 {
        bank.transfer().await.unwrap();
    }
    let output = kafka.uri("bank", "?transactions=grouped");
    let args = bank.ordered_args(true, &["--output", &output]);
    let mut screamer = Screamer::spawn(bank.db.host(), &args).unwrap();
    let status = screamer.wait(Duration::from_secs(120)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", screamer.stderr());

    let consumer = kafka.consumer("bank", 3).unwrap();
    let messages =
        tokio::task::block_in_place(|| poll(&consumer, Duration::from_secs(30))).unwrap();
    assert_eq!(
        messages.len(),
        bank.commits.len(),
        "one message per transaction"
    );
    let mut lines = Vec::new();
    for m in &messages {
        assert_eq!(m.key, "transactions", "one key: one partition, in order");
        let group: serde_json::Value = serde_json::from_str(&m.data).unwrap();
        let records = group["records"].as_array().unwrap();
        for r in records {
            assert_eq!(r["server_transaction_id"], group["server_transaction_id"]);
            assert_eq!(r["commit_timestamp"], group["commit_timestamp"]);
            lines.push(r.to_string());
        }
    }
    let transactions = whole_transactions_in_order(&lines);
    let commits: Vec<Timestamp> = transactions.iter().map(|t| t.commit).collect();
    assert_eq!(commits, bank.commits);
    assert_eq!(replay(&transactions), expected_balances(&bank));
}
