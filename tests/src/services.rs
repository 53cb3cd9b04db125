//! Private Redis and Postgres servers for tests that kill or restart them
//! (the machine's shared ones must stay up for the other tests).
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{Proc, free_port};

/// A `redis-server` of our own on a free port, with no persistence.
pub struct TestRedis {
    pub proc: Proc,
    pub url: String,
}

impl TestRedis {
    pub async fn start() -> anyhow::Result<TestRedis> {
        let port = free_port();
        let program = which("redis-server")?;
        let args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let proc = Proc::spawn("redis", program, &args, &[])?;
        wait_port(port).await?;
        Ok(TestRedis {
            proc,
            url: format!("redis://127.0.0.1:{port}"),
        })
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.restart()?;
        let port: u16 = self.url.rsplit(':').next().unwrap_or("0").parse()?;
        wait_port(port).await
    }
}

/// A Postgres cluster of our own (initdb into a temp dir, trust auth), run as
/// the `postgres` user, so it can be killed with SIGKILL and restarted.
pub struct TestPostgres {
    pub proc: Proc,
    pub base_url: String,
    port: u16,
    _dir: tempfile::TempDir,
}

fn pg_bin(name: &str) -> anyhow::Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("Postgres binaries not found under /usr/lib/postgresql")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    let bin = versions
        .last()
        .context("no Postgres version installed")?
        .join("bin")
        .join(name);
    if !bin.exists() {
        bail!("{} is missing", bin.display());
    }
    Ok(bin)
}

impl TestPostgres {
    pub async fn start() -> anyhow::Result<TestPostgres> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        // Postgres refuses to run as root: the data dir belongs to `postgres`.
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()?;
        if !status.success() {
            bail!("chown to postgres failed");
        }
        let status = Command::new("setpriv")
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--clear-groups",
                "--",
            ])
            .arg(pg_bin("initdb")?)
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .context("initdb failed")?;
        if !status.success() {
            bail!("initdb failed");
        }
        let port = free_port();
        let postgres = pg_bin("postgres")?;
        let args: Vec<String> = vec![
            "--reuid=postgres".into(),
            "--regid=postgres".into(),
            "--clear-groups".into(),
            "--".into(),
            postgres.display().to_string(),
            "-D".into(),
            data.display().to_string(),
            "-p".into(),
            port.to_string(),
            "-k".into(),
            data.display().to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            "max_connections=200".into(),
        ];
        let proc = Proc::spawn("postgres", which("setpriv")?, &args, &[])?;
        wait_port(port).await?;
        Ok(TestPostgres {
            proc,
            base_url: format!("postgres://postgres@127.0.0.1:{port}"),
            port,
            _dir: dir,
        })
    }

    /// SIGKILL the postmaster; its backends notice and exit.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts it again (crash recovery runs), retrying while old backends linger.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        for _ in 0..50 {
            self.proc.restart()?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            if self.proc.is_running() && wait_port(self.port).await.is_ok() {
                return Ok(());
            }
        }
        bail!("Postgres did not come back")
    }
}

fn which(name: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"] {
        let p = PathBuf::from(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{name} not found")
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on 127.0.0.1:{port}")
}
