//! The FUSE ABI as a Linux 6.x virtio-fs guest speaks it (protocol 7.31 and newer, up to 7.38).
//!
//! Every structure is a plain-data, `repr(C)` mirror of `include/uapi/linux/fuse.h` with the
//! padding spelled out, so that it can be read from and written to guest memory with
//! [`vm_memory::ByteValued`]. `layout_tests` pins the size and every field offset.
//!
//! - [`opcode`]: request opcodes.
//! - [`flags`]: INIT capability flags and the per-request flag words.
//! - this module: the request and reply structures.

pub mod flags;
#[cfg(test)]
mod layout_tests;
pub mod opcode;

pub use opcode::Opcode;

/// Major version of the FUSE kernel protocol this crate speaks.
pub const KERNEL_VERSION: u32 = 7;
/// Newest minor version this crate speaks.
pub const KERNEL_MINOR_VERSION: u32 = 38;
/// Oldest minor version vfsdax accepts (virtio-fs with DAX needs 7.31).
pub const MIN_KERNEL_MINOR_VERSION: u32 = 31;
/// The node id of the root directory.
pub const ROOT_ID: u64 = 1;

/// Size of `fuse_init_in` as sent by guests older than 7.36 (no `flags2`).
pub const COMPAT_INIT_IN_SIZE: usize = 16;
/// Size of `fuse_setxattr_in` when `FUSE_SETXATTR_EXT` was not negotiated.
pub const COMPAT_SETXATTR_IN_SIZE: usize = 8;

/// The largest directory listing one `READDIR`/`READDIRPLUS` reply carries, whatever buffer the
/// guest offers: 1 MiB (the most a guest asks for with `max_pages` of 4 KiB pages).
pub const MAX_READDIR_REPLY: usize = 1 << 20;

/// Declares plain-data wire structures and implements [`vm_memory::ByteValued`] for them.
macro_rules! wire_structs {
    ($($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* })*) => {
        $(
            $(#[$meta])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
            pub struct $name { $($(#[$fmeta])* pub $field: $ty,)* }

            // SAFETY: the struct is `repr(C)`, made only of integers and arrays of integers (every
            // bit pattern is a valid value), and its padding is spelled out as named fields, so it
            // has no implicit padding bytes; `layout_tests` checks the size equals the sum of the
            // ABI's fields.
            unsafe impl vm_memory::ByteValued for $name {}
        )*
    };
}

wire_structs! {
    /// `struct fuse_attr`: the attributes of an inode.
    pub struct Attr {
        /// Inode number.
        pub ino: u64,
        /// Size in bytes.
        pub size: u64,
        /// Number of 512-byte blocks.
        pub blocks: u64,
        /// Access time, seconds.
        pub atime: u64,
        /// Modification time, seconds.
        pub mtime: u64,
        /// Status-change time, seconds.
        pub ctime: u64,
        /// Access time, nanoseconds.
        pub atimensec: u32,
        /// Modification time, nanoseconds.
        pub mtimensec: u32,
        /// Status-change time, nanoseconds.
        pub ctimensec: u32,
        /// File type and mode.
        pub mode: u32,
        /// Number of hard links.
        pub nlink: u32,
        /// Owner.
        pub uid: u32,
        /// Group.
        pub gid: u32,
        /// Device number for device files.
        pub rdev: u32,
        /// Preferred I/O block size.
        pub blksize: u32,
        /// `FUSE_ATTR_*` flags.
        pub flags: u32,
    }

    /// `struct fuse_kstatfs`.
    pub struct Kstatfs {
        /// Total blocks.
        pub blocks: u64,
        /// Free blocks.
        pub bfree: u64,
        /// Free blocks for unprivileged users.
        pub bavail: u64,
        /// Total inodes.
        pub files: u64,
        /// Free inodes.
        pub ffree: u64,
        /// Block size.
        pub bsize: u32,
        /// Maximum name length.
        pub namelen: u32,
        /// Fragment size.
        pub frsize: u32,
        /// Padding.
        pub padding: u32,
        /// Spare.
        pub spare: [u32; 6],
    }

    /// `struct fuse_file_lock`.
    pub struct FileLock {
        /// First byte.
        pub start: u64,
        /// Last byte.
        pub end: u64,
        /// Lock type.
        pub typ: u32,
        /// Owner's pid.
        pub pid: u32,
    }

    /// `struct fuse_in_header`: the header of every request.
    pub struct InHeader {
        /// Length of the whole request including this header.
        pub len: u32,
        /// The opcode.
        pub opcode: u32,
        /// Request id, echoed in the reply.
        pub unique: u64,
        /// The node the request is about.
        pub nodeid: u64,
        /// Caller's uid.
        pub uid: u32,
        /// Caller's gid.
        pub gid: u32,
        /// Caller's pid.
        pub pid: u32,
        /// Length of request extensions, in units of 8 bytes.
        pub total_extlen: u16,
        /// Padding.
        pub padding: u16,
    }

    /// `struct fuse_out_header`: the header of every reply.
    pub struct OutHeader {
        /// Length of the whole reply including this header.
        pub len: u32,
        /// Zero, or a negated errno.
        pub error: i32,
        /// The request's id.
        pub unique: u64,
    }

    /// `struct fuse_entry_out`: reply to LOOKUP, MKNOD, MKDIR, SYMLINK, LINK and part of CREATE.
    pub struct EntryOut {
        /// Node id of the entry.
        pub nodeid: u64,
        /// Generation of the node id.
        pub generation: u64,
        /// Validity of the name, seconds.
        pub entry_valid: u64,
        /// Validity of the attributes, seconds.
        pub attr_valid: u64,
        /// Validity of the name, nanoseconds.
        pub entry_valid_nsec: u32,
        /// Validity of the attributes, nanoseconds.
        pub attr_valid_nsec: u32,
        /// The attributes.
        pub attr: Attr,
    }

    /// `struct fuse_forget_in`.
    pub struct ForgetIn {
        /// Number of lookups to forget.
        pub nlookup: u64,
    }

    /// `struct fuse_forget_one`: one entry of BATCH_FORGET.
    pub struct ForgetOne {
        /// The node.
        pub nodeid: u64,
        /// Number of lookups to forget.
        pub nlookup: u64,
    }

    /// `struct fuse_batch_forget_in`, followed by `count` [`ForgetOne`].
    pub struct BatchForgetIn {
        /// Number of entries that follow.
        pub count: u32,
        /// Unused.
        pub dummy: u32,
    }

    /// `struct fuse_getattr_in`.
    pub struct GetattrIn {
        /// `FUSE_GETATTR_FH` when `fh` is valid.
        pub getattr_flags: u32,
        /// Unused.
        pub dummy: u32,
        /// File handle.
        pub fh: u64,
    }

    /// `struct fuse_attr_out`.
    pub struct AttrOut {
        /// Validity, seconds.
        pub attr_valid: u64,
        /// Validity, nanoseconds.
        pub attr_valid_nsec: u32,
        /// Unused.
        pub dummy: u32,
        /// The attributes.
        pub attr: Attr,
    }

    /// `struct fuse_mknod_in`, followed by the name.
    pub struct MknodIn {
        /// Type and mode.
        pub mode: u32,
        /// Device number.
        pub rdev: u32,
        /// The caller's umask.
        pub umask: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_mkdir_in`, followed by the name.
    pub struct MkdirIn {
        /// Mode.
        pub mode: u32,
        /// The caller's umask.
        pub umask: u32,
    }

    /// `struct fuse_rename_in`, followed by the old and the new name.
    pub struct RenameIn {
        /// Node id of the new parent directory.
        pub newdir: u64,
    }

    /// `struct fuse_rename2_in`, followed by the old and the new name.
    pub struct Rename2In {
        /// Node id of the new parent directory.
        pub newdir: u64,
        /// `RENAME_NOREPLACE`, `RENAME_EXCHANGE`, `RENAME_WHITEOUT`.
        pub flags: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_link_in`, followed by the new name.
    pub struct LinkIn {
        /// The node to link to.
        pub oldnodeid: u64,
    }

    /// `struct fuse_setattr_in`.
    pub struct SetattrIn {
        /// `FATTR_*` bits saying which fields are valid.
        pub valid: u32,
        /// Padding.
        pub padding: u32,
        /// File handle, with `FATTR_FH`.
        pub fh: u64,
        /// New size.
        pub size: u64,
        /// Lock owner, with `FATTR_LOCKOWNER`.
        pub lock_owner: u64,
        /// Access time, seconds.
        pub atime: u64,
        /// Modification time, seconds.
        pub mtime: u64,
        /// Change time, seconds.
        pub ctime: u64,
        /// Access time, nanoseconds.
        pub atimensec: u32,
        /// Modification time, nanoseconds.
        pub mtimensec: u32,
        /// Change time, nanoseconds.
        pub ctimensec: u32,
        /// New mode.
        pub mode: u32,
        /// Unused.
        pub unused4: u32,
        /// New owner.
        pub uid: u32,
        /// New group.
        pub gid: u32,
        /// Unused.
        pub unused5: u32,
    }

    /// `struct fuse_open_in` (OPEN and OPENDIR).
    pub struct OpenIn {
        /// `open(2)` flags.
        pub flags: u32,
        /// `FUSE_OPEN_KILL_SUIDGID`.
        pub open_flags: u32,
    }

    /// `struct fuse_create_in`, followed by the name.
    pub struct CreateIn {
        /// `open(2)` flags.
        pub flags: u32,
        /// Mode of the new file.
        pub mode: u32,
        /// The caller's umask.
        pub umask: u32,
        /// `FUSE_OPEN_KILL_SUIDGID`.
        pub open_flags: u32,
    }

    /// `struct fuse_open_out`.
    pub struct OpenOut {
        /// File handle.
        pub fh: u64,
        /// `FOPEN_*` flags.
        pub open_flags: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_release_in` (RELEASE and RELEASEDIR).
    pub struct ReleaseIn {
        /// File handle.
        pub fh: u64,
        /// `open(2)` flags of the handle.
        pub flags: u32,
        /// `FUSE_RELEASE_*`.
        pub release_flags: u32,
        /// Lock owner.
        pub lock_owner: u64,
    }

    /// `struct fuse_flush_in`.
    pub struct FlushIn {
        /// File handle.
        pub fh: u64,
        /// Unused.
        pub unused: u32,
        /// Padding.
        pub padding: u32,
        /// Lock owner.
        pub lock_owner: u64,
    }

    /// `struct fuse_read_in` (READ and READDIR/READDIRPLUS).
    pub struct ReadIn {
        /// File handle.
        pub fh: u64,
        /// Offset.
        pub offset: u64,
        /// Number of bytes wanted.
        pub size: u32,
        /// `FUSE_READ_*`.
        pub read_flags: u32,
        /// Lock owner.
        pub lock_owner: u64,
        /// `open(2)` flags of the handle.
        pub flags: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_write_in`, followed by the data.
    pub struct WriteIn {
        /// File handle.
        pub fh: u64,
        /// Offset.
        pub offset: u64,
        /// Number of bytes that follow.
        pub size: u32,
        /// `FUSE_WRITE_*`.
        pub write_flags: u32,
        /// Lock owner.
        pub lock_owner: u64,
        /// `open(2)` flags of the handle.
        pub flags: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_write_out`.
    pub struct WriteOut {
        /// Bytes written.
        pub size: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_statfs_out`.
    pub struct StatfsOut {
        /// The statistics.
        pub st: Kstatfs,
    }

    /// `struct fuse_fsync_in` (FSYNC and FSYNCDIR).
    pub struct FsyncIn {
        /// File handle.
        pub fh: u64,
        /// `FUSE_FSYNC_FDATASYNC`.
        pub fsync_flags: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_setxattr_in` with `FUSE_SETXATTR_EXT`, followed by name and value.
    pub struct SetxattrIn {
        /// Size of the value.
        pub size: u32,
        /// `setxattr(2)` flags.
        pub flags: u32,
        /// `FUSE_SETXATTR_ACL_KILL_SGID`.
        pub setxattr_flags: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_getxattr_in` (GETXATTR, followed by the name, and LISTXATTR).
    pub struct GetxattrIn {
        /// Size of the caller's buffer; 0 asks for the size.
        pub size: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_getxattr_out`: the size, when the caller asked for it.
    pub struct GetxattrOut {
        /// Size of the value or list.
        pub size: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_lk_in`.
    pub struct LkIn {
        /// File handle.
        pub fh: u64,
        /// Lock owner.
        pub owner: u64,
        /// The lock.
        pub lk: FileLock,
        /// `FUSE_LK_FLOCK`.
        pub lk_flags: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_lk_out`.
    pub struct LkOut {
        /// The lock.
        pub lk: FileLock,
    }

    /// `struct fuse_access_in`.
    pub struct AccessIn {
        /// `R_OK | W_OK | X_OK`, or `F_OK`.
        pub mask: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_init_in` (64 bytes since 7.36; older guests send the first 16).
    pub struct InitIn {
        /// Major version.
        pub major: u32,
        /// Minor version.
        pub minor: u32,
        /// Maximum readahead.
        pub max_readahead: u32,
        /// Low 32 bits of the capability flags.
        pub flags: u32,
        /// High 32 bits of the capability flags (with `FUSE_INIT_EXT`).
        pub flags2: u32,
        /// Unused.
        pub unused: [u32; 11],
    }

    /// `struct fuse_init_out`.
    pub struct InitOut {
        /// Major version.
        pub major: u32,
        /// Minor version.
        pub minor: u32,
        /// Maximum readahead.
        pub max_readahead: u32,
        /// Low 32 bits of the capability flags.
        pub flags: u32,
        /// Maximum number of pending background requests.
        pub max_background: u16,
        /// Congestion threshold.
        pub congestion_threshold: u16,
        /// Maximum size of a WRITE.
        pub max_write: u32,
        /// Timestamp granularity in nanoseconds.
        pub time_gran: u32,
        /// Maximum pages in a request (with `FUSE_MAX_PAGES`).
        pub max_pages: u16,
        /// log2 of the DAX mapping alignment (with `FUSE_MAP_ALIGNMENT`).
        pub map_alignment: u16,
        /// High 32 bits of the capability flags.
        pub flags2: u32,
        /// Unused.
        pub unused: [u32; 7],
    }

    /// `struct fuse_interrupt_in`.
    pub struct InterruptIn {
        /// The request to interrupt.
        pub unique: u64,
    }

    /// `struct fuse_bmap_in`.
    pub struct BmapIn {
        /// Block.
        pub block: u64,
        /// Block size.
        pub blocksize: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_dirent`, followed by the name padded to 8 bytes.
    pub struct Dirent {
        /// Inode number.
        pub ino: u64,
        /// Offset of the next entry.
        pub off: u64,
        /// Length of the name.
        pub namelen: u32,
        /// `DT_*` type.
        pub typ: u32,
    }

    /// `struct fuse_direntplus`: an entry plus its dirent, followed by the padded name.
    pub struct DirentPlus {
        /// The entry (as for LOOKUP).
        pub entry_out: EntryOut,
        /// The directory entry.
        pub dirent: Dirent,
    }

    /// `struct fuse_fallocate_in`.
    pub struct FallocateIn {
        /// File handle.
        pub fh: u64,
        /// Offset.
        pub offset: u64,
        /// Length.
        pub length: u64,
        /// `fallocate(2)` mode.
        pub mode: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_lseek_in`.
    pub struct LseekIn {
        /// File handle.
        pub fh: u64,
        /// Offset.
        pub offset: u64,
        /// `SEEK_*`.
        pub whence: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_lseek_out`.
    pub struct LseekOut {
        /// Resulting offset.
        pub offset: u64,
    }

    /// `struct fuse_copy_file_range_in`.
    pub struct CopyFileRangeIn {
        /// Source handle.
        pub fh_in: u64,
        /// Source offset.
        pub off_in: u64,
        /// Destination node.
        pub nodeid_out: u64,
        /// Destination handle.
        pub fh_out: u64,
        /// Destination offset.
        pub off_out: u64,
        /// Length.
        pub len: u64,
        /// Flags (must be 0).
        pub flags: u64,
    }

    /// `struct fuse_setupmapping_in`: map a file range into the DAX window.
    pub struct SetupMappingIn {
        /// An open file handle.
        pub fh: u64,
        /// Offset into the file.
        pub foffset: u64,
        /// Length of the mapping.
        pub len: u64,
        /// `FUSE_SETUPMAPPING_FLAG_*`.
        pub flags: u64,
        /// Offset into the DAX window.
        pub moffset: u64,
    }

    /// `struct fuse_removemapping_in`, followed by `count` [`RemoveMappingOne`].
    pub struct RemoveMappingIn {
        /// Number of entries that follow.
        pub count: u32,
    }

    /// `struct fuse_removemapping_one`.
    pub struct RemoveMappingOne {
        /// Offset into the DAX window.
        pub moffset: u64,
        /// Length.
        pub len: u64,
    }

    /// `struct fuse_syncfs_in`.
    pub struct SyncfsIn {
        /// Padding.
        pub padding: u64,
    }
}

/// Size of a `fuse_dirent` record with a name of `namelen` bytes, padded to 8 bytes.
pub const fn dirent_size(namelen: usize) -> usize {
    (std::mem::size_of::<Dirent>() + namelen + 7) & !7
}

/// Size of a `fuse_direntplus` record with a name of `namelen` bytes, padded to 8 bytes.
pub const fn direntplus_size(namelen: usize) -> usize {
    (std::mem::size_of::<DirentPlus>() + namelen + 7) & !7
}
