//! DAX end to end without a VM: the real `vfsdaxd --cache-size 64M`, the host-side virtio-fs
//! driver as its vhost-user frontend, and the VMM library's `dax::connect()` wiring a real
//! `DaxWindow` as the backend request handler. Every mapping is asked for with a FUSE request
//! (SETUPMAPPING / REMOVEMAPPING on a virtqueue), travels daemon → `SHMEM_MAP` → glue, and is
//! checked in the window's host memory, `/proc/self/maps` and the glue's `MappingTable`.
//!
//! Ranges are 2 MiB, as a Linux guest (`fs/fuse/dax.c`) uses, and most requests carry
//! `fh = -1` with `FUSE_SETUPMAPPING_FLAG_READ` always set, as Linux sends them.
//!
//! An unknown shared memory region id cannot be expressed in a FUSE request (the daemon always
//! maps region 0); the glue refuses it in `dax_leak.rs` (`file_bytes_through_the_window`, a
//! `SHMEM_MAP` with `shmid: 1` over a real channel) and in vmm-glue's `dax/handler_tests.rs`.
//!
//! The tests take a process-wide lock: the leak check counts this process's descriptors and
//! mappings.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use vfsdax_driver::ClientOptions;
use vfsdax_protocol::fuse::flags::init;
use vfsdax_protocol::fuse::{SetupMappingIn, ROOT_ID};
use vfsdax_tests::dax::{
    count_dir, fd_count, maps_count, perms_at, serialized, start_dax as start_with,
    DaxSession as Dax, MIB2, NO_FH, R, W, WINDOW,
};
use vfsdax_tests::harness::{expect_errno, pattern, DaemonOptions, Session};
use vfsdax_vmm_glue::dax::FileIdentity;

fn start() -> Dax {
    start_with(&[], 0)
}

fn identity(f: &File) -> FileIdentity {
    let m = f.metadata().expect("fstat");
    FileIdentity {
        dev: m.dev(),
        ino: m.ino(),
    }
}

#[test]
fn init_negotiates_map_alignment_and_inode_dax() {
    let _alone = serialized();
    let mut d = start_with(&[], 0);
    let out = *d.s.client.init_out().expect("INIT reply");
    assert_ne!(d.s.client.negotiated_init_flags() & init::MAP_ALIGNMENT, 0);
    assert_eq!(
        1u64 << out.map_alignment,
        MIB2,
        "mappings come in 2 MiB chunks"
    );
    // A dax=inode guest: regular files carry FUSE_ATTR_DAX (policy `always`), directories not.
    let mut d2 = start_with(
        &["--dax-policy", "size:1M"],
        vfsdax_driver::ops::DEFAULT_INIT_FLAGS | init::HAS_INODE_DAX,
    );
    assert_ne!(d2.s.client.negotiated_init_flags() & init::HAS_INODE_DAX, 0);
    let (big, _) = d2.file("big", &vec![1u8; 1 << 20]);
    let (small, _) = d2.file("small", b"tiny");
    let dax = vfsdax_protocol::fuse::flags::attr::DAX;
    let flag = |d: &mut Dax, n| d.s.client.getattr(n, None).expect("GETATTR").attr.flags & dax;
    assert_eq!(flag(&mut d2, big), dax, "a 1 MiB file under size:1M");
    assert_eq!(flag(&mut d2, small), 0, "a 4-byte file under size:1M");
    assert_eq!(flag(&mut d2, ROOT_ID), 0, "a directory");
    d.s.assert_serving();
}

#[test]
fn file_bytes_through_the_window() {
    let _alone = serialized();
    let mut d = start();
    let data = pattern((4 * MIB2) as usize, 3);
    let (node, host) = d.file("data", &data);
    let fh_ro = d.open(node, libc::O_RDONLY);
    let base = d.base();

    // Like Linux: fh = -1, READ; file range 1 at window slot 2.
    d.map(node, NO_FH, MIB2, 2 * MIB2, MIB2, R)
        .expect("map fh=-1");
    assert_eq!(
        d.window_bytes(2 * MIB2, MIB2),
        &data[MIB2 as usize..2 * MIB2 as usize]
    );
    assert_eq!(perms_at(base + 2 * MIB2).as_deref(), Some("r--s"));
    // With a real handle: file range 0 at slot 0.
    d.map(node, fh_ro, 0, 0, MIB2, R).expect("map with fh");
    assert_eq!(d.window_bytes(0, MIB2), &data[..MIB2 as usize]);
    assert_eq!(
        d.table(),
        [
            (0, MIB2, 0, false, identity(&host)),
            (2 * MIB2, MIB2, MIB2, false, identity(&host)),
        ]
    );

    // Writable mappings: fh = -1 with WRITE, and a handle opened read-write.
    let fh_rw = d.open(node, libc::O_RDWR);
    d.map(node, NO_FH, 2 * MIB2, 4 * MIB2, MIB2, R | W)
        .expect("writable map fh=-1");
    d.map(node, fh_rw, 3 * MIB2, 6 * MIB2, MIB2, R | W)
        .expect("writable map with fh");
    assert_eq!(perms_at(base + 4 * MIB2).as_deref(), Some("rw-s"));
    for (moffset, foffset, msg) in [
        (4 * MIB2 + 10, 2 * MIB2 + 10, &b"stored through fh=-1"[..]),
        (6 * MIB2 + 4096, 3 * MIB2 + 4096, &b"stored through fh"[..]),
    ] {
        // SAFETY: [moffset, moffset+len) lies in a range mapped read-write just above; nothing
        // else in this process aliases it.
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), (base + moffset) as *mut u8, msg.len())
        };
        let mut back = vec![0u8; msg.len()];
        host.read_exact_at(&mut back, foffset)
            .expect("pread host file");
        assert_eq!(back, msg, "the host file shows the store");
    }

    // RELEASE does not take the mappings away (Linux reuses them across opens).
    d.s.client.release(node, fh_ro, 0).expect("RELEASE ro");
    d.s.client.release(node, fh_rw, 0).expect("RELEASE rw");
    assert_eq!(d.window_bytes(0, 16), &data[..16]);
    assert_eq!(d.table().len(), 4);

    // Mapping the same slot again replaces the old mapping on both sides: the daemon unmaps the
    // old one first (the vhost-user spec forbids mapping over a live mapping).
    let other = pattern(MIB2 as usize, 9);
    let (node2, host2) = d.file("other", &other);
    d.map(node2, NO_FH, 0, 0, MIB2, R).expect("replacing map");
    assert_eq!(d.window_bytes(0, MIB2), other.as_slice());
    assert_eq!(d.table()[0], (0, MIB2, 0, false, identity(&host2)));
    assert_eq!(d.table().len(), 4);

    // One batched REMOVEMAPPING: every range inaccessible again, the glue's table empty.
    d.unmap(&[
        (0, MIB2),
        (2 * MIB2, MIB2),
        (4 * MIB2, MIB2),
        (6 * MIB2, MIB2),
    ])
    .expect("REMOVEMAPPING");
    for slot in 0..8 {
        assert_eq!(
            perms_at(base + slot * MIB2).as_deref(),
            Some("---p"),
            "slot {slot}"
        );
    }
    assert!(d.conn.window().table().is_empty());
    let stats = d.conn.handler().stats();
    assert_eq!(
        (stats.maps, stats.unmaps, stats.refused, stats.failed),
        (5, 5, 0, 0)
    );
    d.s.assert_serving();
}

/// A SETUPMAPPING that must fail: why, node id, fh, foffset, moffset, len, flags, errno.
type BadMap = (&'static str, u64, u64, u64, u64, u64, u64, i32);

#[test]
fn bad_requests_are_refused_with_nothing_mapped() {
    let _alone = serialized();
    let mut d = start();
    let (node, host) = d.file("data", &pattern((4 * MIB2) as usize, 5));
    std::fs::create_dir(d.s.host("dir")).expect("mkdir");
    let dir =
        d.s.client
            .lookup(ROOT_ID, b"dir")
            .expect("LOOKUP dir")
            .nodeid;
    let fh_ro = d.open(node, libc::O_RDONLY);
    d.map(node, NO_FH, 0, 0, MIB2, R).expect("a good mapping");
    let table_before = d.table();
    let stats_before = d.conn.handler().stats();
    let page = vfsdax_vmm_glue::dax::window::host_page_size();
    let top = u64::MAX - page + 1;

    let cases: [BadMap; 12] = [
        (
            "outside the window",
            node,
            NO_FH,
            0,
            WINDOW,
            MIB2,
            R,
            libc::EINVAL,
        ),
        (
            "crossing the window's end",
            node,
            NO_FH,
            0,
            WINDOW - MIB2,
            2 * MIB2,
            R,
            libc::EINVAL,
        ),
        (
            "unaligned file offset",
            node,
            NO_FH,
            7,
            4 * MIB2,
            MIB2,
            R,
            libc::EINVAL,
        ),
        (
            "unaligned window offset",
            node,
            NO_FH,
            0,
            4 * MIB2 + 7,
            MIB2,
            R,
            libc::EINVAL,
        ),
        (
            "unaligned length",
            node,
            NO_FH,
            0,
            4 * MIB2,
            MIB2 - 1,
            R,
            libc::EINVAL,
        ),
        (
            "moffset + len overflows",
            node,
            NO_FH,
            0,
            top,
            MIB2,
            R,
            libc::EINVAL,
        ),
        (
            "foffset + len overflows",
            node,
            NO_FH,
            top,
            4 * MIB2,
            MIB2,
            R,
            libc::EINVAL,
        ),
        (
            "WRITE on a read-only handle",
            node,
            fh_ro,
            0,
            4 * MIB2,
            MIB2,
            R | W,
            libc::EACCES,
        ),
        (
            "unknown handle",
            node,
            fh_ro + 1000,
            0,
            4 * MIB2,
            MIB2,
            R,
            libc::EBADF,
        ),
        ("zero length", node, NO_FH, 0, 4 * MIB2, 0, R, libc::EINVAL),
        (
            "unknown flags",
            node,
            NO_FH,
            0,
            4 * MIB2,
            MIB2,
            R | 0x40,
            libc::EINVAL,
        ),
        (
            "a directory",
            dir,
            NO_FH,
            0,
            4 * MIB2,
            MIB2,
            R,
            libc::ENODEV,
        ),
    ];
    for (why, n, fh, foffset, moffset, len, flags, errno) in cases {
        assert_eq!(
            d.map(n, fh, foffset, moffset, len, flags),
            Err(errno),
            "{why}"
        );
    }
    // A REMOVEMAPPING batch with one bad entry changes nothing, not even the good entry's range.
    assert_eq!(d.unmap(&[(0, MIB2), (3, MIB2)]), Err(libc::EINVAL));
    assert_eq!(d.unmap(&[(0, MIB2), (WINDOW, MIB2)]), Err(libc::EINVAL));
    assert_eq!(d.unmap(&[(0, 0)]), Err(libc::EINVAL));

    assert_eq!(d.table(), table_before, "the glue's table changed");
    assert_eq!(
        d.conn.handler().stats(),
        stats_before,
        "a refused request reached the VMM"
    );
    assert_eq!(perms_at(d.base()).as_deref(), Some("r--s"));
    for slot in 1..32 {
        assert_eq!(
            perms_at(d.base() + slot * MIB2).as_deref(),
            Some("---p"),
            "slot {slot}"
        );
    }
    assert_eq!(d.table()[0].4, identity(&host));
    d.s.assert_serving();

    // A read-only share refuses writable mappings with EROFS, read-only ones work.
    let mut ro = start_with(&["--readonly"], 0);
    let (node, _) = ro.file("data", &pattern(MIB2 as usize, 6));
    assert_eq!(ro.map(node, NO_FH, 0, 0, MIB2, R | W), Err(libc::EROFS));
    assert!(ro.conn.window().table().is_empty());
    ro.map(node, NO_FH, 0, 0, MIB2, R).expect("read-only map");
    assert_eq!(ro.table().len(), 1);
}

#[test]
fn without_a_backend_channel_dax_requests_fail_cleanly() {
    let _alone = serialized();
    // SHMEM negotiated but no SET_BACKEND_REQ_FD (as with a VMM that has no window): ENOSYS.
    let dopts = DaemonOptions {
        extra_args: vec!["--cache-size".into(), "64M".into()],
        ..Default::default()
    };
    let mut s = Session::start_with(&dopts, ClientOptions::default());
    std::fs::write(s.host("f"), vec![0u8; MIB2 as usize]).expect("host file");
    let node = s.client.lookup(ROOT_ID, b"f").expect("LOOKUP").nodeid;
    let arg = SetupMappingIn {
        fh: NO_FH,
        foffset: 0,
        len: MIB2,
        flags: R,
        moffset: 0,
    };
    assert_eq!(
        expect_errno(s.client.setupmapping(node, &arg)),
        libc::ENOSYS
    );
    s.assert_serving();

    // No --cache-size: no MAP_ALIGNMENT, and DAX requests are ENOSYS.
    let mut s = Session::start();
    assert_eq!(s.client.negotiated_init_flags() & init::MAP_ALIGNMENT, 0);
    assert_eq!(
        expect_errno(s.client.setupmapping(ROOT_ID, &arg)),
        libc::ENOSYS
    );
    s.assert_serving();
}

#[test]
fn setupmapping_cycles_leak_nothing() {
    const CYCLES: u64 = 2_000;
    let _alone = serialized();
    let mut d = start();
    let (node, _) = d.file("data", &pattern((8 * MIB2) as usize, 7));
    let fh = d.open(node, libc::O_RDWR);
    let daemon_fd_dir = format!("/proc/{}/fd", d.s.daemon.serving_pid());
    let cycle = |d: &mut Dax, i: u64| {
        let slot = (i * 7 % 31) * MIB2;
        let foffset = (i % 8) * MIB2;
        let (handle, flags) = match i % 3 {
            0 => (NO_FH, R),
            1 => (NO_FH, R | W),
            _ => (fh, R | W),
        };
        d.map(node, handle, foffset, slot, MIB2, flags)
            .expect("map");
        if i % 2 == 1 {
            d.map(node, NO_FH, 0, slot, MIB2, R).expect("replacing map");
        }
        d.unmap(&[(slot, MIB2)]).expect("unmap");
    };
    for i in 0..16 {
        cycle(&mut d, i);
    }
    // The glue remembers unmapped ranges with their files (a bounded cache for fault
    // reports): emptied before each count.
    d.conn.window().table().forget_unmapped();
    let fds_before = fd_count();
    let maps_before = maps_count();
    let daemon_fds_before = count_dir(&daemon_fd_dir);
    for i in 0..CYCLES {
        cycle(&mut d, i);
    }
    d.conn.window().table().forget_unmapped();
    let fds_after = fd_count();
    let maps_after = maps_count();
    let daemon_fds_after = count_dir(&daemon_fd_dir);
    println!(
        "{CYCLES} cycles: test fds {fds_before} -> {fds_after}, maps lines {maps_before} -> \
         {maps_after}, daemon fds {daemon_fds_before} -> {daemon_fds_after}"
    );
    assert_eq!(fds_after, fds_before, "descriptors leaked in the VMM");
    assert_eq!(maps_after, maps_before, "mappings leaked in the VMM");
    assert_eq!(
        daemon_fds_after, daemon_fds_before,
        "descriptors leaked in the daemon"
    );
    assert!(d.conn.window().table().is_empty());
    let stats = d.conn.handler().stats();
    // Every other cycle maps over a live chunk of another file range: unmapped first.
    assert_eq!(stats.unmaps, (CYCLES + 16) + (CYCLES + 16) / 2);
    assert_eq!(stats.maps, (CYCLES + 16) + (CYCLES + 16) / 2);
    assert_eq!(stats.refused + stats.failed, 0);
    d.s.assert_serving();
}
