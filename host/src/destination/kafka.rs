//! Kafka (librdkafka through `rdkafka`): one message per record (or per mod with
//! `mods=split`, keyed by the row, so that a row's changes share a partition), its value the
//! stdout line without the newline, its headers the record's
//! [`Attributes`](super::Attributes) by the same names.
//!
//! Invariants: a batch is accepted once every message of it has a delivery report without
//! error from a producer with `enable.idempotence=true` (so `acks=all`: every in-sync
//! replica has it). The idempotent producer retries on its own, in order and without
//! duplicates, for as long as it takes (`message.timeout.ms=0`): a broker outage stops
//! progress and the run goes on when the broker is back. A message the broker refuses for
//! good (too large, an invalid or unknown topic) is refused alone, by its own delivery
//! report; any other delivery error fails the batch. librdkafka's queue is bounded
//! ([`QUEUE_KBYTES`]): a slow broker makes `send` wait, it does not grow memory.
//!
//! Every `a.b=…` option of the URI is passed to librdkafka as given (`compression.type`,
//! `security.protocol`, `sasl.mechanism`, `sasl.username`, `sasl.password`, `ssl.ca.location`,
//! …), over screamer's defaults.

use std::borrow::Cow;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::uri::{MessageOptions, Template};
use super::{Batch, Destination, DestinationError, Layout, Message};
use crate::client::Backoff;

/// librdkafka's queue of messages not yet delivered, in KiB, per destination.
pub const QUEUE_KBYTES: u32 = 64 * 1024;

/// How long a metadata request may take at start-up before it is tried again.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Produces to one topic, or one per table.
pub struct Kafka {
    name: String,
    topic: Template,
    layout: Layout,
    producer: FutureProducer,
}

/// Why a Kafka destination cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// rdkafka refused the producer's settings.
    #[error("cannot create a Kafka producer: {0}")]
    Producer(#[source] KafkaError),
    /// The broker does not know the topic.
    #[error("topic {0:?} does not exist")]
    NoTopic(String),
    /// The broker answered the topic's metadata with an error.
    #[error("topic {topic:?}: {error}")]
    Topic {
        /// The topic.
        topic: String,
        /// The broker's error.
        error: RDKafkaErrorCode,
    },
}

impl Kafka {
    /// A producer for `brokers` with screamer's defaults and the URI's properties; checks
    /// that the topic exists when its name does not depend on the record. While no broker
    /// answers this waits, retrying.
    pub async fn open(
        brokers: &[String],
        topic: Template,
        options: &MessageOptions,
    ) -> Result<Self, KafkaSetupError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers.join(","))
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "0")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.kbytes", QUEUE_KBYTES.to_string())
            .set("allow.auto.create.topics", "false");
        for (key, value) in &options.properties {
            config.set(key, value);
        }
        let producer: FutureProducer = config.create().map_err(KafkaSetupError::Producer)?;
        let destination = Kafka {
            name: format!("kafka://{}/{topic}", brokers.join(",")),
            topic,
            layout: Layout {
                mods: options.mods,
                envelopes: true,
                transactions: options.transactions,
            },
            producer,
        };
        if destination.topic.is_fixed() {
            destination.check_topic().await?;
        }
        Ok(destination)
    }

    async fn check_topic(&self) -> Result<(), KafkaSetupError> {
        let topic = self.topic.as_str().to_owned();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let (producer, name) = (self.producer.clone(), topic.clone());
            // A blocking librdkafka call.
            let metadata = tokio::task::spawn_blocking(move || {
                let metadata = producer
                    .client()
                    .fetch_metadata(Some(&name), METADATA_TIMEOUT)?;
                Ok::<_, KafkaError>(
                    metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == name)
                        .map(|t| t.error().map(RDKafkaErrorCode::from)),
                )
            })
            .await
            .expect("metadata task");
            match metadata {
                Ok(Some(None)) => return Ok(()),
                Ok(Some(Some(RDKafkaErrorCode::UnknownTopicOrPartition)) | None) => {
                    return Err(KafkaSetupError::NoTopic(topic));
                }
                Ok(Some(Some(error))) if is_refusal(error) => {
                    return Err(KafkaSetupError::Topic { topic, error });
                }
                Ok(Some(Some(error))) => tracing::warn!(output = %self.name, %error,
                    "the topic is not available; retrying"),
                Err(e) => tracing::warn!(output = %self.name,
                    "no broker answers; retrying: {e}"),
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Hands one message to librdkafka, waiting while its queue is full.
    async fn enqueue(
        &self,
        message: &Message<'_>,
        topic: &str,
    ) -> Result<DeliveryFuture, KafkaError> {
        let key = message.envelope.and_then(|e| e.key.as_deref());
        loop {
            let mut record = FutureRecord::<str, [u8]>::to(topic)
                .payload(message.payload)
                .headers(headers(message));
            if let Some(key) = key {
                record = record.key(key);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    fn topic_of(&self, message: &Message<'_>) -> Cow<'_, str> {
        let table = message
            .envelope
            .map_or("", |e| e.attributes.table_name.as_str());
        self.topic.render(table)
    }
}

fn headers(message: &Message<'_>) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(6);
    if let Some(envelope) = message.envelope {
        for (key, value) in envelope.attributes.pairs() {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
    }
    headers
}

/// Errors that say this message (or its topic) will never be taken.
fn is_refusal(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        MessageSizeTooLarge
            | MessageBatchTooLarge
            | InvalidMessageSize
            | InvalidMessage
            | BadMessage
            | InvalidRecord
            | InvalidTopic
            | UnknownTopicOrPartition
            | UnknownTopic
            | TopicAuthorizationFailed
    )
}

/// The refusal reason of a failed delivery, or `None` when the failure is not a refusal.
fn refusal(e: &KafkaError) -> Option<String> {
    e.rdkafka_error_code()
        .filter(|c| is_refusal(*c))
        .map(|_| e.to_string())
}

#[async_trait::async_trait]
impl Destination for Kafka {
    fn name(&self) -> &str {
        &self.name
    }

    fn layout(&self) -> Layout {
        self.layout
    }

    async fn send(&self, batch: Batch) -> Result<(), DestinationError> {
        let failed = |e: KafkaError| DestinationError::Failed {
            destination: self.name.clone(),
            source: std::io::Error::other(e),
        };
        let mut refused: Vec<(usize, String)> = Vec::new();
        let mut deliveries = Vec::with_capacity(batch.len());
        for (i, message) in batch.messages().enumerate() {
            match self.enqueue(&message, &self.topic_of(&message)).await {
                Ok(delivery) => deliveries.push((i, delivery)),
                Err(e) => match refusal(&e) {
                    Some(why) => refused.push((i, why)),
                    None => return Err(failed(e)),
                },
            }
        }
        for (i, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => match refusal(&e) {
                    Some(why) => refused.push((i, why)),
                    None => return Err(failed(e)),
                },
                Err(_) => return Err(failed(KafkaError::Canceled)),
            }
        }
        if refused.is_empty() {
            return Ok(());
        }
        refused.sort_unstable();
        Err(DestinationError::Refused {
            destination: self.name.clone(),
            refused: batch.select(refused.iter().map(|(i, _)| *i)),
            reasons: refused.into_iter().map(|(_, why)| why).collect(),
        })
    }
}
