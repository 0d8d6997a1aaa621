//! The vhost-user frontend request handler serving the daemon's `SHMEM_MAP` / `SHMEM_UNMAP`
//! requests on a [`DaxWindow`].
//!
//! Every request is copied out of the wire struct and checked by pure functions
//! ([`validate_map_request`], [`validate_unmap_request`]) before any system call: shared memory
//! region id, flags, alignment, bounds and overflow. Errors go back to the daemon as errno values.
//! The handler does not log; it counts what it did ([`DaxStats`]) and can report each request to
//! an observer ([`DaxEvent`]) the VMM may log from, rate-limited.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use thiserror::Error;
use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{HandlerResult, VhostUserFrontendReqHandler};

use super::window::{validate_map, validate_range, DaxWindow, WindowError};

pub use vfsdax_protocol::dax::{CACHE_SHMID, DAX_CHUNK_SIZE};

/// Errors of a `SHMEM_MAP` / `SHMEM_UNMAP` request.
#[derive(Debug, Error)]
pub enum RequestError {
    /// The request names a shared memory region other than the cache window.
    #[error("unknown shared memory region {shmid}")]
    UnknownRegion {
        /// The region id in the request.
        shmid: u8,
    },
    /// The request carries flag bits this handler does not know.
    #[error("unknown mapping flags {flags:#x}")]
    UnknownFlags {
        /// The flags in the request.
        flags: u64,
    },
    /// The range is neither a whole 2 MiB chunk nor a piece anchored at one end of a chunk
    /// (what the daemon's truncation guard leaves: the file part from the chunk's start, the
    /// substitute up to its end). A window of `N` chunks then holds at most `2N` mappings.
    #[error("range {shm_offset:#x}+{len:#x} is not a DAX chunk or a piece of one anchored at its start or end")]
    NotChunked {
        /// Offset in the window.
        shm_offset: u64,
        /// Length.
        len: u64,
    },
    /// The window refused or failed the request.
    #[error("the DAX window refused the request")]
    Window(#[from] WindowError),
}

impl RequestError {
    /// The errno to report to the daemon for this error.
    pub fn errno(&self) -> i32 {
        match self {
            RequestError::UnknownRegion { .. }
            | RequestError::UnknownFlags { .. }
            | RequestError::NotChunked { .. } => libc::EINVAL,
            RequestError::Window(e) => e.errno(),
        }
    }

    /// Whether the request was refused by validation (nothing was attempted), as opposed to a
    /// system call failing.
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            RequestError::Window(
                WindowError::Fd(_)
                    | WindowError::Map(_)
                    | WindowError::Placeholder(_)
                    | WindowError::Reserve { .. }
            )
        )
    }
}

/// The fields of a [`VhostUserMMap`], copied out of the packed wire struct.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShmemRequest {
    /// Shared memory region id.
    pub shmid: u8,
    /// Offset in the file.
    pub fd_offset: u64,
    /// Offset in the shared memory region.
    pub shm_offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// `VhostUserMMapFlags` bits.
    pub flags: u64,
}

impl From<&VhostUserMMap> for ShmemRequest {
    fn from(m: &VhostUserMMap) -> Self {
        // Copy each field by value: references into a packed struct are not allowed.
        let VhostUserMMap {
            shmid,
            fd_offset,
            shm_offset,
            len,
            flags,
            ..
        } = *m;
        ShmemRequest {
            shmid,
            fd_offset,
            shm_offset,
            len,
            flags,
        }
    }
}

impl ShmemRequest {
    /// Whether the request asks for a writable mapping.
    pub fn writable(&self) -> bool {
        self.flags & VhostUserMMapFlags::WRITABLE.bits() != 0
    }
}

/// Checks that `[shm_offset, shm_offset + len)` lies inside one [`DAX_CHUNK_SIZE`] chunk and
/// starts or ends at its boundary (a whole chunk does both).
pub fn check_chunked(shm_offset: u64, len: u64) -> Result<(), RequestError> {
    if vfsdax_protocol::dax::is_chunk_piece(shm_offset, len) {
        Ok(())
    } else {
        Err(RequestError::NotChunked { shm_offset, len })
    }
}

fn check_region_and_flags(req: &ShmemRequest) -> Result<(), RequestError> {
    if req.shmid != CACHE_SHMID {
        return Err(RequestError::UnknownRegion { shmid: req.shmid });
    }
    if VhostUserMMapFlags::from_bits(req.flags).is_none() {
        return Err(RequestError::UnknownFlags { flags: req.flags });
    }
    Ok(())
}

/// Checks a `SHMEM_MAP` request against a window of `window_size` bytes: known region and flags,
/// non-zero page-aligned lengths and offsets, the range inside the window and inside one chunk
/// ([`check_chunked`]), no overflow.
pub fn validate_map_request(
    req: &ShmemRequest,
    window_size: u64,
    page_size: u64,
) -> Result<(), RequestError> {
    check_region_and_flags(req)?;
    check_chunked(req.shm_offset, req.len)?;
    validate_map(
        window_size,
        page_size,
        req.shm_offset,
        req.len,
        req.fd_offset,
    )?;
    Ok(())
}

/// Checks a `SHMEM_UNMAP` request like [`validate_map_request`]; the file offset is not used.
pub fn validate_unmap_request(
    req: &ShmemRequest,
    window_size: u64,
    page_size: u64,
) -> Result<(), RequestError> {
    check_region_and_flags(req)?;
    check_chunked(req.shm_offset, req.len)?;
    validate_range(window_size, page_size, req.shm_offset, req.len)?;
    Ok(())
}

/// What the handler did with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaxEvent {
    /// A file range was mapped.
    Mapped(ShmemRequest),
    /// A range was unmapped.
    Unmapped(ShmemRequest),
    /// A request was refused without any system call.
    Refused {
        /// The request.
        request: ShmemRequest,
        /// Whether it was a map (not an unmap) request.
        map: bool,
        /// The errno sent back.
        errno: i32,
    },
    /// A system call failed while serving the request.
    Failed {
        /// The request.
        request: ShmemRequest,
        /// Whether it was a map (not an unmap) request.
        map: bool,
        /// The errno sent back.
        errno: i32,
    },
}

/// Counters of what the handler has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaxStats {
    /// Successful `SHMEM_MAP` requests.
    pub maps: u64,
    /// Successful `SHMEM_UNMAP` requests.
    pub unmaps: u64,
    /// Requests refused by validation.
    pub refused: u64,
    /// Requests whose system call failed.
    pub failed: u64,
}

/// A function the handler calls with every [`DaxEvent`], on the request thread.
pub type DaxObserver = Box<dyn Fn(&DaxEvent) + Send + Sync>;

/// Serves `SHMEM_MAP` / `SHMEM_UNMAP` on a [`DaxWindow`] (shared memory region 0).
pub struct DaxRequestHandler {
    window: Arc<DaxWindow>,
    maps: AtomicU64,
    unmaps: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    observer: Option<DaxObserver>,
}

impl std::fmt::Debug for DaxRequestHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaxRequestHandler")
            .field("window", &self.window)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl DaxRequestHandler {
    /// A handler serving `window`.
    pub fn new(window: Arc<DaxWindow>) -> Self {
        DaxRequestHandler {
            window,
            maps: AtomicU64::new(0),
            unmaps: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            observer: None,
        }
    }

    /// A handler serving `window` that reports every request to `observer`.
    pub fn with_observer(window: Arc<DaxWindow>, observer: DaxObserver) -> Self {
        DaxRequestHandler {
            observer: Some(observer),
            ..Self::new(window)
        }
    }

    /// The window served.
    pub fn window(&self) -> &Arc<DaxWindow> {
        &self.window
    }

    /// The counters so far.
    pub fn stats(&self) -> DaxStats {
        DaxStats {
            maps: self.maps.load(Ordering::Relaxed),
            unmaps: self.unmaps.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// Serves one `SHMEM_MAP` request with the file descriptor that came with it.
    pub fn map(&self, req: &ShmemRequest, fd: BorrowedFd<'_>) -> Result<(), RequestError> {
        let result = validate_map_request(req, self.window.size(), self.window.page_size())
            .and_then(|()| {
                self.window
                    .map_fd(req.shm_offset, req.len, fd, req.fd_offset, req.writable())
                    .map_err(RequestError::from)
            });
        self.account(req, true, &result);
        result
    }

    /// Serves one `SHMEM_UNMAP` request.
    pub fn unmap(&self, req: &ShmemRequest) -> Result<(), RequestError> {
        let result = validate_unmap_request(req, self.window.size(), self.window.page_size())
            .and_then(|()| {
                self.window
                    .unmap(req.shm_offset, req.len)
                    .map_err(RequestError::from)
            });
        self.account(req, false, &result);
        result
    }

    fn account(&self, req: &ShmemRequest, map: bool, result: &Result<(), RequestError>) {
        let event = match result {
            Ok(()) if map => {
                self.maps.fetch_add(1, Ordering::Relaxed);
                DaxEvent::Mapped(*req)
            }
            Ok(()) => {
                self.unmaps.fetch_add(1, Ordering::Relaxed);
                DaxEvent::Unmapped(*req)
            }
            Err(e) if e.is_refusal() => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                DaxEvent::Refused {
                    request: *req,
                    map,
                    errno: e.errno(),
                }
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                DaxEvent::Failed {
                    request: *req,
                    map,
                    errno: e.errno(),
                }
            }
        };
        if let Some(observer) = &self.observer {
            observer(&event);
        }
    }
}

fn to_io(e: RequestError) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

impl VhostUserFrontendReqHandler for DaxRequestHandler {
    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> HandlerResult<u64> {
        let raw = fd.as_raw_fd();
        if raw < 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        // SAFETY: `raw` is a non-negative descriptor owned by `fd`, which the caller keeps open
        // for the whole call; the borrow does not outlive this call.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        self.map(&ShmemRequest::from(req), fd).map_err(to_io)?;
        Ok(0)
    }

    fn shmem_unmap(&self, req: &VhostUserMMap) -> HandlerResult<u64> {
        self.unmap(&ShmemRequest::from(req)).map_err(to_io)?;
        Ok(0)
    }
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
