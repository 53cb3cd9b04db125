//! The reconcile loop body for one ImCluster: validate, read Deployments, autoscale,
//! drain, apply children, write status, publish Events; plus the per-object backoff.
//!
//! - [`status`]: pure status and Event computation.
//! - [`drain`]: pod-deletion-cost before a gateway scale-down.
//! - [`apply`]: the API writes.

pub mod apply;
pub mod drain;
pub mod status;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use im_crds::{Component, ImCluster, ImClusterSpec, condition_type, reason, validate};
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, Client, ResourceExt, runtime::controller::Action, runtime::events::Recorder};

use crate::{
    autoscale::{self, Plan, decide::Basis, prometheus::PromClient},
    build::{self, DesiredReplicas},
    metrics::{Metrics, Outcome},
    names,
};
use apply::ApiError;
use status::{Health, StatusInput};

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Objects could not be built.
    #[error(transparent)]
    Build(#[from] build::BuildError),
}

/// Shared state of the reconciler.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Metrics,
    /// Prometheus client for autoscaling.
    pub prom: PromClient,
    /// Consecutive failures per ImCluster (`namespace/name`), for backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context around a client.
    pub fn new(client: Client, recorder: Recorder, metrics: Metrics, prom: PromClient) -> Self {
        Self {
            client,
            recorder,
            metrics,
            prom,
            failures: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// First retry delay after an error; doubles per consecutive failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Requeue interval when autoscaling is off.
pub const RESYNC: Duration = Duration::from_secs(300);

fn key(imc: &ImCluster) -> String {
    format!("{}/{}", imc.namespace().unwrap_or_default(), imc.name_any())
}

/// Exponential backoff: `BACKOFF_BASE * 2^(failures-1)`, at most `BACKOFF_MAX`.
pub fn backoff(failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}

/// The controller's error policy: count the failure and back off per object.
pub fn error_policy(imc: Arc<ImCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut map = ctx.failures();
        let n = map.entry(key(&imc)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(failures);
    tracing::warn!(imcluster = %key(&imc), %error, failures, ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Reconciles one ImCluster.
#[tracing::instrument(skip_all, fields(imcluster = %key(&imc)))]
pub async fn reconcile(imc: Arc<ImCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    match reconcile_inner(&imc, &ctx).await {
        Ok((action, outcome)) => {
            ctx.failures().remove(&key(&imc));
            ctx.metrics.observe_reconcile(outcome, started);
            Ok(action)
        }
        Err(error) => {
            ctx.metrics.observe_reconcile(Outcome::Error, started);
            report_failure(&imc, &ctx, &error).await;
            Err(error)
        }
    }
}

/// Best effort: mark the ImCluster Degraded/ReconcileError and publish a Warning.
async fn report_failure(imc: &ImCluster, ctx: &Context, error: &Error) {
    let message = error_chain(error);
    let old = imc.status.as_ref();
    let mut next = old.cloned().unwrap_or_default();
    let now = Time(Timestamp::now());
    let degraded = status::next_status(
        None,
        StatusInput {
            generation: imc.metadata.generation,
            observed: None,
            health: Health::ReconcileError(message.clone()),
            metrics: None,
            scaled: vec![],
            history: None,
            now,
        },
    );
    // Keep Ready/Progressing as they were; only Degraded changes.
    next.conditions
        .retain(|c| c.type_ != condition_type::DEGRADED);
    let mut cond = degraded
        .condition(condition_type::DEGRADED)
        .cloned()
        .into_iter()
        .collect::<Vec<_>>();
    if let Some(old_cond) = old.and_then(|s| s.condition(condition_type::DEGRADED))
        && old_cond.status == "True"
    {
        cond.iter_mut()
            .for_each(|c| c.last_transition_time = old_cond.last_transition_time.clone());
    }
    next.conditions.extend(cond);
    let notices = status::notices(old, &next, &[]);
    apply::publish(&ctx.recorder, imc, &notices).await;
    if old != Some(&next)
        && let Some(ns) = imc.namespace()
        && let Err(e) = apply::patch_status(&ctx.client, &ns, &imc.name_any(), &next).await
    {
        tracing::warn!(error = %error_chain(&e), "failed to record the reconcile error in status");
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn reconcile_inner(imc: &ImCluster, ctx: &Context) -> Result<(Action, Outcome), Error> {
    let namespace = imc
        .namespace()
        .ok_or(build::BuildError::MissingMetadata("namespace"))?;
    let name = imc.name_any();
    let spec = &imc.spec;
    let old = imc.status.as_ref();
    let now = Timestamp::now();

    if let Err(errors) = validate(spec) {
        tracing::info!(%errors, "invalid spec, nothing applied");
        let next = status::next_status(
            old,
            StatusInput {
                generation: imc.metadata.generation,
                observed: None,
                health: Health::InvalidSpec(errors.to_string()),
                metrics: None,
                scaled: vec![],
                history: None,
                now: Time(now),
            },
        );
        write_status(imc, ctx, &namespace, &name, old, &next, &[]).await?;
        return Ok((Action::await_change(), Outcome::Invalid));
    }

    let gateway_name = names::workload_name(&name, Component::Gateway);
    let logic_name = names::workload_name(&name, Component::Logic);
    let gateway = apply::get_deployment(&ctx.client, &namespace, &gateway_name).await?;
    let logic = apply::get_deployment(&ctx.client, &namespace, &logic_name).await?;
    let current = DesiredReplicas {
        gateway: gateway
            .as_ref()
            .and_then(|d| d.spec.replicas)
            .unwrap_or(spec.gateway.replicas.min),
        logic: logic
            .as_ref()
            .and_then(|d| d.spec.replicas)
            .unwrap_or(spec.logic.replicas.min),
    };

    let (plan, metrics, health) = plan_replicas(imc, ctx, &namespace, current, now).await;

    if plan.replicas.gateway < current.gateway && gateway.is_some() {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
        let by_pod = metrics
            .as_ref()
            .map(|m| m.connections_by_pod.clone())
            .unwrap_or_default();
        drain::annotate_for_scale_down(
            &pods,
            &name,
            &by_pod,
            current.gateway,
            plan.replicas.gateway,
        )
        .await
        .map_err(|source| ApiError {
            action: "mark gateway pods for scale-down".into(),
            source,
        })?;
    }

    let children = build::build_children(imc, plan.replicas)?;
    apply::apply_children(&ctx.client, &namespace, &children).await?;
    for component in Component::ALL {
        ctx.metrics
            .set_desired(&key(imc), component, plan.replicas.get(component));
    }

    let now_t = Time(now);
    let scaled: Vec<_> = plan
        .decisions
        .iter()
        .filter_map(|(component, decision)| {
            status::scaling_record(
                *component,
                current.get(*component),
                decision.desired,
                decision.to_string(),
                &now_t,
            )
        })
        .collect();
    let observed = (
        status::observe(gateway.as_ref(), plan.replicas.gateway),
        status::observe(logic.as_ref(), plan.replicas.logic),
    );
    ctx.metrics.set_ready(
        &key(imc),
        Component::Gateway,
        observed.0.replicas.ready_replicas,
    );
    ctx.metrics.set_ready(
        &key(imc),
        Component::Logic,
        observed.1.replicas.ready_replicas,
    );
    let next = status::next_status(
        old,
        StatusInput {
            generation: imc.metadata.generation,
            observed: Some(observed),
            health,
            metrics: metrics
                .as_ref()
                .map(|m| (m.connections, m.messages_per_second, now_t.clone())),
            history: (!plan.decisions.is_empty() || !spec.autoscaling.enabled)
                .then_some(plan.history.clone()),
            scaled: scaled.clone(),
            now: now_t,
        },
    );
    write_status(imc, ctx, &namespace, &name, old, &next, &scaled).await?;

    let requeue = if spec.autoscaling.enabled {
        Duration::from_secs(u64::from(spec.autoscaling.sync_period_seconds))
    } else {
        RESYNC
    };
    Ok((Action::requeue(requeue), Outcome::Ok))
}

/// Reads Prometheus when autoscaling is on and a sync period has passed, and plans.
async fn plan_replicas(
    imc: &ImCluster,
    ctx: &Context,
    namespace: &str,
    current: DesiredReplicas,
    now: Timestamp,
) -> (Plan, Option<autoscale::prometheus::ClusterMetrics>, Health) {
    let spec = &imc.spec;
    let old = imc.status.as_ref();
    if !spec.autoscaling.enabled {
        return (
            autoscale::plan(spec, current, &[], None, now),
            None,
            Health::Fine,
        );
    }
    if !autoscale::is_due(spec, old.and_then(|s| s.last_metrics_time.as_ref()), now) {
        // Between syncs: hold (inside the bounds) and keep the last metrics verdict.
        let health = old
            .and_then(|s| s.condition(condition_type::DEGRADED))
            .filter(|c| c.status == "True" && c.reason == reason::METRICS_UNAVAILABLE)
            .map_or(Health::Fine, |c| {
                Health::MetricsUnavailable(c.message.clone())
            });
        return (hold(spec, current), None, health);
    }
    let history = old
        .map(|s| s.recommendations.as_slice())
        .unwrap_or_default();
    match ctx
        .prom
        .cluster_metrics(&spec.autoscaling.prometheus_url, &imc.name_any(), namespace)
        .await
    {
        Ok(metrics) => {
            let plan = autoscale::plan(spec, current, history, Some(&metrics), now);
            let blind: Vec<String> = plan
                .decisions
                .iter()
                .filter(|(_, d)| {
                    matches!(d.basis, Basis::MetricsMissing | Basis::MetricsStale { .. })
                })
                .map(|(c, d)| format!("{c}: {d}"))
                .collect();
            let health = if blind.is_empty() {
                Health::Fine
            } else {
                Health::MetricsUnavailable(blind.join("; "))
            };
            (plan, Some(metrics), health)
        }
        Err(error) => {
            let message = error_chain(&error);
            tracing::warn!(%message, "prometheus unavailable, holding replicas");
            let plan = autoscale::plan(spec, current, history, None, now);
            (plan, None, Health::MetricsUnavailable(message))
        }
    }
}

fn hold(spec: &ImClusterSpec, current: DesiredReplicas) -> Plan {
    Plan {
        replicas: DesiredReplicas {
            gateway: current.gateway.clamp(
                spec.gateway.replicas.min,
                spec.gateway.replicas.max.max(spec.gateway.replicas.min),
            ),
            logic: current.logic.clamp(
                spec.logic.replicas.min,
                spec.logic.replicas.max.max(spec.logic.replicas.min),
            ),
        },
        decisions: vec![],
        history: vec![],
    }
}

async fn write_status(
    imc: &ImCluster,
    ctx: &Context,
    namespace: &str,
    name: &str,
    old: Option<&im_crds::ImClusterStatus>,
    next: &im_crds::ImClusterStatus,
    scaled: &[im_crds::ScalingDecision],
) -> Result<(), ApiError> {
    let notices = status::notices(old, next, scaled);
    apply::publish(&ctx.recorder, imc, &notices).await;
    if old != Some(next) {
        apply::patch_status(&ctx.client, namespace, name, next).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(10), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
