//! Read-diffusion groups on the client, as a pure struct: one cursor per
//! group, each message (`seq` 0, `group_seq` set) handed out exactly once.
use std::collections::{BTreeSet, HashMap};

use im_proto::client::Message;

#[derive(Debug, Default, Clone)]
struct Cursor {
    /// Every group sequence up to here has been seen.
    last: u64,
    /// Seen sequences above `last` (a push overtook another, or a gap).
    ahead: BTreeSet<u64>,
}

/// Per-group cursors of read-diffusion messages.
#[derive(Debug, Default, Clone)]
pub struct GroupCursors {
    groups: HashMap<i64, Cursor>,
}

impl GroupCursors {
    /// Whether a message is a read-diffusion group message (not in the inbox).
    pub fn is_group_seq(m: &Message) -> bool {
        m.seq == 0 && m.group_seq > 0
    }

    /// Starts (or moves forward) a group's cursor, e.g. from `max_group_seq`.
    pub fn set(&mut self, group: i64, last: u64) {
        let c = self.groups.entry(group).or_default();
        if last > c.last {
            c.last = last;
            c.ahead = c.ahead.split_off(&(last + 1));
            Self::compact(c);
        }
    }

    /// The highest group sequence up to which everything was seen.
    pub fn last(&self, group: i64) -> u64 {
        self.groups.get(&group).map_or(0, |c| c.last)
    }

    /// Groups with a gap (a later sequence seen, an earlier one missing),
    /// with the cursor to pull after.
    pub fn gaps(&self) -> Vec<(i64, u64)> {
        self.groups
            .iter()
            .filter(|(_, c)| !c.ahead.is_empty())
            .map(|(g, c)| (*g, c.last))
            .collect()
    }

    /// True the first time a message is offered, false for a duplicate. A
    /// group without a cursor starts at this message (like a connection
    /// starting at the newest inbox message); [`Self::set`] starts earlier.
    pub fn offer(&mut self, m: &Message) -> bool {
        let c = self.groups.entry(m.to).or_insert_with(|| Cursor {
            last: m.group_seq.saturating_sub(1),
            ahead: BTreeSet::new(),
        });
        if m.group_seq <= c.last || !c.ahead.insert(m.group_seq) {
            return false;
        }
        Self::compact(c);
        true
    }

    fn compact(c: &mut Cursor) {
        while c.ahead.first() == Some(&(c.last + 1)) {
            c.ahead.pop_first();
            c.last += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(group: i64, group_seq: u64) -> Message {
        Message {
            to: group,
            group_seq,
            ..Default::default()
        }
    }

    #[test]
    fn exactly_once_per_group_in_any_order() {
        let mut g = GroupCursors::default();
        g.set(7, 10);
        assert!(!g.offer(&m(7, 10)));
        assert!(g.offer(&m(7, 12)));
        assert_eq!(g.gaps(), vec![(7, 10)]);
        assert!(g.offer(&m(7, 11)));
        assert!(g.gaps().is_empty());
        assert!(!g.offer(&m(7, 12)));
        assert_eq!(g.last(7), 12);
        assert!(g.offer(&m(8, 40)));
        assert_eq!(
            g.last(8),
            40,
            "an unknown group starts at its first message"
        );
        assert!(g.gaps().is_empty());
        assert!(GroupCursors::is_group_seq(&m(8, 1)));
    }
}
