//! Claims: the transaction that takes partitions for a runner.
//!
//! Candidates come from one query (oldest first, in an order of the runner's own among
//! partitions of one age); the transaction then reads, by key, the candidates, their leases,
//! the live owners among them and the parents of the CREATED ones, applies the shared rules
//! (`PartitionState::is_active`, `lease_is_free`) and writes the new leases (epoch + 1) and
//! the CREATED -> SCHEDULED moves in one commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gcloud_googleapis::spanner::v1::Mutation;
use gcloud_spanner::client::Error as ClientError;
use gcloud_spanner::mutation::{insert_or_update, update};
use gcloud_spanner::row::Row;
use gcloud_spanner::statement::Statement;
use gcloud_spanner::transaction_rw::ReadWriteTransaction;
use gcloud_spanner::value::CommitTimestamp;

use super::rows::PARTITION_COLUMNS;
use super::sql::ACTIVE;
use super::{SpannerStore, commit_timestamp, keys, read_all};
use crate::partition::{
    CLAIM_BATCH, Claim, Epoch, Lease, PartitionState, StoreError, lease_is_free,
};

/// Candidates a claim reads beyond its room: runners claiming at once often want the same
/// few partitions (the last ones of a failover), and a claim whose candidates were all taken
/// would wait for the next poll. Measured: the last dozen partitions of 10,000 went one per
/// 10 s poll without spares.
const CLAIM_SPARE: usize = 8;

impl SpannerStore {
    /// [`PartitionStore::claim`](crate::PartitionStore::claim): candidates by query, then
    /// one transaction that re-checks them by key and takes the first `room` still claimable.
    pub(super) async fn claim_batch(
        &self,
        runner: &str,
        room: usize,
        lease_duration: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        let room = room.min(CLAIM_BATCH);
        if room == 0 {
            return Ok(Vec::new());
        }
        let candidates = self.candidates(runner, room, lease_duration).await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let request = Arc::new(ClaimRequest {
            table: self.table.clone(),
            leases: self.leases.clone(),
            live_sql: format!(
                "SELECT RunnerId FROM {} WHERE RunnerId IN UNNEST(@owners) AND HeartbeatAt >= \
                   TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL {} MILLISECOND)",
                self.runners,
                lease_duration.as_millis()
            ),
            runner: runner.to_owned(),
            candidates,
            room,
        });
        let (commit, claimed) = self
            .retrying(|| {
                self.client.read_write_transaction_with_option(
                    |tx| {
                        let request = Arc::clone(&request);
                        Box::pin(async move {
                            let locked = read_locked(tx, &request).await?;
                            let plan = request.plan(locked)?;
                            tx.buffer_write(plan.mutations);
                            Ok::<_, ClientError>(plan.claimed)
                        })
                    },
                    self.transaction("screamer-claim"),
                )
            })
            .await?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut claims = claimed
            .iter()
            .map(|(row, epoch)| {
                let mut partition = self.decode(row)?;
                if partition.state == PartitionState::Created {
                    partition.state = PartitionState::Scheduled;
                    partition.times.scheduled_at = commit_timestamp(&commit);
                }
                let lease = Lease {
                    token: partition.token.clone(),
                    epoch: Epoch::new(*epoch),
                };
                Ok(Claim { partition, lease })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        claims.sort_by_key(|c| c.partition.start);
        Ok(claims)
    }

    /// Up to `room` + [`CLAIM_SPARE`] claimable partitions, by a query that locks nothing.
    /// Never `runner`'s own (see [`lease_is_free`]). Oldest first; among partitions of one
    /// age (siblings of a split, a fresh table) each runner prefers a different order, so
    /// runners claiming at once rarely want the same rows.
    async fn candidates(
        &self,
        runner: &str,
        room: usize,
        lease_duration: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let mut stmt = Statement::new(format!(
            "SELECT p.PartitionToken FROM {p} \
             LEFT JOIN {l} AS l ON l.PartitionToken = p.PartitionToken \
             LEFT JOIN {r} AS r ON r.RunnerId = l.Owner \
             WHERE {ACTIVE} AND {free} AND (l.Owner IS NULL OR l.Owner != @runner) \
             ORDER BY p.StartTimestamp, FARM_FINGERPRINT(CONCAT(p.PartitionToken, @runner)) \
             LIMIT {limit}",
            limit = room + CLAIM_SPARE,
            p = self.partitions_sql(),
            l = self.leases,
            r = self.runners,
            free = Self::free_lease_sql(lease_duration),
        ));
        stmt.add_param("runner", &runner);
        self.query(stmt)
            .await?
            .iter()
            .map(|r| r.column::<String>(0).map_err(|e| self.corrupt(e)))
            .collect()
    }
}

/// What one claim transaction works on.
struct ClaimRequest {
    table: String,
    leases: String,
    /// Which of `@owners` heartbeat within the lease duration, by Spanner's clock.
    live_sql: String,
    runner: String,
    /// In order of preference.
    candidates: Vec<String>,
    room: usize,
}

/// What the transaction read (and so locked) about the candidates.
struct Locked {
    partitions: Vec<Row>,
    /// Owner and epoch of each candidate's lease row.
    owners: HashMap<String, (Option<String>, i64)>,
    /// Owners (other than the claimer) that are live.
    live: HashSet<String>,
    /// Parents of CREATED candidates that have not finished.
    unfinished: HashSet<String>,
}

/// Reads the candidates, their leases, their live owners and the parents of the CREATED
/// ones, by key: the claim locks only those rows.
async fn read_locked(
    tx: &mut ReadWriteTransaction,
    request: &ClaimRequest,
) -> Result<Locked, ClientError> {
    let candidates = keys(request.candidates.iter());
    let partitions = read_all(
        tx.read(&request.table, PARTITION_COLUMNS, candidates.clone())
            .await?,
    )
    .await?;
    let mut owners: HashMap<String, (Option<String>, i64)> = HashMap::new();
    let lease_columns = ["PartitionToken", "Owner", "Epoch"];
    for row in read_all(tx.read(&request.leases, &lease_columns, candidates).await?).await? {
        owners.insert(row.column(0)?, (row.column(1)?, row.column(2)?));
    }
    let others: Vec<String> = owners
        .values()
        .filter_map(|(o, _)| o.clone())
        .filter(|o| *o != request.runner)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut stmt = Statement::new(request.live_sql.as_str());
    stmt.add_param("owners", &others);
    let live = read_all(tx.query(stmt).await?)
        .await?
        .iter()
        .map(|r| r.column(0))
        .collect::<Result<_, _>>()?;
    let mut parents = HashSet::new();
    for row in &partitions {
        if row.column_by_name::<String>("State")? == PartitionState::Created.as_str() {
            parents.extend(row.column_by_name::<Vec<String>>("ParentTokens")?);
        }
    }
    // A parent no longer in the table finished long ago (finished rows are deleted after a
    // day).
    let parents = if parents.is_empty() {
        Vec::new()
    } else {
        let columns = ["PartitionToken", "State"];
        read_all(tx.read(&request.table, &columns, keys(&parents)).await?).await?
    };
    let unfinished = parents
        .iter()
        .filter(|r| {
            r.column::<String>(1)
                .is_ok_and(|s| s != PartitionState::Finished.as_str())
        })
        .map(|r| r.column(0))
        .collect::<Result<_, _>>()?;
    Ok(Locked {
        partitions,
        owners,
        live,
        unfinished,
    })
}

/// What a claim transaction writes, and the rows it claimed with their new epochs.
struct Plan {
    mutations: Vec<Mutation>,
    claimed: Vec<(Row, i64)>,
}

impl ClaimRequest {
    /// The first `room` candidates still claimable, in order of preference, with their new
    /// epochs, and the mutations that claim them.
    fn plan(&self, locked: Locked) -> Result<Plan, ClientError> {
        let Locked {
            mut partitions,
            owners,
            live,
            unfinished,
        } = locked;
        partitions.sort_by_cached_key(|row| {
            let token = row.column_by_name::<String>("PartitionToken").ok();
            self.candidates
                .iter()
                .position(|c| Some(c) == token.as_ref())
        });
        let mut claimed = Vec::new();
        let mut mutations = Vec::new();
        for row in partitions {
            if claimed.len() == self.room {
                break;
            }
            let token: String = row.column_by_name("PartitionToken")?;
            let state = PartitionState::parse(&row.column_by_name::<String>("State")?);
            let parents: Vec<String> = row.column_by_name("ParentTokens")?;
            let (owner, epoch) = owners.get(&token).cloned().unwrap_or((None, 0));
            let active = state
                .is_some_and(|s| s.is_active(|| parents.iter().all(|p| !unfinished.contains(p))));
            if !(active && lease_is_free(owner.as_deref(), &self.runner, |o| live.contains(o))) {
                continue;
            }
            mutations.push(insert_or_update(
                &self.leases,
                &["PartitionToken", "Owner", "Epoch", "ClaimedAt"],
                &[&token, &self.runner, &(epoch + 1), &CommitTimestamp::new()],
            ));
            if state == Some(PartitionState::Created) {
                mutations.push(update(
                    &self.table,
                    &["PartitionToken", "State", "ScheduledAt"],
                    &[
                        &token,
                        &PartitionState::Scheduled.as_str(),
                        &CommitTimestamp::new(),
                    ],
                ));
            }
            claimed.push((row, epoch + 1));
        }
        Ok(Plan { mutations, claimed })
    }
}
