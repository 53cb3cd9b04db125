//! The retransmit window of one connection, as plain data: pushes waiting
//! for the device's acknowledgement, when each is due again, when to give up.
//! No IO and no clock of its own: callers pass `now`.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitConfig {
    /// First wait for an acknowledgement; doubles on every retry.
    pub ack_timeout: Duration,
    pub max_backoff: Duration,
    /// Sends of one push (the first one included) before giving up.
    pub max_tries: u32,
    /// Unacknowledged pushes held; one more means the client is not keeping up.
    pub capacity: usize,
}

impl Default for RetransmitConfig {
    fn default() -> Self {
        RetransmitConfig {
            ack_timeout: Duration::from_secs(3),
            max_backoff: Duration::from_secs(30),
            max_tries: 4,
            capacity: 1024,
        }
    }
}

#[derive(Debug)]
struct Entry {
    max_seq: u64,
    /// It holds a message whose acknowledgement stores a DELIVERED receipt.
    wants_receipt: bool,
    frame: Bytes,
    first_sent: Instant,
    next_due: Instant,
    tries: u32,
}

/// What the connection must do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// Send these frames again, in this order.
    Resend(Vec<Bytes>),
    /// A push went unacknowledged `max_tries` times: close the connection
    /// (the messages wait in the inbox for the next pull).
    GiveUp,
}

#[derive(Debug, PartialEq, Eq)]
pub struct WindowFull;

/// What an acknowledgement settled.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Push-to-ack latency of each push it settled, and whether that push
    /// held a message that wants a DELIVERED receipt.
    pub latencies: Vec<(Duration, bool)>,
    /// The highest sequence among them (0: none).
    pub max_seq: u64,
    /// One of them held a message that wants a DELIVERED receipt.
    pub wants_receipt: bool,
}

#[derive(Debug)]
pub struct RetransmitWindow {
    /// Shared by every connection of the gateway (not copied into each).
    cfg: Arc<RetransmitConfig>,
    entries: VecDeque<Entry>,
    acked: u64,
}

impl RetransmitWindow {
    pub fn new(cfg: Arc<RetransmitConfig>) -> Self {
        RetransmitWindow {
            cfg,
            entries: VecDeque::new(),
            acked: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn backoff(&self, tries: u32) -> Duration {
        let factor = 1u32 << tries.saturating_sub(1).min(16);
        (self.cfg.ack_timeout * factor).min(self.cfg.max_backoff)
    }

    /// Records a push just sent; pushes the device already acknowledged are not held.
    pub fn push(
        &mut self,
        max_seq: u64,
        wants_receipt: bool,
        frame: Bytes,
        now: Instant,
    ) -> Result<(), WindowFull> {
        if max_seq <= self.acked {
            return Ok(());
        }
        if self.entries.len() >= self.cfg.capacity {
            return Err(WindowFull);
        }
        self.entries.push_back(Entry {
            max_seq,
            wants_receipt,
            frame,
            first_sent: now,
            next_due: now + self.backoff(1),
            tries: 1,
        });
        Ok(())
    }

    /// Cumulative acknowledgement up to `seq`: settles the pushes it covers.
    pub fn ack(&mut self, seq: u64, now: Instant) -> Settled {
        self.acked = self.acked.max(seq);
        let mut settled = Settled::default();
        self.entries.retain(|e| {
            if e.max_seq <= seq {
                settled
                    .latencies
                    .push((now.saturating_duration_since(e.first_sent), e.wants_receipt));
                settled.max_seq = settled.max_seq.max(e.max_seq);
                settled.wants_receipt |= e.wants_receipt;
                false
            } else {
                true
            }
        });
        settled
    }

    /// Pushes due again at `now`, or the verdict to give up.
    pub fn due(&mut self, now: Instant) -> Due {
        let mut resend = Vec::new();
        for i in 0..self.entries.len() {
            if self.entries[i].next_due > now {
                continue;
            }
            if self.entries[i].tries >= self.cfg.max_tries {
                return Due::GiveUp;
            }
            let tries = self.entries[i].tries + 1;
            let wait = self.backoff(tries);
            let e = &mut self.entries[i];
            e.tries = tries;
            e.next_due = now + wait;
            resend.push(e.frame.clone());
        }
        if resend.is_empty() {
            Due::Nothing
        } else {
            Due::Resend(resend)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Arc<RetransmitConfig> {
        Arc::new(RetransmitConfig {
            ack_timeout: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3),
            max_tries: 3,
            capacity: 3,
        })
    }

    fn f(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[test]
    fn resends_with_backoff_then_gives_up() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = RetransmitWindow::new(cfg());
        w.push(5, false, f(5), t0).unwrap();
        assert_eq!(w.due(t0 + Duration::from_millis(999)), Due::Nothing);
        assert_eq!(w.due(t0 + s(1)), Due::Resend(vec![f(5)]));
        // Second retry waits 2 s (doubling).
        assert_eq!(w.due(t0 + s(2)), Due::Nothing);
        assert_eq!(w.due(t0 + s(3)), Due::Resend(vec![f(5)]));
        // Third send was the last try: the next deadline gives up.
        assert_eq!(w.due(t0 + s(6)), Due::GiveUp);
    }

    #[test]
    fn cumulative_ack_settles_out_of_order_pushes() {
        let t0 = Instant::now();
        let mut w = RetransmitWindow::new(cfg());
        w.push(10, false, f(10), t0).unwrap();
        w.push(8, true, f(8), t0).unwrap();
        w.push(12, false, f(12), t0).unwrap();
        let settled = w.ack(10, t0 + Duration::from_millis(7));
        assert_eq!(
            settled,
            Settled {
                latencies: vec![
                    (Duration::from_millis(7), false),
                    (Duration::from_millis(7), true)
                ],
                max_seq: 10,
                wants_receipt: true,
            }
        );
        // Nothing left to settle at 10; the push up to 12 wants no receipt.
        assert_eq!(w.ack(10, t0), Settled::default());
        assert_eq!(w.len(), 1);
        // A push the device already acknowledged is not held.
        w.push(9, false, f(9), t0).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w.due(t0 + Duration::from_secs(1)), Due::Resend(vec![f(12)]));
        assert!(!w.ack(12, t0).wants_receipt);
    }

    #[test]
    fn full_window_is_refused() {
        let t0 = Instant::now();
        let mut w = RetransmitWindow::new(cfg());
        for s in 1..=3 {
            w.push(s, false, f(s as u8), t0).unwrap();
        }
        assert_eq!(w.push(4, false, f(4), t0), Err(WindowFull));
        w.ack(1, t0);
        assert!(w.push(4, false, f(4), t0).is_ok());
    }

    #[test]
    fn backoff_is_capped() {
        let w = RetransmitWindow::new(cfg());
        assert_eq!(w.backoff(1), Duration::from_secs(1));
        assert_eq!(w.backoff(2), Duration::from_secs(2));
        assert_eq!(w.backoff(3), Duration::from_secs(3));
        assert_eq!(w.backoff(30), Duration::from_secs(3));
    }
}
