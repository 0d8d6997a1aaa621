//! Tests of the DAX window: pure validation tables and real mappings of temporary files.

use std::os::unix::fs::{FileExt, MetadataExt};

use super::*;
use crate::dax::testutil::{pattern, perms_at, read_at, tmpfile};

const P: u64 = 4096;
const MB: u64 = 1 << 20;

#[test]
fn validate_range_table() {
    type Expect = Option<fn(&WindowError) -> bool>;
    let size = 16 * P;
    let cases: &[(u64, u64, Expect)] = &[
        (0, P, None),
        (0, 16 * P, None),
        (15 * P, P, None),
        (0, 0, Some(|e| matches!(e, WindowError::ZeroLength))),
        (1, P, Some(|e| matches!(e, WindowError::Unaligned { .. }))),
        (
            0,
            P + 1,
            Some(|e| matches!(e, WindowError::Unaligned { .. })),
        ),
        (
            16 * P,
            P,
            Some(|e| matches!(e, WindowError::OutOfWindow { .. })),
        ),
        (
            15 * P,
            2 * P,
            Some(|e| matches!(e, WindowError::OutOfWindow { .. })),
        ),
        (
            u64::MAX - P + 1,
            P,
            Some(|e| matches!(e, WindowError::Overflow { .. })),
        ),
        (
            P,
            u64::MAX - P + 1,
            Some(|e| matches!(e, WindowError::Overflow { .. })),
        ),
    ];
    for (i, (off, len, expect)) in cases.iter().enumerate() {
        match (validate_range(size, P, *off, *len), expect) {
            (Ok(()), None) => {}
            (Ok(()), Some(_)) => panic!("case {i}: accepted {off:#x}+{len:#x}"),
            (Err(e), None) => panic!("case {i}: refused {off:#x}+{len:#x}: {e}"),
            (Err(e), Some(is)) => {
                assert!(is(&e), "case {i}: wrong error {e:?}");
                assert_eq!(e.errno(), libc::EINVAL, "case {i}");
            }
        }
    }
}

#[test]
fn validate_map_checks_the_file_range() {
    let size = 16 * P;
    assert!(validate_map(size, P, 0, P, 0).is_ok());
    assert!(validate_map(size, P, 0, P, 1 << 40).is_ok());
    assert!(matches!(
        validate_map(size, P, 0, P, 123),
        Err(WindowError::Unaligned {
            file_offset: 123,
            ..
        })
    ));
    // The window-side error wins, but an unaligned error reports the file offset too.
    assert!(matches!(
        validate_map(size, P, 7, P, 123),
        Err(WindowError::Unaligned {
            window_offset: 7,
            file_offset: 123,
            ..
        })
    ));
    assert!(matches!(
        validate_map(size, P, 0, P, u64::MAX - P + 1),
        Err(WindowError::Overflow { .. })
    ));
    // Fits in u64 but not in off_t.
    assert!(matches!(
        validate_map(size, P, 0, P, 1 << 63),
        Err(WindowError::Overflow { .. })
    ));
    assert!(matches!(
        validate_map(size, P, 0, 0, 0),
        Err(WindowError::ZeroLength)
    ));
    assert!(matches!(
        validate_map(size, P, 16 * P, P, 0),
        Err(WindowError::OutOfWindow { .. })
    ));
}

#[test]
fn check_access_table() {
    assert!(check_access(libc::O_RDONLY, false).is_ok());
    assert!(check_access(libc::O_RDWR, false).is_ok());
    assert!(check_access(libc::O_RDWR | libc::O_APPEND, true).is_ok());
    assert!(matches!(
        check_access(libc::O_RDONLY, true),
        Err(WindowError::Access { writable: true })
    ));
    assert!(check_access(libc::O_WRONLY, false).is_err());
    assert!(check_access(libc::O_WRONLY, true).is_err());
    assert_eq!(
        check_access(libc::O_RDONLY, true).unwrap_err().errno(),
        libc::EACCES
    );
}

#[test]
fn new_rejects_bad_sizes() {
    assert!(matches!(
        DaxWindow::new(0),
        Err(WindowError::BadSize { .. })
    ));
    assert!(matches!(
        DaxWindow::new(host_page_size() + 1),
        Err(WindowError::BadSize { .. })
    ));
}

#[test]
fn new_window_is_inaccessible_and_empty() {
    let w = DaxWindow::new(64 * MB).expect("reserve");
    assert_eq!(w.size(), 64 * MB);
    assert_eq!(perms_at(w.host_addr()).as_deref(), Some("---p"));
    assert_eq!(
        perms_at(w.host_addr() + 64 * MB - 1).as_deref(),
        Some("---p")
    );
    assert!(w.table().is_empty());
}

#[test]
fn map_read_only_shows_file_bytes() {
    let page = host_page_size();
    let data = pattern(4 * page as usize, 3);
    let f = tmpfile(&data);
    let w = DaxWindow::new(16 * page).expect("reserve");
    // Map file pages 1..3 at window page 5.
    w.map(5 * page, 2 * page, &f, page, false).expect("map");
    let addr = w.host_addr() + 5 * page;
    assert_eq!(perms_at(addr).as_deref(), Some("r--s"));
    assert_eq!(perms_at(addr - 1).as_deref(), Some("---p"));
    assert_eq!(perms_at(addr + 2 * page).as_deref(), Some("---p"));
    // SAFETY: the range was just mapped readable.
    let seen = unsafe { read_at(addr, 2 * page as usize) };
    assert_eq!(seen, data[page as usize..3 * page as usize]);

    let m = w.table().lookup(6 * page).expect("recorded");
    assert_eq!(
        (m.window_offset, m.len, m.file_offset),
        (5 * page, 2 * page, page)
    );
    assert!(!m.writable);
    let meta = f.metadata().expect("stat");
    assert_eq!(
        m.identity,
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino()
        }
    );
}

#[test]
fn writes_through_a_writable_mapping_reach_the_file() {
    let page = host_page_size();
    let f = tmpfile(&vec![0u8; 2 * page as usize]);
    let w = DaxWindow::new(8 * page).expect("reserve");
    w.map(0, 2 * page, &f, 0, true).expect("map");
    assert_eq!(perms_at(w.host_addr()).as_deref(), Some("rw-s"));
    let msg = b"written through the DAX window";
    // SAFETY: window page 1 is mapped read-write to the file, and nothing else aliases it here.
    unsafe {
        std::ptr::copy_nonoverlapping(
            msg.as_ptr(),
            (w.host_addr() + page + 10) as *mut u8,
            msg.len(),
        )
    };
    let mut back = vec![0u8; msg.len()];
    f.read_exact_at(&mut back, page + 10).expect("pread");
    assert_eq!(&back, msg);
}

#[test]
fn unmap_makes_the_range_inaccessible_again() {
    let page = host_page_size();
    let f = tmpfile(&pattern(4 * page as usize, 9));
    let w = DaxWindow::new(8 * page).expect("reserve");
    w.map(0, 4 * page, &f, 0, false).expect("map");
    // Unmap the middle two pages: the table splits, the placeholder comes back there only.
    w.unmap(page, 2 * page).expect("unmap");
    assert_eq!(perms_at(w.host_addr()).as_deref(), Some("r--s"));
    assert_eq!(perms_at(w.host_addr() + page).as_deref(), Some("---p"));
    assert_eq!(perms_at(w.host_addr() + 2 * page).as_deref(), Some("---p"));
    assert_eq!(perms_at(w.host_addr() + 3 * page).as_deref(), Some("r--s"));
    let snap = w.table().snapshot();
    let shape: Vec<_> = snap
        .iter()
        .map(|m| (m.window_offset, m.len, m.file_offset))
        .collect();
    assert_eq!(shape, vec![(0, page, 0), (3 * page, page, 3 * page)]);
    // Unmapping a hole is fine and changes nothing in the table.
    w.unmap(page, page).expect("unmap hole");
    assert_eq!(w.table().len(), 2);
    w.unmap(0, 8 * page).expect("unmap all");
    assert!(w.table().is_empty());
    assert_eq!(perms_at(w.host_addr()).as_deref(), Some("---p"));
}

#[test]
fn mapping_the_same_range_again_replaces_it() {
    let page = host_page_size();
    let a = tmpfile(&pattern(page as usize, 1));
    let b = tmpfile(&pattern(page as usize, 2));
    let w = DaxWindow::new(4 * page).expect("reserve");
    w.map(page, page, &a, 0, false).expect("map a");
    w.map(page, page, &b, 0, true).expect("map b");
    // SAFETY: window page 1 is mapped readable.
    let seen = unsafe { read_at(w.host_addr() + page, page as usize) };
    assert_eq!(seen, pattern(page as usize, 2));
    assert_eq!(perms_at(w.host_addr() + page).as_deref(), Some("rw-s"));
    assert_eq!(w.table().len(), 1);
    let m = w.table().lookup(page).expect("mapped");
    assert_eq!(m.identity.ino, b.metadata().expect("stat").ino());
    assert!(m.writable);
}

#[test]
fn refused_requests_change_nothing() {
    let page = host_page_size();
    let f = tmpfile(&pattern(2 * page as usize, 5));
    let ro = std::fs::File::open("/proc/self/exe").expect("open read-only");
    let w = DaxWindow::new(4 * page).expect("reserve");
    w.map(0, page, &f, 0, false).expect("map");
    let before: Vec<_> = w
        .table()
        .snapshot()
        .iter()
        .map(|m| (m.window_offset, m.len))
        .collect();
    let bad: Vec<Result<(), WindowError>> = vec![
        w.map(4 * page, page, &f, 0, false),
        w.map(3 * page, 2 * page, &f, 0, false),
        w.map(page + 1, page, &f, 0, false),
        w.map(page, page, &f, 1, false),
        w.map(page, 0, &f, 0, false),
        w.map(u64::MAX - page + 1, page, &f, 0, false),
        w.map(page, page, &ro, 0, true),
        w.unmap(4 * page, page),
        w.unmap(page, 0),
        w.map_zero(1, page),
    ];
    for (i, r) in bad.iter().enumerate() {
        assert!(r.is_err(), "case {i} accepted");
    }
    let after: Vec<_> = w
        .table()
        .snapshot()
        .iter()
        .map(|m| (m.window_offset, m.len))
        .collect();
    assert_eq!(before, after);
    assert_eq!(perms_at(w.host_addr()).as_deref(), Some("r--s"));
    for p in 1..4 {
        assert_eq!(perms_at(w.host_addr() + p * page).as_deref(), Some("---p"));
    }
}

#[test]
fn only_regular_files_are_mapped() {
    let page = host_page_size();
    let w = DaxWindow::new(4 * page).expect("reserve");
    let (sock, _peer) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let dev = std::fs::File::open("/dev/zero").expect("/dev/zero");
    for (what, fd) in [("a socket", sock.as_fd()), ("a device", dev.as_fd())] {
        let err = w.map_fd(0, page, fd, 0, false).expect_err(what);
        assert!(
            matches!(err, WindowError::NotRegularFile { .. }),
            "{what}: {err:?}"
        );
        assert_eq!(err.errno(), libc::EINVAL);
    }
    assert!(w.table().is_empty());
    // A memfd is a regular file.
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new descriptor.
    let fd = unsafe { libc::memfd_create(c"vfsdax-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nothing else owns.
    let memfd = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    memfd.set_len(page).expect("size");
    w.map(0, page, &memfd, 0, false).expect("memfd");
}

#[test]
fn one_descriptor_per_file_however_many_mappings() {
    let page = host_page_size();
    let w = DaxWindow::new(64 * page).expect("reserve");
    let path = std::env::temp_dir().join(format!("vfsdax-kept-{}", std::process::id()));
    std::fs::write(&path, pattern(4 * page as usize, 3)).expect("write");
    let ro = std::fs::File::open(&path).expect("open");
    let ro2 = std::fs::File::open(&path).expect("open again");
    for i in 0..16 {
        let f = if i % 2 == 0 { &ro } else { &ro2 };
        w.map(i * 2 * page, page, f, (i % 4) * page, false)
            .expect("map");
    }
    assert_eq!(w.table().len(), 16);
    assert_eq!(w.kept_files(), 1, "sixteen mappings, one descriptor");
    // A writable mapping needs a writable descriptor: kept from now on.
    let rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open rw");
    w.map(40 * page, page, &rw, 0, true).expect("map rw");
    w.map(42 * page, page, &ro, 0, false).expect("map ro after");
    let snap = w.table().snapshot();
    let rw_file = &snap
        .iter()
        .find(|m| m.window_offset == 40 * page)
        .unwrap()
        .file;
    let later = &snap
        .iter()
        .find(|m| m.window_offset == 42 * page)
        .unwrap()
        .file;
    assert!(
        Arc::ptr_eq(rw_file, later),
        "later mappings share the writable one"
    );
    // Another file has its own.
    let other = tmpfile(&pattern(page as usize, 4));
    w.map(50 * page, page, &other, 0, false).expect("other");
    assert_eq!(
        w.kept_files(),
        3,
        "the read-only one (still mapped), the writable, the other"
    );
    for i in 0..16 {
        w.unmap(i * 2 * page, page).expect("unmap");
    }
    // The remembered unmapped ranges keep their file too; forget them.
    w.table().forget_unmapped();
    assert_eq!(w.kept_files(), 2);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn failed_mmap_leaves_a_placeholder_and_no_entry() {
    let page = host_page_size();
    let f = tmpfile(&pattern(page as usize, 5));
    // A regular file whose filesystem cannot map it.
    let proc_file = std::fs::File::open("/proc/self/status").expect("open");
    let w = DaxWindow::new(4 * page).expect("reserve");
    w.map(page, page, &f, 0, false).expect("map");
    let err = w
        .map_fd(page, page, proc_file.as_fd(), 0, false)
        .expect_err("/proc files cannot be mapped");
    assert!(matches!(err, WindowError::Map(_)), "{err:?}");
    assert_ne!(err.errno(), 0);
    assert_eq!(perms_at(w.host_addr() + page).as_deref(), Some("---p"));
    assert!(w.table().is_empty());
}

#[test]
fn map_zero_gives_zero_pages_and_keeps_the_entry() {
    let page = host_page_size();
    let f = tmpfile(&pattern(page as usize, 8));
    let w = DaxWindow::new(4 * page).expect("reserve");
    w.map(2 * page, page, &f, 0, false).expect("map");
    w.map_zero(2 * page, page).expect("map zero");
    assert_eq!(perms_at(w.host_addr() + 2 * page).as_deref(), Some("rw-p"));
    // SAFETY: the page is mapped read-write (anonymous).
    let seen = unsafe { read_at(w.host_addr() + 2 * page, page as usize) };
    assert!(seen.iter().all(|b| *b == 0));
    assert_eq!(w.table().len(), 1);
    // The file itself was not touched.
    let mut back = vec![0u8; page as usize];
    f.read_exact_at(&mut back, 0).expect("pread");
    assert_eq!(back, pattern(page as usize, 8));
}

#[test]
fn dropped_mappings_release_their_file_descriptors() {
    let page = host_page_size();
    let f = tmpfile(&pattern(page as usize, 4));
    let w = DaxWindow::new(4 * page).expect("reserve");
    w.map(0, page, &f, 0, false).expect("map");
    let dup = w.table().lookup(0).expect("mapped").file;
    let dup_fd = dup.as_raw_fd();
    assert_ne!(dup_fd, f.as_raw_fd());
    assert_eq!(Arc::strong_count(&dup), 2);
    w.unmap(0, page).expect("unmap");
    // Remembered as unmapped (for a fault report naming the file) until mapped again.
    assert_eq!(Arc::strong_count(&dup), 2);
    let g = tmpfile(&pattern(page as usize, 5));
    w.map(0, page, &g, 0, false)
        .expect("map another file there");
    assert_eq!(Arc::strong_count(&dup), 1);
    w.unmap(0, page).expect("unmap");
    w.table().forget_unmapped();
    assert_eq!(w.table().unmapped_len(), 0);
}

#[test]
fn window_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<DaxWindow>();
}
