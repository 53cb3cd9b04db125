//! Reconcile against a mocked API server: every test scripts the calls the operator must
//! make, in order, and checks what it sends.

mod fixtures;

use std::{sync::Arc, time::Duration};

use fixtures::{cluster, context, deployment, fake_prometheus, pod_list};
use http::Method;
use im_crds::{Component, condition_type};
use im_operator::{
    metrics::Outcome,
    reconcile::{Error, error_policy, reconcile},
};
use kube::runtime::controller::Action;

const GATEWAY: &str = "/apis/apps/v1/namespaces/im/deployments/chat-gateway";
const LOGIC: &str = "/apis/apps/v1/namespaces/im/deployments/chat-logic";

async fn finish(server: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("scripted server finished in time")
        .expect("scripted server assertions held");
}

#[tokio::test]
async fn create_applies_every_child_and_writes_status() {
    let (ctx, mut api) = context();
    let imc = cluster();
    let expected = imc.clone();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, GATEWAY).await.fail(404, "NotFound");
        api.expect(Method::GET, LOGIC).await.fail(404, "NotFound");
        let applied = api.expect_children_applied().await;
        let gw = &applied["Deployment/chat-gateway"];
        assert_eq!(gw["spec"]["replicas"], 2);
        assert_eq!(
            gw["spec"]["template"]["spec"]["containers"][0]["image"],
            "ghcr.io/example/im-gateway:0.1.0"
        );
        assert_eq!(gw["metadata"]["ownerReferences"][0]["kind"], "ImCluster");
        assert_eq!(applied["Service/chat-gateway"]["spec"]["type"], "ClusterIP");
        assert_eq!(
            applied["Service/chat-logic-headless"]["spec"]["clusterIP"],
            "None"
        );
        let status = api.expect_status(&expected).await;
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(status.gateways_ready.as_deref(), Some("0/2"));
        assert!(status.is_true(condition_type::PROGRESSING));
        assert!(!status.is_true(condition_type::DEGRADED));
        api.expect_silence().await;
    });
    let action = reconcile(Arc::new(imc), ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    finish(server).await;
    assert_eq!(ctx.metrics.reconciles(Outcome::Ok), 1);
}

#[tokio::test]
async fn spec_change_patches_the_deployment_and_bumps_observed_generation() {
    let (ctx, mut api) = context();
    let mut imc = cluster();
    imc.metadata.generation = Some(2);
    imc.spec.gateway.image = "ghcr.io/example/im-gateway:0.2.0".into();
    let expected = imc.clone();
    let server = tokio::spawn(async move {
        let gw = deployment("chat-gateway", "ghcr.io/example/im-gateway:0.1.0", 2, 2);
        api.expect(Method::GET, GATEWAY).await.reply(200, &gw);
        let lg = deployment("chat-logic", "ghcr.io/example/im-logic:0.1.0", 2, 2);
        api.expect(Method::GET, LOGIC).await.reply(200, &lg);
        let applied = api.expect_children_applied().await;
        let gw = &applied["Deployment/chat-gateway"];
        assert_eq!(
            gw["spec"]["template"]["spec"]["containers"][0]["image"],
            "ghcr.io/example/im-gateway:0.2.0"
        );
        // Both Deployments were ready before: Ready flips to True, which is an Event.
        let event = api.expect_event().await;
        assert_eq!(event["reason"], "Ready");
        let status = api.expect_status(&expected).await;
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(status.logic_ready.as_deref(), Some("2/2"));
        api.expect_silence().await;
    });
    reconcile(Arc::new(imc), ctx).await.expect("reconcile");
    finish(server).await;
}

#[tokio::test]
async fn invalid_spec_is_degraded_with_an_event_and_builds_nothing() {
    let (ctx, mut api) = context();
    let mut imc = cluster();
    imc.spec.gateway.replicas.min = 9;
    imc.spec.gateway.replicas.max = 3;
    let expected = imc.clone();
    let server = tokio::spawn(async move {
        let event = api.expect_event().await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "InvalidSpec");
        let note = event["note"].as_str().unwrap_or_default();
        assert!(note.contains("spec.gateway.replicas"), "{note}");
        let status = api.expect_status(&expected).await;
        let degraded = status
            .condition(condition_type::DEGRADED)
            .expect("degraded condition");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "InvalidSpec")
        );
        api.expect_silence().await;
    });
    let action = reconcile(Arc::new(imc), ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::await_change());
    finish(server).await;
    assert_eq!(ctx.metrics.reconciles(Outcome::Invalid), 1);
}

#[tokio::test]
async fn api_error_is_reported_and_backs_off_per_object() {
    let (ctx, mut api) = context();
    let imc = Arc::new(cluster());
    let expected = cluster();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, GATEWAY)
            .await
            .fail(500, "InternalError");
        let event = api.expect_event().await;
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (Some("Warning"), Some("ReconcileError"))
        );
        let status = api.expect_status(&expected).await;
        let degraded = status
            .condition(condition_type::DEGRADED)
            .expect("degraded");
        assert_eq!(degraded.reason, "ReconcileError");
        assert!(
            degraded.message.contains("read Deployment chat-gateway"),
            "{}",
            degraded.message
        );
        api.expect_silence().await;
    });
    let error = reconcile(imc.clone(), ctx.clone())
        .await
        .expect_err("must fail");
    assert!(matches!(error, Error::Api(_)), "{error}");
    finish(server).await;
    assert_eq!(ctx.metrics.reconciles(Outcome::Error), 1);
    let first = error_policy(imc.clone(), &error, ctx.clone());
    let second = error_policy(imc.clone(), &error, ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(5)));
    assert_eq!(second, Action::requeue(Duration::from_secs(10)));
    let mut other = cluster();
    other.metadata.name = Some("other".into());
    assert_eq!(
        error_policy(Arc::new(other), &error, ctx),
        Action::requeue(Duration::from_secs(5)),
        "backoff is per object"
    );
}

#[tokio::test]
async fn scale_up_patches_replicas_and_records_the_decision() {
    let prom = fake_prometheus(
        vec![("chat-gateway-a", 4500.0), ("chat-gateway-b", 4500.0)],
        150.0,
    )
    .await;
    let (ctx, mut api) = context();
    let mut imc = cluster();
    imc.spec.autoscaling.enabled = true;
    imc.spec.autoscaling.prometheus_url = format!("http://{prom}");
    imc.spec.autoscaling.target_connections_per_gateway = 1000;
    let expected = imc.clone();
    let server = tokio::spawn(async move {
        let gw = deployment("chat-gateway", "ghcr.io/example/im-gateway:0.1.0", 2, 2);
        api.expect(Method::GET, GATEWAY).await.reply(200, &gw);
        let lg = deployment("chat-logic", "ghcr.io/example/im-logic:0.1.0", 2, 2);
        api.expect(Method::GET, LOGIC).await.reply(200, &lg);
        let applied = api.expect_children_applied().await;
        // 9000 connections / 1000 per pod = 9, but at most 4 more per period: 6.
        assert_eq!(applied["Deployment/chat-gateway"]["spec"]["replicas"], 6);
        assert_eq!(applied["Deployment/chat-logic"]["spec"]["replicas"], 2);
        let event = api.expect_event().await;
        assert_eq!(event["reason"], "Scaled");
        let note = event["note"].as_str().unwrap_or_default();
        assert!(note.starts_with("gateway 2 -> 6"), "{note}");
        let status = api.expect_status(&expected).await;
        let last = status.last_scaling.expect("decision recorded");
        assert_eq!(
            (last.component, last.from, last.to),
            (Component::Gateway, 2, 6)
        );
        assert!(last.reason.contains("max step"), "{}", last.reason);
        assert_eq!(status.connections, Some(9000));
        assert!(status.last_metrics_time.is_some());
        assert_eq!(status.recommendations.len(), 2);
        api.expect_silence().await;
    });
    let action = reconcile(Arc::new(imc), ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    finish(server).await;
}

#[tokio::test]
async fn gateway_scale_down_marks_the_emptiest_pods_first() {
    let prom = fake_prometheus(
        vec![
            ("gw-busy", 900.0),
            ("gw-idle", 5.0),
            ("gw-mid", 400.0),
            ("gw-empty", 0.0),
        ],
        150.0,
    )
    .await;
    let (ctx, mut api) = context();
    let mut imc = cluster();
    imc.spec.autoscaling.enabled = true;
    imc.spec.autoscaling.prometheus_url = format!("http://{prom}");
    imc.spec.autoscaling.scale_down_stabilization_seconds = 0;
    let expected = imc.clone();
    let server = tokio::spawn(async move {
        let gw = deployment("chat-gateway", "ghcr.io/example/im-gateway:0.1.0", 4, 4);
        api.expect(Method::GET, GATEWAY).await.reply(200, &gw);
        let lg = deployment("chat-logic", "ghcr.io/example/im-logic:0.1.0", 2, 2);
        api.expect(Method::GET, LOGIC).await.reply(200, &lg);
        let list = api.expect(Method::GET, "/api/v1/namespaces/im/pods?").await;
        assert!(list.uri.contains("labelSelector="), "{}", list.uri);
        list.reply(
            200,
            &pod_list(&["gw-busy", "gw-idle", "gw-mid", "gw-empty"]),
        );
        let mut costs = Vec::new();
        for _ in 0..4 {
            let call = api
                .expect(Method::PATCH, "/api/v1/namespaces/im/pods/")
                .await;
            let pod = call.uri.trim_start_matches("/api/v1/namespaces/im/pods/");
            let pod = pod.split('?').next().unwrap_or_default().to_string();
            let cost =
                call.body["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
            costs.push((pod, cost));
            call.echo();
        }
        assert_eq!(
            costs,
            [
                ("gw-empty", "-2"),
                ("gw-idle", "-1"),
                ("gw-mid", "400"),
                ("gw-busy", "900")
            ]
            .map(|(p, c)| (p.to_string(), c.to_string()))
        );
        let applied = api.expect_children_applied().await;
        // 1305 connections / 5000 per pod -> 1, bounded by min 2.
        assert_eq!(applied["Deployment/chat-gateway"]["spec"]["replicas"], 2);
        // Ready (4 ready >= 2 wanted) comes first, then the scaling.
        assert_eq!(api.expect_event().await["reason"], "Ready");
        let event = api.expect_event().await;
        assert_eq!(event["reason"], "Scaled");
        assert!(
            event["note"]
                .as_str()
                .unwrap_or_default()
                .starts_with("gateway 4 -> 2")
        );
        let status = api.expect_status(&expected).await;
        assert_eq!(status.last_scaling.map(|d| d.to), Some(2));
        api.expect_silence().await;
    });
    reconcile(Arc::new(imc), ctx).await.expect("reconcile");
    finish(server).await;
}

#[tokio::test]
async fn unreachable_prometheus_holds_replicas_and_reports_degraded() {
    let (ctx, mut api) = context();
    let mut imc = cluster();
    imc.spec.autoscaling.enabled = true;
    // A port nothing listens on (bound then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    imc.spec.autoscaling.prometheus_url = format!("http://127.0.0.1:{port}");
    let expected = imc.clone();
    let server = tokio::spawn(async move {
        let gw = deployment("chat-gateway", "ghcr.io/example/im-gateway:0.1.0", 3, 3);
        api.expect(Method::GET, GATEWAY).await.reply(200, &gw);
        let lg = deployment("chat-logic", "ghcr.io/example/im-logic:0.1.0", 2, 2);
        api.expect(Method::GET, LOGIC).await.reply(200, &lg);
        let applied = api.expect_children_applied().await;
        assert_eq!(applied["Deployment/chat-gateway"]["spec"]["replicas"], 3);
        let event = api.expect_event().await;
        assert_eq!(event["reason"], "MetricsUnavailable");
        let _ready = api.expect_event().await;
        let status = api.expect_status(&expected).await;
        assert!(status.is_true(condition_type::DEGRADED));
        assert!(status.last_scaling.is_none());
        api.expect_silence().await;
    });
    reconcile(Arc::new(imc), ctx).await.expect("reconcile");
    finish(server).await;
}

#[tokio::test]
async fn a_child_deleted_by_hand_is_applied_again() {
    let (ctx, mut api) = context();
    let imc = cluster();
    let expected = imc.clone();
    let server = tokio::spawn(async move {
        // The gateway Deployment is there; someone deleted the logic one.
        let gw = deployment("chat-gateway", "ghcr.io/example/im-gateway:0.1.0", 2, 2);
        api.expect(Method::GET, GATEWAY).await.reply(200, &gw);
        api.expect(Method::GET, LOGIC).await.fail(404, "NotFound");
        let applied = api.expect_children_applied().await;
        let lg = &applied["Deployment/chat-logic"];
        assert_eq!(
            lg["spec"]["template"]["spec"]["containers"][0]["image"],
            "ghcr.io/example/im-logic:0.1.0"
        );
        assert_eq!(lg["metadata"]["ownerReferences"][0]["kind"], "ImCluster");
        let status = api.expect_status(&expected).await;
        assert_eq!(status.gateways_ready.as_deref(), Some("2/2"));
        assert_eq!(status.logic_ready.as_deref(), Some("0/2"));
        assert!(status.is_true(condition_type::PROGRESSING));
        api.expect_silence().await;
    });
    reconcile(Arc::new(imc), ctx).await.expect("reconcile");
    finish(server).await;
}
