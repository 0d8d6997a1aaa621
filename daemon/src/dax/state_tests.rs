//! Tests of the DAX state: validation tables and the live mapping table with a recording fake
//! mapper.

use std::io;

use vfsdax_protocol::fuse::flags::SETUPMAPPING_FLAG_READ;

use vfsdax_protocol::guard::{GuardAction, GuardedRange};

use super::super::files::{FileWatch, Guarding};
use super::super::testutil::{file, Call, Recorder};
use super::*;

const P: u64 = 4096;
const MB2: u64 = 2 << 20;
const R: u64 = SETUPMAPPING_FLAG_READ;
const W: u64 = SETUPMAPPING_FLAG_WRITE;

fn setup<'a>(
    f: &'a File,
    inode: u64,
    handle: Option<u64>,
    fo: u64,
    mo: u64,
    len: u64,
    flags: u64,
) -> SetupMapping<'a> {
    SetupMapping {
        inode,
        handle,
        file: f,
        file_writable: true,
        foffset: fo,
        moffset: mo,
        len,
        flags,
        plan: as_asked(flags & W != 0),
    }
}

fn as_asked(write: bool) -> Plan {
    Plan {
        open_writable: write,
        map_writable: write,
        window_writable: write,
        inside_file: false,
    }
}

fn shape(s: &DaxState) -> Vec<(u64, u64, u64, u64)> {
    s.snapshot()
        .iter()
        .map(|m| (m.moffset, m.len, m.foffset, m.inode))
        .collect()
}

#[test]
fn setup_maps_chunk_by_chunk_and_records() {
    let s = DaxState::new(16 * P, P);
    let m = Recorder::default();
    let f = file();
    s.setup_mapping(&m, &setup(&f, 7, None, 2 * P, 4 * P, 2 * P, R | W))
        .expect("setup");
    assert_eq!(
        m.calls(),
        vec![
            Call::Map(4 * P, P, 2 * P, true),
            Call::Map(5 * P, P, 3 * P, true)
        ]
    );
    let live = s.lookup(5 * P + 9).expect("recorded");
    assert_eq!(
        live,
        LiveMapping {
            moffset: 5 * P,
            len: P,
            inode: 7,
            handle: None,
            foffset: 3 * P,
            writable: true,
            window_writable: true,
            orphaned: false,
            file: FileId::of(&f).unwrap(),
            cut: None,
        }
    );
    assert!(s.lookup(6 * P).is_none());
    assert!(s.lookup(4 * P - 1).is_none());
    assert_eq!(
        s.stats(),
        DaxStats {
            setups: 1,
            chunks_mapped: 2,
            ..Default::default()
        }
    );
}

#[test]
fn refused_setups_call_nothing_and_change_nothing() {
    let s = DaxState::new(16 * P, P);
    let m = Recorder::default();
    let f = file();
    s.setup_mapping(&m, &setup(&f, 1, Some(3), 0, 0, P, R))
        .expect("setup");
    let before = shape(&s);
    let mut ro = setup(&f, 1, Some(3), 0, P, P, R | W);
    ro.file_writable = false;
    let mut ro_plan = setup(&f, 1, Some(3), 0, P, P, R);
    ro_plan.file_writable = false;
    ro_plan.plan = as_asked(true);
    let bad = [
        setup(&f, 1, None, 0, 16 * P, P, R),
        setup(&f, 1, None, 0, 15 * P, 2 * P, R),
        setup(&f, 1, None, 1, P, P, R),
        setup(&f, 1, None, 0, P, 0, R),
        setup(&f, 1, None, 0, u64::MAX - P + 1, P, R),
        setup(&f, 1, None, 0, P, P, 0x10),
        ro,
        ro_plan,
    ];
    for (i, req) in bad.iter().enumerate() {
        assert!(s.setup_mapping(&m, req).is_err(), "case {i}");
    }
    assert_eq!(
        m.calls().len(),
        1,
        "only the good request reached the mapper"
    );
    assert_eq!(shape(&s), before);
    assert_eq!(s.stats().setups_refused, bad.len() as u64);
}

#[test]
fn a_failed_request_leaves_the_table_equal_to_the_frontend() {
    let s = DaxState::new(16 * P, P);
    let m = Recorder::default();
    let f = file();
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, 2 * P, R))
        .expect("setup");
    // The frontend refuses everything: chunk P (inode 1) cannot even be unmapped.
    m.fail_with(Some(libc::ENOMEM));
    let e = s
        .setup_mapping(&m, &setup(&f, 2, None, 0, P, 2 * P, R))
        .expect_err("fails");
    assert_eq!(e.errno(), libc::ENOMEM);
    assert_eq!(shape(&s), vec![(0, P, 0, 1), (P, P, P, 1)]);

    // A frontend that takes the first chunk and refuses the second: the first stays.
    struct SecondMapFails<'a>(&'a Recorder, Mutex<u32>);
    impl Mapper for SecondMapFails<'_> {
        fn map(&self, a: u64, b: u64, f: &File, c: u64, w: bool) -> io::Result<()> {
            let mut n = self.1.lock().expect("n");
            *n += 1;
            if *n == 2 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.0.map(a, b, f, c, w)
        }
        fn unmap(&self, a: u64, b: u64) -> io::Result<()> {
            self.0.unmap(a, b)
        }
    }
    m.fail_with(None);
    let second = SecondMapFails(&m, Mutex::new(0));
    let e = s
        .setup_mapping(&second, &setup(&f, 3, None, 0, 8 * P, 2 * P, R))
        .expect_err("second chunk refused");
    assert_eq!(e.errno(), libc::EIO);
    assert_eq!(
        shape(&s),
        vec![(0, P, 0, 1), (P, P, P, 1), (8 * P, P, 0, 3)]
    );
}

#[test]
fn a_live_chunk_is_unmapped_before_another_lands_on_it() {
    let s = DaxState::new(16 * P, P);
    let m = Recorder::default();
    let f = file();
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, 4 * P, R))
        .expect("a");
    s.setup_mapping(&m, &setup(&f, 2, None, 0, 2 * P, 2 * P, R))
        .expect("b");
    assert_eq!(
        m.calls()[4..],
        [
            Call::Unmap(2 * P, P),
            Call::Map(2 * P, P, 0, false),
            Call::Unmap(3 * P, P),
            Call::Map(3 * P, P, P, false),
        ]
    );
    assert_eq!(
        shape(&s),
        vec![
            (0, P, 0, 1),
            (P, P, P, 1),
            (2 * P, P, 0, 2),
            (3 * P, P, P, 2)
        ]
    );
    // The same file range of another node id, or another file offset, is another mapping.
    s.setup_mapping(&m, &setup(&f, 2, None, 4 * P, 2 * P, P, R))
        .expect("c");
    assert_eq!(
        m.calls()[8..],
        [Call::Unmap(2 * P, P), Call::Map(2 * P, P, 4 * P, false)]
    );
    assert_eq!(s.len(), 4);
}

#[test]
fn a_chunk_already_mapped_as_asked_is_reused() {
    let s = DaxState::new(16 * P, P);
    let m = Recorder::default();
    let f = file();
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, P, R))
        .expect("read");
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, P, R))
        .expect("read again");
    assert_eq!(m.calls().len(), 1, "nothing asked of the frontend again");
    // An upgrade to writable needs a writable window mapping: remapped.
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, P, R | W))
        .expect("upgrade");
    assert_eq!(
        m.calls()[1..],
        [Call::Unmap(0, P), Call::Map(0, P, 0, true)]
    );
    assert!(s.lookup(0).expect("live").writable);
    // A window mapping that already takes stores (a frontend that maps through writable
    // descriptors) is upgraded in place.
    let mut ro_window_rw = setup(&f, 1, None, 0, P, P, R);
    ro_window_rw.plan = Plan {
        open_writable: true,
        map_writable: false,
        window_writable: true,
        inside_file: false,
    };
    s.setup_mapping(&m, &ro_window_rw)
        .expect("read, window writable");
    s.setup_mapping(&m, &setup(&f, 1, None, 0, P, P, R | W))
        .expect("upgrade in place");
    assert_eq!(m.calls().len(), 4);
    let live = s.lookup(P).expect("live");
    assert!(live.writable && live.window_writable);
    assert_eq!(s.stats().chunks_reused, 2);
}

#[test]
fn remove_batches_are_validated_first_and_only_live_chunks_are_unmapped() {
    let s = DaxState::new(16 * P, P);
    let m = Recorder::default();
    let f = file();
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, 4 * P, R))
        .expect("setup");
    let e = s
        .remove_mappings(&m, &[(0, P), (3, P)])
        .expect_err("bad entry");
    assert_eq!(e.errno(), libc::EINVAL);
    assert_eq!(m.calls().len(), 4, "nothing was unmapped");
    assert_eq!(s.len(), 4);

    s.remove_mappings(&m, &[(P, P), (8 * P, 2 * P)])
        .expect("remove");
    assert_eq!(m.calls()[4..], [Call::Unmap(P, P)], "8P was never mapped");
    assert_eq!(
        shape(&s),
        vec![(0, P, 0, 1), (2 * P, P, 2 * P, 1), (3 * P, P, 3 * P, 1)]
    );

    // A failure mid-batch: what was unmapped is gone, the rest stays.
    let calls = m.calls().len();
    struct FailSecond<'a>(&'a Recorder, Mutex<u32>);
    impl Mapper for FailSecond<'_> {
        fn map(&self, a: u64, b: u64, f: &File, c: u64, w: bool) -> io::Result<()> {
            self.0.map(a, b, f, c, w)
        }
        fn unmap(&self, a: u64, b: u64) -> io::Result<()> {
            let mut n = self.1.lock().expect("n");
            *n += 1;
            if *n == 2 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.0.unmap(a, b)
        }
    }
    let fail = FailSecond(&m, Mutex::new(0));
    assert!(s.remove_mappings(&fail, &[(0, 4 * P)]).is_err());
    assert_eq!(m.calls().len(), calls + 1);
    assert_eq!(shape(&s), vec![(2 * P, P, 2 * P, 1), (3 * P, P, 3 * P, 1)]);
    s.remove_mapping(&m, 2 * P, 2 * P).expect("remove two");
    assert!(s.is_empty());
    assert_eq!(s.stats().removes, 2);
    assert_eq!(s.stats().chunks_unmapped, 4);
}

#[test]
fn unmap_all_unmaps_and_forgets_even_when_the_frontend_fails() {
    let s = DaxState::new(16 * P, P);
    let m = Recorder::default();
    let f = file();
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, P, R))
        .expect("a");
    s.setup_mapping(&m, &setup(&f, 2, None, 0, 4 * P, P, R))
        .expect("b");
    assert_eq!(s.unmap_all(&m).expect("all"), 2);
    assert_eq!(m.calls()[2..], [Call::Unmap(0, P), Call::Unmap(4 * P, P)]);
    assert!(s.is_empty());
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, P, R))
        .expect("c");
    m.fail_with(Some(libc::ENOTCONN));
    assert_eq!(s.unmap_all(&m).expect_err("fails").errno(), libc::ENOTCONN);
    assert!(s.is_empty());
}

#[test]
fn clear_forgets_without_unmapping() {
    let s = DaxState::new(16 * P, P);
    let m = Recorder::default();
    let f = file();
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, P, R))
        .expect("a");
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 2 * P, P, R))
        .expect("b");
    assert_eq!(s.clear(), 2);
    assert!(s.is_empty());
    assert_eq!(m.calls().len(), 2);
}

#[test]
fn disabled_state_refuses_with_enosys() {
    let s = DaxState::new(0, P);
    assert!(!s.is_enabled());
    let m = Recorder::default();
    let f = file();
    let e = s
        .setup_mapping(&m, &setup(&f, 1, None, 0, 0, P, R))
        .expect_err("disabled");
    assert_eq!(e.errno(), libc::ENOSYS);
    assert!(m.calls().is_empty());
}

#[test]
fn forgetting_an_idle_inode_unmaps_its_chunks_at_once() {
    let s = DaxState::new(16 * P, P);
    let m = Recorder::default();
    let f = file();
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, 2 * P, R))
        .expect("a");
    s.setup_mapping(&m, &setup(&f, 2, None, 0, 4 * P, P, R))
        .expect("b");
    assert_eq!(s.forget_inode(&m, 1), 2);
    assert_eq!(m.calls()[3..], [Call::Unmap(0, P), Call::Unmap(P, P)]);
    assert_eq!(shape(&s), vec![(4 * P, P, 0, 2)]);
    assert_eq!(s.forget_inode(&m, 1), 0);
}

#[test]
fn probing_records_what_the_frontend_maps() {
    let s = DaxState::new(16 * MB2, MB2);
    assert_eq!(s.frontend(), FrontendMapping::Unknown);
    let m = Recorder::default();
    let out = s.probe_frontend(&m).expect("probe");
    assert_eq!(out.frontend, FrontendMapping::Any);
    assert_eq!(
        m.calls(),
        vec![
            Call::Map(15 * MB2, MB2, 0, false),
            Call::Unmap(15 * MB2, MB2)
        ]
    );
    assert_eq!(s.frontend(), FrontendMapping::Any);
    m.fail_with(Some(libc::EIO));
    s.probe_frontend(&m).expect("probe");
    assert_eq!(s.frontend(), FrontendMapping::InsideFileWritable);
    assert!(s.is_empty(), "the probe is not a live mapping");
}

/// A mapper whose `map` blocks until released, like a frontend busy elsewhere.
struct Blocking {
    entered: std::sync::mpsc::Sender<()>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    unmapped: std::sync::Mutex<Vec<u64>>,
}

impl Mapper for Blocking {
    fn map(&self, _: u64, _: u64, _: &File, _: u64, _: bool) -> std::io::Result<()> {
        let _ = self.entered.send(());
        let _ = self.release.lock().unwrap().recv();
        Ok(())
    }

    fn unmap(&self, mo: u64, _: u64) -> std::io::Result<()> {
        self.unmapped.lock().unwrap().push(mo);
        Ok(())
    }
}

#[test]
fn forgetting_an_inode_does_not_wait_behind_a_mapping_in_flight() {
    let s = std::sync::Arc::new(DaxState::new(16 * MB2, MB2));
    let f = file();
    s.setup_mapping(&Recorder::default(), &setup(&f, 2, None, 0, MB2, MB2, R))
        .unwrap();
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let mapper = std::sync::Arc::new(Blocking {
        entered: entered_tx,
        release: std::sync::Mutex::new(release_rx),
        unmapped: Default::default(),
    });
    let (s2, m2) = (s.clone(), mapper.clone());
    let t = std::thread::spawn(move || {
        let f = file();
        s2.setup_mapping(&*m2, &setup(&f, 1, None, 0, 0, MB2, R))
    });
    entered_rx.recv().unwrap();
    // SETUPMAPPING of inode 1 is now waiting on the "frontend"; FORGET of inode 2 goes on.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (s3, m3) = (s.clone(), mapper.clone());
    std::thread::spawn(move || {
        let _ = done_tx.send(s3.forget_inode(&*m3, 2));
    });
    let forgotten = done_rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("forget_inode waited behind the mapping in flight");
    assert_eq!(forgotten, 1);
    assert!(s.lookup(MB2).expect("still mapped").orphaned);
    assert!(
        mapper.unmapped.lock().unwrap().is_empty(),
        "not unmapped yet"
    );
    release_tx.send(()).unwrap();
    t.join().unwrap().unwrap();
    // The next request that talks to the frontend unmaps the orphan first.
    s.remove_mappings(&*mapper, &[(4 * MB2, MB2)]).unwrap();
    assert_eq!(*mapper.unmapped.lock().unwrap(), vec![MB2]);
    assert_eq!(shape(&s), vec![(0, MB2, 0, 1)]);
    assert_eq!(s.forget_inode(&*mapper, 1), 1);
    assert!(s.is_empty());
}

#[test]
fn an_orphaned_chunk_is_never_reused_for_a_new_node_id() {
    let s = DaxState::new(16 * P, P);
    let m = Recorder::default();
    let f = file();
    s.setup_mapping(&m, &setup(&f, 5, None, 0, 0, P, R))
        .expect("a");
    // Orphan it without unmapping (as a FORGET racing a request would).
    s.write().get_mut(&0).expect("live").orphaned = true;
    s.setup_mapping(&m, &setup(&f, 5, None, 0, 0, P, R))
        .expect("same node id, same range");
    assert_eq!(
        m.calls()[1..],
        [Call::Unmap(0, P), Call::Map(0, P, 0, false)]
    );
    assert!(!s.lookup(0).expect("live").orphaned);
}

const C4: u64 = 4 * P;

fn four_page_chunks() -> DaxState {
    DaxState::new(16 * C4, C4)
}

#[test]
fn shrink_cuts_the_chunks_past_the_new_end() {
    let s = four_page_chunks();
    let m = Recorder::default();
    let f = file();
    let id = FileId::of(&f).unwrap();
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, 2 * C4, R))
        .expect("two chunks");
    let before = m.calls().len();
    let out = s.shrink(&m, id, C4 + P + 10, GuardAction::Zero);
    assert!(out.error.is_none());
    // The first chunk lies inside the file; the second keeps two pages (the partial one too).
    assert_eq!(
        m.calls()[before..],
        [
            Call::Unmap(C4, C4),
            Call::Map(C4, 2 * P, C4, false),
            Call::Map(C4 + 2 * P, 2 * P, 0, true)
        ]
    );
    assert_eq!(
        out.ranges,
        vec![GuardedRange {
            window_offset: C4,
            file_offset: C4,
            len: C4,
            kept: 2 * P
        }]
    );
    let live = s.lookup(C4).expect("still live");
    assert_eq!(
        live.cut,
        Some(Cut {
            kept: 2 * P,
            substituted: true
        })
    );
    assert_eq!(live.pieces(), vec![(C4, 2 * P), (C4 + 2 * P, 2 * P)]);
    // Shrinking less than that changes nothing; further shrinks cut again.
    let n = m.calls().len();
    assert!(s
        .shrink(&m, id, 3 * C4, GuardAction::Zero)
        .ranges
        .is_empty());
    assert!(s
        .shrink(&m, id, C4 + 2 * P, GuardAction::Zero)
        .ranges
        .is_empty());
    assert_eq!(m.calls().len(), n);
    let out = s.shrink(&m, id, 0, GuardAction::Zero);
    assert_eq!(out.ranges.len(), 2);
    assert_eq!(
        m.calls()[n..],
        [
            Call::Unmap(0, C4),
            Call::Map(0, C4, 0, true),
            Call::Unmap(C4, 2 * P),
            Call::Unmap(C4 + 2 * P, 2 * P),
            Call::Map(C4, C4, 0, true),
        ]
    );
    // REMOVEMAPPING unmaps exactly the pieces.
    let n = m.calls().len();
    s.remove_mapping(&m, 0, 2 * C4).expect("remove");
    assert_eq!(m.calls()[n..], [Call::Unmap(0, C4), Call::Unmap(C4, C4)]);
    assert!(s.is_empty());
    assert_eq!(s.file_count(), 0);
}

#[test]
fn shrink_for_a_frontend_that_maps_inside_files_drops_the_partial_page_and_unmap_leaves_holes() {
    let s = four_page_chunks();
    s.set_frontend(FrontendMapping::InsideFileWritable);
    let m = Recorder::default();
    let f = file();
    let id = FileId::of(&f).unwrap();
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, C4, R))
        .expect("map");
    let n = m.calls().len();
    let out = s.shrink(&m, id, P + 10, GuardAction::Unmap);
    assert_eq!(out.ranges[0].kept, P);
    assert_eq!(
        m.calls()[n..],
        [Call::Unmap(0, C4), Call::Map(0, P, 0, false)]
    );
    assert_eq!(s.lookup(0).expect("live").pieces(), vec![(0, P)]);
    // A new SETUPMAPPING of the cut chunk replaces it whole.
    let n = m.calls().len();
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, C4, R))
        .expect("map again");
    assert_eq!(
        m.calls()[n..],
        [Call::Unmap(0, P), Call::Map(0, C4, 0, false)]
    );
    assert_eq!(s.lookup(0).expect("live").cut, None);
}

#[test]
fn shrink_touches_only_that_file() {
    let s = four_page_chunks();
    let m = Recorder::default();
    let f = file();
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, C4, R))
        .expect("map");
    let other = FileId { dev: 0, ino: 1 };
    let n = m.calls().len();
    assert!(s.shrink(&m, other, 0, GuardAction::Zero).ranges.is_empty());
    assert_eq!(m.calls().len(), n);
}

#[test]
fn a_frontend_failure_while_cutting_leaves_the_table_equal_to_the_frontend() {
    let s = four_page_chunks();
    let m = Recorder::default();
    let f = file();
    let id = FileId::of(&f).unwrap();
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, C4, R))
        .expect("map");
    struct FailMaps<'a>(&'a Recorder);
    impl Mapper for FailMaps<'_> {
        fn map(&self, _: u64, _: u64, _: &File, _: u64, _: bool) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
        fn unmap(&self, a: u64, b: u64) -> io::Result<()> {
            self.0.unmap(a, b)
        }
    }
    let out = s.shrink(&FailMaps(&m), id, P, GuardAction::Zero);
    assert!(out.error.is_some());
    // Unmapped, the kept page could not be mapped again: the chunk holds nothing now.
    let live = s.lookup(0).expect("still recorded");
    assert!(live.pieces().is_empty(), "{live:?}");
    let n = m.calls().len();
    s.remove_mapping(&m, 0, C4).expect("remove sends nothing");
    assert_eq!(m.calls().len(), n);
    assert!(s.is_empty());
}

#[derive(Default)]
struct Watches {
    calls: Mutex<Vec<&'static str>>,
    guarding: Mutex<Option<Guarding>>,
}

impl FileWatch for Watches {
    fn watch(&self, _: FileId, _: &File) -> Guarding {
        self.calls.lock().unwrap().push("watch");
        self.guarding.lock().unwrap().unwrap_or(Guarding::Before)
    }
    fn unwatch(&self, _: FileId, _: &File) {
        self.calls.lock().unwrap().push("unwatch");
    }
}

#[test]
fn files_are_watched_from_their_first_chunk_to_their_last() {
    let s = four_page_chunks();
    let w = std::sync::Arc::new(Watches::default());
    s.set_watch(w.clone(), false);
    let m = Recorder::default();
    let f = file();
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, 2 * C4, R))
        .expect("two chunks");
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 4 * C4, C4, R))
        .expect("a third");
    assert_eq!(*w.calls.lock().unwrap(), ["watch"]);
    assert_eq!(s.guarding(FileId::of(&f).unwrap()), Some(Guarding::Before));
    s.remove_mapping(&m, 0, 2 * C4).expect("two gone");
    assert_eq!(*w.calls.lock().unwrap(), ["watch"]);
    s.remove_mapping(&m, 4 * C4, C4).expect("the last");
    assert_eq!(*w.calls.lock().unwrap(), ["watch", "unwatch"]);
    // A failed mapping does not keep the file watched.
    m.fail_with(Some(libc::EIO));
    assert!(s
        .setup_mapping(&m, &setup(&f, 1, None, 0, 0, C4, R))
        .is_err());
    assert_eq!(
        *w.calls.lock().unwrap(),
        ["watch", "unwatch", "watch", "unwatch"]
    );
    assert_eq!(s.file_count(), 0);
}

#[test]
fn a_required_guard_declines_files_it_cannot_guard_before() {
    let s = four_page_chunks();
    let w = std::sync::Arc::new(Watches::default());
    *w.guarding.lock().unwrap() = Some(Guarding::After);
    s.set_watch(w.clone(), true);
    let m = Recorder::default();
    let f = file();
    let e = s
        .setup_mapping(&m, &setup(&f, 1, None, 0, 0, C4, R))
        .expect_err("declined");
    assert_eq!(e.errno(), libc::EOPNOTSUPP);
    assert!(m.calls().is_empty());
    assert_eq!(s.file_count(), 0);
    s.set_watch(w.clone(), false);
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, C4, R))
        .expect("not required: mapped");
}

#[test]
fn after_the_fact_shrinks_read_the_size_in_request_order() {
    let s = four_page_chunks();
    let m = Recorder::default();
    let path = std::env::temp_dir().join(format!("vfsdax-shrink-order-{}", std::process::id()));
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("a file");
    std::fs::remove_file(&path).expect("unlinked, still open");
    let id = FileId::of(&f).unwrap();
    let size_of = || f.metadata().ok().map(|m| m.len());
    // The file grew to two chunks, then they were mapped: the size is read with the request
    // order held, so it is the size the mapping saw (a size read before the growth, as the
    // guard's worker once did, cut chunks mapped in between).
    f.set_len(2 * C4).expect("grow");
    s.setup_mapping(&m, &setup(&f, 1, None, 0, 0, 2 * C4, R))
        .expect("two chunks");
    let n = m.calls().len();
    let (size, out) = s.shrink_to(&m, id, size_of, GuardAction::Zero);
    assert_eq!(size, Some(2 * C4));
    assert!(out.ranges.is_empty() && out.error.is_none());
    assert_eq!(m.calls().len(), n, "no request to the frontend");
    // Shrunk now: cut at the size it has.
    f.set_len(P).expect("shrink");
    let (size, out) = s.shrink_to(&m, id, size_of, GuardAction::Unmap);
    assert_eq!(size, Some(P));
    assert_eq!(out.ranges.len(), 2, "{:?}", out.ranges);
    assert_eq!(out.ranges[0].kept, P);
    assert_eq!(out.ranges[1].kept, 0);
}
