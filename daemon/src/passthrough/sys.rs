//! Thin wrappers over the libc calls the passthrough filesystem makes.
//!
//! Each wrapper turns a `-1` return into the thread's errno as an [`io::Error`] and wraps a new
//! descriptor in an owned [`File`]. No policy lives here; the callers decide what to call on
//! which descriptor.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// The empty path, for the `AT_EMPTY_PATH` family.
pub(crate) const EMPTY: &CStr = c"";

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// An [`io::Error`] carrying `errno`.
pub(crate) fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// The decimal name of `fd` inside `/proc/self/fd`.
pub(crate) fn fd_name(fd: RawFd) -> CString {
    // A decimal number never contains NUL.
    CString::new(fd.to_string()).unwrap_or_default()
}

/// The working directory [`in_dir`] returns to, opened on first use. The lock also serialises
/// every [`in_dir`] call: the working directory belongs to the whole process.
static SAVED_CWD: std::sync::Mutex<Option<File>> = std::sync::Mutex::new(None);

/// Runs `f` with the process's working directory at `dir`, then goes back to the working
/// directory the process had before its first such call. For path-only calls (xattrs) on a
/// name relative to a held descriptor: `/proc/self/fd` need not be reachable by an absolute
/// path (it is not, inside `--sandbox namespace|chroot`). Nothing else in the daemon resolves
/// a relative path once it serves, so no other thread sees the change.
///
/// Returns `f`'s result once the working directory is back. If going back fails twice, the
/// process aborts (after a line on stderr): its working directory would stay in `dir`, which
/// may lie outside the sandbox's root (`/proc/self/fd`), and a daemon whose working directory
/// escaped its root must not go on.
pub(crate) fn in_dir<T>(dir: RawFd, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let mut saved = SAVED_CWD.lock().unwrap_or_else(|e| e.into_inner());
    let back = match saved.as_ref() {
        Some(cwd) => cwd.as_raw_fd(),
        None => saved
            .insert(openat(
                libc::AT_FDCWD,
                c".",
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            )?)
            .as_raw_fd(),
    };
    // SAFETY: fchdir takes a descriptor number and changes no memory.
    cvt(unsafe { libc::fchdir(dir) })?;
    let r = f();
    // SAFETY: as above; `back` is the open directory descriptor `saved` holds.
    if let Err(e) = retry_once(|| cvt(unsafe { libc::fchdir(back) }).map(drop)) {
        eprintln!(
            "vfsdaxd: cannot return to the working directory after a call in another \
             directory ({e}); aborting rather than serving from there"
        );
        std::process::abort();
    }
    r
}

/// Runs `op`, and once more if it failed; the second result.
fn retry_once(mut op: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    op().or_else(|_| op())
}

/// `openat(dir, name, flags | O_CLOEXEC, mode)`.
pub(crate) fn openat(dir: RawFd, name: &CStr, flags: i32, mode: u32) -> io::Result<File> {
    // SAFETY: `name` is NUL-terminated and outlives the call; openat does not keep the pointer.
    let fd = cvt(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: `fd` was just returned by openat: it is open and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Attributes of a file plus the id of the mount it lives on (0 when the kernel cannot say).
#[derive(Clone, Copy)]
pub(crate) struct Stat {
    pub(crate) st: libc::stat64,
    pub(crate) mnt_id: u64,
}

/// A zeroed `stat64`.
pub(crate) fn zeroed_stat() -> libc::stat64 {
    // SAFETY: stat64 is a plain C struct of integers; all-zero bytes are a valid value.
    unsafe { MaybeUninit::<libc::stat64>::zeroed().assume_init() }
}

/// Converts a `statx` result to the `stat64` layout the server expects.
pub(crate) fn statx_to_stat64(stx: &libc::statx) -> libc::stat64 {
    let mut st = zeroed_stat();
    st.st_dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    st.st_ino = stx.stx_ino;
    st.st_nlink = stx.stx_nlink.into();
    st.st_mode = stx.stx_mode.into();
    st.st_uid = stx.stx_uid;
    st.st_gid = stx.stx_gid;
    st.st_rdev = libc::makedev(stx.stx_rdev_major, stx.stx_rdev_minor);
    st.st_size = stx.stx_size as i64;
    st.st_blksize = stx.stx_blksize.into();
    st.st_blocks = stx.stx_blocks as i64;
    st.st_atime = stx.stx_atime.tv_sec;
    st.st_atime_nsec = stx.stx_atime.tv_nsec.into();
    st.st_mtime = stx.stx_mtime.tv_sec;
    st.st_mtime_nsec = stx.stx_mtime.tv_nsec.into();
    st.st_ctime = stx.stx_ctime.tv_sec;
    st.st_ctime_nsec = stx.stx_ctime.tv_nsec.into();
    st
}

/// Stats `fd` itself (never following a symlink), with its mount id via `statx(STATX_MNT_ID)`;
/// falls back to `fstatat64` and mount id 0 when `statx` is unavailable.
pub(crate) fn stat_fd(fd: RawFd) -> io::Result<Stat> {
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: the path is a NUL-terminated static string and `stx` points to writable memory
    // the size of a `statx`, which the kernel fills; neither is kept after the call.
    let r = unsafe {
        libc::statx(
            fd,
            EMPTY.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_SYNC_AS_STAT,
            libc::STATX_BASIC_STATS | libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOSYS) {
            return Ok(Stat {
                st: fstat(fd)?,
                mnt_id: 0,
            });
        }
        return Err(e);
    }
    // SAFETY: statx succeeded, so the kernel initialised the struct (it was zeroed before).
    let stx = unsafe { stx.assume_init() };
    let mnt_id = if stx.stx_mask & libc::STATX_MNT_ID != 0 {
        stx.stx_mnt_id
    } else {
        0
    };
    Ok(Stat {
        st: statx_to_stat64(&stx),
        mnt_id,
    })
}

/// `fstatat64(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)`: attributes of `fd` itself.
pub(crate) fn fstat(fd: RawFd) -> io::Result<libc::stat64> {
    let mut st = MaybeUninit::<libc::stat64>::zeroed();
    // SAFETY: the path is a static NUL-terminated string; `st` is writable memory of the right
    // size, filled by the kernel; neither pointer is kept.
    cvt(unsafe {
        libc::fstatat64(
            fd,
            EMPTY.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat64 succeeded and filled the struct.
    Ok(unsafe { st.assume_init() })
}

/// `readlinkat(fd, "")`: the target of the symlink `fd` (an `O_PATH` descriptor), untouched.
pub(crate) fn readlink_fd(fd: RawFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is writable for `buf.len()` bytes and outlives the call.
    let n = cvt_size(unsafe {
        libc::readlinkat(fd, EMPTY.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// `mkdirat(dir, name, mode)`.
pub(crate) fn mkdirat(dir: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and not kept.
    cvt(unsafe { libc::mkdirat(dir, name.as_ptr(), mode) }).map(drop)
}

/// `mknodat(dir, name, mode, rdev)`.
pub(crate) fn mknodat(dir: RawFd, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and not kept.
    cvt(unsafe { libc::mknodat(dir, name.as_ptr(), mode, rdev) }).map(drop)
}

/// `symlinkat(target, dir, name)`.
pub(crate) fn symlinkat(target: &CStr, dir: RawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated and not kept.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) }).map(drop)
}

/// `unlinkat(dir, name, flags)`.
pub(crate) fn unlinkat(dir: RawFd, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and not kept.
    cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(drop)
}

/// `renameat2(olddir, oldname, newdir, newname, flags)`.
pub(crate) fn renameat2(
    olddir: RawFd,
    oldname: &CStr,
    newdir: RawFd,
    newname: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated and not kept.
    cvt(unsafe { libc::renameat2(olddir, oldname.as_ptr(), newdir, newname.as_ptr(), flags) })
        .map(drop)
}

/// `linkat(olddir, oldname, newdir, newname, flags)`.
pub(crate) fn linkat(
    olddir: RawFd,
    oldname: &CStr,
    newdir: RawFd,
    newname: &CStr,
    flags: i32,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated and not kept.
    cvt(unsafe { libc::linkat(olddir, oldname.as_ptr(), newdir, newname.as_ptr(), flags) })
        .map(drop)
}

/// `fchmodat(dir, name, mode, 0)` (follows `name`: used on `/proc/self/fd` entries).
pub(crate) fn fchmodat(dir: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and not kept.
    cvt(unsafe { libc::fchmodat(dir, name.as_ptr(), mode, 0) }).map(drop)
}

/// `fchmod(fd, mode)`.
pub(crate) fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::fchmod(fd, mode) }).map(drop)
}

/// `fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)`; `u32::MAX` leaves a field.
pub(crate) fn fchown_fd(fd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: the path is a static NUL-terminated string, not kept.
    cvt(unsafe {
        libc::fchownat(
            fd,
            EMPTY.as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// `utimensat(dir, name, times, 0)` (follows `name`: used on `/proc/self/fd` entries).
pub(crate) fn utimensat(dir: RawFd, name: &CStr, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `times` points to two timespecs; neither is kept.
    cvt(unsafe { libc::utimensat(dir, name.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

/// `ftruncate64(fd, size)`.
pub(crate) fn ftruncate(fd: RawFd, size: u64) -> io::Result<()> {
    let size = i64::try_from(size).map_err(|_| err(libc::EFBIG))?;
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::ftruncate64(fd, size) }).map(drop)
}

/// `fstatvfs64(fd)`.
pub(crate) fn fstatvfs(fd: RawFd) -> io::Result<libc::statvfs64> {
    let mut out = MaybeUninit::<libc::statvfs64>::zeroed();
    // SAFETY: `out` is writable memory of the right size, filled by the call and not kept.
    cvt(unsafe { libc::fstatvfs64(fd, out.as_mut_ptr()) })?;
    // SAFETY: fstatvfs64 succeeded and filled the struct.
    Ok(unsafe { out.assume_init() })
}

/// `fsync(fd)`, or `fdatasync(fd)` when `datasync`.
pub(crate) fn fsync(fd: RawFd, datasync: bool) -> io::Result<()> {
    // SAFETY: plain integer argument.
    let r = unsafe {
        if datasync {
            libc::fdatasync(fd)
        } else {
            libc::fsync(fd)
        }
    };
    cvt(r).map(drop)
}

/// `close(dup(fd))`: what a close of one of several descriptors of an open file does
/// (flushes on filesystems that flush on close, drops POSIX locks), while `fd` stays open.
pub(crate) fn flush_fd(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain integer argument; the new descriptor is closed right below.
    let dup = cvt(unsafe { libc::dup(fd) })?;
    // SAFETY: `dup` is the descriptor just created and owned by nothing else.
    cvt(unsafe { libc::close(dup) }).map(drop)
}

/// `fallocate64(fd, mode, offset, len)`.
pub(crate) fn fallocate(fd: RawFd, mode: u32, offset: u64, len: u64) -> io::Result<()> {
    let offset = i64::try_from(offset).map_err(|_| err(libc::EINVAL))?;
    let len = i64::try_from(len).map_err(|_| err(libc::EINVAL))?;
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::fallocate64(fd, mode as i32, offset, len) }).map(drop)
}

/// `lseek64(fd, offset, whence)`.
pub(crate) fn lseek(fd: RawFd, offset: i64, whence: i32) -> io::Result<u64> {
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::lseek64(fd, offset, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// `copy_file_range(fd_in, &off_in, fd_out, &off_out, len, flags)`.
pub(crate) fn copy_file_range(
    fd_in: RawFd,
    off_in: u64,
    fd_out: RawFd,
    off_out: u64,
    len: usize,
    flags: u32,
) -> io::Result<usize> {
    let mut off_in = i64::try_from(off_in).map_err(|_| err(libc::EINVAL))?;
    let mut off_out = i64::try_from(off_out).map_err(|_| err(libc::EINVAL))?;
    // SAFETY: the offsets are local variables the call updates; nothing is kept.
    cvt_size(unsafe { libc::copy_file_range(fd_in, &mut off_in, fd_out, &mut off_out, len, flags) })
}

/// `syncfs(fd)`.
pub(crate) fn syncfs(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain integer argument.
    cvt(unsafe { libc::syncfs(fd) }).map(drop)
}

/// `getdents64(fd, buf)`: raw `linux_dirent64` records; 0 at the end of the directory.
pub(crate) fn getdents64(dir: &File, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for `buf.len()` bytes and outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `getxattr(path, name)` into `buf`; an empty `buf` asks for the size.
pub(crate) fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: both strings are NUL-terminated; `buf` is writable for its length; none is kept.
    cvt_size(unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

/// `listxattr(path)` into `buf`; an empty `buf` asks for the size.
pub(crate) fn listxattr(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `path` is NUL-terminated; `buf` is writable for its length; none is kept.
    cvt_size(unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// `setxattr(path, name, value, flags)`.
pub(crate) fn setxattr(path: &CStr, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated; `value` is readable for its length; none is kept.
    cvt(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// `removexattr(path, name)`.
pub(crate) fn removexattr(path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated and not kept.
    cvt(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

/// Whether the process's effective uid is 0 (and so may switch fsuid/fsgid).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs the calling thread with the filesystem uid/gid of a guest caller until dropped.
///
/// `setfsuid`/`setfsgid` are per thread (glibc does not broadcast them), so other threads
/// keep serving requests as root. Dropping restores the previous ids, also on unwinding.
pub(crate) struct FsCredsGuard {
    old: Option<(u32, u32)>,
}

impl FsCredsGuard {
    /// Switches to `uid`/`gid` when `enabled` and the caller is not root already.
    pub(crate) fn new(enabled: bool, uid: u32, gid: u32) -> io::Result<FsCredsGuard> {
        if !enabled || (uid == 0 && gid == 0) {
            return Ok(FsCredsGuard { old: None });
        }
        // Group first: after the uid switch the thread may lack the capability to change it.
        // SAFETY: setfsgid takes an integer and only changes this thread's credentials.
        let old_gid = unsafe { libc::setfsgid(gid) } as u32;
        if current_fsgid() != gid {
            // SAFETY: as above; restores the previous value.
            unsafe { libc::setfsgid(old_gid) };
            return Err(err(libc::EPERM));
        }
        // SAFETY: setfsuid takes an integer and only changes this thread's credentials.
        let old_uid = unsafe { libc::setfsuid(uid) } as u32;
        let guard = FsCredsGuard {
            old: Some((old_uid, old_gid)),
        };
        if current_fsuid() != uid {
            return Err(err(libc::EPERM)); // `guard` restores both ids.
        }
        Ok(guard)
    }
}

impl Drop for FsCredsGuard {
    fn drop(&mut self) {
        if let Some((uid, gid)) = self.old {
            // SAFETY: restores this thread's previous fs ids; uid first so that the group
            // change is again permitted.
            unsafe {
                libc::setfsuid(uid);
                libc::setfsgid(gid);
            }
        }
    }
}

/// This thread's fsuid (`setfsuid(-1)` fails and returns the current value).
pub(crate) fn current_fsuid() -> u32 {
    // SAFETY: an invalid id changes nothing; the call only reports the current value.
    unsafe { libc::setfsuid(u32::MAX) as u32 }
}

/// This thread's fsgid.
pub(crate) fn current_fsgid() -> u32 {
    // SAFETY: an invalid id changes nothing; the call only reports the current value.
    unsafe { libc::setfsgid(u32::MAX) as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statx_conversion_copies_every_field() {
        // SAFETY: statx is plain integers; zero is valid.
        let mut stx: libc::statx = unsafe { MaybeUninit::zeroed().assume_init() };
        stx.stx_dev_major = 8;
        stx.stx_dev_minor = 3;
        stx.stx_ino = 77;
        stx.stx_nlink = 2;
        stx.stx_mode = (libc::S_IFREG | 0o640) as u16;
        stx.stx_uid = 1000;
        stx.stx_gid = 100;
        stx.stx_rdev_major = 1;
        stx.stx_rdev_minor = 5;
        stx.stx_size = 12345;
        stx.stx_blksize = 4096;
        stx.stx_blocks = 24;
        stx.stx_atime.tv_sec = 10;
        stx.stx_atime.tv_nsec = 11;
        stx.stx_mtime.tv_sec = 20;
        stx.stx_mtime.tv_nsec = 21;
        stx.stx_ctime.tv_sec = 30;
        stx.stx_ctime.tv_nsec = 31;
        let st = statx_to_stat64(&stx);
        assert_eq!(st.st_dev, libc::makedev(8, 3));
        assert_eq!(st.st_ino, 77);
        assert_eq!(st.st_nlink, 2);
        assert_eq!(st.st_mode, libc::S_IFREG | 0o640);
        assert_eq!((st.st_uid, st.st_gid), (1000, 100));
        assert_eq!(st.st_rdev, libc::makedev(1, 5));
        assert_eq!((st.st_size, st.st_blksize, st.st_blocks), (12345, 4096, 24));
        assert_eq!((st.st_atime, st.st_atime_nsec), (10, 11));
        assert_eq!((st.st_mtime, st.st_mtime_nsec), (20, 21));
        assert_eq!((st.st_ctime, st.st_ctime_nsec), (30, 31));
    }

    #[test]
    fn stat_fd_agrees_with_fstat() {
        let f = File::open("/proc/self/status").expect("open");
        let a = stat_fd(f.as_raw_fd()).expect("statx");
        let b = fstat(f.as_raw_fd()).expect("fstat");
        assert_eq!((a.st.st_dev, a.st.st_ino), (b.st_dev, b.st_ino));
        assert_eq!(a.st.st_mode, b.st_mode);
    }

    #[test]
    fn going_back_is_tried_twice() {
        let mut calls = 0;
        let flaky = retry_once(|| {
            calls += 1;
            if calls == 1 {
                Err(err(libc::EINTR))
            } else {
                Ok(())
            }
        });
        assert!(flaky.is_ok());
        assert_eq!(calls, 2);
        let mut calls = 0;
        let broken = retry_once(|| {
            calls += 1;
            Err(err(libc::EBADF))
        });
        assert_eq!(broken.map_err(|e| e.raw_os_error()), Err(Some(libc::EBADF)));
        assert_eq!(calls, 2, "no third try");
        let mut calls = 0;
        assert!(retry_once(|| {
            calls += 1;
            Ok(())
        })
        .is_ok());
        assert_eq!(calls, 1, "no second call after a success");
    }

    #[test]
    fn in_dir_returns_the_calls_own_result_and_goes_back() {
        // Read under in_dir's lock: other tests may be inside an in_dir call meanwhile.
        let cwd = || {
            let _serialised = SAVED_CWD.lock().unwrap_or_else(|e| e.into_inner());
            std::fs::read_link("/proc/self/cwd").expect("cwd")
        };
        let before = cwd();
        let tmp = File::open(std::env::temp_dir()).expect("open tmp");
        let inside = in_dir(tmp.as_raw_fd(), || std::fs::read_link("/proc/self/cwd"));
        assert_eq!(
            inside.expect("ran"),
            std::env::temp_dir().canonicalize().expect("tmp")
        );
        assert_eq!(cwd(), before);
        let failed = in_dir(tmp.as_raw_fd(), || Err::<(), _>(err(libc::ENODATA)));
        assert_eq!(
            failed.map_err(|e| e.raw_os_error()),
            Err(Some(libc::ENODATA))
        );
        assert_eq!(cwd(), before);
    }

    #[test]
    fn in_dir_aborts_when_it_cannot_go_back() {
        // Run in a process of its own (this test binary again): it must abort.
        const CHILD: &str = "VFSDAX_IN_DIR_ABORT_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let tmp = File::open(std::env::temp_dir()).expect("open tmp");
            in_dir(tmp.as_raw_fd(), || Ok(())).expect("first call");
            let back = SAVED_CWD
                .lock()
                .expect("lock")
                .as_ref()
                .expect("saved")
                .as_raw_fd();
            let not_a_dir = File::open("/dev/null").expect("open");
            // SAFETY: dup2 replaces descriptor `back`, which the saved File still owns, with
            // one that is no directory: the next fchdir(back) fails, as this test wants.
            assert!(unsafe { libc::dup2(not_a_dir.as_raw_fd(), back) } >= 0);
            let r = in_dir(tmp.as_raw_fd(), || Ok(7));
            panic!("in_dir went on with the working directory elsewhere: {r:?}");
        }
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "passthrough::sys::tests::in_dir_aborts_when_it_cannot_go_back",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .expect("run");
        use std::os::unix::process::ExitStatusExt;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{stderr}");
        assert!(
            stderr.contains("cannot return to the working directory"),
            "{stderr}"
        );
    }

    #[test]
    fn fd_names() {
        assert_eq!(fd_name(17).as_bytes(), b"17");
    }

    #[test]
    fn creds_guard_switches_and_restores() {
        if !is_root() {
            eprintln!("skipped: fsuid switching needs root");
            return;
        }
        let (u0, g0) = (current_fsuid(), current_fsgid());
        {
            let _g = FsCredsGuard::new(true, 4321, 8765).expect("switch");
            assert_eq!((current_fsuid(), current_fsgid()), (4321, 8765));
        }
        assert_eq!((current_fsuid(), current_fsgid()), (u0, g0));
        {
            // Per thread: a thread started before the switch keeps its own ids (a thread
            // started during it would inherit them).
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let other = std::thread::spawn(move || {
                go_rx.recv().expect("go");
                (current_fsuid(), current_fsgid())
            });
            let _g = FsCredsGuard::new(true, 4321, 8765).expect("switch");
            go_tx.send(()).expect("send");
            assert_eq!(other.join().expect("thread"), (u0, g0));
            assert_eq!(current_fsuid(), 4321);
        }
        let _g = FsCredsGuard::new(false, 4321, 8765).expect("noop");
        assert_eq!(current_fsuid(), u0);
    }
}
