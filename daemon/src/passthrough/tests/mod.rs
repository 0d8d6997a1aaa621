//! Tests of the passthrough filesystem against a temporary directory on the host, calling
//! the [`FileSystem`] methods directly.

mod attr;
mod dir;
mod entries;
mod escape;
mod io;

use std::ffi::CString;
use std::fs::File;
use std::io::Result;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vfsdax_protocol::fuse::ROOT_ID;

use super::{PassthroughConfig, PassthroughFs};
pub(super) use crate::dax::NoMapper;
use crate::filesystem::{
    Context, Entry, FileSystem, Handle, Inode, ZeroCopyReader, ZeroCopyWriter,
};

/// A directory under the system temp dir, removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new() -> TempDir {
        let mut tmpl = std::env::temp_dir()
            .join("vfsdax-pt-XXXXXX")
            .into_os_string()
            .into_encoded_bytes();
        tmpl.push(0);
        // SAFETY: `tmpl` is a writable NUL-terminated buffer that mkdtemp fills in place.
        let p = unsafe { libc::mkdtemp(tmpl.as_mut_ptr().cast()) };
        assert!(!p.is_null(), "mkdtemp: {}", std::io::Error::last_os_error());
        tmpl.pop();
        // SAFETY: the bytes came from an OsString plus mkdtemp's ASCII suffix.
        let path = PathBuf::from(unsafe { std::ffi::OsString::from_encoded_bytes_unchecked(tmpl) });
        TempDir(path)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }

    pub(super) fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A share in a fresh temp dir (kept alive with the fs).
pub(super) struct Share {
    pub(super) dir: TempDir,
    pub(super) fs: PassthroughFs,
}

pub(super) fn share_with(f: impl FnOnce(&mut PassthroughConfig)) -> Share {
    // As vfsdaxd does once its socket is bound: the guest's mode and umask decide alone.
    // SAFETY: umask only changes the process's file mode creation mask.
    unsafe { libc::umask(0) };
    let dir = TempDir::new();
    let mut cfg = PassthroughConfig::new(dir.path());
    f(&mut cfg);
    let fs = PassthroughFs::new(cfg).expect("passthrough fs");
    fs.init(u64::MAX, &NoMapper).expect("init");
    Share { dir, fs }
}

pub(super) fn share() -> Share {
    share_with(|_| {})
}

pub(super) fn ctx() -> Context {
    Context::default()
}

pub(super) fn cs(s: &str) -> CString {
    CString::new(s).expect("name")
}

pub(super) fn errno<T>(r: Result<T>) -> i32 {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.raw_os_error().expect("an OS error"),
    }
}

impl Share {
    pub(super) fn lookup(&self, parent: Inode, name: &str) -> Result<Entry> {
        self.fs.lookup(ctx(), parent, &cs(name))
    }

    pub(super) fn lookup_root(&self, name: &str) -> Result<Entry> {
        self.lookup(ROOT_ID, name)
    }

    /// Opens `ino` with open(2) `flags`; returns the handle.
    pub(super) fn open(&self, ino: Inode, flags: i32) -> Result<Handle> {
        let (h, _) = self.fs.open(ctx(), ino, flags as u32, false)?;
        Ok(h.expect("a handle"))
    }

    /// Creates `name` in the root (mode 0644) and opens it read-write.
    pub(super) fn create(&self, name: &str) -> (Entry, Handle) {
        let (e, h, _) = self
            .fs
            .create(
                ctx(),
                ROOT_ID,
                &cs(name),
                libc::S_IFREG | 0o644,
                libc::O_RDWR as u32,
                0,
                false,
            )
            .expect("create");
        (e, h.expect("a handle"))
    }

    pub(super) fn write(&self, ino: Inode, h: Handle, data: &[u8], off: u64) -> Result<usize> {
        let mut r = VecReader(data.to_vec(), 0);
        self.fs
            .write(ctx(), ino, h, &mut r, data.len() as u32, off, false)
    }

    pub(super) fn read(&self, ino: Inode, h: Handle, size: u32, off: u64) -> Result<Vec<u8>> {
        let mut w = VecWriter(Vec::new());
        self.fs.read(ctx(), ino, h, &mut w, size, off)?;
        Ok(w.0)
    }
}

/// READ destination: appends what it reads from the file.
pub(super) struct VecWriter(pub(super) Vec<u8>);

impl ZeroCopyWriter for VecWriter {
    fn write_from(&mut self, file: &File, count: usize, offset: u64) -> Result<usize> {
        let mut buf = vec![0u8; count];
        let n = file.read_at(&mut buf, offset)?;
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// WRITE source: the bytes of a Vec, consumed from a cursor.
pub(super) struct VecReader(pub(super) Vec<u8>, pub(super) usize);

impl ZeroCopyReader for VecReader {
    fn read_to(&mut self, file: &File, count: usize, offset: u64) -> Result<usize> {
        let end = (self.1 + count).min(self.0.len());
        let n = file.write_at(&self.0[self.1..end], offset)?;
        self.1 += n;
        Ok(n)
    }
}
