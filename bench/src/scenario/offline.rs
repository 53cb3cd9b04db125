//! Offline sync: recipients are offline while senders fill their inboxes
//! through the normal send path (C2C_SEND); then all recipients connect at
//! once and pull everything in pages, acknowledging each page.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use im_client::{ChatClient, Connection, DeviceType};
use serde_json::json;

use crate::flow::{self, Dest, SYSTEM_CONTENT_TYPE};
use crate::ledger::{self, RecipientLog, SenderLog, msg_id, parse_msg_id};
use crate::run::{self, Outcome, bar};
use crate::sys::CpuSampler;
use crate::target::Target;
use crate::timeline::Timeline;

#[derive(Debug, Clone, clap::Args)]
pub struct OfflineArgs {
    /// Recipients (each with one sender).
    #[arg(long, default_value_t = 20)]
    pub users: usize,
    /// Backlog per recipient.
    #[arg(long, default_value_t = 5000)]
    pub messages: usize,
    /// Page size of PULL (the server caps it at IM_MAX_PULL, 500 by default).
    #[arg(long, default_value_t = 500)]
    pub page: u32,
    /// Sends each sender keeps in flight while filling.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    #[arg(long, default_value_t = 64)]
    pub body_size: usize,
}

/// Fills: sender i sends `messages` to recipient i, `window` at a time.
async fn fill(
    senders: &[Arc<ChatClient>],
    recipients: &[i64],
    a: &OfflineArgs,
) -> (Vec<SenderLog>, Vec<String>) {
    let pb = bar((senders.len() * a.messages) as u64, "fill");
    let epoch = Instant::now();
    let tasks = senders.iter().enumerate().map(|(s, c)| {
        let (c, to, pb) = (c.clone(), recipients[s], pb.clone());
        let (n_msgs, window, size) = (a.messages, a.window, a.body_size);
        async move {
            let log = Mutex::new(SenderLog::default());
            let mut errors = Vec::new();
            let results: Vec<_> = futures::stream::iter(0..n_msgs)
                .map(|_| {
                    let n = flow::lock(&log).issue();
                    let (c, pb) = (c.clone(), pb.clone());
                    async move {
                        let body = flow::body(0, size);
                        let r =
                            flow::send_retry(&c, Dest::User(to), &msg_id(s as u32, n), body).await;
                        pb.inc(1);
                        (n, r)
                    }
                })
                .buffer_unordered(window)
                .collect()
                .await;
            let mut log = log.into_inner().unwrap_or_else(|p| p.into_inner());
            for (n, r) in results {
                match r {
                    Ok(_) => log.acked(n, epoch.elapsed().as_millis() as u32),
                    Err(e) => errors.push(format!("send b{s}-{n} failed: {e}")),
                }
            }
            (log, errors)
        }
    });
    let done = futures::future::join_all(tasks).await;
    pb.finish_and_clear();
    let mut logs = Vec::new();
    let mut errors = Vec::new();
    for (l, e) in done {
        logs.push(l);
        errors.extend(e);
    }
    (logs, errors)
}

/// Connects, authenticates and pulls everything; returns what arrived,
/// the page latencies and when it finished (since `epoch`).
async fn sync_one(
    target: &Target,
    gateway: usize,
    token: &str,
    page: u32,
    epoch: Instant,
) -> anyhow::Result<(RecipientLog, Timeline, Duration, usize)> {
    let im_client::Endpoint::Tcp(addr) = target.endpoint(gateway) else {
        anyhow::bail!("offline-sync needs a TCP gateway");
    };
    let conn = Connection::connect_tcp(&addr).await?;
    conn.auth(token, DeviceType::Desktop).await?;
    let mut log = RecipientLog::default();
    let mut timeline = Timeline::new(0);
    let mut after = 0u64;
    let mut pages = 0;
    loop {
        let t = Instant::now();
        let resp = conn.pull(after, page).await?;
        let now = epoch.elapsed();
        timeline.record(now.as_secs() as usize, t.elapsed().as_micros() as u64);
        pages += 1;
        for m in &resp.messages {
            if m.content_type >= SYSTEM_CONTENT_TYPE {
                continue;
            }
            match parse_msg_id(&m.client_msg_id) {
                Some((s, n)) => log.record(s, n, now.as_millis() as u32),
                None => log.foreign += 1,
            }
        }
        let end = resp.messages.last().map(|m| m.seq).unwrap_or(after);
        if end > after {
            conn.ack(end).await?;
        }
        if !resp.has_more || end <= after {
            return Ok((log, timeline, epoch.elapsed(), pages));
        }
        after = end;
    }
}

pub async fn sync(target: &mut Target, a: &OfflineArgs) -> anyhow::Result<Outcome> {
    let n = a.users.max(1);
    let users = run::users(target, "off", n * 2).await?;
    let gateways = target.gateway_tcp.len().max(1);
    let senders = run::connect_all(target, &users[..n], |i| i % gateways).await?;
    let recipient_ids: Vec<i64> = users[n..].iter().map(|u| u.id).collect();
    let t_fill = Instant::now();
    let (slogs, mut errors) = fill(&senders, &recipient_ids, a).await;
    let fill_secs = t_fill.elapsed().as_secs_f64();
    drop(senders);

    let mut cpu = CpuSampler::new(target.cpu_groups());
    cpu.start();
    let pb = bar(n as u64, "sync");
    let epoch = Instant::now();
    let results = futures::future::join_all(users[n..].iter().enumerate().map(|(i, u)| {
        let pb = pb.clone();
        let target = &*target;
        async move {
            let r = sync_one(target, (i + 1) % gateways, &u.token, a.page, epoch).await;
            pb.inc(1);
            r
        }
    }))
    .await;
    let sync_secs = epoch.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let mut out = Outcome {
        cpu: cpu.stop(),
        metrics: target.metrics().await,
        ..Default::default()
    };
    let mut rlogs = vec![RecipientLog::default(); n];
    let mut timeline = Timeline::new(0);
    let mut pages = 0;
    let mut per_user = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok((log, tl, done, p)) => {
                rlogs[i] = log;
                timeline.merge(&tl);
                pages += p;
                per_user.push(done.as_secs_f64());
            }
            Err(e) => errors.push(format!("recipient {i} failed to sync: {e}")),
        }
    }
    // Ledger recipient indexes are 0..n here: sender s -> recipient s.
    let verdict = ledger::verify(&slogs, &rlogs, |s| vec![s]);
    let total = verdict.delivered;
    out.figure("msgs_per_sec", (total as f64 / sync_secs).round());
    out.figure("synced_messages", total);
    out.figure("sync_secs", sync_secs);
    out.figure("pages", pages);
    out.figure("pull_page_latency", timeline.summary());
    out.figure(
        "fill_msgs_per_sec",
        ((n * a.messages) as f64 / fill_secs).round(),
    );
    out.figure("fill_secs", fill_secs);
    per_user.sort_by(f64::total_cmp);
    out.figure("slowest_user_secs", per_user.last().copied().unwrap_or(0.0));
    out.conclude(&errors, verdict, timeline);
    out.parameters = json!({
        "users": n, "messages_per_user": a.messages, "page": a.page, "fill_window": a.window,
        "body_size": a.body_size,
        "counted": "messages pulled by all recipients / wall time from the first connect to the last page",
    });
    out.plot_title = format!(
        "offline-sync: {n} users x {} messages, PULL page latency",
        a.messages
    );
    Ok(out)
}
