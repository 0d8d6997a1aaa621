//! Writes the seed corpora: `cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds`
//! (from the repository root; `scripts/fuzz.sh` does it when a seed is missing). Each seed is a
//! small valid input of its target: FUSE sessions for `fuse_server`, well-formed rings for
//! `chain_layouts`, map/unmap sequences for `shmem_handler`, a window with mappings for
//! `fault_classifier`, common instructions for `insn_decoder`. Files are named `seed-<name>`;
//! what libFuzzer adds next to them is not kept in git.

use std::path::Path;

use vfsdax_fuzz::chain_layouts::{desc_bytes, record as crec};
use vfsdax_fuzz::fuse_server::{ctl, record, request, request_as, session};
use vfsdax_fuzz::shmem_handler::{fields, kind, map_pages_at};
use vfsdax_protocol::dax::DAX_CHUNK_SIZE;
use vfsdax_protocol::fuse::flags::{SETUPMAPPING_FLAG_READ, SETUPMAPPING_FLAG_WRITE};
use vfsdax_protocol::fuse::{
    AccessIn, BatchForgetIn, CopyFileRangeIn, CreateIn, FallocateIn, FlushIn, ForgetIn, ForgetOne,
    FsyncIn, GetattrIn, GetxattrIn, InterruptIn, LinkIn, LseekIn, MkdirIn, MknodIn, Opcode, OpenIn,
    ReadIn, ReleaseIn, RemoveMappingIn, RemoveMappingOne, Rename2In, RenameIn, SetattrIn,
    SetupMappingIn, SetxattrIn, SyncfsIn, WriteIn,
};
use vm_memory::ByteValued;

fn cat<T: ByteValued>(head: T, rest: &[&[u8]]) -> Vec<u8> {
    let mut v = head.as_slice().to_vec();
    for r in rest {
        v.extend_from_slice(r);
    }
    v
}

/// Default record control: Linux's layout, a page of reply room.
const C: u8 = ctl::LINUX | ctl::ROOM_PAGE;

struct Session {
    bytes: Vec<u8>,
    unique: u64,
}

impl Session {
    fn new(s: u8) -> Self {
        Session {
            bytes: vec![s],
            unique: 10,
        }
    }
    fn op(&mut self, c: u8, opcode: Opcode, node: u64, args: &[u8]) -> &mut Self {
        self.unique += 1;
        let r = request(opcode as u32, self.unique, node, args);
        self.bytes.extend(record(c, &r));
        self
    }
    fn op_as(&mut self, uid: u32, opcode: Opcode, node: u64, args: &[u8]) -> &mut Self {
        self.unique += 1;
        let r = request_as(opcode as u32, self.unique, node, uid, args);
        self.bytes.extend(record(C, &r));
        self
    }
    fn raw(&mut self, c: u8, bytes: &[u8]) -> &mut Self {
        self.bytes.extend(record(c, bytes));
        self
    }
}

fn read_in(fh: u64, offset: u64, size: u32) -> ReadIn {
    ReadIn {
        fh,
        offset,
        size,
        ..Default::default()
    }
}

fn fuse_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let rdwr = libc::O_RDWR as u32;

    // Files: LOOKUP gives node 2 (node ids count from 2 in every session), OPEN handle 1.
    let mut s = Session::new(0);
    s.op(C, Opcode::Lookup, 1, b"file\0")
        .op(C, Opcode::Getattr, 2, GetattrIn::default().as_slice())
        .op(
            C,
            Opcode::Open,
            2,
            OpenIn {
                flags: rdwr,
                open_flags: 0,
            }
            .as_slice(),
        )
        .op(
            ctl::LINUX | ctl::ROOM_64K,
            Opcode::Read,
            2,
            read_in(1, 0, 8192).as_slice(),
        )
        .op(
            C,
            Opcode::Write,
            2,
            &cat(
                WriteIn {
                    fh: 1,
                    offset: 100,
                    size: 5,
                    ..Default::default()
                },
                &[b"hello"],
            ),
        )
        .op(
            C,
            Opcode::Flush,
            2,
            FlushIn {
                fh: 1,
                ..Default::default()
            }
            .as_slice(),
        )
        .op(
            C,
            Opcode::Fsync,
            2,
            FsyncIn {
                fh: 1,
                ..Default::default()
            }
            .as_slice(),
        )
        .op(
            C,
            Opcode::Release,
            2,
            ReleaseIn {
                fh: 1,
                ..Default::default()
            }
            .as_slice(),
        )
        .op(C, Opcode::Forget, 2, ForgetIn { nlookup: 1 }.as_slice());
    out.push(("file-io", s.bytes.clone()));

    // Names: create, rename, link, symlink, remove; directories.
    let mut s = Session::new(0);
    let mkdir = cat(
        MkdirIn {
            mode: 0o755,
            umask: 0o022,
        },
        &[b"new\0"],
    );
    let create = cat(
        CreateIn {
            flags: rdwr,
            mode: 0o644,
            umask: 0o022,
            open_flags: 0,
        },
        &[b"f\0"],
    );
    s.op(C, Opcode::Mkdir, 1, &mkdir) // node 2
        .op(C, Opcode::Create, 2, &create) // node 3, handle 1
        .op(
            C,
            Opcode::Write,
            3,
            &cat(
                WriteIn {
                    fh: 1,
                    size: 3,
                    ..Default::default()
                },
                &[b"abc"],
            ),
        )
        .op(
            C,
            Opcode::Setattr,
            3,
            SetattrIn {
                valid: 1 << 3,
                size: 1,
                ..Default::default()
            }
            .as_slice(),
        )
        .op(
            C,
            Opcode::Rename,
            2,
            &cat(RenameIn { newdir: 1 }, &[b"f\0g\0"]),
        )
        .op(
            C,
            Opcode::Rename2,
            1,
            &cat(
                Rename2In {
                    newdir: 1,
                    flags: 2,
                    padding: 0,
                },
                &[b"g\0file\0"],
            ),
        )
        .op(C, Opcode::Link, 2, &cat(LinkIn { oldnodeid: 3 }, &[b"h\0"]))
        .op(C, Opcode::Symlink, 2, b"s\0../file\0")
        .op(C, Opcode::Lookup, 2, b"s\0")
        .op(C, Opcode::Readlink, 4, &[])
        .op(C, Opcode::Unlink, 2, b"h\0")
        .op(C, Opcode::Unlink, 2, b"s\0")
        .op(C, Opcode::Rmdir, 1, b"new\0")
        .op(C, Opcode::Opendir, 1, OpenIn::default().as_slice())
        .op(C, Opcode::Readdir, 1, read_in(2, 0, 4096).as_slice())
        .op(C, Opcode::Readdirplus, 1, read_in(2, 0, 4096).as_slice())
        .op(
            C,
            Opcode::Releasedir,
            1,
            ReleaseIn {
                fh: 2,
                ..Default::default()
            }
            .as_slice(),
        )
        .op(C, Opcode::Statfs, 1, &[])
        .op(
            C,
            Opcode::Access,
            1,
            AccessIn {
                mask: 7,
                padding: 0,
            }
            .as_slice(),
        );
    out.push(("names", s.bytes.clone()));

    // DAX: map two chunks of `big` (fh = -1, as Linux sends), remove them, map through a handle.
    let mut s = Session::new(session::DAX);
    let chunk = 2u64 << 20;
    let setup = |fh: u64, foffset: u64, moffset: u64, write: bool| SetupMappingIn {
        fh,
        foffset,
        len: chunk,
        flags: SETUPMAPPING_FLAG_READ | if write { SETUPMAPPING_FLAG_WRITE } else { 0 },
        moffset,
    };
    s.op(C, Opcode::Lookup, 1, b"big\0")
        .op(
            C,
            Opcode::SetupMapping,
            2,
            setup(u64::MAX, 0, 0, true).as_slice(),
        )
        .op(
            C,
            Opcode::SetupMapping,
            2,
            setup(u64::MAX, chunk, chunk, false).as_slice(),
        )
        .op(
            C,
            Opcode::RemoveMapping,
            2,
            &cat(
                RemoveMappingIn { count: 2 },
                &[
                    RemoveMappingOne {
                        moffset: 0,
                        len: chunk,
                    }
                    .as_slice(),
                    RemoveMappingOne {
                        moffset: chunk,
                        len: chunk,
                    }
                    .as_slice(),
                ],
            ),
        )
        .op(
            C,
            Opcode::Open,
            2,
            OpenIn {
                flags: rdwr,
                open_flags: 0,
            }
            .as_slice(),
        )
        .op(
            C,
            Opcode::SetupMapping,
            2,
            setup(1, 0, 3 * chunk, true).as_slice(),
        )
        .op(
            C,
            Opcode::Release,
            2,
            ReleaseIn {
                fh: 1,
                ..Default::default()
            }
            .as_slice(),
        )
        .op(
            C,
            Opcode::Setattr,
            2,
            SetattrIn {
                valid: 1 << 3,
                size: 4096,
                ..Default::default()
            }
            .as_slice(),
        )
        .op(C, Opcode::Forget, 2, ForgetIn { nlookup: 1 }.as_slice());
    out.push(("dax", s.bytes.clone()));

    // Extended attributes.
    let mut s = Session::new(session::XATTR);
    s.op(C, Opcode::Lookup, 1, b"file\0")
        .op(
            C,
            Opcode::Getxattr,
            2,
            &cat(
                GetxattrIn {
                    size: 0,
                    padding: 0,
                },
                &[b"user.fuzz\0"],
            ),
        )
        .op(
            C,
            Opcode::Getxattr,
            2,
            &cat(
                GetxattrIn {
                    size: 64,
                    padding: 0,
                },
                &[b"user.fuzz\0"],
            ),
        )
        .op(
            C,
            Opcode::Listxattr,
            2,
            GetxattrIn {
                size: 256,
                padding: 0,
            }
            .as_slice(),
        )
        .op(
            C,
            Opcode::Setxattr,
            2,
            &cat(
                SetxattrIn {
                    size: 3,
                    ..Default::default()
                },
                &[b"user.b\0xyz"],
            ),
        )
        .op(C, Opcode::Removexattr, 2, b"user.b\0");
    out.push(("xattr", s.bytes.clone()));

    // An xattr map (trusted.* kept as user.virtiofs.trusted.*) and HANDLE_KILLPRIV_V2.
    let mut s = Session::new(session::XATTR | session::WRITEBACK);
    let setx = |name: &[u8], value: &[u8]| {
        cat(
            SetxattrIn {
                size: value.len() as u32,
                ..Default::default()
            },
            &[name, b"\0", value],
        )
    };
    s.op(C, Opcode::Lookup, 1, b"file\0")
        .op(C, Opcode::Setxattr, 2, &setx(b"trusted.a", b"1"))
        .op(
            C,
            Opcode::Getxattr,
            2,
            &cat(
                GetxattrIn {
                    size: 64,
                    padding: 0,
                },
                &[b"trusted.a\0"],
            ),
        )
        .op(
            C,
            Opcode::Listxattr,
            2,
            GetxattrIn {
                size: 256,
                padding: 0,
            }
            .as_slice(),
        )
        .op(
            C,
            Opcode::Setxattr,
            2,
            &setx(b"security.capability", b"\x01\x00\x00\x02"),
        )
        .op(C, Opcode::Removexattr, 2, b"trusted.a\0")
        .op(
            C,
            Opcode::Open,
            2,
            OpenIn {
                flags: rdwr,
                open_flags: 1,
            }
            .as_slice(),
        )
        .op(
            C,
            Opcode::Write,
            2,
            &cat(
                WriteIn {
                    fh: 1,
                    size: 2,
                    write_flags: 4,
                    ..Default::default()
                },
                &[b"kp"],
            ),
        );
    out.push(("xattr-map-killpriv", s.bytes.clone()));

    // The session's own INIT, DESTROY and a request after it.
    let mut s = Session::new(session::NO_INIT);
    s.raw(C, &vfsdax_fuzz::fuse_server::init_request(false))
        .op(C, Opcode::Getattr, 1, GetattrIn::default().as_slice())
        .op(C, Opcode::Destroy, 0, &[])
        .op(C, Opcode::Getattr, 1, GetattrIn::default().as_slice())
        .raw(C, &vfsdax_fuzz::fuse_server::init_request(true));
    out.push(("own-init", s.bytes.clone()));

    // File operations off the beaten path.
    let mut s = Session::new(session::WRITEBACK);
    s.op(C, Opcode::Lookup, 1, b"file\0")
        .op(
            C,
            Opcode::Open,
            2,
            OpenIn {
                flags: rdwr,
                open_flags: 0,
            }
            .as_slice(),
        )
        .op(
            C,
            Opcode::Fallocate,
            2,
            FallocateIn {
                fh: 1,
                offset: 0,
                length: 4096,
                mode: 0,
                padding: 0,
            }
            .as_slice(),
        )
        .op(
            C,
            Opcode::Lseek,
            2,
            LseekIn {
                fh: 1,
                offset: 10,
                whence: 3,
                padding: 0,
            }
            .as_slice(),
        )
        .op(
            C,
            Opcode::Create,
            1,
            &cat(
                CreateIn {
                    flags: rdwr,
                    mode: 0o600,
                    umask: 0,
                    open_flags: 0,
                },
                &[b"copy\0"],
            ),
        )
        .op(
            C,
            Opcode::CopyFileRange,
            2,
            CopyFileRangeIn {
                fh_in: 1,
                off_in: 0,
                nodeid_out: 3,
                fh_out: 2,
                off_out: 0,
                len: 1000,
                flags: 0,
            }
            .as_slice(),
        )
        .op(C, Opcode::Syncfs, 1, SyncfsIn::default().as_slice())
        .op(
            C,
            Opcode::Mknod,
            1,
            &cat(
                MknodIn {
                    mode: libc::S_IFIFO | 0o644,
                    rdev: 0,
                    umask: 0,
                    padding: 0,
                },
                &[b"p\0"],
            ),
        )
        .op(
            C,
            Opcode::Interrupt,
            0,
            InterruptIn { unique: 12 }.as_slice(),
        )
        .op(
            C,
            Opcode::BatchForget,
            0,
            &cat(
                BatchForgetIn { count: 2, dummy: 0 },
                &[
                    ForgetOne {
                        nodeid: 2,
                        nlookup: 1,
                    }
                    .as_slice(),
                    ForgetOne {
                        nodeid: 3,
                        nlookup: 1,
                    }
                    .as_slice(),
                ],
            ),
        );
    out.push(("file-ops", s.bytes.clone()));

    // Names that must not lead out of the share, and a caller that is not root.
    let mut s = Session::new(0);
    s.op(C, Opcode::Lookup, 1, b"..\0")
        .op(C, Opcode::Lookup, 1, b"esc\0")
        .op(C, Opcode::Open, 2, OpenIn::default().as_slice())
        .op(C, Opcode::Readlink, 2, &[])
        .op(C, Opcode::Lookup, 1, b"fifo\0")
        .op(C, Opcode::Open, 3, OpenIn::default().as_slice())
        .op_as(1000, Opcode::Lookup, 1, b"ro\0")
        .op_as(
            1000,
            Opcode::Open,
            4,
            OpenIn {
                flags: rdwr,
                open_flags: 0,
            }
            .as_slice(),
        )
        .op_as(1000, Opcode::Create, 1, &create);
    out.push(("escape-and-uid", s.bytes.clone()));

    // One request in every chain layout and reply room.
    let mut s = Session::new(session::READONLY);
    let getattr = GetattrIn::default();
    for layout in 0..4u8 {
        for room in 0..8u8 {
            let indirect = if (layout + room) % 2 == 1 {
                ctl::INDIRECT
            } else {
                0
            };
            s.op(
                layout | room << 3 | indirect,
                Opcode::Getattr,
                1,
                getattr.as_slice(),
            );
        }
    }
    s.op(ctl::PIECES | ctl::ROOM_ACROSS, Opcode::Lookup, 1, b"file\0")
        .op(
            ctl::ONE | ctl::ROOM_TWO,
            Opcode::Open,
            2,
            OpenIn::default().as_slice(),
        )
        .op(
            ctl::SPLIT8 | ctl::ROOM_TWO | ctl::INDIRECT,
            Opcode::Read,
            2,
            read_in(1, 0, 4096).as_slice(),
        );
    out.push(("layouts", s.bytes.clone()));

    // Malformed: a short header, a header whose len lies, an unknown opcode.
    let mut s = Session::new(0);
    s.raw(C, &[1, 2, 3])
        .raw(C, &request(Opcode::Getattr as u32, 5, 1, &[])[..20])
        .raw(
            ctl::LINUX | ctl::ROOM_PAGE | ctl::FIX_LEN,
            &request(Opcode::Lookup as u32, 6, 1, b"file"),
        )
        .raw(C, &request(999, 7, 1, &[]));
    out.push(("malformed", s.bytes.clone()));
    out
}

fn chain_seeds() -> Vec<(&'static str, Vec<u8>)> {
    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const F_INDIRECT: u16 = 4;
    let mut out = Vec::new();
    // Queue of 16: table at 0, available ring at 0x800, used ring at 0x1000.
    let head = |s: u8| -> Vec<u8> {
        let mut v = vec![s | (4 << 2)];
        for a in [0u16, 0x800 / 4, 0x1000 / 4] {
            v.extend_from_slice(&a.to_le_bytes());
        }
        v
    };
    let desc = |i: u8, addr: u32, len: u32, flags: u16, next: u16| -> Vec<u8> {
        let mut v = vec![crec::DESC, i];
        v.extend_from_slice(&desc_bytes(addr, len, flags, next));
        v
    };
    let raw = |addr: u32, bytes: &[u8]| -> Vec<u8> {
        let mut v = vec![crec::RAW];
        v.extend_from_slice(&addr.to_le_bytes());
        v.push(bytes.len() as u8);
        v.extend_from_slice(bytes);
        v
    };
    let avail = |slot: u8, h: u16| -> Vec<u8> {
        let mut v = vec![crec::AVAIL, slot];
        v.extend_from_slice(&h.to_le_bytes());
        v
    };
    let avail_idx = |idx: u16| -> Vec<u8> {
        let mut v = vec![crec::AVAIL_IDX, 0, 0];
        v.extend_from_slice(&idx.to_le_bytes());
        v
    };
    let getattr = request(
        Opcode::Getattr as u32,
        1,
        1,
        GetattrIn::default().as_slice(),
    );
    let read = request(Opcode::Read as u32, 2, 2, read_in(1, 0, 0x300).as_slice());
    let mut write = request(
        Opcode::Write as u32,
        3,
        2,
        WriteIn {
            fh: 1,
            offset: 7,
            size: 100,
            ..Default::default()
        }
        .as_slice(),
    );
    write.extend([0x5a; 100]);
    let len = write.len() as u32;
    write[..4].copy_from_slice(&len.to_le_bytes());
    // Three chains: GETATTR (header and room), READ into a room across the boundary of two
    // regions, WRITE through an indirect table (header, arguments, data; room).
    let mut recs: Vec<Vec<u8>> = vec![
        raw(0x3000, &getattr),
        desc(0, 0x3000, getattr.len() as u32, F_NEXT, 1),
        desc(1, 0x6000, 0x200, F_WRITE, 0),
        raw(0x3100, &read),
        desc(2, 0x3100, read.len() as u32, F_NEXT, 3),
        desc(3, 0x7f00, 0x400, F_WRITE, 0),
    ];
    for (i, chunk) in write.chunks(200).enumerate() {
        recs.push(raw(0x3200 + 200 * i as u32, chunk));
    }
    let mut ind = |i: u8, addr: u32, len: u32, flags: u16, next: u16| {
        let mut v = vec![crec::INDIRECT];
        v.extend_from_slice(&(0x2000u16 / 16).to_le_bytes());
        v.push(i);
        v.extend_from_slice(&desc_bytes(addr, len, flags, next));
        recs.push(v);
    };
    ind(0, 0x3200, 40, F_NEXT, 1);
    ind(1, 0x3200 + 40, 40, F_NEXT, 2);
    ind(2, 0x3200 + 80, 100, F_NEXT, 3);
    ind(3, 0x2_0000, 64, F_WRITE, 0);
    recs.push(desc(4, 0x2000, 64, F_INDIRECT, 0));
    recs.extend([avail(0, 0), avail(1, 2), avail(2, 4), avail_idx(3)]);
    let body: Vec<u8> = recs.concat();
    for (name, s) in [("backend", 0u8), ("backend-event-idx", 1 | 0x40)] {
        let mut v = head(s);
        v.push(recs.len() as u8);
        v.extend(&body);
        out.push((name, v));
    }
    // Direct: the same rings, then a script: read the header, split the room, write, move
    // bytes to and from the file.
    let mut v = head(2);
    v.push(recs.len() as u8);
    v.extend(&body);
    for (op, arg) in [
        (0u8, 40u16),
        (6, 0),
        (1, 100),
        (2 | 1 << 3, 50),
        (4, 16),
        (3 | 1 << 4, 20),
        (3, 16),
        (5, 64),
        (7, 0),
        (0, 1000),
    ] {
        v.push(op);
        v.extend_from_slice(&arg.to_le_bytes());
    }
    out.push(("direct-script", v));
    out
}

fn shmem_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let p = 4096u64;
    let c = DAX_CHUNK_SIZE;
    let mut out = Vec::new();
    let map_pages =
        |file: u8, at: u8, fo: u8, n: u8, w: u8| vec![kind::MAP_PAGES, file, at, fo, n, w];
    let map = |file: u8, f: Vec<u8>| [vec![kind::MAP, file], f].concat();
    let unmap = |f: Vec<u8>| [vec![kind::UNMAP], f].concat();
    out.push((
        "map-unmap",
        [
            map_pages(0, map_pages_at(0, false, 0), 0, 4, 1),
            map_pages(1, map_pages_at(0, true, 0), 1, 2, 0),
            map_pages(3, map_pages_at(1, false, 0), 0, 2, 0),
            map_pages(4, map_pages_at(1, true, 0), 0, 4, 0),
            unmap(fields(0, 0, 0, 2 * p, 0)),
            map_pages(0, map_pages_at(0, false, 1), 2, 1, 0),
            vec![kind::RESIZE, 1],
            map_pages(0, map_pages_at(1, false, 0), 0, 16, 1),
            unmap(fields(0, 0, c - 2 * p, 2 * p, 0)),
            map(2, fields(0, 0, c, c, 0)),
        ]
        .concat(),
    ));
    out.push((
        "refusals",
        [
            map(0, fields(1, 0, 0, p, 0)),
            map(0, fields(0, 0, 0, p, 2)),
            map(0, fields(0, 0, 1, p, 0)),
            map(0, fields(0, 0, p, p, 0)),
            map(0, fields(0, 0, c - p, 2 * p, 0)),
            map(0, fields(0, 0, 0, 2 * c, 0)),
            map(0, fields(0, 0, 2 * c - p, p, 0)),
            map(0, fields(0, u64::MAX - p + 1, 0, p, 0)),
            map(1, fields(0, 0, 0, p, 1)),
            map(2, fields(0, 0, 0, p, 0)),
            map(4, fields(0, 0, 0, p, 1)),
            map(5, fields(0, 0, 0, p, 0)),
            map(6, fields(0, 0, 0, p, 0)),
            unmap(fields(0, 0, u64::MAX - p + 1, p, 0)),
            unmap(fields(0, 0, 0, 0, 0)),
            unmap(fields(0, 0, p, p, 0)),
        ]
        .concat(),
    ));
    out
}

fn classifier_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    v.extend(0x4000_0000u64.to_le_bytes());
    v.extend(0x7f00_0000_0000u64.to_le_bytes());
    v.extend(511u32.to_le_bytes());
    for s in [0x1800u64, 0x4000, u64::MAX, 0] {
        v.extend(s.to_le_bytes());
    }
    let ins = |page: u32, pages: u16, file: u8, fpage: u32, w: u8| {
        let mut r = vec![0u8];
        r.extend(page.to_le_bytes());
        r.extend(pages.to_le_bytes());
        r.push(file);
        r.extend(fpage.to_le_bytes());
        r.push(w);
        // The largest size seen: the mapped range's end (in KiB), as at a map request.
        let seen_kib = (fpage + u32::from(pages)) * 4;
        r.extend(seen_kib.to_le_bytes());
        r
    };
    let rem = |page: u32, pages: u16| {
        let mut r = vec![1u8];
        r.extend(page.to_le_bytes());
        r.extend(pages.to_le_bytes());
        r
    };
    let ops = [
        ins(0, 4, 0, 0, 1),
        ins(16, 2, 1, 2, 0),
        ins(32, 8, 2, 0, 1),
        ins(48, 4, 3, 1, 0),
        rem(1, 1),
        rem(33, 2),
        ins(2, 1, 1, 7, 1),
    ];
    v.push(ops.len() as u8);
    for o in ops {
        v.extend(o);
    }
    let ev = |kind: u8, mode: u8, addr: u64, acc: u8| {
        let mut r = vec![kind, mode];
        r.extend(addr.to_le_bytes());
        r.push(acc);
        r
    };
    for e in [
        ev(0, 1 | 8 << 1, 0x2008, 0),
        ev(0, 1 | 8 << 1, 0x1ff8, 0),
        ev(0, 1, 0x10000, 1),
        ev(1, 1, 0x10000, 0),
        ev(2, 1, 0x1000, 2),
        ev(3, 0, 0, 2),
        ev(4, 1, 0x20000, 2),
        ev(4, 1, 0x30000, 2),
        ev(0, 0, 0xfee0_0000, 0),
        ev(0, 1, 0x20_0000, 0),
    ] {
        v.extend(e);
    }
    vec![("window", v)]
}

fn decoder_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let insns: &[(&str, &[u8])] = &[
        ("mov-load", &[0x48, 0x8b, 0x03]),
        ("mov-store-rip", &[0x89, 0x05, 0x10, 0, 0, 0]),
        ("mov-imm-sib", &[0xc7, 0x44, 0x8b, 0x08, 1, 2, 3, 4]),
        (
            "mov-imm-rip-66-rexw",
            &[0x66, 0x48, 0xc7, 0x05, 0x10, 0, 0, 0, 1, 2, 3, 4],
        ),
        ("fs-load", &[0x64, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0]),
        ("addr32", &[0x67, 0x8b, 0x00]),
        (
            "moffs",
            &[0xa1, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11],
        ),
        ("stos", &[0xf3, 0xab]),
        ("lods", &[0xac]),
        ("movzx", &[0x0f, 0xb6, 0x07]),
        ("movups-store", &[0x0f, 0x11, 0x07]),
        ("movdqa-store", &[0x66, 0x0f, 0x7f, 0x47, 0x10]),
        ("lock-cmpxchg", &[0xf0, 0x0f, 0xb1, 0x0f]),
        ("xchg", &[0x87, 0x07]),
        ("cmp-byte", &[0x80, 0x3f, 0x00]),
        ("test", &[0xf6, 0x07, 0x01]),
        ("push-mem", &[0xff, 0x37]),
        ("bts-imm", &[0x0f, 0xba, 0x2f, 0x03]),
        ("mov-byte-rip-imm", &[0xc6, 0x05, 0x00, 0x10, 0, 0, 0x7f]),
        (
            "add-r12-index",
            &[0x42, 0x01, 0xb4, 0xe7, 0x34, 0x12, 0x5a, 0xa5],
        ),
        ("rep-movsb", &[0xf3, 0xa4]),
        ("movs-fs", &[0x64, 0x48, 0xa5]),
        ("cmpsb", &[0xa6]),
        ("vmovdqu-load", &[0xc5, 0xfa, 0x6f, 0x07]),
        ("vmovdqu-store-ymm", &[0xc5, 0xfe, 0x7f, 0x47, 0x20]),
    ];
    let mut regs = Vec::new();
    // rip, fs base, gs base, then rax..r15.
    for r in [0x40_0000u64, 0x7000_0000, 0x7100_0000] {
        regs.extend(r.to_le_bytes());
    }
    for i in 0..16u64 {
        regs.extend((0x1000 * (i + 1) + i).to_le_bytes());
    }
    insns
        .iter()
        .map(|(name, code)| {
            let mut v = vec![code.len() as u8];
            v.extend_from_slice(code);
            v.extend(&regs);
            (*name, v)
        })
        .collect()
}

/// A target's seeds: (name, bytes).
type Seeds = Vec<(&'static str, Vec<u8>)>;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let sets: [(&str, Seeds); 5] = [
        ("fuse_server", fuse_seeds()),
        ("chain_layouts", chain_seeds()),
        ("shmem_handler", shmem_seeds()),
        ("fault_classifier", classifier_seeds()),
        ("insn_decoder", decoder_seeds()),
    ];
    for (target, seeds) in sets {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
        }
        println!("{target}: {} seeds", seeds.len());
    }
}
