//! A process's CPU time and resident memory, from `/proc/PID/stat` and `/proc/PID/status`.
//! The parsers are pure; [`sample`] reads the files.

use anyhow::{Context, Result};
use std::time::Instant;

/// CPU ticks (utime + stime) from the text of `/proc/PID/stat`: one parser for every bench,
/// in twill-lab because `twill lab bench` (udp) counts CPU too.
pub use twill_lab::bench_udp::parse_cpu_ticks;

/// VmRSS in kB from the text of `/proc/PID/status`.
pub fn parse_rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub cpu_seconds: f64,
    pub rss_mb: f64,
}

/// Cores used between two samples: CPU seconds over wall seconds.
pub fn cores(start: &Sample, end: &Sample) -> f64 {
    let wall = end.at.duration_since(start.at).as_secs_f64();
    if wall <= 0.0 {
        return f64::NAN;
    }
    (end.cpu_seconds - start.cpu_seconds) / wall
}

/// Reads the process's CPU time and RSS now.
pub fn sample(pid: u32) -> Result<Sample> {
    let at = Instant::now();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone (reading /proc/{pid}/stat)"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone (reading /proc/{pid}/status)"))?;
    let ticks = parse_cpu_ticks(&stat)
        .with_context(|| format!("cannot read the CPU time in /proc/{pid}/stat"))?;
    let rss = parse_rss_kb(&status)
        .with_context(|| format!("no VmRSS in /proc/{pid}/status (a zombie?)"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Sample {
        at,
        cpu_seconds: ticks as f64 / hz,
        rss_mb: rss as f64 / 1024.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces_and_parens() {
        let stat =
            "4242 (tw (il) d) S 1 4242 4242 0 -1 4194560 500 0 0 0 123 45 0 0 20 0 3 0 99 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(168));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn rss_from_status() {
        let status = "Name:\ttwilld\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t4\n";
        assert_eq!(parse_rss_kb(status), Some(5120));
        assert_eq!(parse_rss_kb("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn cores_is_cpu_over_wall() {
        let t = Instant::now();
        let a = Sample {
            at: t,
            cpu_seconds: 1.0,
            rss_mb: 1.0,
        };
        let b = Sample {
            at: t + std::time::Duration::from_secs(10),
            cpu_seconds: 1.05,
            rss_mb: 1.0,
        };
        assert!((cores(&a, &b) - 0.005).abs() < 1e-9);
        assert!(cores(&a, &a).is_nan());
    }
}
