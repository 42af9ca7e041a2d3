//! `--ordering transactions` through whole subscribers over a scripted change source: the
//! cross-partition cases the emulator cannot produce (it writes every transaction to one
//! partition), and the same script in `key` mode to show the test can tell.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ordering::Ordering;
use crate::ordering::testing::{assert_whole_in_order, p, spread};
use crate::partition::{PartitionState, PartitionStore, PartitionToken, RunnerId};
use crate::record::DataChangeRecord;
use crate::source::ScriptedSource;
use crate::subscriber::{RunSummary, SubscribeError, Subscriber, SubscriberOptions};
use crate::testing::{Collect, FreezableStore, at, until};

/// Runs of one subscriber over a scripted stream read until `at(100)`.
struct Run {
    source: ScriptedSource,
    store: Arc<FreezableStore>,
}

impl Run {
    fn new() -> Self {
        Self {
            source: ScriptedSource::new(),
            store: Arc::new(FreezableStore::new()),
        }
    }

    fn start(
        &self,
        runner: &str,
        ordering: Ordering,
        consumer: &Arc<Collect>,
        shutdown: &CancellationToken,
    ) -> tokio::task::JoinHandle<Result<RunSummary, SubscribeError>> {
        let options = SubscriberOptions {
            runner_id: RunnerId::from(runner.to_owned()),
            start: Some(at(0)),
            end: Some(at(100)),
            heartbeat_interval: Duration::from_secs(1),
            checkpoint_interval: Duration::from_secs(1),
            poll_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(2),
            lease_duration: Duration::from_secs(6),
            ordering,
            ..SubscriberOptions::default()
        };
        let subscriber = Subscriber::new(self.source.clone(), self.store.clone(), options);
        let (consumer, shutdown) = (Arc::clone(consumer), shutdown.clone());
        tokio::spawn(async move { subscriber.subscribe(consumer, shutdown).await })
    }

    /// Splits the root at `at(1)` into `p1` and `p2`, and commits `t1` at `at(2)` with a
    /// record in each, both read through `at(5)`.
    fn split_with_t1(&self) -> (PartitionToken, PartitionToken) {
        let (p1, p2) = (p("p1"), p("p2"));
        self.source.end_with_children(
            &PartitionToken::root(),
            at(1),
            &[p1.clone(), p2.clone()],
            &[],
        );
        self.push(&spread("t1", 2, &[&p1, &p2]).1);
        self.heartbeat(&[&p1, &p2], 5);
        (p1, p2)
    }

    fn push(&self, records: &[(PartitionToken, DataChangeRecord)]) {
        for (partition, r) in records {
            self.source
                .push(partition, [crate::record::ChangeRecord::Data(r.clone())]);
        }
    }

    fn heartbeat(&self, partitions: &[&PartitionToken], second: u64) {
        for partition in partitions {
            self.source.heartbeat(partition, at(second));
        }
    }
}

async fn ended(run: tokio::task::JoinHandle<Result<RunSummary, SubscribeError>>) -> RunSummary {
    tokio::time::timeout(Duration::from_secs(3600), run)
        .await
        .expect("the run ends")
        .expect("the run does not panic")
        .expect("the run succeeds")
}

/// Transactions over three partitions, interleaved in time, with a lagging partition,
/// heartbeats, a merge and a move between them. Returns the transactions in commit order.
async fn churn(run: &Run) -> Vec<&'static str> {
    let (p1, p2, p3, m, q) = (p("p1"), p("p2"), p("p3"), p("m"), p("q"));
    run.source.end_with_children(
        &PartitionToken::root(),
        at(1),
        &[p1.clone(), p2.clone(), p3.clone()],
        &[],
    );
    // t0 (p3 only) commits with t1: equal timestamps across partitions.
    let (_, t0) = spread("t0", 2, &[&p3]);
    let (_, t1) = spread("t1", 2, &[&p1, &p2]);
    let (_, t2) = spread("t2", 3, &[&p3, &p1, &p2]);
    let (_, t3) = spread("t3", 4, &[&p2]);
    // p3 lags: everyone else shows its records of t1..t3 first.
    run.push(&[t1[0].clone(), t2[1].clone()]);
    run.push(&[t1[1].clone(), t2[2].clone(), t3[0].clone()]);
    run.heartbeat(&[&p1, &p2], 10);
    until("p1, p2 and p3 queried", || {
        let queried: Vec<_> = run.source.queries().into_iter().map(|(t, _)| t).collect();
        [&p1, &p2, &p3].iter().all(|p| queried.contains(p))
    })
    .await;
    // p1 and p2 are read while p3 shows nothing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    run.push(&[t0[0].clone(), t2[0].clone()]);
    run.heartbeat(&[&p3], 10);
    // p1 and p2 merge into m; p3 moves to q.
    for parent in [&p1, &p2] {
        run.source.end_with_children(
            parent,
            at(11),
            std::slice::from_ref(&m),
            &[p1.clone(), p2.clone()],
        );
    }
    let (_, t4) = spread("t4", 12, &[&m, &p3]);
    let (_, t5) = spread("t5", 14, &[&p3]);
    run.push(&[t4[0].clone(), t4[1].clone(), t5[0].clone()]);
    run.source.end_with_children(
        &p3,
        at(20),
        std::slice::from_ref(&q),
        std::slice::from_ref(&p3),
    );
    let (_, t6) = spread("t6", 21, &[&q, &q]);
    run.push(&t6);
    run.heartbeat(&[&m, &q], 101);
    vec!["t0", "t1", "t2", "t3", "t4", "t5", "t6"]
}

#[tokio::test(start_paused = true)]
async fn transactions_come_out_whole_and_in_commit_order_across_partitions() {
    let run = Run::new();
    let consumer = Arc::new(Collect::default());
    let running = run.start(
        "r",
        Ordering::Transactions,
        &consumer,
        &CancellationToken::new(),
    );
    let expected = churn(&run).await;
    let summary = ended(running).await;
    assert!(summary.reached_end);
    assert_whole_in_order(&consumer.records(), &expected);
}

#[tokio::test(start_paused = true)]
async fn key_ordering_interleaves_the_same_script() {
    let run = Run::new();
    let consumer = Arc::new(Collect::default());
    let running = run.start("r", Ordering::Key, &consumer, &CancellationToken::new());
    let expected = churn(&run).await;
    ended(running).await;
    let records = consumer.records();
    assert_eq!(records.len(), 12, "every record");
    let outcome = std::panic::catch_unwind(|| assert_whole_in_order(&records, &expected));
    assert!(
        outcome.is_err(),
        "key ordering interleaves transactions (the test can tell)"
    );
}

#[tokio::test(start_paused = true)]
async fn checkpoints_wait_for_held_records_and_a_restart_repeats_and_loses_nothing() {
    let run = Run::new();
    let (p1, p2) = (p("p1"), p("p2"));
    run.source.end_with_children(
        &PartitionToken::root(),
        at(1),
        &[p1.clone(), p2.clone()],
        &[],
    );
    let (_, t1) = spread("t1", 2, &[&p1, &p2]);
    let (_, t2) = spread("t2", 3, &[&p1]);
    run.push(&[t1[0].clone(), t2[0].clone()]);
    run.heartbeat(&[&p1], 10);
    let first = Arc::new(Collect::default());
    let shutdown = CancellationToken::new();
    let running = run.start("first", Ordering::Transactions, &first, &shutdown);
    until("p1 read", || {
        run.store
            .snapshot()
            .iter()
            .any(|row| row.token == p1 && row.state == PartitionState::Running)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    shutdown.cancel();
    ended(running).await;
    assert!(
        first.records().is_empty(),
        "p2 never read past t1: nothing released"
    );
    let p1_row = run
        .store
        .snapshot()
        .into_iter()
        .find(|r| r.token == p1)
        .unwrap();
    assert!(
        p1_row.watermark <= at(2),
        "p1's checkpoint stays at t1: {}",
        p1_row.watermark
    );

    run.push(&[t1[1].clone()]);
    run.heartbeat(&[&p1, &p2], 101);
    let second = Arc::new(Collect::default());
    ended(run.start(
        "second",
        Ordering::Transactions,
        &second,
        &CancellationToken::new(),
    ))
    .await;
    assert_whole_in_order(&second.records(), &["t1", "t2"]);
}

#[tokio::test(start_paused = true)]
async fn one_runner_is_active_and_another_takes_over_when_it_stops() {
    let run = Run::new();
    let (p1, p2) = run.split_with_t1();
    let (first, standby) = (Arc::new(Collect::default()), Arc::new(Collect::default()));
    let stop_first = CancellationToken::new();
    let running = run.start("first", Ordering::Transactions, &first, &stop_first);
    until("t1 released", || first.records().len() == 2).await;
    let waiting = run.start(
        "standby",
        Ordering::Transactions,
        &standby,
        &CancellationToken::new(),
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    let status = run.store.status(Duration::from_secs(6)).await.unwrap();
    assert_eq!(status.active, Some(RunnerId::from("first".to_owned())));
    assert!(
        status
            .partitions
            .iter()
            .all(|p| p.owner.as_ref().is_none_or(|o| o.as_str() == "first")),
        "the standby holds nothing: {status:?}"
    );
    stop_first.cancel();
    ended(running).await;
    let (_, t2) = spread("t2", 7, &[&p2, &p1]);
    run.push(&t2);
    run.heartbeat(&[&p1, &p2], 101);
    ended(waiting).await;
    assert_whole_in_order(&first.records(), &["t1"]);
    assert_whole_in_order(&standby.records(), &["t2"]);
}

#[tokio::test(start_paused = true)]
async fn a_tiny_buffer_with_a_hot_partition_and_a_huge_transaction_still_progresses() {
    let run = Run::new();
    let (hot, late) = (p("hot"), p("late"));
    let idle: Vec<PartitionToken> = (0..8).map(|i| p(&format!("idle{i}"))).collect();
    let mut children = idle.clone();
    children.extend([hot.clone(), late.clone()]);
    run.source
        .end_with_children(&PartitionToken::root(), at(1), &children, &[]);
    // A transaction of 300 records, far more than the buffer holds, then many small ones
    // that fill it while `late` shows nothing.
    let (_, huge) = spread("huge", 3, &vec![&hot; 300]);
    run.push(&huge);
    let small: Vec<String> = (4..60).map(|second| format!("small{second:02}")).collect();
    for (id, second) in small.iter().zip(4..60) {
        run.push(&spread(id, second, &[&hot]).1);
        for partition in &idle {
            run.source.heartbeat(partition, at(second));
        }
    }
    let consumer = Arc::new(Collect::default());
    let options = SubscriberOptions {
        runner_id: RunnerId::from("tiny".to_owned()),
        start: Some(at(0)),
        end: Some(at(100)),
        ordering: Ordering::Transactions,
        ordering_buffer: 2_000,
        lease_duration: Duration::from_secs(6),
        ..SubscriberOptions::default()
    };
    let subscriber = Subscriber::new(run.source.clone(), run.store.clone(), options);
    let c = Arc::clone(&consumer);
    let running =
        tokio::spawn(async move { subscriber.subscribe(c, CancellationToken::new()).await });
    until("late queried", || {
        run.source.queries().iter().any(|(t, _)| *t == late)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        consumer.records().is_empty(),
        "nothing passes a partition not read yet"
    );
    // The buffer is full of `hot`; `late`, the slowest, must still get its record in.
    run.push(&spread("early", 2, &[&late]).1);
    run.heartbeat(&children.iter().collect::<Vec<_>>(), 101);
    let summary = ended(running).await;
    assert!(summary.reached_end);
    let mut expected = vec!["early", "huge"];
    expected.extend(small.iter().map(String::as_str));
    assert_whole_in_order(&consumer.records(), &expected);
}

#[tokio::test(start_paused = true)]
async fn a_lapsed_active_runner_stands_by_and_the_other_becomes_active() {
    let run = Run::new();
    let (p1, p2) = run.split_with_t1();
    let (first, second) = (Arc::new(Collect::default()), Arc::new(Collect::default()));
    let stop_second = CancellationToken::new();
    let running_first = run.start(
        "first",
        Ordering::Transactions,
        &first,
        &CancellationToken::new(),
    );
    until("t1 released", || first.records().len() == 2).await;
    let running_second = run.start("second", Ordering::Transactions, &second, &stop_second);
    // The active runner is cut off: the other becomes active and reads on.
    run.store.freeze("first");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (_, t2) = spread("t2", 7, &[&p2, &p1]);
    run.push(&t2);
    run.heartbeat(&[&p1, &p2], 9);
    until("t2 released by the second", || second.records().len() == 2).await;
    // Back, the first stands by...
    run.store.thaw("first");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let active = |name: &str| Some(RunnerId::from(name.to_owned()));
    let status = run.store.status(Duration::from_secs(6)).await.unwrap();
    assert_eq!(status.active, active("second"));
    // ...until the second stops: then it is active again, from the second's checkpoints.
    stop_second.cancel();
    ended(running_second).await;
    let (_, t3) = spread("t3", 11, &[&p1]);
    run.push(&t3);
    run.heartbeat(&[&p1, &p2], 12);
    until("t3 released by the first", || first.records().len() == 3).await;
    let status = run.store.status(Duration::from_secs(6)).await.unwrap();
    assert_eq!(status.active, active("first"));
    run.heartbeat(&[&p1, &p2], 101);
    ended(running_first).await;
    assert_whole_in_order(&first.records(), &["t1", "t3"]);
    assert_whole_in_order(&second.records(), &["t2"]);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_reader_proceeds_once_it_becomes_the_slowest() {
    let run = Run::new();
    let (hot, quiet) = (p("hot"), p("quiet"));
    run.source.end_with_children(
        &PartitionToken::root(),
        at(1),
        &[hot.clone(), quiet.clone()],
        &[],
    );
    let consumer = Arc::new(Collect::default());
    let options = SubscriberOptions {
        runner_id: RunnerId::from("r".to_owned()),
        start: Some(at(0)),
        end: Some(at(100)),
        ordering: Ordering::Transactions,
        ordering_buffer: 1,
        ..SubscriberOptions::default()
    };
    let subscriber = Subscriber::new(run.source.clone(), run.store.clone(), options);
    let c = Arc::clone(&consumer);
    let running =
        tokio::spawn(async move { subscriber.subscribe(c, CancellationToken::new()).await });
    until("both queried", || run.source.queries().len() == 3).await;
    // `hot` fills the buffer while `quiet` shows nothing: its next batch waits...
    run.push(&spread("a", 5, &[&hot]).1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.push(&spread("b", 6, &[&hot]).1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // ...until `quiet` moves past it (and goes on: an ending partition would wake everyone
    // anyway): then `hot` is the slowest and must get in, though nothing was released.
    run.heartbeat(&[&quiet], 50);
    run.heartbeat(&[&hot], 50);
    until("a and b released", || consumer.records().len() == 2).await;
    run.heartbeat(&[&quiet, &hot], 101);
    ended(running).await;
    assert_whole_in_order(&consumer.records(), &["a", "b"]);
}
