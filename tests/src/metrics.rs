//! Reading screamer's metrics endpoint the way Prometheus does: one HTTP GET, the text
//! format parsed into samples.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One sample: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A whole scrape: samples by metric name (with its `_total`, `_bucket`... suffix).
#[derive(Debug, Default)]
pub struct Scrape {
    pub samples: BTreeMap<String, Vec<Sample>>,
    /// Names declared with `# TYPE`, without suffixes.
    pub families: Vec<String>,
}

impl Scrape {
    /// Parses the text exposition format.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut scrape = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default();
                scrape.families.push(name.to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .ok_or_else(|| anyhow::anyhow!("not a sample: {line}"))?;
            let value: f64 = value.parse()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, parse_labels(labels.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            scrape
                .samples
                .entry(name.to_owned())
                .or_default()
                .push(Sample { labels, value });
        }
        Ok(scrape)
    }

    /// The sum of every sample of `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .get(name)
            .map_or(0.0, |s| s.iter().map(|s| s.value).sum())
    }

    /// The sum of the samples of `name` whose labels include every pair of `labels`.
    pub fn sum_where(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples.get(name).map_or(0.0, |samples| {
            samples
                .iter()
                .filter(|s| {
                    labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|s| s.value)
                .sum()
        })
    }

    /// Whether a series of this name exists, or could: a declared family whose samples
    /// take this name (`_total` of a counter, `_bucket`/`_sum`/`_count` of a histogram,
    /// `_info` of an info metric).
    pub fn knows(&self, name: &str) -> bool {
        if self.samples.contains_key(name) || self.families.iter().any(|f| f == name) {
            return true;
        }
        ["_total", "_bucket", "_sum", "_count", "_info"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .any(|family| self.families.iter().any(|f| f == family))
    }
}

/// Every `screamer_...` metric name `text` mentions (alert rules, dashboard queries).
pub fn referenced_metrics(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("screamer_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !preceded_by_word {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    // Label values here never hold `",` (tables, outputs, plugins, classes).
    text.split("\",")
        .filter_map(|pair| pair.split_once("=\""))
        .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned()))
        .collect()
}

/// `GET path` on `addr`: the status code and body.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {response}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head}"))?;
    Ok((status, body.to_owned()))
}

/// Scrapes `/metrics` on `addr`.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Scrape> {
    let (status, body) = get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
    Scrape::parse(&body)
}

/// The status code of `GET path` on `addr`, or 0 when nothing answers.
pub async fn status(addr: SocketAddr, path: &str) -> u16 {
    get(addr, path).await.map_or(0, |(status, _)| status)
}
