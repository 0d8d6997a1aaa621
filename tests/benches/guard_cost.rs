//! What the truncation guard costs, measured in one run against the same daemon without it
//! (prints, asserts nothing about speed).
//!
//! `cargo bench -p vfsdax-tests --bench guard_cost` builds `vfsdaxd` in release mode (unless
//! `VFSDAX_DAEMON` names a daemon) and starts two: `--truncate-guard on` and `off`, each with a
//! 4 GiB window, the host-side driver as frontend and the glue's window as VMM. Then:
//! 1. SETUPMAPPING of the first chunk of a file (the guard marks the file, adds an inotify
//!    watch and keeps a descriptor) and REMOVEMAPPING (the guard lets it go), on each daemon,
//!    interleaved: the guard's share of a mapping round trip.
//! 2. With `VFSDAX_GUARD_FILES` (default 1,000) other files mapped (one live chunk each, so as
//!    many guarded files), `ftruncate` of a mapped victim to 0 by this process, as the truncating
//!    host process sees it (the guard cuts the chunk before the call returns), against the same
//!    call with the guard off (no cut). The victim is re-extended and remapped between samples.
//! 3. The daemon's resident memory and the kernel's unreclaimable slab before and after the
//!    files were mapped: memory per guarded file.
//! 4. The window of a truncation the kernel does not announce before (best effort): from
//!    `ftruncate` returning to the glue's table showing the chunk cut, (a) on a tmpfs share
//!    (`/dev/shm`: no pre-content events), (b) an unaligned size by a process the daemon cannot
//!    see (`--sandbox chroot` without CAP_SYS_PTRACE; under `namespace` the supervisor sees it).
//! 5. A host process's `pread` of a mapped file, guard on and off: every access waits for the
//!    guard's answer to its permission event.
//!
//! Medians of `VFSDAX_BENCH_N` (default 500) samples, in µs.

use std::fs::OpenOptions;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use vfsdax_tests::dax::{start_dax, start_dax_with, DaxSession, MIB2, NO_FH, R};
use vfsdax_tests::harness::{DaemonOptions, DAEMON_ENV};

fn median_us(samples: &mut [Duration]) -> f64 {
    samples.sort_unstable();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn build_daemon() -> Result<(), String> {
    if std::env::var_os(DAEMON_ENV).is_some() {
        return Ok(());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-q", "-p", "vfsdax-daemon", "--bin"])
        .arg("vfsdaxd")
        .status()
        .map_err(|e| format!("cannot run cargo to build vfsdaxd: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("building vfsdaxd failed ({status})"))
    }
}

/// A daemon with a 4 GiB window.
fn daemon(guard: &str) -> DaxSession {
    start_dax(&["--cache-size", "4G", "--truncate-guard", guard], 0)
}

/// `kB` field `key` of a `/proc` status-like file.
fn kb(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Sparse files `prefix0..prefixN` of 2 MiB in the share, looked up: their node ids.
fn files(d: &mut DaxSession, prefix: &str, n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}{i}");
            let f = std::fs::File::create(d.s.host(&name)).expect("create");
            f.set_len(MIB2).expect("size");
            d.file_lookup(&name)
        })
        .collect()
}

trait Lookup {
    fn file_lookup(&mut self, name: &str) -> u64;
}

impl Lookup for DaxSession {
    fn file_lookup(&mut self, name: &str) -> u64 {
        self.s
            .client
            .lookup(vfsdax_protocol::fuse::ROOT_ID, name.as_bytes())
            .expect("LOOKUP")
            .nodeid
    }
}

fn main() -> ExitCode {
    if let Err(e) = build_daemon() {
        eprintln!("guard_cost: {e}");
        return ExitCode::FAILURE;
    }
    let n = env_or("VFSDAX_BENCH_N", 500);
    let guarded_files = env_or("VFSDAX_GUARD_FILES", 1000);
    let mut on = daemon("on");
    let mut off = daemon("off");

    // 1. SETUPMAPPING of a file's first chunk, with and without the guard.
    let k = 64;
    let on_nodes = files(&mut on, "m", k);
    let off_nodes = files(&mut off, "m", k);
    let (mut map_on, mut map_off, mut unmap_on, mut unmap_off) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..(n + 50) {
        for (d, nodes, map, unmap) in [
            (&mut on, &on_nodes, &mut map_on, &mut unmap_on),
            (&mut off, &off_nodes, &mut map_off, &mut unmap_off),
        ] {
            let node = nodes[i % k];
            let t = Instant::now();
            d.map(node, NO_FH, 0, 0, MIB2, R).expect("map");
            let m = t.elapsed();
            let t = Instant::now();
            d.unmap(&[(0, MIB2)]).expect("unmap");
            let u = t.elapsed();
            if i >= 50 {
                map.push(m);
                unmap.push(u);
            }
        }
    }
    let (mon, moff) = (median_us(&mut map_on), median_us(&mut map_off));
    let (uon, uoff) = (median_us(&mut unmap_on), median_us(&mut unmap_off));

    // 2. and 3. Many guarded files, then truncations of a victim.
    let pid = on.s.daemon.pid();
    let rss0 = kb(&format!("/proc/{pid}/status"), "VmRSS:");
    let slab0 = kb("/proc/meminfo", "SUnreclaim:");
    let mut truncate_on = Vec::new();
    let mut truncate_off = Vec::new();
    let mut nodes_on = Vec::new();
    for (d, nodes) in [(&mut on, &mut nodes_on), (&mut off, &mut Vec::new())] {
        *nodes = files(d, "g", guarded_files);
        for (i, &node) in nodes.iter().enumerate() {
            d.map(node, NO_FH, 0, (i as u64 + 2) * MIB2, MIB2, R)
                .expect("map a guarded file");
        }
    }
    let rss1 = kb(&format!("/proc/{pid}/status"), "VmRSS:");
    let slab1 = kb("/proc/meminfo", "SUnreclaim:");
    for (d, samples) in [(&mut on, &mut truncate_on), (&mut off, &mut truncate_off)] {
        let victim = d.file_lookup("m0");
        let f = OpenOptions::new()
            .write(true)
            .open(d.s.host("m0"))
            .expect("open the victim");
        for i in 0..(n + 20) {
            f.set_len(MIB2).expect("extend");
            d.map(victim, NO_FH, 0, 0, MIB2, R).expect("map the victim");
            let t = Instant::now();
            f.set_len(0).expect("truncate");
            let took = t.elapsed();
            d.unmap(&[(0, MIB2)]).expect("unmap the victim");
            if i >= 20 {
                samples.push(took);
            }
        }
    }
    let (ton, toff) = (median_us(&mut truncate_on), median_us(&mut truncate_off));

    // 4. A host process reading a guarded file: every read waits for the guard's answer, reads
    // of whole pages also for a look at the caller's call (a collapsed range has their shape).
    let reads: [(u64, usize); 3] = [(10, 100), (0, 4096), (0, 65536)];
    let mut read_us = [[0.0f64; 2]; 3];
    for (col, d) in [&mut on, &mut off].into_iter().enumerate() {
        let victim = d.file_lookup("m0");
        let path = d.s.host("m0");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(MIB2))
            .expect("extend the victim");
        d.map(victim, NO_FH, 0, 0, MIB2, R).expect("map the victim");
        // Opened after the mark: the kernel decides at open whether a file's accesses notify.
        let f = std::fs::File::open(&path).expect("open the victim");
        let mut buf = vec![0u8; 65536];
        for (row, &(off, len)) in reads.iter().enumerate() {
            let mut samples = Vec::new();
            for i in 0..(n + 20) {
                let t = Instant::now();
                std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf[..len], off).expect("pread");
                if i >= 20 {
                    samples.push(t.elapsed());
                }
            }
            read_us[row][col] = median_us(&mut samples);
        }
        d.unmap(&[(0, MIB2)]).expect("unmap the victim");
    }
    let mut sorted = truncate_on.clone();
    sorted.sort_unstable();
    let p99 = sorted[sorted.len() * 99 / 100].as_secs_f64() * 1e6;

    drop(on);
    drop(off);
    let (tmpfs, tmpfs_max) = after_the_fact_window(
        &DaemonOptions {
            temp_in: Some("/dev/shm".into()),
            ..Default::default()
        },
        n.min(200),
        0,
    );
    let (hidden, hidden_max) = after_the_fact_window(
        &DaemonOptions {
            // The daemon alone reads callers' calls there, and without CAP_SYS_PTRACE it
            // cannot read those of a process with capabilities it dropped (this one).
            extra_args: vec!["--sandbox".into(), "chroot".into()],
            ..Default::default()
        },
        n.min(200),
        100,
    );

    println!("guard_cost: medians of {n} samples, 2 MiB chunks, window 4 GiB, release vfsdaxd");
    println!("  SETUPMAPPING, first chunk of a file:  guard on {mon:8.1} us   off {moff:8.1} us   {:+.1} % ", (mon / moff - 1.0) * 100.0);
    println!("  REMOVEMAPPING, last chunk of a file:  guard on {uon:8.1} us   off {uoff:8.1} us   {:+.1} %", (uon / uoff - 1.0) * 100.0);
    println!(
        "  ftruncate of a mapped file to 0 with {guarded_files} other guarded files mapped: guard \
         on {ton:8.1} us (p99 {p99:.1})   off {toff:8.1} us"
    );
    println!(
        "  memory for {guarded_files} guarded files: daemon RSS {rss0} -> {rss1} kB ({:.0} bytes \
         per file); kernel unreclaimable slab {slab0} -> {slab1} kB ({:.0} bytes per file, the \
         off daemon's {guarded_files} plain mappings included)",
        (rss1.saturating_sub(rss0) * 1024) as f64 / guarded_files as f64,
        (slab1.saturating_sub(slab0) * 1024) as f64 / guarded_files as f64
    );
    for (&(off, len), [ron, roff]) in reads.iter().zip(read_us) {
        println!(
            "  host pread of {len} bytes at {off} of a mapped file: guard on {ron:8.1} us   off \
             {roff:8.1} us"
        );
    }
    println!(
        "  after the fact, ftruncate returned to the chunk cut: tmpfs share {tmpfs:.1} us (max \
         {tmpfs_max:.1}); unaligned size by a caller the daemon cannot see (--sandbox chroot) \
         {hidden:.1} us (max {hidden_max:.1})"
    );
    ExitCode::SUCCESS
}

/// Median and maximum µs from `ftruncate` (to `size`) returning to the glue's table no longer
/// holding the file's whole chunk, over `n` samples.
fn after_the_fact_window(opts: &DaemonOptions, n: usize, size: u64) -> (f64, f64) {
    let mut d = start_dax_with(opts, 0);
    let node = files(&mut d, "a", 1)[0];
    let f = OpenOptions::new()
        .write(true)
        .open(d.s.host("a0"))
        .expect("open");
    let mut samples = Vec::new();
    for _ in 0..n {
        f.set_len(MIB2).expect("extend");
        d.map(node, NO_FH, 0, 0, MIB2, R).expect("map");
        let whole = d.conn.window().table().lookup(0).expect("mapped").identity;
        f.set_len(size).expect("truncate");
        let t = Instant::now();
        while d
            .conn
            .window()
            .table()
            .lookup(0)
            .is_some_and(|m| m.len == MIB2 && m.identity == whole)
        {
            if t.elapsed() > Duration::from_secs(5) {
                panic!("the guard never cut the chunk\n{}", d.s.daemon.log_text());
            }
            std::hint::spin_loop();
        }
        samples.push(t.elapsed());
        d.unmap(&[(0, MIB2)]).expect("unmap");
    }
    let max = samples.iter().max().copied().unwrap_or_default();
    (median_us(&mut samples), max.as_secs_f64() * 1e6)
}
