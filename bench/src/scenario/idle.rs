//! Idle connections: N authenticated connections held by worker processes
//! (a process may hold at most ~19,000 sockets here), spread over source
//! addresses in 127.0.0.0/8 and over the gateways; the figure is the growth
//! of the gateways' VmRSS divided by the connections.
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use im_client::DeviceType;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::raw;
use crate::run::{self, Outcome, bar};
use crate::sys;
use crate::target::Target;

#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// Connections per worker process (each holds one socket per connection).
    #[arg(long, default_value_t = 17_000)]
    pub per_worker: usize,
    /// Connections per source address (127.0.0.2, .3, …).
    #[arg(long, default_value_t = 10_000)]
    pub per_ip: usize,
    /// Connects in flight per worker.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Seconds to hold every connection before measuring.
    #[arg(long, default_value_t = 5)]
    pub hold_secs: u64,
}

/// What one worker must connect.
#[derive(Debug, Serialize, Deserialize)]
pub struct Job {
    pub concurrency: usize,
    pub conns: Vec<JobConn>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobConn {
    pub token: String,
    pub device: i32,
    pub dst: SocketAddr,
    pub src: IpAddr,
}

/// A worker's summary line after it tried every connection.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ready {
    pub ok: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub connect_secs: f64,
}

/// Sessions per user: one per known device type (mobile, desktop, web, pad).
pub const DEVICES: usize = 4;

fn device(i: i32) -> DeviceType {
    DeviceType::try_from(i).unwrap_or(DeviceType::Unspecified)
}

/// The worker side (`im-bench idle-worker --job FILE`): connects its share,
/// reports through `say` ("progress OK FAILED" lines, then "ready {json}"),
/// then holds every connection until stdin closes.
pub async fn worker(job: PathBuf, say: impl Fn(String)) -> anyhow::Result<()> {
    let job: Job = serde_json::from_slice(&std::fs::read(&job)?)?;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut first_error = None;
    let mut stream = futures::stream::iter(job.conns)
        .map(|c| async move {
            raw::connect_auth(
                Some(c.src),
                c.dst,
                &c.token,
                device(c.device),
                Duration::from_secs(60),
            )
            .await
        })
        .buffer_unordered(job.concurrency.max(1));
    let mut last_say = Instant::now();
    while let Some(r) = stream.next().await {
        match r {
            Ok(conn) => {
                ok.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(raw::hold(conn, Duration::from_secs(25)));
            }
            Err(e) => {
                failed.fetch_add(1, Ordering::Relaxed);
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
        if last_say.elapsed() > Duration::from_millis(300) {
            say(format!(
                "progress {} {}",
                ok.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed)
            ));
            last_say = Instant::now();
        }
    }
    let ready = Ready {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        first_error,
        connect_secs: t0.elapsed().as_secs_f64(),
    };
    say(format!("ready {}", serde_json::to_string(&ready)?));
    // Hold until the parent closes stdin (or kills us).
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    Ok(())
}

pub async fn run(target: &mut Target, a: &IdleArgs) -> anyhow::Result<Outcome> {
    let n = a.conns.max(1);
    let gateways = target.gateway_tcp.len().max(1);
    if n / gateways > 19_000 {
        bail!(
            "{n} connections over {gateways} gateway process(es) is more than ~19,000 each \
             (the per-process file limit here); pass --gateways {}",
            n.div_ceil(18_000)
        );
    }
    let users = run::users(target, "idle", n.div_ceil(DEVICES)).await?;
    let dsts: Vec<SocketAddr> = target
        .gateway_tcp
        .iter()
        .map(|a| a.parse().with_context(|| format!("gateway address {a}")))
        .collect::<anyhow::Result<_>>()?;
    let conns: Vec<JobConn> = (0..n)
        .map(|i| JobConn {
            token: users[i / DEVICES].token.clone(),
            device: 1 + (i % DEVICES) as i32,
            dst: dsts[i % dsts.len()],
            src: raw::source_ip(i, a.per_ip),
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before: Vec<u64> = target
        .gateway_pids
        .iter()
        .map(|&p| sys::rss_kib(p))
        .collect();

    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    let mut lines = Vec::new();
    for (w, chunk) in conns.chunks(a.per_worker.max(1)).enumerate() {
        let path = dir.path().join(format!("job-{w}.json"));
        let job = Job {
            concurrency: a.concurrency,
            conns: chunk.to_vec(),
        };
        std::fs::write(&path, serde_json::to_vec(&job)?)?;
        let mut child = tokio::process::Command::new(&exe)
            .arg("idle-worker")
            .arg("--job")
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("failed to start an idle-worker process")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        lines.push(BufReader::new(stdout).lines());
        workers.push(child);
    }
    let pb = bar(n as u64, "idle conns");
    let t0 = Instant::now();
    let mut progress = vec![(0u64, 0u64); workers.len()];
    let mut ready: Vec<Option<Ready>> = workers.iter().map(|_| None).collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, String)>(1024);
    for (w, mut l) in lines.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = l.next_line().await {
                if tx.send((w, line)).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    while ready.iter().any(Option::is_none) {
        let Some((w, line)) = rx.recv().await else {
            bail!("an idle-worker exited before it was ready");
        };
        if let Some(rest) = line.strip_prefix("progress ") {
            let mut it = rest.split(' ').map(|x| x.parse().unwrap_or(0));
            progress[w] = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        } else if let Some(rest) = line.strip_prefix("ready ") {
            let r: Ready = serde_json::from_str(rest)?;
            progress[w] = (r.ok, r.failed);
            ready[w] = Some(r);
        }
        let (ok, failed): (u64, u64) = progress.iter().fold((0, 0), |a, p| (a.0 + p.0, a.1 + p.1));
        pb.set_position(ok + failed);
        pb.set_message(format!("ok {ok} failed {failed}"));
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    pb.set_message("holding");
    tokio::time::sleep(Duration::from_secs(a.hold_secs)).await;
    let rss_after: Vec<u64> = target
        .gateway_pids
        .iter()
        .map(|&p| sys::rss_kib(p))
        .collect();
    let metrics = target.metrics().await;
    pb.finish_and_clear();
    let ready: Vec<Ready> = ready.into_iter().flatten().collect();
    let ok: u64 = ready.iter().map(|r| r.ok).sum();
    let failed: u64 = ready.iter().map(|r| r.failed).sum();
    // Connections the gateways still count (the server's own view).
    let gateway_conns: f64 = metrics
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|v| v.get("im_gateway_connections")?.as_f64())
                .sum()
        })
        .unwrap_or(0.0);
    for mut w in workers {
        drop(w.stdin.take());
        let _ = w.kill().await;
    }
    let grown_kib: u64 = rss_after
        .iter()
        .zip(&rss_before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    let mut out = Outcome {
        metrics,
        ..Default::default()
    };
    out.figure("connections", ok);
    out.figure("failed", failed);
    out.figure("gateway_connections_gauge", gateway_conns);
    out.figure(
        "rss_bytes_per_conn",
        if ok > 0 {
            (grown_kib * 1024) as f64 / ok as f64
        } else {
            0.0
        },
    );
    out.figure("gateway_rss_before_kib", &rss_before);
    out.figure("gateway_rss_after_kib", &rss_after);
    out.figure("connect_secs", connect_secs);
    out.figure("connects_per_sec", (ok as f64 / connect_secs).round());
    out.figure("worker_processes", ready.len());
    if failed > 0 {
        let first = ready
            .iter()
            .find_map(|r| r.first_error.clone())
            .unwrap_or_default();
        out.failures
            .push(format!("{failed} connections failed, first: {first}"));
    }
    if (gateway_conns as u64) < ok {
        out.failures.push(format!(
            "gateways report {gateway_conns} connections after holding, {ok} were made"
        ));
    }
    out.parameters = json!({
        "conns": n, "per_worker": a.per_worker, "per_ip": a.per_ip, "concurrency": a.concurrency,
        "hold_secs": a.hold_secs, "gateways": gateways, "device_types_per_user": DEVICES,
        "counted": "sum over gateways of (VmRSS after - VmRSS before) / authenticated connections",
    });
    Ok(out)
}
