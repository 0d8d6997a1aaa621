//! The server end to end: requests in descriptor chains, a fake filesystem, replies read back
//! from guest memory.

use std::io::{Read, Seek, SeekFrom};
use std::mem::size_of;
use std::sync::atomic::Ordering;

use vfsdax_protocol::fuse::{
    flags, EntryOut, GetxattrIn, GetxattrOut, InHeader, InitIn, InitOut, Opcode, OutHeader, ReadIn,
    RemoveMappingIn, RemoveMappingOne, SetupMappingIn, SetxattrIn, WriteIn, WriteOut,
};
use vm_memory::ByteValued;

use super::fake_fs::{Fake, RecordingMapper};
use super::testutil::{Guest, REPLY_ADDR};
use super::*;

fn opts() -> ServerOptions {
    ServerOptions {
        max_write: 1 << 20,
        ..Default::default()
    }
}

/// A request: header (with `len` computed) and arguments.
fn req(opcode: Opcode, unique: u64, nodeid: u64, args: &[u8]) -> Vec<u8> {
    let h = InHeader {
        len: (size_of::<InHeader>() + args.len()) as u32,
        opcode: opcode as u32,
        unique,
        nodeid,
        uid: 1000,
        gid: 1000,
        pid: 7,
        total_extlen: 0,
        padding: 0,
    };
    [h.as_slice(), args].concat()
}

fn cat<T: ByteValued>(head: T, rest: &[u8]) -> Vec<u8> {
    [head.as_slice(), rest].concat()
}

/// GETXATTR arguments asking for `user.a` with a `size`-byte buffer.
fn getxattr_user_a(size: u32) -> Vec<u8> {
    cat(GetxattrIn { size, padding: 0 }, b"user.a\0")
}

/// READ / READDIR(PLUS) arguments on handle 1.
fn read_in(offset: u64, size: u32) -> ReadIn {
    ReadIn {
        fh: 1,
        offset,
        size,
        ..Default::default()
    }
}

fn obj<T: ByteValued>(bytes: &[u8]) -> T {
    let mut t = T::zeroed();
    t.as_mut_slice().copy_from_slice(&bytes[..size_of::<T>()]);
    t
}

struct Reply {
    used: u32,
    header: OutHeader,
    body: Vec<u8>,
}

/// Sends `request` with `room` bytes of reply room; returns what came back.
fn send<F: FileSystem>(
    s: &Server<F>,
    g: &Guest,
    request: &[u8],
    room: u32,
) -> Result<Reply, ServerError> {
    send_with(s, g, request, room, &RecordingMapper::default())
}

fn send_with<F: FileSystem>(
    s: &Server<F>,
    g: &Guest,
    request: &[u8],
    room: u32,
    m: &dyn Mapper,
) -> Result<Reply, ServerError> {
    let used = s.handle_chain(&g.mem, g.request(request, room), m)?;
    let raw = g.get(REPLY_ADDR, used as usize);
    let header = if used >= 16 {
        obj(&raw)
    } else {
        OutHeader::default()
    };
    if used >= 16 {
        assert_eq!(header.len, used, "out header len is the used length");
    }
    Ok(Reply {
        used,
        header,
        body: raw.get(16..).unwrap_or_default().to_vec(),
    })
}

fn errno(r: &Reply) -> i32 {
    -r.header.error
}

fn init_in(minor: u32, flags: u64) -> InitIn {
    InitIn {
        major: 7,
        minor,
        max_readahead: 65536,
        flags: flags as u32,
        flags2: (flags >> 32) as u32,
        unused: [0; 11],
    }
}

fn started(o: ServerOptions) -> (Server<Fake>, Guest) {
    let s = Server::new(Fake::new(), o);
    let g = Guest::new();
    let all = flags::init::INIT_EXT
        | flags::init::SETXATTR_EXT
        | flags::init::MAX_PAGES
        | flags::init::MAP_ALIGNMENT
        | flags::init::HAS_INODE_DAX;
    let r = send(
        &s,
        &g,
        &req(Opcode::Init, 1, 0, init_in(38, all).as_slice()),
        4096,
    )
    .unwrap();
    assert_eq!(errno(&r), 0);
    (s, g)
}

#[test]
fn requests_before_init_get_eio() {
    let s = Server::new(Fake::new(), opts());
    let g = Guest::new();
    let r = send(&s, &g, &req(Opcode::Lookup, 5, 1, b"a\0"), 4096).unwrap();
    assert_eq!((errno(&r), r.header.unique, r.used), (libc::EIO, 5, 16));
    assert!(s.fs().calls().is_empty());
    // A FORGET (no reply possible) is ignored: nothing was looked up.
    let r = send(&s, &g, &req(Opcode::Forget, 6, 1, &1u64.to_le_bytes()), 0).unwrap();
    assert_eq!(r.used, 0);
    assert!(s.fs().calls().is_empty());
    assert_eq!(s.negotiated_flags(), None);
}

#[test]
fn init_long_and_compat_forms() {
    let s = Server::new(
        Fake::new(),
        ServerOptions {
            dax_window_size: 1 << 30,
            ..opts()
        },
    );
    let g = Guest::new();
    let f = flags::init::MAX_PAGES | flags::init::MAP_ALIGNMENT | flags::init::ASYNC_READ;
    let r = send(
        &s,
        &g,
        &req(Opcode::Init, 1, 0, &init_in(36, f).as_slice()[..16]),
        4096,
    )
    .unwrap();
    assert_eq!(r.used as usize, 16 + size_of::<InitOut>());
    let out: InitOut = obj(&r.body);
    assert_eq!((out.major, out.minor, out.max_readahead), (7, 36, 65536));
    assert_eq!(u64::from(out.flags), f);
    assert_eq!(out.map_alignment, 21);
    assert_eq!(out.max_pages, 256);
    assert_eq!(s.negotiated_flags(), Some(f));

    let r = send(
        &s,
        &g,
        &req(Opcode::Init, 2, 0, init_in(30, f).as_slice()),
        4096,
    )
    .unwrap();
    assert_eq!(errno(&r), libc::EPROTO);
    let r = send(&s, &g, &req(Opcode::Init, 3, 0, &[0; 12]), 4096).unwrap();
    assert_eq!(errno(&r), libc::EINVAL);
}

#[test]
fn lookup_replies_an_entry_and_checks_names() {
    let (s, g) = started(opts());
    let r = send(&s, &g, &req(Opcode::Lookup, 9, 1, b"file\0"), 4096).unwrap();
    assert_eq!((errno(&r), r.header.unique), (0, 9));
    let e: EntryOut = obj(&r.body);
    assert_eq!(
        (e.nodeid, e.attr.ino, e.entry_valid, e.attr_valid),
        (42, 1042, 2, 1)
    );
    let r = send(&s, &g, &req(Opcode::Lookup, 10, 1, b"missing\0"), 4096).unwrap();
    assert_eq!((errno(&r), r.used), (libc::ENOENT, 16));
    for bad in [&b"a/b\0"[..], b"\0", b"noterm"] {
        let r = send(&s, &g, &req(Opcode::Lookup, 11, 1, bad), 4096).unwrap();
        assert_eq!(errno(&r), libc::EINVAL, "{bad:?}");
    }
    // An entry the guest has no room to receive is never looked up.
    let before = s.fs().calls().len();
    let r = send(&s, &g, &req(Opcode::Lookup, 12, 1, b"file\0"), 16 + 64).unwrap();
    assert_eq!(errno(&r), libc::ERANGE);
    assert_eq!(s.fs().calls().len(), before);
    assert_eq!(s.fs().lookups.load(Ordering::SeqCst), 1);
}

#[test]
fn malformed_headers() {
    let (s, g) = started(opts());
    let good = req(Opcode::Lookup, 77, 1, b"file\0");
    // Shorter than fuse_in_header: EINVAL, with the unique if it was there.
    let r = send(&s, &g, &good[..20], 64).unwrap();
    assert_eq!((errno(&r), r.header.unique), (libc::EINVAL, 77));
    let r = send(&s, &g, &good[..4], 64).unwrap();
    assert_eq!((errno(&r), r.header.unique), (libc::EINVAL, 0));
    // `len` larger than the chain, smaller than the header.
    for len in [good.len() as u32 + 1, 39, 0, u32::MAX] {
        let mut bad = good.clone();
        bad[..4].copy_from_slice(&len.to_le_bytes());
        let r = send(&s, &g, &bad, 4096).unwrap();
        assert_eq!(errno(&r), libc::EINVAL, "len {len}");
    }
    // Extensions pointing past the end.
    let mut bad = good.clone();
    bad[36..38].copy_from_slice(&1u16.to_le_bytes());
    let r = send(&s, &g, &bad, 4096).unwrap();
    assert_eq!(errno(&r), libc::EINVAL);
    // Extensions inside the request are skipped.
    let mut ext = req(
        Opcode::Lookup,
        78,
        1,
        &[b"file\0".as_slice(), &[0; 8]].concat(),
    );
    ext[36..38].copy_from_slice(&1u16.to_le_bytes());
    let r = send(&s, &g, &ext, 4096).unwrap();
    assert_eq!(errno(&r), 0);
    // No room for a reply header: the chain is dropped.
    for room in [0, 15] {
        assert!(matches!(
            send(&s, &g, &good, room),
            Err(ServerError::NoRoomForReply { .. })
        ));
        assert!(matches!(
            send(&s, &g, &good[..10], room),
            Err(ServerError::NoRoomForReply { .. })
        ));
    }
    // Unknown and unimplemented opcodes.
    let mut unknown = good.clone();
    unknown[4..8].copy_from_slice(&9999u32.to_le_bytes());
    assert_eq!(errno(&send(&s, &g, &unknown, 64).unwrap()), libc::ENOSYS);
    for o in [
        Opcode::Getlk,
        Opcode::Setlk,
        Opcode::Ioctl,
        Opcode::Poll,
        Opcode::Bmap,
        Opcode::Tmpfile,
    ] {
        let r = send(&s, &g, &req(o, 1, 1, &[0; 64]), 64).unwrap();
        assert_eq!(errno(&r), libc::ENOSYS, "{}", o.name());
    }
    // The default trait methods answer ENOSYS too.
    let r = send(&s, &g, &req(Opcode::Statfs, 1, 1, &[]), 4096).unwrap();
    assert_eq!(errno(&r), libc::ENOSYS);
}

#[test]
fn descriptors_outside_memory_drop_the_chain() {
    let (s, g) = started(opts());
    let chain = g.chain(&[(testutil::MEM_END - 8, 40, false), (REPLY_ADDR, 64, true)]);
    assert!(matches!(
        s.handle_chain(&g.mem, chain, &RecordingMapper::default()),
        Err(ServerError::DescriptorOutsideMemory { .. })
    ));
}

#[test]
fn indirect_chains_are_served() {
    let (s, g) = started(opts());
    let request = req(Opcode::Lookup, 31, 1, b"file\0");
    g.put(0x2_0000, &request);
    let chain = g.indirect_chain(&[
        (0x2_0000, 10, false),
        (0x2_0000 + 10, request.len() as u32 - 10, false),
        (REPLY_ADDR, 100, true),
        (REPLY_ADDR + 100, 100, true),
    ]);
    let used = s
        .handle_chain(&g.mem, chain, &RecordingMapper::default())
        .unwrap();
    assert_eq!(used as usize, 16 + size_of::<EntryOut>());
    let reply = g.get(REPLY_ADDR, used as usize);
    let h: OutHeader = obj(&reply);
    assert_eq!((h.error, h.unique), (0, 31));
    assert_eq!(obj::<EntryOut>(&reply[16..]).nodeid, 42);
}

#[test]
fn forget_gets_no_reply() {
    let (s, g) = started(opts());
    let r = send(&s, &g, &req(Opcode::Forget, 3, 42, &5u64.to_le_bytes()), 0).unwrap();
    assert_eq!(r.used, 0);
    assert!(s.fs().calls().contains(&"forget 42 5".to_string()));
    assert!(matches!(
        send(&s, &g, &req(Opcode::Forget, 3, 42, &[0; 4]), 0),
        Err(ServerError::BadRequestWithoutReply {
            errno: libc::EINVAL,
            ..
        })
    ));
    let batch = [&[2u8, 0, 0, 0, 0, 0, 0, 0][..], &[0; 16]].concat();
    assert!(
        send(&s, &g, &req(Opcode::BatchForget, 4, 0, &batch), 0).is_err(),
        "count 2, one entry"
    );
    let r = send(
        &s,
        &g,
        &req(Opcode::Interrupt, 5, 0, &3u64.to_le_bytes()),
        0,
    )
    .unwrap();
    assert_eq!(r.used, 0);
}

#[test]
fn read_lands_in_guest_memory_bounded_by_size_and_room() {
    let (s, g) = started(opts());
    let r = send(
        &s,
        &g,
        &req(Opcode::Read, 1, 2, read_in(300, 1000).as_slice()),
        8192,
    )
    .unwrap();
    assert_eq!((errno(&r), r.used), (0, 16 + 1000));
    assert_eq!(r.body, (300..1300u32).map(|i| i as u8).collect::<Vec<_>>());
    // Less room than asked: bounded by the room.
    let r = send(
        &s,
        &g,
        &req(Opcode::Read, 2, 2, read_in(0, 1000).as_slice()),
        16 + 100,
    )
    .unwrap();
    assert_eq!(r.used, 116);
    // At the end of the file: a short read.
    let r = send(
        &s,
        &g,
        &req(Opcode::Read, 3, 2, read_in(99_990, 1000).as_slice()),
        8192,
    )
    .unwrap();
    assert_eq!(r.used, 26);
    assert!(s.fs().calls().contains(&"read 100 0".to_string()));
}

#[test]
fn write_comes_from_guest_memory() {
    let (s, g) = started(opts());
    let data = vec![0xab; 3000];
    let w = WriteIn {
        fh: 1,
        offset: 10,
        size: 3000,
        ..Default::default()
    };
    let r = send(&s, &g, &req(Opcode::Write, 1, 2, &cat(w, &data)), 64).unwrap();
    assert_eq!(errno(&r), 0);
    assert_eq!(obj::<WriteOut>(&r.body).size, 3000);
    let mut f = &s.fs().file;
    let mut back = vec![0; 3002];
    f.seek(SeekFrom::Start(9)).unwrap();
    f.read_exact(&mut back).unwrap();
    assert_eq!(back[0], 9);
    assert_eq!(&back[1..3001], &data[..]);
    assert_eq!(back[3001], (3010u32 % 256) as u8);
    // More data announced than present.
    let w = WriteIn { size: 3001, ..w };
    let r = send(&s, &g, &req(Opcode::Write, 2, 2, &cat(w, &data)), 64).unwrap();
    assert_eq!(errno(&r), libc::EINVAL);
}

/// Parses READDIR(PLUS) records; returns (names, nodeids).
fn parse_dirents(mut b: &[u8], plus: bool) -> (Vec<String>, Vec<u64>) {
    let mut names = Vec::new();
    let mut nodes = Vec::new();
    let head = if plus { 152 } else { 24 };
    while !b.is_empty() {
        let namelen = u32::from_le_bytes(b[head - 8..head - 4].try_into().unwrap()) as usize;
        if plus {
            nodes.push(u64::from_le_bytes(b[..8].try_into().unwrap()));
        }
        names.push(String::from_utf8(b[head..head + namelen].to_vec()).unwrap());
        b = &b[(head + namelen + 7) & !7..];
    }
    (names, nodes)
}

#[test]
fn readdir_packs_up_to_the_size() {
    let (s, g) = started(opts());
    let arg = read_in(0, 4096);
    let r = send(&s, &g, &req(Opcode::Readdir, 1, 1, arg.as_slice()), 8192).unwrap();
    assert_eq!(errno(&r), 0);
    assert!(
        r.body.len() <= 4096 && r.body.len() > 4096 - 40,
        "{}",
        r.body.len()
    );
    let (names, _) = parse_dirents(&r.body, false);
    // "entry-N" records: 24 + 7 or 8 bytes pad to 32 (N < 100), 24 + 9 to 40.
    assert_eq!(names[0], "entry-0");
    assert_eq!(names.len(), 100 + (4096 - 100 * 32) / 40);
    assert_eq!(names.last().map(String::as_str), Some("entry-121"));
    // The room bounds it too.
    let r = send(
        &s,
        &g,
        &req(Opcode::Readdir, 2, 1, arg.as_slice()),
        16 + 100,
    )
    .unwrap();
    assert_eq!(parse_dirents(&r.body, false).0.len(), 3);
}

#[test]
fn readdirplus_counts_only_the_entries_sent() {
    let (s, g) = started(opts());
    let arg = read_in(5, 4096);
    let r = send(
        &s,
        &g,
        &req(Opcode::Readdirplus, 1, 1, arg.as_slice()),
        8192,
    )
    .unwrap();
    let (names, nodes) = parse_dirents(&r.body, true);
    assert_eq!(names.len(), 4096 / 160);
    assert_eq!(names[0], "entry-5");
    assert_eq!(nodes[0], 105);
    assert_eq!(s.fs().lookups.load(Ordering::SeqCst), names.len() as i64);
}

#[test]
fn xattrs_follow_the_option() {
    let (s, g) = started(opts());
    let getx = getxattr_user_a(64);
    let r = send(&s, &g, &req(Opcode::Getxattr, 1, 1, &getx), 4096).unwrap();
    assert_eq!(errno(&r), libc::ENOSYS);
    assert!(s.fs().calls().iter().all(|c| !c.starts_with("getxattr")));

    let (s, g) = started(ServerOptions {
        xattr: true,
        ..opts()
    });
    let r = send(&s, &g, &req(Opcode::Getxattr, 1, 1, &getx), 4096).unwrap();
    assert_eq!((errno(&r), r.body.as_slice()), (0, &b"value"[..]));
    let size0 = getxattr_user_a(0);
    let r = send(&s, &g, &req(Opcode::Getxattr, 2, 1, &size0), 4096).unwrap();
    assert_eq!(obj::<GetxattrOut>(&r.body).size, 5);
    let small = getxattr_user_a(4);
    let r = send(&s, &g, &req(Opcode::Getxattr, 3, 1, &small), 4096).unwrap();
    assert_eq!(errno(&r), libc::ERANGE);
    // SETXATTR_EXT was negotiated: the 16-byte struct.
    let setx = cat(
        SetxattrIn {
            size: 3,
            flags: 1,
            setxattr_flags: 1,
            padding: 0,
        },
        b"user.b\0xyz",
    );
    let r = send(&s, &g, &req(Opcode::Setxattr, 4, 1, &setx), 4096).unwrap();
    assert_eq!(errno(&r), 0);
    assert!(s
        .fs()
        .calls()
        .contains(&"setxattr user.b xyz 1 1".to_string()));
}

#[test]
fn dax_mapping_requests() {
    let m = RecordingMapper::default();
    let setup = SetupMappingIn {
        fh: 3,
        foffset: 0,
        len: 2 << 20,
        flags: 3,
        moffset: 4 << 20,
    };
    let remove = cat(
        RemoveMappingIn { count: 1 },
        RemoveMappingOne {
            moffset: 4 << 20,
            len: 2 << 20,
        }
        .as_slice(),
    );
    // A SETUPMAPPING or REMOVEMAPPING on inode 7 with `m` as the mapper: the reply's errno.
    let errno_of = |s: &Server<Fake>, g: &Guest, opcode, unique, arg: &[u8]| {
        errno(&send_with(s, g, &req(opcode, unique, 7, arg), 64, &m).unwrap())
    };

    let (s, g) = started(opts());
    assert_eq!(
        errno_of(&s, &g, Opcode::SetupMapping, 1, setup.as_slice()),
        libc::ENOSYS
    );
    assert_eq!(
        errno_of(&s, &g, Opcode::RemoveMapping, 2, &remove),
        libc::ENOSYS
    );
    assert!(m.calls.lock().unwrap().is_empty());

    let (s, g) = started(ServerOptions {
        dax_window_size: 8 << 20,
        ..opts()
    });
    assert_eq!(
        errno_of(&s, &g, Opcode::SetupMapping, 1, setup.as_slice()),
        0
    );
    assert!(s
        .fs()
        .calls()
        .contains(&format!("setupmapping 7 3 0 {} 3 {}", 2 << 20, 4 << 20)));
    assert_eq!(errno_of(&s, &g, Opcode::RemoveMapping, 2, &remove), 0);
    assert_eq!(*m.calls.lock().unwrap(), vec![(4 << 20, 2 << 20); 2]);
    // Outside the window, or overflowing.
    for (moffset, len) in [(7 << 20, 2 << 20), (u64::MAX - 10, 2 << 20)] {
        let bad = SetupMappingIn {
            moffset,
            len,
            ..setup
        };
        assert_eq!(
            errno_of(&s, &g, Opcode::SetupMapping, 3, bad.as_slice()),
            libc::EINVAL
        );
    }
    // `count` larger than the entries present.
    let lying = cat(
        RemoveMappingIn { count: 2 },
        RemoveMappingOne::default().as_slice(),
    );
    assert_eq!(
        errno_of(&s, &g, Opcode::RemoveMapping, 4, &lying),
        libc::EINVAL
    );
    assert_eq!(m.calls.lock().unwrap().len(), 2);
}

#[test]
fn destroy_ends_the_session() {
    let (s, g) = started(opts());
    let r = send(&s, &g, &req(Opcode::Destroy, 1, 0, &[]), 64).unwrap();
    assert_eq!((errno(&r), r.used), (0, 16));
    assert!(s.fs().calls().contains(&"destroy".to_string()));
    let r = send(&s, &g, &req(Opcode::Lookup, 2, 1, b"file\0"), 4096).unwrap();
    assert_eq!(errno(&r), libc::EIO);
}

#[test]
fn garbage_never_panics() {
    // Deterministic pseudo-random requests, valid headers with random bodies and lengths.
    let (s, g) = started(ServerOptions {
        xattr: true,
        dax_window_size: 1 << 20,
        ..opts()
    });
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..3000 {
        let opcode = (next() % 60) as u32;
        if opcode == Opcode::Destroy as u32 || opcode == Opcode::Init as u32 {
            continue;
        }
        let len = (next() % 200) as usize;
        let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let mut r = req(Opcode::Lookup, 1, 1, &body);
        r[4..8].copy_from_slice(&opcode.to_le_bytes());
        if next() % 4 == 0 {
            let l = (next() % 300) as u32;
            r[..4].copy_from_slice(&l.to_le_bytes());
        }
        let room = (next() % 600) as u32;
        if let Ok(reply) = send(&s, &g, &r, room) {
            assert!(reply.used <= room);
        }
    }
}

#[test]
fn a_write_larger_than_max_write_is_refused() {
    let (s, g) = started(ServerOptions {
        max_write: 4096,
        ..opts()
    });
    let data = vec![1u8; 4097];
    let w = WriteIn {
        fh: 1,
        offset: 0,
        size: 4097,
        ..Default::default()
    };
    let r = send(&s, &g, &req(Opcode::Write, 1, 2, &cat(w, &data)), 64).unwrap();
    assert_eq!(errno(&r), libc::EINVAL);
    assert!(!s.fs().calls().iter().any(|c| c.starts_with("write")));
    let w = WriteIn { size: 4096, ..w };
    let r = send(
        &s,
        &g,
        &req(Opcode::Write, 2, 2, &cat(w, &data[..4096])),
        64,
    )
    .unwrap();
    assert_eq!(errno(&r), 0);
}

#[test]
fn a_removemapping_batch_larger_than_linux_sends_is_refused() {
    let (s, g) = started(ServerOptions {
        dax_window_size: 1 << 30,
        ..opts()
    });
    let m = RecordingMapper::default();
    let n = vfsdax_protocol::dax::REMOVEMAPPING_MAX_ENTRIES;
    let batch = |count: u32| {
        let mut b = RemoveMappingIn { count }.as_slice().to_vec();
        for i in 0..count {
            b.extend_from_slice(
                RemoveMappingOne {
                    moffset: u64::from(i) << 21,
                    len: 2 << 20,
                }
                .as_slice(),
            );
        }
        b
    };
    let r = send_with(
        &s,
        &g,
        &req(Opcode::RemoveMapping, 1, 7, &batch(n + 1)),
        64,
        &m,
    )
    .unwrap();
    assert_eq!(errno(&r), libc::EINVAL);
    assert!(m.calls.lock().unwrap().is_empty());
    let r = send_with(&s, &g, &req(Opcode::RemoveMapping, 2, 7, &batch(n)), 64, &m).unwrap();
    assert_eq!(errno(&r), 0);
}

#[test]
fn a_huge_readdir_buffer_is_capped() {
    let (s, g) = started(opts());
    let arg = read_in(0, u32::MAX);
    // All the room the test memory has (1.5 MiB), more than the cap.
    let room = (super::testutil::MEM_END - super::testutil::REPLY_ADDR) as u32;
    let r = send(&s, &g, &req(Opcode::Readdir, 1, 1, arg.as_slice()), room).unwrap();
    assert_eq!(errno(&r), 0);
    let asked = s
        .fs()
        .calls()
        .into_iter()
        .find(|c| c.starts_with("readdir "))
        .unwrap();
    let size: usize = asked.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(size <= vfsdax_protocol::fuse::MAX_READDIR_REPLY, "{asked}");
}

#[test]
fn a_panic_in_the_filesystem_is_answered_with_eio_and_the_server_goes_on() {
    let (s, g) = started(opts());
    let r = send(&s, &g, &req(Opcode::Lookup, 7, 1, b"panic\0"), 4096).unwrap();
    assert_eq!((errno(&r), r.header.unique, r.used), (libc::EIO, 7, 16));
    let r = send(&s, &g, &req(Opcode::Lookup, 8, 1, b"file\0"), 4096).unwrap();
    assert_eq!(errno(&r), 0, "the next request is served");
}
