//! `fuse_server`: FUSE requests in descriptor chains, decoded and dispatched by the daemon's
//! [`Server`] against a real [`PassthroughFs`] on the scratch share ([`crate::scratch`]), with
//! a real `vmm-glue` [`DaxWindow`] as the DAX mapper.
//!
//! Input: one session byte, then up to [`MAX_RECORDS`] records.
//!
//! - session byte: bit 0 skips the harness's own INIT (the input then sends its own); bit 1
//!   gives the share an 8 MiB DAX window; bit 2 xattrs (and `HANDLE_KILLPRIV_V2`; with bit 3
//!   too, an xattr map sending `trusted.*` to `user.virtiofs.trusted.*`); bit 3 writeback;
//!   bit 4 read-only (and no READDIRPLUS); bits 5–6 the cache policy (`never` and `metadata`
//!   with `DIRECT_IO_ALLOW_MMAP`); bit 7 makes the harness's INIT a minimal 7.31 one without
//!   flags.
//! - record: `ctl: u8`, `len: u16` (LE), then `len` request bytes (fewer if the input ends).
//!   `ctl` bits 0–1 pick how the request is split into readable descriptors (one; 8 + rest as
//!   the unit tests do; header / arguments / data as Linux does; many small pieces after a
//!   zero-length one), bits 3–5 the reply room (none, 8 bytes, a header, 144 bytes, a page,
//!   64 KiB, header and page in two descriptors, or a page across the boundary of two memory
//!   regions), bit 6 overwrites the header's `len` with the request's length, bit 7 puts the
//!   descriptors in an indirect table.
//!
//! Each iteration gets a fresh filesystem and server (node ids and handles start over, so an
//! input always behaves the same); the share is rebuilt only when a request changed it.
//!
//! Checked besides "no panic": every reply has a header whose `len` is the used length, the
//! request's `unique`, an error of 0 or a negative errno, no body with an error, and fits the
//! room; nothing read or changed the sentinel file next to the share ([`crate::scratch`]).

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::sync::Arc;

use vfsdax_daemon::dax::Mapper;
use vfsdax_daemon::fuzzing::{Guest, REGION_SPLIT, REPLY_ADDR, REQ_ADDR};
use vfsdax_daemon::passthrough::xattrmap::XattrMap;
use vfsdax_daemon::passthrough::{CachePolicy, PassthroughConfig, PassthroughFs};
use vfsdax_daemon::server::{Server, ServerOptions};
use vfsdax_protocol::fuse::{InHeader, InitIn, Opcode, OutHeader};
use vfsdax_vmm_glue::dax::DaxWindow;
use vm_memory::ByteValued;

use crate::input::Input;
use crate::scratch::{Scratch, SENTINEL};

/// The DAX window of a session with bit 1: four 2 MiB chunks.
pub const WINDOW_SIZE: u64 = 8 << 20;
/// Most requests per input.
pub const MAX_RECORDS: usize = 24;
/// Size of `fuse_in_header`.
const IN_HEADER: usize = std::mem::size_of::<InHeader>();
/// Size of `fuse_out_header`.
const OUT_HEADER: usize = std::mem::size_of::<OutHeader>();

/// Session byte bits.
pub mod session {
    /// Do not send the harness's INIT.
    pub const NO_INIT: u8 = 1;
    /// An 8 MiB DAX window.
    pub const DAX: u8 = 2;
    /// Serve xattrs.
    pub const XATTR: u8 = 4;
    /// Writeback caching.
    pub const WRITEBACK: u8 = 8;
    /// Read-only share.
    pub const READONLY: u8 = 16;
    /// Minimal INIT.
    pub const MINIMAL_INIT: u8 = 128;
}

/// Record `ctl` bits.
pub mod ctl {
    /// One readable descriptor.
    pub const ONE: u8 = 0;
    /// 8 bytes, then the rest (the unit tests' layout).
    pub const SPLIT8: u8 = 1;
    /// Header, arguments (up to 40 bytes), data.
    pub const LINUX: u8 = 2;
    /// A zero-length descriptor, then pieces of 13 bytes.
    pub const PIECES: u8 = 3;
    /// Reply room classes (bits 3–5).
    pub const ROOM_NONE: u8 = 0 << 3;
    /// 8 bytes: no room for a header.
    pub const ROOM_8: u8 = 1 << 3;
    /// A header only.
    pub const ROOM_HEADER: u8 = 2 << 3;
    /// A header and 128 bytes.
    pub const ROOM_SMALL: u8 = 3 << 3;
    /// A header and a page.
    pub const ROOM_PAGE: u8 = 4 << 3;
    /// A header and 64 KiB.
    pub const ROOM_64K: u8 = 5 << 3;
    /// A header and a page in two descriptors.
    pub const ROOM_TWO: u8 = 6 << 3;
    /// A header and a page across two memory regions.
    pub const ROOM_ACROSS: u8 = 7 << 3;
    /// Overwrite the header's `len` with the request's length.
    pub const FIX_LEN: u8 = 64;
    /// Indirect descriptors.
    pub const INDIRECT: u8 = 128;
}

/// The daemon's [`Mapper`] over a `vmm-glue` [`DaxWindow`], as a VMM linking the glue would
/// serve `SHMEM_MAP` / `SHMEM_UNMAP`.
pub struct WindowMapper(pub Arc<DaxWindow>);

impl Mapper for WindowMapper {
    fn map(&self, wo: u64, len: u64, file: &File, fo: u64, writable: bool) -> io::Result<()> {
        self.0
            .map(wo, len, file, fo, writable)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn unmap(&self, wo: u64, len: u64) -> io::Result<()> {
        self.0
            .unmap(wo, len)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

/// The INIT the harness sends: Linux 6.x's virtiofs flags (every flag up to
/// `DIRECT_IO_ALLOW_MMAP`), or a minimal 7.31 one.
pub fn init_request(minimal: bool) -> Vec<u8> {
    let (minor, flags) = if minimal {
        (31, 0)
    } else {
        (38, (1u64 << 37) - 1)
    };
    let arg = InitIn {
        major: 7,
        minor,
        max_readahead: 128 << 10,
        flags: flags as u32,
        flags2: (flags >> 32) as u32,
        unused: [0; 11],
    };
    request(Opcode::Init as u32, 1, 0, arg.as_slice())
}

/// A request with a header whose `len` covers `args`; caller uid/gid 0.
pub fn request(opcode: u32, unique: u64, nodeid: u64, args: &[u8]) -> Vec<u8> {
    request_as(opcode, unique, nodeid, 0, args)
}

/// A request with a header whose `len` covers `args`, from caller `uid` (gid the same).
pub fn request_as(opcode: u32, unique: u64, nodeid: u64, uid: u32, args: &[u8]) -> Vec<u8> {
    let h = InHeader {
        len: (IN_HEADER + args.len()) as u32,
        opcode,
        unique,
        nodeid,
        uid,
        gid: uid,
        pid: 42,
        total_extlen: 0,
        padding: 0,
    };
    [h.as_slice(), args].concat()
}

/// One record of an input, for the seed generator.
pub fn record(ctl: u8, request: &[u8]) -> Vec<u8> {
    let len = request.len().min(u16::MAX as usize);
    let mut v = vec![ctl];
    v.extend_from_slice(&(len as u16).to_le_bytes());
    v.extend_from_slice(&request[..len]);
    v
}

struct Harness {
    guest: Guest,
    scratch: Scratch,
    window: Arc<DaxWindow>,
    proc_self_fd: File,
    /// What reply rooms are cleared with.
    fill: Vec<u8>,
    /// `VFSDAX_FUZZ_TRACE` is set: print each request's opcode and reply error (for seeds and
    /// crash inputs replayed by hand).
    trace: bool,
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

impl Harness {
    fn new() -> Harness {
        let scratch = Scratch::new();
        Harness {
            guest: Guest::new(),
            scratch,
            window: Arc::new(DaxWindow::new(WINDOW_SIZE).expect("DAX window")),
            proc_self_fd: File::open("/proc/self/fd").expect("/proc/self/fd"),
            fill: vec![0xee; OUT_HEADER + 65536],
            trace: std::env::var_os("VFSDAX_FUZZ_TRACE").is_some(),
        }
    }

    fn run(&mut self, data: &[u8]) {
        let mut input = Input::new(data);
        let Some(s) = input.u8() else {
            return;
        };
        let dax = s & session::DAX != 0;
        let mut cfg = PassthroughConfig::new(self.scratch.share());
        cfg.xattr = s & session::XATTR != 0;
        cfg.writeback = s & session::WRITEBACK != 0;
        cfg.readonly = s & session::READONLY != 0;
        cfg.cache = [
            CachePolicy::Auto,
            CachePolicy::Always,
            CachePolicy::Never,
            CachePolicy::Metadata,
        ][usize::from((s >> 5) & 3)];
        cfg.dax_window = if dax { WINDOW_SIZE } else { 0 };
        cfg.deny_device_nodes = !self.scratch.isolated();
        // The newer options ride on the same bits.
        cfg.killpriv_v2 = cfg.xattr;
        cfg.readdirplus = !cfg.readonly;
        cfg.allow_mmap = matches!(cfg.cache, CachePolicy::Never | CachePolicy::Metadata);
        if cfg.xattr && cfg.writeback {
            cfg.xattr_map = XattrMap::parse(":map:trusted.:user.virtiofs.:").expect("xattr map");
        }
        let opts = ServerOptions {
            dax_window_size: cfg.dax_window,
            max_write: 0,
            writeback: cfg.writeback,
            announce_submounts: false,
            xattr: cfg.xattr,
            inode_dax: dax,
        };
        let proc_fd = self.proc_self_fd.try_clone().expect("dup /proc/self/fd");
        let fs = PassthroughFs::with_proc_self_fd(cfg, proc_fd).expect("passthrough fs");
        let server = Server::new(fs, opts);
        let mapper = WindowMapper(self.window.clone());
        if s & session::NO_INIT == 0 {
            let init = init_request(s & session::MINIMAL_INIT != 0);
            let reply = self.serve(&server, &mapper, ctl::ROOM_PAGE, &init);
            assert_eq!(reply, Some(0), "the harness's INIT is accepted");
        }
        for _ in 0..MAX_RECORDS {
            let Some(c) = input.u8() else { break };
            let Some(len) = input.u16() else { break };
            let n = usize::from(len).min(input.len());
            let req = input.bytes(n).unwrap_or_default();
            let reply = self.serve(&server, &mapper, c, req);
            if self.trace {
                let opcode = req
                    .get(4..8)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
                eprintln!("fuse_server: opcode {opcode:?} ctl {c:#04x}: reply error {reply:?}");
            }
        }
        drop(server);
        // What the session left mapped (a DESTROY would have unmapped it, a dropped
        // connection does not), and what the window remembers of it.
        self.window.unmap(0, WINDOW_SIZE).expect("unmap the window");
        self.window.table().forget_unmapped();
        self.scratch.check_and_reset();
    }

    /// Serves one request; returns the reply's error (None: no reply).
    fn serve(
        &self,
        server: &Server<PassthroughFs>,
        mapper: &WindowMapper,
        c: u8,
        req: &[u8],
    ) -> Option<i32> {
        let mut req = req.to_vec();
        if c & ctl::FIX_LEN != 0 && req.len() >= 4 {
            let len = req.len() as u32;
            req[..4].copy_from_slice(&len.to_le_bytes());
        }
        let g = &self.guest;
        g.put(REQ_ADDR, &req);
        let n = req.len() as u32;
        let a = REQ_ADDR;
        let mut descs: Vec<(u64, u32, bool)> = Vec::new();
        match c & 3 {
            ctl::ONE => descs.push((a, n, false)),
            ctl::SPLIT8 if n > 8 => descs.extend([(a, 8, false), (a + 8, n - 8, false)]),
            ctl::SPLIT8 => descs.push((a, n, false)),
            ctl::LINUX => {
                let h = n.min(IN_HEADER as u32);
                let args = (n - h).min(40);
                descs.push((a, h, false));
                if args > 0 {
                    descs.push((a + u64::from(h), args, false));
                }
                if n > h + args {
                    descs.push((a + u64::from(h + args), n - h - args, false));
                }
            }
            _ => {
                descs.push((a, 0, false));
                let mut off = 0;
                while off < n {
                    let piece = if descs.len() == 12 {
                        n - off
                    } else {
                        (n - off).min(13)
                    };
                    descs.push((a + u64::from(off), piece, false));
                    off += piece;
                }
            }
        }
        let h = OUT_HEADER as u32;
        let rooms: &[(u64, u32)] = match (c >> 3) & 7 {
            0 => &[],
            1 => &[(REPLY_ADDR, 8)],
            2 => &[(REPLY_ADDR, h)],
            3 => &[(REPLY_ADDR, h + 128)],
            4 => &[(REPLY_ADDR, h + 4096)],
            5 => &[(REPLY_ADDR, h + 65536)],
            6 => &[(REPLY_ADDR, h), (REPLY_ADDR + 0x2_0000, 4096)],
            _ => &[(REGION_SPLIT - 64, h + 4096)],
        };
        let room: usize = rooms.iter().map(|r| r.1 as usize).sum();
        for &(addr, len) in rooms {
            g.put(addr, &self.fill[..len as usize]);
            descs.push((addr, len, true));
        }
        if descs.is_empty() {
            descs.push((a, 0, false));
        }
        let chain = if c & ctl::INDIRECT != 0 {
            g.indirect_chain(&descs)
        } else {
            g.chain(&descs)
        };
        let used = server.handle_chain(&g.mem, chain, mapper).ok()? as usize;
        assert!(used <= room, "used length {used} beyond the room {room}");
        if used == 0 {
            return None;
        }
        let mut reply = Vec::with_capacity(used);
        for &(addr, len) in rooms {
            let take = (used - reply.len()).min(len as usize);
            reply.extend(g.get(addr, take));
        }
        assert!(used >= OUT_HEADER, "a {used}-byte reply has no header");
        let mut hdr = OutHeader::default();
        hdr.as_mut_slice().copy_from_slice(&reply[..OUT_HEADER]);
        let unique = req
            .get(8..16)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
        assert_eq!(hdr.len as usize, used, "header len is the used length");
        assert_eq!(hdr.unique, unique, "the reply answers the request");
        assert!(
            hdr.error <= 0 && hdr.error > -4096,
            "error {} is not a negative errno",
            hdr.error
        );
        assert!(
            hdr.error == 0 || used == OUT_HEADER,
            "an error reply carries a body"
        );
        // On the private tmpfs a read of the sentinel shows in its access time (checked after
        // the input); elsewhere, look for its content in the reply.
        if !self.scratch.isolated() {
            assert!(
                !reply.windows(SENTINEL.len()).any(|w| w == SENTINEL),
                "a reply carries the content of the file outside the share"
            );
        }
        Some(hdr.error)
    }
}
