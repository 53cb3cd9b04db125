//! One-to-one messages between sender/recipient pairs: closed-loop
//! throughput, or open-loop latency at a fixed rate. Sender i talks to
//! recipient i on the other gateway (cross-gateway pushes in a cluster).
use std::time::Duration;

use serde_json::json;

use crate::drive::{self, Pace, Spec};
use crate::flow::Dest;
use crate::run::{self, Outcome};
use crate::target::Target;

#[derive(Debug, Clone, clap::Args)]
pub struct ThroughputArgs {
    /// Sender/recipient pairs.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Messages each sender keeps undelivered.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    #[arg(long, default_value_t = 20)]
    pub duration_secs: u64,
    /// Seconds at the start left out of the figures.
    #[arg(long, default_value_t = 3)]
    pub warmup_secs: u64,
    #[arg(long, default_value_t = 64)]
    pub body_size: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LatencyArgs {
    /// Messages per second over all senders.
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// Senders (each with its own recipient).
    #[arg(long, default_value_t = 500)]
    pub senders: usize,
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    #[arg(long, default_value_t = 3)]
    pub warmup_secs: u64,
    #[arg(long, default_value_t = 64)]
    pub body_size: usize,
}

async fn pairs_run(
    target: &mut Target,
    pairs: usize,
    pace: Pace,
    duration: u64,
    warmup: u64,
    body_size: usize,
) -> anyhow::Result<Outcome> {
    let users = run::users(target, "c2c", pairs * 2).await?;
    let gateways = target.gateway_tcp.len();
    // Senders on gateway i, their recipients on the next one.
    let clients = run::connect_all(target, &users, |i| {
        (if i < pairs { i } else { i + 1 }) % gateways.max(1)
    })
    .await?;
    let spec = Spec {
        senders: (0..pairs)
            .map(|s| (s, Dest::User(users[pairs + s].id)))
            .collect(),
        recipients_of: Box::new(move |s| vec![pairs + s]),
        fanout: 1,
        pace,
        duration: Duration::from_secs(duration),
        warmup: Duration::from_secs(warmup),
        body_size,
    };
    Ok(drive::drive(target, &clients, spec).await)
}

pub async fn throughput(target: &mut Target, a: &ThroughputArgs) -> anyhow::Result<Outcome> {
    let mut out = pairs_run(
        target,
        a.pairs,
        Pace::Closed { window: a.window },
        a.duration_secs,
        a.warmup_secs,
        a.body_size,
    )
    .await?;
    let rate = out
        .figures
        .get("deliveries_per_sec")
        .cloned()
        .unwrap_or_default();
    out.figure("msgs_per_sec", rate);
    out.parameters = json!({
        "pairs": a.pairs, "window": a.window, "duration_secs": a.duration_secs,
        "warmup_secs": a.warmup_secs, "body_size": a.body_size,
        "counted": "a message counts once SENT came back and the recipient received (and acknowledged) it",
    });
    out.plot_title = format!(
        "c2c-throughput: {} pairs, window {}, send→receive latency",
        a.pairs, a.window
    );
    Ok(out)
}

pub async fn latency(target: &mut Target, a: &LatencyArgs) -> anyhow::Result<Outcome> {
    let mut out = pairs_run(
        target,
        a.senders,
        Pace::Open { rate: a.rate },
        a.duration_secs,
        a.warmup_secs,
        a.body_size,
    )
    .await?;
    out.parameters = json!({
        "rate": a.rate, "senders": a.senders, "duration_secs": a.duration_secs,
        "warmup_secs": a.warmup_secs, "body_size": a.body_size,
        "latency": "recipient receive time minus the scheduled send time (corrected for coordinated omission)",
    });
    out.plot_title = format!("c2c-latency: {} msg/s over {} senders", a.rate, a.senders);
    Ok(out)
}
