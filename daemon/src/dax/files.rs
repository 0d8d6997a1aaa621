//! The host files behind live mappings: one descriptor kept per file (opened before the file is
//! watched, so the watch does not see the daemon's own mappings of it) and how the file is
//! watched for truncation ([`FileWatch`], the truncation guard's hook).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// A host file's identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl FileId {
    /// The identity of the open `file`.
    pub fn of(file: &File) -> io::Result<FileId> {
        let mut st = std::mem::MaybeUninit::<libc::stat64>::zeroed();
        // SAFETY: fstat64 writes one `struct stat64` into `st`, which is that large and aligned;
        // `file` is an open descriptor for the duration of the call.
        if unsafe { libc::fstat64(file.as_raw_fd(), st.as_mut_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstat64 succeeded, so it filled the whole structure.
        let st = unsafe { st.assume_init() };
        Ok(FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

/// How well a file is watched for truncation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarding {
    /// Truncations are announced before they take effect (fanotify pre-content events), and
    /// seen after the fact otherwise.
    Before,
    /// Truncations are only seen after they took effect (a short window in which the guest can
    /// touch a lost page).
    After,
    /// Not watched at all.
    Unguarded,
}

/// Watches the files behind live mappings for truncation (the truncation guard). The daemon
/// calls [`FileWatch::watch`] before the first chunk of a file is mapped and
/// [`FileWatch::unwatch`] after its last chunk is gone.
pub trait FileWatch: Send + Sync {
    /// Starts watching the file open as `file`.
    fn watch(&self, id: FileId, file: &File) -> Guarding;
    /// Stops watching it.
    fn unwatch(&self, id: FileId, file: &File);
}

/// Told of the guest's own truncations (FUSE SETATTR size, OPEN or CREATE with `O_TRUNC`)
/// before the daemon carries them out, so the window is safe before the size changes.
pub trait TruncationHook: Send + Sync {
    /// The guest (process `pid` in the guest) is about to truncate the file open as `file` to
    /// `new_size` bytes.
    fn before_truncate(&self, file: &File, new_size: u64, pid: u32);
}

/// A [`FileWatch`] that watches nothing (the guard is off).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoWatch;

impl FileWatch for NoWatch {
    fn watch(&self, _: FileId, _: &File) -> Guarding {
        Guarding::Unguarded
    }

    fn unwatch(&self, _: FileId, _: &File) {}
}

#[derive(Debug)]
struct Held {
    file: Arc<File>,
    writable: bool,
    chunks: usize,
    guarding: Guarding,
}

/// The files behind live mappings, with the chunks each has.
#[derive(Debug, Default)]
pub(super) struct Files {
    map: HashMap<FileId, Held>,
}

impl Files {
    /// Makes sure `id` is held (a descriptor kept, watched once) before a chunk of it is mapped
    /// through `file`; a read-write `file` replaces a read-only kept one. Returns how the file
    /// is guarded.
    pub(super) fn hold(
        &mut self,
        watch: &dyn FileWatch,
        id: FileId,
        file: &File,
        writable: bool,
    ) -> io::Result<Guarding> {
        if let Some(h) = self.map.get_mut(&id) {
            if writable && !h.writable {
                h.file = Arc::new(file.try_clone()?);
                h.writable = true;
            }
            return Ok(h.guarding);
        }
        let kept = file.try_clone()?;
        let guarding = watch.watch(id, &kept);
        self.map.insert(
            id,
            Held {
                file: Arc::new(kept),
                writable,
                chunks: 0,
                guarding,
            },
        );
        Ok(guarding)
    }

    /// One more chunk of `id` is mapped.
    pub(super) fn add_chunk(&mut self, id: FileId) {
        if let Some(h) = self.map.get_mut(&id) {
            h.chunks += 1;
        }
    }

    /// One chunk of `id` is gone; the last one takes the file out of the watch.
    pub(super) fn drop_chunk(&mut self, watch: &dyn FileWatch, id: FileId) {
        if let Some(h) = self.map.get_mut(&id) {
            h.chunks = h.chunks.saturating_sub(1);
        }
        self.release_if_unused(watch, id);
    }

    /// Lets `id` go if no chunk of it is mapped (a mapping that failed after [`Files::hold`]).
    pub(super) fn release_if_unused(&mut self, watch: &dyn FileWatch, id: FileId) {
        if self.map.get(&id).is_some_and(|h| h.chunks == 0) {
            if let Some(h) = self.map.remove(&id) {
                watch.unwatch(id, &h.file);
            }
        }
    }

    /// The kept descriptor of `id` and whether it is open for writing.
    pub(super) fn file(&self, id: FileId) -> Option<(Arc<File>, bool)> {
        self.map.get(&id).map(|h| (Arc::clone(&h.file), h.writable))
    }

    /// How `id` is guarded, if it is held.
    pub(super) fn guarding(&self, id: FileId) -> Option<Guarding> {
        self.map.get(&id).map(|h| h.guarding)
    }

    /// Lets every file go.
    pub(super) fn clear(&mut self, watch: &dyn FileWatch) {
        for (id, h) in self.map.drain() {
            watch.unwatch(id, &h.file);
        }
    }

    /// Number of files held.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
    }

    impl FileWatch for Recorder {
        fn watch(&self, id: FileId, _: &File) -> Guarding {
            self.calls.lock().unwrap().push(format!("watch {}", id.ino));
            Guarding::Before
        }
        fn unwatch(&self, id: FileId, _: &File) {
            self.calls
                .lock()
                .unwrap()
                .push(format!("unwatch {}", id.ino));
        }
    }

    fn id(ino: u64) -> FileId {
        FileId { dev: 1, ino }
    }

    #[test]
    fn a_file_is_watched_once_and_let_go_with_its_last_chunk() {
        let w = Recorder::default();
        let mut f = Files::default();
        let file = File::open("/dev/null").unwrap();
        assert_eq!(f.hold(&w, id(7), &file, false).unwrap(), Guarding::Before);
        f.add_chunk(id(7));
        f.hold(&w, id(7), &file, false).unwrap();
        f.add_chunk(id(7));
        assert_eq!(*w.calls.lock().unwrap(), ["watch 7"]);
        f.drop_chunk(&w, id(7));
        assert_eq!(f.len(), 1);
        f.drop_chunk(&w, id(7));
        assert_eq!(f.len(), 0);
        assert_eq!(*w.calls.lock().unwrap(), ["watch 7", "unwatch 7"]);
    }

    #[test]
    fn a_writable_descriptor_replaces_a_read_only_one() {
        let w = NoWatch;
        let mut f = Files::default();
        let ro = File::open("/dev/null").unwrap();
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        assert_eq!(f.hold(&w, id(1), &ro, false).unwrap(), Guarding::Unguarded);
        assert!(!f.file(id(1)).unwrap().1);
        f.hold(&w, id(1), &rw, true).unwrap();
        assert!(f.file(id(1)).unwrap().1);
        f.hold(&w, id(1), &ro, false).unwrap();
        assert!(f.file(id(1)).unwrap().1, "never downgraded");
    }

    #[test]
    fn unused_files_are_let_go_and_clear_unwatches_all() {
        let w = Recorder::default();
        let mut f = Files::default();
        let file = File::open("/dev/null").unwrap();
        f.hold(&w, id(1), &file, false).unwrap();
        f.release_if_unused(&w, id(1));
        assert_eq!(f.len(), 0);
        f.hold(&w, id(2), &file, false).unwrap();
        f.add_chunk(id(2));
        f.release_if_unused(&w, id(2));
        assert_eq!(f.len(), 1, "a file with a chunk stays");
        assert_eq!(f.guarding(id(2)), Some(Guarding::Before));
        f.clear(&w);
        assert_eq!(f.len(), 0);
        assert_eq!(
            *w.calls.lock().unwrap(),
            ["watch 1", "unwatch 1", "watch 2", "unwatch 2"]
        );
    }

    #[test]
    fn file_identity_is_dev_and_inode() {
        let a = FileId::of(&File::open("/dev/null").unwrap()).unwrap();
        let b = FileId::of(&File::open("/dev/null").unwrap()).unwrap();
        assert_eq!(a, b);
        let c = FileId::of(&File::open("/").unwrap()).unwrap();
        assert_ne!(a, c);
    }
}
