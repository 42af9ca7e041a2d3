//! Destinations: where output records go once the plugin chain is done with them.
//!
//! Place in the flow: last stage, fed by the [`Pipeline`](crate::Pipeline) (or by any
//! [`Consumer`](crate::Consumer) of the library). A [`Batch`] holds one partition's output
//! records, each already serialized as one JSON line, in order. [`Destination::send`] returns
//! only once the destination has durably accepted the whole batch (for NDJSON: written and
//! flushed): the caller acknowledges the batch, and so lets the checkpoint pass it, only
//! after that. A slow destination makes `send` wait, which holds up the partition readers:
//! back-pressure, never an unbounded buffer.
//!
//! A destination that refuses some records for good (too large, invalid) says which
//! ([`DestinationError::Refused`]): the rest of the batch counts as accepted and the refused
//! records go to the dead letters with the destination's reason. Anything else it cannot do
//! now (down, unreachable) it retries itself, or fails the batch ([`DestinationError::Failed`]).
//!
//! A destination says how its batches are laid out ([`Destination::layout`]): message
//! systems take one message per record or per mod (`mods=split`), each with an [`Envelope`]
//! of attributes and key.
//!
//! Implementations: [`Ndjson`] (stdout, stderr, an appended file), `Http` (POST, feature
//! `http`), `PubSub` (feature `pubsub`), `Kafka` (feature `kafka`), `Nats` (JetStream,
//! feature `nats`), `Postgres` (a replica, feature `postgres`). [`DestinationUri`] is how
//! users name them, and [`DestinationUri::open`] opens any of them.

mod envelope;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "nats")]
mod nats;
mod ndjson;
mod open;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "pubsub")]
mod pubsub;
#[cfg(any(feature = "http", feature = "pubsub", feature = "nats"))]
mod refusals;
mod uri;

pub use envelope::{Attributes, Envelope, GROUP_KEY, Layout, Mods, Transactions, row_key};
#[cfg(feature = "http")]
pub use http::{HTTP_HEADERS_ENV, Http, HttpError};
#[cfg(feature = "kafka")]
pub use kafka::{Kafka, KafkaSetupError};
#[cfg(feature = "nats")]
pub use nats::{Nats, NatsError};
pub use ndjson::Ndjson;
pub use open::OpenError;
#[cfg(feature = "postgres")]
pub use postgres::{ATTEMPT_TIMEOUT, Postgres, PostgresError, TOMBSTONE_RETENTION};
#[cfg(feature = "pubsub")]
pub use pubsub::{PubSub, PubSubError};
pub use uri::{DestinationUri, MessageOptions, PostgresUri, SslMode, Template, UriError};

use std::ops::Range;
use std::sync::Arc;

use crate::observe::{Event, NoObserver, Observer, ReplicaRows};
use crate::snapshot::SNAPSHOT_TRANSACTION;

/// Output records of one batch, in order: one JSON object per record, each followed by a
/// newline (so the whole batch is NDJSON text as it is), and for message destinations an
/// [`Envelope`] per record.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    bytes: Vec<u8>,
    /// Where each record's line ends (after its newline).
    ends: Vec<usize>,
    /// One per record when the batch was built with envelopes ([`Layout::envelopes`]),
    /// else empty.
    envelopes: Vec<Envelope>,
}

/// One record of a batch as a message: its payload (the JSON line without its newline)
/// and its envelope, where the batch has them.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The JSON line, without its newline.
    pub payload: &'a [u8],
    /// Attributes and key, for destinations that take them.
    pub envelope: Option<&'a Envelope>,
}

impl Batch {
    /// An empty batch with room for `records` lines of about 1 KiB.
    pub fn with_capacity(records: usize) -> Self {
        Batch {
            bytes: Vec::with_capacity(records * 1024),
            ends: Vec::with_capacity(records),
            envelopes: Vec::new(),
        }
    }

    /// Appends `value` as one JSON line (a batch without envelopes).
    pub fn push(&mut self, value: &impl serde::Serialize) -> serde_json::Result<()> {
        debug_assert!(
            self.envelopes.is_empty(),
            "a batch has envelopes for all or none"
        );
        self.push_line(value)
    }

    /// Appends `value` as one JSON line with its `envelope` (a batch with envelopes).
    pub fn push_message(
        &mut self,
        value: &impl serde::Serialize,
        envelope: Envelope,
    ) -> serde_json::Result<()> {
        debug_assert_eq!(self.envelopes.len(), self.ends.len());
        self.push_line(value)?;
        self.envelopes.push(envelope);
        Ok(())
    }

    /// The batch as one message per transaction (`transactions=grouped`): consecutive
    /// messages whose envelopes name the same commit timestamp and transaction become
    /// `{"commit_timestamp", "server_transaction_id", "records": [...]}`, the records'
    /// lines as they were; a snapshot row is a group of its own. A batch without
    /// envelopes is returned as it is.
    pub fn grouped_by_transaction(&self) -> Batch {
        if self.envelopes.is_empty() {
            return self.clone();
        }
        let messages: Vec<Message<'_>> = self.messages().collect();
        let same = |a: &Message<'_>, b: &Message<'_>| {
            let (a, b) = (
                &a.envelope.expect("enveloped").attributes,
                &b.envelope.expect("enveloped").attributes,
            );
            // Snapshot rows are no transaction's: each is a message of its own.
            a.commit_timestamp == b.commit_timestamp
                && a.server_transaction_id == b.server_transaction_id
                && a.server_transaction_id != SNAPSHOT_TRANSACTION
        };
        let mut grouped = Batch::with_capacity(self.len());
        for group in messages.chunk_by(same) {
            let first = group[0].envelope.expect("enveloped");
            let start = grouped.bytes.len();
            let text = |s: &str| serde_json::to_string(s).expect("a string serializes");
            grouped.bytes.extend_from_slice(
                format!(
                    "{{\"commit_timestamp\":{},\"server_transaction_id\":{},\"records\":[",
                    text(&first.attributes.commit_timestamp),
                    text(&first.attributes.server_transaction_id)
                )
                .as_bytes(),
            );
            for (i, m) in group.iter().enumerate() {
                if i > 0 {
                    grouped.bytes.push(b',');
                }
                grouped.bytes.extend_from_slice(m.payload);
            }
            grouped.bytes.extend_from_slice(b"]}\n");
            debug_assert!(grouped.bytes.len() > start);
            grouped.ends.push(grouped.bytes.len());
            grouped.envelopes.push(envelope::group_envelope(first));
        }
        grouped
    }

    fn push_line(&mut self, value: &impl serde::Serialize) -> serde_json::Result<()> {
        let start = self.bytes.len();
        if let Err(e) = serde_json::to_writer(&mut self.bytes, value) {
            self.bytes.truncate(start);
            return Err(e);
        }
        self.bytes.push(b'\n');
        self.ends.push(self.bytes.len());
        Ok(())
    }

    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The whole batch as NDJSON text.
    pub fn as_ndjson(&self) -> &[u8] {
        &self.bytes
    }

    /// Each record's JSON, without its newline: the payload of one message.
    pub fn payloads(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.spans().map(|r| &self.bytes[r.start..r.end - 1])
    }

    /// Each record as a message.
    pub fn messages(&self) -> impl ExactSizeIterator<Item = Message<'_>> + '_ {
        self.payloads().enumerate().map(|(i, payload)| Message {
            payload,
            envelope: self.envelopes.get(i),
        })
    }

    /// Payload bytes of the whole batch.
    pub fn payload_bytes(&self) -> usize {
        self.bytes.len() - self.ends.len()
    }

    fn spans(&self) -> impl ExactSizeIterator<Item = Range<usize>> + '_ {
        (0..self.ends.len()).map(|i| i.checked_sub(1).map_or(0, |p| self.ends[p])..self.ends[i])
    }

    fn into_ndjson(self) -> Vec<u8> {
        self.bytes
    }

    /// The records `range` of this batch, as a batch of their own.
    pub fn slice(&self, range: Range<usize>) -> Batch {
        self.select(range)
    }

    /// The records at `indices` (in the order given), as a batch of their own.
    pub fn select(&self, indices: impl IntoIterator<Item = usize>) -> Batch {
        let spans: Vec<Range<usize>> = self.spans().collect();
        let mut part = Batch::default();
        for i in indices {
            part.bytes.extend_from_slice(&self.bytes[spans[i].clone()]);
            part.ends.push(part.bytes.len());
            if let Some(envelope) = self.envelopes.get(i) {
                part.envelopes.push(envelope.clone());
            }
        }
        part
    }
}

#[cfg(any(feature = "nats", feature = "postgres"))]
/// Whether TLS itself failed (a certificate refused by either side), which no retry mends,
/// rather than the connection.
pub(crate) fn is_tls_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        let io_inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if e.is::<rustls::Error>() || io_inner.is_some_and(|i| i.is::<rustls::Error>()) {
            return true;
        }
        next = e.source();
    }
    false
}

/// Why a destination did not accept all of a batch.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// Nothing of the batch is acknowledged: a restart delivers it again.
    #[error("output {destination}: {source}")]
    Failed {
        /// The destination, as [`Destination::name`] gives it.
        destination: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// Every record of the batch was accepted but those in `refused` (in order), which the
    /// destination refuses for good, each for its reason in `reasons`.
    #[error("output {destination}: refused {} records: {}", refused.len(), reasons.first().map_or("", String::as_str))]
    Refused {
        /// The destination, as [`Destination::name`] gives it.
        destination: String,
        /// The refused records, in order.
        refused: Batch,
        /// One per refused record, in order.
        reasons: Vec<String>,
    },
}

/// Where output records go. See the module docs for what `send` promises.
#[async_trait::async_trait]
pub trait Destination: Send + Sync {
    /// Names the destination in logs, errors and metrics (`stdout`, `file:/var/x.ndjson`).
    fn name(&self) -> &str;

    /// How the batches sent here are laid out: whole records without envelopes unless the
    /// destination says otherwise.
    fn layout(&self) -> Layout {
        Layout::default()
    }

    /// Sends `batch` (may be empty); returns once the destination has durably accepted it.
    async fn send(&self, batch: Batch) -> Result<(), DestinationError>;

    /// From now on, reports what happens inside `send` to `reporter`: the sends it retries,
    /// and what a replica applied (a destination that has such things to say keeps it; the
    /// default ignores it).
    fn report_to(&mut self, reporter: Reporter) {
        let _ = reporter;
    }

    /// From now on, batches hold whole transactions in commit order (`--ordering
    /// transactions`): a destination that keeps a position (the PostgreSQL replica) applies
    /// each transaction once and atomically. The default ignores it.
    fn deliver_transactions(&mut self) {}
}

/// Where a destination reports what happens inside a send (retries, what a replica
/// applied): the run's observer, under the name of the output the destination serves
/// (`main`, a side output, `dead_letters`).
#[derive(Clone)]
pub struct Reporter {
    observer: Arc<dyn Observer>,
    output: Arc<str>,
}

impl Reporter {
    /// A reporter of `output`'s events to `observer`.
    pub fn new(observer: Arc<dyn Observer>, output: &str) -> Self {
        Reporter {
            observer,
            output: output.into(),
        }
    }

    /// A send failed and is tried again after a pause.
    pub fn retried(&self) {
        self.observer.observe(Event::OutputRetried {
            output: &self.output,
        });
    }

    /// A replica applied a batch: `rows` says what became of its row changes.
    pub fn applied(&self, rows: &ReplicaRows, took: std::time::Duration) {
        self.observer.observe(Event::ReplicaApplied {
            output: &self.output,
            rows,
            took,
        });
    }
}

impl Default for Reporter {
    /// Reports nowhere.
    fn default() -> Self {
        Reporter::new(Arc::new(NoObserver), "")
    }
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_makes_one_message_per_transaction_of_the_lines_as_they_were() {
        let line = |t: &str, id: &str, n: u32| {
            let record =
                serde_json::json!({"commit_timestamp": t, "server_transaction_id": id, "n": n});
            let envelope = Envelope {
                attributes: Attributes {
                    table_name: "T".into(),
                    mod_type: "INSERT",
                    commit_timestamp: t.into(),
                    partition_token: "p".into(),
                    server_transaction_id: id.into(),
                    record_sequence: n.to_string(),
                },
                key: None,
            };
            (record, envelope)
        };
        let mut batch = Batch::default();
        for (t, id, n) in [("1", "a", 0), ("1", "a", 1), ("1", "b", 0), ("2", "a", 0)] {
            let (record, envelope) = line(t, id, n);
            batch.push_message(&record, envelope).unwrap();
        }
        let grouped = batch.grouped_by_transaction();
        let messages: Vec<Message<'_>> = grouped.messages().collect();
        assert_eq!(messages.len(), 3);
        let first: serde_json::Value = serde_json::from_slice(messages[0].payload).unwrap();
        assert_eq!(
            first,
            serde_json::json!({"commit_timestamp": "1", "server_transaction_id": "a", "records": [
                {"commit_timestamp": "1", "server_transaction_id": "a", "n": 0},
                {"commit_timestamp": "1", "server_transaction_id": "a", "n": 1},
            ]})
        );
        assert!(
            messages
                .iter()
                .all(|m| m.envelope.unwrap().key.as_deref() == Some(GROUP_KEY))
        );
        assert_eq!(
            messages[2].envelope.unwrap().attributes.commit_timestamp,
            "2"
        );
        // NDJSON batches (no envelopes) stay as they are.
        let mut plain = Batch::default();
        plain.push(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(plain.grouped_by_transaction(), plain);
    }

    #[test]
    fn a_batch_is_ndjson_and_its_payloads_are_the_lines() {
        let mut batch = Batch::default();
        batch.push(&serde_json::json!({"a": 1})).unwrap();
        batch.push(&serde_json::json!({"b": "x\ny"})).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.as_ndjson(), b"{\"a\":1}\n{\"b\":\"x\\ny\"}\n");
        let payloads: Vec<&[u8]> = batch.payloads().collect();
        assert_eq!(payloads, [&b"{\"a\":1}"[..], &b"{\"b\":\"x\\ny\"}"[..]]);
    }
}
