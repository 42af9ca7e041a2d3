//! The connection to the change stream's database and its pool of query sessions.

use std::sync::{Arc, Mutex};

use gcloud_gax::conn::{ConnectionOptions, Environment};
use gcloud_gax::grpc::{Code, Status};
use gcloud_googleapis::spanner::v1::transaction_options::{Mode, ReadOnly, read_only};
use gcloud_googleapis::spanner::v1::transaction_selector::Selector;
use gcloud_googleapis::spanner::v1::{
    CreateSessionRequest, DeleteSessionRequest, ExecuteSqlRequest, TransactionOptions,
    TransactionSelector,
};
use gcloud_spanner::apiv1::conn_pool::{ConnectionManager, SPANNER};
use gcloud_spanner::client::ClientConfig;
use prost_types::value::Kind;

use super::SourceError;
use super::decode::{Dialect, RowAssembler};
use super::query::{PartitionQuery, QueryRange};
use crate::dsn::DatabaseName;
use crate::partition::PartitionToken;

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
    pub async fn environment(&self) -> Result<Environment, SourceError> {
        match self {
            Self::Emulator(host) => Ok(Environment::Emulator(host.clone())),
            Self::GoogleCloud => {
                let config = ClientConfig::default().with_auth().await.map_err(|e| {
                    SourceError::Connect(format!("application default credentials: {e}"))
                })?;
                match config.environment {
                    // The client's default follows SPANNER_EMULATOR_HOST even when empty.
                    Environment::Emulator(_) => Err(SourceError::Connect(
                        "SPANNER_EMULATOR_HOST is set but empty".to_owned(),
                    )),
                    env => Ok(env),
                }
            }
        }
    }
}

/// A change stream in one database, ready to be queried partition by partition.
#[derive(Clone)]
pub struct SpannerSource {
    inner: Arc<Inner>,
}

struct Inner {
    database: DatabaseName,
    stream: String,
    dialect: Dialect,
    sessions: Arc<SessionPool>,
}

impl SpannerSource {
    /// Connects, detects the dialect and checks that `stream` exists.
    pub async fn connect(
        endpoint: &Endpoint,
        database: &DatabaseName,
        stream: &str,
    ) -> Result<Self, SourceError> {
        let sessions = Arc::new(SessionPool::connect(endpoint, database).await?);
        let dialect = detect_dialect(&sessions, database).await?;
        let existing = list_streams(&sessions).await?;
        if !valid_identifier(stream) || !existing.iter().any(|s| s == stream) {
            return Err(SourceError::StreamNotFound {
                stream: stream.to_owned(),
                database: database.to_string(),
                existing,
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                database: database.clone(),
                stream: stream.to_owned(),
                dialect,
                sessions,
            }),
        })
    }

    pub fn database(&self) -> &DatabaseName {
        &self.inner.database
    }

    pub fn stream(&self) -> &str {
        &self.inner.stream
    }

    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// Opens the change stream query of one partition over `range`.
    pub async fn query(
        &self,
        partition: &PartitionToken,
        range: QueryRange,
    ) -> Result<PartitionQuery, SourceError> {
        let session = SessionPool::acquire(&self.inner.sessions).await?;
        PartitionQuery::open(
            session,
            self.inner.dialect,
            &self.inner.stream,
            partition,
            range,
        )
        .await
    }

    /// Deletes the pooled sessions (they would otherwise expire server-side after an hour).
    pub async fn close(&self) {
        self.inner.sessions.close().await;
    }
}

async fn detect_dialect(
    sessions: &Arc<SessionPool>,
    database: &DatabaseName,
) -> Result<Dialect, SourceError> {
    let rows = run_query(
        sessions,
        "SELECT option_value FROM information_schema.database_options \
         WHERE option_name = 'database_dialect'",
    )
    .await
    .map_err(|e| match e {
        SourceError::Grpc(s) if s.code() == Code::NotFound => SourceError::DatabaseNotFound {
            database: database.to_string(),
        },
        other => other,
    })?;
    let dialect = rows.first().and_then(|r| r.first()).cloned();
    Ok(match dialect.as_deref() {
        Some("POSTGRESQL") => Dialect::PostgreSql,
        _ => Dialect::GoogleSql,
    })
}

async fn list_streams(sessions: &Arc<SessionPool>) -> Result<Vec<String>, SourceError> {
    let rows = run_query(
        sessions,
        "SELECT change_stream_name FROM information_schema.change_streams",
    )
    .await?;
    let mut names: Vec<String> = rows
        .into_iter()
        .filter_map(|r| r.into_iter().next())
        .collect();
    names.sort();
    Ok(names)
}

/// Runs a small query whose columns are all strings (information schema look-ups).
async fn run_query(
    sessions: &Arc<SessionPool>,
    sql: &str,
) -> Result<Vec<Vec<String>>, SourceError> {
    let mut session = SessionPool::acquire(sessions).await?;
    let request = ExecuteSqlRequest {
        session: session.name().to_owned(),
        transaction: Some(single_use_strong()),
        sql: sql.to_owned(),
        ..Default::default()
    };
    let mut stream = session
        .client()
        .execute_streaming_sql(request, true, None)
        .await
        .map_err(|s| session.observe(s))?
        .into_inner();
    let mut assembler = RowAssembler::default();
    let mut out = Vec::new();
    while let Some(prs) = stream.message().await.map_err(|s| session.observe(s))? {
        for row in assembler.push(prs)? {
            out.push(
                row.into_iter()
                    .map(|v| match v.kind {
                        Some(Kind::StringValue(s)) => s,
                        _ => String::new(),
                    })
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// A single-use, strong, read-only transaction: what change stream queries require.
pub(super) fn single_use_strong() -> TransactionSelector {
    TransactionSelector {
        selector: Some(Selector::SingleUse(TransactionOptions {
            mode: Some(Mode::ReadOnly(ReadOnly {
                timestamp_bound: Some(read_only::TimestampBound::Strong(true)),
                return_read_timestamp: false,
            })),
            ..Default::default()
        })),
    }
}

/// Stream names are spliced into the query's function name, so only identifiers pass.
fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Sessions for streaming queries: each open partition query holds one; they are reused.
pub(super) struct SessionPool {
    database: String,
    conn: ConnectionManager,
    idle: Mutex<Vec<String>>,
}

impl SessionPool {
    async fn connect(endpoint: &Endpoint, database: &DatabaseName) -> Result<Self, SourceError> {
        let env = endpoint.environment().await?;
        let conn = ConnectionManager::new(4, &env, SPANNER, &ConnectionOptions::default())
            .await
            .map_err(|e| SourceError::Connect(format!("{endpoint}: {e}")))?;
        Ok(Self {
            database: database.to_string(),
            conn,
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn acquire(pool: &Arc<Self>) -> Result<PooledSession, SourceError> {
        let reused = pool.idle.lock().expect("session pool lock").pop();
        let name = match reused {
            Some(name) => name,
            None => {
                let request = CreateSessionRequest {
                    database: pool.database.clone(),
                    session: None,
                };
                pool.conn
                    .conn()
                    .create_session(request, true, None)
                    .await?
                    .into_inner()
                    .name
            }
        };
        Ok(PooledSession {
            name,
            pool: Arc::clone(pool),
            healthy: true,
        })
    }

    async fn close(&self) {
        let names = std::mem::take(&mut *self.idle.lock().expect("session pool lock"));
        // Concurrently: a stopping process should not wait a round trip per session.
        futures_util::future::join_all(names.into_iter().map(|name| async move {
            let _ = self
                .conn
                .conn()
                .delete_session(DeleteSessionRequest { name }, true, None)
                .await;
        }))
        .await;
    }
}

/// A session on loan from the pool; it goes back when dropped unless Spanner lost it.
pub(crate) struct PooledSession {
    name: String,
    pool: Arc<SessionPool>,
    healthy: bool,
}

impl PooledSession {
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn client(&self) -> gcloud_spanner::apiv1::spanner_client::Client {
        self.pool.conn.conn()
    }

    /// Notes an error from a call on this session: after a failed or abandoned query the
    /// session may still be busy server-side, so it is not reused.
    pub(super) fn observe(&mut self, status: Status) -> SourceError {
        self.healthy = false;
        SourceError::Grpc(status)
    }

    /// Marks a session whose query was abandoned mid-stream.
    pub(super) fn discard(&mut self) {
        self.healthy = false;
    }
}

impl Drop for PooledSession {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        if self.healthy {
            if let Ok(mut idle) = self.pool.idle.lock() {
                idle.push(name);
            }
        } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Best effort: Spanner also expires idle sessions after an hour.
            let client = self.pool.conn.conn();
            runtime.spawn(async move {
                let mut client = client;
                let _ = client
                    .delete_session(DeleteSessionRequest { name }, true, None)
                    .await;
            });
        }
    }
}
