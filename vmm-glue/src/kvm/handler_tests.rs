//! Unit tests of the fault handler over made-up exits, with a stand-in for KVM that records every
//! ioctl.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use kvm_bindings::{kvm_regs, kvm_vcpu_events, kvm_x86_mce, KVM_VCPUEVENT_VALID_PAYLOAD};
use vfsdax_protocol::apf::{
    KVM_ASYNC_PF_DELIVERY_AS_INT, KVM_ASYNC_PF_ENABLED, KVM_ASYNC_PF_SEND_ALWAYS,
    KVM_ASYNC_PF_SEND_ERROR, MSR_KVM_ASYNC_PF_ACK, MSR_KVM_ASYNC_PF_EN, MSR_KVM_ASYNC_PF_INT,
};
use vfsdax_protocol::report::{Access, ActionTaken};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::errno;

use super::*;
use crate::dax::DaxWindow;
use crate::fault::FallbackPolicy;

const WIN_GPA: u64 = 0x4000_0000;
const APF_GPA: u64 = 0x9000;

/// Records ioctls; everything else is plain state.
#[derive(Default)]
struct FakeVcpu {
    snap: CpuSnapshot,
    ioctls: Vec<&'static str>,
    exits: VecDeque<Exit>,
    immediate_exit: bool,
    staged_regs: Option<kvm_regs>,
    staged_events: Option<kvm_vcpu_events>,
    mmio_data: Option<Vec<u8>>,
    msr_error: Option<bool>,
    set_msrs: Vec<(u32, u64)>,
    mcg_status: u64,
    mce: Option<kvm_x86_mce>,
    msi: Vec<(u64, u32)>,
}

impl VcpuOps for FakeVcpu {
    fn run(&mut self) -> Result<Exit, errno::Error> {
        self.ioctls.push("run");
        if self.immediate_exit {
            return Ok(Exit::Interrupted);
        }
        Ok(self.exits.pop_front().unwrap_or(Exit::Interrupted))
    }
    fn set_immediate_exit(&mut self, on: bool) {
        self.immediate_exit = on;
    }
    fn snapshot(&self) -> CpuSnapshot {
        self.snap
    }
    fn stage_regs(&mut self, regs: &kvm_regs) {
        self.staged_regs = Some(*regs);
    }
    fn stage_events(&mut self, events: &kvm_vcpu_events) {
        self.staged_events = Some(*events);
    }
    fn complete_mmio_read(&mut self, data: &[u8]) {
        self.mmio_data = Some(data.to_vec());
    }
    fn complete_msr(&mut self, error: bool) {
        self.msr_error = Some(error);
    }
    fn set_msr(&mut self, index: u32, value: u64) -> Result<bool, errno::Error> {
        self.ioctls.push("set_msr");
        self.set_msrs.push((index, value));
        Ok(true)
    }
    fn get_msr(&mut self, _index: u32) -> Result<Option<u64>, errno::Error> {
        self.ioctls.push("get_msr");
        Ok(Some(self.mcg_status))
    }
    fn translate(&mut self, gva: u64) -> Result<Option<u64>, errno::Error> {
        self.ioctls.push("translate");
        Ok(Some(gva))
    }
    fn set_mce(&mut self, mce: &kvm_x86_mce) -> Result<(), errno::Error> {
        self.ioctls.push("set_mce");
        self.mce = Some(*mce);
        Ok(())
    }
    fn signal_msi(&mut self, address: u64, data: u32) -> Result<bool, errno::Error> {
        self.ioctls.push("signal_msi");
        self.msi.push((address, data));
        Ok(true)
    }
}

struct Fixture {
    handler: DaxFaultHandler<GuestMemoryMmap>,
    mem: GuestMemoryMmap,
    file: std::fs::File,
    path: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn fixture(name: &str, policy: FallbackPolicy, advertised: bool) -> Fixture {
    let path = std::env::temp_dir().join(format!("vfsdax-handler-{}-{name}", std::process::id()));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("file");
    file.write_all(&[0xab; 0x4000]).expect("write");
    let window = Arc::new(DaxWindow::new(0x20_0000).expect("window"));
    window.map(0, 0x4000, &file, 0, true).expect("map");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("mem");
    let handler = DaxFaultHandler::new(
        0,
        window,
        WIN_GPA,
        mem.clone(),
        FaultConfig {
            policy,
            apf_advertised: advertised,
        },
    )
    .expect("handler");
    Fixture {
        handler,
        mem,
        file,
        path,
    }
}

/// A kernel-mode vCPU with interrupts enabled and CR4.MCE set.
fn vcpu() -> FakeVcpu {
    let mut v = FakeVcpu::default();
    v.snap.regs.rip = 0x10094;
    v.snap.regs.rflags = 0x202;
    v.snap.sregs.cs.selector = 0x08;
    v.snap.sregs.cr4 = 0x60;
    v
}

fn opt_in(f: &mut Fixture, v: &mut FakeVcpu) {
    let en = APF_GPA
        | KVM_ASYNC_PF_ENABLED
        | KVM_ASYNC_PF_DELIVERY_AS_INT
        | KVM_ASYNC_PF_SEND_ERROR
        | KVM_ASYNC_PF_SEND_ALWAYS;
    for (index, data) in [(MSR_KVM_ASYNC_PF_INT, 0xf3), (MSR_KVM_ASYNC_PF_EN, en)] {
        let h = wrmsr(f, v, index, data).expect("msr");
        assert!(matches!(h, Handled::Resume(None)));
        assert_eq!(v.msr_error, Some(false));
    }
    assert_eq!(
        v.set_msrs,
        vec![
            (MSR_KVM_ASYNC_PF_INT, 0xf3),
            (MSR_KVM_ASYNC_PF_EN, en & !KVM_ASYNC_PF_SEND_ERROR)
        ],
        "SEND_ERROR is never forwarded to KVM"
    );
    v.ioctls.clear();
    v.set_msrs.clear();
}

fn read_u32(mem: &GuestMemoryMmap, gpa: u64) -> u32 {
    mem.read_obj(GuestAddress(gpa)).expect("guest memory")
}

/// Handles `exit` and returns the report of the fault the handler resumed from; any other outcome
/// (an error, `NotMine`, a resume without a report) fails the test.
fn resumed(f: &mut Fixture, v: &mut FakeVcpu, exit: &Exit) -> PendingReport {
    match f.handler.handle(v, exit, Instant::now()) {
        Ok(Handled::Resume(Some(r))) => r,
        other => panic!("expected a fault report, got {other:?}"),
    }
}

/// Hands the handler a guest WRMSR exit.
fn wrmsr(f: &mut Fixture, v: &mut FakeVcpu, index: u32, data: u64) -> Result<Handled, FaultError> {
    f.handler
        .handle(v, &Exit::Wrmsr { index, data }, Instant::now())
}

#[test]
fn exits_that_are_not_dax_faults_cost_no_ioctl() {
    let mut f = fixture("passthrough", FallbackPolicy::Mce, true);
    let mut v = vcpu();
    let exits = [
        Exit::IoOut {
            port: 0xe0,
            size: 4,
            data: 1,
        },
        Exit::IoIn {
            port: 0x60,
            size: 1,
        },
        Exit::MmioRead {
            gpa: 0xd000_0000,
            len: 4,
        },
        Exit::MmioWrite {
            gpa: WIN_GPA - 8,
            len: 8,
            data: [0; 8],
        },
        Exit::MmioRead {
            gpa: WIN_GPA + 0x20_0000,
            len: 8,
        },
        Exit::Wrmsr {
            index: 0x10,
            data: 0,
        },
        Exit::Rdmsr {
            index: MSR_KVM_ASYNC_PF_EN,
        },
        Exit::Hlt,
        Exit::Interrupted,
        Exit::Shutdown,
        Exit::Other("x"),
    ];
    for e in exits {
        assert!(
            matches!(
                f.handler.handle(&mut v, &e, Instant::now()),
                Ok(Handled::NotMine)
            ),
            "{e:?}"
        );
    }
    // A bare EFAULT while every mapped file is intact is not ours either (fstat only, no ioctl).
    assert!(matches!(
        f.handler.handle(&mut v, &Exit::Efault, Instant::now()),
        Ok(Handled::NotMine)
    ));
    assert!(v.ioctls.is_empty(), "{:?}", v.ioctls);
    assert!(v.staged_regs.is_none() && v.staged_events.is_none() && v.mmio_data.is_none());
    // Without the feature advertised, SEND_ERROR is refused but plain apf still reaches KVM.
    let mut g = fixture("passthrough-noadv", FallbackPolicy::Mce, false);
    let refused = APF_GPA | 1 | KVM_ASYNC_PF_SEND_ERROR;
    assert!(matches!(
        wrmsr(&mut g, &mut v, MSR_KVM_ASYNC_PF_EN, refused),
        Ok(Handled::Resume(None))
    ));
    assert_eq!(v.msr_error, Some(true));
    assert!(v.ioctls.is_empty());
    let plain = APF_GPA | 1 | KVM_ASYNC_PF_DELIVERY_AS_INT;
    wrmsr(&mut g, &mut v, MSR_KVM_ASYNC_PF_EN, plain).expect("forwarded");
    assert_eq!(v.msr_error, Some(false));
    assert_eq!(v.ioctls, ["set_msr"]);
}

#[test]
fn apf_error_on_a_load_rewinds_injects_pf_with_token_and_signals_page_ready() {
    let mut f = fixture("apf-load", FallbackPolicy::Stop, true);
    let mut v = vcpu();
    opt_in(&mut f, &mut v);
    f.file.set_len(0).expect("truncate");
    let exit = Exit::MmioRead {
        gpa: WIN_GPA + 0x2010,
        len: 8,
    };
    let r = resumed(&mut f, &mut v, &exit);
    let ActionTaken::ApfError { token } = r.action else {
        panic!("{r:?}")
    };
    assert!(vfsdax_protocol::apf::is_vfsdax_token(token));
    assert_eq!(
        v.ioctls,
        ["run", "signal_msi"],
        "one immediate-exit run to rewind, one MSI"
    );
    assert!(!v.immediate_exit, "immediate_exit is cleared again");
    assert_eq!(
        v.staged_regs.map(|r| r.rip),
        Some(0x10094),
        "registers restored to the faulting load"
    );
    let ev = v.staged_events.expect("events staged");
    assert_eq!(
        (ev.exception.pending, ev.exception.injected, ev.exception.nr),
        (1, 0, 14)
    );
    assert_eq!(
        (ev.exception.has_error_code, ev.exception.error_code),
        (1, 0)
    );
    assert_eq!(
        (ev.exception_has_payload, ev.exception_payload),
        (1, u64::from(token))
    );
    assert_ne!(ev.flags & KVM_VCPUEVENT_VALID_PAYLOAD, 0);
    assert_eq!(read_u32(&f.mem, APF_GPA), 1, "flags = PAGE_NOT_PRESENT");
    assert_eq!(read_u32(&f.mem, APF_GPA + 4), token, "'page ready' token");
    assert_eq!(read_u32(&f.mem, APF_GPA + 8), 1, "ready_flags = PAGE_ERROR");
    assert_eq!(v.msi, vec![(0xfee0_0000, 0xf3)]);
    assert_eq!(r.access, Access::Read);
    assert_eq!(r.file_size_now, Some(0));
    assert_eq!(f.handler.counters().apf_errors, 1);
}

#[test]
fn apf_error_on_a_store_outside_long_mode_is_not_rewound() {
    let mut f = fixture("apf-store", FallbackPolicy::Mce, true);
    let mut v = vcpu();
    opt_in(&mut f, &mut v);
    f.file.set_len(0x1000).expect("truncate");
    let exit = Exit::MmioWrite {
        gpa: WIN_GPA + 0x3000,
        len: 8,
        data: [1; 8],
    };
    let r = resumed(&mut f, &mut v, &exit);
    assert!(matches!(r.action, ActionTaken::ApfError { .. }));
    assert_eq!(v.ioctls, ["signal_msi"]);
    assert!(v.staged_regs.is_none());
    assert_eq!(v.staged_events.map(|e| e.exception.nr), Some(14));
}

/// A long-mode guest whose `mov [rbx], rcx` at 0x1000 stored to `target` and exited as an MMIO
/// write at `WIN_GPA + 0x2010`, RIP past the store (0x1003), after the file was emptied.
fn retired_store(f: &mut Fixture, target: u64) -> (FakeVcpu, PendingReport) {
    let mut v = vcpu();
    v.snap.sregs.efer = 0x500;
    v.snap.sregs.cs.l = 1;
    v.snap.regs.rip = 0x1003;
    v.snap.regs.rbx = target;
    f.mem
        .write_slice(&[0x90, 0x90, 0x90, 0x48, 0x89, 0x0b], GuestAddress(0xffd))
        .expect("code");
    f.file.set_len(0).expect("truncate");
    let exit = Exit::MmioWrite {
        gpa: WIN_GPA + 0x2010,
        len: 8,
        data: [1; 8],
    };
    let r = resumed(f, &mut v, &exit);
    (v, r)
}

#[test]
fn a_store_completed_as_mmio_is_rewound_onto_the_instruction() {
    let mut f = fixture("store-rewind", FallbackPolicy::Mce, false);
    let (v, r) = retired_store(&mut f, WIN_GPA + 0x2010);
    assert_eq!(r.action, ActionTaken::MachineCheck { bank: 9 });
    assert_eq!(
        v.staged_regs.map(|r| r.rip),
        Some(0x1000),
        "RIP on the store"
    );
    assert_eq!(
        v.mce.map(|m| m.mcg_status & super::mce::MCG_STATUS_EIPV),
        Some(super::mce::MCG_STATUS_EIPV)
    );
    assert_eq!(
        v.staged_events
            .map(|e| (e.exception.pending, e.exception.nr)),
        Some((1, 18)),
        "the #MC is staged again after the register restore"
    );
    // The instruction ending at RIP did not write the exit's address: no guess, RIP stays.
    let mut f = fixture("store-no-rewind", FallbackPolicy::Mce, false);
    let (v, r) = retired_store(&mut f, WIN_GPA + 0x8000);
    assert_eq!(r.action, ActionTaken::MachineCheck { bank: 9 });
    assert!(v.staged_regs.is_none());
    assert_eq!(
        v.mce.map(|m| m.mcg_status & super::mce::MCG_STATUS_EIPV),
        Some(0)
    );
}

#[test]
fn a_store_to_a_page_that_came_back_runs_again_instead_of_writing_the_file() {
    use std::os::unix::fs::FileExt;
    // The page is inside the file again at classification: rewound, the file is not written
    // (a write could extend a file truncated again meanwhile).
    let mut f = fixture("store-backed", FallbackPolicy::Mce, false);
    let mut v = vcpu();
    v.snap.sregs.efer = 0x500;
    v.snap.sregs.cs.l = 1;
    v.snap.regs.rip = 0x1003;
    v.snap.regs.rbx = WIN_GPA + 0x2010;
    f.mem
        .write_slice(&[0x90, 0x90, 0x90, 0x48, 0x89, 0x0b], GuestAddress(0xffd))
        .expect("code");
    let exit = Exit::MmioWrite {
        gpa: WIN_GPA + 0x2010,
        len: 8,
        data: [1; 8],
    };
    let h = f.handler.handle(&mut v, &exit, Instant::now());
    assert!(matches!(h, Ok(Handled::Resume(None))), "{h:?}");
    assert_eq!(v.staged_regs.map(|r| r.rip), Some(0x1000));
    let mut word = [0u8; 8];
    f.file.read_exact_at(&mut word, 0x2010).expect("read");
    assert_eq!(
        word, [0xab; 8],
        "the file is left to the store's second run"
    );
    // Outside long mode the store cannot be rewound: its bytes go into the file, which has room.
    let mut v = vcpu();
    let h = f.handler.handle(&mut v, &exit, Instant::now());
    assert!(matches!(h, Ok(Handled::Resume(None))), "{h:?}");
    assert!(v.staged_regs.is_none());
    f.file.read_exact_at(&mut word, 0x2010).expect("read");
    assert_eq!(word, [1; 8]);
    assert_eq!(
        f.file.metadata().expect("stat").len(),
        0x4000,
        "not extended"
    );
}

#[test]
fn page_ready_waits_for_a_free_slot_and_goes_out_on_ack() {
    let mut f = fixture("apf-busy", FallbackPolicy::Mce, true);
    let mut v = vcpu();
    opt_in(&mut f, &mut v);
    // KVM's own 'page ready' (token of vCPU 0) still occupies the slot.
    f.mem
        .write_obj(0x5000u32, GuestAddress(APF_GPA + 4))
        .expect("write");
    f.file.set_len(0).expect("truncate");
    let exit = Exit::MmioRead {
        gpa: WIN_GPA,
        len: 4,
    };
    let r = resumed(&mut f, &mut v, &exit);
    let ActionTaken::ApfError { token } = r.action else {
        panic!()
    };
    assert_eq!(v.ioctls, ["run"], "no MSI while the slot is busy");
    assert_eq!(
        read_u32(&f.mem, APF_GPA + 4),
        0x5000,
        "KVM's token untouched"
    );
    assert_eq!(f.handler.counters().deferred_ready, 1);
    // The guest consumes KVM's event, frees the slot and ACKs.
    f.mem
        .write_obj(0u32, GuestAddress(APF_GPA + 4))
        .expect("write");
    v.ioctls.clear();
    assert!(matches!(
        wrmsr(&mut f, &mut v, MSR_KVM_ASYNC_PF_ACK, 1),
        Ok(Handled::Resume(None))
    ));
    assert_eq!(
        v.ioctls,
        ["set_msr", "signal_msi"],
        "ACK forwarded to KVM, then our 'page ready'"
    );
    assert_eq!(v.set_msrs, vec![(MSR_KVM_ASYNC_PF_ACK, 1)]);
    assert_eq!(read_u32(&f.mem, APF_GPA + 4), token);
    assert_eq!(read_u32(&f.mem, APF_GPA + 8), 1);
    // A second ACK with nothing pending sends nothing.
    v.ioctls.clear();
    wrmsr(&mut f, &mut v, MSR_KVM_ASYNC_PF_ACK, 1).expect("ack");
    assert_eq!(v.ioctls, ["set_msr"]);
}

#[test]
fn bad_apf_msr_values_get_gp_without_reaching_kvm() {
    let mut f = fixture("apf-gp", FallbackPolicy::Mce, true);
    let mut v = vcpu();
    for (index, data) in [
        (MSR_KVM_ASYNC_PF_EN, APF_GPA | 1 | (1 << 5)),
        (MSR_KVM_ASYNC_PF_INT, 0x100),
    ] {
        wrmsr(&mut f, &mut v, index, data).expect("handled");
        assert_eq!(v.msr_error, Some(true), "{index:#x}={data:#x}");
    }
    assert!(v.ioctls.is_empty());
    assert!(!f.handler.apf_registration().enabled());
}

#[test]
fn kernel_access_without_send_always_uses_the_fallback() {
    let mut f = fixture("apf-kernel", FallbackPolicy::ZeroFill, true);
    let mut v = vcpu();
    let en =
        APF_GPA | KVM_ASYNC_PF_ENABLED | KVM_ASYNC_PF_DELIVERY_AS_INT | KVM_ASYNC_PF_SEND_ERROR;
    wrmsr(&mut f, &mut v, MSR_KVM_ASYNC_PF_INT, 0xf3).expect("int");
    wrmsr(&mut f, &mut v, MSR_KVM_ASYNC_PF_EN, en).expect("en");
    v.ioctls.clear();
    f.file.set_len(0).expect("truncate");
    let exit = Exit::MmioRead {
        gpa: WIN_GPA + 8,
        len: 8,
    };
    let r = resumed(&mut f, &mut v, &exit);
    assert_eq!(
        r.action,
        ActionTaken::ZeroFill {
            window_offset: 0,
            len: 0x4000
        }
    );
    assert_eq!(
        r.fallback_reason.as_deref(),
        Some("kernel-mode access without SEND_ALWAYS")
    );
    assert_eq!(
        v.mmio_data.as_deref(),
        Some(&[0u8; 8][..]),
        "the load completes with zeros"
    );
    assert!(
        v.ioctls.is_empty(),
        "zero-fill costs no ioctl: {:?}",
        v.ioctls
    );
}

#[test]
fn machine_check_on_a_load_and_a_second_one_while_mcip_is_set() {
    let mut f = fixture("mce", FallbackPolicy::Mce, false);
    let mut v = vcpu();
    f.file.set_len(0).expect("truncate");
    let exit = Exit::MmioRead {
        gpa: WIN_GPA + 0x1008,
        len: 8,
    };
    let r = resumed(&mut f, &mut v, &exit);
    assert_eq!(r.action, ActionTaken::MachineCheck { bank: 9 });
    assert_eq!(v.ioctls, ["run", "set_mce"]);
    let m = v.mce.expect("mce");
    assert_eq!(m.addr, WIN_GPA + 0x1008);
    assert_eq!(m.bank, 9);
    assert_eq!(v.staged_regs.map(|r| r.rip), Some(0x10094));
    let ev = v.staged_events.expect("events");
    assert_eq!(
        (
            ev.exception.pending,
            ev.exception.nr,
            ev.exception.has_error_code
        ),
        (1, 18, 0)
    );
    // The guest has not cleared MCIP yet: a second #MC would shut it down, so zero-fill.
    v.ioctls.clear();
    v.mcg_status = super::mce::MCG_STATUS_MCIP;
    let r = resumed(&mut f, &mut v, &exit);
    assert!(matches!(r.action, ActionTaken::ZeroFill { .. }), "{r:?}");
    assert_eq!(
        r.fallback_reason.as_deref(),
        Some("apf error feature not advertised; a machine check is still in progress")
    );
    assert_eq!(v.ioctls, ["get_msr"]);
}

#[test]
fn machine_check_needs_cr4_mce() {
    let mut f = fixture("mce-cr4", FallbackPolicy::Mce, false);
    let mut v = vcpu();
    v.snap.sregs.cr4 = 0x20;
    f.file.set_len(0).expect("truncate");
    let exit = Exit::MmioWrite {
        gpa: WIN_GPA + 0x10,
        len: 4,
        data: [7, 0, 0, 0, 0, 0, 0, 0],
    };
    let r = resumed(&mut f, &mut v, &exit);
    assert!(matches!(r.action, ActionTaken::ZeroFill { .. }));
    assert!(v.ioctls.is_empty());
}

#[test]
fn stop_carries_the_full_diagnostic() {
    let mut f = fixture("stop", FallbackPolicy::Stop, false);
    let mut v = vcpu();
    f.file.set_len(0x1800).expect("truncate");
    let exit = Exit::MmioRead {
        gpa: WIN_GPA + 0x3ff8,
        len: 8,
    };
    let Err(FaultError::Stop(d)) = f.handler.handle(&mut v, &exit, Instant::now()) else {
        panic!("expected a stop")
    };
    let msg = d.to_string();
    for needle in [
        "0x40003ff8",
        "window offset 0x3ff8",
        "file offset 0x3ff8",
        "now 6144 bytes",
        "vfsdax-handler-",
    ] {
        assert!(msg.contains(needle), "'{needle}' missing from: {msg}");
    }
    assert!(v.ioctls.is_empty());
}

#[test]
fn bare_efault_and_memory_fault_exits_are_classified() {
    let mut f = fixture("efault", FallbackPolicy::ZeroFill, false);
    let mut v = vcpu();
    f.file.set_len(0x2000).expect("truncate");
    let r = resumed(&mut f, &mut v, &Exit::Efault);
    assert_eq!(r.gpa, None, "a bare EFAULT has no address");
    assert_eq!(
        r.window_offset, 0x2000,
        "first lost byte of the shrunken mapping"
    );
    assert_eq!(
        r.action,
        ActionTaken::ZeroFill {
            window_offset: 0x2000,
            len: 0x2000
        }
    );
    let exit = Exit::MemoryFault {
        gpa: WIN_GPA + 0x3000,
        size: 0x1000,
        flags: 0,
    };
    let r = resumed(&mut f, &mut v, &exit);
    assert_eq!(r.gpa, Some(WIN_GPA + 0x3000));
    assert!(v.ioctls.is_empty());
}

#[test]
fn unmapped_window_access_reads_all_ones() {
    let mut f = fixture("unmapped", FallbackPolicy::Mce, false);
    let mut v = vcpu();
    let exit = Exit::MmioRead {
        gpa: WIN_GPA + 0x10_0000,
        len: 4,
    };
    let r = resumed(&mut f, &mut v, &exit);
    assert_eq!(
        r.kind,
        vfsdax_protocol::report::FaultKind::UnmappedWindowAccess
    );
    assert_eq!(r.action, ActionTaken::UnclaimedMmio);
    assert_eq!(v.mmio_data.as_deref(), Some(&[0xffu8; 4][..]));
    assert!(v.ioctls.is_empty());
}

#[test]
fn bare_efault_in_long_mode_is_located_by_decoding_the_instruction() {
    let mut f = fixture("decode", FallbackPolicy::Mce, false);
    let mut v = vcpu();
    v.snap.sregs.efer = 0x500;
    v.snap.sregs.cs.l = 1;
    v.snap.regs.rip = 0x1000;
    v.snap.regs.rbx = WIN_GPA + 0x2010;
    // mov [rbx], rcx at RIP (the fake translates identically).
    f.mem
        .write_slice(&[0x48, 0x89, 0x0b], GuestAddress(0x1000))
        .expect("code");
    f.file.set_len(0).expect("truncate");
    let r = resumed(&mut f, &mut v, &Exit::Efault);
    assert_eq!(r.gpa, Some(WIN_GPA + 0x2010));
    assert_eq!(r.access, Access::Write);
    assert_eq!(r.action, ActionTaken::MachineCheck { bank: 9 });
    assert_eq!(v.mce.map(|m| m.addr), Some(WIN_GPA + 0x2010));
    assert_eq!(
        v.mce.map(|m| m.mcg_status & super::mce::MCG_STATUS_EIPV),
        Some(super::mce::MCG_STATUS_EIPV),
        "RIP is on the instruction"
    );
    assert_eq!(v.ioctls, ["translate", "translate", "set_mce"]);
    // An instruction the decoder does not know falls back to the file-size search.
    v.ioctls.clear();
    v.mcg_status = 0;
    f.mem
        // fld qword [rbx] (x87)
        .write_slice(&[0xdd, 0x03], GuestAddress(0x1000))
        .expect("code");
    let r = resumed(&mut f, &mut v, &Exit::Efault);
    assert_eq!(r.gpa, None);
    assert_eq!(r.window_offset, 0);
}

#[test]
fn a_string_copy_inside_the_window_blames_the_operand_on_the_lost_page() {
    let mut f = fixture("movs", FallbackPolicy::Mce, false);
    let mut v = vcpu();
    v.snap.sregs.efer = 0x500;
    v.snap.sregs.cs.l = 1;
    v.snap.regs.rip = 0x1000;
    // rep movsb, copying window page 1 (still in the file) to page 2 (lost).
    f.mem
        .write_slice(&[0xf3, 0xa4], GuestAddress(0x1000))
        .expect("code");
    f.file.set_len(0x2000).expect("truncate");
    v.snap.regs.rsi = WIN_GPA + 0x1010;
    v.snap.regs.rdi = WIN_GPA + 0x2010;
    let r = resumed(&mut f, &mut v, &Exit::Efault);
    assert_eq!((r.gpa, r.access), (Some(WIN_GPA + 0x2010), Access::Write));
    // The other way round: the source is lost.
    v.mcg_status = 0;
    v.snap.regs.rsi = WIN_GPA + 0x3010;
    v.snap.regs.rdi = WIN_GPA + 0x1010;
    let r = resumed(&mut f, &mut v, &Exit::Efault);
    assert_eq!((r.gpa, r.access), (Some(WIN_GPA + 0x3010), Access::Read));
}

#[test]
fn vcpu_ids_that_would_collide_with_vfsdax_tokens_are_refused() {
    let window = Arc::new(DaxWindow::new(0x20_0000).expect("window"));
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("mem");
    let config = FaultConfig {
        policy: FallbackPolicy::Mce,
        apf_advertised: true,
    };
    let ok = DaxFaultHandler::new(
        vfsdax_protocol::apf::MAX_VCPU_ID,
        Arc::clone(&window),
        WIN_GPA,
        mem.clone(),
        config,
    );
    assert!(ok.is_ok());
    let bad = DaxFaultHandler::new(0xfff, window, WIN_GPA, mem, config);
    assert!(matches!(bad, Err(FaultError::VcpuId(0xfff))));
}

#[test]
fn vcpus_sharing_state_draw_distinct_tokens_and_fences_and_signal_their_own_apic() {
    let mut f = fixture("two-vcpus", FallbackPolicy::Mce, true);
    let mut v0 = vcpu();
    opt_in(&mut f, &mut v0);
    let mut other = DaxFaultHandler::new(
        1,
        Arc::clone(&f.handler.window),
        WIN_GPA,
        f.mem.clone(),
        f.handler.config,
    )
    .expect("handler of vCPU 1");
    other.share(f.handler.shared());
    f.file.set_len(0).expect("truncate");
    let exit = Exit::MmioRead {
        gpa: WIN_GPA + 0x2010,
        len: 8,
    };
    let ActionTaken::ApfError { token: t0 } = resumed(&mut f, &mut v0, &exit).action else {
        panic!("apf error on vCPU 0")
    };
    // A kick on vCPU 0 fences the lost range for every vCPU.
    assert!(matches!(
        f.handler
            .handle(&mut v0, &Exit::Interrupted, Instant::now()),
        Ok(Handled::NotMine)
    ));
    assert!(other.fences().is_fenced(0x2000));
    // vCPU 1 (the guest freed the slot meanwhile).
    f.mem
        .write_obj(0u32, GuestAddress(APF_GPA + 4))
        .expect("free the slot");
    std::mem::swap(&mut f.handler, &mut other);
    let mut v1 = vcpu();
    opt_in(&mut f, &mut v1);
    let ActionTaken::ApfError { token: t1 } = resumed(&mut f, &mut v1, &exit).action else {
        panic!("apf error on vCPU 1")
    };
    assert_ne!(t0, t1, "tokens are unique across the VM");
    assert_eq!(v0.msi, vec![(0xfee0_0000, 0xf3)], "to APIC id 0");
    assert_eq!(v1.msi, vec![(0xfee0_1000, 0xf3)], "to APIC id 1");
}

#[test]
fn a_zero_filled_store_survives_later_kicks_and_acks() {
    let mut f = fixture("zero-fill-kept", FallbackPolicy::ZeroFill, true);
    let mut v = vcpu();
    f.file.set_len(0).expect("truncate");
    let value = 0x1122_3344_5566_7788u64;
    let exit = Exit::MmioWrite {
        gpa: WIN_GPA + 0x2010,
        len: 8,
        data: value.to_le_bytes(),
    };
    let r = resumed(&mut f, &mut v, &exit);
    assert!(matches!(r.action, ActionTaken::ZeroFill { .. }), "{r:?}");
    let host = f.handler.geometry().host_base + 0x2010;
    // SAFETY: window offset 0x2010 lies in the range the handler just zero-filled (private,
    // anonymous, read/write) inside the fixture's window; no Rust reference points into it.
    let read = || unsafe { std::ptr::read_volatile(host as *const u64) };
    assert_eq!(read(), value, "the store landed in the zero page");
    // The kick path (past the scan interval) and the apf ACK path both scan for lost ranges.
    std::thread::sleep(super::FENCE_SCAN_INTERVAL * 2);
    assert!(matches!(
        f.handler.handle(&mut v, &Exit::Interrupted, Instant::now()),
        Ok(Handled::NotMine)
    ));
    wrmsr(&mut f, &mut v, MSR_KVM_ASYNC_PF_ACK, 1).expect("ack");
    let c = f.handler.counters();
    assert_eq!(c.fenced, 0, "the zero-filled range was fenced: {c:?}");
    assert!(!f.handler.fences().is_fenced(0x2000));
    assert_eq!(read(), value, "the guest's store survived the scans");
    assert_eq!(c.zero_fills, 1);
}
