//! How a reader stops: the whole path, from the runner's wish to the reader's outcome.
//!
//! ```text
//! runner:  StopMode (Run -> Drain -> Halt, only ever down)     via StopSignal
//! query:   Phase (Reading -> Draining { until })               Phase::apply, before each batch
//! query:   QueryEnd (Complete | Stopped)                       how one query ended
//! reader:  ReaderOutcome (Finished | Stopped | Lost)           what the runner gets back
//! ```
//!
//! A draining query delivers only what shares the watermark's commit timestamp; the first
//! later timestamp it sees, its deadline, or a halt ends it with its position final.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// What the runner wants of a reader; it only ever moves down this list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum StopMode {
    /// Keep reading.
    Run,
    /// Stop at a clean position: first deliver whatever else shares the watermark's commit
    /// timestamp (up to the drain timeout), so a resume repeats nothing. Graceful stop and
    /// rebalancing.
    Drain,
    /// Stop after the batch being delivered and read nothing more: this runner may have
    /// lost the lease (its heartbeat lapsed). A resume may repeat the records at the
    /// watermark's timestamp.
    Halt,
}

/// The reader's end of its runner's [`StopMode`] channel. A runner that dropped its end
/// wants nothing more from the reader: that reads as [`StopMode::Halt`].
pub(crate) struct StopSignal(watch::Receiver<StopMode>);

impl StopSignal {
    /// A signal and the runner's end of it, starting at [`StopMode::Run`].
    pub(crate) fn new() -> (watch::Sender<StopMode>, Self) {
        let (tx, rx) = watch::channel(StopMode::Run);
        (tx, Self(rx))
    }

    pub(super) fn mode(&self) -> StopMode {
        if self.0.has_changed().is_err() {
            StopMode::Halt
        } else {
            *self.0.borrow()
        }
    }

    /// Resolves once the mode is at least `mode`.
    pub(super) async fn reached(&mut self, mode: StopMode) {
        // An error means the runner is gone: that is Halt, past any mode.
        let _ = self.0.wait_for(|m| *m >= mode).await;
    }
}

/// Where one query is: delivering everything, or draining until a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Reading,
    /// Delivering only what shares the watermark's commit timestamp.
    Draining {
        until: Instant,
    },
}

impl Phase {
    /// Applies the runner's wish before the next batch; `Some` ends the query here.
    /// `acked_at_watermark`: some records at exactly the watermark are acknowledged, so
    /// others at that timestamp may still come and a drain is needed.
    pub(super) fn apply(
        &mut self,
        mode: StopMode,
        acked_at_watermark: bool,
        drain_timeout: Duration,
    ) -> Option<QueryEnd> {
        match (mode, *self) {
            (StopMode::Halt, _) => Some(QueryEnd::Stopped),
            (StopMode::Drain, Phase::Reading) if !acked_at_watermark => Some(QueryEnd::Stopped),
            (StopMode::Drain, Phase::Reading) => {
                *self = Phase::Draining {
                    until: Instant::now() + drain_timeout,
                };
                None
            }
            _ => None,
        }
    }
}

/// How one query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum QueryEnd {
    /// It ran to the partition's end (or the range's).
    Complete,
    /// A stop was asked for and the position is final.
    Stopped,
}

/// How a reader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReaderOutcome {
    /// The partition was read to its end and marked FINISHED.
    Finished,
    /// Stopped on request; the watermark is checkpointed and the partition stays unfinished.
    Stopped,
    /// Stopped at once because this runner lost the partition's lease: nothing more was
    /// written for it.
    Lost,
}
