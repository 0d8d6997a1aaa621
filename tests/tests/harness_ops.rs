//! In-process vhost-user frontend harness: every FUSE opcode a Linux virtio-fs guest sends,
//! from the host-side driver to the real daemon over a real socket, with replies checked
//! against the host filesystem. Set `VFSDAX_DAEMON=/path/to/virtiofsd` to run against the
//! reference peer instead of `vfsdaxd`.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use vfsdax_driver::ops::DEFAULT_INIT_FLAGS;
use vfsdax_driver::{ClientOptions, XattrReply};
use vfsdax_protocol::fuse::flags::init;
use vfsdax_protocol::fuse::flags::{fattr, RENAME_EXCHANGE, RENAME_NOREPLACE};
use vfsdax_protocol::fuse::KERNEL_MINOR_VERSION;
use vfsdax_protocol::fuse::{
    CopyFileRangeIn, ForgetOne, RemoveMappingOne, SetattrIn, SetupMappingIn, ROOT_ID,
};
use vfsdax_tests::harness::{expect_errno, pattern, peer_is_virtiofsd, DaemonOptions, Session};

const S_IFMT: u32 = libc::S_IFMT;

#[test]
fn init_negotiates_a_7_31_plus_session_and_root_matches_the_share() {
    let mut s = Session::start();
    let init = *s.client.init_out().expect("INIT reply stored");
    assert_eq!(init.major, 7);
    assert!(init.minor >= 31, "minor {}", init.minor);
    assert!(init.max_write >= 4096, "max_write {}", init.max_write);
    let root = std::fs::metadata(s.daemon.share()).unwrap();
    let a = s.client.getattr(ROOT_ID, None).unwrap().attr;
    assert_eq!(a.ino, root.ino());
    assert_eq!(a.mode, root.mode());
    assert_eq!(a.mode & S_IFMT, libc::S_IFDIR);
    assert_eq!(u64::from(a.nlink), root.nlink());
    let f = s.client.frontend();
    assert!(
        f.event_idx() && f.indirect(),
        "features {:#x}",
        f.features()
    );
}

#[test]
fn lookup_getattr_forget_and_batch_forget() {
    let mut s = Session::start();
    std::fs::write(s.host("a.txt"), b"hello world").unwrap();
    std::fs::create_dir(s.host("d")).unwrap();
    let meta = std::fs::metadata(s.host("a.txt")).unwrap();
    let e = s.client.lookup(ROOT_ID, b"a.txt").unwrap();
    assert_ne!(e.nodeid, 0);
    assert_eq!(e.attr.ino, meta.ino());
    assert_eq!(e.attr.size, 11);
    assert_eq!(e.attr.mode, meta.mode());
    let again = s.client.lookup(ROOT_ID, b"a.txt").unwrap();
    assert_eq!(again.nodeid, e.nodeid, "same inode, same node id");
    let a = s.client.getattr(e.nodeid, None).unwrap();
    assert_eq!(
        (a.attr.ino, a.attr.size, a.attr.uid),
        (meta.ino(), 11, meta.uid())
    );
    assert_eq!(
        expect_errno(s.client.lookup(ROOT_ID, b"missing")),
        libc::ENOENT
    );
    let d = s.client.lookup(ROOT_ID, b"d").unwrap();
    assert_eq!(expect_errno(s.client.lookup(e.nodeid, b"x")), libc::ENOTDIR);
    s.client.forget(e.nodeid, 1).unwrap();
    // One reference is left: the node still works.
    assert_eq!(
        s.client.getattr(e.nodeid, None).unwrap().attr.ino,
        meta.ino()
    );
    s.client
        .batch_forget(&[
            ForgetOne {
                nodeid: e.nodeid,
                nlookup: 1,
            },
            ForgetOne {
                nodeid: d.nodeid,
                nlookup: 1,
            },
        ])
        .unwrap();
    s.assert_serving();
    // After forgetting, a new lookup still works.
    assert_eq!(
        s.client.lookup(ROOT_ID, b"a.txt").unwrap().attr.ino,
        meta.ino()
    );
}

#[test]
fn create_write_read_flush_fsync_release() {
    let mut s = Session::start();
    let (e, o) = s
        .client
        .create(ROOT_ID, b"new.bin", libc::O_RDWR as u32, 0o640, 0)
        .unwrap();
    let meta = std::fs::metadata(s.host("new.bin")).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(e.attr.ino, meta.ino());
    let data = pattern(300_000, 7);
    let w = s.client.write(e.nodeid, o.fh, 0, &data).unwrap();
    assert_eq!(w.size as usize, data.len());
    let w2 = s.client.write(e.nodeid, o.fh, 400_000, b"tail").unwrap();
    assert_eq!(w2.size, 4);
    let host = std::fs::read(s.host("new.bin")).unwrap();
    assert_eq!(host.len(), 400_004);
    assert_eq!(&host[..data.len()], &data[..]);
    assert!(
        host[data.len()..400_000].iter().all(|&b| b == 0),
        "hole reads as zeros"
    );
    assert_eq!(&host[400_000..], b"tail");
    let back = s.client.read(e.nodeid, o.fh, 1000, 200_000).unwrap();
    assert_eq!(back, &data[1000..201_000]);
    let eof = s.client.read(e.nodeid, o.fh, 399_990, 4096).unwrap();
    assert_eq!(eof.len(), 14, "short read at EOF");
    assert!(s
        .client
        .read(e.nodeid, o.fh, 500_000, 4096)
        .unwrap()
        .is_empty());
    s.client.flush(e.nodeid, o.fh, 0).unwrap();
    s.client.fsync(e.nodeid, o.fh, false).unwrap();
    s.client.fsync(e.nodeid, o.fh, true).unwrap();
    let a = s.client.getattr(e.nodeid, Some(o.fh)).unwrap();
    assert_eq!(a.attr.size, 400_004);
    s.client
        .release(e.nodeid, o.fh, libc::O_RDWR as u32)
        .unwrap();
    // OPEN of an existing file, read-only: writes fail.
    std::fs::write(s.host("ro.txt"), b"abc").unwrap();
    let r = s.client.lookup(ROOT_ID, b"ro.txt").unwrap();
    let ro = s.client.open(r.nodeid, libc::O_RDONLY as u32).unwrap();
    assert_eq!(s.client.read(r.nodeid, ro.fh, 0, 10).unwrap(), b"abc");
    assert_eq!(
        expect_errno(s.client.write(r.nodeid, ro.fh, 0, b"x")),
        libc::EBADF
    );
    s.client.release(r.nodeid, ro.fh, 0).unwrap();
    // O_TRUNC through OPEN.
    let t = s
        .client
        .open(r.nodeid, (libc::O_WRONLY | libc::O_TRUNC) as u32)
        .unwrap();
    assert_eq!(std::fs::metadata(s.host("ro.txt")).unwrap().len(), 0);
    s.client.release(r.nodeid, t.fh, 0).unwrap();
    // CREATE of an existing name with O_EXCL.
    let excl = (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32;
    assert_eq!(
        expect_errno(s.client.create(ROOT_ID, b"ro.txt", excl, 0o600, 0)),
        libc::EEXIST
    );
}

#[test]
fn setattr_truncates_chmods_and_sets_times() {
    let mut s = Session::start();
    std::fs::write(s.host("f"), pattern(10_000, 1)).unwrap();
    let e = s.client.lookup(ROOT_ID, b"f").unwrap();
    let size = SetattrIn {
        valid: fattr::SIZE,
        size: 100,
        ..Default::default()
    };
    assert_eq!(s.client.setattr(e.nodeid, &size).unwrap().attr.size, 100);
    assert_eq!(std::fs::metadata(s.host("f")).unwrap().len(), 100);
    let grow = SetattrIn {
        valid: fattr::SIZE,
        size: 5000,
        ..Default::default()
    };
    s.client.setattr(e.nodeid, &grow).unwrap();
    let host = std::fs::read(s.host("f")).unwrap();
    assert_eq!(host.len(), 5000);
    assert!(host[100..].iter().all(|&b| b == 0), "growth is zero-filled");
    let chmod = SetattrIn {
        valid: fattr::MODE,
        mode: 0o751,
        ..Default::default()
    };
    let a = s.client.setattr(e.nodeid, &chmod).unwrap();
    assert_eq!(a.attr.mode & 0o7777, 0o751);
    assert_eq!(
        std::fs::metadata(s.host("f")).unwrap().mode() & 0o7777,
        0o751
    );
    let times = SetattrIn {
        valid: fattr::ATIME | fattr::MTIME,
        atime: 1_000_000_000,
        atimensec: 5,
        mtime: 1_200_000_000,
        mtimensec: 7,
        ..Default::default()
    };
    let a = s.client.setattr(e.nodeid, &times).unwrap();
    assert_eq!((a.attr.atime, a.attr.mtime), (1_000_000_000, 1_200_000_000));
    let m = std::fs::metadata(s.host("f")).unwrap();
    assert_eq!(
        (m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec()),
        (1_000_000_000, 5, 1_200_000_000, 7)
    );
    let now = SetattrIn {
        valid: fattr::ATIME | fattr::MTIME | fattr::ATIME_NOW | fattr::MTIME_NOW,
        ..Default::default()
    };
    s.client.setattr(e.nodeid, &now).unwrap();
    let m = std::fs::metadata(s.host("f")).unwrap();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (m.mtime() - wall).abs() < 60 && (m.atime() - wall).abs() < 60,
        "NOW sets the current time"
    );
    // Owner change to the current ids is allowed for anyone.
    let own = SetattrIn {
        valid: fattr::UID | fattr::GID,
        uid: m.uid(),
        gid: m.gid(),
        ..Default::default()
    };
    let a = s.client.setattr(e.nodeid, &own).unwrap();
    assert_eq!((a.attr.uid, a.attr.gid), (m.uid(), m.gid()));
}

/// SETATTR with `FATTR_KILL_SUIDGID` (sent by Linux guests once `HANDLE_KILLPRIV_V2` is
/// negotiated, which a Linux 6.x guest always asks for and the daemon offers with
/// `--killpriv-v2`, off by default as in virtiofsd).
#[test]
fn setattr_kill_suidgid_with_killpriv_v2() {
    let mut s = Session::start_with(
        &DaemonOptions {
            extra_args: vec!["--killpriv-v2".into()],
            ..Default::default()
        },
        ClientOptions::default(),
    );
    let out = s
        .client
        .init_with(
            7,
            KERNEL_MINOR_VERSION,
            DEFAULT_INIT_FLAGS | init::HANDLE_KILLPRIV_V2,
        )
        .unwrap();
    let negotiated =
        (u64::from(out.flags) | (u64::from(out.flags2) << 32)) & init::HANDLE_KILLPRIV_V2 != 0;
    if !negotiated && peer_is_virtiofsd() {
        println!(
            "virtiofsd without --killpriv-v2 does not negotiate HANDLE_KILLPRIV_V2; not exercised"
        );
        return;
    }
    assert!(negotiated, "the daemon must negotiate HANDLE_KILLPRIV_V2");
    std::fs::write(s.host("f"), b"0123456789").unwrap();
    std::fs::set_permissions(s.host("f"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    let e = s.client.lookup(ROOT_ID, b"f").unwrap();
    let kill = SetattrIn {
        valid: fattr::SIZE | fattr::KILL_SUIDGID,
        size: 4,
        ..Default::default()
    };
    let a = s.client.setattr(e.nodeid, &kill).unwrap();
    assert_eq!(a.attr.size, 4);
    let m = std::fs::metadata(s.host("f")).unwrap();
    assert_eq!(m.len(), 4);
    assert_eq!(m.mode() & 0o7777, 0o755, "suid killed, the rest kept");
}

#[test]
fn symlink_readlink_mknod_mkdir_unlink_rmdir() {
    let mut s = Session::start();
    let l = s.client.symlink(ROOT_ID, b"lnk", b"some/where").unwrap();
    assert_eq!(l.attr.mode & S_IFMT, libc::S_IFLNK);
    assert_eq!(
        std::fs::read_link(s.host("lnk"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"some/where"
    );
    assert_eq!(s.client.readlink(l.nodeid).unwrap(), b"some/where");
    let f = s
        .client
        .mknod(ROOT_ID, b"fifo", libc::S_IFIFO | 0o600, 0, 0)
        .unwrap();
    assert_eq!(f.attr.mode & S_IFMT, libc::S_IFIFO);
    assert!(std::fs::metadata(s.host("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let r = s
        .client
        .mknod(ROOT_ID, b"reg", libc::S_IFREG | 0o604, 0, 0)
        .unwrap();
    assert_eq!(r.attr.mode & 0o7777, 0o604);
    assert_eq!(
        std::fs::metadata(s.host("reg")).unwrap().mode() & 0o7777,
        0o604
    );
    assert!(std::fs::metadata(s.host("reg")).unwrap().is_file());
    // Without DONT_MASK the guest kernel applies its umask before sending the mode.
    let d = s.client.mkdir(ROOT_ID, b"dir", 0o750, 0).unwrap();
    assert_eq!(d.attr.mode & S_IFMT, libc::S_IFDIR);
    assert_eq!(
        std::fs::metadata(s.host("dir")).unwrap().mode() & 0o777,
        0o750
    );
    assert_eq!(
        expect_errno(s.client.mkdir(ROOT_ID, b"dir", 0o755, 0)),
        libc::EEXIST
    );
    let inner = s.client.mkdir(d.nodeid, b"inner", 0o755, 0).unwrap();
    assert!(s.host("dir/inner").is_dir());
    assert_eq!(
        expect_errno(s.client.rmdir(ROOT_ID, b"dir")),
        libc::ENOTEMPTY
    );
    assert_eq!(expect_errno(s.client.unlink(ROOT_ID, b"dir")), libc::EISDIR);
    assert_eq!(expect_errno(s.client.rmdir(ROOT_ID, b"reg")), libc::ENOTDIR);
    s.client.rmdir(d.nodeid, b"inner").unwrap();
    s.client.forget(inner.nodeid, 1).unwrap();
    s.client.rmdir(ROOT_ID, b"dir").unwrap();
    assert!(!s.host("dir").exists());
    for name in ["lnk", "fifo", "reg"] {
        s.client.unlink(ROOT_ID, name.as_bytes()).unwrap();
        assert!(
            std::fs::symlink_metadata(s.host(name)).is_err(),
            "{name} removed"
        );
    }
    assert_eq!(expect_errno(s.client.unlink(ROOT_ID, b"reg")), libc::ENOENT);
    assert_eq!(expect_errno(s.client.readlink(ROOT_ID)), libc::EINVAL);
}

#[test]
fn rename_rename2_and_link() {
    let mut s = Session::start();
    std::fs::write(s.host("a"), b"A").unwrap();
    std::fs::write(s.host("b"), b"B").unwrap();
    std::fs::create_dir(s.host("sub")).unwrap();
    let sub = s.client.lookup(ROOT_ID, b"sub").unwrap();
    s.client.rename(ROOT_ID, b"a", sub.nodeid, b"a2").unwrap();
    assert!(!s.host("a").exists());
    assert_eq!(std::fs::read(s.host("sub/a2")).unwrap(), b"A");
    // Plain rename replaces.
    s.client.rename(sub.nodeid, b"a2", ROOT_ID, b"b").unwrap();
    assert_eq!(std::fs::read(s.host("b")).unwrap(), b"A");
    std::fs::write(s.host("c"), b"C").unwrap();
    assert_eq!(
        expect_errno(
            s.client
                .rename2(ROOT_ID, b"c", ROOT_ID, b"b", RENAME_NOREPLACE)
        ),
        libc::EEXIST
    );
    s.client
        .rename2(ROOT_ID, b"c", ROOT_ID, b"d", RENAME_NOREPLACE)
        .unwrap();
    assert_eq!(std::fs::read(s.host("d")).unwrap(), b"C");
    s.client
        .rename2(ROOT_ID, b"d", ROOT_ID, b"b", RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(std::fs::read(s.host("b")).unwrap(), b"C");
    assert_eq!(std::fs::read(s.host("d")).unwrap(), b"A");
    // A directory renames too.
    s.client.rename(ROOT_ID, b"sub", ROOT_ID, b"sub2").unwrap();
    assert!(s.host("sub2").is_dir() && !s.host("sub").exists());
    assert_eq!(
        expect_errno(s.client.rename(ROOT_ID, b"nope", ROOT_ID, b"x")),
        libc::ENOENT
    );
    let b = s.client.lookup(ROOT_ID, b"b").unwrap();
    let l = s.client.link(b.nodeid, ROOT_ID, b"b-link").unwrap();
    assert_eq!(l.attr.ino, b.attr.ino);
    assert_eq!(l.attr.nlink, 2);
    assert_eq!(std::fs::metadata(s.host("b")).unwrap().nlink(), 2);
    assert_eq!(std::fs::read(s.host("b-link")).unwrap(), b"C");
    assert_eq!(
        expect_errno(s.client.link(b.nodeid, ROOT_ID, b"d")),
        libc::EEXIST
    );
}

#[test]
fn statfs_access_and_syncfs() {
    let mut s = Session::start();
    let st = s.client.statfs(ROOT_ID).unwrap().st;
    // SAFETY: `vfs` is a valid out-pointer and the path a NUL-terminated string for the call.
    let host = unsafe {
        let mut vfs: libc::statvfs = std::mem::zeroed();
        let p = std::ffi::CString::new(s.daemon.share().as_os_str().as_bytes()).unwrap();
        assert_eq!(libc::statvfs(p.as_ptr(), &mut vfs), 0);
        vfs
    };
    assert_eq!(st.blocks, host.f_blocks);
    assert_eq!(u64::from(st.bsize), host.f_bsize);
    assert_eq!(u64::from(st.namelen), host.f_namemax);
    assert_eq!(st.files, host.f_files);
    std::fs::write(s.host("plain"), b"x").unwrap();
    std::fs::set_permissions(s.host("plain"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = s.client.lookup(ROOT_ID, b"plain").unwrap();
    s.client.access(e.nodeid, libc::F_OK as u32).unwrap();
    s.client.access(e.nodeid, libc::R_OK as u32).unwrap();
    assert_eq!(
        expect_errno(s.client.access(e.nodeid, libc::X_OK as u32)),
        libc::EACCES
    );
    s.client.syncfs(ROOT_ID).unwrap();
}

#[test]
fn opendir_readdir_readdirplus_releasedir_fsyncdir() {
    let mut s = Session::start();
    let mut want: BTreeSet<Vec<u8>> = BTreeSet::new();
    for i in 0..300 {
        let name = format!("entry-{i:04}-{}", "x".repeat(i % 17));
        std::fs::write(s.host(&name), b"").unwrap();
        want.insert(name.into_bytes());
    }
    std::fs::create_dir(s.host("zdir")).unwrap();
    want.insert(b"zdir".to_vec());
    let o = s.client.opendir(ROOT_ID, libc::O_RDONLY as u32).unwrap();
    let mut got = BTreeSet::new();
    let mut off = 0;
    let mut batches = 0;
    loop {
        let v = s.client.readdir(ROOT_ID, o.fh, off, 4096).unwrap();
        if v.is_empty() {
            break;
        }
        batches += 1;
        for e in v {
            off = e.off;
            if e.name != b"." && e.name != b".." {
                let meta = std::fs::symlink_metadata(s.host(std::str::from_utf8(&e.name).unwrap()))
                    .unwrap();
                assert_eq!(e.ino, meta.ino());
                let dt = if meta.is_dir() {
                    libc::DT_DIR
                } else {
                    libc::DT_REG
                };
                assert_eq!(e.typ, u32::from(dt));
                assert!(got.insert(e.name), "no duplicates across batches");
            }
        }
    }
    assert!(batches > 1, "300 names need more than one 4 KiB buffer");
    assert_eq!(got, want);
    s.client.fsyncdir(ROOT_ID, o.fh, false).unwrap();
    s.client.releasedir(ROOT_ID, o.fh).unwrap();

    let o = s.client.opendir(ROOT_ID, libc::O_RDONLY as u32).unwrap();
    let mut got = BTreeSet::new();
    let mut off = 0;
    let mut forgets = Vec::new();
    loop {
        let v = s.client.readdirplus(ROOT_ID, o.fh, off, 8192).unwrap();
        if v.is_empty() {
            break;
        }
        for e in v {
            off = e.dirent.off;
            if e.dirent.name == b"." || e.dirent.name == b".." {
                continue;
            }
            let meta =
                std::fs::symlink_metadata(s.host(std::str::from_utf8(&e.dirent.name).unwrap()))
                    .unwrap();
            assert_ne!(e.entry.nodeid, 0, "READDIRPLUS looks entries up");
            assert_eq!(e.entry.attr.ino, meta.ino());
            assert_eq!(e.entry.attr.mode, meta.mode());
            forgets.push(ForgetOne {
                nodeid: e.entry.nodeid,
                nlookup: 1,
            });
            got.insert(e.dirent.name);
        }
    }
    assert_eq!(got, want);
    s.client.batch_forget(&forgets).unwrap();
    s.client.releasedir(ROOT_ID, o.fh).unwrap();
    let errno = expect_errno(s.client.opendir(ROOT_ID + 999_999, 0));
    assert!(
        errno == libc::EBADF || errno == libc::ENOENT,
        "unknown node id: errno {errno}"
    );
}

#[test]
fn fallocate_lseek_and_copy_file_range() {
    let mut s = Session::start();
    let rw = libc::O_RDWR as u32;
    let (e, o) = s.client.create(ROOT_ID, b"sparse", rw, 0o644, 0).unwrap();
    s.client.fallocate(e.nodeid, o.fh, 0, 1 << 20, 0).unwrap();
    let m = std::fs::metadata(s.host("sparse")).unwrap();
    assert_eq!(m.len(), 1 << 20);
    assert!(m.blocks() * 512 >= 1 << 20, "space allocated");
    s.client
        .fallocate(
            e.nodeid,
            o.fh,
            4096,
            8192,
            (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32,
        )
        .unwrap();
    assert_eq!(std::fs::metadata(s.host("sparse")).unwrap().len(), 1 << 20);
    let (f, fo) = s.client.create(ROOT_ID, b"holey", rw, 0o644, 0).unwrap();
    s.client.write(f.nodeid, fo.fh, 1 << 20, b"data").unwrap();
    let data = s
        .client
        .lseek(f.nodeid, fo.fh, 0, libc::SEEK_DATA as u32)
        .unwrap();
    assert_eq!(data.offset, 1 << 20, "first data after the hole");
    let hole = s
        .client
        .lseek(f.nodeid, fo.fh, 0, libc::SEEK_HOLE as u32)
        .unwrap();
    assert_eq!(hole.offset, 0);
    assert_eq!(
        expect_errno(
            s.client
                .lseek(f.nodeid, fo.fh, (1 << 20) + 10, libc::SEEK_DATA as u32)
        ),
        libc::ENXIO
    );
    let src = pattern(10_000, 3);
    let (a, ao) = s.client.create(ROOT_ID, b"src", rw, 0o644, 0).unwrap();
    s.client.write(a.nodeid, ao.fh, 0, &src).unwrap();
    let (b, bo) = s.client.create(ROOT_ID, b"dst", rw, 0o644, 0).unwrap();
    let arg = CopyFileRangeIn {
        fh_in: ao.fh,
        off_in: 100,
        nodeid_out: b.nodeid,
        fh_out: bo.fh,
        off_out: 50,
        len: 5000,
        flags: 0,
    };
    let w = s.client.copy_file_range(a.nodeid, &arg).unwrap();
    assert_eq!(w.size, 5000);
    let dst = std::fs::read(s.host("dst")).unwrap();
    assert_eq!(dst.len(), 5050);
    assert_eq!(&dst[50..], &src[100..5100]);
    for (n, fh) in [
        (e.nodeid, o.fh),
        (f.nodeid, fo.fh),
        (a.nodeid, ao.fh),
        (b.nodeid, bo.fh),
    ] {
        s.client.release(n, fh, rw).unwrap();
    }
}

fn host_getxattr(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: the strings are NUL-terminated and `buf` is writable for its length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

#[test]
fn xattr_family_with_xattr_enabled() {
    let dopts = DaemonOptions {
        xattr: true,
        ..Default::default()
    };
    let mut s = Session::start_with(&dopts, ClientOptions::default());
    std::fs::write(s.host("x"), b"").unwrap();
    let e = s.client.lookup(ROOT_ID, b"x").unwrap();
    s.client
        .setxattr(e.nodeid, b"user.vfsdax", b"value-1", 0)
        .unwrap();
    assert_eq!(
        host_getxattr(&s.host("x"), "user.vfsdax").as_deref(),
        Some(&b"value-1"[..])
    );
    assert_eq!(
        s.client.getxattr(e.nodeid, b"user.vfsdax", 0).unwrap(),
        XattrReply::Size(7)
    );
    assert_eq!(
        s.client.getxattr(e.nodeid, b"user.vfsdax", 64).unwrap(),
        XattrReply::Data(b"value-1".to_vec())
    );
    assert_eq!(
        expect_errno(s.client.getxattr(e.nodeid, b"user.vfsdax", 3)),
        libc::ERANGE
    );
    assert_eq!(
        expect_errno(
            s.client
                .setxattr(e.nodeid, b"user.vfsdax", b"v", libc::XATTR_CREATE as u32)
        ),
        libc::EEXIST
    );
    let XattrReply::Size(n) = s.client.listxattr(e.nodeid, 0).unwrap() else {
        panic!("LISTXATTR size 0 answers a size");
    };
    let XattrReply::Data(list) = s.client.listxattr(e.nodeid, n).unwrap() else {
        panic!("LISTXATTR answers data");
    };
    assert_eq!(list.len(), n as usize);
    assert!(
        list.split(|&b| b == 0).any(|name| name == b"user.vfsdax"),
        "{list:?}"
    );
    s.client.removexattr(e.nodeid, b"user.vfsdax").unwrap();
    assert_eq!(host_getxattr(&s.host("x"), "user.vfsdax"), None);
    assert_eq!(
        expect_errno(s.client.getxattr(e.nodeid, b"user.vfsdax", 64)),
        libc::ENODATA
    );
    assert_eq!(
        expect_errno(s.client.removexattr(e.nodeid, b"user.vfsdax")),
        libc::ENODATA
    );
}

#[test]
fn xattr_requests_fail_without_xattr() {
    let mut s = Session::start();
    std::fs::write(s.host("x"), b"").unwrap();
    let e = s.client.lookup(ROOT_ID, b"x").unwrap();
    let errno = expect_errno(s.client.setxattr(e.nodeid, b"user.a", b"v", 0));
    assert!(
        errno == libc::ENOSYS || errno == libc::EOPNOTSUPP,
        "errno {errno}"
    );
    assert_eq!(
        host_getxattr(&s.host("x"), "user.a"),
        None,
        "nothing set on the host"
    );
    s.assert_serving();
}

#[test]
fn interrupt_and_dax_mapping_without_a_cache_window() {
    let mut s = Session::start();
    let unknown = s.client.peek_unique() + 1000;
    s.client.interrupt(unknown).unwrap();
    s.assert_serving();
    std::fs::write(s.host("m"), vec![1u8; 8192]).unwrap();
    let e = s.client.lookup(ROOT_ID, b"m").unwrap();
    let o = s.client.open(e.nodeid, libc::O_RDWR as u32).unwrap();
    let map = SetupMappingIn {
        fh: o.fh,
        foffset: 0,
        len: 2 << 20,
        flags: 3,
        moffset: 0,
    };
    assert_eq!(
        expect_errno(s.client.setupmapping(e.nodeid, &map)),
        libc::ENOSYS
    );
    let rm = [RemoveMappingOne {
        moffset: 0,
        len: 2 << 20,
    }];
    assert_eq!(
        expect_errno(s.client.removemapping(e.nodeid, &rm)),
        libc::ENOSYS
    );
    s.client.release(e.nodeid, o.fh, 0).unwrap();
    s.assert_serving();
}

#[test]
fn destroy_ends_the_session_and_init_starts_a_new_one() {
    let mut s = Session::start();
    std::fs::write(s.host("keep"), b"k").unwrap();
    s.client.destroy().unwrap();
    let again = s.client.init().unwrap();
    assert_eq!(again.major, 7);
    assert_eq!(s.client.lookup(ROOT_ID, b"keep").unwrap().attr.size, 1);
    s.assert_serving();
}
