//! DAX bookkeeping on the daemon side, independent of the transport.
//!
//! - [`Mapper`]: how a file range gets into the VMM's window. [`BackendMapper`] sends vhost-user
//!   `SHMEM_MAP` / `SHMEM_UNMAP` over the backend request channel; [`NoMapper`] refuses with
//!   `ENOSYS` (tests, fuzzing, and when SHMEM was not negotiated); [`MapperSlot`] holds whichever
//!   applies to the current frontend connection.
//! - [`DaxState`]: the window's size and chunk size, what the frontend can map
//!   ([`frontend`]), and the table of live mappings (window chunk → inode, handle, file offset,
//!   writable), kept equal to what the frontend holds, so a later fault report can be matched to
//!   a file and the mappings can be released with their file or when the session ends.
//! - [`validate_setup`] / [`validate_remove`]: the pure checks every `FUSE_SETUPMAPPING` /
//!   `FUSE_REMOVEMAPPING` passes before anything is sent to the frontend.
//!
//! Linux guests (`fs/fuse/dax.c`) send SETUPMAPPING with `fh = -1` (no file handle: the daemon
//! maps the inode itself), `FUSE_SETUPMAPPING_FLAG_READ` always, `..._WRITE` for writable ranges,
//! and 2 MiB ranges; a live mapping therefore records its handle only when there was one.

use std::fs::File;
use std::io;
use std::sync::{RwLock, RwLockReadGuard};

use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};

pub mod files;
pub mod frontend;
mod state;
mod validate;

pub use files::{FileId, FileWatch, Guarding, NoWatch, TruncationHook};
pub use frontend::{Decline, FrontendMapping, Plan, ProbeError, ProbeOutcome};
pub use state::shrink::{kept_bytes, zero_file, Shrunk};
pub use state::{Cut, DaxState, DaxStats, LiveMapping, SetupMapping};
pub use validate::{host_page_size, validate_remove, validate_setup, DaxError};
pub use vfsdax_protocol::dax::{CACHE_SHMID, DAX_CHUNK_SIZE};

/// Maps file ranges into the VMM's DAX window.
pub trait Mapper: Send + Sync {
    /// Maps `len` bytes of `file` at `file_offset` into the window at `window_offset`.
    fn map(
        &self,
        window_offset: u64,
        len: u64,
        file: &std::fs::File,
        file_offset: u64,
        writable: bool,
    ) -> std::io::Result<()>;
    /// Unmaps `[window_offset, window_offset + len)`.
    fn unmap(&self, window_offset: u64, len: u64) -> std::io::Result<()>;
    /// Whether requests can reach a frontend at all (a [`NoMapper`], or an empty
    /// [`MapperSlot`], cannot).
    fn is_connected(&self) -> bool {
        true
    }
}

/// A [`Mapper`] that refuses everything with `ENOSYS`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMapper;

impl Mapper for NoMapper {
    fn map(&self, _: u64, _: u64, _: &File, _: u64, _: bool) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    fn unmap(&self, _: u64, _: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    fn is_connected(&self) -> bool {
        false
    }
}

/// A [`Mapper`] sending `SHMEM_MAP` / `SHMEM_UNMAP` for region 0 over the vhost-user backend
/// request channel.
///
/// The channel must have SHMEM enabled (`Backend::set_shmem_flag`) and should have `REPLY_ACK`
/// (`Backend::set_reply_ack_flag`): without it vhost does not wait for the frontend's answer, so
/// every request "succeeds" and the guest may touch the range before it is mapped.
#[derive(Clone)]
pub struct BackendMapper {
    backend: Backend,
}

impl std::fmt::Debug for BackendMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendMapper").finish_non_exhaustive()
    }
}

impl BackendMapper {
    /// A mapper over `backend`.
    pub fn new(backend: Backend) -> Self {
        BackendMapper { backend }
    }

    /// The underlying request channel.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }
}

/// The errno for an error returned by vhost's `Backend::shmem_map` / `shmem_unmap`.
///
/// vhost 0.18 drops the frontend's errno: a refusal arrives as `FrontendInternalError`, reported
/// as `EIO`. A broken channel is `ENOTCONN`. SHMEM not being enabled on the channel is reported by
/// vhost only as a plain message (no vhost error inside); it becomes `ENOSYS`.
pub fn backend_errno(e: &io::Error) -> i32 {
    use vhost::vhost_user::Error as E;
    if let Some(n) = e.raw_os_error() {
        return n;
    }
    match e.get_ref() {
        Some(inner) => match inner.downcast_ref::<E>() {
            Some(E::Disconnected | E::SocketBroken(_) | E::PartialMessage) => libc::ENOTCONN,
            Some(E::ReqHandlerError(e)) => e.raw_os_error().unwrap_or(libc::EIO),
            Some(_) => libc::EIO,
            None => libc::ENOSYS,
        },
        None => libc::EIO,
    }
}

fn mmap_request(window_offset: u64, len: u64, file_offset: u64, writable: bool) -> VhostUserMMap {
    let flags = if writable {
        VhostUserMMapFlags::WRITABLE
    } else {
        VhostUserMMapFlags::empty()
    };
    VhostUserMMap {
        shmid: CACHE_SHMID,
        fd_offset: file_offset,
        shm_offset: window_offset,
        len,
        flags: flags.bits(),
        ..Default::default()
    }
}

impl Mapper for BackendMapper {
    fn map(
        &self,
        window_offset: u64,
        len: u64,
        file: &File,
        file_offset: u64,
        writable: bool,
    ) -> io::Result<()> {
        let req = mmap_request(window_offset, len, file_offset, writable);
        self.backend
            .shmem_map(&req, file)
            .map(|_| ())
            .map_err(|e| io::Error::from_raw_os_error(backend_errno(&e)))
    }

    fn unmap(&self, window_offset: u64, len: u64) -> io::Result<()> {
        let req = mmap_request(window_offset, len, 0, false);
        self.backend
            .shmem_unmap(&req)
            .map(|_| ())
            .map_err(|e| io::Error::from_raw_os_error(backend_errno(&e)))
    }
}

/// A replaceable [`Mapper`]: the one of the current frontend connection, or `ENOSYS` when there
/// is none (no connection yet, or SHMEM not negotiated).
#[derive(Default)]
pub struct MapperSlot {
    current: RwLock<Option<Box<dyn Mapper>>>,
}

impl std::fmt::Debug for MapperSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapperSlot")
            .field("set", &self.is_set())
            .finish()
    }
}

impl MapperSlot {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Option<Box<dyn Mapper>>> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs `mapper` (or empties the slot with `None`).
    pub fn set(&self, mapper: Option<Box<dyn Mapper>>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = mapper;
    }

    /// Whether a mapper is installed.
    pub fn is_set(&self) -> bool {
        self.read().is_some()
    }
}

impl Mapper for MapperSlot {
    fn map(
        &self,
        window_offset: u64,
        len: u64,
        file: &File,
        file_offset: u64,
        writable: bool,
    ) -> io::Result<()> {
        match &*self.read() {
            Some(m) => m.map(window_offset, len, file, file_offset, writable),
            None => NoMapper.map(window_offset, len, file, file_offset, writable),
        }
    }

    fn unmap(&self, window_offset: u64, len: u64) -> io::Result<()> {
        match &*self.read() {
            Some(m) => m.unmap(window_offset, len),
            None => NoMapper.unmap(window_offset, len),
        }
    }

    fn is_connected(&self) -> bool {
        self.is_set()
    }
}

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod mapper_tests;
