//! The `ImCluster` spec: what a user asks for. Types and defaults only; no IO, no decisions.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::ImClusterStatus;

/// An instant-messaging cluster: a gateway tier and a logic tier, their backing stores
/// and how the operator scales them.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "im.dev",
    version = "v1alpha1",
    kind = "ImCluster",
    plural = "imclusters",
    shortname = "imc",
    category = "im",
    namespaced,
    status = "ImClusterStatus",
    derive = "PartialEq",
    doc = "An instant-messaging cluster (gateway + logic tiers) managed by im-operator",
    printcolumn = r#"{"name":"Gateways","type":"string","jsonPath":".status.gatewaysReady","description":"ready/desired gateway pods"}"#,
    printcolumn = r#"{"name":"Logic","type":"string","jsonPath":".status.logicReady","description":"ready/desired logic pods"}"#,
    printcolumn = r#"{"name":"Connections","type":"integer","jsonPath":".status.connections","description":"authenticated client connections, last observed"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ImClusterSpec {
    /// The connection tier: holds client TCP and WebSocket connections.
    pub gateway: GatewaySpec,
    /// The stateless business tier: gRPC for gateways, REST for apps.
    pub logic: LogicSpec,
    /// Where Redis (routing and presence) is.
    pub redis: ConnectionSource,
    /// Where Postgres (messages, users, groups) is.
    pub postgres: ConnectionSource,
    /// The Secret key holding the JWT signing secret used by the logic tier.
    pub jwt_secret_ref: SecretKeyRef,
    /// How the operator scales the gateway and logic tiers from Prometheus metrics.
    #[serde(default)]
    pub autoscaling: AutoscalingSpec,
    /// How long a gateway pod may take to move its clients elsewhere when it stops.
    #[serde(default = "default_drain_window_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_window_seconds: u32,
}

/// The gateway tier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Container image of `im-gateway`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Replica bounds; the autoscaler stays inside them, without autoscaling `min` runs.
    pub replicas: ReplicaBounds,
    /// Container resources (requests and limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The client-facing listeners.
    #[serde(default)]
    pub listeners: GatewayListeners,
}

/// The logic tier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogicSpec {
    /// Container image of `im-logic`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Replica bounds; the autoscaler stays inside them, without autoscaling `min` runs.
    pub replicas: ReplicaBounds,
    /// Container resources (requests and limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Store each DELIVERED receipt inline in its recipient's inbox entry,
    /// without a `messages` row (`IM_INLINE_RECEIPTS`). Turn on only once
    /// every logic pod runs an image with migration 0009: older pods' pulls
    /// skip such entries (docs/operations.md, Upgrade).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inline_receipts: bool,
}

/// Lower and upper replica bounds of one tier.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.min <= self.max").message("replicas.min must not exceed replicas.max"))]
pub struct ReplicaBounds {
    /// Fewest pods.
    #[schemars(range(min = 0))]
    pub min: i32,
    /// Most pods.
    #[schemars(range(min = 1))]
    pub max: i32,
}

/// Client-facing ports of the gateway and how its Service is exposed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.tcpPort != self.websocketPort").message("tcpPort and websocketPort must differ"))]
pub struct GatewayListeners {
    /// Framed-protobuf TCP port.
    #[serde(default = "default_tcp_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub tcp_port: i32,
    /// WebSocket (`/ws`) and HTTP (`/metrics`, `/healthz`, `/readyz`) port.
    #[serde(default = "default_websocket_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub websocket_port: i32,
    /// Kubernetes Service type of the client-facing Service.
    #[serde(default)]
    pub service_type: ServiceType,
}

impl Default for GatewayListeners {
    fn default() -> Self {
        Self {
            tcp_port: default_tcp_port(),
            websocket_port: default_websocket_port(),
            service_type: ServiceType::default(),
        }
    }
}

/// The Kubernetes Service types a gateway may be exposed with.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// A port on every node.
    NodePort,
    /// A cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The name Kubernetes uses for this type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Where a backing store is: either a literal URL or a key of a Secret holding the URL.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.secretRef)").message("set exactly one of url and secretRef"))]
pub struct ConnectionSource {
    /// The URL itself (avoid for URLs with passwords: use `secretRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A key of a Secret in the ImCluster's namespace whose value is the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

impl ConnectionSource {
    /// A source given by a literal URL.
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            secret_ref: None,
        }
    }

    /// A source read from a Secret key.
    pub fn secret(name: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            url: None,
            secret_ref: Some(SecretKeyRef {
                name: name.into(),
                key: key.into(),
            }),
        }
    }
}

/// A key of a Secret in the ImCluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// The autoscaling policy. The rules follow the HorizontalPodAutoscaler v2 algorithm.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Scale from metrics; when false both tiers run at `replicas.min`.
    #[serde(default)]
    pub enabled: bool,
    /// Base URL of the Prometheus HTTP API, e.g. `http://prometheus.monitoring:9090`.
    #[serde(default = "default_prometheus_url")]
    pub prometheus_url: String,
    /// Authenticated connections one gateway pod should hold.
    #[serde(default = "default_target_connections")]
    #[schemars(range(min = 1))]
    pub target_connections_per_gateway: u32,
    /// Messages per second one logic pod should handle.
    #[serde(default = "default_target_messages")]
    #[schemars(range(min = 1))]
    pub target_messages_per_second_per_logic: u32,
    /// Relative deviation from the target that causes no change (0.1 = 10%).
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub tolerance: f64,
    /// Scale up to the lowest recommendation of this window.
    #[serde(default = "default_scale_up_window")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_up_stabilization_seconds: u32,
    /// Scale down to the highest recommendation of this window.
    #[serde(default = "default_scale_down_window")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: u32,
    /// Most pods added or removed per tier in one sync period.
    #[serde(default = "default_max_step")]
    #[schemars(range(min = 1))]
    pub max_step: u32,
    /// How often metrics are read and a decision made.
    #[serde(default = "default_sync_period")]
    #[schemars(range(min = 5, max = 3600))]
    pub sync_period_seconds: u32,
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            prometheus_url: default_prometheus_url(),
            target_connections_per_gateway: default_target_connections(),
            target_messages_per_second_per_logic: default_target_messages(),
            tolerance: default_tolerance(),
            scale_up_stabilization_seconds: default_scale_up_window(),
            scale_down_stabilization_seconds: default_scale_down_window(),
            max_step: default_max_step(),
            sync_period_seconds: default_sync_period(),
        }
    }
}

fn default_drain_window_seconds() -> u32 {
    30
}
fn default_tcp_port() -> i32 {
    7000
}
fn default_websocket_port() -> i32 {
    7001
}
fn default_prometheus_url() -> String {
    "http://prometheus-operated.monitoring.svc:9090".to_string()
}
fn default_target_connections() -> u32 {
    5000
}
fn default_target_messages() -> u32 {
    2000
}
fn default_tolerance() -> f64 {
    0.1
}
fn default_scale_up_window() -> u32 {
    0
}
fn default_scale_down_window() -> u32 {
    300
}
fn default_max_step() -> u32 {
    4
}
fn default_sync_period() -> u32 {
    30
}
