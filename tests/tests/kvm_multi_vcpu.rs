//! The DAX fault path with two vCPUs on real KVM, each on its own host thread running the test
//! guest out of its own private area (stack, apf data, tables). Both guests load a word through
//! the window; once both have, the host truncates the file; then each touches its page again.
//!
//! Checked per vCPU, from what its guest code reported over its I/O ports: its own apf
//! registration, a #PF carrying its own token (distinct VM-wide, in vfsdax's token space), and the
//! 'page ready' with `PAGE_ERROR` for that token on that vCPU only (the MSI goes to its APIC id);
//! or, for a vCPU that did not opt in, a machine check at its GPA that leaves the other vCPU's apf
//! error alone. One report per fault, naming the right vCPU.
//!
//! Every run is bounded (guest timeout, rendezvous timeout, and a process-wide watchdog). Needs
//! /dev/kvm; skipped, with a visible reason, only where it is absent.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vfsdax_protocol::apf::{
    is_kvm_token_of, is_vfsdax_token, BROADCAST_TOKEN, DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT,
    KVM_PV_REASON_PAGE_ERROR, VFSDAX_TOKEN_TAG,
};
use vfsdax_protocol::report::{ActionTaken, FaultKind, FaultReport};
use vfsdax_refvmm::guest::program::apf_en_value;
use vfsdax_refvmm::guest::{layout, port, GuestAccess, GuestConfig, GuestObservation};
use vfsdax_refvmm::scenario::{
    original_word, Backing, LocalFile, Truncation, ACCESS_OFFSET, BASELINE_OFFSET, STORE_VALUE,
    WINDOW_SIZE,
};
use vfsdax_refvmm::vm::{ReferenceVm, RunOutcome, VmSetup};
use vfsdax_vmm_glue::fault::FallbackPolicy;
use vfsdax_vmm_glue::kvm::FaultCounters;

/// Bound on one guest run (and on waiting for the other vCPU at the rendezvous).
const GUEST_BOUND: Duration = Duration::from_secs(10);
/// Bound on a whole cell: past it the test process exits (a vCPU thread cannot be cancelled).
const CELL_BOUND: Duration = Duration::from_secs(60);
/// Window offset of page B (page 3 of the mapped file; page A is [`ACCESS_OFFSET`], page 2).
const PAGE_B_OFFSET: u64 = ACCESS_OFFSET + 0x1000;

/// What one vCPU of a cell does.
#[derive(Clone, Copy, Debug)]
struct VcpuPlan {
    opt_in: bool,
    access: GuestAccess,
    access_offset: u64,
}

/// What one vCPU did.
#[derive(Debug)]
struct VcpuResult {
    guest: GuestObservation,
    reports: Vec<FaultReport>,
    counters: FaultCounters,
    registration: vfsdax_vmm_glue::fault::ApfRegistration,
    access_rip: u64,
}

/// Both vCPUs wait at their stage 2 (baseline done) until the last one arrives and truncates.
struct Rendezvous {
    state: Mutex<(usize, bool)>,
    cv: Condvar,
    vcpus: usize,
}

impl Rendezvous {
    /// Returns false if the other vCPUs did not arrive in time or the truncation failed.
    fn arrive(&self, truncate: impl FnOnce() -> bool) -> bool {
        let mut st = self.state.lock().expect("rendezvous lock");
        st.0 += 1;
        if st.0 == self.vcpus {
            st.1 = truncate();
            self.cv.notify_all();
            return st.1;
        }
        let (st, _) = self
            .cv
            .wait_timeout_while(st, GUEST_BOUND, |s| s.0 < self.vcpus)
            .expect("rendezvous wait");
        st.1
    }
}

/// Exits the process if the cell is still running after [`CELL_BOUND`]; dropping it disarms.
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn arm(name: &'static str) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        std::thread::spawn(move || {
            let start = Instant::now();
            while !flag.load(Ordering::SeqCst) {
                if start.elapsed() > CELL_BOUND {
                    eprintln!("cell {name} hung: no result within {CELL_BOUND:?}");
                    std::process::exit(3);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn kvm_present(name: &str) -> bool {
    vfsdax_tests::require::kvm(name)
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vfsdax-multi-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn guest_config(plan: &VcpuPlan) -> GuestConfig {
    GuestConfig {
        access: plan.access,
        opt_in: plan.opt_in,
        send_always: true,
        stock_apf: false,
        enable_mce: true,
        interrupts: true,
        user_mode: false,
        feature_bit: DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT,
        baseline_offset: BASELINE_OFFSET,
        access_offset: plan.access_offset,
        store_value: STORE_VALUE,
    }
}

/// Runs one VM with a vCPU per plan; the host truncates the file to 0 once every guest has done
/// its baseline load.
fn run_cell(name: &'static str, plans: &[VcpuPlan]) -> Vec<VcpuResult> {
    let _watchdog = Watchdog::arm(name);
    let dir = tempdir(name);
    let local = LocalFile::create(&dir.join("backing")).expect("backing file");
    let setup = VmSetup {
        feature_bit: Some(DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT),
        policy: FallbackPolicy::Mce,
        window_size: WINDOW_SIZE,
    };
    let guests: Vec<GuestConfig> = plans.iter().map(guest_config).collect();
    let mut vm = ReferenceVm::with_guests(&setup, &guests, local.window()).expect("create the VM");
    assert_eq!(vm.vcpus.len(), plans.len());
    let local = Mutex::new(local);
    let observations = Mutex::new(vec![GuestObservation::default(); plans.len()]);
    let rendezvous = Rendezvous {
        state: Mutex::new((0, false)),
        cv: Condvar::new(),
        vcpus: plans.len(),
    };
    let outcomes = vm.run_all(GUEST_BOUND, |vcpu, p, v| {
        observations.lock().expect("observations")[vcpu as usize].record(p, v);
        if p == port::STAGE && v == 2 {
            return rendezvous.arrive(|| {
                let mut local = local.lock().expect("backing");
                local.mutate(Truncation::ToZero).is_ok()
            });
        }
        p != port::DONE
    });
    let observations = observations.into_inner().expect("observations");
    let mut results = Vec::new();
    for (((outcome, v), guest), id) in outcomes
        .into_iter()
        .zip(&vm.vcpus)
        .zip(observations)
        .zip(0u32..)
    {
        let outcome: RunOutcome = match outcome {
            Ok(o) => o,
            Err(e) => panic!(
                "vCPU {id} failed: {e} ({:?}); its guest saw {guest:?}",
                std::error::Error::source(&e)
            ),
        };
        assert!(
            outcome.stop.is_none(),
            "vCPU {id} stopped: {:?}",
            outcome.stop
        );
        results.push(VcpuResult {
            guest,
            reports: outcome.reports,
            counters: v.handler.counters(),
            registration: v.handler.apf_registration(),
            access_rip: v.image.access_rip,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    results
}

/// Checks what every vCPU has in common, and returns its one report.
fn common(id: u32, plan: &VcpuPlan, r: &VcpuResult) -> FaultReport {
    let g = &r.guest;
    assert_eq!(g.exception, None, "vCPU {id}: unexpected exception: {g:?}");
    assert_eq!(
        g.baseline,
        Some(original_word(BASELINE_OFFSET)),
        "vCPU {id}: baseline load through the window"
    );
    assert!(g.done, "vCPU {id} finished: {g:?}");
    assert_eq!(
        g.value, None,
        "vCPU {id}: the task did not resume past the access"
    );
    let [rep] = r.reports.as_slice() else {
        panic!(
            "vCPU {id}: exactly one report expected, got {:?}",
            r.reports
        )
    };
    assert_eq!(rep.vcpu, id, "the report names the vCPU that faulted");
    assert_eq!(rep.kind, FaultKind::TruncatedPage);
    assert_eq!(rep.gpa, Some(layout::WINDOW_GPA + plan.access_offset));
    assert_eq!(rep.window_offset, plan.access_offset);
    assert_eq!(rep.file_size_now, Some(0));
    rep.clone()
}

/// An opted-in vCPU: its registration, its #PF and its own 'page ready'; returns its token.
fn check_apf(id: u32, plan: &VcpuPlan, r: &VcpuResult) -> u32 {
    let g = &r.guest;
    let rep = common(id, plan, r);
    let want_en = apf_en_value(&guest_config(plan), id);
    assert_eq!(g.opted_in, Some(want_en as u32), "vCPU {id} registered");
    assert_eq!(
        r.registration.msr_en, want_en,
        "vCPU {id}: trapped registration"
    );
    assert_eq!(
        r.registration.data_gpa(),
        layout::private(id, layout::APF_DATA),
        "vCPU {id}: its own apf data area"
    );
    assert!(r.registration.send_error(), "vCPU {id}: SEND_ERROR kept");
    assert_eq!(r.registration.ready_vector(), Some(layout::APF_VECTOR));
    let ActionTaken::ApfError { token } = rep.action else {
        panic!("vCPU {id}: apf error expected: {rep:?}")
    };
    assert!(is_vfsdax_token(token), "vCPU {id}: token {token:#x}");
    assert_eq!(token & 0xfff, VFSDAX_TOKEN_TAG, "vCPU field of {token:#x}");
    // On the faulting instruction, a store as well as a load (a store is rewound).
    let rip = r.access_rip;
    assert_eq!(
        g.page_fault,
        Some((1, token, rip as u32)),
        "vCPU {id}: #PF with PAGE_NOT_PRESENT, CR2 = token, frame RIP"
    );
    assert!(
        g.ready.contains(&(token, KVM_PV_REASON_PAGE_ERROR)),
        "vCPU {id}: 'page ready' with PAGE_ERROR for {token:#x}: {:?}",
        g.ready
    );
    for &(t, f) in &g.ready {
        let kvm = t == BROADCAST_TOKEN || is_kvm_token_of(t, id);
        assert!(
            t == token || (kvm && f == 0),
            "vCPU {id}: stray 'page ready' {t:#x}/{f}"
        );
    }
    assert_eq!(g.sigbus, Some(1), "vCPU {id}: the task got the apf error");
    assert_eq!(g.machine_check, None);
    assert_eq!(r.counters.apf_errors, 1, "vCPU {id}");
    assert_eq!(r.counters.machine_checks, 0, "vCPU {id}");
    token
}

fn check_both_apf(name: &'static str, plans: [VcpuPlan; 2]) {
    if !kvm_present(name) {
        return;
    }
    let r = run_cell(name, &plans);
    let t0 = check_apf(0, &plans[0], &r[0]);
    let t1 = check_apf(1, &plans[1], &r[1]);
    assert_ne!(t0, t1, "tokens are unique VM-wide");
    // Each 'page ready' arrived on the vCPU sleeping on its token, never on the other.
    assert!(r[0].guest.ready.iter().all(|&(t, _)| t != t1), "{r:?}");
    assert!(r[1].guest.ready.iter().all(|&(t, _)| t != t0), "{r:?}");
}

const fn plan(opt_in: bool, access: GuestAccess, access_offset: u64) -> VcpuPlan {
    VcpuPlan {
        opt_in,
        access,
        access_offset,
    }
}

#[test]
fn two_vcpus_apf_errors_on_different_pages() {
    check_both_apf(
        "two_vcpus_apf_errors_on_different_pages",
        [
            plan(true, GuestAccess::Load, ACCESS_OFFSET),
            plan(true, GuestAccess::Load, PAGE_B_OFFSET),
        ],
    );
}

#[test]
fn two_vcpus_apf_errors_on_the_same_page() {
    check_both_apf(
        "two_vcpus_apf_errors_on_the_same_page",
        [
            plan(true, GuestAccess::Load, ACCESS_OFFSET),
            plan(true, GuestAccess::Store, ACCESS_OFFSET),
        ],
    );
}

/// vCPU 0 opted in, vCPU 1 not: a machine check on vCPU 1 only, at its GPA; vCPU 0's apf error
/// is unaffected.
#[test]
fn mixed_opt_in_machine_check_only_on_the_other_vcpu() {
    let name = "mixed_opt_in_machine_check_only_on_the_other_vcpu";
    if !kvm_present(name) {
        return;
    }
    let plans = [
        plan(true, GuestAccess::Load, ACCESS_OFFSET),
        plan(false, GuestAccess::Load, PAGE_B_OFFSET),
    ];
    let r = run_cell(name, &plans);
    let t0 = check_apf(0, &plans[0], &r[0]);
    let rep = common(1, &plans[1], &r[1]);
    let g = &r[1].guest;
    assert_eq!(rep.action, ActionTaken::MachineCheck { bank: 9 });
    assert_eq!(
        rep.fallback_reason.as_deref(),
        Some("guest did not opt in to apf errors")
    );
    assert_eq!(g.opted_in, None);
    assert!(!r[1].registration.enabled());
    let (addr, _, _, rip) = g.machine_check.expect("vCPU 1's #MC handler ran");
    assert_eq!(
        addr,
        layout::WINDOW_GPA + PAGE_B_OFFSET,
        "MCi_ADDR = its GPA"
    );
    assert_eq!(rip, r[1].access_rip as u32, "#MC frame RIP on the load");
    assert_eq!(g.sigbus, Some(2));
    assert_eq!(g.page_fault, None, "no #PF on vCPU 1");
    assert!(
        g.ready.iter().all(|&(t, f)| t != t0 && f == 0),
        "no 'page ready' of vCPU 0 on vCPU 1: {:?}",
        g.ready
    );
    assert_eq!(r[1].counters.machine_checks, 1);
    assert_eq!(r[1].counters.apf_errors, 0);
    assert_eq!(r[0].guest.machine_check, None, "no #MC on vCPU 0");
}
