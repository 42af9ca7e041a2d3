//! Snapshot: the rows that exist when a run starts, read before the stream (`--snapshot`).
//!
//! Place in the flow: ahead of the change stream. With `--snapshot initial` or `only`, the
//! first runner of an empty partition store plans the snapshot: every table and column the
//! change stream watches, read consistently at the start timestamp T, cut into [`Chunk`]s
//! of primary-key ranges (the source plans them: `ChangeSource::plan_snapshot`). Each chunk
//! is a partition of the store whose token names its key range, so chunks are claimed,
//! leased, fenced, rebalanced and taken over exactly like change stream partitions, and a
//! reader reads one as a query that ends. The stream's root partition names every chunk as
//! its parent: it starts only once the whole snapshot is acknowledged, at T + 1 ns.
//!
//! Invariants:
//! - every row of a watched table at T is delivered once as a snapshot record
//!   (`mod_type` INSERT, `snapshot: true`, committed "at" T), then every change after T once:
//!   per key, the snapshot row comes before its changes, and a change at or before T never
//!   comes at all;
//! - all records of a chunk carry T, so a reader's drain (graceful stop, rebalancing) reads
//!   the chunk to its end: a graceful stop repeats nothing. A crash repeats at most the
//!   chunks that were not finished;
//! - the plan is seeded in one transaction with the root, and only into an empty store: a
//!   later run on the same metadata table never snapshots again.

use std::fmt;

use serde_json::Value;

use crate::partition::{NewPartition, PartitionToken};
use crate::timestamp::Timestamp;

/// What a run does with the rows that exist before its start (`--snapshot`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Only changes after the start.
    #[default]
    Never,
    /// The first run on a metadata table reads the watched rows at the start, then streams.
    Initial,
    /// The snapshot alone: the run ends once every row is delivered (an export).
    Only,
}

impl std::str::FromStr for SnapshotMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "never" => Ok(SnapshotMode::Never),
            "initial" => Ok(SnapshotMode::Initial),
            "only" => Ok(SnapshotMode::Only),
            other => Err(format!(
                "unknown snapshot mode {other:?}: expected never, initial or only"
            )),
        }
    }
}

impl fmt::Display for SnapshotMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotMode::Never => "never",
            SnapshotMode::Initial => "initial",
            SnapshotMode::Only => "only",
        })
    }
}

/// Rows per chunk by default (`--snapshot-chunk-rows`): a chunk reads in well under a
/// second, so a stopping reader finishes it within its drain timeout, and a crash repeats
/// little.
pub const DEFAULT_CHUNK_ROWS: usize = 5_000;

/// Chunks one runner reads at once: it claims no more while the snapshot lasts, so memory
/// and the load on Spanner stay bounded whatever `--max-connections` allows, and runners
/// that start later find chunks left to share.
pub const CHUNKS_AT_ONCE: usize = 4;

/// The `server_transaction_id` of every snapshot record: no transaction wrote it, the
/// snapshot read it.
pub const SNAPSHOT_TRANSACTION: &str = "snapshot";

/// One part of the snapshot: the rows of `table` whose primary key is in `[start, end)`
/// (`None`: unbounded on that side), as a partition of the store.
///
/// The token spells it out (`snapshot/Singers/3 5000 [["1000"],["2000"]]`): table, index,
/// rows, and the key bounds as Spanner's JSON values of the key columns, in key order.
/// Change stream tokens never start with `snapshot/`, and a token needs no other table to be
/// read.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The table, as the information schema names it.
    pub table: String,
    /// Its place among the table's chunks, for people reading tokens.
    pub index: usize,
    /// How many rows it had at the snapshot's time, for progress.
    pub rows: u64,
    /// The first key of the chunk (inclusive); `None`: from the table's first.
    pub start: Option<Vec<Value>>,
    /// The first key past the chunk (exclusive); `None`: to the table's last.
    pub end: Option<Vec<Value>>,
}

const PREFIX: &str = "snapshot/";

impl Chunk {
    /// Whether `token` names a snapshot chunk rather than a change stream partition.
    pub fn is_chunk(token: &PartitionToken) -> bool {
        token.as_str().starts_with(PREFIX)
    }

    /// The partition token that names this chunk in a store.
    pub fn token(&self) -> PartitionToken {
        let bounds = Value::Array(vec![
            self.start.clone().map_or(Value::Null, Value::Array),
            self.end.clone().map_or(Value::Null, Value::Array),
        ]);
        format!(
            "{PREFIX}{}/{} {} {bounds}",
            self.table, self.index, self.rows
        )
        .into()
    }

    /// The chunk a token names; `None` for a change stream partition or a token this
    /// version cannot read.
    pub fn parse(token: &PartitionToken) -> Option<Chunk> {
        let rest = token.as_str().strip_prefix(PREFIX)?;
        let (name, rest) = rest.split_once(' ')?;
        let (rows, bounds) = rest.split_once(' ')?;
        let (table, index) = name.rsplit_once('/')?;
        let bound = |v: &Value| match v {
            Value::Null => Some(None),
            Value::Array(key) => Some(Some(key.clone())),
            _ => None,
        };
        match serde_json::from_str::<Value>(bounds).ok()? {
            Value::Array(b) if b.len() == 2 => Some(Chunk {
                table: table.to_owned(),
                index: index.parse().ok()?,
                rows: rows.parse().ok()?,
                start: bound(&b[0])?,
                end: bound(&b[1])?,
            }),
            _ => None,
        }
    }
}

/// What to seed into an empty store for a snapshot at `at` of `chunks`: the chunks, and with
/// [`SnapshotMode::Initial`] the stream's `root` made to wait for them and to start right
/// after `at`.
pub fn seeds(
    mode: SnapshotMode,
    at: Timestamp,
    chunks: &[Chunk],
    root: NewPartition,
) -> Vec<NewPartition> {
    let mut seeds: Vec<NewPartition> = chunks
        .iter()
        .map(|c| NewPartition {
            token: c.token(),
            parents: Vec::new(),
            start: at,
            end: Some(at),
            heartbeat_millis: root.heartbeat_millis,
        })
        .collect();
    match mode {
        SnapshotMode::Never => vec![root],
        SnapshotMode::Only => seeds,
        SnapshotMode::Initial => {
            let parents = seeds.iter().map(|s| s.token.clone()).collect();
            seeds.push(NewPartition {
                parents,
                start: after(at),
                ..root
            });
            seeds
        }
    }
}

/// A snapshot's size and how much of it is done, from the store's partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Plan {
    /// Chunks in the store.
    pub chunks: usize,
    /// Of those, the ones FINISHED.
    pub chunks_finished: usize,
    /// Rows of every chunk, as planned.
    pub rows: u64,
    /// Rows of the finished chunks.
    pub rows_finished: u64,
}

impl Plan {
    /// The plan among `partitions` (token and whether finished); `None` without chunks.
    pub fn of<'a>(
        partitions: impl IntoIterator<Item = (&'a PartitionToken, bool)>,
    ) -> Option<Plan> {
        let mut plan = Plan::default();
        for (token, finished) in partitions {
            let Some(chunk) = Chunk::parse(token) else {
                continue;
            };
            plan.chunks += 1;
            plan.rows += chunk.rows;
            if finished {
                plan.chunks_finished += 1;
                plan.rows_finished += chunk.rows;
            }
        }
        (plan.chunks > 0).then_some(plan)
    }
}

/// Where the stream starts after a snapshot at `at`: change stream starts are inclusive, and
/// the snapshot holds every commit at or before `at`.
pub fn after(at: Timestamp) -> Timestamp {
    at.saturating_add(std::time::Duration::from_nanos(1))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn chunk_tokens_round_trip_and_read_as_chunks() {
        let chunk = Chunk {
            table: "Singers".into(),
            index: 3,
            rows: 5000,
            start: Some(vec![json!("1000"), Value::Null]),
            end: None,
        };
        let token = chunk.token();
        assert_eq!(
            token.as_str(),
            r#"snapshot/Singers/3 5000 [["1000",null],null]"#
        );
        assert!(Chunk::is_chunk(&token));
        assert_eq!(Chunk::parse(&token), Some(chunk));
        let stream = PartitionToken::from("__8BAYEGGhU=");
        assert!(!Chunk::is_chunk(&stream));
        assert_eq!(Chunk::parse(&stream), None);
        assert_eq!(Chunk::parse(&"snapshot/T/x 1 [null,null]".into()), None);
        assert_eq!(Chunk::parse(&"snapshot/T/1 [null,null]".into()), None);
    }

    #[test]
    fn an_initial_snapshot_holds_the_root_back_until_every_chunk_is_done() {
        let at = Timestamp::from_unix_nanos(5_000).unwrap();
        let chunks: Vec<Chunk> = (0..2)
            .map(|index| Chunk {
                table: "T".into(),
                index,
                rows: 1,
                start: None,
                end: None,
            })
            .collect();
        let root = NewPartition {
            token: PartitionToken::root(),
            parents: vec![],
            start: at,
            end: None,
            heartbeat_millis: 3000,
        };
        let seeded = seeds(SnapshotMode::Initial, at, &chunks, root.clone());
        assert_eq!(seeded.len(), 3);
        assert!(
            seeded[..2]
                .iter()
                .all(|c| c.start == at && c.end == Some(at))
        );
        assert_eq!(seeded[2].token, PartitionToken::root());
        assert_eq!(
            seeded[2].parents,
            vec![chunks[0].token(), chunks[1].token()]
        );
        assert_eq!(seeded[2].start.unix_nanos(), 5_001);
        assert_eq!(
            seeds(SnapshotMode::Only, at, &chunks, root.clone()).len(),
            2
        );
        assert_eq!(
            seeds(SnapshotMode::Never, at, &chunks, root.clone()),
            vec![root]
        );
    }
}
