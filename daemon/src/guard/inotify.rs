//! A thin inotify layer for the guard's after-the-fact watch: `IN_MODIFY` is raised for every
//! write and every size change of a watched file, on every filesystem (tmpfs included). A
//! fanotify group in file-descriptor mode does not report size changes (they carry no path), so
//! inotify is the one that sees a truncation the kernel did not announce before.
//!
//! Watches are added by the file's `/proc/self/fd/<n>` name (inotify has no call taking a
//! descriptor), so they need `/proc` (every sandbox mode but `chroot` has one).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub use vfsdax_protocol::inotify::parse_events;

/// An inotify instance.
#[derive(Debug)]
pub struct Inotify {
    fd: OwnedFd,
}

impl Inotify {
    /// A non-blocking instance.
    pub fn new() -> io::Result<Inotify> {
        // SAFETY: inotify_init1 takes an integer and returns a new descriptor or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by inotify_init1 and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Inotify { fd })
    }

    /// Watches the file open as `file` for `IN_MODIFY`; its watch descriptor. The file is
    /// named `<n>` inside `proc_self_fd` (a descriptor of `/proc/self/fd`, reachable in every
    /// sandbox) when given, else `/proc/self/fd/<n>`.
    pub fn watch(&self, proc_self_fd: Option<&File>, file: &File) -> io::Result<i32> {
        let add = |path: &str| {
            let path = std::ffi::CString::new(path).map_err(io::Error::other)?;
            // SAFETY: `path` is a NUL-terminated string alive for the call; the rest are
            // integers.
            let wd = unsafe {
                libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), libc::IN_MODIFY)
            };
            if wd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(wd)
        };
        let n = file.as_raw_fd();
        match proc_self_fd {
            Some(dir) => crate::passthrough::sys::in_dir(dir.as_raw_fd(), || add(&n.to_string())),
            None => add(&format!("/proc/self/fd/{n}")),
        }
    }

    /// Stops watch `wd`.
    pub fn unwatch(&self, wd: i32) {
        // SAFETY: inotify_rm_watch takes two integers.
        unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
    }

    /// The pending events (none: `WouldBlock`).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<Vec<(i32, u32)>> {
        // SAFETY: read writes at most `buf.len()` bytes into `buf`, a live mutable slice.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(parse_events(&buf[..n as usize]))
    }
}

impl AsRawFd for Inotify {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncation_raises_in_modify() {
        let dir = std::env::temp_dir().join(format!("vfsdax-inotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, vec![1u8; 8192]).unwrap();
        let ino = Inotify::new().unwrap();
        let f = File::open(&path).unwrap();
        let wd = ino.watch(None, &f).unwrap();
        let proc_fd = File::open("/proc/self/fd").unwrap();
        assert_eq!(ino.watch(Some(&proc_fd), &f).unwrap(), wd, "the same inode");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let ev = ino.read(&mut buf).unwrap();
        assert!(ev.contains(&(wd, libc::IN_MODIFY)), "{ev:?}");
        ino.unwatch(wd);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
