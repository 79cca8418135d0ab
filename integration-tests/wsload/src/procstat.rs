//! CPU and memory of processes and of the machine, from `/proc` (Linux).

use anyhow::{Context as _, anyhow};

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`: 100 on every Linux architecture the
/// tool targets).
pub const TICKS_PER_SEC: f64 = 100.0;

/// `utime + stime` (clock ticks) from the text of `/proc/<pid>/stat`.
pub fn cpu_ticks_from_stat(stat: &str) -> anyhow::Result<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("no ')' in /proc stat line"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let get = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i - 3)
            .ok_or_else(|| anyhow!("short /proc stat line"))?
            .parse()
            .context("bad number in /proc stat line")
    };
    Ok(get(14)? + get(15)?)
}

/// CPU time used by `pid` so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    cpu_ticks_from_stat(&s)
}

/// A `kB` line (`VmHWM`, `VmRSS`, ...) of `/proc/<pid>/status`, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Peak (`VmHWM`) and current (`VmRSS`) resident memory of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok((
        status_kib(&s, "VmHWM").unwrap_or(0),
        status_kib(&s, "VmRSS").unwrap_or(0),
    ))
}

/// The machine's `(busy, total)` CPU ticks over all cores, from `/proc/stat`.
pub fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = s
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// The first three fields of `/proc/loadavg` (1, 5 and 15 minutes), or "?".
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// Cores the machine has online.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The pids of processes whose command name (`/proc/<pid>/comm`) is `name`.
pub fn find_by_name(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// The soft limit on open files of this process.
pub fn open_files_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    s.lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// CPU used by one process over a window, as a share of one core.
#[derive(Debug, Clone, Copy)]
pub struct CpuWindow {
    pid: u32,
    start: u64,
}

impl CpuWindow {
    /// Starts measuring `pid`.
    pub fn start(pid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            pid,
            start: cpu_ticks(pid)?,
        })
    }

    /// CPU used since the start, in percent of one core, over `secs`.
    pub fn percent(&self, secs: f64) -> anyhow::Result<f64> {
        let used = cpu_ticks(self.pid)?.saturating_sub(self.start);
        Ok(used as f64 / TICKS_PER_SEC / secs * 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_past_a_tricky_name() -> anyhow::Result<()> {
        let line = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 9 0 100 1000 200 0";
        assert_eq!(cpu_ticks_from_stat(line)?, 1234 + 567);
        assert!(cpu_ticks_from_stat("garbage").is_err());
        Ok(())
    }

    #[test]
    fn reads_kib_lines_of_status() {
        let s = "Name:\tlakewire\nVmHWM:\t  123456 kB\nVmRSS:\t   98765 kB\n";
        assert_eq!(status_kib(s, "VmHWM"), Some(123_456));
        assert_eq!(status_kib(s, "VmRSS"), Some(98_765));
        assert_eq!(status_kib(s, "VmSwap"), None);
    }

    #[test]
    fn this_process_is_measurable() -> anyhow::Result<()> {
        let me = std::process::id();
        cpu_ticks(me)?;
        let (hwm, rss) = rss_kib(me)?;
        assert!(hwm >= rss && rss > 0);
        let (busy, total) = machine_ticks()?;
        assert!(busy <= total);
        Ok(())
    }
}
