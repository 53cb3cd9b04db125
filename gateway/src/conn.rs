//! What the gateway keeps per connection: the bounded outbound queue, the
//! close signal and the unacknowledged pushes. No IO here.
use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use im_common::route::Route;
use im_common::shutdown::CancellationToken;
use tokio::sync::Notify;

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

/// Milliseconds on a monotonic clock (since the first call in this process).
pub fn mono_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Why a frame could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The client is not reading: the connection is being closed.
    SlowConsumer,
    Closed,
}

/// The outbound queue of one connection: a deque that holds no memory while
/// empty (an idle connection costs a few dozen bytes here, not a channel
/// block) and a wake-up for the writer.
pub struct Outbox {
    queue: Mutex<Queue>,
    ready: Notify,
    capacity: usize,
}

struct Queue {
    frames: VecDeque<Bytes>,
    closed: bool,
}

impl Outbox {
    fn new(capacity: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                closed: false,
            }),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, frame: Bytes) -> Result<(), QueueError> {
        {
            let mut q = self.lock();
            if q.closed {
                return Err(QueueError::Closed);
            }
            if q.frames.len() >= self.capacity {
                return Err(QueueError::SlowConsumer);
            }
            q.frames.push_back(frame);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Moves every queued frame into `out` (which the caller has emptied),
    /// waiting until there is at least one.
    pub async fn recv_into(&self, out: &mut VecDeque<Bytes>) {
        loop {
            {
                let mut q = self.lock();
                if !q.frames.is_empty() {
                    std::mem::swap(&mut q.frames, out);
                    return;
                }
            }
            // A push between the check and here leaves a permit: no lost wake-up.
            self.ready.notified().await;
        }
    }

    /// Takes what is queued without waiting, and refuses anything later.
    pub fn close_and_take(&self) -> VecDeque<Bytes> {
        let mut q = self.lock();
        q.closed = true;
        std::mem::take(&mut q.frames)
    }
}

pub struct ConnHandle {
    pub conn_id: u64,
    identity: OnceLock<Identity>,
    outbox: Outbox,
    close: CancellationToken,
    /// The highest ACK forwarded to logic; older or repeated ones are not.
    acked: std::sync::atomic::AtomicU64,
    /// When a frame last came in or a reply went out ([`mono_ms`]); the
    /// gateway's idle sweep closes connections silent for too long (one
    /// sweep instead of a timer per connection).
    last_active: std::sync::atomic::AtomicU64,
    // A plain mutex: a push, an ack and the retransmit scan each hold it for
    // a few deque operations, never across an await.
    window: Mutex<RetransmitWindow>,
}

impl ConnHandle {
    pub fn new(conn_id: u64, queue: usize, retransmit: RetransmitConfig) -> ConnHandle {
        ConnHandle {
            conn_id,
            identity: OnceLock::new(),
            outbox: Outbox::new(queue),
            close: CancellationToken::new(),
            acked: std::sync::atomic::AtomicU64::new(0),
            last_active: std::sync::atomic::AtomicU64::new(mono_ms()),
            window: Mutex::new(RetransmitWindow::new(retransmit)),
        }
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
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
        match self.outbox.push(frame) {
            Ok(()) => Ok(()),
            Err(QueueError::SlowConsumer) => {
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
            Err(QueueError::Closed) => Err(QueueError::Closed),
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

    /// The connection just did something: it is not idle.
    pub fn touch(&self) {
        self.last_active
            .store(mono_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Milliseconds since the connection last did something.
    pub fn idle_ms(&self) -> u64 {
        mono_ms().saturating_sub(self.last_active.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Records an ACK of `seq`; true when it is news for logic (higher than
    /// any ACK this connection forwarded before).
    pub fn ack_advances(&self, seq: u64) -> bool {
        self.acked
            .fetch_max(seq, std::sync::atomic::Ordering::Relaxed)
            < seq
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
        let h = ConnHandle::new(1, 2, RetransmitConfig::default());
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
        let h = ConnHandle::new(1, 8, cfg);
        h.send_push(Bytes::from_static(b"p1"), 1).unwrap();
        assert_eq!(h.outbox().close_and_take(), [Bytes::from_static(b"p1")]);
        h.outbox().lock().closed = false;
        let later = Instant::now() + std::time::Duration::from_millis(11);
        assert!(h.retransmit(later));
        assert_eq!(h.outbox().close_and_take(), [Bytes::from_static(b"p1")]);
        h.retransmit(later + std::time::Duration::from_millis(11));
        assert!(h.close_token().is_cancelled());
    }

    #[tokio::test]
    async fn the_writer_wakes_for_frames_queued_before_it_waits() {
        let h = std::sync::Arc::new(ConnHandle::new(1, 8, RetransmitConfig::default()));
        h.send(Bytes::from_static(b"a")).unwrap();
        let mut out = VecDeque::new();
        h.outbox().recv_into(&mut out).await;
        assert_eq!(out, [Bytes::from_static(b"a")]);
        let writer = {
            let h = h.clone();
            tokio::spawn(async move {
                let mut out = VecDeque::new();
                h.outbox().recv_into(&mut out).await;
                out
            })
        };
        tokio::task::yield_now().await;
        h.send(Bytes::from_static(b"b")).unwrap();
        h.send(Bytes::from_static(b"c")).unwrap();
        let got = writer.await.unwrap();
        assert_eq!(got, [Bytes::from_static(b"b"), Bytes::from_static(b"c")]);
        assert!(h.outbox().close_and_take().is_empty());
        assert_eq!(h.send(Bytes::from_static(b"d")), Err(QueueError::Closed));
    }

    #[test]
    fn only_advancing_acks_are_news() {
        let h = ConnHandle::new(1, 8, RetransmitConfig::default());
        assert!(!h.ack_advances(0));
        assert!(h.ack_advances(5));
        assert!(!h.ack_advances(5));
        assert!(!h.ack_advances(3));
        assert!(h.ack_advances(6));
    }

    #[test]
    fn ack_settles_the_window() {
        let h = ConnHandle::new(1, 8, RetransmitConfig::default());
        h.send_push(Bytes::new(), 3).unwrap();
        h.send_push(Bytes::new(), 5).unwrap();
        h.ack(5);
        assert!(!h.retransmit(Instant::now() + std::time::Duration::from_secs(60)));
    }
}
