//! The reader against a scripted change source and the in-memory store: positions, ends,
//! restarts, drain, halt and failures, with tokio's paused time.

use gcloud_gax::grpc::{Code, Status};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::*;
use crate::observe::NoObserver;
use crate::partition::MemoryStore;
use crate::source::{ScriptedSource, ScriptedTransaction};
use crate::testing::{Collect, at, id};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// One partition (the root, from `at(0)`) claimed by one runner, a scripted source and a
/// consumer.
struct Fixture {
    source: ScriptedSource,
    store: Arc<MemoryStore>,
    consumer: Arc<Collect>,
    ctx: Arc<ReaderContext<Direct<Arc<Collect>>>>,
    root: PartitionToken,
}

impl Fixture {
    fn new(consumer: Collect) -> Self {
        let source = ScriptedSource::new();
        let store = Arc::new(MemoryStore::new());
        let runner = RunnerId::from("reader-test".to_owned());
        let consumer = Arc::new(consumer);
        let ctx = Arc::new(ReaderContext {
            runner: runner.clone(),
            source: Arc::new(source.clone()),
            store: store.clone(),
            checkpoints: Arc::new(Checkpointer::new(
                store.clone(),
                &runner,
                Arc::new(NoObserver),
            )),
            sink: Arc::new(Direct(Arc::clone(&consumer))),
            observer: Arc::new(NoObserver),
            drain_timeout: Duration::from_secs(10),
        });
        Self {
            source,
            store,
            consumer,
            ctx,
            root: PartitionToken::root(),
        }
    }

    /// Claims the root partition (read until `end`) and starts its reader.
    async fn start(
        &self,
        end: Option<Timestamp>,
    ) -> (
        JoinHandle<Result<ReaderOutcome, ReaderError>>,
        watch::Sender<StopMode>,
    ) {
        let root = NewPartition {
            token: self.root.clone(),
            parents: vec![],
            start: at(0),
            end,
            heartbeat_millis: 1000,
        };
        self.store.seed(vec![root]).await.unwrap();
        self.store.heartbeat(&self.ctx.runner, 1).await.unwrap();
        let claim = self
            .store
            .claim(&self.ctx.runner, 1, Duration::from_secs(30))
            .await
            .unwrap()
            .pop()
            .expect("the root is claimable");
        self.ctx
            .checkpoints
            .hold(&claim.lease, claim.partition.watermark);
        let (tx, stop) = StopSignal::new();
        let reader = tokio::spawn(run(
            Arc::clone(&self.ctx),
            claim.partition,
            claim.lease,
            stop,
        ));
        (reader, tx)
    }

    /// The root's stored row after a checkpoint.
    async fn stored(&self) -> PartitionMetadata {
        self.ctx.checkpoints.flush().await.unwrap();
        self.store
            .snapshot()
            .into_iter()
            .find(|p| p.token == self.root)
            .unwrap()
    }

    /// Pushes the records of `transactions` to the root.
    fn push(&self, transactions: &[&ScriptedTransaction]) {
        for t in transactions {
            self.source.push(&self.root, t.records(&self.root));
        }
    }
}

/// How the reader ended, within an hour of (paused) time.
async fn ended(
    reader: JoinHandle<Result<ReaderOutcome, ReaderError>>,
) -> Result<ReaderOutcome, ReaderError> {
    tokio::time::timeout(Duration::from_secs(3600), reader)
        .await
        .expect("the reader ends")
        .expect("the reader does not panic")
}

fn transaction(id: &str, second: u64, rows: i64) -> ScriptedTransaction {
    (0..rows).fold(ScriptedTransaction::new(id, at(second)), |t, key| {
        t.insert("Accounts", key)
    })
}

/// The identities of `transactions`' records, in order.
fn ids_of(transactions: &[&ScriptedTransaction]) -> Vec<(String, String)> {
    let root = PartitionToken::root();
    transactions
        .iter()
        .flat_map(|t| t.records(&root))
        .map(|r| id(&crate::testing::data(r)))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn delivers_in_commit_order_and_finishes_at_the_stream_end() {
    let f = Fixture::new(Collect::default());
    let (a, b, c) = (
        transaction("a", 1, 2),
        transaction("b", 2, 1),
        transaction("c", 3, 3),
    );
    f.push(&[&a, &b, &c]);
    f.source.close(&f.root);
    let (reader, _stop) = f.start(None).await;
    assert_eq!(ended(reader).await.unwrap(), ReaderOutcome::Finished);
    assert_eq!(f.consumer.ids(), ids_of(&[&a, &b, &c]));
    let row = f.store.snapshot().pop().unwrap();
    assert_eq!(row.state, PartitionState::Finished);
    assert_eq!(row.watermark, at(3));
}

#[tokio::test(start_paused = true)]
async fn the_end_timestamp_is_inclusive() {
    let f = Fixture::new(Collect::default());
    let (a, b, c) = (
        transaction("a", 1, 1),
        transaction("b", 2, 1),
        transaction("c", 3, 1),
    );
    f.push(&[&a, &b, &c]);
    let (reader, _stop) = f.start(Some(at(2))).await;
    assert_eq!(ended(reader).await.unwrap(), ReaderOutcome::Finished);
    assert_eq!(f.consumer.ids(), ids_of(&[&a, &b]));
    assert_eq!(f.store.snapshot().pop().unwrap().watermark, at(2));
}

#[tokio::test(start_paused = true)]
async fn children_are_recorded_with_every_parent() {
    let f = Fixture::new(Collect::default());
    let children: [PartitionToken; 2] = ["left".into(), "right".into()];
    f.push(&[&transaction("a", 1, 1)]);
    f.source.end_with_children(&f.root, at(2), &children, &[]);
    let (reader, _stop) = f.start(None).await;
    assert_eq!(ended(reader).await.unwrap(), ReaderOutcome::Finished);
    let rows = f.store.snapshot();
    for child in &children {
        let row = rows
            .iter()
            .find(|p| &p.token == child)
            .expect("child recorded");
        assert_eq!(row.parents, vec![f.root.clone()], "{child:?}");
        assert_eq!(row.start, at(2));
        assert_eq!(row.state, PartitionState::Created);
    }
}

#[tokio::test(start_paused = true)]
async fn a_transient_error_restarts_the_query_from_the_watermark() {
    let f = Fixture::new(Collect::default());
    let (a, b) = (transaction("a", 1, 2), transaction("b", 5, 1));
    f.push(&[&a]);
    f.source.heartbeat(&f.root, at(3));
    f.source.fail(
        &f.root,
        SourceError::Grpc(Status::new(Code::Unavailable, "gone")),
    );
    f.push(&[&b]);
    f.source.close(&f.root);
    let (reader, _stop) = f.start(None).await;
    assert_eq!(ended(reader).await.unwrap(), ReaderOutcome::Finished);
    // Nothing repeated: the heartbeat closed `a`'s timestamp before the error.
    assert_eq!(f.consumer.ids(), ids_of(&[&a, &b]));
    let closed = at(1).saturating_add(Duration::from_nanos(1));
    assert_eq!(
        f.source.queries(),
        vec![(f.root.clone(), at(0)), (f.root.clone(), closed)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_fails_the_reader_and_keeps_the_position() {
    let f = Fixture::new(Collect::default());
    f.push(&[&transaction("a", 1, 1)]);
    f.source.heartbeat(&f.root, at(2));
    f.source.fail(
        &f.root,
        SourceError::StartOutOfRange {
            start: at(0).to_string(),
            message: "too old".into(),
        },
    );
    let (reader, _stop) = f.start(None).await;
    let error = ended(reader).await.unwrap_err();
    assert!(matches!(error, ReaderError::Source { .. }), "{error}");
    assert_eq!(error.kind(), FailureKind::Input);
    assert_eq!(f.stored().await.state, PartitionState::Running);
}

#[tokio::test(start_paused = true)]
async fn a_consumer_failure_fails_the_reader_without_moving_the_watermark() {
    let f = Fixture::new(Collect::failing());
    f.push(&[&transaction("a", 1, 1)]);
    let (reader, _stop) = f.start(None).await;
    let error = ended(reader).await.unwrap_err();
    assert!(matches!(error, ReaderError::Consumer { .. }), "{error}");
    assert_eq!(f.stored().await.watermark, at(0));
}

#[tokio::test(start_paused = true)]
async fn a_drain_delivers_the_rest_of_the_watermark_timestamp_then_stops() {
    let f = Fixture::new(Collect::default());
    let a = transaction("a", 1, 2);
    let later = transaction("b", 2, 1);
    f.source.push(&f.root, [a.record(0, &f.root)]);
    let (reader, stop) = f.start(None).await;
    while f.consumer.records().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(StopMode::Drain).unwrap();
    // The rest of `a` shares the watermark's timestamp: delivered; `b` is not.
    f.source.push(&f.root, [a.record(1, &f.root)]);
    f.push(&[&later]);
    assert_eq!(ended(reader).await.unwrap(), ReaderOutcome::Stopped);
    assert_eq!(f.consumer.ids(), ids_of(&[&a]));
    // A restart reads from `b`'s time: nothing repeated, nothing lost.
    assert_eq!(f.stored().await.watermark, at(2));
}

#[tokio::test(start_paused = true)]
async fn a_drain_gives_up_at_its_deadline() {
    let f = Fixture::new(Collect::default());
    f.push(&[&transaction("a", 1, 1)]);
    let (reader, stop) = f.start(None).await;
    while f.consumer.records().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = Instant::now();
    stop.send(StopMode::Drain).unwrap();
    assert_eq!(ended(reader).await.unwrap(), ReaderOutcome::Stopped);
    assert_eq!(asked.elapsed(), f.ctx.drain_timeout);
    // At least once: a restart repeats what was committed at the watermark.
    assert_eq!(f.stored().await.watermark, at(1));
}

#[tokio::test(start_paused = true)]
async fn a_drain_at_a_closed_position_stops_at_once() {
    let f = Fixture::new(Collect::default());
    f.push(&[&transaction("a", 1, 1)]);
    f.source.heartbeat(&f.root, at(2));
    let (reader, stop) = f.start(None).await;
    while f.consumer.records().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the heartbeat close the watermark.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let asked = Instant::now();
    stop.send(StopMode::Drain).unwrap();
    assert_eq!(ended(reader).await.unwrap(), ReaderOutcome::Stopped);
    assert!(asked.elapsed() < f.ctx.drain_timeout);
    assert_eq!(
        f.stored().await.watermark,
        at(1).saturating_add(Duration::from_nanos(1))
    );
}

#[tokio::test(start_paused = true)]
async fn a_halt_ends_after_the_batch_being_delivered() {
    let f = Fixture::new(Collect::gated());
    let (a, b) = (transaction("a", 1, 1), transaction("b", 2, 1));
    f.push(&[&a]);
    let (reader, stop) = f.start(None).await;
    f.consumer.arrived().await;
    f.push(&[&b]);
    stop.send(StopMode::Halt).unwrap();
    f.consumer.open(10);
    assert_eq!(ended(reader).await.unwrap(), ReaderOutcome::Stopped);
    assert_eq!(f.consumer.ids(), ids_of(&[&a]));
    assert_eq!(f.stored().await.watermark, at(1));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_runner_reads_as_a_halt() {
    let f = Fixture::new(Collect::default());
    let (reader, stop) = f.start(None).await;
    drop(stop);
    f.push(&[&transaction("a", 1, 1)]);
    assert_eq!(ended(reader).await.unwrap(), ReaderOutcome::Stopped);
}

#[test]
fn heartbeats_close_the_watermark_without_jumping_ahead() {
    let mut pos = Position {
        watermark: ts("2026-01-01T00:00:00Z"),
        acked_at_watermark: false,
    };
    pos.reached(ts("2026-01-01T00:00:01Z"));
    pos.acked_at_watermark = true;
    // A heartbeat ahead only closes the acknowledged timestamp.
    pos.heartbeat(ts("2026-01-01T00:00:09Z"));
    assert_eq!(pos.watermark, ts("2026-01-01T00:00:01.000000001Z"));
    assert!(!pos.acked_at_watermark);
    // A later one does not move it again...
    pos.heartbeat(ts("2026-01-01T00:00:10Z"));
    assert_eq!(pos.watermark, ts("2026-01-01T00:00:01.000000001Z"));
    // ...until the partition has been idle for longer than the lag.
    pos.heartbeat(ts("2026-01-01T00:20:01Z"));
    assert_eq!(pos.watermark, ts("2026-01-01T00:10:01Z"));
    // Records and child partitions move it to their time, never back.
    pos.reached(ts("2026-01-01T00:10:05Z"));
    assert_eq!(pos.watermark, ts("2026-01-01T00:10:05Z"));
    pos.reached(ts("2026-01-01T00:10:04Z"));
    assert_eq!(pos.watermark, ts("2026-01-01T00:10:05Z"));
}
