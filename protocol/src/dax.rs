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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_is_two_mebibytes() {
        assert_eq!(DAX_CHUNK_SIZE, 2 * 1024 * 1024);
        assert_eq!(CACHE_SHMID, 0);
    }
}
