//! What the host read about each record: its [`Origin`] (commit timestamp, partition,
//! transaction), asked for when a plugin needs it.
//!
//! The records a plugin is handed carry only what it may change; their origins stay with
//! the host, which lowers one into the plugin only when asked (`batch.origin-of` in the WIT).
//! A plugin that never asks does not import it and pays nothing. Every record a plugin
//! returns or emits for an input record has that input's origin: a plugin cannot change it.
//!
//! On the host target (unit tests) there is no host to ask: [`set_for_tests`] says what
//! the origins of the next batch are.

use std::cell::{Cell, RefCell};

use crate::{Origin, Timestamp};

thread_local! {
    // The index of the record `Plugin::process` is working on, while it does.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
    // Unit tests' stand-in for the host.
    static TEST_ORIGINS: RefCell<Vec<Origin>> = const { RefCell::new(Vec::new()) };
}

/// The origin of the record [`Plugin::process`](crate::Plugin::process) is processing; none
/// outside it (in `new`, or in an overridden `process_batch`: use [`origin_at`] there).
pub fn origin() -> Option<Origin> {
    CURRENT.with(Cell::get).and_then(origin_at)
}

/// The origin of record `index` (from 0) of the batch being processed; none past its end.
pub fn origin_at(index: usize) -> Option<Origin> {
    let index = u32::try_from(index).ok()?;
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::screamer::plugin::batch::origin_of(index);
    #[cfg(not(target_arch = "wasm32"))]
    TEST_ORIGINS.with(|o| o.borrow().get(index as usize).cloned())
}

/// Runs `process` as the processing of record `index`.
pub(crate) fn processing<R>(index: usize, process: impl FnOnce() -> R) -> R {
    let outside = CURRENT.with(|c| c.replace(Some(index)));
    let result = process();
    CURRENT.with(|c| c.set(outside));
    result
}

/// Unit tests (host target only): the origins of the batch a test hands to the plugin, by
/// index. A test that calls `process` directly gets the first one from [`origin`].
#[cfg(not(target_arch = "wasm32"))]
pub fn set_for_tests(origins: Vec<Origin>) {
    TEST_ORIGINS.with(|o| *o.borrow_mut() = origins);
    CURRENT.with(|c| c.set(Some(0)));
}

impl Origin {
    /// Whether the record is a row of the host's snapshot (`--snapshot`), read as it was
    /// at the snapshot's time, rather than a change: its partition token names a snapshot
    /// chunk (`snapshot/TABLE/N ...`).
    pub fn is_snapshot(&self) -> bool {
        self.partition_token.starts_with("snapshot/")
    }

    /// An origin committed at `commit_timestamp`, its other fields as for a record of a
    /// one-record transaction in one partition (for tests).
    pub fn at(commit_timestamp: Timestamp) -> Self {
        Origin {
            partition_token: String::new(),
            commit_timestamp,
            record_sequence: "00000000".into(),
            server_transaction_id: String::new(),
            is_last_record_in_transaction_in_partition: true,
            value_capture_type: "OLD_AND_NEW_VALUES".into(),
            number_of_records_in_transaction: 1,
            number_of_partitions_in_transaction: 1,
            transaction_tag: String::new(),
            is_system_transaction: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_rows_are_told_by_their_chunk() {
        let mut origin = Origin::at(Timestamp {
            seconds: 0,
            nanos: 0,
        });
        assert!(!origin.is_snapshot());
        origin.partition_token = r#"snapshot/Singers/0 12 [null,null]"#.into();
        assert!(origin.is_snapshot());
    }
}
