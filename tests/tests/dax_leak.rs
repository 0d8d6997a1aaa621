//! The DAX path without a VM: the daemon's `DaxState` and `BackendMapper` on one end of a real
//! vhost-user backend request channel, the VMM library's `DaxRequestHandler` and `DaxWindow` on
//! the other.
//!
//! - `map_unmap_cycles_leak_nothing`: 100,000 SETUPMAPPING/REMOVEMAPPING cycles leave no file
//!   descriptor, no host mapping and no table entry behind (`/proc/self/fd`, `/proc/self/maps`).
//! - `file_bytes_through_the_window`: bytes visible and writable through the window, removal,
//!   replacement, and bad requests refused with nothing mapped and both tables unchanged.
//!
//! The tests take a process-wide lock so nothing else opens files or maps memory while the leak
//! test counts.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vfsdax_daemon::dax::{BackendMapper, DaxState, Mapper, Plan, SetupMapping};
use vfsdax_protocol::fuse::flags::{SETUPMAPPING_FLAG_READ, SETUPMAPPING_FLAG_WRITE};
use vfsdax_tests::dax::{fd_count, maps_count, perms_at, serialized};
use vfsdax_vmm_glue::dax::window::host_page_size;
use vfsdax_vmm_glue::dax::{DaxRequestHandler, DaxServer, DaxStats, DaxWindow, ServeEnd};
use vhost::vhost_user::message::VhostUserMMap;
use vhost::vhost_user::{Backend, FrontendReqHandler, VhostUserFrontendReqHandler};

const CYCLES: u64 = 100_000;
const R: u64 = SETUPMAPPING_FLAG_READ;
const W: u64 = SETUPMAPPING_FLAG_WRITE;

fn tmpfile(tag: &str, bytes: &[u8]) -> File {
    let path = std::env::temp_dir().join(format!("vfsdax-dax-{tag}-{}", std::process::id()));
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create temporary file");
    std::fs::remove_file(&path).expect("unlink temporary file");
    f.write_all(bytes).expect("fill temporary file");
    f
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(17))
        .collect()
}

/// Both ends of the DAX path, connected.
struct Path {
    window: Arc<DaxWindow>,
    handler: Arc<DaxRequestHandler>,
    server: DaxServer,
    mapper: BackendMapper,
}

fn connect(window_size: u64) -> Path {
    let window = Arc::new(DaxWindow::new(window_size).expect("reserve window"));
    let handler = Arc::new(DaxRequestHandler::new(Arc::clone(&window)));
    let mut channel = FrontendReqHandler::new(Arc::clone(&handler)).expect("request channel");
    channel.set_reply_ack_flag(true);
    // SAFETY: dup only creates a new descriptor; the result is checked before use.
    let tx = unsafe { libc::dup(channel.get_tx_raw_fd()) };
    assert!(tx >= 0, "dup: {}", std::io::Error::last_os_error());
    // SAFETY: `tx` is a fresh descriptor from dup that nothing else owns.
    let backend = Backend::from_stream(UnixStream::from(unsafe { OwnedFd::from_raw_fd(tx) }));
    // What vhost-user-backend does once REPLY_ACK and SHMEM are acked.
    backend.set_reply_ack_flag(true);
    backend.set_shmem_flag(true);
    let server = DaxServer::spawn(channel).expect("request thread");
    Path {
        window,
        handler,
        server,
        mapper: BackendMapper::new(backend),
    }
}

#[allow(clippy::too_many_arguments)]
fn req(
    file: &File,
    writable_file: bool,
    inode: u64,
    foffset: u64,
    moffset: u64,
    len: u64,
    flags: u64,
) -> SetupMapping<'_> {
    SetupMapping {
        inode,
        handle: None,
        file,
        file_writable: writable_file,
        foffset,
        moffset,
        len,
        flags,
        plan: Plan {
            open_writable: writable_file,
            map_writable: flags & W != 0,
            window_writable: flags & W != 0,
            inside_file: false,
        },
    }
}

#[test]
fn map_unmap_cycles_leak_nothing() {
    let _alone = serialized();
    let fds_at_start = fd_count();
    let page = host_page_size();
    let window_pages = 64;
    let file_pages = 16;
    let file = tmpfile("leak", &pattern((file_pages * page) as usize, 1));
    let path = connect(window_pages * page);
    let state = DaxState::new(window_pages * page, page);

    let cycle = |i: u64| {
        // Vary the window slot, the file range, the length and the protection; every other
        // cycle maps twice over the same slot (a replacing map) before removing.
        let len = (1 + i % 3) * page;
        let slot = (i * 7 % (window_pages - 3)) * page;
        let foffset = (i % (file_pages - 3)) * page;
        let flags = if i.is_multiple_of(2) { R | W } else { R };
        state
            .setup_mapping(
                &path.mapper,
                &req(&file, true, 9, foffset, slot, len, flags),
            )
            .expect("map");
        if i % 2 == 1 {
            state
                .setup_mapping(&path.mapper, &req(&file, true, 9, 0, slot, len, R))
                .expect("replacing map");
        }
        state
            .remove_mapping(&path.mapper, slot, len)
            .expect("unmap");
    };

    // Warm up (allocator arenas, lazily created thread state), then count.
    for i in 0..16 {
        cycle(i);
    }
    // The glue remembers unmapped ranges with their files (a bounded cache for fault
    // reports): emptied before each count.
    path.window.table().forget_unmapped();
    let fds_before = fd_count();
    let maps_before = maps_count();
    for i in 0..CYCLES {
        cycle(i);
    }
    path.window.table().forget_unmapped();
    let fds_after = fd_count();
    let maps_after = maps_count();
    let stats = path.handler.stats();
    println!(
        "{CYCLES} cycles: fds {fds_before} -> {fds_after}, maps lines {maps_before} -> \
         {maps_after}, stats {stats:?}"
    );
    assert_eq!(fds_after, fds_before, "file descriptors leaked");
    assert_eq!(maps_after, maps_before, "host mappings leaked");
    assert!(path.window.table().is_empty(), "VMM table entries left");
    assert!(state.is_empty(), "daemon table entries left");
    // The daemon maps chunk by chunk (here a page) and unmaps a live chunk before another
    // lands on it: both sides counted the same requests.
    let daemon = state.stats();
    assert_eq!(stats.maps, daemon.chunks_mapped);
    assert_eq!(stats.unmaps, daemon.chunks_unmapped);
    assert!(stats.maps > CYCLES + 16, "{stats:?}");
    assert_eq!(stats.refused + stats.failed, 0);

    // Tear down: the thread, the channel and the window's descriptors all go away.
    let Path {
        window,
        handler,
        server,
        mapper,
    } = path;
    assert!(matches!(server.stop(), ServeEnd::Stopped));
    drop(mapper);
    drop(file);
    assert_eq!(
        Arc::strong_count(&window),
        2,
        "only the handler and us hold the window"
    );
    drop(handler);
    drop(window);
    assert_eq!(fd_count(), fds_at_start, "descriptors left after teardown");
}

#[test]
fn file_bytes_through_the_window() {
    let _alone = serialized();
    let page = host_page_size();
    let size = 32 * page;
    let path = connect(size);
    let state = DaxState::new(size, page);
    let base = path.window.host_addr();
    let data = pattern((8 * page) as usize, 3);
    let file = tmpfile("bytes", &data);

    // Read-only: file pages 2..4 at window page 4.
    state
        .setup_mapping(
            &path.mapper,
            &req(&file, false, 5, 2 * page, 4 * page, 2 * page, R),
        )
        .expect("setup read-only");
    // SAFETY: window pages 4..6 were mapped readable by the acknowledged request.
    let seen =
        unsafe { std::slice::from_raw_parts((base + 4 * page) as *const u8, 2 * page as usize) };
    assert_eq!(seen, &data[2 * page as usize..4 * page as usize]);
    assert_eq!(perms_at(base + 4 * page).as_deref(), Some("r--s"));

    // Writable: file page 0 at window page 0; a write through the window reaches the file.
    state
        .setup_mapping(&path.mapper, &req(&file, true, 5, 0, 0, page, R | W))
        .expect("setup writable");
    let msg = b"through the DAX window";
    // SAFETY: window page 0 is mapped read-write to the file; nothing else aliases it here.
    unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), (base + 100) as *mut u8, msg.len()) };
    let mut back = vec![0u8; msg.len()];
    file.read_exact_at(&mut back, 100).expect("pread");
    assert_eq!(&back, msg);

    // Bad requests: refused by the daemon, nothing reaches the VMM, both tables unchanged.
    let before_daemon = state.snapshot();
    let before_vmm: Vec<_> = path
        .window
        .table()
        .snapshot()
        .iter()
        .map(|m| (m.window_offset, m.len))
        .collect();
    let stats_before = path.handler.stats();
    let bad = [
        ("outside the window", req(&file, true, 5, 0, size, page, R)),
        (
            "crossing the end",
            req(&file, true, 5, 0, size - page, 2 * page, R),
        ),
        (
            "unaligned window offset",
            req(&file, true, 5, 0, 7, page, R),
        ),
        (
            "unaligned file offset",
            req(&file, true, 5, 7, 8 * page, page, R),
        ),
        (
            "unaligned length",
            req(&file, true, 5, 0, 8 * page, page - 1, R),
        ),
        (
            "moffset + len overflows",
            req(&file, true, 5, 0, u64::MAX - page + 1, page, R),
        ),
        (
            "WRITE on a read-only file",
            req(&file, false, 5, 0, 8 * page, page, R | W),
        ),
        ("zero length", req(&file, true, 5, 0, 8 * page, 0, R)),
        (
            "unknown flags",
            req(&file, true, 5, 0, 8 * page, page, 0x40),
        ),
    ];
    for (why, r) in &bad {
        let e = state.setup_mapping(&path.mapper, r).expect_err(why);
        assert!(e.errno() > 0, "{why}");
    }
    assert!(state
        .remove_mappings(&path.mapper, &[(0, page), (3, page)])
        .is_err());
    assert_eq!(state.snapshot(), before_daemon);
    let after_vmm: Vec<_> = path
        .window
        .table()
        .snapshot()
        .iter()
        .map(|m| (m.window_offset, m.len))
        .collect();
    assert_eq!(after_vmm, before_vmm);
    assert_eq!(
        path.handler.stats(),
        stats_before,
        "a bad request reached the VMM"
    );
    for p in (6..32).chain(1..4) {
        assert_eq!(
            perms_at(base + p * page).as_deref(),
            Some("---p"),
            "page {p}"
        );
    }

    // Requests the daemon lets through but the VMM refuses (a daemon configured with a larger
    // window than the VMM's; an unknown shmid): errors, nothing mapped.
    let big = DaxState::new(2 * size, page);
    let e = big
        .setup_mapping(&path.mapper, &req(&file, true, 5, 0, size, page, R))
        .expect_err("outside the VMM's window");
    assert_eq!(
        e.errno(),
        libc::EIO,
        "vhost 0.18 reports frontend refusals without errno"
    );
    assert!(big.is_empty());
    let shmid1 = VhostUserMMap {
        shmid: 1,
        len: page,
        ..Default::default()
    };
    assert!(path.mapper.backend().shmem_map(&shmid1, &file).is_err());
    assert_eq!(
        path.handler.stats(),
        DaxStats {
            refused: stats_before.refused + 2,
            ..stats_before
        }
    );

    // Remove the read-only range: inaccessible again, gone from both tables.
    state
        .remove_mappings(&path.mapper, &[(4 * page, 2 * page)])
        .expect("remove");
    assert_eq!(perms_at(base + 4 * page).as_deref(), Some("---p"));
    assert!(state.lookup(4 * page).is_none());
    assert!(path.window.table().lookup(4 * page).is_none());

    // Map window page 0 again from another file: the old mapping is replaced on both sides.
    let other = tmpfile("other", &pattern(page as usize, 9));
    state
        .setup_mapping(&path.mapper, &req(&other, false, 6, 0, 0, page, R))
        .expect("replace");
    // SAFETY: window page 0 is mapped readable.
    let seen = unsafe { std::slice::from_raw_parts(base as *const u8, page as usize) };
    assert_eq!(seen, pattern(page as usize, 9).as_slice());
    assert_eq!(perms_at(base).as_deref(), Some("r--s"));
    assert_eq!(state.len(), 1);
    assert_eq!(state.lookup(0).expect("daemon entry").inode, 6);
    assert_eq!(path.window.table().len(), 1);

    // The frontend goes away: the daemon forgets everything without unmapping.
    assert_eq!(state.clear(), 1);
    let stats = path.handler.stats();
    assert!(matches!(path.server.stop(), ServeEnd::Stopped));
    // Two read-only pages, one writable page, the replacing page; the two read-only pages
    // removed and the replaced page unmapped first.
    assert_eq!(stats.maps, 4);
    assert_eq!(stats.unmaps, 3);
    // With the request thread gone, the mapper reports the channel as unusable.
    assert!(path.mapper.unmap(0, page).is_err());
}
