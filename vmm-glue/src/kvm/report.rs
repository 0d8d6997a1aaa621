//! Fault reports as the handler produces them: [`PendingReport`] (path resolved later, off the
//! exit path) and [`StopDiagnostic`] (what a stop carries).

use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use vfsdax_protocol::report::{Access, ActionTaken, FaultKind, FaultReport, FileRef, GuestMode};

use crate::fault::{Classification, Verdict, WindowGeometry};

/// Everything known about a fault that stopped the VM.
#[derive(Clone, Debug)]
pub struct StopDiagnostic {
    /// The fault report (action [`ActionTaken::Stop`]).
    pub report: FaultReport,
    /// Why the VM was stopped.
    pub reason: String,
}

impl fmt::Display for StopDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        write!(
            f,
            "vCPU {} {} ",
            r.vcpu,
            match r.access {
                Access::Read => "read",
                Access::Write => "wrote",
                Access::Unknown => "accessed",
            }
        )?;
        match r.gpa {
            Some(gpa) => write!(
                f,
                "guest-physical address {gpa:#x} (DAX window offset {:#x})",
                r.window_offset
            )?,
            None => write!(
                f,
                "the DAX window (first lost byte at window offset {:#x})",
                r.window_offset
            )?,
        }
        if let Some(file) = &r.file {
            let path = file.path.as_deref().unwrap_or("<unknown path>");
            write!(
                f,
                ", mapped from {path} (dev {:#x}, inode {})",
                file.dev, file.ino
            )?;
        }
        if let Some(off) = r.file_offset {
            write!(f, " at file offset {off:#x}")?;
        }
        match r.file_size_now {
            Some(size) => write!(f, "; the file is now {size} bytes long")?,
            None => write!(f, "; the file size is unknown")?,
        }
        write!(f, ": {}", self.reason)
    }
}

/// A fault report whose file path is not resolved yet: resolving it reads `/proc/self/fd`, which
/// costs about as much as an ioctl, so the VMM re-enters the guest first and calls
/// [`PendingReport::resolve`] afterwards (or on another thread). Derefs to the report.
#[derive(Debug)]
pub struct PendingReport {
    report: FaultReport,
    file: Option<Arc<File>>,
}

impl PendingReport {
    /// The report with `file.path` filled in when it can be known.
    pub fn resolve(mut self) -> FaultReport {
        if let (Some(f), Some(r)) = (&self.file, self.report.file.as_mut()) {
            r.path = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
                .ok()
                .map(|p| p.to_string_lossy().into_owned());
        }
        self.report
    }
}

impl std::ops::Deref for PendingReport {
    type Target = FaultReport;

    fn deref(&self) -> &FaultReport {
        &self.report
    }
}

/// Builds the report of `class` (path unresolved) with the latency measured from `exit_at`.
pub fn build(
    class: &Classification,
    geometry: &WindowGeometry,
    vcpu_id: u32,
    action: ActionTaken,
    verdict: &Verdict,
    guest_mode: GuestMode,
    exit_at: Instant,
) -> PendingReport {
    let time_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let (kind, gpa, window_offset, mapping, file_offset, file_size_now, access) = match class {
        Classification::TruncatedPage(t) => {
            let exact = matches!(
                t.located,
                crate::fault::Located::Exact | crate::fault::Located::Unmapped
            );
            // Several shrunken files and no address: no file is named.
            let named = !t.located.is_ambiguous();
            (
                FaultKind::TruncatedPage,
                exact.then_some(t.gpa),
                t.window_offset,
                named.then_some(&t.mapping),
                named.then_some(t.file_offset),
                t.file_size.filter(|_| named),
                t.access,
            )
        }
        Classification::UnmappedWindowAccess {
            gpa,
            window_offset,
            access,
        } => (
            FaultKind::UnmappedWindowAccess,
            Some(*gpa),
            *window_offset,
            None,
            None,
            None,
            *access,
        ),
        Classification::ReadOnlyWrite { mapping, gpa } => {
            let wo = gpa - geometry.gpa_base;
            let fo = mapping.file_offset + (wo - mapping.window_offset);
            (
                FaultKind::ReadOnlyWrite,
                Some(*gpa),
                wo,
                Some(mapping),
                Some(fo),
                None,
                Access::Write,
            )
        }
        Classification::Backed {
            mapping,
            gpa,
            access,
        } => {
            let wo = gpa - geometry.gpa_base;
            (
                FaultKind::TruncatedPage,
                Some(*gpa),
                wo,
                Some(mapping),
                None,
                None,
                *access,
            )
        }
        Classification::NotDax => (
            FaultKind::UnmappedWindowAccess,
            None,
            0,
            None,
            None,
            None,
            Access::Unknown,
        ),
    };
    let report = FaultReport {
        time_unix_ns,
        vcpu: vcpu_id,
        kind,
        gpa,
        window_offset,
        file: mapping.map(|m| FileRef {
            dev: m.identity.dev,
            ino: m.identity.ino,
            path: None,
        }),
        file_offset,
        file_size_now,
        access,
        guest_mode,
        action,
        fallback_reason: verdict.fallback_reason(),
        latency_ns: exit_at.elapsed().as_nanos() as u64,
    };
    PendingReport {
        report,
        file: mapping.map(|m| Arc::clone(&m.file)),
    }
}
