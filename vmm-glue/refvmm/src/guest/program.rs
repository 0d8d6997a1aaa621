//! The test guest's program and system tables.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vfsdax_protocol::apf::{
    APF_ENABLED_OFFSET, APF_READY_FLAGS_OFFSET, APF_TOKEN_OFFSET, BROADCAST_TOKEN,
    KVM_ASYNC_PF_DELIVERY_AS_INT, KVM_ASYNC_PF_ENABLED, KVM_ASYNC_PF_SEND_ALWAYS,
    KVM_ASYNC_PF_SEND_ERROR, KVM_CPUID_FEATURES, KVM_PV_REASON_PAGE_ERROR,
    KVM_PV_REASON_PAGE_NOT_PRESENT, MSR_KVM_ASYNC_PF_ACK, MSR_KVM_ASYNC_PF_EN,
    MSR_KVM_ASYNC_PF_INT,
};
use vm_memory::{Bytes, GuestAddress};

use super::asm::{Asm, Cond, Label, Reg};
use super::{layout, port, GuestAccess, GuestConfig};
use vfsdax_vmm_glue::kvm::mce;

/// Errors of loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A label was used but never bound (a bug in the program builder).
    #[error("the guest program has an unbound label")]
    UnboundLabel,
    /// The program does not fit its slot.
    #[error("the guest program is {0} bytes, more than its slot")]
    TooLarge(usize),
    /// Guest memory is too small for the layout.
    #[error("guest memory does not cover the guest layout")]
    Memory,
}

/// The assembled program.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// Machine code, loaded at [`layout::CODE`].
    pub code: Vec<u8>,
    /// Entry point.
    pub entry: u64,
    /// Guest address of the access instruction (a rewound load must fault there).
    pub access_rip: u64,
    /// IDT entries: (vector, handler address).
    pub gates: Vec<(u8, u64)>,
    /// The vCPU whose private area ([`layout::private`]) the program and its tables use.
    pub vcpu: u32,
}

/// Limit of the TSS: 104 bytes, the 8 KiB I/O bitmap and its terminating byte.
const TSS_LIMIT: u64 = 104 + 8192;
const LAPIC_SVR: u64 = layout::LAPIC + 0xf0;
const LAPIC_EOI: u64 = layout::LAPIC + 0xb0;

/// The value the guest on vCPU `vcpu` writes to `MSR_KVM_ASYNC_PF_EN` when it registers for apf.
pub fn apf_en_value(cfg: &GuestConfig, vcpu: u32) -> u64 {
    let mut v = layout::private(vcpu, layout::APF_DATA)
        | KVM_ASYNC_PF_ENABLED
        | KVM_ASYNC_PF_DELIVERY_AS_INT;
    if cfg.opt_in {
        v |= KVM_ASYNC_PF_SEND_ERROR;
    }
    if cfg.send_always {
        v |= KVM_ASYNC_PF_SEND_ALWAYS;
    }
    v
}

pub(super) fn report_rax(a: &mut Asm, lo: u16, hi: u16) {
    a.out_eax(lo as u8).shr_rax_32().out_eax(hi as u8);
}

/// Assembles the program for `cfg`, to run on vCPU `vcpu` (at most [`layout::MAX_VCPUS`] - 1)
/// out of that vCPU's private area.
pub fn build(cfg: &GuestConfig, vcpu: u32) -> Result<GuestImage, GuestError> {
    if vcpu >= layout::MAX_VCPUS {
        return Err(GuestError::Memory);
    }
    let at = |addr| layout::private(vcpu, addr);
    let mut a = Asm::new(at(layout::CODE));
    let finish = a.label();
    let killed = a.label();
    let entry = a.here();
    prologue(&mut a, cfg, vcpu);
    let access_rip = match cfg.access {
        GuestAccess::Load | GuestAccess::Store => {
            let rip = one_access(&mut a, cfg, vcpu);
            a.bind(killed);
            rip
        }
        GuestAccess::HostDriven => super::storm::body(&mut a, cfg, vcpu, finish, killed),
    };
    a.bind(finish);
    a.report(port::DONE as u8, 0);
    let park = a.label();
    a.bind(park);
    a.pause().jmp(park);
    let gates = handlers(&mut a, vcpu, killed, finish);

    let code = a.finish().ok_or(GuestError::UnboundLabel)?;
    if code.len() as u64 > layout::STACK_TOP - 0x2000 - layout::CODE {
        return Err(GuestError::TooLarge(code.len()));
    }
    Ok(GuestImage {
        code,
        entry,
        access_rip,
        gates,
        vcpu,
    })
}

/// Enables the local APIC and (as configured) machine checks, registers for apf, enables
/// interrupts.
fn prologue(a: &mut Asm, cfg: &GuestConfig, vcpu: u32) {
    let at = |addr| layout::private(vcpu, addr);
    // Software-enable the local APIC (SVR bit 8, spurious vector 0xff).
    a.mov_r32_imm(Reg::Rax, 0x100 | u32::from(layout::SPURIOUS_VECTOR))
        .store_eax_abs(LAPIC_SVR);
    a.report(port::STAGE as u8, 1);
    // Touch the GDT and IDT pages once, as a guest that has been running a while would have:
    // on a shadow-MMU host the first exception delivery otherwise pays for mapping them.
    a.load_eax_abs(at(layout::GDT) + 8)
        .load_eax_abs(at(layout::IDT) + 16 * 14);
    if cfg.enable_mce {
        a.mov_rax_cr4().or_rax_imm(1 << 6).mov_cr4_rax();
    }
    if cfg.opt_in || cfg.stock_apf {
        let no_apf = a.label();
        a.mov_r32_imm(Reg::Rax, KVM_CPUID_FEATURES)
            .zero(Reg::Rcx)
            .cpuid()
            .out_eax(port::CPUID_EAX as u8);
        if cfg.opt_in {
            a.bt_eax(cfg.feature_bit as u8).jcc(Cond::NotCarry, no_apf);
        }
        a.write_msr(MSR_KVM_ASYNC_PF_INT, u64::from(layout::APF_VECTOR));
        a.mov_r32_imm(Reg::Rax, 1)
            .store_eax_abs(at(layout::APF_DATA) + APF_ENABLED_OFFSET);
        let en = apf_en_value(cfg, vcpu);
        a.write_msr(MSR_KVM_ASYNC_PF_EN, en);
        a.report(port::OPTED_IN as u8, en as u32);
        a.bind(no_apf);
    }
    if cfg.interrupts {
        a.sti();
    }
}

/// `iretq` into ring 3 at `target` on the user stack, with IOPL 3 (ports stay usable) and IF as
/// configured.
pub(super) fn enter_user(a: &mut Asm, cfg: &GuestConfig, vcpu: u32, target: Label) {
    let rflags = 0x3002 | if cfg.interrupts { 0x200 } else { 0 };
    a.mov_r32_imm(Reg::Rax, u32::from(layout::USER_DS))
        .push(Reg::Rax);
    a.mov_r32_imm(
        Reg::Rax,
        layout::private(vcpu, layout::USER_STACK_TOP) as u32,
    )
    .push(Reg::Rax);
    a.mov_r32_imm(Reg::Rax, rflags).push(Reg::Rax);
    a.mov_r32_imm(Reg::Rax, u32::from(layout::USER_CS))
        .push(Reg::Rax);
    a.lea_rax_label(target).push(Reg::Rax).iretq();
}

/// The scenario guest: a baseline load, stage 2 (the host changes the file), one load or store;
/// returns the access instruction's address.
fn one_access(a: &mut Asm, cfg: &GuestConfig, vcpu: u32) -> u64 {
    if cfg.user_mode {
        let user = a.label();
        enter_user(a, cfg, vcpu, user);
        a.bind(user);
    }
    // Baseline load from a page the host keeps.
    a.mov_r64_imm(Reg::Rbx, layout::WINDOW_GPA + cfg.baseline_offset)
        .load_rax_from_rbx();
    report_rax(a, port::BASE_LO, port::BASE_HI);
    a.report(port::STAGE as u8, 2);
    // The access.
    a.mov_r64_imm(Reg::Rbx, layout::WINDOW_GPA + cfg.access_offset);
    let access_rip = match cfg.access {
        GuestAccess::Store => {
            a.mov_r64_imm(Reg::Rcx, cfg.store_value);
            let rip = a.here();
            a.store_rcx_to_rbx().load_rax_from_rbx();
            rip
        }
        GuestAccess::Load | GuestAccess::HostDriven => {
            let rip = a.here();
            a.load_rax_from_rbx();
            rip
        }
    };
    report_rax(a, port::VAL_LO, port::VAL_HI);
    a.report(port::STAGE as u8, 3);
    access_rip
}

/// The exception and interrupt handlers; returns the IDT gates. A task killed by an apf error
/// or a machine check reports it and continues at `killed`; an unexpected exception reports its
/// vector and ends the program at `finish`.
fn handlers(a: &mut Asm, vcpu: u32, killed: Label, finish: Label) -> Vec<(u8, u64)> {
    let at = |addr| layout::private(vcpu, addr);
    let mut gates = Vec::new();

    // #PF: an apf 'page not present' puts the "task" to sleep until its 'page ready'.
    gates.push((14, a.here()));
    {
        let unexpected = a.label();
        let wait = a.label();
        let resume = a.label();
        a.push(Reg::Rax).push(Reg::Rcx).push(Reg::Rdx);
        a.load_eax_abs(at(layout::APF_DATA))
            .out_eax(port::PF_FLAGS as u8);
        a.mov_rax_cr2().out_eax(port::PF_CR2 as u8);
        a.load_rax_from_rsp(32).out_eax(port::PF_RIP as u8);
        a.load_eax_abs(at(layout::APF_DATA))
            .cmp_eax_imm(KVM_PV_REASON_PAGE_NOT_PRESENT)
            .jcc(Cond::NotZero, unexpected);
        a.zero(Reg::Rax).store_eax_abs(at(layout::APF_DATA));
        // Interrupts are off until the sleep: no 'page ready' can have come for this fault.
        a.store_eax_abs(at(layout::WOKEN_TOKEN));
        a.mov_rax_cr2().store_eax_abs(at(layout::SLEEP_TOKEN));
        a.bind(wait);
        a.sti().hlt().cli();
        // KVM's broadcast 'page ready' wakes every sleeper, as in Linux (the task retries).
        a.load_eax_abs(at(layout::WOKEN_TOKEN))
            .cmp_eax_imm(BROADCAST_TOKEN)
            .jcc(Cond::Zero, resume);
        a.mov_ecx_eax()
            .load_eax_abs(at(layout::SLEEP_TOKEN))
            .cmp_eax_ecx();
        a.jcc(Cond::NotZero, wait);
        a.load_eax_abs(at(layout::WOKEN_FLAGS))
            .test_eax_imm(KVM_PV_REASON_PAGE_ERROR)
            .jcc(Cond::Zero, resume);
        a.report(port::SIGBUS as u8, 1).jmp(killed);
        a.bind(resume);
        a.pop(Reg::Rdx)
            .pop(Reg::Rcx)
            .pop(Reg::Rax)
            .add_rsp(8)
            .iretq();
        a.bind(unexpected);
        a.report(port::EXCEPTION as u8, 14).jmp(finish);
    }

    // 'page ready': record, free the slot, ACK, EOI.
    gates.push((layout::APF_VECTOR, a.here()));
    a.push(Reg::Rax).push(Reg::Rcx).push(Reg::Rdx);
    a.load_eax_abs(at(layout::APF_DATA) + APF_TOKEN_OFFSET)
        .out_eax(port::READY_TOKEN as u8);
    a.store_eax_abs(at(layout::WOKEN_TOKEN));
    a.load_eax_abs(at(layout::APF_DATA) + APF_READY_FLAGS_OFFSET)
        .out_eax(port::READY_FLAGS as u8);
    a.store_eax_abs(at(layout::WOKEN_FLAGS));
    a.zero(Reg::Rax)
        .store_eax_abs(at(layout::APF_DATA) + APF_READY_FLAGS_OFFSET)
        .store_eax_abs(at(layout::APF_DATA) + APF_TOKEN_OFFSET);
    a.write_msr(MSR_KVM_ASYNC_PF_ACK, 1);
    a.zero(Reg::Rax).store_eax_abs(LAPIC_EOI);
    a.pop(Reg::Rdx).pop(Reg::Rcx).pop(Reg::Rax).iretq();

    // #MC: read the bank, clear it and MCIP, kill the "task".
    gates.push((18, a.here()));
    a.push(Reg::Rax).push(Reg::Rcx).push(Reg::Rdx);
    a.mov_r32_imm(Reg::Rcx, mce::msr_mci_addr(mce::DAX_BANK))
        .rdmsr()
        .out_eax(port::MC_ADDR_LO as u8);
    a.mov_eax_edx().out_eax(port::MC_ADDR_HI as u8);
    a.mov_r32_imm(Reg::Rcx, mce::msr_mci_status(mce::DAX_BANK))
        .rdmsr()
        .mov_eax_edx()
        .out_eax(port::MC_STATUS_HI as u8);
    a.mov_r32_imm(Reg::Rcx, mce::MSR_MCG_STATUS)
        .rdmsr()
        .out_eax(port::MCG_STATUS as u8);
    a.load_rax_from_rsp(24).out_eax(port::MC_RIP as u8);
    a.zero(Reg::Rax).zero(Reg::Rdx);
    a.mov_r32_imm(Reg::Rcx, mce::msr_mci_status(mce::DAX_BANK))
        .wrmsr();
    a.mov_r32_imm(Reg::Rcx, mce::MSR_MCG_STATUS).wrmsr();
    a.report(port::SIGBUS as u8, 2).jmp(killed);

    // Spurious LAPIC interrupt.
    gates.push((layout::SPURIOUS_VECTOR, a.here()));
    a.iretq();

    // Every other exception: report the vector and stop.
    for v in 0u8..32 {
        if v == 14 || v == 18 {
            continue;
        }
        gates.push((v, a.here()));
        a.report(port::EXCEPTION as u8, u32::from(v)).jmp(finish);
    }
    gates
}

/// Writes the GDT, IDT, TSS and code of `image` into its vCPU's private area of guest memory, and
/// the page tables all vCPUs share.
pub fn load<M: Bytes<GuestAddress>>(mem: &M, image: &GuestImage) -> Result<(), GuestError> {
    let at = |addr| layout::private(image.vcpu, addr);
    let tss = at(layout::TSS);
    let w = |v: u64, at: u64| {
        mem.write_obj(v, GuestAddress(at))
            .map_err(|_| GuestError::Memory)
    };
    // GDT: null, kernel code (0x08), kernel data (0x10), user code (0x18), user data (0x20), and
    // the 16-byte TSS descriptor (0x28).
    let tss_lo =
        TSS_LIMIT | ((tss & 0xff_ffff) << 16) | (0x89 << 40) | (((tss >> 24) & 0xff) << 56);
    let gdt = [
        0u64,
        0x00af_9a00_0000_ffff,
        0x00cf_9200_0000_ffff,
        0x00af_fa00_0000_ffff,
        0x00cf_f200_0000_ffff,
        tss_lo,
        tss >> 32,
    ];
    for (i, d) in gdt.into_iter().enumerate() {
        w(d, at(layout::GDT) + 8 * i as u64)?;
    }
    // TSS: RSP0 (offset 4) = the kernel stack; an all-zero I/O permission bitmap right after
    // the 104-byte TSS lets user mode use the report ports even where IOPL is not honoured.
    w(at(layout::STACK_TOP), tss + 4)?;
    mem.write_obj(104u16, GuestAddress(tss + 102))
        .map_err(|_| GuestError::Memory)?;
    mem.write_slice(&[0u8; 8192], GuestAddress(tss + 104))
        .map_err(|_| GuestError::Memory)?;
    mem.write_obj(0xffu8, GuestAddress(tss + 104 + 8192))
        .map_err(|_| GuestError::Memory)?;
    // IDT: 64-bit interrupt gates, selector 0x08, present, DPL 0.
    for &(vector, handler) in &image.gates {
        let lo =
            (handler & 0xffff) | (0x08 << 16) | (0x8e << 40) | (((handler >> 16) & 0xffff) << 48);
        w(lo, at(layout::IDT) + 16 * u64::from(vector))?;
        w(handler >> 32, at(layout::IDT) + 16 * u64::from(vector) + 8)?;
    }
    // Identity map 0-4 GiB with 2 MiB user-accessible pages; the local APIC page uncached.
    w(layout::PDPT | 7, layout::PML4)?;
    for i in 0..4u64 {
        w((layout::PD + 0x1000 * i) | 7, layout::PDPT + 8 * i)?;
    }
    for j in 0..2048u64 {
        let base = j << 21;
        let flags = if base == layout::LAPIC & !0x1f_ffff {
            0x9f
        } else {
            0x87
        };
        w(base | flags, layout::PD + 8 * j)?;
    }
    mem.write_slice(&image.code, GuestAddress(at(layout::CODE)))
        .map_err(|_| GuestError::Memory)
}

/// Long-mode special registers for `image`'s vCPU, on top of `sregs` as KVM created them.
pub fn long_mode_sregs(mut sregs: kvm_sregs, image: &GuestImage) -> kvm_sregs {
    let at = |addr| layout::private(image.vcpu, addr);
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x08,
        type_: 11,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x10,
        type_: 3,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        ..Default::default()
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: at(layout::TSS),
        limit: TSS_LIMIT as u32,
        selector: layout::TSS_SEL,
        type_: 11, // busy 64-bit TSS
        present: 1,
        ..Default::default()
    };
    sregs.gdt.base = at(layout::GDT);
    sregs.gdt.limit = 7 * 8 - 1;
    sregs.idt.base = at(layout::IDT);
    sregs.idt.limit = 4095;
    sregs.cr0 = 0x8005_0033; // PG, AM, WP, NE, ET, MP, PE
    sregs.cr3 = layout::PML4;
    sregs.cr4 = 0x20; // PAE; the guest sets MCE itself when configured
    sregs.efer = 0x500; // LME, LMA
    sregs
}

/// Initial general registers.
pub fn initial_regs(image: &GuestImage) -> kvm_regs {
    kvm_regs {
        rip: image.entry,
        rsp: layout::private(image.vcpu, layout::STACK_TOP),
        rflags: 0x2,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::GuestAccess;
    use vm_memory::GuestMemoryMmap;

    fn cfg(access: GuestAccess) -> GuestConfig {
        GuestConfig {
            access,
            opt_in: true,
            send_always: true,
            stock_apf: false,
            enable_mce: true,
            interrupts: true,
            user_mode: false,
            feature_bit: vfsdax_protocol::apf::DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT,
            baseline_offset: 8,
            access_offset: 0x2010,
            store_value: 0x5555_aaaa_5555_aaaa,
        }
    }

    #[test]
    fn program_builds_and_loads_with_all_gates() {
        for access in [GuestAccess::Load, GuestAccess::Store] {
            let img = build(&cfg(access), 0).expect("builds");
            let vectors: Vec<u8> = img.gates.iter().map(|g| g.0).collect();
            for v in [
                14u8,
                18,
                layout::APF_VECTOR,
                layout::SPURIOUS_VECTOR,
                0,
                13,
                31,
            ] {
                assert!(vectors.contains(&v), "vector {v}");
            }
            // The access instruction is the window load or store.
            let at = (img.access_rip - layout::CODE) as usize;
            let want: &[u8] = if access == GuestAccess::Load {
                &[0x48, 0x8b, 0x03]
            } else {
                &[0x48, 0x89, 0x0b]
            };
            assert_eq!(&img.code[at..at + 3], want);
            let mem =
                GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), layout::RAM_SIZE as usize)])
                    .expect("mem");
            load(&mem, &img).expect("loads");
            let gate: u64 = mem
                .read_obj(GuestAddress(layout::IDT + 16 * 14))
                .expect("idt");
            let handler = img
                .gates
                .iter()
                .find(|g| g.0 == 14)
                .map(|g| g.1)
                .expect("pf gate");
            assert_eq!(gate & 0xffff, handler & 0xffff);
            assert_eq!((gate >> 40) & 0xff, 0x8e);
            let pde: u64 = mem
                .read_obj(GuestAddress(layout::PD + 8 * (layout::WINDOW_GPA >> 21)))
                .expect("pd");
            assert_eq!(pde, layout::WINDOW_GPA | 0x87);
        }
    }

    #[test]
    fn each_vcpu_runs_out_of_its_own_private_area() {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), layout::RAM_SIZE as usize)])
                .expect("mem");
        let img = build(&cfg(GuestAccess::Load), 1).expect("builds");
        load(&mem, &img).expect("loads");
        let p = |a| layout::private(1, a);
        assert_eq!(img.entry, p(layout::CODE));
        assert_eq!(initial_regs(&img).rsp, p(layout::STACK_TOP));
        let sregs = long_mode_sregs(kvm_sregs::default(), &img);
        assert_eq!(
            (sregs.gdt.base, sregs.idt.base, sregs.tr.base, sregs.cr3),
            (p(layout::GDT), p(layout::IDT), p(layout::TSS), layout::PML4),
            "own tables, shared page tables"
        );
        let rsp0: u64 = mem.read_obj(GuestAddress(p(layout::TSS) + 4)).expect("tss");
        assert_eq!(rsp0, p(layout::STACK_TOP));
        let gate: u64 = mem
            .read_obj(GuestAddress(p(layout::IDT) + 16 * 14))
            .expect("idt");
        assert_ne!(gate, 0);
        let untouched: u64 = mem
            .read_obj(GuestAddress(layout::IDT + 16 * 14))
            .expect("idt");
        assert_eq!(untouched, 0, "vCPU 0's IDT is not written");
        let v = apf_en_value(&cfg(GuestAccess::Load), 1);
        assert_eq!(v & !0x3f, p(layout::APF_DATA));
        assert!(build(&cfg(GuestAccess::Load), layout::MAX_VCPUS).is_err());
    }

    #[test]
    fn opt_in_value_sets_the_extension_bits() {
        let v = apf_en_value(&cfg(GuestAccess::Load), 0);
        assert_eq!(v & !0x3f, layout::APF_DATA);
        assert_ne!(v & KVM_ASYNC_PF_SEND_ERROR, 0);
        assert_ne!(v & KVM_ASYNC_PF_SEND_ALWAYS, 0);
        let v = apf_en_value(
            &GuestConfig {
                send_always: false,
                stock_apf: false,
                ..cfg(GuestAccess::Load)
            },
            0,
        );
        assert_eq!(v & KVM_ASYNC_PF_SEND_ALWAYS, 0);
    }
}
