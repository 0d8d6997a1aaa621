//! The vCPU operations the fault glue needs, behind a trait so tests can stand in for KVM and
//! count ioctls (firecracker style).
//!
//! Every method is documented as either an ioctl or a plain access to the shared `kvm_run` page;
//! [`KvmVcpu`] counts the ioctls it issues.

use std::sync::Arc;

use kvm_bindings::{
    kvm_msi, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_x86_mce, Msrs,
};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::errno;

use super::mce;

/// A vCPU exit, copied out of `kvm_run` so it does not borrow the vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `out` to a port; `data` holds up to 4 bytes, little endian.
    IoOut {
        /// Port.
        port: u16,
        /// Width in bytes.
        size: u8,
        /// Value written.
        data: u32,
    },
    /// `in` from a port (the glue never claims these).
    IoIn {
        /// Port.
        port: u16,
        /// Width in bytes.
        size: u8,
    },
    /// MMIO load; RIP is still on the load (KVM completes it from `kvm_run` on the next run).
    MmioRead {
        /// Guest-physical address.
        gpa: u64,
        /// Width in bytes (at most 8).
        len: u32,
    },
    /// MMIO store; RIP is already past the store.
    MmioWrite {
        /// Guest-physical address.
        gpa: u64,
        /// Width in bytes (at most 8).
        len: u32,
        /// Bytes stored (first `len` are valid).
        data: [u8; 8],
    },
    /// Guest `wrmsr` trapped to userspace.
    Wrmsr {
        /// MSR index.
        index: u32,
        /// Value written.
        data: u64,
    },
    /// Guest `rdmsr` trapped to userspace.
    Rdmsr {
        /// MSR index.
        index: u32,
    },
    /// `KVM_RUN` failed with `EFAULT` and `KVM_EXIT_MEMORY_FAULT` data.
    MemoryFault {
        /// Guest-physical address.
        gpa: u64,
        /// Size.
        size: u64,
        /// `KVM_MEMORY_EXIT_FLAG_*`.
        flags: u64,
    },
    /// `KVM_RUN` failed with a bare `EFAULT`.
    Efault,
    /// `KVM_RUN` returned `EINTR` (immediate exit or a signal).
    Interrupted,
    /// `HLT` (only without an in-kernel irqchip).
    Hlt,
    /// Triple fault or similar.
    Shutdown,
    /// Any other exit reason, by number or name.
    Other(&'static str),
}

/// The registers KVM synced into `kvm_run` at the last exit.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSnapshot {
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Special registers.
    pub sregs: kvm_sregs,
    /// Pending/injected events.
    pub events: kvm_vcpu_events,
}

/// The vCPU operations the glue uses.
pub trait VcpuOps {
    /// `KVM_RUN` (ioctl). `EFAULT` and `EINTR` are exits, not errors.
    fn run(&mut self) -> Result<Exit, errno::Error>;
    /// Sets `kvm_run.immediate_exit` (no ioctl).
    fn set_immediate_exit(&mut self, on: bool);
    /// The registers synced at the last exit (no ioctl: `kvm_run.s.regs`).
    fn snapshot(&self) -> CpuSnapshot;
    /// Stages general registers for the next `KVM_RUN` (no ioctl: dirty sync regs).
    fn stage_regs(&mut self, regs: &kvm_regs);
    /// Stages events for the next `KVM_RUN`; applied after staged registers (no ioctl).
    fn stage_events(&mut self, events: &kvm_vcpu_events);
    /// Provides the data of the pending MMIO load (no ioctl: `kvm_run.mmio.data`).
    fn complete_mmio_read(&mut self, data: &[u8]);
    /// Completes a trapped MSR access, `error` = inject #GP (no ioctl: `kvm_run.msr.error`).
    fn complete_msr(&mut self, error: bool);
    /// `KVM_SET_MSRS` of one MSR (ioctl); returns whether KVM accepted it.
    fn set_msr(&mut self, index: u32, value: u64) -> Result<bool, errno::Error>;
    /// `KVM_GET_MSRS` of one MSR (ioctl).
    fn get_msr(&mut self, index: u32) -> Result<Option<u64>, errno::Error>;
    /// `KVM_TRANSLATE` of a guest-virtual address in the current paging mode (ioctl); `None` if
    /// it is not mapped.
    fn translate(&mut self, gva: u64) -> Result<Option<u64>, errno::Error>;
    /// `KVM_X86_SET_MCE` (ioctl).
    fn set_mce(&mut self, mce: &kvm_x86_mce) -> Result<(), errno::Error>;
    /// `KVM_SIGNAL_MSI` to the local APIC (VM ioctl); returns whether it was delivered.
    fn signal_msi(&mut self, address: u64, data: u32) -> Result<bool, errno::Error>;
}

/// [`VcpuOps`] over a real KVM vCPU, with sync regs enabled and an ioctl counter.
#[derive(Debug)]
pub struct KvmVcpu {
    fd: VcpuFd,
    vm: Arc<VmFd>,
    ioctls: u64,
}

impl KvmVcpu {
    /// Wraps `fd` and enables syncing of registers, special registers and events through
    /// `kvm_run` (needs `KVM_CAP_SYNC_REGS`).
    pub fn new(mut fd: VcpuFd, vm: Arc<VmFd>) -> Self {
        fd.set_sync_valid_reg(SyncReg::Register);
        fd.set_sync_valid_reg(SyncReg::SystemRegister);
        fd.set_sync_valid_reg(SyncReg::VcpuEvents);
        KvmVcpu { fd, vm, ioctls: 0 }
    }

    /// Number of ioctls issued through this wrapper (including `KVM_RUN`).
    pub fn ioctl_count(&self) -> u64 {
        self.ioctls
    }

    /// The underlying vCPU fd, for set-up ioctls (not counted).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }
}

impl VcpuOps for KvmVcpu {
    fn run(&mut self) -> Result<Exit, errno::Error> {
        self.ioctls += 1;
        match self.fd.run() {
            Ok(exit) => Ok(convert(exit)),
            Err(e) if e.errno() == libc::EFAULT => Ok(Exit::Efault),
            Err(e) if e.errno() == libc::EINTR => Ok(Exit::Interrupted),
            Err(e) => Err(e),
        }
    }

    fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    fn snapshot(&self) -> CpuSnapshot {
        let s = self.fd.sync_regs();
        CpuSnapshot {
            regs: s.regs,
            sregs: s.sregs,
            events: s.events,
        }
    }

    fn stage_regs(&mut self, regs: &kvm_regs) {
        self.fd.sync_regs_mut().regs = *regs;
        self.fd.set_sync_dirty_reg(SyncReg::Register);
    }

    fn stage_events(&mut self, events: &kvm_vcpu_events) {
        self.fd.sync_regs_mut().events = *events;
        self.fd.set_sync_dirty_reg(SyncReg::VcpuEvents);
    }

    fn complete_mmio_read(&mut self, data: &[u8]) {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != kvm_bindings::KVM_EXIT_MMIO {
            return;
        }
        // SAFETY: the exit reason is KVM_EXIT_MMIO, so `mmio` is the active union member; it is
        // plain data and we only write bytes into its 8-byte `data` array.
        let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
        let n = data.len().min(mmio.data.len()).min(mmio.len as usize);
        mmio.data[..n].copy_from_slice(&data[..n]);
    }

    fn complete_msr(&mut self, error: bool) {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != kvm_bindings::KVM_EXIT_X86_WRMSR
            && run.exit_reason != kvm_bindings::KVM_EXIT_X86_RDMSR
        {
            return;
        }
        // SAFETY: the exit reason is an MSR exit, so `msr` is the active union member; it is plain
        // data and we only write its `error` byte.
        let msr = unsafe { &mut run.__bindgen_anon_1.msr };
        msr.error = u8::from(error);
    }

    fn set_msr(&mut self, index: u32, value: u64) -> Result<bool, errno::Error> {
        self.ioctls += 1;
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data: value,
            ..Default::default()
        }])
        .map_err(|_| errno::Error::new(libc::EINVAL))?;
        Ok(self.fd.set_msrs(&msrs)? == 1)
    }

    fn get_msr(&mut self, index: u32) -> Result<Option<u64>, errno::Error> {
        self.ioctls += 1;
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|_| errno::Error::new(libc::EINVAL))?;
        let n = self.fd.get_msrs(&mut msrs)?;
        Ok((n == 1).then(|| msrs.as_slice()[0].data))
    }

    fn translate(&mut self, gva: u64) -> Result<Option<u64>, errno::Error> {
        self.ioctls += 1;
        let t = self.fd.translate_gva(gva)?;
        Ok((t.valid != 0).then_some(t.physical_address))
    }

    fn set_mce(&mut self, m: &kvm_x86_mce) -> Result<(), errno::Error> {
        self.ioctls += 1;
        mce::set_mce(&self.fd, m)
    }

    fn signal_msi(&mut self, address: u64, data: u32) -> Result<bool, errno::Error> {
        self.ioctls += 1;
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        Ok(self.vm.signal_msi(msi)? > 0)
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    let n = b.len().min(4);
    w[..n].copy_from_slice(&b[..n]);
    u32::from_le_bytes(w)
}

fn convert(exit: VcpuExit<'_>) -> Exit {
    match exit {
        VcpuExit::IoOut(port, data) => Exit::IoOut {
            port,
            size: data.len() as u8,
            data: le_u32(data),
        },
        VcpuExit::IoIn(port, data) => Exit::IoIn {
            port,
            size: data.len() as u8,
        },
        VcpuExit::MmioRead(gpa, data) => Exit::MmioRead {
            gpa,
            len: data.len() as u32,
        },
        VcpuExit::MmioWrite(gpa, data) => {
            let mut d = [0u8; 8];
            let n = data.len().min(8);
            d[..n].copy_from_slice(&data[..n]);
            Exit::MmioWrite {
                gpa,
                len: n as u32,
                data: d,
            }
        }
        VcpuExit::X86Wrmsr(m) => Exit::Wrmsr {
            index: m.index,
            data: m.data,
        },
        VcpuExit::X86Rdmsr(m) => Exit::Rdmsr { index: m.index },
        VcpuExit::MemoryFault { flags, gpa, size } => Exit::MemoryFault { gpa, size, flags },
        VcpuExit::Hlt => Exit::Hlt,
        VcpuExit::Shutdown => Exit::Shutdown,
        VcpuExit::Intr => Exit::Interrupted,
        VcpuExit::InternalError => Exit::Other("internal error"),
        VcpuExit::FailEntry(..) => Exit::Other("entry failure"),
        VcpuExit::Exception => Exit::Other("exception"),
        VcpuExit::SystemEvent(..) => Exit::Other("system event"),
        _ => Exit::Other("unhandled exit reason"),
    }
}
