//! Fencing lost window ranges so KVM's own async page faults cannot loop on them.
//!
//! With async PF enabled, a user-mode guest access to a truncated DAX page does not exit to the
//! VMM: KVM starts an async fault, later sends 'page ready', the guest retries, and it starts all
//! over (the KVM loop vfsdax exists to break). The lost part of a shrunken mapping is made
//! inaccessible (`mprotect(PROT_NONE)`; the mapping table entry stays); KVM then fails the next
//! access at once and it exits like any other truncated-page access. When a file changes, the
//! shrink watcher ([`super::watch`]) calls [`Fences::fence_file`], which also lifts the fences
//! the file covers again; without a watcher, the handler scans every mapping at each apf ACK
//! (the ACK MSR is trapped) and vCPU kick ([`Fences::fence_truncated`]). A fenced range whose
//! file grew back is also unfenced when an access to it exits.
//!
//! Every fence remembers which mapping it fenced (its owner: the number the window gave that
//! `SHMEM_MAP`, [`Mapping::map_id`], plus the file-minus-window offset; mappings of one file
//! share its descriptor, so the descriptor cannot tell them apart). A range the guest unmapped or mapped again (REMOVEMAPPING, SETUPMAPPING) got fresh
//! protection from `mmap`, so before fencing or unfencing, fences are checked against the current
//! table and whatever no longer belongs to its mapping is dropped without touching it; unfencing
//! restores the protection of the current entry.
//!
//! Ranges the zero-fill policy backed with anonymous zero pages ([`Fences::zero_fill`]; the
//! table entry stays) are remembered the same way, with their mapping, and never fenced: the
//! guest owns those pages, like a hole, and its stores there must survive until the range is
//! unmapped or mapped again. Then the record no longer matches the table and is dropped, so a new
//! mapping there is fenced like any other.
//!
//! Lock order: the fences' owner (`VmFaultState`'s mutex) → the window's change lock
//! ([`DaxWindow::with_changes_held`]) → the table's lock. The window's request thread takes only
//! the latter two and never the fences, so the order cannot cycle. Protection changes and the
//! checks they rely on run under the change lock, so a mapping swapped in meanwhile is never
//! touched.

use crate::dax::{DaxWindow, FileIdentity, Mapping, MappingTable, WindowError};
use crate::fault::PAGE_SIZE;

/// Errors of fencing.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// `mprotect` failed.
    #[error("cannot change the protection of window offset {offset:#x} (+{len:#x})")]
    Protect {
        /// Window offset.
        offset: u64,
        /// Length.
        len: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The identity of one host mapping of the window: the number the window gave its map request
/// (kept by the table entries split from it, never given again) and its file offset minus window
/// offset.
#[derive(Clone, Debug)]
struct Owner {
    map_id: u64,
    delta: u64,
}

impl Owner {
    fn of(m: &Mapping) -> Self {
        Owner {
            map_id: m.map_id,
            delta: m.file_offset.wrapping_sub(m.window_offset),
        }
    }

    fn owns(&self, m: &Mapping) -> bool {
        m.map_id == self.map_id && m.file_offset.wrapping_sub(m.window_offset) == self.delta
    }
}

/// One fenced (or zero-filled) range `[start, end)` of window offsets, and the mapping it belongs
/// to.
#[derive(Clone, Debug)]
struct Fence {
    start: u64,
    end: u64,
    owner: Owner,
}

/// The fenced and the zero-filled ranges of one window.
#[derive(Debug, Default)]
pub struct Fences {
    ranges: Vec<Fence>,
    /// Lost ranges backed by anonymous zero pages, never fenced while their mapping is there.
    zero_filled: Vec<Fence>,
}

/// The page-aligned lost part `(window_offset, len)` of `m` for a file of `size` bytes, if any.
pub fn lost_part(m: &Mapping, size: u64) -> Option<(u64, u64)> {
    let first_lost = size
        .div_ceil(PAGE_SIZE)
        .saturating_mul(PAGE_SIZE)
        .max(m.file_offset);
    let skip = first_lost - m.file_offset;
    (skip < m.len).then(|| (m.window_offset + skip, m.len - skip))
}

/// The entries of `entries` (sorted by window offset, not overlapping, as from
/// `MappingTable::snapshot`) that overlap `[start, end)`.
fn overlapping(entries: &[Mapping], start: u64, end: u64) -> &[Mapping] {
    let first = entries.partition_point(|m| m.end() <= start);
    let last = entries.partition_point(|m| m.window_offset < end);
    entries.get(first..last.max(first)).unwrap_or(&[])
}

/// The parts of `[start, end)` that `owner`'s mapping still covers in `entries`, in order.
fn owned_parts(start: u64, end: u64, owner: &Owner, entries: &[Mapping]) -> Vec<(u64, u64)> {
    overlapping(entries, start, end)
        .iter()
        .filter(|m| owner.owns(m))
        .map(|m| (m.window_offset.max(start), m.end().min(end)))
        .filter(|(s, e)| s < e)
        .collect()
}

/// The parts of `ranges` that their mapping still covers in `entries`.
fn still_owned(ranges: Vec<Fence>, entries: &[Mapping]) -> Vec<Fence> {
    let mut kept = Vec::with_capacity(ranges.len());
    for f in ranges {
        for (start, end) in owned_parts(f.start, f.end, &f.owner, entries) {
            kept.push(Fence {
                start,
                end,
                owner: f.owner.clone(),
            });
        }
    }
    kept
}

/// `ranges` with `[start, end)` cut out of them (parts outside it kept).
fn cut_out(ranges: Vec<Fence>, start: u64, end: u64) -> Vec<Fence> {
    let mut kept = Vec::with_capacity(ranges.len());
    for f in ranges {
        for (s, e) in uncovered(&[(start, end)], f.start, f.end) {
            kept.push(Fence {
                start: s,
                end: e,
                owner: f.owner.clone(),
            });
        }
    }
    kept
}

/// The parts of `[start, end)` that none of `covered` covers, in order.
fn uncovered(covered: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut cuts: Vec<(u64, u64)> = covered
        .iter()
        .map(|&(s, e)| (s.max(start), e.min(end)))
        .filter(|(s, e)| s < e)
        .collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut at = start;
    for (s, e) in cuts {
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < end {
        out.push((at, end));
    }
    out
}

fn protect(host_base: u64, offset: u64, len: u64, prot: libc::c_int) -> Result<(), FenceError> {
    // SAFETY: [host_base + offset, + len) lies inside the DAX window reservation (the range comes
    // from a mapping-table entry of this window, checked against the table under the window's
    // change lock); changing its protection cannot invalidate Rust references because the glue
    // never holds references into the window, only raw addresses.
    let r = unsafe {
        libc::mprotect(
            (host_base + offset) as *mut libc::c_void,
            len as usize,
            prot,
        )
    };
    if r != 0 {
        return Err(FenceError::Protect {
            offset,
            len,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// A lost range `[start, end)` found by a [`scan`] and the mapping it was lost from.
type Lost = (u64, u64, Owner);

/// The lost part of every mapping of `window` whose file is now shorter than the mapped range
/// (fstat of each mapping's file, without the change lock).
fn scan(window: &DaxWindow) -> Vec<Lost> {
    let mut lost = Vec::new();
    for m in window.table().snapshot() {
        let Ok(size) = m.file_size() else {
            continue;
        };
        if let Some((offset, len)) = lost_part(&m, size) {
            lost.push((offset, offset + len, Owner::of(&m)));
        }
    }
    lost
}

impl Fences {
    /// Drops the parts of fenced and zero-filled ranges their mapping no longer covers in
    /// `entries` (the current table): those were unmapped or mapped again, which replaced their
    /// protection and their pages.
    fn revalidate(&mut self, entries: &[Mapping]) {
        self.ranges = still_owned(std::mem::take(&mut self.ranges), entries);
        self.zero_filled = still_owned(std::mem::take(&mut self.zero_filled), entries);
    }

    /// Fences the lost part of every mapping of `window` whose file is now shorter than the
    /// mapped range, except what [`Fences::zero_fill`] backed with zero pages for that mapping.
    /// Returns how many lost ranges were newly fenced (wholly or in part).
    pub fn fence_truncated(&mut self, window: &DaxWindow) -> Result<usize, FenceError> {
        // The fstat calls run without the change lock; what they found is checked under it.
        let lost = scan(window);
        self.fence_lost(window, lost)
    }

    /// Fences the `lost` ranges a [`scan`] found, those still belonging to the same mapping.
    fn fence_lost(&mut self, window: &DaxWindow, lost: Vec<Lost>) -> Result<usize, FenceError> {
        if lost.is_empty() {
            return Ok(0);
        }
        let host_base = window.host_addr();
        window.with_changes_held(|table| {
            let now = table.snapshot();
            self.revalidate(&now);
            self.fence_ranges(host_base, &now, lost)
        })
    }

    /// Fences the lost part of each mapping of the file `identity` in `window`, its size read
    /// under the window's change lock (so what is fenced is what the file lacks now, among the
    /// mappings there now), except what was zero-filled. The shrink watcher calls this when the
    /// file changed; it costs one `fstat` and the mappings of that file, whatever the rest of
    /// the window holds. Returns how many lost ranges were newly fenced.
    pub fn fence_file(
        &mut self,
        window: &DaxWindow,
        identity: FileIdentity,
    ) -> Result<usize, FenceError> {
        let host_base = window.host_addr();
        window.with_changes_held(|table| {
            let mine = table.mappings_of(identity);
            let Some(size) = mine.first().and_then(|m| m.file_size().ok()) else {
                return Ok(0);
            };
            for m in &mine {
                m.saw_size(size);
            }
            let lost: Vec<Lost> = mine
                .iter()
                .filter_map(|m| {
                    lost_part(m, size).map(|(offset, len)| (offset, offset + len, Owner::of(m)))
                })
                .collect();
            let now = table.snapshot();
            self.revalidate(&now);
            self.lift_grown(host_base, &mine, &lost)?;
            self.fence_ranges(host_base, &now, lost)
        })
    }

    /// Lifts the fences of `mine` (one file's mappings) that the file covers again: the parts
    /// not in `lost`. A truncation quickly followed by a re-extension may have been fenced in
    /// between; the file's next change event converges the fences on its size.
    fn lift_grown(
        &mut self,
        host_base: u64,
        mine: &[Mapping],
        lost: &[Lost],
    ) -> Result<(), FenceError> {
        let lost: Vec<(u64, u64)> = lost.iter().map(|(s, e, _)| (*s, *e)).collect();
        let mut kept = Vec::with_capacity(self.ranges.len());
        for f in std::mem::take(&mut self.ranges) {
            let Some(m) = mine
                .iter()
                .find(|m| f.owner.owns(m) && m.window_offset <= f.start && f.end <= m.end())
            else {
                kept.push(f);
                continue;
            };
            let prot = if m.writable {
                libc::PROT_READ | libc::PROT_WRITE
            } else {
                libc::PROT_READ
            };
            let back = uncovered(&lost, f.start, f.end);
            for &(s, e) in &back {
                protect(host_base, s, e - s, prot)?;
            }
            for (s, e) in uncovered(&back, f.start, f.end) {
                kept.push(Fence {
                    start: s,
                    end: e,
                    owner: f.owner.clone(),
                });
            }
        }
        self.ranges = kept;
        Ok(())
    }

    /// Fences each of `lost` that `now` (the table, under the change lock) still holds for the
    /// same mapping, but the parts already fenced or zero-filled.
    fn fence_ranges(
        &mut self,
        host_base: u64,
        now: &[Mapping],
        lost: Vec<Lost>,
    ) -> Result<usize, FenceError> {
        let mut n = 0;
        for (start, end, owner) in lost {
            if owned_parts(start, end, &owner, now) != [(start, end)] {
                // Unmapped or replaced since it was found: not this mapping's range any more.
                continue;
            }
            // Revalidated: a zero-filled range overlapping this one is this mapping's.
            let done: Vec<(u64, u64)> = self
                .ranges
                .iter()
                .chain(&self.zero_filled)
                .map(|f| (f.start, f.end))
                .collect();
            let open = uncovered(&done, start, end);
            for &(s, e) in &open {
                protect(host_base, s, e - s, libc::PROT_NONE)?;
                self.ranges.push(Fence {
                    start: s,
                    end: e,
                    owner: owner.clone(),
                });
            }
            n += usize::from(!open.is_empty());
        }
        Ok(n)
    }

    /// Whether `window_offset` lies in a range recorded as fenced (a range since unmapped or
    /// mapped again stays recorded until the next fence or unfence drops it).
    pub fn is_fenced(&self, window_offset: u64) -> bool {
        self.ranges
            .iter()
            .any(|f| window_offset >= f.start && window_offset < f.end)
    }

    /// Restores the protection of the fenced range containing `window_offset` to that of the
    /// mapping now there, for the part the file covers now (its size read here, under the fence
    /// and change locks: a caller's earlier look at the size may predate a truncation the
    /// watcher fenced since; a truncation after this read reaches the watcher, which fences
    /// again once these locks are released). Returns whether a fence of the current mapping was
    /// lifted (wholly or in part); fences of earlier mappings are dropped without touching the
    /// range.
    pub fn unfence(&mut self, window: &DaxWindow, window_offset: u64) -> Result<bool, FenceError> {
        if !self.is_fenced(window_offset) {
            return Ok(false);
        }
        let host_base = window.host_addr();
        window.with_changes_held(|table| {
            let now = table.snapshot();
            self.revalidate(&now);
            let Some(i) = self
                .ranges
                .iter()
                .position(|f| window_offset >= f.start && window_offset < f.end)
            else {
                return Ok(false);
            };
            let f = self.ranges.swap_remove(i);
            // Revalidated: the current entry at f.start belongs to f's mapping.
            let Some(m) = overlapping(&now, f.start, f.start + 1).first() else {
                return Ok(false);
            };
            let lost: Vec<(u64, u64)> = match m.file_size() {
                Ok(size) => lost_part(m, size)
                    .map(|(s, len)| (s, s + len))
                    .into_iter()
                    .collect(),
                // Cannot tell: keep the whole fence.
                Err(_) => vec![(f.start, f.end)],
            };
            let prot = if m.writable {
                libc::PROT_READ | libc::PROT_WRITE
            } else {
                libc::PROT_READ
            };
            let back = uncovered(&lost, f.start, f.end);
            for &(s, e) in &back {
                protect(host_base, s, e - s, prot)?;
            }
            for (s, e) in uncovered(&back, f.start, f.end) {
                self.ranges.push(Fence {
                    start: s,
                    end: e,
                    owner: f.owner.clone(),
                });
            }
            Ok(!back.is_empty())
        })
    }

    /// Forgets fenced ranges inside `[offset, offset + len)` (they were remapped, e.g.
    /// zero-filled); fences reaching outside it keep their parts outside.
    pub fn forget(&mut self, offset: u64, len: u64) {
        let end = offset.saturating_add(len);
        self.ranges = cut_out(std::mem::take(&mut self.ranges), offset, end);
    }

    /// The zero-fill policy: backs `[offset, offset + len)` of `window` with private anonymous
    /// zero pages ([`DaxWindow::map_zero_then`]; the table entries stay), forgets the fences
    /// there, and remembers the range with the mapping(s) the table has there, so later fence
    /// scans leave it alone and the guest's stores to it survive. The record lapses when the
    /// range is unmapped or mapped again. Call it with the fences locked (lock order: fences →
    /// the window's change lock → the table's lock).
    pub fn zero_fill(
        &mut self,
        window: &DaxWindow,
        offset: u64,
        len: u64,
    ) -> Result<(), WindowError> {
        let end = offset.saturating_add(len);
        let filled = window.map_zero_then(offset, len, |table: &MappingTable| {
            let now = table.snapshot();
            overlapping(&now, offset, end)
                .iter()
                .map(|m| Fence {
                    start: m.window_offset.max(offset),
                    end: m.end().min(end),
                    owner: Owner::of(m),
                })
                .collect::<Vec<_>>()
        });
        let filled = match filled {
            Ok(filled) => filled,
            Err(e) => {
                if matches!(e, WindowError::Map(_)) {
                    // The range is an inaccessible placeholder now: no zero pages left there.
                    self.zero_filled = cut_out(std::mem::take(&mut self.zero_filled), offset, end);
                }
                return Err(e);
            }
        };
        self.forget(offset, len);
        self.zero_filled = cut_out(std::mem::take(&mut self.zero_filled), offset, end);
        self.zero_filled.extend(filled);
        Ok(())
    }

    /// Whether `window_offset` lies in a range recorded as zero-filled (a range since unmapped
    /// or mapped again stays recorded until the next fence or unfence drops it).
    pub fn is_zero_filled(&self, window_offset: u64) -> bool {
        self.zero_filled
            .iter()
            .any(|f| window_offset >= f.start && window_offset < f.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn m(window_offset: u64, len: u64, file_offset: u64) -> Mapping {
        Mapping {
            window_offset,
            len,
            file_offset,
            file: Arc::new(std::fs::File::open("/dev/null").expect("/dev/null")),
            identity: FileIdentity { dev: 1, ino: 1 },
            writable: true,
            map_id: crate::dax::table::next_map_id(),
            size_seen: Arc::new(std::sync::atomic::AtomicU64::new(file_offset + len)),
        }
    }

    #[test]
    fn lost_part_table() {
        assert_eq!(lost_part(&m(0, 0x4000, 0), 0), Some((0, 0x4000)));
        assert_eq!(lost_part(&m(0, 0x4000, 0), 0x1800), Some((0x2000, 0x2000)));
        assert_eq!(lost_part(&m(0, 0x4000, 0), 0x4000), None);
        assert_eq!(
            lost_part(&m(0x10000, 0x2000, 0x2000), 0x2800),
            Some((0x11000, 0x1000))
        );
        assert_eq!(
            lost_part(&m(0x10000, 0x2000, 0x2000), 0x1000),
            Some((0x10000, 0x2000))
        );
    }

    const P: u64 = 4096;

    fn tmpfile(len: u64) -> std::fs::File {
        use std::io::Write;
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "vfsdax-fence-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("create temporary file");
        f.write_all(&vec![0x5a; len as usize]).expect("fill");
        std::fs::remove_file(&path).expect("unlink");
        f
    }

    /// A 16-page window with a writable mapping of a new `len`-byte file "A" at offset 0,
    /// which is then truncated to `keep` bytes: (window, its host address, no fences yet, A).
    fn window_with_shrunk_file(
        len: u64,
        keep: u64,
    ) -> (crate::dax::DaxWindow, u64, Fences, std::fs::File) {
        let w = crate::dax::DaxWindow::new(16 * P).expect("window");
        let base = w.host_addr();
        let a = tmpfile(len);
        w.map(0, len, &a, 0, true).expect("map A");
        a.set_len(keep).expect("truncate A");
        (w, base, Fences::default(), a)
    }

    fn perms(addr: u64) -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        maps.lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                let (s, e) = fields.next()?.split_once('-')?;
                let s = u64::from_str_radix(s, 16).ok()?;
                let e = u64::from_str_radix(e, 16).ok()?;
                (s <= addr && addr < e).then(|| fields.next().map(str::to_string))?
            })
            .expect("address is mapped")
    }

    /// Stores `v` at window offset `off` of `w`, as the guest would.
    fn poke(w: &crate::dax::DaxWindow, off: u64, v: u64) {
        assert!(off + 8 <= w.size());
        // SAFETY: [off, off + 8) lies inside the window reservation, which the caller made
        // accessible and writable there; no Rust reference points into the window.
        unsafe { std::ptr::write_volatile((w.host_addr() + off) as *mut u64, v) }
    }

    /// Loads the word at window offset `off` of `w`.
    fn peek(w: &crate::dax::DaxWindow, off: u64) -> u64 {
        assert!(off + 8 <= w.size());
        // SAFETY: as in `poke`, for a readable range.
        unsafe { std::ptr::read_volatile((w.host_addr() + off) as *const u64) }
    }

    #[test]
    fn a_zero_filled_range_is_not_fenced_and_keeps_the_guests_stores() {
        let (w, base, mut fences, a) = window_with_shrunk_file(4 * P, P);
        // The first scan (an ACK or a kick) fences the lost part, the access zero-fills it.
        assert_eq!(fences.fence_truncated(&w).expect("fence"), 1);
        assert_eq!(perms(base + P), "---s");
        fences.zero_fill(&w, P, 3 * P).expect("zero-fill");
        assert!(!fences.is_fenced(P) && fences.is_zero_filled(2 * P));
        assert_eq!(peek(&w, 2 * P + 0x10), 0, "the guest reads zeros");
        poke(&w, 2 * P + 0x10, 0x5a5a_c3c3);
        // Later scans (ACKs, kicks) leave the zero pages and the store in them alone.
        for _ in 0..3 {
            assert_eq!(fences.fence_truncated(&w).expect("fence"), 0);
        }
        assert_eq!(perms(base + P), "rw-p");
        assert_eq!(perms(base + 3 * P), "rw-p");
        assert!(!fences.is_fenced(2 * P));
        assert_eq!(peek(&w, 2 * P + 0x10), 0x5a5a_c3c3, "the store survived");
        assert_eq!(perms(base), "rw-s", "the part the file covers stays mapped");
        // The file shrinks further: only the newly lost page is fenced.
        a.set_len(0).expect("truncate A to 0");
        assert_eq!(fences.fence_truncated(&w).expect("fence page 0"), 1);
        assert_eq!(perms(base), "---s");
        assert_eq!(perms(base + 2 * P), "rw-p");
        assert_eq!(peek(&w, 2 * P + 0x10), 0x5a5a_c3c3);
        // A mapping in the middle of the zero-filled range splits it; the rest stays the guest's.
        let c = tmpfile(P);
        w.map(3 * P, P, &c, 0, true).expect("map C over page 3");
        c.set_len(0).expect("truncate C");
        assert_eq!(fences.fence_truncated(&w).expect("fence C"), 1);
        assert_eq!(perms(base + 3 * P), "---s");
        assert_eq!(perms(base + 2 * P), "rw-p");
        assert_eq!(peek(&w, 2 * P + 0x10), 0x5a5a_c3c3);
    }

    #[test]
    fn a_zero_filled_range_mapped_again_is_fenced_again() {
        let (w, base, mut fences, _a) = window_with_shrunk_file(2 * P, 0);
        fences.zero_fill(&w, 0, 2 * P).expect("zero-fill A");
        poke(&w, 0x18, 7);
        assert_eq!(fences.fence_truncated(&w).expect("fence"), 0);
        // SETUPMAPPING of another file straight over it, which then shrinks.
        let b = tmpfile(2 * P);
        w.map(0, 2 * P, &b, 0, true).expect("map B");
        assert_eq!(perms(base), "rw-s");
        assert_eq!(
            peek(&w, 0x18),
            0x5a5a_5a5a_5a5a_5a5a,
            "B's bytes, not the zero page"
        );
        b.set_len(0).expect("truncate B");
        assert_eq!(fences.fence_truncated(&w).expect("fence B"), 1);
        assert!(!fences.is_zero_filled(0), "A's record lapsed");
        assert_eq!(perms(base), "---s");
        assert_eq!(perms(base + P), "---s");
        // B's access zero-fills; then REMOVEMAPPING + SETUPMAPPING of a third file that shrinks.
        fences.zero_fill(&w, 0, 2 * P).expect("zero-fill B");
        assert_eq!(fences.fence_truncated(&w).expect("fence"), 0);
        w.unmap(0, 2 * P).expect("unmap B");
        let c = tmpfile(2 * P);
        w.map(0, 2 * P, &c, 0, true).expect("map C");
        c.set_len(P).expect("truncate C to one page");
        assert_eq!(fences.fence_truncated(&w).expect("fence C"), 1);
        assert_eq!(perms(base), "rw-s");
        assert_eq!(perms(base + P), "---s");
        assert!(fences.is_fenced(P) && !fences.is_zero_filled(P));
    }

    #[test]
    fn a_remapped_range_is_fenced_again_when_the_new_file_shrinks() {
        let (w, base, mut fences, _a) = window_with_shrunk_file(2 * P, 0);
        assert_eq!(fences.fence_truncated(&w).expect("fence"), 1);
        assert_eq!(perms(base), "---s");
        // REMOVEMAPPING + SETUPMAPPING of another file at the same offset, which then shrinks.
        w.unmap(0, 2 * P).expect("unmap A");
        let b = tmpfile(2 * P);
        w.map(0, 2 * P, &b, 0, true).expect("map B");
        assert_eq!(perms(base), "rw-s");
        b.set_len(0).expect("truncate B");
        assert_eq!(
            fences.fence_truncated(&w).expect("fence"),
            1,
            "B's lost range is not covered by A's old fence"
        );
        assert_eq!(perms(base), "---s");
        assert_eq!(perms(base + P), "---s");
        // B grows back: unfencing restores B's protection.
        b.set_len(2 * P).expect("re-extend B");
        assert!(fences.unfence(&w, P).expect("unfence"));
        assert_eq!(perms(base), "rw-s");
    }

    #[test]
    fn unfencing_a_read_only_remap_uses_its_own_protection() {
        let (w, base, mut fences, _a) = window_with_shrunk_file(2 * P, 0);
        assert_eq!(fences.fence_truncated(&w).expect("fence"), 1);
        // B: read-only mapping of an O_RDONLY descriptor at the same offset.
        let b = tmpfile(2 * P);
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&b));
        let b_ro = std::fs::File::open(path).expect("reopen B read-only");
        w.unmap(0, 2 * P).expect("unmap A");
        w.map(0, 2 * P, &b_ro, 0, false).expect("map B read-only");
        assert_eq!(perms(base), "r--s");
        // A's stale fence is no fence of B: nothing to restore, and nothing fails.
        assert!(!fences.unfence(&w, P).expect("unfence a stale fence"));
        assert_eq!(perms(base), "r--s");
        // B shrinks, is fenced, grows back: unfencing restores PROT_READ, not A's PROT_WRITE.
        b.set_len(0).expect("truncate B");
        assert_eq!(fences.fence_truncated(&w).expect("fence"), 1);
        assert_eq!(perms(base + P), "---s");
        b.set_len(2 * P).expect("re-extend B");
        assert!(fences.unfence(&w, P).expect("unfence B"));
        assert_eq!(perms(base), "r--s");
        assert!(!fences.is_fenced(P));
    }

    /// A handler that saw the page back (a classification before a truncation) asks to
    /// unfence after the watcher fenced that truncation: only what the file covers now opens.
    #[test]
    fn unfencing_rechecks_the_size_so_a_later_truncation_stays_fenced() {
        let (w, base, mut fences, a) = window_with_shrunk_file(4 * P, 4 * P);
        a.set_len(P).expect("truncate A");
        assert_eq!(fences.fence_truncated(&w).expect("fence"), 1);
        assert_eq!(perms(base + P), "---s");
        // The file is still one page long: nothing to lift.
        assert!(!fences.unfence(&w, 2 * P).expect("unfence"));
        assert_eq!(perms(base + P), "---s");
        assert!(fences.is_fenced(2 * P));
        // Grown by one page: that page opens, the rest stays fenced.
        a.set_len(2 * P).expect("grow A");
        assert!(fences.unfence(&w, 2 * P).expect("unfence"));
        assert_eq!(perms(base + P), "rw-s");
        assert_eq!(perms(base + 2 * P), "---s");
        assert!(!fences.is_fenced(P) && fences.is_fenced(3 * P));
    }

    #[test]
    fn uncovered_table() {
        assert_eq!(uncovered(&[], 0, 10), vec![(0, 10)]);
        assert_eq!(uncovered(&[(0, 10)], 0, 10), vec![]);
        assert_eq!(
            uncovered(&[(2, 4), (6, 8)], 0, 10),
            vec![(0, 2), (4, 6), (8, 10)]
        );
        assert_eq!(uncovered(&[(6, 20), (0, 3)], 2, 10), vec![(3, 6)]);
        assert_eq!(
            uncovered(&[(1, 5), (2, 3), (5, 7)], 0, 8),
            vec![(0, 1), (7, 8)]
        );
        assert_eq!(uncovered(&[(20, 30)], 0, 10), vec![(0, 10)]);
    }

    #[test]
    fn owned_parts_follow_the_mapping_identity() {
        let a = m(0, 0x4000, 0x10000);
        let owner = Owner::of(&a);
        // The same file object at another file offset (or another file object) is someone else.
        let b = m(0x4000, 0x1000, 0);
        let mut a_moved = a.clone();
        a_moved.file_offset = 0;
        assert!(owner.owns(&a));
        assert!(!owner.owns(&a_moved));
        assert!(!owner.owns(&b));
        // The same file mapped again at the same place (one descriptor per file, so the same
        // `Arc`) is a new mapping: a fence of the old one does not cover it.
        let a_again = Mapping {
            map_id: crate::dax::table::next_map_id(),
            ..a.clone()
        };
        assert!(Arc::ptr_eq(&a.file, &a_again.file));
        assert!(!owner.owns(&a_again));
        // A split of `a` around a new mapping in its middle.
        let left = Mapping {
            len: 0x1000,
            ..a.clone()
        };
        let mid = m(0x1000, 0x1000, 0);
        let right = Mapping {
            window_offset: 0x2000,
            len: 0x2000,
            file_offset: 0x12000,
            ..a.clone()
        };
        let entries = [left, mid, right, b];
        assert_eq!(
            owned_parts(0, 0x4000, &owner, &entries),
            vec![(0, 0x1000), (0x2000, 0x4000)]
        );
        assert_eq!(
            owned_parts(0x1800, 0x3000, &owner, &entries),
            vec![(0x2000, 0x3000)]
        );
        assert_eq!(owned_parts(0x4000, 0x5000, &owner, &entries), vec![]);
        assert_eq!(owned_parts(0, 0x4000, &owner, &[]), vec![]);
    }

    #[test]
    fn forget_cuts_partial_overlaps() {
        let a = m(0, 0x4000, 0);
        let mut f = Fences::default();
        f.ranges.push(Fence {
            start: 0,
            end: 0x4000,
            owner: Owner::of(&a),
        });
        f.forget(0x1000, 0x1000);
        assert!(f.is_fenced(0));
        assert!(!f.is_fenced(0x1000));
        assert!(f.is_fenced(0x2000));
        f.forget(0, u64::MAX);
        assert!(!f.is_fenced(0) && !f.is_fenced(0x3fff));
    }

    #[test]
    fn a_mapping_swapped_in_after_the_scan_is_not_fenced() {
        let (w, base, mut fences, _a) = window_with_shrunk_file(2 * P, 0);
        let lost = scan(&w);
        assert_eq!(lost.len(), 1);
        // The request thread replaces A between the scan and the fencing.
        let b = tmpfile(2 * P);
        w.map(0, 2 * P, &b, 0, true).expect("map B");
        assert_eq!(fences.fence_lost(&w, lost).expect("fence"), 0);
        assert_eq!(perms(base), "rw-s");
        assert!(!fences.is_fenced(0));
    }

    #[test]
    fn a_mapping_inside_a_fence_splits_it() {
        let (w, base, mut fences, a) = window_with_shrunk_file(4 * P, 0);
        assert_eq!(fences.fence_truncated(&w).expect("fence"), 1);
        let b = tmpfile(P);
        w.map(P, P, &b, 0, false).expect("map B inside A's fence");
        assert_eq!(perms(base + P), "r--s");
        assert!(!fences.unfence(&w, P).expect("B is not fenced"));
        assert_eq!(perms(base + P), "r--s");
        // Both remaining parts of A stay fenced, and are lifted one at a time.
        assert_eq!(perms(base), "---s");
        assert_eq!(perms(base + 3 * P), "---s");
        assert_eq!(fences.fence_truncated(&w).expect("nothing new"), 0);
        a.set_len(4 * P).expect("re-extend A");
        assert!(fences.unfence(&w, 0).expect("unfence A's head"));
        assert_eq!(perms(base), "rw-s");
        assert_eq!(perms(base + 2 * P), "---s");
        assert!(fences.unfence(&w, 3 * P).expect("unfence A's tail"));
        assert_eq!(perms(base + 2 * P), "rw-s");
        assert_eq!(perms(base + P), "r--s");
        // Unmapping a fenced range drops its fence without touching the placeholder.
        a.set_len(0).expect("truncate A again");
        assert_eq!(fences.fence_truncated(&w).expect("both parts of A"), 2);
        w.unmap(0, 4 * P).expect("unmap");
        assert!(!fences.unfence(&w, 0).expect("nothing to lift"));
        assert_eq!(perms(base), "---p");
    }
}
