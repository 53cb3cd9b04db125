//! Names and labels of the objects the operator owns. Pure string building, no IO.

use std::collections::BTreeMap;

use im_crds::Component;

/// The field manager used for every server-side apply.
pub const FIELD_MANAGER: &str = "im-operator";
/// Label: which ImCluster an object belongs to.
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
/// Label: gateway or logic.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// Label: the program (`im-gateway`, `im-logic`).
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Label: the system the object is part of.
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
/// Label: who manages the object.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Pod template annotation holding a hash of the component's configuration.
pub const ANNOTATION_CONFIG_HASH: &str = "im.dev/config-hash";
/// The annotation the ReplicaSet controller reads to pick pods to delete first.
pub const ANNOTATION_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The program a component runs.
pub fn program(component: Component) -> &'static str {
    match component {
        Component::Gateway => "im-gateway",
        Component::Logic => "im-logic",
    }
}

/// Name of a component's Deployment, Service and PodDisruptionBudget.
pub fn workload_name(cluster: &str, component: Component) -> String {
    format!("{cluster}-{component}")
}

/// Name of a component's headless Service (DNS resolves to one address per ready pod).
pub fn headless_name(cluster: &str, component: Component) -> String {
    format!("{cluster}-{component}-headless")
}

/// Name of a component's ConfigMap.
pub fn config_name(cluster: &str, component: Component) -> String {
    format!("{cluster}-{component}-config")
}

/// Name of the ServiceAccount both components run as.
pub fn service_account_name(cluster: &str) -> String {
    format!("{cluster}-im")
}

/// Labels that select a component's pods (stable for the life of the Deployment).
pub fn selector_labels(cluster: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_INSTANCE.to_string(), cluster.to_string()),
        (LABEL_COMPONENT.to_string(), component.as_str().to_string()),
        (LABEL_NAME.to_string(), program(component).to_string()),
    ])
}

/// Labels put on every object of a component.
pub fn component_labels(cluster: &str, component: Component) -> BTreeMap<String, String> {
    let mut labels = selector_labels(cluster, component);
    labels.extend(common_labels(cluster));
    labels
}

/// Labels put on objects shared by both components.
pub fn common_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_INSTANCE.to_string(), cluster.to_string()),
        (LABEL_PART_OF.to_string(), "im".to_string()),
        (LABEL_MANAGED_BY.to_string(), FIELD_MANAGER.to_string()),
    ])
}

/// A label selector string (`k=v,k=v`) for list calls.
pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
