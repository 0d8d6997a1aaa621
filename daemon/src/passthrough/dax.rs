//! DAX for the passthrough filesystem: FUSE_SETUPMAPPING / FUSE_REMOVEMAPPING over the
//! [`DaxState`] bookkeeping, and the per-file `FUSE_ATTR_DAX` flag of `dax=inode` guests.
//!
//! # Which file gets mapped
//! - `fh = u64::MAX` (what Linux's `fs/fuse/dax.c` always sends): the daemon opens the inode
//!   itself through the same `/proc/self/fd` reopen as OPEN, read-only, or read-write when
//!   `FUSE_SETUPMAPPING_FLAG_WRITE` is set (`EROFS` for WRITE on a `--readonly` share). Regular
//!   files only (`ENODEV`, as `mmap(2)` answers for files it cannot map). The descriptor goes to
//!   the VMM with `SHMEM_MAP` and is closed right after: the VMM's mapping holds the file.
//! - A real `fh`: a live handle opened on that node id (`EBADF` otherwise), readable (`EACCES`
//!   for a write-only handle, which cannot back a shared mapping); WRITE needs a handle opened
//!   for writing: `EACCES`, as `mmap(2)` answers for `PROT_WRITE` on a read-only descriptor.
//!
//! # Lifetime
//! Mappings belong to the inode, not to a handle: the guest reuses them across opens, so RELEASE
//! leaves them alone. The guest removes an inode's mappings (REMOVEMAPPING) before it forgets the
//! inode; a FORGET that drops a node id to zero only drops whatever the table still has for it
//! (bookkeeping: FORGET has no backend channel to unmap with, and the window range is the guest's
//! to reuse). DESTROY and the frontend going away forget the whole table; the window dies with
//! the VMM's side of the connection.
//!
//! # `FUSE_ATTR_DAX` (only with a DAX window; regular files only)
//! [`DaxPolicy`]: `always`, `never`, `size:N` (files of at least N bytes when the reply is made)
//! or `xattr` (files carrying `FS_XFLAG_DAX`, set with `xfs_io -c 'chattr +x'`, read with the
//! `FS_IOC_FSGETXATTR` ioctl). The ioctl needs a real descriptor, so `xattr` costs one
//! read-only open, ioctl and close per entry or attribute reply of a regular file (the open is
//! visible to fanotify/inotify as an open and close); a filesystem without the ioctl marks no
//! file.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vfsdax_protocol::fuse::flags::{attr, SETUPMAPPING_FLAG_WRITE};
use vfsdax_protocol::fuse::RemoveMappingOne;

use super::inode::InodeData;
use super::sys::err;
use super::{DaxPolicy, PassthroughFs};
use crate::dax::{validate_setup, DaxError, DaxState, Mapper, SetupMapping};
use crate::filesystem::{Entry, Handle, Inode};

/// The `fh` of a SETUPMAPPING that names no handle (Linux guests send -1).
pub const NO_HANDLE: Handle = u64::MAX;

/// `FS_XFLAG_DAX` in `struct fsxattr`'s `fsx_xflags`.
pub const FS_XFLAG_DAX: u32 = 0x0000_8000;

/// `struct fsxattr` (`include/uapi/linux/fs.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// `FS_IOC_FSGETXATTR` = `_IOR('X', 31, struct fsxattr)`.
const FS_IOC_FSGETXATTR: u32 = ior(b'X', 31, std::mem::size_of::<FsXattr>() as u32);

/// The Linux `_IOR(type, nr, size)` request number.
const fn ior(typ: u8, nr: u8, size: u32) -> u32 {
    (2 << 30) | (size << 16) | ((typ as u32) << 8) | nr as u32
}

/// Whether `policy` marks a file `FUSE_ATTR_DAX`: regular files only; `has_xflag` is asked only
/// under [`DaxPolicy::Xattr`].
pub fn policy_wants_dax(
    policy: DaxPolicy,
    is_reg: bool,
    size: u64,
    has_xflag: impl FnOnce() -> bool,
) -> bool {
    if !is_reg {
        return false;
    }
    match policy {
        DaxPolicy::Always => true,
        DaxPolicy::Never => false,
        DaxPolicy::Size(min) => size >= min,
        DaxPolicy::Xattr => has_xflag(),
    }
}

/// The errno reply of a refused or failed mapping request.
fn dax_err(e: DaxError) -> io::Error {
    err(e.errno())
}

impl PassthroughFs {
    /// The DAX bookkeeping (live mappings), when the share has a DAX window.
    pub fn dax_state(&self) -> Option<&DaxState> {
        self.dax.as_ref()
    }

    fn dax_or_enosys(&self) -> io::Result<&DaxState> {
        self.dax.as_ref().ok_or_else(|| err(libc::ENOSYS))
    }

    /// SETUPMAPPING: see the module documentation for which file is mapped.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_setup_mapping(
        &self,
        inode: Inode,
        handle: Handle,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        mapper: &dyn Mapper,
    ) -> io::Result<()> {
        let dax = self.dax_or_enosys()?;
        // Range and flag checks first, so a bad request opens nothing.
        validate_setup(
            dax.window_size(),
            dax.alignment(),
            foffset,
            moffset,
            len,
            flags,
            true,
        )
        .map_err(dax_err)?;
        let write = flags & SETUPMAPPING_FLAG_WRITE != 0;
        let data = self.inode(inode)?;
        if !data.is_reg() {
            return Err(err(libc::ENODEV));
        }
        let (file, file_writable, handle) = if handle == NO_HANDLE {
            if write {
                self.check_writable()?;
            }
            let mode = if write { libc::O_RDWR } else { libc::O_RDONLY };
            let f = self.reopen(&data, mode | libc::O_CLOEXEC)?;
            (Arc::new(f), write, None)
        } else {
            let hd = self.handles.get(handle, inode)?;
            if hd.flags & libc::O_ACCMODE == libc::O_WRONLY {
                return Err(err(libc::EACCES));
            }
            (Arc::clone(&hd.file), hd.writable(), Some(handle))
        };
        dax.setup_mapping(
            mapper,
            &SetupMapping {
                inode,
                handle,
                file: &file,
                file_writable,
                foffset,
                moffset,
                len,
                flags,
            },
        )
        .map_err(dax_err)
    }

    /// REMOVEMAPPING: every entry is checked before any is unmapped.
    pub(super) fn do_remove_mapping(
        &self,
        requests: &[RemoveMappingOne],
        mapper: &dyn Mapper,
    ) -> io::Result<()> {
        let dax = self.dax_or_enosys()?;
        let entries: Vec<(u64, u64)> = requests.iter().map(|r| (r.moffset, r.len)).collect();
        dax.remove_mappings(mapper, &entries).map_err(dax_err)
    }

    /// After a FORGET of `inode`: if the node id is gone, drop its live mappings from the table.
    pub(super) fn dax_forgotten(&self, inode: Inode) {
        let Some(dax) = &self.dax else { return };
        if dax.is_empty() || self.inodes.get(inode).is_ok() {
            return;
        }
        dax.forget_inode(inode);
    }

    /// DESTROY or the frontend went away: forget every mapping.
    pub(super) fn dax_destroy(&self) {
        if let Some(dax) = &self.dax {
            dax.clear();
        }
    }

    /// `FUSE_ATTR_DAX` for node id `inode` with attributes `st`, per the policy (0 without a
    /// DAX window).
    pub(super) fn dax_attr_flag(&self, inode: Inode, st: &libc::stat64) -> u32 {
        if self.dax.is_none() {
            return 0;
        }
        let is_reg = st.st_mode & libc::S_IFMT == libc::S_IFREG;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let wants = policy_wants_dax(self.cfg.dax_policy, is_reg, size, || {
            self.inode(inode)
                .is_ok_and(|d| self.xflags(&d).is_ok_and(|f| f & FS_XFLAG_DAX != 0))
        });
        if wants {
            attr::DAX
        } else {
            0
        }
    }

    /// `e` with `FUSE_ATTR_DAX` added when the policy says so.
    pub(super) fn with_dax_flag(&self, mut e: Entry) -> Entry {
        e.attr_flags |= self.dax_attr_flag(e.inode, &e.attr);
        e
    }

    /// The `fsx_xflags` of a regular file, read through a short-lived read-only descriptor.
    fn xflags(&self, data: &InodeData) -> io::Result<u32> {
        let f = self.reopen(
            data,
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY,
        )?;
        let mut x = FsXattr::default();
        // SAFETY: FS_IOC_FSGETXATTR writes at most one `struct fsxattr` (the size encoded in the
        // request number) into `x`, a live, properly sized and aligned `repr(C)` value; `f` is an
        // open descriptor for the duration of the call.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FSGETXATTR as _, &mut x) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(x.xflags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_is_the_kernels() {
        // include/uapi/linux/fs.h on x86_64: FS_IOC_FSGETXATTR 0x801c581f.
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!(FS_IOC_FSGETXATTR, 0x801c_581f);
    }

    #[test]
    fn policy_marks_regular_files_only() {
        let never_asked = || panic!("the xattr flag is only read for the xattr policy");
        assert!(policy_wants_dax(DaxPolicy::Always, true, 0, never_asked));
        assert!(!policy_wants_dax(DaxPolicy::Always, false, 0, never_asked));
        assert!(!policy_wants_dax(
            DaxPolicy::Never,
            true,
            1 << 40,
            never_asked
        ));
        assert!(policy_wants_dax(
            DaxPolicy::Size(4096),
            true,
            4096,
            never_asked
        ));
        assert!(!policy_wants_dax(
            DaxPolicy::Size(4096),
            true,
            4095,
            never_asked
        ));
        assert!(!policy_wants_dax(DaxPolicy::Size(0), false, 0, never_asked));
        assert!(policy_wants_dax(DaxPolicy::Xattr, true, 0, || true));
        assert!(!policy_wants_dax(DaxPolicy::Xattr, true, 0, || false));
        assert!(!policy_wants_dax(DaxPolicy::Xattr, false, 0, || true));
    }
}

#[cfg(test)]
#[path = "dax_tests.rs"]
mod fs_tests;
