//! 100,000 map/unmap cycles through the VMM-side DAX request handler, driven over a real
//! vhost-user backend request channel, leave no file descriptor and no host mapping behind.
//!
//! This file holds a single test so nothing else in the process opens files or maps memory while
//! it counts `/proc/self/fd` and `/proc/self/maps`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vfsdax_vmm_glue::dax::window::host_page_size;
use vfsdax_vmm_glue::dax::{DaxRequestHandler, DaxServer, DaxWindow, ServeEnd};
use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{Backend, FrontendReqHandler, VhostUserFrontendReqHandler};

const CYCLES: u64 = 100_000;

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .count()
}

fn maps_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .count()
}

fn tmpfile(len: usize) -> File {
    let path = std::env::temp_dir().join(format!("vfsdax-dax-leak-{}", std::process::id()));
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create temporary file");
    std::fs::remove_file(&path).expect("unlink temporary file");
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    f.write_all(&bytes).expect("fill temporary file");
    f
}

fn request(shm_offset: u64, fd_offset: u64, len: u64, writable: bool) -> VhostUserMMap {
    let flags = if writable {
        VhostUserMMapFlags::WRITABLE
    } else {
        VhostUserMMapFlags::empty()
    };
    VhostUserMMap {
        shmid: 0,
        fd_offset,
        shm_offset,
        len,
        flags: flags.bits(),
        ..Default::default()
    }
}

#[test]
fn map_unmap_cycles_leak_nothing() {
    let fds_at_start = fd_count();
    let page = host_page_size();
    let window_pages = 64;
    let file_pages = 16;
    let file = tmpfile((file_pages * page) as usize);

    let window = Arc::new(DaxWindow::new(window_pages * page).expect("reserve window"));
    let handler = Arc::new(DaxRequestHandler::new(Arc::clone(&window)));
    let mut channel = FrontendReqHandler::new(Arc::clone(&handler)).expect("request channel");
    channel.set_reply_ack_flag(true);
    // SAFETY: dup only creates a new descriptor; the result is checked before use.
    let tx = unsafe { libc::dup(channel.get_tx_raw_fd()) };
    assert!(tx >= 0, "dup: {}", std::io::Error::last_os_error());
    // SAFETY: `tx` is a fresh descriptor from dup that nothing else owns.
    let backend = Backend::from_stream(UnixStream::from(unsafe { OwnedFd::from_raw_fd(tx) }));
    backend.set_reply_ack_flag(true);
    backend.set_shmem_flag(true);
    let server = DaxServer::spawn(channel).expect("request thread");

    let cycle = |i: u64| {
        // Vary the window slot, the file range, the length and the protection; every other
        // cycle maps twice over the same slot (a replacing map) before unmapping.
        let len = (1 + i % 3) * page;
        let slot = (i * 7 % (window_pages - 3)) * page;
        let fd_offset = (i % (file_pages - 3)) * page;
        backend
            .shmem_map(&request(slot, fd_offset, len, i % 2 == 0), &file)
            .expect("map");
        if i % 2 == 1 {
            backend
                .shmem_map(&request(slot, 0, len, false), &file)
                .expect("replacing map");
        }
        backend
            .shmem_unmap(&request(slot, 0, len, false))
            .expect("unmap");
    };

    // Warm up (allocator arenas, lazily created thread state), then count.
    for i in 0..16 {
        cycle(i);
    }
    let fds_before = fd_count();
    let maps_before = maps_count();
    for i in 0..CYCLES {
        cycle(i);
    }
    let fds_after = fd_count();
    let maps_after = maps_count();
    let stats = handler.stats();
    println!(
        "{CYCLES} cycles: fds {fds_before} -> {fds_after}, maps lines {maps_before} -> \
         {maps_after}, stats {stats:?}"
    );
    assert_eq!(fds_after, fds_before, "file descriptors leaked");
    assert_eq!(maps_after, maps_before, "host mappings leaked");
    assert!(window.table().is_empty(), "table entries left behind");
    assert_eq!(stats.unmaps, CYCLES + 16);
    assert_eq!(stats.maps, (CYCLES + 16) + (CYCLES + 16) / 2);
    assert_eq!(stats.refused + stats.failed, 0);

    // Tear down: the thread, the channel and the window's descriptors all go away.
    assert!(matches!(server.stop(), ServeEnd::Stopped));
    drop(backend);
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
