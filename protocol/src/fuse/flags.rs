//! Flag words of the FUSE ABI.

/// INIT capability flags (`fuse_init_in.flags | flags2 << 32`, the same in `fuse_init_out`).
pub mod init {
    /// Asynchronous read requests.
    pub const ASYNC_READ: u64 = 1 << 0;
    /// Remote POSIX locks.
    pub const POSIX_LOCKS: u64 = 1 << 1;
    /// Kernel sends file handle for fstat etc.
    pub const FILE_OPS: u64 = 1 << 2;
    /// Handles `O_TRUNC` inside OPEN.
    pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
    /// Handles lookups of "." and "..".
    pub const EXPORT_SUPPORT: u64 = 1 << 4;
    /// Writes larger than 4 KiB.
    pub const BIG_WRITES: u64 = 1 << 5;
    /// Do not apply the umask to file mode on create.
    pub const DONT_MASK: u64 = 1 << 6;
    /// Splice write.
    pub const SPLICE_WRITE: u64 = 1 << 7;
    /// Splice move.
    pub const SPLICE_MOVE: u64 = 1 << 8;
    /// Splice read.
    pub const SPLICE_READ: u64 = 1 << 9;
    /// Remote BSD locks.
    pub const FLOCK_LOCKS: u64 = 1 << 10;
    /// ioctl on directories.
    pub const HAS_IOCTL_DIR: u64 = 1 << 11;
    /// Invalidate cached pages when mtime changes.
    pub const AUTO_INVAL_DATA: u64 = 1 << 12;
    /// READDIRPLUS.
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    /// Adaptive READDIRPLUS.
    pub const READDIRPLUS_AUTO: u64 = 1 << 14;
    /// Asynchronous direct I/O.
    pub const ASYNC_DIO: u64 = 1 << 15;
    /// Writeback caching.
    pub const WRITEBACK_CACHE: u64 = 1 << 16;
    /// Open is optional.
    pub const NO_OPEN_SUPPORT: u64 = 1 << 17;
    /// Parallel lookups and readdir.
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    /// The server clears suid/sgid on write, chown and truncate.
    pub const HANDLE_KILLPRIV: u64 = 1 << 19;
    /// POSIX ACLs.
    pub const POSIX_ACL: u64 = 1 << 20;
    /// Reading the device after abort returns ECONNABORTED.
    pub const ABORT_ERROR: u64 = 1 << 21;
    /// `max_pages` in `fuse_init_out` is valid.
    pub const MAX_PAGES: u64 = 1 << 22;
    /// Cache READLINK replies.
    pub const CACHE_SYMLINKS: u64 = 1 << 23;
    /// OPENDIR is optional.
    pub const NO_OPENDIR_SUPPORT: u64 = 1 << 24;
    /// Only invalidate cached pages on explicit request.
    pub const EXPLICIT_INVAL_DATA: u64 = 1 << 25;
    /// `map_alignment` in `fuse_init_out` is valid (DAX).
    pub const MAP_ALIGNMENT: u64 = 1 << 26;
    /// Submounts are announced with `FUSE_ATTR_SUBMOUNT`.
    pub const SUBMOUNTS: u64 = 1 << 27;
    /// Killing suid/sgid, version 2.
    pub const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
    /// Extended `fuse_setxattr_in`.
    pub const SETXATTR_EXT: u64 = 1 << 29;
    /// `flags2` is valid.
    pub const INIT_EXT: u64 = 1 << 30;
    /// Reserved.
    pub const INIT_RESERVED: u64 = 1 << 31;
    /// Security context on create.
    pub const SECURITY_CTX: u64 = 1 << 32;
    /// Per-inode DAX (`FUSE_ATTR_DAX`).
    pub const HAS_INODE_DAX: u64 = 1 << 33;
    /// Supplementary group on create.
    pub const CREATE_SUPP_GROUP: u64 = 1 << 34;
    /// Expire-only invalidation.
    pub const HAS_EXPIRE_ONLY: u64 = 1 << 35;
    /// mmap of direct-I/O files.
    pub const DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;
}

/// `fuse_setattr_in.valid` bits.
pub mod fattr {
    /// `mode` is valid.
    pub const MODE: u32 = 1 << 0;
    /// `uid` is valid.
    pub const UID: u32 = 1 << 1;
    /// `gid` is valid.
    pub const GID: u32 = 1 << 2;
    /// `size` is valid.
    pub const SIZE: u32 = 1 << 3;
    /// `atime` is valid.
    pub const ATIME: u32 = 1 << 4;
    /// `mtime` is valid.
    pub const MTIME: u32 = 1 << 5;
    /// `fh` is valid.
    pub const FH: u32 = 1 << 6;
    /// Set atime to now.
    pub const ATIME_NOW: u32 = 1 << 7;
    /// Set mtime to now.
    pub const MTIME_NOW: u32 = 1 << 8;
    /// `lock_owner` is valid.
    pub const LOCKOWNER: u32 = 1 << 9;
    /// `ctime` is valid.
    pub const CTIME: u32 = 1 << 10;
    /// Clear suid/sgid.
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// `fuse_open_out.open_flags` bits.
pub mod fopen {
    /// Bypass the page cache.
    pub const DIRECT_IO: u32 = 1 << 0;
    /// Keep cached data.
    pub const KEEP_CACHE: u32 = 1 << 1;
    /// Not seekable.
    pub const NONSEEKABLE: u32 = 1 << 2;
    /// Cache directory contents.
    pub const CACHE_DIR: u32 = 1 << 3;
    /// A stream.
    pub const STREAM: u32 = 1 << 4;
    /// No FLUSH on close.
    pub const NOFLUSH: u32 = 1 << 5;
    /// Parallel direct writes.
    pub const PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
}

/// `fuse_attr.flags` bits.
pub mod attr {
    /// The inode is a submount root.
    pub const SUBMOUNT: u32 = 1 << 0;
    /// Use DAX for this inode (with `HAS_INODE_DAX`).
    pub const DAX: u32 = 1 << 1;
}

/// `fuse_getattr_in.getattr_flags`: `fh` is valid.
pub const GETATTR_FH: u32 = 1 << 0;
/// `fuse_release_in.release_flags`: flush as well.
pub const RELEASE_FLUSH: u32 = 1 << 0;
/// `fuse_release_in.release_flags`: drop BSD locks.
pub const RELEASE_FLOCK_UNLOCK: u32 = 1 << 1;
/// `fuse_write_in.write_flags`: delayed write from the page cache.
pub const WRITE_CACHE: u32 = 1 << 0;
/// `fuse_write_in.write_flags`: `lock_owner` is valid.
pub const WRITE_LOCKOWNER: u32 = 1 << 1;
/// `fuse_write_in.write_flags`: clear suid/sgid.
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `fuse_read_in.read_flags`: `lock_owner` is valid.
pub const READ_LOCKOWNER: u32 = 1 << 1;
/// `fuse_fsync_in.fsync_flags`: data only.
pub const FSYNC_FDATASYNC: u32 = 1 << 0;
/// `fuse_open_in.open_flags` / `fuse_create_in.open_flags`: clear suid/sgid.
pub const OPEN_KILL_SUIDGID: u32 = 1 << 0;
/// `fuse_setxattr_in.setxattr_flags`: clear sgid when setting an ACL.
pub const SETXATTR_ACL_KILL_SGID: u32 = 1 << 0;
/// `fuse_lk_in.lk_flags`: a BSD lock.
pub const LK_FLOCK: u32 = 1 << 0;
/// `fuse_setupmapping_in.flags`: writable mapping.
pub const SETUPMAPPING_FLAG_WRITE: u64 = 1 << 0;
/// `fuse_setupmapping_in.flags`: readable mapping.
pub const SETUPMAPPING_FLAG_READ: u64 = 1 << 1;
/// `fuse_rename2_in.flags`: fail if the target exists.
pub const RENAME_NOREPLACE: u32 = 1 << 0;
/// `fuse_rename2_in.flags`: exchange source and target.
pub const RENAME_EXCHANGE: u32 = 1 << 1;
/// `fuse_rename2_in.flags`: leave a whiteout.
pub const RENAME_WHITEOUT: u32 = 1 << 2;
