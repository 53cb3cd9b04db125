//! The c2s Redis writer: appends upstream messages to per-service streams in
//! the order they were submitted (per sender), many per round trip; it
//! validates nothing and knows nothing of the service layer.
//!
//! Jobs queue per shard (chosen by sender, so one sender's messages keep their
//! order); a shard sends whatever is queued as one pipeline of script calls,
//! which Redis runs in order. The script checks the dedupe key
//! `{prefix}c2s-dedupe:{sender}:{client_msg_id}` (value: the stream id, TTL
//! 24 h) and runs `XADD` only when it is absent, so a retry, or a pipeline
//! resent after an error, never appends twice.
use bytes::Bytes;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

/// Entries kept per service stream (approximate trimming, `MAXLEN ~`).
pub const STREAM_MAXLEN: u64 = 1_000_000;
/// How long a (sender, client_msg_id) is remembered for deduplication.
pub const DEDUPE_TTL_SECS: u64 = 24 * 3600;
/// Parallel writers.
const SHARDS: usize = 4;
/// Most appends in one pipeline.
const MAX_BATCH: usize = 128;
/// Queued appends per shard before submitters wait.
const QUEUE: usize = 4096;

/// KEYS: stream, dedupe key. ARGV: maxlen, from, device, client_msg_id,
/// content_type, body, sent_at_ms, ttl. Returns {stream id, duplicate (0/1),
/// sent_at_ms of the original}.
const APPEND: &str = r"
local id = redis.call('GET', KEYS[2])
if id then
  local sent = string.match(id, '^(%d+)-') or '0'
  local e = redis.call('XRANGE', KEYS[1], id, id)
  if e[1] then
    local f = e[1][2]
    for i = 1, #f, 2 do
      if f[i] == 'sent_at_ms' then sent = f[i + 1] end
    end
  end
  return {id, 1, sent}
end
id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
  'from', ARGV[2], 'device', ARGV[3], 'client_msg_id', ARGV[4],
  'content_type', ARGV[5], 'body', ARGV[6], 'sent_at_ms', ARGV[7])
redis.call('SET', KEYS[2], id, 'EX', ARGV[8])
return {id, 0, ARGV[7]}";

/// One upstream message to append.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub stream_key: String,
    pub dedupe_key: String,
    pub sender: i64,
    pub device: i32,
    pub client_msg_id: String,
    pub content_type: u32,
    pub body: Bytes,
    pub sent_at_ms: u64,
}

/// The acknowledgement of one appended upstream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub stream_id: String,
    pub sent_at_ms: u64,
    pub duplicate: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("failed to append to the c2s stream: {0}")]
    Redis(String),
    #[error("the c2s writer stopped")]
    Stopped,
}

struct Job {
    msg: Upstream,
    reply: oneshot::Sender<Result<Appended, AppendError>>,
}

/// Where c2s messages go: ordered, pipelined appends on one Redis connection.
#[derive(Clone)]
pub struct C2sSink {
    shards: Vec<mpsc::Sender<Job>>,
    prefix: String,
}

impl C2sSink {
    /// Starts the writers; `prefix` is the cluster's Redis key prefix.
    pub fn new(conn: ConnectionManager, prefix: &str) -> C2sSink {
        let shards = (0..SHARDS)
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(run_shard(rx, conn.clone()));
                tx
            })
            .collect();
        C2sSink {
            shards,
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Queues an append behind the sender's earlier ones; the receiver
    /// yields once Redis answered.
    pub async fn submit(
        &self,
        msg: Upstream,
    ) -> Result<oneshot::Receiver<Result<Appended, AppendError>>, AppendError> {
        let shard = &self.shards[msg.sender.unsigned_abs() as usize % self.shards.len()];
        let (reply, rx) = oneshot::channel();
        shard
            .send(Job { msg, reply })
            .await
            .map_err(|_| AppendError::Stopped)?;
        Ok(rx)
    }
}

async fn run_shard(mut rx: mpsc::Receiver<Job>, mut conn: ConnectionManager) {
    let script = redis::Script::new(APPEND);
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        // Loading is a no-op once loaded, and makes EVALSHA safe after a Redis restart.
        pipe.load_script(&script).ignore();
        for j in &jobs {
            let m = &j.msg;
            let mut inv = script.prepare_invoke();
            inv.key(&m.stream_key)
                .key(&m.dedupe_key)
                .arg(STREAM_MAXLEN)
                .arg(m.sender)
                .arg(m.device)
                .arg(m.client_msg_id.as_str())
                .arg(m.content_type)
                .arg(&m.body[..])
                .arg(m.sent_at_ms)
                .arg(DEDUPE_TTL_SECS);
            pipe.invoke_script(&inv);
        }
        let result: Result<Vec<(String, i64, String)>, _> = pipe.query_async(&mut conn).await;
        match result {
            Ok(rows) if rows.len() == jobs.len() => {
                for (j, (stream_id, dup, sent)) in jobs.drain(..).zip(rows) {
                    let _ = j.reply.send(Ok(Appended {
                        stream_id,
                        sent_at_ms: sent.parse().unwrap_or(j.msg.sent_at_ms),
                        duplicate: dup != 0,
                    }));
                }
            }
            Ok(rows) => {
                let why = format!("{} replies to {} appends", rows.len(), jobs.len());
                fail_all(&mut jobs, why);
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = jobs.len(), "failed to append c2s batch");
                fail_all(&mut jobs, e.to_string());
            }
        }
    }
}

fn fail_all(jobs: &mut Vec<Job>, why: String) {
    for j in jobs.drain(..) {
        let _ = j.reply.send(Err(AppendError::Redis(why.clone())));
    }
}
