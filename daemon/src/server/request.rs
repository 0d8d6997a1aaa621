//! Decoding a request's arguments: pure functions over the bytes after `fuse_in_header`.
//!
//! [`decode`] checks every length and name and returns a [`Request`] borrowing names and values
//! from the argument bytes, or the errno to answer. WRITE is special: only its `fuse_write_in`
//! is decoded here, the data stays in guest memory for the zero-copy path.

use std::ffi::CStr;
use std::mem::size_of;

use vfsdax_protocol::fuse::{
    self, flags, AccessIn, BatchForgetIn, CopyFileRangeIn, CreateIn, FallocateIn, FlushIn,
    ForgetIn, ForgetOne, FsyncIn, GetattrIn, GetxattrIn, InitIn, InterruptIn, LinkIn, LseekIn,
    MkdirIn, MknodIn, Opcode, OpenIn, ReadIn, ReleaseIn, RemoveMappingIn, RemoveMappingOne,
    Rename2In, RenameIn, SetattrIn, SetupMappingIn, SetxattrIn, WriteIn,
};
use vm_memory::ByteValued;

/// An errno to answer with (positive).
pub type Errno = i32;

/// A decoded request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// INIT (the compat 16-byte form is zero-extended).
    Init(InitIn),
    /// DESTROY.
    Destroy,
    /// LOOKUP.
    Lookup {
        /// The name.
        name: &'a CStr,
    },
    /// FORGET.
    Forget(ForgetIn),
    /// BATCH_FORGET.
    BatchForget(Vec<ForgetOne>),
    /// GETATTR (`fh` only with `FUSE_GETATTR_FH`).
    Getattr {
        /// The handle, if given.
        fh: Option<u64>,
    },
    /// SETATTR.
    Setattr(SetattrIn),
    /// READLINK.
    Readlink,
    /// SYMLINK.
    Symlink {
        /// The new entry's name.
        name: &'a CStr,
        /// Where it points.
        linkname: &'a CStr,
    },
    /// MKNOD.
    Mknod {
        /// The arguments.
        arg: MknodIn,
        /// The name.
        name: &'a CStr,
    },
    /// MKDIR.
    Mkdir {
        /// The arguments.
        arg: MkdirIn,
        /// The name.
        name: &'a CStr,
    },
    /// UNLINK.
    Unlink {
        /// The name.
        name: &'a CStr,
    },
    /// RMDIR.
    Rmdir {
        /// The name.
        name: &'a CStr,
    },
    /// RENAME (flags 0) or RENAME2.
    Rename {
        /// The new parent.
        newdir: u64,
        /// `RENAME_*` flags.
        flags: u32,
        /// The old name.
        oldname: &'a CStr,
        /// The new name.
        newname: &'a CStr,
    },
    /// LINK.
    Link {
        /// The existing node.
        oldnodeid: u64,
        /// The new name.
        name: &'a CStr,
    },
    /// OPEN.
    Open(OpenIn),
    /// READ.
    Read(ReadIn),
    /// WRITE: the data follows in the chain.
    Write(WriteIn),
    /// STATFS.
    Statfs,
    /// RELEASE.
    Release(ReleaseIn),
    /// FSYNC.
    Fsync(FsyncIn),
    /// SETXATTR.
    Setxattr {
        /// `setxattr(2)` flags.
        flags: u32,
        /// `FUSE_SETXATTR_*` flags (0 without `SETXATTR_EXT`).
        setxattr_flags: u32,
        /// The attribute's name.
        name: &'a CStr,
        /// The value.
        value: &'a [u8],
    },
    /// GETXATTR.
    Getxattr {
        /// The caller's buffer size.
        size: u32,
        /// The attribute's name.
        name: &'a CStr,
    },
    /// LISTXATTR.
    Listxattr {
        /// The caller's buffer size.
        size: u32,
    },
    /// REMOVEXATTR.
    Removexattr {
        /// The attribute's name.
        name: &'a CStr,
    },
    /// FLUSH.
    Flush(FlushIn),
    /// OPENDIR.
    Opendir(OpenIn),
    /// READDIR (`plus` false) or READDIRPLUS.
    Readdir {
        /// The arguments.
        arg: ReadIn,
        /// READDIRPLUS.
        plus: bool,
    },
    /// RELEASEDIR.
    Releasedir(ReleaseIn),
    /// FSYNCDIR.
    Fsyncdir(FsyncIn),
    /// ACCESS.
    Access(AccessIn),
    /// CREATE.
    Create {
        /// The arguments.
        arg: CreateIn,
        /// The name.
        name: &'a CStr,
    },
    /// INTERRUPT.
    Interrupt(InterruptIn),
    /// FALLOCATE.
    Fallocate(FallocateIn),
    /// LSEEK.
    Lseek(LseekIn),
    /// COPY_FILE_RANGE.
    CopyFileRange(CopyFileRangeIn),
    /// SETUPMAPPING.
    SetupMapping(SetupMappingIn),
    /// REMOVEMAPPING.
    RemoveMapping(Vec<RemoveMappingOne>),
    /// SYNCFS.
    Syncfs,
    /// An opcode vfsdax does not implement (answered with ENOSYS).
    Unsupported(u32),
}

/// Whether a request with this opcode gets a reply.
pub fn expects_reply(opcode: u32) -> bool {
    !matches!(
        Opcode::from_u32(opcode),
        Some(Opcode::Forget | Opcode::BatchForget | Opcode::Interrupt)
    )
}

/// Consumes plain-data structures and names from the front of the argument bytes.
struct Args<'a> {
    buf: &'a [u8],
}

impl<'a> Args<'a> {
    /// The next `T`; EINVAL when fewer bytes are left.
    fn obj<T: ByteValued>(&mut self) -> Result<T, Errno> {
        self.obj_sized(size_of::<T>())
    }

    /// The next `len` bytes (`len <= size_of::<T>()`) zero-extended into a `T`.
    fn obj_sized<T: ByteValued>(&mut self, len: usize) -> Result<T, Errno> {
        let bytes = self.bytes(len)?;
        let mut obj = T::zeroed();
        obj.as_mut_slice()[..len].copy_from_slice(bytes);
        Ok(obj)
    }

    /// The next `len` bytes.
    fn bytes(&mut self, len: usize) -> Result<&'a [u8], Errno> {
        if len > self.buf.len() {
            return Err(libc::EINVAL);
        }
        let (head, tail) = self.buf.split_at(len);
        self.buf = tail;
        Ok(head)
    }

    /// The next NUL-terminated string (EINVAL without a NUL).
    fn cstr(&mut self) -> Result<&'a CStr, Errno> {
        let nul = self.buf.iter().position(|&b| b == 0).ok_or(libc::EINVAL)?;
        let bytes = self.bytes(nul + 1)?;
        CStr::from_bytes_with_nul(bytes).map_err(|_| libc::EINVAL)
    }

    /// The next name of a directory entry: NUL-terminated, not empty, no `/`.
    fn name(&mut self) -> Result<&'a CStr, Errno> {
        let name = self.cstr()?;
        check_name(name)?;
        Ok(name)
    }

    /// `count` records of type `T`; EINVAL when the bytes present do not hold them.
    fn array<T: ByteValued>(&mut self, count: u32) -> Result<Vec<T>, Errno> {
        let len = (count as usize)
            .checked_mul(size_of::<T>())
            .ok_or(libc::EINVAL)?;
        let bytes = self.bytes(len)?;
        Ok(bytes
            .chunks_exact(size_of::<T>())
            .map(|c| {
                let mut obj = T::zeroed();
                obj.as_mut_slice().copy_from_slice(c);
                obj
            })
            .collect())
    }
}

/// A name the guest gives for a directory entry must be a single, non-empty path component.
pub fn check_name(name: &CStr) -> Result<(), Errno> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// Decodes the arguments `args` (the bytes after the header up to `len`, without extensions)
/// of a request with `opcode`. `setxattr_ext` says whether `FUSE_SETXATTR_EXT` was negotiated.
pub fn decode(opcode: u32, args: &[u8], setxattr_ext: bool) -> Result<Request<'_>, Errno> {
    let Some(op) = Opcode::from_u32(opcode) else {
        return Ok(Request::Unsupported(opcode));
    };
    let mut a = Args { buf: args };
    let req = match op {
        Opcode::Init => {
            // Guests older than 7.36 send 16 bytes; newer ones 64.
            let len = args.len().min(size_of::<InitIn>());
            if len < fuse::COMPAT_INIT_IN_SIZE {
                return Err(libc::EINVAL);
            }
            Request::Init(a.obj_sized(len)?)
        }
        Opcode::Destroy => Request::Destroy,
        Opcode::Lookup => Request::Lookup { name: a.name()? },
        Opcode::Forget => Request::Forget(a.obj()?),
        Opcode::BatchForget => {
            let head: BatchForgetIn = a.obj()?;
            Request::BatchForget(a.array(head.count)?)
        }
        Opcode::Getattr => {
            let arg: GetattrIn = a.obj()?;
            Request::Getattr {
                fh: (arg.getattr_flags & flags::GETATTR_FH != 0).then_some(arg.fh),
            }
        }
        Opcode::Setattr => Request::Setattr(a.obj()?),
        Opcode::Readlink => Request::Readlink,
        Opcode::Symlink => {
            let name = a.name()?;
            Request::Symlink {
                name,
                linkname: a.cstr()?,
            }
        }
        Opcode::Mknod => {
            let arg = a.obj()?;
            Request::Mknod {
                arg,
                name: a.name()?,
            }
        }
        Opcode::Mkdir => {
            let arg = a.obj()?;
            Request::Mkdir {
                arg,
                name: a.name()?,
            }
        }
        Opcode::Unlink => Request::Unlink { name: a.name()? },
        Opcode::Rmdir => Request::Rmdir { name: a.name()? },
        Opcode::Rename => {
            let arg: RenameIn = a.obj()?;
            Request::Rename {
                newdir: arg.newdir,
                flags: 0,
                oldname: a.name()?,
                newname: a.name()?,
            }
        }
        Opcode::Rename2 => {
            let arg: Rename2In = a.obj()?;
            Request::Rename {
                newdir: arg.newdir,
                flags: arg.flags,
                oldname: a.name()?,
                newname: a.name()?,
            }
        }
        Opcode::Link => {
            let arg: LinkIn = a.obj()?;
            Request::Link {
                oldnodeid: arg.oldnodeid,
                name: a.name()?,
            }
        }
        Opcode::Open => Request::Open(a.obj()?),
        Opcode::Read => Request::Read(a.obj()?),
        Opcode::Write => Request::Write(a.obj()?),
        Opcode::Statfs => Request::Statfs,
        Opcode::Release => Request::Release(a.obj()?),
        Opcode::Fsync => Request::Fsync(a.obj()?),
        Opcode::Setxattr => {
            let arg: SetxattrIn = if setxattr_ext {
                a.obj()?
            } else {
                a.obj_sized(fuse::COMPAT_SETXATTR_IN_SIZE)?
            };
            let name = a.cstr()?;
            Request::Setxattr {
                flags: arg.flags,
                setxattr_flags: arg.setxattr_flags,
                name,
                value: a.bytes(arg.size as usize)?,
            }
        }
        Opcode::Getxattr => {
            let arg: GetxattrIn = a.obj()?;
            Request::Getxattr {
                size: arg.size,
                name: a.cstr()?,
            }
        }
        Opcode::Listxattr => {
            let arg: GetxattrIn = a.obj()?;
            Request::Listxattr { size: arg.size }
        }
        Opcode::Removexattr => Request::Removexattr { name: a.cstr()? },
        Opcode::Flush => Request::Flush(a.obj()?),
        Opcode::Opendir => Request::Opendir(a.obj()?),
        Opcode::Readdir | Opcode::Readdirplus => Request::Readdir {
            arg: a.obj()?,
            plus: op == Opcode::Readdirplus,
        },
        Opcode::Releasedir => Request::Releasedir(a.obj()?),
        Opcode::Fsyncdir => Request::Fsyncdir(a.obj()?),
        Opcode::Access => Request::Access(a.obj()?),
        Opcode::Create => {
            let arg = a.obj()?;
            Request::Create {
                arg,
                name: a.name()?,
            }
        }
        Opcode::Interrupt => Request::Interrupt(a.obj()?),
        Opcode::Fallocate => Request::Fallocate(a.obj()?),
        Opcode::Lseek => Request::Lseek(a.obj()?),
        Opcode::CopyFileRange => Request::CopyFileRange(a.obj()?),
        Opcode::SetupMapping => Request::SetupMapping(a.obj()?),
        Opcode::RemoveMapping => {
            let head: RemoveMappingIn = a.obj()?;
            // Bounded as Linux bounds it: the batch is handled with the DAX requests held.
            if head.count > vfsdax_protocol::dax::REMOVEMAPPING_MAX_ENTRIES {
                return Err(libc::EINVAL);
            }
            Request::RemoveMapping(a.array(head.count)?)
        }
        Opcode::Syncfs => Request::Syncfs,
        Opcode::Getlk
        | Opcode::Setlk
        | Opcode::Setlkw
        | Opcode::Bmap
        | Opcode::Ioctl
        | Opcode::Poll
        | Opcode::NotifyReply
        | Opcode::Tmpfile => Request::Unsupported(opcode),
    };
    // A request ending in a name ends at that name's NUL: bytes after it mean the name held
    // a NUL of its own ("a\0b\0"), which the kernel never sends.
    let ends_in_name = matches!(
        op,
        Opcode::Lookup
            | Opcode::Symlink
            | Opcode::Mknod
            | Opcode::Mkdir
            | Opcode::Unlink
            | Opcode::Rmdir
            | Opcode::Rename
            | Opcode::Rename2
            | Opcode::Link
            | Opcode::Create
            | Opcode::Getxattr
            | Opcode::Removexattr
    );
    if ends_in_name && !a.buf.is_empty() {
        return Err(libc::EINVAL);
    }
    Ok(req)
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
