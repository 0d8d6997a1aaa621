//! Classification of a vCPU exit that may concern the DAX window.
//!
//! Pure logic: the mapping table is an in-memory structure and the current file sizes come in
//! through a closure, so every rule is unit-tested over made-up exits.

use std::io;

use vfsdax_protocol::report::Access;

use crate::dax::{Mapping, MappingTable};

/// Page size of the host mappings.
pub const PAGE_SIZE: u64 = 4096;

/// Where the DAX window lives, in guest-physical and host-virtual address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowGeometry {
    /// Guest-physical address of the first window byte.
    pub gpa_base: u64,
    /// Host-virtual address of the first window byte (the memslot's `userspace_addr`).
    pub host_base: u64,
    /// Size of the window in bytes.
    pub size: u64,
}

impl WindowGeometry {
    /// Window offset of `gpa`, if it lies inside the window.
    pub fn offset_of_gpa(&self, gpa: u64) -> Option<u64> {
        gpa.checked_sub(self.gpa_base).filter(|o| *o < self.size)
    }

    /// Window offset of the host address `addr`, if it lies inside the window.
    pub fn offset_of_host(&self, addr: u64) -> Option<u64> {
        addr.checked_sub(self.host_base).filter(|o| *o < self.size)
    }
}

/// The parts of a vCPU exit (or VMM signal) that can reveal a DAX fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultEvidence {
    /// `KVM_RUN` exited with an MMIO access (how a lost page shows on shadow-MMU hosts).
    Mmio {
        /// Guest-physical address.
        gpa: u64,
        /// Access width in bytes.
        len: u32,
        /// Load or store.
        access: Access,
    },
    /// `KVM_RUN` failed with `EFAULT`, with the `KVM_EXIT_MEMORY_FAULT` data if KVM gave it.
    Efault {
        /// `(gpa, size)` of the `KVM_EXIT_MEMORY_FAULT` record, if present.
        memory_fault: Option<(u64, u64)>,
    },
    /// A bare `EFAULT` whose address was recovered by decoding the faulting instruction
    /// ([`super::decode`]) and translating its operand.
    Decoded {
        /// Guest-physical address.
        gpa: u64,
        /// Access width in bytes.
        len: u32,
        /// Load or store.
        access: Access,
    },
    /// The VMM itself took a SIGBUS at a host address.
    Sigbus {
        /// `si_addr` of the signal.
        host_addr: u64,
    },
}

/// How the fault was located.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Located {
    /// The exit gave the address.
    Exact,
    /// A bare `EFAULT`: the culprit was found by comparing live mappings with file sizes.
    ByFileSize {
        /// How many mappings lost pages their file had. With more than one the search refuses
        /// to guess ([`Located::is_ambiguous`]): the first is kept for the diagnostic only.
        candidates: usize,
    },
    /// The backend had unmapped the range (the daemon's truncation guard, before the
    /// truncation); the access lies past the end of the file that was mapped there.
    Unmapped,
}

impl Located {
    /// Whether the fault could not be tied to one mapping (a bare `EFAULT` while several files
    /// lost pages): no file, offset or address may be reported or acted on as the culprit.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, Located::ByFileSize { candidates } if *candidates > 1)
    }
}

/// A guest access to a page that lies beyond the current end of its file.
#[derive(Clone, Debug)]
pub struct TruncatedPage {
    /// The mapping the page belongs to.
    pub mapping: Mapping,
    /// Guest-physical address of the access (for [`Located::ByFileSize`], of the first lost
    /// byte of the mapping).
    pub gpa: u64,
    /// Window offset matching `gpa`.
    pub window_offset: u64,
    /// File offset matching `gpa`.
    pub file_offset: u64,
    /// File size when classified; `None` if `fstat` failed (the page is treated as lost).
    pub file_size: Option<u64>,
    /// Load, store or unknown.
    pub access: Access,
    /// How the fault was located.
    pub located: Located,
}

impl TruncatedPage {
    /// The lost part of the mapping: `(window_offset, len)` of the page-aligned range from the
    /// first page past the end of the file to the end of the mapping.
    pub fn lost_range(&self) -> (u64, u64) {
        let m = &self.mapping;
        let first_lost_file = self
            .file_size
            .map_or(m.file_offset, |s| round_up(s).max(m.file_offset));
        let start = m.window_offset + (first_lost_file - m.file_offset).min(m.len);
        (start, m.end() - start)
    }
}

/// The verdict on one exit.
#[derive(Clone, Debug)]
pub enum Classification {
    /// The guest touched a page its file no longer covers.
    TruncatedPage(TruncatedPage),
    /// The guest touched a window range it never mapped (a guest bug).
    UnmappedWindowAccess {
        /// Guest-physical address (`None` for a SIGBUS without one).
        gpa: u64,
        /// Window offset.
        window_offset: u64,
        /// Load, store or unknown.
        access: Access,
    },
    /// The guest stored to a range mapped read-only (a guest bug).
    ReadOnlyWrite {
        /// The read-only mapping.
        mapping: Mapping,
        /// Guest-physical address.
        gpa: u64,
    },
    /// The page is backed again (the file grew back between the exit and the check): retry.
    Backed {
        /// The mapping.
        mapping: Mapping,
        /// Guest-physical address.
        gpa: u64,
        /// Load, store or unknown.
        access: Access,
    },
    /// Not a DAX window fault: hand the exit back to the VMM untouched.
    NotDax,
}

fn round_up(v: u64) -> u64 {
    v.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE)
}

/// Whether the file page containing `file_offset` exists for a file of `size` bytes.
fn page_backed(file_offset: u64, size: u64) -> bool {
    file_offset < round_up(size)
}

/// Classifies `evidence` against the window and its live mappings. `file_size` returns the
/// current size of a mapping's file (`fstat` of its duplicated descriptor in production).
pub fn classify<F>(
    evidence: &FaultEvidence,
    window: &WindowGeometry,
    table: &MappingTable,
    mut file_size: F,
) -> Classification
where
    F: FnMut(&Mapping) -> io::Result<u64>,
{
    let (window_offset, access) = match *evidence {
        FaultEvidence::Mmio { gpa, access, .. } | FaultEvidence::Decoded { gpa, access, .. } => {
            match window.offset_of_gpa(gpa) {
                Some(off) => (off, access),
                None => return Classification::NotDax,
            }
        }
        FaultEvidence::Efault {
            memory_fault: Some((gpa, _)),
        } => match window.offset_of_gpa(gpa) {
            Some(off) => (off, Access::Unknown),
            None => return Classification::NotDax,
        },
        FaultEvidence::Sigbus { host_addr } => match window.offset_of_host(host_addr) {
            Some(off) => (off, Access::Unknown),
            None => return Classification::NotDax,
        },
        FaultEvidence::Efault { memory_fault: None } => {
            return find_by_file_size(window, table, &mut file_size);
        }
    };
    let gpa = window.gpa_base + window_offset;
    let Some(mapping) = table.lookup(window_offset) else {
        // A range the backend unmapped: if its file has since shrunk below the access (the
        // daemon's truncation guard unmaps before the truncation), it is that file's lost page.
        if let Some(gone) = table.lookup_unmapped(window_offset) {
            let file_offset = gone.file_offset + (window_offset - gone.window_offset);
            let size = file_size(&gone).ok();
            if matches!(size, Some(s) if !page_backed(file_offset, s)) {
                return Classification::TruncatedPage(TruncatedPage {
                    mapping: gone,
                    gpa,
                    window_offset,
                    file_offset,
                    file_size: size,
                    access,
                    located: Located::Unmapped,
                });
            }
        }
        return Classification::UnmappedWindowAccess {
            gpa,
            window_offset,
            access,
        };
    };
    let file_offset = mapping.file_offset + (window_offset - mapping.window_offset);
    let size = file_size(&mapping).ok();
    match size {
        Some(s) if page_backed(file_offset, s) => {
            if access == Access::Write && !mapping.writable {
                Classification::ReadOnlyWrite { mapping, gpa }
            } else {
                Classification::Backed {
                    mapping,
                    gpa,
                    access,
                }
            }
        }
        _ => Classification::TruncatedPage(TruncatedPage {
            mapping,
            gpa,
            window_offset,
            file_offset,
            file_size: size,
            access,
            located: Located::Exact,
        }),
    }
}

/// A bare `EFAULT`: look for live mappings that lost pages their file had while mapped (from
/// the file's size now up to the largest size seen, [`Mapping::size_seen`]). A mapping past the
/// end of a file that never reached it (Linux maps 2 MiB chunks of small files) lost nothing.
fn find_by_file_size<F>(
    window: &WindowGeometry,
    table: &MappingTable,
    file_size: &mut F,
) -> Classification
where
    F: FnMut(&Mapping) -> io::Result<u64>,
{
    let mut found: Option<TruncatedPage> = None;
    let mut candidates = 0;
    for m in table.snapshot() {
        let size = file_size(&m).ok();
        let seen = m
            .size_seen
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(size.unwrap_or(0));
        let first_lost = size.map_or(m.file_offset, |s| round_up(s).max(m.file_offset));
        let lost_end = round_up(seen).min(m.file_offset.saturating_add(m.len));
        if first_lost >= lost_end {
            continue;
        }
        candidates += 1;
        if found.is_none() {
            let window_offset = m.window_offset + (first_lost - m.file_offset);
            found = Some(TruncatedPage {
                gpa: window.gpa_base + window_offset,
                window_offset,
                file_offset: first_lost,
                file_size: size,
                access: Access::Unknown,
                located: Located::ByFileSize { candidates: 0 },
                mapping: m,
            });
        }
    }
    match found {
        Some(mut t) => {
            t.located = Located::ByFileSize { candidates };
            Classification::TruncatedPage(t)
        }
        None => Classification::NotDax,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dax::FileIdentity;
    use std::collections::HashMap;
    use std::fs::File;
    use std::sync::Arc;

    const WIN: WindowGeometry = WindowGeometry {
        gpa_base: 0x4000_0000,
        host_base: 0x7f00_0000_0000,
        size: 0x20_0000,
    };

    fn mapping(
        window_offset: u64,
        len: u64,
        file_offset: u64,
        ino: u64,
        writable: bool,
    ) -> Mapping {
        Mapping {
            window_offset,
            len,
            file_offset,
            file: Arc::new(File::open("/dev/null").expect("/dev/null")),
            identity: FileIdentity { dev: 1, ino },
            writable,
            map_id: crate::dax::table::next_map_id(),
            size_seen: Arc::new(std::sync::atomic::AtomicU64::new(file_offset + len)),
        }
    }

    /// A table with ino 10 at window [0, 16K) → file [0, 16K) and ino 11 at [64K, 72K) → [8K, 16K).
    fn table() -> MappingTable {
        let t = MappingTable::new();
        t.insert(mapping(0, 0x4000, 0, 10, true));
        t.insert(mapping(0x10000, 0x2000, 0x2000, 11, false));
        t
    }

    fn sizes(s: &[(u64, u64)]) -> impl FnMut(&Mapping) -> io::Result<u64> {
        let map: HashMap<u64, u64> = s.iter().copied().collect();
        move |m| {
            map.get(&m.identity.ino)
                .copied()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
        }
    }

    fn mmio(off: u64, access: Access) -> FaultEvidence {
        FaultEvidence::Mmio {
            gpa: WIN.gpa_base + off,
            len: 8,
            access,
        }
    }

    #[test]
    fn mmio_outside_the_window_is_not_dax() {
        let t = table();
        for gpa in [0, 0xfee0_0000, WIN.gpa_base - 1, WIN.gpa_base + WIN.size] {
            let e = FaultEvidence::Mmio {
                gpa,
                len: 4,
                access: Access::Read,
            };
            assert!(matches!(
                classify(&e, &WIN, &t, sizes(&[])),
                Classification::NotDax
            ));
        }
    }

    #[test]
    fn load_past_eof_is_a_truncated_page() {
        let t = table();
        let c = classify(
            &mmio(0x2008, Access::Read),
            &WIN,
            &t,
            sizes(&[(10, 0x1800), (11, 0x4000)]),
        );
        let Classification::TruncatedPage(p) = c else {
            panic!("{c:?}")
        };
        assert_eq!(p.gpa, WIN.gpa_base + 0x2008);
        assert_eq!(p.window_offset, 0x2008);
        assert_eq!(p.file_offset, 0x2008);
        assert_eq!(p.file_size, Some(0x1800));
        assert_eq!(p.access, Access::Read);
        assert_eq!(p.mapping.identity.ino, 10);
        assert_eq!(p.located, Located::Exact);
        // 0x1800 rounds up to 0x2000: pages from window 0x2000 to 0x4000 are lost.
        assert_eq!(p.lost_range(), (0x2000, 0x2000));
    }

    #[test]
    fn access_inside_the_last_partial_page_is_backed() {
        let t = table();
        let c = classify(
            &mmio(0x1ff8, Access::Read),
            &WIN,
            &t,
            sizes(&[(10, 0x1800)]),
        );
        assert!(matches!(c, Classification::Backed { .. }), "{c:?}");
    }

    #[test]
    fn truncate_to_zero_loses_the_whole_mapping_with_a_file_offset() {
        let t = table();
        let c = classify(&mmio(0x10000, Access::Write), &WIN, &t, sizes(&[(11, 0)]));
        let Classification::TruncatedPage(p) = c else {
            panic!("{c:?}")
        };
        assert_eq!(p.file_offset, 0x2000);
        assert_eq!(p.access, Access::Write);
        assert_eq!(p.lost_range(), (0x10000, 0x2000));
    }

    #[test]
    fn unmapped_window_range_is_a_guest_bug() {
        let t = table();
        let c = classify(&mmio(0x8000, Access::Read), &WIN, &t, sizes(&[]));
        assert!(
            matches!(
                c,
                Classification::UnmappedWindowAccess {
                    window_offset: 0x8000,
                    access: Access::Read,
                    ..
                }
            ),
            "{c:?}"
        );
    }

    #[test]
    fn store_to_read_only_mapping_is_reported_as_such() {
        let t = table();
        let c = classify(
            &mmio(0x10000, Access::Write),
            &WIN,
            &t,
            sizes(&[(11, 0x4000)]),
        );
        assert!(matches!(c, Classification::ReadOnlyWrite { .. }), "{c:?}");
        let c = classify(
            &mmio(0x10000, Access::Read),
            &WIN,
            &t,
            sizes(&[(11, 0x4000)]),
        );
        assert!(matches!(c, Classification::Backed { .. }), "{c:?}");
    }

    #[test]
    fn fstat_failure_treats_the_page_as_lost() {
        let t = table();
        let c = classify(&mmio(0, Access::Read), &WIN, &t, sizes(&[]));
        let Classification::TruncatedPage(p) = c else {
            panic!("{c:?}")
        };
        assert_eq!(p.file_size, None);
        assert_eq!(p.lost_range(), (0, 0x4000));
    }

    #[test]
    fn memory_fault_exit_uses_its_gpa() {
        let t = table();
        let e = FaultEvidence::Efault {
            memory_fault: Some((WIN.gpa_base + 0x11000, 0x1000)),
        };
        let c = classify(&e, &WIN, &t, sizes(&[(10, 0x4000), (11, 0x2000)]));
        let Classification::TruncatedPage(p) = c else {
            panic!("{c:?}")
        };
        assert_eq!(p.mapping.identity.ino, 11);
        assert_eq!(p.file_offset, 0x3000);
        assert_eq!(p.access, Access::Unknown);
        let e = FaultEvidence::Efault {
            memory_fault: Some((0x1000, 0x1000)),
        };
        assert!(matches!(
            classify(&e, &WIN, &t, sizes(&[])),
            Classification::NotDax
        ));
    }

    #[test]
    fn bare_efault_finds_the_mapping_whose_file_shrank() {
        let t = table();
        let e = FaultEvidence::Efault { memory_fault: None };
        // Only ino 11 shrank (to 0x2800: its mapped file range is [0x2000, 0x4000)).
        let c = classify(&e, &WIN, &t, sizes(&[(10, 0x4000), (11, 0x2800)]));
        let Classification::TruncatedPage(p) = c else {
            panic!("{c:?}")
        };
        assert_eq!(p.mapping.identity.ino, 11);
        assert_eq!(p.file_offset, 0x3000);
        assert_eq!(p.window_offset, 0x11000);
        assert_eq!(p.gpa, WIN.gpa_base + 0x11000);
        assert_eq!(p.located, Located::ByFileSize { candidates: 1 });
        // Both shrank: the first in window order is reported, and the count says two.
        let c = classify(&e, &WIN, &t, sizes(&[(10, 0), (11, 0)]));
        let Classification::TruncatedPage(p) = c else {
            panic!("{c:?}")
        };
        assert_eq!(p.mapping.identity.ino, 10);
        assert_eq!(p.located, Located::ByFileSize { candidates: 2 });
        assert!(p.located.is_ambiguous(), "two candidates: no guess");
    }

    #[test]
    fn a_mapping_past_the_end_of_a_small_file_lost_nothing() {
        // Linux maps 2 MiB chunks: a 100-byte file mapped whole is "shorter than the mapping"
        // from the start; only pages it had and lost count.
        let t = MappingTable::new();
        let m = mapping(0, 0x20_0000, 0, 12, false);
        m.size_seen.store(100, std::sync::atomic::Ordering::Relaxed);
        t.insert(m);
        let e = FaultEvidence::Efault { memory_fault: None };
        assert!(matches!(
            classify(&e, &WIN, &t, sizes(&[(12, 100)])),
            Classification::NotDax
        ));
        // Truncated to 0: its one page is lost.
        let Classification::TruncatedPage(p) = classify(&e, &WIN, &t, sizes(&[(12, 0)])) else {
            panic!("the page it had is lost")
        };
        assert_eq!(p.file_offset, 0);
        assert_eq!(p.located, Located::ByFileSize { candidates: 1 });
        assert!(!p.located.is_ambiguous());
        // Grown to 3 pages since (seen by an fstat), then cut to 1: pages 1 and 2 are lost.
        t.lookup(0).expect("mapped").saw_size(0x3000);
        let Classification::TruncatedPage(p) = classify(&e, &WIN, &t, sizes(&[(12, 0x1000)]))
        else {
            panic!("pages it had are lost")
        };
        assert_eq!(p.file_offset, 0x1000);
    }

    #[test]
    fn bare_efault_with_every_file_intact_is_not_dax() {
        let t = table();
        let e = FaultEvidence::Efault { memory_fault: None };
        assert!(matches!(
            classify(&e, &WIN, &t, sizes(&[(10, 0x4000), (11, 0x4000)])),
            Classification::NotDax
        ));
        assert!(matches!(
            classify(&e, &WIN, &MappingTable::new(), sizes(&[])),
            Classification::NotDax
        ));
    }

    #[test]
    fn decoded_efault_is_exact() {
        let t = table();
        let e = FaultEvidence::Decoded {
            gpa: WIN.gpa_base + 0x2010,
            len: 8,
            access: Access::Write,
        };
        let c = classify(&e, &WIN, &t, sizes(&[(10, 0)]));
        let Classification::TruncatedPage(p) = c else {
            panic!("{c:?}")
        };
        assert_eq!(
            (p.window_offset, p.access, p.located),
            (0x2010, Access::Write, Located::Exact)
        );
        let e = FaultEvidence::Decoded {
            gpa: WIN.gpa_base + 0x8000,
            len: 8,
            access: Access::Read,
        };
        assert!(matches!(
            classify(&e, &WIN, &t, sizes(&[])),
            Classification::UnmappedWindowAccess { .. }
        ));
    }

    #[test]
    fn sigbus_on_a_window_host_address_is_classified() {
        let t = table();
        let e = FaultEvidence::Sigbus {
            host_addr: WIN.host_base + 0x3000,
        };
        let c = classify(&e, &WIN, &t, sizes(&[(10, 0x1000)]));
        let Classification::TruncatedPage(p) = c else {
            panic!("{c:?}")
        };
        assert_eq!(p.window_offset, 0x3000);
        let e = FaultEvidence::Sigbus {
            host_addr: WIN.host_base - 8,
        };
        assert!(matches!(
            classify(&e, &WIN, &t, sizes(&[])),
            Classification::NotDax
        ));
    }
}
