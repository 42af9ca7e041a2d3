//! Rows of the partition table: the one decoder, and the one encoder of a new partition.

use gcloud_googleapis::spanner::v1::Mutation;
use gcloud_spanner::mutation::insert;
use gcloud_spanner::row::Row;
use gcloud_spanner::value::CommitTimestamp;
use time::OffsetDateTime;

use super::SpannerStore;
use crate::partition::{
    NewPartition, PartitionMetadata, PartitionState, PartitionTimes, PartitionToken, StoreError,
};
use crate::timestamp::Timestamp;

/// Beam stores "no end" as the largest timestamp.
const NO_END: &str = "9999-12-31T23:59:59.999999999Z";

/// The partition columns [`SpannerStore::decode`] reads; a new row writes the first
/// [`INSERTED`] of them, in [`insert_partition`]'s order.
pub(super) const PARTITION_COLUMNS: &[&str] = &[
    "PartitionToken",
    "ParentTokens",
    "StartTimestamp",
    "EndTimestamp",
    "HeartbeatMillis",
    "State",
    "Watermark",
    "CreatedAt",
    "ScheduledAt",
    "RunningAt",
];

/// How many of [`PARTITION_COLUMNS`] a new row writes (up to `CreatedAt`).
const INSERTED: usize = 8;

impl SpannerStore {
    /// A `State` column's value.
    pub(super) fn state(&self, state: &str) -> Result<PartitionState, StoreError> {
        PartitionState::parse(state).ok_or_else(|| self.corrupt(format!("unknown state {state:?}")))
    }

    pub(super) fn decode(&self, row: &Row) -> Result<PartitionMetadata, StoreError> {
        let c = |e: gcloud_spanner::row::Error| self.corrupt(e);
        let state: String = row.column_by_name("State").map_err(c)?;
        let end: OffsetDateTime = row.column_by_name("EndTimestamp").map_err(c)?;
        let end = Timestamp::from(end);
        Ok(PartitionMetadata {
            token: row
                .column_by_name::<String>("PartitionToken")
                .map_err(c)?
                .into(),
            parents: row
                .column_by_name::<Vec<String>>("ParentTokens")
                .map_err(c)?
                .into_iter()
                .map(PartitionToken::from)
                .collect(),
            start: row
                .column_by_name::<OffsetDateTime>("StartTimestamp")
                .map_err(c)?
                .into(),
            end: (end != no_end()).then_some(end),
            heartbeat_millis: row.column_by_name("HeartbeatMillis").map_err(c)?,
            state: self.state(&state)?,
            watermark: row
                .column_by_name::<OffsetDateTime>("Watermark")
                .map_err(c)?
                .into(),
            times: PartitionTimes {
                created_at: time(row, "CreatedAt").map_err(c)?,
                scheduled_at: time(row, "ScheduledAt").map_err(c)?,
                running_at: time(row, "RunningAt").map_err(c)?,
            },
        })
    }
}

pub(super) fn insert_partition(table: &str, p: &NewPartition) -> Mutation {
    let parents: Vec<String> = p.parents.iter().map(|t| t.as_str().to_owned()).collect();
    let end: OffsetDateTime = p.end.unwrap_or_else(no_end).into();
    let start: OffsetDateTime = p.start.into();
    insert(
        table,
        &PARTITION_COLUMNS[..INSERTED],
        &[
            &p.token.as_str(),
            &parents,
            &start,
            &end,
            &p.heartbeat_millis,
            &PartitionState::Created.as_str(),
            &start,
            &CommitTimestamp::new(),
        ],
    )
}

/// A nullable timestamp column.
fn time(row: &Row, column: &str) -> Result<Option<Timestamp>, gcloud_spanner::row::Error> {
    Ok(row
        .column_by_name::<Option<OffsetDateTime>>(column)?
        .map(Timestamp::from))
}

fn no_end() -> Timestamp {
    NO_END.parse().expect("constant timestamp")
}
