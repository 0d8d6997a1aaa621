//! In-process vhost-user frontend harness: bad input from a frontend/guest. Every case must be
//! answered with an error reply (or the chain dropped) and the daemon must keep serving: after
//! each one a GETATTR on the root succeeds and the process is alive.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use vfsdax_driver::frontend::REQUEST_QUEUE;
use vfsdax_driver::queue::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_WRITE};
use vfsdax_driver::{ClientOptions, RawDesc};
use vfsdax_protocol::fuse::flags::fattr;
use vfsdax_protocol::fuse::{GetattrIn, Opcode, SetattrIn, ROOT_ID};
use vfsdax_tests::harness::{classify, expect_errno, raw_request, DaemonOptions, Outcome, Session};
use vm_memory::{ByteValued, Bytes, GuestAddress};

fn session() -> Session {
    let copts = ClientOptions {
        timeout: Duration::from_secs(3),
        ..Default::default()
    };
    Session::start_with(&DaemonOptions::default(), copts)
}

/// Asserts a bad request was not answered with success or garbage.
#[track_caller]
fn assert_rejected(what: &str, o: &Outcome) {
    println!("{what}: {o:?}");
    match o {
        Outcome::ErrorReply { .. } | Outcome::Dropped | Outcome::NotReturned => {}
        other => panic!("{what}: expected an error reply or a dropped chain, got {other:?}"),
    }
}

fn getattr_body() -> Vec<u8> {
    GetattrIn::default().as_slice().to_vec()
}

/// Places `bytes` in fresh guest memory and returns their address.
fn place(s: &mut Session, bytes: &[u8]) -> u64 {
    let a = s
        .client
        .memory_mut()
        .alloc(bytes.len().max(1) as u64, 8)
        .unwrap();
    s.client.memory().memory().write_slice(bytes, a).unwrap();
    a.0
}

fn reply_buf(s: &mut Session, len: u32) -> u64 {
    s.client.memory_mut().alloc(u64::from(len), 8).unwrap().0
}

/// A 56-byte GETATTR of the root with a fresh unique, placed in guest memory, and a 4096-byte
/// reply buffer: the request's address and the buffer's.
fn placed_getattr(s: &mut Session) -> (u64, u64) {
    let unique = s.client.alloc_unique();
    let req = raw_request(56, Opcode::Getattr as u32, unique, ROOT_ID, &getattr_body());
    let req_addr = place(s, &req);
    let reply = reply_buf(s, 4096);
    (req_addr, reply)
}

/// Whether the request queue puts chains in indirect tables when asked.
fn uses_indirect(s: &Session) -> bool {
    s.client
        .queue(REQUEST_QUEUE)
        .is_some_and(|q| q.uses_indirect())
}

/// Sends `descs` on the request queue (`indirect`: through an indirect table) and classifies
/// what came back in the buffer at `reply`.
fn send_chain(s: &mut Session, descs: &[RawDesc], indirect: bool, reply: u64) -> Outcome {
    let used = s.client.raw_chain(REQUEST_QUEUE, descs, indirect);
    classify(used.map(|u| raw_reply(s, reply, u.len)))
}

/// Asserts the chain `descs` is rejected (see [`send_chain`]) and the daemon still serves.
#[track_caller]
fn assert_chain_rejected(
    s: &mut Session,
    what: &str,
    descs: &[RawDesc],
    indirect: bool,
    reply: u64,
) {
    let o = send_chain(s, descs, indirect, reply);
    assert_rejected(what, &o);
    s.assert_serving();
}

#[test]
fn header_shorter_than_fuse_in_header() {
    let mut s = session();
    for n in [0usize, 1, 20, 39] {
        let req = raw_request(n as u32, Opcode::Getattr as u32, 77, ROOT_ID, &[]);
        let o = classify(s.client.send_raw(&[&req[..n]], 256));
        assert_rejected(&format!("{n}-byte header"), &o);
        s.assert_serving();
    }
}

#[test]
fn len_larger_than_the_chain_or_smaller_than_the_header() {
    let mut s = session();
    let body = getattr_body();
    for len in [4096u32, 57, u32::MAX, 10] {
        let unique = s.client.alloc_unique();
        let req = raw_request(len, Opcode::Getattr as u32, unique, ROOT_ID, &body);
        let o = classify(s.client.send_raw(&[&req], 256));
        assert_rejected(&format!("len {len} for a {}-byte request", req.len()), &o);
        if let Outcome::ErrorReply { unique: u, .. } = o {
            assert_eq!(u, unique, "error reply carries the request's unique");
        }
        s.assert_serving();
    }
}

#[test]
fn descriptors_outside_guest_memory() {
    let mut s = session();
    let base = s.client.memory().base().0;
    let end = base + s.client.memory().size();
    let (req_addr, reply) = placed_getattr(&mut s);
    let rd = |addr, len| RawDesc {
        addr,
        len,
        flags: 0,
    };
    let wr = |addr, len| RawDesc {
        addr,
        len,
        flags: VIRTQ_DESC_F_WRITE,
    };
    let cases: Vec<(&str, Vec<RawDesc>)> = vec![
        (
            "readable below guest memory",
            vec![rd(0x1000, 56), wr(reply, 4096)],
        ),
        (
            "readable past the end",
            vec![rd(end + 0x1000, 56), wr(reply, 4096)],
        ),
        (
            "readable straddling the end",
            vec![rd(end - 8, 56), wr(reply, 4096)],
        ),
        (
            "writable past the end",
            vec![rd(req_addr, 56), wr(end, 4096)],
        ),
        (
            "writable length overflows",
            vec![rd(req_addr, 56), wr(reply, u32::MAX)],
        ),
        (
            "readable at u64::MAX",
            vec![rd(u64::MAX - 4, 56), wr(reply, 4096)],
        ),
        (
            "indirect table outside memory",
            vec![RawDesc {
                addr: 0x2000,
                len: 32,
                flags: VIRTQ_DESC_F_INDIRECT,
            }],
        ),
    ];
    for (what, descs) in cases {
        assert_chain_rejected(&mut s, what, &descs, false, reply);
    }
    if uses_indirect(&s) {
        let descs = [rd(0x1000, 56), wr(reply, 4096)];
        let what = "outside memory, inside an indirect table";
        assert_chain_rejected(&mut s, what, &descs, true, reply);
    }
}

fn raw_reply(s: &Session, addr: u64, used: u32) -> vfsdax_driver::RawReply {
    let n = used.min(4096) as usize;
    let mut data = vec![0u8; n];
    s.client
        .memory()
        .memory()
        .read_slice(&mut data, GuestAddress(addr))
        .unwrap();
    vfsdax_driver::RawReply {
        used_len: used,
        data,
    }
}

#[test]
fn write_only_chain_or_no_room_for_the_reply() {
    let mut s = session();
    let unique = s.client.alloc_unique();
    let req = raw_request(56, Opcode::Getattr as u32, unique, ROOT_ID, &getattr_body());
    for room in [0u32, 8, 15] {
        let o = classify(s.client.send_raw(&[&req], room));
        println!("GETATTR with {room} writable bytes: {o:?}");
        assert!(
            matches!(o, Outcome::Dropped | Outcome::NotReturned),
            "no room for a reply header must drop the chain, got {o:?}"
        );
        s.assert_serving();
    }
    // Only writable descriptors: no request at all.
    let reply = reply_buf(&mut s, 4096);
    let descs = [RawDesc {
        addr: reply,
        len: 4096,
        flags: VIRTQ_DESC_F_WRITE,
    }];
    assert_chain_rejected(&mut s, "write-only chain", &descs, false, reply);
    // A readable descriptor after a writable one violates the ring rules.
    let req_addr = place(&mut s, &req);
    let descs = [
        RawDesc {
            addr: req_addr,
            len: 56,
            flags: 0,
        },
        RawDesc {
            addr: reply,
            len: 4096,
            flags: VIRTQ_DESC_F_WRITE,
        },
        RawDesc {
            addr: req_addr,
            len: 56,
            flags: 0,
        },
    ];
    let o = send_chain(&mut s, &descs, false, reply);
    println!("readable after writable: {o:?}");
    assert!(!matches!(o, Outcome::Garbage(_)), "{o:?}");
    s.assert_serving();
}

#[test]
fn names_with_slash_or_nul_are_einval() {
    let mut s = session();
    std::fs::create_dir(s.host("a")).unwrap();
    std::fs::write(s.host("a/b"), b"b").unwrap();
    assert_eq!(expect_errno(s.client.lookup(ROOT_ID, b"a/b")), libc::EINVAL);
    assert_eq!(
        expect_errno(s.client.lookup(ROOT_ID, b"/etc")),
        libc::EINVAL
    );
    assert_eq!(
        expect_errno(s.client.mkdir(ROOT_ID, b"x/y", 0o755, 0)),
        libc::EINVAL
    );
    assert_eq!(
        expect_errno(
            s.client
                .create(ROOT_ID, b"../escape", libc::O_RDWR as u32, 0o644, 0)
        ),
        libc::EINVAL
    );
    assert_eq!(
        expect_errno(s.client.symlink(ROOT_ID, b"l/x", b"t")),
        libc::EINVAL
    );
    assert_eq!(
        expect_errno(
            s.client
                .mknod(ROOT_ID, b"../n", libc::S_IFREG | 0o644, 0, 0)
        ),
        libc::EINVAL
    );
    assert_eq!(
        expect_errno(s.client.rename(ROOT_ID, b"a", ROOT_ID, b"a/c")),
        libc::EINVAL
    );
    assert_eq!(expect_errno(s.client.unlink(ROOT_ID, b"a/b")), libc::EINVAL);
    assert!(!s.daemon.outside().join("escape").exists());
    assert!(!s.daemon.outside().join("n").exists());
    assert!(s.host("a/b").exists(), "UNLINK a/b did nothing");
    // Names with an interior NUL, or without a terminating NUL.
    for body in [&b"a\0b\0"[..], b"abc"] {
        let unique = s.client.alloc_unique();
        let req = raw_request(
            40 + body.len() as u32,
            Opcode::Lookup as u32,
            unique,
            ROOT_ID,
            body,
        );
        let o = classify(s.client.send_raw(&[&req], 256));
        assert_eq!(
            o,
            Outcome::ErrorReply {
                errno: libc::EINVAL,
                unique
            },
            "LOOKUP name {body:?}"
        );
    }
    s.assert_serving();
}

#[test]
fn dotdot_at_the_root_stays_at_the_root() {
    let mut s = session();
    let root_ino = std::fs::metadata(s.daemon.share()).unwrap().ino();
    std::fs::write(s.daemon.outside().join("secret"), b"s").unwrap();
    let up = s.client.lookup(ROOT_ID, b"..").unwrap();
    assert_eq!(up.attr.ino, root_ino, ".. of the root is the root");
    let up2 = s.client.lookup(up.nodeid, b"..").unwrap();
    assert_eq!(up2.attr.ino, root_ino);
    assert_eq!(
        expect_errno(s.client.lookup(up.nodeid, b"outside")),
        libc::ENOENT
    );
    assert_eq!(
        expect_errno(s.client.lookup(up2.nodeid, b"share")),
        libc::ENOENT
    );
    std::fs::create_dir(s.host("sub")).unwrap();
    let sub = s.client.lookup(ROOT_ID, b"sub").unwrap();
    let back = s.client.lookup(sub.nodeid, b"..").unwrap();
    assert_eq!(
        back.attr.ino, root_ino,
        ".. of a subdirectory is its parent (sub is {})",
        sub.attr.ino
    );
    let dot = s.client.lookup(ROOT_ID, b".").unwrap();
    assert_eq!(dot.attr.ino, root_ino);
    assert!(s.client.mkdir(ROOT_ID, b"..", 0o755, 0).is_err());
    assert!(s
        .client
        .create(ROOT_ID, b"..", libc::O_RDWR as u32, 0o644, 0)
        .is_err());
    assert!(s.client.unlink(up.nodeid, b"..").is_err());
    assert!(s.daemon.outside().join("secret").exists());
    s.assert_serving();
}

#[test]
fn symlinks_pointing_outside_are_never_followed() {
    let mut s = session();
    let outside = s.daemon.outside();
    std::fs::write(outside.join("secret.txt"), b"top secret").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), s.host("esc")).unwrap();
    std::os::unix::fs::symlink(&outside, s.host("escdir")).unwrap();
    std::os::unix::fs::symlink("../outside/secret.txt", s.host("rel")).unwrap();
    for name in ["esc", "escdir", "rel"] {
        let e = s.client.lookup(ROOT_ID, name.as_bytes()).unwrap();
        let lmeta = std::fs::symlink_metadata(s.host(name)).unwrap();
        assert_eq!(
            e.attr.mode & libc::S_IFMT,
            libc::S_IFLNK,
            "{name} is reported as a symlink"
        );
        assert_eq!(e.attr.ino, lmeta.ino(), "{name}: the link's own inode");
        let a = s.client.getattr(e.nodeid, None).unwrap();
        assert_eq!(a.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        let target = std::fs::read_link(s.host(name)).unwrap();
        assert_eq!(
            s.client.readlink(e.nodeid).unwrap(),
            target.as_os_str().as_encoded_bytes()
        );
        // OPEN on the link must not open the target.
        match s.client.open(e.nodeid, libc::O_RDONLY as u32) {
            Ok(o) => {
                let data = s.client.read(e.nodeid, o.fh, 0, 100);
                panic!("OPEN of symlink {name} succeeded; READ gave {data:?}");
            }
            Err(err) => println!("OPEN {name}: errno {:?}", err.errno()),
        }
        let trunc = SetattrIn {
            valid: fattr::SIZE,
            size: 0,
            ..Default::default()
        };
        assert!(
            s.client.setattr(e.nodeid, &trunc).is_err(),
            "SETATTR size on {name}"
        );
    }
    let d = s.client.lookup(ROOT_ID, b"escdir").unwrap();
    assert_eq!(
        expect_errno(s.client.lookup(d.nodeid, b"secret.txt")),
        libc::ENOTDIR
    );
    assert!(s
        .client
        .create(d.nodeid, b"planted", libc::O_RDWR as u32, 0o644, 0)
        .is_err());
    assert!(s.client.mkdir(d.nodeid, b"planted-dir", 0o755, 0).is_err());
    assert!(s.client.opendir(d.nodeid, 0).is_err());
    assert!(!outside.join("planted").exists() && !outside.join("planted-dir").exists());
    assert_eq!(
        std::fs::read(outside.join("secret.txt")).unwrap(),
        b"top secret"
    );
    s.assert_serving();
}

#[test]
fn unknown_opcodes_answer_enosys() {
    let mut s = session();
    for opcode in [7u32, 19, 9999, 4096, u32::MAX] {
        let unique = s.client.alloc_unique();
        let req = raw_request(40, opcode, unique, ROOT_ID, &[]);
        let o = classify(s.client.send_raw(&[&req], 256));
        assert_eq!(
            o,
            Outcome::ErrorReply {
                errno: libc::ENOSYS,
                unique
            },
            "opcode {opcode}"
        );
        s.assert_serving();
    }
}

#[test]
fn requests_before_init_are_refused_and_do_not_kill_the_daemon() {
    let daemon = vfsdax_tests::harness::Daemon::start(&DaemonOptions::default()).unwrap();
    let mut client = daemon.connect(ClientOptions::default()).unwrap();
    assert!(
        client.getattr(ROOT_ID, None).is_err(),
        "GETATTR before INIT"
    );
    client.init().unwrap();
    client.getattr(ROOT_ID, None).unwrap();
}

/// Chains that break the ring rules themselves: a loop, a link out of the table, indirect
/// tables that are nested, mis-sized or combined with `NEXT`.
#[test]
fn malformed_descriptor_chains() {
    use vfsdax_driver::queue::{Descriptor, VIRTQ_DESC_F_NEXT};
    let mut s = session();
    let (req_addr, reply) = placed_getattr(&mut s);
    let d = |addr, len, flags, next| Descriptor {
        addr,
        len,
        flags,
        next,
    };
    // A valid two-entry table (request, reply), for the indirect cases.
    let table: Vec<u8> = [
        d(req_addr, 56, VIRTQ_DESC_F_NEXT, 1),
        d(reply, 4096, VIRTQ_DESC_F_WRITE, 0),
    ]
    .iter()
    .flat_map(|x| x.as_slice().to_vec())
    .collect();
    let table_addr = place(&mut s, &table);
    let next_write = VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE;
    let crafted: Vec<(&str, Vec<Descriptor>)> = vec![
        (
            "a loop back to the head",
            vec![
                d(req_addr, 56, VIRTQ_DESC_F_NEXT, 1),
                d(reply, 4096, next_write, 0),
            ],
        ),
        (
            "a link out of the descriptor table",
            vec![d(req_addr, 56, VIRTQ_DESC_F_NEXT, 0xfff0)],
        ),
        (
            "an indirect table with a length not a multiple of 16",
            vec![d(table_addr, 20, VIRTQ_DESC_F_INDIRECT, 0)],
        ),
        (
            "an empty indirect table",
            vec![d(table_addr, 0, VIRTQ_DESC_F_INDIRECT, 0)],
        ),
    ];
    for (what, descs) in crafted {
        let o = classify(
            s.client
                .crafted_chain(REQUEST_QUEUE, &descs)
                .map(|u| raw_reply(&s, reply, u.len)),
        );
        assert_rejected(what, &o);
        s.assert_serving();
    }
    if uses_indirect(&s) {
        let nested = [RawDesc {
            addr: table_addr,
            len: 32,
            flags: VIRTQ_DESC_F_INDIRECT,
        }];
        let what = "an indirect table inside an indirect table";
        assert_chain_rejected(&mut s, what, &nested, true, reply);
    }
}

/// FORGET and BATCH_FORGET with node ids that were never looked up, counts larger than the
/// body, and more forgets than lookups, on the hiprio queue.
#[test]
fn bad_forgets_on_the_hiprio_queue() {
    use vfsdax_driver::frontend::HIPRIO_QUEUE;
    use vfsdax_protocol::fuse::{BatchForgetIn, ForgetOne};
    let mut s = session();
    std::fs::write(s.host("f"), b"f").unwrap();
    let e = s.client.lookup(ROOT_ID, b"f").unwrap();
    // Never looked up, and many more forgets than lookups: no reply, nothing breaks.
    s.client.forget(0xdead_beef, 1).unwrap();
    s.client.forget(e.nodeid, 1_000_000).unwrap();
    s.client
        .batch_forget(&[ForgetOne {
            nodeid: 0xfeed,
            nlookup: 3,
        }])
        .unwrap();
    s.assert_serving();
    // A count that claims more entries than the request carries.
    let one = ForgetOne {
        nodeid: ROOT_ID,
        nlookup: 1,
    };
    for count in [2u32, u32::MAX] {
        let head = BatchForgetIn { count, dummy: 0 };
        let mut body = head.as_slice().to_vec();
        body.extend_from_slice(one.as_slice());
        let unique = s.client.alloc_unique();
        let req = raw_request(
            40 + body.len() as u32,
            Opcode::BatchForget as u32,
            unique,
            0,
            &body,
        );
        let o = classify(s.client.transact(HIPRIO_QUEUE, &[&req], 256));
        println!("BATCH_FORGET count {count} with one entry: {o:?}");
        assert!(
            !matches!(o, Outcome::Success(_) | Outcome::Garbage(_)),
            "{o:?}"
        );
        s.assert_serving();
    }
    // A FORGET whose body is too short.
    let unique = s.client.alloc_unique();
    let short = raw_request(44, Opcode::Forget as u32, unique, e.nodeid, &[1, 0, 0, 0]);
    let o = classify(s.client.transact(HIPRIO_QUEUE, &[&short], 256));
    println!("FORGET with a 4-byte body: {o:?}");
    assert!(
        !matches!(o, Outcome::Success(_) | Outcome::Garbage(_)),
        "{o:?}"
    );
    s.assert_serving();
    // A forgotten name can be looked up again.
    assert_eq!(
        s.client.lookup(ROOT_ID, b"f").unwrap().attr.size,
        1,
        "lookups still work"
    );
}
