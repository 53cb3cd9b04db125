//! Where the time went, second by second: the servers' histograms of each
//! hop a message takes, scraped once a second while sending, so that a
//! second in which the clients saw a latency spike can be put on a hop.
//!
//! The hops, in a message's order: the gateway's request (frame read to
//! `SENT` queued: logic and the store behind it), the writer's wait (the
//! message reaching the store writer to its commit) and its batches, and
//! the pusher (a stored batch to its gateway's answer). Each is summed over
//! the processes reporting it. The gateway's push time to the device's ACK
//! is left out: a client ACKs a push of receipts only within 500 ms
//! (`docs/protocol.md` §5.5), so that histogram's top says nothing of a
//! second's spike.
//! A second's figures are what was observed in it, so a message sent near
//! the end of second k may show in second k + 1.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::flow::Shared;
use crate::metrics::{self, Cumulative};

/// (name in the report, Prometheus histogram).
pub const HOPS: [(&str, &str); 4] = [
    ("gateway_request", "im_gateway_request_seconds"),
    ("writer_wait", "im_logic_store_wait_seconds"),
    ("batch", "im_logic_store_latency_seconds"),
    ("push", "im_logic_push_seconds"),
];

/// One hop in one second, in milliseconds (upper bounds of the buckets
/// holding the 99th percentile and the largest observation).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HopSecond {
    pub count: f64,
    pub p99_le_ms: f64,
    pub max_le_ms: f64,
}

/// The hops' histograms over all processes at one moment.
#[derive(Debug, Clone, Default)]
pub struct Scrape(BTreeMap<&'static str, Cumulative>);

impl Scrape {
    /// Sums each hop's histogram over the processes' `/metrics` pages.
    pub fn of(pages: &[String]) -> Scrape {
        let mut hops = BTreeMap::new();
        for (hop, name) in HOPS {
            for page in pages {
                if let Some(h) = Cumulative::parse(page, name) {
                    hops.entry(hop).or_insert_with(Cumulative::default).add(&h);
                }
            }
        }
        Scrape(hops)
    }

    /// Each hop's observations since `earlier` (hops with none left out).
    pub fn since(&self, earlier: &Scrape) -> BTreeMap<&'static str, HopSecond> {
        let mut out = BTreeMap::new();
        for (hop, now) in &self.0 {
            let d = earlier
                .0
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
        out
    }
}

/// Scrapes `urls` at every whole second of `shared`'s clock until sending
/// stops, and returns each second's hops, by second.
pub async fn sample(
    urls: Vec<String>,
    shared: Arc<Shared>,
) -> BTreeMap<usize, BTreeMap<&'static str, HopSecond>> {
    let mut seconds = BTreeMap::new();
    let mut last: Option<(usize, Scrape)> = None;
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
        let scrape = Scrape::of(&pages);
        if let Some((prev_second, prev)) = &last
            && *prev_second + 1 == second
        {
            seconds.insert(*prev_second, scrape.since(prev));
        }
        last = Some((second, scrape));
    }
    seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(wait_1ms: u32, wait_100ms: u32, push: u32) -> String {
        format!(
            "im_logic_store_wait_seconds_bucket{{le=\"0.001\"}} {wait_1ms}\n\
             im_logic_store_wait_seconds_bucket{{le=\"0.1\"}} {}\n\
             im_logic_store_wait_seconds_bucket{{le=\"+Inf\"}} {}\n\
             im_logic_store_wait_seconds_sum 0\n\
             im_logic_store_wait_seconds_count {}\n\
             im_logic_push_seconds_bucket{{le=\"0.002\"}} {push}\n\
             im_logic_push_seconds_bucket{{le=\"+Inf\"}} {push}\n\
             im_logic_push_seconds_sum 0\n\
             im_logic_push_seconds_count {push}\n",
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
        let before = Scrape::of(&[page(1000, 5, 10), page(0, 0, 7)]);
        let after = Scrape::of(&[page(1099, 6, 11), page(0, 0, 9)]);
        let second = after.since(&before);
        let wait = &second["writer_wait"];
        assert_eq!(wait.count, 100.0);
        assert_eq!(wait.p99_le_ms, 1.0);
        assert_eq!(wait.max_le_ms, 100.0);
        let push = &second["push"];
        assert_eq!((push.count, push.max_le_ms), (3.0, 2.0));
        // Hops no process reports, or with nothing in the second, are left out.
        assert!(!second.contains_key("batch"));
        let idle = Scrape::of(&[page(1099, 6, 11)]).since(&Scrape::of(&[page(1099, 6, 11)]));
        assert!(idle.is_empty());
    }
}
