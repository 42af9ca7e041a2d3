//! The runner against a scripted change source and the in-memory store: children after all
//! parents, sharing, stop and restart, take-over after a crash, rebalancing, and failure,
//! with tokio's paused time.

use std::collections::BTreeSet;

use tokio::task::JoinHandle;
use tokio::time::Instant;

mod snapshot;
mod transactions;

use super::*;
use crate::partition::PartitionState;
use crate::source::{ScriptedSource, ScriptedTransaction};
use crate::testing::{Collect, FreezableStore, at, data, id, until};

/// A scripted stream read until `at(100)`, a shared in-memory store, and runners on them.
struct Stream {
    source: ScriptedSource,
    store: Arc<FreezableStore>,
}

type Running = JoinHandle<Result<RunSummary, SubscribeError>>;

impl Stream {
    fn new() -> Self {
        Self {
            source: ScriptedSource::new(),
            store: Arc::new(FreezableStore::new()),
        }
    }

    fn options(runner: &str, max_connections: usize) -> SubscriberOptions {
        SubscriberOptions {
            runner_id: RunnerId::from(runner.to_owned()),
            start: Some(at(0)),
            end: Some(at(100)),
            heartbeat_interval: Duration::from_secs(1),
            max_connections,
            checkpoint_interval: Duration::from_secs(1),
            poll_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(2),
            lease_duration: Duration::from_secs(6),
            ..SubscriberOptions::default()
        }
    }

    fn run(
        &self,
        options: SubscriberOptions,
        consumer: &Arc<Collect>,
        shutdown: &CancellationToken,
    ) -> Running {
        let subscriber = Subscriber::new(self.source.clone(), self.store.clone(), options);
        let (consumer, shutdown) = (Arc::clone(consumer), shutdown.clone());
        tokio::spawn(async move { subscriber.subscribe(consumer, shutdown).await })
    }

    /// Pushes one transaction of one row to `partition`, committed at `second`, then a
    /// heartbeat that closes its timestamp (so a stop right after repeats nothing).
    fn write(&self, partition: &PartitionToken, second: u64) -> (String, String) {
        let t = ScriptedTransaction::new(&format!("{partition}@{second}"), at(second))
            .insert("Accounts", second as i64);
        let record = t.record(0, partition);
        let written = id(&data(record.clone()));
        self.source.push(partition, [record]);
        self.source.heartbeat(
            partition,
            at(second).saturating_add(Duration::from_millis(500)),
        );
        written
    }

    /// Asserts that no runner is registered and that no unfinished partition has an owner.
    async fn assert_released(&self) {
        let status = self.store.status(Duration::from_secs(6)).await.unwrap();
        assert!(status.runners.is_empty(), "the runner deregistered");
        let mut unfinished = status
            .partitions
            .iter()
            .filter(|p| p.state != PartitionState::Finished)
            .peekable();
        assert!(unfinished.peek().is_some(), "{status:?}");
        assert!(unfinished.all(|p| p.owner.is_none()), "{status:?}");
    }

    /// Splits the root at `at(1)` into `children`.
    fn split(&self, children: &[PartitionToken]) {
        self.source
            .end_with_children(&PartitionToken::root(), at(1), children, &[]);
    }

    /// Ends every one of `partitions` (past the run's end).
    fn end(&self, partitions: &[PartitionToken]) {
        for p in partitions {
            self.source.heartbeat(p, at(101));
        }
    }
}

/// The end of a run, within an hour of (paused) time.
async fn ended(run: Running) -> Result<RunSummary, SubscribeError> {
    tokio::time::timeout(Duration::from_secs(3600), run)
        .await
        .expect("the run ends")
        .expect("the run does not panic")
}

fn tokens(names: &[&str]) -> Vec<PartitionToken> {
    names.iter().map(|n| PartitionToken::from(*n)).collect()
}

/// The partitions `consumer` was given records of.
fn partitions_of(consumer: &Collect) -> BTreeSet<PartitionToken> {
    consumer
        .records()
        .into_iter()
        .map(|r| r.partition_token)
        .collect()
}

fn sorted(mut ids: Vec<(String, String)>) -> Vec<(String, String)> {
    ids.sort();
    ids
}

#[tokio::test(start_paused = true)]
async fn a_merged_child_starts_only_after_every_parent_finished() {
    let s = Stream::new();
    let (parents, merged) = (tokens(&["a", "b"]), tokens(&["c"]));
    let (a, b, c) = (&parents[0], &parents[1], &merged[0]);
    s.split(&parents);
    let mut written = vec![s.write(a, 3), s.write(b, 4)];
    s.source.end_with_children(a, at(5), &merged, &parents);
    let consumer = Arc::new(Collect::default());
    let run = s.run(
        Stream::options("r", 10),
        &consumer,
        &CancellationToken::new(),
    );
    until("a and b delivered", || consumer.records().len() == 2).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        !s.source.queries().iter().any(|(p, _)| p == c),
        "c started while b is still open"
    );
    s.source.end_with_children(b, at(6), &merged, &parents);
    written.push(s.write(c, 7));
    s.end(&merged);
    let summary = ended(run).await.unwrap();
    assert!(summary.reached_end);
    assert_eq!(summary.partitions_finished, 4);
    assert_eq!(consumer.ids(), written);
    let c_queries: Vec<_> = s
        .source
        .queries()
        .into_iter()
        .filter(|(p, _)| p == c)
        .collect();
    assert_eq!(
        c_queries,
        vec![(c.clone(), at(5))],
        "c starts where a announced it"
    );
}

#[tokio::test(start_paused = true)]
async fn two_runners_share_the_partitions_and_deliver_each_record_once() {
    let s = Stream::new();
    let children = tokens(&["p1", "p2", "p3", "p4"]);
    s.split(&children);
    let mut written: Vec<_> = children.iter().map(|p| s.write(p, 2)).collect();
    let (x, y) = (Arc::new(Collect::default()), Arc::new(Collect::default()));
    let shutdown = CancellationToken::new();
    let run_x = s.run(Stream::options("x", 2), &x, &shutdown);
    let run_y = s.run(Stream::options("y", 2), &y, &shutdown);
    until("every partition read", || {
        x.records().len() + y.records().len() == 4
    })
    .await;
    // Each runner holds at most two: they split the four between them.
    let (px, py) = (partitions_of(&x), partitions_of(&y));
    assert_eq!((px.len(), py.len()), (2, 2));
    assert!(px.is_disjoint(&py));
    written.extend(children.iter().map(|p| s.write(p, 3)));
    s.end(&children);
    for run in [run_x, run_y] {
        assert!(ended(run).await.unwrap().reached_end);
    }
    assert_eq!(
        partitions_of(&x),
        px,
        "a runner read only its own partitions"
    );
    assert_eq!(sorted([x.ids(), y.ids()].concat()), sorted(written));
}

#[tokio::test(start_paused = true)]
async fn a_graceful_stop_then_a_restart_repeats_and_loses_nothing() {
    let s = Stream::new();
    let children = tokens(&["p1", "p2"]);
    s.split(&children);
    let mut written: Vec<_> = children.iter().map(|p| s.write(p, 2)).collect();
    let first = Arc::new(Collect::default());
    let shutdown = CancellationToken::new();
    let run = s.run(Stream::options("first", 10), &first, &shutdown);
    until("both partitions read", || first.records().len() == 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown.cancel();
    let summary = ended(run).await.unwrap();
    assert!(!summary.reached_end);
    s.assert_released().await;

    written.extend(children.iter().map(|p| s.write(p, 3)));
    s.end(&children);
    let second = Arc::new(Collect::default());
    let run = s.run(
        Stream::options("second", 10),
        &second,
        &CancellationToken::new(),
    );
    assert!(ended(run).await.unwrap().reached_end);
    assert_eq!(
        sorted([first.ids(), second.ids()].concat()),
        sorted(written)
    );
}

#[tokio::test(start_paused = true)]
async fn a_crashed_runners_partitions_are_taken_over_after_the_lease() {
    let s = Stream::new();
    let children = tokens(&["p1", "p2"]);
    s.split(&children);
    let mut written: Vec<_> = children.iter().map(|p| s.write(p, 2)).collect();
    let crashed = Arc::new(Collect::default());
    let run = s.run(
        Stream::options("crashed", 10),
        &crashed,
        &CancellationToken::new(),
    );
    until("both partitions read", || crashed.records().len() == 2).await;
    // A checkpoint lands, then the process dies: no drain, no release, no heartbeat.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    run.abort();
    let died = Instant::now();

    written.extend(children.iter().map(|p| s.write(p, 3)));
    s.end(&children);
    let heir = Arc::new(Collect::default());
    let run = s.run(
        Stream::options("heir", 10),
        &heir,
        &CancellationToken::new(),
    );
    until("the heir read", || heir.records().len() == 2).await;
    // The lease runs from the last heartbeat, at most a third of it before the crash.
    assert!(
        died.elapsed() >= Duration::from_secs(4),
        "taken within the lease"
    );
    assert!(ended(run).await.unwrap().reached_end);
    // Resumed from the checkpoints: nothing repeated (each timestamp was closed), nothing lost.
    assert_eq!(
        sorted([crashed.ids(), heir.ids()].concat()),
        sorted(written)
    );
}

#[tokio::test(start_paused = true)]
async fn rebalancing_hands_a_new_runner_its_fair_share() {
    let s = Stream::new();
    let children = tokens(&["p1", "p2", "p3", "p4"]);
    s.split(&children);
    let mut written: Vec<_> = children.iter().map(|p| s.write(p, 2)).collect();
    let rebalancing = |runner| SubscriberOptions {
        rebalancing_interval: Some(Duration::from_secs(2)),
        ..Stream::options(runner, 10)
    };
    let (x, y) = (Arc::new(Collect::default()), Arc::new(Collect::default()));
    let shutdown = CancellationToken::new();
    let run_x = s.run(rebalancing("x"), &x, &shutdown);
    until("x reads all four", || x.records().len() == 4).await;
    let run_y = s.run(rebalancing("y"), &y, &shutdown);
    tokio::time::sleep(Duration::from_secs(20)).await;
    written.extend(children.iter().map(|p| s.write(p, 30)));
    until("the new records read", || {
        x.records().len() + y.records().len() == 8
    })
    .await;
    assert_eq!(partitions_of(&y).len(), 2, "y got its fair share");
    s.end(&children);
    let summary = ended(run_x).await.unwrap();
    assert_eq!(summary.partitions_released, 2);
    assert!(ended(run_y).await.unwrap().reached_end);
    assert_eq!(sorted([x.ids(), y.ids()].concat()), sorted(written));
}

#[tokio::test(start_paused = true)]
async fn a_failed_reader_ends_the_run_and_releases_every_lease() {
    let s = Stream::new();
    let children = tokens(&["p1", "p2"]);
    s.split(&children);
    s.write(&children[0], 2);
    let run = s.run(
        Stream::options("r", 10),
        &Arc::new(Collect::failing()),
        &CancellationToken::new(),
    );
    let error = ended(run).await.unwrap_err();
    assert!(
        matches!(error, SubscribeError::Reader(ReaderError::Consumer { .. })),
        "{error}"
    );
    s.assert_released().await;
}

#[tokio::test(start_paused = true)]
async fn a_lapsed_runner_halts_its_readers_and_rejoins_once_its_heartbeat_lands() {
    let s = Stream::new();
    let children = tokens(&["p1", "p2"]);
    s.split(&children);
    let mut written: Vec<_> = children.iter().map(|p| s.write(p, 2)).collect();
    let (paused, other) = (Arc::new(Collect::default()), Arc::new(Collect::default()));
    let shutdown = CancellationToken::new();
    let run_paused = s.run(Stream::options("paused", 10), &paused, &shutdown);
    until("both partitions read", || paused.records().len() == 2).await;
    let run_other = s.run(Stream::options("other", 10), &other, &shutdown);
    // Cut off: its heartbeats hang, so it lapses and the other takes its partitions.
    s.store.freeze("paused");
    tokio::time::sleep(Duration::from_secs(20)).await;
    written.extend(children.iter().map(|p| s.write(p, 3)));
    until("the other reads on", || other.records().len() >= 2).await;
    let status = s.store.status(Duration::from_secs(6)).await.unwrap();
    let reading: Vec<_> = status
        .partitions
        .iter()
        .filter(|p| p.state != PartitionState::Finished)
        .map(|p| p.owner.as_ref().map(|o| o.as_str().to_owned()))
        .collect();
    assert_eq!(reading, vec![Some("other".to_owned()); 2], "{status:?}");
    // Back again: it rejoins, and holds nothing the other holds.
    s.store.thaw("paused");
    tokio::time::sleep(Duration::from_secs(20)).await;
    written.extend(children.iter().map(|p| s.write(p, 4)));
    s.end(&children);
    let summary = ended(run_paused).await.unwrap();
    assert!(summary.partitions_lost >= 2, "{summary:?}");
    assert!(ended(run_other).await.unwrap().reached_end);
    // At least once: records at a halted reader's last timestamp may repeat; none is lost,
    // and no record is delivered by both after the lapse.
    let mut all = [paused.ids(), other.ids()].concat();
    all.sort();
    all.dedup();
    assert_eq!(all, sorted(written));
}
