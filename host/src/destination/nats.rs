//! NATS JetStream: one message per record (or per mod with `mods=split`) on the URI's
//! subject, its payload the stdout line without the newline, its headers the record's
//! [`Attributes`](super::Attributes) by the same names, plus `key` (the row's key) with
//! `mods=split`.
//!
//! Invariants: a batch is accepted once JetStream has acknowledged every message of it
//! (stored in the stream that takes the subject). Messages are published in the batch's
//! order on one connection, up to [`WINDOW`] awaiting their acknowledgements. Each carries a
//! `Nats-Msg-Id` derived from its content (and its place among identical messages of the
//! batch), so a message sent again after a lost acknowledgement is dropped by the stream's
//! duplicate window instead of stored twice, out of order. A message that is not
//! acknowledged (the server is down, slow, or restarting) is sent again, with the rest of
//! its window, with backoff and jitter for as long as it takes; a message larger than the
//! server's limit is refused alone.
//!
//! The URI's query carries the client's credentials (`user` and `password`, `token`, an
//! NKey seed file `nkey`, or a `.creds` file `creds` with a user JWT and its seed) and TLS
//! (`tls=true`, `tls_ca`, `tls_cert` with `tls_key`). At start-up a server that cannot
//! be reached is waited for; one that refuses the credentials or a certificate (either
//! way) is an error, since no retry mends it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage};
use sha2::{Digest, Sha256};

use super::refusals::{Sent, isolating_refusals, requests};
use super::uri::{MessageOptions, Template};
use super::{Batch, Destination, DestinationError, Layout, Message, Reporter};
use crate::client::Backoff;

/// Messages in flight (published, acknowledgement awaited) at once.
const WINDOW: usize = 256;
/// How long an acknowledgement may take before the message is sent again.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The client's options from the URI's query: one way to authenticate (`user` and
/// `password`, `token`, `nkey` or `creds`, see [`Credentials`]); `tls=true` to require
/// TLS, `tls_ca` (a PEM file of root certificates, which implies TLS) and `tls_cert` with
/// `tls_key` (a client certificate).
fn connect_options(
    query: &std::collections::BTreeMap<String, String>,
) -> Result<async_nats::ConnectOptions, NatsError> {
    let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(10));
    let mut options = Credentials::from_query(query)?.apply(options)?;
    let get = |key: &str| query.get(key).cloned();
    match get("tls").as_deref() {
        Some("true") => options = options.require_tls(true),
        Some("false") | None => {}
        Some(other) => {
            return Err(NatsError::Options(format!(
                "option tls={other}: expected true or false"
            )));
        }
    }
    let readable = |key: &str| -> Result<Option<std::path::PathBuf>, NatsError> {
        let Some(path) = get(key) else {
            return Ok(None);
        };
        std::fs::metadata(&path)
            .map_err(|e| NatsError::Options(format!("option {key}={path}: {e}")))?;
        Ok(Some(path.into()))
    };
    if let Some(ca) = readable("tls_ca")? {
        options = options.add_root_certificates(ca).require_tls(true);
    }
    match (readable("tls_cert")?, readable("tls_key")?) {
        (Some(cert), Some(key)) => options = options.add_client_certificate(cert, key),
        (None, None) => {}
        _ => {
            return Err(NatsError::Options(
                "options tls_cert and tls_key go together".to_owned(),
            ));
        }
    }
    Ok(options)
}

/// How the client authenticates, as the URI's query says: one kind at most.
enum Credentials {
    Anonymous,
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    /// A file holding an NKey seed (`SU…`, as `nsc` or `nk -gen user` write it).
    NKey {
        path: String,
    },
    /// A `.creds` file: a user JWT and its seed, as `nsc` and Synadia Cloud issue.
    Creds {
        path: String,
    },
}

impl Credentials {
    fn from_query(query: &std::collections::BTreeMap<String, String>) -> Result<Self, NatsError> {
        let get = |key: &str| query.get(key).cloned();
        let given = [
            ["user", "password"].as_slice(),
            &["token"],
            &["nkey"],
            &["creds"],
        ]
        .iter()
        .filter(|keys| keys.iter().any(|k| query.contains_key(*k)))
        .count();
        if given > 1 {
            return Err(NatsError::Options(
                "options user/password, token, nkey and creds are alternatives: give one".into(),
            ));
        }
        Ok(match (get("user"), get("password")) {
            (Some(user), Some(password)) => Credentials::UserPassword { user, password },
            (Some(_), None) | (None, Some(_)) => {
                return Err(NatsError::Options(
                    "options user and password go together".into(),
                ));
            }
            (None, None) => match (get("token"), get("nkey"), get("creds")) {
                (Some(token), ..) => Credentials::Token(token),
                (_, Some(path), _) => Credentials::NKey { path },
                (.., Some(path)) => Credentials::Creds { path },
                _ => Credentials::Anonymous,
            },
        })
    }

    /// `options` with these credentials. Files are read, and seeds checked, here: a bad
    /// one is a start-up error naming the file, not a refusal by the server.
    fn apply(
        self,
        options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, NatsError> {
        let read = |key: &str, path: &str| {
            std::fs::read_to_string(path)
                .map_err(|e| NatsError::Options(format!("option {key}={path}: {e}")))
        };
        Ok(match self {
            Credentials::Anonymous => options,
            Credentials::UserPassword { user, password } => {
                options.user_and_password(user, password)
            }
            Credentials::Token(token) => options.token(token),
            Credentials::NKey { path } => {
                let seed = read("nkey", &path)?.trim().to_owned();
                nkeys::KeyPair::from_seed(&seed).map_err(|e| {
                    NatsError::Options(format!("option nkey={path}: not an NKey seed ({e})"))
                })?;
                options.nkey(seed)
            }
            Credentials::Creds { path } => {
                options.credentials(&read("creds", &path)?).map_err(|e| {
                    NatsError::Options(format!(
                        "option creds={path}: not a NATS credentials file ({e})"
                    ))
                })?
            }
        })
    }
}

/// Connects, waiting (with backoff, logged) while the server cannot be reached; a server
/// that refuses this client (credentials, TLS) is an error at once.
async fn connect_waiting(
    server: &str,
    name: &str,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, NatsError> {
    use async_nats::ConnectErrorKind as Kind;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match options.clone().connect(server).await {
            Ok(client) => return Ok(client),
            Err(e)
                if matches!(
                    e.kind(),
                    Kind::Authentication | Kind::AuthorizationViolation | Kind::Tls
                ) || super::is_tls_refusal(&e) =>
            {
                // The kind says it all for credentials; TLS errors carry the detail.
                let reason = match e.kind() {
                    Kind::Authentication | Kind::AuthorizationViolation => e.kind().to_string(),
                    _ => e.to_string(),
                };
                return Err(NatsError::Refused {
                    server: server.to_owned(),
                    reason,
                    source: e,
                });
            }
            Err(e) if e.kind() == Kind::ServerParse => {
                return Err(NatsError::Connect {
                    server: server.to_owned(),
                    source: e,
                });
            }
            Err(e) => tracing::warn!(output = %name, "cannot connect to NATS; retrying: {e}"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Publishes to the JetStream stream that takes one subject, or one per table.
pub struct Nats {
    name: String,
    subject: Template,
    layout: Layout,
    jetstream: jetstream::Context,
    reporter: Reporter,
}

/// Why a NATS destination cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The server cannot be reached.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// The server's URL.
        server: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The server refused this client: wrong credentials, or TLS it cannot do.
    #[error("{server} refused the connection: {reason}")]
    Refused {
        /// The server's URL.
        server: String,
        /// What it said.
        reason: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// Options that do not go together, or a file they name that cannot be read.
    #[error("{0}")]
    Options(String),
    /// No JetStream stream is bound to the subject.
    #[error("no JetStream stream takes subject {0:?}")]
    NoStream(String),
    /// Looking up the subject's stream failed.
    #[error("subject {subject:?}: {source}")]
    Subject {
        /// The subject.
        subject: String,
        /// Why.
        #[source]
        source: async_nats::jetstream::context::GetStreamByNameError,
    },
}

impl Nats {
    /// Connects to `server` and, when the subject does not depend on the record, checks that
    /// a stream takes it. While the server cannot be reached this waits, retrying.
    pub async fn open(
        server: &str,
        subject: Template,
        options: &MessageOptions,
    ) -> Result<Self, NatsError> {
        let name = format!("nats://{server}/{subject}");
        let connect = connect_options(&options.properties)?;
        let client = connect_waiting(server, &name, connect).await?;
        let mut jetstream = jetstream::new(client);
        jetstream.set_timeout(ACK_TIMEOUT);
        let destination = Nats {
            name,
            subject,
            layout: Layout {
                mods: options.mods,
                envelopes: true,
                transactions: options.transactions,
            },
            jetstream,
            reporter: Reporter::default(),
        };
        if destination.subject.is_fixed() {
            destination.check_stream().await?;
        }
        Ok(destination)
    }

    async fn check_stream(&self) -> Result<(), NatsError> {
        let subject = self.subject.as_str();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match self.jetstream.stream_by_subject(subject).await {
                Ok(_) => return Ok(()),
                Err(e) => match e.kind() {
                    GetStreamByNameErrorKind::NotFound => {
                        return Err(NatsError::NoStream(subject.to_owned()));
                    }
                    GetStreamByNameErrorKind::InvalidSubject => {
                        return Err(NatsError::Subject {
                            subject: subject.to_owned(),
                            source: e,
                        });
                    }
                    _ => tracing::warn!(output = %self.name,
                        "cannot look up the stream; retrying: {e}"),
                },
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Publishes `messages` (with their ids) until JetStream has stored them all, or
    /// refuses one of them for good.
    async fn publish(&self, messages: &[Outgoing<'_>]) -> Sent {
        // A plugin writes the table name and other attributes: what the protocol cannot
        // carry is refused before anything of the range is sent.
        if let Some(why) = messages.iter().find_map(unsendable) {
            return Sent::Refused(why);
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut next = 0;
        while next < messages.len() {
            match self.publish_once(&messages[next..]).await {
                Ok(()) => return Sent::Accepted,
                Err(Failure::Refused(reason)) => return Sent::Refused(reason),
                Err(Failure::Retry { stored, reason }) => {
                    next += stored;
                    tracing::warn!(output = %self.name,
                        "JetStream did not acknowledge the messages; retrying: {reason}");
                    self.reporter.retried();
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
        Sent::Accepted
    }

    /// One pass over `messages`: publishes them in order and awaits their acknowledgements.
    async fn publish_once(&self, messages: &[Outgoing<'_>]) -> Result<(), Failure> {
        let mut acks = std::collections::VecDeque::with_capacity(WINDOW);
        let mut stored = 0;
        for outgoing in messages {
            if acks.len() == WINDOW {
                await_ack(acks.pop_front().expect("a full window"), stored).await?;
                stored += 1;
            }
            let publish = self.message(&outgoing.message, &outgoing.id);
            let ack = self
                .jetstream
                .send_publish(outgoing.subject.to_string(), publish)
                .await
                .map_err(|e| failure(&e, stored))?;
            acks.push_back(ack);
        }
        for ack in acks {
            await_ack(ack, stored).await?;
            stored += 1;
        }
        Ok(())
    }

    fn subject_of<'a>(&'a self, message: &Message<'_>) -> Cow<'a, str> {
        let table = message
            .envelope
            .map_or("", |e| e.attributes.table_name.as_str());
        self.subject.render(table)
    }

    fn message(&self, message: &Message<'_>, id: &str) -> PublishMessage {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(envelope) = message.envelope {
            for (name, value) in envelope.attributes.pairs() {
                headers.insert(name, value);
            }
            if let Some(key) = &envelope.key {
                headers.insert("key", key.as_str());
            }
        }
        PublishMessage::build()
            .payload(bytes::Bytes::copy_from_slice(message.payload))
            .headers(headers)
            .message_id(id)
    }
}

/// One message ready to publish.
struct Outgoing<'a> {
    message: Message<'a>,
    subject: Cow<'a, str>,
    /// Its `Nats-Msg-Id`.
    id: String,
}

/// Why NATS cannot carry `outgoing`: a subject that is empty, has empty tokens, white
/// space or wildcards (from a table name in a template), or a header value with a line
/// break.
fn unsendable(outgoing: &Outgoing<'_>) -> Option<String> {
    let subject = &outgoing.subject;
    let bad_token = |t: &str| t.is_empty() || t == "*" || t == ">";
    if subject.split('.').any(bad_token) || subject.contains(char::is_whitespace) {
        return Some(format!("not a NATS subject to publish to: {subject:?}"));
    }
    let envelope = outgoing.message.envelope?;
    let values = envelope.attributes.pairs().map(|(_, v)| v);
    let mut values = values.into_iter().chain(envelope.key.as_deref());
    values
        .find(|v| v.contains(['\r', '\n']))
        .map(|v| format!("a NATS header cannot hold a line break: {v:?}"))
}

/// Why a pass did not get every acknowledgement.
enum Failure {
    /// `stored` messages from the start of the pass were acknowledged; send the rest again.
    Retry {
        stored: usize,
        reason: String,
    },
    Refused(String),
}

async fn await_ack(
    ack: jetstream::context::PublishAckFuture,
    stored: usize,
) -> Result<(), Failure> {
    ack.await.map(drop).map_err(|e| failure(&e, stored))
}

fn failure(e: &jetstream::context::PublishError, stored: usize) -> Failure {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => Failure::Refused(e.to_string()),
        _ => Failure::Retry {
            stored,
            reason: e.to_string(),
        },
    }
}

/// `Nats-Msg-Id` of each message (`subjects[i]` is message i's): a digest of its subject
/// and payload (a stream's duplicate window spans its subjects), and for the second and
/// later of identical messages in one batch (a plugin's copies) their ordinal, so that they
/// are not taken for duplicates.
fn message_ids(batch: &Batch, subjects: &[Cow<'_, str>]) -> Vec<String> {
    let mut seen: HashMap<[u8; 32], usize> = HashMap::new();
    batch
        .payloads()
        .zip(subjects)
        .map(|(payload, subject)| {
            let digest: [u8; 32] = Sha256::new()
                .chain_update(subject.as_bytes())
                .chain_update([0])
                .chain_update(payload)
                .finalize()
                .into();
            let n = seen.entry(digest).or_default();
            *n += 1;
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            if *n == 1 { hex } else { format!("{hex}-{n}") }
        })
        .collect()
}

#[async_trait::async_trait]
impl Destination for Nats {
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
        let subjects: Vec<Cow<'_, str>> = batch.messages().map(|m| self.subject_of(&m)).collect();
        let ids = message_ids(&batch, &subjects);
        let messages: Vec<Outgoing<'_>> = batch
            .messages()
            .zip(subjects)
            .zip(ids)
            .map(|((message, subject), id)| Outgoing {
                message,
                subject,
                id,
            })
            .collect();
        let requests = requests(&batch, usize::MAX, usize::MAX, |_| false);
        isolating_refusals(&self.name, &batch, requests, |range| {
            self.publish(&messages[range])
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::{Attributes, Envelope};

    fn credentials(query: &[(&str, &str)]) -> Result<Credentials, String> {
        let query = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Credentials::from_query(&query).map_err(|e| e.to_string())
    }

    #[test]
    fn one_kind_of_credentials_at_most() {
        assert!(matches!(credentials(&[]), Ok(Credentials::Anonymous)));
        assert!(matches!(
            credentials(&[("user", "u"), ("password", "p")]),
            Ok(Credentials::UserPassword { .. })
        ));
        assert!(matches!(
            credentials(&[("token", "t")]),
            Ok(Credentials::Token(_))
        ));
        assert!(matches!(
            credentials(&[("nkey", "f")]),
            Ok(Credentials::NKey { .. })
        ));
        assert!(matches!(
            credentials(&[("creds", "f")]),
            Ok(Credentials::Creds { .. })
        ));
        for two in [
            [("user", "u"), ("token", "t")],
            [("password", "p"), ("creds", "f")],
            [("nkey", "f"), ("creds", "f")],
        ] {
            let err = credentials(&two).err().unwrap();
            assert!(
                err.ends_with("are alternatives: give one"),
                "{two:?}: {err}"
            );
        }
        let err = credentials(&[("password", "p")]).err().unwrap();
        assert!(
            err.ends_with("options user and password go together"),
            "{err}"
        );
    }

    #[test]
    fn subjects_and_headers_nats_cannot_carry_are_unsendable() {
        let attributes = |table: &str| Attributes {
            table_name: table.into(),
            mod_type: "INSERT",
            commit_timestamp: "2026-01-01T00:00:00Z".into(),
            partition_token: "p".into(),
            server_transaction_id: "t".into(),
            record_sequence: "1".into(),
        };
        let check = |subject: &str, table: &str| {
            let envelope = Envelope {
                attributes: attributes(table),
                key: None,
            };
            let message = Message {
                payload: b"{}",
                envelope: Some(&envelope),
            };
            unsendable(&Outgoing {
                message,
                subject: Cow::Borrowed(subject),
                id: String::new(),
            })
        };
        assert_eq!(check("cdc.Users", "Users"), None);
        for subject in ["cdc.>", "cdc.*", "cdc..x", "cdc.a b", ""] {
            assert!(check(subject, "Users").is_some(), "{subject:?}");
        }
        let forged = check("cdc.x", "x\r\nNats-Msg-Id: forged").unwrap();
        assert!(forged.contains("line break"), "{forged}");
    }

    #[test]
    fn identical_messages_of_a_batch_get_distinct_ids_and_a_batch_sent_again_the_same_ids() {
        let mut batch = Batch::default();
        for line in ["a", "b", "a"] {
            batch.push(&line).unwrap();
        }
        let subjects = vec![Cow::Borrowed("s"); 3];
        let ids = message_ids(&batch, &subjects);
        assert_eq!(ids[0].len(), 32);
        assert_ne!(ids[0], ids[1]);
        assert_eq!(ids[2], format!("{}-2", ids[0]));
        assert_eq!(
            message_ids(&batch, &subjects),
            ids,
            "the same batch again: the same ids"
        );
        let elsewhere = vec![Cow::Borrowed("t"); 3];
        assert_ne!(
            message_ids(&batch, &elsewhere)[0],
            ids[0],
            "another subject"
        );
    }
}
