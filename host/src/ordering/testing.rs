//! Helpers for tests of whole transactions: records of transactions spread over partitions,
//! and the check that an output is whole transactions in commit order.

use crate::partition::PartitionToken;
use crate::record::DataChangeRecord;
use crate::source::ScriptedTransaction;
use crate::testing::{at, data};

pub(crate) fn p(name: &str) -> PartitionToken {
    PartitionToken::from(name)
}

/// A transaction writing one row per entry of `partitions`, its i-th record read from the
/// i-th partition.
pub(crate) fn spread(
    id: &str,
    second: u64,
    partitions: &[&PartitionToken],
) -> (ScriptedTransaction, Vec<(PartitionToken, DataChangeRecord)>) {
    let t = (0..partitions.len()).fold(ScriptedTransaction::new(id, at(second)), |t, i| {
        t.insert("Accounts", i as i64)
    });
    let records = partitions
        .iter()
        .enumerate()
        .map(|(i, part)| ((*part).clone(), data(t.record(i, part))))
        .collect();
    (t, records)
}

/// Asserts that `records` are the transactions `expected` (ids), each whole, contiguous,
/// in record-sequence order, in that order.
pub(crate) fn assert_whole_in_order(records: &[DataChangeRecord], expected: &[&str]) {
    let mut runs: Vec<(String, Vec<&DataChangeRecord>)> = Vec::new();
    for r in records {
        match runs.last_mut() {
            Some((id, run)) if *id == r.server_transaction_id => run.push(r),
            _ => runs.push((r.server_transaction_id.clone(), vec![r])),
        }
    }
    let ids: Vec<&str> = runs.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids, expected,
        "transactions whole, contiguous and in commit order"
    );
    for (id, run) in &runs {
        let sequences: Vec<&str> = run.iter().map(|r| r.record_sequence.as_str()).collect();
        let mut sorted = sequences.clone();
        sorted.sort();
        assert_eq!(sequences, sorted, "{id}: records in sequence order");
        assert_eq!(
            run.len() as i64,
            run[0].number_of_records_in_transaction,
            "{id}: every record, once"
        );
    }
}
