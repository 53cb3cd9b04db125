//! Where the time went, second by second: the servers' histograms of each
//! hop a message takes, scraped once a second while sending, so that a
//! second in which the clients saw a latency spike can be put on a hop.
//!
//! The hops, in a message's order: the gateway's request (frame read to
//! `SENT` queued: logic and the store behind it), the writer's wait (the
//! message reaching the store writer to its commit) and its batches, and
//! the pusher (a stored batch to its gateway's answer), and the gateway's
//! push to the device's ACK, for the pushes a client ACKs at once
//! (`receipt="wanted"`: the others' ACKs may wait up to a second,
//! `docs/protocol.md` §5.5, and would say nothing of a second's spike).
//! Each is summed over the processes reporting it. Beside them, the store
//! writers' busy share of the
//! second (`im_logic_store_busy_seconds_total`, summed over writers): a
//! writer near 1.0 has no slack to work off a queue.
//! A second's figures are what was observed in it, so a message sent near
//! the end of second k may show in second k + 1.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::flow::Shared;
use crate::metrics::{self, Cumulative};

/// (name in the report, Prometheus histogram, the label sets taken: a
/// substring of their lines, empty for all).
pub const HOPS: [(&str, &str, &str); 5] = [
    ("gateway_request", "im_gateway_request_seconds", ""),
    ("writer_wait", "im_logic_store_wait_seconds", ""),
    ("batch", "im_logic_store_latency_seconds", ""),
    ("push", "im_logic_push_seconds", ""),
    (
        "gateway_push",
        "im_gateway_push_latency_seconds",
        "receipt=\"wanted\"",
    ),
];

/// One hop in one second, in milliseconds (upper bounds of the buckets
/// holding the 99th percentile and the largest observation).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HopSecond {
    pub count: f64,
    pub p99_le_ms: f64,
    pub max_le_ms: f64,
}

/// The store writers' busy time, summed over writers and processes.
const WRITER_BUSY: &str = "im_logic_store_busy_seconds_total";

/// The hops' histograms and the writers' busy seconds over all processes
/// at one moment.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    hops: BTreeMap<&'static str, Cumulative>,
    writer_busy: f64,
}

/// One second: each hop ([`HopSecond`]), and the share of the second the
/// store writers were busy.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Second {
    pub hops: BTreeMap<&'static str, HopSecond>,
    pub writer_busy: f64,
}

impl Scrape {
    /// Sums each hop's histogram over the processes' `/metrics` pages.
    pub fn of(pages: &[String]) -> Scrape {
        let mut hops = BTreeMap::new();
        for (hop, name, label) in HOPS {
            for page in pages {
                if let Some(h) = Cumulative::parse_where(page, name, label) {
                    hops.entry(hop).or_insert_with(Cumulative::default).add(&h);
                }
            }
        }
        let writer_busy = pages
            .iter()
            .filter_map(|p| metrics::total(p, WRITER_BUSY))
            .sum();
        Scrape { hops, writer_busy }
    }

    /// What happened in the `secs` since `earlier`: each hop's observations
    /// (hops with none left out) and the writers' busy share.
    pub fn since(&self, earlier: &Scrape, secs: f64) -> Second {
        let mut out = BTreeMap::new();
        for (hop, now) in &self.hops {
            let d = earlier
                .hops
                .get(hop)
                .map_or_else(|| now.clone(), |e| now.since(e));
            if d.count > 0.0 {
                out.insert(
                    *hop,
                    HopSecond {
                        count: d.count,
                        p99_le_ms: d.le_at(0.99) * 1000.0,
                        max_le_ms: d.le_at(1.0) * 1000.0,
                    },
                );
            }
        }
        Second {
            hops: out,
            writer_busy: (self.writer_busy - earlier.writer_busy) / secs.max(1e-3),
        }
    }
}

/// Scrapes `urls` at every whole second of `shared`'s clock until sending
/// stops, and returns what each second saw, by second.
pub async fn sample(urls: Vec<String>, shared: Arc<Shared>) -> BTreeMap<usize, Second> {
    let mut seconds = BTreeMap::new();
    let mut last: Option<(usize, Instant, Scrape)> = None;
    while !shared.stop_sending.load(Ordering::Relaxed) {
        let now_ms = shared.ms() as u64;
        let second = (now_ms / 1000 + 1) as usize;
        tokio::time::sleep(Duration::from_millis(second as u64 * 1000 - now_ms)).await;
        let pages = futures::future::join_all(urls.iter().map(|u| metrics::scrape(u))).await;
        // A page that failed leaves the second out rather than showing a
        // process's whole history as one second's.
        let Ok(pages) = pages.into_iter().collect::<Result<Vec<_>, _>>() else {
            last = None;
            continue;
        };
        let (at, scrape) = (Instant::now(), Scrape::of(&pages));
        if let Some((prev_second, prev_at, prev)) = &last
            && *prev_second + 1 == second
        {
            let secs = (at - *prev_at).as_secs_f64();
            seconds.insert(*prev_second, scrape.since(prev, secs));
        }
        last = Some((second, at, scrape));
    }
    seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(wait_1ms: u32, wait_100ms: u32, push: u32, busy: f64) -> String {
        format!(
            "im_logic_store_busy_seconds_total {busy}\n\
             im_logic_store_wait_seconds_bucket{{le=\"0.001\"}} {wait_1ms}\n\
             im_logic_store_wait_seconds_bucket{{le=\"0.1\"}} {}\n\
             im_logic_store_wait_seconds_bucket{{le=\"+Inf\"}} {}\n\
             im_logic_store_wait_seconds_sum 0\n\
             im_logic_store_wait_seconds_count {}\n\
             im_logic_push_seconds_bucket{{le=\"0.002\"}} {push}\n\
             im_logic_push_seconds_bucket{{le=\"+Inf\"}} {push}\n\
             im_logic_push_seconds_sum 0\n\
             im_logic_push_seconds_count {push}\n\
             im_gateway_push_latency_seconds_bucket{{receipt=\"none\",le=\"1\"}} {push}\n\
             im_gateway_push_latency_seconds_bucket{{receipt=\"none\",le=\"+Inf\"}} {push}\n\
             im_gateway_push_latency_seconds_count{{receipt=\"none\"}} {push}\n\
             im_gateway_push_latency_seconds_bucket{{receipt=\"wanted\",le=\"0.004\"}} {wait_1ms}\n\
             im_gateway_push_latency_seconds_bucket{{receipt=\"wanted\",le=\"+Inf\"}} {wait_1ms}\n\
             im_gateway_push_latency_seconds_count{{receipt=\"wanted\"}} {wait_1ms}\n",
            wait_1ms + wait_100ms,
            wait_1ms + wait_100ms,
            wait_1ms + wait_100ms,
        )
    }

    #[test]
    fn a_second_shows_only_what_was_observed_in_it_over_all_processes() {
        // Two processes; in the second between the scrapes one message
        // waited up to 100 ms for the writer, 99 waited up to 1 ms, and
        // three pushes were answered within 2 ms.
        // The two writers were busy 0.9 s and 0.3 s of the 1.2 s between.
        let before = Scrape::of(&[page(1000, 5, 10, 4.0), page(0, 0, 7, 1.0)]);
        let after = Scrape::of(&[page(1099, 6, 11, 4.9), page(0, 0, 9, 1.3)]);
        let second = after.since(&before, 1.2);
        assert!((second.writer_busy - 1.0).abs() < 1e-9, "{second:?}");
        let second = second.hops;
        let wait = &second["writer_wait"];
        assert_eq!(wait.count, 100.0);
        assert_eq!(wait.p99_le_ms, 1.0);
        assert_eq!(wait.max_le_ms, 100.0);
        let push = &second["push"];
        assert_eq!((push.count, push.max_le_ms), (3.0, 2.0));
        // The gateway's push counts only the pushes ACKed at once.
        let acked = &second["gateway_push"];
        assert_eq!((acked.count, acked.max_le_ms), (99.0, 4.0));
        // Hops no process reports, or with nothing in the second, are left out.
        assert!(!second.contains_key("batch"));
        let idle = Scrape::of(&[page(1099, 6, 11, 2.0)]);
        let idle = idle.since(&idle, 1.0);
        assert!(idle.hops.is_empty() && idle.writer_busy == 0.0);
    }
}
