//! Attributes, ACCESS, STATFS, SYNCFS, extended attributes, INIT and DESTROY.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use vfsdax_protocol::fuse::flags::{fattr, init};
use vfsdax_protocol::fuse::{SetattrIn, ROOT_ID};

use super::*;
use crate::filesystem::XattrReply;

#[test]
fn getattr_by_inode_and_by_handle() {
    let s = share();
    let (e, h) = s.create("f");
    s.write(e.inode, h, b"12345678", 0).expect("write");
    let a = s.fs.getattr(ctx(), e.inode, None).expect("getattr");
    let b = s.fs.getattr(ctx(), e.inode, Some(h)).expect("getattr fh");
    assert_eq!(a.attr.st_size, 8);
    assert_eq!(b.attr.st_size, 8);
    assert_eq!(a.attr.st_ino, b.attr.st_ino);
    assert_eq!(errno(s.fs.getattr(ctx(), ROOT_ID, Some(h))), libc::EBADF);
    let root = s.fs.getattr(ctx(), ROOT_ID, None).expect("root");
    assert_eq!(
        root.attr.st_ino,
        std::fs::metadata(s.dir.path()).expect("root").ino()
    );
}

#[test]
fn setattr_mode_owner_and_times() {
    let s = share();
    let (e, _) = s.create("f");
    let p = s.dir.join("f");
    let a = SetattrIn {
        valid: fattr::MODE,
        mode: libc::S_IFREG | 0o640,
        ..Default::default()
    };
    let r = s.fs.setattr(ctx(), e.inode, &a, None).expect("chmod");
    assert_eq!(r.attr.st_mode & 0o7777, 0o640);
    assert_eq!(
        std::fs::metadata(&p).expect("f").permissions().mode() & 0o7777,
        0o640
    );

    if crate::passthrough::sys::is_root() {
        let a = SetattrIn {
            valid: fattr::UID | fattr::GID,
            uid: 1234,
            gid: 5678,
            ..Default::default()
        };
        s.fs.setattr(ctx(), e.inode, &a, None).expect("chown");
        let m = std::fs::metadata(&p).expect("f");
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
        let a = SetattrIn {
            valid: fattr::GID,
            gid: 42,
            ..Default::default()
        };
        s.fs.setattr(ctx(), e.inode, &a, None).expect("chgrp");
        let m = std::fs::metadata(&p).expect("f");
        assert_eq!((m.uid(), m.gid()), (1234, 42));
    } else {
        eprintln!("skipped chown part: needs root");
    }

    let a = SetattrIn {
        valid: fattr::ATIME | fattr::MTIME,
        atime: 1_000_000,
        atimensec: 500,
        mtime: 2_000_000,
        mtimensec: 700,
        ..Default::default()
    };
    let r = s.fs.setattr(ctx(), e.inode, &a, None).expect("utimes");
    assert_eq!((r.attr.st_atime, r.attr.st_atime_nsec), (1_000_000, 500));
    assert_eq!((r.attr.st_mtime, r.attr.st_mtime_nsec), (2_000_000, 700));
    let m = std::fs::metadata(&p).expect("f");
    assert_eq!((m.atime(), m.mtime()), (1_000_000, 2_000_000));

    // MTIME_NOW sets now and leaves atime alone.
    let a = SetattrIn {
        valid: fattr::MTIME | fattr::MTIME_NOW,
        ..Default::default()
    };
    let r = s.fs.setattr(ctx(), e.inode, &a, None).expect("touch");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((r.attr.st_mtime - now).abs() < 60);
    assert_eq!(r.attr.st_atime, 1_000_000);
}

#[test]
fn access_checks_the_callers_classes() {
    let s = share();
    let (e, _) = s.create("f");
    std::fs::set_permissions(s.dir.join("f"), std::fs::Permissions::from_mode(0o640))
        .expect("chmod");
    let owner = std::fs::metadata(s.dir.join("f")).expect("f");
    let me = Context {
        uid: owner.uid(),
        gid: owner.gid(),
        pid: 1,
    };
    let other = Context {
        uid: owner.uid() + 1000,
        gid: owner.gid() + 1000,
        pid: 1,
    };
    let (r, w, x) = (libc::R_OK as u32, libc::W_OK as u32, libc::X_OK as u32);
    s.fs.access(me, e.inode, r | w).expect("owner rw");
    s.fs.access(other, e.inode, 0).expect("exists");
    assert_eq!(errno(s.fs.access(other, e.inode, r)), libc::EACCES);
    // Root passes except for execute on a file without any x bit.
    s.fs.access(ctx(), e.inode, r | w).expect("root rw");
    assert_eq!(errno(s.fs.access(ctx(), e.inode, x)), libc::EACCES);
    s.fs.access(ctx(), ROOT_ID, x).expect("root x on dir");
}

#[test]
fn statfs_and_syncfs() {
    let s = share();
    let st = s.fs.statfs(ctx(), ROOT_ID).expect("statfs");
    let mut host = std::mem::MaybeUninit::<libc::statvfs64>::zeroed();
    let p = std::ffi::CString::new(s.dir.path().as_os_str().as_encoded_bytes()).expect("p");
    // SAFETY: `p` is NUL-terminated; `host` is writable memory of the right size.
    assert_eq!(unsafe { libc::statvfs64(p.as_ptr(), host.as_mut_ptr()) }, 0);
    // SAFETY: statvfs64 succeeded.
    let host = unsafe { host.assume_init() };
    assert_eq!(st.f_bsize, host.f_bsize);
    assert_eq!(st.f_blocks, host.f_blocks);
    assert_eq!(st.f_fsid, host.f_fsid);
    s.fs.syncfs(ctx(), ROOT_ID).expect("syncfs");
}

#[test]
fn xattrs_only_when_enabled() {
    let s = share();
    let (e, _) = s.create("f");
    assert_eq!(
        errno(s.fs.getxattr(ctx(), e.inode, &cs("user.a"), 0)),
        libc::ENOSYS
    );
    assert_eq!(errno(s.fs.listxattr(ctx(), e.inode, 0)), libc::ENOSYS);
    assert_eq!(
        errno(s.fs.setxattr(ctx(), e.inode, &cs("user.a"), b"v", 0, 0)),
        libc::ENOSYS
    );
    assert_eq!(
        errno(s.fs.removexattr(ctx(), e.inode, &cs("user.a"))),
        libc::ENOSYS
    );
}

#[test]
fn xattr_family() {
    let s = share_with(|c| c.xattr = true);
    assert_ne!(
        s.fs.init(u64::MAX, &NoMapper).expect("init") & init::SETXATTR_EXT,
        0
    );
    let (e, _) = s.create("f");
    let name = cs("user.vfsdax");
    match s.fs.setxattr(ctx(), e.inode, &name, b"value!", 0, 0) {
        Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            eprintln!("skipped: the temp filesystem has no user xattrs");
            return;
        }
        r => r.expect("setxattr"),
    }
    assert_eq!(
        s.fs.getxattr(ctx(), e.inode, &name, 0).expect("size"),
        XattrReply::Count(6)
    );
    assert_eq!(
        s.fs.getxattr(ctx(), e.inode, &name, 100).expect("value"),
        XattrReply::Value(b"value!".to_vec())
    );
    assert_eq!(errno(s.fs.getxattr(ctx(), e.inode, &name, 3)), libc::ERANGE);
    let XattrReply::Value(list) = s.fs.listxattr(ctx(), e.inode, 4096).expect("list") else {
        panic!("expected a list");
    };
    assert!(list.split(|&b| b == 0).any(|n| n == b"user.vfsdax"));
    let XattrReply::Count(n) = s.fs.listxattr(ctx(), e.inode, 0).expect("list size") else {
        panic!("expected a count");
    };
    assert_eq!(n as usize, list.len());
    // XATTR_CREATE on an existing name.
    assert_eq!(
        errno(s.fs.setxattr(ctx(), e.inode, &name, b"x", libc::XATTR_CREATE as u32, 0)),
        libc::EEXIST
    );
    s.fs.removexattr(ctx(), e.inode, &name).expect("remove");
    assert_eq!(
        errno(s.fs.getxattr(ctx(), e.inode, &name, 0)),
        libc::ENODATA
    );

    let ro = share_with(|c| {
        c.xattr = true;
        c.readonly = true;
    });
    std::fs::write(ro.dir.join("f"), b"").expect("f");
    let f = ro.lookup_root("f").expect("f");
    assert_eq!(
        errno(ro.fs.setxattr(ctx(), f.inode, &name, b"v", 0, 0)),
        libc::EROFS
    );
    assert_eq!(errno(ro.fs.removexattr(ctx(), f.inode, &name)), libc::EROFS);
}

#[test]
fn init_answers_a_subset_of_the_offer() {
    let s = share_with(|c| {
        c.announce_submounts = true;
        c.writeback = true;
        // Off by default (as virtiofsd): asked for with --killpriv-v2.
        c.killpriv_v2 = true;
    });
    let offer = init::ASYNC_READ | init::WRITEBACK_CACHE | init::POSIX_LOCKS | init::DONT_MASK;
    let got = s.fs.init(offer, &NoMapper).expect("init");
    assert_eq!(got, init::ASYNC_READ | init::WRITEBACK_CACHE);
    let all = s.fs.init(u64::MAX, &NoMapper).expect("init");
    for f in [
        init::DO_READDIRPLUS,
        init::READDIRPLUS_AUTO,
        init::PARALLEL_DIROPS,
        init::HANDLE_KILLPRIV_V2,
        init::SUBMOUNTS,
        init::MAX_PAGES,
        init::INIT_EXT,
        init::EXPORT_SUPPORT,
        init::ATOMIC_O_TRUNC,
    ] {
        assert_ne!(all & f, 0, "{f:#x}");
    }
    for f in [
        init::POSIX_LOCKS,
        init::DONT_MASK,
        init::HAS_IOCTL_DIR,
        init::FLOCK_LOCKS,
    ] {
        assert_eq!(all & f, 0, "{f:#x}");
    }
}

#[test]
fn destroy_drops_everything_but_the_root() {
    let s = share();
    let (e, h) = s.create("f");
    s.fs.mkdir(ctx(), ROOT_ID, &cs("d"), 0o755, 0)
        .expect("mkdir");
    assert!(s.fs.inode_count() >= 3);
    s.fs.destroy(&NoMapper);
    assert_eq!(s.fs.inode_count(), 1);
    assert_eq!(s.fs.handle_count(), 0);
    assert_eq!(errno(s.fs.getattr(ctx(), e.inode, None)), libc::EBADF);
    assert_eq!(errno(s.fs.flush(ctx(), e.inode, h, 0)), libc::EBADF);
    // The root still serves.
    assert!(s.lookup_root("f").is_ok());
}

#[test]
fn construction_errors_are_clear() {
    let t = TempDir::new();
    let missing = PassthroughFs::new(PassthroughConfig::new(t.join("nope")));
    let msg = missing.err().expect("missing share").to_string();
    assert!(
        msg.contains("does not exist") && msg.contains("nope"),
        "{msg}"
    );
    std::fs::write(t.join("file"), b"").expect("file");
    let not_dir = PassthroughFs::new(PassthroughConfig::new(t.join("file")));
    let msg = not_dir.err().expect("not a dir").to_string();
    assert!(msg.contains("is not a directory"), "{msg}");
}

#[test]
fn submount_flag_on_a_different_mount() {
    // /proc is always another mount than /: share "/" and look it up.
    let cfg = PassthroughConfig {
        announce_submounts: true,
        readonly: true,
        ..PassthroughConfig::new("/")
    };
    let fs = PassthroughFs::new(cfg).expect("fs");
    let e = fs.lookup(ctx(), ROOT_ID, &cs("proc")).expect("proc");
    assert_eq!(e.attr_flags, 0, "not negotiated yet");
    fs.forget(ctx(), e.inode, 1, &NoMapper);
    fs.init(init::SUBMOUNTS, &NoMapper).expect("init");
    let e = fs.lookup(ctx(), ROOT_ID, &cs("proc")).expect("proc");
    assert_eq!(e.attr_flags, vfsdax_protocol::fuse::flags::attr::SUBMOUNT);
    // A plain subdirectory of a share is no submount.
    let s = share_with(|c| c.announce_submounts = true);
    let d =
        s.fs.mkdir(ctx(), ROOT_ID, &cs("d"), 0o755, 0)
            .expect("mkdir");
    assert_eq!(d.attr_flags, 0);
}

#[test]
fn setxattr_refuses_file_capabilities() {
    use crate::passthrough::ops_xattr::setxattr_refused;
    assert!(setxattr_refused(b"security.capability"));
    for ok in [
        "user.capability",
        "security.selinux",
        "security.capability2",
        "trusted.x",
        "user.virtiofs.security.capability",
    ] {
        assert!(!setxattr_refused(ok.as_bytes()), "{ok}");
    }

    let s = share_with(|c| c.xattr = true);
    let (e, _) = s.create("f");
    // struct vfs_cap_data, revision 2: magic, then permitted/inheritable low and high words.
    // Permitted CAP_SYS_ADMIN (21), effective bit set.
    let mut cap = Vec::new();
    for w in [0x0200_0001u32, 1 << 21, 0, 0, 0] {
        cap.extend_from_slice(&w.to_le_bytes());
    }
    let name = cs("security.capability");
    assert_eq!(
        errno(s.fs.setxattr(ctx(), e.inode, &name, &cap, 0, 0)),
        libc::EPERM
    );
    let path = CString::new(s.dir.join("f").into_os_string().into_encoded_bytes()).expect("path");
    assert_eq!(
        errno(crate::passthrough::sys::getxattr(&path, &name, &mut [])),
        libc::ENODATA
    );
    // Removing one (set on the host) is still allowed.
    if crate::passthrough::sys::setxattr(&path, &name, &cap, 0).is_ok() {
        s.fs.removexattr(ctx(), e.inode, &name)
            .expect("removexattr");
        assert_eq!(
            errno(crate::passthrough::sys::getxattr(&path, &name, &mut [])),
            libc::ENODATA
        );
    }
}

#[test]
fn a_second_init_starts_a_new_session() {
    let s = share();
    let (e, h) = s.create("f");
    let d =
        s.fs.mkdir(ctx(), ROOT_ID, &cs("d"), 0o755, 0)
            .expect("mkdir");
    let (dh, _) = s.fs.opendir(ctx(), d.inode, 0).expect("opendir");
    assert!(dh.is_some());
    s.lookup_root("f").expect("second lookup");
    assert_eq!(s.fs.inode_count(), 3);
    assert_eq!(s.fs.handle_count(), 2);
    // The guest rebooted: INIT again, no DESTROY before it.
    s.fs.init(u64::MAX, &NoMapper).expect("second init");
    assert_eq!(s.fs.inode_count(), 1);
    assert_eq!(s.fs.handle_count(), 0);
    assert_eq!(errno(s.fs.getattr(ctx(), e.inode, None)), libc::EBADF);
    assert_eq!(errno(s.fs.flush(ctx(), e.inode, h, 0)), libc::EBADF);
    // The new session works, and its ids are new ones.
    let f = s.lookup_root("f").expect("lookup");
    assert!(f.inode > d.inode);
    // INIT after DESTROY starts from the same clean state.
    s.fs.destroy(&NoMapper);
    s.fs.init(u64::MAX, &NoMapper).expect("init after destroy");
    assert_eq!(s.fs.inode_count(), 1);
}

#[test]
fn the_default_xattr_policy_keeps_host_attributes_away() {
    let s = share_with(|c| c.xattr = true);
    let (e, _) = s.create("f");
    let path = CString::new(s.dir.join("f").into_os_string().into_encoded_bytes()).expect("path");
    // trusted.* (overlayfs keeps its metadata there): neither read, written nor listed.
    let trusted = cs("trusted.overlay.opaque");
    assert_eq!(
        errno(s.fs.setxattr(ctx(), e.inode, &trusted, b"y", 0, 0)),
        libc::EPERM
    );
    if crate::passthrough::sys::is_root() {
        crate::passthrough::sys::setxattr(&path, &trusted, b"y", 0).expect("host sets trusted.*");
        assert_eq!(
            errno(s.fs.getxattr(ctx(), e.inode, &trusted, 10)),
            libc::ENODATA
        );
        let XattrReply::Value(list) = s.fs.listxattr(ctx(), e.inode, 4096).expect("list") else {
            panic!("expected a list");
        };
        assert!(
            !list.split(|&b| b == 0).any(|n| n.starts_with(b"trusted.")),
            "{list:?}"
        );
        let XattrReply::Count(n) = s.fs.listxattr(ctx(), e.inode, 0).expect("size") else {
            panic!("expected a count");
        };
        assert_eq!(
            n as usize,
            list.len(),
            "the size is that of the filtered list"
        );
        assert_eq!(
            errno(s.fs.removexattr(ctx(), e.inode, &trusted)),
            libc::EPERM
        );
        assert_eq!(
            crate::passthrough::sys::getxattr(&path, &trusted, &mut [0u8; 8]).expect("host"),
            1,
            "still there on the host"
        );
    }
    // security.selinux and friends: unsupported, so the guest uses its policy's default.
    for name in ["security.selinux", "security.ima", "system.nfs4_acl"] {
        assert_eq!(
            errno(s.fs.getxattr(ctx(), e.inode, &cs(name), 10)),
            libc::EOPNOTSUPP,
            "{name}"
        );
        assert_eq!(
            errno(s.fs.setxattr(ctx(), e.inode, &cs(name), b"x", 0, 0)),
            libc::EOPNOTSUPP,
            "{name}"
        );
    }
}

#[test]
fn an_xattr_map_renames_on_the_host() {
    use crate::passthrough::xattrmap::XattrMap;
    let s = share_with(|c| {
        c.xattr = true;
        c.xattr_map = XattrMap::parse(":map::user.virtiofs.:").expect("map");
    });
    let (e, _) = s.create("f");
    let path = CString::new(s.dir.join("f").into_os_string().into_encoded_bytes()).expect("path");
    let name = cs("trusted.overlay.opaque");
    match s.fs.setxattr(ctx(), e.inode, &name, b"y", 0, 0) {
        Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            eprintln!("skipped: the temp filesystem has no user xattrs");
            return;
        }
        r => r.expect("setxattr through the map"),
    }
    let host_name = cs("user.virtiofs.trusted.overlay.opaque");
    assert_eq!(
        crate::passthrough::sys::getxattr(&path, &host_name, &mut [0u8; 8]).expect("host name"),
        1
    );
    assert_eq!(
        s.fs.getxattr(ctx(), e.inode, &name, 10).expect("get"),
        XattrReply::Value(b"y".to_vec())
    );
    let XattrReply::Value(list) = s.fs.listxattr(ctx(), e.inode, 4096).expect("list") else {
        panic!("expected a list");
    };
    assert_eq!(list, b"trusted.overlay.opaque\0".to_vec());
    // The mapped capability is harmless: allowed.
    s.fs.setxattr(
        ctx(),
        e.inode,
        &cs("security.capability"),
        b"\x01\0\0\x02",
        0,
        0,
    )
    .expect("mapped security.capability");
    let mapped_cap = cs("user.virtiofs.security.capability");
    assert!(crate::passthrough::sys::getxattr(&path, &mapped_cap, &mut [0u8; 8]).is_ok());
    // An unprivileged truncation (HANDLE_KILLPRIV_V2) clears it, as the host kernel clears a
    // real security.capability.
    let a = SetattrIn {
        valid: fattr::SIZE | fattr::KILL_SUIDGID,
        size: 0,
        ..Default::default()
    };
    s.fs.setattr(ctx(), e.inode, &a, None).expect("truncate");
    assert_eq!(
        errno(crate::passthrough::sys::getxattr(
            &path,
            &mapped_cap,
            &mut [0u8; 8]
        )),
        libc::ENODATA
    );
    s.fs.setxattr(ctx(), e.inode, &cs("user.x"), b"1", 0, 0)
        .expect("another attribute");
    // A list the guest's buffer cannot hold.
    assert_eq!(errno(s.fs.listxattr(ctx(), e.inode, 5)), libc::ERANGE);
}
