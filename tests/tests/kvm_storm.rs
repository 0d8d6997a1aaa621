//! The truncation storm on real KVM, with `vfsdaxd` serving FUSE and the DAX window throughout
//! (`vfsdax_refvmm::storm`): 4 vCPU threads (user and kernel mode; opted in to apf errors, stock
//! apf, no apf) load and store through 64 mappings of 16 files while two host threads truncate,
//! regrow, punch holes, and unlink, recreate and remap (through the daemon) the files, and
//! truncate them through FUSE SETATTR, with the vCPUs running. The host-side event log is judged
//! by `storm::oracle`: one report per access past the end of its file, with the right file and
//! offset and the outcome its guest model calls for; none for an access inside the file; no hang,
//! crash, descriptor or mapping leak.
//!
//! Bounded: 20 s of storm by default. `VFSDAX_STORM_SECONDS`, `VFSDAX_STORM_VCPUS`,
//! `VFSDAX_STORM_FILES` and `VFSDAX_STORM_SEED` make the long run (docs/PERFORMANCE.md);
//! `VFSDAX_STORM_VIOLATIONS=FILE` writes every violation there.
//! The daemon runs with `--truncate-guard off`: the glue alone answers for lost pages (with the
//! guard, the daemon unmaps them first; `truncation_guard.rs` and `vmm_with_daemon.rs` cover
//! that).

use std::time::{Duration, Instant};

use vfsdax_refvmm::storm::{run, StormConfig};
use vfsdax_tests::harness::{daemon_program, error_chain, Daemon, DaemonOptions};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn truncation_storm_with_the_daemon_serving() {
    if !vfsdax_tests::require::kvm("truncation_storm_with_the_daemon_serving") {
        return;
    }
    assert!(daemon_program().is_ok(), "vfsdaxd not built");
    let seconds = env_u64("VFSDAX_STORM_SECONDS", 20);
    let vcpus = env_u64("VFSDAX_STORM_VCPUS", 4) as u32;
    let files = env_u64("VFSDAX_STORM_FILES", 16) as u32;
    let seed = env_u64("VFSDAX_STORM_SEED", 0x5707_2026);
    let chunks_per_file = 4;
    let window_mib = u64::from(files * chunks_per_file) * 2;
    let mut daemon = Daemon::start(&DaemonOptions {
        extra_args: vec![
            "--cache-size".into(),
            format!("{window_mib}M"),
            "--truncate-guard".into(),
            "off".into(),
        ],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let cfg = StormConfig {
        socket: daemon.socket().to_path_buf(),
        share: daemon.share().to_path_buf(),
        daemon_pid: Some(daemon.serving_pid()),
        duration: Duration::from_secs(seconds),
        vcpus,
        files,
        chunks_per_file,
        mutators: 2,
        pause: Duration::from_micros(300),
        seed,
    };
    let started = Instant::now();
    let result = run(&cfg).unwrap_or_else(|e| {
        panic!(
            "the storm could not run: {}\ndaemon log:\n{}",
            error_chain(&e),
            daemon.log_text()
        )
    });
    let t = result.tally();
    println!(
        "storm: {seconds} s, {vcpus} vCPUs, {} mappings of {} files, seed {seed:#x}: \
         {} accesses ({:?} per vCPU), {} completed, {} apf errors, {} machine checks, \
         {} completed while the page was briefly gone, {} reports; host: {:?}, {} shrinks; \
         {:.1} s in all",
        result.mappings,
        result.files_kept,
        t.accesses,
        result.per_vcpu,
        t.completed,
        t.apf_errors,
        t.machine_checks,
        t.raced_and_backed,
        t.reports,
        result.changes,
        result.shrinks,
        started.elapsed().as_secs_f64()
    );
    if let Ok(path) = std::env::var("VFSDAX_STORM_VIOLATIONS") {
        std::fs::write(&path, result.verdict.violations.join("\n")).expect("write violations");
    }
    let shown: Vec<&String> = result.verdict.violations.iter().take(20).collect();
    assert!(
        result.verdict.violations.is_empty(),
        "{} violations, the first ones:\n{shown:#?}\ndaemon log (tail):\n{}",
        result.verdict.violations.len(),
        tail(&daemon.log_text(), 40)
    );
    assert_eq!(result.mappings, (files * chunks_per_file) as usize);
    assert_eq!(result.files_kept, files as usize, "one descriptor per file");
    // The storm really stormed: every vCPU ran, tasks died both ways, files shrank and came back,
    // files were recreated and remapped, and another client truncated through the daemon.
    assert!(
        result.per_vcpu.iter().all(|&n| n > 100),
        "{:?}",
        result.per_vcpu
    );
    assert!(t.apf_errors > 0 && t.machine_checks > 0, "{t:?}");
    let c = &result.changes;
    assert!(
        c.host_truncations > 100 && c.regrowths > 100 && c.holes > 10,
        "{c:?}"
    );
    assert!(c.recreations > 0 && c.fuse_truncations > 0, "{c:?}");
    // The daemon served throughout and, its frontend gone, ended cleanly (no crash, no seccomp
    // kill).
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "the daemon did not end cleanly: {status:?}\n{}",
        daemon.log_text()
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
