//! The logic Deployment, its in-cluster ClusterIP Service (REST for apps) and its headless
//! gRPC Service (gateways). Pure.

use im_crds::{Component, ImClusterSpec};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{ConfigMap, Container, ContainerPort, Probe, Service, ServicePort, ServiceSpec},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{LOGIC_GRPC_PORT, LOGIC_HTTP_PORT, Owner, common};
use crate::names;

/// Seconds a logic pod gets to finish in-flight requests.
const LOGIC_GRACE_SECONDS: i64 = 30;
/// Seconds a logic pod gets to migrate the database and start serving
/// before its liveness probe counts.
const LOGIC_START_SECONDS: i32 = 3600;
/// Seconds between two liveness (and startup) probes.
const LIVENESS_PERIOD_SECONDS: i32 = 10;

/// The logic Deployment.
pub fn build_deployment(
    owner: &Owner,
    spec: &ImClusterSpec,
    replicas: i32,
    config_map: &ConfigMap,
) -> Deployment {
    let component = Component::Logic;
    let liveness = common::http_probe("/healthz", "http", LIVENESS_PERIOD_SECONDS);
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
        // Logic migrates the database before it serves: an index built
        // concurrently on a large inbox (migration 0010) takes minutes.
        // The liveness probe waits for the start, so that it does not kill
        // the pod mid-build (which leaves the build to start over).
        startup_probe: Some(Probe {
            failure_threshold: Some(LOGIC_START_SECONDS / LIVENESS_PERIOD_SECONDS),
            ..liveness.clone()
        }),
        liveness_probe: Some(liveness),
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

/// The ClusterIP Service apps (REST) and other in-cluster clients reach logic through.
/// Gateways use [`build_headless_service`] instead.
pub fn build_service(owner: &Owner) -> Service {
    let name = names::workload_name(&owner.name, Component::Logic);
    let ports = vec![
        service_port("http", LOGIC_HTTP_PORT),
        service_port("grpc", LOGIC_GRPC_PORT),
    ];
    logic_service(owner, name, ServiceSpec::default(), ports)
}

/// The headless Service gateways reach logic's gRPC port through.
///
/// A gateway keeps one long-lived HTTP/2 connection per logic address. Behind a ClusterIP
/// the one virtual IP is balanced per TCP connection, so each gateway would stay pinned to
/// a single logic pod and pods added later would get no gateway traffic. Without a cluster
/// IP, the Service name resolves in DNS to every ready logic pod; gateways re-resolve it
/// and keep a stream to each address. Pods that are not ready are not published, so a
/// gateway never dials a pod that cannot serve yet.
pub fn build_headless_service(owner: &Owner) -> Service {
    let name = names::headless_name(&owner.name, Component::Logic);
    let headless = ServiceSpec {
        cluster_ip: Some("None".into()),
        publish_not_ready_addresses: Some(false),
        ..ServiceSpec::default()
    };
    logic_service(
        owner,
        name,
        headless,
        vec![service_port("grpc", LOGIC_GRPC_PORT)],
    )
}

/// A named port of the logic container; gRPC is marked as cleartext HTTP/2.
fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        app_protocol: (name == "grpc").then(|| "kubernetes.io/h2c".to_string()),
        ..ServicePort::default()
    }
}

/// A ClusterIP-type Service of the logic pods: `spec` with type, selector and ports set.
fn logic_service(
    owner: &Owner,
    name: String,
    spec: ServiceSpec,
    ports: Vec<ServicePort>,
) -> Service {
    let component = Component::Logic;
    Service {
        metadata: owner.meta(name, names::component_labels(&owner.name, component)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(names::selector_labels(&owner.name, component)),
            ports: Some(ports),
            ..spec
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::sample_cluster;

    /// The sample cluster's owner and logic Deployment (2 replicas).
    fn sample_deployment() -> (Owner, Deployment) {
        let imc = sample_cluster();
        let owner = Owner::of(&imc).expect("owner");
        let cm = common::build_config_map(&owner, Component::Logic, &imc.spec);
        let d = build_deployment(&owner, &imc.spec, 2, &cm);
        (owner, d)
    }

    #[test]
    fn logic_reads_database_and_jwt_from_secrets() {
        let (_, d) = sample_deployment();
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

    /// A pod migrating a large database (minutes, for a concurrent index
    /// build) is not killed by its liveness probe: the startup probe holds
    /// the liveness probe off for an hour; after the start it counts as
    /// before (three failures 10 s apart).
    #[test]
    fn logic_gets_an_hour_to_migrate_before_its_liveness_probe_counts() {
        let (_, d) = sample_deployment();
        let pod = d.spec.template.spec.expect("pod");
        let c = &pod.containers[0];
        let startup = c.startup_probe.as_ref().expect("a startup probe");
        let path = |p: &Probe| p.http_get.as_ref().and_then(|h| h.path.clone());
        assert_eq!(path(startup).as_deref(), Some("/healthz"));
        let window = |p: &Probe| p.period_seconds.unwrap() * p.failure_threshold.unwrap();
        assert_eq!(window(startup), 3600);
        let liveness = c.liveness_probe.as_ref().expect("a liveness probe");
        assert_eq!(window(liveness), 30);
    }

    #[test]
    fn headless_service_resolves_to_ready_logic_pods_on_grpc_only() {
        let (owner, deployment) = sample_deployment();
        let svc = build_headless_service(&owner);
        assert_eq!(svc.metadata.name.as_deref(), Some("chat-logic-headless"));
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.publish_not_ready_addresses, Some(false));
        assert_eq!(spec.selector, deployment.spec.selector.match_labels);
        let ports = spec.ports.expect("ports");
        assert_eq!(ports.len(), 1);
        let grpc = &ports[0];
        assert_eq!(grpc.name.as_deref(), Some("grpc"));
        assert_eq!(grpc.port, LOGIC_GRPC_PORT);
        assert_eq!(grpc.target_port, Some(IntOrString::String("grpc".into())));
        assert_eq!(grpc.protocol.as_deref(), Some("TCP"));
        assert_eq!(grpc.app_protocol.as_deref(), Some("kubernetes.io/h2c"));
    }

    #[test]
    fn the_clusterip_service_is_kept_for_rest_and_grpc() {
        let owner = Owner::of(&sample_cluster()).expect("owner");
        let spec = build_service(&owner).spec.expect("spec");
        assert_eq!(spec.cluster_ip, None);
        let names: Vec<_> = spec
            .ports
            .expect("ports")
            .into_iter()
            .filter_map(|p| p.name)
            .collect();
        assert_eq!(names, ["http", "grpc"]);
    }
}
