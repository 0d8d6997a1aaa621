//! `fault_classifier`: `vmm-glue`'s fault classification ([`classify`]) over an arbitrary window
//! geometry, a mapping table built by arbitrary inserts and removes (what `DaxWindow` can
//! produce: page-aligned ranges inside the window, file offsets below `i64::MAX`), arbitrary file
//! sizes (or `fstat` failing) and arbitrary evidence.
//!
//! Checked against a model of the table kept by the harness (the last insert covering a page,
//! unless a later remove covered it):
//! - `MappingTable::lookup` agrees with the model at every address the evidence names;
//! - evidence with an address: `NotDax` exactly when the address lies outside the window;
//!   inside, a live mapping gives `Backed`, `ReadOnlyWrite` (a store to a read-only mapping) or
//!   `TruncatedPage` (`Exact`) as the file size says, with the right offsets, file and access,
//!   and a lost range that lies in the mapping and covers the faulting page; no live mapping
//!   gives `UnmappedWindowAccess` or a `TruncatedPage` (`Unmapped`) past its file's end;
//! - a bare `EFAULT`: `TruncatedPage` (`ByFileSize`) for the first mapping that lost pages its
//!   file had while mapped (between the size now and the largest size seen, which the search
//!   records as production's `Mapping::file_size` does), with the number of such mappings
//!   (ambiguous when more than one), or `NotDax` if there is none.
//!
//! Geometries whose window would wrap around the address space are skipped: a VMM cannot make
//! one.
//!
//! Input: `gpa_base: u64, host_base: u64, pages: u32` (window of `pages + 1` pages), four file
//! sizes (`u64`; `u64::MAX` means `fstat` fails; masked to `i64::MAX`), `ops: u8` and that many
//! table operations (see [`op`]), then evidence records until the input ends (see [`evidence`]).

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vfsdax_protocol::report::Access;
use vfsdax_vmm_glue::dax::{FileIdentity, Mapping, MappingTable};
use vfsdax_vmm_glue::fault::{
    classify, Classification, FaultEvidence, Located, WindowGeometry, PAGE_SIZE,
};

use crate::input::Input;

/// Files (inode numbers 0..FILES).
pub const FILES: usize = 4;
/// Most table operations.
pub const MAX_OPS: usize = 24;
/// Most evidence records.
pub const MAX_EVIDENCE: usize = 16;

/// Table operations (`kind % 2`).
pub mod op {
    /// `page: u32, pages: u16, file: u8, file_page: u32, writable: u8, seen_kib: u32`: insert
    /// (`seen_kib`: the largest file size seen, in KiB; `u32::MAX` for never looked).
    pub const INSERT: u8 = 0;
    /// `page: u32, pages: u16`: remove.
    pub const REMOVE: u8 = 1;
}

/// Evidence records: `kind: u8` (mod 5), `mode: u8`, `addr: u64`, `access: u8`. With mode bit 0
/// the address is relative to the window's base (guest-physical or host).
pub mod evidence {
    /// `FaultEvidence::Mmio`.
    pub const MMIO: u8 = 0;
    /// `FaultEvidence::Decoded`.
    pub const DECODED: u8 = 1;
    /// `FaultEvidence::Efault` with a memory fault record.
    pub const EFAULT_ADDR: u8 = 2;
    /// `FaultEvidence::Efault` without.
    pub const EFAULT_BARE: u8 = 3;
    /// `FaultEvidence::Sigbus`.
    pub const SIGBUS: u8 = 4;
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Insert {
        page: u64,
        pages: u64,
        file: usize,
        file_page: u64,
        writable: bool,
    },
    Remove {
        page: u64,
        pages: u64,
    },
}

/// What the model says of a window page: (file, file offset of the page, writable).
fn model_at(ops: &[Op], page: u64) -> Option<(usize, u64, bool)> {
    for op in ops.iter().rev() {
        match *op {
            Op::Insert {
                page: p,
                pages,
                file,
                file_page,
                writable,
            } if page >= p && page < p + pages => {
                return Some((file, (file_page + page - p) * PAGE_SIZE, writable));
            }
            Op::Remove { page: p, pages } if page >= p && page < p + pages => return None,
            _ => {}
        }
    }
    None
}

thread_local! {
    static DEV_NULL: Arc<File> = Arc::new(File::open("/dev/null").expect("/dev/null"));
}

fn round_up(v: u64) -> u64 {
    v.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE)
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let (Some(gpa_base), Some(host_base), Some(pages)) = (input.u64(), input.u64(), input.u32())
    else {
        return;
    };
    let window_pages = u64::from(pages) + 1;
    let size = window_pages * PAGE_SIZE;
    if gpa_base.checked_add(size).is_none() || host_base.checked_add(size).is_none() {
        return;
    }
    let win = WindowGeometry {
        gpa_base,
        host_base,
        size,
    };
    let mut sizes = [None; FILES];
    for s in &mut sizes {
        let Some(v) = input.u64() else { return };
        *s = (v != u64::MAX).then_some(v & i64::MAX as u64);
    }
    let table = MappingTable::new();
    let null = DEV_NULL.with(Arc::clone);
    let mut ops = Vec::new();
    let Some(n) = input.u8() else { return };
    for _ in 0..usize::from(n).min(MAX_OPS) {
        let Some(kind) = input.u8() else { return };
        let (Some(page), Some(len)) = (input.u32(), input.u16()) else {
            return;
        };
        let page = u64::from(page) % window_pages;
        let pages = u64::from(len).clamp(1, window_pages - page);
        if kind % 2 == op::INSERT {
            let (Some(f), Some(file_page), Some(w), Some(seen)) =
                (input.u8(), input.u32(), input.u8(), input.u32())
            else {
                return;
            };
            // The largest size the glue saw the file have (u32::MAX: never looked, as in the
            // unit tests), in KiB.
            let seen = if seen == u32::MAX {
                u64::MAX
            } else {
                u64::from(seen) * 1024
            };
            let o = Op::Insert {
                page,
                pages,
                file: usize::from(f) % FILES,
                file_page: u64::from(file_page),
                writable: w & 1 != 0,
            };
            if let Op::Insert {
                file,
                file_page,
                writable,
                ..
            } = o
            {
                table.insert(Mapping {
                    window_offset: page * PAGE_SIZE,
                    len: pages * PAGE_SIZE,
                    file_offset: file_page * PAGE_SIZE,
                    file: null.clone(),
                    identity: FileIdentity {
                        dev: 1,
                        ino: file as u64,
                    },
                    writable,
                    map_id: ops.len() as u64 + 1,
                    size_seen: Arc::new(AtomicU64::new(seen)),
                });
            }
            ops.push(o);
        } else {
            table.remove(page * PAGE_SIZE, pages * PAGE_SIZE);
            ops.push(Op::Remove { page, pages });
        }
    }
    // As `Mapping::file_size` does in production: the size now, recorded as seen.
    let file_size = |m: &Mapping| -> io::Result<u64> {
        let s = sizes
            .get(m.identity.ino as usize)
            .copied()
            .flatten()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        m.saw_size(s);
        Ok(s)
    };
    for _ in 0..MAX_EVIDENCE {
        let (Some(kind), Some(mode), Some(addr), Some(acc)) =
            (input.u8(), input.u8(), input.u64(), input.u8())
        else {
            return;
        };
        let access = [Access::Read, Access::Write, Access::Unknown][usize::from(acc % 3)];
        let rel = mode & 1 != 0;
        let gpa = if rel {
            gpa_base.wrapping_add(addr)
        } else {
            addr
        };
        let host = if rel {
            host_base.wrapping_add(addr)
        } else {
            addr
        };
        let (ev, at) = match kind % 5 {
            evidence::MMIO => (
                FaultEvidence::Mmio {
                    gpa,
                    len: u32::from(mode >> 1),
                    access,
                },
                Some((win.offset_of_gpa(gpa), access)),
            ),
            evidence::DECODED => (
                FaultEvidence::Decoded {
                    gpa,
                    len: u32::from(mode >> 1),
                    access,
                },
                Some((win.offset_of_gpa(gpa), access)),
            ),
            evidence::EFAULT_ADDR => (
                FaultEvidence::Efault {
                    memory_fault: Some((gpa, u64::from(mode))),
                },
                Some((win.offset_of_gpa(gpa), Access::Unknown)),
            ),
            evidence::EFAULT_BARE => (FaultEvidence::Efault { memory_fault: None }, None),
            _ => (
                FaultEvidence::Sigbus { host_addr: host },
                Some((win.offset_of_host(host), Access::Unknown)),
            ),
        };
        // What the table held, and the sizes seen, before the search records new ones.
        let before: Vec<(Mapping, u64)> = table
            .snapshot()
            .into_iter()
            .map(|m| {
                let seen = m.size_seen.load(Ordering::Relaxed);
                (m, seen)
            })
            .collect();
        let c = classify(&ev, &win, &table, file_size);
        match at {
            Some((off, access)) => check_at(&win, &table, &ops, &sizes, off, access, &c),
            None => check_bare(&win, &before, &sizes, &c),
        }
    }
}

fn size_of(sizes: &[Option<u64>; FILES], m: &Mapping) -> Option<u64> {
    sizes[m.identity.ino as usize]
}

/// Checks a classification of evidence naming window offset `off` (None: outside).
fn check_at(
    win: &WindowGeometry,
    table: &MappingTable,
    ops: &[Op],
    sizes: &[Option<u64>; FILES],
    off: Option<u64>,
    access: Access,
    c: &Classification,
) {
    let Some(off) = off else {
        assert!(
            matches!(c, Classification::NotDax),
            "outside the window: {c:?}"
        );
        return;
    };
    let gpa = win.gpa_base + off;
    let page = off / PAGE_SIZE;
    let model = model_at(ops, page);
    let live = table.lookup(off);
    match (&live, model) {
        (None, None) => {}
        (Some(m), Some((file, fo, w))) => {
            assert_eq!(
                m.identity.ino, file as u64,
                "table vs model: file at {off:#x}"
            );
            assert_eq!(
                m.file_offset + (off - m.window_offset),
                fo + off % PAGE_SIZE,
                "table vs model: file offset at {off:#x}"
            );
            assert_eq!(m.writable, w, "table vs model: writable at {off:#x}");
        }
        _ => panic!("table {live:?} vs model {model:?} at {off:#x}"),
    }
    match (live, c) {
        (
            Some(m),
            Classification::Backed {
                mapping,
                gpa: g,
                access: a,
            },
        ) => {
            let fo = m.file_offset + (off - m.window_offset);
            let s = size_of(sizes, &m).expect("backed needs a size");
            assert!(fo < round_up(s), "{fo:#x} is past the end {s:#x}");
            assert!(
                access != Access::Write || m.writable,
                "a store to a read-only page"
            );
            assert_eq!(
                (*g, *a, mapping.window_offset),
                (gpa, access, m.window_offset)
            );
        }
        (Some(m), Classification::ReadOnlyWrite { mapping, gpa: g }) => {
            let fo = m.file_offset + (off - m.window_offset);
            let s = size_of(sizes, &m).expect("read-only write needs a size");
            assert!(fo < round_up(s));
            assert!(access == Access::Write && !m.writable);
            assert_eq!((*g, mapping.window_offset), (gpa, m.window_offset));
        }
        (Some(m), Classification::TruncatedPage(t)) => {
            let fo = m.file_offset + (off - m.window_offset);
            let s = size_of(sizes, &m);
            assert!(
                s.is_none_or(|s| fo >= round_up(s)),
                "{fo:#x} is inside {s:?}"
            );
            assert_eq!(t.located, Located::Exact);
            assert_eq!(
                (t.gpa, t.window_offset, t.file_offset, t.file_size, t.access),
                (gpa, off, fo, s, access)
            );
            assert_eq!(t.mapping.window_offset, m.window_offset);
            let (start, len) = t.lost_range();
            assert!(
                start >= m.window_offset && start + len == m.end(),
                "{start:#x}+{len:#x}"
            );
            assert!(
                start <= off - off % PAGE_SIZE,
                "the lost range misses the faulting page"
            );
        }
        (
            None,
            Classification::UnmappedWindowAccess {
                gpa: g,
                window_offset,
                access: a,
            },
        ) => assert_eq!((*g, *window_offset, *a), (gpa, off, access)),
        (None, Classification::TruncatedPage(t)) => {
            assert_eq!(t.located, Located::Unmapped);
            assert!(
                t.mapping.contains(off),
                "the unmapped range does not cover {off:#x}"
            );
            let fo = t.mapping.file_offset + (off - t.mapping.window_offset);
            let s = size_of(sizes, &t.mapping).expect("unmapped blame needs a size");
            assert!(fo >= round_up(s), "{fo:#x} is inside {s:#x}");
            assert_eq!((t.gpa, t.window_offset, t.file_offset), (gpa, off, fo));
            let (start, len) = t.lost_range();
            assert!(start >= t.mapping.window_offset && start + len == t.mapping.end());
        }
        (live, c) => panic!("at {off:#x} (live {live:?}): {c:?}"),
    }
}

/// Checks a bare `EFAULT`'s classification: the candidates are the mappings that lost pages
/// their file had while mapped (from the size now up to the largest size seen).
fn check_bare(
    win: &WindowGeometry,
    before: &[(Mapping, u64)],
    sizes: &[Option<u64>; FILES],
    c: &Classification,
) {
    let lost: Vec<&Mapping> = before
        .iter()
        .filter(|(m, seen)| {
            let size = size_of(sizes, m);
            let seen = (*seen).max(size.unwrap_or(0));
            let first_lost = size.map_or(m.file_offset, |s| round_up(s).max(m.file_offset));
            first_lost < round_up(seen).min(m.file_offset + m.len)
        })
        .map(|(m, _)| m)
        .collect();
    match (lost.first(), c) {
        (None, Classification::NotDax) => {}
        (Some(first), Classification::TruncatedPage(t)) => {
            assert_eq!(
                t.located,
                Located::ByFileSize {
                    candidates: lost.len()
                }
            );
            assert_eq!(t.located.is_ambiguous(), lost.len() > 1);
            assert_eq!(t.mapping.window_offset, first.window_offset);
            assert!(
                first.contains(t.window_offset),
                "{:#x} outside the mapping",
                t.window_offset
            );
            assert_eq!(t.gpa, win.gpa_base + t.window_offset);
            assert_eq!(
                t.file_offset,
                first.file_offset + (t.window_offset - first.window_offset)
            );
            let s = size_of(sizes, first);
            assert!(s.is_none_or(|s| t.file_offset >= round_up(s)));
            assert_eq!(t.access, Access::Unknown);
        }
        (first, c) => panic!("bare EFAULT, first lost {first:?}: {c:?}"),
    }
}
