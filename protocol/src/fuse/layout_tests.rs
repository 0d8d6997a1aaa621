//! Pins the size and every field offset of the wire structures to the values of
//! `include/uapi/linux/fuse.h` on x86-64.

use super::*;
use std::mem::{offset_of, size_of};

/// Asserts a struct's size and the offset of each listed field.
macro_rules! layout {
    ($name:ident, $size:expr, { $($field:ident : $off:expr),* $(,)? }) => {{
        assert_eq!(size_of::<$name>(), $size, concat!("size of ", stringify!($name)));
        $(assert_eq!(
            offset_of!($name, $field),
            $off,
            concat!(stringify!($name), ".", stringify!($field))
        );)*
    }};
}

#[test]
fn attr_and_statfs() {
    layout!(Attr, 88, { ino: 0, size: 8, blocks: 16, atime: 24, mtime: 32, ctime: 40,
        atimensec: 48, mtimensec: 52, ctimensec: 56, mode: 60, nlink: 64, uid: 68, gid: 72,
        rdev: 76, blksize: 80, flags: 84 });
    layout!(Kstatfs, 80, { blocks: 0, bfree: 8, bavail: 16, files: 24, ffree: 32, bsize: 40,
        namelen: 44, frsize: 48, padding: 52, spare: 56 });
    layout!(StatfsOut, 80, { st: 0 });
    layout!(FileLock, 24, { start: 0, end: 8, typ: 16, pid: 20 });
}

#[test]
fn headers() {
    layout!(InHeader, 40, { len: 0, opcode: 4, unique: 8, nodeid: 16, uid: 24, gid: 28, pid: 32,
        total_extlen: 36, padding: 38 });
    layout!(OutHeader, 16, { len: 0, error: 4, unique: 8 });
}

#[test]
fn entries_and_attrs() {
    layout!(EntryOut, 128, { nodeid: 0, generation: 8, entry_valid: 16, attr_valid: 24,
        entry_valid_nsec: 32, attr_valid_nsec: 36, attr: 40 });
    layout!(AttrOut, 104, { attr_valid: 0, attr_valid_nsec: 8, dummy: 12, attr: 16 });
    layout!(GetattrIn, 16, { getattr_flags: 0, dummy: 4, fh: 8 });
    layout!(SetattrIn, 88, { valid: 0, padding: 4, fh: 8, size: 16, lock_owner: 24, atime: 32,
        mtime: 40, ctime: 48, atimensec: 56, mtimensec: 60, ctimensec: 64, mode: 68,
        unused4: 72, uid: 76, gid: 80, unused5: 84 });
    layout!(ForgetIn, 8, { nlookup: 0 });
    layout!(ForgetOne, 16, { nodeid: 0, nlookup: 8 });
    layout!(BatchForgetIn, 8, { count: 0, dummy: 4 });
}

#[test]
fn namespace_ops() {
    layout!(MknodIn, 16, { mode: 0, rdev: 4, umask: 8, padding: 12 });
    layout!(MkdirIn, 8, { mode: 0, umask: 4 });
    layout!(RenameIn, 8, { newdir: 0 });
    layout!(Rename2In, 16, { newdir: 0, flags: 8, padding: 12 });
    layout!(LinkIn, 8, { oldnodeid: 0 });
    layout!(AccessIn, 8, { mask: 0, padding: 4 });
}

#[test]
fn file_ops() {
    layout!(OpenIn, 8, { flags: 0, open_flags: 4 });
    layout!(CreateIn, 16, { flags: 0, mode: 4, umask: 8, open_flags: 12 });
    layout!(OpenOut, 16, { fh: 0, open_flags: 8, padding: 12 });
    layout!(ReleaseIn, 24, { fh: 0, flags: 8, release_flags: 12, lock_owner: 16 });
    layout!(FlushIn, 24, { fh: 0, unused: 8, padding: 12, lock_owner: 16 });
    layout!(ReadIn, 40, { fh: 0, offset: 8, size: 16, read_flags: 20, lock_owner: 24, flags: 32,
        padding: 36 });
    layout!(WriteIn, 40, { fh: 0, offset: 8, size: 16, write_flags: 20, lock_owner: 24,
        flags: 32, padding: 36 });
    layout!(WriteOut, 8, { size: 0, padding: 4 });
    layout!(FsyncIn, 16, { fh: 0, fsync_flags: 8, padding: 12 });
    layout!(FallocateIn, 32, { fh: 0, offset: 8, length: 16, mode: 24, padding: 28 });
    layout!(LseekIn, 24, { fh: 0, offset: 8, whence: 16, padding: 20 });
    layout!(LseekOut, 8, { offset: 0 });
    layout!(CopyFileRangeIn, 56, { fh_in: 0, off_in: 8, nodeid_out: 16, fh_out: 24, off_out: 32,
        len: 40, flags: 48 });
    layout!(LkIn, 48, { fh: 0, owner: 8, lk: 16, lk_flags: 40, padding: 44 });
    layout!(LkOut, 24, { lk: 0 });
    layout!(BmapIn, 16, { block: 0, blocksize: 8, padding: 12 });
    layout!(SyncfsIn, 8, { padding: 0 });
    layout!(InterruptIn, 8, { unique: 0 });
}

#[test]
fn xattrs() {
    layout!(SetxattrIn, 16, { size: 0, flags: 4, setxattr_flags: 8, padding: 12 });
    assert_eq!(
        COMPAT_SETXATTR_IN_SIZE,
        offset_of!(SetxattrIn, setxattr_flags)
    );
    layout!(GetxattrIn, 8, { size: 0, padding: 4 });
    layout!(GetxattrOut, 8, { size: 0, padding: 4 });
}

#[test]
fn init() {
    layout!(InitIn, 64, { major: 0, minor: 4, max_readahead: 8, flags: 12, flags2: 16,
        unused: 20 });
    assert_eq!(COMPAT_INIT_IN_SIZE, offset_of!(InitIn, flags2));
    layout!(InitOut, 64, { major: 0, minor: 4, max_readahead: 8, flags: 12, max_background: 16,
        congestion_threshold: 18, max_write: 20, time_gran: 24, max_pages: 28,
        map_alignment: 30, flags2: 32, unused: 36 });
}

#[test]
fn directory_entries() {
    layout!(Dirent, 24, { ino: 0, off: 8, namelen: 16, typ: 20 });
    layout!(DirentPlus, 152, { entry_out: 0, dirent: 128 });
    assert_eq!(dirent_size(1), 32);
    assert_eq!(dirent_size(8), 32);
    assert_eq!(dirent_size(9), 40);
    assert_eq!(direntplus_size(3), 160);
}

#[test]
fn dax_messages() {
    layout!(SetupMappingIn, 40, { fh: 0, foffset: 8, len: 16, flags: 24, moffset: 32 });
    layout!(RemoveMappingIn, 4, { count: 0 });
    layout!(RemoveMappingOne, 16, { moffset: 0, len: 8 });
    assert_eq!(flags::init::MAP_ALIGNMENT, 1 << 26);
    assert_eq!(flags::init::HAS_INODE_DAX, 1 << 33);
    assert_eq!(flags::attr::DAX, 2);
}
