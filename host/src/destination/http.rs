//! HTTP(S) POST: each batch is one request whose body is the batch's NDJSON
//! (`Content-Type: application/x-ndjson`), exactly the lines stdout would get.
//!
//! Invariants: a batch is accepted only on a 2xx answer. Anything the endpoint may get over
//! (no connection, a timeout, 408, 425, 429, 5xx) is retried with backoff and jitter, for as
//! long as it takes: a destination that is down stops progress and the run goes on by
//! itself when it is back, and records of one batch never overtake each other. So are the
//! answers that say the destination is misconfigured rather than the records bad (401,
//! 403, 404, 405), logged as errors: an expired token must not turn every record into a dead
//! letter. Any other 4xx is a refusal: the batch is split in halves, sent again in order,
//! down to single records, so that only the records the endpoint refuses alone are refused.
//! At most [`MAX_REASON`] bytes of an answer's body are read, whatever the endpoint sends.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::refusals::{Sent, isolating_refusals};
use super::{Batch, Destination, DestinationError, Reporter};
use crate::client::Backoff;

/// Environment variable with extra request headers, one `Name: value` per line (for
/// `Authorization`, say, which must not sit in a URI that is logged).
pub const HTTP_HEADERS_ENV: &str = "SCREAMER_HTTP_HEADERS";

/// Bytes of a refusal's body kept as its reason (the rest is not read).
const MAX_REASON: usize = 1024;

/// How long one request may take before it is abandoned and retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// POSTs batches to one URL.
pub struct Http {
    url: reqwest::Url,
    client: reqwest::Client,
    headers: HeaderMap,
    reporter: Reporter,
}

/// Why an HTTP destination cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL cannot be parsed.
    #[error("{url:?}: not a URL: {source}")]
    Url {
        /// The URL given.
        url: String,
        /// Why.
        #[source]
        source: url::ParseError,
    },
    /// A header line has no name or value.
    #[error("{HTTP_HEADERS_ENV}: {line:?}: expected `Name: value`")]
    Header {
        /// The line.
        line: String,
    },
    /// reqwest refused the client's settings.
    #[error("cannot start an HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl Http {
    /// POSTs to `url`, with the headers of [`HTTP_HEADERS_ENV`].
    pub fn new(url: &str) -> Result<Self, HttpError> {
        let headers = std::env::var(HTTP_HEADERS_ENV).unwrap_or_default();
        Self::with_headers(url, &headers)
    }

    /// POSTs to `url` with `headers`: `Name: value` lines.
    pub fn with_headers(url: &str, headers: &str) -> Result<Self, HttpError> {
        let url = reqwest::Url::parse(url).map_err(|source| HttpError::Url {
            url: url.to_owned(),
            source,
        })?;
        let mut map = HeaderMap::new();
        for line in headers.lines().filter(|l| !l.trim().is_empty()) {
            let bad = || HttpError::Header {
                line: line.to_owned(),
            };
            let (name, value) = line.split_once(':').ok_or_else(bad)?;
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
            let mut value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
            value.set_sensitive(true);
            map.append(name, value);
        }
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(HttpError::Client)?;
        Ok(Http {
            url,
            client,
            headers: map,
            reporter: Reporter::default(),
        })
    }

    /// Sends `body` until the endpoint accepts or refuses it.
    async fn post(&self, body: bytes::Bytes) -> Sent {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let sent = self
                .client
                .post(self.url.clone())
                .headers(self.headers.clone())
                .header(CONTENT_TYPE, "application/x-ndjson")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Sent::Accepted,
                Ok(r) if is_refusal(r.status()) => {
                    let status = r.status();
                    let text = reason(r).await;
                    return Sent::Refused(format!("HTTP {status}: {text}").trim_end().to_owned());
                }
                Ok(r) if is_misconfiguration(r.status()) => tracing::error!(output = %self.url,
                    status = %r.status(), "destination refuses this client; retrying until it is fixed"),
                Ok(r) => tracing::warn!(output = %self.url, status = %r.status(),
                    "destination did not accept the batch; retrying"),
                Err(e) => tracing::warn!(output = %self.url,
                    "destination unreachable; retrying: {}", crate::error::chain(&e)),
            }
            self.reporter.retried();
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// A 4xx the endpoint will answer again for the same body.
fn is_refusal(status: reqwest::StatusCode) -> bool {
    status.is_client_error()
        && !is_misconfiguration(status)
        && ![408, 425, 429].contains(&status.as_u16())
}

/// A 4xx about the client or the URL, not the records: fixing it needs the operator.
fn is_misconfiguration(status: reqwest::StatusCode) -> bool {
    [401, 403, 404, 405].contains(&status.as_u16())
}

/// The first line of at most [`MAX_REASON`] bytes of the answer's body.
async fn reason(mut answer: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_REASON {
        match answer.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk[..chunk.len().min(MAX_REASON - body.len())])
            }
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

#[async_trait::async_trait]
impl Destination for Http {
    fn name(&self) -> &str {
        self.url.as_str()
    }

    fn report_to(&mut self, reporter: Reporter) {
        self.reporter = reporter;
    }

    async fn send(&self, batch: Batch) -> Result<(), DestinationError> {
        if batch.is_empty() {
            return Ok(());
        }
        isolating_refusals(
            self.url.as_str(),
            &batch,
            std::iter::once(0..batch.len()),
            |range| {
                let body = if range.len() == batch.len() {
                    bytes::Bytes::copy_from_slice(batch.as_ndjson())
                } else {
                    bytes::Bytes::from(batch.slice(range).into_ndjson())
                };
                self.post(body)
            },
        )
        .await
    }
}
