//! Group commit: sends queue up per shard and are stored many to a
//! transaction; a reply is sent only after its transaction committed.
//!
//! Shards are chosen by sender, so one sender's messages are committed in the
//! order they arrived, while different senders commit in parallel.
use std::time::Instant;

use im_common::api::ApiError;
use tokio::sync::{mpsc, oneshot};

use crate::metrics;
use crate::pusher::{Origin, Outgoing, Pusher};
use crate::store::{NewMessage, SendResult, Store, WriterConn};

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
    shards: Vec<mpsc::Sender<Job>>,
}

impl Committer {
    pub fn start(store: Store, pusher: Pusher, cfg: CommitterConfig) -> Committer {
        let shards = (0..cfg.shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(cfg.queue.max(1));
                tokio::spawn(run_shard(
                    rx,
                    store.clone(),
                    pusher.clone(),
                    cfg.max_batch.max(1),
                ));
                tx
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
        let shard = &self.shards[msg.sender.unsigned_abs() as usize % self.shards.len()];
        let (reply, rx) = oneshot::channel();
        shard
            .send(Job { msg, origin, reply })
            .await
            .map_err(|_| ApiError::unavailable("store is shutting down"))?;
        Ok(rx)
    }
}

async fn run_shard(mut rx: mpsc::Receiver<Job>, store: Store, pusher: Pusher, max_batch: usize) {
    let mut jobs = Vec::with_capacity(max_batch);
    let mut conn = WriterConn::default();
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let (items, tails): (Vec<NewMessage>, Vec<_>) =
            jobs.drain(..).map(|j| (j.msg, (j.origin, j.reply))).unzip();
        let started = Instant::now();
        match store
            .commit_batch_on(&mut conn, &items, im_proto::now_ms())
            .await
        {
            Ok(outcome) => {
                metrics::STORE_LATENCY.observe(started.elapsed().as_secs_f64());
                metrics::STORE_BATCH.observe(items.len() as f64);
                let (origins, replies): (Vec<_>, Vec<_>) = tails.into_iter().unzip();
                for (m, r) in items.iter().zip(&outcome.results) {
                    if matches!(r, Ok(s) if !s.duplicate) {
                        metrics::MESSAGES.with_label_values(&[kind(m)]).inc();
                        metrics::FANOUT.observe((m.recipients.len() + 1) as f64);
                    }
                }
                for (reply, result) in replies.into_iter().zip(outcome.results) {
                    let _ = reply.send(result);
                }
                let outgoing: Vec<Outgoing> = outcome
                    .deliveries
                    .into_iter()
                    .map(|d| {
                        let o = origins[d.item].clone();
                        (d, o)
                    })
                    .collect();
                pusher.dispatch(outgoing).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = items.len(), "failed to store message batch");
                for (_, reply) in tails {
                    let _ = reply.send(Err(ApiError::unavailable("storage unavailable; retry")));
                }
            }
        }
    }
}

fn kind(m: &NewMessage) -> &'static str {
    use im_proto::client::ConversationType as C;
    match m.conv_type {
        C::C2g => "c2g",
        C::S2c => "s2c",
        _ => "c2c",
    }
}
