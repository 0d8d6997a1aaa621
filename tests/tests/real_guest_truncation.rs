//! The truncation repro on a stock QEMU >= 11.1 (tests/src/guest/repro.rs, the same as
//! scripts/repro-truncate-qemu.sh): a real Linux guest task maps an 8 MiB DAX file and reads it,
//! a host process truncates the file to 0, the task reads the same page again.
//!
//! - With the daemon's truncation guard (the default, zero pages): the VM lives, the task reads
//!   zeros, the share still serves files, and the daemon reported the truncation once.
//! - With `--truncate-guard-action unmap`: the VM lives as well (QEMU reads an unbacked range of
//!   its window as zeros).
//! - With `--truncate-guard off`: QEMU is killed by SIGBUS, the baseline the guard exists for.
//!
//! Missing QEMU >= 11.1, kernel or C compiler: a failure when `CI` is set, otherwise a visible
//! `SKIPPED` line.

use std::io::Write;

use vfsdax_tests::dax::guard_reports;
use vfsdax_tests::guest::daemon;
use vfsdax_tests::guest::repro::{run_repro, Repro, TaskFate, VmFate};
use vfsdax_tests::guest::scratch::ScratchDir;
use vfsdax_tests::guest::GuestSetup;
use vfsdax_tests::harness::error_chain;

fn setup_or_skip() -> Option<GuestSetup> {
    match GuestSetup::detect_dax() {
        Ok(s) => Some(s),
        Err(e) => {
            let reason = error_chain(&e);
            if std::env::var_os("CI").is_some() {
                panic!("CI is set, so this test may not be skipped: {reason}");
            }
            let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
            None
        }
    }
}

fn repro(label: &str, daemon_args: &[&str]) -> Option<Repro> {
    let setup = setup_or_skip()?;
    let program = daemon::vfsdaxd_path().unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let work = ScratchDir::new(label).expect("scratch directory");
    let args: Vec<String> = daemon_args.iter().map(|a| a.to_string()).collect();
    let r = run_repro(&setup, &program, &args, &work)
        .unwrap_or_else(|e| panic!("repro: {}", error_chain(&e)));
    let _ = writeln!(
        std::io::stderr(),
        "{label}: {} ({:.1} s)",
        r.outcome.line(),
        r.run.qemu.elapsed.as_secs_f64()
    );
    assert!(
        r.truncate.as_ref().is_ok_and(|s| s.success()),
        "the host truncation did not happen: {:?}\n{}",
        r.truncate,
        r.run.diagnostics()
    );
    Some(r)
}

#[test]
fn the_guard_keeps_the_vm_alive_and_the_task_reads_zeros() {
    let Some(r) = repro("guest-guard-zero", &[]) else {
        return;
    };
    let o = &r.outcome;
    let diag = r.run.diagnostics();
    assert!(o.vm_alive(), "{}\n{diag}", o.line());
    assert_eq!(
        o.task,
        TaskFate::Read("0".repeat(32)),
        "the task reads the zero pages\n{diag}"
    );
    assert!(o.share_serving, "the share serves after the event\n{diag}");
    let reports = guard_reports(&r.run.daemon_log);
    assert_eq!(reports.len(), 1, "{reports:?}\n{diag}");
    assert_eq!(reports[0]["size_after"].as_u64(), Some(0));
    assert_eq!(reports[0]["trigger"], "pre-content");
    assert_eq!(reports[0]["action"], "zero");
}

#[test]
fn with_the_unmap_action_the_vm_lives_too() {
    let Some(r) = repro("guest-guard-unmap", &["--truncate-guard-action", "unmap"]) else {
        return;
    };
    let diag = r.run.diagnostics();
    assert!(r.outcome.vm_alive(), "{}\n{diag}", r.outcome.line());
    assert!(r.outcome.share_serving, "{diag}");
    assert_eq!(guard_reports(&r.run.daemon_log).len(), 1, "{diag}");
}

#[test]
fn without_the_guard_qemu_dies_of_sigbus() {
    let Some(r) = repro("guest-guard-off", &["--truncate-guard", "off"]) else {
        return;
    };
    let diag = r.run.diagnostics();
    assert_eq!(
        r.outcome.vm,
        VmFate::KilledBySignal(libc::SIGBUS),
        "{}\n{diag}",
        r.outcome.line()
    );
    assert!(guard_reports(&r.run.daemon_log).is_empty(), "{diag}");
}
