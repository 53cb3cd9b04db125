//! Autoscaling: [`prometheus`] reads the load, [`decide`] turns it into replicas, and
//! [`plan`] applies both tiers' policies from an ImCluster (pure, used by reconcile).

pub mod decide;
pub mod prometheus;

use im_crds::{Component, ImClusterSpec, Recommendation};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::build::DesiredReplicas;
use decide::{Decision, PastRecommendation, Policy, Sample};
use prometheus::ClusterMetrics;

/// The replicas to run and what the autoscaler decided on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Replica counts for the Deployments.
    pub replicas: DesiredReplicas,
    /// Per-component decisions (empty when autoscaling is off).
    pub decisions: Vec<(Component, Decision)>,
    /// Recommendation history to store in the status.
    pub history: Vec<Recommendation>,
}

/// The decision policy of one component.
pub fn policy_for(spec: &ImClusterSpec, component: Component) -> Policy {
    let a = &spec.autoscaling;
    let (bounds, target) = match component {
        Component::Gateway => (
            spec.gateway.replicas,
            f64::from(a.target_connections_per_gateway),
        ),
        Component::Logic => (
            spec.logic.replicas,
            f64::from(a.target_messages_per_second_per_logic),
        ),
    };
    Policy {
        target_per_pod: target,
        tolerance: a.tolerance,
        scale_up_window: i64::from(a.scale_up_stabilization_seconds),
        scale_down_window: i64::from(a.scale_down_stabilization_seconds),
        max_step: i32::try_from(a.max_step).unwrap_or(i32::MAX),
        min: bounds.min,
        max: bounds.max,
        // Three missed syncs (and at least two minutes) make a sample stale.
        max_sample_age: i64::from(a.sync_period_seconds).saturating_mul(3).max(120),
    }
}

/// Whether a sync period has passed since metrics were last read.
pub fn is_due(spec: &ImClusterSpec, last: Option<&Time>, now: Timestamp) -> bool {
    last.is_none_or(|t| {
        now.as_second() - t.0.as_second() >= i64::from(spec.autoscaling.sync_period_seconds)
    })
}

/// Plans replicas for both tiers.
///
/// Without autoscaling both run at `replicas.min`. With it, `metrics` (`None` when
/// Prometheus could not be read) feed [`decide::decide`] against `current`.
pub fn plan(
    spec: &ImClusterSpec,
    current: DesiredReplicas,
    history: &[Recommendation],
    metrics: Option<&ClusterMetrics>,
    now: Timestamp,
) -> Plan {
    if !spec.autoscaling.enabled {
        return Plan {
            replicas: DesiredReplicas {
                gateway: spec.gateway.replicas.min,
                logic: spec.logic.replicas.min,
            },
            decisions: vec![],
            history: vec![],
        };
    }
    let now_s = now.as_second();
    let keep = i64::from(
        spec.autoscaling
            .scale_up_stabilization_seconds
            .max(spec.autoscaling.scale_down_stabilization_seconds),
    );
    let mut replicas = current;
    let mut decisions = Vec::new();
    let mut new_history = Vec::new();
    for component in Component::ALL {
        let sample = metrics.and_then(|m| sample_of(m, component));
        let past: Vec<PastRecommendation> = history
            .iter()
            .filter(|r| r.component == component)
            .map(|r| PastRecommendation {
                at: r.time.0.as_second(),
                replicas: r.replicas,
            })
            .collect();
        let policy = policy_for(spec, component);
        let decision = decide::decide(&policy, current.get(component), sample, &past, now_s);
        let new = decision.recommendation.map(|replicas| PastRecommendation {
            at: now_s,
            replicas,
        });
        new_history.extend(
            decide::remember(&past, new, keep, now_s)
                .into_iter()
                .map(|p| Recommendation {
                    component,
                    replicas: p.replicas,
                    time: Time(Timestamp::from_second(p.at).unwrap_or(now)),
                }),
        );
        replicas.set(component, decision.desired);
        decisions.push((component, decision));
    }
    Plan {
        replicas,
        decisions,
        history: new_history,
    }
}

fn sample_of(metrics: &ClusterMetrics, component: Component) -> Option<Sample> {
    let (total, seen) = match component {
        Component::Gateway => (metrics.connections, metrics.gateway_last_scrape),
        Component::Logic => (metrics.messages_per_second, metrics.logic_last_scrape),
    };
    Some(Sample {
        total: total?,
        // Truncation to whole seconds is intended.
        at: seen? as i64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_crds::sample_spec;

    fn now() -> Timestamp {
        Timestamp::from_second(1_700_000_000).expect("ts")
    }

    fn enabled() -> ImClusterSpec {
        let mut spec = sample_spec();
        spec.autoscaling.enabled = true;
        spec.autoscaling.target_connections_per_gateway = 1000;
        spec.autoscaling.target_messages_per_second_per_logic = 100;
        spec
    }

    #[test]
    fn disabled_autoscaling_runs_the_minimum() {
        let plan = plan(
            &sample_spec(),
            DesiredReplicas {
                gateway: 7,
                logic: 7,
            },
            &[],
            None,
            now(),
        );
        assert_eq!(
            plan.replicas,
            DesiredReplicas {
                gateway: 2,
                logic: 2
            }
        );
        assert!(plan.decisions.is_empty());
    }

    #[test]
    fn both_tiers_scale_from_their_own_metric_and_history_is_kept() {
        let metrics = ClusterMetrics {
            connections: Some(4000.0),
            gateway_last_scrape: Some(1_699_999_990.0),
            messages_per_second: Some(150.0),
            logic_last_scrape: Some(1_699_999_990.0),
            ..ClusterMetrics::default()
        };
        let plan = plan(
            &enabled(),
            DesiredReplicas {
                gateway: 2,
                logic: 2,
            },
            &[],
            Some(&metrics),
            now(),
        );
        assert_eq!(
            plan.replicas,
            DesiredReplicas {
                gateway: 4,
                logic: 2
            }
        );
        assert_eq!(plan.history.len(), 2);
        assert!(
            plan.history
                .iter()
                .any(|r| r.component == Component::Logic && r.replicas == 2)
        );
    }

    #[test]
    fn unreadable_prometheus_holds_current_counts() {
        let plan = plan(
            &enabled(),
            DesiredReplicas {
                gateway: 3,
                logic: 5,
            },
            &[],
            None,
            now(),
        );
        assert_eq!(
            plan.replicas,
            DesiredReplicas {
                gateway: 3,
                logic: 5
            }
        );
        assert!(plan.history.is_empty());
    }

    #[test]
    fn due_once_per_sync_period() {
        let spec = enabled();
        assert!(is_due(&spec, None, now()));
        let recent = Time(Timestamp::from_second(1_700_000_000 - 10).expect("ts"));
        assert!(!is_due(&spec, Some(&recent), now()));
        let old = Time(Timestamp::from_second(1_700_000_000 - 30).expect("ts"));
        assert!(is_due(&spec, Some(&old), now()));
    }
}
