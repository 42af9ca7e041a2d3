//! Metrics: an [`Observer`] that keeps Prometheus metrics of every stage and the runner's
//! health.
//!
//! Place in the flow: beside every stage, fed by [`Event`]s; read by [`serve`](super::serve)
//! (`/metrics`, `/healthz`, `/readyz`), by the CLI's progress reporting and its end-of-run
//! summary.
//!
//! Invariants: recording is atomic increments plus, per batch, one short lock (positions,
//! health); nothing is computed per scrape beyond the lag over held partitions. Label values
//! are bounded: tables of the schema, mod types, output names of the pipeline, plugin names
//! of the chain, error classes — never partition tokens, keys or runner ids.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::snapshot::{SnapshotMetrics, SnapshotProgress};
use super::{Event, Observer, OutcomeCounts, PluginFailureKind, ReplicaRows};
use crate::partition::PartitionToken;
use crate::record::DataChangeRecord;
use crate::source::SourceError;
use crate::timestamp::Timestamp;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: String,
    mod_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputLabels {
    output: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    output: String,
    /// `upserted`, `deleted`, `stale` (older than the replica's row: not applied) or
    /// `refused` (dead-lettered).
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLetterLabels {
    /// The plugin that failed the records; empty when a destination refused them.
    plugin: String,
    /// The output that refused the records; empty when a plugin failed them.
    output: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    plugin: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    plugin: String,
    /// [`PluginFailureKind::as_str`].
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Latency buckets from 1 ms to about 33 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Plugin call buckets from 10 µs to about 5 s.
fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.5, 15))
}

/// The run's metrics and health; see the module docs.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    records: Family<TableLabels, Counter>,
    mods: Family<TableLabels, Counter>,
    commit_to_ack: Histogram,
    watermark_lag: FloatGauge,
    low_watermark_lag: FloatGauge,
    incomplete_transactions: Counter,
    partitions_held: Gauge,
    partitions_finished: Counter,
    query_restarts: Family<ErrorLabels, Counter>,
    checkpoints: Counter,
    checkpoint_failures: Counter,
    checkpoints_refused: Counter,
    checkpoint_seconds: Histogram,
    lease_claims: Counter,
    lease_losses: Counter,
    lease_releases: Counter,
    heartbeat_age: FloatGauge,
    output_records: Family<OutputLabels, Counter>,
    output_bytes: Family<OutputLabels, Counter>,
    output_failures: Family<OutputLabels, Counter>,
    output_retries: Family<OutputLabels, Counter>,
    output_in_flight: Family<OutputLabels, Gauge>,
    output_seconds: Family<OutputLabels, Histogram>,
    dead_letters: Family<DeadLetterLabels, Counter>,
    replica_rows: Family<ReplicaLabels, Counter>,
    replica_seconds: Family<OutputLabels, Histogram>,
    plugin_calls: Family<PluginLabels, Counter>,
    plugin_failed_calls: Family<PluginLabels, Counter>,
    plugin_failures: Family<FailureLabels, Counter>,
    plugin_instances: Family<PluginLabels, Counter>,
    plugin_call_seconds: Family<PluginLabels, Histogram>,
    plugin_records: Family<OutcomeLabels, Counter>,
    ready: Gauge,
    snapshot: SnapshotMetrics,
    /// Totals over the labelled families above, which cannot be summed back.
    records_read: AtomicU64,
    dead_lettered: AtomicU64,
    state: Mutex<State>,
}

/// What the gauges and health are computed from.
#[derive(Debug, Default)]
struct State {
    /// Held partitions and how far each has been read and acknowledged.
    positions: HashMap<PartitionToken, Timestamp>,
    /// Set once subscribed: the lease the heartbeats must land within.
    lease: Option<Duration>,
    /// When the last heartbeat landed, as of the last liveness check.
    beat_at: Option<Instant>,
    /// Whether the runner saw itself alive at its last liveness check.
    alive: bool,
    stopping: bool,
    /// Per plugin, in the order first seen (the chain's order).
    plugins: Vec<(String, PluginTotals)>,
    /// `--ordering transactions`: every transaction committed at or before it is released.
    released: Option<Timestamp>,
}

/// One plugin's totals, for summaries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PluginTotals {
    pub calls: u64,
    pub failed_calls: u64,
    pub instances_started: u64,
    pub outcomes: OutcomeCounts,
    /// Time spent in calls.
    pub busy: Duration,
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
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Data change records read from Spanner so far.
    pub records: u64,
    /// Records sent to the dead letters so far.
    pub dead_letters: u64,
    pub partitions_held: usize,
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
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("screamer"),
            records: Family::default(),
            mods: Family::default(),
            commit_to_ack: latency_histogram(),
            watermark_lag: FloatGauge::default(),
            low_watermark_lag: FloatGauge::default(),
            incomplete_transactions: Counter::default(),
            partitions_held: Gauge::default(),
            partitions_finished: Counter::default(),
            query_restarts: Family::default(),
            checkpoints: Counter::default(),
            checkpoint_failures: Counter::default(),
            checkpoints_refused: Counter::default(),
            checkpoint_seconds: latency_histogram(),
            lease_claims: Counter::default(),
            lease_losses: Counter::default(),
            lease_releases: Counter::default(),
            heartbeat_age: FloatGauge::default(),
            output_records: Family::default(),
            output_bytes: Family::default(),
            output_failures: Family::default(),
            output_retries: Family::default(),
            output_in_flight: Family::default(),
            output_seconds: Family::new_with_constructor(latency_histogram),
            replica_rows: Family::default(),
            replica_seconds: Family::new_with_constructor(latency_histogram),
            dead_letters: Family::default(),
            plugin_calls: Family::default(),
            plugin_failed_calls: Family::default(),
            plugin_failures: Family::default(),
            plugin_instances: Family::default(),
            plugin_call_seconds: Family::new_with_constructor(call_histogram),
            plugin_records: Family::default(),
            ready: Gauge::default(),
            snapshot: SnapshotMetrics::default(),
            records_read: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        };
        m.register();
        for class in ERROR_CLASSES {
            drop(m.query_restarts.get_or_create(&ErrorLabels { class }));
        }
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        self.snapshot.register(r);
        r.register(
            "build",
            "The screamer build",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        r.register(
            "records",
            "Data change records read from Spanner, before plugins",
            self.records.clone(),
        );
        r.register(
            "mods",
            "Row changes (mods) read from Spanner, before plugins",
            self.mods.clone(),
        );
        r.register_with_unit(
            "commit_to_output",
            "From a record's commit to its batch's acknowledgement (every destination took it)",
            Unit::Seconds,
            self.commit_to_ack.clone(),
        );
        r.register_with_unit(
            "watermark_lag",
            "How far behind now the slowest held partition has been read and acknowledged, \
             heartbeats included (0 when none is held)",
            Unit::Seconds,
            self.watermark_lag.clone(),
        );
        r.register_with_unit(
            "low_watermark_lag",
            "How far behind now the stream's released-through position is: with --ordering \
             transactions the latest commit released once every partition was read past it, \
             with key the slowest held partition",
            Unit::Seconds,
            self.low_watermark_lag.clone(),
        );
        r.register(
            "ordering_incomplete_transactions",
            "Transactions released without all of their records (a transaction at a \
             partition split whose other records were not read in time)",
            self.incomplete_transactions.clone(),
        );
        r.register(
            "partitions_held",
            "Partitions this runner reads now",
            self.partitions_held.clone(),
        );
        r.register(
            "partitions_finished",
            "Partitions this runner read to their end",
            self.partitions_finished.clone(),
        );
        r.register(
            "query_restarts",
            "Partition queries restarted from their watermark after a transient error, by class",
            self.query_restarts.clone(),
        );
        r.register(
            "checkpoints",
            "Checkpoint commits",
            self.checkpoints.clone(),
        );
        r.register(
            "checkpoint_failures",
            "Checkpoint commits that failed (retried at the next interval)",
            self.checkpoint_failures.clone(),
        );
        r.register(
            "checkpoints_refused",
            "Watermarks a checkpoint could not write because the lease had moved on",
            self.checkpoints_refused.clone(),
        );
        r.register_with_unit(
            "checkpoint_duration",
            "Time a checkpoint commit took",
            Unit::Seconds,
            self.checkpoint_seconds.clone(),
        );
        r.register(
            "lease_claims",
            "Partitions claimed",
            self.lease_claims.clone(),
        );
        r.register(
            "lease_losses",
            "Partitions lost (another runner took the lease, or this runner lapsed)",
            self.lease_losses.clone(),
        );
        r.register(
            "lease_releases",
            "Partitions given up to rebalance",
            self.lease_releases.clone(),
        );
        r.register_with_unit(
            "heartbeat_age",
            "Age of this runner's last heartbeat, as of its last liveness check",
            Unit::Seconds,
            self.heartbeat_age.clone(),
        );
        r.register(
            "ready",
            "1 while the runner is subscribed, live and not stopping",
            self.ready.clone(),
        );
        r.register(
            "output_records",
            "Records each output durably accepted",
            self.output_records.clone(),
        );
        r.register_with_unit(
            "output",
            "Payload bytes each output durably accepted",
            Unit::Bytes,
            self.output_bytes.clone(),
        );
        r.register(
            "output_failures",
            "Sends to an output that failed (the batch is not acknowledged and is read again)",
            self.output_failures.clone(),
        );
        r.register(
            "output_retries",
            "Sends an output's destination retried after a pause (the batch waits meanwhile)",
            self.output_retries.clone(),
        );
        r.register_with_unit(
            "output_in_flight",
            "Payload bytes sent to an output and not yet accepted (retries included)",
            Unit::Bytes,
            self.output_in_flight.clone(),
        );
        r.register_with_unit(
            "output_send_duration",
            "Time an output took to accept a batch, retries included",
            Unit::Seconds,
            self.output_seconds.clone(),
        );
        r.register(
            "dead_letters",
            "Records sent to the dead letters: failed by a plugin, or refused by an output",
            self.dead_letters.clone(),
        );
        r.register(
            "plugin_calls",
            "Calls of each plugin",
            self.plugin_calls.clone(),
        );
        r.register(
            "plugin_failed_calls",
            "Calls that trapped, ran out of time or memory (the records are retried alone)",
            self.plugin_failed_calls.clone(),
        );
        r.register(
            "plugin_failures",
            "Records a plugin failed, by why: failed (its own fail), deadline, limit (memory, \
             bytes of outcomes), trap, refused (what it returned)",
            self.plugin_failures.clone(),
        );
        r.register(
            "plugin_instances_started",
            "Plugin instances started",
            self.plugin_instances.clone(),
        );
        r.register_with_unit(
            "plugin_call_duration",
            "Time one plugin call took",
            Unit::Seconds,
            self.plugin_call_seconds.clone(),
        );
        r.register(
            "plugin_records",
            "Records each plugin decided on, by outcome (keep, drop, replace, emit, fail)",
            self.plugin_records.clone(),
        );
        register_replica(
            &mut self.registry,
            &self.replica_rows,
            &self.replica_seconds,
        );
    }

    fn replica_applied(&self, output: &str, rows: &ReplicaRows, took: Duration) {
        let outcomes = [
            ("upserted", rows.upserted),
            ("deleted", rows.deleted),
            ("stale", rows.stale),
            ("refused", rows.refused),
        ];
        for (outcome, n) in outcomes {
            self.replica_rows
                .get_or_create(&ReplicaLabels {
                    output: output.to_owned(),
                    outcome,
                })
                .inc_by(n);
        }
        self.replica_seconds
            .get_or_create(&self.output(output))
            .observe(took.as_secs_f64());
    }

    /// Starts the series of `outputs` and `plugins` at zero, so that they are exported (and
    /// `rate()` over them works) before their first event.
    pub fn declare<'a>(
        &self,
        outputs: impl IntoIterator<Item = &'a str>,
        plugins: impl IntoIterator<Item = &'a str>,
    ) {
        for output in outputs {
            let labels = self.output(output);
            drop(self.output_records.get_or_create(&labels));
            drop(self.output_bytes.get_or_create(&labels));
            drop(self.output_failures.get_or_create(&labels));
            drop(self.output_retries.get_or_create(&labels));
            drop(self.output_in_flight.get_or_create(&labels));
            drop(self.output_seconds.get_or_create(&labels));
            // Destinations dead-letter what they refuse, plugins or not.
            drop(self.dead_letters.get_or_create(&DeadLetterLabels {
                plugin: String::new(),
                output: output.to_owned(),
            }));
        }
        for plugin in plugins {
            let labels = PluginLabels {
                plugin: plugin.to_owned(),
            };
            drop(self.plugin_calls.get_or_create(&labels));
            drop(self.plugin_failed_calls.get_or_create(&labels));
            drop(self.plugin_instances.get_or_create(&labels));
            drop(self.plugin_call_seconds.get_or_create(&labels));
            drop(self.dead_letters.get_or_create(&DeadLetterLabels {
                plugin: plugin.to_owned(),
                output: String::new(),
            }));
            for kind in PluginFailureKind::ALL {
                drop(self.plugin_failures.get_or_create(&FailureLabels {
                    plugin: plugin.to_owned(),
                    kind: kind.as_str(),
                }));
            }
            for outcome in OUTCOMES {
                drop(self.plugin_records.get_or_create(&OutcomeLabels {
                    plugin: plugin.to_owned(),
                    outcome,
                }));
            }
        }
    }

    /// The metrics in the OpenMetrics text format (which Prometheus reads), the gauges
    /// brought up to date first.
    pub fn encode(&self) -> String {
        let progress = self.progress();
        self.watermark_lag.set(progress.lag.as_secs_f64());
        self.low_watermark_lag
            .set(progress.low_watermark_lag.as_secs_f64());
        self.ready.set(i64::from(self.health().ready));
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    pub fn health(&self) -> Health {
        let s = self.state.lock().expect("metrics state");
        let Some(lease) = s.lease else {
            return Health {
                live: true,
                ready: false,
            };
        };
        let live = s.alive && s.beat_at.is_some_and(|at| at.elapsed() < lease);
        Health {
            live,
            ready: live && !s.stopping,
        }
    }

    pub fn progress(&self) -> Progress {
        let s = self.state.lock().expect("metrics state");
        let slowest = s.positions.values().min().copied();
        let behind =
            |t: Option<Timestamp>| t.map_or(Duration::ZERO, |t| Timestamp::now().duration_since(t));
        let lag = behind(slowest);
        let low_watermark_lag = s.released.map_or(lag, |r| behind(Some(r)));
        Progress {
            records: self.records_read.load(Ordering::Relaxed),
            dead_letters: self.dead_lettered.load(Ordering::Relaxed),
            partitions_held: s.positions.len(),
            partitions_finished: self.partitions_finished.get(),
            slowest,
            lag,
            low_watermark_lag,
            snapshot: self.snapshot.progress(),
        }
    }

    /// Each plugin's totals, in chain order.
    pub fn plugins(&self) -> Vec<(String, PluginTotals)> {
        self.state.lock().expect("metrics state").plugins.clone()
    }

    fn with_plugin(&self, plugin: &str, update: impl FnOnce(&mut PluginTotals)) {
        let mut s = self.state.lock().expect("metrics state");
        match s.plugins.iter_mut().find(|(name, _)| name == plugin) {
            Some((_, totals)) => update(totals),
            None => {
                let mut totals = PluginTotals::default();
                update(&mut totals);
                s.plugins.push((plugin.to_owned(), totals));
            }
        }
    }

    fn read(&self, records: &[DataChangeRecord]) {
        self.records_read
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        // One label lookup per (table, mod type) run, not per record.
        let mut counts: BTreeMap<(&str, &'static str), (u64, u64)> = BTreeMap::new();
        for r in records {
            let c = counts
                .entry((&r.table_name, r.mod_type.as_str()))
                .or_default();
            c.0 += 1;
            c.1 += r.mods.len() as u64;
        }
        for ((table, mod_type), (n, mods)) in counts {
            let labels = TableLabels {
                table: table.to_owned(),
                mod_type,
            };
            self.records.get_or_create(&labels).inc_by(n);
            self.mods.get_or_create(&labels).inc_by(mods);
        }
    }

    fn acknowledged(
        &self,
        partition: &PartitionToken,
        through: Timestamp,
        records: &[DataChangeRecord],
    ) {
        let now = Timestamp::now();
        for r in records {
            self.commit_to_ack
                .observe(now.duration_since(r.commit_timestamp).as_secs_f64());
        }
        let mut s = self.state.lock().expect("metrics state");
        if let Some(at) = s.positions.get_mut(partition) {
            *at = through.max(*at);
        }
    }

    fn output(&self, output: &str) -> OutputLabels {
        OutputLabels {
            output: output.to_owned(),
        }
    }
}

impl Observer for Metrics {
    fn observe(&self, event: Event<'_>) {
        match event {
            Event::Read { records, .. } => {
                self.read(records);
                self.snapshot.read(records);
            }
            Event::Acknowledged {
                partition,
                through,
                records,
            } => self.acknowledged(partition, through, records),
            Event::Reading { partition, from } => {
                let mut s = self.state.lock().expect("metrics state");
                s.positions.insert(partition.clone(), from);
                self.partitions_held.set(s.positions.len() as i64);
            }
            Event::StoppedReading { partition } => {
                let mut s = self.state.lock().expect("metrics state");
                s.positions.remove(partition);
                self.partitions_held.set(s.positions.len() as i64);
            }
            Event::QueryRestarted { error, .. } => {
                self.query_restarts
                    .get_or_create(&ErrorLabels {
                        class: error_class(error),
                    })
                    .inc();
            }
            Event::Finished { partition } => {
                self.partitions_finished.inc();
                self.snapshot.finished(partition);
            }
            Event::SnapshotPlanned {
                chunks,
                chunks_finished,
                rows,
                rows_finished,
            } => self
                .snapshot
                .planned(chunks, chunks_finished, rows, rows_finished),
            Event::Subscribed { lease, .. } => {
                let mut s = self.state.lock().expect("metrics state");
                s.lease = Some(lease);
                s.beat_at = Some(Instant::now());
                s.alive = true;
            }
            Event::Stopping => self.state.lock().expect("metrics state").stopping = true,
            Event::Claimed { partitions } => {
                self.lease_claims.inc_by(partitions as u64);
            }
            Event::Lost { partitions } => {
                self.lease_losses.inc_by(partitions as u64);
            }
            Event::Released { partitions } => {
                self.lease_releases.inc_by(partitions as u64);
            }
            Event::TransactionsReleased {
                through,
                incomplete,
            } => {
                self.incomplete_transactions.inc_by(incomplete as u64);
                self.state.lock().expect("metrics state").released = Some(through);
            }
            Event::Heartbeat { age, alive } => {
                self.heartbeat_age.set(age.as_secs_f64());
                let mut s = self.state.lock().expect("metrics state");
                s.beat_at = Instant::now().checked_sub(age);
                s.alive = alive;
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
            Event::Sending { output, bytes } => {
                self.output_in_flight
                    .get_or_create(&self.output(output))
                    .inc_by(bytes as i64);
            }
            Event::Output {
                output,
                records,
                refused,
                bytes,
                took,
            } => {
                let labels = self.output(output);
                self.output_in_flight
                    .get_or_create(&labels)
                    .dec_by(bytes as i64);
                self.output_records
                    .get_or_create(&labels)
                    .inc_by(records as u64);
                self.output_bytes
                    .get_or_create(&labels)
                    .inc_by(bytes as u64);
                self.output_seconds
                    .get_or_create(&labels)
                    .observe(took.as_secs_f64());
                if refused > 0 {
                    self.dead_lettered
                        .fetch_add(refused as u64, Ordering::Relaxed);
                    self.dead_letters
                        .get_or_create(&DeadLetterLabels {
                            plugin: String::new(),
                            output: output.to_owned(),
                        })
                        .inc_by(refused as u64);
                }
            }
            Event::ReplicaApplied { output, rows, took } => {
                self.replica_applied(output, rows, took);
            }
            Event::OutputRetried { output } => {
                self.output_retries
                    .get_or_create(&self.output(output))
                    .inc();
            }
            Event::OutputFailed { output, bytes } => {
                let labels = self.output(output);
                self.output_in_flight
                    .get_or_create(&labels)
                    .dec_by(bytes as i64);
                self.output_failures.get_or_create(&labels).inc();
            }
            Event::DeadLetters {
                plugin,
                records,
                kind,
            } => {
                self.dead_lettered
                    .fetch_add(records as u64, Ordering::Relaxed);
                self.plugin_failures
                    .get_or_create(&FailureLabels {
                        plugin: plugin.to_owned(),
                        kind: kind.as_str(),
                    })
                    .inc_by(records as u64);
                self.dead_letters
                    .get_or_create(&DeadLetterLabels {
                        plugin: plugin.to_owned(),
                        output: String::new(),
                    })
                    .inc_by(records as u64);
            }
            Event::PluginCall {
                plugin,
                records: _,
                took,
                failed,
            } => {
                let labels = PluginLabels {
                    plugin: plugin.to_owned(),
                };
                self.plugin_calls.get_or_create(&labels).inc();
                self.plugin_call_seconds
                    .get_or_create(&labels)
                    .observe(took.as_secs_f64());
                if failed.is_some() {
                    self.plugin_failed_calls.get_or_create(&labels).inc();
                }
                self.with_plugin(plugin, |t| {
                    t.calls += 1;
                    t.failed_calls += u64::from(failed.is_some());
                    t.busy += took;
                });
            }
            Event::PluginStarted { plugin } => {
                self.plugin_instances
                    .get_or_create(&PluginLabels {
                        plugin: plugin.to_owned(),
                    })
                    .inc();
                self.with_plugin(plugin, |t| t.instances_started += 1);
            }
            Event::PluginOutcomes { plugin, outcomes } => {
                let counts = [
                    outcomes.keep,
                    outcomes.drop,
                    outcomes.replace,
                    outcomes.emit,
                    outcomes.fail,
                ];
                let counts = OUTCOMES.into_iter().zip(counts);
                for (outcome, n) in counts.filter(|(_, n)| *n > 0) {
                    self.plugin_records
                        .get_or_create(&OutcomeLabels {
                            plugin: plugin.to_owned(),
                            outcome,
                        })
                        .inc_by(n);
                }
                self.with_plugin(plugin, |t| t.outcomes.add(outcomes));
            }
        }
    }
}

/// The `outcome` label's values, in [`OutcomeCounts`] order.
const OUTCOMES: [&str; 5] = ["keep", "drop", "replace", "emit", "fail"];

/// The `class` label's values of query restarts.
const ERROR_CLASSES: [&str; 10] = [
    "unavailable",
    "aborted",
    "deadline_exceeded",
    "resource_exhausted",
    "internal",
    "cancelled",
    "unknown",
    "connect",
    "decode",
    "other",
];

/// A bounded name for what made a partition query restart (one of [`ERROR_CLASSES`]).
fn error_class(error: &SourceError) -> &'static str {
    use gcloud_gax::grpc::Code;
    match error {
        SourceError::Connect(_) => "connect",
        SourceError::Decode(_) => "decode",
        SourceError::Grpc(status) => match status.code() {
            Code::Unavailable => "unavailable",
            Code::Aborted => "aborted",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::ResourceExhausted => "resource_exhausted",
            Code::Internal => "internal",
            Code::Cancelled => "cancelled",
            Code::Unknown => "unknown",
            _ => "other",
        },
        _ => "other",
    }
}

/// The PostgreSQL replica's metrics.
fn register_replica(
    r: &mut Registry,
    rows: &Family<ReplicaLabels, Counter>,
    seconds: &Family<OutputLabels, Histogram>,
) {
    r.register(
        "replica_rows",
        "Row changes a replica output applied, by outcome (upserted, deleted, stale: older than \
         the replica's row, refused: dead-lettered)",
        rows.clone(),
    );
    r.register_with_unit(
        "replica_apply_duration",
        "Time a replica output took to apply a batch in one transaction, from its start to its \
         commit (retries included)",
        Unit::Seconds,
        seconds.clone(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
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
