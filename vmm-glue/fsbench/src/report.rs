//! What the benchmark prints: the set-up, a line per daemon and run, the host's memcpy
//! bandwidth, and the table of medians, spreads and ratios.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::daemon::{version, DaemonSpec};
use crate::rows::Row;

/// A table cell: row, queue depth, worker threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cell {
    /// The row.
    pub row: Row,
    /// Requests in flight.
    pub depth: usize,
    /// Worker threads.
    pub threads: usize,
}

/// Per cell, per daemon (in the order given), the figure of every run; for READ 1 MiB one more
/// lists after the daemons': the memcpy and the pread MB/s measured before the cell in every run.
pub type Results = HashMap<Cell, Vec<Vec<f64>>>;

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Prints the set-up.
pub fn header(
    share_in: &Path,
    share: &Path,
    daemons: &[DaemonSpec],
    runs: usize,
    secs: f64,
    pin: bool,
) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "vfsdax-fsbench: {runs} runs, {secs} s per cell, {}",
        sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    println!(
        "  host: {} CPUs, Linux {}, {cpu}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        sh("uname", &["-r"])
    );
    println!(
        "  share: {} ({}), --cache auto, sandbox and seccomp at their defaults",
        share.display(),
        sh("stat", &["-f", "-c", "%T", &share_in.display().to_string()])
    );
    for d in daemons {
        println!(
            "  {:<10} {} ({})",
            d.label,
            d.program.display(),
            version(&d.program)
        );
    }
    println!(
        "  pinning: {}",
        if pin {
            "1 worker: daemon on CPU 1 (taskset), frontend on CPU 0; 2 workers: none"
        } else {
            "none"
        }
    );
}

/// The host's single-thread memcpy bandwidth in MB/s: 1 MiB copies from a 64 MiB source into a
/// 32 MiB destination (as the daemon's copies from the page cache into 32 reply buffers),
/// best of three 0.1 s passes.
pub fn memcpy_bandwidth() -> f64 {
    const MIB: usize = 1 << 20;
    let src: Vec<u8> = (0..64 * MIB).map(|i| i as u8).collect();
    let mut dst = vec![0u8; 32 * MIB];
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let mut bytes = 0usize;
        let mut i = 0usize;
        while start.elapsed().as_secs_f64() < 0.1 {
            let s = (i % 64) * MIB;
            let d = (i % 32) * MIB;
            dst[d..d + MIB].copy_from_slice(black_box(&src[s..s + MIB]));
            black_box(&mut dst);
            bytes += MIB;
            i += 1;
        }
        best = best.max(bytes as f64 / start.elapsed().as_secs_f64() / 1e6);
    }
    best
}

/// The host's single-thread `pread(2)` bandwidth in MB/s from `file` (in the page cache): 1 MiB
/// reads through the file into a 32 MiB buffer, best of three 0.1 s passes; what a daemon's
/// READ of 1 MiB does minus the ring. 0 if the file cannot be read.
pub fn pread_bandwidth(file: &Path) -> f64 {
    use std::os::unix::fs::FileExt;
    const MIB: usize = 1 << 20;
    let Ok(f) = std::fs::File::open(file) else {
        return 0.0;
    };
    let size = f.metadata().map_or(0, |m| m.len()) as usize / MIB;
    if size == 0 {
        return 0.0;
    }
    let mut dst = vec![1u8; 32 * MIB];
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let mut bytes = 0usize;
        let mut i = 0usize;
        while start.elapsed().as_secs_f64() < 0.1 {
            let d = (i % 32) * MIB;
            match f.read_at(&mut dst[d..d + MIB], ((i % size) * MIB) as u64) {
                Ok(n) if n > 0 => bytes += n,
                _ => return 0.0,
            }
            i += 1;
        }
        best = best.max(bytes as f64 / start.elapsed().as_secs_f64() / 1e6);
    }
    black_box(&dst);
    best
}

/// Prints one daemon's figures of one run.
pub fn progress(
    run: usize,
    runs: usize,
    threads: usize,
    label: &str,
    figures: &[(Row, usize, f64)],
) {
    let cells: Vec<String> = figures
        .iter()
        .map(|(row, depth, f)| format!("{}@{depth} {f:.0}", row.key()))
        .collect();
    println!(
        "run {run}/{runs} workers {threads} {label:<10} {}",
        cells.join("  ")
    );
}

/// Median, min and max.
pub fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some((med, s[0], s[n - 1]))
}

fn fmt_cell(v: &[f64]) -> String {
    match stats(v) {
        Some((m, lo, hi)) => format!("{m:>9.0} {:>17}", format!("{lo:.0}..{hi:.0}")),
        None => format!("{:>9} {:>17}", "-", ""),
    }
}

/// Median, min and max of the per-run ratios `a[i] / b[i]` (the two daemons' figures of run
/// `i`, measured one right after the other).
pub fn paired_ratio(a: &[f64], b: &[f64]) -> Option<(f64, f64, f64)> {
    let r: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, &y)| y > 0.0)
        .map(|(x, y)| x / y)
        .collect();
    stats(&r)
}

/// The target ratio of a row.
pub fn target(row: Row) -> f64 {
    if row.is_metadata() {
        1.25
    } else {
        1.0
    }
}

/// Prints the table.
pub fn table(
    rows: &[Row],
    depths: &[usize],
    threads: &[usize],
    daemons: &[DaemonSpec],
    results: &Results,
) {
    println!();
    let mut head = format!("{:<26} {:>2} {:>2}", "row", "qd", "w");
    for d in daemons {
        head += &format!(" {:>9} {:>17}", d.label, "min..max");
    }
    if daemons.len() > 1 {
        head += &format!(" {:>7} {:>11} {:>6}", "ratio", "min..max", "target");
    }
    println!("{head}");
    let mut behind = Vec::new();
    for &row in rows {
        for &t in threads {
            for &depth in depths {
                let Some(per) = results.get(&Cell {
                    row,
                    depth,
                    threads: t,
                }) else {
                    continue;
                };
                let mut line = format!("{:<26} {depth:>2} {t:>2}", row.label());
                for v in per.iter().take(daemons.len()) {
                    line += &format!(" {}", fmt_cell(v));
                }
                if let Some((ratio, lo, hi)) = per
                    .get(1)
                    .filter(|_| daemons.len() > 1)
                    .and_then(|b| paired_ratio(&per[0], b))
                {
                    let goal = target(row);
                    let mark = if ratio >= goal { "" } else { "  <" };
                    let spread = format!("{lo:.2}..{hi:.2}");
                    line += &format!(" {ratio:>7.2} {spread:>11} {goal:>6.2}{mark}");
                    if ratio < goal {
                        behind.push(format!("{}@qd{depth}/w{t}", row.key()));
                    }
                }
                for (k, what) in [(0, "memcpy"), (1, "pread")] {
                    let bound = per.get(daemons.len() + k).filter(|m| !m.is_empty());
                    if let Some(m) = bound {
                        if let Some((pct, ..)) = paired_ratio(&per[0], m) {
                            let mc = stats(m).map_or(0.0, |s| s.0);
                            line += &format!("  {:.0} % of {what} {mc:.0}", 100.0 * pct);
                        }
                    }
                }
                println!("{line}");
            }
        }
    }
    println!(
        "  qd: requests in flight; w: worker threads (1: the queue thread serves, 2: --thread-pool-size=2)"
    );
    println!("  ratio: median over the runs of vfsdaxd / reference, each pair measured back to back (above 1: vfsdaxd is faster); targets: metadata 1.25, data and mix 1.00");
    println!(
        "  % of memcpy / pread (READ 1 MiB): median over the runs of vfsdaxd's MB/s / the host's bound measured right before the cell, then the bound's median: memcpy = one thread copying 1 MiB blocks from a 64 MiB source into 32 MiB; pread = one thread reading the share's 64 MiB file (page cache) in 1 MiB preads into 32 MiB"
    );
    if daemons.len() > 1 {
        if behind.is_empty() {
            println!("  every cell at or above its target");
        } else {
            println!("  below target: {}", behind.join(" "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spread() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(stats(&[]), None);
    }

    #[test]
    fn ratios_are_paired_by_run() {
        let r = paired_ratio(&[2.0, 9.0, 3.0], &[1.0, 3.0, 3.0]).unwrap();
        assert_eq!(r, (2.0, 1.0, 3.0));
        assert_eq!(paired_ratio(&[1.0], &[0.0]), None);
    }

    #[test]
    fn targets_follow_the_row_kind() {
        assert_eq!(target(Row::Getattr), 1.25);
        assert_eq!(target(Row::Readdirplus), 1.25);
        assert_eq!(target(Row::Read(4096)), 1.0);
        assert_eq!(target(Row::Mix), 1.0);
    }
}
