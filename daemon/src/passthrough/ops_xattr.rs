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
use super::xattrmap::Refused;
use super::PassthroughFs;
use crate::filesystem::{Inode, XattrReply};

/// Largest xattr value and list Linux has (`XATTR_SIZE_MAX`, `XATTR_LIST_MAX`): a guest
/// asking for more gets a buffer of this size.
const XATTR_MAX: usize = 64 * 1024;

/// Whether SETXATTR of the host name `name` is refused (`EPERM`) whatever the caller and the
/// map. `security.capability` holds file capabilities, which the host kernel honours when a
/// host process executes the file: guest root setting it would grant host capabilities (say
/// `CAP_SYS_ADMIN`) to a program any host user able to run the file could start. Removing it
/// stays allowed. (Mapped to another name, say `user.virtiofs.security.capability`, it is
/// harmless.)
pub(super) fn setxattr_refused(host_name: &[u8]) -> bool {
    host_name == b"security.capability"
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

    /// The host name for the guest's `name` (`--xattrmap`), or the errno `refused` picks.
    fn host_name(&self, name: &CStr, refused: impl FnOnce(Refused) -> i32) -> io::Result<CString> {
        let mapped = self
            .cfg
            .xattr_map
            .to_host(name.to_bytes())
            .map_err(|r| err(refused(r)))?;
        CString::new(mapped.into_owned()).map_err(|_| err(libc::EINVAL))
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
        let name = &self.host_name(name, Refused::get_errno)?;
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
        // The whole host list, mapped: the guest's size is that of what it will see.
        let mut buf = vec![0u8; XATTR_MAX];
        let n = self.at_proc_fd(|| sys::listxattr(&path, &mut buf))?;
        let list = self.cfg.xattr_map.list_to_guest(&buf[..n]);
        if size == 0 {
            return Ok(XattrReply::Count(list.len() as u32));
        }
        if list.len() > size as usize {
            return Err(err(libc::ERANGE));
        }
        Ok(XattrReply::Value(list))
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
        let name = &self.host_name(name, Refused::set_errno)?;
        if setxattr_refused(name.to_bytes()) {
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

    /// Removes the host attribute `--xattrmap` keeps the guest's `security.capability` under,
    /// if it maps it to another name (nothing to do otherwise, or without xattrs).
    pub(super) fn remove_mapped_capability(&self, data: &InodeData) -> io::Result<()> {
        if !self.cfg.xattr {
            return Ok(());
        }
        let Ok(host) = self.cfg.xattr_map.to_host(b"security.capability") else {
            return Ok(());
        };
        if &*host == b"security.capability" {
            return Ok(());
        }
        let name = CString::new(host.into_owned()).map_err(|_| err(libc::EINVAL))?;
        let path = sys::fd_name(data.fd());
        match self.at_proc_fd(|| sys::removexattr(&path, &name)) {
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
            r => r,
        }
    }

    pub(super) fn do_removexattr(&self, inode: Inode, name: &CStr) -> io::Result<()> {
        let (_data, path) = self.xattr_target(inode)?;
        self.check_writable()?;
        let name = &self.host_name(name, Refused::set_errno)?;
        self.at_proc_fd(|| sys::removexattr(&path, name))
    }
}
