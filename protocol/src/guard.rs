//! The truncation-guard report record: one per host or guest truncation the daemon's guard
//! made safe for the VMM's DAX window (the window ranges that lay beyond the file's new end were
//! replaced before, or as soon as the kernel allowed after, the size changed).
//!
//! The daemon writes these records as JSON; this crate does no I/O, so it only derives
//! `Serialize`.

use serde::Serialize;

/// How the guard learnt of the truncation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuardTrigger {
    /// A fanotify pre-content event of `truncate(2)` or `ftruncate(2)`: before the size changed,
    /// the truncating process waiting.
    PreContent,
    /// A fanotify open permission event of an `open(O_TRUNC)` (the opener's flags read from
    /// `/proc/<pid>/syscall`): before the size changed.
    OpenTruncate,
    /// The guest's own truncation through FUSE (SETATTR size, OPEN or CREATE with `O_TRUNC`):
    /// before the daemon carried it out.
    Guest,
    /// A modification event after the size had changed (a truncation the kernel does not announce
    /// before: `open(O_TRUNC)` by a process the daemon cannot see, filesystems without pre-content
    /// events such as tmpfs, `fallocate(COLLAPSE_RANGE)`).
    AfterTheFact,
}

/// What was put in place of the window ranges beyond the file's new end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuardAction {
    /// Zero pages from a fresh memfd: the guest reads zeros there, as from a hole.
    Zero,
    /// Nothing: the ranges were unmapped from the window.
    Unmap,
}

/// One window range the guard changed: the chunk at `window_offset` keeps its first `kept` bytes
/// mapped from the file; the rest got the action's substitute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GuardedRange {
    /// Offset of the chunk in the window.
    pub window_offset: u64,
    /// Offset in the file of the chunk's first byte.
    pub file_offset: u64,
    /// Length of the chunk.
    pub len: u64,
    /// Bytes at the start of the chunk still mapped from the file.
    pub kept: u64,
}

/// The report of one truncation the guard acted on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuardReport {
    /// Wall-clock time of the report, microseconds since the Unix epoch.
    pub time_us: u64,
    /// The file's device number (`st_dev`).
    pub dev: u64,
    /// The file's inode number.
    pub ino: u64,
    /// The file's path as the daemon can name it (inside its sandbox), if known.
    pub path: Option<String>,
    /// The file's size when the guard acted (not known after the fact).
    pub size_before: Option<u64>,
    /// The file's new size.
    pub size_after: u64,
    /// How the guard learnt of it.
    pub trigger: GuardTrigger,
    /// What replaced the lost ranges.
    pub action: GuardAction,
    /// The window ranges changed.
    pub ranges: Vec<GuardedRange>,
    /// The truncating process, when the kernel named it (0: not visible to the daemon).
    pub pid: u32,
    /// Microseconds from the event to the window being safe (for a before-the-fact trigger,
    /// what the truncating process waited for).
    pub latency_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_kebab_case_json() {
        let r = GuardReport {
            time_us: 1,
            dev: 2,
            ino: 3,
            path: Some("/share/f".into()),
            size_before: Some(8 << 20),
            size_after: 0,
            trigger: GuardTrigger::PreContent,
            action: GuardAction::Zero,
            ranges: vec![GuardedRange {
                window_offset: 0,
                file_offset: 0,
                len: 2 << 20,
                kept: 0,
            }],
            pid: 42,
            latency_us: 120,
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains(r#""trigger":"pre-content""#), "{j}");
        assert!(j.contains(r#""action":"zero""#), "{j}");
        assert!(j.contains(r#""kept":0"#), "{j}");
        let t = serde_json::to_string(&GuardTrigger::AfterTheFact).unwrap();
        assert_eq!(t, r#""after-the-fact""#);
    }
}
