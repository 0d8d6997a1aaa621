//! A fake filesystem and mapper for the server's tests: they record their calls, serve one
//! file and a directory of 1000 entries, and count lookups.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use vfsdax_protocol::fuse::{flags, RemoveMappingOne};
use vmm_sys_util::tempfile::TempFile;

use crate::dax::Mapper;
use crate::filesystem::{
    Context, DirEntry, Entry, FileSystem, Handle, Inode, XattrReply, ZeroCopyReader, ZeroCopyWriter,
};

/// A filesystem that records calls and serves one file and a big directory.
pub struct Fake {
    calls: Mutex<Vec<String>>,
    /// Lookups handed out minus lookups forgotten or undone.
    pub lookups: AtomicI64,
    /// The one file (100,000 bytes, byte i = i mod 256).
    pub file: File,
    xattr: Vec<u8>,
}

impl Fake {
    pub fn new() -> Self {
        let mut file = TempFile::new().unwrap().into_file();
        file.write_all(&(0..100_000u32).map(|i| i as u8).collect::<Vec<_>>())
            .unwrap();
        Fake {
            calls: Mutex::new(Vec::new()),
            lookups: AtomicI64::new(0),
            file,
            xattr: b"value".to_vec(),
        }
    }
    fn log(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }
    /// The calls so far, one line each.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn entry(&self, inode: Inode) -> Entry {
        // SAFETY: stat64 is plain old data; all-zero bytes are a valid value.
        let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
        attr.st_ino = inode + 1000;
        attr.st_mode = libc::S_IFREG | 0o644;
        Entry {
            inode,
            generation: 0,
            attr,
            attr_flags: 0,
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(2),
        }
    }
}

impl FileSystem for Fake {
    fn init(&self, capable: u64, _: &dyn Mapper) -> io::Result<u64> {
        self.log(format!("init {capable:#x}"));
        Ok(capable)
    }
    fn destroy(&self, _: &dyn Mapper) {
        self.log("destroy".into());
    }
    fn lookup(&self, _: Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        self.log(format!("lookup {parent} {}", name.to_string_lossy()));
        if name.to_bytes() == b"missing" {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        if name.to_bytes() == b"panic" {
            panic!("the fake filesystem panics on LOOKUP of \"panic\"");
        }
        self.lookups.fetch_add(1, Ordering::SeqCst);
        Ok(self.entry(42))
    }
    fn forget(&self, _: Context, inode: Inode, count: u64, _: &dyn Mapper) {
        self.log(format!("forget {inode} {count}"));
        self.lookups.fetch_sub(count as i64, Ordering::SeqCst);
    }
    fn read(
        &self,
        _: Context,
        _: Inode,
        _: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
    ) -> io::Result<usize> {
        self.log(format!("read {size} {offset}"));
        w.write_from(&self.file, size as usize, offset)
    }
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        _: Context,
        _: Inode,
        _: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _: bool,
    ) -> io::Result<usize> {
        self.log(format!("write {size} {offset}"));
        r.read_to(&self.file, size as usize, offset)
    }
    fn readdir(
        &self,
        _: Context,
        _: Inode,
        _: Handle,
        size: u32,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(DirEntry<'_>, Option<Entry>) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.log(format!("readdir {size} {offset} {plus}"));
        for i in offset..1000 {
            let name = format!("entry-{i}");
            let entry = plus.then(|| {
                self.lookups.fetch_add(1, Ordering::SeqCst);
                self.entry(100 + i)
            });
            let d = DirEntry {
                ino: i,
                offset: i + 1,
                typ: libc::DT_REG as u32,
                name: name.as_bytes(),
            };
            if add(d, entry)? == 0 {
                if plus {
                    self.lookups.fetch_sub(1, Ordering::SeqCst);
                }
                break;
            }
        }
        Ok(())
    }
    fn getxattr(&self, _: Context, _: Inode, name: &CStr, size: u32) -> io::Result<XattrReply> {
        self.log(format!("getxattr {} {size}", name.to_string_lossy()));
        Ok(XattrReply::Value(self.xattr.clone()))
    }
    fn setxattr(
        &self,
        _: Context,
        _: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
        sflags: u32,
    ) -> io::Result<()> {
        self.log(format!(
            "setxattr {} {} {flags} {sflags}",
            name.to_string_lossy(),
            String::from_utf8_lossy(value)
        ));
        Ok(())
    }
    #[allow(clippy::too_many_arguments)]
    fn setup_mapping(
        &self,
        _: Context,
        inode: Inode,
        handle: Handle,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        mapper: &dyn Mapper,
    ) -> io::Result<()> {
        self.log(format!(
            "setupmapping {inode} {handle} {foffset} {len} {flags} {moffset}"
        ));
        mapper.map(
            moffset,
            len,
            &self.file,
            foffset,
            flags & flags::SETUPMAPPING_FLAG_WRITE != 0,
        )
    }
    fn remove_mapping(
        &self,
        _: Context,
        requests: &[RemoveMappingOne],
        mapper: &dyn Mapper,
    ) -> io::Result<()> {
        self.log(format!("removemapping {}", requests.len()));
        for r in requests {
            mapper.unmap(r.moffset, r.len)?;
        }
        Ok(())
    }
}

/// A mapper recording what it was asked.
#[derive(Default)]
pub struct RecordingMapper {
    /// `(window_offset, len)` of each map and unmap.
    pub calls: Mutex<Vec<(u64, u64)>>,
}

impl Mapper for RecordingMapper {
    fn map(&self, window_offset: u64, len: u64, _: &File, _: u64, _: bool) -> io::Result<()> {
        self.calls.lock().unwrap().push((window_offset, len));
        Ok(())
    }
    fn unmap(&self, window_offset: u64, len: u64) -> io::Result<()> {
        self.calls.lock().unwrap().push((window_offset, len));
        Ok(())
    }
}
