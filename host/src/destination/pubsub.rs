//! Google Cloud Pub/Sub: one message per record (or per mod with `mods=split`), its payload
//! the stdout line without the newline, its attributes the record's
//! [`Attributes`](super::Attributes), its ordering key the row's key with `mods=split`.
//!
//! Invariants: a batch is accepted once Pub/Sub has answered every publish request for it
//! with message ids. Requests go one after the other, in the batch's order, each within
//! Pub/Sub's limits (1,000 messages, 10 MB), so messages of one key reach Pub/Sub in order
//! and a subscription with message ordering delivers them so. A request that fails in a way
//! that may pass (unavailable, deadline, overload, or a missing topic or permission, which an
//! operator can fix) is retried with backoff and jitter for as long as it takes, so a
//! Pub/Sub outage stops progress and the run goes on when it is back; a request Pub/Sub
//! rejects as invalid is split down to the records it rejects alone, which are refused.
//! With a topic per table (`{table_name}`), the records of a table whose topic does not
//! exist are refused (dead letters naming the topic) and the other tables go on.
//! `PUBSUB_EMULATOR_HOST` selects the emulator, as in every Google client; Application
//! Default Credentials are used otherwise.

use std::time::Duration;

use gcloud_gax::create_request;
use gcloud_gax::grpc::{Code, Status};
use gcloud_googleapis::pubsub::v1::publisher_client::PublisherClient;
use gcloud_googleapis::pubsub::v1::{GetTopicRequest, PublishRequest, PubsubMessage};
use gcloud_pubsub::apiv1::conn_pool::ConnectionManager;
use gcloud_pubsub::client::ClientConfig;

use super::refusals::{Sent, isolating_refusals, requests};
use super::uri::{MessageOptions, Template};
use super::{Batch, Destination, DestinationError, Layout, Reporter};
use crate::client::Backoff;

/// Pub/Sub's limits on one publish request (with room for the request's own framing).
const MAX_MESSAGES: usize = 1000;
const MAX_REQUEST_BYTES: usize = 9 << 20;
/// Pub/Sub refuses longer ordering keys; a shorter prefix of a key keeps its order (rows
/// that share it are merely ordered together).
const MAX_ORDERING_KEY: usize = 1024;
/// How long one publish request may take before it is abandoned and retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting, or looking up the topic at start-up, may take before it is tried
/// again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes to one topic of one project, or one per table.
pub struct PubSub {
    name: String,
    project: String,
    topic: Template,
    layout: Layout,
    connections: ConnectionManager,
    reporter: Reporter,
}

/// Why a Pub/Sub destination cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum PubSubError {
    /// Google's application default credentials cannot be loaded.
    #[error("application default credentials: {0}")]
    Credentials(#[source] gcloud_pubsub::client::google_cloud_auth::error::Error),
    /// The channel to Pub/Sub cannot be opened.
    #[error("cannot connect to Pub/Sub: {0}")]
    Connect(#[source] gcloud_gax::conn::Error),
    /// The project has no such topic.
    #[error("topic {0} does not exist")]
    NoTopic(String),
    /// Looking up the topic failed.
    #[error("cannot look up topic {topic}: {source}")]
    Lookup {
        /// The topic.
        topic: String,
        /// Pub/Sub's answer.
        #[source]
        source: Status,
    },
}

impl PubSub {
    /// Connects (to the emulator of `PUBSUB_EMULATOR_HOST` if set) and checks that the topic
    /// exists when its name does not depend on the record. While Pub/Sub cannot be reached
    /// this waits, retrying: a runner started during an outage goes on when it ends.
    pub async fn open(
        project: &str,
        topic: Template,
        options: &MessageOptions,
    ) -> Result<Self, PubSubError> {
        let mut config = ClientConfig::default()
            .with_auth()
            .await
            .map_err(PubSubError::Credentials)?;
        config.connection_option.timeout = Some(REQUEST_TIMEOUT);
        config.connection_option.connect_timeout = Some(CONNECT_TIMEOUT);
        let name = format!("pubsub://projects/{project}/topics/{topic}");
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let connections = loop {
            let connecting = ConnectionManager::new(
                config.pool_size,
                &config.endpoint,
                &config.environment,
                &config.connection_option,
            );
            // A connection's handshake has no deadline of its own (a paused server accepts
            // connections and then says nothing).
            match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(Ok(connections)) => break connections,
                Ok(Err(e @ gcloud_gax::conn::Error::InvalidEmulatorHOST(_))) => {
                    return Err(PubSubError::Connect(e));
                }
                Ok(Err(e)) => tracing::warn!(output = %name,
                    "cannot connect to Pub/Sub; retrying: {}", crate::error::chain(&e)),
                Err(_) => tracing::warn!(output = %name,
                    "Pub/Sub does not answer; retrying"),
            }
            tokio::time::sleep(backoff.next_delay()).await;
        };
        let destination = PubSub {
            name,
            project: project.to_owned(),
            topic,
            layout: Layout {
                mods: options.mods,
                envelopes: true,
                transactions: options.transactions,
            },
            connections,
            reporter: Reporter::default(),
        };
        if destination.topic.is_fixed() {
            destination.check_topic().await?;
        }
        Ok(destination)
    }

    /// Fails for a topic that does not exist; waits while Pub/Sub cannot say.
    async fn check_topic(&self) -> Result<(), PubSubError> {
        let topic = self.topic_name(self.topic.as_str());
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let request = GetTopicRequest {
                topic: topic.clone(),
            };
            let request = create_request(format!("topic={topic}"), request);
            let mut client = self.client();
            let answer = tokio::time::timeout(CONNECT_TIMEOUT, client.get_topic(request)).await;
            match answer {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(s)) if s.code() == Code::NotFound => {
                    return Err(PubSubError::NoTopic(topic));
                }
                Ok(Err(s)) if s.code() == Code::InvalidArgument => {
                    return Err(PubSubError::Lookup { topic, source: s });
                }
                Ok(Err(s)) => tracing::warn!(output = %self.name, code = ?s.code(),
                    "cannot look up the topic; retrying: {}", s.message()),
                Err(_) => tracing::warn!(output = %self.name,
                    "Pub/Sub does not answer; retrying"),
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    fn client(&self) -> PublisherClient<gcloud_gax::conn::Channel> {
        PublisherClient::new(self.connections.conn())
    }

    fn topic_name(&self, topic: &str) -> String {
        format!("projects/{}/topics/{topic}", self.project)
    }

    /// Publishes `messages` to `topic` until Pub/Sub accepts or rejects them.
    async fn publish(&self, topic: String, messages: Vec<PubsubMessage>) -> Sent {
        let request = PublishRequest { topic, messages };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let call = create_request(format!("topic={}", request.topic), request.clone());
            match self.client().publish(call).await {
                Ok(_) => return Sent::Accepted,
                Err(s) if s.code() == Code::InvalidArgument => {
                    return Sent::Refused(format!("{:?}: {}", s.code(), s.message()));
                }
                // A topic per table: a table without one is refused, as Kafka refuses an
                // unknown topic; the other tables go on. (A fixed topic was there at
                // start-up: its loss is an operator's to fix, and is waited out.)
                Err(s) if s.code() == Code::NotFound && !self.topic.is_fixed() => {
                    return Sent::RefusedAll(format!(
                        "topic {} does not exist: {}",
                        request.topic,
                        s.message()
                    ));
                }
                Err(s) if is_misconfiguration(s.code()) => tracing::error!(output = %self.name,
                    topic = %request.topic, code = ?s.code(), "Pub/Sub refuses this publisher; \
                    retrying until it is fixed: {}", s.message()),
                Err(s) => tracing::warn!(output = %self.name, code = ?s.code(),
                    "Pub/Sub did not accept the messages; retrying: {}", s.message()),
            }
            self.reporter.retried();
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// Failures an operator fixes (a deleted topic, a revoked role): retried, loudly.
fn is_misconfiguration(code: Code) -> bool {
    matches!(
        code,
        Code::NotFound | Code::PermissionDenied | Code::Unauthenticated
    )
}

fn ordering_key(key: &str) -> String {
    let mut end = key.len().min(MAX_ORDERING_KEY);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    key[..end].to_owned()
}

#[async_trait::async_trait]
impl Destination for PubSub {
    fn name(&self) -> &str {
        &self.name
    }

    fn layout(&self) -> Layout {
        self.layout
    }

    fn report_to(&mut self, reporter: Reporter) {
        self.reporter = reporter;
    }

    async fn send(&self, batch: Batch) -> Result<(), DestinationError> {
        let messages: Vec<_> = batch.messages().collect();
        let table = |i: usize| {
            messages[i]
                .envelope
                .map(|e| e.attributes.table_name.as_str())
        };
        // With a topic per table, a request holds records of one table.
        let fixed = self.topic.is_fixed();
        let split_before = |i: usize| !fixed && table(i) != table(i - 1);
        let requests = requests(&batch, MAX_MESSAGES, MAX_REQUEST_BYTES, split_before);
        isolating_refusals(&self.name, &batch, requests, |range| {
            let topic = self.topic_name(&self.topic.render(table(range.start).unwrap_or("")));
            let request = messages[range]
                .iter()
                .map(|m| PubsubMessage {
                    data: m.payload.to_vec(),
                    attributes: m
                        .envelope
                        .map(|e| {
                            let pairs = e.attributes.pairs();
                            pairs
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    ordering_key: m
                        .envelope
                        .and_then(|e| e.key.as_deref())
                        .map(ordering_key)
                        .unwrap_or_default(),
                    ..PubsubMessage::default()
                })
                .collect();
            self.publish(topic, request)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_ordering_key_is_cut_at_a_character_boundary() {
        let key = "é".repeat(600);
        let cut = ordering_key(&key);
        assert_eq!(cut.len(), 1024);
        assert!(key.starts_with(&cut));
        assert_eq!(ordering_key("Singers/{}"), "Singers/{}");
    }
}
