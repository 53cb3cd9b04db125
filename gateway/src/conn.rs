//! What the gateway keeps per connection: the bounded outbound queue, the
//! close signal and the unacknowledged pushes. No IO here.
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use im_common::route::Route;
use im_common::shutdown::CancellationToken;
use tokio::sync::mpsc;

use crate::metrics;
use crate::window::{Due, RetransmitConfig, RetransmitWindow, WindowFull};

/// The authenticated identity of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: i64,
    pub route: Route,
    /// Id of the token the session authenticated with.
    pub session_id: String,
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
    // A plain mutex: a push, an ack and the retransmit scan each hold it for
    // a few deque operations, never across an await.
    window: Mutex<RetransmitWindow>,
}

impl ConnHandle {
    pub fn new(
        conn_id: u64,
        queue: usize,
        retransmit: RetransmitConfig,
    ) -> (ConnHandle, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        (
            ConnHandle {
                conn_id,
                identity: OnceLock::new(),
                tx,
                close: CancellationToken::new(),
                window: Mutex::new(RetransmitWindow::new(retransmit)),
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

    fn window(&self) -> std::sync::MutexGuard<'_, RetransmitWindow> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a push whose highest sequence is `max_seq` and holds it until
    /// the device acknowledges it; too many unacknowledged pushes close the
    /// connection like a full queue does.
    pub fn send_push(&self, frame: Bytes, max_seq: u64) -> Result<(), QueueError> {
        if self.window().push(max_seq, frame.clone(), Instant::now()) == Err(WindowFull) {
            if !self.close.is_cancelled() {
                metrics::SLOW_CONSUMERS.inc();
                tracing::info!(
                    conn = self.conn_id,
                    "too many unacknowledged pushes; closing"
                );
            }
            self.close.cancel();
            return Err(QueueError::SlowConsumer);
        }
        self.send(frame)
    }

    /// The device has everything up to `seq`: settles held pushes.
    pub fn ack(&self, seq: u64) {
        for latency in self.window().ack(seq, Instant::now()) {
            metrics::PUSH_LATENCY.observe(latency.as_secs_f64());
        }
    }

    /// Resends what is due; gives up (closes) after too many tries.
    /// Returns whether pushes are still held.
    pub fn retransmit(&self, now: Instant) -> bool {
        let (due, held) = {
            let mut w = self.window();
            (w.due(now), !w.is_empty())
        };
        match due {
            Due::Nothing => {}
            Due::Resend(frames) => {
                metrics::RETRANSMITS.inc_by(frames.len() as u64);
                for f in frames {
                    if self.send(f).is_err() {
                        break;
                    }
                }
            }
            Due::GiveUp => {
                metrics::RETRANSMIT_GIVEUPS.inc();
                tracing::info!(
                    conn = self.conn_id,
                    "push unacknowledged after every retry; closing"
                );
                self.close();
            }
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_closes_the_connection() {
        let (h, _rx) = ConnHandle::new(1, 2, RetransmitConfig::default());
        assert!(h.send(Bytes::from_static(b"a")).is_ok());
        assert!(h.send(Bytes::from_static(b"b")).is_ok());
        assert_eq!(
            h.send(Bytes::from_static(b"c")),
            Err(QueueError::SlowConsumer)
        );
        assert!(h.close_token().is_cancelled());
    }

    #[test]
    fn unacknowledged_pushes_are_resent_then_the_connection_closes() {
        let cfg = RetransmitConfig {
            ack_timeout: std::time::Duration::from_millis(10),
            max_backoff: std::time::Duration::from_millis(10),
            max_tries: 2,
            capacity: 8,
        };
        let (h, mut rx) = ConnHandle::new(1, 8, cfg);
        h.send_push(Bytes::from_static(b"p1"), 1).unwrap();
        assert_eq!(rx.try_recv().unwrap(), Bytes::from_static(b"p1"));
        let later = Instant::now() + std::time::Duration::from_millis(11);
        assert!(h.retransmit(later));
        assert_eq!(rx.try_recv().unwrap(), Bytes::from_static(b"p1"));
        h.retransmit(later + std::time::Duration::from_millis(11));
        assert!(h.close_token().is_cancelled());
    }

    #[test]
    fn ack_settles_the_window() {
        let (h, _rx) = ConnHandle::new(1, 8, RetransmitConfig::default());
        h.send_push(Bytes::new(), 3).unwrap();
        h.send_push(Bytes::new(), 5).unwrap();
        h.ack(5);
        assert!(!h.retransmit(Instant::now() + std::time::Duration::from_secs(60)));
    }
}
