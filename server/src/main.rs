//! `im-server`: everything on one machine, no Redis or Postgres needed.
use clap::Parser;
use im_common::shutdown::{CancellationToken, wait_for_signal};
use im_server::ServerArgs;

#[derive(Debug, Parser)]
#[command(
    name = "im-server",
    version = im_common::version!(),
    about = "IM server, single-node mode (SQLite, in-process routes)"
)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    /// Log as JSON lines.
    #[arg(long, env = "IM_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    im_common::telemetry::init_tracing(cli.log_json);
    // A newcomer pressing Ctrl-C wants a quick exit; clusters set their own window.
    if std::env::var_os("IM_DRAIN_SECS").is_none()
        && !std::env::args().any(|a| a.starts_with("--drain-secs"))
    {
        cli.server.gateway.drain_secs = 1;
    }
    let build = im_common::build!("im-server");
    build.register();
    tracing::info!(version = build.version, commit = build.commit, data_dir = %cli.server.data_dir.display(), "im-server starting");
    let shutdown = CancellationToken::new();
    let (bound, done) = im_server::start(cli.server, shutdown.clone()).await?;
    tracing::info!(
        tcp = %bound.tcp,
        http = %bound.http,
        "im-server ready: clients connect over TCP at {} or WebSocket at ws://{}/ws; REST at http://{}/api/v1",
        bound.tcp, bound.http, bound.http
    );
    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    let _ = done.await;
    Ok(())
}
