use std::time::Duration;

use vfsdax_protocol::report::{FaultKind, FileRef};

use super::*;

const INODE: Inode = (8, 42);
const APF: VcpuModel = VcpuModel {
    kill: 1,
    mode: GuestMode::User,
};

fn at(base: Instant, ms: u64) -> Instant {
    base + Duration::from_millis(ms)
}

fn change(base: Instant, start: u64, end: u64, size: u64) -> SizeChange {
    SizeChange {
        start: at(base, start),
        end: at(base, end),
        size,
    }
}

fn access(base: Instant, t0: u64, t1: u64, offset: u64, outcome: Outcome) -> Access {
    Access {
        vcpu: 0,
        file: 3,
        gen: 1,
        inode: INODE,
        window_offset: 0x20_0000 + offset,
        file_offset: offset,
        store: false,
        t0: at(base, t0),
        t1: at(base, t1),
        outcome,
    }
}

fn report(base: Instant, ms: u64, offset: u64, size_now: u64) -> SeenReport {
    SeenReport {
        at: at(base, ms),
        report: FaultReport {
            time_unix_ns: 0,
            vcpu: 0,
            kind: FaultKind::TruncatedPage,
            gpa: Some(0x4020_0000 + offset),
            window_offset: 0x20_0000 + offset,
            file: Some(FileRef {
                dev: INODE.0,
                ino: INODE.1,
                path: None,
            }),
            file_offset: Some(offset),
            file_size_now: Some(size_now),
            access: AccessKind::Read,
            guest_mode: GuestMode::User,
            action: ActionTaken::ApfError { token: 0x1fff },
            fallback_reason: None,
            latency_ns: 1,
        },
    }
}

/// A file of 1 MiB truncated to 4 KiB during [10, 11] ms and grown back to 1 MiB during
/// [20, 21] ms.
fn history(base: Instant) -> HashMap<Incarnation, SizeHistory> {
    let mut h = SizeHistory::new(1 << 20);
    h.push(change(base, 10, 11, 4096));
    h.push(change(base, 20, 21, 1 << 20));
    HashMap::from([((3, 1), h)])
}

thread_local! {
    /// Time 0 of every made-up log on this thread.
    static BASE: Instant = Instant::now();
}

fn base() -> Instant {
    BASE.with(|b| *b)
}

fn judge(accesses: &[Access], reports: &[SeenReport]) -> Verdict {
    let mut v = Verdict::default();
    judge_vcpu(accesses, reports, APF, &history(base()), &mut v);
    v
}

#[test]
fn lost_keeps_the_page_holding_the_end_of_file() {
    assert!(!lost(4096, 4095));
    assert!(lost(4096, 4096));
    assert!(!lost(4097, 8191), "the partial last page stays");
    assert!(lost(0, 0));
    assert!(!lost(1, 0));
}

#[test]
fn words_tell_files_and_offsets_apart() {
    assert!(word_ok(file_word(3, 7, 0x1008), 3, 0x1008));
    assert!(!word_ok(file_word(4, 7, 0x1008), 3, 0x1008), "another file");
    assert!(
        !word_ok(file_word(3, 7, 0x1010), 3, 0x1008),
        "another offset"
    );
    assert!(word_ok(store_word(2, 9, 0x1008), 3, 0x1008));
    assert!(!word_ok(store_word(2, 9, 0x2008), 3, 0x1008));
    assert!(word_ok(0, 3, 0x1008));
    // Cut by a truncation inside the word (the kept low bytes still name the offset).
    let w = store_word(5, 13, 0x6c840);
    assert!(word_ok(w & 0xff_ffff_ffff, 3, 0x6c840));
    assert!(word_ok(
        file_word(3, 7, 0xbe78) & 0xff_ffff_ffff_ffff,
        3,
        0xbe78
    ));
    assert!(word_ok(0x40, 3, 0x6c840), "one byte kept");
    assert!(!word_ok(w & 0xff_ffff_ffff, 3, 0x6c848), "another offset");
    assert!(!word_ok(0x48, 3, 0x6c840));
}

#[test]
fn the_size_range_covers_every_change_in_flight() {
    let b = base();
    let h = &history(b)[&(3, 1)];
    assert_eq!(h.range(at(b, 0), at(b, 5)), (1 << 20, 1 << 20));
    assert_eq!(h.range(at(b, 12), at(b, 15)), (4096, 4096));
    assert_eq!(
        h.range(at(b, 5), at(b, 10)),
        (4096, 1 << 20),
        "starts in flight"
    );
    assert_eq!(h.range(at(b, 12), at(b, 20)), (4096, 1 << 20));
    assert!(h.had(4096, at(b, 5), at(b, 12)));
    assert!(!h.had(4096, at(b, 0), at(b, 9)));
    assert_eq!(h.shrinks(), 1);
}

#[test]
fn a_clean_storm_has_no_violations() {
    let b = base();
    let accesses = [
        access(b, 0, 1, 0x8000, Outcome::Loaded(file_word(3, 0, 0x8000))),
        access(b, 12, 14, 0x8000, Outcome::Killed(1)),
        access(b, 15, 16, 0x10, Outcome::Loaded(0)),
        access(b, 19, 22, 0x8000, Outcome::Loaded(0)),
        access(b, 30, 31, 0x8000, Outcome::Stored),
    ];
    let v = judge(&accesses, &[report(b, 13, 0x8000, 4096)]);
    assert!(v.violations.is_empty(), "{:#?}", v.violations);
    assert_eq!(v.tally.accesses, 5);
    assert_eq!((v.tally.apf_errors, v.tally.reports), (1, 1));
    assert_eq!(v.tally.raced_and_backed, 1);
}

#[test]
fn a_missing_or_doubled_report_is_caught() {
    let b = base();
    let killed = [access(b, 12, 14, 0x8000, Outcome::Killed(1))];
    assert_eq!(judge(&killed, &[]).violations.len(), 1);
    let two = [report(b, 13, 0x8000, 4096), report(b, 13, 0x8000, 4096)];
    assert_eq!(judge(&killed, &two).violations.len(), 1);
}

#[test]
fn a_report_for_a_page_inside_the_file_is_caught() {
    let b = base();
    // Killed while the file was 1 MiB throughout: a false positive.
    let v = judge(
        &[access(b, 0, 2, 0x8000, Outcome::Killed(1))],
        &[report(b, 1, 0x8000, 1 << 20)],
    );
    assert_eq!(v.violations.len(), 2, "{:#?}", v.violations);
    // A completed access with a report in flight.
    let v = judge(
        &[access(b, 0, 2, 0x8000, Outcome::Stored)],
        &[report(b, 1, 0x8000, 4096)],
    );
    assert!(!v.violations.is_empty());
}

#[test]
fn a_completed_access_past_the_end_throughout_is_caught() {
    let b = base();
    let v = judge(&[access(b, 12, 14, 0x8000, Outcome::Loaded(0))], &[]);
    assert_eq!(v.violations.len(), 1, "{:#?}", v.violations);
}

#[test]
fn a_report_naming_the_wrong_file_offset_size_or_action_is_caught() {
    let b = base();
    let a = [access(b, 12, 14, 0x8000, Outcome::Killed(1))];
    let mut wrong_file = report(b, 13, 0x8000, 4096);
    wrong_file.report.file = Some(FileRef {
        dev: 8,
        ino: 43,
        path: None,
    });
    let mut wrong_offset = report(b, 13, 0x8000, 4096);
    wrong_offset.report.file_offset = Some(0x9000);
    let wrong_size = report(b, 13, 0x8000, 8192);
    let mut wrong_action = report(b, 13, 0x8000, 4096);
    wrong_action.report.action = ActionTaken::MachineCheck { bank: 9 };
    let mut wrong_mode = report(b, 13, 0x8000, 4096);
    wrong_mode.report.guest_mode = GuestMode::Kernel;
    for r in [
        wrong_file,
        wrong_offset,
        wrong_size,
        wrong_action,
        wrong_mode,
    ] {
        let v = judge(&a, &[r]);
        assert_eq!(v.violations.len(), 1, "{:#?}", v.violations);
    }
}

#[test]
fn stray_reports_hangs_crashes_and_bad_words_are_caught() {
    let b = base();
    let v = judge(
        &[access(b, 0, 1, 0x10, Outcome::Loaded(0))],
        &[report(b, 5, 0x8000, 4096)],
    );
    assert_eq!(v.violations.len(), 1, "stray report: {:#?}", v.violations);
    for o in [
        Outcome::Unfinished,
        Outcome::Exception(13),
        Outcome::Loaded(file_word(4, 0, 0x10)),
        Outcome::Killed(2),
    ] {
        let v = judge(&[access(b, 12, 14, 0x10, o)], &[]);
        assert!(!v.violations.is_empty(), "{o:?}");
    }
}
