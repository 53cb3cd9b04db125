//! Builders shared by both components: ConfigMap, ServiceAccount, PodDisruptionBudget and
//! the pod parts (probes, security contexts, env from a connection source). Pure.

use std::collections::BTreeMap;

use im_crds::{Component, ConnectionSource, ImClusterSpec, SecretKeyRef};
use k8s_openapi::{
    api::{
        core::v1::{
            Capabilities, ConfigMap, ConfigMapEnvSource, Container, EnvFromSource, EnvVar,
            EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec,
            PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector, SecurityContext,
            ServiceAccount, TopologySpreadConstraint,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{GATEWAY_GRPC_PORT, LOGIC_GRPC_PORT, LOGIC_HTTP_PORT, Owner};
use crate::names;

/// The ConfigMap a component reads through `envFrom`: listen addresses and peers.
pub fn build_config_map(owner: &Owner, component: Component, spec: &ImClusterSpec) -> ConfigMap {
    let data: BTreeMap<String, String> = match component {
        Component::Gateway => {
            let listeners = &spec.gateway.listeners;
            BTreeMap::from([
                (
                    "IM_TCP_ADDR".into(),
                    format!("0.0.0.0:{}", listeners.tcp_port),
                ),
                (
                    "IM_HTTP_ADDR".into(),
                    format!("0.0.0.0:{}", listeners.websocket_port),
                ),
                (
                    "IM_GRPC_ADDR".into(),
                    format!("0.0.0.0:{GATEWAY_GRPC_PORT}"),
                ),
                ("IM_LOGIC_ADDRS".into(), logic_address(owner)),
                (
                    "IM_DRAIN_SECS".into(),
                    spec.drain_window_seconds.to_string(),
                ),
                ("RUST_LOG".into(), "info".into()),
            ])
        }
        Component::Logic => BTreeMap::from([
            ("IM_HTTP_ADDR".into(), format!("0.0.0.0:{LOGIC_HTTP_PORT}")),
            ("IM_GRPC_ADDR".into(), format!("0.0.0.0:{LOGIC_GRPC_PORT}")),
            (
                "IM_INLINE_RECEIPTS".into(),
                spec.logic.inline_receipts.to_string(),
            ),
            ("RUST_LOG".into(), "info".into()),
        ]),
    };
    ConfigMap {
        metadata: owner.meta(
            names::config_name(&owner.name, component),
            names::component_labels(&owner.name, component),
        ),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// The gRPC address gateways use to reach logic: the logic headless Service, which
/// resolves to every ready logic pod (gateways re-resolve it and connect to each address;
/// a ClusterIP would pin each gateway's one HTTP/2 connection to a single pod).
pub fn logic_address(owner: &Owner) -> String {
    format!(
        "http://{}.{}.svc:{LOGIC_GRPC_PORT}",
        names::headless_name(&owner.name, Component::Logic),
        owner.namespace
    )
}

/// The ServiceAccount both components run as (no API token mounted: they need none).
pub fn build_service_account(owner: &Owner) -> ServiceAccount {
    ServiceAccount {
        metadata: owner.meta(
            names::service_account_name(&owner.name),
            names::common_labels(&owner.name),
        ),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// At most one pod of a component down through voluntary disruptions at a time.
pub fn build_pdb(owner: &Owner, component: Component) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owner.meta(
            names::workload_name(&owner.name, component),
            names::component_labels(&owner.name, component),
        ),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(names::selector_labels(&owner.name, component)),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// An env var read from a Secret key.
pub fn secret_env(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// An env var holding a store URL, literal or from a Secret.
pub fn source_env(name: &str, source: &ConnectionSource) -> EnvVar {
    match (&source.url, &source.secret_ref) {
        (_, Some(secret)) => secret_env(name, secret),
        (url, None) => EnvVar {
            name: name.into(),
            value: url.clone(),
            ..EnvVar::default()
        },
    }
}

/// An env var from the downward API (`metadata.name`, `status.podIP`).
pub fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// An HTTP probe on the named port.
pub fn http_probe(path: &str, port: &str, period_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(3),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// Non-root, read-only, no capabilities.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// `envFrom` the component's ConfigMap.
pub fn env_from_config(config_map: &ConfigMap) -> Vec<EnvFromSource> {
    vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: config_map.metadata.name.clone().unwrap_or_default(),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    }]
}

/// A stable hash (FNV-1a, hex) of a ConfigMap's data, put on the pod template so a
/// configuration change rolls the pods.
pub fn config_hash(config_map: &ConfigMap) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (key, value) in config_map.data.iter().flatten() {
        for byte in key.bytes().chain([0]).chain(value.bytes()).chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// The pod template of a component around its one container.
pub fn pod_template(
    owner: &Owner,
    component: Component,
    container: Container,
    config_map: &ConfigMap,
    termination_grace_seconds: i64,
    metrics_port: i32,
) -> PodTemplateSpec {
    let mut labels = names::component_labels(&owner.name, component);
    labels.remove(names::LABEL_MANAGED_BY);
    let annotations = BTreeMap::from([
        (
            names::ANNOTATION_CONFIG_HASH.to_string(),
            config_hash(config_map),
        ),
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), metrics_port.to_string()),
        ("prometheus.io/path".to_string(), "/metrics".to_string()),
    ]);
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            service_account_name: Some(names::service_account_name(&owner.name)),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(termination_grace_seconds),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "kubernetes.io/hostname".into(),
                when_unsatisfiable: "ScheduleAnyway".into(),
                label_selector: Some(LabelSelector {
                    match_labels: Some(names::selector_labels(&owner.name, component)),
                    ..LabelSelector::default()
                }),
                ..TopologySpreadConstraint::default()
            }]),
            ..PodSpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::sample_cluster;

    #[test]
    fn config_hash_changes_with_data_and_only_with_data() {
        let owner = Owner::of(&sample_cluster()).expect("owner");
        let spec = sample_cluster().spec;
        let a = build_config_map(&owner, Component::Gateway, &spec);
        let b = build_config_map(&owner, Component::Gateway, &spec);
        assert_eq!(config_hash(&a), config_hash(&b));
        let mut changed = spec.clone();
        changed.drain_window_seconds += 1;
        let c = build_config_map(&owner, Component::Gateway, &changed);
        assert_ne!(config_hash(&a), config_hash(&c));
    }

    #[test]
    fn gateway_config_points_at_the_logic_headless_service() {
        let owner = Owner::of(&sample_cluster()).expect("owner");
        let cm = build_config_map(&owner, Component::Gateway, &sample_cluster().spec);
        let data = cm.data.expect("data");
        assert_eq!(
            data["IM_LOGIC_ADDRS"],
            "http://chat-logic-headless.im.svc:9000"
        );
        assert_eq!(data["IM_TCP_ADDR"], "0.0.0.0:7000");
        assert_eq!(data["IM_HTTP_ADDR"], "0.0.0.0:7001");
        assert_eq!(data["IM_GRPC_ADDR"], "0.0.0.0:9100");
    }

    #[test]
    fn logic_config_carries_inline_receipts_and_rolls_the_pods_when_it_changes() {
        let owner = Owner::of(&sample_cluster()).expect("owner");
        let spec = sample_cluster().spec;
        let off = build_config_map(&owner, Component::Logic, &spec);
        assert_eq!(
            off.data.as_ref().expect("data")["IM_INLINE_RECEIPTS"],
            "false"
        );
        let mut on_spec = spec.clone();
        on_spec.logic.inline_receipts = true;
        let on = build_config_map(&owner, Component::Logic, &on_spec);
        assert_eq!(
            on.data.as_ref().expect("data")["IM_INLINE_RECEIPTS"],
            "true"
        );
        assert_ne!(config_hash(&off), config_hash(&on));
    }

    #[test]
    fn secret_sources_never_put_the_url_in_plain_text() {
        let env = source_env("IM_DATABASE_URL", &ConnectionSource::secret("pg", "url"));
        assert_eq!(env.value, None);
        let key = env
            .value_from
            .and_then(|v| v.secret_key_ref)
            .expect("secret ref");
        assert_eq!((key.name.as_str(), key.key.as_str()), ("pg", "url"));
    }
}
