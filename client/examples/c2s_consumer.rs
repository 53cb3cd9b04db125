//! A business server consuming upstream (c2s) messages of one service from
//! its Redis Stream with a consumer group: nothing is lost when a consumer
//! crashes, because entries stay pending until they are acknowledged.
//!
//! ```sh
//! cargo run -p im-client --example c2s_consumer -- --service orders
//! ```
//!
//! 1. `XGROUP CREATE {prefix}c2s:{service} GROUP 0 MKSTREAM` (once; an
//!    existing group is kept).
//! 2. Re-process what this consumer read but never acknowledged before it
//!    stopped (`XREADGROUP ... STREAMS key 0`), then take over entries other
//!    consumers left pending for longer than `--min-idle-ms` (`XAUTOCLAIM`).
//! 3. Loop: `XREADGROUP GROUP g consumer COUNT 100 BLOCK 5000 STREAMS key >`,
//!    process each entry, `XACK` it; re-run `XAUTOCLAIM` every so often.
//!
//! Processing must be idempotent: an entry processed just before a crash
//! (and not yet acknowledged) is delivered again. Key your side effects on
//! the stream id, or on (`from`, `client_msg_id`).
use std::time::{Duration, Instant};

use clap::Parser;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

#[derive(Debug, Parser)]
#[command(about = "Consume c2s messages of one service from Redis Streams")]
struct Args {
    /// Redis the IM cluster uses (its --redis-url).
    #[arg(long, env = "IM_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The IM cluster's key prefix (its --redis-prefix).
    #[arg(long, env = "IM_REDIS_PREFIX", default_value = "im:")]
    prefix: String,
    /// The service clients send to (C2sSendRequest.service).
    #[arg(long)]
    service: String,
    /// Consumer group: every group sees every entry once.
    #[arg(long, default_value = "g")]
    group: String,
    /// This consumer's name, unique and stable within the group (a pod name).
    #[arg(long, default_value = "consumer-1")]
    consumer: String,
    /// Take over entries another consumer left unacknowledged this long.
    #[arg(long, default_value_t = 30_000)]
    min_idle_ms: u64,
    /// Exit once the stream has been idle for one BLOCK period (for demos).
    #[arg(long)]
    exit_when_idle: bool,
}

/// What the business server does with one message; here: print it.
fn process(e: &StreamId) {
    let field = |k: &str| e.get::<String>(k).unwrap_or_default();
    println!(
        "{} from={} device={} client_msg_id={} content_type={} sent_at_ms={} body={:?}",
        e.id,
        field("from"),
        field("device"),
        field("client_msg_id"),
        field("content_type"),
        field("sent_at_ms"),
        field("body"),
    );
}

fn ack(conn: &mut redis::Connection, key: &str, group: &str, id: &str) -> redis::RedisResult<()> {
    redis::cmd("XACK").arg(key).arg(group).arg(id).query(conn)
}

/// One XREADGROUP; `start` is `>` (new entries) or `0` (this consumer's pending ones).
fn read(
    conn: &mut redis::Connection,
    args: &Args,
    key: &str,
    start: &str,
) -> redis::RedisResult<Vec<StreamId>> {
    let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&args.group)
        .arg(&args.consumer)
        .arg("COUNT")
        .arg(100)
        .arg("BLOCK")
        .arg(5000)
        .arg("STREAMS")
        .arg(key)
        .arg(start)
        .query(conn)?;
    Ok(reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default())
}

/// Claims and processes every entry idle for `min_idle_ms`, in pages of 100.
fn reclaim(conn: &mut redis::Connection, args: &Args, key: &str) -> redis::RedisResult<usize> {
    let (mut cursor, mut n) = ("0-0".to_string(), 0);
    loop {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(key)
            .arg(&args.group)
            .arg(&args.consumer)
            .arg(args.min_idle_ms)
            .arg(&cursor)
            .arg("COUNT")
            .arg(100)
            .query(conn)?;
        for e in &reply.claimed {
            process(e);
            ack(conn, key, &args.group, &e.id)?;
            n += 1;
        }
        cursor = reply.next_stream_id;
        if cursor == "0-0" {
            return Ok(n);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let key = format!("{}c2s:{}", args.prefix, args.service);
    let mut conn = redis::Client::open(args.redis_url.as_str())?.get_connection()?;

    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(&args.group)
        .arg("0")
        .arg("MKSTREAM")
        .query(&mut conn);
    match created {
        Ok(()) => eprintln!("created group {} on {key}", args.group),
        Err(e) if e.code() == Some("BUSYGROUP") => {}
        Err(e) => return Err(e.into()),
    }

    // What this consumer read and never acknowledged (it crashed), then what others left.
    loop {
        let mine = read(&mut conn, &args, &key, "0")?;
        if mine.is_empty() {
            break;
        }
        for e in &mine {
            process(e);
            ack(&mut conn, &key, &args.group, &e.id)?;
        }
    }
    let claimed = reclaim(&mut conn, &args, &key)?;
    eprintln!(
        "consuming {key} as {}/{} ({claimed} re-claimed)",
        args.group, args.consumer
    );

    let mut last_reclaim = Instant::now();
    loop {
        let entries = read(&mut conn, &args, &key, ">")?;
        for e in &entries {
            process(e);
            ack(&mut conn, &key, &args.group, &e.id)?;
        }
        if last_reclaim.elapsed() > Duration::from_millis(args.min_idle_ms) {
            reclaim(&mut conn, &args, &key)?;
            last_reclaim = Instant::now();
        }
        if entries.is_empty() && args.exit_when_idle {
            return Ok(());
        }
    }
}
