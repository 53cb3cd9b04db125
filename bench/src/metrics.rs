//! The servers' own Prometheus figures: scrape `/metrics` and summarise the
//! histograms that say where time goes (parsing is pure; fetching is one GET).
use std::collections::BTreeMap;

/// A histogram summed over its label sets.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct HistSummary {
    pub count: f64,
    pub sum: f64,
    pub mean: f64,
    /// Upper bound of the bucket holding the 50th / 99th percentile, and
    /// the largest observation.
    pub p50_le: f64,
    pub p99_le: f64,
    pub max_le: f64,
}

fn metric_value(line: &str) -> Option<f64> {
    line.rsplit(' ').next()?.parse().ok()
}

fn le_of(line: &str) -> Option<f64> {
    let i = line.find("le=\"")? + 4;
    let rest = &line[i..];
    let v = &rest[..rest.find('"')?];
    if v == "+Inf" {
        Some(f64::INFINITY)
    } else {
        v.parse().ok()
    }
}

/// A histogram's cumulative buckets (upper bound, count), ascending, with
/// its sum and count: summed over label sets, and over processes with
/// [`Cumulative::add`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cumulative {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Cumulative {
    /// The histogram `name` in a Prometheus text page, summed over label sets.
    pub fn parse(text: &str, name: &str) -> Option<Cumulative> {
        Cumulative::parse_where(text, name, "")
    }

    /// [`Cumulative::parse`] over the label sets whose line holds `label`
    /// (e.g. `receipt="wanted"`; empty: all).
    pub fn parse_where(text: &str, name: &str, label: &str) -> Option<Cumulative> {
        let bucket = format!("{name}_bucket");
        let sum_p = format!("{name}_sum");
        let count_p = format!("{name}_count");
        let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
        let mut h = Cumulative::default();
        let mut seen = false;
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(label))
        {
            let head = line.split([' ', '{']).next().unwrap_or("");
            if head == bucket {
                if let (Some(le), Some(v)) = (le_of(line), metric_value(line)) {
                    *buckets.entry(le.to_bits()).or_default() += v;
                }
            } else if head == sum_p {
                h.sum += metric_value(line).unwrap_or(0.0);
                seen = true;
            } else if head == count_p {
                h.count += metric_value(line).unwrap_or(0.0);
                seen = true;
            }
        }
        h.buckets = ascending(buckets);
        seen.then_some(h)
    }

    /// Adds `other`'s observations (bounds missing on one side count as empty).
    pub fn add(&mut self, other: &Cumulative) {
        self.combine(other, 1.0);
    }

    /// What was observed since `earlier`, a scrape of the same histograms.
    pub fn since(&self, earlier: &Cumulative) -> Cumulative {
        let mut d = self.clone();
        d.combine(earlier, -1.0);
        d
    }

    fn combine(&mut self, other: &Cumulative, sign: f64) {
        let mut merged: BTreeMap<u64, f64> = BTreeMap::new();
        for (side, s) in [(&*self, 1.0), (other, sign)] {
            for &(le, v) in &side.buckets {
                *merged.entry(le.to_bits()).or_default() += s * v;
            }
        }
        self.buckets = ascending(merged);
        self.sum += sign * other.sum;
        self.count += sign * other.count;
    }

    /// Upper bound of the bucket holding quantile `q` (NaN when empty).
    pub fn le_at(&self, q: f64) -> f64 {
        self.buckets
            .iter()
            .find(|(_, c)| *c >= q * self.count && *c > 0.0)
            .map(|(le, _)| *le)
            .unwrap_or(f64::NAN)
    }

    pub fn summary(&self) -> HistSummary {
        HistSummary {
            count: self.count,
            sum: self.sum,
            mean: if self.count > 0.0 {
                self.sum / self.count
            } else {
                0.0
            },
            p50_le: self.le_at(0.5),
            p99_le: self.le_at(0.99),
            max_le: self.le_at(1.0),
        }
    }
}

/// Buckets keyed by their bounds' bits, as (bound, count) in ascending
/// order: the bits of positive floats sort like the floats.
fn ascending(by_bits: BTreeMap<u64, f64>) -> Vec<(f64, f64)> {
    by_bits
        .into_iter()
        .map(|(b, v)| (f64::from_bits(b), v))
        .collect()
}

/// Sums the histogram `name` over all label sets in a Prometheus text page.
pub fn histogram(text: &str, name: &str) -> Option<HistSummary> {
    Cumulative::parse(text, name).map(|h| h.summary())
}

/// Sum of a counter or gauge over its label sets.
pub fn total(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if line.split([' ', '{']).next() == Some(name) {
            *found.get_or_insert(0.0) += metric_value(line).unwrap_or(0.0);
        }
    }
    found
}

/// A counter by the values of one of its labels (summed over the others).
pub fn by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let key = format!("{label}=\"");
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if line.split([' ', '{']).next() != Some(name) {
            continue;
        }
        let Some(i) = line.find(&key) else { continue };
        let rest = &line[i + key.len()..];
        let Some(end) = rest.find('"') else { continue };
        *out.entry(rest[..end].to_string()).or_default() += metric_value(line).unwrap_or(0.0);
    }
    out
}

/// The figures of one process worth keeping.
pub fn summarize(text: &str) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for name in [
        "im_logic_store_batch_messages",
        "im_logic_store_latency_seconds",
        "im_logic_store_wait_seconds",
        "im_logic_push_seconds",
        "im_logic_fanout_recipients",
        "im_gateway_push_latency_seconds",
        "im_gateway_request_seconds",
    ] {
        if let Some(h) = histogram(text, name) {
            out.insert(name.into(), serde_json::json!(h));
        }
    }
    // The pushes a client ACKs at once, apart: the others' ACKs may wait.
    let wanted = "receipt=\"wanted\"";
    if let Some(h) = Cumulative::parse_where(text, "im_gateway_push_latency_seconds", wanted) {
        out.insert(
            format!("im_gateway_push_latency_seconds{{{wanted}}}"),
            serde_json::json!(h.summary()),
        );
    }
    for name in [
        "im_logic_messages_total",
        "im_logic_push_failures_total",
        "im_logic_store_busy_seconds_total",
        "im_gateway_connections",
        "im_gateway_slow_consumer_disconnects_total",
        "im_gateway_push_retransmits_total",
        "im_gateway_push_giveups_total",
        "im_gateway_rate_limited_total",
        "im_gateway_kicked_total",
    ] {
        if let Some(v) = total(text, name) {
            out.insert(name.into(), serde_json::json!(v));
        }
    }
    // What the gateway did with the devices' ACKs (forwarded, deferred, repeat).
    let acks = by_label(text, "im_gateway_acks_total", "outcome");
    if !acks.is_empty() {
        out.insert("im_gateway_acks_total".into(), serde_json::json!(acks));
    }
    // Which build the process runs.
    let build: serde_json::Map<_, _> = ["binary", "commit"]
        .into_iter()
        .filter_map(|label| {
            let value = by_label(text, "im_build_info", label).into_keys().next()?;
            Some((label.to_string(), value.into()))
        })
        .collect();
    if !build.is_empty() {
        out.insert("im_build_info".into(), build.into());
    }
    serde_json::Value::Object(out)
}

/// GETs a `/metrics` page (on one client for the whole run: `reqwest::get`
/// builds a client, with its TLS set-up, for every call, and the hop
/// sampler scrapes every process once a second on the cores the servers
/// use).
pub async fn scrape(url: &str) -> anyhow::Result<String> {
    static CLIENT: std::sync::LazyLock<reqwest::Client> =
        std::sync::LazyLock::new(reqwest::Client::new);
    Ok(CLIENT
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP x
im_logic_store_batch_messages_bucket{le="1"} 10
im_logic_store_batch_messages_bucket{le="8"} 60
im_logic_store_batch_messages_bucket{le="64"} 100
im_logic_store_batch_messages_bucket{le="+Inf"} 100
im_logic_store_batch_messages_sum 900
im_logic_store_batch_messages_count 100
im_gateway_connections 3
im_logic_messages_total{kind="c2c"} 5
im_logic_messages_total{kind="receipt"} 7
im_gateway_acks_total{outcome="deferred"} 4
im_gateway_acks_total{outcome="forwarded"} 6
im_gateway_push_latency_seconds_bucket{receipt="none",le="1"} 4
im_gateway_push_latency_seconds_bucket{receipt="none",le="+Inf"} 4
im_gateway_push_latency_seconds_count{receipt="none"} 4
im_gateway_push_latency_seconds_bucket{receipt="wanted",le="0.002"} 2
im_gateway_push_latency_seconds_bucket{receipt="wanted",le="1"} 2
im_gateway_push_latency_seconds_bucket{receipt="wanted",le="+Inf"} 2
im_gateway_push_latency_seconds_count{receipt="wanted"} 2
im_build_info{binary="im-logic",commit="0123456789ab",version="0.1.0"} 1
"#;

    #[test]
    fn histogram_mean_and_bucket_quantiles() {
        let h = histogram(PAGE, "im_logic_store_batch_messages").unwrap();
        assert_eq!(h.count, 100.0);
        assert_eq!(h.mean, 9.0);
        assert_eq!(h.p50_le, 8.0);
        assert_eq!(h.p99_le, 64.0);
        assert_eq!(h.max_le, 64.0);
        assert!(histogram(PAGE, "nope").is_none());
        assert_eq!(total(PAGE, "im_logic_messages_total"), Some(12.0));
        assert_eq!(total(PAGE, "im_gateway_connections"), Some(3.0));
        let acks = by_label(PAGE, "im_gateway_acks_total", "outcome");
        assert_eq!(acks["deferred"], 4.0);
        assert_eq!(acks["forwarded"], 6.0);
        assert_eq!(summarize(PAGE)["im_gateway_acks_total"]["deferred"], 4.0);
        // Every push, and apart those ACKed at once.
        let all = &summarize(PAGE)["im_gateway_push_latency_seconds"];
        assert_eq!(
            (all["count"].as_f64(), all["max_le"].as_f64()),
            (Some(6.0), Some(1.0))
        );
        let wanted = &summarize(PAGE)["im_gateway_push_latency_seconds{receipt=\"wanted\"}"];
        assert_eq!(
            (wanted["count"].as_f64(), wanted["max_le"].as_f64()),
            (Some(2.0), Some(0.002))
        );
        assert_eq!(
            summarize(PAGE)["im_build_info"],
            serde_json::json!({"binary": "im-logic", "commit": "0123456789ab"})
        );
        assert!(
            summarize("im_gateway_connections 1")
                .get("im_build_info")
                .is_none()
        );
    }
}
