//! The scratch share the `fuse_server` target serves: a small template tree on a private tmpfs,
//! rebuilt only when a request changed it, and a sentinel file next to the share that no request
//! may reach.
//!
//! Escapes: the sentinel's status (and, on the private tmpfs, mounted `strictatime`, its access
//! time, so a read shows) and that of the directory holding the share must not change.
//!
//! Isolation: the first use moves the fuzzing thread into a mount namespace of its own
//! (`unshare(CLONE_NEWNS)`, every mount private) and mounts a 64 MiB `nosuid,nodev` tmpfs on
//! [`MOUNTPOINT`]: whatever the requests create (sparse or fallocated files, device nodes,
//! xattrs) stays in that bounded tmpfs, invisible to the host, and goes away with the process.
//! Without the rights for that (not root), a temporary directory is used instead, file sizes are
//! capped with `RLIMIT_FSIZE` and the share refuses device nodes.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the private tmpfs is mounted (an empty directory on the host).
pub const MOUNTPOINT: &str = "/tmp/vfsdax-fuzz-scratch";

/// The content of the file next to the share; a reply carrying it means a request escaped.
pub const SENTINEL: &[u8] = b"VFSDAX-FUZZ-SENTINEL-OUTSIDE-THE-SHARE";

/// Size of `file` in the template.
pub const FILE_SIZE: usize = 8192;
/// Size of the sparse `big` in the template (two 2 MiB DAX chunks and a bit).
pub const BIG_SIZE: u64 = (4 << 20) + 100;

/// What `lstat` says of a path, as far as a change shows in it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    size: u64,
    blocks: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
    /// Only compared for the sentinel (on the private tmpfs every read updates it).
    atime: (i64, i64),
}

fn stamp(p: &Path) -> Option<Stamp> {
    let m = fs::symlink_metadata(p).ok()?;
    Some(Stamp {
        ino: m.ino(),
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        nlink: m.nlink(),
        size: m.size(),
        blocks: m.blocks(),
        ctime: (m.ctime(), m.ctime_nsec()),
        mtime: (m.mtime(), m.mtime_nsec()),
        atime: (0, 0),
    })
}

fn stamp_with_atime(p: &Path) -> Option<Stamp> {
    let m = fs::symlink_metadata(p).ok()?;
    Some(Stamp {
        atime: (m.atime(), m.atime_nsec()),
        ..stamp(p)?
    })
}

/// Template entries, relative to the share ("" is the share itself).
const TEMPLATE: &[&str] = &[
    "",
    "file",
    "big",
    "ro",
    "dir",
    "dir/inner",
    "link",
    "esc",
    "fifo",
];

/// The scratch share.
pub struct Scratch {
    root: PathBuf,
    share: PathBuf,
    outside: PathBuf,
    isolated: bool,
    snapshot: Vec<Option<Stamp>>,
    outside_snapshot: (Option<Stamp>, Option<Stamp>),
    rebuilds: u64,
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// Mounts the private tmpfs; false if this process may not.
fn isolate() -> bool {
    // An empty directory on the host (0755: the umask is 0 here).
    if fs::create_dir_all(MOUNTPOINT).is_err()
        || fs::set_permissions(MOUNTPOINT, fs::Permissions::from_mode(0o755)).is_err()
    {
        return false;
    }
    // SAFETY: unshare and mount take no pointers but the NUL-terminated strings below, which
    // outlive the calls. unshare(CLONE_NEWNS) moves only this thread to a new mount namespace.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return false;
        }
        // Nothing mounted from here on may reach the host's namespace.
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return false;
        }
        let target = c(Path::new(MOUNTPOINT));
        libc::mount(
            c"vfsdax-fuzz".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            // strictatime: a read of the sentinel shows in its atime.
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_STRICTATIME,
            c"size=64m,nr_inodes=16384,mode=0755".as_ptr().cast(),
        ) == 0
    }
}

impl Scratch {
    /// Sets up the isolated tmpfs (or the fallback directory) and the template.
    pub fn new() -> Scratch {
        // As vfsdaxd does once its socket is bound: the guest's mode and umask decide alone.
        // SAFETY: umask only changes the process's file mode creation mask.
        unsafe { libc::umask(0) };
        let isolated = isolate();
        let root = if isolated {
            PathBuf::from(MOUNTPOINT)
        } else {
            let dir = std::env::temp_dir().join(format!("vfsdax-fuzz-{}", std::process::id()));
            fs::create_dir_all(&dir).expect("scratch directory");
            // SAFETY: setrlimit and signal take no pointers but `lim`, which outlives the call.
            unsafe {
                let lim = libc::rlimit {
                    rlim_cur: 64 << 20,
                    rlim_max: 64 << 20,
                };
                libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            }
            dir
        };
        let mut s = Scratch {
            share: root.join("share"),
            outside: root.join("outside"),
            root,
            isolated,
            snapshot: Vec::new(),
            outside_snapshot: (None, None),
            rebuilds: 0,
        };
        fs::write(&s.outside, SENTINEL).expect("sentinel");
        s.rebuild();
        s
    }

    /// The shared directory.
    pub fn share(&self) -> &Path {
        &self.share
    }

    /// Whether the share is on the private tmpfs.
    pub fn isolated(&self) -> bool {
        self.isolated
    }

    /// How often the template was rebuilt.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    fn take_snapshot(&mut self) {
        self.snapshot = TEMPLATE
            .iter()
            .map(|p| stamp(&self.share.join(p)))
            .collect();
        self.outside_snapshot = (stamp(&self.root), stamp_with_atime(&self.outside));
    }

    fn rebuild(&mut self) {
        self.rebuilds += 1;
        if self.share.exists() {
            fs::remove_dir_all(&self.share).expect("remove the old share");
        }
        let sh = &self.share;
        let mode = |p: &Path, m: u32| {
            fs::set_permissions(p, fs::Permissions::from_mode(m)).expect("chmod");
        };
        fs::create_dir(sh).expect("share");
        mode(sh, 0o777);
        let data: Vec<u8> = (0..FILE_SIZE).map(|i| (i * 7 + 3) as u8).collect();
        fs::write(sh.join("file"), &data).expect("file");
        mode(&sh.join("file"), 0o666);
        let big = fs::File::create(sh.join("big")).expect("big");
        big.set_len(BIG_SIZE).expect("big size");
        mode(&sh.join("big"), 0o666);
        fs::write(sh.join("ro"), b"read only\n").expect("ro");
        mode(&sh.join("ro"), 0o444);
        std::os::unix::fs::chown(sh.join("ro"), Some(1000), Some(1000)).ok();
        fs::create_dir(sh.join("dir")).expect("dir");
        mode(&sh.join("dir"), 0o777);
        fs::write(sh.join("dir/inner"), [b'i'; 100]).expect("inner");
        symlink("file", sh.join("link")).expect("link");
        symlink("../outside", sh.join("esc")).expect("esc");
        let fifo = c(&sh.join("fifo"));
        // SAFETY: `fifo` is a NUL-terminated path that outlives the call.
        unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) };
        let file = c(&sh.join("file"));
        // SAFETY: NUL-terminated strings and a 1-byte value that outlive the call.
        unsafe {
            libc::setxattr(
                file.as_ptr(),
                c"user.fuzz".as_ptr(),
                b"1".as_ptr().cast(),
                1,
                0,
            )
        };
        self.take_snapshot();
    }

    /// Checks that nothing outside the share changed (panics if it did: a request escaped),
    /// then rebuilds the template if anything in it changed.
    pub fn check_and_reset(&mut self) {
        let now = (stamp(&self.root), stamp_with_atime(&self.outside));
        assert!(
            now == self.outside_snapshot,
            "a request read or changed something outside the share: {:?} -> {:?}",
            self.outside_snapshot,
            now
        );
        let changed = TEMPLATE
            .iter()
            .zip(&self.snapshot)
            .any(|(p, s)| stamp(&self.share.join(p)) != *s);
        if changed {
            self.rebuild();
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}
