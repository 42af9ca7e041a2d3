//! The chain: runs a batch through every plugin in order and sorts what comes out into
//! main outputs, side outputs and dead letters.
//!
//! Invariants:
//! - Every input record ends as outputs (zero or more) or as dead letters, never lost.
//! - A call that fails is retried record by record on fresh instances (a one-record call
//!   too), each retry within its own deadline: only the records that fail alone fail, and a
//!   plugin that blocks costs one deadline per record it blocks on, plus one for the call.
//! - A record a plugin keeps, or replaces with an identical one, goes on as it was: no
//!   conversion back, and no new host record. A record a plugin patches is patched and
//!   checked at once ([`patch`]) and goes on as a host record, not converted again.
//! - One input record turns into at most `max_emissions` records over the whole chain;
//!   beyond that it fails, naming the limit.
//! - One `run` uses one version of each plugin (a snapshot taken at its start), so a hot
//!   swap lands between batches and every record is processed by exactly one version.
//! - A run holds at most [`RUN_BUDGET_CALLS`] × the largest `max_call_bytes` of what its
//!   plugins return (counted as the host holds it) when asked to ([`Budget::Bounded`]): past
//!   that it stops and says so ([`OverBudget`]), and the caller runs fewer records at a time.
//!   One record alone is never over budget: `max_emissions` bounds it.
//! - Workers (a store per plugin each) are pooled: concurrent batches (different
//!   partitions) run on different stores; an instance whose call failed is dropped and the
//!   next call starts a fresh one.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::bindings::{
    ChangeRecordParam, ChangeRecordResult, Emission, Outcome, RecordPatch, RowChangeParam,
};
use super::convert::{HostRecord, Staged, extra_text, origin, parse_extra, to_host};
use super::failure::PluginFailure;
use super::instance::Instance;
use super::patch;
use super::version::PluginVersion;
use crate::observe::{Event, NoObserver, Observer, OutcomeCounts};
use crate::record::DataChangeRecord;

/// One record entering the chain, with the extra top-level fields it already carries.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The record.
    pub record: &'a DataChangeRecord,
    /// Top-level fields beside the record's own (from an earlier chain), if any.
    pub extra: Option<&'a Map<String, Value>>,
}

/// A record as read from the stream, without extra fields.
impl<'a> From<&'a DataChangeRecord> for Input<'a> {
    fn from(record: &'a DataChangeRecord) -> Self {
        Input {
            record,
            extra: None,
        }
    }
}

/// A record leaving the chain.
#[derive(Debug)]
pub struct Output {
    /// Index of the input record it came from.
    pub origin: usize,
    /// `None`: the main output; otherwise the side output the plugin named.
    pub output: Option<String>,
    /// The record.
    pub record: OutputRecord,
}

/// What a record leaving the chain looks like.
#[derive(Debug)]
pub enum OutputRecord {
    /// Every plugin kept it: the input record as it came (nothing is converted back).
    Unchanged,
    /// A plugin replaced it or emitted it.
    Changed {
        /// The record as the plugin left it.
        record: Box<DataChangeRecord>,
        /// Top-level fields the plugin added.
        extra: Option<Map<String, Value>>,
    },
}

/// A record a plugin failed (its own `fail`, a trap, a deadline, the memory cap, or output
/// the host refused).
#[derive(Debug)]
pub struct DeadLetter {
    /// Index of the input record.
    pub origin: usize,
    /// The plugin version that failed it.
    pub plugin: Arc<PluginVersion>,
    /// Why.
    pub error: PluginFailure,
}

/// What a chain run produced from one batch.
#[derive(Debug, Default)]
pub struct ChainResult {
    /// The records that leave the chain, in input order.
    pub outputs: Vec<Output>,
    /// The records that failed, in input order.
    pub dead_letters: Vec<DeadLetter>,
}

/// Plugins in order, each replaceable while batches flow.
pub struct Chain {
    slots: Vec<RwLock<Arc<PluginVersion>>>,
    batch_size: usize,
    workers: Mutex<Vec<Worker>>,
    observer: Arc<dyn Observer>,
}

/// The instances one batch runs on: one per slot, made on first use.
struct Worker {
    instances: Vec<Option<(Arc<PluginVersion>, Instance)>>,
}

/// Records between two plugins, in order.
struct Stage<'a> {
    origins: Vec<usize>,
    records: Vec<Staged<'a>>,
}

impl Chain {
    /// A chain of loaded plugins; each call carries at most `batch_size` records.
    pub fn new(versions: Vec<Arc<PluginVersion>>, batch_size: usize) -> Self {
        Chain {
            slots: versions.into_iter().map(RwLock::new).collect(),
            batch_size: batch_size.max(1),
            workers: Mutex::new(Vec::new()),
            observer: Arc::new(NoObserver),
        }
    }

    /// Reports every plugin call, instance start and the outcomes to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// The number of plugins.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the chain has no plugin.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The versions running now, in chain order.
    pub fn versions(&self) -> Vec<Arc<PluginVersion>> {
        self.slots
            .iter()
            .map(|s| s.read().expect("slot lock").clone())
            .collect()
    }

    /// Makes `version` the one the next batches use at `slot`; returns the old one.
    pub fn swap(&self, slot: usize, version: Arc<PluginVersion>) -> Arc<PluginVersion> {
        std::mem::replace(&mut *self.slots[slot].write().expect("slot lock"), version)
    }

    /// A worker from the pool, or a new one without instances.
    fn worker(&self) -> Worker {
        self.workers
            .lock()
            .expect("worker pool")
            .pop()
            .unwrap_or_else(|| Worker {
                instances: (0..self.slots.len()).map(|_| None).collect(),
            })
    }

    /// Runs `inputs` through every plugin. Plugin calls are CPU work between their awaits
    /// (the awaits are WASI calls and deadlines): run it where blocking a thread is fine.
    /// With [`Budget::Bounded`] and more than one input, a run whose plugins return more
    /// than its budget stops early: nothing of it counts, run the inputs in parts.
    pub async fn run(
        &self,
        inputs: &[Input<'_>],
        budget: Budget,
    ) -> Result<ChainResult, OverBudget> {
        let versions = self.versions();
        let mut held = Held::for_run(&versions, inputs.len(), budget);
        let mut worker = self.worker();
        // What each plugin decided, reported once the run is whole: a run over budget is
        // run again in parts, and its records' outcomes are those of the parts.
        let mut decided: Vec<(&str, OutcomeCounts)> = Vec::with_capacity(versions.len());
        let mut result = ChainResult::default();
        let extras: Vec<Option<String>> = inputs.iter().map(|i| extra_text(i.extra)).collect();
        let mut emitted = vec![0usize; inputs.len()];
        let mut stage = Stage {
            origins: (0..inputs.len()).collect(),
            records: inputs
                .iter()
                .zip(&extras)
                .map(|(i, extra)| Staged::input(i.record, extra.as_deref()))
                .collect(),
        };
        for (slot, version) in versions.iter().enumerate() {
            if stage.records.is_empty() {
                break;
            }
            let instance = &mut worker.instances[slot];
            if instance
                .as_ref()
                .is_some_and(|(v, _)| !Arc::ptr_eq(v, version))
            {
                *instance = None;
            }
            let mut turn = Turn {
                slot,
                version,
                instance,
                observer: &*self.observer,
                held: &mut held,
            };
            let Some(outcomes) = turn.outcomes(&stage.records, self.batch_size).await else {
                self.workers.lock().expect("worker pool").push(worker);
                return Err(OverBudget);
            };
            let mut sorted = Sorted {
                result: &mut result,
                inputs,
                versions: &versions,
                emitted: &mut emitted,
            };
            let counts;
            (stage, counts) = turn.advance(stage, outcomes, &mut sorted);
            decided.push((&version.name, counts));
        }
        leave(&mut result, stage, &versions, inputs);
        self.workers.lock().expect("worker pool").push(worker);
        for (plugin, outcomes) in &decided {
            self.observer
                .observe(Event::PluginOutcomes { plugin, outcomes });
        }
        Ok(result)
    }
}

/// Whether a run may stop when what its plugins return passes its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// It may: the caller runs the inputs in parts then.
    Bounded,
    /// It may not (the outputs must come from one run: messages grouped by transaction).
    Unbounded,
}

/// A run stopped because what its plugins returned passed its budget: run fewer records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a chain run returned more than its budget")]
pub struct OverBudget;

/// A run's budget, in multiples of the largest `max_call_bytes` of the chain's plugins.
pub const RUN_BUDGET_CALLS: usize = 4;

/// What a run holds of what its plugins returned.
struct Held {
    bytes: usize,
    budget: Option<usize>,
}

impl Held {
    /// Nothing held yet; a budget when the run may stop and has more than one input.
    fn for_run(versions: &[Arc<PluginVersion>], inputs: usize, budget: Budget) -> Self {
        let largest_call = versions.iter().map(|v| v.spec.limits.max_call_bytes).max();
        Held {
            bytes: 0,
            budget: match budget {
                Budget::Bounded if inputs > 1 => largest_call.map(|c| RUN_BUDGET_CALLS * c),
                _ => None,
            },
        }
    }

    /// Counts `outcomes`; whether the run is still within its budget.
    fn add(&mut self, outcomes: &[Outcome]) -> bool {
        self.bytes += outcomes.iter().map(outcome_bytes).sum::<usize>();
        self.budget.is_none_or(|b| self.bytes <= b)
    }
}

/// About what the host holds for an outcome once it is a host record: the record's own
/// size and its text.
fn outcome_bytes(outcome: &Outcome) -> usize {
    let record = |r: &ChangeRecordResult| {
        std::mem::size_of::<DataChangeRecord>()
            + r.table_name.len()
            + r.extra.as_ref().map_or(0, String::len)
            + r.mods
                .iter()
                .map(|m| 64 + m.keys.len() + m.new_values.len() + m.old_values.len())
                .sum::<usize>()
    };
    // What a patch sets, and the record it makes, whose rows (a copy of the patched
    // record's, spliced) are bounded by that record, not by what the plugin returned.
    let patch = |p: &RecordPatch| {
        std::mem::size_of::<DataChangeRecord>()
            + p.extra.as_ref().map_or(0, String::len)
            + p.fields
                .iter()
                .map(|f| 64 + f.set.len() + f.remove.iter().map(|n| 24 + n.len()).sum::<usize>())
                .sum::<usize>()
    };
    match outcome {
        Outcome::Patch(p) => patch(p),
        Outcome::Replace(r) => record(r),
        Outcome::Emit(emissions) => emissions.iter().map(|e| record(&e.record)).sum(),
        Outcome::Keep | Outcome::Drop | Outcome::Fail(_) => 0,
    }
}

impl<'a> Stage<'a> {
    fn push(&mut self, origin: usize, record: Staged<'a>) {
        self.origins.push(origin);
        self.records.push(record);
    }
}

/// Where the records leaving the chain go during one run, and what each input has emitted.
struct Sorted<'r, 'i> {
    result: &'r mut ChainResult,
    inputs: &'r [Input<'i>],
    /// The chain's versions in this run, by slot: who produced a record.
    versions: &'r [Arc<PluginVersion>],
    /// Records each input record has turned into so far, over the whole chain.
    emitted: &'r mut [usize],
}

/// One plugin's turn in a chain run: its version, the worker's instance of it, and where
/// its calls are reported.
struct Turn<'a> {
    slot: usize,
    version: &'a Arc<PluginVersion>,
    instance: &'a mut Option<(Arc<PluginVersion>, Instance)>,
    observer: &'a dyn Observer,
    held: &'a mut Held,
}

impl Turn<'_> {
    /// One outcome per record (or why it failed), calling the plugin `batch_size` records at
    /// a time; the records of a call that failed are retried one by one on fresh instances,
    /// so only those that fail alone fail. `None` when what came back passed the run's
    /// budget.
    async fn outcomes(
        &mut self,
        records: &[Staged<'_>],
        batch_size: usize,
    ) -> Option<Vec<Result<Outcome, PluginFailure>>> {
        let timeout = self.version.spec.limits.timeout;
        let mut outcomes = Vec::with_capacity(records.len());
        for batch in records.chunks(batch_size) {
            match self.call(batch, Instant::now() + timeout).await {
                Ok(out) if out.len() == batch.len() => {
                    if !self.held.add(&out) {
                        return None;
                    }
                    outcomes.extend(out.into_iter().map(Ok));
                }
                Ok(out) => {
                    let e = PluginFailure::Refused(format!(
                        "returned {} outcomes for {} records",
                        out.len(),
                        batch.len()
                    ));
                    outcomes.extend(batch.iter().map(|_| Err(e.clone())));
                }
                Err(_) => {
                    for i in 0..batch.len() {
                        let outcome = self.call_alone(&batch[i..=i]).await;
                        if !self
                            .held
                            .add(outcome.as_ref().map_or(&[], std::slice::from_ref))
                        {
                            return None;
                        }
                        outcomes.push(outcome);
                    }
                }
            }
        }
        Some(outcomes)
    }

    /// The outcome of a record that failed in company: called alone, and failed only when
    /// it also fails alone on a fresh instance (an instance that ran other records first
    /// may have been broken by them).
    async fn call_alone(&mut self, record: &[Staged<'_>]) -> Result<Outcome, PluginFailure> {
        let timeout = self.version.spec.limits.timeout;
        loop {
            let fresh = self.instance.is_none();
            match self.call_one(record, Instant::now() + timeout).await {
                // The failure dropped an instance that had run other records: once more on a
                // fresh one.
                Err(e) if e.dropped_instance() && !fresh => continue,
                outcome => return outcome,
            }
        }
    }

    async fn call_one(
        &mut self,
        record: &[Staged<'_>],
        deadline: Instant,
    ) -> Result<Outcome, PluginFailure> {
        match self.call(record, deadline).await {
            Ok(mut out) if out.len() == 1 => Ok(out.pop().expect("one outcome")),
            Ok(out) => Err(PluginFailure::Refused(format!(
                "returned {} outcomes for 1 record",
                out.len()
            ))),
            Err(e) => Err(e),
        }
    }

    /// One call on the instance (started first if needed); a failed call drops it.
    async fn call(
        &mut self,
        records: &[Staged<'_>],
        deadline: Instant,
    ) -> Result<Vec<Outcome>, PluginFailure> {
        let plugin = self.version.name.as_str();
        let began = std::time::Instant::now();
        if self.instance.is_none() {
            self.observer.observe(Event::PluginStarted { plugin });
            let started = Instance::start(self.version, deadline)
                .await
                .inspect_err(|e| self.report_call(records.len(), began, Some(e)))?;
            *self.instance = Some((self.version.clone(), started));
        }
        let mut rows: Vec<RowChangeParam<'_>> =
            Vec::with_capacity(records.iter().map(Staged::row_count).sum());
        for r in records {
            r.push_rows(&mut rows);
        }
        let mut rest = &rows[..];
        let params: Vec<ChangeRecordParam<'_>> = records
            .iter()
            .map(|r| {
                let (mine, after) = rest.split_at(r.row_count());
                rest = after;
                r.param(mine)
            })
            .collect();
        let origins = if self.version.reads_origins {
            records.iter().map(|r| origin(r.origin())).collect()
        } else {
            Vec::new()
        };
        let (_, live) = self.instance.as_mut().expect("instance started above");
        let result = live.process(&params, origins, deadline).await;
        self.report_call(records.len(), began, result.as_ref().err());
        if result.is_err() {
            *self.instance = None;
        }
        result
    }

    fn report_call(
        &self,
        records: usize,
        began: std::time::Instant,
        failed: Option<&PluginFailure>,
    ) {
        self.observer.observe(Event::PluginCall {
            plugin: &self.version.name,
            records,
            took: began.elapsed(),
            failed: failed.map(PluginFailure::kind),
        });
    }

    /// Applies the plugin's outcomes: what goes on to the next plugin is the next stage; side
    /// outputs and failures leave the chain into `sorted`. Returns the stage and the
    /// outcomes counted.
    fn advance<'a>(
        &self,
        stage: Stage<'a>,
        outcomes: Vec<Result<Outcome, PluginFailure>>,
        sorted: &mut Sorted<'_, 'a>,
    ) -> (Stage<'a>, OutcomeCounts) {
        let n = stage.records.len();
        let mut next = Stage {
            origins: Vec::with_capacity(n),
            records: Vec::with_capacity(n),
        };
        let inputs = sorted.inputs;
        let changed = |record, origin: usize| Staged::Returned {
            record,
            by: self.slot,
            origin: inputs[origin].record,
        };
        let mut counts = OutcomeCounts::default();
        let items = stage.origins.into_iter().zip(stage.records).zip(outcomes);
        for ((origin, record), outcome) in items {
            let failure = match outcome {
                Ok(Outcome::Keep) => {
                    counts.keep += 1;
                    next.push(origin, record);
                    continue;
                }
                Ok(Outcome::Drop) => {
                    counts.drop += 1;
                    continue;
                }
                Ok(Outcome::Patch(patch)) => match patched(origin, record, patch, sorted) {
                    Ok(patched) => {
                        counts.patch += 1;
                        next.push(origin, patched);
                        continue;
                    }
                    Err(PatchFailed::Base(dead)) => {
                        // The earlier plugin's dead letter; the record ends here all the same.
                        counts.fail += 1;
                        sorted.result.dead_letters.push(dead);
                        continue;
                    }
                    Err(PatchFailed::Patch(e)) => {
                        PluginFailure::Refused(format!("returned an invalid patch: {e}"))
                    }
                },
                Ok(Outcome::Replace(r)) => {
                    counts.replace += 1;
                    if record.is_unchanged_by(&r) {
                        next.push(origin, record);
                    } else {
                        next.push(origin, changed(r, origin));
                    }
                    continue;
                }
                Ok(Outcome::Emit(emissions)) => {
                    match self.emit(origin, emissions, sorted, &mut next) {
                        Ok(()) => {
                            counts.emit += 1;
                            continue;
                        }
                        Err(failure) => failure,
                    }
                }
                Ok(Outcome::Fail(error)) => PluginFailure::Failed(error),
                Err(failure) => failure,
            };
            counts.fail += 1;
            sorted.result.dead_letters.push(DeadLetter {
                origin,
                plugin: self.version.clone(),
                error: failure,
            });
        }
        (next, counts)
    }
}

impl Turn<'_> {
    /// Sends what a plugin emitted for the record `origin` on: to the next plugin, or out
    /// of the chain to a side output; refused past the emissions limit.
    fn emit<'a>(
        &self,
        origin: usize,
        emissions: Vec<Emission>,
        sorted: &mut Sorted<'_, 'a>,
        next: &mut Stage<'a>,
    ) -> Result<(), PluginFailure> {
        let limit = self.version.spec.limits.max_emissions;
        let total = sorted.emitted[origin].saturating_add(emissions.len());
        if total > limit {
            return Err(PluginFailure::Refused(format!(
                "emitted {total} records for one input record; the limit is {limit} \
                 (max_emissions)"
            )));
        }
        if let Some(e) = emissions.iter().find(|e| e.output.as_deref() == Some("")) {
            return Err(PluginFailure::Refused(format!(
                "emitted a {} record to a side output with an empty name: name the side \
                 output, or emit to the main output (none)",
                e.record.table_name
            )));
        }
        sorted.emitted[origin] = total;
        for e in emissions {
            match e.output {
                None => next.push(
                    origin,
                    Staged::Returned {
                        record: e.record,
                        by: self.slot,
                        origin: sorted.inputs[origin].record,
                    },
                ),
                Some(name) => finish(
                    sorted.result,
                    origin,
                    Some(name),
                    e.record,
                    self.version,
                    sorted.inputs,
                ),
            }
        }
        Ok(())
    }
}

/// The records that went through the whole chain, to the main output: an input record no
/// plugin changed as it came, a patched one as it is, one a plugin returned whole checked.
fn leave(
    result: &mut ChainResult,
    stage: Stage<'_>,
    versions: &[Arc<PluginVersion>],
    inputs: &[Input<'_>],
) {
    for (origin, record) in stage.origins.into_iter().zip(stage.records) {
        match record {
            Staged::Host {
                record: HostRecord::Input(_),
                ..
            } => result.outputs.push(Output {
                origin,
                output: None,
                record: OutputRecord::Unchanged,
            }),
            Staged::Host {
                record: HostRecord::Patched(record),
                extra,
                ..
            } => result.outputs.push(Output {
                origin,
                output: None,
                record: OutputRecord::Changed {
                    record,
                    // Checked when the patch set it.
                    extra: extra.and_then(|text| parse_extra(&text).ok().flatten()),
                },
            }),
            Staged::Returned { record, by, .. } => {
                finish(result, origin, None, record, &versions[by], inputs)
            }
        }
    }
}

/// Why a patch made nothing.
enum PatchFailed {
    /// The record it patches, returned whole by an earlier plugin, is not a valid record:
    /// that plugin's dead letter.
    Base(DeadLetter),
    /// The patch is not valid for its record.
    Patch(String),
}

/// What `patch` makes of `record`: a host record patched (an empty patch
/// leaves it as it is). A record an earlier plugin returned whole is checked first, as
/// it would be on leaving the chain.
fn patched<'a>(
    origin: usize,
    record: Staged<'a>,
    patch: RecordPatch,
    sorted: &Sorted<'_, 'a>,
) -> Result<Staged<'a>, PatchFailed> {
    if patch.fields.is_empty() && patch.extra.is_none() {
        return Ok(record);
    }
    let input = sorted.inputs[origin].record;
    let (base, extra) = match record {
        Staged::Host { record, extra, .. } => (record, extra),
        Staged::Returned { record, by, .. } => match to_host(record, input) {
            Ok((host, extra)) => (
                HostRecord::Patched(Box::new(host)),
                extra_text(extra.as_ref()).map(Cow::Owned),
            ),
            Err(e) => {
                return Err(PatchFailed::Base(invalid_record(
                    origin,
                    &sorted.versions[by],
                    e,
                )));
            }
        },
    };
    let patched = patch::apply(&base, extra.as_deref(), patch).map_err(PatchFailed::Patch)?;
    Ok(Staged::Host {
        record: HostRecord::Patched(Box::new(patched.record)),
        extra: patched.extra.map(Cow::Owned),
        origin: input,
    })
}

/// The dead letter of a record `producer` returned that is not a valid record.
fn invalid_record(origin: usize, producer: &Arc<PluginVersion>, e: String) -> DeadLetter {
    DeadLetter {
        origin,
        plugin: producer.clone(),
        error: PluginFailure::Refused(format!("returned an invalid record: {e}")),
    }
}

/// Converts a record a plugin produced back to a host record, or dead-letters it (naming
/// the plugin that produced it) when it is not a valid record.
fn finish(
    result: &mut ChainResult,
    origin: usize,
    output: Option<String>,
    record: ChangeRecordResult,
    producer: &Arc<PluginVersion>,
    inputs: &[Input<'_>],
) {
    match to_host(record, inputs[origin].record) {
        Ok((record, extra)) => result.outputs.push(Output {
            origin,
            output,
            record: OutputRecord::Changed {
                record: Box::new(record),
                extra,
            },
        }),
        Err(e) => result
            .dead_letters
            .push(invalid_record(origin, producer, e)),
    }
}
