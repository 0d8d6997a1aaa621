//! Guest memory for the host-side driver: one memfd-backed region that the daemon maps through
//! `SET_MEM_TABLE`, and a bump allocator that places rings and buffers inside it.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

/// Errors of guest-memory set-up and allocation.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// `memfd_create(2)` failed.
    #[error("cannot create the memfd backing guest memory")]
    Memfd(#[source] std::io::Error),
    /// Sizing the memfd failed.
    #[error("cannot size the guest-memory memfd to {size} bytes")]
    Resize {
        /// Requested size.
        size: u64,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Mapping the memfd failed.
    #[error("cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    /// The region is empty or does not fit the guest address space.
    #[error("guest memory of {size} bytes at {base:#x} is empty or overflows")]
    BadRange {
        /// Guest physical base.
        base: u64,
        /// Size in bytes.
        size: u64,
    },
    /// The allocator ran out of room.
    #[error("guest memory exhausted: {wanted} bytes (alignment {align}) requested, {left} left")]
    Exhausted {
        /// Bytes requested.
        wanted: u64,
        /// Alignment requested.
        align: u64,
        /// Bytes left after aligning.
        left: u64,
    },
    /// The alignment is not a power of two.
    #[error("alignment {0} is not a power of two")]
    BadAlignment(u64),
    /// A guest address is outside guest memory.
    #[error("guest address {0:#x} is outside guest memory")]
    OutOfRange(u64),
}

/// A bump allocator over the guest-physical range `[start, end)`: pure arithmetic, no memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BumpAllocator {
    start: u64,
    next: u64,
    end: u64,
}

impl BumpAllocator {
    /// An allocator handing out addresses in `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        let end = end.max(start);
        BumpAllocator {
            start,
            next: start,
            end,
        }
    }

    /// Reserves `size` bytes aligned to `align` (a power of two) and returns their start.
    pub fn alloc(&mut self, size: u64, align: u64) -> Result<GuestAddress, MemoryError> {
        if align == 0 || !align.is_power_of_two() {
            return Err(MemoryError::BadAlignment(align));
        }
        let exhausted = |left| MemoryError::Exhausted {
            wanted: size,
            align,
            left,
        };
        let aligned = self
            .next
            .checked_add(align - 1)
            .map(|v| v & !(align - 1))
            .filter(|&v| v <= self.end)
            .ok_or_else(|| exhausted(0))?;
        let left = self.end - aligned;
        if size > left {
            return Err(exhausted(left));
        }
        self.next = aligned + size;
        Ok(GuestAddress(aligned))
    }

    /// Bytes not yet handed out (ignoring alignment).
    pub fn remaining(&self) -> u64 {
        self.end - self.next
    }

    /// Bytes handed out so far, including alignment gaps.
    pub fn used(&self) -> u64 {
        self.next - self.start
    }
}

/// Guest memory in one memfd-backed, shared mapping starting at a guest-physical base.
#[derive(Debug)]
pub struct GuestMem {
    mem: GuestMemoryMmap<()>,
    memfd: Arc<File>,
    base: GuestAddress,
    size: u64,
    alloc: BumpAllocator,
}

impl GuestMem {
    /// Creates `size` bytes of guest memory at guest-physical `base`, backed by a new memfd.
    pub fn new(base: GuestAddress, size: usize) -> Result<Self, MemoryError> {
        let size64 = size as u64;
        if size == 0 || base.checked_add(size64).is_none() {
            return Err(MemoryError::BadRange {
                base: base.raw_value(),
                size: size64,
            });
        }
        let name: &CStr = c"vfsdax-guest-mem";
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call; the flags are
        // valid constants. The result is checked before use.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by memfd_create, is valid and owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size64).map_err(|source| MemoryError::Resize {
            size: size64,
            source,
        })?;
        let memfd = Arc::new(file);
        let offset = FileOffset::from_arc(memfd.clone(), 0);
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(base, size, Some(offset))])
            .map_err(MemoryError::Map)?;
        Ok(GuestMem {
            mem,
            memfd,
            base,
            size: size64,
            alloc: BumpAllocator::new(base.raw_value(), base.raw_value() + size64),
        })
    }

    /// The guest memory, for reads and writes through [`vm_memory::Bytes`].
    pub fn memory(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// The memfd backing guest memory.
    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    /// Guest-physical base.
    pub fn base(&self) -> GuestAddress {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether `[addr, addr + len)` lies inside guest memory.
    pub fn contains(&self, addr: GuestAddress, len: u64) -> bool {
        range_inside(self.base.raw_value(), self.size, addr.raw_value(), len)
    }

    /// The host virtual address of guest address `addr` in our mapping.
    pub fn host_address(&self, addr: GuestAddress) -> Result<u64, MemoryError> {
        self.mem
            .find_region(addr)
            .and_then(|r| {
                let off = addr.checked_offset_from(r.start_addr())?;
                Some(r.as_ptr() as u64 + off)
            })
            .ok_or(MemoryError::OutOfRange(addr.raw_value()))
    }

    /// The regions to pass to `SET_MEM_TABLE` (the memfd, our mapping's address, guest base).
    pub fn region_infos(&self) -> Vec<VhostUserMemoryRegionInfo> {
        self.mem
            .iter()
            .map(|r| {
                let (fd, offset) = r
                    .file_offset()
                    .map(|f| (f.file().as_raw_fd(), f.start()))
                    .unwrap_or((self.memfd.as_raw_fd(), 0));
                VhostUserMemoryRegionInfo {
                    guest_phys_addr: r.start_addr().raw_value(),
                    memory_size: r.len(),
                    userspace_addr: r.as_ptr() as u64,
                    mmap_offset: offset,
                    mmap_handle: fd,
                }
            })
            .collect()
    }

    /// Reserves `size` bytes aligned to `align` in guest memory.
    pub fn alloc(&mut self, size: u64, align: u64) -> Result<GuestAddress, MemoryError> {
        self.alloc.alloc(size, align)
    }

    /// The allocator's state (how much is used or left).
    pub fn allocator(&self) -> &BumpAllocator {
        &self.alloc
    }
}

/// Whether `[addr, addr + len)` lies inside `[base, base + size)`, without overflow.
pub fn range_inside(base: u64, size: u64, addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    addr >= base && end <= base.saturating_add(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn bump_allocator_aligns_and_runs_out() {
        let mut a = BumpAllocator::new(0x1001, 0x3000);
        assert_eq!(a.alloc(16, 16).unwrap(), GuestAddress(0x1010));
        assert_eq!(a.alloc(1, 1).unwrap(), GuestAddress(0x1020));
        assert_eq!(a.alloc(0x100, 0x1000).unwrap(), GuestAddress(0x2000));
        assert_eq!(a.remaining(), 0x3000 - 0x2100);
        assert!(matches!(
            a.alloc(0x1000, 8),
            Err(MemoryError::Exhausted { left: 0xf00, .. })
        ));
        assert!(matches!(a.alloc(1, 3), Err(MemoryError::BadAlignment(3))));
        assert_eq!(a.alloc(0xf00, 8).unwrap(), GuestAddress(0x2100));
        assert!(a.alloc(1, 1).is_err());
        assert_eq!(a.used(), 0x3000 - 0x1001);
    }

    #[test]
    fn bump_allocator_alignment_overflow_is_an_error() {
        let mut a = BumpAllocator::new(u64::MAX - 2, u64::MAX);
        assert!(a.alloc(1, 1 << 63).is_err());
        assert_eq!(a.alloc(1, 1).unwrap(), GuestAddress(u64::MAX - 2));
    }

    #[test]
    fn range_inside_checks_both_ends_and_overflow() {
        assert!(range_inside(0x1000, 0x1000, 0x1000, 0x1000));
        assert!(!range_inside(0x1000, 0x1000, 0x1000, 0x1001));
        assert!(!range_inside(0x1000, 0x1000, 0xfff, 1));
        assert!(!range_inside(0x1000, 0x1000, u64::MAX, 2));
        assert!(range_inside(0x1000, 0x1000, 0x2000, 0));
    }

    #[test]
    fn memfd_backed_memory_is_shared_with_the_file() {
        use std::os::unix::fs::FileExt;
        let mut m = GuestMem::new(GuestAddress(0x10000), 0x4000).unwrap();
        let a = m.alloc(8, 8).unwrap();
        assert_eq!(a, GuestAddress(0x10000));
        m.memory().write_obj(0x1122_3344_5566_7788u64, a).unwrap();
        let mut buf = [0u8; 8];
        m.memfd().read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(u64::from_ne_bytes(buf), 0x1122_3344_5566_7788);
        let infos = m.region_infos();
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].guest_phys_addr, 0x10000);
        assert_eq!(infos[0].memory_size, 0x4000);
        assert_eq!(infos[0].userspace_addr, m.host_address(a).unwrap());
        assert!(m.host_address(GuestAddress(0x14000)).is_err());
        assert!(m.contains(GuestAddress(0x13fff), 1));
        assert!(!m.contains(GuestAddress(0x13fff), 2));
    }
}
