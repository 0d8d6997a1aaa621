//! [`FsClient`]: a virtio-fs driver on the host. It owns guest memory, the vhost-user frontend
//! and the hiprio and request queues, and sends one FUSE request at a time. The per-opcode
//! methods are in [`super::ops`].

use std::path::Path;
use std::time::Duration;

use vfsdax_protocol::fuse::{InitOut, Opcode, OutHeader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use super::frontend::{FeatureWishes, FrontendError, FsFrontend, HIPRIO_QUEUE, REQUEST_QUEUE};
use super::fuse::{self, Caller, FuseError};
use super::memory::{GuestMem, MemoryError};
use super::queue::{Buffer, DriverQueue, QueueConfig, QueueError, RawDesc, UsedElem};

/// Errors of the driver's client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Guest memory set-up failed.
    #[error("guest memory set-up failed")]
    Memory(#[from] MemoryError),
    /// Reading or writing a buffer in guest memory failed.
    #[error("cannot access a buffer in guest memory")]
    GuestMemory(#[from] GuestMemoryError),
    /// The vhost-user handshake failed.
    #[error("the vhost-user handshake failed")]
    Frontend(#[from] FrontendError),
    /// A virtqueue operation failed (including timeouts).
    #[error("virtqueue operation failed")]
    Queue(#[from] QueueError),
    /// The request could not be encoded or the reply was an error or malformed.
    #[error("FUSE request failed")]
    Fuse(#[from] FuseError),
    /// A request or reply does not fit the buffers set aside for it.
    #[error("{len} bytes do not fit the {cap}-byte buffer")]
    TooLarge {
        /// Bytes needed.
        len: usize,
        /// Buffer size.
        cap: u32,
    },
    /// A request that takes no reply got one.
    #[error("a request without reply got {0} reply bytes")]
    UnexpectedReply(u32),
    /// The options are inconsistent.
    #[error("invalid client options: {0}")]
    BadOptions(&'static str),
}

impl ClientError {
    /// The errno of an error reply, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ClientError::Fuse(FuseError::Errno(e)) => Some(*e),
            _ => None,
        }
    }
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ClientError>;

/// How to set the client up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Entries per queue (a power of two).
    pub queue_size: u16,
    /// Largest READ/WRITE payload; sizes the request and reply buffers.
    pub max_io: u32,
    /// Features to ask for.
    pub wishes: FeatureWishes,
    /// Send chains through indirect tables when the daemon acked them.
    pub use_indirect: bool,
    /// Split every buffer into descriptors of at most this many bytes (exercises
    /// scatter-gather in the daemon).
    pub max_desc_len: u32,
    /// How long to wait for a used buffer.
    pub timeout: Duration,
    /// uid/gid/pid put in every request.
    pub caller: Caller,
    /// Guest memory set aside for [`FsClient::request_batch`] (requests and replies of one
    /// batch together).
    pub batch_bytes: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            queue_size: 128,
            max_io: 1 << 20,
            wishes: FeatureWishes::default(),
            use_indirect: true,
            max_desc_len: u32::MAX,
            timeout: Duration::from_secs(5),
            caller: Caller::default(),
            batch_bytes: 1 << 20,
        }
    }
}

/// Descriptors one indirect table can hold.
const INDIRECT_MAX: u16 = 64;
/// Room for headers and names beyond `max_io` in each buffer.
const SLACK: u32 = 8192;

/// The request and reply buffers of one queue.
#[derive(Clone, Copy, Debug)]
struct IoArea {
    req: GuestAddress,
    reply: GuestAddress,
    cap: u32,
}

/// What the device wrote for a hand-made request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawReply {
    /// The used element's `len`.
    pub used_len: u32,
    /// The first `min(used_len, writable_len)` bytes of the writable buffers.
    pub data: Vec<u8>,
}

impl RawReply {
    /// The reply's `fuse_out_header`, if at least that many bytes were written.
    pub fn header(&self) -> Option<OutHeader> {
        fuse::read_struct(&self.data)
    }
}

/// Splits `[addr, addr + len)` into buffers of at most `max` bytes (one empty buffer for 0).
pub fn split_buffer(addr: GuestAddress, len: u32, max: u32) -> Vec<Buffer> {
    let max = max.max(1);
    if len == 0 {
        return vec![Buffer { addr, len: 0 }];
    }
    let mut out = Vec::new();
    let mut off = 0u32;
    while off < len {
        let n = (len - off).min(max);
        out.push(Buffer {
            addr: GuestAddress(addr.0 + u64::from(off)),
            len: n,
        });
        off += n;
    }
    out
}

/// A virtio-fs driver connected to a daemon.
#[derive(Debug)]
pub struct FsClient {
    mem: GuestMem,
    frontend: FsFrontend,
    queues: Vec<DriverQueue>,
    areas: Vec<IoArea>,
    batch: (GuestAddress, u32),
    next_unique: u64,
    opts: ClientOptions,
    pub(super) init_out: Option<InitOut>,
}

impl FsClient {
    /// Connects to the daemon at `socket`, sets up guest memory and both queues. Send
    /// [`init`](Self::init) next.
    pub fn connect(socket: &Path, opts: ClientOptions) -> Result<Self> {
        if opts.max_io == 0 || opts.max_io > (64 << 20) {
            return Err(ClientError::BadOptions(
                "max_io must be between 1 byte and 64 MiB",
            ));
        }
        let cap = opts.max_io + SLACK;
        let rings = 2 * (64 << 10) + 2 * u64::from(opts.queue_size) * 16 * u64::from(INDIRECT_MAX);
        let size = 4 * u64::from(cap) + u64::from(opts.batch_bytes) + rings + (1 << 20);
        let size = usize::try_from((size + 0xfff) & !0xfff)
            .map_err(|_| ClientError::BadOptions("guest memory too large"))?;
        let mut mem = GuestMem::new(GuestAddress(0x1_0000_0000), size)?;
        let mut frontend = FsFrontend::connect(socket, opts.wishes)?;
        let indirect = opts.use_indirect && frontend.indirect();
        let qcfg = QueueConfig {
            size: opts.queue_size,
            event_idx: frontend.event_idx(),
            indirect_max: if indirect { INDIRECT_MAX } else { 0 },
        };
        let queues = vec![
            DriverQueue::new(&mut mem, qcfg)?,
            DriverQueue::new(&mut mem, qcfg)?,
        ];
        let mut areas = Vec::new();
        for _ in 0..queues.len() {
            let req = mem.alloc(u64::from(cap), 4096)?;
            let reply = mem.alloc(u64::from(cap), 4096)?;
            areas.push(IoArea { req, reply, cap });
        }
        let batch = (
            mem.alloc(u64::from(opts.batch_bytes.max(1)), 4096)?,
            opts.batch_bytes,
        );
        frontend.set_mem_table(&mem)?;
        for (i, q) in queues.iter().enumerate() {
            frontend.setup_queue(i, &mem, q)?;
        }
        Ok(FsClient {
            mem,
            frontend,
            queues,
            areas,
            batch,
            next_unique: 1,
            opts,
            init_out: None,
        })
    }

    /// Guest memory (to place hand-made buffers with [`GuestMem::alloc`]).
    pub fn memory(&self) -> &GuestMem {
        &self.mem
    }

    /// Guest memory, mutably.
    pub fn memory_mut(&mut self) -> &mut GuestMem {
        &mut self.mem
    }

    /// The vhost-user frontend and the negotiated features.
    pub fn frontend(&self) -> &FsFrontend {
        &self.frontend
    }

    /// The vhost-user frontend, mutably (DAX set-up sends more requests on it).
    pub fn frontend_mut(&mut self) -> &mut FsFrontend {
        &mut self.frontend
    }

    /// Queue `index` (0 hiprio, 1 requests).
    pub fn queue(&self, index: usize) -> Option<&DriverQueue> {
        self.queues.get(index)
    }

    /// The options the client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// The INIT reply, once [`init`](Self::init) succeeded.
    pub fn init_out(&self) -> Option<&InitOut> {
        self.init_out.as_ref()
    }

    /// Sets the uid/gid/pid of following requests.
    pub fn set_caller(&mut self, caller: Caller) {
        self.opts.caller = caller;
    }

    /// Reserves a request id.
    pub fn alloc_unique(&mut self) -> u64 {
        let u = self.next_unique;
        self.next_unique += 1;
        u
    }

    /// The id the next request will get.
    pub fn peek_unique(&self) -> u64 {
        self.next_unique
    }

    /// Publishes a chain, kicks if the device wants it and waits for that chain to be used
    /// (used elements of earlier, abandoned chains are skipped).
    fn run_chain(
        &mut self,
        q: usize,
        readable: &[Buffer],
        writable: &[Buffer],
    ) -> Result<UsedElem> {
        let queue = &mut self.queues[q];
        let old = queue.avail_idx();
        let head = queue.add_chain(&self.mem, readable, writable)?;
        queue.notify_since(&self.mem, old)?;
        self.wait_for(q, head)
    }

    fn wait_for(&mut self, q: usize, head: u16) -> Result<UsedElem> {
        loop {
            let e = self.queues[q].wait_used(&self.mem, self.opts.timeout)?;
            if e.id == u32::from(head) {
                return Ok(e);
            }
        }
    }

    /// Sends `readable` (each slice its own descriptor(s)) with `writable_len` bytes of
    /// writable buffer on queue `q`, and returns what the device wrote.
    pub fn transact(
        &mut self,
        q: usize,
        readable: &[&[u8]],
        writable_len: u32,
    ) -> Result<RawReply> {
        let area = *self
            .areas
            .get(q)
            .ok_or(ClientError::BadOptions("no such queue"))?;
        let total: usize = readable.iter().map(|p| p.len()).sum();
        if total > area.cap as usize {
            return Err(ClientError::TooLarge {
                len: total,
                cap: area.cap,
            });
        }
        if writable_len > area.cap {
            return Err(ClientError::TooLarge {
                len: writable_len as usize,
                cap: area.cap,
            });
        }
        let max = self.opts.max_desc_len;
        let mut rbufs = Vec::new();
        let mut off = 0u64;
        for part in readable {
            let addr = GuestAddress(area.req.0 + off);
            self.mem.memory().write_slice(part, addr)?;
            rbufs.extend(split_buffer(addr, part.len() as u32, max));
            off += part.len() as u64;
        }
        let wbufs = if writable_len > 0 {
            // Poison the reply area so stale bytes cannot pass for a reply.
            self.mem
                .memory()
                .write_slice(&vec![0xa5; writable_len as usize], area.reply)?;
            split_buffer(area.reply, writable_len, max)
        } else {
            Vec::new()
        };
        let used = self.run_chain(q, &rbufs, &wbufs)?;
        let n = used.len.min(writable_len) as usize;
        let mut data = vec![0u8; n];
        self.mem.memory().read_slice(&mut data, area.reply)?;
        Ok(RawReply {
            used_len: used.len,
            data,
        })
    }

    /// Sends a hand-made request on the request queue.
    pub fn send_raw(&mut self, readable: &[&[u8]], writable_len: u32) -> Result<RawReply> {
        self.transact(REQUEST_QUEUE, readable, writable_len)
    }

    /// Publishes arbitrary descriptors on queue `q` (direct, or in one indirect table), kicks
    /// and waits for the chain to be used. A chain the daemon drops shows as a timeout.
    pub fn raw_chain(&mut self, q: usize, descs: &[RawDesc], indirect: bool) -> Result<UsedElem> {
        let queue = self
            .queues
            .get_mut(q)
            .ok_or(ClientError::BadOptions("no such queue"))?;
        let head = if indirect {
            queue.add_raw_indirect(&self.mem, descs)?
        } else {
            queue.add_raw_chain(&self.mem, descs)?
        };
        queue.kick()?;
        self.wait_for(q, head)
    }

    /// Publishes crafted descriptors (see [`DriverQueue::add_crafted_chain`]: loops, links out
    /// of the table) on queue `q`, kicks and waits for the chain to be used.
    pub fn crafted_chain(
        &mut self,
        q: usize,
        descs: &[super::queue::Descriptor],
    ) -> Result<UsedElem> {
        let queue = self
            .queues
            .get_mut(q)
            .ok_or(ClientError::BadOptions("no such queue"))?;
        let head = queue.add_crafted_chain(&self.mem, descs)?;
        queue.kick()?;
        self.wait_for(q, head)
    }

    /// Sends a request with opcode `op` about `nodeid` on the request queue, with room for a
    /// reply body of `reply_cap` bytes, and returns the checked reply body.
    pub fn request(
        &mut self,
        op: Opcode,
        nodeid: u64,
        parts: &[&[u8]],
        reply_cap: u32,
    ) -> Result<Vec<u8>> {
        let unique = self.alloc_unique();
        let req = fuse::encode_request(op, unique, nodeid, self.opts.caller, parts)?;
        let hdr = std::mem::size_of::<OutHeader>() as u32;
        let reply = self.transact(REQUEST_QUEUE, &[&req], hdr + reply_cap)?;
        let body = fuse::parse_reply(&reply.data, reply.used_len, unique)?;
        Ok(body.to_vec())
    }

    /// Sends a request that takes no reply (FORGET, BATCH_FORGET, INTERRUPT) on the hiprio
    /// queue and waits for the device to return the chain.
    pub fn request_no_reply(&mut self, op: Opcode, nodeid: u64, parts: &[&[u8]]) -> Result<()> {
        let unique = self.alloc_unique();
        let req = fuse::encode_request(op, unique, nodeid, self.opts.caller, parts)?;
        let reply = self.transact(HIPRIO_QUEUE, &[&req], 0)?;
        if reply.used_len != 0 {
            return Err(ClientError::UnexpectedReply(reply.used_len));
        }
        Ok(())
    }
}

/// One request of a batch (see [`FsClient::request_batch`]).
#[derive(Clone, Debug)]
pub struct BatchRequest<'a> {
    /// The opcode.
    pub opcode: Opcode,
    /// The node the request is about.
    pub nodeid: u64,
    /// The request structures and names after `fuse_in_header`.
    pub parts: Vec<&'a [u8]>,
    /// Room for the reply body.
    pub reply_cap: u32,
}

impl FsClient {
    /// Puts all `reqs` in flight at once on the request queue (one kick if the device asks
    /// for it), waits for all of them and returns each reply body or its error, in order.
    /// Their buffers share [`ClientOptions::batch_bytes`] of guest memory.
    pub fn request_batch(
        &mut self,
        reqs: &[BatchRequest<'_>],
    ) -> Result<Vec<std::result::Result<Vec<u8>, FuseError>>> {
        let (base, cap) = self.batch;
        let mut arena = super::memory::BumpAllocator::new(base.0, base.0 + u64::from(cap));
        let hdr = std::mem::size_of::<OutHeader>() as u32;
        let mut staged = Vec::with_capacity(reqs.len());
        for r in reqs {
            let unique = self.alloc_unique();
            let bytes =
                fuse::encode_request(r.opcode, unique, r.nodeid, self.opts.caller, &r.parts)?;
            let too_large = |_| ClientError::TooLarge {
                len: bytes.len() + (hdr + r.reply_cap) as usize,
                cap,
            };
            let req_at = arena.alloc(bytes.len() as u64, 8).map_err(too_large)?;
            let reply_at = arena
                .alloc(u64::from(hdr + r.reply_cap), 8)
                .map_err(too_large)?;
            self.mem.memory().write_slice(&bytes, req_at)?;
            staged.push((
                unique,
                req_at,
                bytes.len() as u32,
                reply_at,
                hdr + r.reply_cap,
            ));
        }
        let queue = &mut self.queues[REQUEST_QUEUE];
        let old = queue.avail_idx();
        let max = self.opts.max_desc_len;
        let mut heads = Vec::with_capacity(staged.len());
        for &(_, req_at, req_len, reply_at, reply_len) in &staged {
            let r = split_buffer(req_at, req_len, max);
            let w = split_buffer(reply_at, reply_len, max);
            heads.push(queue.add_chain(&self.mem, &r, &w)?);
        }
        queue.notify_since(&self.mem, old)?;
        let mut used: Vec<Option<u32>> = vec![None; heads.len()];
        while used.iter().any(Option::is_none) {
            let e = self.queues[REQUEST_QUEUE].wait_used(&self.mem, self.opts.timeout)?;
            if let Some(i) = heads.iter().position(|&h| u32::from(h) == e.id) {
                used[i] = Some(e.len);
            }
        }
        let mut out = Vec::with_capacity(staged.len());
        for (&(unique, _, _, reply_at, reply_len), len) in staged.iter().zip(used) {
            let len = len.unwrap_or(0);
            let mut data = vec![0u8; len.min(reply_len) as usize];
            self.mem.memory().read_slice(&mut data, reply_at)?;
            out.push(fuse::parse_reply(&data, len, unique).map(<[u8]>::to_vec));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_split_at_the_limit() {
        let b = split_buffer(GuestAddress(0x1000), 10_000, 4096);
        assert_eq!(
            b.iter().map(|b| (b.addr.0, b.len)).collect::<Vec<_>>(),
            vec![(0x1000, 4096), (0x2000, 4096), (0x3000, 1808)]
        );
        assert_eq!(split_buffer(GuestAddress(5), 3, u32::MAX).len(), 1);
        assert_eq!(split_buffer(GuestAddress(5), 0, 4096)[0].len, 0);
        assert_eq!(
            split_buffer(GuestAddress(0), 2, 0).len(),
            2,
            "0 is treated as 1"
        );
    }

    #[test]
    fn errno_is_only_for_error_replies() {
        assert_eq!(ClientError::Fuse(FuseError::Errno(2)).errno(), Some(2));
        assert_eq!(ClientError::Fuse(FuseError::ShortReply(3)).errno(), None);
        assert_eq!(ClientError::UnexpectedReply(1).errno(), None);
    }

    #[test]
    fn connecting_to_nothing_is_a_frontend_error() {
        let path = std::env::temp_dir().join(format!("vfsdax-no-socket-{}", std::process::id()));
        let err = FsClient::connect(&path, ClientOptions::default()).unwrap_err();
        assert!(
            matches!(err, ClientError::Frontend(FrontendError::Connect { .. })),
            "{err:?}"
        );
    }
}
