//! Group commit: sends queue up per shard and are stored many to a
//! transaction; a reply is sent only after its transaction committed.
//!
//! Shards are chosen by sender, so one sender's messages are committed in the
//! order they arrived, while different senders commit in parallel.
//!
//! Device acknowledgements go to the same writers (by acknowledging user) and
//! ride in the next message transaction (on Postgres; see [`AckPolicy`]): an ack moves a cursor and stores
//! DELIVERED receipts, which lock the original senders' sequence rows, the
//! same rows a message batch locks. As a second writer, the ack path held
//! the message path up on those row locks (and paid a commit of its own).
//! Acks are cumulative: one dropped here is covered by the device's next.
use std::time::{Duration, Instant};

use im_common::api::ApiError;
use tokio::sync::{mpsc, oneshot};

use crate::metrics;
use crate::pusher::{Origin, Outgoing, Pusher};
use crate::store::receipts::{AckQueue, DeviceAck};
use crate::store::{NewMessage, SendResult, Store, WriterConn};

struct Job {
    msg: NewMessage,
    origin: Option<Origin>,
    reply: oneshot::Sender<SendResult>,
    /// When it was queued (for `im_logic_store_wait_seconds`).
    queued: Instant,
}

#[derive(Debug, Clone, Copy)]
pub struct CommitterConfig {
    /// Parallel writers (1 for SQLite, which has a single writer anyway).
    pub shards: usize,
    /// Most messages in one transaction.
    pub max_batch: usize,
    /// Queued sends per shard before senders wait.
    pub queue: usize,
}

#[derive(Clone)]
pub struct Committer {
    shards: Vec<Shard>,
}

#[derive(Clone)]
struct Shard {
    jobs: mpsc::Sender<Job>,
    acks: mpsc::Sender<DeviceAck>,
}

/// Most acks in one transaction, and the most queued per shard.
const MAX_ACKS: usize = 1024;
const ACK_QUEUE: usize = 16 * 1024;

/// Most acks a message transaction carries; the rest ride with the next
/// ones. Gateways forward the ACKs they deferred (`docs/protocol.md` §5.5)
/// together, on their retransmit tick: at 5,000 msg/s a few hundred acks,
/// each reading the ~15 inbox entries it settles, arrived at once three
/// times a second, and the batch that took them all ran 2–3 times as long
/// as its neighbours (`auto_explain`: 15.1 ms at 200–400 acks against 5.7
/// below 50, in a slow hour), holding up every message queued behind it.
/// Acks are cumulative, so one a few batches late costs only its receipt's
/// delay, and a device's later ack replaces its queued one (see
/// [`AckQueue`]). Steady c2c load brings ~15 a batch.
const RIDE_ALONG_ACKS: usize = 32;

/// How long queued acks wait before a transaction of their own (and, on
/// SQLite, before any: see [`AckPolicy`]): receipts are not on the message
/// path, and gathering acks for a few milliseconds keeps their statements
/// few when thousands of devices ack one message each.
const ACK_LINGER: Duration = Duration::from_millis(5);

impl Committer {
    pub fn start(store: Store, pusher: Pusher, cfg: CommitterConfig) -> Committer {
        metrics::STORE_WRITERS.set(cfg.shards.max(1) as i64);
        let shards = (0..cfg.shards.max(1))
            .map(|i| {
                let (jobs, jobs_rx) = mpsc::channel(cfg.queue.max(1));
                let (acks, acks_rx) = mpsc::channel(ACK_QUEUE);
                let shard = run_shard(
                    jobs_rx,
                    acks_rx,
                    store.clone(),
                    pusher.clone(),
                    cfg.max_batch.max(1),
                );
                on_own_thread(format!("im-committer-{i}"), shard);
                Shard { jobs, acks }
            })
            .collect();
        Committer { shards }
    }

    /// Queues a message; the receiver yields once it is stored (or failed).
    pub async fn submit(
        &self,
        msg: NewMessage,
        origin: Option<Origin>,
    ) -> Result<oneshot::Receiver<SendResult>, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.shard(msg.sender)
            .jobs
            .send(Job {
                msg,
                origin,
                reply,
                queued: Instant::now(),
            })
            .await
            .map_err(|_| ApiError::unavailable("store is shutting down"))?;
        Ok(rx)
    }

    /// Queues a device acknowledgement for the next transaction; when the
    /// queue is full it is dropped (the device's next cumulative ack covers it).
    pub fn ack(&self, ack: DeviceAck) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.shard(ack.user).acks.try_send(ack) {
            metrics::ACKS_DROPPED.inc();
        }
    }

    fn shard(&self, user: i64) -> &Shard {
        &self.shards[user.unsigned_abs() as usize % self.shards.len()]
    }
}

/// Runs a writer loop on a thread of its own with a single-threaded runtime.
/// A batch is one round trip to Postgres (six for batches beyond
/// `pg_batch`'s limits, several statements on SQLite); on the shared
/// runtime each reply waited for a worker busy with gRPC and pushes to poll
/// for it (~0.2 ms a round trip at 5,000 msg/s, against ~0.03 ms here), and
/// the writer is the path every message takes.
/// The loop ends, and the thread with it, when the last [`Committer`] is dropped.
fn on_own_thread(name: String, work: impl std::future::Future<Output = ()> + Send + 'static) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a committer runtime");
    std::thread::Builder::new()
        .name(name)
        .spawn(move || runtime.block_on(work))
        .expect("a committer thread");
}

async fn run_shard(
    mut jobs_rx: mpsc::Receiver<Job>,
    mut acks_rx: mpsc::Receiver<DeviceAck>,
    store: Store,
    pusher: Pusher,
    max_batch: usize,
) {
    let policy = AckPolicy::for_backend(store.backend());
    let mut jobs = Vec::with_capacity(max_batch);
    let mut acks = AckQueue::default();
    let mut arrived = Vec::new();
    // When the oldest queued ack arrived.
    let mut acks_since: Option<Instant> = None;
    // This writer's share of `im_logic_acks_queued`.
    let mut reported = 0;
    let mut conn = WriterConn::for_writer();
    loop {
        // Both queues close together, when the last Committer is dropped;
        // queued messages are still stored first.
        if jobs.is_empty() {
            match acks_since {
                None => tokio::select! {
                    biased;
                    n = jobs_rx.recv_many(&mut jobs, max_batch) => if n == 0 { break },
                    n = acks_rx.recv_many(&mut arrived, MAX_ACKS) => if n == 0 { break },
                },
                // Queued acks wait for a message or for their linger.
                Some(since) => tokio::select! {
                    biased;
                    n = jobs_rx.recv_many(&mut jobs, max_batch) => if n == 0 { break },
                    _ = tokio::time::sleep_until((since + ACK_LINGER).into()) => {}
                },
            }
        }
        while jobs.len() < max_batch
            && let Ok(j) = jobs_rx.try_recv()
        {
            jobs.push(j);
        }
        for a in arrived.drain(..) {
            acks.push(a);
        }
        while acks.len() < MAX_ACKS
            && let Ok(a) = acks_rx.try_recv()
        {
            acks.push(a);
        }
        if !acks.is_empty() {
            acks_since.get_or_insert_with(Instant::now);
        }
        let mut riding = policy.board(&mut acks, &mut acks_since, !jobs.is_empty());
        let queued = acks.len() as i64;
        metrics::ACKS_QUEUED.add(queued - reported);
        reported = queued;
        if !riding.is_empty() || !jobs.is_empty() {
            commit(&store, &pusher, &mut conn, &mut jobs, &mut riding).await;
        }
    }
    metrics::ACKS_QUEUED.sub(reported);
}

/// When queued acks go into a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckPolicy {
    /// Postgres: with the next message batch, or alone after their linger.
    /// A separate ack transaction would lock the senders' sequence rows
    /// beside the message batches (the reason acks are here at all).
    RideAlong,
    /// SQLite (one writer, so no row locks to share): only once the oldest
    /// has waited its linger, so most message transactions carry no ack
    /// statements. Single node at 2,000 msg/s: p50 2.22 ms against 3.06
    /// with every batch carrying acks; in the cluster this was worse (p50
    /// 6.9 / 7.4 against 6.3–6.8 ms), hence per backend.
    Linger,
}

impl AckPolicy {
    fn for_backend(backend: crate::store::Backend) -> AckPolicy {
        match backend {
            crate::store::Backend::Postgres => AckPolicy::RideAlong,
            crate::store::Backend::Sqlite => AckPolicy::Linger,
        }
    }

    /// Whether `queued` acks, the oldest queued at `since`, go into the
    /// transaction about to run (`with_messages`: it stores messages too).
    fn due(self, queued: usize, since: Option<Instant>, with_messages: bool) -> bool {
        let lingered = since.is_some_and(|t| t.elapsed() >= ACK_LINGER);
        queued > 0
            && (queued >= MAX_ACKS || lingered || (self == AckPolicy::RideAlong && with_messages))
    }

    /// Takes the queued acks that go into the transaction about to run
    /// (`with_messages`: it stores messages too), the oldest first, if
    /// they are due. On Postgres a message transaction takes at most
    /// [`RIDE_ALONG_ACKS`]; the rest stay queued and wait anew, for the
    /// next message transactions or their linger (`since`: when the oldest
    /// queued ack arrived, `None` once none is left).
    fn board(
        self,
        queued: &mut AckQueue,
        since: &mut Option<Instant>,
        with_messages: bool,
    ) -> Vec<DeviceAck> {
        if !self.due(queued.len(), *since, with_messages) {
            return Vec::new();
        }
        let most = if with_messages && self == AckPolicy::RideAlong {
            RIDE_ALONG_ACKS
        } else {
            MAX_ACKS
        };
        let taken = queued.take(most);
        *since = (!queued.is_empty()).then(Instant::now);
        taken
    }
}

/// One transaction: the queued messages, then the queued acks' receipts;
/// replies once it committed, then pushes.
async fn commit(
    store: &Store,
    pusher: &Pusher,
    conn: &mut WriterConn,
    jobs: &mut Vec<Job>,
    acks: &mut Vec<DeviceAck>,
) {
    let queued: Vec<Instant> = jobs.iter().map(|j| j.queued).collect();
    let (items, tails): (Vec<NewMessage>, Vec<_>) =
        jobs.drain(..).map(|j| (j.msg, (j.origin, j.reply))).unzip();
    let n = items.len();
    let started = Instant::now();
    let result = store
        .commit_with_acks_on(conn, items, acks, im_proto::now_ms())
        .await;
    let took = started.elapsed();
    metrics::STORE_BUSY.inc_by(took.as_secs_f64());
    let acked = acks.len();
    acks.clear();
    match result {
        Ok((items, outcome)) => {
            if n > 0 {
                metrics::STORE_LATENCY.observe(took.as_secs_f64());
                metrics::STORE_BATCH.observe(n as f64);
            }
            let committed = Instant::now();
            for q in queued {
                metrics::STORE_WAIT.observe(committed.duration_since(q).as_secs_f64());
            }
            let (origins, replies): (Vec<_>, Vec<_>) = tails.into_iter().unzip();
            for (m, r) in items.iter().zip(&outcome.results) {
                if matches!(r, Ok(s) if !s.duplicate) {
                    let kind = kind(m);
                    metrics::MESSAGES.with_label_values(&[kind]).inc();
                    // Fan-out is about the users' messages, not their receipts.
                    if kind != "receipt" {
                        metrics::FANOUT.observe((m.recipients.len() + 1) as f64);
                    }
                }
            }
            for (reply, result) in replies.into_iter().zip(outcome.results) {
                let _ = reply.send(result);
            }
            let outgoing: Vec<Outgoing> = outcome
                .deliveries
                .into_iter()
                .map(|d| {
                    let o = origins.get(d.item).cloned().flatten();
                    (d, o)
                })
                .collect();
            pusher.dispatch(outgoing).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, batch = n, acks = acked, "failed to store message batch");
            for (_, reply) in tails {
                let _ = reply.send(Err(ApiError::unavailable("storage unavailable; retry")));
            }
        }
    }
}

fn kind(m: &NewMessage) -> &'static str {
    use im_proto::client::{ConversationType as C, SystemContentType};
    if m.content_type == SystemContentType::Receipt as u32 {
        return "receipt";
    }
    match m.conv_type {
        C::C2g => "c2g",
        C::S2c => "s2c",
        _ => "c2c",
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{ACK_LINGER, AckPolicy, AckQueue, DeviceAck, MAX_ACKS, RIDE_ALONG_ACKS};

    #[test]
    fn acks_ride_with_messages_on_postgres_and_linger_on_sqlite() {
        let fresh = Some(Instant::now());
        let old = Instant::now().checked_sub(ACK_LINGER + Duration::from_millis(1));
        for policy in [AckPolicy::RideAlong, AckPolicy::Linger] {
            assert!(!policy.due(0, None, true), "nothing queued");
            assert!(
                !policy.due(3, fresh, false),
                "alone, they wait their linger"
            );
            assert!(policy.due(3, old, false), "then go alone");
            assert!(
                policy.due(MAX_ACKS, fresh, false),
                "or when a batch is full"
            );
        }
        assert!(AckPolicy::RideAlong.due(3, fresh, true));
        assert!(!AckPolicy::Linger.due(3, fresh, true));
        assert!(AckPolicy::Linger.due(3, old, true));
    }

    fn queue(acks: impl IntoIterator<Item = DeviceAck>) -> AckQueue {
        let mut q = AckQueue::default();
        acks.into_iter().for_each(|a| q.push(a));
        q
    }

    fn ack(user: i64, seq: u64) -> DeviceAck {
        DeviceAck {
            user,
            device: 1,
            seq,
        }
    }

    #[test]
    fn a_burst_of_acks_is_spread_over_the_message_batches() {
        // 500 devices, one ack each.
        let burst = || queue((1..=500).map(|u| ack(u, 9)));
        let old = Instant::now().checked_sub(ACK_LINGER + Duration::from_millis(1));
        let (mut queued, mut since) = (burst(), old);
        let before = Instant::now();
        let riding = AckPolicy::RideAlong.board(&mut queued, &mut since, true);
        let first: Vec<_> = (1..=RIDE_ALONG_ACKS as i64).map(|u| ack(u, 9)).collect();
        assert_eq!(riding, first, "the oldest ride along");
        assert_eq!(queued.len(), 500 - RIDE_ALONG_ACKS, "the rest wait");
        assert!(since.is_some_and(|t| t >= before), "for the next batches");
        let next = AckPolicy::RideAlong.board(&mut queued, &mut since, true);
        assert_eq!(next[0], ack(RIDE_ALONG_ACKS as i64 + 1, 9));
        assert!(
            AckPolicy::RideAlong
                .board(&mut queued, &mut since, false)
                .is_empty(),
            "or their linger"
        );
        since = old;
        let alone = AckPolicy::RideAlong.board(&mut queued, &mut since, false);
        assert_eq!(alone.len(), 500 - 2 * RIDE_ALONG_ACKS, "alone, all");
        assert!(queued.is_empty() && since.is_none());

        // SQLite's acks linger first and then go together.
        let (mut queued, mut since) = (burst(), old);
        assert_eq!(
            AckPolicy::Linger.board(&mut queued, &mut since, true).len(),
            500
        );
        assert!(queued.is_empty() && since.is_none());
    }

    #[test]
    fn a_backlog_holds_each_device_once_at_its_oldest_place() {
        // 100 devices acking in turn, ten times over, each ack covering more.
        let mut queued = queue((1..=10).flat_map(|seq| (1..=100).map(move |u| ack(u, seq))));
        assert_eq!(queued.len(), 100);
        let mut since = Some(Instant::now());
        let riding = AckPolicy::RideAlong.board(&mut queued, &mut since, true);
        let first: Vec<_> = (1..=RIDE_ALONG_ACKS as i64).map(|u| ack(u, 10)).collect();
        assert_eq!(riding, first, "the longest waiting devices, newest acks");
        // Still folded after a batch took its share; an older ack changes nothing.
        queued.push(ack(100, 11));
        queued.push(ack(99, 3));
        let rest: Vec<_> = (RIDE_ALONG_ACKS as i64 + 1..=100)
            .map(|u| ack(u, if u == 100 { 11 } else { 10 }))
            .collect();
        assert_eq!(
            queued.take(MAX_ACKS),
            rest,
            "the others once each, in order"
        );
        // Another device of a user is another device.
        let mut q = queue([
            ack(1, 1),
            DeviceAck {
                device: 2,
                ..ack(1, 1)
            },
        ]);
        assert_eq!(q.take(MAX_ACKS).len(), 2);
    }
}
