//! A pipelined virtio-fs connection: the driver's guest memory, vhost-user frontend and split
//! rings ([`vfsdax_driver`]), with one request and one reply area per slot so that up to
//! [`MAX_DEPTH`] requests are in flight on the request queue at once, kicks batched (one per
//! wait, EVENT_IDX permitting), and FORGETs sent on the hiprio queue without waiting.
//!
//! Unlike [`vfsdax_driver::FsClient`], the frontend never copies READ data out of, or WRITE data
//! into, guest memory per request: the data rows measure the daemon's copy, not ours.

use std::mem::size_of;
use std::path::Path;
use std::time::Duration;

use vfsdax_driver::frontend::{HIPRIO_QUEUE, REQUEST_QUEUE};
use vfsdax_driver::fuse::{encode_request, Caller};
use vfsdax_driver::queue::{DriverQueue, QueueConfig};
use vfsdax_driver::{Buffer, FeatureWishes, FsFrontend, GuestMem};
use vfsdax_protocol::fuse::{ForgetIn, InHeader, Opcode, OutHeader};
use vm_memory::{ByteValued, Bytes, GuestAddress};

/// Most requests in flight on the request queue.
pub const MAX_DEPTH: usize = 32;
/// Largest READ/WRITE payload.
pub const MAX_IO: u32 = 1 << 20;
/// Where a slot's WRITE payload sits, from the start of its request area.
pub const DATA_OFFSET: u64 = 4096;
/// Bytes of each request and each reply area.
const AREA: u64 = MAX_IO as u64 + 2 * DATA_OFFSET;
/// Entries per ring.
const QUEUE_SIZE: u16 = 128;
/// Descriptors per indirect table.
const INDIRECT_MAX: u16 = 8;
/// FORGET request buffers on the hiprio queue (more than the ring holds, used in turn).
const FORGET_SLOTS: u64 = 2 * QUEUE_SIZE as u64;
/// Bytes of each FORGET buffer.
const FORGET_BYTES: u64 = 64;
/// How long to wait for a used buffer before calling the daemon stuck.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Errors of a connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Guest memory could not be set up.
    #[error("guest memory set-up failed: {0}")]
    Memory(#[from] vfsdax_driver::memory::MemoryError),
    /// The vhost-user handshake failed.
    #[error("vhost-user handshake failed: {0}")]
    Frontend(#[from] vfsdax_driver::frontend::FrontendError),
    /// A ring operation failed (a timeout included).
    #[error("virtqueue: {0}")]
    Queue(#[from] vfsdax_driver::queue::QueueError),
    /// Guest memory access failed.
    #[error("guest memory access: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// A request could not be encoded.
    #[error("encoding a request: {0}")]
    Encode(#[from] vfsdax_driver::FuseError),
    /// The daemon answered with an error.
    #[error("{op:?} failed with errno {errno}")]
    Errno {
        /// The request.
        op: Opcode,
        /// The errno.
        errno: i32,
    },
    /// The reply does not fit what was sent.
    #[error("{op:?}: malformed reply ({what})")]
    BadReply {
        /// The request.
        op: Opcode,
        /// What is wrong.
        what: &'static str,
    },
    /// The device used a chain we did not make.
    #[error("used element for unknown head {0}")]
    UnknownHead(u32),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ConnError>;

/// The request and reply areas of one slot.
#[derive(Clone, Copy, Debug)]
struct Area {
    req: GuestAddress,
    reply: GuestAddress,
}

/// A request a slot has in flight.
#[derive(Clone, Copy, Debug)]
struct Pending {
    slot: usize,
    op: Opcode,
    unique: u64,
}

/// A connected, initialised virtio-fs driver with pipelined request slots.
pub struct Conn {
    mem: GuestMem,
    _frontend: FsFrontend,
    req_q: DriverQueue,
    hi_q: DriverQueue,
    areas: Vec<Area>,
    forget_area: GuestAddress,
    forgets_sent: u64,
    /// What each descriptor head in flight on the request queue belongs to.
    pending: Vec<Option<Pending>>,
    /// The available index at the last kick decision, if something was published since.
    unkicked_since: Option<u16>,
    next_unique: u64,
}

impl Conn {
    /// Connects to the daemon at `socket` and sets up memory, rings and slots (no INIT yet).
    pub fn connect(socket: &Path) -> Result<Self> {
        let slots = MAX_DEPTH as u64;
        let rings = 2 * (64 << 10) + 2 * u64::from(QUEUE_SIZE) * 16 * u64::from(INDIRECT_MAX);
        let size = 2 * slots * AREA + FORGET_SLOTS * FORGET_BYTES + rings + (1 << 20);
        let size = (size + 0xfff) & !0xfff;
        let mut mem = GuestMem::new(GuestAddress(0x1_0000_0000), size as usize)?;
        let mut frontend = FsFrontend::connect(socket, FeatureWishes::default())?;
        let cfg = QueueConfig {
            size: QUEUE_SIZE,
            event_idx: frontend.event_idx(),
            indirect_max: if frontend.indirect() { INDIRECT_MAX } else { 0 },
        };
        let hi_q = DriverQueue::new(&mut mem, cfg)?;
        let req_q = DriverQueue::new(&mut mem, cfg)?;
        let mut areas = Vec::with_capacity(MAX_DEPTH);
        for _ in 0..MAX_DEPTH {
            let req = mem.alloc(AREA, 4096)?;
            let reply = mem.alloc(AREA, 4096)?;
            areas.push(Area { req, reply });
        }
        let forget_area = mem.alloc(FORGET_SLOTS * FORGET_BYTES, 64)?;
        frontend.set_mem_table(&mem)?;
        frontend.setup_queue(HIPRIO_QUEUE, &mem, &hi_q)?;
        frontend.setup_queue(REQUEST_QUEUE, &mem, &req_q)?;
        Ok(Conn {
            mem,
            _frontend: frontend,
            req_q,
            hi_q,
            areas,
            forget_area,
            forgets_sent: 0,
            pending: vec![None; usize::from(QUEUE_SIZE)],
            unkicked_since: None,
            next_unique: 1,
        })
    }

    /// Fills `len` bytes of `slot`'s WRITE payload with a pattern (once per row).
    pub fn fill_payload(&mut self, slot: usize, len: u32) -> Result<()> {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        let at = GuestAddress(self.areas[slot].req.0 + DATA_OFFSET);
        self.mem.memory().write_slice(&data, at)?;
        Ok(())
    }

    /// Puts a request on the request queue for `slot`: `fuse_in_header` + `parts`, then
    /// `payload` bytes of the slot's WRITE payload as a second readable descriptor, and room
    /// for `reply_cap` bytes after `fuse_out_header`. Does not kick (see [`Self::wait`]).
    pub fn submit(
        &mut self,
        slot: usize,
        op: Opcode,
        nodeid: u64,
        parts: &[&[u8]],
        payload: u32,
        reply_cap: u32,
    ) -> Result<()> {
        let unique = self.next_unique;
        self.next_unique += 1;
        let mut bytes = encode_request(op, unique, nodeid, Caller::default(), parts)?;
        if payload > 0 {
            // The header's length covers the payload that follows in the next descriptor.
            let len = (bytes.len() as u32 + payload).to_le_bytes();
            bytes[..4].copy_from_slice(&len);
        }
        let area = self.areas[slot];
        self.mem.memory().write_slice(&bytes, area.req)?;
        let mut readable = [
            Buffer {
                addr: area.req,
                len: bytes.len() as u32,
            },
            Buffer {
                addr: GuestAddress(area.req.0 + DATA_OFFSET),
                len: payload,
            },
        ]
        .to_vec();
        if payload == 0 {
            readable.truncate(1);
        }
        let writable = [Buffer {
            addr: area.reply,
            len: size_of::<OutHeader>() as u32 + reply_cap,
        }];
        let old = self.req_q.avail_idx();
        let head = self.req_q.add_chain(&self.mem, &readable, &writable)?;
        self.unkicked_since.get_or_insert(old);
        self.pending[usize::from(head)] = Some(Pending { slot, op, unique });
        Ok(())
    }

    /// Kicks the request queue if the device asked for it since the last kick.
    fn flush_kick(&mut self) -> Result<()> {
        if let Some(old) = self.unkicked_since.take() {
            self.req_q.notify_since(&self.mem, old)?;
        }
        Ok(())
    }

    /// Waits for the next completed request and returns its slot and reply body length, after
    /// checking the reply header (an error reply is [`ConnError::Errno`]).
    pub fn wait(&mut self) -> Result<(usize, u32)> {
        let elem = match self.req_q.pop_used(&self.mem)? {
            Some(e) => e,
            None => {
                self.flush_kick()?;
                self.reap_forgets()?;
                self.req_q.wait_used(&self.mem, TIMEOUT)?
            }
        };
        let p = self
            .pending
            .get_mut(elem.id as usize)
            .and_then(Option::take)
            .ok_or(ConnError::UnknownHead(elem.id))?;
        let hdr: OutHeader = self.mem.memory().read_obj(self.areas[p.slot].reply)?;
        let bad = |what| ConnError::BadReply { op: p.op, what };
        if hdr.unique != p.unique {
            return Err(bad("unique differs"));
        }
        if hdr.len != elem.len || (hdr.len as usize) < size_of::<OutHeader>() {
            return Err(bad("length differs from the used length"));
        }
        if hdr.error != 0 {
            return Err(ConnError::Errno {
                op: p.op,
                errno: -hdr.error,
            });
        }
        Ok((p.slot, hdr.len - size_of::<OutHeader>() as u32))
    }

    /// Reads a fixed-size reply structure of `slot` from `offset` in its reply body.
    pub fn reply_obj<T: ByteValued>(&self, slot: usize, offset: u64) -> Result<T> {
        let at = self.areas[slot].reply.0 + size_of::<OutHeader>() as u64 + offset;
        Ok(self.mem.memory().read_obj(GuestAddress(at))?)
    }

    /// Copies `out.len()` bytes of `slot`'s reply body.
    pub fn reply_bytes(&self, slot: usize, out: &mut [u8]) -> Result<()> {
        let at = self.areas[slot].reply.0 + size_of::<OutHeader>() as u64;
        self.mem.memory().read_slice(out, GuestAddress(at))?;
        Ok(())
    }

    /// One request on slot 0 and its reply body (set-up only: nothing else may be in flight).
    pub fn call(&mut self, op: Opcode, nodeid: u64, parts: &[&[u8]], cap: u32) -> Result<Vec<u8>> {
        self.submit(0, op, nodeid, parts, 0, cap)?;
        let (slot, len) = self.wait()?;
        let mut body = vec![0u8; len as usize];
        self.reply_bytes(slot, &mut body)?;
        Ok(body)
    }

    /// Sends FORGET(`nodeid`, `nlookup`) on the hiprio queue and kicks; the chain is reclaimed
    /// later, while waiting for the request queue.
    pub fn forget(&mut self, nodeid: u64, nlookup: u64) -> Result<()> {
        self.reap_forgets()?;
        if self.hi_q.free_descriptors() == 0 {
            self.hi_q.wait_used(&self.mem, TIMEOUT)?;
        }
        let at =
            GuestAddress(self.forget_area.0 + (self.forgets_sent % FORGET_SLOTS) * FORGET_BYTES);
        self.forgets_sent += 1;
        let unique = self.next_unique;
        self.next_unique += 1;
        let arg = ForgetIn { nlookup };
        let bytes = encode_request(
            Opcode::Forget,
            unique,
            nodeid,
            Caller::default(),
            &[arg.as_slice()],
        )?;
        debug_assert!(bytes.len() as u64 <= FORGET_BYTES);
        debug_assert_eq!(bytes.len(), size_of::<InHeader>() + size_of::<ForgetIn>());
        self.mem.memory().write_slice(&bytes, at)?;
        let old = self.hi_q.avail_idx();
        let readable = [Buffer {
            addr: at,
            len: bytes.len() as u32,
        }];
        self.hi_q.add_chain(&self.mem, &readable, &[])?;
        self.hi_q.notify_since(&self.mem, old)?;
        Ok(())
    }

    /// Takes back the FORGET chains the daemon is done with.
    fn reap_forgets(&mut self) -> Result<()> {
        while self.hi_q.pop_used(&self.mem)?.is_some() {}
        Ok(())
    }

    /// Waits until every FORGET sent was taken (so a following measurement starts clean).
    pub fn drain_forgets(&mut self) -> Result<()> {
        while self.hi_q.in_flight() > 0 {
            self.hi_q.wait_used(&self.mem, TIMEOUT)?;
        }
        Ok(())
    }
}
