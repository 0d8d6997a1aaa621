//! Tests of the passthrough DAX requests and the `FUSE_ATTR_DAX` policy against a host tempdir,
//! with a recording mapper standing in for the VMM.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use vfsdax_protocol::fuse::flags::{attr, SETUPMAPPING_FLAG_READ, SETUPMAPPING_FLAG_WRITE};
use vfsdax_protocol::fuse::{RemoveMappingOne, ROOT_ID};

use super::super::tests::{ctx, errno, share_with, Share};
use super::*;
use crate::dax::FrontendMapping;
use crate::filesystem::Context;
use crate::filesystem::FileSystem;

const MIB2: u64 = 2 << 20;
const WINDOW: u64 = 64 << 20;
const R: u64 = SETUPMAPPING_FLAG_READ;
const W: u64 = SETUPMAPPING_FLAG_WRITE;

/// One map call as the VMM would see it: window offset, length, file offset, writable, the
/// mapped file's inode number and its open access mode.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MapCall {
    moffset: u64,
    len: u64,
    foffset: u64,
    writable: bool,
    ino: u64,
    accmode: i32,
}

#[derive(Default)]
struct Vmm {
    maps: Mutex<Vec<MapCall>>,
    unmaps: Mutex<Vec<(u64, u64)>>,
    fail: Mutex<Option<i32>>,
}

impl Vmm {
    fn maps(&self) -> Vec<MapCall> {
        self.maps.lock().expect("maps").clone()
    }
    fn unmaps(&self) -> Vec<(u64, u64)> {
        self.unmaps.lock().expect("unmaps").clone()
    }
    fn check(&self) -> io::Result<()> {
        match *self.fail.lock().expect("fail") {
            Some(n) => Err(io::Error::from_raw_os_error(n)),
            None => Ok(()),
        }
    }
}

impl Mapper for Vmm {
    fn map(&self, mo: u64, len: u64, f: &File, fo: u64, w: bool) -> io::Result<()> {
        self.check()?;
        // SAFETY: F_GETFL only reads the status flags of the open descriptor `f`.
        let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        self.maps.lock().expect("maps").push(MapCall {
            moffset: mo,
            len,
            foffset: fo,
            writable: w,
            ino: f.metadata().expect("fstat").ino(),
            accmode: fl & libc::O_ACCMODE,
        });
        Ok(())
    }
    fn unmap(&self, mo: u64, len: u64) -> io::Result<()> {
        self.check()?;
        self.unmaps.lock().expect("unmaps").push((mo, len));
        Ok(())
    }
}

fn dax_share(f: impl FnOnce(&mut crate::passthrough::PassthroughConfig)) -> Share {
    share_with(|c| {
        c.dax_window = WINDOW;
        f(c);
    })
}

/// A host file `name` of 4 MiB in the share, looked up: (node id, host inode number).
fn file(s: &Share, name: &str) -> (Inode, u64) {
    let p = s.dir.join(name);
    std::fs::write(&p, vec![7u8; 4 << 20]).expect("write file");
    let e = s.lookup_root(name).expect("lookup");
    (e.inode, std::fs::metadata(&p).expect("stat").ino())
}

fn setup(s: &Share, vmm: &Vmm, ino: Inode, fh: u64, fo: u64, mo: u64, flags: u64) -> i32 {
    match s.fs.setup_mapping(ctx(), ino, fh, fo, MIB2, flags, mo, vmm) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().expect("an OS error"),
    }
}

fn remove(s: &Share, vmm: &Vmm, ranges: &[(u64, u64)]) -> io::Result<()> {
    let list: Vec<RemoveMappingOne> = ranges
        .iter()
        .map(|&(moffset, len)| RemoveMappingOne { moffset, len })
        .collect();
    s.fs.remove_mapping(ctx(), &list, vmm)
}

#[test]
fn without_a_window_everything_is_enosys() {
    let s = share_with(|_| {});
    let vmm = Vmm::default();
    let (ino, _) = file(&s, "f");
    assert!(s.fs.dax_state().is_none());
    assert_eq!(setup(&s, &vmm, ino, NO_HANDLE, 0, 0, R), libc::ENOSYS);
    assert_eq!(errno(remove(&s, &vmm, &[(0, MIB2)])), libc::ENOSYS);
    assert!(vmm.maps().is_empty() && vmm.unmaps().is_empty());
    assert_eq!(
        s.lookup_root("f").expect("lookup").attr_flags & attr::DAX,
        0
    );
}

#[test]
fn linux_style_mapping_opens_the_inode_and_outlives_release() {
    let s = dax_share(|_| {});
    let vmm = Vmm::default();
    let (ino, host_ino) = file(&s, "f");
    let h = s.open(ino, libc::O_RDONLY).expect("open");
    assert_eq!(setup(&s, &vmm, ino, NO_HANDLE, MIB2, 4 * MIB2, R), 0);
    assert_eq!(setup(&s, &vmm, ino, NO_HANDLE, 0, 0, R | W), 0);
    assert_eq!(
        vmm.maps(),
        [
            MapCall {
                moffset: 4 * MIB2,
                len: MIB2,
                foffset: MIB2,
                writable: false,
                ino: host_ino,
                accmode: libc::O_RDONLY,
            },
            MapCall {
                moffset: 0,
                len: MIB2,
                foffset: 0,
                writable: true,
                ino: host_ino,
                accmode: libc::O_RDWR,
            },
        ]
    );
    let dax = s.fs.dax_state().expect("dax state");
    let m = dax.lookup(4 * MIB2 + 5).expect("live mapping");
    assert_eq!(
        (m.inode, m.handle, m.foffset, m.writable),
        (ino, None, MIB2, false)
    );
    // RELEASE leaves the inode's mappings alone; the daemon kept no descriptor of its own.
    s.fs.release(ctx(), ino, 0, h, false).expect("release");
    assert_eq!(dax.len(), 2);
    assert!(vmm.unmaps().is_empty());
    assert_eq!(s.fs.handle_count(), 0);
    // A batch removes both.
    remove(&s, &vmm, &[(0, MIB2), (4 * MIB2, MIB2)]).expect("removemapping");
    assert_eq!(vmm.unmaps(), [(0, MIB2), (4 * MIB2, MIB2)]);
    assert!(dax.is_empty());
}

#[test]
fn handles_are_checked() {
    let s = dax_share(|_| {});
    let vmm = Vmm::default();
    let (ino, _) = file(&s, "f");
    let (other, _) = file(&s, "g");
    let ro = s.open(ino, libc::O_RDONLY).expect("open ro");
    let rw = s.open(ino, libc::O_RDWR).expect("open rw");
    let wo = s.open(ino, libc::O_WRONLY).expect("open wo");
    assert_eq!(setup(&s, &vmm, ino, ro, 0, 0, R | W), libc::EACCES);
    assert_eq!(setup(&s, &vmm, ino, wo, 0, 0, R), libc::EACCES);
    assert_eq!(setup(&s, &vmm, ino, rw + 100, 0, 0, R), libc::EBADF);
    assert_eq!(setup(&s, &vmm, other, rw, 0, 0, R), libc::EBADF);
    assert!(vmm.maps().is_empty());
    assert_eq!(setup(&s, &vmm, ino, ro, 0, 0, R), 0);
    assert_eq!(setup(&s, &vmm, ino, rw, 0, MIB2, R | W), 0);
    let dax = s.fs.dax_state().expect("dax state");
    assert_eq!(dax.lookup(0).expect("ro mapping").handle, Some(ro));
    assert!(dax.lookup(MIB2).expect("rw mapping").writable);
    assert_eq!(vmm.maps()[1].accmode, libc::O_RDWR);
}

#[test]
fn bad_requests_open_and_map_nothing() {
    let s = dax_share(|_| {});
    let vmm = Vmm::default();
    let (ino, _) = file(&s, "f");
    let dir =
        s.fs.mkdir(ctx(), ROOT_ID, &super::super::tests::cs("d"), 0o755, 0)
            .expect("mkdir")
            .inode;
    let cases = [
        (setup(&s, &vmm, ino, NO_HANDLE, 0, WINDOW, R), libc::EINVAL),
        (setup(&s, &vmm, ino, NO_HANDLE, 1, 0, R), libc::EINVAL),
        (
            setup(&s, &vmm, ino, NO_HANDLE, 0, 4096 + 1, R),
            libc::EINVAL,
        ),
        (setup(&s, &vmm, ino, NO_HANDLE, 0, 0, R | 4), libc::EINVAL),
        (setup(&s, &vmm, dir, NO_HANDLE, 0, 0, R), libc::ENODEV),
        (setup(&s, &vmm, 999, NO_HANDLE, 0, 0, R), libc::EBADF),
    ];
    for (i, (got, want)) in cases.iter().enumerate() {
        assert_eq!(got, want, "case {i}");
    }
    assert_eq!(
        errno(s.fs.setup_mapping(ctx(), ino, NO_HANDLE, 0, 0, R, 0, &vmm)),
        libc::EINVAL,
        "zero length"
    );
    assert_eq!(
        errno(remove(&s, &vmm, &[(0, MIB2), (1, MIB2)])),
        libc::EINVAL
    );
    assert!(vmm.maps().is_empty() && vmm.unmaps().is_empty());
    assert!(s.fs.dax_state().expect("dax").is_empty());
}

#[test]
fn readonly_share_refuses_writable_mappings() {
    let s = dax_share(|c| c.readonly = true);
    let vmm = Vmm::default();
    let (ino, _) = file(&s, "f");
    assert_eq!(setup(&s, &vmm, ino, NO_HANDLE, 0, 0, R | W), libc::EROFS);
    assert!(vmm.maps().is_empty());
    assert_eq!(setup(&s, &vmm, ino, NO_HANDLE, 0, 0, R), 0);
}

#[test]
fn a_refused_map_leaves_the_table_unchanged() {
    let s = dax_share(|_| {});
    let vmm = Vmm::default();
    let (ino, _) = file(&s, "f");
    assert_eq!(setup(&s, &vmm, ino, NO_HANDLE, 0, 0, R), 0);
    *vmm.fail.lock().expect("fail") = Some(libc::ENOMEM);
    assert_eq!(setup(&s, &vmm, ino, NO_HANDLE, MIB2, 0, R), libc::ENOMEM);
    let dax = s.fs.dax_state().expect("dax");
    assert_eq!(dax.lookup(0).expect("old mapping kept").foffset, 0);
}

#[test]
fn forget_to_zero_and_destroy_unmap_what_is_left() {
    let s = dax_share(|_| {});
    let vmm = Vmm::default();
    let (a, _) = file(&s, "a");
    let (b, _) = file(&s, "b");
    s.lookup_root("a").expect("second lookup of a");
    assert_eq!(setup(&s, &vmm, a, NO_HANDLE, 0, 0, R), 0);
    assert_eq!(setup(&s, &vmm, b, NO_HANDLE, 0, MIB2, R), 0);
    let dax = s.fs.dax_state().expect("dax");
    s.fs.forget(ctx(), a, 1, &vmm);
    assert_eq!(dax.len(), 2, "a is still looked up once");
    assert!(vmm.unmaps().is_empty());
    s.fs.forget(ctx(), a, 1, &vmm);
    assert_eq!(
        dax.snapshot().iter().map(|m| m.inode).collect::<Vec<_>>(),
        [b]
    );
    assert_eq!(
        vmm.unmaps(),
        vec![(0, MIB2)],
        "a's chunk unmapped at its FORGET"
    );
    s.fs.destroy(&vmm);
    assert!(dax.is_empty());
    assert_eq!(
        vmm.unmaps(),
        vec![(0, MIB2), (MIB2, MIB2)],
        "DESTROY unmaps the rest"
    );
    assert_eq!(
        setup(&s, &vmm, b, NO_HANDLE, 0, 0, R),
        libc::EBADF,
        "the session's node ids are gone"
    );
}

#[test]
fn attr_dax_flag_follows_the_policy() {
    for (policy, small, big) in [
        (DaxPolicy::Auto, true, true),
        (DaxPolicy::Always, true, true),
        (DaxPolicy::Never, false, false),
        (DaxPolicy::Size(1 << 20), false, true),
        // tmpfs/ext4 files carry no FS_XFLAG_DAX unless someone set it.
        (DaxPolicy::Xattr, false, false),
    ] {
        let s = dax_share(|c| c.dax_policy = policy);
        std::fs::write(s.dir.join("small"), b"x").expect("small");
        std::fs::write(s.dir.join("big"), vec![0u8; 2 << 20]).expect("big");
        std::fs::create_dir(s.dir.join("dir")).expect("dir");
        let flag = |name: &str| {
            let e = s.lookup_root(name).expect("lookup");
            let a = s.fs.getattr(ctx(), e.inode, None).expect("getattr");
            assert_eq!(e.attr_flags & attr::DAX, a.attr_flags & attr::DAX, "{name}");
            e.attr_flags & attr::DAX != 0
        };
        assert_eq!(flag("small"), small, "{policy:?} small");
        assert_eq!(flag("big"), big, "{policy:?} big");
        assert!(!flag("dir"), "{policy:?} dir");
    }
}

#[test]
fn a_second_init_forgets_the_old_kernels_mappings() {
    let s = dax_share(|_| {});
    let vmm = Vmm::default();
    let (a, _) = file(&s, "a");
    assert_eq!(setup(&s, &vmm, a, NO_HANDLE, 0, 0, R), 0);
    let dax = s.fs.dax_state().expect("dax");
    assert_eq!(dax.len(), 1);
    s.fs.init(u64::MAX, &vmm).expect("second init");
    assert!(dax.is_empty());
    assert_eq!(s.fs.inode_count(), 1);
    // The old kernel's chunk is unmapped, then the frontend is probed at the last chunk.
    assert_eq!(
        vmm.unmaps(),
        vec![(0, MIB2), (WINDOW - MIB2, MIB2)],
        "unmapped, then the probe"
    );
    assert_eq!(vmm.maps().last().expect("probe").moffset, WINDOW - MIB2);
    assert_eq!(dax.frontend(), FrontendMapping::Any);
}

/// A share whose frontend maps only ranges inside files through writable descriptors
/// (QEMU 11.1), as the INIT probe would have found.
fn qemu_like_share(f: impl FnOnce(&mut crate::passthrough::PassthroughConfig)) -> Share {
    let s = dax_share(f);
    let vmm = Vmm::default();
    *vmm.fail.lock().expect("fail") = Some(libc::EPERM);
    s.fs.init(u64::MAX, &vmm)
        .expect("init with a refusing frontend");
    let dax = s.fs.dax_state().expect("dax");
    assert_eq!(dax.frontend(), FrontendMapping::InsideFileWritable);
    s
}

fn caller(uid: u32) -> Context {
    Context {
        uid,
        gid: uid,
        pid: 1,
    }
}

#[test]
fn a_frontend_that_maps_inside_files_gets_writable_descriptors_for_reads() {
    let s = qemu_like_share(|_| {});
    let vmm = Vmm::default();
    let (ino, host_ino) = file(&s, "big");
    assert_eq!(setup(&s, &vmm, ino, NO_HANDLE, MIB2, 0, R), 0);
    assert_eq!(
        vmm.maps(),
        vec![MapCall {
            moffset: 0,
            len: MIB2,
            foffset: MIB2,
            writable: false,
            ino: host_ino,
            accmode: libc::O_RDWR,
        }]
    );
    // The guest's upgrade of the same range to writable needs nothing from the frontend.
    assert_eq!(setup(&s, &vmm, ino, NO_HANDLE, MIB2, 0, R | W), 0);
    assert_eq!(vmm.maps().len(), 1);
    assert!(
        s.fs.dax_state()
            .expect("dax")
            .lookup(0)
            .expect("live")
            .writable
    );
}

#[test]
fn a_frontend_that_maps_inside_files_is_never_asked_for_what_it_cannot_map() {
    let s = qemu_like_share(|_| {});
    let vmm = Vmm::default();
    let small = s.dir.join("small");
    std::fs::write(&small, b"seventeen bytes!\n").expect("small");
    let e = s.lookup_root("small").expect("lookup");
    assert_eq!(
        setup(&s, &vmm, e.inode, NO_HANDLE, 0, 0, R),
        libc::EOPNOTSUPP,
        "reaches past the end"
    );
    std::fs::write(s.dir.join("empty"), b"").expect("empty");
    let e = s.lookup_root("empty").expect("lookup");
    assert_eq!(
        setup(&s, &vmm, e.inode, NO_HANDLE, 0, 0, R),
        libc::EOPNOTSUPP
    );
    let (big, _) = file(&s, "big");
    assert_eq!(
        setup(&s, &vmm, big, NO_HANDLE, 4 << 20, 0, R),
        libc::EOPNOTSUPP,
        "the chunk after the end"
    );
    // A caller who may not write the file gets no writable descriptor, so no mapping.
    std::fs::set_permissions(
        s.dir.join("big"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let r =
        s.fs.setup_mapping(caller(4242), big, NO_HANDLE, 0, MIB2, R, 0, &vmm);
    assert_eq!(errno(r), libc::EOPNOTSUPP);
    assert!(vmm.maps().is_empty(), "the frontend was asked nothing");
    let dax = s.fs.dax_state().expect("dax");
    assert!(dax.is_empty());
    assert_eq!(dax.stats().setups_refused, 4);
    // The owner may write it: mapped through a read-write descriptor.
    let owner = std::fs::metadata(s.dir.join("big")).expect("stat");
    let r =
        s.fs.setup_mapping(caller(owner.uid()), big, NO_HANDLE, 0, MIB2, R, 0, &vmm);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(vmm.maps()[0].accmode, libc::O_RDWR);
}

#[test]
fn a_read_only_share_maps_nothing_through_a_frontend_that_needs_writable_descriptors() {
    let s = qemu_like_share(|c| c.readonly = true);
    let vmm = Vmm::default();
    let p = s.dir.join("big");
    std::fs::write(&p, vec![1u8; 4 << 20]).expect("big");
    let e = s.lookup_root("big").expect("lookup");
    assert_eq!(
        setup(&s, &vmm, e.inode, NO_HANDLE, 0, 0, R),
        libc::EOPNOTSUPP
    );
    assert!(vmm.maps().is_empty());
    assert_eq!(e.attr_flags & attr::DAX, 0, "not marked either");
}

#[test]
fn attr_dax_flag_with_a_frontend_that_maps_inside_files() {
    for (policy, small, whole, odd) in [
        (DaxPolicy::Auto, false, false, false),
        (DaxPolicy::Always, false, true, false),
        (DaxPolicy::Size(1 << 20), false, true, false),
        (DaxPolicy::Never, false, false, false),
    ] {
        let s = qemu_like_share(|c| c.dax_policy = policy);
        std::fs::write(s.dir.join("small"), b"x").expect("small");
        std::fs::write(s.dir.join("whole"), vec![0u8; 4 << 20]).expect("whole");
        std::fs::write(s.dir.join("odd"), vec![0u8; (4 << 20) + 4096]).expect("odd");
        let flag = |name: &str| {
            let e = s.lookup_root(name).expect("lookup");
            e.attr_flags & attr::DAX != 0
        };
        assert_eq!(flag("small"), small, "{policy:?} small");
        assert_eq!(flag("whole"), whole, "{policy:?} whole");
        assert_eq!(flag("odd"), odd, "{policy:?} odd");
        // A caller who may not write the file is not promised DAX for it.
        std::fs::set_permissions(
            s.dir.join("whole"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .expect("chmod");
        let e =
            s.fs.lookup(caller(4242), ROOT_ID, c"whole")
                .expect("lookup as another user");
        assert_eq!(
            e.attr_flags & attr::DAX,
            0,
            "{policy:?} whole, read-only caller"
        );
    }
}
