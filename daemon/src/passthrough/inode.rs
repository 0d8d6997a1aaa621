//! The inode table: node ids handed to the guest, each backed by an `O_PATH` descriptor and
//! counted by lookups.
//!
//! Two names of one host file (hard links, or the same directory reached twice) share a node
//! id: entries are keyed by (device, inode number, mount id). Node ids come from our own
//! counter and are never reused, so the generation is always 0.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use vfsdax_protocol::fuse::ROOT_ID;

use super::sys::{err, Stat};
use crate::filesystem::Inode;

/// Identity of a host file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct InodeKey {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    /// Mount id from `statx`, or 0 when the kernel does not report one.
    pub(crate) mnt_id: u64,
}

impl InodeKey {
    pub(crate) fn of(s: &Stat) -> InodeKey {
        InodeKey {
            dev: s.st.st_dev,
            ino: s.st.st_ino,
            mnt_id: s.mnt_id,
        }
    }
}

/// One node id's host file.
#[derive(Debug)]
pub(crate) struct InodeData {
    pub(crate) id: Inode,
    /// An `O_PATH | O_NOFOLLOW` descriptor of the file itself (a symlink stays a symlink).
    pub(crate) file: File,
    pub(crate) key: InodeKey,
    /// `S_IFMT` bits: the type never changes for one (dev, ino).
    pub(crate) file_type: u32,
    /// Lookups the guest has not forgotten yet. Only changed under the table's write lock.
    refcount: AtomicU64,
}

impl InodeData {
    pub(crate) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub(crate) fn is_dir(&self) -> bool {
        self.file_type == libc::S_IFDIR
    }

    pub(crate) fn is_reg(&self) -> bool {
        self.file_type == libc::S_IFREG
    }

    pub(crate) fn is_symlink(&self) -> bool {
        self.file_type == libc::S_IFLNK
    }

    #[cfg(test)]
    pub(crate) fn refcount(&self) -> u64 {
        self.refcount.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct Maps {
    by_id: HashMap<Inode, Arc<InodeData>>,
    by_key: HashMap<InodeKey, Inode>,
}

/// Node id → host file, with lookup counts.
pub(crate) struct InodeTable {
    maps: RwLock<Maps>,
    next_id: AtomicU64,
    root: Arc<InodeData>,
}

impl InodeTable {
    /// A table holding only the share root as [`ROOT_ID`].
    pub(crate) fn new(root: File, root_stat: &Stat) -> InodeTable {
        let key = InodeKey::of(root_stat);
        let root = Arc::new(InodeData {
            id: ROOT_ID,
            file: root,
            key,
            file_type: libc::S_IFDIR,
            refcount: AtomicU64::new(1),
        });
        let mut maps = Maps::default();
        maps.by_key.insert(key, ROOT_ID);
        maps.by_id.insert(ROOT_ID, Arc::clone(&root));
        InodeTable {
            maps: RwLock::new(maps),
            next_id: AtomicU64::new(ROOT_ID + 1),
            root,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        // A panic while holding the lock leaves consistent maps (every update is one insert
        // or remove), so a poisoned lock is still usable.
        self.maps.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The data of node id `id`; `EBADF` for an id the guest does not hold.
    pub(crate) fn get(&self, id: Inode) -> io::Result<Arc<InodeData>> {
        self.read()
            .by_id
            .get(&id)
            .cloned()
            .ok_or_else(|| err(libc::EBADF))
    }

    /// The share root.
    pub(crate) fn root(&self) -> &Arc<InodeData> {
        &self.root
    }

    /// Counts one more lookup of the file `file` (an `O_PATH` descriptor) with attributes
    /// `stat`: an existing node id for the same key, or a new one. The descriptor is dropped
    /// when the file already had a node id.
    pub(crate) fn lookup_or_insert(&self, file: File, stat: &Stat) -> Arc<InodeData> {
        let key = InodeKey::of(stat);
        let mut m = self.write();
        if let Some(id) = m.by_key.get(&key).copied() {
            if let Some(data) = m.by_id.get(&id) {
                data.refcount.fetch_add(1, Ordering::Relaxed);
                return Arc::clone(data);
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let data = Arc::new(InodeData {
            id,
            file,
            key,
            file_type: stat.st.st_mode & libc::S_IFMT,
            refcount: AtomicU64::new(1),
        });
        m.by_key.insert(key, id);
        m.by_id.insert(id, Arc::clone(&data));
        data
    }

    /// Counts one more lookup of an id the guest already holds (`.`, `..` at the root).
    pub(crate) fn add_ref(&self, data: &InodeData) {
        let _m = self.write();
        data.refcount.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops `count` lookups of `id`; the entry (and its descriptor, once no request uses it)
    /// goes away at zero. The root is never dropped; unknown ids are ignored.
    pub(crate) fn forget(&self, id: Inode, count: u64) {
        let mut m = self.write();
        let Some(data) = m.by_id.get(&id) else {
            return;
        };
        let old = data.refcount.load(Ordering::Relaxed);
        let new = old.saturating_sub(count);
        data.refcount.store(new, Ordering::Relaxed);
        if new == 0 && id != ROOT_ID {
            let key = data.key;
            m.by_id.remove(&id);
            if m.by_key.get(&key) == Some(&id) {
                m.by_key.remove(&key);
            }
        }
    }

    /// Drops every entry but the root, whose count is reset to 1.
    pub(crate) fn clear(&self) {
        let mut m = self.write();
        m.by_id.retain(|&id, _| id == ROOT_ID);
        m.by_key.retain(|_, id| *id == ROOT_ID);
        self.root.refcount.store(1, Ordering::Relaxed);
    }

    /// How many node ids exist (the root included).
    pub(crate) fn len(&self) -> usize {
        self.read().by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passthrough::sys;

    fn opath(path: &str) -> (File, Stat) {
        let c = std::ffi::CString::new(path).expect("path");
        let f = sys::openat(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_NOFOLLOW, 0).expect("open");
        let s = sys::stat_fd(f.as_raw_fd()).expect("stat");
        (f, s)
    }

    #[test]
    fn same_file_shares_an_id_and_counts() {
        let (root, rs) = opath("/");
        let t = InodeTable::new(root, &rs);
        let (f1, s1) = opath("/proc/self/status");
        let a = t.lookup_or_insert(f1, &s1);
        assert_ne!(a.id, ROOT_ID);
        let (f2, s2) = opath("/proc/self/status");
        let b = t.lookup_or_insert(f2, &s2);
        assert_eq!(a.id, b.id);
        assert_eq!(a.refcount(), 2);
        assert_eq!(t.len(), 2);
        t.forget(a.id, 1);
        assert!(t.get(a.id).is_ok());
        t.forget(a.id, 1);
        assert_eq!(t.get(a.id).unwrap_err().raw_os_error(), Some(libc::EBADF));
        assert_eq!(t.len(), 1);
        // A new lookup gets a fresh id: ids are never reused.
        let (f3, s3) = opath("/proc/self/status");
        let c = t.lookup_or_insert(f3, &s3);
        assert!(c.id > a.id);
    }

    #[test]
    fn root_survives_forget_and_clear() {
        let (root, rs) = opath("/");
        let t = InodeTable::new(root, &rs);
        t.forget(ROOT_ID, 100);
        assert!(t.get(ROOT_ID).is_ok());
        let (f, s) = opath("/proc");
        let d = t.lookup_or_insert(f, &s);
        t.clear();
        assert!(t.get(d.id).is_err());
        assert_eq!(t.root().refcount(), 1);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn over_forget_and_unknown_ids_are_harmless() {
        let (root, rs) = opath("/");
        let t = InodeTable::new(root, &rs);
        let (f, s) = opath("/proc");
        let d = t.lookup_or_insert(f, &s);
        t.forget(d.id, u64::MAX);
        t.forget(d.id, 1);
        t.forget(12345, 1);
        assert_eq!(t.len(), 1);
    }
}
