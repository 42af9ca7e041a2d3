//! What the readers read and acknowledged: records and mods by table, commit-to-output
//! latency, held partitions and their lag, query restarts, released transactions.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::{FloatGauge, latency_histogram, registered, registered_in};
use crate::observe::Event;
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
struct ErrorLabels {
    class: &'static str,
}

#[derive(Debug)]
pub(super) struct ReadingMetrics {
    records: Family<TableLabels, Counter>,
    mods: Family<TableLabels, Counter>,
    commit_to_ack: Histogram,
    watermark_lag: FloatGauge,
    low_watermark_lag: FloatGauge,
    incomplete_transactions: Counter,
    partitions_held: Gauge,
    partitions_finished: Counter,
    query_restarts: Family<ErrorLabels, Counter>,
    read_batch: Histogram,
    /// The total over `records`, which cannot be summed back.
    records_read: AtomicU64,
    state: Mutex<Positions>,
}

/// Where the held partitions are, and how far the stream is released.
#[derive(Debug, Default)]
struct Positions {
    /// Held partitions and how far each has been read and acknowledged.
    held: HashMap<PartitionToken, Timestamp>,
    /// `--ordering transactions`: every transaction committed at or before it is released.
    released: Option<Timestamp>,
}

/// How far reading is, for [`super::Progress`].
pub(super) struct ReadingProgress {
    pub records: u64,
    pub partitions_held: usize,
    pub partitions_finished: u64,
    pub slowest: Option<Timestamp>,
    pub lag: Duration,
    pub low_watermark_lag: Duration,
}

impl ReadingMetrics {
    pub(super) fn new(r: &mut Registry) -> Self {
        let m = Self {
            records: registered(
                r,
                "records",
                "Data change records read from Spanner, before plugins",
                Family::default(),
            ),
            mods: registered(
                r,
                "mods",
                "Row changes (mods) read from Spanner, before plugins",
                Family::default(),
            ),
            commit_to_ack: registered_in(
                r,
                "commit_to_output",
                "From a record's commit to its batch's acknowledgement (every destination took it)",
                Unit::Seconds,
                latency_histogram(),
            ),
            watermark_lag: registered_in(
                r,
                "watermark_lag",
                "How far behind now the slowest held partition has been read and acknowledged, \
                 heartbeats included (0 when none is held)",
                Unit::Seconds,
                FloatGauge::default(),
            ),
            low_watermark_lag: registered_in(
                r,
                "low_watermark_lag",
                "How far behind now the stream's released-through position is: with --ordering \
                 transactions the latest commit released once every partition was read past it, \
                 with key the slowest held partition",
                Unit::Seconds,
                FloatGauge::default(),
            ),
            incomplete_transactions: registered(
                r,
                "ordering_incomplete_transactions",
                "Transactions released without all of their records (a transaction at a \
                 partition split whose other records were not read in time)",
                Counter::default(),
            ),
            partitions_held: registered(
                r,
                "partitions_held",
                "Partitions this runner reads now",
                Gauge::default(),
            ),
            partitions_finished: registered(
                r,
                "partitions_finished",
                "Partitions this runner read to their end",
                Counter::default(),
            ),
            query_restarts: registered(
                r,
                "query_restarts",
                "Partition queries restarted from their watermark after a transient error, by class",
                Family::default(),
            ),
            read_batch: registered(
                r,
                "read_batch_records",
                "Records per batch a reader hands on; batches grow while the consumer is busy",
                Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            ),
            records_read: AtomicU64::new(0),
            state: Mutex::new(Positions::default()),
        };
        for class in ERROR_CLASSES {
            drop(m.query_restarts.get_or_create(&ErrorLabels { class }));
        }
        m
    }

    pub(super) fn observe(&self, event: &Event<'_>) {
        match *event {
            Event::Read { records, .. } => self.read(records),
            Event::Acknowledged {
                partition,
                through,
                records,
            } => self.acknowledged(partition, through, records),
            Event::Reading { partition, from } => {
                let mut s = self.state.lock().expect("metrics state");
                s.held.insert(partition.clone(), from);
                self.partitions_held.set(s.held.len() as i64);
            }
            Event::StoppedReading { partition } => {
                let mut s = self.state.lock().expect("metrics state");
                s.held.remove(partition);
                self.partitions_held.set(s.held.len() as i64);
            }
            Event::QueryRestarted { error, .. } => {
                self.query_restarts
                    .get_or_create(&ErrorLabels {
                        class: error_class(error),
                    })
                    .inc();
            }
            Event::Finished { .. } => {
                self.partitions_finished.inc();
            }
            Event::TransactionsReleased {
                through,
                incomplete,
            } => {
                self.incomplete_transactions.inc_by(incomplete as u64);
                self.state.lock().expect("metrics state").released = Some(through);
            }
            _ => {}
        }
    }

    fn read(&self, records: &[DataChangeRecord]) {
        self.read_batch.observe(records.len() as f64);
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
        if let Some(at) = s.held.get_mut(partition) {
            *at = through.max(*at);
        }
    }

    pub(super) fn progress(&self) -> ReadingProgress {
        let s = self.state.lock().expect("metrics state");
        let slowest = s.held.values().min().copied();
        let behind =
            |t: Option<Timestamp>| t.map_or(Duration::ZERO, |t| Timestamp::now().duration_since(t));
        let lag = behind(slowest);
        ReadingProgress {
            records: self.records_read.load(Ordering::Relaxed),
            partitions_held: s.held.len(),
            partitions_finished: self.partitions_finished.get(),
            slowest,
            lag,
            low_watermark_lag: s.released.map_or(lag, |r| behind(Some(r))),
        }
    }

    /// Brings the lag gauges up to date, before a scrape.
    pub(super) fn update_lags(&self, progress: &ReadingProgress) {
        self.watermark_lag.set(progress.lag.as_secs_f64());
        self.low_watermark_lag
            .set(progress.low_watermark_lag.as_secs_f64());
    }
}

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
