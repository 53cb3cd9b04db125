//! What the gateway keeps per connection: the bounded outbound queue, the
//! close flag and the unacknowledged pushes. No IO here.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::task::AtomicWaker;
use im_common::route::Route;

use crate::metrics;
use crate::window::{Due, RetransmitConfig, RetransmitWindow, WindowFull};

/// The authenticated identity of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: i64,
    pub device: i32,
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
/// block) and the waker of the connection's task, which a queued frame or a
/// close wakes.
pub struct Outbox {
    queue: Mutex<Queue>,
    waker: AtomicWaker,
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
            waker: AtomicWaker::new(),
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
        self.waker.wake();
        Ok(())
    }

    /// Moves every queued frame into `out` (which the caller has emptied);
    /// when there is none, the task is woken by the next one.
    pub fn poll_take(&self, cx: &mut Context<'_>, out: &mut VecDeque<Bytes>) -> Poll<()> {
        // Registered before the check: a push after it wakes the task.
        self.waker.register(cx.waker());
        let mut q = self.lock();
        if q.frames.is_empty() {
            return Poll::Pending;
        }
        std::mem::swap(&mut q.frames, out);
        Poll::Ready(())
    }

    /// Takes what is queued without waiting, and refuses anything later.
    pub fn close_and_take(&self) -> VecDeque<Bytes> {
        let mut q = self.lock();
        q.closed = true;
        std::mem::take(&mut q.frames)
    }
}

/// What became of an ACK frame ([`ConnHandle::on_ack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// Send it to logic now.
    Forward = 0,
    /// Held: it stores no receipt.
    Deferred,
    /// Nothing new.
    Repeat,
}

impl AckOutcome {
    /// Its place in [`metrics::ACK_OUTCOMES`].
    pub fn index(self) -> usize {
        self as usize
    }
}

pub struct ConnHandle {
    pub conn_id: u64,
    identity: OnceLock<Identity>,
    outbox: Outbox,
    /// Set once (kick, drain, idle, slow consumer, peer gone); wakes the
    /// connection's task through the outbox's waker.
    closed: AtomicBool,
    /// The highest ACK forwarded to logic; older or repeated ones are not.
    acked: AtomicU64,
    /// The highest ACK held back ([`ConnHandle::on_ack`]); logic gets it
    /// with the next forwarded one or from [`ConnHandle::take_deferred`].
    deferred: AtomicU64,
    /// The highest sequence of a pulled message that wants a DELIVERED
    /// receipt from this device.
    pulled_receipt: AtomicU64,
    /// When a frame last came in or a reply went out ([`mono_ms`]); the
    /// gateway's idle sweep closes connections silent for too long (one
    /// sweep instead of a timer per connection).
    last_active: AtomicU64,
    // A plain mutex: a push, an ack and the retransmit scan each hold it for
    // a few deque operations, never across an await.
    window: Mutex<RetransmitWindow>,
}

impl ConnHandle {
    pub fn new(conn_id: u64, queue: usize, retransmit: Arc<RetransmitConfig>) -> ConnHandle {
        ConnHandle {
            conn_id,
            identity: OnceLock::new(),
            outbox: Outbox::new(queue),
            closed: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
            pulled_receipt: AtomicU64::new(0),
            last_active: AtomicU64::new(mono_ms()),
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

    /// The route table entry of this connection on gateway `gate_id`, once
    /// authenticated (built when needed: the gateway id is not copied into
    /// every connection).
    pub fn route(&self, gate_id: &str) -> Option<(i64, Route)> {
        self.identity().map(|id| {
            let route = Route {
                device: id.device,
                gate_id: gate_id.to_owned(),
                conn_id: self.conn_id,
            };
            (id.user_id, route)
        })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the connection is closed; if not, a later close wakes the
    /// task polling this.
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> bool {
        self.outbox.waker.register(cx.waker());
        self.is_closed()
    }

    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.outbox.waker.wake();
        }
    }

    /// Queues an encoded frame; a full queue closes the connection.
    pub fn send(&self, frame: Bytes) -> Result<(), QueueError> {
        match self.outbox.push(frame) {
            Ok(()) => Ok(()),
            Err(QueueError::SlowConsumer) => {
                if !self.is_closed() {
                    metrics::SLOW_CONSUMERS.inc();
                    tracing::info!(
                        conn = self.conn_id,
                        "outbound queue full; closing slow consumer"
                    );
                }
                self.close();
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
    /// connection like a full queue does. `wants_receipt`: it holds a
    /// message whose acknowledgement stores a DELIVERED receipt.
    pub fn send_push(
        &self,
        frame: Bytes,
        max_seq: u64,
        wants_receipt: bool,
    ) -> Result<(), QueueError> {
        let held = self
            .window()
            .push(max_seq, wants_receipt, frame.clone(), Instant::now());
        if held == Err(WindowFull) {
            if !self.is_closed() {
                metrics::SLOW_CONSUMERS.inc();
                tracing::info!(
                    conn = self.conn_id,
                    "too many unacknowledged pushes; closing"
                );
            }
            self.close();
            return Err(QueueError::SlowConsumer);
        }
        self.send(frame)
    }

    /// The connection just did something: it is not idle.
    pub fn touch(&self) {
        self.last_active.store(mono_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the connection last did something.
    pub fn idle_ms(&self) -> u64 {
        mono_ms().saturating_sub(self.last_active.load(Ordering::Relaxed))
    }

    /// The device has everything up to `seq`: settles held pushes and
    /// decides whether logic hears of it now.
    ///
    /// Logic moves the device cursor and stores DELIVERED receipts for the
    /// one-to-one messages from others that the ACK newly covers. An ACK
    /// that settles only pushes without such messages (receipts, own
    /// messages from other devices, groups), and covers nothing beyond
    /// them but what this connection was told by `SENT` (its own
    /// messages), stores no receipt: it is deferred, and the next forwarded
    /// ACK (cumulative) or [`Self::take_deferred`] carries it. In a
    /// conversation that halves the ACKs logic writes: the sender's ACK of
    /// each DELIVERED receipt is held. The first ACK of a connection and any
    /// ACK after a pull that brought such a message are always forwarded.
    /// A wrong guess can only delay a receipt, never lose or double one:
    /// the cursor and the receipts are decided in the store.
    pub fn on_ack(&self, seq: u64) -> AckOutcome {
        let settled = self.window().ack(seq, Instant::now());
        for &(latency, wants_receipt) in &settled.latencies {
            metrics::push_latency(latency, wants_receipt);
        }
        let forwarded = self.acked.load(Ordering::Relaxed);
        if seq <= forwarded.max(self.deferred.load(Ordering::Relaxed)) {
            return AckOutcome::Repeat;
        }
        let wants_no_receipt = forwarded > 0
            && settled.max_seq >= seq
            && !settled.wants_receipt
            && self.pulled_receipt.load(Ordering::Relaxed) <= forwarded;
        if wants_no_receipt {
            self.deferred.fetch_max(seq, Ordering::Relaxed);
            return AckOutcome::Deferred;
        }
        if self.acked.fetch_max(seq, Ordering::Relaxed) < seq {
            AckOutcome::Forward
        } else {
            AckOutcome::Repeat
        }
    }

    /// A pull brought `messages` to this device.
    pub fn note_pulled(&self, messages: &[im_proto::client::Message]) {
        let user = self.identity().map_or(0, |id| id.user_id);
        let newest = messages
            .iter()
            .filter(|m| im_proto::wants_delivered_receipt(m, user))
            .map(|m| m.seq)
            .max()
            .unwrap_or(0);
        self.pulled_receipt.fetch_max(newest, Ordering::Relaxed);
    }

    /// The deferred ACK, once, if no forwarded ACK covered it since.
    pub fn take_deferred(&self) -> Option<u64> {
        let seq = self.deferred.load(Ordering::Relaxed);
        (seq > 0 && self.acked.fetch_max(seq, Ordering::Relaxed) < seq).then_some(seq)
    }

    /// An ACK is deferred and not yet forwarded.
    pub fn has_deferred(&self) -> bool {
        self.deferred.load(Ordering::Relaxed) > self.acked.load(Ordering::Relaxed)
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
        let h = ConnHandle::new(1, 2, Arc::default());
        assert!(h.send(Bytes::from_static(b"a")).is_ok());
        assert!(h.send(Bytes::from_static(b"b")).is_ok());
        assert_eq!(
            h.send(Bytes::from_static(b"c")),
            Err(QueueError::SlowConsumer)
        );
        assert!(h.is_closed());
    }

    #[test]
    fn unacknowledged_pushes_are_resent_then_the_connection_closes() {
        let cfg = RetransmitConfig {
            ack_timeout: std::time::Duration::from_millis(10),
            max_backoff: std::time::Duration::from_millis(10),
            max_tries: 2,
            capacity: 8,
        };
        let h = ConnHandle::new(1, 8, Arc::new(cfg));
        h.send_push(Bytes::from_static(b"p1"), 1, false).unwrap();
        assert_eq!(h.outbox().close_and_take(), [Bytes::from_static(b"p1")]);
        h.outbox().lock().closed = false;
        let later = Instant::now() + std::time::Duration::from_millis(11);
        assert!(h.retransmit(later));
        assert_eq!(h.outbox().close_and_take(), [Bytes::from_static(b"p1")]);
        h.retransmit(later + std::time::Duration::from_millis(11));
        assert!(h.is_closed());
    }

    /// A push whose ACK stores a receipt is timed apart from the others,
    /// whose ACK a client may debounce.
    #[test]
    fn push_latency_is_labelled_by_whether_the_ack_stores_a_receipt() {
        let sum = |r: &str| {
            metrics::PUSH_LATENCY
                .with_label_values(&[r])
                .get_sample_sum()
        };
        let before = (sum("wanted"), sum("none"));
        let h = ConnHandle::new(1, 8, Arc::default());
        h.send_push(Bytes::from_static(b"m"), 1, true).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150));
        h.send_push(Bytes::from_static(b"r"), 2, false).unwrap();
        h.send_push(Bytes::from_static(b"g"), 3, false).unwrap();
        h.on_ack(3);
        // Only the first push waited 150 ms for its ACK (other tests of
        // this binary settle pushes at once).
        assert!(sum("wanted") - before.0 >= 0.15);
        assert!(sum("none") - before.1 < 0.1);
    }

    async fn take(h: &ConnHandle) -> VecDeque<Bytes> {
        let mut out = VecDeque::new();
        std::future::poll_fn(|cx| h.outbox().poll_take(cx, &mut out)).await;
        out
    }

    #[tokio::test]
    async fn the_writer_wakes_for_frames_queued_before_it_waits() {
        let h = Arc::new(ConnHandle::new(1, 8, Arc::default()));
        h.send(Bytes::from_static(b"a")).unwrap();
        assert_eq!(take(&h).await, [Bytes::from_static(b"a")]);
        let writer = {
            let h = h.clone();
            tokio::spawn(async move { take(&h).await })
        };
        tokio::task::yield_now().await;
        h.send(Bytes::from_static(b"b")).unwrap();
        h.send(Bytes::from_static(b"c")).unwrap();
        let got = writer.await.unwrap();
        assert_eq!(got, [Bytes::from_static(b"b"), Bytes::from_static(b"c")]);
        assert!(h.outbox().close_and_take().is_empty());
        assert_eq!(h.send(Bytes::from_static(b"d")), Err(QueueError::Closed));
    }

    #[tokio::test]
    async fn a_close_wakes_the_waiting_task() {
        let h = Arc::new(ConnHandle::new(1, 8, Arc::default()));
        let waiter = {
            let h = h.clone();
            tokio::spawn(std::future::poll_fn(move |cx| {
                if h.poll_closed(cx) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }))
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        h.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the close woke the task")
            .unwrap();
    }

    fn authed(user: i64) -> ConnHandle {
        let h = ConnHandle::new(1, 64, Arc::default());
        h.set_identity(Identity {
            user_id: user,
            device: 1,
            session_id: String::new(),
        });
        h
    }

    fn message(seq: u64, from: i64, content_type: u32) -> im_proto::client::Message {
        im_proto::client::Message {
            seq,
            from,
            conv_type: im_proto::client::ConversationType::C2c as i32,
            content_type,
            ..Default::default()
        }
    }

    #[test]
    fn only_advancing_acks_are_news() {
        let h = authed(7);
        assert_eq!(h.on_ack(0), AckOutcome::Repeat);
        assert_eq!(h.on_ack(5), AckOutcome::Forward);
        assert_eq!(h.on_ack(5), AckOutcome::Repeat);
        assert_eq!(h.on_ack(3), AckOutcome::Repeat);
        assert_eq!(h.on_ack(6), AckOutcome::Forward);
    }

    #[test]
    fn ack_settles_the_window() {
        let h = authed(7);
        h.send_push(Bytes::new(), 3, true).unwrap();
        h.send_push(Bytes::new(), 5, false).unwrap();
        assert_eq!(h.on_ack(5), AckOutcome::Forward);
        assert!(!h.retransmit(Instant::now() + std::time::Duration::from_secs(60)));
    }

    /// An ACK that settles only pushes wanting no receipt is held until the
    /// tick or a later forwarded ACK; one that settles a message wanting a
    /// receipt, reaches past what was pushed, or is the connection's first,
    /// goes at once.
    #[test]
    fn acks_that_store_no_receipt_are_deferred() {
        let h = authed(7);
        // The first ACK of a connection may cover what an earlier one got.
        h.send_push(Bytes::new(), 2, false).unwrap();
        assert_eq!(h.on_ack(2), AckOutcome::Forward);
        // Receipts (or own messages): held, the newest one kept.
        h.send_push(Bytes::new(), 4, false).unwrap();
        assert_eq!(h.on_ack(4), AckOutcome::Deferred);
        assert_eq!(h.on_ack(4), AckOutcome::Repeat);
        h.send_push(Bytes::new(), 6, false).unwrap();
        assert_eq!(h.on_ack(6), AckOutcome::Deferred);
        assert!(h.has_deferred());
        assert_eq!(h.take_deferred(), Some(6));
        assert_eq!(h.take_deferred(), None);
        assert!(!h.has_deferred());
        // A message from someone else: its receipt is not delayed.
        h.send_push(Bytes::new(), 7, true).unwrap();
        h.send_push(Bytes::new(), 8, false).unwrap();
        assert_eq!(h.on_ack(8), AckOutcome::Forward);
        // Beyond what was pushed (a pull, say): forwarded.
        h.send_push(Bytes::new(), 9, false).unwrap();
        assert_eq!(h.on_ack(10), AckOutcome::Forward);
        // A deferred ACK that a forwarded one covered is not sent again.
        h.send_push(Bytes::new(), 11, false).unwrap();
        assert_eq!(h.on_ack(11), AckOutcome::Deferred);
        h.send_push(Bytes::new(), 12, true).unwrap();
        assert_eq!(h.on_ack(12), AckOutcome::Forward);
        assert_eq!(h.take_deferred(), None);
    }

    #[test]
    fn ack_outcomes_name_their_counters() {
        let label = |o: AckOutcome| metrics::ACK_OUTCOMES[o.index()];
        assert_eq!(label(AckOutcome::Forward), "forwarded");
        assert_eq!(label(AckOutcome::Deferred), "deferred");
        assert_eq!(label(AckOutcome::Repeat), "repeat");
    }

    #[test]
    fn a_pulled_message_wanting_a_receipt_forwards_the_acks_after_it() {
        let h = authed(7);
        h.send_push(Bytes::new(), 1, true).unwrap();
        assert_eq!(h.on_ack(1), AckOutcome::Forward);
        // Pulled: a receipt, an own message, a message from user 8.
        h.note_pulled(&[message(2, 8, 0xF001), message(3, 7, 1)]);
        h.send_push(Bytes::new(), 4, false).unwrap();
        assert_eq!(h.on_ack(4), AckOutcome::Deferred);
        h.note_pulled(&[message(5, 8, 1)]);
        h.send_push(Bytes::new(), 6, false).unwrap();
        assert_eq!(h.on_ack(6), AckOutcome::Forward);
        h.send_push(Bytes::new(), 7, false).unwrap();
        assert_eq!(h.on_ack(7), AckOutcome::Deferred);
    }
}
