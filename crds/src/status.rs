//! The `ImCluster` status: what the operator observed and decided. Types only; the
//! operator computes the values.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types the operator maintains.
pub mod condition_type {
    /// All wanted gateway and logic pods are ready.
    pub const READY: &str = "Ready";
    /// A rollout or scaling change is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Something needs a person: invalid spec, failing reconcile, blind autoscaler.
    pub const DEGRADED: &str = "Degraded";
}

/// Condition reasons (CamelCase, stable: alerts and docs refer to them).
pub mod reason {
    /// Ready=True: every desired pod is ready.
    pub const ALL_REPLICAS_READY: &str = "AllReplicasReady";
    /// Ready=False: some desired pods are not ready yet.
    pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
    /// Progressing=True: Deployments are rolling out or scaling.
    pub const ROLLOUT_IN_PROGRESS: &str = "RolloutInProgress";
    /// Progressing=False: nothing to do.
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    /// Degraded=False: all is well.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// Degraded=True: the spec is invalid; nothing was created or changed.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Degraded=True: autoscaling is enabled but Prometheus gave no usable answer.
    pub const METRICS_UNAVAILABLE: &str = "MetricsUnavailable";
    /// Degraded=True: the last reconcile failed talking to the Kubernetes API.
    pub const RECONCILE_ERROR: &str = "ReconcileError";
}

/// The two scaled tiers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    /// The connection tier (`im-gateway`).
    Gateway,
    /// The business tier (`im-logic`).
    Logic,
}

impl Component {
    /// Both tiers, gateway first.
    pub const ALL: [Component; 2] = [Component::Gateway, Component::Logic];

    /// Lower-case name used in object names, labels and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Logic => "logic",
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the operator observed about an ImCluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Gateway replicas.
    #[serde(default)]
    pub gateway: ReplicaStatus,
    /// Logic replicas.
    #[serde(default)]
    pub logic: ReplicaStatus,
    /// `ready/desired` gateway pods, for `kubectl get imc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways_ready: Option<String>,
    /// `ready/desired` logic pods, for `kubectl get imc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logic_ready: Option<String>,
    /// Authenticated connections over all gateways, last read from Prometheus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<i64>,
    /// Messages per second over all logic pods, last read from Prometheus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_second: Option<f64>,
    /// When metrics were last read (the autoscaler runs once per sync period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_metrics_time: Option<Time>,
    /// The last replica change the autoscaler made, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scaling: Option<ScalingDecision>,
    /// Recent autoscaler recommendations, kept for the stabilization windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recommendations: Vec<Recommendation>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Replica counts of one tier.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Replicas the operator asked for.
    #[serde(default)]
    pub desired_replicas: i32,
    /// Replicas that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
}

/// One replica change made by the autoscaler.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingDecision {
    /// Which tier.
    pub component: Component,
    /// Replicas before.
    pub from: i32,
    /// Replicas after.
    pub to: i32,
    /// Why, in words (metric, target, limits applied).
    pub reason: String,
    /// When.
    pub time: Time,
}

/// One autoscaler recommendation (before stabilization), kept for the windows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recommendation {
    /// Which tier.
    pub component: Component,
    /// Recommended replicas.
    pub replicas: i32,
    /// When it was made.
    pub time: Time,
}

impl ImClusterStatus {
    /// The condition of the given type, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether the condition of the given type is `True`.
    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }

    /// Replica counts of one tier.
    pub fn replicas(&self, component: Component) -> ReplicaStatus {
        match component {
            Component::Gateway => self.gateway,
            Component::Logic => self.logic,
        }
    }
}
