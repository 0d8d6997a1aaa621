//! The storm's judge: pure functions over the host-side event log (every size change of every
//! file with the time its syscall started and returned, every guest access with the time it was
//! issued and the time its outcome came back, every fault report with the time of its exit).
//! No KVM here; the unit tests feed made-up logs.
//!
//! The rules, per access at file offset `o` of a file whose size was somewhere in
//! `[min, max]` while the access was in flight:
//! - killed (apf error or machine check): exactly one report in its interval, on its vCPU, for its
//!   file (device and inode) and page, with the action the vCPU's guest model calls for; the page
//!   was past the end of the file at some moment (`o >= round_up(min, 4 KiB)`), and the size the
//!   report saw is one the file had then and leaves the page outside the file;
//! - completed: no report in its interval; the page was inside the file at some moment
//!   (`o < round_up(max, 4 KiB)`); a load returned a word the file could hold there (zero, the
//!   file's pattern for that offset, or a storm store to that offset);
//! - unfinished or an unexpected exception: a hang or a crash of the guest;
//! - every report lies inside a killed access of its vCPU.

use std::collections::HashMap;
use std::time::Instant;

use vfsdax_protocol::report::{Access as AccessKind, ActionTaken, FaultReport, GuestMode};

/// A file's identity: `(st_dev, st_ino)`.
pub type Inode = (u64, u64);

/// A storm file's incarnation: its index and generation (bumped at each recreation). Inode
/// numbers are reused once a file is gone, so histories are kept by incarnation.
pub type Incarnation = (u32, u32);

const PAGE: u64 = 4096;

/// Whether the page holding `offset` is gone when the file is `size` bytes long (the page that
/// holds the end of the file stays).
pub fn lost(size: u64, offset: u64) -> bool {
    offset >= size.div_ceil(PAGE) * PAGE
}

/// The word the storm writes into file `file` (generation `gen`) at `offset`.
pub fn file_word(file: u32, gen: u32, offset: u64) -> u64 {
    (0xf1 << 56) | (u64::from(file & 0xff) << 48) | (u64::from(gen & 0xffff) << 32) | offset
}

/// The word vCPU `vcpu` stores at file offset `offset` in its `seq`-th store.
pub fn store_word(vcpu: u32, seq: u32, offset: u64) -> u64 {
    (0x57 << 56) | (u64::from(vcpu & 0xff) << 48) | (u64::from(seq & 0xffff) << 32) | offset
}

/// Whether a load of file `file` at `offset` may return `v`: zero (a hole, or the file regrown),
/// the file's own pattern there, or a storm store to that offset; or the first bytes of one of
/// those and zeros after them (a truncation to a size inside the word zeroes the rest of its
/// page, and a regrowth keeps the zeros).
pub fn word_ok(v: u64, file: u32, offset: u64) -> bool {
    if v == 0 {
        return true;
    }
    let tag = v >> 56;
    if tag == 0 {
        // Cut: only the bytes kept can be checked, the low ones holding the offset.
        let kept = 8 - (v.leading_zeros() / 8) as u64;
        let mask = if kept >= 4 {
            0xffff_ffff
        } else {
            (1u64 << (8 * kept)) - 1
        };
        return (v & mask) == (offset & mask);
    }
    (v & 0xffff_ffff) == offset
        && (tag == 0x57 || (tag == 0xf1 && ((v >> 48) & 0xff) == u64::from(file & 0xff)))
}

/// One size change: the size the file had once a syscall that started at `start` returned at
/// `end`.
#[derive(Clone, Copy, Debug)]
pub struct SizeChange {
    /// Before the syscall.
    pub start: Instant,
    /// After it returned.
    pub end: Instant,
    /// The size it left.
    pub size: u64,
}

/// The sizes one inode had: its size when created, then its changes in order (the storm changes
/// a file from one thread at a time).
#[derive(Clone, Debug)]
pub struct SizeHistory {
    initial: u64,
    changes: Vec<SizeChange>,
}

impl SizeHistory {
    /// A file created `initial` bytes long.
    pub fn new(initial: u64) -> Self {
        SizeHistory {
            initial,
            changes: Vec::new(),
        }
    }

    /// Records a change (after the ones already recorded).
    pub fn push(&mut self, change: SizeChange) {
        self.changes.push(change);
    }

    /// Number of changes that made the file shorter than the one before.
    pub fn shrinks(&self) -> usize {
        let mut prev = self.initial;
        let mut n = 0;
        for c in &self.changes {
            if c.size < prev {
                n += 1;
            }
            prev = c.size;
        }
        n
    }

    /// Smallest and largest size the file may have had at some moment in `[t0, t1]`.
    pub fn range(&self, t0: Instant, t1: Instant) -> (u64, u64) {
        let mut before = self.initial;
        let mut lo = u64::MAX;
        let mut hi = 0;
        for c in &self.changes {
            if c.end <= t0 {
                before = c.size;
            } else if c.start <= t1 {
                lo = lo.min(c.size);
                hi = hi.max(c.size);
            }
        }
        (lo.min(before), hi.max(before))
    }

    /// The changes around `[t0, t1]` (times relative to `t0`), for a violation's message.
    pub fn around(&self, t0: Instant, t1: Instant) -> String {
        let rel = |t: Instant| {
            if t >= t0 {
                format!("+{:?}", t - t0)
            } else {
                format!("-{:?}", t0 - t)
            }
        };
        let mut before = self.initial;
        let mut shown = Vec::new();
        for c in &self.changes {
            if c.end + std::time::Duration::from_millis(20) <= t0 {
                before = c.size;
            } else if c.start <= t1 + std::time::Duration::from_millis(20) {
                shown.push(format!("{}..{} -> {}", rel(c.start), rel(c.end), c.size));
            }
        }
        format!(
            "[{} bytes before; {}; access ended at {}]",
            before,
            shown.join(", "),
            rel(t1)
        )
    }

    /// Whether the file may have been `size` bytes long at some moment in `[t0, t1]`.
    pub fn had(&self, size: u64, t0: Instant, t1: Instant) -> bool {
        let mut before = self.initial;
        let mut seen = false;
        for c in &self.changes {
            if c.end <= t0 {
                before = c.size;
            } else if c.start <= t1 {
                seen |= c.size == size;
            }
        }
        seen || before == size
    }
}

/// How an access ended, as the guest reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The load returned this word.
    Loaded(u64),
    /// The store completed.
    Stored,
    /// The task was killed: 1 by an apf error, 2 by a machine check.
    Killed(u32),
    /// An unexpected exception (its vector).
    Exception(u32),
    /// No outcome before the run ended.
    Unfinished,
}

/// One guest access.
#[derive(Clone, Debug)]
pub struct Access {
    /// The vCPU.
    pub vcpu: u32,
    /// Index of the storm file mapped there.
    pub file: u32,
    /// The generation of that file mapped there.
    pub gen: u32,
    /// The inode mapped there.
    pub inode: Inode,
    /// Window offset.
    pub window_offset: u64,
    /// File offset.
    pub file_offset: u64,
    /// Whether it was a store.
    pub store: bool,
    /// When the VMM handed it to the guest.
    pub t0: Instant,
    /// When its outcome came back.
    pub t1: Instant,
    /// The outcome.
    pub outcome: Outcome,
}

/// A fault report and when the exit behind it returned from `KVM_RUN`.
#[derive(Clone, Debug)]
pub struct SeenReport {
    /// The exit's time.
    pub at: Instant,
    /// The report.
    pub report: FaultReport,
}

/// What the judge counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Accesses judged.
    pub accesses: u64,
    /// Loads and stores that completed.
    pub completed: u64,
    /// Tasks killed by an apf error.
    pub apf_errors: u64,
    /// Tasks killed by a machine check.
    pub machine_checks: u64,
    /// Completed accesses whose page was past the end of the file at some moment in flight
    /// (the file grew back in time: no report is right).
    pub raced_and_backed: u64,
    /// Reports matched to their access.
    pub reports: u64,
}

/// The judge's verdict.
#[derive(Debug, Default)]
pub struct Verdict {
    /// What was counted.
    pub tally: Tally,
    /// Every broken rule, one line each.
    pub violations: Vec<String>,
}

/// What a vCPU's guest model calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuModel {
    /// How its tasks die on a lost page: 1 apf error, 2 machine check.
    pub kill: u32,
    /// The mode its accesses run in.
    pub mode: GuestMode,
}

/// Judges one vCPU's accesses (in order) against its reports (in the order of their exits).
pub fn judge_vcpu(
    accesses: &[Access],
    reports: &[SeenReport],
    model: VcpuModel,
    sizes: &HashMap<Incarnation, SizeHistory>,
    verdict: &mut Verdict,
) {
    let mut used = vec![false; reports.len()];
    for a in accesses {
        verdict.tally.accesses += 1;
        // Reports come in exit order: the ones in flight are a contiguous run.
        let first = reports.partition_point(|r| r.at < a.t0);
        let end = reports.partition_point(|r| r.at <= a.t1);
        let mine: Vec<usize> = (first..end.max(first)).collect();
        for &i in &mine {
            used[i] = true;
        }
        let Some(hist) = sizes.get(&(a.file, a.gen)) else {
            verdict
                .violations
                .push(format!("{a:?}: no size history for its file"));
            continue;
        };
        let (min, max) = hist.range(a.t0, a.t1);
        let page = a.file_offset & !(PAGE - 1);
        match a.outcome {
            Outcome::Loaded(_) | Outcome::Stored => {
                verdict.tally.completed += 1;
                if !mine.is_empty() {
                    verdict.violations.push(format!(
                        "{a:?} completed but has {} report(s): {:?}",
                        mine.len(),
                        mine.iter().map(|&i| &reports[i].report).collect::<Vec<_>>()
                    ));
                }
                if lost(max, a.file_offset) {
                    verdict.violations.push(format!(
                        "{a:?} completed although the file was at most {max} bytes throughout {}",
                        hist.around(a.t0, a.t1)
                    ));
                } else if lost(min, a.file_offset) {
                    verdict.tally.raced_and_backed += 1;
                }
                if let Outcome::Loaded(v) = a.outcome {
                    if !word_ok(v, a.file, a.file_offset) {
                        verdict.violations.push(format!(
                            "{a:?} loaded {v:#x}, a word file {} cannot hold at {:#x}",
                            a.file, a.file_offset
                        ));
                    }
                }
            }
            Outcome::Killed(k) => {
                match k {
                    1 => verdict.tally.apf_errors += 1,
                    _ => verdict.tally.machine_checks += 1,
                }
                if k != model.kill {
                    verdict.violations.push(format!(
                        "{a:?}: killed by {k}, the guest model calls for {}",
                        model.kill
                    ));
                }
                if !lost(min, a.file_offset) {
                    verdict.violations.push(format!(
                        "{a:?} was killed although the file was at least {min} bytes throughout {}",
                        hist.around(a.t0, a.t1)
                    ));
                }
                if mine.len() != 1 {
                    verdict.violations.push(format!(
                        "{a:?} was killed with {} reports in flight (want exactly 1)",
                        mine.len()
                    ));
                    continue;
                }
                verdict.tally.reports += 1;
                let r = &reports[mine[0]].report;
                check_report(a, r, model, page, hist, verdict);
            }
            Outcome::Exception(v) => verdict
                .violations
                .push(format!("{a:?}: unexpected guest exception {v}")),
            Outcome::Unfinished => verdict
                .violations
                .push(format!("{a:?}: no outcome (the guest hung)")),
        }
    }
    for (i, r) in reports.iter().enumerate() {
        if !used[i] {
            verdict.violations.push(format!(
                "report outside every access of vCPU {}: {:?}",
                r.report.vcpu, r.report
            ));
        }
    }
}

fn check_report(
    a: &Access,
    r: &FaultReport,
    model: VcpuModel,
    page: u64,
    hist: &SizeHistory,
    verdict: &mut Verdict,
) {
    let mut wrong = Vec::new();
    if r.vcpu != a.vcpu {
        wrong.push(format!("vCPU {}", r.vcpu));
    }
    match &r.file {
        Some(f) if (f.dev, f.ino) == a.inode => {}
        other => wrong.push(format!("file {other:?}")),
    }
    if r.file_offset.map(|o| o & !(PAGE - 1)) != Some(page) {
        wrong.push(format!("file offset {:?}", r.file_offset));
    }
    if r.window_offset & !(PAGE - 1) != a.window_offset & !(PAGE - 1) {
        wrong.push(format!("window offset {:#x}", r.window_offset));
    }
    match r.file_size_now {
        Some(s) if lost(s, a.file_offset) && hist.had(s, a.t0, a.t1) => {}
        other => wrong.push(format!("size now {other:?} {}", hist.around(a.t0, a.t1))),
    }
    if r.guest_mode != model.mode {
        wrong.push(format!("guest mode {:?}", r.guest_mode));
    }
    let want = if a.store {
        AccessKind::Write
    } else {
        AccessKind::Read
    };
    if r.access != want {
        wrong.push(format!("access {:?}", r.access));
    }
    let action_ok = matches!(
        (model.kill, &r.action),
        (1, ActionTaken::ApfError { .. }) | (2, ActionTaken::MachineCheck { .. })
    );
    if !action_ok {
        wrong.push(format!("action {:?}", r.action));
    }
    if !wrong.is_empty() {
        verdict.violations.push(format!(
            "{a:?}: its report has the wrong {}: {r:?}",
            wrong.join(", ")
        ));
    }
}

#[cfg(test)]
#[path = "oracle_tests.rs"]
mod tests;
