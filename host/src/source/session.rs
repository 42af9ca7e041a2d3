//! Sessions for the change stream queries and the snapshot's reads, pooled by hand, created
//! with `--database-role` when given; and `run_query` for the information schema.
//!
//! The queries run over the client's low-level gRPC API (see the [source](super) docs).
//! gcloud-spanner's own `SessionManager` is crate-private (`pub(crate)` in its `session`
//! module): its sessions reach a user only inside its high-level transactions and row
//! iterators, which buffer change records until the partition ends on the emulator. A session whose query failed or was abandoned mid-stream may still be
//! busy server-side, so it is deleted rather than reused.

use std::sync::{Arc, Mutex};

use gcloud_gax::conn::ConnectionOptions;
use gcloud_gax::grpc::Status;
use gcloud_googleapis::spanner::v1::transaction_options::{Mode, ReadOnly, read_only};
use gcloud_googleapis::spanner::v1::transaction_selector::Selector;
use gcloud_googleapis::spanner::v1::{
    CreateSessionRequest, DeleteSessionRequest, Session, TransactionOptions, TransactionSelector,
};
use gcloud_spanner::apiv1::conn_pool::{ConnectionManager, SPANNER};

use gcloud_googleapis::spanner::v1::ExecuteSqlRequest;
use prost_types::value::Kind;

use super::SourceError;
use super::decode::RowAssembler;
use crate::client::{ConnectError, Endpoint};
use crate::dsn::DatabaseName;

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

/// Sessions for streaming queries: each open partition query holds one; they are reused.
pub(super) struct SessionPool {
    database: String,
    /// The fine-grained access control role sessions are created with.
    role: Option<String>,
    conn: ConnectionManager,
    idle: Mutex<Vec<String>>,
}

impl SessionPool {
    pub(super) async fn connect(
        endpoint: &Endpoint,
        database: &DatabaseName,
        role: Option<String>,
    ) -> Result<Self, SourceError> {
        let env = endpoint.environment().await?;
        let conn = ConnectionManager::new(4, &env, SPANNER, &ConnectionOptions::default())
            .await
            .map_err(|e| ConnectError::Transport {
                endpoint: endpoint.to_string(),
                source: Box::new(e),
            })?;
        Ok(Self {
            database: database.to_string(),
            role,
            conn,
            idle: Mutex::new(Vec::new()),
        })
    }

    pub(super) async fn acquire(pool: &Arc<Self>) -> Result<PooledSession, SourceError> {
        let reused = pool.idle.lock().expect("session pool lock").pop();
        let name = match reused {
            Some(name) => name,
            None => {
                let request = CreateSessionRequest {
                    database: pool.database.clone(),
                    session: pool.role.as_ref().map(|role| Session {
                        creator_role: role.clone(),
                        ..Default::default()
                    }),
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

    pub(super) async fn close(&self) {
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
pub(super) struct PooledSession {
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

/// Runs a small query (information schema look-ups); every value as text (`true`/`false`
/// for booleans, empty for NULL).
pub(super) async fn run_query(
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
                        Some(Kind::BoolValue(b)) => b.to_string(),
                        Some(Kind::NumberValue(n)) => n.to_string(),
                        _ => String::new(),
                    })
                    .collect(),
            );
        }
    }
    Ok(out)
}
