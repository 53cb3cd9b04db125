//! The client side of the sequence rule, as a pure struct: deliver in seq
//! order, drop duplicates, and say when a gap must be pulled.
use std::collections::BTreeMap;

use im_proto::client::Message;

/// Tracks the highest contiguous sequence a device holds.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    last: u64,
    /// Messages after a gap, waiting for the gap to be filled.
    ahead: BTreeMap<u64, Message>,
}

/// What to do after offering messages.
#[derive(Debug, Default, PartialEq)]
pub struct Offered {
    /// Messages now deliverable, in seq order, each exactly once.
    pub ready: Vec<Message>,
    /// A gap after this seq must be pulled before `ahead` can be shown.
    pub pull_after: Option<u64>,
    pub duplicates: usize,
}

impl SeqTracker {
    pub fn new(last: u64) -> Self {
        SeqTracker {
            last,
            ahead: BTreeMap::new(),
        }
    }

    /// Highest contiguous seq delivered (what to ACK and pull after).
    pub fn last(&self) -> u64 {
        self.last
    }

    pub fn offer(&mut self, messages: impl IntoIterator<Item = Message>) -> Offered {
        let mut out = Offered::default();
        for m in messages {
            if m.seq <= self.last || self.ahead.contains_key(&m.seq) {
                out.duplicates += 1;
            } else {
                self.ahead.insert(m.seq, m);
            }
        }
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() != self.last + 1 {
                break;
            }
            self.last += 1;
            out.ready.push(entry.remove());
        }
        if !self.ahead.is_empty() {
            out.pull_after = Some(self.last);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(seq: u64) -> Message {
        Message {
            seq,
            ..Default::default()
        }
    }

    fn seqs(v: &[Message]) -> Vec<u64> {
        v.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn in_order_duplicates_and_gaps() {
        let mut t = SeqTracker::new(0);
        let o = t.offer([m(1), m(2)]);
        assert_eq!(seqs(&o.ready), vec![1, 2]);
        assert_eq!(o.pull_after, None);
        let o = t.offer([m(2), m(5)]);
        assert_eq!(o.duplicates, 1);
        assert!(o.ready.is_empty());
        assert_eq!(o.pull_after, Some(2));
        // The pull fills 3..=5; 5 is already held and counts as a duplicate.
        let o = t.offer([m(3), m(4), m(5)]);
        assert_eq!(seqs(&o.ready), vec![3, 4, 5]);
        assert_eq!(o.duplicates, 1);
        assert_eq!(o.pull_after, None);
        assert_eq!(t.last(), 5);
    }
}
