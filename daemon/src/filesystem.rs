//! The boundary between the FUSE server and a filesystem implementation.
//!
//! The server ([`crate::server`]) decodes requests from guest memory and calls one method of
//! [`FileSystem`] per opcode; the passthrough filesystem ([`crate::passthrough`]) implements
//! them against the host. Every method has a default that answers `ENOSYS`, so a filesystem only
//! implements what it supports and a new opcode is one method. Types here are host types
//! (`libc::stat64`, [`std::ffi::CStr`] names), never wire structures: the server converts.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::time::Duration;

use vfsdax_protocol::fuse::{RemoveMappingOne, SetattrIn};

/// A node id as the guest sees it.
pub type Inode = u64;
/// A file or directory handle as the guest sees it.
pub type Handle = u64;

/// Who sent a request (from `fuse_in_header`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// Caller's uid in the guest.
    pub uid: u32,
    /// Caller's gid in the guest.
    pub gid: u32,
    /// Caller's pid in the guest.
    pub pid: u32,
}

/// A looked-up entry: the reply to LOOKUP, MKNOD, MKDIR, SYMLINK, LINK and CREATE.
///
/// Each `Entry` returned to the server counts as one lookup of `inode` that the guest will
/// FORGET later.
#[derive(Clone, Copy)]
pub struct Entry {
    /// The node id.
    pub inode: Inode,
    /// Generation of the node id (0 when node ids are never reused).
    pub generation: u64,
    /// Attributes.
    pub attr: libc::stat64,
    /// `FUSE_ATTR_*` flags (submount, DAX).
    pub attr_flags: u32,
    /// How long the guest may cache the attributes.
    pub attr_timeout: Duration,
    /// How long the guest may cache the name.
    pub entry_timeout: Duration,
}

/// Attributes with their validity: the reply to GETATTR and SETATTR.
#[derive(Clone, Copy)]
pub struct AttrReply {
    /// Attributes.
    pub attr: libc::stat64,
    /// `FUSE_ATTR_*` flags (submount, DAX).
    pub attr_flags: u32,
    /// How long the guest may cache them.
    pub timeout: Duration,
}

/// One directory entry handed to the server's READDIR / READDIRPLUS buffer.
#[derive(Clone, Copy, Debug)]
pub struct DirEntry<'a> {
    /// Inode number (host inode number; the guest does not use it as a node id).
    pub ino: u64,
    /// Offset of the *next* entry, to pass back as the READDIR offset.
    pub offset: u64,
    /// `DT_*` type.
    pub typ: u32,
    /// The name, without NUL.
    pub name: &'a [u8],
}

/// The reply to GETXATTR / LISTXATTR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XattrReply {
    /// The caller asked for the size (buffer size 0): this is it.
    Count(u32),
    /// The value or list.
    Value(Vec<u8>),
}

/// Destination of READ: guest memory. The filesystem asks it to fill itself from a file, so
/// bytes move from the file straight into guest memory with no bounce buffer.
pub trait ZeroCopyWriter {
    /// Reads up to `count` bytes of `file` at `offset` into the destination; returns the number
    /// of bytes read (0 at end of file).
    fn write_from(&mut self, file: &File, count: usize, offset: u64) -> io::Result<usize>;
}

/// Source of WRITE: guest memory. The filesystem asks it to write itself into a file.
pub trait ZeroCopyReader {
    /// Writes up to `count` bytes of the request's data into `file` at `offset`; returns the
    /// number of bytes written.
    fn read_to(&mut self, file: &File, count: usize, offset: u64) -> io::Result<usize>;
}

/// How the filesystem asks the VMM to map file ranges into the DAX window (implemented over
/// the vhost-user backend channel in [`crate::dax`]).
pub use crate::dax::Mapper;

/// Answer for every operation a filesystem does not implement.
fn enosys<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// The operations of a FUSE filesystem, one per opcode. Errors are returned as
/// [`io::Error`]s carrying an OS errno; the server sends that errno to the guest.
#[allow(unused_variables)]
pub trait FileSystem: Send + Sync {
    /// INIT: `capable` is what the guest offers (`fuse::flags::init::*`); returns the
    /// capabilities the filesystem wants, a subset of `capable`. `mapper` reaches the DAX
    /// window (a session that starts over unmaps what the old one mapped).
    fn init(&self, capable: u64, mapper: &dyn Mapper) -> io::Result<u64> {
        Ok(0)
    }
    /// DESTROY, or the frontend went away: drop every inode and handle, and unmap every DAX
    /// mapping through `mapper` (a [`crate::dax::NoMapper`] when the frontend is gone).
    fn destroy(&self, mapper: &dyn Mapper) {}
    /// LOOKUP `name` in `parent`.
    fn lookup(&self, ctx: Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        enosys()
    }
    /// FORGET: drop `count` lookups of `inode` (and, once it is gone, its DAX mappings
    /// through `mapper`).
    fn forget(&self, ctx: Context, inode: Inode, count: u64, mapper: &dyn Mapper) {}
    /// BATCH_FORGET.
    fn batch_forget(&self, ctx: Context, requests: &[(Inode, u64)], mapper: &dyn Mapper) {
        for &(inode, count) in requests {
            self.forget(ctx, inode, count, mapper);
        }
    }
    /// GETATTR, through `handle` when the guest sent one.
    fn getattr(&self, ctx: Context, inode: Inode, handle: Option<Handle>) -> io::Result<AttrReply> {
        enosys()
    }
    /// SETATTR: the fields selected by `attr.valid` (`fuse::flags::fattr::*`).
    fn setattr(
        &self,
        ctx: Context,
        inode: Inode,
        attr: &SetattrIn,
        handle: Option<Handle>,
    ) -> io::Result<AttrReply> {
        enosys()
    }
    /// READLINK.
    fn readlink(&self, ctx: Context, inode: Inode) -> io::Result<Vec<u8>> {
        enosys()
    }
    /// SYMLINK: create `name` in `parent` pointing to `linkname`.
    fn symlink(
        &self,
        ctx: Context,
        linkname: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        enosys()
    }
    /// MKNOD.
    fn mknod(
        &self,
        ctx: Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        enosys()
    }
    /// MKDIR.
    fn mkdir(
        &self,
        ctx: Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        enosys()
    }
    /// UNLINK.
    fn unlink(&self, ctx: Context, parent: Inode, name: &CStr) -> io::Result<()> {
        enosys()
    }
    /// RMDIR.
    fn rmdir(&self, ctx: Context, parent: Inode, name: &CStr) -> io::Result<()> {
        enosys()
    }
    /// RENAME (`flags` = 0) and RENAME2 (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`, ...).
    fn rename(
        &self,
        ctx: Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        enosys()
    }
    /// LINK: a new name `newname` in `newparent` for `inode`.
    fn link(
        &self,
        ctx: Context,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        enosys()
    }
    /// OPEN with `open(2)` flags; `kill_priv` asks to clear suid/sgid on truncation.
    /// Returns the handle and `FOPEN_*` flags.
    fn open(
        &self,
        ctx: Context,
        inode: Inode,
        flags: u32,
        kill_priv: bool,
    ) -> io::Result<(Option<Handle>, u32)> {
        enosys()
    }
    /// CREATE: create and open `name`. Returns the entry, the handle and `FOPEN_*` flags.
    #[allow(clippy::too_many_arguments)]
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
        enosys()
    }
    /// READ up to `size` bytes at `offset` into `w`.
    fn read(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
    ) -> io::Result<usize> {
        enosys()
    }
    /// WRITE `size` bytes from `r` at `offset`; `kill_priv` asks to clear suid/sgid.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        kill_priv: bool,
    ) -> io::Result<usize> {
        enosys()
    }
    /// STATFS.
    fn statfs(&self, ctx: Context, inode: Inode) -> io::Result<libc::statvfs64> {
        enosys()
    }
    /// RELEASE of a file handle; `flush` when the guest also asks to flush.
    fn release(
        &self,
        ctx: Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
        flush: bool,
    ) -> io::Result<()> {
        enosys()
    }
    /// FSYNC.
    fn fsync(&self, ctx: Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
        enosys()
    }
    /// FLUSH (each close of a guest file descriptor).
    fn flush(&self, ctx: Context, inode: Inode, handle: Handle, lock_owner: u64) -> io::Result<()> {
        enosys()
    }
    /// OPENDIR. Returns the handle and `FOPEN_*` flags.
    fn opendir(&self, ctx: Context, inode: Inode, flags: u32) -> io::Result<(Option<Handle>, u32)> {
        enosys()
    }
    /// READDIR (`plus` = false) and READDIRPLUS (`plus` = true) from `offset`.
    ///
    /// Calls `add` for each entry, with an [`Entry`] (one lookup) when `plus`. `add` returns the
    /// bytes it used, or 0 when the entry did not fit: the filesystem then undoes the lookup it
    /// did for that entry and stops. `.` and `..` are not returned with `plus`' lookup counts.
    #[allow(clippy::too_many_arguments)]
    fn readdir(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(DirEntry<'_>, Option<Entry>) -> io::Result<usize>,
    ) -> io::Result<()> {
        enosys()
    }
    /// RELEASEDIR.
    fn releasedir(&self, ctx: Context, inode: Inode, flags: u32, handle: Handle) -> io::Result<()> {
        enosys()
    }
    /// FSYNCDIR.
    fn fsyncdir(
        &self,
        ctx: Context,
        inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        enosys()
    }
    /// ACCESS with `R_OK | W_OK | X_OK` or `F_OK`.
    fn access(&self, ctx: Context, inode: Inode, mask: u32) -> io::Result<()> {
        enosys()
    }
    /// FALLOCATE.
    fn fallocate(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        enosys()
    }
    /// LSEEK (`SEEK_DATA`, `SEEK_HOLE`, ...). Returns the new offset.
    fn lseek(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        enosys()
    }
    /// COPY_FILE_RANGE. Returns the bytes copied.
    #[allow(clippy::too_many_arguments)]
    fn copy_file_range(
        &self,
        ctx: Context,
        inode_in: Inode,
        handle_in: Handle,
        offset_in: u64,
        inode_out: Inode,
        handle_out: Handle,
        offset_out: u64,
        len: u64,
        flags: u64,
    ) -> io::Result<usize> {
        enosys()
    }
    /// SYNCFS.
    fn syncfs(&self, ctx: Context, inode: Inode) -> io::Result<()> {
        enosys()
    }
    /// SETXATTR.
    fn setxattr(
        &self,
        ctx: Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
        setxattr_flags: u32,
    ) -> io::Result<()> {
        enosys()
    }
    /// GETXATTR; `size` 0 asks for the size.
    fn getxattr(
        &self,
        ctx: Context,
        inode: Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<XattrReply> {
        enosys()
    }
    /// LISTXATTR; `size` 0 asks for the size.
    fn listxattr(&self, ctx: Context, inode: Inode, size: u32) -> io::Result<XattrReply> {
        enosys()
    }
    /// REMOVEXATTR.
    fn removexattr(&self, ctx: Context, inode: Inode, name: &CStr) -> io::Result<()> {
        enosys()
    }
    /// SETUPMAPPING: map `len` bytes of the file open as `handle` at `foffset` into the DAX
    /// window at `moffset`, through `mapper`. `flags` are `FUSE_SETUPMAPPING_FLAG_*`.
    #[allow(clippy::too_many_arguments)]
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
        enosys()
    }
    /// REMOVEMAPPING of a batch of window ranges.
    fn remove_mapping(
        &self,
        ctx: Context,
        requests: &[RemoveMappingOne],
        mapper: &dyn Mapper,
    ) -> io::Result<()> {
        enosys()
    }
}
