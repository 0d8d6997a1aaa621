//! DAX bookkeeping on the daemon side (being written).

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
}
