//! `vfsdaxd` as a process: clean shutdown on SIGTERM/SIGINT and when the frontend goes away,
//! and clear errors for a missing share, an unusable socket path, a socket in use, invalid
//! confinement modes and unknown flags.

use std::process::{Command, Output};
use std::time::Duration;

use vfsdax_driver::ClientOptions;
use vfsdax_tests::harness::{daemon_program, peer_is_virtiofsd, Daemon, DaemonOptions, TempDir};

const EXIT_WAIT: Duration = Duration::from_secs(10);

fn signal(d: &Daemon, sig: i32) {
    let pid = i32::try_from(d.pid()).expect("pid fits");
    // SAFETY: kill only sends a signal to the daemon process this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// Runs the daemon with `args` and returns its output; it must exit by itself.
fn run(args: &[&str]) -> Output {
    let program =
        daemon_program().unwrap_or_else(|e| panic!("{}", vfsdax_tests::harness::error_chain(&e)));
    Command::new(program)
        .args(args)
        .output()
        .expect("vfsdaxd runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn skip_for_peer() -> bool {
    if peer_is_virtiofsd() {
        eprintln!("SKIPPED: vfsdaxd-specific process behaviour, not checked against virtiofsd");
        return true;
    }
    false
}

#[test]
fn sigterm_before_a_frontend_connects_exits_cleanly_and_removes_the_socket() {
    if skip_for_peer() {
        return;
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut d = Daemon::start(&DaemonOptions::default()).expect("daemon starts");
        signal(&d, sig);
        let status = d
            .wait_exit(EXIT_WAIT)
            .unwrap_or_else(|| panic!("daemon exits on the signal; daemon log:\n{}", d.log_text()));
        assert!(
            status.success(),
            "signal {sig}: {status:?}\n{}",
            d.log_text()
        );
        assert!(
            !d.socket().exists(),
            "socket file left behind after signal {sig}"
        );
    }
}

#[test]
fn sigterm_while_a_frontend_is_connected_exits_cleanly() {
    if skip_for_peer() {
        return;
    }
    let mut d = Daemon::start(&DaemonOptions::default()).expect("daemon starts");
    let mut client = d.connect(ClientOptions::default()).expect("connect");
    client.init().expect("INIT");
    client.getattr(1, None).expect("GETATTR on the root");
    signal(&d, libc::SIGTERM);
    let status = d
        .wait_exit(EXIT_WAIT)
        .unwrap_or_else(|| panic!("daemon exits on SIGTERM; daemon log:\n{}", d.log_text()));
    assert!(status.success(), "{status:?}\n{}", d.log_text());
    drop(client);
}

#[test]
fn the_daemon_exits_when_the_frontend_disconnects() {
    if skip_for_peer() {
        return;
    }
    let mut d = Daemon::start(&DaemonOptions::default()).expect("daemon starts");
    let mut client = d.connect(ClientOptions::default()).expect("connect");
    client.init().expect("INIT");
    assert!(d.is_alive());
    drop(client);
    let status = d.wait_exit(EXIT_WAIT).unwrap_or_else(|| {
        panic!(
            "daemon exits after the disconnect; daemon log:\n{}",
            d.log_text()
        )
    });
    assert!(status.success(), "{status:?}\n{}", d.log_text());
    assert!(
        d.log_text().contains("frontend disconnected"),
        "{}",
        d.log_text()
    );
}

#[test]
fn a_missing_share_is_a_clear_error() {
    if skip_for_peer() {
        return;
    }
    let tmp = TempDir::new("vfsdax-lifecycle").unwrap();
    let sock = tmp.path().join("s");
    let missing = tmp.path().join("no-such-dir");
    let o = run(&[
        "--socket-path",
        sock.to_str().unwrap(),
        "--shared-dir",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("no-such-dir"), "names the share: {e}");
    assert!(!sock.exists(), "no socket for a daemon that cannot serve");
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let o = run(&[
        "--socket-path",
        sock.to_str().unwrap(),
        "--shared-dir",
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("plain-file"), "{}", stderr(&o));
}

#[test]
fn unusable_and_busy_socket_paths_are_clear_errors() {
    if skip_for_peer() {
        return;
    }
    let tmp = TempDir::new("vfsdax-lifecycle").unwrap();
    let share = tmp.path();
    let bad = tmp.path().join("no-such-dir").join("s");
    let o = run(&[
        "--socket-path",
        bad.to_str().unwrap(),
        "--shared-dir",
        share.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("no-such-dir") && e.contains("No such file"),
        "{e}"
    );

    let d = Daemon::start(&DaemonOptions::default()).expect("daemon starts");
    let o = run(&[
        "--socket-path",
        d.socket().to_str().unwrap(),
        "--shared-dir",
        share.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("already in use"), "{}", stderr(&o));
    assert!(
        d.socket().exists(),
        "the running daemon's socket must survive"
    );
}

#[test]
fn confinement_modes_and_unknown_flags_are_refused() {
    if skip_for_peer() {
        return;
    }
    // --sandbox takes virtiofsd's values (tests/tests/sandbox.rs runs them); others are refused.
    let o = run(&[
        "--socket-path=/tmp/x",
        "--shared-dir=/tmp",
        "--sandbox",
        "jail",
    ]);
    assert_eq!(o.status.code(), Some(2), "clap's usage error");
    assert!(
        stderr(&o).contains("[possible values: none, namespace, chroot]"),
        "{}",
        stderr(&o)
    );
    // --seccomp takes virtiofsd's values (tests/tests/seccomp.rs runs them); others are refused.
    let o = run(&[
        "--socket-path=/tmp/x",
        "--shared-dir=/tmp",
        "--seccomp",
        "allow",
    ]);
    assert_eq!(o.status.code(), Some(2), "clap's usage error");
    assert!(
        stderr(&o).contains("[possible values: none, log, trap, kill]"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "--socket-path=/tmp/x",
        "--shared-dir=/tmp",
        "--socket-pth=/tmp/y",
    ]);
    assert_eq!(o.status.code(), Some(2), "clap's usage error");
    let e = stderr(&o);
    assert!(e.contains("unexpected argument"), "{e}");
    assert!(
        e.contains("--socket-path"),
        "hints at the similar flag: {e}"
    );
}

#[test]
fn print_capabilities_is_json_for_libvirt() {
    if skip_for_peer() {
        return;
    }
    let o = run(&["--print-capabilities"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("\"type\": \"fs\""), "{out}");
}
