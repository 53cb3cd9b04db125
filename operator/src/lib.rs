//! im-operator: reconciles `ImCluster` resources into gateway and logic workloads and
//! scales them from Prometheus metrics.
//!
//! - [`names`]: object names and labels.
//! - [`build`]: pure builders, ImCluster + replica counts -> Deployments, Services,
//!   ConfigMaps, PodDisruptionBudgets, ServiceAccount.
//! - [`autoscale`]: Prometheus client and the pure HPA-style decision.
//! - [`reconcile`]: one reconcile (validate, read, autoscale, drain, apply, status, Events)
//!   and the per-object backoff; [`controller`] runs it under a kube-rs `Controller`.
//! - [`leader`]: Lease-based leader election; [`metrics`] and [`http`]: `/metrics`, `/healthz`.
//! - [`dump`]: writes built objects as YAML for offline validation.
//!
//! Flow: watch event -> `reconcile` -> `build` (pure) + `autoscale::plan` (pure, fed by
//! Prometheus) -> server-side apply of children -> status subresource + Events.
#![forbid(unsafe_code)]

pub mod autoscale;
pub mod build;
pub mod controller;
pub mod dump;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod reconcile;
