//! The driver side of a split virtqueue laid out in guest memory: descriptor table, available
//! ring and used ring, with `VIRTIO_RING_F_EVENT_IDX` and optional indirect descriptors.
//!
//! The ring arithmetic is in [`super::ring`] (re-exported here); [`DriverQueue`] does the guest
//! memory accesses and the eventfd/poll(2) calls.

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryError};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::memory::{GuestMem, MemoryError};
pub use super::ring::*;

/// Errors of the driver-side virtqueue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue size is zero, not a power of two or above 32768.
    #[error("queue size {0} is not a power of two between 1 and 32768")]
    BadSize(u16),
    /// A chain must have at least one descriptor.
    #[error("a descriptor chain needs at least one descriptor")]
    EmptyChain,
    /// Not enough free descriptors for the chain.
    #[error("{needed} descriptors needed but only {free} are free")]
    NoFreeDescriptors {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors free.
        free: usize,
    },
    /// The chain is longer than an indirect table slot.
    #[error("an indirect chain of {len} descriptors exceeds the table size {max}")]
    IndirectTooLong {
        /// Descriptors in the chain.
        len: usize,
        /// Table capacity.
        max: u16,
    },
    /// Indirect descriptors were asked for on a queue configured without them.
    #[error("the queue was set up without indirect descriptors")]
    NoIndirect,
    /// Accessing the rings in guest memory failed.
    #[error("cannot access the rings in guest memory")]
    Memory(#[source] GuestMemoryError),
    /// Placing the rings in guest memory failed.
    #[error("cannot place the rings in guest memory")]
    Alloc(#[source] MemoryError),
    /// Creating, writing or reading an eventfd failed.
    #[error("eventfd operation failed")]
    EventFd(#[source] std::io::Error),
    /// poll(2) failed.
    #[error("waiting on the call eventfd failed")]
    Poll(#[source] std::io::Error),
    /// Nothing was used before the timeout.
    #[error("no used buffer within {0:?}")]
    Timeout(Duration),
    /// The device returned an id that is not the head of an in-flight chain.
    #[error("the device used descriptor id {0}, which is not the head of an in-flight chain")]
    UnexpectedUsedId(u32),
    /// The device moved the used index past what was ever made available.
    #[error(
        "the device's used index moved {ahead} entries ahead with {in_flight} chains in flight"
    )]
    UsedIndexJump {
        /// Entries the used index is ahead of ours.
        ahead: u16,
        /// Chains in flight.
        in_flight: usize,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, QueueError>;

/// Places a ring of `size` entries in guest memory.
pub fn allocate_layout(mem: &mut GuestMem, size: u16) -> Result<RingLayout> {
    if !RingLayout::valid_size(size) {
        return Err(QueueError::BadSize(size));
    }
    let desc = mem
        .alloc(RingLayout::desc_table_bytes(size), 16)
        .map_err(QueueError::Alloc)?;
    let avail = mem
        .alloc(RingLayout::avail_ring_bytes(size), 2)
        .map_err(QueueError::Alloc)?;
    let used = mem
        .alloc(RingLayout::used_ring_bytes(size), 4)
        .map_err(QueueError::Alloc)?;
    Ok(RingLayout {
        size,
        desc,
        avail,
        used,
    })
}

/// Set-up of one driver queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Number of ring entries (a power of two).
    pub size: u16,
    /// Use `used_event` / `avail_event` (only if the device acked `VIRTIO_RING_F_EVENT_IDX`).
    pub event_idx: bool,
    /// Put every chain in an indirect table (only if the device acked
    /// `VIRTIO_RING_F_INDIRECT_DESC`); 0 disables indirect descriptors.
    pub indirect_max: u16,
}

/// The driver side of one split virtqueue.
#[derive(Debug)]
pub struct DriverQueue {
    layout: RingLayout,
    kick: EventFd,
    call: EventFd,
    event_idx: bool,
    indirect_base: Option<GuestAddress>,
    indirect_max: u16,
    use_indirect: bool,
    free: Vec<u16>,
    in_flight: Vec<Option<Vec<u16>>>,
    next_avail: u16,
    last_used: u16,
    kicks: u64,
}

impl DriverQueue {
    /// Places a queue in guest memory and creates its kick and call eventfds.
    pub fn new(mem: &mut GuestMem, config: QueueConfig) -> Result<Self> {
        let layout = allocate_layout(mem, config.size)?;
        let indirect_base = if config.indirect_max > 0 {
            let bytes = DESC_SIZE * u64::from(config.indirect_max) * u64::from(config.size);
            Some(mem.alloc(bytes, 16).map_err(QueueError::Alloc)?)
        } else {
            None
        };
        let kick = EventFd::new(EFD_NONBLOCK).map_err(QueueError::EventFd)?;
        let call = EventFd::new(EFD_NONBLOCK).map_err(QueueError::EventFd)?;
        let q = DriverQueue {
            layout,
            kick,
            call,
            event_idx: config.event_idx,
            indirect_base,
            indirect_max: config.indirect_max,
            use_indirect: indirect_base.is_some(),
            free: (0..config.size).rev().collect(),
            in_flight: vec![None; usize::from(config.size)],
            next_avail: 0,
            last_used: 0,
            kicks: 0,
        };
        q.reset_rings(mem)?;
        Ok(q)
    }

    fn reset_rings(&self, mem: &GuestMem) -> Result<()> {
        let m = mem.memory();
        let zero = |addr, len: u64| {
            m.write_slice(&vec![0u8; len as usize], addr)
                .map_err(QueueError::Memory)
        };
        zero(
            self.layout.desc,
            RingLayout::desc_table_bytes(self.layout.size),
        )?;
        zero(
            self.layout.avail,
            RingLayout::avail_ring_bytes(self.layout.size),
        )?;
        zero(
            self.layout.used,
            RingLayout::used_ring_bytes(self.layout.size),
        )
    }

    /// Where the rings are.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// The eventfd the driver writes to kick the device.
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The eventfd the device writes when it used buffers.
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// Whether chains go through indirect tables.
    pub fn uses_indirect(&self) -> bool {
        self.use_indirect
    }

    /// Switches between indirect and direct chains (only if the queue has an indirect area).
    pub fn set_use_indirect(&mut self, on: bool) -> Result<()> {
        if on && self.indirect_base.is_none() {
            return Err(QueueError::NoIndirect);
        }
        self.use_indirect = on;
        Ok(())
    }

    /// Sets whether EVENT_IDX is used (after feature negotiation).
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    /// Free descriptors in the table.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Chains made available and not yet used.
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().filter(|c| c.is_some()).count()
    }

    /// Number of kicks sent so far.
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    fn take_ids(&mut self, n: usize) -> Result<Vec<u16>> {
        if n == 0 {
            return Err(QueueError::EmptyChain);
        }
        if n > self.free.len() {
            return Err(QueueError::NoFreeDescriptors {
                needed: n,
                free: self.free.len(),
            });
        }
        let at = self.free.len() - n;
        let mut ids = self.free.split_off(at);
        ids.reverse();
        Ok(ids)
    }

    fn write_descs(
        &self,
        mem: &GuestMem,
        table: GuestAddress,
        ids: &[u16],
        descs: &[Descriptor],
    ) -> Result<()> {
        for (&id, d) in ids.iter().zip(descs) {
            let addr = GuestAddress(table.0 + DESC_SIZE * u64::from(id));
            mem.memory()
                .write_obj(d.to_le(), addr)
                .map_err(QueueError::Memory)?;
        }
        Ok(())
    }

    /// Writes a well-formed chain (device-readable buffers, then device-writable ones) and makes
    /// it available, through an indirect table if the queue uses them. Does not kick.
    pub fn add_chain(
        &mut self,
        mem: &GuestMem,
        readable: &[Buffer],
        writable: &[Buffer],
    ) -> Result<u16> {
        let descs = chain_descs(readable, writable);
        if self.use_indirect {
            self.add_raw_indirect(mem, &descs)
        } else {
            self.add_raw_chain(mem, &descs)
        }
    }

    /// Writes `descs` as a direct chain in the descriptor table, exactly as given apart from the
    /// chain links, and makes it available. Does not kick. Returns the head id.
    pub fn add_raw_chain(&mut self, mem: &GuestMem, descs: &[RawDesc]) -> Result<u16> {
        let ids = self.take_ids(descs.len())?;
        let written = self.write_descs(mem, self.layout.desc, &ids, &link_chain(descs, &ids));
        self.finish_add(mem, ids, written)
    }

    /// Writes descriptors with caller-chosen flags and links and makes the first available.
    /// A `next` below `descs.len()` is an index into `descs` (translated to the allocated id);
    /// any other `next` is written unchanged. So loops and links out of the table can be made.
    /// Does not kick. Returns the head id.
    pub fn add_crafted_chain(&mut self, mem: &GuestMem, descs: &[Descriptor]) -> Result<u16> {
        let ids = self.take_ids(descs.len())?;
        let written = self.write_descs(mem, self.layout.desc, &ids, &crafted_links(descs, &ids));
        self.finish_add(mem, ids, written)
    }

    /// Writes `descs` into the indirect table of one head descriptor (flag
    /// `VIRTQ_DESC_F_INDIRECT`) and makes it available. Does not kick. Returns the head id.
    pub fn add_raw_indirect(&mut self, mem: &GuestMem, descs: &[RawDesc]) -> Result<u16> {
        let base = self.indirect_base.ok_or(QueueError::NoIndirect)?;
        if descs.is_empty() {
            return Err(QueueError::EmptyChain);
        }
        if descs.len() > usize::from(self.indirect_max) {
            return Err(QueueError::IndirectTooLong {
                len: descs.len(),
                max: self.indirect_max,
            });
        }
        let ids = self.take_ids(1)?;
        let head = ids[0];
        let table =
            GuestAddress(base.0 + DESC_SIZE * u64::from(self.indirect_max) * u64::from(head));
        let local: Vec<u16> = (0..descs.len() as u16).collect();
        let linked = link_chain(descs, &local);
        let head_desc = Descriptor {
            addr: table.0,
            len: (DESC_SIZE as usize * descs.len()) as u32,
            flags: VIRTQ_DESC_F_INDIRECT,
            next: 0,
        };
        let written = self
            .write_descs(mem, table, &local, &linked)
            .and_then(|()| self.write_descs(mem, self.layout.desc, &ids, &[head_desc]));
        self.finish_add(mem, ids, written)
    }

    /// Ends an `add_*`: once the descriptors of the chain `ids` (head first, from
    /// [`Self::take_ids`], so never empty) are `written`, tracks the chain as in flight and makes
    /// its head available; if writing them failed, gives the ids back to the free list.
    fn finish_add(&mut self, mem: &GuestMem, ids: Vec<u16>, written: Result<()>) -> Result<u16> {
        if let Err(e) = written {
            self.free.extend(ids.iter().rev());
            return Err(e);
        }
        let head = ids[0];
        self.in_flight[usize::from(head)] = Some(ids);
        self.publish(mem, head)?;
        Ok(head)
    }

    /// Makes a descriptor id available as a chain head without writing any descriptor: the
    /// device sees whatever the table holds at `id` (for bad-input tests). The id is not
    /// tracked as in flight.
    pub fn publish_untracked(&mut self, mem: &GuestMem, id: u16) -> Result<()> {
        self.publish(mem, id)
    }

    fn publish(&mut self, mem: &GuestMem, head: u16) -> Result<()> {
        let m = mem.memory();
        m.write_obj(head.to_le(), self.layout.avail_slot_addr(self.next_avail))
            .map_err(QueueError::Memory)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        fence(Ordering::Release);
        m.store(
            self.next_avail.to_le(),
            self.layout.avail_idx_addr(),
            Ordering::Release,
        )
        .map_err(QueueError::Memory)
    }

    /// Whether the device wants a kick for the entries published since `old_avail`.
    fn device_wants_kick(&self, mem: &GuestMem, old_avail: u16) -> Result<bool> {
        fence(Ordering::SeqCst);
        let m = mem.memory();
        if self.event_idx {
            let event: u16 = m
                .load(self.layout.avail_event_addr(), Ordering::Acquire)
                .map_err(QueueError::Memory)?;
            Ok(need_event(u16::from_le(event), self.next_avail, old_avail))
        } else {
            let flags: u16 = m
                .load(self.layout.used_flags_addr(), Ordering::Acquire)
                .map_err(QueueError::Memory)?;
            Ok(u16::from_le(flags) & VIRTQ_USED_F_NO_NOTIFY == 0)
        }
    }

    /// The free-running available index (entries published so far).
    pub fn avail_idx(&self) -> u16 {
        self.next_avail
    }

    /// Kicks the device if it asked for it for entries published since `old_avail` (the value
    /// of [`avail_idx`](Self::avail_idx) before publishing). Returns whether it kicked.
    pub fn notify_since(&mut self, mem: &GuestMem, old_avail: u16) -> Result<bool> {
        if self.device_wants_kick(mem, old_avail)? {
            self.kick()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Kicks the device unconditionally.
    pub fn kick(&mut self) -> Result<()> {
        self.kicks += 1;
        self.kick.write(1).map_err(QueueError::EventFd)
    }

    /// Takes the next used element, if the device published one, and frees its descriptors.
    pub fn pop_used(&mut self, mem: &GuestMem) -> Result<Option<UsedElem>> {
        let m = mem.memory();
        let used_idx: u16 = m
            .load(self.layout.used_idx_addr(), Ordering::Acquire)
            .map_err(QueueError::Memory)?;
        let used_idx = u16::from_le(used_idx);
        if used_idx == self.last_used {
            return Ok(None);
        }
        let ahead = used_idx.wrapping_sub(self.last_used);
        if usize::from(ahead) > self.in_flight() {
            return Err(QueueError::UsedIndexJump {
                ahead,
                in_flight: self.in_flight(),
            });
        }
        fence(Ordering::Acquire);
        let addr = self.layout.used_elem_addr(self.last_used);
        let id: u32 = m.read_obj(addr).map_err(QueueError::Memory)?;
        let len: u32 = m
            .read_obj(GuestAddress(addr.0 + 4))
            .map_err(QueueError::Memory)?;
        let (id, len) = (u32::from_le(id), u32::from_le(len));
        self.last_used = self.last_used.wrapping_add(1);
        let chain = usize::try_from(id)
            .ok()
            .and_then(|i| self.in_flight.get_mut(i))
            .and_then(Option::take)
            .ok_or(QueueError::UnexpectedUsedId(id))?;
        self.free.extend(chain.iter().rev());
        Ok(Some(UsedElem { id, len }))
    }

    /// Waits up to `timeout` for the next used element.
    pub fn wait_used(&mut self, mem: &GuestMem, timeout: Duration) -> Result<UsedElem> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.pop_used(mem)? {
                return Ok(e);
            }
            if self.event_idx {
                mem.memory()
                    .store(
                        self.last_used.to_le(),
                        self.layout.used_event_addr(),
                        Ordering::Release,
                    )
                    .map_err(QueueError::Memory)?;
                fence(Ordering::SeqCst);
                if let Some(e) = self.pop_used(mem)? {
                    return Ok(e);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QueueError::Timeout(timeout));
            }
            poll_readable(self.call.as_raw_fd(), left)?;
            // Drain the counter; EAGAIN only means the wake-up was for an earlier entry.
            let _ = self.call.read();
        }
    }
}

/// Translates the relative `next` fields of crafted descriptors (see
/// [`DriverQueue::add_crafted_chain`]) to the allocated `ids`.
pub fn crafted_links(descs: &[Descriptor], ids: &[u16]) -> Vec<Descriptor> {
    descs
        .iter()
        .map(|d| Descriptor {
            next: ids.get(usize::from(d.next)).copied().unwrap_or(d.next),
            ..*d
        })
        .collect()
}

/// Waits until `fd` is readable or `timeout` passes (thin poll(2) wrapper).
fn poll_readable(fd: i32, timeout: Duration) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
    // SAFETY: `pfd` is a valid, initialised pollfd that lives across the call, and nfds is 1.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(QueueError::Poll(e));
    }
    Ok(r > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMem {
        GuestMem::new(GuestAddress(0x10_0000), 0x10_0000).unwrap()
    }

    /// Plays the device: uses the next available chain with `len`.
    fn device_use(mem: &GuestMem, l: &RingLayout, used_idx: u16, len: u32) {
        let m = mem.memory();
        let head: u16 = m.read_obj(l.avail_slot_addr(used_idx)).unwrap();
        m.write_obj(u32::from(head), l.used_elem_addr(used_idx))
            .unwrap();
        m.write_obj(len, GuestAddress(l.used_elem_addr(used_idx).0 + 4))
            .unwrap();
        m.write_obj(used_idx.wrapping_add(1), l.used_idx_addr())
            .unwrap();
    }

    #[test]
    fn direct_chain_round_trip_frees_descriptors() {
        let mut mem = mem();
        let cfg = QueueConfig {
            size: 4,
            event_idx: true,
            indirect_max: 0,
        };
        let mut q = DriverQueue::new(&mut mem, cfg).unwrap();
        let b = Buffer {
            addr: GuestAddress(0x18_0000),
            len: 8,
        };
        let head = q.add_chain(&mem, &[b, b], &[b]).unwrap();
        assert_eq!(q.free_descriptors(), 1);
        assert!(matches!(
            q.add_chain(&mem, &[b, b], &[]),
            Err(QueueError::NoFreeDescriptors { needed: 2, free: 1 })
        ));
        let l = q.layout();
        let d: Descriptor = mem.memory().read_obj(l.desc_addr(head)).unwrap();
        assert_eq!(d.flags, VIRTQ_DESC_F_NEXT);
        // avail_event = 0: the device wants a kick for entry 0.
        assert!(q.notify_since(&mem, 0).unwrap());
        assert_eq!(q.call_fd().read().ok(), None, "nothing signalled yet");
        device_use(&mem, &l, 0, 5);
        q.call_fd().write(1).unwrap();
        let e = q.wait_used(&mem, Duration::from_millis(100)).unwrap();
        assert_eq!(
            e,
            UsedElem {
                id: u32::from(head),
                len: 5
            }
        );
        assert_eq!(q.free_descriptors(), 4);
        assert!(matches!(
            q.wait_used(&mem, Duration::from_millis(10)),
            Err(QueueError::Timeout(_))
        ));
        let used_event: u16 = mem.memory().read_obj(l.used_event_addr()).unwrap();
        assert_eq!(used_event, 1, "asks to be called for the next entry");
        // avail_event still 0: publishing entry 1 needs no kick.
        let old = q.avail_idx();
        q.add_chain(&mem, &[b], &[]).unwrap();
        assert!(!q.notify_since(&mem, old).unwrap());
    }

    #[test]
    fn indirect_chain_uses_one_table_slot() {
        let mut mem = mem();
        let cfg = QueueConfig {
            size: 2,
            event_idx: false,
            indirect_max: 8,
        };
        let mut q = DriverQueue::new(&mut mem, cfg).unwrap();
        let b = Buffer {
            addr: GuestAddress(0x18_0000),
            len: 8,
        };
        let head = q.add_chain(&mem, &[b, b, b], &[b, b]).unwrap();
        assert_eq!(q.free_descriptors(), 1);
        let d: Descriptor = mem.memory().read_obj(q.layout().desc_addr(head)).unwrap();
        assert_eq!(d.flags, VIRTQ_DESC_F_INDIRECT);
        assert_eq!(d.len, 5 * 16);
        let last: Descriptor = mem
            .memory()
            .read_obj(GuestAddress(d.addr + 4 * 16))
            .unwrap();
        assert_eq!(last.flags, VIRTQ_DESC_F_WRITE);
        let first: Descriptor = mem.memory().read_obj(GuestAddress(d.addr)).unwrap();
        assert_eq!((first.flags, first.next), (VIRTQ_DESC_F_NEXT, 1));
        assert!(matches!(
            q.add_chain(&mem, &[b; 9], &[]),
            Err(QueueError::IndirectTooLong { len: 9, max: 8 })
        ));
        // Without EVENT_IDX the used flags decide; zero means "kick me".
        assert!(q.notify_since(&mem, 0).unwrap());
        assert_eq!(q.kicks(), 1);
    }

    #[test]
    fn crafted_links_are_relative_inside_and_raw_outside() {
        let d = |next| Descriptor {
            addr: 1,
            len: 2,
            flags: VIRTQ_DESC_F_NEXT,
            next,
        };
        let out = crafted_links(&[d(1), d(0), d(500)], &[7, 3, 9]);
        assert_eq!(
            out.iter().map(|d| d.next).collect::<Vec<_>>(),
            vec![3, 7, 500]
        );
    }

    #[test]
    fn used_ids_that_are_not_in_flight_are_errors() {
        let mut mem = mem();
        let cfg = QueueConfig {
            size: 4,
            event_idx: false,
            indirect_max: 0,
        };
        let mut q = DriverQueue::new(&mut mem, cfg).unwrap();
        let l = q.layout();
        let b = Buffer {
            addr: GuestAddress(0x18_0000),
            len: 8,
        };
        q.add_chain(&mem, &[b], &[]).unwrap();
        mem.memory().write_obj(3u32, l.used_elem_addr(0)).unwrap();
        mem.memory().write_obj(1u16, l.used_idx_addr()).unwrap();
        assert!(matches!(
            q.pop_used(&mem),
            Err(QueueError::UnexpectedUsedId(3))
        ));
        mem.memory().write_obj(9u16, l.used_idx_addr()).unwrap();
        assert!(matches!(
            q.pop_used(&mem),
            Err(QueueError::UsedIndexJump { .. })
        ));
    }
}
