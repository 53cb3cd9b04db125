//! Runs senders against connected clients for a while, then drains, checks
//! exactly-once delivery and computes the rate and latency figures.
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use im_client::ChatClient;

use crate::flow::{self, Dest, Shared, lock};
use crate::hops::{self, Second};
use crate::ledger::{self, SenderLog};
use crate::run::{Outcome, spinner};
use crate::sys::CpuSampler;
use crate::target::Target;
use crate::timeline::Timeline;

/// A second whose longest oversleep ([`flow::stall_probe`]) reached this
/// is listed in the report's `overslept.seconds_over_20ms`.
const STALL_MS: f64 = 20.0;

/// How senders pace themselves.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Each sender keeps `window` messages undelivered.
    Closed { window: usize },
    /// All senders together send `rate` messages per second, evenly spread.
    Open { rate: f64 },
}

pub struct Spec {
    /// (client index, destination) of each sender; sender s is `senders[s]`.
    pub senders: Vec<(usize, Dest)>,
    /// Client indexes that must receive each message of sender s.
    pub recipients_of: Box<dyn Fn(usize) -> Vec<usize> + Send + Sync>,
    pub fanout: u32,
    pub pace: Pace,
    pub duration: Duration,
    pub warmup: Duration,
    pub body_size: usize,
}

/// Drives `spec` over `clients`; fills the rate, the latency and the verdict.
pub async fn drive(target: &mut Target, clients: &[Arc<ChatClient>], spec: Spec) -> Outcome {
    let mut out = Outcome::default();
    let window = match spec.pace {
        Pace::Closed { window } => window,
        Pace::Open { .. } => 0,
    };
    let shared = Shared::new(
        spec.senders.len(),
        window * spec.fanout as usize,
        spec.warmup.as_secs() as usize,
    );
    let receivers: Vec<_> = clients
        .iter()
        .map(|c| tokio::spawn(flow::receive_loop(c.clone(), shared.clone())))
        .collect();
    let logs: Vec<Arc<Mutex<SenderLog>>> = spec.senders.iter().map(|_| Arc::default()).collect();
    let mut cpu = CpuSampler::new(target.cpu_groups());
    cpu.start();
    let send_start_ms = shared.ms();
    let mut senders = Vec::new();
    match spec.pace {
        Pace::Closed { .. } => {
            for (s, &(ci, dest)) in spec.senders.iter().enumerate() {
                senders.push(tokio::spawn(flow::closed_sender(
                    clients[ci].clone(),
                    s as u32,
                    dest,
                    spec.fanout,
                    spec.body_size,
                    logs[s].clone(),
                    shared.clone(),
                )));
            }
        }
        Pace::Open { rate } => {
            let open = spec
                .senders
                .iter()
                .enumerate()
                .map(|(s, &(ci, dest))| flow::OpenSender {
                    client: clients[ci].clone(),
                    s: s as u32,
                    dest,
                    log: logs[s].clone(),
                })
                .collect();
            let (rt, sh) = (tokio::runtime::Handle::current(), shared.clone());
            let (until, body_size) = (spec.duration, spec.body_size);
            senders.push(tokio::task::spawn_blocking(move || {
                flow::pace_open(rt, open, rate, until, body_size, sh)
            }));
        }
    }
    let probe = {
        let sh = shared.clone();
        std::thread::spawn(move || flow::stall_probe(&sh))
    };
    let hop_seconds = tokio::spawn(hops::sample(target.metrics_urls.clone(), shared.clone()));
    let pb = spinner("sending");
    let t0 = Instant::now();
    let mut last = (Instant::now(), 0u64);
    while t0.elapsed() < spec.duration {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let received = shared.received.load(Ordering::Relaxed);
        let rate = (received - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), received);
        pb.set_message(format!(
            "acked {} delivered {} ({:.0}/s) receipts {} errors {}",
            shared.acked.load(Ordering::Relaxed),
            received,
            rate,
            shared.receipts.load(Ordering::Relaxed),
            shared.error_count()
        ));
        if let Err(e) = target.check_alive() {
            shared.error(e.to_string());
        }
        if shared.error_count() > 0 {
            break;
        }
    }
    shared.stop_sending.store(true, Ordering::Relaxed);
    let send_end_ms = shared.ms();
    for s in senders {
        let _ = s.await;
    }
    let _ = probe.join();
    pb.set_message("draining");
    let drained = flow::drain(&shared, spec.fanout as u64, Duration::from_secs(30)).await;
    out.cpu = cpu.stop();
    // Awaited only now: the sampler sleeps to the next whole second before
    // it sees that sending stopped, and that second is not the run's.
    let hop_seconds = hop_seconds.await.unwrap_or_default();
    out.metrics = target.metrics().await;
    // Receipts for the last acknowledgements arrive a little later; let them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    shared.stop_receiving.store(true, Ordering::Relaxed);
    let mut timeline = Timeline::new(spec.warmup.as_secs() as usize);
    let mut rlogs = Vec::new();
    for r in receivers {
        match r.await {
            Ok((log, tl)) => {
                timeline.merge(&tl);
                rlogs.push(log);
            }
            Err(e) => {
                shared.error(format!("receiver task failed: {e}"));
                rlogs.push(Default::default());
            }
        }
    }
    pb.finish_and_clear();
    let slogs: Vec<SenderLog> = logs.iter().map(|l| lock(l).clone()).collect();
    let verdict = ledger::verify(&slogs, &rlogs, &spec.recipients_of);

    // Rate: deliveries complete (stored, pushed, received, acknowledged)
    // between the end of the warm-up and the end of sending.
    let from = send_start_ms + spec.warmup.as_millis() as u32;
    let window_secs = (send_end_ms.saturating_sub(from)) as f64 / 1000.0;
    let in_window = verdict
        .completed_ms
        .iter()
        .filter(|&&t| t >= from && t < send_end_ms)
        .count();
    let last_done = verdict
        .completed_ms
        .iter()
        .copied()
        .max()
        .unwrap_or(send_end_ms);
    out.figure(
        "deliveries_per_sec",
        (in_window as f64 / window_secs.max(1e-3)).round(),
    );
    out.figure("measured_window_secs", window_secs);
    out.figure(
        "messages_acknowledged",
        shared.acked.load(Ordering::Relaxed),
    );
    out.figure("deliveries", verdict.delivered);
    out.figure(
        "overall_deliveries_per_sec",
        (verdict.delivered as f64
            / ((last_done.saturating_sub(send_start_ms)) as f64 / 1000.0).max(1e-3))
        .round(),
    );
    out.figure(
        "messages_sent_per_sec",
        (shared.acked.load(Ordering::Relaxed) as f64
            / ((send_end_ms - send_start_ms) as f64 / 1000.0).max(1e-3))
        .round(),
    );
    out.figure("receipts_received", shared.receipts.load(Ordering::Relaxed));
    let receipted = lock(&shared.receipted_at);
    out.figure("messages_receipted", receipted.len());
    let receipts = flow::receipt_latency(
        &lock(&shared.sent_ids),
        &receipted,
        spec.warmup.as_secs() as usize,
    );
    drop(receipted);
    let receipts = receipts.summary();
    if receipts.count > 0 {
        out.figure("receipt_latency", receipts);
    }
    out.figure(
        "own_messages_handed_back_to_sender",
        shared.own_echoes.load(Ordering::Relaxed),
    );
    out.figure(
        "retried_receive_errors",
        shared.retryable_errors.load(Ordering::Relaxed),
    );
    out.figure("latency", timeline.summary());
    out.figure("sent_latency", lock(&shared.sent).summary());
    if let Some((p50, p99)) = *lock(&shared.pacer_late_us) {
        out.figure("pacer_late_us", serde_json::json!({"p50": p50, "p99": p99}));
    }
    let overslept = lock(&shared.overslept);
    out.figure(
        "seconds",
        seconds(&timeline, &lock(&shared.sent), &overslept, hop_seconds),
    );
    let stalls: Vec<serde_json::Value> = overslept
        .points()
        .into_iter()
        .filter(|p| p.max_ms >= STALL_MS)
        .map(|p| serde_json::json!({"second": p.second, "max_ms": p.max_ms}))
        .collect();
    out.figure(
        "overslept",
        serde_json::json!({"summary": overslept.summary(), "seconds_over_20ms": stalls}),
    );
    drop(overslept);
    if !drained {
        out.failures
            .push("not everything was acknowledged and delivered within 30 s of the end".into());
    }
    let errors = lock(&shared.errors).clone();
    out.conclude(&errors, verdict, timeline);
    out
}

/// Each second of sending: the clients' latency (send to receive, and send
/// to `SENT`, by the second of the send's schedule), the stall probe's
/// longest oversleep, and each hop's figures and the writers' busy share
/// ([`hops`]), so that a spike can be read across them.
fn seconds(
    received: &Timeline,
    sent: &Timeline,
    overslept: &Timeline,
    mut hop_seconds: BTreeMap<usize, Second>,
) -> Vec<serde_json::Value> {
    let by_second = |t: &Timeline| -> BTreeMap<usize, (f64, f64)> {
        t.points()
            .into_iter()
            .map(|p| (p.second, (p.p99_ms, p.max_ms)))
            .collect()
    };
    let (sent, overslept) = (by_second(sent), by_second(overslept));
    received
        .points()
        .into_iter()
        .map(|p| {
            let mut row = serde_json::json!({
                "second": p.second,
                "latency_p99_ms": p.p99_ms,
                "latency_max_ms": p.max_ms,
                "sent_max_ms": sent.get(&p.second).map(|s| s.1),
                "overslept_max_ms": overslept.get(&p.second).map(|s| s.1),
            });
            if let Some(s) = hop_seconds.remove(&p.second) {
                row["hops"] = serde_json::json!(s.hops);
                row["writer_busy"] = serde_json::json!(s.writer_busy);
            }
            row
        })
        .collect()
}
