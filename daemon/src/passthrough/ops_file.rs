//! File handle operations: OPEN, CREATE, READ, WRITE, RELEASE, FSYNC, FLUSH, FALLOCATE,
//! LSEEK and COPY_FILE_RANGE.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vfsdax_protocol::fuse::flags::init;

use super::config::{host_open_flags, open_writes};
use super::inode::InodeData;
use super::sys::{self, err};
use super::{names, perm, PassthroughFs};
use crate::filesystem::{Context, Entry, Handle, Inode, ZeroCopyReader, ZeroCopyWriter};

impl PassthroughFs {
    fn host_flags(&self, guest: u32) -> i32 {
        host_open_flags(
            guest,
            self.cfg.allow_direct_io,
            self.negotiated(init::WRITEBACK_CACHE),
        )
    }

    pub(super) fn do_open(
        &self,
        ctx: Context,
        inode: Inode,
        flags: u32,
        kill_priv: bool,
    ) -> io::Result<(Option<Handle>, u32)> {
        let data = self.inode(inode)?;
        let hflags = self.host_flags(flags);
        if open_writes(flags as i32) {
            self.check_writable()?;
        }
        let file = if hflags & libc::O_TRUNC != 0 && data.is_reg() {
            // A file with live DAX mappings: opened without O_TRUNC, the window made safe,
            // then emptied.
            let f = self.reopen(&data, hflags & !libc::O_TRUNC)?;
            if self.truncation_watched(&f) {
                self.guest_truncate_to_zero(ctx, &f)?;
                f
            } else {
                drop(f);
                self.reopen(&data, hflags)?
            }
        } else {
            self.reopen(&data, hflags)?
        };
        if kill_priv && hflags & libc::O_TRUNC != 0 {
            self.kill_privs(&data)?;
        }
        let h = self.handles.insert(inode, file, hflags);
        Ok((Some(h), self.cfg.cache.open_flags(data.is_dir())))
    }

    /// Empties the regular file open as `file` (whatever its access mode) through a
    /// write-only reopen of it.
    fn truncate_to_zero(&self, file: &File) -> io::Result<()> {
        let w = sys::openat(
            self.proc_self_fd.as_raw_fd(),
            &sys::fd_name(file.as_raw_fd()),
            libc::O_WRONLY | libc::O_CLOEXEC,
            0,
        )?;
        sys::ftruncate(w.as_raw_fd(), 0)
    }

    /// The guest's `O_TRUNC` of a file with live DAX mappings: the window is made safe, then
    /// the file emptied.
    fn guest_truncate_to_zero(&self, ctx: Context, file: &File) -> io::Result<()> {
        self.before_guest_truncate(ctx.pid, file, 0);
        self.truncate_to_zero(file)
    }

    /// Opens the existing `name` in `parent` (CREATE without `O_EXCL` lost the race to an
    /// existing file): only a regular file, reopened with `flags`.
    fn open_existing(&self, parent: &InodeData, name: &CStr, flags: i32) -> io::Result<File> {
        let path_fd = sys::openat(parent.fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let st = sys::fstat(path_fd.as_raw_fd())?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(err(libc::EISDIR)),
            libc::S_IFLNK => return Err(err(libc::ELOOP)),
            _ => return Err(err(libc::ENXIO)),
        }
        sys::openat(
            self.proc_self_fd.as_raw_fd(),
            &sys::fd_name(path_fd.as_raw_fd()),
            flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW),
            0,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_create(
        &self,
        ctx: Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        flags: u32,
        umask: u32,
        kill_priv: bool,
    ) -> io::Result<(Entry, Option<Handle>, u32)> {
        self.check_writable()?;
        names::check_new_name(name)?;
        let p = self.inode(parent)?;
        let hflags = self.host_flags(flags) | libc::O_NOFOLLOW;
        let mode = mode & 0o7777 & !umask;
        let guest_excl = flags as i32 & libc::O_EXCL != 0;
        let (file, created) = {
            let _creds = self.creds(ctx)?;
            let excl = hflags | libc::O_CREAT | libc::O_EXCL;
            match sys::openat(p.fd(), name, excl, mode) {
                Ok(f) => (f, true),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && !guest_excl => {
                    let f = self.open_existing(&p, name, hflags & !libc::O_TRUNC)?;
                    if hflags & libc::O_TRUNC != 0 {
                        // As OPEN with O_TRUNC: the window first, if the file is mapped.
                        if self.truncation_watched(&f) {
                            self.guest_truncate_to_zero(ctx, &f)?;
                        } else {
                            self.truncate_to_zero(&f)?;
                        }
                    }
                    (f, false)
                }
                Err(e) => return Err(e),
            }
        };
        if created {
            if let Some(wanted) = perm::umask_fixup(mode, umask, self.host_umask) {
                // The descriptor is the file just created: no name race.
                let st = sys::fstat(file.as_raw_fd())?;
                sys::fchmod(file.as_raw_fd(), (st.st_mode & 0o7000) | wanted)?;
            }
        }
        #[cfg(test)]
        self.run_race_hook();
        // The entry is the file just opened, not whatever `name` names by now (a racing
        // rename): an `O_PATH` descriptor of the same file, through its magic link.
        let opath = sys::openat(
            self.proc_self_fd.as_raw_fd(),
            &sys::fd_name(file.as_raw_fd()),
            libc::O_PATH,
            0,
        )?;
        let entry = self.entry_of_file(opath, Some(&p))?;
        if !created && kill_priv && hflags & libc::O_TRUNC != 0 {
            if let Err(e) = self.inode(entry.inode).and_then(|d| self.kill_privs(&d)) {
                self.inodes.forget(entry.inode, 1);
                return Err(e);
            }
        }
        let h = self.handles.insert(entry.inode, file, hflags);
        Ok((entry, Some(h), self.cfg.cache.open_flags(false)))
    }

    pub(super) fn do_read(
        &self,
        inode: Inode,
        handle: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
    ) -> io::Result<usize> {
        let h = self.handles.get(handle, inode)?;
        let size = size as usize;
        let mut done = 0;
        while done < size {
            let Some(off) = offset.checked_add(done as u64) else {
                break;
            };
            match w.write_from(&h.file, size - done, off) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_write(
        &self,
        inode: Inode,
        handle: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        kill_priv: bool,
    ) -> io::Result<usize> {
        self.check_writable()?;
        let h = self.handles.get(handle, inode)?;
        if !h.writable() {
            return Err(err(libc::EBADF));
        }
        if kill_priv {
            // The write itself runs as root, which keeps set-id bits: clear them first, as
            // the kernel does for an unprivileged writer.
            let st = sys::fstat(h.fd())?;
            if let Some(mode) = perm::mode_without_privs(st.st_mode) {
                sys::fchmod(h.fd(), mode)?;
            }
        }
        let size = size as usize;
        let mut done = 0;
        while done < size {
            let Some(off) = offset.checked_add(done as u64) else {
                return Err(err(libc::EFBIG));
            };
            match r.read_to(&h.file, size - done, off) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    }

    pub(super) fn do_release(&self, inode: Inode, handle: Handle, flush: bool) -> io::Result<()> {
        let h = self.handles.remove(handle, inode)?;
        if flush {
            sys::flush_fd(h.fd())?;
        }
        Ok(())
    }

    pub(super) fn do_fsync(&self, inode: Inode, handle: Handle, datasync: bool) -> io::Result<()> {
        let h = self.handles.get(handle, inode)?;
        sys::fsync(h.fd(), datasync)
    }

    pub(super) fn do_flush(&self, inode: Inode, handle: Handle) -> io::Result<()> {
        let h = self.handles.get(handle, inode)?;
        sys::flush_fd(h.fd())
    }

    pub(super) fn do_fallocate(
        &self,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.check_writable()?;
        let h = self.handles.get(handle, inode)?;
        sys::fallocate(h.fd(), mode, offset, length)
    }

    pub(super) fn do_lseek(
        &self,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let h = self.handles.get(handle, inode)?;
        let whence = match whence as i32 {
            w @ (libc::SEEK_SET
            | libc::SEEK_CUR
            | libc::SEEK_END
            | libc::SEEK_DATA
            | libc::SEEK_HOLE) => w,
            _ => return Err(err(libc::EINVAL)),
        };
        let offset = i64::try_from(offset).map_err(|_| err(libc::EINVAL))?;
        // Not to disturb a READDIR of the same descriptor between its seek and its reads.
        let _pos = h.lock_pos();
        sys::lseek(h.fd(), offset, whence)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_copy_file_range(
        &self,
        inode_in: Inode,
        handle_in: Handle,
        offset_in: u64,
        inode_out: Inode,
        handle_out: Handle,
        offset_out: u64,
        len: u64,
        flags: u64,
    ) -> io::Result<usize> {
        self.check_writable()?;
        let hin = self.handles.get(handle_in, inode_in)?;
        let hout = self.handles.get(handle_out, inode_out)?;
        let flags = u32::try_from(flags).map_err(|_| err(libc::EINVAL))?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        sys::copy_file_range(hin.fd(), offset_in, hout.fd(), offset_out, len, flags)
    }
}
