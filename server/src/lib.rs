//! Single-node mode: the gateway and the logic tier in one process, on
//! SQLite, with the in-process route table; no Redis, no Postgres.
//!
//! Logic pushes straight into the local gateway and the gateway calls logic
//! directly (no gRPC); everything else is the cluster code unchanged.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use async_trait::async_trait;
use clap::Args;
use im_common::admin::{Readiness, admin_router};
use im_common::api::{ApiError, GatewayApi};
use im_common::route::{MemoryRouteTable, RedisRouteTable};
use im_common::shutdown::CancellationToken;
use im_gateway::cli::GatewayArgs;
use im_gateway::{Gateway, tcp, ws};
use im_logic::c2s::C2sSink;
use im_logic::cli::LogicArgs;
use im_logic::store::Store;
use im_logic::{LogicService, rest, s2c};
use im_proto::logic::{KickReply, KickRequest, PushBatch, PushReply};

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Where the SQLite database and the token secret live.
    #[arg(long, env = "IM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// REST API, WebSocket (/ws), /metrics, /healthz, /readyz.
    #[arg(long, env = "IM_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Override the database (default: sqlite in the data directory).
    #[arg(long, env = "IM_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Token secret (default: generated once into the data directory).
    #[arg(long, env = "IM_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Redis for c2s upstream messages (Redis Streams); without it C2S_SEND
    /// answers UNAVAILABLE. Routes stay in process either way.
    #[arg(long, env = "IM_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key c2s writes.
    #[arg(long, env = "IM_REDIS_PREFIX", default_value = "im:")]
    pub redis_prefix: String,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub logic: LogicArgs,
}

/// The local gateway, set once it exists (logic is built first).
#[derive(Default)]
struct LocalGateway(OnceLock<Arc<Gateway>>);

impl LocalGateway {
    fn get(&self) -> Result<&Arc<Gateway>, ApiError> {
        self.0
            .get()
            .ok_or_else(|| ApiError::unavailable("gateway is starting"))
    }
}

#[async_trait]
impl GatewayApi for LocalGateway {
    async fn push(&self, _gate_addr: &str, batch: PushBatch) -> Result<PushReply, ApiError> {
        Ok(self.get()?.push_local(batch))
    }

    async fn kick(&self, _gate_addr: &str, req: KickRequest) -> Result<KickReply, ApiError> {
        Ok(self.get()?.kick_local(req))
    }
}

/// Addresses a running server listens on.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub tcp: SocketAddr,
    pub http: SocketAddr,
}

fn jwt_secret(args: &ServerArgs) -> anyhow::Result<String> {
    if let Some(s) = &args.jwt_secret {
        return Ok(s.clone());
    }
    let path = args.data_dir.join("jwt.secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s.trim().to_string());
    }
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    std::fs::write(&path, &secret)
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(secret)
}

/// Starts everything; returns once listening. `shutdown` stops it: the
/// returned handle resolves after connections have drained.
pub async fn start(
    args: ServerArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<(Bound, tokio::task::JoinHandle<()>)> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("failed to create {}", args.data_dir.display()))?;
    let db_url = args.database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=rwc",
            args.data_dir.join("im.db").display()
        )
    });
    let tokens = args
        .logic
        .token_keys(&jwt_secret(&args)?)
        .map_err(anyhow::Error::msg)?;
    let store = Store::connect(&db_url, args.logic.db_max_connections.min(8))
        .await
        .with_context(|| format!("failed to open {db_url}"))?
        .with_inline_receipts(args.logic.inline_receipts);
    store.migrate().await.context("failed to run migrations")?;
    let sqlite = store.backend() == im_logic::store::Backend::Sqlite;

    let routes = Arc::new(MemoryRouteTable::new());
    let local = Arc::new(LocalGateway::default());
    let svc = LogicService::new(
        store,
        tokens,
        routes.clone(),
        local.clone(),
        args.logic.config(args.gateway.max_body, sqlite),
    );
    let svc = match &args.redis_url {
        Some(url) => {
            let redis = RedisRouteTable::connect(url, &args.redis_prefix)
                .await
                .with_context(|| format!("failed to connect to Redis at {url}"))?;
            svc.with_c2s(C2sSink::new(redis.connection(), &args.redis_prefix))
        }
        None => svc,
    };
    let gw_cfg = args
        .gateway
        .config("local", "local")
        .map_err(anyhow::Error::msg)?;
    let readiness = Readiness::default();
    let gw_stop = CancellationToken::new();
    let gw = Gateway::new(
        gw_cfg,
        Arc::new(im_gateway::session::DetachedReplies(svc.clone())),
        routes,
        gw_stop.clone(),
        readiness.clone(),
    );
    let _ = local.0.set(gw.clone());

    let tcp = im_gateway::tcp::listen(args.gateway.tcp_addr, args.gateway.listen_backlog)
        .with_context(|| format!("failed to bind {}", args.gateway.tcp_addr))?;
    // WebSocket clients reconnect in storms too.
    let http = im_gateway::tcp::listen(args.http_addr, args.gateway.listen_backlog)
        .with_context(|| format!("failed to bind {}", args.http_addr))?;
    let bound = Bound {
        tcp: tcp.local_addr()?,
        http: http.local_addr()?,
    };
    let app = rest::router(svc.clone())
        .merge(s2c::router(svc))
        .merge(ws::router(gw.clone()))
        .merge(admin_router(readiness.clone()));
    let http_stop = CancellationToken::new();
    let hs = http_stop.clone();
    let http_task = tokio::spawn(async move {
        let _ = axum::serve(
            im_common::admin::without_nagle(http),
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { hs.cancelled().await })
        .await;
    });
    let tcp_task = tokio::spawn(tcp::serve(gw.clone(), tcp));
    let registration = tokio::spawn(gw.clone().run_registration());
    tokio::spawn(gw.clone().run_retransmit());
    tokio::spawn(gw.clone().run_idle_sweep());
    readiness.set(true);

    let done = tokio::spawn(async move {
        shutdown.cancelled().await;
        gw_stop.cancel();
        let _ = tcp_task.await;
        let _ = registration.await;
        gw.drain().await;
        http_stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), http_task).await;
    });
    Ok((bound, done))
}
