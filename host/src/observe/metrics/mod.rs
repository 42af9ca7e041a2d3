//! Metrics: an [`Observer`] that keeps Prometheus metrics of every stage and the runner's
//! health.
//!
//! Place in the flow: beside every stage, fed by [`Event`]s; read by [`serve`](super::serve)
//! (`/metrics`, `/healthz`, `/readyz`), by the CLI's progress reporting and its end-of-run
//! summary.
//!
//! One file per stage holds that stage's metrics: each metric is declared and registered in
//! one expression ([`registered`]) and updated where the file matches the events it cares
//! about, so a new metric is one edit in one file: `reading` (records, lag, partitions),
//! `runner` (checkpoints, leases, heartbeat, health), `outputs` (destinations, dead letters,
//! the replica), `plugins` (calls, failures, outcomes, totals), `snapshot`.
//!
//! Invariants: recording is atomic increments plus, per batch, one short lock (positions,
//! health); nothing is computed per scrape beyond the lag over held partitions. Label values
//! are bounded: tables of the schema, mod types, output names of the pipeline, plugin names
//! of the chain, error classes — never partition tokens, keys or runner ids.

mod outputs;
mod plugins;
mod reading;
mod runner;
mod snapshot;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry, Unit};

use super::{Event, Observer};
use crate::timestamp::Timestamp;
use outputs::OutputMetrics;
use plugins::PluginMetrics;
pub use plugins::PluginTotals;
use reading::ReadingMetrics;
use runner::RunnerMetrics;
use snapshot::SnapshotMetrics;
pub use snapshot::SnapshotProgress;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Latency buckets from 1 ms to about 33 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Registers `metric` as `name` (under the `screamer_` prefix) and hands it back: a metric
/// is declared and registered in one expression.
fn registered<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

/// [`registered`], with a unit (a suffix of the exported name).
fn registered_in<M: Metric + Clone>(
    r: &mut Registry,
    name: &str,
    help: &str,
    unit: Unit,
    metric: M,
) -> M {
    r.register_with_unit(name, help, unit, metric.clone());
    metric
}

/// The run's metrics and health; see the module docs.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reading: ReadingMetrics,
    runner: RunnerMetrics,
    outputs: OutputMetrics,
    plugins: PluginMetrics,
    snapshot: SnapshotMetrics,
}

/// The runner's health as `/healthz` and `/readyz` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// False once this runner's last heartbeat is older than its lease (before subscribing
    /// there is no lease to lapse: live).
    pub live: bool,
    /// Subscribed, not stopping, and live.
    pub ready: bool,
}

/// A snapshot for progress reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Data change records read from Spanner so far.
    pub records: u64,
    /// Records sent to the dead letters so far.
    pub dead_letters: u64,
    /// Partitions this runner holds now.
    pub partitions_held: usize,
    /// Partitions this runner finished.
    pub partitions_finished: u64,
    /// The slowest held partition's acknowledged position.
    pub slowest: Option<Timestamp>,
    /// Now minus [`Progress::slowest`] (zero when no partition is held).
    pub lag: Duration,
    /// How far behind now the stream is released: with `--ordering transactions`, now minus
    /// the latest commit timestamp released once every partition was read past it; with
    /// `key`, [`Progress::lag`].
    pub low_watermark_lag: Duration,
    /// With a snapshot in the store: how far it is.
    pub snapshot: Option<SnapshotProgress>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics with every contract family registered, all zero.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("screamer");
        r.register(
            "build",
            "The screamer build",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Metrics {
            reading: ReadingMetrics::new(&mut r),
            runner: RunnerMetrics::new(&mut r),
            outputs: OutputMetrics::new(&mut r),
            plugins: PluginMetrics::new(&mut r),
            snapshot: SnapshotMetrics::new(&mut r),
            registry: r,
        }
    }

    /// Starts the series of `outputs` and `plugins` at zero, so that they are exported (and
    /// `rate()` over them works) before their first event.
    pub fn declare<'a>(
        &self,
        outputs: impl IntoIterator<Item = &'a str>,
        plugins: impl IntoIterator<Item = &'a str>,
    ) {
        for output in outputs {
            self.outputs.declare(output);
        }
        for plugin in plugins {
            self.plugins.declare(plugin);
            self.outputs.declare_plugin(plugin);
        }
    }

    /// The metrics in the OpenMetrics text format (which Prometheus reads), the gauges
    /// brought up to date first.
    pub fn encode(&self) -> String {
        self.reading.update_lags(&self.reading.progress());
        self.runner.update_ready();
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// The runner's health, for `/health`.
    pub fn health(&self) -> Health {
        self.runner.health()
    }

    /// What the live progress line shows.
    pub fn progress(&self) -> Progress {
        let reading = self.reading.progress();
        Progress {
            records: reading.records,
            dead_letters: self.outputs.dead_letters(),
            partitions_held: reading.partitions_held,
            partitions_finished: reading.partitions_finished,
            slowest: reading.slowest,
            lag: reading.lag,
            low_watermark_lag: reading.low_watermark_lag,
            snapshot: self.snapshot.progress(),
        }
    }

    /// Each plugin's totals, in chain order.
    pub fn plugins(&self) -> Vec<(String, PluginTotals)> {
        self.plugins.totals()
    }
}

impl Observer for Metrics {
    /// Every stage's metrics see every event and take those they count.
    fn observe(&self, event: Event<'_>) {
        self.reading.observe(&event);
        self.runner.observe(&event);
        self.outputs.observe(&event);
        self.plugins.observe(&event);
        self.snapshot.observe(&event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::PartitionToken;
    use crate::partition::RunnerId;

    #[test]
    fn health_follows_subscription_heartbeats_and_stop() {
        let m = Metrics::new();
        let runner = RunnerId::from("r1".to_owned());
        assert_eq!(
            m.health(),
            Health {
                live: true,
                ready: false
            }
        );
        let lease = Duration::from_secs(30);
        m.observe(Event::Subscribed {
            runner: &runner,
            lease,
        });
        assert_eq!(
            m.health(),
            Health {
                live: true,
                ready: true
            }
        );
        m.observe(Event::Heartbeat {
            age: Duration::from_secs(31),
            alive: true,
        });
        assert!(!m.health().live, "a heartbeat older than the lease");
        m.observe(Event::Heartbeat {
            age: Duration::from_secs(1),
            alive: true,
        });
        assert!(m.health().ready);
        m.observe(Event::Stopping);
        assert_eq!(
            m.health(),
            Health {
                live: true,
                ready: false
            }
        );
    }

    #[test]
    fn the_low_watermark_lag_follows_releases_with_transactions_and_the_lag_without() {
        let m = Metrics::new();
        let a = PartitionToken::from("a".to_owned());
        let now = Timestamp::now();
        m.observe(Event::Reading {
            partition: &a,
            from: now.saturating_sub(Duration::from_secs(60)),
        });
        // `key`: nothing released, the low watermark is the slowest partition's.
        let p = m.progress();
        assert_eq!(p.low_watermark_lag, p.lag);
        m.observe(Event::TransactionsReleased {
            through: now.saturating_sub(Duration::from_secs(3600)),
            incomplete: 2,
        });
        assert!(m.progress().low_watermark_lag >= Duration::from_secs(3600));
        assert!(m.progress().lag < Duration::from_secs(3600));
        let text = m.encode();
        assert!(
            text.contains("screamer_low_watermark_lag_seconds 36"),
            "{text}"
        );
        assert!(
            text.contains("screamer_ordering_incomplete_transactions_total 2"),
            "{text}"
        );
    }

    #[test]
    fn lag_is_the_slowest_held_partition_and_zero_when_none_is_held() {
        let m = Metrics::new();
        let (a, b) = (
            PartitionToken::from("a".to_owned()),
            PartitionToken::from("b".to_owned()),
        );
        let now = Timestamp::now();
        let hour_ago = now.saturating_sub(Duration::from_secs(3600));
        m.observe(Event::Reading {
            partition: &a,
            from: hour_ago,
        });
        m.observe(Event::Reading {
            partition: &b,
            from: now,
        });
        assert!(m.progress().lag >= Duration::from_secs(3600));
        m.observe(Event::Acknowledged {
            partition: &a,
            through: now,
            records: &[],
        });
        assert!(m.progress().lag < Duration::from_secs(60));
        m.observe(Event::StoppedReading { partition: &a });
        m.observe(Event::StoppedReading { partition: &b });
        assert_eq!(m.progress().lag, Duration::ZERO);
        assert_eq!(m.progress().partitions_held, 0);
    }

    #[test]
    fn declared_outputs_and_plugins_are_exported_before_any_event() {
        let m = Metrics::new();
        m.declare(["main", "audit"], ["redact"]);
        let text = m.encode();
        for line in [
            "screamer_output_records_total{output=\"audit\"} 0",
            "screamer_output_failures_total{output=\"main\"} 0",
            "screamer_plugin_records_total{plugin=\"redact\",outcome=\"fail\"} 0",
            "screamer_dead_letters_total{plugin=\"redact\",output=\"\"} 0",
            "screamer_dead_letters_total{plugin=\"\",output=\"main\"} 0",
            "screamer_plugin_failures_total{plugin=\"redact\",kind=\"deadline\"} 0",
            "screamer_query_restarts_total{class=\"unavailable\"} 0",
            "screamer_watermark_lag_seconds 0.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
