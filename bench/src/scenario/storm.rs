//! Reconnect storm: N authenticated clients drop their connections at the
//! same moment and all reconnect and re-authenticate at once, retrying on
//! errors; the figure is the time until the last one is back.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use im_client::DeviceType;
use serde_json::json;

use crate::raw::{self, RawConn};
use crate::run::{self, Outcome, bar};
use crate::sys::CpuSampler;
use crate::target::Target;
use crate::timeline::Timeline;

#[derive(Debug, Clone, clap::Args)]
pub struct StormArgs {
    /// Clients (one process holds them, so at most ~18,000).
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Connections per source address.
    #[arg(long, default_value_t = 5_000)]
    pub per_ip: usize,
    /// Attempts per client before it counts as failed.
    #[arg(long, default_value_t = 20)]
    pub max_attempts: u32,
}

/// Sessions per user: one per known device type.
const DEVICES: usize = crate::scenario::idle::DEVICES;

fn device(i: usize) -> DeviceType {
    DeviceType::try_from(1 + (i % DEVICES) as i32).unwrap_or(DeviceType::Desktop)
}

pub async fn run(target: &mut Target, a: &StormArgs) -> anyhow::Result<Outcome> {
    let n = a.clients.max(1);
    if n > 18_000 {
        bail!("at most 18,000 clients fit in one process here");
    }
    let users = run::users(target, "storm", n.div_ceil(DEVICES)).await?;
    let dsts: Vec<SocketAddr> = target
        .gateway_tcp
        .iter()
        .map(|a| a.parse().with_context(|| format!("gateway address {a}")))
        .collect::<anyhow::Result<_>>()?;
    let plan: Vec<(usize, SocketAddr, std::net::IpAddr)> = (0..n)
        .map(|i| (i, dsts[i % dsts.len()], raw::source_ip(i, a.per_ip)))
        .collect();
    let pb = bar(n as u64, "connect");
    let first: Vec<Result<RawConn, raw::RawError>> = futures::stream::iter(plan.iter().copied())
        .map(|(i, dst, src)| {
            let (token, pb) = (users[i / DEVICES].token.clone(), pb.clone());
            async move {
                let r =
                    raw::connect_auth(Some(src), dst, &token, device(i), Duration::from_secs(60))
                        .await;
                pb.inc(1);
                r
            }
        })
        .buffered(256)
        .collect()
        .await;
    pb.finish_and_clear();
    let mut conns = Vec::with_capacity(n);
    for r in first {
        conns.push(r.context("initial connect failed")?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The storm: every connection closes, every client reconnects at once.
    let mut cpu = CpuSampler::new(target.cpu_groups());
    cpu.start();
    let pb = bar(n as u64, "reconnect");
    let kicked = Arc::new(AtomicU64::new(0));
    drop(conns);
    let t0 = Instant::now();
    // Reconnect from other source addresses: the dropped connections sit in
    // TIME_WAIT on the old ones, and binding next to thousands of them makes
    // the kernel's port search the bottleneck (measured: im-bench at 150% CPU).
    let tasks: Vec<_> = plan
        .iter()
        .map(|&(i, dst, _)| {
            (
                i,
                dst,
                raw::source_ip(i + n.div_ceil(a.per_ip.max(1)) * a.per_ip.max(1), a.per_ip),
            )
        })
        .map(|(i, dst, src)| {
            let (token, pb, max) = (users[i / DEVICES].token.clone(), pb.clone(), a.max_attempts);
            let kicked = kicked.clone();
            tokio::spawn(async move {
                let mut errors: Vec<String> = Vec::new();
                for attempt in 0..max {
                    match raw::connect_auth(
                        Some(src),
                        dst,
                        &token,
                        device(i),
                        Duration::from_secs(30),
                    )
                    .await
                    {
                        Ok(conn) => {
                            let took = t0.elapsed();
                            pb.inc(1);
                            // Held for the rest of the run: a close now means a kick.
                            tokio::spawn(async move {
                                raw::hold(conn, Duration::from_secs(25)).await;
                                kicked.fetch_add(1, Ordering::Relaxed);
                            });
                            return (Some(took), errors);
                        }
                        Err(e) => {
                            errors.push(e.to_string());
                            let backoff =
                                50u64 * (1 << attempt.min(5)) + rand::random::<u64>() % 50;
                            tokio::time::sleep(Duration::from_millis(backoff)).await;
                        }
                    }
                }
                (None, errors)
            })
        })
        .collect();
    let mut timeline = Timeline::new(0);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = 0u64;
    let mut last = Duration::ZERO;
    for t in tasks {
        let (took, errs) = t.await.unwrap_or((None, vec!["task failed".into()]));
        for e in errs {
            *errors.entry(e).or_default() += 1;
        }
        match took {
            Some(d) => {
                last = last.max(d);
                timeline.record(d.as_secs() as usize, d.as_micros() as u64);
            }
            None => failed += 1,
        }
    }
    pb.finish_and_clear();
    let cpu = cpu.stop();
    // Anything closed in the seconds after the storm was kicked or dropped.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut out = Outcome {
        cpu,
        metrics: target.metrics().await,
        ..Default::default()
    };
    let closed_after = kicked.load(Ordering::Relaxed);
    out.figure("clients", n);
    out.figure("all_reauthenticated_secs", last.as_secs_f64());
    out.figure("reauth_latency", timeline.summary());
    out.figure("failed_clients", failed);
    out.figure("errors", &errors);
    out.figure("error_total", errors.values().sum::<u64>());
    out.figure("closed_within_3s_after", closed_after);
    if failed > 0 {
        out.failures
            .push(format!("{failed} clients never re-authenticated"));
    }
    if closed_after > 0 {
        out.failures.push(format!(
            "{closed_after} new sessions were closed right after the storm"
        ));
    }
    out.timeline = Some(timeline);
    out.parameters = json!({
        "clients": n, "gateways": dsts.len(), "per_ip": a.per_ip, "max_attempts": a.max_attempts,
        "counted": "from the moment all connections were dropped until the last client's AUTH succeeded",
    });
    out.plot_title = format!("reconnect-storm: {n} clients, time to re-authenticate");
    Ok(out)
}
