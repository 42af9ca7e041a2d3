//! One partition's change stream query, as a sequence of decoded batches.

use std::collections::HashMap;

use futures_util::FutureExt;
use gcloud_gax::grpc::Streaming;
use gcloud_googleapis::spanner::v1::{
    ExecuteSqlRequest, PartialResultSet, RequestOptions, Type, TypeCode,
};
use prost_types::value::Kind;

use super::decode::{Dialect, RowAssembler, decode_row};
use super::session::{PooledSession, single_use_strong};
use super::{ChangeQuery, SourceError};
use crate::client::Priority;
use crate::partition::PartitionToken;
use crate::record::ChangeRecord;
use crate::timestamp::Timestamp;

/// The time range and heartbeat of one partition query.
#[derive(Debug, Clone, Copy)]
pub struct QueryRange {
    /// Inclusive start: the partition's watermark.
    pub start: Timestamp,
    /// Inclusive end; `None` reads until the partition ends.
    pub end: Option<Timestamp>,
    /// How often the query reports a heartbeat when nothing changes.
    pub heartbeat_millis: i64,
}

/// An open change stream query for one partition of a Spanner database.
pub(crate) struct PartitionQuery {
    session: PooledSession,
    stream: Streaming<PartialResultSet>,
    assembler: RowAssembler,
    dialect: Dialect,
    partition: PartitionToken,
    start: Timestamp,
    /// The stream has ended cleanly.
    done: bool,
    /// An error that arrived behind records already handed on.
    deferred_error: Option<gcloud_gax::grpc::Status>,
}

impl PartitionQuery {
    pub(super) async fn open(
        mut session: PooledSession,
        target: QueryTarget<'_>,
        partition: &PartitionToken,
        range: QueryRange,
    ) -> Result<Self, SourceError> {
        let request = request(session.name(), target, partition.query_token(), range);
        let stream = session
            .client()
            .execute_streaming_sql(request, true, None)
            .await
            .map_err(|s| out_of_range(session.observe(s), range.start))?
            .into_inner();
        Ok(Self {
            start: range.start,
            session,
            stream,
            assembler: RowAssembler::default(),
            dialect: target.dialect,
            partition: partition.clone(),
            done: false,
            deferred_error: None,
        })
    }

    fn decode(
        &mut self,
        prs: PartialResultSet,
        out: &mut Vec<ChangeRecord>,
    ) -> Result<(), SourceError> {
        let rows = self.assembler.push(prs)?;
        if let Some(columns) = self.assembler.columns() {
            for row in rows {
                out.extend(decode_row(self.dialect, columns, row, &self.partition)?);
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ChangeQuery for PartitionQuery {
    /// The records of the next partial result sets: waits for at least one whole row, then
    /// takes whatever else has already arrived, until the batch holds `limit` records (a
    /// partial result set is taken whole), so that a busy partition is handed on in few large
    /// batches and an idle one without delay. `None` once the query has ended (at its end
    /// timestamp or after child partitions).
    async fn next_batch(&mut self, limit: usize) -> Result<Option<Vec<ChangeRecord>>, SourceError> {
        if let Some(status) = self.deferred_error.take() {
            return Err(out_of_range(self.session.observe(status), self.start));
        }
        let mut records = Vec::new();
        while records.is_empty() {
            if self.done {
                return Ok(None);
            }
            match self.stream.message().await {
                Ok(Some(prs)) => self.decode(prs, &mut records)?,
                Ok(None) => self.done = true,
                Err(s) => return Err(out_of_range(self.session.observe(s), self.start)),
            }
        }
        // `message()` is cancel-safe: polling it once and dropping it loses nothing. An end
        // or an error seen here is reported on the next call, after this batch.
        while records.len() < limit && !self.done {
            match self.stream.message().now_or_never() {
                None => break,
                Some(Ok(Some(prs))) => self.decode(prs, &mut records)?,
                Some(Ok(None)) => self.done = true,
                Some(Err(status)) => {
                    self.deferred_error = Some(status);
                    break;
                }
            }
        }
        Ok(Some(records))
    }
}

impl Drop for PartitionQuery {
    fn drop(&mut self) {
        if !self.done {
            self.session.discard();
        }
    }
}

/// Names the start timestamp when Spanner refuses it.
fn out_of_range(e: SourceError, start: Timestamp) -> SourceError {
    match e {
        SourceError::Grpc(s) if s.code() == gcloud_gax::grpc::Code::OutOfRange => {
            SourceError::StartOutOfRange {
                start: start.to_string(),
                message: s.message().to_owned(),
            }
        }
        other => other,
    }
}

/// What every partition query of one source shares.
#[derive(Debug, Clone, Copy)]
pub(super) struct QueryTarget<'a> {
    pub dialect: Dialect,
    pub stream: &'a str,
    pub priority: Option<Priority>,
}

/// The request tag of every change stream query, for Spanner's query statistics.
pub const QUERY_TAG: &str = "screamer-change-stream-query";

fn request(
    session: &str,
    target: QueryTarget<'_>,
    token: Option<&str>,
    range: QueryRange,
) -> ExecuteSqlRequest {
    let stream_name = target.stream;
    let (sql, names) = match target.dialect {
        Dialect::GoogleSql => (
            format!(
                "SELECT ChangeRecord FROM READ_{stream_name}(start_timestamp => @start, \
                 end_timestamp => @end, partition_token => @token, \
                 heartbeat_milliseconds => @heartbeat)"
            ),
            ["start", "end", "token", "heartbeat"],
        ),
        Dialect::PostgreSql => (
            format!("SELECT * FROM spanner.read_json_{stream_name}($1, $2, $3, $4, null)"),
            ["p1", "p2", "p3", "p4"],
        ),
    };
    let string = |s: Option<String>| prost_types::Value {
        kind: Some(match s {
            Some(s) => Kind::StringValue(s),
            None => Kind::NullValue(0),
        }),
    };
    let values = [
        string(Some(range.start.to_string())),
        string(range.end.map(|e| e.to_string())),
        string(token.map(str::to_owned)),
        string(Some(range.heartbeat_millis.to_string())),
    ];
    let types = [
        TypeCode::Timestamp,
        TypeCode::Timestamp,
        TypeCode::String,
        TypeCode::Int64,
    ];
    let mut fields = std::collections::BTreeMap::new();
    let mut param_types = HashMap::new();
    for ((name, value), code) in names.into_iter().zip(values).zip(types) {
        fields.insert(name.to_owned(), value);
        param_types.insert(
            name.to_owned(),
            Type {
                code: code as i32,
                ..Default::default()
            },
        );
    }
    ExecuteSqlRequest {
        session: session.to_owned(),
        transaction: Some(single_use_strong()),
        sql,
        params: Some(prost_types::Struct { fields }),
        param_types,
        request_options: Some(RequestOptions {
            priority: target.priority.map_or(0, |p| p.proto() as i32),
            request_tag: QUERY_TAG.to_owned(),
            transaction_tag: String::new(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_queries_carry_the_priority_and_the_request_tag() {
        let range = QueryRange {
            start: Timestamp::now(),
            end: None,
            heartbeat_millis: 1000,
        };
        let target = |priority| QueryTarget {
            dialect: Dialect::GoogleSql,
            stream: "Changes",
            priority,
        };
        let low = request("s", target(Some(Priority::Low)), None, range);
        let options = low.request_options.expect("request options");
        assert_eq!(options.request_tag, QUERY_TAG);
        assert_eq!(options.priority, Priority::Low.proto() as i32);
        let default = request("s", target(None), None, range);
        assert_eq!(
            default.request_options.expect("request options").priority,
            0
        );
    }
}
