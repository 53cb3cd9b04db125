//! `im-gateway`: the connection tier in cluster mode.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use im_common::admin::{Readiness, admin_router};
use im_common::api::grpc_message_limit;
use im_common::route::RedisRouteTable;
use im_common::shutdown::{CancellationToken, wait_for_signal};
use im_gateway::cli::GatewayArgs;
use im_gateway::grpc::{GatewayGrpc, GrpcLogic};
use im_gateway::{Gateway, tcp, ws};
use im_proto::logic::gateway_server::GatewayServer;

#[derive(Debug, Parser)]
#[command(name = "im-gateway", version = im_common::version!(), about = "IM gateway (cluster mode)")]
struct Cli {
    /// WebSocket (/ws), /metrics, /healthz, /readyz.
    #[arg(long, env = "IM_HTTP_ADDR", default_value = "0.0.0.0:7001")]
    http_addr: SocketAddr,
    /// gRPC for logic pushes.
    #[arg(long, env = "IM_GRPC_ADDR", default_value = "0.0.0.0:9100")]
    grpc_addr: SocketAddr,
    /// host:port logic uses to reach this gateway's gRPC (default: the gRPC
    /// address, with 0.0.0.0 replaced by 127.0.0.1).
    #[arg(long, env = "IM_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,
    /// Unique id of this gateway (default: random).
    #[arg(long, env = "IM_GATE_ID")]
    gate_id: Option<String>,
    /// Logic gRPC endpoints, comma-separated.
    #[arg(
        long,
        env = "IM_LOGIC_ADDRS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:9000"
    )]
    logic_addrs: Vec<String>,
    /// Seconds between DNS lookups of the logic addresses; the gateway keeps
    /// a stream to every address they resolve to (point it at a headless
    /// Service). 0: connect to the addresses as given.
    #[arg(long, env = "IM_LOGIC_RESOLVE_SECS", default_value_t = 5)]
    logic_resolve_secs: u64,
    #[arg(long, env = "IM_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long, env = "IM_REDIS_PREFIX", default_value = "im:")]
    redis_prefix: String,
    #[command(flatten)]
    gateway: GatewayArgs,
    #[arg(long, env = "IM_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    im_common::telemetry::init_tracing(cli.log_json);
    let gate_id = cli
        .gate_id
        .clone()
        .unwrap_or_else(|| format!("gw-{:08x}", rand::random::<u32>()));
    let advertise = cli
        .advertise_addr
        .clone()
        .unwrap_or_else(|| cli.grpc_addr.to_string().replace("0.0.0.0", "127.0.0.1"));
    let cfg = cli
        .gateway
        .config(&gate_id, &advertise)
        .map_err(anyhow::Error::msg)?;
    let build = im_common::build!("im-gateway");
    build.register();
    tracing::info!(version = build.version, commit = build.commit, gate = %gate_id, "im-gateway starting");

    let routes = Arc::new(
        RedisRouteTable::connect(&cli.redis_url, &cli.redis_prefix)
            .await
            .context("failed to connect to Redis")?,
    );
    let logic = Arc::new(
        GrpcLogic::new(&cli.logic_addrs, grpc_message_limit(cli.gateway.max_body))
            .map_err(anyhow::Error::msg)?,
    );
    if cli.logic_resolve_secs > 0 {
        logic.refresh().await;
        logic.spawn_discovery(Duration::from_secs(cli.logic_resolve_secs));
    }
    tracing::info!(endpoints = ?logic.endpoints(), "logic endpoints");
    let readiness = Readiness::default();
    let shutdown = CancellationToken::new();
    let gw = Gateway::new(cfg, logic, routes, shutdown.clone(), readiness.clone());

    let tcp = im_gateway::tcp::listen(cli.gateway.tcp_addr, cli.gateway.listen_backlog)
        .with_context(|| format!("failed to bind {}", cli.gateway.tcp_addr))?;
    // WebSocket clients reconnect in storms too.
    let http = im_gateway::tcp::listen(cli.http_addr, cli.gateway.listen_backlog)
        .with_context(|| format!("failed to bind {}", cli.http_addr))?;
    let servers_stop = CancellationToken::new();
    let app = ws::router(gw.clone()).merge(admin_router(readiness.clone()));
    let http_stop = servers_stop.clone();
    let http_task = tokio::spawn(async move {
        axum::serve(
            im_common::admin::without_nagle(http),
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { http_stop.cancelled().await })
        .await
    });
    let grpc_stop = servers_stop.clone();
    // Bound before the gateway registers and reports ready: with the push
    // port taken, the server task used to fail on its own while the gateway
    // stayed registered and ready, and every push to it failed.
    let grpc = tonic::transport::server::TcpIncoming::bind(cli.grpc_addr)
        .with_context(|| format!("failed to bind {}", cli.grpc_addr))?
        .with_nodelay(Some(true));
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                GatewayServer::new(GatewayGrpc::new(gw.clone(), servers_stop.clone()))
                    .max_decoding_message_size(grpc_message_limit(cli.gateway.max_body)),
            )
            .serve_with_incoming_shutdown(grpc, async move { grpc_stop.cancelled().await }),
    );
    let tcp_task = tokio::spawn(tcp::serve(gw.clone(), tcp));
    let registration = tokio::spawn(gw.clone().run_registration());
    tokio::spawn(gw.clone().run_retransmit());
    tokio::spawn(gw.clone().run_idle_sweep());
    readiness.set(true);
    tracing::info!(tcp = %cli.gateway.tcp_addr, http = %cli.http_addr, grpc = %cli.grpc_addr, advertise = %advertise, "im-gateway ready");

    wait_for_signal().await;
    tracing::info!("shutting down: draining connections");
    shutdown.cancel();
    let _ = tcp_task.await;
    let _ = registration.await;
    gw.drain().await;
    servers_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = http_task.await;
        let _ = grpc_task.await;
    })
    .await;
    Ok(())
}
