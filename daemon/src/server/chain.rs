//! Reading a request from, and writing a reply into, a virtio descriptor chain.
//!
//! [`split_chain`] turns a chain into a [`Reader`] over its device-readable descriptors and a
//! [`Writer`] over its device-writable ones. Both hold [`VolatileSlice`]s of guest memory: bytes
//! are copied with volatile accesses, and file I/O ([`ZeroCopyReader`], [`ZeroCopyWriter`]) runs
//! `pwritev` / `preadv` directly on the slices, with no bounce buffer.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::ops::Deref;
use std::os::fd::AsRawFd;

use virtio_queue::DescriptorChain;
use vm_memory::bitmap::{BitmapSlice, BS};
use vm_memory::{ByteValued, GuestMemory, Permissions, VolatileSlice};

use super::ServerError;
use crate::filesystem::{ZeroCopyReader, ZeroCopyWriter};

/// Most slices handed to one `preadv`/`pwritev` (Linux's `UIO_MAXIOV`); a longer list is
/// served by a short transfer, which callers see as an ordinary partial read or write.
const MAX_IOVECS: usize = 1024;

/// Splits `chain` into a reader over its device-readable part and a writer over its
/// device-writable part.
///
/// Errors: a descriptor whose range is not entirely inside `mem`, a readable descriptor after a
/// writable one, or a total length of either part above `u32::MAX` (the virtio limit for a
/// chain, and the width of the used length).
#[allow(clippy::type_complexity)]
pub fn split_chain<'a, M, T>(
    mem: &'a M,
    chain: DescriptorChain<T>,
) -> Result<(Reader<'a, BS<'a, M::Bitmap>>, Writer<'a, BS<'a, M::Bitmap>>), ServerError>
where
    M: GuestMemory + ?Sized,
    T: Deref,
    T::Target: GuestMemory,
{
    let mut readable = Slices::default();
    let mut writable = Slices::default();
    for desc in chain {
        let (part, access) = if desc.is_write_only() {
            (&mut writable, Permissions::Write)
        } else if writable.seen_descriptor {
            return Err(ServerError::ReadableAfterWritable);
        } else {
            (&mut readable, Permissions::Read)
        };
        part.seen_descriptor = true;
        let len = desc.len() as usize;
        part.total = part
            .total
            .checked_add(len)
            .filter(|&t| t <= u32::MAX as usize)
            .ok_or(ServerError::ChainTooLong)?;
        let outside = |source| ServerError::DescriptorOutsideMemory {
            addr: desc.addr().0,
            len: desc.len(),
            source,
        };
        for slice in mem.get_slices(desc.addr(), len, access).map_err(outside)? {
            let slice = slice.map_err(outside)?;
            if !slice.is_empty() {
                part.bufs.push_back(slice);
            }
        }
    }
    readable.remaining = readable.total;
    writable.remaining = writable.total;
    Ok((Reader { slices: readable }, Writer { slices: writable }))
}

/// An ordered list of guest-memory slices, consumed from the front.
#[derive(Clone)]
struct Slices<'a, B> {
    bufs: VecDeque<VolatileSlice<'a, B>>,
    /// Bytes in `bufs`.
    remaining: usize,
    /// Bytes the chain part had in total (only used while building).
    total: usize,
    /// Bytes consumed so far.
    consumed: usize,
    /// Whether the chain part had any descriptor (even of length 0).
    seen_descriptor: bool,
}

impl<B> Default for Slices<'_, B> {
    fn default() -> Self {
        Slices {
            bufs: VecDeque::new(),
            remaining: 0,
            total: 0,
            consumed: 0,
            seen_descriptor: false,
        }
    }
}

impl<'a, B: BitmapSlice> Slices<'a, B> {
    /// Drops the first `n` bytes (`n <= remaining`).
    fn advance(&mut self, mut n: usize) {
        debug_assert!(n <= self.remaining);
        self.remaining -= n;
        self.consumed += n;
        while n > 0 {
            let Some(front) = self.bufs.pop_front() else {
                break;
            };
            if n < front.len() {
                // `n < front.len()`, so the offset is in bounds.
                if let Ok(rest) = front.offset(n) {
                    self.bufs.push_front(rest);
                }
                break;
            }
            n -= front.len();
        }
    }

    /// Keeps only the first `n` bytes.
    fn truncate(&mut self, n: usize) {
        if n >= self.remaining {
            return;
        }
        let mut kept = VecDeque::new();
        let mut left = n;
        for s in self.bufs.drain(..) {
            if left == 0 {
                break;
            }
            if s.len() <= left {
                left -= s.len();
                kept.push_back(s);
            } else {
                if let Ok(head) = s.subslice(0, left) {
                    kept.push_back(head);
                }
                left = 0;
            }
        }
        self.bufs = kept;
        self.remaining = n;
    }

    /// Slices covering at most `count` bytes from the front (at most [`MAX_IOVECS`]).
    fn front(&self, count: usize) -> Vec<VolatileSlice<'a, B>> {
        let mut out = Vec::new();
        let mut left = count;
        for s in &self.bufs {
            if left == 0 || out.len() == MAX_IOVECS {
                break;
            }
            let take = s.len().min(left);
            if let Ok(part) = s.subslice(0, take) {
                out.push(part);
            }
            left -= take;
        }
        out
    }
}

/// The device-readable part of a chain: the request.
#[derive(Clone)]
pub struct Reader<'a, B = ()> {
    slices: Slices<'a, B>,
}

impl<B: BitmapSlice> Reader<'_, B> {
    /// Bytes left to read.
    pub fn available_bytes(&self) -> usize {
        self.slices.remaining
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> usize {
        self.slices.consumed
    }

    /// Limits the bytes left to read to `len` (no effect if fewer are left).
    pub fn truncate(&mut self, len: usize) {
        self.slices.truncate(len);
    }

    /// Fills `buf` entirely, or fails with `UnexpectedEof` having consumed nothing.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if buf.len() > self.available_bytes() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        let mut done = 0;
        for s in &self.slices.bufs {
            if done == buf.len() {
                break;
            }
            done += s.copy_to(&mut buf[done..]);
        }
        self.slices.advance(done);
        Ok(())
    }

    /// Reads one plain-data object.
    pub fn read_obj<T: ByteValued>(&mut self) -> io::Result<T> {
        let mut obj = T::zeroed();
        self.read_exact(obj.as_mut_slice())?;
        Ok(obj)
    }
}

impl<B: BitmapSlice> ZeroCopyReader for Reader<'_, B> {
    fn read_to(&mut self, file: &File, count: usize, offset: u64) -> io::Result<usize> {
        let slices = self.slices.front(count);
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
        let ranges = guards.iter().map(|g| (g.as_ptr(), g.len()));
        // SAFETY: each range is a guard's pointer and length, i.e. a range of guest memory that
        // `get_slices` checked to be inside a mapped region; the regions stay mapped while the
        // `'a` borrow of the guest memory behind the slices lives, and `guards` keeps the
        // pointers valid until after the call. `pwritev64` only reads those ranges.
        let n = unsafe { vectored_file_io(libc::pwritev64, file, ranges, offset) }?;
        // `n` is at most the ranges' total, which is at most `remaining`.
        self.slices.advance(n.min(self.slices.remaining));
        Ok(n)
    }
}

/// The device-writable part of a chain: room for the reply.
#[derive(Clone)]
pub struct Writer<'a, B = ()> {
    slices: Slices<'a, B>,
}

impl<'a, B: BitmapSlice> Writer<'a, B> {
    /// Room left.
    pub fn available_bytes(&self) -> usize {
        self.slices.remaining
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> usize {
        self.slices.consumed
    }

    /// Splits off everything after the first `offset` bytes of room into a new writer; `self`
    /// keeps the first `offset` bytes. Used to write a reply's data before its header.
    /// Fails when there are fewer than `offset` bytes of room.
    pub fn split_at(&mut self, offset: usize) -> io::Result<Writer<'a, B>> {
        if offset > self.available_bytes() {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        let mut tail = self.slices.clone();
        tail.consumed = 0;
        tail.advance(offset);
        tail.consumed = 0;
        self.slices.truncate(offset);
        Ok(Writer { slices: tail })
    }

    /// Writes all of `buf`, or fails with `WriteZero` having written nothing.
    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if buf.len() > self.available_bytes() {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        let mut done = 0;
        for s in &self.slices.bufs {
            if done == buf.len() {
                break;
            }
            let n = s.len().min(buf.len() - done);
            // `copy_from` marks the written range dirty in the slice's bitmap.
            s.copy_from(&buf[done..done + n]);
            done += n;
        }
        self.slices.advance(done);
        Ok(())
    }

    /// Writes one plain-data object.
    pub fn write_obj<T: ByteValued>(&mut self, val: T) -> io::Result<()> {
        self.write_all(val.as_slice())
    }
}

impl<B: BitmapSlice> ZeroCopyWriter for Writer<'_, B> {
    fn write_from(&mut self, file: &File, count: usize, offset: u64) -> io::Result<usize> {
        let slices = self.slices.front(count);
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
        let ranges = guards.iter().map(|g| (g.as_ptr().cast_const(), g.len()));
        // SAFETY: each range is a mutable guard's pointer and length, i.e. a writable range of
        // guest memory that `get_slices` checked to be inside a mapped region; the regions stay
        // mapped while the `'a` borrow of the guest memory behind the slices lives, and `guards`
        // keeps the pointers valid until after the call. Guest memory is shared with the guest,
        // which only ever sees it through volatile accesses, so `preadv64` writing into it does
        // not alias any Rust reference.
        let n = unsafe { vectored_file_io(libc::preadv64, file, ranges, offset) }?;
        // Raw-pointer writes bypass the dirty bitmap: record them.
        let mut left = n;
        for s in &slices {
            if left == 0 {
                break;
            }
            let len = s.len().min(left);
            s.bitmap().mark_dirty(0, len);
            left -= len;
        }
        self.slices.advance(n.min(self.slices.remaining));
        Ok(n)
    }
}

/// `pwritev64` or `preadv64`: one signature, the bytes moving opposite ways.
type VectoredFileIo = unsafe extern "C" fn(
    libc::c_int,
    *const libc::iovec,
    libc::c_int,
    libc::off64_t,
) -> libc::ssize_t;

/// Runs `call` (`pwritev64` or `preadv64`) on `file` at `offset` over the memory `ranges`
/// (pointer, length), in order, and returns the bytes it moved. Callers take the ranges from
/// [`Slices::front`], so there are at most [`MAX_IOVECS`]. No range: `Ok(0)` without a system
/// call. An offset above `off64_t::MAX`: `EINVAL`.
///
/// # Safety
///
/// Until this returns, every range must lie in mapped memory that `call` may access: readable
/// for `pwritev64`; for `preadv64` writable, and aliased by no Rust reference.
unsafe fn vectored_file_io(
    call: VectoredFileIo,
    file: &File,
    ranges: impl Iterator<Item = (*const u8, usize)>,
    offset: u64,
) -> io::Result<usize> {
    let einval = || io::Error::from_raw_os_error(libc::EINVAL);
    let offset = libc::off64_t::try_from(offset).map_err(|_| einval())?;
    let iovecs: Vec<libc::iovec> = ranges
        .map(|(base, len)| libc::iovec {
            iov_base: base.cast_mut().cast(),
            iov_len: len,
        })
        .collect();
    if iovecs.is_empty() {
        return Ok(0);
    }
    let iovcnt = libc::c_int::try_from(iovecs.len()).map_err(|_| einval())?;
    // SAFETY: `iovecs` holds the caller's ranges, which this function's contract keeps valid for
    // the access `call` makes until it returns; `iovecs` itself outlives the call, and `iovcnt`
    // is its length.
    let ret = unsafe { call(file.as_raw_fd(), iovecs.as_ptr(), iovcnt, offset) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // `ret` is non-negative and at most the ranges' total.
    Ok(ret as usize)
}

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
