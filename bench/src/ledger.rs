//! The exactly-once check, as plain data: what each sender had acknowledged
//! (SENT) and what each recipient received; no IO, no clocks.
use std::collections::HashMap;

/// A slot not (yet) filled: not acknowledged, or not received.
pub const NONE: u32 = u32::MAX;

/// The client message id of message `n` of sender `sender`.
pub fn msg_id(sender: u32, n: u32) -> String {
    format!("b{sender}-{n}")
}

/// The (sender, n) a bench client message id stands for.
pub fn parse_msg_id(id: &str) -> Option<(u32, u32)> {
    let (s, n) = id.strip_prefix('b')?.split_once('-')?;
    Some((s.parse().ok()?, n.parse().ok()?))
}

/// One sender's messages: when each was acknowledged (ms since the run's start).
#[derive(Debug, Default, Clone)]
pub struct SenderLog {
    acked_ms: Vec<u32>,
}

impl SenderLog {
    /// Numbers the next message.
    pub fn issue(&mut self) -> u32 {
        self.acked_ms.push(NONE);
        (self.acked_ms.len() - 1) as u32
    }

    pub fn acked(&mut self, n: u32, at_ms: u32) {
        if let Some(slot) = self.acked_ms.get_mut(n as usize) {
            *slot = at_ms.min(NONE - 1);
        }
    }

    pub fn issued(&self) -> usize {
        self.acked_ms.len()
    }

    pub fn acked_count(&self) -> usize {
        self.acked_ms.iter().filter(|&&t| t != NONE).count()
    }
}

/// What one recipient received: first arrival (ms) per (sender, n), and every repeat.
#[derive(Debug, Default, Clone)]
pub struct RecipientLog {
    got: HashMap<u32, Vec<u32>>,
    pub duplicates: Vec<(u32, u32)>,
    /// Messages whose client message id is not one of ours.
    pub foreign: usize,
}

impl RecipientLog {
    pub fn record(&mut self, sender: u32, n: u32, at_ms: u32) {
        let slots = self.got.entry(sender).or_default();
        let i = n as usize;
        if slots.len() <= i {
            slots.resize(i + 1, NONE);
        }
        if slots[i] == NONE {
            slots[i] = at_ms.min(NONE - 1);
        } else {
            self.duplicates.push((sender, n));
        }
    }

    pub fn received(&self) -> usize {
        self.got
            .values()
            .map(|v| v.iter().filter(|&&t| t != NONE).count())
            .sum()
    }

    fn first(&self, sender: u32, n: u32) -> u32 {
        self.got
            .get(&sender)
            .and_then(|v| v.get(n as usize))
            .copied()
            .unwrap_or(NONE)
    }

    fn count_from(&self, sender: u32) -> usize {
        self.got
            .get(&sender)
            .map(|v| v.iter().filter(|&&t| t != NONE).count())
            .unwrap_or(0)
    }
}

/// The outcome of a run's exactly-once check.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Verdict {
    /// Deliveries expected (acknowledged messages × their recipients).
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Received although never acknowledged to the sender, or not addressed here.
    pub unexpected: u64,
    /// Sends never acknowledged (errors or still pending at the end).
    pub unacked_sends: u64,
    /// A few concrete cases, for the error message.
    pub examples: Vec<String>,
    /// Per delivery: max(ack, receive) in ms since start — when it was complete.
    #[serde(skip)]
    pub completed_ms: Vec<u32>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.unexpected == 0 && self.unacked_sends == 0
    }
}

/// Checks every acknowledged message reached each of its recipients exactly
/// once. `recipients_of(sender)` lists the recipient indexes of a sender.
pub fn verify(
    senders: &[SenderLog],
    recipients: &[RecipientLog],
    recipients_of: impl Fn(usize) -> Vec<usize>,
) -> Verdict {
    let mut v = Verdict::default();
    let example = |v: &mut Verdict, s: String| {
        if v.examples.len() < 10 {
            v.examples.push(s);
        }
    };
    for (s, log) in senders.iter().enumerate() {
        let targets = recipients_of(s);
        for (n, &acked) in log.acked_ms.iter().enumerate() {
            if acked == NONE {
                v.unacked_sends += 1;
                example(&mut v, format!("send b{s}-{n} was never acknowledged"));
                continue;
            }
            for &r in &targets {
                v.expected += 1;
                let got = recipients
                    .get(r)
                    .map(|l| l.first(s as u32, n as u32))
                    .unwrap_or(NONE);
                if got == NONE {
                    v.lost += 1;
                    example(&mut v, format!("b{s}-{n} never reached recipient {r}"));
                } else {
                    v.delivered += 1;
                    v.completed_ms.push(got.max(acked));
                }
            }
        }
        // Received more than was acknowledged (or by someone not addressed).
        for (r, rl) in recipients.iter().enumerate() {
            let got = rl.count_from(s as u32);
            let due = if targets.contains(&r) {
                log.acked_count()
            } else {
                0
            };
            if got > due {
                v.unexpected += (got - due) as u64;
                example(
                    &mut v,
                    format!("recipient {r} got {got} messages of sender {s}, {due} acknowledged"),
                );
            }
        }
    }
    for (r, rl) in recipients.iter().enumerate() {
        v.duplicated += rl.duplicates.len() as u64;
        v.unexpected += rl.foreign as u64;
        if let Some((s, n)) = rl.duplicates.first() {
            example(&mut v, format!("recipient {r} got b{s}-{n} more than once"));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        assert_eq!(parse_msg_id(&msg_id(7, 42)), Some((7, 42)));
        assert_eq!(parse_msg_id("x7-42"), None);
        assert_eq!(parse_msg_id("b7"), None);
    }

    #[test]
    fn clean_run_passes_and_completion_is_the_later_event() {
        let mut s = SenderLog::default();
        let a = s.issue();
        let b = s.issue();
        s.acked(a, 10);
        s.acked(b, 30);
        let mut r = RecipientLog::default();
        r.record(0, a, 20);
        r.record(0, b, 25);
        let v = verify(&[s], &[r], |_| vec![0]);
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.delivered, 2);
        let mut done = v.completed_ms.clone();
        done.sort();
        assert_eq!(done, vec![20, 30]);
    }

    #[test]
    fn loss_duplicate_and_unacked_fail() {
        let mut s = SenderLog::default();
        for _ in 0..3 {
            let n = s.issue();
            if n < 2 {
                s.acked(n, 1);
            }
        }
        let mut r = RecipientLog::default();
        r.record(0, 0, 2);
        r.record(0, 0, 3);
        let v = verify(&[s], &[r], |_| vec![0]);
        assert_eq!(v.lost, 1);
        assert_eq!(v.duplicated, 1);
        assert_eq!(v.unacked_sends, 1);
        assert!(!v.ok());
    }

    #[test]
    fn group_expects_every_member_but_the_sender() {
        let mut s0 = SenderLog::default();
        let n = s0.issue();
        s0.acked(n, 5);
        let s1 = SenderLog::default();
        let mut logs = vec![RecipientLog::default(); 3];
        logs[1].record(0, 0, 6);
        logs[2].record(0, 0, 7);
        let members = 3;
        let v = verify(&[s0, s1], &logs, |s| {
            (0..members).filter(|&m| m != s).collect()
        });
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.delivered, 2);
        // The sender receiving its own message is unexpected.
        logs[0].record(0, 0, 8);
        let mut s0 = SenderLog::default();
        let n = s0.issue();
        s0.acked(n, 5);
        let v = verify(&[s0, SenderLog::default()], &logs, |s| {
            (0..members).filter(|&m| m != s).collect()
        });
        assert_eq!(v.unexpected, 1);
    }
}
