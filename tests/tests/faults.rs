//! Transient failures: every connection of the change stream queries is cut again and again
//! while partitions churn; readers retry from their watermarks, nothing is lost, each
//! partition stays in commit order, and the run never stops.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gcloud_spanner::mutation::insert_or_update;
use screamer::{
    DatabaseName, Endpoint, SpannerSource, SpannerStore, Subscriber, SubscriberOptions, Timestamp,
};
use screamer_tests::{
    ChaosProxy, Collector, Emulator, EmulatorOptions, TestDatabase, eventually, int_member,
};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread")]
async fn cut_connections_are_retried_from_the_watermark() -> anyhow::Result<()> {
    screamer_tests::init_tracing();
    let emulator = Emulator::start(EmulatorOptions {
        partition_alive_seconds: Some(3),
        ..EmulatorOptions::exact()
    })
    .await?;
    let db = emulator.items_database().await?;
    let proxy = ChaosProxy::start(emulator.host()).await?;
    let via_proxy = Endpoint::Emulator(proxy.host().to_owned());
    let name: &DatabaseName = &db.name;
    let source = SpannerSource::connect(&via_proxy, name, "Changes").await?;
    // The metadata store connects directly: a transaction cut mid-way stays active on the
    // emulator (it runs one at a time) and stalls every other writer for seconds.
    let store = Arc::new(SpannerStore::connect(&db.endpoint(), name, "Partitions").await?);
    let subscriber = Subscriber::new(
        source,
        store,
        SubscriberOptions {
            start: Some(Timestamp::now()),
            heartbeat_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let collector = Collector::default();
    let stop = CancellationToken::new();
    let mut run = tokio::spawn({
        let (collector, stop) = (collector.clone(), stop.clone());
        async move { subscriber.subscribe(collector, stop).await }
    });

    let cutter = tokio::spawn(cut_every(Arc::new(proxy), Duration::from_millis(1200), 12));
    let wanted = write_items(&db).await?;
    let (cuts, _proxy) = cutter.await?;
    let complete = || (last_seq_per_key(&collector) == wanted).then_some(());
    tokio::select! {
        done = eventually(Duration::from_secs(180), "every mutation after the cuts", async || complete()) => done?,
        ended = &mut run => anyhow::bail!("subscriber stopped: {:?}", ended?),
    }
    stop.cancel();
    run.await??;
    assert_nothing_lost_each_partition_in_order(&collector, &wanted);
    assert!(cuts >= 6, "only {cuts} connections were cut");
    Ok(())
}

/// Cuts every connection through `proxy`, `times` times, `every` apart; returns how many
/// it cut (and the proxy, which must outlive the cuts).
async fn cut_every(
    proxy: Arc<ChaosProxy>,
    every: Duration,
    times: usize,
) -> (usize, Arc<ChaosProxy>) {
    let mut cuts = 0;
    for _ in 0..times {
        tokio::time::sleep(every).await;
        cuts += proxy.cut();
    }
    (cuts, proxy)
}

/// 2,500 single-row commits over 17 keys, `Seq` counting up per key, with short pauses.
/// Returns each key's last `Seq`.
async fn write_items(db: &TestDatabase) -> anyhow::Result<BTreeMap<i64, i64>> {
    let mut seq: BTreeMap<i64, i64> = BTreeMap::new();
    for i in 0..2500i64 {
        let key = i % 17;
        let s = {
            let s = seq.entry(key).or_default();
            *s += 1;
            *s
        };
        let m = insert_or_update("Items", &["Id", "Seq"], &[&key, &s]);
        db.apply(vec![m]).await?;
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(seq)
}

/// The highest `Seq` collected per key.
fn last_seq_per_key(collector: &Collector) -> BTreeMap<i64, i64> {
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for r in collector.records() {
        for m in &r.mods {
            let (Some(k), Some(s)) = (int_member(&m.keys, "Id"), int_member(&m.new_values, "Seq"))
            else {
                continue;
            };
            let e = last.entry(k).or_default();
            *e = (*e).max(s);
        }
    }
    last
}

/// Nothing lost, nothing invented; within each partition, commit order. (Across partitions
/// the emulator moves a key between unrelated lineages, so per-key order is asserted by the
/// tests whose readers keep up, not here, where readers lag in backoff.)
fn assert_nothing_lost_each_partition_in_order(collector: &Collector, wanted: &BTreeMap<i64, i64>) {
    let mut per_key: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut per_partition: HashMap<String, Vec<Timestamp>> = HashMap::new();
    for r in collector.records() {
        per_partition
            .entry(r.partition_token.as_str().to_owned())
            .or_default()
            .push(r.commit_timestamp);
        for m in &r.mods {
            per_key
                .entry(int_member(&m.keys, "Id").expect("Id"))
                .or_default()
                .push(int_member(&m.new_values, "Seq").expect("Seq"));
        }
    }
    for (partition, times) in &per_partition {
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "partition {partition} out of commit order"
        );
    }
    for (key, n) in wanted {
        let mut got = per_key[key].clone();
        got.sort_unstable();
        got.dedup();
        assert_eq!(got, (1..=*n).collect::<Vec<_>>(), "key {key}");
    }
}

/// Panics on the batch after the first one it accepted.
#[derive(Default)]
struct PanicsOnSecondBatch(std::sync::atomic::AtomicUsize);

impl screamer::Consumer for PanicsOnSecondBatch {
    async fn consume(
        &self,
        _: &[screamer::DataChangeRecord],
    ) -> Result<(), screamer::ConsumerError> {
        if self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 1 {
            panic!("consumer bug");
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_reader_ends_the_run_through_the_drain() -> anyhow::Result<()> {
    screamer_tests::init_tracing();
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    let db = emulator.items_database().await?;
    let start = Timestamp::now();
    let store = Arc::new(SpannerStore::connect(&db.endpoint(), &db.name, "Partitions").await?);
    let source = SpannerSource::connect(&db.endpoint(), &db.name, "Changes").await?;
    let subscriber = Subscriber::new(
        source,
        store.clone(),
        SubscriberOptions {
            runner_id: "buggy".into(),
            start: Some(start),
            heartbeat_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let run = tokio::spawn(async move {
        subscriber
            .subscribe(PanicsOnSecondBatch::default(), CancellationToken::new())
            .await
    });
    // Commits a second apart: the reader delivers them in separate batches.
    for seq in 1..=3i64 {
        db.apply(vec![insert_or_update(
            "Items",
            &["Id", "Seq"],
            &[&1i64, &seq],
        )])
        .await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let result = tokio::time::timeout(Duration::from_secs(60), run).await??;
    let error = result.expect_err("the run must fail").to_string();
    assert!(
        error.contains("the reader panicked: consumer bug"),
        "{error}"
    );
    // The drain ran: the runner deregistered and released what it held.
    let status = screamer::PartitionStore::status(&*store, Duration::from_secs(30)).await?;
    assert!(status.runners.is_empty(), "{:?}", status.runners);
    assert!(
        status.partitions.iter().all(|p| p.owner.is_none()),
        "{:?}",
        status.partitions
    );
    Ok(())
}
