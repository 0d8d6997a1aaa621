use super::*;

/// Concatenates a struct's bytes and trailing pieces.
fn args<T: ByteValued>(head: T, rest: &[&[u8]]) -> Vec<u8> {
    let mut v = head.as_slice().to_vec();
    for r in rest {
        v.extend_from_slice(r);
    }
    v
}

fn op(o: Opcode) -> u32 {
    o as u32
}

fn cs(s: &[u8]) -> &CStr {
    CStr::from_bytes_with_nul(s).unwrap()
}

#[test]
fn every_opcode_decodes() {
    let read = ReadIn {
        fh: 3,
        offset: 4096,
        size: 8192,
        ..Default::default()
    };
    let rel = ReleaseIn {
        fh: 5,
        flags: 2,
        release_flags: flags::RELEASE_FLUSH,
        lock_owner: 9,
    };
    let fsync = FsyncIn {
        fh: 6,
        fsync_flags: 1,
        padding: 0,
    };
    let cases: Vec<(Opcode, Vec<u8>, Request<'static>)> = vec![
        (Opcode::Destroy, vec![], Request::Destroy),
        (
            Opcode::Lookup,
            b"abc\0".to_vec(),
            Request::Lookup { name: cs(b"abc\0") },
        ),
        (
            Opcode::Forget,
            args(ForgetIn { nlookup: 3 }, &[]),
            Request::Forget(ForgetIn { nlookup: 3 }),
        ),
        (
            Opcode::BatchForget,
            args(
                BatchForgetIn { count: 2, dummy: 0 },
                &[
                    ForgetOne {
                        nodeid: 1,
                        nlookup: 2,
                    }
                    .as_slice(),
                    ForgetOne {
                        nodeid: 3,
                        nlookup: 4,
                    }
                    .as_slice(),
                ],
            ),
            Request::BatchForget(vec![
                ForgetOne {
                    nodeid: 1,
                    nlookup: 2,
                },
                ForgetOne {
                    nodeid: 3,
                    nlookup: 4,
                },
            ]),
        ),
        (
            Opcode::Getattr,
            args(
                GetattrIn {
                    getattr_flags: flags::GETATTR_FH,
                    dummy: 0,
                    fh: 7,
                },
                &[],
            ),
            Request::Getattr { fh: Some(7) },
        ),
        (
            Opcode::Getattr,
            args(
                GetattrIn {
                    getattr_flags: 0,
                    dummy: 0,
                    fh: 7,
                },
                &[],
            ),
            Request::Getattr { fh: None },
        ),
        (
            Opcode::Setattr,
            args(
                SetattrIn {
                    valid: 8,
                    size: 100,
                    ..Default::default()
                },
                &[],
            ),
            Request::Setattr(SetattrIn {
                valid: 8,
                size: 100,
                ..Default::default()
            }),
        ),
        (Opcode::Readlink, vec![], Request::Readlink),
        (
            Opcode::Symlink,
            b"link\0../../etc/passwd\0".to_vec(),
            Request::Symlink {
                name: cs(b"link\0"),
                linkname: cs(b"../../etc/passwd\0"),
            },
        ),
        (
            Opcode::Mknod,
            args(
                MknodIn {
                    mode: 0o10644,
                    rdev: 0,
                    umask: 0o22,
                    padding: 0,
                },
                &[b"fifo\0"],
            ),
            Request::Mknod {
                arg: MknodIn {
                    mode: 0o10644,
                    rdev: 0,
                    umask: 0o22,
                    padding: 0,
                },
                name: cs(b"fifo\0"),
            },
        ),
        (
            Opcode::Mkdir,
            args(
                MkdirIn {
                    mode: 0o755,
                    umask: 0o22,
                },
                &[b"d\0"],
            ),
            Request::Mkdir {
                arg: MkdirIn {
                    mode: 0o755,
                    umask: 0o22,
                },
                name: cs(b"d\0"),
            },
        ),
        (
            Opcode::Unlink,
            b"f\0".to_vec(),
            Request::Unlink { name: cs(b"f\0") },
        ),
        (
            Opcode::Rmdir,
            b"d\0".to_vec(),
            Request::Rmdir { name: cs(b"d\0") },
        ),
        (
            Opcode::Rename,
            args(RenameIn { newdir: 9 }, &[b"a\0b\0"]),
            Request::Rename {
                newdir: 9,
                flags: 0,
                oldname: cs(b"a\0"),
                newname: cs(b"b\0"),
            },
        ),
        (
            Opcode::Rename2,
            args(
                Rename2In {
                    newdir: 9,
                    flags: flags::RENAME_EXCHANGE,
                    padding: 0,
                },
                &[b"a\0b\0"],
            ),
            Request::Rename {
                newdir: 9,
                flags: flags::RENAME_EXCHANGE,
                oldname: cs(b"a\0"),
                newname: cs(b"b\0"),
            },
        ),
        (
            Opcode::Link,
            args(LinkIn { oldnodeid: 4 }, &[b"hard\0"]),
            Request::Link {
                oldnodeid: 4,
                name: cs(b"hard\0"),
            },
        ),
        (
            Opcode::Open,
            args(
                OpenIn {
                    flags: 2,
                    open_flags: 1,
                },
                &[],
            ),
            Request::Open(OpenIn {
                flags: 2,
                open_flags: 1,
            }),
        ),
        (Opcode::Read, args(read, &[]), Request::Read(read)),
        (
            Opcode::Write,
            args(
                WriteIn {
                    fh: 1,
                    size: 3,
                    ..Default::default()
                },
                &[],
            ),
            Request::Write(WriteIn {
                fh: 1,
                size: 3,
                ..Default::default()
            }),
        ),
        (Opcode::Statfs, vec![], Request::Statfs),
        (Opcode::Release, args(rel, &[]), Request::Release(rel)),
        (Opcode::Fsync, args(fsync, &[]), Request::Fsync(fsync)),
        (
            Opcode::Getxattr,
            args(
                GetxattrIn {
                    size: 64,
                    padding: 0,
                },
                &[b"user.x\0"],
            ),
            Request::Getxattr {
                size: 64,
                name: cs(b"user.x\0"),
            },
        ),
        (
            Opcode::Listxattr,
            args(
                GetxattrIn {
                    size: 0,
                    padding: 0,
                },
                &[],
            ),
            Request::Listxattr { size: 0 },
        ),
        (
            Opcode::Removexattr,
            b"user.x\0".to_vec(),
            Request::Removexattr {
                name: cs(b"user.x\0"),
            },
        ),
        (
            Opcode::Flush,
            args(
                FlushIn {
                    fh: 2,
                    lock_owner: 8,
                    ..Default::default()
                },
                &[],
            ),
            Request::Flush(FlushIn {
                fh: 2,
                lock_owner: 8,
                ..Default::default()
            }),
        ),
        (
            Opcode::Opendir,
            args(
                OpenIn {
                    flags: 0,
                    open_flags: 0,
                },
                &[],
            ),
            Request::Opendir(OpenIn::default()),
        ),
        (
            Opcode::Readdir,
            args(read, &[]),
            Request::Readdir {
                arg: read,
                plus: false,
            },
        ),
        (
            Opcode::Readdirplus,
            args(read, &[]),
            Request::Readdir {
                arg: read,
                plus: true,
            },
        ),
        (Opcode::Releasedir, args(rel, &[]), Request::Releasedir(rel)),
        (Opcode::Fsyncdir, args(fsync, &[]), Request::Fsyncdir(fsync)),
        (
            Opcode::Access,
            args(
                AccessIn {
                    mask: 4,
                    padding: 0,
                },
                &[],
            ),
            Request::Access(AccessIn {
                mask: 4,
                padding: 0,
            }),
        ),
        (
            Opcode::Create,
            args(
                CreateIn {
                    flags: 0o101,
                    mode: 0o644,
                    umask: 0o22,
                    open_flags: 0,
                },
                &[b"new\0"],
            ),
            Request::Create {
                arg: CreateIn {
                    flags: 0o101,
                    mode: 0o644,
                    umask: 0o22,
                    open_flags: 0,
                },
                name: cs(b"new\0"),
            },
        ),
        (
            Opcode::Interrupt,
            args(InterruptIn { unique: 77 }, &[]),
            Request::Interrupt(InterruptIn { unique: 77 }),
        ),
        (
            Opcode::Fallocate,
            args(
                FallocateIn {
                    fh: 1,
                    offset: 2,
                    length: 3,
                    mode: 4,
                    padding: 0,
                },
                &[],
            ),
            Request::Fallocate(FallocateIn {
                fh: 1,
                offset: 2,
                length: 3,
                mode: 4,
                padding: 0,
            }),
        ),
        (
            Opcode::Lseek,
            args(
                LseekIn {
                    fh: 1,
                    offset: 2,
                    whence: 3,
                    padding: 0,
                },
                &[],
            ),
            Request::Lseek(LseekIn {
                fh: 1,
                offset: 2,
                whence: 3,
                padding: 0,
            }),
        ),
        (
            Opcode::CopyFileRange,
            args(
                CopyFileRangeIn {
                    fh_in: 1,
                    len: 5,
                    ..Default::default()
                },
                &[],
            ),
            Request::CopyFileRange(CopyFileRangeIn {
                fh_in: 1,
                len: 5,
                ..Default::default()
            }),
        ),
        (
            Opcode::SetupMapping,
            args(
                SetupMappingIn {
                    fh: 1,
                    foffset: 0,
                    len: 4096,
                    flags: 3,
                    moffset: 8192,
                },
                &[],
            ),
            Request::SetupMapping(SetupMappingIn {
                fh: 1,
                foffset: 0,
                len: 4096,
                flags: 3,
                moffset: 8192,
            }),
        ),
        (
            Opcode::RemoveMapping,
            args(
                RemoveMappingIn { count: 1 },
                &[RemoveMappingOne {
                    moffset: 0,
                    len: 2 << 20,
                }
                .as_slice()],
            ),
            Request::RemoveMapping(vec![RemoveMappingOne {
                moffset: 0,
                len: 2 << 20,
            }]),
        ),
        (Opcode::Syncfs, vec![0; 8], Request::Syncfs),
    ];
    let mut seen = std::collections::HashSet::new();
    for (o, bytes, want) in &cases {
        assert_eq!(
            decode(op(*o), bytes, false).as_ref(),
            Ok(want),
            "{}",
            o.name()
        );
        seen.insert(*o);
    }
    for o in [
        Opcode::Getlk,
        Opcode::Setlk,
        Opcode::Setlkw,
        Opcode::Bmap,
        Opcode::Ioctl,
        Opcode::Poll,
        Opcode::NotifyReply,
        Opcode::Tmpfile,
    ] {
        assert_eq!(
            decode(op(o), &[0; 64], false),
            Ok(Request::Unsupported(op(o))),
            "{}",
            o.name()
        );
        seen.insert(o);
    }
    seen.insert(Opcode::Init);
    seen.insert(Opcode::Setxattr);
    for o in Opcode::ALL {
        assert!(seen.contains(o), "{} is not covered", o.name());
    }
    assert_eq!(decode(7, &[], false), Ok(Request::Unsupported(7)));
    assert_eq!(decode(4096, &[], false), Ok(Request::Unsupported(4096)));
}

#[test]
fn init_in_short_and_long() {
    let full = InitIn {
        major: 7,
        minor: 38,
        max_readahead: 1,
        flags: 2,
        flags2: 3,
        unused: [0; 11],
    };
    assert_eq!(
        decode(op(Opcode::Init), full.as_slice(), false),
        Ok(Request::Init(full))
    );
    let compat = &full.as_slice()[..16];
    let want = InitIn { flags2: 0, ..full };
    assert_eq!(
        decode(op(Opcode::Init), compat, false),
        Ok(Request::Init(want))
    );
    assert_eq!(
        decode(op(Opcode::Init), &compat[..15], false),
        Err(libc::EINVAL)
    );
    // Longer than the struct: the tail is ignored.
    let mut longer = full.as_slice().to_vec();
    longer.extend_from_slice(&[0xff; 8]);
    assert_eq!(
        decode(op(Opcode::Init), &longer, false),
        Ok(Request::Init(full))
    );
}

#[test]
fn setxattr_struct_size_follows_negotiation() {
    let ext = SetxattrIn {
        size: 3,
        flags: 1,
        setxattr_flags: 1,
        padding: 0,
    };
    let bytes = args(ext, &[b"user.a\0", b"xyz"]);
    assert_eq!(
        decode(op(Opcode::Setxattr), &bytes, true),
        Ok(Request::Setxattr {
            flags: 1,
            setxattr_flags: 1,
            name: cs(b"user.a\0"),
            value: b"xyz"
        })
    );
    let compat = args(
        GetxattrIn {
            size: 3,
            padding: 1,
        },
        &[b"user.a\0", b"xyz"],
    );
    assert_eq!(
        decode(op(Opcode::Setxattr), &compat, false),
        Ok(Request::Setxattr {
            flags: 1,
            setxattr_flags: 0,
            name: cs(b"user.a\0"),
            value: b"xyz"
        })
    );
    // The value is shorter than announced.
    assert_eq!(
        decode(op(Opcode::Setxattr), &bytes[..bytes.len() - 1], true),
        Err(libc::EINVAL)
    );
    let huge = args(
        SetxattrIn {
            size: u32::MAX,
            ..ext
        },
        &[b"user.a\0", b"xyz"],
    );
    assert_eq!(decode(op(Opcode::Setxattr), &huge, true), Err(libc::EINVAL));
}

#[test]
fn bad_names() {
    for o in [Opcode::Lookup, Opcode::Unlink, Opcode::Rmdir] {
        assert_eq!(decode(op(o), b"abc", false), Err(libc::EINVAL), "no NUL");
        assert_eq!(decode(op(o), b"\0", false), Err(libc::EINVAL), "empty");
        assert_eq!(decode(op(o), b"a/b\0", false), Err(libc::EINVAL), "slash");
        assert_eq!(decode(op(o), b"/\0", false), Err(libc::EINVAL), "slash");
        assert_eq!(decode(op(o), b"", false), Err(libc::EINVAL), "nothing");
        assert_eq!(
            decode(op(o), b"a\0b\0", false),
            Err(libc::EINVAL),
            "interior NUL"
        );
        assert_eq!(
            decode(op(o), b"a\0\0", false),
            Err(libc::EINVAL),
            "two NULs"
        );
        assert!(decode(op(o), b"a\0", false).is_ok());
    }
    assert_eq!(
        decode(
            op(Opcode::Rename),
            &args(RenameIn { newdir: 1 }, &[b"a\0b\0c\0"]),
            false
        ),
        Err(libc::EINVAL),
        "a third name"
    );
    let mkdir = |name: &[u8]| args(MkdirIn::default(), &[name]);
    assert_eq!(
        decode(op(Opcode::Mkdir), &mkdir(b"x/y\0"), false),
        Err(libc::EINVAL)
    );
    assert_eq!(
        decode(op(Opcode::Mkdir), &mkdir(b"xy"), false),
        Err(libc::EINVAL)
    );
    let create = args(CreateIn::default(), &[b"../x\0"]);
    assert_eq!(
        decode(op(Opcode::Create), &create, false),
        Err(libc::EINVAL)
    );
    let rename = |a: &[u8]| args(RenameIn { newdir: 1 }, &[a]);
    assert_eq!(
        decode(op(Opcode::Rename), &rename(b"a\0"), false),
        Err(libc::EINVAL),
        "one name"
    );
    assert_eq!(
        decode(op(Opcode::Rename), &rename(b"a\0b"), false),
        Err(libc::EINVAL)
    );
    assert_eq!(
        decode(op(Opcode::Rename), &rename(b"a\0b/c\0"), false),
        Err(libc::EINVAL)
    );
    let link = args(LinkIn { oldnodeid: 1 }, &[b"\0"]);
    assert_eq!(decode(op(Opcode::Link), &link, false), Err(libc::EINVAL));
    assert_eq!(
        decode(op(Opcode::Symlink), b"a/b\0target\0", false),
        Err(libc::EINVAL)
    );
    assert_eq!(
        decode(op(Opcode::Symlink), b"a\0target", false),
        Err(libc::EINVAL)
    );
    let getx = args(
        GetxattrIn {
            size: 1,
            padding: 0,
        },
        &[b"user.x"],
    );
    assert_eq!(
        decode(op(Opcode::Getxattr), &getx, false),
        Err(libc::EINVAL)
    );
}

#[test]
fn short_structs_are_einval() {
    let sizes = [
        (Opcode::Forget, 8),
        (Opcode::Getattr, 16),
        (Opcode::Setattr, 88),
        (Opcode::Open, 8),
        (Opcode::Read, 40),
        (Opcode::Write, 40),
        (Opcode::Release, 24),
        (Opcode::Fsync, 16),
        (Opcode::Flush, 24),
        (Opcode::Access, 8),
        (Opcode::Interrupt, 8),
        (Opcode::Fallocate, 32),
        (Opcode::Lseek, 24),
        (Opcode::CopyFileRange, 56),
        (Opcode::SetupMapping, 40),
        (Opcode::RemoveMapping, 4),
        (Opcode::BatchForget, 8),
        (Opcode::Listxattr, 8),
    ];
    for (o, size) in sizes {
        assert!(
            decode(op(o), &vec![0; size], false).is_ok(),
            "{} with {size}",
            o.name()
        );
        assert_eq!(
            decode(op(o), &vec![0; size - 1], false),
            Err(libc::EINVAL),
            "{}",
            o.name()
        );
    }
}

#[test]
fn counted_arrays_are_bounded_by_the_bytes_present() {
    let one = RemoveMappingOne { moffset: 1, len: 2 };
    let two = args(
        RemoveMappingIn { count: 2 },
        &[one.as_slice(), one.as_slice()],
    );
    assert_eq!(
        decode(op(Opcode::RemoveMapping), &two, false),
        Ok(Request::RemoveMapping(vec![one, one]))
    );
    assert_eq!(
        decode(op(Opcode::RemoveMapping), &two[..two.len() - 1], false),
        Err(libc::EINVAL)
    );
    let lying = args(RemoveMappingIn { count: u32::MAX }, &[one.as_slice()]);
    assert_eq!(
        decode(op(Opcode::RemoveMapping), &lying, false),
        Err(libc::EINVAL)
    );
    let f = ForgetOne {
        nodeid: 1,
        nlookup: 1,
    };
    let lying = args(
        BatchForgetIn { count: 3, dummy: 0 },
        &[f.as_slice(), f.as_slice()],
    );
    assert_eq!(
        decode(op(Opcode::BatchForget), &lying, false),
        Err(libc::EINVAL)
    );
    let huge = args(
        BatchForgetIn {
            count: u32::MAX,
            dummy: 0,
        },
        &[],
    );
    assert_eq!(
        decode(op(Opcode::BatchForget), &huge, false),
        Err(libc::EINVAL)
    );
}

#[test]
fn only_forget_batch_forget_and_interrupt_go_unanswered() {
    for &o in Opcode::ALL {
        let quiet = matches!(o, Opcode::Forget | Opcode::BatchForget | Opcode::Interrupt);
        assert_eq!(expects_reply(op(o)), !quiet, "{}", o.name());
    }
    assert!(expects_reply(9999));
}
