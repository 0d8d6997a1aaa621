//! `vfsdaxd --sandbox namespace|chroot`: the sandbox is real (the daemon's root and working
//! directory are the share; under `namespace` it is the child of a supervisor that stays
//! outside, PID 1 of its own PID namespace with its own `/proc`, and its mount, network and IPC
//! namespaces are not this process's either), nothing appears inside the share, every kind of request still works (xattrs
//! included, which reach files through the descriptor of `/proc/self/fd` held from before the
//! root changed), the escapes still fail, and the socket files go away on exit and on SIGTERM.
//! `namespace` is also run under `--seccomp kill`.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use vfsdax_driver::ClientOptions;
use vfsdax_protocol::fuse::flags::RENAME_NOREPLACE;
use vfsdax_protocol::fuse::{SetattrIn, ROOT_ID};
use vfsdax_tests::harness::{expect_errno, pattern, Daemon, DaemonOptions, Session};
use vfsdax_tests::workload::{
    create_write_read_back, disconnect_and_expect_success, ok, readdir_names, xattr_round_trip,
    EXIT_WAIT,
};

/// The peer virtiofsd has its own sandbox, with another command line: these tests are ours.
fn skip_for_peer() -> bool {
    vfsdax_tests::workload::skip_for_peer("sandbox")
}

fn options(sandbox: &str, extra: &[&str]) -> DaemonOptions {
    let mut extra_args = vec!["--sandbox".to_string(), sandbox.to_string()];
    extra_args.extend(extra.iter().map(|a| a.to_string()));
    DaemonOptions {
        xattr: true,
        extra_args,
        ..Default::default()
    }
}

/// `readlink /proc/<pid>/ns/<ns>` (`pid` 0: this process).
fn namespace(pid: u32, ns: &str) -> String {
    let path = if pid == 0 {
        format!("/proc/self/ns/{ns}")
    } else {
        format!("/proc/{pid}/ns/{ns}")
    };
    let link = std::fs::read_link(&path).unwrap_or_else(|e| panic!("readlink {path}: {e}"));
    link.to_string_lossy().into_owned()
}

fn dev_ino(p: &Path) -> (u64, u64) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    (m.dev(), m.ino())
}

/// The process that serves: under `namespace` the supervisor's only child, else the process
/// started.
fn daemon_pid(d: &Daemon, mode: &str) -> u32 {
    if mode != "namespace" {
        return d.pid();
    }
    let path = format!("/proc/{0}/task/{0}/children", d.pid());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let children: Vec<u32> = text
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert_eq!(children.len(), 1, "the supervisor has one child: {text:?}");
    children[0]
}

/// Checks that the serving daemon runs in the sandbox `mode`.
fn assert_sandboxed(d: &Daemon, mode: &str) {
    let pid = daemon_pid(d, mode);
    let share = dev_ino(d.share());
    let proc_dir = Path::new("/proc").join(pid.to_string());
    assert_eq!(
        dev_ino(&proc_dir.join("root")),
        share,
        "--sandbox {mode}: the daemon's root is the share"
    );
    assert_eq!(
        dev_ino(&proc_dir.join("cwd")),
        share,
        "--sandbox {mode}: the daemon's working directory is the share's root"
    );
    for ns in ["mnt", "pid", "net", "ipc"] {
        let (own, its) = (namespace(0, ns), namespace(pid, ns));
        if mode == "namespace" {
            assert_ne!(own, its, "--sandbox namespace: a {ns} namespace of its own");
        } else {
            assert_eq!(own, its, "--sandbox {mode}: no new {ns} namespace");
        }
    }
    // Every thread is inside, not only the main one.
    let tasks = std::fs::read_dir(proc_dir.join("task")).expect("tasks");
    for t in tasks {
        let t = t.expect("task").path();
        assert_eq!(dev_ino(&t.join("root")), share, "{}", t.display());
        if mode == "namespace" {
            let ns = std::fs::read_link(t.join("ns/mnt")).expect("ns");
            assert_eq!(ns.to_string_lossy(), namespace(pid, "mnt"));
        }
    }
    if mode == "namespace" {
        // PID 1 of its namespace, and the /proc it holds is that namespace's (its
        // /proc/self/fd is "/1/fd" there), not the host's.
        let status = std::fs::read_to_string(proc_dir.join("status")).expect("status");
        let nspid = status
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .expect("NSpid");
        assert!(nspid.ends_with("\t1"), "{nspid}");
        let fds = std::fs::read_dir(proc_dir.join("fd")).expect("fds");
        let links: Vec<String> = fds
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|l| l.to_string_lossy().into_owned())
            .collect();
        assert!(links.iter().any(|l| l == "/1/fd"), "{links:?}");
        // The supervisor stays outside: in this process's namespaces, with the host's root.
        assert_ne!(namespace(d.pid(), "pid"), namespace(pid, "pid"));
        for ns in ["mnt", "net", "ipc"] {
            assert_eq!(
                namespace(d.pid(), ns),
                namespace(0, ns),
                "the supervisor keeps the host's {ns} namespace"
            );
        }
        assert_eq!(
            dev_ino(&Path::new("/proc").join(d.pid().to_string()).join("root")),
            dev_ino(Path::new("/")),
            "the supervisor's root is the host's"
        );
    }
    let line = format!("sandbox entered (--sandbox {mode})");
    assert!(d.log_text().contains(&line), "{}", d.log_text());
    // Nothing was mounted or made inside the share (no proc, no old root).
    let names: Vec<_> = std::fs::read_dir(d.share())
        .expect("list share")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(names.is_empty(), "the share gained {names:?}");
}

fn lgetxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let cp = CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    let cn = CString::new(name).expect("name");
    let mut buf = [0u8; 256];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let n = unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), 256) };
    usize::try_from(n).ok().map(|n| buf[..n].to_vec())
}

/// Requests of every kind through the sandboxed daemon, checked on the host.
fn workload(s: &mut Session) {
    let d = &mut s.daemon;
    let c = &mut s.client;
    let share = d.share().to_path_buf();
    let outside = d.outside();
    let rw = libc::O_RDWR as u32;

    // A file the host made; create, write, read back.
    std::fs::write(share.join("host.txt"), b"from the host").unwrap();
    let h = ok(d, "LOOKUP", c.lookup(ROOT_ID, b"host.txt"));
    let ho = ok(d, "OPEN", c.open(h.nodeid, libc::O_RDONLY as u32));
    assert_eq!(
        ok(d, "READ", c.read(h.nodeid, ho.fh, 0, 4096)),
        b"from the host"
    );
    ok(d, "RELEASE", c.release(h.nodeid, ho.fh, 0));
    let data = pattern(150_000, 3);
    let (n, no) = create_write_read_back(d, c, b"new", &data);
    ok(d, "FSYNC", c.fsync(n.nodeid, no.fh, false));
    ok(d, "RELEASE new", c.release(n.nodeid, no.fh, rw));
    assert_eq!(std::fs::read(share.join("new")).unwrap(), data);
    let set = SetattrIn {
        valid: vfsdax_protocol::fuse::flags::fattr::MODE,
        mode: 0o600,
        ..Default::default()
    };
    ok(d, "SETATTR", c.setattr(n.nodeid, &set));
    assert_eq!(
        std::fs::metadata(share.join("new")).unwrap().mode() & 0o7777,
        0o600
    );

    // Directories, links, renames, listing, unlink.
    let sub = ok(d, "MKDIR", c.mkdir(ROOT_ID, b"sub", 0o755, 0));
    ok(d, "LINK", c.link(n.nodeid, sub.nodeid, b"hard"));
    assert_eq!(std::fs::metadata(share.join("new")).unwrap().nlink(), 2);
    ok(
        d,
        "RENAME",
        c.rename(sub.nodeid, b"hard", ROOT_ID, b"moved"),
    );
    assert!(share.join("moved").exists() && !share.join("sub/hard").exists());
    let r = c.rename2(ROOT_ID, b"moved", ROOT_ID, b"new", RENAME_NOREPLACE);
    assert_eq!(expect_errno(r), libc::EEXIST);
    let dh = ok(d, "OPENDIR", c.opendir(ROOT_ID, 0));
    let mut names = readdir_names(d, c, ROOT_ID, dh.fh, 8192);
    names.retain(|n| n != b"." && n != b"..");
    names.sort();
    assert_eq!(
        names,
        [&b"host.txt"[..], b"moved", b"new", b"sub"],
        "READDIR lists the share's root"
    );
    ok(d, "RELEASEDIR", c.releasedir(ROOT_ID, dh.fh));
    ok(d, "UNLINK", c.unlink(ROOT_ID, b"moved"));
    assert!(!share.join("moved").exists());
    assert!(ok(d, "STATFS", c.statfs(ROOT_ID)).st.blocks > 0);

    // Extended attributes on a file, a directory and a symlink (the link itself).
    xattr_round_trip(d, c, n.nodeid, |_, _| {
        assert_eq!(
            lgetxattr(&share.join("new"), "user.k").as_deref(),
            Some(&b"v1"[..])
        );
    });
    assert_eq!(lgetxattr(&share.join("new"), "user.k"), None);
    ok(
        d,
        "SETXATTR dir",
        c.setxattr(sub.nodeid, b"user.d", b"dv", 0),
    );
    assert_eq!(
        lgetxattr(&share.join("sub"), "user.d").as_deref(),
        Some(&b"dv"[..])
    );
    let l = ok(d, "SYMLINK", c.symlink(sub.nodeid, b"l", b"../new"));
    // trusted.* is the host's (the default xattr policy refuses it), on the link as anywhere.
    assert_eq!(
        expect_errno(c.setxattr(l.nodeid, b"trusted.t", b"lv", 0)),
        libc::EPERM,
        "trusted xattrs are refused"
    );
    assert_eq!(lgetxattr(&share.join("sub/l"), "trusted.t"), None);
    assert_eq!(
        lgetxattr(&share.join("new"), "trusted.t"),
        None,
        "nor on its target"
    );
    assert_eq!(
        expect_errno(c.setxattr(l.nodeid, b"user.k", b"v", 0)),
        libc::EPERM,
        "user xattrs are not allowed on the link itself"
    );

    // Escapes: names with '/', '..' at the root, symlinks pointing outside.
    std::fs::write(outside.join("secret"), b"top secret").unwrap();
    std::os::unix::fs::symlink(&outside, share.join("escdir")).unwrap();
    std::os::unix::fs::symlink("../outside/secret", share.join("rel")).unwrap();
    let root_ino = std::fs::metadata(&share).unwrap().ino();
    let up = ok(d, "LOOKUP ..", c.lookup(ROOT_ID, b".."));
    assert_eq!(up.attr.ino, root_ino, ".. of the root is the root");
    assert_eq!(expect_errno(c.lookup(up.nodeid, b"outside")), libc::ENOENT);
    assert_eq!(expect_errno(c.lookup(ROOT_ID, b"../outside")), libc::EINVAL);
    assert_eq!(
        expect_errno(c.create(ROOT_ID, b"../outside/x", rw, 0o644, 0)),
        libc::EINVAL
    );
    let esc = ok(d, "LOOKUP escdir", c.lookup(ROOT_ID, b"escdir"));
    assert_eq!(esc.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_ne!(expect_errno(c.lookup(esc.nodeid, b"secret")), 0);
    assert_ne!(
        expect_errno(c.create(esc.nodeid, b"planted", rw, 0o644, 0)),
        0
    );
    assert_ne!(expect_errno(c.opendir(esc.nodeid, 0)), 0);
    let rel = ok(d, "LOOKUP rel", c.lookup(ROOT_ID, b"rel"));
    assert_eq!(
        expect_errno(c.open(rel.nodeid, libc::O_RDONLY as u32)),
        libc::ELOOP
    );
    assert_eq!(
        ok(d, "READLINK", c.readlink(rel.nodeid)),
        b"../outside/secret"
    );
    assert_eq!(
        expect_errno(c.getxattr(esc.nodeid, b"user.k", 64)),
        libc::ENODATA,
        "the link's xattrs, not its target's"
    );
    assert_eq!(
        std::fs::read(outside.join("secret")).unwrap(),
        b"top secret"
    );
    let out: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(out, ["secret"], "nothing was made outside the share");
}

/// Drops the driver; the daemon exits 0 and removes its socket and lock file.
fn disconnect_and_expect_clean_exit(s: Session) {
    let daemon = disconnect_and_expect_success(s);
    assert_socket_files_gone(&daemon);
}

fn assert_socket_files_gone(d: &Daemon) {
    let mut lock = d.socket().as_os_str().to_owned();
    lock.push(".lock");
    assert!(!d.socket().exists(), "socket left behind\n{}", d.log_text());
    assert!(
        !Path::new(&lock).exists(),
        "lock file left behind\n{}",
        d.log_text()
    );
}

fn sandboxed_session(mode: &str, extra: &[&str]) -> Session {
    let s = Session::start_with(&options(mode, extra), ClientOptions::default());
    assert_sandboxed(&s.daemon, mode);
    s
}

#[test]
fn namespace_sandbox_serves_every_kind_of_request() {
    if skip_for_peer() {
        return;
    }
    let mut s = sandboxed_session("namespace", &[]);
    workload(&mut s);
    s.assert_serving();
    disconnect_and_expect_clean_exit(s);
}

#[test]
fn chroot_sandbox_serves_every_kind_of_request() {
    if skip_for_peer() {
        return;
    }
    let mut s = sandboxed_session("chroot", &[]);
    workload(&mut s);
    s.assert_serving();
    disconnect_and_expect_clean_exit(s);
}

/// A field of `/proc/<pid>/status`.
fn status_field(pid: u32, name: &str) -> String {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {name} in {path}"))
        .trim()
        .to_string()
}

#[test]
fn a_plain_command_line_is_confined() {
    // `vfsdaxd --shared-dir D --socket-path S` and nothing else about confinement: the serving
    // process is in its own PID namespace, under the seccomp filter, with no new privileges
    // and only the capabilities it needs, in every set and in its bounding set.
    if skip_for_peer() {
        return;
    }
    let plain = DaemonOptions {
        xattr: true,
        ..Default::default()
    };
    let mut s = Session::start_with(&plain, ClientOptions::default());
    let pid = s.daemon.serving_pid();
    assert_ne!(pid, s.daemon.pid(), "a supervisor and its child");
    assert_sandboxed(&s.daemon, "namespace");
    assert_eq!(status_field(pid, "NSpid").split_whitespace().count(), 2);
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // chown dac_override fowner fsetid setgid setuid mknod setfcap: bits 0 1 3 4 6 7 27 31.
    const KEPT: &str = "00000000880000db";
    if vfsdax_tests::harness::running_as_root() {
        for set in ["CapPrm", "CapEff", "CapBnd"] {
            assert_eq!(status_field(pid, set), KEPT, "{set}");
        }
    }
    for set in ["CapInh", "CapAmb"] {
        assert_eq!(status_field(pid, set), "0000000000000000", "{set}");
    }
    // The supervisor keeps only what the relay and the socket files need.
    let sup = u64::from_str_radix(&status_field(s.daemon.pid(), "CapBnd"), 16).expect("hex");
    let allowed = 1 << 19 | 1 << 1 | 1 << 2 | 1 << 3; // sys_ptrace dac_override dac_read_search fowner
    assert_eq!(sup & !allowed, 0, "supervisor bounding set {sup:#x}");
    let log = s.daemon.log_text();
    assert!(
        log.contains(
            "capabilities kept: chown dac_override fowner fsetid mknod setfcap setgid setuid"
        ),
        "{log}"
    );
    workload(&mut s);
    s.assert_serving();
    disconnect_and_expect_clean_exit(s);
}

#[test]
fn modcaps_changes_the_kept_set() {
    if skip_for_peer() || !vfsdax_tests::harness::running_as_root() {
        return;
    }
    let s = Session::start_with(
        &options("namespace", &["--modcaps=+sys_ptrace:-mknod"]),
        ClientOptions::default(),
    );
    let eff = u64::from_str_radix(&status_field(s.daemon.serving_pid(), "CapEff"), 16).unwrap();
    assert_eq!(eff, (0x8800_00db & !(1 << 27)) | 1 << 19);
    disconnect_and_expect_clean_exit(s);
    // A bad entry is refused before anything starts.
    let e = Daemon::start(&options("none", &["--modcaps=+no_such_cap"])).unwrap_err();
    assert!(e.to_string().contains("no_such_cap"), "{e}");
}

#[test]
fn namespace_sandbox_under_seccomp_kill() {
    if skip_for_peer() {
        return;
    }
    let mut s = sandboxed_session("namespace", &["--seccomp", "kill"]);
    let status_path = format!("/proc/{}/status", daemon_pid(&s.daemon, "namespace"));
    let status = std::fs::read_to_string(&status_path).expect("status");
    assert!(
        status.lines().any(|l| l == "Seccomp:\t2"),
        "the daemon runs under its filter:\n{status}"
    );
    workload(&mut s);
    s.assert_serving();
    disconnect_and_expect_clean_exit(s);

    // SIGTERM while a frontend is connected ends the session cleanly too.
    let s = sandboxed_session("namespace", &["--seccomp", "kill"]);
    let pid = i32::try_from(s.daemon.pid()).expect("pid");
    // SAFETY: kill only sends a signal to the daemon process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let Session {
        client: _client,
        mut daemon,
    } = s;
    let status = daemon
        .wait_exit(EXIT_WAIT)
        .unwrap_or_else(|| panic!("daemon still running; log:\n{}", daemon.log_text()));
    assert!(status.success(), "{status}\n{}", daemon.log_text());
    assert_socket_files_gone(&daemon);
}

#[test]
fn sigterm_before_a_frontend_connects_removes_the_socket_files() {
    if skip_for_peer() {
        return;
    }
    let cases: [(&str, &[&str]); 4] = [
        ("namespace", &[]),
        ("chroot", &[]),
        ("namespace", &["--seccomp", "kill"]),
        ("none", &["--seccomp", "kill"]),
    ];
    for (mode, extra) in cases {
        let mut d = Daemon::start(&options(mode, extra)).expect("daemon starts");
        // The socket exists before the sandbox is entered: wait for the log line.
        let deadline = std::time::Instant::now() + EXIT_WAIT;
        while !d.log_text().contains("waiting for the frontend") {
            assert!(
                std::time::Instant::now() < deadline,
                "no start-up line\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        if mode != "none" {
            assert_eq!(
                dev_ino(Path::new(&format!("/proc/{}/root", daemon_pid(&d, mode)))),
                dev_ino(d.share())
            );
        }
        let pid = i32::try_from(d.pid()).expect("pid");
        // SAFETY: kill only sends a signal to the daemon process this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = d
            .wait_exit(EXIT_WAIT)
            .unwrap_or_else(|| panic!("{mode} {extra:?}: daemon still running\n{}", d.log_text()));
        assert!(
            status.success(),
            "{mode} {extra:?}: {status} (signal 31 = SIGSYS)\n{}",
            d.log_text()
        );
        assert_socket_files_gone(&d);
    }
}

#[test]
fn a_file_at_the_socket_path_inside_the_share_is_left_alone() {
    // Under chroot the socket's absolute path, looked up inside the sandbox, names a file of
    // the share: the daemon must not remove that one on exit.
    if skip_for_peer() {
        return;
    }
    let mut d = Daemon::start(&options("chroot", &[])).expect("daemon starts");
    let inside = d
        .share()
        .join(d.socket().strip_prefix("/").expect("absolute"));
    let mut lock = inside.as_os_str().to_owned();
    lock.push(".lock");
    std::fs::create_dir_all(inside.parent().expect("parent")).expect("mkdir");
    std::fs::write(&inside, b"guest file").expect("write");
    std::fs::write(&lock, b"guest lock").expect("write");
    let client = d.connect(ClientOptions::default()).expect("connect");
    drop(client);
    let status = d.wait_exit(EXIT_WAIT).expect("exits");
    assert!(status.success(), "{status}\n{}", d.log_text());
    assert_socket_files_gone(&d);
    assert_eq!(std::fs::read(&inside).expect("kept"), b"guest file");
    assert_eq!(std::fs::read(&lock).expect("kept"), b"guest lock");
}

#[test]
fn a_missing_share_is_a_clear_error_in_every_mode() {
    if skip_for_peer() {
        return;
    }
    for mode in ["namespace", "chroot"] {
        let tmp = vfsdax_tests::harness::TempDir::new("vfsdax-sandbox").expect("tmp");
        let sock = tmp.path().join("s");
        let program = vfsdax_tests::harness::daemon_program().expect("vfsdaxd built");
        let o = std::process::Command::new(program)
            .arg("--socket-path")
            .arg(&sock)
            .arg("--shared-dir")
            .arg(tmp.path().join("nope"))
            .args(["--sandbox", mode])
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{mode}: {err}");
        assert!(err.contains("nope"), "{mode}: {err}");
        assert!(
            !sock.exists(),
            "{mode}: no socket for a daemon that cannot serve"
        );
    }
}

#[test]
fn the_supervisor_and_the_daemon_end_together() {
    if skip_for_peer() {
        return;
    }
    // The daemon killed: the supervisor dies of the same signal and removes the socket files
    // the daemon could not.
    let s = sandboxed_session("namespace", &[]);
    let child = daemon_pid(&s.daemon, "namespace");
    let Session {
        client: _client,
        mut daemon,
    } = s;
    let pid = i32::try_from(child).expect("pid");
    // SAFETY: kill only sends a signal to the daemon process this test started (the child of
    // the supervisor it started).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let status = daemon.wait_exit(EXIT_WAIT).expect("the supervisor exits");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert_socket_files_gone(&daemon);

    // The supervisor killed: the daemon goes with it.
    let s = sandboxed_session("namespace", &[]);
    let child = daemon_pid(&s.daemon, "namespace");
    let proc_dir = Path::new("/proc").join(child.to_string());
    let Session {
        client: _client,
        mut daemon,
    } = s;
    let pid = i32::try_from(daemon.pid()).expect("pid");
    // SAFETY: kill only sends a signal to the supervisor this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    daemon.wait_exit(EXIT_WAIT).expect("the supervisor exits");
    let deadline = std::time::Instant::now() + EXIT_WAIT;
    // Gone, or a zombie until its reaper (init, outside the test's control) collects it.
    let alive = || {
        std::fs::read_to_string(proc_dir.join("stat"))
            .map(|st| !st.contains(") Z "))
            .unwrap_or(false)
    };
    while alive() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon outlived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The state letter of `/proc/<pid>/stat` (`None` once the process is gone).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn wait_until(what: &str, d: &Daemon, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + EXIT_WAIT;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_supervisor_leaves_a_newer_daemons_socket_files_alone() {
    // The daemon removes its files when its frontend leaves; the supervisor cleans up after
    // it. A daemon that bound the same path in between keeps its files.
    if skip_for_peer() {
        return;
    }
    let s = sandboxed_session("namespace", &[]);
    let child = daemon_pid(&s.daemon, "namespace");
    let Session { client, mut daemon } = s;
    let supervisor = i32::try_from(daemon.pid()).expect("pid");
    // SAFETY: kill only sends a signal to the supervisor this test started.
    assert_eq!(unsafe { libc::kill(supervisor, libc::SIGSTOP) }, 0);
    wait_until("the supervisor stopped", &daemon, || {
        proc_state(daemon.pid()) == Some('T')
    });
    drop(client);
    // The child exits and removes its files; stopped, the supervisor cannot reap it yet.
    wait_until("the daemon exited", &daemon, || {
        proc_state(child) == Some('Z')
    });
    assert_socket_files_gone(&daemon);
    let mut lock = daemon.socket().as_os_str().to_owned();
    lock.push(".lock");
    std::fs::write(daemon.socket(), b"newer daemon").expect("socket stand-in");
    std::fs::write(&lock, b"newer lock").expect("lock stand-in");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(supervisor, libc::SIGCONT) }, 0);
    let status = daemon.wait_exit(EXIT_WAIT).expect("the supervisor exits");
    assert!(status.success(), "{status}\n{}", daemon.log_text());
    assert_eq!(
        std::fs::read(daemon.socket()).expect("the newer socket is kept"),
        b"newer daemon"
    );
    assert_eq!(
        std::fs::read(&lock).expect("the newer lock is kept"),
        b"newer lock"
    );
}

#[test]
fn the_supervisor_exits_even_if_sigchld_was_ignored() {
    // An ignored SIGCHLD is inherited through exec: the kernel would reap the daemon
    // without telling the supervisor, which must not wait for it forever.
    if skip_for_peer() {
        return;
    }
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let tmp = vfsdax_tests::harness::TempDir::new("vfsdax-sandbox").expect("tmp");
    let sock = tmp.path().join("s");
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).expect("mkdir");
    let program = vfsdax_tests::harness::daemon_program().expect("vfsdaxd built");
    let mut cmd = std::process::Command::new(program);
    cmd.arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(&share)
        .args(["--sandbox", "namespace"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only calls signal(2),
    // which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGCHLD, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut supervisor = cmd.spawn().expect("spawn");
    let sup = supervisor.id();
    let children =
        || std::fs::read_to_string(format!("/proc/{sup}/task/{sup}/children")).unwrap_or_default();
    let deadline = std::time::Instant::now() + EXIT_WAIT;
    while !sock.exists() || children().trim().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no daemon started");
        assert!(
            supervisor.try_wait().expect("try_wait").is_none(),
            "exited early"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let child: i32 = children().trim().parse().expect("one child");
    // SAFETY: kill only sends a signal to the daemon this test started (the supervisor's
    // child).
    assert_eq!(unsafe { libc::kill(child, libc::SIGKILL) }, 0);
    let deadline = std::time::Instant::now() + EXIT_WAIT;
    let status = loop {
        if let Some(status) = supervisor.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = supervisor.kill();
            let _ = supervisor.wait();
            panic!("the supervisor still runs after its daemon was killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(!sock.exists(), "the supervisor removed the socket");
}
