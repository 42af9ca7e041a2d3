//! Subscriber: the scheduler that turns partitions into readers.
//!
//! Place in the flow: it owns the run. It prepares the partition store, seeds the root
//! partition when the store is empty (otherwise it resumes), starts a reader for every
//! partition that is ready (CREATED, all parents FINISHED) up to `max_connections`, flushes
//! checkpoints on a timer, and ends when every partition reached `end`, when asked to stop
//! (readers drain, a last checkpoint is written), or on the first non-transient failure.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpointer;
use crate::consumer::Consumer;
use crate::partition::{
    NewPartition, PartitionMetadata, PartitionStore, PartitionToken, StoreError,
};
use crate::reader::{self, ReaderContext, ReaderError, ReaderOutcome};
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
}

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
    /// non-transient error. On shutdown, readers drain and the last watermarks are written
    /// before this returns.
    pub async fn subscribe<C: Consumer>(
        &self,
        consumer: C,
        shutdown: CancellationToken,
    ) -> Result<RunSummary, SubscribeError> {
        let opts = &self.options;
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
        tracing::info!(runner = %opts.runner_id, stream = self.source.stream(), seeded, "subscribing");

        let checkpoints = Arc::new(Checkpointer::new(Arc::clone(&self.store)));
        let ctx = Arc::new(ReaderContext {
            source: self.source.clone(),
            store: Arc::clone(&self.store),
            checkpoints: Arc::clone(&checkpoints),
            consumer: Arc::new(consumer),
            drain_timeout: opts.drain_timeout,
        });
        let stop_readers = CancellationToken::new();
        let mut readers: JoinSet<(PartitionToken, Result<ReaderOutcome, ReaderError>)> =
            JoinSet::new();
        let mut held: HashSet<PartitionToken> = HashSet::new();
        let mut summary = RunSummary::default();

        // Partitions an earlier run left unfinished are resumed from their watermarks.
        let resumed = self.store.in_progress().await?;
        for p in resumed {
            spawn(&mut readers, &mut held, &ctx, p, &stop_readers);
        }

        let mut checkpoint_timer = tokio::time::interval(opts.checkpoint_interval);
        let mut poll_timer = tokio::time::interval(opts.poll_interval);
        let mut failure: Option<SubscribeError> = None;
        loop {
            // A store failure (after its own retries) ends the run, but through the drain.
            if let Err(e) = self
                .schedule(&mut readers, &mut held, &ctx, &stop_readers)
                .await
            {
                failure = Some(e.into());
                break;
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
                _ = checkpoint_timer.tick() => {
                    if let Err(e) = checkpoints.flush().await {
                        tracing::warn!(error = %e, "checkpoint failed; will retry");
                    }
                }
                _ = poll_timer.tick() => {}
                Some(joined) = readers.join_next(), if !readers.is_empty() => {
                    let (token, result) = joined.expect("reader task panicked");
                    held.remove(&token);
                    match result {
                        Ok(ReaderOutcome::Finished) => summary.partitions_finished += 1,
                        Ok(ReaderOutcome::Stopped) => {}
                        Err(e) => {
                            failure = Some(e.into());
                            break;
                        }
                    }
                }
            }
        }

        // Drain: readers stop at a clean position, then the last watermarks are written.
        stop_readers.cancel();
        while let Some(joined) = readers.join_next().await {
            let (token, result) = joined.expect("reader task panicked");
            match result {
                Ok(ReaderOutcome::Finished) => summary.partitions_finished += 1,
                Ok(ReaderOutcome::Stopped) => {}
                Err(e) => {
                    tracing::error!(partition = ?token, error = %e, "reader failed while stopping");
                }
            }
        }
        checkpoints.flush().await?;
        summary.metadata_writes = self.store.writes() - writes_before;
        tracing::info!(runner = %opts.runner_id, finished = summary.partitions_finished,
            metadata_writes = summary.metadata_writes, "subscription ended");
        match failure {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }

    /// Starts readers for ready partitions while this runner has room.
    async fn schedule<C: Consumer>(
        &self,
        readers: &mut JoinSet<(PartitionToken, Result<ReaderOutcome, ReaderError>)>,
        held: &mut HashSet<PartitionToken>,
        ctx: &Arc<ReaderContext<C>>,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let room = self.options.max_connections.saturating_sub(held.len());
        if room == 0 {
            return Ok(());
        }
        let ready: Vec<PartitionMetadata> = self
            .store
            .ready()
            .await?
            .into_iter()
            .filter(|p| !held.contains(&p.token))
            .take(room)
            .collect();
        if ready.is_empty() {
            return Ok(());
        }
        let tokens: Vec<PartitionToken> = ready.iter().map(|p| p.token.clone()).collect();
        let scheduled = self.store.schedule(&tokens).await?;
        for p in ready {
            if scheduled.contains(&p.token) {
                spawn(readers, held, ctx, p, stop);
            }
        }
        Ok(())
    }
}

fn spawn<C: Consumer>(
    readers: &mut JoinSet<(PartitionToken, Result<ReaderOutcome, ReaderError>)>,
    held: &mut HashSet<PartitionToken>,
    ctx: &Arc<ReaderContext<C>>,
    partition: PartitionMetadata,
    stop: &CancellationToken,
) {
    let token = partition.token.clone();
    tracing::debug!(partition = ?token, watermark = %partition.watermark, "starting reader");
    held.insert(token.clone());
    let ctx = Arc::clone(ctx);
    let stop = stop.clone();
    readers.spawn(async move { (token, reader::run(ctx, partition, stop).await) });
}
