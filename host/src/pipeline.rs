//! Pipeline: the consumer the CLI runs — the plugin chain, then the destinations.
//!
//! Place in the flow: between the readers (which hand over one partition's batch at a
//! time and treat `Ok` as the acknowledgement) and the [`destination`](crate::destination)s.
//!
//! Invariants: a batch is acknowledged only after every destination it went to accepted
//! its part (dead letters first), so a checkpoint never passes a record that is neither out
//! nor dead-lettered. Records of one batch keep their order in every output. A record a
//! destination refuses for good becomes a dead letter naming the destination and its
//! reason; a refusal by the dead-letter destination itself fails the batch.
//! Side outputs without a destination of their own go to the main output, tagged with an
//! `"output"` field, with a warning the first time each of the first
//! [`WARNED_OUTPUTS`] names is seen (a plugin names outputs at will: neither the names kept
//! nor the warnings grow with it); the CLI refuses to start when a plugin declares a side
//! output that has no destination. Outputs are serialized one record at a time and sent in
//! pieces of at most [`FLUSH_BYTES`] (in order), each record dropped once written: what a plugin
//! amplifies is never held twice, nor whole as output bytes. The chain runs on the calling
//! worker thread (`block_in_place`): plugin calls are CPU work and must not stall other
//! tasks.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::consumer::{Consumer, ConsumerError, Origin};
use crate::destination::{
    Attributes, Batch, Destination, DestinationError, Envelope, Layout, Mods, Reporter,
    Transactions, row_key,
};
use crate::observe::{Event, NoObserver, Observer};
use crate::plugin::{Budget, Chain, DeadLetter, Input, Output, OutputRecord};
use crate::record::DataChangeRecord;
use crate::timestamp::Timestamp;

/// Output bytes buffered per destination before they are sent (records of one batch still
/// reach each destination in order, in several sends).
pub const FLUSH_BYTES: usize = 4 << 20;

/// Side output names without a destination that are warned about (and remembered).
pub const WARNED_OUTPUTS: usize = 64;

/// Plugin chain (possibly empty) plus where its outputs and dead letters go.
pub struct Pipeline {
    chain: Option<Arc<Chain>>,
    /// Chain runs at once: one per core. Plugin calls are CPU work; more would only add
    /// instances (memory) without adding throughput.
    running: tokio::sync::Semaphore,
    main: Box<dyn Destination>,
    side_outputs: HashMap<String, Box<dyn Destination>>,
    dead_letters: Box<dyn Destination>,
    observer: Arc<dyn Observer>,
    partition_metadata: bool,
    /// Batches hold whole transactions (see [`Pipeline::with_transactions`]).
    transactions: bool,
    /// Side output names seen without a destination (each is warned about once).
    undefined_outputs: Mutex<HashSet<String>>,
}

/// One output line: the record's own fields, then extra fields, then its partition's
/// metadata (when asked for), then the side output name.
#[derive(Serialize, Clone, Copy)]
struct OutputLine<'a> {
    #[serde(flatten)]
    record: &'a DataChangeRecord,
    #[serde(flatten)]
    extra: Option<&'a Map<String, Value>>,
    #[serde(flatten)]
    partition: Option<&'a PartitionFields>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a str>,
}

impl OutputLine<'_> {
    /// Nothing beside the record: it serializes as the record alone.
    fn is_bare(&self) -> bool {
        self.extra.is_none() && self.partition.is_none() && self.output.is_none()
    }
}

/// The partition metadata the Go screamer prints beside every record, for the option that
/// asks for it ([`Pipeline::with_partition_metadata`]).
#[derive(Debug, Clone, Serialize)]
pub struct PartitionFields {
    /// The partition's start (its parents' end, or `--start` for the first partitions).
    pub start_timestamp: Timestamp,
    /// The partition's position when the batch was read: every earlier record of it is
    /// acknowledged.
    pub watermark: Timestamp,
    /// When the partition was written to the metadata table (`CreatedAt`).
    pub created_at: Option<Timestamp>,
    /// When a runner first claimed it (`ScheduledAt`).
    pub scheduled_at: Option<Timestamp>,
    /// When a runner started reading it (`RunningAt`).
    pub running_at: Option<Timestamp>,
}

impl PartitionFields {
    pub fn of(origin: Origin<'_>) -> Self {
        let p = origin.partition;
        PartitionFields {
            start_timestamp: p.start,
            watermark: origin.watermark,
            created_at: p.times.created_at,
            scheduled_at: p.times.scheduled_at,
            running_at: p.times.running_at,
        }
    }
}

/// One dead-letter line for a record a destination refused: which, why, and the record
/// as the destination got it.
#[derive(Serialize)]
struct RefusedLine<'a> {
    destination: &'a str,
    error: &'a str,
    record: &'a serde_json::value::RawValue,
}

/// One dead-letter line: who failed the record, why, and the record as it entered the
/// chain.
#[derive(Serialize)]
struct DeadLetterLine<'a> {
    plugin: &'a str,
    plugin_sha256: &'a str,
    /// [`PluginFailure`](crate::plugin::PluginFailure)'s one line.
    error: String,
    record: OutputLine<'a>,
}

impl Pipeline {
    /// Outputs to `main`, dead letters to `dead_letters`; no plugins (a pass-through).
    pub fn new(main: Box<dyn Destination>, dead_letters: Box<dyn Destination>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Pipeline {
            chain: None,
            running: tokio::sync::Semaphore::new(cores),
            main,
            side_outputs: HashMap::new(),
            dead_letters,
            observer: Arc::new(NoObserver),
            partition_metadata: false,
            transactions: false,
            undefined_outputs: Mutex::default(),
        }
    }

    /// Batches hold whole transactions in commit order (`--ordering transactions`): tells
    /// the main and side outputs (a replica keeps its position), not the dead letters.
    pub fn with_transactions(mut self) -> Self {
        self.transactions = true;
        self.main.deliver_transactions();
        for destination in self.side_outputs.values_mut() {
            destination.deliver_transactions();
        }
        self
    }

    /// Puts each record's partition metadata (its start, watermark and the times of its
    /// steps, as `--partition-metadata` names them) beside it in every
    /// output and dead letter, as the Go screamer prints it.
    pub fn with_partition_metadata(mut self) -> Self {
        self.partition_metadata = true;
        self
    }

    /// Reports what each destination accepted or retried, and the dead letters, to
    /// `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.main.report_to(Reporter::new(observer.clone(), MAIN));
        self.dead_letters
            .report_to(Reporter::new(observer.clone(), DEAD_LETTERS));
        for (name, destination) in &mut self.side_outputs {
            destination.report_to(Reporter::new(observer.clone(), name));
        }
        self.observer = observer;
        self
    }

    /// Runs every batch through `chain` first.
    pub fn with_chain(mut self, chain: Arc<Chain>) -> Self {
        self.chain = Some(chain).filter(|c| !c.is_empty());
        self
    }

    /// Sends the records plugins emit to side output `name` to `destination`.
    pub fn with_side_output(
        mut self,
        name: impl Into<String>,
        mut destination: Box<dyn Destination>,
    ) -> Self {
        let name = name.into();
        destination.report_to(Reporter::new(self.observer.clone(), &name));
        if self.transactions {
            destination.deliver_transactions();
        }
        self.side_outputs.insert(name, destination);
        self
    }

    /// The names of the outputs in [`Event`]s: `main`, `dead_letters` and every side
    /// output with a destination of its own.
    pub fn outputs(&self) -> impl Iterator<Item = &str> {
        [MAIN, DEAD_LETTERS]
            .into_iter()
            .chain(self.side_outputs.keys().map(String::as_str))
    }

    /// Processes one batch (records of one partition, in order) and writes the results,
    /// with `partition`'s fields beside every record when given.
    pub async fn process(
        &self,
        inputs: &[Input<'_>],
        partition: Option<&PartitionFields>,
    ) -> Result<(), ConsumerError> {
        let Some(chain) = &self.chain else {
            let mut batch = Batch::with_capacity(inputs.len());
            let layout = self.main.layout();
            for input in inputs {
                let line = OutputLine {
                    record: input.record,
                    extra: input.extra,
                    partition,
                    output: None,
                };
                push_output(&mut batch, layout, line)?;
            }
            return self.send(MAIN, &*self.main, batch).await;
        };
        self.run_chain(chain, inputs, partition).await
    }

    /// Runs `inputs` through the chain and writes what comes out. A run whose plugins
    /// return more than its budget is run again in halves, the first written before the
    /// second runs, so what a batch amplifies into is never held whole. Not when messages
    /// group transactions: a group must come from one run.
    async fn run_chain(
        &self,
        chain: &Chain,
        inputs: &[Input<'_>],
        partition: Option<&PartitionFields>,
    ) -> Result<(), ConsumerError> {
        let grouped = std::iter::once(&self.main)
            .chain(self.side_outputs.values())
            .any(|d| d.layout().transactions == Transactions::Grouped);
        let budget = if grouped {
            Budget::Unbounded
        } else {
            Budget::Bounded
        };
        let ran = {
            let _slot = self.running.acquire().await?;
            off_the_workers(chain.run(inputs, budget)).await
        };
        let Ok(result) = ran else {
            let (first, second) = inputs.split_at(inputs.len() / 2);
            tracing::debug!(
                records = inputs.len(),
                "chain run over budget; running it in halves"
            );
            Box::pin(self.run_chain(chain, first, partition)).await?;
            return Box::pin(self.run_chain(chain, second, partition)).await;
        };
        self.write_dead_letters(inputs, &result.dead_letters, partition)
            .await?;
        self.write_outputs(inputs, result.outputs, partition).await
    }

    async fn write_dead_letters(
        &self,
        inputs: &[Input<'_>],
        dead_letters: &[DeadLetter],
        partition: Option<&PartitionFields>,
    ) -> Result<(), ConsumerError> {
        if dead_letters.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::with_capacity(dead_letters.len());
        let envelopes = self.dead_letters.layout().envelopes;
        // One line per dead letter at most on stderr: the default destination writes the
        // dead letter itself there; any other gets a count per batch.
        if self.dead_letters.name() != "stderr" {
            tracing::warn!(records = dead_letters.len(), to = self.dead_letters.name(),
                first_error = %dead_letters[0].error, "records sent to the dead letters");
        }
        for d in dead_letters {
            let input = &inputs[d.origin];
            let line = DeadLetterLine {
                plugin: d.plugin.tag(),
                plugin_sha256: &d.plugin.sha256,
                error: d.error.to_string(),
                record: OutputLine {
                    record: input.record,
                    extra: input.extra,
                    partition,
                    output: None,
                },
            };
            if envelopes {
                batch.push_message(&line, Envelope::of(input.record))?;
            } else {
                batch.push(&line)?;
            }
        }
        self.send_dead_letters(batch).await?;
        let same = |a: &DeadLetter, b: &DeadLetter| {
            a.plugin.name == b.plugin.name && a.error.kind() == b.error.kind()
        };
        for plugin in dead_letters.chunk_by(same) {
            self.observer.observe(Event::DeadLetters {
                plugin: &plugin[0].plugin.name,
                records: plugin.len(),
                kind: plugin[0].error.kind(),
            });
        }
        Ok(())
    }

    /// Writes the chain's outputs in order, each record serialized and dropped in turn.
    async fn write_outputs(
        &self,
        inputs: &[Input<'_>],
        outputs: Vec<Output>,
        partition: Option<&PartitionFields>,
    ) -> Result<(), ConsumerError> {
        let mut main = Batch::with_capacity(outputs.len().min(MAX_PREALLOCATED));
        let mut side: HashMap<&str, Batch> = HashMap::new();
        // With whole transactions, a large batch is sent early only where a transaction
        // begins: a replica applies each one atomically, and groups need all of it.
        let mut transaction: Option<(Timestamp, String)> = None;
        for out in outputs {
            let origin = &inputs[out.origin];
            let (record, extra) = match &out.record {
                OutputRecord::Unchanged => (origin.record, origin.extra),
                OutputRecord::Changed { record, extra } => (&**record, extra.as_ref()),
            };
            let this = (
                record.commit_timestamp,
                record.server_transaction_id.as_str(),
            );
            let boundary = !self.transactions
                || transaction
                    .as_ref()
                    .is_none_or(|(t, id)| (*t, id.as_str()) != this);
            if boundary && self.transactions {
                transaction = Some((this.0, this.1.to_owned()));
            }
            let (output, destination, batch, tag) = match out.output.as_deref() {
                Some(name) => match self.side_outputs.get_key_value(name) {
                    Some((name, d)) => (
                        name.as_str(),
                        &**d,
                        side.entry(name.as_str()).or_default(),
                        None,
                    ),
                    None => {
                        self.warn_undefined(name);
                        (MAIN, &*self.main, &mut main, Some(name))
                    }
                },
                None => (MAIN, &*self.main, &mut main, None),
            };
            let line = OutputLine {
                record,
                extra,
                partition,
                output: tag,
            };
            if boundary && batch.as_ndjson().len() >= FLUSH_BYTES {
                self.send(output, destination, std::mem::take(batch))
                    .await?;
            }
            push_output(batch, destination.layout(), line)?;
        }
        for (name, batch) in side {
            self.send(name, &*self.side_outputs[name], batch).await?;
        }
        self.send(MAIN, &*self.main, main).await
    }

    /// Says once per name that records of side output `name` go to the main output.
    fn warn_undefined(&self, name: &str) {
        let mut seen = self.undefined_outputs.lock().expect("not poisoned");
        if seen.len() >= WARNED_OUTPUTS || seen.contains(name) {
            return;
        }
        seen.insert(name.to_owned());
        let more = if seen.len() == WARNED_OUTPUTS {
            " (the last such warning: more names are not reported)"
        } else {
            ""
        };
        tracing::warn!(
            output = name,
            "side output without a destination: its records go to the main output, \
             tagged \"output\"; give it one (--side-output NAME=URI, [side_outputs]){more}"
        );
    }

    /// Sends `batch` to `destination` (output `output`) and reports what it accepted; the
    /// records it refuses go to the dead letters.
    async fn send(
        &self,
        output: &str,
        destination: &dyn Destination,
        batch: Batch,
    ) -> Result<(), ConsumerError> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch =
            match self.transactions && destination.layout().transactions == Transactions::Grouped {
                true => batch.grouped_by_transaction(),
                false => batch,
            };
        let (records, bytes) = (batch.len(), batch.payload_bytes());
        let started = std::time::Instant::now();
        self.observer.observe(Event::Sending { output, bytes });
        let sent = match destination.send(batch).await {
            Ok(()) => Ok(0),
            Err(DestinationError::Refused {
                refused, reasons, ..
            }) => {
                self.dead_letter_refusals(destination, &refused, &reasons)
                    .await
            }
            Err(e) => Err(e.into()),
        };
        // Every Sending is closed by an Output or an OutputFailed, whatever failed.
        let refused = sent.inspect_err(|_| {
            self.observer.observe(Event::OutputFailed { output, bytes });
        })?;
        self.observer.observe(Event::Output {
            output,
            records: records - refused,
            refused,
            bytes,
            took: started.elapsed(),
        });
        Ok(())
    }

    /// Sends the records `destination` refused (each for its reason) to the dead letters;
    /// returns how many.
    async fn dead_letter_refusals(
        &self,
        destination: &dyn Destination,
        refused: &Batch,
        reasons: &[String],
    ) -> Result<usize, ConsumerError> {
        let envelopes = self.dead_letters.layout().envelopes;
        let dead = refused_lines(destination.name(), refused, reasons, envelopes)?;
        self.send_dead_letters(dead).await?;
        Ok(refused.len())
    }

    /// Dead letters must be taken whole: a refusal here fails the batch.
    async fn send_dead_letters(&self, batch: Batch) -> Result<(), ConsumerError> {
        let (records, bytes) = (batch.len(), batch.payload_bytes());
        let started = std::time::Instant::now();
        let output = DEAD_LETTERS;
        self.observer.observe(Event::Sending { output, bytes });
        if let Err(e) = self.dead_letters.send(batch).await {
            self.observer.observe(Event::OutputFailed { output, bytes });
            return Err(e.into());
        }
        self.observer.observe(Event::Output {
            output,
            records,
            refused: 0,
            bytes,
            took: started.elapsed(),
        });
        Ok(())
    }
}

/// The output name of the main destination in [`Event`]s.
pub const MAIN: &str = "main";
/// The output name of the dead-letter destination in [`Event`]s.
pub const DEAD_LETTERS: &str = "dead_letters";

impl Consumer for Pipeline {
    async fn consume(&self, records: &[DataChangeRecord]) -> Result<(), ConsumerError> {
        let inputs: Vec<Input<'_>> = records.iter().map(Input::from).collect();
        self.process(&inputs, None).await
    }

    async fn consume_from(
        &self,
        origin: Origin<'_>,
        records: &[DataChangeRecord],
    ) -> Result<(), ConsumerError> {
        let inputs: Vec<Input<'_>> = records.iter().map(Input::from).collect();
        let partition = self.partition_metadata.then(|| PartitionFields::of(origin));
        self.process(&inputs, partition.as_ref()).await
    }
}

/// Appends one output record to `batch` as `layout` asks: whole or one message per mod
/// (a record holding that one mod, keyed by its row), with envelopes or without.
fn push_output(batch: &mut Batch, layout: Layout, line: OutputLine<'_>) -> serde_json::Result<()> {
    let record = line.record;
    if layout.mods == Mods::Whole || record.mods.is_empty() {
        let envelope = layout.envelopes.then(|| Envelope::of(record));
        return push_line(batch, line, envelope);
    }
    let attributes = Attributes::of(record);
    let mut one = record.clone();
    for row in std::mem::take(&mut one.mods) {
        let envelope = layout.envelopes.then(|| Envelope {
            attributes: attributes.clone(),
            key: Some(row_key(&one.table_name, &row)),
        });
        one.mods = vec![row];
        let line = OutputLine {
            record: &one,
            ..line
        };
        push_line(batch, line, envelope)?;
    }
    Ok(())
}

fn push_line(
    batch: &mut Batch,
    line: OutputLine<'_>,
    envelope: Option<Envelope>,
) -> serde_json::Result<()> {
    match envelope {
        // Serializing the record directly skips serde's flatten machinery.
        None if line.is_bare() => batch.push(line.record),
        None => batch.push(&line),
        Some(envelope) if line.is_bare() => batch.push_message(line.record, envelope),
        Some(envelope) => batch.push_message(&line, envelope),
    }
}

/// Dead-letter lines for the records of `refused`, which `destination` refused for
/// `reasons` (one each), with the refused records' envelopes where the dead-letter
/// destination takes them.
fn refused_lines(
    destination: &str,
    refused: &Batch,
    reasons: &[String],
    envelopes: bool,
) -> Result<Batch, ConsumerError> {
    let mut dead = Batch::with_capacity(refused.len());
    for (message, reason) in refused.messages().zip(reasons) {
        let record: &serde_json::value::RawValue = serde_json::from_slice(message.payload)?;
        tracing::warn!(
            output = destination,
            error = reason,
            "record refused by its destination, sent to the dead letters"
        );
        let line = RefusedLine {
            destination,
            error: reason,
            record,
        };
        match message.envelope.filter(|_| envelopes) {
            Some(envelope) => dead.push_message(&line, envelope.clone())?,
            None => dead.push(&line)?,
        }
    }
    Ok(dead)
}

/// Records a batch preallocates room for (an amplified batch grows as it is written).
const MAX_PREALLOCATED: usize = 1024;

/// Drives `work` (CPU-bound between its awaits) on this thread, taken out of the runtime's
/// worker pool first where there is one, so that other tasks keep running.
async fn off_the_workers<F: Future>(work: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(work))
        }
        _ => work.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::Ndjson;

    #[test]
    fn names_of_outputs_without_a_destination_are_kept_up_to_a_bound() {
        let pipeline = Pipeline::new(Box::new(Ndjson::stdout()), Box::new(Ndjson::stderr()));
        for i in 0..10 * WARNED_OUTPUTS {
            pipeline.warn_undefined(&format!("output-{i}"));
            pipeline.warn_undefined("audit");
        }
        let seen = pipeline.undefined_outputs.lock().unwrap();
        assert_eq!(seen.len(), WARNED_OUTPUTS);
        assert!(seen.contains("audit"));
    }
}
