//! Test helpers: guest memory and descriptor chains built the way a driver lays them out.

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// `VRING_DESC_F_WRITE`.
const F_WRITE: u16 = 2;
/// `VRING_DESC_F_NEXT`.
const F_NEXT: u16 = 1;
/// `VRING_DESC_F_INDIRECT`.
const F_INDIRECT: u16 = 4;
/// Where an indirect descriptor table is placed.
const INDIRECT_TABLE: u64 = 0xf_0000;

/// Where request bytes are placed.
pub const REQ_ADDR: u64 = 0x1_0000;
/// Where the reply room starts.
pub const REPLY_ADDR: u64 = 0x8_0000;
/// End of the first region (a second, adjacent one follows up to `MEM_END`).
pub const REGION_SPLIT: u64 = 0x10_0000;
/// End of guest memory.
pub const MEM_END: u64 = 0x20_0000;

/// Guest memory of two adjacent regions with a descriptor table at 0.
pub struct Guest {
    /// The memory.
    pub mem: GuestMemoryMmap<()>,
}

impl Guest {
    pub fn new() -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), REGION_SPLIT as usize),
            (
                GuestAddress(REGION_SPLIT),
                (MEM_END - REGION_SPLIT) as usize,
            ),
        ])
        .expect("guest memory");
        Guest { mem }
    }

    /// A chain of `(addr, len, device-writable)` descriptors, in order.
    pub fn chain(&self, descs: &[(u64, u32, bool)]) -> DescriptorChain<&GuestMemoryMmap<()>> {
        let queue = MockSplitQueue::new(&self.mem, 64);
        let last = descs.len().saturating_sub(1);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let mut flags = if w { F_WRITE } else { 0 };
                if i != last {
                    flags |= F_NEXT;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, i as u16 + 1))
            })
            .collect();
        queue.add_desc_chains(&raw, 0).expect("descriptors");
        let mut q: Queue = queue.create_queue().expect("queue");
        let chain = q.pop_descriptor_chain(&self.mem);
        chain.expect("one chain")
    }

    /// A chain of one indirect descriptor whose table holds `descs`.
    pub fn indirect_chain(
        &self,
        descs: &[(u64, u32, bool)],
    ) -> DescriptorChain<&GuestMemoryMmap<()>> {
        let last = descs.len().saturating_sub(1);
        for (i, &(addr, len, w)) in descs.iter().enumerate() {
            let mut flags = if w { F_WRITE } else { 0 };
            if i != last {
                flags |= F_NEXT;
            }
            let d = SplitDescriptor::new(addr, len, flags, i as u16 + 1);
            self.mem
                .write_obj(d, GuestAddress(INDIRECT_TABLE + 16 * i as u64))
                .expect("indirect table");
        }
        let queue = MockSplitQueue::new(&self.mem, 64);
        let head = SplitDescriptor::new(INDIRECT_TABLE, 16 * descs.len() as u32, F_INDIRECT, 0);
        queue
            .add_desc_chains(&[RawDescriptor::from(head)], 0)
            .expect("descriptor");
        let mut q: Queue = queue.create_queue().expect("queue");
        q.pop_descriptor_chain(&self.mem).expect("one chain")
    }

    /// Writes `bytes` at `addr`.
    pub fn put(&self, addr: u64, bytes: &[u8]) {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("write");
    }

    /// Reads `len` bytes at `addr`.
    pub fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("read");
        v
    }

    /// A chain carrying `request` (split in two readable descriptors when longer than 8
    /// bytes) and `room` bytes of reply room in one writable descriptor (none if 0).
    pub fn request(&self, request: &[u8], room: u32) -> DescriptorChain<&GuestMemoryMmap<()>> {
        self.put(REQ_ADDR, request);
        let mut descs = Vec::new();
        let len = request.len() as u32;
        if len > 8 {
            descs.push((REQ_ADDR, 8, false));
            descs.push((REQ_ADDR + 8, len - 8, false));
        } else {
            descs.push((REQ_ADDR, len, false));
        }
        if room > 0 {
            // Clear the room so a reply can be told from leftovers.
            self.put(REPLY_ADDR, &vec![0xee; room as usize]);
            descs.push((REPLY_ADDR, room, true));
        }
        self.chain(&descs)
    }
}
