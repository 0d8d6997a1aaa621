//! The live mapping table of a DAX window: which file range is mapped at which window offset.
//!
//! The request thread inserts and removes entries while vCPU threads look up the entry for a
//! faulting guest-physical address. Entries never overlap: inserting over existing entries cuts the
//! overlapped parts out of them (splitting an entry in two when the new one lies inside it), which
//! is exactly what a `MAP_FIXED` mmap does to the host mappings.
//!
//! Readers take a short read lock on a `BTreeMap` keyed by window offset; every operation is
//! `O(log n + k)` where `k` is the number of entries touched.
//!
//! Removed ranges are remembered (at most [`MAX_UNMAPPED`] of them, with their file) until
//! something is mapped there again: a guest access to a range the backend unmapped under it
//! (the daemon's truncation guard unmaps the part of a mapping past a file's new end before the
//! truncation) can then still be blamed on that file ([`MappingTable::lookup_unmapped`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The identity of a host file: its device and inode numbers (as from `fstat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// Device number (`st_dev`).
    pub dev: u64,
    /// Inode number (`st_ino`).
    pub ino: u64,
}

/// One mapped range of a DAX window.
#[derive(Clone, Debug)]
pub struct Mapping {
    /// Offset of the first byte inside the window (guest-physical address minus window base).
    pub window_offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset in the file of the byte mapped at `window_offset`.
    pub file_offset: u64,
    /// Our own duplicate of the file descriptor the backend sent.
    pub file: Arc<File>,
    /// Device and inode of `file`.
    pub identity: FileIdentity,
    /// Whether the range is mapped writable.
    pub writable: bool,
    /// Which host mapping this is ([`next_map_id`] at its map request; the pieces split from it
    /// keep it): mappings of one file share its descriptor, so this tells them apart.
    pub map_id: u64,
    /// The largest size the glue saw the file have while this range was mapped (at the map
    /// request, then at every `fstat` of it, [`Mapping::saw_size`]): the pages between the file's
    /// size now and this were lost under the mapping; pages past it never were in the file.
    pub size_seen: Arc<std::sync::atomic::AtomicU64>,
}

/// A number no mapping has had before in this process.
pub fn next_map_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Mapping {
    /// One past the last window offset of the range (saturating at `u64::MAX`).
    pub fn end(&self) -> u64 {
        self.window_offset.saturating_add(self.len)
    }

    /// Records that the file was `size` bytes long (keeps the largest).
    pub fn saw_size(&self, size: u64) {
        self.size_seen
            .fetch_max(size, std::sync::atomic::Ordering::Relaxed);
    }

    /// The file's size now (`fstat`), recorded with [`Mapping::saw_size`].
    pub fn file_size(&self) -> std::io::Result<u64> {
        let size = self.file.metadata()?.len();
        self.saw_size(size);
        Ok(size)
    }

    /// Whether `window_offset` lies inside the range.
    pub fn contains(&self, window_offset: u64) -> bool {
        window_offset >= self.window_offset && window_offset < self.end()
    }

    /// The part of this mapping covering `[start, end)`, which must lie inside it and be non-empty.
    fn slice(&self, start: u64, end: u64) -> Mapping {
        debug_assert!(start >= self.window_offset && end <= self.end() && start < end);
        Mapping {
            window_offset: start,
            len: end - start,
            file_offset: self.file_offset.saturating_add(start - self.window_offset),
            file: Arc::clone(&self.file),
            identity: self.identity,
            writable: self.writable,
            map_id: self.map_id,
            size_seen: Arc::clone(&self.size_seen),
        }
    }
}

/// The set of live mappings of one DAX window, safe to share between the request thread and vCPU
/// threads.
#[derive(Debug, Default)]
pub struct MappingTable {
    entries: RwLock<BTreeMap<u64, Mapping>>,
    unmapped: RwLock<BTreeMap<u64, Mapping>>,
}

/// How many removed ranges the table remembers (each holds its file open).
pub const MAX_UNMAPPED: usize = 256;

impl MappingTable {
    /// Creates an empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<u64, Mapping>> {
        // A panic while holding the lock cannot leave the map half-updated in a way that breaks
        // its invariants (every update is a sequence of complete BTreeMap operations), so a
        // poisoned lock is still usable.
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, Mapping>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts `m`; any overlapped part of existing mappings is cut out (split) and returned, in
    /// window order. A zero-length mapping is not inserted and removes nothing.
    pub fn insert(&self, m: Mapping) -> Vec<Mapping> {
        if m.len == 0 {
            return Vec::new();
        }
        carve(&mut self.write_unmapped(), m.window_offset, m.end());
        let mut entries = self.write();
        let removed = carve(&mut entries, m.window_offset, m.end());
        entries.insert(m.window_offset, m);
        removed
    }

    /// Removes `[window_offset, window_offset + len)`; partial overlaps are split. Returns the
    /// removed parts in window order (empty if the range was a hole); they are remembered as
    /// unmapped.
    pub fn remove(&self, window_offset: u64, len: u64) -> Vec<Mapping> {
        if len == 0 {
            return Vec::new();
        }
        let end = window_offset.saturating_add(len);
        let removed = carve(&mut self.write(), window_offset, end);
        let mut unmapped = self.write_unmapped();
        carve(&mut unmapped, window_offset, end);
        for m in &removed {
            unmapped.insert(m.window_offset, m.clone());
        }
        while unmapped.len() > MAX_UNMAPPED {
            unmapped.pop_first();
        }
        removed
    }

    fn write_unmapped(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, Mapping>> {
        self.unmapped.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The removed mapping that covered `window_offset`, if it is remembered and nothing was
    /// mapped there since.
    pub fn lookup_unmapped(&self, window_offset: u64) -> Option<Mapping> {
        let unmapped = self.unmapped.read().unwrap_or_else(|e| e.into_inner());
        unmapped
            .range(..=window_offset)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| m.contains(window_offset))
            .cloned()
    }

    /// Forgets every remembered removed range (closing their files).
    pub fn forget_unmapped(&self) {
        self.write_unmapped().clear();
    }

    /// Number of remembered removed ranges.
    pub fn unmapped_len(&self) -> usize {
        self.unmapped
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// How many distinct file descriptors the live and remembered ranges hold.
    pub fn distinct_files(&self) -> usize {
        let unmapped = self.unmapped.read().unwrap_or_else(|e| e.into_inner());
        let entries = self.read();
        let files: std::collections::HashSet<*const File> = entries
            .values()
            .chain(unmapped.values())
            .map(|m| Arc::as_ptr(&m.file))
            .collect();
        files.len()
    }

    /// The mapping containing `window_offset`, if any.
    pub fn lookup(&self, window_offset: u64) -> Option<Mapping> {
        let entries = self.read();
        entries
            .range(..=window_offset)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| m.contains(window_offset))
            .cloned()
    }

    /// The mappings of the file `identity`, in window order (a scan of the table: the table
    /// is keyed by window offset).
    pub fn mappings_of(&self, identity: FileIdentity) -> Vec<Mapping> {
        self.read()
            .values()
            .filter(|m| m.identity == identity)
            .cloned()
            .collect()
    }

    /// All mappings, in window order.
    pub fn snapshot(&self) -> Vec<Mapping> {
        self.read().values().cloned().collect()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

/// Cuts `[start, end)` out of the non-overlapping entries of `entries`, keeping the parts outside
/// the range, and returns the parts inside it in window order.
fn carve(entries: &mut BTreeMap<u64, Mapping>, start: u64, end: u64) -> Vec<Mapping> {
    if start >= end {
        return Vec::new();
    }
    // Keys of overlapping entries: possibly the one starting before `start`, then all starting
    // inside the range.
    let mut keys: Vec<u64> = Vec::new();
    if let Some((&k, m)) = entries.range(..start).next_back() {
        if m.end() > start {
            keys.push(k);
        }
    }
    keys.extend(entries.range(start..end).map(|(&k, _)| k));

    let mut removed = Vec::with_capacity(keys.len());
    for k in keys {
        let Some(m) = entries.remove(&k) else {
            continue;
        };
        let m_end = m.end();
        let cut_start = m.window_offset.max(start);
        let cut_end = m_end.min(end);
        if m.window_offset < cut_start {
            entries.insert(m.window_offset, m.slice(m.window_offset, cut_start));
        }
        if cut_end < m_end {
            entries.insert(cut_end, m.slice(cut_end, m_end));
        }
        removed.push(m.slice(cut_start, cut_end));
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<File> {
        Arc::new(File::open("/dev/null").expect("open /dev/null"))
    }

    fn mapping(f: &Arc<File>, window_offset: u64, len: u64, file_offset: u64) -> Mapping {
        Mapping {
            window_offset,
            len,
            file_offset,
            file: Arc::clone(f),
            identity: FileIdentity { dev: 1, ino: 7 },
            writable: false,
            map_id: next_map_id(),
            size_seen: Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)),
        }
    }

    /// (window_offset, len, file_offset) triples, for compact assertions.
    fn shape(ms: &[Mapping]) -> Vec<(u64, u64, u64)> {
        ms.iter()
            .map(|m| (m.window_offset, m.len, m.file_offset))
            .collect()
    }

    #[test]
    fn mapping_end_and_contains() {
        let f = file();
        let m = mapping(&f, 0x1000, 0x2000, 0);
        assert_eq!(m.end(), 0x3000);
        assert!(!m.contains(0xfff));
        assert!(m.contains(0x1000));
        assert!(m.contains(0x2fff));
        assert!(!m.contains(0x3000));
        let huge = mapping(&f, u64::MAX - 1, 10, 0);
        assert_eq!(huge.end(), u64::MAX);
    }

    #[test]
    fn insert_and_lookup() {
        let t = MappingTable::new();
        assert!(t.is_empty());
        let f = file();
        assert!(t.insert(mapping(&f, 0x2000, 0x1000, 0x10000)).is_empty());
        assert!(t.insert(mapping(&f, 0x5000, 0x2000, 0)).is_empty());
        assert_eq!(t.len(), 2);
        assert!(t.lookup(0x1fff).is_none());
        let m = t.lookup(0x2abc).expect("mapped");
        assert_eq!(
            (m.window_offset, m.len, m.file_offset),
            (0x2000, 0x1000, 0x10000)
        );
        assert!(t.lookup(0x3000).is_none());
        assert_eq!(t.lookup(0x6fff).expect("mapped").window_offset, 0x5000);
        assert!(t.lookup(0x7000).is_none());
        assert_eq!(
            shape(&t.snapshot()),
            vec![(0x2000, 0x1000, 0x10000), (0x5000, 0x2000, 0)]
        );
    }

    #[test]
    fn zero_length_is_ignored() {
        let t = MappingTable::new();
        let f = file();
        t.insert(mapping(&f, 0, 0x1000, 0));
        assert!(t.insert(mapping(&f, 0x800, 0, 0)).is_empty());
        assert!(t.remove(0x800, 0).is_empty());
        assert_eq!(shape(&t.snapshot()), vec![(0, 0x1000, 0)]);
    }

    #[test]
    fn insert_inside_splits_in_two() {
        let t = MappingTable::new();
        let f = file();
        t.insert(mapping(&f, 0, 0x10000, 0x100000));
        let cut = t.insert(mapping(&f, 0x4000, 0x2000, 0x5_0000));
        assert_eq!(shape(&cut), vec![(0x4000, 0x2000, 0x104000)]);
        assert_eq!(
            shape(&t.snapshot()),
            vec![
                (0, 0x4000, 0x100000),
                (0x4000, 0x2000, 0x50000),
                (0x6000, 0xa000, 0x106000)
            ]
        );
    }

    #[test]
    fn insert_across_several_entries() {
        let t = MappingTable::new();
        let f = file();
        t.insert(mapping(&f, 0, 0x3000, 0));
        t.insert(mapping(&f, 0x3000, 0x1000, 0x10000));
        t.insert(mapping(&f, 0x5000, 0x3000, 0x20000));
        // Covers the tail of the first, all of the second, the hole and the head of the third.
        let cut = t.insert(mapping(&f, 0x2000, 0x4000, 0x90000));
        assert_eq!(
            shape(&cut),
            vec![
                (0x2000, 0x1000, 0x2000),
                (0x3000, 0x1000, 0x10000),
                (0x5000, 0x1000, 0x20000)
            ]
        );
        assert_eq!(
            shape(&t.snapshot()),
            vec![
                (0, 0x2000, 0),
                (0x2000, 0x4000, 0x90000),
                (0x6000, 0x2000, 0x21000)
            ]
        );
    }

    #[test]
    fn insert_same_range_replaces() {
        let t = MappingTable::new();
        let f = file();
        t.insert(mapping(&f, 0x1000, 0x1000, 0));
        let mut m = mapping(&f, 0x1000, 0x1000, 0x7000);
        m.writable = true;
        let cut = t.insert(m);
        assert_eq!(shape(&cut), vec![(0x1000, 0x1000, 0)]);
        assert!(!cut[0].writable);
        let now = t.lookup(0x1000).expect("mapped");
        assert_eq!(now.file_offset, 0x7000);
        assert!(now.writable);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn remove_splits_partial_overlaps() {
        let t = MappingTable::new();
        let f = file();
        t.insert(mapping(&f, 0, 0x4000, 0));
        t.insert(mapping(&f, 0x4000, 0x4000, 0x8000));
        let removed = t.remove(0x3000, 0x2000);
        assert_eq!(
            shape(&removed),
            vec![(0x3000, 0x1000, 0x3000), (0x4000, 0x1000, 0x8000)]
        );
        assert_eq!(
            shape(&t.snapshot()),
            vec![(0, 0x3000, 0), (0x5000, 0x3000, 0x9000)]
        );
        // Remove from the middle of one entry.
        let removed = t.remove(0x1000, 0x1000);
        assert_eq!(shape(&removed), vec![(0x1000, 0x1000, 0x1000)]);
        assert_eq!(
            shape(&t.snapshot()),
            vec![
                (0, 0x1000, 0),
                (0x2000, 0x1000, 0x2000),
                (0x5000, 0x3000, 0x9000)
            ]
        );
        assert!(t.lookup(0x1800).is_none());
    }

    #[test]
    fn removed_ranges_are_remembered_until_mapped_again() {
        const P: u64 = 0x1000;
        let f = file();
        let m = |wo, len, fo| mapping(&f, wo, len, fo);
        let t = MappingTable::new();
        t.insert(m(0, 4 * P, 0));
        t.remove(P, 2 * P);
        let u = t.lookup_unmapped(2 * P).expect("remembered");
        assert_eq!((u.window_offset, u.len, u.file_offset), (P, 2 * P, P));
        assert!(t.lookup_unmapped(0).is_none(), "still mapped");
        assert!(t.lookup(2 * P).is_none());
        // Mapping part of it again forgets that part.
        t.insert(m(2 * P, P, 0));
        assert!(t.lookup_unmapped(2 * P).is_none());
        assert_eq!(t.lookup_unmapped(P).expect("the rest").len, P);
        t.forget_unmapped();
        assert_eq!(t.unmapped_len(), 0);
    }

    #[test]
    fn at_most_so_many_removed_ranges_are_remembered() {
        const P: u64 = 0x1000;
        let f = file();
        let m = |wo, len, fo| mapping(&f, wo, len, fo);
        let t = MappingTable::new();
        for i in 0..(MAX_UNMAPPED as u64 + 10) {
            t.insert(m(i * P, P, 0));
            t.remove(i * P, P);
        }
        assert_eq!(t.unmapped_len(), MAX_UNMAPPED);
        assert!(t.lookup_unmapped(0).is_none(), "the oldest went first");
    }

    #[test]
    fn remove_of_a_hole_changes_nothing() {
        let t = MappingTable::new();
        let f = file();
        t.insert(mapping(&f, 0, 0x1000, 0));
        t.insert(mapping(&f, 0x3000, 0x1000, 0));
        assert!(t.remove(0x1000, 0x2000).is_empty());
        assert!(t.remove(0x10000, 0x1000).is_empty());
        assert_eq!(
            shape(&t.snapshot()),
            vec![(0, 0x1000, 0), (0x3000, 0x1000, 0)]
        );
    }

    #[test]
    fn remove_everything_with_an_overflowing_length() {
        let t = MappingTable::new();
        let f = file();
        t.insert(mapping(&f, 0x1000, 0x1000, 0));
        t.insert(mapping(&f, 0x8000, 0x1000, 0));
        let removed = t.remove(0x1800, u64::MAX);
        assert_eq!(
            shape(&removed),
            vec![(0x1800, 0x800, 0x800), (0x8000, 0x1000, 0)]
        );
        assert_eq!(shape(&t.snapshot()), vec![(0x1000, 0x800, 0)]);
    }

    #[test]
    fn many_entries() {
        let t = MappingTable::new();
        let f = file();
        const N: u64 = 10_000;
        const PAGE: u64 = 0x1000;
        // Every other page mapped.
        for i in 0..N {
            assert!(t
                .insert(mapping(&f, 2 * i * PAGE, PAGE, i * PAGE))
                .is_empty());
        }
        assert_eq!(t.len(), N as usize);
        for i in 0..N {
            let m = t.lookup(2 * i * PAGE + 5).expect("mapped");
            assert_eq!(m.file_offset, i * PAGE);
            assert!(t.lookup((2 * i + 1) * PAGE).is_none());
        }
        // One mapping over everything cuts all of them out.
        let cut = t.insert(mapping(&f, 0, 2 * N * PAGE, 0));
        assert_eq!(cut.len(), N as usize);
        assert_eq!(t.len(), 1);
        // The file is shared, not copied: the table holds one more reference, the test one.
        assert_eq!(Arc::strong_count(&f), 2 + cut.len());
        drop(cut);
        assert!(t.remove(0, u64::MAX).len() == 1);
        assert!(t.is_empty());
        // Remembered as unmapped until forgotten.
        assert_eq!(Arc::strong_count(&f), 2);
        t.forget_unmapped();
        assert_eq!(Arc::strong_count(&f), 1);
    }

    #[test]
    fn concurrent_readers_and_writer() {
        let t = Arc::new(MappingTable::new());
        let f = file();
        t.insert(mapping(&f, 0, 0x1000, 0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        // Page 0 is never touched by the writer.
                        assert!(t.lookup(0x10).is_some());
                    }
                })
            })
            .collect();
        for i in 1..1000u64 {
            t.insert(mapping(&f, i * 0x1000, 0x1000, 0));
            t.remove(i * 0x1000, 0x1000);
        }
        for r in readers {
            r.join().expect("reader");
        }
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn table_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<MappingTable>();
    }
}
