//! Harness for end-to-end tests: starts the real binaries (`im-server`,
//! `im-logic`, `im-gateway`) as processes against a real Redis and Postgres,
//! each test with its own database, Redis key prefix, ports and data dir.
//!
//! The binaries must be built first (`cargo build --workspace --bins`, which
//! the README's test command does).
#![forbid(unsafe_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use im_client::{Api, ChatClient, DeviceType, Endpoint};

pub use im_client;

pub mod burst;
pub mod services;
pub mod social;

pub mod extra;

/// Postgres server URL without a database (trust auth as `postgres`).
pub fn pg_base() -> String {
    std::env::var("IM_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn redis_url() -> String {
    std::env::var("IM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The commit the workspace's binaries name, found as their build script
/// (`common/build_commit.rs`) finds it: `IM_COMMIT` when set, else this
/// checkout's HEAD, else `unknown` (a tree without `.git`).
pub fn built_commit() -> String {
    if let Some(commit) = std::env::var("IM_COMMIT").ok().filter(|c| !c.is_empty()) {
        return commit;
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Path of a workspace binary next to the test executable's target dir.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/debug/deps/test-xxxx -> target/debug/
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .context("cannot locate the target directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Where started processes write their logs, see [`set_log_dir`].
static LOG_DIR: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Makes processes started from now on append their logs (stderr) to
/// `DIR/NAME.log`; `None` discards them. `IM_TEST_LOGS=1` shows them on
/// this process's stderr instead, whatever is set here.
pub fn set_log_dir(dir: Option<PathBuf>) {
    *LOG_DIR.lock().unwrap_or_else(|p| p.into_inner()) = dir;
}

fn log_for(name: &str) -> anyhow::Result<Stdio> {
    if std::env::var_os("IM_TEST_LOGS").is_some() {
        return Ok(Stdio::inherit());
    }
    let dir = LOG_DIR.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(dir) = dir else {
        return Ok(Stdio::null());
    };
    let path = dir.join(format!("{name}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    Ok(Stdio::from(file))
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    program: PathBuf,
}

impl Proc {
    pub fn spawn(
        name: &str,
        program: PathBuf,
        args: &[String],
        envs: &[(String, String)],
    ) -> anyhow::Result<Proc> {
        let child = Self::start(name, &program, args, envs)?;
        Ok(Proc {
            name: name.to_string(),
            child,
            args: args.to_vec(),
            envs: envs.to_vec(),
            program,
        })
    }

    fn start(
        name: &str,
        program: &PathBuf,
        args: &[String],
        envs: &[(String, String)],
    ) -> anyhow::Result<Child> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_for(name)?);
        // Tests send bursts far above a person's typing speed; the rate limit
        // has its own test, which sets it explicitly.
        cmd.env("IM_RATE_LIMIT", "0");
        // Most tests message strangers; the friends-only default has its own
        // tests (tests/tests/social_*.rs), which set it explicitly.
        cmd.env("IM_C2C_POLICY", "anyone");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        cmd.spawn()
            .with_context(|| format!("failed to start {}", program.display()))
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same command again (after [`Self::kill9`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.child = Self::start(&self.name, &self.program, &self.args, &self.envs)?;
        Ok(())
    }

    /// SIGTERM: ask for a graceful shutdown.
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal("TERM")
    }

    /// SIGSTOP: the process stops running; its sockets stay open and the
    /// kernel still takes what peers send, so they see no error.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// SIGCONT, after [`Self::freeze`].
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -{name} failed");
        }
        Ok(())
    }

    /// Waits up to `within` for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !self.is_running() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `url` answers 200.
pub async fn wait_http_ok(url: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if http_ok(url).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} did not become ready within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How to start one server process: its arguments and environment, and
/// the address whose `/readyz` says it is ready (`host:port`).
pub struct Launch {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub http: String,
}

/// A fresh `127.0.0.1:port` (see [`free_port`]).
pub fn local_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Starts `program` as `launch` says and waits until it is ready. A port
/// from [`free_port`] was free a moment ago, not now: when another process
/// takes one first, the server exits at start (every server binds its ports
/// before it reports ready), and this starts it again on the fresh ports
/// of another `launch()`, up to three times. Returns the process and what
/// that `launch()` returned beside the [`Launch`] (its addresses).
pub async fn spawn_ready<T>(
    name: &str,
    program: PathBuf,
    within: Duration,
    mut launch: impl FnMut() -> (Launch, T),
) -> anyhow::Result<(Proc, T)> {
    let mut exits = 0;
    loop {
        let (l, extra) = launch();
        let mut proc = Proc::spawn(name, program.clone(), &l.args, &l.env)?;
        let url = format!("http://{}/readyz", l.http);
        let deadline = Instant::now() + within;
        loop {
            if http_ok(&url).await {
                return Ok((proc, extra));
            }
            if !proc.is_running() {
                exits += 1;
                if exits == 3 {
                    bail!("{name} exited at start three times (IM_TEST_LOGS=1 shows its log)");
                }
                break;
            }
            if Instant::now() > deadline {
                bail!("{url} did not become ready within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The [`Launch`] of an `im-server` (single node) on `tcp` and `http`,
/// with its data in `data_dir`, plus `extra` arguments and `env`.
pub fn single_launch(
    data_dir: &std::path::Path,
    tcp: &str,
    http: &str,
    jwt_secret: &str,
    extra: &[String],
    env: &[(String, String)],
) -> Launch {
    let mut args: Vec<String> = vec![
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--tcp-addr".into(),
        tcp.into(),
        "--http-addr".into(),
        http.into(),
        "--jwt-secret".into(),
        jwt_secret.into(),
    ];
    args.extend(extra.iter().cloned());
    Launch {
        args,
        env: env.to_vec(),
        http: http.into(),
    }
}

/// Starts an `im-server` (single node) on fresh ports; returns it with its
/// TCP and HTTP addresses.
pub async fn start_single(
    program: PathBuf,
    data_dir: &std::path::Path,
    jwt_secret: &str,
    extra: &[String],
    env: &[(String, String)],
    within: Duration,
) -> anyhow::Result<(Proc, String, String)> {
    let (proc, (tcp, http)) = spawn_ready("im-server", program, within, || {
        let (tcp, http) = (local_addr(), local_addr());
        let launch = single_launch(data_dir, &tcp, &http, jwt_secret, extra, env);
        (launch, (tcp, http))
    })
    .await?;
    Ok((proc, tcp, http))
}

/// Starts a logic process on fresh ports with `common` (database, Redis,
/// secret, ...); returns it with its HTTP address and its gRPC URL.
pub async fn start_logic(
    name: &str,
    program: PathBuf,
    common: &[(String, String)],
    within: Duration,
) -> anyhow::Result<(Proc, String, String)> {
    let (proc, (http, grpc)) = spawn_ready(name, program, within, || {
        let (http, grpc) = (local_addr(), local_addr());
        let mut env = common.to_vec();
        env.push(("IM_HTTP_ADDR".into(), http.clone()));
        env.push(("IM_GRPC_ADDR".into(), grpc.clone()));
        let launch = Launch {
            args: Vec::new(),
            env,
            http: http.clone(),
        };
        (launch, (http, grpc))
    })
    .await?;
    Ok((proc, http, format!("http://{grpc}")))
}

/// Starts a gateway `gate_id` on fresh ports with `common`, talking to the
/// logic processes at `logic_grpc` (URLs); returns it with its TCP and HTTP
/// addresses.
pub async fn start_gateway(
    program: PathBuf,
    common: &[(String, String)],
    gate_id: &str,
    logic_grpc: &[String],
    within: Duration,
) -> anyhow::Result<(Proc, String, String)> {
    let (proc, (tcp, http)) = spawn_ready(gate_id, program, within, || {
        let (tcp, http) = (local_addr(), local_addr());
        let mut env = common.to_vec();
        env.push(("IM_TCP_ADDR".into(), tcp.clone()));
        env.push(("IM_HTTP_ADDR".into(), http.clone()));
        env.push(("IM_GRPC_ADDR".into(), local_addr()));
        env.push(("IM_GATE_ID".into(), gate_id.into()));
        env.push(("IM_LOGIC_ADDRS".into(), logic_grpc.join(",")));
        env.push(("IM_DRAIN_SECS".into(), "1".into()));
        let launch = Launch {
            args: Vec::new(),
            env,
            http: http.clone(),
        };
        (launch, (tcp, http))
    })
    .await?;
    Ok((proc, tcp, http))
}

async fn http_ok(url: &str) -> bool {
    let _ = rustls::crypto::ring::default_provider().install_default();
    matches!(reqwest::get(url).await, Ok(r) if r.status().is_success())
}

/// One `im-server` process on SQLite in a temp dir.
pub struct SingleNode {
    pub proc: Proc,
    pub tcp: String,
    pub http: String,
    pub jwt_secret: String,
    _dir: tempfile::TempDir,
}

impl SingleNode {
    pub async fn start(extra: &[&str]) -> anyhow::Result<SingleNode> {
        let dir = tempfile::tempdir()?;
        let jwt_secret = format!("test-secret-{}", unique("jwt"));
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (proc, tcp, http) = start_single(
            bin("im-server")?,
            dir.path(),
            &jwt_secret,
            &extra,
            &[],
            Duration::from_secs(30),
        )
        .await?;
        Ok(SingleNode {
            proc,
            tcp,
            http,
            jwt_secret,
            _dir: dir,
        })
    }

    pub fn api(&self) -> Api {
        Api::new(&format!("http://{}", self.http)).expect("api client")
    }

    pub fn tcp_endpoint(&self) -> Endpoint {
        Endpoint::Tcp(self.tcp.clone())
    }

    pub fn ws_endpoint(&self) -> Endpoint {
        Endpoint::Ws(format!("ws://{}/ws", self.http))
    }
}

/// Gateways and logic processes on a fresh Postgres database and Redis prefix.
pub struct Cluster {
    pub logic: Vec<Proc>,
    pub gateways: Vec<Proc>,
    pub logic_http: Vec<String>,
    /// gRPC of the logic processes, as gateways are given it (`http://…`).
    pub logic_grpc: Vec<String>,
    pub gateway_tcp: Vec<String>,
    pub gateway_http: Vec<String>,
    pub database_url: String,
    pub redis_prefix: String,
}

const CLUSTER_SECRET: &str = "cluster-test-secret-0123456789";

/// Where a cluster's Redis and Postgres are, and extra environment for its processes.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub pg_base: String,
    pub redis_url: String,
    pub env: Vec<(String, String)>,
}

impl ClusterOptions {
    /// The default options, with `key=value` in every process's environment.
    pub fn with_env(key: &str, value: impl ToString) -> ClusterOptions {
        ClusterOptions {
            env: vec![(key.to_string(), value.to_string())],
            ..ClusterOptions::default()
        }
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            pg_base: pg_base(),
            redis_url: redis_url(),
            env: Vec::new(),
        }
    }
}

impl Cluster {
    pub async fn start(gateways: usize, logics: usize) -> anyhow::Result<Cluster> {
        Self::start_with(ClusterOptions::default(), gateways, logics).await
    }

    pub async fn start_with(
        opts: ClusterOptions,
        gateways: usize,
        logics: usize,
    ) -> anyhow::Result<Cluster> {
        let database_url = format!("{}/{}", opts.pg_base, unique("im_test"));
        let redis_prefix = format!("{}:", unique("imtest"));
        let mut common_env = vec![
            ("IM_DATABASE_URL".to_string(), database_url.clone()),
            ("IM_REDIS_URL".to_string(), opts.redis_url.clone()),
            ("IM_REDIS_PREFIX".to_string(), redis_prefix.clone()),
            ("IM_JWT_SECRET".to_string(), CLUSTER_SECRET.to_string()),
        ];
        common_env.extend(opts.env.iter().cloned());
        // Migrate once, before several processes start.
        let status = Command::new(bin("im-logic")?)
            .arg("migrate")
            .envs(common_env.iter().cloned())
            .env("RUST_LOG", "warn")
            .status()
            .context("failed to run im-logic migrate")?;
        if !status.success() {
            bail!(
                "im-logic migrate failed (is Postgres running at {}?)",
                pg_base()
            );
        }
        let mut cluster = Cluster {
            logic: Vec::new(),
            gateways: Vec::new(),
            logic_http: Vec::new(),
            logic_grpc: Vec::new(),
            gateway_tcp: Vec::new(),
            gateway_http: Vec::new(),
            database_url,
            redis_prefix,
        };
        let within = Duration::from_secs(30);
        for i in 0..logics {
            let (proc, http, grpc) =
                start_logic(&format!("logic-{i}"), bin("im-logic")?, &common_env, within).await?;
            cluster.logic.push(proc);
            cluster.logic_http.push(http);
            cluster.logic_grpc.push(grpc);
        }
        for i in 0..gateways {
            let (proc, tcp, http) = start_gateway(
                bin("im-gateway")?,
                &common_env,
                &format!("gw-{i}"),
                &cluster.logic_grpc,
                within,
            )
            .await?;
            cluster.gateways.push(proc);
            cluster.gateway_tcp.push(tcp);
            cluster.gateway_http.push(http);
        }
        Ok(cluster)
    }

    /// REST of logic process `i`.
    pub fn api(&self, i: usize) -> Api {
        Api::new(&format!(
            "http://{}",
            self.logic_http[i % self.logic_http.len()]
        ))
        .expect("api client")
    }

    pub fn tcp_endpoint(&self, i: usize) -> Endpoint {
        Endpoint::Tcp(self.gateway_tcp[i % self.gateway_tcp.len()].clone())
    }

    pub fn ws_endpoint(&self, i: usize) -> Endpoint {
        Endpoint::Ws(format!(
            "ws://{}/ws",
            self.gateway_http[i % self.gateway_http.len()]
        ))
    }
}

/// A registered, logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub id: i64,
    pub token: String,
}

pub async fn new_user(api: &Api, name: &str) -> anyhow::Result<TestUser> {
    let id = api.register(name, "password1").await?;
    let token = api.login(name, "password1").await?.token;
    Ok(TestUser {
        name: name.to_string(),
        id,
        token,
    })
}

/// Connects `user` as a desktop device, receiving only what comes next.
pub async fn online(endpoint: &Endpoint, user: &TestUser) -> anyhow::Result<ChatClient> {
    Ok(ChatClient::connect(endpoint, &user.token, DeviceType::Desktop, None).await?)
}

/// Whether a message is a person's (not a receipt or other system message).
pub fn is_person_message(m: &im_proto::client::Message) -> bool {
    m.content_type < 0xF000
}

/// Receives for `wait` and returns the user messages (receipts dropped).
pub async fn recv_user(
    client: &ChatClient,
    wait: Duration,
) -> anyhow::Result<Vec<im_proto::client::Message>> {
    Ok(client
        .recv(wait)
        .await?
        .into_iter()
        .filter(is_person_message)
        .collect())
}

/// Receives until `n` user messages arrived or `within` passed (receipts,
/// which arrive interleaved, are dropped).
pub async fn recv_n(
    client: &ChatClient,
    n: usize,
    within: Duration,
) -> anyhow::Result<Vec<im_proto::client::Message>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        got.extend(
            client
                .recv(left)
                .await?
                .into_iter()
                .filter(is_person_message),
        );
    }
    Ok(got)
}

/// Asserts seqs strictly ascend by one (no gap, no duplicate).
pub fn assert_contiguous(messages: &[im_proto::client::Message], first: u64) {
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m.seq, first + i as u64, "gap or duplicate at position {i}");
    }
}

/// Resident memory of a process in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn started_processes_log_to_the_log_dir() {
        if std::env::var_os("IM_TEST_LOGS").is_some() {
            return; // the logs go to the terminal then
        }
        let dir = tempfile::tempdir().unwrap();
        set_log_dir(Some(dir.path().to_path_buf()));
        let script = vec!["-c".to_string(), "echo started >&2".to_string()];
        let mut p = Proc::spawn("shell", PathBuf::from("/bin/sh"), &script, &[]).unwrap();
        assert!(p.wait_exit(Duration::from_secs(10)).await);
        p.restart().unwrap();
        assert!(p.wait_exit(Duration::from_secs(10)).await);
        set_log_dir(None);
        let log = std::fs::read_to_string(dir.path().join("shell.log")).unwrap();
        assert_eq!(log, "started\nstarted\n", "appended across restarts");
    }
}
