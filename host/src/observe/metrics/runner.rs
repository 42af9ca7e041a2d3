//! The runner's coordination: checkpoints, leases, its heartbeat, and the health
//! `/healthz` and `/readyz` report.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::{FloatGauge, Health, latency_histogram, registered, registered_in};
use crate::observe::Event;

#[derive(Debug)]
pub(super) struct RunnerMetrics {
    checkpoints: Counter,
    checkpoint_failures: Counter,
    checkpoints_refused: Counter,
    checkpoint_seconds: Histogram,
    lease_claims: Counter,
    lease_losses: Counter,
    lease_releases: Counter,
    heartbeat_age: FloatGauge,
    ready: Gauge,
    liveness: Mutex<Liveness>,
}

/// What the health is computed from.
#[derive(Debug, Default)]
struct Liveness {
    /// Set once subscribed: the lease the heartbeats must land within.
    lease: Option<Duration>,
    /// When the last heartbeat landed, as of the last liveness check.
    beat_at: Option<Instant>,
    /// Whether the runner saw itself alive at its last liveness check.
    alive: bool,
    stopping: bool,
}

impl RunnerMetrics {
    pub(super) fn new(r: &mut Registry) -> Self {
        Self {
            checkpoints: registered(r, "checkpoints", "Checkpoint commits", Counter::default()),
            checkpoint_failures: registered(
                r,
                "checkpoint_failures",
                "Checkpoint commits that failed (retried at the next interval)",
                Counter::default(),
            ),
            checkpoints_refused: registered(
                r,
                "checkpoints_refused",
                "Watermarks a checkpoint could not write because the lease had moved on",
                Counter::default(),
            ),
            checkpoint_seconds: registered_in(
                r,
                "checkpoint_duration",
                "Time a checkpoint commit took",
                Unit::Seconds,
                latency_histogram(),
            ),
            lease_claims: registered(r, "lease_claims", "Partitions claimed", Counter::default()),
            lease_losses: registered(
                r,
                "lease_losses",
                "Partitions lost (another runner took the lease, or this runner lapsed)",
                Counter::default(),
            ),
            lease_releases: registered(
                r,
                "lease_releases",
                "Partitions given up to rebalance",
                Counter::default(),
            ),
            heartbeat_age: registered_in(
                r,
                "heartbeat_age",
                "Age of this runner's last heartbeat, as of its last liveness check",
                Unit::Seconds,
                FloatGauge::default(),
            ),
            ready: registered(
                r,
                "ready",
                "1 while the runner is subscribed, live and not stopping",
                Gauge::default(),
            ),
            liveness: Mutex::new(Liveness::default()),
        }
    }

    pub(super) fn observe(&self, event: &Event<'_>) {
        match *event {
            Event::Subscribed { lease, .. } => {
                let mut l = self.liveness.lock().expect("metrics state");
                l.lease = Some(lease);
                l.beat_at = Some(Instant::now());
                l.alive = true;
            }
            Event::Stopping => self.liveness.lock().expect("metrics state").stopping = true,
            Event::Claimed { partitions } => {
                self.lease_claims.inc_by(partitions as u64);
            }
            Event::Lost { partitions } => {
                self.lease_losses.inc_by(partitions as u64);
            }
            Event::Released { partitions } => {
                self.lease_releases.inc_by(partitions as u64);
            }
            Event::Heartbeat { age, alive } => {
                self.heartbeat_age.set(age.as_secs_f64());
                let mut l = self.liveness.lock().expect("metrics state");
                l.beat_at = Instant::now().checked_sub(age);
                l.alive = alive;
            }
            Event::Checkpointed { lost, took, .. } => {
                self.checkpoints.inc();
                self.checkpoints_refused.inc_by(lost as u64);
                self.checkpoint_seconds.observe(took.as_secs_f64());
            }
            Event::CheckpointFailed { took } => {
                self.checkpoint_failures.inc();
                self.checkpoint_seconds.observe(took.as_secs_f64());
            }
            _ => {}
        }
    }

    pub(super) fn health(&self) -> Health {
        let l = self.liveness.lock().expect("metrics state");
        let Some(lease) = l.lease else {
            return Health {
                live: true,
                ready: false,
            };
        };
        let live = l.alive && l.beat_at.is_some_and(|at| at.elapsed() < lease);
        Health {
            live,
            ready: live && !l.stopping,
        }
    }

    /// Brings the `ready` gauge up to date, before a scrape.
    pub(super) fn update_ready(&self) {
        self.ready.set(i64::from(self.health().ready));
    }
}
