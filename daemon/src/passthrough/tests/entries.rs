//! Name operations and lookup counting.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use vfsdax_protocol::fuse::flags::{RENAME_EXCHANGE, RENAME_NOREPLACE};
use vfsdax_protocol::fuse::ROOT_ID;

use super::*;

#[test]
fn lookup_gives_host_attributes_and_stable_ids() {
    let s = share();
    std::fs::write(s.dir.join("f"), b"12345").expect("write");
    let e = s.lookup_root("f").expect("lookup");
    assert_ne!(e.inode, ROOT_ID);
    assert_eq!(e.attr.st_size, 5);
    assert_eq!(e.attr.st_mode & libc::S_IFMT, libc::S_IFREG);
    let meta = std::fs::metadata(s.dir.join("f")).expect("meta");
    assert_eq!(e.attr.st_ino, meta.ino());
    // Node ids are ours, not host inode numbers; a second lookup returns the same id.
    let again = s.lookup_root("f").expect("lookup");
    assert_eq!(again.inode, e.inode);
    assert_eq!(errno(s.lookup_root("missing")), libc::ENOENT);
}

#[test]
fn forget_drops_after_last_lookup() {
    let s = share();
    std::fs::write(s.dir.join("f"), b"x").expect("write");
    let before = s.fs.inode_count();
    let e = s.lookup_root("f").expect("lookup");
    s.lookup_root("f").expect("lookup");
    s.lookup_root("f").expect("lookup");
    assert_eq!(s.fs.inode_count(), before + 1);
    s.fs.forget(ctx(), e.inode, 2, &NoMapper);
    assert!(s.fs.getattr(ctx(), e.inode, None).is_ok());
    s.fs.batch_forget(ctx(), &[(e.inode, 1)], &NoMapper);
    assert_eq!(errno(s.fs.getattr(ctx(), e.inode, None)), libc::EBADF);
    assert_eq!(s.fs.inode_count(), before);
    // The root is never dropped.
    s.fs.forget(ctx(), ROOT_ID, 1000, &NoMapper);
    assert!(s.fs.getattr(ctx(), ROOT_ID, None).is_ok());
}

#[test]
fn hard_links_share_a_node_id() {
    let s = share();
    let (e, _h) = s.create("a");
    let l = s.fs.link(ctx(), e.inode, ROOT_ID, &cs("b")).expect("link");
    assert_eq!(l.inode, e.inode);
    assert_eq!(l.attr.st_nlink, 2);
    assert_eq!(
        std::fs::metadata(s.dir.join("b")).expect("b").ino(),
        std::fs::metadata(s.dir.join("a")).expect("a").ino()
    );
}

#[test]
fn mkdir_mknod_symlink_create_on_host() {
    let s = share();
    let d =
        s.fs.mkdir(ctx(), ROOT_ID, &cs("d"), 0o755, 0)
            .expect("mkdir");
    assert!(s.dir.join("d").is_dir());
    assert_eq!(d.attr.st_mode & libc::S_IFMT, libc::S_IFDIR);
    let n =
        s.fs.mknod(ctx(), d.inode, &cs("fifo"), libc::S_IFIFO | 0o600, 0, 0)
            .expect("mknod");
    assert_eq!(n.attr.st_mode & libc::S_IFMT, libc::S_IFIFO);
    let ft = std::fs::symlink_metadata(s.dir.join("d/fifo")).expect("fifo");
    assert_eq!(ft.mode() & libc::S_IFMT, libc::S_IFIFO);
    let l =
        s.fs.symlink(ctx(), &cs("some/where"), d.inode, &cs("ln"))
            .expect("symlink");
    assert_eq!(l.attr.st_mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(
        std::fs::read_link(s.dir.join("d/ln")).expect("readlink"),
        std::path::Path::new("some/where")
    );
    assert_eq!(
        errno(s.fs.mkdir(ctx(), ROOT_ID, &cs("d"), 0o755, 0)),
        libc::EEXIST
    );
}

#[test]
fn the_guests_umask_gives_the_mode_exactly() {
    // The daemon runs with umask 0 (as these tests do, see `share_with`): the guest's mode and
    // umask decide alone, with no fix-up after the fact.
    let s = share();
    assert_eq!(s.fs.host_umask, 0);
    let d =
        s.fs.mkdir(ctx(), ROOT_ID, &cs("d"), 0o777, 0o002)
            .expect("mkdir");
    assert_eq!(d.attr.st_mode & 0o777, 0o775);
    let m = std::fs::metadata(s.dir.join("d")).expect("d");
    assert_eq!(m.permissions().mode() & 0o777, 0o775);
    let (e, h, _) =
        s.fs.create(
            ctx(),
            ROOT_ID,
            &cs("f"),
            0o666,
            libc::O_RDWR as u32,
            0o027,
            false,
        )
        .expect("create");
    assert!(h.is_some());
    assert_eq!(e.attr.st_mode & 0o777, 0o640);
    let n =
        s.fs.mknod(ctx(), ROOT_ID, &cs("n"), libc::S_IFREG | 0o666, 0, 0)
            .expect("mknod");
    assert_eq!(n.attr.st_mode & 0o777, 0o666);
}

#[test]
fn created_files_belong_to_the_caller() {
    if !crate::passthrough::sys::is_root() {
        eprintln!("skipped: creating files for another uid needs root");
        return;
    }
    let s = share();
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let c = Context {
        uid: 4321,
        gid: 8765,
        pid: 1,
    };
    let (e, _, _) =
        s.fs.create(c, ROOT_ID, &cs("f"), 0o666, libc::O_RDWR as u32, 0, false)
            .expect("create");
    assert_eq!((e.attr.st_uid, e.attr.st_gid), (4321, 8765));
    assert_eq!(e.attr.st_mode & 0o777, 0o666);
    let d = s.fs.mkdir(c, ROOT_ID, &cs("d"), 0o755, 0).expect("mkdir");
    let n =
        s.fs.mknod(c, ROOT_ID, &cs("n"), libc::S_IFIFO | 0o600, 0, 0)
            .expect("mknod");
    let l =
        s.fs.symlink(c, &cs("f"), ROOT_ID, &cs("l"))
            .expect("symlink");
    for (name, e) in [("f", e), ("d", d), ("n", n), ("l", l)] {
        let m = std::fs::symlink_metadata(s.dir.join(name)).expect(name);
        assert_eq!((m.uid(), m.gid()), (4321, 8765), "{name}");
        assert_eq!((e.attr.st_uid, e.attr.st_gid), (4321, 8765), "{name}");
    }
    // The daemon thread is root again afterwards.
    assert_eq!(crate::passthrough::sys::current_fsuid(), 0);
    // The host checks the caller's permissions: this uid cannot write into a 0755 root dir.
    let d2 =
        s.fs.mkdir(ctx(), ROOT_ID, &cs("rootonly"), 0o755, 0)
            .expect("mkdir");
    assert_eq!(
        errno(s.fs.mkdir(c, d2.inode, &cs("x"), 0o755, 0)),
        libc::EACCES
    );
}

#[test]
fn unlink_and_rmdir() {
    let s = share();
    std::fs::write(s.dir.join("f"), b"x").expect("write");
    std::fs::create_dir(s.dir.join("d")).expect("mkdir");
    std::fs::write(s.dir.join("d/inner"), b"x").expect("write");
    assert_eq!(errno(s.fs.rmdir(ctx(), ROOT_ID, &cs("d"))), libc::ENOTEMPTY);
    assert_eq!(errno(s.fs.unlink(ctx(), ROOT_ID, &cs("d"))), libc::EISDIR);
    s.fs.unlink(ctx(), ROOT_ID, &cs("f")).expect("unlink");
    assert!(!s.dir.join("f").exists());
    let d = s.lookup_root("d").expect("lookup");
    s.fs.unlink(ctx(), d.inode, &cs("inner")).expect("unlink");
    s.fs.rmdir(ctx(), ROOT_ID, &cs("d")).expect("rmdir");
    assert!(!s.dir.join("d").exists());
    assert_eq!(errno(s.fs.unlink(ctx(), ROOT_ID, &cs("f"))), libc::ENOENT);
}

#[test]
fn rename_plain_replacing_and_flags() {
    let s = share();
    std::fs::write(s.dir.join("a"), b"A").expect("a");
    std::fs::write(s.dir.join("b"), b"B").expect("b");
    std::fs::create_dir(s.dir.join("d")).expect("d");
    let d = s.lookup_root("d").expect("d");
    let r = |o: &str, nd: u64, n: &str, f: u32| s.fs.rename(ctx(), ROOT_ID, &cs(o), nd, &cs(n), f);

    // NOREPLACE refuses an existing target.
    assert_eq!(errno(r("a", ROOT_ID, "b", RENAME_NOREPLACE)), libc::EEXIST);
    // EXCHANGE swaps.
    r("a", ROOT_ID, "b", RENAME_EXCHANGE).expect("exchange");
    assert_eq!(std::fs::read(s.dir.join("a")).expect("a"), b"B");
    assert_eq!(std::fs::read(s.dir.join("b")).expect("b"), b"A");
    // EXCHANGE needs both names.
    assert_eq!(errno(r("a", ROOT_ID, "zz", RENAME_EXCHANGE)), libc::ENOENT);
    // Plain rename replaces.
    r("a", ROOT_ID, "b", 0).expect("rename");
    assert!(!s.dir.join("a").exists());
    assert_eq!(std::fs::read(s.dir.join("b")).expect("b"), b"B");
    // Into a subdirectory, NOREPLACE to a free name.
    r("b", d.inode, "c", RENAME_NOREPLACE).expect("rename");
    assert_eq!(std::fs::read(s.dir.join("d/c")).expect("c"), b"B");
    // Unknown flags.
    assert_eq!(errno(r("d", ROOT_ID, "e", 1 << 7)), libc::EINVAL);
    assert!(s.dir.join("d").exists());
}

#[test]
fn readonly_refuses_every_mutation() {
    let s = share_with(|c| c.readonly = true);
    std::fs::write(s.dir.join("f"), b"data").expect("write");
    let f = s.lookup_root("f").expect("lookup");
    let rofs = libc::EROFS;
    assert_eq!(errno(s.fs.mkdir(ctx(), ROOT_ID, &cs("d"), 0o755, 0)), rofs);
    assert_eq!(
        errno(s.fs.mknod(ctx(), ROOT_ID, &cs("n"), libc::S_IFIFO | 0o600, 0, 0)),
        rofs
    );
    assert_eq!(
        errno(s.fs.symlink(ctx(), &cs("x"), ROOT_ID, &cs("l"))),
        rofs
    );
    assert_eq!(errno(s.fs.link(ctx(), f.inode, ROOT_ID, &cs("h"))), rofs);
    assert_eq!(errno(s.fs.unlink(ctx(), ROOT_ID, &cs("f"))), rofs);
    assert_eq!(errno(s.fs.rmdir(ctx(), ROOT_ID, &cs("f"))), rofs);
    assert_eq!(
        errno(s.fs.rename(ctx(), ROOT_ID, &cs("f"), ROOT_ID, &cs("g"), 0)),
        rofs
    );
    assert_eq!(
        errno(s.fs.create(
            ctx(),
            ROOT_ID,
            &cs("c"),
            0o644,
            libc::O_RDWR as u32,
            0,
            false
        )),
        rofs
    );
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(errno(s.open(f.inode, flags)), rofs);
    }
    let attr = vfsdax_protocol::fuse::SetattrIn {
        valid: vfsdax_protocol::fuse::flags::fattr::MODE,
        mode: 0o600,
        ..Default::default()
    };
    assert_eq!(errno(s.fs.setattr(ctx(), f.inode, &attr, None)), rofs);
    assert_eq!(errno(s.fs.access(ctx(), f.inode, libc::W_OK as u32)), rofs);
    // Reading still works and nothing changed.
    let h = s.open(f.inode, libc::O_RDONLY).expect("open ro");
    assert_eq!(s.read(f.inode, h, 100, 0).expect("read"), b"data");
    assert_eq!(errno(s.write(f.inode, h, b"x", 0)), rofs);
    let names: Vec<_> = std::fs::read_dir(s.dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    assert_eq!(std::fs::read(s.dir.join("f")).expect("f"), b"data");
}

#[test]
fn create_exclusive_and_existing() {
    let s = share();
    std::fs::write(s.dir.join("f"), b"old").expect("write");
    std::fs::set_permissions(s.dir.join("f"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let excl = (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32;
    assert_eq!(
        errno(s.fs.create(ctx(), ROOT_ID, &cs("f"), 0o644, excl, 0, false)),
        libc::EEXIST
    );
    // Without O_EXCL an existing file is opened (and O_TRUNC truncates it).
    let trunc = (libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u32;
    let (e, h, _) =
        s.fs.create(ctx(), ROOT_ID, &cs("f"), 0o600, trunc, 0, false)
            .expect("create existing");
    assert_eq!(std::fs::read(s.dir.join("f")).expect("f").len(), 0);
    // The existing file keeps its mode.
    assert_eq!(e.attr.st_mode & 0o777, 0o644);
    s.write(e.inode, h.expect("handle"), b"new", 0)
        .expect("write");
    assert_eq!(std::fs::read(s.dir.join("f")).expect("f"), b"new");
}

#[test]
fn concurrent_lookups_and_forgets_balance() {
    let s = share();
    for i in 0..4 {
        std::fs::write(s.dir.join(&format!("f{i}")), b"x").expect("write");
    }
    let base = s.fs.inode_count();
    std::thread::scope(|sc| {
        for t in 0..8 {
            let s = &s;
            sc.spawn(move || {
                for k in 0..200 {
                    let name = format!("f{}", (t + k) % 4);
                    let e = s.lookup_root(&name).expect("lookup");
                    s.fs.getattr(ctx(), e.inode, None).expect("getattr");
                    s.fs.forget(ctx(), e.inode, 1, &NoMapper);
                }
            });
        }
    });
    assert_eq!(s.fs.inode_count(), base);
}

#[test]
fn link_falls_back_to_the_magic_link_without_dac_read_search() {
    if !crate::passthrough::sys::is_root() {
        eprintln!("skipped: needs root to drop the capability through fsuid");
        return;
    }
    let s = share();
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (e, _) = s.create("a");
    // Owned by that uid, so that protected_hardlinks lets it link the file.
    std::os::unix::fs::chown(s.dir.join("a"), Some(4321), Some(4321)).expect("chown");
    // A non-zero fsuid drops CAP_DAC_READ_SEARCH, so AT_EMPTY_PATH answers ENOENT.
    let _creds = crate::passthrough::sys::FsCredsGuard::new(true, 4321, 4321).expect("creds");
    let l = s.fs.link(ctx(), e.inode, ROOT_ID, &cs("b")).expect("link");
    assert_eq!(l.inode, e.inode);
    assert_eq!(l.attr.st_nlink, 2);
}

#[test]
fn mknod_of_devices_only_when_allowed() {
    use crate::passthrough::perm::check_mknod;
    let perm_err = |mode, rdev| check_mknod(mode, rdev).err().and_then(|e| e.raw_os_error());
    assert_eq!(perm_err(libc::S_IFCHR | 0o666, 0x103), Some(libc::EPERM));
    assert_eq!(perm_err(libc::S_IFBLK | 0o660, 0x800), Some(libc::EPERM));
    // A block device 0/0 is no whiteout.
    assert_eq!(perm_err(libc::S_IFBLK, 0), Some(libc::EPERM));
    assert_eq!(perm_err(libc::S_IFCHR, 0), None);
    for t in [libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFREG, 0] {
        assert_eq!(perm_err(t | 0o644, 0x103), None, "type {t:o}");
    }

    let s = share_with(|c| c.deny_device_nodes = true);
    let mknod =
        |name: &str, mode: u32, rdev: u32| s.fs.mknod(ctx(), ROOT_ID, &cs(name), mode, rdev, 0);
    // /dev/null's and /dev/sda's numbers (new_encode_dev).
    assert_eq!(
        errno(mknod("null", libc::S_IFCHR | 0o666, 0x103)),
        libc::EPERM
    );
    assert_eq!(
        errno(mknod("sda", libc::S_IFBLK | 0o660, 0x800)),
        libc::EPERM
    );
    assert!(!s.dir.join("null").exists() && !s.dir.join("sda").exists());
    mknod("fifo", libc::S_IFIFO | 0o600, 0).expect("fifo");
    mknod("sock", libc::S_IFSOCK | 0o600, 0).expect("socket");
    let m = std::fs::symlink_metadata(s.dir.join("sock")).expect("sock");
    assert_eq!(m.mode() & libc::S_IFMT, libc::S_IFSOCK);
    if !crate::passthrough::sys::is_root() {
        eprintln!("skipped: the device part needs root (CAP_MKNOD)");
        return;
    }
    let w = mknod("wh", libc::S_IFCHR, 0).expect("whiteout");
    assert_eq!(w.attr.st_mode & libc::S_IFMT, libc::S_IFCHR);
    let m = std::fs::symlink_metadata(s.dir.join("wh")).expect("wh");
    assert_eq!((m.mode() & libc::S_IFMT, m.rdev()), (libc::S_IFCHR, 0));

    // By default, as virtiofsd: a guest (e.g. a container image unpacked in the share) may
    // make device nodes; the daemon never opens them (see the escape tests).
    let s = share();
    let e =
        s.fs.mknod(ctx(), ROOT_ID, &cs("null"), libc::S_IFCHR | 0o666, 0x103, 0)
            .expect("device node allowed by default");
    assert_eq!(e.attr.st_mode & libc::S_IFMT, libc::S_IFCHR);
    let m = std::fs::symlink_metadata(s.dir.join("null")).expect("null");
    assert_eq!(m.rdev(), libc::makedev(1, 3));
}

/// The host inode number of node id `ino`'s descriptor and of handle `h`'s file.
fn held_inodes(s: &Share, ino: Inode, h: Handle) -> (u64, u64) {
    let data = s.fs.inode(ino).expect("node id");
    let st = crate::passthrough::sys::fstat(data.fd()).expect("fstat");
    let (file, _) = s.fs.handle_file(h).expect("handle");
    (st.st_ino, file.metadata().expect("fstat").ino())
}

/// From now on, every race window of `s` renames `decoy` (if it exists) over `target`.
fn rename_at_race_window(s: &Share, decoy: &str, target: &str) -> u64 {
    let (from, to) = (s.dir.join(decoy), s.dir.join(target));
    std::fs::write(&from, b"decoy").expect("decoy");
    let ino = std::fs::metadata(&from).expect("decoy").ino();
    s.fs.set_race_hook(move || {
        let _ = std::fs::rename(&from, &to);
    });
    ino
}

#[test]
fn create_replies_with_the_file_it_opened_despite_a_rename() {
    let s = share();
    let decoy = rename_at_race_window(&s, "decoy", "f");
    let (e, h) = s.create("f");
    let (node_ino, handle_ino) = held_inodes(&s, e.inode, h);
    assert_eq!(handle_ino, e.attr.st_ino, "the handle is the entry's file");
    assert_eq!(node_ino, e.attr.st_ino, "the node id is the entry's file");
    assert_ne!(e.attr.st_ino, decoy);
    // The name now holds the decoy; its own lookup gets another node id.
    let d = s.lookup_root("f").expect("lookup");
    assert_eq!(d.attr.st_ino, decoy);
    assert_ne!(d.inode, e.inode);

    // CREATE of an existing file (no O_EXCL) too.
    let s = share();
    std::fs::write(s.dir.join("g"), b"old").expect("g");
    let old = std::fs::metadata(s.dir.join("g")).expect("g").ino();
    rename_at_race_window(&s, "decoy", "g");
    let (e, h) = s.create("g");
    assert_eq!(e.attr.st_ino, old);
    assert_eq!(held_inodes(&s, e.inode, h), (old, old));
}

#[test]
fn link_replies_with_the_file_it_linked_despite_a_rename() {
    let s = share();
    let (e, _h) = s.create("a");
    let decoy = rename_at_race_window(&s, "decoy", "b");
    let l = s.fs.link(ctx(), e.inode, ROOT_ID, &cs("b")).expect("link");
    assert_eq!(l.inode, e.inode);
    assert_eq!(l.attr.st_ino, e.attr.st_ino);
    assert_ne!(l.attr.st_ino, decoy);
    // One lookup more on the linked id: two FORGETs drop it.
    s.fs.forget(ctx(), e.inode, 2, &NoMapper);
    assert_eq!(errno(s.fs.getattr(ctx(), e.inode, None)), libc::EBADF);
}
