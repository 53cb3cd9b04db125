//! The logic Deployment and its in-cluster Service (gRPC for gateways, REST for apps). Pure.

use im_crds::{Component, ImClusterSpec};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{ConfigMap, Container, ContainerPort, Service, ServicePort, ServiceSpec},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{LOGIC_GRPC_PORT, LOGIC_HTTP_PORT, Owner, common};
use crate::names;

/// Seconds a logic pod gets to finish in-flight requests.
const LOGIC_GRACE_SECONDS: i64 = 30;

/// The logic Deployment.
pub fn build_deployment(
    owner: &Owner,
    spec: &ImClusterSpec,
    replicas: i32,
    config_map: &ConfigMap,
) -> Deployment {
    let component = Component::Logic;
    let container = Container {
        name: names::program(component).into(),
        image: Some(spec.logic.image.clone()),
        env_from: Some(common::env_from_config(config_map)),
        env: Some(vec![
            common::source_env("IM_DATABASE_URL", &spec.postgres),
            common::source_env("IM_REDIS_URL", &spec.redis),
            common::secret_env("IM_JWT_SECRET", &spec.jwt_secret_ref),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: LOGIC_HTTP_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("grpc".into()),
                container_port: LOGIC_GRPC_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        liveness_probe: Some(common::http_probe("/healthz", "http", 10)),
        readiness_probe: Some(common::http_probe("/readyz", "http", 5)),
        resources: spec.logic.resources.clone(),
        security_context: Some(common::container_security_context()),
        ..Container::default()
    };
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
                    max_unavailable: Some(IntOrString::String("25%".into())),
                }),
            }),
            revision_history_limit: Some(5),
            template: common::pod_template(
                owner,
                component,
                container,
                config_map,
                LOGIC_GRACE_SECONDS,
                LOGIC_HTTP_PORT,
            ),
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The ClusterIP Service gateways and apps reach logic through.
pub fn build_service(owner: &Owner) -> Service {
    let component = Component::Logic;
    let service_port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        app_protocol: (name == "grpc").then(|| "kubernetes.io/h2c".to_string()),
        ..ServicePort::default()
    };
    Service {
        metadata: owner.meta(
            names::workload_name(&owner.name, component),
            names::component_labels(&owner.name, component),
        ),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(names::selector_labels(&owner.name, component)),
            ports: Some(vec![
                service_port("http", LOGIC_HTTP_PORT),
                service_port("grpc", LOGIC_GRPC_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::sample_cluster;

    #[test]
    fn logic_reads_database_and_jwt_from_secrets() {
        let imc = sample_cluster();
        let owner = Owner::of(&imc).expect("owner");
        let cm = common::build_config_map(&owner, Component::Logic, &imc.spec);
        let d = build_deployment(&owner, &imc.spec, 2, &cm);
        let pod = d.spec.template.spec.expect("pod");
        let env = pod.containers[0].env.clone().expect("env");
        let secret_of = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value_from.as_ref())
                .and_then(|v| v.secret_key_ref.as_ref())
                .map(|s| (s.name.clone(), s.key.clone()))
        };
        assert_eq!(
            secret_of("IM_DATABASE_URL"),
            Some(("im-postgres".into(), "url".into()))
        );
        assert_eq!(
            secret_of("IM_JWT_SECRET"),
            Some(("im-jwt".into(), "secret".into()))
        );
        assert_eq!(d.spec.replicas, Some(2));
        assert_eq!(
            d.spec.selector.match_labels,
            Some(names::selector_labels("chat", Component::Logic))
        );
    }
}
