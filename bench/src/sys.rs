//! The machine and its processes, read from /proc: cores, memory, load,
//! the whole machine's CPU time, RSS and CPU time of a pid; and a loop
//! bound by a core's clock. Read-only.
use std::collections::{BTreeMap, HashMap};
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
    /// [`calibrate`] before the servers start and after they stop, in ms:
    /// the same work each time, so it shows whether a core's clock changed
    /// around the run. It does not see contention for memory and caches
    /// from other guests of a shared virtual machine, which is where the
    /// swings of the machine in docs/benchmarks.md were ("The machine").
    pub calibration_ms: [f64; 2],
}

/// Steps of [`calibrate`] in a report.
pub const CALIBRATION_STEPS: u64 = 200_000_000;

/// Times `steps` rounds of a 64-bit mixing step (shift, xor, multiply),
/// each depending on the one before, in ms: bound by the latency of the
/// core's arithmetic, so by its clock, for comparing runs made at
/// different times. (An affine step such as a linear congruential
/// generator's would not do: the compiler folds several of them into one.)
pub fn calibrate(steps: u64) -> f64 {
    let t = Instant::now();
    let mut x = std::hint::black_box(0x9e37_79b9_7f4a_7c15_u64);
    for _ in 0..steps {
        x = (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
    std::hint::black_box(x);
    t.elapsed().as_secs_f64() * 1000.0
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
            calibration_ms: [0.0; 2],
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

/// The whole machine's CPU time so far, from `/proc/stat`.
///
/// Busy time is what the window does not spend idle: on a tickless kernel
/// the idle and iowait columns are measured exactly, while user and system
/// are sampled at timer ticks and miss much of the work of threads that
/// run briefly between ticks (summed, every column of the `cpu` line
/// covered 89 % of the wall time of a single-node run here, and user +
/// system came to 9 % less than the processes' own exact times).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineTicks {
    /// Cores (`cpuN` lines).
    pub cores: u64,
    /// idle and iowait, over all cores.
    pub idle: u64,
    /// Time the hypervisor gave to someone else while a core wanted to run.
    pub steal: u64,
}

impl MachineTicks {
    pub fn now() -> MachineTicks {
        MachineTicks::parse(&std::fs::read_to_string("/proc/stat").unwrap_or_default())
    }

    /// The `cpu` line's fields: user nice system idle iowait irq softirq
    /// steal guest guest_nice (zero when missing), and the `cpuN` lines.
    pub fn parse(proc_stat: &str) -> MachineTicks {
        let fields: Vec<u64> = proc_stat
            .lines()
            .find_map(|l| l.strip_prefix("cpu "))
            .map(|rest| {
                rest.split_whitespace()
                    .map(|x| x.parse().unwrap_or(0))
                    .collect()
            })
            .unwrap_or_default();
        let at = |i: usize| fields.get(i).copied().unwrap_or(0);
        let cores = proc_stat
            .lines()
            .filter(|l| {
                l.strip_prefix("cpu")
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .count() as u64;
        MachineTicks {
            cores,
            idle: at(3) + at(4),
            steal: at(7),
        }
    }

    /// Busy ticks between `self` and a later reading `secs` apart.
    pub fn busy_since(&self, earlier: &MachineTicks, secs: f64) -> f64 {
        let wall = secs * TICKS_PER_SEC * self.cores as f64;
        let not_busy =
            self.idle.saturating_sub(earlier.idle) + self.steal.saturating_sub(earlier.steal);
        (wall - not_busy as f64).max(0.0)
    }
}

/// The whole machine over the same window as the groups' figures, in
/// percent of one core like them (200 = both cores of a 2-core machine).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct MachineCpu {
    /// The window's time on every core less idle, iowait and stolen time.
    pub busy_percent: f64,
    /// `busy_percent` less the groups' sum: processes the run did not
    /// start (other services on the machine) and interrupt time not
    /// charged to a process.
    pub outside_percent: f64,
    /// Time the hypervisor took for other guests.
    pub steal_percent: f64,
}

/// What [`CpuSampler::stop`] measured.
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    /// Percent of one core per group.
    pub groups: BTreeMap<String, f64>,
    pub machine: MachineCpu,
}

/// CPU use of groups of processes, and of the whole machine, between
/// `start` and `stop`.
pub struct CpuSampler {
    groups: Vec<(String, Procs)>,
    start: Option<Started>,
}

/// The ticks at [`CpuSampler::start`].
struct Started {
    at: Instant,
    groups: Vec<HashMap<u32, u64>>,
    machine: MachineTicks,
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
        self.start = Some(Started {
            at: Instant::now(),
            groups: self.ticks(),
            machine: MachineTicks::now(),
        });
    }

    /// Percent of one core per group and for the whole machine.
    pub fn stop(&self) -> CpuUse {
        let Some(start) = &self.start else {
            return CpuUse::default();
        };
        let secs = start.at.elapsed().as_secs_f64().max(1e-3);
        let percent = |ticks: f64| ticks / TICKS_PER_SEC / secs * 100.0;
        let used: Vec<u64> = self
            .ticks()
            .iter()
            .zip(&start.groups)
            .map(|(after, before)| {
                after
                    .iter()
                    .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
                    .sum()
            })
            .collect();
        let machine = MachineTicks::now();
        let busy = percent(machine.busy_since(&start.machine, secs));
        let measured = percent(used.iter().sum::<u64>() as f64);
        CpuUse {
            groups: self
                .groups
                .iter()
                .zip(&used)
                .map(|((name, _), &t)| (name.clone(), tenth(percent(t as f64))))
                .collect(),
            machine: MachineCpu {
                busy_percent: tenth(busy),
                outside_percent: tenth(busy - measured),
                steal_percent: tenth(percent(
                    machine.steal.saturating_sub(start.machine.steal) as f64
                )),
            },
        }
    }
}

fn tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
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

    #[test]
    fn the_machines_ticks_are_its_idle_and_stolen_time() {
        let stat = "cpu  100 5 50 1000 20 3 7 11 0 0\n\
                    cpu0 50 2 25 500 10 1 3 5 0 0\n\
                    cpu1 50 3 25 500 10 2 4 6 0 0\n\
                    intr 12 0 3\n";
        let t = MachineTicks::parse(stat);
        assert_eq!(
            t,
            MachineTicks {
                cores: 2,
                idle: 1020,
                steal: 11
            }
        );
        // An older kernel without the steal column.
        assert_eq!(
            MachineTicks::parse("cpu  1 2 3 4 5 6 7\ncpu0 1 2 3 4 5 6 7\n"),
            MachineTicks {
                cores: 1,
                idle: 9,
                steal: 0
            }
        );
        assert_eq!(MachineTicks::parse("intr 1\n"), MachineTicks::default());
        // Ten seconds later on two cores (2,000 ticks): 500 more idle and
        // iowait ticks and 100 stolen leave 1,400 busy, whatever the
        // sampled user and system columns say.
        let later = MachineTicks {
            idle: t.idle + 500,
            steal: t.steal + 100,
            ..t
        };
        assert!((later.busy_since(&t, 10.0) - 1400.0).abs() < 1e-6);
        // Never below zero, when a reading runs late against the clock.
        let idle = MachineTicks {
            idle: t.idle + 2100,
            ..t
        };
        assert_eq!(idle.busy_since(&t, 10.0), 0.0);
    }

    #[test]
    fn the_machine_is_at_least_as_busy_as_a_process_it_measured() {
        let mut sampler = CpuSampler::new(vec![(
            "me".to_string(),
            Procs::Pids(vec![std::process::id()]),
        )]);
        sampler.start();
        let t = Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(400) {
            calibrate(100_000);
        }
        let used = sampler.stop();
        let me = used.groups["me"];
        assert!(me > 50.0, "{used:?}");
        // Ticks are 10 ms: allow a few either way over 400 ms.
        assert!(used.machine.busy_percent >= me - 10.0, "{used:?}");
        assert!(
            (used.machine.busy_percent - me - used.machine.outside_percent).abs() < 0.2,
            "{used:?}"
        );
        assert!(used.machine.steal_percent >= 0.0);
    }
}
