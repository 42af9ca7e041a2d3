//! A NATS server with JetStream (its own process and storage directory), its streams, and
//! a consumer that reads back what screamer published.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;

use crate::broker::{Broker, Delivered};
use crate::emulator::free_port;

/// A running `nats-server -js`; killed on drop, its storage removed.
pub struct NatsServer {
    host: String,
    child: Child,
    dir: PathBuf,
    jetstream: jetstream::Context,
}

/// How a server lets clients in: `nats-server` flags, and the harness's own client's options.
#[derive(Clone, Default)]
pub struct Access {
    pub server_args: Vec<String>,
    pub client: async_nats::ConnectOptions,
}

impl NatsServer {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Access::default()).await
    }

    /// Starts a server that lets clients in as `access` says (credentials, TLS).
    pub async fn start_with(access: Access) -> anyhow::Result<Self> {
        crate::start_with_retries("nats-server", async || Self::start_once(&access).await).await
    }

    async fn start_once(access: &Access) -> anyhow::Result<Self> {
        let port = free_port()?;
        let dir = crate::plugins::scratch_dir("nats");
        let mut child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&dir)
            .args(&access.server_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (Debian package nats-server)")?;
        let host = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&host).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("nats-server on {host} exited at start: {status}");
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                bail!("nats-server did not listen on {host} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client = access.client.clone().connect(&host).await?;
        Ok(NatsServer {
            host,
            child,
            dir,
            jetstream: jetstream::new(client),
        })
    }

    /// `host:port`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The URI of `subject` for `--output` and friends, with `query` (`""` for none).
    pub fn uri(&self, subject: &str, query: &str) -> String {
        format!("nats://{}/{subject}{query}", self.host)
    }

    /// Creates stream `name` taking `subjects` (`cdc.>`, say).
    pub async fn stream(&self, name: &str, subjects: &[&str]) -> anyhow::Result<()> {
        self.jetstream
            .create_stream(stream::Config {
                name: name.to_owned(),
                subjects: subjects.iter().map(|s| s.to_string()).collect(),
                ..stream::Config::default()
            })
            .await
            .with_context(|| format!("creating stream {name}"))?;
        Ok(())
    }

    /// Every message of stream `name` from its start, in stream order (headers as
    /// attributes, but the `key` header as the key), once at least `count` are there or
    /// `timeout` passed.
    pub async fn read(
        &self,
        name: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Delivered>> {
        let stream = self.jetstream.get_stream(name).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let messages = stream.get_info().await?.state.messages as usize;
            if messages >= count || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig::default())
            .await?;
        let total = stream.get_info().await?.state.messages as usize;
        let mut got = Vec::with_capacity(total);
        let mut messages = consumer.messages().await?;
        while got.len() < total {
            let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .context("reading the stream")?
                .context("the stream ended")??;
            let mut attributes: std::collections::HashMap<String, String> = message
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .filter_map(|(k, v)| Some((k.to_string(), v.first()?.to_string())))
                .collect();
            got.push(Delivered {
                subject: message.subject.to_string(),
                data: String::from_utf8(message.payload.to_vec())?,
                key: attributes.remove("key").unwrap_or_default(),
                attributes,
            });
        }
        Ok(got)
    }

    /// Sends `signal` to the server (`SIGSTOP` pauses it, `SIGCONT` lets it go on).
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child, which we have not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        anyhow::ensure!(rc == 0, "kill({}, {signal}) failed", self.child.id());
        Ok(())
    }
}

/// One stream of a server, for the broker scenario: screamer publishes to `subject`.
pub struct Stream<'a> {
    pub server: &'a NatsServer,
    pub name: &'a str,
    pub subject: &'a str,
    /// Messages already drained.
    pub seen: usize,
}

impl Broker for Stream<'_> {
    fn output(&self) -> String {
        self.server.uri(self.subject, "?mods=split")
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        self.server.signal(signal)
    }

    async fn drain(&mut self, wait: Duration) -> anyhow::Result<Vec<Delivered>> {
        let all = self.server.read(self.name, self.seen + 1, wait).await?;
        let new = all[self.seen.min(all.len())..].to_vec();
        self.seen = all.len();
        Ok(new)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
