//! `im-logic`: the logic tier in cluster mode (Postgres + Redis).
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use im_common::admin::{Readiness, admin_router};
use im_common::route::RedisRouteTable;
use im_common::shutdown::{CancellationToken, wait_for_signal};
use im_logic::c2s::C2sSink;
use im_logic::cli::LogicArgs;
use im_logic::grpc::{GatewayPool, LogicGrpc};
use im_logic::store::{Backend, Store};
use im_logic::{LogicService, rest, s2c};
use im_proto::logic::logic_server::LogicServer;

/// mimalloc rather than glibc's allocator: glibc's malloc and free were
/// ~3 % of the machine's CPU at 2,000 msg/s, and logic took less CPU with it
/// (docs/benchmarks.md). Not in the gateway: an idle connection there
/// cost 2,533 bytes of RSS with it, against 1,825 without.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "im-logic", version = im_common::version!(), about = "IM logic tier (cluster mode)")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// REST API, /metrics, /healthz, /readyz.
    #[arg(long, env = "IM_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// gRPC for gateways.
    #[arg(long, env = "IM_GRPC_ADDR", default_value = "0.0.0.0:9000")]
    grpc_addr: SocketAddr,
    /// postgres://... (or sqlite:... for experiments)
    #[arg(long, env = "IM_DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "IM_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Prefix of every Redis key (lets clusters and tests share a Redis).
    #[arg(long, env = "IM_REDIS_PREFIX", default_value = "im:")]
    redis_prefix: String,
    /// HS256 secret shared by every logic pod (at least 16 bytes).
    #[arg(long, env = "IM_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Largest message body in bytes.
    #[arg(long, env = "IM_MAX_BODY", default_value_t = 64 * 1024)]
    max_body: usize,
    #[command(flatten)]
    logic: LogicArgs,
    /// Log as JSON lines.
    #[arg(long, env = "IM_LOG_JSON")]
    log_json: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run database migrations and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    im_common::telemetry::init_tracing(cli.log_json);
    let build = im_common::build!("im-logic");
    build.register();
    tracing::info!(
        version = build.version,
        commit = build.commit,
        "im-logic starting"
    );
    let tokens = cli
        .logic
        .token_keys(&cli.jwt_secret)
        .map_err(anyhow::Error::msg)?;

    let store = Store::connect(&cli.database_url, cli.logic.db_max_connections)
        .await
        .context("failed to connect to the database")?
        .with_inline_receipts(cli.logic.inline_receipts);
    store.migrate().await.context("failed to run migrations")?;
    if matches!(cli.command, Some(Cmd::Migrate)) {
        tracing::info!("migrations applied");
        return Ok(());
    }
    let routes = Arc::new(
        RedisRouteTable::connect(&cli.redis_url, &cli.redis_prefix)
            .await
            .context("failed to connect to Redis")?,
    );
    let c2s = C2sSink::new(routes.connection(), &cli.redis_prefix);
    let cfg = cli
        .logic
        .config(cli.max_body, store.backend() == Backend::Sqlite);
    let svc =
        LogicService::new(store, tokens, routes, Arc::new(GatewayPool::new()), cfg).with_c2s(c2s);

    let readiness = Readiness::default();
    let stop = CancellationToken::new();
    let app = rest::router(svc.clone())
        .merge(s2c::router(svc.clone()))
        .merge(admin_router(readiness.clone()));
    let http = tokio::net::TcpListener::bind(cli.http_addr)
        .await
        .with_context(|| format!("failed to bind {}", cli.http_addr))?;
    let http_stop = stop.clone();
    let http_task = tokio::spawn(async move {
        axum::serve(im_common::admin::without_nagle(http), app)
            .with_graceful_shutdown(async move { http_stop.cancelled().await })
            .await
    });
    let grpc_stop = stop.clone();
    // Bound here, not inside the server task: a taken port must fail the
    // start, not leave a ready process that no gateway can reach.
    let grpc = tonic::transport::server::TcpIncoming::bind(cli.grpc_addr)
        .with_context(|| format!("failed to bind {}", cli.grpc_addr))?
        .with_nodelay(Some(true));
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                LogicServer::new(LogicGrpc::new(svc))
                    .max_decoding_message_size(im_common::api::grpc_message_limit(cli.max_body)),
            )
            .serve_with_incoming_shutdown(grpc, async move { grpc_stop.cancelled().await }),
    );
    readiness.set(true);
    tracing::info!(http = %cli.http_addr, grpc = %cli.grpc_addr, "im-logic ready");

    wait_for_signal().await;
    tracing::info!("shutting down");
    readiness.set(false);
    stop.cancel();
    let _ = http_task.await;
    let _ = grpc_task.await;
    Ok(())
}
