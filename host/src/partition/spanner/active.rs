//! The stream's active runner (`--ordering transactions`): one row in `<table>_Active`,
//! taken in a read-write transaction when its runner's registration has lapsed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gcloud_spanner::client::Error as ClientError;
use gcloud_spanner::mutation::insert_or_update;
use gcloud_spanner::statement::Statement;
use gcloud_spanner::value::CommitTimestamp;

use super::{SpannerStore, read_all};
use crate::partition::{RunnerId, StoreError};

/// The key of the one row.
const STREAM: &str = "stream";

impl SpannerStore {
    pub(super) async fn take_active(
        &self,
        runner: &RunnerId,
        lease_duration: Duration,
    ) -> Result<RunnerId, StoreError> {
        let sql = Arc::new(self.active_sql(lease_duration));
        let table = Arc::new(self.active.clone());
        let me = Arc::new(runner.as_str().to_owned());
        let (_, active) = self
            .retrying(|| {
                self.client.read_write_transaction_with_option(
                    |tx| {
                        let (sql, table, me) = (sql.clone(), table.clone(), me.clone());
                        Box::pin(async move {
                            let rows =
                                read_all(tx.query(Statement::new(sql.as_str())).await?).await?;
                            if let Some(row) = rows.first() {
                                let (holder, alive): (String, Option<bool>) =
                                    (row.column(0)?, row.column(1)?);
                                if holder != *me && alive == Some(true) {
                                    return Ok::<_, ClientError>(holder);
                                }
                            }
                            tx.buffer_write(vec![insert_or_update(
                                &table,
                                &["Stream", "RunnerId", "Since"],
                                &[&STREAM, &me.as_str(), &CommitTimestamp::new()],
                            )]);
                            Ok(me.to_string())
                        })
                    },
                    self.transaction("screamer-activate"),
                )
            })
            .await?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(RunnerId::from(active))
    }

    /// The active runner if it is live.
    pub(super) async fn live_active(
        &self,
        lease_duration: Duration,
    ) -> Result<Option<RunnerId>, StoreError> {
        let rows = self
            .query(Statement::new(self.active_sql(lease_duration)))
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let c = |e| self.corrupt(e);
        let alive: Option<bool> = row.column(1).map_err(c)?;
        alive
            .unwrap_or(false)
            .then(|| row.column::<String>(0).map(RunnerId::from))
            .transpose()
            .map_err(c)
    }

    /// The active runner and whether it heartbeats within the lease, by Spanner's clock.
    fn active_sql(&self, lease_duration: Duration) -> String {
        format!(
            "SELECT a.RunnerId, r.HeartbeatAt >= \
               TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL {ms} MILLISECOND) \
             FROM {a} AS a LEFT JOIN {r} AS r ON r.RunnerId = a.RunnerId \
             WHERE a.Stream = '{STREAM}'",
            a = self.active,
            r = self.runners,
            ms = lease_duration.as_millis()
        )
    }
}
