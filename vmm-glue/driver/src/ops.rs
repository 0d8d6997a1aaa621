//! One [`FsClient`] method per FUSE opcode: builds the request structures, sends them and
//! parses the typed reply. An error reply comes back as [`ClientError::Fuse`] with
//! [`FuseError::Errno`](super::fuse::FuseError::Errno) (see [`ClientError::errno`]).

use std::mem::size_of;

use vfsdax_protocol::fuse::flags::{self, init};
use vfsdax_protocol::fuse::{
    AccessIn, AttrOut, BatchForgetIn, CopyFileRangeIn, CreateIn, EntryOut, FallocateIn, FlushIn,
    ForgetIn, ForgetOne, FsyncIn, GetattrIn, GetxattrIn, InitIn, InitOut, InterruptIn, LinkIn,
    LseekIn, LseekOut, MkdirIn, MknodIn, Opcode, OpenIn, OpenOut, ReadIn, ReleaseIn,
    RemoveMappingIn, RemoveMappingOne, Rename2In, RenameIn, SetattrIn, SetupMappingIn, SetxattrIn,
    StatfsOut, SyncfsIn, WriteIn, WriteOut, COMPAT_SETXATTR_IN_SIZE, KERNEL_MINOR_VERSION,
    KERNEL_VERSION,
};
use vm_memory::ByteValued;

use super::client::{ClientError, FsClient, Result};
use super::fuse::{self as wire, name_bytes, DirEntry, DirEntryPlus, XattrReply};

/// The INIT flags [`FsClient::init`] asks for: what a Linux 6.x virtio-fs guest asks for,
/// minus `DONT_MASK` (so the daemon applies the umask it is sent) and locks.
pub const DEFAULT_INIT_FLAGS: u64 = init::ASYNC_READ
    | init::ATOMIC_O_TRUNC
    | init::EXPORT_SUPPORT
    | init::BIG_WRITES
    | init::AUTO_INVAL_DATA
    | init::DO_READDIRPLUS
    | init::READDIRPLUS_AUTO
    | init::ASYNC_DIO
    | init::PARALLEL_DIROPS
    | init::MAX_PAGES
    | init::SETXATTR_EXT
    | init::INIT_EXT
    | init::MAP_ALIGNMENT;

/// Bytes of reply room for requests with a fixed-size reply structure.
fn cap_of<T>() -> u32 {
    size_of::<T>() as u32
}

impl FsClient {
    /// INIT with [`DEFAULT_INIT_FLAGS`].
    pub fn init(&mut self) -> Result<InitOut> {
        self.init_with(KERNEL_VERSION, KERNEL_MINOR_VERSION, DEFAULT_INIT_FLAGS)
    }

    /// INIT with a chosen version and flags.
    pub fn init_with(&mut self, major: u32, minor: u32, flags: u64) -> Result<InitOut> {
        let arg = InitIn {
            major,
            minor,
            max_readahead: 128 << 10,
            flags: flags as u32,
            flags2: (flags >> 32) as u32,
            unused: [0; 11],
        };
        let body = self.request(Opcode::Init, 0, &[arg.as_slice()], cap_of::<InitOut>())?;
        let out = wire::parse_init(&body)?;
        self.init_out = Some(out);
        Ok(out)
    }

    /// The INIT flags both sides agreed on (0 before INIT).
    pub fn negotiated_init_flags(&self) -> u64 {
        self.init_out()
            .map(|o| u64::from(o.flags) | (u64::from(o.flags2) << 32))
            .unwrap_or(0)
    }

    /// DESTROY.
    pub fn destroy(&mut self) -> Result<()> {
        let body = self.request(Opcode::Destroy, 0, &[], 0)?;
        Ok(wire::parse_empty(&body)?)
    }

    /// LOOKUP `name` in `parent`.
    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<EntryOut> {
        let n = name_bytes(name)?;
        let body = self.request(Opcode::Lookup, parent, &[&n], cap_of::<EntryOut>())?;
        Ok(wire::parse_entry(&body)?)
    }

    /// FORGET `nlookup` references of `nodeid` (hiprio queue, no reply).
    pub fn forget(&mut self, nodeid: u64, nlookup: u64) -> Result<()> {
        let arg = ForgetIn { nlookup };
        self.request_no_reply(Opcode::Forget, nodeid, &[arg.as_slice()])
    }

    /// BATCH_FORGET (hiprio queue, no reply).
    pub fn batch_forget(&mut self, items: &[ForgetOne]) -> Result<()> {
        let arg = BatchForgetIn {
            count: items.len() as u32,
            dummy: 0,
        };
        let mut list = Vec::with_capacity(std::mem::size_of_val(items));
        for i in items {
            list.extend_from_slice(i.as_slice());
        }
        self.request_no_reply(Opcode::BatchForget, 0, &[arg.as_slice(), &list])
    }

    /// GETATTR, through a file handle if `fh` is given.
    pub fn getattr(&mut self, nodeid: u64, fh: Option<u64>) -> Result<AttrOut> {
        let arg = GetattrIn {
            getattr_flags: if fh.is_some() { flags::GETATTR_FH } else { 0 },
            dummy: 0,
            fh: fh.unwrap_or(0),
        };
        let body = self.request(
            Opcode::Getattr,
            nodeid,
            &[arg.as_slice()],
            cap_of::<AttrOut>(),
        )?;
        Ok(wire::parse_attr(&body)?)
    }

    /// SETATTR with the fields `arg.valid` selects.
    pub fn setattr(&mut self, nodeid: u64, arg: &SetattrIn) -> Result<AttrOut> {
        let body = self.request(
            Opcode::Setattr,
            nodeid,
            &[arg.as_slice()],
            cap_of::<AttrOut>(),
        )?;
        Ok(wire::parse_attr(&body)?)
    }

    /// READLINK.
    pub fn readlink(&mut self, nodeid: u64) -> Result<Vec<u8>> {
        self.request(Opcode::Readlink, nodeid, &[], 4096)
    }

    /// SYMLINK `name` in `parent` pointing at `target`.
    pub fn symlink(&mut self, parent: u64, name: &[u8], target: &[u8]) -> Result<EntryOut> {
        let (n, t) = (name_bytes(name)?, name_bytes(target)?);
        let body = self.request(Opcode::Symlink, parent, &[&n, &t], cap_of::<EntryOut>())?;
        Ok(wire::parse_entry(&body)?)
    }

    /// MKNOD.
    pub fn mknod(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> Result<EntryOut> {
        let arg = MknodIn {
            mode,
            rdev,
            umask,
            padding: 0,
        };
        let n = name_bytes(name)?;
        let body = self.request(
            Opcode::Mknod,
            parent,
            &[arg.as_slice(), &n],
            cap_of::<EntryOut>(),
        )?;
        Ok(wire::parse_entry(&body)?)
    }

    /// MKDIR.
    pub fn mkdir(&mut self, parent: u64, name: &[u8], mode: u32, umask: u32) -> Result<EntryOut> {
        let arg = MkdirIn { mode, umask };
        let n = name_bytes(name)?;
        let body = self.request(
            Opcode::Mkdir,
            parent,
            &[arg.as_slice(), &n],
            cap_of::<EntryOut>(),
        )?;
        Ok(wire::parse_entry(&body)?)
    }

    fn name_op(&mut self, op: Opcode, parent: u64, name: &[u8]) -> Result<()> {
        let n = name_bytes(name)?;
        let body = self.request(op, parent, &[&n], 0)?;
        Ok(wire::parse_empty(&body)?)
    }

    /// UNLINK.
    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> Result<()> {
        self.name_op(Opcode::Unlink, parent, name)
    }

    /// RMDIR.
    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> Result<()> {
        self.name_op(Opcode::Rmdir, parent, name)
    }

    /// RENAME.
    pub fn rename(
        &mut self,
        olddir: u64,
        oldname: &[u8],
        newdir: u64,
        newname: &[u8],
    ) -> Result<()> {
        let arg = RenameIn { newdir };
        let (o, n) = (name_bytes(oldname)?, name_bytes(newname)?);
        let body = self.request(Opcode::Rename, olddir, &[arg.as_slice(), &o, &n], 0)?;
        Ok(wire::parse_empty(&body)?)
    }

    /// RENAME2 with `RENAME_*` flags.
    pub fn rename2(
        &mut self,
        olddir: u64,
        oldname: &[u8],
        newdir: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        let arg = Rename2In {
            newdir,
            flags,
            padding: 0,
        };
        let (o, n) = (name_bytes(oldname)?, name_bytes(newname)?);
        let body = self.request(Opcode::Rename2, olddir, &[arg.as_slice(), &o, &n], 0)?;
        Ok(wire::parse_empty(&body)?)
    }

    /// LINK `oldnodeid` as `newname` in `newparent`.
    pub fn link(&mut self, oldnodeid: u64, newparent: u64, newname: &[u8]) -> Result<EntryOut> {
        let arg = LinkIn { oldnodeid };
        let n = name_bytes(newname)?;
        let body = self.request(
            Opcode::Link,
            newparent,
            &[arg.as_slice(), &n],
            cap_of::<EntryOut>(),
        )?;
        Ok(wire::parse_entry(&body)?)
    }

    fn open_op(&mut self, op: Opcode, nodeid: u64, flags: u32) -> Result<OpenOut> {
        let arg = OpenIn {
            flags,
            open_flags: 0,
        };
        let body = self.request(op, nodeid, &[arg.as_slice()], cap_of::<OpenOut>())?;
        Ok(wire::parse_open(&body)?)
    }

    /// OPEN with `open(2)` flags.
    pub fn open(&mut self, nodeid: u64, flags: u32) -> Result<OpenOut> {
        self.open_op(Opcode::Open, nodeid, flags)
    }

    /// OPENDIR.
    pub fn opendir(&mut self, nodeid: u64, flags: u32) -> Result<OpenOut> {
        self.open_op(Opcode::Opendir, nodeid, flags)
    }

    fn read_in(fh: u64, offset: u64, size: u32) -> ReadIn {
        ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        }
    }

    /// READ up to `size` bytes at `offset`.
    pub fn read(&mut self, nodeid: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let arg = Self::read_in(fh, offset, size);
        let body = self.request(Opcode::Read, nodeid, &[arg.as_slice()], size)?;
        if body.len() > size as usize {
            return Err(ClientError::TooLarge {
                len: body.len(),
                cap: size,
            });
        }
        Ok(body)
    }

    /// WRITE `data` at `offset`.
    pub fn write(&mut self, nodeid: u64, fh: u64, offset: u64, data: &[u8]) -> Result<WriteOut> {
        self.write_flags(nodeid, fh, offset, data, 0)
    }

    /// WRITE with `FUSE_WRITE_*` flags.
    pub fn write_flags(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        write_flags: u32,
    ) -> Result<WriteOut> {
        let arg = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            write_flags,
            ..Default::default()
        };
        let body = self.request(
            Opcode::Write,
            nodeid,
            &[arg.as_slice(), data],
            cap_of::<WriteOut>(),
        )?;
        Ok(wire::parse_write(&body)?)
    }

    /// STATFS.
    pub fn statfs(&mut self, nodeid: u64) -> Result<StatfsOut> {
        let body = self.request(Opcode::Statfs, nodeid, &[], cap_of::<StatfsOut>())?;
        Ok(wire::parse_statfs(&body)?)
    }

    fn release_op(&mut self, op: Opcode, nodeid: u64, fh: u64, flags: u32) -> Result<()> {
        let arg = ReleaseIn {
            fh,
            flags,
            ..Default::default()
        };
        let body = self.request(op, nodeid, &[arg.as_slice()], 0)?;
        Ok(wire::parse_empty(&body)?)
    }

    /// RELEASE a file handle.
    pub fn release(&mut self, nodeid: u64, fh: u64, flags: u32) -> Result<()> {
        self.release_op(Opcode::Release, nodeid, fh, flags)
    }

    /// RELEASEDIR a directory handle.
    pub fn releasedir(&mut self, nodeid: u64, fh: u64) -> Result<()> {
        self.release_op(Opcode::Releasedir, nodeid, fh, 0)
    }

    fn fsync_op(&mut self, op: Opcode, nodeid: u64, fh: u64, datasync: bool) -> Result<()> {
        let arg = FsyncIn {
            fh,
            fsync_flags: if datasync { flags::FSYNC_FDATASYNC } else { 0 },
            padding: 0,
        };
        let body = self.request(op, nodeid, &[arg.as_slice()], 0)?;
        Ok(wire::parse_empty(&body)?)
    }

    /// FSYNC.
    pub fn fsync(&mut self, nodeid: u64, fh: u64, datasync: bool) -> Result<()> {
        self.fsync_op(Opcode::Fsync, nodeid, fh, datasync)
    }

    /// FSYNCDIR.
    pub fn fsyncdir(&mut self, nodeid: u64, fh: u64, datasync: bool) -> Result<()> {
        self.fsync_op(Opcode::Fsyncdir, nodeid, fh, datasync)
    }

    /// FLUSH.
    pub fn flush(&mut self, nodeid: u64, fh: u64, lock_owner: u64) -> Result<()> {
        let arg = FlushIn {
            fh,
            lock_owner,
            ..Default::default()
        };
        let body = self.request(Opcode::Flush, nodeid, &[arg.as_slice()], 0)?;
        Ok(wire::parse_empty(&body)?)
    }

    /// READDIR with a `size`-byte buffer from `offset`.
    pub fn readdir(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<DirEntry>> {
        let arg = Self::read_in(fh, offset, size);
        let body = self.request(Opcode::Readdir, nodeid, &[arg.as_slice()], size)?;
        Ok(wire::parse_readdir(&body)?)
    }

    /// READDIRPLUS with a `size`-byte buffer from `offset`.
    pub fn readdirplus(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<DirEntryPlus>> {
        let arg = Self::read_in(fh, offset, size);
        let body = self.request(Opcode::Readdirplus, nodeid, &[arg.as_slice()], size)?;
        Ok(wire::parse_readdirplus(&body)?)
    }

    /// ACCESS with `R_OK | W_OK | X_OK` or `F_OK`.
    pub fn access(&mut self, nodeid: u64, mask: u32) -> Result<()> {
        let arg = AccessIn { mask, padding: 0 };
        let body = self.request(Opcode::Access, nodeid, &[arg.as_slice()], 0)?;
        Ok(wire::parse_empty(&body)?)
    }

    /// CREATE and open `name` in `parent`.
    pub fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        flags: u32,
        mode: u32,
        umask: u32,
    ) -> Result<(EntryOut, OpenOut)> {
        let arg = CreateIn {
            flags,
            mode,
            umask,
            open_flags: 0,
        };
        let n = name_bytes(name)?;
        let cap = cap_of::<EntryOut>() + cap_of::<OpenOut>();
        let body = self.request(Opcode::Create, parent, &[arg.as_slice(), &n], cap)?;
        Ok(wire::parse_create(&body)?)
    }

    /// FALLOCATE with `fallocate(2)` mode.
    pub fn fallocate(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
    ) -> Result<()> {
        let arg = FallocateIn {
            fh,
            offset,
            length,
            mode,
            padding: 0,
        };
        let body = self.request(Opcode::Fallocate, nodeid, &[arg.as_slice()], 0)?;
        Ok(wire::parse_empty(&body)?)
    }

    /// LSEEK with `SEEK_DATA` / `SEEK_HOLE` (or `SEEK_SET` etc.).
    pub fn lseek(&mut self, nodeid: u64, fh: u64, offset: u64, whence: u32) -> Result<LseekOut> {
        let arg = LseekIn {
            fh,
            offset,
            whence,
            padding: 0,
        };
        let body = self.request(
            Opcode::Lseek,
            nodeid,
            &[arg.as_slice()],
            cap_of::<LseekOut>(),
        )?;
        Ok(wire::parse_lseek(&body)?)
    }

    /// COPY_FILE_RANGE from `nodeid_in`.
    pub fn copy_file_range(&mut self, nodeid_in: u64, arg: &CopyFileRangeIn) -> Result<WriteOut> {
        let body = self.request(
            Opcode::CopyFileRange,
            nodeid_in,
            &[arg.as_slice()],
            cap_of::<WriteOut>(),
        )?;
        Ok(wire::parse_write(&body)?)
    }

    /// SYNCFS.
    pub fn syncfs(&mut self, nodeid: u64) -> Result<()> {
        let arg = SyncfsIn { padding: 0 };
        let body = self.request(Opcode::Syncfs, nodeid, &[arg.as_slice()], 0)?;
        Ok(wire::parse_empty(&body)?)
    }

    /// SETXATTR `name` = `value` with `setxattr(2)` flags. Sends the extended
    /// `fuse_setxattr_in` only if `FUSE_SETXATTR_EXT` was negotiated.
    pub fn setxattr(&mut self, nodeid: u64, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        let arg = SetxattrIn {
            size: value.len() as u32,
            flags,
            setxattr_flags: 0,
            padding: 0,
        };
        let ext = self.negotiated_init_flags() & init::SETXATTR_EXT != 0;
        let head = if ext {
            arg.as_slice()
        } else {
            &arg.as_slice()[..COMPAT_SETXATTR_IN_SIZE]
        };
        let n = name_bytes(name)?;
        let body = self.request(Opcode::Setxattr, nodeid, &[head, &n, value], 0)?;
        Ok(wire::parse_empty(&body)?)
    }

    /// GETXATTR `name`; `size` 0 asks for the value's size.
    pub fn getxattr(&mut self, nodeid: u64, name: &[u8], size: u32) -> Result<XattrReply> {
        let arg = GetxattrIn { size, padding: 0 };
        let n = name_bytes(name)?;
        let cap = size.max(cap_of::<vfsdax_protocol::fuse::GetxattrOut>());
        let body = self.request(Opcode::Getxattr, nodeid, &[arg.as_slice(), &n], cap)?;
        Ok(wire::parse_xattr(&body, size)?)
    }

    /// LISTXATTR; `size` 0 asks for the list's size.
    pub fn listxattr(&mut self, nodeid: u64, size: u32) -> Result<XattrReply> {
        let arg = GetxattrIn { size, padding: 0 };
        let cap = size.max(cap_of::<vfsdax_protocol::fuse::GetxattrOut>());
        let body = self.request(Opcode::Listxattr, nodeid, &[arg.as_slice()], cap)?;
        Ok(wire::parse_xattr(&body, size)?)
    }

    /// REMOVEXATTR `name`.
    pub fn removexattr(&mut self, nodeid: u64, name: &[u8]) -> Result<()> {
        self.name_op(Opcode::Removexattr, nodeid, name)
    }

    /// INTERRUPT request `unique` (hiprio queue, no reply).
    pub fn interrupt(&mut self, unique: u64) -> Result<()> {
        let arg = InterruptIn { unique };
        self.request_no_reply(Opcode::Interrupt, 0, &[arg.as_slice()])
    }

    /// SETUPMAPPING of a file range into the DAX window.
    pub fn setupmapping(&mut self, nodeid: u64, arg: &SetupMappingIn) -> Result<()> {
        let body = self.request(Opcode::SetupMapping, nodeid, &[arg.as_slice()], 0)?;
        Ok(wire::parse_empty(&body)?)
    }

    /// REMOVEMAPPING of window ranges.
    pub fn removemapping(&mut self, nodeid: u64, items: &[RemoveMappingOne]) -> Result<()> {
        let arg = RemoveMappingIn {
            count: items.len() as u32,
        };
        let mut list = Vec::with_capacity(std::mem::size_of_val(items));
        for i in items {
            list.extend_from_slice(i.as_slice());
        }
        let body = self.request(Opcode::RemoveMapping, nodeid, &[arg.as_slice(), &list], 0)?;
        Ok(wire::parse_empty(&body)?)
    }
}
