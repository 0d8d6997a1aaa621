//! Directory handle operations: OPENDIR, READDIR/READDIRPLUS, RELEASEDIR, FSYNCDIR.

use std::ffi::CStr;
use std::io;

use super::names;
use super::sys::{self, err};
use super::PassthroughFs;
use crate::filesystem::{DirEntry, Entry, Handle, Inode};

/// One record of a `getdents64` buffer (`struct linux_dirent64`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RawDirent<'a> {
    pub(crate) ino: u64,
    /// Offset of the next record.
    pub(crate) off: u64,
    pub(crate) typ: u8,
    pub(crate) name: &'a CStr,
}

/// Offset of `d_name` in `struct linux_dirent64` (ino 8, off 8, reclen 2, type 1).
const NAME_OFFSET: usize = 19;

/// Splits the first record off `buf`; `None` at the end or on a malformed record.
pub(crate) fn next_dirent(buf: &[u8]) -> Option<(RawDirent<'_>, &[u8])> {
    let ino = u64::from_ne_bytes(buf.get(0..8)?.try_into().ok()?);
    let off = u64::from_ne_bytes(buf.get(8..16)?.try_into().ok()?);
    let reclen = u16::from_ne_bytes(buf.get(16..18)?.try_into().ok()?) as usize;
    let typ = *buf.get(18)?;
    if reclen <= NAME_OFFSET {
        return None;
    }
    let rec = buf.get(..reclen)?;
    let name = CStr::from_bytes_until_nul(&rec[NAME_OFFSET..]).ok()?;
    Some((
        RawDirent {
            ino,
            off,
            typ,
            name,
        },
        &buf[reclen..],
    ))
}

/// Whether READDIRPLUS leaves out an entry whose lookup failed with `e`: only when the name
/// is gone (`ENOENT`, removed since `getdents64`). Any other failure (`EMFILE`, `ENFILE`,
/// `ENOMEM`, `EACCES`...) says nothing about the name, which still exists: dropping it would
/// hide a file from `ls`, so it is sent without an entry instead.
pub(super) fn skip_after_lookup_error(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

/// Callback type of READDIR.
pub(super) type AddEntry<'a> = dyn FnMut(DirEntry<'_>, Option<Entry>) -> io::Result<usize> + 'a;

impl PassthroughFs {
    pub(super) fn do_opendir(&self, inode: Inode) -> io::Result<(Option<Handle>, u32)> {
        let data = self.inode(inode)?;
        if !data.is_dir() {
            return Err(err(libc::ENOTDIR));
        }
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        let file = self.reopen(&data, flags)?;
        let h = self.handles.insert(inode, file, flags);
        Ok((Some(h), self.cfg.cache.open_flags(true)))
    }

    pub(super) fn do_readdir(
        &self,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        plus: bool,
        add: &mut AddEntry<'_>,
    ) -> io::Result<()> {
        let dir = self.inode(inode)?;
        let h = self.handles.get(handle, inode)?;
        if size == 0 {
            return Ok(());
        }
        let offset = i64::try_from(offset).map_err(|_| err(libc::EINVAL))?;
        // The position of the descriptor is shared state: hold it for seek + reads.
        let _pos = h.lock_pos();
        sys::lseek(h.fd(), offset, libc::SEEK_SET)?;
        // Large enough for any single record (a name is at most 255 bytes).
        let mut buf = vec![0u8; (size as usize).clamp(1024, 64 * 1024)];
        loop {
            let n = sys::getdents64(&h.file, &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            let mut rest = &buf[..n];
            while let Some((d, tail)) = next_dirent(rest) {
                rest = tail;
                let name = d.name.to_bytes();
                let entry = if plus && !names::is_dot(name) && !names::is_dotdot(name) {
                    match self.lookup_in(&dir, d.name) {
                        Ok(e) => Some(e),
                        Err(e) if skip_after_lookup_error(&e) => continue,
                        // Sent without attributes (a zeroed entry, node id 0): the guest
                        // looks the name up itself when it needs it.
                        Err(_) => None,
                    }
                } else {
                    None
                };
                let de = DirEntry {
                    ino: d.ino,
                    offset: d.off,
                    typ: d.typ.into(),
                    name,
                };
                let used = add(de, entry);
                if !matches!(used, Ok(n) if n > 0) {
                    // Not sent to the guest: undo its lookup.
                    if let Some(e) = entry {
                        self.inodes.forget(e.inode, 1);
                    }
                    return used.map(drop);
                }
            }
        }
    }

    pub(super) fn do_releasedir(&self, inode: Inode, handle: Handle) -> io::Result<()> {
        self.handles.remove(handle, inode).map(drop)
    }

    pub(super) fn do_fsyncdir(
        &self,
        inode: Inode,
        handle: Handle,
        datasync: bool,
    ) -> io::Result<()> {
        let h = self.handles.get(handle, inode)?;
        sys::fsync(h.fd(), datasync)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ino: u64, off: u64, typ: u8, name: &[u8]) -> Vec<u8> {
        let len = (NAME_OFFSET + name.len() + 1).next_multiple_of(8);
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(&ino.to_ne_bytes());
        v.extend_from_slice(&off.to_ne_bytes());
        v.extend_from_slice(&(len as u16).to_ne_bytes());
        v.push(typ);
        v.extend_from_slice(name);
        v.resize(len, 0);
        v
    }

    #[test]
    fn parses_consecutive_records() {
        let mut buf = record(5, 10, libc::DT_DIR, b".");
        buf.extend(record(6, 20, libc::DT_REG, b"hello.txt"));
        let (a, rest) = next_dirent(&buf).expect("first");
        assert_eq!((a.ino, a.off, a.typ), (5, 10, libc::DT_DIR));
        assert_eq!(a.name.to_bytes(), b".");
        let (b, rest) = next_dirent(rest).expect("second");
        assert_eq!((b.ino, b.off, b.typ), (6, 20, libc::DT_REG));
        assert_eq!(b.name.to_bytes(), b"hello.txt");
        assert!(next_dirent(rest).is_none());
    }

    #[test]
    fn malformed_records_stop_parsing() {
        let mut r = record(1, 2, 0, b"abc");
        r[16..18].copy_from_slice(&3u16.to_ne_bytes()); // reclen shorter than the header
        assert!(next_dirent(&r).is_none());
        let mut r = record(1, 2, 0, b"abc");
        r[16..18].copy_from_slice(&200u16.to_ne_bytes()); // reclen past the buffer
        assert!(next_dirent(&r).is_none());
        let mut r = record(1, 2, 0, b"abcde");
        let len = r.len();
        r[NAME_OFFSET..len].fill(b'x'); // no NUL
        assert!(next_dirent(&r).is_none());
        assert!(next_dirent(&[0u8; 10]).is_none());
    }
}
