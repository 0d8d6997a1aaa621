//! Attribute operations: GETATTR, SETATTR, READLINK, ACCESS, STATFS, SYNCFS.

use std::io;
use std::os::fd::AsRawFd;

use vfsdax_protocol::fuse::flags::fattr;
use vfsdax_protocol::fuse::SetattrIn;

use super::sys::{self, err};
use super::{perm, PassthroughFs};
use crate::filesystem::{AttrReply, Context, Handle, Inode};

/// One `timespec` of a `utimensat` call from a SETATTR time field.
fn time_spec(valid: u32, set: u32, now: u32, sec: u64, nsec: u32) -> io::Result<libc::timespec> {
    let (tv_sec, tv_nsec) = if valid & now != 0 {
        (0, libc::UTIME_NOW)
    } else if valid & set != 0 {
        if nsec >= 1_000_000_000 {
            return Err(err(libc::EINVAL));
        }
        let sec = i64::try_from(sec).map_err(|_| err(libc::EINVAL))?;
        (sec, i64::from(nsec))
    } else {
        (0, libc::UTIME_OMIT)
    };
    Ok(libc::timespec { tv_sec, tv_nsec })
}

/// The two `utimensat` times of a SETATTR, or `None` when it sets no time.
pub(super) fn setattr_times(a: &SetattrIn) -> io::Result<Option<[libc::timespec; 2]>> {
    let v = a.valid;
    if v & (fattr::ATIME | fattr::MTIME | fattr::ATIME_NOW | fattr::MTIME_NOW) == 0 {
        return Ok(None);
    }
    Ok(Some([
        time_spec(v, fattr::ATIME, fattr::ATIME_NOW, a.atime, a.atimensec)?,
        time_spec(v, fattr::MTIME, fattr::MTIME_NOW, a.mtime, a.mtimensec)?,
    ]))
}

impl PassthroughFs {
    fn attr_reply(&self, attr: libc::stat64) -> AttrReply {
        AttrReply {
            attr,
            attr_flags: 0,
            timeout: self.timeout(),
        }
    }

    pub(super) fn do_getattr(&self, inode: Inode, handle: Option<Handle>) -> io::Result<AttrReply> {
        let st = match handle {
            Some(h) => sys::fstat(self.handles.get(h, inode)?.fd())?,
            None => sys::fstat(self.inode(inode)?.fd())?,
        };
        Ok(self.attr_reply(st))
    }

    pub(super) fn do_setattr(
        &self,
        ctx: Context,
        inode: Inode,
        a: &SetattrIn,
        handle: Option<Handle>,
    ) -> io::Result<AttrReply> {
        self.check_writable()?;
        let data = self.inode(inode)?;
        let hd = handle.map(|h| self.handles.get(h, inode)).transpose()?;
        let v = a.valid;
        let times = setattr_times(a)?;

        if v & fattr::KILL_SUIDGID != 0 && v & fattr::MODE == 0 {
            self.kill_privs(&data)?;
        }
        if v & fattr::MODE != 0 {
            self.chmod_inode(&data, a.mode & 0o7777)?;
        }
        if v & (fattr::UID | fattr::GID) != 0 {
            let uid = if v & fattr::UID != 0 { a.uid } else { u32::MAX };
            let gid = if v & fattr::GID != 0 { a.gid } else { u32::MAX };
            sys::fchown_fd(data.fd(), uid, gid)?;
        }
        if v & fattr::SIZE != 0 {
            // The window is made safe first if the file has live DAX mappings.
            match hd.as_ref().filter(|h| h.writable()) {
                Some(h) => {
                    self.before_guest_truncate(ctx.pid, &h.file, a.size);
                    sys::ftruncate(h.fd(), a.size)?
                }
                None => {
                    if data.is_dir() {
                        return Err(err(libc::EISDIR));
                    }
                    if !data.is_reg() {
                        return Err(err(libc::EINVAL));
                    }
                    let f = self.reopen(&data, libc::O_WRONLY)?;
                    self.before_guest_truncate(ctx.pid, &f, a.size);
                    sys::ftruncate(f.as_raw_fd(), a.size)?;
                }
            }
        }
        if let Some(times) = times {
            // Through the magic link: works for every file type (a symlink's own times).
            sys::utimensat(
                self.proc_self_fd.as_raw_fd(),
                &sys::fd_name(data.fd()),
                &times,
            )?;
        }
        Ok(self.attr_reply(sys::fstat(data.fd())?))
    }

    pub(super) fn do_readlink(&self, inode: Inode) -> io::Result<Vec<u8>> {
        let data = self.inode(inode)?;
        if !data.is_symlink() {
            return Err(err(libc::EINVAL));
        }
        sys::readlink_fd(data.fd())
    }

    pub(super) fn do_access(&self, ctx: Context, inode: Inode, mask: u32) -> io::Result<()> {
        let data = self.inode(inode)?;
        let st = sys::fstat(data.fd())?;
        if mask & libc::W_OK as u32 != 0 && self.cfg.readonly {
            return Err(err(libc::EROFS));
        }
        perm::check_access(st.st_mode, st.st_uid, st.st_gid, ctx.uid, ctx.gid, mask)
    }

    pub(super) fn do_statfs(&self, inode: Inode) -> io::Result<libc::statvfs64> {
        sys::fstatvfs(self.inode(inode)?.fd())
    }

    pub(super) fn do_syncfs(&self, inode: Inode) -> io::Result<()> {
        let data = self.inode(inode)?;
        // syncfs needs a real descriptor, not O_PATH.
        let flags = if data.is_dir() {
            libc::O_RDONLY | libc::O_DIRECTORY
        } else {
            libc::O_RDONLY
        };
        let f = self.reopen(&data, flags)?;
        sys::syncfs(f.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setattr(valid: u32) -> SetattrIn {
        SetattrIn {
            valid,
            atime: 100,
            atimensec: 5,
            mtime: 200,
            mtimensec: 6,
            ..Default::default()
        }
    }

    #[test]
    fn no_times_selected() {
        assert!(setattr_times(&setattr(fattr::MODE)).expect("ok").is_none());
    }

    #[test]
    fn explicit_now_and_omit() {
        let t = setattr_times(&setattr(fattr::ATIME | fattr::MTIME | fattr::MTIME_NOW))
            .expect("ok")
            .expect("some");
        assert_eq!((t[0].tv_sec, t[0].tv_nsec), (100, 5));
        assert_eq!(t[1].tv_nsec, libc::UTIME_NOW);
        let t = setattr_times(&setattr(fattr::MTIME))
            .expect("ok")
            .expect("some");
        assert_eq!(t[0].tv_nsec, libc::UTIME_OMIT);
        assert_eq!((t[1].tv_sec, t[1].tv_nsec), (200, 6));
        let t = setattr_times(&setattr(fattr::ATIME_NOW))
            .expect("ok")
            .expect("some");
        assert_eq!(t[0].tv_nsec, libc::UTIME_NOW);
        assert_eq!(t[1].tv_nsec, libc::UTIME_OMIT);
    }

    #[test]
    fn bad_nanoseconds_and_huge_seconds_refused() {
        let mut a = setattr(fattr::ATIME);
        a.atimensec = 1_000_000_000;
        assert_eq!(
            setattr_times(&a).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        let mut a = setattr(fattr::MTIME);
        a.mtime = u64::MAX;
        assert!(setattr_times(&a).is_err());
    }
}
