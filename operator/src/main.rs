//! The `im-operator` binary: parses config, starts tracing, serves `/metrics`, campaigns
//! for the Lease, and runs the controller while leading. Exits on SIGTERM/Ctrl-C
//! (gracefully) or with an error when leadership is lost.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use im_operator::{
    autoscale::prometheus::PromClient,
    controller,
    leader::{LeaseConfig, LeaseLock},
    metrics::Metrics,
    reconcile::Context,
};
use kube::{
    Api, Client,
    runtime::events::{Recorder, Reporter},
};
use tokio::sync::watch;

/// Kubernetes operator for ImCluster resources.
#[derive(Parser, Debug)]
#[command(version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("IM_COMMIT"), ")"), about)]
struct Args {
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "IM_OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Campaign for a Lease before reconciling (disable only with a single replica).
    #[arg(long, env = "IM_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "IM_OPERATOR_LEASE_NAME", default_value = "im-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Timeout of one Prometheus query, in seconds.
    #[arg(long, env = "IM_OPERATOR_PROMETHEUS_TIMEOUT", default_value_t = 5)]
    prometheus_timeout: u64,
    /// Log as JSON lines.
    #[arg(long, env = "IM_OPERATOR_LOG_JSON")]
    log_json: bool,
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_json);
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("failed to install the rustls crypto provider"))?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        ?args,
        "starting im-operator"
    );

    let client = Client::try_default()
        .await
        .context("failed to create a Kubernetes client")?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("im-operator-{}", std::process::id()));
    let metrics = Metrics::new()?;
    let prom = PromClient::new(Duration::from_secs(args.prometheus_timeout))
        .context("failed to build the Prometheus client")?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "im-operator".into(),
            instance: Some(identity.clone()),
        },
    );
    let ctx = Arc::new(Context::new(
        client.clone(),
        recorder,
        metrics.clone(),
        prom,
    ));

    // One shutdown signal, fanned out to the HTTP server, the lease loop and the controller.
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        shutdown_tx.send_replace(true);
    });
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let http = tokio::spawn(im_operator::http::serve(
        args.metrics_addr,
        metrics,
        wait(shutdown_rx.clone()),
    ));

    let (leading_tx, mut leading_rx) = watch::channel(!args.leader_election);
    let lease_task = args.leader_election.then(|| {
        let lock = LeaseLock::new(
            Api::namespaced(client.clone(), &args.lease_namespace),
            LeaseConfig {
                name: args.lease_name.clone(),
                identity: identity.clone(),
                duration: Duration::from_secs(15),
                renew_every: Duration::from_secs(5),
            },
        );
        let rx = shutdown_rx.clone();
        tokio::spawn(async move { lock.run(leading_tx, rx).await })
    });

    let mut shutdown_wait = shutdown_rx.clone();
    tokio::select! {
        _ = leading_rx.wait_for(|leading| *leading) => {}
        _ = shutdown_wait.wait_for(|stop| *stop) => {}
    }
    let mut lost_leadership = false;
    if !*shutdown_rx.borrow() {
        tracing::info!("leading: starting the controller");
        let mut leading = leading_rx.clone();
        let stop_rx = shutdown_rx.clone();
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<bool>();
        let stop = async move {
            let mut stop_rx = stop_rx;
            let lost = tokio::select! {
                _ = leading.wait_for(|l| !*l) => true,
                _ = stop_rx.wait_for(|s| *s) => false,
            };
            let _ = lost_tx.send(lost);
        };
        controller::run(ctx, stop).await;
        lost_leadership = lost_rx.await.unwrap_or(false);
    }

    if let Some(task) = lease_task {
        if lost_leadership {
            task.abort();
        } else {
            let _ = task.await;
        }
    }
    if lost_leadership {
        anyhow::bail!("lost leadership; exiting so a fresh replica can campaign");
    }
    http.await
        .context("metrics server task failed")?
        .context("metrics server failed")?;
    tracing::info!("stopped");
    Ok(())
}
