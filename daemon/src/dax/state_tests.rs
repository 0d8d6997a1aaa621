//! Tests of the DAX state: validation tables and the live mapping table with a recording fake
//! mapper.

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
    }
}

fn shape(s: &DaxState) -> Vec<(u64, u64, u64, u64)> {
    s.snapshot()
        .iter()
        .map(|m| (m.moffset, m.len, m.foffset, m.inode))
        .collect()
}

#[test]
fn validate_setup_table() {
    let ws = 16 * MB2;
    type Expect = Option<fn(&DaxError) -> bool>;
    // (foffset, moffset, len, flags, handle_writable, expected error)
    let cases: &[(u64, u64, u64, u64, bool, Expect)] = &[
        // What a Linux guest sends.
        (0, 0, MB2, R, false, None),
        (4 * MB2, 15 * MB2, MB2, R | W, true, None),
        (0, 0, P, 0, false, None),
        (
            0,
            0,
            0,
            R,
            true,
            Some(|e| matches!(e, DaxError::ZeroLength)),
        ),
        (
            1,
            0,
            P,
            R,
            true,
            Some(|e| matches!(e, DaxError::Unaligned { .. })),
        ),
        (
            0,
            1,
            P,
            R,
            true,
            Some(|e| matches!(e, DaxError::Unaligned { .. })),
        ),
        (
            0,
            0,
            P + 1,
            R,
            true,
            Some(|e| matches!(e, DaxError::Unaligned { .. })),
        ),
        (
            0,
            ws,
            P,
            R,
            true,
            Some(|e| matches!(e, DaxError::OutOfWindow { .. })),
        ),
        (
            0,
            ws - P,
            2 * P,
            R,
            true,
            Some(|e| matches!(e, DaxError::OutOfWindow { .. })),
        ),
        (
            0,
            u64::MAX - P + 1,
            P,
            R,
            true,
            Some(|e| matches!(e, DaxError::Overflow { .. })),
        ),
        (
            u64::MAX - P + 1,
            0,
            P,
            R,
            true,
            Some(|e| matches!(e, DaxError::Overflow { .. })),
        ),
        (
            1 << 63,
            0,
            P,
            R,
            true,
            Some(|e| matches!(e, DaxError::Overflow { .. })),
        ),
        (
            0,
            0,
            P,
            4,
            true,
            Some(|e| matches!(e, DaxError::UnknownFlags { flags: 4 })),
        ),
        (
            0,
            0,
            P,
            R | W,
            false,
            Some(|e| matches!(e, DaxError::NotWritable)),
        ),
        (
            0,
            0,
            P,
            W,
            false,
            Some(|e| matches!(e, DaxError::NotWritable)),
        ),
    ];
    for (i, &(fo, mo, len, flags, hw, expect)) in cases.iter().enumerate() {
        match (validate_setup(ws, P, fo, mo, len, flags, hw), expect) {
            (Ok(()), None) => {}
            (Ok(()), Some(_)) => panic!("case {i} accepted"),
            (Err(e), None) => panic!("case {i} refused: {e}"),
            (Err(e), Some(is)) => assert!(is(&e), "case {i}: {e:?}"),
        }
    }
    assert!(matches!(
        validate_setup(0, P, 0, 0, P, R, true),
        Err(DaxError::Disabled)
    ));
}

#[test]
fn validate_remove_table() {
    let ws = 16 * P;
    assert!(validate_remove(ws, P, 0, ws).is_ok());
    assert!(validate_remove(ws, P, 15 * P, P).is_ok());
    assert!(matches!(
        validate_remove(ws, P, 0, 0),
        Err(DaxError::ZeroLength)
    ));
    assert!(matches!(
        validate_remove(ws, P, 3, P),
        Err(DaxError::Unaligned { .. })
    ));
    assert!(matches!(
        validate_remove(ws, P, ws, P),
        Err(DaxError::OutOfWindow { .. })
    ));
    assert!(matches!(
        validate_remove(ws, P, P, u64::MAX - P + 1),
        Err(DaxError::Overflow { .. })
    ));
    assert!(matches!(
        validate_remove(0, P, 0, P),
        Err(DaxError::Disabled)
    ));
}

#[test]
fn errnos() {
    assert_eq!(DaxError::Disabled.errno(), libc::ENOSYS);
    assert_eq!(DaxError::ZeroLength.errno(), libc::EINVAL);
    assert_eq!(DaxError::UnknownFlags { flags: 8 }.errno(), libc::EINVAL);
    assert_eq!(DaxError::NotWritable.errno(), libc::EACCES);
    let e = DaxError::Mapper(io::Error::from_raw_os_error(libc::ENOMEM));
    assert_eq!(e.errno(), libc::ENOMEM);
    assert_eq!(DaxError::Mapper(io::Error::other("x")).errno(), libc::EIO);
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
