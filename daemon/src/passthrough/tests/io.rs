//! File handles and data: OPEN, CREATE, READ, WRITE, FLUSH, FSYNC, RELEASE, FALLOCATE,
//! LSEEK, COPY_FILE_RANGE, and the open-reply policy.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use vfsdax_protocol::fuse::flags::{fattr, fopen, init};
use vfsdax_protocol::fuse::{SetattrIn, ROOT_ID};

use super::*;
use crate::passthrough::CachePolicy;

#[test]
fn write_then_read_back_and_host_sees_it() {
    let s = share();
    let (e, h) = s.create("f");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(s.write(e.inode, h, &data, 0).expect("write"), data.len());
    assert_eq!(std::fs::read(s.dir.join("f")).expect("host"), data);
    assert_eq!(
        s.read(e.inode, h, 1000, 5000).expect("read"),
        &data[5000..6000]
    );
    // Short read at end of file, empty past it.
    let tail = s
        .read(e.inode, h, 100, data.len() as u64 - 10)
        .expect("read");
    assert_eq!(tail, &data[data.len() - 10..]);
    assert!(s
        .read(e.inode, h, 100, data.len() as u64 + 10)
        .expect("read")
        .is_empty());
    // Overwrite in the middle.
    s.write(e.inode, h, b"XYZ", 10).expect("write");
    assert_eq!(
        &std::fs::read(s.dir.join("f")).expect("host")[9..14],
        &[data[9], b'X', b'Y', b'Z', data[13]]
    );
    s.fs.flush(ctx(), e.inode, h, 0).expect("flush");
    s.fs.fsync(ctx(), e.inode, true, h).expect("fdatasync");
    s.fs.fsync(ctx(), e.inode, false, h).expect("fsync");
    s.fs.release(ctx(), e.inode, 0, h, true).expect("release");
    assert_eq!(s.fs.handle_count(), 0);
}

#[test]
fn read_only_handle_refuses_write() {
    let s = share();
    std::fs::write(s.dir.join("f"), b"abc").expect("write");
    let e = s.lookup_root("f").expect("lookup");
    let h = s.open(e.inode, libc::O_RDONLY).expect("open");
    assert_eq!(errno(s.write(e.inode, h, b"x", 0)), libc::EBADF);
    let (file, writable) = s.fs.handle_file(h).expect("handle file");
    assert!(!writable);
    assert_eq!(file.metadata().expect("meta").len(), 3);
    let w = s.open(e.inode, libc::O_WRONLY).expect("open");
    assert!(s.fs.handle_file(w).expect("handle").1);
    assert!(s.fs.handle_file(9999).is_none());
}

#[test]
fn append_and_trunc_flags_reach_the_host() {
    let s = share();
    std::fs::write(s.dir.join("f"), b"hello").expect("write");
    let e = s.lookup_root("f").expect("lookup");
    let h = s
        .open(e.inode, libc::O_WRONLY | libc::O_APPEND)
        .expect("open");
    // Without writeback O_APPEND stays: the write lands at the end whatever the offset.
    s.write(e.inode, h, b"!!", 0).expect("write");
    assert_eq!(std::fs::read(s.dir.join("f")).expect("f"), b"hello!!");
    s.open(e.inode, libc::O_WRONLY | libc::O_TRUNC)
        .expect("open trunc");
    assert_eq!(std::fs::read(s.dir.join("f")).expect("f").len(), 0);
}

#[test]
fn writeback_turns_write_only_into_read_write() {
    let s = share_with(|c| c.writeback = true);
    assert_ne!(
        s.fs.init(init::WRITEBACK_CACHE, &NoMapper).expect("init") & init::WRITEBACK_CACHE,
        0
    );
    std::fs::write(s.dir.join("f"), b"hello").expect("write");
    let e = s.lookup_root("f").expect("lookup");
    let h = s
        .open(e.inode, libc::O_WRONLY | libc::O_APPEND)
        .expect("open");
    // The guest page cache may read through a write-only handle.
    assert_eq!(s.read(e.inode, h, 5, 0).expect("read"), b"hello");
    // O_APPEND was dropped: the guest sends the offsets.
    s.write(e.inode, h, b"J", 0).expect("write");
    assert_eq!(std::fs::read(s.dir.join("f")).expect("f"), b"Jello");
    // Not negotiated: a write-only handle stays write-only. (A new INIT is a new session:
    // the old node id is gone.)
    s.fs.init(0, &NoMapper).expect("init");
    let e = s.lookup_root("f").expect("lookup");
    let h = s.open(e.inode, libc::O_WRONLY).expect("open");
    assert_eq!(errno(s.read(e.inode, h, 5, 0)), libc::EBADF);
}

#[test]
fn open_reply_flags_follow_the_cache_policy() {
    for (policy, file, dir) in [
        (CachePolicy::Never, fopen::DIRECT_IO, 0),
        (CachePolicy::Auto, 0, 0),
        (
            CachePolicy::Always,
            fopen::KEEP_CACHE,
            fopen::KEEP_CACHE | fopen::CACHE_DIR,
        ),
    ] {
        let s = share_with(|c| c.cache = policy);
        std::fs::write(s.dir.join("f"), b"x").expect("write");
        let e = s.lookup_root("f").expect("lookup");
        assert_eq!(e.attr_timeout, policy.timeout());
        assert_eq!(e.entry_timeout, policy.timeout());
        let (_, f) =
            s.fs.open(ctx(), e.inode, libc::O_RDONLY as u32, false)
                .expect("open");
        assert_eq!(f, file, "{policy:?}");
        let (_, d) = s.fs.opendir(ctx(), ROOT_ID, 0).expect("opendir");
        assert_eq!(d, dir, "{policy:?}");
        let (_, _, c) =
            s.fs.create(
                ctx(),
                ROOT_ID,
                &cs("c"),
                0o644,
                libc::O_RDWR as u32,
                0,
                false,
            )
            .expect("create");
        assert_eq!(c, file, "{policy:?}");
    }
}

#[test]
fn truncate_grow_zero_fills_and_shrinks() {
    let s = share();
    let (e, h) = s.create("f");
    s.write(e.inode, h, b"abcdef", 0).expect("write");
    let mut a = SetattrIn {
        valid: fattr::SIZE,
        size: 3,
        ..Default::default()
    };
    // Without a handle (the path truncate(2) takes).
    let r = s.fs.setattr(ctx(), e.inode, &a, None).expect("shrink");
    assert_eq!(r.attr.st_size, 3);
    assert_eq!(std::fs::read(s.dir.join("f")).expect("f"), b"abc");
    // Through the handle (ftruncate(2)).
    a.valid |= fattr::FH;
    a.size = 10_000;
    let r = s.fs.setattr(ctx(), e.inode, &a, Some(h)).expect("grow");
    assert_eq!(r.attr.st_size, 10_000);
    let host = std::fs::read(s.dir.join("f")).expect("f");
    assert_eq!(&host[..3], b"abc");
    assert!(host[3..].iter().all(|&b| b == 0));
    assert_eq!(s.read(e.inode, h, 10, 5000).expect("read"), vec![0u8; 10]);
}

#[test]
fn fallocate_and_lseek_data_hole() {
    let s = share();
    let (e, h) = s.create("f");
    s.fs.fallocate(ctx(), e.inode, h, 0, 0, 1 << 20)
        .expect("fallocate");
    assert_eq!(
        std::fs::metadata(s.dir.join("f")).expect("f").len(),
        1 << 20
    );
    // Keep-size allocation does not change the size.
    s.fs.fallocate(
        ctx(),
        e.inode,
        h,
        libc::FALLOC_FL_KEEP_SIZE as u32,
        1 << 20,
        4096,
    )
    .expect("fallocate keep size");
    assert_eq!(
        std::fs::metadata(s.dir.join("f")).expect("f").len(),
        1 << 20
    );

    let (e2, h2) = s.create("sparse");
    s.write(e2.inode, h2, b"data", 4 << 20).expect("write");
    let data =
        s.fs.lseek(ctx(), e2.inode, h2, 0, libc::SEEK_DATA as u32)
            .expect("seek data");
    assert!(data <= 4 << 20, "data at {data}");
    let hole =
        s.fs.lseek(ctx(), e2.inode, h2, 0, libc::SEEK_HOLE as u32)
            .expect("seek hole");
    assert!(hole <= 4 << 20, "hole at {hole}");
    assert_eq!(
        s.fs.lseek(ctx(), e2.inode, h2, 0, libc::SEEK_END as u32)
            .expect("end"),
        (4 << 20) + 4
    );
    assert_eq!(
        errno(s.fs.lseek(ctx(), e2.inode, h2, (4 << 20) + 10, libc::SEEK_DATA as u32)),
        libc::ENXIO
    );
    assert_eq!(errno(s.fs.lseek(ctx(), e2.inode, h2, 0, 99)), libc::EINVAL);
}

#[test]
fn copy_file_range_between_handles() {
    let s = share();
    let (a, ha) = s.create("a");
    let (b, hb) = s.create("b");
    s.write(a.inode, ha, b"0123456789", 0).expect("write");
    let n =
        s.fs.copy_file_range(ctx(), a.inode, ha, 2, b.inode, hb, 4, 5, 0)
            .expect("copy");
    assert_eq!(n, 5);
    assert_eq!(
        std::fs::read(s.dir.join("b")).expect("b"),
        [&[0u8; 4][..], b"23456"].concat()
    );
    assert_eq!(
        errno(s.fs.copy_file_range(ctx(), a.inode, ha, 0, b.inode, hb, 0, 1, 1 << 40)),
        libc::EINVAL
    );
}

#[test]
fn kill_priv_clears_setid_bits_on_write_and_truncating_open() {
    let s = share();
    let (e, h) = s.create("f");
    let p = s.dir.join("f");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o6755)).expect("chmod");
    // A privileged writer (no kill_priv) keeps them.
    s.write(e.inode, h, b"x", 0).expect("write");
    assert_eq!(std::fs::metadata(&p).expect("f").mode() & 0o7777, 0o6755);
    let mut r = VecReader(b"y".to_vec(), 0);
    s.fs.write(ctx(), e.inode, h, &mut r, 1, 0, true)
        .expect("write");
    assert_eq!(std::fs::metadata(&p).expect("f").mode() & 0o7777, 0o755);

    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    s.fs.open(
        ctx(),
        e.inode,
        (libc::O_WRONLY | libc::O_TRUNC) as u32,
        true,
    )
    .expect("open");
    assert_eq!(std::fs::metadata(&p).expect("f").mode() & 0o7777, 0o755);

    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    let a = SetattrIn {
        valid: fattr::SIZE | fattr::KILL_SUIDGID,
        size: 0,
        ..Default::default()
    };
    s.fs.setattr(ctx(), e.inode, &a, None).expect("truncate");
    assert_eq!(std::fs::metadata(&p).expect("f").mode() & 0o7777, 0o755);
}

#[test]
fn directories_open_read_only_and_files_not_as_dirs() {
    let s = share();
    std::fs::write(s.dir.join("f"), b"x").expect("write");
    let f = s.lookup_root("f").expect("lookup");
    assert_eq!(errno(s.fs.opendir(ctx(), f.inode, 0)), libc::ENOTDIR);
    let d =
        s.fs.mkdir(ctx(), ROOT_ID, &cs("d"), 0o755, 0)
            .expect("mkdir");
    assert_eq!(errno(s.open(d.inode, libc::O_RDWR)), libc::EISDIR);
}
