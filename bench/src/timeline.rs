//! Latency over time: every sample (second of the run, microseconds), made
//! into HDR histograms (one per second plus a total) only when summarised.
//! Pure data; merged from many tasks at the end.
//!
//! Samples, not a histogram per task and second: each histogram of this
//! range is ~140 KB of counters, and with 500 recipient tasks each starting
//! a fresh one every second the load generator zeroed ~70 MB of new pages a
//! second (a quarter of its CPU at 5,000 msg/s, on the cores it shares with
//! the servers). Eight bytes a sample is 1.2 MB for a 150,000-message run.
use hdrhistogram::Histogram;

/// Highest latency recorded (60 s); larger values are clamped.
const MAX_US: u64 = 60_000_000;

#[derive(Clone)]
pub struct Timeline {
    /// (second of the run, latency in microseconds), in no particular order.
    samples: Vec<(u32, u32)>,
    /// Seconds before this are left out of the total.
    warmup_secs: usize,
}

fn histogram() -> Histogram<u64> {
    // 3 significant digits from 1 us to 60 s: ~140 KB of counters.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

/// One point of the plot and the JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Point {
    pub second: usize,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Summary figures of a histogram, in milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Timeline {
    pub fn new(warmup_secs: usize) -> Self {
        Timeline {
            samples: Vec::new(),
            warmup_secs,
        }
    }

    /// Records `latency_us` for an event that belongs to second `at_sec`.
    pub fn record(&mut self, at_sec: usize, latency_us: u64) {
        let v = latency_us.clamp(1, MAX_US) as u32;
        self.samples
            .push((u32::try_from(at_sec).unwrap_or(u32::MAX), v));
    }

    pub fn merge(&mut self, other: &Timeline) {
        self.samples.extend_from_slice(&other.samples);
    }

    /// Everything recorded at or after the warm-up, as one histogram.
    fn total(&self) -> Histogram<u64> {
        let mut h = histogram();
        for &(sec, v) in &self.samples {
            if sec as usize >= self.warmup_secs {
                let _ = h.record(u64::from(v));
            }
        }
        h
    }

    pub fn summary(&self) -> Summary {
        let h = &self.total();
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }

    pub fn points(&self) -> Vec<Point> {
        let mut per_sec: std::collections::BTreeMap<u32, Histogram<u64>> = Default::default();
        for &(sec, v) in &self.samples {
            let _ = per_sec
                .entry(sec)
                .or_insert_with(histogram)
                .record(u64::from(v));
        }
        per_sec
            .into_iter()
            .map(|(second, h)| Point {
                second: second as usize,
                count: h.len(),
                p50_ms: ms(h.value_at_quantile(0.5)),
                p99_ms: ms(h.value_at_quantile(0.99)),
                max_ms: ms(h.max()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_excluded_from_the_total_and_merge_adds() {
        let mut a = Timeline::new(1);
        a.record(0, 50_000);
        a.record(1, 1_000);
        let mut b = Timeline::new(1);
        b.record(2, 3_000);
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 2);
        assert!(s.max_ms < 3.1 && s.max_ms > 2.9, "{s:?}");
        let p = a.points();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].count, 1);
        assert!(p[0].p50_ms > 49.0);
    }
}
