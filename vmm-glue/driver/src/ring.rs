//! Split-ring layout and descriptor arithmetic (pure): where the descriptor table, available
//! ring and used ring live, `vring_need_event`, and chain linking.

use vm_memory::GuestAddress;

/// Descriptor flag: the chain continues in `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of indirect descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Used-ring flag: the device does not want kicks (without EVENT_IDX).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;
/// Size of one descriptor in bytes.
pub const DESC_SIZE: u64 = 16;

/// A split-ring descriptor as laid out in guest memory (little-endian on the wire).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer.
    pub len: u32,
    /// `VIRTQ_DESC_F_*`.
    pub flags: u16,
    /// Next descriptor of the chain, with `VIRTQ_DESC_F_NEXT`.
    pub next: u16,
}

// SAFETY: `repr(C)` with fields u64, u32, u16, u16 in that order: 16 bytes, no implicit padding,
// and every bit pattern is a valid value.
unsafe impl vm_memory::ByteValued for Descriptor {}

impl Descriptor {
    /// The descriptor with its fields converted to little-endian (a no-op on x86).
    pub fn to_le(self) -> Self {
        Descriptor {
            addr: self.addr.to_le(),
            len: self.len.to_le(),
            flags: self.flags.to_le(),
            next: self.next.to_le(),
        }
    }
}

/// A guest buffer: an address and a length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A descriptor before linking: the chain's `NEXT` flags and `next` fields are filled in by the
/// queue, everything else (including addresses outside guest memory or odd flag orders) is
/// written exactly as given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest-physical address, not checked.
    pub addr: u64,
    /// Length, not checked.
    pub len: u32,
    /// Flags other than `NEXT` (`VIRTQ_DESC_F_WRITE`, `VIRTQ_DESC_F_INDIRECT`).
    pub flags: u16,
}

/// One entry of the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor id of the chain.
    pub id: u32,
    /// Bytes the device wrote into the chain's writable buffers.
    pub len: u32,
}

/// Where the three parts of a split ring live in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    /// Number of entries (a power of two).
    pub size: u16,
    /// Descriptor table (16-byte aligned).
    pub desc: GuestAddress,
    /// Available ring (2-byte aligned).
    pub avail: GuestAddress,
    /// Used ring (4-byte aligned).
    pub used: GuestAddress,
}

impl RingLayout {
    /// Bytes of a descriptor table of `size` entries.
    pub fn desc_table_bytes(size: u16) -> u64 {
        DESC_SIZE * u64::from(size)
    }

    /// Bytes of an available ring of `size` entries, including `used_event`.
    pub fn avail_ring_bytes(size: u16) -> u64 {
        4 + 2 * u64::from(size) + 2
    }

    /// Bytes of a used ring of `size` entries, including `avail_event`.
    pub fn used_ring_bytes(size: u16) -> u64 {
        4 + 8 * u64::from(size) + 2
    }

    /// Whether `size` is a valid split-queue size (a power of two, at most 32768).
    pub fn valid_size(size: u16) -> bool {
        size != 0 && size.is_power_of_two() && size <= 32768
    }

    /// Address of descriptor `id`.
    pub fn desc_addr(&self, id: u16) -> GuestAddress {
        GuestAddress(self.desc.0 + DESC_SIZE * u64::from(id % self.size))
    }

    /// Address of `avail.idx`.
    pub fn avail_idx_addr(&self) -> GuestAddress {
        GuestAddress(self.avail.0 + 2)
    }

    /// Address of the available-ring slot for free-running index `idx`.
    pub fn avail_slot_addr(&self, idx: u16) -> GuestAddress {
        GuestAddress(self.avail.0 + 4 + 2 * u64::from(idx % self.size))
    }

    /// Address of `used_event` (at the end of the available ring).
    pub fn used_event_addr(&self) -> GuestAddress {
        GuestAddress(self.avail.0 + 4 + 2 * u64::from(self.size))
    }

    /// Address of `used.flags`.
    pub fn used_flags_addr(&self) -> GuestAddress {
        self.used
    }

    /// Address of `used.idx`.
    pub fn used_idx_addr(&self) -> GuestAddress {
        GuestAddress(self.used.0 + 2)
    }

    /// Address of the used-ring element for free-running index `idx`.
    pub fn used_elem_addr(&self, idx: u16) -> GuestAddress {
        GuestAddress(self.used.0 + 4 + 8 * u64::from(idx % self.size))
    }

    /// Address of `avail_event` (at the end of the used ring).
    pub fn avail_event_addr(&self) -> GuestAddress {
        GuestAddress(self.used.0 + 4 + 8 * u64::from(self.size))
    }
}

/// The virtio `vring_need_event`: whether moving an index from `old` to `new` crosses `event`
/// (the other side asked to be notified once the entry at `event` is published).
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Links `descs` into a chain starting at the ids in `ids`: each but the last gets
/// `VIRTQ_DESC_F_NEXT` and the next id; any `NEXT` flag the caller set is replaced.
pub fn link_chain(descs: &[RawDesc], ids: &[u16]) -> Vec<Descriptor> {
    descs
        .iter()
        .zip(ids)
        .enumerate()
        .map(|(i, (d, _))| {
            let last = i + 1 == descs.len();
            let base = d.flags & !VIRTQ_DESC_F_NEXT;
            Descriptor {
                addr: d.addr,
                len: d.len,
                flags: if last { base } else { base | VIRTQ_DESC_F_NEXT },
                next: if last { 0 } else { ids[i + 1] },
            }
        })
        .collect()
}

/// Builds the descriptors of a well-formed chain: readable buffers, then writable ones.
pub fn chain_descs(readable: &[Buffer], writable: &[Buffer]) -> Vec<RawDesc> {
    let r = readable.iter().map(|b| RawDesc {
        addr: b.addr.0,
        len: b.len,
        flags: 0,
    });
    let w = writable.iter().map(|b| RawDesc {
        addr: b.addr.0,
        len: b.len,
        flags: VIRTQ_DESC_F_WRITE,
    });
    r.chain(w).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_and_offsets_follow_the_spec() {
        assert_eq!(RingLayout::desc_table_bytes(256), 4096);
        assert_eq!(RingLayout::avail_ring_bytes(256), 6 + 512);
        assert_eq!(RingLayout::used_ring_bytes(256), 6 + 2048);
        let l = RingLayout {
            size: 8,
            desc: GuestAddress(0x1000),
            avail: GuestAddress(0x2000),
            used: GuestAddress(0x3000),
        };
        assert_eq!(l.desc_addr(9), GuestAddress(0x1010), "ids wrap at the size");
        assert_eq!(l.avail_idx_addr(), GuestAddress(0x2002));
        assert_eq!(l.avail_slot_addr(0), GuestAddress(0x2004));
        assert_eq!(l.avail_slot_addr(10), GuestAddress(0x2008));
        assert_eq!(l.used_event_addr(), GuestAddress(0x2014));
        assert_eq!(l.used_idx_addr(), GuestAddress(0x3002));
        assert_eq!(l.used_elem_addr(65535), GuestAddress(0x3004 + 7 * 8));
        assert_eq!(l.avail_event_addr(), GuestAddress(0x3044));
    }

    #[test]
    fn queue_sizes_must_be_powers_of_two() {
        for ok in [1u16, 2, 256, 32768] {
            assert!(RingLayout::valid_size(ok), "{ok}");
        }
        for bad in [0u16, 3, 100, 65535] {
            assert!(!RingLayout::valid_size(bad), "{bad}");
        }
    }

    #[test]
    fn need_event_matches_the_virtio_definition() {
        // The other side wants to hear about entry 5.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 8, 3), "crossing 5 while moving 3 -> 8");
        assert!(!need_event(5, 5, 3), "entry 5 not yet published");
        assert!(!need_event(5, 9, 6), "already past 5 before");
        // Wrap-around.
        assert!(need_event(65535, 2, 65530));
        assert!(need_event(0, 1, 65535));
        assert!(!need_event(3, 2, 65530));
        // No movement never notifies.
        assert!(!need_event(7, 7, 7));
    }

    #[test]
    fn chains_are_linked_readable_first() {
        let r = [Buffer {
            addr: GuestAddress(0x100),
            len: 40,
        }];
        let w = [
            Buffer {
                addr: GuestAddress(0x200),
                len: 16,
            },
            Buffer {
                addr: GuestAddress(0x300),
                len: 4096,
            },
        ];
        let descs = chain_descs(&r, &w);
        let linked = link_chain(&descs, &[4, 2, 9]);
        assert_eq!(
            linked,
            vec![
                Descriptor {
                    addr: 0x100,
                    len: 40,
                    flags: VIRTQ_DESC_F_NEXT,
                    next: 2
                },
                Descriptor {
                    addr: 0x200,
                    len: 16,
                    flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
                    next: 9
                },
                Descriptor {
                    addr: 0x300,
                    len: 4096,
                    flags: VIRTQ_DESC_F_WRITE,
                    next: 0
                },
            ]
        );
    }

    #[test]
    fn raw_links_replace_a_callers_next_flag_on_the_last() {
        let d = [RawDesc {
            addr: 1,
            len: 2,
            flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
        }];
        assert_eq!(link_chain(&d, &[3])[0].flags, VIRTQ_DESC_F_WRITE);
    }
}
