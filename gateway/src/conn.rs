//! What the gateway keeps per connection: the bounded outbound queue, the
//! close signal and the unacknowledged pushes. No IO here.
use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use im_common::route::Route;
use im_common::shutdown::CancellationToken;
use tokio::sync::mpsc;

use crate::metrics;

/// The authenticated identity of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: i64,
    pub route: Route,
}

/// Why a frame could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The client is not reading: the connection is being closed.
    SlowConsumer,
    Closed,
}

pub struct ConnHandle {
    pub conn_id: u64,
    identity: OnceLock<Identity>,
    tx: mpsc::Sender<Bytes>,
    close: CancellationToken,
    /// (highest seq in a push, when it was queued), oldest first; bounded.
    // A plain mutex: a push and an ack each hold it for a few deque operations.
    unacked: Mutex<VecDeque<(u64, Instant)>>,
    max_unacked: usize,
}

impl ConnHandle {
    pub fn new(conn_id: u64, queue: usize) -> (ConnHandle, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        (
            ConnHandle {
                conn_id,
                identity: OnceLock::new(),
                tx,
                close: CancellationToken::new(),
                unacked: Mutex::new(VecDeque::new()),
                max_unacked: queue.max(1),
            },
            rx,
        )
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.get()
    }

    pub fn set_identity(&self, id: Identity) {
        let _ = self.identity.set(id);
    }

    pub fn close_token(&self) -> &CancellationToken {
        &self.close
    }

    pub fn close(&self) {
        self.close.cancel();
    }

    /// Queues an encoded frame; a full queue closes the connection.
    pub fn send(&self, frame: Bytes) -> Result<(), QueueError> {
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.close.is_cancelled() {
                    metrics::SLOW_CONSUMERS.inc();
                    tracing::info!(
                        conn = self.conn_id,
                        "outbound queue full; closing slow consumer"
                    );
                }
                self.close.cancel();
                Err(QueueError::SlowConsumer)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(QueueError::Closed),
        }
    }

    /// Queues a push whose highest sequence is `max_seq`.
    pub fn send_push(&self, frame: Bytes, max_seq: u64) -> Result<(), QueueError> {
        self.send(frame)?;
        let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
        if unacked.len() >= self.max_unacked {
            unacked.pop_front();
        }
        unacked.push_back((max_seq, Instant::now()));
        Ok(())
    }

    /// The device has everything up to `seq`: records push latencies.
    pub fn ack(&self, seq: u64) {
        let now = Instant::now();
        let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&(s, at)) = unacked.front() {
            if s > seq {
                break;
            }
            metrics::PUSH_LATENCY.observe(now.duration_since(at).as_secs_f64());
            unacked.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_closes_the_connection() {
        let (h, _rx) = ConnHandle::new(1, 2);
        assert!(h.send(Bytes::from_static(b"a")).is_ok());
        assert!(h.send(Bytes::from_static(b"b")).is_ok());
        assert_eq!(
            h.send(Bytes::from_static(b"c")),
            Err(QueueError::SlowConsumer)
        );
        assert!(h.close_token().is_cancelled());
    }

    #[test]
    fn ack_is_cumulative() {
        let (h, _rx) = ConnHandle::new(1, 8);
        for s in [3, 5, 9] {
            h.send_push(Bytes::new(), s).unwrap();
        }
        h.ack(5);
        let left: Vec<u64> = h.unacked.lock().unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(left, vec![9]);
    }
}
