//! The daemon's DAX state: the live mapping table, kept equal to what the frontend holds.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use vfsdax_protocol::dax::DAX_CHUNK_SIZE;
use vfsdax_protocol::fuse::flags::SETUPMAPPING_FLAG_WRITE;

use super::files::{FileId, FileWatch, Files, Guarding, NoWatch};
use super::frontend::{self, Decline, FrontendMapping, Plan, ProbeError, ProbeOutcome};
use super::validate::{validate_remove, validate_setup, DaxError};
use super::Mapper;

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
    /// The host file behind the chunk.
    pub file: FileId,
    /// Set once the truncation guard cut the chunk at the file's new end.
    pub cut: Option<Cut>,
}

/// A chunk the truncation guard cut: its first `kept` bytes stay mapped from the file (a
/// `SHMEM_MAP` of that length), the rest holds a substitute (a second `SHMEM_MAP`) when
/// `substituted`, else nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Bytes at the start of the chunk still mapped from the file.
    pub kept: u64,
    /// Whether the rest holds the substitute (zero pages).
    pub substituted: bool,
}

impl LiveMapping {
    /// The frontend mappings the chunk is made of, as `(window offset, length)`: one, or after a
    /// cut the kept part and the substitute (each only if not empty).
    pub fn pieces(&self) -> Vec<(u64, u64)> {
        match self.cut {
            None => vec![(self.moffset, self.len)],
            Some(c) => {
                let mut v = Vec::with_capacity(2);
                if c.kept > 0 {
                    v.push((self.moffset, c.kept));
                }
                if c.substituted && c.kept < self.len {
                    v.push((self.moffset + c.kept, self.len - c.kept));
                }
                v
            }
        }
    }

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
pub struct DaxState {
    window_size: u64,
    chunk: u64,
    frontend: AtomicU8,
    /// Serializes the requests that talk to the frontend, so the table changes in the order
    /// the frontend saw them.
    ops: Mutex<()>,
    table: RwLock<BTreeMap<u64, LiveMapping>>,
    /// The files behind live chunks (changed with the request order held).
    files: Mutex<Files>,
    watch: RwLock<Arc<dyn FileWatch>>,
    /// Decline mappings of files the watch cannot guard before a truncation.
    require_guard: AtomicBool,
    counters: Counters,
}

impl std::fmt::Debug for DaxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaxState")
            .field("window_size", &self.window_size)
            .field("chunk", &self.chunk)
            .field("frontend", &self.frontend())
            .field("mappings", &self.len())
            .finish_non_exhaustive()
    }
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
            files: Mutex::new(Files::default()),
            watch: RwLock::new(Arc::new(NoWatch)),
            require_guard: AtomicBool::new(false),
            counters: Counters::default(),
        }
    }

    /// Watches the files behind live mappings with `watch` from now on (the truncation guard);
    /// with `require_before`, a file `watch` cannot guard before a truncation is not mapped
    /// (the SETUPMAPPING is declined). Set before the first mapping.
    pub fn set_watch(&self, watch: Arc<dyn FileWatch>, require_before: bool) {
        *self.watch.write().unwrap_or_else(|e| e.into_inner()) = watch;
        self.require_guard.store(require_before, Ordering::Release);
    }

    fn watcher(&self) -> Arc<dyn FileWatch> {
        Arc::clone(&self.watch.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub(super) fn files(&self) -> MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of host files behind live mappings.
    pub fn file_count(&self) -> usize {
        self.files().len()
    }

    /// The descriptor kept for the host file `id`, if a live mapping holds it.
    pub fn kept_file(&self, id: FileId) -> Option<Arc<File>> {
        self.files().file(id).map(|(f, _)| f)
    }

    /// How the host file `id` is guarded against truncation, if a live mapping holds it.
    pub fn guarding(&self, id: FileId) -> Option<Guarding> {
        self.files().guarding(id)
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
        let Some(m) = self.read().get(&moffset).copied() else {
            return Ok(());
        };
        for (mo, len) in m.pieces() {
            mapper.unmap(mo, len).map_err(DaxError::Mapper)?;
        }
        self.write().remove(&moffset);
        self.files().drop_chunk(&*self.watcher(), m.file);
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
        let file_id = FileId::of(req.file).map_err(DaxError::Mapper)?;
        let _order = self.serialize();
        self.reap_orphans(mapper);
        // Watched before anything is mapped: a truncation from now on waits for this request.
        let watch = self.watcher();
        let guarding = self
            .files()
            .hold(&*watch, file_id, req.file, req.file_writable)
            .map_err(DaxError::Mapper)?;
        let r = self.map_chunks(mapper, req, write, file_id, guarding);
        self.files().release_if_unused(&*watch, file_id);
        r
    }

    fn map_chunks(
        &self,
        mapper: &dyn Mapper,
        req: &SetupMapping<'_>,
        write: bool,
        file_id: FileId,
        guarding: Guarding,
    ) -> Result<(), DaxError> {
        if guarding != Guarding::Before && self.require_guard.load(Ordering::Acquire) {
            return Err(DaxError::Declined(Decline::Unguarded));
        }
        if req.plan.inside_file {
            // Again, now that a truncation waits for this request: what the frontend will see.
            let size = req.file.metadata().map_err(DaxError::Mapper)?.len();
            let end = req.foffset.saturating_add(req.len);
            if size < end {
                return Err(DaxError::Declined(Decline::PastEndOfFile { size, end }));
            }
        }
        for mo in (req.moffset..req.moffset + req.len).step_by(self.chunk as usize) {
            let fo = req.foffset + (mo - req.moffset);
            let existing = self.read().get(&mo).copied();
            if let Some(old) = existing {
                let same = !old.orphaned
                    && old.cut.is_none()
                    && old.inode == req.inode
                    && old.file == file_id
                    && old.foffset == fo;
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
                    file: file_id,
                    cut: None,
                },
            );
            self.files().add_chunk(file_id);
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
        self.files().clear(&*self.watcher());
        match first_error {
            Some(e) => Err(e),
            None => Ok(doomed.len()),
        }
    }

    /// Forgets every mapping without unmapping (the frontend and its window went away; the
    /// frontend drops its mappings itself at a device reset); returns how many there were.
    pub fn clear(&self) -> usize {
        let _order = self.serialize();
        let n = {
            let mut table = self.write();
            let n = table.len();
            table.clear();
            n
        };
        self.files().clear(&*self.watcher());
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

#[path = "shrink.rs"]
pub mod shrink;

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
