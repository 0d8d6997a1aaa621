//! A minimal reference VM on real KVM: guest RAM, a DAX window memslot, one or more vCPUs, each with
//! its DAX fault handler (sharing one [`vfsdax_vmm_glue::kvm::VmFaultState`]), an in-kernel irqchip (so KVM's own
//! async PF and MSI delivery work), and a bounded run loop per vCPU thread. Used by the reference
//! VMM binary, the KVM tests and the benchmark.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_mp_state, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vfsdax_protocol::report::FaultReport;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::errno;

use vfsdax_vmm_glue::dax::{DaxWindow, WindowError};
use vfsdax_vmm_glue::fault::FallbackPolicy;

use crate::guest::program::{self, GuestError, GuestImage};
use crate::guest::{layout, GuestConfig};
use vfsdax_vmm_glue::kvm::apf::{self, ApfError};
use vfsdax_vmm_glue::kvm::handler::{DaxFaultHandler, FaultConfig, FaultError, Handled};
use vfsdax_vmm_glue::kvm::mce;
use vfsdax_vmm_glue::kvm::report::{PendingReport, StopDiagnostic};
use vfsdax_vmm_glue::kvm::vcpu::{Exit, KvmVcpu, VcpuOps};
use vfsdax_vmm_glue::kvm::{ShrinkWatcher, WindowMemslot};

/// Errors of the reference VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` or a VM-level ioctl failed.
    #[error("KVM failed to {what}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: errno::Error,
    },
    /// A capability the glue needs is missing.
    #[error("KVM lacks the {0} capability")]
    MissingCap(&'static str),
    /// The shrink watcher could not start.
    #[error("cannot start the shrink watcher")]
    Watch(#[source] vfsdax_vmm_glue::kvm::WatchError),
    /// The window's memslot could not be registered.
    #[error("cannot register the DAX window")]
    Memslot(#[source] vfsdax_vmm_glue::kvm::MemslotError),
    /// Guest memory could not be created.
    #[error("cannot create guest memory")]
    Memory,
    /// The DAX window failed.
    #[error("DAX window error")]
    Window(#[from] WindowError),
    /// apf set-up failed.
    #[error("apf set-up failed")]
    Apf(#[from] ApfError),
    /// The guest program could not be built or loaded.
    #[error("guest program error")]
    Guest(#[from] GuestError),
    /// The fault handler failed (other than a policy stop).
    #[error("DAX fault handling failed")]
    Fault(#[source] FaultError),
    /// The run did not finish in time.
    #[error("the guest did not finish within {0:?}")]
    Timeout(Duration),
    /// The guest shut down (triple fault).
    #[error("the guest shut down (triple fault) after {exits} exits")]
    Shutdown {
        /// Exits before the shutdown.
        exits: u64,
    },
    /// `KVM_RUN` failed with a bare `EFAULT` that was not a DAX fault.
    #[error("KVM_RUN failed with EFAULT outside the DAX window")]
    Efault,
    /// An exit the reference VM does not handle.
    #[error("unexpected vCPU exit {0}")]
    UnexpectedExit(String),
    /// No guest program, or more vCPUs than the guest layout has room for.
    #[error("cannot create {0} vCPUs (1 to {max} supported)", max = layout::MAX_VCPUS)]
    VcpuCount(usize),
}

/// Set-up of the reference VM.
#[derive(Clone, Copy, Debug)]
pub struct VmSetup {
    /// CPUID bit advertising `ASYNC_PF_ERROR`; `None` = not advertised, apf MSRs not trapped.
    pub feature_bit: Option<u32>,
    /// Fallback policy of the window.
    pub policy: FallbackPolicy,
    /// DAX window size.
    pub window_size: u64,
}

/// Result of a run.
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// Fault reports, in order.
    pub reports: Vec<FaultReport>,
    /// The diagnostic, if the `stop` policy stopped the VM.
    pub stop: Option<StopDiagnostic>,
    /// `KVM_RUN` calls made by the run loop itself.
    pub runs: u64,
    /// When `KVM_RUN` returned the exit behind each report (parallel to `reports`).
    pub report_exit_at: Vec<Instant>,
    /// DAX exits presented to the glue as a bare `EFAULT` ([`ReferenceVm::efault_exits`]).
    pub efaults: u64,
}

/// One vCPU of the reference VM: the vCPU, its fault handler and the guest program it runs.
pub struct VmVcpu {
    /// The vCPU (with its ioctl counter).
    pub vcpu: KvmVcpu,
    /// Its fault handler.
    pub handler: DaxFaultHandler<GuestMemoryMmap>,
    /// The guest program it runs (out of its private area of guest RAM).
    pub image: GuestImage,
    /// Whether exits go through the glue's handler first (see [`ReferenceVm::without_glue`]).
    glue: bool,
    /// Whether a DAX MMIO exit is presented as the bare `EFAULT` of hardware virtualization
    /// (see [`ReferenceVm::efault_exits`]).
    efault: bool,
    /// Size of the DAX window.
    window_size: u64,
}

/// The reference VM. Field order matters: the vCPUs and VM are dropped before the memory they map.
pub struct ReferenceVm {
    /// The vCPUs; vCPU `n` has id and APIC id `n`.
    pub vcpus: Vec<VmVcpu>,
    /// The shrink watcher of the window (stopped first).
    _watcher: Option<ShrinkWatcher>,
    /// The window's memslot (removed before the window can go).
    _window_slot: WindowMemslot,
    vm: Arc<VmFd>,
    _kvm: Kvm,
    /// More guest RAM registered with [`ReferenceVm::add_ram`] (kept mapped while the VM lives).
    extra_ram: Vec<GuestMemoryMmap>,
    /// Next free memslot number.
    next_slot: u32,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// The DAX window.
    pub window: Arc<DaxWindow>,
}

impl ReferenceVm {
    /// Creates the VM with a fresh DAX window of `setup.window_size`, loads the guest program
    /// for `guest`, and makes one vCPU (vCPU 0) ready to run.
    pub fn new(setup: &VmSetup, guest: &GuestConfig) -> Result<Self, VmError> {
        let window = Arc::new(DaxWindow::new(setup.window_size)?);
        Self::with_window(setup, guest, window)
    }

    /// Like [`ReferenceVm::new`], but the DAX memslot is `window` (for example the one
    /// [`vfsdax_vmm_glue::dax::connect()`] reserved, which the daemon fills with `SHMEM_MAP`);
    /// `setup.window_size` is ignored.
    pub fn with_window(
        setup: &VmSetup,
        guest: &GuestConfig,
        window: Arc<DaxWindow>,
    ) -> Result<Self, VmError> {
        Self::with_guests(setup, std::slice::from_ref(guest), window)
    }

    /// Like [`ReferenceVm::with_window`], with one vCPU per entry of `guests`: vCPU `n` runs the
    /// program for `guests[n]` out of its own private area of guest RAM (stack, apf data, tables:
    /// [`layout::private`]). vCPUs other than 0 start runnable, as if already brought up.
    pub fn with_guests(
        setup: &VmSetup,
        guests: &[GuestConfig],
        window: Arc<DaxWindow>,
    ) -> Result<Self, VmError> {
        if guests.is_empty() || guests.len() > layout::MAX_VCPUS as usize {
            return Err(VmError::VcpuCount(guests.len()));
        }
        let kvm_err = |what| move |source| VmError::Kvm { what, source };
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        for (cap, name) in [
            (Cap::SyncRegs, "SYNC_REGS"),
            (Cap::Irqchip, "IRQCHIP"),
            (Cap::Mce, "MCE"),
            (Cap::VcpuEvents, "VCPU_EVENTS"),
            (Cap::SignalMsi, "SIGNAL_MSI"),
            (Cap::X86UserSpaceMsr, "X86_USER_SPACE_MSR"),
            (Cap::X86MsrFilter, "X86_MSR_FILTER"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("create a VM"))?);
        // Intel needs a TSS region below 4 GiB; other flavours ignore or refuse it harmlessly.
        let _ = vm.set_tss_address(0xfffb_d000);
        vm.create_irq_chip()
            .map_err(kvm_err("create the irqchip"))?;
        apf::setup_vm(&vm)?;

        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), layout::RAM_SIZE as usize)])
                .map_err(|_| VmError::Memory)?;
        let ram_host = mem
            .get_host_address(GuestAddress(0))
            .map_err(|_| VmError::Memory)?;
        let ram = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: layout::RAM_SIZE,
            userspace_addr: ram_host as u64,
            flags: 0,
        };
        // SAFETY: the host range is guest RAM this struct owns (`mem`), declared after `vm` and
        // `vcpus`, so it outlives every use KVM makes of it.
        unsafe { vm.set_user_memory_region(ram) }.map_err(kvm_err("register a memslot"))?;
        // The window's slot holds the window: it cannot be unmapped under KVM.
        let window_slot =
            WindowMemslot::register(Arc::clone(&vm), Arc::clone(&window), 1, layout::WINDOW_GPA)
                .map_err(VmError::Memslot)?;

        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("read supported CPUID"))?;
        if let Some(bit) = setup.feature_bit {
            apf::advertise_feature(&mut cpuid, bit)?;
        }
        let config = FaultConfig {
            policy: setup.policy,
            apf_advertised: setup.feature_bit.is_some(),
        };
        let mut vcpus: Vec<VmVcpu> = Vec::with_capacity(guests.len());
        for (id, guest) in (0u32..).zip(guests) {
            let image = program::build(guest, id)?;
            program::load(&mem, &image)?;
            set_apic_id(&mut cpuid, id);
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("create a vCPU"))?;
            fd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
            mce::setup_mce(&fd).map_err(kvm_err("set up machine checks"))?;
            let sregs = fd.get_sregs().map_err(kvm_err("read sregs"))?;
            fd.set_sregs(&program::long_mode_sregs(sregs, &image))
                .map_err(kvm_err("set sregs"))?;
            fd.set_regs(&program::initial_regs(&image))
                .map_err(kvm_err("set regs"))?;
            if id > 0 {
                // With an in-kernel irqchip an AP waits for INIT/SIPI; start it directly instead.
                let runnable = kvm_mp_state {
                    mp_state: KVM_MP_STATE_RUNNABLE,
                };
                fd.set_mp_state(runnable)
                    .map_err(kvm_err("make an AP runnable"))?;
            }
            let mut handler = DaxFaultHandler::new(
                id,
                Arc::clone(&window),
                layout::WINDOW_GPA,
                mem.clone(),
                config,
            )
            .map_err(VmError::Fault)?;
            if let Some(first) = vcpus.first() {
                handler.share(first.handler.shared());
            }
            vcpus.push(VmVcpu {
                vcpu: KvmVcpu::new(fd, Arc::clone(&vm)),
                handler,
                image,
                glue: true,
                efault: false,
                window_size: window.size(),
            });
        }
        // The glue's periodic duty, done on its own thread: fence a file's lost ranges when it
        // shrinks (the handlers then skip their scans).
        let watcher = match vcpus.first() {
            Some(v) => Some(
                ShrinkWatcher::start(v.handler.shared(), Arc::clone(&window))
                    .map_err(VmError::Watch)?,
            ),
            None => None,
        };
        Ok(ReferenceVm {
            _watcher: watcher,
            vcpus,
            _window_slot: window_slot,
            vm,
            _kvm: kvm,
            extra_ram: Vec::new(),
            next_slot: 2,
            mem,
            window,
        })
    }

    /// The baseline for measuring the glue's cost: stops the shrink watcher and lets every exit
    /// go straight to the VMM's own handling, as in a VMM without the glue. Only for guests
    /// that fault on no DAX page (a lost page would then be an error exit).
    pub fn without_glue(&mut self) {
        self._watcher = None;
        for v in &mut self.vcpus {
            v.glue = false;
        }
    }

    /// Presents every exit on a DAX window page as the bare `EFAULT` a host with hardware
    /// virtualization (EPT/NPT) gives (`KVM_RUN` fails, RIP on the instruction, no address):
    /// this host's shadow MMU exits as MMIO instead. The pending MMIO load is cancelled (an
    /// immediate-exit run, registers restored) and a store KVM already completed is put back on
    /// the guest program's store instruction, which the reference VM knows; so the glue's
    /// bare-EFAULT path (instruction decoding, file-size search) runs on kernel-mode accesses
    /// too, fenced or not.
    pub fn efault_exits(&mut self) {
        for v in &mut self.vcpus {
            v.efault = true;
        }
    }

    /// What the shrink watcher did so far, if it runs.
    pub fn watch_stats(&self) -> Option<vfsdax_vmm_glue::kvm::WatchStats> {
        self._watcher.as_ref().map(ShrinkWatcher::stats)
    }

    /// A handle to wait until the shrink watcher has handled every file change made so far.
    pub fn watch_sync(&self) -> Option<vfsdax_vmm_glue::kvm::WatchSync> {
        self._watcher.as_ref().map(ShrinkWatcher::syncer)
    }

    /// The VM fd.
    pub fn vm_fd(&self) -> &Arc<VmFd> {
        &self.vm
    }

    /// Registers every region of `ram` as another memslot at its guest-physical address (for
    /// example the virtio-fs driver's memfd memory holding the virtqueues, so they live in guest
    /// memory the daemon shares). `ram` must not overlap guest RAM, the DAX window or an earlier
    /// region; the VM keeps a clone, so the mapping stays alive while KVM may use it.
    pub fn add_ram(&mut self, ram: &GuestMemoryMmap) -> Result<(), VmError> {
        for r in ram.iter() {
            let region = kvm_userspace_memory_region {
                slot: self.next_slot,
                guest_phys_addr: r.start_addr().raw_value(),
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the host range is a live mapping of `ram`'s region; `ram` shares its
            // regions through `Arc`s and the clone pushed to `extra_ram` below (a field declared
            // after `vm` and `vcpu`, so dropped after them) keeps the mapping alive for as long
            // as KVM can use the memslot. KVM itself refuses overlapping slots.
            unsafe { self.vm.set_user_memory_region(region) }.map_err(|source| VmError::Kvm {
                what: "register a memslot",
                source,
            })?;
            self.next_slot += 1;
        }
        self.extra_ram.push(ram.clone());
        Ok(())
    }

    /// Runs vCPU 0 on this thread until `on_port` returns false, the stop policy stops it, or
    /// `timeout` passes (other vCPUs do not run: see [`ReferenceVm::run_all`]). Every `out` the
    /// glue does not claim goes to `on_port(port, value)`.
    pub fn run<F>(&mut self, timeout: Duration, on_port: F) -> Result<RunOutcome, VmError>
    where
        F: FnMut(u16, u32) -> bool,
    {
        // `with_guests` never creates a VM without vCPU 0.
        self.vcpus[0].run(timeout, on_port)
    }

    /// Runs every vCPU on its own thread, each as [`VmVcpu::run`] does, with
    /// `on_port(vcpu, port, value)` (called on that vCPU's thread; a `false` ends only that
    /// vCPU's run). Returns each vCPU's outcome, by vCPU id.
    pub fn run_all<F>(&mut self, timeout: Duration, on_port: F) -> Vec<Result<RunOutcome, VmError>>
    where
        F: Fn(u32, u16, u32) -> bool + Sync,
    {
        let on_port = &on_port;
        std::thread::scope(|s| {
            let threads: Vec<_> = (0u32..)
                .zip(self.vcpus.iter_mut())
                .map(|(id, v)| s.spawn(move || v.run(timeout, |p, d| on_port(id, p, d))))
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }
}

/// Sets the initial APIC id `id` in CPUID leaves 1 (EBX 31:24), 0xB and 0x1F (EDX).
pub fn set_apic_id(cpuid: &mut CpuId, id: u32) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (id << 24),
            0xb | 0x1f => e.edx = id,
            _ => {}
        }
    }
}

impl VmVcpu {
    /// Runs this vCPU on the calling thread until `on_port` returns false, the stop policy stops it, or `timeout`
    /// passes. Every `out` the glue does not claim goes to `on_port(port, value)`.
    pub fn run<F>(&mut self, timeout: Duration, mut on_port: F) -> Result<RunOutcome, VmError>
    where
        F: FnMut(u16, u32) -> bool,
    {
        let deadline = Instant::now() + timeout;
        let finished = AtomicBool::new(false);
        install_kick_handler();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        std::thread::scope(|s| {
            s.spawn(|| watchdog(me, deadline, &finished));
            let r = self.run_loop(deadline, timeout, &mut on_port);
            finished.store(true, Ordering::SeqCst);
            r
        })
    }

    fn run_loop<F>(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        on_port: &mut F,
    ) -> Result<RunOutcome, VmError>
    where
        F: FnMut(u16, u32) -> bool,
    {
        let mut out = RunOutcome::default();
        let mut pending = Vec::new();
        let r = self.run_exits(deadline, timeout, on_port, &mut out, &mut pending);
        // Path look-ups happen here, off the exit path.
        out.reports = pending.into_iter().map(PendingReport::resolve).collect();
        r.map(|()| out)
    }

    fn run_exits<F>(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        on_port: &mut F,
        out: &mut RunOutcome,
        pending: &mut Vec<PendingReport>,
    ) -> Result<(), VmError>
    where
        F: FnMut(u16, u32) -> bool,
    {
        loop {
            if Instant::now() >= deadline {
                return Err(VmError::Timeout(timeout));
            }
            out.runs += 1;
            let exit = self.vcpu.run().map_err(|source| VmError::Kvm {
                what: "run the vCPU",
                source,
            })?;
            let exit = if self.efault {
                let e = self.as_efault(exit)?;
                out.efaults += u64::from(matches!(e, Exit::Efault));
                e
            } else {
                exit
            };
            let at = Instant::now();
            let handled = if self.glue {
                self.handler.handle(&mut self.vcpu, &exit, at)
            } else {
                Ok(Handled::NotMine)
            };
            match handled {
                Ok(Handled::Resume(report)) => {
                    if let Some(r) = report {
                        pending.push(r);
                        out.report_exit_at.push(at);
                    }
                    continue;
                }
                Ok(Handled::NotMine) => {}
                Err(FaultError::Stop(d)) => {
                    out.stop = Some(*d);
                    return Ok(());
                }
                Err(e) => return Err(VmError::Fault(e)),
            }
            match exit {
                Exit::IoOut { port, data, .. } => {
                    if !on_port(port, data) {
                        return Ok(());
                    }
                }
                Exit::Interrupted | Exit::IoIn { .. } | Exit::MmioWrite { .. } | Exit::Hlt => {}
                Exit::MmioRead { len, .. } => self
                    .vcpu
                    .complete_mmio_read(&[0xff; 8][..len.min(8) as usize]),
                Exit::Wrmsr { .. } | Exit::Rdmsr { .. } => self.vcpu.complete_msr(true),
                Exit::Shutdown => return Err(VmError::Shutdown { exits: out.runs }),
                Exit::Efault | Exit::MemoryFault { .. } => return Err(VmError::Efault),
                Exit::Other(what) => return Err(VmError::UnexpectedExit(what.to_string())),
            }
        }
    }
}

impl VmVcpu {
    /// See [`ReferenceVm::efault_exits`].
    fn as_efault(&mut self, exit: Exit) -> Result<Exit, VmError> {
        let in_window =
            |gpa: u64| gpa >= layout::WINDOW_GPA && gpa - layout::WINDOW_GPA < self.window_size;
        match exit {
            Exit::MmioRead { gpa, .. } if in_window(gpa) => {
                let regs = self.vcpu.snapshot().regs;
                self.immediate_run("complete the MMIO load")?;
                self.vcpu.stage_regs(&regs);
                self.immediate_run("restore the registers")?;
                Ok(Exit::Efault)
            }
            Exit::MmioWrite { gpa, .. } if in_window(gpa) => {
                let mut regs = self.vcpu.snapshot().regs;
                // The guest program's only window store is `mov [rbx], rcx` (3 bytes).
                if regs.rip != self.image.access_rip + 3 {
                    return Err(VmError::UnexpectedExit(format!(
                        "a window store at RIP {:#x}, not the program's",
                        regs.rip
                    )));
                }
                regs.rip = self.image.access_rip;
                self.vcpu.stage_regs(&regs);
                self.immediate_run("restore the registers")?;
                Ok(Exit::Efault)
            }
            other => Ok(other),
        }
    }

    /// One `KVM_RUN` that returns before the guest runs: KVM finishes what is pending (an MMIO
    /// load, staged registers), so what follows sees the state as a real `EFAULT` leaves it.
    fn immediate_run(&mut self, what: &str) -> Result<(), VmError> {
        self.vcpu.set_immediate_exit(true);
        let r = self.vcpu.run();
        self.vcpu.set_immediate_exit(false);
        match r {
            Ok(Exit::Interrupted) => Ok(()),
            other => Err(VmError::UnexpectedExit(format!(
                "an immediate-exit run to {what} gave {other:?}"
            ))),
        }
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // A no-op handler: its only purpose is to make a blocked KVM_RUN return EINTR.
        let _ = vmm_sys_util::signal::register_signal_handler(
            vmm_sys_util::signal::SIGRTMIN(),
            kick_handler,
        );
    });
}

/// How often the reference VM kicks its vCPU out of `KVM_RUN`. On this host a user-mode access to
/// a truncated page without async PF makes KVM retry the fault forever without an exit; a kick
/// (EINTR exit) lets the fault handler notice shrunken mappings and fence them.
pub const KICK_INTERVAL: Duration = Duration::from_millis(20);

/// Kicks `thread` out of `KVM_RUN` every [`KICK_INTERVAL`] (every 15 ms after `deadline`) until
/// `finished`.
fn watchdog(thread: libc::pthread_t, deadline: Instant, finished: &AtomicBool) {
    let mut next_kick = Instant::now() + KICK_INTERVAL;
    while !finished.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        if (now >= next_kick || now >= deadline) && !finished.load(Ordering::SeqCst) {
            // SAFETY: `thread` is the thread running the enclosing `std::thread::scope`, which
            // cannot return (and so cannot end) before this watchdog thread is joined; the
            // signal has a no-op handler installed.
            unsafe { libc::pthread_kill(thread, vmm_sys_util::signal::SIGRTMIN()) };
            next_kick = now
                + if now >= deadline {
                    Duration::from_millis(15)
                } else {
                    KICK_INTERVAL
                };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn apic_id_lands_in_the_topology_leaves() {
        let entry = |function, ebx| kvm_cpuid_entry2 {
            function,
            ebx,
            ..Default::default()
        };
        let mut cpuid = CpuId::from_entries(&[entry(1, 0x0008_0800), entry(0xb, 1), entry(7, 9)])
            .expect("cpuid");
        set_apic_id(&mut cpuid, 3);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx, 0x0308_0800, "leaf 1 EBX 31:24");
        assert_eq!((e[1].ebx, e[1].edx), (1, 3), "leaf 0xB EDX");
        assert_eq!((e[2].ebx, e[2].edx), (9, 0), "other leaves untouched");
    }
}
