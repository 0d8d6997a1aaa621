//! The daemon's DAX state: validation of SETUPMAPPING / REMOVEMAPPING and the live mapping
//! table.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use thiserror::Error;
use vfsdax_protocol::dax::DAX_CHUNK_SIZE;
use vfsdax_protocol::fuse::flags::{SETUPMAPPING_FLAG_READ, SETUPMAPPING_FLAG_WRITE};

use super::frontend::{self, Decline, FrontendMapping, Plan, ProbeError, ProbeOutcome};
use super::Mapper;

/// Errors of DAX mapping requests.
#[derive(Debug, Error)]
pub enum DaxError {
    /// The daemon has no DAX window (`--cache-size 0`).
    #[error("DAX is not enabled")]
    Disabled,
    /// A zero-length range.
    #[error("zero-length mapping")]
    ZeroLength,
    /// An offset or length not a multiple of the mapping alignment.
    #[error(
        "mapping (file offset {foffset:#x}, window offset {moffset:#x}, length {len:#x}) is not \
         aligned to {alignment:#x}"
    )]
    Unaligned {
        /// File offset (0 for REMOVEMAPPING).
        foffset: u64,
        /// Window offset.
        moffset: u64,
        /// Length.
        len: u64,
        /// The alignment.
        alignment: u64,
    },
    /// An offset plus length that does not fit in 64 bits (or, for files, in `off_t`).
    #[error("offset {offset:#x} plus length {len:#x} overflows")]
    Overflow {
        /// The offset.
        offset: u64,
        /// The length.
        len: u64,
    },
    /// A range outside the window.
    #[error("range {moffset:#x}+{len:#x} lies outside the window of size {window_size:#x}")]
    OutOfWindow {
        /// Window offset.
        moffset: u64,
        /// Length.
        len: u64,
        /// Window size.
        window_size: u64,
    },
    /// Flag bits other than `FUSE_SETUPMAPPING_FLAG_READ | _WRITE`.
    #[error("unknown SETUPMAPPING flags {flags:#x}")]
    UnknownFlags {
        /// The flags.
        flags: u64,
    },
    /// A writable mapping of a file that is not open for writing.
    #[error("a writable mapping was asked of a file not open for writing")]
    NotWritable,
    /// The frontend cannot map this range, so it was not asked.
    #[error("the mapping was declined")]
    Declined(#[source] Decline),
    /// The frontend refused or failed the request.
    #[error("the frontend did not carry out the mapping request")]
    Mapper(#[source] io::Error),
}

impl DaxError {
    /// The errno to reply to the guest with.
    pub fn errno(&self) -> i32 {
        match self {
            DaxError::Disabled => libc::ENOSYS,
            DaxError::ZeroLength
            | DaxError::Unaligned { .. }
            | DaxError::Overflow { .. }
            | DaxError::OutOfWindow { .. }
            | DaxError::UnknownFlags { .. } => libc::EINVAL,
            DaxError::NotWritable => libc::EACCES,
            DaxError::Declined(_) => libc::EOPNOTSUPP,
            DaxError::Mapper(e) => match e.raw_os_error() {
                Some(n) if (1..4096).contains(&n) => n,
                _ => libc::EIO,
            },
        }
    }
}

/// The host page size in bytes (the default mapping alignment).
pub fn host_page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions; it only reads a system value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

fn check_window_range(
    window_size: u64,
    alignment: u64,
    foffset: u64,
    moffset: u64,
    len: u64,
) -> Result<(), DaxError> {
    if window_size == 0 {
        return Err(DaxError::Disabled);
    }
    if len == 0 {
        return Err(DaxError::ZeroLength);
    }
    if alignment == 0
        || !moffset.is_multiple_of(alignment)
        || !len.is_multiple_of(alignment)
        || !foffset.is_multiple_of(alignment)
    {
        return Err(DaxError::Unaligned {
            foffset,
            moffset,
            len,
            alignment,
        });
    }
    let end = moffset.checked_add(len).ok_or(DaxError::Overflow {
        offset: moffset,
        len,
    })?;
    if end > window_size {
        return Err(DaxError::OutOfWindow {
            moffset,
            len,
            window_size,
        });
    }
    Ok(())
}

/// Checks a `FUSE_SETUPMAPPING`: DAX enabled, non-zero length; `foffset`, `moffset` and `len`
/// multiples of `alignment`; `moffset + len` inside the window and `foffset + len` inside `off_t`,
/// without overflow; only the READ and WRITE flags; WRITE only if the file is open for writing.
pub fn validate_setup(
    window_size: u64,
    alignment: u64,
    foffset: u64,
    moffset: u64,
    len: u64,
    flags: u64,
    handle_writable: bool,
) -> Result<(), DaxError> {
    check_window_range(window_size, alignment, foffset, moffset, len)?;
    let file_end = foffset.checked_add(len).ok_or(DaxError::Overflow {
        offset: foffset,
        len,
    })?;
    if file_end > i64::MAX as u64 {
        return Err(DaxError::Overflow {
            offset: foffset,
            len,
        });
    }
    if flags & !(SETUPMAPPING_FLAG_READ | SETUPMAPPING_FLAG_WRITE) != 0 {
        return Err(DaxError::UnknownFlags { flags });
    }
    if flags & SETUPMAPPING_FLAG_WRITE != 0 && !handle_writable {
        return Err(DaxError::NotWritable);
    }
    Ok(())
}

/// Checks one `FUSE_REMOVEMAPPING` entry: DAX enabled, non-zero aligned length and offset, inside
/// the window, no overflow.
pub fn validate_remove(
    window_size: u64,
    alignment: u64,
    moffset: u64,
    len: u64,
) -> Result<(), DaxError> {
    check_window_range(window_size, alignment, 0, moffset, len)
}

/// One live mapping of the window: one chunk, as the frontend holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveMapping {
    /// Offset in the window (a multiple of the chunk size).
    pub moffset: u64,
    /// Length in bytes (one chunk).
    pub len: u64,
    /// The guest's node id of the file.
    pub inode: u64,
    /// The file handle the guest named, if any (Linux guests send none).
    pub handle: Option<u64>,
    /// Offset in the file of the byte at `moffset`.
    pub foffset: u64,
    /// Whether the guest asked for a writable mapping.
    pub writable: bool,
    /// Whether the frontend's mapping accepts stores (a later writable SETUPMAPPING of the same
    /// range needs no remapping).
    pub window_writable: bool,
    /// The guest forgot the node id while the chunk was still mapped: the next request that
    /// holds the request order unmaps it.
    pub orphaned: bool,
}

impl LiveMapping {
    /// One past the last window offset (saturating).
    pub fn end(&self) -> u64 {
        self.moffset.saturating_add(self.len)
    }

    /// Whether window offset `moffset` lies inside the mapping.
    pub fn contains(&self, moffset: u64) -> bool {
        moffset >= self.moffset && moffset < self.end()
    }
}

/// A `FUSE_SETUPMAPPING` request, resolved to an open file.
#[derive(Clone, Copy, Debug)]
pub struct SetupMapping<'a> {
    /// The guest's node id of the file.
    pub inode: u64,
    /// The file handle the guest named, if any.
    pub handle: Option<u64>,
    /// The file to map (the handle's, or one the daemon opened for the inode).
    pub file: &'a File,
    /// Whether `file` is open for writing.
    pub file_writable: bool,
    /// Offset in the file.
    pub foffset: u64,
    /// Offset in the window.
    pub moffset: u64,
    /// Length.
    pub len: u64,
    /// `FUSE_SETUPMAPPING_FLAG_*`.
    pub flags: u64,
    /// How the frontend is asked ([`super::frontend::plan`]).
    pub plan: Plan,
}

/// Counters of the DAX requests served, for the log and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaxStats {
    /// SETUPMAPPING requests that succeeded.
    pub setups: u64,
    /// SETUPMAPPING requests refused (invalid, declined, or failed by the frontend).
    pub setups_refused: u64,
    /// REMOVEMAPPING requests that succeeded.
    pub removes: u64,
    /// Chunks mapped at the frontend (`SHMEM_MAP` sent and accepted).
    pub chunks_mapped: u64,
    /// Chunks a SETUPMAPPING found already mapped as asked (no frontend request).
    pub chunks_reused: u64,
    /// Chunks unmapped at the frontend (`SHMEM_UNMAP` sent and accepted).
    pub chunks_unmapped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    setups: AtomicU64,
    setups_refused: AtomicU64,
    removes: AtomicU64,
    chunks_mapped: AtomicU64,
    chunks_reused: AtomicU64,
    chunks_unmapped: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The DAX window as the daemon sees it: size, chunk size, what the frontend can map, and the
/// live mappings.
///
/// The table mirrors the frontend exactly, one entry per chunk it holds, as the vhost-user
/// spec wants it: `SHMEM_MAP` never lands on a live mapping (the old one is unmapped first, or
/// reused when it already is what the guest asks for) and `SHMEM_UNMAP` always names one whole
/// earlier mapping.
#[derive(Debug)]
pub struct DaxState {
    window_size: u64,
    chunk: u64,
    frontend: AtomicU8,
    /// Serializes the requests that talk to the frontend, so the table changes in the order
    /// the frontend saw them.
    ops: Mutex<()>,
    table: RwLock<BTreeMap<u64, LiveMapping>>,
    counters: Counters,
}

impl DaxState {
    /// State for a window of `window_size` bytes (0: DAX disabled) mapped in chunks of `chunk`
    /// bytes (every offset and length a multiple of it).
    pub fn new(window_size: u64, chunk: u64) -> Self {
        DaxState {
            window_size,
            chunk,
            frontend: AtomicU8::new(FrontendMapping::Unknown.to_u8()),
            ops: Mutex::new(()),
            table: RwLock::new(BTreeMap::new()),
            counters: Counters::default(),
        }
    }

    /// State for a window of `window_size` bytes in the chunks Linux guests map
    /// ([`DAX_CHUNK_SIZE`], 2 MiB).
    pub fn with_linux_chunks(window_size: u64) -> Self {
        Self::new(window_size, DAX_CHUNK_SIZE)
    }

    /// Window size in bytes (0 when DAX is disabled).
    pub fn window_size(&self) -> u64 {
        self.window_size
    }

    /// The chunk size (the mapping alignment) in bytes.
    pub fn alignment(&self) -> u64 {
        self.chunk
    }

    /// Whether there is a window.
    pub fn is_enabled(&self) -> bool {
        self.window_size != 0
    }

    /// What the frontend can map, as last probed.
    pub fn frontend(&self) -> FrontendMapping {
        FrontendMapping::from_u8(self.frontend.load(Ordering::Acquire))
    }

    /// Records what the frontend can map (a probe, or a new connection: `Unknown`).
    pub fn set_frontend(&self, f: FrontendMapping) {
        self.frontend.store(f.to_u8(), Ordering::Release);
    }

    /// The counters so far.
    pub fn stats(&self) -> DaxStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DaxStats {
            setups: get(&c.setups),
            setups_refused: get(&c.setups_refused),
            removes: get(&c.removes),
            chunks_mapped: get(&c.chunks_mapped),
            chunks_reused: get(&c.chunks_reused),
            chunks_unmapped: get(&c.chunks_unmapped),
        }
    }

    /// Counts a SETUPMAPPING refused before it reached [`DaxState::setup_mapping`].
    pub fn count_refused_setup(&self) {
        bump(&self.counters.setups_refused);
    }

    fn serialize(&self) -> MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<u64, LiveMapping>> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, LiveMapping>> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Unmaps chunk `moffset` at the frontend and forgets it. Call with the request order held.
    fn unmap_chunk(&self, mapper: &dyn Mapper, moffset: u64) -> Result<(), DaxError> {
        mapper
            .unmap(moffset, self.chunk)
            .map_err(DaxError::Mapper)?;
        self.write().remove(&moffset);
        bump(&self.counters.chunks_unmapped);
        Ok(())
    }

    /// Unmaps the chunks of forgotten node ids. Call with the request order held. A failure
    /// leaves the chunk recorded (and orphaned) for the next try.
    fn reap_orphans(&self, mapper: &dyn Mapper) {
        let orphans: Vec<u64> = self
            .read()
            .values()
            .filter(|m| m.orphaned)
            .map(|m| m.moffset)
            .collect();
        for mo in orphans {
            let _ = self.unmap_chunk(mapper, mo);
        }
    }

    /// Validates `req` and maps it chunk by chunk: a chunk already mapped to the same file range
    /// with the access asked for is kept as it is; any other live chunk there is unmapped
    /// first. On an error the chunks done so far stay mapped (and recorded); the table always
    /// matches the frontend.
    pub fn setup_mapping(
        &self,
        mapper: &dyn Mapper,
        req: &SetupMapping<'_>,
    ) -> Result<(), DaxError> {
        let r = self.setup_inner(mapper, req);
        bump(match r {
            Ok(()) => &self.counters.setups,
            Err(_) => &self.counters.setups_refused,
        });
        r
    }

    fn setup_inner(&self, mapper: &dyn Mapper, req: &SetupMapping<'_>) -> Result<(), DaxError> {
        validate_setup(
            self.window_size,
            self.chunk,
            req.foffset,
            req.moffset,
            req.len,
            req.flags,
            req.file_writable,
        )?;
        let write = req.flags & SETUPMAPPING_FLAG_WRITE != 0;
        if req.plan.map_writable && !req.file_writable {
            return Err(DaxError::NotWritable);
        }
        let _order = self.serialize();
        self.reap_orphans(mapper);
        for mo in (req.moffset..req.moffset + req.len).step_by(self.chunk as usize) {
            let fo = req.foffset + (mo - req.moffset);
            let existing = self.read().get(&mo).copied();
            if let Some(old) = existing {
                let same = !old.orphaned && old.inode == req.inode && old.foffset == fo;
                if same && (!write || old.window_writable) {
                    let mut table = self.write();
                    if let Some(m) = table.get_mut(&mo) {
                        m.writable |= write;
                        m.handle = req.handle;
                    }
                    bump(&self.counters.chunks_reused);
                    continue;
                }
                self.unmap_chunk(mapper, mo)?;
            }
            mapper
                .map(mo, self.chunk, req.file, fo, req.plan.map_writable)
                .map_err(DaxError::Mapper)?;
            bump(&self.counters.chunks_mapped);
            self.write().insert(
                mo,
                LiveMapping {
                    moffset: mo,
                    len: self.chunk,
                    inode: req.inode,
                    handle: req.handle,
                    foffset: fo,
                    writable: write,
                    window_writable: req.plan.window_writable,
                    orphaned: false,
                },
            );
        }
        Ok(())
    }

    /// Validates every `(moffset, len)` entry of a `FUSE_REMOVEMAPPING` batch first (a bad batch
    /// changes nothing), then unmaps the live chunks inside them in order, stopping at the first
    /// failure. Chunks that are not mapped are skipped (nothing is sent for them).
    pub fn remove_mappings(
        &self,
        mapper: &dyn Mapper,
        entries: &[(u64, u64)],
    ) -> Result<(), DaxError> {
        for &(moffset, len) in entries {
            validate_remove(self.window_size, self.chunk, moffset, len)?;
        }
        let _order = self.serialize();
        self.reap_orphans(mapper);
        for &(moffset, len) in entries {
            let live: Vec<u64> = self
                .read()
                .range(moffset..moffset + len)
                .map(|(&k, _)| k)
                .collect();
            for mo in live {
                self.unmap_chunk(mapper, mo)?;
            }
        }
        bump(&self.counters.removes);
        Ok(())
    }

    /// [`DaxState::remove_mappings`] of one range.
    pub fn remove_mapping(
        &self,
        mapper: &dyn Mapper,
        moffset: u64,
        len: u64,
    ) -> Result<(), DaxError> {
        self.remove_mappings(mapper, &[(moffset, len)])
    }

    /// The guest forgot node id `inode`: its live chunks are orphaned, and unmapped now if no
    /// request is talking to the frontend, else by the next one that does. Returns how many
    /// there were.
    ///
    /// Never waits for the request order: a FORGET (on the high-priority queue) must not wait
    /// behind a SETUPMAPPING that is waiting for the frontend.
    pub fn forget_inode(&self, mapper: &dyn Mapper, inode: u64) -> usize {
        let n = {
            let mut table = self.write();
            let mut n = 0;
            for m in table
                .values_mut()
                .filter(|m| m.inode == inode && !m.orphaned)
            {
                m.orphaned = true;
                n += 1;
            }
            n
        };
        if n > 0 {
            if let Ok(_order) = self.ops.try_lock() {
                self.reap_orphans(mapper);
            }
        }
        n
    }

    /// Unmaps every live chunk (the FUSE session ended: DESTROY, or a new INIT) and forgets
    /// it, whether or not the frontend accepted the unmap. Returns how many there were, or the
    /// first failure.
    pub fn unmap_all(&self, mapper: &dyn Mapper) -> Result<usize, DaxError> {
        let _order = self.serialize();
        let doomed: Vec<u64> = self.read().keys().copied().collect();
        let mut first_error = None;
        for &mo in &doomed {
            if let Err(e) = self.unmap_chunk(mapper, mo) {
                first_error.get_or_insert(e);
            }
        }
        self.write().clear();
        match first_error {
            Some(e) => Err(e),
            None => Ok(doomed.len()),
        }
    }

    /// Forgets every mapping without unmapping (the frontend and its window went away; the
    /// frontend drops its mappings itself at a device reset); returns how many there were.
    pub fn clear(&self) -> usize {
        let _order = self.serialize();
        let mut table = self.write();
        let n = table.len();
        table.clear();
        n
    }

    /// Probes what the frontend can map ([`super::frontend::probe`]) at the window's last chunk
    /// and records it. Call at the start of a FUSE session, when nothing is mapped (after
    /// [`DaxState::unmap_all`]).
    pub fn probe_frontend(&self, mapper: &dyn Mapper) -> Result<ProbeOutcome, ProbeError> {
        let _order = self.serialize();
        let last = self.window_size.saturating_sub(self.chunk);
        let out = frontend::probe(mapper, last, self.chunk)?;
        self.set_frontend(out.frontend);
        Ok(out)
    }

    /// The live mapping containing window offset `moffset` (for fault reports).
    pub fn lookup(&self, moffset: u64) -> Option<LiveMapping> {
        self.read()
            .range(..=moffset)
            .next_back()
            .map(|(_, m)| *m)
            .filter(|m| m.contains(moffset))
    }

    /// All live mappings in window order.
    pub fn snapshot(&self) -> Vec<LiveMapping> {
        self.read().values().copied().collect()
    }

    /// Number of live mappings (chunks).
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether there are no live mappings.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
