//! A real Linux guest (Debian 6.1 cloud kernel, TCG) mounts the share with `mount -t virtiofs`
//! and runs a POSIX workload; the host then checks what the guest wrote.
//!
//! `vfsdax_daemon_serves_the_workload` runs against our `vfsdaxd`, `..._with_a_dax_window_...`
//! against `vfsdaxd --cache-size 64M` (the guest falls back to its page cache: QEMU 7.2 has no
//! SHMEM), `..._under_seccomp_kill_...` against `vfsdaxd --seccomp kill`,
//! `..._in_a_namespace_sandbox_...` against `vfsdaxd --sandbox namespace --seccomp kill`.
//! `peer_virtiofsd_...` runs the same workload against the reference `virtiofsd` (ignored
//! unless `VFSDAX_PEER=1`), which validates the harness itself.
//!
//! Missing QEMU or kernel: a failure when `CI` is set, otherwise a visible `SKIPPED` line.

use std::io::Write;
use std::path::Path;

use vfsdax_tests::guest::daemon;
use vfsdax_tests::guest::scratch::ScratchDir;
use vfsdax_tests::guest::workload::{verify_share, EXPECTED_STEPS};
use vfsdax_tests::guest::{run_guest, GuestSetup, Mode, RunOptions};

/// The guest set-up, or `None` after printing why the test is skipped (never in CI).
fn setup_or_skip() -> Option<GuestSetup> {
    match GuestSetup::detect() {
        Ok(setup) => Some(setup),
        Err(e) => {
            let reason = error_chain(&e);
            if std::env::var_os("CI").is_some() {
                panic!("CI is set, so this test may not be skipped: {reason}");
            }
            say(&format!("SKIPPED: {reason}"));
            None
        }
    }
}

/// Writes a line straight to stderr: unlike `eprintln!`, the test harness does not capture it,
/// so a skip or a timing shows up in a normal `cargo test` run.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Runs the workload against `daemon_program` started with the common arguments plus `extra`.
fn run_workload(setup: &GuestSetup, daemon_program: &Path, label: &str, extra: &[&str]) {
    let work = ScratchDir::new(label).expect("scratch directory");
    let share = work.path().join("share");
    std::fs::create_dir(&share).expect("share directory");
    let mut opts = RunOptions::new(Mode::Workload);
    opts.daemon_args = extra.iter().map(|a| a.into()).collect();
    let run = run_guest(setup, daemon_program, &share, &opts, work.path()).unwrap_or_else(|e| {
        panic!(
            "guest run with {}: {}",
            daemon_program.display(),
            error_chain(&e)
        )
    });
    say(&format!(
        "{label}: guest run took {:.1} s ({}; kernel {}, daemon {}, work dir {})",
        run.qemu.elapsed.as_secs_f64(),
        run.report.timing_summary(),
        setup.kernel.release,
        daemon_program.display(),
        work.path().display()
    ));
    let problems = run.report.problems(EXPECTED_STEPS);
    assert!(
        problems.is_empty(),
        "the guest workload failed:\n  {}\n{}",
        problems.join("\n  "),
        run.diagnostics()
    );
    let problems = verify_share(&share, &run.report);
    assert!(
        problems.is_empty(),
        "the share on the host does not hold what the guest wrote:\n  {}\n{}",
        problems.join("\n  "),
        run.diagnostics()
    );
}

/// Runs the workload against our `vfsdaxd` started with `args` (skipped, visibly, only off CI
/// when QEMU or the kernel is missing).
fn vfsdaxd_workload(label: &str, args: &[&str]) {
    let Some(setup) = setup_or_skip() else {
        return;
    };
    let program = daemon::vfsdaxd_path().unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    run_workload(&setup, &program, label, args);
}

#[test]
fn vfsdax_daemon_serves_the_workload() {
    vfsdaxd_workload("guest-vfsdaxd", &[]);
}

/// The daemon with a DAX window (`--cache-size 64M`): it offers SHMEM, MAP_ALIGNMENT and
/// HAS_INODE_DAX and marks files `FUSE_ATTR_DAX`, but QEMU 7.2 has no SHMEM (no cache region
/// for the guest), so the guest mounts without DAX, uses its page cache, and the same workload
/// must pass.
#[test]
fn vfsdax_daemon_with_a_dax_window_serves_the_workload() {
    vfsdaxd_workload(
        "guest-vfsdaxd-dax",
        &["--cache-size", "64M", "--dax-policy", "always"],
    );
}

/// The same workload with the daemon under its seccomp filter (`--seccomp kill`): a system
/// call outside the allowlist kills the daemon and fails the run.
#[test]
fn vfsdax_daemon_under_seccomp_kill_serves_the_workload() {
    vfsdaxd_workload("guest-vfsdaxd-seccomp", &["--seccomp", "kill"]);
}

/// The same workload with the daemon in its namespace sandbox (the share is its root) and under
/// its seccomp filter: `--sandbox namespace --seccomp kill`.
#[test]
fn vfsdax_daemon_in_a_namespace_sandbox_serves_the_workload() {
    vfsdaxd_workload(
        "guest-vfsdaxd-sandbox",
        &["--sandbox", "namespace", "--seccomp", "kill"],
    );
}

#[test]
#[ignore = "runs against the reference virtiofsd: VFSDAX_PEER=1 cargo test -- --include-ignored peer"]
fn peer_virtiofsd_serves_the_workload() {
    if std::env::var_os("VFSDAX_PEER").is_none_or(|v| v != "1") {
        say("SKIPPED: set VFSDAX_PEER=1 to run the workload against virtiofsd");
        return;
    }
    let Some(setup) = setup_or_skip() else {
        return;
    };
    let program = daemon::virtiofsd_path().expect(
        "VFSDAX_PEER=1 but virtiofsd is not on PATH or in ~/.cargo/bin (cargo install virtiofsd)",
    );
    run_workload(&setup, &program, "guest-virtiofsd", &[]);
}

/// The Debian kernel's own `.modinfo` gives the load order known to work: dependencies first,
/// nothing missing.
#[test]
fn debian_kernel_modules_load_in_a_working_order() {
    let Some(setup) = setup_or_skip() else {
        return;
    };
    let names: Vec<&str> = setup
        .kernel
        .modules
        .iter()
        .map(|m| m.info.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "virtio_ring",
            "virtio_pci_modern_dev",
            "virtio_pci_legacy_dev",
            "virtio",
            "virtio_pci",
            "fuse",
            "virtiofs"
        ],
        "module order for kernel {}",
        setup.kernel.release
    );
    assert!(setup.kernel.modules.iter().all(|m| m.path.is_file()));
}
