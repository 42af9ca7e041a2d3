//! Partition reader: one task per partition this runner holds.
//!
//! Place in the flow: source -> **reader** -> consumer -> checkpoint. The reader streams its
//! partition from the watermark, hands each batch of data change records to the consumer,
//! and only after the consumer acknowledges it moves the watermark. Child partitions are
//! recorded as soon as they are announced; the partition is FINISHED only when its query has
//! ended and everything before has been acknowledged. Transient errors restart the query from
//! the watermark with jittered exponential backoff.
//!
//! Stopping: when asked to stop, a reader that has acknowledged records at exactly its
//! watermark keeps reading (without delivering anything newer) until the stream shows a later
//! timestamp; the watermark then closes over that whole timestamp, so a restart neither
//! repeats nor loses a record. Past the drain deadline it stops anyway and a restart may
//! repeat the records at the watermark (at least once, never loss). A reader told to halt
//! (its runner may have lost the lease) stops after the batch it is delivering and reads
//! nothing more; a resume may repeat the records at the watermark. The types of that path, in
//! order, are in `stop`. Heartbeats close the watermark but never move it to their own time
//! (see `Position::heartbeat`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

mod sink;
mod stop;
pub(crate) use sink::{Direct, Sink};
use stop::{Phase, QueryEnd};
pub(crate) use stop::{ReaderOutcome, StopMode, StopSignal};

use crate::checkpoint::Checkpointer;
use crate::client::Backoff;
use crate::consumer::{ConsumerError, Origin};
use crate::error::FailureKind;
use crate::observe::{Event, Observer};
use crate::partition::{
    Lease, NewPartition, PartitionMetadata, PartitionState, PartitionStore, PartitionToken,
    RunnerId, StoreError,
};
use crate::record::{ChangeRecord, ChildPartitionsRecord, DataChangeRecord};
use crate::source::{ChangeQuery, ChangeSource, QueryRange, SourceError};
use crate::timestamp::Timestamp;

/// Why a reader failed (non-transient).
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// The change source failed for good.
    #[error("partition {partition:?}: {source}")]
    Source {
        /// The partition.
        partition: PartitionToken,
        /// Its error.
        source: SourceError,
    },
    /// The partition store failed.
    #[error("partition {partition:?}: {source}")]
    Store {
        /// The partition.
        partition: PartitionToken,
        /// Its error.
        source: StoreError,
    },
    /// The consumer failed a batch.
    #[error("partition {partition:?}: consumer failed: {source}")]
    Consumer {
        /// The partition.
        partition: PartitionToken,
        /// Its error.
        source: ConsumerError,
    },
    /// A bug: the reader's task panicked. The runner stops through its drain.
    #[error("partition {partition:?}: the reader panicked: {message}")]
    Panicked {
        /// The partition.
        partition: PartitionToken,
        /// The panic's message.
        message: String,
    },
}

impl ReaderError {
    /// Whether the user can fix it.
    pub fn kind(&self) -> FailureKind {
        match self {
            ReaderError::Source { source, .. } => source.kind(),
            ReaderError::Store { source, .. } => source.kind(),
            ReaderError::Consumer { .. } | ReaderError::Panicked { .. } => FailureKind::Runtime,
        }
    }
}

/// What every reader of one subscriber shares.
pub(crate) struct ReaderContext<S> {
    pub runner: RunnerId,
    pub source: Arc<dyn ChangeSource>,
    pub store: Arc<dyn PartitionStore>,
    pub checkpoints: Arc<Checkpointer>,
    pub sink: Arc<S>,
    pub observer: Arc<dyn Observer>,
    pub drain_timeout: Duration,
}

/// Position of a partition: every record before `watermark` is acknowledged, and
/// `acked_at_watermark` says whether some records at exactly `watermark` are too.
#[derive(Debug, Clone, Copy)]
struct Position {
    watermark: Timestamp,
    acked_at_watermark: bool,
}

impl Position {
    /// The stream has shown a record (data or child partitions) at `t`: nothing before `t`
    /// is still to come.
    fn reached(&mut self, t: Timestamp) {
        if t > self.watermark {
            self.watermark = t;
            self.acked_at_watermark = false;
        }
    }

    /// A heartbeat at `h`, later than the watermark: no more records at the watermark's time
    /// will come, so the watermark closes over that time. It does not jump to `h`:
    /// heartbeats may run past the partition's end, and a query restarted after the end never
    /// announces the children (measured on the emulator: the records between the end and the
    /// restart were lost). It follows `h` at [`HEARTBEAT_LAG`] instead, so an idle partition's
    /// checkpoint stays within the stream's retention.
    fn heartbeat(&mut self, h: Timestamp) {
        if self.acked_at_watermark {
            self.watermark = self.watermark.saturating_add(Duration::from_nanos(1));
            self.acked_at_watermark = false;
        }
        let floor = h.saturating_sub(HEARTBEAT_LAG);
        if floor > self.watermark {
            self.watermark = floor;
        }
    }
}

/// How far an idle partition's watermark stays behind its heartbeats: far more than any
/// heartbeat's overshoot of a partition's end (seconds on the emulator), far less than a
/// change stream's retention (at least a day).
const HEARTBEAT_LAG: Duration = Duration::from_secs(600);

/// What the stream showed after the last data record of a batch.
#[derive(Clone, Copy)]
enum After {
    Heartbeat(Timestamp),
    Record(Timestamp),
}

pub(crate) async fn run<S: Sink>(
    ctx: Arc<ReaderContext<S>>,
    partition: PartitionMetadata,
    lease: Lease,
    mut stop: StopSignal,
) -> Result<ReaderOutcome, ReaderError> {
    let mut partition = partition;
    let token = partition.token.clone();
    let _reading = Reading::start(&ctx.observer, token.clone(), partition.watermark);
    if partition.state != PartitionState::Running {
        let running_at = ctx
            .store
            .mark_running(&ctx.runner, &lease)
            .await
            .map_err(|e| ReadError::Store(e).of(&token))?;
        partition.state = PartitionState::Running;
        partition.times.running_at = Some(running_at);
    }
    ctx.sink.started(&token, partition.watermark);
    let mut pos = Position {
        watermark: partition.watermark,
        acked_at_watermark: false,
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        // The end is inclusive: records at `end` itself still belong to the range.
        if partition.end.is_some_and(|end| pos.watermark > end) {
            break;
        }
        if stop.mode() != StopMode::Run {
            return Ok(ReaderOutcome::Stopped);
        }
        let progress_from = pos.watermark;
        let result = read_once(&ctx, &partition, &mut pos, &mut stop).await;
        if pos.watermark > progress_from {
            backoff.reset();
        }
        match result {
            Ok(QueryEnd::Complete) => break,
            Ok(QueryEnd::Stopped) => {
                ctx.checkpoints.advance(&token, pos.watermark);
                return Ok(ReaderOutcome::Stopped);
            }
            Err(ReadError::Source(e)) if e.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(partition = ?token, watermark = %pos.watermark, error = %e, retry_in = ?delay, "transient error; restarting from watermark");
                ctx.observer.observe(Event::QueryRestarted {
                    partition: &token,
                    error: &e,
                });
                ctx.checkpoints.advance(&token, pos.watermark);
                tokio::select! {
                    _ = stop.reached(StopMode::Drain) => return Ok(ReaderOutcome::Stopped),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e.of(&token)),
        }
    }
    let last = partition
        .end
        .map_or(pos.watermark, |end| pos.watermark.max(end));
    finish(&ctx, &token, last).await.map_err(|e| e.of(&token))?;
    Ok(ReaderOutcome::Finished)
}

/// Marks a partition whose query ended FINISHED at `last`, once the sink holds none of its
/// records.
async fn finish<S: Sink>(
    ctx: &ReaderContext<S>,
    token: &PartitionToken,
    last: Timestamp,
) -> Result<(), ReadError> {
    ctx.sink
        .ended(token, last)
        .await
        .map_err(ReadError::Consumer)?;
    ctx.checkpoints
        .finish(token, last)
        .await
        .map_err(ReadError::Store)?;
    tracing::debug!(partition = ?token, watermark = %last, "partition finished");
    ctx.observer.observe(Event::Finished { partition: token });
    Ok(())
}

/// Reports [`Event::Reading`] when made and [`Event::StoppedReading`] when dropped, so
/// that every way a reader ends (an abort included) is reported.
struct Reading<'a> {
    observer: &'a dyn Observer,
    partition: PartitionToken,
}

impl<'a> Reading<'a> {
    fn start(observer: &'a Arc<dyn Observer>, partition: PartitionToken, from: Timestamp) -> Self {
        observer.observe(Event::Reading {
            partition: &partition,
            from,
        });
        Reading {
            observer: &**observer,
            partition,
        }
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.observer.observe(Event::StoppedReading {
            partition: &self.partition,
        });
    }
}

enum ReadError {
    Source(SourceError),
    Store(StoreError),
    Consumer(ConsumerError),
}

impl ReadError {
    /// The reader's error, naming `partition`.
    fn of(self, partition: &PartitionToken) -> ReaderError {
        let partition = partition.clone();
        match self {
            ReadError::Source(source) => ReaderError::Source { partition, source },
            ReadError::Store(source) => ReaderError::Store { partition, source },
            ReadError::Consumer(source) => ReaderError::Consumer { partition, source },
        }
    }
}

/// One streaming query from the current position to its end, a stop, or an error.
async fn read_once<S: Sink>(
    ctx: &ReaderContext<S>,
    partition: &PartitionMetadata,
    pos: &mut Position,
    stop: &mut StopSignal,
) -> Result<QueryEnd, ReadError> {
    let range = QueryRange {
        start: pos.watermark,
        end: partition.end,
        heartbeat_millis: partition.heartbeat_millis,
    };
    let query = ctx
        .source
        .query(&partition.token, range)
        .await
        .map_err(ReadError::Source)?;
    // Fetching and decoding the next batches overlaps with delivering this one. Dropping
    // the handle (any return below) aborts the fetch and abandons the query.
    let (mut batches, _fetch) = prefetch(query);
    let mut phase = Phase::Reading;
    loop {
        if let Some(end) = phase.apply(stop.mode(), pos.acked_at_watermark, ctx.drain_timeout) {
            return Ok(end);
        }
        let next = match phase {
            Phase::Reading => tokio::select! {
                biased;
                _ = stop.reached(StopMode::Drain) => continue,
                batch = batches.recv() => batch,
            },
            Phase::Draining { until } => tokio::select! {
                biased;
                _ = stop.reached(StopMode::Halt) => continue,
                batch = tokio::time::timeout_at(until, batches.recv()) => match batch {
                    Ok(batch) => batch,
                    Err(_) => {
                        tracing::warn!(partition = ?partition.token, watermark = %pos.watermark,
                            "drain deadline passed; a restart may repeat records at the watermark");
                        return Ok(QueryEnd::Stopped);
                    }
                },
            },
        };
        // The channel closes without an error only after the query ended cleanly.
        let Some(records) = next.transpose().map_err(ReadError::Source)? else {
            return Ok(QueryEnd::Complete);
        };
        if let Some(end) = handle_batch(ctx, partition, pos, records, phase).await? {
            return Ok(end);
        }
        ctx.checkpoints.advance(&partition.token, pos.watermark);
    }
}

/// Most records handed to the consumer in one batch (a partial result set is never split, so
/// a batch can pass this by the rows of one).
pub const MAX_BATCH: usize = 1024;

/// Batches fetched ahead of delivery: enough to keep the query busy while the consumer works,
/// few enough to keep memory bounded by the consumer's pace.
const PREFETCH: usize = 2;

type Batches = mpsc::Receiver<Result<Vec<ChangeRecord>, SourceError>>;

/// Runs `query` on its own task, handing on decoded batches; the channel closes after the
/// last batch, or after an error. While the consumer is busy (the channel is full), newly
/// arrived records join the batch being held, so batches grow with load (up to
/// [`MAX_BATCH`]) and per-batch costs shrink.
fn prefetch(mut query: Box<dyn ChangeQuery>) -> (Batches, AbortOnDropHandle<()>) {
    let (tx, rx) = mpsc::channel(PREFETCH);
    let fetch = tokio::spawn(async move {
        let mut held: Vec<ChangeRecord> = Vec::new();
        loop {
            tokio::select! {
                biased;
                permit = tx.reserve(), if !held.is_empty() => match permit {
                    Ok(permit) => permit.send(Ok(std::mem::take(&mut held))),
                    Err(_) => return,
                },
                // `next_batch` only awaits before it has taken anything: cancel-safe.
                next = query.next_batch(MAX_BATCH.saturating_sub(held.len())), if held.len() < MAX_BATCH => match next {
                    Ok(Some(batch)) => held.extend(batch),
                    end => {
                        if !held.is_empty() && tx.send(Ok(held)).await.is_err() {
                            return;
                        }
                        if let Err(e) = end {
                            let _ = tx.send(Err(e)).await;
                        }
                        return;
                    }
                },
            }
        }
    });
    (rx, AbortOnDropHandle::new(fetch))
}

/// A batch sorted for delivery.
struct Sorted {
    data: Vec<DataChangeRecord>,
    /// Child partitions announced in the batch, recorded in one write.
    children: Vec<NewPartition>,
    /// What came after the last data record of the batch.
    after: Option<After>,
    /// The last timestamp handled: everything up to it is acknowledged once delivered.
    through: Option<Timestamp>,
    /// `Some(Stopped)`: a draining reader reached a later timestamp, its position is final.
    end: Option<QueryEnd>,
}

impl Sorted {
    /// Splits `records` into data, children and what followed; a draining reader takes
    /// only what shares the watermark's time.
    fn of(
        records: Vec<ChangeRecord>,
        partition: &PartitionMetadata,
        pos: &Position,
        phase: Phase,
    ) -> Self {
        let draining = matches!(phase, Phase::Draining { .. });
        let mut sorted = Sorted {
            data: Vec::new(),
            children: Vec::new(),
            after: None,
            through: None,
            end: None,
        };
        for record in records {
            let t = record.timestamp();
            let shown = match record {
                ChangeRecord::Heartbeat(_) => After::Heartbeat(t),
                _ => After::Record(t),
            };
            if draining && t > pos.watermark {
                sorted.after = Some(shown);
                sorted.end = Some(QueryEnd::Stopped);
                break;
            }
            sorted.through = Some(t);
            match record {
                ChangeRecord::Data(r) => {
                    sorted.after = None;
                    sorted.data.push(r);
                }
                ChangeRecord::Heartbeat(_) => sorted.after = Some(shown),
                ChangeRecord::ChildPartitions(r) => {
                    sorted.children.extend(child_partitions(partition, &r));
                    sorted.after = Some(shown);
                }
            }
        }
        sorted
    }

    /// Moves `pos` past what the batch showed after its data; returns the time the
    /// partition has now shown every record up to (see [`Sink::read_through`]).
    fn advance(&self, pos: &mut Position) -> Option<Timestamp> {
        match self.after {
            Some(After::Record(t)) => pos.reached(t),
            Some(After::Heartbeat(t)) if t > pos.watermark => pos.heartbeat(t),
            _ => {}
        }
        match self.after {
            Some(After::Heartbeat(h)) => Some(h),
            Some(After::Record(t)) => Some(just_before(t)),
            None => self.data.last().map(|r| just_before(r.commit_timestamp)),
        }
    }
}

/// Delivers one batch and advances the position; `Some` ends the query.
async fn handle_batch<S: Sink>(
    ctx: &ReaderContext<S>,
    partition: &PartitionMetadata,
    pos: &mut Position,
    records: Vec<ChangeRecord>,
    phase: Phase,
) -> Result<Option<QueryEnd>, ReadError> {
    let sorted = Sorted::of(records, partition, pos, phase);
    let children = &sorted.children;
    if !children.is_empty() {
        let inserted = ctx
            .store
            .add_children(children)
            .await
            .map_err(ReadError::Store)?;
        tracing::debug!(partition = ?partition.token, announced = children.len(), inserted, "child partitions");
        ctx.sink.announced(children);
    }
    let data = &sorted.data;
    if let Some(last) = data.last().map(|r| r.commit_timestamp) {
        ctx.observer.observe(Event::Read {
            partition: &partition.token,
            records: data,
        });
        let origin = Origin {
            partition,
            watermark: pos.watermark,
        };
        ctx.sink
            .deliver(origin, data)
            .await
            .map_err(ReadError::Consumer)?;
        pos.reached(last);
        pos.acked_at_watermark = true;
    }
    if let Some(t) = sorted.advance(pos) {
        ctx.sink.read_through(&partition.token, t);
    }
    if let Some(through) = sorted.through {
        ctx.observer.observe(Event::Acknowledged {
            partition: &partition.token,
            through,
            records: data,
        });
    }
    Ok(sorted.end)
}

/// The last instant before `t`: a partition that showed a record at `t` may show more at `t`.
fn just_before(t: Timestamp) -> Timestamp {
    t.saturating_sub(Duration::from_nanos(1))
}

/// The partitions a child partitions record announces, as rows to insert.
fn child_partitions<'a>(
    parent: &'a PartitionMetadata,
    record: &'a ChildPartitionsRecord,
) -> impl Iterator<Item = NewPartition> + 'a {
    record.child_partitions.iter().map(move |c| NewPartition {
        token: c.token.clone(),
        // The root's children name no parent; they still must wait for the root.
        parents: if c.parent_partition_tokens.is_empty() {
            vec![parent.token.clone()]
        } else {
            c.parent_partition_tokens.clone()
        },
        start: record.start_timestamp,
        end: parent.end,
        heartbeat_millis: parent.heartbeat_millis,
    })
}

#[cfg(test)]
mod tests;
