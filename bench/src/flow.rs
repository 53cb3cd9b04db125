//! The moving parts shared by the messaging scenarios: message bodies that
//! carry their (scheduled) send time, receive loops that fill the ledger and
//! the latency timeline, senders (closed loop with credits, or open loop at
//! fixed times) that retry with the same client message id.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use im_client::{ChatClient, ClientError};
use im_proto::client::SendResponse;
use tokio::sync::Semaphore;

use crate::ledger::{RecipientLog, SenderLog, msg_id, parse_msg_id};
use crate::timeline::Timeline;

/// Content types at or above this are receipts and other system messages.
pub const SYSTEM_CONTENT_TYPE: u32 = 0xF000;

/// State every task of a run sees.
pub struct Shared {
    pub epoch: Instant,
    pub stop_sending: AtomicBool,
    pub stop_receiving: AtomicBool,
    pub issued: AtomicU64,
    pub acked: AtomicU64,
    pub failed_sends: AtomicU64,
    /// Person messages received (deliveries).
    pub received: AtomicU64,
    pub receipts: AtomicU64,
    /// (message id, scheduled send time in µs since `epoch`) of every
    /// stored message, and (message id, µs since `epoch`) of every DELIVERED
    /// receipt naming one: joined at the end into the receipt latency. A
    /// receipt names every message an acknowledgement newly covered, so the
    /// length of `receipted_at`, not `receipts`, tells whether receipts
    /// kept up with the deliveries.
    pub sent_ids: Mutex<Vec<(i64, u64)>>,
    pub receipted_at: Mutex<Vec<(i64, u64)>>,
    /// A sender's own message handed back by its client (see `receive_loop`).
    pub own_echoes: AtomicU64,
    /// Retryable server errors a receive loop got (and retried).
    pub retryable_errors: AtomicU64,
    pub errors: Mutex<Vec<String>>,
    /// Per sender: deliveries it may still start (closed loop).
    pub credits: Vec<Semaphore>,
    pub warmup_secs: usize,
    /// How late the open-loop pacer sent, p50 and p99 in microseconds
    /// (already part of the latency, which counts from the schedule).
    pub pacer_late_us: Mutex<Option<(u64, u64)>>,
    /// Send (its schedule, open loop) to the SENT acknowledgement: the
    /// store's share of the latency, beside the full send-to-receive one.
    pub sent: Mutex<Timeline>,
    /// How much longer than 1 ms a thread's 1 ms sleeps took, per second
    /// since `epoch` ([`stall_probe`]): when the whole machine stalls, so
    /// does this thread.
    pub overslept: Mutex<Timeline>,
}

impl Shared {
    pub fn new(senders: usize, initial_credits: usize, warmup_secs: usize) -> Arc<Shared> {
        Arc::new(Shared {
            epoch: Instant::now(),
            stop_sending: AtomicBool::new(false),
            stop_receiving: AtomicBool::new(false),
            issued: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            failed_sends: AtomicU64::new(0),
            received: AtomicU64::new(0),
            receipts: AtomicU64::new(0),
            sent_ids: Mutex::new(Vec::new()),
            receipted_at: Mutex::new(Vec::new()),
            own_echoes: AtomicU64::new(0),
            retryable_errors: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
            credits: (0..senders)
                .map(|_| Semaphore::new(initial_credits))
                .collect(),
            warmup_secs,
            pacer_late_us: Mutex::new(None),
            sent: Mutex::new(Timeline::new(warmup_secs)),
            overslept: Mutex::new(Timeline::new(warmup_secs)),
        })
    }

    pub fn error(&self, e: String) {
        let mut errs = lock(&self.errors);
        if errs.len() < 1000 {
            errs.push(e);
        }
    }

    pub fn error_count(&self) -> usize {
        lock(&self.errors).len()
    }

    pub fn ms(&self) -> u32 {
        self.epoch.elapsed().as_millis() as u32
    }
}

/// A body of `size` bytes (at least 8) starting with `sched_ns`, big-endian.
pub fn body(sched_ns: u64, size: usize) -> Bytes {
    let mut b = vec![b'x'; size.max(8)];
    b[..8].copy_from_slice(&sched_ns.to_be_bytes());
    Bytes::from(b)
}

pub fn sched_of(body: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(body.get(..8)?.try_into().ok()?))
}

/// Where a message goes.
#[derive(Debug, Clone, Copy)]
pub enum Dest {
    User(i64),
    Group(i64),
}

/// Sends with retries on retryable errors, always with the same client message id.
pub async fn send_retry(
    client: &ChatClient,
    dest: Dest,
    id: &str,
    body: Bytes,
) -> Result<SendResponse, ClientError> {
    let mut attempt = 0u32;
    loop {
        let r = match dest {
            Dest::User(to) => client.send_with_id(to, id, 1, body.clone()).await,
            Dest::Group(g) => client.send_group_with_id(g, id, 1, body.clone()).await,
        };
        match r {
            Err(e) if e.is_retryable() && attempt < 4 && !matches!(e, ClientError::Closed) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            other => return other,
        }
    }
}

/// Receives until told to stop: person messages go to the ledger and the
/// timeline (latency from the send time in the body), receipts are counted.
pub async fn receive_loop(
    client: Arc<ChatClient>,
    shared: Arc<Shared>,
) -> (RecipientLog, Timeline) {
    let mut log = RecipientLog::default();
    let mut timeline = Timeline::new(shared.warmup_secs);
    while !shared.stop_receiving.load(Ordering::Relaxed) {
        let batch = match client.recv(Duration::from_millis(100)).await {
            Ok(b) => b,
            // UNAVAILABLE on a gap pull: the gap stays and is pulled again
            // on the next push, as a real client would retry.
            Err(ClientError::Server {
                retryable: true, ..
            }) => {
                shared.retryable_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                shared.error(format!("user {} stopped receiving: {e}", client.user_id));
                break;
            }
        };
        let now = shared.epoch.elapsed();
        let mut receipted = Vec::new();
        for m in batch {
            if m.content_type >= SYSTEM_CONTENT_TYPE {
                shared.receipts.fetch_add(1, Ordering::Relaxed);
                let at = now.as_micros() as u64;
                let ids = delivered_ids(m.content_type, &m.body);
                receipted.extend(ids.into_iter().map(|id| (id, at)));
                continue;
            }
            // The sender's own inbox copy: `ChatClient` hands it out when a
            // gap pull (a receipt overtook the SENT response) fetches it
            // before `send_with_id` recorded it. Not a delivery to anyone.
            if m.from == client.user_id {
                shared.own_echoes.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some((s, n)) = parse_msg_id(&m.client_msg_id) else {
                log.foreign += 1;
                continue;
            };
            log.record(s, n, now.as_millis() as u32);
            if let Some(t) = sched_of(&m.body) {
                let sched = Duration::from_nanos(t);
                timeline.record(
                    sched.as_secs() as usize,
                    now.saturating_sub(sched).as_micros() as u64,
                );
            }
            if let Some(c) = shared.credits.get(s as usize) {
                c.add_permits(1);
            }
            shared.received.fetch_add(1, Ordering::Relaxed);
        }
        if !receipted.is_empty() {
            lock(&shared.receipted_at).append(&mut receipted);
        }
    }
    (log, timeline)
}

/// The messages a system message of `content_type` says were delivered:
/// the ids of a DELIVERED receipt, else none.
pub fn delivered_ids(content_type: u32, body: &[u8]) -> Vec<i64> {
    use im_proto::client::{Receipt, ReceiptKind, SystemContentType};
    use im_proto::prost::Message as _;
    if content_type != SystemContentType::Receipt as u32 {
        return Vec::new();
    }
    match Receipt::decode(body) {
        Ok(r) if r.kind == ReceiptKind::Delivered as i32 => r.msg_ids,
        _ => Vec::new(),
    }
}

/// Send (its schedule) to the first DELIVERED receipt naming the message,
/// per message of `sent` (id, schedule µs) that `receipted` (id, arrival
/// µs) names; recorded at the second of its schedule.
pub fn receipt_latency(
    sent: &[(i64, u64)],
    receipted: &[(i64, u64)],
    warmup_secs: usize,
) -> Timeline {
    let mut first: std::collections::HashMap<i64, u64> =
        std::collections::HashMap::with_capacity(receipted.len());
    for &(id, at) in receipted {
        first
            .entry(id)
            .and_modify(|t| *t = (*t).min(at))
            .or_insert(at);
    }
    let mut timeline = Timeline::new(warmup_secs);
    for &(id, sched) in sent {
        if let Some(&at) = first.get(&id) {
            timeline.record((sched / 1_000_000) as usize, at.saturating_sub(sched));
        }
    }
    timeline
}

/// Locks `m`, poisoned or not (a panicked task leaves nothing half-written
/// here that the rest of the run cannot read).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A closed-loop sender: each message needs `fanout` credits (returned one
/// per delivery), so at most `window` messages are undelivered at a time.
pub async fn closed_sender(
    client: Arc<ChatClient>,
    s: u32,
    dest: Dest,
    fanout: u32,
    body_size: usize,
    log: Arc<Mutex<SenderLog>>,
    shared: Arc<Shared>,
) {
    let credits = &shared.credits[s as usize];
    while !shared.stop_sending.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(100), credits.acquire_many(fanout)).await {
            Ok(Ok(p)) => p.forget(),
            _ => continue,
        }
        let n = lock(&log).issue();
        shared.issued.fetch_add(1, Ordering::Relaxed);
        let body = body(shared.epoch.elapsed().as_nanos() as u64, body_size);
        tokio::spawn(send_and_log(
            client.clone(),
            s,
            n,
            dest,
            body,
            log.clone(),
            shared.clone(),
        ));
    }
}

async fn send_and_log(
    client: Arc<ChatClient>,
    s: u32,
    n: u32,
    dest: Dest,
    body: Bytes,
    log: Arc<Mutex<SenderLog>>,
    shared: Arc<Shared>,
) {
    let id = msg_id(s, n);
    let sched = sched_of(&body).map(Duration::from_nanos);
    match send_retry(&client, dest, &id, body).await {
        Ok(resp) => {
            if let Some(sched) = sched {
                let took = shared.epoch.elapsed().saturating_sub(sched);
                lock(&shared.sent).record(sched.as_secs() as usize, took.as_micros() as u64);
                lock(&shared.sent_ids).push((resp.msg_id, sched.as_micros() as u64));
            }
            let at = shared.ms();
            lock(&log).acked(n, at);
            shared.acked.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            shared.failed_sends.fetch_add(1, Ordering::Relaxed);
            shared.error(format!("send {id} failed: {e}"));
        }
    }
}

/// One open-loop sender of the schedule: its client, index, destination, log.
pub struct OpenSender {
    pub client: Arc<ChatClient>,
    pub s: u32,
    pub dest: Dest,
    pub log: Arc<Mutex<SenderLog>>,
}

/// The open-loop schedule: message i (of all senders together) is due at
/// `start + i / rate` and goes to sender `i % senders`; its body carries the
/// due time, so latency counts from the schedule (no coordinated omission).
///
/// Paced by one OS thread sleeping to each due time (tens of microseconds
/// late), not by tokio timers: those fire on millisecond ticks, so every
/// send would leave up to a millisecond late and that lateness, which is the
/// load generator's and not the server's, would count as latency. The sends
/// themselves run on the runtime (`rt`).
pub fn pace_open(
    rt: tokio::runtime::Handle,
    senders: Vec<OpenSender>,
    rate: f64,
    until: Duration,
    body_size: usize,
    shared: Arc<Shared>,
) {
    let start = Instant::now();
    let mut late = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    for i in 0u64.. {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due >= start + until || shared.stop_sending.load(Ordering::Relaxed) {
            break;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let _ = late.record(due.elapsed().as_micros() as u64);
        let sender = &senders[(i % senders.len() as u64) as usize];
        let n = lock(&sender.log).issue();
        shared.issued.fetch_add(1, Ordering::Relaxed);
        let body = body((due - shared.epoch).as_nanos() as u64, body_size);
        rt.spawn(send_and_log(
            sender.client.clone(),
            sender.s,
            n,
            sender.dest,
            body,
            sender.log.clone(),
            shared.clone(),
        ));
    }
    *lock(&shared.pacer_late_us) =
        Some((late.value_at_quantile(0.5), late.value_at_quantile(0.99)));
}

/// Sleeps 1 ms at a time until sending stops, recording into
/// `shared.overslept` how much longer each sleep took. A thread that
/// sleeps nearly all the time is woken first on a busy machine, so a
/// long oversleep (tens of milliseconds) is the machine, or this
/// process, not running at all: a latency spike in the same second is
/// then not the servers' doing.
pub fn stall_probe(shared: &Shared) {
    let mut overslept = Timeline::new(shared.warmup_secs);
    let tick = Duration::from_millis(1);
    while !shared.stop_sending.load(Ordering::Relaxed) {
        let started = Instant::now();
        std::thread::sleep(tick);
        let over = started.elapsed().saturating_sub(tick);
        let second = (started - shared.epoch).as_secs() as usize;
        overslept.record(second, over.as_micros() as u64);
    }
    *lock(&shared.overslept) = overslept;
}

/// Waits until every send is answered and every delivery arrived, or `within` passed.
pub async fn drain(shared: &Shared, fanout: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let issued = shared.issued.load(Ordering::Relaxed);
        let acked = shared.acked.load(Ordering::Relaxed);
        let failed = shared.failed_sends.load(Ordering::Relaxed);
        let received = shared.received.load(Ordering::Relaxed);
        if acked + failed >= issued && received >= acked * fanout {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_probe_ticks_until_sending_stops() {
        let shared = Shared::new(1, 1, 0);
        let probe = {
            let sh = shared.clone();
            std::thread::spawn(move || stall_probe(&sh))
        };
        std::thread::sleep(Duration::from_millis(100));
        shared.stop_sending.store(true, Ordering::Relaxed);
        probe.join().unwrap();
        let overslept = lock(&shared.overslept).summary();
        // ~1 ms a tick: some dozens in 100 ms, however slow the machine.
        assert!(
            (10..=110).contains(&overslept.count),
            "{} ticks",
            overslept.count
        );
        assert!(overslept.max_ms < 100.0, "{overslept:?}");
    }

    #[test]
    fn delivered_receipts_count_their_messages() {
        use im_proto::client::{Receipt, ReceiptKind, SystemContentType};
        use im_proto::prost::Message as _;
        let receipt = |kind: ReceiptKind| {
            Receipt {
                kind: kind as i32,
                msg_ids: vec![4, 5, 9],
                ..Default::default()
            }
            .encode_to_vec()
        };
        let ct = SystemContentType::Receipt as u32;
        assert_eq!(
            delivered_ids(ct, &receipt(ReceiptKind::Delivered)),
            [4, 5, 9]
        );
        assert!(delivered_ids(ct, &receipt(ReceiptKind::Read)).is_empty());
        assert!(delivered_ids(ct + 1, &receipt(ReceiptKind::Delivered)).is_empty());
        assert!(delivered_ids(ct, b"\xff\xff").is_empty(), "not a receipt");
    }

    #[test]
    fn receipt_latency_runs_from_the_schedule_to_the_first_receipt() {
        // Message 1 sent at 1 s, receipted at 1.5 s and again at 3 s;
        // message 2 never receipted; a receipt for a message not sent here.
        let sent = [(1, 1_000_000), (2, 1_200_000)];
        let receipted = [(1, 3_000_000), (1, 1_500_000), (7, 1_600_000)];
        let s = receipt_latency(&sent, &receipted, 0).summary();
        assert_eq!(s.count, 1);
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn body_carries_the_schedule() {
        let b = body(123_456_789, 64);
        assert_eq!(b.len(), 64);
        assert_eq!(sched_of(&b), Some(123_456_789));
        assert_eq!(sched_of(b"short"), None);
    }
}
