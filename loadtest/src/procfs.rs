//! What the kernel says about a process: resident memory, and CPU time of a
//! process together with all its descendants (nginx and uvicorn run workers as
//! child processes), so each system's CPU cost can be compared.

use std::{collections::HashMap, fs};

use anyhow::Context;

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} not found"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS for process {pid}"))
}

/// (parent pid, utime + stime in clock ticks) from a `/proc/<pid>/stat` line.
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    // The command name is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the name: state(0) ppid(1) … utime(11) stime(12).
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// CPU seconds used so far by the processes `roots` and all their descendants.
pub fn tree_cpu_seconds(roots: &[u32]) -> f64 {
    let mut parent = HashMap::new();
    let mut ticks = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, t)) = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parse_stat(&s))
            {
                parent.insert(pid, ppid);
                ticks.insert(pid, t);
            }
        }
    }
    let in_tree = |mut pid: u32| loop {
        if roots.contains(&pid) {
            return true;
        }
        match parent.get(&pid) {
            Some(&p) if p != 0 && p != pid => pid = p,
            _ => return false,
        }
    };
    let total: u64 = ticks
        .iter()
        .filter(|(&pid, _)| in_tree(pid))
        .map(|(_, &t)| t)
        .sum();
    total as f64 / clock_ticks_per_second()
}

/// USER_HZ: 100 on every Linux this runs on.
fn clock_ticks_per_second() -> f64 {
    100.0
}

/// Raises the open-files limit to the hard limit and returns it, so thousands of
/// sockets can be opened; says what to do when the hard limit is too low.
pub fn raise_fd_limit(needed: u64) -> anyhow::Result<u64> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    if limit < needed {
        eprintln!(
            "sluice-loadtest: open-files limit is {limit} but ~{needed} are needed; \
             raise the hard limit (ulimit -Hn, or LimitNOFILE= for a service) or lower --clients"
        );
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let line = "1234 (my (odd) prog) S 77 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 1000 10";
        assert_eq!(parse_stat(line), Some((77, 300)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_measured() {
        let me = std::process::id();
        assert!(rss_kib(me).expect("own rss") > 0);
        // Burn a little CPU and see the tree's total move.
        let before = tree_cpu_seconds(&[me]);
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(tree_cpu_seconds(&[me]) > before);
        assert!(rss_kib(u32::MAX).is_err());
    }
}
