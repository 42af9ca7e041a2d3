//! The destinations: what each output accepted, failed, retried and holds in flight, the
//! dead letters (of plugins and of outputs), and what a replica applied.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::{latency_histogram, registered, registered_in};
use crate::observe::{Event, ReplicaRows};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputLabels {
    output: String,
}

fn output(output: &str) -> OutputLabels {
    OutputLabels {
        output: output.to_owned(),
    }
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

#[derive(Debug)]
pub(super) struct OutputMetrics {
    records: Family<OutputLabels, Counter>,
    bytes: Family<OutputLabels, Counter>,
    failures: Family<OutputLabels, Counter>,
    retries: Family<OutputLabels, Counter>,
    in_flight: Family<OutputLabels, Gauge>,
    seconds: Family<OutputLabels, Histogram>,
    dead_letters: Family<DeadLetterLabels, Counter>,
    replica_rows: Family<ReplicaLabels, Counter>,
    replica_seconds: Family<OutputLabels, Histogram>,
    /// The total over `dead_letters`, which cannot be summed back.
    dead_lettered: AtomicU64,
}

impl OutputMetrics {
    pub(super) fn new(r: &mut Registry) -> Self {
        Self {
            records: registered(
                r,
                "output_records",
                "Records each output durably accepted",
                Family::default(),
            ),
            bytes: registered_in(
                r,
                "output",
                "Payload bytes each output durably accepted",
                Unit::Bytes,
                Family::default(),
            ),
            failures: registered(
                r,
                "output_failures",
                "Sends to an output that failed (the batch is not acknowledged and is read again)",
                Family::default(),
            ),
            retries: registered(
                r,
                "output_retries",
                "Sends an output's destination retried after a pause (the batch waits meanwhile)",
                Family::default(),
            ),
            in_flight: registered_in(
                r,
                "output_in_flight",
                "Payload bytes sent to an output and not yet accepted (retries included)",
                Unit::Bytes,
                Family::default(),
            ),
            seconds: registered_in(
                r,
                "output_send_duration",
                "Time an output took to accept a batch, retries included",
                Unit::Seconds,
                Family::new_with_constructor(latency_histogram),
            ),
            dead_letters: registered(
                r,
                "dead_letters",
                "Records sent to the dead letters: failed by a plugin, or refused by an output",
                Family::default(),
            ),
            replica_rows: registered(
                r,
                "replica_rows",
                "Row changes a replica output applied, by outcome (upserted, deleted, stale: \
                 older than the replica's row, refused: dead-lettered)",
                Family::default(),
            ),
            replica_seconds: registered_in(
                r,
                "replica_apply_duration",
                "Time a replica output took to apply a batch in one transaction, from its start \
                 to its commit (retries included)",
                Unit::Seconds,
                Family::new_with_constructor(latency_histogram),
            ),
            dead_lettered: AtomicU64::new(0),
        }
    }

    /// Starts `name`'s series at zero.
    pub(super) fn declare(&self, name: &str) {
        let labels = output(name);
        drop(self.records.get_or_create(&labels));
        drop(self.bytes.get_or_create(&labels));
        drop(self.failures.get_or_create(&labels));
        drop(self.retries.get_or_create(&labels));
        drop(self.in_flight.get_or_create(&labels));
        drop(self.seconds.get_or_create(&labels));
        // Destinations dead-letter what they refuse, plugins or not.
        self.dead_letters_of("", name);
    }

    /// Starts the dead letters of `plugin` at zero.
    pub(super) fn declare_plugin(&self, plugin: &str) {
        self.dead_letters_of(plugin, "");
    }

    fn dead_letters_of(&self, plugin: &str, output: &str) -> Counter {
        self.dead_letters
            .get_or_create(&DeadLetterLabels {
                plugin: plugin.to_owned(),
                output: output.to_owned(),
            })
            .clone()
    }

    pub(super) fn observe(&self, event: &Event<'_>) {
        match *event {
            Event::Sending {
                output: name,
                bytes,
            } => {
                self.in_flight
                    .get_or_create(&output(name))
                    .inc_by(bytes as i64);
            }
            Event::Output {
                output: name,
                records,
                refused,
                bytes,
                took,
            } => {
                let labels = output(name);
                self.in_flight.get_or_create(&labels).dec_by(bytes as i64);
                self.records.get_or_create(&labels).inc_by(records as u64);
                self.bytes.get_or_create(&labels).inc_by(bytes as u64);
                self.seconds
                    .get_or_create(&labels)
                    .observe(took.as_secs_f64());
                if refused > 0 {
                    self.dead_lettered(refused, "", name);
                }
            }
            Event::ReplicaApplied {
                output: name,
                rows,
                took,
            } => {
                self.replica_applied(name, rows);
                self.replica_seconds
                    .get_or_create(&output(name))
                    .observe(took.as_secs_f64());
            }
            Event::OutputRetried { output: name } => {
                self.retries.get_or_create(&output(name)).inc();
            }
            Event::OutputFailed {
                output: name,
                bytes,
            } => {
                let labels = output(name);
                self.in_flight.get_or_create(&labels).dec_by(bytes as i64);
                self.failures.get_or_create(&labels).inc();
            }
            Event::DeadLetters {
                plugin, records, ..
            } => self.dead_lettered(records, plugin, ""),
            _ => {}
        }
    }

    fn dead_lettered(&self, records: usize, plugin: &str, output: &str) {
        self.dead_lettered
            .fetch_add(records as u64, Ordering::Relaxed);
        self.dead_letters_of(plugin, output).inc_by(records as u64);
    }

    fn replica_applied(&self, name: &str, rows: &ReplicaRows) {
        let outcomes = [
            ("upserted", rows.upserted),
            ("deleted", rows.deleted),
            ("stale", rows.stale),
            ("refused", rows.refused),
        ];
        for (outcome, n) in outcomes {
            self.replica_rows
                .get_or_create(&ReplicaLabels {
                    output: name.to_owned(),
                    outcome,
                })
                .inc_by(n);
        }
    }

    /// Records dead-lettered so far, by plugins and outputs.
    pub(super) fn dead_letters(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
}
