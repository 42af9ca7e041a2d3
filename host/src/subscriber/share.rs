//! How many partitions a runner should claim or give up: pure arithmetic over what it holds
//! and the [`Load`] the store reports, so the rules can be tested without a store.
//!
//! Rules: a runner holds at most `max_connections`; with rebalancing, at most its fair share
//! (taking more would only be given back at the next rebalancing). Above its share it
//! releases the excess. At its share, it yields one partition while another live runner is
//! two or more below its own share (else the spread never shrinks to one: nobody is above
//! the rounded-up share to give), and until the next rebalancing it then claims one below its
//! share while a runner is still underloaded, so it does not take the partition back.

use crate::partition::Load;

/// What this runner holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Holding {
    pub max_connections: usize,
    /// Partitions with a reader, including those being released.
    pub held: usize,
    /// Partitions with a reader that it keeps (not being released).
    pub keeping: usize,
}

/// What a rebalancing decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Release {
    /// Partitions to drain and give up.
    pub count: usize,
    /// The one partition given up at the share for an underloaded runner: claims stay one
    /// below the share while someone is underloaded.
    pub yielding: bool,
}

impl Holding {
    /// Room without rebalancing: up to `max_connections`.
    pub fn room(&self) -> usize {
        self.max_connections.saturating_sub(self.held)
    }

    /// Room with rebalancing: up to the fair share (one below it after `yielding`, while a
    /// runner is underloaded), and never more than there are partitions without a live owner.
    pub fn room_within_share(&self, load: &Load, yielding: bool) -> usize {
        // Staying below only while someone is underloaded: else the last unowned partitions
        // would wait for the next rebalancing (measured: a 30 s tail after a failover of
        // 10,000 partitions).
        let target = load
            .fair_share(self.max_connections)
            .saturating_sub(usize::from(yielding && load.underloaded()));
        self.room()
            .min(target.saturating_sub(self.keeping))
            .min(load.unowned_partitions)
    }

    /// What to release at a rebalancing.
    pub fn release(&self, load: &Load) -> Release {
        let fair = load.fair_share(self.max_connections);
        let excess = self.keeping.saturating_sub(fair);
        if excess > 0 {
            return Release {
                count: excess,
                yielding: false,
            };
        }
        let yielding = fair > 0 && self.keeping == fair && load.underloaded();
        Release {
            count: usize::from(yielding),
            yielding,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::RunnerLoad;

    fn load(held: &[usize], partitions: usize) -> Load {
        let runners: Vec<RunnerLoad> = held
            .iter()
            .map(|&held| RunnerLoad {
                capacity: 400,
                held,
            })
            .collect();
        let owned: usize = held.iter().sum();
        Load {
            runners,
            active_partitions: partitions,
            unowned_partitions: partitions.saturating_sub(owned),
        }
    }

    fn holding(held: usize) -> Holding {
        Holding {
            max_connections: 400,
            held,
            keeping: held,
        }
    }

    #[test]
    fn room_is_capped_by_capacity_share_and_unowned_partitions() {
        let small = Holding {
            max_connections: 3,
            ..holding(1)
        };
        assert_eq!(small.room(), 2);
        // 12 partitions, 3 runners: share 4; this runner (first) holds 1, 6 are unowned.
        let l = load(&[1, 5, 0], 12);
        assert_eq!(holding(1).room_within_share(&l, false), 3);
        assert_eq!(small.room_within_share(&l, false), 2);
        // Only 2 without an owner.
        let l = load(&[1, 5, 4], 12);
        assert_eq!(holding(1).room_within_share(&l, false), 2);
        // Partitions being released still count against capacity, not against the share.
        let releasing = Holding {
            max_connections: 400,
            held: 6,
            keeping: 2,
        };
        assert_eq!(releasing.room_within_share(&load(&[6, 0, 0], 12), false), 2);
    }

    #[test]
    fn a_yielding_runner_stays_below_its_share_only_while_someone_is_underloaded() {
        // Share 5: runners at 5, 5, 2 (the last is underloaded).
        let l = load(&[4, 5, 2], 15);
        assert_eq!(holding(4).room_within_share(&l, true), 0);
        assert_eq!(holding(4).room_within_share(&l, false), 1);
        // Nobody underloaded any more: yielding changes nothing.
        let l = load(&[4, 5, 4], 15);
        assert_eq!(holding(4).room_within_share(&l, true), 1);
    }

    #[test]
    fn release_gives_the_excess_or_yields_one_for_an_underloaded_runner() {
        assert_eq!(
            holding(9).release(&load(&[9, 3, 0], 12)),
            Release {
                count: 5,
                yielding: false
            }
        );
        // At the share (5) while another runner is 3 below: yield one.
        assert_eq!(
            holding(5).release(&load(&[5, 5, 2], 15)),
            Release {
                count: 1,
                yielding: true
            }
        );
        // At the share, spread of one: nothing.
        assert_eq!(
            holding(5).release(&load(&[5, 5, 4], 14)),
            Release::default()
        );
        // Below the share: nothing.
        assert_eq!(
            holding(3).release(&load(&[3, 6, 6], 15)),
            Release::default()
        );
    }
}
