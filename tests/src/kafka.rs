//! A Kafka-protocol broker (`tansu`, in memory), its topics, and a consumer that reads
//! back what screamer produced.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::broker::{Broker, Delivered};
use crate::emulator::free_port;

/// A running `tansu broker` with in-memory storage; killed on drop.
pub struct KafkaBroker {
    host: String,
    child: Child,
}

impl KafkaBroker {
    /// Starts a broker on a free port and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        crate::start_with_retries("tansu", async || Self::start_once().await).await
    }

    async fn start_once() -> anyhow::Result<Self> {
        let port = free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let mut child = Command::new(tansu()?)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tansu")?;
        let host = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&host).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("tansu on {host} exited at start: {status}");
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                bail!("tansu did not listen on {host} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(KafkaBroker { host, child })
    }

    /// `host:port`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The URI of `topic` for `--output` and friends, with `query` (`""` for none).
    pub fn uri(&self, topic: &str, query: &str) -> String {
        format!("kafka://{}/{topic}{query}", self.host)
    }

    /// Creates `topic` with `partitions` partitions.
    pub async fn topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.host)
            .create()?;
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let results = admin.create_topics([&new], &AdminOptions::new()).await?;
        for result in results {
            result.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
        }
        Ok(())
    }

    /// A consumer of every partition of `topic` from the start.
    pub fn consumer(&self, topic: &str, partitions: i32) -> anyhow::Result<BaseConsumer> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.host)
            .set("group.id", "screamer-tests")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        Ok(consumer)
    }

    /// Sends `signal` to the broker (`SIGSTOP` pauses it, `SIGCONT` lets it go on).
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child, which we have not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        anyhow::ensure!(rc == 0, "kill({}, {signal}) failed", self.child.id());
        Ok(())
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The messages `consumer` gets within `wait` (at least one, unless none comes), then
/// whatever follows at once. Headers as attributes, the message key as the key.
pub fn poll(consumer: &BaseConsumer, wait: Duration) -> anyhow::Result<Vec<Delivered>> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + wait;
    let mut quiet_until = deadline;
    while std::time::Instant::now() < quiet_until.min(deadline) {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let mut attributes = HashMap::new();
        if let Some(headers) = message.headers() {
            for h in headers.iter() {
                let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                attributes.insert(h.key.to_owned(), value.unwrap_or_default());
            }
        }
        got.push(Delivered {
            subject: format!("{}/{}", message.topic(), message.partition()),
            data: String::from_utf8(message.payload().unwrap_or_default().to_vec())?,
            attributes,
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
        });
        quiet_until = std::time::Instant::now() + Duration::from_millis(300);
    }
    Ok(got)
}

/// One topic of a broker, for the broker scenario.
pub struct Topic<'a> {
    pub broker: &'a KafkaBroker,
    pub name: &'a str,
    pub consumer: BaseConsumer,
}

impl Broker for Topic<'_> {
    fn output(&self) -> String {
        self.broker.uri(self.name, "?mods=split")
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        self.broker.signal(signal)
    }

    async fn drain(&mut self, wait: Duration) -> anyhow::Result<Vec<Delivered>> {
        tokio::task::block_in_place(|| poll(&self.consumer, wait))
    }
}

/// `TANSU_BIN`, `tansu` on `PATH`, or `~/.cargo/bin/tansu` (where `scripts/test.sh`
/// installs it).
fn tansu() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return Ok(bin.into());
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/tansu"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .context("tansu is not installed: scripts/test.sh installs it (cargo install tansu)")
}
