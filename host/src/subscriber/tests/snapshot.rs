//! The runner with `--snapshot`: chunks are read first, the stream's root waits for every
//! chunk and starts right after the snapshot's time, and `only` ends with the snapshot.

use super::*;
use crate::record::ChangeRecord;
use crate::snapshot::Chunk;

fn chunk(index: usize) -> Chunk {
    Chunk {
        table: "Accounts".into(),
        index,
        rows: 2,
        start: None,
        end: None,
    }
}

/// Two snapshot rows of `chunk`, keys `first` and `first + 1`, read at `at(0)`.
fn rows(s: &Stream, chunk: &Chunk, first: i64) -> Vec<(String, String)> {
    let token = chunk.token();
    let t = ScriptedTransaction::new(SNAPSHOT_ID, at(0))
        .insert("Accounts", first)
        .insert("Accounts", first + 1);
    let records: Vec<ChangeRecord> = (0..2)
        .map(|i| match t.record(i, &token) {
            ChangeRecord::Data(mut r) => {
                r.snapshot = true;
                ChangeRecord::Data(r)
            }
            other => other,
        })
        .collect();
    let ids = records.iter().map(|r| id(&data(r.clone()))).collect();
    s.source.push(&token, records);
    ids
}

const SNAPSHOT_ID: &str = crate::snapshot::SNAPSHOT_TRANSACTION;

fn with_snapshot(mode: SnapshotMode) -> SubscriberOptions {
    SubscriberOptions {
        snapshot: mode,
        ..Stream::options("r", 10)
    }
}

#[tokio::test(start_paused = true)]
async fn the_stream_starts_after_every_chunk_right_after_the_snapshot_time() {
    let s = Stream::new();
    let (one, two) = (chunk(0), chunk(1));
    s.source.plan(vec![one.clone(), two.clone()]);
    let mut written = rows(&s, &one, 1);
    written.extend(rows(&s, &two, 3));
    s.source.close(&one.token());
    let consumer = Arc::new(Collect::default());
    let run = s.run(
        with_snapshot(SnapshotMode::Initial),
        &consumer,
        &CancellationToken::new(),
    );
    until("the snapshot rows delivered", || {
        consumer.records().len() == 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let root = PartitionToken::root();
    assert!(
        !s.source.queries().iter().any(|(p, _)| *p == root),
        "the stream started before the last chunk finished"
    );
    s.source.close(&two.token());
    let children = tokens(&["c"]);
    s.split(&children);
    written.push(s.write(&children[0], 2));
    s.end(&children);
    let summary = ended(run).await.unwrap();
    assert!(summary.reached_end);
    assert_eq!(consumer.ids(), written, "the snapshot, then the change");
    let root_queries: Vec<Timestamp> = s
        .source
        .queries()
        .into_iter()
        .filter(|(p, _)| *p == root)
        .map(|(_, start)| start)
        .collect();
    assert_eq!(root_queries, vec![crate::snapshot::after(at(0))]);
    assert!(consumer.records()[..4].iter().all(|r| r.snapshot));
}

#[tokio::test(start_paused = true)]
async fn an_export_ends_once_every_chunk_is_read_and_never_queries_the_stream() {
    let s = Stream::new();
    let only = chunk(0);
    s.source.plan(vec![only.clone()]);
    let written = rows(&s, &only, 1);
    s.source.close(&only.token());
    let consumer = Arc::new(Collect::default());
    let options = SubscriberOptions {
        end: None,
        ..with_snapshot(SnapshotMode::Only)
    };
    let summary = ended(s.run(options, &consumer, &CancellationToken::new()))
        .await
        .unwrap();
    assert!(summary.reached_end);
    assert_eq!(summary.partitions_finished, 1);
    assert_eq!(consumer.ids(), written);
    assert!(s.source.queries().iter().all(|(p, _)| Chunk::is_chunk(p)));
}

#[tokio::test(start_paused = true)]
async fn with_whole_transactions_chunks_pass_the_buffer_by_and_the_stream_follows() {
    let s = Stream::new();
    let chunks = [chunk(0), chunk(1)];
    s.source.plan(chunks.to_vec());
    let mut written = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        written.extend(rows(&s, c, 1 + 2 * i as i64));
        s.source.close(&c.token());
    }
    let children = tokens(&["c"]);
    s.split(&children);
    written.push(s.write(&children[0], 2));
    s.end(&children);
    let consumer = Arc::new(Collect::default());
    let options = SubscriberOptions {
        ordering: Ordering::Transactions,
        // Far less than the snapshot: it does not pass through the buffer.
        ordering_buffer: 1,
        ..with_snapshot(SnapshotMode::Initial)
    };
    let summary = ended(s.run(options, &consumer, &CancellationToken::new()))
        .await
        .unwrap();
    assert!(summary.reached_end);
    let mut got = consumer.ids();
    // Chunks are read side by side; the change comes last.
    assert_eq!(got.pop(), written.last().cloned());
    got.sort();
    let mut rows = written[..4].to_vec();
    rows.sort();
    assert_eq!(got, rows);
}

#[tokio::test(start_paused = true)]
async fn a_runner_reads_a_few_chunks_at_a_time_whatever_it_may_hold() {
    let s = Stream::new();
    let chunks: Vec<Chunk> = (0..6).map(chunk).collect();
    s.source.plan(chunks.clone());
    let mut written = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        written.extend(rows(&s, c, 10 * i as i64));
    }
    let consumer = Arc::new(Collect::default());
    let options = SubscriberOptions {
        end: None,
        ..with_snapshot(SnapshotMode::Only)
    };
    let run = s.run(options, &consumer, &CancellationToken::new());
    until("the first chunks read", || consumer.records().len() >= 2).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let opened = |s: &Stream| s.source.queries().len();
    assert_eq!(
        opened(&s),
        crate::snapshot::CHUNKS_AT_ONCE,
        "four of six, not ten"
    );
    for c in &chunks {
        s.source.close(&c.token());
    }
    let summary = ended(run).await.unwrap();
    assert_eq!(summary.partitions_finished, 6);
    assert_eq!(sorted(consumer.ids()), sorted(written));
}
