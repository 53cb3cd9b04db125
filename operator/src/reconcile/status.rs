//! Pure status computation: observed Deployments + health + autoscaler output -> the next
//! `ImClusterStatus`, with conditions that keep their transition time while unchanged, and
//! the Events a change deserves. Writing it is `reconcile::apply`'s job.

use im_crds::{
    Component, ImClusterStatus, Recommendation, ReplicaStatus, ScalingDecision, condition_type,
    reason,
};
use k8s_openapi::{
    api::apps::v1::Deployment,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::runtime::events::EventType;

/// What one Deployment shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// Desired and ready counts.
    pub replicas: ReplicaStatus,
    /// A rollout or scale is under way.
    pub progressing: bool,
}

/// Reads a Deployment (as the API server returned it) against the replicas wanted now.
pub fn observe(deployment: Option<&Deployment>, desired: i32) -> Observed {
    let Some(d) = deployment else {
        return Observed {
            replicas: ReplicaStatus {
                desired_replicas: desired,
                ready_replicas: 0,
            },
            progressing: desired > 0,
        };
    };
    let status = d.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let generation_seen =
        status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let progressing = !generation_seen
        || d.spec.replicas != Some(desired)
        || status.updated_replicas.unwrap_or(0) < desired
        || status.replicas.unwrap_or(0) != desired
        || ready < desired;
    Observed {
        replicas: ReplicaStatus {
            desired_replicas: desired,
            ready_replicas: ready,
        },
        progressing,
    }
}

/// What is wrong, if anything (drives `Degraded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Nothing.
    Fine,
    /// The spec failed validation (message lists the problems).
    InvalidSpec(String),
    /// Autoscaling could not read Prometheus.
    MetricsUnavailable(String),
    /// Talking to the Kubernetes API failed.
    ReconcileError(String),
}

/// Everything the next status is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusInput {
    /// `metadata.generation` of the ImCluster reconciled.
    pub generation: Option<i64>,
    /// Gateway and logic Deployments (`None` when nothing was built).
    pub observed: Option<(Observed, Observed)>,
    /// Health.
    pub health: Health,
    /// Fresh Prometheus readings: connections and messages/s, with their time.
    pub metrics: Option<(Option<f64>, Option<f64>, Time)>,
    /// Replica changes made now.
    pub scaled: Vec<ScalingDecision>,
    /// New recommendation history (`None` keeps the old one).
    pub history: Option<Vec<Recommendation>>,
    /// Now.
    pub now: Time,
}

/// The next status.
pub fn next_status(old: Option<&ImClusterStatus>, input: StatusInput) -> ImClusterStatus {
    let mut status = old.cloned().unwrap_or_default();
    status.observed_generation = input.generation;
    if let Some((gateway, logic)) = input.observed {
        status.gateway = gateway.replicas;
        status.logic = logic.replicas;
        status.gateways_ready = Some(ratio(gateway.replicas));
        status.logic_ready = Some(ratio(logic.replicas));
    }
    if let Some((connections, messages, at)) = input.metrics {
        // Connection counts are integral gauges; rounding only drops float noise.
        status.connections = connections.map(|c| c.round() as i64);
        status.messages_per_second = messages.map(|m| (m * 100.0).round() / 100.0);
        status.last_metrics_time = Some(at);
    }
    if let Some(last) = input.scaled.last() {
        status.last_scaling = Some(last.clone());
    }
    if let Some(history) = input.history {
        status.recommendations = history;
    }

    let (ready, progressing) = match input.observed {
        Some((g, l)) => (
            g.replicas.ready_replicas >= g.replicas.desired_replicas
                && l.replicas.ready_replicas >= l.replicas.desired_replicas,
            g.progressing || l.progressing,
        ),
        None => (false, false),
    };
    let (degraded, degraded_reason, degraded_message) = match &input.health {
        Health::Fine => (false, reason::AS_EXPECTED, "operating normally".to_string()),
        Health::InvalidSpec(m) => (true, reason::INVALID_SPEC, m.clone()),
        Health::MetricsUnavailable(m) => (true, reason::METRICS_UNAVAILABLE, m.clone()),
        Health::ReconcileError(m) => (true, reason::RECONCILE_ERROR, m.clone()),
    };
    let replicas_note = format!(
        "gateway {}, logic {} ready",
        status.gateways_ready.as_deref().unwrap_or("0/0"),
        status.logic_ready.as_deref().unwrap_or("0/0")
    );
    let wanted = [
        (
            condition_type::READY,
            ready,
            if ready {
                reason::ALL_REPLICAS_READY
            } else {
                reason::REPLICAS_NOT_READY
            },
            replicas_note.clone(),
        ),
        (
            condition_type::PROGRESSING,
            progressing,
            if progressing {
                reason::ROLLOUT_IN_PROGRESS
            } else {
                reason::ROLLOUT_COMPLETE
            },
            replicas_note,
        ),
        (
            condition_type::DEGRADED,
            degraded,
            degraded_reason,
            degraded_message,
        ),
    ];
    status.conditions = wanted
        .into_iter()
        .map(|(type_, is_true, reason, message)| {
            condition(
                old.and_then(|s| s.condition(type_)),
                type_,
                is_true,
                reason,
                message,
                input.generation,
                &input.now,
            )
        })
        .collect();
    status
}

fn ratio(r: ReplicaStatus) -> String {
    format!("{}/{}", r.ready_replicas, r.desired_replicas)
}

fn condition(
    old: Option<&Condition>,
    type_: &str,
    is_true: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if is_true { "True" } else { "False" };
    let last_transition_time = match old {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// An Event to publish about the ImCluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Normal or Warning.
    pub type_: EventType,
    /// CamelCase reason.
    pub reason: String,
    /// Human text.
    pub note: String,
}

/// Events deserved by the change from `old` to `new`: a Degraded reason appearing, Ready
/// flipping, and each replica change the autoscaler made.
pub fn notices(
    old: Option<&ImClusterStatus>,
    new: &ImClusterStatus,
    scaled: &[ScalingDecision],
) -> Vec<Notice> {
    let mut out = Vec::new();
    let reason_of = |s: Option<&ImClusterStatus>, t: &str| {
        s.and_then(|s| s.condition(t))
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let (old_degraded, new_degraded) = (
        reason_of(old, condition_type::DEGRADED),
        reason_of(Some(new), condition_type::DEGRADED),
    );
    if let Some((status, reason, message)) = &new_degraded
        && old_degraded.as_ref() != new_degraded.as_ref()
    {
        if status == "True" {
            out.push(Notice {
                type_: EventType::Warning,
                reason: reason.clone(),
                note: message.clone(),
            });
        } else if old_degraded.is_some_and(|(s, _, _)| s == "True") {
            out.push(Notice {
                type_: EventType::Normal,
                reason: "Recovered".into(),
                note: "no longer degraded".into(),
            });
        }
    }
    let old_ready = old.is_some_and(|s| s.is_true(condition_type::READY));
    if new.is_true(condition_type::READY) && !old_ready {
        out.push(Notice {
            type_: EventType::Normal,
            reason: "Ready".into(),
            note: "all gateway and logic replicas are ready".into(),
        });
    }
    for decision in scaled {
        out.push(Notice {
            type_: EventType::Normal,
            reason: "Scaled".into(),
            note: format!(
                "{} {} -> {}: {}",
                decision.component, decision.from, decision.to, decision.reason
            ),
        });
    }
    out
}

/// A scaling record for the status, when `from != to`.
pub fn scaling_record(
    component: Component,
    from: i32,
    to: i32,
    reason: String,
    now: &Time,
) -> Option<ScalingDecision> {
    (from != to).then(|| ScalingDecision {
        component,
        from,
        to,
        reason,
        time: now.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).expect("ts"))
    }

    fn ready(desired: i32, ready: i32) -> Observed {
        Observed {
            replicas: ReplicaStatus {
                desired_replicas: desired,
                ready_replicas: ready,
            },
            progressing: ready < desired,
        }
    }

    fn input(health: Health, observed: Option<(Observed, Observed)>, now: i64) -> StatusInput {
        StatusInput {
            generation: Some(2),
            observed,
            health,
            metrics: None,
            scaled: vec![],
            history: None,
            now: t(now),
        }
    }

    #[test]
    fn invalid_spec_is_degraded_not_ready() {
        let s = next_status(None, input(Health::InvalidSpec("bad".into()), None, 10));
        assert!(s.is_true(condition_type::DEGRADED));
        assert!(!s.is_true(condition_type::READY));
        assert_eq!(
            s.condition(condition_type::DEGRADED)
                .map(|c| c.reason.as_str()),
            Some("InvalidSpec")
        );
        assert_eq!(s.observed_generation, Some(2));
        let n = notices(None, &s, &[]);
        assert_eq!(n.len(), 1);
        assert_eq!(
            (n[0].type_, n[0].reason.as_str()),
            (EventType::Warning, "InvalidSpec")
        );
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = next_status(
            None,
            input(Health::Fine, Some((ready(2, 1), ready(2, 2))), 10),
        );
        let same = next_status(
            Some(&first),
            input(Health::Fine, Some((ready(2, 1), ready(2, 2))), 20),
        );
        let ready_cond =
            |s: &ImClusterStatus| s.condition(condition_type::READY).cloned().expect("ready");
        assert_eq!(ready_cond(&same).last_transition_time, t(10));
        assert_eq!(first, same, "nothing changed, nothing to write");
        let flipped = next_status(
            Some(&same),
            input(Health::Fine, Some((ready(2, 2), ready(2, 2))), 30),
        );
        assert_eq!(ready_cond(&flipped).status, "True");
        assert_eq!(ready_cond(&flipped).last_transition_time, t(30));
        assert_eq!(flipped.gateways_ready.as_deref(), Some("2/2"));
        let n = notices(Some(&same), &flipped, &[]);
        assert_eq!(
            n.iter().map(|n| n.reason.as_str()).collect::<Vec<_>>(),
            ["Ready"]
        );
    }

    #[test]
    fn scaling_is_recorded_and_announced() {
        let scaled =
            scaling_record(Component::Gateway, 2, 4, "load".into(), &t(5)).expect("change");
        assert!(scaling_record(Component::Logic, 3, 3, "x".into(), &t(5)).is_none());
        let mut i = input(Health::Fine, Some((ready(4, 2), ready(2, 2))), 5);
        i.scaled = vec![scaled.clone()];
        i.metrics = Some((Some(8000.4), Some(12.345), t(5)));
        let s = next_status(None, i);
        assert_eq!(s.last_scaling, Some(scaled.clone()));
        assert_eq!(s.connections, Some(8000));
        assert_eq!(s.messages_per_second, Some(12.35));
        assert!(s.is_true(condition_type::PROGRESSING));
        let n = notices(None, &s, &[scaled]);
        assert!(
            n.iter()
                .any(|n| n.reason == "Scaled" && n.note.starts_with("gateway 2 -> 4"))
        );
    }

    #[test]
    fn a_missing_deployment_is_progressing() {
        let o = observe(None, 3);
        assert!(o.progressing);
        assert_eq!(o.replicas.ready_replicas, 0);
    }
}
