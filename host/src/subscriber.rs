//! Subscriber: the runner — it registers, claims partitions, and turns them into readers.
//!
//! Place in the flow: it owns the run. It prepares the partition store, seeds the root
//! partition when the store is empty (otherwise it resumes), registers this runner and
//! heartbeats, claims partitions (ready ones, and ones whose owner released them or stopped
//! heartbeating for `lease_duration`) up to `max_connections` and starts a reader for each,
//! flushes checkpoints on a timer, releases partitions above its fair share every
//! `rebalancing_interval`, and ends when every partition reached `end`, when asked to stop
//! (readers drain, a last checkpoint is written, every lease is released, the runner
//! deregisters), or on the first non-transient failure.
//!
//! Invariants: a reader runs only while this runner holds the partition's lease. A lease
//! the store refuses (another runner claimed the partition) stops its reader at once, and so
//! does losing every lease when this runner's own heartbeat is older than the lease
//! duration (it was paused or cut off): it cannot know what others took meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpointer;
use crate::consumer::Consumer;
use crate::partition::{
    CLAIM_BATCH, Claim, Lease, NewPartition, PartitionMetadata, PartitionStore, PartitionToken,
    StoreError,
};
use crate::reader::{self, ReaderContext, ReaderError, ReaderOutcome, Stop};
use crate::source::SpannerSource;
use crate::timestamp::Timestamp;

/// Settings of a subscriber; `Default` gives the CLI's defaults.
#[derive(Debug, Clone)]
pub struct SubscriberOptions {
    /// Identifies this runner in logs and, with leases, in the metadata table.
    pub runner_id: String,
    /// Where an empty store starts; default: now.
    pub start: Option<Timestamp>,
    /// Where reading ends (inclusive: records committed at `end` are delivered); default:
    /// never.
    pub end: Option<Timestamp>,
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
}

impl Default for SubscriberOptions {
    fn default() -> Self {
        Self {
            runner_id: format!("runner-{:08x}", fastrand::u32(..)),
            start: None,
            end: None,
            heartbeat_interval: Duration::from_secs(3),
            max_connections: 400,
            checkpoint_interval: Duration::from_secs(1),
            poll_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            lease_duration: Duration::from_secs(30),
            rebalancing_interval: None,
        }
    }
}

/// Why a subscription failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Reader(#[from] ReaderError),
    #[error("--end ({end}) must be after --start ({start})")]
    EmptyRange { start: Timestamp, end: Timestamp },
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

/// A partition this runner reads.
struct Held {
    lease: Lease,
    /// Drain (shutdown, rebalancing) or halt (lapse) the reader; see [`Stop`].
    stop: Stop,
    /// Immediate stop (lease lost): drop the reader where it is.
    abort: CancellationToken,
    /// Being released to rebalance: give the lease up once its reader stopped.
    releasing: bool,
}

/// Reader tasks; each returns its lease, so a late exit cannot be mistaken for a newer
/// reader of the same partition.
type Readers = JoinSet<(Lease, Result<ReaderOutcome, ReaderError>)>;

/// Reads a change stream and hands its records to a [`Consumer`].
pub struct Subscriber {
    source: SpannerSource,
    store: Arc<dyn PartitionStore>,
    options: SubscriberOptions,
}

impl Subscriber {
    pub fn new(
        source: SpannerSource,
        store: Arc<dyn PartitionStore>,
        options: SubscriberOptions,
    ) -> Self {
        Self {
            source,
            store,
            options,
        }
    }

    pub fn options(&self) -> &SubscriberOptions {
        &self.options
    }

    /// Runs until every partition reaches `end`, `shutdown` is cancelled, or a
    /// non-transient error. On shutdown, readers drain, the last watermarks are written and
    /// every lease is released before this returns.
    pub async fn subscribe<C: Consumer>(
        &self,
        consumer: C,
        shutdown: CancellationToken,
    ) -> Result<RunSummary, SubscribeError> {
        let opts = &self.options;
        let runner = opts.runner_id.as_str();
        let start = opts.start.unwrap_or_else(Timestamp::now);
        if let Some(end) = opts.end
            && end <= start
        {
            return Err(SubscribeError::EmptyRange { start, end });
        }
        let writes_before = self.store.writes();
        self.store.prepare().await?;
        tracing::debug!("partition store ready");
        let seeded = self
            .store
            .seed(NewPartition {
                token: PartitionToken::root(),
                parents: vec![],
                start,
                end: opts.end,
                heartbeat_millis: opts.heartbeat_interval.as_millis().clamp(1_000, 300_000) as i64,
            })
            .await?;
        self.store.reset(runner).await?;
        let capacity = opts.max_connections;
        self.store.heartbeat(runner, capacity).await?;
        // Heartbeats run in their own task: a slow metadata write elsewhere must not make
        // this runner look dead.
        let liveness = Arc::new(Liveness {
            last_beat: std::sync::Mutex::new(Instant::now()),
            lapsed: std::sync::atomic::AtomicBool::new(false),
        });
        let beating = CancellationToken::new();
        let heartbeats = tokio::spawn(heartbeat_loop(
            Arc::clone(&self.store),
            runner.to_owned(),
            capacity,
            opts.lease_duration,
            Arc::clone(&liveness),
            beating.clone(),
        ));
        let mut alive = true;
        tracing::info!(runner, stream = self.source.stream(), seeded, "subscribing");

        let checkpoints = Arc::new(Checkpointer::new(Arc::clone(&self.store), runner));
        let ctx = Arc::new(ReaderContext {
            runner: runner.to_owned(),
            source: self.source.clone(),
            store: Arc::clone(&self.store),
            checkpoints: Arc::clone(&checkpoints),
            consumer: Arc::new(consumer),
            drain_timeout: opts.drain_timeout,
        });
        let mut readers = Readers::new();
        let mut held: HashMap<PartitionToken, Held> = HashMap::new();
        let mut summary = RunSummary::default();

        let mut checkpoint_timer = tokio::time::interval(opts.checkpoint_interval);
        let mut poll_timer = tokio::time::interval(opts.poll_interval);
        let mut liveness_timer = tokio::time::interval(opts.lease_duration / 3);
        let mut strays_timer = tokio::time::interval(opts.lease_duration);
        let mut rebalance_timer = tokio::time::interval(
            opts.rebalancing_interval
                .unwrap_or(Duration::from_secs(3600)),
        );
        rebalance_timer.tick().await;
        let mut failure: Option<SubscribeError> = None;
        let mut want_claim = true;
        // Set when this runner gave a partition up for an underloaded one: until the next
        // rebalancing it claims one below its share while a runner is still underloaded, so
        // it does not take the partition back.
        let mut yielding = false;
        loop {
            // A store failure (after its own retries) ends the run, but through the drain.
            if alive && want_claim {
                match self
                    .claim(&mut readers, &mut held, &ctx, &checkpoints, yielding)
                    .await
                {
                    Ok(more) => want_claim = more,
                    Err(e) => {
                        failure = Some(e.into());
                        break;
                    }
                }
            }
            if opts.end.is_some() && held.is_empty() {
                match self.store.unfinished().await {
                    Ok(0) => {
                        summary.reached_end = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        failure = Some(e.into());
                        break;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = liveness_timer.tick() => {
                    let silent = liveness.last_beat.lock().expect("heartbeat clock").elapsed();
                    let lapsed = liveness.lapsed.swap(false, std::sync::atomic::Ordering::Relaxed);
                    if silent > opts.lease_duration || lapsed {
                        // Too late for our own lease (paused, cut off): others may own our
                        // partitions by now, so every reader stops at once.
                        if alive {
                            tracing::warn!(runner, partitions = held.len(), silent = ?silent,
                                "no heartbeat within the lease duration: stopping every reader");
                        }
                        self.give_up_after_lapse(&mut readers, &mut held, &checkpoints, &mut summary)
                            .await;
                        alive = false;
                    } else if !alive {
                        tracing::info!(runner, "heartbeat restored: claiming partitions again");
                        alive = true;
                        want_claim = true;
                    }
                }
                _ = strays_timer.tick(), if alive => self.release_strays(&held).await,
                _ = checkpoint_timer.tick() => {
                    match checkpoints.flush().await {
                        Ok(lost) => summary.partitions_lost += lose(&mut held, &lost),
                        Err(e) => tracing::warn!(error = %e, "checkpoint failed; will retry"),
                    }
                }
                _ = rebalance_timer.tick(), if opts.rebalancing_interval.is_some() => {
                    yielding = self.rebalance(&mut held).await;
                }
                _ = poll_timer.tick() => want_claim = true,
                // A full batch was claimed and there is room for more: claim again now.
                _ = std::future::ready(()), if want_claim && alive => {}
                Some(joined) = readers.join_next(), if !readers.is_empty() => {
                    let (lease, result) = joined.expect("reader task panicked");
                    want_claim = true;
                    // A reader that was already dropped from `held` (lost) may end late; a newer
                    // reader of the same partition has another epoch.
                    let h = match held.get(&lease.token) {
                        Some(h) if h.lease == lease => held.remove(&lease.token),
                        _ => None,
                    };
                    let token = lease.token.clone();
                    match result {
                        Ok(ReaderOutcome::Finished) => summary.partitions_finished += 1,
                        Ok(ReaderOutcome::Stopped) => {
                            if let Some(h) = h.filter(|h| h.releasing) {
                                self.release(&checkpoints, &h.lease).await;
                                summary.partitions_released += 1;
                            }
                        }
                        Ok(ReaderOutcome::Lost) => {}
                        Err(ReaderError::Store { source: StoreError::LeaseLost { .. }, .. }) => {
                            tracing::info!(runner, partition = ?token, "partition lost to another runner");
                            if h.is_some() {
                                checkpoints.forget(&token);
                                summary.partitions_lost += 1;
                            }
                        }
                        Err(e) => {
                            failure = Some(e.into());
                            break;
                        }
                    }
                }
            }
        }

        // Drain: readers stop at a clean position, the last watermarks are written, and
        // every lease is given up so other runners continue at once.
        for h in held.values() {
            h.stop.drain.cancel();
        }
        while let Some(joined) = readers.join_next().await {
            let (lease, result) = joined.expect("reader task panicked");
            let token = lease.token;
            match result {
                Ok(ReaderOutcome::Finished) => summary.partitions_finished += 1,
                Ok(ReaderOutcome::Stopped | ReaderOutcome::Lost) => {}
                Err(e) => {
                    tracing::error!(partition = ?token, error = %e, "reader failed while stopping");
                }
            }
        }
        let lost = checkpoints.flush().await?;
        let leases: Vec<Lease> = held
            .into_values()
            .map(|h| h.lease)
            .filter(|l| !lost.contains(l))
            .collect();
        if let Err(e) = self.store.release(runner, &leases).await {
            tracing::warn!(runner, error = %e, "could not release leases; they expire instead");
        }
        beating.cancel();
        let _ = heartbeats.await;
        if let Err(e) = self.store.deregister(runner).await {
            tracing::warn!(runner, error = %e, "could not deregister");
        }
        summary.metadata_writes = self.store.writes() - writes_before;
        tracing::info!(
            runner,
            finished = summary.partitions_finished,
            lost = summary.partitions_lost,
            released = summary.partitions_released,
            metadata_writes = summary.metadata_writes,
            "subscription ended"
        );
        match failure {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }

    /// Claims partitions while this runner has room (with rebalancing: up to its fair
    /// share), and starts their readers. Returns whether to claim again at once (a full
    /// batch came back and there is room for more).
    async fn claim<C: Consumer>(
        &self,
        readers: &mut Readers,
        held: &mut HashMap<PartitionToken, Held>,
        ctx: &Arc<ReaderContext<C>>,
        checkpoints: &Checkpointer,
        yielding: bool,
    ) -> Result<bool, StoreError> {
        let opts = &self.options;
        let mut room = opts.max_connections.saturating_sub(held.len());
        if opts.rebalancing_interval.is_some() && room > 0 {
            // Taking more than the fair share would only be given back at the next
            // rebalancing.
            let load = self.store.load(opts.lease_duration).await?;
            let keeping = held.values().filter(|h| !h.releasing).count();
            // After yielding one, stay one below the share only while a runner is still
            // underloaded: else the last unowned partitions would wait for the next
            // rebalancing (measured: a 30 s tail after a failover of 10,000 partitions).
            let target = load
                .fair_share(opts.max_connections)
                .saturating_sub(usize::from(yielding && load.underloaded()));
            // Nothing without a live owner: skip the claim's scan of the table.
            room = room
                .min(target.saturating_sub(keeping))
                .min(load.unowned_partitions);
            tracing::debug!(runner = %opts.runner_id, keeping, target,
                unowned = load.unowned_partitions, live_runners = load.live_runners(), room,
                "claim");
        }
        if room == 0 {
            return Ok(false);
        }
        let claims = self
            .store
            .claim(&opts.runner_id, room, opts.lease_duration)
            .await?;
        let more = claims.len() == CLAIM_BATCH && room > CLAIM_BATCH;
        for Claim { partition, lease } in claims {
            checkpoints.hold(&lease, partition.watermark);
            spawn(readers, held, ctx, partition, lease);
        }
        Ok(more)
    }

    /// Starts draining the partitions above this runner's fair share (or one at the share
    /// when another runner is two or more below its own); they are released when their
    /// readers stopped. Returns whether it gave one up for an underloaded runner.
    async fn rebalance(&self, held: &mut HashMap<PartitionToken, Held>) -> bool {
        let load = match self.store.load(self.options.lease_duration).await {
            Ok(load) => load,
            Err(e) => {
                tracing::warn!(error = %e, "rebalancing skipped: cannot read the load");
                return false;
            }
        };
        let fair = load.fair_share(self.options.max_connections);
        let keeping: Vec<&mut Held> = held.values_mut().filter(|h| !h.releasing).collect();
        let mut excess = keeping.len().saturating_sub(fair);
        let yielding = excess == 0 && fair > 0 && keeping.len() == fair && load.underloaded();
        if yielding {
            excess = 1;
        }
        if excess == 0 {
            return false;
        }
        tracing::info!(runner = %self.options.runner_id, held = keeping.len(), fair,
            live_runners = load.live_runners(), partitions = load.active_partitions,
            releasing = excess, for_underloaded = yielding, "rebalancing");
        for h in keeping.into_iter().take(excess) {
            h.releasing = true;
            h.stop.drain.cancel();
        }
        yielding
    }

    /// After a lapse (this runner's heartbeat was older than the lease: others may own its
    /// partitions): stops every reader after the batch it is delivering (a batch cut off
    /// halfway would be out but unacknowledged, so repeated), writes (fenced) what they
    /// acknowledged, and gives up (fenced) the leases nobody took, which would otherwise
    /// stay its own, unread, once it heartbeats again. Whoever claims them next, often this
    /// runner, resumes where they stopped.
    async fn give_up_after_lapse(
        &self,
        readers: &mut Readers,
        held: &mut HashMap<PartitionToken, Held>,
        checkpoints: &Checkpointer,
        summary: &mut RunSummary,
    ) {
        let runner = &self.options.runner_id;
        for h in held.values() {
            h.stop.halt.cancel();
        }
        let halting = tokio::time::timeout(self.options.drain_timeout, async {
            while let Some(joined) = readers.join_next().await {
                let (lease, result) = joined.expect("reader task panicked");
                match result {
                    Ok(ReaderOutcome::Finished) => {
                        summary.partitions_finished += 1;
                        if held.get(&lease.token).is_some_and(|h| h.lease == lease) {
                            held.remove(&lease.token);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(runner, partition = ?lease.token, error = %e,
                        "reader failed while stopping"),
                }
            }
        });
        if halting.await.is_err() {
            for h in held.values() {
                h.abort.cancel();
            }
        }
        let mut dropped: Vec<Lease> = held.drain().map(|(_, h)| h.lease).collect();
        summary.partitions_lost += dropped.len();
        let lost = checkpoints.flush().await.unwrap_or_else(|e| {
            tracing::warn!(runner, error = %e, "could not checkpoint dropped leases");
            Vec::new()
        });
        for lease in &dropped {
            checkpoints.forget(&lease.token);
        }
        dropped.retain(|l| !lost.contains(l));
        if let Err(e) = self.store.release(runner, &dropped).await {
            tracing::warn!(runner, error = %e, "could not release dropped leases; they expire instead");
        }
    }

    /// Releases the leases the store says this runner holds but it does not read: a release
    /// or claim that committed while its caller saw an error (a timeout, then a retry that
    /// found nothing) leaves such leases, which a live runner would otherwise keep unread
    /// forever. Runs between claims, so `held` is complete.
    async fn release_strays(&self, held: &HashMap<PartitionToken, Held>) {
        let runner = &self.options.runner_id;
        let strays: Vec<Lease> = match self.store.owned(runner).await {
            Ok(owned) => owned
                .into_iter()
                .filter(|l| held.get(&l.token).is_none_or(|h| h.lease != *l))
                .collect(),
            Err(e) => {
                tracing::warn!(runner, error = %e, "cannot list this runner's leases");
                return;
            }
        };
        if strays.is_empty() {
            return;
        }
        tracing::warn!(
            runner,
            partitions = strays.len(),
            "releasing leases this runner holds without reading them"
        );
        if let Err(e) = self.store.release(runner, &strays).await {
            tracing::warn!(runner, error = %e, "could not release stray leases; retrying later");
        }
    }

    /// Writes a released partition's last watermark and gives its lease up.
    async fn release(&self, checkpoints: &Checkpointer, lease: &Lease) {
        let runner = &self.options.runner_id;
        let result = async {
            let lost = checkpoints.flush().await?;
            checkpoints.forget(&lease.token);
            if !lost.contains(lease) {
                self.store
                    .release(runner, std::slice::from_ref(lease))
                    .await?;
            }
            Ok::<_, StoreError>(())
        }
        .await;
        match result {
            Ok(()) => tracing::debug!(runner, partition = ?lease.token, "partition released"),
            Err(e) => tracing::warn!(runner, partition = ?lease.token, error = %e,
                "could not release a partition; its lease expires instead"),
        }
    }
}

/// Stops the readers of lost leases at once; returns how many there were.
fn lose(held: &mut HashMap<PartitionToken, Held>, lost: &[Lease]) -> usize {
    let mut n = 0;
    for lease in lost {
        if held.get(&lease.token).is_some_and(|h| h.lease == *lease) {
            tracing::info!(partition = ?lease.token, epoch = lease.epoch, "lease lost: stopping the reader");
            if let Some(h) = held.remove(&lease.token) {
                h.abort.cancel();
                n += 1;
            }
        }
    }
    n
}

/// When this runner last renewed its registration, and whether it ever went longer than
/// the lease duration without (then its leases may be gone, even if it is renewed now).
struct Liveness {
    last_beat: std::sync::Mutex<Instant>,
    lapsed: std::sync::atomic::AtomicBool,
}

/// Renews this runner's registration every third of the lease duration until `stop`.
async fn heartbeat_loop(
    store: Arc<dyn PartitionStore>,
    runner: String,
    capacity: usize,
    lease_duration: Duration,
    liveness: Arc<Liveness>,
    stop: CancellationToken,
) {
    let mut timer = tokio::time::interval(lease_duration / 3);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = timer.tick() => {}
        }
        let started = Instant::now();
        match store.heartbeat(&runner, capacity).await {
            Ok(()) => {
                let mut last = liveness.last_beat.lock().expect("heartbeat clock");
                if started.duration_since(*last) > lease_duration {
                    liveness
                        .lapsed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                // The lease runs from when the write was sent, not from when it returned.
                *last = started;
            }
            Err(e) => tracing::warn!(runner, error = %e, "heartbeat failed; will retry"),
        }
    }
}

fn spawn<C: Consumer>(
    readers: &mut Readers,
    held: &mut HashMap<PartitionToken, Held>,
    ctx: &Arc<ReaderContext<C>>,
    partition: PartitionMetadata,
    lease: Lease,
) {
    let token = partition.token.clone();
    tracing::debug!(partition = ?token, epoch = lease.epoch, watermark = %partition.watermark, "starting reader");
    let (stop, abort) = (Stop::default(), CancellationToken::new());
    held.insert(
        token.clone(),
        Held {
            lease: lease.clone(),
            stop: stop.clone(),
            abort: abort.clone(),
            releasing: false,
        },
    );
    let ctx = Arc::clone(ctx);
    readers.spawn(async move {
        let result = tokio::select! {
            r = reader::run(ctx, partition, lease.clone(), stop) => r,
            _ = abort.cancelled() => Ok(ReaderOutcome::Lost),
        };
        (lease, result)
    });
}
