//! The operator's own Prometheus metrics (`im_operator_*`, names fixed by the
//! architecture contract) and their text rendering. No HTTP here (see [`crate::http`]).

use std::time::Instant;

use im_crds::Component;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Outcome label of `im_operator_reconcile_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Reconcile finished.
    Ok,
    /// Reconcile failed and will be retried with backoff.
    Error,
    /// The spec was invalid; nothing was changed.
    Invalid,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Invalid => "invalid",
        }
    }
}

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("failed to register operator metrics")]
pub struct MetricsError(#[source] prometheus::Error);

/// The operator's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    reconcile_total: IntCounterVec,
    reconcile_duration: Histogram,
    desired_replicas: IntGaugeVec,
    ready_replicas: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let reconcile_total = IntCounterVec::new(
            Opts::new(
                "im_operator_reconcile_total",
                "ImCluster reconciles by result",
            ),
            &["result"],
        )
        .map_err(MetricsError)?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "im_operator_reconcile_duration_seconds",
                "Time one ImCluster reconcile took",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .map_err(MetricsError)?;
        let desired_replicas = IntGaugeVec::new(
            Opts::new(
                "im_operator_desired_replicas",
                "Replicas the operator wants per ImCluster and component",
            ),
            &["cluster", "component"],
        )
        .map_err(MetricsError)?;
        let ready_replicas = IntGaugeVec::new(
            Opts::new(
                "im_operator_ready_replicas",
                "Ready replicas last observed per ImCluster and component",
            ),
            &["cluster", "component"],
        )
        .map_err(MetricsError)?;
        // Which build runs, as the IM binaries say it (`im_common::telemetry::Build`).
        let build_info = IntGaugeVec::new(
            Opts::new(
                "im_build_info",
                "Always 1, labelled with the binary, its version and the commit it was built from",
            ),
            &["binary", "version", "commit"],
        )
        .map_err(MetricsError)?;
        build_info
            .with_label_values(&["im-operator", env!("CARGO_PKG_VERSION"), env!("IM_COMMIT")])
            .set(1);
        for collector in [
            Box::new(build_info) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_total.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(desired_replicas.clone()),
            Box::new(ready_replicas.clone()),
        ] {
            registry.register(collector).map_err(MetricsError)?;
        }
        for outcome in [Outcome::Ok, Outcome::Error, Outcome::Invalid] {
            reconcile_total.with_label_values(&[outcome.as_str()]);
        }
        Ok(Self {
            registry,
            reconcile_total,
            reconcile_duration,
            desired_replicas,
            ready_replicas,
        })
    }

    /// Counts one reconcile and records how long it took since `started`.
    pub fn observe_reconcile(&self, outcome: Outcome, started: Instant) {
        self.reconcile_total
            .with_label_values(&[outcome.as_str()])
            .inc();
        self.reconcile_duration
            .observe(started.elapsed().as_secs_f64());
    }

    /// Reconciles counted so far with this outcome.
    pub fn reconciles(&self, outcome: Outcome) -> u64 {
        self.reconcile_total
            .with_label_values(&[outcome.as_str()])
            .get()
    }

    /// Records the replicas wanted for a component of a cluster (`namespace/name`).
    pub fn set_desired(&self, cluster: &str, component: Component, replicas: i32) {
        self.desired_replicas
            .with_label_values(&[cluster, component.as_str()])
            .set(i64::from(replicas));
    }

    /// Records the ready replicas observed for a component of a cluster.
    pub fn set_ready(&self, cluster: &str, component: Component, replicas: i32) {
        self.ready_replicas
            .with_label_values(&[cluster, component.as_str()])
            .set(i64::from(replicas));
    }

    /// Forgets a deleted cluster's gauges.
    pub fn forget(&self, cluster: &str) {
        for component in Component::ALL {
            // Absent series are fine to "remove".
            for gauge in [&self.desired_replicas, &self.ready_replicas] {
                let _ = gauge.remove_label_values(&[cluster, component.as_str()]);
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "failed to encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_contract_names() {
        let m = Metrics::new().expect("metrics");
        m.observe_reconcile(Outcome::Ok, Instant::now());
        m.set_desired("im/chat", Component::Gateway, 3);
        let text = m.render();
        assert!(
            text.contains("im_operator_reconcile_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("im_operator_reconcile_total{result=\"error\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("im_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "im_operator_desired_replicas{cluster=\"im/chat\",component=\"gateway\"} 3"
            ),
            "{text}"
        );
        let build = format!(
            "im_build_info{{binary=\"im-operator\",commit=\"{}\",version=\"{}\"}} 1",
            env!("IM_COMMIT"),
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.lines().any(|l| l == build), "{text}");
        m.forget("im/chat");
        assert!(!m.render().contains("im/chat"));
    }
}
