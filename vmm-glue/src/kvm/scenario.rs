//! Truncation scenarios: a file mapped into the DAX window, a guest that reads a page of it, the
//! host changing the file under the mapping, and the guest touching a page again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfsdax_protocol::report::FaultReport;

use crate::dax::DaxWindow;
use crate::fault::FallbackPolicy;

use super::guest::{port, GuestAccess, GuestConfig, GuestObservation};
use super::handler::FaultCounters;
use super::report::StopDiagnostic;
use super::vm::{ReferenceVm, VmError, VmSetup};

/// Bytes of the file mapped into the window (at window offset 0, file offset 0).
pub const MAP_LEN: u64 = 0x4000;
/// Window offset of the guest's baseline load (page 0).
pub const BASELINE_OFFSET: u64 = 0x8;
/// Window offset of the guest's access (page 2).
pub const ACCESS_OFFSET: u64 = 0x2010;
/// File size after "truncate below the accessed page" (inside page 1).
pub const BELOW_SIZE: u64 = 0x1800;
/// Value the guest stores.
pub const STORE_VALUE: u64 = 0x5a5a_0000_c3c3_0000;
/// Size of the DAX window.
pub const WINDOW_SIZE: u64 = 0x20_0000;

/// The 8-byte word the original file holds at `offset`.
pub fn original_word(offset: u64) -> u64 {
    0x0f11_e000_0000_0000 | offset
}

/// The 8-byte word the file recreated under the same name holds at `offset`.
pub fn replacement_word(offset: u64) -> u64 {
    0x0bee_f000_0000_0000 | offset
}

/// What the host does to the file while the guest is between its two accesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truncation {
    /// Nothing (control).
    None,
    /// `ftruncate(0)`.
    ToZero,
    /// `ftruncate` to [`BELOW_SIZE`], below the accessed page.
    BelowAccessedPage,
    /// `unlink` the name and create a new file under it (the mapping keeps the old inode).
    UnlinkAndRecreate,
    /// `ftruncate(0)` then `ftruncate(MAP_LEN)` before the access (the page reads zeros).
    TruncateThenReextend,
    /// Not a truncation: the accessed half of the mapping is removed from the window (as a
    /// REMOVEMAPPING would), so the guest touches a window range it no longer maps (a guest bug).
    UnmapBeforeAccess,
}

impl std::str::FromStr for Truncation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "to-zero" => Ok(Self::ToZero),
            "below-page" => Ok(Self::BelowAccessedPage),
            "unlink-recreate" => Ok(Self::UnlinkAndRecreate),
            "reextend" => Ok(Self::TruncateThenReextend),
            "unmap" => Ok(Self::UnmapBeforeAccess),
            other => Err(format!(
                "unknown truncation '{other}' (expected none, to-zero, below-page, unlink-recreate, reextend or unmap)"
            )),
        }
    }
}

/// One scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Load or store.
    pub access: GuestAccess,
    /// The guest opts in to apf errors.
    pub opt_in: bool,
    /// The guest registers for plain apf like a stock Linux guest (ignored with `opt_in`).
    pub stock_apf: bool,
    /// The guest sets `SEND_ALWAYS` when it registers.
    pub send_always: bool,
    /// The guest sets CR4.MCE.
    pub guest_mce: bool,
    /// The guest's accesses run in user mode (CPL 3).
    pub user_mode: bool,
    /// CPUID bit advertising the feature (`None`: not advertised).
    pub feature_bit: Option<u32>,
    /// Fallback policy.
    pub policy: FallbackPolicy,
    /// What happens to the file.
    pub truncation: Truncation,
    /// The backing file (created by the scenario).
    pub file: PathBuf,
    /// Bound on the run.
    pub timeout: Duration,
}

/// The state of the file at the path after the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileAfter {
    /// Length.
    pub len: u64,
    /// The word at [`ACCESS_OFFSET`], if the file covers it.
    pub word_at_access: Option<u64>,
}

/// What happened.
#[derive(Debug)]
pub struct ScenarioResult {
    /// What the guest reported.
    pub guest: GuestObservation,
    /// Fault reports.
    pub reports: Vec<FaultReport>,
    /// The stop diagnostic, if stopped.
    pub stop: Option<StopDiagnostic>,
    /// Handler counters.
    pub counters: FaultCounters,
    /// ioctls the vCPU wrapper issued (including `KVM_RUN`).
    pub ioctls: u64,
    /// `KVM_RUN` calls made by the run loop.
    pub runs: u64,
    /// Guest address of the access instruction.
    pub access_rip: u64,
    /// The file at the path afterwards.
    pub file_after: FileAfter,
    /// Every guest port write with the time the VMM saw it.
    pub port_log: Vec<(u16, u32, Instant)>,
    /// When the exit behind each report returned from `KVM_RUN` (parallel to `reports`).
    pub report_exit_at: Vec<Instant>,
}

/// Errors of a scenario.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Preparing or changing the backing file failed.
    #[error("backing file operation failed")]
    File(#[from] io::Error),
    /// The VM failed.
    #[error("the reference VM failed")]
    Vm(#[from] VmError),
    /// The VM failed while running the guest; carries what the guest had reported by then.
    #[error("the reference VM failed after the guest reported {guest:?}")]
    Run {
        /// What the guest reported before the failure.
        guest: Box<GuestObservation>,
        /// The failure.
        #[source]
        source: VmError,
    },
}

fn write_pattern(path: &PathBuf, word: fn(u64) -> u64) -> io::Result<File> {
    let mut bytes = Vec::with_capacity(MAP_LEN as usize);
    for off in (0..MAP_LEN).step_by(8) {
        bytes.extend_from_slice(&word(off).to_le_bytes());
    }
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(&bytes)?;
    f.sync_data()?;
    Ok(f)
}

fn mutate(s: &Scenario, file: &File, window: &DaxWindow) -> io::Result<()> {
    match s.truncation {
        Truncation::None => Ok(()),
        Truncation::UnmapBeforeAccess => window
            .unmap(MAP_LEN / 2, MAP_LEN / 2)
            .map_err(|e| io::Error::other(e.to_string())),
        Truncation::ToZero => file.set_len(0),
        Truncation::BelowAccessedPage => file.set_len(BELOW_SIZE),
        Truncation::UnlinkAndRecreate => {
            fs::remove_file(&s.file)?;
            write_pattern(&s.file, replacement_word).map(drop)
        }
        Truncation::TruncateThenReextend => {
            file.set_len(0)?;
            file.set_len(MAP_LEN)
        }
    }
}

fn file_after(path: &PathBuf) -> io::Result<FileAfter> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    let word_at_access = if len >= ACCESS_OFFSET + 8 {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, ACCESS_OFFSET)?;
        Some(u64::from_le_bytes(b))
    } else {
        None
    };
    Ok(FileAfter {
        len,
        word_at_access,
    })
}

/// Runs `s` on real KVM.
pub fn run_scenario(s: &Scenario) -> Result<ScenarioResult, ScenarioError> {
    let file = write_pattern(&s.file, original_word)?;
    let guest_cfg = GuestConfig {
        access: s.access,
        opt_in: s.opt_in,
        send_always: s.send_always,
        stock_apf: s.stock_apf,
        enable_mce: s.guest_mce,
        interrupts: true,
        user_mode: s.user_mode,
        feature_bit: s
            .feature_bit
            .unwrap_or(vfsdax_protocol::apf::DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT),
        baseline_offset: BASELINE_OFFSET,
        access_offset: ACCESS_OFFSET,
        store_value: STORE_VALUE,
    };
    let setup = VmSetup {
        feature_bit: s.feature_bit,
        policy: s.policy,
        window_size: WINDOW_SIZE,
    };
    let mut vm = ReferenceVm::new(&setup, &guest_cfg)?;
    vm.window
        .map(0, MAP_LEN, &file, 0, true)
        .map_err(VmError::from)?;
    let mut guest = GuestObservation::default();
    let mut mutate_err = None;
    let mut port_log = Vec::new();
    let window = Arc::clone(&vm.window);
    let run = vm.run(s.timeout, |p, v| {
        port_log.push((p, v, Instant::now()));
        guest.record(p, v);
        if p == port::STAGE && v == 2 {
            if let Err(e) = mutate(s, &file, &window) {
                mutate_err = Some(e);
                return false;
            }
        }
        p != port::DONE
    });
    let outcome = match run {
        Ok(o) => o,
        Err(source) => {
            return Err(ScenarioError::Run {
                guest: Box::new(guest),
                source,
            })
        }
    };
    if let Some(e) = mutate_err {
        return Err(e.into());
    }
    Ok(ScenarioResult {
        guest,
        reports: outcome.reports,
        stop: outcome.stop,
        counters: vm.handler.counters(),
        ioctls: vm.vcpu.ioctl_count(),
        runs: outcome.runs,
        access_rip: vm.image.access_rip,
        file_after: file_after(&s.file)?,
        port_log,
        report_exit_at: outcome.report_exit_at,
    })
}
