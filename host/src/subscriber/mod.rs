//! Subscriber: the runner — it registers, claims partitions, and turns them into readers.
//!
//! Place in the flow: it owns the run. It prepares the partition store, seeds the root
//! partition when the store is empty (otherwise it resumes), registers this runner and
//! heartbeats (`liveness`), then runs one loop over typed `Event`s: it claims partitions
//! (ready ones, and ones whose owner released them or stopped heartbeating for
//! `lease_duration`) up to `max_connections` or its fair share (`share`) and starts a
//! reader for each (`readers`), flushes checkpoints on a timer, releases partitions above
//! its fair share every `rebalancing_interval`, and ends when every partition reached `end`,
//! when asked to stop, or on the first non-transient failure. However it ends, it ends
//! through the same drain: readers stop at a clean position, a last checkpoint is written,
//! every lease is released and the runner deregisters.
//!
//! Invariants: a reader runs only while this runner holds the partition's lease. A lease
//! the store refuses (another runner claimed the partition) aborts its reader at once. A
//! runner whose own heartbeat lapsed (it was paused or cut off: others may own its
//! partitions by now) halts every reader after the batch it is delivering, writes (fenced)
//! what they acknowledged, and gives up the leases nobody took; it claims again once a fresh
//! heartbeat lands.
//!
//! With `--ordering transactions` the readers' sink is the reassembly buffer
//! (`ordering::Ordered`) and the runner claims only while it is the stream's active runner
//! (`PartitionStore::activate`), then claims every partition; before its first claim the
//! buffer learns every unfinished partition of the store, a lapse makes it forget what it
//! held and stand by, and the drain waits for released batches to be acknowledged before
//! the last checkpoint.

mod liveness;
mod readers;
mod share;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Interval;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{Checkpointer, Floor};
use crate::consumer::Consumer;
use crate::error::FailureKind;
use crate::observe::{Event as ObserverEvent, NoObserver, Observer};
use crate::ordering::{DEFAULT_ORDERING_BUFFER, Ordered, Ordering};
use crate::partition::{
    CLAIM_BATCH, Lease, NewPartition, PartitionState, PartitionStore, PartitionToken, RunnerId,
    StoreError,
};
use crate::reader::{Direct, ReaderContext, ReaderError, ReaderOutcome, Sink, StopMode};
use crate::snapshot::{self, Chunk, SnapshotMode};
use crate::source::{ChangeSource, SourceError};
use crate::timestamp::Timestamp;
use liveness::{Heartbeat, Liveness};
use readers::{AfterStop, Ended, ReaderSet};
use share::Holding;

/// The heartbeat intervals a change stream query accepts.
pub const HEARTBEAT_INTERVALS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(300);

/// Settings of a subscriber; `Default` gives the CLI's defaults.
#[derive(Debug, Clone)]
pub struct SubscriberOptions {
    /// Identifies this runner in logs and, with leases, in the metadata table.
    pub runner_id: RunnerId,
    /// Where an empty store starts; default: now.
    pub start: Option<Timestamp>,
    /// Where reading ends (inclusive: records committed at `end` are delivered); default:
    /// never.
    pub end: Option<Timestamp>,
    /// Heartbeat interval of partition queries; clamped to [`HEARTBEAT_INTERVALS`].
    pub heartbeat_interval: Duration,
    /// Most partitions read at once by this runner.
    pub max_connections: usize,
    /// How often acknowledged watermarks are written (one commit for all partitions).
    pub checkpoint_interval: Duration,
    /// How often the store is polled for ready partitions when nothing else wakes the
    /// scheduler.
    pub poll_interval: Duration,
    /// How long a stopping reader may wait to close its watermark's timestamp.
    pub drain_timeout: Duration,
    /// How long a runner may go without a heartbeat before others take its partitions.
    /// Heartbeats go every third of it.
    pub lease_duration: Duration,
    /// How often to release partitions above the fair share; `None`: never.
    pub rebalancing_interval: Option<Duration>,
    /// Per key (partitions in parallel, shared by runners) or whole transactions in commit
    /// order (one active runner reads every partition: `max_connections` and rebalancing do
    /// not apply; other runners stand by).
    pub ordering: Ordering,
    /// With [`Ordering::Transactions`]: bytes of records the reassembly buffer admits
    /// before readers ahead of the slowest partition wait.
    pub ordering_buffer: usize,
    /// Whether the first run on an empty store reads the existing rows at `start` first
    /// (and, with [`SnapshotMode::Only`], only them).
    pub snapshot: SnapshotMode,
    /// Rows per snapshot chunk.
    pub snapshot_chunk_rows: usize,
}

impl Default for SubscriberOptions {
    fn default() -> Self {
        Self {
            runner_id: RunnerId::random(),
            start: None,
            end: None,
            heartbeat_interval: Duration::from_secs(3),
            max_connections: 400,
            checkpoint_interval: Duration::from_secs(1),
            poll_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            lease_duration: Duration::from_secs(30),
            rebalancing_interval: None,
            ordering: Ordering::Key,
            ordering_buffer: DEFAULT_ORDERING_BUFFER,
            snapshot: SnapshotMode::Never,
            snapshot_chunk_rows: snapshot::DEFAULT_CHUNK_ROWS,
        }
    }
}

/// Partitions the active runner of `--ordering transactions` may hold: all of them.
const TRANSACTIONS_CAPACITY: usize = 100_000;

/// Why a subscription failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The partition store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A partition reader failed for good.
    #[error(transparent)]
    Reader(#[from] ReaderError),
    /// The range asked for holds no time.
    #[error("--end {end} must be after --start {start}")]
    EmptyRange {
        /// Where reading would start.
        start: Timestamp,
        /// Where it would end, at or before the start.
        end: Timestamp,
    },
    /// The snapshot could not be planned.
    #[error("planning the snapshot: {0}")]
    Snapshot(#[source] SourceError),
}

impl SubscribeError {
    /// Whether the user can fix it.
    pub fn kind(&self) -> FailureKind {
        match self {
            SubscribeError::Store(e) => e.kind(),
            SubscribeError::Reader(e) => e.kind(),
            SubscribeError::EmptyRange { .. } => FailureKind::Input,
            SubscribeError::Snapshot(e) => e.kind(),
        }
    }
}

/// A run from `start` to `end` must read something: `end` (inclusive) after `start`.
pub fn check_range(start: Timestamp, end: Option<Timestamp>) -> Result<(), SubscribeError> {
    match end {
        Some(end) if end <= start => Err(SubscribeError::EmptyRange { start, end }),
        _ => Ok(()),
    }
}

/// What a finished subscription did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Partitions read to their end by this run.
    pub partitions_finished: usize,
    /// Metadata writes committed by the store during the run.
    pub metadata_writes: u64,
    /// True when the run ended because every partition reached `end`.
    pub reached_end: bool,
    /// Partitions this runner lost to another (its lease was taken over).
    pub partitions_lost: usize,
    /// Partitions this runner gave up to rebalance.
    pub partitions_released: usize,
}

/// Reads a change stream and hands its records to a [`Consumer`].
pub struct Subscriber {
    source: Arc<dyn ChangeSource>,
    store: Arc<dyn PartitionStore>,
    options: SubscriberOptions,
    observer: Arc<dyn Observer>,
}

impl Subscriber {
    /// A subscriber of `source` ([`SpannerSource`](crate::SpannerSource), or a
    /// [`ScriptedSource`](crate::source::ScriptedSource) in tests) that keeps its partitions
    /// in `store`.
    pub fn new(
        source: impl ChangeSource,
        store: Arc<dyn PartitionStore>,
        mut options: SubscriberOptions,
    ) -> Self {
        if options.ordering == Ordering::Transactions {
            options.max_connections = TRANSACTIONS_CAPACITY;
            options.rebalancing_interval = None;
        }
        Self {
            source: Arc::new(source),
            store,
            options,
            observer: Arc::new(NoObserver),
        }
    }

    /// Reports what the run does to `observer` (see [`crate::observe`]).
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// The options it runs with.
    pub fn options(&self) -> &SubscriberOptions {
        &self.options
    }

    /// Runs until every partition reaches `end`, `shutdown` is cancelled, or a
    /// non-transient error. However it ends, readers drain, the last watermarks are written
    /// and every lease is released before this returns.
    pub async fn subscribe<C: Consumer>(
        &self,
        consumer: C,
        shutdown: CancellationToken,
    ) -> Result<RunSummary, SubscribeError> {
        match self.options.ordering {
            Ordering::Key => self.run(Direct(consumer), shutdown).await,
            Ordering::Transactions => {
                let ordered = Ordered::start(
                    consumer,
                    self.options.ordering_buffer,
                    Arc::clone(&self.observer),
                );
                self.run(ordered, shutdown).await
            }
        }
    }

    async fn run<S: Sink>(
        &self,
        sink: S,
        shutdown: CancellationToken,
    ) -> Result<RunSummary, SubscribeError> {
        let start = self.options.start.unwrap_or_else(Timestamp::now);
        check_range(start, self.options.end)?;
        let writes_before = self.store.writes();
        let mut runner = Runner::start(self, sink, start).await?;
        let ran = runner.run(&shutdown).await;
        let stopped = runner.stop().await;
        if let (Err(stop), Err(_)) = (&stopped, &ran) {
            tracing::warn!(error = %stop, "the drain after the failure failed too");
        }
        // The run's own failure, if any, is the one to report.
        let mut summary = match stopped {
            Ok(summary) => summary,
            Err(stop) => return ran.and(Err(stop)),
        };
        summary.metadata_writes = self.store.writes() - writes_before;
        tracing::info!(
            runner = %self.options.runner_id,
            finished = summary.partitions_finished,
            lost = summary.partitions_lost,
            released = summary.partitions_released,
            metadata_writes = summary.metadata_writes,
            "subscription ended"
        );
        ran.map(|()| summary)
    }
}

/// Seeds an empty store: the root partition from `start`; with a snapshot, the chunks of
/// the watched rows at `start` first (and, unless `only`, the root waiting for them).
/// Returns whether this run seeded (else it resumes).
async fn seed(subscriber: &Subscriber, start: Timestamp) -> Result<bool, SubscribeError> {
    let (store, options) = (&subscriber.store, &subscriber.options);
    let root = NewPartition {
        token: PartitionToken::root(),
        parents: vec![],
        start,
        end: options.end,
        heartbeat_millis: options
            .heartbeat_interval
            .clamp(*HEARTBEAT_INTERVALS.start(), *HEARTBEAT_INTERVALS.end())
            .as_millis() as i64,
    };
    if options.snapshot == SnapshotMode::Never {
        return Ok(store.seed(vec![root]).await?);
    }
    if store.seeded().await? {
        return Ok(false);
    }
    let chunks = subscriber
        .source
        .plan_snapshot(start, options.snapshot_chunk_rows)
        .await
        .map_err(SubscribeError::Snapshot)?;
    let seeded = store
        .seed(snapshot::seeds(options.snapshot, start, &chunks, root))
        .await?;
    if seeded {
        tracing::info!(at = %start, chunks = chunks.len(), mode = %options.snapshot, "snapshot planned");
    }
    Ok(seeded)
}

/// Tells the observer how large the store's snapshot is and how much of it is done; returns
/// whether some chunk is unfinished.
async fn report_snapshot(subscriber: &Subscriber) -> Result<bool, StoreError> {
    let status = subscriber
        .store
        .status(subscriber.options.lease_duration)
        .await?;
    let partitions = status
        .partitions
        .iter()
        .map(|p| (&p.token, p.state == PartitionState::Finished));
    let Some(plan) = snapshot::Plan::of(partitions) else {
        return Ok(false);
    };
    subscriber.observer.observe(ObserverEvent::SnapshotPlanned {
        chunks: plan.chunks,
        chunks_finished: plan.chunks_finished,
        rows: plan.rows,
        rows_finished: plan.rows_finished,
    });
    Ok(plan.chunks_finished < plan.chunks)
}

/// What wakes the runner.
enum Event {
    Shutdown,
    /// Time to compare this runner's last heartbeat with its lease.
    LivenessTick,
    /// Time to give up leases the store says this runner holds but it does not read.
    ReleaseStrays,
    Checkpoint,
    Rebalance,
    /// Time to look for claimable partitions again.
    Poll,
    /// The last claim filled a batch and there is room for more: claim again now.
    ClaimMore,
    ReaderEnded(Ended),
}

/// The runner's timers, one per periodic [`Event`].
struct Timers {
    liveness: Interval,
    strays: Interval,
    checkpoint: Interval,
    rebalance: Interval,
    poll: Interval,
}

impl Timers {
    async fn new(options: &SubscriberOptions) -> Self {
        let mut rebalance = tokio::time::interval(
            options
                .rebalancing_interval
                .unwrap_or(Duration::from_secs(3600)),
        );
        // The first tick is immediate; the first rebalancing waits a whole interval.
        rebalance.tick().await;
        Self {
            liveness: tokio::time::interval(options.lease_duration / 3),
            strays: tokio::time::interval(options.lease_duration),
            checkpoint: tokio::time::interval(options.checkpoint_interval),
            rebalance,
            poll: tokio::time::interval(options.poll_interval),
        }
    }
}

/// One run of a [`Subscriber`]: its readers, liveness and counters.
struct Runner<'s, S> {
    store: &'s Arc<dyn PartitionStore>,
    options: &'s SubscriberOptions,
    observer: &'s Arc<dyn Observer>,
    heartbeat: Heartbeat,
    liveness: Liveness,
    checkpoints: Arc<Checkpointer>,
    readers: ReaderSet<S>,
    sink: Arc<S>,
    /// With `--ordering transactions`: whether this runner is the stream's active one.
    active: bool,
    /// The store holds snapshot chunks not known to be finished: claims take at most
    /// [`snapshot::CHUNKS_AT_ONCE`] of them at a time.
    snapshot_pending: bool,
    timers: Timers,
    want_claim: bool,
    /// Set when this runner gave a partition up for an underloaded one (see [`share`]).
    yielding: bool,
    /// Leases whose reader failed: released with the others when the run ends.
    failed: Vec<Lease>,
    summary: RunSummary,
}

impl<'s, S: Sink> Runner<'s, S> {
    /// Prepares the store, seeds or resumes, registers this runner and starts heartbeating.
    async fn start(
        subscriber: &'s Subscriber,
        sink: S,
        start: Timestamp,
    ) -> Result<Self, SubscribeError> {
        let (store, options) = (&subscriber.store, &subscriber.options);
        let runner = &options.runner_id;
        store.prepare().await?;
        tracing::debug!("partition store ready");
        let seeded = seed(subscriber, start).await?;
        let snapshot_pending = match options.snapshot {
            SnapshotMode::Never => false,
            _ => report_snapshot(subscriber).await?,
        };
        store.reset(runner).await?;
        store.heartbeat(runner, options.max_connections).await?;
        let heartbeat = Heartbeat::start(
            Arc::clone(store),
            runner.clone(),
            options.max_connections,
            options.lease_duration,
        );
        tracing::info!(
            %runner,
            stream = subscriber.source.stream(),
            seeded,
            "subscribing"
        );
        let observer = &subscriber.observer;
        observer.observe(ObserverEvent::Subscribed {
            runner,
            lease: options.lease_duration,
        });
        let sink = Arc::new(sink);
        let checkpoints = Arc::new(
            Checkpointer::new(Arc::clone(store), runner, Arc::clone(observer))
                .with_floor(Arc::clone(&sink) as Arc<dyn Floor>),
        );
        let ctx = Arc::new(ReaderContext {
            runner: runner.clone(),
            source: Arc::clone(&subscriber.source),
            store: Arc::clone(store),
            checkpoints: Arc::clone(&checkpoints),
            sink: Arc::clone(&sink),
            observer: Arc::clone(observer),
            drain_timeout: options.drain_timeout,
        });
        Ok(Self {
            store,
            options,
            observer,
            heartbeat,
            liveness: Liveness::Alive,
            checkpoints,
            readers: ReaderSet::new(ctx),
            sink,
            active: options.ordering == Ordering::Key,
            snapshot_pending,
            timers: Timers::new(options).await,
            want_claim: true,
            yielding: false,
            failed: Vec::new(),
            summary: RunSummary::default(),
        })
    }

    fn runner(&self) -> &RunnerId {
        &self.options.runner_id
    }

    /// The loop: claim while wanted, end when every partition reached `end`, else handle the
    /// next event. A failure returns at once; [`Runner::stop`] then drains.
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), SubscribeError> {
        loop {
            if self.liveness == Liveness::Alive && self.want_claim {
                self.want_claim = self.claim().await?;
            }
            if self.reached_end().await? {
                self.summary.reached_end = true;
                return Ok(());
            }
            match self.next_event(shutdown).await {
                Event::Shutdown => return Ok(()),
                Event::LivenessTick => self.check_liveness().await,
                Event::ReleaseStrays => self.release_strays().await,
                Event::Checkpoint => self.checkpoint().await,
                Event::Rebalance => self.yielding = self.rebalance().await,
                Event::Poll => self.want_claim = true,
                Event::ClaimMore => {}
                Event::ReaderEnded(ended) => self.reader_ended(ended).await?,
            }
        }
    }

    async fn next_event(&mut self, shutdown: &CancellationToken) -> Event {
        let alive = self.liveness == Liveness::Alive;
        let rebalancing = self.options.rebalancing_interval.is_some();
        let claim_more = self.want_claim && alive;
        let t = &mut self.timers;
        tokio::select! {
            _ = shutdown.cancelled() => Event::Shutdown,
            _ = t.liveness.tick() => Event::LivenessTick,
            _ = t.strays.tick(), if alive => Event::ReleaseStrays,
            _ = t.checkpoint.tick() => Event::Checkpoint,
            _ = t.rebalance.tick(), if rebalancing => Event::Rebalance,
            _ = t.poll.tick() => Event::Poll,
            _ = std::future::ready(()), if claim_more => Event::ClaimMore,
            Some(ended) = self.readers.join_next(), if self.readers.has_tasks() => {
                Event::ReaderEnded(ended)
            }
        }
    }

    /// With `end`: whether nothing is left to read, by this runner or any other.
    async fn reached_end(&self) -> Result<bool, StoreError> {
        let ends = self.options.end.is_some() || self.options.snapshot == SnapshotMode::Only;
        if !ends || !self.readers.is_empty() {
            return Ok(false);
        }
        Ok(self.store.unfinished().await? == 0)
    }

    /// Claims partitions while this runner has room (with rebalancing: up to its fair
    /// share), and starts their readers. Returns whether to claim again at once (a full
    /// batch came back and there is room for more).
    async fn claim(&mut self) -> Result<bool, StoreError> {
        if !self.active && !self.activate().await? {
            return Ok(false);
        }
        let holding = Holding {
            max_connections: self.options.max_connections,
            held: self.readers.len(),
            keeping: self.readers.keeping(),
        };
        let mut room = holding.room();
        if self.options.rebalancing_interval.is_some() && room > 0 {
            let load = self.store.load(self.options.lease_duration).await?;
            room = holding.room_within_share(&load, self.yielding);
            tracing::debug!(
                runner = %self.runner(),
                keeping = holding.keeping,
                unowned = load.unowned_partitions,
                live_runners = load.live_runners(),
                room,
                "claim"
            );
        }
        if self.snapshot_pending {
            room = room.min(snapshot::CHUNKS_AT_ONCE.saturating_sub(self.readers.chunks()));
        }
        if room == 0 {
            return Ok(false);
        }
        let claims = self
            .store
            .claim(self.runner(), room, self.options.lease_duration)
            .await?;
        // A claim of a stream partition means every chunk is done.
        if claims.iter().any(|c| !Chunk::is_chunk(&c.lease.token)) {
            self.snapshot_pending = false;
        }
        let more = claims.len() == CLAIM_BATCH && room > CLAIM_BATCH;
        if !claims.is_empty() {
            self.observer.observe(ObserverEvent::Claimed {
                partitions: claims.len(),
            });
        }
        for claim in claims {
            self.checkpoints
                .hold(&claim.lease, claim.partition.watermark);
            self.readers.spawn(claim);
        }
        Ok(more)
    }

    /// `--ordering transactions`: becomes the stream's active runner if no live runner is;
    /// then the sink learns every unfinished partition before the first claim, so that
    /// nothing is released ahead of a partition not read yet.
    async fn activate(&mut self) -> Result<bool, StoreError> {
        let lease = self.options.lease_duration;
        let active = self.store.activate(self.runner(), lease).await?;
        if active != *self.runner() {
            tracing::debug!(runner = %self.runner(), %active, "standing by");
            return Ok(false);
        }
        let status = self.store.status(lease).await?;
        let unfinished: Vec<_> = status
            .partitions
            .into_iter()
            .filter(|p| p.state != PartitionState::Finished)
            .map(|p| (p.token, p.watermark))
            .collect();
        tracing::info!(runner = %self.runner(), unfinished = unfinished.len(),
            "active: reading every partition, transactions in commit order");
        self.sink.resume(&unfinished);
        self.active = true;
        Ok(true)
    }

    async fn check_liveness(&mut self) {
        let (now, silent) = self.heartbeat.check();
        self.observer.observe(ObserverEvent::Heartbeat {
            age: silent,
            alive: now == Liveness::Alive,
        });
        match (self.liveness, now) {
            (_, Liveness::Lapsed) => {
                if self.liveness == Liveness::Alive {
                    tracing::warn!(runner = %self.runner(), partitions = self.readers.len(),
                        silent = ?silent,
                        "no heartbeat within the lease duration: stopping every reader");
                }
                self.liveness = Liveness::Lapsed;
                self.give_up_after_lapse().await;
                if self.options.ordering == Ordering::Transactions {
                    // Another runner may be the active one by now.
                    self.active = false;
                    self.sink.reset();
                }
            }
            (Liveness::Lapsed, Liveness::Alive) => {
                tracing::info!(
                    runner = %self.runner(),
                    "heartbeat restored: claiming partitions again"
                );
                self.liveness = Liveness::Alive;
                self.want_claim = true;
            }
            (Liveness::Alive, Liveness::Alive) => {}
        }
    }

    /// After a lapse: halts every reader after the batch it is delivering (a batch cut off
    /// halfway would be out but unacknowledged, so repeated), writes (fenced) what they
    /// acknowledged, and gives up (fenced) the leases nobody took, which would otherwise
    /// stay this runner's, unread, once it heartbeats again. Whoever claims them next, often
    /// this runner, resumes where they stopped.
    async fn give_up_after_lapse(&mut self) {
        self.readers.stop_all(StopMode::Halt);
        let mut dropped = Vec::new();
        let halting = async {
            while let Some(ended) = self.readers.join_next().await {
                match ended.result {
                    Ok(ReaderOutcome::Finished) => {
                        self.summary.partitions_finished += 1;
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(runner = %self.options.runner_id,
                        partition = ?ended.lease.token, error = %e, "reader failed while stopping"),
                }
                if ended.after.is_some() {
                    dropped.push(ended.lease);
                }
            }
        };
        // Readers still delivering past the deadline are cut off where they are.
        let _ = tokio::time::timeout(self.options.drain_timeout, halting).await;
        dropped.extend(self.readers.abandon());
        self.lost(dropped.len());
        let lost = self.checkpoints.flush().await.unwrap_or_else(|e| {
            tracing::warn!(runner = %self.runner(), error = %e, "could not checkpoint dropped leases");
            Vec::new()
        });
        for lease in &dropped {
            self.checkpoints.forget(&lease.token);
        }
        dropped.retain(|l| !lost.contains(l));
        if let Err(e) = self.store.release(self.runner(), &dropped).await {
            tracing::warn!(runner = %self.runner(), error = %e,
                "could not release dropped leases; they expire instead");
        }
    }

    /// Releases the leases the store says this runner holds but it does not read: a release
    /// or claim that committed while its caller saw an error (a timeout, then a retry that
    /// found nothing) leaves such leases, which a live runner would otherwise keep unread
    /// forever. Runs between claims, so the reader set is complete.
    async fn release_strays(&self) {
        let strays: Vec<Lease> = match self.store.owned(self.runner()).await {
            Ok(owned) => owned
                .into_iter()
                .filter(|l| !self.readers.holds(l))
                .collect(),
            Err(e) => {
                tracing::warn!(runner = %self.runner(), error = %e, "cannot list this runner's leases");
                return;
            }
        };
        if strays.is_empty() {
            return;
        }
        tracing::warn!(
            runner = %self.runner(),
            partitions = strays.len(),
            "releasing leases this runner holds without reading them"
        );
        if let Err(e) = self.store.release(self.runner(), &strays).await {
            tracing::warn!(runner = %self.runner(), error = %e,
                "could not release stray leases; retrying later");
        }
    }

    /// Writes the acknowledged watermarks; the readers of leases the store refused stop.
    async fn checkpoint(&mut self) {
        match self.checkpoints.flush().await {
            Ok(lost) => {
                let n = self.readers.lose(&lost);
                self.lost(n);
            }
            Err(e) => tracing::warn!(error = %e, "checkpoint failed; will retry"),
        }
    }

    /// Starts draining the partitions above this runner's fair share (or one at the share
    /// for an underloaded runner); they are released when their readers stopped. Returns
    /// whether it gave one up for an underloaded runner.
    async fn rebalance(&mut self) -> bool {
        let load = match self.store.load(self.options.lease_duration).await {
            Ok(load) => load,
            Err(e) => {
                tracing::warn!(error = %e, "rebalancing skipped: cannot read the load");
                return false;
            }
        };
        let holding = Holding {
            max_connections: self.options.max_connections,
            held: self.readers.len(),
            keeping: self.readers.keeping(),
        };
        let release = holding.release(&load);
        if release.count == 0 {
            return false;
        }
        tracing::info!(
            runner = %self.runner(),
            held = holding.keeping,
            fair = load.fair_share(self.options.max_connections),
            live_runners = load.live_runners(),
            partitions = load.active_partitions,
            releasing = release.count,
            for_underloaded = release.yielding,
            "rebalancing"
        );
        self.readers.drain_to_release(release.count);
        release.yielding
    }

    async fn reader_ended(&mut self, ended: Ended) -> Result<(), SubscribeError> {
        self.want_claim = true;
        let Ended {
            lease,
            result,
            after,
        } = ended;
        match result {
            Ok(ReaderOutcome::Finished) => self.summary.partitions_finished += 1,
            Ok(ReaderOutcome::Stopped) => {
                if after == Some(AfterStop::Release) {
                    self.release(&lease).await;
                    self.summary.partitions_released += 1;
                    self.observer
                        .observe(ObserverEvent::Released { partitions: 1 });
                }
            }
            Ok(ReaderOutcome::Lost) => {}
            Err(ReaderError::Store {
                source: StoreError::LeaseLost { .. },
                ..
            }) => {
                tracing::info!(runner = %self.runner(), partition = ?lease.token,
                    "partition lost to another runner");
                if after.is_some() {
                    self.checkpoints.forget(&lease.token);
                    self.lost(1);
                }
            }
            Err(e) => {
                if after.is_some() {
                    self.failed.push(lease);
                }
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Counts partitions no longer read because their leases are gone.
    fn lost(&mut self, partitions: usize) {
        if partitions > 0 {
            self.summary.partitions_lost += partitions;
            self.observer.observe(ObserverEvent::Lost { partitions });
        }
    }

    /// Writes a released partition's last watermark and gives its lease up.
    async fn release(&self, lease: &Lease) {
        let result = async {
            let lost = self.checkpoints.flush().await?;
            self.checkpoints.forget(&lease.token);
            if !lost.contains(lease) {
                self.store
                    .release(self.runner(), std::slice::from_ref(lease))
                    .await?;
            }
            Ok::<_, StoreError>(())
        }
        .await;
        match result {
            Ok(()) => {
                tracing::debug!(runner = %self.runner(), partition = ?lease.token, "partition released")
            }
            Err(e) => tracing::warn!(runner = %self.runner(), partition = ?lease.token, error = %e,
                "could not release a partition; its lease expires instead"),
        }
    }

    /// The drain every run ends with: readers stop at a clean position, the last watermarks
    /// are written, every lease is given up so other runners continue at once, and the
    /// runner deregisters. A failed last checkpoint keeps the leases (they expire).
    async fn stop(mut self) -> Result<RunSummary, SubscribeError> {
        self.observer.observe(ObserverEvent::Stopping);
        self.readers.stop_all(StopMode::Drain);
        let mut held = std::mem::take(&mut self.failed);
        while let Some(ended) = self.readers.join_next().await {
            match ended.result {
                Ok(ReaderOutcome::Finished) => {
                    self.summary.partitions_finished += 1;
                    continue;
                }
                Ok(ReaderOutcome::Stopped | ReaderOutcome::Lost) => {}
                Err(e) => {
                    tracing::error!(partition = ?ended.lease.token, error = %e,
                        "reader failed while stopping");
                }
            }
            if ended.after.is_some() {
                held.push(ended.lease);
            }
        }
        // What was handed on is acknowledged before the last checkpoint counts it.
        self.sink.settle().await;
        let lost = self.checkpoints.flush().await?;
        held.retain(|l| !lost.contains(l));
        if let Err(e) = self.store.release(self.runner(), &held).await {
            tracing::warn!(runner = %self.runner(), error = %e,
                "could not release leases; they expire instead");
        }
        let runner = &self.options.runner_id;
        self.heartbeat.stop().await;
        if let Err(e) = self.store.deregister(runner).await {
            tracing::warn!(%runner, error = %e, "could not deregister");
        }
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests;
