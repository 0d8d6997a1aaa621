//! The per-vCPU DAX fault handler: classifies an exit, decides, and carries the decision out with
//! as few ioctls as possible. Exits that are not DAX faults go back to the VMM without a single
//! ioctl or syscall.

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use kvm_bindings::KVM_VCPUEVENT_VALID_PAYLOAD;
use vfsdax_protocol::apf::{
    APF_FLAGS_OFFSET, APF_READY_FLAGS_OFFSET, APF_TOKEN_OFFSET, KVM_PV_REASON_PAGE_ERROR,
    KVM_PV_REASON_PAGE_NOT_PRESENT,
};
use vfsdax_protocol::report::{Access, ActionTaken, GuestMode};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::errno;

use crate::dax::{DaxWindow, Mapping};
use crate::fault::decode::{decode_operands, store_start, DecodeRegs};
use crate::fault::{
    classify, decide, Classification, Decision, FallbackPolicy, FaultEvidence, GuestCpuState,
    Verdict, WindowGeometry, PAGE_SIZE,
};

use super::apf::{ApfVcpu, TokenSequence};
use super::fence::Fences;
use super::mce;
use super::report::{PendingReport, StopDiagnostic};
use super::vcpu::{CpuSnapshot, Exit, VcpuOps};

/// x86 #PF vector.
const PF_VECTOR: u8 = 14;
/// x86 #MC vector.
const MC_VECTOR: u8 = 18;
/// Minimum time between two fence scans triggered by kicks.
const FENCE_SCAN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);
/// Base of the local APIC MSI address range.
const MSI_ADDRESS_BASE: u64 = 0xfee0_0000;

/// Errors of the fault handler.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// The `stop` policy (or an unrecoverable fault) stopped the VM.
    #[error("{0}")]
    Stop(Box<StopDiagnostic>),
    /// A KVM ioctl failed.
    #[error("KVM failed to {what}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: errno::Error,
    },
    /// The immediate-exit run used to rewind a load did not return `EINTR`.
    #[error("rewinding the faulted load returned {0} instead of an immediate exit")]
    Rewind(String),
    /// The vCPU id would collide with the vfsdax apf token space.
    #[error("vCPU id {0} is above the highest id vfsdax apf tokens allow (4094)")]
    VcpuId(u32),
    /// Fencing a lost range failed.
    #[error("cannot fence a lost DAX window range")]
    Fence(#[source] super::fence::FenceError),
    /// The apf data the guest registered is not in guest memory.
    #[error("the apf data at guest address {0:#x} is outside guest memory")]
    ApfData(u64),
}

/// Configuration of a window's fault handling.
#[derive(Clone, Copy, Debug)]
pub struct FaultConfig {
    /// Policy for guests that did not opt in to apf errors.
    pub policy: FallbackPolicy,
    /// Whether `ASYNC_PF_ERROR` is advertised in CPUID (and the apf MSRs are trapped).
    pub apf_advertised: bool,
}

/// Counters a VMM can export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounters {
    /// Faults reported through the apf page.
    pub apf_errors: u64,
    /// Machine checks injected.
    pub machine_checks: u64,
    /// Ranges zero-filled.
    pub zero_fills: u64,
    /// Stops.
    pub stops: u64,
    /// Unmapped or read-only window accesses completed as unclaimed MMIO.
    pub unclaimed: u64,
    /// Accesses re-executed because the page was backed again.
    pub retries: u64,
    /// Trapped apf MSR writes.
    pub msr_traps: u64,
    /// 'page ready' deliveries deferred until the guest freed the slot.
    pub deferred_ready: u64,
    /// Lost window ranges fenced so KVM's own async PF cannot loop on them.
    pub fenced: u64,
}

/// What became of an exit.
#[derive(Debug)]
pub enum Handled {
    /// Not a DAX fault or apf MSR: the VMM handles the exit as usual.
    NotMine,
    /// Handled; re-enter the guest. Carries the report of a fault.
    Resume(Option<PendingReport>),
}

/// Fault-handling state the handlers of all vCPUs of one VM share: the vfsdax token sequence (a
/// guest wakes sleepers by token from any vCPU, so tokens must be unique VM-wide) and the fenced
/// window ranges (a range fenced on one vCPU is unfenced by whichever vCPU finds its file grown
/// back).
#[derive(Debug, Default)]
pub struct VmFaultState {
    tokens: Arc<TokenSequence>,
    fences: Mutex<Fences>,
    /// A [`super::watch::ShrinkWatcher`] fences shrunken files as they change.
    watched: std::sync::atomic::AtomicBool,
}

impl VmFaultState {
    /// The fenced ranges (a panic elsewhere cannot leave them half-updated: every change is one
    /// push or remove).
    pub(crate) fn fences(&self) -> MutexGuard<'_, Fences> {
        self.fences
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn set_watched(&self, on: bool) {
        self.watched.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the window range at `window_offset` is fenced (made inaccessible because its file
    /// no longer covers it), for diagnostics.
    pub fn is_fenced(&self, window_offset: u64) -> bool {
        self.fences().is_fenced(window_offset)
    }

    /// Whether a shrink watcher runs for this VM: the handlers then skip their scans of every
    /// mapping at apf ACKs and kicks, and the VMM need not kick its vCPUs.
    pub fn is_watched(&self) -> bool {
        self.watched.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The DAX fault handler of one vCPU.
pub struct DaxFaultHandler<M> {
    vcpu_id: u32,
    geometry: WindowGeometry,
    window: Arc<DaxWindow>,
    mem: M,
    config: FaultConfig,
    apf: ApfVcpu,
    mce_outstanding: bool,
    counters: FaultCounters,
    shared: Arc<VmFaultState>,
    last_fence_scan: Option<Instant>,
}

impl<M: Bytes<GuestAddress>> DaxFaultHandler<M> {
    /// A handler for vCPU `vcpu_id` (its APIC id) whose DAX window sits at `gpa_base`; `mem` is the
    /// guest RAM holding the apf data.
    pub fn new(
        vcpu_id: u32,
        window: Arc<DaxWindow>,
        gpa_base: u64,
        mem: M,
        config: FaultConfig,
    ) -> Result<Self, FaultError> {
        // vfsdax tokens carry 0xfff where KVM's carry the vCPU id; an id there would collide.
        if vcpu_id > vfsdax_protocol::apf::MAX_VCPU_ID {
            return Err(FaultError::VcpuId(vcpu_id));
        }
        let geometry = WindowGeometry {
            gpa_base,
            host_base: window.host_addr(),
            size: window.size(),
        };
        let shared = Arc::<VmFaultState>::default();
        Ok(DaxFaultHandler {
            vcpu_id,
            geometry,
            window,
            mem,
            config,
            apf: ApfVcpu {
                tokens: Arc::clone(&shared.tokens),
                ..ApfVcpu::default()
            },
            mce_outstanding: false,
            shared,
            last_fence_scan: None,
            counters: FaultCounters::default(),
        })
    }

    /// The counters so far.
    pub fn counters(&self) -> FaultCounters {
        self.counters
    }

    /// The state this handler shares with the handlers of the other vCPUs of its VM.
    pub fn shared(&self) -> &Arc<VmFaultState> {
        &self.shared
    }

    /// Makes this handler share `state` (tokens, fenced ranges) with the other vCPUs of its VM,
    /// typically `vcpu0_handler.shared()`. Call it before the vCPU first runs.
    pub fn share(&mut self, state: &Arc<VmFaultState>) {
        self.apf.tokens = Arc::clone(&state.tokens);
        self.shared = Arc::clone(state);
    }

    fn fences(&self) -> MutexGuard<'_, Fences> {
        self.shared.fences()
    }

    /// The window geometry.
    pub fn geometry(&self) -> WindowGeometry {
        self.geometry
    }

    /// The guest's apf registration as trapped so far.
    pub fn apf_registration(&self) -> crate::fault::ApfRegistration {
        self.apf.registration
    }

    /// Handles `exit`, which `ops.run()` returned at `exit_at`.
    pub fn handle<V: VcpuOps>(
        &mut self,
        ops: &mut V,
        exit: &Exit,
        exit_at: Instant,
    ) -> Result<Handled, FaultError> {
        let evidence = match *exit {
            Exit::Wrmsr { index, data } if ApfVcpu::traps(index) => {
                return self.on_apf_msr(ops, index, data);
            }
            Exit::MmioRead { gpa, len } if self.geometry.offset_of_gpa(gpa).is_some() => {
                FaultEvidence::Mmio {
                    gpa,
                    len,
                    access: Access::Read,
                }
            }
            Exit::MmioWrite { gpa, len, .. } if self.geometry.offset_of_gpa(gpa).is_some() => {
                FaultEvidence::Mmio {
                    gpa,
                    len,
                    access: Access::Write,
                }
            }
            Exit::MemoryFault { gpa, size, .. } => FaultEvidence::Efault {
                memory_fault: Some((gpa, size)),
            },
            Exit::Efault => self.locate_bare_efault(ops)?,
            Exit::Interrupted => {
                // A kick: the only exit a KVM that silently retries a lost page still produces.
                // Fence shrunken mappings (fstat only, no ioctl), at most every 10 ms.
                if !self.shared.is_watched()
                    && self
                        .last_fence_scan
                        .is_none_or(|t| t.elapsed() >= FENCE_SCAN_INTERVAL)
                {
                    self.last_fence_scan = Some(Instant::now());
                    let n = self
                        .fences()
                        .fence_truncated(&self.window)
                        .map_err(FaultError::Fence)?;
                    self.counters.fenced += n as u64;
                }
                return Ok(Handled::NotMine);
            }
            _ => return Ok(Handled::NotMine),
        };
        let class = classify(
            &evidence,
            &self.geometry,
            self.window.table(),
            Mapping::file_size,
        );
        if matches!(class, Classification::NotDax) {
            return Ok(Handled::NotMine);
        }
        let snap = ops.snapshot();
        let mut cpu = GuestCpuState {
            cpl: (snap.sregs.cs.selector & 3) as u8,
            interrupts_enabled: snap.regs.rflags & (1 << 9) != 0,
            cr4_mce: snap.sregs.cr4 & (1 << 6) != 0,
            mce_in_progress: false,
        };
        if self.mce_outstanding && self.config.policy == FallbackPolicy::Mce {
            // One ioctl, only after an earlier #MC: has the guest cleared MCIP yet?
            let mcg = ops
                .get_msr(mce::MSR_MCG_STATUS)
                .map_err(|source| FaultError::Kvm {
                    what: "read MCG_STATUS",
                    source,
                })?;
            cpu.mce_in_progress = mcg.is_none_or(|v| v & mce::MCG_STATUS_MCIP != 0);
            self.mce_outstanding = cpu.mce_in_progress;
        }
        let from_mmio = matches!(evidence, FaultEvidence::Mmio { .. });
        let verdict = decide(
            &class,
            from_mmio,
            self.config.apf_advertised,
            &self.apf.registration,
            &cpu,
            self.config.policy,
        );
        let mode = if snap.sregs.cs.selector & 3 == 3 {
            GuestMode::User
        } else {
            GuestMode::Kernel
        };
        let action = match verdict.decision {
            Decision::PassThrough => return Ok(Handled::NotMine),
            Decision::Retry => {
                if let Classification::Backed { gpa, .. } = &class {
                    let off = gpa - self.geometry.gpa_base;
                    self.fences()
                        .unfence(&self.window, off)
                        .map_err(FaultError::Fence)?;
                }
                self.retry(ops, exit, &snap, &class)?;
                self.counters.retries += 1;
                return Ok(Handled::Resume(None));
            }
            Decision::UnclaimedMmio => {
                if let Exit::MmioRead { len, .. } = *exit {
                    ops.complete_mmio_read(&[0xff; 8][..len.min(8) as usize]);
                }
                self.counters.unclaimed += 1;
                ActionTaken::UnclaimedMmio
            }
            Decision::ApfError => {
                let token = self.inject_apf(ops, exit, &snap)?;
                self.counters.apf_errors += 1;
                ActionTaken::ApfError { token }
            }
            Decision::MachineCheck => {
                self.inject_mce(ops, exit, &snap, &class)?;
                self.counters.machine_checks += 1;
                ActionTaken::MachineCheck {
                    bank: mce::DAX_BANK,
                }
            }
            Decision::ZeroFill => match self.zero_fill(ops, exit, &class) {
                Ok((window_offset, len)) => {
                    self.counters.zero_fills += 1;
                    ActionTaken::ZeroFill { window_offset, len }
                }
                Err(reason) => {
                    self.counters.stops += 1;
                    let report = self
                        .build_report(&class, ActionTaken::Stop, &verdict, mode, exit_at)
                        .resolve();
                    return Err(FaultError::Stop(Box::new(StopDiagnostic {
                        report,
                        reason,
                    })));
                }
            },
            Decision::Stop => {
                self.counters.stops += 1;
                let report = self
                    .build_report(&class, ActionTaken::Stop, &verdict, mode, exit_at)
                    .resolve();
                let reason = match &class {
                    Classification::TruncatedPage(t) if t.located.is_ambiguous() => {
                        let crate::fault::Located::ByFileSize { candidates } = t.located else {
                            unreachable!("ambiguous is by file size")
                        };
                        format!(
                            "KVM gave no address and the instruction could not be decoded, \
                             while {candidates} mapped files lost pages: the glue does not \
                             guess which one the guest touched, and the guest cannot take an \
                             apf error; stopping the VM"
                        )
                    }
                    Classification::TruncatedPage(_) => "the page lies beyond the end of the file; stopping the VM as the fault policy says".to_string(),
                    _ => "the guest touched a DAX window range it never mapped and the access cannot be completed".to_string(),
                };
                return Err(FaultError::Stop(Box::new(StopDiagnostic {
                    report,
                    reason,
                })));
            }
        };
        Ok(Handled::Resume(Some(
            self.build_report(&class, action, &verdict, mode, exit_at),
        )))
    }

    /// A bare `EFAULT`: try to recover the address by decoding the instruction at RIP (64-bit
    /// mode only; two `KVM_TRANSLATE` ioctls). Falls back to locating by file size.
    fn locate_bare_efault<V: VcpuOps>(&self, ops: &mut V) -> Result<FaultEvidence, FaultError> {
        let bare = FaultEvidence::Efault { memory_fault: None };
        let snap = ops.snapshot();
        let long_mode = snap.sregs.efer & (1 << 10) != 0 && snap.sregs.cs.l != 0;
        if !long_mode {
            return Ok(bare);
        }
        let kvm = |source| FaultError::Kvm {
            what: "translate a guest address",
            source,
        };
        let rip = snap.regs.rip;
        let mut code = [0u8; 15];
        let mut got = 0;
        while got < code.len() {
            let gva = rip.wrapping_add(got as u64);
            let Some(gpa) = ops.translate(gva).map_err(kvm)? else {
                break;
            };
            let chunk = ((PAGE_SIZE - (gva & (PAGE_SIZE - 1))) as usize).min(code.len() - got);
            if self
                .mem
                .read_slice(&mut code[got..got + chunk], GuestAddress(gpa))
                .is_err()
            {
                break;
            }
            got += chunk;
        }
        let regs = decode_regs(&snap);
        // The operands in the window (a copy may have both there): the one on a lost page if
        // only one is, else the first.
        let mut in_window = Vec::new();
        for m in decode_operands(&code[..got], &regs) {
            if let Some(gpa) = ops.translate(m.linear).map_err(kvm)? {
                if self.geometry.offset_of_gpa(gpa).is_some() {
                    in_window.push(FaultEvidence::Decoded {
                        gpa,
                        len: m.len,
                        access: m.access,
                    });
                }
            }
        }
        let lost: Vec<&FaultEvidence> = in_window
            .iter()
            .filter(|e| {
                matches!(
                    classify(e, &self.geometry, self.window.table(), Mapping::file_size),
                    Classification::TruncatedPage(_)
                )
            })
            .collect();
        Ok(match (lost.as_slice(), in_window.first()) {
            ([one], _) => **one,
            (_, Some(first)) => *first,
            (_, None) => bare,
        })
    }

    /// Completes the pending load and puts the registers back as they were at the exit, so the
    /// guest sees RIP on the faulting load. Costs one `KVM_RUN` with `immediate_exit`.
    fn rewind<V: VcpuOps>(&self, ops: &mut V, snap: &CpuSnapshot) -> Result<(), FaultError> {
        ops.set_immediate_exit(true);
        let r = ops.run();
        ops.set_immediate_exit(false);
        match r {
            Ok(Exit::Interrupted) => {
                ops.stage_regs(&snap.regs);
                Ok(())
            }
            Ok(other) => Err(FaultError::Rewind(format!("{other:?}"))),
            Err(source) => Err(FaultError::Kvm {
                what: "rewind the faulted load",
                source,
            }),
        }
    }

    /// A store KVM completed as an MMIO write before exiting leaves RIP past it; put RIP back on
    /// the store, as a load is rewound, when the instruction ending there can be told for sure
    /// (64-bit mode, [`store_start`]: the one decoding whose length ends at RIP and whose operand
    /// covers the exit's GPA). Returns whether it did. Costs a `KVM_TRANSLATE` per code page
    /// read and per candidate operand.
    fn rewind_store<V: VcpuOps>(
        &self,
        ops: &mut V,
        snap: &CpuSnapshot,
        gpa: u64,
        len: u32,
    ) -> Result<bool, FaultError> {
        let long_mode = snap.sregs.efer & (1 << 10) != 0 && snap.sregs.cs.l != 0;
        if !long_mode {
            return Ok(false);
        }
        let kvm = |source| FaultError::Kvm {
            what: "translate a guest address",
            source,
        };
        let rip = snap.regs.rip;
        let mut buf = [0u8; 15];
        let mut have = 0usize;
        while have < buf.len() {
            let end = rip.wrapping_sub(have as u64);
            let page = end.wrapping_sub(1) & !(PAGE_SIZE - 1);
            let chunk = (end.wrapping_sub(page) as usize).min(buf.len() - have);
            let Some(code_gpa) = ops.translate(end.wrapping_sub(chunk as u64)).map_err(kvm)? else {
                break;
            };
            let at = buf.len() - have - chunk;
            if self
                .mem
                .read_slice(&mut buf[at..at + chunk], GuestAddress(code_gpa))
                .is_err()
            {
                break;
            }
            have += chunk;
        }
        let regs = decode_regs(snap);
        let start = store_start(
            &buf[buf.len() - have..],
            rip,
            &regs,
            len,
            |linear, n| matches!(ops.translate(linear), Ok(Some(g)) if g <= gpa && gpa < g + u64::from(n)),
        );
        let Some(start) = start else {
            return Ok(false);
        };
        let mut regs = snap.regs;
        regs.rip = start;
        ops.stage_regs(&regs);
        Ok(true)
    }

    fn retry<V: VcpuOps>(
        &self,
        ops: &mut V,
        exit: &Exit,
        snap: &CpuSnapshot,
        class: &Classification,
    ) -> Result<(), FaultError> {
        match (*exit, class) {
            (Exit::MmioRead { .. }, _) => self.rewind(ops, snap),
            (Exit::MmioWrite { gpa, len, data }, Classification::Backed { mapping, .. }) => {
                // The store retired while the page was gone, and the page is back: run the store
                // again against it. Writing its bytes into the file instead could extend a file
                // truncated again in the meantime (pwrite past the end grows it).
                if self.rewind_store(ops, snap, gpa, len)? {
                    return Ok(());
                }
                let off =
                    mapping.file_offset + (gpa - self.geometry.gpa_base - mapping.window_offset);
                let n = (len as usize).min(8);
                let stop = |e: std::io::Error| {
                    FaultError::Stop(Box::new(StopDiagnostic {
                        report: self.bare_report(class).resolve(),
                        reason: format!("cannot complete a store to a re-extended page: {e}"),
                    }))
                };
                // Past the end now: the store landed and a truncation cut it, as if in that
                // order. Inside: write it (a truncation between the check and the write can
                // still extend the file by the store; only when the store cannot be rewound).
                let size = mapping.file.metadata().map_err(stop)?.len();
                if off + n as u64 > size {
                    return Ok(());
                }
                mapping.file.write_all_at(&data[..n], off).map_err(stop)
            }
            _ => Ok(()),
        }
    }

    fn apf_data(&self, field: u64) -> GuestAddress {
        GuestAddress(self.apf.registration.data_gpa() + field)
    }

    fn inject_apf<V: VcpuOps>(
        &mut self,
        ops: &mut V,
        exit: &Exit,
        snap: &CpuSnapshot,
    ) -> Result<u32, FaultError> {
        let token = self.apf.next_token();
        let data_gpa = self.apf.registration.data_gpa();
        self.mem
            .write_obj(
                KVM_PV_REASON_PAGE_NOT_PRESENT,
                self.apf_data(APF_FLAGS_OFFSET),
            )
            .map_err(|_| FaultError::ApfData(data_gpa))?;
        match *exit {
            Exit::MmioRead { .. } => self.rewind(ops, snap)?,
            Exit::MmioWrite { gpa, len, .. } => {
                self.rewind_store(ops, snap, gpa, len)?;
            }
            _ => {}
        }
        let mut ev = ops.snapshot().events;
        ev.exception.injected = 0;
        ev.exception.pending = 1;
        ev.exception.nr = PF_VECTOR;
        ev.exception.has_error_code = 1;
        ev.exception.error_code = 0;
        ev.exception_has_payload = 1;
        ev.exception_payload = u64::from(token);
        ev.flags |= KVM_VCPUEVENT_VALID_PAYLOAD;
        ops.stage_events(&ev);
        self.apf.pending_ready.push_back(token);
        self.deliver_ready(ops)?;
        Ok(token)
    }

    /// Delivers the oldest pending 'page ready' if the guest's slot is free (token reads 0).
    fn deliver_ready<V: VcpuOps>(&mut self, ops: &mut V) -> Result<(), FaultError> {
        let Some(vector) = self.apf.registration.ready_vector() else {
            return Ok(());
        };
        let Some(&token) = self.apf.pending_ready.front() else {
            return Ok(());
        };
        let data_gpa = self.apf.registration.data_gpa();
        let slot: u32 = self
            .mem
            .read_obj(self.apf_data(APF_TOKEN_OFFSET))
            .map_err(|_| FaultError::ApfData(data_gpa))?;
        if slot != 0 {
            self.counters.deferred_ready += 1;
            return Ok(());
        }
        self.mem
            .write_obj(token, self.apf_data(APF_TOKEN_OFFSET))
            .map_err(|_| FaultError::ApfData(data_gpa))?;
        self.mem
            .write_obj(
                KVM_PV_REASON_PAGE_ERROR,
                self.apf_data(APF_READY_FLAGS_OFFSET),
            )
            .map_err(|_| FaultError::ApfData(data_gpa))?;
        let address = MSI_ADDRESS_BASE | (u64::from(self.vcpu_id) << 12);
        ops.signal_msi(address, u32::from(vector))
            .map_err(|source| FaultError::Kvm {
                what: "signal 'page ready'",
                source,
            })?;
        self.apf.pending_ready.pop_front();
        Ok(())
    }

    fn on_apf_msr<V: VcpuOps>(
        &mut self,
        ops: &mut V,
        index: u32,
        data: u64,
    ) -> Result<Handled, FaultError> {
        self.counters.msr_traps += 1;
        if index == vfsdax_protocol::apf::MSR_KVM_ASYNC_PF_ACK && !self.shared.is_watched() {
            // The guest consumed a 'page ready': if it was KVM's own for a truncated page, the
            // retry would start KVM's async fault all over again. Fence lost ranges first.
            let n = self
                .fences()
                .fence_truncated(&self.window)
                .map_err(FaultError::Fence)?;
            self.counters.fenced += n as u64;
        }
        let w = self
            .apf
            .on_msr_write(ops, index, data, self.config.apf_advertised)
            .map_err(|source| FaultError::Kvm {
                what: "forward an apf MSR write",
                source,
            })?;
        ops.complete_msr(w.gp);
        if !w.gp {
            // An ACK (or a re-registration) may have freed the slot.
            self.deliver_ready(ops)?;
        }
        Ok(Handled::Resume(None))
    }

    fn inject_mce<V: VcpuOps>(
        &mut self,
        ops: &mut V,
        exit: &Exit,
        snap: &CpuSnapshot,
        class: &Classification,
    ) -> Result<(), FaultError> {
        let gpa = match class {
            Classification::TruncatedPage(t) => t.gpa,
            Classification::UnmappedWindowAccess { gpa, .. }
            | Classification::ReadOnlyWrite { gpa, .. }
            | Classification::Backed { gpa, .. } => *gpa,
            Classification::NotDax => self.geometry.gpa_base,
        };
        let rewound = match *exit {
            Exit::MmioRead { .. } => {
                self.rewind(ops, snap)?;
                true
            }
            Exit::MmioWrite { gpa, len, .. } => self.rewind_store(ops, snap, gpa, len)?,
            _ => false,
        };
        let on_instruction = rewound || !matches!(exit, Exit::MmioWrite { .. });
        let rec = mce::srar_record(gpa, on_instruction);
        ops.set_mce(&rec).map_err(|source| FaultError::Kvm {
            what: "inject a machine check",
            source,
        })?;
        if rewound {
            // The staged register restore clears KVM's pending exception, so stage the #MC again
            // (events are applied after registers).
            let mut ev = ops.snapshot().events;
            ev.exception.injected = 0;
            ev.exception.pending = 1;
            ev.exception.nr = MC_VECTOR;
            ev.exception.has_error_code = 0;
            ev.exception.error_code = 0;
            ev.exception_has_payload = 0;
            ev.exception_payload = 0;
            ops.stage_events(&ev);
        }
        self.mce_outstanding = true;
        Ok(())
    }

    fn zero_fill<V: VcpuOps>(
        &mut self,
        ops: &mut V,
        exit: &Exit,
        class: &Classification,
    ) -> Result<(u64, u64), String> {
        let Classification::TruncatedPage(t) = class else {
            return Err("nothing to zero-fill".into());
        };
        let (start, lost_len) = t.lost_range();
        // The fences remember the zero-filled range so no later fence scan (apf ACK, kick) takes
        // the zero pages, and the guest's stores to them, away again. Held until the store below
        // has landed (lock order: fences, then the window's change lock inside zero_fill).
        let mut fences = self.fences();
        fences
            .zero_fill(&self.window, start, lost_len)
            .map_err(|e| format!("zero-filling the lost range failed: {e}"))?;
        match *exit {
            Exit::MmioRead { len, .. } => ops.complete_mmio_read(&[0; 8][..len.min(8) as usize]),
            Exit::MmioWrite { gpa, len, data } => {
                let off = gpa - self.geometry.gpa_base;
                let n = u64::from(len.min(8));
                if off >= start && off + n <= start + lost_len {
                    let host = (self.geometry.host_base + off) as *mut u8;
                    // SAFETY: [off, off + n) lies inside [start, start + lost_len), which `zero_fill`
                    // just mapped private, anonymous and writable inside the window reservation
                    // we own through `self.window`; no Rust reference aliases that memory.
                    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), host, n as usize) };
                }
            }
            _ => {}
        }
        drop(fences);
        Ok((start, lost_len))
    }

    fn build_report(
        &self,
        class: &Classification,
        action: ActionTaken,
        verdict: &Verdict,
        mode: GuestMode,
        exit_at: Instant,
    ) -> PendingReport {
        super::report::build(
            class,
            &self.geometry,
            self.vcpu_id,
            action,
            verdict,
            mode,
            exit_at,
        )
    }

    fn bare_report(&self, class: &Classification) -> PendingReport {
        self.build_report(
            class,
            ActionTaken::Stop,
            &Verdict {
                decision: Decision::Stop,
                apf_refused: None,
                mce_refused: None,
            },
            GuestMode::Unknown,
            Instant::now(),
        )
    }
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;

/// The registers the decoder needs, from a snapshot.
fn decode_regs(snap: &CpuSnapshot) -> DecodeRegs {
    let r = &snap.regs;
    DecodeRegs {
        gpr: [
            r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ],
        rip: r.rip,
        fs_base: snap.sregs.fs.base,
        gs_base: snap.sregs.gs.base,
    }
}
