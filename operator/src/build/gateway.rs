//! The gateway Deployment and its client-facing Service. Pure.

use im_crds::{Component, ImClusterSpec};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{ConfigMap, Container, ContainerPort, Service, ServicePort, ServiceSpec},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{GATEWAY_GRPC_PORT, Owner, common};
use crate::names;

/// Extra seconds past the drain window before the kubelet kills a gateway pod.
const GRACE_MARGIN_SECONDS: i64 = 10;

/// The gateway Deployment: surge-only rollouts (no connection-holding pod is removed
/// before its replacement is ready) and a grace period covering the drain window.
pub fn build_deployment(
    owner: &Owner,
    spec: &ImClusterSpec,
    replicas: i32,
    config_map: &ConfigMap,
) -> Deployment {
    let component = Component::Gateway;
    let listeners = &spec.gateway.listeners;
    let container = Container {
        name: names::program(component).into(),
        image: Some(spec.gateway.image.clone()),
        env_from: Some(common::env_from_config(config_map)),
        env: Some(vec![
            common::field_env("POD_IP", "status.podIP"),
            common::field_env("IM_GATE_ID", "metadata.name"),
            k8s_openapi::api::core::v1::EnvVar {
                name: "IM_ADVERTISE_ADDR".into(),
                value: Some(format!("$(POD_IP):{GATEWAY_GRPC_PORT}")),
                ..Default::default()
            },
            common::source_env("IM_REDIS_URL", &spec.redis),
        ]),
        ports: Some(vec![
            port("tcp", listeners.tcp_port),
            port("http", listeners.websocket_port),
            port("grpc", GATEWAY_GRPC_PORT),
        ]),
        liveness_probe: Some(common::http_probe("/healthz", "http", 10)),
        readiness_probe: Some(common::http_probe("/readyz", "http", 5)),
        resources: spec.gateway.resources.clone(),
        security_context: Some(common::container_security_context()),
        ..Container::default()
    };
    let grace = i64::from(spec.drain_window_seconds) + GRACE_MARGIN_SECONDS;
    Deployment {
        metadata: owner.meta(
            names::workload_name(&owner.name, component),
            names::component_labels(&owner.name, component),
        ),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(names::selector_labels(&owner.name, component)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            revision_history_limit: Some(5),
            template: common::pod_template(
                owner,
                component,
                container,
                config_map,
                grace,
                listeners.websocket_port,
            ),
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The client-facing Service: the TCP and WebSocket listeners, of the type the spec asks.
pub fn build_service(owner: &Owner, spec: &ImClusterSpec) -> Service {
    let component = Component::Gateway;
    let listeners = &spec.gateway.listeners;
    let service_port = |name: &str, port: i32, target: &str| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(target.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    Service {
        metadata: owner.meta(
            names::workload_name(&owner.name, component),
            names::component_labels(&owner.name, component),
        ),
        spec: Some(ServiceSpec {
            type_: Some(listeners.service_type.as_str().into()),
            selector: Some(names::selector_labels(&owner.name, component)),
            ports: Some(vec![
                service_port("tcp", listeners.tcp_port, "tcp"),
                service_port("ws", listeners.websocket_port, "http"),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn port(name: &str, container_port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::sample_cluster;

    fn env_value(deployment: &Deployment, name: &str) -> Option<String> {
        let pod = deployment.spec.template.spec.as_ref()?;
        pod.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| {
                e.value.clone().or_else(|| {
                    e.value_from
                        .as_ref()
                        .and_then(|v| v.field_ref.as_ref())
                        .map(|f| f.field_path.clone())
                })
            })
    }

    #[test]
    fn gateway_gets_identity_advertise_address_and_redis() {
        let imc = sample_cluster();
        let owner = Owner::of(&imc).expect("owner");
        let cm = common::build_config_map(&owner, Component::Gateway, &imc.spec);
        let d = build_deployment(&owner, &imc.spec, 4, &cm);
        assert_eq!(
            env_value(&d, "IM_GATE_ID").as_deref(),
            Some("metadata.name")
        );
        assert_eq!(env_value(&d, "POD_IP").as_deref(), Some("status.podIP"));
        assert_eq!(
            env_value(&d, "IM_ADVERTISE_ADDR").as_deref(),
            Some("$(POD_IP):9100")
        );
        assert_eq!(
            env_value(&d, "IM_REDIS_URL").as_deref(),
            Some("redis://redis:6379")
        );
        let pod = d.spec.template.spec.as_ref().expect("pod spec");
        assert_eq!(pod.termination_grace_period_seconds, Some(40));
        let container = &pod.containers[0];
        let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(
            probe_path(&container.liveness_probe).as_deref(),
            Some("/healthz")
        );
        assert_eq!(
            probe_path(&container.readiness_probe).as_deref(),
            Some("/readyz")
        );
    }

    #[test]
    fn service_exposes_tcp_and_websocket_with_the_requested_type() {
        let mut imc = sample_cluster();
        imc.spec.gateway.listeners.service_type = im_crds::ServiceType::LoadBalancer;
        imc.spec.gateway.listeners.tcp_port = 5222;
        let owner = Owner::of(&imc).expect("owner");
        let svc = build_service(&owner, &imc.spec);
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        let ports: Vec<_> = spec
            .ports
            .expect("ports")
            .iter()
            .map(|p| (p.name.clone().unwrap_or_default(), p.port))
            .collect();
        assert_eq!(ports, [("tcp".to_string(), 5222), ("ws".to_string(), 7001)]);
    }
}
