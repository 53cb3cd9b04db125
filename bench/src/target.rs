//! The system under test: start `im-server` (single node) or `im-gateway` ×G +
//! `im-logic` ×L on a fresh Postgres database and Redis key prefix (cluster),
//! or describe processes already running. Children are killed on drop.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use im_client::Endpoint;
use im_tests::{Proc, start_gateway, start_logic, start_single, unique};

use crate::sys::Procs;

/// Single node or cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Cluster,
    Single,
}

/// How to reach (or start) the servers.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Cluster (im-gateway + im-logic + Redis + Postgres) or single node (im-server on SQLite).
    #[arg(long, value_enum, default_value_t = Mode::Cluster)]
    pub mode: Mode,
    /// Gateways to start (cluster mode).
    #[arg(long, default_value_t = 2)]
    pub gateways: usize,
    /// Logic processes to start (cluster mode).
    #[arg(long, default_value_t = 1)]
    pub logics: usize,
    /// Where the server binaries are (default: next to im-bench, i.e. target/release).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Postgres server URL without a database (each run creates a fresh one).
    #[arg(
        long,
        env = "IM_BENCH_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub pg_base: String,
    #[arg(
        long,
        env = "IM_BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Extra environment for started server processes, `KEY=VALUE` (repeatable).
    #[arg(long = "server-env")]
    pub server_env: Vec<String>,
    /// Use running gateways at these TCP addresses instead of starting any (repeatable).
    #[arg(long = "gateway")]
    pub gateway: Vec<String>,
    /// REST base of a running logic / im-server, e.g. http://127.0.0.1:8080 (repeatable).
    #[arg(long = "api")]
    pub api: Vec<String>,
    /// Database URL of the running servers (users are created there directly).
    #[arg(long)]
    pub database_url: Option<String>,
    /// JWT secret of the running servers (tokens are issued with it).
    #[arg(long, env = "IM_BENCH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Pids of running gateways, for RSS and CPU (repeatable).
    #[arg(long = "gateway-pid")]
    pub gateway_pid: Vec<u32>,
    /// Pids of running logic processes, for CPU (repeatable).
    #[arg(long = "logic-pid")]
    pub logic_pid: Vec<u32>,
    /// `/metrics` URLs of running processes (repeatable).
    #[arg(long = "metrics-url")]
    pub metrics_url: Vec<String>,
}

/// The servers of one run.
pub struct Target {
    pub mode: Mode,
    pub gateway_tcp: Vec<String>,
    pub gateway_pids: Vec<u32>,
    pub logic_pids: Vec<u32>,
    /// REST bases, `http://host:port`.
    pub api: Vec<String>,
    pub metrics_urls: Vec<String>,
    pub database_url: String,
    pub jwt_secret: String,
    /// Whether this run started the processes (and may restart them).
    pub started: bool,
    pub procs: Vec<Proc>,
    /// The Redis URL and key prefix of the servers this run started.
    redis: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

fn bin_dir(args: &TargetArgs) -> anyhow::Result<PathBuf> {
    if let Some(d) = &args.bin_dir {
        return Ok(d.clone());
    }
    let exe = std::env::current_exe()?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("cannot locate the directory of im-bench")
}

fn bin(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p im-bench -p im-server -p im-logic -p im-gateway`",
            p.display()
        );
    }
    Ok(p)
}

fn parse_env(list: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    list.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--server-env {kv}: expected KEY=VALUE"))
        })
        .collect()
}

/// How long a server may take to stop after SIGTERM before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(15);

/// How long a started server may take to report ready.
const STARTUP: Duration = Duration::from_secs(60);

impl Target {
    /// Stops the processes this run started (SIGTERM, so that logic
    /// closes its database connections and the gateways drain; SIGKILL for
    /// any still running after [`STOP_WAIT`]) and drops the database it
    /// created (left behind, a run's tables are vacuumed and analysed by
    /// Postgres during the next run, on the same two cores) and its Redis
    /// keys (the routes of the connections still open when the gateways
    /// were stopped, ~1,000 a run, would stay in the shared Redis).
    pub async fn stop(mut self) {
        for p in &self.procs {
            if let Err(e) = p.terminate() {
                eprintln!("could not stop a server gracefully: {e:#}");
            }
        }
        for p in &mut self.procs {
            if !p.wait_exit(STOP_WAIT).await {
                eprintln!("a server did not stop within {STOP_WAIT:?}; killing it");
            }
        }
        self.procs.clear();
        if self.started && self.mode == Mode::Cluster {
            use sqlx::migrate::MigrateDatabase;
            sqlx::any::install_default_drivers();
            if let Err(e) = sqlx::Any::force_drop_database(&self.database_url).await {
                eprintln!("could not drop the run's database: {e}");
            }
        }
        if let Some((url, prefix)) = &self.redis
            && let Err(e) = im_tests::extra::redis_cleanup_at(url, prefix).await
        {
            eprintln!("could not delete the run's Redis keys: {e:#}");
        }
    }

    /// Starts the servers (or describes running ones when `--gateway` is given).
    pub async fn start(args: &TargetArgs) -> anyhow::Result<Target> {
        if !args.gateway.is_empty() {
            return Self::existing(args);
        }
        let dir = bin_dir(args)?;
        let extra = parse_env(&args.server_env)?;
        match args.mode {
            Mode::Single => Self::start_single(&dir, &extra).await,
            Mode::Cluster => Self::start_cluster(args, &dir, &extra).await,
        }
    }

    fn existing(args: &TargetArgs) -> anyhow::Result<Target> {
        let (Some(db), Some(secret)) = (&args.database_url, &args.jwt_secret) else {
            bail!(
                "with --gateway, also give --database-url and --jwt-secret (users and tokens are made there)"
            );
        };
        if args.api.is_empty() {
            bail!("with --gateway, also give --api (REST base of logic or im-server)");
        }
        Ok(Target {
            mode: args.mode,
            gateway_tcp: args.gateway.clone(),
            gateway_pids: args.gateway_pid.clone(),
            logic_pids: args.logic_pid.clone(),
            api: args.api.clone(),
            metrics_urls: args.metrics_url.clone(),
            database_url: db.clone(),
            jwt_secret: secret.clone(),
            started: false,
            procs: Vec::new(),
            redis: None,
            _dir: None,
        })
    }

    async fn start_single(dir: &Path, extra: &[(String, String)]) -> anyhow::Result<Target> {
        let data = tempfile::Builder::new().prefix("im-bench-").tempdir()?;
        let secret = format!("bench-secret-{}", unique("jwt"));
        let (proc, tcp, http) = start_single(
            bin(dir, "im-server")?,
            data.path(),
            &secret,
            &[],
            extra,
            STARTUP,
        )
        .await?;
        let pid = proc.pid();
        Ok(Target {
            mode: Mode::Single,
            gateway_tcp: vec![tcp],
            gateway_pids: vec![pid],
            logic_pids: vec![pid],
            api: vec![format!("http://{http}")],
            metrics_urls: vec![format!("http://{http}/metrics")],
            database_url: format!("sqlite://{}?mode=rwc", data.path().join("im.db").display()),
            jwt_secret: secret,
            started: true,
            procs: vec![proc],
            redis: None,
            _dir: Some(data),
        })
    }

    async fn start_cluster(
        args: &TargetArgs,
        dir: &Path,
        extra: &[(String, String)],
    ) -> anyhow::Result<Target> {
        let database_url = format!("{}/{}", args.pg_base, unique("im_bench"));
        let prefix = format!("{}:", unique("imbench"));
        let redis = Some((args.redis_url.clone(), prefix.clone()));
        let secret = format!("bench-secret-{}", unique("jwt"));
        let mut common = vec![
            ("IM_DATABASE_URL".to_string(), database_url.clone()),
            ("IM_REDIS_URL".to_string(), args.redis_url.clone()),
            ("IM_REDIS_PREFIX".to_string(), prefix),
            ("IM_JWT_SECRET".to_string(), secret.clone()),
            // A fresh database and no older logic process: DELIVERED
            // receipts are stored inline (`--server-env
            // IM_INLINE_RECEIPTS=false` for the default).
            ("IM_INLINE_RECEIPTS".to_string(), "true".to_string()),
        ];
        common.extend(extra.iter().cloned());
        let status = Command::new(bin(dir, "im-logic")?)
            .arg("migrate")
            .envs(common.iter().cloned())
            .env("RUST_LOG", "warn")
            .status()
            .context("failed to run im-logic migrate")?;
        if !status.success() {
            bail!(
                "im-logic migrate failed (is Postgres running at {}?)",
                args.pg_base
            );
        }
        let mut t = Target {
            mode: Mode::Cluster,
            gateway_tcp: Vec::new(),
            gateway_pids: Vec::new(),
            logic_pids: Vec::new(),
            api: Vec::new(),
            metrics_urls: Vec::new(),
            database_url,
            jwt_secret: secret,
            started: true,
            procs: Vec::new(),
            redis,
            _dir: None,
        };
        let mut grpc_addrs = Vec::new();
        for i in 0..args.logics.max(1) {
            let (p, http, grpc) = start_logic(
                &format!("logic-{i}"),
                bin(dir, "im-logic")?,
                &common,
                STARTUP,
            )
            .await?;
            t.logic_pids.push(p.pid());
            t.procs.push(p);
            t.api.push(format!("http://{http}"));
            t.metrics_urls.push(format!("http://{http}/metrics"));
            grpc_addrs.push(grpc);
        }
        for i in 0..args.gateways.max(1) {
            let gate_id = format!("bench-gw-{i}");
            let (p, tcp, http) = start_gateway(
                bin(dir, "im-gateway")?,
                &common,
                &gate_id,
                &grpc_addrs,
                STARTUP,
            )
            .await?;
            t.gateway_pids.push(p.pid());
            t.procs.push(p);
            t.gateway_tcp.push(tcp);
            t.metrics_urls.push(format!("http://{http}/metrics"));
        }
        Ok(t)
    }

    pub fn endpoint(&self, i: usize) -> Endpoint {
        Endpoint::Tcp(self.gateway_tcp[i % self.gateway_tcp.len()].clone())
    }

    pub fn api(&self, i: usize) -> anyhow::Result<im_client::Api> {
        Ok(im_client::Api::new(&self.api[i % self.api.len()])?)
    }

    /// Fails if a process this run started has died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if !p.is_running() {
                bail!(
                    "server process {} (pid {}) died during the run",
                    p.name,
                    p.pid()
                );
            }
        }
        Ok(())
    }

    /// Process groups for CPU accounting.
    pub fn cpu_groups(&self) -> Vec<(String, Procs)> {
        let mut g = Vec::new();
        match self.mode {
            Mode::Single => g.push((
                "im-server".to_string(),
                Procs::Pids(self.gateway_pids.clone()),
            )),
            Mode::Cluster => {
                for (i, p) in self.gateway_pids.iter().enumerate() {
                    g.push((format!("im-gateway-{i}"), Procs::Pids(vec![*p])));
                }
                for (i, p) in self.logic_pids.iter().enumerate() {
                    g.push((format!("im-logic-{i}"), Procs::Pids(vec![*p])));
                }
                g.push(("postgres (all)".to_string(), Procs::Named("postgres")));
                g.push(("redis-server".to_string(), Procs::Named("redis-server")));
            }
        }
        g.push((
            "im-bench".to_string(),
            Procs::Pids(vec![std::process::id()]),
        ));
        g
    }

    /// Summaries of every process's `/metrics`.
    pub async fn metrics(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for url in &self.metrics_urls {
            let v = match crate::metrics::scrape(url).await {
                Ok(text) => crate::metrics::summarize(&text),
                Err(e) => serde_json::json!({"error": e.to_string()}),
            };
            out.insert(url.clone(), v);
        }
        serde_json::Value::Object(out)
    }
}
