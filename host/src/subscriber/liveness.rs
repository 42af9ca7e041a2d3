//! This runner's registration heartbeat, and whether its leases can still be trusted.
//!
//! The heartbeat runs in its own task: a slow metadata write elsewhere (a checkpoint, a
//! claim) must not make this runner look dead. The runner reads the [`Pulse`] the task keeps
//! on every liveness tick: a runner whose last heartbeat is older than the lease duration, or
//! that went that long without one at any moment since the last tick, has [`Lapsed`]: others
//! may own its partitions by now.
//!
//! [`Lapsed`]: Liveness::Lapsed

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::partition::{PartitionStore, RunnerId};

/// Whether this runner's leases are its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Heartbeats land within the lease duration: the runner claims and reads.
    Alive,
    /// A heartbeat came too late: the runner stopped every reader and claims nothing until a
    /// fresh heartbeat lands.
    Lapsed,
}

/// What the heartbeat task saw.
#[derive(Debug)]
struct Pulse {
    /// When the last successful heartbeat was sent (the lease runs from then).
    last_beat: Instant,
    /// Whether two successful heartbeats were ever further apart than the lease.
    gap: bool,
}

/// The heartbeat task; stopped when dropped.
pub(crate) struct Heartbeat {
    pulse: Arc<Mutex<Pulse>>,
    lease_duration: Duration,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts renewing `runner`'s registration every third of `lease_duration`; call after
    /// a first heartbeat succeeded.
    pub fn start(
        store: Arc<dyn PartitionStore>,
        runner: RunnerId,
        capacity: usize,
        lease_duration: Duration,
    ) -> Self {
        let pulse = Arc::new(Mutex::new(Pulse {
            last_beat: Instant::now(),
            gap: false,
        }));
        let stop = CancellationToken::new();
        let task = tokio::spawn(beat(
            Beat {
                store,
                runner,
                capacity,
                lease_duration,
            },
            Arc::clone(&pulse),
            stop.clone(),
        ));
        Self {
            pulse,
            lease_duration,
            stop,
            task: Some(task),
        }
    }

    /// Whether this runner is still alive in the others' eyes (see the module docs); reading
    /// it clears a gap seen since the last call.
    pub fn check(&self) -> (Liveness, Duration) {
        let mut pulse = self.pulse.lock().expect("heartbeat pulse");
        let silent = pulse.last_beat.elapsed();
        let gap = std::mem::take(&mut pulse.gap);
        let liveness = if gap || silent > self.lease_duration {
            Liveness::Lapsed
        } else {
            Liveness::Alive
        };
        (liveness, silent)
    }

    /// Stops heartbeating and waits for the task to end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What one heartbeat writes.
struct Beat {
    store: Arc<dyn PartitionStore>,
    runner: RunnerId,
    capacity: usize,
    lease_duration: Duration,
}

async fn beat(beat: Beat, pulse: Arc<Mutex<Pulse>>, stop: CancellationToken) {
    let mut timer = tokio::time::interval(beat.lease_duration / 3);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = timer.tick() => {}
        }
        let started = Instant::now();
        match beat.store.heartbeat(&beat.runner, beat.capacity).await {
            Ok(()) => {
                let mut pulse = pulse.lock().expect("heartbeat pulse");
                if started.duration_since(pulse.last_beat) > beat.lease_duration {
                    pulse.gap = true;
                }
                // The lease runs from when the write was sent, not from when it returned.
                pulse.last_beat = started;
            }
            Err(e) => {
                tracing::warn!(runner = %beat.runner, error = %e, "heartbeat failed; will retry")
            }
        }
    }
}
