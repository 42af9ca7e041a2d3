//! The observation seam on a real stream: what a bounded run reports to its observer matches
//! what it delivered, partition by partition.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use screamer::observe::{Event, Observer};
use screamer::{
    MemoryStore, PartitionToken, SpannerSource, Subscriber, SubscriberOptions, Timestamp,
};
use screamer_tests::{Collector, Emulator, EmulatorOptions};
use tokio_util::sync::CancellationToken;

/// What the observer saw, owned.
#[derive(Default)]
struct Seen {
    /// Commit timestamps read, per partition, in the order reported.
    read: BTreeMap<PartitionToken, Vec<Timestamp>>,
    acknowledged: BTreeMap<PartitionToken, Timestamp>,
    finished: Vec<PartitionToken>,
    claimed: usize,
    lost: usize,
    released: usize,
    checkpoints_refused: usize,
}

#[derive(Default)]
struct Recorder(Mutex<Seen>);

impl Observer for Recorder {
    fn observe(&self, event: Event<'_>) {
        let mut seen = self.0.lock().unwrap();
        match event {
            Event::Read { partition, records } => seen
                .read
                .entry(partition.clone())
                .or_default()
                .extend(records.iter().map(|r| r.commit_timestamp)),
            Event::Acknowledged {
                partition, through, ..
            } => {
                let at = seen
                    .acknowledged
                    .entry(partition.clone())
                    .or_insert(through);
                assert!(through >= *at, "acknowledged position went back");
                *at = through;
            }
            Event::Finished { partition } => seen.finished.push(partition.clone()),
            Event::Claimed { partitions } => seen.claimed += partitions,
            Event::Lost { partitions } => seen.lost += partitions,
            Event::Released { partitions } => seen.released += partitions,
            Event::Checkpointed { lost, .. } => seen.checkpoints_refused += lost,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bounded_run_reports_what_it_read_acknowledged_and_finished() -> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    let db = emulator.items_database().await?;
    let start = Timestamp::now();
    let (_, last) = screamer_tests::items::write(&db, 60, 6, Duration::ZERO).await?;
    let source = SpannerSource::connect(&db.endpoint(), &db.name, "Changes").await?;
    let recorder = Arc::new(Recorder::default());
    let subscriber = Subscriber::new(
        source,
        Arc::new(MemoryStore::new()),
        SubscriberOptions {
            start: Some(start),
            end: Some(last),
            heartbeat_interval: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .with_observer(recorder.clone());
    let collector = Collector::default();
    let summary = subscriber
        .subscribe(collector.clone(), CancellationToken::new())
        .await?;
    assert!(summary.reached_end);

    let seen = recorder.0.lock().unwrap();
    let delivered = collector.records();
    assert_eq!(delivered.len(), 60);
    // Every record delivered was reported as read, under its own partition, in commit order.
    let mut by_partition: BTreeMap<PartitionToken, Vec<Timestamp>> = BTreeMap::new();
    for r in &delivered {
        by_partition
            .entry(r.partition_token.clone())
            .or_default()
            .push(r.commit_timestamp);
    }
    assert_eq!(seen.read, by_partition);
    for stamps in seen.read.values() {
        assert!(stamps.is_sorted(), "records out of commit order");
    }
    // Each partition that delivered records was acknowledged through its last one.
    for (partition, stamps) in &seen.read {
        let through = seen.acknowledged[partition];
        assert!(
            through >= *stamps.last().unwrap(),
            "{partition:?} acknowledged to {through}"
        );
    }
    // One runner, nothing lost: every claimed partition finished exactly once.
    let finished: BTreeSet<&PartitionToken> = seen.finished.iter().collect();
    assert_eq!(
        finished.len(),
        seen.finished.len(),
        "a partition finished twice"
    );
    assert_eq!(seen.finished.len(), summary.partitions_finished);
    assert_eq!(seen.claimed, summary.partitions_finished);
    assert!(seen.finished.contains(&PartitionToken::root()));
    assert_eq!(
        (seen.lost, seen.released, seen.checkpoints_refused),
        (0, 0, 0)
    );
    Ok(())
}
