//! Process sandbox (`--sandbox namespace|chroot|none`, virtiofsd's values and default,
//! `namespace`).
//!
//! - `namespace`: new mount, PID, network and IPC namespaces (`unshare`). The daemon forks
//!   into the new PID namespace and the parent stays outside as a supervisor
//!   (`supervisor.rs`), in the host's namespaces and root: only the child unshares the mount,
//!   network and IPC namespaces. The child makes every mount a slave so nothing done here reaches the host (host mounts
//!   still propagate in), mounts a fresh `/proc` for its PID namespace, bind-mounts the share
//!   onto itself, makes it the root with `pivot_root(".", ".")` and detaches the old root
//!   (`umount2(".", MNT_DETACH)`). Nothing is mounted or created inside the share: the guest
//!   sees exactly what it saw before.
//! - `chroot`: `chroot(share)` only, for hosts where namespaces or mounts are not allowed.
//! - `none`: nothing.
//!
//! Both sandboxes open `/proc/self/fd` before the root changes ([`Sandbox::proc_self_fd`]):
//! the passthrough filesystem reopens inodes and reaches xattrs only through it. The share is
//! opened afterwards, as `/`, so every inode descriptor lies under the process root and the
//! kernel keeps even a `..` at the root inside the share. The vhost-user socket and its lock
//! file are outside the share and created before: [`SocketFiles`] removes them at exit
//! through a descriptor of their directory, since their paths mean something else (or, under
//! `chroot`, a file of the share) afterwards.
//!
//! Namespaces belong to each thread: [`enter`] refuses to run once the process has a second
//! thread, which would stay outside.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};

use thiserror::Error;

mod supervisor;

pub use supervisor::{exit_as, ExitAs, SupervisorDuty};

/// How the daemon confines itself before it serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxMode {
    /// No sandbox.
    None,
    /// New mount, PID, network and IPC namespaces with the share as the root (needs
    /// `CAP_SYS_ADMIN`); the default.
    #[default]
    Namespace,
    /// `chroot` into the share (needs `CAP_SYS_CHROOT`).
    Chroot,
}

/// One step of entering a sandbox, in the order [`steps`] lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Refuse if another thread runs (it would keep the old namespaces and root).
    CheckSingleThreaded,
    /// `unshare(CLONE_NEWPID)`: the next child is in a new PID namespace.
    UnsharePid,
    /// `fork`: the child is PID 1 of the new PID namespace and goes on; the parent supervises.
    ForkPidNamespace,
    /// `unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC)`, in the child only: the
    /// supervisor keeps the host's mounts and root.
    UnshareOthers,
    /// `mount(NULL, "/", NULL, MS_REC | MS_SLAVE)`: nothing mounted here propagates out.
    MountsSlave,
    /// A `proc` of the new PID namespace on `/proc` (host processes out of sight).
    MountProc,
    /// Bind-mount the share onto itself (`pivot_root` needs a mount point).
    BindShare,
    /// Open `/proc/self/fd` while it is still reachable.
    OpenProcSelfFd,
    /// `chdir(share)`, `pivot_root(".", ".")`: the share is the root, the old root on top.
    PivotRoot,
    /// `umount2(".", MNT_DETACH)`: the old root is gone from the namespace.
    DetachOldRoot,
    /// `chroot(share)`.
    Chroot,
    /// `chdir("/")`: no working directory outside the root.
    ChdirRoot,
}

/// The steps `mode` takes, in order (none for [`SandboxMode::None`]).
pub fn steps(mode: SandboxMode) -> &'static [Step] {
    use Step::*;
    match mode {
        SandboxMode::None => &[],
        SandboxMode::Namespace => &[
            CheckSingleThreaded,
            UnsharePid,
            ForkPidNamespace,
            UnshareOthers,
            MountsSlave,
            MountProc,
            BindShare,
            OpenProcSelfFd,
            PivotRoot,
            DetachOldRoot,
            ChdirRoot,
        ],
        SandboxMode::Chroot => &[CheckSingleThreaded, OpenProcSelfFd, Chroot, ChdirRoot],
    }
}

/// Errors entering the sandbox.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// The shared directory could not be resolved to an absolute path.
    #[error("cannot resolve the shared directory {}", .0.display())]
    Share(PathBuf, #[source] io::Error),
    /// The process already runs more than one thread.
    #[error("the sandbox must be entered before any thread starts, and {0} threads run")]
    Threads(usize),
    /// `/proc/self/fd` could not be opened.
    #[error("cannot open /proc/self/fd (is /proc mounted?)")]
    ProcSelfFd(#[source] io::Error),
    /// A step failed.
    #[error("--sandbox {mode}: cannot {what}{hint}")]
    Step {
        /// The mode's name.
        mode: &'static str,
        /// What was being done.
        what: String,
        /// What to try instead.
        hint: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What the rest of the daemon needs from the sandbox.
#[derive(Debug)]
pub struct Sandbox {
    /// `/proc/self/fd` (`O_PATH`), opened before the root changed; `None` without a sandbox.
    pub proc_self_fd: Option<File>,
    /// The share's path from now on: `/` inside a sandbox, else the path given.
    pub share: PathBuf,
}

/// Enters the sandbox `mode` with `shared_dir` as the new root. Must run before any thread
/// is started.
///
/// Under [`SandboxMode::Namespace`] the calling process forks: the child returns from this
/// call inside the sandbox; the parent never returns: it forwards SIGTERM and SIGINT to the
/// child, runs `on_exit` once the child ended and exits the same way ([`exit_as`]). The
/// parent enters no namespace but the child's PID one (as its parent, not its member) and
/// keeps the host's root, so paths still mean what they meant for `on_exit`. It also serves
/// `duty` (ignored by the other modes, which have no supervisor); the child closes it. What
/// `child_only` holds belongs to the daemon: the supervisor drops it (closing its descriptors)
/// before it supervises.
pub fn enter<T>(
    mode: SandboxMode,
    shared_dir: &Path,
    on_exit: &dyn Fn(),
    mut duty: Option<Box<dyn SupervisorDuty>>,
    child_only: &mut Option<T>,
) -> Result<Sandbox, SandboxError> {
    if mode == SandboxMode::None {
        return Ok(Sandbox {
            proc_self_fd: None,
            share: shared_dir.to_path_buf(),
        });
    }
    let mode_name = match mode {
        SandboxMode::Namespace => "namespace",
        _ => "chroot",
    };
    let hint = match mode {
        SandboxMode::Namespace => {
            " (it needs CAP_SYS_ADMIN; --sandbox chroot or none run without namespaces)"
        }
        _ => " (it needs CAP_SYS_CHROOT; --sandbox none runs without it)",
    };
    let share = std::fs::canonicalize(shared_dir)
        .map_err(|e| SandboxError::Share(shared_dir.to_path_buf(), e))?;
    let cshare = CString::new(share.as_os_str().as_encoded_bytes()).map_err(|_| {
        SandboxError::Share(
            shared_dir.to_path_buf(),
            io::Error::from_raw_os_error(libc::EINVAL),
        )
    })?;
    let step_err = |what: String| {
        move |source| SandboxError::Step {
            mode: mode_name,
            what,
            hint,
            source,
        }
    };
    let mut proc_self_fd = None;
    for step in steps(mode) {
        match step {
            Step::CheckSingleThreaded => {
                let n = thread_count().map_err(SandboxError::ProcSelfFd)?;
                if n != 1 {
                    return Err(SandboxError::Threads(n));
                }
            }
            Step::UnsharePid => {
                unshare(libc::CLONE_NEWPID).map_err(step_err("create a PID namespace".into()))?
            }
            Step::UnshareOthers => {
                unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC)
                    .map_err(step_err("create mount, network and IPC namespaces".into()))?
            }
            Step::ForkPidNamespace => {
                match supervisor::fork().map_err(step_err("fork into the PID namespace".into()))? {
                    // The duty's descriptors are the supervisor's alone.
                    supervisor::Forked::Child => drop(duty.take()),
                    supervisor::Forked::Parent(child) => {
                        drop(child_only.take());
                        supervisor::supervise(child, on_exit, duty.take())
                    }
                }
            }
            Step::MountProc => mount(
                Some(c"proc"),
                c"/proc",
                Some(c"proc"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            )
            .map_err(step_err("mount /proc for the PID namespace".into()))?,
            Step::MountsSlave => mount(None, c"/", None, libc::MS_REC | libc::MS_SLAVE)
                .map_err(step_err("make the mounts slaves".into()))?,
            Step::BindShare => {
                mount(Some(&cshare), &cshare, None, libc::MS_BIND | libc::MS_REC).map_err(
                    step_err(format!("bind-mount {} onto itself", share.display())),
                )?
            }
            Step::OpenProcSelfFd => {
                proc_self_fd = Some(open_dir(c"/proc/self/fd").map_err(SandboxError::ProcSelfFd)?)
            }
            Step::PivotRoot => {
                chdir(&cshare).map_err(step_err(format!("enter {}", share.display())))?;
                pivot_root(c".", c".")
                    .map_err(step_err(format!("make {} the root", share.display())))?;
            }
            Step::DetachOldRoot => {
                umount_detach(c".").map_err(step_err("detach the old root".into()))?
            }
            Step::Chroot => {
                chroot(&cshare).map_err(step_err(format!("chroot to {}", share.display())))?
            }
            Step::ChdirRoot => chdir(c"/").map_err(step_err("change to the new root".into()))?,
        }
    }
    Ok(Sandbox {
        proc_self_fd,
        share: PathBuf::from("/"),
    })
}

/// How many threads the process runs (entries of `/proc/self/task`).
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// How many threads the process runs, read through `proc_self_fd` (a descriptor of
/// `/proc/self/fd`, reachable inside the sandbox) when given, else by path.
pub fn thread_count_at(proc_self_fd: Option<&File>) -> io::Result<usize> {
    let Some(dir) = proc_self_fd else {
        return thread_count();
    };
    // SAFETY: openat reads the NUL-terminated name; `dir` is an open directory descriptor.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c"../status".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    let status = io::read_to_string(unsafe { File::from_raw_fd(fd) })?;
    threads_in_status(&status).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The `Threads:` field of a `/proc/<pid>/status` text.
pub fn threads_in_status(status: &str) -> Option<usize> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A file's identity: its `(st_dev, st_ino)`.
pub type FileId = (u64, u64);

/// Whether a name that now refers to `current` (`None`: nothing there, or it cannot be
/// stat'ed) may be removed as the file recorded as `recorded`: only if it is still that file.
pub fn still_ours(recorded: FileId, current: Option<FileId>) -> bool {
    current == Some(recorded)
}

/// The vhost-user socket file and its lock file, removed through a descriptor of their
/// directory: it stays valid whatever the process root becomes.
///
/// Each name is removed only while it still refers to the file it referred to when
/// [`SocketFiles::new`] ran (right after the bind): once this daemon removed its files,
/// another daemon may bind the same path, and the supervisor's late clean-up must leave that
/// one's files alone. The check (`fstatat`) and the removal (`unlinkat`) are two calls: a
/// file replaced between them is still removed; no call removes a name only if it is a given
/// inode.
#[derive(Debug)]
pub struct SocketFiles {
    dir: File,
    names: Vec<(CString, FileId)>,
}

impl SocketFiles {
    /// Remembers `socket` and `lock` (same directory) and the files they are now; fails if
    /// the directory cannot be opened or either file cannot be stat'ed.
    pub fn new(socket: &Path, lock: &Path) -> io::Result<SocketFiles> {
        let dir_of = |p: &Path| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = dir_of(socket);
        if dir_of(lock) != dir {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        let cdir = CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let dir = open_dir(&cdir)?;
        let names = [socket, lock]
            .iter()
            .map(|p| {
                let name = p.file_name().ok_or(io::ErrorKind::InvalidInput)?;
                let name = CString::new(name.as_encoded_bytes())
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                let id = file_id(&dir, &name)?;
                Ok((name, id))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(SocketFiles { dir, names })
    }

    /// Removes both files if their names still refer to them (errors ignored: they may be
    /// gone already).
    pub fn remove(&self) {
        for (name, id) in &self.names {
            if still_ours(*id, file_id(&self.dir, name).ok()) {
                // SAFETY: `name` is NUL-terminated and not kept; `dir` is an open descriptor.
                unsafe { libc::unlinkat(self.dir.as_raw_fd(), name.as_ptr(), 0) };
            }
        }
    }
}

/// The identity of `name` in `dir` (the name itself, not a symlink's target).
fn file_id(dir: &File, name: &CStr) -> io::Result<FileId> {
    let mut st = std::mem::MaybeUninit::<libc::stat64>::uninit();
    // SAFETY: `name` is NUL-terminated and not kept; `st` is writable for one stat64, which
    // fstatat64 fills on success.
    cvt(unsafe {
        libc::fstatat64(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat64 succeeded, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok((st.st_dev, st.st_ino))
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `open(path, O_PATH | O_DIRECTORY | O_CLOEXEC)`.
fn open_dir(path: &CStr) -> io::Result<File> {
    // SAFETY: `path` is NUL-terminated and not kept.
    let fd: RawFd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    cvt(fd)?;
    // SAFETY: `fd` was just returned by open: it is open and owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes flags only and changes no memory of this process.
    cvt(unsafe { libc::unshare(flags) })
}

fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every string is NUL-terminated or null (allowed for these flags); the kernel
    // copies them and keeps no pointer; the data argument is null.
    cvt(unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            std::ptr::null(),
        )
    })
}

fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: both paths are NUL-terminated and not kept; pivot_root has no libc wrapper.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    cvt(r as libc::c_int)
}

fn umount_detach(target: &CStr) -> io::Result<()> {
    // SAFETY: `target` is NUL-terminated and not kept.
    cvt(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })
}

fn chroot(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and not kept.
    cvt(unsafe { libc::chroot(path.as_ptr()) })
}

fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and not kept.
    cvt(unsafe { libc::chdir(path.as_ptr()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(mode: SandboxMode, step: Step) -> usize {
        steps(mode)
            .iter()
            .position(|&s| s == step)
            .unwrap_or_else(|| panic!("{mode:?} lacks {step:?}"))
    }

    #[test]
    fn none_does_nothing() {
        assert!(steps(SandboxMode::None).is_empty());
        let s = enter(
            SandboxMode::None,
            Path::new("relative/share"),
            &|| {},
            None,
            &mut None::<()>,
        )
        .expect("none");
        assert!(s.proc_self_fd.is_none());
        assert_eq!(s.share, Path::new("relative/share"));
    }

    #[test]
    fn namespace_steps_are_ordered() {
        use Step::*;
        let m = SandboxMode::Namespace;
        assert_eq!(steps(m)[0], CheckSingleThreaded, "threads checked first");
        assert!(position(m, UnsharePid) < position(m, ForkPidNamespace));
        assert!(
            position(m, ForkPidNamespace) < position(m, UnshareOthers),
            "the supervisor keeps the host's mounts, network and IPC"
        );
        assert!(
            position(m, UnshareOthers) < position(m, MountsSlave),
            "mounts change only in a mount namespace of the child's own"
        );
        assert!(
            position(m, MountsSlave) < position(m, MountProc),
            "the new /proc stays out of the host"
        );
        assert!(
            position(m, MountProc) < position(m, OpenProcSelfFd),
            "/proc/self/fd of the PID namespace"
        );
        assert!(
            position(m, MountsSlave) < position(m, BindShare),
            "no mount before propagation to the host is cut"
        );
        assert!(position(m, BindShare) < position(m, PivotRoot));
        assert!(
            position(m, OpenProcSelfFd) < position(m, PivotRoot),
            "/proc is unreachable after the pivot"
        );
        assert!(position(m, PivotRoot) < position(m, DetachOldRoot));
        assert_eq!(*steps(m).last().expect("steps"), ChdirRoot);
        assert!(!steps(m).contains(&Chroot));
    }

    #[test]
    fn chroot_steps_are_ordered() {
        use Step::*;
        let m = SandboxMode::Chroot;
        assert_eq!(steps(m)[0], CheckSingleThreaded);
        assert!(position(m, OpenProcSelfFd) < position(m, Chroot));
        assert_eq!(*steps(m).last().expect("steps"), ChdirRoot);
        for s in [
            UnsharePid,
            ForkPidNamespace,
            UnshareOthers,
            MountsSlave,
            MountProc,
            BindShare,
            PivotRoot,
            DetachOldRoot,
        ] {
            assert!(!steps(m).contains(&s), "chroot takes no {s:?}");
        }
    }

    #[test]
    fn a_threaded_process_is_refused() {
        // A second thread for the length of the test (the harness may run tests on the main
        // thread), so nothing here can really change this process's root.
        let (stop, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || wait.recv());
        assert!(thread_count().expect("count") > 1);
        let dir = std::env::temp_dir();
        for mode in [SandboxMode::Namespace, SandboxMode::Chroot] {
            match enter(mode, &dir, &|| {}, None, &mut None::<()>) {
                Err(SandboxError::Threads(n)) => assert!(n > 1),
                other => panic!("{mode:?}: expected Threads, got {other:?}"),
            }
        }
        assert!(matches!(
            enter(
                SandboxMode::Chroot,
                Path::new("/no/such/vfsdax/share"),
                &|| {},
                None,
                &mut None::<()>
            ),
            Err(SandboxError::Share(..))
        ));
        stop.send(()).expect("stop");
        other.join().expect("join").expect("recv");
    }

    #[test]
    fn socket_files_are_removed_through_their_directory() {
        let dir = std::env::temp_dir().join(format!("vfsdax-sandbox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let (sock, lock) = (dir.join("s"), dir.join("s.lock"));
        std::fs::write(&sock, b"").expect("socket stand-in");
        std::fs::write(&lock, b"").expect("lock");
        let files = SocketFiles::new(&sock, &lock).expect("open dir");
        // The directory is found again by descriptor even once its path changed.
        let moved = dir.with_extension("moved");
        std::fs::rename(&dir, &moved).expect("rename");
        files.remove();
        assert!(!moved.join("s").exists() && !moved.join("s.lock").exists());
        files.remove(); // already gone: no error, no panic
        std::fs::remove_dir(&moved).expect("rmdir");
        assert!(
            SocketFiles::new(&sock, &lock).is_err(),
            "the files must exist to be recorded"
        );
        assert!(SocketFiles::new(&sock, Path::new("/elsewhere/s.lock")).is_err());
    }

    #[test]
    fn only_the_recorded_files_are_removed() {
        assert!(still_ours((1, 2), Some((1, 2))));
        assert!(!still_ours((1, 2), Some((1, 3))), "another inode");
        assert!(!still_ours((1, 2), Some((4, 2))), "another device");
        assert!(!still_ours((1, 2), None), "nothing there");

        // A daemon bound the same path after this one's files were gone: its files stay.
        let dir = std::env::temp_dir().join(format!("vfsdax-sandbox-new-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let (sock, lock) = (dir.join("s"), dir.join("s.lock"));
        std::fs::write(&sock, b"old").expect("socket stand-in");
        std::fs::write(&lock, b"old").expect("lock");
        let files = SocketFiles::new(&sock, &lock).expect("record");
        // Renamed away (kept, so their inode numbers cannot be reused), then made again.
        std::fs::rename(&sock, dir.join("old-s")).expect("rename");
        std::fs::rename(&lock, dir.join("old-lock")).expect("rename");
        std::fs::write(&sock, b"new").expect("new socket");
        std::fs::write(&lock, b"new").expect("new lock");
        files.remove();
        assert_eq!(std::fs::read(&sock).expect("kept"), b"new");
        assert_eq!(std::fs::read(&lock).expect("kept"), b"new");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
