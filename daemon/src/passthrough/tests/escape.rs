//! Attempts to read, write or create outside the shared directory.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use vfsdax_protocol::fuse::flags::fattr;
use vfsdax_protocol::fuse::{SetattrIn, ROOT_ID};

use super::*;

/// `outer/share` is exported; `outer/secret` (a file) and `outer/secretdir` lie next to it.
struct Escape {
    outer: TempDir,
    fs: PassthroughFs,
}

fn escape_share() -> Escape {
    let outer = TempDir::new();
    std::fs::create_dir(outer.join("share")).expect("share");
    std::fs::write(outer.join("secret"), b"top secret").expect("secret");
    std::fs::create_dir(outer.join("secretdir")).expect("secretdir");
    let fs = PassthroughFs::new(PassthroughConfig::new(outer.join("share"))).expect("fs");
    fs.init(u64::MAX, &NoMapper).expect("init");
    Escape { outer, fs }
}

impl Escape {
    fn lookup(&self, parent: Inode, name: &str) -> Result<Entry> {
        self.fs.lookup(ctx(), parent, &cs(name))
    }

    /// Nothing outside the share changed.
    fn assert_outside_untouched(&self) {
        assert_eq!(
            std::fs::read(self.outer.join("secret")).expect("secret"),
            b"top secret"
        );
        let mut names: Vec<_> = std::fs::read_dir(self.outer.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect();
        names.sort();
        assert_eq!(names, ["secret", "secretdir", "share"]);
        assert_eq!(
            std::fs::read_dir(self.outer.join("secretdir"))
                .expect("ls")
                .count(),
            0
        );
        let m = std::fs::metadata(self.outer.join("secret")).expect("secret");
        assert_eq!(m.nlink(), 1);
    }
}

#[test]
fn dotdot_at_the_root_is_the_root() {
    let s = escape_share();
    let up = s.lookup(ROOT_ID, "..").expect("..");
    assert_eq!(up.inode, ROOT_ID);
    let dot = s.lookup(ROOT_ID, ".").expect(".");
    assert_eq!(dot.inode, ROOT_ID);
    let up2 = s.lookup(up.inode, "..").expect("../..");
    assert_eq!(up2.inode, ROOT_ID);
    assert_eq!(errno(s.lookup(up2.inode, "secret")), libc::ENOENT);
    // From a subdirectory, `..` is the root and then stays there.
    let d =
        s.fs.mkdir(ctx(), ROOT_ID, &cs("d"), 0o755, 0)
            .expect("mkdir");
    let p = s.lookup(d.inode, "..").expect("d/..");
    assert_eq!(p.inode, ROOT_ID);
    assert_eq!(s.lookup(p.inode, "..").expect("d/../..").inode, ROOT_ID);
    // Creating through the root's `..` stays inside.
    s.fs.mkdir(ctx(), up2.inode, &cs("made"), 0o755, 0)
        .expect("mkdir");
    assert!(s.outer.join("share/made").is_dir());
    s.assert_outside_untouched();
}

#[test]
fn names_with_slashes_or_dots_are_refused() {
    let s = escape_share();
    let d =
        s.fs.mkdir(ctx(), ROOT_ID, &cs("d"), 0o755, 0)
            .expect("mkdir");
    std::fs::write(s.outer.join("share/f"), b"f").expect("f");
    let f = s.lookup(ROOT_ID, "f").expect("f");
    for bad in ["../secret", "d/../../secret", "/etc/passwd", "", "a/"] {
        assert_eq!(
            errno(s.lookup(ROOT_ID, bad)),
            libc::EINVAL,
            "lookup {bad:?}"
        );
    }
    for bad in ["../x", "..", ".", "", "d/../../x"] {
        let n = cs(bad);
        assert_eq!(
            errno(s.fs.mkdir(ctx(), ROOT_ID, &n, 0o755, 0)),
            libc::EINVAL
        );
        assert_eq!(
            errno(s.fs.mknod(ctx(), ROOT_ID, &n, libc::S_IFREG | 0o644, 0, 0)),
            libc::EINVAL
        );
        assert_eq!(
            errno(s.fs.create(ctx(), ROOT_ID, &n, 0o644, libc::O_RDWR as u32, 0, false)),
            libc::EINVAL
        );
        assert_eq!(
            errno(s.fs.symlink(ctx(), &cs("t"), ROOT_ID, &n)),
            libc::EINVAL
        );
        assert_eq!(errno(s.fs.link(ctx(), f.inode, ROOT_ID, &n)), libc::EINVAL);
        assert_eq!(errno(s.fs.unlink(ctx(), d.inode, &n)), libc::EINVAL);
        assert_eq!(errno(s.fs.rmdir(ctx(), d.inode, &n)), libc::EINVAL);
        assert_eq!(
            errno(s.fs.rename(ctx(), ROOT_ID, &cs("f"), ROOT_ID, &n, 0)),
            libc::EINVAL
        );
        assert_eq!(
            errno(s.fs.rename(ctx(), ROOT_ID, &n, ROOT_ID, &cs("g"), 0)),
            libc::EINVAL
        );
    }
    // rename of "../secret" from the root, and link/rename to "../x", refused above.
    assert_eq!(
        errno(s.fs.rename(ctx(), ROOT_ID, &cs("../secret"), ROOT_ID, &cs("stolen"), 0)),
        libc::EINVAL
    );
    assert!(s.outer.join("share/f").exists());
    s.assert_outside_untouched();
}

#[test]
fn a_symlink_out_of_the_share_is_never_followed() {
    let s = escape_share();
    let share = s.outer.join("share");
    std::os::unix::fs::symlink("/etc", share.join("etc")).expect("symlink");
    std::os::unix::fs::symlink(s.outer.join("secret"), share.join("sec")).expect("symlink");
    std::os::unix::fs::symlink("../secretdir", share.join("sd")).expect("symlink");

    // LOOKUP gives the symlink itself.
    let etc = s.lookup(ROOT_ID, "etc").expect("lookup etc");
    assert_eq!(etc.attr.st_mode & libc::S_IFMT, libc::S_IFLNK);
    // READLINK returns the target untouched.
    assert_eq!(s.fs.readlink(ctx(), etc.inode).expect("readlink"), b"/etc");
    // Nothing can be opened, listed or looked up through it.
    for flags in [libc::O_RDONLY, libc::O_RDWR, libc::O_WRONLY | libc::O_TRUNC] {
        assert_eq!(
            errno(s.fs.open(ctx(), etc.inode, flags as u32, false)),
            libc::ELOOP
        );
    }
    assert_eq!(errno(s.fs.opendir(ctx(), etc.inode, 0)), libc::ENOTDIR);
    assert_eq!(errno(s.lookup(etc.inode, "passwd")), libc::ENOTDIR);
    assert_eq!(errno(s.lookup(etc.inode, "..")), libc::ENOTDIR);

    let sec = s.lookup(ROOT_ID, "sec").expect("lookup sec");
    assert_eq!(
        errno(s.fs.open(ctx(), sec.inode, libc::O_RDONLY as u32, false)),
        libc::ELOOP
    );
    // Truncation, chmod and times act on the link (or are refused), never on the target.
    let trunc = SetattrIn {
        valid: fattr::SIZE,
        size: 0,
        ..Default::default()
    };
    assert_eq!(
        errno(s.fs.setattr(ctx(), sec.inode, &trunc, None)),
        libc::EINVAL
    );
    let chmod = SetattrIn {
        valid: fattr::MODE,
        mode: 0o777,
        ..Default::default()
    };
    assert!(s.fs.setattr(ctx(), sec.inode, &chmod, None).is_err());
    let before = std::fs::metadata(s.outer.join("secret")).expect("secret");
    let times = SetattrIn {
        valid: fattr::ATIME | fattr::MTIME,
        atime: 1000,
        mtime: 1000,
        ..Default::default()
    };
    let a =
        s.fs.setattr(ctx(), sec.inode, &times, None)
            .expect("times on link");
    assert_eq!(a.attr.st_mtime, 1000);
    assert_eq!(
        std::fs::symlink_metadata(share.join("sec"))
            .expect("sec")
            .mtime(),
        1000
    );
    let after = std::fs::metadata(s.outer.join("secret")).expect("secret");
    assert_eq!(before.mtime(), after.mtime());
    assert_eq!(before.mode(), after.mode());

    // Creating "in" a symlink to a directory outside fails.
    let sd = s.lookup(ROOT_ID, "sd").expect("lookup sd");
    assert_eq!(
        errno(s.fs.mkdir(ctx(), sd.inode, &cs("x"), 0o755, 0)),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(s.fs.create(
            ctx(),
            sd.inode,
            &cs("x"),
            0o644,
            libc::O_RDWR as u32,
            0,
            false
        )),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(s.fs.rename(ctx(), ROOT_ID, &cs("etc"), sd.inode, &cs("x"), 0)),
        libc::ENOTDIR
    );
    // A hard link of the symlink links the symlink, not its target.
    let h =
        s.fs.link(ctx(), sec.inode, ROOT_ID, &cs("hl"))
            .expect("link");
    assert_eq!(h.inode, sec.inode);
    assert!(std::fs::symlink_metadata(share.join("hl"))
        .expect("hl")
        .is_symlink());
    s.assert_outside_untouched();
}

#[test]
fn create_over_a_symlink_does_not_follow_it() {
    let s = escape_share();
    let share = s.outer.join("share");
    std::os::unix::fs::symlink(s.outer.join("secret"), share.join("sec")).expect("symlink");
    std::os::unix::fs::symlink(s.outer.join("newfile"), share.join("dangling")).expect("symlink");
    let rw_trunc = (libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u32;
    assert_eq!(
        errno(s.fs.create(ctx(), ROOT_ID, &cs("sec"), 0o644, rw_trunc, 0, false)),
        libc::ELOOP
    );
    // A dangling symlink to a path outside: no file appears there.
    assert!(s
        .fs
        .create(ctx(), ROOT_ID, &cs("dangling"), 0o644, rw_trunc, 0, false)
        .is_err());
    s.assert_outside_untouched();
}

#[test]
fn readlink_bytes_are_untouched() {
    let s = escape_share();
    let target = b"../../\xff\xfe/weird name";
    let p = s.outer.join("share/l");
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &p).expect("symlink");
    let l = s.lookup(ROOT_ID, "l").expect("lookup");
    assert_eq!(s.fs.readlink(ctx(), l.inode).expect("readlink"), target);
    // A symlink created by the guest stores its target as given.
    let t = CString::new(&b"/etc/\x01shadow"[..]).expect("cstr");
    let e = s.fs.symlink(ctx(), &t, ROOT_ID, &cs("g")).expect("symlink");
    assert_eq!(
        s.fs.readlink(ctx(), e.inode).expect("readlink"),
        t.as_bytes()
    );
    // READLINK of a non-symlink.
    assert_eq!(errno(s.fs.readlink(ctx(), ROOT_ID)), libc::EINVAL);
}

#[test]
fn device_nodes_and_fifos_are_not_opened() {
    if !crate::passthrough::sys::is_root() {
        eprintln!("skipped: mknod of a device needs root");
        return;
    }
    let s = escape_share();
    let null_dev = libc::makedev(1, 3);
    // A device node the guest made (allowed by default, as in virtiofsd)...
    let guest_null =
        s.fs.mknod(
            ctx(),
            ROOT_ID,
            &cs("guest-null"),
            libc::S_IFCHR | 0o666,
            0x103,
            0,
        )
        .expect("mknod");
    assert_eq!(
        errno(s.fs.open(ctx(), guest_null.inode, libc::O_RDWR as u32, false)),
        libc::ENXIO
    );
    // ...or one already in the share (made on the host) is never opened for it.
    let path = CString::new(
        s.outer
            .join("share/null")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .expect("path");
    crate::passthrough::sys::mknodat(libc::AT_FDCWD, &path, libc::S_IFCHR | 0o666, null_dev)
        .expect("host mknod");
    let dev = s.lookup(ROOT_ID, "null").expect("lookup");
    assert_eq!(
        errno(s.fs.open(ctx(), dev.inode, libc::O_RDWR as u32, false)),
        libc::ENXIO
    );
    // Nor is a whiteout (a character device 0/0), which the guest may create.
    let wh =
        s.fs.mknod(ctx(), ROOT_ID, &cs("wh"), libc::S_IFCHR, 0, 0)
            .expect("whiteout");
    assert_eq!(
        errno(s.fs.open(ctx(), wh.inode, libc::O_RDONLY as u32, false)),
        libc::ENXIO
    );
    let fifo =
        s.fs.mknod(ctx(), ROOT_ID, &cs("fifo"), libc::S_IFIFO | 0o666, 0, 0)
            .expect("mknod");
    // Would block forever if opened on the host.
    assert_eq!(
        errno(s.fs.open(ctx(), fifo.inode, libc::O_RDONLY as u32, false)),
        libc::ENXIO
    );
    s.assert_outside_untouched();
}

#[test]
fn unknown_ids_and_foreign_handles_are_ebadf() {
    let s = escape_share();
    assert_eq!(errno(s.fs.getattr(ctx(), 9999, None)), libc::EBADF);
    assert_eq!(errno(s.lookup(9999, "x")), libc::EBADF);
    std::fs::write(s.outer.join("share/a"), b"a").expect("a");
    std::fs::write(s.outer.join("share/b"), b"b").expect("b");
    let a = s.lookup(ROOT_ID, "a").expect("a");
    let b = s.lookup(ROOT_ID, "b").expect("b");
    let (h, _) =
        s.fs.open(ctx(), a.inode, libc::O_RDONLY as u32, false)
            .expect("open");
    let h = h.expect("handle");
    let mut w = VecWriter(Vec::new());
    assert_eq!(
        errno(s.fs.read(ctx(), b.inode, h, &mut w, 10, 0)),
        libc::EBADF
    );
    assert_eq!(
        errno(s.fs.read(ctx(), a.inode, h + 100, &mut w, 10, 0)),
        libc::EBADF
    );
    assert_eq!(
        errno(s.fs.release(ctx(), b.inode, 0, h, false)),
        libc::EBADF
    );
    s.fs.release(ctx(), a.inode, 0, h, false).expect("release");
    assert_eq!(
        errno(s.fs.release(ctx(), a.inode, 0, h, false)),
        libc::EBADF
    );
}

#[test]
fn link_of_a_directory_is_refused() {
    let s = escape_share();
    let d =
        s.fs.mkdir(ctx(), ROOT_ID, &cs("d"), 0o755, 0)
            .expect("mkdir");
    assert_eq!(
        errno(s.fs.link(ctx(), d.inode, ROOT_ID, &cs("d2"))),
        libc::EPERM
    );
    assert_eq!(
        errno(s.fs.link(ctx(), ROOT_ID, d.inode, &cs("root"))),
        libc::EPERM
    );
    s.assert_outside_untouched();
}

#[test]
fn dotdot_of_a_directory_moved_out_is_refused() {
    let s = escape_share();
    let share = s.outer.join("share");
    std::fs::create_dir_all(share.join("a/b")).expect("a/b");
    let a = s.lookup(ROOT_ID, "a").expect("a");
    let b = s.lookup(a.inode, "b").expect("b");
    // Inside, `..` climbs as usual.
    assert_eq!(s.lookup(b.inode, "..").expect("..").inode, a.inode);
    assert_eq!(s.lookup(a.inode, "..").expect("..").inode, ROOT_ID);
    // A host user moves `a` next to the share: the guest still holds it, but its `..` is now
    // the directory around the share.
    std::fs::rename(share.join("a"), s.outer.join("a")).expect("move out");
    assert_eq!(errno(s.lookup(a.inode, "..")), libc::EACCES);
    // `b` still lies in `a`, which is outside now: refused too.
    assert_eq!(errno(s.lookup(b.inode, "..")), libc::EACCES);
    // Moved back, `a` climbs to the root again.
    std::fs::rename(s.outer.join("a"), share.join("a")).expect("move back");
    assert_eq!(s.lookup(a.inode, "..").expect("..").inode, ROOT_ID);
    s.assert_outside_untouched();
}

#[test]
fn dotdot_never_climbs_out_while_directories_move() {
    // A host thread moves a/ in and out of the share while the guest climbs `..` from the
    // deepest directory: every answer is a directory of the a/b/c chain or the root, never
    // the directory around the share or anything above it.
    let s = escape_share();
    let share = s.outer.join("share");
    std::fs::create_dir_all(share.join("a/b/c")).expect("a/b/c");
    let a = s.lookup(ROOT_ID, "a").expect("a");
    let b = s.lookup(a.inode, "b").expect("b");
    let c = s.lookup(b.inode, "c").expect("c");
    let allowed = [ROOT_ID, a.inode, b.inode, c.inode];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mover = {
        let (inside, outside) = (share.join("a"), s.outer.join("a"));
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut moves = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::rename(&inside, &outside).expect("out");
                std::fs::rename(&outside, &inside).expect("in");
                moves += 2;
            }
            moves
        })
    };
    let (mut refused, mut climbed) = (0u32, 0u32);
    for _ in 0..3000 {
        let mut node = c.inode;
        for _ in 0..6 {
            match s.lookup(node, "..") {
                Ok(e) => {
                    assert!(
                        allowed.contains(&e.inode),
                        "`..` of node {node} escaped to node {}",
                        e.inode
                    );
                    climbed += 1;
                    node = e.inode;
                }
                Err(_) => {
                    refused += 1;
                    break;
                }
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let moves = mover.join().expect("mover");
    println!("{moves} moves, {climbed} climbs, {refused} refused");
    assert!(moves > 0 && climbed > 0);
    s.assert_outside_untouched();
}
