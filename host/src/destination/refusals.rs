//! Finding the records a destination refuses for good, without reordering the rest.
//!
//! Shared by the destinations that send a batch in requests of several records: a request
//! the destination refuses as a whole (one record too large, say) is split in halves, sent
//! again in order, down to single records, so that only the records it refuses alone are
//! dead-lettered. Records before a refused one are never sent after it.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::Range;

use super::{Batch, DestinationError};

/// What became of one request once the destination stopped retrying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sent {
    Accepted,
    /// Refused for good, for this reason (one record or more of the request: halves are
    /// tried to find which).
    Refused(String),
    /// Every record of the request refused for good, for a reason that holds for each (a
    /// topic that does not exist): nothing to split. Only Pub/Sub says so.
    #[cfg_attr(not(feature = "pubsub"), allow(dead_code))]
    RefusedAll(String),
}

/// Sends the records of `batch` in the requests `requests` (consecutive ranges covering it,
/// in order), each by `send`; see the module docs.
pub(crate) async fn isolating_refusals<F, Fut>(
    destination: &str,
    batch: &Batch,
    requests: impl IntoIterator<Item = Range<usize>>,
    mut send: F,
) -> Result<(), DestinationError>
where
    F: FnMut(Range<usize>) -> Fut,
    Fut: Future<Output = Sent>,
{
    // Halves of a refused range go back to the front, first half first: order holds.
    let mut pending: VecDeque<Range<usize>> = requests.into_iter().collect();
    let (mut refused, mut reasons) = (Vec::new(), Vec::new());
    while let Some(range) = pending.pop_front() {
        match send(range.clone()).await {
            Sent::Accepted => {}
            Sent::Refused(_) if range.len() > 1 => {
                let mid = range.start + range.len() / 2;
                pending.push_front(mid..range.end);
                pending.push_front(range.start..mid);
            }
            Sent::Refused(why) => {
                refused.push(range.start);
                reasons.push(why);
            }
            Sent::RefusedAll(why) => {
                reasons.extend(std::iter::repeat_n(why, range.len()));
                refused.extend(range);
            }
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    Err(DestinationError::Refused {
        destination: destination.to_owned(),
        refused: batch.select(refused),
        reasons,
    })
}

#[cfg(any(feature = "pubsub", feature = "nats"))]
/// Consecutive ranges of `batch` of at most `max_records` records and, but for a single
/// larger record, `max_bytes` payload bytes, each record `i` for which `split_before(i)`
/// holds starting a new one: the requests a protocol's limits allow.
pub(crate) fn requests(
    batch: &Batch,
    max_records: usize,
    max_bytes: usize,
    mut split_before: impl FnMut(usize) -> bool,
) -> impl Iterator<Item = Range<usize>> {
    let sizes: Vec<usize> = batch.messages().map(|m| m.payload.len()).collect();
    let mut messages = sizes.into_iter().enumerate().peekable();
    std::iter::from_fn(move || {
        let (start, first) = messages.next()?;
        let (mut end, mut bytes) = (start + 1, first);
        while let Some(&(i, len)) = messages.peek() {
            if end - start >= max_records || bytes + len > max_bytes || split_before(i) {
                break;
            }
            (end, bytes) = (i + 1, bytes + len);
            messages.next();
        }
        Some(start..end)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(lines: &[&str]) -> Batch {
        let mut b = Batch::default();
        for l in lines {
            b.push(l).unwrap();
        }
        b
    }

    #[cfg(any(feature = "pubsub", feature = "nats"))]
    #[test]
    fn requests_respect_both_limits_and_keep_a_large_record_alone() {
        let b = batch(&["aaaa", "b", "c", "dddddddddddd", "e"]);
        // Payloads are JSON strings: 6, 3, 3, 14, 3 bytes.
        let r: Vec<_> = requests(&b, 2, 10, |_| false).collect();
        assert_eq!(r, [0..2, 2..3, 3..4, 4..5]);
        let r: Vec<_> = requests(&b, 10, 1000, |_| false).collect();
        assert_eq!(r, Vec::from_iter(std::iter::once(0..5)));
        let r: Vec<_> = requests(&b, 10, 1000, |i| i == 2).collect();
        assert_eq!(r, [0..2, 2..5]);
    }

    #[tokio::test]
    async fn only_the_records_refused_alone_are_refused_and_the_rest_go_in_order() {
        let b = batch(&["a", "bad", "c", "d", "bad2", "f"]);
        let sent = std::cell::RefCell::new(Vec::new());
        let result = isolating_refusals("t", &b, [0..3, 3..6], |range| {
            let payloads: Vec<String> = b
                .slice(range)
                .payloads()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            let refused = payloads.iter().any(|p| p.contains("bad"));
            if !refused {
                sent.borrow_mut().extend(payloads);
            }
            async move {
                if refused {
                    Sent::Refused("too bad".into())
                } else {
                    Sent::Accepted
                }
            }
        })
        .await;
        let Err(DestinationError::Refused {
            refused, reasons, ..
        }) = result
        else {
            panic!("expected a refusal");
        };
        assert_eq!(reasons, ["too bad", "too bad"]);
        assert_eq!(refused.as_ndjson(), b"\"bad\"\n\"bad2\"\n");
        assert_eq!(*sent.borrow(), ["\"a\"", "\"c\"", "\"d\"", "\"f\""]);
    }

    #[tokio::test]
    async fn a_request_refused_as_a_whole_is_not_split() {
        let b = batch(&["a", "b", "c", "d"]);
        let calls = std::cell::Cell::new(0);
        let result = isolating_refusals("t", &b, [0..2, 2..4], |range| {
            calls.set(calls.get() + 1);
            async move {
                if range.start == 0 {
                    Sent::RefusedAll("no such topic".into())
                } else {
                    Sent::Accepted
                }
            }
        })
        .await;
        let Err(DestinationError::Refused { refused, .. }) = result else {
            panic!("expected a refusal");
        };
        assert_eq!(refused.as_ndjson(), b"\"a\"\n\"b\"\n");
        assert_eq!(calls.get(), 2, "one call per request, no halves");
    }
}
