//! The hand-written 64-bit test guest: identity page tables covering RAM, the DAX window and the
//! local APIC; a GDT; an IDT with handlers for #PF, the apf 'page ready' vector and #MC; code that
//! optionally opts in to apf errors, then loads or stores through the window and reports what it
//! observed over I/O ports.
//!
//! - [`asm`]: the hand-encoding assembler.
//! - [`program`]: the program and the system tables, written into guest memory.
//! - [`storm`]: the loop of loads and stores the VMM chooses, for the truncation storm.

pub mod asm;
pub mod program;
pub mod storm;

/// Guest-physical layout of the test guest.
pub mod layout {
    /// GDT.
    pub const GDT: u64 = 0x1000;
    /// IDT (256 16-byte gates).
    pub const IDT: u64 = 0x2000;
    /// PML4.
    pub const PML4: u64 = 0x3000;
    /// PDPT.
    pub const PDPT: u64 = 0x4000;
    /// Four page directories (2 MiB pages) identity-mapping 0–4 GiB.
    pub const PD: u64 = 0x5000;
    /// The 64-byte apf data.
    pub const APF_DATA: u64 = 0x9000;
    /// Guest variable: token the #PF handler sleeps on.
    pub const SLEEP_TOKEN: u64 = 0x9100;
    /// Guest variable: last token a 'page ready' delivered.
    pub const WOKEN_TOKEN: u64 = 0x9104;
    /// Guest variable: `ready_flags` of that 'page ready'.
    pub const WOKEN_FLAGS: u64 = 0x9108;
    /// The 64-bit TSS (only its RSP0 matters: the kernel stack for user-mode runs).
    pub const TSS: u64 = 0x9200;
    /// The storm loop's mailbox: the VMM writes the next access here (GPA, then the value to
    /// store or 0 for a load) when the guest asks with [`super::port::REQUEST`].
    pub const MAILBOX: u64 = 0xc000;
    /// Code.
    pub const CODE: u64 = 0x10000;
    /// Initial user-mode stack pointer.
    pub const USER_STACK_TOP: u64 = 0x17000;
    /// Kernel code selector.
    pub const KERNEL_CS: u16 = 0x08;
    /// Kernel data selector.
    pub const KERNEL_DS: u16 = 0x10;
    /// User code selector (RPL 3).
    pub const USER_CS: u16 = 0x18 | 3;
    /// User data selector (RPL 3).
    pub const USER_DS: u16 = 0x20 | 3;
    /// TSS selector.
    pub const TSS_SEL: u16 = 0x28;
    /// Initial stack pointer.
    pub const STACK_TOP: u64 = 0x1f000;
    /// Size of guest RAM (at GPA 0).
    pub const RAM_SIZE: u64 = 0x20_0000;
    /// Guest-physical base of the DAX window.
    pub const WINDOW_GPA: u64 = 0x4000_0000;
    /// Local APIC base.
    pub const LAPIC: u64 = 0xfee0_0000;
    /// The 'page ready' vector the guest registers (Linux's `HYPERVISOR_CALLBACK_VECTOR`).
    pub const APF_VECTOR: u8 = 0xf3;
    /// The LAPIC spurious vector.
    pub const SPURIOUS_VECTOR: u8 = 0xff;
    /// Distance between the private areas of consecutive vCPUs: vCPU `n` has its GDT, IDT, TSS,
    /// apf data, guest variables, code and stacks at vCPU 0's addresses (the constants above) plus
    /// `n * PER_VCPU_STRIDE`. All vCPUs share the page tables.
    pub const PER_VCPU_STRIDE: u64 = 0x2_0000;
    /// Most vCPUs guest RAM has room for.
    pub const MAX_VCPUS: u32 = (RAM_SIZE / PER_VCPU_STRIDE) as u32;

    /// Where vCPU `vcpu` has its own copy of the private item vCPU 0 has at `addr`.
    pub const fn private(vcpu: u32, addr: u64) -> u64 {
        addr + vcpu as u64 * PER_VCPU_STRIDE
    }
}

/// The I/O ports the guest reports on (32-bit `out`).
pub mod port {
    /// Progress: 1 started, 2 about to access (the host truncates now), 3 access completed.
    pub const STAGE: u16 = 0xe0;
    /// EAX of CPUID 0x40000001 as the guest saw it.
    pub const CPUID_EAX: u16 = 0xe2;
    /// Low / high half of the baseline load (window page 0, before the truncation).
    pub const BASE_LO: u16 = 0xe4;
    /// High half of the baseline load.
    pub const BASE_HI: u16 = 0xe6;
    /// Low half of the value loaded by the access (for a store: read back after it).
    pub const VAL_LO: u16 = 0xe8;
    /// High half of that value.
    pub const VAL_HI: u16 = 0xea;
    /// #PF handler: apf `flags` it read.
    pub const PF_FLAGS: u16 = 0xec;
    /// #PF handler: CR2 (low 32 bits; the token for an apf 'not present').
    pub const PF_CR2: u16 = 0xee;
    /// #PF handler: low 32 bits of the interrupted RIP.
    pub const PF_RIP: u16 = 0xf0;
    /// 'page ready' handler: token.
    pub const READY_TOKEN: u16 = 0xf2;
    /// 'page ready' handler: `ready_flags`.
    pub const READY_FLAGS: u16 = 0xf4;
    /// #MC handler: `MCi_ADDR` low half.
    pub const MC_ADDR_LO: u16 = 0xf6;
    /// #MC handler: `MCi_ADDR` high half.
    pub const MC_ADDR_HI: u16 = 0xf8;
    /// #MC handler: `MCi_STATUS` high half.
    pub const MC_STATUS_HI: u16 = 0xfa;
    /// #MC handler: `MCG_STATUS` low half.
    pub const MCG_STATUS: u16 = 0xfc;
    /// #MC handler: low 32 bits of the interrupted RIP.
    pub const MC_RIP: u16 = 0xfe;
    /// The faulting "task" was killed: 1 by an apf error, 2 by a machine check.
    pub const SIGBUS: u16 = 0xd0;
    /// An unexpected exception: its vector.
    pub const EXCEPTION: u16 = 0xd2;
    /// The guest finished (nothing more will happen).
    pub const DONE: u16 = 0xd4;
    /// The guest registered for apf errors (value: the `MSR_KVM_ASYNC_PF_EN` low half).
    pub const OPTED_IN: u16 = 0xd6;
    /// Storm loop: the guest asks for its next access (the VMM fills [`super::layout::MAILBOX`]).
    pub const REQUEST: u16 = 0xd8;
    /// Storm loop: the store completed.
    pub const STORED: u16 = 0xda;
}

/// Whether the guest loads or stores at the access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestAccess {
    /// `mov rax, [rbx]`.
    Load,
    /// `mov [rbx], rcx`, then read back.
    Store,
    /// The storm loop ([`storm`]): ask the VMM for an access, do it, report it, again; a task
    /// killed by an apf error or a machine check is replaced by a new one. `baseline_offset`,
    /// `access_offset` and `store_value` are not used.
    HostDriven,
}

/// What the guest program does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestConfig {
    /// Load or store at the access.
    pub access: GuestAccess,
    /// Register for apf errors if CPUID advertises them at `feature_bit`.
    pub opt_in: bool,
    /// Set `SEND_ALWAYS` (the guest's accesses run in kernel mode).
    pub send_always: bool,
    /// Register for plain apf like a stock Linux guest (no `SEND_ERROR`, no CPUID check); with
    /// `opt_in` this is implied.
    pub stock_apf: bool,
    /// Set CR4.MCE.
    pub enable_mce: bool,
    /// Run the access with interrupts enabled.
    pub interrupts: bool,
    /// Drop to user mode (CPL 3, IOPL 3) for the baseline load and the access.
    pub user_mode: bool,
    /// CPUID 0x40000001 EAX bit that advertises `ASYNC_PF_ERROR`.
    pub feature_bit: u32,
    /// Window offset of the baseline load.
    pub baseline_offset: u64,
    /// Window offset of the access.
    pub access_offset: u64,
    /// Value a store writes.
    pub store_value: u64,
}

/// What the guest reported, parsed from its port writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestObservation {
    /// Highest stage reached.
    pub stage: u32,
    /// CPUID 0x40000001 EAX, if the guest looked.
    pub cpuid_eax: Option<u32>,
    /// `MSR_KVM_ASYNC_PF_EN` low half, if the guest registered.
    pub opted_in: Option<u32>,
    /// Baseline load.
    pub baseline: Option<u64>,
    /// Value of the access (load result, or read-back after a store).
    pub value: Option<u64>,
    /// #PF seen: (apf flags, CR2 low, RIP low).
    pub page_fault: Option<(u32, u32, u32)>,
    /// Every 'page ready' seen: (token, ready_flags).
    pub ready: Vec<(u32, u32)>,
    /// #MC seen: (MCi_ADDR, MCi_STATUS high half, MCG_STATUS, RIP low).
    pub machine_check: Option<(u64, u32, u32, u32)>,
    /// The task was killed: 1 apf error, 2 machine check.
    pub sigbus: Option<u32>,
    /// Unexpected exception vector.
    pub exception: Option<u32>,
    /// The guest finished.
    pub done: bool,
}

impl GuestObservation {
    /// Feeds one `out` to `port` of `value`; returns false for a port the guest does not use.
    pub fn record(&mut self, p: u16, value: u32) -> bool {
        let v = u64::from(value);
        let lo = |o: Option<u64>| o.unwrap_or(0) & 0xffff_ffff;
        match p {
            port::STAGE => self.stage = self.stage.max(value),
            port::CPUID_EAX => self.cpuid_eax = Some(value),
            port::OPTED_IN => self.opted_in = Some(value),
            port::BASE_LO => self.baseline = Some(v),
            port::BASE_HI => self.baseline = Some(lo(self.baseline) | (v << 32)),
            port::VAL_LO => self.value = Some(v),
            port::VAL_HI => self.value = Some(lo(self.value) | (v << 32)),
            port::PF_FLAGS => self.page_fault = Some((value, 0, 0)),
            port::PF_CR2 => {
                let (f, _, r) = self.page_fault.unwrap_or_default();
                self.page_fault = Some((f, value, r));
            }
            port::PF_RIP => {
                let (f, c, _) = self.page_fault.unwrap_or_default();
                self.page_fault = Some((f, c, value));
            }
            port::READY_TOKEN => self.ready.push((value, 0)),
            port::READY_FLAGS => {
                if let Some(last) = self.ready.last_mut() {
                    last.1 = value;
                }
            }
            port::MC_ADDR_LO => self.machine_check = Some((v, 0, 0, 0)),
            port::MC_ADDR_HI | port::MC_STATUS_HI | port::MCG_STATUS | port::MC_RIP => {
                let (a, s, g, r) = self.machine_check.unwrap_or_default();
                self.machine_check = Some(match p {
                    port::MC_ADDR_HI => ((a & 0xffff_ffff) | (v << 32), s, g, r),
                    port::MC_STATUS_HI => (a, value, g, r),
                    port::MCG_STATUS => (a, s, value, r),
                    _ => (a, s, g, value),
                });
            }
            port::SIGBUS => self.sigbus = Some(value),
            port::EXCEPTION => self.exception = Some(value),
            port::DONE => self.done = true,
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_assembles_split_values() {
        let mut o = GuestObservation::default();
        for (p, v) in [
            (port::STAGE, 1),
            (port::VAL_LO, 0xdead_beef),
            (port::VAL_HI, 0x1234),
            (port::READY_TOKEN, u32::MAX),
            (port::READY_FLAGS, 0),
            (port::READY_TOKEN, 0x1fff),
            (port::READY_FLAGS, 1),
            (port::MC_ADDR_LO, 0x4000_2000),
            (port::MC_ADDR_HI, 0),
            (port::MCG_STATUS, 7),
            (port::STAGE, 2),
            (port::DONE, 0),
        ] {
            assert!(o.record(p, v));
        }
        assert!(!o.record(0x3f8, 0));
        assert_eq!(o.value, Some(0x1234_dead_beef));
        assert_eq!(o.ready, vec![(u32::MAX, 0), (0x1fff, 1)]);
        assert_eq!(o.machine_check, Some((0x4000_2000, 0, 7, 0)));
        assert_eq!(o.stage, 2);
        assert!(o.done);
    }
}
