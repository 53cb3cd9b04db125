//! Runs a real Prometheus (`/usr/bin/prometheus`, Debian package `prometheus`) scraping a
//! tiny exporter on 127.0.0.1, then checks the operator's queries and its decision.
//! Skips (with a message) only when no prometheus binary is installed.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use im_crds::sample_spec;
use im_operator::{
    autoscale::{self, prometheus::PromClient},
    build::DesiredReplicas,
};
use k8s_openapi::jiff::Timestamp;

/// Kills the Prometheus process when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn prometheus_binary() -> Option<PathBuf> {
    std::env::var_os("PROMETHEUS_BIN")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/bin/prometheus")))
        .filter(|p| p.exists())
}

/// An exporter with two gateway pods of 4500 connections each and a logic message
/// counter growing by 150 per second.
async fn start_exporter() -> SocketAddr {
    use axum::{Router, routing::get};
    let started = Instant::now();
    let app = Router::new().route(
        "/metrics",
        get(move || async move {
            let messages = (started.elapsed().as_secs_f64() * 150.0).floor();
            format!(
                "# TYPE im_gateway_connections gauge\n\
                 im_gateway_connections{{pod=\"chat-gateway-a\"}} 4500\n\
                 im_gateway_connections{{pod=\"chat-gateway-b\"}} 4500\n\
                 # TYPE im_logic_messages_total counter\n\
                 im_logic_messages_total{{kind=\"c2c\"}} {messages}\n"
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind exporter");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[tokio::test]
async fn operator_reads_a_real_prometheus_and_decides() {
    let Some(binary) = prometheus_binary() else {
        eprintln!("SKIPPED: no prometheus binary (apt-get install -y prometheus)");
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = start_exporter().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: im\n    static_configs:\n\
             \x20     - targets: ['{exporter}']\n\
             \x20       labels: {{imcluster: chat, namespace: im}}\n"
        ),
    )
    .expect("write config");
    let port = free_port();
    let child = Command::new(&binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let _guard = KillOnDrop(child);

    let base = format!("http://127.0.0.1:{port}");
    let prom = PromClient::new(Duration::from_secs(2)).expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        if let Ok(m) = prom.cluster_metrics(&base, "chat", "im").await
            && m.connections.is_some()
            && m.messages_per_second.is_some_and(|r| r > 0.0)
        {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus gave no answer within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    assert_eq!(metrics.connections, Some(9000.0));
    assert_eq!(metrics.connections_by_pod.len(), 2);
    assert_eq!(
        metrics.connections_by_pod.get("chat-gateway-a"),
        Some(&4500.0)
    );
    let rate = metrics.messages_per_second.expect("rate");
    // rate() over [1m] divides by the whole window, so it is low until a minute of
    // samples exists; it must be positive and never above the true 150/s (+ jitter).
    assert!(rate > 0.0 && rate <= 200.0, "message rate {rate}");
    let now = Timestamp::now();
    let seen = metrics.gateway_last_scrape.expect("scrape time");
    assert!((now.as_second() as f64 - seen).abs() < 30.0, "fresh scrape");
    // Another cluster's selector finds nothing.
    let other = prom
        .cluster_metrics(&base, "other", "im")
        .await
        .expect("query");
    assert_eq!(other.connections, None);

    let mut spec = sample_spec();
    spec.autoscaling.enabled = true;
    spec.autoscaling.target_connections_per_gateway = 1000;
    let plan = autoscale::plan(
        &spec,
        DesiredReplicas {
            gateway: 2,
            logic: 2,
        },
        &[],
        Some(&metrics),
        now,
    );
    // 9000 / 1000 = 9 pods wanted, +4 per period allowed; logic is far below target.
    assert_eq!(
        plan.replicas,
        DesiredReplicas {
            gateway: 6,
            logic: 2
        }
    );
}
