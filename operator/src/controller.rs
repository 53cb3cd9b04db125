//! Wires the reconciler into a kube-rs `Controller` watching ImClusters and the children
//! it owns. Runs until the given shutdown future completes.

use std::{future::Future, sync::Arc};

use futures::StreamExt;
use im_crds::ImCluster;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Service, ServiceAccount},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api,
    runtime::{Controller, watcher},
};

use crate::{
    names,
    reconcile::{Context, error_policy, reconcile},
};

/// Runs the controller until `shutdown` completes, then lets running reconciles finish.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    // Only children carrying our managed-by label are watched (less memory, less noise).
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        names::LABEL_MANAGED_BY,
        names::FIELD_MANAGER
    ));
    Controller::new(
        Api::<ImCluster>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Deployment>::all(client.clone()), owned.clone())
    .owns(Api::<Service>::all(client.clone()), owned.clone())
    .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
    .owns(
        Api::<PodDisruptionBudget>::all(client.clone()),
        owned.clone(),
    )
    .owns(Api::<ServiceAccount>::all(client), owned)
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((object, action)) => tracing::debug!(%object, ?action, "reconciled"),
            Err(error) => tracing::debug!(%error, "reconcile ended with an error"),
        }
    })
    .await;
}
