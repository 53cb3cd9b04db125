//! The machine and its processes, read from /proc: cores, memory, load,
//! RSS and CPU time of a pid, the git commit from `.git` files. Read-only.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the machine was, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub mem_total_kib: u64,
    pub cpu_model: String,
    pub kernel: String,
    /// `/proc/loadavg` (1, 5, 15 minutes) when the run started and ended.
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
}

pub fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

fn meminfo_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| {
            rest.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

impl Machine {
    pub fn now() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            mem_total_kib: meminfo_kib("MemTotal"),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            load_before: loadavg(),
            load_after: [0.0; 3],
        }
    }
}

/// VmRSS of a process in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub use im_common::procstat::{TICKS_PER_SEC, cpu_ticks, pids_named, stat_ticks};

/// The processes of one CPU accounting group.
#[derive(Debug, Clone)]
pub enum Procs {
    /// These processes (the servers the bench started).
    Pids(Vec<u32>),
    /// Every process with this command name, looked up again at the end, so
    /// that processes started during the run count too (a Postgres backend
    /// for a connection opened after the start), as do the ones that ended
    /// (through their parent's children times).
    Named(&'static str),
}

impl Procs {
    fn ticks(&self) -> HashMap<u32, u64> {
        match self {
            Procs::Pids(pids) => pids.iter().map(|&p| (p, stat_ticks(p, false))).collect(),
            Procs::Named(name) => pids_named(name)
                .into_iter()
                .map(|p| (p, stat_ticks(p, true)))
                .collect(),
        }
    }
}

/// CPU use of groups of processes between `start` and `stop`.
pub struct CpuSampler {
    groups: Vec<(String, Procs)>,
    start: Option<(Instant, Vec<HashMap<u32, u64>>)>,
}

impl CpuSampler {
    pub fn new(groups: Vec<(String, Procs)>) -> Self {
        CpuSampler {
            groups,
            start: None,
        }
    }

    fn ticks(&self) -> Vec<HashMap<u32, u64>> {
        self.groups.iter().map(|(_, procs)| procs.ticks()).collect()
    }

    pub fn start(&mut self) {
        self.start = Some((Instant::now(), self.ticks()));
    }

    /// Percent of one core per group (200 = both cores of a 2-core machine).
    pub fn stop(&self) -> BTreeMap<String, f64> {
        let Some((t0, before)) = &self.start else {
            return BTreeMap::new();
        };
        let secs = t0.elapsed().as_secs_f64().max(1e-3);
        self.groups
            .iter()
            .zip(self.ticks().iter().zip(before))
            .map(|((name, _), (after, before))| {
                let used: u64 = after
                    .iter()
                    .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
                    .sum();
                let pct = used as f64 / TICKS_PER_SEC / secs * 100.0;
                (name.clone(), (pct * 10.0).round() / 10.0)
            })
            .collect()
    }
}

/// The commit checked out in the repository around `start`, read from `.git`.
pub fn git_commit(start: &Path) -> Option<String> {
    let mut dir: Option<PathBuf> = Some(start.to_path_buf());
    while let Some(d) = dir {
        let git = d.join(".git");
        if git.is_dir() {
            let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
            let head = head.trim();
            let Some(r) = head.strip_prefix("ref: ") else {
                return Some(head.to_string());
            };
            if let Ok(c) = std::fs::read_to_string(git.join(r)) {
                return Some(c.trim().to_string());
            }
            let packed = std::fs::read_to_string(git.join("packed-refs")).ok()?;
            return packed
                .lines()
                .find(|l| l.ends_with(r))
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_string);
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me) > 0);
        // Burn a little CPU so the tick count is likely non-zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_ticks(me) > 0);
        assert!(Machine::now().nproc >= 1);
    }
}
