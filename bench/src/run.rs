//! What every scenario shares: its outcome, progress bars, creating users
//! and connecting chat clients with bounded concurrency.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use im_client::{ChatClient, DeviceType};
use indicatif::{ProgressBar, ProgressStyle};

use crate::ledger::Verdict;
use crate::provision::{self, BenchUser};
use crate::sys::CpuUse;
use crate::target::Target;
use crate::timeline::Timeline;

/// What a scenario measured.
#[derive(Default)]
pub struct Outcome {
    pub parameters: serde_json::Value,
    pub figures: serde_json::Map<String, serde_json::Value>,
    pub failures: Vec<String>,
    pub verdict: Option<Verdict>,
    pub timeline: Option<Timeline>,
    pub cpu: CpuUse,
    pub metrics: serde_json::Value,
    pub plot_title: String,
}

impl Outcome {
    /// Records the run's client errors and exactly-once verdict (each a
    /// failure when not clean) and its latency timeline.
    pub fn conclude(&mut self, errors: &[String], verdict: Verdict, timeline: Timeline) {
        if !errors.is_empty() {
            self.failures
                .push(format!("{} errors, first: {}", errors.len(), errors[0]));
        }
        if !verdict.ok() {
            self.failures.push(format!(
                "exactly-once check failed: lost {}, duplicated {}, unexpected {}, unacknowledged sends {}; e.g. {:?}",
                verdict.lost, verdict.duplicated, verdict.unexpected, verdict.unacked_sends, verdict.examples
            ));
        }
        self.verdict = Some(verdict);
        self.timeline = Some(timeline);
    }

    pub fn figure(&mut self, name: &str, v: impl serde::Serialize) {
        self.figures.insert(
            name.to_string(),
            serde_json::to_value(v).unwrap_or_default(),
        );
    }
}

/// A bar counting to `len` (hidden when stderr is not a terminal).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// A spinner with a message, for phases measured in time.
pub fn spinner(what: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{prefix:>12} [{elapsed_precise}] {spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_prefix(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Creates `n` users, with a progress bar.
pub async fn users(target: &Target, prefix: &str, n: usize) -> anyhow::Result<Vec<BenchUser>> {
    let pb = bar(n as u64, "users");
    let done = Arc::new(AtomicU64::new(0));
    let ticker = {
        let (pb, done) = (pb.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                pb.set_position(done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let prefix = format!("{prefix}{:06x}_", rand::random::<u32>() & 0xFF_FFFF);
    let r = provision::users(&target.database_url, &target.jwt_secret, &prefix, n, &done).await;
    ticker.abort();
    pb.finish_and_clear();
    r
}

/// Connects user `i` to gateway `gateway_of(i)`, receiving only what comes next.
pub async fn connect_all(
    target: &Target,
    users: &[BenchUser],
    gateway_of: impl Fn(usize) -> usize,
) -> anyhow::Result<Vec<Arc<ChatClient>>> {
    let pb = bar(users.len() as u64, "connect");
    let endpoints: Vec<_> = (0..users.len())
        .map(|i| target.endpoint(gateway_of(i)))
        .collect();
    let clients = futures::stream::iter(users.iter().zip(endpoints))
        .map(|(u, ep)| {
            let pb = pb.clone();
            async move {
                let c = ChatClient::connect(&ep, &u.token, DeviceType::Desktop, None).await?;
                pb.inc(1);
                Ok::<_, anyhow::Error>(Arc::new(c))
            }
        })
        .buffered(64)
        .try_collect()
        .await;
    pb.finish_and_clear();
    clients
}
