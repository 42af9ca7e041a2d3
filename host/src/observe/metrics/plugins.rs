//! The plugin chain: calls, failures by kind, instances, call time and outcomes, per plugin,
//! with the totals the CLI's summaries print.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::{registered, registered_in};
use crate::observe::{Event, OutcomeCounts, PluginFailureKind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

fn labels(plugin: &str) -> PluginLabels {
    PluginLabels {
        plugin: plugin.to_owned(),
    }
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

/// The `outcome` label's values, in [`OutcomeCounts`] order.
const OUTCOMES: [&str; 6] = ["keep", "drop", "patch", "replace", "emit", "fail"];

/// Plugin call buckets from 10 µs to about 5 s.
fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.5, 15))
}

/// One plugin's totals, for summaries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PluginTotals {
    /// Calls made.
    pub calls: u64,
    /// Calls that failed (and dropped their instance).
    pub failed_calls: u64,
    /// Instances started.
    pub instances_started: u64,
    /// Outcomes by kind.
    pub outcomes: OutcomeCounts,
    /// Time spent in calls.
    pub busy: Duration,
}

#[derive(Debug)]
pub(super) struct PluginMetrics {
    calls: Family<PluginLabels, Counter>,
    failed_calls: Family<PluginLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    instances: Family<PluginLabels, Counter>,
    call_seconds: Family<PluginLabels, Histogram>,
    records: Family<OutcomeLabels, Counter>,
    /// Per plugin, in the order first seen (the chain's order): the labelled families
    /// cannot be read back per plugin cheaply.
    totals: Mutex<Vec<(String, PluginTotals)>>,
}

impl PluginMetrics {
    pub(super) fn new(r: &mut Registry) -> Self {
        Self {
            calls: registered(r, "plugin_calls", "Calls of each plugin", Family::default()),
            failed_calls: registered(
                r,
                "plugin_failed_calls",
                "Calls that trapped, ran out of time or memory (the records are retried alone)",
                Family::default(),
            ),
            failures: registered(
                r,
                "plugin_failures",
                "Records a plugin failed, by why: failed (its own fail), deadline, limit \
                 (memory, bytes of outcomes), trap, refused (what it returned)",
                Family::default(),
            ),
            instances: registered(
                r,
                "plugin_instances_started",
                "Plugin instances started",
                Family::default(),
            ),
            call_seconds: registered_in(
                r,
                "plugin_call_duration",
                "Time one plugin call took",
                Unit::Seconds,
                Family::new_with_constructor(call_histogram),
            ),
            records: registered(
                r,
                "plugin_records",
                "Records each plugin decided on, by outcome (keep, drop, patch, replace, emit, fail)",
                Family::default(),
            ),
            totals: Mutex::new(Vec::new()),
        }
    }

    /// Starts `plugin`'s series at zero.
    pub(super) fn declare(&self, plugin: &str) {
        let l = labels(plugin);
        drop(self.calls.get_or_create(&l));
        drop(self.failed_calls.get_or_create(&l));
        drop(self.instances.get_or_create(&l));
        drop(self.call_seconds.get_or_create(&l));
        for kind in PluginFailureKind::ALL {
            drop(self.failures.get_or_create(&FailureLabels {
                plugin: plugin.to_owned(),
                kind: kind.as_str(),
            }));
        }
        for outcome in OUTCOMES {
            drop(self.records.get_or_create(&OutcomeLabels {
                plugin: plugin.to_owned(),
                outcome,
            }));
        }
    }

    pub(super) fn observe(&self, event: &Event<'_>) {
        match *event {
            Event::DeadLetters {
                plugin,
                records,
                kind,
            } => {
                self.failures
                    .get_or_create(&FailureLabels {
                        plugin: plugin.to_owned(),
                        kind: kind.as_str(),
                    })
                    .inc_by(records as u64);
            }
            Event::PluginCall {
                plugin,
                took,
                failed,
                ..
            } => {
                let l = labels(plugin);
                self.calls.get_or_create(&l).inc();
                self.call_seconds
                    .get_or_create(&l)
                    .observe(took.as_secs_f64());
                if failed.is_some() {
                    self.failed_calls.get_or_create(&l).inc();
                }
                self.with_totals(plugin, |t| {
                    t.calls += 1;
                    t.failed_calls += u64::from(failed.is_some());
                    t.busy += took;
                });
            }
            Event::PluginStarted { plugin } => {
                self.instances.get_or_create(&labels(plugin)).inc();
                self.with_totals(plugin, |t| t.instances_started += 1);
            }
            Event::PluginOutcomes { plugin, outcomes } => {
                let counts = [
                    outcomes.keep,
                    outcomes.drop,
                    outcomes.patch,
                    outcomes.replace,
                    outcomes.emit,
                    outcomes.fail,
                ];
                let counts = OUTCOMES.into_iter().zip(counts);
                for (outcome, n) in counts.filter(|(_, n)| *n > 0) {
                    self.records
                        .get_or_create(&OutcomeLabels {
                            plugin: plugin.to_owned(),
                            outcome,
                        })
                        .inc_by(n);
                }
                self.with_totals(plugin, |t| t.outcomes.add(outcomes));
            }
            _ => {}
        }
    }

    fn with_totals(&self, plugin: &str, update: impl FnOnce(&mut PluginTotals)) {
        let mut totals = self.totals.lock().expect("metrics state");
        match totals.iter_mut().find(|(name, _)| name == plugin) {
            Some((_, t)) => update(t),
            None => {
                let mut t = PluginTotals::default();
                update(&mut t);
                totals.push((plugin.to_owned(), t));
            }
        }
    }

    /// Each plugin's totals, in chain order.
    pub(super) fn totals(&self) -> Vec<(String, PluginTotals)> {
        self.totals.lock().expect("metrics state").clone()
    }
}
