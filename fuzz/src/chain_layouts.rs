//! `chain_layouts`: arbitrary descriptor tables, available rings and indirect tables in guest
//! memory, served two ways.
//!
//! - **Backend** (session bit 1 clear): the daemon's [`FsBackend`] pops every chain of the ring
//!   on a kick (`VhostUserBackend::handle_event`, as the queue thread does), hands it to the
//!   FUSE [`Server`] over a small in-memory filesystem whose READ and WRITE move bytes between
//!   a memfd and the chain's buffers (`preadv`/`pwritev` on guest memory), and returns it to the
//!   used ring. Checked: every chain popped goes back to the used ring.
//! - **Direct** (bit 1 set): chains are popped from a `virtio_queue::Queue` and split with
//!   [`split_chain`]; the rest of the input is a script of `Reader`/`Writer` operations
//!   (`read_exact`, `truncate`, `read_to` a file, `write_all`, `split_at`, `write_from` a file)
//!   each checked against a model that walks the same descriptors: byte counts, which error,
//!   and the exact bytes read from or written to guest memory.
//!
//! Guest memory: 32 KiB + 32 KiB adjacent regions at 0, a hole, 32 KiB at 128 KiB; zeroed for
//! every input.
//!
//! Input: `session: u8` (bit 0 EVENT_IDX, bit 1 direct, bits 2–4 log2 of the queue size, bit 5
//! take a raw queue size from the next `u16` instead, bit 6 kick twice), the descriptor table,
//! available ring and used ring addresses (`u16` each, in units of 4 bytes), `records: u8`,
//! that many records (see [`Record`]), then the script.

use std::cell::RefCell;
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vfsdax_daemon::backend::{DeviceConfig, FsBackend};
use vfsdax_daemon::dax::NoMapper;
use vfsdax_daemon::filesystem::{
    AttrReply, Context, Entry, FileSystem, Handle, Inode, ZeroCopyReader, ZeroCopyWriter,
};
use vfsdax_daemon::fuzzing::Guest;
use vfsdax_daemon::server::{split_chain, Server, ServerError, ServerOptions};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::input::Input;

/// The guest memory regions: (start, size).
pub const REGIONS: [(u64, usize); 3] = [(0, 0x8000), (0x8000, 0x8000), (0x2_0000, 0x8000)];
/// End of the last region.
pub const MEM_END: u64 = 0x2_8000;
/// Largest queue size.
pub const MAX_QUEUE: u16 = 256;
/// Most records per input.
pub const MAX_RECORDS: usize = 64;
/// Most chains the direct mode takes per input.
pub const MAX_CHAINS: usize = 8;
/// Size of the in-memory file at the start of each input.
pub const FILE_LEN: usize = 0x1_0000;
/// Writes past this offset fail (`EFBIG`), so the file stays small.
pub const FILE_MAX: u64 = 0x4_0000;

/// The records that fill guest memory.
pub mod record {
    /// `addr: u32, n: u8, n bytes`: raw bytes.
    pub const RAW: u8 = 0;
    /// `index: u8, desc`: a descriptor of the table.
    pub const DESC: u8 = 1;
    /// `slot: u8, head: u16`: an available ring entry.
    pub const AVAIL: u8 = 2;
    /// `flags: u16, idx: u16`: the available ring's header.
    pub const AVAIL_IDX: u8 = 3;
    /// `table: u16 (x16), index: u8, desc`: a descriptor of an indirect table.
    pub const INDIRECT: u8 = 4;
    /// `used_event: u16`.
    pub const USED_EVENT: u8 = 5;
}

/// A descriptor as records carry it: `addr: u32, len: u32, flags: u16, next: u16`. An address
/// with bit 31 set means `u64::MAX - (addr & 0xffff)`; otherwise it is `addr & 0x3ffff`. A
/// length with bit 31 set is taken as it is, otherwise `len & 0x1ffff`.
pub fn desc_bytes(addr: u32, len: u32, flags: u16, next: u16) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&addr.to_le_bytes());
    b[4..8].copy_from_slice(&len.to_le_bytes());
    b[8..10].copy_from_slice(&flags.to_le_bytes());
    b[10..].copy_from_slice(&next.to_le_bytes());
    b
}

fn read_desc(input: &mut Input<'_>) -> Option<[u8; 16]> {
    let addr = input.u32()?;
    let len = input.u32()?;
    let flags = input.u16()?;
    let next = input.u16()?;
    let addr = if addr & 0x8000_0000 != 0 {
        u64::MAX - u64::from(addr & 0xffff)
    } else {
        u64::from(addr & 0x3_ffff)
    };
    let len = if len & 0x8000_0000 != 0 {
        len
    } else {
        len & 0x1_ffff
    };
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    Some(d)
}

/// A filesystem with one file (node 2, handle 1) in a memfd: enough for the server to move
/// bytes between a file and every kind of chain.
struct MemFs {
    file: Arc<File>,
    /// Set when a WRITE may have changed the file.
    dirty: Arc<AtomicBool>,
}

fn attr(ino: u64, size: u64, mode: u32) -> libc::stat64 {
    // SAFETY: stat64 is plain data; all zeros is a valid value.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    st.st_ino = ino;
    st.st_size = size as i64;
    st.st_mode = mode;
    st.st_nlink = 1;
    st
}

impl MemFs {
    fn size(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }
}

impl FileSystem for MemFs {
    fn init(&self, capable: u64, _: &dyn vfsdax_daemon::dax::Mapper) -> io::Result<u64> {
        Ok(capable)
    }

    fn lookup(&self, _: Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        if parent != 1 || name.to_bytes() != b"f" {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(Entry {
            inode: 2,
            generation: 0,
            attr: attr(2, self.size(), libc::S_IFREG | 0o644),
            attr_flags: 0,
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
        })
    }

    fn getattr(&self, _: Context, inode: Inode, _: Option<Handle>) -> io::Result<AttrReply> {
        let a = match inode {
            1 => attr(1, 0, libc::S_IFDIR | 0o755),
            2 => attr(2, self.size(), libc::S_IFREG | 0o644),
            _ => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
        };
        Ok(AttrReply {
            attr: a,
            attr_flags: 0,
            timeout: Duration::from_secs(1),
        })
    }

    fn open(&self, _: Context, inode: Inode, _: u32, _: bool) -> io::Result<(Option<Handle>, u32)> {
        if inode != 2 {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok((Some(1), 0))
    }

    fn read(
        &self,
        _: Context,
        inode: Inode,
        handle: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
    ) -> io::Result<usize> {
        if inode != 2 || handle != 1 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        w.write_from(&self.file, size as usize, offset)
    }

    fn write(
        &self,
        _: Context,
        inode: Inode,
        handle: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _: bool,
    ) -> io::Result<usize> {
        if inode != 2 || handle != 1 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if offset.saturating_add(u64::from(size)) > FILE_MAX {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        self.dirty.store(true, Ordering::Relaxed);
        r.read_to(&self.file, size as usize, offset)
    }
}

fn memfd(name: &CStr) -> File {
    // SAFETY: memfd_create takes a NUL-terminated name that outlives the call; the result is a
    // new descriptor owned by the File.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

/// The file's content at the start of each input.
pub fn file_pattern() -> Vec<u8> {
    (0..FILE_LEN).map(|i| (i % 251) as u8).collect()
}

struct Harness {
    mem: GuestMemoryMmap<()>,
    zeros: Vec<u8>,
    /// The file behind the filesystem and the scripts' `read_to`/`write_from`.
    file: Arc<File>,
    pattern: Vec<u8>,
    /// The file differs from `pattern`.
    dirty: Arc<AtomicBool>,
    /// Where the harness sends INIT from.
    init_guest: Guest,
    /// Scratch image of guest memory for `check_written`.
    shadow: RefCell<Vec<u8>>,
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

/// Runs one input.
pub fn run(data: &[u8]) {
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        h.get_or_insert_with(Harness::new).run(data);
    });
}

fn addr4(v: u16) -> u64 {
    u64::from(v) * 4
}

impl Harness {
    fn new() -> Harness {
        let ranges: Vec<(GuestAddress, usize)> =
            REGIONS.iter().map(|&(a, s)| (GuestAddress(a), s)).collect();
        let file = Arc::new(memfd(c"vfsdax-fuzz-chain"));
        Harness {
            mem: GuestMemoryMmap::from_ranges(&ranges).expect("guest memory"),
            zeros: vec![0; 0x8000],
            file,
            pattern: file_pattern(),
            dirty: Arc::new(AtomicBool::new(true)),
            init_guest: Guest::new(),
            shadow: RefCell::new(vec![0; MEM_END as usize]),
        }
    }

    fn reset(&self) {
        for &(a, s) in &REGIONS {
            self.mem
                .write_slice(&self.zeros[..s], GuestAddress(a))
                .expect("zero guest memory");
        }
        if self.dirty.swap(false, Ordering::Relaxed) {
            self.file.set_len(0).expect("truncate the file");
            self.file
                .write_all_at(&self.pattern, 0)
                .expect("fill the file");
        }
    }

    fn run(&mut self, data: &[u8]) {
        self.reset();
        let mut input = Input::new(data);
        let Some(s) = input.u8() else { return };
        let size = if s & 0x20 != 0 {
            let Some(v) = input.u16() else { return };
            v
        } else {
            1 << ((s >> 2) & 7)
        };
        let (Some(desc), Some(avail), Some(used)) = (input.u16(), input.u16(), input.u16()) else {
            return;
        };
        let (desc, avail, used) = (addr4(desc), addr4(avail), addr4(used));
        let Some(records) = input.u8() else { return };
        for _ in 0..usize::from(records).min(MAX_RECORDS) {
            if self.record(&mut input, desc, avail, size).is_none() {
                return;
            }
        }
        if s & 2 != 0 {
            self.direct(&mut input, s & 1 != 0, size, desc, avail, used);
        } else {
            self.backend(s, size, desc, avail, used);
        }
    }

    /// Applies one record; `None` when the input ran out.
    fn record(&self, input: &mut Input<'_>, desc: u64, avail: u64, size: u16) -> Option<()> {
        let put = |addr: u64, bytes: &[u8]| {
            // Records may point anywhere; what misses guest memory is dropped.
            let _ = self.mem.write_slice(bytes, GuestAddress(addr));
        };
        match input.u8()? % 6 {
            record::RAW => {
                let addr = u64::from(input.u32()? & 0x3_ffff);
                let n = input.u8()?;
                put(addr, input.bytes(usize::from(n))?);
            }
            record::DESC => {
                let i = u64::from(input.u8()?);
                put(desc + 16 * i, &read_desc(input)?);
            }
            record::AVAIL => {
                let slot = u64::from(input.u8()?);
                put(avail + 4 + 2 * slot, &input.u16()?.to_le_bytes());
            }
            record::AVAIL_IDX => {
                put(avail, &input.u16()?.to_le_bytes());
                put(avail + 2, &input.u16()?.to_le_bytes());
            }
            record::INDIRECT => {
                let table = u64::from(input.u16()?) * 16;
                let i = u64::from(input.u8()?);
                put(table + 16 * i, &read_desc(input)?);
            }
            _ => {
                let ev = input.u16()?;
                put(avail + 4 + 2 * u64::from(size), &ev.to_le_bytes());
            }
        }
        Some(())
    }

    fn server(&self) -> Server<MemFs> {
        let server = Server::new(
            MemFs {
                file: self.file.clone(),
                dirty: self.dirty.clone(),
            },
            ServerOptions::default(),
        );
        let init = crate::fuse_server::init_request(false);
        let g = &self.init_guest;
        let chain = g.request(&init, 4096);
        server
            .handle_chain(&g.mem, chain, &NoMapper)
            .expect("INIT through the test guest");
        server
    }

    /// Through the daemon's backend: pop, serve, complete, as the queue thread does.
    fn backend(&self, s: u8, size: u16, desc: u64, avail: u64, used: u64) {
        let server = Arc::new(self.server());
        let cfg = DeviceConfig {
            tag: None,
            num_request_queues: 1,
            queue_size: MAX_QUEUE,
            cache_size: 0,
            thread_pool_size: 0,
        };
        let backend = FsBackend::new(server, cfg).expect("backend");
        let atomic = GuestMemoryAtomic::new(self.mem.clone());
        backend.update_memory(atomic.clone()).expect("memory");
        let vring = VringRwLock::new(atomic, MAX_QUEUE).expect("vring");
        vring.set_queue_size(size);
        if vring.set_queue_info(desc, avail, used).is_err() {
            return;
        }
        let event_idx = s & 1 != 0;
        vring.set_queue_event_idx(event_idx);
        backend.set_event_idx(event_idx);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        // The available ring before the kick (only a valid queue's is looked at below).
        let checked = size.is_power_of_two() && size <= MAX_QUEUE;
        let heads: Vec<Option<u16>> = (0..if checked { size } else { 0 })
            .map(|slot| self.read_u16(avail + 4 + 2 * u64::from(slot)))
            .collect();
        let kicks = if s & 0x40 != 0 { 2 } else { 1 };
        for _ in 0..kicks {
            // Queue 1 (the request queue) is served by thread 1, as its only vring. A broken
            // ring is logged and ignored, never an error of the event loop.
            backend
                .handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 1)
                .expect("handle_event");
        }
        // Every chain popped was completed: served inline, each goes back to the used ring
        // before the next is popped, unless the used ring lies outside guest memory or the
        // head was outside the table (the daemon then ignores the ring, which the driver
        // broke): only the last chain popped can be missing, and only for such a head.
        let (next_avail, next_used) = {
            let state = vring.get_ref();
            let q = state.get_queue();
            (q.next_avail(), q.next_used())
        };
        let used_len = 6 + 8 * u64::from(size);
        let used_inside = (used..used + used_len)
            .step_by(0x1000)
            .chain([used + used_len - 1])
            .all(|a| self.mem.address_in_range(GuestAddress(a)));
        if checked && used_inside && next_used != next_avail {
            assert_eq!(
                next_avail.wrapping_sub(next_used),
                1,
                "{next_avail} chains popped, {next_used} completed"
            );
            let slot = next_used % size;
            let after = self.read_u16(avail + 4 + 2 * u64::from(slot));
            let bad = |h: Option<u16>| h.is_none_or(|h| h >= size);
            assert!(
                bad(heads[usize::from(slot)]) || bad(after),
                "the chain of slot {slot} (head {after:?}) was popped and not completed"
            );
        }
    }

    fn read_u16(&self, addr: u64) -> Option<u16> {
        self.mem.read_obj::<u16>(GuestAddress(addr)).ok()
    }

    /// Pops chains from a queue and checks `split_chain` and the scripts against the model.
    fn direct(
        &self,
        input: &mut Input<'_>,
        event_idx: bool,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) {
        let Ok(mut q) = Queue::new(MAX_QUEUE) else {
            return;
        };
        q.set_size(size);
        q.set_desc_table_address(Some(desc as u32), Some(0));
        q.set_avail_ring_address(Some(avail as u32), Some(0));
        q.set_used_ring_address(Some(used as u32), Some(0));
        q.set_event_idx(event_idx);
        q.set_ready(true);
        let mem = &self.mem;
        let Ok(iter) = q.iter(mem) else { return };
        for chain in iter.take(MAX_CHAINS) {
            let descs: Vec<Desc> = chain
                .clone()
                .map(|d| Desc {
                    addr: d.addr().0,
                    len: d.len(),
                    write: d.is_write_only(),
                })
                .collect();
            let expected = model_split(mem, &descs);
            match (split_chain(mem, chain), expected) {
                (Ok((r, w)), Ok(())) => self.script(input, &descs, r, w),
                (Err(e), Err(want)) => assert!(
                    same_error(&e, &want),
                    "split_chain said {e:?}, the model {want:?} for {descs:?}"
                ),
                (Ok(_), Err(want)) => panic!("split_chain accepted {descs:?}; model: {want:?}"),
                (Err(e), Ok(())) => panic!("split_chain refused {descs:?}: {e:?}"),
            }
        }
    }

    /// Runs the script on one split chain.
    fn script(
        &self,
        input: &mut Input<'_>,
        descs: &[Desc],
        mut reader: vfsdax_daemon::server::Reader<'_, ()>,
        writer: vfsdax_daemon::server::Writer<'_, ()>,
    ) {
        let readable: Vec<Desc> = descs.iter().filter(|d| !d.write).copied().collect();
        let writable: Vec<Desc> = descs.iter().filter(|d| d.write).copied().collect();
        let rtotal: u64 = readable.iter().map(|d| u64::from(d.len)).sum();
        let wtotal: u64 = writable.iter().map(|d| u64::from(d.len)).sum();
        assert_eq!(reader.available_bytes() as u64, rtotal);
        assert_eq!(writer.available_bytes() as u64, wtotal);
        // Model: the reader's window [rpos, rend) of the readable stream; each writer's window
        // of the writable stream.
        let (mut rpos, mut rend) = (0u64, rtotal);
        let mut writers = vec![(writer, 0u64, wtotal)];
        for _ in 0..32 {
            let Some(op) = input.u8() else { return };
            let Some(arg) = input.u16() else { return };
            let arg = u64::from(arg);
            let wi = usize::from(op >> 4) % writers.len();
            match op & 7 {
                0 => {
                    let mut buf = vec![0u8; arg as usize];
                    let ok = reader.read_exact(&mut buf).is_ok();
                    assert_eq!(ok, arg <= rend - rpos, "read_exact of {arg}");
                    if ok {
                        assert_eq!(buf, self.stream(&readable, rpos, arg), "bytes read");
                        rpos += arg;
                    }
                }
                1 => {
                    reader.truncate(arg as usize);
                    rend = rend.min(rpos + arg);
                }
                2 => {
                    let off = u64::from(op >> 3) * 0x1000;
                    self.dirty.store(true, Ordering::Relaxed);
                    let before = self.file_bytes(off, arg as usize);
                    let want = self.stream(&readable, rpos, arg.min(rend - rpos));
                    let n = reader
                        .read_to(&self.file, arg as usize, off)
                        .expect("pwritev to the file") as u64;
                    assert!(n <= arg.min(rend - rpos), "read_to moved {n} of {arg}");
                    assert!(n > 0 || arg == 0 || rend == rpos, "read_to moved nothing");
                    let now = self.file_bytes(off, arg as usize);
                    assert_eq!(&now[..n as usize], &want[..n as usize], "bytes in the file");
                    assert_eq!(&now[n as usize..], &before[n as usize..]);
                    rpos += n;
                }
                3 => {
                    let (w, wpos, wend) = &mut writers[wi];
                    let bytes: Vec<u8> = (0..arg).map(|i| (i as u8) ^ op).collect();
                    let ok = w.write_all(&bytes).is_ok();
                    assert_eq!(ok, arg <= *wend - *wpos, "write_all of {arg}");
                    if ok {
                        self.check_written(&writable, *wpos, &bytes);
                        *wpos += arg;
                    }
                }
                4 => {
                    if writers.len() >= 4 {
                        continue;
                    }
                    let (w, wpos, wend) = &mut writers[wi];
                    match w.split_at(arg as usize) {
                        Ok(tail) => {
                            assert!(arg <= *wend - *wpos, "split_at {arg} beyond the room");
                            let tail_start = *wpos + arg;
                            let end = *wend;
                            *wend = tail_start;
                            assert_eq!(tail.available_bytes() as u64, end - tail_start);
                            writers.push((tail, tail_start, end));
                        }
                        Err(_) => assert!(arg > *wend - *wpos, "split_at {arg} refused"),
                    }
                }
                5 => {
                    let off = u64::from(op >> 3) * 0x800;
                    let (w, wpos, wend) = &mut writers[wi];
                    let room = *wend - *wpos;
                    let n = w
                        .write_from(&self.file, arg as usize, off)
                        .expect("preadv from the file") as u64;
                    let in_file = (self.pattern.len() as u64).saturating_sub(off);
                    assert!(n <= arg.min(room), "write_from moved {n} of {arg}");
                    assert!(
                        n > 0 || arg == 0 || room == 0 || in_file == 0,
                        "write_from moved nothing"
                    );
                    let want = self.file_bytes(off, n as usize);
                    self.check_written(&writable, *wpos, &want);
                    *wpos += n;
                }
                6 => {
                    let v = reader.read_obj::<u64>();
                    assert_eq!(v.is_ok(), rend - rpos >= 8);
                    if let Ok(v) = v {
                        assert_eq!(v.to_le_bytes().to_vec(), self.stream(&readable, rpos, 8));
                        rpos += 8;
                    }
                }
                _ => {
                    // A clone reads on independently; the original is unchanged.
                    let mut copy = reader.clone();
                    let mut one = [0u8; 1];
                    let _ = copy.read_exact(&mut one);
                }
            }
            assert_eq!(reader.available_bytes() as u64, rend - rpos, "reader room");
            assert_eq!(reader.bytes_read() as u64, rpos, "bytes_read");
            for (w, wpos, wend) in &writers {
                assert_eq!(w.available_bytes() as u64, *wend - *wpos, "writer room");
            }
        }
    }

    fn file_bytes(&self, off: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        let got = self.file.read_at(&mut v, off).unwrap_or(0);
        v.truncate(got);
        v.resize(n, 0);
        v
    }

    /// Guest addresses of `[pos, pos + n)` of the stream `descs` make, in order.
    fn addrs(descs: &[Desc], mut pos: u64, mut n: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for d in descs {
            let len = u64::from(d.len);
            if n == 0 {
                break;
            }
            if pos >= len {
                pos -= len;
                continue;
            }
            let take = (len - pos).min(n);
            out.push((d.addr + pos, take));
            n -= take;
            pos = 0;
        }
        out
    }

    /// The bytes at `[pos, pos + n)` of the stream, as guest memory holds them now.
    fn stream(&self, descs: &[Desc], pos: u64, n: u64) -> Vec<u8> {
        let mut v = Vec::new();
        for (a, len) in Self::addrs(descs, pos, n) {
            let mut b = vec![0u8; len as usize];
            self.mem
                .read_slice(&mut b, GuestAddress(a))
                .expect("inside guest memory");
            v.extend(b);
        }
        v
    }

    /// Checks that `bytes`, written at `pos` of the writable stream, are in guest memory (the
    /// last write wins where descriptors overlap: the expected image is built in a shadow of
    /// guest memory, piece after piece, then compared).
    fn check_written(&self, descs: &[Desc], pos: u64, bytes: &[u8]) {
        let mut shadow = self.shadow.borrow_mut();
        let mut spans = Vec::new();
        let mut off = 0usize;
        for (a, len) in Self::addrs(descs, pos, bytes.len() as u64) {
            let (a, len) = (a as usize, len as usize);
            shadow[a..a + len].copy_from_slice(&bytes[off..off + len]);
            spans.push((a, len));
            off += len;
        }
        let mut got = Vec::new();
        for (a, len) in spans {
            got.resize(len, 0);
            self.mem
                .read_slice(&mut got, GuestAddress(a as u64))
                .expect("inside guest memory");
            assert!(
                got == shadow[a..a + len],
                "bytes written at guest address {a:#x}"
            );
        }
    }
}

/// One descriptor of a chain.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    addr: u64,
    len: u32,
    write: bool,
}

/// What `split_chain` must say, by the rules it documents.
#[derive(Debug)]
enum Want {
    Outside,
    ReadableAfterWritable,
    TooLong,
}

fn model_split(mem: &GuestMemoryMmap<()>, descs: &[Desc]) -> Result<(), Want> {
    let (mut rt, mut wt, mut seen_w) = (0u64, 0u64, false);
    for d in descs {
        let total = if d.write {
            seen_w = true;
            &mut wt
        } else if seen_w {
            return Err(Want::ReadableAfterWritable);
        } else {
            &mut rt
        };
        *total += u64::from(d.len);
        if *total > u64::from(u32::MAX) {
            return Err(Want::TooLong);
        }
        // A zero-length descriptor names no memory: split_chain takes it wherever it points.
        let inside = d.len == 0
            || d.addr
                .checked_add(u64::from(d.len) - 1)
                .is_some_and(|last| {
                    (d.addr..=last)
                        .step_by(0x1000)
                        .all(|a| mem.address_in_range(GuestAddress(a)))
                        && mem.address_in_range(GuestAddress(last))
                });
        if !inside {
            return Err(Want::Outside);
        }
    }
    Ok(())
}

fn same_error(e: &ServerError, want: &Want) -> bool {
    matches!(
        (e, want),
        (ServerError::DescriptorOutsideMemory { .. }, Want::Outside)
            | (
                ServerError::ReadableAfterWritable,
                Want::ReadableAfterWritable
            )
            | (ServerError::ChainTooLong, Want::TooLong)
    )
}
