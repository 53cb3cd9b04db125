//! Latency over time: one HDR histogram per second of the run plus a total,
//! values in microseconds. Pure data; merged from many tasks at the end.
use hdrhistogram::Histogram;

/// Highest latency recorded (60 s); larger values are clamped.
const MAX_US: u64 = 60_000_000;

#[derive(Clone)]
pub struct Timeline {
    per_sec: Vec<Histogram<u64>>,
    /// Everything recorded at or after `warmup_secs`.
    total: Histogram<u64>,
    warmup_secs: usize,
}

fn histogram() -> Histogram<u64> {
    // 3 significant digits from 1 us to 60 s: a few tens of KiB.
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
            per_sec: Vec::new(),
            total: histogram(),
            warmup_secs,
        }
    }

    /// Records `latency_us` for an event that belongs to second `at_sec`.
    pub fn record(&mut self, at_sec: usize, latency_us: u64) {
        let v = latency_us.clamp(1, MAX_US);
        while self.per_sec.len() <= at_sec {
            self.per_sec.push(histogram());
        }
        let _ = self.per_sec[at_sec].record(v);
        if at_sec >= self.warmup_secs {
            let _ = self.total.record(v);
        }
    }

    pub fn merge(&mut self, other: &Timeline) {
        while self.per_sec.len() < other.per_sec.len() {
            self.per_sec.push(histogram());
        }
        for (mine, theirs) in self.per_sec.iter_mut().zip(&other.per_sec) {
            let _ = mine.add(theirs);
        }
        let _ = self.total.add(&other.total);
    }

    pub fn summary(&self) -> Summary {
        let h = &self.total;
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
        self.per_sec
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .map(|(second, h)| Point {
                second,
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
