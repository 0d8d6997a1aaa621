//! Extended attributes (GETXATTR, LISTXATTR, SETXATTR, REMOVEXATTR), only with
//! [`PassthroughConfig::xattr`](super::PassthroughConfig::xattr); `ENOSYS` otherwise, which
//! the guest remembers.
//!
//! There are no `*at` xattr calls for an `O_PATH` descriptor, so the path functions get the
//! name `<n>` with the working directory at the held descriptor of `/proc/self/fd`
//! ([`sys::in_dir`]): the magic link resolves to exactly the file held (a symlink is the
//! symlink itself), never further. No absolute path is used, so this works inside
//! `--sandbox namespace|chroot`, where `/proc` is not under the root.

use std::ffi::{CStr, CString};
use std::io;
use std::sync::Arc;

use vfsdax_protocol::fuse::flags::SETXATTR_ACL_KILL_SGID;

use super::inode::InodeData;
use super::sys::{self, err};
use super::PassthroughFs;
use crate::filesystem::{Inode, XattrReply};

/// Largest xattr value and list Linux has (`XATTR_SIZE_MAX`, `XATTR_LIST_MAX`): a guest
/// asking for more gets a buffer of this size.
const XATTR_MAX: usize = 64 * 1024;

/// Whether SETXATTR of `name` is refused (`EPERM`) whatever the caller. `security.capability`
/// holds file capabilities, which the host kernel honours when a host process executes the
/// file: guest root setting it would grant host capabilities (say `CAP_SYS_ADMIN`) to a
/// program any host user able to run the file could start. Removing it stays allowed.
pub(super) fn setxattr_refused(name: &CStr) -> bool {
    name.to_bytes() == b"security.capability"
}

impl PassthroughFs {
    /// The inode and its name in `/proc/self/fd`; the name is valid while the `Arc` lives.
    fn xattr_target(&self, inode: Inode) -> io::Result<(Arc<InodeData>, CString)> {
        if !self.cfg.xattr {
            return Err(err(libc::ENOSYS));
        }
        let data = self.inode(inode)?;
        let name = sys::fd_name(data.fd());
        Ok((data, name))
    }

    /// Runs the path call `f` on `/proc/self/fd/<name>` (relative to the held descriptor).
    fn at_proc_fd<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        sys::in_dir(std::os::fd::AsRawFd::as_raw_fd(&self.proc_self_fd), f)
    }

    pub(super) fn do_getxattr(
        &self,
        inode: Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<XattrReply> {
        let (_data, path) = self.xattr_target(inode)?;
        if size == 0 {
            let n = self.at_proc_fd(|| sys::getxattr(&path, name, &mut []))?;
            return Ok(XattrReply::Count(n as u32));
        }
        let mut buf = vec![0u8; (size as usize).min(XATTR_MAX)];
        let n = self.at_proc_fd(|| sys::getxattr(&path, name, &mut buf))?;
        buf.truncate(n);
        Ok(XattrReply::Value(buf))
    }

    pub(super) fn do_listxattr(&self, inode: Inode, size: u32) -> io::Result<XattrReply> {
        let (_data, path) = self.xattr_target(inode)?;
        if size == 0 {
            let n = self.at_proc_fd(|| sys::listxattr(&path, &mut []))?;
            return Ok(XattrReply::Count(n as u32));
        }
        let mut buf = vec![0u8; (size as usize).min(XATTR_MAX)];
        let n = self.at_proc_fd(|| sys::listxattr(&path, &mut buf))?;
        buf.truncate(n);
        Ok(XattrReply::Value(buf))
    }

    pub(super) fn do_setxattr(
        &self,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
        setxattr_flags: u32,
    ) -> io::Result<()> {
        let (data, path) = self.xattr_target(inode)?;
        self.check_writable()?;
        if setxattr_refused(name) {
            return Err(err(libc::EPERM));
        }
        self.at_proc_fd(|| sys::setxattr(&path, name, value, flags as i32))?;
        if setxattr_flags & SETXATTR_ACL_KILL_SGID != 0
            && name.to_bytes() == b"system.posix_acl_access"
        {
            // The guest decided the caller may not keep set-group-id (not in the group).
            let st = sys::fstat(data.fd())?;
            if st.st_mode & libc::S_ISGID != 0 {
                self.chmod_inode(&data, st.st_mode & 0o7777 & !libc::S_ISGID)?;
            }
        }
        Ok(())
    }

    pub(super) fn do_removexattr(&self, inode: Inode, name: &CStr) -> io::Result<()> {
        let (_data, path) = self.xattr_target(inode)?;
        self.check_writable()?;
        self.at_proc_fd(|| sys::removexattr(&path, name))
    }
}
