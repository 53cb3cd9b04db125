//! Against a real cluster (current kubeconfig context, CRD installed, namespace `im-test`
//! present): one reconcile creates the children and writes the status.
//! Run with `cargo nextest run -p im-operator --run-ignored only`.

use std::{sync::Arc, time::Duration};

use im_crds::{ImCluster, sample_spec};
use im_operator::{
    autoscale::prometheus::PromClient,
    metrics::Metrics,
    reconcile::{Context, reconcile},
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
    runtime::events::{Recorder, Reporter},
};

#[tokio::test]
#[ignore = "needs a Kubernetes cluster"]
async fn reconcile_creates_children_in_a_real_cluster() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await.expect("kubeconfig");
    let ns = "im-test";
    let imcs: Api<ImCluster> = Api::namespaced(client.clone(), ns);
    let imc = ImCluster::new("it", sample_spec());
    let applied = imcs
        .patch(
            "it",
            &PatchParams::apply("im-test").force(),
            &Patch::Apply(&imc),
        )
        .await
        .expect("apply ImCluster");
    let recorder = Recorder::new(client.clone(), Reporter::from("im-operator-test"));
    let prom = PromClient::new(Duration::from_secs(2)).expect("prometheus client");
    let ctx = Arc::new(Context::new(
        client.clone(),
        recorder,
        Metrics::new().expect("m"),
        prom,
    ));
    reconcile(Arc::new(applied), ctx).await.expect("reconcile");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let gw = deployments
        .get("it-gateway")
        .await
        .expect("gateway deployment");
    assert_eq!(gw.spec.replicas, Some(2));
    let status = imcs
        .get_status("it")
        .await
        .expect("status")
        .status
        .expect("status set");
    assert_eq!(status.observed_generation, Some(1));
    imcs.delete("it", &DeleteParams::default())
        .await
        .expect("cleanup");
}
