//! Fencing lost window ranges so KVM's own async page faults cannot loop on them.
//!
//! With async PF enabled, a user-mode guest access to a truncated DAX page does not exit to the
//! VMM: KVM starts an async fault, later sends 'page ready', the guest retries, and it starts all
//! over (the KVM loop vfsdax exists to break). The guest's ACK of each 'page ready' does exit (the
//! ACK MSR is trapped), so at every ACK the handler makes the lost part of every shrunken mapping
//! inaccessible (`mprotect(PROT_NONE)`; the mapping table entry stays). KVM then fails the next
//! access at once and it exits like any other truncated-page access. A fenced range whose file
//! grew back is unfenced when an access to it exits.

use crate::dax::{Mapping, MappingTable};
use crate::fault::PAGE_SIZE;

/// Errors of fencing.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// `mprotect` failed.
    #[error("cannot change the protection of window offset {offset:#x} (+{len:#x})")]
    Protect {
        /// Window offset.
        offset: u64,
        /// Length.
        len: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The fenced ranges of one window.
#[derive(Debug, Default)]
pub struct Fences {
    ranges: Vec<(u64, u64, bool)>,
}

/// The page-aligned lost part `(window_offset, len)` of `m` for a file of `size` bytes, if any.
pub fn lost_part(m: &Mapping, size: u64) -> Option<(u64, u64)> {
    let first_lost = size
        .div_ceil(PAGE_SIZE)
        .saturating_mul(PAGE_SIZE)
        .max(m.file_offset);
    let skip = first_lost - m.file_offset;
    (skip < m.len).then(|| (m.window_offset + skip, m.len - skip))
}

fn protect(host_base: u64, offset: u64, len: u64, prot: libc::c_int) -> Result<(), FenceError> {
    // SAFETY: [host_base + offset, + len) lies inside the DAX window reservation (the range comes
    // from a mapping-table entry of this window); changing its protection cannot invalidate Rust
    // references because the glue never holds references into the window, only raw addresses.
    let r = unsafe {
        libc::mprotect(
            (host_base + offset) as *mut libc::c_void,
            len as usize,
            prot,
        )
    };
    if r != 0 {
        return Err(FenceError::Protect {
            offset,
            len,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl Fences {
    /// Fences the lost part of every mapping whose file is now shorter than the mapped range.
    /// Returns how many ranges were newly fenced.
    pub fn fence_truncated(
        &mut self,
        host_base: u64,
        table: &MappingTable,
    ) -> Result<usize, FenceError> {
        let mut n = 0;
        for m in table.snapshot() {
            let Ok(size) = m.file.metadata().map(|md| md.len()) else {
                continue;
            };
            let Some((offset, len)) = lost_part(&m, size) else {
                continue;
            };
            if self
                .ranges
                .iter()
                .any(|&(o, l, _)| o <= offset && offset + len <= o + l)
            {
                continue;
            }
            protect(host_base, offset, len, libc::PROT_NONE)?;
            self.ranges.push((offset, len, m.writable));
            n += 1;
        }
        Ok(n)
    }

    /// Whether `window_offset` lies in a fenced range.
    pub fn is_fenced(&self, window_offset: u64) -> bool {
        self.ranges
            .iter()
            .any(|&(o, l, _)| window_offset >= o && window_offset < o + l)
    }

    /// Restores the protection of the fenced range containing `window_offset` (its file grew back).
    pub fn unfence(&mut self, host_base: u64, window_offset: u64) -> Result<bool, FenceError> {
        let Some(i) = self
            .ranges
            .iter()
            .position(|&(o, l, _)| window_offset >= o && window_offset < o + l)
        else {
            return Ok(false);
        };
        let (o, l, writable) = self.ranges[i];
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        protect(host_base, o, l, prot)?;
        self.ranges.swap_remove(i);
        Ok(true)
    }

    /// Forgets fenced ranges inside `[offset, offset + len)` (they were remapped, e.g. zero-filled).
    pub fn forget(&mut self, offset: u64, len: u64) {
        self.ranges
            .retain(|&(o, l, _)| !(o >= offset && o + l <= offset + len));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dax::FileIdentity;
    use std::sync::Arc;

    fn m(window_offset: u64, len: u64, file_offset: u64) -> Mapping {
        Mapping {
            window_offset,
            len,
            file_offset,
            file: Arc::new(std::fs::File::open("/dev/null").expect("/dev/null")),
            identity: FileIdentity { dev: 1, ino: 1 },
            writable: true,
        }
    }

    #[test]
    fn lost_part_table() {
        assert_eq!(lost_part(&m(0, 0x4000, 0), 0), Some((0, 0x4000)));
        assert_eq!(lost_part(&m(0, 0x4000, 0), 0x1800), Some((0x2000, 0x2000)));
        assert_eq!(lost_part(&m(0, 0x4000, 0), 0x4000), None);
        assert_eq!(
            lost_part(&m(0x10000, 0x2000, 0x2000), 0x2800),
            Some((0x11000, 0x1000))
        );
        assert_eq!(
            lost_part(&m(0x10000, 0x2000, 0x2000), 0x1000),
            Some((0x10000, 0x2000))
        );
    }
}
