//! Building replies: host types to wire structures, and READDIR packing. Pure functions.

use std::io;
use std::mem::size_of;
use std::time::Duration;

use vfsdax_protocol::fuse::{
    dirent_size, direntplus_size, Attr, AttrOut, Dirent, DirentPlus, EntryOut, Kstatfs, OutHeader,
    StatfsOut,
};
use vm_memory::ByteValued;

use crate::filesystem::{AttrReply, DirEntry, Entry};

/// Size of `fuse_out_header`.
pub const OUT_HEADER_SIZE: usize = size_of::<OutHeader>();

/// The header of a reply of `body_len` bytes; `errno` 0 for success.
pub fn out_header(unique: u64, errno: i32, body_len: usize) -> OutHeader {
    OutHeader {
        // Bodies are bounded by the writer's room, itself below u32::MAX.
        len: u32::try_from(OUT_HEADER_SIZE + body_len).unwrap_or(u32::MAX),
        error: -errno,
        unique,
    }
}

/// Seconds and nanoseconds of a timeout.
fn split_duration(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

/// `fuse_attr` from a host `stat64`.
pub fn attr_from_stat(st: &libc::stat64, flags: u32) -> Attr {
    Attr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: st.st_atime as u64,
        mtime: st.st_mtime as u64,
        ctime: st.st_ctime as u64,
        atimensec: st.st_atime_nsec as u32,
        mtimensec: st.st_mtime_nsec as u32,
        ctimensec: st.st_ctime_nsec as u32,
        mode: st.st_mode,
        // A link count above u32::MAX is reported as the maximum.
        nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
        uid: st.st_uid,
        gid: st.st_gid,
        // glibc's 64-bit dev_t keeps the kernel's 32-bit "new" encoding in its low word.
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags,
    }
}

/// `fuse_entry_out` for an entry.
pub fn entry_out(e: &Entry) -> EntryOut {
    let (entry_valid, entry_valid_nsec) = split_duration(e.entry_timeout);
    let (attr_valid, attr_valid_nsec) = split_duration(e.attr_timeout);
    EntryOut {
        nodeid: e.inode,
        generation: e.generation,
        entry_valid,
        attr_valid,
        entry_valid_nsec,
        attr_valid_nsec,
        attr: attr_from_stat(&e.attr, e.attr_flags),
    }
}

/// `fuse_attr_out` for GETATTR / SETATTR.
pub fn attr_out(a: &AttrReply) -> AttrOut {
    let (attr_valid, attr_valid_nsec) = split_duration(a.timeout);
    AttrOut {
        attr_valid,
        attr_valid_nsec,
        dummy: 0,
        attr: attr_from_stat(&a.attr, a.attr_flags),
    }
}

/// `fuse_statfs_out` from a host `statvfs64`.
pub fn statfs_out(st: &libc::statvfs64) -> StatfsOut {
    StatfsOut {
        st: Kstatfs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namelen: st.f_namemax as u32,
            frsize: st.f_frsize as u32,
            padding: 0,
            spare: [0; 6],
        },
    }
}

/// Packs READDIR / READDIRPLUS records into at most `limit` bytes.
#[derive(Debug)]
pub struct DirentBuf {
    buf: Vec<u8>,
    limit: usize,
    plus: bool,
}

impl DirentBuf {
    /// An empty buffer holding at most `limit` bytes of `fuse_dirent` (or, with `plus`,
    /// `fuse_direntplus`) records.
    pub fn new(limit: usize, plus: bool) -> Self {
        DirentBuf {
            buf: Vec::new(),
            limit,
            plus,
        }
    }

    /// Appends one record; returns its size, or 0 when it does not fit (nothing appended).
    ///
    /// With `plus`, `entry` is the entry's lookup; `None` (for `.` and `..`) sends a zeroed
    /// `fuse_entry_out`, which the guest takes as "no attributes" rather than a lookup.
    /// An empty name, or one with `/` or NUL, is the filesystem's bug: EIO.
    pub fn add(&mut self, d: DirEntry<'_>, entry: Option<&Entry>) -> io::Result<usize> {
        if d.name.is_empty() || d.name.iter().any(|&b| b == b'/' || b == 0) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let namelen =
            u32::try_from(d.name.len()).map_err(|_| io::Error::from_raw_os_error(libc::EIO))?;
        let size = if self.plus {
            direntplus_size(d.name.len())
        } else {
            dirent_size(d.name.len())
        };
        if self.buf.len().saturating_add(size) > self.limit {
            return Ok(0);
        }
        let dirent = Dirent {
            ino: d.ino,
            off: d.offset,
            namelen,
            typ: d.typ,
        };
        let start = self.buf.len();
        if self.plus {
            let entry_out = entry.map(entry_out).unwrap_or_default();
            self.buf
                .extend_from_slice(DirentPlus { entry_out, dirent }.as_slice());
        } else {
            self.buf.extend_from_slice(dirent.as_slice());
        }
        self.buf.extend_from_slice(d.name);
        self.buf.resize(start + size, 0);
        Ok(size)
    }

    /// The packed records.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat() -> libc::stat64 {
        // SAFETY: stat64 is plain old data; all-zero bytes are a valid value.
        let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
        st.st_ino = 42;
        st.st_size = 1234;
        st.st_mode = libc::S_IFREG | 0o644;
        st.st_nlink = 3;
        st.st_mtime = 1_700_000_000;
        st.st_mtime_nsec = 5;
        st.st_rdev = libc::makedev(8, 1);
        st
    }

    #[test]
    fn attr_conversion() {
        let a = attr_from_stat(&stat(), 2);
        assert_eq!((a.ino, a.size, a.nlink, a.flags), (42, 1234, 3, 2));
        assert_eq!((a.mtime, a.mtimensec), (1_700_000_000, 5));
        assert_eq!(a.mode, libc::S_IFREG | 0o644);
        assert_eq!(a.rdev, (8 << 8) | 1);
    }

    #[test]
    fn entry_timeouts_split() {
        let e = Entry {
            inode: 7,
            generation: 1,
            attr: stat(),
            attr_flags: 0,
            attr_timeout: Duration::new(1, 500),
            entry_timeout: Duration::from_millis(2500),
        };
        let o = entry_out(&e);
        assert_eq!((o.nodeid, o.generation), (7, 1));
        assert_eq!((o.attr_valid, o.attr_valid_nsec), (1, 500));
        assert_eq!((o.entry_valid, o.entry_valid_nsec), (2, 500_000_000));
    }

    fn dirent(name: &[u8], offset: u64) -> DirEntry<'_> {
        DirEntry {
            ino: 9,
            offset,
            typ: libc::DT_REG as u32,
            name,
        }
    }

    #[test]
    fn dirents_are_padded_and_stop_at_the_limit() {
        // 24-byte header + 5 name bytes = 29, padded to 32; two fit in 64, a third does not.
        let mut b = DirentBuf::new(64 + 31, false);
        assert_eq!(b.add(dirent(b"hello", 1), None).unwrap(), 32);
        assert_eq!(b.add(dirent(b"world", 2), None).unwrap(), 32);
        assert_eq!(b.add(dirent(b"third", 3), None).unwrap(), 0);
        assert_eq!(b.bytes().len(), 64);
        let mut first = Dirent::default();
        first.as_mut_slice().copy_from_slice(&b.bytes()[..24]);
        assert_eq!((first.ino, first.off, first.namelen), (9, 1, 5));
        assert_eq!(&b.bytes()[24..29], b"hello");
        assert_eq!(&b.bytes()[29..32], &[0, 0, 0]);
        // A shorter name still fits in what is left.
        assert_eq!(b.add(dirent(b"x", 4), None).unwrap(), 0, "25 -> 32 > 31");
    }

    #[test]
    fn direntplus_carries_the_entry() {
        let e = Entry {
            inode: 77,
            generation: 0,
            attr: stat(),
            attr_flags: 0,
            attr_timeout: Duration::ZERO,
            entry_timeout: Duration::ZERO,
        };
        let mut b = DirentBuf::new(4096, true);
        // 152-byte header + the name, padded to 8.
        assert_eq!(b.add(dirent(b"f", 1), Some(&e)).unwrap(), 160);
        assert_eq!(b.add(dirent(b"..", 2), None).unwrap(), 160);
        let mut rec = DirentPlus::default();
        rec.as_mut_slice()
            .copy_from_slice(&b.bytes()[..size_of::<DirentPlus>()]);
        assert_eq!(rec.entry_out.nodeid, 77);
        assert_eq!(rec.entry_out.attr.ino, 42);
        assert_eq!(rec.dirent.namelen, 1);
        rec.as_mut_slice()
            .copy_from_slice(&b.bytes()[160..160 + size_of::<DirentPlus>()]);
        assert_eq!(rec.entry_out, EntryOut::default());
        assert_eq!(rec.dirent.namelen, 2);
    }

    #[test]
    fn bad_names_from_the_filesystem() {
        let mut b = DirentBuf::new(4096, false);
        assert!(b.add(dirent(b"", 1), None).is_err());
        assert!(b.add(dirent(b"a/b", 1), None).is_err());
        assert!(b.add(dirent(b"a\0b", 1), None).is_err());
        assert!(b.bytes().is_empty());
    }

    #[test]
    fn header_negates_errno() {
        let h = out_header(5, libc::ENOENT, 0);
        assert_eq!((h.len, h.error, h.unique), (16, -libc::ENOENT, 5));
        assert_eq!(out_header(5, 0, 8).len, 24);
    }
}
