//! The Pub/Sub emulator process, its topics and subscriptions, and a consumer that reads
//! back what screamer published.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use gcloud_gax::conn::{ConnectionOptions, Environment};
use gcloud_googleapis::pubsub::v1::subscriber_client::SubscriberClient;
use gcloud_googleapis::pubsub::v1::{AcknowledgeRequest, PullRequest};
use gcloud_pubsub::apiv1::conn_pool::ConnectionManager;
use gcloud_pubsub::client::{Client, ClientConfig};
use gcloud_pubsub::subscription::SubscriptionConfig;

use crate::broker::{Broker, Delivered};
use crate::emulator::free_port;

/// The project the tests publish to.
pub const PROJECT: &str = "test-project";

/// A running Pub/Sub emulator; killed (whole process group: a script and its JVM) on drop.
pub struct PubSubEmulator {
    host: String,
    child: Child,
    client: Client,
    /// For pulls that return at once (the high-level client's wait for messages).
    pulls: ConnectionManager,
}

impl PubSubEmulator {
    /// Starts an emulator on a free port and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        crate::start_with_retries("the Pub/Sub emulator", async || Self::start_once().await).await
    }

    async fn start_once() -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut cmd = Command::new(emulator_script()?);
        cmd.args(["--host=127.0.0.1", &format!("--port={port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().context("starting cloud-pubsub-emulator")?;
        let host = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&host).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("the Pub/Sub emulator on {host} exited at start: {status}");
            }
            if std::time::Instant::now() > deadline {
                kill_group(&child);
                bail!("the Pub/Sub emulator did not listen on {host} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let config = ClientConfig {
            project_id: Some(PROJECT.into()),
            environment: Environment::Emulator(host.clone()),
            ..ClientConfig::default()
        };
        let client = Client::new(config).await?;
        let environment = Environment::Emulator(host.clone());
        let options = ConnectionOptions::default();
        let pulls = ConnectionManager::new(1, "", &environment, &options).await?;
        Ok(PubSubEmulator {
            host,
            child,
            client,
            pulls,
        })
    }

    /// `host:port`: the value for `PUBSUB_EMULATOR_HOST`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Creates topic `id` with one subscription of the same name that delivers in order of
    /// ordering key.
    pub async fn topic(&self, id: &str) -> anyhow::Result<()> {
        // The emulator may accept connections a moment before it serves requests.
        crate::eventually(
            Duration::from_secs(20),
            "the emulator's topics",
            async || self.client.create_topic(id, None, None).await.ok(),
        )
        .await?;
        let config = SubscriptionConfig {
            enable_message_ordering: true,
            ack_deadline_seconds: 60,
            ..SubscriptionConfig::default()
        };
        self.client
            .create_subscription(id, id, config, None)
            .await
            .with_context(|| format!("creating subscription {id}"))?;
        Ok(())
    }

    /// The URI of topic `id` for `--output` and friends, with `query` (`""` for none).
    pub fn uri(&self, id: &str, query: &str) -> String {
        format!("pubsub://projects/{PROJECT}/topics/{id}{query}")
    }

    /// Pulls (and acknowledges) from subscription `id` until `count` messages have come or
    /// `timeout` passed; returns what came, in delivery order.
    pub async fn pull(
        &self,
        id: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Delivered>> {
        let subscription = format!("projects/{PROJECT}/subscriptions/{id}");
        let mut client = SubscriberClient::new(self.pulls.conn());
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < count && tokio::time::Instant::now() < deadline {
            #[allow(deprecated)]
            let request = PullRequest {
                subscription: subscription.clone(),
                return_immediately: true,
                max_messages: 1000,
            };
            let messages = client.pull(request).await?.into_inner().received_messages;
            if messages.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let ack_ids = messages.iter().map(|m| m.ack_id.clone()).collect();
            for m in messages.into_iter().filter_map(|m| m.message) {
                got.push(Delivered {
                    subject: id.to_owned(),
                    data: String::from_utf8(m.data.to_vec())?,
                    attributes: m.attributes,
                    key: m.ordering_key,
                });
            }
            let ack = AcknowledgeRequest {
                subscription: subscription.clone(),
                ack_ids,
            };
            client.acknowledge(ack).await?;
        }
        Ok(got)
    }

    /// Sends `signal` to the emulator's process group (`SIGSTOP` pauses it, `SIGCONT` lets
    /// it go on).
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        // SAFETY: kill(2) on the process group we started and have not reaped.
        let rc = unsafe { libc::kill(-(self.child.id() as libc::pid_t), signal) };
        anyhow::ensure!(rc == 0, "kill(-{}, {signal}) failed", self.child.id());
        Ok(())
    }
}

/// One topic (and its ordered subscription) of an emulator, for the broker scenario.
pub struct Topic<'a> {
    pub emulator: &'a PubSubEmulator,
    pub id: &'a str,
}

impl Broker for Topic<'_> {
    fn output(&self) -> String {
        self.emulator.uri(self.id, "?mods=split")
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![("PUBSUB_EMULATOR_HOST", self.emulator.host().to_owned())]
    }

    fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        self.emulator.signal(signal)
    }

    async fn drain(&mut self, wait: Duration) -> anyhow::Result<Vec<Delivered>> {
        let mut got = self.emulator.pull(self.id, 1, wait).await?;
        // What else is there at once.
        got.extend(
            self.emulator
                .pull(self.id, usize::MAX, Duration::from_millis(300))
                .await?,
        );
        Ok(got)
    }
}

impl Drop for PubSubEmulator {
    fn drop(&mut self) {
        kill_group(&self.child);
        let _ = self.child.wait();
    }
}

fn kill_group(child: &Child) {
    // SAFETY: kill(2) on the process group we started.
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
}

/// `cloud-pubsub-emulator` from `PUBSUB_EMULATOR_DIR`, `PATH`, the Google Cloud SDK's usual
/// place, or the Debian package.
fn emulator_script() -> anyhow::Result<PathBuf> {
    const NAME: &str = "cloud-pubsub-emulator";
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("PUBSUB_EMULATOR_DIR") {
        candidates.push(PathBuf::from(dir).join(NAME));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(NAME)));
    }
    candidates
        .push(PathBuf::from("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin").join(NAME));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let out = Command::new("dpkg")
        .args(["-L", "google-cloud-cli-pubsub-emulator"])
        .output();
    if let Ok(out) = out {
        let listing = String::from_utf8_lossy(&out.stdout);
        if let Some(line) = listing
            .lines()
            .find(|l| l.ends_with("/bin/cloud-pubsub-emulator"))
        {
            return Ok(line.into());
        }
    }
    bail!(
        "the Pub/Sub emulator is not installed: install the Debian package \
         google-cloud-cli-pubsub-emulator, or set PUBSUB_EMULATOR_DIR to the directory \
         holding cloud-pubsub-emulator"
    )
}
