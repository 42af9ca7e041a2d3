//! The Spanner emulator process, its instance, and test databases.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use gcloud_gax::conn::Environment;
use gcloud_googleapis::spanner::admin::database::v1::{
    CreateDatabaseRequest, DatabaseDialect, UpdateDatabaseDdlRequest,
};
use gcloud_googleapis::spanner::admin::instance::v1::{CreateInstanceRequest, Instance};
use gcloud_googleapis::spanner::v1::Mutation;
use gcloud_spanner::admin::AdminClientConfig;
use gcloud_spanner::admin::client::Client as AdminClient;
use gcloud_spanner::client::{Client, ClientConfig};
use gcloud_spanner::statement::Statement;
use screamer::{DatabaseName, Dialect, Endpoint, Timestamp};

const PROJECT: &str = "test-project";

/// The schema most tests write to: `Items (Id, Seq)` watched by the stream `Changes`
/// (OLD_AND_NEW_VALUES). Writers bump `Seq` per `Id`, so order and completeness per key can be
/// checked exactly.
pub const ITEMS_SCHEMA: [&str; 2] = [
    "CREATE TABLE Items (Id INT64 NOT NULL, Seq INT64 NOT NULL) PRIMARY KEY (Id)",
    "CREATE CHANGE STREAM Changes FOR Items",
];
/// A Users table with a `Name` (what the chaos plugin acts on) and the stream `Changes`.
pub const USERS_SCHEMA: [&str; 2] = [
    "CREATE TABLE Users (Id INT64 NOT NULL, Name STRING(MAX)) PRIMARY KEY (Id)",
    "CREATE CHANGE STREAM Changes FOR Users",
];
const INSTANCE: &str = "test-instance";

/// Settings of one emulator. `default()` is the emulator's own defaults (the benchmarks use
/// them); tests that count every record start from [`EmulatorOptions::exact`].
#[derive(Debug, Clone, Default)]
pub struct EmulatorOptions {
    /// Partitions end after N..2N seconds, producing splits, moves and merges.
    pub partition_alive_seconds: Option<u32>,
    /// The slices a live change stream query scans one after another (emulator default
    /// 100 ms). The emulator skips the first microsecond after every slice, so a record
    /// committed exactly there never reaches a live reader (docs/architecture.md).
    pub query_chop: Option<Duration>,
}

impl EmulatorOptions {
    /// For tests that assert every record arrives: one-second slices make the emulator's
    /// lost microsecond per slice ten times rarer (about one record in a million read live,
    /// against one in 100,000), at the cost of up to a second of delivery latency.
    pub fn exact() -> Self {
        Self {
            partition_alive_seconds: None,
            query_chop: Some(Duration::from_secs(1)),
        }
    }
}

/// A running emulator with one instance; killed (whole process group) on drop.
pub struct Emulator {
    host: String,
    child: Child,
    next_db: AtomicU32,
}

impl Emulator {
    /// Starts an emulator on a free port with a test instance. The port is picked by binding
    /// and releasing it, so a parallel test may take the same one: an emulator that exits or
    /// cannot be reached at start is started again on another port.
    pub async fn start(options: EmulatorOptions) -> anyhow::Result<Self> {
        crate::start_with_retries("the Spanner emulator", async || {
            Self::start_once(&options).await
        })
        .await
    }

    async fn start_once(options: &EmulatorOptions) -> anyhow::Result<Self> {
        let dir = emulator_dir()?;
        let grpc = free_port()?;
        // emulator_main itself (the gateway in front of it only adds REST, and passes on
        // none of the change stream flags but the partition lifetime).
        let mut cmd = Command::new(dir.join("emulator_main"));
        cmd.arg(format!("--host_port=127.0.0.1:{grpc}"));
        if let Some(n) = options.partition_alive_seconds {
            cmd.arg(format!(
                "--override_change_stream_partition_token_alive_seconds={n}"
            ));
        }
        if let Some(chop) = options.query_chop {
            cmd.arg(format!(
                "--change_streams_partition_query_chop_interval={}us",
                chop.as_micros()
            ));
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().context("starting emulator_main")?;
        let mut emulator = Self {
            host: format!("127.0.0.1:{grpc}"),
            child,
            next_db: AtomicU32::new(0),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&emulator.host).is_err() {
            if std::time::Instant::now() > deadline {
                bail!("emulator did not listen on {} within 20 s", emulator.host);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The port may answer before the emulator is ready (or be another's): retry for a while.
        let ready = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = emulator.child.try_wait()? {
                bail!(
                    "emulator_main on {} exited at start: {status}",
                    emulator.host
                );
            }
            match emulator.create_instance().await {
                Ok(()) => return Ok(emulator),
                Err(e) if already_exists(&e) => return Ok(emulator),
                Err(_) if std::time::Instant::now() < ready => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `host:port` of the gRPC endpoint (the value for `SPANNER_EMULATOR_HOST`).
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::Emulator(self.host.clone())
    }

    async fn admin(&self) -> anyhow::Result<AdminClient> {
        Ok(AdminClient::new(AdminClientConfig {
            environment: Environment::Emulator(self.host.clone()),
            ..Default::default()
        })
        .await?)
    }

    async fn create_instance(&self) -> anyhow::Result<()> {
        let admin = self.admin().await?;
        let mut op = admin
            .instance()
            .create_instance(
                CreateInstanceRequest {
                    parent: format!("projects/{PROJECT}"),
                    instance_id: INSTANCE.into(),
                    instance: Some(Instance {
                        name: format!("projects/{PROJECT}/instances/{INSTANCE}"),
                        config: format!("projects/{PROJECT}/instanceConfigs/emulator-config"),
                        display_name: INSTANCE.into(),
                        node_count: 1,
                        ..Default::default()
                    }),
                },
                None,
            )
            .await
            .context("creating the emulator instance")?;
        op.wait(None).await?;
        Ok(())
    }

    /// A name for a database that does not exist.
    pub fn unused_database(&self) -> DatabaseName {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        DatabaseName::new(PROJECT, INSTANCE, format!("db{n}"))
    }

    /// A new GoogleSQL database with [`ITEMS_SCHEMA`].
    pub async fn items_database(&self) -> anyhow::Result<TestDatabase> {
        self.database(Dialect::GoogleSql, &ITEMS_SCHEMA).await
    }

    /// Creates a new database of `dialect` and applies `ddl` to it.
    pub async fn database(&self, dialect: Dialect, ddl: &[&str]) -> anyhow::Result<TestDatabase> {
        let name = self.unused_database();
        let admin = self.admin().await?;
        let (create_statement, database_dialect) = match dialect {
            Dialect::GoogleSql => (
                format!("CREATE DATABASE `{}`", name.database()),
                DatabaseDialect::GoogleStandardSql,
            ),
            Dialect::PostgreSql => (
                format!("CREATE DATABASE \"{}\"", name.database()),
                DatabaseDialect::Postgresql,
            ),
        };
        let mut op = admin
            .database()
            .create_database(
                CreateDatabaseRequest {
                    parent: name.instance_path(),
                    create_statement,
                    database_dialect: database_dialect as i32,
                    ..Default::default()
                },
                None,
            )
            .await
            .context("creating a database")?;
        op.wait(None).await?;
        let db = TestDatabase {
            client: Client::new(
                name.to_string(),
                ClientConfig {
                    environment: Environment::Emulator(self.host.clone()),
                    ..Default::default()
                },
            )
            .await?,
            name,
            host: self.host.clone(),
        };
        if !ddl.is_empty() {
            db.ddl(ddl).await?;
        }
        Ok(db)
    }
}

/// An earlier attempt created the instance after all.
fn already_exists(e: &anyhow::Error) -> bool {
    e.downcast_ref::<gcloud_gax::grpc::Status>()
        .is_some_and(|s| s.code() == gcloud_gax::grpc::Code::AlreadyExists)
}

impl Emulator {
    /// Sends `signal` to the emulator's process group (`SIGSTOP` pauses it: every request
    /// to it hangs; `SIGCONT` lets it go on).
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals exactly that process group.
        if unsafe { libc::kill(-pgid, signal) } != 0 {
            anyhow::bail!("kill: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // Kill the whole group (`process_group(0)` made it with the emulator's pid as its
        // id), so nothing it may have started outlives the test.
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals exactly that process group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A database on a test emulator, with a client for writing.
pub struct TestDatabase {
    pub name: DatabaseName,
    pub client: Client,
    host: String,
}

impl TestDatabase {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::Emulator(self.host.clone())
    }

    /// The emulator's `host:port`.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub async fn ddl(&self, statements: &[&str]) -> anyhow::Result<()> {
        let admin = AdminClient::new(AdminClientConfig {
            environment: Environment::Emulator(self.host.clone()),
            ..Default::default()
        })
        .await?;
        let mut op = admin
            .database()
            .update_database_ddl(
                UpdateDatabaseDdlRequest {
                    database: self.name.to_string(),
                    statements: statements.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
                None,
            )
            .await
            .with_context(|| format!("DDL {statements:?}"))?;
        op.wait(None).await?;
        Ok(())
    }

    /// Commits `mutations` in one transaction; returns its commit timestamp.
    /// The emulator runs one transaction at a time and aborts the others, so aborted
    /// commits are retried.
    pub async fn apply(&self, mutations: Vec<Mutation>) -> anyhow::Result<Timestamp> {
        for _ in 0..100 {
            match self.client.apply(mutations.clone()).await {
                Ok(result) => return commit_time(result.timestamp),
                Err(gcloud_spanner::client::Error::GRPC(s))
                    if s.code() == gcloud_gax::grpc::Code::Aborted =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("commit aborted 100 times")
    }

    /// Runs DML statements in one read-write transaction; returns its commit timestamp.
    pub async fn dml(&self, statements: Vec<Statement>) -> anyhow::Result<Timestamp> {
        let (result, _) = self
            .client
            .read_write_transaction(|tx| {
                let statements = statements.clone();
                Box::pin(async move {
                    for s in statements {
                        tx.update(s).await?;
                    }
                    Ok::<(), gcloud_spanner::client::Error>(())
                })
            })
            .await?;
        commit_time(result.timestamp)
    }
}

fn commit_time(ts: Option<gcloud_spanner::value::Timestamp>) -> anyhow::Result<Timestamp> {
    let ts = ts.context("commit without timestamp")?;
    Timestamp::from_unix_nanos(ts.seconds as i128 * 1_000_000_000 + ts.nanos as i128)
        .context("commit timestamp out of range")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn emulator_dir() -> anyhow::Result<PathBuf> {
    let has = |d: &PathBuf| d.join("emulator_main").is_file();
    if let Some(d) = std::env::var_os("SPANNER_EMULATOR_DIR").map(PathBuf::from) {
        if has(&d) {
            return Ok(d);
        }
        bail!(
            "SPANNER_EMULATOR_DIR={} holds no emulator_main",
            d.display()
        );
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    candidates.push("/usr/lib/google-cloud-sdk/bin/cloud_spanner_emulator".into());
    if let Ok(out) = Command::new("dpkg")
        .args(["-L", "google-cloud-cli-spanner-emulator"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.ends_with("/emulator_main") {
                candidates.push(PathBuf::from(line).with_file_name(""));
            }
        }
    }
    candidates.into_iter().find(has).context(
        "Spanner emulator not found: install google-cloud-cli-spanner-emulator or set SPANNER_EMULATOR_DIR",
    )
}
