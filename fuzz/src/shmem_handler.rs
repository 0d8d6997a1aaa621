//! `shmem_handler`: sequences of `SHMEM_MAP` / `SHMEM_UNMAP` requests with arbitrary
//! `VhostUserMMap` fields, served by `vmm-glue`'s [`DaxRequestHandler`] (through the vhost
//! `VhostUserFrontendReqHandler` trait, as the request thread calls it) on a real 4 MiB
//! [`DaxWindow`] (two 2 MiB chunks: the handler accepts only ranges inside one chunk that start
//! or end at its boundary), with memfds as the mapped files.
//!
//! Files a request can carry: a 16 KiB read-write memfd, a read-only and a write-only
//! descriptor of it, an empty memfd, a write-sealed memfd (a writable shared mapping of it
//! fails in `mmap`), an `O_PATH` descriptor (`mmap` fails) and a directory (refused: not a
//! regular file). A record can also resize the first memfd.
//!
//! Checked against a page model of the window (what each page maps: file,
//! file offset, writable; updated by the rules the handler documents: a success maps or
//! unmaps, a refusal (bad fields, access mode, not a regular file) changes nothing, a failed
//! `mmap` leaves the range unmapped):
//! - the handler's answer: success exactly when the model's validation accepts the request;
//!   an accepted range lies inside one chunk, anchored at its start or end (checked apart from
//!   the glue's own validation);
//! - the mapping table, after every request: each page's entry (file identity, file offset,
//!   writable);
//! - at the end of the input, the host mappings themselves (of the pages the input named and
//!   the first and last of each chunk, those that start or end a run mapped alike or lie near
//!   their file's end: see `Harness::host_checked`), read and written through `process_vm_readv/writev` on this
//!   process: a mapped page inside its file reads the file's bytes and takes a write only when
//!   writable; any other page faults.
//!
//! Input: records of `kind: u8` then its fields (see [`run`]).

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;

use vfsdax_protocol::dax::DAX_CHUNK_SIZE;
use vfsdax_vmm_glue::dax::handler::{validate_map_request, validate_unmap_request, ShmemRequest};
use vfsdax_vmm_glue::dax::window::check_access;
use vfsdax_vmm_glue::dax::{DaxRequestHandler, DaxWindow, FileIdentity};
use vhost::vhost_user::message::VhostUserMMap;
use vhost::vhost_user::VhostUserFrontendReqHandler;

use crate::input::Input;

/// Page size (the host's; x86-64).
pub const PAGE: u64 = 4096;
/// Pages in a 2 MiB chunk.
pub const CHUNK_PAGES: u64 = DAX_CHUNK_SIZE / PAGE;
/// Pages in the window: two chunks.
pub const PAGES: u64 = 2 * CHUNK_PAGES;
/// Size of the main memfd at the start of each input.
pub const FILE_LEN: u64 = 4 * PAGE;
/// Most records per input.
pub const MAX_RECORDS: usize = 32;

/// Record kinds (`kind % 4`).
pub mod kind {
    /// `SHMEM_MAP`: `file: u8`, then the fields.
    pub const MAP: u8 = 0;
    /// `SHMEM_UNMAP`: the fields.
    pub const UNMAP: u8 = 1;
    /// Resize the main memfd: `pages: u8`.
    pub const RESIZE: u8 = 2;
    /// `SHMEM_MAP` with small page-unit fields: `file: u8, at: u8, file_page: u8,
    /// pages: u8, writable: u8`; `at` places the range ([`super::map_pages_offset`]).
    pub const MAP_PAGES: u8 = 3;
}

/// `at` of a [`kind::MAP_PAGES`] record: bit 7 picks the chunk, bit 6 anchors the range at the
/// chunk's end instead of its start, the low 6 bits move it that many pages away from the
/// anchor (inward; 0 gives a range the handler accepts).
pub fn map_pages_at(chunk: u8, at_end: bool, shift: u8) -> u8 {
    (chunk & 1) << 7 | u8::from(at_end) << 6 | (shift & 0x3f)
}

/// The window offset of a [`kind::MAP_PAGES`] range of `pages` pages placed by `at`.
pub fn map_pages_offset(at: u8, pages: u64) -> u64 {
    let chunk = u64::from(at >> 7) * CHUNK_PAGES;
    let shift = u64::from(at & 0x3f);
    let page = if at & 0x40 == 0 {
        chunk + shift
    } else {
        (chunk + CHUNK_PAGES).saturating_sub(pages + shift)
    };
    page * PAGE
}

/// The fields of a [`kind::MAP`] / [`kind::UNMAP`] record: `shmid: u8, fd_offset: u64,
/// shm_offset: u64, len: u64, flags: u64`.
pub fn fields(shmid: u8, fd_offset: u64, shm_offset: u64, len: u64, flags: u64) -> Vec<u8> {
    let mut v = vec![shmid];
    for x in [fd_offset, shm_offset, len, flags] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// What the model says a page holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Page {
    file: usize,
    file_offset: u64,
    writable: bool,
}

/// The byte at `offset` of file `file` (the main memfd's views share its content).
fn content(file: usize, offset: u64) -> u8 {
    (offset as u8)
        .wrapping_mul(13)
        .wrapping_add(file as u8 * 50 + 1)
}

fn memfd(name: &std::ffi::CStr, flags: libc::c_uint) -> File {
    // SAFETY: memfd_create takes a NUL-terminated name that outlives the call; the result is a
    // fresh descriptor owned by the File.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    unsafe { File::from_raw_fd(fd) }
}

fn reopen(f: &File, flags: i32) -> File {
    let path = format!("/proc/self/fd/{}\0", f.as_raw_fd());
    // SAFETY: `path` is NUL-terminated and outlives the call; the result is a fresh descriptor.
    let fd = unsafe { libc::open(path.as_ptr().cast(), flags | libc::O_CLOEXEC) };
    assert!(fd >= 0, "reopen: {}", io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    unsafe { File::from_raw_fd(fd) }
}

struct Files {
    /// 0: main rw memfd, 1: read-only view, 2: write-only view, 3: empty memfd, 4: sealed memfd,
    /// 5: O_PATH of the main memfd, 6: a directory.
    fds: Vec<File>,
    /// The content identity of each descriptor (views of the main memfd are file 0).
    backing: Vec<usize>,
    identity: Vec<FileIdentity>,
    /// Sizes of the descriptors' files (the main memfd's changes with `resize`).
    sizes: Vec<u64>,
}

impl Files {
    fn new() -> Files {
        let main = memfd(c"vfsdax-fuzz-main", libc::MFD_CLOEXEC);
        let ro = reopen(&main, libc::O_RDONLY);
        let wo = reopen(&main, libc::O_WRONLY);
        let empty = memfd(c"vfsdax-fuzz-empty", libc::MFD_CLOEXEC);
        let sealed = memfd(
            c"vfsdax-fuzz-sealed",
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        );
        let bytes: Vec<u8> = (0..FILE_LEN).map(|o| content(4, o)).collect();
        sealed
            .write_all_at(&bytes, 0)
            .expect("fill the sealed memfd");
        // SAFETY: F_ADD_SEALS takes an integer argument.
        let r = unsafe {
            libc::fcntl(
                sealed.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            )
        };
        assert_eq!(r, 0, "seal: {}", io::Error::last_os_error());
        let opath = reopen(&main, libc::O_PATH);
        let dir = File::open("/").expect("open /");
        let fds = vec![main, ro, wo, empty, sealed, opath, dir];
        let identity = fds
            .iter()
            .map(|f| {
                let m = f.metadata().expect("fstat");
                FileIdentity {
                    dev: m.dev(),
                    ino: m.ino(),
                }
            })
            .collect();
        let sizes = fds
            .iter()
            .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
            .collect();
        Files {
            fds,
            backing: vec![0, 0, 0, 3, 4, 0, 6],
            identity,
            sizes,
        }
    }

    /// Gives the main memfd `pages` pages of its content.
    fn resize(&mut self, pages: u64) {
        let main = &self.fds[0];
        if self.sizes[0] == pages * PAGE {
            return;
        }
        main.set_len(0).expect("truncate");
        let bytes: Vec<u8> = (0..pages * PAGE).map(|o| content(0, o)).collect();
        main.write_all_at(&bytes, 0).expect("fill");
        self.sizes[0] = pages * PAGE;
    }
}

struct Harness {
    window: Arc<DaxWindow>,
    files: Files,
    model: Vec<Option<Page>>,
    /// The pages the input named (checked on the host at its end).
    touched: Vec<bool>,
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

/// Runs one input: up to [`MAX_RECORDS`] records, each `kind: u8` (mod 4, see [`kind`]) and
/// its fields; `file` picks one of the seven descriptors (mod 7).
pub fn run(data: &[u8]) {
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        h.get_or_insert_with(Harness::new).run(data);
    });
}

impl Harness {
    fn new() -> Harness {
        Harness {
            window: Arc::new(DaxWindow::new(PAGES * PAGE).expect("window")),
            files: Files::new(),
            model: vec![None; PAGES as usize],
            touched: vec![false; PAGES as usize],
        }
    }

    fn run(&mut self, data: &[u8]) {
        // A fresh start: nothing mapped, nothing remembered, the main file 4 pages long.
        self.window.unmap(0, PAGES * PAGE).expect("unmap all");
        self.window.table().forget_unmapped();
        self.model.fill(None);
        self.touched.fill(false);
        // The first and last page of each chunk are always checked on the host.
        for c in 0..PAGES / CHUNK_PAGES {
            self.touched[(c * CHUNK_PAGES) as usize] = true;
            self.touched[((c + 1) * CHUNK_PAGES - 1) as usize] = true;
        }
        self.files.resize(FILE_LEN / PAGE);
        let handler = DaxRequestHandler::new(self.window.clone());
        let mut input = Input::new(data);
        for _ in 0..MAX_RECORDS {
            match self.record(&handler, &mut input) {
                Some(pages) => {
                    self.touched[pages.clone()].fill(true);
                    self.check(pages, false);
                }
                None => break,
            }
        }
        self.check(0..PAGES as usize, true);
    }

    /// Applies one record; returns the window pages it may have changed (`None`: the input ran
    /// out).
    fn record(
        &mut self,
        handler: &DaxRequestHandler,
        input: &mut Input<'_>,
    ) -> Option<std::ops::Range<usize>> {
        match input.u8()? % 4 {
            kind::MAP => {
                let file = usize::from(input.u8()?) % self.files.fds.len();
                let req = ShmemRequest {
                    shmid: input.u8()?,
                    fd_offset: input.u64()?,
                    shm_offset: input.u64()?,
                    len: input.u64()?,
                    flags: input.u64()?,
                };
                self.map(handler, file, req);
                Some(pages_of(&req))
            }
            kind::UNMAP => {
                let req = ShmemRequest {
                    shmid: input.u8()?,
                    fd_offset: input.u64()?,
                    shm_offset: input.u64()?,
                    len: input.u64()?,
                    flags: input.u64()?,
                };
                self.unmap(handler, req);
                Some(pages_of(&req))
            }
            kind::RESIZE => {
                let pages = u64::from(input.u8()? % 9);
                self.files.resize(pages);
                // The table does not change; the host check covers the mapped pages (named
                // by their requests).
                Some(0..0)
            }
            _ => {
                let file = usize::from(input.u8()?) % self.files.fds.len();
                let at = input.u8()?;
                let fd_offset = u64::from(input.u8()?) * PAGE;
                let pages = u64::from(input.u8()?);
                let req = ShmemRequest {
                    shmid: 0,
                    shm_offset: map_pages_offset(at, pages),
                    fd_offset,
                    len: pages * PAGE,
                    flags: u64::from(input.u8()? & 1),
                };
                self.map(handler, file, req);
                Some(pages_of(&req))
            }
        }
    }

    fn wire(req: &ShmemRequest) -> VhostUserMMap {
        VhostUserMMap {
            shmid: req.shmid,
            fd_offset: req.fd_offset,
            shm_offset: req.shm_offset,
            len: req.len,
            flags: req.flags,
            ..Default::default()
        }
    }

    fn map(&mut self, handler: &DaxRequestHandler, file: usize, req: ShmemRequest) {
        let size = PAGES * PAGE;
        let fd = &self.files.fds[file];
        let result = handler.shmem_map(&Self::wire(&req), fd);
        // The model: validation, then the descriptor's access mode, then mmap.
        let valid = validate_map_request(&req, size, PAGE).is_ok();
        // SAFETY: F_GETFL only reads the descriptor's status flags.
        let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        // The directory is refused (not a regular file) like a bad access mode.
        let access_ok = check_access(fl, req.writable()).is_ok() && file != 6;
        let mmap_ok = match file {
            // O_PATH: mmap fails (EBADF).
            5 => false,
            // The sealed memfd refuses writable shared mappings (EPERM).
            4 => !req.writable(),
            _ => true,
        };
        let accepted = valid && access_ok && mmap_ok;
        if valid {
            // Inside one chunk, from its start or to its end.
            let within = req.shm_offset % DAX_CHUNK_SIZE;
            assert!(
                req.len > 0
                    && within + req.len <= DAX_CHUNK_SIZE
                    && (within == 0 || within + req.len == DAX_CHUNK_SIZE),
                "accepted a range that is not a chunk piece: {req:?}"
            );
        }
        assert_eq!(
            result.is_ok(),
            accepted,
            "SHMEM_MAP {req:?} of file {file}: {result:?} (valid {valid}, access {access_ok})"
        );
        let first = (req.shm_offset / PAGE) as usize;
        let pages = (req.len / PAGE) as usize;
        if accepted {
            for (i, p) in self.model[first..first + pages].iter_mut().enumerate() {
                *p = Some(Page {
                    file,
                    file_offset: req.fd_offset + i as u64 * PAGE,
                    writable: req.writable(),
                });
            }
        } else if valid && access_ok {
            // A failed mmap leaves the range inaccessible and out of the table.
            self.model[first..first + pages].fill(None);
        }
    }

    fn unmap(&mut self, handler: &DaxRequestHandler, req: ShmemRequest) {
        let result = handler.shmem_unmap(&Self::wire(&req));
        let valid = validate_unmap_request(&req, PAGES * PAGE, PAGE).is_ok();
        assert_eq!(result.is_ok(), valid, "SHMEM_UNMAP {req:?}: {result:?}");
        if valid {
            let first = (req.shm_offset / PAGE) as usize;
            let pages = (req.len / PAGE) as usize;
            self.model[first..first + pages].fill(None);
        }
    }

    /// Whether page `i` is read and written on the host at the end of the input: a page the
    /// input named that starts or ends a run of pages mapped alike (the same file at
    /// consecutive offsets, or nothing), or that lies near its file's end (files are at most 8
    /// pages). The pages inside a longer run behave as its ends do; leaving them out keeps an
    /// input that maps whole chunks from costing a thousand system calls.
    fn host_checked(&self, i: usize) -> bool {
        let continues = |a: &Option<Page>, b: &Option<Page>| match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.file == b.file
                    && a.writable == b.writable
                    && b.file_offset == a.file_offset.wrapping_add(PAGE)
            }
            _ => false,
        };
        let m = &self.model;
        self.touched[i]
            && (i == 0
                || i + 1 == m.len()
                || !continues(&m[i - 1], &m[i])
                || !continues(&m[i], &m[i + 1])
                || m[i].is_some_and(|p| p.file_offset <= 9 * PAGE))
    }

    /// Compares the table with the model over `pages`, as runs of pages mapped alike (the
    /// table may hold a run as several entries), and looks up the ends of each run; with
    /// `host`, the host mappings too (see [`Harness::host_checked`]).
    fn check(&self, pages: std::ops::Range<usize>, host: bool) {
        let table = self.window.table();
        let (lo, hi) = (pages.start as u64 * PAGE, pages.end as u64 * PAGE);
        let mut want = Vec::new();
        for (i, page) in self.model[pages.clone()].iter().enumerate() {
            if let Some(p) = page {
                let off = lo + i as u64 * PAGE;
                let id = self.files.identity[p.file];
                push_run(&mut want, (off, PAGE, id, p.file_offset, p.writable));
            }
        }
        let mut have = Vec::new();
        for m in table.snapshot() {
            let (s, e) = (m.window_offset.max(lo), m.end().min(hi));
            if s < e {
                let fo = m.file_offset + (s - m.window_offset);
                push_run(&mut have, (s, e - s, m.identity, fo, m.writable));
            }
        }
        assert_eq!(have, want, "table vs model over pages {pages:?}");
        for &(s, len, id, fo, w) in &want {
            for off in [s, s + len - PAGE] {
                let m = table.lookup(off).expect("lookup in a mapped run");
                assert_eq!(
                    (
                        m.identity,
                        m.file_offset + (off - m.window_offset),
                        m.writable
                    ),
                    (id, fo + (off - s), w),
                    "lookup at {off:#x}"
                );
            }
        }
        if !pages.is_empty() && self.model[pages.start].is_none() {
            assert!(table.lookup(lo).is_none(), "lookup at {lo:#x}");
        }
        if !host {
            return;
        }
        let base = self.window.host_addr();
        let sizes = &self.files.sizes;
        for i in pages.filter(|&i| self.host_checked(i)) {
            let addr = base + i as u64 * PAGE;
            let read = peek(addr);
            match self.model[i] {
                Some(p) if p.file_offset < sizes[self.files.backing[p.file]] => {
                    let backing = self.files.backing[p.file];
                    let want = content(backing, p.file_offset);
                    assert_eq!(read, Some(want), "page {i}: the file's byte");
                    assert_eq!(poke(addr, want), p.writable, "page {i}: takes a write");
                }
                _ => assert_eq!(read, None, "page {i} should fault"),
            }
        }
    }
}

/// A run of window pages mapped alike: window offset, length, file, file offset, writable.
type Run = (u64, u64, FileIdentity, u64, bool);

/// Appends `r` to `runs`, merged with the last run if it continues it.
fn push_run(runs: &mut Vec<Run>, r: Run) {
    if let Some(last) = runs.last_mut() {
        if last.0 + last.1 == r.0
            && last.2 == r.2
            && last.4 == r.4
            && last.3.checked_add(last.1) == Some(r.3)
        {
            last.1 += r.1;
            return;
        }
    }
    runs.push(r);
}

/// The window pages a request names (clamped to the window; empty if it lies outside).
fn pages_of(req: &ShmemRequest) -> std::ops::Range<usize> {
    let first = (req.shm_offset / PAGE).min(PAGES);
    let end = req
        .shm_offset
        .saturating_add(req.len)
        .div_ceil(PAGE)
        .min(PAGES);
    first as usize..end.max(first) as usize
}

/// This process's id.
fn pid() -> libc::pid_t {
    thread_local! {
        // SAFETY: getpid has no preconditions.
        static PID: libc::pid_t = unsafe { libc::getpid() };
    }
    PID.with(|p| *p)
}

/// Reads a byte of this process at `addr` without faulting (`None`: not readable).
fn peek(addr: u64) -> Option<u8> {
    let mut b = 0u8;
    let local = libc::iovec {
        iov_base: (&mut b as *mut u8).cast(),
        iov_len: 1,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: the local iovec points at `b`, which outlives the call; the remote one is only
    // accessed by the kernel, which reports a fault as an error instead of a signal.
    let n = unsafe { libc::process_vm_readv(pid(), &local, 1, &remote, 1, 0) };
    (n == 1).then_some(b)
}

/// Writes `v` to this process at `addr` without faulting; false: not writable.
fn poke(addr: u64, v: u8) -> bool {
    let mut b = v;
    let local = libc::iovec {
        iov_base: (&mut b as *mut u8).cast(),
        iov_len: 1,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: as in `peek`; the byte written is the one already there, so no Rust reference
    // into the window sees a change.
    let n = unsafe { libc::process_vm_writev(pid(), &local, 1, &remote, 1, 0) };
    n == 1
}
