//! The daemon's DAX state: validation of SETUPMAPPING / REMOVEMAPPING and the live mapping
//! table.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use thiserror::Error;
use vfsdax_protocol::fuse::flags::{SETUPMAPPING_FLAG_READ, SETUPMAPPING_FLAG_WRITE};

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

/// One live mapping of the window, as the daemon asked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveMapping {
    /// Offset in the window.
    pub moffset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The guest's node id of the file.
    pub inode: u64,
    /// The file handle the guest named, if any (Linux guests send none).
    pub handle: Option<u64>,
    /// Offset in the file of the byte at `moffset`.
    pub foffset: u64,
    /// Whether the mapping is writable.
    pub writable: bool,
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

    fn slice(&self, start: u64, end: u64) -> LiveMapping {
        LiveMapping {
            moffset: start,
            len: end - start,
            foffset: self.foffset.saturating_add(start - self.moffset),
            ..*self
        }
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
}

/// The DAX window as the daemon sees it: size, alignment and live mappings.
#[derive(Debug)]
pub struct DaxState {
    window_size: u64,
    alignment: u64,
    /// Serializes requests so the table changes in the order the frontend saw them.
    ops: Mutex<()>,
    table: RwLock<BTreeMap<u64, LiveMapping>>,
}

impl DaxState {
    /// State for a window of `window_size` bytes (0: DAX disabled) whose mappings are aligned to
    /// `alignment` bytes.
    pub fn new(window_size: u64, alignment: u64) -> Self {
        DaxState {
            window_size,
            alignment,
            ops: Mutex::new(()),
            table: RwLock::new(BTreeMap::new()),
        }
    }

    /// State for a window of `window_size` bytes aligned to the host page size.
    pub fn with_page_alignment(window_size: u64) -> Self {
        Self::new(window_size, host_page_size())
    }

    /// Window size in bytes (0 when DAX is disabled).
    pub fn window_size(&self) -> u64 {
        self.window_size
    }

    /// The mapping alignment in bytes.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Whether there is a window.
    pub fn is_enabled(&self) -> bool {
        self.window_size != 0
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

    /// Validates `req`, asks `mapper` to map it and records it (replacing whatever overlapped).
    /// On any error the table is unchanged.
    pub fn setup_mapping(
        &self,
        mapper: &dyn Mapper,
        req: &SetupMapping<'_>,
    ) -> Result<(), DaxError> {
        validate_setup(
            self.window_size,
            self.alignment,
            req.foffset,
            req.moffset,
            req.len,
            req.flags,
            req.file_writable,
        )?;
        let writable = req.flags & SETUPMAPPING_FLAG_WRITE != 0;
        let _order = self.serialize();
        mapper
            .map(req.moffset, req.len, req.file, req.foffset, writable)
            .map_err(DaxError::Mapper)?;
        let mut table = self.write();
        carve(&mut table, req.moffset, req.moffset + req.len);
        table.insert(
            req.moffset,
            LiveMapping {
                moffset: req.moffset,
                len: req.len,
                inode: req.inode,
                handle: req.handle,
                foffset: req.foffset,
                writable,
            },
        );
        Ok(())
    }

    /// Validates every `(moffset, len)` entry of a `FUSE_REMOVEMAPPING` batch first (a bad batch
    /// changes nothing), then unmaps them in order, stopping at the first failure. The table
    /// forgets exactly the ranges that were unmapped.
    pub fn remove_mappings(
        &self,
        mapper: &dyn Mapper,
        entries: &[(u64, u64)],
    ) -> Result<(), DaxError> {
        for &(moffset, len) in entries {
            validate_remove(self.window_size, self.alignment, moffset, len)?;
        }
        let _order = self.serialize();
        for &(moffset, len) in entries {
            mapper.unmap(moffset, len).map_err(DaxError::Mapper)?;
            carve(&mut self.write(), moffset, moffset + len);
        }
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

    /// Unmaps and forgets every live mapping made through `handle` (the handle is being
    /// released). All are forgotten even if an unmap fails; returns how many there were, or the
    /// first failure.
    pub fn release_handle(&self, mapper: &dyn Mapper, handle: u64) -> Result<usize, DaxError> {
        self.release_where(mapper, |m| m.handle == Some(handle))
    }

    /// Unmaps and forgets every live mapping of `inode`, like [`DaxState::release_handle`].
    pub fn release_inode(&self, mapper: &dyn Mapper, inode: u64) -> Result<usize, DaxError> {
        self.release_where(mapper, |m| m.inode == inode)
    }

    /// Forgets, without unmapping, every live mapping of `inode` (its node id is gone: FORGET
    /// has no backend channel, and the guest removes an inode's mappings itself before it
    /// evicts it). Returns how many there were.
    ///
    /// Takes only the table lock, not the request order, so a FORGET (on the high-priority
    /// queue) never waits behind a SETUPMAPPING that is waiting for the frontend. A mapping of
    /// the same inode being set up at that moment is recorded after this returns; the guest
    /// does not forget an inode it is mapping, and the entry goes with the next overlapping
    /// request or the session's end.
    pub fn forget_inode(&self, inode: u64) -> usize {
        let mut table = self.write();
        let before = table.len();
        table.retain(|_, m| m.inode != inode);
        before - table.len()
    }

    fn release_where(
        &self,
        mapper: &dyn Mapper,
        pred: impl Fn(&LiveMapping) -> bool,
    ) -> Result<usize, DaxError> {
        let _order = self.serialize();
        let doomed: Vec<LiveMapping> = {
            let mut table = self.write();
            let doomed: Vec<LiveMapping> = table.values().filter(|m| pred(m)).copied().collect();
            for m in &doomed {
                table.remove(&m.moffset);
            }
            doomed
        };
        let mut first_error = None;
        for m in &doomed {
            if let Err(e) = mapper.unmap(m.moffset, m.len) {
                first_error.get_or_insert(DaxError::Mapper(e));
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(doomed.len()),
        }
    }

    /// Forgets every mapping without unmapping (the frontend and its window went away); returns
    /// how many there were.
    pub fn clear(&self) -> usize {
        let _order = self.serialize();
        let mut table = self.write();
        let n = table.len();
        table.clear();
        n
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

    /// Number of live mappings.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether there are no live mappings.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

/// Cuts `[start, end)` out of the non-overlapping entries of `table`, keeping the parts outside.
fn carve(table: &mut BTreeMap<u64, LiveMapping>, start: u64, end: u64) {
    let mut keys: Vec<u64> = Vec::new();
    if let Some((&k, m)) = table.range(..start).next_back() {
        if m.end() > start {
            keys.push(k);
        }
    }
    keys.extend(table.range(start..end).map(|(&k, _)| k));
    for k in keys {
        let Some(m) = table.remove(&k) else {
            continue;
        };
        if m.moffset < start {
            table.insert(m.moffset, m.slice(m.moffset, start));
        }
        if m.end() > end {
            table.insert(end, m.slice(end, m.end()));
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
