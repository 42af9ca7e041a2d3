//! The chain: runs a batch through every plugin in order and sorts what comes out into
//! main outputs, side outputs and dead letters.
//!
//! Invariants:
//! - Every input record ends as outputs (zero or more) or as dead letters, never lost.
//! - One `run` uses one version of each plugin (a snapshot taken at its start), so a hot
//!   swap lands between batches and every record is processed by exactly one version.
//! - Workers (a store per plugin each) are pooled: concurrent batches (different
//!   partitions) run on different stores; an instance whose call failed is dropped and the
//!   next call starts a fresh one.

use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Map, Value};

use super::bindings::{ChangeRecord, Outcome};
use super::convert::{to_host, to_wit};
use super::instance::Instance;
use super::version::PluginVersion;
use crate::record::DataChangeRecord;

/// One record entering the chain, with the extra top-level fields it already carries.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub record: &'a DataChangeRecord,
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
    pub record: OutputRecord,
}

/// What a record leaving the chain looks like.
#[derive(Debug)]
pub enum OutputRecord {
    /// Every plugin kept it: the input record as it came (nothing is converted back).
    Unchanged,
    Changed {
        record: Box<DataChangeRecord>,
        extra: Option<Map<String, Value>>,
    },
}

/// A record a plugin failed (its own `fail`, a trap, a deadline, the memory cap, or output
/// the host refused).
#[derive(Debug)]
pub struct DeadLetter {
    /// Index of the input record.
    pub origin: usize,
    /// `name@version` of the plugin.
    pub plugin: String,
    pub plugin_sha256: String,
    pub error: String,
}

#[derive(Debug, Default)]
pub struct ChainResult {
    pub outputs: Vec<Output>,
    pub dead_letters: Vec<DeadLetter>,
}

/// Counters since the chain started.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChainStats {
    pub calls: u64,
    pub failed_calls: u64,
    pub instances_started: u64,
}

/// Plugins in order, each replaceable while batches flow.
pub struct Chain {
    slots: Vec<RwLock<Arc<PluginVersion>>>,
    batch_size: usize,
    workers: Mutex<Vec<Worker>>,
    stats: Mutex<ChainStats>,
}

/// The instances one batch runs on: one per slot, made on first use.
struct Worker {
    instances: Vec<Option<(Arc<PluginVersion>, Instance)>>,
}

/// Records between two plugins, in order.
struct Stage {
    origins: Vec<usize>,
    records: Vec<ChangeRecord>,
    /// The slot that last replaced the record; `None` while it is the input as it came.
    changed_by: Vec<Option<usize>>,
}

impl Chain {
    /// A chain of loaded plugins; each call carries at most `batch_size` records.
    pub fn new(versions: Vec<Arc<PluginVersion>>, batch_size: usize) -> Self {
        Chain {
            slots: versions.into_iter().map(RwLock::new).collect(),
            batch_size: batch_size.max(1),
            workers: Mutex::new(Vec::new()),
            stats: Mutex::new(ChainStats::default()),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

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

    pub fn stats(&self) -> ChainStats {
        *self.stats.lock().expect("stats lock")
    }

    /// Runs `inputs` through every plugin (blocking: call it off the async runtime).
    pub fn run(&self, inputs: &[Input<'_>]) -> ChainResult {
        let versions = self.versions();
        let mut worker = self
            .workers
            .lock()
            .expect("worker pool")
            .pop()
            .unwrap_or_else(|| Worker {
                instances: (0..self.slots.len()).map(|_| None).collect(),
            });
        let mut stats = ChainStats::default();
        let mut result = ChainResult::default();
        let mut stage = Stage {
            origins: (0..inputs.len()).collect(),
            records: inputs.iter().map(|i| to_wit(i.record, i.extra)).collect(),
            changed_by: vec![None; inputs.len()],
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
                stats: &mut stats,
            };
            let outcomes = turn.outcomes(&stage.records, self.batch_size);
            stage = turn.advance(stage, outcomes, &mut result, inputs);
        }
        for ((origin, record), changed_by) in stage
            .origins
            .into_iter()
            .zip(stage.records)
            .zip(stage.changed_by)
        {
            match changed_by {
                None => result.outputs.push(Output {
                    origin,
                    output: None,
                    record: OutputRecord::Unchanged,
                }),
                Some(slot) => finish(&mut result, origin, None, record, &versions[slot], inputs),
            }
        }
        self.workers.lock().expect("worker pool").push(worker);
        let mut total = self.stats.lock().expect("stats lock");
        total.calls += stats.calls;
        total.failed_calls += stats.failed_calls;
        total.instances_started += stats.instances_started;
        result
    }
}

impl Stage {
    fn push(&mut self, origin: usize, record: ChangeRecord, changed_by: Option<usize>) {
        self.origins.push(origin);
        self.records.push(record);
        self.changed_by.push(changed_by);
    }
}

/// One plugin's turn in a chain run: its version, the worker's instance of it, and the run's
/// counters.
struct Turn<'a> {
    slot: usize,
    version: &'a Arc<PluginVersion>,
    instance: &'a mut Option<(Arc<PluginVersion>, Instance)>,
    stats: &'a mut ChainStats,
}

impl Turn<'_> {
    /// One outcome per record (or why it failed), calling the plugin `batch_size` records at
    /// a time; the records of a call that failed are retried one by one on fresh instances,
    /// so only those that fail alone fail.
    fn outcomes(
        &mut self,
        records: &[ChangeRecord],
        batch_size: usize,
    ) -> Vec<Result<Outcome, String>> {
        let mut outcomes = Vec::with_capacity(records.len());
        for batch in records.chunks(batch_size) {
            match self.call(batch) {
                Ok(out) if out.len() == batch.len() => outcomes.extend(out.into_iter().map(Ok)),
                Ok(out) => {
                    let e = format!(
                        "returned {} outcomes for {} records",
                        out.len(),
                        batch.len()
                    );
                    outcomes.extend(batch.iter().map(|_| Err(e.clone())));
                }
                Err(e) if batch.len() == 1 => outcomes.push(Err(e)),
                Err(_) => {
                    for i in 0..batch.len() {
                        outcomes.push(self.call_one(&batch[i..=i]));
                    }
                }
            }
        }
        outcomes
    }

    fn call_one(&mut self, record: &[ChangeRecord]) -> Result<Outcome, String> {
        match self.call(record) {
            Ok(mut out) if out.len() == 1 => Ok(out.pop().expect("one outcome")),
            Ok(out) => Err(format!("returned {} outcomes for 1 record", out.len())),
            Err(e) => Err(e),
        }
    }

    /// One call on the instance (started first if needed); a failed call drops it.
    fn call(&mut self, records: &[ChangeRecord]) -> Result<Vec<Outcome>, String> {
        if self.instance.is_none() {
            self.stats.instances_started += 1;
            let started =
                Instance::start(self.version).inspect_err(|_| self.stats.failed_calls += 1)?;
            *self.instance = Some((self.version.clone(), started));
        }
        self.stats.calls += 1;
        let (_, live) = self.instance.as_mut().expect("instance started above");
        let result = live.process(records);
        if result.is_err() {
            self.stats.failed_calls += 1;
            *self.instance = None;
        }
        result
    }

    /// Applies the plugin's outcomes: what goes on to the next plugin is the next stage; side
    /// outputs and failures leave the chain into `result`.
    fn advance(
        &self,
        stage: Stage,
        outcomes: Vec<Result<Outcome, String>>,
        result: &mut ChainResult,
        inputs: &[Input<'_>],
    ) -> Stage {
        let n = stage.records.len();
        let mut next = Stage {
            origins: Vec::with_capacity(n),
            records: Vec::with_capacity(n),
            changed_by: Vec::with_capacity(n),
        };
        let items = stage
            .origins
            .into_iter()
            .zip(stage.records)
            .zip(stage.changed_by)
            .zip(outcomes);
        for (((origin, record), changed_by), outcome) in items {
            match outcome {
                Ok(Outcome::Keep) => next.push(origin, record, changed_by),
                Ok(Outcome::Drop) => {}
                Ok(Outcome::Replace(r)) => next.push(origin, r, Some(self.slot)),
                Ok(Outcome::Emit(emissions)) => {
                    for e in emissions {
                        match e.output {
                            None => next.push(origin, e.record, Some(self.slot)),
                            Some(name) => {
                                finish(result, origin, Some(name), e.record, self.version, inputs)
                            }
                        }
                    }
                }
                Ok(Outcome::Fail(error)) | Err(error) => result.dead_letters.push(DeadLetter {
                    origin,
                    plugin: self.version.tag().to_owned(),
                    plugin_sha256: self.version.sha256.clone(),
                    error,
                }),
            }
        }
        next
    }
}

/// Converts a record a plugin produced back to a host record, or dead-letters it (naming
/// the plugin that produced it) when it is not a valid record.
fn finish(
    result: &mut ChainResult,
    origin: usize,
    output: Option<String>,
    record: ChangeRecord,
    producer: &PluginVersion,
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
        Err(e) => result.dead_letters.push(DeadLetter {
            origin,
            plugin: producer.tag().to_owned(),
            plugin_sha256: producer.sha256.clone(),
            error: format!("returned an invalid record: {e}"),
        }),
    }
}
