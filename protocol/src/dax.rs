//! The virtio-fs DAX window as both sides of the vhost-user connection see it.

/// The virtio shared memory region id of the virtio-fs cache (DAX) window
/// (`VIRTIO_FS_SHMCAP_ID_CACHE`).
pub const CACHE_SHMID: u8 = 0;

/// log2 of the size of the ranges Linux guests map (`FUSE_DAX_SHIFT` in `fs/fuse/dax.c`), and
/// the `map_alignment` the daemon announces at INIT.
pub const DAX_CHUNK_SHIFT: u32 = 21;

/// The size of the ranges Linux guests map: 2 MiB. Every DAX mapping is a whole number of
/// chunks at a chunk-aligned window and file offset.
pub const DAX_CHUNK_SIZE: u64 = 1 << DAX_CHUNK_SHIFT;

/// The most `(moffset, len)` entries one `FUSE_REMOVEMAPPING` carries: Linux's
/// `FUSE_REMOVEMAPPING_MAX_ENTRY` (a 4 KiB page of 16-byte entries).
pub const REMOVEMAPPING_MAX_ENTRIES: u32 = 256;

/// Why a window range is refused ([`check_range`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeError {
    /// The window has no bytes (DAX is off).
    NoWindow,
    /// The length is zero.
    ZeroLength,
    /// An offset or the length is not a multiple of the alignment (or the alignment is 0).
    Unaligned,
    /// `offset + len` does not fit in 64 bits.
    Overflow,
    /// The range reaches past the window's end.
    OutOfWindow,
}

/// Checks `[offset, offset + len)` against a window of `window_size` bytes: non-empty, `offset`,
/// `len` and `file_offset` multiples of `alignment`, inside the window, no overflow. Both sides
/// use it: the daemon for SETUPMAPPING/REMOVEMAPPING with the chunk as alignment, the VMM for
/// SHMEM_MAP/UNMAP with its page size.
pub fn check_range(
    window_size: u64,
    alignment: u64,
    offset: u64,
    len: u64,
    file_offset: u64,
) -> Result<(), RangeError> {
    if window_size == 0 {
        return Err(RangeError::NoWindow);
    }
    if len == 0 {
        return Err(RangeError::ZeroLength);
    }
    let aligned = |v: u64| alignment != 0 && v.is_multiple_of(alignment);
    if !aligned(offset) || !aligned(len) || !aligned(file_offset) {
        return Err(RangeError::Unaligned);
    }
    match offset.checked_add(len) {
        None => Err(RangeError::Overflow),
        Some(end) if end > window_size => Err(RangeError::OutOfWindow),
        Some(_) => Ok(()),
    }
}

/// Whether `[offset, offset + len)` lies inside one [`DAX_CHUNK_SIZE`] chunk and starts or ends
/// at its boundary: a whole chunk, or what the daemon's truncation guard leaves of one (the
/// file's part from the chunk's start, the substitute up to its end). Nothing here overflows.
pub fn is_chunk_piece(offset: u64, len: u64) -> bool {
    let within = offset % DAX_CHUNK_SIZE;
    // `within + len` is only computed once `len <= DAX_CHUNK_SIZE - within`.
    len > 0 && len <= DAX_CHUNK_SIZE - within && (within == 0 || within + len == DAX_CHUNK_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u64 = DAX_CHUNK_SIZE;

    #[test]
    fn range_table() {
        let ok = |o, l, f| check_range(4 * C, C, o, l, f);
        assert_eq!(ok(0, C, 0), Ok(()));
        assert_eq!(ok(3 * C, C, 7 * C), Ok(()));
        assert_eq!(check_range(0, C, 0, C, 0), Err(RangeError::NoWindow));
        assert_eq!(ok(0, 0, 0), Err(RangeError::ZeroLength));
        assert_eq!(ok(4096, C, 0), Err(RangeError::Unaligned));
        assert_eq!(ok(0, C - 4096, 0), Err(RangeError::Unaligned));
        assert_eq!(ok(0, C, 4096), Err(RangeError::Unaligned));
        assert_eq!(check_range(4 * C, 0, 0, C, 0), Err(RangeError::Unaligned));
        assert_eq!(ok(4 * C, C, 0), Err(RangeError::OutOfWindow));
        assert_eq!(ok(3 * C, 2 * C, 0), Err(RangeError::OutOfWindow));
        assert_eq!(
            check_range(u64::MAX, 4096, u64::MAX - 4095, 8192, 0),
            Err(RangeError::Overflow)
        );
    }

    #[test]
    fn chunk_pieces() {
        for (o, l) in [
            (0, C),
            (C, 4096),
            (2 * C - 4096, 4096),
            (u64::MAX - 4095, 4096),
        ] {
            assert!(is_chunk_piece(o, l), "{o:#x}+{l:#x}");
        }
        for (o, l) in [
            (4096, 4096),
            (C - 4096, 8192),
            (0, 2 * C),
            (0, 0),
            (4096, u64::MAX),
        ] {
            assert!(!is_chunk_piece(o, l), "{o:#x}+{l:#x}");
        }
    }

    #[test]
    fn chunk_is_two_mebibytes() {
        assert_eq!(DAX_CHUNK_SIZE, 2 * 1024 * 1024);
        assert_eq!(CACHE_SHMID, 0);
    }
}
