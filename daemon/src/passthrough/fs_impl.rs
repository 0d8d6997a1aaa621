//! [`FileSystem`] for [`PassthroughFs`]: each opcode delegates to the `do_*` method of the
//! `ops_*` module for its concept.

use std::ffi::CStr;
use std::io;
use std::sync::atomic::Ordering;

use vfsdax_protocol::fuse::{RemoveMappingOne, SetattrIn};

use super::ops_dir::AddEntry;
use super::PassthroughFs;
use crate::filesystem::{
    AttrReply, Context, DirEntry, Entry, FileSystem, Handle, Inode, Mapper, XattrReply,
    ZeroCopyReader, ZeroCopyWriter,
};

impl FileSystem for PassthroughFs {
    fn init(&self, capable: u64, mapper: &dyn Mapper) -> io::Result<u64> {
        if self.initialised.swap(true, Ordering::AcqRel) {
            // INIT again without DESTROY: a new guest kernel (reboot, kexec) on the same
            // connection. It holds none of the old kernel's node ids, handles or mappings.
            self.end_session(mapper);
        }
        let flags = self.cfg.wanted_init_flags() & capable;
        self.negotiated.store(flags, Ordering::Relaxed);
        self.dax_session_start(capable, mapper);
        Ok(flags)
    }

    fn destroy(&self, mapper: &dyn Mapper) {
        self.end_session(mapper);
        self.initialised.store(false, Ordering::Release);
    }

    fn lookup(&self, ctx: Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        let p = self.inode(parent)?;
        Ok(self.with_dax_flag(ctx, self.lookup_in(&p, name)?))
    }

    fn forget(&self, _ctx: Context, inode: Inode, count: u64, mapper: &dyn Mapper) {
        self.inodes.forget(inode, count);
        self.dax_forgotten(inode, mapper);
    }

    fn getattr(&self, ctx: Context, inode: Inode, handle: Option<Handle>) -> io::Result<AttrReply> {
        let mut a = self.do_getattr(inode, handle)?;
        a.attr_flags |= self.dax_attr_flag(ctx, inode, &a.attr);
        Ok(a)
    }

    fn setattr(
        &self,
        ctx: Context,
        inode: Inode,
        attr: &SetattrIn,
        handle: Option<Handle>,
    ) -> io::Result<AttrReply> {
        let mut a = self.do_setattr(ctx, inode, attr, handle)?;
        a.attr_flags |= self.dax_attr_flag(ctx, inode, &a.attr);
        Ok(a)
    }

    fn readlink(&self, _ctx: Context, inode: Inode) -> io::Result<Vec<u8>> {
        self.do_readlink(inode)
    }

    fn symlink(
        &self,
        ctx: Context,
        linkname: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        Ok(self.with_dax_flag(ctx, self.do_symlink(ctx, linkname, parent, name)?))
    }

    fn mknod(
        &self,
        ctx: Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        Ok(self.with_dax_flag(ctx, self.do_mknod(ctx, parent, name, mode, rdev, umask)?))
    }

    fn mkdir(
        &self,
        ctx: Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        Ok(self.with_dax_flag(ctx, self.do_mkdir(ctx, parent, name, mode, umask)?))
    }

    fn unlink(&self, _ctx: Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.do_remove(parent, name, false)
    }

    fn rmdir(&self, _ctx: Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.do_remove(parent, name, true)
    }

    fn rename(
        &self,
        _ctx: Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.do_rename(olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: Context,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        Ok(self.with_dax_flag(ctx, self.do_link(inode, newparent, newname)?))
    }

    fn open(
        &self,
        ctx: Context,
        inode: Inode,
        flags: u32,
        kill_priv: bool,
    ) -> io::Result<(Option<Handle>, u32)> {
        self.do_open(ctx, inode, flags, kill_priv)
    }

    fn create(
        &self,
        ctx: Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        flags: u32,
        umask: u32,
        kill_priv: bool,
    ) -> io::Result<(Entry, Option<Handle>, u32)> {
        let (e, h, f) = self.do_create(ctx, parent, name, mode, flags, umask, kill_priv)?;
        Ok((self.with_dax_flag(ctx, e), h, f))
    }

    fn read(
        &self,
        _ctx: Context,
        inode: Inode,
        handle: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
    ) -> io::Result<usize> {
        self.do_read(inode, handle, w, size, offset)
    }

    fn write(
        &self,
        _ctx: Context,
        inode: Inode,
        handle: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        kill_priv: bool,
    ) -> io::Result<usize> {
        self.do_write(inode, handle, r, size, offset, kill_priv)
    }

    fn statfs(&self, _ctx: Context, inode: Inode) -> io::Result<libc::statvfs64> {
        self.do_statfs(inode)
    }

    fn release(
        &self,
        _ctx: Context,
        inode: Inode,
        _flags: u32,
        handle: Handle,
        flush: bool,
    ) -> io::Result<()> {
        self.do_release(inode, handle, flush)
    }

    fn fsync(&self, _ctx: Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
        self.do_fsync(inode, handle, datasync)
    }

    fn flush(
        &self,
        _ctx: Context,
        inode: Inode,
        handle: Handle,
        _lock_owner: u64,
    ) -> io::Result<()> {
        self.do_flush(inode, handle)
    }

    fn opendir(
        &self,
        _ctx: Context,
        inode: Inode,
        _flags: u32,
    ) -> io::Result<(Option<Handle>, u32)> {
        self.do_opendir(inode)
    }

    fn readdir(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        plus: bool,
        add: &mut AddEntry<'_>,
    ) -> io::Result<()> {
        if !plus || self.dax_state().is_none() {
            return self.do_readdir(inode, handle, size, offset, plus, add);
        }
        let mut flagged =
            |de: DirEntry<'_>, e: Option<Entry>| add(de, e.map(|e| self.with_dax_flag(ctx, e)));
        self.do_readdir(inode, handle, size, offset, plus, &mut flagged)
    }

    fn releasedir(
        &self,
        _ctx: Context,
        inode: Inode,
        _flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
        self.do_releasedir(inode, handle)
    }

    fn fsyncdir(
        &self,
        _ctx: Context,
        inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        self.do_fsyncdir(inode, handle, datasync)
    }

    fn access(&self, ctx: Context, inode: Inode, mask: u32) -> io::Result<()> {
        self.do_access(ctx, inode, mask)
    }

    fn fallocate(
        &self,
        _ctx: Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.do_fallocate(inode, handle, mode, offset, length)
    }

    fn lseek(
        &self,
        _ctx: Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.do_lseek(inode, handle, offset, whence)
    }

    fn copy_file_range(
        &self,
        _ctx: Context,
        inode_in: Inode,
        handle_in: Handle,
        offset_in: u64,
        inode_out: Inode,
        handle_out: Handle,
        offset_out: u64,
        len: u64,
        flags: u64,
    ) -> io::Result<usize> {
        self.do_copy_file_range(
            inode_in, handle_in, offset_in, inode_out, handle_out, offset_out, len, flags,
        )
    }

    fn syncfs(&self, _ctx: Context, inode: Inode) -> io::Result<()> {
        self.do_syncfs(inode)
    }

    fn setxattr(
        &self,
        _ctx: Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
        setxattr_flags: u32,
    ) -> io::Result<()> {
        self.do_setxattr(inode, name, value, flags, setxattr_flags)
    }

    fn getxattr(
        &self,
        _ctx: Context,
        inode: Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<XattrReply> {
        self.do_getxattr(inode, name, size)
    }

    fn listxattr(&self, _ctx: Context, inode: Inode, size: u32) -> io::Result<XattrReply> {
        self.do_listxattr(inode, size)
    }

    fn removexattr(&self, _ctx: Context, inode: Inode, name: &CStr) -> io::Result<()> {
        self.do_removexattr(inode, name)
    }

    fn setup_mapping(
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
        self.do_setup_mapping(ctx, inode, handle, foffset, len, flags, moffset, mapper)
    }

    fn remove_mapping(
        &self,
        _ctx: Context,
        requests: &[RemoveMappingOne],
        mapper: &dyn Mapper,
    ) -> io::Result<()> {
        self.do_remove_mapping(requests, mapper)
    }
}
