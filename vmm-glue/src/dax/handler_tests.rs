//! Tests of the request handler: validation tables, refusals through the vhost trait, and a real
//! `Backend` → `FrontendReqHandler` round trip into a window.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use vhost::vhost_user::{Backend, FrontendReqHandler};

use super::*;
use crate::dax::testutil::{pattern, perms_at, read_at, tmpfile};
use crate::dax::window::host_page_size;

const P: u64 = 4096;
const C: u64 = DAX_CHUNK_SIZE;

fn req(shmid: u8, fd_offset: u64, shm_offset: u64, len: u64, flags: u64) -> ShmemRequest {
    ShmemRequest {
        shmid,
        fd_offset,
        shm_offset,
        len,
        flags,
    }
}

fn wire(r: &ShmemRequest) -> VhostUserMMap {
    VhostUserMMap {
        shmid: r.shmid,
        fd_offset: r.fd_offset,
        shm_offset: r.shm_offset,
        len: r.len,
        flags: r.flags,
        ..Default::default()
    }
}

/// Bad requests, each with the reason it is bad.
fn bad_requests(size: u64, page: u64) -> Vec<(&'static str, ShmemRequest)> {
    vec![
        ("unknown shmid", req(1, 0, 0, page, 0)),
        ("unknown flags", req(0, 0, 0, page, 0x2)),
        ("zero length", req(0, 0, 0, 0, 0)),
        ("unaligned window offset", req(0, 0, 1, page, 0)),
        ("unaligned length", req(0, 0, 0, page - 1, 0)),
        ("outside the window", req(0, 0, size, page, 0)),
        ("crossing the end", req(0, 0, size - page, 2 * page, 0)),
        ("window overflow", req(0, 0, u64::MAX - page + 1, page, 0)),
        ("huge length", req(0, 0, page, u64::MAX - page + 1, 0)),
    ]
}

#[test]
fn shmem_request_copies_the_wire_fields() {
    let w = wire(&req(3, 0x1000, 0x2000, 0x3000, 1));
    let r = ShmemRequest::from(&w);
    assert_eq!(r, req(3, 0x1000, 0x2000, 0x3000, 1));
    assert!(r.writable());
    assert!(!req(0, 0, 0, 0, 0).writable());
}

#[test]
fn requests_stay_inside_one_chunk_anchored_at_an_end() {
    // Whole chunks, the file part the truncation guard keeps (from the chunk's start) and the
    // substitute it maps (up to the chunk's end).
    for (off, len) in [
        (0, C),
        (3 * C, C),
        (C, P),
        (C, C - P),
        (2 * C - P, P),
        (C + P, C - P),
    ] {
        check_chunked(off, len).unwrap_or_else(|e| panic!("{off:#x}+{len:#x}: {e}"));
    }
    for (off, len) in [
        (P, P),         // the middle of a chunk: one of 512 pieces
        (C + P, 2 * P), // also
        (C - P, 2 * P), // across a chunk boundary
        (0, 2 * C),     // two chunks at once
        (0, 0),
        // In the last chunk of the address space, where its end does not fit in 64 bits.
        (u64::MAX - C + 1 + P, C),
    ] {
        assert!(
            matches!(
                check_chunked(off, len),
                Err(RequestError::NotChunked { .. })
            ),
            "{off:#x}+{len:#x}"
        );
    }
}

#[test]
fn the_last_chunk_of_the_address_space_is_refused_without_overflow() {
    // Chunk-shaped requests there (its first and its last page) pass the chunk check; the
    // window bounds refuse them.
    for off in [u64::MAX - C + 1, u64::MAX - P + 1] {
        let r = req(0, 0, off, P, 0);
        check_chunked(r.shm_offset, r.len).expect("chunk-shaped");
        let e = validate_map_request(&r, 4 * C, P).expect_err("outside the window");
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(validate_unmap_request(&r, 4 * C, P).is_err());
    }
}

#[test]
fn validation_table() {
    let size = 4 * C;
    for (why, r) in bad_requests(size, P) {
        let m = validate_map_request(&r, size, P).expect_err(why);
        let u = validate_unmap_request(&r, size, P).expect_err(why);
        assert_eq!(m.errno(), libc::EINVAL, "{why}");
        assert_eq!(u.errno(), libc::EINVAL, "{why}");
        assert!(m.is_refusal() && u.is_refusal(), "{why}");
    }
    assert!(matches!(
        validate_map_request(&req(1, 0, 0, P, 0), size, P),
        Err(RequestError::UnknownRegion { shmid: 1 })
    ));
    assert!(matches!(
        validate_map_request(&req(0, 0, 0, P, 1 << 7), size, P),
        Err(RequestError::UnknownFlags { flags: 0x80 })
    ));
    // Map-only checks on the file offset.
    for fd_offset in [1, P + 7, u64::MAX - P + 1] {
        let r = req(0, fd_offset, 0, P, 0);
        assert!(validate_map_request(&r, size, P).is_err(), "{fd_offset:#x}");
        assert!(
            validate_unmap_request(&r, size, P).is_ok(),
            "{fd_offset:#x}"
        );
    }
    assert!(validate_map_request(&req(0, 5 * P, C - P, P, 1), size, P).is_ok());
    assert!(validate_unmap_request(&req(0, 0, 3 * C, C, 0), size, P).is_ok());
    // The whole window at once is not one chunk.
    assert!(validate_unmap_request(&req(0, 0, 0, size, 0), size, P).is_err());
}

#[test]
fn bad_requests_are_refused_with_nothing_mapped() {
    let page = host_page_size();
    let size = 2 * C;
    let window = Arc::new(DaxWindow::new(size).expect("reserve"));
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    let h = DaxRequestHandler::with_observer(
        Arc::clone(&window),
        Box::new(move |e| seen.lock().expect("events").push(*e)),
    );
    let f = tmpfile(&pattern(2 * page as usize, 1));
    h.shmem_map(&wire(&req(0, 0, 0, page, 0)), &f)
        .expect("good map");
    let before: Vec<_> = window
        .table()
        .snapshot()
        .iter()
        .map(|m| (m.window_offset, m.len, m.file_offset))
        .collect();

    let bad = bad_requests(size, page);
    for (why, r) in &bad {
        let e = h.shmem_map(&wire(r), &f).expect_err(why);
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{why}");
        let e = h.shmem_unmap(&wire(r)).expect_err(why);
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{why}");
    }
    // An unaligned file offset, and a writable map of a read-only descriptor.
    let e = h
        .shmem_map(&wire(&req(0, 1, page, page, 0)), &f)
        .expect_err("fd_offset");
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let ro = std::fs::File::open("/proc/self/exe").expect("open read-only");
    let e = h
        .shmem_map(&wire(&req(0, 0, C, page, 1)), &ro)
        .expect_err("read-only fd");
    assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    // A device (here /dev/zero; /dev/mem would give the guest host memory) is not a file.
    let dev = std::fs::File::open("/dev/zero").expect("open /dev/zero");
    let e = h
        .shmem_map(&wire(&req(0, 0, C, page, 0)), &dev)
        .expect_err("a device");
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let e = h
        .shmem_map(&wire(&req(0, 0, C, page, 0)), &-1)
        .expect_err("fd -1");
    assert_eq!(e.raw_os_error(), Some(libc::EBADF));

    let after: Vec<_> = window
        .table()
        .snapshot()
        .iter()
        .map(|m| (m.window_offset, m.len, m.file_offset))
        .collect();
    assert_eq!(before, after);
    assert_eq!(perms_at(window.host_addr()).as_deref(), Some("r--s"));
    for p in (1..16).chain([C / page]) {
        assert_eq!(
            perms_at(window.host_addr() + p * page).as_deref(),
            Some("---p"),
            "page {p}"
        );
    }
    let stats = h.stats();
    assert_eq!(stats.maps, 1);
    assert_eq!(stats.unmaps, 0);
    assert_eq!(stats.refused, 2 * bad.len() as u64 + 3);
    assert_eq!(stats.failed, 0);
    let events = events.lock().expect("events");
    // The -1 descriptor is refused before the handler's accounting sees a request.
    assert_eq!(events.len() as u64, 1 + stats.refused);
    assert!(matches!(events[0], DaxEvent::Mapped(_)));
    assert!(events[1..]
        .iter()
        .all(|e| matches!(e, DaxEvent::Refused { .. })));
}

#[test]
fn failed_mmap_is_counted_as_failure() {
    let page = host_page_size();
    let window = Arc::new(DaxWindow::new(4 * page).expect("reserve"));
    let h = DaxRequestHandler::new(Arc::clone(&window));
    // A regular file whose filesystem cannot map it.
    let proc_file = std::fs::File::open("/proc/self/status").expect("open");
    let e = h
        .map(&req(0, 0, 0, page, 0), proc_file.as_fd())
        .expect_err("/proc files cannot be mapped");
    assert!(!e.is_refusal());
    assert_eq!(h.stats().failed, 1);
    assert!(window.table().is_empty());
}

/// A backend request channel: the daemon-side `Backend` and the VMM-side server.
fn channel(handler: Arc<DaxRequestHandler>) -> (Backend, FrontendReqHandler<DaxRequestHandler>) {
    let mut server = FrontendReqHandler::new(handler).expect("request handler");
    server.set_reply_ack_flag(true);
    // SAFETY: dup only creates a new descriptor; the result is checked before use.
    let tx = unsafe { libc::dup(server.get_tx_raw_fd()) };
    assert!(tx >= 0, "dup: {}", io::Error::last_os_error());
    // SAFETY: `tx` is a fresh descriptor from dup that nothing else owns.
    let tx = UnixStream::from(unsafe { OwnedFd::from_raw_fd(tx) });
    let backend = Backend::from_stream(tx);
    backend.set_reply_ack_flag(true);
    backend.set_shmem_flag(true);
    (backend, server)
}

/// Serves exactly `n` requests on a thread, returning each result's errno (0 for success).
fn serve(
    mut server: FrontendReqHandler<DaxRequestHandler>,
    n: usize,
) -> std::thread::JoinHandle<Vec<i32>> {
    std::thread::spawn(move || {
        (0..n)
            .map(|_| match server.handle_request() {
                Ok(_) => 0,
                Err(vhost::vhost_user::Error::ReqHandlerError(e)) => e.raw_os_error().unwrap_or(-1),
                Err(e) => panic!("request channel failed: {e}"),
            })
            .collect()
    })
}

#[test]
fn round_trip_through_the_backend_channel() {
    let page = host_page_size();
    let size = 4 * C;
    let window = Arc::new(DaxWindow::new(size).expect("reserve"));
    let handler = Arc::new(DaxRequestHandler::new(Arc::clone(&window)));
    let at = |off: u64| window.host_addr() + off;
    let (backend, server) = channel(Arc::clone(&handler));
    let server = serve(server, 6);

    let data = pattern(8 * page as usize, 42);
    let file = tmpfile(&data);
    // 1: map file pages 2..6 read-only at the start of chunk 1.
    backend
        .shmem_map(&wire(&req(0, 2 * page, C, 4 * page, 0)), &file)
        .expect("map");
    // SAFETY: the range was mapped readable by the request just acknowledged.
    let seen = unsafe { read_at(at(C), 4 * page as usize) };
    assert_eq!(seen, data[2 * page as usize..6 * page as usize]);
    assert_eq!(perms_at(at(C)).as_deref(), Some("r--s"));

    // 2: map file page 0 writable at window page 0 and write through it.
    backend
        .shmem_map(&wire(&req(0, 0, 0, page, 1)), &file)
        .expect("map writable");
    // SAFETY: window page 0 is mapped read-write to the file.
    unsafe { *(window.host_addr() as *mut u8).add(5) = 0xa5 };
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, 5).expect("pread");
    assert_eq!(b[0], 0xa5);

    // 3: unknown shmid, 4: outside the window: refused, nothing changes.
    assert!(backend
        .shmem_map(&wire(&req(2, 0, 0, page, 0)), &file)
        .is_err());
    assert!(backend
        .shmem_map(&wire(&req(0, 0, size, page, 0)), &file)
        .is_err());
    assert_eq!(window.table().len(), 2);

    // 5: unmap the read-only range.
    backend
        .shmem_unmap(&wire(&req(0, 0, C, 4 * page, 0)))
        .expect("unmap");
    assert_eq!(perms_at(at(C)).as_deref(), Some("---p"));
    // 6: re-map window page 0 read-only from another file: replaces the writable mapping.
    let other = tmpfile(&pattern(page as usize, 7));
    backend
        .shmem_map(&wire(&req(0, 0, 0, page, 0)), &other)
        .expect("replace");
    // SAFETY: window page 0 is mapped readable.
    let seen = unsafe { read_at(window.host_addr(), page as usize) };
    assert_eq!(seen, pattern(page as usize, 7));
    assert_eq!(perms_at(window.host_addr()).as_deref(), Some("r--s"));

    let errnos = server.join().expect("server thread");
    assert_eq!(errnos, vec![0, 0, libc::EINVAL, libc::EINVAL, 0, 0]);
    assert_eq!(
        handler.stats(),
        DaxStats {
            maps: 3,
            unmaps: 1,
            refused: 2,
            failed: 0
        }
    );
    assert_eq!(window.table().len(), 1);
}
