//! The reassembly buffer on its own: release by the low watermark, order, duplicates,
//! children, admission. Whole runs are in `subscriber/tests/transactions.rs`.

use super::buffer::Buffer;
use super::testing::{p, spread};
use crate::testing::at;

fn released(buffer: &mut Buffer) -> Vec<String> {
    let out = buffer.release();
    let ids: Vec<String> = out
        .batches
        .iter()
        .flatten()
        .map(|r| r.server_transaction_id.clone())
        .collect();
    for batch in &out.batches {
        buffer.delivered(batch);
    }
    let mut ids = ids;
    ids.dedup();
    ids
}

#[test]
fn a_transaction_over_two_partitions_waits_for_both() {
    let (a, b) = (p("a"), p("b"));
    let mut buffer = Buffer::new(1 << 20);
    buffer.started(&a, at(0));
    buffer.started(&b, at(0));
    let (_, records) = spread("t1", 5, &[&a, &b]);
    buffer.insert(&[records[0].1.clone()]);
    buffer.read_through(&a, at(9));
    assert!(
        released(&mut buffer).is_empty(),
        "b has not been read past 5"
    );
    buffer.read_through(&b, at(4));
    assert!(released(&mut buffer).is_empty());
    assert_eq!(buffer.floor(&a), Some(at(5)), "a's checkpoint stays at t1");
    buffer.insert(&[records[1].1.clone()]);
    buffer.read_through(&b, at(5));
    assert_eq!(released(&mut buffer), ["t1"]);
    assert_eq!(buffer.floor(&a), None);
    assert_eq!(buffer.bytes(), 0);
}

#[test]
fn equal_commit_timestamps_come_out_by_transaction_id_and_read_again_records_are_dropped() {
    let a = p("a");
    let mut buffer = Buffer::new(1 << 20);
    buffer.started(&a, at(0));
    let (_, y) = spread("y", 5, &[&a]);
    let (_, x) = spread("x", 5, &[&a]);
    let (_, z) = spread("z", 6, &[&a]);
    for (_, r) in [&y[0], &x[0], &z[0], &y[0]] {
        buffer.insert(std::slice::from_ref(r));
    }
    buffer.read_through(&a, at(6));
    assert_eq!(released(&mut buffer), ["x", "y", "z"]);
    // A restarted query reads them again: they were released already.
    buffer.insert(&[x[0].1.clone(), z[0].1.clone()]);
    buffer.read_through(&a, at(7));
    assert!(released(&mut buffer).is_empty());
}

#[test]
fn an_announced_child_holds_the_release_at_its_start_and_an_ended_parent_drains() {
    let (parent, child) = (p("parent"), p("child"));
    let mut buffer = Buffer::new(1 << 20);
    buffer.started(&parent, at(0));
    let (_, at_end) = spread("last", 8, &[&parent]);
    buffer.insert(&[at_end[0].1.clone()]);
    buffer.announced(&child, at(8));
    buffer.ended(&parent, at(8));
    assert!(!buffer.drained(&parent), "its record is held");
    // The child stands at the parent's end: the parent's records there go.
    assert_eq!(released(&mut buffer), ["last"]);
    assert!(buffer.drained(&parent));
    buffer.started(&child, at(8));
    let (_, later) = spread("later", 9, &[&child]);
    buffer.insert(&[later[0].1.clone()]);
    assert!(
        released(&mut buffer).is_empty(),
        "the child has not read past 9"
    );
    buffer.read_through(&child, at(9));
    assert_eq!(released(&mut buffer), ["later"]);
}

#[test]
fn a_full_buffer_admits_only_the_slowest_partition() {
    let (hot, slow) = (p("hot"), p("slow"));
    let (_, big) = spread("big", 5, &[&hot]);
    let size = super::buffer::size(&big[0].1);
    let mut buffer = Buffer::new(size);
    buffer.started(&hot, at(0));
    buffer.started(&slow, at(0));
    assert!(
        buffer.admits(&hot, 10 * size),
        "an empty buffer takes anything"
    );
    buffer.insert(&[big[0].1.clone()]);
    buffer.read_through(&hot, at(6));
    assert!(!buffer.admits(&hot, size), "full, and hot is ahead");
    assert!(buffer.admits(&slow, size), "the slowest always proceeds");
}
