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
//!
//! On Postgres a shard writes on two connections of its own: while one
//! batch's `COMMIT` waits for the WAL flush, the next batch's statements run
//! on the other connection ([`Staged`] says why that keeps every guarantee).
use std::time::{Duration, Instant};

use im_common::api::ApiError;
use tokio::sync::{mpsc, oneshot};

use crate::metrics;
use crate::pusher::{Origin, Outgoing, Pusher};
use crate::store::receipts::DeviceAck;
use crate::store::{Backend, BatchOutcome, NewMessage, SendResult, Store, StoreError, WriterConn};

struct Job {
    msg: NewMessage,
    origin: Option<Origin>,
    reply: oneshot::Sender<SendResult>,
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

/// How long queued acks wait before a transaction of their own (and, on
/// SQLite, before any: see [`AckPolicy`]): receipts are not on the message
/// path, and gathering acks for a few milliseconds keeps their statements
/// few when thousands of devices ack one message each.
const ACK_LINGER: Duration = Duration::from_millis(5);

impl Committer {
    pub fn start(store: Store, pusher: Pusher, cfg: CommitterConfig) -> Committer {
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
            .send(Job { msg, origin, reply })
            .await
            .map_err(|_| ApiError::unavailable("store is shutting down"))?;
        Ok(rx)
    }

    /// Queues a device acknowledgement for the next transaction; when the
    /// queue is full it is dropped (the device's next cumulative ack covers it).
    pub fn ack(&self, ack: DeviceAck) {
        let _ = self.shard(ack.user).acks.try_send(ack);
    }

    fn shard(&self, user: i64) -> &Shard {
        &self.shards[user.unsigned_abs() as usize % self.shards.len()]
    }
}

/// Runs a writer loop on a thread of its own with a single-threaded runtime.
/// A transaction is about seven round trips to the database and its commit,
/// one after the other; on the shared runtime each reply waited for a worker busy with
/// gRPC and pushes to poll for it (~0.2 ms a round trip at 5,000 msg/s,
/// against ~0.03 ms here), and the writer is the path every message takes.
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
    jobs_rx: mpsc::Receiver<Job>,
    acks_rx: mpsc::Receiver<DeviceAck>,
    store: Store,
    pusher: Pusher,
    max_batch: usize,
) {
    let mut intake = Intake {
        policy: AckPolicy::for_backend(store.backend()),
        jobs_rx,
        acks_rx,
        jobs: Vec::with_capacity(max_batch),
        acks: Vec::new(),
        acks_since: None,
        max_batch,
    };
    // On Postgres a batch's COMMIT (the WAL flush) overlaps the next
    // batch's statements, on a second connection; see [`Staged`].
    let pipelined = store.backend() == Backend::Postgres;
    let mut free: Vec<WriterConn> = (0..if pipelined { 2 } else { 1 })
        .map(|_| WriterConn::dedicated())
        .collect();
    let mut staged: Option<Staged> = None;
    loop {
        // Both queues close together, when the last Committer is dropped;
        // queued messages are still stored first.
        if staged.is_none() && !intake.wait().await {
            break;
        }
        intake.take_queued();
        let batch = intake.next_batch();
        let conn = || WriterConn::dedicated();
        staged = match (staged.take(), batch) {
            (None, None) => None,
            (None, Some(b)) => {
                let s = stage(&store, free.pop().unwrap_or_else(conn), b, pipelined).await;
                if pipelined {
                    Some(s)
                } else {
                    free.push(finish(&pusher, s).await);
                    None
                }
            }
            (Some(s), None) => {
                free.push(commit_and_finish(&store, &pusher, s).await);
                None
            }
            // The staged batch's replies and pushes go out as soon as it
            // committed, while the next one's statements still run.
            (Some(s), Some(b)) => {
                let next = stage(&store, free.pop().unwrap_or_else(conn), b, true);
                let (back, next) = tokio::join!(commit_and_finish(&store, &pusher, s), next);
                free.push(back);
                Some(next)
            }
        };
    }
    if let Some(s) = staged {
        commit_and_finish(&store, &pusher, s).await;
    }
}

/// What is queued for the writer, and when acks are due.
struct Intake {
    policy: AckPolicy,
    jobs_rx: mpsc::Receiver<Job>,
    acks_rx: mpsc::Receiver<DeviceAck>,
    jobs: Vec<Job>,
    acks: Vec<DeviceAck>,
    /// When the oldest queued ack arrived.
    acks_since: Option<Instant>,
    max_batch: usize,
}

/// One transaction's work: messages and the acks that ride with them.
struct Batch {
    jobs: Vec<Job>,
    acks: Vec<DeviceAck>,
}

impl Intake {
    /// Waits for a message, or for queued acks to be due alone; false once
    /// the queues closed.
    async fn wait(&mut self) -> bool {
        if !self.jobs.is_empty() {
            return true;
        }
        match self.acks_since {
            None => tokio::select! {
                biased;
                n = self.jobs_rx.recv_many(&mut self.jobs, self.max_batch) => n > 0,
                n = self.acks_rx.recv_many(&mut self.acks, MAX_ACKS) => n > 0,
            },
            // Queued acks wait for a message or for their linger.
            Some(since) => tokio::select! {
                biased;
                n = self.jobs_rx.recv_many(&mut self.jobs, self.max_batch) => n > 0,
                _ = tokio::time::sleep_until((since + ACK_LINGER).into()) => true,
            },
        }
    }

    /// Takes in what is queued now, without waiting.
    fn take_queued(&mut self) {
        while self.jobs.len() < self.max_batch
            && let Ok(j) = self.jobs_rx.try_recv()
        {
            self.jobs.push(j);
        }
        while self.acks.len() < MAX_ACKS
            && let Ok(a) = self.acks_rx.try_recv()
        {
            self.acks.push(a);
        }
        if !self.acks.is_empty() {
            self.acks_since.get_or_insert_with(Instant::now);
        }
    }

    /// The next transaction's work, if any is due.
    fn next_batch(&mut self) -> Option<Batch> {
        let with_acks = self
            .policy
            .due(self.acks.len(), self.acks_since, !self.jobs.is_empty());
        if !with_acks && self.jobs.is_empty() {
            return None;
        }
        let acks = if with_acks {
            self.acks_since = None;
            std::mem::take(&mut self.acks)
        } else {
            Vec::new()
        };
        let jobs = std::mem::replace(&mut self.jobs, Vec::with_capacity(self.max_batch));
        Some(Batch { jobs, acks })
    }
}

/// A batch whose statements ran, with its connection. On Postgres its
/// transaction is still open: the committer sends its `COMMIT` (the WAL
/// flush, ~0.1–0.3 ms here, longer when the disk stalls) together with the
/// next batch's statements on its other connection, instead of one after
/// the other. That changes nothing a client sees: the next batch takes the
/// row locks of any user this one touched only after this one committed
/// (so one user's sequences still follow commit order), this one holds
/// every lock it needs before its `COMMIT` (so neither waits for the
/// other in a cycle), and its replies and pushes go out first. Two logic
/// pods' committers already write side by side in the same way.
struct Staged {
    conn: WriterConn,
    tails: Vec<(Option<Origin>, oneshot::Sender<SendResult>)>,
    acked: usize,
    started: Instant,
    result: Result<(Vec<NewMessage>, BatchOutcome), StoreError>,
}

/// Runs a batch's statements on `conn`; `open`: leave the transaction open
/// for [`commit_and_finish`] (Postgres), else commit it here.
async fn stage(store: &Store, mut conn: WriterConn, batch: Batch, open: bool) -> Staged {
    let (items, tails): (Vec<NewMessage>, Vec<_>) = batch
        .jobs
        .into_iter()
        .map(|j| (j.msg, (j.origin, j.reply)))
        .unzip();
    let started = Instant::now();
    let now = im_proto::now_ms();
    let result = if open {
        store
            .stage_with_acks_on(&mut conn, items, &batch.acks, now)
            .await
    } else {
        store
            .commit_with_acks_on(&mut conn, items, &batch.acks, now)
            .await
    };
    Staged {
        conn,
        tails,
        acked: batch.acks.len(),
        started,
        result,
    }
}

async fn commit_and_finish(store: &Store, pusher: &Pusher, mut s: Staged) -> WriterConn {
    if s.result.is_ok()
        && let Err(e) = store.commit_staged(&mut s.conn).await
    {
        s.result = Err(e);
    }
    finish(pusher, s).await
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
}

/// Replies once the batch committed (or failed), then pushes; hands the
/// connection back.
async fn finish(pusher: &Pusher, s: Staged) -> WriterConn {
    let n = s.tails.len();
    match s.result {
        Ok((items, outcome)) => {
            if n > 0 {
                metrics::STORE_LATENCY.observe(s.started.elapsed().as_secs_f64());
                metrics::STORE_BATCH.observe(n as f64);
            }
            let (origins, replies): (Vec<_>, Vec<_>) = s.tails.into_iter().unzip();
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
            tracing::warn!(error = %e, batch = n, acks = s.acked, "failed to store message batch");
            for (_, reply) in s.tails {
                let _ = reply.send(Err(ApiError::unavailable("storage unavailable; retry")));
            }
        }
    }
    s.conn
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

    use super::{ACK_LINGER, AckPolicy, MAX_ACKS};

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
}
