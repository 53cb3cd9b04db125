//! im-operator: reconciles `ImCluster` resources into gateway and logic workloads and
//! scales them from Prometheus metrics.
//!
//! - [`names`]: object names and labels.
//! - [`build`]: pure builders, ImCluster + replica counts -> Deployments, Services,
//!   ConfigMaps, PodDisruptionBudgets, ServiceAccount.
//! - [`autoscale`]: Prometheus client and the pure HPA-style decision.
#![forbid(unsafe_code)]

pub mod autoscale;
pub mod build;
pub mod dump;
pub mod names;
pub mod metrics;
pub mod reconcile;
