//! `im-bench SCENARIO [options] --json FILE --plot FILE`: runs one scenario
//! against real servers, prints the figures, writes the report, and exits
//! non-zero when anything was lost, duplicated or failed.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use im_bench::report::Report;
use im_bench::run::Outcome;
use im_bench::scenario::{c2c, group, idle, offline, storm};
use im_bench::target::{Target, TargetArgs};
use im_bench::{plot, sys};

/// mimalloc rather than glibc's allocator: glibc's malloc and free were
/// ~3 % of the machine's CPU at 2,000 msg/s, and the load generator took less CPU with it
/// (docs/benchmarks.md). Not in the gateway: an idle connection there
/// cost 2,533 bytes of RSS with it, against 1,825 without.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "im-bench", version = im_common::version!(), about = "Load generator for the IM backend")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, clap::Args)]
struct Common {
    #[command(flatten)]
    target: TargetArgs,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw latency over time as a PNG here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Scenario {
    /// Closed-loop one-to-one throughput (stored, pushed and acknowledged).
    C2cThroughput {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: c2c::ThroughputArgs,
    },
    /// Open-loop one-to-one latency at a fixed rate.
    C2cLatency {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: c2c::LatencyArgs,
    },
    /// Authenticated idle connections; gateway RSS per connection.
    IdleConns {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: idle::IdleArgs,
    },
    /// A large group, every member online: deliveries per second.
    GroupFanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: group::GroupArgs,
    },
    /// Users with large backlogs reconnect and pull everything.
    OfflineSync {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: offline::OfflineArgs,
    },
    /// Many clients reconnect at once.
    ReconnectStorm {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: storm::StormArgs,
    },
    /// (internal) holds a share of the idle connections.
    #[command(hide = true)]
    IdleWorker {
        #[arg(long)]
        job: PathBuf,
    },
}

fn name_of(s: &Scenario) -> &'static str {
    match s {
        Scenario::C2cThroughput { .. } => "c2c-throughput",
        Scenario::C2cLatency { .. } => "c2c-latency",
        Scenario::IdleConns { .. } => "idle-conns",
        Scenario::GroupFanout { .. } => "group-fanout",
        Scenario::OfflineSync { .. } => "offline-sync",
        Scenario::ReconnectStorm { .. } => "reconnect-storm",
        Scenario::IdleWorker { .. } => "idle-worker",
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("im-bench: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let name = name_of(&cli.scenario);
    let common = match &cli.scenario {
        Scenario::IdleWorker { job } => {
            idle::worker(job.clone(), |line| println!("{line}")).await?;
            return Ok(true);
        }
        Scenario::C2cThroughput { common, .. }
        | Scenario::C2cLatency { common, .. }
        | Scenario::IdleConns { common, .. }
        | Scenario::GroupFanout { common, .. }
        | Scenario::OfflineSync { common, .. }
        | Scenario::ReconnectStorm { common, .. } => common.clone(),
    };
    let mut machine = sys::Machine::now();
    machine.calibration_ms[0] = sys::calibrate(sys::CALIBRATION_STEPS);
    let started_at_unix = im_proto::now_ms() / 1000;
    let wall = Instant::now();
    eprintln!(
        "im-bench {name}: mode {:?}, load average {:?}, starting servers…",
        common.target.mode, machine.load_before
    );
    // The servers' logs (warnings and errors unless RUST_LOG says more),
    // kept when the run fails.
    let logs = std::env::temp_dir().join(format!("im-bench-logs-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    im_tests::set_log_dir(Some(logs.clone()));
    let mut target = Target::start(&common.target)
        .await
        .with_context(|| format!("server logs in {}", logs.display()))?;
    let outcome: Outcome = match &cli.scenario {
        Scenario::C2cThroughput { args, .. } => c2c::throughput(&mut target, args).await,
        Scenario::C2cLatency { args, .. } => c2c::latency(&mut target, args).await,
        Scenario::IdleConns { args, .. } => idle::run(&mut target, args).await,
        Scenario::GroupFanout { args, .. } => group::fanout(&mut target, args).await,
        Scenario::OfflineSync { args, .. } => offline::sync(&mut target, args).await,
        Scenario::ReconnectStorm { args, .. } => storm::run(&mut target, args).await,
        Scenario::IdleWorker { .. } => unreachable!("handled above"),
    }
    .with_context(|| format!("server logs in {}", logs.display()))?;
    machine.load_after = sys::loadavg();
    let mut report = Report {
        scenario: name.to_string(),
        mode: target.mode,
        command: std::env::args().collect(),
        parameters: outcome.parameters.clone(),
        figures: outcome.figures.clone(),
        ok: outcome.failures.is_empty(),
        failures: outcome.failures.clone(),
        verdict: outcome.verdict.clone(),
        machine,
        git_commit: env!("IM_COMMIT").to_string(),
        started_at_unix,
        wall_secs: wall.elapsed().as_secs_f64(),
        cpu_percent: outcome.cpu.groups.clone(),
        machine_cpu_percent: outcome.cpu.machine.clone(),
        server_metrics: outcome.metrics.clone(),
        latency_over_time: outcome
            .timeline
            .as_ref()
            .map(|t| t.points())
            .unwrap_or_default(),
    };
    target.stop().await;
    report.machine.calibration_ms[1] = sys::calibrate(sys::CALIBRATION_STEPS);
    println!("{name} ({:?} mode)", report.mode);
    println!("  parameters: {}", report.parameters);
    for (k, v) in &report.figures {
        if k != "seconds" {
            println!("  {k}: {v}");
        }
    }
    print_slow_seconds(&report.figures);
    print_builds(&report);
    println!("  cpu % of one core: {:?}", report.cpu_percent);
    if !report.cpu_percent.is_empty() {
        let m = &report.machine_cpu_percent;
        println!(
            "  machine: busy {} % of one core, {} of it outside these processes, steal {} %",
            m.busy_percent, m.outside_percent, m.steal_percent
        );
    }
    println!(
        "  load average before {:?} after {:?}; calibration loop {:.0} ms before, {:.0} ms after",
        report.machine.load_before,
        report.machine.load_after,
        report.machine.calibration_ms[0],
        report.machine.calibration_ms[1]
    );
    if let Some(path) = &common.json {
        report.write(path)?;
        println!("  json: {}", path.display());
    }
    if let Some(path) = &common.plot {
        if report.latency_over_time.is_empty() {
            println!("  plot: nothing to draw for {name}");
        } else {
            plot::latency_png(path, &outcome.plot_title, &report.latency_over_time)?;
            println!("  plot: {}", path.display());
        }
    }
    if report.ok {
        println!("  OK: no errors; every message (where sent) received exactly once");
        let _ = std::fs::remove_dir_all(&logs);
    } else {
        for f in &report.failures {
            println!("  FAILED: {f}");
        }
        println!("  server logs: {}", logs.display());
    }
    Ok(report.ok)
}

/// Which builds ran: im-bench's and each server's (`im_build_info`), and a
/// note when they differ (`--bin-dir` of another tree, or servers started
/// elsewhere).
fn print_builds(report: &Report) {
    let servers: Vec<String> = report
        .server_metrics
        .as_object()
        .into_iter()
        .flat_map(|processes| processes.values())
        .filter_map(|m| {
            let build = m.get("im_build_info")?;
            let field = |k: &str| build.get(k).and_then(|v| v.as_str()).unwrap_or("?");
            Some(format!("{} {}", field("binary"), field("commit")))
        })
        .collect();
    if servers.is_empty() {
        println!(
            "  builds: im-bench {}; the servers name none (built before im_build_info?)",
            report.git_commit
        );
        return;
    }
    println!(
        "  builds: im-bench {}; servers: {}",
        report.git_commit,
        servers.join(", ")
    );
    if servers.iter().any(|s| !s.ends_with(&report.git_commit)) {
        println!("  note: a server was built from another commit than im-bench");
    }
}

/// The seconds whose largest latency reached 20 ms, with each hop's largest
/// (bucket bounds, ms): where to look first in the JSON's `seconds`.
fn print_slow_seconds(figures: &serde_json::Map<String, serde_json::Value>) {
    let Some(rows) = figures.get("seconds").and_then(|s| s.as_array()) else {
        return;
    };
    let slow: Vec<_> = rows
        .iter()
        .filter(|r| r["latency_max_ms"].as_f64().unwrap_or(0.0) >= 20.0)
        .collect();
    if slow.is_empty() {
        return;
    }
    let ms = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
    let hops = im_bench::hops::HOPS.map(|(h, _, _)| h);
    println!(
        "  seconds with a latency of 20 ms or more (max ms; hops: max bucket bound): second latency sent overslept writer_busy {}",
        hops.join(" ")
    );
    for r in slow {
        let hop_max: Vec<String> = hops
            .iter()
            .map(|h| ms(&r["hops"][h]["max_le_ms"]))
            .collect();
        println!(
            "    {} {} {} {} {} {}",
            r["second"],
            ms(&r["latency_max_ms"]),
            ms(&r["sent_max_ms"]),
            ms(&r["overslept_max_ms"]),
            r["writer_busy"]
                .as_f64()
                .map_or("-".to_string(), |b| format!("{b:.2}")),
            hop_max.join(" ")
        );
    }
}
