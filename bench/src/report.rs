//! The JSON result of a run: scenario, parameters, mode, figures, the
//! exactly-once verdict, the machine, per-process CPU, server metrics.
use std::collections::BTreeMap;
use std::path::Path;

use crate::ledger::Verdict;
use crate::sys::{Machine, MachineCpu};
use crate::target::Mode;
use crate::timeline::Point;

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub scenario: String,
    pub mode: Mode,
    pub command: Vec<String>,
    pub parameters: serde_json::Value,
    pub figures: serde_json::Map<String, serde_json::Value>,
    /// False when anything was lost, duplicated, or failed.
    pub ok: bool,
    pub failures: Vec<String>,
    pub verdict: Option<Verdict>,
    pub machine: Machine,
    /// The commit im-bench was built from; each server's is its
    /// `im_build_info` in `server_metrics`.
    pub git_commit: String,
    pub started_at_unix: u64,
    pub wall_secs: f64,
    /// Percent of one core during the measured phase, per process group.
    pub cpu_percent: BTreeMap<String, f64>,
    /// The whole machine in the same window (empty for idle-conns, which
    /// measures memory).
    pub machine_cpu_percent: MachineCpu,
    /// Summaries of each process's /metrics at the end.
    pub server_metrics: serde_json::Value,
    pub latency_over_time: Vec<Point>,
}

impl Report {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}
