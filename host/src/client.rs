//! How screamer reaches Spanner: the endpoint, which failures are worth retrying, and the one
//! retry policy of the host.
//!
//! Place in the flow: beneath both users of Spanner, the change stream [source](crate::source)
//! and the [Spanner partition store](crate::partition::SpannerStore); neither depends on the
//! other. Transient failures are recognised by their gRPC code (and, for the codes Spanner
//! overloads, by what the status carries), never by an error's display text elsewhere.
//! Both stages send the [`Priority`] they are given and tag their requests (`screamer-...`),
//! so an operator finds screamer's load in Spanner's query and lock statistics.

use std::time::Duration;

use gcloud_gax::conn::Environment;
use gcloud_gax::grpc::{Code, Status};
use gcloud_spanner::apiv1::conn_pool::SPANNER;
use gcloud_spanner::client::ClientConfig;

/// Why no connection could be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Google's application default credentials cannot be loaded.
    #[error("application default credentials: {0}")]
    Credentials(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// `SPANNER_EMULATOR_HOST` is set to nothing.
    #[error("SPANNER_EMULATOR_HOST is set but empty")]
    EmptyEmulatorHost,
    /// The channel to the endpoint cannot be opened.
    #[error("cannot connect to {endpoint}: {source}")]
    Transport {
        /// The address.
        endpoint: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where the clients connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Spanner emulator at `host:port`, without TLS or credentials.
    Emulator(String),
    /// Google Cloud, with Application Default Credentials.
    GoogleCloud,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Emulator(host) => write!(f, "the emulator at {host} (SPANNER_EMULATOR_HOST)"),
            Self::GoogleCloud => f.write_str(SPANNER),
        }
    }
}

impl Endpoint {
    /// The emulator named by `SPANNER_EMULATOR_HOST`, as in every Google client, or Google
    /// Cloud.
    pub fn from_env() -> Self {
        match std::env::var("SPANNER_EMULATOR_HOST") {
            Ok(host) if !host.is_empty() => Self::Emulator(host),
            _ => Self::GoogleCloud,
        }
    }

    /// The client crate's connection environment (fetches credentials for Google Cloud).
    pub async fn environment(&self) -> Result<Environment, ConnectError> {
        match self {
            Self::Emulator(host) => Ok(Environment::Emulator(host.clone())),
            Self::GoogleCloud => {
                let config = ClientConfig::default()
                    .with_auth()
                    .await
                    .map_err(|e| ConnectError::Credentials(Box::new(e)))?;
                match config.environment {
                    // The client's default follows SPANNER_EMULATOR_HOST even when empty.
                    Environment::Emulator(_) => Err(ConnectError::EmptyEmulatorHost),
                    env => Ok(env),
                }
            }
        }
    }
}

/// Spanner's request priority for screamer's change stream queries and metadata
/// operations (as the Go screamer's `--priority`); without one, Spanner's default (high).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Below other work.
    Low,
    /// Between low and high.
    Medium,
    /// Before other work (Spanner's default).
    High,
}

impl Priority {
    /// The request option Spanner's API takes.
    pub fn proto(self) -> gcloud_googleapis::spanner::v1::request_options::Priority {
        use gcloud_googleapis::spanner::v1::request_options::Priority as P;
        match self {
            Priority::Low => P::Low,
            Priority::Medium => P::Medium,
            Priority::High => P::High,
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "low" => Ok(Priority::Low),
            "medium" => Ok(Priority::Medium),
            "high" => Ok(Priority::High),
            _ => Err(format!(
                "{s:?} is not a priority: expected low, medium or high"
            )),
        }
    }
}

/// Transient gRPC failures: worth retrying the same operation (a partition query from its
/// watermark, a metadata transaction) after a backoff.
pub fn is_transient(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable
        | Code::Aborted
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Cancelled => true,
        // Spanner's NOT_FOUND also means a session it dropped; that one is retried on a new
        // session. The status carries nothing else to tell them apart.
        Code::NotFound => status.message().contains("Session not found"),
        Code::Internal => {
            let m = status.message();
            m.contains("RST_STREAM") || m.contains("unexpected EOS") || transport_failure(status)
        }
        // The client reports a broken connection mid-stream as UNKNOWN with the I/O error
        // as its source ("error reading a body from connection").
        Code::Unknown => transport_failure(status),
        _ => false,
    }
}

/// A failure of the connection rather than an answer from Spanner.
fn transport_failure(status: &Status) -> bool {
    let m = status.message();
    std::error::Error::source(status).is_some()
        || ["transport", "connection", "broken pipe", "reset"]
            .iter()
            .any(|w| m.contains(w))
}

/// Exponential backoff with jitter, the host's one retry policy: delays start at `initial`
/// and double up to `max`; each is drawn from the upper half of its step, so runners that
/// failed together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            step: initial,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        step.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    /// Back to the first step (after progress).
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_max_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let steps = [100, 200, 350, 350];
        for ms in steps {
            let d = b.next_delay();
            let step = Duration::from_millis(ms);
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside the step {step:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
