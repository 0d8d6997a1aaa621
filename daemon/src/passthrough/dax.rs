//! DAX for the passthrough filesystem: FUSE_SETUPMAPPING / FUSE_REMOVEMAPPING over the
//! [`DaxState`] bookkeeping, and the per-file `FUSE_ATTR_DAX` flag of `dax=inode` guests.
//!
//! # Which file gets mapped
//! Every mapping is a whole number of 2 MiB chunks (the `map_alignment` announced at INIT, what
//! Linux maps), each sent to the frontend as its own `SHMEM_MAP`.
//! - `fh = u64::MAX` (what Linux's `fs/fuse/dax.c` always sends): the daemon opens the inode
//!   itself through the same `/proc/self/fd` reopen as OPEN, read-only, or read-write when
//!   `FUSE_SETUPMAPPING_FLAG_WRITE` is set (`EROFS` for WRITE on a `--readonly` share). Regular
//!   files only (`ENODEV`, as `mmap(2)` answers for files it cannot map). The descriptor goes to
//!   the VMM with `SHMEM_MAP` and is closed right after: the VMM's mapping holds the file.
//! - A real `fh`: a live handle opened on that node id (`EBADF` otherwise), readable (`EACCES`
//!   for a write-only handle, which cannot back a shared mapping); WRITE needs a handle opened
//!   for writing: `EACCES`, as `mmap(2)` answers for `PROT_WRITE` on a read-only descriptor.
//! - A frontend that maps only ranges inside files through writable descriptors (QEMU 11.1, see
//!   [`crate::dax::frontend`], probed at INIT) gets a read-write descriptor for read mappings
//!   too, but only when the guest caller may write the file (the share is writable and the
//!   file's mode lets the caller's uid/gid write): a writable descriptor lets the guest kernel
//!   store into the whole mapped range whatever its page tables say, so it may never reach
//!   further than a FUSE WRITE with the same credentials. A range such a frontend cannot map
//!   (the caller may not write the file, or the range reaches past the end of the file) is
//!   declined with `EOPNOTSUPP` before the frontend is asked (asked, QEMU 11.1 would refuse it,
//!   or extend an empty file), with a rate-limited log line.
//!
//! # Lifetime
//! Mappings belong to the inode, not to a handle: the guest reuses them across opens, so RELEASE
//! leaves them alone. The guest removes an inode's mappings (REMOVEMAPPING) before it forgets the
//! inode; a FORGET that drops a node id to zero unmaps whatever the table still has for it (at
//! once if no request is talking to the frontend, else with the next one). DESTROY and a new
//! INIT unmap the whole table; when the frontend goes away the table is only forgotten (the
//! frontend drops its mappings at a device reset).
//!
//! # `FUSE_ATTR_DAX` (only with a DAX window; regular files only)
//! [`DaxPolicy`]: `auto` (the default: every regular file with a frontend that maps any range,
//! none with one that maps only ranges inside files), `always`, `never`, `size:N` (files of at
//! least N bytes when the reply is made) or `xattr` (files carrying `FS_XFLAG_DAX`, set with
//! `xfs_io -c 'chattr +x'`, read with the `FS_IOC_FSGETXATTR` ioctl). The ioctl needs a real
//! descriptor, so `xattr` costs one read-only open, ioctl and close per entry or attribute
//! reply of a regular file (the open is visible to fanotify/inotify as an open and close); a
//! filesystem without the ioctl marks no file. Whatever the policy, a file is marked only if
//! the frontend can map it whole: with a QEMU 11.1 frontend, a non-empty file whose size is a
//! multiple of 2 MiB that the caller may write. The guest decides at LOOKUP and keeps the mode
//! while it holds the inode, so a marked file that later grows to a size that is not a multiple
//! of 2 MiB has a last chunk such a frontend cannot map: reads there fail until the guest drops
//! the inode (the flag is then cleared and the next LOOKUP uses the page cache).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vfsdax_protocol::fuse::flags::{attr, init, SETUPMAPPING_FLAG_WRITE};
use vfsdax_protocol::fuse::RemoveMappingOne;

use super::inode::InodeData;
use super::perm::check_access;
use super::sys::{err, fstat};
use super::{DaxPolicy, PassthroughFs};
use crate::dax::frontend::{self, FrontendMapping};
use crate::dax::{
    validate_setup, DaxError, DaxState, FileId, Mapper, SetupMapping, TruncationHook,
};
use crate::filesystem::{Context, Entry, Handle, Inode};
use crate::guest_log;

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
        DaxPolicy::Auto | DaxPolicy::Always => true,
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
        self.dax.as_deref()
    }

    /// The DAX bookkeeping, shared (for the truncation guard).
    pub fn dax_shared(&self) -> Option<Arc<DaxState>> {
        self.dax.clone()
    }

    /// Tells `hook` of the guest's truncations of mapped files before they are carried out.
    pub fn set_truncation_hook(&self, hook: Arc<dyn TruncationHook>) {
        *self
            .truncation_hook
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// The truncation hook, if one is set and `file` has live mappings.
    fn hook_for(&self, file: &File) -> Option<Arc<dyn TruncationHook>> {
        let dax = self.dax.as_ref()?;
        let hook = self
            .truncation_hook
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let id = FileId::of(file).ok()?;
        dax.guarding(id).map(|_| hook)
    }

    /// The guest (caller `ctx`) is about to truncate `file` to `new_size`: the window is made
    /// safe first when the file has live mappings.
    pub(super) fn before_guest_truncate(&self, ctx_pid: u32, file: &File, new_size: u64) {
        if let Some(hook) = self.hook_for(file) {
            hook.before_truncate(file, new_size, ctx_pid);
        }
    }

    /// Whether `file` has live mappings a truncation hook watches (an `O_TRUNC` open of it is
    /// then split into an open and a guarded truncation).
    pub(super) fn truncation_watched(&self, file: &File) -> bool {
        self.hook_for(file).is_some()
    }

    fn dax_or_enosys(&self) -> io::Result<&DaxState> {
        self.dax.as_deref().ok_or_else(|| err(libc::ENOSYS))
    }

    /// Whether the guest caller `ctx` may write a file with attributes `st` (the share is
    /// writable and the file's mode lets the caller write, as the kernel's permission check
    /// without ACLs): what a writable descriptor handed to the VMM may not exceed.
    fn may_write(&self, ctx: Context, st: &libc::stat64) -> bool {
        !self.cfg.readonly
            && check_access(
                st.st_mode,
                st.st_uid,
                st.st_gid,
                ctx.uid,
                ctx.gid,
                libc::W_OK as u32,
            )
            .is_ok()
    }

    /// INIT: the guest's DAX mode from its offer; with a window and a backend request channel,
    /// probe what the frontend can map (the session's table is empty at this point).
    pub(super) fn dax_session_start(&self, capable: u64, mapper: &dyn Mapper) {
        let Some(dax) = &self.dax else { return };
        dax.set_frontend(FrontendMapping::Unknown);
        let mode = match (
            capable & init::MAP_ALIGNMENT != 0,
            capable & init::HAS_INODE_DAX != 0,
        ) {
            (false, _) => {
                guest_log!(
                    log::Level::Info,
                    "guest mounted without a DAX window (the frontend offered it none: \
                     QEMU before 11.1, or vhost-user-fs-pci): DAX inactive"
                );
                return;
            }
            (true, true) => "dax=inode (per file, FUSE_ATTR_DAX)",
            (true, false) => "dax=always",
        };
        if !mapper.is_connected() {
            guest_log!(
                log::Level::Warn,
                "guest mounted with {mode}, but the frontend opened no backend request channel \
                 (SHMEM not negotiated): every DAX mapping will fail"
            );
            return;
        }
        let frontend = match dax.probe_frontend(mapper) {
            Ok(out) => {
                if let Some(e) = &out.refusal {
                    guest_log!(
                        log::Level::Debug,
                        "frontend probe: the frontend refused or failed the probe mapping: {e}"
                    );
                }
                out.frontend
            }
            Err(e) => {
                guest_log!(
                    log::Level::Warn,
                    "cannot probe what the frontend maps ({e}); assuming it maps only ranges \
                     inside files"
                );
                dax.set_frontend(FrontendMapping::InsideFileWritable);
                FrontendMapping::InsideFileWritable
            }
        };
        guest_log!(
            log::Level::Info,
            "guest mounted with {mode}; DAX window {} MiB active; the frontend maps {}",
            dax.window_size() >> 20,
            frontend.describe()
        );
        if frontend == FrontendMapping::InsideFileWritable {
            if capable & init::HAS_INODE_DAX == 0 {
                guest_log!(
                    log::Level::Warn,
                    "dax=always with this frontend: reads of a file whose size is not a \
                     multiple of 2 MiB, or that the guest may not write, fail \
                     (EOPNOTSUPP); mount with dax=inode (or no dax option) instead"
                );
            } else if self.cfg.dax_policy == DaxPolicy::Auto {
                guest_log!(
                    log::Level::Info,
                    "--dax-policy auto marks no file for DAX with this frontend; pass \
                     --dax-policy always|size:N|xattr to use DAX for files the frontend can \
                     map whole"
                );
            }
        }
    }

    /// SETUPMAPPING: see the module documentation for which file is mapped.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_setup_mapping(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        mapper: &dyn Mapper,
    ) -> io::Result<()> {
        let dax = self.dax_or_enosys()?;
        let r = self.setup_in(
            dax, ctx, inode, handle, foffset, len, flags, moffset, mapper,
        );
        if let Err(e) = &r {
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                guest_log!(
                    log::Level::Warn,
                    "SETUPMAPPING of node {inode} at file offset {foffset:#x} declined: the \
                     frontend cannot map it ({})",
                    dax.frontend().describe()
                );
            }
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn setup_in(
        &self,
        dax: &DaxState,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        mapper: &dyn Mapper,
    ) -> io::Result<()> {
        let refuse = |e: io::Error| {
            dax.count_refused_setup();
            e
        };
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
        .map_err(|e| refuse(dax_err(e)))?;
        let write = flags & SETUPMAPPING_FLAG_WRITE != 0;
        let data = self.inode(inode).map_err(refuse)?;
        if !data.is_reg() {
            return Err(refuse(err(libc::ENODEV)));
        }
        let frontend = dax.frontend();
        let (file, file_writable, handle, plan) = if handle == NO_HANDLE {
            if write {
                self.check_writable().map_err(refuse)?;
            }
            let st = fstat(data.fd()).map_err(refuse)?;
            let may_write = self.may_write(ctx, &st);
            let size = || Ok(u64::try_from(st.st_size).unwrap_or(0));
            let plan = frontend::plan(frontend, write, may_write, size, foffset, len)
                .map_err(refuse)?
                .map_err(|d| refuse(dax_err(DaxError::Declined(d))))?;
            let mode = if plan.open_writable {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            };
            let f = self.reopen(&data, mode | libc::O_CLOEXEC).map_err(refuse)?;
            (Arc::new(f), plan.open_writable, None, plan)
        } else {
            let hd = self.handles.get(handle, inode).map_err(refuse)?;
            if hd.flags & libc::O_ACCMODE == libc::O_WRONLY {
                return Err(refuse(err(libc::EACCES)));
            }
            let file = Arc::clone(&hd.file);
            let size = || fstat(file.as_raw_fd()).map(|st| u64::try_from(st.st_size).unwrap_or(0));
            let plan = frontend::plan(frontend, write, hd.writable(), size, foffset, len)
                .map_err(refuse)?
                .map_err(|d| refuse(dax_err(DaxError::Declined(d))))?;
            (file, hd.writable(), Some(handle), plan)
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
                plan,
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

    /// After a FORGET of `inode`: if the node id is gone, unmap its live mappings (a guest
    /// removes them itself before it forgets an inode; a guest that does not gets them
    /// removed here).
    pub(super) fn dax_forgotten(&self, inode: Inode, mapper: &dyn Mapper) {
        let Some(dax) = &self.dax else { return };
        if dax.is_empty() || self.inodes.get(inode).is_ok() {
            return;
        }
        dax.forget_inode(mapper, inode);
    }

    /// DESTROY, a new INIT, or the frontend went away: unmap every mapping through `mapper`
    /// (a [`crate::dax::NoMapper`] when there is no frontend to ask) and forget it.
    pub(super) fn dax_destroy(&self, mapper: &dyn Mapper) {
        if let Some(dax) = &self.dax {
            let _ = dax.unmap_all(mapper);
            if !mapper.is_connected() {
                dax.set_frontend(FrontendMapping::Unknown);
            }
        }
    }

    /// `FUSE_ATTR_DAX` for node id `inode` with attributes `st`, as the reply to caller `ctx`:
    /// per the policy, and only for files the frontend can map whole (0 without a window).
    pub(super) fn dax_attr_flag(&self, ctx: Context, inode: Inode, st: &libc::stat64) -> u32 {
        let Some(dax) = &self.dax else { return 0 };
        let is_reg = st.st_mode & libc::S_IFMT == libc::S_IFREG;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let frontend = dax.frontend();
        let wants = match self.cfg.dax_policy {
            DaxPolicy::Auto => is_reg && frontend != FrontendMapping::InsideFileWritable,
            policy => policy_wants_dax(policy, is_reg, size, || {
                self.inode(inode)
                    .is_ok_and(|d| self.xflags(&d).is_ok_and(|f| f & FS_XFLAG_DAX != 0))
            }),
        };
        if wants
            && frontend::file_mappable(frontend, size, dax.alignment(), self.may_write(ctx, st))
        {
            attr::DAX
        } else {
            0
        }
    }

    /// `e` with `FUSE_ATTR_DAX` added when the policy says so.
    pub(super) fn with_dax_flag(&self, ctx: Context, mut e: Entry) -> Entry {
        e.attr_flags |= self.dax_attr_flag(ctx, e.inode, &e.attr);
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
