//! `vfsdaxd` started the way libvirt starts virtiofsd, with the exact argument vectors libvirt
//! builds, and each option's effect checked through the driver and `/proc`, not only the
//! parsing.
//!
//! [`libvirt_argv`] transcribes libvirt's `qemuVirtioFSBuildCommandLine` (src/qemu/
//! qemu_virtiofs.c; as built in libvirt 12.8.0): `--fd=N` on a listening socket libvirt made,
//! then either the separate options, when the daemon's `--print-capabilities` lists
//! `separate-options` (vfsdaxd's does), or the legacy `-o source=...` form, then
//! `--thread-pool-size=`, `--rlimit-nofile=`, the debug switch (`--log-level debug` or `-d`),
//! `--uid-map=`/`--gid-map=` (session mode) and `--readonly`.
//!
//! The rest of virtiofsd 1.14's options with an effect on INIT (`--killpriv-v2`,
//! `--no-announce-submounts`, `--no-readdirplus`, `--allow-mmap`), the refusals, and
//! `--syslog` under the namespace sandbox and `--seccomp kill` are checked here too.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vfsdax_driver::ops::DEFAULT_INIT_FLAGS;
use vfsdax_driver::{ClientOptions, FsClient, XattrReply};
use vfsdax_protocol::fuse::flags::{fopen, init};
use vfsdax_protocol::fuse::{InitOut, KERNEL_MINOR_VERSION, KERNEL_VERSION, ROOT_ID};
use vfsdax_tests::harness::{
    children, daemon_program, expect_errno, running_as_root, Daemon, DaemonDirs,
};

/// What a Linux 6.x guest offers at INIT, the flags these tests look at included.
const GUEST_FLAGS: u64 = DEFAULT_INIT_FLAGS
    | init::SUBMOUNTS
    | init::HANDLE_KILLPRIV_V2
    | init::DIRECT_IO_ALLOW_MMAP
    | init::POSIX_ACL
    | init::DONT_MASK;

/// An id range of `<idmap>`: (start, target, count).
type IdRange = (u32, u32, u32);

/// The `<filesystem>` of a domain, as far as `qemuVirtioFSBuildCommandLine` reads it.
#[derive(Clone, Debug, Default)]
struct FsDef {
    /// `<source dir=>`.
    path: PathBuf,
    /// `<binary cache mode=>`: `none` or `always` (libvirt's names).
    cache: Option<&'static str>,
    /// `<binary><sandbox mode=>`: `namespace` or `chroot`.
    sandbox: Option<&'static str>,
    /// `<binary xattr=>`.
    xattr: Option<bool>,
    /// `<binary><lock flock=>`.
    flock: Option<bool>,
    /// `<binary><lock posix=>`.
    posix_lock: Option<bool>,
    /// `<binary><thread_pool size=>`.
    thread_pool_size: Option<i32>,
    /// `<binary><openfiles max=>`.
    rlimit_nofile: Option<u64>,
    /// `virtiofsd_debug = 1` in qemu.conf.
    debug: bool,
    /// `<idmap><uid .../>`: (start, target, count); libvirt fills them in session mode.
    uid_map: Vec<IdRange>,
    /// `<idmap><gid .../>`.
    gid_map: Vec<IdRange>,
    /// `<readonly/>`.
    readonly: bool,
}

/// libvirt's `virQEMUBuildBufferEscapeComma`: a comma is doubled.
fn escape_comma(s: &str) -> String {
    s.replace(',', ",,")
}

/// The arguments libvirt passes after the binary (`qemuVirtioFSBuildCommandLine`), for a
/// daemon whose capabilities list `separate-options` (`separate`) or not. `None` where
/// libvirt refuses to start the daemon itself (lock options with separate options: "locking
/// options are not supported by this virtiofsd").
fn libvirt_argv(fs: &FsDef, fd: i32, separate: bool) -> Option<Vec<String>> {
    let mut a = vec![format!("--fd={fd}")];
    let path = fs.path.to_str().expect("utf-8 path").to_string();
    if separate {
        a.extend(["--shared-dir".to_string(), path]);
        match fs.cache {
            // libvirt turns its "none" into virtiofsd's "never".
            Some("none") => a.extend(["--cache".into(), "never".into()]),
            Some(c) => a.extend(["--cache".into(), c.to_string()]),
            None => {}
        }
        if let Some(s) = fs.sandbox {
            a.extend(["--sandbox".into(), s.to_string()]);
        }
        if fs.xattr == Some(true) {
            a.push("--xattr".into());
        }
        if fs.flock.is_some() || fs.posix_lock.is_some() {
            return None;
        }
    } else {
        a.push("-o".into());
        let mut o = format!("source={}", escape_comma(&path));
        if let Some(c) = fs.cache {
            o += &format!(",cache={c}");
        }
        if let Some(s) = fs.sandbox {
            o += &format!(",sandbox={s}");
        }
        match fs.xattr {
            Some(true) => o += ",xattr",
            Some(false) => o += ",no_xattr",
            None => {}
        }
        match fs.flock {
            Some(true) => o += ",flock",
            Some(false) => o += ",no_flock",
            None => {}
        }
        match fs.posix_lock {
            Some(true) => o += ",posix_lock",
            Some(false) => o += ",no_posix_lock",
            None => {}
        }
        a.push(o);
    }
    if let Some(n) = fs.thread_pool_size {
        a.push(format!("--thread-pool-size={n}"));
    }
    if let Some(n) = fs.rlimit_nofile {
        a.push(format!("--rlimit-nofile={n}"));
    }
    if fs.debug {
        if separate {
            a.extend(["--log-level".into(), "debug".into()]);
        } else {
            a.push("-d".into());
        }
    }
    for (s, t, c) in &fs.uid_map {
        a.push(format!("--uid-map=:{s}:{t}:{c}:"));
    }
    for (s, t, c) in &fs.gid_map {
        a.push(format!("--gid-map=:{s}:{t}:{c}:"));
    }
    if fs.readonly {
        a.push("--readonly".into());
    }
    Some(a)
}

/// The soft open-file limit the daemon is started with.
const START_NOFILE: u64 = 1024;

/// The sandbox tests need root, as libvirt runs virtiofsd.
fn need_root(test: &str) -> bool {
    if vfsdax_tests::workload::skip_for_peer(test) {
        return false;
    }
    if !running_as_root() {
        vfsdax_tests::require::skip(test, "libvirt starts the daemon as root; not root here");
        return false;
    }
    true
}

/// A daemon started as libvirt does: a listening socket at `dirs.socket` made here and passed
/// as an inherited descriptor, `args` from [`libvirt_argv`] with `{fd}` its number.
struct Started {
    daemon: Daemon,
    args: Vec<String>,
}

/// Makes the temporary directories with the share at `share_name` (a comma in it tests the
/// `-o` escaping).
fn dirs_with_share(share_name: &str) -> DaemonDirs {
    let mut dirs = DaemonDirs::new(None).expect("temp dirs");
    if share_name != "share" {
        dirs.share = dirs.tmp.path().join(share_name);
        std::fs::create_dir(&dirs.share).expect("share");
    }
    dirs
}

fn start(dirs: DaemonDirs, fs: &FsDef, separate: bool, extra: &[&str]) -> Started {
    let listener = UnixListener::bind(&dirs.socket).expect("bind the socket as libvirt does");
    let fd = listener.as_raw_fd();
    let mut fs = fs.clone();
    fs.path = dirs.share.clone();
    let mut args = libvirt_argv(&fs, fd, separate).expect("libvirt starts the daemon");
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = Command::new(daemon_program().expect("vfsdaxd"));
    cmd.args(&args);
    // SAFETY: the closure runs in the child between fork and exec and only calls fcntl,
    // getrlimit and setrlimit, which are async-signal-safe, on a descriptor number it copied
    // and a local rlimit.
    unsafe {
        cmd.pre_exec(move || {
            // The daemon starts from the soft open-file limit libvirt's children usually have.
            let mut l = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
                l.rlim_cur = l.rlim_max.min(START_NOFILE);
                libc::setrlimit(libc::RLIMIT_NOFILE, &l);
            }
            if libc::fcntl(fd, libc::F_SETFD, 0) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let daemon = Daemon::spawn(cmd, dirs)
        .unwrap_or_else(|e| panic!("{args:?}: {}", vfsdax_tests::harness::error_chain(&e)));
    // The daemon holds the socket now (libvirt closes its copy too).
    drop(listener);
    Started { daemon, args }
}

/// The process that serves: the supervisor's only child under `--sandbox namespace`, else the
/// process started (whatever the harness guessed from the arguments, which `-o` hides).
fn serving_pid(d: &Daemon, sandbox: &str) -> u32 {
    if sandbox != "namespace" {
        return d.pid();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let [c] = children(d.pid())[..] {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "no serving child:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn connect(d: &Daemon) -> (FsClient, InitOut) {
    let mut c = d.connect(ClientOptions::default()).expect("connect");
    let out = c
        .init_with(KERNEL_VERSION, KERNEL_MINOR_VERSION, GUEST_FLAGS)
        .unwrap_or_else(|e| panic!("INIT: {e}\n{}", d.log_text()));
    (c, out)
}

fn flags(out: &InitOut) -> u64 {
    u64::from(out.flags) | (u64::from(out.flags2) << 32)
}

fn ns(pid: u32, which: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{which}")).expect("ns link")
}

fn root_of(pid: u32) -> (u64, u64) {
    let m = std::fs::metadata(format!("/proc/{pid}/root")).expect("root");
    (m.dev(), m.ino())
}

fn dev_ino(p: &Path) -> (u64, u64) {
    let m = std::fs::metadata(p).expect("stat");
    (m.dev(), m.ino())
}

/// Names of the threads of `pid` that start with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with(prefix))
        .count()
}

/// The soft "Max open files" of `pid`.
fn nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    line.split_whitespace()
        .nth(3)
        .expect("soft")
        .parse()
        .expect("number")
}

/// This process's (soft, hard) open-file limits.
fn own_nofile() -> (u64, u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `l`, a valid local.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
    (l.rlim_cur, l.rlim_max)
}

/// Separate options, as libvirt passes them to a daemon listing `separate-options`:
/// `<binary xattr='on'><cache mode='none'/><sandbox mode='namespace'/><thread_pool size='4'/>
/// <openfiles max='N'/></binary>`, `virtiofsd_debug = 1`.
#[test]
fn separate_options_as_libvirt_passes_them() {
    if !need_root("separate_options_as_libvirt_passes_them") {
        return;
    }
    let want_nofile = (START_NOFILE + 17).min(own_nofile().1);
    let fs = FsDef {
        cache: Some("none"),
        sandbox: Some("namespace"),
        xattr: Some(true),
        thread_pool_size: Some(4),
        rlimit_nofile: Some(want_nofile),
        debug: true,
        ..Default::default()
    };
    let s = start(dirs_with_share("share"), &fs, true, &[]);
    let d = &s.daemon;
    assert_eq!(
        s.args[1..4],
        [
            "--shared-dir".to_string(),
            d.share().display().to_string(),
            "--cache".into()
        ]
    );
    std::fs::write(d.share().join("f"), b"data").unwrap();
    let (mut c, out) = connect(d);
    let f = flags(&out);
    // --shared-dir: this share is served.
    let e = c.lookup(ROOT_ID, b"f").expect("the share's file");
    assert_eq!(e.attr.size, 4);
    // --cache never: nothing cached (zero timeouts, direct I/O), no READDIRPLUS (virtiofsd).
    assert_eq!((e.entry_valid, e.attr_valid), (0, 0), "{e:?}");
    let o = c.open(e.nodeid, libc::O_RDONLY as u32).expect("open");
    assert_eq!(c.read(e.nodeid, o.fh, 0, 4096).expect("READ"), b"data");
    assert_ne!(o.open_flags & fopen::DIRECT_IO, 0, "{o:?}");
    assert_eq!(f & init::DO_READDIRPLUS, 0, "{f:#x}");
    // Defaults of virtiofsd 1.14: submounts announced, KILLPRIV_V2 not, no POSIX ACLs.
    assert_ne!(f & init::SUBMOUNTS, 0, "{f:#x}");
    assert_eq!(f & init::HANDLE_KILLPRIV_V2, 0, "{f:#x}");
    assert_eq!(f & (init::POSIX_ACL | init::DONT_MASK), 0, "{f:#x}");
    // --xattr: the xattr opcodes are served.
    c.setxattr(e.nodeid, b"user.libvirt", b"1", 0)
        .expect("setxattr");
    assert_eq!(
        c.getxattr(e.nodeid, b"user.libvirt", 16).expect("getxattr"),
        XattrReply::Data(b"1".to_vec())
    );
    // --sandbox namespace: served by a child in its own namespaces with the share as root.
    let pid = serving_pid(d, "namespace");
    assert_ne!(pid, d.pid());
    assert_ne!(ns(pid, "mnt"), ns(std::process::id(), "mnt"));
    assert_ne!(ns(pid, "pid"), ns(std::process::id(), "pid"));
    assert_eq!(root_of(pid), dev_ino(d.share()));
    // --thread-pool-size=4: four workers.
    // (Each names itself once it runs: waited for.)
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads_named(pid, "fuse-worker-") < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(threads_named(pid, "fuse-worker-"), 4, "{}", d.log_text());
    // --rlimit-nofile.
    assert_eq!(nofile(pid), want_nofile);
    // --log-level debug (the parsed options are logged at debug), and nothing to warn about.
    let log = d.log_text();
    assert!(log.contains("DEBUG] Options {"), "{log}");
    assert!(!log.contains(" WARN "), "{log}");
    drop(c);
}

/// The legacy form, as libvirt passes it to a daemon without `separate-options`: `-o` with a
/// comma in the share's path, `cache=always`, `sandbox=chroot`, `no_xattr` and both lock
/// items off, `--thread-pool-size=0`, `-d`.
#[test]
fn legacy_o_options_as_libvirt_passes_them() {
    if !need_root("legacy_o_options_as_libvirt_passes_them") {
        return;
    }
    let fs = FsDef {
        cache: Some("always"),
        sandbox: Some("chroot"),
        xattr: Some(false),
        flock: Some(false),
        posix_lock: Some(false),
        thread_pool_size: Some(0),
        debug: true,
        ..Default::default()
    };
    let s = start(dirs_with_share("sha,re"), &fs, false, &[]);
    let d = &s.daemon;
    assert!(
        s.args[2].starts_with("source=") && s.args[2].contains("sha,,re"),
        "{:?}",
        s.args
    );
    std::fs::write(d.share().join("f"), b"data").unwrap();
    let (mut c, out) = connect(d);
    let f = flags(&out);
    // source= with libvirt's doubled comma: the directory "sha,re" is served.
    let e = c.lookup(ROOT_ID, b"f").expect("the share's file");
    // cache=always: a day of caching, pages kept across opens, READDIRPLUS.
    assert_eq!((e.entry_valid, e.attr_valid), (86400, 86400), "{e:?}");
    let o = c.open(e.nodeid, libc::O_RDONLY as u32).expect("open");
    assert_eq!(c.read(e.nodeid, o.fh, 0, 4096).expect("READ"), b"data");
    assert_ne!(o.open_flags & fopen::KEEP_CACHE, 0, "{o:?}");
    assert_ne!(f & init::DO_READDIRPLUS, 0, "{f:#x}");
    assert_ne!(f & init::SUBMOUNTS, 0, "{f:#x}");
    // no_xattr: the xattr opcodes answer ENOSYS.
    assert_eq!(
        expect_errno(c.getxattr(e.nodeid, b"user.x", 16)),
        libc::ENOSYS
    );
    // sandbox=chroot: the process started serves, chrooted into the share, in our namespaces.
    let pid = serving_pid(d, "chroot");
    assert!(children(d.pid()).is_empty());
    assert_eq!(root_of(pid), dev_ino(d.share()));
    assert_eq!(ns(pid, "mnt"), ns(std::process::id(), "mnt"));
    // --thread-pool-size=0: no workers.
    assert_eq!(threads_named(pid, "fuse-worker-"), 0);
    // -o and -d: accepted, each deprecation said once.
    let log = d.log_text();
    assert!(log.contains("DEBUG] Options {"), "-d: debug: {log}");
    assert_eq!(
        log.matches("-o: deprecated option format").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("-d: deprecated").count(), 1, "{log}");
    drop(c);
}

/// `<readonly/>`: libvirt appends `--readonly`; writes fail with EROFS. Default cache and
/// sandbox (libvirt passes neither), no xattr item.
#[test]
fn readonly_as_libvirt_passes_it() {
    if !need_root("readonly_as_libvirt_passes_it") {
        return;
    }
    for separate in [true, false] {
        let fs = FsDef {
            readonly: true,
            ..Default::default()
        };
        let s = start(dirs_with_share("ro"), &fs, separate, &[]);
        assert_eq!(s.args.last().map(String::as_str), Some("--readonly"));
        let d = &s.daemon;
        let (mut c, _) = connect(d);
        assert_eq!(
            expect_errno(c.mkdir(ROOT_ID, b"nope", 0o755, 0)),
            libc::EROFS,
            "{:?}",
            s.args
        );
        // Defaults: cache auto (1 s), namespace sandbox.
        std::fs::write(d.share().join("f"), b"x").unwrap();
        let e = c.lookup(ROOT_ID, b"f").expect("lookup");
        assert_eq!(e.entry_valid, 1);
        assert_ne!(serving_pid(d, "namespace"), d.pid());
        assert!(!d.log_text().contains("DEBUG"), "log level info");
    }
}

/// What libvirt passes that vfsdaxd refuses: lock items in the legacy form (virtiofsd 1.14
/// refuses them too; libvirt itself refuses them with separate options), and the session-mode
/// id maps (the guest's ids would reach the host unmapped).
#[test]
fn refused_libvirt_options_stop_the_daemon_with_a_reason() {
    if vfsdax_tests::workload::skip_for_peer("refused_libvirt_options") {
        return;
    }
    let locks = FsDef {
        path: "/srv".into(),
        flock: Some(true),
        ..Default::default()
    };
    assert_eq!(libvirt_argv(&locks, 3, true), None, "libvirt's own refusal");
    let session = FsDef {
        path: "/srv".into(),
        uid_map: vec![(0, 1000, 1), (1, 100000, 65536)],
        gid_map: vec![(0, 1000, 1)],
        ..Default::default()
    };
    for (args, code, text) in [
        (
            libvirt_argv(&locks, 3, false).unwrap(),
            2,
            "Invalid compat argument '-o flock'",
        ),
        (
            libvirt_argv(&session, 3, true).unwrap(),
            1,
            "--uid-map: not supported",
        ),
        (
            vec!["--fd=3".into(), "-o".into(), "source=/srv,posix_acl".into()],
            1,
            "--posix-acl=always: POSIX ACLs (FUSE_POSIX_ACL) are not implemented",
        ),
    ] {
        let o = Command::new(daemon_program().expect("vfsdaxd"))
            .args(&args)
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(text), "{args:?}: {err}");
    }
}

/// virtiofsd 1.14's INIT options: `--killpriv-v2`, `--no-announce-submounts`,
/// `--no-readdirplus`, `--allow-mmap` (with `--cache=never`).
#[test]
fn init_options_take_effect() {
    if !need_root("init_options_take_effect") {
        return;
    }
    let fs = FsDef::default();
    for (extra, set, clear) in [
        (
            &[
                "--killpriv-v2",
                "--no-announce-submounts",
                "--no-readdirplus",
            ][..],
            init::HANDLE_KILLPRIV_V2,
            init::SUBMOUNTS | init::DO_READDIRPLUS | init::DIRECT_IO_ALLOW_MMAP,
        ),
        (
            &["--cache=never", "--allow-mmap", "--no-killpriv-v2"][..],
            init::DIRECT_IO_ALLOW_MMAP | init::SUBMOUNTS,
            init::HANDLE_KILLPRIV_V2 | init::DO_READDIRPLUS,
        ),
    ] {
        let s = start(dirs_with_share("share"), &fs, true, extra);
        let (_c, out) = connect(&s.daemon);
        let f = flags(&out);
        assert_eq!(f & set, set, "{extra:?}: {f:#x}");
        assert_eq!(f & clear, 0, "{extra:?}: {f:#x}");
    }
}

/// `--syslog` under the default namespace sandbox and `--seccomp kill`: the daemon connects to
/// `/dev/log` before the sandbox, and the lines of the serving child (after seccomp) arrive.
/// `/dev/log` is this test's socket, bind-mounted in a mount namespace of the daemon's own
/// (`unshare`), so the host's `/dev` is not touched.
#[test]
fn syslog_under_the_namespace_sandbox_and_seccomp_kill() {
    if !need_root("syslog_under_the_namespace_sandbox_and_seccomp_kill") {
        return;
    }
    let dirs = dirs_with_share("share");
    let sock = dirs.tmp.path().join("log.sock");
    let syslog = UnixDatagram::bind(&sock).expect("syslog socket");
    syslog
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let daemon = daemon_program().expect("vfsdaxd");
    let script = format!(
        "mount -t tmpfs none /dev && touch /dev/log && mount --bind {sock:?} /dev/log \
         && exec {daemon:?} --socket-path {socket:?} --shared-dir {share:?} --syslog \
         --sandbox namespace --seccomp kill",
        socket = dirs.socket,
        share = dirs.share,
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let d = Daemon::spawn(cmd, dirs).expect("starts");
    let (mut c, _) = connect(&d);
    c.getattr(ROOT_ID, None).expect("GETATTR");
    drop(c);
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !lines
        .iter()
        .any(|l: &String| l.contains("frontend disconnected"))
    {
        let n = syslog
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{e}: got {lines:?}\n{}", d.log_text()));
        lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let tag = format!("vfsdaxd[{}]: ", d.pid());
    assert!(lines.iter().all(|l| l.contains(&tag)), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<14>") && l.contains("seccomp filter installed")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("frontend connected")),
        "after seccomp, from the serving child: {lines:?}"
    );
    // Nothing on standard error but what is not a log record.
    assert!(!d.log_text().contains("INFO"), "{}", d.log_text());
}
