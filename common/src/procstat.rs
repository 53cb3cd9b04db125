//! CPU time of processes, read from `/proc` (Linux; zero and empty
//! elsewhere): what the load generator and the store's benchmark report
//! of the servers they drive. Read-only.

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    stat_ticks(pid, false)
}

/// utime + stime, plus with `children` the time of its children that ended
/// (a Postgres backend that exits is added to the postmaster's).
pub fn stat_ticks(pid: u32, children: bool) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let own = get(14) + get(15);
    if children {
        own + get(16) + get(17)
    } else {
        own
    }
}

/// Pids whose command name (`/proc/PID/comm`) is `name`.
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == name)
                .unwrap_or(false)
        })
        .collect()
}

/// Clock ticks per second (USER_HZ); 100 on every Linux we run on.
pub const TICKS_PER_SEC: f64 = 100.0;
