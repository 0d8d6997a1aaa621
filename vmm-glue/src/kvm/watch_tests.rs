//! The shrink watcher on a real window and real files (no KVM needed: fencing is `mprotect` of
//! the window, seen in `/proc/self/maps`).

use std::time::{Duration, Instant};

use super::*;
use crate::dax::testutil::{pattern, perms_at, tmpfile};
use crate::dax::window::host_page_size;

/// Waits up to 5 s for `done`.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_shrink_fences_exactly_the_lost_part() {
    let page = host_page_size();
    let window = Arc::new(DaxWindow::new(32 * page).expect("reserve"));
    let state = Arc::new(VmFaultState::default());
    let a = tmpfile(&pattern(8 * page as usize, 1));
    let b = tmpfile(&pattern(8 * page as usize, 2));
    window.map(0, 8 * page, &a, 0, false).expect("map a");
    // b's first 4 pages at window page 16.
    window.map(16 * page, 4 * page, &b, 0, true).expect("map b");
    let watcher = ShrinkWatcher::start(&state, Arc::clone(&window)).expect("start");
    assert!(state.is_watched());
    eventually("both files watched", || watcher.stats().files == 2);
    let at = |p: u64| perms_at(window.host_addr() + p * page).unwrap_or_default();

    // a shrinks to 2.5 pages: pages 3..8 are lost, page 2 keeps its valid head.
    a.set_len(2 * page + page / 2).expect("truncate a");
    eventually("a fenced", || at(3) == "---s");
    assert_eq!(watcher.stats().fenced, 1);
    for p in 0..3 {
        assert_eq!(at(p), "r--s", "page {p} is still inside the file");
    }
    for p in 3..8 {
        assert_eq!(at(p), "---s", "page {p} is lost");
    }
    assert!(state.fences().is_fenced(3 * page));
    assert!(!state.fences().is_fenced(2 * page));

    // b shrinks, but above its mapped range: nothing to fence.
    let changes = watcher.stats().changes;
    b.set_len(6 * page).expect("truncate b");
    eventually("b's change seen", || watcher.stats().changes > changes);
    assert_eq!(watcher.stats().fenced, 1);
    assert_eq!(at(16), "rw-s");
    assert_eq!(at(19), "rw-s");

    // A write into a (a change, no shrink) fences nothing more.
    use std::os::unix::fs::FileExt;
    let changes = watcher.stats().changes;
    a.write_all_at(b"x", 0).expect("write");
    eventually("a's write seen", || watcher.stats().changes > changes);
    assert_eq!(watcher.stats().fenced, 1);
    assert_eq!(watcher.stats().failures, 0);

    drop(watcher);
    assert!(!state.is_watched(), "the handlers scan again");
}

#[test]
fn a_file_that_shrank_before_its_watch_is_fenced_at_once() {
    let page = host_page_size();
    let window = Arc::new(DaxWindow::new(8 * page).expect("reserve"));
    let state = Arc::new(VmFaultState::default());
    let f = tmpfile(&pattern(4 * page as usize, 3));
    window.map(0, 4 * page, &f, 0, false).expect("map");
    f.set_len(page).expect("truncate");
    let watcher = ShrinkWatcher::start(&state, Arc::clone(&window)).expect("start");
    eventually("fenced", || watcher.stats().fenced == 1);
    assert_eq!(perms_at(window.host_addr() + page).as_deref(), Some("---s"));
    // Mapped again (the guest's SETUPMAPPING after the daemon's REMOVEMAPPING): a new mapping,
    // whole again, and the same file stays watched once.
    f.set_len(4 * page).expect("extend");
    window.unmap(0, 4 * page).expect("unmap");
    window.map(0, 4 * page, &f, 0, false).expect("map again");
    assert_eq!(perms_at(window.host_addr() + page).as_deref(), Some("r--s"));
    // The old fence record does not own the new mapping, so a new shrink fences it again.
    f.set_len(2 * page).expect("truncate again");
    eventually("fenced again", || {
        perms_at(window.host_addr() + 2 * page).as_deref() == Some("---s")
    });
    assert_eq!(perms_at(window.host_addr() + page).as_deref(), Some("r--s"));
}

#[test]
fn files_no_longer_mapped_are_no_longer_watched() {
    let page = host_page_size();
    let window = Arc::new(DaxWindow::new(8 * page).expect("reserve"));
    let state = Arc::new(VmFaultState::default());
    let watcher = ShrinkWatcher::start(&state, Arc::clone(&window)).expect("start");
    let f = tmpfile(&pattern(page as usize, 4));
    window.map(0, page, &f, 0, false).expect("map");
    eventually("watched", || watcher.stats().files == 1);
    window.unmap(0, page).expect("unmap");
    window.table().forget_unmapped();
    // The next announcement (another file) prunes the first.
    let g = tmpfile(&pattern(page as usize, 5));
    window.map(page, page, &g, 0, false).expect("map g");
    eventually("only g watched", || {
        watcher.stats().files == 1 && window.kept_files() == 1
    });
    assert_eq!(watcher.stats().unwatched, 0);
}

#[test]
fn a_file_that_grows_back_is_unfenced_and_sync_waits_for_it() {
    let page = host_page_size();
    let window = Arc::new(DaxWindow::new(8 * page).expect("reserve"));
    let state = Arc::new(VmFaultState::default());
    let f = tmpfile(&pattern(4 * page as usize, 6));
    window.map(0, 4 * page, &f, 0, true).expect("map");
    let watcher = ShrinkWatcher::start(&state, Arc::clone(&window)).expect("start");
    let sync = watcher.syncer();
    assert!(sync.sync(Duration::from_secs(5)), "the initial files");
    let at = |p: u64| perms_at(window.host_addr() + p * page).unwrap_or_default();
    for _ in 0..50 {
        f.set_len(page).expect("truncate");
        assert!(sync.sync(Duration::from_secs(5)));
        assert_eq!(at(1), "---s", "lost after the truncation");
        f.set_len(4 * page).expect("extend");
        assert!(sync.sync(Duration::from_secs(5)));
        // The file covers the range again: the watcher lifts the fence, so no range inside
        // the file stays fenced.
        for p in 0..4 {
            assert_eq!(at(p), "rw-s", "page {p} after the extension");
        }
        assert!(!state.fences().is_fenced(page));
    }
    // A truncation and an extension before the watcher looks: whatever it saw in between,
    // after sync the window matches the file.
    f.set_len(0).expect("truncate");
    f.set_len(4 * page).expect("extend");
    assert!(sync.sync(Duration::from_secs(5)));
    assert_eq!(at(3), "rw-s");
}

#[test]
fn a_file_that_cannot_be_watched_turns_the_handlers_scans_back_on() {
    use std::sync::atomic::AtomicBool;
    let page = host_page_size();
    let window = Arc::new(DaxWindow::new(16 * page).expect("reserve"));
    let state = Arc::new(VmFaultState::default());
    // The inotify watch limit, reached while `full` is set.
    let full = Arc::new(AtomicBool::new(true));
    let limit = Arc::clone(&full);
    let watcher = ShrinkWatcher::start_with(
        &state,
        Arc::clone(&window),
        Box::new(move |inotify, fd| {
            if limit.load(Ordering::SeqCst) {
                -1
            } else {
                add_watch(inotify, fd)
            }
        }),
    )
    .expect("start");
    let sync = watcher.syncer();
    let at = |p: u64| perms_at(window.host_addr() + p * page).unwrap_or_default();
    let a = tmpfile(&pattern(4 * page as usize, 7));
    window.map(0, 4 * page, &a, 0, false).expect("map a");
    assert!(sync.sync(Duration::from_secs(5)));
    assert_eq!((watcher.stats().files, watcher.stats().unwatched), (0, 1));
    assert!(
        !state.is_watched(),
        "a mapped file nobody watches: the handlers scan"
    );
    // No event tells the watcher of a's shrink: the handlers' scan (what a kick or an apf ACK
    // runs) fences it.
    a.set_len(page).expect("truncate a");
    assert_eq!(at(1), "r--s", "not watched, not fenced");
    assert_eq!(state.fences().fence_truncated(&window).expect("scan"), 1);
    assert_eq!(at(1), "---s");

    // Room again: the next file announced brings a's watch with it.
    full.store(false, Ordering::SeqCst);
    let b = tmpfile(&pattern(4 * page as usize, 8));
    window.map(8 * page, 4 * page, &b, 0, false).expect("map b");
    assert!(sync.sync(Duration::from_secs(5)));
    assert_eq!((watcher.stats().files, watcher.stats().unwatched), (2, 0));
    assert!(state.is_watched());
    b.set_len(page).expect("truncate b");
    assert!(sync.sync(Duration::from_secs(5)));
    assert_eq!(at(9), "---s", "the watcher fences b");

    // Full again: a file that cannot be watched holds the scans on only while it is mapped.
    full.store(true, Ordering::SeqCst);
    let c = tmpfile(&pattern(2 * page as usize, 9));
    window
        .map(12 * page, 2 * page, &c, 0, false)
        .expect("map c");
    assert!(sync.sync(Duration::from_secs(5)));
    assert!(!state.is_watched());
    window.unmap(12 * page, 2 * page).expect("unmap c");
    window.table().forget_unmapped();
    assert!(sync.sync(Duration::from_secs(5)));
    assert_eq!(watcher.stats().unwatched, 0);
    assert!(state.is_watched());
    drop(watcher);
    assert!(!state.is_watched());
}
