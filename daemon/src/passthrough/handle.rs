//! The handle table: file and directory handles handed to the guest by OPEN, CREATE and
//! OPENDIR, each an open host descriptor.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::sys::err;
use crate::filesystem::{Handle, Inode};

/// One open handle.
#[derive(Debug)]
pub(crate) struct HandleData {
    /// The node id the handle was opened on.
    pub(crate) inode: Inode,
    /// The open file (shared with DAX mappings, which keep it alive after RELEASE).
    pub(crate) file: Arc<File>,
    /// The host open flags it was opened with.
    pub(crate) flags: i32,
    /// Serialises users of the descriptor's position (READDIR's `lseek` + `getdents64`,
    /// LSEEK).
    dir_pos: Mutex<()>,
}

impl HandleData {
    pub(crate) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Whether the handle was opened for writing.
    pub(crate) fn writable(&self) -> bool {
        self.flags & libc::O_ACCMODE != libc::O_RDONLY
    }

    /// Locks the descriptor's position.
    pub(crate) fn lock_pos(&self) -> MutexGuard<'_, ()> {
        self.dir_pos.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle → open file.
pub(crate) struct HandleTable {
    map: RwLock<HashMap<Handle, Arc<HandleData>>>,
    next: AtomicU64,
}

impl HandleTable {
    pub(crate) fn new() -> HandleTable {
        HandleTable {
            map: RwLock::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    /// Registers `file`, opened on `inode` with `flags`; returns the new handle.
    pub(crate) fn insert(&self, inode: Inode, file: File, flags: i32) -> Handle {
        let h = self.next.fetch_add(1, Ordering::Relaxed);
        let data = Arc::new(HandleData {
            inode,
            file: Arc::new(file),
            flags,
            dir_pos: Mutex::new(()),
        });
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(h, data);
        h
    }

    /// The handle `h` (any node id); `EBADF` when unknown.
    pub(crate) fn get_any(&self, h: Handle) -> io::Result<Arc<HandleData>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&h)
            .cloned()
            .ok_or_else(|| err(libc::EBADF))
    }

    /// The handle `h`, which must have been opened on `inode`; `EBADF` otherwise.
    pub(crate) fn get(&self, h: Handle, inode: Inode) -> io::Result<Arc<HandleData>> {
        let d = self.get_any(h)?;
        if d.inode != inode {
            return Err(err(libc::EBADF));
        }
        Ok(d)
    }

    /// Removes the handle `h` opened on `inode`; `EBADF` when there is no such handle.
    pub(crate) fn remove(&self, h: Handle, inode: Inode) -> io::Result<Arc<HandleData>> {
        let mut m = self.map.write().unwrap_or_else(|e| e.into_inner());
        match m.get(&h) {
            Some(d) if d.inode == inode => m.remove(&h).ok_or_else(|| err(libc::EBADF)),
            _ => Err(err(libc::EBADF)),
        }
    }

    /// Drops every handle.
    pub(crate) fn clear(&self) {
        self.map.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// How many handles are open.
    pub(crate) fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove() {
        let t = HandleTable::new();
        let f = File::open("/proc/self/status").expect("open");
        let h = t.insert(7, f, libc::O_RDONLY);
        assert!(t.get(h, 7).is_ok());
        assert!(!t.get(h, 7).expect("get").writable());
        assert_eq!(t.get(h, 8).unwrap_err().raw_os_error(), Some(libc::EBADF));
        assert_eq!(
            t.get(h + 1, 7).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
        assert!(t.remove(h, 8).is_err());
        assert!(t.remove(h, 7).is_ok());
        assert!(t.remove(h, 7).is_err());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn handles_are_distinct_and_nonzero() {
        let t = HandleTable::new();
        let a = t.insert(
            1,
            File::open("/proc/self/status").expect("open"),
            libc::O_RDWR,
        );
        let b = t.insert(1, File::open("/proc/self/status").expect("open"), 0);
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert!(t.get(a, 1).expect("a").writable());
        t.clear();
        assert_eq!(t.len(), 0);
    }
}
