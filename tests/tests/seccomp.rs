//! `vfsdaxd --seccomp MODE`: the filter is really installed (`/proc/<pid>/status`), and a daemon
//! under `--seccomp kill` serves every opcode (xattrs with `--xattr`, fsuid switching for a
//! non-root caller, DAX mappings through the VMM glue's window, bad input) and shuts down
//! cleanly on disconnect and on SIGTERM. A system call missing from the allowlist kills the
//! daemon with SIGSYS, which these tests report with the daemon's exit status; the kernel's
//! audit line (`dmesg | grep type=1326`) names the call.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use vfsdax_driver::{Caller, ClientOptions, XattrReply};
use vfsdax_protocol::fuse::flags::{fattr, RENAME_EXCHANGE, RENAME_NOREPLACE};
use vfsdax_protocol::fuse::flags::{SETUPMAPPING_FLAG_READ, SETUPMAPPING_FLAG_WRITE};
use vfsdax_protocol::fuse::{
    CopyFileRangeIn, ForgetOne, RemoveMappingOne, SetattrIn, SetupMappingIn, ROOT_ID,
};
use vfsdax_tests::harness::{
    classify, expect_errno, pattern, raw_request, Daemon, DaemonOptions, Outcome, Session,
};
use vfsdax_tests::workload::{
    create_write_read_back, disconnect_and_expect_success, ok, readdir_names, xattr_round_trip,
    EXIT_WAIT,
};
use vfsdax_vmm_glue::dax::{connect, ConnectOptions};

const MIB2: u64 = 2 << 20;

/// The peer virtiofsd has its own filter and command line: these tests are about ours.
fn skip_for_peer() -> bool {
    vfsdax_tests::workload::skip_for_peer("seccomp")
}

fn options(mode: &str, xattr: bool, extra: &[&str]) -> DaemonOptions {
    let mut extra_args = vec!["--seccomp".to_string(), mode.to_string()];
    extra_args.extend(extra.iter().map(|a| a.to_string()));
    DaemonOptions {
        xattr,
        extra_args,
        ..Default::default()
    }
}

/// `Seccomp:` and `Seccomp_filters:` of `/proc/<pid>/status` (`pid` 0: this process).
fn seccomp_status(pid: u32) -> (u32, u32) {
    let path = if pid == 0 {
        "/proc/self/status".to_string()
    } else {
        format!("/proc/{pid}/status")
    };
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {path}"))
    };
    (field("Seccomp:"), field("Seccomp_filters:"))
}

/// Waits until the daemon runs under one more filter than this process (the daemon installs
/// it just after creating its socket).
fn wait_for_filter(d: &Daemon) -> (u32, u32) {
    let own = seccomp_status(0).1;
    let deadline = Instant::now() + EXIT_WAIT;
    loop {
        let st = seccomp_status(d.serving_pid());
        if st.1 > own || Instant::now() > deadline {
            return st;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Drops the driver and checks the daemon exits 0 on the disconnect.
fn disconnect_and_expect_clean_exit(s: Session) {
    let daemon = disconnect_and_expect_success(s);
    assert!(
        daemon.log_text().contains("frontend disconnected"),
        "{}",
        daemon.log_text()
    );
}

#[test]
fn the_filter_is_installed_only_when_asked() {
    if skip_for_peer() {
        return;
    }
    let (own_mode, own_filters) = seccomp_status(0);
    for mode in ["none", "log", "trap", "kill"] {
        let mut s = Session::start_with(&options(mode, false, &[]), ClientOptions::default());
        let (m, filters) = seccomp_status(s.daemon.serving_pid());
        if mode == "none" {
            assert_eq!(
                (m, filters),
                (own_mode, own_filters),
                "--seccomp none adds no filter to what the daemon inherits"
            );
            assert!(!s.daemon.log_text().contains("seccomp filter installed"));
        } else {
            assert_eq!(m, 2, "--seccomp {mode}: filter mode");
            // The allowlist and the one that makes clone3 fail with ENOSYS.
            assert_eq!(
                filters,
                own_filters + 2,
                "--seccomp {mode}: two filters more"
            );
            let line = format!("seccomp filter installed (--seccomp {mode})");
            assert!(
                s.daemon.log_text().contains(&line),
                "{}",
                s.daemon.log_text()
            );
        }
        s.assert_serving();
        disconnect_and_expect_clean_exit(s);
    }
}

#[test]
fn every_opcode_is_served_under_seccomp_kill() {
    if skip_for_peer() {
        return;
    }
    let mut s = Session::start_with(&options("kill", true, &[]), ClientOptions::default());
    assert_eq!(seccomp_status(s.daemon.serving_pid()).0, 2);
    let d = &mut s.daemon;
    let c = &mut s.client;
    let share = d.share().to_path_buf();
    let rw = libc::O_RDWR as u32;

    // Read a file the host made.
    let host_bytes = pattern(300_000, 7);
    std::fs::write(share.join("host.txt"), &host_bytes).unwrap();
    let e = ok(d, "LOOKUP", c.lookup(ROOT_ID, b"host.txt"));
    assert_eq!(e.attr.size, host_bytes.len() as u64);
    ok(d, "GETATTR", c.getattr(e.nodeid, None));
    let o = ok(d, "OPEN", c.open(e.nodeid, libc::O_RDONLY as u32));
    let back = ok(d, "READ", c.read(e.nodeid, o.fh, 0, 1 << 20));
    assert_eq!(back, host_bytes);
    ok(d, "RELEASE", c.release(e.nodeid, o.fh, 0));

    // Create, write, read back, sync, allocate, seek, copy, truncate, chmod, times.
    let data = pattern(200_000, 9);
    let (n, no) = create_write_read_back(d, c, b"new", &data);
    ok(d, "FLUSH", c.flush(n.nodeid, no.fh, 0));
    ok(d, "FSYNC", c.fsync(n.nodeid, no.fh, false));
    ok(d, "FSYNC datasync", c.fsync(n.nodeid, no.fh, true));
    ok(d, "FALLOCATE", c.fallocate(n.nodeid, no.fh, 0, 1 << 20, 0));
    let seek = ok(
        d,
        "LSEEK",
        c.lseek(n.nodeid, no.fh, 0, libc::SEEK_DATA as u32),
    );
    assert_eq!(seek.offset, 0);
    let (cp, cpo) = ok(d, "CREATE copy", c.create(ROOT_ID, b"copy", rw, 0o600, 0));
    let arg = CopyFileRangeIn {
        fh_in: no.fh,
        off_in: 0,
        nodeid_out: cp.nodeid,
        fh_out: cpo.fh,
        off_out: 0,
        len: 1000,
        flags: 0,
    };
    assert_eq!(
        ok(d, "COPY_FILE_RANGE", c.copy_file_range(n.nodeid, &arg)).size,
        1000
    );
    assert_eq!(std::fs::read(share.join("copy")).unwrap(), &data[..1000]);
    let set = SetattrIn {
        valid: fattr::SIZE | fattr::MODE | fattr::ATIME | fattr::MTIME,
        size: 4096,
        mode: 0o640,
        atime: 1_000_000_000,
        mtime: 1_200_000_000,
        ..Default::default()
    };
    let a = ok(d, "SETATTR", c.setattr(n.nodeid, &set));
    assert_eq!((a.attr.size, a.attr.mode & 0o7777), (4096, 0o640));
    assert_eq!(
        std::fs::metadata(share.join("new")).unwrap().mtime(),
        1_200_000_000
    );
    ok(d, "GETATTR fh", c.getattr(n.nodeid, Some(no.fh)));
    ok(d, "RELEASE new", c.release(n.nodeid, no.fh, rw));
    ok(d, "RELEASE copy", c.release(cp.nodeid, cpo.fh, rw));

    // Directory entries of every kind, links and renames.
    let sub = ok(d, "MKDIR", c.mkdir(ROOT_ID, b"sub", 0o755, 0));
    let l = ok(d, "SYMLINK", c.symlink(sub.nodeid, b"link", b"../new"));
    assert_eq!(ok(d, "READLINK", c.readlink(l.nodeid)), b"../new");
    let fifo = libc::S_IFIFO | 0o644;
    ok(d, "MKNOD", c.mknod(sub.nodeid, b"fifo", fifo, 0, 0));
    let h = ok(d, "LINK", c.link(n.nodeid, sub.nodeid, b"hard"));
    assert_eq!(h.attr.nlink, 2);
    ok(
        d,
        "RENAME",
        c.rename(sub.nodeid, b"hard", sub.nodeid, b"hard2"),
    );
    let noreplace = c.rename2(ROOT_ID, b"copy", ROOT_ID, b"copy2", RENAME_NOREPLACE);
    ok(d, "RENAME2 NOREPLACE", noreplace);
    let exchange = c.rename2(ROOT_ID, b"new", ROOT_ID, b"copy2", RENAME_EXCHANGE);
    ok(d, "RENAME2 EXCHANGE", exchange);
    assert_eq!(std::fs::metadata(share.join("new")).unwrap().len(), 1000);
    assert_eq!(expect_errno(c.rmdir(ROOT_ID, b"sub")), libc::ENOTEMPTY);
    for name in [&b"link"[..], b"fifo", b"hard2"] {
        ok(d, "UNLINK", c.unlink(sub.nodeid, name));
    }
    ok(d, "RMDIR", c.rmdir(ROOT_ID, b"sub"));
    assert_eq!(expect_errno(c.lookup(ROOT_ID, b"sub")), libc::ENOENT);

    // Directory listing.
    let dh = ok(d, "OPENDIR", c.opendir(ROOT_ID, 0));
    let names = readdir_names(d, c, ROOT_ID, dh.fh, 4096);
    assert!(names.iter().any(|n| n == b"host.txt"), "{names:?}");
    let plus = ok(d, "READDIRPLUS", c.readdirplus(ROOT_ID, dh.fh, 0, 8192));
    assert!(plus.len() >= 4, "{} entries", plus.len());
    ok(d, "FSYNCDIR", c.fsyncdir(ROOT_ID, dh.fh, false));
    ok(d, "RELEASEDIR", c.releasedir(ROOT_ID, dh.fh));

    // Whole-filesystem requests.
    assert!(ok(d, "STATFS", c.statfs(ROOT_ID)).st.blocks > 0);
    ok(d, "ACCESS", c.access(ROOT_ID, libc::R_OK as u32));
    ok(d, "SYNCFS", c.syncfs(ROOT_ID));

    // Extended attributes (--xattr).
    xattr_round_trip(d, c, n.nodeid, |d, c| {
        let size = ok(d, "GETXATTR size", c.getxattr(n.nodeid, b"user.k", 0));
        assert_eq!(size, XattrReply::Size(2));
    });

    // A non-root caller: the request runs with its fsuid/fsgid.
    std::fs::create_dir(share.join("pub")).unwrap();
    std::fs::set_permissions(share.join("pub"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let pubdir = ok(d, "LOOKUP pub", c.lookup(ROOT_ID, b"pub"));
    c.set_caller(Caller {
        uid: 4321,
        gid: 4321,
        pid: 1,
    });
    let (u, uo) = ok(
        d,
        "CREATE as 4321",
        c.create(pubdir.nodeid, b"u", rw, 0o644, 0),
    );
    let m = std::fs::metadata(share.join("pub/u")).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (4321, 4321),
        "created with the caller's ids"
    );
    ok(d, "RELEASE u", c.release(u.nodeid, uo.fh, rw));
    c.set_caller(Caller::default());

    // Forgetting, interrupting, bad input, a new session.
    ok(d, "FORGET", c.forget(l.nodeid, 1));
    let forget = [ForgetOne {
        nodeid: u.nodeid,
        nlookup: 1,
    }];
    ok(d, "BATCH_FORGET", c.batch_forget(&forget));
    let unknown = c.peek_unique() + 1000;
    ok(d, "INTERRUPT", c.interrupt(unknown));
    let unique = c.alloc_unique();
    let req = raw_request(40, 9999, unique, ROOT_ID, &[]);
    match classify(c.send_raw(&[&req], 256)) {
        Outcome::ErrorReply { errno, .. } => assert_eq!(errno, libc::ENOSYS),
        other => panic!("unknown opcode: {other:?}\n{}", d.log_text()),
    }
    ok(d, "DESTROY", c.destroy());
    ok(d, "INIT again", c.init());
    s.assert_serving();
    disconnect_and_expect_clean_exit(s);
}

#[test]
fn dax_mappings_are_served_under_seccomp_kill() {
    if skip_for_peer() {
        return;
    }
    let dopts = options("kill", false, &["--cache-size", "64M"]);
    let mut s = Session::start_with(&dopts, ClientOptions::default());
    assert_eq!(seccomp_status(s.daemon.serving_pid()).0, 2);
    let opts = ConnectOptions {
        reply_ack: true,
        observer: None,
        ..Default::default()
    };
    let conn = ok(
        &mut s.daemon,
        "dax::connect",
        connect(s.client.frontend_mut().frontend_mut(), opts),
    );
    let base = conn.window().host_addr();
    let data = pattern((2 * MIB2) as usize, 5);
    let path = s.host("dax");
    std::fs::write(&path, &data).unwrap();
    let d = &mut s.daemon;
    let c = &mut s.client;
    let e = ok(d, "LOOKUP", c.lookup(ROOT_ID, b"dax"));
    let o = ok(d, "OPEN", c.open(e.nodeid, libc::O_RDWR as u32));
    let map = |fh, foffset, moffset, flags| SetupMappingIn {
        fh,
        foffset,
        len: MIB2,
        flags,
        moffset,
    };
    let read_only = map(u64::MAX, 0, 0, SETUPMAPPING_FLAG_READ);
    ok(d, "SETUPMAPPING read", c.setupmapping(e.nodeid, &read_only));
    // SAFETY: [0, 2 MiB) of the window was just mapped readable by an acknowledged
    // SETUPMAPPING and stays mapped while `conn` lives.
    let window = unsafe { std::slice::from_raw_parts(base as *const u8, MIB2 as usize) };
    assert_eq!(window, &data[..MIB2 as usize]);
    let rw = SETUPMAPPING_FLAG_READ | SETUPMAPPING_FLAG_WRITE;
    ok(
        d,
        "SETUPMAPPING write",
        c.setupmapping(e.nodeid, &map(o.fh, MIB2, MIB2, rw)),
    );
    let msg = b"stored through the window under seccomp";
    // SAFETY: [2 MiB, 4 MiB) of the window was just mapped read-write; nothing else in this
    // process aliases it.
    unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), (base + MIB2) as *mut u8, msg.len()) };
    let remove = [
        RemoveMappingOne {
            moffset: 0,
            len: MIB2,
        },
        RemoveMappingOne {
            moffset: MIB2,
            len: MIB2,
        },
    ];
    ok(d, "REMOVEMAPPING", c.removemapping(ROOT_ID, &remove));
    let host = std::fs::read(&path).unwrap();
    assert_eq!(&host[MIB2 as usize..MIB2 as usize + msg.len()], msg);
    assert!(conn.window().table().is_empty());
    let stats = conn.handler().stats();
    assert_eq!((stats.maps, stats.unmaps, stats.failed), (2, 2, 0));
    ok(d, "RELEASE", c.release(e.nodeid, o.fh, 0));
    s.assert_serving();
    drop(conn);
    disconnect_and_expect_clean_exit(s);
}

#[test]
fn sigterm_under_seccomp_kill_exits_cleanly() {
    if skip_for_peer() {
        return;
    }
    // Before a frontend connects: the signal thread removes the socket and exits.
    let mut d = Daemon::start(&options("kill", false, &[])).expect("daemon starts");
    assert_eq!(wait_for_filter(&d).0, 2, "{}", d.log_text());
    // SAFETY: kill only sends a signal to our own child.
    assert_eq!(unsafe { libc::kill(d.pid() as i32, libc::SIGTERM) }, 0);
    let status = d.wait_exit(EXIT_WAIT).expect("exits on SIGTERM");
    assert!(status.success(), "{status}\n{}", d.log_text());
    assert!(!d.socket().exists(), "socket removed");

    // While connected: the connection is shut down.
    let s = Session::start_with(&options("kill", false, &[]), ClientOptions::default());
    let Session { client, mut daemon } = s;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) }, 0);
    let status = daemon.wait_exit(EXIT_WAIT).expect("exits on SIGTERM");
    assert!(status.success(), "{status}\n{}", daemon.log_text());
    drop(client);
}
