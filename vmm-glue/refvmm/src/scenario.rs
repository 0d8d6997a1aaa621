//! Truncation scenarios: a file mapped into the DAX window, a guest that reads a page of it, the
//! host changing the file under the mapping, and the guest touching a page again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfsdax_protocol::report::FaultReport;
use vm_memory::GuestMemoryMmap;

use vfsdax_vmm_glue::dax::DaxWindow;
use vfsdax_vmm_glue::fault::FallbackPolicy;

use crate::guest::{port, GuestAccess, GuestConfig, GuestObservation};
use crate::vm::{ReferenceVm, VmError, VmSetup};
use vfsdax_vmm_glue::kvm::handler::FaultCounters;
use vfsdax_vmm_glue::kvm::report::StopDiagnostic;

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
    /// The backing file: created by [`run_scenario`]; with another [`Backing`]
    /// ([`run_scenario_with`]) it only names the file.
    pub file: PathBuf,
    /// Bound on the run.
    pub timeout: Duration,
    /// Present DAX exits as the bare `EFAULT` of hardware virtualization
    /// ([`ReferenceVm::efault_exits`]).
    pub efault_exits: bool,
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
    /// DAX exits presented to the glue as a bare `EFAULT` ([`Scenario::efault_exits`]).
    pub efaults: u64,
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
    /// The backing could not change or inspect the file.
    #[error("the backing file could not be changed or inspected")]
    Backing(#[source] BackingError),
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

/// The bytes of a [`MAP_LEN`]-byte file holding `word(offset)` at every 8-byte `offset`.
pub fn pattern_bytes(word: fn(u64) -> u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(MAP_LEN as usize);
    for off in (0..MAP_LEN).step_by(8) {
        bytes.extend_from_slice(&word(off).to_le_bytes());
    }
    bytes
}

fn write_pattern(path: &Path, word: fn(u64) -> u64) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(&pattern_bytes(word))?;
    f.sync_data()?;
    Ok(f)
}

/// Applies `t` to the file `file` (open for writing) at `path` the way a host process would.
/// [`Truncation::None`] and [`Truncation::UnmapBeforeAccess`] change nothing here (the latter is
/// a window change, the backing's business).
pub fn change_on_host(t: Truncation, path: &Path, file: &File) -> io::Result<()> {
    match t {
        Truncation::None | Truncation::UnmapBeforeAccess => Ok(()),
        Truncation::ToZero => file.set_len(0),
        Truncation::BelowAccessedPage => file.set_len(BELOW_SIZE),
        Truncation::UnlinkAndRecreate => {
            fs::remove_file(path)?;
            write_pattern(path, replacement_word).map(drop)
        }
        Truncation::TruncateThenReextend => {
            file.set_len(0)?;
            file.set_len(MAP_LEN)
        }
    }
}

/// The state of the file at `path`.
pub fn file_after(path: &Path) -> io::Result<FileAfter> {
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

/// An error of a [`Backing`] (its own typed error, boxed).
pub type BackingError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where a scenario's DAX mapping comes from and how its file changes: a local file the VMM
/// maps itself ([`LocalFile`]), or a file `vfsdaxd` maps through `SHMEM_MAP`
/// ([`crate::DaemonBacking`]).
pub trait Backing {
    /// The window to place as the DAX memslot. At least [`MAP_LEN`] bytes of the file are mapped
    /// writable at window offset 0 from file offset 0.
    fn window(&self) -> Arc<DaxWindow>;

    /// More guest RAM to register as memslots (for example the virtqueues' memory).
    fn extra_ram(&self) -> Option<GuestMemoryMmap> {
        None
    }

    /// Applies `t`; called on the vCPU thread while the guest is between its two accesses.
    fn mutate(&mut self, t: Truncation) -> Result<(), BackingError>;

    /// The file at the name after the run.
    fn file_after(&mut self) -> Result<FileAfter, BackingError>;
}

/// A local file the scenario writes and maps into a window of [`WINDOW_SIZE`] itself.
#[derive(Debug)]
pub struct LocalFile {
    path: PathBuf,
    file: File,
    window: Arc<DaxWindow>,
}

impl LocalFile {
    /// Writes the original pattern to `path` and maps it at window offset 0.
    pub fn create(path: &Path) -> Result<Self, ScenarioError> {
        let file = write_pattern(path, original_word)?;
        let window = Arc::new(DaxWindow::new(WINDOW_SIZE).map_err(VmError::from)?);
        window
            .map(0, MAP_LEN, &file, 0, true)
            .map_err(VmError::from)?;
        Ok(LocalFile {
            path: path.to_path_buf(),
            file,
            window,
        })
    }
}

impl Backing for LocalFile {
    fn window(&self) -> Arc<DaxWindow> {
        Arc::clone(&self.window)
    }

    fn mutate(&mut self, t: Truncation) -> Result<(), BackingError> {
        if t == Truncation::UnmapBeforeAccess {
            self.window.unmap(MAP_LEN / 2, MAP_LEN / 2)?;
            return Ok(());
        }
        Ok(change_on_host(t, &self.path, &self.file)?)
    }

    fn file_after(&mut self) -> Result<FileAfter, BackingError> {
        Ok(file_after(&self.path)?)
    }
}

/// Runs `s` on real KVM with a local backing file at `s.file` ([`LocalFile`]).
pub fn run_scenario(s: &Scenario) -> Result<ScenarioResult, ScenarioError> {
    let mut local = LocalFile::create(&s.file)?;
    run_scenario_with(s, &mut local)
}

/// Runs `s` on real KVM with the DAX mapping and file changes of `backing` (`s.file` only names
/// the file).
pub fn run_scenario_with(
    s: &Scenario,
    backing: &mut dyn Backing,
) -> Result<ScenarioResult, ScenarioError> {
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
    let mut vm = ReferenceVm::with_window(&setup, &guest_cfg, backing.window())?;
    if let Some(ram) = backing.extra_ram() {
        vm.add_ram(&ram)?;
    }
    if s.efault_exits {
        vm.efault_exits();
    }
    let mut guest = GuestObservation::default();
    let mut mutate_err = None;
    let mut port_log = Vec::new();
    let watch = vm.watch_sync();
    let run = vm.run(s.timeout, |p, v| {
        port_log.push((p, v, Instant::now()));
        guest.record(p, v);
        if p == port::STAGE && v == 2 {
            if let Err(e) = backing.mutate(s.truncation) {
                mutate_err = Some(e);
                return false;
            }
            // The window reflects the change before the guest runs on (a VMM that changes a
            // file itself does the same; a host process's change is caught as it comes).
            if let Some(w) = &watch {
                w.sync(Duration::from_secs(2));
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
        return Err(ScenarioError::Backing(e));
    }
    Ok(ScenarioResult {
        guest,
        reports: outcome.reports,
        stop: outcome.stop,
        counters: vm.vcpus[0].handler.counters(),
        ioctls: vm.vcpus[0].vcpu.ioctl_count(),
        runs: outcome.runs,
        access_rip: vm.vcpus[0].image.access_rip,
        file_after: backing.file_after().map_err(ScenarioError::Backing)?,
        port_log,
        report_exit_at: outcome.report_exit_at,
        efaults: outcome.efaults,
    })
}
