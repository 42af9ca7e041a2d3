//! The change stream's database: dialect, the stream's existence, and partition queries.

use std::sync::Arc;

use gcloud_gax::grpc::Code;

use super::decode::Dialect;
use super::query::{PartitionQuery, QueryRange, QueryTarget};
use super::session::SessionPool;
use super::session::run_query;
use super::snapshot::{SnapshotQuery, SnapshotReads};
use super::{ChangeQuery, ChangeSource, SourceError, SourceOptions};
use crate::client::{Endpoint, Priority};
use crate::dsn::{DatabaseName, is_identifier};
use crate::partition::PartitionToken;
use crate::snapshot::Chunk;
use crate::timestamp::Timestamp;

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
    priority: Option<Priority>,
    snapshot: Arc<SnapshotReads>,
}

impl SpannerSource {
    /// Connects with the default [`SourceOptions`]; see [`SpannerSource::connect_with`].
    pub async fn connect(
        endpoint: &Endpoint,
        database: &DatabaseName,
        stream: &str,
    ) -> Result<Self, SourceError> {
        Self::connect_with(endpoint, database, stream, SourceOptions::default()).await
    }

    /// Connects, detects the dialect and checks that `stream` exists, reading as `options`
    /// say.
    pub async fn connect_with(
        endpoint: &Endpoint,
        database: &DatabaseName,
        stream: &str,
        options: SourceOptions,
    ) -> Result<Self, SourceError> {
        let sessions = Arc::new(
            SessionPool::connect(endpoint, database, options.database_role.clone()).await?,
        );
        let dialect = detect_dialect(&sessions, database).await?;
        let existing = list_streams(&sessions).await?;
        // Stream names are spliced into the query's function name.
        if !is_identifier(stream) || !existing.iter().any(|s| s == stream) {
            return Err(SourceError::StreamNotFound {
                stream: stream.to_owned(),
                database: database.to_string(),
                existing,
            });
        }
        let snapshot = SnapshotReads::new(Arc::clone(&sessions), dialect, &options);
        Ok(Self {
            inner: Arc::new(Inner {
                database: database.clone(),
                stream: stream.to_owned(),
                dialect,
                snapshot: Arc::new(snapshot),
                sessions,
                priority: options.priority,
            }),
        })
    }

    /// The database this source reads.
    pub fn database(&self) -> &DatabaseName {
        &self.inner.database
    }

    /// The database's SQL dialect.
    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// Deletes the pooled sessions (they would otherwise expire server-side after an hour).
    pub async fn close(&self) {
        self.inner.sessions.close().await;
    }
}

#[async_trait::async_trait]
impl ChangeSource for SpannerSource {
    fn stream(&self) -> &str {
        &self.inner.stream
    }

    /// Opens the change stream query of one partition over `range`, or the read of a
    /// snapshot chunk at `range.start`.
    async fn query(
        &self,
        partition: &PartitionToken,
        range: QueryRange,
    ) -> Result<Box<dyn ChangeQuery>, SourceError> {
        if Chunk::is_chunk(partition) {
            return self.snapshot_query(partition, range.start).await;
        }
        let session = SessionPool::acquire(&self.inner.sessions).await?;
        let query = PartitionQuery::open(
            session,
            QueryTarget {
                dialect: self.inner.dialect,
                stream: &self.inner.stream,
                priority: self.inner.priority,
            },
            partition,
            range,
        )
        .await?;
        Ok(Box::new(query))
    }

    async fn plan_snapshot(
        &self,
        at: Timestamp,
        chunk_rows: usize,
    ) -> Result<Vec<Chunk>, SourceError> {
        self.inner
            .snapshot
            .plan(&self.inner.stream, at, chunk_rows)
            .await
    }
}

impl SpannerSource {
    async fn snapshot_query(
        &self,
        partition: &PartitionToken,
        at: Timestamp,
    ) -> Result<Box<dyn ChangeQuery>, SourceError> {
        let chunk = Chunk::parse(partition).ok_or_else(|| SourceError::UnknownChunk {
            token: partition.to_string(),
            problem: "not a snapshot chunk this version can read".to_owned(),
        })?;
        let reads = &self.inner.snapshot;
        let table = reads
            .watched(&self.inner.stream)
            .await?
            .iter()
            .find(|t| t.name == chunk.table)
            .cloned()
            .ok_or_else(|| SourceError::UnknownChunk {
                token: partition.to_string(),
                problem: format!("the stream no longer watches table {}", chunk.table),
            })?;
        Ok(Box::new(SnapshotQuery::new(
            Arc::clone(reads),
            table,
            chunk,
            partition.clone(),
            at,
        )))
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
