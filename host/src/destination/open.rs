//! Opening what a [`DestinationUri`] names: the one place that turns a URI into a
//! [`Destination`], for the CLI and library users alike.
//!
//! Invariant: whatever a user can fix (a file that cannot be opened, refused credentials, a
//! topic or stream that does not exist, a scheme this build was compiled without) is an
//! [`OpenError`], whose display names the destination and what went wrong.

use super::{Destination, DestinationUri, Ndjson};

/// Why a destination could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{uri}: {reason}")]
pub struct OpenError {
    /// The destination, as its URI displays (no credentials, no query).
    pub uri: String,
    /// What went wrong, on one line.
    pub reason: String,
}

impl DestinationUri {
    /// Opens the destination: files are created or appended to, message systems and
    /// databases connected to and checked.
    pub async fn open(&self) -> Result<Box<dyn Destination>, OpenError> {
        let failed = |reason: String| OpenError {
            uri: self.to_string(),
            reason,
        };
        let not_built = |feature: &str| {
            failed(format!(
                "this build of screamer has no {feature} destination (cargo feature `{feature}`)"
            ))
        };
        Ok(match self {
            DestinationUri::Stdout => Box::new(Ndjson::stdout()),
            DestinationUri::File(path) => Box::new(
                Ndjson::append_file(path).map_err(|e| failed(format!("cannot open: {e}")))?,
            ),
            #[cfg(feature = "http")]
            DestinationUri::Http(url) => {
                Box::new(super::Http::new(url).map_err(|e| failed(e.to_string()))?)
            }
            #[cfg(feature = "pubsub")]
            DestinationUri::PubSub {
                project,
                topic,
                options,
            } => Box::new(
                super::PubSub::open(project, topic.clone(), options)
                    .await
                    .map_err(|e| failed(e.to_string()))?,
            ),
            #[cfg(feature = "kafka")]
            DestinationUri::Kafka {
                brokers,
                topic,
                options,
            } => Box::new(
                super::Kafka::open(brokers, topic.clone(), options)
                    .await
                    .map_err(|e| failed(e.to_string()))?,
            ),
            #[cfg(feature = "nats")]
            DestinationUri::Nats {
                server,
                subject,
                options,
            } => Box::new(
                super::Nats::open(server, subject.clone(), options)
                    .await
                    .map_err(|e| failed(e.to_string()))?,
            ),
            #[cfg(feature = "postgres")]
            DestinationUri::Postgres(uri) => Box::new(
                super::Postgres::open(uri)
                    .await
                    .map_err(|e| failed(e.to_string()))?,
            ),
            #[allow(unreachable_patterns)]
            DestinationUri::Http(_) => return Err(not_built("http")),
            #[allow(unreachable_patterns)]
            DestinationUri::PubSub { .. } => return Err(not_built("pubsub")),
            #[allow(unreachable_patterns)]
            DestinationUri::Kafka { .. } => return Err(not_built("kafka")),
            #[allow(unreachable_patterns)]
            DestinationUri::Nats { .. } => return Err(not_built("nats")),
            #[allow(unreachable_patterns)]
            DestinationUri::Postgres(_) => return Err(not_built("postgres")),
        })
    }
}
