//! Pure builders: from an `ImCluster` and the wanted replica counts, the Kubernetes objects
//! the operator applies. No IO here; `reconcile::apply` sends what these return.
//!
//! - [`gateway`]: the gateway Deployment and its client-facing Service.
//! - [`logic`]: the logic Deployment, its in-cluster Service and the headless gRPC Service
//!   gateways resolve to reach every ready logic pod.
//! - [`common`]: ConfigMaps, the ServiceAccount, PodDisruptionBudgets and pod parts both use.

pub mod common;
pub mod gateway;
pub mod logic;

use std::collections::BTreeMap;

use im_crds::{Component, ImCluster};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Service, ServiceAccount},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{Resource, ResourceExt};

/// gRPC port of a gateway pod (logic pushes here).
pub const GATEWAY_GRPC_PORT: i32 = 9100;
/// gRPC port of a logic pod (gateways call here).
pub const LOGIC_GRPC_PORT: i32 = 9000;
/// REST and `/metrics` port of a logic pod.
pub const LOGIC_HTTP_PORT: i32 = 8080;

/// Why objects could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    /// The ImCluster has no name, namespace or uid (it was not read from the API server).
    #[error("failed to build children: ImCluster is missing metadata.{0}")]
    MissingMetadata(&'static str),
}

/// Replica counts to put into the Deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DesiredReplicas {
    /// Gateway pods.
    pub gateway: i32,
    /// Logic pods.
    pub logic: i32,
}

impl DesiredReplicas {
    /// The count for one component.
    pub fn get(self, component: Component) -> i32 {
        match component {
            Component::Gateway => self.gateway,
            Component::Logic => self.logic,
        }
    }

    /// Sets the count for one component.
    pub fn set(&mut self, component: Component, replicas: i32) {
        match component {
            Component::Gateway => self.gateway = replicas,
            Component::Logic => self.logic = replicas,
        }
    }
}

/// The objects of one component.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentObjects {
    /// Non-secret configuration, read by the pods through `envFrom`.
    pub config_map: ConfigMap,
    /// The pods.
    pub deployment: Deployment,
    /// How the pods are reached.
    pub service: Service,
    /// Voluntary-disruption limit.
    pub pdb: PodDisruptionBudget,
}

/// Everything the operator owns for one ImCluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// The identity both components run as.
    pub service_account: ServiceAccount,
    /// Gateway objects.
    pub gateway: ComponentObjects,
    /// Logic objects.
    pub logic: ComponentObjects,
    /// Headless Service of the logic pods' gRPC port: gateways resolve it to every ready
    /// logic pod and keep one connection to each (see [`logic::build_headless_service`]).
    pub logic_headless: Service,
}

/// The ImCluster facts every builder needs.
#[derive(Debug, Clone)]
pub struct Owner {
    /// ImCluster name.
    pub name: String,
    /// ImCluster namespace (children live in it).
    pub namespace: String,
    /// Controller owner reference pointing at the ImCluster.
    pub owner_ref: OwnerReference,
}

impl Owner {
    /// Reads name, namespace and uid from an ImCluster.
    pub fn of(imc: &ImCluster) -> Result<Self, BuildError> {
        let name = imc
            .metadata
            .name
            .clone()
            .ok_or(BuildError::MissingMetadata("name"))?;
        let namespace = imc
            .namespace()
            .ok_or(BuildError::MissingMetadata("namespace"))?;
        let owner_ref = imc
            .controller_owner_ref(&())
            .ok_or(BuildError::MissingMetadata("uid"))?;
        Ok(Self {
            name,
            namespace,
            owner_ref,
        })
    }

    /// Metadata of a child: name, namespace, labels and the owner reference.
    pub fn meta(&self, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner_ref.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// Builds every child of an ImCluster for the given replica counts.
pub fn build_children(imc: &ImCluster, replicas: DesiredReplicas) -> Result<Children, BuildError> {
    let owner = Owner::of(imc)?;
    let spec = &imc.spec;
    let gateway_config = common::build_config_map(&owner, Component::Gateway, spec);
    let logic_config = common::build_config_map(&owner, Component::Logic, spec);
    Ok(Children {
        service_account: common::build_service_account(&owner),
        gateway: ComponentObjects {
            deployment: gateway::build_deployment(&owner, spec, replicas.gateway, &gateway_config),
            service: gateway::build_service(&owner, spec),
            pdb: common::build_pdb(&owner, Component::Gateway),
            config_map: gateway_config,
        },
        logic: ComponentObjects {
            deployment: logic::build_deployment(&owner, spec, replicas.logic, &logic_config),
            service: logic::build_service(&owner),
            pdb: common::build_pdb(&owner, Component::Logic),
            config_map: logic_config,
        },
        logic_headless: logic::build_headless_service(&owner),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use im_crds::sample_spec;

    /// A sample ImCluster as the API server would return it.
    pub(crate) fn sample_cluster() -> ImCluster {
        let mut imc = ImCluster::new("chat", sample_spec());
        imc.metadata.namespace = Some("im".into());
        imc.metadata.uid = Some("0b1c2d3e-0000-4000-8000-000000000001".into());
        imc.metadata.generation = Some(1);
        imc
    }

    #[test]
    fn every_child_is_owned_labelled_and_namespaced() {
        let children = build_children(
            &sample_cluster(),
            DesiredReplicas {
                gateway: 3,
                logic: 2,
            },
        )
        .expect("build");
        let metas = [
            &children.service_account.metadata,
            &children.gateway.config_map.metadata,
            &children.gateway.deployment.metadata,
            &children.gateway.service.metadata,
            &children.gateway.pdb.metadata,
            &children.logic.config_map.metadata,
            &children.logic.deployment.metadata,
            &children.logic.service.metadata,
            &children.logic.pdb.metadata,
            &children.logic_headless.metadata,
        ];
        for meta in metas {
            assert_eq!(meta.namespace.as_deref(), Some("im"));
            let owners = meta.owner_references.as_ref().expect("owner refs");
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "ImCluster");
            assert_eq!(owners[0].name, "chat");
            assert_eq!(owners[0].controller, Some(true));
            let labels = meta.labels.as_ref().expect("labels");
            assert_eq!(
                labels.get(crate::names::LABEL_INSTANCE).map(String::as_str),
                Some("chat")
            );
        }
        assert_eq!(children.gateway.deployment.spec.replicas, Some(3));
        assert_eq!(children.logic.deployment.spec.replicas, Some(2));
    }

    #[test]
    fn an_imcluster_without_uid_cannot_own_children() {
        let mut imc = sample_cluster();
        imc.metadata.uid = None;
        let err = build_children(
            &imc,
            DesiredReplicas {
                gateway: 1,
                logic: 1,
            },
        );
        assert_eq!(err, Err(BuildError::MissingMetadata("uid")));
    }
}
