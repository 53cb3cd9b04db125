//! Gateway drain on scale-down: before lowering gateway replicas, mark the pods holding the
//! fewest connections with `controller.kubernetes.io/pod-deletion-cost` so the ReplicaSet
//! removes those first. [`deletion_costs`] decides (pure); [`annotate_for_scale_down`] writes.

use std::collections::BTreeMap;

use im_crds::Component;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};

use crate::names;

/// Deletion cost for every pod: the `remove` pods with the fewest connections get negative
/// costs (fewest first, so they go first, before even unannotated pods); the rest get
/// their connection count, so a later scale-down also prefers emptier pods. Pods missing
/// from the metrics count as empty. Ties break by name for a stable answer.
pub fn deletion_costs(
    pods: &[String],
    connections: &BTreeMap<String, f64>,
    remove: usize,
) -> Vec<(String, i32)> {
    let conns = |pod: &String| connections.get(pod).copied().unwrap_or(0.0).max(0.0);
    let mut ordered: Vec<&String> = pods.iter().collect();
    ordered.sort_by(|a, b| conns(a).total_cmp(&conns(b)).then_with(|| a.cmp(b)));
    let remove = remove.min(ordered.len());
    ordered
        .into_iter()
        .enumerate()
        .map(|(rank, pod)| {
            let cost = if rank < remove {
                // rank 0 gets the lowest cost; `remove` is at most the pod count.
                -i32::try_from(remove - rank).unwrap_or(i32::MAX)
            } else {
                let c = conns(pod).round();
                if c >= f64::from(i32::MAX) {
                    i32::MAX
                } else {
                    c as i32
                }
            };
            (pod.clone(), cost)
        })
        .collect()
}

/// Lists the cluster's gateway pods and writes their deletion costs before `from -> to`.
/// Returns the pods chosen to go.
pub async fn annotate_for_scale_down(
    pods_api: &Api<Pod>,
    cluster: &str,
    connections: &BTreeMap<String, f64>,
    from: i32,
    to: i32,
) -> Result<Vec<String>, kube::Error> {
    let selector = names::selector_string(&names::selector_labels(cluster, Component::Gateway));
    let pods = pods_api
        .list(&ListParams::default().labels(&selector))
        .await?;
    let live: Vec<String> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(ResourceExt::name_any)
        .collect();
    let remove = usize::try_from(from.saturating_sub(to)).unwrap_or(0);
    let costs = deletion_costs(&live, connections, remove);
    let mut chosen = Vec::new();
    for (rank, (pod, cost)) in costs.iter().enumerate() {
        let patch = serde_json::json!({
            "metadata": { "annotations": { names::ANNOTATION_DELETION_COST: cost.to_string() } }
        });
        pods_api
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        if rank < remove {
            chosen.push(pod.clone());
        }
    }
    tracing::info!(cluster, from, to, chosen = ?chosen, "marked gateway pods for scale-down");
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn emptiest_pods_go_first() {
        let conns = BTreeMap::from([
            ("gw-a".to_string(), 900.0),
            ("gw-b".to_string(), 10.0),
            ("gw-c".to_string(), 500.0),
        ]);
        let costs = deletion_costs(&pods(&["gw-a", "gw-b", "gw-c", "gw-d"]), &conns, 2);
        assert_eq!(
            costs,
            vec![
                ("gw-d".to_string(), -2),
                ("gw-b".to_string(), -1),
                ("gw-c".to_string(), 500),
                ("gw-a".to_string(), 900),
            ]
        );
    }

    #[test]
    fn removing_more_than_exist_marks_all() {
        let costs = deletion_costs(&pods(&["a", "b"]), &BTreeMap::new(), 5);
        assert_eq!(costs, vec![("a".to_string(), -2), ("b".to_string(), -1)]);
    }
}
