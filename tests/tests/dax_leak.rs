//! The DAX path without a VM: the daemon's `DaxState` and `BackendMapper` on one end of a real
//! vhost-user backend request channel, the VMM library's `DaxRequestHandler` and `DaxWindow` on
//! the other. Both sides work in the 2 MiB chunks Linux guests map ([`DAX_CHUNK_SIZE`]): the
//! daemon maps and unmaps whole chunks, the glue refuses anything but a whole chunk or a piece of
//! one anchored at its start or end, in a window of whole chunks.
//!
//! - `map_unmap_cycles_leak_nothing`: 100,000 SETUPMAPPING/REMOVEMAPPING cycles leave no file
//!   descriptor, no host mapping and no table entry behind (`/proc/self/fd`, `/proc/self/maps`).
//! - `file_bytes_through_the_window`: bytes visible and writable through the window, removal,
//!   replacement, and bad requests refused (by the daemon, or by the glue when a daemon
//!   configured differently lets them through) with nothing mapped and both tables unchanged.
//!
//! The tests take a process-wide lock so nothing else opens files or maps memory while the leak
//! test counts.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vfsdax_daemon::dax::{BackendMapper, DaxError, DaxState, Mapper, Plan, SetupMapping};
use vfsdax_protocol::dax::DAX_CHUNK_SIZE;
use vfsdax_protocol::fuse::flags::{SETUPMAPPING_FLAG_READ, SETUPMAPPING_FLAG_WRITE};
use vfsdax_tests::dax::{fd_count, maps_count, perms_at, serialized};
use vfsdax_vmm_glue::dax::window::host_page_size;
use vfsdax_vmm_glue::dax::{DaxRequestHandler, DaxServer, DaxStats, DaxWindow, ServeEnd};
use vhost::vhost_user::message::VhostUserMMap;
use vhost::vhost_user::{Backend, FrontendReqHandler, VhostUserFrontendReqHandler};

const CYCLES: u64 = 100_000;
const R: u64 = SETUPMAPPING_FLAG_READ;
const W: u64 = SETUPMAPPING_FLAG_WRITE;
/// The chunk both sides map in: 2 MiB.
const C: u64 = DAX_CHUNK_SIZE;

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

/// Asserts `seen == expected`, naming the first differing offset rather than printing megabytes.
fn assert_same(seen: &[u8], expected: &[u8], what: &str) {
    assert_eq!(seen.len(), expected.len(), "{what}: length");
    if let Some(i) = seen.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i:#x}: {:#04x} instead of {:#04x}",
            seen[i], expected[i]
        );
    }
}

/// `(window offset, length)` of every mapping in the glue's table.
fn vmm_ranges(path: &Path) -> Vec<(u64, u64)> {
    path.window
        .table()
        .snapshot()
        .iter()
        .map(|m| (m.window_offset, m.len))
        .collect()
}

#[test]
fn map_unmap_cycles_leak_nothing() {
    let _alone = serialized();
    let fds_at_start = fd_count();
    let window_chunks = 64;
    let file_chunks = 16;
    // 32 MiB, sparse past the first chunk: the cycles never touch the bytes.
    let file = tmpfile("leak", &pattern(C as usize, 1));
    file.set_len(file_chunks * C)
        .expect("extend temporary file");
    let path = connect(window_chunks * C);
    let state = DaxState::with_linux_chunks(window_chunks * C);
    assert_eq!(state.alignment(), C);

    let cycle = |i: u64| {
        // Vary the window slot, the file range, the length (one to three chunks) and the
        // protection; every other cycle maps twice over the same slot (a replacing map) before
        // removing.
        let len = (1 + i % 3) * C;
        let slot = (i * 7 % (window_chunks - 3)) * C;
        let foffset = (i % (file_chunks - 3)) * C;
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
    assert_eq!(path.window.kept_files(), 0, "VMM file descriptors kept");
    assert!(state.is_empty(), "daemon table entries left");
    assert_eq!(state.file_count(), 0, "daemon file descriptors kept");
    // The daemon maps chunk by chunk (2 MiB, one SHMEM_MAP each) and unmaps a live chunk
    // before another lands on it: both sides counted the same requests.
    let daemon = state.stats();
    assert_eq!(stats.maps, daemon.chunks_mapped);
    assert_eq!(stats.unmaps, daemon.chunks_unmapped);
    assert!(stats.maps > CYCLES + 16, "{stats:?}");
    assert_eq!(stats.refused + stats.failed, 0);
    assert_eq!(daemon.setups_refused, 0);

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

/// Whether a daemon error is the refusal a bad request's label names.
type Reason = fn(&DaxError) -> bool;

fn unaligned(e: &DaxError) -> bool {
    matches!(e, DaxError::Unaligned { alignment, .. } if *alignment == C)
}

fn out_of_window(e: &DaxError) -> bool {
    matches!(e, DaxError::OutOfWindow { .. })
}

fn overflow(e: &DaxError) -> bool {
    matches!(e, DaxError::Overflow { .. })
}

#[test]
fn file_bytes_through_the_window() {
    let _alone = serialized();
    let page = host_page_size();
    let chunks = 32;
    let size = chunks * C;
    let path = connect(size);
    let state = DaxState::with_linux_chunks(size);
    let base = path.window.host_addr();
    let at = |chunk: u64| base + chunk * C;
    let data = pattern((8 * C) as usize, 3);
    let file = tmpfile("bytes", &data);

    // Read-only: file chunks 2..4 at window chunk 4, one SHMEM_MAP per chunk.
    state
        .setup_mapping(&path.mapper, &req(&file, false, 5, 2 * C, 4 * C, 2 * C, R))
        .expect("setup read-only");
    // SAFETY: window chunks 4..6 were mapped readable by the acknowledged requests.
    let seen = unsafe { std::slice::from_raw_parts(at(4) as *const u8, 2 * C as usize) };
    assert_same(
        seen,
        &data[2 * C as usize..4 * C as usize],
        "read-only chunks",
    );
    assert_eq!(perms_at(at(4)).as_deref(), Some("r--s"));
    assert_eq!(perms_at(at(6) - page).as_deref(), Some("r--s"));
    assert_eq!(vmm_ranges(&path), [(4 * C, C), (5 * C, C)]);
    assert_eq!(state.len(), 2);

    // Writable: file chunk 0 at window chunk 0; writes through the window, at the chunk's start
    // and at its end, reach the file.
    state
        .setup_mapping(&path.mapper, &req(&file, true, 5, 0, 0, C, R | W))
        .expect("setup writable");
    let msg = b"through the DAX window";
    for offset in [100, C - msg.len() as u64] {
        // SAFETY: window chunk 0 is mapped read-write to the file; nothing else aliases it here.
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), (base + offset) as *mut u8, msg.len())
        };
        let mut back = vec![0u8; msg.len()];
        file.read_exact_at(&mut back, offset).expect("pread");
        assert_eq!(&back, msg, "at {offset:#x}");
    }

    // Bad requests: refused by the daemon for the reason given, nothing reaches the VMM, both
    // tables unchanged.
    let before_daemon = state.snapshot();
    let before_vmm = vmm_ranges(&path);
    let stats_before = path.handler.stats();
    let refused_before = state.stats().setups_refused;
    let bad: [(&str, SetupMapping<'_>, Reason); 14] = [
        (
            "outside the window",
            req(&file, true, 5, 0, size, C, R),
            out_of_window,
        ),
        (
            "crossing the end",
            req(&file, true, 5, 0, size - C, 2 * C, R),
            out_of_window,
        ),
        (
            "unaligned window offset",
            req(&file, true, 5, 0, 7, C, R),
            unaligned,
        ),
        (
            "window offset a page into a chunk",
            req(&file, true, 5, 0, 8 * C + page, C, R),
            unaligned,
        ),
        (
            "unaligned file offset",
            req(&file, true, 5, 7, 8 * C, C, R),
            unaligned,
        ),
        (
            "file offset a page into a chunk",
            req(&file, true, 5, page, 8 * C, C, R),
            unaligned,
        ),
        (
            "unaligned length",
            req(&file, true, 5, 0, 8 * C, C - 1, R),
            unaligned,
        ),
        (
            "length a page short of a chunk",
            req(&file, true, 5, 0, 8 * C, C - page, R),
            unaligned,
        ),
        (
            "a piece in the middle of a chunk",
            req(&file, true, 5, 0, 8 * C + page, page, R),
            unaligned,
        ),
        (
            "moffset + len overflows",
            req(&file, true, 5, 0, u64::MAX - C + 1, C, R),
            overflow,
        ),
        (
            "foffset + len past off_t",
            req(&file, true, 5, 1 << 63, 8 * C, C, R),
            overflow,
        ),
        (
            "WRITE on a read-only file",
            req(&file, false, 5, 0, 8 * C, C, R | W),
            |e| matches!(e, DaxError::NotWritable),
        ),
        ("zero length", req(&file, true, 5, 0, 8 * C, 0, R), |e| {
            matches!(e, DaxError::ZeroLength)
        }),
        (
            "unknown flags",
            req(&file, true, 5, 0, 8 * C, C, 0x40),
            |e| matches!(e, DaxError::UnknownFlags { flags: 0x40 }),
        ),
    ];
    for (why, r, reason) in &bad {
        let e = state.setup_mapping(&path.mapper, r).expect_err(why);
        assert!(e.errno() > 0, "{why}");
        assert!(reason(&e), "{why}: refused for another reason: {e:?}");
    }
    assert_eq!(
        state.stats().setups_refused,
        refused_before + bad.len() as u64
    );
    // A REMOVEMAPPING batch with one bad entry changes nothing, the good entries included.
    let bad_removals: [(&str, _, Reason); 5] = [
        ("unaligned window offset", [(0, C), (3, C)], unaligned),
        (
            "window offset a page into a chunk",
            [(0, C), (C + page, C)],
            unaligned,
        ),
        (
            "a piece in the middle of a chunk",
            [(0, C), (8 * C + page, page)],
            unaligned,
        ),
        ("outside the window", [(0, C), (size, C)], out_of_window),
        (
            "moffset + len overflows",
            [(0, C), (u64::MAX - C + 1, C)],
            overflow,
        ),
    ];
    for (why, entries, reason) in &bad_removals {
        let e = state.remove_mappings(&path.mapper, entries).expect_err(why);
        assert!(reason(&e), "{why}: refused for another reason: {e:?}");
    }
    assert_eq!(state.snapshot(), before_daemon);
    assert_eq!(vmm_ranges(&path), before_vmm);
    assert_eq!(
        path.handler.stats(),
        stats_before,
        "a bad request reached the VMM"
    );

    // Requests a daemon lets through but the VMM refuses, each with nothing mapped: a daemon
    // configured with a larger window than the VMM's; one configured with page-sized chunks
    // (a piece in the middle of a chunk, mapped or unmapped); an unknown shmid.
    let big = DaxState::with_linux_chunks(2 * size);
    let e = big
        .setup_mapping(&path.mapper, &req(&file, true, 5, 0, size, C, R))
        .expect_err("outside the VMM's window");
    assert_eq!(
        e.errno(),
        libc::EIO,
        "vhost 0.18 reports frontend refusals without errno"
    );
    assert!(big.is_empty());
    let paged = DaxState::new(size, page);
    let e = paged
        .setup_mapping(&path.mapper, &req(&file, true, 5, 0, 8 * C + page, page, R))
        .expect_err("a piece in the middle of a chunk");
    assert_eq!(e.errno(), libc::EIO);
    assert!(paged.is_empty());
    assert!(path.mapper.unmap(8 * C + page, page).is_err());
    assert_eq!(perms_at(at(8) + page).as_deref(), Some("---p"));
    let shmid1 = VhostUserMMap {
        shmid: 1,
        len: C,
        ..Default::default()
    };
    assert!(path.mapper.backend().shmem_map(&shmid1, &file).is_err());
    assert_eq!(
        path.handler.stats(),
        DaxStats {
            refused: stats_before.refused + 4,
            ..stats_before
        }
    );
    assert_eq!(vmm_ranges(&path), before_vmm);
    for p in (6..chunks).chain(1..4) {
        for addr in [at(p), at(p + 1) - page] {
            assert_eq!(perms_at(addr).as_deref(), Some("---p"), "chunk {p}");
        }
    }

    // Pieces anchored at a chunk's end or start (what the truncation guard leaves) are
    // accepted: the last page of chunk 8 and the first of chunk 9 (file chunk 6's first two
    // pages), mapped and removed page by page.
    paged
        .setup_mapping(
            &path.mapper,
            &req(&file, false, 5, 6 * C, 9 * C - page, 2 * page, R),
        )
        .expect("pieces anchored at a chunk's end and start");
    // SAFETY: the two pages around the start of window chunk 9 were mapped readable.
    let seen =
        unsafe { std::slice::from_raw_parts((at(9) - page) as *const u8, 2 * page as usize) };
    assert_same(
        seen,
        &data[6 * C as usize..][..2 * page as usize],
        "anchored pieces",
    );
    assert_eq!(
        vmm_ranges(&path),
        [
            (0, C),
            (4 * C, C),
            (5 * C, C),
            (9 * C - page, page),
            (9 * C, page)
        ]
    );
    paged
        .remove_mapping(&path.mapper, 9 * C - page, 2 * page)
        .expect("remove the pieces");
    assert!(paged.is_empty());
    assert_eq!(vmm_ranges(&path), before_vmm);
    assert_eq!(perms_at(at(9) - page).as_deref(), Some("---p"));
    assert_eq!(perms_at(at(9)).as_deref(), Some("---p"));

    // Remove the read-only range: inaccessible again, gone from both tables.
    state
        .remove_mappings(&path.mapper, &[(4 * C, 2 * C)])
        .expect("remove");
    for chunk in [4, 5] {
        assert_eq!(
            perms_at(at(chunk)).as_deref(),
            Some("---p"),
            "chunk {chunk}"
        );
        assert_eq!(perms_at(at(chunk + 1) - page).as_deref(), Some("---p"));
        assert!(state.lookup(chunk * C).is_none());
        assert!(path.window.table().lookup(chunk * C).is_none());
    }

    // Map window chunk 0 again from another file: the old mapping is replaced on both sides.
    let other_data = pattern(C as usize, 9);
    let other = tmpfile("other", &other_data);
    state
        .setup_mapping(&path.mapper, &req(&other, false, 6, 0, 0, C, R))
        .expect("replace");
    // SAFETY: window chunk 0 is mapped readable.
    let seen = unsafe { std::slice::from_raw_parts(base as *const u8, C as usize) };
    assert_same(seen, &other_data, "replacing chunk");
    assert_eq!(perms_at(base).as_deref(), Some("r--s"));
    assert_eq!(perms_at(at(1) - page).as_deref(), Some("r--s"));
    assert_eq!(state.len(), 1);
    assert_eq!(state.lookup(0).expect("daemon entry").inode, 6);
    assert_eq!(vmm_ranges(&path), [(0, C)]);

    // The frontend goes away: the daemon forgets everything without unmapping.
    assert_eq!(state.clear(), 1);
    let stats = path.handler.stats();
    assert!(matches!(path.server.stop(), ServeEnd::Stopped));
    // Two read-only chunks, one writable chunk, the two anchored pieces, the replacing chunk;
    // the pieces and the two read-only chunks removed and the replaced chunk unmapped first.
    assert_eq!(stats.maps, 6);
    assert_eq!(stats.unmaps, 5);
    assert_eq!(stats.refused, 4);
    assert_eq!(stats.failed, 0);
    // With the request thread gone, the mapper reports the channel as unusable.
    assert!(path.mapper.unmap(0, C).is_err());
}
