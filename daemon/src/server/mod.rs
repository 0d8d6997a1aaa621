//! The FUSE server: decodes requests from virtio descriptor chains, calls the [`FileSystem`]
//! and writes the replies back into the chains.
//!
//! - [`chain`]: [`Reader`] / [`Writer`] over a chain's guest memory, with zero-copy file I/O.
//! - `request`: pure decoding of each opcode's arguments, with every length and name checked.
//! - `init`: INIT negotiation.
//! - `reply`: host types to wire structures, READDIR packing.
//! - `dispatch`: one request end to end.
//!
//! Nothing a guest sends makes the server panic: a malformed request gets an error reply, and
//! when no reply is possible (no room for one, descriptors outside guest memory, a malformed
//! request of an opcode that takes no reply) [`Server::handle_chain`] returns a
//! [`ServerError`] and the caller drops the chain.

use std::io;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

use crate::dax::Mapper;
use crate::filesystem::FileSystem;

pub mod chain;
mod dispatch;
mod init;
mod reply;
mod request;

pub use chain::{split_chain, Reader, Writer};

/// Why a chain could not be served (the caller drops it and logs, rate-limited).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A descriptor's range is not entirely inside guest memory.
    #[error("descriptor at guest address {addr:#x} with length {len} is not inside guest memory")]
    DescriptorOutsideMemory {
        /// The descriptor's guest address.
        addr: u64,
        /// The descriptor's length.
        len: u32,
        /// What guest memory said.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The chain has a device-readable descriptor after a device-writable one.
    #[error("the chain has a device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// The readable or the writable part of the chain is longer than `u32::MAX` bytes.
    #[error("the chain's total length overflows 32 bits")]
    ChainTooLong,
    /// The writable part cannot hold even a `fuse_out_header`.
    #[error("the chain's writable part has {room} bytes, too few for a reply header")]
    NoRoomForReply {
        /// Bytes of room in the writable part.
        room: usize,
    },
    /// A malformed request of an opcode that takes no reply (FORGET, BATCH_FORGET, INTERRUPT).
    #[error("malformed request with opcode {opcode} takes no reply (errno {errno})")]
    BadRequestWithoutReply {
        /// The opcode.
        opcode: u32,
        /// The errno a reply would have carried.
        errno: i32,
    },
    /// Writing the reply into guest memory failed.
    #[error("could not write the reply into the chain")]
    WriteReply(#[source] io::Error),
}

/// `max_write` announced when [`ServerOptions::max_write`] is 0: 1 MiB, the most the Linux
/// guest takes (256 pages).
pub const DEFAULT_MAX_WRITE: u32 = 1 << 20;

/// How the server presents the filesystem to the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerOptions {
    /// Size of the DAX window in bytes; 0 means no DAX (SETUPMAPPING / REMOVEMAPPING answer
    /// ENOSYS and `FUSE_MAP_ALIGNMENT` is not offered).
    pub dax_window_size: u64,
    /// Largest WRITE the guest may send (`max_write`; `max_pages` is derived from it);
    /// 0 means [`DEFAULT_MAX_WRITE`].
    pub max_write: u32,
    /// Offer writeback caching (if the filesystem wants it too).
    pub writeback: bool,
    /// Offer `FUSE_SUBMOUNTS` (if the filesystem wants it too).
    pub announce_submounts: bool,
    /// Serve the xattr opcodes; without it they answer ENOSYS.
    pub xattr: bool,
    /// Offer `FUSE_HAS_INODE_DAX` (only with a DAX window).
    pub inode_dax: bool,
}

/// The FUSE server for one filesystem. Shared by the threads serving the request queues.
pub struct Server<F> {
    fs: F,
    opts: ServerOptions,
    page_size: u64,
    /// INIT has succeeded and no DESTROY came since.
    initialized: AtomicBool,
    /// The INIT flags negotiated (`flags | flags2 << 32`).
    flags: AtomicU64,
}

impl<F: FileSystem> Server<F> {
    /// A server for `fs`.
    pub fn new(fs: F, opts: ServerOptions) -> Self {
        // SAFETY: sysconf has no memory-safety preconditions; it only reads a constant.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Server {
            fs,
            opts,
            page_size: u64::try_from(page_size).unwrap_or(4096).max(1),
            initialized: AtomicBool::new(false),
            flags: AtomicU64::new(0),
        }
    }

    /// The filesystem.
    pub fn fs(&self) -> &F {
        &self.fs
    }

    /// The options.
    pub fn options(&self) -> &ServerOptions {
        &self.opts
    }

    /// The INIT flags negotiated with the guest, or `None` before INIT (and after DESTROY).
    pub fn negotiated_flags(&self) -> Option<u64> {
        self.initialized
            .load(Ordering::Acquire)
            .then(|| self.flags.load(Ordering::Acquire))
    }

    /// Handles one request chain; returns the number of bytes written to the chain's writable
    /// part (the used length). Never panics on any guest input.
    pub fn handle_chain<M, T>(
        &self,
        mem: &M,
        chain: DescriptorChain<T>,
        mapper: &dyn Mapper,
    ) -> Result<u32, ServerError>
    where
        M: GuestMemory + ?Sized,
        T: Deref,
        T::Target: GuestMemory,
    {
        let (mut reader, mut writer) = split_chain(mem, chain)?;
        let used = self.handle(&mut reader, &mut writer, mapper)?;
        // The writable part is at most u32::MAX bytes (checked by split_chain).
        Ok(u32::try_from(used).unwrap_or(u32::MAX))
    }
}

/// The errno to send for an error from the filesystem: its OS error when it is a plausible
/// errno, EIO otherwise.
pub(crate) fn errno_of(e: &io::Error) -> i32 {
    match e.raw_os_error() {
        Some(n) if (1..4096).contains(&n) => n,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod fake_fs;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
