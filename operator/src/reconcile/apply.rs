//! Writes to the Kubernetes API: server-side apply of children (one field manager),
//! the status subresource, and Events. No decisions here.

use im_crds::{ImCluster, ImClusterStatus};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    runtime::events::{Event, Recorder},
};
use serde::{Serialize, de::DeserializeOwned};

use super::status::Notice;
use crate::{build::Children, names::FIELD_MANAGER};

/// A failed API call, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action}")]
pub struct ApiError {
    /// What the operator tried, e.g. "apply Deployment chat-gateway".
    pub action: String,
    /// The cause.
    #[source]
    pub source: kube::Error,
}

fn ssa() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply_one<K>(client: &Client, namespace: &str, object: &K) -> Result<(), ApiError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(&name, &ssa(), &Patch::Apply(object))
        .await
        .map(|_| ())
        .map_err(|source| ApiError {
            action: format!("apply {} {name}", K::kind(&())),
            source,
        })
}

/// Applies every child, dependencies first (identity and config before the pods), then
/// the logic headless Service gateways resolve.
pub async fn apply_children(
    client: &Client,
    namespace: &str,
    children: &Children,
) -> Result<(), ApiError> {
    apply_one(client, namespace, &children.service_account).await?;
    for objects in [&children.gateway, &children.logic] {
        apply_one(client, namespace, &objects.config_map).await?;
        apply_one(client, namespace, &objects.deployment).await?;
        apply_one(client, namespace, &objects.service).await?;
        apply_one(client, namespace, &objects.pdb).await?;
    }
    apply_one(client, namespace, &children.logic_headless).await?;
    Ok(())
}

/// Reads a Deployment, `None` when it does not exist yet.
pub async fn get_deployment(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Deployment>, ApiError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name).await.map_err(|source| ApiError {
        action: format!("read Deployment {name}"),
        source,
    })
}

/// Writes the status subresource (server-side apply of the whole status).
pub async fn patch_status(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &ImClusterStatus,
) -> Result<(), ApiError> {
    let api: Api<ImCluster> = Api::namespaced(client.clone(), namespace);
    let body = serde_json::json!({
        "apiVersion": ImCluster::api_version(&()),
        "kind": ImCluster::kind(&()),
        "status": status,
    });
    api.patch_status(name, &ssa(), &Patch::Apply(&body))
        .await
        .map(|_| ())
        .map_err(|source| ApiError {
            action: format!("write status of ImCluster {name}"),
            source,
        })
}

/// Publishes Events about an ImCluster. Failures are logged, not returned: an Event
/// that does not arrive must not stop the reconcile.
pub async fn publish(recorder: &Recorder, imc: &ImCluster, notices: &[super::status::Notice]) {
    let reference = imc.object_ref(&());
    for Notice {
        type_,
        reason,
        note,
    } in notices
    {
        let event = Event {
            type_: *type_,
            reason: reason.clone(),
            note: Some(note.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &reference).await {
            tracing::warn!(%error, reason, "failed to publish event");
        }
    }
}
