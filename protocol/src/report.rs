//! The fault-report record: one per guest access to a DAX window page that could not be served
//! (a truncated host file, or a window range the guest never mapped).
//!
//! The VMM glue returns these records; the reference VMM writes them as JSON lines. This crate
//! does no I/O, so it only derives `Serialize`.

use serde::Serialize;

/// How the guest touched the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// A load.
    Read,
    /// A store.
    Write,
    /// The exit did not say (a bare `EFAULT`, or a SIGBUS taken by the VMM).
    Unknown,
}

/// Privilege level of the guest at the faulting access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestMode {
    /// CPL 0.
    Kernel,
    /// CPL 3.
    User,
    /// Not known (no register snapshot).
    Unknown,
}

/// What was wrong with the access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// The page lies beyond the current end of the mapped file.
    TruncatedPage,
    /// The guest touched a window range it never mapped (a guest bug).
    UnmappedWindowAccess,
    /// The guest stored to a range mapped read-only (a guest bug).
    ReadOnlyWrite,
}

/// What the VMM glue did about the fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum ActionTaken {
    /// Async-page-fault error: #PF with `token`, then 'page ready' with `PAGE_ERROR`.
    ApfError {
        /// The token the guest slept on.
        token: u32,
    },
    /// A machine check (SRAR) at the faulting GPA.
    MachineCheck {
        /// The bank the error was reported in.
        bank: u32,
    },
    /// Zero pages were mapped over the lost range.
    ZeroFill {
        /// Window offset of the zero-filled range.
        window_offset: u64,
        /// Length of the zero-filled range in bytes.
        len: u64,
    },
    /// The VM was stopped with a diagnostic.
    Stop,
    /// Unmapped window access completed like unclaimed MMIO (loads read all-ones, stores are
    /// dropped).
    UnclaimedMmio,
}

/// Identity of the file behind the faulting mapping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileRef {
    /// `st_dev` of the file.
    pub dev: u64,
    /// `st_ino` of the file.
    pub ino: u64,
    /// The file's path, if known (it may end in " (deleted)").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// One fault report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FaultReport {
    /// Wall-clock time of the faulting exit, nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
    /// vCPU id.
    pub vcpu: u32,
    /// What was wrong.
    pub kind: FaultKind,
    /// Guest-physical address of the access; `None` for a bare `EFAULT` that was matched to a
    /// mapping by file size alone (then `window_offset` is the first lost byte of that mapping).
    pub gpa: Option<u64>,
    /// Offset inside the DAX window.
    pub window_offset: u64,
    /// The mapped file, when there is a mapping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileRef>,
    /// Offset in the file of the faulting page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_offset: Option<u64>,
    /// Size of the file when the fault was classified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_size_now: Option<u64>,
    /// Load or store.
    pub access: Access,
    /// Guest privilege level at the access.
    pub guest_mode: GuestMode,
    /// What was done.
    pub action: ActionTaken,
    /// Why the apf path was not taken, when a fallback was used (e.g. "guest did not opt in").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// Time from the faulting exit until the report was ready and the guest could be re-entered,
    /// in nanoseconds.
    pub latency_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FaultReport {
        FaultReport {
            time_unix_ns: 1_764_000_000_123_456_789,
            vcpu: 0,
            kind: FaultKind::TruncatedPage,
            gpa: Some(0x4000_2000),
            window_offset: 0x2000,
            file: Some(FileRef {
                dev: 0x801,
                ino: 42,
                path: Some("/share/f".into()),
            }),
            file_offset: Some(0x2000),
            file_size_now: Some(0),
            access: Access::Read,
            guest_mode: GuestMode::Kernel,
            action: ActionTaken::ApfError { token: 0x1fff },
            fallback_reason: None,
            latency_ns: 27_000,
        }
    }

    #[test]
    fn report_renders_as_one_json_line() {
        let line = serde_json::to_string(&sample()).expect("serializable");
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid json");
        assert_eq!(v["vcpu"], 0);
        assert_eq!(v["kind"], "truncated-page");
        assert_eq!(v["gpa"], 0x4000_2000u64);
        assert_eq!(v["window_offset"], 0x2000);
        assert_eq!(v["file"]["ino"], 42);
        assert_eq!(v["file"]["path"], "/share/f");
        assert_eq!(v["file_size_now"], 0);
        assert_eq!(v["access"], "read");
        assert_eq!(v["guest_mode"], "kernel");
        assert_eq!(v["action"]["action"], "apf-error");
        assert_eq!(v["action"]["token"], 0x1fff);
        assert_eq!(v["latency_ns"], 27_000);
        assert!(v.get("fallback_reason").is_none());
    }

    #[test]
    fn optional_fields_are_omitted_or_null() {
        let mut r = sample();
        r.kind = FaultKind::UnmappedWindowAccess;
        r.gpa = None;
        r.file = None;
        r.file_offset = None;
        r.file_size_now = None;
        r.action = ActionTaken::ZeroFill {
            window_offset: 0x2000,
            len: 0x2000,
        };
        r.fallback_reason = Some("guest did not opt in".into());
        let v: serde_json::Value = serde_json::to_value(&r).expect("serializable");
        assert!(v["gpa"].is_null());
        assert!(v.get("file").is_none());
        assert!(v.get("file_offset").is_none());
        assert_eq!(v["action"]["action"], "zero-fill");
        assert_eq!(v["action"]["len"], 0x2000);
        assert_eq!(v["fallback_reason"], "guest did not opt in");
        assert_eq!(v["kind"], "unmapped-window-access");
    }
}
